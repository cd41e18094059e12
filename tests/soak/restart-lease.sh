#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# tests/soak/restart-lease.sh - does a client's lease stay bounded across daemon restarts?
#
#   tests/soak/restart-lease.sh [--build DIR] [--restarts N] [--every SECONDS] [--no-restart]
#
# One zkmemd in a temporary dir and one `workload.py resident` under the preload (its
# working set is bounded: see workload.py). Every SECONDS (default 3) it prints the
# resident's leased slabs and bytes in use from `zkmemctl --json clients`, then SIGKILLs
# the daemon and starts another (unless --no-restart: the baseline). Exit 1 when the lease
# ever exceeds $SOAK_RESIDENT_MAX_SLABS (default 128) slabs, else 0. The focused form of
# the soak's "resident's lease" check.
set -uo pipefail

BUILD=build RESTARTS=20 EVERY=3 RESTART=1
while [ $# -gt 0 ]; do
    case $1 in
    --build) BUILD=${2:?}; shift 2 ;;
    --restarts) RESTARTS=${2:?}; shift 2 ;;
    --every) EVERY=${2:?}; shift 2 ;;
    --no-restart) RESTART=0; shift ;;
    *) sed -n '6p' "$0" | sed 's/^# //' >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
B=$(cd "$BUILD" && pwd) || exit 2
BOUND=${SOAK_RESIDENT_MAX_SLABS:-128}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
D=$(mktemp -d "${TMPDIR:-/tmp}/zkmem-lease.XXXXXX") || exit 2
printf 'runtime_dir = %s\n' "$D" >"$D/zkmemd.conf"
DP='' RP=''
cleanup() {
    touch "$D/stop"
    [ -n "$RP" ] && { wait "$RP" 2>/dev/null || true; }
    [ -n "$DP" ] && kill "$DP" 2>/dev/null && wait "$DP" 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT

start() {
    rm -f "$D/zkmemd.sock"
    "$B/daemon/zkmemd" --config "$D/zkmemd.conf" >>"$D/zkmemd.log" 2>&1 &
    DP=$!
    for _ in $(seq 1 200); do
        [ -S "$D/zkmemd.sock" ] && return 0
        sleep 0.05
    done
    echo "restart-lease: zkmemd did not start" >&2
    exit 2
}

lease() { # "slabs MiB-in-use" of the resident, or nothing
    "$B/ctl/zkmemctl" --socket "$D/zkmemd.sock" --json clients 2>/dev/null | "$PY" -c '
import json, sys
for c in json.load(sys.stdin)["clients"]:
    if c["pid"] == int(sys.argv[1]):
        print(c["slabs"], c["bytes_in_use"] >> 20)' "$RP"
}

start
PYTHONMALLOC=malloc ZKMEM_SOCKET=$D/zkmemd.sock LD_PRELOAD=$B/client-lib/libzkmem-preload.so \
    "$PY" "$HERE/workload.py" resident --stop-file "$D/stop" --status-file "$D/status" \
    >"$D/resident.log" 2>&1 &
RP=$!
max=0
for r in $(seq 1 "$RESTARTS"); do
    sleep "$EVERY"
    read -r slabs mib < <(lease)
    echo "restart-lease: step $r: resident holds ${slabs:-?} slabs, ${mib:-?} MiB in use"
    [ -n "${slabs:-}" ] && [ "$slabs" -gt "$max" ] && max=$slabs
    if [ "$RESTART" = 1 ]; then
        kill -9 "$DP"
        wait "$DP" 2>/dev/null
        start
    fi
done
echo "restart-lease: largest lease $max slabs (bound $BOUND), $RESTARTS steps, restarts: $RESTART"
[ "$max" -le "$BOUND" ]
