//! Migration plans: the TOML file operators write, parsed with locations so
//! every problem is reported as `file:line:column: message`.
//!
//! The format is documented in `docs/plan-format.md`; `examples/plan.toml`
//! and `examples/plans/*.toml` are complete examples.
//!
//! [`parse`] and [`parse_with_attachments`] check everything they can
//! without stopping at the first problem: names, machine selection against
//! the enrolled inventory, computer associations, the wave policy
//! ([`policy`]: batches, budgets, caps, success criteria, windows, deadlines,
//! retries), `scenario = "auto"` ([`scenario`]), the replication factor of
//! replace captures, and the capture's USMT rule files ([`rules`]), which
//! the CLI attaches to the plan because the controller never reads the
//! operator's files itself.

use crate::model::{Association, Machine, Plan, Scenario, Selector, WaveSpec, now_ms};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use toml::Spanned;

mod policy;
mod rules;
mod scenario;
mod values;

pub use rules::{BUILTIN_RULES, MAX_RULE_FILE_BYTES, RuleFile, referenced_rule_files};
pub use scenario::{
    PlannedScenario, REFRESH_STORE_FIXED_BYTES, can_refresh, refresh_store_bytes, resolve_scenario,
};

/// Plan format version this controller understands.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// Largest plan accepted, in bytes.
pub const MAX_PLAN_BYTES: usize = 4 * 1024 * 1024;

/// Most problems reported for one plan; past it the last problem says how
/// many more there were.
pub const MAX_PROBLEMS: usize = 1000;

/// Default `max_in_flight` of a wave.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10;

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

/// A plan that passed validation, with what the stored [`Plan`] cannot hold
/// yet (see [`PlannedWave`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPlan {
    /// The plan to store.
    pub plan: Plan,
    /// One entry per wave of `plan.waves`, in the same order.
    pub waves: Vec<PlannedWave>,
    /// Things that do not make the plan invalid but that the operator should
    /// see: constructs of a rule file fleetmig does not honour, located at
    /// the `rules` entry that names the file.
    pub warnings: Vec<Problem>,
}

/// What the plan says about a wave beyond its [`WaveSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWave {
    /// The scenario as written (`auto` is stored in the spec as a refresh
    /// wave with pairs; see [`PlannedScenario::of`]).
    pub scenario: PlannedScenario,
    /// The capture's rule files, in plan order (empty: the built-in rules).
    pub rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    version: Spanned<u32>,
    name: Spanned<String>,
    #[serde(default)]
    policy: Option<policy::RawPlanPolicy>,
    #[serde(default)]
    replication: Option<values::Value>,
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
    max_in_flight: Option<values::Value>,
    #[serde(default)]
    select: Option<Spanned<RawSelector>>,
    #[serde(default)]
    capture: rules::RawCapture,
    #[serde(default)]
    pairs: Vec<Spanned<RawPair>>,
    #[serde(default)]
    batch: Option<Spanned<values::RawList>>,
    #[serde(default)]
    error_budget: Option<values::Value>,
    #[serde(default)]
    max_in_flight_per_site: Option<values::Value>,
    #[serde(default)]
    max_in_flight_per_storage_node: Option<values::Value>,
    #[serde(default)]
    estimated_duration: Option<values::Value>,
    #[serde(default)]
    success: Option<policy::RawSuccess>,
    #[serde(default)]
    deadlines: Option<policy::RawDeadlines>,
    #[serde(default)]
    retries: Option<policy::RawRetries>,
    #[serde(default)]
    windows: Vec<Spanned<policy::RawWindow>>,
    #[serde(default)]
    replication: Option<values::Value>,
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

/// Problems found so far, by byte offset; turned into lines and columns
/// once, at the end, in one pass over the source.
#[derive(Default)]
struct Problems {
    found: Vec<(usize, String)>,
}

impl Problems {
    /// Records a problem at the start of `span`.
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.found.push((span.start, message.into()));
    }

    fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The problems in source order (stable for equal offsets), at most
    /// [`MAX_PROBLEMS`], with 1-based lines and columns (in characters).
    fn locate(mut self, source: &str) -> Vec<Problem> {
        self.found.sort_by_key(|(offset, _)| *offset);
        let total = self.found.len();
        let mut problems = Vec::with_capacity(total.min(MAX_PROBLEMS));
        let (mut line, mut column, mut position) = (1u32, 1u32, 0usize);
        for (index, (offset, message)) in self.found.into_iter().enumerate() {
            if index + 1 == MAX_PROBLEMS && total > MAX_PROBLEMS {
                problems.push(Problem {
                    message: format!("{} more problems not shown; fix these first", total - index),
                    line,
                    column,
                });
                break;
            }
            let offset = offset.min(source.len());
            if offset > position {
                for c in source[position..].chars() {
                    if position >= offset {
                        break;
                    }
                    position += c.len_utf8();
                    if c == '\n' {
                        line += 1;
                        column = 1;
                    } else {
                        column += 1;
                    }
                }
            }
            problems.push(Problem {
                message,
                line,
                column,
            });
        }
        problems
    }
}

/// A user-supplied value for a message: at most 80 characters.
fn shown(value: &str) -> String {
    const LONGEST: usize = 80;
    if value.chars().count() <= LONGEST {
        value.to_string()
    } else {
        let mut cut: String = value.chars().take(LONGEST).collect();
        cut.push('…');
        cut
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

/// Parses and validates `source` against the enrolled `machines`, with no
/// rule files attached (a plan whose capture names `rules` is therefore
/// invalid: use [`parse_with_attachments`]).
///
/// Returns the plan, or every problem found (not just the first).
pub fn parse(source: &str, machines: &[Machine]) -> Result<Plan, Vec<Problem>> {
    parse_with_attachments(source, machines, &BTreeMap::new()).map(|parsed| parsed.plan)
}

/// Parses and validates `source` against the enrolled `machines`.
/// `attachments` maps each rule file path as the plan writes it (see
/// [`referenced_rule_files`]) to its XML text.
///
/// Returns the plan, or every problem found (not just the first), sorted by
/// location.
pub fn parse_with_attachments(
    source: &str,
    machines: &[Machine],
    attachments: &BTreeMap<String, String>,
) -> Result<ParsedPlan, Vec<Problem>> {
    parse_with_storage(source, machines, attachments, None)
}

/// [`parse_with_attachments`], also knowing how many storage nodes are
/// registered (`None`: unknown): a `replication` factor above that count
/// is a warning (the replace jobs wait for more nodes).
pub fn parse_with_storage(
    source: &str,
    machines: &[Machine],
    attachments: &BTreeMap<String, String>,
    storage_nodes: Option<usize>,
) -> Result<ParsedPlan, Vec<Problem>> {
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
    let mut problems = Problems::default();
    let raw: RawPlan = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(err) => {
            problems.at(err.span().unwrap_or(0..0), err.message().trim());
            return Err(problems.locate(source));
        }
    };

    if *raw.version.get_ref() != PLAN_FORMAT_VERSION {
        problems.at(
            raw.version.span(),
            format!(
                "unsupported plan version {}; this controller reads version {PLAN_FORMAT_VERSION}",
                raw.version.get_ref()
            ),
        );
    }
    if !is_valid_name(raw.name.get_ref()) {
        problems.at(
            raw.name.span(),
            format!(
                "plan name {:?} must be 1-64 letters, digits, '-' or '_'",
                shown(raw.name.get_ref())
            ),
        );
    }
    if raw.waves.is_empty() {
        problems.at(0..0, "plan has no [[waves]]");
    }
    let plan_policy = policy::plan_policy(&mut problems, raw.policy.unwrap_or_default());
    let plan_replication = raw
        .replication
        .as_ref()
        .and_then(|v| values::replication(&mut problems, "replication", v));
    let mut warnings = Problems::default();
    // The plan-wide factor is checked against the nodes once, if a wave uses it.
    let mut plan_replication_used = false;

    let inventory = Inventory::new(machines);
    let mut rule_files = rules::Attachments::new(attachments);
    let mut wave_names = HashSet::new();
    let mut waves = Vec::new();
    let mut planned = Vec::new();
    for raw_wave in raw.waves {
        let wave_span = raw_wave.span();
        let raw_wave = raw_wave.into_inner();
        let name = raw_wave.name.get_ref().clone();
        if !is_valid_name(&name) {
            problems.at(
                raw_wave.name.span(),
                format!(
                    "wave name {:?} must be 1-64 letters, digits, '-' or '_'",
                    shown(&name)
                ),
            );
        } else if !wave_names.insert(name.clone()) {
            problems.at(
                raw_wave.name.span(),
                format!("wave {name} is defined twice"),
            );
        }
        let name = shown(&name);
        let planned_scenario = match raw_wave
            .scenario
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("refresh", _)) => PlannedScenario::Refresh,
            Some(("replace", _)) => PlannedScenario::Replace,
            Some(("auto", _)) => PlannedScenario::Auto,
            Some((other, span)) => {
                problems.at(
                    span,
                    format!(
                        "unknown scenario {:?}; expected \"refresh\", \"replace\" or \"auto\"",
                        shown(other)
                    ),
                );
                PlannedScenario::Refresh
            }
        };
        let max_in_flight = match &raw_wave.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(value) => values::count(
                &mut problems,
                &format!("wave {name}: max_in_flight"),
                value,
                1,
            )
            .unwrap_or(1),
        };
        let wave_policy = policy::wave_policy(&mut problems, &name, &raw_wave);
        let (mut capture, rules) = rules::capture(
            &mut problems,
            &mut warnings,
            &name,
            raw_wave.capture,
            &mut rule_files,
        );
        capture.rules = rules.clone();
        let has_pairs = !raw_wave.pairs.is_empty();
        let pairs = check_pairs(&mut problems, &name, raw_wave.pairs, &inventory);
        let (scenario, select) = match planned_scenario {
            PlannedScenario::Replace => {
                if let Some(raw_select) = &raw_wave.select {
                    problems.at(
                        raw_select.span(),
                        format!(
                            "wave {name}: a replace wave selects its machines with pairs, not [waves.select] (scenario = \"auto\" mixes both)"
                        ),
                    );
                    (Scenario::Replace, None)
                } else if !has_pairs {
                    problems.at(
                        wave_span,
                        format!(
                            "wave {name} is a replace wave with no pairs: name each source and its destination"
                        ),
                    );
                    (Scenario::Replace, None)
                } else {
                    (Scenario::Replace, Some(sources_selector(&pairs)))
                }
            }
            PlannedScenario::Refresh => {
                if has_pairs {
                    problems.at(
                        wave_span.clone(),
                        format!(
                            "wave {name}: pairs are for replace waves; set scenario = \"replace\" or \"auto\", or remove them"
                        ),
                    );
                }
                let select = match raw_wave.select {
                    Some(raw_select) => {
                        check_selector(&mut problems, &name, raw_select, &inventory).map(|s| s.0)
                    }
                    None => {
                        problems.at(
                            wave_span,
                            format!(
                                "wave {name} has no [waves.select]: name the machines it moves"
                            ),
                        );
                        None
                    }
                };
                (Scenario::Refresh, select)
            }
            PlannedScenario::Auto => scenario::auto_wave(
                &mut problems,
                &name,
                wave_span,
                raw_wave.select,
                &pairs,
                has_pairs,
                &inventory,
            ),
        };
        let replication = wave_replication(
            &mut problems,
            &name,
            &raw_wave.replication,
            planned_scenario,
            has_pairs,
        );
        let replication = match replication {
            Some(own) => {
                if let (Some(value), Some(nodes)) = (&raw_wave.replication, storage_nodes) {
                    too_few_nodes(&mut warnings, &format!("wave {name}: "), value, own, nodes);
                }
                Some(own)
            }
            None if can_replace(planned_scenario, has_pairs) && plan_replication.is_some() => {
                plan_replication_used = true;
                plan_replication
            }
            None => None,
        };
        let Some(select) = select else { continue };
        // Only when every window is valid: a broken one would make the
        // others look like they leave machines out.
        if !raw_wave.windows.is_empty() && wave_policy.windows.len() == raw_wave.windows.len() {
            policy::check_window_coverage(
                &mut problems,
                &name,
                &wave_policy.windows,
                raw_wave.windows.first().map_or(0..0, Spanned::span),
                inventory.machines.iter().filter(|m| select.matches(m)),
            );
        }
        waves.push(WaveSpec {
            name: raw_wave.name.into_inner(),
            select,
            scenario,
            max_in_flight,
            capture,
            pairs,
            policy: wave_policy,
            replication,
        });
        planned.push(PlannedWave {
            scenario: planned_scenario,
            rules,
        });
    }

    if let (true, Some(factor), Some(value), Some(nodes)) = (
        plan_replication_used,
        plan_replication,
        &raw.replication,
        storage_nodes,
    ) {
        too_few_nodes(&mut warnings, "", value, factor, nodes);
    }
    if !problems.is_empty() {
        return Err(problems.locate(source));
    }
    Ok(ParsedPlan {
        plan: Plan {
            name: raw.name.into_inner(),
            waves,
            applied_ms: now_ms(),
            source: source.to_string(),
            policy: plan_policy,
        },
        waves: planned,
        warnings: warnings.locate(source),
    })
}

/// Whether a wave can have replace jobs: a replace wave, or an auto wave
/// with pairs.
fn can_replace(scenario: PlannedScenario, has_pairs: bool) -> bool {
    match scenario {
        PlannedScenario::Replace => true,
        PlannedScenario::Auto => has_pairs,
        PlannedScenario::Refresh => false,
    }
}

/// Checks a wave's own `replication`: a factor 1 to 3, only in a wave that
/// has replace jobs (a refreshed machine keeps its state on itself).
fn wave_replication(
    problems: &mut Problems,
    name: &str,
    raw: &Option<values::Value>,
    scenario: PlannedScenario,
    has_pairs: bool,
) -> Option<u32> {
    let value = raw.as_ref()?;
    let factor = values::replication(problems, &format!("wave {name}: replication"), value)?;
    if !can_replace(scenario, has_pairs) {
        problems.at(
            value.span(),
            format!(
                "wave {name}: replication applies to replace jobs (their state goes through \
                 storage nodes); this wave has none: remove it, or add pairs with scenario = \
                 \"replace\" or \"auto\""
            ),
        );
        return None;
    }
    Some(factor)
}

/// Warns when `factor` copies need more storage nodes than the `nodes`
/// registered: the replace jobs wait until enough nodes are live.
fn too_few_nodes(
    warnings: &mut Problems,
    prefix: &str,
    value: &values::Value,
    factor: u32,
    nodes: usize,
) {
    if factor as usize > nodes {
        warnings.at(
            value.span(),
            format!(
                "{prefix}replication {factor} needs {factor} storage nodes and {nodes} {} \
                 registered: its replace jobs wait until {factor} nodes are live",
                if nodes == 1 { "is" } else { "are" }
            ),
        );
    }
}

/// The enrolled machines, indexed for the checks.
struct Inventory<'a> {
    machines: &'a [Machine],
    hostnames: HashSet<String>,
    ids: HashSet<&'a str>,
}

impl<'a> Inventory<'a> {
    fn new(machines: &'a [Machine]) -> Self {
        Self {
            machines,
            hostnames: machines
                .iter()
                .map(|m| m.inventory.hostname.to_ascii_lowercase())
                .collect(),
            ids: machines.iter().map(|m| m.id.as_str()).collect(),
        }
    }
}

/// A selector naming the sources of `pairs` by hostname.
fn sources_selector(pairs: &[Association]) -> Selector {
    Selector {
        hostnames: pairs.iter().map(|p| p.source.clone()).collect(),
        ..Selector::default()
    }
}

/// Where a selector names machines explicitly: lowercase hostname or id to
/// the span of its entry.
type Named = BTreeMap<String, Range<usize>>;

/// Checks a wave's selector against the enrolled machines. Returns the
/// selector, the explicitly named machines (hostnames lowercased, ids as
/// written) with their locations, and the selector's own location.
fn check_selector(
    problems: &mut Problems,
    name: &str,
    raw_select: Spanned<RawSelector>,
    inventory: &Inventory<'_>,
) -> Option<(Selector, Named, Range<usize>)> {
    let before = problems.found.len();
    let select_span = raw_select.span();
    let raw_select = raw_select.into_inner();
    let mut named = Named::new();
    for host in &raw_select.hostnames {
        let lower = host.get_ref().to_ascii_lowercase();
        if !inventory.hostnames.contains(&lower) {
            problems.at(
                host.span(),
                format!("machine {} is not enrolled", shown(host.get_ref())),
            );
        }
        named.entry(lower).or_insert(host.span());
    }
    for id in &raw_select.ids {
        if !inventory.ids.contains(id.get_ref().as_str()) {
            problems.at(
                id.span(),
                format!("machine id {} is not enrolled", shown(id.get_ref())),
            );
        }
        named.entry(id.get_ref().clone()).or_insert(id.span());
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
        problems.at(
            select_span.clone(),
            format!("wave {name} selects nothing: set all, ids, hostnames, sites or labels"),
        );
    }
    (problems.found.len() == before).then_some((select, named, select_span))
}

/// Checks a wave's computer associations: every source enrolled, no machine
/// twice, never a machine onto itself. Destinations may enroll later (new
/// hardware often arrives after the plan is written).
fn check_pairs(
    problems: &mut Problems,
    name: &str,
    raw_pairs: Vec<Spanned<RawPair>>,
    inventory: &Inventory<'_>,
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
                problems.at(span, format!("wave {name}: empty {role} hostname"));
                ok = false;
            } else if !seen.insert(host.to_ascii_lowercase()) {
                problems.at(
                    span,
                    format!(
                        "wave {name}: machine {} appears in more than one pair",
                        shown(host)
                    ),
                );
                ok = false;
            }
        }
        if !source.is_empty() && !inventory.hostnames.contains(&source.to_ascii_lowercase()) {
            problems.at(
                raw.source.span(),
                format!("source machine {} is not enrolled", shown(&source)),
            );
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
mod tests;
