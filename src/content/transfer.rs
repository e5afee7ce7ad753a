//! Moving files and directory trees through `StorageService`'s framing (an `Entry` header,
//! then that file's `data` chunks), between local disk and the orchestrator's store.
//!
//! Used by the CLI (`data put/get`, program and input uploads, `job get`) and by executors
//! (fetching programs and inputs, publishing results). Symbolic links are never followed or
//! transferred: a tree is its regular files and directories only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::content::local_tree::{LocalEntry, TreeBounds};
use crate::net::auth::AuthChannel;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

use crate::content::local_tree::walk_async;
use crate::proto::storage_service_client::StorageServiceClient;
use crate::proto::{
    DownloadResponse, Entry, EntryKind, UploadRequest, UploadResponse, download_response,
    upload_request,
};
use crate::{Error, Result};

/// Size of the data chunks sent in either direction.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Files up to this size are read in one call from the async task that sends them.
const READ_IN_PLACE: u64 = 64 * 1024;

/// Most bytes of blocks an executor sends with a completion instead of uploading the result
/// tree (`ExecutionFinished.result_blocks`): typical results (a few lines of stdout, empty
/// stderr, `exitCode`) are far below it.
pub const MAX_INLINE_RESULT_BYTES: usize = 64 * 1024;

/// Checks a path inside a transferred tree: relative, '/'-separated, no empty, `.` or `..`
/// segment, no NUL or backslash. The empty path is the root.
pub fn check_tree_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    let bad = path.len() > 4096
        || path.contains(['\0', '\\'])
        || path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if bad {
        return Err(Error::MalformedTransfer(format!(
            "entry path {path:?} must be relative and normal (no '.', '..' or empty segments)"
        )));
    }
    Ok(())
}

/// The upload framing of a local file or tree, produced by a background task (for a server
/// that stores local data itself). A read error ends the stream early; the receiver then
/// reports a short file.
pub async fn local_upload_stream(root: &Path) -> Result<ReceiverStream<UploadRequest>> {
    let entries = walk_async(root, TreeBounds::LOCAL).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(8);
    tokio::spawn(async move {
        if let Err(error) = send_entries(entries, tx, None, String::new()).await {
            tracing::warn!(%error, "reading a local tree for upload failed");
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Uploads a local file or directory tree, refused past `bounds`, and returns its CID.
/// `progress`, if given, counts file bytes as they are sent. A file goes with its name,
/// which the store records for its CID.
pub async fn upload_path(
    client: &mut StorageServiceClient<AuthChannel>,
    root: &Path,
    bounds: TreeBounds,
    progress: Option<Arc<AtomicU64>>,
) -> Result<UploadResponse> {
    let entries = walk_async(root, bounds).await?;
    // A small bounded channel: the reader stays at most a few chunks ahead of the network.
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(8);
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reader = tokio::spawn(async move { send_entries(entries, tx, progress, name).await });
    let response = client.upload(ReceiverStream::new(rx)).await;
    // A read error ends the stream early; report it rather than the server's view of it.
    let read_result = reader
        .await
        .map_err(|e| Error::io(root, std::io::Error::other(e)))?;
    read_result?;
    Ok(response?.into_inner())
}

/// Sends `entries` down `tx`; `name` goes on a file root's entry.
async fn send_entries(
    entries: Vec<LocalEntry>,
    tx: tokio::sync::mpsc::Sender<UploadRequest>,
    progress: Option<Arc<AtomicU64>>,
    name: String,
) -> Result<()> {
    let mut name = Some(name);
    for entry in entries {
        let root_file = entry.relative.is_empty() && entry.kind == EntryKind::File;
        let header = UploadRequest {
            item: Some(upload_request::Item::Entry(Entry {
                path: entry.relative.clone(),
                kind: entry.kind as i32,
                size: entry.size,
                name: name.take().filter(|_| root_file).unwrap_or_default(),
            })),
        };
        if tx.send(header).await.is_err() {
            return Ok(()); // the server ended the call; its status tells why
        }
        if entry.kind != EntryKind::File {
            continue;
        }
        let shrank = || {
            Error::io(
                &entry.absolute,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank while it was being uploaded",
                ),
            )
        };
        if entry.size <= READ_IN_PLACE {
            // A small file (most programs) is read in place: a few microseconds from the
            // page cache, against a trip through the blocking pool for the open and another
            // for the read.
            // At most the size the walk saw, as the streaming path below reads.
            use std::io::Read as _;
            let mut data = Vec::with_capacity(entry.size as usize);
            std::fs::File::open(&entry.absolute)
                .and_then(|file| file.take(entry.size).read_to_end(&mut data))
                .map_err(|e| Error::io(&entry.absolute, e))?;
            if (data.len() as u64) < entry.size {
                return Err(shrank());
            }
            if let Some(progress) = &progress {
                progress.fetch_add(entry.size, Ordering::Relaxed);
            }
            let chunk = UploadRequest {
                item: Some(upload_request::Item::Data(data.into())),
            };
            if entry.size > 0 && tx.send(chunk).await.is_err() {
                return Ok(());
            }
            continue;
        }
        let mut file = tokio::fs::File::open(&entry.absolute)
            .await
            .map_err(|e| Error::io(&entry.absolute, e))?;
        let mut remaining = entry.size;
        while remaining > 0 {
            let mut buf = vec![0u8; CHUNK_SIZE.min(remaining as usize)];
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| Error::io(&entry.absolute, e))?;
            if n == 0 {
                return Err(shrank());
            }
            buf.truncate(n);
            remaining -= n as u64;
            if let Some(progress) = &progress {
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            let chunk = UploadRequest {
                item: Some(upload_request::Item::Data(buf.into())),
            };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What [`download_to`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownloadSummary {
    pub files: u64,
    pub bytes: u64,
    /// Whether the root was a directory.
    pub directory: bool,
}

/// Writes a download stream to `dest`: a file's bytes to `dest` itself, a tree's root as the
/// directory `dest`. Entry paths are checked, so a misbehaving server cannot write outside
/// `dest`; sizes are checked against the headers.
pub async fn download_to<S>(stream: S, dest: &Path) -> Result<DownloadSummary>
where
    S: Stream<Item = Result<DownloadResponse, tonic::Status>> + Unpin,
{
    download_to_with_progress(stream, dest, None).await
}

/// [`download_to`], counting written bytes into `progress` as they arrive.
pub async fn download_to_with_progress<S>(
    stream: S,
    dest: &Path,
    progress: Option<Arc<AtomicU64>>,
) -> Result<DownloadSummary>
where
    S: Stream<Item = Result<DownloadResponse, tonic::Status>> + Unpin,
{
    let mut stream = stream;
    let mut summary = DownloadSummary::default();
    // The file being written and the bytes it still expects.
    let mut current: Option<(tokio::fs::File, PathBuf, u64)> = None;
    let mut first = true;
    while let Some(message) = stream.next().await {
        match message?.item {
            Some(download_response::Item::Entry(entry)) => {
                finish_file(current.take()).await?;
                check_tree_path(&entry.path)?;
                if first != entry.path.is_empty() {
                    return Err(Error::MalformedTransfer(
                        "the first entry, and only it, must be the root".into(),
                    ));
                }
                if first {
                    summary.directory = entry.kind() == EntryKind::Directory;
                }
                first = false;
                let path = if entry.path.is_empty() {
                    dest.to_owned()
                } else {
                    dest.join(&entry.path)
                };
                match entry.kind() {
                    EntryKind::Directory => tokio::fs::create_dir_all(&path)
                        .await
                        .map_err(|e| Error::io(&path, e))?,
                    EntryKind::File => {
                        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                            tokio::fs::create_dir_all(parent)
                                .await
                                .map_err(|e| Error::io(parent, e))?;
                        }
                        let file = tokio::fs::File::create(&path)
                            .await
                            .map_err(|e| Error::io(&path, e))?;
                        summary.files += 1;
                        current = Some((file, path, entry.size));
                    }
                    EntryKind::Unspecified => {
                        return Err(Error::MalformedTransfer(format!(
                            "entry {:?} has no kind",
                            entry.path
                        )));
                    }
                }
            }
            Some(download_response::Item::Data(data)) => {
                let Some((file, path, remaining)) = current.as_mut() else {
                    return Err(Error::MalformedTransfer("data outside a file entry".into()));
                };
                if data.len() as u64 > *remaining {
                    return Err(Error::MalformedTransfer(format!(
                        "{} is longer than its header said",
                        path.display()
                    )));
                }
                file.write_all(&data)
                    .await
                    .map_err(|e| Error::io(&*path, e))?;
                *remaining -= data.len() as u64;
                summary.bytes += data.len() as u64;
                if let Some(progress) = &progress {
                    progress.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            None => return Err(Error::MalformedTransfer("empty message".into())),
        }
    }
    finish_file(current.take()).await?;
    if first {
        return Err(Error::MalformedTransfer("the download was empty".into()));
    }
    Ok(summary)
}

async fn finish_file(current: Option<(tokio::fs::File, PathBuf, u64)>) -> Result<()> {
    if let Some((mut file, path, remaining)) = current {
        if remaining != 0 {
            return Err(Error::MalformedTransfer(format!(
                "{} ended {remaining} bytes short of its header",
                path.display()
            )));
        }
        file.flush().await.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Collects a download of a single file into memory, refusing more than `limit` bytes.
pub async fn download_bytes<S>(stream: S, limit: u64) -> Result<Vec<u8>>
where
    S: Stream<Item = Result<DownloadResponse, tonic::Status>> + Unpin,
{
    let mut stream = stream;
    let mut out = Vec::new();
    let mut seen_entry = false;
    while let Some(message) = stream.next().await {
        match message?.item {
            Some(download_response::Item::Entry(entry)) => {
                if seen_entry || entry.kind() != EntryKind::File {
                    return Err(Error::MalformedTransfer("expected a single file".into()));
                }
                if entry.size > limit {
                    return Err(Error::MalformedTransfer(format!(
                        "file of {} bytes exceeds the limit of {limit}",
                        entry.size
                    )));
                }
                seen_entry = true;
            }
            Some(download_response::Item::Data(data)) if seen_entry => {
                if out.len() as u64 + data.len() as u64 > limit {
                    return Err(Error::MalformedTransfer("file exceeds the limit".into()));
                }
                out.extend_from_slice(&data);
            }
            _ => return Err(Error::MalformedTransfer("unexpected message".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree paths that could escape a destination directory are refused.
    #[test]
    fn tree_paths_are_checked() {
        for ok in ["", "a", "a/b.txt", "dir/sub/file"] {
            check_tree_path(ok).expect(ok);
        }
        for bad in ["/abs", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\0b"] {
            assert!(check_tree_path(bad).is_err(), "{bad}");
        }
    }

    /// Arbitrary download streams (entries with hostile paths, wrong sizes, data in the
    /// wrong place) never panic the decoder and never write outside the destination.
    #[tokio::test]
    async fn download_streams_never_panic_or_escape() {
        use crate::proto::{DownloadResponse, Entry, download_response};
        let mut state = 0x0dd_ba11_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n.max(1)
        };
        const PATHS: &[&str] = &[
            "",
            "a",
            "a/b",
            "../x",
            "/etc/x",
            "a/../../x",
            "b//c",
            "c\\d",
            "a/b/c",
        ];
        let outer = tempfile::tempdir().expect("tempdir");
        for round in 0..500 {
            let dest = outer.path().join(format!("d{round}")).join("dest");
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            let mut items = Vec::new();
            for _ in 0..next(8) {
                let item = if next(2) == 0 {
                    download_response::Item::Entry(Entry {
                        path: PATHS[next(PATHS.len() as u64) as usize].into(),
                        kind: next(4) as i32,
                        size: next(40),
                        ..Default::default()
                    })
                } else {
                    download_response::Item::Data(vec![b'x'; next(30) as usize].into())
                };
                items.push(Ok(DownloadResponse { item: Some(item) }));
            }
            if next(5) == 0 {
                items.push(Ok(DownloadResponse { item: None }));
            }
            let _ = download_to(futures::stream::iter(items), &dest).await;
            // Nothing may appear beside `dest` inside its own scratch directory.
            let beside: Vec<_> = std::fs::read_dir(dest.parent().expect("parent"))
                .expect("list")
                .map(|e| e.expect("entry").file_name())
                .filter(|n| n != "dest")
                .collect();
            assert!(beside.is_empty(), "round {round} wrote {beside:?}");
        }
        let escaped: Vec<_> = std::fs::read_dir(outer.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('d'))
            .collect();
        assert!(escaped.is_empty(), "{escaped:?}");
    }
}
