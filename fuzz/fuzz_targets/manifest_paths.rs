//! Path validation of packed manifests (`PackedManifest::validate`), structure-aware: the
//! input describes entries line by line so the fuzzer spends its time on paths, not on JSON
//! or AEAD framing (see `fleetmig_fuzz::manifest_from_lines` for the format:
//! `kind|user|source|target|link`, kind `f`/`e`/`d`/`l`, a `users|...` line, `\0` for NUL).
//!
//! Invariants beyond "no panic":
//! - an accepted manifest keeps every promise of `validate` (independent re-statement: no
//!   `..`, `.` or empty component, never absolute, no backslash/UNC, no drive letter in any
//!   component, per-user targets strictly below `Users/<user>/`, machine-wide targets outside
//!   `Windows/`, `_fleetmig/`, `StateStore/`, targets unique ignoring ASCII case), and seals
//!   and re-opens unchanged;
//! - `seal_manifest` refuses exactly what `validate` refuses;
//! - for every path in the input, the worker's `packed::select::unrepresentable` (which says
//!   it applies "the same rules as `PackedManifest::validate`") agrees with the format crate,
//!   and the hard-link manifest accepts whatever the packed format accepts;
//! - for accepted symlinks, the worker's `symlink_escapes` agrees with a `std::path`
//!   normalisation of the link.
#![no_main]

use fleetmig_format::{EntryKind, MigrationKey, open_manifest, seal_manifest};
use fleetmig_fuzz::{
    MIGRATION_KEY, assert_packed_invariants, manifest_from_lines, packed_accepts_source,
    path_violation, state_accepts_source, symlink_leaves_profile,
};
use fleetmig_worker::packed::restore::symlink_escapes;
use fleetmig_worker::packed::select::unrepresentable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let manifest = manifest_from_lines(text);
    let key = MigrationKey::from_bytes(MIGRATION_KEY);

    // Differential checks on every path the input mentions.
    for entry in &manifest.entries {
        for path in [&entry.user, &entry.source, &entry.target] {
            let packed = packed_accepts_source(path);
            let worker = unrepresentable(path).is_none();
            assert_eq!(
                packed, worker,
                "{path:?}: the packed format accepts it: {packed}, the worker's \
                 unrepresentable() accepts it: {worker}"
            );
            assert_eq!(
                packed,
                path_violation(path, true).is_none(),
                "{path:?}: the packed format accepts it: {packed}, the documented rules: {:?}",
                path_violation(path, true)
            );
            if packed {
                assert!(
                    state_accepts_source(path),
                    "{path:?}: accepted by the packed format but not by the hard-link manifest"
                );
            }
        }
    }

    let valid = manifest.validate();
    let sealed = seal_manifest(&key, &manifest);
    assert_eq!(
        valid.is_ok(),
        sealed.is_ok(),
        "validate and seal_manifest disagree: {valid:?}"
    );
    let Ok(sealed) = sealed else {
        return;
    };
    assert_packed_invariants(&manifest);
    let opened = open_manifest(&key, &sealed).expect("a sealed valid manifest opens");
    assert_eq!(opened, manifest);

    for entry in manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
    {
        let text = entry.link_target.as_deref().unwrap_or_default();
        let rel = if entry.user.is_empty() {
            entry.target.as_str()
        } else {
            entry.target.splitn(3, '/').nth(2).unwrap_or("")
        };
        assert_eq!(
            symlink_escapes(rel, text),
            symlink_leaves_profile(rel, text),
            "symlink at {rel:?} -> {text:?}: the worker and std::path disagree on escaping"
        );
    }
});
