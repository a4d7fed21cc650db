//! Migration plans: the TOML file operators write, parsed with locations so
//! every problem is reported as `file:line:column: message`.
//!
//! The format is documented in `docs/plan-format.md`; `examples/plan.toml`
//! is a complete example.

use crate::model::{
    Association, CaptureOptions, Machine, Plan, Scenario, Selector, WaveSpec, now_ms,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use toml::Spanned;

/// Plan format version this controller understands.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// Largest plan accepted, in bytes.
pub const MAX_PLAN_BYTES: usize = 4 * 1024 * 1024;

/// One problem found in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// 1-based line (0 when unknown).
    pub line: u32,
    /// 1-based column (0 when unknown).
    pub column: u32,
}

impl Problem {
    /// Formats as `file:line:column: message`.
    pub fn display(&self, file: &str) -> String {
        format!("{file}:{}:{}: {}", self.line, self.column, self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    version: Spanned<u32>,
    name: Spanned<String>,
    #[serde(default)]
    waves: Vec<Spanned<RawWave>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: Spanned<String>,
    #[serde(default)]
    scenario: Option<Spanned<String>>,
    #[serde(default)]
    max_in_flight: Option<Spanned<i64>>,
    #[serde(default)]
    select: Option<Spanned<RawSelector>>,
    #[serde(default)]
    capture: CaptureOptions,
    #[serde(default)]
    pairs: Vec<Spanned<RawPair>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    source: Spanned<String>,
    destination: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSelector {
    all: bool,
    ids: Vec<Spanned<String>>,
    hostnames: Vec<Spanned<String>>,
    sites: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// Translates byte offsets into 1-based line and column numbers.
struct Locator<'a> {
    source: &'a str,
}

impl Locator<'_> {
    fn problem(&self, span: Range<usize>, message: impl Into<String>) -> Problem {
        let mut offset = span.start.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.source[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Problem {
            message: message.into(),
            line: before.matches('\n').count() as u32 + 1,
            column: before[line_start..].chars().count() as u32 + 1,
        }
    }
}

/// Whether `name` is usable as a plan or wave name (it becomes part of keys).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Parses and validates `source` against the enrolled `machines`.
///
/// Returns the plan, or every problem found (not just the first).
pub fn parse(source: &str, machines: &[Machine]) -> Result<Plan, Vec<Problem>> {
    let locator = Locator { source };
    if source.len() > MAX_PLAN_BYTES {
        return Err(vec![Problem {
            message: format!(
                "plan is {} bytes; the limit is {MAX_PLAN_BYTES}",
                source.len()
            ),
            line: 0,
            column: 0,
        }]);
    }
    let raw: RawPlan = toml::from_str(source).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        vec![locator.problem(span, err.message().trim().to_string())]
    })?;

    let mut problems = Vec::new();
    if *raw.version.get_ref() != PLAN_FORMAT_VERSION {
        problems.push(locator.problem(
            raw.version.span(),
            format!(
                "unsupported plan version {}; this controller reads version {PLAN_FORMAT_VERSION}",
                raw.version.get_ref()
            ),
        ));
    }
    if !is_valid_name(raw.name.get_ref()) {
        problems.push(locator.problem(
            raw.name.span(),
            format!(
                "plan name {:?} must be 1-64 letters, digits, '-' or '_'",
                raw.name.get_ref()
            ),
        ));
    }
    if raw.waves.is_empty() {
        problems.push(locator.problem(0..0, "plan has no [[waves]]"));
    }

    let hostnames: HashSet<String> = machines
        .iter()
        .map(|m| m.inventory.hostname.to_ascii_lowercase())
        .collect();
    let ids: HashSet<&str> = machines.iter().map(|m| m.id.as_str()).collect();
    let mut wave_names = HashSet::new();
    let mut waves = Vec::new();
    for raw_wave in raw.waves {
        let wave_span = raw_wave.span();
        let raw_wave = raw_wave.into_inner();
        let name = raw_wave.name.get_ref().clone();
        if !is_valid_name(&name) {
            problems.push(locator.problem(
                raw_wave.name.span(),
                format!("wave name {name:?} must be 1-64 letters, digits, '-' or '_'"),
            ));
        } else if !wave_names.insert(name.clone()) {
            problems.push(locator.problem(
                raw_wave.name.span(),
                format!("wave {name} is defined twice"),
            ));
        }
        let scenario = match raw_wave
            .scenario
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("refresh", _)) => Scenario::Refresh,
            Some(("replace", _)) => Scenario::Replace,
            Some((other, span)) => {
                problems.push(locator.problem(
                    span,
                    format!("unknown scenario {other:?}; expected \"refresh\" or \"replace\""),
                ));
                Scenario::Refresh
            }
        };
        let max_in_flight = match raw_wave.max_in_flight {
            None => 10,
            Some(value) => match u32::try_from(*value.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    problems.push(locator.problem(
                        value.span(),
                        format!("max_in_flight must be at least 1, got {}", value.get_ref()),
                    ));
                    1
                }
            },
        };
        let has_pairs = !raw_wave.pairs.is_empty();
        let pairs = check_pairs(&locator, &name, raw_wave.pairs, &hostnames, &mut problems);
        let select = match (scenario, raw_wave.select) {
            (Scenario::Replace, Some(raw_select)) => {
                problems.push(locator.problem(
                    raw_select.span(),
                    format!(
                        "wave {name}: a replace wave selects its machines with [[waves.pairs]], not [waves.select]"
                    ),
                ));
                continue;
            }
            (Scenario::Replace, None) => {
                if !has_pairs {
                    problems.push(locator.problem(
                        wave_span,
                        format!(
                            "wave {name} is a replace wave with no [[waves.pairs]]: name each source and its destination"
                        ),
                    ));
                    continue;
                }
                Selector {
                    hostnames: pairs.iter().map(|p| p.source.clone()).collect(),
                    ..Selector::default()
                }
            }
            (Scenario::Refresh, raw_select) => {
                if has_pairs {
                    problems.push(locator.problem(
                        wave_span.clone(),
                        format!(
                            "wave {name}: pairs are for replace waves; set scenario = \"replace\" or remove them"
                        ),
                    ));
                }
                let Some(raw_select) = raw_select else {
                    problems.push(locator.problem(
                        wave_span,
                        format!("wave {name} has no [waves.select]: name the machines it moves"),
                    ));
                    continue;
                };
                match check_selector(&locator, &name, raw_select, &hostnames, &ids) {
                    Ok(select) => select,
                    Err(mut found) => {
                        problems.append(&mut found);
                        continue;
                    }
                }
            }
        };
        waves.push(WaveSpec {
            name,
            select,
            scenario,
            max_in_flight,
            capture: raw_wave.capture,
            pairs,
            policy: Default::default(),
        });
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Plan {
        name: raw.name.into_inner(),
        waves,
        applied_ms: now_ms(),
        source: source.to_string(),
        policy: Default::default(),
    })
}

/// Checks a refresh wave's selector against the enrolled machines.
fn check_selector(
    locator: &Locator<'_>,
    name: &str,
    raw_select: Spanned<RawSelector>,
    hostnames: &HashSet<String>,
    ids: &HashSet<&str>,
) -> Result<Selector, Vec<Problem>> {
    let mut problems = Vec::new();
    let select_span = raw_select.span();
    let raw_select = raw_select.into_inner();
    for host in &raw_select.hostnames {
        if !hostnames.contains(&host.get_ref().to_ascii_lowercase()) {
            problems.push(locator.problem(
                host.span(),
                format!("machine {} is not enrolled", host.get_ref()),
            ));
        }
    }
    for id in &raw_select.ids {
        if !ids.contains(id.get_ref().as_str()) {
            problems.push(locator.problem(
                id.span(),
                format!("machine id {} is not enrolled", id.get_ref()),
            ));
        }
    }
    let select = Selector {
        all: raw_select.all,
        ids: raw_select
            .ids
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        hostnames: raw_select
            .hostnames
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        sites: raw_select.sites,
        labels: raw_select.labels,
    };
    if select.is_empty() {
        problems.push(locator.problem(
            select_span,
            format!("wave {name} selects nothing: set all, ids, hostnames, sites or labels"),
        ));
    }
    if problems.is_empty() {
        Ok(select)
    } else {
        Err(problems)
    }
}

/// Checks a replace wave's computer associations: every source enrolled,
/// no machine twice, never a machine onto itself. Destinations may enroll
/// later (new hardware often arrives after the plan is written).
fn check_pairs(
    locator: &Locator<'_>,
    name: &str,
    raw_pairs: Vec<Spanned<RawPair>>,
    hostnames: &HashSet<String>,
    problems: &mut Vec<Problem>,
) -> Vec<Association> {
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(raw_pairs.len());
    for raw in raw_pairs {
        let raw = raw.into_inner();
        let source = raw.source.get_ref().trim().to_string();
        let destination = raw.destination.get_ref().trim().to_string();
        let mut ok = true;
        for (host, span, role) in [
            (&source, raw.source.span(), "source"),
            (&destination, raw.destination.span(), "destination"),
        ] {
            if host.is_empty() {
                problems.push(locator.problem(span, format!("wave {name}: empty {role} hostname")));
                ok = false;
            } else if !seen.insert(host.to_ascii_lowercase()) {
                problems.push(locator.problem(
                    span,
                    format!("wave {name}: machine {host} appears in more than one pair"),
                ));
                ok = false;
            }
        }
        if !source.is_empty() && !hostnames.contains(&source.to_ascii_lowercase()) {
            problems.push(locator.problem(
                raw.source.span(),
                format!("source machine {source} is not enrolled"),
            ));
            ok = false;
        }
        if ok {
            pairs.push(Association {
                source,
                destination,
            });
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Inventory;

    fn machine(id: &str, host: &str) -> Machine {
        Machine {
            id: id.into(),
            inventory: Inventory {
                hostname: host.into(),
                ..Inventory::default()
            },
            enrolled_ms: 0,
        }
    }

    const GOOD: &str = r#"version = 1
name = "pilot"

[[waves]]
name = "first"
scenario = "refresh"
max_in_flight = 2
[waves.select]
hostnames = ["PC-1", "pc-2"]
"#;

    #[test]
    fn parses_a_good_plan() {
        let plan = parse(GOOD, &[machine("a", "PC-1"), machine("b", "PC-2")]).unwrap();
        assert_eq!(plan.name, "pilot");
        assert_eq!(plan.waves.len(), 1);
        assert_eq!(plan.waves[0].max_in_flight, 2);
        assert_eq!(plan.waves[0].scenario, Scenario::Refresh);
    }

    #[test]
    fn unknown_hostname_is_reported_with_its_location() {
        let problems = parse(GOOD, &[machine("a", "PC-1")]).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].message, "machine pc-2 is not enrolled");
        assert_eq!((problems[0].line, problems[0].column), (9, 22));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let problems = parse("version = 1\nname = \n", &[]).unwrap_err();
        assert_eq!(problems[0].line, 2, "{problems:?}");
    }

    #[test]
    fn reports_every_problem() {
        let source = r#"version = 2
name = "bad name"
[[waves]]
name = "w"
scenario = "teleport"
max_in_flight = 0
[waves.select]
"#;
        let problems = parse(source, &[]).unwrap_err();
        let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(problems.len(), 5, "{messages:?}");
        assert!(messages[0].contains("unsupported plan version 2"));
        assert!(messages.iter().any(|m| m.contains("teleport")));
        assert!(messages.iter().any(|m| m.contains("selects nothing")));
    }

    const REPLACE: &str = r#"version = 1
name = "swap"

[[waves]]
name = "lab"
scenario = "replace"
pairs = [
  { source = "XP-1", destination = "W7-1" },
  { source = "xp-2", destination = "W7-2" },
]
"#;

    #[test]
    fn parses_replace_pairs_and_selects_the_sources() {
        let machines = [machine("a", "XP-1"), machine("b", "XP-2")];
        let plan = parse(REPLACE, &machines).unwrap();
        let wave = &plan.waves[0];
        assert_eq!(wave.scenario, Scenario::Replace);
        assert_eq!(wave.pairs.len(), 2);
        assert_eq!(wave.pairs[1].destination, "W7-2");
        assert!(wave.select.matches(&machines[0]) && wave.select.matches(&machines[1]));
    }

    #[test]
    fn replace_pairs_are_checked() {
        let source = r#"version = 1
name = "swap"
[[waves]]
name = "lab"
scenario = "replace"
pairs = [
  { source = "XP-1", destination = "XP-1" },
  { source = "XP-9", destination = "W7-9" },
]
[[waves]]
name = "nopairs"
scenario = "replace"
"#;
        let problems = parse(source, &[machine("a", "XP-1")]).unwrap_err();
        let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("XP-1 appears in more than one pair")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("XP-9 is not enrolled")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("no [[waves.pairs]]")),
            "{messages:?}"
        );
        assert_eq!(problems[1].line, 8, "{problems:?}");
    }

    #[test]
    fn the_example_plan_is_valid() {
        let source = include_str!("../../examples/plan.toml");
        let machines: Vec<Machine> = ["PC-0001", "PC-0002", "PC-0003", "PC-0101", "PC-0102"]
            .iter()
            .map(|host| machine(host, host))
            .collect();
        let plan = parse(source, &machines).unwrap_or_else(|problems| {
            panic!("examples/plan.toml: {problems:?}");
        });
        assert!(plan.waves.iter().any(|w| w.scenario == Scenario::Replace));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let problems = parse("version = 1\nname = \"p\"\ncolour = 3\n", &[]).unwrap_err();
        assert!(problems[0].message.contains("colour"), "{problems:?}");
        assert_eq!(problems[0].line, 3);
    }
}
