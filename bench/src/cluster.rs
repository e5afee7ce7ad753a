//! End-to-end benchmarks on real orchestrator and executor processes: B2 (durable
//! throughput), B3 (latency), B5 (log and artifact streaming), B9 (many executors), B10
//! (re-dispatch after a crash), S2 (memory per queued job) and S3 (restart with 100,000
//! jobs).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::storage_service_server::{StorageService, StorageServiceServer};
use shoal::proto::{
    Capacity, CopyFromS3Request, CopyFromUrlRequest, DownloadRequest, DownloadResponse,
    ExecutionState, ExecutorMessage, GetJobRequest, Heartbeat, JobState, ListExecutionsRequest,
    PinRequest, PinResponse, Register, StatRequest, StatResponse, UploadRequest, UploadResponse,
    download_response, executor_message,
};
use tonic::{Request, Response, Status, Streaming};

use crate::stack::{Clients, Stack, free_port};
use crate::{Args, Figure, micros, percentile, repo_root};

/// Writes `name` (a WAT text) compiled to `dir`; returns the path.
fn module_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(text)?)?;
    Ok(path)
}

/// A stack with an orchestrator and `executors` executors of `slots` slots each, all
/// connected, and the hello example uploaded; returns the stack, clients and hello's CID.
async fn hello_stack(
    args: &Args,
    dir: &Path,
    executors: usize,
    slots: u32,
) -> anyhow::Result<(Stack, Clients, String)> {
    let mut stack = Stack::start(dir, &[]).await?;
    if let Some(root) = &args.executor_scratch {
        stack.set_executor_root(root)?;
    }
    for i in 0..executors {
        stack.add_executor(&format!("e{i}"), &["--slots", &slots.to_string()])?;
    }
    let mut clients = stack.clients().await?;
    clients.wait_executors(executors).await?;
    let hello = clients
        .put(&repo_root().join("examples/hello/hello.wasm"))
        .await?;
    // One job per executor first, so every module cache holds hello.
    for _ in 0..executors * 2 {
        let job = clients.submit(&hello, &["warm-up"]).await?;
        let (state, ..) = clients.watch(&job, true).await?;
        anyhow::ensure!(state == JobState::Completed, "warm-up job ended {state:?}");
    }
    Ok((stack, clients, hello))
}

/// B2: jobs submitted by many concurrent clients, each waiting for its job's end, through
/// an orchestrator and two executors; against the in-process runtime loop (B1's), the
/// upper bound for any end-to-end path.
pub async fn b2(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (jobs, clients_count) = if args.smoke { (40, 8) } else { (5000, 256) };
    let (stack, clients, hello) = hello_stack(args, &dir, 2, 32).await?;
    let upper_bound = crate::runtime::hello_loop_rate(&dir.join("loop"), jobs.min(2000)).await?;

    let cpu_before = stack.cpu_times()?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients_count {
        let mut clients = clients.clone();
        let hello = hello.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut failed = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                let job = clients.submit(&hello, &["bench"]).await?;
                let (state, ..) = clients.watch(&job, true).await?;
                if state != JobState::Completed {
                    failed += 1;
                }
            }
            Ok::<usize, anyhow::Error>(failed)
        });
    }
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        failed += done??;
    }
    anyhow::ensure!(failed == 0, "{failed} of {jobs} jobs did not complete");
    let wall = started.elapsed();
    let rate = jobs as f64 / wall.as_secs_f64();
    // Where the cores went: CPU per job in each process.
    let cpu_after = stack.cpu_times()?;
    let per_job_us = |before: Duration, after: Duration| micros(after - before) / jobs as f64;
    Ok(vec![Figure {
        id: "B2",
        what: "end-to-end durable throughput, submit -> completed",
        unit: "jobs/s",
        measured: rate,
        baseline: Some(upper_bound),
        ratio: Some(rate / upper_bound * 100.0),
        ratio_unit: "% of bound",
        target: ">= 5,000 jobs/s sustained",
        meets: Some(rate >= 5000.0),
        details: serde_json::json!({
            "jobs": jobs,
            "concurrent_clients": clients_count,
            "executors": 2,
            "slots_per_executor": 32,
            "orchestrator_cpu_us_per_job": per_job_us(cpu_before.0, cpu_after.0),
            "executors_cpu_us_per_job": per_job_us(cpu_before.1, cpu_after.1),
            "wall_s": wall.as_secs_f64(),
            "baseline": "B1's in-process runtime loop, jobs/s (one core)",
        }),
    }])
}

/// B3: one job at a time, submit -> terminal event at the client; against a trivial RPC's
/// round trip plus two fsyncs (the least any durable submit-and-complete can cost).
pub async fn b3(args: &Args, dir: PathBuf, fsync_p50_us: f64) -> anyhow::Result<Vec<Figure>> {
    let jobs = if args.smoke { 5 } else { 500 };
    let (_stack, mut clients, hello) = hello_stack(args, &dir, 2, 4).await?;
    let mut latencies = Vec::with_capacity(jobs);
    // When, after the submit call started, the orchestrator recorded each state.
    let mut stages: std::collections::BTreeMap<&'static str, Vec<Duration>> = Default::default();
    let mut last_job = String::new();
    for _ in 0..jobs {
        let started = Instant::now();
        let submitted_at = std::time::SystemTime::now();
        let job = clients.submit(&hello, &["bench"]).await?;
        let states = clients.watch_states(&job).await?;
        latencies.push(started.elapsed());
        let state = states.last().map(|(state, _)| *state);
        anyhow::ensure!(state == Some(JobState::Completed), "job ended {state:?}");
        for (state, time) in states {
            let after = time.duration_since(submitted_at).unwrap_or_default();
            stages.entry(state.as_str_name()).or_default().push(after);
        }
        last_job = job;
    }
    let stages: serde_json::Map<String, serde_json::Value> = stages
        .into_iter()
        .map(|(state, mut times)| (state.to_owned(), micros(percentile(&mut times, 0.5)).into()))
        .collect();
    let mut round_trips = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let started = Instant::now();
        clients
            .jobs
            .get_job(GetJobRequest {
                job_id: last_job.clone(),
            })
            .await?;
        round_trips.push(started.elapsed());
    }
    let p50 = micros(percentile(&mut latencies, 0.5));
    let p99 = micros(percentile(&mut latencies, 0.99));
    let round_trip = micros(percentile(&mut round_trips, 0.5));
    let baseline = round_trip + 2.0 * fsync_p50_us;
    let budget_p50 = 1000.0 + 2.0 * fsync_p50_us;
    let budget_p99 = 5000.0 + 2.0 * fsync_p50_us;
    Ok(vec![Figure {
        id: "B3",
        what: "submit -> result latency at low load, p50",
        unit: "us",
        measured: p50,
        baseline: Some(baseline),
        ratio: Some(p50 / baseline),
        ratio_unit: "x floor",
        target: "p50 <= 1 ms + 2 fsync; p99 <= 5 ms + 2 fsync",
        meets: Some(p50 <= budget_p50 && p99 <= budget_p99),
        details: serde_json::json!({
            "jobs": jobs,
            "p99_us": p99,
            "budget_p50_us": budget_p50,
            "budget_p99_us": budget_p99,
            "rpc_round_trip_us": round_trip,
            "fsync_p50_us": fsync_p50_us,
            "baseline": "GetJob round trip + 2 fsync",
            "state_reached_after_submit_p50_us": stages,
        }),
    }])
}

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
    let port = free_port()?;
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
        .serve_with_shutdown(
            format!("127.0.0.1:{port}").parse()?,
            shutdown.clone().cancelled_owned(),
        );
    let server = tokio::spawn(server);
    let mut bare_clients = loop {
        if let Ok(c) = Clients::connect(&format!("http://127.0.0.1:{port}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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

/// One simulated executor: registers with `slots` slots and sends heartbeats at the
/// interval the orchestrator asks for, until `stop`.
async fn simulated_executor(
    address: String,
    id: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(address)?
        .connect()
        .await?;
    let mut client = ExecutorServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let message = |m| ExecutorMessage {
        message: Some(m),
        sequence: 0,
    };
    tx.send(message(executor_message::Message::Register(Register {
        executor_id: id,
        protocol_version: 1,
        capacity: Some(Capacity {
            slots: 4,
            memory_bytes: 8 << 30,
        }),
        version: "bench".into(),
        ..Default::default()
    })))
    .await?;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let registered = match inbound.message().await?.and_then(|m| m.message) {
        Some(shoal::proto::orchestrator_message::Message::Registered(r)) => r,
        other => bail!("expected Registered, got {other:?}"),
    };
    let interval = registered
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(2));
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                tx.send(message(executor_message::Message::Heartbeat(Heartbeat::default()))).await?;
            }
            next = inbound.message() => if next?.is_none() { bail!("the orchestrator ended the stream") },
        }
    }
}

/// The orchestrator's CPU use (percent of one core) over `window`.
async fn cpu_percent(stack: &Stack, window: Duration) -> anyhow::Result<f64> {
    let (_, before) = stack.orchestrator_usage()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (_, after) = stack.orchestrator_usage()?;
    Ok((after - before).as_secs_f64() / started.elapsed().as_secs_f64() * 100.0)
}

/// B9: thousands of simulated executors, each on its own connection with a Connect stream
/// and heartbeats, on one orchestrator; its CPU use against the same with one executor.
pub async fn b9(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (count, window) = if args.smoke {
        (50, Duration::from_secs(2))
    } else {
        (5000, Duration::from_secs(20))
    };
    let stack = Stack::start(&dir, &[]).await?;
    let mut clients = stack.clients().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<_>, i: usize| {
        tasks.spawn(simulated_executor(
            stack.address.clone(),
            format!("sim-{i:05}"),
            stop.clone(),
        ));
    };
    spawn(&mut tasks, 0);
    clients.wait_executors(1).await?;
    let one = cpu_percent(&stack, window).await?;
    let started = Instant::now();
    for i in 1..count {
        spawn(&mut tasks, i);
        if i % 100 == 0 {
            // Connect in waves, as a fleet coming up would, not in one burst of SYNs.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    clients.wait_executors(count).await?;
    let connect_time = started.elapsed();
    let many = cpu_percent(&stack, window).await?;
    let (rss, _) = stack.orchestrator_usage()?;
    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        done?.context("a simulated executor failed")?;
    }
    Ok(vec![Figure {
        id: "B9",
        what: "orchestrator CPU with 5,000 connected executors",
        unit: "% core",
        measured: many,
        baseline: Some(one),
        ratio: Some(many - one),
        ratio_unit: " pts more",
        target: "5,000 streams at < 50% of a core",
        meets: Some(count >= 5000 && many < 50.0),
        details: serde_json::json!({
            "executors": count,
            "heartbeat_interval_s": 2,
            "window_s": window.as_secs_f64(),
            "all_connected_after_s": connect_time.as_secs_f64(),
            "orchestrator_rss_bytes": rss,
            "baseline": "the same orchestrator with one executor",
        }),
    }])
}

/// B10: an executor running a job is killed (SIGKILL); the time until the job is assigned
/// to the other executor, against the lease.
pub async fn b10(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (lease, heartbeat) = if args.smoke {
        (Duration::from_secs(1), Duration::from_millis(250))
    } else {
        (Duration::from_secs(10), Duration::from_secs(2))
    };
    let lease_arg = format!("{}ms", lease.as_millis());
    let heartbeat_arg = format!("{}ms", heartbeat.as_millis());
    let mut stack = Stack::start(
        &dir,
        &[
            "--lease",
            &lease_arg,
            "--heartbeat-interval",
            &heartbeat_arg,
        ],
    )
    .await?;
    stack.add_executor("e0", &[])?;
    stack.add_executor("e1", &[])?;
    let mut clients = stack.clients().await?;
    clients.wait_executors(2).await?;
    let spin = module_file(
        &dir,
        "spin.wasm",
        &std::fs::read_to_string(repo_root().join("tests/fixtures/spin.wat"))?,
    )?;
    let program = clients.put(&spin).await?;
    let job = clients.submit(&program, &[]).await?;

    let executions = |mut clients: Clients, job: String| async move {
        let answer = clients
            .jobs
            .list_executions(ListExecutionsRequest { job_id: job })
            .await?;
        Ok::<_, anyhow::Error>(answer.into_inner().executions)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let list = executions(clients.clone(), job.clone()).await?;
        if let Some(e) = list.iter().find(|e| e.state() == ExecutionState::Running) {
            break e.executor_id.clone();
        }
        if Instant::now() > deadline {
            bail!("the job never started");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let index: usize = victim.trim_start_matches('e').parse()?;
    stack.executors[index].start_kill()?;
    let killed = Instant::now();
    let redispatched = loop {
        let list = executions(clients.clone(), job.clone()).await?;
        if list
            .iter()
            .any(|e| e.attempt >= 2 && e.executor_id != victim)
        {
            break killed.elapsed();
        }
        if killed.elapsed() > lease * 4 + Duration::from_secs(30) {
            bail!("the job was never re-dispatched");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let bound = lease + heartbeat;
    Ok(vec![Figure {
        id: "B10",
        what: "re-dispatch after an executor is killed",
        unit: "ms",
        measured: ms(redispatched),
        baseline: Some(ms(lease)),
        ratio: Some(ms(redispatched) - ms(lease)),
        ratio_unit: " ms past",
        target: "<= lease + 1 heartbeat",
        meets: Some(redispatched <= bound),
        details: serde_json::json!({
            "lease_ms": ms(lease),
            "heartbeat_ms": ms(heartbeat),
            "baseline": "the lease",
        }),
    }])
}

/// S2 and S3: 100,000 jobs queued through the API with no executor: the orchestrator's
/// memory per queued job; then its restart time with them all in the store, against the
/// restart of an empty one.
pub async fn s2_s3(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (jobs, clients_count) = if args.smoke { (500, 8) } else { (100_000, 128) };
    let mut stack = Stack::start(&dir, &["--max-queued-jobs", "200000"]).await?;
    let clients = stack.clients().await?;
    let program = clients
        .clone()
        .put(&repo_root().join("examples/hello/hello.wasm"))
        .await?;

    stack.stop_orchestrator().await?;
    stack.restart_orchestrator()?;
    let empty_restart = stack.wait_ready().await?;
    let clients = stack.clients().await?;
    let (rss_before, _) = stack.orchestrator_usage()?;

    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients_count {
        let mut clients = clients.clone();
        let program = program.clone();
        let next = next.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                clients.submit(&program, &["queued"]).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let submit_rate = jobs as f64 / started.elapsed().as_secs_f64();
    let (rss_after, _) = stack.orchestrator_usage()?;
    let per_job = rss_after.saturating_sub(rss_before) as f64 / jobs as f64;

    stack.stop_orchestrator().await?;
    stack.restart_orchestrator()?;
    let full_restart = stack.wait_ready().await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        Figure {
            id: "S2",
            what: "orchestrator memory per queued job (100k queued)",
            unit: "bytes",
            measured: per_job,
            baseline: None,
            ratio: None,
            ratio_unit: "",
            target: "(scale report)",
            meets: None,
            details: serde_json::json!({
                "jobs": jobs,
                "rss_before_bytes": rss_before,
                "rss_after_bytes": rss_after,
                "durable_submits_per_s": submit_rate,
                "concurrent_clients": clients_count,
            }),
        },
        Figure {
            id: "S3",
            what: "orchestrator restart with 100k jobs in the store",
            unit: "ms",
            measured: ms(full_restart),
            baseline: Some(ms(empty_restart)),
            ratio: Some(full_restart.as_secs_f64() / empty_restart.as_secs_f64()),
            ratio_unit: "x empty",
            target: "(scale report)",
            meets: None,
            details: serde_json::json!({
                "jobs": jobs,
                "baseline": "restart of the same orchestrator with an empty store",
                "measured_until": "the first answered ListNodes call",
            }),
        },
    ])
}
