//! `ControllerPeer`: followers relay the machines they heard from to the
//! leader (see [`crate::cluster`]).

use crate::cluster::MAX_RELAYED_CONTACTS;
use crate::controller::Controller;
use fleetmig_proto::v1::{self, controller_peer_server::ControllerPeer};
use tonic::{Request, Response, Status};

/// Serves the other controllers.
pub struct PeerApi {
    /// The controller this adapter serves.
    pub controller: Controller,
    /// Who may call.
    pub access: super::access::Access,
}

#[tonic::async_trait]
impl ControllerPeer for PeerApi {
    async fn report_contacts(
        &self,
        request: Request<v1::ContactsRequest>,
    ) -> Result<Response<v1::ContactsAck>, Status> {
        self.access.controller(&request)?;
        let request = request.into_inner();
        if request.machine_ids.len() > MAX_RELAYED_CONTACTS {
            return Err(Status::invalid_argument(format!(
                "{} machine ids in one relay; at most {MAX_RELAYED_CONTACTS}",
                request.machine_ids.len()
            )));
        }
        let leader = self
            .controller
            .accept_relayed_contacts(&request.machine_ids);
        tracing::trace!(from = %request.controller_id, machines = request.machine_ids.len(), leader, "contacts relayed");
        Ok(Response::new(v1::ContactsAck { leader }))
    }
}
