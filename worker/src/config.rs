//! Command line of `fleetmig-worker`.

use std::path::PathBuf;

/// `fleetmig-worker`: the agent on each client machine, and offline tools.
#[derive(Debug, clap::Parser)]
#[command(name = "fleetmig-worker", version, about = "The fleetmig worker")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Worker subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Enroll this machine and run the migrations the controller assigns.
    Agent(AgentConfig),
    /// Tools for simulated machines (demos and tests).
    #[command(subcommand)]
    Simulate(SimulateCommand),
    /// Capture user state offline into a store, like USMT ScanState (no controller needed).
    Scan(crate::offline::ScanArgs),
    /// Restore a store into the Windows 7 layout and verify it, like USMT LoadState.
    Load(crate::offline::LoadArgs),
    /// Verify, list or delete a store, like USMT UsmtUtils.
    #[command(subcommand)]
    Store(crate::offline::StoreCommand),
}

impl Command {
    /// The offline verb this command is, if it is one (run without an async runtime).
    pub fn offline(&self) -> Option<crate::offline::Verb> {
        match self {
            Command::Scan(args) => Some(crate::offline::Verb::Scan(args.clone())),
            Command::Load(args) => Some(crate::offline::Verb::Load(args.clone())),
            Command::Store(command) => Some(crate::offline::Verb::Store(command.clone())),
            Command::Agent(_) | Command::Simulate(_) => None,
        }
    }
}

/// Settings of the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Controller URLs, e.g. http://10.0.0.1:7400,http://10.0.0.2:7400 (comma-separated or
    /// repeated): the controllers of one fleet. Calls go to one at a time and move on to the
    /// next when it fails or hangs.
    #[arg(
        long,
        env = "FLEETMIG_CONTROLLER",
        required = true,
        value_delimiter = ',',
        value_parser = parse_controller,
        value_name = "URL[,URL...]"
    )]
    pub controller: Vec<String>,
    /// Root of the machine's system disk.
    #[arg(long, env = "FLEETMIG_MACHINE_ROOT")]
    pub machine_root: PathBuf,
    /// Site of the machine, reported in its inventory.
    #[arg(long, default_value = "")]
    pub site: String,
    /// Labels reported in the inventory, as key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Shell command that reimages the machine (default: the built-in simulation).
    #[arg(long)]
    pub reimage_command: Option<String>,
    /// The fleet's CA certificate (PEM): turns TLS on. The worker verifies
    /// the controllers and storage nodes against it, enrolls for a client
    /// certificate bound to its machine id, and keeps that certificate in
    /// `<machine root>/_fleetmig/tls/`.
    #[arg(long, env = "FLEETMIG_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// File holding a bootstrap token (`fleetmig machines token`) for the
    /// first enrollment; without one the enrollment waits for
    /// `fleetmig machines approve`. A file, never argv: the token is a secret.
    #[arg(long, env = "FLEETMIG_BOOTSTRAP_TOKEN_FILE", requires = "ca")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Connect without TLS. For local development only.
    #[arg(long, env = "FLEETMIG_INSECURE_PLAINTEXT", conflicts_with = "ca")]
    pub insecure_plaintext: bool,
    /// FAULT INJECTION FOR TESTS: sleep this many ms after each captured file.
    #[arg(long, hide = true)]
    pub fault_capture_delay_ms: Option<u64>,
    /// FAULT INJECTION FOR TESTS: captures fail on files with this exact name as if they were
    /// unreadable (tests run as root, which reads even mode-000 files).
    #[arg(long, hide = true)]
    pub fault_unreadable_name: Option<String>,
}

/// Simulation tools.
#[derive(Debug, clap::Subcommand)]
pub enum SimulateCommand {
    /// Generate a Windows XP-style machine tree.
    GenMachine {
        /// Seed of the generator (same seed, same machine).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// User profiles to create.
        #[arg(long, default_value_t = 2)]
        users: u32,
        /// Files per user.
        #[arg(long, default_value_t = 300)]
        files: u32,
        /// Hostname of the machine.
        #[arg(long)]
        hostname: Option<String>,
        /// Where to create it (must be missing or empty).
        dir: PathBuf,
    },
    /// Simulate an OS reinstall: wipe all but the preserved paths, lay down Windows 7.
    Reimage {
        /// Root of the machine.
        #[arg(long)]
        machine_root: PathBuf,
        /// Paths to keep (relative to the root, or absolute under it; repeatable).
        #[arg(long)]
        preserve: Vec<PathBuf>,
    },
}

fn parse_controller(text: &str) -> Result<String, String> {
    let url = text.trim();
    if url.is_empty() {
        return Err("empty controller URL in the list".to_owned());
    }
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|err| format!("bad controller URL {url:?}: {err}"))?;
    Ok(url.to_owned())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} must be key=value"))?;
    if key.is_empty() {
        return Err(format!("label {text:?} has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn offline_verbs_parse() {
        let cli = Cli::try_parse_from([
            "fleetmig-worker",
            "scan",
            "--machine-root",
            "/m",
            "--store",
            "/s",
            "--hardlink",
            "--user-exclude",
            "*\\admin*",
            "--user-exclude",
            "CORP\\*",
            "--user-exclude-older-than",
            "90",
        ])
        .unwrap();
        let Some(crate::offline::Verb::Scan(args)) = cli.command.offline() else {
            panic!("not a scan");
        };
        assert_eq!(args.user_exclude, ["*\\admin*", "CORP\\*"]);
        assert_eq!(args.user_exclude_older_than, Some(90));
        let cli = Cli::try_parse_from([
            "fleetmig-worker",
            "load",
            "--store",
            "/s",
            "--machine-root",
            "/m",
            "--user-map",
            "alice=asmith",
        ])
        .unwrap();
        let Some(crate::offline::Verb::Load(args)) = cli.command.offline() else {
            panic!("not a load");
        };
        assert_eq!(args.user_map, [("alice".into(), "asmith".into())]);
        assert!(Cli::try_parse_from(["fleetmig-worker", "store", "ls", "/s", "--json"]).is_ok());
    }

    fn agent(cli: Cli) -> AgentConfig {
        match cli.command {
            Command::Agent(config) => config,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn the_controller_is_a_list() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["fleetmig-worker", "agent", "--machine-root", "/m"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(agent)
        };
        let one = parse(&["--controller", "http://a:7400"]).unwrap();
        assert_eq!(one.controller, ["http://a:7400"]);
        let three = parse(&["--controller", "http://a:7400, http://b:7400,http://c:7400"]).unwrap();
        assert_eq!(
            three.controller,
            ["http://a:7400", "http://b:7400", "http://c:7400"]
        );
        let repeated = parse(&[
            "--controller",
            "http://a:7400",
            "--controller",
            "http://b:7400",
        ])
        .unwrap();
        assert_eq!(repeated.controller, ["http://a:7400", "http://b:7400"]);
        assert!(parse(&["--controller", "http://a:7400,,http://b:7400"]).is_err());
        assert!(parse(&["--controller", "not a url"]).is_err());
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(
            parse_label("dept=hr").unwrap(),
            ("dept".into(), "hr".into())
        );
        assert!(parse_label("dept").is_err());
        assert!(parse_label("=x").is_err());
    }
}
