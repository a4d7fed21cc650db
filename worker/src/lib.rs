//! The fleetmig worker: the agent that runs on each client machine
//! (enroll, check in, capture, reimage hook, restore, verify), plus the
//! simulation tools used by demos and tests.
//!
//! The user-state work itself is the synchronous `fleetmig-state` engine,
//! always run on the blocking pool; this crate adds the controller
//! protocol, the journal that survives crashes and reimages, and telemetry.
//! The offline verbs ([`offline`]: `scan`, `load`, `store`) run the engine directly,
//! without a controller or an async runtime.

pub mod agent;
pub mod client;
pub mod config;
pub mod enrollment;
pub mod error;
pub mod hook;
pub mod identity;
pub mod offline;
pub mod packed;
pub mod refresh;
pub mod replace;
pub mod rules;
pub mod telemetry;
pub mod transport;

pub use error::{Error, Result};
