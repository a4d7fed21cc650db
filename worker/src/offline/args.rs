//! Command line of the offline verbs (`scan`, `load`, `store`).

use std::path::PathBuf;

use super::exit::EXIT_CODES_HELP;

/// `scan`: capture user state into a store (like USMT ScanState).
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct ScanArgs {
    /// Root of the Windows XP machine's system disk.
    #[arg(long, value_name = "DIR")]
    pub machine_root: PathBuf,
    /// The store directory to create (on the same filesystem as the machine for --hardlink).
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
    /// Write a hard-link store: no data is copied (exactly one of --hardlink and --packed).
    #[arg(long)]
    pub hardlink: bool,
    /// Write a packed store: deduplicated, compressed and encrypted chunks plus a sealed
    /// manifest, anywhere (needs --key-file).
    #[arg(long)]
    pub packed: bool,
    /// The fleet key file of a packed store (64 hex characters); keep it: the store cannot be
    /// loaded without it.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Create --key-file with a new random key (mode 0600) when it does not exist.
    #[arg(long)]
    pub create_key: bool,
    /// The metadata cache of a packed scan: files unchanged since the last scan are not read
    /// again (default: MACHINE_ROOT/_fleetmig/packcache.bin).
    #[arg(long, value_name = "FILE")]
    pub cache_file: Option<PathBuf>,
    /// Read every file: neither use nor update the metadata cache.
    #[arg(long)]
    pub no_cache: bool,
    /// USMT-style XML rule file (MigUser.xml, MigDocs.xml, custom); repeatable, merged in order.
    /// Without any, the built-in rules apply.
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Capture users matching this pattern even if excluded (USMT /ui); repeatable.
    /// `DOMAIN\name` or `name`, case-insensitive `*`/`?` globs; the domain of a local profile is
    /// the machine's hostname. Given without any exclusion: capture only these users.
    #[arg(long = "user-include", value_name = "PATTERN")]
    pub user_include: Vec<String>,
    /// Leave out users matching this pattern (USMT /ue), e.g. `*\admin*`; repeatable.
    #[arg(long = "user-exclude", value_name = "PATTERN")]
    pub user_exclude: Vec<String>,
    /// Leave out users whose NTUSER.DAT was not modified in this many days (USMT /uel);
    /// --user-include still wins.
    #[arg(long, value_name = "DAYS")]
    pub user_exclude_older_than: Option<u64>,
    /// Skip files that cannot be captured, list them, and exit with 3 (USMT /c).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Write the path of every captured file (and symlink), one per line, to FILE.
    #[arg(long, value_name = "FILE")]
    pub list_files: Option<PathBuf>,
    /// Only report what would be captured (users, files, bytes, store space needed, free
    /// space); write no store.
    #[arg(long)]
    pub estimate: bool,
    /// Replace an existing store (only what a store holds is deleted).
    #[arg(long)]
    pub overwrite: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `load`: restore a store (hard-link or packed) into the Windows 7 layout, then verify (like
/// USMT LoadState).
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct LoadArgs {
    /// The store to restore from.
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
    /// Root of the (Windows 7) machine to restore into.
    #[arg(long, visible_alias = "target-root", value_name = "DIR")]
    pub machine_root: PathBuf,
    /// The fleet key file a packed store was written with.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Restore profile OLD as NEW, under Users/NEW (USMT /mu); repeatable.
    #[arg(long = "user-map", value_name = "OLD=NEW", value_parser = parse_user_map)]
    pub user_map: Vec<(String, String)>,
    /// Skip files that cannot be restored, list them, and exit with 3 (USMT /c).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Replace different files already at a target instead of restoring as `name(1).ext`.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `store`: look after a store, hard-link or packed (like USMT UsmtUtils). The kind is detected:
/// a directory with a `store.json` is a packed store.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Check a store. Hard-link: every manifest entry against the store (same inode, size,
    /// mode, mtime). Packed (needs --key-file): every chunk file against its AEAD tag and id,
    /// and that every chunk the manifest references is present.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify {
        /// The store.
        path: PathBuf,
        /// The captured machine, to also check that originals were not replaced (default: the
        /// root recorded in the manifest, when it is an absolute path that exists). Hard-link
        /// stores only.
        #[arg(long, value_name = "DIR")]
        machine_root: Option<PathBuf>,
        /// The fleet key file a packed store was written with (required for a packed store).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the manifest entries: kind, size, mtime, source -> target. A packed store's
    /// manifest is sealed: without --key-file only what store.json says is shown.
    #[command(after_help = EXIT_CODES_HELP)]
    Ls {
        /// The store.
        path: PathBuf,
        /// The fleet key file a packed store was written with (to list its entries).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Print the listing as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete a store: only what the store made (a hard-link store's links and files, a
    /// packed store's chunks, manifest and store.json), never an original; a directory that is
    /// not a store is refused.
    #[command(after_help = EXIT_CODES_HELP)]
    Delete {
        /// The store.
        path: PathBuf,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

impl StoreCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            StoreCommand::Verify { json, .. }
            | StoreCommand::Ls { json, .. }
            | StoreCommand::Delete { json, .. } => *json,
        }
    }
}

/// Parses `OLD=NEW`.
pub fn parse_user_map(text: &str) -> Result<(String, String), String> {
    let (old, new) = text
        .split_once('=')
        .ok_or_else(|| format!("user map {text:?} must be OLD=NEW"))?;
    if old.is_empty() || new.is_empty() {
        return Err(format!("user map {text:?} has an empty name"));
    }
    Ok((old.to_owned(), new.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_maps() {
        assert_eq!(
            parse_user_map("alice=asmith").unwrap(),
            ("alice".into(), "asmith".into())
        );
        assert!(parse_user_map("alice").is_err());
        assert!(parse_user_map("=x").is_err());
        assert!(parse_user_map("x=").is_err());
    }
}
