//! `fleetmig-controller`: parses flags, sets up tracing and signals, runs.

use clap::Parser;
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
    let config = fleetmig_controller::Config::parse();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    fleetmig_controller::server::run(config, shutdown).await?;
    Ok(())
}

/// First SIGINT/SIGTERM drains; a second exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    return;
                }
            };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!("shutting down; signal again to exit at once");
                shutdown.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
