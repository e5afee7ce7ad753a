//! B12: a round trip as a user makes it: `shoal wasm run noop.wasm` (a local file: hashed,
//! found in the store, submitted, watched, its output printed) through a running stack,
//! against `wasmtime run noop.wasm` on the same machine, as interleaved pairs so both see
//! the same machine state.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::stack::Stack;
use crate::{Args, Figure, percentile};

use super::*;

/// Runs `command` to its end; returns how long that took.
fn timed(command: &mut std::process::Command, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| anyhow::anyhow!("running {what}: {e}"))?;
    anyhow::ensure!(status.success(), "{what} failed: {status}");
    Ok(started.elapsed())
}

pub async fn b12(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let pairs = if args.smoke { 3 } else { 30 };
    let noop = module_file(
        &dir,
        "noop.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
    )?;
    let mut stack = Stack::start(&dir, &[]).await?;
    stack.add_executor("e0", &[])?;
    stack.add_executor("e1", &[])?;
    let mut clients = stack.clients().await?;
    clients.wait_executors(2).await?;
    let shoal = shoal_harness::binary("shoal")?;
    let noop_arg = noop.to_string_lossy().into_owned();
    let cli = || {
        let mut command = std::process::Command::new(&shoal);
        command
            .args(["wasm", "run", &noop_arg])
            .env("SHOAL_ORCHESTRATOR", &stack.address);
        command
    };
    // Once untimed on each side: the upload, the compile and the page cache are paid.
    for _ in 0..2 {
        timed(&mut cli(), "shoal wasm run")?;
    }
    let wasmtime = || {
        let mut command = std::process::Command::new(&args.wasmtime);
        command.args(["run", &noop_arg]);
        command
    };
    timed(&mut wasmtime(), "wasmtime run")?;
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..pairs {
        let a = timed(&mut cli(), "shoal wasm run")?;
        let b = timed(&mut wasmtime(), "wasmtime run")?;
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
        ours.push(a);
        theirs.push(b);
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    let ours = percentile(&mut ours, 0.5);
    let theirs = percentile(&mut theirs, 0.5);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![Figure {
        id: "B12",
        what: "round trip: shoal wasm run noop.wasm through a stack, median",
        unit: "ms",
        measured: ms(ours),
        baseline: Some(ms(theirs)),
        ratio: Some(ratio),
        ratio_unit: "x wasmtime run (median of pairs)",
        target: "median ratio <= 1.0",
        meets: Some(ratio <= 1.0),
        details: serde_json::json!({
            "pairs": pairs,
            "baseline": "wasmtime run noop.wasm, interleaved",
        }),
    }])
}
