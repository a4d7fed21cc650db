//! `<pattern type="File">` locations: variable expansion, the `dir [file]` form, and
//! case-insensitive wildcard matching.
//!
//! A location is resolved once, at parse time, into components relative to either a user
//! profile (`%CSIDL_*%` folders; the user is filled in per profile) or the machine root
//! (`C:\...`, `%PROGRAMFILES%`, ...). Matching then only compares precompiled components.

use crate::layout::XP_PROFILES_DIR;

/// Stands for the profile's user name while a location is being expanded; it cannot occur in
/// XML text (NUL is not a legal XML character).
const USER_TOKEN: &str = "\u{0}user\u{0}";

/// What a USMT `<component>` or `<rules>` element applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// Evaluated for each captured profile: per-user folders only (machine paths are allowed).
    User,
    /// Evaluated once for the machine: per-user folders are an error.
    System,
    /// Both (USMT's default).
    UserAndSystem,
}

/// Where a location's components start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Relative to a user's XP profile directory (`Documents and Settings/<user>`).
    Profile,
    /// Relative to the machine root (`C:\`).
    Machine,
}

/// One case-insensitive wildcard (`*` any run, `?` one character), compiled into the cheapest
/// form that can match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wildcard {
    /// `*` or `*.*` (Windows semantics: `*.*` also matches names without a dot).
    Any,
    /// No wildcard; stored as written, compared ASCII-case-insensitively.
    Exact(String),
    /// `*suffix` with an ASCII suffix (`*.doc`).
    Suffix(String),
    /// `prefix*` with an ASCII prefix.
    Prefix(String),
    /// Anything else, lower-cased.
    General(Vec<char>),
}

impl Wildcard {
    /// Compiles one wildcard.
    pub(crate) fn new(pattern: &str) -> Self {
        if pattern == "*" || pattern == "*.*" {
            return Wildcard::Any;
        }
        let has_wildcard = |text: &str| text.contains(['*', '?']);
        if pattern.is_ascii() {
            if !has_wildcard(pattern) {
                return Wildcard::Exact(pattern.to_owned());
            }
            if let Some(rest) = pattern.strip_prefix('*')
                && !has_wildcard(rest)
            {
                return Wildcard::Suffix(rest.to_owned());
            }
            if let Some(rest) = pattern.strip_suffix('*')
                && !has_wildcard(rest)
            {
                return Wildcard::Prefix(rest.to_owned());
            }
        }
        Wildcard::General(fold(pattern).chars().collect())
    }

    /// True when `name` matches, ignoring case as Windows does.
    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            Wildcard::Any => true,
            Wildcard::Exact(want) => want.eq_ignore_ascii_case(name),
            Wildcard::Suffix(suffix) => {
                name.len() >= suffix.len()
                    && name.as_bytes()[name.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
            Wildcard::Prefix(prefix) => {
                name.len() >= prefix.len()
                    && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            Wildcard::General(pattern) => {
                let name: Vec<char> = fold(name).chars().collect();
                wildcard_match(pattern, &name)
            }
        }
    }

    /// True for a plain name without wildcards.
    pub(crate) fn is_literal(&self) -> bool {
        matches!(self, Wildcard::Exact(_))
    }

    /// Characters that are not wildcards: the more, the more specific.
    pub(crate) fn literal_len(&self) -> usize {
        match self {
            Wildcard::Any => 0,
            Wildcard::Exact(text) | Wildcard::Suffix(text) | Wildcard::Prefix(text) => text.len(),
            Wildcard::General(chars) => chars.iter().filter(|c| !matches!(c, '*' | '?')).count(),
        }
    }
}

/// Lower-cases for comparison (full Unicode, as NTFS compares names case-insensitively).
fn fold(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// Classic wildcard matching with one backtracking point per `*`: O(len(pattern) * len(name)).
fn wildcard_match(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// How specific a pattern is, compared field by field (USMT: the more specific pattern wins;
/// the directory part counts before the file part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Specificity {
    /// Leading directory components without wildcards.
    pub(crate) literal_dirs: u16,
    /// All directory components.
    pub(crate) dirs: u16,
    /// A non-recursive pattern (`dir [file]`) is more specific than `dir\* [file]`.
    pub(crate) non_recursive: bool,
    /// Non-wildcard characters of the file part (`Thumbs.db` > `*.doc` > `*`).
    pub(crate) file_literal: u16,
}

/// A resolved `<pattern type="File">`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) scope: Scope,
    /// Directory components (the trailing `*` of a recursive pattern removed).
    pub(crate) dirs: Vec<Wildcard>,
    /// `dir\*`: files in every directory below `dirs` too.
    pub(crate) recursive: bool,
    /// The `[file]` part.
    pub(crate) file: Wildcard,
    /// The leading directory components without wildcards, as written.
    pub(crate) literal_root: Vec<String>,
    pub(crate) specificity: Specificity,
}

impl Location {
    /// True when a file directly in directory `dir` (scope-relative components) can match:
    /// the directory part matches, the file part is left to the caller.
    pub(crate) fn matches_dir(&self, dir: &[&str]) -> bool {
        let length_ok = if self.recursive {
            dir.len() >= self.dirs.len()
        } else {
            dir.len() == self.dirs.len()
        };
        length_ok && self.prefix_matches(dir)
    }

    /// True when the pattern can match some file in `dir` or below it.
    pub(crate) fn reaches(&self, dir: &[&str]) -> bool {
        (dir.len() <= self.dirs.len() || self.recursive) && self.prefix_matches(dir)
    }

    /// True when the pattern matches every file in `dir` and below (a recursive `[*]` pattern
    /// whose directory part is a prefix of `dir`).
    pub(crate) fn covers(&self, dir: &[&str]) -> bool {
        self.recursive
            && self.file == Wildcard::Any
            && dir.len() >= self.dirs.len()
            && self.prefix_matches(dir)
    }

    /// Compares the overlapping leading components.
    fn prefix_matches(&self, dir: &[&str]) -> bool {
        self.dirs
            .iter()
            .zip(dir)
            .all(|(want, have)| want.matches(have))
    }
}

/// Splits `dir [file]` and resolves the directory part. `Err` is the warning text.
pub(crate) fn parse_location(text: &str, context: Context) -> Result<Location, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty pattern".to_owned());
    }
    let (dir_text, file_text) = match (text.rfind('['), text.ends_with(']')) {
        (Some(open), true) => (text[..open].trim(), text[open + 1..text.len() - 1].trim()),
        (None, false) => (text, "*"),
        _ => return Err(format!("pattern {text:?} has an unbalanced [file] part")),
    };
    if file_text.is_empty() {
        return Err(format!("pattern {text:?} has an empty [file] part"));
    }
    if file_text.contains(['\\', '/', '[', ']']) {
        return Err(format!(
            "pattern {text:?}: the [file] part must be a file name"
        ));
    }
    let (scope, mut components) = resolve_dir(dir_text, context, true)?;
    let recursive = components.last().is_some_and(|last| last == "*");
    if recursive {
        components.pop();
    }
    Ok(Location::new(
        scope,
        &components,
        recursive,
        Wildcard::new(file_text),
    ))
}

impl Location {
    /// Compiles a location from scope-relative directory components (wildcards allowed).
    pub(crate) fn new(
        scope: Scope,
        components: &[String],
        recursive: bool,
        file: Wildcard,
    ) -> Self {
        let dirs: Vec<Wildcard> = components.iter().map(|part| Wildcard::new(part)).collect();
        let literal_root: Vec<String> = components
            .iter()
            .zip(&dirs)
            .take_while(|(_, wildcard)| wildcard.is_literal())
            .map(|(part, _)| part.clone())
            .collect();
        let specificity = Specificity {
            literal_dirs: clamp(literal_root.len()),
            dirs: clamp(dirs.len()),
            non_recursive: !recursive,
            file_literal: clamp(file.literal_len()),
        };
        Location {
            scope,
            dirs,
            recursive,
            file,
            literal_root,
            specificity,
        }
    }
}

fn clamp(value: usize) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

/// Resolves a directory argument of a `MigXmlHelper` move (no wildcards allowed).
pub(crate) fn parse_directory(
    text: &str,
    context: Context,
) -> Result<(Scope, Vec<String>), String> {
    let (scope, components) = resolve_dir(text.trim(), context, false)?;
    Ok((scope, components))
}

/// Expands variables, checks the drive and splits into scope-relative components.
fn resolve_dir(
    text: &str,
    context: Context,
    wildcards: bool,
) -> Result<(Scope, Vec<String>), String> {
    let expanded = expand_variables(text, context)?;
    let mut parts = expanded.split(['\\', '/']);
    let drive = parts.next().unwrap_or("");
    if expanded.starts_with("\\\\") {
        return Err(format!("{text:?}: network paths are not supported"));
    }
    if !drive.eq_ignore_ascii_case("C:") {
        if drive.len() == 2 && drive.ends_with(':') {
            return Err(format!(
                "{text:?}: drive {drive} is not part of the simulated machine (only C:)"
            ));
        }
        return Err(format!(
            "{text:?} is not an absolute path (C:\\... or a %VARIABLE%)"
        ));
    }
    let mut components = Vec::new();
    for part in parts {
        match part.trim() {
            "" | "." => {}
            ".." => return Err(format!("{text:?}: '..' is not supported")),
            part if !wildcards && part.contains(['*', '?']) => {
                return Err(format!("{text:?}: wildcards are not allowed here"));
            }
            part => components.push(part.to_owned()),
        }
    }
    let is_profile = components.len() >= 2
        && components[0].eq_ignore_ascii_case(XP_PROFILES_DIR)
        && components[1] == USER_TOKEN;
    if is_profile {
        components.drain(..2);
        if components.iter().any(|part| part.contains(USER_TOKEN)) {
            return Err(format!("{text:?}: %USERNAME% may only name the profile"));
        }
        return Ok((Scope::Profile, components));
    }
    if components.iter().any(|part| part.contains(USER_TOKEN)) {
        return Err(format!(
            "{text:?}: %USERNAME% is only supported as C:\\Documents and Settings\\%USERNAME%"
        ));
    }
    Ok((Scope::Machine, components))
}

/// Replaces every `%NAME%` with its XP location.
fn expand_variables(text: &str, context: Context) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('%') else {
            return Err(format!("{text:?}: unterminated %VARIABLE%"));
        };
        let name = &after[..end];
        let Some((value, per_user)) = variable(name) else {
            return Err(format!("unknown variable %{name}%; pattern ignored"));
        };
        if per_user && context == Context::System {
            return Err(format!(
                "%{name}% is a per-user folder but the rules' context is System; pattern ignored"
            ));
        }
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Machine-wide folders: (names, location).
const MACHINE_VARIABLES: &[(&[&str], &str)] = &[
    (&["SYSTEMDRIVE"], "C:"),
    (&["SYSTEMROOT", "WINDIR", "CSIDL_WINDOWS"], "C:\\WINDOWS"),
    (&["CSIDL_SYSTEM"], "C:\\WINDOWS\\system32"),
    (
        &["PROGRAMFILES", "CSIDL_PROGRAM_FILES"],
        "C:\\Program Files",
    ),
    (
        &["COMMONPROGRAMFILES", "CSIDL_PROGRAM_FILES_COMMON"],
        "C:\\Program Files\\Common Files",
    ),
    (&["PROFILESFOLDER"], "C:\\Documents and Settings"),
    (
        &["ALLUSERSPROFILE", "ALLUSERSAPPDATA"],
        "C:\\Documents and Settings\\All Users",
    ),
    (
        &["CSIDL_COMMON_APPDATA"],
        "C:\\Documents and Settings\\All Users\\Application Data",
    ),
    (
        &["CSIDL_COMMON_DOCUMENTS"],
        "C:\\Documents and Settings\\All Users\\Documents",
    ),
    (
        &["CSIDL_COMMON_PICTURES"],
        "C:\\Documents and Settings\\All Users\\Documents\\My Pictures",
    ),
    (
        &["CSIDL_COMMON_MUSIC"],
        "C:\\Documents and Settings\\All Users\\Documents\\My Music",
    ),
    (
        &["CSIDL_COMMON_VIDEO"],
        "C:\\Documents and Settings\\All Users\\Documents\\My Videos",
    ),
    (
        &["CSIDL_COMMON_DESKTOPDIRECTORY"],
        "C:\\Documents and Settings\\All Users\\Desktop",
    ),
    (
        &["CSIDL_COMMON_FAVORITES"],
        "C:\\Documents and Settings\\All Users\\Favorites",
    ),
    (
        &["CSIDL_COMMON_STARTMENU"],
        "C:\\Documents and Settings\\All Users\\Start Menu",
    ),
    (
        &["CSIDL_COMMON_PROGRAMS"],
        "C:\\Documents and Settings\\All Users\\Start Menu\\Programs",
    ),
    (
        &["CSIDL_COMMON_TEMPLATES"],
        "C:\\Documents and Settings\\All Users\\Templates",
    ),
];

/// Per-user folders: (names, path inside the XP profile).
const USER_VARIABLES: &[(&[&str], &str)] = &[
    (&["USERPROFILE", "CSIDL_PROFILE"], ""),
    (&["CSIDL_PERSONAL", "CSIDL_MYDOCUMENTS"], "My Documents"),
    (&["CSIDL_MYPICTURES"], "My Documents\\My Pictures"),
    (&["CSIDL_MYMUSIC"], "My Documents\\My Music"),
    (&["CSIDL_MYVIDEO"], "My Documents\\My Videos"),
    (&["CSIDL_APPDATA", "APPDATA"], "Application Data"),
    (
        &["CSIDL_LOCAL_APPDATA", "LOCALAPPDATA"],
        "Local Settings\\Application Data",
    ),
    (&["CSIDL_DESKTOP", "CSIDL_DESKTOPDIRECTORY"], "Desktop"),
    (&["CSIDL_FAVORITES"], "Favorites"),
    (
        &["CSIDL_INTERNET_CACHE"],
        "Local Settings\\Temporary Internet Files",
    ),
    (&["TEMP", "TMP"], "Local Settings\\Temp"),
    (&["CSIDL_COOKIES"], "Cookies"),
    (&["CSIDL_HISTORY"], "Local Settings\\History"),
    (&["CSIDL_STARTMENU"], "Start Menu"),
    (&["CSIDL_PROGRAMS"], "Start Menu\\Programs"),
    (&["CSIDL_STARTUP"], "Start Menu\\Programs\\Startup"),
    (&["CSIDL_SENDTO"], "SendTo"),
    (&["CSIDL_TEMPLATES"], "Templates"),
    (&["CSIDL_NETHOOD"], "NetHood"),
    (&["CSIDL_PRINTHOOD"], "PrintHood"),
    (&["CSIDL_RECENT"], "Recent"),
    (
        &["CSIDL_CDBURN_AREA"],
        "Local Settings\\Application Data\\Microsoft\\CD Burning",
    ),
];

/// The value of a variable (case-insensitive name) and whether it is per-user.
fn variable(name: &str) -> Option<(String, bool)> {
    let find = |table: &[(&[&str], &'static str)]| {
        table
            .iter()
            .find(|(names, _)| names.iter().any(|known| known.eq_ignore_ascii_case(name)))
            .map(|(_, value)| *value)
    };
    if let Some(value) = find(MACHINE_VARIABLES) {
        return Some((value.to_owned(), false));
    }
    if name.eq_ignore_ascii_case("USERNAME") {
        return Some((USER_TOKEN.to_owned(), true));
    }
    let inside = find(USER_VARIABLES)?;
    let mut value = format!("C:\\{XP_PROFILES_DIR}\\{USER_TOKEN}");
    if !inside.is_empty() {
        value.push('\\');
        value.push_str(inside);
    }
    Some((value, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_ignore_case() {
        assert!(Wildcard::new("*").matches("anything"));
        assert!(Wildcard::new("*.*").matches("no-dot"));
        assert!(Wildcard::new("*.doc").matches("Report.DOC"));
        assert!(!Wildcard::new("*.doc").matches("report.docx"));
        assert!(Wildcard::new("Thumbs.db").matches("THUMBS.DB"));
        assert!(Wildcard::new("pre*").matches("PREfix"));
        assert!(Wildcard::new("a?c*.t?t").matches("ABCdef.TXT"));
        assert!(!Wildcard::new("a?c").matches("ac"));
        assert!(Wildcard::new("*ü*").matches("GRÜN"));
        assert!(Wildcard::new("Ärger.doc").matches("ärger.DOC"));
        assert!(Wildcard::new("*a*b*c").matches("xxaxxbxxbxc"));
        assert!(!Wildcard::new("*.doc").matches("é"));
    }

    #[test]
    fn locations_resolve_variables_and_forms() {
        let loc = parse_location("%CSIDL_PERSONAL%\\Work\\* [*.doc]", Context::User).unwrap();
        assert_eq!(loc.scope, Scope::Profile);
        assert_eq!(loc.literal_root, ["My Documents", "Work"]);
        assert!(loc.recursive);
        assert!(loc.matches_dir(&["My Documents", "work", "deep"]));
        assert!(!loc.matches_dir(&["My Documents"]));

        let loc = parse_location("C:\\Data\\* [*]", Context::System).unwrap();
        assert_eq!(loc.scope, Scope::Machine);
        assert!(loc.covers(&["data", "x"]));

        let loc = parse_location("%SYSTEMDRIVE%\\Data [report.txt]", Context::System).unwrap();
        assert!(!loc.recursive);
        assert!(loc.matches_dir(&["Data"]) && !loc.matches_dir(&["Data", "x"]));

        let loc = parse_location(
            "C:\\Documents and Settings\\%USERNAME%\\Desktop\\*",
            Context::User,
        )
        .unwrap();
        assert_eq!(loc.scope, Scope::Profile);
        assert_eq!(loc.literal_root, ["Desktop"]);

        assert!(parse_location("%CSIDL_PERSONAL%\\* [*]", Context::System).is_err());
        assert!(parse_location("%NOPE%\\* [*]", Context::User).is_err());
        assert!(parse_location("D:\\Data\\* [*]", Context::System).is_err());
        assert!(parse_location("Data\\* [*]", Context::System).is_err());
        assert!(parse_location("C:\\Data\\..\\x [*]", Context::System).is_err());
        assert!(parse_location("C:\\Data [a", Context::System).is_err());
        assert!(parse_location("C:\\Data []", Context::System).is_err());
    }

    #[test]
    fn specificity_orders_directory_then_file() {
        let spec = |text: &str| parse_location(text, Context::User).unwrap().specificity;
        assert!(spec("%CSIDL_PERSONAL%\\Work\\* [*]") > spec("%CSIDL_PERSONAL%\\* [*.doc]"));
        assert!(spec("%CSIDL_PERSONAL% [*]") > spec("%CSIDL_PERSONAL%\\* [*]"));
        assert!(spec("%CSIDL_PERSONAL%\\* [*.doc]") > spec("%CSIDL_PERSONAL%\\* [*]"));
        assert!(spec("%CSIDL_PROFILE%\\* [Thumbs.db]") > spec("%CSIDL_PROFILE%\\* [*.db]"));
    }
}
