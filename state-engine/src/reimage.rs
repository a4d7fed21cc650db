//! Simulated reimaging: wipe an XP tree (keeping the store) and lay down Windows 7.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoResultExt, Result};
use crate::fsutil::{relative_under, remove_tree};
use crate::inventory::{WIN7_COMPUTERNAME, WIN7_VERSION_MARKER, read_hostname};

/// The OS string written to the Windows 7 version marker.
pub const WIN7_VERSION: &str = "Windows 7 Professional 6.1.7601";

/// Directories a fresh Windows 7 image has, relative to the root.
const WIN7_DIRS: &[&str] = &[
    "Users/Public/Documents",
    "Users/Public/Desktop",
    "Users/Default/AppData/Local",
    "Users/Default/AppData/Roaming",
    "Users/Default/Desktop",
    "Users/Default/Documents",
    "Windows/System32",
    "Windows/Temp",
    "Program Files",
    "Program Files (x86)",
];

/// What a reimage did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReimageReport {
    /// The hostname carried over from the old OS.
    pub hostname: String,
    /// Entries removed (a removed directory counts once).
    pub removed_entries: u64,
    /// The preserved paths, relative to the root.
    pub preserved: Vec<String>,
}

/// Removes everything under `root` except the `preserve` paths (relative to the root, or
/// absolute under it; a path outside the root is refused before anything is removed), then lays
/// down a Windows 7 tree that keeps the machine's hostname. Read-only files and directories of
/// the old tree are handled. Running it twice is fine.
pub fn simulate_reimage(root: &Path, preserve: &[PathBuf]) -> Result<ReimageReport> {
    let root = root.canonicalize().at(root)?;
    let preserved: Vec<PathBuf> = preserve
        .iter()
        .map(|path| relative_under(&root, path))
        .collect::<Result<_>>()?;
    let hostname = read_hostname(&root);
    let removed_entries = if preserved.iter().any(|path| path.as_os_str().is_empty()) {
        0
    } else {
        wipe(&root, Path::new(""), &preserved)?
    };

    for dir in WIN7_DIRS {
        let path = root.join(dir);
        fs::create_dir_all(&path).at(&path)?;
    }
    let marker = root.join(WIN7_VERSION_MARKER);
    fs::write(&marker, format!("{WIN7_VERSION}\n")).at(&marker)?;
    let computername = root.join(WIN7_COMPUTERNAME);
    fs::write(&computername, format!("{hostname}\n")).at(&computername)?;
    tracing::info!(root = %root.display(), removed_entries, hostname = %hostname, "reimaged to windows 7");
    Ok(ReimageReport {
        hostname,
        removed_entries,
        preserved: preserved
            .iter()
            .map(|path| path.to_string_lossy().into_owned())
            .collect(),
    })
}

/// Removes the entries of `dir` (at `rel` under the root) except preserved paths and their
/// ancestors, which are descended into. Returns the number of entries removed.
fn wipe(dir: &Path, rel: &Path, preserved: &[PathBuf]) -> Result<u64> {
    let meta = fs::symlink_metadata(dir).at(dir)?;
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(
            dir,
            fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
        )
        .at(dir)?;
    }
    let mut removed = 0;
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let child_rel = rel.join(entry.file_name());
        if preserved.contains(&child_rel) {
            continue;
        }
        let is_real_dir = entry.file_type().at(entry.path())?.is_dir();
        if is_real_dir && preserved.iter().any(|keep| keep.starts_with(&child_rel)) {
            removed += wipe(&entry.path(), &child_rel, preserved)?;
            continue;
        }
        remove_tree(&entry.path())?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{OS_WINDOWS_7, detect};

    #[test]
    fn wipes_keeps_preserved_and_lays_down_win7() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        crate::generate::generate_machine(
            root,
            &crate::GenOptions {
                seed: 5,
                users: 1,
                files_per_user: 40,
                hostname: Some("FRONTDESK".into()),
            },
        )
        .unwrap();
        fs::create_dir_all(root.join("MigStore/data")).unwrap();
        fs::write(root.join("MigStore/data/x"), b"keep").unwrap();
        fs::create_dir_all(root.join("keep/deep")).unwrap();
        fs::write(root.join("keep/deep/file"), b"keep").unwrap();
        fs::write(root.join("keep/other"), b"gone").unwrap();
        let locked = root.join("WINDOWS/locked");
        fs::create_dir(&locked).unwrap();
        fs::write(locked.join("ro"), b"x").unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();

        let outside = tempfile::tempdir().unwrap();
        assert!(simulate_reimage(root, &[outside.path().to_path_buf()]).is_err());
        assert!(simulate_reimage(root, &[PathBuf::from("../x")]).is_err());
        assert!(
            root.join("Documents and Settings").exists(),
            "refusals remove nothing"
        );

        let preserve = [PathBuf::from("MigStore"), root.join("keep/deep")];
        let report = simulate_reimage(root, &preserve).unwrap();
        assert_eq!(report.hostname, "FRONTDESK");
        assert!(!root.join("Documents and Settings").exists());
        assert!(!root.join("WINDOWS").exists());
        assert!(!root.join("keep/other").exists());
        assert_eq!(fs::read(root.join("MigStore/data/x")).unwrap(), b"keep");
        assert_eq!(fs::read(root.join("keep/deep/file")).unwrap(), b"keep");
        let info = detect(root).unwrap();
        assert_eq!(info.os_family, OS_WINDOWS_7);
        assert_eq!(info.os_version, "6.1.7601");
        assert_eq!(info.hostname, "FRONTDESK");
        assert!(info.profiles.is_empty());

        let again = simulate_reimage(root, &preserve).unwrap();
        assert_eq!(again.hostname, "FRONTDESK");
        assert!(root.join("MigStore/data/x").exists());
    }
}
