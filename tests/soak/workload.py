#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""workload.py - Python allocation workloads for tests/soak/soak.sh (run under LD_PRELOAD).

  workload.py churn --seconds S [--seed N]
      Two threads create and drop bytes, bytearrays, lists and dicts of sizes from a few
      bytes to 4 MiB, hand objects to each other through a queue (so the other thread frees
      them: remote frees in zkmem), and keep a sample of objects whose SHA-256 is checked
      before they are dropped and at the end. Exit 0, or 1 with a message on a mismatch.

  workload.py resident --stop-file F [--status-file F]
      Long-lived client: holds 20 buffers of 1 KiB - 6 MiB with known digests, checks them
      all every round, replaces three of them and allocates and drops a burst of 36 objects
      of 1.5 MiB (more slabs than the allocator caches, so it needs new slabs from zkmemd
      every round and reattaches soon after the daemon restarts). Runs until the stop file
      exists; writes "ROUNDS BURSTS_REFUSED" to the status file. A burst that meets an
      exhausted arena (MemoryError) is cut short and counted. Exit 0, or 1 on corruption.

Run with PYTHONMALLOC=malloc so that every Python object goes through malloc (zkmem).
"""
import argparse
import hashlib
import os
import queue
import random
import sys
import threading
import time


def make_buffer(rng, size):
    """A bytearray of `size` bytes with content from rng, and its digest."""
    seed = rng.getrandbits(64).to_bytes(8, "little")
    block = hashlib.sha256(seed).digest() * 128  # 4 KiB
    reps, rest = divmod(size, len(block))
    buf = bytearray(block * reps + block[:rest])
    return buf, hashlib.sha256(buf).digest()


def random_size(rng):
    r = rng.random()
    if r < 0.6:
        return rng.randint(1, 512)
    if r < 0.9:
        return rng.randint(513, 64 * 1024)
    if r < 0.995:
        return rng.randint(64 * 1024, 1024 * 1024)
    return rng.randint(2 * 1024 * 1024, 4 * 1024 * 1024)  # a direct mapping


BURST_SIZE = 1536 * 1024  # one object per 2 MiB slab
BURST_COUNT = 36  # the allocator keeps 32 empty slabs per node before giving any back
RESIDENT_BUFFERS = 20


def resident_size(rng, i):
    """Buffer i of the resident: in slabs (up to 1 MiB), every fifth a direct mapping."""
    if i % 5 == 4:
        return rng.randint(3 * 1024 * 1024, 6 * 1024 * 1024)
    return rng.randint(1024, 1024 * 1024)


class Failed(Exception):
    pass


def check(obj, digest, where):
    if hashlib.sha256(obj).digest() != digest:
        raise Failed("content of a %d-byte object changed (%s)" % (len(obj), where))


def churn_thread(idx, seed, deadline, inbox, outbox, errors, counts):
    rng = random.Random(seed * 31 + idx)
    kept = {}  # key -> (buffer, digest)
    junk = []
    ops = 0
    try:
        while time.monotonic() < deadline:
            ops += 1
            r = rng.random()
            if r < 0.35:
                buf, dig = make_buffer(rng, random_size(rng))
                kept[ops] = (buf, dig)
            elif r < 0.55 and kept:
                key = rng.choice(list(kept))
                buf, dig = kept.pop(key)
                check(buf, dig, "before drop")
                if rng.random() < 0.5:
                    outbox.put((buf, dig))  # the other thread frees it
            elif r < 0.70:
                junk.append([str(i) * rng.randint(1, 8) for i in range(rng.randint(1, 300))])
                junk.append({i: bytes(rng.randint(1, 200)) for i in range(rng.randint(1, 100))})
                if len(junk) > 200:
                    del junk[: rng.randint(1, 200)]
            elif r < 0.85 and kept:
                key = rng.choice(list(kept))
                buf, dig = kept[key]
                check(buf, dig, "before resize")
                grow = rng.randint(1, 256 * 1024)
                buf.extend(b"\x5a" * grow)  # realloc
                kept[key] = (buf, hashlib.sha256(buf).digest())
            else:
                try:
                    while True:
                        buf, dig = inbox.get_nowait()
                        check(buf, dig, "received from the other thread")
                        counts["handoffs"] += 1
                except queue.Empty:
                    pass
            if len(kept) > 32:
                key = next(iter(kept))
                buf, dig = kept.pop(key)
                check(buf, dig, "evicted")
        for buf, dig in kept.values():
            check(buf, dig, "at the end")
    except Failed as e:
        errors.append("thread %d: %s" % (idx, e))
    counts["ops"] += ops


def churn(args):
    deadline = time.monotonic() + args.seconds
    q = [queue.Queue(), queue.Queue()]
    errors = []
    counts = {"ops": 0, "handoffs": 0}
    threads = [
        threading.Thread(target=churn_thread,
                         args=(i, args.seed, deadline, q[i], q[1 - i], errors, counts))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):  # what was handed over at the end
        while not q[i].empty():
            buf, dig = q[i].get()
            try:
                check(buf, dig, "left in a queue")
            except Failed as e:
                errors.append(str(e))
    if errors:
        print("workload churn: FAILED: " + "; ".join(errors), file=sys.stderr)
        return 1
    print("workload churn: %d ops, %d hand-offs" % (counts["ops"], counts["handoffs"]))
    return 0


def resident(args):
    rng = random.Random(os.getpid())
    bufs = [make_buffer(rng, resident_size(rng, i)) for i in range(RESIDENT_BUFFERS)]
    rounds = refused = 0
    while not os.path.exists(args.stop_file):
        for i, (buf, dig) in enumerate(bufs):
            if hashlib.sha256(buf).digest() != dig:
                print("workload resident: buffer %d (%d bytes) corrupt after %d rounds"
                      % (i, len(buf), rounds), file=sys.stderr)
                return 1
        for _ in range(3):
            i = rng.randrange(len(bufs))
            bufs[i] = make_buffer(rng, resident_size(rng, i))
        # more slabs than the allocator keeps cached (32 per node): some come from zkmemd
        # every round, so a restarted daemon is reattached to within a round
        # (an arena that is exhausted just now refuses it: counted, not a failure - the
        # daemon's exhausted_total says so too)
        burst = []
        try:
            for _ in range(BURST_COUNT):
                burst.append(bytearray(BURST_SIZE))
        except MemoryError:
            refused += 1
        for k, b in enumerate(burst):
            b[0] = b[-1] = k & 0xFF
        for k, b in enumerate(burst):
            if b[0] != k & 0xFF or b[-1] != k & 0xFF or b[1] != 0:
                print("workload resident: burst buffer %d wrong" % k, file=sys.stderr)
                return 1
        del burst
        rounds += 1
        if args.status_file:
            with open(args.status_file + ".tmp", "w") as f:
                f.write("%d %d\n" % (rounds, refused))
            os.replace(args.status_file + ".tmp", args.status_file)
        time.sleep(0.1)
    print("workload resident: %d rounds, %d bursts cut short by an exhausted arena"
          % (rounds, refused))
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("churn")
    c.add_argument("--seconds", type=float, default=4.0)
    c.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("resident")
    r.add_argument("--stop-file", required=True)
    r.add_argument("--status-file")
    args = ap.parse_args()
    return churn(args) if args.mode == "churn" else resident(args)


if __name__ == "__main__":
    sys.exit(main())
