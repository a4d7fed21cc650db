//! The sealed packed manifest (`fleetmig_format::open_manifest`): what a restoring worker
//! fetches from a storage node, i.e. bytes from another machine.
//!
//! Input: one mode byte, then
//! - `0`: the sealed bytes as fetched (header checks and the AEAD tag);
//! - `1`: the manifest JSON, which the target compresses with zstd and seals itself under the
//!   known migration key (`docs/format.md` layout), so decompression, JSON parsing and entry
//!   validation are reached behind an authentic tag;
//! - `2`: the zstd frame itself (hostile compressed bodies), sealed the same way.
//!
//! Invariants beyond "no panic":
//! - the target's own sealing of a valid manifest opens (layout and key derivation as
//!   documented);
//! - a manifest `open_manifest` accepts keeps every promise of `PackedManifest::validate`
//!   (checked independently: no `..`/`.`/empty components, never absolute, no backslash,
//!   UNC or drive letter, targets under `Users/<user>/`, machine-wide targets outside
//!   `Windows/`, `_fleetmig/`, `StateStore/`, unique targets, consistent chunks);
//! - it seals again (`seal_manifest` accepts it) and re-opens to the same manifest;
//! - any other key fails with `WrongKey`.
#![no_main]

use std::sync::Once;

use fleetmig_format::{Error, MigrationKey, PackedManifest, open_manifest, seal_manifest};
use fleetmig_fuzz::{MIGRATION_KEY, assert_packed_invariants, manifest_from_lines, seal_body};
use libfuzzer_sys::fuzz_target;

static SELF_CHECK: Once = Once::new();

/// The documented layout, re-implemented here, must be what the crate reads.
fn self_check(key: &MigrationKey) {
    SELF_CHECK.call_once(|| {
        let manifest = manifest_from_lines(
            "users|alice\nd|alice|Documents and Settings/alice/My Documents|Users/alice/Documents\n\
             f|alice|Documents and Settings/alice/My Documents/a.doc|Users/alice/Documents/a.doc",
        );
        let json = serde_json::to_vec(&manifest).unwrap();
        let body = zstd::bulk::compress(&json, 3).unwrap();
        let sealed = seal_body(&MIGRATION_KEY, &body, [1; 24]);
        let opened = open_manifest(key, &sealed)
            .expect("a manifest sealed as docs/format.md describes must open");
        assert_eq!(opened, manifest);
    });
}

fuzz_target!(|data: &[u8]| {
    let key = MigrationKey::from_bytes(MIGRATION_KEY);
    self_check(&key);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealed = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let Ok(body) = zstd::bulk::compress(rest, 1) else {
                return;
            };
            seal_body(&MIGRATION_KEY, &body, nonce(rest))
        }
        _ => seal_body(&MIGRATION_KEY, rest, nonce(rest)),
    };
    let opened = open_manifest(&key, &sealed);
    if mode % 3 != 0 {
        let other = MigrationKey::from_bytes([8; 32]);
        assert!(
            matches!(open_manifest(&other, &sealed), Err(Error::WrongKey)),
            "a manifest sealed under another key was not refused as WrongKey"
        );
    }
    let Ok(manifest) = opened else {
        return;
    };
    check_accepted(&key, &manifest);
});

fn check_accepted(key: &MigrationKey, manifest: &PackedManifest) {
    assert_packed_invariants(manifest);
    assert!(
        manifest.validate().is_ok(),
        "validate disagrees with open_manifest"
    );
    let again = seal_manifest(key, manifest).expect("an opened manifest must seal again");
    let reopened = open_manifest(key, &again).expect("a re-sealed manifest must open");
    assert_eq!(
        &reopened, manifest,
        "seal/open round trip changed the manifest"
    );
    let _ = manifest.chunk_ids();
}

/// A nonce that depends on the input, like a random one would not repeat.
fn nonce(bytes: &[u8]) -> [u8; 24] {
    let mut nonce = [0; 24];
    nonce.copy_from_slice(&blake3::hash(bytes).as_bytes()[..24]);
    nonce
}
