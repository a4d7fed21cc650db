//! `fleetmig status [--wave W] [--json]`.

use std::process::ExitCode;

use fleetmig_proto::v1::StatusRequest;

use crate::cli::StatusArgs;
use crate::client::{self, rpc_error};
use crate::output;

/// Prints waves and jobs, as tables or JSON.
pub async fn run(controller: &str, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let status = client
        .get_status(StatusRequest {
            wave: args.wave.unwrap_or_default(),
        })
        .await
        .map_err(|status| rpc_error(controller, "get status", &status))?
        .into_inner();
    if args.output.json {
        let document = output::status_json(&status, controller);
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&output::render_status(&status, output::now_unix_ms()))?;
    }
    Ok(ExitCode::SUCCESS)
}
