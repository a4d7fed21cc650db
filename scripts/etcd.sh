#!/usr/bin/env bash
# Runs a local etcd for trying fleetmig's etcd store by hand: one member, or three with
# --members 3, on loopback, with the settings fleetmig needs (--max-txn-ops 1024).
#
#   bash scripts/etcd.sh                    # one member, clients on 127.0.0.1:2379
#   bash scripts/etcd.sh --members 3        # members on 2379, 22379, 32379
#   bash scripts/etcd.sh --port 12379 --dir /tmp/my-etcd
#
# Stays in the foreground until Ctrl-C (or SIGTERM), then stops every member. Data lives in
# --dir (default: a new temporary directory, removed on exit). Prints the --store URL to use.
# The tests do not use this script: they start their own etcd on free ports.
set -euo pipefail

log() { echo "etcd.sh: $*" >&2; }

members=1
port=2379
dir=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --members) members=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) log "unknown argument $1"; exit 2 ;;
    esac
done
if [[ $members != 1 && $members != 3 ]]; then
    log "--members must be 1 or 3"
    exit 2
fi

etcd_bin=${FLEETMIG_ETCD:-$(command -v etcd || true)}
if [[ -z $etcd_bin ]]; then
    log "etcd is not installed: run bash scripts/setup.sh"
    exit 1
fi

cleanup_dir=""
if [[ -z $dir ]]; then
    dir=$(mktemp -d -t fleetmig-etcd.XXXXXX)
    cleanup_dir=$dir
fi
mkdir -p "$dir"

# Member i serves clients on port + i*10000 and peers on that + 1.
client_port() { echo $((port + $1 * 10000)); }
peer_port() { echo $((port + $1 * 10000 + 1)); }

cluster=""
for ((i = 0; i < members; i++)); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$(peer_port "$i")"
done

pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $cleanup_dir ]]; then rm -rf "$cleanup_dir"; fi
    log "stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

endpoints=""
for ((i = 0; i < members; i++)); do
    client="http://127.0.0.1:$(client_port "$i")"
    peer="http://127.0.0.1:$(peer_port "$i")"
    endpoints+="${endpoints:+,}127.0.0.1:$(client_port "$i")"
    "$etcd_bin" \
        --name "m$i" \
        --data-dir "$dir/m$i" \
        --listen-client-urls "$client" \
        --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" \
        --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$cluster" \
        --initial-cluster-state new \
        --max-txn-ops 1024 \
        --logger zap \
        --log-level warn \
        >>"$dir/m$i.log" 2>&1 &
    pids+=("$!")
done

log "started $members member(s), data and logs in $dir"
log "store URL: etcd://$endpoints"
wait -n "${pids[@]}" || true
log "a member exited; see $dir/*.log"
exit 1
