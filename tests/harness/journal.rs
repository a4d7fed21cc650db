//! The worker's journal (`<machine root>/_fleetmig/journal.jsonl`), read as a black box:
//! one JSON object a line, appended for each action the worker takes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One line of a worker's journal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JournalEntry {
    /// The job the action was for.
    pub job_id: String,
    /// The fence the worker held.
    pub fence: u64,
    /// What it did: `capture.start`, `capture.verified`, `reimage.start`,
    /// `reimage.done`, `restore.done`, `store.deleted`, ...
    pub event: String,
    /// When, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub unix_ms: i64,
    /// Free-form detail.
    #[serde(default)]
    pub detail: String,
}

/// Path of the journal of the machine at `machine_root`.
pub fn journal_path(machine_root: &Path) -> PathBuf {
    machine_root.join("_fleetmig").join("journal.jsonl")
}

/// Every entry of the machine's journal, oldest first; empty when there is none yet.
///
/// A torn last line (the worker killed while appending) is skipped.
///
/// # Panics
/// When the journal cannot be read, or a line other than the last is not an entry.
pub fn read_journal(machine_root: &Path) -> Vec<JournalEntry> {
    let path = journal_path(machine_root);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => panic!("cannot read the journal {}: {err}", path.display()),
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let mut entries = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_str::<JournalEntry>(line) {
            Ok(entry) => entries.push(entry),
            Err(_) if index + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(err) => panic!(
                "line {} of the journal {} is not a journal entry ({err}): {line}",
                index + 1,
                path.display()
            ),
        }
    }
    entries
}

/// The upload figures a source worker journals with its `capture.committed` entry (key
/// `upload` of the JSON detail). Every field is required: a worker that stops journaling one
/// fails the test that reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct UploadFigures {
    /// Distinct chunks the committed manifest references.
    pub chunks_referenced: u64,
    /// Distinct chunks the node already held when asked (neither sealed nor sent).
    pub chunks_found_on_node: u64,
    /// Chunks sealed and sent because the node lacked them when asked.
    pub chunks_sealed: u64,
    /// Bytes of those sealed chunks.
    pub sealed_bytes: u64,
    /// Chunks the node acknowledged writing.
    pub chunks_stored: u64,
    /// Chunks sent that the node already held when they arrived.
    pub chunks_sent_already_held: u64,
    /// Chunks sent again after an upload stream broke.
    pub chunks_resent: u64,
}

/// The detail of a source's `capture.committed` journal entry (the fields the tests read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommittedCapture {
    /// Files captured.
    pub files: u64,
    /// Bytes in the captured files.
    pub bytes: u64,
    /// Digest of the sealed manifest.
    pub manifest_digest: String,
    /// How the chunks got to the node.
    pub upload: UploadFigures,
}

/// The latest `capture.committed` entry of `job_id` in the journal of the machine at `root`.
///
/// # Panics
/// When there is none, or its detail lacks any of the fields of [`CommittedCapture`].
pub fn committed_capture(root: &Path, job_id: &str) -> CommittedCapture {
    let journal = read_journal(root);
    let entry = journal
        .iter()
        .rev()
        .find(|entry| entry.job_id == job_id && entry.event == "capture.committed")
        .unwrap_or_else(|| {
            panic!(
                "the journal of {} has no capture.committed for {job_id}: {:?}",
                root.display(),
                journal
                    .iter()
                    .map(|entry| format!("{} {}", entry.job_id, entry.event))
                    .collect::<Vec<_>>()
            )
        });
    serde_json::from_str(&entry.detail).unwrap_or_else(|err| {
        panic!(
            "the capture.committed detail of {job_id} on {} lacks the expected fields ({err}): {}",
            root.display(),
            entry.detail
        )
    })
}
