//! The content store: programs, input data and results as UnixFS blocks, addressed by CID
//! exactly as IPFS addresses them (see `shoal::content::unixfs`), in a local directory or an S3
//! bucket (`blocks`).
//!
//! A file is its DAG of 256 KiB raw leaves under dag-pb nodes; a directory is a dag-pb node
//! linking its entries by name. A block that exists is complete, identical data is stored
//! once, and a parent block is stored only after its children, so a stored root means a
//! whole DAG.

mod blocks;
mod download;
mod partitions;
mod upload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shoal::content::cid::{ContentId, DAG_PB, RAW};
use shoal::content::transfer::check_tree_path;
use shoal::content::unixfs::{self, Block, NodeType};
use shoal::data::ipfs::GatewayFetcher;
use shoal::proto::{ContentBlock, DirectoryEntry, EntryKind, StatResponse};

pub use self::blocks::BlockStore;
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
    /// The database, for the names stored files came with.
    store: Store,
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
            None => BlockStore::local(blocks, tmp.clone(), database.clone()),
        };
        Ok(ContentStore {
            blocks,
            store: database,
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
            let data = gateways.block(&cid).await.map_err(|error| Error::Fetch {
                action: format!("fetch block {cid}"),
                error,
            })?;
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
        if let Some((root_cid, root_data)) = checked.last() {
            let directory = !root_cid.is_raw()
                && unixfs::decode_node(root_data)
                    .is_ok_and(|(_, data)| data.node_type() == Some(NodeType::Directory));
            if !directory {
                return Err(bad("the root is a file, not a directory".into()));
            }
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

    /// Whether the stored `cid` is a UnixFS directory: a result must be one (`stdout`,
    /// `exitCode`, the outputs). Anything else the store holds, a file or a block that is
    /// not UnixFS, is not; only failing to read the block is an error.
    pub async fn is_directory(&self, cid: &ContentId) -> Result<bool> {
        if cid.codec() != DAG_PB {
            return Ok(false);
        }
        let bytes = self.get_block(cid).await?;
        Ok(unixfs::decode_node(&bytes)
            .is_ok_and(|(_, data)| data.node_type() == Some(NodeType::Directory)))
    }

    /// The entries of the directory `cid` (names and CIDs, in the directory's order); a
    /// file, or content the store lacks, is an error saying so.
    pub async fn directory_entries(&self, cid: &ContentId) -> Result<Vec<(String, ContentId)>> {
        let root = self.resolve_root(cid).await?;
        if root.kind != EntryKind::Directory {
            return Err(Error::InvalidArgument(format!(
                "{cid} is a file, not a directory"
            )));
        }
        let (node, _) = self.node(cid).await?;
        node.links
            .iter()
            .map(|link| {
                Ok((
                    link.name.clone().unwrap_or_default(),
                    unixfs::link_cid(link)?,
                ))
            })
            .collect()
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
        let name = match (path.is_empty(), resolved.kind) {
            (true, EntryKind::File) => self.store.name(&cid.to_string()).await?,
            _ => None,
        };
        Ok(StatResponse {
            cid: resolved.cid.to_string(),
            kind: resolved.kind as i32,
            size,
            entries,
            name: name.unwrap_or_default(),
        })
    }

    /// Records `name` as the file name `cid` came with, for clients to mount it under,
    /// unless the CID has one already (the first stays). A name that could not be a mount
    /// name (empty, a path, `..`, too long, a control character) is not recorded: it came
    /// from a URL, an S3 key or a client, none of which is trusted to be tidy. A name that
    /// cannot be written is logged and skipped: the data is stored, and a name is a hint.
    pub async fn record_name(&self, cid: &str, name: &str) {
        if !is_mount_name(name) {
            return;
        }
        let recorded = async {
            if self.store.name(cid).await?.is_some() {
                return Ok(());
            }
            let write = Write::Name {
                cid: cid.to_owned(),
                name: name.to_owned(),
            };
            self.store.queue(vec![write]).await?.wait().await
        };
        if let Err(error) = recorded.await {
            tracing::warn!(cid, name, %error, "cannot record the name of stored data");
        }
    }
}

/// Whether `name` can name a mounted file: one path component that a mount target
/// `/inputs/NAME` accepts, at most 255 bytes (a file name's limit).
fn is_mount_name(name: &str) -> bool {
    !name.contains('/')
        && name.len() <= 255
        && shoal::spec::validate_mount_path(&format!("/inputs/{name}")).is_ok()
}

fn node_type(data: &unixfs::UnixfsData) -> Result<NodeType> {
    data.node_type()
        .ok_or_else(|| Error::Store(format!("unknown UnixFS node type {}", data.r#type)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::proto::{Entry, UploadRequest, UploadResponse, upload_request};

    fn entry(path: &str, kind: EntryKind, size: u64) -> Result<UploadRequest, tonic::Status> {
        named_entry(path, kind, size, "")
    }

    fn named_entry(
        path: &str,
        kind: EntryKind,
        size: u64,
        name: &str,
    ) -> Result<UploadRequest, tonic::Status> {
        Ok(UploadRequest {
            item: Some(upload_request::Item::Entry(Entry {
                path: path.into(),
                kind: kind as i32,
                size,
                name: name.into(),
            })),
        })
    }

    /// The name the store gives for the file `cid`.
    async fn name_of(store: &ContentStore, cid: &str) -> String {
        let cid: ContentId = cid.parse().expect("cid");
        store.stat(&cid, "").await.expect("stat").name
    }

    /// Uploads `bytes` as one file under `name`.
    async fn put_named(store: &ContentStore, bytes: &[u8], name: &str) -> String {
        let items = vec![
            named_entry("", EntryKind::File, bytes.len() as u64, name),
            data(bytes),
        ];
        put(store, items).await.expect("upload").cid
    }

    /// A file uploaded with a name keeps it, durably: the first name given stays when the
    /// same bytes come again under another; a name that could not be a mount name (a path,
    /// `..`, a control character, too long) is not recorded; a directory gets none.
    #[tokio::test]
    async fn a_file_keeps_the_first_name_it_came_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, hostile) = {
            let store = open_store(dir.path(), 1 << 30);
            let first = put_named(&store, b"a,b\n", "data.csv").await;
            assert_eq!(name_of(&store, &first).await, "data.csv");
            assert_eq!(put_named(&store, b"a,b\n", "other.csv").await, first);
            assert_eq!(name_of(&store, &first).await, "data.csv");
            let long = "x".repeat(256);
            let mut hostile = Vec::new();
            for (n, name) in ["../../etc/passwd", "..", "a/b", "tab\there", &long]
                .into_iter()
                .enumerate()
            {
                let cid = put_named(&store, n.to_string().as_bytes(), name).await;
                assert_eq!(name_of(&store, &cid).await, "", "{name:?}");
                hostile.push(cid);
            }
            let tree = put(&store, vec![named_entry("", EntryKind::Directory, 0, "d")])
                .await
                .expect("upload a directory");
            assert_eq!(name_of(&store, &tree.cid).await, "");
            let database = store.store.clone();
            drop(store);
            database.close().await;
            (first, hostile)
        };
        // From the log or the database, after a restart.
        let store = open_store(dir.path(), 1 << 30);
        assert_eq!(name_of(&store, &first).await, "data.csv");
        assert_eq!(name_of(&store, &hostile[0]).await, "");
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
        let disk = shoal_harness::small_disk::SmallDisk::mount("1m");
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
                assert!(size as usize > blocks::SMALL_BLOCK_MAX, "{size}-byte file");
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
        assert!(
            writes.is_empty(),
            "blocks the store holds are not written again"
        );

        // A tree sharing most of its blocks: only the new ones are written.
        let (blocks, root) = unixfs::directory_tree(vec![
            file("exitCode", b"0"),
            ("outputs".to_owned(), None),
            file("outputs/a.txt", b"abc"),
            file("stdout", b"other\n"),
        ]);
        let sent: Vec<ContentBlock> = blocks.into_iter().map(ContentBlock::from).collect();
        let written: Vec<String> = store
            .inline_tree(&root.cid.to_string(), &sent)
            .await
            .expect("sound")
            .into_iter()
            .filter_map(|w| match w {
                Write::Block { cid, .. } => Some(cid),
                _ => None,
            })
            .collect();
        let stdout = ContentId::of_block(shoal::content::cid::RAW, b"other\n").to_string();
        assert_eq!(written, vec![stdout, root.cid.to_string()]);

        // A result is a directory: a lone file sent as the whole result is refused, and a
        // stored file is not taken for a directory.
        let lone = ContentId::of_block(shoal::content::cid::RAW, b"0");
        let sent = vec![ContentBlock {
            cid: lone.to_string(),
            data: Bytes::from_static(b"0"),
        }];
        match store.inline_tree(&lone.to_string(), &sent).await {
            Err(Error::InvalidArgument(reason)) => {
                assert!(reason.contains("not a directory"), "{reason}")
            }
            other => panic!("a file was taken for a result tree: {other:?}"),
        }
        assert!(!store.is_directory(&lone).await.expect("stored"));
        let directory: ContentId = uploaded.cid.parse().expect("a CID");
        assert!(store.is_directory(&directory).await.expect("stored"));
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
