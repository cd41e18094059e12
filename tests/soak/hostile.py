#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""hostile.py - one burst of hostile traffic on zkmemd's socket, for tests/soak/soak.sh.

  hostile.py SOCKET [--rounds N] [--seed S] [--idle N]

Each round opens a fresh SOCK_SEQPACKET connection per case below and checks that the
daemon hangs up (recv returns EOF within 5 s) - or, for a version range it does not speak,
that it answers with -EPROTONOSUPPORT:
  junk16      16 random bytes (garbage header)
  oversized   8193..9000 random bytes
  junklen     a header with the right magic and a length that does not match
  truncated   a HELLO cut short
  hdrversion  a HELLO whose header carries a version
  withfd      a valid HELLO with a descriptor attached
  early       an ACQUIRE before any HELLO
  afterhello  a valid HELLO (session, control block and memfds granted), then garbage
  badversion  a HELLO for versions 201..250: a reply with -EPROTONOSUPPORT, no session
Then --idle connections are held open while a good HELLO must still be answered.

Prints one JSON line: {"sent": N, "hangups": N, "refused": N, "unanswered": N,
"conn_failed": N, "errors_expected": N, "details": [...]}. "conn_failed" counts
connections the daemon did not accept (it was being restarted); "errors_expected" is the
number of messages the daemon must have counted as protocol errors. Exit status 0, or 1
when some case was not answered as it must be.
"""
import argparse
import errno
import json
import os
import random
import socket
import struct
import sys

MAGIC = 0x314D4B5A
HELLO, ACQUIRE = 1, 3
HELLO_SIZE, ACQUIRE_SIZE, HELLO_REPLY_MIN = 48, 32, 24
EPROTONOSUPPORT = errno.EPROTONOSUPPORT
TIMEOUT = 5.0


def hdr(version, mtype, length, seq=1):
    return struct.pack("<IHHII", MAGIC, version, mtype, length, seq)


# Any version range that contains the daemon's: it negotiates its own (the hostile cases do
# not depend on which one it speaks).
VERSION_ANY = (1, 200)
VERSION_NONE = (201, 250)


def hello(vmin=VERSION_ANY[0], vmax=VERSION_ANY[1], hdr_version=0, comm=b"soak-hostile"):
    body = struct.pack("<HHI16sII", vmin, vmax, 0, comm.ljust(16, b"\0")[:16], 0, 0)
    return hdr(hdr_version, HELLO, HELLO_SIZE) + body


def acquire():
    return hdr(1, ACQUIRE, ACQUIRE_SIZE) + struct.pack("<iIII", -1, 1, 0, 0)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s


def wait_eof(s):
    """'hangup' if the daemon closed the connection, else what it did instead."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return "hangup"
    except socket.timeout:
        return "no hangup within %.0f s" % TIMEOUT
    except ConnectionResetError:
        return "hangup"


def good_hello(s):
    """Send a valid HELLO, receive the reply and its descriptors; returns the status."""
    s.send(hello())
    msg, fds, _flags, _addr = socket.recv_fds(s, 8192, 16)
    for fd in fds:
        os.close(fd)
    if len(msg) < HELLO_REPLY_MIN:
        raise OSError("short HELLO reply (%d bytes)" % len(msg))
    return struct.unpack_from("<i", msg, 16)[0]


def case_send(path, payload, fds=None):
    s = connect(path)
    try:
        if fds:
            socket.send_fds(s, [payload], fds)
        else:
            s.send(payload)
        return wait_eof(s)
    finally:
        s.close()


def case_afterhello(path, junk):
    s = connect(path)
    try:
        st = good_hello(s)
        if st != 0:
            return "HELLO refused with status %d" % st
        s.send(junk)
        return wait_eof(s)
    finally:
        s.close()


def case_badversion(path):
    s = connect(path)
    try:
        s.send(hello(*VERSION_NONE))
        msg, fds, _f, _a = socket.recv_fds(s, 8192, 16)
        for fd in fds:
            os.close(fd)
        if len(msg) < HELLO_REPLY_MIN:
            return "no reply to an unsupported version range"
        st = struct.unpack_from("<i", msg, 16)[0]
        return "refused" if st == -EPROTONOSUPPORT else "status %d, not -EPROTONOSUPPORT" % st
    finally:
        s.close()


def cases(rng):
    junk = bytes(rng.getrandbits(8) for _ in range(9000))
    h = hello()
    devnull = os.open("/dev/null", os.O_RDONLY)
    out = [
        ("junk16", lambda p: case_send(p, junk[:16])),
        ("oversized", lambda p: case_send(p, junk[: rng.randint(8193, 9000)])),
        ("junklen", lambda p: case_send(p, hdr(0, HELLO, 4096) + junk[:32])),
        ("truncated", lambda p: case_send(p, h[: rng.randint(16, HELLO_SIZE - 1)])),
        ("hdrversion", lambda p: case_send(p, hello(hdr_version=3))),
        ("withfd", lambda p: case_send(p, h, [devnull])),
        ("early", lambda p: case_send(p, acquire())),
        ("afterhello", lambda p: case_afterhello(p, junk[: rng.randint(1, 64)])),
        ("badversion", case_badversion),
    ]
    return out, devnull


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--idle", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    res = {"sent": 0, "hangups": 0, "refused": 0, "unanswered": 0, "conn_failed": 0,
           "errors_expected": 0, "details": []}
    todo, devnull = cases(rng)
    for _ in range(args.rounds):
        for name, fn in todo:
            res["sent"] += 1
            try:
                got = fn(args.socket)
            except (FileNotFoundError, ConnectionRefusedError):
                res["conn_failed"] += 1
                continue
            except OSError as e:
                got = "error: %s" % e
            if got == "hangup":
                res["hangups"] += 1
                res["errors_expected"] += 1
            elif got == "refused" and name == "badversion":
                res["refused"] += 1
            else:
                res["unanswered"] += 1
                res["details"].append("%s: %s" % (name, got))
    # idle connections do not stop service
    idle = []
    try:
        for _ in range(args.idle):
            idle.append(connect(args.socket))
        s = connect(args.socket)
        res["sent"] += 1
        st = good_hello(s)
        s.close()
        if st != 0:
            res["unanswered"] += 1
            res["details"].append("HELLO with %d idle connections: status %d" % (args.idle, st))
    except (FileNotFoundError, ConnectionRefusedError):
        res["conn_failed"] += 1
    except OSError as e:
        res["unanswered"] += 1
        res["details"].append("HELLO with %d idle connections: %s" % (len(idle), e))
    for s in idle:
        s.close()
    os.close(devnull)
    print(json.dumps(res))
    return 1 if res["unanswered"] else 0


if __name__ == "__main__":
    sys.exit(main())
