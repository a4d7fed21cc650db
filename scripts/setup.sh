#!/usr/bin/env bash
# Installs what fleetmig's build and tests need from Debian, when it is missing.
#
# Idempotent: when everything is present it changes nothing and does not even run
# `apt-get update`. Works as root, or through sudo when run as another user.
# Everything it does is reported on stderr.
set -euo pipefail

log() { echo "setup: $*" >&2; }

# Each requirement is "<debian package> <probe>": the package is needed when the probe fails.
# A probe is a command name (looked up on PATH) or an absolute path that must exist.
REQUIREMENTS=(
    # protoc, run by proto/build.rs through tonic-prost-build.
    "protobuf-compiler protoc"
    # The well-known types (google/protobuf/*.proto) protoc resolves imports against.
    "libprotobuf-dev /usr/include/google/protobuf/timestamp.proto"
    # zstd, the baseline of scripts/bench-packed.sh.
    "zstd zstd"
    # etcd 3.4, the controller's HA store backend; its tests start a real `etcd` process
    # (see scripts/etcd.sh and controller/src/store/etcd_tests.rs).
    "etcd-server etcd"
)

is_present() {
    local probe=$1
    if [[ $probe == /* ]]; then
        [[ -e $probe ]]
    else
        command -v "$probe" >/dev/null 2>&1
    fi
}

missing=()
for requirement in "${REQUIREMENTS[@]}"; do
    read -r package probe <<<"$requirement"
    if is_present "$probe"; then
        log "$package: present ($probe)"
    else
        log "$package: missing ($probe not found)"
        missing+=("$package")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "nothing to install"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "cannot install ${missing[*]}: apt-get not found; install them with your package manager"
    exit 1
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "cannot install ${missing[*]}: not root and sudo not found; run as root"
        exit 1
    fi
    # Without a terminal sudo cannot ask for a password: fail at once instead of hanging.
    if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
fi

export DEBIAN_FRONTEND=noninteractive
log "running: ${as_root[*]:+${as_root[*]} }apt-get update"
"${as_root[@]}" apt-get update -q >&2
log "running: ${as_root[*]:+${as_root[*]} }apt-get install -y --no-install-recommends ${missing[*]}"
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2

for requirement in "${REQUIREMENTS[@]}"; do
    read -r package probe <<<"$requirement"
    if ! is_present "$probe"; then
        log "$package was installed but $probe is still missing"
        exit 1
    fi
done
log "installed ${missing[*]}"
