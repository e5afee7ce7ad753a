//! The gRPC services: thin shells that check requests, call into the cluster state or the
//! stores, and map errors to statuses in one place (`error.rs`).

mod executors;
mod jobs;
mod nodes;
mod storage;

use std::sync::Arc;

use shoal::proto::executor_service_server::ExecutorServiceServer;
use shoal::proto::job_service_server::JobServiceServer;
use shoal::proto::node_service_server::NodeServiceServer;
use shoal::proto::storage_service_server::StorageServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::Orchestrator;
use crate::error::{Error, Result};

pub use executors::ExecutorApi;
pub use jobs::JobApi;
pub use nodes::NodeApi;
pub use storage::StorageApi;

/// Largest gRPC message accepted (a chunk, a spec, a listing).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves every service, health and reflection on `listener` until `shutdown`.
pub async fn serve(
    orchestrator: Arc<Orchestrator>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<JobApi>>()
        .await;
    health_reporter
        .set_serving::<ExecutorServiceServer<ExecutorApi>>()
        .await;
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

    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            JobServiceServer::new(JobApi::new(orchestrator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            StorageServiceServer::new(StorageApi::new(orchestrator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(NodeServiceServer::new(NodeApi::new(orchestrator.clone())))
        .add_service(
            ExecutorServiceServer::new(ExecutorApi::new(orchestrator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
        .map_err(|e| Error::io("serving gRPC", std::io::Error::other(e)))
}

/// Parses a job id from a request, naming the field when it is malformed.
fn job_id(text: &str) -> Result<String> {
    text.parse::<shoal::ids::JobId>()
        .map(|id| id.to_string())
        .map_err(|_| Error::InvalidArgument(format!("job_id {text:?} is not a valid job id")))
}

/// Parses a CID from a request, naming the field when it is malformed.
fn cid(field: &str, text: &str) -> Result<shoal::cid::ContentId> {
    text.parse()
        .map_err(|e: shoal::Error| Error::InvalidArgument(format!("{field}: {e}")))
}
