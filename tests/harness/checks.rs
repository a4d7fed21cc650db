//! Checks shared by the tests: job status, the audit log's phase transitions, and what
//! a refreshed machine must look like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fleetmig_proto::v1::{Event, JobPhase, JobStatus, StatusResponse};
use fleetmig_state::fingerprint;
use fleetmig_state::inventory::WIN7_VERSION_MARKER;
use fleetmig_state::layout::{WIN7_PROFILES_DIR, XP_PROFILES_DIR};

use crate::journal::{JournalEntry, read_journal};
use crate::machine::MachineSnapshot;

/// Every job of `status`, one line each, for failure messages.
pub fn describe_jobs(status: &StatusResponse) -> String {
    if status.jobs.is_empty() {
        return " (no jobs)".to_owned();
    }
    let mut out = String::new();
    for job in &status.jobs {
        out.push_str(&format!(
            "\n    {} ({}): {} attempt {}",
            job.job_id,
            job.hostname,
            fleetmig_proto::phase_name(job.phase()),
            job.attempt
        ));
        if let Some(progress) = &job.progress {
            out.push_str(&format!(
                ", progress {}/{} files",
                progress.files_done, progress.files_total
            ));
        }
        if let Some(failure) = &job.failure {
            out.push_str(&format!(
                ", FAILED in {}: {}{}",
                fleetmig_proto::phase_name(failure.phase()),
                failure.reason,
                if failure.retryable {
                    " (retryable)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

/// The job `job_id` of `status`.
///
/// # Panics
/// When there is no such job.
pub fn job<'a>(status: &'a StatusResponse, job_id: &str) -> &'a JobStatus {
    status
        .jobs
        .iter()
        .find(|job| job.job_id == job_id)
        .unwrap_or_else(|| panic!("no job {job_id} in the status:{}", describe_jobs(status)))
}

/// The phase of the job `job_id` in `status`.
pub fn phase_of(status: &StatusResponse, job_id: &str) -> JobPhase {
    job(status, job_id).phase()
}

/// One `job.phase` event of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The event's sequence number.
    pub seq: u64,
    /// Phase name before (`captured` in `captured -> reimaging`).
    pub from: String,
    /// Phase name after (`reimaging`).
    pub to: String,
    /// The whole detail.
    pub detail: String,
}

/// Job id -> its phase transitions, in audit log order.
pub type JobTransitions = BTreeMap<String, Vec<Transition>>;

/// The phase transitions (`job.phase` events, detail `<from> -> <to>[: ...]`) of every
/// job in `events`.
///
/// # Panics
/// On a `job.phase` event whose detail does not have that shape.
pub fn job_transitions(events: &[Event]) -> JobTransitions {
    let mut transitions = JobTransitions::new();
    let mut sorted: Vec<&Event> = events.iter().filter(|e| e.kind == "job.phase").collect();
    sorted.sort_by_key(|event| event.seq);
    for event in sorted {
        let (from, rest) = event.detail.split_once(" -> ").unwrap_or_else(|| {
            panic!(
                "job.phase event {} has no \"from -> to\": {:?}",
                event.seq, event.detail
            )
        });
        let to: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        assert!(
            !to.is_empty(),
            "job.phase event {} names no phase: {:?}",
            event.seq,
            event.detail
        );
        transitions
            .entry(event.job_id.clone())
            .or_default()
            .push(Transition {
                seq: event.seq,
                from: from.trim().to_owned(),
                to,
                detail: event.detail.clone(),
            });
    }
    transitions
}

/// The audit events, one line each, for failure messages.
pub fn describe_events(events: &[Event]) -> String {
    events
        .iter()
        .map(|event| {
            format!(
                "\n    #{} {} {} {}",
                event.seq, event.kind, event.job_id, event.detail
            )
        })
        .collect()
}

/// Asserts that the machine of `snapshot` was refreshed by the job `job_id`: every
/// migratable file is in its Windows 7 place with the same content, size, mtime and
/// mode; no temp file came along; the store is gone; Windows 7 is installed and
/// `Documents and Settings` is not.
pub fn assert_refreshed(snapshot: &MachineSnapshot, job_id: &str) {
    let root = &snapshot.root;
    let report = fingerprint::compare(&snapshot.expected, root)
        .unwrap_or_else(|err| panic!("cannot fingerprint {}: {err}", root.display()));
    if !report.is_ok() || report.matched != snapshot.expected.len() as u64 {
        let mut differences = String::new();
        for target in report.different.iter().take(10) {
            let have = fingerprint::fingerprint_file(&root.join(target));
            differences.push_str(&format!(
                "\n    {target}: expected {:?}, found {have:?}",
                snapshot.expected[target]
            ));
        }
        panic!(
            "machine {} was not restored faithfully: {} of {} files matched; {} missing \
             (first: {:?}); {} different:{differences}",
            root.display(),
            report.matched,
            snapshot.expected.len(),
            report.missing.len(),
            &report.missing[..report.missing.len().min(10)],
            report.different.len(),
        );
    }

    let store = root.join("StateStore").join(job_id);
    assert!(
        !store.exists(),
        "the store {} still exists after the job was done",
        store.display()
    );
    assert!(
        root.join(WIN7_VERSION_MARKER).is_file(),
        "{} has no Windows 7 marker {WIN7_VERSION_MARKER}",
        root.display()
    );
    assert!(
        !root.join(XP_PROFILES_DIR).exists(),
        "{} still has {XP_PROFILES_DIR} after the reimage",
        root.display()
    );

    let temp_targets: Vec<&String> = snapshot
        .expected
        .keys()
        .filter(|target| is_temp_path(target))
        .collect();
    assert!(
        temp_targets.is_empty(),
        "the selection would migrate temp files: {temp_targets:?}"
    );
    let users: BTreeSet<&str> = snapshot
        .expected
        .keys()
        .filter_map(|target| target.split('/').nth(1))
        .collect();
    for user in users {
        let profile = format!("{WIN7_PROFILES_DIR}/{user}");
        let restored = fingerprint::list_files_under(root, &profile)
            .unwrap_or_else(|err| panic!("cannot list {profile}: {err}"));
        let temp: Vec<&String> = restored
            .iter()
            .filter(|file| {
                is_temp_path(file)
                    || Path::new(file.as_str()).file_name().is_some_and(|name| {
                        snapshot
                            .temp_files
                            .contains(name.to_string_lossy().as_ref())
                    })
            })
            .collect();
        assert!(
            temp.is_empty(),
            "temp files were restored into {profile}: {temp:?}"
        );
    }
}

/// Whether a Windows 7 profile path lies in a temp or browser cache folder.
fn is_temp_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("/appdata/local/temp/") || lower.contains("/temporary internet files/")
}

/// The journal of the machine at `root`, one line each, for failure messages.
pub fn describe_journal(root: &Path) -> String {
    read_journal(root)
        .iter()
        .map(|entry| {
            format!(
                "\n    {} fence {} {} {}",
                entry.job_id, entry.fence, entry.event, entry.detail
            )
        })
        .collect()
}

/// Asserts that the journal of the machine at `root` shows exactly one `reimage.start`
/// for `job_id`, preceded by a `capture.verified` under the same fence; returns that
/// `reimage.start` entry.
pub fn assert_single_reimage(root: &Path, job_id: &str) -> JournalEntry {
    let journal: Vec<JournalEntry> = read_journal(root)
        .into_iter()
        .filter(|entry| entry.job_id == job_id)
        .collect();
    let reimages: Vec<usize> = journal
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.event == "reimage.start")
        .map(|(index, _)| index)
        .collect();
    assert_eq!(
        reimages.len(),
        1,
        "the journal of {} should show exactly one reimage.start for {job_id}:{}",
        root.display(),
        describe_journal(root)
    );
    let reimage = journal[reimages[0]].clone();
    assert!(
        journal[..reimages[0]]
            .iter()
            .any(|entry| entry.event == "capture.verified" && entry.fence == reimage.fence),
        "the reimage of {job_id} (fence {}) is not preceded by a capture.verified under the same \
         fence in the journal of {}:{}",
        reimage.fence,
        root.display(),
        describe_journal(root)
    );
    reimage
}

/// The phases a refresh job enters, in order, as the audit log names them.
pub const REFRESH_PHASES: [&str; 7] = [
    "assigned",
    "capturing",
    "captured",
    "reimaging",
    "restoring",
    "verifying",
    "done",
];

/// The phases a replace job enters, in order, as the audit log names them (the source
/// captures, its destination restores; nothing is reimaged).
pub const REPLACE_PHASES: [&str; 6] = [
    "assigned",
    "capturing",
    "captured",
    "restoring",
    "verifying",
    "done",
];

/// Asserts that the audit log shows each of the [`REFRESH_PHASES`] entered exactly once
/// by `job_id`, in order, and nothing else (no failure, no phase entered twice).
pub fn assert_each_phase_once(transitions: &JobTransitions, job_id: &str, events: &[Event]) {
    assert_phases_entered_once(transitions, job_id, &REFRESH_PHASES, events);
}

/// Asserts that the audit log shows `job_id` entering exactly `phases`, each once, in order,
/// every transition starting where the previous one ended (no failure, no retry).
pub fn assert_phases_entered_once(
    transitions: &JobTransitions,
    job_id: &str,
    phases: &[&str],
    events: &[Event],
) {
    let entered: Vec<&str> = transitions
        .get(job_id)
        .map(|list| list.iter().map(|t| t.to.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        entered,
        phases,
        "job {job_id} should have entered each phase exactly once, in order; audit log:{}",
        describe_events(events)
    );
    for window in transitions[job_id].windows(2) {
        assert_eq!(
            window[1].from,
            window[0].to,
            "job {job_id}: transition #{} does not start where #{} ended; audit log:{}",
            window[1].seq,
            window[0].seq,
            describe_events(events)
        );
    }
}

/// Hostname -> job id of every job in `status`.
pub fn job_ids_by_hostname(status: &StatusResponse) -> BTreeMap<String, String> {
    status
        .jobs
        .iter()
        .map(|job| (job.hostname.clone(), job.job_id.clone()))
        .collect()
}

/// Asserts that `destination` holds every file the source of `snapshot` had to
/// migrate, in its Windows 7 place, with the same content, size, mtime and mode;
/// and that the source itself was left untouched (a replace never reimages it).
pub fn assert_replaced(snapshot: &MachineSnapshot, destination: &Path) {
    let report = fingerprint::compare(&snapshot.expected, destination)
        .unwrap_or_else(|err| panic!("cannot fingerprint {}: {err}", destination.display()));
    if !report.is_ok() || report.matched != snapshot.expected.len() as u64 {
        let mut differences = String::new();
        for target in report.different.iter().take(10) {
            let have = fingerprint::fingerprint_file(&destination.join(target));
            differences.push_str(&format!(
                "\n    {target}: expected {:?}, found {have:?}",
                snapshot.expected[target]
            ));
        }
        panic!(
            "destination {} does not hold the state of {}: {} of {} files matched; {} missing \
             (first: {:?}); {} different:{differences}",
            destination.display(),
            snapshot.root.display(),
            report.matched,
            snapshot.expected.len(),
            report.missing.len(),
            &report.missing[..report.missing.len().min(10)],
            report.different.len(),
        );
    }
    let still = fingerprint::expected_after_refresh(&snapshot.root)
        .unwrap_or_else(|err| panic!("cannot fingerprint {}: {err}", snapshot.root.display()));
    assert_eq!(
        still,
        snapshot.expected,
        "the source {} changed during its replace migration",
        snapshot.root.display()
    );
}
