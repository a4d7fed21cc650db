#!/usr/bin/env bash
# Scheduler benchmark: a plan of MACHINES simulated machines with instant jobs through the real
# controller, scheduler and embedded store (fsync'd group commits), in one process.
#
#   bash scripts/bench-scheduler.sh [MACHINES] [MAX_IN_FLIGHT] [WORKER_TASKS]
#                                   # defaults: 100000 5000 2000
#
# Prints the scheduler's assignments (durable admissions) per second and the p50/p99 latency
# of a scheduling pass, then the end-to-end rate of jobs handed out on check-in and run to done.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --quiet -p fleetmig-controller --example bench_scheduler
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
"$TARGET_DIR/release/examples/bench_scheduler" "${1:-100000}" "${2:-5000}" "${3:-2000}"
