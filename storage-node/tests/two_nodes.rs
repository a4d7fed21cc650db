//! Two real node processes: a migration committed on node A is replicated to
//! node B, which serves it to a restore byte for byte; a second Replicate
//! sends nothing; stale fences are refused, also after B is killed and
//! started again. The nodes get their controllers as a comma-separated list
//! in `FLEETMIG_CONTROLLER` and try to register with every one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleetmig_auth::TokenSigner;
use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::{
    self, CapabilityRole, CommitRequest, GetChunksRequest, GetManifestRequest, PutChunkRequest,
    ReplicateRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{SIGNER_SEED, TestChunk, WAIT, assert_refused, chunk, concat_ids, now_ms};

const MIGRATION: &str = "wave-7.pc-0042";
/// Nothing listens on these: registration keeps retrying both, harmlessly.
const CONTROLLERS: &str = "http://127.0.0.1:9, http://127.0.0.1:11";

/// A storage node process, killed on drop.
struct NodeProcess {
    child: Child,
    client: StorageNodeClient<Channel>,
    url: String,
    node_id: String,
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Starts the binary on `root/storage`, its log in `root/node.<run>.log`.
    async fn spawn(root: &Path, run: usize) -> Self {
        std::fs::create_dir_all(root).expect("root");
        let key = root.join("key.pub");
        std::fs::write(
            &key,
            hex::encode(TokenSigner::from_seed(SIGNER_SEED).public_key()),
        )
        .expect("key file");
        let ready = root.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = root.join(format!("node.{run}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fleetmig-storage-node"))
            .env("FLEETMIG_INSECURE_PLAINTEXT", "true")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(root.join("storage"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--token-public-key")
            .arg(&key)
            .env("FLEETMIG_CONTROLLER", CONTROLLERS)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start fleetmig-storage-node");
        let deadline = tokio::time::Instant::now() + WAIT;
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && text.ends_with('\n')
            {
                break text.trim().to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never became ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let url = format!("http://{addr}");
        let node_id = std::fs::read_to_string(root.join("storage/node-id"))
            .expect("node id")
            .trim()
            .to_owned();
        Self {
            child,
            client: crate::support::connect(&url).await,
            url,
            node_id,
            log,
        }
    }

    /// A token for `role` on the migration at this node.
    fn token(&self, role: CapabilityRole, machine: &str, fence: u64) -> v1::SignedCapability {
        let now = now_ms();
        TokenSigner::from_seed(SIGNER_SEED).sign(&v1::Capability {
            machine_id: machine.to_owned(),
            migration_id: MIGRATION.to_owned(),
            node_id: self.node_id.clone(),
            role: role as i32,
            issued_unix_ms: now,
            expires_unix_ms: now + 60_000,
            fence,
        })
    }

    async fn replicate(
        &self,
        token: v1::SignedCapability,
        target: &NodeProcess,
    ) -> Result<v1::ReplicateResponse, tonic::Status> {
        self.client
            .clone()
            .replicate(ReplicateRequest {
                token: Some(token),
                target_endpoint: target.url.clone(),
                target_token: Some(target.token(CapabilityRole::Replicate, "", 0)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until the log has a line containing every one of `parts`.
    async fn wait_for_log(&self, parts: &[&str]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text
                .lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node never logged {parts:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Captures `chunks` on `node` as `pc-1` with `fence` and commits them.
async fn capture(node: &NodeProcess, chunks: &[TestChunk], manifest: &[u8], fence: u64) {
    let token = node.token(CapabilityRole::Capture, "pc-1", fence);
    let messages: Vec<PutChunkRequest> = chunks
        .iter()
        .enumerate()
        .map(|(n, c)| PutChunkRequest {
            token: (n == 0).then(|| token.clone()),
            chunk_id: c.id.to_vec(),
            checksum: c.checksum.to_vec(),
            data: c.data.clone(),
        })
        .collect();
    node.client
        .clone()
        .put_chunks(tokio_stream::iter(messages))
        .await
        .expect("put");
    let refs: Vec<_> = chunks.iter().collect();
    node.client
        .clone()
        .commit(CommitRequest {
            token: Some(token),
            manifest: manifest.to_vec(),
            chunk_ids: concat_ids(&refs),
            manifest_digest: blake3::hash(manifest).to_hex().to_string(),
            logical_bytes: 77_777,
        })
        .await
        .expect("commit");
}

/// What a restore reads from `node` with a RESTORE token of `fence`.
async fn restore(
    node: &NodeProcess,
    chunks: &[TestChunk],
    fence: u64,
) -> Result<(Vec<u8>, Vec<v1::ChunkData>), tonic::Status> {
    let token = node.token(CapabilityRole::Restore, "pc-2", fence);
    let manifest = node
        .client
        .clone()
        .get_manifest(GetManifestRequest {
            token: Some(token.clone()),
        })
        .await?
        .into_inner();
    assert_eq!(
        manifest.manifest_digest,
        blake3::hash(&manifest.manifest).to_hex().as_str()
    );
    let mut served = Vec::new();
    let refs: Vec<_> = chunks.iter().collect();
    for batch in refs.chunks(7) {
        let mut stream = node
            .client
            .clone()
            .get_chunks(GetChunksRequest {
                token: Some(token.clone()),
                chunk_ids: concat_ids(batch),
            })
            .await?
            .into_inner();
        while let Some(chunk) = stream.message().await? {
            served.push(chunk);
        }
    }
    Ok((manifest.manifest, served))
}

#[tokio::test]
async fn a_migration_replicated_between_two_processes_restores_from_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = NodeProcess::spawn(&dir.path().join("a"), 0).await;
    let b_root = dir.path().join("b");
    let b = NodeProcess::spawn(&b_root, 0).await;
    // Both controllers of the list are tried, each on its own.
    for controller in ["http://127.0.0.1:9", "http://127.0.0.1:11"] {
        a.wait_for_log(&["cannot register with controller", controller])
            .await;
    }

    // Large and small chunks, more than one PutChunks stream's worth
    // (replicate::STREAM_BYTES).
    let chunks: Vec<TestChunk> = (0..40)
        .map(|n| chunk(9000 + n, if n % 2 == 0 { 3500 << 10 } else { 70_000 }))
        .collect();
    assert!(
        chunks.iter().map(|c| c.data.len() as u64).sum::<u64>()
            > fleetmig_storage_node::replicate::STREAM_BYTES
    );
    let manifest = b"sealed manifest of wave-7.pc-0042".to_vec();
    capture(&a, &chunks, &manifest, 3).await;
    let sealed: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();

    let copied = a
        .replicate(a.token(CapabilityRole::Capture, "pc-1", 3), &b)
        .await
        .expect("replicate");
    assert_eq!(
        (
            copied.chunks,
            copied.chunks_sent,
            copied.bytes_sent,
            copied.already_committed
        ),
        (40, 40, sealed, false)
    );
    a.wait_for_log(&["replicated", MIGRATION, "chunks_sent=40"])
        .await;

    let (got_manifest, served) = restore(&b, &chunks, 4).await.expect("restore from B");
    assert_eq!(got_manifest, manifest);
    assert_eq!(served.len(), chunks.len());
    for (served, expected) in served.iter().zip(&chunks) {
        assert_eq!(served.chunk_id, expected.id);
        assert_eq!(served.data, expected.data, "bytes match");
    }

    let again = a
        .replicate(a.token(CapabilityRole::Capture, "pc-1", 3), &b)
        .await
        .expect("replicate again");
    assert_eq!(
        (again.chunks, again.chunks_sent, again.bytes_sent),
        (40, 0, 0)
    );
    assert!(again.already_committed);

    // A stale fence is refused on the source...
    assert_refused(
        a.replicate(a.token(CapabilityRole::Capture, "pc-1", 2), &b)
            .await,
        Code::FailedPrecondition,
        &[&format!(
            "stale fence 2 for migration {MIGRATION} (highest seen 3)"
        )],
    );
    // ...and on the replica, where the restore raised it to 4, also after a
    // SIGKILL and a new start.
    assert!(matches!(
        restore(&b, &chunks, 3).await,
        Err(status) if status.code() == Code::FailedPrecondition
            && status.message().contains("stale fence 3")
    ));
    drop(b);
    let b = NodeProcess::spawn(&b_root, 1).await;
    let status = restore(&b, &chunks, 3).await.expect_err("still stale");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "stale fence 3 for migration {MIGRATION} (highest seen 4)"
        )),
        "{status:?}"
    );
    let (got_manifest, served) = restore(&b, &chunks, 4)
        .await
        .expect("the copy survived the kill");
    assert_eq!(got_manifest, manifest);
    assert_eq!(served.len(), chunks.len());
    let again = a
        .replicate(a.token(CapabilityRole::Replicate, "", 0), &b)
        .await
        .expect("the controller's replicate token on the source");
    assert_eq!(again.chunks_sent, 0);
    assert!(again.already_committed);
}
