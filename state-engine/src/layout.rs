//! Where things live on Windows XP and Windows 7, and which profile files are migrated.
//!
//! Selection goes through [`Selection`], a compiled [`RuleSet`] read from USMT migration XML
//! (see [`crate::rules`]); the default is the built-in `fleetmig-default.xml`. Profile files keep
//! the known-folder mapping (`My Documents` → `Documents`, ...) into `Users/<user>/`; machine-wide
//! files keep their path, except the all-users folders (→ `Users/Public`, `ProgramData`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::rules::eval::{Compiled, DirState, FileRules};
use crate::rules::parse::RESERVED_MACHINE_DIRS;
use crate::rules::pattern::{Location, Wildcard};
use crate::rules::{Action, FileRule, Origin, RuleSet, Scope};

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

/// Where files of the all-users profile and other machine-wide folders go on Windows 7,
/// longest prefix first (everything else keeps its path).
const SYSTEM_FOLDERS: &[(&[&str], &[&str])] = &[
    (
        &[XP_PROFILES_DIR, "All Users", "Documents", "My Pictures"],
        &[WIN7_PROFILES_DIR, "Public", "Pictures"],
    ),
    (
        &[XP_PROFILES_DIR, "All Users", "Documents", "My Music"],
        &[WIN7_PROFILES_DIR, "Public", "Music"],
    ),
    (
        &[XP_PROFILES_DIR, "All Users", "Documents", "My Videos"],
        &[WIN7_PROFILES_DIR, "Public", "Videos"],
    ),
    (
        &[XP_PROFILES_DIR, "All Users", "Documents"],
        &[WIN7_PROFILES_DIR, "Public", "Documents"],
    ),
    (
        &[XP_PROFILES_DIR, "All Users", "Desktop"],
        &[WIN7_PROFILES_DIR, "Public", "Desktop"],
    ),
    (
        &[XP_PROFILES_DIR, "All Users", "Start Menu"],
        &["ProgramData", "Microsoft", "Windows", "Start Menu"],
    ),
    (
        &[XP_PROFILES_DIR, "All Users", "Application Data"],
        &["ProgramData"],
    ),
    (&[XP_PROFILES_DIR, "All Users"], &["ProgramData"]),
];

/// A legacy selection rule, kept for callers that build selections in code. Paths are
/// relative to a profile directory and compared case-insensitively. Both become
/// `unconditionalExclude` rules on top of "migrate the whole profile".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Exclude this directory and everything under it.
    ExcludeTree(Vec<String>),
    /// Exclude every file with this name, anywhere in the profile.
    ExcludeName(String),
}

impl Rule {
    fn into_file_rule(self) -> FileRule {
        let (pattern, location) = match self {
            Rule::ExcludeTree(parts) => (
                format!("%CSIDL_PROFILE%\\{}\\* [*]", parts.join("\\")),
                Location::new(Scope::Profile, &parts, true, Wildcard::new("*")),
            ),
            Rule::ExcludeName(name) => (
                format!("%CSIDL_PROFILE%\\* [{name}]"),
                Location::new(Scope::Profile, &[], true, Wildcard::new(&name)),
            ),
        };
        FileRule {
            action: Action::UnconditionalExclude,
            pattern,
            origin: Origin {
                file: "<code>".to_owned(),
                line: 0,
            },
            location,
        }
    }
}

/// What capture does with a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirDecision {
    /// Something below may migrate: record the directory with this target (relative to the
    /// machine root; empty for the machine root itself) and walk it.
    Walk(String),
    /// Nothing below migrates (its files count as excluded).
    Excluded,
    /// Not this walk's business: another user's profile, `WINDOWS`, `_fleetmig`, `StateStore`.
    OutOfScope,
}

/// Decides which files are migrated and where they go on Windows 7: a compiled [`RuleSet`].
///
/// Cloning is cheap (the compiled rules are shared).
#[derive(Debug, Clone)]
pub struct Selection {
    set: Arc<RuleSet>,
    compiled: Arc<Compiled>,
}

impl PartialEq for Selection {
    /// Selections are equal when they were compiled from equal rules.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.set, &other.set) || self.set == other.set
    }
}

impl Eq for Selection {}

impl Default for Selection {
    /// The built-in rules ([`RuleSet::builtin`]).
    fn default() -> Self {
        static BUILTIN: OnceLock<Selection> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Selection::from_rules(RuleSet::builtin()))
            .clone()
    }
}

impl Selection {
    /// Compiles a rule set (merge several with [`RuleSet::merge`] first).
    pub fn from_rules(set: RuleSet) -> Self {
        let compiled = Compiled::new(&set);
        Self {
            set: Arc::new(set),
            compiled: Arc::new(compiled),
        }
    }

    /// The built-in rules.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// The whole profile minus these legacy rules (nothing excluded when empty).
    pub fn with_rules(rules: Vec<Rule>) -> Self {
        let whole_profile = FileRule {
            action: Action::Include,
            pattern: "%CSIDL_PROFILE%\\* [*]".to_owned(),
            origin: Origin {
                file: "<code>".to_owned(),
                line: 0,
            },
            location: Location::new(Scope::Profile, &[], true, Wildcard::Any),
        };
        let mut set = RuleSet::default();
        set.rules.push(whole_profile);
        set.rules
            .extend(rules.into_iter().map(Rule::into_file_rule));
        Self::from_rules(set)
    }

    /// Adds one legacy rule (recompiles).
    pub fn push(&mut self, rule: Rule) {
        let mut set = (*self.set).clone();
        set.rules.push(rule.into_file_rule());
        *self = Self::from_rules(set);
    }

    /// The rules this selection was compiled from.
    pub fn rule_set(&self) -> &RuleSet {
        &self.set
    }

    /// Where a file of `user`'s profile goes (`rel_in_profile` is '/'-separated): the target
    /// relative to the machine root (`Users/<user>/...`), or `None` when it is not migrated.
    pub fn decide_user_file(&self, user: &str, rel_in_profile: &str) -> Option<String> {
        self.decide_file(Scope::Profile, user, rel_in_profile)
    }

    /// What to do with a directory of `user`'s profile ("" for the profile itself).
    pub fn decide_user_dir(&self, user: &str, rel_in_profile: &str) -> DirDecision {
        self.decide_dir(Scope::Profile, user, rel_in_profile)
    }

    /// The directories (relative to the machine root, '/'-separated, "" for the root) that
    /// machine-wide include patterns such as `C:\Data\* [*]` need walked, outermost only.
    /// Empty for the built-in rules.
    pub fn system_roots(&self) -> Vec<String> {
        self.compiled
            .machine_roots()
            .into_iter()
            .map(|root| root.join("/"))
            .filter(|root| self.decide_system_dir(root) != DirDecision::OutOfScope)
            .collect()
    }

    /// Where a machine-wide file (relative to the machine root) goes, or `None`. Files in user
    /// profiles, `WINDOWS`, `_fleetmig` and `StateStore` are never system files.
    pub fn decide_system_file(&self, rel_from_root: &str) -> Option<String> {
        self.decide_file(Scope::Machine, "", rel_from_root)
    }

    /// What to do with a machine-wide directory ("" for the machine root).
    pub fn decide_system_dir(&self, rel_from_root: &str) -> DirDecision {
        self.decide_dir(Scope::Machine, "", rel_from_root)
    }

    /// Maps a '/'-separated path relative to an XP profile (judged as a file) to the path
    /// relative to the Windows 7 profile, or `None` when it is not migrated. The empty path
    /// (the profile itself) maps to "".
    pub fn map_rel(&self, rel: &str) -> Option<String> {
        let components = split(rel);
        if components.is_empty() {
            return Some(String::new());
        }
        let (name, dir) = components.split_last()?;
        let rules = self.compiled.file_rules(Scope::Profile, dir);
        if !rules.included(name) {
            return None;
        }
        let moved = self.compiled.moved(Scope::Profile, &components, false);
        match moved {
            Some(moved) => {
                let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
                Some(map_components(&moved))
            }
            None => Some(map_components(&components)),
        }
    }

    /// [`Selection::map_rel`] for `Path`s; `None` also for paths that are not plain UTF-8 relative paths.
    pub fn map_path(&self, rel: &Path) -> Option<PathBuf> {
        let rel = relative_utf8(rel)?;
        self.map_rel(&rel).map(PathBuf::from)
    }

    fn decide_file(&self, scope: Scope, user: &str, rel: &str) -> Option<String> {
        let components = split(rel);
        let (name, dir) = components.split_last()?;
        if scope == Scope::Machine && out_of_machine_scope(&components) {
            return None;
        }
        if !self.compiled.file_rules(scope, dir).included(name) {
            return None;
        }
        match self.compiled.moved(scope, &components, false) {
            Some(moved) => target_of(scope, user, &moved),
            None => target_of(scope, user, &components),
        }
    }

    fn decide_dir(&self, scope: Scope, user: &str, rel: &str) -> DirDecision {
        let components = split(rel);
        if scope == Scope::Machine && out_of_machine_scope(&components) {
            return DirDecision::OutOfScope;
        }
        if self.compiled.dir_state(scope, &components) == DirState::Excluded {
            return DirDecision::Excluded;
        }
        let target = match self.compiled.moved(scope, &components, true) {
            Some(moved) => target_of(scope, user, &moved),
            None => target_of(scope, user, &components),
        };
        match target {
            Some(target) => DirDecision::Walk(target),
            None if components.is_empty() => DirDecision::Walk(String::new()),
            None => DirDecision::Excluded,
        }
    }

    /// The decisions for the files directly in one directory, computed once for the whole
    /// directory (capture's hot path).
    pub(crate) fn dir_rules<'a>(
        &'a self,
        scope: Scope,
        user: &'a str,
        rel: &'a str,
    ) -> DirRules<'a> {
        let dir = split(rel);
        let files = self.compiled.file_rules(scope, &dir);
        let table = match scope {
            Scope::Profile => KNOWN_FOLDERS,
            Scope::Machine => SYSTEM_FOLDERS,
        };
        // Appending the name to the directory's target is only right when no folder rename
        // starts below this directory.
        let renamed_below = table.iter().any(|(from, _)| {
            from.len() > dir.len()
                && from
                    .iter()
                    .zip(&dir)
                    .all(|(want, have)| want.eq_ignore_ascii_case(have))
        });
        let dir_target = if renamed_below || dir.is_empty() {
            None
        } else {
            target_of(scope, user, &dir)
        };
        DirRules {
            scope,
            user,
            dir,
            files,
            dir_target,
        }
    }
}

/// The file decisions of one directory (see [`Selection::dir_rules`]).
pub(crate) struct DirRules<'a> {
    scope: Scope,
    user: &'a str,
    dir: Vec<&'a str>,
    files: FileRules<'a>,
    /// The directory's own target, when a file's target is that plus its name.
    dir_target: Option<String>,
}

impl DirRules<'_> {
    /// The target of the file (or symlink) `name` in this directory, or `None` when excluded.
    pub(crate) fn decide(&self, name: &str) -> Option<String> {
        if !self.files.included(name) {
            return None;
        }
        if self.scope == Scope::Machine && self.dir.is_empty() && out_of_machine_scope(&[name]) {
            return None;
        }
        let path = || {
            let mut path = self.dir.clone();
            path.push(name);
            path
        };
        if self.files.may_move()
            && let Some(moved) = self.files.moved(&path())
        {
            return target_of(self.scope, self.user, &moved);
        }
        match &self.dir_target {
            Some(base) => Some(format!("{base}/{name}")),
            None => target_of(self.scope, self.user, &path()),
        }
    }
}

/// Splits a '/'-separated relative path, dropping empty and `.` components.
fn split(rel: &str) -> Vec<&str> {
    rel.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect()
}

/// Machine paths no system rule may touch: user profiles (the user walk's), `WINDOWS`,
/// `_fleetmig`, `StateStore`.
fn out_of_machine_scope(components: &[impl AsRef<str>]) -> bool {
    let Some(top) = components.first().map(AsRef::as_ref) else {
        return false;
    };
    if RESERVED_MACHINE_DIRS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(top))
    {
        return true;
    }
    top.eq_ignore_ascii_case(XP_PROFILES_DIR)
        && components
            .get(1)
            .is_some_and(|profile| !is_system_profile(profile.as_ref()))
}

/// The Windows 7 target (relative to the machine root) of scope-relative components.
fn target_of(scope: Scope, user: &str, components: &[impl AsRef<str>]) -> Option<String> {
    let parts: Vec<&str> = components.iter().map(AsRef::as_ref).collect();
    match scope {
        Scope::Profile => {
            let mapped = map_components(&parts);
            Some(if mapped.is_empty() {
                format!("{WIN7_PROFILES_DIR}/{user}")
            } else {
                format!("{WIN7_PROFILES_DIR}/{user}/{mapped}")
            })
        }
        Scope::Machine => {
            let mapped = map_with(SYSTEM_FOLDERS, &parts);
            let allowed = !mapped.is_empty()
                && crate::manifest::system_target_allowed(&mapped)
                && !out_of_machine_scope(&split(&mapped));
            allowed.then_some(mapped)
        }
    }
}

/// Applies the known-folder renames to profile-relative components.
fn map_components(components: &[&str]) -> String {
    map_with(KNOWN_FOLDERS, components)
}

/// Applies the first (longest) matching prefix rename of `table`.
fn map_with(table: &[(&[&str], &[&str])], components: &[&str]) -> String {
    for (from, to) in table {
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
        let selection = Selection::default();
        assert_eq!(
            selection.decide_user_dir("alice", "Local Settings/Temp"),
            DirDecision::Excluded
        );
        assert_eq!(
            selection.decide_user_dir("alice", "local settings/history/History.IE5"),
            DirDecision::Excluded
        );
        assert_eq!(
            selection.decide_user_dir("alice", "Local Settings"),
            DirDecision::Walk("Users/alice/AppData/Local".into())
        );
        assert_eq!(
            selection.decide_user_dir("alice", ""),
            DirDecision::Walk("Users/alice".into())
        );
        assert_eq!(map("Local Settings/Temp/~DF12.tmp"), None);
        assert_eq!(map("Local Settings/Temp/sub/readme.txt"), None);
        assert_eq!(map("My Documents/~WRL0001.tmp"), None);
        assert_eq!(selection.system_roots(), Vec::<String>::new());
        assert_eq!(selection.decide_system_file("pagefile.sys"), None);
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
        selection.push(Rule::ExcludeTree(vec!["Cookies".into()]));
        assert_eq!(selection.map_rel("cookies/a.txt"), None);
        assert_eq!(
            selection.decide_user_dir("bob", "Cookies"),
            DirDecision::Excluded
        );
        assert_eq!(
            selection
                .decide_user_file("bob", "Desktop/a.lnk")
                .as_deref(),
            Some("Users/bob/Desktop/a.lnk")
        );
    }
}
