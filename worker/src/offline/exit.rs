//! Exit codes of the offline verbs, modelled on USMT's return codes, and the one place that maps
//! errors to them. The table is stable: codes are never renumbered or reused
//! (`docs/exit-codes.md` has the same table).

use std::process::ExitCode;

use serde::Serialize;

use crate::error::Error;

/// How an offline verb ended. The numeric values are the process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Code {
    /// Everything was done.
    Success = 0,
    /// Any failure without a more specific code.
    Failure = 1,
    /// Completed, but some files were skipped and listed (USMT 3, "non-fatal errors").
    Skipped = 3,
    /// Unusable command line: unknown option, bad pattern, missing directory, a store on another
    /// filesystem, a machine root that is not a Windows XP tree (USMT 11).
    BadArguments = 11,
    /// The store already exists and is not empty; pass `--overwrite` to replace it.
    StoreExists = 12,
    /// The store is invalid, corrupt or hostile: no seal or never committed, manifest tampered
    /// with or hostile, files or chunks that no longer match the manifest, not a store.
    StoreInvalid = 13,
    /// The key does not open the packed store (its manifest fails authentication).
    WrongKey = 14,
    /// Not enough free space for the store, or the disk filled up.
    OutOfSpace = 15,
    /// A file could not be read, linked or written (locked, unreadable, unrepresentable name).
    FileIo = 16,
    /// `load` finished but the restored files do not verify against the store (`store verify`
    /// of a bad store is [`Code::StoreInvalid`]).
    VerifyFailed = 17,
}

impl Code {
    /// The process exit code.
    pub fn value(self) -> u8 {
        self as u8
    }

    /// A short, stable name (`store_invalid`), used in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            Code::Success => "success",
            Code::Failure => "failure",
            Code::Skipped => "skipped",
            Code::BadArguments => "bad_arguments",
            Code::StoreExists => "store_exists",
            Code::StoreInvalid => "store_invalid",
            Code::WrongKey => "wrong_key",
            Code::OutOfSpace => "out_of_space",
            Code::FileIo => "file_io",
            Code::VerifyFailed => "verify_failed",
        }
    }
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> Self {
        ExitCode::from(code.value())
    }
}

/// The table printed at the end of `--help` of every offline verb.
pub const EXIT_CODES_HELP: &str = "\
Exit codes (see docs/exit-codes.md):
   0  success
   1  other failure
   3  completed, but some files were skipped (listed in the summary)
  11  bad arguments (options, patterns, paths, store location)
  12  store already exists and is not empty (use --overwrite)
  13  store invalid or corrupt (unsealed or uncommitted, tampered with, files or chunks changed)
  14  wrong key (the key file does not open the packed store)
  15  out of disk space
  16  i/o error on a locked or unreadable file
  17  restore does not verify against the store (load)";

/// The exit code for an error.
pub fn code_of(error: &Error) -> Code {
    match error {
        Error::State(error) => code_of_state(error),
        Error::Io { source, .. } => code_of_io(source),
        Error::BadArguments(_) => Code::BadArguments,
        Error::OutOfSpace { .. } => Code::OutOfSpace,
        Error::NotAStore(_) => Code::StoreInvalid,
        Error::VerificationFailed { what, .. } if *what == "restore" => Code::VerifyFailed,
        Error::VerificationFailed { .. } => Code::StoreInvalid,
        Error::Format(error) => code_of_format(error),
        Error::CorruptChunk { .. } | Error::PackedStoreInvalid { .. } => Code::StoreInvalid,
        Error::PackedStoreExists(_) => Code::StoreExists,
        Error::NodeFull { .. } => Code::OutOfSpace,
        Error::NodeUnavailable { .. }
        | Error::NodeDataLoss { .. }
        | Error::NodeRefused { .. }
        | Error::ReplicationFailed { .. }
        | Error::NoRestoreSource(_) => Code::Failure,
        Error::AgentState { .. }
        | Error::Tls { .. }
        | Error::Controller(_)
        | Error::BadUrl { .. }
        | Error::BadAssignment { .. }
        | Error::ReimageHook { .. }
        | Error::Superseded(_)
        | Error::Shutdown => Code::Failure,
    }
}

/// The exit code for an error of the state engine.
pub fn code_of_state(error: &fleetmig_state::Error) -> Code {
    use fleetmig_state::Error as E;
    match error {
        E::Io { source, .. } => code_of_io(source),
        E::NotEmpty { .. } => Code::StoreExists,
        E::CrossFilesystem { .. }
        | E::HardLinksUnsupported { .. }
        | E::StoreInsideProfiles { .. }
        | E::NotAnXpMachine { .. }
        | E::RulesXml { .. } => Code::BadArguments,
        E::MissingSeal { .. }
        | E::SealMismatch { .. }
        | E::ManifestJson { .. }
        | E::ManifestInvalid { .. }
        | E::PathEscapes { .. }
        | E::StoreMismatch { .. } => Code::StoreInvalid,
        E::NonUtf8Name { .. } => Code::FileIo,
    }
}

/// The exit code for an error of the packed format: a missing or malformed key file is a bad
/// argument, a key that does not open the store is the wrong key, anything that fails its seal
/// or hash is an invalid store.
pub fn code_of_format(error: &fleetmig_format::Error) -> Code {
    use fleetmig_format::Error as E;
    match error {
        E::Io { source, .. } => code_of_io(source),
        E::KeyFile { .. } => Code::BadArguments,
        E::WrongKey => Code::WrongKey,
        E::ChunkMalformed { .. }
        | E::ChunkCorrupt { .. }
        | E::ChunkIdMismatch { .. }
        | E::ManifestMalformed { .. }
        | E::BadEntry { .. }
        | E::ContentHashMismatch { .. } => Code::StoreInvalid,
    }
}

/// Out of space for ENOSPC and EDQUOT, otherwise an i/o error on a file.
fn code_of_io(error: &std::io::Error) -> Code {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Code::OutOfSpace,
        _ => Code::FileIo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn state_errors_map_to_documented_codes() {
        let path = PathBuf::from("/s");
        let state = |error| code_of(&Error::State(error));
        assert_eq!(
            state(fleetmig_state::Error::NotEmpty { path: path.clone() }),
            Code::StoreExists
        );
        assert_eq!(
            state(fleetmig_state::Error::MissingSeal { path: path.clone() }),
            Code::StoreInvalid
        );
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        assert_eq!(
            state(fleetmig_state::Error::Io {
                path: path.clone(),
                source: full,
            }),
            Code::OutOfSpace
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(code_of(&Error::io(&path, denied)), Code::FileIo);
        assert_eq!(
            code_of(&Error::BadArguments("x".into())),
            Code::BadArguments
        );
        assert_eq!(
            code_of(&Error::VerificationFailed {
                what: "restore",
                details: String::new()
            }),
            Code::VerifyFailed
        );
    }

    #[test]
    fn help_lists_every_code() {
        for code in [
            Code::Success,
            Code::Failure,
            Code::Skipped,
            Code::BadArguments,
            Code::StoreExists,
            Code::StoreInvalid,
            Code::WrongKey,
            Code::OutOfSpace,
            Code::FileIo,
            Code::VerifyFailed,
        ] {
            let line = format!("{:>4}  ", code.value());
            assert!(EXIT_CODES_HELP.contains(&line), "{code:?}");
        }
    }
}
