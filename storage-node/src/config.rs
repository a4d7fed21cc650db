//! Command-line configuration of a storage node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a storage node is started.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fleetmig-storage-node",
    version,
    about = "fleetmig storage node: the state migration point for replace migrations"
)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; see --ready-file).
    #[arg(
        long,
        default_value = "127.0.0.1:7600",
        env = "FLEETMIG_STORAGE_LISTEN"
    )]
    pub listen: SocketAddr,

    /// Directory holding the node id and (later) the chunk store; created if missing.
    #[arg(long, env = "FLEETMIG_STORAGE_DATA_DIR")]
    pub data_dir: PathBuf,

    /// URL of the controller's gRPC endpoint, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "FLEETMIG_CONTROLLER")]
    pub controller: String,

    /// Site this node serves (workers prefer a node of their own site).
    #[arg(long, default_value = "default", env = "FLEETMIG_SITE")]
    pub site: String,

    /// File to write the bound address (`IP:PORT`) to once the node serves.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,

    /// Below this many free bytes the node stops accepting new captures.
    #[arg(long, default_value_t = 0, env = "FLEETMIG_STORAGE_MIN_FREE_BYTES")]
    pub min_free_bytes: u64,

    /// URL workers and the controller reach this node at (default:
    /// `http://` + the bound address, with 127.0.0.1 for an unspecified IP).
    #[arg(long)]
    pub advertise_url: Option<String>,

    /// How long in-flight requests may take to finish after a shutdown signal.
    #[arg(long, default_value = "10000", value_parser = parse_millis)]
    pub shutdown_grace_ms: Duration,
}

impl Config {
    /// A configuration with defaults for everything but the required values
    /// (used by tests and embedders).
    pub fn new(data_dir: PathBuf, controller: String) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            controller,
            site: "default".to_owned(),
            ready_file: None,
            min_free_bytes: 0,
            advertise_url: None,
            shutdown_grace_ms: Duration::from_secs(10),
        }
    }
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|err| format!("expected milliseconds, got {text:?}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_flags() {
        let config = Config::try_parse_from([
            "fleetmig-storage-node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://127.0.0.1:7400",
            "--site",
            "hq",
            "--ready-file",
            "/tmp/x.addr",
            "--min-free-bytes",
            "1024",
        ])
        .expect("flags parse");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.site, "hq");
        assert_eq!(config.min_free_bytes, 1024);
        assert_eq!(config.ready_file, Some(PathBuf::from("/tmp/x.addr")));
        assert_eq!(config.shutdown_grace_ms, Duration::from_secs(10));
    }
}
