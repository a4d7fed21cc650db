//! Plan parsing tests: every rule and its message, with line and column.

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
        messages.iter().any(|m| m == &"wave nopairs is a replace wave with no pairs: name each source and its destination"),
        "{messages:?}"
    );
    assert_eq!(problems[1].line, 8, "{problems:?}");
}

#[test]
fn the_example_plan_is_valid() {
    let source = include_str!("../../../examples/plan.toml");
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

// ---------------------------------------------------------------------------
// Helpers for the policy, scenario and rules tests.

use crate::policy::{
    Advance, BatchSize, Batches, Budget, Caps, Deadlines, MaintenanceWindow, PlanPolicy, Retries,
    SuccessCriteria, WavePolicy, WindowTimes,
};
use proptest::prelude::*;

const GIB: u64 = 1024 * 1024 * 1024;

/// A machine that can be refreshed: hard links, 10 GiB free, site `hq`.
fn capable(id: &str, host: &str) -> Machine {
    let mut machine = machine(id, host);
    machine.inventory.supports_hard_links = true;
    machine.inventory.free_bytes = 10 * GIB;
    machine.inventory.site = "hq".into();
    machine
}

fn fleet() -> Vec<Machine> {
    vec![capable("a", "PC-1"), capable("b", "PC-2")]
}

/// A plan whose wave `w` has `extra` (wave keys first, then any subtables)
/// starting on line 5, then `[waves.select] hostnames = ["PC-1"]`.
fn wave(extra: &str) -> String {
    format!(
        "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n{extra}\n[waves.select]\nhostnames = [\"PC-1\"]\n"
    )
}

/// Every problem as `(line, column, message)`.
fn problems_in(source: &str, machines: &[Machine]) -> Vec<(u32, u32, String)> {
    match parse(source, machines) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| (p.line, p.column, p.message))
            .collect(),
    }
}

/// The single problem of `source` (against [`fleet`]).
fn only_problem(source: &str) -> (u32, u32, String) {
    let mut found = problems_in(source, &fleet());
    assert_eq!(found.len(), 1, "{found:#?}\n{source}");
    found.remove(0)
}

fn policy_of(extra: &str) -> WavePolicy {
    let source = wave(extra);
    match parse(&source, &fleet()) {
        Ok(plan) => plan.waves[0].policy.clone(),
        Err(problems) => panic!("{problems:#?}\n{source}"),
    }
}

fn at(line: u32, column: u32, message: &str) -> (u32, u32, String) {
    (line, column, message.to_string())
}

// ---------------------------------------------------------------------------
// Locations.

#[test]
fn columns_count_characters_not_bytes() {
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n[waves.select]\nhostnames = [\"é\", \"PC-9\"]\n";
    let found = problems_in(source, &fleet());
    assert_eq!(
        found,
        vec![
            at(6, 14, "machine é is not enrolled"),
            at(6, 19, "machine PC-9 is not enrolled"),
        ]
    );
}

#[test]
fn problems_come_sorted_by_location() {
    let source = wave("batch = 0\nerror_budget = -1\nmax_in_flight = 0");
    let found = problems_in(&source, &fleet());
    let lines: Vec<u32> = found.iter().map(|p| p.0).collect();
    assert_eq!(lines, vec![5, 6, 7], "{found:#?}");
}

#[test]
fn problems_are_capped_with_a_count_of_the_rest() {
    let hosts: Vec<String> = (0..1500).map(|i| format!("\"X-{i}\"")).collect();
    let source = format!(
        "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n[waves.select]\nhostnames = [{}]\n",
        hosts.join(", ")
    );
    let problems = parse(&source, &[]).unwrap_err();
    assert_eq!(problems.len(), MAX_PROBLEMS);
    assert_eq!(problems[0].message, "machine X-0 is not enrolled");
    assert_eq!(
        problems.last().unwrap().message,
        "501 more problems not shown; fix these first"
    );
}

#[test]
fn oversized_plans_are_refused_without_parsing() {
    let source = format!("# {}\n", "x".repeat(MAX_PLAN_BYTES));
    let problems = parse(&source, &[]).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.starts_with("plan is "), "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (0, 0));
}

#[test]
fn long_values_are_shortened_in_messages() {
    let host = "H".repeat(500);
    let source = format!(
        "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n[waves.select]\nhostnames = [\"{host}\"]\n"
    );
    let (_, _, message) = problems_in(&source, &[]).remove(0);
    assert!(message.len() < 120, "{message}");
    assert!(message.contains('…'));
}

// ---------------------------------------------------------------------------
// Wave policy: the happy path.

#[test]
fn a_wave_without_policy_keys_gets_the_default_policy() {
    assert_eq!(policy_of(""), WavePolicy::default());
    let plan = parse(&wave(""), &fleet()).unwrap();
    assert_eq!(plan.policy, PlanPolicy::default());
    assert_eq!(plan.waves[0].max_in_flight, DEFAULT_MAX_IN_FLIGHT);
}

#[test]
fn every_policy_key_is_parsed() {
    let policy = policy_of(
        r#"max_in_flight = 20
batch = [1, 10, "25%", "100%"]
error_budget = 2
max_in_flight_per_site = 5
max_in_flight_per_storage_node = 10
estimated_duration = "45m"
[waves.success]
min_percent = 95
bake = "10m"
advance = "manual"
[waves.deadlines]
assigned = "30m"
capturing = "2h"
restoring = "2h 30m"
verifying = "30m"
[waves.retries]
max_attempts = 3
backoff = "1m"
max_backoff = "30m"
[[waves.windows]]
days = "mon-fri"
start = "19:00"
end = "06:00"
time_zone = "Europe/Paris"
sites = ["hq"]
labels = { dept = "finance" }
[[waves.windows]]
from = "2026-12-01T20:00"
to = "2026-12-02T06:00"
time_zone = "Europe/Paris""#,
    );
    let minute = 60_000;
    assert_eq!(
        policy,
        WavePolicy {
            batches: Batches::Ramp(vec![
                BatchSize::Count(1),
                BatchSize::Count(10),
                BatchSize::Percent(25),
                BatchSize::Percent(100),
            ]),
            caps: Caps {
                per_site: Some(5),
                per_storage_node: Some(10),
            },
            error_budget: Some(Budget::Count(2)),
            success: SuccessCriteria {
                min_success_percent: 95,
                bake_ms: 10 * minute,
                advance: Advance::Manual,
            },
            windows: vec![
                MaintenanceWindow {
                    times: WindowTimes::Weekly {
                        days: vec![0, 1, 2, 3, 4],
                        start_minute: 19 * 60,
                        end_minute: 6 * 60,
                    },
                    time_zone: "Europe/Paris".into(),
                    sites: vec!["hq".into()],
                    labels: [("dept".to_string(), "finance".to_string())].into(),
                },
                MaintenanceWindow {
                    times: WindowTimes::Range {
                        // 2026-12-01T19:00Z and 2026-12-02T05:00Z (Paris is UTC+1 in winter).
                        from_ms: 1_796_151_600_000,
                        to_ms: 1_796_187_600_000,
                    },
                    time_zone: "Europe/Paris".into(),
                    sites: vec![],
                    labels: BTreeMap::new(),
                },
            ],
            estimated_duration_ms: 45 * minute,
            deadlines: Deadlines {
                assigned_ms: Some(30 * minute),
                capturing_ms: Some(120 * minute),
                restoring_ms: Some(150 * minute),
                verifying_ms: Some(30 * minute),
            },
            retries: Retries {
                max_attempts: 3,
                backoff_ms: minute,
                max_backoff_ms: 30 * minute,
            },
        }
    );
}

#[test]
fn batch_takes_a_count_a_percentage_or_a_ramp() {
    assert_eq!(
        policy_of("batch = 10").batches,
        Batches::Each(BatchSize::Count(10))
    );
    assert_eq!(
        policy_of("batch = \"25%\"").batches,
        Batches::Each(BatchSize::Percent(25))
    );
    assert_eq!(
        policy_of("batch = [\"100%\"]").batches,
        Batches::Ramp(vec![BatchSize::Percent(100)])
    );
}

#[test]
fn budgets_take_counts_and_percentages_including_zero() {
    assert_eq!(
        policy_of("error_budget = 0").error_budget,
        Some(Budget::Count(0))
    );
    assert_eq!(
        policy_of("error_budget = \"0%\"").error_budget,
        Some(Budget::Percent(0))
    );
    assert_eq!(
        policy_of("error_budget = \"100%\"").error_budget,
        Some(Budget::Percent(100))
    );
}

#[test]
fn success_percent_may_be_written_with_a_percent_sign() {
    let policy = policy_of("[waves.success]\nmin_percent = \"80%\"\nbake = \"0s\"");
    assert_eq!(policy.success.min_success_percent, 80);
    assert_eq!(policy.success.bake_ms, 0);
    assert_eq!(policy.success.advance, Advance::Auto);
}

#[test]
fn retries_fill_in_defaults_for_missing_keys() {
    let policy = policy_of("[waves.retries]\nmax_attempts = 4");
    assert_eq!(
        policy.retries,
        Retries {
            max_attempts: 4,
            ..Retries::default()
        }
    );
}

#[test]
fn plan_policy_is_parsed() {
    let source = "version = 1\nname = \"p\"\n[policy]\nerror_budget = \"10%\"\nmax_in_flight = 200\n[[waves]]\nname = \"w\"\n[waves.select]\nall = true\n";
    let plan = parse(source, &fleet()).unwrap();
    assert_eq!(
        plan.policy,
        PlanPolicy {
            error_budget: Some(Budget::Percent(10)),
            max_in_flight: Some(200),
        }
    );
}

// ---------------------------------------------------------------------------
// Wave policy: every rule and its message.

#[test]
fn batch_problems_are_located() {
    let cases = [
        (
            "batch = 0",
            at(5, 9, "wave w: batch must be at least 1, got 0"),
        ),
        (
            "batch = -3",
            at(5, 9, "wave w: batch must be at least 1, got -3"),
        ),
        (
            "batch = \"0%\"",
            at(5, 9, "wave w: batch must be 1% to 100%, got 0%"),
        ),
        (
            "batch = \"150%\"",
            at(5, 9, "wave w: batch must be 1% to 100%, got 150%"),
        ),
        (
            "batch = \"2.5%\"",
            at(
                5,
                9,
                "wave w: batch: \"2.5%\" is not a whole percentage like \"25%\"",
            ),
        ),
        (
            "batch = \"10\"",
            at(
                5,
                9,
                "wave w: batch: \"10\" is not a batch size; write 10 without quotes for a number of machines, or \"10%\" for a percentage",
            ),
        ),
        (
            "batch = \"many\"",
            at(
                5,
                9,
                "wave w: batch: \"many\" is not a batch size; write a number of machines like 10 or a percentage like \"25%\"",
            ),
        ),
        (
            "batch = 1.5",
            at(
                5,
                9,
                "wave w: batch must be a number of machines like 10 or a percentage like \"25%\", got the number 1.5",
            ),
        ),
        (
            "batch = []",
            at(
                5,
                9,
                "wave w: batch is an empty list: give at least one batch size",
            ),
        ),
        (
            "batch = 4294967296",
            at(
                5,
                9,
                "wave w: batch must be at most 4294967295, got 4294967296",
            ),
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(only_problem(&wave(extra)), expected, "{extra}");
    }
}

#[test]
fn every_bad_ramp_entry_is_reported_at_its_own_column() {
    let found = problems_in(&wave("batch = [1, 0, \"x%\", true]"), &fleet());
    assert_eq!(
        found,
        vec![
            at(5, 13, "wave w: batch[1] must be at least 1, got 0"),
            at(
                5,
                16,
                "wave w: batch[2]: \"x%\" is not a whole percentage like \"25%\""
            ),
            at(
                5,
                22,
                "wave w: batch[3] must be a number of machines like 10 or a percentage like \"25%\", got true"
            ),
        ]
    );
}

#[test]
fn budget_and_cap_problems_are_located() {
    let cases = [
        (
            "error_budget = -1",
            at(5, 16, "wave w: error_budget must be at least 0, got -1"),
        ),
        (
            "error_budget = \"101%\"",
            at(5, 16, "wave w: error_budget must be 0% to 100%, got 101%"),
        ),
        (
            "error_budget = \"lots\"",
            at(
                5,
                16,
                "wave w: error_budget: the string \"lots\" is not a percentage like \"95%\"",
            ),
        ),
        (
            "error_budget = false",
            at(
                5,
                16,
                "wave w: error_budget must be a number of failures like 2 or a percentage like \"5%\", got false",
            ),
        ),
        (
            "max_in_flight = 0",
            at(5, 17, "wave w: max_in_flight must be at least 1, got 0"),
        ),
        (
            "max_in_flight = \"5\"",
            at(
                5,
                17,
                "wave w: max_in_flight must be a whole number, got the string \"5\"",
            ),
        ),
        (
            "max_in_flight_per_site = 0",
            at(
                5,
                26,
                "wave w: max_in_flight_per_site must be at least 1, got 0",
            ),
        ),
        (
            "max_in_flight_per_storage_node = [2]",
            at(
                5,
                34,
                "wave w: max_in_flight_per_storage_node must be a whole number, got an array",
            ),
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(only_problem(&wave(extra)), expected, "{extra}");
    }
}

#[test]
fn duration_problems_are_located() {
    let cases = [
        (
            "estimated_duration = 45",
            at(
                5,
                22,
                "wave w: estimated_duration needs a unit: write \"45s\", \"45m\" or \"45h\"",
            ),
        ),
        (
            "estimated_duration = \"0s\"",
            at(
                5,
                22,
                "wave w: estimated_duration must be longer than zero, got \"0s\"",
            ),
        ),
        (
            "estimated_duration = \"400d\"",
            at(
                5,
                22,
                "wave w: estimated_duration: \"400d\" is longer than 366 days",
            ),
        ),
        (
            "estimated_duration = 1.5",
            at(
                5,
                22,
                "wave w: estimated_duration must be a duration like \"45m\" or \"2h 30m\", got the number 1.5",
            ),
        ),
        (
            "[waves.deadlines]\ncapturing = \"0m\"",
            at(
                6,
                13,
                "wave w: deadlines.capturing must be longer than zero, got \"0m\"",
            ),
        ),
        (
            "[waves.success]\nbake = 10",
            at(
                6,
                8,
                "wave w: success.bake needs a unit: write \"10s\", \"10m\" or \"10h\"",
            ),
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(only_problem(&wave(extra)), expected, "{extra}");
    }
    let (line, column, message) = only_problem(&wave("estimated_duration = \"45 parsecs\""));
    assert_eq!((line, column), (5, 22));
    assert!(
        message.starts_with("wave w: estimated_duration: \"45 parsecs\" is not a duration ("),
        "{message}"
    );
    assert!(
        message.ends_with("write e.g. \"45m\", \"2h 30m\" or \"1d\""),
        "{message}"
    );
}

#[test]
fn success_problems_are_located() {
    let source = wave("[waves.success]\nmin_percent = 101\nadvance = \"sometimes\"");
    assert_eq!(
        problems_in(&source, &fleet()),
        vec![
            at(
                6,
                15,
                "wave w: success.min_percent must be 0% to 100%, got 101%"
            ),
            at(
                7,
                11,
                "wave w: success.advance must be \"auto\" or \"manual\", got \"sometimes\""
            ),
        ]
    );
    assert_eq!(
        only_problem(&wave("[waves.success]\nadvance = 1")),
        at(
            6,
            11,
            "wave w: success.advance must be a string, got the integer 1"
        )
    );
}

#[test]
fn retry_problems_are_located() {
    let cases = [
        (
            "[waves.retries]\nmax_attempts = 0",
            at(
                6,
                16,
                "wave w: retries.max_attempts must be at least 1, got 0",
            ),
        ),
        (
            "[waves.retries]\nmax_attempts = 101",
            at(
                6,
                16,
                "wave w: retries.max_attempts must be at most 100, got 101",
            ),
        ),
        (
            "[waves.retries]\nbackoff = \"1h\"\nmax_backoff = \"10m\"",
            at(
                6,
                11,
                "wave w: retries.backoff (1h) is longer than retries.max_backoff (10m)",
            ),
        ),
        (
            // Against the default max_backoff of 15 minutes.
            "[waves.retries]\nbackoff = \"20m\"",
            at(
                6,
                11,
                "wave w: retries.backoff (20m) is longer than retries.max_backoff (15m)",
            ),
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(only_problem(&wave(extra)), expected, "{extra}");
    }
}

#[test]
fn unknown_keys_in_policy_tables_are_errors() {
    for (extra, key) in [
        ("[waves.success]\nmin_pct = 3", "min_pct"),
        ("[waves.deadlines]\nreimaging = \"1h\"", "reimaging"),
        ("[waves.retries]\nattempts = 3", "attempts"),
        ("[[waves.windows]]\nbegin = \"19:00\"", "begin"),
        ("[waves.capture]\nrule = []", "rule"),
        ("batches = 3", "batches"),
    ] {
        let (line, _, message) = only_problem(&wave(extra));
        assert!(message.contains(key), "{extra}: {message}");
        assert!(line >= 5, "{extra}: line {line}");
    }
    let source = "version = 1\nname = \"p\"\n[policy]\nbudget = 3\n";
    let (line, _, message) = problems_in(source, &[]).remove(0);
    assert_eq!(line, 4);
    assert!(message.contains("budget"), "{message}");
}

#[test]
fn plan_policy_problems_are_located() {
    let source = "version = 1\nname = \"p\"\n[policy]\nerror_budget = \"x\"\nmax_in_flight = 0\n[[waves]]\nname = \"w\"\n[waves.select]\nall = true\n";
    assert_eq!(
        problems_in(source, &fleet()),
        vec![
            at(
                4,
                16,
                "policy.error_budget: the string \"x\" is not a percentage like \"95%\""
            ),
            at(5, 17, "policy.max_in_flight must be at least 1, got 0"),
        ]
    );
}

// ---------------------------------------------------------------------------
// Windows.

fn window_policy(body: &str) -> WavePolicy {
    policy_of(&format!("[[waves.windows]]\n{body}"))
}

/// The only problem of a plan with one window holding `body` (from line 6).
fn window_problem(body: &str) -> (u32, u32, String) {
    only_problem(&wave(&format!("[[waves.windows]]\n{body}")))
}

#[test]
fn weekly_days_take_names_ranges_and_lists() {
    let days = |spec: &str| match &window_policy(&format!(
        "days = {spec}\nstart = \"19:00\"\nend = \"06:00\"\ntime_zone = \"UTC\""
    ))
    .windows[0]
        .times
    {
        WindowTimes::Weekly { days, .. } => days.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(days("\"mon-fri\""), vec![0, 1, 2, 3, 4]);
    assert_eq!(days("\"fri-mon\""), vec![0, 4, 5, 6]);
    assert_eq!(days("[\"SAT\", \"sunday\"]"), vec![5, 6]);
    assert_eq!(days("[\"wed\", \"mon-tue\", \"wed\"]"), vec![0, 1, 2]);
    assert_eq!(days("\"Thursday\""), vec![3]);
    // No days: every day.
    let every = window_policy("start = \"00:00\"\nend = \"00:00\"\ntime_zone = \"UTC\"");
    assert_eq!(
        every.windows[0].times,
        WindowTimes::Weekly {
            days: (0..7).collect(),
            start_minute: 0,
            end_minute: 0,
        }
    );
}

#[test]
fn time_zones_are_checked_and_normalised() {
    let policy =
        window_policy("start = \"1:30\"\nend = \"23:59\"\ntime_zone = \"america/new_york\"");
    assert_eq!(policy.windows[0].time_zone, "America/New_York");
    assert_eq!(
        policy.windows[0].times,
        WindowTimes::Weekly {
            days: (0..7).collect(),
            start_minute: 90,
            end_minute: 23 * 60 + 59,
        }
    );
    assert_eq!(
        window_problem("start = \"19:00\"\nend = \"06:00\"\ntime_zone = \"Mars/Olympus_Mons\""),
        at(
            8,
            13,
            "wave w: window 1: time_zone \"Mars/Olympus_Mons\" is not an IANA time zone (like \"Europe/Paris\", \"America/New_York\" or \"UTC\")"
        )
    );
    assert_eq!(
        window_problem("start = \"19:00\"\nend = \"06:00\""),
        at(
            5,
            1,
            "wave w: window 1 has no time_zone: name an IANA zone like \"Europe/Paris\" or \"UTC\""
        )
    );
}

#[test]
fn weekly_window_problems_are_located() {
    let tz = "\ntime_zone = \"UTC\"";
    let cases = [
        (
            format!("days = \"funday\"\nstart = \"19:00\"\nend = \"06:00\"{tz}"),
            at(
                6,
                8,
                "wave w: window 1: \"funday\" is not a day; write mon, tue, wed, thu, fri, sat, sun (or the full name)",
            ),
        ),
        (
            format!("days = [\"mon\", \"mon-xyz\"]\nstart = \"19:00\"\nend = \"06:00\"{tz}"),
            at(
                6,
                16,
                "wave w: window 1: \"xyz\" is not a day; write mon, tue, wed, thu, fri, sat, sun (or the full name)",
            ),
        ),
        (
            format!("days = []\nstart = \"19:00\"\nend = \"06:00\"{tz}"),
            at(
                6,
                8,
                "wave w: window 1: days is an empty list; leave it out for every day",
            ),
        ),
        (
            format!("days = [1]\nstart = \"19:00\"\nend = \"06:00\"{tz}"),
            at(
                6,
                9,
                "wave w: window 1: days must be a string, got the integer 1",
            ),
        ),
        (
            format!("start = \"24:00\"\nend = \"06:00\"{tz}"),
            at(
                6,
                9,
                "wave w: window 1: start: \"24:00\" is not a time of day; write \"HH:MM\" from 00:00 to 23:59",
            ),
        ),
        (
            format!("start = \"19:00\"\nend = \"6h\"{tz}"),
            at(
                7,
                7,
                "wave w: window 1: end: \"6h\" is not a time of day; write \"HH:MM\" from 00:00 to 23:59",
            ),
        ),
        (
            format!("start = \"19:00\"{tz}"),
            at(
                5,
                1,
                "wave w: window 1 has no end: a weekly window needs start and end (\"HH:MM\")",
            ),
        ),
        (
            format!("start = \"19:00\"\nend = \"06:00\"\nfrom = \"2026-12-01T20:00\"{tz}"),
            at(
                5,
                1,
                "wave w: window 1 mixes a weekly window (days, start, end) with a date range (from, to): split it into two windows",
            ),
        ),
        (
            format!("sites = [\"hq\"]{tz}"),
            at(
                5,
                1,
                "wave w: window 1 is empty: give start and end (and optionally days) for a weekly window, or from and to for a date range",
            ),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(window_problem(&body), expected, "{body}");
    }
}

#[test]
fn the_second_window_is_named_in_messages() {
    let source = wave(
        "[[waves.windows]]\nstart = \"19:00\"\nend = \"06:00\"\ntime_zone = \"UTC\"\n[[waves.windows]]\nstart = \"7\"\nend = \"08:00\"\ntime_zone = \"UTC\"",
    );
    assert_eq!(
        only_problem(&source),
        at(
            10,
            9,
            "wave w: window 2: start: \"7\" is not a time of day; write \"HH:MM\" from 00:00 to 23:59"
        )
    );
}

#[test]
fn date_ranges_convert_local_times_in_their_zone() {
    let policy = window_policy(
        "from = \"2026-07-01T20:00\"\nto = 2026-07-02T06:00:00\ntime_zone = \"Europe/Paris\"",
    );
    // Paris is UTC+2 in summer: 2026-07-01T18:00Z.
    assert_eq!(
        policy.windows[0].times,
        WindowTimes::Range {
            from_ms: 1_782_928_800_000,
            to_ms: 1_782_928_800_000 + 10 * 3_600_000,
        }
    );
}

#[test]
fn date_range_problems_are_located() {
    let tz = "\ntime_zone = \"Europe/Paris\"";
    let cases = [
        (
            format!("from = \"2026-12-02T06:00\"\nto = \"2026-12-01T20:00\"{tz}"),
            at(7, 6, "wave w: window 1: to must be later than from"),
        ),
        (
            format!("from = \"2026-12-01T20:00\"\nto = \"2026-12-01T20:00\"{tz}"),
            at(7, 6, "wave w: window 1: to must be later than from"),
        ),
        (
            format!("from = \"2026-12-01T20:00Z\"\nto = \"2026-12-02T06:00\"{tz}"),
            at(
                6,
                8,
                "wave w: window 1: from: \"2026-12-01T20:00Z\" has a time zone or offset; write the local date-time (\"2026-12-01T20:00\") and set time_zone",
            ),
        ),
        (
            format!("from = 2026-12-01T20:00:00+01:00\nto = \"2026-12-02T06:00\"{tz}"),
            at(
                6,
                8,
                "wave w: window 1: from: \"2026-12-01T20:00:00+01:00\" has a time zone or offset; write the local date-time (\"2026-12-01T20:00\") and set time_zone",
            ),
        ),
        (
            format!("from = \"2026-12-01T20:00\"\nto = 7{tz}"),
            at(
                7,
                6,
                "wave w: window 1: to must be a local date-time like \"2026-12-01T20:00\", got the integer 7",
            ),
        ),
        (
            format!("from = \"2026-12-01T20:00\"{tz}"),
            at(
                5,
                1,
                "wave w: window 1 has no to: a date range needs from and to",
            ),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(window_problem(&body), expected, "{body}");
    }
    let (line, column, message) = window_problem(&format!(
        "from = \"2026-13-01T20:00\"\nto = \"2026-12-02T06:00\"{tz}"
    ));
    assert_eq!((line, column), (6, 8));
    assert!(
        message.starts_with(
            "wave w: window 1: from: \"2026-13-01T20:00\" is not a date-time like \"2026-12-01T20:00\" ("
        ),
        "{message}"
    );
}

#[test]
fn estimated_duration_must_fit_the_longest_window() {
    let source = wave(
        "estimated_duration = \"8h\"\n[[waves.windows]]\nstart = \"22:00\"\nend = \"05:00\"\ntime_zone = \"UTC\"",
    );
    assert_eq!(
        only_problem(&source),
        at(
            5,
            22,
            "wave w: estimated_duration 8h is longer than the longest window (7h): no job would ever start"
        )
    );
    let fits = wave(
        "estimated_duration = \"7h\"\n[[waves.windows]]\nstart = \"22:00\"\nend = \"05:00\"\ntime_zone = \"UTC\"",
    );
    assert!(parse(&fits, &fleet()).is_ok());
}

#[test]
fn every_selected_machine_needs_a_window_that_applies_to_it() {
    let mut lab = capable("c", "LAB-1");
    lab.inventory.site = "lab".into();
    let machines = [capable("a", "PC-1"), lab];
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n[waves.select]\nall = true\n[[waves.windows]]\nstart = \"19:00\"\nend = \"06:00\"\ntime_zone = \"UTC\"\nsites = [\"hq\"]\n";
    assert_eq!(
        problems_in(source, &machines),
        vec![at(
            7,
            1,
            "wave w: machine LAB-1 (site \"lab\") is outside every window's sites and labels: it would never start"
        )]
    );
    let covered = source.replace("sites = [\"hq\"]", "sites = [\"hq\", \"lab\"]");
    assert!(parse(&covered, &machines).is_ok());
}

// ---------------------------------------------------------------------------
// Scenario auto.

fn no_links(id: &str, host: &str) -> Machine {
    let mut machine = capable(id, host);
    machine.inventory.supports_hard_links = false;
    machine
}

fn full(id: &str, host: &str) -> Machine {
    let mut machine = capable(id, host);
    machine.inventory.free_bytes = 10 * 1024 * 1024;
    machine
}

fn auto_plan(select: &str, pairs: &str) -> String {
    format!(
        "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\nscenario = \"auto\"\npairs = [{pairs}]\n[waves.select]\n{select}\n"
    )
}

#[test]
fn refresh_needs_hard_links_and_a_little_room() {
    let mut machine = capable("a", "PC-1");
    machine.inventory.profiles = vec![crate::model::Profile {
        name: "alice".into(),
        bytes: 100 * GIB,
        files: 1,
        last_used_unix: 0,
    }];
    assert_eq!(
        refresh_store_bytes(&machine.inventory),
        GIB + REFRESH_STORE_FIXED_BYTES
    );
    machine.inventory.free_bytes = GIB + REFRESH_STORE_FIXED_BYTES;
    assert_eq!(can_refresh(&machine), Ok(()));
    machine.inventory.free_bytes -= 1;
    assert_eq!(
        can_refresh(&machine),
        Err("not enough room: 1.1 GiB free, the hard-link store needs 1.1 GiB".into())
    );
    machine.inventory.supports_hard_links = false;
    machine.inventory.free_bytes = 0;
    assert_eq!(
        can_refresh(&machine),
        Err("its system volume does not support hard links; not enough room: 0 bytes free, the hard-link store needs 1.1 GiB".into())
    );
}

#[test]
fn an_auto_wave_of_refreshable_machines_is_a_refresh_wave() {
    let source = auto_plan("hostnames = [\"PC-1\", \"PC-2\"]", "");
    let parsed = parse_with_attachments(&source, &fleet(), &BTreeMap::new()).unwrap();
    let wave = &parsed.plan.waves[0];
    assert_eq!(parsed.waves[0].scenario, PlannedScenario::Auto);
    assert_eq!(wave.scenario, Scenario::Refresh);
    assert!(wave.pairs.is_empty());
    for machine in fleet() {
        assert_eq!(resolve_scenario(wave, &machine), Ok(Scenario::Refresh));
    }
}

#[test]
fn auto_reports_machines_that_can_be_neither_refreshed_nor_replaced() {
    let machines = [
        capable("a", "PC-1"),
        no_links("b", "PC-2"),
        full("c", "PC-3"),
    ];
    let source = auto_plan("hostnames = [\"PC-1\", \"PC-2\"]\nids = [\"c\"]", "");
    assert_eq!(
        problems_in(&source, &machines),
        vec![
            at(
                8,
                22,
                "wave w: machine PC-2 cannot be refreshed (its system volume does not support hard links) and has no destination pair"
            ),
            at(
                9,
                8,
                "wave w: machine PC-3 cannot be refreshed (not enough room: 10.0 MiB free, the hard-link store needs 64.0 MiB) and has no destination pair"
            ),
        ]
    );
}

#[test]
fn auto_locates_machines_selected_by_site_or_label_at_the_selector() {
    let machines = [capable("a", "PC-1"), no_links("b", "PC-2")];
    let source = auto_plan("sites = [\"hq\"]", "");
    assert_eq!(
        problems_in(&source, &machines),
        vec![at(
            7,
            1,
            "wave w: machine PC-2 cannot be refreshed (its system volume does not support hard links) and has no destination pair"
        )]
    );
}

#[test]
fn auto_replaces_paired_sources_and_refreshes_the_rest() {
    let machines = [
        capable("a", "PC-1"),
        no_links("b", "PC-2"),
        capable("c", "PC-3"),
    ];
    let source = auto_plan(
        "sites = [\"hq\"]",
        "{ source = \"pc-2\", destination = \"W7-2\" }, { source = \"PC-3\", destination = \"W7-3\" }",
    );
    let parsed = parse_with_attachments(&source, &machines, &BTreeMap::new()).unwrap();
    let wave = &parsed.plan.waves[0];
    assert_eq!(parsed.waves[0].scenario, PlannedScenario::Auto);
    assert_eq!(PlannedScenario::of(wave), PlannedScenario::Auto);
    assert_eq!(wave.pairs.len(), 2);
    assert!(machines.iter().all(|m| wave.select.matches(m)));
    assert_eq!(resolve_scenario(wave, &machines[0]), Ok(Scenario::Refresh));
    assert_eq!(resolve_scenario(wave, &machines[1]), Ok(Scenario::Replace));
    assert_eq!(resolve_scenario(wave, &machines[2]), Ok(Scenario::Replace));
    // A machine that lost its hard links since validation is refused.
    assert_eq!(
        resolve_scenario(wave, &no_links("d", "PC-4")),
        Err("wave w: machine PC-4 cannot be refreshed (its system volume does not support hard links) and has no destination pair".into())
    );
}

#[test]
fn auto_pair_sources_outside_the_selector_are_added_to_it() {
    let machines = [capable("a", "PC-1"), no_links("b", "XP-9")];
    let source = auto_plan(
        "hostnames = [\"PC-1\"]",
        "{ source = \"XP-9\", destination = \"W7-9\" }",
    );
    let plan = parse(&source, &machines).unwrap();
    assert!(plan.waves[0].select.matches(&machines[1]));
}

#[test]
fn auto_with_only_pairs_is_a_replace_wave() {
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\nscenario = \"auto\"\npairs = [{ source = \"PC-1\", destination = \"W7-1\" }]\n";
    let parsed = parse_with_attachments(source, &fleet(), &BTreeMap::new()).unwrap();
    assert_eq!(parsed.plan.waves[0].scenario, Scenario::Replace);
    assert_eq!(parsed.waves[0].scenario, PlannedScenario::Auto);
}

#[test]
fn auto_refuses_to_refresh_a_pair_destination() {
    let machines = [capable("a", "PC-1"), capable("b", "W7-1")];
    let source = auto_plan(
        "all = true",
        "{ source = \"PC-1\", destination = \"W7-1\" }",
    );
    assert_eq!(
        problems_in(&source, &machines),
        vec![at(
            7,
            1,
            "wave w: machine W7-1 is the destination of a pair; it cannot also be refreshed in this wave"
        )]
    );
}

#[test]
fn auto_needs_a_selector_or_pairs() {
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\nscenario = \"auto\"\n";
    assert_eq!(
        problems_in(source, &fleet()),
        vec![at(
            3,
            1,
            "wave w (scenario \"auto\") selects nothing: add [waves.select], pairs or both"
        )]
    );
}

#[test]
fn resolve_scenario_for_explicit_waves() {
    let plan = parse(GOOD, &[machine("a", "PC-1"), machine("b", "PC-2")]).unwrap();
    // Explicit refresh waves are the operator's decision: no inventory check.
    assert_eq!(
        resolve_scenario(&plan.waves[0], &machine("a", "PC-1")),
        Ok(Scenario::Refresh)
    );
    let machines = [machine("a", "XP-1"), machine("b", "XP-2")];
    let plan = parse(REPLACE, &machines).unwrap();
    assert_eq!(
        resolve_scenario(&plan.waves[0], &machines[0]),
        Ok(Scenario::Replace)
    );
    assert_eq!(
        resolve_scenario(&plan.waves[0], &machine("c", "XP-3")),
        Err("machine XP-3 is not the source of any pair of wave lab".into())
    );
}

#[test]
fn scenario_problems_are_located() {
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\nscenario = \"replace\"\npairs = [{ source = \"PC-1\", destination = \"W7-1\" }]\n[waves.select]\nall = true\n";
    assert_eq!(
        problems_in(source, &fleet()),
        vec![at(
            7,
            1,
            "wave w: a replace wave selects its machines with pairs, not [waves.select] (scenario = \"auto\" mixes both)"
        )]
    );
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\nscenario = \"refresh\"\npairs = [{ source = \"PC-1\", destination = \"W7-1\" }]\n[waves.select]\nall = true\n";
    assert_eq!(
        problems_in(source, &fleet()),
        vec![at(
            3,
            1,
            "wave w: pairs are for replace waves; set scenario = \"replace\" or \"auto\", or remove them"
        )]
    );
    assert_eq!(
        only_problem(&wave("scenario = \"teleport\"")),
        at(
            5,
            12,
            "unknown scenario \"teleport\"; expected \"refresh\", \"replace\" or \"auto\""
        )
    );
}

// ---------------------------------------------------------------------------
// Capture rule files.

fn rules_xml(pattern: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<migration urlid=\"x\">\n<component type=\"Documents\" context=\"User\">\n<role role=\"Data\">\n<rules>\n<include><objectSet><pattern type=\"File\">{pattern}</pattern></objectSet></include>\n</rules>\n</role>\n</component>\n</migration>\n"
    )
}

fn with_rules(rules: &str) -> String {
    wave(&format!(
        "[waves.capture]\nuser_exclude = [\"Administrator\"]\nrules = {rules}"
    ))
}

fn attached(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(name, xml)| (name.to_string(), xml.to_string()))
        .collect()
}

fn rules_problems(source: &str, files: &BTreeMap<String, String>) -> Vec<(u32, u32, String)> {
    match parse_with_attachments(source, &fleet(), files) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| (p.line, p.column, p.message))
            .collect(),
    }
}

#[test]
fn referenced_rule_files_lists_each_file_once_in_order() {
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"a\"\n[waves.capture]\nrules = [\"rules/b.xml\", \"@builtin\", \"rules/a.xml\"]\n[[waves]]\nname = \"b\"\n[waves.capture]\nrules = [\"rules/a.xml\", \"/etc/c.xml\", 3, \"rules/c.xml\"]\n";
    assert_eq!(
        referenced_rule_files(source),
        vec!["rules/b.xml", "rules/a.xml", "rules/c.xml"]
    );
    assert!(referenced_rule_files("this is not = = toml").is_empty());
    assert!(referenced_rule_files("waves = 3").is_empty());
    assert!(referenced_rule_files(&wave("")).is_empty());
}

#[test]
fn attached_rule_files_are_validated_and_kept() {
    let source = with_rules("[\"rules/custom.xml\"]");
    let xml = rules_xml("%CSIDL_PERSONAL%\\* [*]");
    let parsed =
        parse_with_attachments(&source, &fleet(), &attached(&[("rules/custom.xml", &xml)]))
            .unwrap();
    assert_eq!(
        parsed.waves[0].rules,
        vec![RuleFile {
            name: "rules/custom.xml".into(),
            xml: xml.clone(),
        }]
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(
        parsed.plan.waves[0].capture.user_exclude,
        vec!["Administrator".to_string()]
    );
}

#[test]
fn the_builtin_entry_adds_the_builtin_rules() {
    let source = with_rules("[\"@builtin\"]");
    let parsed = parse_with_attachments(&source, &fleet(), &BTreeMap::new()).unwrap();
    assert_eq!(parsed.waves[0].rules.len(), 1);
    assert_eq!(parsed.waves[0].rules[0].name, "fleetmig-default.xml");
    assert_eq!(
        parsed.waves[0].rules[0].xml,
        fleetmig_state::rules::BUILTIN_XML
    );
}

#[test]
fn a_rule_file_that_is_not_attached_is_located() {
    let source = with_rules("[\"rules/custom.xml\"]");
    assert_eq!(
        rules_problems(&source, &BTreeMap::new()),
        vec![at(
            7,
            10,
            "wave w: rule file rules/custom.xml is not attached (the CLI attaches the files a plan names, relative to the plan file)"
        )]
    );
    // `parse` attaches nothing.
    assert_eq!(parse(&source, &fleet()).unwrap_err().len(), 1);
}

#[test]
fn malformed_rule_files_report_their_own_line_and_column_at_the_entry() {
    let source = with_rules("[\"@builtin\", \"rules/bad.xml\"]");
    let found = rules_problems(
        &source,
        &attached(&[(
            "rules/bad.xml",
            "<migration>\n  <component>\n</migration>\n",
        )]),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, column, message) = &found[0];
    assert_eq!((*line, *column), (7, 22));
    assert!(
        message.starts_with("wave w: rules/bad.xml:3:1: "),
        "{message}"
    );
    let found = rules_problems(
        &source,
        &attached(&[("rules/bad.xml", "<?xml version=\"1.0\"?>\n<rules/>\n")]),
    );
    assert_eq!(
        found,
        vec![at(
            7,
            22,
            "wave w: rules/bad.xml:2:1: root element is <rules>, expected <migration>"
        )]
    );
}

#[test]
fn rule_file_list_problems_are_located() {
    let xml = rules_xml("%CSIDL_PERSONAL%\\* [*]");
    let files = attached(&[("a.xml", &xml)]);
    let cases = [
        (
            "[]",
            at(
                7,
                9,
                "wave w: capture.rules is an empty list; leave it out for the built-in rules",
            ),
        ),
        (
            "[\"a.xml\", \"a.xml\"]",
            at(7, 19, "wave w: rule file a.xml is listed twice"),
        ),
        (
            "[\"/etc/a.xml\"]",
            at(
                7,
                10,
                "wave w: capture.rules: rule file path /etc/a.xml is absolute; write it relative to the plan file",
            ),
        ),
        (
            "[\"C:\\\\rules\\\\a.xml\"]",
            at(
                7,
                10,
                "wave w: capture.rules: rule file path C:\\rules\\a.xml is absolute; write it relative to the plan file",
            ),
        ),
        (
            "[\" \"]",
            at(7, 10, "wave w: capture.rules: empty rule file path"),
        ),
    ];
    for (rules, expected) in cases {
        assert_eq!(
            rules_problems(&with_rules(rules), &files),
            vec![expected],
            "{rules}"
        );
    }
}

#[test]
fn rule_files_that_include_nothing_are_refused() {
    let empty = "<migration urlid=\"x\"><component type=\"Documents\" context=\"User\"><role role=\"Data\"><rules><exclude><objectSet><pattern type=\"File\">%CSIDL_PERSONAL%\\* [*]</pattern></objectSet></exclude></rules></role></component></migration>";
    let source = with_rules("[\"none.xml\"]");
    assert_eq!(
        rules_problems(&source, &attached(&[("none.xml", empty)])),
        vec![at(
            7,
            10,
            "wave w: the rule files include nothing: nothing would be captured (they replace the built-in rules)"
        )]
    );
    // With the built-in rules beside it, the exclusion is fine.
    let source = with_rules("[\"@builtin\", \"none.xml\"]");
    assert!(rules_problems(&source, &attached(&[("none.xml", empty)])).is_empty());
}

#[test]
fn oversized_rule_files_are_refused() {
    let big = format!(
        "{}<!-- {} -->",
        rules_xml("%CSIDL_PERSONAL%\\* [*]"),
        "x".repeat(MAX_RULE_FILE_BYTES)
    );
    let found = rules_problems(
        &with_rules("[\"big.xml\"]"),
        &attached(&[("big.xml", &big)]),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (7, 10));
    assert!(
        found[0].2.starts_with("wave w: rule file big.xml is "),
        "{found:?}"
    );
}

#[test]
fn rule_warnings_are_returned_with_the_entry_location() {
    let xml = "<migration urlid=\"x\">\n<component type=\"Documents\" context=\"User\">\n<role role=\"Data\">\n<detects/>\n<rules><include><objectSet><pattern type=\"File\">%CSIDL_PERSONAL%\\* [*]</pattern></objectSet></include></rules>\n</role>\n</component>\n</migration>\n";
    let source = with_rules("[\"warn.xml\"]");
    let parsed =
        parse_with_attachments(&source, &fleet(), &attached(&[("warn.xml", xml)])).unwrap();
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    let warning = &parsed.warnings[0];
    assert_eq!((warning.line, warning.column), (7, 10));
    assert!(
        warning
            .message
            .starts_with("wave w: warn.xml:4:1: <detects>"),
        "{warning:?}"
    );
}

// ---------------------------------------------------------------------------
// Examples.

/// Machines the example plans name or select.
fn example_fleet() -> Vec<Machine> {
    let mut machines: Vec<Machine> = [
        "PC-0001", "PC-0002", "PC-0003", "PC-0101", "PC-0102", "FIN-0001",
    ]
    .iter()
    .map(|host| capable(host, host))
    .collect();
    machines[5]
        .inventory
        .labels
        .insert("dept".into(), "finance".into());
    for (host, site) in [("LYON-01", "lyon"), ("LILLE-01", "lille")] {
        let mut machine = capable(host, host);
        machine.inventory.site = site.into();
        machines.push(machine);
    }
    let mut engineer = capable("ENG-0001", "ENG-0001");
    engineer
        .inventory
        .labels
        .insert("dept".into(), "engineering".into());
    let mut old = engineer.clone();
    old.id = "ENG-0007".into();
    old.inventory.hostname = "ENG-0007".into();
    old.inventory.supports_hard_links = false;
    machines.extend([engineer, old]);
    machines
}

#[test]
fn every_example_plan_is_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = vec![examples.join("plan.toml")];
    let mut more: Vec<_> = std::fs::read_dir(examples.join("plans"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    more.sort();
    assert!(more.len() >= 2, "{more:?}");
    files.extend(more);
    let machines = example_fleet();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        let attachments: BTreeMap<String, String> = referenced_rule_files(&source)
            .into_iter()
            .map(|name| {
                let xml = std::fs::read_to_string(dir.join(&name)).unwrap();
                (name, xml)
            })
            .collect();
        let parsed =
            parse_with_attachments(&source, &machines, &attachments).unwrap_or_else(|problems| {
                let shown: Vec<_> = problems
                    .iter()
                    .map(|p| p.display(&file.display().to_string()))
                    .collect();
                panic!("{}", shown.join("\n"))
            });
        assert!(
            parsed.warnings.is_empty(),
            "{}: {:?}",
            file.display(),
            parsed.warnings
        );
    }
}

#[test]
fn the_examples_show_every_scenario_and_policy_section() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let read = |name: &str| std::fs::read_to_string(examples.join(name)).unwrap();
    let all = [
        read("plan.toml"),
        read("plans/ramp-with-windows.toml"),
        read("plans/auto-with-rules.toml"),
    ]
    .concat();
    for needle in [
        "scenario = \"refresh\"",
        "scenario = \"replace\"",
        "scenario = \"auto\"",
        "[policy]",
        "batch = [",
        "error_budget",
        "max_in_flight_per_site",
        "max_in_flight_per_storage_node",
        "estimated_duration",
        "[waves.success]",
        "[waves.deadlines]",
        "[waves.retries]",
        "[[waves.windows]]",
        "from = ",
        "rules = [",
    ] {
        assert!(all.contains(needle), "no example uses {needle}");
    }
}

// ---------------------------------------------------------------------------
// Hostile input.

/// A plan using every section, for mutation.
const EVERYTHING: &str = r#"version = 1
name = "p"
[policy]
error_budget = "10%"
max_in_flight = 200
[[waves]]
name = "w"
scenario = "auto"
max_in_flight = 20
batch = [1, 10, "25%", "100%"]
error_budget = 2
max_in_flight_per_site = 5
max_in_flight_per_storage_node = 10
estimated_duration = "45m"
pairs = [{ source = "PC-2", destination = "W7-2" }]
[waves.select]
hostnames = ["PC-1"]
[waves.success]
min_percent = 95
bake = "10m"
advance = "auto"
[waves.deadlines]
assigned = "30m"
capturing = "2h"
[waves.retries]
max_attempts = 3
backoff = "1m"
max_backoff = "30m"
[waves.capture]
rules = ["@builtin", "rules/x.xml"]
[[waves.windows]]
days = ["mon", "tue-fri"]
start = "19:00"
end = "06:00"
time_zone = "Europe/Paris"
[[waves.windows]]
from = "2026-12-01T20:00"
to = "2026-12-02T06:00"
time_zone = "Europe/Paris"
"#;

#[test]
fn the_mutation_seed_is_valid() {
    let files = attached(&[("rules/x.xml", &rules_xml("%CSIDL_PERSONAL%\\* [*]"))]);
    parse_with_attachments(EVERYTHING, &fleet(), &files).unwrap();
}

/// Every problem is located inside the source.
fn assert_located(source: &str, problems: &[Problem]) {
    let lines = source.split('\n').count() as u32;
    for problem in problems {
        assert!(
            problem.line >= 1 && problem.line <= lines,
            "{problem:?} outside {lines} lines"
        );
        assert!(problem.column >= 1, "{problem:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_text_never_panics(source in ".{0,400}") {
        let _ = referenced_rule_files(&source);
        if let Err(problems) = parse(&source, &fleet()) {
            prop_assert!(!problems.is_empty());
            assert_located(&source, &problems);
        }
    }

    #[test]
    fn mutated_plans_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, ".{0,6}"), 1..6)
    ) {
        let mut source = EVERYTHING.to_string();
        for (index, kind, text) in edits {
            let mut at = index.index(source.len() + 1);
            while !source.is_char_boundary(at) {
                at -= 1;
            }
            let end = (at + 1 + text.len()).min(source.len());
            let mut end = end.max(at);
            while !source.is_char_boundary(end) {
                end -= 1;
            }
            match kind {
                0 => source.insert_str(at, &text),
                1 => source.replace_range(at..end, ""),
                2 => source.replace_range(at..end, &text),
                _ => {
                    let line_end = source[at..].find('\n').map_or(source.len(), |i| at + i);
                    let line_start = source[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line = source[line_start..line_end].to_string();
                    source.insert_str(line_start, &format!("{line}\n"));
                }
            }
        }
        let files = attached(&[("rules/x.xml", &source)]);
        let _ = referenced_rule_files(&source);
        if let Err(problems) = parse_with_attachments(&source, &fleet(), &files) {
            prop_assert!(!problems.is_empty());
            assert_located(&source, &problems);
        }
    }

    #[test]
    fn policy_values_never_panic(
        key in prop::sample::select(vec![
            "batch", "error_budget", "max_in_flight", "max_in_flight_per_site",
            "estimated_duration",
        ]),
        value in prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            ".{0,12}".prop_map(|s| format!("{s:?}")),
            "[0-9]{1,25}%".prop_map(|s| format!("{s:?}")),
            "[0-9]{1,20}[a-z ]{0,8}".prop_map(|s| format!("{s:?}")),
            any::<f64>().prop_map(|x| format!("{x:?}")),
        ],
        zone in ".{0,30}",
        clock in "[0-9:]{0,6}",
        day in "[a-zA-Z-]{0,9}",
        instant in "[0-9T:-]{0,20}",
    ) {
        let source = format!(
            "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n{key} = {value}\n[waves.select]\nall = true\n[[waves.windows]]\ndays = {day:?}\nstart = {clock:?}\nend = \"06:00\"\ntime_zone = {zone:?}\n[[waves.windows]]\nfrom = {instant:?}\nto = \"2026-12-02T06:00\"\ntime_zone = {zone:?}\n"
        );
        if let Err(problems) = parse(&source, &fleet()) {
            assert_located(&source, &problems);
        }
    }
}

#[test]
fn a_broken_window_does_not_make_the_others_look_incomplete() {
    let mut lab = capable("c", "LAB-1");
    lab.inventory.site = "lab".into();
    let machines = [capable("a", "PC-1"), lab];
    let source = "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\n[waves.select]\nall = true\n[[waves.windows]]\nstart = \"19:00\"\nend = \"06:00\"\ntime_zone = \"Nowhere\"\n[[waves.windows]]\nstart = \"19:00\"\nend = \"06:00\"\ntime_zone = \"UTC\"\nsites = [\"hq\"]\n";
    let found = problems_in(source, &machines);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (10, 13));
}

#[test]
fn problems_display_as_file_line_column_message() {
    let problem = Problem {
        message: "wave w: batch must be at least 1, got 0".into(),
        line: 5,
        column: 9,
    };
    assert_eq!(
        problem.display("plan.toml"),
        "plan.toml:5:9: wave w: batch must be at least 1, got 0"
    );
}
