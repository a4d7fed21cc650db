#!/usr/bin/env bash
# The full check, as the README and CI run it: `bash scripts/test.sh`.
#
# Installs missing system packages, builds the binaries the integration tests start as
# processes, checks formatting and lints, then runs every test of the workspace.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { echo "==> $* ($(date +%H:%M:%S))" >&2; }

step "setup"
bash scripts/setup.sh

# The integration tests (tests/) spawn fleetmig-controller, fleetmig-worker, ... from
# target/debug, so every binary must be built before they run.
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace --no-fail-fast"
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doc tests.
    step "cargo test --workspace --doc"
    cargo test --workspace --doc
else
    step "cargo test --workspace --no-fail-fast"
    cargo test --workspace --no-fail-fast
fi

step "all checks passed"
