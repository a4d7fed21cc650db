//! The controller's error type, and its mapping onto gRPC status codes.

/// Everything that can go wrong inside the controller, in the caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded database could not be opened, read or written.
    #[error("store {path}: {message}")]
    StoreIo {
        /// Database file or directory involved.
        path: String,
        /// What the database reported.
        message: String,
    },
    /// A stored value could not be decoded.
    #[error("store key {key} holds an unreadable value: {reason}")]
    StoreCorrupt {
        /// The key whose value is bad.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The store is shutting down or its writer is gone; retry elsewhere.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// This controller's leadership ended; its writes are fenced off. Retry on the new leader.
    #[error("not the leader: leader key {key} no longer has create revision {epoch}")]
    NotLeader {
        /// The election key this controller held.
        key: String,
        /// Its create revision (the fencing epoch of the lost term).
        epoch: u64,
    },
    /// A compare-and-swap lost against a concurrent writer.
    #[error("conflicting update of {key}; retry")]
    Conflict {
        /// The key that changed underneath the writer.
        key: String,
    },
    /// A plan failed validation; each problem names its location.
    #[error("invalid plan {file}: {}", problems.join("; "))]
    InvalidPlan {
        /// Plan file name as given by the operator.
        file: String,
        /// One message per problem, with `line:column` where known.
        problems: Vec<String>,
    },
    /// No plan with this name exists.
    #[error("unknown plan {0}")]
    UnknownPlan(String),
    /// No wave with this name exists.
    #[error("unknown wave {0}")]
    UnknownWave(String),
    /// No machine with this id is enrolled.
    #[error("unknown machine {0}")]
    UnknownMachine(String),
    /// No storage node with this id is registered.
    #[error("unknown storage node {0}")]
    UnknownNode(String),
    /// No job with this id exists.
    #[error("unknown job {0}")]
    UnknownJob(String),
    /// A report carried a fencing token that is no longer the job's.
    #[error("job {job_id}: fence {presented} is stale (current {current})")]
    StaleFence {
        /// The job reported on.
        job_id: String,
        /// Token the caller presented.
        presented: u64,
        /// Token the job holds now.
        current: u64,
    },
    /// A report asked for a transition the state machine forbids.
    #[error("job {job_id}: cannot go from {from} to {to}")]
    InvalidTransition {
        /// The job reported on.
        job_id: String,
        /// Phase the job is in.
        from: &'static str,
        /// Phase that was asked for.
        to: &'static str,
    },
    /// A wave control that its current state does not allow.
    #[error("wave {wave} is {state}: cannot {action}")]
    WaveState {
        /// The wave.
        wave: String,
        /// Its current state.
        state: &'static str,
        /// The refused action.
        action: &'static str,
    },
    /// Machines a wave selected are still in another wave's job.
    #[error("wave {wave} cannot start: {}", machines.join(", "))]
    MachinesBusy {
        /// The wave being started.
        wave: String,
        /// One line per busy machine, naming its job.
        machines: Vec<String>,
    },
    /// The job's wave was aborted: the job stopped at a safe point (its
    /// state kept) instead of taking the reported step.
    #[error("job {job_id} stopped, its wave {wave} was aborted: {reason}")]
    JobStopped {
        /// The job reported on.
        job_id: String,
        /// Its wave.
        wave: String,
        /// Why it stopped and where its state is.
        reason: String,
    },
    /// `retry-failed` on a wave with no failed machine left to retry.
    #[error("wave {wave} has no failed machines to retry{}", detail_suffix(detail))]
    NothingToRetry {
        /// The wave.
        wave: String,
        /// Why failed machines were left out, if some were.
        detail: String,
    },
    /// A request field was missing or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The machine belongs to another caller.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Work handed to a blocking thread did not come back (it panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// The caller did not prove who it is (no certificate, an unknown or
    /// expired bootstrap token, a revoked certificate).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The request cannot be served in this controller's configuration.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// Result alias for the controller.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::StoreIo { .. } | Error::StoreCorrupt { .. } | Error::Internal(_) => {
                tonic::Status::internal(message)
            }
            Error::StoreUnavailable(_) | Error::Conflict { .. } | Error::NotLeader { .. } => {
                tonic::Status::unavailable(message)
            }
            Error::InvalidPlan { .. } | Error::InvalidArgument(_) => {
                tonic::Status::invalid_argument(message)
            }
            Error::UnknownPlan(_)
            | Error::UnknownWave(_)
            | Error::UnknownMachine(_)
            | Error::UnknownNode(_)
            | Error::UnknownJob(_) => tonic::Status::not_found(message),
            Error::StaleFence { .. }
            | Error::InvalidTransition { .. }
            | Error::WaveState { .. }
            | Error::MachinesBusy { .. }
            | Error::JobStopped { .. }
            | Error::NothingToRetry { .. } => tonic::Status::failed_precondition(message),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(message),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
        }
    }
}
