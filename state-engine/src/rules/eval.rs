//! The compiled form of a [`RuleSet`]: rules sorted by precedence once, so a decision is a
//! short scan of the rules whose directory part matches, done once per directory.

use super::pattern::{Location, Scope};
use super::{Action, LocationModify, RuleSet};

/// One rule in precedence order.
#[derive(Debug, Clone)]
struct Ranked {
    action: Action,
    location: Location,
}

/// The rules of one scope (profile-relative or machine-relative), highest precedence first.
#[derive(Debug, Clone, Default)]
struct ScopeRules {
    rules: Vec<Ranked>,
    moves: Vec<LocationModify>,
}

/// What to do with a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirState {
    /// Some file below may be migrated: walk it.
    Walk,
    /// Nothing below can be migrated.
    Excluded,
}

/// A [`RuleSet`] ready for decisions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Compiled {
    profile: ScopeRules,
    machine: ScopeRules,
}

impl Compiled {
    pub(crate) fn new(set: &RuleSet) -> Self {
        let mut compiled = Compiled::default();
        for rule in &set.rules {
            compiled.scope_mut(rule.location.scope).rules.push(Ranked {
                action: rule.action,
                location: rule.location.clone(),
            });
        }
        for modify in &set.moves {
            compiled.scope_mut(modify.scope).moves.push(modify.clone());
        }
        for scope in [&mut compiled.profile, &mut compiled.machine] {
            // Unconditional excludes first, then the most specific; exclude before include on
            // ties. The sort is stable, so file order breaks the remaining ties.
            scope.rules.sort_by_key(|rule| {
                (
                    rule.action != Action::UnconditionalExclude,
                    std::cmp::Reverse(rule.location.specificity),
                    rule.action == Action::Include,
                )
            });
        }
        compiled
    }

    fn scope_mut(&mut self, scope: Scope) -> &mut ScopeRules {
        match scope {
            Scope::Profile => &mut self.profile,
            Scope::Machine => &mut self.machine,
        }
    }

    fn scope(&self, scope: Scope) -> &ScopeRules {
        match scope {
            Scope::Profile => &self.profile,
            Scope::Machine => &self.machine,
        }
    }

    /// Whether anything in `dir` or below can be migrated. A directory is excluded when an
    /// unconditional exclusion covers it, or when every include that reaches below it is no
    /// more specific than an exclusion covering the whole directory.
    pub(crate) fn dir_state(&self, scope: Scope, dir: &[&str]) -> DirState {
        let rules = &self.scope(scope).rules;
        let mut strongest_exclude = None;
        for rule in rules {
            match rule.action {
                Action::UnconditionalExclude => {
                    if rule.location.covers(dir) {
                        return DirState::Excluded;
                    }
                }
                Action::Exclude => {
                    if strongest_exclude.is_none() && rule.location.covers(dir) {
                        strongest_exclude = Some(rule.location.specificity);
                    }
                }
                Action::Include => {
                    let beats_exclusion =
                        strongest_exclude.is_none_or(|exclude| rule.location.specificity > exclude);
                    if !beats_exclusion {
                        // Sorted by specificity: no later include can beat it either.
                        return DirState::Excluded;
                    }
                    if rule.location.reaches(dir) {
                        return DirState::Walk;
                    }
                }
            }
        }
        DirState::Excluded
    }

    /// The rules deciding the files directly in `dir`.
    pub(crate) fn file_rules(&self, scope: Scope, dir: &[&str]) -> FileRules<'_> {
        let rules = self.scope(scope);
        FileRules {
            rules: rules
                .rules
                .iter()
                .filter(|rule| rule.location.matches_dir(dir))
                .map(|rule| (rule.action, &rule.location))
                .collect(),
            moves: rules
                .moves
                .iter()
                .filter(|modify| {
                    modify
                        .patterns
                        .iter()
                        .any(|pattern| pattern.matches_dir(dir))
                })
                .collect(),
        }
    }

    /// The first location modification that applies to a migrated object.
    pub(crate) fn moved(&self, scope: Scope, path: &[&str], as_dir: bool) -> Option<Vec<String>> {
        self.scope(scope)
            .moves
            .iter()
            .find_map(|modify| modify.apply(path, as_dir))
    }

    /// The wildcard-free roots of the machine-wide include patterns, outermost only, sorted.
    pub(crate) fn machine_roots(&self) -> Vec<Vec<String>> {
        let mut roots: Vec<Vec<String>> = self
            .machine
            .rules
            .iter()
            .filter(|rule| rule.action == Action::Include)
            .map(|rule| rule.location.literal_root.clone())
            .collect();
        roots.sort_by_key(|root| root.len());
        let mut outermost: Vec<Vec<String>> = Vec::new();
        for root in roots {
            let nested = outermost.iter().any(|outer| {
                outer
                    .iter()
                    .zip(&root)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
            });
            if !nested {
                outermost.push(root);
            }
        }
        outermost.sort();
        outermost
    }
}

/// The rules that decide the files of one directory, highest precedence first.
#[derive(Debug)]
pub(crate) struct FileRules<'a> {
    rules: Vec<(Action, &'a Location)>,
    moves: Vec<&'a LocationModify>,
}

impl FileRules<'_> {
    /// Whether a file with this name is migrated: the first (highest precedence) rule whose
    /// `[file]` part matches decides.
    pub(crate) fn included(&self, name: &str) -> bool {
        self.rules
            .iter()
            .find(|(_, location)| location.file.matches(name))
            .is_some_and(|(action, _)| *action == Action::Include)
    }

    /// Whether some location modification may apply to files here.
    pub(crate) fn may_move(&self) -> bool {
        !self.moves.is_empty()
    }

    /// The first location modification that applies to the file at `path`.
    pub(crate) fn moved(&self, path: &[&str]) -> Option<Vec<String>> {
        self.moves
            .iter()
            .find_map(|modify| modify.apply(path, false))
    }
}
