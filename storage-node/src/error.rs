//! The storage node's error type, and its mapping onto gRPC status codes.

use std::path::PathBuf;

/// Everything that can go wrong inside a storage node, in the caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS is misconfigured (files missing, unreadable or mismatched), or
    /// neither TLS nor plaintext was chosen.
    #[error("TLS: {0}")]
    Tls(String),
    /// The data directory could not be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory involved.
        path: PathBuf,
        /// What the filesystem reported.
        source: std::io::Error,
    },
    /// The node id file could not be read or written.
    #[error("node id file {path}: {source}")]
    NodeIdIo {
        /// The `node-id` file.
        path: PathBuf,
        /// What the filesystem reported.
        source: std::io::Error,
    },
    /// The node id file exists but does not hold a UUID.
    #[error("node id file {path} does not hold a uuid ({reason}); fix or remove it")]
    CorruptNodeId {
        /// The `node-id` file.
        path: PathBuf,
        /// Why its content was refused.
        reason: String,
    },
    /// Free space of the data directory could not be measured.
    #[error("cannot measure free space of {path}: {source}")]
    Statvfs {
        /// The directory measured.
        path: PathBuf,
        /// The errno statvfs returned.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: String,
        /// What the socket layer reported.
        source: std::io::Error,
    },
    /// The ready file could not be written.
    #[error("ready file {path}: {source}")]
    ReadyFile {
        /// The ready file.
        path: PathBuf,
        /// What the filesystem reported.
        source: std::io::Error,
    },
    /// The controller URL (or the advertised URL) is not a valid endpoint.
    #[error("invalid url {url}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The controller refused the registration in a way retrying cannot fix.
    #[error("controller {controller} refused registration of node {node_id}: {status}")]
    RegistrationRefused {
        /// The controller URL.
        controller: String,
        /// This node's id.
        node_id: String,
        /// The gRPC status the controller answered with.
        status: String,
    },
    /// The gRPC server failed.
    #[error("grpc server on {address}: {reason}")]
    Server {
        /// The bound address.
        address: String,
        /// What tonic reported.
        reason: String,
    },
    /// A background task panicked or was cancelled unexpectedly.
    #[error("{task} task failed: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// The join error.
        reason: String,
    },
    /// A capability token was refused (missing, forged, expired, or granting
    /// something else).
    #[error(transparent)]
    Token(#[from] fleetmig_auth::Error),
    /// No controller public key is known yet, so no token can be checked.
    #[error("node has no controller public key yet")]
    NoControllerKey,
    /// The controller's token key file could not be read, parsed or written.
    #[error("controller token key file {path}: {reason}")]
    ControllerKeyFile {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A token names a migration id that cannot be used as a file name.
    #[error("migration id {migration_id:?} is not acceptable: {reason}")]
    InvalidMigrationId {
        /// The id (truncated to 128 characters).
        migration_id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A list of chunk ids is malformed or too long.
    #[error("{field}: {reason}")]
    BadChunkIds {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An uploaded chunk is malformed (bad id or checksum length, empty or
    /// oversized data).
    #[error("chunk {chunk}: {reason}")]
    BadChunk {
        /// The chunk id in hex, or the message's index when the id is bad.
        chunk: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An uploaded chunk does not match its checksum: it was corrupted in
    /// transit and was not stored.
    #[error("chunk {chunk_id} does not match its checksum (corrupted in transit); not stored")]
    ChecksumMismatch {
        /// The chunk.
        chunk_id: String,
    },
    /// The manifest sent with Commit does not match its digest.
    #[error(
        "manifest of migration {migration_id} does not match its digest {digest} (blake3 is {actual}); not stored"
    )]
    ManifestDigestMismatch {
        /// The migration.
        migration_id: String,
        /// The digest the request named.
        digest: String,
        /// BLAKE3 of the manifest received.
        actual: String,
    },
    /// Writing a chunk failed (typically the disk is full); nothing of it
    /// is visible.
    #[error("storage node {node_id} disk full while storing chunk {chunk_id}: {source}")]
    DiskFull {
        /// This node.
        node_id: String,
        /// The chunk being written.
        chunk_id: String,
        /// What the filesystem reported.
        source: std::io::Error,
    },
    /// A reservation does not fit.
    #[error(
        "storage node {node_id} cannot reserve {requested} bytes for migration {migration_id}: {available} bytes available"
    )]
    NoRoom {
        /// This node.
        node_id: String,
        /// The migration asking.
        migration_id: String,
        /// Bytes asked for.
        requested: u64,
        /// Bytes a reservation may take now.
        available: u64,
    },
    /// The node already serves as many client sessions as it may.
    #[error("storage node {node_id} is busy: {active} active client sessions, at most {max}")]
    TooManyClients {
        /// This node.
        node_id: String,
        /// Sessions in progress.
        active: u32,
        /// `--max-clients`.
        max: u32,
    },
    /// The node runs with `--restore-only` and takes no new captures.
    #[error("storage node {node_id} is restore-only and takes no new captures")]
    RestoreOnly {
        /// This node.
        node_id: String,
    },
    /// The node holds no such migration.
    #[error("storage node {node_id} holds no migration {migration_id}")]
    UnknownMigration {
        /// This node.
        node_id: String,
        /// The migration asked for.
        migration_id: String,
    },
    /// The migration is not in a state that allows the call.
    #[error("migration {migration_id} is {state}, {refusal}")]
    WrongState {
        /// The migration.
        migration_id: String,
        /// Its state name.
        state: &'static str,
        /// What is refused, e.g. "not restorable".
        refusal: &'static str,
    },
    /// The migration was committed with another manifest.
    #[error(
        "migration {migration_id} is already committed with manifest digest {committed}, not {requested}"
    )]
    CommittedDifferently {
        /// The migration.
        migration_id: String,
        /// Digest of the committed manifest.
        committed: String,
        /// Digest in this request.
        requested: String,
    },
    /// Commit references chunks the node does not hold.
    #[error("{count} referenced chunks are missing, e.g. {example}")]
    MissingReferencedChunks {
        /// How many are missing.
        count: usize,
        /// One of them, hex.
        example: String,
    },
    /// A capture token names another machine than the one capturing.
    #[error("migration {migration_id} is captured by machine {source_machine}, not {presented}")]
    OtherMachine {
        /// The migration.
        migration_id: String,
        /// The machine that started the capture.
        source_machine: String,
        /// The machine named by this token.
        presented: String,
    },
    /// A restore asked for a chunk its migration does not reference.
    #[error("chunk {chunk_id} is not part of migration {migration_id}")]
    NotReferenced {
        /// The migration of the token.
        migration_id: String,
        /// The chunk asked for.
        chunk_id: String,
    },
    /// A stored chunk (or manifest) fails its checksum, or is gone.
    #[error("chunk {chunk_id} of migration {migration_id} is corrupt on node {node_id}: {reason}")]
    CorruptChunk {
        /// The chunk.
        chunk_id: String,
        /// The migration being read.
        migration_id: String,
        /// This node.
        node_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored manifest fails its digest, or is gone.
    #[error("manifest of migration {migration_id} is corrupt on node {node_id}: {reason}")]
    CorruptManifest {
        /// The migration.
        migration_id: String,
        /// This node.
        node_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A migration record on disk cannot be read; the node refuses to start
    /// rather than forget a migration (and garbage-collect its chunks).
    #[error("migration record {path}: {reason}; fix or move it aside")]
    CorruptRecord {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the store could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing manifest".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the filesystem reported.
        source: std::io::Error,
    },
    /// A token's fence is lower than the highest this node has seen for its
    /// migration: the job moved on to another owner.
    #[error("stale fence {presented} for migration {migration_id} (highest seen {highest})")]
    StaleFence {
        /// The migration.
        migration_id: String,
        /// The token's fence.
        presented: u64,
        /// The highest fence seen for the migration.
        highest: u64,
    },
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    BadRequest {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The node a migration is replicated to refused a call or could not be
    /// reached; the status keeps the target's code.
    #[error("replicating migration {migration_id} to {target}: {call} failed: {message}")]
    Replication {
        /// The migration.
        migration_id: String,
        /// The target's endpoint.
        target: String,
        /// The call on the target, e.g. "PutChunks".
        call: &'static str,
        /// The target's status code.
        code: tonic::Code,
        /// The target's message.
        message: String,
    },
    /// The upload stream failed before its end (client gone, oversized or
    /// undecodable message).
    #[error("upload stream failed: {message}")]
    UploadStream {
        /// The status the transport reported.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
}

/// Result alias for the storage node.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Status;
        let message = error.to_string();
        match error {
            Error::Statvfs { .. } | Error::Server { .. } | Error::NoControllerKey => {
                Status::unavailable(message)
            }
            Error::DataDir { .. }
            | Error::NodeIdIo { .. }
            | Error::ReadyFile { .. }
            | Error::ControllerKeyFile { .. }
            | Error::CorruptRecord { .. }
            | Error::Io { .. }
            | Error::Bind { .. }
            | Error::Task { .. }
            | Error::Tls(_) => Status::internal(message),
            Error::CorruptNodeId { .. }
            | Error::RegistrationRefused { .. }
            | Error::RestoreOnly { .. }
            | Error::WrongState { .. }
            | Error::CommittedDifferently { .. }
            | Error::MissingReferencedChunks { .. }
            | Error::StaleFence { .. } => Status::failed_precondition(message),
            Error::InvalidUrl { .. }
            | Error::BadRequest { .. }
            | Error::InvalidMigrationId { .. }
            | Error::BadChunkIds { .. }
            | Error::BadChunk { .. } => Status::invalid_argument(message),
            Error::Token(token) => Status::new(token.code(), message),
            Error::OtherMachine { .. } | Error::NotReferenced { .. } => {
                Status::permission_denied(message)
            }
            Error::ChecksumMismatch { .. }
            | Error::ManifestDigestMismatch { .. }
            | Error::CorruptChunk { .. }
            | Error::CorruptManifest { .. } => Status::data_loss(message),
            Error::DiskFull { .. } | Error::NoRoom { .. } | Error::TooManyClients { .. } => {
                Status::resource_exhausted(message)
            }
            Error::UnknownMigration { .. } => Status::not_found(message),
            Error::UploadStream { code, .. } | Error::Replication { code, .. } => {
                Status::new(code, message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_refusals_map_to_authentication_codes() {
        let expired = Error::Token(fleetmig_auth::Error::Expired {
            migration_id: "m".into(),
            expires_unix_ms: 1,
            now_unix_ms: 2,
        });
        let status = tonic::Status::from(expired);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{}", status.message());
        let wrong = Error::Token(fleetmig_auth::Error::WrongGrant("role".into()));
        assert_eq!(
            tonic::Status::from(wrong).code(),
            tonic::Code::PermissionDenied
        );
        let forged = Error::Token(fleetmig_auth::Error::BadSignature);
        assert_eq!(
            tonic::Status::from(forged).code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_stale_fence_is_a_failed_precondition_naming_both_fences() {
        let status = tonic::Status::from(Error::StaleFence {
            migration_id: "wave1.pc-1".into(),
            presented: 3,
            highest: 5,
        });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "stale fence 3 for migration wave1.pc-1 (highest seen 5)"
        );
    }

    #[test]
    fn replication_failures_keep_the_target_code() {
        let status = tonic::Status::from(Error::Replication {
            migration_id: "m".into(),
            target: "http://b:7600".into(),
            call: "Reserve",
            code: tonic::Code::ResourceExhausted,
            message: "no room".into(),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "replicating migration m to http://b:7600: Reserve failed: no room"
        );
    }

    #[test]
    fn disk_full_names_the_node_and_the_chunk() {
        let status = tonic::Status::from(Error::DiskFull {
            node_id: "n1".into(),
            chunk_id: "ab".repeat(32),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().starts_with(&format!(
                "storage node n1 disk full while storing chunk {}",
                "ab".repeat(32)
            )),
            "{}",
            status.message()
        );
    }
}
