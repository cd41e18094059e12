/* SPDX-License-Identifier: MIT */
/*
 * cb-ramp.c - demand that keeps doubling: does the allocator's supply keep up without stalls?
 *
 *   cb-ramp [--total-mib 512] [--steps 10] [--step-ms 500] [--min 16] [--max 1024]
 *           [--chunk-kib 64] [--touch all|page] [--stall-us 50] [--hold-ms 500] [--seed 1]
 *
 * Allocates --total-mib of objects (uniform --min..--max bytes, all kept live) in --steps
 * steps of --step-ms each; the allocation rate doubles from one step to the next (step k
 * requests total * 2^k / (2^steps - 1) bytes). Within a step the requests are paced: after
 * every --chunk-kib requested the program sleeps until the schedule catches up, so the idle
 * gaps a real program would have exist (the background may use them). Small chunks make a
 * smooth rate; large ones make bursts (a chunk is requested as fast as the allocator
 * serves it, then the program idles). --touch all writes every byte of an object; page
 * writes one byte per 4 KiB (buffers reserved ahead of use), so the allocator's supply, not
 * the program's memset, sets the pace of a burst. A step that cannot finish in time runs
 * over (lag_ms); the next one starts when it ends.
 *
 * Every malloc is timed (CLOCK_MONOTONIC, about 20 ns per reading): per step the slowest
 * call (max_us) and the calls slower than --stall-us (stalls).
 * Phase lines (cb.h): start, step0..step<N-1>, hold, end.
 */
#include "cb.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

struct opts {
    uint64_t total_mib, steps, step_ms, min, max, chunk_kib, stall_us, hold_ms, seed;
    int touch_page;
};

struct step_stats {
    uint64_t objects, stalls;
    double max_us;
};

static void parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){512, 10, 500, 16, 1024, 64, 50, 500, 1, 0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--touch") == 0 && i + 1 < argc &&
            (strcmp(argv[i + 1], "all") == 0 || strcmp(argv[i + 1], "page") == 0)) {
            o->touch_page = strcmp(argv[++i], "page") == 0;
            continue;
        }
        if (cb_opt_u64(argc, argv, &i, "--total-mib", &o->total_mib) ||
            cb_opt_u64(argc, argv, &i, "--steps", &o->steps) ||
            cb_opt_u64(argc, argv, &i, "--step-ms", &o->step_ms) ||
            cb_opt_u64(argc, argv, &i, "--min", &o->min) ||
            cb_opt_u64(argc, argv, &i, "--max", &o->max) ||
            cb_opt_u64(argc, argv, &i, "--chunk-kib", &o->chunk_kib) ||
            cb_opt_u64(argc, argv, &i, "--stall-us", &o->stall_us) ||
            cb_opt_u64(argc, argv, &i, "--hold-ms", &o->hold_ms) ||
            cb_opt_u64(argc, argv, &i, "--seed", &o->seed))
            continue;
        cb_die("usage: cb-ramp [--total-mib M] [--steps N] [--step-ms MS] [--min B] [--max B] "
               "[--chunk-kib K] [--touch all|page] [--stall-us US] [--hold-ms MS] [--seed S]");
    }
    if (o->steps == 0 || o->steps > 30 || o->step_ms == 0 || o->min == 0 || o->max < o->min ||
        o->chunk_kib == 0)
        cb_die("cb-ramp: need 1 <= steps <= 30, step-ms > 0, 0 < min <= max, chunk-kib > 0");
}

static double ns_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* One timed allocation of `sz` bytes into ptr[*n]. */
static void timed_alloc(void **ptr, size_t *n, uint32_t sz, const struct opts *o,
                        struct step_stats *st)
{
    double t0 = ns_now();
    void *p = o->touch_page ? cb_alloc_sparse(sz) : cb_alloc(sz);
    double us = (ns_now() - t0) / 1e3;
    if (us > st->max_us)
        st->max_us = us;
    if (us > (double)o->stall_us)
        st->stalls++;
    if (p) {
        ptr[(*n)++] = p;
        st->objects++;
    }
}

/* Request `bytes` paced evenly over step_ms from now. */
static void run_step(void **ptr, size_t *n, size_t cap, uint64_t bytes, const struct opts *o,
                     uint64_t *seed, struct step_stats *st)
{
    const uint64_t chunk = o->chunk_kib * 1024;
    double start = cb_now_ms();
    uint64_t got = 0, next_pause = chunk;
    while (got < bytes && *n < cap) {
        uint32_t sz = cb_size(seed, (uint32_t)o->min, (uint32_t)o->max);
        timed_alloc(ptr, n, sz, o, st);
        got += sz;
        if (got >= next_pause) {
            next_pause += chunk;
            double due = start + (double)o->step_ms * (double)got / (double)bytes;
            if (due > cb_now_ms())
                cb_sleep_ms(due - cb_now_ms());
        }
    }
}

int main(int argc, char **argv)
{
    struct opts o;
    parse(argc, argv, &o);
    uint64_t seed = o.seed * 0x9E3779B97F4A7C15ULL + 1;
    uint64_t total = o.total_mib * CB_MIB, parts = (1ull << o.steps) - 1;
    size_t cap = (size_t)(total / o.min + 1), n = 0;
    void **ptr = cb_array(cap * sizeof(void *));

    cb_start();
    cb_phase("start", NULL);
    for (uint64_t k = 0; k < o.steps; k++) {
        struct step_stats st = {0, 0, 0.0};
        uint64_t bytes = total / parts * (1ull << k);
        size_t before = n;
        double t0 = cb_now_ms();
        run_step(ptr, &n, cap, bytes, &o, &seed, &st);
        double took = cb_now_ms() - t0;
        cb_book((n - before) * sizeof(void *));
        char name[32], extra[192];
        snprintf(name, sizeof(name), "step%u", (unsigned)k);
        snprintf(extra, sizeof(extra),
                 "step_bytes=%llu objects=%llu step_ms=%.1f lag_ms=%.1f max_us=%.1f stalls=%llu",
                 (unsigned long long)bytes, (unsigned long long)st.objects, took,
                 took > (double)o.step_ms ? took - (double)o.step_ms : 0.0, st.max_us,
                 (unsigned long long)st.stalls);
        cb_phase(name, extra);
    }
    cb_sleep_ms((double)o.hold_ms);
    cb_phase("hold", NULL);
    cb_phase("end", NULL);
    return 0;
}
