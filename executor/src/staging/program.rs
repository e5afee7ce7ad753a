//! Staging the program: found in the compiled-module cache, or fetched (from the
//! orchestrator's store or the IPFS gateways by CID, by URL, or from S3) and compiled.
//!
//! A program named by CID is cached under its CID; one downloaded by URL or from S3 is
//! cached by the hash of what was downloaded, never by where it came from, as the content
//! behind a URL or key can change.

use shoal::content::cid::{ContentId, RAW};
use shoal::proto::{DownloadRequest, Failure};
use shoal::spec::source::{S3Selection, Source};

use super::{InputsDir, STAGING_RETRY, staging_failure};
use crate::context::ExecutionContext;
use crate::runtime::{Compiled, Program};

/// Largest program accepted, in bytes.
pub const MAX_PROGRAM_BYTES: u64 = 1 << 30;

/// The compiled program from `source` (a CID, URL or S3 object; `name` as the spec says
/// it, for messages); fetched downloads land in `dir`.
pub async fn stage_program(
    ctx: &ExecutionContext,
    source: &Source,
    name: &str,
    dir: &InputsDir,
) -> Result<Program, Failure> {
    let failure = |m: String| staging_failure(format!("program {name}: {m}"));
    let program = match source {
        Source::Cid(cid) => {
            let fetch = || async {
                let path = dir.create().await?.join("program.wasm");
                fetch_by_cid(ctx, cid, &path).await.map_err(failure)
            };
            compiled(ctx, &cid.to_string(), fetch).await?
        }
        Source::S3(s3) => {
            if !matches!(s3.selection(), S3Selection::Object(_)) {
                return Err(failure("a program must be a single object".into()));
            }
            let path = dir.create().await?.join("program.wasm");
            let max = ctx.config.max_input_bytes.min(MAX_PROGRAM_BYTES);
            ctx.s3
                .fetch(s3, None, &path, max)
                .await
                .map_err(|e| failure(e.to_string()))?;
            let bytes = read(&path).await.map_err(failure)?;
            compile_download(ctx, bytes).await?
        }
        Source::Http(http) => {
            let path = dir.create().await?.join("program.wasm");
            let max = ctx.config.max_input_bytes.min(MAX_PROGRAM_BYTES);
            ctx.http
                .fetch(http, &path, max, None)
                .await
                .map_err(|e| failure(e.to_string()))?;
            let bytes = read(&path).await.map_err(failure)?;
            compile_download(ctx, bytes).await?
        }
    };
    Ok(program)
}

/// The program `key`: cached here, loaded from another executor of the pool
/// (`--module-share-key`), or compiled from what `fetch` returns (and then shared with
/// the pool). Counted in the module_cache metric as hit, shared or miss.
async fn compiled<F, Fut>(ctx: &ExecutionContext, key: &str, fetch: F) -> Result<Program, Failure>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, Failure>>,
{
    let cached = ctx.runtime.cached(key);
    let shared = match (&cached, &ctx.module_share) {
        (None, Some(share)) => share.load(&ctx.runtime, key).await,
        _ => None,
    };
    let (program, result) = match (cached, shared) {
        (Some(program), _) => (program, "hit"),
        (None, Some(program)) => (program, "shared"),
        (None, None) => {
            let Compiled {
                program,
                compiled_bytes,
                serialized,
            } = ctx.runtime.get_or_compile(key, fetch).await?;
            if let Some(bytes) = compiled_bytes {
                ctx.metrics
                    .staged_bytes
                    .get_or_create(&[("source", "program")])
                    .inc_by(bytes);
            }
            // What this executor compiled itself, never what a cache directory holds: a
            // shared directory's other writers are not the pool.
            if let (Some(share), Some(serialized)) = (&ctx.module_share, serialized) {
                share.publish(key, serialized);
            }
            let result = if compiled_bytes.is_some() {
                "miss"
            } else {
                "hit"
            };
            (program, result)
        }
    };
    ctx.metrics
        .module_cache
        .get_or_create(&[("result", result)])
        .inc();
    Ok(program)
}

/// Compiles (or finds compiled) the downloaded module `bytes`, keyed by their hash.
async fn compile_download(ctx: &ExecutionContext, bytes: Vec<u8>) -> Result<Program, Failure> {
    let key = ContentId::of_block(RAW, &bytes).to_string();
    compiled(ctx, &key, || async { Ok(bytes) }).await
}

/// The program `cid`'s bytes: from the orchestrator's store, or, if it lacks them, from the
/// IPFS gateways into `path`.
async fn fetch_by_cid(
    ctx: &ExecutionContext,
    cid: &ContentId,
    path: &std::path::Path,
) -> Result<Vec<u8>, String> {
    let request = DownloadRequest {
        cid: cid.to_string(),
        path: String::new(),
        offset: 0,
    };
    let download = || {
        let (mut storage, request) = (ctx.storage.clone(), request.clone());
        async move {
            let stream = storage.download(request).await?.into_inner();
            shoal::content::transfer::download_bytes(stream, MAX_PROGRAM_BYTES).await
        }
    };
    let ipfs = ctx.ipfs();
    match STAGING_RETRY.run("fetching the program", download).await {
        Ok(bytes) => Ok(bytes),
        Err(shoal::Error::Rpc(status))
            if status.code() == tonic::Code::NotFound && !ipfs.gateways().is_empty() =>
        {
            let fetched = ipfs
                .fetch_to(cid, path, MAX_PROGRAM_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            if fetched.directory {
                return Err("it is a directory, not a program".into());
            }
            read(path).await
        }
        Err(error) => Err(error.to_string()),
    }
}

async fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the download: {e}"))
}
