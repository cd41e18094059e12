# SPDX-License-Identifier: MIT
"""benchlib.py - what the benchmark runners (compare.py, run-compact.py) share: a zkmemd in
a private runtime dir, and touching every free hugepage once before measuring.

In a VM the first touch of guest memory makes the host back it; measured on this machine
kind: about 3.8 ms per 2 MiB hugepage (a hugepage already touched once costs about 0.1 ms
to zero again). zkmem is the only allocator in the comparisons that uses the hugetlb pool,
so without this the first zkmem runs after vm.nr_hugepages was raised pay for every fresh
page and the others do not. Python 3 standard library only.
"""
import mmap
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

MIB = 1024 * 1024
MAP_HUGETLB = getattr(mmap, "MAP_HUGETLB", 0x40000)


def hugepages_free():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def prefault():
    """Map every free hugepage, write one byte in each, unmap. Returns a sentence for the
    report (what was done and what it cost, or why it was not)."""
    free = hugepages_free()
    if free <= 0:
        return "No hugepages were free to pre-touch."
    t0 = time.monotonic()
    try:
        m = mmap.mmap(-1, free * 2 * MIB,
                      flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
    except OSError as e:
        return f"Could not pre-touch the hugepages: {e}."
    for off in range(0, free * 2 * MIB, 2 * MIB):
        m[off] = 1
    m.close()
    ms = (time.monotonic() - t0) * 1000
    return (f"Every free hugepage ({free}) was touched once before the runs ({ms:.0f} ms, "
            f"{ms / free:.2f} ms per page), so no run pays the first touch of fresh guest "
            "memory for the others.")


class Daemon:
    """zkmemd in a private runtime dir (its socket: .sock). With `conf` (a dict of config
    keys) it runs on a generated zkmemd.conf; without, on its embedded defaults."""

    def __init__(self, exe, conf=None, prefix="zkm-bench-"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.sock = os.path.join(self.dir, "zkmemd.sock")
        self.conf = None
        argv = [exe, "--runtime-dir", self.dir]
        if conf is not None:
            self.conf = dict(conf, runtime_dir=self.dir)
            path = os.path.join(self.dir, "zkmemd.conf")
            with open(path, "w") as f:
                f.write("".join(f"{k} = {v}\n" for k, v in self.conf.items()))
            argv = [exe, "-c", path]
        self.log = open(os.path.join(self.dir, "zkmemd.log"), "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("zkmemd exited at start:\n" + self.tail())
            if os.path.exists(self.sock) and self._accepts():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("zkmemd did not open its socket in 15 s:\n" + self.tail())

    def _accepts(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=20):
        self.log.flush()
        self.log.seek(0)
        return "".join(self.log.readlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
