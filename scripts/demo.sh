#!/usr/bin/env bash
# The README's main command: `bash scripts/demo.sh [demo options]`.
#
# Installs missing system packages, builds release binaries, and runs
# `fleetmig demo`: a controller on its embedded store, a storage node and
# N workers on generated Windows XP machines, all on loopback, migrated to
# Windows 7 in one refresh wave. Extra arguments go to `fleetmig demo`
# (e.g. --machines 10 --files 1000 --keep).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release --bins >&2
exec target/release/fleetmig demo "$@"
