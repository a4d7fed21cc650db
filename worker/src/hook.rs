//! The reimage hook. A real deployment runs its own command (an OS
//! deployment task sequence); demos and tests use the built-in simulation,
//! which wipes the tree but the preserved folders and lays down Windows 7.

use crate::error::{Error, Result};
use crate::identity::AgentState;
use std::path::Path;

/// How the worker reimages its machine.
#[derive(Debug, Clone)]
pub enum ReimageHook {
    /// `fleetmig_state::simulate_reimage`, keeping the agent and store folders.
    Simulated,
    /// A shell command, run with `FLEETMIG_MACHINE_ROOT`, `FLEETMIG_STORE`
    /// and `FLEETMIG_PRESERVE` (colon-separated) in its environment.
    Command(String),
}

impl ReimageHook {
    /// Runs the hook for the machine at `root` whose verified store is `store`.
    pub async fn run(&self, root: &Path, store: &Path) -> Result<()> {
        match self {
            ReimageHook::Simulated => {
                let machine_root = root.to_path_buf();
                let report = tokio::task::spawn_blocking(move || {
                    fleetmig_state::simulate_reimage(&machine_root, &AgentState::preserved())
                })
                .await
                .map_err(|err| Error::ReimageHook {
                    command: "simulated reimage".into(),
                    reason: err.to_string(),
                })??;
                tracing::info!(root = %root.display(), removed = report.removed_entries, "simulated reimage done");
                Ok(())
            }
            ReimageHook::Command(command) => {
                let preserve = AgentState::preserved()
                    .iter()
                    .map(|p| root.join(p).display().to_string())
                    .collect::<Vec<_>>()
                    .join(":");
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .env("FLEETMIG_MACHINE_ROOT", root)
                    .env("FLEETMIG_STORE", store)
                    .env("FLEETMIG_PRESERVE", preserve)
                    .status()
                    .await
                    .map_err(|err| Error::ReimageHook {
                        command: command.clone(),
                        reason: err.to_string(),
                    })?;
                if status.success() {
                    Ok(())
                } else {
                    Err(Error::ReimageHook {
                        command: command.clone(),
                        reason: status.to_string(),
                    })
                }
            }
        }
    }
}
