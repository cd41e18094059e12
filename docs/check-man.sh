#!/bin/sh
# check-man.sh PAGE...: each page renders with `man -l` without a single warning.
set -u
fail=0
for page in "$@"; do
    warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
    if [ -n "$warnings" ]; then
        echo "$page:"
        echo "$warnings"
        fail=1
    elif [ -z "$(MANWIDTH=80 man -l "$page" 2>/dev/null | col -b)" ]; then
        echo "$page: renders empty"
        fail=1
    else
        echo "$page: OK"
    fi
done
exit $fail
