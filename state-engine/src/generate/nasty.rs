//! The nasty cases of a profile: names, lengths, modes and link structures that break naive
//! copy tools. Written by [`write`] when [`super::GenExtras::nasty`] is on (see there).
//!
//! Every path here is a constant (or derived from the user name), so tests can name them; the
//! [`NASTY`] table lists the ones tests check by profile-relative path.

use std::path::Path;

use super::content::{Style, Writer};
use crate::error::Result;

/// Folder under `My Documents` holding the unicode and whitespace names.
pub const UNICODE_DIR: &str = "My Documents/Ünïcödé  Földer — mit Leerzeichen";

/// Names (inside [`UNICODE_DIR`]) with unicode, odd whitespace and punctuation. Two of them look
/// the same but are different byte strings (NFC and NFD forms of "Café").
pub const UNICODE_NAMES: &[&str] = &[
    "  leading spaces.txt",
    "trailing space .doc",
    "trailing space after extension.txt ",
    "double  spaces   inside.doc",
    "Caf\u{e9}.txt",
    "Cafe\u{301}.txt",
    "Ελληνικά έγγραφα.doc",
    "מסמך בעברית.doc",
    "📁 emoji 🎉 party.txt",
    "日本語\u{3000}全角スペース.txt",
    "non\u{a0}breaking\u{a0}space.txt",
    "semi;colon, comma & ampersand 'quote' [brackets] {braces} #hash %percent $dollar!.txt",
    "~$lock file (Office owner).doc",
];

/// Empty directories (profile-relative) that must come back empty.
pub const EMPTY_DIRS: &[&str] = &[
    "My Documents/Empty Folder/Nested Empty/Deepest Empty",
    "Desktop/New Folder",
    "Application Data/Empty Vendor",
];

/// Zero-byte files (profile-relative).
pub const ZERO_BYTE_FILES: &[&str] = &[
    "My Documents/empty.txt",
    "Desktop/New Text Document.txt",
    "Application Data/Microsoft/Office/Recent/empty.lnk",
];

/// Read-only files (profile-relative) and their modes.
pub const READ_ONLY_FILES: &[(&str, u32)] = &[
    ("My Documents/Read Only/Policy (read-only).pdf", 0o444),
    ("My Documents/Read Only/owner-only read.txt", 0o400),
];

/// A file nobody may read or write (mode 000). Root still can; the engine never needs to,
/// since hard-linking does not read a file.
pub const UNREADABLE_FILE: &str = "My Documents/Private/salary (locked).xls";

/// One file with three names: the first two migrate, the last sits in an excluded temp folder.
pub const HARD_LINKED: [&str; 3] = [
    "My Documents/Work/Budget (linked).xls",
    "Desktop/Budget (linked).xls",
    "Local Settings/Temp/~budget-linked.tmp",
];

/// Symlinks (profile-relative path, link text, whether it points outside the profile).
pub const SYMLINKS: &[(&str, &str, bool)] = &[
    (
        "My Documents/Contract shortcut.doc",
        "Contract (signed).doc",
        false,
    ),
    ("Desktop/Favorites", "../Favorites", false),
    (
        "Desktop/Dangling",
        "../My Documents/deleted long ago.doc",
        false,
    ),
    ("My Documents/Loop", "Loop", false),
    ("My Documents/hostname", "/etc/hostname", true),
    ("My Documents/WINDOWS", "../../../WINDOWS", true),
];

/// The directory part of the long path (profile-relative).
pub const LONG_DIR: &str = "My Documents/Projects/Regional Sales Department – Customer Correspondence 2003–2008/Signed Agreements, Amendments and Side Letters (scanned originals)/Contoso Ltd – Framework Agreement – Annex B – Pricing Schedules and Volume Discounts";

/// Profile-relative paths of the files whose full path is over 250 characters (one has a name
/// of exactly 255 bytes, the Linux maximum).
pub fn long_paths() -> Vec<String> {
    let ascii = max_name("Minutes of the quarterly review ", ".doc");
    let unicode = max_name("Überweisungsbestätigung für März ", ".pdf");
    vec![
        format!("{LONG_DIR}/Pricing schedule (final, signed by both parties).xls"),
        format!("{LONG_DIR}/{ascii}"),
        format!("{UNICODE_DIR}/{unicode}"),
    ]
}

/// `stem` repeated into a name of at most 255 bytes ending in `ext`.
fn max_name(stem: &str, ext: &str) -> String {
    let mut name = stem.repeat(255 / stem.len() + 1);
    let mut cut = 255 - ext.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    name.truncate(cut);
    name.push_str(ext);
    name
}

/// Writes every nasty case into `profile`.
pub(super) fn write(w: &mut Writer, profile: &Path) -> Result<()> {
    for name in UNICODE_NAMES {
        let size = w.size(64, 8_192);
        w.document(&profile.join(UNICODE_DIR).join(name), size)?;
    }
    for dir in EMPTY_DIRS {
        w.dir(&profile.join(dir))?;
    }
    for file in ZERO_BYTE_FILES {
        let mtime = w.mtime();
        w.file_at(&profile.join(file), 0, mtime, 0o644, Style::Text)?;
    }
    for (file, mode) in READ_ONLY_FILES {
        let mtime = w.mtime();
        w.file_at(&profile.join(file), 6_000, mtime, *mode, Style::Text)?;
    }
    let mtime = w.mtime();
    w.file_at(
        &profile.join(UNREADABLE_FILE),
        9_000,
        mtime,
        0o000,
        Style::Binary,
    )?;

    let [first, rest @ ..] = HARD_LINKED.map(|rel| profile.join(rel));
    w.document(&first, 21_000)?;
    for link in rest {
        w.hard_link(&first, &link)?;
    }
    for (link, text, _) in SYMLINKS {
        w.symlink(text, &profile.join(link))?;
    }
    for file in long_paths() {
        let size = w.size(512, 16_384);
        w.document(&profile.join(file), size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_at_the_limit() {
        for path in long_paths() {
            let name = path.rsplit('/').next().unwrap();
            assert!(name.len() <= 255, "{name}");
        }
        assert!(long_paths().iter().all(|path| path.chars().count() > 250));
        assert_eq!(max_name("ab ", ".doc").len(), 255);
        assert!(max_name("Überweisung ", ".pdf").len() >= 254);
    }
}
