//! `OperatorService`: the thin tonic adapter for the CLI and dashboard.

use super::access::Access;
use super::convert;
use crate::controller::Controller;
use crate::model::Phase;
use fleetmig_auth::Role;
use fleetmig_proto::v1::{self, operator_service_server::OperatorService};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Serves operators.
pub struct OperatorApi {
    /// The controller this adapter serves.
    pub controller: Controller,
    /// Who may call.
    pub access: Access,
}

impl OperatorApi {
    fn wave_response(
        &self,
        wave: crate::Result<crate::model::Wave>,
    ) -> Result<Response<v1::WaveResponse>, Status> {
        let wave = wave?;
        Ok(Response::new(v1::WaveResponse {
            wave: Some(self.wave_summary(&wave.spec.name)?),
        }))
    }

    fn wave_summary(&self, name: &str) -> Result<v1::WaveSummary, Status> {
        let status = self.controller.status(Some(name))?;
        let view = status
            .waves
            .first()
            .ok_or_else(|| Status::not_found(format!("unknown wave {name}")))?;
        Ok(convert::wave_to_wire(view))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn validate_plan(
        &self,
        request: Request<v1::PlanRequest>,
    ) -> Result<Response<v1::ValidatePlanResponse>, Status> {
        self.access.operator(&request, Role::Viewer, "")?;
        let request = request.into_inner();
        let attachments = convert::attachments_from_wire(request.attachments)?;
        Ok(Response::new(
            match self
                .controller
                .validate_plan_with(&request.source, &attachments)
                .await?
            {
                Ok(parsed) => v1::ValidatePlanResponse {
                    valid: true,
                    problems: Vec::new(),
                    warnings: parsed
                        .warnings
                        .iter()
                        .map(convert::problem_to_wire)
                        .collect(),
                    plan: parsed.plan.name,
                    waves: parsed
                        .plan
                        .waves
                        .iter()
                        .map(|spec| v1::WaveSummary {
                            name: spec.name.clone(),
                            max_in_flight: spec.max_in_flight,
                            state: "valid".into(),
                            ..v1::WaveSummary::default()
                        })
                        .collect(),
                },
                Err(problems) => v1::ValidatePlanResponse {
                    valid: false,
                    problems: problems.iter().map(convert::problem_to_wire).collect(),
                    ..v1::ValidatePlanResponse::default()
                },
            },
        ))
    }

    async fn apply_plan(
        &self,
        request: Request<v1::PlanRequest>,
    ) -> Result<Response<v1::ApplyPlanResponse>, Status> {
        let actor = self.access.operator(&request, Role::Operator, "cli")?;
        let request = request.into_inner();
        let attachments = convert::attachments_from_wire(request.attachments)?;
        let parsed = self
            .controller
            .apply_plan_with(&request.source, &request.file_name, &actor, &attachments)
            .await?;
        let waves = parsed
            .plan
            .waves
            .iter()
            .map(|spec| self.wave_summary(&spec.name))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ApplyPlanResponse {
            plan: parsed.plan.name,
            waves,
            warnings: parsed
                .warnings
                .iter()
                .map(convert::problem_to_wire)
                .collect(),
        }))
    }

    async fn start_wave(
        &self,
        request: Request<v1::WaveRequest>,
    ) -> Result<Response<v1::WaveResponse>, Status> {
        let actor = self
            .access
            .operator(&request, Role::Operator, &request.get_ref().actor)?;
        let request = request.into_inner();
        let wave = self.controller.start_wave(&request.wave, &actor).await;
        self.wave_response(wave)
    }

    async fn pause_wave(
        &self,
        request: Request<v1::WaveRequest>,
    ) -> Result<Response<v1::WaveResponse>, Status> {
        let actor = self
            .access
            .operator(&request, Role::Operator, &request.get_ref().actor)?;
        let request = request.into_inner();
        let wave = self.controller.pause_wave(&request.wave, &actor).await;
        self.wave_response(wave)
    }

    async fn resume_wave(
        &self,
        request: Request<v1::WaveRequest>,
    ) -> Result<Response<v1::WaveResponse>, Status> {
        let actor = self
            .access
            .operator(&request, Role::Operator, &request.get_ref().actor)?;
        let request = request.into_inner();
        let wave = self.controller.resume_wave(&request.wave, &actor).await;
        self.wave_response(wave)
    }

    async fn abort_wave(
        &self,
        request: Request<v1::WaveRequest>,
    ) -> Result<Response<v1::WaveResponse>, Status> {
        let actor = self
            .access
            .operator(&request, Role::Operator, &request.get_ref().actor)?;
        let request = request.into_inner();
        let wave = self.controller.abort_wave(&request.wave, &actor).await;
        self.wave_response(wave)
    }

    async fn promote_wave(
        &self,
        request: Request<v1::WaveRequest>,
    ) -> Result<Response<v1::WaveResponse>, Status> {
        let actor = self
            .access
            .operator(&request, Role::Operator, &request.get_ref().actor)?;
        let request = request.into_inner();
        let wave = self.controller.promote_wave(&request.wave, &actor).await;
        self.wave_response(wave)
    }

    async fn retry_failed(
        &self,
        request: Request<v1::RetryFailedRequest>,
    ) -> Result<Response<v1::RetryFailedResponse>, Status> {
        let actor = self
            .access
            .operator(&request, Role::Operator, &request.get_ref().actor)?;
        let request = request.into_inner();
        let retry = self
            .controller
            .retry_failed(&request.wave, &actor, request.start)
            .await?;
        Ok(Response::new(v1::RetryFailedResponse {
            wave: Some(self.wave_summary(&retry.wave.spec.name)?),
            hostnames: retry.hostnames,
            excluded: retry
                .excluded
                .iter()
                .map(convert::exclusion_to_wire)
                .collect(),
        }))
    }

    async fn list_storage_nodes(
        &self,
        request: Request<v1::ListStorageNodesRequest>,
    ) -> Result<Response<v1::ListStorageNodesResponse>, Status> {
        self.access.operator(&request, Role::Viewer, "")?;
        Ok(Response::new(v1::ListStorageNodesResponse {
            nodes: self
                .controller
                .storage_node_views()
                .iter()
                .map(convert::node_to_wire)
                .collect(),
            under_replicated: self
                .controller
                .under_replicated()
                .iter()
                .map(convert::under_replicated_to_wire)
                .collect(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.access.operator(&request, Role::Viewer, "")?;
        let request = request.into_inner();
        let wave = (!request.wave.is_empty()).then_some(request.wave.as_str());
        let status = self.controller.status(wave)?;
        Ok(Response::new(v1::StatusResponse {
            waves: status.waves.iter().map(convert::wave_to_wire).collect(),
            jobs: status.jobs.iter().map(convert::job_to_wire).collect(),
            machines: status.machines as u32,
            storage_nodes: status.storage_nodes as u32,
            controller_id: self.controller.controller_id().to_string(),
            leader: self.controller.is_leader(),
            leader_endpoint: self
                .controller
                .known_leader()
                .map(|leader| leader.url)
                .unwrap_or_default(),
            epoch: self.controller.epoch(),
        }))
    }

    async fn list_machines(
        &self,
        request: Request<v1::ListMachinesRequest>,
    ) -> Result<Response<v1::ListMachinesResponse>, Status> {
        self.access.operator(&request, Role::Viewer, "")?;
        let request = request.into_inner();
        let wave = (!request.wave.is_empty()).then_some(request.wave.as_str());
        let phase = if request.state.is_empty() {
            None
        } else {
            Some(Phase::parse(&request.state).ok_or_else(|| {
                Status::invalid_argument(format!("unknown state {:?}", request.state))
            })?)
        };
        let machines = self.controller.machines(wave, phase)?;
        Ok(Response::new(v1::ListMachinesResponse {
            machines: machines.iter().map(convert::machine_to_wire).collect(),
        }))
    }

    async fn create_enrollment_token(
        &self,
        request: Request<v1::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<v1::EnrollmentToken>, Status> {
        let actor = self.access.operator(&request, Role::Admin, "")?;
        let request = request.into_inner();
        let uses = if request.uses == 0 { 1 } else { request.uses };
        let ttl = std::time::Duration::from_secs(if request.ttl_secs == 0 {
            3600
        } else {
            request.ttl_secs
        });
        let (token, expires_unix_ms) = self
            .controller
            .create_enrollment_token(uses, ttl, &actor)
            .await?;
        Ok(Response::new(v1::EnrollmentToken {
            token,
            expires_unix_ms,
            uses,
        }))
    }

    async fn approve_machine(
        &self,
        request: Request<v1::MachineRequest>,
    ) -> Result<Response<v1::MachineActionResponse>, Status> {
        let actor = self.access.operator(&request, Role::Admin, "")?;
        let machine_id = request.into_inner().machine_id;
        let detail = self.controller.approve_machine(&machine_id, &actor).await?;
        Ok(Response::new(v1::MachineActionResponse {
            machine_id,
            detail,
        }))
    }

    async fn revoke_machine(
        &self,
        request: Request<v1::MachineRequest>,
    ) -> Result<Response<v1::MachineActionResponse>, Status> {
        let actor = self.access.operator(&request, Role::Admin, "")?;
        let machine_id = request.into_inner().machine_id;
        let detail = self.controller.revoke_machine(&machine_id, &actor).await?;
        Ok(Response::new(v1::MachineActionResponse {
            machine_id,
            detail,
        }))
    }

    async fn list_pending_enrollments(
        &self,
        request: Request<v1::ListPendingEnrollmentsRequest>,
    ) -> Result<Response<v1::ListPendingEnrollmentsResponse>, Status> {
        self.access.operator(&request, Role::Viewer, "")?;
        let pending = self.controller.pending_enrollments().await?;
        Ok(Response::new(v1::ListPendingEnrollmentsResponse {
            pending: pending
                .into_iter()
                .map(|p| v1::PendingEnrollment {
                    machine_id: p.machine_id,
                    inventory: Some(convert::inventory_to_wire(&p.inventory)),
                    requested_unix_ms: p.requested_ms,
                    peer_address: p.peer_address,
                })
                .collect(),
        }))
    }

    async fn recover_migration(
        &self,
        request: Request<v1::RecoverMigrationRequest>,
    ) -> Result<Response<v1::RecoverMigrationResponse>, Status> {
        let actor = self.access.operator(&request, Role::Admin, "")?;
        let migration_id = request.into_inner().migration_id;
        let recovery = self.controller.recovery_information(&migration_id)?;
        self.controller
            .record_recovery(&migration_id, &actor)
            .await?;
        Ok(Response::new(recovery))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.access.operator(&request, Role::Viewer, "")?;
        let request = request.into_inner();
        let wave = request.wave;
        // Subscribe before replaying so nothing falls between the two.
        let mut live = self.controller.subscribe();
        let replay = if request.replay {
            self.controller
                .audit_log((!wave.is_empty()).then_some(wave.as_str()))
                .await?
        } else {
            Vec::new()
        };
        let stop_after_replay = request.replay && request.stop_after_replay;
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last_seq = 0;
            for event in replay {
                last_seq = event.seq;
                if sender
                    .send(Ok(convert::event_to_wire(&event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if stop_after_replay {
                return;
            }
            loop {
                let event = match live.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = sender
                            .send(Err(Status::data_loss(format!(
                                "event stream fell {missed} events behind; reconnect with replay"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if event.seq <= last_seq || !(wave.is_empty() || wave == event.wave) {
                    continue;
                }
                if sender
                    .send(Ok(convert::event_to_wire(&event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream: EventStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver));
        Ok(Response::new(stream))
    }
}
