//! B9: thousands of simulated executors on one orchestrator.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::{Capacity, ExecutorMessage, Heartbeat, Register, executor_message};

use crate::stack::Stack;
use crate::{Args, Figure};

/// One simulated executor: registers with `slots` slots and sends heartbeats at the
/// interval the orchestrator asks for, until `stop`.
async fn simulated_executor(
    address: String,
    id: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(address)?
        .connect()
        .await?;
    let mut client = ExecutorServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let message = |m| ExecutorMessage {
        message: Some(m),
        sequence: 0,
    };
    tx.send(message(executor_message::Message::Register(Register {
        executor_id: id,
        protocol_version: 1,
        capacity: Some(Capacity {
            slots: 4,
            memory_bytes: 8 << 30,
        }),
        version: "bench".into(),
        ..Default::default()
    })))
    .await?;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let registered = match inbound.message().await?.and_then(|m| m.message) {
        Some(shoal::proto::orchestrator_message::Message::Registered(r)) => r,
        other => bail!("expected Registered, got {other:?}"),
    };
    let interval = registered
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(2));
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                tx.send(message(executor_message::Message::Heartbeat(Heartbeat::default()))).await?;
            }
            next = inbound.message() => if next?.is_none() { bail!("the orchestrator ended the stream") },
        }
    }
}

/// The orchestrator's CPU use (percent of one core) over `window`, from its threads' run
/// times (the smoke run's short window is below the 10 ms ticks of `/proc/PID/stat`).
async fn cpu_percent(stack: &Stack, window: Duration) -> anyhow::Result<f64> {
    let before = stack.orchestrator_thread_time()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = stack.orchestrator_thread_time()?;
    Ok(after.since(&before).as_secs_f64() / started.elapsed().as_secs_f64() * 100.0)
}

/// B9: thousands of simulated executors, each on its own connection with a Connect stream
/// and heartbeats, on one orchestrator; its CPU use against the same with one executor.
pub async fn b9(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (count, window) = if args.smoke {
        (50, Duration::from_secs(2))
    } else {
        (5000, Duration::from_secs(20))
    };
    let stack = Stack::start(&dir, &[]).await?;
    let mut clients = stack.clients().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<_>, i: usize| {
        tasks.spawn(simulated_executor(
            stack.address.clone(),
            format!("sim-{i:05}"),
            stop.clone(),
        ));
    };
    spawn(&mut tasks, 0);
    clients.wait_executors(1).await?;
    let one = cpu_percent(&stack, window).await?;
    let started = Instant::now();
    for i in 1..count {
        spawn(&mut tasks, i);
        if i % 100 == 0 {
            // Connect in waves, as a fleet coming up would, not in one burst of SYNs.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    clients.wait_executors(count).await?;
    let connect_time = started.elapsed();
    let many = cpu_percent(&stack, window).await?;
    let (rss, _) = stack.orchestrator_usage()?;
    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        done?.context("a simulated executor failed")?;
    }
    Ok(vec![Figure {
        id: "B9",
        what: "orchestrator CPU with 5,000 connected executors",
        unit: "% core",
        measured: many,
        baseline: Some(one),
        ratio: Some(many - one),
        ratio_unit: " pts more",
        target: "5,000 streams at < 50% of a core",
        meets: Some(count >= 5000 && many < 50.0),
        details: serde_json::json!({
            "executors": count,
            "heartbeat_interval_s": 2,
            "window_s": window.as_secs_f64(),
            "all_connected_after_s": connect_time.as_secs_f64(),
            "orchestrator_rss_bytes": rss,
            "baseline": "the same orchestrator with one executor",
        }),
    }])
}
