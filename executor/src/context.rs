//! What every execution shares: the executor's runtime, clients, caches and settings
//! ([`ExecutionContext`]), and the [`Uplink`] its reports travel up to the connection by.

use std::sync::Arc;

use shoal::net::auth::AuthChannel;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{
    ExecutionFinished, ExecutionState, ExecutionUpdate, ExecutorMessage, executor_message,
};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::input_cache::InputCache;
use crate::metrics::Metrics;
use crate::module_share::ModuleShare;
use crate::runtime::Runtime;
use crate::scratch::ScratchPool;

/// Messages from executions to the orchestrator, forwarded by the connection whenever one
/// is up. Bounded: a long disconnection pauses log forwarding, never the guests.
///
/// Every report gets the next sequence number as it is queued, under one lock, so numbers
/// follow queue order: the orchestrator acknowledges "everything up to N", and a heartbeat
/// quotes the last number queued before it listed the running executions.
#[derive(Clone)]
pub struct Uplink {
    tx: mpsc::Sender<ExecutorMessage>,
    next: Arc<tokio::sync::Mutex<u64>>,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Uplink {
    /// An uplink and the receiver the connection drains.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<ExecutorMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let uplink = Uplink {
            tx,
            next: Arc::default(),
            last: Arc::default(),
        };
        (uplink, rx)
    }

    pub(crate) async fn send(&self, message: executor_message::Message) {
        let mut next = self.next.lock().await;
        *next += 1;
        let sequence = *next;
        let _ = self
            .tx
            .send(ExecutorMessage {
                message: Some(message),
                sequence,
            })
            .await;
        self.last
            .store(sequence, std::sync::atomic::Ordering::Release);
    }

    /// The sequence number of the last report queued.
    pub fn last_sequence(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reports a finished execution.
    pub async fn send_finished(&self, finished: ExecutionFinished) {
        self.send(executor_message::Message::Finished(finished))
            .await;
    }

    /// Reports the phase an execution entered.
    pub(crate) async fn state(&self, execution_id: &str, state: ExecutionState) {
        self.send(executor_message::Message::Update(ExecutionUpdate {
            execution_id: execution_id.to_owned(),
            state: state as i32,
        }))
        .await;
    }
}

/// What an execution needs from its executor.
pub struct ExecutionContext {
    pub runtime: Arc<Runtime>,
    pub storage: StorageServiceClient<AuthChannel>,
    pub http: shoal::data::http::HttpFetcher,
    pub cache: Arc<InputCache>,
    pub s3: shoal::data::s3::S3Fetcher,
    /// The orchestrator's IPFS gateways, as its latest `Registered` named them.
    pub ipfs: std::sync::RwLock<Arc<shoal::data::ipfs::GatewayFetcher>>,
    pub config: Arc<Config>,
    pub uplink: Uplink,
    pub metrics: Arc<Metrics>,
    /// Scratch directories, reused when an execution leaves nothing in them.
    pub scratch: ScratchPool,
    /// The pool of executors this one shares compiled modules with (`--module-share-key`).
    pub module_share: Option<Arc<ModuleShare>>,
}

impl ExecutionContext {
    /// The IPFS gateway fetcher for CIDs the orchestrator's store lacks.
    pub fn ipfs(&self) -> Arc<shoal::data::ipfs::GatewayFetcher> {
        self.ipfs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the gateway list from a `Registered`; unusable entries are skipped.
    pub fn set_ipfs_gateways(&self, gateways: &[String]) {
        let gateways: Vec<_> = gateways
            .iter()
            .filter_map(|g| {
                shoal::data::ipfs::parse_gateway(g)
                    .inspect_err(|error| tracing::warn!(%error, "ignoring an IPFS gateway"))
                    .ok()
            })
            .collect();
        if gateways == self.ipfs().gateways() {
            return;
        }
        match shoal::data::ipfs::GatewayFetcher::new(gateways) {
            Ok(fetcher) => {
                *self.ipfs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fetcher)
            }
            Err(error) => tracing::warn!(%error, "cannot set up the IPFS gateway client"),
        }
    }
}
