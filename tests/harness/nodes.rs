//! Storage nodes as child processes, registered with the cluster's controller(s).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::{CapacityReport, GetCapacityRequest};

use crate::cluster::{Cluster, wait_for_ready_file};
use crate::pki::TestPki;
use crate::process::{ChildProcess, LiveChildren, bin};

/// How long a restarted node may take to get its old port back.
const REBIND_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `fleetmig-storage-node`.
#[derive(Debug)]
pub struct StorageNodeHandle {
    /// Name used for its directory and log.
    pub name: String,
    /// Site it serves.
    pub site: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Address it serves on (kept across restarts).
    pub addr: SocketAddr,
    /// The process.
    pub child: ChildProcess,
    controller_url: String,
    log_path: PathBuf,
    live: LiveChildren,
    pki: TestPki,
}

/// Everything needed to (re)start a node process.
struct Launch {
    name: String,
    site: String,
    data_dir: PathBuf,
    listen: SocketAddr,
    controller_url: String,
    log_path: PathBuf,
    live: LiveChildren,
    pki: TestPki,
}

impl StorageNodeHandle {
    async fn spawn(launch: Launch, extra_args: &[&str]) -> Result<StorageNodeHandle, String> {
        let Launch {
            name,
            site,
            data_dir,
            listen,
            controller_url,
            log_path,
            live,
            pki,
        } = launch;
        let (name, site) = (name.as_str(), site.as_str());
        let ready_file = data_dir.with_extension("ready");
        let _ = std::fs::remove_file(&ready_file);
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            listen.to_string().into(),
            "--data-dir".into(),
            data_dir.clone().into(),
            "--controller".into(),
            controller_url.clone().into(),
            "--site".into(),
            site.into(),
            "--ready-file".into(),
            ready_file.clone().into(),
        ];
        args.extend(pki.storage_args());
        args.extend(extra_args.iter().map(OsString::from));
        let mut child = ChildProcess::spawn(
            &format!("node-{name}"),
            &bin("fleetmig-storage-node"),
            &args,
            &log_path,
            &live,
        );
        let addr = wait_for_ready_file(&mut child, &ready_file).await?;
        Ok(StorageNodeHandle {
            name: name.to_string(),
            site: site.to_string(),
            data_dir,
            addr,
            child,
            controller_url,
            log_path,
            live,
            pki,
        })
    }

    /// The node's gRPC address.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Sends SIGKILL and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }

    /// Kills the node (if running) and starts it again on the same address and
    /// data directory with `extra_args`.
    pub async fn restart(&mut self, extra_args: &[&str]) {
        self.kill().await;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            let launch = Launch {
                name: self.name.clone(),
                site: self.site.clone(),
                data_dir: self.data_dir.clone(),
                listen: self.addr,
                controller_url: self.controller_url.clone(),
                log_path: self.log_path.clone(),
                live: self.live.clone(),
                pki: self.pki.clone(),
            };
            match StorageNodeHandle::spawn(launch, extra_args).await {
                Ok(handle) => {
                    *self = handle;
                    return;
                }
                Err(message) if Instant::now() < deadline => {
                    eprintln!(
                        "harness: node restart on {} failed, retrying: {message}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(message) => panic!("cannot restart node {}: {message}", self.name),
            }
        }
    }

    /// The chunk files the node holds (`chunks/<2 hex>/<id>`), by id.
    pub fn chunk_files(&self) -> Vec<(String, PathBuf)> {
        chunk_files(&self.data_dir)
    }

    /// Bytes of the chunk files the node holds (checksum headers included): what it stores
    /// after dedup.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_files()
            .iter()
            .map(|(_, path)| {
                std::fs::metadata(path)
                    .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
                    .len()
            })
            .sum()
    }

    /// The node's own capacity report (`GetCapacity`, which needs no token).
    ///
    /// # Panics
    /// When the node does not answer.
    pub async fn capacity(&self) -> CapacityReport {
        let endpoint = self
            .pki
            .admin()
            .endpoint(&self.url())
            .unwrap_or_else(|err| panic!("node url {}: {err}", self.url()));
        let mut client = endpoint
            .connect()
            .await
            .map(StorageNodeClient::new)
            .unwrap_or_else(|err| {
                panic!(
                    "cannot connect to node {} at {}: {err}",
                    self.name,
                    self.url()
                )
            });
        match client.get_capacity(GetCapacityRequest {}).await {
            Ok(response) => response.into_inner(),
            Err(status) => panic!(
                "GetCapacity on node {} failed: {:?}: {}",
                self.name,
                status.code(),
                status.message()
            ),
        }
    }
}

/// The chunk files under a node data directory, sorted by id.
pub fn chunk_files(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(shards) = std::fs::read_dir(data_dir.join("chunks")) else {
        return found;
    };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                found.push((name, file.path()));
            }
        }
    }
    found.sort();
    found
}

impl Cluster {
    /// Starts storage node `name` at `site` on a free port, registered with the
    /// controller (given every controller of an HA cluster, see
    /// [`Cluster::controller_urls`]), with `extra_args` appended; waits until it serves.
    pub async fn start_storage_node(
        &self,
        name: &str,
        site: &str,
        extra_args: &[&str],
    ) -> StorageNodeHandle {
        let data_dir = self.root().join("nodes").join(name);
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", data_dir.display()));
        let launch = Launch {
            name: name.to_string(),
            site: site.to_string(),
            data_dir,
            listen: "127.0.0.1:0".parse().expect("valid address"),
            controller_url: self.controller_urls(),
            log_path: self.log_path(&format!("node-{name}")),
            live: self.live_children(),
            pki: self.pki.clone(),
        };
        StorageNodeHandle::spawn(launch, extra_args)
            .await
            .unwrap_or_else(|message| panic!("{message}"))
    }
}
