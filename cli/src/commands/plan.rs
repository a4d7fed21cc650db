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
    let json = args.output.json;
    let request = read_plan(&args.file).await?;
    let file_name = request.file_name.clone();
    let mut client = client::connect(controller).await?;

    let validation = client
        .validate_plan(request.clone())
        .await
        .map_err(|status| rpc_error(controller, &format!("validate plan {file_name}"), &status))?
        .into_inner();
    if !validation.valid || !validation.problems.is_empty() {
        if json {
            let document = output::plan_json(
                &file_name,
                false,
                false,
                &validation.plan,
                &validation.problems,
                &validation.waves,
            );
            output::emit(&serde_json::to_string_pretty(&document)?)?;
        } else {
            output::emit(&output::render_plan_problems(
                &file_name,
                &validation.problems,
            ))?;
        }
        return Ok(ExitCode::FAILURE);
    }
    for warning in &validation.warnings {
        tracing::warn!(
            "{file_name}:{}:{}: {}",
            warning.line,
            warning.column,
            warning.message
        );
    }
    if !apply {
        if json {
            let document = output::plan_json(
                &file_name,
                true,
                false,
                &validation.plan,
                &[],
                &validation.waves,
            );
            output::emit(&serde_json::to_string_pretty(&document)?)?;
        } else {
            output::emit(&output::render_plan_summary(
                "valid plan",
                &validation.plan,
                &validation.waves,
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let applied = client
        .apply_plan(request)
        .await
        .map_err(|status| rpc_error(controller, &format!("apply plan {file_name}"), &status))?
        .into_inner();
    if json {
        let document =
            output::plan_json(&file_name, true, true, &applied.plan, &[], &applied.waves);
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&output::render_plan_summary(
            "applied plan",
            &applied.plan,
            &applied.waves,
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The plan request for `file` (its name as given, for error locations), with
/// the rule files its waves name in `capture.rules` attached, read relative to
/// the plan's directory.
pub async fn read_plan(file: &Path) -> anyhow::Result<PlanRequest> {
    let source = tokio::fs::read_to_string(file)
        .await
        .with_context(|| format!("cannot read plan {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut attachments = std::collections::HashMap::new();
    for name in referenced_rule_files(&source) {
        let path = base.join(&name);
        let xml = tokio::fs::read_to_string(&path).await.with_context(|| {
            format!(
                "cannot read rule file {name} named by plan {} (looked for {})",
                file.display(),
                path.display()
            )
        })?;
        attachments.insert(name, xml);
    }
    Ok(PlanRequest {
        source,
        file_name: file.display().to_string(),
        attachments,
    })
}

/// The built-in rules' name in a plan's `capture.rules`; not a file.
const BUILTIN_RULES: &str = "@builtin";

/// Rule file paths the plan's waves name in `capture.rules`, once each, in
/// order. A plan that does not parse names none: the controller reports its
/// problems with their locations.
pub fn referenced_rule_files(source: &str) -> Vec<String> {
    let Ok(table) = source.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    let waves = table.get("waves").and_then(toml::Value::as_array);
    for wave in waves.into_iter().flatten() {
        let rules = wave
            .get("capture")
            .and_then(|capture| capture.get("rules"))
            .and_then(toml::Value::as_array);
        for name in rules.into_iter().flatten().filter_map(toml::Value::as_str) {
            if name != BUILTIN_RULES && !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}
