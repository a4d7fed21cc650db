//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default controller URL when neither `--controller` nor `FLEETMIG_CONTROLLER` is given.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7400";

/// Operate fleetmig migrations: plans, waves, status, events, and a local demo.
#[derive(Debug, Parser)]
#[command(name = "fleetmig", version, propagate_version = true)]
pub struct Cli {
    /// URL of the controller's gRPC endpoint, or a comma-separated list of
    /// the controllers of one fleet: the first that answers is used.
    #[arg(
        long,
        global = true,
        env = "FLEETMIG_CONTROLLER",
        default_value = DEFAULT_CONTROLLER,
        value_name = "URL[,URL...]",
        value_parser = parse_controllers
    )]
    pub controller: String,

    /// The fleet's CA certificate (PEM): connect over TLS (https:// URLs).
    #[arg(long, global = true, env = "FLEETMIG_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// The operator's certificate (PEM), naming their role.
    #[arg(long, global = true, env = "FLEETMIG_TLS_CERT", requires = "ca")]
    pub cert: Option<PathBuf>,
    /// The operator's private key (PEM).
    #[arg(long, global = true, env = "FLEETMIG_TLS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// More log output on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--controller`: one URL or a comma-separated list, trimmed (`a,b,c`).
fn parse_controllers(text: &str) -> Result<String, String> {
    let urls: Vec<&str> = text.split(',').map(str::trim).collect();
    if urls.iter().any(|url| url.is_empty()) {
        return Err(format!("empty controller URL in {text:?}"));
    }
    Ok(urls.join(","))
}

/// The subcommands. Every operator command takes `--json` for
/// machine-readable output (one JSON document; JSON lines for a followed
/// event stream).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check or store a migration plan.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Wave controls (start, pause, resume, abort, promote, retry-failed)
    /// and the focused status of one wave.
    #[command(subcommand)]
    Wave(WaveCommand),
    /// Waves and jobs with their phases.
    Status(StatusArgs),
    /// Enrolled machines.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Storage nodes (state migration points).
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Certificates for a test or small deployment.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Key escrow: recover a migration by hand.
    #[command(subcommand)]
    Migration(MigrationCommand),
    /// The audit log (who did what, when); with --follow, job transitions
    /// and operator actions as they happen (until Ctrl-C).
    Events(EventsArgs),
    /// Run a whole migration locally: controller, storage node and simulated
    /// XP machines, then check every restored file against its original.
    ///
    /// The demo starts its own controller; --controller is ignored.
    Demo(crate::demo::DemoArgs),
}

/// `--json`, shared by every operator command.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct JsonFlag {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
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
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig wave ...`
#[derive(Debug, Subcommand)]
pub enum WaveCommand {
    /// Create the wave's jobs and start admitting them.
    Start(WaveArgs),
    /// Stop admitting new jobs and freeze deadlines (running jobs go on).
    Pause(WaveArgs),
    /// Admit jobs again after a pause or a halt by the error budget.
    Resume(WaveArgs),
    /// Start nothing new: skip jobs not started, let running captures
    /// finish and stop with their state kept, let jobs past their capture
    /// finish (never cut mid-reimage).
    Abort(WaveArgs),
    /// Let the next batch of a running wave open (manual advance, or past
    /// unmet success criteria).
    Promote(WaveArgs),
    /// Create a wave NAME-retry-N with the failed machines of NAME (replace
    /// waves: the same pairs), same spec and policy.
    RetryFailed(RetryFailedArgs),
    /// One wave in focus: state, batch, budget, phases, why jobs wait, why
    /// they failed.
    Status(WaveArgs),
}

impl WaveCommand {
    /// The wave named and the action's name.
    pub fn parts(&self) -> (&WaveArgs, &'static str) {
        match self {
            Self::Start(args) => (args, "start"),
            Self::Pause(args) => (args, "pause"),
            Self::Resume(args) => (args, "resume"),
            Self::Abort(args) => (args, "abort"),
            Self::Promote(args) => (args, "promote"),
            Self::RetryFailed(args) => (&args.wave, "retry-failed"),
            Self::Status(args) => (args, "status"),
        }
    }
}

/// A wave name argument.
#[derive(Debug, Args)]
pub struct WaveArgs {
    /// Name of the wave.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig wave retry-failed NAME [--start]`
#[derive(Debug, Args)]
pub struct RetryFailedArgs {
    /// The wave whose failed machines are retried.
    #[command(flatten)]
    pub wave: WaveArgs,
    /// Start the new wave at once (otherwise start it with `wave start`).
    #[arg(long)]
    pub start: bool,
}

/// `fleetmig status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this wave.
    #[arg(long, value_name = "WAVE")]
    pub wave: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig machines ...`
#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// List enrolled machines with their latest job.
    List(MachinesListArgs),
    /// Create a bootstrap token workers enroll with (admin). Printed once.
    Token(TokenArgs),
    /// Machines waiting for an approval to enroll.
    Pending(PendingArgs),
    /// Approve a waiting machine: it gets its certificate (admin).
    Approve(MachineIdArgs),
    /// Revoke a machine's certificates: refused at once (admin).
    Revoke(MachineIdArgs),
}

/// `fleetmig machines token`
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Enrollments the token allows (1: one-time).
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Lifetime, e.g. `1h`, `30m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig machines pending`
#[derive(Debug, Args)]
pub struct PendingArgs {
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// A machine id argument.
#[derive(Debug, Args)]
pub struct MachineIdArgs {
    /// The machine's id (`fleetmig machines list`).
    #[arg(value_name = "ID")]
    pub machine_id: String,
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA and certificates for the controller, storage nodes and
    /// three operators (admin, operator, viewer) in DIR.
    Init(CertsInitArgs),
}

/// `fleetmig certs init`
#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Where to write them (refuses to overwrite a CA).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Extra DNS names or IPs of the servers (localhost and loopback are
    /// always in; repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig migration ...`
#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Print what restoring migration ID by hand needs: its keys, the nodes
    /// holding it and restore tokens (admin; audited).
    Recover(RecoverArgs),
}

/// `fleetmig migration recover`
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The migration (job) id.
    #[arg(value_name = "ID")]
    pub migration_id: String,
    /// Output format (the output is JSON either way: it is for tools).
    #[command(flatten)]
    pub output: JsonFlag,
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
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig storage ...`
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// List storage nodes with their capacity, sessions and last report.
    List(StorageListArgs),
}

/// `fleetmig storage list`
#[derive(Debug, Args)]
pub struct StorageListArgs {
    /// Output format.
    #[command(flatten)]
    pub output: JsonFlag,
}

/// `fleetmig events`
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this wave.
    #[arg(long, value_name = "WAVE")]
    pub wave: Option<String>,
    /// Follow live events until Ctrl-C (without it: print the stored audit
    /// log and exit).
    #[arg(short, long)]
    pub follow: bool,
    /// With --follow: print the stored audit log first (implies --follow).
    #[arg(long)]
    pub replay: bool,
    /// Output format (JSON lines when following).
    #[command(flatten)]
    pub output: JsonFlag,
}

impl EventsArgs {
    /// Whether the command keeps following live events.
    pub fn follows(&self) -> bool {
        self.follow || self.replay
    }

    /// Whether the stored audit log is printed.
    pub fn replays(&self) -> bool {
        self.replay || !self.follow
    }
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
        assert!(status.output.json);
        assert_eq!(status.wave, None);
    }

    #[test]
    fn controller_lists_are_trimmed_and_checked() {
        let cli = parse(&[
            "--controller",
            "http://10.0.0.1:7400, http://10.0.0.2:7400 ,http://10.0.0.3:7400",
            "status",
        ]);
        assert_eq!(
            cli.controller,
            "http://10.0.0.1:7400,http://10.0.0.2:7400,http://10.0.0.3:7400"
        );
        assert_eq!(parse(&["status"]).controller, DEFAULT_CONTROLLER);
        for bad in ["http://a:1,,http://b:2", "http://a:1,", " "] {
            assert!(
                Cli::try_parse_from(["fleetmig", "--controller", bad, "status"]).is_err(),
                "{bad}"
            );
        }
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

    /// Leaf subcommands as `(path, command)`, e.g. `("wave retry-failed", ...)`.
    fn leaves(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        if !command.has_subcommands() {
            out.push((path.trim().to_owned(), command.clone()));
        }
        for sub in command.get_subcommands() {
            leaves(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_operator_command_accepts_json() {
        let mut all = Vec::new();
        leaves(&Cli::command(), "", &mut all);
        let names: Vec<&str> = all.iter().map(|(path, _)| path.as_str()).collect();
        for expected in [
            "plan validate",
            "plan apply",
            "wave start",
            "wave pause",
            "wave resume",
            "wave abort",
            "wave promote",
            "wave retry-failed",
            "wave status",
            "status",
            "machines list",
            "storage list",
            "events",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        for (path, command) in &all {
            // The demo prints its own progress and report; it is not an
            // operator command against a controller.
            if path == "demo" {
                continue;
            }
            assert!(
                command
                    .get_arguments()
                    .any(|arg| arg.get_long() == Some("json")),
                "`fleetmig {path}` has no --json"
            );
        }
        // And it parses in each of them.
        for argv in [
            &["plan", "apply", "p.toml", "--json"][..],
            &["wave", "promote", "pilot", "--json"],
            &["wave", "retry-failed", "pilot", "--start", "--json"],
            &["wave", "status", "pilot", "--json"],
            &["storage", "list", "--json"],
            &["events", "--follow", "--json"],
            &["machines", "list", "--json"],
        ] {
            parse(argv);
        }
    }

    #[test]
    fn new_wave_controls_parse() {
        let Command::Wave(WaveCommand::RetryFailed(retry)) =
            parse(&["wave", "retry-failed", "pilot", "--start"]).command
        else {
            panic!("expected retry-failed");
        };
        assert_eq!(retry.wave.name, "pilot");
        assert!(retry.start);
        assert!(!retry.wave.output.json);
        let Command::Wave(wave) = parse(&["wave", "promote", "pilot", "--json"]).command else {
            panic!("expected wave");
        };
        let (args, action) = wave.parts();
        assert_eq!(
            (args.name.as_str(), action, args.output.json),
            ("pilot", "promote", true)
        );
        let Command::Wave(wave) = parse(&["wave", "status", "w1"]).command else {
            panic!("expected wave");
        };
        assert_eq!(wave.parts().1, "status");
        assert!(Cli::try_parse_from(["fleetmig", "wave", "promote"]).is_err());
        assert!(matches!(
            parse(&["storage", "list"]).command,
            Command::Storage(StorageCommand::List(_))
        ));
    }

    #[test]
    fn events_print_the_log_or_follow() {
        let events = |args: &[&str]| {
            let mut argv = vec!["events"];
            argv.extend_from_slice(args);
            let Command::Events(events) = parse(&argv).command else {
                panic!("expected events");
            };
            (events.follows(), events.replays())
        };
        assert_eq!(events(&[]), (false, true), "the stored log, then exit");
        assert_eq!(events(&["--follow"]), (true, false), "live only");
        assert_eq!(events(&["-f"]), (true, false));
        assert_eq!(events(&["--replay"]), (true, true), "log, then live");
        assert_eq!(events(&["--follow", "--replay"]), (true, true));
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
