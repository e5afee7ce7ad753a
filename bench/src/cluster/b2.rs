//! B2: durable job throughput through the whole system; B2', the same as one job of many
//! partitions; B2'', partitions over a sharded directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal::proto::JobState;

use crate::{Args, Figure, micros};

use super::*;

/// B2: jobs submitted by many concurrent clients, each waiting for its job's end, through
/// an orchestrator and two executors; against the in-process runtime loop (B1's), the
/// upper bound for any end-to-end path.
pub async fn b2(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (stack, clients, hello) = hello_stack(args, &dir, 2, 32).await?;
    let upper_bound =
        crate::runtime::hello_loop_rate(&dir.join("loop"), jobs(args).min(2000)).await?;
    let (rate, details) = throughput(args, &stack, &clients, &hello).await?;
    // B2': one job of many partitions of a program that does nothing, on the same stack:
    // what a task costs Shoal itself.
    let partitions: u32 = if args.smoke { 200 } else { 10_000 };
    let mut client = clients.clone();
    let noop = module_file(
        &dir,
        "noop.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
    )?;
    let noop = client.put(&noop).await?;
    let cpu_fanned = stack.cpu_times()?;
    let started = Instant::now();
    let job = client.submit_partitions(&noop, &[], partitions).await?;
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
        what: "fan-out throughput, one job of N noop partitions, submit -> completed",
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
    let files = if args.smoke { 10 } else { 100 };
    let sharded = over_shards(&mut client, &hello, &dir, files).await?;
    let mut figures = vec![
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
                "baseline": "B1's in-process runtime loop, jobs/s (one core)",
                "run": details,
            }),
        },
        fanned,
        sharded,
    ];
    drop(stack);
    // The same on the PostgreSQL store, its stack alone on the machine.
    let url = crate::postgres_database("b2").await?;
    let store = ["--store", url.as_str()];
    let (stack, clients, hello) = hello_stack_on(args, &dir.join("pg"), 2, 32, &store).await?;
    let (pg_rate, pg_details) = throughput(args, &stack, &clients, &hello).await?;
    figures.push(Figure {
        id: "B2/pg",
        what: "B2 on the PostgreSQL store (local server), beside the embedded store's",
        unit: "jobs/s",
        measured: pg_rate,
        baseline: Some(rate),
        ratio: Some(pg_rate / rate * 100.0),
        ratio_unit: "% of embedded",
        target: ">= 50% of the embedded store's",
        meets: Some(pg_rate >= rate * 0.5),
        details: serde_json::json!({
            "baseline": "B2 on the embedded store in the same run, jobs/s",
            "run": pg_details,
        }),
    });
    Ok(figures)
}

/// How many jobs B2 runs.
fn jobs(args: &Args) -> usize {
    if args.smoke { 40 } else { 5000 }
}

/// B2's load on `stack`: jobs submitted by many concurrent clients, each waiting for its
/// job's end. Its rate, and where the time went.
async fn throughput(
    args: &Args,
    stack: &Stack,
    clients: &Clients,
    hello: &str,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let jobs = jobs(args);
    let clients_count = if args.smoke { 8 } else { 256 };
    let cpu_before = stack.cpu_times()?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients_count {
        let mut clients = clients.clone();
        let hello = hello.to_owned();
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
    Ok((
        rate,
        serde_json::json!({
            "jobs": jobs,
            "concurrent_clients": clients_count,
            "executors": 2,
            "slots_per_executor": 32,
            "orchestrator_cpu_us_per_job": per_job_us(cpu_before.0, cpu_after.0),
            "executors_cpu_us_per_job": per_job_us(cpu_before.1, cpu_after.1),
            "wall_s": wall.as_secs_f64(),
        }),
    ))
}

/// B2'': a job over a directory of `files` files with `--shard` (one file per partition),
/// beside the same count of partitions without inputs, in the same stack: what staging a
/// shard costs, with each partition's staging time (SCHEDULED to RUNNING) from its
/// execution.
async fn over_shards(
    client: &mut crate::stack::Clients,
    hello: &str,
    dir: &std::path::Path,
    files: u32,
) -> anyhow::Result<Figure> {
    let data = dir.join("shards");
    std::fs::create_dir_all(&data)?;
    for i in 0..files {
        std::fs::write(
            data.join(format!("f{i:04}.txt")),
            format!("file {i}\n").repeat(64),
        )?;
    }
    let root = client.put(&data).await?;
    let plain = shoal::proto::JobSpec {
        program: hello.to_owned(),
        program_name: "main.wasm".into(),
        partitions: files,
        ..Default::default()
    };
    let mut spec = plain.clone();
    spec.partitions = 0;
    spec.inputs.push(shoal::proto::InputSpec {
        source: root,
        target: "/inputs".into(),
        shard: true,
        ..Default::default()
    });
    let (baseline, mut plain_staging) = timed_partitions(client, plain, files).await?;
    let (rate, mut staging) = timed_partitions(client, spec, files).await?;
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    Ok(Figure {
        id: "B2''",
        what: "fan-out over a sharded CID directory, one file per partition",
        unit: "tasks/s",
        measured: rate,
        baseline: Some(baseline),
        ratio: Some(rate / baseline),
        ratio_unit: "x no inputs",
        target: "(scale report)",
        meets: None,
        details: serde_json::json!({
            "partitions": files,
            "staging_p50_us": median(&mut staging),
            "staging_p50_us_without_inputs": median(&mut plain_staging),
            "baseline": "the same partitions with no input, same stack, tasks/s",
        }),
    })
}

/// Runs a partitioned job to its end: its partitions per second, and each partition's
/// staging time (its execution's SCHEDULED to RUNNING) in microseconds.
async fn timed_partitions(
    client: &mut crate::stack::Clients,
    spec: shoal::proto::JobSpec,
    partitions: u32,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let started = Instant::now();
    let job = client.submit_spec(spec).await?;
    let (state, ..) = client.watch(&job, true).await?;
    anyhow::ensure!(state == JobState::Completed, "the job ended {state:?}");
    let wall = started.elapsed().as_secs_f64();
    let executions = client
        .jobs
        .list_executions(shoal::proto::ListExecutionsRequest {
            job_id: job,
            partition: None,
        })
        .await?
        .into_inner()
        .executions;
    let staging = executions
        .iter()
        .filter_map(|e| {
            let from = std::time::SystemTime::try_from(e.created_at?).ok()?;
            let to = std::time::SystemTime::try_from(e.started_at?).ok()?;
            Some(micros(to.duration_since(from).ok()?))
        })
        .collect();
    Ok((f64::from(partitions) / wall, staging))
}
