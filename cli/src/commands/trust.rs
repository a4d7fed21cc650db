//! Trust: `fleetmig certs init`, `machines token|pending|approve|revoke`
//! and `migration recover` (key escrow).

use std::process::ExitCode;

use fleetmig_proto::v1::{
    CreateEnrollmentTokenRequest, ListPendingEnrollmentsRequest, MachineActionResponse,
    MachineRequest, RecoverMigrationRequest,
};

use crate::cli::{CertsInitArgs, MachineIdArgs, PendingArgs, RecoverArgs, TokenArgs};
use crate::client::{self, rpc_error};
use crate::output;

/// Writes a CA and the fleet's certificates into `args.dir`.
pub fn certs_init(args: CertsInitArgs) -> anyhow::Result<ExitCode> {
    let report = fleetmig_auth::pki::init_dir(&args.dir, &args.names)?;
    if args.output.json {
        let document = serde_json::json!({
            "dir": report.dir,
            "files": report.files,
            "server_names": report.server_names,
        });
        output::emit(&serde_json::to_string_pretty(&document)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!("created in {}:\n", report.dir.display());
    for file in &report.files {
        text.push_str(&format!("  {}\n", file.display()));
    }
    text.push_str(&format!(
        "server names: {}\nkeep ca.key offline or give it only to the controller (--ca-key)\n",
        report.server_names.join(", ")
    ));
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Creates a bootstrap token and prints it (once).
pub async fn token(controller: &str, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let token = client
        .create_enrollment_token(CreateEnrollmentTokenRequest {
            uses: args.uses,
            ttl_secs: args.ttl.as_secs().max(1),
        })
        .await
        .map_err(|status| rpc_error(controller, "create an enrollment token", &status))?
        .into_inner();
    if args.output.json {
        let document = serde_json::json!({
            "token": token.token,
            "expires_unix_ms": token.expires_unix_ms,
            "uses": token.uses,
        });
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&format!("{}\n", token.token))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists machines waiting for an approval.
pub async fn pending(controller: &str, args: PendingArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let pending = client
        .list_pending_enrollments(ListPendingEnrollmentsRequest {})
        .await
        .map_err(|status| rpc_error(controller, "list pending enrollments", &status))?
        .into_inner();
    if args.output.json {
        let list: Vec<serde_json::Value> = pending
            .pending
            .iter()
            .map(|p| {
                serde_json::json!({
                    "machine_id": p.machine_id,
                    "hostname": p.inventory.as_ref().map(|i| i.hostname.clone()),
                    "requested_unix_ms": p.requested_unix_ms,
                    "peer_address": p.peer_address,
                })
            })
            .collect();
        output::emit(&serde_json::to_string_pretty(
            &serde_json::json!({ "pending": list }),
        )?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    for p in &pending.pending {
        let hostname = p
            .inventory
            .as_ref()
            .map(|i| i.hostname.as_str())
            .unwrap_or("");
        text.push_str(&format!(
            "{}  {hostname}  from {}\n",
            p.machine_id, p.peer_address
        ));
    }
    if text.is_empty() {
        text.push_str("no machine waits for an approval\n");
    }
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Approves a waiting machine.
pub async fn approve(controller: &str, args: MachineIdArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let request = MachineRequest {
        machine_id: args.machine_id.clone(),
    };
    let done = client
        .approve_machine(request)
        .await
        .map_err(|status| rpc_error(controller, "approve the machine", &status))?
        .into_inner();
    print_action(&done, args.output.json)
}

/// Revokes a machine's certificates.
pub async fn revoke(controller: &str, args: MachineIdArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let request = MachineRequest {
        machine_id: args.machine_id.clone(),
    };
    let done = client
        .revoke_machine(request)
        .await
        .map_err(|status| rpc_error(controller, "revoke the machine", &status))?
        .into_inner();
    print_action(&done, args.output.json)
}

/// Prints what an approval or revocation did.
fn print_action(done: &MachineActionResponse, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let document = serde_json::json!({ "machine_id": done.machine_id, "detail": done.detail });
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&format!("{}\n", done.detail))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a migration's recovery information as JSON (it holds secrets).
pub async fn recover(controller: &str, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let info = client
        .recover_migration(RecoverMigrationRequest {
            migration_id: args.migration_id,
        })
        .await
        .map_err(|status| rpc_error(controller, "recover the migration", &status))?
        .into_inner();
    let tokens: Vec<String> = info
        .restore_tokens
        .iter()
        .map(|token| hex::encode(prost::Message::encode_to_vec(token)))
        .collect();
    let document = serde_json::json!({
        "migration_id": info.migration_id,
        "source_machine_id": info.source_machine_id,
        "destination_machine_id": info.destination_machine_id,
        "migration_key_hex": info.migration_key_hex,
        "fleet_key_hex": info.fleet_key_hex,
        "node_endpoints": info.node_endpoints,
        "restore_tokens_hex": tokens,
        "manifest_digest": info.manifest_digest,
    });
    output::emit(&serde_json::to_string_pretty(&document)?)?;
    Ok(ExitCode::SUCCESS)
}
