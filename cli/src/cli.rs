//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default controller URL when neither `--controller` nor `FLEETMIG_CONTROLLER` is given.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7400";

/// Operate fleetmig migrations: plans, waves, status, events, and a local demo.
#[derive(Debug, Parser)]
#[command(name = "fleetmig", version, propagate_version = true)]
pub struct Cli {
    /// URL of the controller's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "FLEETMIG_CONTROLLER",
        default_value = DEFAULT_CONTROLLER,
        value_name = "URL"
    )]
    pub controller: String,

    /// More log output on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check or store a migration plan.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Start, pause, resume or abort a wave.
    #[command(subcommand)]
    Wave(WaveCommand),
    /// Waves and jobs with their phases.
    Status(StatusArgs),
    /// Enrolled machines.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Follow job transitions and operator actions as they happen (until Ctrl-C).
    Events(EventsArgs),
    /// Run a whole migration locally: controller, storage node and simulated
    /// XP machines, then check every restored file against its original.
    ///
    /// The demo starts its own controller; --controller is ignored.
    Demo(crate::demo::DemoArgs),
}

/// `fleetmig plan ...`
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Check a plan against the controller's inventory without storing it.
    Validate(PlanFileArgs),
    /// Validate and store a plan.
    Apply(PlanFileArgs),
}

/// A plan file argument.
#[derive(Debug, Args)]
pub struct PlanFileArgs {
    /// The plan (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `fleetmig wave ...`
#[derive(Debug, Subcommand)]
pub enum WaveCommand {
    /// Create the wave's jobs and start admitting them.
    Start(WaveArgs),
    /// Stop admitting new jobs (running ones finish).
    Pause(WaveArgs),
    /// Admit jobs again after a pause or a halt.
    Resume(WaveArgs),
    /// Skip every job that has not started.
    Abort(WaveArgs),
}

impl WaveCommand {
    /// The wave named and the action's name.
    pub fn parts(&self) -> (&WaveArgs, &'static str) {
        match self {
            Self::Start(args) => (args, "start"),
            Self::Pause(args) => (args, "pause"),
            Self::Resume(args) => (args, "resume"),
            Self::Abort(args) => (args, "abort"),
        }
    }
}

/// A wave name argument.
#[derive(Debug, Args)]
pub struct WaveArgs {
    /// Name of the wave.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `fleetmig status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this wave.
    #[arg(long, value_name = "WAVE")]
    pub wave: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `fleetmig machines ...`
#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// List enrolled machines with their latest job.
    List(MachinesListArgs),
}

/// `fleetmig machines list`
#[derive(Debug, Args)]
pub struct MachinesListArgs {
    /// Only machines with a job in this wave.
    #[arg(long, value_name = "WAVE")]
    pub wave: Option<String>,
    /// Only machines whose latest job is in this phase.
    #[arg(long, value_name = "PHASE", value_parser = clap::builder::PossibleValuesParser::new(crate::output::PHASE_NAMES))]
    pub state: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `fleetmig events`
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this wave.
    #[arg(long, value_name = "WAVE")]
    pub wave: Option<String>,
    /// Print the stored audit log first, then follow.
    #[arg(long)]
    pub replay: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["fleetmig"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_or_else(|err| panic!("{args:?}: {err}"))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn controller_flag_is_global() {
        let cli = parse(&["status", "--controller", "http://10.0.0.1:7400", "--json"]);
        assert_eq!(cli.controller, "http://10.0.0.1:7400");
        let Command::Status(status) = cli.command else {
            panic!("expected status");
        };
        assert!(status.json);
        assert_eq!(status.wave, None);
    }

    #[test]
    fn plan_and_wave_subcommands() {
        let cli = parse(&["plan", "validate", "plan.toml"]);
        assert!(
            matches!(cli.command, Command::Plan(PlanCommand::Validate(ref args)) if args.file.as_os_str() == "plan.toml")
        );
        let cli = parse(&["wave", "abort", "pilot"]);
        let Command::Wave(wave) = cli.command else {
            panic!("expected wave");
        };
        let (args, action) = wave.parts();
        assert_eq!((args.name.as_str(), action), ("pilot", "abort"));
    }

    #[test]
    fn machines_state_must_be_a_phase_name() {
        let cli = parse(&["machines", "list", "--state", "failed", "--wave", "w1"]);
        let Command::Machines(MachinesCommand::List(list)) = cli.command else {
            panic!("expected machines list");
        };
        assert_eq!(list.state.as_deref(), Some("failed"));
        assert_eq!(list.wave.as_deref(), Some("w1"));
        assert!(
            Cli::try_parse_from(["fleetmig", "machines", "list", "--state", "broken"]).is_err()
        );
    }

    #[test]
    fn demo_defaults() {
        let cli = parse(&["demo"]);
        let Command::Demo(demo) = cli.command else {
            panic!("expected demo");
        };
        assert_eq!((demo.machines, demo.users, demo.files), (5, 2, 300));
        assert!(!demo.keep);
        assert_eq!(demo.work_dir, None);
        let cli = parse(&[
            "demo",
            "--machines",
            "3",
            "--users",
            "1",
            "--files",
            "10",
            "--keep",
        ]);
        let Command::Demo(demo) = cli.command else {
            panic!("expected demo");
        };
        assert_eq!((demo.machines, demo.users, demo.files), (3, 1, 10));
        assert!(demo.keep);
        assert!(Cli::try_parse_from(["fleetmig", "demo", "--machines", "0"]).is_err());
    }

    #[test]
    fn demo_replace_pairs_default_to_two_and_zero_disables_them() {
        let Command::Demo(demo) = parse(&["demo"]).command else {
            panic!("expected demo");
        };
        assert_eq!(demo.replace_pairs, 2);
        let Command::Demo(demo) = parse(&["demo", "--replace-pairs", "0"]).command else {
            panic!("expected demo");
        };
        assert_eq!(demo.replace_pairs, 0);
        assert!(Cli::try_parse_from(["fleetmig", "demo", "--replace-pairs", "1000"]).is_err());
    }
}
