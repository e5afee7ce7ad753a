//! B2: durable job throughput through the whole system.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal::proto::JobState;

use crate::{Args, Figure, micros};

use super::*;

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

    // B2': the same work as one job of that many partitions, on the same stack.
    let partitions: u32 = if args.smoke { 200 } else { 10_000 };
    let mut client = clients.clone();
    let cpu_fanned = stack.cpu_times()?;
    let started = Instant::now();
    let job = client
        .submit_partitions(&hello, &["bench"], partitions)
        .await?;
    let (state, ..) = client.watch(&job, true).await?;
    anyhow::ensure!(
        state == JobState::Completed,
        "the {partitions}-partition job ended {state:?}"
    );
    let fanned_wall = started.elapsed();
    let fanned_rate = f64::from(partitions) / fanned_wall.as_secs_f64();
    let cpu_fanned_after = stack.cpu_times()?;
    let per_task_us =
        |before: Duration, after: Duration| micros(after - before) / f64::from(partitions);
    let fanned = Figure {
        id: "B2'",
        what: "fan-out throughput, one job of N partitions, submit -> completed",
        unit: "tasks/s",
        measured: fanned_rate,
        baseline: Some(rate),
        ratio: Some(fanned_rate / rate),
        ratio_unit: "x B2",
        target: ">= 20,000 tasks/s",
        meets: Some(fanned_rate >= 20_000.0),
        details: serde_json::json!({
            "partitions": partitions,
            "executors": 2,
            "slots_per_executor": 32,
            "orchestrator_cpu_us_per_task": per_task_us(cpu_fanned.0, cpu_fanned_after.0),
            "executors_cpu_us_per_task": per_task_us(cpu_fanned.1, cpu_fanned_after.1),
            "wall_s": fanned_wall.as_secs_f64(),
            "runtime_bound_jobs_per_s": upper_bound,
            "baseline": "B2 in the same run: one job per task, jobs/s",
        }),
    };
    Ok(vec![
        Figure {
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
        },
        fanned,
    ])
}
