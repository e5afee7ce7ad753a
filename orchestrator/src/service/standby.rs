//! What an orchestrator serves while another replica leads (the PostgreSQL store, several
//! orchestrators on one database): gRPC health, with the job and executor services
//! NOT_SERVING so a readiness probe sends traffic only to the leader, and UNAVAILABLE for
//! every other call, naming the leader. The leader's address is also in the reply's
//! `shoal-leader` metadata, for clients that follow it (`shoal::net::leader`). It is the
//! same server that serves the orchestrator once this replica leads ([`Switch`]), so a
//! client connected to a standby keeps its connection across the switch.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use shoal::net::leader::LEADER_HEADER;
use shoal::proto::executor_service_server::ExecutorServiceServer;
use shoal::proto::job_service_server::JobServiceServer;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::store::postgres::Leader;

/// The standby's health service: the process is alive (liveness probes check ""), but
/// serves no work.
pub async fn health()
-> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in [
        <JobServiceServer<super::jobs::JobApi> as NamedService>::NAME,
        <ExecutorServiceServer<super::executors::ExecutorApi> as NamedService>::NAME,
    ] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    health
}

/// Sends calls to the orchestrator's routes while they are set ([`GrpcServer::lead`]);
/// otherwise health checks to the standby's health service (`inner`) and everything
/// else an UNAVAILABLE naming the leader.
///
/// [`GrpcServer::lead`]: super::GrpcServer::lead
#[derive(Clone)]
pub struct Switch<S> {
    inner: S,
    live: Arc<RwLock<Option<Routes>>>,
    leader: watch::Receiver<Option<Leader>>,
}

impl Switch<()> {
    /// The layer that puts a switch in front of the standby's service.
    pub fn layer<S>(
        live: Arc<RwLock<Option<Routes>>>,
        leader: watch::Receiver<Option<Leader>>,
    ) -> impl tower::Layer<S, Service = Switch<S>> + Clone {
        tower::layer::layer_fn(move |inner| Switch {
            inner,
            live: live.clone(),
            leader: leader.clone(),
        })
    }
}

impl<S> tower::Service<http::Request<Body>> for Switch<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Infallible>>;

    /// Readiness is awaited in the call, on whichever service takes it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let routes = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(routes) = routes {
            return Box::pin(tower::ServiceExt::oneshot(routes, request));
        }
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(tower::ServiceExt::oneshot(self.inner.clone(), request));
        }
        let status = refusal(self.leader.borrow().as_ref());
        Box::pin(async move { Ok(status.into_http()) })
    }
}

/// The UNAVAILABLE a standby answers with, naming the leader if one is recorded.
pub fn refusal(leader: Option<&Leader>) -> tonic::Status {
    match leader.filter(|l| !l.address.is_empty()) {
        Some(leader) => {
            let mut status = tonic::Status::unavailable(format!(
                "this orchestrator is a standby: {} leads, at {} (leadership term {})",
                leader.holder, leader.address, leader.epoch
            ));
            if let Ok(address) = leader.address.parse() {
                status.metadata_mut().insert(LEADER_HEADER, address);
            }
            status
        }
        None => {
            let mut status = tonic::Status::unavailable(
                "this orchestrator is not serving yet: it is loading its state, or waiting to \
                 lead (no leader is recorded)",
            );
            // Empty: no leader to name, but clients with other addresses try those.
            status.metadata_mut().insert(
                LEADER_HEADER,
                tonic::metadata::MetadataValue::from_static(""),
            );
            status
        }
    }
}
