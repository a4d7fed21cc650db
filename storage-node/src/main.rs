//! `fleetmig-storage-node`: parses flags, sets up logging and runs the node.

use clap::Parser;
use fleetmig_storage_node::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    fleetmig_runtime::init_tracing("info");
    let shutdown = CancellationToken::new();
    tokio::spawn(fleetmig_runtime::watch_signals(shutdown.clone()));
    fleetmig_storage_node::run(config, shutdown).await?;
    Ok(())
}
