//! Staging the inputs: fetching each (from the orchestrator's store, IPFS gateways, URLs or
//! S3, through the input cache) into the execution's scratch directory, and laying them out
//! as read-only mounts.
//!
//! A directory input is mounted as itself at its target. WASI mounts are directories, so a
//! file input is placed in a directory that is mounted at the target's parent; file inputs
//! sharing a parent share that directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal::content::cid::ContentId;
use shoal::data::s3::S3Fetcher;
use shoal::net::auth::AuthChannel;
use shoal::proto::S3Options;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{DownloadRequest, Failure, InputSpec, StatRequest};
use shoal::spec::source::{HttpSource, S3Source, Source, hex};

use shoal::data::http::{Fetched, HttpFetcher};
use shoal::data::ipfs::GatewayFetcher;

use super::{STAGING_RETRY, staging_failure};
use crate::context::ExecutionContext;
use crate::input_cache::{Cached, InputCache, Pin};
use crate::runtime::Preopen;

/// The mounts of an execution's inputs, and the cache entries they use (released when
/// this is dropped, after the run).
#[derive(Debug, Default)]
pub struct StagedInputs {
    pub preopens: Vec<Preopen>,
    pub pins: Vec<Pin>,
}

/// Fetches every input (from the store or IPFS gateways, by URL or from S3, within the
/// executor's input limit in all) — CIDs and URLs through the input cache — and returns the
/// read-only mounts for them; uncached data is laid out under `dir`.
pub async fn stage_inputs(
    ctx: &ExecutionContext,
    inputs: impl Iterator<Item = (usize, &InputSpec, &Source)>,
    dir: &Path,
) -> Result<StagedInputs, Failure> {
    let (http, s3, cache) = (&ctx.http, &ctx.s3, &ctx.cache);
    let mut storage = ctx.storage.clone();
    let ipfs = ctx.ipfs();
    let max_bytes = ctx.config.max_input_bytes;
    let mut staged = StagedInputs::default();
    let mut staged_bytes = 0u64;
    // Parent guest directory -> host directory holding the file inputs mounted there.
    let mut file_parents: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (i, input, source) in inputs {
        let name = |m: String| staging_failure(format!("inputs[{i}] ({}): {m}", input.source));
        let remaining = max_bytes.saturating_sub(staged_bytes);
        let fetched = match source {
            Source::Http(http_source) => fetch_url(http, cache, http_source, remaining).await,
            Source::Cid(cid) => fetch_cid(&mut storage, &ipfs, cache, cid, remaining).await,
            Source::S3(s3_source) => {
                fetch_s3(s3, cache, s3_source, input.s3.as_ref(), remaining).await
            }
        }
        .map_err(name)?;
        staged_bytes += fetched.size;
        let kind = match source {
            Source::Http(_) => "url",
            Source::Cid(_) => "cid",
            Source::S3(_) => "s3",
        };
        ctx.metrics
            .staged_bytes
            .get_or_create(&[("source", kind)])
            .inc_by(fetched.size);
        if fetched.directory {
            let mut host = fetched.path.clone();
            if fetched.pin.is_none() {
                // Not cached (from S3, or too big for the cache): the tree is this execution's.
                host = dir.join(format!("input-{i}"));
                tokio::fs::rename(&fetched.path, &host)
                    .await
                    .map_err(|e| name(format!("cannot stage the directory: {e}")))?;
            }
            staged.preopens.push(Preopen {
                host,
                guest: input.target.clone(),
                writable: false,
            });
        } else {
            let host = file_input_path(&mut file_parents, dir, &input.target).map_err(name)?;
            place_file(&fetched, &host)
                .await
                .map_err(|e| name(format!("cannot stage the file: {e}")))?;
        }
        staged.pins.extend(fetched.pin);
    }
    // Every directory above an input (below the root) is one the guest can open and list,
    // as on a real file system: a program given /inputs/data/a.csv, or the entries of a
    // sharded input at /inputs/NAME, can walk /inputs. One empty read-only directory is
    // mounted at the top of each such path (/inputs), holding empty directories down to
    // every mount below it, so the levels between resolve through it. Inside /tmp, which
    // stays the execution's writable one, nothing is added (its inputs are reachable as
    // before).
    let tmp = crate::execution::GUEST_TMP;
    let mounts: Vec<String> = staged
        .preopens
        .iter()
        .map(|p| p.guest.clone())
        .chain(file_parents.keys().cloned())
        .collect();
    for mount in &mounts {
        let top = match mount[1..].split_once('/') {
            Some((first, _)) => format!("/{first}"),
            None => continue, // a mount at the top already
        };
        if top == tmp {
            continue;
        }
        let next = file_parents.len();
        file_parents
            .entry(top)
            .or_insert_with(|| dir.join(format!("files-{next}")));
    }
    // WASI mounts do not show up in their parent's listing: give a mount below another an
    // empty stand-in there, so the guest can list it (opening it reaches the mount, the
    // longest matching preopen).
    let below = staged
        .preopens
        .iter()
        .map(|p| p.guest.as_str())
        .chain(file_parents.keys().map(String::as_str));
    for mount in below {
        for (guest, host) in &file_parents {
            let relative = if guest == "/" {
                mount.strip_prefix('/')
            } else {
                mount
                    .strip_prefix(guest.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            if let Some(relative) = relative.filter(|r| !r.is_empty()) {
                tokio::fs::create_dir_all(host.join(relative))
                    .await
                    .map_err(|e| {
                        staging_failure(format!("cannot create {}: {e}", host.display()))
                    })?;
            }
        }
    }
    for (guest, host) in file_parents {
        tokio::fs::create_dir_all(&host)
            .await
            .map_err(|e| staging_failure(format!("cannot create {}: {e}", host.display())))?;
        staged.preopens.push(Preopen {
            host,
            guest,
            writable: false,
        });
    }
    Ok(staged)
}

/// A fetched input: where it is, whether it is a tree, and its cache pin if cached (an
/// uncached path belongs to the execution).
struct FetchedInput {
    path: PathBuf,
    size: u64,
    directory: bool,
    pin: Option<Pin>,
}

/// Puts a fetched file at `host`: a hard link to a cached copy (read-only mounts cannot
/// change it), a copy if linking fails, or a move of an uncached download.
async fn place_file(fetched: &FetchedInput, host: &Path) -> std::io::Result<()> {
    if let Some(parent) = host.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    if fetched.pin.is_none() {
        return tokio::fs::rename(&fetched.path, host).await;
    }
    if tokio::fs::hard_link(&fetched.path, host).await.is_err() {
        tokio::fs::copy(&fetched.path, host).await?;
    }
    Ok(())
}

async fn fetch_url(
    http: &HttpFetcher,
    cache: &Arc<InputCache>,
    source: &HttpSource,
    max_bytes: u64,
) -> Result<FetchedInput, String> {
    // The pin is part of the key: a copy is only reused under the check it passed.
    let key = match source.sha256 {
        Some(sha256) => format!("url:{}#sha256={}", source.url, hex(&sha256)),
        None => format!("url:{}", source.url),
    };
    let _one_fetch = cache.fetch_lock(&key).await;
    let cached = cache.get(&key);
    let etag = cached.as_ref().and_then(|(c, _)| c.etag.clone());
    let path = cache.new_path();
    let fetched = http.fetch(source, &path, max_bytes, etag.as_deref()).await;
    let fetched = fetched.map_err(|e| discard_partial(&path, e))?;
    match fetched {
        Fetched::NotModified => {
            let (cached, pin) =
                cached.ok_or("the server answered 304 to an unconditional request")?;
            tracing::debug!(url = %source.url, "input cache hit (not modified)");
            Ok(FetchedInput {
                path: cached.path,
                size: cached.size,
                directory: false,
                pin: Some(pin),
            })
        }
        Fetched::Body { bytes, etag } => {
            drop(cached);
            let pin = match etag {
                Some(etag) => cache.insert(
                    &key,
                    Cached {
                        path: path.clone(),
                        size: bytes,
                        etag: Some(etag),
                    },
                ),
                // Without a strong validator the copy could never be trusted again.
                None => None,
            };
            Ok(FetchedInput {
                path,
                size: bytes,
                directory: false,
                pin,
            })
        }
    }
}

async fn fetch_cid(
    storage: &mut StorageServiceClient<AuthChannel>,
    ipfs: &GatewayFetcher,
    cache: &Arc<InputCache>,
    cid: &ContentId,
    max_bytes: u64,
) -> Result<FetchedInput, String> {
    let key = format!("cid:{cid}");
    let _one_fetch = cache.fetch_lock(&key).await;
    if let Some((cached, pin)) = cache.get(&key) {
        tracing::debug!(%cid, "input cache hit");
        if cached.size > max_bytes {
            return Err(format!(
                "the inputs exceed the limit of the execution ({max_bytes} bytes left)"
            ));
        }
        return Ok(FetchedInput {
            directory: cached.path.is_dir(),
            path: cached.path,
            size: cached.size,
            pin: Some(pin),
        });
    }
    let stat_request = StatRequest {
        cid: cid.to_string(),
        path: String::new(),
    };
    let stat = STAGING_RETRY
        .run("stat", || {
            let (mut storage, request) = (storage.clone(), stat_request.clone());
            async move { storage.stat(request).await }
        })
        .await;
    let stat = match stat {
        Ok(stat) => stat.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound && !ipfs.gateways().is_empty() => {
            // Not in the store: from the gateways, every block verified, so as safe to
            // cache under its CID as a copy from the store.
            let path = cache.new_path();
            let fetched = ipfs
                .fetch_to(cid, &path, max_bytes)
                .await
                .map_err(|e| discard_partial(&path, e))?;
            let pin = cache.insert(
                &key,
                Cached {
                    path: path.clone(),
                    size: fetched.bytes,
                    etag: None,
                },
            );
            return Ok(FetchedInput {
                path,
                size: fetched.bytes,
                directory: fetched.directory,
                pin,
            });
        }
        Err(status) => return Err(status.message().to_owned()),
    };
    if stat.size > max_bytes {
        return Err(format!(
            "it holds {} bytes, more than the input limit of the execution ({max_bytes} bytes left)",
            stat.size
        ));
    }
    let path = cache.new_path();
    let download = || {
        let mut storage = storage.clone();
        let path = path.clone();
        let request = DownloadRequest {
            cid: cid.to_string(),
            path: String::new(),
            offset: 0,
        };
        async move {
            // A broken earlier attempt may have left part of the tree.
            remove_partial(&path);
            let stream = storage.download(request).await?.into_inner();
            shoal::content::transfer::download_to(stream, &path).await
        }
    };
    let summary = STAGING_RETRY
        .run("fetching an input", download)
        .await
        .map_err(|e| discard_partial(&path, e))?;
    let pin = cache.insert(
        &key,
        Cached {
            path: path.clone(),
            size: summary.bytes,
            etag: None,
        },
    );
    Ok(FetchedInput {
        path,
        size: summary.bytes,
        directory: summary.directory,
        pin,
    })
}

/// Fetches an S3 object, prefix or glob through the cache, keyed by exactly what S3 listed
/// (keys, ETags, sizes, versions) at the endpoint used: a second job on unchanged objects
/// costs one HEAD or LIST request and no download.
async fn fetch_s3(
    s3: &S3Fetcher,
    cache: &Arc<InputCache>,
    source: &S3Source,
    options: Option<&S3Options>,
    max_bytes: u64,
) -> Result<FetchedInput, String> {
    let listing = s3.list(source, options).await.map_err(|e| e.to_string())?;
    let key = listing
        .fingerprint()
        .map(|digest| format!("s3:{}|{digest}", s3.effective(options).endpoint));
    let _one_fetch = match &key {
        Some(key) => Some(cache.fetch_lock(key).await),
        None => None,
    };
    if let Some((cached, pin)) = key.as_deref().and_then(|key| cache.get(key)) {
        tracing::debug!(source = %Source::S3(source.clone()), "input cache hit");
        return Ok(FetchedInput {
            directory: cached.path.is_dir(),
            path: cached.path,
            size: cached.size,
            pin: Some(pin),
        });
    }
    let path = cache.new_path();
    let fetched = s3
        .fetch_listed(&listing, options, &path, max_bytes)
        .await
        .map_err(|e| discard_partial(&path, e))?;
    let cached = Cached {
        path: path.clone(),
        size: fetched.bytes,
        etag: None,
    };
    let pin = key.and_then(|key| cache.insert(&key, cached));
    Ok(FetchedInput {
        path,
        size: fetched.bytes,
        directory: fetched.directory,
        pin,
    })
}

/// Removes what a failed fetch left behind.
fn remove_partial(path: &Path) {
    let _ = shoal::content::local_tree::remove(path);
}

/// A failed fetch to `path`: what it left is removed, and its reason kept for the failure.
fn discard_partial(path: &Path, error: impl std::fmt::Display) -> String {
    remove_partial(path);
    error.to_string()
}

/// Where a file input mounted at `target` goes on the host: inside the directory shared by
/// all file inputs with the same parent.
fn file_input_path(
    file_parents: &mut BTreeMap<String, PathBuf>,
    dir: &Path,
    target: &str,
) -> Result<PathBuf, String> {
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
