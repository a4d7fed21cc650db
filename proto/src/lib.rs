//! The fleetmig wire protocol (`fleetmig.v1`).
//!
//! Generated prost messages and tonic services, plus the limits every
//! fleetmig endpoint applies. Domain types live in the service crates; this
//! crate only knows the wire.

#![allow(missing_docs)] // generated code carries the .proto comments

/// Generated code for package `fleetmig.v1`.
pub mod v1 {
    tonic::include_proto!("fleetmig.v1");
}

/// Encoded `FileDescriptorSet` of all fleetmig protos (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fleetmig_descriptor");

/// Wire protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest control-plane message any fleetmig service accepts or sends.
///
/// Bulk data moves in chunks well below this, so a larger message is
/// either a bug or hostile and is refused by tonic with `OutOfRange`.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Most concurrent HTTP/2 streams one connection may open.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Names of the JobPhase values in lowercase, as operators type them.
pub fn phase_name(phase: v1::JobPhase) -> &'static str {
    use v1::JobPhase;
    match phase {
        JobPhase::Unspecified => "unspecified",
        JobPhase::Pending => "pending",
        JobPhase::Assigned => "assigned",
        JobPhase::Capturing => "capturing",
        JobPhase::Captured => "captured",
        JobPhase::Reimaging => "reimaging",
        JobPhase::Restoring => "restoring",
        JobPhase::Verifying => "verifying",
        JobPhase::Done => "done",
        JobPhase::Failed => "failed",
        JobPhase::Skipped => "skipped",
    }
}

/// Lowercase name of a scenario.
pub fn scenario_name(scenario: v1::Scenario) -> &'static str {
    match scenario {
        v1::Scenario::Unspecified => "unspecified",
        v1::Scenario::Refresh => "refresh",
        v1::Scenario::Replace => "replace",
    }
}
