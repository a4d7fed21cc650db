//! A realistic, deterministic Windows XP machine tree for tests, demos and benchmarks.
//!
//! The same [`GenOptions`] always produce the same names, sizes, contents, modes and mtimes.
//! Users, and content categories within a user, are generated in parallel with rayon; each
//! category has its own seeded RNG so parallelism does not change the output.
//!
//! Knobs beyond [`GenOptions`] live in [`GenExtras`] (so `GenOptions` struct literals stay
//! valid): the [nasty cases](nasty) every realistic profile gets, and an optional large sparse
//! file.

use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Result};
use crate::fsutil::is_empty_or_missing;
use crate::layout::XP_PROFILES_DIR;

mod content;
pub mod nasty;

use content::Writer;

/// What machine to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenOptions {
    /// Seed for every random choice; the same seed gives the same machine.
    pub seed: u64,
    /// Number of (non-system) user profiles.
    pub users: u32,
    /// Approximate number of files per user, caches and temp files included. A small fixed set
    /// of interesting files (PST, unicode names, read-only files, ...) is always generated.
    pub files_per_user: u32,
    /// Hostname; derived from the seed when `None`.
    pub hostname: Option<String>,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            users: 3,
            files_per_user: 200,
            hostname: None,
        }
    }
}

/// Below this many files per user, profiles get no [nasty cases](nasty) unless asked for, so
/// tiny test machines keep an exact, small shape.
pub const NASTY_MIN_FILES_PER_USER: u32 = 100;

/// Generator knobs beyond [`GenOptions`]; the default is what [`generate_machine`] does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenExtras {
    /// Whether every profile gets the [nasty cases](nasty): unicode and whitespace names,
    /// paths over 250 characters, empty directories, zero-byte, read-only and unreadable
    /// (mode 000) files, a file with several names (hard links), and symlinks pointing inside
    /// and outside the profile. `None` (the default) turns them on for machines of at least
    /// [`NASTY_MIN_FILES_PER_USER`] files per user.
    pub nasty: Option<bool>,
    /// Size in bytes of a sparse file (`set_len`, no data written but a header and a footer)
    /// in the first user's `My Documents/Virtual Machines/` ([`SPARSE_FILE`]). Off by default
    /// so demo and test machines stay small and fast to fingerprint.
    pub large_sparse: Option<u64>,
}

impl GenExtras {
    /// Whether `opts` get the nasty cases.
    pub fn nasty_for(&self, opts: &GenOptions) -> bool {
        self.nasty
            .unwrap_or(opts.files_per_user >= NASTY_MIN_FILES_PER_USER)
    }
}

/// Profile-relative path of the sparse file of [`GenExtras::large_sparse`].
pub const SPARSE_FILE: &str = "My Documents/Virtual Machines/Windows XP Mode.vhd";

/// What was generated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenReport {
    /// The machine's hostname.
    pub hostname: String,
    /// The (non-system) user profiles created.
    pub users: Vec<String>,
    /// Files written, system files included.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// First day of the XP era used for generated mtimes (2003-01-01).
const ERA_START: i64 = 1_041_379_200;
/// Last day of the XP era used for generated mtimes (2009-12-31).
const ERA_END: i64 = 1_262_217_600;

const USER_NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "jürgen",
    "mallory", "oscar", "peggy", "sybil", "trent", "victor", "walter", "yuki", "zoë",
];

/// Generates an XP machine under `root`, which must be missing or empty, with the default
/// [`GenExtras`].
pub fn generate_machine(root: &Path, opts: &GenOptions) -> Result<GenReport> {
    generate_machine_with(root, opts, &GenExtras::default())
}

/// [`generate_machine`] with explicit [`GenExtras`].
pub fn generate_machine_with(
    root: &Path,
    opts: &GenOptions,
    extras: &GenExtras,
) -> Result<GenReport> {
    if !is_empty_or_missing(root)? {
        return Err(Error::NotEmpty {
            path: root.to_path_buf(),
        });
    }
    fs::create_dir_all(root).at(root)?;
    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| format!("XP-{:06X}", mix(opts.seed, 0, 0) & 0xFF_FFFF));
    let users: Vec<String> = (0..opts.users as usize)
        .map(|index| match index / USER_NAMES.len() {
            0 => USER_NAMES[index].to_owned(),
            round => format!("{}{round}", USER_NAMES[index % USER_NAMES.len()]),
        })
        .collect();

    let mut system = Writer::new(mix(opts.seed, u64::MAX, 0), root);
    write_system(&mut system, root, &hostname)?;

    let per_user: Vec<(u64, u64)> = users
        .par_iter()
        .enumerate()
        .map(|(index, user)| generate_user(root, opts, extras, index as u64, user))
        .collect::<Result<_>>()?;
    // After the users, so creating their profiles does not bump the system directories' mtimes.
    system.finish()?;
    let files = system.files + per_user.iter().map(|(files, _)| files).sum::<u64>();
    let bytes = system.bytes + per_user.iter().map(|(_, bytes)| bytes).sum::<u64>();
    tracing::debug!(root = %root.display(), files, bytes, "generated xp machine");
    Ok(GenReport {
        hostname,
        users,
        files,
        bytes,
    })
}

/// SplitMix64-style mixing of the seed with a user and category index.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Windows, Program Files and the system profiles.
fn write_system(w: &mut Writer, root: &Path, hostname: &str) -> Result<()> {
    let windows = root.join("WINDOWS");
    let system32 = windows.join("system32");
    w.text(
        &system32.join("prodspec.ini"),
        "[Product Specification]\r\nProduct=Windows XP Professional\r\nVersion=5.1\r\nLocalization=English\r\nServicePackNumber=3\r\n",
    )?;
    w.text(
        &system32.join("computername.txt"),
        &format!("{hostname}\r\n"),
    )?;
    w.text(
        &system32.join("drivers/etc/hosts"),
        "# Copyright (c) 1993-1999 Microsoft Corp.\r\n127.0.0.1       localhost\r\n",
    )?;
    for (name, size) in [
        ("kernel32.dll", 98_304),
        ("ntoskrnl.exe", 200_704),
        ("config/SAM", 16_384),
        ("config/SYSTEM", 65_536),
    ] {
        w.binary(&system32.join(name), size)?;
    }
    w.text(
        &windows.join("win.ini"),
        "; for 16-bit app support\r\n[fonts]\r\n[extensions]\r\n",
    )?;
    w.binary(&windows.join("explorer.exe"), 65_536)?;
    w.dir(&windows.join("Temp"))?;
    w.text(
        &root.join("boot.ini"),
        "[boot loader]\r\ntimeout=30\r\ndefault=multi(0)disk(0)rdisk(0)partition(1)\\WINDOWS\r\n",
    )?;

    let program_files = root.join("Program Files");
    for (name, size) in [
        ("Internet Explorer/iexplore.exe", 93_184),
        ("Microsoft Office/OFFICE11/WINWORD.EXE", 131_072),
        ("Microsoft Office/OFFICE11/EXCEL.EXE", 120_000),
        ("Mozilla Firefox/firefox.exe", 80_000),
    ] {
        w.binary(&program_files.join(name), size)?;
    }
    w.dir(&program_files.join("Common Files"))?;

    let profiles = root.join(XP_PROFILES_DIR);
    let all_users = profiles.join("All Users");
    w.text(
        &all_users.join("Start Menu/Programs/Accessories/Notepad.lnk"),
        "L\0\0\0notepad.exe",
    )?;
    w.text(
        &all_users.join("Desktop/Adobe Reader 8.lnk"),
        "L\0\0\0AcroRd32.exe",
    )?;
    w.document(&all_users.join("Documents/Shared Budget.xls"), 12_000)?;
    w.dir(&all_users.join("Application Data/Microsoft"))?;
    for profile in ["Default User", "LocalService", "NetworkService"] {
        w.binary(&profiles.join(profile).join("NTUSER.DAT"), 262_144)?;
        w.dir(&profiles.join(profile).join("Local Settings/Temp"))?;
    }
    w.dir(&profiles.join("Default User/My Documents"))?;
    w.dir(&profiles.join("Default User/Desktop"))?;
    Ok(())
}

/// One user's profile; returns (files, bytes).
fn generate_user(
    root: &Path,
    opts: &GenOptions,
    extras: &GenExtras,
    user_index: u64,
    user: &str,
) -> Result<(u64, u64)> {
    let profile = root.join(XP_PROFILES_DIR).join(user);
    let budget = opts.files_per_user as u64;
    let categories = content::CATEGORIES;
    let mut writers: Vec<Writer> = categories
        .par_iter()
        .enumerate()
        .map(|(category_index, category)| {
            let mut writer = Writer::new(
                mix(opts.seed, user_index + 1, category_index as u64 + 1),
                &profile,
            );
            (category.write)(&mut writer, &profile, category.share(budget), user)?;
            Ok(writer)
        })
        .collect::<Result<_>>()?;
    // Its own writer and RNG, so turning the extras on or off leaves the other files unchanged.
    let extra_seed = mix(opts.seed, user_index + 1, categories.len() as u64 + 1);
    let mut extra = Writer::new(extra_seed, &profile);
    if extras.nasty_for(opts) {
        nasty::write(&mut extra, &profile)?;
    }
    if let Some(size) = extras.large_sparse.filter(|_| user_index == 0) {
        extra.sparse(&profile.join(SPARSE_FILE), size)?;
    }
    writers.push(extra);

    // Directory mtimes last, deepest first, so file creation does not bump them again.
    let mut dirs: Vec<(PathBuf, i64)> = writers
        .iter()
        .flat_map(|writer| writer.dirs.iter().cloned())
        .collect();
    dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (dir, mtime) in &dirs {
        filetime::set_file_mtime(dir, filetime::FileTime::from_unix_time(*mtime, 0)).at(dir)?;
    }
    // NTUSER.DAT's mtime is when the profile was last used; the profile dir follows it.
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, user_index + 1, 0));
    let last_used = rng.random_range(ERA_END - 200 * 86_400..ERA_END);
    let ntuser = profile.join("NTUSER.DAT");
    let mut last = Writer::new(rng.next_u64(), &profile);
    last.file_at(
        &ntuser,
        rng.random_range(131_072..524_288),
        last_used,
        0o644,
        content::Style::Binary,
    )?;
    filetime::set_file_mtime(&profile, filetime::FileTime::from_unix_time(last_used, 0))
        .at(&profile)?;

    let files = last.files + writers.iter().map(|writer| writer.files).sum::<u64>();
    let bytes = last.bytes + writers.iter().map(|writer| writer.bytes).sum::<u64>();
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn snapshot(root: &Path) -> Vec<(String, u64, i64, u32, String)> {
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let digest = if meta.is_file() {
                blake3::hash(&fs::read(entry.path()).unwrap())
                    .to_hex()
                    .to_string()
            } else {
                String::new()
            };
            out.push((rel, meta.size(), meta.mtime(), meta.mode(), digest));
        }
        out
    }

    #[test]
    fn deterministic_and_realistic() {
        let opts = GenOptions {
            seed: 7,
            users: 2,
            files_per_user: 300,
            hostname: Some("PC-0042".into()),
        };
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let report = generate_machine(first.path(), &opts).unwrap();
        generate_machine(second.path(), &opts).unwrap();
        let snap = snapshot(first.path());
        // Directory mtimes of the two roots themselves differ; compare everything below them.
        assert_eq!(snap[1..], snapshot(second.path())[1..]);

        assert_eq!(report.users, vec!["alice", "bob"]);
        assert_eq!(report.hostname, "PC-0042");
        let per_user = (report.files - 25) / 2;
        assert!((280..=380).contains(&per_user), "{per_user} files per user");
        let root = first.path();
        let alice = root.join("Documents and Settings/alice");
        for rel in [
            "NTUSER.DAT",
            "My Documents/Überweisung – März.doc",
            "My Documents/報告.txt",
            "Local Settings/Application Data/Microsoft/Outlook/Outlook.pst",
            "Favorites/Google.url",
            "Desktop/Microsoft Word.lnk",
        ] {
            assert!(alice.join(rel).is_file(), "{rel}");
        }
        for rel in ["My Documents/Old Projects", "Favorites/Links"] {
            assert_eq!(fs::read_dir(alice.join(rel)).unwrap().count(), 0, "{rel}");
        }
        let prodspec = fs::read_to_string(root.join("WINDOWS/system32/prodspec.ini")).unwrap();
        assert!(prodspec.contains("Windows XP Professional") && prodspec.contains("Version=5.1"));
        let readonly = alice.join("My Documents/Contract (signed).doc");
        assert_eq!(
            fs::metadata(&readonly).unwrap().permissions().mode() & 0o777,
            0o444
        );
        let temp_files = walkdir::WalkDir::new(alice.join("Local Settings/Temp"))
            .into_iter()
            .count();
        assert!(temp_files > 2);
        // Every mtime is in the past (XP era).
        assert!(
            snap[1..]
                .iter()
                .all(|(_, _, mtime, _, _)| *mtime < ERA_END + 86_400)
        );
    }

    #[test]
    fn refuses_non_empty_root() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("x"), b"x").unwrap();
        let error = generate_machine(root.path(), &GenOptions::default()).unwrap_err();
        assert!(matches!(error, Error::NotEmpty { .. }));
    }
}
