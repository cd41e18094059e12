#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Generate zkmemd.conf(5) from the ZKM_CONFIG_KEYS X-macro in proto/zkm_config.h.

    gen-conf-man.py proto/zkm_config.h               page on stdout
    gen-conf-man.py proto/zkm_config.h -o FILE       write FILE
    gen-conf-man.py proto/zkm_config.h --check FILE  exit 1 (with a diff) if FILE differs

The JSON keys of zkmemctl(8) come from the X-macro field lists in proto/zkm_proto.h the
same way, into the part of docs/zkmemctl.8 between the JSON-KEYS BEGIN/END comments:

    gen-conf-man.py --proto proto/zkm_proto.h --update-ctl docs/zkmemctl.8
    gen-conf-man.py --proto proto/zkm_proto.h --check-ctl docs/zkmemctl.8

The key table is the header's; only the prose around it lives here. Regenerate the
committed page after changing a key:  docs/gen-conf-man.py proto/zkm_config.h -o docs/zkmemd.conf.5
"""
import argparse
import difflib
import re
import sys

KIND = {
    "U": "unsigned integer",
    "B": "boolean",
    "S": "string",
    "E": "enumeration",
}
C_CONSTANTS = {"UINT64_MAX": 2**64 - 1, "UINT32_MAX": 2**32 - 1, "INT64_MAX": 2**63 - 1,
               "INT32_MAX": 2**31 - 1}


def macro_body(text, name):
    """The joined body of a (possibly multi-line) #define NAME(...)."""
    m = re.search(r"^#define\s+" + re.escape(name) + r"\b[^\n]*", text, re.M)
    if not m:
        sys.exit(f"gen-conf-man: #define {name} not found")
    lines, pos = [], m.start()
    for line in text[pos:].split("\n"):
        lines.append(line.rstrip("\\").rstrip())
        if not line.rstrip().endswith("\\"):
            break
    body = " ".join(lines)
    return re.sub(r"^#define\s+\S+", "", body, count=1)


def split_args(s):
    """Split a C argument list at top-level commas, keeping string literals whole."""
    args, depth, cur, i = [], 0, "", 0
    while i < len(s):
        c = s[i]
        if c == '"':
            j = i + 1
            while s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            cur += s[i:j + 1]
            i = j + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    args.append(cur.strip())
    return args


def x_entries(body):
    """Every X(...) in a macro body, as argument lists."""
    out, i = [], 0
    while True:
        i = body.find("X(", i)
        if i < 0:
            return out
        depth, j = 0, i + 1
        while True:
            c = body[j]
            if c == '"':
                j += 1
                while body[j] != '"':
                    j += 2 if body[j] == "\\" else 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        out.append(split_args(body[i + 2:j]))
        i = j + 1


def c_string(lit):
    """Concatenated C string literals -> text."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', lit)
    return "".join(p.encode().decode("unicode_escape") for p in parts)


def c_int(expr):
    e = expr
    for k, v in C_CONSTANTS.items():
        e = re.sub(r"\b" + k + r"\b", str(v), e)
    e = re.sub(r"(\d+)[uUlL]+\b", r"\1", e)
    if not re.fullmatch(r"[\d\s+\-*/()<>]+", e):
        sys.exit(f"gen-conf-man: cannot evaluate '{expr}'")
    return int(eval(e.replace("/", "//")))  # digits and operators only: checked above


def roff(s):
    """Escape text for roff: backslashes, leading dots/quotes, hyphens in words."""
    s = s.replace("\\", "\\e")
    s = s.replace("-", "\\-")
    if s[:1] in (".", "'"):
        s = "\\&" + s
    return s


def parse(path):
    text = open(path, encoding="utf-8").read()
    keys = []
    sm = re.search(r"^#define\s+ZKM_CONFIG_STR_MAX\s+(\d+)", text, re.M)
    str_max = int(sm.group(1)) if sm else 256
    for a in x_entries(macro_body(text, "ZKM_CONFIG_KEYS")):
        if len(a) != 7:
            sys.exit(f"gen-conf-man: X() with {len(a)} arguments: {a}")
        name, kind, default, lo, hi, scope, doc = a
        k = {"name": name, "kind": kind, "scope": scope, "doc": c_string(doc)}
        if kind == "E":
            em = re.search(r"^#define\s+ZKM_CONFIG_ENUM_" + name + r"\s+(.*)$", text, re.M)
            if not em:
                sys.exit(f"gen-conf-man: ZKM_CONFIG_ENUM_{name} not found")
            k["names"] = [c_string(x) for x in split_args(em.group(1))]
            k["default"] = k["names"][c_int(default)]
            k["range"] = " | ".join(k["names"][c_int(lo):c_int(hi) + 1])
        elif kind == "B":
            k["default"] = "yes" if c_int(default) else "no"
            k["range"] = "yes/no, true/false, on/off, 1/0"
        elif kind == "S":
            v = c_string(default)
            k["default"] = f'"{v}"' if v else "(empty)"
            k["range"] = f"up to {str_max - 1} bytes"
        elif kind == "U":
            k["default"] = str(c_int(default))
            k["range"] = f"{c_int(lo)}..{c_int(hi)}"
        else:
            sys.exit(f"gen-conf-man: unknown kind {kind} for {name}")
        keys.append(k)
    return keys


HEAD = r""".\" Generated by docs/gen-conf-man.py from proto/zkm_config.h: do not edit.
.\" Regenerate: docs/gen-conf-man.py proto/zkm_config.h -o docs/zkmemd.conf.5
.TH ZKMEMD.CONF 5 "" "zkmem" "File Formats"
.nh
.SH NAME
zkmemd.conf \- configuration of the zkmem memory service
.SH SYNOPSIS
.I /etc/zkmem/zkmemd.conf
.PP
.BI ZKMEM_ KEY = value
in the environment of a client process
.SH DESCRIPTION
One list of keys configures both sides of zkmem:
.BR zkmemd (8)
reads the keys marked
.I daemon
from its configuration file
.RI ( /etc/zkmem/zkmemd.conf ,
or the file given with
.BR \-\-config ),
and
.BR libzkmem\-client ,
including the
.B LD_PRELOAD
allocator
.RB ( zkmem (3)),
reads the keys marked
.I client
from environment variables named
.B ZKMEM_
followed by the key in upper case (for example
.BR ZKMEM_SMALL_THRESHOLD=512 ).
.PP
The file holds one
.IB key " = " value
per line.
.B #
starts a comment that runs to the end of the line; blank lines are ignored.
String values may be written in double quotes.
Booleans take
.BR yes / no ,
.BR true / false ,
.BR on / off
or
.BR 1 / 0 .
Integers are plain decimal numbers; the unit is part of the key's name
.RB ( _mb ", " _ms ", " _pages )
and suffixes such as K, M or G are refused.
A key that is not set keeps its default.
.PP
An unknown key, a key meant for clients only, a value of the wrong type or out of range
is an error: zkmemd prints one line naming the file, the line, the key and what is wrong
(for an unknown key, the nearest known one), and exits with status 1 at start, or keeps
its current configuration when reloading on
.BR SIGHUP .
A client ignores an environment variable with a bad value (its key keeps the default).
.PP
.B zkmemd \-\-print\-config
shows the effective value of every key;
.B zkmemctl config
asks a running daemon.
.SH KEYS
Each key lists its type, default, accepted values and who reads it.
"""

TAIL = r""".SH FILES
.TP
.I /etc/zkmem/zkmemd.conf
The daemon's configuration. The installed file sets every key to its default.
.SH EXAMPLES
Reserve 512 hugepages (1 GiB) per node at start, cap each uid at 4 GiB and log more:
.PP
.in +4n
.EX
# /etc/zkmem/zkmemd.conf
hugepages_per_node = 512
memory_budget_mb = 4096
log_level = debug
.EE
.in
.PP
Check the file without starting the daemon, then apply it to a running one:
.PP
.in +4n
.EX
zkmemd \-\-config /etc/zkmem/zkmemd.conf \-\-print\-config
systemctl reload zkmemd
.EE
.in
.PP
Run a program on the zkmem allocator with a larger small tier:
.PP
.in +4n
.EX
ZKMEM_SMALL_THRESHOLD=512 LD_PRELOAD=libzkmem\-preload.so ./server
.EE
.in
.SH SEE ALSO
.BR zkmemd (8),
.BR zkmemctl (8),
.BR zkmem (3)
"""


def render(keys):
    out = [HEAD]
    for k in keys:
        out.append(".TP\n")
        out.append(f".B {k['name']}\n")
        kind = KIND[k["kind"]]
        if k["kind"] == "E":
            kind = "one of " + ", ".join(f"\\fB{n}\\fR" for n in k["names"])
        out.append(roff(k["doc"][:1].upper() + k["doc"][1:]) + ".\n")
        out.append(".br\n")
        out.append(f"Type: {kind}.\n" if k["kind"] == "E" else f"Type: {roff(kind)}.\n")
        out.append(f"Default: \\fB{roff(k['default'])}\\fR.\n")
        if k["kind"] in ("U", "S"):
            out.append(".br\n")
            out.append(f"Range: {roff(k['range'])}.\n")
        out.append(".br\n")
        env = f"\\fB\\%ZKMEM_{k['name'].upper()}\\fR"
        if k["scope"] == "D":
            out.append("Read by: zkmemd, from the file.\n")
        elif k["scope"] == "C":
            out.append(f"Read by: clients, from {env} (refused in the file).\n")
        else:
            out.append(f"Read by: zkmemd, from the file, and clients, from {env}.\n")
    out.append(TAIL)
    return "".join(out)


CTL_BEGIN = '.\\" JSON-KEYS BEGIN (generated by docs/gen-conf-man.py from proto/zkm_proto.h)\n'
CTL_END = '.\\" JSON-KEYS END\n'
CTL_LISTS = [
    ("ZKM_STATUS_FIELDS", "status", "keys of \\fBzkmemctl \\-\\-json status\\fR"),
    ("ZKM_ARENA_FIELDS", "arenas", "keys of each entry of \\fBarenas\\fR "
     "(\\fBzkmemctl \\-\\-json arenas\\fR)"),
    ("ZKM_CLIENT_FIELDS", "clients", "keys of each entry of \\fBclients\\fR "
     "(\\fBzkmemctl \\-\\-json clients\\fR), besides \\fBcomm\\fR (the command name)"),
    ("ZKM_CLIENT_STATS", "stats", "keys of each client's \\fBstats\\fR and of the totals "
     "(\\fBzkmemctl \\-\\-json stats\\fR)"),
    ("ZKM_ADVICE_FIELDS", "advise", "keys of each entry of \\fBclients\\fR "
     "(\\fBzkmemctl \\-\\-json advise\\fR), besides \\fBcomm\\fR, "
     "\\fBpattern_name\\fR, \\fBevidence\\fR and \\fBadvice\\fR (the recommendations)"),
]


def render_ctl_keys(proto_path):
    text = open(proto_path, encoding="utf-8").read()
    out = [CTL_BEGIN]
    for macro, sub, title in CTL_LISTS:
        out.append(f".SS {sub}\n")
        out.append(title[:1].upper() + title[1:] + ":\n")
        for a in x_entries(macro_body(text, macro)):
            name, doc = (a[1], a[2]) if len(a) == 3 else (a[0], a[1])
            out.append(f".TP\n.B {roff(name)}\n{roff(c_string(doc))}\n")
    out.append(CTL_END)
    return "".join(out)


def splice_ctl(page, block):
    try:
        a = page.index(CTL_BEGIN)
        b = page.index(CTL_END) + len(CTL_END)
    except ValueError:
        sys.exit("gen-conf-man: JSON-KEYS BEGIN/END markers not found")
    return page[:a] + block + page[b:]


def ctl_main(a):
    have = open(a.check_ctl or a.update_ctl, encoding="utf-8").read()
    want = splice_ctl(have, render_ctl_keys(a.proto))
    if a.update_ctl:
        if want != have:
            with open(a.update_ctl, "w", encoding="utf-8") as f:
                f.write(want)
        return 0
    if want != have:
        sys.stdout.writelines(difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), a.check_ctl, "generated"))
        print(f"{a.check_ctl}: JSON keys out of date: run docs/gen-conf-man.py --proto "
              f"{a.proto} --update-ctl {a.check_ctl}")
        return 1
    print(f"{a.check_ctl} JSON keys match {a.proto}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("header", nargs="?", help="proto/zkm_config.h")
    ap.add_argument("-o", "--output", help="write the page here instead of stdout")
    ap.add_argument("--check", metavar="FILE", help="compare FILE with the generated page")
    ap.add_argument("--proto", help="proto/zkm_proto.h (with --check-ctl/--update-ctl)")
    ap.add_argument("--check-ctl", metavar="FILE", help="check zkmemctl.8's JSON key lists")
    ap.add_argument("--update-ctl", metavar="FILE", help="rewrite zkmemctl.8's JSON key lists")
    a = ap.parse_args()
    if a.check_ctl or a.update_ctl:
        if not a.proto:
            ap.error("--proto is needed with --check-ctl/--update-ctl")
        return ctl_main(a)
    if not a.header:
        ap.error("the config header is needed")
    page = render(parse(a.header))
    if a.check:
        have = open(a.check, encoding="utf-8").read()
        if have != page:
            sys.stdout.writelines(difflib.unified_diff(
                have.splitlines(True), page.splitlines(True), a.check, "generated"))
            print(f"{a.check} is out of date: run docs/gen-conf-man.py {a.header} -o {a.check}")
            return 1
        print(f"{a.check} matches {a.header}")
        return 0
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
