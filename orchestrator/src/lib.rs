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
pub use crate::orchestrator::{Orchestrator, open, open_locked};

/// How long a deposed leader gives its term's tasks to end before it stands by again.
const ENDED_TERM_TASKS_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

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
    // the PostgreSQL store, while another replica leads).
    let (leader, standby) = tokio::sync::watch::channel(None);
    let grpc =
        service::GrpcServer::start(grpc, &config, standby, None, shutdown.child_token()).await?;
    let lock = Arc::new(shoal::daemon::lock::DirLock::acquire(&config.data_dir)?);
    let led = if config.store.is_some() {
        lead_in_terms(
            lock, config, addresses, &grpc, gateway, metrics, &leader, &shutdown,
        )
        .await
    } else {
        match open_locked(lock, config, addresses, &leader, shutdown.clone()).await {
            Ok(orchestrator) => {
                serve_term(orchestrator, &grpc, gateway, metrics, shutdown.clone()).await
            }
            Err(error) => Err(error),
        }
    };
    shutdown.cancel();
    let served = grpc.finish().await;
    led.and(served)
}

/// With the PostgreSQL store: waits to lead, serves the term, and when the term ends
/// (the database connection lost, or a later term begun elsewhere) stands by to lead
/// again, until `shutdown`. The data directory's lock and the listeners stay this
/// process's across terms; each term has its own orchestrator, loaded from the database.
/// An error before the first term (a wrong URL or password) ends it; later the database
/// is waited for.
#[allow(clippy::too_many_arguments)]
async fn lead_in_terms(
    lock: Arc<shoal::daemon::lock::DirLock>,
    config: Config,
    addresses: Vec<std::net::SocketAddr>,
    grpc: &service::GrpcServer,
    gateway: Option<TcpListener>,
    metrics: Option<TcpListener>,
    leader: &tokio::sync::watch::Sender<Option<store::postgres::Leader>>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut backoff = shoal::net::retry::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let mut terms = 0u64;
    while !shutdown.is_cancelled() {
        let term = shutdown.child_token();
        let opened = open_locked(
            lock.clone(),
            config.clone(),
            addresses.clone(),
            leader,
            term.clone(),
        )
        .await;
        let orchestrator = match opened {
            Ok(orchestrator) => orchestrator,
            Err(_) if shutdown.is_cancelled() => break,
            // Before the first term only a term that ended while loading is waited out: any
            // other error is the settings' (a wrong URL or password), and ends the process.
            Err(error)
                if (terms > 0 || matches!(error, error::Error::Deposed(_)))
                    && shoal::net::retry::Transient::is_transient(&error) =>
            {
                tracing::warn!(%error, "cannot stand by for the leadership yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            Err(error) => return Err(error),
        };
        terms += 1;
        backoff.reset();
        // Each term's listeners are copies of the same sockets: the port stays bound.
        let copy = |listener: &Option<TcpListener>| listener.as_ref().map(duplicate).transpose();
        let ended = serve_term(orchestrator, grpc, copy(&gateway)?, copy(&metrics)?, term).await;
        leader.send_replace(None);
        match ended {
            Err(error::Error::Deposed(why)) if !shutdown.is_cancelled() => {
                tracing::warn!(why, "stepped down; standing by to lead again");
            }
            other => return other,
        }
    }
    Ok(())
}

/// Another handle to the socket `listener` listens on.
fn duplicate(listener: &TcpListener) -> Result<TcpListener> {
    let fail = |e| error::Error::io("sharing a listener between terms", e);
    use std::os::fd::AsFd as _;
    let copy = listener.as_fd().try_clone_to_owned().map_err(fail)?;
    let copy = std::net::TcpListener::from(copy);
    copy.set_nonblocking(true).map_err(fail)?;
    TcpListener::from_std(copy).map_err(fail)
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
    let served = serve_term(orchestrator, &grpc, gateway, metrics, shutdown.clone()).await;
    shutdown.cancel();
    served.and(grpc.finish().await)
}

/// Serves `orchestrator` through `grpc` (and the gateway and metrics listeners) until
/// `term` is cancelled (shutdown, or the end of its leadership term), then puts `grpc`
/// back to standing by, ends the term's streams, waits for its tasks and closes its store.
/// Err(Deposed) if its leadership term ended.
async fn serve_term(
    orchestrator: Arc<Orchestrator>,
    grpc: &service::GrpcServer,
    gateway: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    term: CancellationToken,
) -> Result<()> {
    let shutdown = term;
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
    shutdown.cancelled().await;
    grpc.step_down();
    let deposed = lost.as_ref().is_some_and(|lost| lost.is_cancelled());
    let close = async {
        orchestrator.tasks.close();
        orchestrator.tasks.wait().await;
        match Arc::try_unwrap(orchestrator) {
            Ok(mut orchestrator) => {
                // The lock is let go only once what is queued is committed: a standby
                // taking over earlier would make those writes fail.
                let leadership = orchestrator.take_leadership();
                // The content store holds a handle too: every handle must be gone for the
                // writer to finish.
                let store = orchestrator.store.clone();
                drop(orchestrator);
                store.close().await;
                drop(leadership);
            }
            Err(_) => {
                tracing::warn!("state still referenced at shutdown; the store closes on exit")
            }
        }
    };
    if deposed {
        // Nothing of this term can commit any more, and a task may wait on a database
        // that no longer answers: what has not ended soon is left to the exit.
        if tokio::time::timeout(ENDED_TERM_TASKS_WITHIN, close)
            .await
            .is_err()
        {
            tracing::warn!("tasks of the ended term still running; left behind");
        }
    } else {
        close.await;
    }
    if deposed {
        return Err(error::Error::Deposed(
            "its leadership term ended (the log says why); it stopped serving".into(),
        ));
    }
    Ok(())
}
