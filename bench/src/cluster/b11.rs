//! B11: failover between orchestrator replicas on PostgreSQL. Two orchestrators share a
//! database (one leads, one stands by); the leader is killed with SIGKILL and a client
//! that knows both addresses submits until the new leader acknowledges a job. Measured:
//! kill -> first acknowledged submit, over several rounds (the killed one comes back as
//! the next standby). Beside it, the leader lock's own timing: how often a standby tries
//! the lock, the floor of a takeover after a leader dies.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal::net::auth::{AuthChannel, ClientSecurity};
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::{JobSpec, SubmitJobRequest};
use shoal_harness::Replica;

use crate::{Args, Figure, percentile};

/// A client of whichever of `addresses` leads.
fn client(addresses: &[&str]) -> anyhow::Result<JobServiceClient<AuthChannel>> {
    let replicas = ClientSecurity::default().replicas(&addresses.join(","), |endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
    })?;
    Ok(JobServiceClient::new(AuthChannel::new(
        replicas,
        ClientSecurity::default().bearer()?,
    )))
}

pub async fn b11(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let rounds = if args.smoke { 1 } else { 7 };
    let url = crate::postgres_database("b11").await?;
    let mut leader = Replica::start(&dir.join("r0"), &["--store", &url]).await?;
    leader.leads().await?;
    let mut standby = Replica::start(&dir.join("r1"), &["--store", &url]).await?;
    let program = {
        let mut clients = crate::stack::Clients::connect(&leader.address).await?;
        clients
            .put(&crate::repo_root().join("examples/hello/hello.wasm"))
            .await?
    };
    let spec = JobSpec {
        program,
        program_name: "hello.wasm".into(),
        // No executor runs it: the acknowledgement is what is measured.
        constraints: vec!["bench=none".into()],
        ..Default::default()
    };
    let mut takeovers = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut jobs = client(&[&leader.address, &standby.address])?;
        let submit = SubmitJobRequest {
            spec: Some(spec.clone()),
            idempotency_key: String::new(),
            stored_cids: Vec::new(),
        };
        jobs.submit_job(submit.clone()).await?;
        let killed = Instant::now();
        leader.child.kill().await?;
        // Submits until one is acknowledged; each failure moves the client on.
        let deadline = killed + Duration::from_secs(60);
        loop {
            match jobs.submit_job(submit.clone()).await {
                Ok(_) => break,
                Err(status) if Instant::now() > deadline => {
                    anyhow::bail!("no submit acknowledged within 60 s of the kill: {status}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        takeovers.push(killed.elapsed());
        // The killed one comes back as the next standby.
        let next = Replica::start(&dir.join(format!("r{}", round + 2)), &["--store", &url]).await?;
        leader = std::mem::replace(&mut standby, next);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let worst = takeovers.iter().max().copied().unwrap_or_default();
    let p50 = percentile(&mut takeovers, 0.5);
    let floor = shoal_orchestrator::store::postgres::leader::CHECK_EVERY;
    Ok(vec![Figure {
        id: "B11",
        what: "failover: kill -9 of the leader -> first acknowledged submit on the new one, p50",
        unit: "ms",
        measured: ms(p50),
        baseline: Some(ms(floor)),
        ratio: Some(p50.as_secs_f64() / floor.as_secs_f64()),
        ratio_unit: "x the lock retry period",
        target: "<= 5 s",
        meets: Some(worst <= Duration::from_secs(5)),
        details: serde_json::json!({
            "rounds": rounds,
            "worst_ms": ms(worst),
            "lock_retry_ms": ms(floor),
            "leader_silent_step_down_ms": ms(floor + shoal_orchestrator::store::postgres::leader::ANSWER_WITHIN),
            "lock_freed_after_silence_ms": ms(shoal_orchestrator::store::postgres::leader::IDLE_SESSION_TIMEOUT),
            "baseline": "how often a standby tries the leader lock",
        }),
    }])
}
