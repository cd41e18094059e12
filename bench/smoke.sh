#!/bin/sh
# SPDX-License-Identifier: MIT
# smoke.sh - every zkbench workload once with a small --ops, under the system allocator
# and, if it is built, under libzkmem-preload.so. Checks that each prints valid JSON with
# a positive rate and the expected allocator. Not a benchmark: no figures are kept.
#
#   bench/smoke.sh [BUILD_DIR]        (default: build-bench)
set -eu
cd "$(dirname "$0")/.."
B=${1:-build-bench}
Z=$B/bench/zkbench
P=$B/client-lib/libzkmem-preload.so
[ -x "$Z" ] || { echo "smoke.sh: $Z not built" >&2; exit 1; }

check() { # $1: expected allocator basename prefix; stdin: one JSON line
    python3 -c '
import json, os, sys
d = json.loads(sys.stdin.read().strip().splitlines()[-1])
a = os.path.basename(d["allocator"])
ok = d["ops_per_sec"] > 0 and a.startswith(sys.argv[1])
print("ok  " if ok else "FAIL", d["workload"], d["threads"], "threads", a,
      "%.1f Mops/s" % (d["ops_per_sec"] / 1e6))
sys.exit(0 if ok else 1)' "$1"
}

fail=0
run() { # $1: expected allocator, $2: preload or empty
    for w in pairs:200000 ring10k:200000 live100k:100000 large:2000 xthread:50000 \
             realloc:20000 touch:5000 plan:200000; do
        for t in 1 2; do
            [ "${w%%:*}" = xthread ] && [ $t = 1 ] && continue # always 2 threads
            out=$(LD_PRELOAD=$2 "$Z" "${w%%:*}" --ops "${w##*:}" --threads $t) || { fail=1; continue; }
            echo "$out" | check "$1" || fail=1
        done
    done
}
run libc.so ""
if [ -e "$P" ]; then run libzkmem-preload "$(realpath "$P")"; else echo "skip: $P not built"; fi
exit $fail
