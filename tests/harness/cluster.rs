//! The [`Cluster`]: a temporary directory, a controller process, worker processes and
//! generated machines, all torn down when it drops.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmig_proto::v1::operator_service_client::OperatorServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

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
/// Dropping it kills every child it started (workers included). When the test failed,
/// or [`KEEP_DIRS_ENV`] is set, the directory is kept and its path printed; after a
/// failure the tail of every log is printed too.
pub struct Cluster {
    dir: Option<TempDir>,
    root: PathBuf,
    live: LiveChildren,
    controller: Option<ControllerHandle>,
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
        format!("http://{}", self.addr)
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
    log_path: PathBuf,
    live: LiveChildren,
}

impl WorkerHandle {
    fn spawn(
        name: String,
        machine_root: PathBuf,
        controller_url: String,
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
        args.extend(extra_args.iter().map(OsString::from));
        let child = ChildProcess::spawn(&name, &bin("fleetmig-worker"), &args, &log_path, &live);
        WorkerHandle {
            machine_root,
            child,
            name,
            controller_url,
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
        for sub in ["logs", "machines", "controller"] {
            std::fs::create_dir_all(root.join(sub))
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", root.join(sub).display()));
        }
        Cluster {
            dir: Some(dir),
            root,
            live: LiveChildren::default(),
            controller: None,
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

    /// The running controller.
    ///
    /// # Panics
    /// When none was started.
    pub fn controller(&self) -> &ControllerHandle {
        self.controller
            .as_ref()
            .expect("no controller: call Cluster::start_controller first")
    }

    /// The controller, mutably (to check on or kill its process).
    pub fn controller_mut(&mut self) -> &mut ControllerHandle {
        self.controller
            .as_mut()
            .expect("no controller: call Cluster::start_controller first")
    }

    /// Starts the controller on a free port, with short check-in, lease and heartbeat
    /// intervals, and waits until it serves.
    pub async fn start_controller(&mut self) -> &ControllerHandle {
        assert!(
            self.controller.is_none(),
            "the controller is already running"
        );
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let handle = self
            .spawn_controller(listen)
            .await
            .unwrap_or_else(|message| panic!("{message}"));
        self.controller.insert(handle)
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
        // Binding the old port may briefly fail; retry until it works.
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.spawn_controller(addr).await {
                Ok(handle) => return self.controller.insert(handle),
                Err(message) if Instant::now() < deadline => {
                    eprintln!("harness: controller restart on {addr} failed, retrying: {message}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(message) => panic!("cannot restart the controller on {addr}: {message}"),
            }
        }
    }

    async fn spawn_controller(&self, listen: SocketAddr) -> Result<ControllerHandle, String> {
        let data_dir = self.root.join("controller").join("data");
        let ready_file = self.root.join("controller").join("ready");
        match std::fs::remove_file(&ready_file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("cannot remove {}: {err}", ready_file.display()),
        }
        let args: Vec<OsString> = vec![
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
        let mut child = ChildProcess::spawn(
            "controller",
            &bin("fleetmig-controller"),
            &args,
            &self.log_path("controller"),
            &self.live,
        );
        let addr = wait_for_ready_file(&mut child, &ready_file).await?;
        let client = connect_operator(&format!("http://{addr}")).await?;
        Ok(ControllerHandle {
            addr,
            data_dir,
            child,
            client,
        })
    }

    /// Starts `fleetmig-worker agent` for the machine at `machine_root`, connected to
    /// the controller, with `extra_args` appended (e.g. `--fault-capture-delay-ms 5`).
    pub fn start_worker(&self, machine_root: &Path, extra_args: &[&str]) -> WorkerHandle {
        let machine = machine_root
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "machine".to_owned());
        let name = format!("worker-{machine}");
        WorkerHandle::spawn(
            name.clone(),
            machine_root.to_path_buf(),
            self.controller().url(),
            extra_args,
            self.log_path(&name),
            self.live.clone(),
        )
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
async fn connect_operator(url: &str) -> Result<OperatorServiceClient<Channel>, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match OperatorServiceClient::connect(url.to_owned()).await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() < deadline => {
                eprintln!("harness: connecting to {url} failed, retrying: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(format!("cannot connect to the controller at {url}: {err}")),
        }
    }
}
