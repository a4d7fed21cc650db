//! `fleetmig machines list [--wave W] [--state S] [--json]`.

use std::process::ExitCode;

use fleetmig_proto::v1::ListMachinesRequest;

use crate::cli::MachinesListArgs;
use crate::client::{self, rpc_error};
use crate::output;

/// Prints enrolled machines, as a table or JSON.
pub async fn list(controller: &str, args: MachinesListArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let machines = client
        .list_machines(ListMachinesRequest {
            wave: args.wave.unwrap_or_default(),
            state: args.state.unwrap_or_default(),
        })
        .await
        .map_err(|status| rpc_error(controller, "list machines", &status))?
        .into_inner();
    if args.output.json {
        let document = output::machines_json(&machines);
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&output::render_machines(&machines, output::now_unix_ms()))?;
    }
    Ok(ExitCode::SUCCESS)
}
