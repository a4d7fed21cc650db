//! User profiles: discovery and selection, like USMT's `/ui`, `/ue` and `/uel`.
//!
//! USMT names a profile `DOMAIN\user`. A simulated machine only has profile folders
//! (`Documents and Settings/<name>`), so every profile is treated as a local account whose domain
//! is the machine's hostname (the computername file, see [`crate::inventory::read_hostname`]):
//! `alice` on `ACCT-PC-07` is `ACCT-PC-07\alice`.
//!
//! Patterns are case-insensitive globs (`*` any run of characters, `?` one character):
//! - `DOMAIN\name` matches the domain and the name separately (`CORP\*`, `*\admin*`);
//! - a pattern without a backslash matches the bare profile name (`admin*`).
//!
//! Selection ([`UserFilter::decide`]): a profile matching an include pattern is always captured
//! (**include beats exclude**, and beats the age filter too). Otherwise it is left out when it
//! matches an exclude pattern or its `NTUSER.DAT` is older than the age limit. A profile that
//! matches nothing is captured — except when include patterns are given with no exclusion at
//! all, where the includes are the list of profiles to capture (USMT's `/ui` alone is a no-op;
//! here it means "only these").

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::inventory::{profile_names, read_hostname};
use crate::layout::XP_PROFILES_DIR;

/// The registry hive whose mtime tells when a profile was last used.
pub const PROFILE_HIVE: &str = "NTUSER.DAT";

/// One profile of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The profile folder name (the user name).
    pub name: String,
    /// The domain used for `DOMAIN\user` patterns: the machine's hostname.
    pub domain: String,
    /// The profile directory.
    pub path: PathBuf,
    /// Modification time of `NTUSER.DAT`, `None` when the profile has none.
    #[serde(skip)]
    pub last_used: Option<SystemTime>,
}

impl Profile {
    /// The USMT account name, `DOMAIN\name`.
    pub fn account(&self) -> String {
        format!("{}\\{}", self.domain, self.name)
    }
}

/// Every non-system profile under `root/Documents and Settings`, sorted by name, with the
/// machine's hostname as domain. System profiles (`All Users`, `Default User`, `LocalService`,
/// `NetworkService`, ...) are never listed (see [`crate::layout::is_system_profile`]).
pub fn discover(root: &Path) -> Result<Vec<Profile>> {
    let profiles_dir = root.join(XP_PROFILES_DIR);
    let domain = read_hostname(root);
    Ok(profile_names(&profiles_dir)?
        .into_iter()
        .map(|name| {
            let path = profiles_dir.join(&name);
            Profile {
                last_used: last_used(&path),
                domain: domain.clone(),
                name,
                path,
            }
        })
        .collect())
}

/// Modification time of the profile's `NTUSER.DAT`, if it has one.
pub fn last_used(profile_dir: &Path) -> Option<SystemTime> {
    fs::symlink_metadata(profile_dir.join(PROFILE_HIVE))
        .and_then(|meta| meta.modified())
        .ok()
}

/// A parsed user pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPattern {
    domain: Option<String>,
    name: String,
}

impl UserPattern {
    /// Parses `DOMAIN\name` or `name`; refuses empty parts and more than one backslash.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (domain, name) = match text.split_once('\\') {
            Some((domain, name)) => (Some(domain), name),
            None => (None, text),
        };
        if name.contains('\\') {
            return Err(format!(
                "user pattern {text:?} has more than one backslash (expected DOMAIN\\name)"
            ));
        }
        if name.is_empty() || domain.is_some_and(str::is_empty) {
            return Err(format!(
                "user pattern {text:?} has an empty part (expected DOMAIN\\name or name)"
            ));
        }
        Ok(Self {
            domain: domain.map(str::to_lowercase),
            name: name.to_lowercase(),
        })
    }

    /// Whether the profile `name` in `domain` matches.
    pub fn matches(&self, domain: &str, name: &str) -> bool {
        self.domain
            .as_deref()
            .is_none_or(|pattern| glob_match(pattern, &domain.to_lowercase()))
            && glob_match(&self.name, &name.to_lowercase())
    }
}

/// Whether `text` matches the glob `pattern` (`*` any run, `?` one character). Case-sensitive:
/// callers lowercase both sides.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Position after the last `*` and the text position it is currently matched up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p + 1, t));
                p += 1;
            }
            Some(&want) if want == '?' || want == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((after_star, matched)) => {
                    p = after_star;
                    t = matched + 1;
                    backtrack = Some((after_star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&rest| rest == '*')
}

/// Which profiles to capture: include/exclude patterns and an age limit (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// Include patterns (`/ui`).
    pub include: Vec<String>,
    /// Exclude patterns (`/ue`).
    pub exclude: Vec<String>,
    /// Leave out profiles whose `NTUSER.DAT` is older than this (`/uel`); a profile without
    /// `NTUSER.DAT` counts as never used.
    pub exclude_older_than: Option<Duration>,
}

/// Why a profile is or is not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No filter applies: everyone is captured.
    Default,
    /// Matches an include pattern.
    Included,
    /// Include patterns were given alone and this profile matches none of them.
    NotIncluded,
    /// Matches an exclude pattern.
    Excluded,
    /// Not used within the age limit.
    TooOld,
}

impl Reason {
    /// The reason in words, for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Default => "no filter applies",
            Reason::Included => "matches an include pattern",
            Reason::NotIncluded => "matches no include pattern",
            Reason::Excluded => "matches an exclude pattern",
            Reason::TooOld => "NTUSER.DAT older than the age limit",
        }
    }

    /// Whether a profile with this reason is captured.
    pub fn selected(self) -> bool {
        matches!(self, Reason::Default | Reason::Included)
    }
}

/// The decision about one profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChoice {
    /// The profile name.
    pub name: String,
    /// `DOMAIN\name`.
    pub account: String,
    /// Whether it is captured.
    pub selected: bool,
    /// Why.
    pub reason: Reason,
}

impl UserFilter {
    /// Whether no filter is set (every profile is captured).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.exclude_older_than.is_none()
    }

    /// Checks every pattern, returning the first problem.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for text in self.include.iter().chain(&self.exclude) {
            UserPattern::parse(text)?;
        }
        Ok(())
    }

    /// Decides about profile `name` in `domain`, last used at `last_used`, as of `now`.
    /// Unparsable patterns match nothing (validate them first with [`UserFilter::validate`]).
    pub fn decide(
        &self,
        domain: &str,
        name: &str,
        last_used: Option<SystemTime>,
        now: SystemTime,
    ) -> Reason {
        let any = |patterns: &[String]| {
            patterns.iter().any(|text| {
                UserPattern::parse(text).is_ok_and(|pattern| pattern.matches(domain, name))
            })
        };
        if any(&self.include) {
            return Reason::Included;
        }
        if any(&self.exclude) {
            return Reason::Excluded;
        }
        if let Some(limit) = self.exclude_older_than {
            let cutoff = now.checked_sub(limit).unwrap_or(SystemTime::UNIX_EPOCH);
            if last_used.is_none_or(|used| used < cutoff) {
                return Reason::TooOld;
            }
        }
        if !self.include.is_empty() && self.exclude.is_empty() && self.exclude_older_than.is_none()
        {
            return Reason::NotIncluded;
        }
        Reason::Default
    }

    /// Decides about a discovered profile.
    pub fn choose(&self, profile: &Profile, now: SystemTime) -> UserChoice {
        let reason = self.decide(&profile.domain, &profile.name, profile.last_used, now);
        UserChoice {
            name: profile.name.clone(),
            account: profile.account(),
            selected: reason.selected(),
            reason,
        }
    }
}

/// Discovers the profiles of the XP machine at `root` and decides about each, as of now.
pub fn select(root: &Path, filter: &UserFilter) -> Result<Vec<UserChoice>> {
    let now = SystemTime::now();
    Ok(discover(root)?
        .iter()
        .map(|profile| filter.choose(profile, now))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn filter(include: &[&str], exclude: &[&str]) -> UserFilter {
        UserFilter {
            include: include.iter().map(|s| (*s).to_owned()).collect(),
            exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
            exclude_older_than: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*", "alice"));
        assert!(glob_match("*ce", "alice"));
        assert!(glob_match("a?ice", "alice"));
        assert!(glob_match("*l*c*", "alice"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("a*b*c", "abcbc"));
        assert!(!glob_match("a*b*c", "abcb"));
        assert!(!glob_match("a?", "a"));
        assert!(!glob_match("bob", "bobby"));
        assert!(glob_match("**", "x"));
    }

    #[test]
    fn patterns_match_domain_and_name_case_insensitively() {
        let corp = UserPattern::parse("CORP\\*").unwrap();
        assert!(corp.matches("corp", "alice"));
        assert!(!corp.matches("PC-01", "alice"));
        let admins = UserPattern::parse("*\\admin*").unwrap();
        assert!(admins.matches("PC-01", "Administrator"));
        assert!(!admins.matches("PC-01", "alice"));
        let bare = UserPattern::parse("ALICE").unwrap();
        assert!(bare.matches("anything", "alice"));
        assert!(
            UserPattern::parse("PC-0?\\bob")
                .unwrap()
                .matches("pc-01", "Bob")
        );
        for bad in ["", "\\bob", "CORP\\", "a\\b\\c"] {
            assert!(UserPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn include_beats_exclude_and_age() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let recent = Some(now - DAY);
        let old = Some(now - 400 * DAY);
        let decide = |f: &UserFilter, name: &str, used| f.decide("PC-01", name, used, now);

        assert_eq!(decide(&filter(&[], &[]), "alice", old), Reason::Default);
        // Include alone: only those.
        let only = filter(&["a*"], &[]);
        assert_eq!(decide(&only, "alice", old), Reason::Included);
        assert_eq!(decide(&only, "bob", old), Reason::NotIncluded);
        // Exclude everyone but rescue one (USMT: /ue:*\* /ui:PC-01\alice).
        let rescue = filter(&["PC-01\\alice"], &["*\\*"]);
        assert_eq!(decide(&rescue, "alice", old), Reason::Included);
        assert_eq!(decide(&rescue, "bob", recent), Reason::Excluded);
        // With an exclusion present, unmatched profiles are captured (USMT semantics).
        let mixed = filter(&["alice"], &["bob"]);
        assert_eq!(decide(&mixed, "carol", recent), Reason::Default);
        // Age: old and hive-less profiles go, includes still win.
        let mut aged = filter(&["*\\admin*"], &[]);
        aged.exclude_older_than = Some(90 * DAY);
        assert_eq!(decide(&aged, "alice", recent), Reason::Default);
        assert_eq!(decide(&aged, "bob", old), Reason::TooOld);
        assert_eq!(decide(&aged, "carol", None), Reason::TooOld);
        assert_eq!(decide(&aged, "admin2", old), Reason::Included);
    }

    #[test]
    fn discovery_skips_system_profiles_and_uses_the_hostname() {
        let root = tempfile::tempdir().unwrap();
        let opts = crate::GenOptions {
            seed: 5,
            users: 2,
            files_per_user: 20,
            hostname: Some("ACCT-PC-07".into()),
        };
        crate::generate_machine(root.path(), &opts).unwrap();
        let profiles_dir = root.path().join(XP_PROFILES_DIR);
        for system in [
            "All Users",
            "Default User",
            "LocalService",
            "NetworkService",
        ] {
            fs::create_dir_all(profiles_dir.join(system)).unwrap();
        }
        let profiles = discover(root.path()).unwrap();
        let accounts: Vec<String> = profiles.iter().map(Profile::account).collect();
        assert_eq!(accounts, ["ACCT-PC-07\\alice", "ACCT-PC-07\\bob"]);
        assert!(profiles.iter().all(|profile| profile.last_used.is_some()));

        let choices = select(root.path(), &filter(&[], &["acct-pc-07\\B*"])).unwrap();
        let selected: Vec<&str> = choices
            .iter()
            .filter(|choice| choice.selected)
            .map(|choice| choice.name.as_str())
            .collect();
        assert_eq!(selected, ["alice"]);
    }
}
