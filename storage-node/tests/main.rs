//! Integration tests of the storage node, run in-process (and, for scrub and
//! crash recovery, as the real binary) against a fake controller or with a
//! pinned test key.

mod capture;
mod crash;
mod disk_full;
mod fences;
mod integrity;
mod inventory;
mod limits;
mod registration;
mod replication;
mod support;
mod sweeping;
mod throughput;
mod tokens;
mod two_nodes;
