//! `fleetmig-storage-node`: parses flags, sets up logging and runs the node,
//! or runs a maintenance command (`scrub`: exit code 0 when the store is
//! intact, 1 when a chunk is corrupt or missing, 2 when it cannot be checked).

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use fleetmig_storage_node::scrub::{self, ScrubOptions};
use fleetmig_storage_node::{Cli, Command, Config, ScrubArgs};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match (cli.command, cli.serve) {
        (Some(Command::Scrub(args)), _) => run_scrub(&args),
        (None, Some(config)) => run_server(config),
        (None, None) => Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--data-dir and --controller are required to run the node",
            )
            .exit(),
    }
}

fn run_server(config: Config) -> anyhow::Result<ExitCode> {
    fleetmig_runtime::init_tracing("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(fleetmig_runtime::watch_signals(shutdown.clone()));
        fleetmig_storage_node::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_scrub(args: &ScrubArgs) -> anyhow::Result<ExitCode> {
    fleetmig_runtime::init_tracing("warn");
    let options = ScrubOptions {
        quarantine: args.quarantine,
    };
    let report = match scrub::scrub(&args.data_dir, options) {
        Ok(report) => report,
        Err(err) => {
            // Exit code 2: the store could not be checked (1 means damaged).
            tracing::error!(error = %err, "scrub failed");
            return Ok(ExitCode::from(2));
        }
    };
    let mut stdout = std::io::stdout().lock();
    scrub::write_report(&report, args.json, &mut stdout).context("writing the scrub report")?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
