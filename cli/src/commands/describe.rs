//! `shoal job describe ID` for people: the job's state and what it ran, its attempts and
//! where they ran, times and sizes in units. `--output json|yaml` prints the protobuf shape
//! instead.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use shoal::proto::{Execution, Job};
use shoal::spec::units::{format_duration, format_size};

use crate::output::time;

/// The job and its executions as aligned `Field: value` lines.
pub fn describe(job: &Job, executions: &[Execution]) -> String {
    let mut out = String::new();
    let mut line = |field: &str, value: &str| {
        let _ = writeln!(out, "{:<12}{value}", format!("{field}:"));
    };
    line("ID", &job.id);
    let spec = job.spec.clone().unwrap_or_default();
    if !spec.name.is_empty() {
        line("Name", &spec.name);
    }
    line("State", job.state().short_name());
    if let Some(failure) = &job.failure {
        line("Failure", &failure.to_string());
    }
    if !job.status_message.is_empty() && !job.state().is_terminal() {
        line("Waiting", &job.status_message);
    }
    let program = if spec.program_name.is_empty() {
        spec.program.clone()
    } else {
        format!("{} ({})", spec.program_name, spec.program)
    };
    line("Program", &program);
    if let Some(counts) = &job.partitions {
        let mut text = format!(
            "{} ({} completed, {} running, {} queued, {} failed, {} cancelled)",
            spec.partitions,
            counts.completed,
            counts.running,
            counts.queued,
            counts.failed,
            counts.cancelled
        );
        if spec.max_parallel > 0 {
            let _ = write!(text, "; at most {} at once", spec.max_parallel);
        }
        line("Partitions", &text);
    }
    if !spec.args.is_empty() {
        line("Args", &spec.args.join(" "));
    }
    for input in &spec.inputs {
        let source = if input.sources.is_empty() {
            input.source.clone()
        } else {
            format!("a list of {} sources", input.sources.len())
        };
        let mut text = format!("{source} -> {}", input.target);
        if input.shard {
            let _ = write!(
                text,
                " (sharded: {} entries, {} per partition)",
                job.shard_entries,
                spec.shard_size.max(1)
            );
        }
        line("Input", &text);
    }
    for output in &spec.outputs {
        line("Output", &format!("{} at {}", output.name, output.path));
    }
    if !spec.labels.is_empty() {
        let mut labels: Vec<_> = spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        line("Labels", &labels.join(", "));
    }
    line("Created", &time(&job.created_at));
    let current = executions.iter().find(|e| e.id == job.execution_id);
    if let Some(execution) = current {
        line("Executor", &execution.executor_id);
        line("Started", &time(&execution.started_at));
        if execution.finished_at.is_some() {
            line("Ended", &time(&execution.finished_at));
        }
        if let Some(took) = between(&execution.started_at, &execution.finished_at) {
            line("Duration", &format_duration(took));
        }
    }
    if job.partitions.is_some() {
        // Attempts are per partition; the job's own count stays 0.
        line("Executions", &executions.len().to_string());
    } else {
        line("Attempts", &job.attempts.to_string());
    }
    let result = job
        .result
        .as_ref()
        .or(current.and_then(|e| e.result.as_ref()));
    if let Some(result) = result {
        line("Exit code", &result.exit_code.to_string());
        for (stream, bytes, truncated) in [
            ("Stdout", result.stdout_bytes, result.stdout_truncated),
            ("Stderr", result.stderr_bytes, result.stderr_truncated),
        ] {
            let cut = if truncated { " (truncated)" } else { "" };
            line(stream, &format!("{}{cut}", format_size(bytes)));
        }
        if !result.published_to.is_empty() {
            line("Results", &result.published_to);
        } else if !result.result_cid.is_empty() {
            line("Results", &result.result_cid);
        }
    }
    if job.partitions.is_some() {
        let failed = failed_partitions(executions);
        if !failed.is_empty() {
            let _ = writeln!(out, "Failed partitions:");
            for failure in failed {
                let _ = writeln!(out, "  {failure}");
            }
        }
    } else if executions.len() > 1 {
        let _ = writeln!(out, "Executions:");
        for execution in executions {
            let ended = execution
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} on {}: {} {ended}",
                execution.attempt,
                execution.executor_id,
                execution.state().short_name()
            );
        }
    }
    out
}

/// Most failed partitions listed one by one.
const SHOWN_FAILURES: usize = 20;

/// A line for each partition whose last attempt failed with a failure the policy does not
/// retry (so for good), lowest first and at most 20, then one saying
/// how many more there are.
pub fn failed_partitions(executions: &[Execution]) -> Vec<String> {
    let mut latest: std::collections::BTreeMap<u32, &Execution> = Default::default();
    for execution in executions {
        let slot = latest.entry(execution.partition).or_insert(execution);
        if execution.attempt > slot.attempt {
            *slot = execution;
        }
    }
    let failed: Vec<&Execution> = latest
        .into_values()
        .filter(|e| {
            let ended = matches!(
                e.state(),
                shoal::proto::ExecutionState::Failed | shoal::proto::ExecutionState::TimedOut
            );
            // A failure the policy retries is not the partition's end (its next attempt
            // has no record until it is placed).
            ended && !e.failure.as_ref().is_some_and(|f| f.retryable)
        })
        .collect();
    let mut lines: Vec<String> = failed
        .iter()
        .take(SHOWN_FAILURES)
        .map(|execution| {
            let how = execution
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "partition {} (attempt {} on {}): {how}",
                execution.partition, execution.attempt, execution.executor_id
            )
        })
        .collect();
    if failed.len() > SHOWN_FAILURES {
        lines.push(format!(
            "... and {} more (shoal job executions ID --output json)",
            failed.len() - SHOWN_FAILURES
        ));
    }
    lines
}

/// How long from `start` to `end`, when both are set.
fn between(
    start: &Option<prost_types::Timestamp>,
    end: &Option<prost_types::Timestamp>,
) -> Option<Duration> {
    let start = SystemTime::try_from((*start)?).ok()?;
    let end = SystemTime::try_from((*end)?).ok()?;
    let took = end.duration_since(start).ok()?;
    // Milliseconds are what a person reads; humantime would print every nanosecond.
    Some(Duration::from_millis(took.as_millis() as u64))
}
