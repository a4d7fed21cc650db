//! Helpers shared by the fuzz targets in `fuzz_targets/` and the seed generator in
//! `examples/gen_corpus.rs`: independent re-statements of the invariants the parsers promise
//! (so a target checks more than "no panic"), the fixed inventory plans are validated against,
//! and a re-implementation of the sealed-manifest layout of `docs/format.md`.
//!
//! Only public APIs of the fleetmig crates are used.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path};

use fleetmig_controller::model::{Inventory, Machine};
use fleetmig_format::{EntryKind, PackedEntry, PackedManifest};

/// The migration key every manifest target seals and opens with.
pub const MIGRATION_KEY: [u8; 32] = [7; 32];

/// The rule file attached to plans when the fuzz input carries none.
pub const ENGINEERING_XML: &str = include_str!("../../examples/plans/rules/engineering.xml");

/// Top-level directories a machine-wide entry must never target (both manifest formats).
pub const RESERVED_TOP: [&str; 3] = ["Windows", "_fleetmig", "StateStore"];

/// Why `path` is not a plain relative '/'-separated path, if it is not.
///
/// Always refused: empty, NUL, a leading '/', empty, `.` and `..` components. With `windows`
/// (the packed format's promise: "cannot leave its root on Linux or on Windows") also
/// backslashes (Windows separators, UNC `\\server\share`) and drive letters (`C:`, `c:x`) in
/// any component.
pub fn path_violation(path: &str, windows: bool) -> Option<String> {
    if path.is_empty() {
        return Some("empty".into());
    }
    if path.contains('\0') {
        return Some("NUL".into());
    }
    if path.starts_with('/') {
        return Some("absolute (leading '/')".into());
    }
    if windows && path.contains('\\') {
        return Some("backslash (Windows separator or UNC)".into());
    }
    for part in path.split('/') {
        if matches!(part, "" | "." | "..") {
            return Some(format!("{part:?} component"));
        }
        let bytes = part.as_bytes();
        if windows && bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Some(format!("drive letter in {part:?}"));
        }
    }
    // A second opinion from std: on Linux a plain relative path has only normal components.
    let std_ok = !Path::new(path).is_absolute()
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if !std_ok {
        return Some("std::path sees a non-normal component".into());
    }
    // And lexically: joined onto a root, it stays strictly below it.
    let mut depth: i64 = 0;
    for part in path.split('/') {
        depth += if part == ".." { -1 } else { 1 };
        if depth <= 0 {
            return Some("leaves the root".into());
        }
    }
    None
}

/// Panics unless `path` is plain (see [`path_violation`]).
#[track_caller]
pub fn assert_plain(what: &str, path: &str, windows: bool) {
    if let Some(reason) = path_violation(path, windows) {
        panic!("accepted {what} {path:?} is not a plain relative path: {reason}");
    }
}

/// Whether the '/'-separated `path` lies strictly below `prefix` (component-wise).
pub fn strictly_under(path: &str, prefix: &[&str]) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() > prefix.len() && parts.iter().zip(prefix).all(|(have, want)| have == want)
}

/// Whether the '/'-separated `path` equals or lies below `prefix`.
pub fn under(path: &str, prefix: &[&str]) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() >= prefix.len() && parts.iter().zip(prefix).all(|(have, want)| have == want)
}

/// Whether the first component of `path` is a reserved top directory (case-insensitive).
pub fn reserved_top(path: &str) -> bool {
    let top = path.split('/').next().unwrap_or("");
    RESERVED_TOP.iter().any(|dir| dir.eq_ignore_ascii_case(top))
}

/// Everything `PackedManifest::validate` promises of a manifest it accepted, checked
/// independently of its implementation. Panics on the first broken promise.
pub fn assert_packed_invariants(manifest: &PackedManifest) {
    assert_eq!(manifest.format_version, fleetmig_format::FORMAT_VERSION);
    for user in &manifest.users {
        assert_plain("users[] name", user, true);
        assert!(!user.contains('/'), "accepted user {user:?} has a '/'");
    }
    let mut targets = HashSet::new();
    for (index, entry) in manifest.entries.iter().enumerate() {
        let system = entry.user.is_empty();
        if !system {
            assert_plain("entry user", &entry.user, true);
            assert!(
                !entry.user.contains('/'),
                "entry {index}: user {:?}",
                entry.user
            );
            assert!(
                strictly_under(&entry.target, &["Users", &entry.user]),
                "entry {index}: accepted target {:?} is not below Users/{}/",
                entry.target,
                entry.user
            );
        } else {
            assert!(
                !reserved_top(&entry.target),
                "entry {index}: accepted machine-wide target {:?} is reserved",
                entry.target
            );
        }
        assert_plain("entry source", &entry.source, true);
        assert_plain("entry target", &entry.target, true);
        assert!(
            targets.insert(entry.target.to_ascii_lowercase()),
            "entry {index}: target {:?} accepted twice",
            entry.target
        );
        match entry.kind {
            EntryKind::File => {
                assert!(
                    entry.content_hash.len() == 64
                        && entry.content_hash.bytes().all(|b| b.is_ascii_hexdigit()),
                    "entry {index}: file with content hash {:?}",
                    entry.content_hash
                );
                assert_eq!(
                    entry.size == 0,
                    entry.chunks.is_empty(),
                    "entry {index}: {} bytes in {} chunks",
                    entry.size,
                    entry.chunks.len()
                );
            }
            EntryKind::Dir | EntryKind::Symlink => {
                assert!(entry.chunks.is_empty() && entry.content_hash.is_empty());
            }
        }
        if entry.kind == EntryKind::Symlink {
            let text = entry
                .link_target
                .as_deref()
                .expect("symlink without a target");
            assert!(
                !text.is_empty() && !text.contains('\0'),
                "symlink text {text:?}"
            );
        }
    }
}

/// Everything `fleetmig_state::Manifest::validate` promises of a hard-link store manifest it
/// accepted (ARCHITECTURE.md invariant 8), checked independently. The hard-link engine only
/// runs on Linux trees, so backslashes and drive letters are not its concern.
pub fn assert_state_invariants(manifest: &fleetmig_state::Manifest) {
    use fleetmig_state::manifest::{DATA_DIR, FORMAT_VERSION, SYSTEM_STORE_DIR};
    assert_eq!(manifest.format_version, FORMAT_VERSION);
    let mut stores = HashSet::new();
    for (index, entry) in manifest.entries.iter().enumerate() {
        let system = entry.user.is_empty();
        assert_plain("source", &entry.source, false);
        assert_plain("target", &entry.target, false);
        assert_plain("store", &entry.store, false);
        if system {
            assert!(
                !reserved_top(&entry.target),
                "entry {index}: machine-wide target {:?} is reserved",
                entry.target
            );
            assert!(
                under(&entry.store, &[DATA_DIR, SYSTEM_STORE_DIR]),
                "entry {index}: machine-wide store {:?}",
                entry.store
            );
        } else {
            assert_plain("user", &entry.user, false);
            assert!(!entry.user.contains('/'));
            assert!(
                under(&entry.target, &["Users", &entry.user]),
                "entry {index}: target {:?} is not under Users/{}",
                entry.target,
                entry.user
            );
            assert!(
                under(&entry.store, &[DATA_DIR, &entry.user]),
                "entry {index}: store {:?} is not under {DATA_DIR}/{}",
                entry.store,
                entry.user
            );
        }
        if entry.kind == fleetmig_state::EntryKind::Symlink {
            let text = entry
                .link_target
                .as_deref()
                .expect("symlink without a target");
            assert!(!text.contains('\0'));
        }
        assert!(
            stores.insert(entry.store.as_str()),
            "store {:?} twice",
            entry.store
        );
    }
}

/// Whether a symlink at profile-relative `rel` with link text `text` resolves outside the
/// profile, by normalising the joined path with `std::path` (a second opinion on the worker's
/// lexical rule).
pub fn symlink_leaves_profile(rel: &str, text: &str) -> bool {
    if Path::new(text).is_absolute() {
        return true;
    }
    let mut depth: Vec<String> = Path::new(rel)
        .parent()
        .map(|parent| {
            parent
                .components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for component in Path::new(text).components() {
        match component {
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            Component::Normal(part) => depth.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// The machines a fuzzed plan is validated against: the hostnames, sites and labels the
/// example plans use, plus one machine that cannot be refreshed.
pub fn machines() -> Vec<Machine> {
    let machine =
        |id: &str, host: &str, site: &str, labels: &[(&str, &str)], links: bool| Machine {
            id: id.to_owned(),
            inventory: Inventory {
                hostname: host.to_owned(),
                os_family: "windows-xp".to_owned(),
                os_version: "5.1.2600".to_owned(),
                volume_id: format!("vol-{id}"),
                free_bytes: if links { 500 << 30 } else { 1 << 20 },
                total_bytes: 1 << 40,
                profiles: Vec::new(),
                hardware_id: format!("hw-{id}"),
                supports_hard_links: links,
                site: site.to_owned(),
                labels: labels
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
                agent_version: "0.1.0".to_owned(),
            },
            enrolled_ms: 1_700_000_000_000,
        };
    vec![
        machine("m01", "PC-0001", "hq", &[("dept", "finance")], true),
        machine("m02", "PC-0002", "hq", &[("dept", "finance")], true),
        machine("m03", "PC-0003", "hq", &[], true),
        machine("m04", "PC-0101", "lab", &[], true),
        machine("m05", "PC-0102", "lab", &[], true),
        machine("m06", "W7-0101", "lab", &[], true),
        machine("m07", "W7-0102", "lab", &[], true),
        machine("m08", "ENG-0001", "hq", &[("dept", "engineering")], true),
        machine("m09", "ENG-0007", "hq", &[("dept", "engineering")], false),
        machine("m10", "W7-ENG-0007", "hq", &[], true),
        machine("m11", "LY-0001", "lyon", &[], true),
        machine("m12", "NA-0001", "nantes", &[], true),
        machine("m13", "LI-0001", "lille", &[("dept", "it")], true),
        machine("m14", "XP-1", "hq", &[], true),
        machine("m15", "W7-1", "hq", &[], true),
    ]
}

/// Seals a zstd-compressed manifest body exactly as `docs/format.md` ("Manifest layout") says:
/// magic `FMMF`, version 1, three zero bytes, a 24-byte nonce, then XChaCha20-Poly1305 of the
/// body under `blake3::derive_key(CONTEXT_MANIFEST_SEAL, migration key)` with the 32-byte
/// header as associated data.
///
/// The format crate keeps its unchecked sealing private, so this is the only way to hand
/// `open_manifest` a body that authenticates but was never validated.
pub fn seal_body(migration_key: &[u8; 32], zstd_body: &[u8], nonce: [u8; 24]) -> Vec<u8> {
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
    let seal_key = blake3::derive_key(fleetmig_format::keys::CONTEXT_MANIFEST_SEAL, migration_key);
    let mut bytes = Vec::with_capacity(32 + zstd_body.len() + 16);
    bytes.extend_from_slice(&fleetmig_format::manifest::MANIFEST_MAGIC);
    bytes.push(fleetmig_format::FORMAT_VERSION);
    bytes.extend_from_slice(&[0, 0, 0]);
    bytes.extend_from_slice(&nonce);
    let mut body = zstd_body.to_vec();
    XChaCha20Poly1305::new(&Key::from(seal_key))
        .encrypt_in_place(&XNonce::from(nonce), &bytes, &mut body)
        .expect("xchacha20poly1305 seals any size");
    bytes.extend_from_slice(&body);
    bytes
}

/// The line format of the `manifest_paths` target: one entry per line,
/// `kind|user|source|target|link`, where kind is `f` (file, 1 chunk), `e` (empty file), `d`
/// (directory) or `l` (symlink with `link` as its text); missing fields are empty. A line
/// `users|a|b` sets the manifest's users. `\0` stands for NUL.
pub fn manifest_from_lines(text: &str) -> PackedManifest {
    let mut manifest = PackedManifest {
        format_version: fleetmig_format::FORMAT_VERSION,
        migration_id: "fuzz".to_owned(),
        created_unix_ms: 1_700_000_000_000,
        hostname: "XP-FUZZ".to_owned(),
        users: Vec::new(),
        entries: Vec::new(),
    };
    for line in text.lines().take(64) {
        let line = line.replace("\\0", "\0");
        let mut fields = line.split('|');
        let kind = fields.next().unwrap_or("");
        if kind == "users" {
            manifest.users = fields.map(str::to_owned).collect();
            continue;
        }
        let mut field = || fields.next().unwrap_or("").to_owned();
        let (user, source, target, link) = (field(), field(), field(), field());
        let hash = blake3::hash(target.as_bytes()).to_hex().to_string();
        let (kind, size, content_hash, chunks, link_target) = match kind {
            "f" => (
                EntryKind::File,
                5,
                hash,
                vec![fleetmig_format::ChunkId([9; 32])],
                None,
            ),
            "e" => (EntryKind::File, 0, hash, Vec::new(), None),
            "d" => (EntryKind::Dir, 0, String::new(), Vec::new(), None),
            "l" => (EntryKind::Symlink, 0, String::new(), Vec::new(), Some(link)),
            _ => continue,
        };
        manifest.entries.push(PackedEntry {
            kind,
            user,
            source,
            target,
            size,
            mtime_ns: 1_100_000_000_000_000_000,
            mode: if kind == EntryKind::Dir {
                0o40755
            } else {
                0o100644
            },
            link_target,
            content_hash,
            chunks,
        });
    }
    manifest
}

/// Whether the packed format accepts `path` as a source path (probed through the public
/// `validate` with a one-entry machine-wide directory manifest).
pub fn packed_accepts_source(path: &str) -> bool {
    let mut manifest = manifest_from_lines("");
    manifest.entries.push(PackedEntry {
        kind: EntryKind::Dir,
        user: String::new(),
        source: path.to_owned(),
        target: "ProgramData/fuzz".to_owned(),
        size: 0,
        mtime_ns: 0,
        mode: 0o40755,
        link_target: None,
        content_hash: String::new(),
        chunks: Vec::new(),
    });
    manifest.validate().is_ok()
}

/// Whether the hard-link manifest accepts `path` as a source path (same probe).
pub fn state_accepts_source(path: &str) -> bool {
    let manifest = fleetmig_state::Manifest {
        format_version: fleetmig_state::manifest::FORMAT_VERSION,
        job_id: "fuzz".to_owned(),
        created_unix_ms: 0,
        source_root: "/fuzz".to_owned(),
        hostname: String::new(),
        users: Vec::new(),
        entries: vec![fleetmig_state::Entry {
            kind: fleetmig_state::EntryKind::Dir,
            user: String::new(),
            source: path.to_owned(),
            target: "ProgramData/fuzz".to_owned(),
            store: "data/_system/fuzz".to_owned(),
            size: 0,
            mtime_ns: 0,
            mode: 0o40755,
            inode: 1,
            link_target: None,
            link_escapes: false,
        }],
    };
    manifest.validate().is_ok()
}
