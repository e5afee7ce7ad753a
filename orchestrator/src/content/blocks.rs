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
//! was most of the orchestrator's work per job (docs/PERFORMANCE.md, B2). With the
//! PostgreSQL store every local block goes there ([`Store::largest_block`]): orchestrator
//! replicas share the database, not a data directory.

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use shoal::content::cid::ContentId;

use crate::error::{Error, Result};
use crate::records::Write;
use crate::store::{Commit, Store};

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
        /// Blocks up to this size go to `small` (see [`Store::largest_block`]).
        in_store_up_to: usize,
        /// Small blocks lately found durable in the database, so a result tree that many
        /// executions share (a fanned-out job's `exitCode` and empty logs, or its whole tree)
        /// is not written again with each completion.
        held: std::sync::Arc<std::sync::Mutex<RecentlyHeld>>,
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
        BlockStore::Local {
            blocks,
            tmp,
            in_store_up_to: small.largest_block(),
            small,
            held: Default::default(),
        }
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
                        shoal::data::s3::describe(&e)
                    ))
                })?;
        }
        Ok(())
    }

    /// Where the blocks are, for logs.
    pub fn location(&self) -> String {
        match self {
            BlockStore::Local {
                in_store_up_to: usize::MAX,
                ..
            } => "the database".to_owned(),
            BlockStore::Local { blocks, .. } => blocks.display().to_string(),
            BlockStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}blocks/"),
        }
    }

    /// The size of the block `cid`, or None if it is not stored.
    pub async fn size(&self, cid: &ContentId) -> Result<Option<u64>> {
        match self {
            BlockStore::Local { blocks, small, .. } => {
                if let Some(block) = small.block(&cid.to_string()).await? {
                    return Ok(Some(block.len() as u64));
                }
                let meta = tokio::fs::metadata(Self::block_path(blocks, cid)).await;
                Ok(stored(meta, cid)?.map(|meta| meta.len()))
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
                if let Some(block) = small.block(&cid.to_string()).await? {
                    return Ok(block);
                }
                let read = tokio::fs::read(Self::block_path(blocks, cid)).await;
                stored(read, cid)?.map(Bytes::from).ok_or_else(missing)
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
    /// be at most `SMALL_BLOCK_MAX` bytes.
    pub async fn writes_for(&self, blocks: &[(ContentId, Bytes)]) -> Result<Vec<Write>> {
        if let Some((cid, data)) = blocks.iter().find(|(_, d)| d.len() > SMALL_BLOCK_MAX) {
            return Err(Error::InvalidArgument(format!(
                "block {cid} holds {} bytes, more than the {SMALL_BLOCK_MAX} a commit takes",
                data.len()
            )));
        }
        match self {
            BlockStore::Local { small, held, .. } => {
                let mut writes = Vec::new();
                for (cid, data) in blocks {
                    if lock(held).contains(cid) {
                        continue;
                    }
                    // A block the database holds (and so has made durable: the log is
                    // synced before a write is applied) whose bytes check out is not
                    // written again; a damaged one is.
                    let key = cid.to_string();
                    if small.block(&key).await?.is_some_and(|b| cid.verifies(&b)) {
                        lock(held).insert(*cid);
                        continue;
                    }
                    writes.push(Write::Block {
                        cid: key,
                        data: data.clone(),
                    });
                }
                Ok(writes)
            }
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
    /// the caller waits on the returned `PendingPut` before telling anyone the block (or
    /// a DAG holding it) exists.
    pub async fn put_queued(&self, cid: &ContentId, data: &Bytes) -> Result<PendingPut> {
        match self {
            BlockStore::Local {
                blocks,
                tmp,
                small,
                in_store_up_to,
                ..
            } => {
                let key = cid.to_string();
                if data.len() <= *in_store_up_to {
                    match small.block(&key).await? {
                        Some(held) if cid.verifies(&held) => return Ok(PendingPut(None)),
                        Some(held) => tracing::warn!(
                            cid = key,
                            bytes = held.len(),
                            "replacing a stored block that does not match its CID"
                        ),
                        None => {}
                    }
                    let write = Write::Block {
                        cid: key,
                        data: data.clone(),
                    };
                    return Ok(PendingPut(Some(small.queue(vec![write]).await?)));
                }
                let (blocks, tmp, cid, data) = (blocks.clone(), tmp.clone(), *cid, data.clone());
                tokio::task::spawn_blocking(move || write_block_file(&blocks, &tmp, &cid, &data))
                    .await
                    .map_err(|e| {
                        Error::io(format!("storing block {key}"), std::io::Error::other(e))
                    })?
                    .map_err(|e| Error::io(format!("storing block {key}"), e))?;
                Ok(PendingPut(None))
            }
            BlockStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                // A PUT is atomic: an object under the CID's key is whole, unless someone
                // else wrote it. Its length is checked; a wrong one is replaced.
                if let Some(size) = self.size(cid).await? {
                    if size == data.len() as u64 {
                        return Ok(PendingPut(None));
                    }
                    tracing::warn!(
                        cid = %cid,
                        size,
                        "replacing a stored block whose length does not match"
                    );
                }
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

/// Writes the block file for `cid` durably, unless an intact one is there: written to a
/// temporary file with every error checked (std's blocking calls: tokio's `File` reports
/// a failed buffered write only on a later call, so `sync_data` after a write that hit a
/// full disk could succeed and an empty file be renamed into place), synced, read back and
/// checked against the CID, then renamed into place and the rename synced. A file already
/// under the CID whose length or hash is wrong (from a crash of an older version, or a
/// damaged disk) is replaced.
fn write_block_file(
    blocks: &Path,
    tmp: &Path,
    cid: &ContentId,
    data: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let dest = BlockStore::block_path(blocks, cid);
    match std::fs::read(&dest) {
        Ok(held) if held.len() == data.len() && cid.verifies(&held) => return Ok(()),
        Ok(held) => tracing::warn!(
            cid = %cid,
            bytes = held.len(),
            "replacing a stored block that does not match its CID"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let temp = tmp.join(uuid::Uuid::now_v7().to_string());
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(data)?;
        file.sync_data()?;
        drop(file);
        let written = std::fs::read(&temp)?;
        if written.len() != data.len() || !cid.verifies(&written) {
            return Err(std::io::Error::other(format!(
                "the written file holds {} bytes that do not match the block ({} bytes)",
                written.len(),
                data.len()
            )));
        }
        let shard = dest.parent().unwrap_or(blocks);
        if !shard.is_dir() {
            std::fs::create_dir_all(shard)?;
            std::fs::File::open(blocks)?.sync_all()?;
        }
        std::fs::rename(&temp, &dest)?;
        // Without this the rename can be lost in a power cut after the block was reported
        // stored.
        std::fs::File::open(shard)?.sync_all()
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
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
    let reason = shoal::data::s3::describe(error);
    Error::Store(format!("{what} s3://{bucket}/{key}: {reason}"))
}

/// A local read of block `cid`: None if the file does not exist (the block is not stored).
fn stored<T>(read: std::io::Result<T>, cid: &ContentId) -> Result<Option<T>> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {cid}"), e)),
    }
}

/// The small blocks most lately found held, at most [`RecentlyHeld::CAPACITY`], oldest
/// forgotten first. Blocks are never deleted, so a remembered one stays held.
#[derive(Debug, Default)]
pub struct RecentlyHeld {
    set: std::collections::HashSet<ContentId>,
    order: std::collections::VecDeque<ContentId>,
}

impl RecentlyHeld {
    const CAPACITY: usize = 4096;

    fn contains(&self, cid: &ContentId) -> bool {
        self.set.contains(cid)
    }

    fn insert(&mut self, cid: ContentId) {
        if self.set.insert(cid) {
            self.order.push_back(cid);
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }
}

fn lock(held: &std::sync::Mutex<RecentlyHeld>) -> std::sync::MutexGuard<'_, RecentlyHeld> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}
