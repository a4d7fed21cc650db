//! Where sealed chunks and the sealed manifest of a packed capture go: the [`ChunkStore`] trait,
//! implemented by a storage node ([`super::NodeStore`]) and a local directory
//! ([`super::DirStore`]).
//!
//! The trait is synchronous: the packed pipeline runs on plain threads and rayon, and the
//! storage-node implementation bridges to its async client itself. A store never sees a key:
//! it stores and serves opaque sealed bytes by chunk id.

use bytes::Bytes;
use fleetmig_format::ChunkId;

use crate::error::Result;

/// A chunk ready to upload: its id, its sealed bytes and their checksum.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// Keyed BLAKE3 of the plaintext: the storage key.
    pub id: ChunkId,
    /// Header, ciphertext and tag (`fleetmig_format::seal_chunk`).
    pub bytes: Bytes,
    /// Plain BLAKE3 of `bytes` (raw 32 bytes): the storage node checks it on receipt and
    /// keeps it for scrubbing.
    pub checksum: [u8; 32],
}

impl SealedChunk {
    /// Seals `plaintext` under `fleet` and computes the checksum.
    pub fn seal(fleet: &fleetmig_format::FleetKey, plaintext: &[u8]) -> Self {
        let sealed = fleetmig_format::seal_chunk(fleet, plaintext);
        let checksum = *blake3::hash(&sealed.bytes).as_bytes();
        Self {
            id: sealed.id,
            bytes: Bytes::from(sealed.bytes),
            checksum,
        }
    }
}

/// What makes a capture restorable: the sealed manifest and every chunk it references.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The sealed manifest (opaque to the store).
    pub manifest: Bytes,
    /// Plain BLAKE3 of `manifest`, hex.
    pub manifest_digest: String,
    /// Every distinct chunk id the manifest references.
    pub chunk_ids: Vec<ChunkId>,
    /// Plaintext bytes of the captured files.
    pub logical_bytes: u64,
}

/// What an upload session did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Chunks the store wrote.
    pub chunks_stored: u64,
    /// Chunks the store already held (sent, but not written again).
    pub chunks_already_present: u64,
    /// Sealed bytes written by the store.
    pub bytes_written: u64,
    /// Chunks sent again after a broken upload stream.
    pub chunks_resent: u64,
}

impl UploadStats {
    /// Adds another session's counts.
    pub fn add(&mut self, other: UploadStats) {
        self.chunks_stored += other.chunks_stored;
        self.chunks_already_present += other.chunks_already_present;
        self.bytes_written += other.bytes_written;
        self.chunks_resent += other.chunks_resent;
    }
}

/// A place that holds sealed chunks by id and one sealed manifest per migration.
pub trait ChunkStore: Send + Sync {
    /// A short description for logs and summaries (`node:<id>/<migration>`, `dir:<path>`).
    fn location(&self) -> String;

    /// Indexes (into `ids`) of the chunks the store does not hold yet.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<u32>>;

    /// Starts an upload session. Chunks put into it are durable once
    /// [`ChunkUpload::finish`] returned successfully.
    fn upload(&self) -> Result<Box<dyn ChunkUpload + '_>>;

    /// Makes the capture restorable: checks that every referenced chunk is held and stores the
    /// sealed manifest durably.
    fn commit(&self, commit: &Commit) -> Result<()>;

    /// The sealed manifest of a committed capture.
    fn manifest(&self) -> Result<Bytes>;

    /// Fetches sealed chunks, handing each one to `sink` once, in any order. Fails when the
    /// store cannot serve one of them.
    fn fetch(
        &self,
        ids: &[ChunkId],
        sink: &mut dyn FnMut(ChunkId, Bytes) -> Result<()>,
    ) -> Result<()>;

    /// Ends this side of the migration (capture: read-only from now on; restore: the
    /// retention clock starts).
    fn release(&self) -> Result<()>;
}

/// An upload session of sealed chunks (one storage-node stream at a time, or files).
pub trait ChunkUpload: Send {
    /// Queues one chunk; may block while the store catches up (backpressure).
    fn put(&mut self, chunk: SealedChunk) -> Result<()>;

    /// Waits until every chunk put is durable, and says what the store did.
    fn finish(self: Box<Self>) -> Result<UploadStats>;
}
