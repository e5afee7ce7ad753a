//! The content store: programs, input data and results as UnixFS blocks, addressed by CID
//! exactly as IPFS addresses them (see `shoal::content::unixfs`), in a local directory or an S3
//! bucket (`crate::blocks`).
//!
//! A file is its DAG of 256 KiB raw leaves under dag-pb nodes; a directory is a dag-pb node
//! linking its entries by name. A block that exists is complete, identical data is stored
//! once, and a parent block is stored only after its children, so a stored root means a
//! whole DAG.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use shoal::content::cid::{ContentId, DAG_PB, RAW};
use shoal::content::transfer::check_tree_path;
use shoal::content::unixfs::{self, Block, FileBuilder, Link, NodeType};
use shoal::data::ipfs::GatewayFetcher;
use shoal::proto::{
    ContentBlock, DirectoryEntry, DownloadResponse, Entry, EntryKind, StatResponse, UploadRequest,
    UploadResponse, download_response, upload_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::blocks::{BlockStore, PendingPut};
use crate::records::Write;
use crate::store::Store;

/// File blocks read ahead of the one being sent by a download.
const READ_AHEAD_BLOCKS: usize = 4;
use crate::error::{Error, Result};

/// Most entries one upload may hold.
const MAX_UPLOAD_ENTRIES: usize = 100_000;
/// Deepest file DAG followed (a 256 KiB-chunk tree of depth 8 holds far more than any disk).
const MAX_DAG_DEPTH: usize = 8;
/// Deepest DAG (directories and file levels) `pin` follows.
const MAX_PIN_DEPTH: usize = 64;

/// A resolved CID or path: what it is and how many file bytes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub cid: ContentId,
    pub kind: EntryKind,
    pub size: u64,
}

/// The content store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blocks: BlockStore,
    /// Local scratch space: blocks being written, and copies being fetched.
    tmp: PathBuf,
    max_upload_bytes: u64,
}

impl ContentStore {
    /// Opens the store under `dir`, creating it if needed, with its small blocks in
    /// `database`. Uploads over `max_upload_bytes` of file content are refused.
    pub fn open(dir: &Path, database: Store, max_upload_bytes: u64) -> Result<Self> {
        Self::open_with(dir, None, database, max_upload_bytes)
    }

    /// Opens the store with its blocks in `s3` (a client, bucket and key prefix) if given,
    /// else under `dir` and in `database` (the small ones); `dir` holds the scratch space
    /// either way.
    pub fn open_with(
        dir: &Path,
        s3: Option<(aws_sdk_s3::Client, String, String)>,
        database: Store,
        max_upload_bytes: u64,
    ) -> Result<Self> {
        let blocks = dir.join("blocks");
        let tmp = dir.join("tmp");
        for path in [&blocks, &tmp] {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let blocks = match s3 {
            Some((client, bucket, prefix)) => BlockStore::S3 {
                client,
                bucket,
                prefix,
            },
            None => BlockStore::local(blocks, tmp.clone(), database),
        };
        Ok(ContentStore {
            blocks,
            tmp,
            max_upload_bytes,
        })
    }

    /// The block backend.
    pub fn blocks(&self) -> &BlockStore {
        &self.blocks
    }

    /// Whether the block `cid` is stored (for a DAG, its root). A backend that cannot
    /// answer is an error, never taken for "absent" (which would tell a client to upload
    /// data the store holds).
    pub async fn contains(&self, cid: &ContentId) -> Result<bool> {
        Ok(self.blocks.size(cid).await?.is_some())
    }

    /// Stores one block (idempotent).
    pub async fn put_block(&self, block: &Block) -> Result<()> {
        self.blocks.put(&block.cid, &block.data).await
    }

    /// One block's bytes.
    pub async fn get_block(&self, cid: &ContentId) -> Result<Bytes> {
        self.blocks.get(cid).await
    }

    async fn node(&self, cid: &ContentId) -> Result<(unixfs::PbNode, unixfs::UnixfsData)> {
        let bytes = self.get_block(cid).await?;
        unixfs::decode_node(&bytes).map_err(|e| Error::Store(format!("{cid}: {e}")))
    }

    /// Stores a file or tree sent in the upload framing and returns its CID.
    pub async fn put<S>(&self, stream: S) -> Result<UploadResponse>
    where
        S: Stream<Item = Result<UploadRequest, tonic::Status>> + Unpin,
    {
        Upload::new(self).receive(stream).await
    }

    /// Stores a local file or tree (fetched by the orchestrator itself) and returns its CID.
    pub async fn put_path(&self, path: &Path) -> Result<UploadResponse> {
        let stream = shoal::content::transfer::local_upload_stream(path).await?;
        self.put(stream.map(Ok)).await
    }

    /// Makes sure the whole DAG under `cid` is held, fetching the blocks the store lacks
    /// from `gateways` (which verifies each against its CID); returns how many it fetched.
    /// Children are stored before their parent, as uploads do, so a held block always has
    /// its whole DAG held and a held root ends the walk.
    pub async fn pin(&self, cid: &ContentId, gateways: &GatewayFetcher) -> Result<u64> {
        self.fetch_missing(*cid, gateways, 0).await
    }

    fn fetch_missing<'a>(
        &'a self,
        cid: ContentId,
        gateways: &'a GatewayFetcher,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            if self.contains(&cid).await? {
                return Ok(0);
            }
            if depth > MAX_PIN_DEPTH {
                return Err(Error::FailedPrecondition(format!(
                    "the DAG is deeper than {MAX_PIN_DEPTH} levels"
                )));
            }
            let data = gateways
                .block(&cid)
                .await
                .map_err(Error::FailedPrecondition)?;
            let mut fetched = 1;
            if !cid.is_raw() {
                let (node, _) = unixfs::decode_node(&data)
                    .map_err(|e| Error::FailedPrecondition(format!("{cid}: {e}")))?;
                for link in &node.links {
                    let child = unixfs::link_cid(link)?;
                    fetched += self.fetch_missing(child, gateways, depth + 1).await?;
                }
            }
            self.put_block(&Block { cid, data }).await?;
            Ok(fetched)
        })
    }

    /// Checks a result tree an executor sent with a completion (`result_blocks`) and
    /// returns the writes that store it, to be committed with the completion (an S3 store
    /// gets the blocks at once). Every block must match its CID, the last must be `root`,
    /// and every link must point at a block sent or already stored: a stored root always
    /// means a whole DAG.
    pub async fn inline_tree(&self, root: &str, blocks: &[ContentBlock]) -> Result<Vec<Write>> {
        let bad = |m: String| Error::InvalidArgument(format!("result tree {root:?}: {m}"));
        let total: usize = blocks.iter().map(|b| b.data.len()).sum();
        if total > shoal::content::transfer::MAX_INLINE_RESULT_BYTES {
            return Err(bad(format!(
                "{total} bytes of blocks; at most {} may come with a completion",
                shoal::content::transfer::MAX_INLINE_RESULT_BYTES
            )));
        }
        let mut checked = Vec::with_capacity(blocks.len());
        for block in blocks {
            let cid: ContentId = block
                .cid
                .parse()
                .map_err(|e| bad(format!("block {:?}: {e}", block.cid)))?;
            if cid.codec() != RAW && cid.codec() != DAG_PB {
                return Err(bad(format!("block {cid} is neither raw nor dag-pb")));
            }
            if ContentId::of_block(cid.codec(), &block.data) != cid {
                return Err(bad(format!("block {cid} does not match its bytes")));
            }
            checked.push((cid, block.data.clone()));
        }
        match checked.last() {
            Some((last, _)) if last.to_string() == root => {}
            _ => return Err(bad("the last block is not the root".into())),
        }
        let sent: HashSet<ContentId> = checked.iter().map(|(cid, _)| *cid).collect();
        for (cid, data) in checked.iter().filter(|(cid, _)| !cid.is_raw()) {
            let (node, _) = unixfs::decode_node(data).map_err(|e| bad(format!("{cid}: {e}")))?;
            for link in &node.links {
                let child = unixfs::link_cid(link).map_err(|e| bad(format!("{cid}: {e}")))?;
                if !sent.contains(&child) && !self.contains(&child).await? {
                    return Err(bad(format!(
                        "{cid} links to {child}, which is neither sent nor stored"
                    )));
                }
            }
        }
        self.blocks.writes_for(&checked).await
    }

    /// A fresh path in the store's scratch directory, for data on its way in.
    pub fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::now_v7().to_string())
    }

    /// What `cid` (or `path` inside it) is.
    pub async fn resolve(&self, cid: &ContentId, path: &str) -> Result<Resolved> {
        check_tree_path(path)?;
        let mut current = self.resolve_root(cid).await?;
        if path.is_empty() {
            return Ok(current);
        }
        for segment in path.split('/') {
            if current.kind != EntryKind::Directory {
                return Err(Error::NotFound(format!(
                    "no {path:?} in {cid}: not a directory"
                )));
            }
            let (node, _) = self.node(&current.cid).await?;
            let link = node
                .links
                .iter()
                .find(|l| l.name.as_deref() == Some(segment))
                .ok_or_else(|| Error::NotFound(format!("no {path:?} in {cid}")))?;
            current = self.resolve_root(&unixfs::link_cid(link)?).await?;
        }
        Ok(current)
    }

    async fn resolve_root(&self, cid: &ContentId) -> Result<Resolved> {
        if cid.is_raw() {
            let size = self
                .blocks
                .size(cid)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{cid} is not in the store")))?;
            return Ok(Resolved {
                cid: *cid,
                kind: EntryKind::File,
                size,
            });
        }
        if cid.codec() != DAG_PB {
            return Err(Error::NotFound(format!(
                "{cid} is not UnixFS content (only raw and dag-pb blocks are stored)"
            )));
        }
        let (_, data) = self.node(cid).await?;
        match node_type(&data)? {
            NodeType::File | NodeType::Raw => Ok(Resolved {
                cid: *cid,
                kind: EntryKind::File,
                size: data.filesize.unwrap_or(0),
            }),
            NodeType::Directory => Ok(Resolved {
                cid: *cid,
                kind: EntryKind::Directory,
                size: 0,
            }),
            other => Err(Error::FailedPrecondition(format!(
                "{cid} is a UnixFS {other:?} node, which Shoal does not read yet"
            ))),
        }
    }

    /// Total file bytes under a directory (walks its directory nodes).
    fn directory_size<'a>(&'a self, cid: ContentId) -> futures::future::BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (node, _) = self.node(&cid).await?;
            let mut total = 0;
            for link in &node.links {
                let child = self.resolve_root(&unixfs::link_cid(link)?).await?;
                total += match child.kind {
                    EntryKind::Directory => self.directory_size(child.cid).await?,
                    _ => child.size,
                };
            }
            Ok(total)
        })
    }

    /// Describes `cid` (or `path` inside it), with a directory's children.
    pub async fn stat(&self, cid: &ContentId, path: &str) -> Result<StatResponse> {
        let resolved = self.resolve(cid, path).await?;
        let mut entries = Vec::new();
        let mut size = resolved.size;
        if resolved.kind == EntryKind::Directory {
            size = 0;
            let (node, _) = self.node(&resolved.cid).await?;
            for link in &node.links {
                let child = self.resolve_root(&unixfs::link_cid(link)?).await?;
                let child_size = match child.kind {
                    EntryKind::Directory => self.directory_size(child.cid).await?,
                    _ => child.size,
                };
                size += child_size;
                entries.push(DirectoryEntry {
                    name: link.name.clone().unwrap_or_default(),
                    cid: child.cid.to_string(),
                    kind: child.kind as i32,
                    size: child_size,
                });
            }
        }
        Ok(StatResponse {
            cid: resolved.cid.to_string(),
            kind: resolved.kind as i32,
            size,
            entries,
        })
    }

    /// Streams `cid` (or `path` inside it) in the download framing. Errors found before
    /// the first message are returned; later ones end the stream with a status.
    pub async fn download(
        &self,
        cid: &ContentId,
        path: &str,
        offset: u64,
    ) -> Result<ReceiverStream<Result<DownloadResponse, tonic::Status>>> {
        let root = self.resolve(cid, path).await?;
        if root.kind == EntryKind::File && offset > root.size {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is past the end of a {}-byte file",
                root.size
            )));
        }
        // Bounded: a slow client holds at most a few chunks in memory.
        let (tx, rx) = mpsc::channel(8);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(error) = store.send_tree(&tx, root, offset).await {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn send_tree(
        &self,
        tx: &mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
        root: Resolved,
        offset: u64,
    ) -> Result<()> {
        // Depth-first with an explicit stack, parents before children, names in order.
        let mut stack = vec![(root, String::new())];
        while let Some((entry, path)) = stack.pop() {
            let is_root = path.is_empty();
            let header = DownloadResponse {
                item: Some(download_response::Item::Entry(Entry {
                    path: path.clone(),
                    kind: entry.kind as i32,
                    size: entry.size,
                })),
            };
            if tx.send(Ok(header)).await.is_err() {
                return Ok(()); // the client went away
            }
            if entry.kind == EntryKind::File {
                let skip = if is_root { offset } else { 0 };
                if !self.send_file(tx, entry.cid, skip, 0).await? {
                    return Ok(());
                }
                continue;
            }
            let (node, _) = self.node(&entry.cid).await?;
            for link in node.links.iter().rev() {
                let name = link.name.clone().unwrap_or_default();
                check_tree_path(&name).map_err(|_| {
                    Error::Store(format!(
                        "{} holds an unusable entry name {name:?}",
                        entry.cid
                    ))
                })?;
                let child_path = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                let child = self.resolve_root(&unixfs::link_cid(link)?).await?;
                stack.push((child, child_path));
            }
        }
        Ok(())
    }

    /// Sends a file DAG's bytes, skipping the first `skip`; false if the client went away.
    fn send_file<'a>(
        &'a self,
        tx: &'a mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
        cid: ContentId,
        skip: u64,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if depth > MAX_DAG_DEPTH {
                return Err(Error::Store(format!("the DAG under {cid} is too deep")));
            }
            if cid.is_raw() {
                let data = self.get_block(&cid).await?;
                let start = (skip as usize).min(data.len());
                return Ok(send_data(tx, data.slice(start..)).await);
            }
            let (node, data) = self.node(&cid).await?;
            let mut skip = skip;
            if let Some(inline) = data.data.filter(|d| !d.is_empty()) {
                let start = (skip as usize).min(inline.len());
                skip -= start as u64;
                if !send_data(tx, inline.slice(start..)).await {
                    return Ok(false);
                }
            }
            let mut children = Vec::with_capacity(node.links.len());
            for (i, link) in node.links.iter().enumerate() {
                let size = data.blocksizes.get(i).copied().unwrap_or(0);
                if skip >= size && size > 0 {
                    skip -= size;
                    continue;
                }
                children.push((unixfs::link_cid(link)?, skip));
                skip = 0;
            }
            // Leaf blocks are read a few ahead of the one being sent, so the disk and the
            // network work at the same time instead of taking turns (B5).
            let mut children = futures::stream::iter(children)
                .map(|(cid, skip)| async move {
                    let leaf = if cid.is_raw() {
                        Some(self.get_block(&cid).await?)
                    } else {
                        None
                    };
                    Ok::<_, Error>((cid, skip, leaf))
                })
                .buffered(READ_AHEAD_BLOCKS);
            while let Some(child) = children.next().await {
                let (cid, skip, leaf) = child?;
                let sent = match leaf {
                    Some(data) => {
                        let start = (skip as usize).min(data.len());
                        send_data(tx, data.slice(start..)).await
                    }
                    None => self.send_file(tx, cid, skip, depth + 1).await?,
                };
                if !sent {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }
}

async fn send_data(
    tx: &mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
    data: Bytes,
) -> bool {
    if data.is_empty() {
        return true;
    }
    tx.send(Ok(DownloadResponse {
        item: Some(download_response::Item::Data(data)),
    }))
    .await
    .is_ok()
}

fn node_type(data: &unixfs::UnixfsData) -> Result<NodeType> {
    data.node_type()
        .ok_or_else(|| Error::Store(format!("unknown UnixFS node type {}", data.r#type)))
}

/// A file being received.
struct IncomingFile {
    path: String,
    builder: FileBuilder,
    expected: u64,
    written: u64,
}

/// The state of one upload: the directories declared so far and the file being built.
struct Upload<'a> {
    store: &'a ContentStore,
    root: Option<EntryKind>,
    /// Entries of each declared directory, by directory path.
    directories: unixfs::Directories,
    names: HashSet<String>,
    current: Option<IncomingFile>,
    total: u64,
    root_file: Option<Link>,
    /// Blocks queued for the store's next commit, waited for before the CID is returned.
    pending: Vec<PendingPut>,
}

/// Blocks an upload leaves queued before it waits for them (bounds its memory).
const MAX_PENDING_BLOCKS: usize = 1024;

/// Hands `block` to the store and remembers it in `pending` until it is waited for.
async fn queue_block(
    store: &ContentStore,
    pending: &mut Vec<PendingPut>,
    block: &Block,
) -> Result<()> {
    pending.push(store.blocks.put_queued(&block.cid, &block.data).await?);
    if pending.len() >= MAX_PENDING_BLOCKS {
        wait_all(pending).await?;
    }
    Ok(())
}

/// Waits until every block in `pending` is durable; each commit's own result counts.
async fn wait_all(pending: &mut Vec<PendingPut>) -> Result<()> {
    for put in pending.drain(..) {
        put.wait().await?;
    }
    Ok(())
}

fn malformed(message: String) -> Error {
    Error::Core(shoal::Error::MalformedTransfer(message))
}

impl<'a> Upload<'a> {
    fn new(store: &'a ContentStore) -> Self {
        Upload {
            store,
            root: None,
            directories: unixfs::Directories::new(),
            names: HashSet::new(),
            current: None,
            total: 0,
            root_file: None,
            pending: Vec::new(),
        }
    }

    async fn receive<S>(mut self, mut stream: S) -> Result<UploadResponse>
    where
        S: Stream<Item = Result<UploadRequest, tonic::Status>> + Unpin,
    {
        while let Some(message) = stream.next().await {
            let message =
                message.map_err(|s| malformed(format!("upload stream failed: {}", s.message())))?;
            match message.item {
                Some(upload_request::Item::Entry(entry)) => self.begin_entry(entry).await?,
                Some(upload_request::Item::Data(data)) => self.write_data(&data).await?,
                None => return Err(malformed("empty upload message".into())),
            }
        }
        self.finish_file().await?;
        let root = match self.root {
            None => return Err(malformed("the upload had no entries".into())),
            Some(EntryKind::File) => self
                .root_file
                .ok_or_else(|| malformed("the file upload was not finished".into()))?,
            Some(_) => self.build_directories().await?,
        };
        wait_all(&mut self.pending).await?;
        Ok(UploadResponse {
            cid: root.cid.to_string(),
            size: self.total,
        })
    }

    async fn begin_entry(&mut self, entry: Entry) -> Result<()> {
        self.finish_file().await?;
        check_tree_path(&entry.path)?;
        let kind = entry.kind();
        if kind == EntryKind::Unspecified {
            return Err(malformed(format!("entry {:?} has no kind", entry.path)));
        }
        if self.names.len() >= MAX_UPLOAD_ENTRIES {
            return Err(Error::ResourceExhausted(format!(
                "an upload may hold at most {MAX_UPLOAD_ENTRIES} entries"
            )));
        }
        match self.root {
            None if !entry.path.is_empty() => {
                return Err(malformed(
                    "the first entry must be the root (empty path)".into(),
                ));
            }
            None => self.root = Some(kind),
            Some(EntryKind::File) => {
                return Err(malformed("a file upload holds exactly one entry".into()));
            }
            Some(_) => {
                if entry.path.is_empty() {
                    return Err(malformed("the root entry appears twice".into()));
                }
                if !self.directories.contains_key(parent_of(&entry.path)) {
                    return Err(malformed(format!(
                        "{:?} comes before its parent directory",
                        entry.path
                    )));
                }
                if !self.names.insert(entry.path.clone()) {
                    return Err(malformed(format!("{:?} appears twice", entry.path)));
                }
            }
        }
        if kind == EntryKind::Directory {
            self.directories.insert(entry.path, Vec::new());
            return Ok(());
        }
        if self.total.saturating_add(entry.size) > self.store.max_upload_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the upload exceeds the limit of {} bytes",
                self.store.max_upload_bytes
            )));
        }
        self.current = Some(IncomingFile {
            path: entry.path,
            builder: FileBuilder::new(),
            expected: entry.size,
            written: 0,
        });
        Ok(())
    }

    async fn write_data(&mut self, data: &[u8]) -> Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Err(malformed("data outside a file entry".into()));
        };
        if current.written + data.len() as u64 > current.expected {
            return Err(malformed(format!(
                "{:?} is longer than its declared {} bytes",
                current.path, current.expected
            )));
        }
        current.written += data.len() as u64;
        self.total += data.len() as u64;
        for block in current.builder.write(data) {
            queue_block(self.store, &mut self.pending, &block).await?;
        }
        Ok(())
    }

    async fn finish_file(&mut self) -> Result<()> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        if current.written != current.expected {
            return Err(malformed(format!(
                "{:?} ended after {} of its declared {} bytes",
                current.path, current.written, current.expected
            )));
        }
        let (blocks, link) = current.builder.finish();
        for block in &blocks {
            queue_block(self.store, &mut self.pending, block).await?;
        }
        if current.path.is_empty() {
            self.root_file = Some(link);
        } else {
            let (parent, name) = split_path(&current.path);
            if let Some(entries) = self.directories.get_mut(parent) {
                entries.push((name.to_owned(), link));
            }
        }
        Ok(())
    }

    /// Stores every directory node, deepest first, and returns the root's link.
    async fn build_directories(&mut self) -> Result<Link> {
        let (nodes, root) = unixfs::close_directories(std::mem::take(&mut self.directories));
        for node in &nodes {
            queue_block(self.store, &mut self.pending, node).await?;
        }
        root.ok_or_else(|| Error::Store("the root directory was lost".into()))
    }
}

fn parent_of(path: &str) -> &str {
    split_path(path).0
}

fn split_path(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind, size: u64) -> Result<UploadRequest, tonic::Status> {
        Ok(UploadRequest {
            item: Some(upload_request::Item::Entry(Entry {
                path: path.into(),
                kind: kind as i32,
                size,
            })),
        })
    }

    fn data(bytes: &[u8]) -> Result<UploadRequest, tonic::Status> {
        Ok(UploadRequest {
            item: Some(upload_request::Item::Data(bytes.to_vec().into())),
        })
    }

    /// A content store under `dir` with its small blocks in a database beside it.
    fn open_store(dir: &Path, max_upload_bytes: u64) -> ContentStore {
        let (database, _) = Store::open(&dir.join("state.redb")).expect("open the database");
        ContentStore::open(&dir.join("content"), database, max_upload_bytes).expect("open")
    }

    async fn put(
        store: &ContentStore,
        items: Vec<Result<UploadRequest, tonic::Status>>,
    ) -> Result<UploadResponse> {
        store.put(futures::stream::iter(items)).await
    }

    /// A tree goes in and comes out identical, and identical trees get identical CIDs.
    #[tokio::test]
    async fn tree_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), 1 << 30);
        let items = || {
            vec![
                entry("", EntryKind::Directory, 0),
                entry("a.txt", EntryKind::File, 5),
                data(b"hello"),
                entry("sub", EntryKind::Directory, 0),
                entry("sub/b.txt", EntryKind::File, 3),
                data(b"abc"),
            ]
        };
        let first = put(&store, items()).await.expect("upload");
        let second = put(&store, items()).await.expect("upload again");
        assert_eq!(first, second);
        assert_eq!(first.size, 8);
        let cid: ContentId = first.cid.parse().expect("cid");
        let file = store.resolve(&cid, "sub/b.txt").await.expect("resolve");
        assert_eq!(file.kind, EntryKind::File);
        assert_eq!(file.size, 3);
        let stat = store.stat(&cid, "").await.expect("stat");
        let names: Vec<_> = stat.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["a.txt", "sub"]);
        let out = tempfile::tempdir().expect("tempdir");
        let stream = store.download(&cid, "", 0).await.expect("download");
        shoal::content::transfer::download_to(stream, &out.path().join("tree"))
            .await
            .expect("write");
        assert_eq!(
            std::fs::read(out.path().join("tree/sub/b.txt")).expect("read"),
            b"abc"
        );
        assert!(matches!(
            store.resolve(&cid, "nope").await,
            Err(Error::NotFound(_))
        ));
    }

    /// A multi-chunk file gets IPFS's CID, and downloads resume from any offset.
    #[tokio::test]
    async fn large_files_and_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), 1 << 30);
        let bytes: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        let mut items = vec![entry("", EntryKind::File, bytes.len() as u64)];
        items.extend(bytes.chunks(100_000).map(data));
        let response = put(&store, items).await.expect("upload");
        assert_eq!(
            response.cid,
            shoal::content::unixfs::file_cid(&bytes, true).to_string()
        );
        let cid: ContentId = response.cid.parse().expect("cid");
        assert_eq!(
            store.resolve(&cid, "").await.expect("resolve").size,
            700_000
        );
        for offset in [0u64, 1, 262_143, 262_144, 300_000, 699_999, 700_000] {
            let stream = store.download(&cid, "", offset).await.expect("download");
            let got = shoal::content::transfer::download_bytes(stream, 1 << 30)
                .await
                .expect("bytes");
            assert_eq!(got, bytes[offset as usize..], "offset {offset}");
        }
        assert!(store.download(&cid, "", 700_001).await.is_err());
    }

    /// Every block file under the content directory, with its length.
    fn block_files(content: &Path) -> Vec<(PathBuf, u64)> {
        shoal::content::local_tree::walk(
            &content.join("blocks"),
            shoal::content::local_tree::TreeBounds::LOCAL,
        )
        .expect("walk")
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| (e.absolute, e.size))
        .collect()
    }

    /// On a real full disk (a tmpfs), an upload that cannot store its blocks fails and
    /// leaves no empty or partial block under any CID; once there is room again the same
    /// upload succeeds and reads back whole. A block file damaged later (cut to 0 bytes) is
    /// replaced by the next upload of the same data instead of being trusted for good.
    #[tokio::test]
    async fn a_full_disk_never_leaves_a_broken_block() {
        let disk = crate::testing::SmallDisk::mount("1m");
        let database = tempfile::tempdir().expect("tempdir");
        let (db, _) = Store::open(&database.path().join("state.redb")).expect("open");
        let content = disk.path().join("content");
        let store = ContentStore::open(&content, db, 1 << 30).expect("open");
        let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let upload = || {
            let mut items = vec![entry("", EntryKind::File, bytes.len() as u64)];
            items.extend(bytes.chunks(100_000).map(data));
            items
        };
        let filler = disk.fill_leaving(300 << 10);
        let error = put(&store, upload()).await.expect_err("the disk is full");
        assert!(error.to_string().contains("No space left"), "{error}");
        let broken: Vec<_> = block_files(&content)
            .into_iter()
            .filter(|(path, size)| {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let cid: ContentId = name.parse().expect("a block file is named by its CID");
                std::fs::read(path).map_or(true, |b| b.len() as u64 != *size || !cid.verifies(&b))
            })
            .collect();
        assert!(broken.is_empty(), "broken blocks: {broken:?}");

        std::fs::remove_file(&filler).expect("free the disk");
        let response = put(&store, upload()).await.expect("upload with room");
        let cid: ContentId = response.cid.parse().expect("cid");
        let read = |store: &ContentStore| {
            let store = store.clone();
            async move {
                let stream = store.download(&cid, "", 0).await.expect("download");
                shoal::content::transfer::download_bytes(stream, 1 << 30)
                    .await
                    .expect("bytes")
            }
        };
        assert_eq!(read(&store).await, bytes);

        let (damaged, _) = block_files(&content)
            .into_iter()
            .next()
            .expect("a block file");
        std::fs::write(&damaged, b"").expect("damage a block");
        put(&store, upload()).await.expect("upload again");
        assert_eq!(read(&store).await, bytes, "the damaged block was replaced");
    }

    /// Blocks up to SMALL_BLOCK_MAX go into the database, bigger ones into files, and both
    /// kinds are there after the database is closed and opened again.
    #[tokio::test]
    async fn small_blocks_live_in_the_database_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_path = dir.path().join("state.redb");
        let content_dir = dir.path().join("content");
        // 300,000 bytes: one full 256 KiB leaf (a file) and a 37,856-byte tail (small).
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let items = vec![
            entry("", EntryKind::Directory, 0),
            entry("big", EntryKind::File, big.len() as u64),
            data(&big),
            entry("small", EntryKind::File, 5),
            data(b"hello"),
        ];
        let cid = {
            let (database, _) = Store::open(&database_path).expect("open the database");
            let store = ContentStore::open(&content_dir, database.clone(), 1 << 30).expect("open");
            let response = put(&store, items).await.expect("upload");
            drop(store);
            database.close().await;
            response.cid
        };
        let mut block_files = 0;
        for shard in std::fs::read_dir(content_dir.join("blocks")).expect("blocks") {
            for block in std::fs::read_dir(shard.expect("shard").path()).expect("shard") {
                let size = block.expect("block").metadata().expect("metadata").len();
                assert!(
                    size as usize > crate::blocks::SMALL_BLOCK_MAX,
                    "{size}-byte file"
                );
                block_files += 1;
            }
        }
        assert_eq!(block_files, 1, "only the full leaf is a file");

        let (database, _) = Store::open(&database_path).expect("reopen the database");
        let store = ContentStore::open(&content_dir, database, 1 << 30).expect("reopen");
        let cid: ContentId = cid.parse().expect("cid");
        let out = tempfile::tempdir().expect("tempdir");
        let stream = store.download(&cid, "", 0).await.expect("download");
        shoal::content::transfer::download_to(stream, &out.path().join("tree"))
            .await
            .expect("write");
        assert_eq!(
            std::fs::read(out.path().join("tree/big")).expect("big"),
            big
        );
        assert_eq!(
            std::fs::read(out.path().join("tree/small")).expect("small"),
            b"hello"
        );
    }

    /// A tree built in memory (what an executor sends with a completion) gets the CID an
    /// upload of the same tree gets, and its blocks pass `inline_tree`.
    #[tokio::test]
    async fn trees_built_in_memory_match_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), 1 << 30);
        let uploaded = put(
            &store,
            vec![
                entry("", EntryKind::Directory, 0),
                entry("exitCode", EntryKind::File, 1),
                data(b"0"),
                entry("outputs", EntryKind::Directory, 0),
                entry("outputs/a.txt", EntryKind::File, 3),
                data(b"abc"),
                entry("stdout", EntryKind::File, 6),
                data(b"hello\n"),
            ],
        )
        .await
        .expect("upload");
        let file =
            |path: &str, bytes: &'static [u8]| (path.to_owned(), Some(Bytes::from_static(bytes)));
        let (blocks, root) = unixfs::directory_tree(vec![
            file("exitCode", b"0"),
            ("outputs".to_owned(), None),
            file("outputs/a.txt", b"abc"),
            file("stdout", b"hello\n"),
        ]);
        assert_eq!(root.cid.to_string(), uploaded.cid);
        let sent: Vec<ContentBlock> = blocks.into_iter().map(ContentBlock::from).collect();
        let writes = store
            .inline_tree(&uploaded.cid, &sent)
            .await
            .expect("sound");
        assert_eq!(writes.len(), sent.len());
    }

    /// Malformed upload streams are refused with a reason, and leave no blob behind.
    #[tokio::test]
    async fn malformed_uploads_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), 10);
        let cases = vec![
            ("no entries", vec![]),
            ("data first", vec![data(b"x")]),
            (
                "short file",
                vec![entry("", EntryKind::File, 5), data(b"abc")],
            ),
            (
                "long file",
                vec![entry("", EntryKind::File, 1), data(b"abc")],
            ),
            (
                "escape",
                vec![
                    entry("", EntryKind::Directory, 0),
                    entry("../x", EntryKind::File, 0),
                ],
            ),
            (
                "orphan",
                vec![
                    entry("", EntryKind::Directory, 0),
                    entry("a/b", EntryKind::File, 0),
                ],
            ),
            (
                "twice",
                vec![
                    entry("", EntryKind::Directory, 0),
                    entry("a", EntryKind::File, 0),
                    entry("a", EntryKind::File, 0),
                ],
            ),
            ("too big", vec![entry("", EntryKind::File, 11)]),
        ];
        for (name, items) in cases {
            assert!(put(&store, items).await.is_err(), "{name}");
        }
        let leftovers = std::fs::read_dir(dir.path().join("content/tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0);
    }
}
