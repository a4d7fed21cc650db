//! The agent loop: enroll, check in at the controller's pace, run the
//! assigned job with a heartbeat, report every phase, and pick a job up
//! again after a crash or a reimage.

use crate::client::{self, Backoff, Client, request, retry};
use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::hook::ReimageHook;
use crate::identity::{AgentState, Identity};
use crate::refresh;
use crate::telemetry::{self, JobRef, Snapshot};
use fleetmig_proto::v1::{self, JobPhase, Scenario};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything a job runner needs: where, which job, and how to report.
pub struct JobContext {
    /// The machine's agent state (root, journal, stores).
    pub state: AgentState,
    /// Connection to the controller.
    pub client: Client,
    /// This machine's id.
    pub machine_id: String,
    /// The job.
    pub job_id: String,
    /// Fence of this assignment.
    pub fence: u64,
    /// Phase the job was in when assigned.
    pub phase: JobPhase,
    /// Capture options from the plan.
    pub capture: v1::CaptureOptions,
    /// Replace jobs: the storage node, capability and keys for this job.
    pub replace: Option<v1::ReplaceTransfer>,
    /// Live progress, streamed by the heartbeat.
    pub progress: watch::Sender<Snapshot>,
    /// Fault-injection knobs (tests only).
    pub faults: Faults,
    /// Cancelled when the worker shuts down.
    pub shutdown: CancellationToken,
}

/// Fault-injection knobs for tests (see the worker's hidden `--fault-*` flags).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Delay after each captured file.
    pub capture_delay: Option<Duration>,
    /// Files with this name fail to capture as unreadable.
    pub unreadable_name: Option<String>,
}

impl JobContext {
    /// The capture options the plan asked for, with the capture selection compiled from its
    /// rule files. CPU work: call it on a blocking thread (the capture's own).
    pub fn capture_options(
        job_id: &str,
        migration_id: String,
        capture: &v1::CaptureOptions,
        faults: &Faults,
    ) -> Result<fleetmig_state::CaptureOptions> {
        let mut options = fleetmig_state::CaptureOptions::new(migration_id);
        options.continue_on_error = capture.continue_on_error;
        options.include_users = capture.user_include.clone();
        options.exclude_users = capture.user_exclude.clone();
        options.selection = crate::rules::selection(job_id, &capture.rules)?;
        options.per_file_delay = faults.capture_delay;
        options.fault_unreadable_name = faults.unreadable_name.clone();
        Ok(options)
    }

    /// A report carrying this job's identity and fence.
    pub fn report_header(&self) -> v1::PhaseReport {
        v1::PhaseReport {
            job_id: self.job_id.clone(),
            fence: self.fence,
            machine_id: self.machine_id.clone(),
            ..v1::PhaseReport::default()
        }
    }

    /// Sends a phase report until the controller durably accepts it.
    pub async fn report(&self, report: v1::PhaseReport) -> Result<JobPhase> {
        let ack = retry("report phase", &self.shutdown, || {
            let mut client = self.client.clone();
            let report = report.clone();
            async move { client.report_phase(request(report)).await }
        })
        .await
        .map_err(|err| match err {
            Error::Controller(status) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!(job_id = %self.job_id, message = status.message(), "controller refused the report");
                Error::Superseded(self.job_id.clone())
            }
            other => other,
        })?;
        Ok(JobPhase::try_from(ack.into_inner().phase).unwrap_or(JobPhase::Unspecified))
    }

    /// Reports entering `phase` and waits for the durable acknowledgement.
    pub async fn enter(&self, phase: JobPhase) -> Result<JobPhase> {
        self.report(v1::PhaseReport {
            phase: phase.into(),
            ..self.report_header()
        })
        .await?;
        self.set_phase(phase);
        tracing::info!(job_id = %self.job_id, phase = fleetmig_proto::phase_name(phase), "phase entered");
        Ok(phase)
    }

    /// Appends to the machine's journal (an fsync, so off the async runtime).
    pub async fn record(&self, event: &str, detail: String) -> Result<()> {
        let (state, job_id, fence, event) = (
            self.state.clone(),
            self.job_id.clone(),
            self.fence,
            event.to_string(),
        );
        tokio::task::spawn_blocking(move || state.record(&job_id, fence, &event, detail))
            .await
            .map_err(|err| Error::AgentState {
                path: self.state.dir(),
                reason: format!("journal task failed: {err}"),
            })?
    }

    /// Resets the live progress for a new phase.
    pub fn set_phase(&self, phase: JobPhase) {
        self.progress.send_replace(Snapshot {
            phase: phase.into(),
            ..Snapshot::default()
        });
    }

    fn current_phase(&self) -> JobPhase {
        JobPhase::try_from(self.progress.borrow().phase).unwrap_or(self.phase)
    }
}

fn inventory(config: &AgentConfig, identity: &Identity) -> Result<v1::Inventory> {
    let info = fleetmig_state::detect(&config.machine_root)?;
    Ok(v1::Inventory {
        hostname: info.hostname,
        os_family: info.os_family,
        os_version: info.os_version,
        volume_id: info.volume_id,
        free_bytes: info.free_bytes,
        total_bytes: info.total_bytes,
        profiles: info
            .profiles
            .into_iter()
            .map(|p| v1::UserProfile {
                name: p.name,
                bytes: p.bytes,
                files: p.files,
                last_used_unix: p.last_used_unix,
            })
            .collect(),
        hardware_id: identity.hardware_id.clone(),
        supports_hard_links: info.supports_hard_links,
        site: config.site.clone(),
        labels: config.labels.iter().cloned().collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// The running agent.
struct Agent {
    config: AgentConfig,
    state: AgentState,
    identity: Identity,
    client: Client,
    session: String,
    /// Highest fence accepted per job: an older one is a stale controller.
    fences: HashMap<String, u64>,
    hook: ReimageHook,
    shutdown: CancellationToken,
}

impl Agent {
    async fn enroll(&mut self) -> Result<()> {
        let config = self.config.clone();
        let identity = self.identity.clone();
        let inventory = tokio::task::spawn_blocking(move || inventory(&config, &identity))
            .await
            .map_err(|err| Error::AgentState {
                path: self.config.machine_root.clone(),
                reason: format!("inventory task failed: {err}"),
            })??;
        let hostname = inventory.hostname.clone();
        let enrollment = v1::EnrollRequest {
            protocol_version: fleetmig_proto::PROTOCOL_VERSION,
            machine_id: self.identity.machine_id.clone(),
            inventory: Some(inventory),
            bootstrap_token: String::new(),
        };
        let response = retry("enroll", &self.shutdown, || {
            let mut client = self.client.clone();
            let enrollment = enrollment.clone();
            async move { client.enroll(request(enrollment)).await }
        })
        .await?
        .into_inner();
        if response.machine_id != self.identity.machine_id {
            self.identity.machine_id = response.machine_id;
            self.state.save_identity(&self.identity)?;
        }
        tracing::info!(machine_id = %self.identity.machine_id, %hostname, "enrolled");
        Ok(())
    }

    async fn run(&mut self) -> Result<()> {
        self.enroll().await?;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let check_in = v1::CheckInRequest {
                machine_id: self.identity.machine_id.clone(),
                session_id: self.session.clone(),
                current_job_id: String::new(),
                highest_fence: self.fences.values().copied().max().unwrap_or_default(),
                free_bytes: 0,
            };
            let mut client = self.client.clone();
            let wait = match client.check_in(request(check_in)).await {
                Ok(response) => {
                    backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                    let response = response.into_inner();
                    match response.assignment {
                        Some(assignment) => {
                            self.run_assignment(assignment).await?;
                            continue;
                        }
                        None => Duration::from_millis(u64::from(response.next_checkin_ms.max(50))),
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tracing::warn!("controller does not know this machine; enrolling again");
                    self.enroll().await?;
                    continue;
                }
                Err(status) if client::is_transient(&status) => {
                    let delay = backoff.delay();
                    tracing::debug!(code = ?status.code(), ?delay, "check-in failed; backing off");
                    delay
                }
                Err(status) => return Err(Error::Controller(status)),
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn run_assignment(&mut self, assignment: v1::Assignment) -> Result<()> {
        let job_id = assignment.job_id.clone();
        let highest = self.fences.get(&job_id).copied().unwrap_or_default();
        if assignment.fence < highest {
            tracing::warn!(%job_id, fence = assignment.fence, highest, "ignoring an assignment with a stale fence");
            return Ok(());
        }
        self.fences.insert(job_id.clone(), assignment.fence);
        let phase = JobPhase::try_from(assignment.phase).unwrap_or(JobPhase::Unspecified);
        tracing::info!(%job_id, fence = assignment.fence, attempt = assignment.attempt, phase = fleetmig_proto::phase_name(phase), "assignment received");
        let (progress, progress_rx) = watch::channel(Snapshot {
            phase: phase.into(),
            ..Snapshot::default()
        });
        let ctx = JobContext {
            state: self.state.clone(),
            client: self.client.clone(),
            machine_id: self.identity.machine_id.clone(),
            job_id: job_id.clone(),
            fence: assignment.fence,
            phase,
            capture: assignment.capture.clone().unwrap_or_default(),
            replace: assignment.replace.clone(),
            progress,
            faults: Faults {
                capture_delay: self
                    .config
                    .fault_capture_delay_ms
                    .map(Duration::from_millis),
                unreadable_name: self.config.fault_unreadable_name.clone(),
            },
            shutdown: self.shutdown.clone(),
        };
        let stop_heartbeat = self.shutdown.child_token();
        let heartbeat = tokio::spawn(telemetry::heartbeat(
            self.client.clone(),
            JobRef {
                machine_id: ctx.machine_id.clone(),
                job_id: job_id.clone(),
                fence: ctx.fence,
            },
            progress_rx,
            Duration::from_millis(u64::from(assignment.heartbeat_interval_ms.max(100))),
            stop_heartbeat.clone(),
        ));
        let result = match Scenario::try_from(assignment.scenario) {
            Ok(Scenario::Refresh) => refresh::run(&ctx, &self.hook).await,
            Ok(Scenario::Replace) => crate::replace::run(&ctx).await,
            _ => Err(Error::BadAssignment {
                job_id: job_id.clone(),
                reason: format!(
                    "scenario {} is not supported by this worker",
                    assignment.scenario
                ),
            }),
        };
        stop_heartbeat.cancel();
        let _ = heartbeat.await;
        match result {
            Ok(()) => {
                tracing::info!(%job_id, "job done");
                // The machine changed (new OS, profiles moved): tell the controller.
                self.enroll().await
            }
            Err(Error::Shutdown) => Err(Error::Shutdown),
            Err(Error::Superseded(job)) => {
                tracing::warn!(job_id = %job, "job superseded; dropping it");
                Ok(())
            }
            Err(err) => {
                let failed_in = ctx.current_phase();
                // Nothing destructive has happened before the reimage, so a
                // failed capture may simply be tried again.
                // A replace destination only writes new files, so its
                // restore may be tried again too.
                let retryable = matches!(failed_in, JobPhase::Assigned | JobPhase::Capturing)
                    || (assignment.scenario == Scenario::Replace as i32
                        && matches!(failed_in, JobPhase::Restoring | JobPhase::Verifying));
                tracing::error!(%job_id, error = %err, phase = fleetmig_proto::phase_name(failed_in), "job failed");
                ctx.record("job.failed", err.to_string()).await?;
                let report = v1::PhaseReport {
                    phase: JobPhase::Failed.into(),
                    failure: Some(v1::Failure {
                        phase: failed_in.into(),
                        reason: err.to_string(),
                        retryable,
                    }),
                    ..ctx.report_header()
                };
                match ctx.report(report).await {
                    Ok(_) | Err(Error::Superseded(_)) => Ok(()),
                    Err(other) => Err(other),
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let state = AgentState::open(&config.machine_root)?;
    let identity = state.identity()?;
    let fences = state.highest_fences()?;
    let client = client::connect_lazy(&config.controller)?;
    let hook = match &config.reimage_command {
        Some(command) => ReimageHook::Command(command.clone()),
        None => ReimageHook::Simulated,
    };
    let mut agent = Agent {
        config,
        state,
        identity,
        client,
        session: uuid::Uuid::new_v4().to_string(),
        fences,
        hook,
        shutdown,
    };
    tracing::info!(session = %agent.session, root = %agent.config.machine_root.display(), "worker agent starting");
    match agent.run().await {
        Err(Error::Shutdown) | Ok(()) => Ok(()),
        Err(err) => Err(err),
    }
}
