#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""
test-protocol-doc.py - proto/PROTOCOL.md cannot drift from proto/zkm_proto.h.

Usage: test-protocol-doc.py SOURCE_ROOT

Checks, from the header's text:
  * every struct, every struct member, every X-macro field, every enum value name, every
    ZKM_* constant and every function declared in zkm_proto.h appears in PROTOCOL.md;
  * every enum value appears in a table row together with its numeric value;
  * every X-macro field and every member of a struct with a layout table is a row of
    that table (tables are marked `<!-- layout: struct NAME -->`);
  * every _Static_assert'ed literal size appears in the `<!-- sizes -->` table.
Then, when a C compiler is found ($CC, cc, gcc, clang), it compiles a program that prints
offsetof/sizeof for every row of every layout table and every row of the sizes table,
and compares them with the document's numbers.

Exit status 0 = pass, 1 = fail (each problem printed). Only the compiler part can be
skipped (with a printed reason, when no compiler exists); the rest always runs.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

problems = []


def fail(msg):
    problems.append(msg)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def parse_header(text):
    code = strip_comments(text)
    code = code.replace("\\\n", " ")  # join macro continuation lines
    h = {}

    # structs and their members (nested anonymous types do not occur)
    h["structs"] = {}
    for m in re.finditer(r"struct\s+(zkm_\w+)\s*\{(.*?)\};", code, flags=re.S):
        name, body = m.group(1), m.group(2)
        members, uses = [], []
        for decl in body.split(";"):
            # "#define ZKM_X_FIELD(...)" lines inside a body end up in the same chunk as
            # the X-macro use that follows: record the use, then drop both
            decl = decl.strip()
            for use in re.finditer(r"\b(ZKM_[A-Z_]+)\(\s*ZKM_X_\w+\s*\)", decl):
                uses.append(use.group(1))
            decl = re.sub(r"#\s*(define|undef)[^\n]*", " ", decl)
            decl = re.sub(r"\bZKM_[A-Z_]+\(\s*ZKM_X_\w+\s*\)", " ", decl)
            decl = re.sub(r"_Alignas\([^)]*\)", " ", decl).strip()
            mm = re.match(r"^(?:struct\s+)?[\w ]+?\s+(\w+)\s*(\[[^\]]*\])?$", decl)
            if mm:
                members.append(mm.group(1))
        h["structs"][name] = {"members": members, "xmacros": uses}

    # X-macro lists: #define NAME(X) X(...) X(...)
    h["xmacros"] = {}
    for m in re.finditer(r"#define\s+(ZKM_\w+)\(X\)(.*?)(?=\n)", code):
        # X(type, name, "desc") or X(name, "desc"); descriptions may hold , and ( )
        fields = re.findall(r'\bX\(\s*(?:[\w ]+?\s*,\s*)?(\w+)\s*,\s*"', m.group(2))
        h["xmacros"][m.group(1)] = fields

    # enums with values
    h["enums"] = {}
    for m in re.finditer(r"enum\s+(zkm_\w+)\s*\{(.*?)\};", code, flags=re.S):
        vals, nxt = [], 0
        for item in m.group(2).split(","):
            item = item.strip()
            if not item:
                continue
            if "=" in item:
                n, v = [s.strip() for s in item.split("=", 1)]
                if re.match(r"^'.'$", v):
                    vals.append((n, v))
                    nxt = ord(v[1]) + 1
                    continue
                nxt = int(v, 0)
            else:
                n = item
            vals.append((n, str(nxt)))
            nxt += 1
        h["enums"][m.group(1)] = vals

    skip = {"ZKM_PROTO_H", "ZKM_X_FIELD", "ZKM_X_STAT"}
    h["defines"] = [d for d in re.findall(r"#define\s+(ZKM_\w+)", code)
                    if d not in skip and d not in h["xmacros"]]
    h["functions"] = sorted(set(re.findall(r"\b(zkm_\w+)\s*\(", code)))
    h["sizes"] = [(s, int(n)) for s, n in
                  re.findall(r"_Static_assert\(\s*sizeof\(struct\s+(\w+)\)\s*==\s*(\d+)\s*,", code)]
    return h


def table_after(doc, marker):
    """Rows (lists of cells) of the first markdown table after `marker`."""
    i = doc.find(marker)
    if i < 0:
        return None
    rows = []
    started = False
    for line in doc[i + len(marker):].splitlines():
        s = line.strip()
        if not s:
            if started:
                break
            continue
        if not s.startswith("|"):
            break
        started = True
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", s)[1:-1]]
        if all(re.match(r"^:?-+:?$", c) for c in cells):
            continue
        rows.append(cells)
    return rows[1:]  # drop the column titles


def unquote(cell):
    return cell.replace("`", "").strip()


def layout_tables(doc):
    out = {}
    for m in re.finditer(r"<!-- layout: struct (\w+) -->", doc):
        rows = table_after(doc, m.group(0))
        out[m.group(1)] = [(int(r[0]), int(r[1]), unquote(r[3])) for r in rows
                           if len(r) >= 4 and r[0].isdigit() and r[1].isdigit()]
    return out


def word_in(doc, w):
    return re.search(r"(?<![\w])" + re.escape(w) + r"(?![\w])", doc) is not None


def check_names(h, doc, layouts):
    for s, info in h["structs"].items():
        if not word_in(doc, s):
            fail(f"struct {s} is not mentioned")
        table = {r[2] for r in layouts.get(s, [])}
        for mem in info["members"]:
            if s in layouts:
                if mem not in table:
                    fail(f"member {s}.{mem} is not a row of its layout table")
            elif not word_in(doc, mem):
                fail(f"member {s}.{mem} is not mentioned")
        for xm in info["xmacros"]:
            if not word_in(doc, xm):
                fail(f"X-macro {xm} (struct {s}) is not mentioned")
            for f in h["xmacros"].get(xm, []):
                if s in layouts and f not in table:
                    fail(f"X-macro field {xm}:{f} is not a row of the {s} table")
    for xm, fields in h["xmacros"].items():
        for f in fields:
            if not re.search(r"`" + re.escape(f) + r"`", doc):
                fail(f"X-macro field {xm}:{f} is not mentioned as `{f}`")
    for e, vals in h["enums"].items():
        if not word_in(doc, e):
            fail(f"enum {e} is not mentioned")
        for n, v in vals:
            rows = [l for l in doc.splitlines() if l.lstrip().startswith("|") and word_in(l, n)]
            if not rows:
                fail(f"enum value {n} is not in any table")
                continue
            if v.startswith("'"):
                ok = any(v in r for r in rows)
            else:
                ok = any(re.search(r"\|\s*" + re.escape(v) + r"\s*\|", r) for r in rows)
            if not ok:
                fail(f"enum value {n} = {v}: no table row shows both")
    for d in h["defines"]:
        if not word_in(doc, d):
            fail(f"constant {d} is not mentioned")
    for f in h["functions"]:
        if not word_in(doc, f):
            fail(f"function {f}() is not mentioned")
    sizes = table_after(doc, "<!-- sizes -->") or []
    size_of = {unquote(r[0]): r[1] for r in sizes if len(r) >= 2}
    if not sizes:
        fail("no <!-- sizes --> table")
    for s, n in h["sizes"]:
        if size_of.get(s) != str(n):
            fail(f"sizes table: {s} should be {n}, doc says {size_of.get(s)}")
    return size_of


def find_cc():
    for c in [os.environ.get("CC"), "cc", "gcc", "clang"]:
        if c and shutil.which(c.split()[0]):
            return c
    return None


def check_offsets(root, layouts, size_of):
    cc = find_cc()
    if not cc:
        print("SKIP offsets check: no C compiler found ($CC, cc, gcc, clang)")
        return
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "zkm_proto.h"',
             "int main(void) {"]
    expect = []
    for s, rows in layouts.items():
        for off, size, name in rows:
            lines.append(f'printf("%zu %zu\\n", offsetof(struct {s}, {name}), '
                         f"sizeof(((struct {s} *)0)->{name}));")
            expect.append((f"{s}.{name}", off, size))
    for s, n in size_of.items():
        if not n.isdigit():
            continue
        lines.append(f'printf("%zu 0\\n", sizeof(struct {s}));')
        expect.append((f"sizeof(struct {s})", int(n), 0))
    lines.append("return 0; }")
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "off.c"), os.path.join(d, "off")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        r = subprocess.run(cc.split() + ["-std=gnu11", "-I", os.path.join(root, "proto"), src,
                                         "-o", exe], capture_output=True, text=True)
        if r.returncode != 0:
            fail("the offsets program does not compile (a table names a field that does not "
                 "exist?):\n" + r.stderr[-3000:])
            return
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split("\n")
    for (what, off, size), line in zip(expect, out):
        got_off, got_size = (int(x) for x in line.split())
        if (got_off, got_size) != (off, size):
            fail(f"{what}: doc says offset {off} size {size}, the compiler says offset "
                 f"{got_off} size {got_size}")
    print(f"offsets: {len(expect)} table entries checked with {cc}")


def main():
    if len(sys.argv) != 2:
        print("usage: test-protocol-doc.py SOURCE_ROOT", file=sys.stderr)
        return 2
    root = sys.argv[1]
    with open(os.path.join(root, "proto", "zkm_proto.h")) as f:
        h = parse_header(f.read())
    with open(os.path.join(root, "proto", "PROTOCOL.md")) as f:
        doc = f.read()

    # the parser itself must have found something, or every check passes vacuously
    n_members = sum(len(s["members"]) for s in h["structs"].values())
    n_fields = sum(len(v) for v in h["xmacros"].values())
    n_enum = sum(len(v) for v in h["enums"].values())
    for what, n, least in [("structs", len(h["structs"]), 15), ("members", n_members, 60),
                           ("X-macro fields", n_fields, 50), ("enum values", n_enum, 20),
                           ("constants", len(h["defines"]), 20), ("sizes", len(h["sizes"]), 10)]:
        if n < least:
            fail(f"header parser found only {n} {what} (expected >= {least}): fix the parser")

    layouts = layout_tables(doc)
    size_of = check_names(h, doc, layouts)
    check_offsets(root, layouts, size_of)

    print(f"zkm_proto.h: {len(h['structs'])} structs, {n_members} members, {n_fields} X-macro "
          f"fields, {n_enum} enum values, {len(h['defines'])} constants, "
          f"{len(h['functions'])} functions; {len(layouts)} layout tables in PROTOCOL.md")
    for p in problems:
        print("FAIL:", p)
    if problems:
        print(f"{len(problems)} problems: PROTOCOL.md has drifted from zkm_proto.h")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
