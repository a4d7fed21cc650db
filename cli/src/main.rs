//! `fleetmig`: the operator CLI. Parses the command line, sets up logging to
//! stderr and Ctrl-C handling, and hands over to [`commands::run`].

mod cli;
mod client;
mod commands;
mod demo;
mod output;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);

    let shutdown = CancellationToken::new();
    tokio::spawn(fleetmig_runtime::watch_signals(shutdown.clone()));

    match commands::run(cli, shutdown).await {
        Ok(code) => code,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::debug!(error = ?err, "command failed");
            eprintln!("error: {}", output::error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; stdout is reserved for the command's output.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    fleetmig_runtime::init_tracing(default);
}
