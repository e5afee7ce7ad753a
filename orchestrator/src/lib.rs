//! The Shoal orchestrator: accepts jobs durably, schedules them onto executors that hold a
//! `Connect` stream to it, tracks every job and execution through its states, and stores
//! programs, data and results by CID.
//!
//! Layout: `store` (durable records, group commit), `content` (the CID-addressed blob
//! store), `cluster` (the in-memory state machine and scheduler), `service` (the gRPC
//! services, thin shells over the above). [`run`] wires them together.

pub mod blocks;
pub mod cluster;
pub mod content;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod service;
pub mod store;
#[cfg(test)]
#[path = "../../tests/common/small_disk.rs"]
mod testing;
pub mod wal;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterConfig, Effects};
use crate::content::ContentStore;
use crate::error::Result;
use crate::store::{Commit, Store, Write};

/// How long a message may wait for room in an executor's stream.
const EXECUTOR_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Orchestrator settings; every field can come from a flag or an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Directory for the job database and the content store.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// How often executors send heartbeats.
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = shoal::units::parse_duration)]
    pub heartbeat_interval: Duration,
    /// An executor silent for this long is lost and its executions are retried elsewhere.
    #[arg(long, env = "SHOAL_LEASE", default_value = "10s", value_parser = shoal::units::parse_duration)]
    pub lease: Duration,
    /// Run timeout for jobs whose spec names none.
    #[arg(long, env = "SHOAL_DEFAULT_TIMEOUT", default_value = "1h", value_parser = shoal::units::parse_duration)]
    pub default_timeout: Duration,
    /// Queue timeout for jobs whose spec names none.
    #[arg(long, env = "SHOAL_DEFAULT_QUEUE_TIMEOUT", default_value = "24h", value_parser = shoal::units::parse_duration)]
    pub default_queue_timeout: Duration,
    #[command(flatten)]
    pub s3: shoal::s3::S3Defaults,
    /// Most jobs waiting for an executor; past it SubmitJob answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHOAL_MAX_QUEUED_JOBS", default_value_t = 100_000)]
    pub max_queued_jobs: usize,
    /// Largest upload (total file bytes) the content store accepts.
    #[arg(long, env = "SHOAL_MAX_UPLOAD", default_value = "16GiB", value_parser = shoal::units::parse_size)]
    pub max_upload_bytes: u64,
    /// Bearer tokens and their roles, one `ROLE TOKEN` per line (roles client, executor,
    /// admin). Without it every caller may do everything: a development setup.
    #[arg(long, env = "SHOAL_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// TLS certificate (PEM) for the gRPC listener; with `--tls-key`, clients must use
    /// https:// addresses.
    #[arg(long, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the TLS certificate.
    #[arg(long, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) for mutual TLS: executors must then present a client
    /// certificate it signed. Needs `--tls-cert`.
    #[arg(long, env = "SHOAL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Which hosts `CopyFromUrl` may fetch from.
    #[command(flatten)]
    pub urls: shoal::fetch::UrlPolicyArgs,
    /// Where the content store keeps its blocks: `s3://bucket/prefix` for an S3 bucket
    /// (reached with the `--s3-*` settings and the standard AWS credentials), or unset for
    /// `DATA_DIR/content`.
    #[arg(long, env = "SHOAL_CONTENT_STORE", value_parser = shoal::source::S3Location::parse)]
    pub content_store: Option<shoal::source::S3Location>,
    /// An IPFS trustless gateway (`http(s)://host[:port]`) to fetch CIDs the store lacks
    /// from; repeat the flag (or separate with commas) for several, asked in order. With
    /// one, jobs may name CIDs the store does not hold: executors fetch and verify them.
    #[arg(long = "ipfs-gateway", env = "SHOAL_IPFS_GATEWAYS", value_delimiter = ',', value_parser = shoal::ipfs::parse_gateway)]
    pub ipfs_gateways: Vec<url::Url>,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. `0.0.0.0:9090`; off
    /// if unset.
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// An assignment its executor has not acknowledged (reported on) within this long is
    /// taken back: cancelled there, failed EXECUTOR_LOST and retried under the job's policy.
    #[arg(long, env = "SHOAL_ASSIGN_ACK_TIMEOUT", default_value = "5s", value_parser = shoal::units::parse_duration)]
    pub assign_ack_timeout: Duration,
    /// The most slots one executor may offer; a registration claiming more is refused.
    #[arg(long, env = "SHOAL_MAX_EXECUTOR_SLOTS", default_value_t = 256)]
    pub max_executor_slots: u32,
    /// The most guest memory one executor may offer; a registration claiming more is
    /// refused.
    #[arg(long, env = "SHOAL_MAX_EXECUTOR_MEMORY", default_value = "1TiB", value_parser = shoal::units::parse_size)]
    pub max_executor_memory: u64,
    /// The most log bytes kept per execution and stream (stdout, stderr); an executor
    /// sending more has the rest dropped. Match it to the executors' `--log-cap`.
    #[arg(long, env = "SHOAL_MAX_LOG_PER_EXECUTION", default_value = "64MiB", value_parser = shoal::units::parse_size)]
    pub max_log_per_execution: u64,
    /// Start even though the write-ahead log `state.wal` is damaged or missing: keep the
    /// intact frames before the damage, move the damaged log aside as
    /// `state.wal.damaged-<unix time>`, and go on without the writes after it (they are
    /// logged as lost). Without it the orchestrator refuses to start on such a log and
    /// changes nothing. Use it once, after taking a copy of the data directory.
    #[arg(long, env = "SHOAL_RECOVER_WAL")]
    pub recover_wal: bool,
}

impl Config {
    /// Defaults with the given data directory (for embedding, e.g. the devstack).
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            default_timeout: Duration::from_secs(3600),
            default_queue_timeout: Duration::from_secs(24 * 3600),
            max_upload_bytes: 16 << 30,
            max_queued_jobs: 100_000,
            s3: shoal::s3::S3Defaults::aws(),
            ipfs_gateways: Vec::new(),
            content_store: None,
            tokens_file: None,
            urls: Default::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            metrics_listen: None,
            recover_wal: false,
            assign_ack_timeout: Duration::from_secs(5),
            max_executor_slots: 256,
            max_executor_memory: 1 << 40,
            max_log_per_execution: 64 << 20,
        }
    }
}

/// The shared state behind every service.
pub struct Orchestrator {
    config: Config,
    cluster: Mutex<Cluster>,
    store: Store,
    content: ContentStore,
    /// Fetchers for CopyFromUrl and CopyFromS3.
    http: shoal::fetch::HttpFetcher,
    s3: shoal::s3::S3Fetcher,
    /// Fetcher for CIDs the store lacks (Pin), from `--ipfs-gateway`.
    ipfs: shoal::ipfs::GatewayFetcher,
    /// Latest committed event sequence per watched job.
    watchers: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
    metrics: Arc<metrics::Metrics>,
    /// Whether the store writes (false from a failed commit until the store writes again
    /// and the state was reloaded from it; see `store_watchdog`).
    store_writes: watch::Sender<bool>,
    schedule: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("config", &self.config)
            .finish()
    }
}

/// Writes queued by a transition, and what to do once they are durable.
struct Staged {
    commit: Option<Commit>,
    effects: Effects,
}

impl Orchestrator {
    /// Runs `transition` on the cluster state and returns once its writes are durable and
    /// its messages sent.
    pub async fn apply<T>(&self, transition: impl FnOnce(&mut Cluster) -> Result<T>) -> Result<T> {
        self.apply_with(Vec::new(), transition).await
    }

    /// Like [`apply`](Self::apply), with `writes` (e.g. the blocks of result trees sent with
    /// completions) committed atomically with the transition's own.
    pub async fn apply_with<T>(
        &self,
        writes: Vec<Write>,
        transition: impl FnOnce(&mut Cluster) -> Result<T>,
    ) -> Result<T> {
        let (value, staged) = self.stage(writes, false, transition).await?;
        self.complete(staged).await?;
        value
    }

    /// Like [`apply_with`](Self::apply_with), but the caller does not wait for the disk;
    /// effects still happen only after the commit. Used for the executor stream, whose
    /// order is kept by the store's FIFO writes. With `deferrable` (progress reports), the
    /// commit may wait briefly to share a later one ([`store::DEFER_AT_MOST`]).
    pub async fn apply_detached(
        self: &Arc<Self>,
        writes: Vec<Write>,
        deferrable: bool,
        transition: impl FnOnce(&mut Cluster),
    ) -> Result<()> {
        let (_, staged) = self
            .stage(writes, deferrable, |cluster| {
                transition(cluster);
                Ok(())
            })
            .await?;
        let this = self.clone();
        self.tasks.spawn(async move {
            if let Err(error) = this.complete(staged).await {
                tracing::error!(%error, "committing executor updates failed");
            }
        });
        Ok(())
    }

    async fn stage<T>(
        &self,
        mut writes: Vec<Write>,
        deferrable: bool,
        transition: impl FnOnce(&mut Cluster) -> Result<T>,
    ) -> Result<(Result<T>, Staged)> {
        let mut cluster = self.cluster.lock().await;
        if !*self.store_writes.borrow() {
            // The state in memory may hold transitions whose writes failed; nothing is
            // built on it until it has been reloaded from the store.
            return Err(error::Error::StoreUnavailable(
                "a commit failed (is the disk full?); the orchestrator takes writes again once \
                 the store does"
                    .into(),
            ));
        }
        let value = transition(&mut cluster);
        let mut effects = cluster.take_effects();
        // The caller's writes go first: records may refer to them, never the reverse.
        if !writes.is_empty() {
            writes.append(&mut effects.writes);
            effects.writes = writes;
        }
        // Queued while the lock is held, so the store sees writes in state-change order.
        let writes = std::mem::take(&mut effects.writes);
        // An acknowledgement tells an executor to forget reports: it must wait for every
        // commit queued before it, even when this transition writes nothing itself.
        let acknowledges = effects.messages.iter().any(|(_, m)| {
            matches!(
                m.message,
                Some(shoal::proto::orchestrator_message::Message::Acknowledged(_))
            )
        });
        let commit = match (writes.is_empty() && !acknowledges, deferrable) {
            (true, _) => None,
            (false, false) => Some(self.store.queue(writes).await?),
            (false, true) => Some(self.store.queue_deferrable(writes).await?),
        };
        Ok((value, Staged { commit, effects }))
    }

    async fn complete(&self, staged: Staged) -> Result<()> {
        if let Some(commit) = staged.commit
            && let Err(error) = commit.wait().await
        {
            if matches!(error, error::Error::StoreUnavailable(_)) {
                // The transition is in memory but not on disk, and its effects (an
                // assignment holding a slot, say) must not stay: the watchdog reloads
                // the state once the store writes again.
                self.store_writes
                    .send_if_modified(|writes| std::mem::replace(writes, false));
            }
            return Err(error);
        }
        let effects = staged.effects;
        for (sender, message) in effects.messages {
            // A closed stream is fine: the executor's loss is handled by the lease. A stream
            // that stays full is stuck; waiting forever would stall every caller behind it,
            // so the stream is ended: the executor reconnects, and registration reconciles
            // what it missed (an assignment it never got is retried as EXECUTOR_LOST).
            self.metrics.message("sent", message.type_name());
            let sent = tokio::time::timeout(EXECUTOR_SEND_TIMEOUT, sender.tx.send(Ok(message)));
            if sent.await.is_err() {
                tracing::error!(
                    "an executor stream stayed full for {EXECUTOR_SEND_TIMEOUT:?}; disconnecting it"
                );
                sender.stuck.cancel();
            }
        }
        if !effects.events.is_empty() {
            let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            for (job_id, sequence) in effects.events {
                if let Some(sender) = watchers.get(&job_id) {
                    sender.send_if_modified(|latest| {
                        let newer = sequence > *latest;
                        if newer {
                            *latest = sequence;
                        }
                        newer
                    });
                }
            }
        }
        if effects.schedule {
            self.schedule.notify_one();
        }
        Ok(())
    }

    /// Whether the store writes now (false while it fails: health says NOT_SERVING).
    pub fn store_writes(&self) -> watch::Receiver<bool> {
        self.store_writes.subscribe()
    }

    /// A receiver that changes whenever new events of `job_id` are durable.
    pub fn subscribe(&self, job_id: &str) -> watch::Receiver<u64> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers
            .entry(job_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Drops the watch channel of `job_id` if nobody listens any more.
    pub fn unsubscribe(&self, job_id: &str) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if watchers
            .get(job_id)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            watchers.remove(job_id);
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The metrics in the OpenMetrics text format, with the state gauges up to date.
    pub async fn render_metrics(&self) -> String {
        self.cluster.lock().await.refresh_metrics();
        self.metrics.encode()
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// The URL fetcher.
    pub fn http(&self) -> &shoal::fetch::HttpFetcher {
        &self.http
    }

    /// The S3 fetcher.
    pub fn s3(&self) -> &shoal::s3::S3Fetcher {
        &self.s3
    }

    /// The IPFS gateway fetcher (with no gateways when none is configured).
    pub fn ipfs(&self) -> &shoal::ipfs::GatewayFetcher {
        &self.ipfs
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Cancelled when the orchestrator shuts down; long-lived streams end with it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Read access to the cluster state.
    pub async fn read<T>(&self, f: impl FnOnce(&Cluster) -> T) -> T {
        f(&*self.cluster.lock().await)
    }

    /// Tracks a background task so shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }
}

/// Opens the data directory and restores the orchestrator's state.
/// `own` are the orchestrator's listening addresses, which `CopyFromUrl` never fetches from.
pub async fn open(
    config: Config,
    own: Vec<std::net::SocketAddr>,
    shutdown: CancellationToken,
) -> Result<Arc<Orchestrator>> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| error::Error::io(format!("creating {}", config.data_dir.display()), e))?;
    let recovery = if config.recover_wal {
        wal::Recovery::MoveAside
    } else {
        wal::Recovery::Refuse
    };
    let (store, snapshot) = Store::open_with(&config.data_dir.join("state.redb"), recovery)?;
    let s3 = shoal::s3::S3Fetcher::new(config.s3.clone());
    let content_bucket = match &config.content_store {
        Some(location) => Some((
            s3.client(None).await,
            location.bucket.clone(),
            location.prefix.clone(),
        )),
        None => None,
    };
    let content = ContentStore::open_with(
        &config.data_dir.join("content"),
        content_bucket,
        store.clone(),
        config.max_upload_bytes,
    )?;
    content.blocks().check().await?;
    tracing::info!(
        jobs = snapshot.jobs.len(),
        executions = snapshot.executions.len(),
        data_dir = %config.data_dir.display(),
        blocks = content.blocks().location(),
        "state restored"
    );
    let cluster = Cluster::restore(
        snapshot,
        ClusterConfig {
            heartbeat_interval: config.heartbeat_interval,
            lease: config.lease,
            defaults: shoal::spec::SpecDefaults {
                timeout: config.default_timeout,
                queue_timeout: config.default_queue_timeout,
            },
            max_queued: config.max_queued_jobs,
            ack_timeout: config.assign_ack_timeout,
            max_capacity: shoal::proto::Capacity {
                slots: config.max_executor_slots,
                memory_bytes: config.max_executor_memory,
            },
            max_log_bytes: config.max_log_per_execution,
        },
        Instant::now(),
    );
    let policy = shoal::fetch::UrlPolicy::new(&config.urls)
        .map_err(error::Error::InvalidArgument)?
        .refusing_own(own);
    let http = shoal::fetch::HttpFetcher::new(5, 3, policy).map_err(|e| {
        error::Error::InvalidArgument(format!("cannot set up the HTTP client: {e}"))
    })?;
    let ipfs = shoal::ipfs::GatewayFetcher::new(config.ipfs_gateways.clone()).map_err(|e| {
        error::Error::InvalidArgument(format!("cannot set up the IPFS gateway client: {e}"))
    })?;
    let metrics = cluster.metrics();
    Ok(Arc::new(Orchestrator {
        config,
        cluster: Mutex::new(cluster),
        store,
        content,
        http,
        s3,
        ipfs,
        watchers: std::sync::Mutex::new(HashMap::new()),
        metrics,
        store_writes: watch::channel(true).0,
        schedule: Notify::new(),
        shutdown,
        tasks: TaskTracker::new(),
    }))
}

/// Serves the orchestrator on `listener` until `shutdown` is cancelled, then stops
/// accepting, ends open streams, waits for its tasks and closes the store.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<()> {
    run_with_gateway(listener, None, config, shutdown).await
}

/// [`run`], also serving the trustless IPFS gateway on `gateway` if given.
pub async fn run_with_gateway(
    listener: TcpListener,
    gateway: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics_listener = match &config.metrics_listen {
        Some(address) => Some(
            shoal::metrics::bind(address)
                .await
                .map_err(error::Error::InvalidArgument)?,
        ),
        None => None,
    };
    let own = [Some(&listener), gateway.as_ref(), metrics_listener.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let orchestrator = open(config, own, shutdown.clone()).await?;
    if let Some(listener) = metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "metrics listening");
        }
        let this = orchestrator.clone();
        let render = move || {
            let this = this.clone();
            async move { this.render_metrics().await }
        };
        orchestrator.spawn(shoal::metrics::serve(listener, render, shutdown.clone()));
    }
    let address = listener
        .local_addr()
        .map_err(|e| error::Error::io("listener", e))?;
    tracing::info!(%address, "orchestrator listening");
    if let Some(gateway) = gateway {
        if let Ok(address) = gateway.local_addr() {
            tracing::info!(%address, "IPFS gateway listening");
        }
        orchestrator.spawn(gateway::serve(
            orchestrator.clone(),
            gateway,
            shutdown.clone(),
        ));
    }

    orchestrator.spawn(scheduler_loop(orchestrator.clone()));
    orchestrator.spawn(store_watchdog(orchestrator.clone()));
    let served = service::serve(orchestrator.clone(), listener, shutdown.clone()).await;
    shutdown.cancel();
    orchestrator.tasks.close();
    orchestrator.tasks.wait().await;
    match Arc::try_unwrap(orchestrator) {
        Ok(orchestrator) => {
            // The content store holds a handle too: every handle must be gone for the
            // writer to finish.
            let store = orchestrator.store.clone();
            drop(orchestrator);
            store.close().await
        }
        Err(_) => tracing::warn!("state still referenced at shutdown; the store closes on exit"),
    }
    served
}

/// After a failed commit: probes the store until it writes again (a full disk freed), then
/// reloads the state from it — forgetting the transitions whose writes were lost, with the
/// executor slots their unsent assignments held — and takes work again. Without this the
/// queue stayed wedged until a restart.
async fn store_watchdog(orchestrator: Arc<Orchestrator>) {
    let mut writes = orchestrator.store_writes();
    let shutdown = orchestrator.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = writes.wait_for(|ok| !ok) => if changed.is_err() { return },
        }
        tracing::error!("a store commit failed: refusing writes until the store writes again");
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
            let probe = async {
                orchestrator
                    .store
                    .queue(vec![Write::Probe])
                    .await?
                    .wait()
                    .await?;
                orchestrator.store.snapshot().await
            };
            let snapshot = match probe.await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    tracing::warn!(%error, "the store does not write yet");
                    continue;
                }
            };
            let mut cluster = orchestrator.cluster.lock().await;
            cluster.reload(snapshot, Instant::now());
            drop(cluster.take_effects());
            orchestrator.store_writes.send_replace(true);
            drop(cluster);
            orchestrator.schedule.notify_one();
            tracing::info!("the store writes again; state reloaded from it");
            break;
        }
    }
}

/// Places queued jobs whenever capacity or the queue changes, and checks leases and queue
/// timeouts every half heartbeat (at most every second), so a lost executor's work is
/// re-dispatched within half a heartbeat of its lease running out (B10).
async fn scheduler_loop(orchestrator: Arc<Orchestrator>) {
    let sweep_every = (orchestrator.config.heartbeat_interval / 2)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(sweep_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sweep = tokio::select! {
            _ = orchestrator.shutdown.cancelled() => return,
            _ = orchestrator.schedule.notified() => false,
            _ = tick.tick() => true,
        };
        let result = orchestrator
            .apply(|cluster| {
                let now = SystemTime::now();
                if sweep {
                    cluster.sweep(now, Instant::now());
                    cluster.schedule(now);
                } else {
                    cluster.schedule_placements(now);
                }
                Ok(())
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "scheduling pass failed");
        }
    }
}
