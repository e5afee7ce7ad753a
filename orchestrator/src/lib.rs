//! The Shoal orchestrator: accepts jobs durably, schedules them onto executors that hold a
//! `Connect` stream to it, tracks every job and execution through its states, and stores
//! programs, data and results by CID.
//!
//! Layout, along a job's path: `service/` accepts calls (jobs, executors' streams, storage,
//! nodes) as thin shells over `orchestrator` ([`Orchestrator`]: the shared state, and the
//! rule that effects wait for the commit), which runs transitions of `cluster/` (the pure
//! state machine: jobs, scheduling, executors, executions) and commits them to `store`
//! (durable records, group commit, with `wal`). `scheduler` is the loop that places queued
//! work; `links` holds the executors' streams; `content/` is the CID-addressed content store
//! (its blocks local or in S3), `gateway` its IPFS gateway. [`run`] wires them together.

pub mod cluster;
pub mod config;
pub mod content;
pub mod error;
pub mod gateway;
pub mod links;
pub mod metrics;
pub mod orchestrator;
pub mod records;
mod scheduler;
pub mod service;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::error::Result;
pub use crate::orchestrator::{Orchestrator, open};

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
    let metrics = match &config.metrics_listen {
        Some(address) => Some(
            shoal::daemon::metrics::bind(address)
                .await
                .map_err(error::Error::InvalidArgument)?,
        ),
        None => None,
    };
    let own = Listeners {
        grpc: listener,
        gateway,
        metrics,
    };
    let addresses = own.addresses();
    let Listeners {
        grpc,
        gateway,
        metrics,
    } = own;
    // The gRPC listener answers from the start: as a standby until the state is loaded (on
    // the PostgreSQL store, until this replica leads; another may).
    let (leader, standby) = tokio::sync::watch::channel(None);
    let stop_early = shutdown.child_token();
    let grpc = service::GrpcServer::start(grpc, &config, standby, None, stop_early.clone()).await?;
    let orchestrator = match open(config, addresses, &leader, shutdown.clone()).await {
        Ok(orchestrator) => orchestrator,
        Err(error) => {
            stop_early.cancel();
            let _ = grpc.finish().await;
            return Err(error);
        }
    };
    serve_on(orchestrator, grpc, gateway, metrics, shutdown).await
}

/// Where an orchestrator serves: its gRPC API, and optionally the IPFS gateway and the
/// metrics endpoint.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub gateway: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// The addresses listened on (which `CopyFromUrl` never fetches from).
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        [
            Some(&self.grpc),
            self.gateway.as_ref(),
            self.metrics.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|l| l.local_addr().ok())
        .collect()
    }
}

/// Serves an orchestrator from [`open`] on `listeners` until `shutdown` is cancelled, with
/// its scheduler and store watchdog; then stops accepting, ends open streams, waits for its
/// tasks and closes the store (once every other handle to `orchestrator` is gone). For
/// embedding where the caller keeps a handle (tests that drive it directly).
pub async fn serve(
    orchestrator: Arc<Orchestrator>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let Listeners {
        grpc,
        gateway,
        metrics,
    } = listeners;
    // Serving from the first call: the orchestrator is open.
    let routes = service::routes(&orchestrator, &shutdown).await?;
    let no_leader = tokio::sync::watch::channel(None).1;
    let config = orchestrator.config();
    let grpc =
        service::GrpcServer::start(grpc, config, no_leader, Some(routes), shutdown.clone()).await?;
    serve_on(orchestrator, grpc, gateway, metrics, shutdown).await
}

/// [`serve`], with the gRPC server already started (answering as a standby).
async fn serve_on(
    orchestrator: Arc<Orchestrator>,
    grpc: service::GrpcServer,
    gateway: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<()> {
    if let Some(listener) = metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(target: shoal::daemon::LISTENING, %address, "metrics listening");
        }
        let this = orchestrator.clone();
        let render = move || {
            let this = this.clone();
            async move { this.render_metrics().await }
        };
        orchestrator.spawn(shoal::daemon::metrics::serve(
            listener,
            render,
            shutdown.clone(),
        ));
    }
    if let Some(gateway) = gateway {
        if let Ok(address) = gateway.local_addr() {
            tracing::info!(target: shoal::daemon::LISTENING, %address, "IPFS gateway listening");
        }
        orchestrator.spawn(gateway::serve(
            orchestrator.clone(),
            gateway,
            shutdown.clone(),
        ));
    }

    orchestrator.spawn(scheduler::scheduler_loop(orchestrator.clone()));
    orchestrator.spawn(orchestrator::store_watchdog(orchestrator.clone()));
    // A leader whose term ends stops serving at once: whatever it holds in memory may be
    // stale by the time another replica leads.
    let lost = orchestrator.leadership_lost();
    if let Some(lost) = lost.clone() {
        let shutdown = shutdown.clone();
        orchestrator.spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => shutdown.cancel(),
                _ = shutdown.cancelled() => {}
            }
        });
    }
    if !grpc.leads() {
        grpc.lead(service::routes(&orchestrator, &shutdown).await?);
    }
    tracing::info!(target: shoal::daemon::LISTENING, address = %grpc.address(), "orchestrator listening");
    let served = grpc.finish().await;
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
    if lost.is_some_and(|lost| lost.is_cancelled()) {
        return Err(error::Error::Deposed(
            "its leadership term ended (the log says why); it stopped serving".into(),
        ));
    }
    served
}
