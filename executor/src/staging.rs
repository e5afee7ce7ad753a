//! Staging: fetching a job's program and inputs from the orchestrator's store into the
//! execution's scratch directory, and laying the inputs out as read-only mounts.
//!
//! A directory input is mounted as itself at its target. WASI mounts are directories, so a
//! file input is placed in a directory that is mounted at the target's parent; file inputs
//! sharing a parent share that directory.

use std::collections::BTreeMap;
use std::path::Path;

use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{DownloadRequest, EntryKind, Failure, FailureKind, InputSpec, StatRequest};
use shoal::source::{HttpSource, Source};
use tonic::transport::Channel;

use crate::fetch::HttpFetcher;
use crate::runtime::Preopen;

/// Largest program accepted, in bytes.
pub const MAX_PROGRAM_BYTES: u64 = 1 << 30;

fn staging_failure(message: String) -> Failure {
    Failure::new(FailureKind::Staging, message)
}

/// Fetches the program's bytes.
pub async fn fetch_program(
    storage: &mut StorageServiceClient<Channel>,
    cid: &str,
) -> Result<Vec<u8>, Failure> {
    let stream = storage
        .download(DownloadRequest {
            cid: cid.to_owned(),
            path: String::new(),
            offset: 0,
        })
        .await
        .map_err(|s| staging_failure(format!("program {cid}: {}", s.message())))?
        .into_inner();
    shoal::transfer::download_bytes(stream, MAX_PROGRAM_BYTES)
        .await
        .map_err(|e| staging_failure(format!("program {cid}: {e}")))
}

/// Fetches a program named by URL into `dir` and returns its bytes.
pub async fn fetch_url_program(
    http: &HttpFetcher,
    source: &HttpSource,
    dir: &Path,
    max_bytes: u64,
) -> Result<Vec<u8>, Failure> {
    let path = dir.join("program.wasm");
    let failure = |m: String| staging_failure(format!("program {}: {m}", source.url));
    http.fetch(source, &path, max_bytes.min(MAX_PROGRAM_BYTES))
        .await
        .map_err(failure)?;
    tokio::fs::read(&path)
        .await
        .map_err(|e| failure(format!("cannot read the download: {e}")))
}

/// Fetches every input under `dir` (from the store or by URL, within `max_bytes` in all)
/// and returns the read-only mounts for them.
pub async fn stage_inputs(
    storage: &mut StorageServiceClient<Channel>,
    http: &HttpFetcher,
    inputs: &[InputSpec],
    dir: &Path,
    max_bytes: u64,
) -> Result<Vec<Preopen>, Failure> {
    let mut staged_bytes = 0u64;
    let mut preopens = Vec::new();
    // Parent guest directory -> host directory holding the file inputs mounted there.
    let mut file_parents: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    for (i, input) in inputs.iter().enumerate() {
        let name = |m: String| staging_failure(format!("inputs[{i}] ({}): {m}", input.source));
        let source: Source = input.source.parse().map_err(|e| name(format!("{e}")))?;
        if let Source::Http(http_source) = &source {
            // A URL is always one file.
            let host = file_input_path(&mut file_parents, dir, &input.target).map_err(name)?;
            if let Some(parent) = host.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| name(format!("cannot create the staging directory: {e}")))?;
            }
            let remaining = max_bytes.saturating_sub(staged_bytes);
            staged_bytes += http
                .fetch(http_source, &host, remaining)
                .await
                .map_err(name)?;
            continue;
        }
        let stat = storage
            .stat(StatRequest {
                cid: input.source.clone(),
                path: String::new(),
            })
            .await
            .map_err(|s| name(s.message().to_owned()))?
            .into_inner();
        let host = if stat.kind() == EntryKind::Directory {
            let host = dir.join(format!("input-{i}"));
            preopens.push(Preopen {
                host: host.clone(),
                guest: input.target.clone(),
                writable: false,
            });
            host
        } else {
            file_input_path(&mut file_parents, dir, &input.target).map_err(name)?
        };
        staged_bytes += stat.size;
        if staged_bytes > max_bytes {
            return Err(name(format!(
                "the inputs exceed the limit of {max_bytes} bytes per execution"
            )));
        }
        let stream = storage
            .download(DownloadRequest {
                cid: input.source.clone(),
                path: String::new(),
                offset: 0,
            })
            .await
            .map_err(|s| name(s.message().to_owned()))?
            .into_inner();
        if let Some(parent) = host.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| name(format!("cannot create the staging directory: {e}")))?;
        }
        shoal::transfer::download_to(stream, &host)
            .await
            .map_err(|e| name(e.to_string()))?;
    }
    for (guest, host) in file_parents {
        tokio::fs::create_dir_all(&host)
            .await
            .map_err(|e| staging_failure(format!("cannot create {}: {e}", host.display())))?;
        preopens.push(Preopen {
            host,
            guest,
            writable: false,
        });
    }
    Ok(preopens)
}

/// Where a file input mounted at `target` goes on the host: inside the directory shared by
/// all file inputs with the same parent.
fn file_input_path(
    file_parents: &mut BTreeMap<String, std::path::PathBuf>,
    dir: &Path,
    target: &str,
) -> Result<std::path::PathBuf, String> {
    let (parent, file_name) = target
        .rsplit_once('/')
        .ok_or_else(|| "the target has no parent directory".to_owned())?;
    let parent = if parent.is_empty() { "/" } else { parent };
    let next = file_parents.len();
    let parent_dir = file_parents
        .entry(parent.to_owned())
        .or_insert_with(|| dir.join(format!("files-{next}")));
    Ok(parent_dir.join(file_name))
}
