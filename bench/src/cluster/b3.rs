//! B3: one job's latency, submit to terminal event.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal::proto::{GetJobRequest, JobState};

use crate::{Args, Figure, micros, percentile};

use super::*;

/// B3: one job at a time, submit -> terminal event at the client; against a trivial RPC's
/// round trip plus two fsyncs (the least any durable submit-and-complete can cost).
pub async fn b3(args: &Args, dir: PathBuf, fsync_p50_us: f64) -> anyhow::Result<Vec<Figure>> {
    let jobs = if args.smoke { 5 } else { 500 };
    let (stack, mut clients, hello) = hello_stack(args, &dir, 2, 4).await?;
    let (mut latencies, stages, last_job) = one_at_a_time(&mut clients, &hello, jobs).await?;
    let mut round_trips = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let started = Instant::now();
        clients
            .jobs
            .get_job(GetJobRequest {
                job_id: last_job.clone(),
            })
            .await?;
        round_trips.push(started.elapsed());
    }
    let p50 = micros(percentile(&mut latencies, 0.5));
    let p99 = micros(percentile(&mut latencies, 0.99));
    let round_trip = micros(percentile(&mut round_trips, 0.5));
    let baseline = round_trip + 2.0 * fsync_p50_us;
    let budget_p50 = 1000.0 + 2.0 * fsync_p50_us;
    let budget_p99 = 5000.0 + 2.0 * fsync_p50_us;
    let mut figures = vec![Figure {
        id: "B3",
        what: "submit -> result latency at low load, p50",
        unit: "us",
        measured: p50,
        baseline: Some(baseline),
        ratio: Some(p50 / baseline),
        ratio_unit: "x floor",
        target: "p50 <= 1 ms + 2 fsync; p99 <= 5 ms + 2 fsync",
        meets: Some(p50 <= budget_p50 && p99 <= budget_p99),
        details: serde_json::json!({
            "jobs": jobs,
            "p99_us": p99,
            "budget_p50_us": budget_p50,
            "budget_p99_us": budget_p99,
            "rpc_round_trip_us": round_trip,
            "fsync_p50_us": fsync_p50_us,
            "baseline": "GetJob round trip + 2 fsync",
            "state_reached_after_submit_p50_us": stages,
        }),
    }];
    drop(stack);
    // The same on the PostgreSQL store.
    let url = crate::postgres_database("b3").await?;
    let store = ["--store", url.as_str()];
    let (_stack, mut clients, hello) = hello_stack_on(args, &dir.join("pg"), 2, 4, &store).await?;
    let (mut pg, pg_stages, _) = one_at_a_time(&mut clients, &hello, jobs).await?;
    let pg_p50 = micros(percentile(&mut pg, 0.5));
    figures.push(Figure {
        id: "B3/pg",
        what: "B3 on the PostgreSQL store (local server), beside the embedded store's, p50",
        unit: "us",
        measured: pg_p50,
        baseline: Some(p50),
        ratio: Some(pg_p50 / p50),
        ratio_unit: "x embedded",
        target: "(beside the embedded store)",
        meets: None,
        details: serde_json::json!({
            "jobs": jobs,
            "p99_us": micros(percentile(&mut pg, 0.99)),
            "baseline": "B3 on the embedded store in the same run, p50",
            "state_reached_after_submit_p50_us": pg_stages,
        }),
    });
    Ok(figures)
}

/// Runs `jobs` jobs of `hello` one after another, each from submit to its terminal event:
/// their latencies, when (after the submit) each state was reached (p50), and the last
/// job's id.
async fn one_at_a_time(
    clients: &mut Clients,
    hello: &str,
    jobs: usize,
) -> anyhow::Result<(
    Vec<Duration>,
    serde_json::Map<String, serde_json::Value>,
    String,
)> {
    let mut latencies = Vec::with_capacity(jobs);
    // When, after the submit call started, the orchestrator recorded each state.
    let mut stages: std::collections::BTreeMap<&'static str, Vec<Duration>> = Default::default();
    let mut last_job = String::new();
    for _ in 0..jobs {
        let started = Instant::now();
        let submitted_at = std::time::SystemTime::now();
        let job = clients.submit(hello, &["bench"]).await?;
        let states = clients.watch_states(&job).await?;
        latencies.push(started.elapsed());
        let state = states.last().map(|(state, _)| *state);
        anyhow::ensure!(state == Some(JobState::Completed), "job ended {state:?}");
        for (state, time) in states {
            let after = time.duration_since(submitted_at).unwrap_or_default();
            stages.entry(state.as_str_name()).or_default().push(after);
        }
        last_job = job;
    }
    let stages = stages
        .into_iter()
        .map(|(state, mut times)| (state.to_owned(), micros(percentile(&mut times, 0.5)).into()))
        .collect();
    Ok((latencies, stages, last_job))
}
