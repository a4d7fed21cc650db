//! The agent loop: enroll, check in at the controller's pace, run the
//! assigned job with a heartbeat, report every phase, and pick a job up
//! again after a crash or a reimage.

use crate::client::{self, Backoff, Client, request};
use crate::config::AgentConfig;
use crate::enrollment::AgentTls;
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
    /// Connection to the controllers.
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
    /// Replace jobs: how long storage nodes are waited for.
    pub node_timings: crate::replace::NodeTimings,
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
        let ack = self
            .client
            .retry("report phase", &self.shutdown, |mut client| {
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
    tls: AgentTls,
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
        let csr_pem = self.tls.csr_pem()?;
        let mut enrollment = v1::EnrollRequest {
            protocol_version: fleetmig_proto::PROTOCOL_VERSION,
            machine_id: self.identity.machine_id.clone(),
            inventory: Some(inventory),
            bootstrap_token: self.tls.bootstrap_token()?,
            csr_pem,
        };
        let response = loop {
            let response = self
                .client
                .retry("enroll", &self.shutdown, |mut client| {
                    let enrollment = enrollment.clone();
                    async move { client.enroll(request(enrollment)).await }
                })
                .await?
                .into_inner();
            if response.machine_id != self.identity.machine_id {
                self.identity.machine_id = response.machine_id.clone();
                self.state.save_identity(&self.identity)?;
            }
            if !response.pending_approval {
                break response;
            }
            tracing::info!(machine_id = %self.identity.machine_id, "enrollment waits for an operator: fleetmig machines approve {}", self.identity.machine_id);
            enrollment.machine_id = self.identity.machine_id.clone();
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Error::Shutdown),
                () = tokio::time::sleep(Duration::from_millis(u64::from(response.checkin_interval_ms.clamp(200, 30_000)))) => {}
            }
        };
        if !response.certificate_pem.is_empty() {
            let transport = self.tls.install_certificate(&response.certificate_pem)?;
            self.client = Client::new(
                &self.config.controller,
                client::ClientOptions {
                    transport: transport.clone(),
                    ..client::ClientOptions::default()
                },
            )?;
            crate::transport::set_node_transport(transport);
            tracing::info!(machine_id = %self.identity.machine_id, "machine certificate installed");
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
            let (ticket, mut client) = self.client.pick();
            let call = async move { client.check_in(request(check_in)).await };
            let wait = match self.client.settle(ticket, call).await {
                Ok(response) => {
                    let response = response.into_inner();
                    match response.assignment {
                        Some(assignment) if self.is_stale(&assignment) => {
                            // A controller behind the others (or deposed) handed out an older
                            // assignment than this machine accepted: ask another one.
                            self.client.move_on(ticket, "it handed out a stale fence");
                            backoff.delay()
                        }
                        Some(assignment) => {
                            backoff =
                                Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                            self.run_assignment(assignment).await?;
                            continue;
                        }
                        None => {
                            backoff =
                                Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                            Duration::from_millis(u64::from(response.next_checkin_ms.max(50)))
                        }
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

    /// Whether `assignment` is older than one this machine already accepted for its job (the
    /// highest fences come from the journal, so this holds across restarts and controllers).
    fn is_stale(&self, assignment: &v1::Assignment) -> bool {
        let highest = self
            .fences
            .get(&assignment.job_id)
            .copied()
            .unwrap_or_default();
        let stale = assignment.fence < highest;
        if stale {
            tracing::warn!(job_id = %assignment.job_id, fence = assignment.fence, highest, "ignoring an assignment with a stale fence");
        }
        stale
    }

    /// Remembers the fence of an accepted assignment, durably when it is new.
    async fn accept(&mut self, assignment: &v1::Assignment) -> Result<()> {
        let known = self.fences.get(&assignment.job_id).copied();
        if known.is_some_and(|highest| highest >= assignment.fence) {
            return Ok(());
        }
        let (state, job_id, fence) = (
            self.state.clone(),
            assignment.job_id.clone(),
            assignment.fence,
        );
        let detail = format!(
            "phase:{} attempt:{}",
            fleetmig_proto::phase_name(
                JobPhase::try_from(assignment.phase).unwrap_or(JobPhase::Unspecified)
            ),
            assignment.attempt
        );
        tokio::task::spawn_blocking(move || {
            state.record(&job_id, fence, "assignment.accepted", detail)
        })
        .await
        .map_err(|err| Error::AgentState {
            path: self.state.dir(),
            reason: format!("journal task failed: {err}"),
        })??;
        self.fences
            .insert(assignment.job_id.clone(), assignment.fence);
        Ok(())
    }

    async fn run_assignment(&mut self, assignment: v1::Assignment) -> Result<()> {
        let job_id = assignment.job_id.clone();
        if self.is_stale(&assignment) {
            return Ok(());
        }
        self.accept(&assignment).await?;
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
            node_timings: crate::replace::NodeTimings::default(),
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

impl Agent {
    /// The agent of the machine at `config.machine_root`: its identity, and the highest fence
    /// it accepted per job, from the journal.
    fn new(config: AgentConfig, shutdown: CancellationToken) -> Result<Self> {
        let state = AgentState::open(&config.machine_root)?;
        let identity = state.identity()?;
        let fences = state.highest_fences()?;
        let tls = AgentTls::open(&config, &state)?;
        let client = Client::new(
            &config.controller,
            client::ClientOptions {
                transport: tls.transport.clone(),
                ..client::ClientOptions::default()
            },
        )?;
        crate::transport::set_node_transport(tls.transport.clone());
        let hook = match &config.reimage_command {
            Some(command) => ReimageHook::Command(command.clone()),
            None => ReimageHook::Simulated,
        };
        Ok(Agent {
            config,
            state,
            identity,
            client,
            tls,
            session: uuid::Uuid::new_v4().to_string(),
            fences,
            hook,
            shutdown,
        })
    }
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let mut agent = Agent::new(config, shutdown)?;
    tracing::info!(session = %agent.session, root = %agent.config.machine_root.display(), controllers = ?agent.config.controller, "worker agent starting");
    match agent.run().await {
        Err(Error::Shutdown) | Ok(()) => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_at(root: &std::path::Path) -> Agent {
        let config = AgentConfig {
            controller: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            machine_root: root.to_path_buf(),
            site: String::new(),
            labels: Vec::new(),
            reimage_command: None,
            fault_capture_delay_ms: None,
            fault_unreadable_name: None,
            ca: None,
            bootstrap_token_file: None,
            insecure_plaintext: true,
        };
        Agent::new(config, CancellationToken::new()).unwrap()
    }

    fn assignment(job_id: &str, fence: u64) -> v1::Assignment {
        v1::Assignment {
            job_id: job_id.into(),
            fence,
            phase: JobPhase::Assigned.into(),
            ..v1::Assignment::default()
        }
    }

    /// Fences hold across restarts, whichever controller hands out the assignment next.
    #[tokio::test]
    async fn accepted_fences_are_journaled_and_hold_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent_at(dir.path());
        assert!(!agent.is_stale(&assignment("j", 5)));
        agent.accept(&assignment("j", 5)).await.unwrap();
        agent.accept(&assignment("j", 5)).await.unwrap();
        assert!(agent.is_stale(&assignment("j", 4)));
        assert!(!agent.is_stale(&assignment("other", 1)));
        let accepted: Vec<_> = agent
            .state
            .journal()
            .unwrap()
            .into_iter()
            .filter(|entry| entry.event == "assignment.accepted")
            .collect();
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        assert_eq!((accepted[0].job_id.as_str(), accepted[0].fence), ("j", 5));

        let mut restarted = agent_at(dir.path());
        assert!(restarted.is_stale(&assignment("j", 4)));
        assert!(!restarted.is_stale(&assignment("j", 5)));
        assert!(!restarted.is_stale(&assignment("j", 6)));
        restarted.accept(&assignment("j", 6)).await.unwrap();
        assert_eq!(agent_at(dir.path()).fences["j"], 6);
    }
}
