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
