//! B10: re-dispatch after an executor is killed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use shoal::proto::{ExecutionState, ListExecutionsRequest};

use crate::stack::{Clients, Stack};
use crate::{Args, Figure, repo_root};

use super::*;

/// B10: an executor running a job is killed (SIGKILL); the time until the job is assigned
/// to the other executor, against the lease.
pub async fn b10(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (lease, heartbeat) = if args.smoke {
        (Duration::from_secs(1), Duration::from_millis(250))
    } else {
        (Duration::from_secs(10), Duration::from_secs(2))
    };
    let lease_arg = format!("{}ms", lease.as_millis());
    let heartbeat_arg = format!("{}ms", heartbeat.as_millis());
    let mut stack = Stack::start(
        &dir,
        &[
            "--lease",
            &lease_arg,
            "--heartbeat-interval",
            &heartbeat_arg,
        ],
    )
    .await?;
    stack.add_executor("e0", &[])?;
    stack.add_executor("e1", &[])?;
    let mut clients = stack.clients().await?;
    clients.wait_executors(2).await?;
    let spin = module_file(
        &dir,
        "spin.wasm",
        &std::fs::read_to_string(repo_root().join("tests/fixtures/spin.wat"))?,
    )?;
    let program = clients.put(&spin).await?;
    let job = clients.submit(&program, &[]).await?;

    let executions = |mut clients: Clients, job: String| async move {
        let answer = clients
            .jobs
            .list_executions(ListExecutionsRequest {
                job_id: job,
                partition: None,
            })
            .await?;
        Ok::<_, anyhow::Error>(answer.into_inner().executions)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let list = executions(clients.clone(), job.clone()).await?;
        if let Some(e) = list.iter().find(|e| e.state() == ExecutionState::Running) {
            break e.executor_id.clone();
        }
        if Instant::now() > deadline {
            bail!("the job never started");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let index: usize = victim.trim_start_matches('e').parse()?;
    stack.executors[index].start_kill()?;
    let killed = Instant::now();
    let redispatched = loop {
        let list = executions(clients.clone(), job.clone()).await?;
        if list
            .iter()
            .any(|e| e.attempt >= 2 && e.executor_id != victim)
        {
            break killed.elapsed();
        }
        if killed.elapsed() > lease * 4 + Duration::from_secs(30) {
            bail!("the job was never re-dispatched");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let bound = lease + heartbeat;
    Ok(vec![Figure {
        id: "B10",
        what: "re-dispatch after an executor is killed",
        unit: "ms",
        measured: ms(redispatched),
        baseline: Some(ms(lease)),
        ratio: Some(ms(redispatched) - ms(lease)),
        ratio_unit: " ms past",
        target: "<= lease + 1 heartbeat",
        meets: Some(redispatched <= bound),
        details: serde_json::json!({
            "lease_ms": ms(lease),
            "heartbeat_ms": ms(heartbeat),
            "baseline": "the lease",
        }),
    }])
}
