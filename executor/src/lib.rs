//! The Shoal executor: holds one `Connect` stream to the orchestrator, runs the WASI
//! programs it is assigned in wasmtime, streams their output back and publishes their
//! results.
//!
//! Layout: `connection` (the stream, reconnects, assignment intake), `execution` (one
//! execution from staging to report), `staging` (fetching the program and inputs),
//! `runtime` (wasmtime: engine, module cache, sandbox, limits), `capture` (stdout/stderr).

pub mod cache;
pub mod capture;
pub mod connection;
pub mod error;
pub mod execution;
pub mod metrics;
pub mod retry;
pub mod runtime;
pub mod scratch;
pub mod staging;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal::proto::storage_service_client::StorageServiceClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

/// Executor settings; every field can come from a flag or an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The orchestrator's gRPC address.
    #[arg(
        long,
        env = "SHOAL_ORCHESTRATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub orchestrator: String,
    /// Stable id of this executor. Default: the host name and the process id.
    #[arg(long, env = "SHOAL_EXECUTOR_ID", default_value_t = default_executor_id())]
    pub executor_id: String,
    /// Labels jobs can select on, as KEY=VALUE (repeatable).
    #[arg(long = "label", env = "SHOAL_LABELS", value_delimiter = ',')]
    pub label: Vec<String>,
    /// Executions run at once. Default: the number of CPUs.
    #[arg(long, env = "SHOAL_SLOTS", default_value_t = default_slots())]
    pub slots: u32,
    /// Guest memory offered to all running executions together.
    #[arg(long = "memory", env = "SHOAL_MEMORY", default_value = "8GiB", value_parser = shoal::units::parse_size)]
    pub memory_bytes: u64,
    /// Scratch space for executions and the compiled-module cache.
    #[arg(long, env = "SHOAL_WORK_DIR", default_value = "./shoal-executor")]
    pub work_dir: PathBuf,
    /// Most stdout (and, separately, stderr) kept per execution; the rest is dropped.
    #[arg(long, env = "SHOAL_LOG_CAP", default_value = "64MiB", value_parser = shoal::units::parse_size)]
    pub log_cap: u64,
    /// Most bytes of outputs and logs an execution may publish.
    #[arg(long, env = "SHOAL_MAX_OUTPUT", default_value = "10GiB", value_parser = shoal::units::parse_size)]
    pub max_output_bytes: u64,
    /// Disk space for cached inputs (by CID, or by URL and strong ETag); 0 disables it.
    #[arg(long, env = "SHOAL_INPUT_CACHE", default_value = "10GiB", value_parser = shoal::units::parse_size)]
    pub input_cache_bytes: u64,
    /// Most bytes of inputs (and of a fetched program) per execution.
    #[arg(long = "max-input", env = "SHOAL_MAX_INPUT", default_value = "10GiB", value_parser = shoal::units::parse_size)]
    pub max_input_bytes: u64,
    /// Redirects followed when fetching a URL.
    #[arg(long, env = "SHOAL_HTTP_MAX_REDIRECTS", default_value_t = 5)]
    pub http_max_redirects: usize,
    /// Retries of a URL fetch after a 5xx, a 429 or a broken connection.
    #[arg(long, env = "SHOAL_HTTP_RETRIES", default_value_t = 3)]
    pub http_retries: u32,
    #[command(flatten)]
    pub s3: shoal::s3::S3Defaults,
    /// Time allowed for fetching a program and its inputs (not counted in the run timeout).
    #[arg(long, env = "SHOAL_STAGING_TIMEOUT", default_value = "10m", value_parser = shoal::units::parse_duration)]
    pub staging_timeout: Duration,
    /// On SIGTERM, how long running executions may go on (no new work is taken) before
    /// they are stopped and handed back to the orchestrator to run elsewhere.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", default_value = "5m", value_parser = shoal::units::parse_duration)]
    pub drain_timeout: Duration,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. `0.0.0.0:9091`; off
    /// if unset.
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Which hosts URL inputs and programs may come from.
    #[command(flatten)]
    pub urls: shoal::fetch::UrlPolicyArgs,
    /// Token and TLS settings for reaching the orchestrator.
    #[command(flatten)]
    pub security: shoal::auth::ClientSecurity,
}

fn default_executor_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "executor".to_owned());
    format!("{host}-{}", std::process::id())
}

fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

impl Config {
    /// Defaults for an executor of `orchestrator` working in `work_dir` (for embedding).
    pub fn new(orchestrator: String, executor_id: String, work_dir: PathBuf) -> Self {
        Config {
            orchestrator,
            executor_id,
            label: Vec::new(),
            slots: default_slots(),
            memory_bytes: 8 << 30,
            work_dir,
            log_cap: 64 << 20,
            max_output_bytes: 10 << 30,
            max_input_bytes: 10 << 30,
            input_cache_bytes: 10 << 30,
            http_max_redirects: 5,
            http_retries: 3,
            s3: shoal::s3::S3Defaults::aws(),
            staging_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(300),
            security: Default::default(),
            urls: Default::default(),
            metrics_listen: None,
        }
    }

    /// Checks what can be checked without starting: labels and slots.
    pub fn check(&self) -> Result<()> {
        self.labels()?;
        if self.slots == 0 {
            return Err(Error::Config("slots must be at least 1".into()));
        }
        Ok(())
    }

    /// The labels as a map; malformed ones are a configuration error.
    pub fn labels(&self) -> Result<HashMap<String, String>> {
        self.label
            .iter()
            .filter(|l| !l.is_empty())
            .map(|label| {
                let (key, value) = label
                    .split_once('=')
                    .ok_or_else(|| Error::Config(format!("label {label:?} must be KEY=VALUE")))?;
                let key = shoal::selector::label_key(key).map_err(Error::Config)?;
                let value = shoal::selector::label_value(value).map_err(Error::Config)?;
                Ok((key, value))
            })
            .collect()
    }
}

/// Runs the executor until `shutdown` is cancelled; then drains: tells the orchestrator,
/// takes no new work, lets running executions finish within the drain timeout, stops the
/// rest (reported as lost, so they run elsewhere), and leaves once every report is sent.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    config.check()?;
    let metrics_listener = match &config.metrics_listen {
        Some(address) => Some(shoal::metrics::bind(address).await.map_err(Error::Config)?),
        None => None,
    };
    let config = Arc::new(config);
    std::fs::create_dir_all(config.work_dir.join("executions"))
        .map_err(|e| Error::io(format!("creating {}", config.work_dir.display()), e))?;
    // One live guest per slot; the margin costs only address space and keeps a pool
    // miscount from ever failing a job.
    let allocation = runtime::Allocation::Pooling {
        instances: config.slots.saturating_mul(2).max(4),
    };
    let runtime = runtime::Runtime::new(&config.work_dir.join("modules"), allocation)?;
    let bearer = config.security.bearer().map_err(Error::Config)?;
    let channel = config
        .security
        .endpoint(&config.orchestrator)
        .map_err(Error::Config)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let channel = shoal::auth::AuthChannel::new(channel, bearer);
    let storage =
        StorageServiceClient::new(channel.clone()).max_decoding_message_size(16 * 1024 * 1024);
    let (uplink, uplink_rx) = execution::Uplink::new(1024);
    let policy = shoal::fetch::UrlPolicy::new(&config.urls).map_err(Error::Config)?;
    let http =
        shoal::fetch::HttpFetcher::new(config.http_max_redirects, config.http_retries, policy)
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {e}")))?;
    let cache = cache::InputCache::new(&config.work_dir.join("inputs"), config.input_cache_bytes)
        .map_err(|e| Error::io("preparing the input cache", e))?;
    let s3 = shoal::s3::S3Fetcher::new(config.s3.clone());
    let metrics = Arc::new(metrics::Metrics::new());
    let context = Arc::new(execution::ExecutionContext {
        runtime,
        storage,
        http,
        cache,
        s3,
        ipfs: std::sync::RwLock::new(Arc::new(
            shoal::ipfs::GatewayFetcher::new(Vec::new())
                .map_err(|e| Error::Config(format!("cannot set up the IPFS client: {e}")))?,
        )),
        config: config.clone(),
        uplink,
        metrics: metrics.clone(),
        scratch: scratch::ScratchPool::new(
            config.work_dir.join("executions"),
            config.slots.max(1) as usize,
        ),
    });
    let executions = connection::SharedExecutions::default();
    let tasks = TaskTracker::new();
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    let stop = CancellationToken::new();
    tracing::info!(
        executor_id = config.executor_id,
        orchestrator = config.orchestrator,
        "executor starting"
    );
    let connection = connection::Connection {
        context: context.clone(),
        executions: executions.clone(),
        tasks: tasks.clone(),
        channel,
        draining,
        unacknowledged: Default::default(),
    };
    let drain = {
        let (executions, tasks, stop) = (executions.clone(), tasks.clone(), stop.clone());
        let drain_timeout = config.drain_timeout;
        let executor_id = config.executor_id.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let running = connection::running_ids(&executions).len();
            tracing::info!(executor_id, running, ?drain_timeout, "draining");
            let _ = draining_tx.send(true);
            tasks.close();
            if tokio::time::timeout(drain_timeout, tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(executor_id, "drain timeout: stopping the executions left");
                connection::cancel_all_for_drain(&executions, drain_timeout);
                tasks.wait().await;
            }
            stop.cancel();
        })
    };
    if let Some(listener) = metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "metrics listening");
        }
        let render = move || {
            let metrics = metrics.clone();
            async move { metrics.encode() }
        };
        // Up until the drain is over, so the drain itself can be watched.
        tokio::spawn(shoal::metrics::serve(listener, render, stop.clone()));
    }
    connection::run(connection, uplink_rx, stop).await;
    let _ = drain.await;
    context.scratch.clear().await;
    tracing::info!(executor_id = config.executor_id, "executor stopped");
    Ok(())
}
