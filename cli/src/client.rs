//! Connecting to the orchestrator.

use std::time::Duration;

use anyhow::Context as _;
use shoal::net::auth::AuthChannel;
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::node_service_client::NodeServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;

/// Largest message the CLI accepts.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Clients of every service over one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    pub jobs: JobServiceClient<AuthChannel>,
    pub storage: StorageServiceClient<AuthChannel>,
    pub nodes: NodeServiceClient<AuthChannel>,
}

/// Where the orchestrator is and how to prove ourselves to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http(s)://host:port`; a bare `host:port` means http.
    pub address: String,
    pub security: shoal::net::auth::ClientSecurity,
}

impl Target {
    /// A target with no token and no TLS (the devstack's own orchestrator).
    pub fn plain(address: &str) -> Self {
        Target {
            address: address.to_owned(),
            security: Default::default(),
        }
    }
}

/// Connects to the orchestrator at `target`, with its token and TLS settings.
pub async fn connect(target: &Target) -> anyhow::Result<Clients> {
    let address = &target.address;
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let bearer = target.security.bearer()?;
    let channel = target
        .security
        .endpoint(&url)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the orchestrator at {url} (set --orchestrator or SHOAL_ORCHESTRATOR)"
            )
        })?;
    let channel = AuthChannel::new(channel, bearer);
    Ok(Clients {
        jobs: JobServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        storage: StorageServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        nodes: NodeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
    })
}
