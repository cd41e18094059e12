#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""compare.py - zkmem against glibc, jemalloc, mimalloc and tcmalloc, interleaved.

For every workload (zkbench's, at 1 and 2 threads, plus two real programs) and every
allocator, runs R repetitions round-robin: repetition r runs each job once under every
allocator, with the allocator order rotated by r, so drift on this noisy machine is spread
evenly. Each run must prove which allocator served it (zkbench's "allocator" field, the
python workload's own dladdr(malloc), the library mapped into sqlite3); a run that does not
is a failed run, never a result.

Reports per job and allocator the median and min-max of throughput, p99 latency, RSS peak
and RSS after free, and the ratios zkmem / best peer (throughput: >= 1.0 is the target;
RSS: <= 1.10). Writes bench/results/<date>-compare.{md,json} and gnuplot PNGs.

Python 3 standard library only.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time

import benchlib
from benchlib import Daemon

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIBDIR = "/usr/lib/x86_64-linux-gnu"
PEERS = [
    ("glibc", None),
    ("jemalloc", LIBDIR + "/libjemalloc.so.2"),
    ("mimalloc", LIBDIR + "/libmimalloc.so.2"),
    ("tcmalloc", LIBDIR + "/libtcmalloc.so.4"),
]
# (workload, threads); ops come from zkbench's defaults unless --quick.
ZKBENCH_JOBS = [(w, t) for w in ("pairs", "ring10k", "live100k", "large", "realloc", "touch",
                                 "plan") for t in (1, 2)] + [("xthread", 2)]
QUICK_OPS = {"pairs": 1000000, "ring10k": 1000000, "live100k": 500000, "large": 10000,
             "xthread": 200000, "realloc": 50000, "touch": 30000, "plan": 1000000}
PROGRAMS = ["python", "sqlite"]

PY_WORKLOAD = r'''
import sys, threading, json
N = int(sys.argv[1])
def work(seed, out):
    x = seed
    d = {}
    rows = []
    for i in range(N):
        x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        k = "k%d" % (x % (N // 2 + 1))
        d[k] = [i, str(x)[: 1 + x % 17], (i, x % 1000)]
        if i % 7 == 0:
            rows.append({"id": i, "tag": k * (1 + x % 5)})
        if len(rows) > 4000:
            del rows[:2000]
    blob = json.dumps(rows)
    back = json.loads(blob)
    s = sorted(d.items(), key=lambda kv: (len(kv[1][1]), kv[0]))
    out.append((len(d), len(back), s[0][0], s[-1][0], sum(len(v[1]) for v in d.values())))
res = []
ts = [threading.Thread(target=work, args=(s, res)) for s in (1, 2)]
for t in ts: t.start()
for t in ts: t.join()
print(sorted(res))
# proof of the allocator in effect and this process's own peak RSS, for the runner
print(open("/proc/self/maps").read(), end="")
print("".join(l for l in open("/proc/self/status") if l.startswith(("VmHWM", "HugetlbPages"))),
      end="")
'''


def sqlite_script(rows):
    return f"""
PRAGMA cache_size=-65536;
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c BLOB);
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows})
INSERT INTO t SELECT i, hex(randomblob(8 + i % 40)), (i * 7919) % 1000,
                      zeroblob(16 + (i * 31) % 600) FROM s;
CREATE INDEX t_b ON t(b);
CREATE INDEX t_a ON t(a);
UPDATE t SET a = a || 'x' WHERE b % 3 = 0;
DELETE FROM t WHERE b % 5 = 1;
SELECT count(*), sum(length(a)), sum(length(c)) FROM t;
SELECT b, count(*) FROM t GROUP BY b ORDER BY count(*) DESC, b LIMIT 3;
CREATE TABLE u AS SELECT b, group_concat(substr(a, 1, 4)) AS g FROM t GROUP BY b;
SELECT count(*), max(length(g)) FROM u;
"""


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def machine_info():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "glibc": platform.libc_ver()[1],
        "packages": sh("dpkg-query -W -f '${Package} ${Version}\\n' libjemalloc2 "
                       "libmimalloc2.0 libgoogle-perftools4 libc6 sqlite3 python3.11"),
        "thp": sh("cat /sys/kernel/mm/transparent_hugepage/enabled"),
        "nr_hugepages": sh("cat /proc/sys/vm/nr_hugepages"),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git": sh(f"git -C {shlex.quote(ROOT)} rev-parse --short HEAD 2>/dev/null")
               or "no commit",
    }


def same_lib(reported, expected):
    """Is `reported` (a path from dladdr or /proc/maps) the library `expected`?"""
    if not reported:
        return False
    try:
        return os.path.realpath(reported) == os.path.realpath(expected)
    except OSError:
        return False


def is_glibc(path):
    b = os.path.basename(path or "")
    return b.startswith("libc.so") or b.startswith("libc-")


NICE = 0  # --nice: scheduling priority of the measured processes
TIMEOUT = 180  # --timeout: seconds before a run is killed and counted as failed


def _set_nice():
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)


def hugetlb_sampler(pid, stop, peak):
    """Every 2 ms until stop is set: the largest HugetlbPages (kB) of pid in peak[0], and the
    largest VmRSS + HugetlbPages read together in peak[1]. The kernel keeps no high-water
    mark of hugetlb pages, and a process that returns slabs drops them from its page tables
    (zkmem does), so the value at exit can be below the peak. VmHWM plus the largest
    HugetlbPages adds two peaks that may not be at the same time (an upper bound); the
    sampled sum is the same measure for every allocator, at 2 ms resolution."""
    path = f"/proc/{pid}/status"
    while not stop.is_set():
        try:
            rss = huge = None
            with open(path) as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        rss = int(ln.split()[1])
                    elif ln.startswith("HugetlbPages:"):
                        huge = int(ln.split()[1])
                        break
            if huge is not None:
                peak[0] = max(peak[0], huge)
                peak[1] = max(peak[1], huge + (rss or 0))
        except (OSError, ValueError):
            return
        stop.wait(0.002)


def run_proc(argv, env, stdin_data=None, timeout=None):
    """Run argv; return (rc, stdout, stderr, wall_seconds, [sampled HugetlbPages peak kB,
    sampled VmRSS + HugetlbPages peak kB])."""
    timeout = timeout or TIMEOUT
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, preexec_fn=_set_nice if NICE else None, stdin=subprocess.PIPE if stdin_data else
                         subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    stop, peak = threading.Event(), [0, 0]
    sampler = threading.Thread(target=hugetlb_sampler, args=(p.pid, stop, peak), daemon=True)
    sampler.start()
    try:
        out, err = p.communicate(stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        stop.set()
        return -9, out, err + f"\ntimed out after {timeout:.0f} s", time.perf_counter() - t0, [0, 0]
    stop.set()
    sampler.join()
    return p.returncode, out, err, time.perf_counter() - t0, peak


class Runner:
    def __init__(self, args):
        self.args = args
        self.zkbench = args.zkbench
        self.allocs = []  # (name, preload or None)
        for name, lib in PEERS:
            if name not in args.allocators:
                continue
            if lib and not os.path.exists(lib):
                sys.exit(f"compare.py: {lib} missing; apt-get install -y libjemalloc2 "
                         "libmimalloc2.0 libgoogle-perftools4")
            self.allocs.append((name, lib))
        self.zkmem_label = None
        self.daemon = None
        self.hugepage_note = ""
        if "zkmem" in args.allocators:
            if os.path.exists(args.zkmem):
                self.zkmem_label = "zkmem" if args.zkmemd else "zkmem-local"
                self.allocs.append((self.zkmem_label, os.path.abspath(args.zkmem)))
            else:
                print(f"compare.py: {args.zkmem} not built: comparing the peers only",
                      file=sys.stderr)
        self.results = {}  # job -> alloc -> list of run dicts
        self.failures = []
        self.expected_output = {}

    def env_for(self, name, lib):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        for k in [k for k in env if k.startswith("ZKMEM_")]:
            del env[k]
        if lib:
            env["LD_PRELOAD"] = lib
        if name == self.zkmem_label:
            if self.daemon:
                env["ZKMEM_SOCKET"] = self.daemon.sock
                env["ZKMEM_REQUIRE_DAEMON"] = "1"  # a silent local fallback fails the run
            else:
                env["ZKMEM_SOCKET"] = "/nonexistent/zkmemd.sock"  # local mode, on purpose
            for kv in self.args.zkmem_env:
                k, _, v = kv.partition("=")
                env[k] = v
        return env

    def check_alloc(self, name, lib, reported):
        if lib is None:
            return is_glibc(reported)
        return same_lib(reported, lib)

    # --- one run -------------------------------------------------------------------
    def run_zkbench(self, job, name, lib):
        w, t = job
        argv = [self.zkbench, w, "--threads", str(t), "--seed", str(self.args.seed)]
        if self.args.quick:
            argv += ["--ops", str(QUICK_OPS[w])]
        rc, out, err, wall, _ = run_proc(argv, self.env_for(name, lib))
        line = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            d = json.loads(line)
        except ValueError:
            return None, f"rc={rc} no JSON; stderr: {err.strip()[-300:]}"
        if rc != 0:
            return None, f"rc={rc}; stderr: {err.strip()[-300:]}"
        if not self.check_alloc(name, lib, d.get("allocator")):
            return None, (f"allocator in effect was {d.get('allocator')!r}, expected "
                          f"{lib or 'glibc'}; stderr: {err.strip()[-200:]}")
        return d, None

    def run_program(self, prog, name, lib):
        """A real program; it prints its own /proc maps, VmHWM and HugetlbPages at the end
        (ru_maxrss of a child would carry the forking Python's peak across exec)."""
        env = self.env_for(name, lib)
        env["PYTHONMALLOC"] = "malloc"
        if prog == "python":
            n = 20000 if self.args.quick else 60000
            argv = [self.args.python, "-c", PY_WORKLOAD, str(n)]
            rc, out, err, wall, huge_seen = run_proc(argv, env)
        else:
            rows = 5000 if self.args.quick else 60000
            probe = ".shell cat /proc/$PPID/maps; grep -e VmHWM -e HugetlbPages /proc/$PPID/status\n"
            argv = ["sqlite3", ":memory:"]
            rc, out, err, wall, huge_seen = run_proc(argv, env, sqlite_script(rows) + probe)
        if rc != 0:
            return None, f"rc={rc}; stderr: {err.strip()[-300:]}"
        lines = out.splitlines()
        maps = {ln.split()[-1] for ln in lines if len(ln.split()) >= 6 and
                ln.split()[-1].startswith("/") and "-" in ln.split()[0]}
        # peak = VmHWM (small pages) + the largest HugetlbPages, sampled every 2 ms and at
        # exit (zkmem's daemon slabs are hugetlb, which VmRSS/VmHWM do not count)
        hwm = [int(ln.split()[1]) for ln in lines if ln.startswith("VmHWM")]
        huge = [int(ln.split()[1]) for ln in lines if ln.startswith("HugetlbPages")]
        if hwm:
            hwm.append(max(huge + [huge_seen[0]]))
        body = "\n".join(ln for ln in lines
                         if not ln.startswith(("VmHWM", "HugetlbPages")) and not (len(ln.split()) >= 5 and
                         "-" in ln.split()[0] and ln.split()[1][:1] in "r-"))
        libs = [p for _, p in PEERS if p] + [self.args.zkmem]
        mapped = [m for m in maps if any(same_lib(m, x) for x in libs)]
        if lib:
            ok = any(same_lib(m, lib) for m in mapped) and len(mapped) == 1
        else:
            ok = not mapped
        if not ok or not hwm:
            return None, f"allocator not in effect (mapped: {mapped}); {err[-200:]}"
        ref = self.expected_output.setdefault(prog, body)
        if body != ref:
            return None, "output differs from the first allocator's output"
        return {"workload": prog, "threads": 2 if prog == "python" else 1, "seconds": wall,
                "ops_per_sec": 1.0 / wall, "rss_peak_kb": sum(hwm), "rss_after_free_kb": None,
                "rss_sampled_peak_kb": huge_seen[1] or None,
                "p99_ns": None, "allocator": lib or "glibc"}, None

    # --- the interleaved schedule ----------------------------------------------------
    def jobs(self):
        js = [j for j in ZKBENCH_JOBS if j[0] in self.args.workloads]
        if self.args.programs:
            js += [(p, 0) for p in PROGRAMS if p in self.args.workloads]
        return js

    def run(self):
        if self.args.zkmemd and self.zkmem_label:
            self.hugepage_note = benchlib.prefault()
            self.daemon = Daemon(self.args.zkmemd, prefix="zkbench-zkmemd-")
        try:
            jobs = self.jobs()
            total = len(jobs) * len(self.allocs) * self.args.reps
            k = 0
            for r in range(self.args.reps):
                for job in jobs:
                    rot = r % len(self.allocs)
                    for name, lib in self.allocs[rot:] + self.allocs[:rot]:
                        k += 1
                        if job[1] == 0:
                            d, why = self.run_program(job[0], name, lib)
                        else:
                            d, why = self.run_zkbench(job, name, lib)
                        if self.daemon and name == self.zkmem_label and not self.daemon.alive():
                            why = (why or "") + " zkmemd died:\n" + self.daemon.tail()
                            d = None
                        key = f"{job[0]}/{job[1]}t" if job[1] else job[0]
                        if d is None:
                            self.failures.append({"job": key, "allocator": name, "rep": r,
                                                  "why": why})
                            print(f"[{k}/{total}] {key:12s} {name:12s} FAILED: {why}",
                                  file=sys.stderr)
                            continue
                        self.results.setdefault(key, {}).setdefault(name, []).append(d)
                        print(f"[{k}/{total}] {key:12s} {name:12s} "
                              f"{d['ops_per_sec'] / 1e6:10.3f} M/s", file=sys.stderr)
        finally:
            if self.daemon:
                self.daemon_log = self.daemon.tail(40)
                self.daemon.stop()


# --- summary, tables, plots ----------------------------------------------------------

def summarize(runs, field):
    vals = [r[field] for r in runs if r.get(field) is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def fmt_rate(s, programs=False):
    if not s:
        return "—"
    if programs:  # shown as seconds per run
        return f"{1 / s['median']:.3f} s ({1 / s['max']:.3f}–{1 / s['min']:.3f})"
    m = 1e6
    return f"{s['median'] / m:.2f} ({s['min'] / m:.2f}–{s['max'] / m:.2f})"


def fmt_mib(s):
    return "—" if not s else f"{s['median'] / 1024:.1f}"


def build_summary(runner):
    allocs = [a for a, _ in runner.allocs]
    peers = [a for a in allocs if a != runner.zkmem_label]
    summary = {}
    for key, per in runner.results.items():
        row = {}
        for a in allocs:
            runs = per.get(a, [])
            row[a] = {f: summarize(runs, f) for f in ("ops_per_sec", "p99_ns", "rss_peak_kb",
                                                        "rss_after_free_kb", "mem_efficiency",
                                                        "rss_sampled_peak_kb")}
            if a == runner.zkmem_label and runs and runs[-1].get("zkmem_stats"):
                row[a]["zkmem_stats"] = runs[-1]["zkmem_stats"]
        best = max((p for p in peers if row[p]["ops_per_sec"]),
                   key=lambda p: row[p]["ops_per_sec"]["median"], default=None)
        lowrss = min((p for p in peers if row[p]["rss_peak_kb"]),
                     key=lambda p: row[p]["rss_peak_kb"]["median"], default=None)
        z = row.get(runner.zkmem_label) if runner.zkmem_label else None
        ratio = rss_ratio = None
        if z and best and z["ops_per_sec"]:
            ratio = z["ops_per_sec"]["median"] / row[best]["ops_per_sec"]["median"]
        if z and lowrss and z["rss_peak_kb"]:
            rss_ratio = z["rss_peak_kb"]["median"] / row[lowrss]["rss_peak_kb"]["median"]
        summary[key] = {"per_alloc": row, "best_peer": best, "ratio": ratio,
                        "lowest_rss_peer": lowrss, "rss_ratio": rss_ratio}
    return summary


def markdown(runner, summary, info, cmdline):
    allocs = [a for a, _ in runner.allocs]
    z = runner.zkmem_label
    out = []
    out.append(f"# zkmem allocator comparison — {info['date']}\n")
    out.append(f"Command: `{cmdline}`  ")
    out.append(f"Machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, "
               f"glibc {info['glibc']}, THP `{info['thp']}`, nr_hugepages {info['nr_hugepages']}, "
               f"git {info['git']}  ")
    out.append(f"Repetitions: {runner.args.reps} interleaved (allocator order rotated per "
               f"repetition){' — QUICK mode, reduced ops' if runner.args.quick else ''}; "
               f"nice {runner.args.nice}; load average at start {info['loadavg']}.  ")
    if z == "zkmem":
        out.append("zkmem: daemon-backed (`zkmemd` in a temporary runtime dir, "
                   "`ZKMEM_REQUIRE_DAEMON=1`). " + runner.hugepage_note)
    elif z == "zkmem-local":
        out.append("zkmem: **local mode, no daemon** (`--zkmemd` not given).")
    else:
        out.append("zkmem: not built at the time of this run — peers only.")
    out.append("")
    out.append("## Throughput: median Mops/s (min–max); programs: median seconds per run "
               "(min–max)\n")
    hdr = "| workload | " + " | ".join(allocs) + " | best peer | zkmem ÷ best |"
    out.append(hdr)
    out.append("|" + "---|" * (len(allocs) + 3))
    for key, s in summary.items():
        prog = "/" not in key
        cells = [fmt_rate(s["per_alloc"][a]["ops_per_sec"], prog) for a in allocs]
        r = f"**{s['ratio']:.2f}**" if s["ratio"] is not None else "—"
        out.append(f"| {key} | " + " | ".join(cells) + f" | {s['best_peer'] or '—'} | {r} |")
    out.append("")
    out.append("## Memory: median RSS peak / RSS after free (MiB)\n")
    out.append("| workload | " + " | ".join(allocs) + " | lowest-RSS peer | zkmem ÷ lowest |")
    out.append("|" + "---|" * (len(allocs) + 3))
    for key, s in summary.items():
        cells = []
        for a in allocs:
            pa = s["per_alloc"][a]
            cells.append(f"{fmt_mib(pa['rss_peak_kb'])} / {fmt_mib(pa['rss_after_free_kb'])}")
        r = f"**{s['rss_ratio']:.2f}**" if s["rss_ratio"] is not None else "—"
        out.append(f"| {key} | " + " | ".join(cells) +
                   f" | {s['lowest_rss_peer'] or '—'} | {r} |")
    out.append("")
    progs = [k for k, s in summary.items() if "/" not in k and
             all(s["per_alloc"][a].get("rss_sampled_peak_kb") for a in allocs)]
    if progs:
        out.append("Programs: the RSS peak above is VmHWM + the largest HugetlbPages, two peaks "
                   "that may fall at different times (an upper bound, and only zkmem has "
                   "hugetlb pages). The same programs, peak of VmRSS + HugetlbPages read "
                   "together every 2 ms, the same measure for every allocator (MiB, median):\n")
        out.append("| program | " + " | ".join(allocs) + " | zkmem ÷ lowest peer |")
        out.append("|" + "---|" * (len(allocs) + 2))
        for key in progs:
            pa = summary[key]["per_alloc"]
            cells = [fmt_mib(pa[a]["rss_sampled_peak_kb"]) for a in allocs]
            ratio = "—"
            if z and z in pa:
                low = min(pa[a]["rss_sampled_peak_kb"]["median"] for a in allocs if a != z)
                ratio = f"{pa[z]['rss_sampled_peak_kb']['median'] / low:.2f}"
            out.append(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")
        out.append("")
    out.append("## Latency (sampled, one op in P) p99 ns, and memory efficiency "
               "(live requested bytes ÷ RSS growth)\n")
    out.append("| workload | " + " | ".join(f"{a} p99" for a in allocs) + " | " +
               " | ".join(f"{a} eff" for a in allocs) + " |")
    out.append("|" + "---|" * (2 * len(allocs) + 1))
    for key, s in summary.items():
        if "/" not in key:
            continue
        p = [s["per_alloc"][a]["p99_ns"] for a in allocs]
        e = [s["per_alloc"][a]["mem_efficiency"] for a in allocs]
        out.append(f"| {key} | " +
                   " | ".join("—" if not x else f"{x['median']:.0f}" for x in p) + " | " +
                   " | ".join("—" if not x else f"{x['median']:.2f}" for x in e) + " |")
    out.append("")
    if z:
        rs = [s["ratio"] for s in summary.values() if s["ratio"] is not None]
        met = sum(1 for x in rs if x >= 1.0)
        rss_ok = sum(1 for s in summary.values()
                     if s["rss_ratio"] is not None and s["rss_ratio"] <= 1.10)
        out.append(f"Targets: throughput ratio ≥ 1.0 on {met}/{len(rs)} workloads; "
                   f"RSS peak ≤ 1.10 × lowest peer on {rss_ok}/{len(rs)}.\n")
        stats = [(k, s["per_alloc"][z].get("zkmem_stats")) for k, s in summary.items()
                 if s["per_alloc"].get(z, {}).get("zkmem_stats")]
        for k, st in stats:
            out.append(f"zkmem's own stats ({k}): `{json.dumps(st)}`\n")
    if runner.failures:
        out.append(f"## Failed runs ({len(runner.failures)})\n")
        for f in runner.failures[:50]:
            out.append(f"- {f['job']} {f['allocator']} rep {f['rep']}: "
                       f"{f['why'].strip()[:300]}")
        out.append("")
    out.append("Workload definitions and how to reproduce: `bench/README.md`.")
    return "\n".join(out) + "\n"


def plots(runner, summary, base):
    if not shutil.which("gnuplot"):
        print("compare.py: gnuplot not found; no plots", file=sys.stderr)
        return []
    allocs = [a for a, _ in runner.allocs]
    keys = [k for k in summary if all(summary[k]["per_alloc"][a]["ops_per_sec"]
                                      for a in allocs)]
    made = []
    # 1. throughput per workload, relative to the best peer (absolute values span 4 orders)
    dat = base + "-throughput.dat"
    with open(dat, "w") as f:
        f.write("workload " + " ".join(allocs) + "\n")
        for k in keys:
            s = summary[k]
            best = s["best_peer"]
            bm = s["per_alloc"][best]["ops_per_sec"]["median"]
            f.write(k + " " + " ".join(f"{s['per_alloc'][a]['ops_per_sec']['median'] / bm:.4f}"
                                        for a in allocs) + "\n")
    png = base + "-throughput.png"
    cols = " , ".join(f"'{dat}' using {i + 2}:xtic(1) title columnheader({i + 2})"
                      for i in range(len(allocs)))
    gp = f"""set terminal pngcairo size 1400,600 noenhanced font ',10'
set output '{png}'
set title 'Throughput relative to the best peer per workload (median of {runner.args.reps})'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set ylabel 'ops/s / best peer'
set yrange [0:*]
set offsets 0, 0, 0.1, 0
set grid ytics
set xtics rotate by -35
set key outside right top
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2
plot {cols}
"""
    if subprocess.run(["gnuplot"], input=gp, text=True).returncode == 0:
        made.append(png)
    # 1b. absolute throughput, log scale (zkbench workloads in Mops/s; programs in runs/s)
    dat_abs = base + "-throughput-abs.dat"
    with open(dat_abs, "w") as f:
        f.write("workload " + " ".join(allocs) + "\n")
        for k in keys:
            scale = 1e6 if "/" in k else 1.0
            f.write(k + " " + " ".join(
                f"{summary[k]['per_alloc'][a]['ops_per_sec']['median'] / scale:.5g}"
                for a in allocs) + "\n")
    png_abs = base + "-throughput-abs.png"
    cols = " , ".join(f"'{dat_abs}' using {i + 2}:xtic(1) title columnheader({i + 2})"
                      for i in range(len(allocs)))
    gp = f"""set terminal pngcairo size 1400,600 noenhanced font ',10'
set output '{png_abs}'
set title 'Throughput per workload, median of {runner.args.reps}: Mops/s (zkbench), runs/s (python, sqlite)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set yrange [0.1:*]
set grid ytics mytics
set xtics rotate by -35
set key outside right top
plot {cols}
"""
    if subprocess.run(["gnuplot"], input=gp, text=True).returncode == 0:
        made.append(png_abs)
    # 2. zkmem / best peer ratio per workload
    if runner.zkmem_label:
        rk = [k for k in summary if summary[k]["ratio"] is not None]
        dat2 = base + "-ratio.dat"
        with open(dat2, "w") as f:
            for k in rk:
                r = summary[k]["rss_ratio"]
                f.write(f"{k} {summary[k]['ratio']:.4f} {r if r is not None else 0:.4f}\n")
        png2 = base + "-ratio.png"
        gp2 = f"""set terminal pngcairo size 1400,600 noenhanced font ',10'
set output '{png2}'
set title 'zkmem ÷ best peer: throughput (target >= 1.0) and RSS peak vs lowest peer (target <= 1.10)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set yrange [0:*]
set grid ytics
set xtics rotate by -35
set key outside right top
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2
set arrow from graph 0, first 1.1 to graph 1, first 1.1 nohead dt 3 lc rgb 'red'
plot '{dat2}' using 2:xtic(1) title 'throughput ratio', '' using 3 title 'RSS peak ratio'
"""
        if subprocess.run(["gnuplot"], input=gp2, text=True).returncode == 0:
            made.append(png2)
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zkbench", default=os.path.join(ROOT, "build-bench/bench/zkbench"))
    ap.add_argument("--zkmem", default=os.path.join(ROOT,
                                                    "build-bench/client-lib/libzkmem-preload.so"))
    ap.add_argument("--zkmemd", help="zkmemd binary: zkmem runs are daemon-backed "
                    "(otherwise zkmem runs in local mode, labelled zkmem-local)")
    ap.add_argument("--zkmem-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for zkmem runs (e.g. ZKMEM_MODE=high_performance)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 rep, reduced ops")
    ap.add_argument("--allocators", default="glibc,jemalloc,mimalloc,tcmalloc,zkmem")
    ap.add_argument("--workloads", default=",".join(sorted({w for w, _ in ZKBENCH_JOBS}) +
                                                     PROGRAMS))
    ap.add_argument("--no-programs", dest="programs", action="store_false")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="interpreter for the python workload (not a pyenv shim)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="compare")
    ap.add_argument("--no-plots", dest="plots", action="store_false")
    ap.add_argument("--timeout", type=float, default=180,
                    help="seconds before one run is killed (and counted as a failed run)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run measured processes at this nice value (e.g. -10 on a shared "
                    "machine; root only for negative values)")
    args = ap.parse_args()
    global NICE, TIMEOUT
    NICE = args.nice
    TIMEOUT = args.timeout
    if args.quick and "--reps" not in sys.argv:
        args.reps = 1
    args.allocators = args.allocators.split(",")
    args.workloads = args.workloads.split(",")
    if not os.access(args.zkbench, os.X_OK):
        sys.exit(f"compare.py: {args.zkbench} not found; build it: meson compile -C build-bench")

    cmdline = "python3 bench/compare.py " + shlex.join(sys.argv[1:])
    info = machine_info()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runner = Runner(args)
    t0 = time.time()
    runner.run()
    summary = build_summary(runner)
    md = markdown(runner, summary, info, cmdline)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, datetime.date.today().isoformat() + "-" + args.tag)
    pngs = plots(runner, summary, base) if args.plots else []
    if pngs:
        md += "\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})"
                               for p in pngs) + "\n"
    with open(base + ".md", "w") as f:
        f.write(md)
    with open(base + ".json", "w") as f:
        json.dump({"command": cmdline, "machine": info, "reps": args.reps, "quick": args.quick,
                   "allocators": dict(runner.allocs), "zkmem_mode": runner.zkmem_label,
                   "elapsed_s": time.time() - t0, "summary": summary,
                   "runs": runner.results, "failures": runner.failures,
                   "daemon_log_tail": getattr(runner, "daemon_log", None)}, f, indent=1)
    print(md)
    print(f"wrote {base}.md {base}.json " + " ".join(pngs), file=sys.stderr)
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
