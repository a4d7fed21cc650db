//! The demo's final report: a table of the migrations, the comparison of
//! every restored file with its original, and the check that every replace
//! source is left as it was.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets};
use fleetmig_proto::v1::{JobPhase, JobStatus};
use fleetmig_state::fingerprint::{self, CompareReport, FileFingerprint};

use super::machines::{DemoMachine, ReplacePair};
use super::progress::job_label;
use crate::output::{self, phase_of};

/// Most mismatching paths listed.
const MAX_LISTED: usize = 10;

/// The migration table: machine (`source -> destination` for a replace),
/// scenario, users, files, bytes, duration, result.
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
            job_label(job),
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
    /// Machines compared: refresh machines and replace destinations whose job is done.
    pub machines: usize,
    /// Files that match their original.
    pub matched: u64,
    /// Files missing after the migration, as `HOST: path`.
    pub missing: Vec<String>,
    /// Files restored with other content or metadata, as `HOST: path`.
    pub different: Vec<String>,
    /// Files of a replace source gone or changed since before the wave, as `HOST: path`.
    pub source_changed: Vec<String>,
    /// What each replace pair came to, in pair order.
    pub pairs: Vec<PairCheck>,
}

impl Verification {
    /// Whether every expected file matched and every replace source is untouched.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty() && self.source_changed.is_empty()
    }

    /// Adds what comparing `hostname` found; returns (missing, different).
    fn add(&mut self, hostname: &str, report: CompareReport) -> (usize, usize) {
        let counts = (report.missing.len(), report.different.len());
        self.machines += 1;
        self.matched += report.matched;
        let prefix = |path: String| format!("{hostname}: {path}");
        self.missing.extend(report.missing.into_iter().map(prefix));
        self.different
            .extend(report.different.into_iter().map(prefix));
        counts
    }
}

/// What checking one replace pair found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairCheck {
    /// The source's hostname.
    pub source: String,
    /// The destination's hostname.
    pub destination: String,
    /// Whether the destination was compared (its job is done).
    pub compared: bool,
    /// Destination files that match the source's originals.
    pub matched: u64,
    /// Files missing on the destination.
    pub missing: usize,
    /// Files on the destination with other content or metadata.
    pub different: usize,
    /// Files of the source gone or changed.
    pub source_changed: usize,
}

/// Compares every refresh machine whose job is done with its expected
/// fingerprints, every replace destination whose job is done with its
/// source's, and every replace source with what it held before the wave
/// (whatever became of its job: a replace never touches the source).
pub async fn verify(
    machines: Vec<DemoMachine>,
    pairs: Vec<ReplacePair>,
    jobs: &[JobStatus],
) -> anyhow::Result<Verification> {
    // A replace job's hostname is its source's.
    let done: HashMap<&str, bool> = jobs
        .iter()
        .map(|job| (job.hostname.as_str(), phase_of(job.phase) == JobPhase::Done))
        .collect();
    let is_done = |hostname: &str| done.get(hostname).copied().unwrap_or(false);
    let mut verification = Verification::default();
    for machine in machines {
        if !is_done(&machine.hostname) {
            continue;
        }
        let report = compare(machine.expected, machine.root).await?;
        verification.add(&machine.hostname, report);
    }
    for pair in pairs {
        let mut check = PairCheck {
            source: pair.source.hostname.clone(),
            destination: pair.destination.clone(),
            ..PairCheck::default()
        };
        let source_report = compare(pair.source_before, pair.source.root).await?;
        check.source_changed = source_report.missing.len() + source_report.different.len();
        let source = &pair.source.hostname;
        verification.source_changed.extend(
            source_report
                .missing
                .into_iter()
                .chain(source_report.different)
                .map(|path| format!("{source}: {path}")),
        );
        if is_done(source) {
            let report = compare(pair.source.expected, pair.destination_root).await?;
            check.compared = true;
            check.matched = report.matched;
            (check.missing, check.different) = verification.add(&pair.destination, report);
        }
        verification.pairs.push(check);
    }
    Ok(verification)
}

/// `fingerprint::compare` on a blocking thread.
async fn compare(
    expected: BTreeMap<String, FileFingerprint>,
    root: PathBuf,
) -> anyhow::Result<CompareReport> {
    let display = root.display().to_string();
    tokio::task::spawn_blocking(move || fingerprint::compare(&expected, &root))
        .await
        .context("comparison task failed")?
        .with_context(|| format!("cannot compare {display} with its fingerprints"))
}

/// One line for a replace pair:
/// `replace XP-R01 -> W7-R01: 120 files match on W7-R01; XP-R01 untouched`.
fn pair_line(check: &PairCheck) -> String {
    let PairCheck {
        source,
        destination,
        ..
    } = check;
    let restored = if !check.compared {
        format!("{destination} not compared (the job did not complete)")
    } else if check.missing == 0 && check.different == 0 {
        format!("{} files match on {destination}", check.matched)
    } else {
        format!(
            "MISMATCH on {destination}: {} missing, {} different, {} matched",
            check.missing, check.different, check.matched
        )
    };
    let source_state = if check.source_changed == 0 {
        format!("{source} untouched")
    } else {
        format!("{} files changed on {source}", check.source_changed)
    };
    format!("replace {source} -> {destination}: {restored}; {source_state}\n")
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
    for check in &verification.pairs {
        text.push_str(&pair_line(check));
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
        "MISMATCH: {} missing and {} different files on {} machines ({} matched)",
        verification.missing.len(),
        verification.different.len(),
        verification.machines,
        verification.matched
    ));
    if !verification.source_changed.is_empty() {
        text.push_str(&format!(
            ", {} files changed on replace sources",
            verification.source_changed.len()
        ));
    }
    text.push_str(":\n");
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
        .chain(
            verification
                .source_changed
                .iter()
                .map(|path| (path, "changed on the source")),
        )
        .take(MAX_LISTED);
    for (path, kind) in listed {
        text.push_str(&format!("  {path} ({kind})\n"));
    }
    let total = verification.missing.len()
        + verification.different.len()
        + verification.source_changed.len();
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
            ..Verification::default()
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

    #[test]
    fn summary_shows_a_replace_jobs_destination() {
        let replace = JobStatus {
            hostname: "XP-R01".into(),
            destination_hostname: "W7-R01".into(),
            scenario: Scenario::Replace as i32,
            phase: JobPhase::Done as i32,
            ..JobStatus::default()
        };
        let text = render_summary(&[replace], 10_000);
        let row = text.lines().nth(1).expect("a row");
        assert!(
            row.contains("XP-R01 -> W7-R01") && row.contains("replace"),
            "{text}"
        );
    }

    #[test]
    fn verdict_reports_each_replace_pair() {
        let ok = Verification {
            machines: 4,
            matched: 900,
            pairs: vec![PairCheck {
                source: "XP-R01".into(),
                destination: "W7-R01".into(),
                compared: true,
                matched: 300,
                ..PairCheck::default()
            }],
            ..Verification::default()
        };
        assert_eq!(
            render_verdict(&ok, 0, 4),
            "replace XP-R01 -> W7-R01: 300 files match on W7-R01; XP-R01 untouched\n\
             all 900 restored files on 4 machines match their originals\n"
        );

        let bad = Verification {
            machines: 1,
            matched: 5,
            missing: vec!["W7-R01: Users/a/f".into()],
            source_changed: vec!["XP-R02: Documents and Settings/b/x".into()],
            pairs: vec![
                PairCheck {
                    source: "XP-R01".into(),
                    destination: "W7-R01".into(),
                    compared: true,
                    matched: 5,
                    missing: 1,
                    ..PairCheck::default()
                },
                PairCheck {
                    source: "XP-R02".into(),
                    destination: "W7-R02".into(),
                    source_changed: 1,
                    ..PairCheck::default()
                },
            ],
            ..Verification::default()
        };
        let text = render_verdict(&bad, 1, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1 of 2 migrations did not complete");
        assert_eq!(
            lines[1],
            "replace XP-R01 -> W7-R01: MISMATCH on W7-R01: 1 missing, 0 different, 5 matched; XP-R01 untouched"
        );
        assert_eq!(
            lines[2],
            "replace XP-R02 -> W7-R02: W7-R02 not compared (the job did not complete); 1 files changed on XP-R02"
        );
        assert!(
            lines[3].starts_with("MISMATCH: 1 missing and 0 different files on 1 machines (5 matched), 1 files changed on replace sources:"),
            "{text}"
        );
        assert!(
            text.contains("  XP-R02: Documents and Settings/b/x (changed on the source)"),
            "{text}"
        );
    }

    fn write(root: &std::path::Path, rel: &str, content: &str) -> FileFingerprint {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        fingerprint::fingerprint_file(&path).expect("fingerprint")
    }

    #[tokio::test]
    async fn verify_compares_destinations_and_checks_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (refreshed, source, destination) = (
            dir.path().join("pc-0001"),
            dir.path().join("xp-r01"),
            dir.path().join("W7-R01"),
        );
        let target = "Users/alice/Documents/a.txt";
        let refresh_machine = DemoMachine {
            hostname: "PC-0001".into(),
            root: refreshed.clone(),
            expected: BTreeMap::from([(target.to_owned(), write(&refreshed, target, "pc"))]),
        };
        let profile_file = "Documents and Settings/bob/My Documents/b.txt";
        write(&source, profile_file, "bob's");
        let expected = BTreeMap::from([
            (
                "Users/bob/Documents/b.txt".to_owned(),
                write(&destination, "Users/bob/Documents/b.txt", "bob's"),
            ),
            (
                "Users/bob/Documents/gone.txt".to_owned(),
                write(&destination, "Users/bob/Documents/gone.txt", "x"),
            ),
        ]);
        std::fs::remove_file(destination.join("Users/bob/Documents/gone.txt")).expect("rm");
        let pair = ReplacePair {
            source_before: crate::demo::machines::fingerprint_profiles(&source)
                .expect("fingerprint"),
            source: DemoMachine {
                hostname: "XP-R01".into(),
                root: source.clone(),
                expected,
            },
            destination: "W7-R01".into(),
            destination_root: destination,
        };
        std::fs::write(source.join(profile_file), "changed!").expect("touch the source");
        let jobs = [
            JobStatus {
                hostname: "PC-0001".into(),
                phase: JobPhase::Done as i32,
                ..JobStatus::default()
            },
            JobStatus {
                hostname: "XP-R01".into(),
                destination_hostname: "W7-R01".into(),
                phase: JobPhase::Done as i32,
                ..JobStatus::default()
            },
        ];
        let verification = verify(vec![refresh_machine], vec![pair], &jobs)
            .await
            .expect("verify");
        assert_eq!(verification.machines, 2);
        assert_eq!(verification.matched, 2);
        assert_eq!(
            verification.missing,
            ["W7-R01: Users/bob/Documents/gone.txt"]
        );
        assert!(verification.different.is_empty());
        assert_eq!(
            verification.source_changed,
            [format!("XP-R01: {profile_file}")]
        );
        assert_eq!(
            verification.pairs,
            [PairCheck {
                source: "XP-R01".into(),
                destination: "W7-R01".into(),
                compared: true,
                matched: 1,
                missing: 1,
                different: 0,
                source_changed: 1,
            }]
        );
        assert!(!verification.is_ok());
    }

    #[tokio::test]
    async fn an_unfinished_replace_still_checks_its_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("xp-r01");
        write(&source, "Documents and Settings/bob/NTUSER.DAT", "hive");
        let pair = ReplacePair {
            source_before: crate::demo::machines::fingerprint_profiles(&source)
                .expect("fingerprint"),
            source: DemoMachine {
                hostname: "XP-R01".into(),
                root: source,
                expected: BTreeMap::from([(
                    "Users/bob/x".to_owned(),
                    FileFingerprint {
                        size: 1,
                        mtime_ns: 0,
                        mode: 0o644,
                        blake3_hex: String::new(),
                    },
                )]),
            },
            destination: "W7-R01".into(),
            destination_root: dir.path().join("W7-R01"),
        };
        let failed = JobStatus {
            hostname: "XP-R01".into(),
            phase: JobPhase::Failed as i32,
            ..JobStatus::default()
        };
        let verification = verify(Vec::new(), vec![pair], &[failed])
            .await
            .expect("verify");
        assert_eq!(verification.machines, 0);
        assert!(verification.is_ok(), "{verification:?}");
        assert!(!verification.pairs[0].compared);
        assert_eq!(verification.pairs[0].source_changed, 0);
    }
}
