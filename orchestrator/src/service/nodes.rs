//! NodeService: the executors the orchestrator knows.

use std::sync::Arc;

use shoal::proto::node_service_server::NodeService;
use shoal::proto::{GetNodeRequest, GetNodeResponse, ListNodesRequest, ListNodesResponse};
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
}
