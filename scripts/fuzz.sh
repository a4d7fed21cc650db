#!/usr/bin/env bash
# Bounded fuzzing of fleetmig's parsers of untrusted input (fuzz/README.md): builds every
# cargo-fuzz target in fuzz/ and runs each for FUZZ_SECONDS (default 15), starting from the
# committed seed corpus in fuzz/corpus/<target>/.
#
# - Works on stable Rust: cargo-fuzz needs nightly-only flags (-Zsanitizer=address, sancov),
#   which RUSTC_BOOTSTRAP=1 unlocks on the stable toolchain; AddressSanitizer works that way.
#   FUZZ_SANITIZER=none drops ASan (faster, still catches panics and assertion failures).
# - Installs cargo-fuzz (cargo install --locked) when it is missing.
# - Never writes into the committed corpus: each target runs on a temporary copy, and crash
#   inputs go to fuzz/artifacts/<target>/ (git-ignored).
# - Exits non-zero if any target crashes (panic, failed invariant, ASan report, timeout,
#   out-of-memory) or fails to build, after printing each crashing input's path.
#
# Environment: FUZZ_SECONDS (per target), FUZZ_TARGETS (space-separated subset),
# FUZZ_SANITIZER (address|none), FUZZ_TIMEOUT (seconds one input may take, default 10),
# CARGO_TARGET_DIR (default: cargo's own, fuzz/target, git-ignored).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

log() { echo "fuzz: $*" >&2; }

seconds=${FUZZ_SECONDS:-15}
sanitizer=${FUZZ_SANITIZER:-address}
timeout=${FUZZ_TIMEOUT:-10}
if ! [[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]]; then
    log "FUZZ_SECONDS must be a positive number of seconds, not '$seconds'"
    exit 2
fi

# protoc and friends, needed to build the controller (idempotent; installs nothing when present).
bash scripts/setup.sh

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
log "$(cargo fuzz --version)"

export RUSTC_BOOTSTRAP=1

mapfile -t all_targets < <(cargo fuzz list)
targets=(${FUZZ_TARGETS:-${all_targets[@]}})
if [[ ${#targets[@]} -eq 0 ]]; then
    log "no fuzz targets found"
    exit 1
fi

log "building ${targets[*]} (sanitizer: $sanitizer)"
build_started=$SECONDS
if [[ -z ${FUZZ_TARGETS:-} ]]; then
    cargo fuzz build --sanitizer "$sanitizer"
else
    for target in "${targets[@]}"; do
        cargo fuzz build --sanitizer "$sanitizer" "$target"
    done
fi
log "built in $((SECONDS - build_started)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/fleetmig-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
crashes=()
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    mkdir -p "$corpus"
    if [[ -d fuzz/corpus/$target ]]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    artifacts="$root/fuzz/artifacts/$target"
    mkdir -p "$artifacts"
    dict=()
    if [[ -f fuzz/dicts/$target.dict ]]; then
        dict=("-dict=$root/fuzz/dicts/$target.dict")
    fi
    log "running $target for ${seconds}s on a copy of fuzz/corpus/$target ($(ls "$corpus" | wc -l) seeds)"
    output="$work/$target.log"
    set +e
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" -artifact_prefix="$artifacts/" \
        >"$output" 2>&1
    status=$?
    set -e
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)' "$output" >&2 || true
    if [[ $status -ne 0 ]]; then
        tail -n 60 "$output" >&2
        failed+=("$target")
        while read -r path; do
            crashes+=("$target: $path")
        done < <(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$output")
        log "$target FAILED (exit $status)"
    else
        log "$target: no crash in ${seconds}s"
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    log "crashing targets: ${failed[*]}"
    for crash in "${crashes[@]}"; do
        log "crashing input: $crash"
    done
    log "reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer <target> <input>"
    exit 1
fi
log "all ${#targets[@]} targets ran ${seconds}s each without a crash"
