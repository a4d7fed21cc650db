//! The fleetmig controller: inventory of machines, migration plans, waves,
//! the job state machine, and the operator API.
//!
//! Layout: [`store`] is the durable key-value layer (embedded redb; etcd
//! later); [`controller::Controller`] holds the service logic and its
//! in-memory [`registry`]; [`scheduler`] admits jobs; [`grpc`] is the thin
//! tonic edge. [`server::run`] wires it together for the binary.

pub mod cluster;
pub mod config;
pub mod controller;
pub mod enrollment;
pub mod error;
pub mod escrow;
pub mod grpc;
#[cfg(test)]
mod handover_tests;
pub mod keys;
pub mod leader;
pub mod lifecycle;
pub mod liveness;
pub mod load;
pub mod model;
pub mod nodes;
pub mod operations;
pub mod placement;
pub mod plan;
pub mod policy;
pub mod registry;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod store;

pub use config::Config;
pub use controller::{Controller, ControllerSettings};
pub use error::{Error, Result};
