//! USMT migration XML (`MigUser.xml`, `MigDocs.xml` and custom files) as selection rules.
//!
//! [`RuleSet::parse`] reads `migration/component/role/rules` with `include`, `exclude`,
//! `unconditionalExclude` and `locationModify`, each holding
//! `objectSet/pattern type="File"` in the forms `%CSIDL_PERSONAL%\Sub\* [*.doc]` (recursive),
//! `C:\Data [*]` (that directory only) and `path [file.ext]`. `%CSIDL_*%` folders and
//! environment variables resolve onto the simulated machine tree (`C:\` is the machine root,
//! per-user folders live in `Documents and Settings/<user>`). [`crate::layout::Selection`]
//! compiles a rule set for capture.
//!
//! # Precedence
//!
//! For every file, over all rules of all merged files together:
//! 1. an `unconditionalExclude` that matches wins over everything;
//! 2. otherwise the most specific matching pattern wins: more leading directory components
//!    without wildcards, then more directory components, then a non-recursive pattern over a
//!    recursive one, then more non-wildcard characters in the `[file]` part;
//! 3. between equally specific patterns, `exclude` wins;
//! 4. a file no `include` matches is not migrated.
//!
//! Unlike USMT, rules of different components do compete with each other, so a custom file's
//! `exclude` can take away what the built-in rules include (USMT would need an
//! `unconditionalExclude` for that).
//!
//! # What is reported instead of honoured
//!
//! Scripts (`<script>`, `filter=`), `type="Registry"` patterns, `<detects>`/`<conditions>`
//! (rules are applied as if the condition held), `<merge>`, `<addObjects>`, `<contentModify>`,
//! `<environment>`, unknown `MigXmlHelper` functions, unknown variables, other drives: each is a
//! [`Warning`] with its line and column; the rest of the file still applies. Malformed XML is an
//! [`Error::RulesXml`] naming line and column.

use std::path::Path;

use crate::error::{Error, IoResultExt, Result};

pub(crate) mod eval;
pub(crate) mod parse;
pub(crate) mod pattern;

pub(crate) use pattern::Location;
pub use pattern::Scope;

/// The built-in rules, shipped as `state-engine/rules/fleetmig-default.xml`.
pub const BUILTIN_XML: &str = include_str!("../../rules/fleetmig-default.xml");
/// The file name the built-in rules report in warnings and errors.
pub const BUILTIN_NAME: &str = "fleetmig-default.xml";

/// The error type of rules parsing: the crate's [`Error`] (malformed XML is
/// [`Error::RulesXml`], an unreadable file [`Error::Io`]).
pub type RulesError = Error;

/// Something in a rules file that fleetmig does not honour, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The rules file (as given to [`RuleSet::parse`]).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// What is not honoured and what happens instead.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// What a rule does with the files its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// `<unconditionalExclude>`: never migrated, whatever else says.
    UnconditionalExclude,
    /// `<exclude>`: not migrated unless a more specific `include` matches.
    Exclude,
    /// `<include>`: migrated unless a more specific or equally specific exclusion matches.
    Include,
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The rules file.
    pub file: String,
    /// 1-based line of the `<pattern>`.
    pub line: u32,
}

/// One `<pattern type="File">` under an include or exclude element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRule {
    /// Include, exclude or unconditional exclude.
    pub action: Action,
    /// The pattern as written.
    pub pattern: String,
    /// Where it was written.
    pub origin: Origin,
    pub(crate) location: Location,
}

/// The `MigXmlHelper` function of a `<locationModify>`, with resolved directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MoveKind {
    /// `RelativeMove(from, to)`: objects under `from` keep their path relative to it, under `to`.
    Relative { from: Vec<String>, to: Vec<String> },
    /// `Move(to)`: objects keep their path relative to the matching pattern's wildcard-free
    /// root directory, under `to` (a non-recursive pattern puts its files flat into `to`).
    Move { to: Vec<String> },
    /// `ExactMove(to)`: every matched object goes exactly to `to`.
    Exact { to: Vec<String> },
}

/// One `<locationModify>`: where matched, migrated objects go instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationModify {
    /// The `script` attribute as written.
    pub script: String,
    /// Where it was written.
    pub origin: Origin,
    pub(crate) scope: Scope,
    pub(crate) kind: MoveKind,
    pub(crate) patterns: Vec<Location>,
}

impl LocationModify {
    /// Where `path` (scope-relative components of a migrated object, last one the name) goes,
    /// when this modification applies to it; `as_dir` for directories.
    pub(crate) fn apply(&self, path: &[&str], as_dir: bool) -> Option<Vec<String>> {
        let (dir, name) = match path.split_last() {
            Some((name, dir)) => (dir, *name),
            None => (path, ""),
        };
        let pattern = self.patterns.iter().find(|pattern| {
            if as_dir {
                pattern.reaches(path)
            } else {
                pattern.matches_dir(dir) && pattern.file.matches(name)
            }
        })?;
        let rebase = |from: &[String], to: &[String]| {
            let under = path.len() >= from.len()
                && from
                    .iter()
                    .zip(path)
                    .all(|(want, have)| want.eq_ignore_ascii_case(have));
            under.then(|| {
                let mut moved = to.to_vec();
                moved.extend(path[from.len()..].iter().map(|part| (*part).to_owned()));
                moved
            })
        };
        match &self.kind {
            MoveKind::Relative { from, to } => rebase(from, to),
            MoveKind::Move { to } => rebase(&pattern.literal_root, to),
            MoveKind::Exact { to } => (!as_dir).then(|| to.clone()),
        }
    }
}

/// Parsed selection rules from one or more USMT migration XML files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Include and exclude patterns, in file order.
    pub rules: Vec<FileRule>,
    /// Location modifications, in file order (the first that applies wins).
    pub moves: Vec<LocationModify>,
}

impl RuleSet {
    /// Parses one migration XML document. `file_name` is used in warnings and errors.
    ///
    /// Malformed XML, or a document whose root is not `<migration>`, is an
    /// [`Error::RulesXml`] with line and column; everything fleetmig cannot honour is returned
    /// as a [`Warning`] and otherwise skipped.
    pub fn parse(xml: &str, file_name: &str) -> Result<(RuleSet, Vec<Warning>)> {
        parse::parse(xml, file_name)
    }

    /// Reads and parses a rules file.
    pub fn load(path: &Path) -> Result<(RuleSet, Vec<Warning>)> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in rules (`fleetmig-default.xml`): the user's whole profile (documents,
    /// desktop, favorites, application data, settings), without temp files, browser caches and
    /// history, `Thumbs.db`, `*.tmp`, the swap and hibernation files.
    pub fn builtin() -> RuleSet {
        let (rules, warnings) = Self::parse(BUILTIN_XML, BUILTIN_NAME)
            .expect("the built-in rules are valid xml (checked by a unit test)");
        debug_assert!(warnings.is_empty(), "{warnings:?}");
        rules
    }

    /// Several rule sets as one (USMT's several `/i:` files): all rules compete under the
    /// precedence above, location modifications keep their order.
    pub fn merge(sets: impl IntoIterator<Item = RuleSet>) -> RuleSet {
        let mut merged = RuleSet::default();
        for set in sets {
            merged.rules.extend(set.rules);
            merged.moves.extend(set.moves);
        }
        merged
    }

    /// True when there is no rule at all (nothing would migrate).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests;
