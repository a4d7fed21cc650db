//! What validates restore targets before anything is written:
//! - mode byte `0`: a hard-link store's `manifest.json` (`fleetmig_state::Manifest`, JSON as
//!   `Manifest::load_sealed` reads it, then `validate`): ARCHITECTURE.md invariant 8;
//! - mode byte `1`: a packed manifest's JSON plus a user map, as the worker's packed restore
//!   sees them: `{"manifest": <PackedManifest>, "user_map": {"old": "new"}}`; the manifest is
//!   validated, then rewritten by `fleetmig_worker::packed::map_users`.
//!
//! Invariants beyond "no panic":
//! - an accepted hard-link manifest: source, target and store are plain relative paths (no
//!   `..`/`.`/empty components, NUL, leading `/`), per-user targets under `Users/<user>`,
//!   stores under `data/<user>`, machine-wide stores under `data/_system`, machine-wide
//!   targets outside `Windows/`, `_fleetmig/`, `StateStore/`, stores unique; the USMT
//!   collision names of every target (`name(n).ext`) stay plain and in the same directory;
//! - after `map_users` accepted a map, every target is still a plain relative path the packed
//!   format accepts (no drive letter, no backslash), each mapped user's targets lie below
//!   `Users/<new>/`, and the others are unchanged.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use fleetmig_format::PackedManifest;
use fleetmig_fuzz::{assert_plain, assert_state_invariants, strictly_under};
use fleetmig_state::restore::collision_name;
use fleetmig_worker::packed::map_users;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Deserialize)]
struct PackedRestore {
    manifest: PackedManifest,
    #[serde(default)]
    user_map: BTreeMap<String, String>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, json)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        hard_link(json);
    } else {
        packed(json);
    }
});

fn hard_link(json: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<fleetmig_state::Manifest>(json) else {
        return;
    };
    if manifest.validate().is_err() {
        return;
    }
    assert_state_invariants(&manifest);
    for entry in &manifest.entries {
        let target = Path::new(&entry.target);
        for index in [1, 2, 99] {
            let renamed = collision_name(target, index);
            let renamed_str = renamed.to_str().expect("collision name of UTF-8 is UTF-8");
            assert_plain("collision name", renamed_str, false);
            assert_eq!(
                renamed.parent(),
                target.parent(),
                "collision name {renamed:?} of {target:?} left its directory"
            );
        }
    }
}

fn packed(json: &[u8]) {
    let Ok(input) = serde_json::from_slice::<PackedRestore>(json) else {
        return;
    };
    if input.manifest.validate().is_err() {
        return;
    }
    // Callers only map users the manifest lists (`offline::load::user_map` checks the names
    // against `manifest.users`, which never holds an empty name), so an empty old name (the
    // machine-wide entries' `user`) never reaches `map_users`.
    let user_map: BTreeMap<String, String> = input
        .user_map
        .into_iter()
        .filter(|(old, _)| !old.is_empty())
        .collect();
    let original = input.manifest.clone();
    let Ok(mapped) = map_users(input.manifest, &user_map) else {
        return;
    };
    assert_eq!(mapped.entries.len(), original.entries.len());
    for (before, after) in original.entries.iter().zip(&mapped.entries) {
        assert_plain("mapped target", &after.target, true);
        match user_map.get(&before.user) {
            Some(new) => assert!(
                strictly_under(&after.target, &["Users", new]),
                "{:?} of {:?} mapped to {new:?} became {:?}",
                before.target,
                before.user,
                after.target
            ),
            None => assert_eq!(before.target, after.target),
        }
    }
}
