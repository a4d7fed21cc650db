//! `fleetmig-controller`: parses flags, sets up logging and signals, runs.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleetmig_runtime::init_tracing("info");
    let config = fleetmig_controller::Config::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(fleetmig_runtime::watch_signals(shutdown.clone()));
    fleetmig_controller::server::run(config, shutdown).await?;
    Ok(())
}
