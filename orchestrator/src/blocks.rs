//! Where the content store keeps its blocks: a local directory (the default) or an S3
//! bucket (the scale-out option: the orchestrator's disk then holds only its job database,
//! and the store can grow with the bucket). Both keep a block under its CID, and both make
//! a block visible only once it is complete, so "the block exists" means "the block is
//! whole": a local block is written to a temporary file, fsynced and renamed into place (and
//! the rename made durable with an fsync of its directory); an S3 object appears atomically
//! when its PUT succeeds.
//!
//! Small local blocks (up to [`SMALL_BLOCK_MAX`]: directory nodes, the `stdout`, `stderr`
//! and `exitCode` of most results) go into the job database instead, where they share the
//! store's group commit: a file per block cost a create, two fsyncs and an inode each, which
//! was most of the orchestrator's work per job (docs/PERFORMANCE.md, B2).

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use shoal::cid::ContentId;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::store::{Commit, Store, Write};

/// Largest block a local store keeps in its database rather than in a file of its own.
pub const SMALL_BLOCK_MAX: usize = 64 * 1024;

/// A block handed to the store: durable once [`wait`](Self::wait) returns. Small blocks
/// are only queued for the next group commit, so an upload can hand over many and wait
/// once; commits are applied in order, so a parent queued after its children never lands
/// without them.
#[must_use = "a block is only known to be stored once its put is awaited"]
pub struct PendingPut(Option<Commit>);

impl PendingPut {
    /// Waits until the block is durable.
    pub async fn wait(self) -> Result<()> {
        match self.0 {
            Some(commit) => commit.wait().await,
            None => Ok(()),
        }
    }
}

/// A block backend.
#[derive(Debug, Clone)]
pub enum BlockStore {
    /// Files under `blocks/<last two characters of the CID>/<CID>`, and the small blocks in
    /// the job database.
    Local {
        blocks: PathBuf,
        tmp: PathBuf,
        small: Store,
    },
    /// Objects `<prefix>blocks/<CID>` in `bucket`.
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

impl BlockStore {
    /// A local directory of blocks; `tmp` (same file system) holds blocks being written and
    /// `small` takes the small ones.
    pub fn local(blocks: PathBuf, tmp: PathBuf, small: Store) -> Self {
        BlockStore::Local { blocks, tmp, small }
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
            BlockStore::Local { blocks, small, .. } => {
                if let Some(block) = small.block(&cid.to_string())? {
                    return Ok(Some(block.len() as u64));
                }
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
            BlockStore::Local { blocks, small, .. } => {
                if let Some(block) = small.block(&cid.to_string())? {
                    return Ok(block);
                }
                tokio::fs::read(Self::block_path(blocks, cid))
                    .await
                    .map(Bytes::from)
                    .map_err(|error| {
                        if error.kind() == std::io::ErrorKind::NotFound {
                            missing()
                        } else {
                            Error::io(format!("reading {cid}"), error)
                        }
                    })
            }
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

    /// Stores `blocks` (children before parents) as part of a caller's commit: a local
    /// store returns their writes, for the caller to queue in the same batch as the records
    /// that refer to them; an S3 store puts them now and returns nothing. Every block must
    /// be at most [`SMALL_BLOCK_MAX`] bytes.
    pub async fn writes_for(&self, blocks: &[(ContentId, Bytes)]) -> Result<Vec<Write>> {
        if let Some((cid, data)) = blocks.iter().find(|(_, d)| d.len() > SMALL_BLOCK_MAX) {
            return Err(Error::InvalidArgument(format!(
                "block {cid} holds {} bytes, more than the {SMALL_BLOCK_MAX} a commit takes",
                data.len()
            )));
        }
        match self {
            BlockStore::Local { .. } => Ok(blocks
                .iter()
                .map(|(cid, data)| Write::Block {
                    cid: cid.to_string(),
                    data: data.clone(),
                })
                .collect()),
            BlockStore::S3 { .. } => {
                for (cid, data) in blocks {
                    self.put(cid, data).await?;
                }
                Ok(Vec::new())
            }
        }
    }

    /// Stores one block (idempotent: a stored block is left alone) and waits until it is
    /// durable.
    pub async fn put(&self, cid: &ContentId, data: &Bytes) -> Result<()> {
        self.put_queued(cid, data).await?.wait().await
    }

    /// Stores one block, but leaves a small local block queued for the next group commit:
    /// the caller waits on the returned [`PendingPut`] before telling anyone the block (or
    /// a DAG holding it) exists.
    pub async fn put_queued(&self, cid: &ContentId, data: &Bytes) -> Result<PendingPut> {
        if self.size(cid).await?.is_some() {
            return Ok(PendingPut(None));
        }
        match self {
            BlockStore::Local { small, .. } if data.len() <= SMALL_BLOCK_MAX => {
                let write = Write::Block {
                    cid: cid.to_string(),
                    data: data.clone(),
                };
                Ok(PendingPut(Some(small.queue(vec![write]).await?)))
            }
            BlockStore::Local { blocks, tmp, .. } => {
                let dest = Self::block_path(blocks, cid);
                let temp = tmp.join(uuid::Uuid::now_v7().to_string());
                let write = async {
                    let mut file = tokio::fs::File::create(&temp).await?;
                    file.write_all(data).await?;
                    file.sync_data().await?;
                    let shard = dest.parent().unwrap_or(blocks);
                    if tokio::fs::metadata(shard).await.is_err() {
                        tokio::fs::create_dir_all(shard).await?;
                        sync_dir(blocks).await?;
                    }
                    tokio::fs::rename(&temp, &dest).await?;
                    // Without this the rename can be lost in a power cut after the block
                    // was reported stored.
                    sync_dir(shard).await
                };
                if let Err(error) = write.await {
                    let _ = tokio::fs::remove_file(&temp).await;
                    return Err(Error::io(format!("storing block {cid}"), error));
                }
                Ok(PendingPut(None))
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
                Ok(PendingPut(None))
            }
        }
    }
}

/// Makes the entries of directory `dir` durable (a rename or create inside it).
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
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
