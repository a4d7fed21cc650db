//! Plan TOML (`fleetmig_controller::plan`): what an operator uploads with `plan apply`.
//!
//! Input: the plan text, optionally followed by a NUL byte and a USMT rule XML that is attached
//! under every rule file name the plan references (without one, `examples/plans/rules/
//! engineering.xml` is attached). NUL cannot occur in TOML, so the split is unambiguous.
//!
//! Invariants beyond "no panic":
//! - `referenced_rule_files` names each file once, never `@builtin`, never an empty, NUL or
//!   absolute (Unix, `\`, drive letter) path;
//! - an accepted plan has valid, unique plan and wave names, one `PlannedWave` per wave,
//!   `max_in_flight >= 1`, keeps its source text, and every rule file it carries is the
//!   built-in file or a referenced one, with XML that parses;
//! - a refused plan has 1..=MAX_PROBLEMS problems, each at a line and column inside the source;
//! - parsing is deterministic, and `parse` agrees with `parse_with_attachments` when the plan
//!   needs no attachment.
#![no_main]

use std::collections::{BTreeMap, HashSet};

use fleetmig_controller::plan::{
    BUILTIN_RULES, MAX_PROBLEMS, Problem, is_valid_name, parse, parse_with_storage,
    referenced_rule_files,
};
use fleetmig_fuzz::{ENGINEERING_XML, machines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, xml) = match text.split_once('\0') {
        Some((source, xml)) => (source, xml),
        None => (text, ENGINEERING_XML),
    };

    let referenced = referenced_rule_files(source);
    let mut seen = HashSet::new();
    for name in &referenced {
        assert!(seen.insert(name.as_str()), "{name:?} referenced twice");
        assert_ne!(name, BUILTIN_RULES);
        assert!(!name.trim().is_empty() && !name.contains('\0'), "{name:?}");
        let bytes = name.as_bytes();
        let absolute = name.starts_with('/')
            || name.starts_with('\\')
            || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':');
        assert!(!absolute, "absolute rule file path {name:?} referenced");
    }
    let attachments: BTreeMap<String, String> = referenced
        .iter()
        .map(|name| (name.clone(), xml.to_owned()))
        .collect();

    let machines = machines();
    let first = parse_with_storage(source, &machines, &attachments, Some(2));
    let second = parse_with_storage(source, &machines, &attachments, Some(2));
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            let mut b = b.clone();
            b.plan.applied_ms = a.plan.applied_ms;
            assert_eq!(*a, b, "parsing is not deterministic");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "problems are not deterministic"),
        _ => panic!("parsing the same plan twice gave different outcomes"),
    }

    match first {
        Ok(parsed) => {
            let plan = &parsed.plan;
            assert!(
                is_valid_name(&plan.name),
                "accepted plan name {:?}",
                plan.name
            );
            assert_eq!(plan.source, source);
            assert!(!plan.waves.is_empty(), "accepted a plan without waves");
            assert_eq!(parsed.waves.len(), plan.waves.len());
            let mut names = HashSet::new();
            for (wave, planned) in plan.waves.iter().zip(&parsed.waves) {
                assert!(
                    is_valid_name(&wave.name),
                    "accepted wave name {:?}",
                    wave.name
                );
                assert!(
                    names.insert(&wave.name),
                    "wave {} accepted twice",
                    wave.name
                );
                assert!(
                    wave.max_in_flight >= 1,
                    "wave {} max_in_flight 0",
                    wave.name
                );
                for rule in &planned.rules {
                    let known = rule.name == fleetmig_state::rules::BUILTIN_NAME
                        || referenced.contains(&rule.name);
                    assert!(
                        known,
                        "wave {} carries unreferenced rules {:?}",
                        wave.name, rule.name
                    );
                    assert!(
                        fleetmig_state::rules::RuleSet::parse(&rule.xml, &rule.name).is_ok(),
                        "wave {} carries rule file {:?} that does not parse",
                        wave.name,
                        rule.name
                    );
                }
            }
            for warning in &parsed.warnings {
                check_location(source, warning);
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            assert!(
                problems.len() <= MAX_PROBLEMS,
                "{} problems",
                problems.len()
            );
            for problem in &problems {
                check_location(source, problem);
                let _ = problem.display("plan.toml");
            }
        }
    }

    if referenced.is_empty() {
        let plain = parse(source, &machines);
        let with = parse_with_storage(source, &machines, &BTreeMap::new(), None);
        match (plain, with) {
            (Ok(mut a), Ok(b)) => {
                a.applied_ms = b.plan.applied_ms;
                assert_eq!(a, b.plan);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("parse and parse_with_attachments disagree"),
        }
    }
});

/// A problem's line and column point into the source (line 0 only for the size limit).
fn check_location(source: &str, problem: &Problem) {
    if problem.line == 0 {
        assert!(
            source.len() > fleetmig_controller::plan::MAX_PLAN_BYTES,
            "{problem:?}"
        );
        return;
    }
    let lines: Vec<&str> = source.split('\n').collect();
    let line = problem.line as usize;
    assert!(
        line <= lines.len(),
        "problem at line {line} of a {}-line source: {problem:?}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        problem.column >= 1 && problem.column as usize <= width + 1,
        "problem at column {} of a {width}-character line: {problem:?}",
        problem.column
    );
}
