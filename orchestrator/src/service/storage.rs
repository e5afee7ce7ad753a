//! StorageService: uploads into and downloads from the content store.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal::proto::storage_service_server::StorageService;
use shoal::proto::{
    DownloadRequest, DownloadResponse, StatRequest, StatResponse, UploadRequest, UploadResponse,
};
use tonic::{Request, Response, Status, Streaming};

use super::cid;
use crate::Orchestrator;

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
        let stream = self
            .0
            .content()
            .download(&cid, &request.path, request.offset)
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let request = request.into_inner();
        let cid = cid("cid", &request.cid)?;
        Ok(Response::new(
            self.0.content().stat(&cid, &request.path).await?,
        ))
    }
}
