//! `fleetmig-worker`: the agent and the offline/simulation tools.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use fleetmig_worker::config::{Cli, Command, SimulateCommand};
use fleetmig_worker::offline::Code;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // Usage errors get the offline verbs' "bad arguments" code; --help/--version exit 0.
            return if error.use_stderr() {
                Code::BadArguments.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let offline = cli.command.offline();
    let terminal = std::io::stderr().is_terminal();
    // On a terminal the offline verbs draw a progress bar; only warnings go between its frames.
    let default_filter = if offline.is_some() && terminal {
        "warn"
    } else {
        "info"
    };
    fleetmig_runtime::init_tracing(default_filter);
    // Offline verbs are synchronous: they run without an async runtime.
    if let Some(verb) = offline {
        return fleetmig_worker::offline::run(&verb).into();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::FAILURE
        }
    }
}

/// The commands that need the async runtime: the agent and the simulation tools.
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent(config) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(fleetmig_runtime::watch_signals(shutdown.clone()));
            fleetmig_worker::agent::run(config, shutdown).await?;
        }
        Command::Simulate(SimulateCommand::GenMachine {
            seed,
            users,
            files,
            hostname,
            dir,
        }) => {
            let options = fleetmig_state::GenOptions {
                seed,
                users,
                files_per_user: files,
                hostname,
            };
            let report = tokio::task::spawn_blocking(move || {
                fleetmig_state::generate_machine(&dir, &options)
            })
            .await??;
            tracing::info!(hostname = %report.hostname, users = report.users.len(), files = report.files, bytes = report.bytes, "machine generated");
        }
        Command::Simulate(SimulateCommand::Reimage {
            machine_root,
            preserve,
        }) => {
            let report = tokio::task::spawn_blocking(move || {
                fleetmig_state::simulate_reimage(&machine_root, &preserve)
            })
            .await??;
            tracing::info!(hostname = %report.hostname, removed = report.removed_entries, preserved = ?report.preserved, "machine reimaged");
        }
        Command::Scan(_) | Command::Load(_) | Command::Store(_) => {
            anyhow::bail!("offline verbs run without the async runtime")
        }
    }
    Ok(())
}
