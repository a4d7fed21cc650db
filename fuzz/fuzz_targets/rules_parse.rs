//! USMT migration XML (`fleetmig_state::rules::RuleSet::parse`): custom rule files attached to
//! plans and given to the offline `scan` verb.
//!
//! Input: the XML text.
//!
//! Invariants beyond "no panic":
//! - errors are `Error::RulesXml` at line, column >= 1 inside the document; warnings and rule
//!   origins too;
//! - the rules compile into a `layout::Selection` (alone and merged with the built-in rules),
//!   and every target the selection decides for a sample of profile and machine-wide paths
//!   (names a directory walk could really produce) is one a hard-link manifest accepts:
//!   profile files under `Users/<user>/`, machine-wide files never under `Windows/`,
//!   `_fleetmig/`, `StateStore/` or another user's XP profile, no `..`/`.`/empty components,
//!   never absolute. `Manifest::validate` is asked too, so capture can never record a target
//!   that restore would refuse.
#![no_main]

use fleetmig_fuzz::{assert_plain, reserved_top};
use fleetmig_state::layout::{DirDecision, Selection, XP_PROFILES_DIR, is_system_profile};
use fleetmig_state::rules::RuleSet;
use libfuzzer_sys::fuzz_target;

const USER: &str = "alice";

/// Paths relative to an XP profile directory, as the capture walk meets them.
const PROFILE_PATHS: &[&str] = &[
    "NTUSER.DAT",
    "My Documents/report.doc",
    "My Documents/My Pictures/a.jpg",
    "My Documents/My Music/b.mp3",
    "My Documents/Sub/deep/x.txt",
    "Desktop/notes.txt",
    "Favorites/site.url",
    "Application Data/App/settings.ini",
    "Local Settings/Application Data/App/cache.bin",
    "Local Settings/Temp/x.tmp",
    "Local Settings/Temporary Internet Files/index.dat",
    "build-cache/obj/a.o",
    "Start Menu/Programs/app.lnk",
    "weird/D:colon/name",
    "weird/back\\slash/x",
    "weird/.../x",
    "weird/ .. /x",
    "weird/..x/y",
    "Thumbs.db",
];

/// Paths relative to the machine root.
const MACHINE_PATHS: &[&str] = &[
    "CADLib/part.dwg",
    "Data/a.txt",
    "Data/sub/b.txt",
    "Program Files/App/app.ini",
    "Documents and Settings/All Users/Documents/shared.doc",
    "Documents and Settings/All Users/Application Data/App/x.ini",
    "Documents and Settings/All Users/Start Menu/Programs/a.lnk",
    "Documents and Settings/bob/My Documents/secret.doc",
    "Documents and Settings/alice/NTUSER.DAT",
    "WINDOWS/system32/evil.dll",
    "windows/win.ini",
    "_fleetmig/journal",
    "StateStore/x",
    "Users/bob/x",
    "ProgramData/App/x",
    "pagefile.sys",
    "boot.ini",
];

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let rows = xml.split('\n').count() as u32;
    let (set, warnings) = match RuleSet::parse(xml, "fuzz.xml") {
        Ok(parsed) => parsed,
        Err(fleetmig_state::Error::RulesXml { line, column, .. }) => {
            assert!(line >= 1 && column >= 1, "error at {line}:{column}");
            assert!(line <= rows, "error at line {line} of {rows}");
            return;
        }
        Err(other) => panic!("parse error that is not RulesXml: {other}"),
    };
    for warning in &warnings {
        assert!(warning.line >= 1 && warning.column >= 1, "{warning}");
        assert!(warning.line <= rows, "{warning} past line {rows}");
        let _ = warning.to_string();
    }
    for rule in &set.rules {
        assert!(
            rule.origin.line >= 1 && rule.origin.line <= rows,
            "{:?}",
            rule.origin
        );
    }

    check_selection(&Selection::from_rules(set.clone()));
    check_selection(&Selection::from_rules(RuleSet::merge([
        RuleSet::builtin(),
        set,
    ])));
});

fn check_selection(selection: &Selection) {
    for rel in PROFILE_PATHS {
        if let Some(target) = selection.decide_user_file(USER, rel) {
            check_profile_target(rel, &target);
        }
        let dir = rel.rsplit_once('/').map_or("", |(dir, _)| dir);
        if let DirDecision::Walk(target) = selection.decide_user_dir(USER, dir) {
            check_profile_target(dir, &target);
        }
        let _ = selection.map_rel(rel);
    }
    for root in selection.system_roots() {
        if !root.is_empty() {
            assert_plain("system root", &root, false);
        }
    }
    for rel in MACHINE_PATHS {
        if let Some(target) = selection.decide_system_file(rel) {
            check_system_target(rel, &target);
        }
        let dir = rel.rsplit_once('/').map_or("", |(dir, _)| dir);
        if let DirDecision::Walk(target) = selection.decide_system_dir(dir)
            && !target.is_empty()
        {
            check_system_target(dir, &target);
        }
    }
}

fn check_profile_target(rel: &str, target: &str) {
    assert_plain("profile target", target, false);
    let mut parts = target.split('/');
    assert!(
        parts.next() == Some("Users") && parts.next() == Some(USER),
        "{rel:?} of {USER} goes to {target:?}, outside Users/{USER}"
    );
    if !rel.is_empty() {
        let store = fleetmig_state::manifest::store_path(USER, rel);
        validate_entry(USER, rel, target, &store);
    }
}

fn check_system_target(rel: &str, target: &str) {
    assert_plain("machine-wide target", target, false);
    assert!(
        !reserved_top(target),
        "machine-wide {rel:?} goes to reserved {target:?}"
    );
    let mut parts = target.split('/');
    let in_profile = parts
        .next()
        .is_some_and(|top| top.eq_ignore_ascii_case(XP_PROFILES_DIR))
        && parts
            .next()
            .is_some_and(|profile| !is_system_profile(profile));
    assert!(
        !in_profile,
        "machine-wide {rel:?} goes into a user's XP profile: {target:?}"
    );
    if !rel.is_empty() {
        let store = fleetmig_state::manifest::store_path("", rel);
        validate_entry("", rel, target, &store);
    }
}

/// Asks the hard-link manifest's own validation about the entry capture would record.
fn validate_entry(user: &str, rel: &str, target: &str, store: &str) {
    let source = if user.is_empty() {
        rel.to_owned()
    } else {
        format!("Documents and Settings/{user}/{rel}")
    };
    let manifest = fleetmig_state::Manifest {
        format_version: fleetmig_state::manifest::FORMAT_VERSION,
        job_id: "fuzz".to_owned(),
        created_unix_ms: 0,
        source_root: "/fuzz".to_owned(),
        hostname: String::new(),
        users: vec![USER.to_owned()],
        entries: vec![fleetmig_state::Entry {
            kind: fleetmig_state::EntryKind::File,
            user: user.to_owned(),
            source,
            target: target.to_owned(),
            store: store.to_owned(),
            size: 1,
            mtime_ns: 0,
            mode: 0o100644,
            inode: 1,
            link_target: None,
            link_escapes: false,
        }],
    };
    if let Err(reason) = manifest.validate() {
        panic!("capture would record {rel:?} -> {target:?}, which restore refuses: {reason}");
    }
}
