//! Receiving an upload: the transfer framing (directories, then files in chunks) turned
//! into UnixFS blocks, stored children first, and the root's CID returned only once every
//! block is durable.

use std::collections::HashSet;
use std::path::Path;

use futures::{Stream, StreamExt};
use shoal::content::transfer::check_tree_path;
use shoal::content::unixfs::{self, Block, FileBuilder, Link};
use shoal::proto::{Entry, EntryKind, UploadRequest, UploadResponse, upload_request};

use super::blocks::PendingPut;
use super::*;
use crate::error::{Error, Result};

impl ContentStore {
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
    /// The name a file upload's root entry gave (`Entry.name`).
    root_name: String,
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
            root_name: String::new(),
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
        if !self.root_name.is_empty() {
            self.store
                .record_name(&root.cid.to_string(), &self.root_name)
                .await;
        }
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
            None => {
                self.root = Some(kind);
                if kind == EntryKind::File {
                    self.root_name = entry.name.clone();
                }
            }
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
