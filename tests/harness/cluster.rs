//! The [`Cluster`]: a temporary directory, a controller process (or, for HA tests, an etcd
//! cluster and several controllers: see `ha.rs`), worker processes and generated machines,
//! all torn down when it drops.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use fleetmig_proto::v1::operator_service_client::OperatorServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::etcd::EtcdCluster;
use crate::ha::{HaController, NO_LEADER_HINT};
use crate::pki::TestPki;
use crate::process::{ChildProcess, LiveChildren, bin, log_tail};

/// Set (to anything) to keep every test's directory; it is also kept when a test fails.
const KEEP_DIRS_ENV: &str = "FLEETMIG_KEEP_TEST_DIRS";
/// How long a controller has to write its ready file.
const CONTROLLER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted controller may keep failing to bind its old address.
const REBIND_TIMEOUT: Duration = Duration::from_secs(15);

/// A test's fleet: one directory holding the controller's data, the machines and every
/// child's log (`logs/<name>.log`), and the processes running on it.
///
/// It runs either one controller on the embedded store ([`Cluster::start_controller`]) or,
/// for HA tests, an etcd cluster ([`Cluster::start_etcd`]) and several controllers sharing
/// it ([`Cluster::start_ha_controllers`]). Workers and storage nodes get every controller's
/// URL; operator calls go to the single controller or to the current leader.
///
/// Dropping it kills every child it started (workers included). When the test failed,
/// or [`KEEP_DIRS_ENV`] is set, the directory is kept and its path printed; after a
/// failure the tail of every log is printed too.
pub struct Cluster {
    dir: Option<TempDir>,
    root: PathBuf,
    live: LiveChildren,
    controller: Option<ControllerHandle>,
    /// Arguments the single controller was started with after the common ones (reused by
    /// [`Cluster::restart_controller`]).
    controller_args: Vec<OsString>,
    /// The etcd cluster of an HA test.
    pub(crate) etcd: Option<EtcdCluster>,
    /// The controllers of an HA test, by index (`controller-<i>`, `--controller-id c<i>`).
    pub(crate) ha: Vec<HaController>,
    /// Index into `ha` of the controller last found leading ([`NO_LEADER_HINT`]: none).
    pub(crate) leader_hint: AtomicUsize,
    /// The fleet's CA and certificates: every process talks mutual TLS.
    pub(crate) pki: TestPki,
}

/// How to start one controller process: where its files go and its own arguments.
#[derive(Debug, Clone)]
pub(crate) struct ControllerLaunch {
    /// Process and log name (`controller`, `controller-1`).
    pub(crate) name: String,
    /// Directory holding its `data/` and `ready` file.
    pub(crate) dir: PathBuf,
    /// Arguments after the common ones (`--store ...`, `--controller-id ...`).
    pub(crate) extra_args: Vec<OsString>,
}

/// A controller process started and not yet known to serve.
pub(crate) struct StartingController {
    child: ChildProcess,
    ready_file: PathBuf,
    data_dir: PathBuf,
    pki: TestPki,
}

impl StartingController {
    /// Waits until it serves; an error with its log tail when it exits or takes too long.
    pub(crate) async fn ready(mut self) -> Result<ControllerHandle, String> {
        let addr = wait_for_ready_file(&mut self.child, &self.ready_file).await?;
        let client = connect_operator(self.pki.admin(), &format!("https://{addr}")).await?;
        write_bootstrap_token(client.clone(), &self.pki).await?;
        Ok(ControllerHandle {
            addr,
            data_dir: self.data_dir,
            child: self.child,
            client,
        })
    }
}

/// The running controller.
#[derive(Debug)]
pub struct ControllerHandle {
    /// Address it serves on.
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// The process.
    pub child: ChildProcess,
    client: OperatorServiceClient<Channel>,
}

impl ControllerHandle {
    /// The URL workers and clients connect to.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// An operator API client connected to it.
    pub fn client(&self) -> OperatorServiceClient<Channel> {
        self.client.clone()
    }
}

/// A running (or killed) `fleetmig-worker agent`.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Root of the machine it manages.
    pub machine_root: PathBuf,
    /// The process.
    pub child: ChildProcess,
    name: String,
    controller_url: String,
    tls_args: Vec<OsString>,
    log_path: PathBuf,
    live: LiveChildren,
}

impl WorkerHandle {
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        name: String,
        machine_root: PathBuf,
        controller_url: String,
        tls_args: Vec<OsString>,
        extra_args: &[&str],
        log_path: PathBuf,
        live: LiveChildren,
    ) -> WorkerHandle {
        let mut args: Vec<OsString> = vec![
            "agent".into(),
            "--controller".into(),
            controller_url.clone().into(),
            "--machine-root".into(),
            machine_root.clone().into(),
        ];
        args.extend(tls_args.iter().cloned());
        args.extend(extra_args.iter().map(OsString::from));
        let child = ChildProcess::spawn(&name, &bin("fleetmig-worker"), &args, &log_path, &live);
        WorkerHandle {
            machine_root,
            child,
            name,
            controller_url,
            tls_args,
            log_path,
            live,
        }
    }

    /// Sends SIGKILL and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }

    /// Kills the worker (if running) and starts it again on the same machine with
    /// `extra_args` (the previous extra arguments are not reused).
    pub async fn restart(&mut self, extra_args: &[&str]) {
        self.kill().await;
        *self = WorkerHandle::spawn(
            self.name.clone(),
            self.machine_root.clone(),
            self.controller_url.clone(),
            self.tls_args.clone(),
            extra_args,
            self.log_path.clone(),
            self.live.clone(),
        );
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

impl Cluster {
    /// An empty cluster in a new temporary directory.
    pub fn new() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("fleetmig-test-")
            .tempdir()
            .expect("cannot create the test directory");
        let root = dir.path().to_path_buf();
        for sub in ["logs", "machines"] {
            std::fs::create_dir_all(root.join(sub))
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", root.join(sub).display()));
        }
        let pki = TestPki::create(&root.join("pki"));
        Cluster {
            pki,
            dir: Some(dir),
            root,
            live: LiveChildren::default(),
            controller: None,
            controller_args: Vec::new(),
            etcd: None,
            ha: Vec::new(),
            leader_hint: AtomicUsize::new(NO_LEADER_HINT),
        }
    }

    /// The registry of live children, for handles spawned by other modules.
    pub(crate) fn live_children(&self) -> LiveChildren {
        self.live.clone()
    }

    /// The cluster's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the child `name` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }

    /// The running controller (of a cluster with one controller on the embedded store).
    ///
    /// # Panics
    /// When none was started (an HA cluster has [`Cluster::ha_controller`] and
    /// [`Cluster::operator`] instead).
    pub fn controller(&self) -> &ControllerHandle {
        self.controller.as_ref().expect(NO_CONTROLLER)
    }

    /// Whether a single controller (on the embedded store) was started.
    pub(crate) fn has_single_controller(&self) -> bool {
        self.controller.is_some()
    }

    /// The controller, mutably (to check on or kill its process).
    pub fn controller_mut(&mut self) -> &mut ControllerHandle {
        self.controller.as_mut().expect(NO_CONTROLLER)
    }

    /// The controller URL(s) workers and storage nodes are given: the single controller's,
    /// or every HA controller's, comma-separated, in index order.
    ///
    /// # Panics
    /// When no controller was started.
    pub fn controller_urls(&self) -> String {
        if let Some(controller) = &self.controller {
            return controller.url();
        }
        assert!(!self.ha.is_empty(), "{NO_CONTROLLER}");
        self.ha
            .iter()
            .map(HaController::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the controller on a free port, with short check-in, lease and heartbeat
    /// intervals, and waits until it serves.
    pub async fn start_controller(&mut self) -> &ControllerHandle {
        self.start_controller_with(&[]).await
    }

    /// [`Cluster::start_controller`] with `extra_args` appended (e.g.
    /// `--node-report-interval-ms 500`); a restart reuses them.
    pub async fn start_controller_with(&mut self, extra_args: &[&str]) -> &ControllerHandle {
        assert!(
            self.controller.is_none(),
            "the controller is already running"
        );
        assert!(
            self.ha.is_empty(),
            "this cluster runs HA controllers; it cannot also run a single one"
        );
        self.controller_args = extra_args.iter().map(OsString::from).collect();
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let launch = self.single_controller_launch();
        let handle = self
            .spawn_controller(&launch, listen)
            .ready()
            .await
            .unwrap_or_else(|message| panic!("{message}"));
        self.controller.insert(handle)
    }

    fn single_controller_launch(&self) -> ControllerLaunch {
        ControllerLaunch {
            name: "controller".to_owned(),
            dir: self.root.join("controller"),
            extra_args: self.controller_args.clone(),
        }
    }

    /// SIGKILLs the controller, waits for it to exit, and starts it again on the same
    /// address and data directory.
    pub async fn restart_controller(&mut self) -> &ControllerHandle {
        let mut old = self
            .controller
            .take()
            .expect("no controller to restart: call Cluster::start_controller first");
        old.child.kill().await;
        let addr = old.addr;
        drop(old);
        let launch = self.single_controller_launch();
        let handle = self.respawn_controller(&launch, addr).await;
        self.controller.insert(handle)
    }

    /// Starts the controller of `launch` again on `addr` (its old address), retrying while
    /// binding the old port fails.
    pub(crate) async fn respawn_controller(
        &self,
        launch: &ControllerLaunch,
        addr: SocketAddr,
    ) -> ControllerHandle {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.spawn_controller(launch, addr).ready().await {
                Ok(handle) => return handle,
                Err(message) if Instant::now() < deadline => {
                    eprintln!(
                        "harness: {} restart on {addr} failed, retrying: {message}",
                        launch.name
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(message) => panic!("cannot restart {} on {addr}: {message}", launch.name),
            }
        }
    }

    /// Starts the controller process of `launch` listening on `listen`, with short check-in,
    /// lease and heartbeat intervals; [`StartingController::ready`] waits until it serves.
    pub(crate) fn spawn_controller(
        &self,
        launch: &ControllerLaunch,
        listen: SocketAddr,
    ) -> StartingController {
        std::fs::create_dir_all(&launch.dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", launch.dir.display()));
        let data_dir = launch.dir.join("data");
        let ready_file = launch.dir.join("ready");
        match std::fs::remove_file(&ready_file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("cannot remove {}: {err}", ready_file.display()),
        }
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            listen.to_string().into(),
            "--data-dir".into(),
            data_dir.clone().into(),
            "--ready-file".into(),
            ready_file.clone().into(),
            "--checkin-interval-ms".into(),
            "200".into(),
            "--lease-ms".into(),
            "3000".into(),
            "--heartbeat-ms".into(),
            "500".into(),
        ];
        args.extend(self.pki.controller_args());
        args.extend(launch.extra_args.iter().cloned());
        let child = ChildProcess::spawn(
            &launch.name,
            &bin("fleetmig-controller"),
            &args,
            &self.log_path(&launch.name),
            &self.live,
        );
        StartingController {
            child,
            ready_file,
            data_dir,
            pki: self.pki.clone(),
        }
    }

    /// Starts `fleetmig-worker agent` for the machine at `machine_root`, connected to
    /// the controller (every controller of an HA cluster, see
    /// [`Cluster::controller_urls`]), with `extra_args` appended (e.g.
    /// `--fault-capture-delay-ms 5`).
    pub fn start_worker(&self, machine_root: &Path, extra_args: &[&str]) -> WorkerHandle {
        let machine = machine_root
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "machine".to_owned());
        let name = format!("worker-{machine}");
        WorkerHandle::spawn(
            name.clone(),
            machine_root.to_path_buf(),
            self.controller_urls(),
            self.pki.worker_args(),
            extra_args,
            self.log_path(&name),
            self.live.clone(),
        )
    }

    /// The fleet's CA and certificates.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The last lines of every child's log, for failure messages.
    pub fn all_log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.root.join("logs")) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        for path in paths {
            out.push_str(&format!("\n--- {}:{}", path.display(), log_tail(&path)));
        }
        out
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controller = None;
        self.ha.clear();
        self.etcd = None;
        self.live.kill_all();
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "harness: test failed; logs of the cluster in {}:{}",
                self.root.display(),
                self.all_log_tails()
            );
        }
        if failed || std::env::var_os(KEEP_DIRS_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("harness: kept the test directory {}", kept.display());
            }
        }
    }
}

/// What [`Cluster::controller`] says when there is no single controller.
const NO_CONTROLLER: &str = "no controller: call Cluster::start_controller first (an HA cluster \
                             has Cluster::ha_controller and Cluster::operator)";

/// Waits until `child` has written its address to `ready_file`; an error with its log
/// tail when it exits first or takes too long.
pub(crate) async fn wait_for_ready_file(
    child: &mut ChildProcess,
    ready_file: &Path,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + CONTROLLER_READY_TIMEOUT;
    loop {
        match std::fs::read_to_string(ready_file) {
            Ok(text) if text.ends_with('\n') => {
                return text.trim().parse().map_err(|err| {
                    format!(
                        "{} wrote {:?} to {}: {err}",
                        child.name(),
                        text.trim(),
                        ready_file.display()
                    )
                });
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot read {}: {err}", ready_file.display())),
        }
        if let Some(status) = child.try_exit() {
            return Err(format!(
                "{} exited ({status}) before writing {}; log {}:{}",
                child.name(),
                ready_file.display(),
                child.log_path().display(),
                child.log_tail()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not write {} within {:?}; log {}:{}",
                child.name(),
                ready_file.display(),
                CONTROLLER_READY_TIMEOUT,
                child.log_path().display(),
                child.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects an operator client to `url`, retrying until the server answers.
pub(crate) async fn connect_operator(
    transport: &fleetmig_auth::Transport,
    url: &str,
) -> Result<OperatorServiceClient<Channel>, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let endpoint = transport
        .endpoint(url)
        .map_err(|err| format!("controller url {url}: {err}"))?;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(OperatorServiceClient::new(channel)),
            Err(err) if Instant::now() < deadline => {
                eprintln!("harness: connecting to {url} failed, retrying: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(format!("cannot connect to the controller at {url}: {err}")),
        }
    }
}

/// Creates a bootstrap token for the workers (many uses, an hour) and keeps it in the
/// PKI directory, where every worker's `--bootstrap-token-file` points.
async fn write_bootstrap_token(
    mut client: OperatorServiceClient<Channel>,
    pki: &TestPki,
) -> Result<(), String> {
    // A new one at every controller start: a controller that lost its store no longer
    // knows the old one.
    let path = pki.token_file();
    let token = client
        .create_enrollment_token(fleetmig_proto::v1::CreateEnrollmentTokenRequest {
            uses: 100_000,
            ttl_secs: 3600,
        })
        .await
        .map_err(|status| format!("cannot create a bootstrap token: {status:?}"))?
        .into_inner()
        .token;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}
