//! The restore journal: where a restore decided to put each file it writes, recorded durably
//! before any of them is written.
//!
//! Restored files are not fsync'd one by one (the restore syncs the filesystem once at the
//! end), so after a power loss a file may be under its name with lost content. Without the
//! journal, a resumed restore would take it for a user's different file and restore beside it
//! as `name(1).ext`; with it, the restore knows the name is its own and simply writes it again.
//! The journal also pins collision names chosen by an interrupted run. It belongs to one
//! capture (migration id and manifest creation time) and is removed after a verified restore.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// On-disk form.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    /// The capture: `<migration id>@<manifest created_unix_ms>`.
    capture: String,
    /// (target, where it is being written).
    placed: Vec<(String, String)>,
}

/// The journal of one restore.
#[derive(Debug)]
pub struct RestoreJournal {
    path: PathBuf,
    capture: String,
    placed: HashMap<String, String>,
}

impl RestoreJournal {
    /// Loads the journal at `path` for `capture`; empty when it is missing, unreadable or
    /// belongs to another capture.
    pub fn load(path: &Path, capture: &str) -> Self {
        let placed = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<JournalFile>(&bytes).ok())
            .filter(|file| file.capture == capture)
            .map(|file| file.placed.into_iter().collect())
            .unwrap_or_default();
        Self {
            path: path.to_path_buf(),
            capture: capture.to_owned(),
            placed,
        }
    }

    /// Where an earlier run decided to write `target`, if it did.
    pub fn placed(&self, target: &str) -> Option<&str> {
        self.placed.get(target).map(String::as_str)
    }

    /// Adds decisions and writes the journal durably (temp file, fsync, rename).
    pub fn record(&mut self, decisions: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        self.placed.extend(decisions);
        let file = JournalFile {
            capture: self.capture.clone(),
            placed: self
                .placed
                .iter()
                .map(|(target, actual)| (target.clone(), actual.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("journal serializes");
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
        }
        let temp = self.path.with_extension("tmp");
        let mut handle = std::fs::File::create(&temp).map_err(|error| Error::io(&temp, error))?;
        handle
            .write_all(&bytes)
            .and_then(|()| handle.sync_all())
            .map_err(|error| Error::io(&temp, error))?;
        std::fs::rename(&temp, &self.path).map_err(|error| Error::io(&self.path, error))
    }

    /// Removes the journal (after a verified restore).
    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::io(path, error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reload_for_the_same_capture_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_fleetmig/restore.json");
        let mut journal = RestoreJournal::load(&path, "m@1");
        assert!(journal.placed("Users/a/x.doc").is_none());
        journal
            .record([("Users/a/x.doc".to_owned(), "Users/a/x(1).doc".to_owned())])
            .unwrap();
        let again = RestoreJournal::load(&path, "m@1");
        assert_eq!(again.placed("Users/a/x.doc"), Some("Users/a/x(1).doc"));
        assert!(
            RestoreJournal::load(&path, "m@2")
                .placed("Users/a/x.doc")
                .is_none()
        );
        RestoreJournal::remove(&path).unwrap();
        RestoreJournal::remove(&path).unwrap();
    }
}
