//! Connecting to the orchestrator.

use std::time::Duration;

use anyhow::Context as _;
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::node_service_client::NodeServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

/// Largest message the CLI accepts.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Clients of every service over one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    pub jobs: JobServiceClient<Channel>,
    pub storage: StorageServiceClient<Channel>,
    pub nodes: NodeServiceClient<Channel>,
}

/// Connects to the orchestrator at `address` (`http://host:port`; `host:port` also works).
pub async fn connect(address: &str) -> anyhow::Result<Clients> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid orchestrator address {address:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the orchestrator at {url} (set --orchestrator or SHOAL_ORCHESTRATOR)"
            )
        })?;
    Ok(Clients {
        jobs: JobServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        storage: StorageServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        nodes: NodeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
    })
}
