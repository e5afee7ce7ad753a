//! One execution from assignment to report, in the order it happens: stage the program
//! and inputs (`staging`), run the program with its logs forwarded live and its output
//! quota watched, publish the result tree (`publish`), and report how it ended.
//!
//! The result tree is built in place: `stdout` and `stderr` are captured into it, each
//! output directory is mounted writable from inside it, and `exitCode` is added at the end,
//! so publishing is one upload of one directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal::content::local_tree::TreeBounds;
use shoal::proto::{
    Assign, ExecutionFinished, ExecutionLog, ExecutionResult, ExecutionState, Failure, FailureKind,
    LogChunk, LogStream, executor_message,
};
use shoal::spec::ValidSpec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::capture::Capture;
use crate::context::{ExecutionContext, Uplink};
use crate::publish::{self, Ran, over_limit};
use crate::runtime::{Preopen, RunOutcome, RunRequest};
use crate::scratch::Reuse;
use crate::staging::{self, Staged};

/// The writable scratch directory every execution gets unless the job mounts its own
/// there (the input stand-ins above mounts leave it to this).
pub const GUEST_TMP: &str = "/tmp";

/// A scratch directory its execution is done with, and whether and how it may be reused
/// (see [`crate::scratch::ScratchPool::release`]).
pub struct UsedScratch {
    pub path: PathBuf,
    pub reuse: Reuse,
}

/// Runs one execution and returns its report (for the caller to send through the uplink)
/// and the scratch directory it used, for the caller to give back to the pool once the
/// report is on its way: checking the directory is then off the report's path.
pub async fn execute(
    ctx: &ExecutionContext,
    assign: Assign,
    cancel: CancellationToken,
) -> (ExecutionFinished, Option<UsedScratch>) {
    let id = assign.execution_id.as_str();
    // Said first, so the orchestrator's record of it overlaps the work below.
    ctx.uplink.state(id, ExecutionState::Staging).await;
    // Checked where it arrives, once: everything below works with the typed values.
    let spec = match assign.spec.clone().map(ValidSpec::effective) {
        // The orchestrator replaces a sharded input by the partition's entries; one that
        // arrives whole would be mounted nowhere.
        Some(Ok(spec)) if spec.shard().is_some() => {
            let message = "the assignment's spec still has a sharded input";
            let failure = Failure::new(FailureKind::Internal, message);
            return (finished(id, Some(failure), None), None);
        }
        Some(Ok(spec)) => spec,
        Some(Err(error)) => {
            let message = format!("the assignment's spec is not valid: {error}");
            let failure = Failure::new(FailureKind::Internal, message);
            return (finished(id, Some(failure), None), None);
        }
        None => {
            let failure = Failure::new(FailureKind::Internal, "the assignment has no spec");
            return (finished(id, Some(failure), None), None);
        }
    };
    let outputs: Vec<String> = spec.spec().outputs.iter().map(|o| o.name.clone()).collect();
    let scratch = match ctx.scratch.acquire(&outputs).await {
        Ok(scratch) => scratch,
        Err(e) => {
            let failure = Failure::new(
                FailureKind::Internal,
                format!("cannot make a scratch directory for the execution: {e}"),
            );
            return (finished(id, Some(failure), None), None);
        }
    };
    let (report, reuse) = execute_in(ctx, &assign, &spec, &scratch, &cancel).await;
    let used = UsedScratch {
        path: scratch,
        reuse,
    };
    (report, Some(used))
}

/// The report of execution `execution_id`: COMPLETED without a failure, else the state
/// the failure's kind implies.
fn finished(
    execution_id: &str,
    failure: Option<Failure>,
    result: Option<ExecutionResult>,
) -> ExecutionFinished {
    let state = match &failure {
        None => ExecutionState::Completed,
        Some(failure) => failure.kind().execution_state(),
    };
    ExecutionFinished {
        execution_id: execution_id.to_owned(),
        state: state as i32,
        result,
        failure,
        result_blocks: Vec::new(),
    }
}

/// Stage, run, publish, report; and whether the scratch directory may be reused.
async fn execute_in(
    ctx: &ExecutionContext,
    assign: &Assign,
    spec: &ValidSpec,
    scratch: &Path,
    cancel: &CancellationToken,
) -> (ExecutionFinished, Reuse) {
    let id = assign.execution_id.as_str();
    // `results/` and the output directories inside it are already there (`ScratchPool`).
    let results_dir = scratch.join("results");

    let staged = match staging::stage(ctx, spec, scratch, cancel).await {
        Ok(staged) => staged,
        // A fetch cut short may still be writing: the directory is not reused.
        Err(failure) => return (finished(id, Some(failure), None), Reuse::Never),
    };

    let ran = run(ctx, assign, spec, staged, scratch, cancel).await;
    if matches!(&ran.outcome, RunOutcome::Failed(f) if f.kind() == FailureKind::Cancelled) {
        let failure = Failure::new(FailureKind::Cancelled, "cancelled while running");
        return (finished(id, Some(failure), None), Reuse::Never);
    }
    let interrupted = ran.interrupted;

    ctx.uplink.state(id, ExecutionState::Publishing).await;
    let published = publish::publish_results(ctx, assign, spec, &results_dir, ran).await;
    let mut report = finished(id, published.failure, Some(published.result));
    report.result_blocks = published.blocks;
    let reuse = match published.clean_results {
        _ if interrupted => Reuse::Never,
        Some(outputs) => Reuse::Known(outputs),
        None => Reuse::IfClean,
    };
    (report, reuse)
}

/// Runs the staged program with the outputs mounted writable from `scratch/results` and
/// an empty writable `/tmp` from `scratch/tmp`, its logs forwarded live and its output
/// quota (outputs and `/tmp` together) watched, until it ends.
async fn run(
    ctx: &ExecutionContext,
    assign: &Assign,
    valid: &ValidSpec,
    staged: Staged,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Ran {
    let id = assign.execution_id.as_str();
    let spec = valid.spec();
    let results_dir = scratch.join("results");
    let mut preopens = staged.inputs.preopens.clone();
    for output in &spec.outputs {
        preopens.push(Preopen {
            host: results_dir.join(&output.name),
            guest: output.path.clone(),
            writable: true,
        });
    }
    // Many ported programs (Python's tempfile among them) need a /tmp; one the job mounts
    // itself wins.
    let tmp = crate::scratch::tmp_dir(scratch);
    if !preopens.iter().any(|p| p.guest == GUEST_TMP) {
        preopens.push(Preopen {
            host: tmp.clone(),
            guest: GUEST_TMP.into(),
            writable: true,
        });
    }

    let wake = Arc::new(Notify::new());
    let stdout = Capture::new(
        &results_dir.join("stdout"),
        ctx.config.log_cap,
        wake.clone(),
    );
    let stderr = Capture::new(
        &results_dir.join("stderr"),
        ctx.config.log_cap,
        wake.clone(),
    );

    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    env.push(("SHOAL_JOB_ID".into(), assign.job_id.clone()));
    env.push(("SHOAL_EXECUTION_ID".into(), id.to_owned()));
    if assign.partition_count > 0 {
        env.push(("SHOAL_PARTITION_INDEX".into(), assign.partition.to_string()));
        env.push((
            "SHOAL_PARTITION_COUNT".into(),
            assign.partition_count.to_string(),
        ));
    }
    let mut argv = vec![spec.program_name.clone()];
    argv.extend(spec.args.iter().cloned());
    let timeout = valid.timeout();
    let memory_limit = valid.memory_bytes();

    ctx.uplink.state(id, ExecutionState::Running).await;
    let forwarding = CancellationToken::new();
    let forwarder = tokio::spawn(forward_logs(
        ctx.uplink.clone(),
        id.to_owned(),
        stdout.clone(),
        stderr.clone(),
        wake,
        forwarding.clone(),
    ));
    // The output quota is watched while the program runs, so a guest filling the disk is
    // stopped early rather than found out afterwards.
    let run_cancel = cancel.child_token();
    let over_quota = tokio::spawn(
        watch_output_quota(
            vec![results_dir.clone(), tmp],
            ctx.config.max_output_bytes,
            run_cancel.clone(),
        )
        .in_current_span(),
    );
    let outcome = ctx
        .runtime
        .run(
            &staged.program,
            RunRequest {
                entrypoint: spec.entrypoint.clone(),
                argv,
                env,
                preopens,
                memory_limit,
                timeout,
                cancel: run_cancel.clone(),
                stdout: stdout.clone(),
                stderr: stderr.clone(),
            },
        )
        .instrument(tracing::info_span!("run"))
        .await;
    run_cancel.cancel(); // ends the quota watcher
    let interrupted = matches!(
        &outcome,
        RunOutcome::Failed(f) if matches!(f.kind(), FailureKind::Timeout | FailureKind::Cancelled)
    );
    let over_quota = over_quota.await.ok().flatten();
    let outcome = match over_quota {
        Some(over) => RunOutcome::Failed(Failure::new(FailureKind::OutputLimit, over)),
        None => outcome,
    };
    forwarding.cancel();
    let _ = forwarder.await;
    tracing::info!(?outcome, "program ended");
    // The inputs' cache pins are released only now that the program is done with them.
    drop(staged);
    Ran {
        outcome,
        stdout,
        stderr,
        interrupted,
    }
}

/// Checks the size of the trees in `dirs` (the results and `/tmp`) a few times a second
/// while the program runs; past `limit`, stops the run and says by how much. Returns None
/// if the run ended within it.
async fn watch_output_quota(
    dirs: Vec<PathBuf>,
    limit: u64,
    run: CancellationToken,
) -> Option<String> {
    // The first look is one period in, not at once: most programs are done by then, and
    // a walk while they run competes with them for the cores.
    let period = Duration::from_millis(200);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = run.cancelled() => return None,
            _ = tick.tick() => {}
        }
        // Logs held in memory (at most IN_MEMORY_MAX per stream) are counted at the end.
        let dirs = dirs.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let mut total = 0u64;
            for dir in &dirs {
                let entries = shoal::content::local_tree::walk(dir, TreeBounds::GUEST)?;
                total += entries.iter().map(|e| e.size).sum::<u64>();
            }
            Ok::<_, shoal::Error>(total)
        })
        .await;
        let over = match walked {
            Ok(Ok(total)) => over_limit(total, limit),
            Ok(Err(shoal::Error::TreeTooLarge(reason))) => {
                Some(format!("the outputs are too large to publish: {reason}"))
            }
            // Unreadable for a moment (the guest is still writing): look again next time.
            _ => None,
        };
        if let Some(over) = over {
            tracing::warn!(%over, "stopping a program over its output quota");
            run.cancel();
            return Some(over);
        }
    }
}

/// Sends captured output upstream as it arrives, until `done`, then sends the rest.
async fn forward_logs(
    uplink: Uplink,
    execution_id: String,
    stdout: Capture,
    stderr: Capture,
    wake: Arc<Notify>,
    done: CancellationToken,
) {
    loop {
        let finished = tokio::select! {
            _ = wake.notified() => false,
            _ = done.cancelled() => true,
        };
        for (capture, stream) in [(&stdout, LogStream::Stdout), (&stderr, LogStream::Stderr)] {
            while let Some(captured) = capture.take() {
                uplink
                    .send(executor_message::Message::Log(ExecutionLog {
                        chunk: Some(LogChunk {
                            execution_id: execution_id.clone(),
                            stream: stream as i32,
                            offset: captured.offset,
                            data: captured.data,
                        }),
                    }))
                    .await;
            }
        }
        if finished {
            return;
        }
    }
}
