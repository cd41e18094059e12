/* SPDX-License-Identifier: MIT */
/*
 * test-alloc.c - the allocator's internals (client-lib/alloc.h): size classes and the
 * stated waste bound, thread caches (LIFO reuse, no slab traffic in steady state),
 * remote frees (counted, collected, memory reused), thread exit (abandon) and
 * adoption, large spans (in-place realloc), huge slabs and direct mappings, calloc
 * zero tracking, node allocation, the bulk API, the three modes' statistics and fork.
 *
 * Check runs every test in its own child process (CK_FORK, the default), so each
 * test starts with a fresh allocator and its counters start at zero.
 */
#include "alloc.h"
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static struct zkm_alloc_counters counters(void)
{
    struct zkm_alloc_counters c;
    zkm__alloc_counters(&c);
    return c;
}

/* ---- size classes ---------------------------------------------------------------------- */

START_TEST(class_table)
{
    zkm__init();
    for (unsigned c = 1; c < ZKM_NCLASS; c++) {
        ck_assert_uint_gt(zkm__class_size(c), zkm__class_size(c - 1));
        ck_assert_uint_eq(zkm__class_size(c) % 16, 0);
    }
    ck_assert_uint_eq(zkm__class_size(ZKM_NCLASS - 1), ZKM_CLASS_MAX_SIZE);
    for (size_t n = 1; n <= ZKM_CLASS_MAX_SIZE; n += (n < 65536 ? 1 : 97)) {
        unsigned c = zkm__class_of(n);
        size_t bs = zkm__class_size(c);
        ck_assert_uint_ge(bs, n);
        if (c > 0)
            ck_assert_msg(zkm__class_size(c - 1) < n, "class of %zu is not the smallest", n);
        /* the bound alloc.h states: < 16 B up to 128 B, < n/8 above */
        if (n <= 128)
            ck_assert_msg(bs - n < 16, "waste %zu for %zu", bs - n, n);
        else
            ck_assert_msg((bs - n) * 8 < n, "waste %zu for %zu above 12.5%%", bs - n, n);
    }
}
END_TEST

START_TEST(usable_matches_class)
{
    for (size_t n = 1; n <= 8192; n += 7) {
        void *p = zkm_malloc(n);
        ck_assert_ptr_nonnull(p);
        size_t u = zkm_usable_size(p);
        ck_assert_uint_eq(u, zkm__class_size(zkm__class_of(n)));
        ck_assert_uint_eq((uintptr_t)p % (n > 8 ? 16 : 8), 0);
        memset(p, 0xab, u);
        zkm_free(p);
    }
}
END_TEST

START_TEST(thresholds_from_env)
{
    setenv("ZKMEM_SMALL_THRESHOLD", "128", 1);
    setenv("ZKMEM_LARGE_THRESHOLD", "512", 1);
    void *p = zkm_malloc(1000); /* above large_threshold: a large span */
    ck_assert_uint_eq(zkm__g.small_threshold, 128);
    ck_assert_uint_eq(zkm__g.large_threshold, 512);
    ck_assert_int_eq(zkm__tier_of(100), ZKM_TIER_SMALL);
    ck_assert_int_eq(zkm__tier_of(300), ZKM_TIER_MEDIUM);
    ck_assert_int_eq(zkm__tier_of(1000), ZKM_TIER_LARGE);
    struct zkm_shdr *s = zkm__slab_of(p);
    ck_assert_int_eq(zkm__page_of(s, p)->cls, ZKM_CLASS_LARGE);
    ck_assert_uint_eq(zkm_usable_size(p), ZKM_UNIT_SIZE);
    void *q = zkm_malloc(500); /* a class */
    ck_assert_int_ne(zkm__page_of(zkm__slab_of(q), q)->cls, ZKM_CLASS_LARGE);
    zkm_free(p);
    zkm_free(q);
}
END_TEST

START_TEST(large_threshold_above_table)
{
    setenv("ZKMEM_LARGE_THRESHOLD", "1048576", 1);
    for (size_t n = 8000; n <= ((size_t)1 << 20); n = n * 5 / 4) {
        uint8_t *p = zkm_malloc(n);
        ck_assert_ptr_nonnull(p);
        struct zkm_page *pg = zkm__page_of(zkm__slab_of(p), p);
        ck_assert_uint_eq(pg->cls, zkm__class_of(n));
        ck_assert_uint_eq(zkm_usable_size(p), zkm__class_size(zkm__class_of(n)));
        memset(p, 1, n);
        zkm_free(p);
    }
}
END_TEST

/* ---- L1 ------------------------------------------------------------------------------------ */

START_TEST(thread_cache_lifo_no_slab_traffic)
{
    void *warm[64];
    for (int i = 0; i < 64; i++)
        warm[i] = zkm_malloc(48);
    void *p = zkm_malloc(48);
    zkm_free(p);
    struct zkm_alloc_counters before = counters();
    for (int i = 0; i < 1000000; i++) {
        void *q = zkm_malloc(48);
        ck_assert_ptr_eq(q, p); /* LIFO: the block just freed comes back */
        zkm_free(q);
    }
    struct zkm_alloc_counters after = counters();
    ck_assert_uint_eq(after.slabs_from_source, before.slabs_from_source);
    ck_assert_uint_eq(after.slabs_reused, before.slabs_reused);
    ck_assert_uint_eq(after.remote_frees, 0);
    for (int i = 0; i < 64; i++)
        zkm_free(warm[i]);
}
END_TEST

START_TEST(ring_reuses_pages)
{
    /* a steady ring of 10,000 live objects must not grow */
    enum { RING = 10000 };
    static void *ring[RING];
    for (int i = 0; i < RING; i++)
        ring[i] = zkm_malloc((size_t)(i % 256) + 1);
    struct zkm_alloc_counters before = counters();
    for (int r = 0; r < 50; r++)
        for (int i = 0; i < RING; i++) {
            zkm_free(ring[i]);
            ring[i] = zkm_malloc((size_t)((i + r) % 256) + 1);
            ck_assert_ptr_nonnull(ring[i]);
        }
    struct zkm_alloc_counters after = counters();
    ck_assert_uint_le(after.slabs_from_source - before.slabs_from_source, 1);
    for (int i = 0; i < RING; i++)
        zkm_free(ring[i]);
}
END_TEST

/* ---- remote frees ------------------------------------------------------------------------------
 */

enum { NREMOTE = 20000 };
static void *remote_objs[NREMOTE];

static void *free_all(void *arg)
{
    (void)arg;
    for (int i = 0; i < NREMOTE; i++) {
        ck_assert_uint_eq(*(uint32_t *)remote_objs[i], (uint32_t)i);
        zkm_free(remote_objs[i]);
    }
    return NULL;
}

START_TEST(remote_frees_collected)
{
    struct zkm_alloc_counters c0 = counters();
    uint64_t slabs_after_first = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < NREMOTE; i++) {
            remote_objs[i] = zkm_malloc(64 + (size_t)(i % 4) * 16);
            *(uint32_t *)remote_objs[i] = (uint32_t)i;
        }
        pthread_t t;
        ck_assert_int_eq(pthread_create(&t, NULL, free_all, NULL), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        if (round == 0)
            slabs_after_first = counters().slabs_from_source;
    }
    struct zkm_alloc_counters c1 = counters();
    ck_assert_uint_eq(c1.remote_frees - c0.remote_frees, 20 * NREMOTE);
    ck_assert_uint_gt(c1.remote_collected, 0);
    /* remote frees came home: 20 rounds need no more slabs than the first (+1 slack) */
    ck_assert_uint_le(c1.slabs_from_source, slabs_after_first + 1);
}
END_TEST

/* ---- thread exit and adoption ------------------------------------------------------------------
 */

enum { NEXIT = 5000 };
static void *exit_objs[NEXIT];

static void *alloc_and_exit(void *arg)
{
    (void)arg;
    for (int i = 0; i < NEXIT; i++) {
        size_t n = 16 + (size_t)(i % 64) * 32;
        exit_objs[i] = zkm_malloc(n);
        memset(exit_objs[i], i & 0xff, n);
    }
    return NULL;
}

static void *alloc_some(void *arg)
{
    void **out = arg;
    for (int i = 0; i < 1000; i++)
        out[i] = zkm_malloc(16 + (size_t)(i % 64) * 32);
    for (int i = 0; i < 1000; i++)
        zkm_free(out[i]);
    return NULL;
}

START_TEST(thread_exit_adoption)
{
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, alloc_and_exit, NULL), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    struct zkm_alloc_counters c = counters();
    ck_assert_uint_gt(c.slabs_abandoned, 0);
    /* free half while the slabs are ownerless */
    for (int i = 0; i < NEXIT; i += 2) {
        zkm_free(exit_objs[i]);
        exit_objs[i] = NULL;
    }
    static void *scratch[1000];
    ck_assert_int_eq(pthread_create(&t, NULL, alloc_some, scratch), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    c = counters();
    ck_assert_uint_gt(c.slabs_adopted, 0);
    for (int i = 1; i < NEXIT; i += 2) {
        size_t n = 16 + (size_t)(i % 64) * 32;
        for (size_t k = 0; k < n; k++)
            ck_assert_uint_eq(((uint8_t *)exit_objs[i])[k], (uint8_t)(i & 0xff));
        zkm_free(exit_objs[i]);
    }
    /* everything is free: after one more thread adopts and exits, no slab is left
     * abandoned with live pages, and nothing went back to the source twice */
    ck_assert_int_eq(pthread_create(&t, NULL, alloc_some, scratch), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    c = counters();
    ck_assert_uint_le(c.slabs_to_source, c.slabs_from_source);
}
END_TEST

/* ---- large, huge, direct
 * -------------------------------------------------------------------------- */

START_TEST(large_spans_and_realloc_in_place)
{
    uint8_t *p = zkm_malloc(100000);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_ge(zkm_usable_size(p), 100000);
    ck_assert_uint_eq((uintptr_t)p % ZKM_UNIT_SIZE, 0);
    memset(p, 0x5a, 100000);
    uint8_t *q = zkm_realloc(p, 300000); /* the units behind are free: grows in place */
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_ge(zkm_usable_size(q), 300000);
    for (size_t i = 0; i < 100000; i++)
        ck_assert_uint_eq(q[i], 0x5a);
    memset(q, 0x11, 300000);
    uint8_t *r = zkm_realloc(q, 40000); /* shrink in place */
    ck_assert_ptr_eq(r, q);
    ck_assert_uint_lt(zkm_usable_size(r), 300000);
    uint8_t *blocker = zkm_malloc(20000);
    uint8_t *s = zkm_realloc(r, 1500000); /* blocked or not, the content moves intact */
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < 40000; i++)
        ck_assert_uint_eq(s[i], 0x11);
    zkm_free(s);
    zkm_free(blocker);
    for (size_t n = 65536; n <= ZKM_LARGE_MAX; n += 65536 * 3) {
        uint8_t *x = zkm_malloc(n);
        ck_assert_ptr_nonnull(x);
        x[0] = 1;
        x[n - 1] = 2;
        zkm_free(x);
    }
}
END_TEST

START_TEST(huge_and_direct)
{
    struct zkm_alloc_counters c0 = counters();
    uint8_t *h = zkm_malloc(ZKM_HUGE_MAX);
    ck_assert_ptr_nonnull(h);
    ck_assert(zkm_owns(h));
    ck_assert_uint_ge(zkm_usable_size(h), ZKM_HUGE_MAX);
    h[0] = 1;
    h[ZKM_HUGE_MAX - 1] = 1;
    ck_assert_uint_eq(counters().direct_maps, c0.direct_maps);
    zkm_free(h);
    size_t big = (size_t)5 << 20;
    uint8_t *d = zkm_malloc(big);
    ck_assert_ptr_nonnull(d);
    ck_assert(zkm_owns(d));
    ck_assert_uint_eq(counters().direct_maps, c0.direct_maps + 1);
    memset(d, 7, big);
    d = zkm_realloc(d, big * 2);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(d[big - 1], 7);
    zkm_free(d);
    ck_assert_int_eq(zkm_owns(d), 0);
    /* a freed mapping is kept for the next one of about its size */
    struct zkm_alloc_counters c1 = counters();
    uint8_t *e = zkm_malloc(big * 2 - 100000);
    ck_assert_ptr_nonnull(e);
    ck_assert(zkm_owns(e));
    struct zkm_alloc_counters c2 = counters();
    ck_assert_uint_eq(c2.direct_reused, c1.direct_reused + 1);
    ck_assert_uint_eq(c2.direct_maps, c1.direct_maps);
    memset(e, 3, big * 2 - 100000);
    zkm_free(e);
    /* calloc on a reused (dirty) mapping still returns zeros */
    uint8_t *z = zkm_calloc(1, big * 2 - 200000);
    ck_assert_ptr_nonnull(z);
    for (size_t i = 0; i < big * 2 - 200000; i += 4096)
        if (z[i] != 0)
            ck_abort_msg("byte %zu of a reused direct mapping not zero", i);
    zkm_free(z);
    /* one far too big for the cache is unmapped at free */
    uint8_t *f = zkm_malloc((size_t)100 << 20);
    ck_assert_ptr_nonnull(f);
    c1 = counters();
    zkm_free(f);
    ck_assert_uint_eq(counters().direct_unmaps, c1.direct_unmaps + 1);
}
END_TEST

START_TEST(calloc_zero_tracking)
{
    /* fresh zeroed slab: the span is known zero (no memset needed) */
    uint8_t *a = zkm_calloc(1, 200000);
    ck_assert_ptr_nonnull(a);
    struct zkm_shdr *s = zkm__slab_of(a);
    ck_assert_ptr_nonnull(s);
    struct zkm_page *pg = zkm__page_of(s, a);
    ck_assert_int_eq(pg->zeroed, 1);
    for (size_t i = 0; i < 200000; i++)
        ck_assert_uint_eq(a[i], 0);
    memset(a, 0xff, 200000);
    zkm_free(a);
    /* the same units again: dirty now, calloc must clear them */
    uint8_t *b = zkm_calloc(200000, 1);
    ck_assert_ptr_nonnull(b);
    pg = zkm__page_of(zkm__slab_of(b), b);
    if (b == a)
        ck_assert_int_eq(pg->zeroed, 0);
    for (size_t i = 0; i < 200000; i++)
        ck_assert_uint_eq(b[i], 0);
    zkm_free(b);
    /* small objects are cleared too */
    for (int i = 0; i < 1000; i++) {
        uint8_t *x = zkm_malloc(100);
        memset(x, 0xee, 100);
        zkm_free(x);
        uint8_t *y = zkm_calloc(10, 10);
        for (int k = 0; k < 100; k++)
            ck_assert_uint_eq(y[k], 0);
        zkm_free(y);
    }
}
END_TEST

/* ---- node, bulk
 * ------------------------------------------------------------------------------------ */

START_TEST(alloc_node)
{
    int nodes = zkm__source_nodes();
    for (int n = -2; n < nodes + 2; n++) {
        uint8_t *p = zkm_alloc_node(1000, n);
        ck_assert_ptr_nonnull(p);
        ck_assert(zkm_owns(p));
        memset(p, 1, 1000);
        zkm_free(p);
    }
    errno = 0;
    ck_assert_ptr_null(zkm_alloc_node(10, -7));
    ck_assert_int_eq(errno, EINVAL);
}
END_TEST

START_TEST(bulk)
{
    enum { N = 5000 };
    static void *v[N];
    ck_assert_int_eq(zkm_alloc_bulk(64, N, v), 0);
    for (int i = 0; i < N; i++) {
        ck_assert_ptr_nonnull(v[i]);
        ck_assert_uint_ge(zkm_usable_size(v[i]), 64);
        memset(v[i], i & 0xff, 64);
    }
    for (int i = 0; i < N; i++)
        ck_assert_uint_eq(((uint8_t *)v[i])[63], (uint8_t)(i & 0xff));
    v[7] = NULL; /* NULL entries are skipped; free the real one */
    zkm_free_bulk(v, N);
    void *w[4] = {(void *)1, (void *)2, (void *)3, (void *)4};
    ck_assert_int_eq(zkm_alloc_bulk((size_t)1 << 62, 4, w), -ENOMEM);
    ck_assert_ptr_eq(w[0], (void *)1);
    ck_assert_ptr_eq(w[3], (void *)4);
}
END_TEST

/* ---- modes
 * -------------------------------------------------------------------------------------------- */

static void *churn(void *arg)
{
    long n = (long)arg;
    for (long i = 0; i < n; i++)
        zkm_free(zkm_malloc((size_t)(i % 500) + 1));
    return NULL;
}

START_TEST(mode_monitoring_counts_and_samples)
{
    setenv("ZKMEM_MODE", "monitoring", 1);
    struct zkm_client_stats *st = zkm__source_stats();
    ck_assert_ptr_nonnull(st);
    uint64_t a0 = st->alloc_ops, h0 = 0;
    for (int i = 0; i < 16; i++)
        h0 += st->lat_hist[i];
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, churn, (void *)100000L), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0); /* thread exit flushes */
    ck_assert_uint_ge(st->alloc_ops - a0, 100000);
    ck_assert_uint_ge(st->free_ops, 100000);
    ck_assert_uint_ge(st->small_allocs, 50000);
    uint64_t h1 = 0;
    for (int i = 0; i < 16; i++)
        h1 += st->lat_hist[i];
    /* one op in 1024 is timed: 200,000 ops give about 195 samples, never one per call */
    ck_assert_uint_ge(h1 - h0, 150);
    ck_assert_uint_le(h1 - h0, 400);
}
END_TEST

START_TEST(mode_high_performance_no_stats)
{
    setenv("ZKMEM_MODE", "high_performance", 1);
    struct zkm_client_stats *st = zkm__source_stats();
    uint64_t a0 = st->alloc_ops;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, churn, (void *)100000L), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_uint_eq(st->alloc_ops, a0);
    ck_assert_ptr_eq(zkm__tls_owner, ZKM_OWNER_NONE); /* main thread: no heap yet */
    zkm_free(zkm_malloc(10));
    ck_assert_ptr_eq(zkm__tls_owner, zkm__tls_heap);
}
END_TEST

START_TEST(mode_balanced_counts)
{
    setenv("ZKMEM_MODE", "balanced", 1);
    struct zkm_client_stats *st = zkm__source_stats();
    uint64_t a0 = st->alloc_ops;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, churn, (void *)10000L), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_uint_ge(st->alloc_ops - a0, 10000);
    ck_assert_uint_eq(st->lat_hist[0] + st->lat_hist[5] + st->lat_hist[10], 0);
}
END_TEST

/* ---- fork
 * ------------------------------------------------------------------------------------------------
 */

static void fork_private(void)
{
    char *obj = zkm_malloc(200);
    ck_assert_ptr_nonnull(obj);
    strcpy(obj, "before fork");
    int to_child[2], to_parent[2];
    ck_assert_int_eq(pipe(to_child), 0);
    ck_assert_int_eq(pipe(to_parent), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    char c = 0;
    if (pid == 0) {
        int bad = strcmp(obj, "before fork") != 0;
        strcpy(obj, "child wrote");
        char *x = zkm_malloc(5000); /* the child's heap works */
        memset(x, 1, 5000);
        zkm_free(x);
        if (write(to_parent[1], "w", 1) != 1 || read(to_child[0], &c, 1) != 1)
            _exit(3);
        bad |= strcmp(obj, "child wrote") != 0; /* the parent's write must not show */
        _exit(bad ? 1 : 0);
    }
    ck_assert_int_eq(read(to_parent[0], &c, 1), 1);
    ck_assert_str_eq(obj, "before fork"); /* the child's write must not show */
    strcpy(obj, "parent wrote");
    ck_assert_int_eq(write(to_child[1], "p", 1), 1);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
    zkm_free(obj);
}

START_TEST(fork_local_memory)
{
    fork_private();
}
END_TEST

START_TEST(fork_daemon_memory)
{
    struct zkm_test_daemon d;
    int err = zkm_test_daemon_start(&d, NULL, NULL);
    if (err) {
        zkm_test_skip("fork_daemon_memory", "zkmemd did not start ($ZKMEM_DAEMON)");
        return;
    }
    setenv("ZKMEM_SOCKET", d.sock, 1);
    void *p = zkm_malloc(100); /* first slab: from the daemon */
    struct zkm_source_counters sc;
    zkm__source_counters(&sc);
    if (sc.daemon_slabs == 0) {
        zkm_test_daemon_stop(&d);
        zkm_test_skip("fork_daemon_memory", "zkmemd granted no slab (see its log)");
        return;
    }
    fork_private();
    zkm_free(p);
    zkm_test_daemon_stop(&d);
}
END_TEST

START_TEST(daemon_slabs_and_stats)
{
    struct zkm_test_daemon d;
    if (zkm_test_daemon_start(&d, NULL, NULL) != 0) {
        zkm_test_skip("daemon_slabs_and_stats", "zkmemd did not start ($ZKMEM_DAEMON)");
        return;
    }
    setenv("ZKMEM_SOCKET", d.sock, 1);
    setenv("ZKMEM_MODE", "balanced", 1);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, churn, (void *)50000L), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    struct zkm_source_counters sc;
    zkm__source_counters(&sc);
    if (sc.daemon_slabs == 0) {
        zkm_test_daemon_stop(&d);
        zkm_test_skip("daemon_slabs_and_stats", "zkmemd granted no slab (see its log)");
        return;
    }
    ck_assert_uint_eq(sc.local_slabs, 0);
    /* the counters went to the control block the daemon reads */
    struct zkm_client_stats *st = zkm__source_stats();
    ck_assert_ptr_nonnull(st);
    ck_assert_uint_ge(st->alloc_ops, 50000);
    /* every tier on daemon memory */
    for (size_t n = 8; n <= ((size_t)3 << 20); n *= 3) {
        uint8_t *p = zkm_malloc(n);
        ck_assert_ptr_nonnull(p);
        memset(p, 0x3c, n);
        zkm_free(p);
    }
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

static Suite *alloc_suite(void)
{
    Suite *s = suite_create("alloc");
    TCase *tc = tcase_create("classes");
    tcase_add_test(tc, class_table);
    tcase_add_test(tc, usable_matches_class);
    tcase_add_test(tc, thresholds_from_env);
    tcase_add_test(tc, large_threshold_above_table);
    suite_add_tcase(s, tc);

    tc = tcase_create("heaps");
    tcase_add_test(tc, thread_cache_lifo_no_slab_traffic);
    tcase_add_test(tc, ring_reuses_pages);
    tcase_add_test(tc, remote_frees_collected);
    tcase_add_test(tc, thread_exit_adoption);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("tiers");
    tcase_add_test(tc, large_spans_and_realloc_in_place);
    tcase_add_test(tc, huge_and_direct);
    tcase_add_test(tc, calloc_zero_tracking);
    tcase_add_test(tc, alloc_node);
    tcase_add_test(tc, bulk);
    suite_add_tcase(s, tc);

    tc = tcase_create("modes");
    tcase_add_test(tc, mode_monitoring_counts_and_samples);
    tcase_add_test(tc, mode_high_performance_no_stats);
    tcase_add_test(tc, mode_balanced_counts);
    suite_add_tcase(s, tc);

    tc = tcase_create("fork");
    tcase_add_test(tc, fork_local_memory);
    tcase_add_test(tc, fork_daemon_memory);
    tcase_add_test(tc, daemon_slabs_and_stats);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(alloc_suite());
    srunner_set_fork_status(sr, CK_FORK); /* every test needs a fresh allocator */
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
