//! `fleetmig-worker`: the agent and the offline/simulation tools.

use clap::Parser;
use fleetmig_worker::config::{Cli, Command, SimulateCommand};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(config) => {
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
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
    }
    Ok(())
}

/// First SIGINT/SIGTERM stops gracefully; a second exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            tracing::error!("cannot listen for SIGTERM");
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!("stopping; signal again to exit at once");
                shutdown.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
