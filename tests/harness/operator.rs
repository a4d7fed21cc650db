//! The operator's view: plans, waves, status and the audit log over the operator API
//! (of the single controller, or of the current leader of an HA cluster: see
//! [`Cluster::operator`]), and [`wait_for`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleetmig_proto::v1::{
    ApplyPlanResponse, Event, JobPhase, JobStatus, ListMachinesRequest, ListStorageNodesRequest,
    ListStorageNodesResponse, MachineStatus, PlanRequest, StatusRequest, StatusResponse,
    WatchEventsRequest, WaveRequest, WaveResponse,
};

use crate::checks::describe_jobs;
use crate::cluster::Cluster;

/// Interval between two checks of a [`wait_for`] condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The audit log replay is over once no event arrived for this long.
const AUDIT_IDLE: Duration = Duration::from_millis(300);

/// Checks `condition` every 100 ms until it returns `Ok`, and returns that value.
///
/// `condition` returns `Err(state)` while the wait goes on, describing what it saw.
///
/// # Panics
/// After `timeout`, naming `what` and the last state observed.
pub async fn wait_for<T>(
    mut condition: impl AsyncFnMut() -> Result<T, String>,
    timeout: Duration,
    what: &str,
) -> T {
    let started = Instant::now();
    loop {
        let last = match condition().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if started.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A one-wave replace plan named `plan` over `(source, destination)` hostnames.
pub fn replace_plan(plan: &str, wave: &str, max_in_flight: u32, pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(source, destination)| {
            format!("  {{ source = {source:?}, destination = {destination:?} }},\n")
        })
        .collect();
    format!(
        "version = 1\n\
         name = {plan:?}\n\
         \n\
         [[waves]]\n\
         name = {wave:?}\n\
         scenario = \"replace\"\n\
         max_in_flight = {max_in_flight}\n\
         pairs = [\n{}]\n",
        pairs.concat()
    )
}

/// A one-wave refresh plan named `plan` over `hostnames`.
pub fn refresh_plan(plan: &str, wave: &str, max_in_flight: u32, hostnames: &[&str]) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|name| format!("{name:?}")).collect();
    format!(
        "version = 1\n\
         name = {plan:?}\n\
         \n\
         [[waves]]\n\
         name = {wave:?}\n\
         scenario = \"refresh\"\n\
         max_in_flight = {max_in_flight}\n\
         [waves.select]\n\
         hostnames = [{}]\n",
        hostnames.join(", ")
    )
}

/// Panics with `what` and the gRPC status.
fn expect_ok<T>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what} failed: {:?}: {}", status.code(), status.message()),
    }
}

impl Cluster {
    /// Applies the plan `source`.
    ///
    /// # Panics
    /// When the controller refuses it.
    pub async fn apply_plan(&self, source: &str) -> ApplyPlanResponse {
        let request = PlanRequest {
            source: source.to_owned(),
            file_name: "test-plan.toml".to_owned(),
            attachments: Default::default(),
        };
        expect_ok(
            self.operator().await.apply_plan(request).await,
            &format!("applying the plan\n{source}\n"),
        )
    }

    /// Starts the wave `name`.
    pub async fn start_wave(&self, name: &str) -> WaveResponse {
        let request = WaveRequest {
            wave: name.to_owned(),
            actor: "integration-test".to_owned(),
        };
        expect_ok(
            self.operator().await.start_wave(request).await,
            &format!("starting wave {name}"),
        )
    }

    /// Status of `wave` (all waves when empty), or the gRPC error.
    pub async fn try_status(&self, wave: &str) -> Result<StatusResponse, tonic::Status> {
        let request = StatusRequest {
            wave: wave.to_owned(),
        };
        let mut client = self
            .try_operator()
            .await
            .map_err(tonic::Status::unavailable)?;
        Ok(client.get_status(request).await?.into_inner())
    }

    /// Status of `wave` (all waves when empty).
    pub async fn status(&self, wave: &str) -> StatusResponse {
        match self.try_status(wave).await {
            Ok(status) => status,
            Err(status) => panic!(
                "status of wave {wave:?} failed: {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }

    /// Every enrolled machine.
    pub async fn machines(&self) -> Vec<MachineStatus> {
        let request = ListMachinesRequest::default();
        expect_ok(
            self.operator().await.list_machines(request).await,
            "listing machines",
        )
        .machines
    }

    /// The storage nodes and the under-replicated migrations, or the gRPC error.
    pub async fn try_storage_nodes(&self) -> Result<ListStorageNodesResponse, tonic::Status> {
        let mut client = self
            .try_operator()
            .await
            .map_err(tonic::Status::unavailable)?;
        Ok(client
            .list_storage_nodes(ListStorageNodesRequest {})
            .await?
            .into_inner())
    }

    /// Waits until every one of `hostnames` is enrolled; returns hostname -> machine id.
    pub async fn wait_for_enrolled(
        &self,
        hostnames: &[&str],
        timeout: Duration,
    ) -> BTreeMap<String, String> {
        wait_for(
            async || {
                let machines = self.machines().await;
                let ids: BTreeMap<String, String> = machines
                    .iter()
                    .filter_map(|machine| {
                        let inventory = machine.inventory.as_ref()?;
                        Some((inventory.hostname.clone(), machine.machine_id.clone()))
                    })
                    .collect();
                if hostnames.iter().all(|name| ids.contains_key(*name)) {
                    Ok(ids)
                } else {
                    Err(format!("enrolled: {:?}", ids.keys().collect::<Vec<_>>()))
                }
            },
            timeout,
            &format!("machines {hostnames:?} to enroll"),
        )
        .await
    }

    /// Waits until `wave` has `jobs` jobs, all DONE; returns the final status.
    ///
    /// # Panics
    /// At once when a job fails or is skipped, and after `timeout`; both with every
    /// job's status.
    pub async fn wait_for_all_done(
        &self,
        wave: &str,
        jobs: usize,
        timeout: Duration,
    ) -> StatusResponse {
        wait_for(
            async || {
                let status = match self.try_status(wave).await {
                    Ok(status) => status,
                    Err(err) => return Err(format!("status failed: {err}")),
                };
                let failed: Vec<&JobStatus> = status
                    .jobs
                    .iter()
                    .filter(|job| matches!(job.phase(), JobPhase::Failed | JobPhase::Skipped))
                    .collect();
                assert!(
                    failed.is_empty(),
                    "a job of wave {wave} did not succeed:{}",
                    describe_jobs(&status)
                );
                let done = status
                    .jobs
                    .iter()
                    .filter(|job| job.phase() == JobPhase::Done)
                    .count();
                if status.jobs.len() == jobs && done == jobs {
                    Ok(status)
                } else {
                    Err(describe_jobs(&status))
                }
            },
            timeout,
            &format!("all {jobs} jobs of wave {wave} to be done"),
        )
        .await
    }

    /// The stored audit log of `wave` (all waves when empty): `WatchEvents` with
    /// replay, read until no event arrives for a moment (the stream then follows live
    /// events, which are not wanted here).
    pub async fn audit_log(&self, wave: &str) -> Vec<Event> {
        let request = WatchEventsRequest {
            wave: wave.to_owned(),
            replay: true,
            stop_after_replay: true,
        };
        let mut stream = expect_ok(
            self.operator().await.watch_events(request).await,
            "watching events",
        );
        let mut events = Vec::new();
        // The first event may take a little longer to come than the gaps between them.
        let mut idle = AUDIT_IDLE * 5;
        loop {
            match tokio::time::timeout(idle, stream.message()).await {
                Err(_elapsed) => break,
                Ok(Ok(Some(event))) => events.push(event),
                Ok(Ok(None)) => break,
                Ok(Err(status)) => panic!(
                    "the audit log stream failed after {} events: {:?}: {}",
                    events.len(),
                    status.code(),
                    status.message()
                ),
            }
            idle = AUDIT_IDLE;
        }
        events
    }
}
