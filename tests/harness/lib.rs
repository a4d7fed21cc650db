//! Test harness for fleetmig's multi-process integration tests.
//!
//! The tests in `tests/main.rs` start the real binaries (`fleetmig-controller`,
//! `fleetmig-worker`, ...) from the target directory as separate processes, in a
//! [`Cluster`] with its own temporary directory, and drive them through the operator
//! API. Nothing here sleeps for a fixed time: [`wait_for`] polls a condition until it
//! holds or a timeout passes, and then fails with what it last saw.
//!
//! The binaries must be built first: `cargo build --workspace --bins` (scripts/test.sh
//! does it). The HA tests also need etcd (`$FLEETMIG_ETCD` or `etcd` on `PATH`, which
//! `scripts/setup.sh` installs).

mod checks;
mod cluster;
mod etcd;
mod ha;
mod journal;
mod machine;
mod nodes;
mod operator;
mod pki;
mod process;
mod store;

pub use checks::{
    JobTransitions, REFRESH_PHASES, REPLACE_PHASES, Transition, assert_each_phase_once,
    assert_phases_entered_once, assert_refreshed, assert_replaced, assert_single_reimage,
    describe_events, describe_jobs, describe_journal, job, job_ids_by_hostname, job_transitions,
    phase_of,
};
pub use cluster::{Cluster, ControllerHandle, WorkerHandle};
pub use etcd::{ETCD_MAX_TXN_OPS, EtcdCluster, EtcdMember, etcd_binary};
pub use ha::{ControllerProbe, HaController, LeaderInfo, describe_probes};
pub use journal::{
    CommittedCapture, JournalEntry, UploadFigures, committed_capture, journal_path, read_journal,
};
pub use machine::{
    MachineSnapshot, seeded_bytes, source_inodes, temp_file_names, write_seeded_file, xp_profile,
};
pub use nodes::{StorageNodeHandle, chunk_files};
pub use operator::{refresh_plan, replace_plan, wait_for};
pub use pki::TestPki;
pub use process::{ChildProcess, bin, log_tail};
pub use store::{StoreInspection, inspect_store, store_dir};
