//! The real binary, killed with SIGKILL: every acknowledged upload and every
//! commit survives; an uncommitted capture stays uncommitted; a node killed
//! inside Commit leaves the migration either fully committed or not
//! restorable (issue 4), using the hidden `--fault-commit-pause-ms` flag to
//! stop Commit on either side of its commit point.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetmig_auth::TokenSigner;
use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::{
    self, CapabilityRole, CommitRequest, CommitResponse, GetChunksRequest, GetManifestRequest,
    MissingChunksRequest, PutChunkRequest, ReleaseRequest,
};
use fleetmig_storage_node::CommitStage;
use fleetmig_storage_node::layout::{Layout, MigrationId};
use fleetmig_storage_node::record::{MigrationRecord, MigrationState};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{
    SIGNER_SEED, TestChunk, WAIT, assert_refused, chunk, concat_ids, connect, list, now_ms,
};

/// The migration every test here captures.
const MIGRATION: &str = "mig-crash";

/// Distinguishes the log files of the processes a test starts.
static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// A storage node process, killed on drop.
struct Process {
    child: Child,
    client: StorageNodeClient<Channel>,
    /// The test's directory (the data directory is `storage/` in it).
    root: PathBuf,
    /// Where the process's log (stderr) goes.
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Sends SIGKILL and waits until the process is gone.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the node");
        let status = self.child.wait().expect("wait for the node");
        assert_eq!(
            status.signal(),
            Some(9),
            "the node died of SIGKILL: {status}"
        );
    }

    /// Waits until the log has a complete line containing every one of
    /// `parts` (the node is still running).
    async fn wait_for_log(&mut self, parts: &[&str]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Only complete lines: the last one may still be being written.
            let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            if complete
                .lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll the node") {
                panic!("the node exited ({status}) before logging {parts:?}:\n{text}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node never logged {parts:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Commit of `manifest` referencing `ids`, as the source.
    async fn commit(&self, manifest: &[u8], ids: &[u8]) -> Result<CommitResponse, Status> {
        self.client
            .clone()
            .commit(commit_request(&self.root, manifest, ids))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Release with a token for `role`.
    async fn release(&self, role: CapabilityRole) -> Result<v1::ReleaseResponse, Status> {
        self.client
            .clone()
            .release(ReleaseRequest {
                token: Some(token(&self.root, role)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetManifest with a restore token.
    async fn manifest(&self) -> Result<v1::GetManifestResponse, Status> {
        self.client
            .clone()
            .get_manifest(GetManifestRequest {
                token: Some(token(&self.root, CapabilityRole::Restore)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetChunks of `ids` with a restore token, collected; the first error
    /// ends it.
    async fn get_chunks(&self, ids: &[u8]) -> Result<Vec<v1::ChunkData>, Status> {
        let mut stream = self
            .client
            .clone()
            .get_chunks(GetChunksRequest {
                token: Some(token(&self.root, CapabilityRole::Restore)),
                chunk_ids: ids.to_vec(),
            })
            .await?
            .into_inner();
        let mut served = Vec::new();
        while let Some(chunk) = stream.message().await? {
            served.push(chunk);
        }
        Ok(served)
    }
}

async fn spawn(root: &Path) -> Process {
    spawn_with(root, &[]).await
}

/// Starts the binary on `root/storage` with `extra` flags, its log in
/// `root/node.<n>.log`.
async fn spawn_with(root: &Path, extra: &[&str]) -> Process {
    let ready = root.join("ready");
    let _ = std::fs::remove_file(&ready);
    let log = root.join(format!(
        "node.{}.log",
        SPAWNED.fetch_add(1, Ordering::Relaxed)
    ));
    let stderr = std::fs::File::create(&log).expect("create the log file");
    let child = Command::new(env!("CARGO_BIN_EXE_fleetmig-storage-node"))
        .env("FLEETMIG_INSECURE_PLAINTEXT", "true")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--controller",
            "http://127.0.0.1:9",
        ])
        .arg("--data-dir")
        .arg(root.join("storage"))
        .arg("--ready-file")
        .arg(&ready)
        .arg("--token-public-key")
        .arg(root.join("key.pub"))
        .args(extra)
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
            "node never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    Process {
        child,
        client: connect(&format!("http://{addr}")).await,
        root: root.to_owned(),
        log,
    }
}

fn token(root: &Path, role: CapabilityRole) -> v1::SignedCapability {
    let node_id = std::fs::read_to_string(root.join("storage/node-id")).expect("node id");
    let now = now_ms();
    TokenSigner::from_seed(SIGNER_SEED).sign(&v1::Capability {
        machine_id: "pc-1".into(),
        migration_id: MIGRATION.into(),
        node_id: node_id.trim().to_owned(),
        role: role as i32,
        issued_unix_ms: now,
        expires_unix_ms: now + 60_000,
        fence: 1,
    })
}

fn commit_request(root: &Path, manifest: &[u8], ids: &[u8]) -> CommitRequest {
    CommitRequest {
        token: Some(token(root, CapabilityRole::Capture)),
        manifest: manifest.to_vec(),
        chunk_ids: ids.to_vec(),
        manifest_digest: blake3::hash(manifest).to_hex().to_string(),
        logical_bytes: 4242,
    }
}

fn puts(root: &Path, chunks: &[TestChunk]) -> Vec<PutChunkRequest> {
    chunks
        .iter()
        .enumerate()
        .map(|(n, c)| PutChunkRequest {
            token: (n == 0).then(|| token(root, CapabilityRole::Capture)),
            chunk_id: c.id.to_vec(),
            checksum: c.checksum.to_vec(),
            data: c.data.clone(),
        })
        .collect()
}

#[tokio::test]
async fn a_killed_node_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = dir.path().to_owned();
    let signer = TokenSigner::from_seed(SIGNER_SEED);
    std::fs::write(root.join("key.pub"), hex::encode(signer.public_key())).expect("key file");
    let chunks: Vec<_> = (0..4).map(|n| chunk(700 + n, 512 * 1024)).collect();
    let refs: Vec<_> = chunks.iter().collect();
    let ids = concat_ids(&refs);

    let mut node = spawn(&root).await;
    let put = node
        .client
        .put_chunks(tokio_stream::iter(puts(&root, &chunks)))
        .await
        .expect("put")
        .into_inner();
    assert_eq!(put.stored, 4);
    drop(node); // SIGKILL

    let mut node = spawn(&root).await;
    let missing = node
        .client
        .missing_chunks(MissingChunksRequest {
            token: Some(token(&root, CapabilityRole::Capture)),
            chunk_ids: ids.clone(),
        })
        .await
        .expect("missing")
        .into_inner();
    assert!(
        missing.missing.is_empty(),
        "acknowledged chunks survive a kill"
    );
    let manifest = b"sealed manifest".to_vec();
    node.client
        .commit(CommitRequest {
            token: Some(token(&root, CapabilityRole::Capture)),
            manifest: manifest.clone(),
            chunk_ids: ids.clone(),
            manifest_digest: blake3::hash(&manifest).to_hex().to_string(),
            logical_bytes: 1,
        })
        .await
        .expect("commit");
    drop(node); // SIGKILL

    let mut node = spawn(&root).await;
    let released = node
        .client
        .release(ReleaseRequest {
            token: Some(token(&root, CapabilityRole::Capture)),
        })
        .await
        .expect("the commit survived: release works")
        .into_inner();
    assert_eq!(released.state, "sealed");
    let mut stream = node
        .client
        .get_chunks(GetChunksRequest {
            token: Some(token(&root, CapabilityRole::Restore)),
            chunk_ids: ids,
        })
        .await
        .expect("get chunks")
        .into_inner();
    let mut served = 0;
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert_eq!(chunk.data, chunks[served].data);
        served += 1;
    }
    assert_eq!(served, 4);
    assert!(
        std::fs::read_dir(root.join("storage/tmp"))
            .expect("tmp")
            .next()
            .is_none()
    );
}

/// What a restarted node holds of a migration whose Commit was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Committed: once the capture is released, the manifest and every chunk
    /// are served.
    Committed,
    /// Not committed: nothing is restorable until the source commits again.
    NotCommitted,
}

#[tokio::test]
async fn killed_before_the_commit_point_the_migration_is_not_restorable() {
    killed_inside_commit(CommitStage::BeforeRecordRename, Outcome::NotCommitted).await;
}

#[tokio::test]
async fn killed_after_the_commit_point_the_migration_is_fully_committed() {
    killed_inside_commit(CommitStage::AfterRecordRename, Outcome::Committed).await;
}

/// Uploads chunks, starts a Commit, SIGKILLs the node while the Commit is
/// paused at `stage`, restarts the node on the same data directory and
/// checks the migration is all or nothing, and `expected`.
async fn killed_inside_commit(stage: CommitStage, expected: Outcome) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = dir.path().to_owned();
    let signer = TokenSigner::from_seed(SIGNER_SEED);
    std::fs::write(root.join("key.pub"), hex::encode(signer.public_key())).expect("key file");
    let layout = Layout::new(&root.join("storage"));
    let id = MigrationId::parse(MIGRATION).expect("migration id");
    // Many shard directories; sizes from 17 bytes to about a megabyte.
    let chunks: Vec<_> = (0..40u64)
        .map(|n| chunk(900 + n, 17 + n as usize * 26_111))
        .collect();
    let refs: Vec<_> = chunks.iter().collect();
    let ids = concat_ids(&refs);
    let manifest = format!("sealed manifest of {MIGRATION}, killed at {stage}").into_bytes();
    let digest = blake3::hash(&manifest).to_hex().to_string();
    let summary = CommitResponse {
        referenced_bytes: chunks.iter().map(|c| c.data.len() as u64).sum(),
        chunks: 40,
    };

    // A pause far longer than the test: the kill lands inside it.
    let mut node = spawn_with(
        &root,
        &[
            "--fault-commit-pause-ms",
            "300000",
            "--fault-commit-pause-stage",
            stage.name(),
        ],
    )
    .await;
    let put = node
        .client
        .put_chunks(tokio_stream::iter(puts(&root, &chunks)))
        .await
        .expect("put")
        .into_inner();
    assert_eq!((put.stored, put.already_present), (40, 0));
    let mut client = node.client.clone();
    let request = commit_request(&root, &manifest, &ids);
    let commit = tokio::spawn(async move { client.commit(request).await });
    node.wait_for_log(&["commit paused (fault injection)", stage.name()])
        .await;

    // The node is inside the pause: the disk is where the stage says.
    let record = read_record(&layout, &id);
    match stage {
        CommitStage::BeforeRecordRename => {
            assert_eq!(record.state, MigrationState::Capturing, "{record:?}");
            assert_eq!(
                std::fs::read(layout.manifest_path(&id)).expect("manifest written"),
                manifest
            );
            let list = std::fs::metadata(layout.references_path(&id)).expect("chunk list written");
            assert_eq!(list.len(), 40 * 32);
        }
        CommitStage::AfterRecordRename => {
            assert_eq!(record.state, MigrationState::Committed, "{record:?}");
            let info = record.commit.expect("commit info");
            assert_eq!(
                (info.manifest_digest.as_str(), info.chunks),
                (digest.as_str(), 40)
            );
        }
    }
    node.kill();
    let answer = tokio::time::timeout(WAIT, commit)
        .await
        .expect("the Commit call ends with the node")
        .expect("commit task");
    answer.expect_err("the node died before answering the Commit");
    drop(node);

    let node = spawn(&root).await;
    // Startup emptied tmp/ and removed the files of a commit cut short.
    assert_eq!(list(&layout.tmp_dir()), Vec::<String>::new());
    let mut files = list(&layout.migrations_dir());
    files.sort();
    let kept: &[&str] = match expected {
        Outcome::Committed => &["mig-crash.chunks", "mig-crash.json", "mig-crash.manifest"],
        Outcome::NotCommitted => &["mig-crash.json"],
    };
    assert_eq!(files, kept, "files in migrations/ after the restart");

    // Neither is restorable before the capture is released; only a
    // committed migration can be released.
    let before_release = assert_refused(
        node.manifest().await,
        Code::FailedPrecondition,
        &["migration mig-crash is", "not restorable"],
    );
    let outcome = match node.release(CapabilityRole::Capture).await {
        Ok(released) => {
            assert_eq!(released.state, "sealed");
            Outcome::Committed
        }
        Err(status)
            if status.code() == Code::FailedPrecondition
                && status.message().contains("not committed") =>
        {
            Outcome::NotCommitted
        }
        Err(status) => panic!("unexpected answer to the capture's release: {status:?}"),
    };
    assert_eq!(outcome, expected, "a kill at {stage}");

    match outcome {
        Outcome::NotCommitted => {
            assert!(
                before_release
                    .message()
                    .contains("mig-crash is capturing, not restorable"),
                "{before_release:?}"
            );
            assert_refused(
                node.get_chunks(&ids).await,
                Code::FailedPrecondition,
                &["migration mig-crash is capturing, not restorable"],
            );
            // The source retries the Commit it got no answer to.
            let retried = node
                .commit(&manifest, &ids)
                .await
                .expect("the retried commit succeeds");
            assert_eq!(retried, summary);
            let released = node
                .release(CapabilityRole::Capture)
                .await
                .expect("release after the retried commit");
            assert_eq!(released.state, "sealed");
        }
        Outcome::Committed => {
            assert!(
                before_release
                    .message()
                    .contains("mig-crash is committed, not restorable"),
                "{before_release:?}"
            );
            // The source retries the Commit it got no answer to: answered
            // as the first one would have been.
            let retried = node
                .commit(&manifest, &ids)
                .await
                .expect("the retried commit is answered");
            assert_eq!(retried, summary);
            let other = b"another manifest";
            let other_digest = blake3::hash(other).to_hex().to_string();
            assert_refused(
                node.commit(other, &ids).await,
                Code::FailedPrecondition,
                &[&digest, &other_digest],
            );
        }
    }

    // Fully restorable: the exact manifest, every chunk verified.
    let got = node.manifest().await.expect("the manifest is served");
    assert_eq!(got.manifest, manifest);
    assert_eq!(got.manifest_digest, digest);
    let served = node.get_chunks(&ids).await.expect("every chunk is served");
    assert_eq!(served.len(), chunks.len());
    for (served, expected) in served.iter().zip(&chunks) {
        assert_eq!(served.chunk_id, expected.id);
        assert_eq!(
            blake3::hash(&served.data).as_bytes(),
            &expected.checksum,
            "chunk {} verifies",
            hex::encode(expected.id)
        );
        assert_eq!(served.data, expected.data);
    }
}

/// The migration's record as on disk.
fn read_record(layout: &Layout, id: &MigrationId) -> MigrationRecord {
    let bytes = std::fs::read(layout.record_path(id)).expect("read the record");
    serde_json::from_slice(&bytes).expect("the record parses")
}
