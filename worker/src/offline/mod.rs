//! Offline verbs, usable without a controller (USMT's ScanState, LoadState and UsmtUtils):
//!
//! - `scan`: capture the selected profiles of an XP machine into a hard-link store, or a packed
//!   store (`--packed --key-file F`: deduplicated, compressed, encrypted), or `--estimate` it;
//! - `load`: restore a store (either kind) into the Windows 7 layout and verify it;
//! - `store verify|ls|delete`: check, list or safely delete a store (either kind; a packed
//!   store's entries and chunks need its fleet key).
//!
//! Each prints only its summary on stdout (text, or JSON with `--json`), progress on stderr, and
//! ends with a documented exit code ([`exit::Code`], `docs/exit-codes.md`). They are plain
//! synchronous code: `main` runs them without starting an async runtime.

pub mod args;
pub mod exit;
mod load;
pub mod output;
mod packed;
mod packed_store;
mod progress;
mod rules;
mod scan;
mod store;

use std::io::Write;

pub use args::{LoadArgs, ScanArgs, StoreCommand};
pub use exit::Code;
pub use output::Outcome;

/// One offline verb with its arguments.
#[derive(Debug, Clone)]
pub enum Verb {
    /// `scan`.
    Scan(ScanArgs),
    /// `load`.
    Load(LoadArgs),
    /// `store ...`.
    Store(StoreCommand),
}

impl Verb {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Verb::Scan(args) => args.json,
            Verb::Load(args) => args.json,
            Verb::Store(command) => command.json(),
        }
    }
}

/// Runs a verb, returning its outcome (errors become an outcome with their exit code).
pub fn execute(verb: &Verb) -> Outcome {
    let reporter = progress::Reporter::new();
    let result = match verb {
        Verb::Scan(args) => scan::run(args, &reporter),
        Verb::Load(args) => load::run(args, &reporter),
        Verb::Store(command) => store::run(command, &reporter),
    };
    reporter.finish();
    result.unwrap_or_else(|error| {
        tracing::debug!(%error, "offline verb failed");
        Outcome::from_error(&error)
    })
}

/// Runs a verb, prints its summary on stdout (errors on stderr) and returns its exit code.
pub fn run(verb: &Verb) -> Code {
    let outcome = execute(verb);
    let printed = outcome.print(
        verb.json(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    if let Err(error) = printed {
        // stdout closed early (e.g. piped into `head`): the verb's work is done regardless.
        let _ = writeln!(std::io::stderr(), "cannot print summary: {error}");
    }
    outcome.code
}
