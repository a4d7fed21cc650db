//! The tonic adapter: `fleetmig.v1.StorageNode` over [`CapacityProbe`], and
//! the one place capacity is converted to its wire form.

use fleetmig_proto::v1::storage_node_server::{StorageNode, StorageNodeServer};
use fleetmig_proto::v1::{CapacityReport, GetCapacityRequest};
use tonic::{Request, Response, Status};

use crate::capacity::{Capacity, CapacityProbe};

/// Wire form of a capacity measurement.
pub fn capacity_report(node_id: &str, capacity: Capacity) -> CapacityReport {
    CapacityReport {
        node_id: node_id.to_owned(),
        total_bytes: capacity.total_bytes,
        free_bytes: capacity.free_bytes,
        reserved_bytes: capacity.reserved_bytes,
        active_sessions: capacity.active_sessions,
        accepting_captures: capacity.accepting_captures,
    }
}

/// Serves `StorageNode` requests.
#[derive(Debug, Clone)]
pub struct StorageNodeService {
    node_id: String,
    probe: CapacityProbe,
}

impl StorageNodeService {
    /// A service answering for node `node_id`.
    pub fn new(node_id: String, probe: CapacityProbe) -> Self {
        Self { node_id, probe }
    }

    /// The tonic server for this service, with fleetmig's message-size limits.
    pub fn into_server(self) -> StorageNodeServer<Self> {
        StorageNodeServer::new(self)
            .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
            .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl StorageNode for StorageNodeService {
    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<CapacityReport>, Status> {
        let capacity = self.probe.measure().await?;
        Ok(Response::new(capacity_report(&self.node_id, capacity)))
    }
}
