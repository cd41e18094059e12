/* SPDX-License-Identifier: MIT */
/*
 * cb-handover.c - one process's freed memory, another process's need: both sides.
 *
 *   cb-handover --role a|b [--total-mib 192] [--min 16] [--max 256] [--idle-ms 60000]
 *               [--hold-ms 300] [--max-fails 1000] [--seed 1]
 *
 * Role a (the one that leaves memory behind): allocates --total-mib of small objects
 * (uniform --min..--max bytes, every byte written), frees them all and idles, alive, until
 * its stdin reaches end of file (the runner closes it when b is done) or --idle-ms passes.
 * Phase lines: start, alloc, free, idle, end.
 *
 * Role b (the one that needs it): allocates the same amount. A malloc that returns NULL is
 * counted and b goes on (a smaller size class may still have room); after --max-fails NULLs
 * in all b stops allocating: the memory is not there.
 * Then holds everything --hold-ms (so the runner samples b's final grant), frees it all.
 * Phase lines: start, alloc (ok=1 if every object was allocated, op_ms = time spent
 * allocating), hold, free, end.
 */
#include "cb.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct opts {
    const char *role;
    uint64_t total_mib, min, max, idle_ms, hold_ms, max_fails, seed;
};

static void parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){NULL, 192, 16, 256, 60000, 300, 1000, 1};
    for (int i = 1; i < argc; i++) {
        if (cb_opt_str(argc, argv, &i, "--role", &o->role) ||
            cb_opt_u64(argc, argv, &i, "--total-mib", &o->total_mib) ||
            cb_opt_u64(argc, argv, &i, "--min", &o->min) ||
            cb_opt_u64(argc, argv, &i, "--max", &o->max) ||
            cb_opt_u64(argc, argv, &i, "--idle-ms", &o->idle_ms) ||
            cb_opt_u64(argc, argv, &i, "--hold-ms", &o->hold_ms) ||
            cb_opt_u64(argc, argv, &i, "--max-fails", &o->max_fails) ||
            cb_opt_u64(argc, argv, &i, "--seed", &o->seed))
            continue;
        cb_die("usage: cb-handover --role a|b [--total-mib M] [--min B] [--max B] "
               "[--idle-ms MS] [--hold-ms MS] [--max-fails N] [--seed S]");
    }
    if (!o->role || (strcmp(o->role, "a") != 0 && strcmp(o->role, "b") != 0))
        cb_die("cb-handover: --role a or --role b");
    if (o->min == 0 || o->max < o->min || o->max > 65535 || o->max_fails == 0)
        cb_die("cb-handover: need 0 < min <= max <= 65535, max-fails > 0");
}

/* Allocate until `bytes` are requested or max_fails NULLs in all; returns the count. */
static size_t fill(void **ptr, uint16_t *size, size_t cap, const struct opts *o, uint64_t *seed,
                   int *ok)
{
    uint64_t bytes = o->total_mib * CB_MIB, got = 0, fails = 0;
    size_t n = 0;
    *ok = 1;
    while (got < bytes && n < cap) {
        uint32_t sz = cb_size(seed, (uint32_t)o->min, (uint32_t)o->max);
        void *p = cb_alloc(sz);
        if (!p) {
            *ok = 0;
            if (++fails >= o->max_fails)
                break;
            continue;
        }
        ptr[n] = p;
        size[n] = (uint16_t)sz;
        got += sz;
        n++;
    }
    cb_book(n * (sizeof(void *) + sizeof(uint16_t)));
    return n;
}

static void free_all(void **ptr, const uint16_t *size, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cb_free(ptr[i], size[i]);
}

/* Role a's idle time: until stdin is at end of file, or idle_ms. Never touches malloc. */
static void idle_until_eof(uint64_t idle_ms)
{
    double end = cb_now_ms() + (double)idle_ms;
    char buf[64];
    for (;;) {
        double left = end - cb_now_ms();
        if (left <= 0)
            return;
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int r = poll(&pfd, 1, (int)left + 1);
        if (r > 0 && read(0, buf, sizeof(buf)) <= 0)
            return;
        if (r > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)))
            return;
    }
}

int main(int argc, char **argv)
{
    struct opts o;
    parse(argc, argv, &o);
    int is_a = strcmp(o.role, "a") == 0;
    uint64_t seed = (o.seed + (is_a ? 0 : 1000)) * 0x9E3779B97F4A7C15ULL + 1;
    size_t cap = (size_t)(o.total_mib * CB_MIB / o.min + 1);
    void **ptr = cb_array(cap * sizeof(void *));
    uint16_t *size = cb_array(cap * sizeof(uint16_t));
    char extra[128];
    int ok;

    cb_start();
    cb_phase("start", NULL);
    double t = cb_now_ms();
    size_t n = fill(ptr, size, cap, &o, &seed, &ok);
    snprintf(extra, sizeof(extra), "role=%s ok=%d objects=%zu op_ms=%.1f", o.role, ok, n,
             cb_now_ms() - t);
    cb_phase("alloc", extra);
    if (is_a) {
        free_all(ptr, size, n);
        cb_phase("free", "role=a");
        idle_until_eof(o.idle_ms);
        cb_phase("idle", "role=a");
    } else {
        cb_sleep_ms((double)o.hold_ms);
        cb_phase("hold", "role=b");
        free_all(ptr, size, n);
        cb_phase("free", "role=b");
    }
    cb_phase("end", is_a ? "role=a" : "role=b");
    return is_a || ok ? 0 : 1;
}
