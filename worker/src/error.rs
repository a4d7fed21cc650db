//! The worker's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the worker, in its caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The offline state engine failed (capture, verify, restore, reimage).
    #[error(transparent)]
    State(#[from] fleetmig_state::Error),
    /// A local file of the agent could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TLS is misconfigured, or a certificate or token file is bad.
    #[error("TLS: {path}: {reason}")]
    Tls {
        /// The file (or machine root) involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The agent's own state file is unreadable.
    #[error("agent state {path} is unreadable: {reason}")]
    AgentState {
        /// The file involved.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The controller could not be reached or answered with an error.
    #[error("controller: {0}")]
    Controller(#[from] tonic::Status),
    /// The controller URL is malformed.
    #[error("bad controller url {url}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The controller handed over an assignment the worker cannot run.
    #[error("assignment {job_id}: {reason}")]
    BadAssignment {
        /// The job.
        job_id: String,
        /// Why.
        reason: String,
    },
    /// A verification found the captured or restored state inconsistent.
    #[error("verification of {what} failed: {details}")]
    VerificationFailed {
        /// What was verified (store, restore).
        what: &'static str,
        /// The first mismatches.
        details: String,
    },
    /// The external reimage command failed.
    #[error("reimage command {command:?} failed: {reason}")]
    ReimageHook {
        /// The command line.
        command: String,
        /// Exit status or spawn error.
        reason: String,
    },
    /// The job was taken over by another worker session (stale fence).
    #[error("job {0} now belongs to another worker session")]
    Superseded(String),
    /// The worker is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// An offline verb was given arguments it cannot work with.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// A directory given as a store is not one.
    #[error(
        "{0} is not a fleetmig store (no manifest.json, manifest.seal or data/ alone); refusing"
    )]
    NotAStore(PathBuf),
    /// Not enough free space where a store is to be written.
    #[error("not enough free space for store {path}: {needed} bytes needed, {available} available")]
    OutOfSpace {
        /// The store.
        path: PathBuf,
        /// Bytes the store is estimated to need.
        needed: u64,
        /// Bytes available on its filesystem.
        available: u64,
    },
    /// The packed format refused something: a key file, a sealed manifest or chunk, a hostile
    /// manifest entry, a file whose content does not match its hash.
    #[error(transparent)]
    Format(#[from] fleetmig_format::Error),
    /// A chunk fetched for a restore is corrupt or missing: names the file being restored.
    #[error("restore of {path}: chunk {chunk}: {reason}")]
    CorruptChunk {
        /// Target path (relative to the restore root) of the file that needed the chunk.
        path: String,
        /// The chunk id, hex.
        chunk: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A packed store (directory) already holds a capture.
    #[error("packed store {0} already holds a capture; pass --overwrite to replace its manifest")]
    PackedStoreExists(PathBuf),
    /// A packed store (directory) is unusable: unreadable `store.json`, capture never committed,
    /// a chunk missing.
    #[error("packed store {path}: {reason}")]
    PackedStoreInvalid {
        /// The store directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The storage node cannot be reached (or kept failing): worth retrying later.
    #[error("storage node {node} unreachable: {message}")]
    NodeUnavailable {
        /// Node id and endpoint.
        node: String,
        /// The last transport error.
        message: String,
    },
    /// The storage node has no room left for this migration.
    #[error("storage node {node} is full: {message}")]
    NodeFull {
        /// Node id and endpoint.
        node: String,
        /// The node's message.
        message: String,
    },
    /// The storage node lost data it had acknowledged (a chunk failed its checksum).
    #[error("storage node {node} lost data: {message}")]
    NodeDataLoss {
        /// Node id and endpoint.
        node: String,
        /// The node's message (names the chunk).
        message: String,
    },
    /// The committed capture could not be copied to a replica node (in time). Names the
    /// replica node; the source captures nothing again when the job is retried.
    #[error("capture not replicated to storage node {target}: {reason}")]
    ReplicationFailed {
        /// The replica node: id and endpoint.
        target: String,
        /// Why (the error of the `Replicate` call on the primary node).
        reason: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
    /// No storage node holding the migration served the restore (each was tried in turn).
    #[error("no storage node could serve the restore: {0}")]
    NoRestoreSource(String),
    /// The storage node refused a call (capability, migration state, bad request).
    #[error("storage node {node} refused {call}: {code}: {message}")]
    NodeRefused {
        /// Node id and endpoint.
        node: String,
        /// The call refused.
        call: &'static str,
        /// The gRPC status code.
        code: String,
        /// The node's message.
        message: String,
    },
}

/// Result alias for the worker.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path involved.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether trying the same step again later may succeed (the storage node was unreachable
    /// or the worker was stopped), as opposed to a failure that needs someone to act.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NodeUnavailable { .. }
                | Error::Shutdown
                | Error::Controller(_)
                | Error::NoRestoreSource(_)
                | Error::ReplicationFailed {
                    retryable: true,
                    ..
                }
        )
    }
}
