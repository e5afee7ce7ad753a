//! StorageService: uploads into and downloads from the content store, and copies of URLs
//! and S3 data into it, and pins of CIDs fetched from IPFS gateways.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal::proto::storage_service_server::StorageService;
use shoal::proto::{
    CopyFromS3Request, CopyFromUrlRequest, DownloadRequest, DownloadResponse, PinRequest,
    PinResponse, StatRequest, StatResponse, UploadRequest, UploadResponse,
};
use shoal::spec::source::{S3Selection, Source};
use tonic::{Request, Response, Status, Streaming};

use super::cid;
use crate::Orchestrator;
use crate::content::ContentStore;

/// StorageService implementation.
#[derive(Debug, Clone)]
pub struct StorageApi(Arc<Orchestrator>);

impl StorageApi {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Self {
        StorageApi(orchestrator)
    }
}

/// A stream of download messages.
pub type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let response = self.0.content().put(request.into_inner()).await?;
        tracing::debug!(cid = %response.cid, size = response.size, "upload stored");
        Ok(Response::new(response))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let request = request.into_inner();
        let cid = cid("cid", &request.cid)?;
        let content = self.0.content();
        let stream = self
            .0
            .once_committed(|| content.download(&cid, &request.path, request.offset))
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn copy_from_url(
        &self,
        request: Request<CopyFromUrlRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        let url = request.into_inner().url;
        let Ok(Source::Http(source)) = url.parse::<Source>() else {
            return Err(Status::from(crate::error::Error::InvalidArgument(format!(
                "url: {url:?} is not an http(s) URL"
            ))));
        };
        let content = self.0.content();
        let temp = content.temp_path();
        let max = self.0.config().max_upload_bytes;
        let fetched = self.0.http().fetch(&source, &temp, max, None).await;
        let stored = store_fetched(content, &temp, &url, fetched.map(|_| ())).await?;
        if let Some(name) = source.name() {
            content.record_name(&stored.cid, name).await;
        }
        tracing::info!(url, cid = stored.cid, "copied from a URL");
        Ok(Response::new(stored))
    }

    async fn copy_from_s3(
        &self,
        request: Request<CopyFromS3Request>,
    ) -> Result<Response<UploadResponse>, Status> {
        let request = request.into_inner();
        let Ok(Source::S3(source)) = request.source.parse::<Source>() else {
            return Err(Status::from(crate::error::Error::InvalidArgument(format!(
                "source: {:?} is not an s3:// source",
                request.source
            ))));
        };
        let content = self.0.content();
        let temp = content.temp_path();
        let max = self.0.config().max_upload_bytes;
        let fetched = self
            .0
            .s3()
            .fetch(&source, request.s3.as_ref(), &temp, max)
            .await;
        let stored = store_fetched(content, &temp, &request.source, fetched.map(|_| ())).await?;
        if let S3Selection::Object(_) = source.selection() {
            content.record_name(&stored.cid, &source.file_name()).await;
        }
        tracing::info!(source = request.source, cid = stored.cid, "copied from S3");
        Ok(Response::new(stored))
    }

    async fn pin(&self, request: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        let request = request.into_inner();
        let cid = cid("cid", &request.cid)?;
        let content = self.0.content();
        let blocks_fetched = content
            .pin(&cid, self.0.ipfs())
            .await
            .map_err(|e| match e {
                crate::error::Error::Fetch { error, .. } => {
                    Status::from(crate::error::Error::Fetch {
                        action: format!("pin {cid}"),
                        error,
                    })
                }
                crate::error::Error::FailedPrecondition(reason) => Status::from(
                    crate::error::Error::FailedPrecondition(format!("cannot pin {cid}: {reason}")),
                ),
                other => other.into(),
            })?;
        let size = content.stat(&cid, "").await?.size;
        tracing::info!(%cid, blocks_fetched, size, "pinned");
        Ok(Response::new(PinResponse {
            cid: cid.to_string(),
            size,
            blocks_fetched,
        }))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let request = request.into_inner();
        let cid = cid("cid", &request.cid)?;
        let content = self.0.content();
        Ok(Response::new(
            self.0
                .once_committed(|| content.stat(&cid, &request.path))
                .await?,
        ))
    }
}

/// Stores what a copy fetched to `temp` (a file or a tree), then removes `temp`; a failed
/// fetch answers with its reason (UNAVAILABLE when the source could not be reached).
async fn store_fetched(
    content: &ContentStore,
    temp: &Path,
    source: &str,
    fetched: Result<(), shoal::data::DataError>,
) -> Result<UploadResponse, Status> {
    let stored = match fetched {
        Ok(()) => content.put_path(temp).await.map_err(Status::from),
        Err(error) => Err(Status::from(crate::error::Error::Fetch {
            action: format!("copy {source}"),
            error,
        })),
    };
    let owned = temp.to_owned();
    let _ = tokio::task::spawn_blocking(move || shoal::content::local_tree::remove(&owned)).await;
    stored
}
