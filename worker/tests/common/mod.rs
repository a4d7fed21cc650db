//! Helpers shared by the worker's binary tests: run `fleetmig-worker` and look at what it did.

#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::process::Command;

/// What one run of the binary produced.
pub struct Run {
    /// Exit code (-1: killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Standard output as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not json ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    /// Asserts the exit code.
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `fleetmig-worker` with `args`.
pub fn worker<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(env!("CARGO_BIN_EXE_fleetmig-worker"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run fleetmig-worker");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Arguments of mixed types as `OsString`s.
pub fn os(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts
        .iter()
        .map(|part| part.as_ref().to_os_string())
        .collect()
}
