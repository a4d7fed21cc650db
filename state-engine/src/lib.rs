//! The offline user-state engine of fleetmig.
//!
//! Everything here works on plain directory trees that stand in for a PC's disk: generate a
//! Windows XP machine ([`generate`]), look at it ([`inventory`]), capture its user profiles into a
//! hard-link store ([`hardlink`]), wipe and lay down Windows 7 ([`reimage`]), restore the profiles
//! into their Windows 7 places ([`restore`](mod@restore)), and check the result ([`fingerprint`]).
//! No network, no async runtime: callers run these on a blocking thread.

pub mod error;
pub mod fingerprint;
mod fsutil;
pub mod generate;
pub mod hardlink;
pub mod inventory;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod reimage;
pub mod restore;
pub mod rules;
pub mod users;

pub use error::{Error, Result};
pub use generate::{GenExtras, GenOptions, GenReport, generate_machine, generate_machine_with};
pub use hardlink::{
    CaptureOptions, CaptureReport, VerifyReport, capture, delete_store, verify_store,
};
pub use inventory::{MachineInfo, ProfileInfo, detect};
pub use layout::{Selection, map_profile_path};
pub use manifest::{Entry, EntryKind, Manifest};
pub use progress::{NoProgress, Phase, Progress, ProgressSink};
pub use reimage::{ReimageReport, simulate_reimage};
pub use restore::{RestoreOptions, RestoreReport, restore, verify_restore, verify_restore_with};
pub use users::{UserFilter, UserPattern};

#[cfg(test)]
mod nasty_tests;
#[cfg(test)]
mod pipeline_tests;
