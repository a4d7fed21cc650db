//! Command-line configuration of a storage node: the server flags
//! ([`Config`]) and the `scrub` subcommand ([`ScrubArgs`]).

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

    /// Directory holding the node id, the chunk store and the migration
    /// records; created if missing.
    #[arg(long, env = "FLEETMIG_STORAGE_DATA_DIR")]
    pub data_dir: PathBuf,

    /// URL of the controller's gRPC endpoint, e.g. http://127.0.0.1:7400;
    /// several controllers (one fleet, e.g. an HA group) as a comma-separated
    /// list, or the flag repeated. The node registers with and reports to
    /// every one of them.
    #[arg(
        long = "controller",
        env = "FLEETMIG_CONTROLLER",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        value_parser = parse_controller,
        required = true
    )]
    pub controllers: Vec<String>,

    /// Site this node serves (workers prefer a node of their own site).
    #[arg(long, default_value = "default", env = "FLEETMIG_SITE")]
    pub site: String,

    /// File to write the bound address (`IP:PORT`) to once the node serves.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,

    /// Free bytes the node never hands out to reservations (the larger of
    /// this and --min-free-percent applies).
    #[arg(long, default_value_t = 0, env = "FLEETMIG_STORAGE_MIN_FREE_BYTES")]
    pub min_free_bytes: u64,

    /// Percentage of the filesystem the node never hands out to reservations.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    pub min_free_percent: f64,

    /// Serve restores only: refuse new reservations and captures.
    #[arg(long)]
    pub restore_only: bool,

    /// Most client sessions (active captures and restore calls) at once;
    /// reservations beyond it are refused.
    #[arg(long, default_value_t = 64)]
    pub max_clients: u32,

    /// Days a migration is kept after its restore is released (0 = delete
    /// at once); also how long an expired capture's record is kept.
    #[arg(long, default_value_t = 7)]
    pub retention_days: u64,

    /// Retention in milliseconds, overriding --retention-days (tests).
    #[arg(long, hide = true)]
    pub retention_ms: Option<u64>,

    /// How often the sweeper expires leases, deletes migrations past their
    /// retention and garbage-collects chunks.
    #[arg(long, default_value = "30000", value_parser = parse_millis)]
    pub sweep_interval_ms: Duration,

    /// File holding the controller's token public key (64 hex characters);
    /// pins it instead of the key the controller hands out at registration.
    #[arg(long)]
    pub token_public_key: Option<PathBuf>,

    /// URL workers and the controller reach this node at (default:
    /// `http://` + the bound address, with 127.0.0.1 for an unspecified IP).
    #[arg(long)]
    pub advertise_url: Option<String>,

    /// How long in-flight requests may take to finish after a shutdown signal.
    #[arg(long, default_value = "10000", value_parser = parse_millis)]
    pub shutdown_grace_ms: Duration,

    /// The fleet's CA certificate (PEM). With --cert and --key, turns
    /// mutual TLS on: clients must present certificates from this CA.
    #[arg(long, env = "FLEETMIG_TLS_CA")]
    pub ca: Option<PathBuf>,

    /// This node's certificate (PEM), naming `spiffe://fleetmig/storage/...`.
    #[arg(long, env = "FLEETMIG_TLS_CERT", requires = "ca")]
    pub cert: Option<PathBuf>,

    /// This node's private key (PEM).
    #[arg(long, env = "FLEETMIG_TLS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Serve and connect without TLS. For local development only.
    #[arg(long, env = "FLEETMIG_INSECURE_PLAINTEXT", conflicts_with = "ca")]
    pub insecure_plaintext: bool,

    /// Test-only fault injection: Commit sleeps this long at its most
    /// dangerous points (see [`CommitStage`]), logging "commit paused (fault
    /// injection)", so a crash test can SIGKILL the node there. Never set it
    /// in production.
    #[arg(long = "fault-commit-pause-ms", hide = true, value_parser = parse_millis)]
    pub fault_commit_pause: Option<Duration>,

    /// Test-only: pause only at this stage of Commit (default: at both).
    #[arg(long = "fault-commit-pause-stage", hide = true, value_enum)]
    pub fault_commit_pause_stage: Option<CommitStage>,
}

/// A point inside Commit where `--fault-commit-pause-ms` pauses (test-only
/// fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitStage {
    /// The manifest and the chunk list are durable and in place, the record
    /// still says capturing: the commit point has not been reached.
    BeforeRecordRename,
    /// The committed record has been renamed into place (the commit point)
    /// and its directory synced; the answer has not been sent.
    AfterRecordRename,
}

impl CommitStage {
    /// The stage's name, as on the command line and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforeRecordRename => "before-record-rename",
            Self::AfterRecordRename => "after-record-rename",
        }
    }
}

impl std::fmt::Display for CommitStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Config {
    /// A configuration with defaults for everything but the required values
    /// (used by tests and embedders); `controllers` is a comma-separated
    /// list of URLs, as on the command line.
    pub fn new(data_dir: PathBuf, controllers: String) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            controllers: split_controllers(&controllers),
            site: "default".to_owned(),
            ready_file: None,
            min_free_bytes: 0,
            min_free_percent: 0.0,
            restore_only: false,
            max_clients: 64,
            retention_days: 7,
            retention_ms: None,
            sweep_interval_ms: Duration::from_secs(30),
            token_public_key: None,
            advertise_url: None,
            shutdown_grace_ms: Duration::from_secs(10),
            fault_commit_pause: None,
            fault_commit_pause_stage: None,
            ca: None,
            cert: None,
            key: None,
            insecure_plaintext: true,
        }
    }

    /// The transport `--ca/--cert/--key` or `--insecure-plaintext` ask for;
    /// neither is an error (TLS is required unless plaintext is explicit).
    pub fn transport(&self) -> crate::Result<fleetmig_auth::Transport> {
        if self.insecure_plaintext {
            return Ok(fleetmig_auth::Transport::Plaintext);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            return Err(crate::Error::Tls(
                "TLS is required: give --ca, --cert and --key (`fleetmig certs init` creates \
                 them), or --insecure-plaintext for local development"
                    .into(),
            ));
        };
        let material = fleetmig_auth::tls::TlsFiles {
            ca: ca.clone(),
            cert: Some(cert.clone()),
            key: Some(key.clone()),
        }
        .load()
        .map_err(|err| crate::Error::Tls(err.to_string()))?;
        Ok(fleetmig_auth::Transport::Tls(std::sync::Arc::new(material)))
    }

    /// How long a restored migration is kept, in milliseconds.
    pub fn retention_ms(&self) -> u64 {
        self.retention_ms
            .unwrap_or_else(|| self.retention_days.saturating_mul(24 * 60 * 60 * 1000))
    }

    /// How long Commit pauses at `stage` (test-only fault injection; `None`
    /// in normal operation).
    pub fn commit_pause(&self, stage: CommitStage) -> Option<Duration> {
        self.fault_commit_pause.filter(|_| {
            self.fault_commit_pause_stage
                .is_none_or(|only| only == stage)
        })
    }
}

/// The command line: the server (no subcommand) or a maintenance command.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fleetmig-storage-node",
    version,
    about = "fleetmig storage node: the state migration point for replace migrations",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// A maintenance command; without one the node serves.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Server flags.
    #[command(flatten)]
    pub serve: Option<Config>,
}

/// Maintenance commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Re-read every chunk, check its checksum and report corrupt ones
    /// (exit code 1 when any chunk is corrupt or missing).
    Scrub(ScrubArgs),
}

/// Flags of `scrub`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScrubArgs {
    /// The storage node's data directory (the node may be stopped).
    #[arg(long)]
    pub data_dir: PathBuf,

    /// Move corrupt chunks to quarantine/, so the next capture of the same
    /// content uploads them again.
    #[arg(long)]
    pub quarantine: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The URLs of a comma-separated list, trimmed, empty entries left out.
pub fn split_controllers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_controller(text: &str) -> Result<String, String> {
    let url = text.trim();
    if url.is_empty() {
        return Err("an empty controller URL (a stray comma?)".into());
    }
    Ok(url.to_owned())
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|err| format!("expected a percentage, got {text:?}: {err}"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("a percentage is between 0 and 100, got {value}"));
    }
    Ok(value)
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
        assert_eq!(config.max_clients, 64);
        assert_eq!(config.retention_ms(), 7 * 24 * 60 * 60 * 1000);
        assert!(!config.restore_only);
        assert_eq!(config.fault_commit_pause, None, "no fault injection");
        assert_eq!(config.commit_pause(CommitStage::BeforeRecordRename), None);
    }

    #[test]
    fn several_controllers_come_as_a_list_or_a_repeated_flag() {
        let one = Config::try_parse_from([
            "fleetmig-storage-node",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://127.0.0.1:7400",
        ])
        .expect("flags parse");
        assert_eq!(one.controllers, ["http://127.0.0.1:7400"]);
        let list = Config::try_parse_from([
            "fleetmig-storage-node",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://c1:7400, http://c2:7400,http://c3:7400",
        ])
        .expect("flags parse");
        assert_eq!(
            list.controllers,
            ["http://c1:7400", "http://c2:7400", "http://c3:7400"]
        );
        let repeated = Config::try_parse_from([
            "fleetmig-storage-node",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://c1:7400",
            "--controller",
            "http://c2:7400",
        ])
        .expect("flags parse");
        assert_eq!(repeated.controllers, ["http://c1:7400", "http://c2:7400"]);
        let err = Config::try_parse_from([
            "fleetmig-storage-node",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://c1:7400,,http://c2:7400",
        ])
        .expect_err("empty entry");
        assert!(err.to_string().contains("stray comma"), "{err}");
        assert_eq!(
            Config::new("/tmp/x".into(), "http://c1:7400,http://c2:7400".into()).controllers,
            ["http://c1:7400", "http://c2:7400"]
        );
    }

    #[test]
    fn the_commit_pause_is_hidden_and_applies_to_the_stages_asked() {
        let base = [
            "fleetmig-storage-node",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://127.0.0.1:7400",
            "--fault-commit-pause-ms",
            "250",
        ];
        let both = Config::try_parse_from(base).expect("flags parse");
        let pause = Some(Duration::from_millis(250));
        assert_eq!(both.commit_pause(CommitStage::BeforeRecordRename), pause);
        assert_eq!(both.commit_pause(CommitStage::AfterRecordRename), pause);

        let mut args = base.to_vec();
        args.extend(["--fault-commit-pause-stage", "after-record-rename"]);
        let one = Config::try_parse_from(args).expect("flags parse");
        assert_eq!(one.commit_pause(CommitStage::BeforeRecordRename), None);
        assert_eq!(one.commit_pause(CommitStage::AfterRecordRename), pause);

        let help = Config::command().render_long_help().to_string();
        assert!(
            !help.contains("--fault-commit"),
            "test-only flags stay hidden: {help}"
        );
    }

    #[test]
    fn without_a_subcommand_the_node_serves() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "fleetmig-storage-node",
            "--data-dir",
            "/tmp/x",
            "--controller",
            "http://127.0.0.1:7400",
            "--restore-only",
            "--min-free-percent",
            "5",
            "--retention-days",
            "0",
            "--retention-ms",
            "250",
            "--token-public-key",
            "/tmp/key.pub",
        ])
        .expect("server flags parse");
        assert!(cli.command.is_none());
        let config = cli.serve.expect("server config");
        assert!(config.restore_only);
        assert_eq!(config.min_free_percent, 5.0);
        assert_eq!(config.retention_ms(), 250);
        assert_eq!(config.token_public_key, Some(PathBuf::from("/tmp/key.pub")));
        assert!(
            Cli::try_parse_from(["fleetmig-storage-node", "--data-dir", "/tmp/x"]).is_err(),
            "--controller is required to serve"
        );
        assert!(
            Cli::try_parse_from(["fleetmig-storage-node", "--min-free-percent", "101"]).is_err()
        );
    }

    #[test]
    fn scrub_needs_only_the_data_dir() {
        let cli = Cli::try_parse_from([
            "fleetmig-storage-node",
            "scrub",
            "--data-dir",
            "/srv/storage",
            "--quarantine",
        ])
        .expect("scrub flags parse");
        let Some(Command::Scrub(args)) = cli.command else {
            panic!("expected scrub");
        };
        assert_eq!(args.data_dir, PathBuf::from("/srv/storage"));
        assert!(args.quarantine);
        assert!(!args.json);
    }
}
