//! Multi-process integration tests: the real controller and worker binaries on
//! generated machines, driven through the operator API. The harness is the
//! `fleetmig-tests` library (harness/). Build the binaries first:
//! `cargo build --workspace --bins` (scripts/test.sh does). The HA tests (`ha::`) also need
//! etcd on `PATH` (scripts/setup.sh installs it).

mod ha;
mod recovery;
mod refresh;
mod replace;
mod security;
mod waves;
