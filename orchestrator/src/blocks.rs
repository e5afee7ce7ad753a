//! Where the content store keeps its blocks: a local directory (the default) or an S3
//! bucket (the scale-out option: the orchestrator's disk then holds only its job database,
//! and the store can grow with the bucket). Both keep a block under its CID, and both make
//! a block visible only once it is complete, so "the block exists" means "the block is
//! whole": a local block is written to a temporary file, fsynced and renamed into place; an
//! S3 object appears atomically when its PUT succeeds.

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use shoal::cid::ContentId;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// A block backend.
#[derive(Debug, Clone)]
pub enum BlockStore {
    /// Files under `blocks/<last two characters of the CID>/<CID>`.
    Local { blocks: PathBuf, tmp: PathBuf },
    /// Objects `<prefix>blocks/<CID>` in `bucket`.
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

impl BlockStore {
    /// A local directory of blocks; `tmp` (same file system) holds blocks being written.
    pub fn local(blocks: PathBuf, tmp: PathBuf) -> Self {
        BlockStore::Local { blocks, tmp }
    }

    fn block_path(blocks: &Path, cid: &ContentId) -> PathBuf {
        let name = cid.to_string();
        // Shard by the last two characters so no directory grows too large.
        let shard = &name[name.len() - 2..];
        blocks.join(shard).join(name)
    }

    fn key(prefix: &str, cid: &ContentId) -> String {
        format!("{prefix}blocks/{cid}")
    }

    /// Checks that the backend can be reached (the bucket exists and the credentials are
    /// accepted), so a misconfigured store fails at startup rather than on the first job.
    pub async fn check(&self) -> Result<()> {
        if let BlockStore::S3 { client, bucket, .. } = self {
            client
                .head_bucket()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "content store s3://{bucket}: {}",
                        shoal::s3::describe(&e)
                    ))
                })?;
        }
        Ok(())
    }

    /// Where the blocks are, for logs.
    pub fn location(&self) -> String {
        match self {
            BlockStore::Local { blocks, .. } => blocks.display().to_string(),
            BlockStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}blocks/"),
        }
    }

    /// The size of the block `cid`, or None if it is not stored.
    pub async fn size(&self, cid: &ContentId) -> Result<Option<u64>> {
        match self {
            BlockStore::Local { blocks, .. } => {
                match tokio::fs::metadata(Self::block_path(blocks, cid)).await {
                    Ok(meta) => Ok(Some(meta.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(format!("reading {cid}"), e)),
                }
            }
            BlockStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = Self::key(prefix, cid);
                match client.head_object().bucket(bucket).key(&key).send().await {
                    Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                    Err(e) => Err(s3_error("looking up", bucket, &key, &e)),
                }
            }
        }
    }

    /// One block's bytes; NOT_FOUND if it is not stored.
    pub async fn get(&self, cid: &ContentId) -> Result<Bytes> {
        let missing = || Error::NotFound(format!("{cid} is not in the store"));
        match self {
            BlockStore::Local { blocks, .. } => tokio::fs::read(Self::block_path(blocks, cid))
                .await
                .map(Bytes::from)
                .map_err(|error| {
                    if error.kind() == std::io::ErrorKind::NotFound {
                        missing()
                    } else {
                        Error::io(format!("reading {cid}"), error)
                    }
                }),
            BlockStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = Self::key(prefix, cid);
                let object = match client.get_object().bucket(bucket).key(&key).send().await {
                    Ok(object) => object,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Err(missing());
                    }
                    Err(e) => return Err(s3_error("reading", bucket, &key, &e)),
                };
                let body = object.body.collect().await.map_err(|e| {
                    Error::Store(format!("reading s3://{bucket}/{key} broke off: {e}"))
                })?;
                Ok(body.into_bytes())
            }
        }
    }

    /// Stores one block (idempotent: a stored block is left alone).
    pub async fn put(&self, cid: &ContentId, data: &Bytes) -> Result<()> {
        if self.size(cid).await?.is_some() {
            return Ok(());
        }
        match self {
            BlockStore::Local { blocks, tmp } => {
                let dest = Self::block_path(blocks, cid);
                let temp = tmp.join(uuid::Uuid::now_v7().to_string());
                let write = async {
                    let mut file = tokio::fs::File::create(&temp).await?;
                    file.write_all(data).await?;
                    file.sync_data().await?;
                    if let Some(parent) = dest.parent() {
                        tokio::fs::create_dir_all(parent).await?;
                    }
                    tokio::fs::rename(&temp, &dest).await
                };
                if let Err(error) = write.await {
                    let _ = tokio::fs::remove_file(&temp).await;
                    return Err(Error::io(format!("storing block {cid}"), error));
                }
                Ok(())
            }
            BlockStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = Self::key(prefix, cid);
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .map_err(|e| s3_error("storing", bucket, &key, &e))?;
                Ok(())
            }
        }
    }
}

fn s3_error<E, R>(
    what: &str,
    bucket: &str,
    key: &str,
    error: &aws_sdk_s3::error::SdkError<E, R>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let reason = shoal::s3::describe(error);
    Error::Store(format!("{what} s3://{bucket}/{key}: {reason}"))
}
