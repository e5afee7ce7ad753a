//! NodeService: the executors the orchestrator knows, and taking them out of service
//! (cordon, uncordon, drain).

use std::sync::Arc;

use shoal::proto::node_service_server::NodeService;
use std::time::{Duration, SystemTime};

use shoal::proto::{
    CordonRequest, CordonResponse, DrainRequest, DrainResponse, GetNodeRequest, GetNodeResponse,
    ListNodesRequest, ListNodesResponse, UncordonRequest, UncordonResponse,
};
use tonic::{Request, Response, Status};

use crate::Orchestrator;

/// NodeService implementation.
#[derive(Debug, Clone)]
pub struct NodeApi(Arc<Orchestrator>);

impl NodeApi {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Self {
        NodeApi(orchestrator)
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.0.read(|c| c.nodes()).await;
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        let id = request.into_inner().node_id;
        let node = self.0.read(|c| c.node(&id)).await?;
        Ok(Response::new(GetNodeResponse { node: Some(node) }))
    }

    async fn cordon(
        &self,
        request: Request<CordonRequest>,
    ) -> Result<Response<CordonResponse>, Status> {
        let id = request.into_inner().node_id;
        let node = self.0.apply(|c| c.set_cordoned(&id, true)).await?;
        tracing::info!(executor_id = id, "cordoned");
        Ok(Response::new(CordonResponse { node: Some(node) }))
    }

    async fn uncordon(
        &self,
        request: Request<UncordonRequest>,
    ) -> Result<Response<UncordonResponse>, Status> {
        let id = request.into_inner().node_id;
        let node = self.0.apply(|c| c.set_cordoned(&id, false)).await?;
        tracing::info!(executor_id = id, "uncordoned");
        Ok(Response::new(UncordonResponse { node: Some(node) }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let request = request.into_inner();
        let id = request.node_id;
        let grace = match request.grace {
            None => Duration::ZERO,
            Some(grace) => Duration::try_from(grace).map_err(|_| {
                Status::from(crate::error::Error::InvalidArgument(
                    "grace must not be negative".into(),
                ))
            })?,
        };
        self.0.apply(|c| c.set_cordoned(&id, true)).await?;
        let running = self.0.read(|c| c.running_on(&id)).await;
        tracing::info!(executor_id = id, running, ?grace, "draining");
        // Executions end by themselves within the grace period; check a few times a second.
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && self.0.read(|c| c.running_on(&id)).await > 0
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.0.shutdown_token().cancelled() => {
                    return Err(Status::from(crate::error::Error::ShuttingDown));
                }
            }
        }
        let reason = format!(
            "drained: still running after the {} grace period",
            shoal::spec::units::format_duration(grace)
        );
        let evicted = self
            .0
            .apply(|c| Ok(c.evict(&id, &reason, SystemTime::now())))
            .await?;
        let node = self.0.read(|c| c.node(&id)).await?;
        tracing::info!(executor_id = id, evicted, "drained");
        Ok(Response::new(DrainResponse {
            node: Some(node),
            finished: (running.saturating_sub(evicted)) as u32,
            evicted: evicted as u32,
        }))
    }
}
