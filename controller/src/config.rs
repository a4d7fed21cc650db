//! Command-line configuration of `fleetmig-controller`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of one controller process.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fleetmig-controller",
    version,
    about = "The fleetmig controller"
)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port; see --ready-file).
    #[arg(long, env = "FLEETMIG_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Where the state lives: `embedded` (a redb file in --data-dir, one
    /// controller) or `etcd://host:port[,host:port...]` (several controllers
    /// share it; one leads). etcd needs `--max-txn-ops 1024`.
    #[arg(long, env = "FLEETMIG_STORE", default_value = "embedded")]
    pub store: String,
    /// This controller's name among several (etcd): the election candidate
    /// and the audit actor `controller:<id>`. Default: a random one.
    #[arg(long, env = "FLEETMIG_CONTROLLER_ID")]
    pub controller_id: Option<String>,
    /// URL the other controllers reach this one at (etcd). Default:
    /// `https://<bound listen address>` (`http://` with --insecure-plaintext).
    #[arg(long, env = "FLEETMIG_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Lease TTL of the leadership, in seconds (etcd): a dead leader is
    /// replaced within about this long.
    #[arg(long, default_value_t = 10)]
    pub election_ttl_secs: u64,
    /// Directory of the embedded store (and the keys of an embedded controller).
    #[arg(
        long,
        env = "FLEETMIG_DATA_DIR",
        default_value = "/var/lib/fleetmig/controller"
    )]
    pub data_dir: PathBuf,
    /// File to write the bound address to once serving (written atomically).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Interval between an idle worker's check-ins, in milliseconds.
    #[arg(long, env = "FLEETMIG_CHECKIN_INTERVAL_MS", default_value_t = 60_000)]
    pub checkin_interval_ms: u64,
    /// A machine silent for this long with a job in flight has lost contact.
    #[arg(long, env = "FLEETMIG_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Progress/heartbeat interval asked of running jobs, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub heartbeat_ms: u64,
    /// Interval asked of storage nodes between capacity reports.
    #[arg(long, default_value_t = 10_000)]
    pub node_report_interval_ms: u32,
    /// Lifetime of the capability tokens handed to workers, in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    pub token_ttl_secs: u64,
    /// Lease of a storage reservation not yet used by its capture, in seconds.
    #[arg(long, default_value_t = 15 * 60)]
    pub reservation_lease_secs: u64,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// The fleet's CA certificate (PEM): every peer's certificate must
    /// chain to it. With --cert and --key, turns mutual TLS on.
    #[arg(long, env = "FLEETMIG_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// This controller's certificate (PEM), naming `spiffe://fleetmig/controller/...`.
    #[arg(long, env = "FLEETMIG_TLS_CERT", requires = "ca")]
    pub cert: Option<PathBuf>,
    /// This controller's private key (PEM).
    #[arg(long, env = "FLEETMIG_TLS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The CA's private key (PEM): lets this controller sign enrolling
    /// machines' certificates. Without it, enrollment needs certificates
    /// from your own PKI.
    #[arg(long, env = "FLEETMIG_TLS_CA_KEY", requires = "ca")]
    pub ca_key: Option<PathBuf>,
    /// File holding the master key (64 hex characters) that the fleet key,
    /// the token-signing key and every migration key are sealed under in
    /// the store. Default: `<data-dir>/master.key`, created on first start;
    /// controllers sharing an etcd must share it. Never on the command line
    /// itself.
    #[arg(long, env = "FLEETMIG_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Serve and connect without TLS and without authentication. For local
    /// development only: anyone who reaches the port can do anything.
    #[arg(long, env = "FLEETMIG_INSECURE_PLAINTEXT", conflicts_with = "ca")]
    pub insecure_plaintext: bool,
    /// Fault injection (tests): when the leadership lease is lost, go on
    /// believing this controller leads, as a process that slept through its
    /// lease would, so that only the fence on its writes stops it.
    #[arg(long, hide = true)]
    pub fault_ignore_lease_loss: bool,
}
