#!/bin/sh
# SPDX-License-Identifier: MIT
# run-slab.sh - slab acquisition latency against a private zkmemd.
#
#   bench/run-slab.sh [BUILD_DIR] [slab-latency args...]     (default BUILD_DIR: build-bench)
#
# Starts BUILD_DIR/daemon/zkmemd in a temporary runtime dir twice: once with its embedded
# default config (grant ring pre-filled: the pairs pass measures ring pops), once with
# `grant_depth = 0` (nothing pre-granted: every acquisition is a round trip), and runs
# BUILD_DIR/bench/slab-latency against each. Hugepages are used if the admin reserved
# some (sysctl vm.nr_hugepages=N); the script reports which, it does not change them.
set -eu
cd "$(dirname "$0")/.."
B=build-bench
if [ $# -gt 0 ] && [ -d "$1" ]; then B=$1; shift; fi
D=$B/daemon/zkmemd
L=$B/bench/slab-latency
[ -x "$D" ] || { echo "run-slab.sh: $D not built (meson compile -C $B)" >&2; exit 1; }
[ -x "$L" ] || { echo "run-slab.sh: $L not built (meson compile -C $B)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/zkm-slab.XXXXXX)
rc=0
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

start_daemon() { # $1: label, rest: extra zkmemd args
    label=$1; shift
    rm -rf "$tmp/run"; mkdir -p "$tmp/run"
    "$D" --runtime-dir "$tmp/run" "$@" >"$tmp/$label.log" 2>&1 &
    pid=$!
    i=0
    while [ ! -S "$tmp/run/zkmemd.sock" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run-slab.sh: zkmemd ($label) exited:" >&2; cat "$tmp/$label.log" >&2; exit 1
        fi
        i=$((i + 1)); [ $i -lt 200 ] || { echo "run-slab.sh: no socket after 10 s" >&2; exit 1; }
        sleep 0.05
    done
}
stop_daemon() {
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

echo "# $(date -u '+%F %T UTC') $(nproc) CPUs, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# HugePages_Total $(awk '/HugePages_Total/ {print $2}' /proc/meminfo), HugePages_Free $(awk '/HugePages_Free/ {print $2}' /proc/meminfo)"

echo "## zkmemd with its default config (pre-granted ring)"
start_daemon default
ZKMEM_SOCKET=$tmp/run/zkmemd.sock "$L" "$@" || rc=1
stop_daemon
grep -i -m3 'hugepage\|fallback\|shmem' "$tmp/default.log" | sed 's/^/# zkmemd: /' || true

echo "## zkmemd with grant_depth = 0 (every acquisition a round trip)"
printf 'grant_depth = 0\n' >"$tmp/depth0.conf"
start_daemon depth0 --config "$tmp/depth0.conf"
ZKMEM_SOCKET=$tmp/run/zkmemd.sock "$L" "$@" || rc=1
stop_daemon
exit $rc
