#!/bin/sh
# verify-units.sh SRCDIR ZKMEMD: `systemd-analyze verify` on zkmemd.service (ExecStart
# pointed at the built ZKMEMD) and zkmemd.socket. Exit 77 (skip) without systemd-analyze.
set -eu
src=$1
zkmemd=$2
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze not installed"
    exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bindir=$(dirname "$zkmemd")
[ -x "$bindir/zkmemd" ] || { echo "no executable $bindir/zkmemd"; exit 1; }
sed "s|@bindir@|$bindir|g" "$src/zkmemd.service.in" >"$tmp/zkmemd.service"
cp "$src/zkmemd.socket" "$tmp/zkmemd.socket"
# --man=no: the man pages are checked by docs/ and need not be installed here.
out=$(systemd-analyze verify --man=no "$tmp/zkmemd.service" "$tmp/zkmemd.socket" 2>&1) || {
    echo "$out"
    exit 1
}
# verify prints warnings without failing: treat any output about our units as an error
if echo "$out" | grep -q 'zkmemd'; then
    echo "$out"
    exit 1
fi
echo "systemd-analyze verify: zkmemd.service zkmemd.socket OK"
