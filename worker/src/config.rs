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
}

/// Settings of the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Controller URL, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "FLEETMIG_CONTROLLER")]
    pub controller: String,
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
    /// FAULT INJECTION FOR TESTS: sleep this many ms after each captured file.
    #[arg(long, hide = true)]
    pub fault_capture_delay_ms: Option<u64>,
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
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
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
