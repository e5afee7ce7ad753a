//! The executor's side of `ExecutorService.Connect`: dial, register, heartbeat, take
//! assignments and cancellations, forward execution reports, and when the stream breaks,
//! dial again with capped exponential backoff and jitter, forever. Losing the orchestrator
//! is deliberately not fatal: running executions go on, and their reports are resent.

use std::sync::Arc;
use std::time::Duration;

use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::{
    Assign, Capacity, ExecutionFinished, ExecutorMessage, Failure, FailureKind, Feature, Features,
    Heartbeat, ProtocolVersion, Register, ReportBatch, executor_message, orchestrator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use shoal::net::retry::Backoff;

use crate::context::ExecutionContext;
use crate::error::{Error, Result};
use crate::execution::{UsedScratch, execute};
use crate::metrics::Metrics;
use crate::reports::{
    self, SharedExecutions, Unacknowledged, lock, recent_reports, running_ids, settled,
};

/// Most reports taken off the uplink at once, and most bytes of them in one `ReportBatch`
/// (log chunks are up to 1 MiB; the orchestrator takes messages up to 16 MiB).
const MAX_REPORTS_PER_MESSAGE: usize = 128;
const REPORT_BATCH_BYTES: usize = 4 << 20;

/// Everything the connection loop works with.
pub struct Connection {
    pub context: Arc<ExecutionContext>,
    pub executions: SharedExecutions,
    pub tasks: TaskTracker,
    pub channel: shoal::net::auth::AuthChannel,
    /// Set once the executor drains: no new work, and the orchestrator is told.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Reports to send again if the stream breaks before they are acknowledged.
    pub unacknowledged: Unacknowledged,
}

/// Dials and serves the orchestrator until `shutdown` (the end of a drain), reconnecting
/// whenever the stream breaks.
pub async fn run(
    mut connection: Connection,
    mut uplink: mpsc::Receiver<ExecutorMessage>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let executor_id = connection.context.config.executor_id.clone();
    // Tells this process apart from another one registering the same executor id.
    let instance_id = uuid::Uuid::now_v7().to_string();
    while !shutdown.is_cancelled() {
        let ended = session(
            &mut connection,
            &instance_id,
            &mut uplink,
            &shutdown,
            &mut backoff,
        )
        .await;
        connection.context.metrics.connected.set(0);
        match ended {
            Ok(()) => tracing::info!(executor_id, "stream to the orchestrator ended"),
            // Not fatal: the other process may be a previous run of this one whose stream
            // the orchestrator has not yet seen end. Retried like any refusal.
            Err(Error::Rpc(status)) if status.code() == tonic::Code::AlreadyExists => {
                tracing::error!(
                    executor_id,
                    error = status.message(),
                    "the orchestrator refused this executor: its id is in use"
                )
            }
            Err(error) => tracing::warn!(executor_id, %error, "orchestrator unreachable"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn session(
    connection: &mut Connection,
    instance_id: &str,
    uplink: &mut mpsc::Receiver<ExecutorMessage>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<()> {
    let config = &connection.context.config;
    let mut client = ExecutorServiceClient::new(connection.channel.clone())
        .max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<ExecutorMessage>(256);
    // Executions whose finished report is not acknowledged are resent right after the
    // handshake, in order behind their log chunks: until then they count as running here,
    // so the orchestrator keeps them (and their chunks) instead of applying an early copy
    // of the report first and dropping the chunks of an execution already ended.
    let (running_execution_ids, recently_finished) = {
        let settling = lock(&connection.executions).settling.clone();
        let mut running = running_ids(&connection.executions);
        running.extend(settling.iter().cloned());
        let mut recent = recent_reports(&connection.executions);
        recent.retain(|report| !settling.contains(&report.execution_id));
        (running, recent)
    };
    let register = Register {
        executor_id: config.executor_id.clone(),
        protocol_version: ProtocolVersion::V1 as u32,
        labels: config.labels()?,
        capacity: Some(Capacity {
            slots: config.slots,
            memory_bytes: config.memory_bytes,
        }),
        running_execution_ids,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        // Reports that may have been lost with the previous stream; applied once upstream.
        recently_finished,
        instance_id: instance_id.to_owned(),
        acknowledged_through: connection.unacknowledged.through,
        features: vec![Feature::Partitions as i32, Feature::AssignBatch as i32],
    };
    let metrics = connection.context.metrics.clone();
    send(&tx, &metrics, executor_message::Message::Register(register)).await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let (heartbeat_interval, orchestrator_features) = match inbound.message().await? {
        Some(message) => match message.message {
            Some(orchestrator_message::Message::Registered(registered)) => {
                connection
                    .context
                    .set_ipfs_gateways(&registered.ipfs_gateways);
                let interval = registered
                    .heartbeat_interval
                    .and_then(|d| Duration::try_from(d).ok())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(2));
                (interval, Features::from_values(&registered.features))
            }
            _ => {
                return Err(Error::Protocol(
                    "the first message was not Registered".into(),
                ));
            }
        },
        None => return Err(Error::Protocol("the stream ended before Registered".into())),
    };
    backoff.reset();
    metrics.message("received", "registered");
    metrics.connected.set(1);
    tracing::info!(
        executor_id = config.executor_id,
        "registered with the orchestrator"
    );
    // A drain outlives reconnections: say so again on every new stream.
    connection.draining.mark_changed();
    // Reports the last stream may have lost, oldest first, before any new one.
    let resend: Vec<ExecutorMessage> = connection
        .unacknowledged
        .reports
        .iter()
        .map(|(report, _)| report.clone())
        .collect();
    if !resend.is_empty() {
        tracing::info!(reports = resend.len(), "resending unacknowledged reports");
    }
    for report in resend {
        forward(&tx, &metrics, report).await?;
    }

    let mut heartbeat = tokio::time::interval(heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbound.message() => match message? {
                Some(message) => {
                    metrics.message("received", message.type_name());
                    handle(connection, message);
                }
                None => return Ok(()),
            },
            Some(message) = uplink.recv() => {
                let mut reports = vec![message];
                if orchestrator_features.report_batch {
                    // Whatever else is queued already goes up in the same message.
                    while reports.len() < MAX_REPORTS_PER_MESSAGE
                        && let Ok(next) = uplink.try_recv()
                    {
                        reports.push(next);
                    }
                }
                send_reports(connection, &tx, &metrics, reports).await?
            }
            _ = heartbeat.tick() => {
                // The list first, then the number: a report queued before an execution
                // left the list has a number at most this one.
                let running_execution_ids = running_ids(&connection.executions);
                let last_report_sequence = connection.context.uplink.last_sequence();
                let heartbeat = Heartbeat { running_execution_ids, last_report_sequence };
                send(&tx, &metrics, executor_message::Message::Heartbeat(heartbeat)).await?;
            }
            Ok(()) = connection.draining.changed() => {
                if *connection.draining.borrow_and_update() {
                    send(&tx, &metrics, executor_message::Message::Draining(Default::default())).await?;
                }
            }
            _ = shutdown.cancelled() => {
                // The drain is over: every report is queued; send them before leaving.
                while let Ok(message) = uplink.try_recv() {
                    send_reports(connection, &tx, &metrics, vec![message]).await?;
                }
                drop(tx);
                // Wait for the orchestrator to end the stream, so nothing queued is cut off.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                return Ok(());
            }
        }
    }
}

/// Sends reports taken off the uplink, kept until acknowledged: more than one in
/// `ReportBatch`es of at most [`REPORT_BATCH_BYTES`] (a single larger one alone).
async fn send_reports(
    connection: &mut Connection,
    tx: &mpsc::Sender<ExecutorMessage>,
    metrics: &Metrics,
    reports: Vec<ExecutorMessage>,
) -> Result<()> {
    use prost::Message as _;
    let mut batch: Vec<ExecutorMessage> = Vec::new();
    let mut batch_bytes = 0;
    for report in reports {
        let size = report.encoded_len();
        let forgotten = connection.unacknowledged.keep(&report, size);
        settled(&connection.executions, forgotten);
        if !batch.is_empty() && batch_bytes + size > REPORT_BATCH_BYTES {
            send_batch(tx, metrics, std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
        }
        batch_bytes += size;
        batch.push(report);
    }
    send_batch(tx, metrics, batch).await
}

/// One report as itself, several as a `ReportBatch`.
async fn send_batch(
    tx: &mpsc::Sender<ExecutorMessage>,
    metrics: &Metrics,
    mut reports: Vec<ExecutorMessage>,
) -> Result<()> {
    match reports.len() {
        0 => Ok(()),
        1 => forward(tx, metrics, reports.remove(0)).await,
        _ => {
            for report in &reports {
                metrics.message("sent", report.type_name());
            }
            let batch = executor_message::Message::Reports(ReportBatch { reports });
            send(tx, metrics, batch).await
        }
    }
}

async fn send(
    tx: &mpsc::Sender<ExecutorMessage>,
    metrics: &Metrics,
    message: executor_message::Message,
) -> Result<()> {
    let message = ExecutorMessage {
        message: Some(message),
        sequence: 0,
    };
    forward(tx, metrics, message).await
}

/// Puts `message` on the stream, counting it.
async fn forward(
    tx: &mpsc::Sender<ExecutorMessage>,
    metrics: &Metrics,
    message: ExecutorMessage,
) -> Result<()> {
    metrics.message("sent", message.type_name());
    tx.send(message)
        .await
        .map_err(|_| Error::Protocol("the stream closed".into()))
}

fn handle(connection: &mut Connection, message: shoal::proto::OrchestratorMessage) {
    match message.message {
        Some(orchestrator_message::Message::Assign(assign)) => start(connection, assign),
        Some(orchestrator_message::Message::AssignBatch(batch)) => {
            for assign in batch.into_assignments() {
                start(connection, assign);
            }
        }
        Some(orchestrator_message::Message::Cancel(cancel)) => {
            let mut executions = lock(&connection.executions);
            match executions.running.get(&cancel.execution_id) {
                Some(token) => {
                    tracing::info!(
                        execution_id = cancel.execution_id,
                        reason = cancel.reason,
                        "cancelling"
                    );
                    token.cancel();
                }
                None => {
                    executions.cancelled_early.push_back(cancel.execution_id);
                    if executions.cancelled_early.len() > reports::CANCELLED_TOMBSTONES {
                        executions.cancelled_early.pop_front();
                    }
                }
            }
        }
        Some(orchestrator_message::Message::Acknowledged(acknowledged)) => {
            let done = connection
                .unacknowledged
                .acknowledged(acknowledged.sequence);
            settled(&connection.executions, done);
        }
        Some(orchestrator_message::Message::Registered(_)) | None => {
            tracing::warn!("unexpected message from the orchestrator ignored");
        }
    }
}

/// Starts an assigned execution (or hands it back while draining).
fn start(connection: &mut Connection, assign: Assign) {
    let execution_id = assign.execution_id.clone();
    if *connection.draining.borrow() {
        // Sent before our Draining arrived: hand it straight back.
        let context = connection.context.clone();
        tokio::spawn(async move {
            let failure = Failure::new(
                FailureKind::ExecutorLost,
                "the executor is draining and took no new work",
            );
            context
                .uplink
                .send_finished(ExecutionFinished {
                    execution_id,
                    state: failure.kind().execution_state() as i32,
                    result: None,
                    failure: Some(failure),
                    result_blocks: Vec::new(),
                })
                .await;
        });
        return;
    }
    let cancel = CancellationToken::new();
    {
        let mut executions = lock(&connection.executions);
        if executions.cancelled_early.contains(&execution_id) {
            tracing::info!(
                execution_id,
                "ignoring an assignment that was already cancelled"
            );
            return;
        }
        if executions.running.contains_key(&execution_id) {
            return; // a resent assignment
        }
        executions
            .running
            .insert(execution_id.clone(), cancel.clone());
    }
    // The execution's span: its log lines carry job_id and execution_id, and as a
    // trace span it is the child of the orchestrator's scheduling span.
    let span = tracing::info_span!(
        "execute",
        job_id = assign.job_id,
        execution_id,
        attempt = assign.attempt,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
    );
    shoal::daemon::telemetry::set_parent_from_map(&span, &assign.trace_context);
    span.in_scope(|| tracing::info!("execution assigned"));
    let context = connection.context.clone();
    let executions = connection.executions.clone();
    let task_span = span.clone();
    let task = async move {
        let started = std::time::Instant::now();
        context.metrics.running.inc();
        let (mut finished, scratch) =
            run_isolated(&execution_id, execute(&context, assign, cancel)).await;
        context.metrics.running.dec();
        {
            // Remembered before it leaves `running`, so a Register sent at any
            // moment reports the execution either as running or as finished —
            // never as missing, which would make the orchestrator run it again.
            let mut executions = lock(&executions);
            if let Some(timeout) = executions.drained.remove(&execution_id) {
                let failure = Failure::new(
                    FailureKind::ExecutorLost,
                    format!(
                        "the executor shut down and its drain timeout ({}) ran out first",
                        shoal::spec::units::format_duration(timeout)
                    ),
                );
                finished.state = failure.kind().execution_state() as i32;
                finished.failure = Some(failure);
            }
            executions.remember_finished(finished.clone());
            executions.settling.insert(execution_id.clone());
        }
        context
            .metrics
            .finished(finished.state(), started.elapsed());
        if let Some(failure) = &finished.failure {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_message", failure.message.as_str());
        }
        context.uplink.send_finished(finished).await;
        // Only now does it leave `running`: a heartbeat that no longer lists it
        // quotes a report number at least that of this report (see Heartbeat).
        lock(&executions).running.remove(&execution_id);
        if let Some(used) = scratch {
            context.scratch.release(used.path, used.reuse).await;
        }
    };
    connection.tasks.spawn(task.instrument(task_span));
}

/// Runs one execution's work; a panic in it (a bug) fails only that execution, as
/// INTERNAL with the panic's message, so it is reported and its slot freed instead of
/// being held by a report that never comes.
async fn run_isolated<F>(execution_id: &str, work: F) -> (ExecutionFinished, Option<UsedScratch>)
where
    F: std::future::Future<Output = (ExecutionFinished, Option<UsedScratch>)>,
{
    match shoal::daemon::panics::catch_panic(work).await {
        Ok(done) => done,
        Err(panic) => {
            let failure = Failure::new(
                FailureKind::Internal,
                format!("the executor hit a bug running this execution: {panic}"),
            );
            let finished = ExecutionFinished {
                execution_id: execution_id.to_owned(),
                state: failure.kind().execution_state() as i32,
                result: None,
                failure: Some(failure),
                result_blocks: Vec::new(),
            };
            (finished, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside an execution's work fails that execution as INTERNAL, with the
    /// panic's message, instead of leaving it unreported.
    #[tokio::test]
    async fn a_panicking_execution_fails_alone() {
        let (finished, scratch) = run_isolated("e1", async {
            let empty: Vec<(ExecutionFinished, Option<UsedScratch>)> = Vec::new();
            empty.into_iter().next().expect("a bug")
        })
        .await;
        assert!(scratch.is_none());
        assert_eq!(finished.execution_id, "e1");
        let failure = finished.failure.expect("failure");
        assert_eq!(failure.kind(), FailureKind::Internal);
        assert!(failure.message.contains("a bug"), "{}", failure.message);
    }
}
