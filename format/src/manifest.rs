//! The packed manifest: every captured entry and the chunks of every file, sealed under the
//! migration key.
//!
//! Sealed layout (format version 1, all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `FMMF` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | flags, zero (the body is always a zstd frame) |
//! | 6 | 2 | reserved, zero |
//! | 8 | 24 | random XChaCha20 nonce |
//! | 32 | n | ciphertext of zstd(JSON of [`PackedManifest`]) |
//! | 32 + n | 16 | Poly1305 tag |
//!
//! The AEAD's associated data is the 32-byte header. Opening always validates every entry,
//! because a manifest may come from an untrusted place.

use std::collections::HashSet;
use std::io::Read;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::FORMAT_VERSION;
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::keys::MigrationKey;

/// Magic bytes opening every sealed manifest.
pub const MANIFEST_MAGIC: [u8; 4] = *b"FMMF";
/// Size of the sealed-manifest header (including the nonce).
pub const MANIFEST_HEADER_LEN: usize = 32;
/// zstd level used for manifests (small, written once).
pub const MANIFEST_ZSTD_LEVEL: i32 = 3;
/// Largest manifest JSON accepted when opening (guards memory against a decompression bomb).
pub const MAX_MANIFEST_JSON_BYTES: u64 = 1 << 30;
/// Directory of Windows 7 profiles, relative to the machine root.
const PROFILES_DIR: &str = "Users";
/// Top-level directories a machine-wide entry must never target.
const FORBIDDEN_SYSTEM_TARGETS: [&str; 3] = ["Windows", "_fleetmig", "StateStore"];

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file, stored as chunks.
    File,
    /// A directory, recreated on restore.
    Dir,
    /// A symbolic link, recorded and recreated, never followed.
    Symlink,
}

/// One captured file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedEntry {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// The profile (user name) it belongs to; empty for machine-wide entries.
    pub user: String,
    /// Source path relative to the XP machine root, '/'-separated.
    pub source: String,
    /// Windows 7 target path relative to the machine root (`Users/alice/Documents/a.doc`).
    pub target: String,
    /// Size in bytes (files), 0 otherwise.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The full `st_mode` (type and permission bits).
    pub mode: u32,
    /// For symlinks, the link text as found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// For files, the hex plain BLAKE3 of the whole content; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_hash: String,
    /// For files, the chunk ids in order (none for an empty file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
}

/// Everything a capture packed, and where it goes on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedManifest {
    /// Always [`FORMAT_VERSION`] for manifests written by this crate.
    pub format_version: u8,
    /// The migration (job) this capture belongs to.
    pub migration_id: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// The machine's hostname at capture time.
    pub hostname: String,
    /// Users captured.
    pub users: Vec<String>,
    /// Entries, directories before their content.
    pub entries: Vec<PackedEntry>,
}

impl PackedManifest {
    /// A new empty manifest stamped with the current time.
    pub fn new(migration_id: &str, hostname: &str) -> Self {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self {
            format_version: FORMAT_VERSION,
            migration_id: migration_id.to_owned(),
            created_unix_ms,
            hostname: hostname.to_owned(),
            users: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Every distinct chunk id the manifest refers to, in first-use order.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .flat_map(|entry| &entry.chunks)
            .filter(|id| seen.insert(**id))
            .copied()
            .collect()
    }

    /// Checks the manifest is safe to restore from: version, user names, and for every entry
    /// relative '/'-separated paths without `..`, `.`, empty components, NUL, backslashes or
    /// drive letters; a user's targets under `Users/<user>/`, machine-wide targets outside
    /// `Windows/`, `_fleetmig/` and `StateStore/`; no target listed twice; chunks and content
    /// hashes only on files. Returns the first problem, naming the entry.
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(Error::ManifestMalformed {
                reason: format!("unsupported format version {}", self.format_version),
            });
        }
        for user in &self.users {
            check_user(user).map_err(|reason| Error::ManifestMalformed {
                reason: format!("user {user:?}: {reason}"),
            })?;
        }
        let mut targets = HashSet::with_capacity(self.entries.len());
        for (index, entry) in self.entries.iter().enumerate() {
            let bad = |path: &str, reason: String| Error::BadEntry {
                index,
                path: path.to_owned(),
                reason,
            };
            let system = entry.user.is_empty();
            if !system {
                check_user(&entry.user)
                    .map_err(|reason| bad(&entry.user, format!("user: {reason}")))?;
            }
            check_relative(&entry.source)
                .map_err(|reason| bad(&entry.source, format!("source: {reason}")))?;
            check_relative(&entry.target)
                .map_err(|reason| bad(&entry.target, format!("target: {reason}")))?;
            let mut parts = entry.target.split('/');
            let first = parts.next().unwrap_or_default();
            if system {
                if FORBIDDEN_SYSTEM_TARGETS
                    .iter()
                    .any(|dir| dir.eq_ignore_ascii_case(first))
                {
                    return Err(bad(
                        &entry.target,
                        "target: a machine-wide entry must not target Windows/, _fleetmig/ or StateStore/".to_owned(),
                    ));
                }
            } else if first != PROFILES_DIR
                || parts.next() != Some(entry.user.as_str())
                || parts.next().is_none()
            {
                return Err(bad(
                    &entry.target,
                    format!("target: not under {PROFILES_DIR}/{}/", entry.user),
                ));
            }
            if !targets.insert(entry.target.to_ascii_lowercase()) {
                return Err(bad(&entry.target, "target: listed twice".to_owned()));
            }
            match entry.kind {
                EntryKind::File => {
                    if entry.content_hash.len() != 64
                        || !entry.content_hash.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(bad(
                            &entry.target,
                            "file without a valid content hash".to_owned(),
                        ));
                    }
                    if (entry.size == 0) != entry.chunks.is_empty() {
                        return Err(bad(
                            &entry.target,
                            format!(
                                "file of {} bytes with {} chunks",
                                entry.size,
                                entry.chunks.len()
                            ),
                        ));
                    }
                }
                EntryKind::Dir | EntryKind::Symlink => {
                    if !entry.chunks.is_empty() || !entry.content_hash.is_empty() {
                        return Err(bad(&entry.target, "only files have chunks".to_owned()));
                    }
                }
            }
            if entry.kind == EntryKind::Symlink
                && entry
                    .link_target
                    .as_deref()
                    .is_none_or(|text| text.is_empty() || text.contains('\0'))
            {
                return Err(bad(
                    &entry.target,
                    "missing or invalid symlink target".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// A user name: one path component.
fn check_user(user: &str) -> std::result::Result<(), String> {
    check_relative(user)?;
    if user.contains('/') {
        return Err("contains '/'".to_owned());
    }
    Ok(())
}

/// A relative, '/'-separated path that cannot leave its root on Linux or on Windows.
fn check_relative(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    if path.contains('\0') {
        return Err("contains a nul byte".to_owned());
    }
    if path.contains('\\') {
        return Err("contains a backslash (Windows separator or UNC path)".to_owned());
    }
    if path.starts_with('/') {
        return Err("absolute path".to_owned());
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path component".to_owned()),
            "." | ".." => return Err(format!("'{part}' component")),
            _ => {}
        }
        let bytes = part.as_bytes();
        if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Err(format!("drive letter in {part:?}"));
        }
    }
    Ok(())
}

fn cipher(key: &MigrationKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Key::from(*key.seal_key()))
}

/// Validates, serializes (JSON), compresses (zstd) and seals a manifest under `key` with a
/// fresh random nonce. Refuses a manifest that [`open_manifest`] would refuse.
pub fn seal_manifest(key: &MigrationKey, manifest: &PackedManifest) -> Result<Vec<u8>> {
    manifest.validate()?;
    Ok(seal_unchecked(key, manifest))
}

fn seal_unchecked(key: &MigrationKey, manifest: &PackedManifest) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).expect("a manifest always serializes");
    let mut body =
        zstd::bulk::compress(&json, MANIFEST_ZSTD_LEVEL).expect("zstd compresses into a vec");
    let nonce: [u8; 24] = rand::random();
    let mut bytes = Vec::with_capacity(MANIFEST_HEADER_LEN + body.len() + 16);
    bytes.extend_from_slice(&MANIFEST_MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(&[0, 0, 0]);
    bytes.extend_from_slice(&nonce);
    cipher(key)
        .encrypt_in_place(&XNonce::from(nonce), &bytes, &mut body)
        .expect("xchacha20poly1305 accepts any manifest size");
    bytes.extend_from_slice(&body);
    bytes
}

/// Opens a sealed manifest: checks the header, the AEAD tag ([`Error::WrongKey`] when it fails),
/// decompresses (at most [`MAX_MANIFEST_JSON_BYTES`]), parses, and validates every entry.
pub fn open_manifest(key: &MigrationKey, bytes: &[u8]) -> Result<PackedManifest> {
    let malformed = |reason: String| Error::ManifestMalformed { reason };
    if bytes.len() < MANIFEST_HEADER_LEN + 16 {
        return Err(malformed(format!("{} bytes is too short", bytes.len())));
    }
    let (header, sealed_body) = bytes.split_at(MANIFEST_HEADER_LEN);
    if header[..4] != MANIFEST_MAGIC {
        return Err(malformed("bad magic".to_owned()));
    }
    if header[4] != FORMAT_VERSION {
        return Err(malformed(format!(
            "unsupported format version {}",
            header[4]
        )));
    }
    if header[5..8] != [0, 0, 0] {
        return Err(malformed(format!("unknown flags {:#04x}", header[5])));
    }
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&header[8..32]);
    let mut body = sealed_body.to_vec();
    cipher(key)
        .decrypt_in_place(&XNonce::from(nonce), header, &mut body)
        .map_err(|_| Error::WrongKey)?;

    let mut json = Vec::new();
    zstd::stream::Decoder::new(body.as_slice())
        .map_err(|error| malformed(format!("zstd: {error}")))?
        .take(MAX_MANIFEST_JSON_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|error| malformed(format!("zstd: {error}")))?;
    if json.len() as u64 > MAX_MANIFEST_JSON_BYTES {
        return Err(malformed(format!(
            "larger than {MAX_MANIFEST_JSON_BYTES} bytes"
        )));
    }
    let manifest: PackedManifest =
        serde_json::from_slice(&json).map_err(|error| malformed(format!("json: {error}")))?;
    manifest.validate()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> MigrationKey {
        MigrationKey::from_bytes([3; 32])
    }

    fn file(name: &str) -> PackedEntry {
        PackedEntry {
            kind: EntryKind::File,
            user: "alice".into(),
            source: format!("Documents and Settings/alice/My Documents/{name}"),
            target: format!("Users/alice/Documents/{name}"),
            size: 5,
            mtime_ns: 1_200_000_000_000_000_000,
            mode: 0o100644,
            link_target: None,
            content_hash: blake3::hash(b"hello").to_hex().to_string(),
            chunks: vec![ChunkId([9; 32])],
        }
    }

    fn sample() -> PackedManifest {
        let mut manifest = PackedManifest::new("job-1", "XP-PC-042");
        manifest.users = vec!["alice".into()];
        manifest.entries.push(PackedEntry {
            kind: EntryKind::Dir,
            target: "Users/alice/Documents".into(),
            source: "Documents and Settings/alice/My Documents".into(),
            size: 0,
            mode: 0o40755,
            content_hash: String::new(),
            chunks: Vec::new(),
            ..file("x")
        });
        manifest.entries.push(file("a.doc"));
        manifest.entries.push(PackedEntry {
            kind: EntryKind::Symlink,
            link_target: Some("a.doc".into()),
            content_hash: String::new(),
            chunks: Vec::new(),
            size: 0,
            ..file("link")
        });
        manifest.entries.push(PackedEntry {
            user: String::new(),
            target: "ProgramData/App/settings.ini".into(),
            source: "Documents and Settings/All Users/Application Data/App/settings.ini".into(),
            ..file("settings.ini")
        });
        manifest
    }

    #[test]
    fn round_trip() {
        let manifest = sample();
        let sealed = seal_manifest(&key(), &manifest).unwrap();
        assert_eq!(&sealed[..4], b"FMMF");
        assert_eq!(open_manifest(&key(), &sealed).unwrap(), manifest);
        assert_eq!(manifest.chunk_ids(), vec![ChunkId([9; 32])]);
        // Fresh nonce each time: two seals of the same manifest differ.
        assert_ne!(seal_manifest(&key(), &manifest).unwrap(), sealed);
        // No file name is visible in the sealed bytes.
        assert!(!sealed.windows(5).any(|window| window == b"a.doc"));
    }

    #[test]
    fn wrong_key_and_tampering_fail_cleanly() {
        let sealed = seal_manifest(&key(), &sample()).unwrap();
        let error = open_manifest(&MigrationKey::from_bytes([4; 32]), &sealed).unwrap_err();
        assert!(matches!(error, Error::WrongKey), "{error}");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert!(matches!(
            open_manifest(&key(), &tampered),
            Err(Error::WrongKey)
        ));
        let mut nonce_changed = sealed;
        nonce_changed[10] ^= 1;
        assert!(matches!(
            open_manifest(&key(), &nonce_changed),
            Err(Error::WrongKey)
        ));
    }

    #[test]
    fn hostile_entries_are_refused_even_when_sealed() {
        type Mutation = Box<dyn Fn(&mut PackedEntry)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|e| e.target = "Users/alice/../../etc/passwd".into()),
                "'..'",
            ),
            (Box::new(|e| e.target = "/etc/passwd".into()), "absolute"),
            (
                Box::new(|e| e.target = "Users/bob/a.doc".into()),
                "not under Users/alice/",
            ),
            (
                Box::new(|e| e.target = "Users/alice".into()),
                "not under Users/alice/",
            ),
            (
                Box::new(|e| e.target = "C:/Windows/system32/x.dll".into()),
                "drive letter",
            ),
            (
                Box::new(|e| e.target = "Users/alice/C:evil".into()),
                "drive letter",
            ),
            (
                Box::new(|e| e.target = "\\\\server\\share\\x".into()),
                "backslash",
            ),
            (
                Box::new(|e| e.source = "Documents and Settings\\..\\x".into()),
                "backslash",
            ),
            (Box::new(|e| e.source = "a/\0b".into()), "nul"),
            (
                Box::new(|e| e.source = "a//b".into()),
                "empty path component",
            ),
            (Box::new(|e| e.user = "../alice".into()), "'..'"),
            (Box::new(|e| e.user = String::new()), "must not target"),
            (Box::new(|e| e.content_hash = "zz".into()), "content hash"),
            (Box::new(|e| e.chunks.clear()), "chunks"),
            (
                Box::new(|e| {
                    e.kind = EntryKind::Symlink;
                    e.content_hash.clear();
                    e.chunks.clear();
                }),
                "symlink",
            ),
        ];
        for (mutate, expected) in cases {
            let mut manifest = sample();
            manifest.entries.push(file("evil"));
            mutate(manifest.entries.last_mut().unwrap());
            if manifest.entries.last().unwrap().user.is_empty() {
                manifest.entries.last_mut().unwrap().target = "Windows/system32/evil.dll".into();
            }
            let sealed = seal_unchecked(&key(), &manifest);
            let error = open_manifest(&key(), &sealed).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{error} should mention {expected}"
            );
            assert!(
                error.contains("entry 4") || error.contains("user"),
                "{error} names the entry"
            );
            assert!(
                seal_manifest(&key(), &manifest).is_err(),
                "sealing refuses it too"
            );
        }

        let mut twice = sample();
        twice.entries.push(file("a.doc"));
        let error = open_manifest(&key(), &seal_unchecked(&key(), &twice)).unwrap_err();
        assert!(error.to_string().contains("listed twice"), "{error}");

        let mut bad_version = sample();
        bad_version.format_version = 2;
        let error = open_manifest(&key(), &seal_unchecked(&key(), &bad_version)).unwrap_err();
        assert!(error.to_string().contains("version 2"), "{error}");
    }

    proptest! {
        #[test]
        fn open_manifest_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = open_manifest(&key(), &bytes);
        }

        #[test]
        fn open_manifest_never_panics_behind_a_valid_header(mut bytes in proptest::collection::vec(any::<u8>(), 48..256)) {
            bytes[..4].copy_from_slice(&MANIFEST_MAGIC);
            bytes[4] = FORMAT_VERSION;
            bytes[5..8].copy_from_slice(&[0, 0, 0]);
            let _ = open_manifest(&key(), &bytes);
        }
    }
}
