/* SPDX-License-Identifier: MIT */
/*
 * tsc.h - the benchmarks' clock: serialised rdtsc, calibrated against CLOCK_MONOTONIC.
 *
 * This machine has constant_tsc/nonstop_tsc and a tsc clocksource, so one rdtsc pair
 * (~10 ns with the lfences) times a single operation far more finely than
 * clock_gettime (~20 ns, vDSO). tsc_overhead() is the minimum cost of an empty timed
 * region, subtracted from every sample.
 */
#ifndef ZKM_BENCH_TSC_H
#define ZKM_BENCH_TSC_H

#include <stdint.h>
#include <time.h>
#include <x86intrin.h>

static inline uint64_t tsc(void)
{
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* TSC ticks per nanosecond, measured over 50 ms. */
static inline double tsc_per_ns(void)
{
    double t0 = now_s();
    uint64_t c0 = __rdtsc();
    struct timespec d = {0, 50 * 1000 * 1000};
    nanosleep(&d, NULL);
    double t1 = now_s();
    uint64_t c1 = __rdtsc();
    return (double)(c1 - c0) / ((t1 - t0) * 1e9);
}

static inline uint64_t tsc_overhead(void)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 10000; i++) {
        uint64_t a = tsc(), b = tsc();
        if (b - a < best)
            best = b - a;
    }
    return best;
}

static inline int tsc_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#endif /* ZKM_BENCH_TSC_H */
