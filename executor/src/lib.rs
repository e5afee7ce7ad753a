//! The Shoal executor: holds one `Connect` stream to the orchestrator, runs the WASI
//! programs it is assigned in wasmtime, streams their output back and publishes their
//! results.
//!
//! Layout, along an execution's path: `connection` (the stream, reconnects, assignment
//! intake) hands each assignment to `execution` (the sequence stage -> run -> publish ->
//! report), which uses `staging` (program and inputs, through `input_cache`), `runtime`
//! (wasmtime: engine, module cache, sandbox, limits), `capture` (stdout/stderr) and
//! `publish` (the result tree). `context` is what every execution shares, `reports` the
//! books on executions and unacknowledged reports, `scratch` the per-execution directories.

pub mod capture;
pub mod config;
pub mod connection;
pub mod context;
pub mod error;
pub mod execution;
pub mod input_cache;
pub mod metrics;
pub mod module_share;
pub mod publish;
pub mod reports;
pub mod runtime;
pub mod scratch;
pub mod staging;

use std::sync::Arc;
use std::time::Duration;

use shoal::proto::storage_service_client::StorageServiceClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
use crate::error::{Error, Result};

/// Runs the executor until `shutdown` is cancelled; then drains: tells the orchestrator,
/// takes no new work, lets running executions finish within the drain timeout, stops the
/// rest (reported as lost, so they run elsewhere), and leaves once every report is sent.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    config.check()?;
    let metrics_listener = match &config.metrics_listen {
        Some(address) => Some(
            shoal::daemon::metrics::bind(address)
                .await
                .map_err(Error::Config)?,
        ),
        None => None,
    };
    let config = Arc::new(config);
    // Before the work directory is touched: a second executor on it would clear this one's
    // input cache and scratch directories under its running executions.
    let _lock = shoal::daemon::lock::DirLock::acquire(&config.work_dir)?;
    std::fs::create_dir_all(config.work_dir.join("executions"))
        .map_err(|e| Error::io(format!("creating {}", config.work_dir.display()), e))?;
    // One live guest per slot; the margin costs only address space and keeps a pool
    // miscount from ever failing a job.
    let allocation = runtime::Allocation::Pooling {
        instances: config.slots.saturating_mul(2).max(4),
    };
    let runtime = runtime::Runtime::new(&config.module_cache_dir(), allocation)?;
    let bearer = config
        .security
        .bearer()
        .map_err(|e| Error::Config(e.to_string()))?;
    // One lazily connected channel per orchestrator replica; calls follow the leader.
    let channel = config
        .security
        .replicas(&config.orchestrator, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| Error::Config(e.to_string()))?;
    let channel = shoal::net::auth::AuthChannel::new(channel, bearer);
    let storage =
        StorageServiceClient::new(channel.clone()).max_decoding_message_size(16 * 1024 * 1024);
    let module_share = match &config.module_share_key {
        Some(path) => {
            let key = std::fs::read(path).map_err(|e| {
                Error::io(
                    format!("reading the module share key {}", path.display()),
                    e,
                )
            })?;
            // Whitespace at either end (the newline `openssl rand -hex 32 > FILE` writes) is
            // not part of the key, so files made by different tools agree.
            let key = key.trim_ascii().to_vec();
            let seal = module_share::Seal::new(key, runtime.engine_fingerprint())?;
            let dir = config.module_cache_dir();
            Some(Arc::new(module_share::ModuleShare::new(
                seal,
                channel.clone(),
                dir,
            )))
        }
        None => None,
    };
    let (uplink, uplink_rx) = context::Uplink::new(1024);
    let policy = shoal::data::http::UrlPolicy::new(&config.urls).map_err(Error::Config)?;
    let http =
        shoal::data::http::HttpFetcher::new(config.http_max_redirects, config.http_retries, policy)
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {e}")))?;
    let cache =
        input_cache::InputCache::new(&config.work_dir.join("inputs"), config.input_cache_bytes)
            .map_err(|e| Error::io("preparing the input cache", e))?;
    let s3 = shoal::data::s3::S3Fetcher::new(config.s3.clone());
    let metrics = Arc::new(metrics::Metrics::new());
    let context = Arc::new(context::ExecutionContext {
        runtime,
        storage,
        http,
        cache,
        s3,
        ipfs: std::sync::RwLock::new(Arc::new(
            shoal::data::ipfs::GatewayFetcher::new(Vec::new())
                .map_err(|e| Error::Config(format!("cannot set up the IPFS client: {e}")))?,
        )),
        config: config.clone(),
        uplink,
        metrics: metrics.clone(),
        scratch: scratch::ScratchPool::new(
            config.work_dir.join("executions"),
            // Twice the slots: a slot's next execution often starts before the last one's
            // directory is back, and a pool of exactly the slots then deleted one
            // directory and made another for nearly every execution.
            2 * config.slots.max(1) as usize,
        ),
        module_share,
    });
    let executions = reports::SharedExecutions::default();
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
            let running = reports::running_ids(&executions).len();
            tracing::info!(executor_id, running, ?drain_timeout, "draining");
            let _ = draining_tx.send(true);
            tasks.close();
            if tokio::time::timeout(drain_timeout, tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(executor_id, "drain timeout: stopping the executions left");
                reports::cancel_all_for_drain(&executions, drain_timeout);
                tasks.wait().await;
            }
            stop.cancel();
        })
    };
    if let Some(listener) = metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(target: shoal::daemon::LISTENING, %address, "metrics listening");
        }
        let render = move || {
            let metrics = metrics.clone();
            async move { metrics.encode() }
        };
        // Up until the drain is over, so the drain itself can be watched.
        tokio::spawn(shoal::daemon::metrics::serve(
            listener,
            render,
            stop.clone(),
        ));
    }
    connection::run(connection, uplink_rx, stop).await;
    let _ = drain.await;
    context.scratch.clear().await;
    tracing::info!(executor_id = config.executor_id, "executor stopped");
    Ok(())
}
