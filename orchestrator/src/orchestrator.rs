//! The state behind every service, and the rule it keeps: a transition's effects (messages
//! to executors, watchers woken, the scheduler nudged) happen only once its writes are
//! durable ([`Orchestrator::apply`]). Also the store watchdog, which reloads the state once
//! the store writes again after a failed commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterConfig, Effects};
use crate::config::Config;
use crate::content::ContentStore;
use crate::error::{self, Result};
use crate::links::Links;
use crate::metrics;
use crate::records::Write;
use crate::store::postgres::connect::Database;
use crate::store::postgres::{Leader, Leadership, Postgres};
use crate::store::wal;
use crate::store::{Commit, Store};

/// How long finishing a partitioned job (its result tree, its last commit) is retried.
const FINISH_RETRY: shoal::net::retry::Retry =
    shoal::net::retry::Retry::window(Duration::from_secs(600));

/// How long a message may wait for room in an executor's stream.
const EXECUTOR_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared state behind every service.
pub struct Orchestrator {
    pub(crate) config: Config,
    pub(crate) cluster: Mutex<Cluster>,
    pub(crate) store: Store,
    content: ContentStore,
    /// Fetchers for CopyFromUrl and CopyFromS3.
    http: shoal::data::http::HttpFetcher,
    s3: shoal::data::s3::S3Fetcher,
    /// Fetcher for CIDs the store lacks (Pin), from `--ipfs-gateway`.
    ipfs: shoal::data::ipfs::GatewayFetcher,
    /// Latest committed event sequence per watched job.
    watchers: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
    metrics: Arc<metrics::Metrics>,
    /// The executors' streams, which the cluster's messages are delivered on.
    links: Links,
    /// Whether the store writes (false from a failed commit until the store writes again
    /// and the state was reloaded from it; see `store_watchdog`).
    store_writes: watch::Sender<bool>,
    pub(crate) schedule: Notify,
    /// Partitioned jobs whose partitions have all ended, for the scheduler loop to finish.
    finishing: std::sync::Mutex<Vec<String>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// With the PostgreSQL store: this process's leadership term, held while it serves.
    leadership: Option<Leadership>,
    /// The lock on the data directory, held while the orchestrator lives.
    _lock: Arc<shoal::daemon::lock::DirLock>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("config", &self.config)
            .finish()
    }
}

/// A transition's writes, queued for commit, and what to do once they are durable.
struct Pending {
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
        let (value, pending) = self
            .transition(writes, |cluster| (transition(cluster), false))
            .await?;
        self.complete(pending).await?;
        value
    }

    /// Like [`apply_with`](Self::apply_with), but the caller does not wait for the disk;
    /// effects still happen only after the commit. Used for the executor stream, whose
    /// order is kept by the store's FIFO writes. `transition` says whether its commit may
    /// wait briefly to share a later one ([`crate::store::DEFER_AT_MOST`]): true when no one
    /// waits for it (progress reports, partitions' ends).
    ///
    /// One effect does not wait for the commit: a freed slot nudges the scheduler at once.
    /// Its placements are queued behind these writes, so they are durable no earlier, and
    /// their assignments go out after their own commit; the commit that makes them durable
    /// is then usually one and the same (a partition's end and the next partition's start).
    /// This holds because every message a scheduling pass sends comes with a write of its
    /// own (the execution it places), so it waits for a commit queued after these.
    pub async fn apply_detached(
        self: &Arc<Self>,
        writes: Vec<Write>,
        transition: impl FnOnce(&mut Cluster) -> bool,
    ) -> Result<()> {
        let (_, mut pending) = self
            .transition(writes, |cluster| (Ok(()), transition(cluster)))
            .await?;
        if std::mem::take(&mut pending.effects.schedule) {
            self.schedule.notify_one();
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            if let Err(error) = this.complete(pending).await {
                tracing::error!(%error, "committing executor updates failed");
            }
        });
        Ok(())
    }

    /// Runs `transition` under the cluster lock and queues its writes (after `writes`) for
    /// commit, in state-change order. `transition` returns its value and whether its commit
    /// may be deferred.
    async fn transition<T>(
        &self,
        mut writes: Vec<Write>,
        transition: impl FnOnce(&mut Cluster) -> (Result<T>, bool),
    ) -> Result<(Result<T>, Pending)> {
        let mut cluster = self.cluster.lock().await;
        if !*self.store_writes.borrow() {
            // The state in memory may hold transitions whose writes failed; nothing is
            // built on it until it has been reloaded from the store.
            return Err(error::Error::StoreUnavailable(
                "a commit failed (a full disk, or the database unreachable); the orchestrator \
                 takes writes again once the store does"
                    .into(),
            ));
        }
        let (value, deferrable) = transition(&mut cluster);
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
        Ok((value, Pending { commit, effects }))
    }

    /// Waits for `pending`'s commit, then lets its effects out: messages to executors,
    /// watchers woken, the scheduler nudged.
    async fn complete(&self, pending: Pending) -> Result<()> {
        if let Some(commit) = pending.commit
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
        let effects = pending.effects;
        for (recipient, message) in effects.messages {
            let Some(stream) = self.links.get(&recipient) else {
                continue; // that stream ended: its executor is reconciled when it registers
            };
            // A closed stream is fine: the executor's loss is handled by the lease. A stream
            // that stays full is stuck; waiting forever would stall every caller behind it,
            // so the stream is ended: the executor reconnects, and registration reconciles
            // what it missed (an assignment it never got is retried as EXECUTOR_LOST).
            self.metrics.message("sent", message.type_name());
            let sent = tokio::time::timeout(EXECUTOR_SEND_TIMEOUT, stream.tx.send(Ok(message)));
            if sent.await.is_err() {
                tracing::error!(
                    "an executor stream stayed full for {EXECUTOR_SEND_TIMEOUT:?}; disconnecting it"
                );
                stream.stuck.cancel();
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
        if !effects.finalize.is_empty() {
            // The scheduler loop, which holds the orchestrator, builds their result trees.
            self.finishing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(effects.finalize);
            self.schedule.notify_one();
        }
        Ok(())
    }

    /// Starts building the result tree of every partitioned job whose partitions have all
    /// ended since the last call (see [`Self::finish_partitions`]).
    pub(crate) fn finish_ended_partitions(self: &Arc<Self>) {
        let ended = std::mem::take(&mut *self.finishing.lock().unwrap_or_else(|p| p.into_inner()));
        for job_id in ended {
            self.finish_partitions(job_id);
        }
    }

    /// Builds the result tree of a partitioned job whose partitions have all ended, then
    /// ends the job with it (in the background: it reads a block per partition). A store
    /// that fails (an outage, a full disk) is tried again, backing off, for up to ten
    /// minutes; past that the job ends FAILED, saying why.
    fn finish_partitions(self: &Arc<Self>, job_id: String) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let finished = FINISH_RETRY
                .run_until("finishing a partitioned job", &this.shutdown, || async {
                    let results = this.read(|c| c.partition_results(&job_id)).await?;
                    let root = match results.is_empty() {
                        true => None,
                        false => Some(this.content.partition_tree(&results).await?.to_string()),
                    };
                    let now = std::time::SystemTime::now();
                    this.apply(|c| c.partitions_finished(&job_id, root, now))
                        .await
                })
                .await;
            match finished {
                Ok(Ok(())) | Err(_) => {} // done, or the orchestrator is stopping (a restart redoes it)
                Ok(Err(error)) => {
                    tracing::error!(job_id, %error, "building a partitioned job's results failed");
                    let reason = format!("its result tree could not be built: {error}");
                    let now = std::time::SystemTime::now();
                    let ended = this
                        .apply(|c| c.partitions_unfinishable(&job_id, &reason, now))
                        .await;
                    if let Err(error) = ended {
                        tracing::error!(job_id, %error, "ending a partitioned job failed");
                    }
                }
            }
        });
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
    pub fn http(&self) -> &shoal::data::http::HttpFetcher {
        &self.http
    }

    /// The S3 fetcher.
    pub fn s3(&self) -> &shoal::data::s3::S3Fetcher {
        &self.s3
    }

    /// The IPFS gateway fetcher (with no gateways when none is configured).
    pub fn ipfs(&self) -> &shoal::data::ipfs::GatewayFetcher {
        &self.ipfs
    }

    /// The executors' open streams.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// With the PostgreSQL store: this process's leadership, taken out so it can be held
    /// until the store has closed.
    pub fn take_leadership(&mut self) -> Option<Leadership> {
        self.leadership.take()
    }

    /// With the PostgreSQL store: cancelled when this process's leadership term ends.
    pub fn leadership_lost(&self) -> Option<CancellationToken> {
        self.leadership.as_ref().map(Leadership::lost)
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Cancelled when the orchestrator shuts down; long-lived streams end with it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits until every write queued so far is durable. State read from memory can be
    /// ahead of the store: a job another submission with the same idempotency key created
    /// is there before its commit, and stays there after a failed commit until the state
    /// is reloaded; it may be acknowledged only after this.
    pub async fn durable(&self) -> Result<()> {
        if !*self.store_writes.borrow() {
            return Err(error::Error::StoreUnavailable(
                "a commit failed; the orchestrator answers again once the store writes".into(),
            ));
        }
        self.store.queue(Vec::new()).await?.wait().await
    }

    /// Runs `lookup`, and once more after everything queued is durable if it found nothing.
    /// Job states are read from memory, where a job shows completed while the commit with
    /// its result's blocks (sent along with the completion) may still be running: a client
    /// that saw it complete and asks for its result must find it, not NOT_FOUND.
    pub async fn once_committed<T, F, Fut>(&self, lookup: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match lookup().await {
            Err(error::Error::NotFound(_)) => {
                self.durable().await?;
                lookup().await
            }
            found => found,
        }
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
/// With the PostgreSQL store it first waits to lead, telling `leader` who leads meanwhile.
pub async fn open(
    config: Config,
    own: Vec<std::net::SocketAddr>,
    leader: &tokio::sync::watch::Sender<Option<Leader>>,
    shutdown: CancellationToken,
) -> Result<Arc<Orchestrator>> {
    // Before anything in the directory is read or written: a second orchestrator on it
    // would corrupt the first one's state.
    let lock = Arc::new(shoal::daemon::lock::DirLock::acquire(&config.data_dir)?);
    open_locked(lock, config, own, leader, shutdown).await
}

/// [`open`], with the data directory's lock already held (by a process that leads in
/// terms, one orchestrator per term).
pub async fn open_locked(
    lock: Arc<shoal::daemon::lock::DirLock>,
    config: Config,
    own: Vec<std::net::SocketAddr>,
    leader: &tokio::sync::watch::Sender<Option<Leader>>,
    shutdown: CancellationToken,
) -> Result<Arc<Orchestrator>> {
    let recovery = if config.recover_wal {
        wal::Recovery::MoveAside
    } else {
        wal::Recovery::Refuse
    };
    let (store, snapshot, leadership) = match &config.store {
        None => {
            let (store, snapshot) =
                Store::open_with(&config.data_dir.join("state.redb"), recovery)?;
            (store, snapshot, None)
        }
        Some(url) => {
            let database = Database::new(url.expose(), config.store_ca_cert.as_deref())?;
            Postgres::migrate(&database).await?;
            let address = match (&config.advertise_address, own.first()) {
                (Some(address), _) => address.clone(),
                (None, Some(address)) => address.to_string(),
                (None, None) => String::new(),
            };
            let Some(leadership) =
                Leadership::acquire(&database, &replica_name(), &address, leader, &shutdown)
                    .await?
            else {
                return Err(error::Error::ShuttingDown);
            };
            let (store, snapshot) = Store::postgres(&database, &leadership).await?;
            tracing::info!(database = %database.describe(), epoch = leadership.epoch, "the PostgreSQL store is open");
            (store, snapshot, Some(leadership))
        }
    };
    let s3 = shoal::data::s3::S3Fetcher::new(config.s3.clone());
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
    let policy = shoal::data::http::UrlPolicy::new(&config.urls)
        .map_err(error::Error::InvalidArgument)?
        .refusing_own(own);
    let http = shoal::data::http::HttpFetcher::new(5, 3, policy).map_err(|e| {
        error::Error::InvalidArgument(format!("cannot set up the HTTP client: {e}"))
    })?;
    let ipfs =
        shoal::data::ipfs::GatewayFetcher::new(config.ipfs_gateways.clone()).map_err(|e| {
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
        links: Links::default(),
        store_writes: watch::channel(true).0,
        schedule: Notify::new(),
        finishing: std::sync::Mutex::new(Vec::new()),
        shutdown,
        tasks: TaskTracker::new(),
        leadership,
        _lock: lock,
    }))
}

/// This process's name among replicas: the host's name and the process id.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// After a failed commit: probes the store until it writes again (a full disk freed), then
/// reloads the state from it — forgetting the transitions whose writes were lost, with the
/// executor slots their unsent assignments held — and takes work again. Without this the
/// queue stayed wedged until a restart.
pub(crate) async fn store_watchdog(orchestrator: Arc<Orchestrator>) {
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
            orchestrator.links.end_all();
            // What the reload found to finish (partitioned jobs whose partitions all ended)
            // is kept; the rest of its effects were the restore's own.
            let finalize = cluster.take_effects().finalize;
            orchestrator
                .finishing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(finalize);
            orchestrator.store_writes.send_replace(true);
            drop(cluster);
            orchestrator.schedule.notify_one();
            tracing::info!("the store writes again; state reloaded from it");
            break;
        }
    }
}
