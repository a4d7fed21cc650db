//! The agent's durable state on the machine: its identity and its journal.
//!
//! Both live in `<machine root>/_fleetmig/`, which the reimage preserves
//! (like SCCM's `_SMSTaskSequence` folder), so a worker that comes back
//! after a reimage or a crash knows who it is and what it already did.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Folder of the agent's state, relative to the machine root.
pub const AGENT_DIR: &str = "_fleetmig";
/// Folder of hard-link migration stores, relative to the machine root.
pub const STORE_DIR: &str = "StateStore";

/// Who this machine is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Identity {
    /// Id given by the controller (empty before the first enrollment).
    pub machine_id: String,
    /// Stable id of the hardware, made once and kept across reimages.
    pub hardware_id: String,
}

/// One line of the journal: something the worker did for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The job.
    pub job_id: String,
    /// Fence under which it was done.
    pub fence: u64,
    /// What happened (`capture.start`, `capture.verified`, `reimage.start`, ...).
    pub event: String,
    /// When, in ms since the Unix epoch.
    pub unix_ms: i64,
    /// Detail, e.g. the manifest digest or a restore summary as JSON.
    #[serde(default)]
    pub detail: String,
}

/// Paths of the agent's state for one machine root.
#[derive(Debug, Clone)]
pub struct AgentState {
    root: PathBuf,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

impl AgentState {
    /// The agent state of the machine whose disk is `root`; creates its folder.
    pub fn open(root: &Path) -> Result<AgentState> {
        let dir = root.join(AGENT_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(AgentState {
            root: root.to_path_buf(),
        })
    }

    /// The machine root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The agent's folder.
    pub fn dir(&self) -> PathBuf {
        self.root.join(AGENT_DIR)
    }

    /// The hard-link store of `job_id`.
    pub fn store_for(&self, job_id: &str) -> PathBuf {
        self.root.join(STORE_DIR).join(job_id)
    }

    /// Paths the reimage must keep, relative to the root.
    pub fn preserved() -> Vec<PathBuf> {
        vec![PathBuf::from(AGENT_DIR), PathBuf::from(STORE_DIR)]
    }

    fn identity_path(&self) -> PathBuf {
        self.dir().join("agent.json")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir().join("journal.jsonl")
    }

    /// Loads the identity, creating one with a new hardware id if absent.
    pub fn identity(&self) -> Result<Identity> {
        let path = self.identity_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| Error::AgentState {
                path,
                reason: err.to_string(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity {
                    machine_id: String::new(),
                    hardware_id: uuid::Uuid::new_v4().to_string(),
                };
                self.save_identity(&identity)?;
                Ok(identity)
            }
            Err(err) => Err(Error::io(path, err)),
        }
    }

    /// Persists the identity atomically.
    pub fn save_identity(&self, identity: &Identity) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(identity).expect("identity serializes");
        write_atomically(&self.identity_path(), &bytes)
    }

    /// Appends an entry to the journal and syncs it to disk.
    pub fn record(&self, job_id: &str, fence: u64, event: &str, detail: String) -> Result<()> {
        let entry = JournalEntry {
            job_id: job_id.to_string(),
            fence,
            event: event.to_string(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
            detail,
        };
        let path = self.journal_path();
        let mut line = serde_json::to_vec(&entry).expect("journal entries serialize");
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(&line).map_err(|e| Error::io(&path, e))?;
        file.sync_data().map_err(|e| Error::io(&path, e))
    }

    /// All journal entries, oldest first. A torn last line (crash while
    /// appending) is ignored.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        let path = self.journal_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Error::io(path, err)),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }

    /// Highest fence accepted per job, from the journal.
    pub fn highest_fences(&self) -> Result<HashMap<String, u64>> {
        let mut fences = HashMap::new();
        for entry in self.journal()? {
            let fence = fences.entry(entry.job_id).or_insert(0);
            *fence = (*fence).max(entry.fence);
        }
        Ok(fences)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_journal_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState::open(dir.path()).unwrap();
        let mut identity = state.identity().unwrap();
        assert!(identity.machine_id.is_empty());
        identity.machine_id = "m-1".into();
        state.save_identity(&identity).unwrap();
        state
            .record("j", 5, "capture.start", String::new())
            .unwrap();
        state
            .record("j", 9, "capture.verified", "abc".into())
            .unwrap();

        let reopened = AgentState::open(dir.path()).unwrap();
        assert_eq!(reopened.identity().unwrap().machine_id, "m-1");
        assert_eq!(
            reopened.identity().unwrap().hardware_id,
            identity.hardware_id
        );
        let journal = reopened.journal().unwrap();
        assert_eq!(journal.len(), 2);
        assert_eq!(reopened.highest_fences().unwrap()["j"], 9);
    }

    #[test]
    fn a_torn_journal_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState::open(dir.path()).unwrap();
        state
            .record("j", 1, "capture.start", String::new())
            .unwrap();
        let path = dir.path().join(AGENT_DIR).join("journal.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"job_id\":\"j\",\"fen");
        std::fs::write(&path, text).unwrap();
        assert_eq!(state.journal().unwrap().len(), 1);
    }
}
