//! `StorageRegistry`: storage nodes register and report capacity.

use crate::controller::Controller;
use crate::nodes::{Capacity, StorageNode};
use fleetmig_proto::v1::{self, storage_registry_server::StorageRegistry};
use tonic::{Request, Response, Status};

/// Serves storage nodes.
pub struct StorageRegistryApi {
    /// The controller this adapter serves.
    pub controller: Controller,
    /// Who may call.
    pub access: super::access::Access,
    /// Interval asked of nodes between capacity reports.
    pub report_interval_ms: u32,
}

fn capacity_from_wire(report: &v1::CapacityReport) -> Capacity {
    Capacity {
        total_bytes: report.total_bytes,
        free_bytes: report.free_bytes,
        reserved_bytes: report.reserved_bytes,
        active_sessions: report.active_sessions,
        accepting_captures: report.accepting_captures,
        available_bytes: report.available_bytes,
        stored_bytes: report.stored_bytes,
        migrations: report.migrations,
        reported_ms: crate::model::now_ms(),
    }
}

#[tonic::async_trait]
impl StorageRegistry for StorageRegistryApi {
    async fn register_node(
        &self,
        request: Request<v1::RegisterNodeRequest>,
    ) -> Result<Response<v1::RegisterNodeResponse>, Status> {
        self.access.storage_node(&request)?;
        let request = request.into_inner();
        let node = StorageNode {
            id: request.node_id,
            endpoint: request.endpoint,
            site: request.site,
            registered_ms: crate::model::now_ms(),
        };
        let capacity = request.capacity.as_ref().map(capacity_from_wire);
        self.controller.register_node(node, capacity).await?;
        Ok(Response::new(v1::RegisterNodeResponse {
            report_interval_ms: self.report_interval_ms,
            token_public_key: self
                .controller
                .settings()
                .secrets
                .signer()
                .public_key()
                .to_vec(),
        }))
    }

    async fn report_capacity(
        &self,
        request: Request<v1::CapacityReport>,
    ) -> Result<Response<v1::CapacityAck>, Status> {
        self.access.storage_node(&request)?;
        let request = request.into_inner();
        self.controller
            .report_capacity(&request.node_id, capacity_from_wire(&request))?;
        Ok(Response::new(v1::CapacityAck {}))
    }
}
