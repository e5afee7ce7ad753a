//! ExecutorService: the one bidirectional stream each executor holds.
//!
//! The handler checks the `Register` handshake, answers `Registered`, then feeds every
//! message into the cluster state until the stream ends. Messages down the stream come from
//! the cluster's effects (assignments, cancellations) through a bounded channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, Stream, StreamExt};
use shoal::proto::executor_service_server::ExecutorService;
use shoal::proto::{
    CompiledModule, ExecutionFinished, ExecutionState, ExecutorMessage, Failure, FailureKind,
    Feature, FindCompiledModuleRequest, OrchestratorMessage, ProtocolVersion,
    RecordCompiledModuleResponse, Registered, executor_message, orchestrator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Orchestrator;
use crate::records::Write;

/// Messages queued towards one executor before senders wait.
const DOWNSTREAM_QUEUE: usize = 256;
/// How long a new stream may take to send its `Register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most already-received messages applied in one cluster transition (one lock, one batch
/// for the store) when an executor reports faster than they are applied.
const MAX_MESSAGES_PER_APPLY: usize = 128;

/// ExecutorService implementation.
#[derive(Debug, Clone)]
pub struct ExecutorApi(Arc<Orchestrator>);

/// The messages for one connected executor, as its `Connect` answers them.
pub type ConnectStream = Pin<Box<dyn Stream<Item = Result<OrchestratorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutorService for ExecutorApi {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.serve(request.into_inner()).await.map(Response::new)
    }

    async fn find_compiled_module(
        &self,
        request: Request<FindCompiledModuleRequest>,
    ) -> Result<Response<CompiledModule>, Status> {
        let found = super::modules::find(&self.0, request.into_inner()).await?;
        Ok(Response::new(found))
    }

    async fn record_compiled_module(
        &self,
        request: Request<CompiledModule>,
    ) -> Result<Response<RecordCompiledModuleResponse>, Status> {
        let recorded = super::modules::record(&self.0, request.into_inner()).await?;
        Ok(Response::new(recorded))
    }
}

impl ExecutorApi {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Self {
        ExecutorApi(orchestrator)
    }

    /// Serves one executor's `Connect`: `inbound` is what it sends (the gRPC request
    /// stream, or any other stream of its messages, such as an in-memory one in tests);
    /// the answer is what it is sent, starting with `Registered`.
    pub async fn serve<S>(&self, mut inbound: S) -> Result<ConnectStream, Status>
    where
        S: Stream<Item = Result<ExecutorMessage, Status>> + Send + Unpin + 'static,
    {
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.next())
            .await
            .map_err(|_| {
                Status::from(crate::error::Error::DeadlineExceeded(
                    "no Register message within 10s".into(),
                ))
            })?
            .ok_or_else(|| {
                Status::from(crate::error::Error::InvalidArgument(
                    "the stream ended before Register".into(),
                ))
            })??;
        let Some(executor_message::Message::Register(register)) = first.message else {
            return Err(Status::from(crate::error::Error::InvalidArgument(
                "the first message must be Register".into(),
            )));
        };
        if register.protocol_version != ProtocolVersion::V1 as u32 {
            return Err(Status::from(crate::error::Error::FailedPrecondition(
                format!(
                    "protocol version {} is not supported; this orchestrator speaks {}",
                    register.protocol_version,
                    ProtocolVersion::V1 as u32
                ),
            )));
        }
        let metrics = self.0.metrics();
        metrics.message("received", "register");
        let config = self.0.config();
        let (tx, rx) = mpsc::channel(DOWNSTREAM_QUEUE);
        let registered = Registered {
            protocol_version: ProtocolVersion::V1 as u32,
            heartbeat_interval: prost_types::Duration::try_from(config.heartbeat_interval).ok(),
            lease: prost_types::Duration::try_from(config.lease).ok(),
            ipfs_gateways: config.ipfs_gateways.iter().map(|u| u.to_string()).collect(),
            features: vec![Feature::ReportBatch as i32],
        };
        // The handshake answer goes first, before anything register() may queue.
        tx.try_send(Ok(OrchestratorMessage {
            message: Some(orchestrator_message::Message::Registered(registered)),
        }))
        .map_err(|_| {
            Status::from(crate::error::Error::Internal(
                "cannot queue the handshake".into(),
            ))
        })?;
        let executor_id = register.executor_id.clone();
        let mut register = register;
        let mut writes = Vec::new();
        for finished in &mut register.recently_finished {
            writes.extend(take_result_tree(&self.0, &executor_id, finished).await?);
        }
        let stream = crate::links::ExecutorStream::new(tx);
        let stuck = stream.stuck.clone();
        let links = self.0.links();
        let generation = self
            .0
            .apply_with(writes, |c| {
                let generation = c.register(register, SystemTime::now(), Instant::now())?;
                // Before the commit completes, so the messages register() queued find it.
                links.insert(&executor_id, generation, stream);
                Ok(generation)
            })
            .await
            .inspect_err(|error| tracing::warn!(executor_id, %error, "executor refused"))?;
        metrics.message("sent", "registered");
        tracing::info!(executor_id, generation, "executor connected");

        let orchestrator = self.0.clone();
        let inbound_stuck = stuck.clone();
        self.0.spawn(async move {
            let shutdown = orchestrator.shutdown_token().clone();
            // A panic while handling this stream (a bug) ends only this stream; its end is
            // still recorded below, so its executions get their lease as for any break.
            let served = shoal::daemon::panics::catch_panic(async {
                loop {
                    let message = tokio::select! {
                        message = inbound.next() => message.transpose(),
                        _ = shutdown.cancelled() => break,
                        _ = inbound_stuck.cancelled() => break,
                    };
                    match message {
                        Ok(Some(message)) => {
                            // Completion batching: whatever else this executor has already
                            // sent (updates, log chunks, finished reports of other executions)
                            // is applied together with this message.
                            let mut batch = vec![message];
                            let mut ended = None;
                            while batch.len() < MAX_MESSAGES_PER_APPLY {
                                match inbound.next().now_or_never().map(Option::transpose) {
                                    Some(Ok(Some(next))) => batch.push(next),
                                    Some(other) => {
                                        ended = Some(other);
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            if let Err(error) =
                                handle(&orchestrator, &executor_id, generation, batch).await
                            {
                                tracing::warn!(executor_id, %error, "dropping the executor stream");
                                break;
                            }
                            match ended {
                                None => {}
                                Some(Ok(_)) => break,
                                Some(Err(status)) => {
                                    tracing::info!(executor_id, %status, "executor stream failed");
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(executor_id, %status, "executor stream failed");
                            break;
                        }
                    }
                }
            })
            .await;
            if served.is_err() {
                inbound_stuck.cancel();
            }
            let result = orchestrator
                .apply(|c| {
                    c.disconnected(&executor_id, generation, Instant::now());
                    Ok(())
                })
                .await;
            orchestrator.links().remove(&executor_id, generation);
            if let Err(error) = result {
                tracing::error!(executor_id, %error, "recording the disconnect failed");
            }
            tracing::info!(executor_id, generation, "executor disconnected");
        });

        let shutdown = self.0.shutdown_token().clone().cancelled_owned();
        Ok(Box::pin(
            ReceiverStream::new(rx)
                .take_until(shutdown)
                .take_until(stuck.cancelled_owned()),
        ))
    }
}

/// Applies messages received from one executor, in order, in one cluster transition.
async fn handle(
    orchestrator: &Arc<Orchestrator>,
    executor_id: &str,
    generation: u64,
    messages: Vec<ExecutorMessage>,
) -> crate::error::Result<()> {
    use executor_message::Message;
    // A batch counts as itself and as each report in it, as the executor counts what it
    // sends: the per-type figures then do not depend on how the uplink happened to batch.
    let metrics = orchestrator.metrics();
    for message in &messages {
        metrics.message("received", message.type_name());
        if let Some(Message::Reports(batch)) = &message.message {
            for report in &batch.reports {
                metrics.message("received", report.type_name());
            }
        }
    }
    let mut messages = unbatched(messages)?;
    let mut writes = Vec::new();
    for message in &mut messages {
        if let Some(Message::Finished(finished)) = &mut message.message {
            writes.extend(take_result_tree(orchestrator, executor_id, finished).await?);
        }
    }
    let now = SystemTime::now();
    orchestrator
        .apply_detached(writes, |c| {
            // Progress reports (states before the end, log chunks) and the ends of
            // partitions are waited for by no one (a partition's freed slot is refilled
            // without waiting for this commit, and the next one's placement shares it):
            // their commit may be deferred to share the next one. Any other finished
            // report, a drain or a registration is committed at once.
            let deferrable = messages.iter().all(|m| match &m.message {
                Some(Message::Heartbeat(_) | Message::Update(_) | Message::Log(_)) => true,
                Some(Message::Finished(finished)) => c.runs_a_partition(&finished.execution_id),
                _ => false,
            });
            c.touch(executor_id, generation, now, Instant::now());
            let reports = messages.iter().any(|m| m.sequence > 0);
            for ExecutorMessage { message, sequence } in messages {
                c.report_received(executor_id, generation, sequence);
                let Some(message) = message else { continue };
                match message {
                    Message::Register(_) => {
                        tracing::warn!(executor_id, "ignoring a second Register on one stream");
                    }
                    Message::Heartbeat(heartbeat) => {
                        c.heartbeat(executor_id, generation, &heartbeat, now);
                    }
                    Message::Update(update) => {
                        c.execution_update(executor_id, &update.execution_id, update.state(), now);
                    }
                    Message::Log(log) => {
                        if let Some(chunk) = log.chunk {
                            c.execution_log(executor_id, chunk, now);
                        }
                    }
                    Message::Finished(finished) => c.execution_finished(executor_id, finished, now),
                    Message::Draining(_) => c.draining(executor_id, generation),
                    // Unpacked by `unbatched` above.
                    Message::Reports(_) => tracing::warn!(executor_id, "a ReportBatch left packed"),
                }
            }
            // Sent once this batch is durable: the executor may then forget its reports.
            if reports {
                c.acknowledge_reports(executor_id, generation);
            }
            deferrable
        })
        .await
}

/// The messages with every `ReportBatch` replaced by the reports in it, in order. A batch
/// holding anything but reports is a protocol error, which ends the stream.
fn unbatched(messages: Vec<ExecutorMessage>) -> crate::error::Result<Vec<ExecutorMessage>> {
    use executor_message::Message;
    if !messages
        .iter()
        .any(|m| matches!(m.message, Some(Message::Reports(_))))
    {
        return Ok(messages);
    }
    let mut flat = Vec::with_capacity(messages.len());
    for message in messages {
        let Some(Message::Reports(batch)) = message.message else {
            flat.push(message);
            continue;
        };
        for report in batch.reports {
            match &report.message {
                Some(Message::Update(_) | Message::Log(_) | Message::Finished(_)) => {
                    flat.push(report)
                }
                _ => {
                    return Err(crate::error::Error::InvalidArgument(format!(
                        "a ReportBatch may hold only update, log and finished reports, not {}",
                        report.type_name()
                    )));
                }
            }
        }
    }
    Ok(flat)
}

/// Takes the result tree sent with `finished` (if any) and returns the writes that store it,
/// for the same commit as the completion. A tree that fails the checks turns the report into
/// a publish failure: the job then fails with the reason rather than pointing at blocks the
/// store does not hold. Other errors (the store itself failing) end the stream; the executor
/// resends the report when it reconnects.
async fn take_result_tree(
    orchestrator: &Orchestrator,
    executor_id: &str,
    finished: &mut ExecutionFinished,
) -> crate::error::Result<Vec<Write>> {
    let blocks = std::mem::take(&mut finished.result_blocks);
    if blocks.is_empty() {
        // Uploaded earlier (or published to S3): a completion must name a result the
        // store holds, or a job would complete pointing at nothing.
        let result = finished.result.as_ref();
        let published = result.is_some_and(|r| !r.published_to.is_empty());
        if finished.state() == ExecutionState::Completed && !published {
            let cid: String = result
                .map(|r| r.result_cid.chars().take(128).collect())
                .unwrap_or_default();
            let content = orchestrator.content();
            let problem = match cid.parse::<shoal::content::cid::ContentId>() {
                Err(_) => Some(format!("its result CID {cid:?} is not a CID")),
                Ok(cid) if !content.contains(&cid).await? => {
                    Some(format!("its result {cid} is not in the store"))
                }
                // A file (the program, say) is no result: `job get` could not lay it out.
                // Failing to read the block is the store's trouble, not the executor's.
                Ok(cid) => (!content.is_directory(&cid).await?)
                    .then(|| format!("its result {cid} is not a directory")),
            };
            if let Some(problem) = problem {
                reject_result(executor_id, finished, problem);
            }
        }
        return Ok(Vec::new());
    }
    let root = finished
        .result
        .as_ref()
        .map(|r| r.result_cid.clone())
        .unwrap_or_default();
    match orchestrator.content().inline_tree(&root, &blocks).await {
        Ok(writes) => Ok(writes),
        Err(crate::error::Error::InvalidArgument(reason)) => {
            reject_result(executor_id, finished, reason);
            Ok(Vec::new())
        }
        Err(error) => Err(error),
    }
}

/// Turns a completion whose result cannot be trusted into a PUBLISH failure, saying why.
fn reject_result(executor_id: &str, finished: &mut ExecutionFinished, reason: String) {
    tracing::warn!(
        executor_id,
        execution_id = finished.execution_id,
        reason,
        "rejecting a result"
    );
    if let Some(result) = &mut finished.result {
        result.result_cid.clear();
    }
    let failure = Failure::new(
        FailureKind::Publish,
        format!("the executor sent a malformed result: {reason}"),
    );
    finished.state = failure.kind().execution_state() as i32;
    finished.failure = Some(failure);
}
