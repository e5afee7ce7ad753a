//! The gRPC services: thin shells that check requests, call into the cluster state or the
//! stores, and map errors to statuses in one place (`error.rs`).

pub mod executors;
mod jobs;
mod modules;
mod nodes;
mod shards;
pub mod standby;
mod storage;

use std::sync::Arc;

use shoal::proto::executor_service_server::ExecutorServiceServer;
use shoal::proto::job_service_server::JobServiceServer;
use shoal::proto::node_service_server::NodeServiceServer;
use shoal::proto::storage_service_server::StorageServiceServer;
use std::sync::RwLock;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::Orchestrator;
use crate::error::{Error, Result};
use crate::store::postgres::Leader;

pub use executors::ExecutorApi;
pub use jobs::JobApi;
pub use nodes::NodeApi;
pub use storage::StorageApi;

/// Largest gRPC message accepted (a chunk, a spec, a listing).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The gRPC server on the orchestrator's listener. It answers as a standby (see
/// [`standby`]) until [`lead`](Self::lead) hands it an orchestrator's routes, then serves
/// every service, health and reflection on the same connections (no reconnect, no GOAWAY
/// for clients that came early), until [`step_down`](Self::step_down) or `shutdown`.
pub struct GrpcServer {
    address: std::net::SocketAddr,
    live: Arc<RwLock<Option<Routes>>>,
    serving: tokio::task::JoinHandle<Result<()>>,
}

impl GrpcServer {
    /// Starts serving `listener`: `routes` if given, else as a standby (`leader` says who
    /// leads meanwhile) until [`lead`](Self::lead).
    pub async fn start(
        listener: TcpListener,
        config: &crate::Config,
        leader: watch::Receiver<Option<Leader>>,
        routes: Option<Routes>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("listener", e))?;
        let live = Arc::new(RwLock::new(routes));
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls_config(config)? {
            server = server
                .tls_config(tls)
                .map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?;
        }
        let switch = standby::Switch::layer(live.clone(), leader);
        let serving = server
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            // Sized for artifact uploads across a real network, not just loopback.
            .initial_stream_window_size(shoal::net::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(shoal::net::HTTP2_CONNECTION_WINDOW)
            .layer(tower::util::MapRequestLayer::new(
                |mut request: http::Request<tonic::body::Body>| {
                    let path = shoal::net::auth::CallPath(request.uri().path().to_owned());
                    request.extensions_mut().insert(path);
                    request
                },
            ))
            .layer(switch)
            .add_service(standby::health().await)
            // Without TCP_NODELAY a small response waits for the client's delayed ACK: 40 ms
            // added to every unary call (B3 measured it).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.cancelled_owned(),
            );
        let serving = tokio::spawn(async move {
            serving
                .await
                .map_err(|e| Error::io("serving gRPC", std::io::Error::other(e)))
        });
        Ok(GrpcServer {
            address,
            live,
            serving,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Serves `routes` (an orchestrator's) from now on.
    pub fn lead(&self, routes: Routes) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Some(routes);
    }

    /// Answers as a standby again (the orchestrator's term has ended).
    pub fn step_down(&self) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether it serves an orchestrator's routes.
    pub fn leads(&self) -> bool {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits until the server has stopped (at `shutdown`).
    pub async fn finish(self) -> Result<()> {
        self.serving
            .await
            .map_err(|e| Error::io("serving gRPC", std::io::Error::other(e)))?
    }
}

/// Every service, health and reflection, for `orchestrator`.
pub async fn routes(
    orchestrator: &Arc<Orchestrator>,
    shutdown: &CancellationToken,
) -> Result<Routes> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<JobApi>>()
        .await;
    health_reporter
        .set_serving::<ExecutorServiceServer<ExecutorApi>>()
        .await;
    // Health follows the store: NOT_SERVING while it cannot write (a full disk), so
    // probes and load balancers see it.
    let mut writes = orchestrator.store_writes();
    let reporter = health_reporter.clone();
    let health_shutdown = shutdown.clone();
    orchestrator.spawn(async move {
        use tonic_health::ServingStatus;
        loop {
            let status = if *writes.borrow_and_update() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <JobServiceServer<JobApi> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            reporter
                .set_service_status(
                    <ExecutorServiceServer<ExecutorApi> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            tokio::select! {
                _ = health_shutdown.cancelled() => return,
                changed = writes.changed() => if changed.is_err() { return },
            }
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shoal::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shoal::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;

    let config = orchestrator.config();
    let tokens = match &config.tokens_file {
        Some(path) => Some(
            shoal::net::auth::Tokens::load(path)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        ),
        None => {
            tracing::warn!("no --tokens-file: every caller may do everything (development only)");
            None
        }
    };
    let auth = shoal::net::auth::Authorizer::new(tokens, config.tls_client_ca.is_some());
    let mut routes = Routes::builder();
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            JobServiceServer::new(JobApi::new(orchestrator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            StorageServiceServer::new(StorageApi::new(orchestrator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            NodeServiceServer::new(NodeApi::new(orchestrator.clone())),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            ExecutorServiceServer::new(ExecutorApi::new(orchestrator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            auth.clone(),
        ));
    Ok(routes.routes())
}

/// The server's TLS settings: its certificate and key, and with `--tls-client-ca`, the CA
/// that executors' client certificates must chain to (clients may still connect without
/// one; the authorizer requires it of executors).
fn tls_config(config: &crate::Config) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        shoal::net::auth::read(p).map_err(|e| Error::InvalidArgument(e.to_string()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// Parses a job id from a request, naming the field when it is malformed.
fn job_id(text: &str) -> Result<String> {
    if full_job_id(text).is_err()
        && let Some(prefix) = job_id_prefix(text)
    {
        return Err(Error::InvalidArgument(format!(
            "job_id {prefix:?} is a prefix; this call needs the whole id"
        )));
    }
    full_job_id(text)
}

/// A job id as written: the whole id, or (for [`job_id_prefix`]) its first characters.
fn full_job_id(text: &str) -> Result<String> {
    text.parse::<shoal::ids::JobId>()
        .map(|id| id.to_string())
        .map_err(|_| {
            let shown = shoal::error::excerpt(text, 64);
            Error::InvalidArgument(format!("job_id {shown:?} is not a valid job id"))
        })
}

/// `text` as a job id prefix (4 to 35 characters of lowercase hex and '-'), if it is one.
fn job_id_prefix(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let shaped =
        (4..36).contains(&lower.len()) && lower.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    shaped.then_some(lower)
}

/// Parses a CID from a request, naming the field when it is malformed.
fn cid(field: &str, text: &str) -> Result<shoal::content::cid::ContentId> {
    text.parse()
        .map_err(|e: shoal::Error| Error::InvalidArgument(format!("{field}: {e}")))
}
