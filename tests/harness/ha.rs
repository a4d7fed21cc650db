//! Several controllers sharing one etcd cluster: starting them, SIGKILL / SIGSTOP / SIGCONT
//! of one, and finding the leader by asking each live controller's `GetStatus`.
//!
//! Controller `i` is the process `controller-<i>` (log `logs/controller-<i>.log`, data in
//! `controller-<i>/data`, ready file `controller-<i>/ready`) started with
//! `--store <etcd> --controller-id c<i> --election-ttl-secs <ttl>` and the short check-in,
//! lease and heartbeat intervals of every test controller. Workers and storage nodes started
//! afterwards get every controller's URL ([`Cluster::controller_urls`]); operator calls go
//! to the current leader ([`Cluster::operator`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetmig_proto::v1::operator_service_client::OperatorServiceClient;
use fleetmig_proto::v1::{StatusRequest, StatusResponse};
use tonic::transport::Channel;

use crate::cluster::{Cluster, ControllerHandle, ControllerLaunch};

/// [`Cluster::leader_hint`] when no leader is known.
///
/// [`Cluster::leader_hint`]: crate::Cluster
pub(crate) const NO_LEADER_HINT: usize = usize::MAX;
/// Time allowed for one `GetStatus` asked of one controller: a stopped (SIGSTOP) process
/// accepts connections and never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an operator call waits for some controller to lead.
const OPERATOR_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first election of a new HA cluster may take.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// One controller of an HA cluster.
#[derive(Debug)]
pub struct HaController {
    /// Its index in the cluster.
    pub index: usize,
    /// Its `--controller-id` (`c<index>`); audit events it causes have the actor
    /// `controller:<id>`.
    pub id: String,
    /// The process (after a kill, the exited one until a restart), its address (kept
    /// across restarts) and an operator client.
    pub handle: ControllerHandle,
    launch: ControllerLaunch,
    killed: bool,
    paused: bool,
}

impl HaController {
    /// The URL workers and clients connect to.
    pub fn url(&self) -> String {
        self.handle.url()
    }

    /// Whether its process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        !self.killed
    }

    /// Whether it is stopped by SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.handle.child.log_path()
    }
}

/// The controller found leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Its index in the cluster.
    pub index: usize,
    /// Its controller id (`c<index>`), as its `GetStatus` reported it.
    pub controller_id: String,
    /// The epoch of its leadership term.
    pub epoch: u32,
    /// The leader endpoint it reported.
    pub endpoint: String,
}

/// What one controller answered to `GetStatus` (or why it did not).
#[derive(Debug, Clone)]
pub struct ControllerProbe {
    /// Its index in the cluster.
    pub index: usize,
    /// Its `--controller-id`.
    pub id: String,
    /// Its answer, or why there is none (killed, paused, error, timeout).
    pub status: Result<StatusResponse, String>,
}

impl ControllerProbe {
    /// One line: who it is and what it says about the leadership.
    pub fn describe(&self) -> String {
        match &self.status {
            Ok(status) => format!(
                "{} (as {:?}): {} epoch {} leader_endpoint {:?}",
                self.id,
                status.controller_id,
                if status.leader { "LEADER" } else { "follower" },
                status.epoch,
                status.leader_endpoint
            ),
            Err(reason) => format!("{}: {reason}", self.id),
        }
    }
}

/// Every probe, one line each, for failure messages.
pub fn describe_probes(probes: &[ControllerProbe]) -> String {
    probes
        .iter()
        .map(|probe| format!("\n    {}", probe.describe()))
        .collect()
}

impl Cluster {
    /// Starts `count` controllers against the etcd cluster ([`Cluster::start_etcd`] first),
    /// each with `--election-ttl-secs election_ttl_secs` (10 is the controller's default),
    /// waits until every one serves, and until one of them leads; returns the leader.
    ///
    /// # Panics
    /// When there is no etcd, a controller does not start, or none leads within 30 s.
    pub async fn start_ha_controllers(
        &mut self,
        count: usize,
        election_ttl_secs: u64,
    ) -> LeaderInfo {
        self.start_ha_controllers_with(count, election_ttl_secs, &[])
            .await
    }

    /// [`Cluster::start_ha_controllers`] with `extra_args` for every controller (reused by
    /// restarts).
    pub async fn start_ha_controllers_with(
        &mut self,
        count: usize,
        election_ttl_secs: u64,
        extra_args: &[&str],
    ) -> LeaderInfo {
        assert!(count > 0, "an HA cluster needs a controller");
        assert!(self.ha.is_empty(), "the HA controllers already run");
        assert!(
            !self.has_single_controller(),
            "this cluster runs a single controller; it cannot also run HA controllers"
        );
        let store = self.etcd().store_url();
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        // Start every process first: they may wait for each other (the store, the election).
        let mut starting = Vec::new();
        for index in 0..count {
            let id = format!("c{index}");
            let mut args: Vec<OsString> = vec![
                "--store".into(),
                store.clone().into(),
                "--controller-id".into(),
                id.clone().into(),
                "--election-ttl-secs".into(),
                election_ttl_secs.to_string().into(),
            ];
            args.extend(extra_args.iter().map(OsString::from));
            let launch = ControllerLaunch {
                name: format!("controller-{index}"),
                dir: self.root().join(format!("controller-{index}")),
                extra_args: args,
            };
            let process = self.spawn_controller(&launch, listen);
            starting.push((index, id, launch, process));
        }
        for (index, id, launch, process) in starting {
            let handle = process
                .ready()
                .await
                .unwrap_or_else(|message| panic!("controller {id} did not start: {message}"));
            self.ha.push(HaController {
                index,
                id,
                handle,
                launch,
                killed: false,
                paused: false,
            });
        }
        let leader = self.wait_for_leader(FIRST_LEADER_TIMEOUT).await;
        eprintln!(
            "harness: {count} controllers up ({}); {} leads, epoch {}",
            self.controller_urls(),
            leader.controller_id,
            leader.epoch
        );
        leader
    }

    /// The HA controllers, by index.
    pub fn ha_controllers(&self) -> &[HaController] {
        &self.ha
    }

    /// HA controller `index`.
    pub fn ha_controller(&self, index: usize) -> &HaController {
        self.ha.get(index).unwrap_or_else(|| {
            panic!(
                "no HA controller {index} (there are {}): call Cluster::start_ha_controllers",
                self.ha.len()
            )
        })
    }

    fn ha_controller_mut(&mut self, index: usize) -> &mut HaController {
        let count = self.ha.len();
        self.ha.get_mut(index).unwrap_or_else(|| {
            panic!(
                "no HA controller {index} (there are {count}): call Cluster::start_ha_controllers"
            )
        })
    }

    /// SIGKILLs controller `index` (paused or not) and waits until it is gone.
    pub async fn kill_controller(&mut self, index: usize) {
        let controller = self.ha_controller_mut(index);
        controller.handle.child.kill().await;
        controller.killed = true;
        controller.paused = false;
        self.forget_leader(index);
    }

    /// Kills controller `index` if it runs, and starts it again on the same address, data
    /// directory and arguments; waits until it serves.
    pub async fn restart_ha_controller(&mut self, index: usize) {
        self.kill_controller(index).await;
        let (launch, addr) = {
            let controller = self.ha_controller(index);
            (controller.launch.clone(), controller.handle.addr)
        };
        let handle = self.respawn_controller(&launch, addr).await;
        let controller = self.ha_controller_mut(index);
        controller.handle = handle;
        controller.killed = false;
    }

    /// SIGSTOPs controller `index`: it stays connected and answers nothing (nor renews its
    /// leadership) until [`Cluster::resume_controller`].
    pub fn pause_controller(&mut self, index: usize) {
        let controller = self.ha_controller_mut(index);
        assert!(
            !controller.killed,
            "controller {} was killed",
            controller.id
        );
        controller.handle.child.pause();
        controller.paused = true;
        self.forget_leader(index);
    }

    /// SIGCONTs controller `index`, paused by [`Cluster::pause_controller`].
    pub fn resume_controller(&mut self, index: usize) {
        let controller = self.ha_controller_mut(index);
        assert!(
            !controller.killed,
            "controller {} was killed",
            controller.id
        );
        controller.handle.child.resume();
        controller.paused = false;
    }

    /// `GetStatus` of controller `index` (every wave), within 2 s; an error when it was
    /// killed, is paused, fails or does not answer in time.
    pub async fn probe_controller(&self, index: usize) -> ControllerProbe {
        let controller = self.ha_controller(index);
        let status = if controller.killed {
            Err("killed".to_owned())
        } else if controller.paused {
            Err("paused (SIGSTOP)".to_owned())
        } else {
            probe(controller.handle.client()).await
        };
        ControllerProbe {
            index,
            id: controller.id.clone(),
            status,
        }
    }

    /// [`Cluster::probe_controller`] of every HA controller, asked concurrently.
    pub async fn probe_controllers(&self) -> Vec<ControllerProbe> {
        let mut asked = Vec::new();
        for controller in &self.ha {
            let task = if controller.killed || controller.paused {
                None
            } else {
                Some(tokio::spawn(probe(controller.handle.client())))
            };
            asked.push((controller.index, controller.id.clone(), task));
        }
        let mut probes = Vec::new();
        for (index, id, task) in asked {
            let status = match task {
                None if self.ha[index].killed => Err("killed".to_owned()),
                None => Err("paused (SIGSTOP)".to_owned()),
                Some(task) => match task.await {
                    Ok(status) => status,
                    Err(err) => Err(format!("probe task failed: {err}")),
                },
            };
            probes.push(ControllerProbe { index, id, status });
        }
        probes
    }

    /// The live controller that says it leads (the highest epoch if several still say
    /// so), or every controller's answer when none does.
    pub async fn find_leader(&self) -> Result<LeaderInfo, String> {
        let probes = self.probe_controllers().await;
        let leader = probes
            .iter()
            .filter_map(|probe| {
                let status = probe.status.as_ref().ok()?;
                status.leader.then(|| LeaderInfo {
                    index: probe.index,
                    controller_id: status.controller_id.clone(),
                    epoch: status.epoch,
                    endpoint: status.leader_endpoint.clone(),
                })
            })
            .max_by_key(|leader| leader.epoch);
        match leader {
            Some(leader) => {
                self.leader_hint.store(leader.index, Ordering::Relaxed);
                Ok(leader)
            }
            None => Err(format!("no controller leads:{}", describe_probes(&probes))),
        }
    }

    /// Waits until a live controller leads; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> LeaderInfo {
        crate::operator::wait_for(
            async || self.find_leader().await,
            timeout,
            "a controller to lead",
        )
        .await
    }

    /// Waits until a live controller other than `old.index` leads with an epoch above
    /// `old.epoch`; returns it. Polls every 50 ms, for failover timings.
    pub async fn wait_for_new_leader(&self, old: &LeaderInfo, timeout: Duration) -> LeaderInfo {
        let started = Instant::now();
        loop {
            let probes = self.probe_controllers().await;
            let found = probes.iter().find_map(|probe| {
                let status = probe.status.as_ref().ok()?;
                (probe.index != old.index && status.leader && status.epoch > old.epoch).then(|| {
                    LeaderInfo {
                        index: probe.index,
                        controller_id: status.controller_id.clone(),
                        epoch: status.epoch,
                        endpoint: status.leader_endpoint.clone(),
                    }
                })
            });
            if let Some(leader) = found {
                self.leader_hint.store(leader.index, Ordering::Relaxed);
                return leader;
            }
            if started.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting for a controller other than {} to lead \
                     with an epoch above {}; last observed:{}",
                    old.controller_id,
                    old.epoch,
                    describe_probes(&probes)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An operator client of the single controller, or of the controller leading an HA
    /// cluster (waiting up to 30 s for one to lead).
    ///
    /// # Panics
    /// When there is no controller, or no leader within that time.
    pub async fn operator(&self) -> OperatorServiceClient<Channel> {
        self.try_operator()
            .await
            .unwrap_or_else(|message| panic!("{message}"))
    }

    /// [`Cluster::operator`], with an error instead of a panic when no controller leads.
    pub async fn try_operator(&self) -> Result<OperatorServiceClient<Channel>, String> {
        if self.ha.is_empty() {
            return Ok(self.controller().client());
        }
        let hint = self.leader_hint.load(Ordering::Relaxed);
        if let Some(controller) = self.ha.get(hint)
            && !controller.killed
            && !controller.paused
            && probe(controller.handle.client())
                .await
                .is_ok_and(|status| status.leader)
        {
            return Ok(controller.handle.client());
        }
        let deadline = Instant::now() + OPERATOR_LEADER_TIMEOUT;
        loop {
            match self.find_leader().await {
                Ok(leader) => return Ok(self.ha[leader.index].handle.client()),
                Err(message) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no controller to send an operator call to after \
                         {OPERATOR_LEADER_TIMEOUT:?}: {message}"
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn forget_leader(&self, index: usize) {
        let _ = self.leader_hint.compare_exchange(
            index,
            NO_LEADER_HINT,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// `GetStatus` (every wave) of `client`, within [`PROBE_TIMEOUT`].
async fn probe(mut client: OperatorServiceClient<Channel>) -> Result<StatusResponse, String> {
    let request = StatusRequest {
        wave: String::new(),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, client.get_status(request)).await {
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(status)) => Err(format!(
            "GetStatus failed: {:?}: {}",
            status.code(),
            status.message()
        )),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}
