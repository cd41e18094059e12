/* SPDX-License-Identifier: MIT */
/*
 * cb-randfree.c - fragmentation: most objects freed at random, then larger ones allocated.
 *
 *   cb-randfree [--total-mib 1024] [--min 16] [--max 256] [--free-pct 90]
 *               [--second-mib 512] [--second-min 512] [--second-max 8192]
 *               [--hold-ms 1000] [--seed 1]
 *
 * 1. alloc:  --total-mib of small objects (uniform --min..--max bytes, every byte written);
 * 2. free:   --free-pct percent of them freed in random order (a Fisher-Yates permutation
 *            of the object numbers; which ones survive is random, so few pages empty out);
 * 3. alloc2: --second-mib of objects uniform --second-min..--second-max bytes (another
 *            size range, so the holes left by step 2 fit them only if the allocator can
 *            reuse freed pages across size classes);
 * 4. hold:   --hold-ms with everything still live (the background has time to act).
 * Phase lines (cb.h): start, alloc, free, alloc2, hold, end; each hwm_kb is that phase's
 * own peak (VmHWM reset between phases, plus hugetlb pages mapped at its end).
 */
#include "cb.h"

#include <stdio.h>

struct opts {
    uint64_t total_mib, min, max, free_pct, second_mib, second_min, second_max, hold_ms, seed;
};

static void parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){1024, 16, 256, 90, 512, 512, 8192, 1000, 1};
    for (int i = 1; i < argc; i++) {
        if (cb_opt_u64(argc, argv, &i, "--total-mib", &o->total_mib) ||
            cb_opt_u64(argc, argv, &i, "--min", &o->min) ||
            cb_opt_u64(argc, argv, &i, "--max", &o->max) ||
            cb_opt_u64(argc, argv, &i, "--free-pct", &o->free_pct) ||
            cb_opt_u64(argc, argv, &i, "--second-mib", &o->second_mib) ||
            cb_opt_u64(argc, argv, &i, "--second-min", &o->second_min) ||
            cb_opt_u64(argc, argv, &i, "--second-max", &o->second_max) ||
            cb_opt_u64(argc, argv, &i, "--hold-ms", &o->hold_ms) ||
            cb_opt_u64(argc, argv, &i, "--seed", &o->seed))
            continue;
        cb_die("usage: cb-randfree [--total-mib M] [--min B] [--max B] [--free-pct P] "
               "[--second-mib M] [--second-min B] [--second-max B] [--hold-ms MS] [--seed S]");
    }
    if (o->min == 0 || o->max < o->min || o->max > 65535 || o->free_pct > 100 ||
        o->second_min == 0 || o->second_max < o->second_min || o->second_max > 65535)
        cb_die("cb-randfree: need 0 < min <= max <= 65535 (both ranges), free-pct <= 100");
}

/* Allocate objects of min..max bytes until `bytes` are requested; returns the count. */
static size_t fill(void **ptr, uint16_t *size, size_t cap, uint64_t bytes, uint32_t min,
                   uint32_t max, uint64_t *seed)
{
    size_t n = 0;
    for (uint64_t got = 0; got < bytes && n < cap; n++) {
        uint32_t sz = cb_size(seed, min, max);
        ptr[n] = cb_alloc(sz);
        size[n] = (uint16_t)sz;
        got += sz;
    }
    cb_book(n * (sizeof(void *) + sizeof(uint16_t)));
    return n;
}

/* A random permutation of 0..n-1. */
static uint32_t *permutation(size_t n, uint64_t *seed)
{
    uint32_t *perm = cb_array(n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(cb_rand(seed) % i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    cb_book(n * sizeof(uint32_t));
    return perm;
}

int main(int argc, char **argv)
{
    struct opts o;
    parse(argc, argv, &o);
    uint64_t seed = o.seed * 0x9E3779B97F4A7C15ULL + 1;
    size_t cap1 = (size_t)(o.total_mib * CB_MIB / o.min + 1);
    size_t cap2 = (size_t)(o.second_mib * CB_MIB / o.second_min + 1);
    void **ptr1 = cb_array(cap1 * sizeof(void *)), **ptr2 = cb_array(cap2 * sizeof(void *));
    uint16_t *size1 = cb_array(cap1 * sizeof(uint16_t)), *size2 = cb_array(cap2 * sizeof(uint16_t));
    char extra[96];

    cb_start();
    cb_phase("start", NULL);
    double t = cb_now_ms();
    size_t n1 =
        fill(ptr1, size1, cap1, o.total_mib * CB_MIB, (uint32_t)o.min, (uint32_t)o.max, &seed);
    snprintf(extra, sizeof(extra), "objects=%zu op_ms=%.1f", n1, cb_now_ms() - t);
    cb_phase("alloc", extra);

    uint32_t *perm = permutation(n1, &seed);
    size_t n_free = (size_t)((uint64_t)n1 * o.free_pct / 100);
    t = cb_now_ms();
    for (size_t k = 0; k < n_free; k++)
        cb_free(ptr1[perm[k]], size1[perm[k]]);
    snprintf(extra, sizeof(extra), "objects=%zu op_ms=%.1f", n_free, cb_now_ms() - t);
    cb_phase("free", extra);

    t = cb_now_ms();
    size_t n2 = fill(ptr2, size2, cap2, o.second_mib * CB_MIB, (uint32_t)o.second_min,
                     (uint32_t)o.second_max, &seed);
    snprintf(extra, sizeof(extra), "objects=%zu op_ms=%.1f", n2, cb_now_ms() - t);
    cb_phase("alloc2", extra);

    cb_sleep_ms((double)o.hold_ms);
    cb_phase("hold", NULL);
    cb_phase("end", NULL);
    return 0;
}
