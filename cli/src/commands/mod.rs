//! The operator commands (everything but the demo, which has its own module).

mod events;
mod machines;
mod plan;
mod status;
mod storage;
mod trust;
mod wave;

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, MachinesCommand, MigrationCommand, StorageCommand};

/// Runs the parsed command line; `shutdown` is cancelled on Ctrl-C.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    crate::client::set_tls(cli.ca.as_deref(), cli.cert.as_deref(), cli.key.as_deref())?;
    let controller = cli.controller;
    match cli.command {
        Command::Machines(MachinesCommand::Token(args)) => trust::token(&controller, args).await,
        Command::Machines(MachinesCommand::Pending(args)) => {
            trust::pending(&controller, args).await
        }
        Command::Machines(MachinesCommand::Approve(args)) => {
            trust::approve(&controller, args).await
        }
        Command::Machines(MachinesCommand::Revoke(args)) => trust::revoke(&controller, args).await,
        Command::Certs(crate::cli::CertsCommand::Init(args)) => trust::certs_init(args),
        Command::Migration(MigrationCommand::Recover(args)) => {
            trust::recover(&controller, args).await
        }
        Command::Plan(command) => plan::run(&controller, command).await,
        Command::Wave(command) => wave::run(&controller, command, &operator_actor()).await,
        Command::Status(args) => status::run(&controller, args).await,
        Command::Machines(MachinesCommand::List(args)) => machines::list(&controller, args).await,
        Command::Storage(StorageCommand::List(args)) => storage::list(&controller, args).await,
        Command::Events(args) => events::run(&controller, args, shutdown).await,
        Command::Demo(args) => crate::demo::run(args, shutdown).await,
    }
}

/// Who the audit log records for operator actions: `operator:$USER`.
pub fn operator_actor() -> String {
    actor_for(std::env::var("USER").ok().as_deref())
}

fn actor_for(user: Option<&str>) -> String {
    match user.map(str::trim) {
        Some(user) if !user.is_empty() => format!("operator:{user}"),
        _ => "operator:cli".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_names_the_operator() {
        assert_eq!(actor_for(Some("alice")), "operator:alice");
        assert_eq!(actor_for(Some("")), "operator:cli");
        assert_eq!(actor_for(None), "operator:cli");
    }
}
