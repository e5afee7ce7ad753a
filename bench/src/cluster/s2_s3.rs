//! S2 and S3: memory per queued job, and a restart with 100,000 jobs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::stack::Stack;
use crate::{Args, Figure, repo_root};

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
    let empty_restart = stack.restart_orchestrator().await?;
    let clients = stack.clients().await?;
    // S2' first, on the fresh heap (after 100,000 jobs the allocator has room to spare and
    // RSS would not move): queued partitions, ten jobs of 10,000.
    let (rss_fresh, _) = stack.orchestrator_usage()?;
    let (fanned_jobs, per_job_partitions): (u32, u32) =
        if args.smoke { (1, 1_000) } else { (10, 10_000) };
    for _ in 0..fanned_jobs {
        clients
            .clone()
            .submit_partitions(&program, &["queued"], per_job_partitions)
            .await?;
    }
    let (rss_before, _) = stack.orchestrator_usage()?;
    let partitions = fanned_jobs * per_job_partitions;
    let per_partition = rss_before.saturating_sub(rss_fresh) as f64 / f64::from(partitions);

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
    let full_restart = stack.restart_orchestrator().await?;
    // The restart measured must have brought every job back, each still queued.
    let expected = jobs + fanned_jobs as usize;
    let (listed, queued) = stack
        .clients()
        .await?
        .count_jobs(shoal::proto::JobState::Queued)
        .await?;
    anyhow::ensure!(
        listed == expected && queued == expected,
        "after the restart {listed} jobs are listed and {queued} queued, not {expected}"
    );
    anyhow::ensure!(
        rss_after > rss_before,
        "memory did not grow as {jobs} jobs were queued (RSS {rss_before} -> {rss_after})"
    );
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
            id: "S2'",
            what: "orchestrator memory per queued partition (10 jobs of 10k)",
            unit: "bytes",
            measured: per_partition,
            baseline: Some(per_job),
            ratio: Some(per_partition / per_job.max(1.0) * 100.0),
            ratio_unit: "% of S2",
            target: "(scale report)",
            meets: None,
            details: serde_json::json!({
                "partitions": partitions,
                "jobs": fanned_jobs,
                "rss_before_bytes": rss_fresh,
                "rss_after_bytes": rss_before,
                "baseline": "S2: bytes per queued job",
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
