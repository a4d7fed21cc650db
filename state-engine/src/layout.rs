//! Where things live on Windows XP and Windows 7, and which profile files are migrated.
//!
//! Selection goes through [`Selection`], a small list of rules. Today the rules are the built-in
//! USMT-like defaults; later they can be loaded from USMT-style XML (`MigUser.xml` and friends).

use std::path::{Path, PathBuf};

/// The profiles directory of a Windows XP machine, relative to the machine root.
pub const XP_PROFILES_DIR: &str = "Documents and Settings";
/// The profiles directory of a Windows 7 machine, relative to the machine root.
pub const WIN7_PROFILES_DIR: &str = "Users";
/// Profiles that belong to the system and are never migrated (compared case-insensitively).
pub const SYSTEM_PROFILES: &[&str] = &[
    "All Users",
    "Default User",
    "Default",
    "Public",
    "LocalService",
    "NetworkService",
];

/// Returns true for system profiles that are never migrated (`All Users`, `Default User`, ...).
pub fn is_system_profile(name: &str) -> bool {
    SYSTEM_PROFILES
        .iter()
        .any(|system| system.eq_ignore_ascii_case(name))
}

/// Known-folder renames from an XP profile to a Windows 7 profile, longest prefix first.
///
/// `Local Settings` is a junction to `AppData\Local` on Windows 7, so whatever else lives in it
/// lands there too.
const KNOWN_FOLDERS: &[(&[&str], &[&str])] = &[
    (&["My Documents", "My Pictures"], &["Pictures"]),
    (&["My Documents", "My Music"], &["Music"]),
    (&["My Documents", "My Videos"], &["Videos"]),
    (&["My Documents"], &["Documents"]),
    (&["Application Data"], &["AppData", "Roaming"]),
    (
        &["Local Settings", "Application Data"],
        &["AppData", "Local"],
    ),
    (&["Local Settings"], &["AppData", "Local"]),
];

/// One selection rule. Paths are relative to a profile directory and compared case-insensitively
/// (ASCII), as Windows does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Exclude this directory (or file) and everything under it.
    ExcludeTree(Vec<String>),
    /// Exclude every file or directory with this name, anywhere in the profile.
    ExcludeName(String),
}

/// Decides which profile paths are migrated and where they go on Windows 7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    rules: Vec<Rule>,
}

impl Default for Selection {
    /// The built-in rules: temp, browser cache and history are excluded, and so is `Thumbs.db`.
    fn default() -> Self {
        let tree = |parts: &[&str]| {
            Rule::ExcludeTree(parts.iter().map(|part| (*part).to_owned()).collect())
        };
        Self {
            rules: vec![
                tree(&["Local Settings", "Temp"]),
                tree(&["Local Settings", "Temporary Internet Files"]),
                tree(&["Local Settings", "History"]),
                Rule::ExcludeName("Thumbs.db".to_owned()),
            ],
        }
    }
}

impl Selection {
    /// A selection with exactly these rules (nothing excluded when empty).
    pub fn with_rules(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Adds one rule.
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when the profile-relative path (given as '/'-separated components) is excluded.
    pub fn is_excluded(&self, components: &[&str]) -> bool {
        self.rules.iter().any(|rule| match rule {
            Rule::ExcludeTree(prefix) => {
                components.len() >= prefix.len()
                    && prefix
                        .iter()
                        .zip(components)
                        .all(|(want, have)| want.eq_ignore_ascii_case(have))
            }
            Rule::ExcludeName(name) => components
                .iter()
                .any(|have| name.eq_ignore_ascii_case(have)),
        })
    }

    /// Maps a '/'-separated path relative to an XP profile to the path relative to the Windows 7
    /// profile, or `None` when it is excluded. The empty path (the profile itself) maps to "".
    pub fn map_rel(&self, rel: &str) -> Option<String> {
        let components: Vec<&str> = rel.split('/').filter(|part| !part.is_empty()).collect();
        if self.is_excluded(&components) {
            return None;
        }
        Some(map_components(&components))
    }

    /// [`Selection::map_rel`] for `Path`s; `None` also for paths that are not plain UTF-8 relative paths.
    pub fn map_path(&self, rel: &Path) -> Option<PathBuf> {
        let rel = relative_utf8(rel)?;
        self.map_rel(&rel).map(PathBuf::from)
    }
}

/// Applies the known-folder renames to profile-relative components.
fn map_components(components: &[&str]) -> String {
    for (from, to) in KNOWN_FOLDERS {
        let matches = components.len() >= from.len()
            && from
                .iter()
                .zip(components)
                .all(|(want, have)| want.eq_ignore_ascii_case(have));
        if matches {
            let mut mapped: Vec<&str> = to.to_vec();
            mapped.extend_from_slice(&components[from.len()..]);
            return mapped.join("/");
        }
    }
    components.join("/")
}

/// Joins the normal components of a relative path with '/'; `None` for absolute paths, `..`,
/// or non-UTF-8 names.
fn relative_utf8(rel: &Path) -> Option<String> {
    use std::path::Component;
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Maps a path relative to an XP profile directory to the path relative to the Windows 7 profile
/// directory (`Users/<user>/`) with the default [`Selection`]; `None` when it is not migrated.
///
/// ```
/// use std::path::{Path, PathBuf};
/// use fleetmig_state::layout::map_profile_path;
/// assert_eq!(map_profile_path(Path::new("My Documents/My Music/a.mp3")), Some(PathBuf::from("Music/a.mp3")));
/// assert_eq!(map_profile_path(Path::new("Local Settings/Temp/x.tmp")), None);
/// ```
pub fn map_profile_path(rel: &Path) -> Option<PathBuf> {
    Selection::default().map_path(rel)
}

/// The XP profile directory of `user`, relative to the machine root.
pub fn xp_profile_rel(user: &str) -> String {
    format!("{XP_PROFILES_DIR}/{user}")
}

/// The Windows 7 profile directory of `user`, relative to the machine root.
pub fn win7_profile_rel(user: &str) -> String {
    format!("{WIN7_PROFILES_DIR}/{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rel: &str) -> Option<String> {
        Selection::default().map_rel(rel)
    }

    #[test]
    fn known_folders_are_renamed() {
        assert_eq!(
            map("My Documents/My Pictures/2006/a.jpg").as_deref(),
            Some("Pictures/2006/a.jpg")
        );
        assert_eq!(
            map("My Documents/My Music/a.mp3").as_deref(),
            Some("Music/a.mp3")
        );
        assert_eq!(map("My Documents/My Videos").as_deref(), Some("Videos"));
        assert_eq!(
            map("My Documents/Work/a.doc").as_deref(),
            Some("Documents/Work/a.doc")
        );
        assert_eq!(
            map("Application Data/Mozilla/prefs.js").as_deref(),
            Some("AppData/Roaming/Mozilla/prefs.js")
        );
        assert_eq!(
            map("Local Settings/Application Data/Microsoft/Outlook/Outlook.pst").as_deref(),
            Some("AppData/Local/Microsoft/Outlook/Outlook.pst")
        );
        assert_eq!(map("Desktop/x.lnk").as_deref(), Some("Desktop/x.lnk"));
        assert_eq!(
            map("Favorites/Google.url").as_deref(),
            Some("Favorites/Google.url")
        );
        assert_eq!(map("NTUSER.DAT").as_deref(), Some("NTUSER.DAT"));
        assert_eq!(map("").as_deref(), Some(""));
        assert_eq!(
            map("my documents/a.doc").as_deref(),
            Some("Documents/a.doc")
        );
    }

    #[test]
    fn caches_and_thumbnails_are_excluded() {
        assert_eq!(map("Local Settings/Temp"), None);
        assert_eq!(map("Local Settings/Temp/~DF12.tmp"), None);
        assert_eq!(
            map("Local Settings/Temporary Internet Files/Content.IE5/x.jpg"),
            None
        );
        assert_eq!(map("Local Settings/History/History.IE5/index.dat"), None);
        assert_eq!(map("My Documents/My Pictures/Thumbs.db"), None);
        assert_eq!(map("My Documents/thumbs.DB"), None);
        assert_eq!(
            map("My Documents/Temp/a.doc").as_deref(),
            Some("Documents/Temp/a.doc")
        );
    }

    #[test]
    fn path_api_rejects_escapes() {
        assert_eq!(map_profile_path(Path::new("../x")), None);
        assert_eq!(map_profile_path(Path::new("/etc/passwd")), None);
        assert_eq!(
            map_profile_path(Path::new("My Documents/a.doc")),
            Some(PathBuf::from("Documents/a.doc"))
        );
    }

    #[test]
    fn system_profiles() {
        assert!(is_system_profile("All Users"));
        assert!(is_system_profile("networkservice"));
        assert!(!is_system_profile("alice"));
    }

    #[test]
    fn custom_rules() {
        let mut selection = Selection::with_rules(vec![]);
        assert_eq!(
            selection.map_rel("Local Settings/Temp/a").as_deref(),
            Some("AppData/Local/Temp/a")
        );
        selection.push(Rule::ExcludeName("desktop.ini".into()));
        assert_eq!(selection.map_rel("Desktop/desktop.ini"), None);
    }
}
