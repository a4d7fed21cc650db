#!/usr/bin/env bash
# Hard-link scan and load benchmark: fleetmig capture and restore next to `cp -al`,
# warm and cold cache, in one run.
#
#   bash scripts/bench-hardlink.sh [FILES]     # FILES defaults to 100000
#
# Builds the release example `bench_hardlink`, generates a machine of about FILES files in
# target/bench-tmp (same filesystem as the repository; deleted afterwards) and prints lines like
#   scan  warm: fleetmig 1.12s  cp -al 2.21s  ratio 0.51
# Cold-cache figures need root (they write /proc/sys/vm/drop_caches); without it they read
# "cold: unavailable".
set -euo pipefail
cd "$(dirname "$0")/.."

FILES="${1:-100000}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
WORK="$TARGET_DIR/bench-tmp"

cargo build --release --quiet -p fleetmig-state --example bench_hardlink
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
"$TARGET_DIR/release/examples/bench_hardlink" "$FILES" "$WORK"
