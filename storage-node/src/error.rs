//! The storage node's error type, and its mapping onto gRPC status codes.

use std::path::PathBuf;

/// Everything that can go wrong inside a storage node, in the caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
}

/// Result alias for the storage node.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Statvfs { .. } | Error::Server { .. } => tonic::Status::unavailable(message),
            Error::DataDir { .. } | Error::NodeIdIo { .. } | Error::ReadyFile { .. } => {
                tonic::Status::internal(message)
            }
            Error::CorruptNodeId { .. } | Error::RegistrationRefused { .. } => {
                tonic::Status::failed_precondition(message)
            }
            Error::InvalidUrl { .. } => tonic::Status::invalid_argument(message),
            Error::Bind { .. } | Error::Task { .. } => tonic::Status::internal(message),
        }
    }
}
