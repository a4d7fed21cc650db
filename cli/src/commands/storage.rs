//! `fleetmig storage list [--json]`.

use std::process::ExitCode;

use fleetmig_proto::v1::ListStorageNodesRequest;

use crate::cli::StorageListArgs;
use crate::client::{self, rpc_error};
use crate::output;

/// Prints the registered storage nodes, as a table or JSON.
pub async fn list(controller: &str, args: StorageListArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let nodes = client
        .list_storage_nodes(ListStorageNodesRequest {})
        .await
        .map_err(|status| rpc_error(controller, "list storage nodes", &status))?
        .into_inner();
    if args.output.json {
        let document = output::storage_nodes_json(&nodes);
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&output::render_storage_nodes(&nodes))?;
    }
    Ok(ExitCode::SUCCESS)
}
