#!/usr/bin/env bash
# Replace-path benchmark: packed capture of a generated ~2 GB machine to a real storage node on
# loopback vs `tar -c | zstd -1 -T0`, an unchanged re-capture vs the first, and restore vs
# `zstd -d | tar -x`, in one run, with encryption, dedup and the node's fsyncs on.
#
#   bash scripts/bench-packed.sh [SIZE_MIB] [FILES]     # defaults: 2048 MiB, 30000 files
#
# Works in target/bench-packed (same filesystem as the repository; deleted afterwards unless
# KEEP=1, in which case the generated machine is reused by the next run). scripts/setup.sh
# installs zstd when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB="${1:-2048}"
FILES="${2:-30000}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
WORK="$(realpath -m "$TARGET_DIR/bench-packed")"

bash scripts/setup.sh
cargo build --release --quiet -p fleetmig-storage-node --bin fleetmig-storage-node
cargo build --release --quiet -p fleetmig-worker --example bench_packed_node
if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$WORK"
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
"$TARGET_DIR/release/examples/bench_packed_node" \
    "$TARGET_DIR/release/fleetmig-storage-node" "$WORK" "$SIZE_MIB" "$FILES"
