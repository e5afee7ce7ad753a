//! The executors' `Connect` response streams, by executor id and the generation of the
//! registration that opened them. The state machine names a message's recipient by id and
//! generation ([`Recipient`]); only here does that become a channel, so a message meant for
//! an executor's earlier stream is never delivered on its next one.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal::proto::OrchestratorMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::Recipient;

/// Where messages for one connected executor go, and the switch that ends its stream if it
/// stays full (a stuck executor is disconnected; its reconnection reconciles what it
/// missed).
#[derive(Debug, Clone)]
pub struct ExecutorStream {
    pub tx: mpsc::Sender<Result<OrchestratorMessage, tonic::Status>>,
    pub stuck: CancellationToken,
}

impl ExecutorStream {
    pub fn new(tx: mpsc::Sender<Result<OrchestratorMessage, tonic::Status>>) -> Self {
        ExecutorStream {
            tx,
            stuck: CancellationToken::new(),
        }
    }
}

/// The open executor streams.
#[derive(Debug, Default)]
pub struct Links {
    streams: Mutex<HashMap<String, (u64, ExecutorStream)>>,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, ExecutorStream)>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream of registration `generation` of `executor_id`, replacing an older one.
    pub fn insert(&self, executor_id: &str, generation: u64, stream: ExecutorStream) {
        self.lock()
            .insert(executor_id.to_owned(), (generation, stream));
    }

    /// Forgets the stream of `generation`, if it is still the executor's.
    pub fn remove(&self, executor_id: &str, generation: u64) {
        let mut streams = self.lock();
        if streams
            .get(executor_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            streams.remove(executor_id);
        }
    }

    /// The stream a message for `recipient` goes to, if that registration's stream is open.
    pub fn get(&self, recipient: &Recipient) -> Option<ExecutorStream> {
        self.lock()
            .get(&recipient.executor_id)
            .filter(|(generation, _)| *generation == recipient.generation)
            .map(|(_, stream)| stream.clone())
    }

    /// Ends every stream (each executor reconnects and is reconciled).
    pub fn end_all(&self) {
        for (_, stream) in self.lock().values() {
            stream.stuck.cancel();
        }
    }
}
