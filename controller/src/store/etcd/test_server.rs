//! A real etcd process for tests: one member on free loopback ports with a temporary data
//! directory, killed when dropped.
//!
//! The binary is `$FLEETMIG_ETCD` or `etcd` on `PATH` (Debian's `etcd-server`, which
//! `scripts/setup.sh` installs). Without it, [`TestEtcd::start`] says so on stderr and returns
//! `None`, and the test returns early.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{EtcdConfig, EtcdStore, RECOMMENDED_MAX_TXN_OPS};

/// How long etcd may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried before giving up (another process may take a port we picked).
const START_ATTEMPTS: usize = 3;

/// A running etcd member; killed (and its data removed) on drop.
pub(crate) struct TestEtcd {
    binary: PathBuf,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl TestEtcd {
    /// Start etcd and wait until it answers, or `None` when the etcd binary is not installed.
    ///
    /// Panics when etcd is installed but does not come up: that is a failure, not a skip.
    pub(crate) async fn start() -> Option<TestEtcd> {
        let Some(binary) = etcd_binary() else {
            eprintln!(
                "SKIPPED: the etcd binary is not installed (run scripts/setup.sh, or set \
                 FLEETMIG_ETCD); etcd tests need a real etcd"
            );
            return None;
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let (client_port, peer_port) = match (free_port(), free_port()) {
                (Ok(client), Ok(peer)) => (client, peer),
                (Err(error), _) | (_, Err(error)) => {
                    failures.push(error);
                    continue;
                }
            };
            let mut etcd = TestEtcd {
                binary: binary.clone(),
                child: None,
                client_port,
                peer_port,
                dir,
            };
            match etcd.run(client_port).await {
                Ok(()) => return Some(etcd),
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "etcd ({}) did not start:\n{}",
            binary.display(),
            failures.join("\n---\n")
        );
    }

    /// Start the process serving clients on `client_port`, and wait until it answers.
    async fn run(&mut self, client_port: u16) -> Result<(), String> {
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| format!("log: {error}"))?;
        let log_err = log.try_clone().map_err(|error| format!("log: {error}"))?;
        let child = Command::new(&self.binary)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--max-txn-ops={RECOMMENDED_MAX_TXN_OPS}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|error| format!("spawn: {error}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log_tail()));
            }
            let mut config = EtcdConfig::new([endpoint.clone()]);
            config.connect_timeout = Duration::from_millis(500);
            config.request_timeout = Duration::from_millis(500);
            if EtcdStore::connect(config).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "not answering after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Settings for a store under a prefix no other store of this process uses.
    pub(crate) fn config(&self) -> EtcdConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        EtcdConfig::new([self.endpoint()]).with_cluster(&format!("test-{n}"))
    }

    /// Stop the process (as a crash would), keeping its data directory.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the stopped member again on its data, serving clients on `client_port` (its own
    /// port, or another one that its clients do not know).
    pub(crate) async fn restart_on(&mut self, client_port: u16) {
        self.kill();
        if let Err(failure) = self.run(client_port).await {
            panic!("etcd did not restart: {failure}");
        }
    }

    /// The client port the member was started with.
    pub(crate) fn client_port(&self) -> u16 {
        self.client_port
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The etcd binary to run, if one is installed.
fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEETMIG_ETCD") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|error| format!("free port: {error}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| format!("free port: {error}"))
}
