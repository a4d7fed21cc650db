//! `fleetmig plan validate|apply FILE`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use fleetmig_proto::v1::PlanRequest;

use crate::cli::PlanCommand;
use crate::client::{self, rpc_error};
use crate::output;

/// Validates (and for `apply`, stores) the plan file.
///
/// Problems are printed as `FILE:LINE:COL: message` and exit with 1. `apply`
/// validates first so that problems come with their locations.
pub async fn run(controller: &str, command: PlanCommand) -> anyhow::Result<ExitCode> {
    let (args, apply) = match command {
        PlanCommand::Validate(args) => (args, false),
        PlanCommand::Apply(args) => (args, true),
    };
    let request = read_plan(&args.file).await?;
    let file_name = request.file_name.clone();
    let mut client = client::connect(controller).await?;

    let validation = client
        .validate_plan(request.clone())
        .await
        .map_err(|status| rpc_error(controller, &format!("validate plan {file_name}"), &status))?
        .into_inner();
    if !validation.valid || !validation.problems.is_empty() {
        output::emit(&output::render_plan_problems(
            &file_name,
            &validation.problems,
        ))?;
        return Ok(ExitCode::FAILURE);
    }
    if !apply {
        output::emit(&output::render_plan_summary(
            "valid plan",
            &validation.plan,
            &validation.waves,
        ))?;
        return Ok(ExitCode::SUCCESS);
    }

    let applied = client
        .apply_plan(request)
        .await
        .map_err(|status| rpc_error(controller, &format!("apply plan {file_name}"), &status))?
        .into_inner();
    output::emit(&output::render_plan_summary(
        "applied plan",
        &applied.plan,
        &applied.waves,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The plan request for `file` (its name as given, for error locations).
pub async fn read_plan(file: &Path) -> anyhow::Result<PlanRequest> {
    let source = tokio::fs::read_to_string(file)
        .await
        .with_context(|| format!("cannot read plan {}", file.display()))?;
    Ok(PlanRequest {
        source,
        file_name: file.display().to_string(),
    })
}
