//! The content store: programs, input data and results, addressed by CID, in a local
//! directory.
//!
//! A file is stored as one blob named by its raw-block CID. A directory is stored as a small
//! DAG-JSON manifest blob listing its entries by name, CID, kind and size, so a tree's CID
//! covers every byte below it. Blobs are written to a temporary file, fsynced, then renamed
//! into place: a blob that exists is complete.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use shoal::cid::{ContentId, DAG_JSON, RawHasher};
use shoal::proto::{
    DirectoryEntry, DownloadResponse, Entry, EntryKind, StatResponse, UploadRequest,
    UploadResponse, download_response, upload_request,
};
use shoal::transfer::{CHUNK_SIZE, check_tree_path};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result};

/// Most entries one upload may hold.
const MAX_UPLOAD_ENTRIES: usize = 100_000;

/// A directory manifest, serialised as canonical DAG-JSON (keys sorted, links as `{"/":..}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    entries: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestEntry {
    cid: Link,
    kind: String,
    name: String,
    size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Link {
    #[serde(rename = "/")]
    cid: String,
}

const FILE: &str = "file";
const DIRECTORY: &str = "directory";

/// A resolved CID or path: what it is and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub cid: ContentId,
    pub kind: EntryKind,
    pub size: u64,
}

/// The local content store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    tmp: PathBuf,
    max_upload_bytes: u64,
}

impl ContentStore {
    /// Opens the store under `dir`, creating it if needed. Uploads over `max_upload_bytes`
    /// of file content are refused.
    pub fn open(dir: &Path, max_upload_bytes: u64) -> Result<Self> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        for path in [&blobs, &tmp] {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ContentStore {
            blobs,
            tmp,
            max_upload_bytes,
        })
    }

    fn blob_path(&self, cid: &ContentId) -> PathBuf {
        let name = cid.to_string();
        // Shard by the last two characters so no directory grows too large.
        let shard = &name[name.len() - 2..];
        self.blobs.join(shard).join(name)
    }

    /// Whether the content of `cid` is stored.
    pub async fn contains(&self, cid: &ContentId) -> bool {
        tokio::fs::try_exists(self.blob_path(cid))
            .await
            .unwrap_or(false)
    }

    async fn install_blob(&self, temp: &Path, cid: &ContentId) -> Result<()> {
        let dest = self.blob_path(cid);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(temp).await;
            return Ok(());
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io("creating a blob directory", e))?;
        }
        tokio::fs::rename(temp, &dest)
            .await
            .map_err(|e| Error::io(format!("storing {cid}"), e))
    }

    async fn put_block(&self, codec: u64, bytes: &[u8]) -> Result<ContentId> {
        let cid = ContentId::of_block(codec, bytes);
        if self.contains(&cid).await {
            return Ok(cid);
        }
        let temp = self.tmp.join(uuid::Uuid::now_v7().to_string());
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| Error::io("creating a temporary blob", e))?;
        file.write_all(bytes)
            .await
            .map_err(|e| Error::io("writing a blob", e))?;
        file.sync_data()
            .await
            .map_err(|e| Error::io("syncing a blob", e))?;
        self.install_blob(&temp, &cid).await?;
        Ok(cid)
    }

    /// Stores a file or tree sent in the upload framing and returns its CID.
    pub async fn put<S>(&self, stream: S) -> Result<UploadResponse>
    where
        S: Stream<Item = Result<UploadRequest, tonic::Status>> + Unpin,
    {
        let mut upload = Upload::new(self);
        let result = upload.receive(stream).await;
        if let Some(file) = upload.current.take() {
            let _ = tokio::fs::remove_file(&file.temp).await;
        }
        result
    }

    fn manifest_of(&self, bytes: &[u8], cid: &ContentId) -> Result<Manifest> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Store(format!("directory manifest {cid} is corrupt: {e}")))
    }

    async fn read_manifest(&self, cid: &ContentId) -> Result<Manifest> {
        let bytes = tokio::fs::read(self.blob_path(cid))
            .await
            .map_err(|e| not_found_or_io(e, cid))?;
        self.manifest_of(&bytes, cid)
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
                    "{path:?} is not inside {cid}: not a directory"
                )));
            }
            let manifest = self.read_manifest(&current.cid).await?;
            let entry = manifest
                .entries
                .into_iter()
                .find(|e| e.name == segment)
                .ok_or_else(|| Error::NotFound(format!("no {path:?} in {cid}")))?;
            current = resolved_of(&entry)?;
        }
        Ok(current)
    }

    async fn resolve_root(&self, cid: &ContentId) -> Result<Resolved> {
        if cid.codec() == DAG_JSON {
            let manifest = self.read_manifest(cid).await?;
            let size = manifest.entries.iter().map(|e| e.size).sum();
            return Ok(Resolved {
                cid: *cid,
                kind: EntryKind::Directory,
                size,
            });
        }
        if !cid.is_raw() {
            return Err(Error::NotFound(format!(
                "{cid} is not in the store (only raw and dag-json content is stored)"
            )));
        }
        let meta = tokio::fs::metadata(self.blob_path(cid))
            .await
            .map_err(|e| not_found_or_io(e, cid))?;
        Ok(Resolved {
            cid: *cid,
            kind: EntryKind::File,
            size: meta.len(),
        })
    }

    /// Describes `cid` (or `path` inside it), with a directory's children.
    pub async fn stat(&self, cid: &ContentId, path: &str) -> Result<StatResponse> {
        let resolved = self.resolve(cid, path).await?;
        let entries = if resolved.kind == EntryKind::Directory {
            self.read_manifest(&resolved.cid)
                .await?
                .entries
                .iter()
                .map(|e| {
                    resolved_of(e).map(|r| DirectoryEntry {
                        name: e.name.clone(),
                        cid: r.cid.to_string(),
                        kind: r.kind as i32,
                        size: r.size,
                    })
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(StatResponse {
            cid: resolved.cid.to_string(),
            kind: resolved.kind as i32,
            size: resolved.size,
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
            if let Err(error) = store.send_tree(&tx, root, String::new(), offset).await {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn send_tree(
        &self,
        tx: &mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
        root: Resolved,
        root_path: String,
        offset: u64,
    ) -> Result<()> {
        // Depth-first with an explicit stack, parents before children, names in order.
        let mut stack = vec![(root, root_path)];
        while let Some((entry, path)) = stack.pop() {
            let header = DownloadResponse {
                item: Some(download_response::Item::Entry(Entry {
                    path: path.clone(),
                    kind: entry.kind as i32,
                    size: if entry.kind == EntryKind::File {
                        entry.size
                    } else {
                        0
                    },
                })),
            };
            if tx.send(Ok(header)).await.is_err() {
                return Ok(()); // the client went away
            }
            match entry.kind {
                EntryKind::File => {
                    let start = if path.is_empty() { offset } else { 0 };
                    if !self.send_file(tx, &entry.cid, start).await? {
                        return Ok(());
                    }
                }
                _ => {
                    let manifest = self.read_manifest(&entry.cid).await?;
                    for child in manifest.entries.iter().rev() {
                        let child_path = if path.is_empty() {
                            child.name.clone()
                        } else {
                            format!("{path}/{}", child.name)
                        };
                        stack.push((resolved_of(child)?, child_path));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends a blob's bytes from `offset`; false if the client went away.
    async fn send_file(
        &self,
        tx: &mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
        cid: &ContentId,
        offset: u64,
    ) -> Result<bool> {
        let mut file = tokio::fs::File::open(self.blob_path(cid))
            .await
            .map_err(|e| not_found_or_io(e, cid))?;
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Error::io(format!("reading {cid}"), e))?;
        }
        loop {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| Error::io(format!("reading {cid}"), e))?;
            if n == 0 {
                return Ok(true);
            }
            buf.truncate(n);
            let data = DownloadResponse {
                item: Some(download_response::Item::Data(buf.into())),
            };
            if tx.send(Ok(data)).await.is_err() {
                return Ok(false);
            }
        }
    }
}

fn resolved_of(entry: &ManifestEntry) -> Result<Resolved> {
    let cid: ContentId = entry
        .cid
        .cid
        .parse()
        .map_err(|e| Error::Store(format!("corrupt manifest entry {:?}: {e}", entry.name)))?;
    let kind = if entry.kind == DIRECTORY {
        EntryKind::Directory
    } else {
        EntryKind::File
    };
    Ok(Resolved {
        cid,
        kind,
        size: entry.size,
    })
}

fn not_found_or_io(error: std::io::Error, cid: &ContentId) -> Error {
    if error.kind() == std::io::ErrorKind::NotFound {
        Error::NotFound(format!("{cid} is not in the store"))
    } else {
        Error::io(format!("reading {cid}"), error)
    }
}

/// A file being received.
struct IncomingFile {
    path: String,
    temp: PathBuf,
    file: tokio::fs::File,
    hasher: RawHasher,
    expected: u64,
    written: u64,
}

/// The state of one upload: the directories declared so far and the file being written.
struct Upload<'a> {
    store: &'a ContentStore,
    root: Option<EntryKind>,
    /// Children of each declared directory, by directory path.
    directories: BTreeMap<String, Vec<ManifestEntry>>,
    names: HashSet<String>,
    current: Option<IncomingFile>,
    total: u64,
    root_file: Option<(ContentId, u64)>,
}

impl<'a> Upload<'a> {
    fn new(store: &'a ContentStore) -> Self {
        Upload {
            store,
            root: None,
            directories: BTreeMap::new(),
            names: HashSet::new(),
            current: None,
            total: 0,
            root_file: None,
        }
    }

    async fn receive<S>(&mut self, mut stream: S) -> Result<UploadResponse>
    where
        S: Stream<Item = Result<UploadRequest, tonic::Status>> + Unpin,
    {
        let malformed = |m: String| Error::Core(shoal::Error::MalformedTransfer(m));
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
        match self.root {
            None => Err(malformed("the upload had no entries".into())),
            Some(EntryKind::File) => {
                let (cid, size) = self
                    .root_file
                    .ok_or_else(|| malformed("the file upload was not finished".into()))?;
                Ok(UploadResponse {
                    cid: cid.to_string(),
                    size,
                })
            }
            Some(_) => {
                let cid = self.build_directories().await?;
                Ok(UploadResponse {
                    cid: cid.to_string(),
                    size: self.total,
                })
            }
        }
    }

    async fn begin_entry(&mut self, entry: Entry) -> Result<()> {
        let malformed = |m: String| Error::Core(shoal::Error::MalformedTransfer(m));
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
                let parent = parent_of(&entry.path);
                if !self.directories.contains_key(parent) {
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
        let temp = self.store.tmp.join(uuid::Uuid::now_v7().to_string());
        let file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| Error::io("creating a temporary blob", e))?;
        self.current = Some(IncomingFile {
            path: entry.path,
            temp,
            file,
            hasher: RawHasher::default(),
            expected: entry.size,
            written: 0,
        });
        Ok(())
    }

    async fn write_data(&mut self, data: &[u8]) -> Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Err(Error::Core(shoal::Error::MalformedTransfer(
                "data outside a file entry".into(),
            )));
        };
        if current.written + data.len() as u64 > current.expected {
            return Err(Error::Core(shoal::Error::MalformedTransfer(format!(
                "{:?} is longer than its declared {} bytes",
                current.path, current.expected
            ))));
        }
        current
            .file
            .write_all(data)
            .await
            .map_err(|e| Error::io("writing a blob", e))?;
        current.hasher.update(data);
        current.written += data.len() as u64;
        self.total += data.len() as u64;
        Ok(())
    }

    async fn finish_file(&mut self) -> Result<()> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        if current.written != current.expected {
            let _ = tokio::fs::remove_file(&current.temp).await;
            return Err(Error::Core(shoal::Error::MalformedTransfer(format!(
                "{:?} ended after {} of its declared {} bytes",
                current.path, current.written, current.expected
            ))));
        }
        current
            .file
            .sync_data()
            .await
            .map_err(|e| Error::io("syncing a blob", e))?;
        let cid = current.hasher.finish();
        self.store.install_blob(&current.temp, &cid).await?;
        if current.path.is_empty() {
            self.root_file = Some((cid, current.written));
        } else {
            let (parent, name) = split_path(&current.path);
            if let Some(children) = self.directories.get_mut(parent) {
                children.push(ManifestEntry {
                    cid: Link {
                        cid: cid.to_string(),
                    },
                    kind: FILE.into(),
                    name: name.into(),
                    size: current.written,
                });
            }
        }
        Ok(())
    }

    /// Writes every directory's manifest, deepest first, and returns the root's CID.
    async fn build_directories(&mut self) -> Result<ContentId> {
        let mut paths: Vec<String> = self.directories.keys().cloned().collect();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                p.matches('/').count() + 1
            })
        });
        let mut root = None;
        for path in paths {
            let mut entries = self.directories.remove(&path).unwrap_or_default();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let size = entries.iter().map(|e| e.size).sum();
            let manifest = Manifest { entries };
            let bytes = serde_json::to_vec(&manifest)
                .map_err(|e| Error::Store(format!("encoding a manifest: {e}")))?;
            let cid = self.store.put_block(DAG_JSON, &bytes).await?;
            if path.is_empty() {
                root = Some(cid);
                continue;
            }
            let (parent, name) = split_path(&path);
            if let Some(children) = self.directories.get_mut(parent) {
                children.push(ManifestEntry {
                    cid: Link {
                        cid: cid.to_string(),
                    },
                    kind: DIRECTORY.into(),
                    name: name.into(),
                    size,
                });
            }
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
        let store = ContentStore::open(dir.path(), 1 << 30).expect("open");
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
        shoal::transfer::download_to(stream, &out.path().join("tree"))
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

    /// Malformed upload streams are refused with a reason, and leave no blob behind.
    #[tokio::test]
    async fn malformed_uploads_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path(), 10).expect("open");
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
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0);
    }
}
