//! The orchestrator's store and scheduler, in process: B4 (group commit) and S1 (a
//! scheduling pass over 100,000 queued jobs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shoal::proto::{Capacity, JobSpec, Register};
use shoal::spec::{SpecDefaults, ValidSpec};
use shoal_orchestrator::cluster::{Cluster, ClusterConfig};
use shoal_orchestrator::records::{Snapshot, Write};
use shoal_orchestrator::store::Store;

use crate::{Args, Figure, micros, percentile};

/// B4: durable state transitions per second through the store, from many concurrent
/// writers (jobs being submitted and updated at once) sharing fsyncs by group commit,
/// against one fsync per write.
pub async fn b4(args: &Args, dir: PathBuf, fsync_rate: f64) -> anyhow::Result<Vec<Figure>> {
    let (store, _) = Store::open(&dir.join("state.redb"))?;
    let (rate, mut waits, writers, written) = transitions(args, store).await?;
    let (reopened, snapshot) = Store::open(&dir.join("state.redb"))?;
    read_back("B4", &snapshot, &written)?;
    reopened.close().await;
    let ratio = rate / fsync_rate;
    let mut figures = vec![Figure {
        id: "B4",
        what: "durable state transitions/s (group commit)",
        unit: "/s",
        measured: rate,
        baseline: Some(fsync_rate),
        ratio: Some(ratio),
        ratio_unit: "x",
        target: ">= 20x the raw fsync rate",
        meets: Some(ratio >= 20.0),
        details: serde_json::json!({
            "writers": writers,
            "commit_wait_p50_us": micros(percentile(&mut waits, 0.5)),
            "commit_wait_p99_us": micros(percentile(&mut waits, 0.99)),
            "baseline": "write+fsync of a small record, in a loop",
        }),
    }];

    // The same through the PostgreSQL store, as a leader writes (the epoch checked in
    // every transaction).
    use shoal_orchestrator::store::postgres::{Leadership, Postgres, connect::Database};
    let url = crate::postgres_database("b4").await?;
    let database = Database::new(&url, None)?;
    Postgres::migrate(&database).await?;
    let no_one = tokio::sync::watch::channel(None).0;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let leadership = Leadership::acquire(&database, "b4", "", &no_one, &shutdown)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no leadership"))?;
    let (store, _) = Store::postgres(&database, &leadership).await?;
    let (pg_rate, mut pg_waits, _, written) = transitions(args, store).await?;
    let (reopened, snapshot) = Store::postgres(&database, &leadership).await?;
    read_back("B4/pg", &snapshot, &written)?;
    reopened.close().await;
    figures.push(Figure {
        id: "B4/pg",
        what: "B4 on the PostgreSQL store (local server), beside the embedded store's",
        unit: "/s",
        measured: pg_rate,
        baseline: Some(rate),
        ratio: Some(pg_rate / rate * 100.0),
        ratio_unit: "% of embedded",
        target: "(beside the embedded store)",
        meets: None,
        details: serde_json::json!({
            "writers": writers,
            "commit_wait_p50_us": micros(percentile(&mut pg_waits, 0.5)),
            "commit_wait_p99_us": micros(percentile(&mut pg_waits, 0.99)),
            "raw_fsync_per_s": fsync_rate,
            "baseline": "B4 on the embedded store in the same run",
        }),
    });
    Ok(figures)
}

/// Many concurrent writers each storing jobs one at a time, waiting for each commit: the
/// rate, every wait, how many writers, and (the store closed once they are done) the ids
/// of the jobs written, to be read back.
async fn transitions(
    args: &Args,
    store: Store,
) -> anyhow::Result<(f64, Vec<Duration>, usize, std::collections::HashSet<String>)> {
    let (writers, per_writer) = if args.smoke { (8, 10) } else { (1024, 40) };
    let store = Arc::new(store);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let store = store.clone();
        tasks.spawn(async move {
            let mut waits = Vec::with_capacity(per_writer);
            let mut ids = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                // Real job ids: UUIDv7, time-ordered, so inserts land at the B-tree's
                // right edge as the orchestrator's do.
                let job = shoal::proto::Job {
                    id: shoal::ids::JobId::new().to_string(),
                    state: shoal::proto::JobState::Queued as i32,
                    spec: Some(bench_spec().into_spec()),
                    ..Default::default()
                };
                let t = Instant::now();
                let id = job.id.clone();
                store.queue(vec![Write::Job(job)]).await?.wait().await?;
                waits.push(t.elapsed());
                ids.push(id);
            }
            Ok::<_, shoal_orchestrator::error::Error>((waits, ids))
        });
    }
    let mut waits = Vec::new();
    let mut written = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let (more, ids) = done??;
        waits.extend(more);
        written.extend(ids);
    }
    let rate = (writers * per_writer) as f64 / started.elapsed().as_secs_f64();
    let store =
        Arc::into_inner(store).ok_or_else(|| anyhow::anyhow!("the store is still shared"))?;
    store.close().await;
    anyhow::ensure!(
        written.len() == writers * per_writer,
        "{} distinct jobs written, not {}",
        written.len(),
        writers * per_writer
    );
    Ok((rate, waits, writers, written))
}

/// Fails unless `snapshot`, read back from the store, holds every job in `written`.
fn read_back(
    what: &str,
    snapshot: &Snapshot,
    written: &std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let stored: std::collections::HashSet<&str> =
        snapshot.jobs.iter().map(|j| j.id.as_str()).collect();
    let missing = written
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .count();
    anyhow::ensure!(
        missing == 0,
        "{what}: {missing} of {} acknowledged jobs are not in the store read back",
        written.len()
    );
    Ok(())
}

/// What the benchmarks submit, checked and completed as the orchestrator stores it.
fn bench_spec() -> ValidSpec {
    let mut spec = JobSpec {
        program: "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4".into(),
        program_name: "main.wasm".into(),
        args: vec!["input.csv".into()],
        ..Default::default()
    };
    spec.env.insert("MODE".into(), "bench".into());
    let defaults = SpecDefaults {
        timeout: Duration::from_secs(3600),
        queue_timeout: Duration::from_secs(24 * 3600),
    };
    ValidSpec::accept(spec, defaults).expect("the benchmark's spec is valid")
}

/// S1: scheduling with 100,000 queued jobs and two connected executors whose slots are all
/// taken (the state of a deep queue): the pass after each change (a completion, a
/// submission) against the full pass of every sweep tick; and the cost of queueing a job.
/// The executions `effects` assign, batches counted by what they hold.
fn assignments(effects: &shoal_orchestrator::cluster::Effects) -> usize {
    use shoal::proto::orchestrator_message::Message;
    effects
        .messages
        .iter()
        .map(|(_, m)| match &m.message {
            Some(Message::Assign(_)) => 1,
            Some(Message::AssignBatch(batch)) => batch.clone().into_assignments().len(),
            _ => 0,
        })
        .sum()
}

pub async fn s1(args: &Args, _dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let queued = if args.smoke { 1_000 } else { 100_000 };
    let mut cluster = Cluster::restore(
        Snapshot::default(),
        ClusterConfig {
            max_queued: queued + 1,
            ..Default::default()
        },
        Instant::now(),
    );
    for id in ["executor-a", "executor-b"] {
        cluster.register(
            Register {
                executor_id: id.into(),
                protocol_version: 1,
                capacity: Some(Capacity {
                    slots: 16,
                    memory_bytes: 8 << 30,
                }),
                ..Default::default()
            },
            SystemTime::now(),
            Instant::now(),
        )?;
    }
    let now = SystemTime::now();
    let started = Instant::now();
    for _ in 0..queued {
        cluster.submit(bench_spec(), Default::default(), now)?;
    }
    let submit_each = started.elapsed() / queued as u32;
    // The first pass fills every slot and records why the rest wait; later passes are
    // what a deep queue costs on every completion or heartbeat sweep.
    cluster.schedule(now);
    // What was measured must have happened: every slot of the two executors filled, and
    // nothing more placed by the passes timed below (the fleet stays full).
    let placed = assignments(&cluster.take_effects());
    anyhow::ensure!(
        placed == 32,
        "the first pass placed {placed} executions, not one per slot (32)"
    );
    let mut full = Vec::new();
    let mut placements = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        cluster.schedule(SystemTime::now());
        full.push(started.elapsed());
        let more = assignments(&cluster.take_effects());
        let started = Instant::now();
        cluster.schedule_placements(SystemTime::now());
        placements.push(started.elapsed());
        let more = more + assignments(&cluster.take_effects());
        anyhow::ensure!(
            more == 0,
            "a pass over a full fleet placed {more} executions"
        );
    }
    let pass = percentile(&mut placements, 0.5);
    let full = percentile(&mut full, 0.5);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![Figure {
        id: "S1",
        what: "scheduling after a change, 100k queued, fleet full (p50)",
        unit: "us",
        measured: micros(pass),
        baseline: Some(micros(full)),
        ratio: Some(full.as_secs_f64() / pass.as_secs_f64().max(1e-9)),
        ratio_unit: "x cheaper",
        target: "(scale report)",
        meets: None,
        details: serde_json::json!({
            "queued": queued,
            "full_pass_ms": ms(full),
            "full_pass_per_queued_job_ns": full.as_nanos() as f64 / queued as f64,
            "baseline": "the full pass (reasons and queue timeouts), run every sweep tick",
            "submit_transition_us": micros(submit_each),
        }),
    }])
}
