//! The demo's final report: a table of the migrations, and the comparison of
//! every restored file with its original.

use std::collections::HashMap;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets};
use fleetmig_proto::v1::{JobPhase, JobStatus};

use super::machines::DemoMachine;
use crate::output::{self, phase_of};

/// Most mismatching paths listed.
const MAX_LISTED: usize = 10;

/// The migration table: machine, scenario, users, files, bytes, duration, result.
pub fn render_summary(jobs: &[JobStatus], now_unix_ms: i64) -> String {
    let mut jobs: Vec<&JobStatus> = jobs.iter().collect();
    jobs.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(vec![
        "MACHINE", "SCENARIO", "USERS", "FILES", "BYTES", "DURATION", "RESULT",
    ]);
    for job in jobs {
        let captured = job.captured.clone().unwrap_or_default();
        let files = job
            .restored
            .as_ref()
            .map_or(captured.files, |restored| restored.files);
        table.add_row(vec![
            job.hostname.clone(),
            output::scenario_label(job.scenario).to_owned(),
            captured.users.to_string(),
            files.to_string(),
            output::format_bytes(captured.bytes),
            output::job_duration(job, now_unix_ms)
                .map_or_else(|| "-".to_owned(), output::format_duration),
            result_text(job),
        ]);
    }
    for index in 2..=5 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = table.to_string();
    text.push('\n');
    text
}

fn result_text(job: &JobStatus) -> String {
    match phase_of(job.phase) {
        JobPhase::Done => "ok".to_owned(),
        JobPhase::Failed => match &job.failure {
            Some(failure) => format!(
                "FAILED in {}: {}",
                output::phase_label(failure.phase),
                failure.reason
            ),
            None => "FAILED".to_owned(),
        },
        phase => fleetmig_proto::phase_name(phase).to_owned(),
    }
}

/// What comparing the machines with their fingerprints found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Machines compared (those whose job is done).
    pub machines: usize,
    /// Files that match their original.
    pub matched: u64,
    /// Files missing after the migration, as `HOST: path`.
    pub missing: Vec<String>,
    /// Files restored with other content or metadata, as `HOST: path`.
    pub different: Vec<String>,
}

impl Verification {
    /// Whether every expected file matched.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty()
    }
}

/// Compares every machine whose job is done with its expected fingerprints.
pub async fn verify(
    machines: Vec<DemoMachine>,
    jobs: &[JobStatus],
) -> anyhow::Result<Verification> {
    let done: HashMap<&str, bool> = jobs
        .iter()
        .map(|job| (job.hostname.as_str(), phase_of(job.phase) == JobPhase::Done))
        .collect();
    let mut verification = Verification::default();
    for machine in machines {
        if !done
            .get(machine.hostname.as_str())
            .copied()
            .unwrap_or(false)
        {
            continue;
        }
        let hostname = machine.hostname.clone();
        let root = machine.root.clone();
        let report = tokio::task::spawn_blocking(move || {
            fleetmig_state::fingerprint::compare(&machine.expected, &machine.root)
        })
        .await
        .context("comparison task failed")?
        .with_context(|| format!("cannot compare {} with its fingerprints", root.display()))?;
        verification.machines += 1;
        verification.matched += report.matched;
        let prefix = |path: String| format!("{hostname}: {path}");
        verification
            .missing
            .extend(report.missing.into_iter().map(prefix));
        verification
            .different
            .extend(report.different.into_iter().map(prefix));
    }
    Ok(verification)
}

/// The verdict lines; `failed_jobs` counts jobs not done.
pub fn render_verdict(
    verification: &Verification,
    failed_jobs: usize,
    total_jobs: usize,
) -> String {
    let mut text = String::new();
    if failed_jobs > 0 {
        text.push_str(&format!(
            "{failed_jobs} of {total_jobs} migrations did not complete\n"
        ));
    }
    if verification.is_ok() {
        let plural = if verification.machines == 1 { "" } else { "s" };
        text.push_str(&format!(
            "all {} restored files on {} machine{plural} match their originals\n",
            verification.matched, verification.machines
        ));
        return text;
    }
    text.push_str(&format!(
        "MISMATCH: {} missing and {} different files on {} machines ({} matched):\n",
        verification.missing.len(),
        verification.different.len(),
        verification.machines,
        verification.matched
    ));
    let listed = verification
        .missing
        .iter()
        .map(|path| (path, "missing"))
        .chain(
            verification
                .different
                .iter()
                .map(|path| (path, "different")),
        )
        .take(MAX_LISTED);
    for (path, kind) in listed {
        text.push_str(&format!("  {path} ({kind})\n"));
    }
    let total = verification.missing.len() + verification.different.len();
    if total > MAX_LISTED {
        text.push_str(&format!("  ... and {} more\n", total - MAX_LISTED));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_proto::v1::{CaptureSummary, Failure, RestoreSummary, Scenario};

    #[test]
    fn summary_lists_every_machine_with_its_result() {
        let done = JobStatus {
            hostname: "PC-0002".into(),
            scenario: Scenario::Refresh as i32,
            phase: JobPhase::Done as i32,
            captured: Some(CaptureSummary {
                users: 2,
                files: 600,
                bytes: 2048,
                ..CaptureSummary::default()
            }),
            restored: Some(RestoreSummary {
                files: 598,
                ..RestoreSummary::default()
            }),
            started_unix_ms: 1_000,
            finished_unix_ms: 3_500,
            ..JobStatus::default()
        };
        let failed = JobStatus {
            hostname: "PC-0001".into(),
            phase: JobPhase::Failed as i32,
            failure: Some(Failure {
                phase: JobPhase::Capturing as i32,
                reason: "NTUSER.DAT locked".into(),
                retryable: false,
            }),
            ..JobStatus::default()
        };
        let text = render_summary(&[done, failed], 10_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("PC-0001"), "sorted by hostname: {text}");
        assert!(
            lines[1].contains("FAILED in capturing: NTUSER.DAT locked"),
            "{text}"
        );
        assert!(
            lines[2].contains("refresh") && lines[2].contains("598"),
            "{text}"
        );
        assert!(
            lines[2].contains("2.0 KiB") && lines[2].contains("2.5s"),
            "{text}"
        );
        assert!(lines[2].trim_end().ends_with("ok"), "{text}");
    }

    #[test]
    fn verdict_reports_success_and_mismatches() {
        let ok = Verification {
            machines: 5,
            matched: 1234,
            ..Verification::default()
        };
        assert_eq!(
            render_verdict(&ok, 0, 5),
            "all 1234 restored files on 5 machines match their originals\n"
        );

        let bad = Verification {
            machines: 2,
            matched: 7,
            missing: (0..12).map(|n| format!("PC-0001: Users/a/f{n}")).collect(),
            different: vec!["PC-0002: Users/b/x".into()],
        };
        let text = render_verdict(&bad, 1, 3);
        assert!(
            text.starts_with(
                "1 of 3 migrations did not complete\nMISMATCH: 12 missing and 1 different"
            ),
            "{text}"
        );
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("  PC-"))
                .count(),
            10
        );
        assert!(text.contains("... and 3 more"), "{text}");
    }
}
