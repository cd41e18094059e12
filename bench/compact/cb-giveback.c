/* SPDX-License-Identifier: MIT */
/*
 * cb-giveback.c - does freed memory go back, and how fast, when the program goes idle?
 *
 *   cb-giveback [--total-mib 1024] [--gens 10] [--keep 4] [--min 16] [--max 256]
 *               [--idle-ms 3000] [--seed 1]
 *
 * Allocates --total-mib of small objects (uniform --min..--max bytes, every byte written)
 * in --gens generations of equal requested size, one after the other, so each generation
 * fills its own stretch of memory. Then frees every generation but --keep (a middle one by
 * default: neither the bottom nor the top of the heap, so no allocator gets its memory back
 * by simply trimming the top), and idles --idle-ms without touching the allocator. Whatever
 * memory comes back during the idle time comes back by itself (no malloc_trim).
 *
 * Phase lines (cb.h): start, gen0..gen<N-1> (end of each generation), free (the nine
 * generations freed; the runner's t=0 for give-back), idle (end of the idle time), end.
 */
#include "cb.h"

#include <stdio.h>
#include <string.h>

struct opts {
    uint64_t total_mib, gens, keep, min, max, idle_ms, seed;
};

static void parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){1024, 10, 4, 16, 256, 3000, 1};
    for (int i = 1; i < argc; i++) {
        if (cb_opt_u64(argc, argv, &i, "--total-mib", &o->total_mib) ||
            cb_opt_u64(argc, argv, &i, "--gens", &o->gens) ||
            cb_opt_u64(argc, argv, &i, "--keep", &o->keep) ||
            cb_opt_u64(argc, argv, &i, "--min", &o->min) ||
            cb_opt_u64(argc, argv, &i, "--max", &o->max) ||
            cb_opt_u64(argc, argv, &i, "--idle-ms", &o->idle_ms) ||
            cb_opt_u64(argc, argv, &i, "--seed", &o->seed))
            continue;
        cb_die("usage: cb-giveback [--total-mib M] [--gens G] [--keep K] [--min B] [--max B] "
               "[--idle-ms MS] [--seed S]");
    }
    if (o->gens == 0 || o->keep >= o->gens || o->min == 0 || o->max < o->min || o->max > 65535)
        cb_die("cb-giveback: need gens > keep, 0 < min <= max <= 65535");
}

int main(int argc, char **argv)
{
    struct opts o;
    parse(argc, argv, &o);
    uint64_t seed = o.seed * 0x9E3779B97F4A7C15ULL + 1;
    uint64_t per_gen = o.total_mib * CB_MIB / o.gens;
    size_t cap = (size_t)(o.total_mib * CB_MIB / o.min + o.gens);
    void **ptr = cb_array(cap * sizeof(void *));
    uint16_t *size = cb_array(cap * sizeof(uint16_t));
    size_t *gen_start = cb_array((o.gens + 1) * sizeof(size_t));
    size_t n = 0;

    cb_start();
    cb_phase("start", NULL);
    for (uint64_t g = 0; g < o.gens; g++) {
        gen_start[g] = n;
        uint64_t bytes = 0;
        while (bytes < per_gen && n < cap) {
            uint32_t sz = cb_size(&seed, (uint32_t)o.min, (uint32_t)o.max);
            ptr[n] = cb_alloc(sz);
            size[n] = (uint16_t)sz;
            bytes += sz;
            n++;
        }
        cb_book(((n - gen_start[g]) * (sizeof(void *) + sizeof(uint16_t))));
        char name[32], extra[64];
        snprintf(name, sizeof(name), "gen%u", (unsigned)g);
        snprintf(extra, sizeof(extra), "objects=%zu", n - gen_start[g]);
        cb_phase(name, extra);
    }
    gen_start[o.gens] = n;

    double t_free = cb_now_ms();
    for (uint64_t g = 0; g < o.gens; g++) {
        if (g == o.keep)
            continue;
        for (size_t i = gen_start[g]; i < gen_start[g + 1]; i++)
            cb_free(ptr[i], size[i]);
    }
    char extra[64];
    snprintf(extra, sizeof(extra), "free_ms=%.1f", cb_now_ms() - t_free);
    cb_phase("free", extra);

    cb_sleep_ms((double)o.idle_ms);
    cb_phase("idle", NULL);
    cb_phase("end", NULL);
    return 0;
}
