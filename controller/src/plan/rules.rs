//! `[waves.capture]`: user selection and the capture's USMT rule files.
//!
//! A wave's `rules = ["rules/custom.xml"]` names migration XML files by
//! paths relative to the plan file. The controller never reads the
//! operator's files: the CLI reads the files [`referenced_rule_files`]
//! lists and attaches their text, keyed by the path exactly as the plan
//! writes it; validation parses each with the state engine's rules parser.
//! The files replace the built-in rules, like USMT's `/i:` files; the entry
//! [`BUILTIN_RULES`] (`"@builtin"`) puts the built-in rules among them.

use super::{Problems, shown};
use crate::model::CaptureOptions;
use fleetmig_state::rules::{Action, RuleSet};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use toml::Spanned;

/// The `rules` entry that stands for the built-in rules
/// (`fleetmig-default.xml`), so a wave can add custom files to them instead
/// of replacing them: `rules = ["@builtin", "rules/custom.xml"]`.
pub const BUILTIN_RULES: &str = "@builtin";

/// Largest rule file accepted, in bytes.
pub const MAX_RULE_FILE_BYTES: usize = 2 * 1024 * 1024;

pub use crate::model::RuleFile;

/// `[waves.capture]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCapture {
    user_include: Vec<String>,
    user_exclude: Vec<String>,
    continue_on_error: bool,
    rules: Option<Spanned<Vec<Spanned<String>>>>,
}

/// The attached files, each parsed at most once.
pub(super) struct Attachments<'a> {
    files: &'a BTreeMap<String, String>,
    parsed: BTreeMap<String, Parsed>,
}

/// The outcome of parsing one attached file.
#[derive(Clone)]
enum Parsed {
    Rules { set: RuleSet, warnings: Vec<String> },
    Invalid(String),
}

impl<'a> Attachments<'a> {
    pub(super) fn new(files: &'a BTreeMap<String, String>) -> Self {
        Self {
            files,
            parsed: BTreeMap::new(),
        }
    }

    /// The attached text of `name` and what parsing it gave, or `None` when
    /// it is not attached.
    fn get(&mut self, name: &str) -> Option<(&'a String, Parsed)> {
        let xml = self.files.get(name)?;
        let parsed = self
            .parsed
            .entry(name.to_string())
            .or_insert_with(|| parse_rules(name, xml))
            .clone();
        Some((xml, parsed))
    }
}

fn parse_rules(name: &str, xml: &str) -> Parsed {
    if xml.len() > MAX_RULE_FILE_BYTES {
        return Parsed::Invalid(format!(
            "rule file {} is {} bytes; the limit is {MAX_RULE_FILE_BYTES}",
            shown(name),
            xml.len()
        ));
    }
    match RuleSet::parse(xml, name) {
        Ok((set, warnings)) => Parsed::Rules {
            set,
            warnings: warnings.iter().map(ToString::to_string).collect(),
        },
        Err(fleetmig_state::Error::RulesXml {
            file,
            line,
            column,
            message,
        }) => Parsed::Invalid(format!("{}:{line}:{column}: {message}", shown(&file))),
        Err(other) => Parsed::Invalid(format!("{}: {other}", shown(name))),
    }
}

/// The capture options a wave passes to its jobs (without rule files, which
/// [`super::PlannedWave::rules`] holds until `CaptureOptions` can).
fn capture_options(raw: &mut RawCapture) -> CaptureOptions {
    CaptureOptions {
        user_include: std::mem::take(&mut raw.user_include),
        user_exclude: std::mem::take(&mut raw.user_exclude),
        continue_on_error: raw.continue_on_error,
        rules: Vec::new(),
    }
}

/// Whether `path` is absolute (Unix, drive letter or UNC).
fn is_absolute(path: &str) -> bool {
    let bytes = path.as_bytes();
    path.starts_with('/')
        || path.starts_with('\\')
        || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
}

/// Checks a wave's capture options and its rule files. Returns the options
/// and the rule files (empty: the built-in rules).
pub(super) fn capture(
    problems: &mut Problems,
    warnings: &mut Problems,
    wave: &str,
    mut raw: RawCapture,
    attachments: &mut Attachments<'_>,
) -> (CaptureOptions, Vec<RuleFile>) {
    let options = capture_options(&mut raw);
    let Some(rules) = raw.rules else {
        return (options, Vec::new());
    };
    let list_span = rules.span();
    let entries = rules.into_inner();
    if entries.is_empty() {
        problems.at(
            list_span,
            format!(
                "wave {wave}: capture.rules is an empty list; leave it out for the built-in rules"
            ),
        );
        return (options, Vec::new());
    }
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    let mut sets = Vec::new();
    let mut all_parsed = true;
    for entry in &entries {
        let span = entry.span();
        let name = entry.get_ref();
        if let Some(problem) = path_problem(name) {
            problems.at(span, format!("wave {wave}: capture.rules: {problem}"));
            all_parsed = false;
            continue;
        }
        if !seen.insert(name.as_str()) {
            problems.at(
                span,
                format!("wave {wave}: rule file {} is listed twice", shown(name)),
            );
            continue;
        }
        if name == BUILTIN_RULES {
            sets.push(RuleSet::builtin());
            files.push(RuleFile {
                name: fleetmig_state::rules::BUILTIN_NAME.to_string(),
                xml: fleetmig_state::rules::BUILTIN_XML.to_string(),
            });
            continue;
        }
        match attachments.get(name) {
            None => {
                problems.at(
                    span,
                    format!(
                        "wave {wave}: rule file {} is not attached (the CLI attaches the files a plan names, relative to the plan file)",
                        shown(name)
                    ),
                );
                all_parsed = false;
            }
            Some((_, Parsed::Invalid(message))) => {
                problems.at(span, format!("wave {wave}: {message}"));
                all_parsed = false;
            }
            Some((
                xml,
                Parsed::Rules {
                    set,
                    warnings: found,
                },
            )) => {
                for warning in found {
                    warnings.at(span.clone(), format!("wave {wave}: {warning}"));
                }
                sets.push(set);
                files.push(RuleFile {
                    name: name.clone(),
                    xml: xml.clone(),
                });
            }
        }
    }
    let includes = |set: &RuleSet| set.rules.iter().any(|rule| rule.action == Action::Include);
    if all_parsed && !sets.iter().any(includes) {
        problems.at(
            list_span_or(&entries, list_span),
            format!(
                "wave {wave}: the rule files include nothing: nothing would be captured (they replace the built-in rules)"
            ),
        );
    }
    (options, files)
}

fn list_span_or(entries: &[Spanned<String>], fallback: Range<usize>) -> Range<usize> {
    entries.first().map_or(fallback, Spanned::span)
}

/// What is wrong with a rule file path, if anything.
fn path_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("empty rule file path".to_string())
    } else if name.contains('\0') {
        Some(format!("rule file path {:?} contains NUL", shown(name)))
    } else if is_absolute(name) {
        Some(format!(
            "rule file path {} is absolute; write it relative to the plan file",
            shown(name)
        ))
    } else {
        None
    }
}

/// The rule files `source` names (`[waves.capture] rules`), each once, in
/// plan order: the paths, relative to the plan file, that the CLI reads and
/// attaches for [`super::parse_with_attachments`]. A plan that does not
/// parse names none (validation then reports why).
pub fn referenced_rule_files(source: &str) -> Vec<String> {
    if source.len() > super::MAX_PLAN_BYTES {
        return Vec::new();
    }
    let Ok(table) = source.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let waves = table.get("waves").and_then(toml::Value::as_array);
    for wave in waves.into_iter().flatten() {
        let rules = wave
            .get("capture")
            .and_then(|capture| capture.get("rules"))
            .and_then(toml::Value::as_array);
        let named = rules.into_iter().flatten().filter_map(toml::Value::as_str);
        for name in named {
            if name != BUILTIN_RULES && path_problem(name).is_none() && seen.insert(name) {
                names.push(name.to_string());
            }
        }
    }
    names
}
