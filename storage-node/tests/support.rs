//! Shared fixture: a storage node started in-process on a temp directory,
//! pinned to a test signer's key, with a tonic client and token helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmig_auth::TokenSigner;
use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::{
    self, CapabilityRole, CommitRequest, CommitResponse, GetCapacityRequest, GetChunksRequest,
    GetManifestRequest, MissingChunksRequest, PutChunkRequest, PutChunksResponse, ReleaseRequest,
    ReleaseResponse, ReserveRequest, SignedCapability,
};
use fleetmig_storage_node::{Config, Node};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::Channel;

/// How long anything in these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Seed of the test controller's signing key.
pub const SIGNER_SEED: [u8; 32] = [42; 32];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    fleetmig_storage_node::node::now_unix_ms()
}

/// A running node and a client for it.
pub struct TestNode {
    /// Keeps the temp directory alive (when the node made it).
    _dir: Option<tempfile::TempDir>,
    /// The configuration it runs with.
    pub config: Config,
    /// A handle on the node's logic (sweeps, GC, state).
    pub node: Node,
    /// Client connected to it.
    pub client: StorageNodeClient<Channel>,
    /// The URL it serves at (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The controller key the node trusts.
    pub signer: TokenSigner,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<fleetmig_storage_node::Result<()>>,
}

impl TestNode {
    /// A node with default settings on a fresh temp directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A node on a fresh temp directory, with `adjust` applied to its config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = Self::start_in(dir.path(), adjust).await;
        node._dir = Some(dir);
        node
    }

    /// A node whose data directory is `root/storage`.
    pub async fn start_in(root: &Path, adjust: impl FnOnce(&mut Config)) -> Self {
        let signer = TokenSigner::from_seed(SIGNER_SEED);
        let key_file = root.join("controller.pub");
        std::fs::write(&key_file, hex::encode(signer.public_key())).expect("write key");
        // Nothing listens there: registration keeps retrying, harmlessly.
        let mut config = Config::new(root.join("storage"), "http://127.0.0.1:9".into());
        config.token_public_key = Some(key_file);
        config.sweep_interval_ms = Duration::from_secs(3600);
        config.shutdown_grace_ms = Duration::from_secs(2);
        adjust(&mut config);
        Self::launch(None, config, signer).await
    }

    async fn launch(dir: Option<tempfile::TempDir>, config: Config, signer: TokenSigner) -> Self {
        let node = Node::open(&config).await.expect("node opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fleetmig_storage_node::serve_node(
            node.clone(),
            config.clone(),
            listener,
            shutdown.clone(),
        ));
        let url = format!("http://{addr}");
        let client = connect(&url).await;
        Self {
            _dir: dir,
            config,
            node,
            client,
            url,
            signer,
            shutdown,
            task,
        }
    }

    /// Stops the node (graceful) and returns its result.
    pub async fn stop(self) -> fleetmig_storage_node::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("node stops in time")
            .expect("node task did not panic")
    }

    /// Stops the node and starts a new one on the same data directory.
    pub async fn restart(self) -> Self {
        let Self {
            _dir,
            config,
            signer,
            shutdown,
            task,
            ..
        } = self;
        shutdown.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("node stops in time")
            .expect("node task did not panic")
            .expect("clean shutdown");
        Self::launch(_dir, config, signer).await
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A token for `role` on `migration`, issued to `machine`, valid for a minute.
    pub fn token(&self, role: CapabilityRole, migration: &str, machine: &str) -> SignedCapability {
        self.signer.sign(&self.claims(role, migration, machine))
    }

    /// The claims [`Self::token`] signs.
    pub fn claims(&self, role: CapabilityRole, migration: &str, machine: &str) -> v1::Capability {
        let now = now_ms();
        v1::Capability {
            machine_id: machine.to_owned(),
            migration_id: migration.to_owned(),
            node_id: self.node.node_id().to_owned(),
            role: role as i32,
            issued_unix_ms: now,
            expires_unix_ms: now + 60_000,
            fence: 1,
        }
    }

    /// A token for `role` on `migration`, issued to `machine`, with `fence`.
    pub fn fenced(
        &self,
        role: CapabilityRole,
        migration: &str,
        machine: &str,
        fence: u64,
    ) -> SignedCapability {
        let mut claims = self.claims(role, migration, machine);
        claims.fence = fence;
        self.signer.sign(&claims)
    }

    /// A REPLICATE token for `migration` on this node (the controller's:
    /// no machine, fence 0).
    pub fn replica(&self, migration: &str) -> SignedCapability {
        self.fenced(CapabilityRole::Replicate, migration, "", 0)
    }

    /// An INVENTORY token for this node.
    pub fn inventory(&self) -> SignedCapability {
        self.fenced(CapabilityRole::Inventory, "", "", 0)
    }

    /// Replicate `token`'s migration from this node to `target` with
    /// `target_token`.
    pub async fn replicate_to(
        &self,
        token: SignedCapability,
        target: &TestNode,
        target_token: SignedCapability,
    ) -> Result<v1::ReplicateResponse, Status> {
        self.client
            .clone()
            .replicate(v1::ReplicateRequest {
                token: Some(token),
                target_endpoint: target.url.clone(),
                target_token: Some(target_token),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// ListMigrations with `token`.
    pub async fn list_with(
        &self,
        token: SignedCapability,
        start_after: &str,
        limit: u32,
    ) -> Result<v1::ListMigrationsResponse, Status> {
        self.client
            .clone()
            .list_migrations(v1::ListMigrationsRequest {
                token: Some(token),
                start_after: start_after.to_owned(),
                limit,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Commit with `token` of `manifest` referencing `chunks`.
    pub async fn commit_with(
        &self,
        token: SignedCapability,
        manifest: &[u8],
        chunks: &[&TestChunk],
    ) -> Result<CommitResponse, Status> {
        self.client
            .clone()
            .commit(CommitRequest {
                token: Some(token),
                manifest: manifest.to_vec(),
                chunk_ids: concat_ids(chunks),
                manifest_digest: blake3::hash(manifest).to_hex().to_string(),
                logical_bytes: 12_345,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A capture token of `pc-1` for `migration`.
    pub fn capture(&self, migration: &str) -> SignedCapability {
        self.token(CapabilityRole::Capture, migration, "pc-1")
    }

    /// A restore token of `pc-2` for `migration`.
    pub fn restore(&self, migration: &str) -> SignedCapability {
        self.token(CapabilityRole::Restore, migration, "pc-2")
    }

    /// Reserve as the controller.
    pub async fn reserve(
        &self,
        migration: &str,
        bytes: u64,
        lease_ms: u32,
    ) -> Result<v1::ReserveResponse, Status> {
        self.client
            .clone()
            .reserve(ReserveRequest {
                token: Some(self.token(CapabilityRole::Reserve, migration, "pc-1")),
                bytes,
                lease_ms,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// MissingChunks with a capture token.
    pub async fn missing(
        &self,
        migration: &str,
        chunks: &[&TestChunk],
    ) -> Result<Vec<u32>, Status> {
        self.missing_with(self.capture(migration), chunks).await
    }

    /// MissingChunks with `token`.
    pub async fn missing_with(
        &self,
        token: SignedCapability,
        chunks: &[&TestChunk],
    ) -> Result<Vec<u32>, Status> {
        self.client
            .clone()
            .missing_chunks(MissingChunksRequest {
                token: Some(token),
                chunk_ids: concat_ids(chunks),
            })
            .await
            .map(|r| r.into_inner().missing)
    }

    /// PutChunks of `chunks` with a capture token.
    pub async fn put(
        &self,
        migration: &str,
        chunks: &[&TestChunk],
    ) -> Result<PutChunksResponse, Status> {
        self.put_with(Some(self.capture(migration)), chunks).await
    }

    /// PutChunks of `chunks`, `token` on the first message.
    pub async fn put_with(
        &self,
        token: Option<SignedCapability>,
        chunks: &[&TestChunk],
    ) -> Result<PutChunksResponse, Status> {
        let messages: Vec<PutChunkRequest> = chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| PutChunkRequest {
                token: if index == 0 { token.clone() } else { None },
                chunk_id: chunk.id.to_vec(),
                checksum: chunk.checksum.to_vec(),
                data: chunk.data.clone(),
            })
            .collect();
        self.put_messages(messages).await
    }

    /// PutChunks of raw messages.
    pub async fn put_messages(
        &self,
        messages: Vec<PutChunkRequest>,
    ) -> Result<PutChunksResponse, Status> {
        self.client
            .clone()
            .put_chunks(tokio_stream::iter(messages))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Commit of `manifest` referencing `chunks`.
    pub async fn commit(
        &self,
        migration: &str,
        manifest: &[u8],
        chunks: &[&TestChunk],
    ) -> Result<CommitResponse, Status> {
        self.commit_with(self.capture(migration), manifest, chunks)
            .await
    }

    /// Release with `token`.
    pub async fn release(&self, token: SignedCapability) -> Result<ReleaseResponse, Status> {
        self.client
            .clone()
            .release(ReleaseRequest { token: Some(token) })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Uploads `chunks`, commits them under `migration` and releases the
    /// capture: the migration is sealed and restorable.
    pub async fn seal(&self, migration: &str, manifest: &[u8], chunks: &[&TestChunk]) {
        self.put(migration, chunks).await.expect("put");
        self.commit(migration, manifest, chunks)
            .await
            .expect("commit");
        let released = self
            .release(self.capture(migration))
            .await
            .expect("release capture");
        assert_eq!(released.state, "sealed");
    }

    /// GetManifest with a restore token.
    pub async fn manifest(&self, migration: &str) -> Result<v1::GetManifestResponse, Status> {
        self.client
            .clone()
            .get_manifest(GetManifestRequest {
                token: Some(self.restore(migration)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetChunks with `token`, collected; the first error ends it.
    pub async fn get_chunks_with(
        &self,
        token: SignedCapability,
        ids: Vec<u8>,
    ) -> (Vec<v1::ChunkData>, Option<Status>) {
        let response = self
            .client
            .clone()
            .get_chunks(GetChunksRequest {
                token: Some(token),
                chunk_ids: ids,
            })
            .await;
        let mut stream = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return (Vec::new(), Some(status)),
        };
        let mut received = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => received.push(chunk),
                Ok(None) => return (received, None),
                Err(status) => return (received, Some(status)),
            }
        }
    }

    /// GetChunks of `chunks` with a restore token for `migration`.
    pub async fn get_chunks(
        &self,
        migration: &str,
        chunks: &[&TestChunk],
    ) -> (Vec<v1::ChunkData>, Option<Status>) {
        self.get_chunks_with(self.restore(migration), concat_ids(chunks))
            .await
    }

    /// GetCapacity.
    pub async fn capacity(&self) -> v1::CapacityReport {
        self.client
            .clone()
            .get_capacity(GetCapacityRequest {})
            .await
            .expect("GetCapacity")
            .into_inner()
    }

    /// Names of the files in `tmp/`.
    pub fn temporaries(&self) -> Vec<String> {
        list(&self.data_dir().join("tmp"))
    }

    /// Path of a chunk's file.
    pub fn chunk_path(&self, chunk: &TestChunk) -> PathBuf {
        let hex = hex::encode(chunk.id);
        self.data_dir().join("chunks").join(&hex[..2]).join(hex)
    }
}

/// A client for `url` with fleetmig's receive limit and no send limit (so
/// tests can send oversized messages).
pub async fn connect(url: &str) -> StorageNodeClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect_lazy();
    StorageNodeClient::new(channel)
        .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX)
}

/// Names of the entries of `dir` (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A sealed chunk as a worker would send it.
#[derive(Debug, Clone)]
pub struct TestChunk {
    /// Its id (any 32 bytes: the node cannot check ids against content).
    pub id: [u8; 32],
    /// Plain BLAKE3 of `data`.
    pub checksum: [u8; 32],
    /// The "sealed" bytes.
    pub data: bytes::Bytes,
}

/// A chunk of `len` pseudo-random bytes, distinct per `seed`.
pub fn chunk(seed: u64, len: usize) -> TestChunk {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        // SplitMix64.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    data.truncate(len);
    let id = *blake3::keyed_hash(&[7; 32], &data).as_bytes();
    TestChunk {
        id,
        checksum: *blake3::hash(&data).as_bytes(),
        data: data.into(),
    }
}

/// The ids of `chunks`, concatenated as on the wire.
pub fn concat_ids(chunks: &[&TestChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.id).collect()
}

/// Asserts `result` failed with `code` and a message containing every part.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    parts: &[&str],
) -> Status {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    for part in parts {
        assert!(
            status.message().contains(part),
            "{:?} lacks {part:?}",
            status.message()
        );
    }
    status
}
