//! B5: a job's stdout streamed live, and artifact downloads, also over a slow link.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use shoal::proto::storage_service_server::{StorageService, StorageServiceServer};
use shoal::proto::{
    CopyFromS3Request, CopyFromUrlRequest, DownloadRequest, DownloadResponse, JobState, PinRequest,
    PinResponse, StatRequest, StatResponse, UploadRequest, UploadResponse, download_response,
};
use tonic::{Request, Response, Status, Streaming};

use crate::stack::{Clients, Stack};
use crate::{Args, Figure};

use super::*;

/// A guest writing `blocks` blocks of 64 KiB (`x`s ending in a newline) to stdout.
fn logs_module(blocks: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $i i32)
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const 65535))
    (i32.store8 (i32.const 131071) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $write
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $write (i32.lt_u (local.get $i) (i32.const {blocks}))))))"#
    )
}

/// The bare-tonic baseline of B5: a StorageService whose Download streams bytes held in
/// memory, in the chunk size Shoal uses, and does nothing else.
struct BareDownloads {
    chunk: Bytes,
    total: u64,
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl StorageService for BareDownloads {
    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        _request: Request<DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let chunk = self.chunk.clone();
        let chunks = self.total.div_ceil(chunk.len() as u64);
        let stream = futures::stream::iter(0..chunks).map(move |_| {
            Ok(DownloadResponse {
                item: Some(download_response::Item::Data(chunk.clone())),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn upload(
        &self,
        _request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        Err(Status::unimplemented(
            "the B5 baseline only streams downloads",
        ))
    }

    async fn stat(&self, _request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        Err(Status::unimplemented(
            "the B5 baseline only streams downloads",
        ))
    }

    async fn copy_from_url(
        &self,
        _request: Request<CopyFromUrlRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        Err(Status::unimplemented(
            "the B5 baseline only streams downloads",
        ))
    }

    async fn copy_from_s3(
        &self,
        _request: Request<CopyFromS3Request>,
    ) -> Result<Response<UploadResponse>, Status> {
        Err(Status::unimplemented(
            "the B5 baseline only streams downloads",
        ))
    }

    async fn pin(&self, _request: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        Err(Status::unimplemented(
            "the B5 baseline only streams downloads",
        ))
    }
}

/// Downloads `cid` from byte `offset` on and returns the bytes of file data received.
async fn download_bytes(clients: &mut Clients, cid: &str, offset: u64) -> anyhow::Result<u64> {
    let mut stream = clients
        .storage
        .download(DownloadRequest {
            cid: cid.to_owned(),
            path: String::new(),
            offset,
        })
        .await?
        .into_inner();
    let mut bytes = 0u64;
    while let Some(message) = stream.message().await? {
        if let Some(download_response::Item::Data(data)) = message.item {
            bytes += data.len() as u64;
        }
    }
    Ok(bytes)
}

/// Delay each way of B5's slow link.
const SLOW_LINK_ONE_WAY: Duration = Duration::from_millis(5);

/// B5: (a) a job's stdout streamed live to a watching client, 100 MiB; (b) an artifact
/// downloaded from the content store, 1 GiB; each against a bare tonic stream of the same
/// bytes over loopback.
pub async fn b5(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (log_blocks, artifact_bytes): (u32, u64) = if args.smoke {
        (16, 8 << 20)
    } else {
        (1600, 1 << 30)
    };
    let mut stack = Stack::start(&dir, &[]).await?;
    stack.add_executor("e0", &["--log-cap", "1GiB"])?;
    let mut clients = stack.clients().await?;
    clients.wait_executors(1).await?;

    // (a) logs
    let logs = module_file(&dir, "logs.wasm", &logs_module(log_blocks))?;
    let program = clients.put(&logs).await?;
    let started = Instant::now();
    let job = clients.submit(&program, &[]).await?;
    let (state, log_bytes, last_log) = clients.watch(&job, false).await?;
    let log_time = started.elapsed();
    // Until the last log byte reached the client, without the publishing of the kept
    // stdout (the same 100 MiB) into the job's results that follows the run.
    let last_log_time = last_log.map_or(log_time, |at| at - started);
    anyhow::ensure!(state == JobState::Completed, "the logs job ended {state:?}");
    let expected = u64::from(log_blocks) * 65536;
    anyhow::ensure!(
        log_bytes == expected,
        "the client saw {log_bytes} log bytes of {expected}"
    );

    // (b) artifacts: a file in the store (written once; its pages are then cached).
    let artifact = dir.join("artifact.bin");
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&artifact)?);
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for i in 0..artifact_bytes >> 20 {
            let mut block = block.clone();
            block[..8].copy_from_slice(&i.to_le_bytes());
            file.write_all(&block)?;
        }
    }
    let cid = clients.put(&artifact).await?;
    download_bytes(&mut clients, &cid, 0).await?; // warm the page cache
    let started = Instant::now();
    let got = download_bytes(&mut clients, &cid, 0).await?;
    let artifact_time = started.elapsed();
    anyhow::ensure!(
        got == artifact_bytes,
        "downloaded {got} of {artifact_bytes} bytes"
    );

    // The baseline: bare tonic, same chunk size, same loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let chunk = Bytes::from(vec![b'x'; shoal::content::transfer::CHUNK_SIZE]);
    let bare = |total: u64| {
        StorageServiceServer::new(BareDownloads {
            chunk: chunk.clone(),
            total,
        })
        .max_encoding_message_size(64 << 20)
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .add_service(bare(artifact_bytes))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    let server = tokio::spawn(server);
    // Bound already: the first connection waits in the backlog until the server accepts.
    let mut bare_clients = Clients::connect(&format!("http://127.0.0.1:{port}")).await?;
    download_bytes(&mut bare_clients, "warm", 0).await?;
    let started = Instant::now();
    let bare_bytes = download_bytes(&mut bare_clients, "bare", 0).await?;
    let bare_time = started.elapsed();
    shutdown.cancel();
    let _ = server.await;
    let bare_rate = bare_bytes as f64 / bare_time.as_secs_f64() / 1e6;

    // (c) The same download across a slow link (a relay adding 5 ms each way), with Shoal's
    // HTTP/2 windows and with hyper's defaults: flow control, not bandwidth, is then what
    // limits one stream.
    let slow_bytes = artifact_bytes.min(256 << 20);
    let relay = crate::relay::DelayRelay::start(
        stack.address.trim_start_matches("http://").to_owned(),
        SLOW_LINK_ONE_WAY,
    )
    .await?;
    let mut slow_rates = Vec::new();
    for defaults in [true, false] {
        let mut clients = if defaults {
            Clients::connect_with_http2_defaults(&relay.address).await?
        } else {
            Clients::connect(&relay.address).await?
        };
        let started = Instant::now();
        let got = download_bytes(&mut clients, &cid, artifact_bytes - slow_bytes).await?;
        anyhow::ensure!(got == slow_bytes, "downloaded {got} of {slow_bytes} bytes");
        slow_rates.push(slow_bytes as f64 / started.elapsed().as_secs_f64() / 1e6);
    }
    drop(relay);
    let (default_rate, sized_rate) = (slow_rates[0], slow_rates[1]);

    let log_rate = log_bytes as f64 / log_time.as_secs_f64() / 1e6;
    let artifact_rate = artifact_bytes as f64 / artifact_time.as_secs_f64() / 1e6;
    Ok(vec![
        Figure {
            id: "B5",
            what: "artifact download from the content store",
            unit: "MB/s",
            measured: artifact_rate,
            baseline: Some(bare_rate),
            ratio: Some(artifact_rate / bare_rate * 100.0),
            ratio_unit: "% of bare",
            target: ">= 90% of bare tonic; >= 1 GB/s artifacts",
            meets: Some(artifact_rate >= 0.9 * bare_rate && artifact_rate >= 1000.0),
            details: serde_json::json!({
                "bytes": artifact_bytes,
                "baseline": "bare tonic server streaming the same bytes from memory",
            }),
        },
        Figure {
            id: "B5",
            what: "live job logs, executor -> orchestrator -> client",
            unit: "MB/s",
            measured: log_rate,
            baseline: Some(bare_rate),
            ratio: Some(log_rate / bare_rate * 100.0),
            ratio_unit: "% of bare",
            target: ">= 90% of bare tonic",
            meets: Some(log_rate >= 0.9 * bare_rate),
            details: serde_json::json!({
                "bytes": log_bytes,
                "includes": "submit, staging, the run, durable log events, the watch stream, \
                             publishing the kept stdout as a result, the terminal event",
                "until_last_log_byte_ms": last_log_time.as_secs_f64() * 1e3,
                "until_terminal_ms": log_time.as_secs_f64() * 1e3,
                "until_last_log_byte_mb_per_s": log_bytes as f64 / last_log_time.as_secs_f64() / 1e6,
                "baseline": "bare tonic server streaming the same bytes from memory",
            }),
        },
        Figure {
            id: "B5",
            what: "artifact download across a 10 ms round trip",
            unit: "MB/s",
            measured: sized_rate,
            baseline: Some(default_rate),
            ratio: Some(sized_rate / default_rate),
            ratio_unit: "x hyper's default windows",
            target: "windows sized for artifact streams (no target of its own)",
            meets: None,
            details: serde_json::json!({
                "bytes": slow_bytes,
                "round_trip_ms": (2 * SLOW_LINK_ONE_WAY).as_millis() as u64,
                "stream_window": shoal::net::HTTP2_STREAM_WINDOW,
                "connection_window": shoal::net::HTTP2_CONNECTION_WINDOW,
                "baseline": "the same download with tonic's and hyper's default HTTP/2 settings (2 MiB stream window)",
            }),
        },
    ])
}
