//! ExecutorService: the one bidirectional stream each executor holds.
//!
//! The handler checks the `Register` handshake, answers `Registered`, then feeds every
//! message into the cluster state until the stream ends. Messages down the stream come from
//! the cluster's effects (assignments, cancellations) through a bounded channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use shoal::proto::executor_service_server::ExecutorService;
use shoal::proto::{
    ExecutorMessage, OrchestratorMessage, ProtocolVersion, Registered, executor_message,
    orchestrator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Orchestrator;

/// Messages queued towards one executor before senders wait.
const DOWNSTREAM_QUEUE: usize = 256;
/// How long a new stream may take to send its `Register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// ExecutorService implementation.
#[derive(Debug, Clone)]
pub struct ExecutorApi(Arc<Orchestrator>);

impl ExecutorApi {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Self {
        ExecutorApi(orchestrator)
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<OrchestratorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutorService for ExecutorApi {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message within 10s"))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before Register"))?;
        let Some(executor_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        if register.protocol_version != ProtocolVersion::V1 as u32 {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported; this orchestrator speaks {}",
                register.protocol_version,
                ProtocolVersion::V1 as u32
            )));
        }
        let config = self.0.config();
        let (tx, rx) = mpsc::channel(DOWNSTREAM_QUEUE);
        let registered = Registered {
            protocol_version: ProtocolVersion::V1 as u32,
            heartbeat_interval: prost_types::Duration::try_from(config.heartbeat_interval).ok(),
            lease: prost_types::Duration::try_from(config.lease).ok(),
            ipfs_gateways: config.ipfs_gateways.iter().map(|u| u.to_string()).collect(),
        };
        // The handshake answer goes first, before anything register() may queue.
        tx.try_send(Ok(OrchestratorMessage {
            message: Some(orchestrator_message::Message::Registered(registered)),
        }))
        .map_err(|_| Status::internal("cannot queue the handshake"))?;
        let executor_id = register.executor_id.clone();
        let sender = crate::cluster::ExecutorSender::new(tx);
        let stuck = sender.stuck.clone();
        let generation = self
            .0
            .apply(|c| c.register(register, sender, SystemTime::now(), Instant::now()))
            .await?;
        tracing::info!(executor_id, generation, "executor connected");

        let orchestrator = self.0.clone();
        let inbound_stuck = stuck.clone();
        self.0.spawn(async move {
            let shutdown = orchestrator.shutdown_token().clone();
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    _ = shutdown.cancelled() => break,
                    _ = inbound_stuck.cancelled() => break,
                };
                match message {
                    Ok(Some(message)) => {
                        if let Err(error) =
                            handle(&orchestrator, &executor_id, generation, message).await
                        {
                            tracing::warn!(executor_id, %error, "dropping the executor stream");
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(executor_id, %status, "executor stream failed");
                        break;
                    }
                }
            }
            let result = orchestrator
                .apply(|c| {
                    c.disconnected(&executor_id, generation, Instant::now());
                    Ok(())
                })
                .await;
            if let Err(error) = result {
                tracing::error!(executor_id, %error, "recording the disconnect failed");
            }
            tracing::info!(executor_id, generation, "executor disconnected");
        });

        let shutdown = self.0.shutdown_token().clone().cancelled_owned();
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx)
                .take_until(shutdown)
                .take_until(stuck.cancelled_owned()),
        )))
    }
}

async fn handle(
    orchestrator: &Arc<Orchestrator>,
    executor_id: &str,
    generation: u64,
    message: ExecutorMessage,
) -> crate::error::Result<()> {
    use executor_message::Message;
    let now = SystemTime::now();
    let Some(message) = message.message else {
        return Ok(());
    };
    orchestrator
        .apply_detached(|c| {
            c.touch(executor_id, generation, now, Instant::now());
            match message {
                Message::Register(_) => {
                    tracing::warn!(executor_id, "ignoring a second Register on one stream");
                }
                Message::Heartbeat(_) => {}
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
            }
        })
        .await
}
