//! `WorkerService`: the thin tonic adapter over the controller's logic.

use super::access::Access;
use super::convert;
use crate::controller::Controller;
use crate::enrollment::EnrollOutcome;
use fleetmig_proto::v1::{self, worker_service_server::WorkerService};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Serves workers.
pub struct WorkerApi {
    /// The controller this adapter serves.
    pub controller: Controller,
    /// Who may call.
    pub access: Access,
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let caller = self.access.enroll_caller(&request)?;
        let request = request.into_inner();
        if request.protocol_version != fleetmig_proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker speaks protocol {}, controller speaks {}",
                request.protocol_version,
                fleetmig_proto::PROTOCOL_VERSION
            )));
        }
        let inventory = convert::inventory_from_wire(request.inventory)?;
        let outcome = self
            .controller
            .enroll_caller(
                caller,
                &request.machine_id,
                inventory,
                &request.bootstrap_token,
                &request.csr_pem,
            )
            .await?;
        let ca_pem = self.controller.trust().ca_pem();
        Ok(Response::new(match outcome {
            EnrollOutcome::Enrolled {
                machine_id,
                certificate_pem,
            } => {
                tracing::info!(%machine_id, certificate = certificate_pem.is_some(), "machine enrolled");
                v1::EnrollResponse {
                    machine_id,
                    checkin_interval_ms: 100,
                    certificate_pem: certificate_pem.unwrap_or_default(),
                    ca_pem,
                    pending_approval: false,
                }
            }
            EnrollOutcome::Pending { machine_id } => {
                tracing::info!(%machine_id, "enrollment waits for an operator's approval");
                v1::EnrollResponse {
                    machine_id,
                    checkin_interval_ms: 5_000,
                    certificate_pem: String::new(),
                    ca_pem,
                    pending_approval: true,
                }
            }
        }))
    }

    async fn check_in(
        &self,
        request: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        self.access
            .machine(&request, &request.get_ref().machine_id)?;
        let request = request.into_inner();
        let reply = self
            .controller
            .check_in(
                &request.machine_id,
                &request.session_id,
                &request.current_job_id,
            )
            .await?;
        let heartbeat = self.controller.settings().heartbeat_interval.as_millis() as u32;
        Ok(Response::new(v1::CheckInResponse {
            next_checkin_ms: reply.next_checkin.as_millis() as u32,
            assignment: reply.assignment.as_ref().map(|job| {
                let rules = self.controller.capture_rules(job);
                let mut assignment = convert::assignment_to_wire(job, &rules, heartbeat);
                assignment.replace = self.controller.replace_transfer(job, &request.machine_id);
                assignment
            }),
        }))
    }

    async fn report_phase(
        &self,
        request: Request<v1::PhaseReport>,
    ) -> Result<Response<v1::PhaseAck>, Status> {
        self.access
            .machine(&request, &request.get_ref().machine_id)?;
        let request = request.into_inner();
        let report = convert::report_from_wire(&request)?;
        let phase = self
            .controller
            .report(&request.machine_id, &request.job_id, request.fence, report)
            .await?;
        Ok(Response::new(v1::PhaseAck {
            phase: convert::phase_to_wire(phase).into(),
        }))
    }

    async fn stream_progress(
        &self,
        request: Request<Streaming<v1::ProgressUpdate>>,
    ) -> Result<Response<v1::ProgressSummary>, Status> {
        let guard = self.access.machine_guard(&request)?;
        let mut stream = request.into_inner();
        let mut received = 0;
        while let Some(update) = stream.next().await {
            let update = update?;
            guard.check(&update.machine_id)?;
            let progress = convert::progress_from_wire(&update)?;
            self.controller
                .progress(&update.machine_id, &update.job_id, update.fence, progress)?;
            received += 1;
        }
        Ok(Response::new(v1::ProgressSummary {
            updates_received: received,
        }))
    }
}
