//! What kind of machine a root holds: OS, hostname, volume, profiles.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{IoResultExt, Result};
use crate::layout::{WIN7_PROFILES_DIR, XP_PROFILES_DIR, is_system_profile};

/// The OS family reported for a Windows XP tree.
pub const OS_WINDOWS_XP: &str = "windows-xp";
/// The OS family reported for a Windows 7 tree.
pub const OS_WINDOWS_7: &str = "windows-7";
/// The OS family reported when neither layout is recognised.
pub const OS_UNKNOWN: &str = "unknown";

/// XP product file, relative to the root.
pub const XP_PRODSPEC: &str = "WINDOWS/system32/prodspec.ini";
/// XP hostname file, relative to the root.
pub const XP_COMPUTERNAME: &str = "WINDOWS/system32/computername.txt";
/// Windows 7 version marker written by reimage, relative to the root.
pub const WIN7_VERSION_MARKER: &str = "Windows/System32/fleetmig-os-version";
/// Windows 7 hostname file, relative to the root.
pub const WIN7_COMPUTERNAME: &str = "Windows/System32/computername.txt";

/// A user profile found on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Profile (user) name.
    pub name: String,
    /// Bytes in regular files under the profile.
    pub bytes: u64,
    /// Regular files under the profile.
    pub files: u64,
    /// Last use: mtime of `NTUSER.DAT`, else of the profile directory (seconds since the epoch).
    pub last_used_unix: i64,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Hostname from the OS's computername file, else the root directory's name.
    pub hostname: String,
    /// [`OS_WINDOWS_XP`], [`OS_WINDOWS_7`] or [`OS_UNKNOWN`].
    pub os_family: String,
    /// Version string (`5.1`, `6.1.7601`), empty when unknown.
    pub os_version: String,
    /// Product name (`Windows XP Professional`), empty when unknown.
    pub os_name: String,
    /// Filesystem id of the volume holding the root (statvfs `f_fsid`, hex).
    pub volume_id: String,
    /// Device id of the root (`st_dev`); stores must be on the same device for hard links.
    pub device: u64,
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Size of the volume.
    pub total_bytes: u64,
    /// Whether a hard link could be created inside the root.
    pub supports_hard_links: bool,
    /// Non-system user profiles, sorted by name.
    pub profiles: Vec<ProfileInfo>,
}

/// Inspects the machine under `root`.
pub fn detect(root: &Path) -> Result<MachineInfo> {
    let root_meta = fs::metadata(root).at(root)?;
    let (os_family, os_name, os_version, profiles_dir) = detect_os(root);
    let stat = rustix::fs::statvfs(root).at(root)?;
    let profiles = match profiles_dir {
        Some(dir) => list_profiles(&root.join(dir))?,
        None => Vec::new(),
    };
    Ok(MachineInfo {
        hostname: read_hostname(root),
        os_family: os_family.to_owned(),
        os_version,
        os_name,
        volume_id: format!("{:016x}", stat.f_fsid),
        device: root_meta.dev(),
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
        supports_hard_links: probe_hard_links(root).is_ok(),
        profiles,
    })
}

/// (family, product name, version, profiles dir) of the tree.
fn detect_os(root: &Path) -> (&'static str, String, String, Option<&'static str>) {
    let read_if = |dir: &str, file: &str| {
        root.join(dir)
            .is_dir()
            .then(|| fs::read_to_string(root.join(file)).ok())
            .flatten()
    };
    if let Some(prodspec) = read_if(XP_PROFILES_DIR, XP_PRODSPEC) {
        let field = |key: &str| {
            prodspec
                .lines()
                .find_map(|line| {
                    line.trim()
                        .strip_prefix(key)?
                        .trim_start()
                        .strip_prefix('=')
                })
                .map(|value| value.trim().to_owned())
                .unwrap_or_default()
        };
        return (
            OS_WINDOWS_XP,
            field("Product"),
            field("Version"),
            Some(XP_PROFILES_DIR),
        );
    }
    if let Some(marker) = read_if(WIN7_PROFILES_DIR, WIN7_VERSION_MARKER) {
        let marker = marker.trim();
        let (name, version) = match marker.rsplit_once(' ') {
            Some((name, version)) => (name.to_owned(), version.to_owned()),
            None => (marker.to_owned(), String::new()),
        };
        return (OS_WINDOWS_7, name, version, Some(WIN7_PROFILES_DIR));
    }
    (OS_UNKNOWN, String::new(), String::new(), None)
}

/// The hostname recorded in the tree (XP or Windows 7 location), else the root directory's name.
pub fn read_hostname(root: &Path) -> String {
    [XP_COMPUTERNAME, WIN7_COMPUTERNAME]
        .iter()
        .filter_map(|rel| fs::read_to_string(root.join(rel)).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| {
            root.canonicalize()
                .ok()
                .and_then(|path| {
                    path.file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                })
                .unwrap_or_default()
        })
}

/// Names of the non-system profile directories under `profiles_dir`, sorted.
pub fn profile_names(profiles_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(profiles_dir).at(profiles_dir)? {
        let entry = entry.at(profiles_dir)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dir = entry.file_type().at(entry.path())?.is_dir();
        if is_dir && !is_system_profile(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn list_profiles(profiles_dir: &Path) -> Result<Vec<ProfileInfo>> {
    profile_names(profiles_dir)?
        .into_par_iter()
        .map(|name| {
            let dir = profiles_dir.join(&name);
            let (mut files, mut bytes) = (0, 0);
            for entry in walkdir::WalkDir::new(&dir).follow_links(false) {
                let entry = entry.map_err(|error| {
                    let path = error.path().unwrap_or(&dir).to_path_buf();
                    crate::Error::Io {
                        path,
                        source: error.into(),
                    }
                })?;
                if entry.file_type().is_file() {
                    files += 1;
                    bytes += entry.metadata().map(|meta| meta.len()).unwrap_or(0);
                }
            }
            let last_used_unix = fs::symlink_metadata(dir.join("NTUSER.DAT"))
                .or_else(|_| fs::symlink_metadata(&dir))
                .map(|meta| meta.mtime())
                .unwrap_or(0);
            Ok(ProfileInfo {
                name,
                bytes,
                files,
                last_used_unix,
            })
        })
        .collect()
}

/// Creates a file and a hard link to it inside `dir`, then removes both.
pub(crate) fn probe_hard_links(dir: &Path) -> std::io::Result<()> {
    let unique = format!(
        ".fleetmig-link-probe-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    );
    let original = dir.join(&unique);
    let link = dir.join(format!("{unique}.link"));
    fs::write(&original, b"probe")?;
    let linked = fs::hard_link(&original, &link);
    let _ = fs::remove_file(&link);
    let _ = fs::remove_file(&original);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenOptions, generate_machine};

    #[test]
    fn detects_generated_xp() {
        let root = tempfile::tempdir().unwrap();
        let opts = GenOptions {
            seed: 3,
            users: 2,
            files_per_user: 60,
            hostname: Some("ACCT-PC-07".into()),
        };
        generate_machine(root.path(), &opts).unwrap();
        let info = detect(root.path()).unwrap();
        assert_eq!(info.os_family, OS_WINDOWS_XP);
        assert_eq!(info.os_version, "5.1");
        assert_eq!(info.os_name, "Windows XP Professional");
        assert_eq!(info.hostname, "ACCT-PC-07");
        assert!(info.supports_hard_links);
        assert!(info.total_bytes > 0 && !info.volume_id.is_empty());
        let names: Vec<_> = info
            .profiles
            .iter()
            .map(|profile| profile.name.as_str())
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(
            info.profiles
                .iter()
                .all(|profile| profile.files > 50 && profile.bytes > 0)
        );
        assert!(info.profiles[0].last_used_unix > 1_200_000_000);
        // The probe leaves nothing behind.
        assert!(fs::read_dir(root.path()).unwrap().all(|entry| {
            !entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".fleetmig")
        }));
    }

    #[test]
    fn unknown_tree_falls_back_to_dir_name() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("box-17");
        fs::create_dir(&root).unwrap();
        let info = detect(&root).unwrap();
        assert_eq!(info.os_family, OS_UNKNOWN);
        assert_eq!(info.hostname, "box-17");
        assert!(info.profiles.is_empty());
    }
}
