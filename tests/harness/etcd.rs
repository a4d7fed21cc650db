//! A real etcd cluster for the HA tests: three (or any number of) members on free loopback
//! ports, with their data under `<cluster>/etcd/` and their logs in `logs/etcd-m<i>.log`,
//! killed with the [`Cluster`]. One member can be killed and restarted on its data.
//!
//! The binary is `$FLEETMIG_ETCD` or `etcd` on `PATH` (Debian's `etcd-server` 3.4, which
//! `scripts/setup.sh` installs). Without it the test fails, saying so: CI installs etcd, and
//! an HA test that silently skipped would prove nothing.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::Cluster;
use crate::process::{ChildProcess, LiveChildren, log_tail};

/// etcd's `--max-txn-ops`: fleetmig's store needs 1024 operations per transaction.
pub const ETCD_MAX_TXN_OPS: u32 = 1024;
/// How long the members may take to elect a leader and answer `/health`.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried before giving up (another process may take a port picked as free).
const START_ATTEMPTS: usize = 3;
/// Time allowed for one `/health` request.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd's raft heartbeat and election timeout, in ms: twice the defaults, so that a
/// loaded two-core machine running dozens of processes does not make the members
/// re-elect among themselves (that is not what the tests are about).
const HEARTBEAT_MS: u32 = 200;
const ELECTION_TIMEOUT_MS: u32 = 2000;

/// The message of a test that needs etcd where none is installed.
const ETCD_MISSING: &str = "the HA tests need a real etcd (3.4+), and none was found: neither \
    $FLEETMIG_ETCD nor `etcd` on PATH. Run `bash scripts/setup.sh` (it installs Debian's \
    etcd-server), or set FLEETMIG_ETCD to an etcd binary";

/// The etcd binary the tests run: `$FLEETMIG_ETCD`, else `etcd` on `PATH`.
///
/// # Panics
/// When there is none, saying to run `scripts/setup.sh`.
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEETMIG_ETCD") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FLEETMIG_ETCD is {}, which is not a file; {ETCD_MISSING}",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{ETCD_MISSING}"))
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    /// Its name in the cluster (`m0`, `m1`, ...).
    pub name: String,
    /// Port it serves clients on (the controllers' `--store` lists these).
    pub client_port: u16,
    /// Port it talks to the other members on.
    pub peer_port: u16,
    /// Its data directory (kept across a restart).
    pub data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<ChildProcess>,
}

impl EtcdMember {
    /// Its client URL.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Whether its process runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

/// A running etcd cluster; every member is killed when it drops (and with its
/// [`Cluster`], which holds it).
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<EtcdMember>,
    /// `--initial-cluster`: `m0=http://127.0.0.1:P,...`.
    initial_cluster: String,
    live: LiveChildren,
}

impl EtcdCluster {
    /// Starts `members` members under `dir` (data in `dir/m<i>`), logging to
    /// `logs_dir/etcd-m<i>.log`, and waits until every one answers `/health` as healthy.
    ///
    /// # Panics
    /// When etcd is not installed (saying to run `scripts/setup.sh`), or does not come up.
    pub(crate) async fn start(
        dir: &Path,
        logs_dir: &Path,
        members: usize,
        live: &LiveChildren,
    ) -> EtcdCluster {
        assert!(members > 0, "an etcd cluster needs a member");
        let binary = etcd_binary();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports = match free_ports(2 * members) {
                Ok(ports) => ports,
                Err(message) => {
                    failures.push(message);
                    continue;
                }
            };
            let members: Vec<EtcdMember> = (0..members)
                .map(|i| {
                    let name = format!("m{i}");
                    let data_dir = dir.join(&name);
                    // A failed attempt may have left a half-initialised member behind.
                    match std::fs::remove_dir_all(&data_dir) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(err) => panic!("cannot remove {}: {err}", data_dir.display()),
                    }
                    EtcdMember {
                        log_path: logs_dir.join(format!("etcd-{name}.log")),
                        name,
                        client_port: ports[2 * i],
                        peer_port: ports[2 * i + 1],
                        data_dir,
                        child: None,
                    }
                })
                .collect();
            let initial_cluster = members
                .iter()
                .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            let mut cluster = EtcdCluster {
                binary: binary.clone(),
                members,
                initial_cluster,
                live: live.clone(),
            };
            // Every member must run before any can have a quorum.
            for index in 0..cluster.members.len() {
                cluster.spawn_member(index);
            }
            let mut outcome = Ok(());
            for index in 0..cluster.members.len() {
                outcome = cluster.wait_healthy(index, ETCD_READY_TIMEOUT).await;
                if outcome.is_err() {
                    break;
                }
            }
            match outcome {
                Ok(()) => {
                    eprintln!(
                        "harness: etcd cluster of {} members up: {}",
                        cluster.members.len(),
                        cluster.store_url()
                    );
                    return cluster;
                }
                Err(message) => {
                    eprintln!("harness: etcd start attempt {attempt} failed: {message}");
                    failures.push(message);
                    cluster.kill_all().await;
                }
            }
        }
        panic!(
            "etcd ({}) did not start in {START_ATTEMPTS} attempts:\n{}",
            binary.display(),
            failures.join("\n---\n")
        );
    }

    /// The members, by index.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// The `--store` URL of the controllers: `etcd://127.0.0.1:P0,127.0.0.1:P1,...`, every
    /// member (killed ones included: clients fail over among them).
    pub fn store_url(&self) -> String {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .map(|member| format!("127.0.0.1:{}", member.client_port))
            .collect();
        format!("etcd://{}", endpoints.join(","))
    }

    /// SIGKILLs member `index` and waits until it is gone; its data stays.
    pub async fn kill_member(&mut self, index: usize) {
        let member = &mut self.members[index];
        if let Some(mut child) = member.child.take() {
            child.kill().await;
        }
    }

    /// Starts the killed member `index` again on its ports and data, and waits until it
    /// answers `/health` as healthy (it rejoined and the cluster has a leader).
    ///
    /// # Panics
    /// When it is running, or does not come back within 30 s.
    pub async fn restart_member(&mut self, index: usize) {
        assert!(
            !self.members[index].is_running(),
            "etcd member {} is running; kill it first",
            self.members[index].name
        );
        self.spawn_member(index);
        if let Err(message) = self.wait_healthy(index, ETCD_READY_TIMEOUT).await {
            panic!(
                "etcd member {} did not restart: {message}",
                self.members[index].name
            );
        }
    }

    /// Whether member `index` answers `/health` with `{"health":"true"}` right now.
    pub async fn is_healthy(&self, index: usize) -> bool {
        health(self.members[index].client_port).await.is_ok()
    }

    fn spawn_member(&mut self, index: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let member = &mut self.members[index];
        assert!(
            member.child.is_none(),
            "etcd member {} already runs",
            member.name
        );
        let client = member.client_url();
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let args: Vec<OsString> = vec![
            format!("--name={}", member.name).into(),
            format!("--data-dir={}", member.data_dir.display()).into(),
            format!("--listen-client-urls={client}").into(),
            format!("--advertise-client-urls={client}").into(),
            format!("--listen-peer-urls={peer}").into(),
            format!("--initial-advertise-peer-urls={peer}").into(),
            format!("--initial-cluster={initial_cluster}").into(),
            // Ignored once the data directory exists (a restart rejoins).
            "--initial-cluster-state=new".into(),
            "--initial-cluster-token=fleetmig-test".into(),
            format!("--max-txn-ops={ETCD_MAX_TXN_OPS}").into(),
            format!("--heartbeat-interval={HEARTBEAT_MS}").into(),
            format!("--election-timeout={ELECTION_TIMEOUT_MS}").into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ];
        let child = ChildProcess::spawn(
            &format!("etcd-{}", member.name),
            &self.binary,
            &args,
            &member.log_path,
            &self.live,
        );
        member.child = Some(child);
    }

    /// Waits until member `index` is healthy; an error with its log tail when it exits or
    /// `timeout` passes.
    async fn wait_healthy(&mut self, index: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let member = &mut self.members[index];
        loop {
            let last = match health(member.client_port).await {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            let Some(child) = member.child.as_mut() else {
                return Err(format!("etcd member {} is not running", member.name));
            };
            if let Some(status) = child.try_exit() {
                member.child = None;
                return Err(format!(
                    "etcd member {} exited ({status}); log {}:{}",
                    member.name,
                    member.log_path.display(),
                    member.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd member {} not healthy after {timeout:?} (last: {last}); log {}:{}",
                    member.name,
                    member.log_path.display(),
                    member.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill_member(index).await;
        }
    }
}

/// `GET /health` on the member serving clients on `port`: `Ok` when it says
/// `{"health":"true"}` (it has a leader and serves reads), else what it answered.
async fn health(port: u16) -> Result<(), String> {
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|err| format!("connect: {err}"))?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|err| format!("send: {err}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|err| format!("receive: {err}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(HEALTH_REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| format!("no answer within {HEALTH_REQUEST_TIMEOUT:?}"))??;
    let compact: String = response.split_whitespace().collect();
    if compact.contains(r#""health":"true""#) {
        Ok(())
    } else {
        let body = response.split("\r\n\r\n").nth(1).unwrap_or(&response);
        Err(format!("answered {:?}", body.trim()))
    }
}

/// `count` distinct loopback ports that were free a moment ago (all bound at once, so no
/// two are the same).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("cannot find a free port: {err}"))?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|addr| addr.port())
                .map_err(|err| format!("cannot find a free port: {err}"))
        })
        .collect()
}

impl Cluster {
    /// Starts an etcd cluster of `members` members for this test (data in
    /// `<root>/etcd/m<i>`, logs in `logs/etcd-m<i>.log`) and waits until every member is
    /// healthy.
    ///
    /// # Panics
    /// When etcd is not installed (saying to run `scripts/setup.sh`), when it does not come
    /// up, or when this cluster already has one.
    pub async fn start_etcd(&mut self, members: usize) -> &EtcdCluster {
        assert!(self.etcd.is_none(), "this cluster already runs etcd");
        let dir = self.root().join("etcd");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let etcd = EtcdCluster::start(
            &dir,
            &self.root().join("logs"),
            members,
            &self.live_children(),
        )
        .await;
        self.etcd.insert(etcd)
    }

    /// The etcd cluster.
    ///
    /// # Panics
    /// When none was started ([`Cluster::start_etcd`]).
    pub fn etcd(&self) -> &EtcdCluster {
        self.etcd
            .as_ref()
            .expect("no etcd: call Cluster::start_etcd first")
    }

    /// The etcd cluster, mutably (to kill and restart a member).
    pub fn etcd_mut(&mut self) -> &mut EtcdCluster {
        self.etcd
            .as_mut()
            .expect("no etcd: call Cluster::start_etcd first")
    }
}
