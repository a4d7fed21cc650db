//! Packed captures and restores (the replace scenario): the user state leaves the machine as
//! sealed, deduplicated chunks plus a sealed manifest (`fleetmig-format`, `docs/format.md`),
//! into a [`ChunkStore`]: a storage node ([`NodeStore`]) for the agent, a local directory
//! ([`DirStore`]) for the offline verbs.
//!
//! - [`capture()`]: selects exactly what the hard-link capture would (same targets), takes
//!   unchanged files from the [metadata cache](cache), reads and chunks the others, asks the
//!   store which chunks it lacks, seals and uploads only those, then seals and commits the
//!   manifest ([`pipeline`] has the threads and memory bounds).
//! - [`restore()`]: fetches and opens the manifest (hostile paths are refused before anything
//!   is written), then writes every file through real directories only, resumably.
//! - [`verify()`]: re-reads every restored file against the manifest.
//!
//! Everything here is synchronous (plain threads and rayon); run it on a blocking thread.

pub mod budget;
pub mod cache;
pub mod capture;
pub mod dir_store;
#[cfg(test)]
pub(crate) mod fake_node;
pub mod journal;
pub mod node_store;
pub mod pipeline;
pub mod progress;
pub mod restore;
pub mod safe_fs;
pub mod select;
pub mod store;
pub mod verify;
pub mod write;

pub use capture::{CaptureOptions, CaptureReport, CaptureStats, Keys, capture};
pub use dir_store::{DirStore, StoreInfo, offline_migration_key};
pub use node_store::NodeStore;
pub use pipeline::PipelineConfig;
pub use restore::{RestoreOptions, RestoreReport, fetch_manifest, map_users, restore};
pub use store::{ChunkStore, ChunkUpload, Commit, SealedChunk, UploadStats};
pub use verify::{VerifyReport, verify};
