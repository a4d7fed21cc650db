//! The real binary, killed with SIGKILL: every acknowledged upload and every
//! commit survives; an uncommitted capture stays uncommitted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fleetmig_auth::TokenSigner;
use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::{
    self, CapabilityRole, CommitRequest, GetChunksRequest, MissingChunksRequest, PutChunkRequest,
    ReleaseRequest,
};
use tonic::transport::Channel;

use crate::support::{SIGNER_SEED, TestChunk, WAIT, chunk, concat_ids, connect, now_ms};

/// A storage node process, killed on drop.
struct Process {
    child: Child,
    client: StorageNodeClient<Channel>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn(root: &Path) -> Process {
    let ready = root.join("ready");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_fleetmig-storage-node"))
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
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    }
}

fn token(root: &Path, role: CapabilityRole) -> v1::SignedCapability {
    let node_id = std::fs::read_to_string(root.join("storage/node-id")).expect("node id");
    let now = now_ms();
    TokenSigner::from_seed(SIGNER_SEED).sign(&v1::Capability {
        machine_id: "pc-1".into(),
        migration_id: "mig-crash".into(),
        node_id: node_id.trim().to_owned(),
        role: role as i32,
        issued_unix_ms: now,
        expires_unix_ms: now + 60_000,
        fence: 1,
    })
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
