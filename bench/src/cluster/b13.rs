//! B13 and B13': a large module compiled once per fleet, and once per machine. Four
//! executors: `a` and `b` share one module cache (`--module-cache`), `c` and `d` keep
//! their own; `a` and `d` share a key (`--module-share-key`), as executors on two machines
//! of one pool would. The module's first run on `a` compiles it (and `a` shares it with the
//! pool); its first run on `b` loads `a`'s compiled copy from the shared directory (B13');
//! its first run on `c` compiles it again (what every executor paid before); its first run
//! on `d` loads the copy `a` uploaded to the orchestrator's store (B13). Beside them, a cold
//! `wasmtime run -C cache=n` of the same module.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal::proto::{JobSpec, JobState, SubmitJobRequest};

use crate::stack::{Clients, Stack};
use crate::{Args, Figure};

use super::*;

/// A module of `functions` functions that each do some arithmetic, called in a chain
/// from `_start`: big enough that compiling it takes a while.
fn large_module(functions: usize) -> String {
    let mut text = String::from("(module\n  (memory (export \"memory\") 1)\n");
    for i in 0..functions {
        text.push_str(&format!(
            "  (func $f{i} (param $x i32) (result i32)\n    (local.get $x)\n"
        ));
        for k in 0..40 {
            let op = ["i32.add", "i32.mul", "i32.xor", "i32.sub"][k % 4];
            text.push_str(&format!("    (i32.const {})\n    ({op})\n", k * 7 + i));
        }
        if i + 1 < functions {
            text.push_str(&format!("    (call $f{})\n", i + 1));
        }
        text.push_str("  )\n");
    }
    text.push_str(
        "  (func (export \"_start\") (i32.store (i32.const 0) (call $f0 (i32.const 1))))\n)\n",
    );
    text
}

/// Runs `program` once on the executor labelled `who=WHO`; returns how long from submit
/// to COMPLETED.
async fn first_run(clients: &mut Clients, program: &str, who: &str) -> anyhow::Result<Duration> {
    let spec = JobSpec {
        program: program.to_owned(),
        program_name: "large.wasm".into(),
        constraints: vec![format!("who={who}")],
        ..Default::default()
    };
    let started = Instant::now();
    let job = clients
        .jobs
        .submit_job(SubmitJobRequest {
            spec: Some(spec),
            idempotency_key: String::new(),
            stored_cids: Vec::new(),
        })
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow::anyhow!("SubmitJob answered no job"))?;
    let (state, ..) = clients.watch(&job.id, true).await?;
    anyhow::ensure!(
        state == JobState::Completed,
        "the run on {who} ended {state:?}"
    );
    Ok(started.elapsed())
}

pub async fn b13(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let functions = if args.smoke { 100 } else { 6000 };
    let text = large_module(functions);
    let large = module_file(&dir, "large.wasm", &text)?;
    let mut stack = Stack::start(&dir, &[]).await?;
    let shared = dir.join("shared-modules").to_string_lossy().into_owned();
    let key = dir.join("pool.key");
    std::fs::write(&key, "the executors of b13 share this pool key")?;
    let key = key.to_string_lossy().into_owned();
    let mut a_log = None;
    for (who, cache, pool) in [
        ("a", true, true),
        ("b", true, false),
        ("c", false, false),
        ("d", false, true),
    ] {
        let label = format!("who={who}");
        let mut flags = vec!["--label", label.as_str()];
        if cache {
            flags.extend(["--module-cache", shared.as_str()]);
        }
        if pool {
            flags.extend(["--module-share-key", key.as_str()]);
        }
        if who == "a" {
            a_log = Some(stack.add_executor_logged(who, &flags)?);
        } else {
            stack.add_executor(who, &flags)?;
        }
    }
    let mut clients = stack.clients().await?;
    clients.wait_executors(4).await?;
    let program = clients.put(&large).await?;

    let compiled = first_run(&mut clients, &program, "a").await?;
    // `a` shares what it compiled in the background: `d` is measured once it has.
    if let Some(log) = &a_log {
        log.wait_for("a's compiled module shared", |line| {
            Ok(line.contains("compiled module shared").then_some(()))
        })
        .await?;
    }
    let loaded = first_run(&mut clients, &program, "b").await?;
    let own_cache = first_run(&mut clients, &program, "c").await?;
    let fleet = first_run(&mut clients, &program, "d").await?;
    let baseline = crate::runtime::process_p50(
        &args.wasmtime,
        &["run", "-C", "cache=n", &large.to_string_lossy()],
        if args.smoke { 1 } else { 3 },
    )?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let details = serde_json::json!({
        "module_bytes": std::fs::metadata(&large)?.len(),
        "first_run_compiling_ms": ms(compiled),
        "first_run_own_cache_ms": ms(own_cache),
        "baseline": "wasmtime run -C cache=n, one process",
    });
    Ok(vec![
        Figure {
            id: "B13'",
            what: "first run on a second executor of a module compiled by another",
            unit: "ms",
            measured: ms(loaded),
            baseline: Some(ms(baseline)),
            ratio: Some(baseline.as_secs_f64() / loaded.as_secs_f64()),
            ratio_unit: "x faster than a cold wasmtime run",
            target: "compile once per machine (no target of its own)",
            meets: None,
            details: details.clone(),
        },
        Figure {
            id: "B13",
            what: "first run on an executor of another machine of a module its pool compiled",
            unit: "ms",
            measured: ms(fleet),
            baseline: Some(ms(baseline)),
            ratio: Some(baseline.as_secs_f64() / fleet.as_secs_f64()),
            ratio_unit: "x faster than a cold wasmtime run",
            target: "compile once per fleet (no target of its own)",
            meets: None,
            details,
        },
    ])
}
