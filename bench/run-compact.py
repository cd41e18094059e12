#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""run-compact.py - does background compaction and adaptive tuning pay for themselves?

Runs the bench/compact/ workloads under glibc, jemalloc, mimalloc, tcmalloc and zkmem
(LD_PRELOAD), zkmem against a real zkmemd started in a temporary runtime dir with a
generated config, once per daemon variant:

  giveback  1 GiB of 16-256 B objects in ten generations, nine freed, 3 s idle;
            zkmem with enable_compaction = yes and = no
  randfree  the same 1 GiB, 90% freed at random, then 512 MiB of 512 B-8 KiB objects;
            zkmem with enable_compaction = yes and = no
  handover  a small arena: client A bursts to 3/4 of it, frees, idles; client B then
            allocates the same; zkmem with enable_compaction = yes and = no
  ramp      allocation rate doubling every 0.5 s for 5 s, all kept live;
            zkmem with enable_tuning = yes and = no
  burst     the same doubling demand arriving in bursts (16 MiB requested at once, then
            idle until the schedule is due), buffers touched once per page;
            zkmem with enable_tuning = yes and = no

While a workload runs, a sampler takes every --interval-ms (50): the daemon's view
(`zkmemctl --json stats`: the client records of the workload's pids, the arenas, the
status), HugePages_Free from /proc/meminfo and the process's VmRSS + HugetlbPages. The
workload prints its own phase lines (bench/compact/cb.h) on the same clock
(CLOCK_MONOTONIC). Every run must prove its allocator (the program's `allocator=` line is
the preloaded library, or glibc's libc) and, for zkmem, that the daemon saw the process as
a client; a run that does not is listed as failed, never as a figure.

Hugepages: raises vm.nr_hugepages so that enough are free for the largest arena and puts
the previous value back at the end (also on Ctrl-C). Without permission the daemon runs on
its small-page fallback, and the report says so.

Writes bench/results/<date>-<tag>.md (tables, the exact command line at the top) and
<date>-<tag>-samples.csv / -phases.csv (raw data). Python 3 standard library only.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import signal
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
    ("glibc", None, None),
    ("jemalloc", LIBDIR + "/libjemalloc.so.2", "libjemalloc2"),
    ("mimalloc", LIBDIR + "/libmimalloc.so.2", "libmimalloc2.0"),
    ("tcmalloc", LIBDIR + "/libtcmalloc.so.4", "libgoogle-perftools4"),
]
WORKLOADS = ["giveback", "randfree", "handover", "ramp", "burst"]
# cb-ramp's arguments beyond size and seed, per ramp workload
RAMP_ARGS = {"ramp": [],
             "burst": ["--chunk-kib", "16384", "--touch", "page", "--min", "4096",
                       "--max", "65536"]}
# daemon variants per workload: (label suffix, config keys)
VARIANTS = {
    "giveback": [("compact=on", {"enable_compaction": "yes"}),
                 ("compact=off", {"enable_compaction": "no"})],
    "randfree": [("compact=on", {"enable_compaction": "yes"}),
                 ("compact=off", {"enable_compaction": "no"})],
    "handover": [("compact=on", {"enable_compaction": "yes"}),
                 ("compact=off", {"enable_compaction": "no"})],
    "ramp": [("tuning=on", {"enable_tuning": "yes"}),
             ("tuning=off", {"enable_tuning": "no"})],
}
VARIANTS["burst"] = VARIANTS["ramp"]
MIB = 1024 * 1024

# --------------------------------------------------------------------------------------
# small helpers


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def now_ms():
    return time.monotonic() * 1000.0  # CLOCK_MONOTONIC, the clock of the phase lines


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k.startswith("HugePages_"):
                out[k] = int(v.split()[0])
    return out


def proc_mem(pid):
    """(VmRSS + HugetlbPages, HugetlbPages) in kB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "HugetlbPages"):
            vals[k] = int(v.split()[0])
    if "VmRSS" not in vals:
        return None  # a zombie has no VmRSS
    huge = vals.get("HugetlbPages", 0)
    return vals["VmRSS"] + huge, huge


def same_lib(reported, expected):
    if not reported:
        return False
    try:
        return os.path.realpath(reported) == os.path.realpath(expected)
    except OSError:
        return False


def is_glibc(path):
    b = os.path.basename(path or "")
    return b.startswith("libc.so") or b.startswith("libc-")


def parse_kv(line):
    """'phase=x a=1 b=2.5' -> {'phase': 'x', 'a': 1, 'b': 2.5}."""
    d = {}
    for tok in line.split():
        k, eq, v = tok.partition("=")
        if not eq:
            continue
        try:
            d[k] = int(v)
        except ValueError:
            try:
                d[k] = float(v)
            except ValueError:
                d[k] = v
    return d


def mib(x):
    return "—" if x is None else f"{x / MIB:.0f}"


def kb_mib(x):
    return "—" if x is None else f"{x / 1024:.0f}"


# --------------------------------------------------------------------------------------
# hugepages


class Hugepages:
    """Raises vm.nr_hugepages until `need` pages are free; restore() puts it back."""

    PATH = "/proc/sys/vm/nr_hugepages"

    def __init__(self):
        with open(self.PATH) as f:
            self.prev = int(f.read())
        self.note = ""
        self.raised = False

    def ensure(self, need):
        mi = meminfo()
        free = mi.get("HugePages_Free", 0)
        if free >= need:
            return True
        want = mi.get("HugePages_Total", 0) + (need - free)
        try:
            with open(self.PATH, "w") as f:
                f.write(str(want))
            self.raised = True
        except OSError as e:
            self.note = f"could not raise vm.nr_hugepages to {want}: {e}"
            return False
        got = meminfo().get("HugePages_Free", 0)
        if got < need:
            self.note = (f"asked for {want} hugepages, only {got} free (memory fragmented or "
                         "taken by other jobs)")
            return False
        return True

    def prefault(self):
        self.note += " " + benchlib.prefault()

    def restore(self):
        if not self.raised:
            return
        try:
            with open(self.PATH, "w") as f:
                f.write(str(self.prev))
        except OSError as e:
            print(f"run-compact.py: could not restore vm.nr_hugepages={self.prev}: {e}",
                  file=sys.stderr)


# --------------------------------------------------------------------------------------
# the sampler


class Sampler(threading.Thread):
    """Every interval: the daemon's view of each tracked pid, the arenas, HugePages_Free
    and the process's own RSS. One row per tracked role and tick."""

    def __init__(self, run_id, ctl, daemon, interval_ms):
        super().__init__(daemon=True)
        self.run_id, self.ctl, self.d, self.interval = run_id, ctl, daemon, interval_ms / 1e3
        self.tracked = {}  # role -> pid
        self.rows = []
        self.seen = set()  # pids the daemon listed as clients
        self.ctl_errors = 0
        self.halt = threading.Event()

    def snapshot(self):
        if not self.d:
            return None
        try:
            r = subprocess.run([self.ctl, "--socket", self.d.sock, "--json", "stats"],
                               capture_output=True, text=True, timeout=2)
            return json.loads(r.stdout) if r.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError, OSError):
            return None

    def one_tick(self):
        t0 = now_ms()
        snap = self.snapshot()
        t = (t0 + now_ms()) / 2
        if self.d and snap is None:
            self.ctl_errors += 1
        mi = meminfo()
        common = {"run": self.run_id, "t_ms": round(t, 1),
                  "hp_free": mi.get("HugePages_Free"), "hp_total": mi.get("HugePages_Total")}
        if snap:
            for a in snap.get("arenas", []):
                for k, v in a.items():
                    if isinstance(v, int) and k not in ("node", "phys_node", "backing",
                                                        "simulated", "slab_size"):
                        common["arena_" + k] = common.get("arena_" + k, 0) + v
            for k in ("fallbacks", "n_clients"):
                common["st_" + k] = snap.get("status", {}).get(k)
        for role, pid in list(self.tracked.items()):
            mem = proc_mem(pid)
            if mem is None:
                continue
            row = dict(common, role=role, pid=pid, rss_kb=mem[0], hugetlb_kb=mem[1])
            if snap:
                mine = [c for c in snap.get("clients", []) if c.get("pid") == pid]
                if mine:
                    self.seen.add(pid)
                    row["sessions"] = len(mine)
                    for k in ("slabs", "bytes_granted", "bytes_in_use", "refills", "waits",
                              "returns"):
                        row["c_" + k] = sum(c.get(k, 0) for c in mine)
            self.rows.append(row)

    def run(self):
        nxt = time.monotonic()
        while not self.halt.is_set():
            self.one_tick()
            nxt += self.interval
            delay = nxt - time.monotonic()
            if delay < 0:
                nxt = time.monotonic()
                delay = 0
            self.halt.wait(delay)

    def stop(self):
        self.halt.set()
        self.join(5)


# --------------------------------------------------------------------------------------
# one workload process


class Proc:
    """A workload process; its phase lines are collected as they arrive."""

    def __init__(self, argv, env, role, nice):
        self.role = role
        self.phases = []
        self.allocator = None
        self.cond = threading.Condition()
        pre = (lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None
        self.t_start = now_ms()
        self.p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=pre)
        self.pid = self.p.pid
        self.err = []
        self.t_out = threading.Thread(target=self._read_out, daemon=True)
        self.t_err = threading.Thread(target=self._read_err, daemon=True)
        self.t_out.start()
        self.t_err.start()

    def _read_out(self):
        for line in self.p.stdout:
            line = line.strip()
            with self.cond:
                if line.startswith("allocator="):
                    self.allocator = line.partition("=")[2]
                elif line.startswith("phase="):
                    d = parse_kv(line)
                    d["role"] = self.role
                    self.phases.append(d)
                self.cond.notify_all()

    def _read_err(self):
        for line in self.p.stderr:
            self.err.append(line)

    def wait_phase(self, name, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(p["phase"] == name for p in self.phases):
                left = deadline - time.monotonic()
                if left <= 0 or self.p.poll() is not None and not self.t_out.is_alive():
                    return False
                self.cond.wait(min(left, 0.1))
        return True

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass

    def wait(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            self.err.append(f"killed after {timeout:.0f} s\n")
        self.t_out.join(5)
        self.t_err.join(5)
        return self.p.returncode

    def phase(self, name):
        return next((p for p in self.phases if p["phase"] == name), None)


# --------------------------------------------------------------------------------------
# the runner


class Runner:
    def __init__(self, args):
        self.a = args
        self.allocs = []  # (name, preload or None)
        self.skipped = []
        for name, lib, pkg in PEERS:
            if name not in args.allocators:
                continue
            if lib and not os.path.exists(lib):
                self.skipped.append(f"{name}: {lib} not installed (apt-get install -y {pkg})")
                continue
            self.allocs.append((name, lib))
        self.zkmem = None
        if "zkmem" in args.allocators:
            missing = [p for p in (args.zkmem, args.zkmemd, args.zkmemctl)
                       if not os.access(p, os.R_OK)]
            if missing:
                self.skipped.append(f"zkmem: not built ({', '.join(missing)} missing)")
            else:
                self.zkmem = os.path.abspath(args.zkmem)
        for s in self.skipped:
            print(f"run-compact.py: skipping {s}", file=sys.stderr)
        self.runs = []  # dicts: id, workload, label, ok, why, procs, samples, conf
        self.samples = []
        self.hp = None
        self.arena_fields = set()
        self.have_hugepages = False

    # --- configuration of one run --------------------------------------------------
    def exe(self, name):
        return os.path.join(self.a.build, "bench", "compact", name)

    def argv(self, workload, role=None):
        a, s = self.a, str(self.a.seed)
        if workload == "giveback":
            return [self.exe("cb-giveback"), "--total-mib", str(a.total_mib), "--idle-ms",
                    str(a.idle_ms), "--seed", s]
        if workload == "randfree":
            return [self.exe("cb-randfree"), "--total-mib", str(a.total_mib), "--second-mib",
                    str(a.total_mib // 2), "--seed", s]
        if workload in RAMP_ARGS:
            return [self.exe("cb-ramp"), "--total-mib", str(a.ramp_mib), "--seed", s,
                    *RAMP_ARGS[workload]]
        return [self.exe("cb-handover"), "--role", role, "--total-mib",
                str(self.handover_mib()), "--seed", s]

    def handover_mib(self):
        return self.a.handover_pages * 2 * 3 // 4

    def arena_pages(self, workload):
        return self.a.handover_pages if workload == "handover" else self.a.arena_pages

    def daemon_conf(self, workload, keys):
        conf = {"max_hugepages_per_node": self.arena_pages(workload),
                "fallback_mb": self.arena_pages(workload) * 2,
                "decay_ms": self.a.decay_ms, "enable_bpf": "no"}
        if self.have_hugepages:
            conf["require_hugepages"] = "yes"
        conf.update(keys)
        return conf

    def env(self, lib, is_zkmem, daemon, require):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        for k in [k for k in env if k.startswith("ZKMEM_")]:
            del env[k]
        if lib:
            env["LD_PRELOAD"] = lib
        if is_zkmem:
            env["ZKMEM_SOCKET"] = daemon.sock
            if require:
                env["ZKMEM_REQUIRE_DAEMON"] = "1"  # a silent local fallback fails the run
        return env

    def plan(self):
        out = []
        for w in self.a.workloads:
            for name, lib in self.allocs:
                out.append((w, name, lib, None))
            if self.zkmem:
                for suffix, keys in VARIANTS[w]:
                    out.append((w, f"zkmem {suffix}", self.zkmem, keys))
        return out

    # --- running ---------------------------------------------------------------------
    def run_all(self):
        self.hp = Hugepages()
        need = max(self.arena_pages(w) for w in self.a.workloads) + 8
        self.have_hugepages = self.hp.ensure(need) if self.zkmem else False
        if self.have_hugepages:
            self.hp.prefault()
        self.hp_used = meminfo().get("HugePages_Total")
        plan = self.plan()
        try:
            for k, (w, label, lib, keys) in enumerate(plan):
                for rep in range(self.a.reps):
                    print(f"[{k * self.a.reps + rep + 1}/{len(plan) * self.a.reps}] {w} "
                          f"{label}", file=sys.stderr, flush=True)
                    if keys is not None and self.have_hugepages:
                        self.hp.ensure(self.arena_pages(w) + 8)  # another job may have shrunk it
                    self.run_one(len(self.runs) + 1, rep, w, label, lib, keys)
        finally:
            self.hp.restore()

    def run_one(self, run_id, rep, workload, label, lib, keys):
        run = {"id": run_id, "rep": rep, "workload": workload, "label": label, "lib": lib,
               "zkmem": keys is not None, "ok": False, "why": "", "procs": {}, "conf": None}
        self.runs.append(run)
        daemon = None
        if keys is not None:
            try:
                daemon = Daemon(self.a.zkmemd, self.daemon_conf(workload, keys),
                                prefix="zkm-compact-")
            except RuntimeError as e:
                run["why"] = str(e)
                return
            run["conf"] = {k: v for k, v in daemon.conf.items() if k != "runtime_dir"}
        sampler = Sampler(run_id, self.a.zkmemctl, daemon, self.a.interval_ms)
        sampler.start()
        try:
            if workload == "handover":
                self.drive_handover(run, lib, daemon, sampler)
            else:
                self.drive_single(run, workload, lib, daemon, sampler)
        finally:
            sampler.stop()
            if daemon:
                run["daemon_log"] = daemon.tail()
                daemon.stop()
        run["samples"] = sampler.rows
        for r in sampler.rows:
            self.arena_fields.update(k[6:] for k in r if k.startswith("arena_"))
        self.samples.extend(sampler.rows)
        run["why"] = run["why"] or self.verify(run, sampler)
        run["ok"] = not run["why"]
        if not run["ok"]:
            print(f"  failed: {run['why'][:300]}", file=sys.stderr)

    def start(self, run, sampler, role, argv, env):
        p = Proc(argv, env, role, self.a.nice)
        sampler.tracked[role] = p.pid
        run["procs"][role] = p
        return p

    def drive_single(self, run, workload, lib, daemon, sampler):
        env = self.env(lib, run["zkmem"], daemon, require=True)
        p = self.start(run, sampler, "main", self.argv(workload), env)
        p.close_stdin()
        rc = p.wait(self.a.timeout)
        if rc != 0:
            run["why"] = f"rc={rc}; stderr: {''.join(p.err)[-300:]}"

    def drive_handover(self, run, lib, daemon, sampler):
        # Without ZKMEM_REQUIRE_DAEMON: a client the daemon cannot serve may fall back to
        # local memory, and that is one of the figures.
        env = self.env(lib, run["zkmem"], daemon, require=False)
        a = self.start(run, sampler, "a", self.argv("handover", "a"), env)
        if not a.wait_phase("free", self.a.timeout):
            a.close_stdin()
            a.wait(10)
            run["why"] = f"client A did not reach its idle phase; {''.join(a.err)[-300:]}"
            return
        time.sleep(self.a.handover_gap_ms / 1e3)
        b = self.start(run, sampler, "b", self.argv("handover", "b"), env)
        b.close_stdin()
        rc_b = b.wait(self.a.timeout)
        time.sleep(0.2)  # one more sample of A after B is gone
        a.close_stdin()
        rc_a = a.wait(30)
        if rc_a != 0 or rc_b not in (0, 1):  # B exits 1 when it could not get its memory
            run["why"] = (f"rc A={rc_a} B={rc_b}; stderr: "
                          f"{(''.join(a.err) + ''.join(b.err))[-300:]}")

    def verify(self, run, sampler):
        for role, p in run["procs"].items():
            ok = (same_lib(p.allocator, run["lib"]) if run["lib"] else is_glibc(p.allocator))
            if not ok:
                return (f"{role}: allocator in effect was {p.allocator!r}, expected "
                        f"{run['lib'] or 'glibc'}; stderr: {''.join(p.err)[-200:]}")
            if not p.phase("end"):
                return f"{role}: no 'end' phase; stderr: {''.join(p.err)[-300:]}"
            if run["zkmem"] and p.pid not in sampler.seen:
                return (f"{role}: the daemon never listed pid {p.pid} as a client "
                        f"({sampler.ctl_errors} zkmemctl errors)")
        return ""


# --------------------------------------------------------------------------------------
# analysis


def role_samples(run, role):
    return sorted((r for r in run["samples"] if r["role"] == role), key=lambda r: r["t_ms"])


def at(samples, t, key):
    """Value of `key` in the first sample at or after t (else the last before it)."""
    best = None
    for r in samples:
        if key not in r:
            continue
        best = r[key]
        if r["t_ms"] >= t:
            return r[key]
    return best


def peak(samples, key, t1=float("-inf"), t2=float("inf")):
    vals = [r[key] for r in samples if key in r and t1 <= r["t_ms"] <= t2]
    return max(vals) if vals else None


def first_time(samples, key, t0, t_end, pred):
    for r in samples:
        if key in r and t0 <= r["t_ms"] <= t_end and pred(r[key]):
            return r["t_ms"] - t0
    return None


def heap_kb(rss_kb, ph):
    """Process RSS minus what was there before the workload and the benchmark's arrays."""
    if rss_kb is None:
        return None
    return max(0, rss_kb - ph["base_kb"] - ph["book_kb"])


def fmt_ms(x, never):
    return never if x is None else f"{x:.0f} ms"


def giveback_rows(run):
    p = run["procs"]["main"]
    free, idle = p.phase("free"), p.phase("idle")
    t0, t_end = free["mono_ms"], idle["mono_ms"]
    s = role_samples(run, "main")
    live = free["live_bytes"]
    row = {"label": run["label"], "live": live}
    row["grant_peak"] = peak(s, "c_bytes_granted")
    row["grant_t0"] = at(s, t0, "c_bytes_granted")
    row["grant_end"] = at(s, t_end, "c_bytes_granted")
    row["t_grant"] = first_time(s, "c_bytes_granted", t0, t_end, lambda v: v <= 1.5 * live)
    rss = [dict(r, heap=heap_kb(r["rss_kb"], free) * 1024) for r in s]
    row["rss_peak"] = heap_kb(max(peak(s, "rss_kb") or 0,
                                  max(ph["hwm_kb"] for ph in p.phases)), free) * 1024
    row["rss_t0"] = heap_kb(free["rss_kb"], free) * 1024
    row["rss_end"] = heap_kb(idle["rss_kb"], free) * 1024
    row["t_rss"] = first_time(rss, "heap", t0, t_end, lambda v: v <= 1.5 * live)
    row["hp_t0"], row["hp_end"] = at(s, t0, "hp_free"), at(s, t_end, "hp_free")
    row["free_ms"] = free.get("free_ms")
    row["series"] = [(dt, at(rss, t0 + dt, "heap"), at(s, t0 + dt, "c_bytes_granted"),
                      at(s, t0 + dt, "hp_free"), at(s, t0 + dt, "arena_free_slabs"))
                     for dt in (0, 250, 500, 1000, 1500, 2000, 2500, t_end - t0)]
    # t = 0 and the end from the program's own phase lines (taken at that instant)
    row["series"][0] = (0, row["rss_t0"]) + row["series"][0][2:]
    row["series"][-1] = (t_end - t0, row["rss_end"]) + row["series"][-1][2:]
    return row


def randfree_rows(run):
    p = run["procs"]["main"]
    s = role_samples(run, "main")
    out, prev_t = [], p.phase("start")["mono_ms"]
    for name in ("alloc", "free", "alloc2", "hold"):
        ph = p.phase(name)
        t = ph["mono_ms"]
        sampled = peak(s, "rss_kb", prev_t, t) or 0
        grant_end = at(s, t, "c_bytes_granted")
        grant_peak = max([x for x in (peak(s, "c_bytes_granted", prev_t, t), grant_end)
                          if x is not None], default=None)
        out.append({"label": run["label"], "phase": name, "live": ph["live_bytes"],
                    "grant_end": grant_end, "grant_peak": grant_peak,
                    "rss_end": heap_kb(ph["rss_kb"], ph) * 1024,
                    "rss_peak": heap_kb(max(sampled, ph["hwm_kb"]), ph) * 1024,
                    "op_ms": ph.get("op_ms"), "fails": ph["fails"]})
        prev_t = t
    return out


def handover_row(run):
    a, b = run["procs"]["a"], run["procs"]["b"]
    sa, sb = role_samples(run, "a"), role_samples(run, "b")
    b_alloc, b_start, b_end = b.phase("alloc"), b.phase("start"), b.phase("hold")
    allsamp = sorted(run["samples"], key=lambda r: r["t_ms"])
    row = {"label": run["label"], "ok": b_alloc["ok"], "fails": b_alloc["fails"],
           "b_live": b_alloc["live_bytes"], "b_ms": b_alloc["op_ms"],
           "a_peak": peak(sa, "c_bytes_granted"),
           "a_at_b": at(sa, b_start["mono_ms"], "c_bytes_granted"),
           "a_after_b": at(sa, b_end["mono_ms"], "c_bytes_granted"),
           "a_rss_idle": heap_kb(at(sa, b_start["mono_ms"], "rss_kb"), a.phase("free")),
           "b_slabs": peak(sb, "c_slabs"), "b_waits": peak(sb, "c_waits"),
           "b_refills": peak(sb, "c_refills"),
           "b_rss": heap_kb(b_alloc["rss_kb"], b_alloc),
           "local_fb": b_alloc.get("zk_local_fallback_bytes"),
           # daemon slabs are hugetlb (HugetlbPages); local fallback memory is anonymous
           "b_anon_kb": max(0, b_alloc["rss_kb"] - b_alloc["hugetlb_kb"] - b_alloc["base_kb"] -
                            b_alloc["book_kb"])}
    first = allsamp[0] if allsamp else {}
    last = allsamp[-1] if allsamp else {}
    for k in ("arena_exhausted_total", "st_fallbacks", "arena_pressure_reclaims_total"):
        if k in first and k in last:
            row[k] = last[k] - first[k]
    if row["b_slabs"]:
        row["ms_per_slab"] = row["b_ms"] / row["b_slabs"]
    return row


def ramp_row(run):
    p = run["procs"]["main"]
    s = role_samples(run, "main")
    steps = [ph for ph in p.phases if ph["phase"].startswith("step")]
    hold = p.phase("hold")
    waits_by_step, prev = [], at(s, p.phase("start")["mono_ms"], "c_waits") or 0
    for ph in steps:
        w = at(s, ph["mono_ms"], "c_waits")
        waits_by_step.append(None if w is None else w - prev)
        prev = w if w is not None else prev
    return {"label": run["label"], "steps": len(steps),
            "total_ms": steps[-1]["mono_ms"] - p.phase("start")["mono_ms"],
            "lag_ms": sum(ph["lag_ms"] for ph in steps),
            "max_us": max(ph["max_us"] for ph in steps),
            "stalls": sum(ph["stalls"] for ph in steps), "fails": hold["fails"],
            "live": hold["live_bytes"], "waits": at(s, hold["mono_ms"], "c_waits"),
            "refills": at(s, hold["mono_ms"], "c_refills"),
            "grant": at(s, hold["mono_ms"], "c_bytes_granted"),
            "rss": heap_kb(hold["rss_kb"], hold) * 1024, "waits_by_step": waits_by_step}


# --------------------------------------------------------------------------------------
# report


def machine_info(args):
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dirty = sh(f"git -C {shlex.quote(ROOT)} status --porcelain --untracked-files=no | wc -l")
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "glibc": platform.libc_ver()[1],
            "thp": sh("cat /sys/kernel/mm/transparent_hugepage/enabled"),
            "git": sh(f"git -C {shlex.quote(ROOT)} rev-parse --short HEAD") or "no commit",
            "dirty": dirty, "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "packages": sh("dpkg-query -W -f '${Package} ${Version}, ' libjemalloc2 "
                           "libmimalloc2.0 libgoogle-perftools4 libc6").rstrip(", ")}


def table(out, header, rows):
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    out.append("")


def section_giveback(out, runs, a):
    rows = [giveback_rows(r) for r in runs]
    out.append("## 1. give-back\n")
    out.append(f"{a.total_mib} MiB of 16–256 B objects in ten generations, nine freed (the "
               f"middle one kept), then {a.idle_ms} ms idle. t = 0 is the end of the frees. "
               "Heap RSS = process RSS (VmRSS + HugetlbPages) − RSS before the workload − the "
               "benchmark's own arrays. Grant = the daemon's `bytes_granted` for the pid.\n")
    table(out, ["allocator", "live after free MiB", "free ms", "heap RSS peak / t0 / end MiB",
                "RSS ≤ 1.5× live after", "grant peak / t0 / end MiB",
                "grant ≤ 1.5× live after", "HugePages_Free t0 → end"],
          [[r["label"], mib(r["live"]), f"{r['free_ms']:.0f}",
            f"{mib(r['rss_peak'])} / {mib(r['rss_t0'])} / {mib(r['rss_end'])}",
            fmt_ms(r["t_rss"], "never"),
            (f"{mib(r['grant_peak'])} / {mib(r['grant_t0'])} / {mib(r['grant_end'])}"
             if r["grant_t0"] is not None else "—"),
            fmt_ms(r["t_grant"], "never") if r["grant_t0"] is not None else "—",
            (f"{r['hp_t0']} → {r['hp_end']}" if r["grant_t0"] is not None else "—")]
           for r in rows])
    out.append("Over time after the free — heap RSS MiB (all) and, for zkmem, the daemon's "
               "grant to the client (MiB), system HugePages_Free and the arena's free slabs:\n")
    dts = [d for d, *_ in rows[0]["series"]] if rows else []
    hdr = ["allocator", "what"] + [f"+{d / 1000:.2f} s" for d in dts]
    trs = []
    for r in rows:
        trs.append([r["label"], "heap RSS"] + [mib(x[1]) for x in r["series"]])
        if r["grant_t0"] is not None:
            trs.append([r["label"], "grant"] + [mib(x[2]) for x in r["series"]])
            trs.append([r["label"], "HugePages_Free"] + [str(x[3]) for x in r["series"]])
            trs.append([r["label"], "arena free slabs"] + [str(x[4]) for x in r["series"]])
    table(out, hdr, trs)


def section_randfree(out, runs, a):
    out.append("## 2. random frees\n")
    out.append(f"{a.total_mib} MiB of 16–256 B objects (alloc), 90% freed in random order "
               f"(free), then {a.total_mib // 2} MiB of 512 B–8 KiB objects (alloc2), held "
               "1 s (hold). Figures at the end of each phase; peak = highest during the phase "
               "(VmHWM reset per phase, and the 50 ms samples).\n")
    rows = [x for r in runs for x in randfree_rows(r)]
    table(out, ["allocator", "phase", "live MiB", "heap RSS end / peak MiB",
                "grant end / peak MiB", "phase ms", "failed mallocs"],
          [[r["label"], r["phase"], mib(r["live"]),
            f"{mib(r['rss_end'])} / {mib(r['rss_peak'])}",
            (f"{mib(r['grant_end'])} / {mib(r['grant_peak'])}"
             if r["grant_end"] is not None else "—"),
            "—" if r["op_ms"] is None else f"{r['op_ms']:.0f}", r["fails"]] for r in rows])


def local_fallback(row, hugetlb):
    if not row["label"].startswith("zkmem"):
        return "—"
    if row["local_fb"] is not None:
        return mib(row["local_fb"]) + " MiB"
    if hugetlb:
        return f"≈ {kb_mib(row['b_anon_kb'])} MiB (anonymous RSS; stats not exported)"
    return "n/a (zkm_stats_snapshot not exported)"


def section_handover(out, runs, a, runner):
    out.append("## 3. hand-over\n")
    out.append(f"Arena limited to {a.handover_pages} slabs of 2 MiB "
               f"(`max_hugepages_per_node = {a.handover_pages}`). Client A allocates "
               f"{runner.handover_mib()} MiB of 16–256 B objects, frees them all and idles "
               f"(alive); {a.handover_gap_ms} ms after A's frees client B allocates the same "
               "amount (no `ZKMEM_REQUIRE_DAEMON`, so local fallback is possible). "
               "ms/slab = B's allocation time ÷ the slabs the daemon granted B. Peers: no "
               "daemon; A's heap RSS while idle is what A keeps.\n")
    rows = [handover_row(r) for r in runs]
    table(out, ["allocator", "B ok", "B failed mallocs", "B allocated MiB", "B ms",
                "B slabs", "ms/slab", "B waits / refills", "A grant peak / at B start / "
                "after B MiB", "A heap RSS idle MiB", "arena exhausted", "daemon fallbacks",
                "B local fallback"],
          [[r["label"], "yes" if r["ok"] else "**no**", r["fails"], mib(r["b_live"]),
            f"{r['b_ms']:.0f}", r["b_slabs"] if r["b_slabs"] is not None else "—",
            f"{r['ms_per_slab']:.2f}" if r.get("ms_per_slab") else "—",
            (f"{r['b_waits']} / {r['b_refills']}" if r["b_waits"] is not None else "—"),
            (f"{mib(r['a_peak'])} / {mib(r['a_at_b'])} / {mib(r['a_after_b'])}"
             if r["a_peak"] is not None else "—"), kb_mib(r["a_rss_idle"]),
            r.get("arena_exhausted_total", "—"), r.get("st_fallbacks", "—"),
            local_fallback(r, runner.have_hugepages)]
           for r in rows])


RAMP_LEGEND = ("lag = time the steps ran over their 0.5 s; a stall = one malloc slower than "
               "50 µs. waits = the daemon's count of this client's acquisitions that needed "
               "a round trip; refills = slabs taken from the grant ring.\n")


def section_ramp(out, runs, a):
    out.append("## 4. no stalls (ramp)\n")
    out.append(f"{a.ramp_mib} MiB of 16–1024 B objects, every byte written, all kept live, "
               "requested in ten 0.5 s steps, each at twice the rate of the one before, "
               "paced in 64 KiB chunks. " + RAMP_LEGEND)
    ramp_table(out, runs)


def section_burst(out, runs, a):
    out.append("## 5. no stalls (bursts)\n")
    out.append(f"{a.ramp_mib} MiB of 4–64 KiB buffers (one byte written per 4 KiB page), "
               "all kept live, requested in ten 0.5 s steps, each at twice the rate of the "
               "one before, in 16 MiB bursts: each burst is requested as fast as the "
               "allocator serves it, then the program idles until its schedule is due. "
               "A burst consumes slabs faster than the daemon can populate them, so what "
               "was pre-granted before it decides how many acquisitions wait. "
               + RAMP_LEGEND)
    ramp_table(out, runs)


def ramp_table(out, runs):
    rows = [ramp_row(r) for r in runs]
    table(out, ["allocator", "total ms", "lag ms", "slowest malloc µs", "stalls",
                "waits", "refills", "waits per step", "grant MiB", "heap RSS MiB",
                "failed mallocs"],
          [[r["label"], f"{r['total_ms']:.0f}", f"{r['lag_ms']:.0f}", f"{r['max_us']:.0f}",
            r["stalls"], "—" if r["waits"] is None else r["waits"],
            "—" if r["refills"] is None else r["refills"],
            ("—" if r["waits"] is None else
             ",".join("?" if w is None else str(w) for w in r["waits_by_step"])),
            mib(r["grant"]), mib(r["rss"]), r["fails"]] for r in rows])


def markdown(runner, info, cmdline, elapsed):
    a = runner.a
    out = [f"# zkmem compaction and tuning benchmarks — {info['date']}\n",
           f"Command: `{cmdline}`  ",
           f"Machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, glibc "
           f"{info['glibc']}, THP `{info['thp']}`; {info['packages']}  ",
           f"Tree: git {info['git']} with {info['dirty']} modified tracked files (other work "
           f"in progress in the same checkout); load average at start {info['loadavg']}; "
           f"total {elapsed:.0f} s.  ",
           f"Hugepages: vm.nr_hugepages was {runner.hp.prev}, raised to {runner.hp_used} for "
           f"the run and restored. {runner.hp.note}  ",
           f"Sampling: every {a.interval_ms} ms (`zkmemctl --json stats`, /proc/meminfo, "
           "/proc/PID/status). HugePages_Free is system-wide: other jobs on this machine "
           "move it too. A zkmem process's HugetlbPages (in its RSS) counts the slabs it "
           "holds: a slab it returns leaves its page tables at once, even while the daemon "
           "keeps it cached for the domain. The daemon's grant is the per-client figure "
           "(it includes pre-granted slabs the client has not touched).  "]
    if runner.zkmem:
        out.append("zkmem: `LD_PRELOAD` of " + os.path.relpath(runner.zkmem, ROOT) +
                   ", a fresh zkmemd per run with the generated config (per run below); "
                   "`ZKMEM_REQUIRE_DAEMON=1` except in hand-over.  ")
        out.append("Daemon reports arena fields: " +
                   ", ".join(f"`{f}`" for f in sorted(runner.arena_fields)) + ".  ")
    for s in runner.skipped:
        out.append(f"Skipped {s}.  ")
    out.append("")
    by_w = {}
    for r in runner.runs:
        if r["ok"]:
            by_w.setdefault(r["workload"], []).append(r)
    for w in a.workloads:
        runs = by_w.get(w, [])
        if not runs:
            out.append(f"## {w}: no successful run\n")
            continue
        if w == "giveback":
            section_giveback(out, runs, a)
        elif w == "randfree":
            section_randfree(out, runs, a)
        elif w == "handover":
            section_handover(out, runs, a, runner)
        elif w == "ramp":
            section_ramp(out, runs, a)
        else:
            section_burst(out, runs, a)
    confs = {}
    for r in runner.runs:
        if r["conf"]:
            confs.setdefault(r["workload"] + " " + r["label"], r["conf"])
    if confs:
        out.append("## Daemon configurations\n")
        for k, c in confs.items():
            out.append(f"- {k}: `" + "; ".join(f"{x} = {y}" for x, y in c.items()) + "`")
        out.append("")
    failed = [r for r in runner.runs if not r["ok"]]
    if failed:
        out.append(f"## Failed runs ({len(failed)})\n")
        for r in failed:
            out.append(f"- {r['workload']} {r['label']} rep {r['rep']}: "
                       f"{' '.join(r['why'].split())[:400]}")
        out.append("")
    out.append("Raw data: `-samples.csv` (one row per sample and process) and `-phases.csv` "
               "(every phase line) next to this file; workloads: `bench/README.md`.")
    return "\n".join(out) + "\n"


def write_csv(path, rows, first):
    keys = list(first)
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def write_raw(runner, base):
    write_csv(base + "-samples.csv", runner.samples,
              ["run", "t_ms", "role", "pid", "rss_kb", "hugetlb_kb", "hp_free", "hp_total"])
    phases = []
    for r in runner.runs:
        for role, p in r["procs"].items():
            for ph in p.phases:
                phases.append(dict(ph, run=r["id"], workload=r["workload"], label=r["label"],
                                   rep=r["rep"], ok=int(r["ok"]), pid=p.pid))
    write_csv(base + "-phases.csv", phases,
              ["run", "workload", "label", "rep", "ok", "role", "pid", "phase", "mono_ms"])


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"),
                    help="build directory (release) holding bench/compact, daemon, ctl")
    ap.add_argument("--zkmem", help="preload library (default BUILD/client-lib/"
                    "libzkmem-preload.so)")
    ap.add_argument("--zkmemd", help="default BUILD/daemon/zkmemd")
    ap.add_argument("--zkmemctl", help="default BUILD/ctl/zkmemctl")
    ap.add_argument("--allocators", default="glibc,jemalloc,mimalloc,tcmalloc,zkmem")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--total-mib", type=int, default=1024, help="give-back and random frees")
    ap.add_argument("--idle-ms", type=int, default=3000, help="give-back idle time")
    ap.add_argument("--ramp-mib", type=int, default=512)
    ap.add_argument("--arena-pages", type=int, default=1000,
                    help="arena cap (max_hugepages_per_node) for all but hand-over")
    ap.add_argument("--handover-pages", type=int, default=128,
                    help="hand-over arena; A and B allocate 3/4 of it")
    ap.add_argument("--handover-gap-ms", type=int, default=500)
    ap.add_argument("--decay-ms", type=int, default=1000)
    ap.add_argument("--interval-ms", type=int, default=50)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=110, help="seconds per process")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 256 MiB, 128 MiB ramp, 300-slab arena")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="compact")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    args.zkmem = args.zkmem or os.path.join(args.build, "client-lib", "libzkmem-preload.so")
    args.zkmemd = args.zkmemd or os.path.join(args.build, "daemon", "zkmemd")
    args.zkmemctl = args.zkmemctl or os.path.join(args.build, "ctl", "zkmemctl")
    args.allocators = args.allocators.split(",")
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        sys.exit(f"run-compact.py: unknown workload(s) {bad}; known: {WORKLOADS}")
    if args.quick:
        args.total_mib, args.ramp_mib, args.arena_pages = 256, 128, 300
    for w in ("cb-giveback", "cb-randfree", "cb-handover", "cb-ramp"):
        if not os.access(os.path.join(args.build, "bench", "compact", w), os.X_OK):
            sys.exit(f"run-compact.py: {w} not built; meson compile -C {args.build}")

    cmdline = "python3 bench/run-compact.py " + shlex.join(sys.argv[1:])
    info = machine_info(args)
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runner = Runner(args)
    t0 = time.time()

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    runner.run_all()  # restores vm.nr_hugepages in a finally
    md = markdown(runner, info, cmdline, time.time() - t0)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, datetime.date.today().isoformat() + "-" + args.tag)
    with open(base + ".md", "w") as f:
        f.write(md)
    write_raw(runner, base)
    print(md)
    print(f"wrote {base}.md {base}-samples.csv {base}-phases.csv", file=sys.stderr)
    return 1 if any(not r["ok"] for r in runner.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
