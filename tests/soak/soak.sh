#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# tests/soak/soak.sh - everything at once against one real zkmemd, for a chosen time.
#
#   tests/soak/soak.sh [--minutes N | --seconds N] [--build DIR] [--seed S]
#                      [--strict-hugepages] [--keep]
#
# Starts zkmemd (DIR/daemon/zkmemd, default DIR: build) in a temporary runtime dir and,
# for N minutes (default 10), runs together:
#   stress     DIR/tests/test-stress-alloc in a loop (the allocator's multi-threaded
#              content-checked stress test, here served by the daemon; STRESS_OPS from
#              $SOAK_STRESS_OPS, default 100000)
#   python     workload.py churn (4 s, two threads, checked content) under
#              LD_PRELOAD=libzkmem-preload.so with PYTHONMALLOC=malloc, in a loop
#   resident   one workload.py resident for the whole run: 20 checked buffers, replaced
#              a few at a time, and a burst of 36 x 1.5 MiB per round (more than the
#              allocator caches), so it needs new slabs soon after every daemon restart
#   storm      waves of $SOAK_STORM_CLIENTS (default 4) clients - zkbench under the
#              preload, slab-latency on the slab API, Python churn - each SIGKILLed 0-500
#              ms after it was started (before, during or after its HELLO)
#   hostile    every 5 s a burst of hostile.py: garbage, oversized, truncated and early
#              messages, fds attached, garbage after a good HELLO, an unsupported
#              version, idle connections; each must be hung up on (or refused)
#   restart    every 20-40 s: SIGKILL of zkmemd and a new one on the same runtime dir while
#              all of the above run; the resident client must reconnect by itself (it
#              shows up in `zkmemctl clients` of the new daemon within 20 s)
# Then it stops the clients, waits for the daemon to see none, and checks:
#   - no client failed (stress, python, resident; storm clients that exited on their own
#     with an error other than a refusal: -EAGAIN while a restarted daemon recovers, ENOMEM
#     from an exhausted arena, no daemon during a restart), every hostile message was answered, the daemon never died unasked,
#     every restart came up and was reconnected to, SIGTERM stops it with status 0, and
#     its log has no assertion or sanitizer report;
#   - the daemon holds nothing: granted_slabs 0, free_slabs == capacity, n_clients 0,
#     no hugetlb/shmem memory allocated in its memfds, no more descriptors than the
#     baseline of the first daemon before any client;
#   - protocol_errors of the last daemon >= the hostile messages it was sent, and no
#     control-block violations (no client here scribbles its control block);
#   - with --strict-hugepages, HugePages_Free after == before (system-wide: only on a
#     machine where nothing else uses hugepages; reported either way).
# Prints the numbers and "soak: PASS" or "soak: FAIL (reasons)"; exit 0 only on PASS
# (2: usage or missing binaries). The work dir is removed unless --keep or a failure.
#
# Needs root only for what the daemon needs (hugepages; it falls back to small pages).
# Not part of .ci/run (too long). See README.md here.
set -uo pipefail

MINUTES=10
SECS=
BUILD=build
SEED=$$
STRICT_HUGE=0
KEEP=0

usage() {
    sed -n '6,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --minutes) MINUTES=${2:?}; shift 2 ;;
    --seconds) SECS=${2:?}; shift 2 ;;
    --build) BUILD=${2:?}; shift 2 ;;
    --seed) SEED=${2:?}; shift 2 ;;
    --strict-hugepages) STRICT_HUGE=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage ;;
    *) echo "soak: unknown argument '$1'" >&2; usage ;;
    esac
done
case "$MINUTES${SECS}" in *[!0-9]*) echo "soak: --minutes/--seconds take whole numbers" >&2; exit 2 ;; esac
DURATION=${SECS:-$((MINUTES * 60))}

HERE=$(cd "$(dirname "$0")" && pwd)
B=$(cd "$BUILD" 2>/dev/null && pwd) || { echo "soak: no build dir '$BUILD'" >&2; exit 2; }
ZKMEMD=$B/daemon/zkmemd
CTL=$B/ctl/zkmemctl
PRELOAD=$B/client-lib/libzkmem-preload.so
STRESS=$B/tests/test-stress-alloc
ZKBENCH=$B/bench/zkbench
SLABLAT=$B/bench/slab-latency
# the real interpreter (LD_PRELOAD on a wrapper script would preload the shell instead)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
for f in "$ZKMEMD" "$CTL" "$PRELOAD" "$STRESS" "$ZKBENCH" "$SLABLAT" "$PY"; do
    [ -e "$f" ] || { echo "soak: $f is missing (build it: meson compile -C $BUILD)" >&2; exit 2; }
done
# Under ASan or TSan the sanitizer's runtime owns malloc: a preloaded zkmem is not what the
# Python and zkbench clients would run on (test-preload skips for the same reason), and
# preloading an instrumented library without its runtime first crashes every program.
san=$(ldd "$PRELOAD" 2>/dev/null | grep -o -E 'lib(a|t|ub)san\.so[.0-9]*' | head -n 1)
if [ -n "$san" ]; then
    echo "soak: $BUILD is a sanitizer build ($san): its preload library cannot serve the" \
        "Python and zkbench clients. Soak a plain or debugoptimized build; the sanitizer" \
        "suites run in tools/zk test (asan, tsan stages)." >&2
    exit 2
fi
STRESS_OPS=${SOAK_STRESS_OPS:-100000}
STORM_CLIENTS=${SOAK_STORM_CLIENTS:-4}

# Descriptors inherited from whoever started us would be inherited by the daemon too and
# blur its descriptor count.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
done

RUN=$(mktemp -d "${TMPDIR:-/tmp}/zkmem-soak.XXXXXX") || exit 2
chmod 755 "$RUN"
SOCK=$RUN/zkmemd.sock
CONF=$RUN/zkmemd.conf
LOG=$RUN/zkmemd.log
# grant_depth 1: fewer idle pre-granted slabs per client, so that the load fits in the 256
# hugepages CI reserves (SOAK_DAEMON_CONFIG adds lines)
printf '# tests/soak/soak.sh\nruntime_dir = %s\ngrant_depth = 1\n%s\n' "$RUN" \
    "${SOAK_DAEMON_CONFIG:-}" >"$CONF"
echo 0 >"$RUN/restarts"
RANDOM=$SEED

DPID=
RPID=
BG_PIDS=()
say() { printf 'soak: %s\n' "$*" >&2; }

cleanup() {
    touch "$RUN/stop"
    for p in "${BG_PIDS[@]}"; do # the loops' current clients, then the loops
        pkill -9 -P "$p" 2>/dev/null
        kill -9 "$p" 2>/dev/null
    done
    [ -n "$RPID" ] && kill -9 "$RPID" 2>/dev/null
    [ -n "$DPID" ] && kill -9 "$DPID" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- daemon -----------------------------------------------------------------------------

ctl() { timeout 10 "$CTL" --socket "$SOCK" --json "$@" 2>/dev/null; }

# JSON field(s) from zkmemctl: `jq_status FIELD`, `jq_arenas FIELD` (summed over nodes).
jq_status() { ctl status | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["status"][sys.argv[1]])' "$1"; }
jq_arenas() {
    ctl arenas | "$PY" -c 'import json,sys; print(sum(a[sys.argv[1]] for a in json.load(sys.stdin)["arenas"]))' "$1"
}
client_pids() { ctl clients | "$PY" -c 'import json,sys; print(" ".join(str(c["pid"]) for c in json.load(sys.stdin)["clients"]))'; }
client_slabs() { # $1 pid: slabs its session holds (leased), empty if it has none
    ctl clients | "$PY" -c 'import json,sys
print(" ".join(str(c["slabs"]) for c in json.load(sys.stdin)["clients"] if c["pid"] == int(sys.argv[1])))' "$1"
}

daemon_start() {
    rm -f "$SOCK" # a killed daemon's socket can outlive it for a moment
    "$ZKMEMD" --config "$CONF" >>"$LOG" 2>&1 &
    DPID=$!
    for _ in $(seq 1 200); do
        alive "$DPID" || { say "zkmemd exited at start; log: $LOG"; return 1; }
        [ -S "$SOCK" ] && ctl status >/dev/null && return 0
        sleep 0.05
    done
    say "zkmemd did not answer within 10 s"
    return 1
}

daemon_fds() { ls "/proc/$DPID/fd" 2>/dev/null | wc -l; }

# Bytes allocated in the daemon's memfds (node memory and control blocks): hugetlb or
# shmem pages it holds, whatever HugePages_Free on a shared machine says.
daemon_memfd_bytes() {
    local f
    for f in /proc/"$DPID"/fd/*; do
        case $(readlink "$f" 2>/dev/null) in
        /memfd:*) stat -L -c '%i %b' "$f" 2>/dev/null ;;
        esac
    done | sort -u | awk '{ n += $2 * 512 } END { print n + 0 }' # one count per inode
}

hugepages_free() { awk '/^HugePages_Free/ {print $2}' /proc/meminfo; }

# ---- activities (each a background loop until $RUN/stop; one line per iteration) ----------

stopping() { [ -e "$RUN/stop" ]; }

# kill -0 also succeeds on a zombie (a child that died and was not reaped yet)
alive() {
    local st
    st=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ]
}

# Signs that a failed client ran out of memory (the arenas were exhausted) in file $1.
# (aligned_alloc = (nil): stress-alloc; pthread_create: a thread stack from the allocator;
# "Fatal Python error" at start-up: the interpreter could not allocate its runtime; a
# KeyError in threading's _delete: CPython 3.11 failed to register a starting thread (an
# allocation in _bootstrap_inner) and then hangs in Thread.start())
OOM_RE='MemoryError|Cannot allocate memory|alloc failed|alloc\([0-9, ]*\) (failed|= \(nil\))|ENOMEM|memory allocation failed|pthread_create failed|Fatal Python error|del _active\[get_ident\(\)\]'
oom_in() { grep -q -E "$OOM_RE" "$1" 2>/dev/null; }

stress_loop() {
    local i=0 rc
    while ! stopping; do
        i=$((i + 1))
        STRESS_OPS=$STRESS_OPS ZKMEM_SOCKET=$SOCK CK_DEFAULT_TIMEOUT=600 timeout -k 5 600 \
            "$STRESS" >"$RUN/stress.$i.log" 2>&1
        rc=$?
        if [ $rc -eq 0 ]; then
            echo ok >>"$RUN/stress.events"
            rm -f "$RUN/stress.$i.log"
        elif oom_in "$RUN/stress.$i.log"; then
            echo "fail-oom run $i exit $rc (log $RUN/stress.$i.log)" >>"$RUN/stress.events"
        else
            echo "fail run $i exit $rc (log $RUN/stress.$i.log)" >>"$RUN/stress.events"
        fi
    done
}

# A Python run under the preload, killed if it hangs (a thread whose start meets
# MemoryError leaves Thread.start() waiting forever).
preloaded_py() {
    timeout -k 5 "$1" env PYTHONMALLOC=malloc ZKMEM_SOCKET="$SOCK" LD_PRELOAD="$PRELOAD" \
        "$PY" "$HERE/workload.py" "${@:2}"
}

python_loop() {
    local i=0 rc slabs
    while ! stopping; do
        i=$((i + 1))
        ZKMEM_STATS_FD=3 preloaded_py 60 churn --seconds 4 --seed "$i" \
            3>"$RUN/py.$i.stats" >"$RUN/py.$i.log" 2>&1
        rc=$?
        slabs=$(sed -n 's/.* daemon_slabs=\([0-9]*\).*/\1/p' "$RUN/py.$i.stats")
        if [ $rc -eq 0 ] && [ -n "$slabs" ]; then
            echo "ok daemon_slabs=$slabs" >>"$RUN/python.events"
            rm -f "$RUN/py.$i.log" "$RUN/py.$i.stats"
        elif oom_in "$RUN/py.$i.log"; then # (exit 124: hung after a MemoryError)
            echo "fail-oom run $i exit $rc (log $RUN/py.$i.log)" >>"$RUN/python.events"
        else
            echo "fail run $i exit $rc stats '${slabs:-none}' (log $RUN/py.$i.log)" >>"$RUN/python.events"
        fi
    done
}

storm_client() { # $1 kind: a client that runs until killed
    case $1 in
    0)
        local ws=(pairs xthread realloc)
        ZKMEM_SOCKET=$SOCK LD_PRELOAD=$PRELOAD exec "$ZKBENCH" "${ws[RANDOM % 3]}" \
            --ops 100000000 --threads 2 >/dev/null
        ;;
    1) exec "$SLABLAT" --socket "$SOCK" --iters 100000000 --hold 2 >/dev/null ;;
    2)
        PYTHONMALLOC=malloc ZKMEM_SOCKET=$SOCK LD_PRELOAD=$PRELOAD exec "$PY" \
            "$HERE/workload.py" churn --seconds 60 --seed $RANDOM >/dev/null
        ;;
    esac
}

storm_loop() {
    local wave=0 r0 r1 i x0 x1 what err
    while ! stopping; do
        wave=$((wave + 1))
        r0=$(cat "$RUN/restarts")
        x0=$(jq_arenas exhausted_total)
        local pids=() kinds=() sts=()
        for i in $(seq 1 "$STORM_CLIENTS"); do
            kinds[i]=$((RANDOM % 3))
            storm_client "${kinds[i]}" 2>"$RUN/storm.$i.err" &
            pids[i]=$!
        done
        for i in $(seq 1 "$STORM_CLIENTS"); do
            sleep "0.$(printf '%03d' $((RANDOM % 500)))"
            kill -9 "${pids[i]}" 2>/dev/null
        done
        for i in $(seq 1 "$STORM_CLIENTS"); do
            wait "${pids[i]}"
            sts[i]=$?
        done
        r1=$(cat "$RUN/restarts")
        x1=$(jq_arenas exhausted_total)
        for i in $(seq 1 "$STORM_CLIENTS"); do
            err=$RUN/storm.$i.err
            if [ "${sts[i]}" -eq 137 ]; then
                what=killed
            elif [ "${sts[i]}" -eq 0 ]; then
                what=finished
            elif grep -q 'Resource temporarily unavailable' "$err"; then
                what=recovering # refused (-EAGAIN) while a restarted daemon recovers
            elif [ "$r1" != "$r0" ] || [ $((r0 % 2)) = 1 ]; then
                what=restart-exit
            elif oom_in "$err"; then
                what=oom # the arena was exhausted: a refusal, as designed (no fallback)
            elif [ "${kinds[i]}" = 0 ] && [ "${sts[i]}" -eq 139 ] && [ "${x1:-0}" != "${x0:-0}" ]; then
                what=oom # zkbench does not check malloc on its timed paths: NULL -> SIGSEGV
            else
                what=fail
            fi
            case $what in
            killed | finished) echo "$what" >>"$RUN/storm.events" ;;
            *)
                echo "$what wave $wave kind ${kinds[i]} status ${sts[i]}: $(head -c 300 "$err" | tr '\n' ' ')" \
                    >>"$RUN/storm.events"
                ;;
            esac
            rm -f "$err"
        done
        sleep "0.$(printf '%03d' $((RANDOM % 1000)))"
    done
}

count() { # $1 events file, $2 regexp
    if [ -f "$1" ]; then grep -c -E "$2" "$1"; else echo 0; fi
}

# ---- run --------------------------------------------------------------------------------

say "build $B, work dir $RUN, ${DURATION}s, seed $SEED"
HP_BEFORE=$(hugepages_free)
HP_TOTAL_BEFORE=$(awk '/^HugePages_Total/ {print $2}' /proc/meminfo)
daemon_start || exit 1
FD_BASE=$(daemon_fds)
CAPACITY=$(jq_arenas capacity_slabs)
FREE_BEFORE=$(jq_arenas free_slabs)
BACKING=$(jq_status backing)
say "zkmemd pid $DPID: $FD_BASE fds, $CAPACITY slabs capacity, $FREE_BEFORE free, backing $BACKING"

# a simple command, so that $! is the Python process itself (the clients list shows it)
PYTHONMALLOC=malloc ZKMEM_SOCKET=$SOCK LD_PRELOAD=$PRELOAD "$PY" "$HERE/workload.py" resident \
    --stop-file "$RUN/stop" --status-file "$RUN/resident.status" >"$RUN/resident.log" 2>&1 &
RPID=$!
stress_loop &
BG_PIDS+=($!)
python_loop &
BG_PIDS+=($!)
storm_loop 2>>"$RUN/storm.jobs" & # bash's "Killed" notices
BG_PIDS+=($!)

RESTARTS=0 RESTART_FAIL=0 CRASHES=0 RECONNECT_OK=0 RECONNECT_FAIL=0 RESIDENT_DIED=0
PE_EARLIER=0 VIOL_EARLIER=0 EXH_EARLIER=0 HOSTILE_EXPECTED=0
H_BURSTS=0 H_SENT=0 H_HANGUPS=0 H_REFUSED=0 H_UNANSWERED=0 H_CONNFAIL=0
RECONNECT_MAX=0
RES_SLABS=() RES_SLABS_MAX=0
# The resident's lease is bounded by what it uses: 20 buffers (up to 1 MiB each in slabs),
# the 36-slab burst and the 32 empty slabs the allocator caches, plus slack.
RES_SLABS_BOUND=${SOAK_RESIDENT_MAX_SLABS:-128}

hostile_burst() {
    local out
    out=$("$PY" "$HERE/hostile.py" "$SOCK" --seed $RANDOM --idle 50 2>>"$RUN/hostile.stderr")
    [ -n "$out" ] || { H_UNANSWERED=$((H_UNANSWERED + 1)); return; }
    H_BURSTS=$((H_BURSTS + 1))
    read -r s h r u c e < <(echo "$out" | "$PY" -c 'import json,sys
d = json.load(sys.stdin)
print(d["sent"], d["hangups"], d["refused"], d["unanswered"], d["conn_failed"], d["errors_expected"])')
    H_SENT=$((H_SENT + s)) H_HANGUPS=$((H_HANGUPS + h)) H_REFUSED=$((H_REFUSED + r))
    H_UNANSWERED=$((H_UNANSWERED + u)) H_CONNFAIL=$((H_CONNFAIL + c))
    HOSTILE_EXPECTED=$((HOSTILE_EXPECTED + e))
    [ "$u" -eq 0 ] || echo "$out" >>"$RUN/hostile.failures"
}

# Counters die with a daemon: keep what the old one said just before it is killed.
bank_counters() {
    local pe v x
    pe=$(jq_status protocol_errors) && PE_EARLIER=$((PE_EARLIER + pe))
    v=$(jq_status violations) && VIOL_EARLIER=$((VIOL_EARLIER + v))
    x=$(jq_arenas exhausted_total) && EXH_EARLIER=$((EXH_EARLIER + x))
}

wait_reconnect() { # the resident client is served by the new daemon
    local t0=$SECONDS
    while [ $((SECONDS - t0)) -lt 20 ]; do
        alive "$RPID" || return 1
        case " $(client_pids) " in *" $RPID "*)
            local took=$((SECONDS - t0)) n
            [ $took -gt $RECONNECT_MAX ] && RECONNECT_MAX=$took
            n=$(client_slabs "$RPID")
            if [ -n "$n" ]; then
                RES_SLABS+=("$n")
                [ "$n" -gt "$RES_SLABS_MAX" ] && RES_SLABS_MAX=$n
            fi
            return 0
            ;;
        esac
        sleep 0.2
    done
    return 1
}

restart_daemon() {
    bank_counters
    # the epoch in $RUN/restarts is odd while no daemon answers (storm_loop reads it)
    echo $((2 * RESTARTS + 1)) >"$RUN/restarts"
    kill -9 "$DPID"
    wait "$DPID" 2>/dev/null
    RESTARTS=$((RESTARTS + 1))
    HOSTILE_EXPECTED=0
    if ! daemon_start; then
        RESTART_FAIL=$((RESTART_FAIL + 1))
        sleep 1
        daemon_start
    fi
    echo $((2 * RESTARTS)) >"$RUN/restarts"
    if wait_reconnect; then
        RECONNECT_OK=$((RECONNECT_OK + 1))
    else
        RECONNECT_FAIL=$((RECONNECT_FAIL + 1))
        say "restart $RESTARTS: the resident client did not reconnect within 20 s"
    fi
}

T_END=$((SECONDS + DURATION))
next_hostile=$((SECONDS + 5))
next_restart=$((SECONDS + 20 + RANDOM % 21))
next_report=$((SECONDS + 60))
while [ $SECONDS -lt $T_END ]; do
    sleep 1
    if ! alive "$DPID"; then
        wait "$DPID"
        say "zkmemd died unasked (status $?); starting another"
        CRASHES=$((CRASHES + 1))
        HOSTILE_EXPECTED=0
        daemon_start || { sleep 1; daemon_start; }
    fi
    if [ $RESIDENT_DIED -eq 0 ] && ! alive "$RPID"; then
        RESIDENT_DIED=1
        say "the resident client exited early: $(tail -n 3 "$RUN/resident.log")"
    fi
    if [ $SECONDS -ge $next_hostile ]; then
        hostile_burst
        next_hostile=$((SECONDS + 5))
    fi
    if [ $SECONDS -ge $next_restart ]; then
        restart_daemon
        next_restart=$((SECONDS + 20 + RANDOM % 21))
    fi
    if [ $SECONDS -ge $next_report ]; then
        say "$((T_END - SECONDS))s left: stress $(count "$RUN/stress.events" .), python" \
            "$(count "$RUN/python.events" .), storm clients $(count "$RUN/storm.events" .)," \
            "hostile $H_SENT, restarts $RESTARTS"
        next_report=$((SECONDS + 60))
    fi
done

# ---- wind down and measure ----------------------------------------------------------------

say "time is up: stopping the clients"
touch "$RUN/stop"
for p in "${BG_PIDS[@]}"; do wait "$p"; done
BG_PIDS=()
read -r RESIDENT_ROUNDS RESIDENT_REFUSED <"$RUN/resident.status" 2>/dev/null
RESIDENT_ROUNDS=${RESIDENT_ROUNDS:-0} RESIDENT_REFUSED=${RESIDENT_REFUSED:-0}
wait "$RPID"
RESIDENT_RC=$?
RPID=

# (the capacity of the last daemon: each one sizes its arena from the hugepages free when
# it starts)
settled() {
    [ "$(jq_status n_clients)" = 0 ] && [ "$(jq_arenas granted_slabs)" = 0 ] &&
        [ "$(jq_arenas cached_slabs)" = 0 ] &&
        [ "$(jq_arenas free_slabs)" = "$(jq_arenas capacity_slabs)" ] &&
        [ "$(daemon_fds)" -le "$FD_BASE" ]
}
for _ in $(seq 1 100); do
    settled && break
    sleep 0.2
done
N_CLIENTS=$(jq_status n_clients)
GRANTED=$(jq_arenas granted_slabs)
PREGRANTED=$(jq_arenas pregranted_slabs)
CACHED=$(jq_arenas cached_slabs)
CAPACITY_END=$(jq_arenas capacity_slabs)
FREE_AFTER=$(jq_arenas free_slabs)
FD_END=$(daemon_fds)
MEMFD_BYTES=$(daemon_memfd_bytes)
PE_LAST=$(jq_status protocol_errors)
VIOL_LAST=$(jq_status violations)
EXH_LAST=$(jq_arenas exhausted_total)
HP_AFTER=$(hugepages_free)
HP_TOTAL_AFTER=$(awk '/^HugePages_Total/ {print $2}' /proc/meminfo)
kill -TERM "$DPID"
DSTOP=timeout
for _ in $(seq 1 100); do
    if ! alive "$DPID"; then
        wait "$DPID"
        DSTOP=$?
        break
    fi
    sleep 0.1
done
DPID=
LOG_BAD=$(grep -c -E 'AddressSanitizer|UndefinedBehaviorSanitizer|runtime error:|assertion failed|Assertion' "$LOG")

S_OK=$(count "$RUN/stress.events" '^ok')
S_FAIL=$(count "$RUN/stress.events" '^fail')
S_OOM=$(count "$RUN/stress.events" '^fail-oom')
P_OK=$(count "$RUN/python.events" '^ok')
P_FAIL=$(count "$RUN/python.events" '^fail')
P_OOM=$(count "$RUN/python.events" '^fail-oom')
P_DAEMON=$(count "$RUN/python.events" '^ok daemon_slabs=[1-9]')
C_KILLED=$(count "$RUN/storm.events" '^killed')
C_FINISHED=$(count "$RUN/storm.events" '^finished')
C_RESTART=$(count "$RUN/storm.events" '^restart-exit')
C_RECOVER=$(count "$RUN/storm.events" '^recovering')
C_FAIL=$(count "$RUN/storm.events" '^fail')
C_OOM=$(count "$RUN/storm.events" '^oom')
PE_TOTAL=$((PE_EARLIER + ${PE_LAST:-0}))
VIOL_TOTAL=$((VIOL_EARLIER + ${VIOL_LAST:-0}))

cat <<EOF
soak: ---- numbers (${DURATION}s, seed $SEED, build $B) ----
soak: stress-alloc runs:        $S_OK ok, $S_FAIL failed ($S_OOM out of memory) (STRESS_OPS=$STRESS_OPS)
soak: python churn runs:        $P_OK ok ($P_DAEMON served by zkmemd), $P_FAIL failed ($P_OOM out of memory)
soak: resident client:          $RESIDENT_ROUNDS rounds ($RESIDENT_REFUSED bursts cut short by an exhausted arena), exit $RESIDENT_RC
soak: storm clients:            $((C_KILLED + C_FINISHED + C_RESTART + C_RECOVER + C_OOM + C_FAIL)) started: $C_KILLED SIGKILLed, $C_FINISHED finished first, $C_RESTART exited in a restart, $C_RECOVER refused while the daemon recovered (slab API, -EAGAIN), $C_OOM refused by an exhausted arena (ENOMEM), $C_FAIL failed
soak: hostile messages:         $H_SENT in $H_BURSTS bursts: $H_HANGUPS hung up on, $H_REFUSED refused, $H_UNANSWERED unanswered, $H_CONNFAIL not accepted (daemon restarting)
soak: daemon restarts:          $RESTARTS (SIGKILL), $RESTART_FAIL slow to start, $CRASHES unasked deaths; resident reconnected $RECONNECT_OK times (slowest ${RECONNECT_MAX}s), $RECONNECT_FAIL not
soak: resident's lease:          ${RES_SLABS[*]:-none} slabs after each restart (max $RES_SLABS_MAX, bound $RES_SLABS_BOUND)
soak: daemon fds:               $FD_BASE at start, $FD_END at the end
soak: daemon slabs:             first daemon: capacity $CAPACITY, $FREE_BEFORE free; last daemon at the end: capacity ${CAPACITY_END:-?}, ${FREE_AFTER:-?} free, ${GRANTED:-?} granted, ${PREGRANTED:-?} pre-granted, ${CACHED:-?} cached, ${N_CLIENTS:-?} clients
soak: daemon memfd pages:       ${MEMFD_BYTES} bytes allocated at the end
soak: HugePages_Free:           $HP_BEFORE before, $HP_AFTER after (Total $HP_TOTAL_BEFORE -> $HP_TOTAL_AFTER; system-wide)
soak: protocol_errors:          $PE_TOTAL in all ($PE_LAST from the last daemon, which was sent $HOSTILE_EXPECTED hostile messages)
soak: violations:               $VIOL_TOTAL
soak: arenas exhausted:         $((EXH_EARLIER + ${EXH_LAST:-0})) times (a request the daemon could not serve)
soak: daemon stop:              status $DSTOP, $LOG_BAD assertion/sanitizer lines in its log
EOF

REASONS=()
fail() { REASONS+=("$*"); }
[ "$S_OK" -gt 0 ] || fail "no stress run completed"
[ "$S_FAIL" -eq 0 ] || fail "$S_FAIL stress runs failed"
[ "$P_OK" -gt 0 ] || fail "no python run completed"
[ "$P_DAEMON" -gt 0 ] || fail "no python run was served by zkmemd"
[ "$P_FAIL" -eq 0 ] || fail "$P_FAIL python runs failed"
[ "$RESIDENT_RC" -eq 0 ] && [ "$RESIDENT_ROUNDS" -gt 0 ] || fail "resident client failed"
[ "$C_KILLED" -gt 0 ] || fail "no storm client was killed"
[ "$C_FAIL" -eq 0 ] || fail "$C_FAIL storm clients failed"
[ "$H_HANGUPS" -gt 0 ] || fail "no hostile message was sent"
[ "$H_UNANSWERED" -eq 0 ] || fail "$H_UNANSWERED hostile messages not answered as they must be"
[ "$DURATION" -lt 60 ] || [ "$RESTARTS" -gt 0 ] || fail "no daemon restart"
[ "$RESTART_FAIL" -eq 0 ] || fail "$RESTART_FAIL restarts did not come up in 10 s"
[ "$CRASHES" -eq 0 ] || fail "zkmemd died $CRASHES times unasked"
[ "$RECONNECT_FAIL" -eq 0 ] || fail "$RECONNECT_FAIL restarts without the resident reconnecting"
[ "$RES_SLABS_MAX" -le "$RES_SLABS_BOUND" ] ||
    fail "the resident's lease grew to $RES_SLABS_MAX slabs (bound $RES_SLABS_BOUND)"
[ "${N_CLIENTS:-1}" = 0 ] || fail "daemon still sees ${N_CLIENTS:-?} clients"
[ "${GRANTED:-1}" = 0 ] || fail "${GRANTED:-?} slabs still granted"
[ "${CACHED:-1}" = 0 ] || fail "${CACHED:-?} slabs still cached"
[ -n "$FREE_AFTER" ] && [ "$FREE_AFTER" = "$CAPACITY_END" ] ||
    fail "free slabs ${FREE_AFTER:-?} != capacity ${CAPACITY_END:-?}"
[ "$MEMFD_BYTES" -eq 0 ] || fail "daemon memfds still hold $MEMFD_BYTES bytes"
[ "$FD_END" -le "$FD_BASE" ] || fail "daemon fds $FD_END > baseline $FD_BASE"
[ "${PE_LAST:-0}" -ge "$HOSTILE_EXPECTED" ] || fail "protocol_errors $PE_LAST < $HOSTILE_EXPECTED hostile messages"
[ "$VIOL_TOTAL" -eq 0 ] || fail "$VIOL_TOTAL control-block violations"
[ "$DSTOP" = 0 ] || fail "zkmemd stop status $DSTOP"
[ "$LOG_BAD" -eq 0 ] || fail "assertion or sanitizer report in the daemon log"
if [ "$STRICT_HUGE" = 1 ] && [ "$HP_AFTER" != "$HP_BEFORE" ]; then
    fail "HugePages_Free $HP_BEFORE before, $HP_AFTER after"
fi

if [ $((S_OOM + P_OOM)) -gt 0 ]; then
    say "clients failed for want of memory: the arenas were exhausted (a lease that grows," \
        "other hugepage users on this machine, or fewer than 256 hugepages); see README.md"
fi
trap - EXIT
if [ ${#REASONS[@]} -eq 0 ]; then
    echo "soak: PASS"
    [ "$KEEP" = 1 ] && say "work dir kept: $RUN" || rm -rf "$RUN"
    exit 0
fi
echo "soak: FAIL ($(IFS=';'; echo "${REASONS[*]}"))"
say "work dir kept for inspection: $RUN (zkmemd.log, *.events, failing runs' logs)"
exit 1
