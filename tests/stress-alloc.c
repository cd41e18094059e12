/* SPDX-License-Identifier: MIT */
/*
 * stress-alloc.c - random multi-threaded operation sequences with content checks.
 *
 * Each thread runs a seeded random sequence of malloc / calloc / aligned_alloc /
 * realloc / free / hand-off over its own slots and a shared exchange table (hand-offs
 * make other threads free and realloc our objects: remote frees). Every object holds
 * its size in its first 8 bytes and, after it, a pattern derived from its address and
 * size; the pattern is checked before every free and realloc (and after a hand-off),
 * so a block given out twice, a lost remote free that came back early, or a realloc
 * that copied wrongly fails the test. Runs under ASan and TSan too (fewer operations:
 * set STRESS_OPS to override). A third run starts each thread with nearly empty small
 * pages, so that medium requests are served from holes.
 */
#include "alloc.h"

#include <check.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define NTHREADS 4
#define NSLOTS   1024
#define NSHARED  256

static _Atomic(uint8_t *) shared[NSHARED];
static long g_ops;

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static inline uint8_t pat(const uint8_t *base, size_t size, size_t i)
{
    return (uint8_t)(((uintptr_t)base >> 4) * 131u + i * 7u + size);
}

static size_t step_for(size_t n)
{
    return n > 4096 ? 61 : 1;
}

static void obj_fill(uint8_t *p, size_t n)
{
    memcpy(p, &n, sizeof(n));
    for (size_t i = 8; i < n; i += step_for(n))
        p[i] = pat(p, n, i);
    p[n - 1] = pat(p, n, n - 1);
}

/* Check the pattern written at `orig` (its address) now found at p, first `len` bytes. */
static void obj_check_at(const uint8_t *p, const uint8_t *orig, size_t n, size_t len)
{
    size_t stored;
    memcpy(&stored, p, sizeof(stored));
    /* plain ifs: a passing ck_assert costs a locked write in Check */
    if (stored != n)
        ck_abort_msg("object %p: size field %zu, expected %zu", (void *)p, stored, n);
    for (size_t i = 8; i < len; i += step_for(n))
        if (p[i] != pat(orig, n, i))
            ck_abort_msg("object %p size %zu: byte %zu corrupt", (void *)p, n, i);
    if (len == n && p[n - 1] != pat(orig, n, n - 1))
        ck_abort_msg("object %p size %zu: last byte corrupt", (void *)p, n);
}

static void obj_check(const uint8_t *p)
{
    size_t n;
    memcpy(&n, p, sizeof(n));
    if (zkm_usable_size(p) < n)
        ck_abort_msg("object %p: usable size below %zu", (void *)p, n);
    obj_check_at(p, p, n, n);
}

static size_t rand_size(uint64_t *s)
{
    uint64_t r = rnd(s) % 1000;
    if (r < 700)
        return 16 + rnd(s) % 241;
    if (r < 900)
        return 257 + rnd(s) % (8192 - 257);
    if (r < 985)
        return 8193 + rnd(s) % (256 * 1024);
    return 256 * 1024 + rnd(s) % (3 << 20);
}

static uint8_t *rand_alloc(uint64_t *s)
{
    size_t n = rand_size(s);
    uint8_t *p;
    switch (rnd(s) % 8) {
    case 0: {
        p = zkm_calloc(1, n);
        if (!p)
            ck_abort_msg("calloc(%zu) failed", n);
        for (size_t i = 0; i < n; i += step_for(n))
            if (p[i] != 0)
                ck_abort_msg("calloc(%zu) byte %zu not zero", n, i);
        if (p[n - 1] != 0)
            ck_abort_msg("calloc(%zu) last byte not zero", n);
        break;
    }
    case 1: {
        size_t a = (size_t)16 << (rnd(s) % 13);
        p = zkm_aligned_alloc(a, n);
        if (!p || (uintptr_t)p % a != 0)
            ck_abort_msg("aligned_alloc(%zu, %zu) = %p", a, n, (void *)p);
        break;
    }
    default:
        p = zkm_malloc(n);
        if (!p)
            ck_abort_msg("malloc(%zu) failed", n);
    }
    obj_fill(p, n);
    return p;
}

static void *worker(void *arg)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull * ((uint64_t)(uintptr_t)arg + 1);
    uint8_t *slot[NSLOTS] = {0};
    for (long op = 0; op < g_ops; op++) {
        unsigned i = (unsigned)(rnd(&seed) % NSLOTS);
        unsigned what = (unsigned)(rnd(&seed) % 100);
        if (!slot[i]) {
            slot[i] = rand_alloc(&seed);
        } else if (what < 45) {
            obj_check(slot[i]);
            zkm_free(slot[i]);
            slot[i] = NULL;
        } else if (what < 65) {
            uint8_t *old = slot[i];
            size_t n;
            memcpy(&n, old, sizeof(n));
            obj_check(old);
            size_t m = rand_size(&seed);
            /* keep the old pattern's expected values: compare against a copy of the
             * address, never dereference `old` after realloc */
            uint8_t *p = zkm_realloc(old, m);
            if (!p)
                ck_abort_msg("realloc(%zu) failed", m);
            obj_check_at(p, old, n, n < m ? n : m);
            obj_fill(p, m);
            slot[i] = p;
        } else if (what < 80) {
            /* hand our object to whoever takes this shared slot, take theirs */
            unsigned k = (unsigned)(rnd(&seed) % NSHARED);
            uint8_t *theirs = atomic_exchange(&shared[k], slot[i]);
            slot[i] = theirs;
            if (theirs)
                obj_check(theirs);
        } else {
            obj_check(slot[i]);
        }
    }
    for (unsigned i = 0; i < NSLOTS; i++)
        if (slot[i]) {
            obj_check(slot[i]);
            zkm_free(slot[i]);
        }
    return NULL;
}

/* NTHREADS threads of fn (argument first + i), started and joined. */
static void run_workers(void *(*fn)(void *), long first)
{
    pthread_t t[NTHREADS];
    for (long i = 0; i < NTHREADS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, fn, (void *)(first + i)), 0);
    for (int i = 0; i < NTHREADS; i++)
        ck_assert_int_eq(pthread_join(t[i], NULL), 0);
}

/* What the threads left in the shared table: checked and freed. */
static void drain_shared(void)
{
    for (int k = 0; k < NSHARED; k++) {
        uint8_t *p = atomic_exchange(&shared[k], NULL);
        if (p) {
            obj_check(p);
            zkm_free(p);
        }
    }
}

/* The same random operations in a heap whose small pages are nearly empty: each thread
 * first allocates 24,000 objects of 48..256 B and frees 90% of them at random, so its
 * medium requests are served from holes between the survivors (heap.c), which are
 * checked at the end like every other object. */
enum { HOLE_SMALL = 24000 };
static uint8_t *g_small[NTHREADS][HOLE_SMALL];

static void *worker_holes(void *arg)
{
    unsigned t = (unsigned)(uintptr_t)arg;
    uint64_t seed = 0x51ed270b27a3c4d1ull * (t + 1);
    uint8_t **small = g_small[t];
    for (unsigned i = 0; i < HOLE_SMALL; i++) {
        size_t n = 48 + rnd(&seed) % 209;
        small[i] = zkm_malloc(n);
        if (!small[i])
            ck_abort_msg("malloc(%zu) failed", n);
        obj_fill(small[i], n);
    }
    for (unsigned i = 0; i < HOLE_SMALL; i++)
        if (rnd(&seed) % 10 != 0) {
            obj_check(small[i]);
            zkm_free(small[i]);
            small[i] = NULL;
        }
    worker(arg);
    for (unsigned i = 0; i < HOLE_SMALL; i++)
        if (small[i]) {
            obj_check(small[i]);
            zkm_free(small[i]);
        }
    return NULL;
}

START_TEST(random_ops_in_holes)
{
    g_ops = SANITIZED ? 20000 : 200000;
    struct zkm_alloc_counters c0, c1;
    zkm__alloc_counters(&c0);
    run_workers(worker_holes, 0);
    drain_shared();
    zkm__alloc_counters(&c1);
    ck_assert_uint_gt(c1.hole_pages, c0.hole_pages);
    ck_assert_uint_gt(c1.hole_allocs, c0.hole_allocs);
}
END_TEST

START_TEST(random_ops_threads)
{
    const char *e = getenv("STRESS_OPS");
    g_ops = e ? atol(e) : (SANITIZED ? 20000 : 300000);
    run_workers(worker, 0);
    drain_shared();
    struct zkm_alloc_counters c;
    zkm__alloc_counters(&c);
    ck_assert_uint_gt(c.remote_frees, 0);
    ck_assert_uint_gt(c.slabs_abandoned + c.slabs_to_source + c.slabs_reused, 0);
}
END_TEST

START_TEST(random_ops_second_generation)
{
    /* threads that start after others exited adopt their slabs and keep going */
    g_ops = SANITIZED ? 10000 : 100000;
    for (int gen = 0; gen < 3; gen++)
        run_workers(worker, 10L * gen);
    drain_shared();
    struct zkm_alloc_counters c;
    zkm__alloc_counters(&c);
    ck_assert_uint_gt(c.slabs_adopted + c.slabs_reused, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stress-alloc");
    TCase *tc = tcase_create("random");
    tcase_add_test(tc, random_ops_threads);
    tcase_add_test(tc, random_ops_second_generation);
    tcase_add_test(tc, random_ops_in_holes);
    tcase_set_timeout(tc, 280);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
