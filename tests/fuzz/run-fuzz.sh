#!/bin/sh
# run-fuzz.sh TARGET SECONDS [--merge]
#
# Bounded libFuzzer run of tests/fuzz/fuzz-TARGET (proto, config, alloc) for CI and by hand.
# Builds it if needed in $ZKM_FUZZ_BUILDDIR (default: <repo>/build-clang, configured with
# CC=clang -Dfuzz=true). New inputs go to a scratch directory, never into the committed
# corpus, unless --merge is given: then the scratch findings are minimised into
# tests/fuzz/corpus/TARGET with -merge=1 (review and commit the new files).
# Crash reproducers are written to $ZKM_FUZZ_ARTIFACTS (default: a scratch directory) and
# the script exits non-zero. Uses one job per available core unless ZKM_FUZZ_JOBS is set.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET SECONDS [--merge]   (TARGET: proto, config, alloc)" >&2
    exit 2
fi
target=$1
seconds=$2
merge=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${ZKM_FUZZ_BUILDDIR:-$root/build-clang}
corpus=$here/corpus/$target

if [ ! -d "$corpus" ]; then
    echo "run-fuzz: no corpus directory $corpus (unknown target '$target'?)" >&2
    exit 2
fi
if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$root" -Dfuzz=true >/dev/null
fi
meson compile -C "$build" "tests/fuzz/fuzz-$target" >/dev/null
bin=$build/tests/fuzz/fuzz-$target
if [ ! -x "$bin" ]; then
    echo "run-fuzz: $bin was not built: is $build configured with CC=clang -Dfuzz=true?" >&2
    exit 2
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/zkm-fuzz-$target.XXXXXX")
artifacts=${ZKM_FUZZ_ARTIFACTS:-$scratch/artifacts}
mkdir -p "$scratch/new" "$artifacts"
jobs=${ZKM_FUZZ_JOBS:-1}

status=0
parallel=
if [ "$jobs" -gt 1 ]; then
    parallel="-jobs=$jobs -workers=$jobs"
fi
# libFuzzer writes fuzz-N.log into the current directory with -jobs
cd "$scratch"
# shellcheck disable=SC2086
"$bin" -max_total_time="$seconds" -max_len=8400 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" $parallel \
    "$scratch/new" "$corpus" >"$scratch/log" 2>&1 || status=$?
cat "$scratch"/fuzz-*.log >>"$scratch/log" 2>/dev/null || true
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
    "$scratch/log" || true

if [ "$status" -ne 0 ]; then
    echo "run-fuzz: fuzz-$target FAILED (exit $status); last lines of the log:" >&2
    tail -n 40 "$scratch/log" >&2
    echo "run-fuzz: reproducers in $artifacts (replay: $build/tests/fuzz/fuzz-replay-$target FILE)" >&2
    exit 1
fi
if [ "$merge" = "--merge" ]; then
    "$bin" -merge=1 -max_len=8400 "$corpus" "$scratch/new" >>"$scratch/log" 2>&1
    echo "run-fuzz: corpus/$target now holds $(ls "$corpus" | wc -l) inputs"
fi
cd /
rm -rf "$scratch"
echo "run-fuzz: fuzz-$target ran ${seconds}s without a failure"
