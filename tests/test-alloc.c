/* SPDX-License-Identifier: MIT */
/*
 * test-alloc.c - the allocator's internals (client-lib/alloc.h): size classes and the
 * stated waste bound, thread caches (LIFO reuse, no slab traffic in steady state),
 * remote frees (counted, collected, memory reused), thread exit (abandon) and
 * adoption, compaction (L2 cap, fullest-first placement, drained slabs and the thread-cache
 * targets from the daemon's tunables, published slab counts), large spans (in-place
 * realloc), huge slabs and direct mappings, calloc zero tracking, node allocation, the
 * bulk API, the three modes' statistics and fork.
 *
 * Check runs every test in its own child process (CK_FORK, the default), so each
 * test starts with a fresh allocator and its counters start at zero.
 */
#include "alloc.h"
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Run fn(arg) on a thread of its own (a heap of its own) and wait for it to end. */
static void run_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, fn, arg), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
}

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
    /* the header classes: 2^k plus a header of up to 16 bytes, k = 9..12, wastes < 16 */
    for (size_t k = 9; k <= 12; k++)
        for (size_t hdr = 1; hdr <= 16; hdr++) {
            size_t n = ((size_t)1 << k) + hdr;
            ck_assert_msg(zkm__class_size(zkm__class_of(n)) - n < 16, "waste %zu for %zu",
                          zkm__class_size(zkm__class_of(n)) - n, n);
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

/* The inline path finds pages up to 1 KiB by words ((n + 7) / 8): with a large_threshold
 * inside a word, the requests of that word above it still get a large span, also once the
 * heap and the class's page exist (the second round). */
START_TEST(large_threshold_inside_a_word)
{
    setenv("ZKMEM_LARGE_THRESHOLD", "1001", 1);
    for (int round = 0; round < 2; round++) {
        void *a = zkm_malloc(1000), *b = zkm_malloc(1001), *c = zkm_malloc(1002);
        ck_assert_uint_eq(zkm__g.large_threshold, 1001);
        ck_assert_int_ne(zkm__page_of(zkm__slab_of(a), a)->cls, ZKM_CLASS_LARGE);
        ck_assert_int_ne(zkm__page_of(zkm__slab_of(b), b)->cls, ZKM_CLASS_LARGE);
        ck_assert_int_eq(zkm__page_of(zkm__slab_of(c), c)->cls, ZKM_CLASS_LARGE);
        ck_assert_uint_eq(zkm_usable_size(c), ZKM_UNIT_SIZE);
        zkm_free(a);
        zkm_free(c); /* b stays: its class page is current in round 2 */
    }
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

/* A malloc/free loop cycles through the class's ring (alloc.h point 9): a fixed set of
 * blocks, never the block the free just pushed (malloc leaves the last ZKM_RING_MIN), no
 * slow path after the first refill, no slab traffic. */
START_TEST(thread_cache_ring_no_slab_traffic)
{
    void *warm[64];
    for (int i = 0; i < 64; i++)
        warm[i] = zkm_malloc(48);
    zkm_free(zkm_malloc(48));
    struct zkm_alloc_counters before = counters();
    uint64_t slow0 = zkm__tls_heap->slow_calls;
    void *seen[ZKM_RING_SLOTS], *last = NULL;
    unsigned nseen = 0;
    for (int i = 0; i < 1000000; i++) {
        void *q = zkm_malloc(48);
        ck_assert_ptr_ne(q, last);
        unsigned k = 0;
        while (k < nseen && seen[k] != q)
            k++;
        if (k == nseen) {
            ck_assert_uint_lt(nseen, ZKM_RING_SLOTS);
            seen[nseen++] = q;
        }
        zkm_free(q);
        last = q;
    }
    ck_assert_uint_gt(nseen, ZKM_RING_MIN);
    ck_assert_uint_le(zkm__tls_heap->slow_calls, slow0 + 1);
    struct zkm_alloc_counters after = counters();
    ck_assert_uint_eq(after.slabs_from_source, before.slabs_from_source);
    ck_assert_uint_eq(after.slabs_reused, before.slabs_reused);
    ck_assert_uint_eq(after.remote_frees, 0);
    for (int i = 0; i < 64; i++)
        zkm_free(warm[i]);
}
END_TEST

/* The rings (alloc.h point 9): a free writes nothing into the block; a ring holds at most
 * its capacity (128 small blocks, 32 of 8 KiB); a class that only frees turns its ring off
 * and every block goes back to its page (the pages empty and go); the class's next page
 * refill turns it on again. */
START_TEST(ring_bounds_and_turns_off)
{
    enum { N = 300 };
    static uint64_t *v[N];
    const size_t sizes[] = {48, 8192};
    const unsigned caps[] = {128, 32};
    for (unsigned t = 0; t < 2; t++) {
        size_t size = sizes[t];
        for (int i = 0; i < N; i++) {
            v[i] = zkm_malloc(size);
            v[i][0] = 0x5a5a5a5a00000000ull + (uint64_t)i;
        }
        struct zkm_heap *h = zkm__tls_heap;
        unsigned r = zkm__class_of(size) + 1;
        struct zkm_ring *rg = &h->ring[r];
        ck_assert_uint_eq(zkm__g.ring_cap[r], caps[t]);
        ck_assert_uint_eq(h->ring_cap[r], caps[t]);
        uint32_t tl0 = rg->tl;
        zkm_free(v[0]);
        ck_assert_uint_eq(rg->tl, tl0 + 1);
        ck_assert_uint_eq(v[0][0], 0x5a5a5a5a00000000ull); /* in the ring, untouched */
        v[0] = zkm_malloc(size);
        for (int k = 0; k < 3; k++) /* frees and mallocs in turn: bounded by the capacity */
            for (int i = 0; i < N; i++) {
                zkm_free(v[i]);
                ck_assert_uint_le(rg->tl - rg->hd, caps[t]);
                v[i] = zkm_malloc(size);
                ck_assert_ptr_nonnull(v[i]);
            }
        ck_assert_uint_eq(h->ring_cap[r], caps[t]);
        for (int i = 0; i < N; i++) { /* only frees: the ring turns off, gives its blocks back */
            zkm_free(v[i]);
            ck_assert_uint_le(rg->tl - rg->hd, caps[t]);
        }
        ck_assert_uint_eq(h->ring_cap[r], 0);
        ck_assert_uint_eq(rg->tl - rg->hd, 0);
        uint32_t used = 0;
        for (struct zkm_shdr *s = h->slabs; s; s = s->hnext)
            for (unsigned u = 1; u < ZKM_UNITS; u++)
                if (!((s->freemap[u >> 6] >> (u & 63)) & 1) && s->pages[u].start == u &&
                    s->pages[u].cls == r - 1)
                    used += zkm__page_used(&s->pages[u]);
        ck_assert_uint_eq(used, 0);
        ck_assert_uint_le(h->nslabs, 1);
        /* the class allocates again: on at its next page refill (within a page's blocks) */
        static void *w[4096];
        int n = 0;
        while (h->ring_cap[r] == 0) {
            ck_assert_int_lt(n, 4096);
            w[n++] = zkm_malloc(size);
        }
        ck_assert_uint_eq(h->ring_cap[r], caps[t]);
        ck_assert_int_le(n, (int)(ZKM_UNIT_SIZE * 16 / size) + 1);
        while (n)
            zkm_free(w[--n]);
    }
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
        run_thread(free_all, NULL);
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

/* Remote frees travel as pointers: the freeing thread does not write into the blocks it
 * frees (their lines stay with the owner), the owner gets them once the freer's buffers
 * are queued (full, a refresh, a snapshot, thread exit), and frees them locally. */
enum { NPTR = 200 };
static void *ptr_objs[NPTR];
static pthread_barrier_t ptr_bar;

static void *free_by_pointer(void *arg)
{
    (void)arg;
    for (int i = 0; i < NPTR; i++)
        zkm_free(ptr_objs[i]);
    pthread_barrier_wait(&ptr_bar); /* freed: the owner looks at the blocks */
    pthread_barrier_wait(&ptr_bar); /* looked: queue the rest */
    struct zkm_client_stats st;
    ck_assert_int_eq(zkm_stats_snapshot(&st), 0);
    pthread_barrier_wait(&ptr_bar);
    return NULL;
}

static void *free_one(void *p)
{
    zkm_free(p); /* queued for the owner at this thread's exit */
    return NULL;
}

/* Take one more slab into the heap: 256 KiB spans until nslabs grows. */
static void grow_one(void **keep, unsigned *n, unsigned cap)
{
    uint32_t before = zkm__tls_heap->nslabs;
    while (zkm__tls_heap->nslabs == before) {
        ck_assert_uint_lt(*n, cap);
        keep[*n] = zkm_malloc(256 << 10);
        ck_assert_ptr_nonnull(keep[*n]);
        (*n)++;
    }
}

/* A growing heap does not look at every page of every slab before each new slab (that was
 * a stall per slab), yet a remote free that raced with a collection - announced, then
 * pushed after the collector took the flags - is still collected within nslabs/8 growths. */
START_TEST(stranded_remote_frees_swept)
{
    enum { CAP = 1024 };
    static void *keep[CAP];
    unsigned n = 0;
    while (zkm__tls_heap->nslabs < 64)
        grow_one(keep, &n, CAP);
    struct zkm_alloc_counters c0 = counters();
    for (int i = 0; i < 64; i++)
        grow_one(keep, &n, CAP);
    struct zkm_alloc_counters c1 = counters();
    ck_assert_msg(c1.sweeps - c0.sweeps <= 8, "%llu sweeps in 64 growths from 64 slabs",
                  (unsigned long long)(c1.sweeps - c0.sweeps));
    ck_assert_uint_ge(c1.sweeps - c0.sweeps, 4);

    /* the race, made: the block is queued on its slab, the flags are down */
    void *p = zkm_malloc(48);
    ck_assert_ptr_nonnull(p);
    run_thread(free_one, p);
    struct zkm_shdr *s = zkm__slab_of(p);
    atomic_store(&s->pending, 0);
    atomic_store(&zkm__tls_heap->remote_hint, 0);
    struct zkm_alloc_counters c2 = counters();
    unsigned growths = 0, bound = zkm__tls_heap->nslabs / 8 + 1;
    while (counters().remote_collected == c2.remote_collected && growths <= bound) {
        grow_one(keep, &n, CAP);
        growths++;
    }
    ck_assert_msg(counters().remote_collected == c2.remote_collected + 1,
                  "the stranded block was not collected in %u growths", growths);
    for (unsigned i = 0; i < n; i++)
        zkm_free(keep[i]);
}
END_TEST

/* A large span freed by another thread goes onto the xfree list of its first unit, the only
 * one the owner's collection looks at for a span (heap.c page_take_remote); collected, the
 * span's units are free again. */
START_TEST(remote_free_of_large_span)
{
    uint8_t *p = zkm_malloc(200 << 10);
    ck_assert_ptr_nonnull(p);
    struct zkm_shdr *s = zkm__slab_of(p);
    unsigned start = (unsigned)(((uintptr_t)p & ZKM_SLAB_MASK) >> ZKM_UNIT_SHIFT);
    ck_assert_int_eq(zkm__page_of(s, p)->cls, ZKM_CLASS_LARGE);
    ck_assert_uint_eq((s->freemap[start >> 6] >> (start & 63)) & 1, 0);
    struct zkm_alloc_counters c0 = counters();
    run_thread(free_one, p);
    ck_assert_ptr_nonnull(atomic_load(&s->xfree[start]));
    zkm__heap_collect(zkm__tls_heap, true);
    ck_assert_ptr_null(atomic_load(&s->xfree[start]));
    ck_assert_uint_eq(counters().remote_collected, c0.remote_collected + 1);
    ck_assert_uint_eq((s->freemap[start >> 6] >> (start & 63)) & 1, 1);
}
END_TEST

START_TEST(remote_frees_by_pointer)
{
    for (int i = 0; i < NPTR; i++) {
        ptr_objs[i] = zkm_malloc(48);
        memset(ptr_objs[i], 0xa5, 48);
    }
    struct zkm_alloc_counters c0 = counters();
    ck_assert_int_eq(pthread_barrier_init(&ptr_bar, NULL, 2), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, free_by_pointer, NULL), 0);
    pthread_barrier_wait(&ptr_bar);
    int untouched = 0, at_unit = 0;
    for (int i = 0; i < NPTR; i++) {
        if (!((uintptr_t)ptr_objs[i] & (ZKM_UNIT_SIZE - 1))) {
            at_unit++; /* a block at a unit's start is pushed as before */
            continue;
        }
        uint8_t *b = ptr_objs[i];
        int same = 1;
        for (int j = 0; j < 48; j++)
            same &= b[j] == 0xa5;
        untouched += same;
    }
    ck_assert_int_eq(untouched + at_unit, NPTR);
    pthread_barrier_wait(&ptr_bar);
    pthread_barrier_wait(&ptr_bar);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    zkm__heap_collect(zkm__tls_heap, true);
    struct zkm_alloc_counters c1 = counters();
    ck_assert_uint_eq(c1.remote_collected - c0.remote_collected, NPTR);
    /* and the blocks are this thread's again: the same addresses come back (after the
     * blocks the class's ring held) */
    int again = 0;
    static void *back[NPTR + ZKM_RING_SLOTS];
    for (int i = 0; i < NPTR + (int)ZKM_RING_SLOTS; i++)
        back[i] = zkm_malloc(48);
    for (int i = 0; i < NPTR + (int)ZKM_RING_SLOTS; i++)
        for (int j = 0; j < NPTR; j++)
            if (back[i] == ptr_objs[j]) {
                again++;
                break;
            }
    ck_assert_int_eq(again, NPTR);
    for (int i = 0; i < NPTR + (int)ZKM_RING_SLOTS; i++)
        zkm_free(back[i]);
    pthread_barrier_destroy(&ptr_bar);
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
    run_thread(alloc_and_exit, NULL);
    struct zkm_alloc_counters c = counters();
    ck_assert_uint_gt(c.slabs_abandoned, 0);
    /* free half while the slabs are ownerless */
    for (int i = 0; i < NEXIT; i += 2) {
        zkm_free(exit_objs[i]);
        exit_objs[i] = NULL;
    }
    static void *scratch[1000];
    run_thread(alloc_some, scratch);
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
    run_thread(alloc_some, scratch);
    c = counters();
    ck_assert_uint_le(c.slabs_to_source, c.slabs_from_source);
}
END_TEST

/* ---- compaction: L2 cap, fullest-first, drained slabs, tunables --------------------------- */

static struct zkm_client_stats *stats(void)
{
    return zkm__source_stats(); /* no daemon: the process-local block */
}

/* Make this thread's heap see the tunables' new generation: slow paths (large spans) until
 * the periodic refresh (every 64 slow calls) has run. */
static void tun_poll(void)
{
    const struct zkm_tunables *t = zkm__source_tunables();
    for (int i = 0; i < 200 && zkm__tls_heap->tun_gen != t->gen; i++)
        zkm_free(zkm_malloc(100000));
    ck_assert_uint_eq(zkm__tls_heap->tun_gen, t->gen);
}

/* What the daemon does in the control block: change fields, bump gen (release). */
static void tun_set(uint32_t l2_cap, uint32_t tc_small, uint32_t tc_medium)
{
    zkm_free(zkm_malloc(1)); /* a heap, and the source's config, exist */
    struct zkm_tunables *t = zkm__source_local_tunables();
    t->l2_cap = l2_cap;
    if (tc_small)
        t->tcache_cap[0] = tc_small;
    if (tc_medium)
        t->tcache_cap[1] = tc_medium;
    __atomic_fetch_add(&t->gen, 1, __ATOMIC_RELEASE);
    tun_poll();
}

/* The tests below that count blocks per page want the class's full-size pages: end this
 * heap's ramp for the classes of these sizes (alloc.h point 3; page_ramp tests it). */
static void ramp_done(size_t size)
{
    zkm_free(zkm_malloc(1)); /* the thread has a heap */
    zkm__tls_heap->pages_made[zkm__class_of(size)] = 16;
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* log-uniform in [lo, hi] */
static size_t rnd_size(size_t lo, size_t hi)
{
    unsigned a = 63u - (unsigned)__builtin_clzl(lo), b = 63u - (unsigned)__builtin_clzl(hi);
    size_t base = (size_t)1 << (a + rnd() % (b - a + 1));
    size_t n = base + rnd() % base;
    return n < lo ? lo : n > hi ? hi : n;
}

enum { GENS = 10, GEN_OBJS = 150000 }; /* 16..256 B, about 20 MiB a generation */
static void *gen_objs[GENS][GEN_OBJS];

START_TEST(generations_return_slabs)
{
    tun_set(2, 0, 0);
    size_t live = 0, total = 0;
    for (int g = 0; g < GENS; g++) {
        for (int i = 0; i < GEN_OBJS; i++) {
            size_t n = rnd_size(16, 256);
            gen_objs[g][i] = zkm_malloc(n);
            ck_assert_ptr_nonnull(gen_objs[g][i]);
            memset(gen_objs[g][i], g, n);
            total += zkm_usable_size(gen_objs[g][i]);
            if (g == GENS / 2)
                live += zkm_usable_size(gen_objs[g][i]);
        }
    }
    ck_assert_uint_ge(total, (size_t)180 << 20);
    uint64_t peak = stats()->slabs_held;
    for (int g = 0; g < GENS; g++)
        if (g != GENS / 2)
            for (int i = 0; i < GEN_OBJS; i++)
                zkm_free(gen_objs[g][i]);
    struct zkm_client_stats snap;
    zkm_stats_snapshot(&snap); /* the heap's sparse-line crossings into the count */
    uint64_t held = stats()->slabs_held;
    uint64_t want = live / ZKM_SLAB_SIZE + 1;
    /* one generation's slabs (and a few at its edges), L2 at the cap of 2, no more */
    ck_assert_msg(held * 2 <= want * 3 + 2 * 4, "%lu slabs held for %zu live bytes (peak %lu)",
                  (unsigned long)held, live, (unsigned long)peak);
    ck_assert_uint_le(stats()->slabs_cached, 2);
    ck_assert_uint_le(stats()->slabs_sparse, 3);
    ck_assert_uint_ge(peak, 90);
    for (int i = 0; i < GEN_OBJS; i++) {
        ck_assert_uint_eq(*(uint8_t *)gen_objs[GENS / 2][i], GENS / 2);
        zkm_free(gen_objs[GENS / 2][i]);
    }
    /* everything free: L2 (2) and the heap's one kept slab */
    ck_assert_uint_le(stats()->slabs_held, 3);
    ck_assert_uint_le(zkm__tls_heap->nslabs, 1);
}
END_TEST

enum { MIX_OBJS = 25000 }; /* 512 B..8 KiB log-uniform: about 60 MiB */
static void *mix_objs[MIX_OBJS];

START_TEST(random_frees_reused)
{
    tun_set(2, 0, 0);
    size_t bytes = 0;
    for (int i = 0; i < MIX_OBJS; i++) {
        size_t n = rnd_size(512, 8192);
        mix_objs[i] = zkm_malloc(n);
        ck_assert_ptr_nonnull(mix_objs[i]);
        memset(mix_objs[i], 1, n);
        bytes += n;
    }
    for (int i = 0; i < MIX_OBJS; i++) {
        if (rnd() % 10 != 0) {
            zkm_free(mix_objs[i]);
            mix_objs[i] = NULL;
        }
    }
    uint64_t held0 = stats()->slabs_held;
    size_t fresh = 0;
    for (int i = 0; i < MIX_OBJS; i++) {
        if (mix_objs[i] || fresh > bytes / 2)
            continue;
        size_t n = rnd_size(512, 8192);
        mix_objs[i] = zkm_malloc(n);
        ck_assert_ptr_nonnull(mix_objs[i]);
        memset(mix_objs[i], 2, n);
        fresh += n;
    }
    uint64_t grew = stats()->slabs_held - held0;
    ck_assert_uint_ge(fresh, (size_t)25 << 20);
    /* the freed 90% took them: far less than fresh / 2 MiB new slabs */
    ck_assert_msg(grew * 8 <= fresh / ZKM_SLAB_SIZE, "%lu new slabs for %zu new bytes",
                  (unsigned long)grew, fresh);
    for (int i = 0; i < MIX_OBJS; i++)
        zkm_free(mix_objs[i]);
}
END_TEST

/* Holes: 24 MiB of 48..256 B objects, 90% freed at random (no page empties), then 8 MiB
 * of 512 B..4 KiB objects: they go into the free runs of the sparse small pages instead of
 * new slabs. Every object keeps its bytes (the small ones pinned where they were, the
 * medium ones cut between them), sizes read back right from any thread, blocks freed by
 * another thread come back, and once everything is freed the pages and slabs go. */
enum { HS_SMALL = 165000, HS_MED = 4000 };
static uint8_t *hs_small[HS_SMALL], *hs_med[2 * HS_MED];
static uint16_t hs_small_n[HS_SMALL], hs_med_n[2 * HS_MED];
static pthread_barrier_t hs_bar;

static void hs_fill(uint8_t *p, size_t n, unsigned tag)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(tag * 31 + i);
}
static void hs_check(const uint8_t *p, size_t n, unsigned tag)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(tag * 31 + i))
            ck_abort_msg("object %u: byte %zu of %zu changed", tag, i, n);
}
static void hs_check_all(void)
{
    for (unsigned i = 0; i < HS_SMALL; i++)
        if (hs_small[i])
            hs_check(hs_small[i], hs_small_n[i], i);
    for (unsigned i = 0; i < 2 * HS_MED; i++)
        if (hs_med[i])
            hs_check(hs_med[i], hs_med_n[i], HS_SMALL + i);
}

static void *holes_owner(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < HS_SMALL; i++) {
        hs_small_n[i] = (uint16_t)(48 + rnd() % 209);
        hs_small[i] = zkm_malloc(hs_small_n[i]);
        ck_assert_ptr_nonnull(hs_small[i]);
        hs_fill(hs_small[i], hs_small_n[i], i);
    }
    for (unsigned i = 0; i < HS_SMALL; i++)
        if (rnd() % 10 != 0) {
            zkm_free(hs_small[i]);
            hs_small[i] = NULL;
        }
    struct zkm_alloc_counters c0 = counters();
    size_t fresh = 0;
    for (unsigned i = 0; i < HS_MED; i++) {
        hs_med_n[i] = (uint16_t)(512 + rnd() % 3585);
        hs_med[i] = zkm_malloc(hs_med_n[i]);
        ck_assert_ptr_nonnull(hs_med[i]);
        ck_assert_uint_eq((uintptr_t)hs_med[i] % 16, 0);
        ck_assert_uint_ge(zkm_usable_size(hs_med[i]), hs_med_n[i]);
        hs_fill(hs_med[i], hs_med_n[i], HS_SMALL + i);
        fresh += hs_med_n[i];
    }
    struct zkm_alloc_counters c1 = counters();
    uint64_t grew =
        (c1.slabs_from_source + c1.slabs_reused) - (c0.slabs_from_source + c0.slabs_reused);
    ck_assert_uint_gt(c1.hole_pages, c0.hole_pages);
    ck_assert_msg(c1.hole_allocs - c0.hole_allocs >= HS_MED * 3 / 4,
                  "%lu of %d medium blocks from holes",
                  (unsigned long)(c1.hole_allocs - c0.hole_allocs), HS_MED);
    ck_assert_msg(grew * ZKM_SLAB_SIZE * 4 <= fresh, "%lu new slabs for %zu new bytes",
                  (unsigned long)grew, fresh);
    hs_check_all();
    /* realloc of a block in a hole: the bytes move with it */
    uint8_t *q = zkm_realloc(hs_med[0], 2u * hs_med_n[0]);
    ck_assert_ptr_nonnull(q);
    hs_med[0] = q;
    hs_check(q, hs_med_n[0], HS_SMALL);
    pthread_barrier_wait(&hs_bar); /* the main thread reads sizes and frees every other one */
    pthread_barrier_wait(&hs_bar);
    for (unsigned i = HS_MED; i < 2 * HS_MED; i++) { /* the freed space serves again */
        hs_med_n[i] = (uint16_t)(512 + rnd() % 3585);
        hs_med[i] = zkm_malloc(hs_med_n[i]);
        ck_assert_ptr_nonnull(hs_med[i]);
        hs_fill(hs_med[i], hs_med_n[i], HS_SMALL + i);
    }
    hs_check_all();
    for (unsigned i = 0; i < HS_SMALL; i++)
        zkm_free(hs_small[i]);
    for (unsigned i = 0; i < 2 * HS_MED; i++)
        zkm_free(hs_med[i]);
    zkm_free(zkm_malloc(1000)); /* a slow path: whatever emptied has gone */
    ck_assert_uint_le(zkm__tls_heap->nslabs, 2);
    return NULL;
}

START_TEST(random_frees_leave_holes_for_medium)
{
    pthread_t t;
    pthread_barrier_init(&hs_bar, NULL, 2);
    ck_assert_int_eq(pthread_create(&t, NULL, holes_owner, NULL), 0);
    pthread_barrier_wait(&hs_bar);
    for (unsigned i = 1; i < HS_MED; i += 2) {
        ck_assert_uint_ge(zkm_usable_size(hs_med[i]), hs_med_n[i]);
        zkm_free(hs_med[i]); /* remote frees, by pointer */
        hs_med[i] = NULL;
    }
    struct zkm_client_stats st;
    zkm_stats_snapshot(&st); /* flushes this thread's pointer buffers to the owner */
    pthread_barrier_wait(&hs_bar);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    pthread_barrier_destroy(&hs_bar);
}
END_TEST

/* A thread that leaves HOLES pages behind: whoever adopts its slabs keeps the pages'
 * blocks where they are and serves medium requests from the runs. */
static void *holes_leaver(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < HS_SMALL; i++) {
        hs_small_n[i] = (uint16_t)(48 + rnd() % 209);
        hs_small[i] = zkm_malloc(hs_small_n[i]);
        hs_fill(hs_small[i], hs_small_n[i], i);
    }
    for (unsigned i = 0; i < HS_SMALL; i++)
        if (rnd() % 10 != 0) {
            zkm_free(hs_small[i]);
            hs_small[i] = NULL;
        }
    for (unsigned i = 0; i < HS_MED; i++) {
        hs_med_n[i] = (uint16_t)(512 + rnd() % 3585);
        hs_med[i] = zkm_malloc(hs_med_n[i]);
        hs_fill(hs_med[i], hs_med_n[i], HS_SMALL + i);
    }
    for (unsigned i = 0; i < HS_MED; i += 2) { /* room in the holes for the adopter */
        zkm_free(hs_med[i]);
        hs_med[i] = NULL;
    }
    return NULL;
}

START_TEST(holes_adopted)
{
    memset(hs_med, 0, sizeof(hs_med));
    run_thread(holes_leaver, NULL);
    struct zkm_alloc_counters c0 = counters();
    ck_assert_uint_gt(c0.hole_pages, 0);
    for (unsigned i = HS_MED; i < HS_MED + HS_MED / 4; i++) {
        hs_med_n[i] = (uint16_t)(512 + rnd() % 1537);
        hs_med[i] = zkm_malloc(hs_med_n[i]);
        ck_assert_ptr_nonnull(hs_med[i]);
        hs_fill(hs_med[i], hs_med_n[i], HS_SMALL + i);
    }
    struct zkm_alloc_counters c1 = counters();
    ck_assert_uint_gt(c1.slabs_adopted, c0.slabs_adopted);
    ck_assert_msg(c1.hole_allocs - c0.hole_allocs >= HS_MED / 8,
                  "%lu blocks from the adopted holes",
                  (unsigned long)(c1.hole_allocs - c0.hole_allocs));
    hs_check_all();
    for (unsigned i = 0; i < HS_SMALL; i++)
        zkm_free(hs_small[i]);
    for (unsigned i = 0; i < 2 * HS_MED; i++)
        zkm_free(hs_med[i]);
}
END_TEST

START_TEST(l2_cap_trims)
{
    enum { N = 20 };
    static void *big[N * 127];
    zkm_free(zkm_malloc(1));
    for (int i = 0; i < N * 127; i++) /* 16 KiB spans: one unit each, N slabs */
        big[i] = zkm_malloc(ZKM_UNIT_SIZE);
    uint64_t held = stats()->slabs_held;
    ck_assert_uint_ge(held, N);
    for (int i = 0; i < N * 127; i++)
        zkm_free(big[i]);
    /* the default cap keeps them in L2 */
    ck_assert_uint_ge(stats()->slabs_cached, N - 2);
    ck_assert_uint_eq(stats()->slabs_held, held);
    struct zkm_alloc_counters c0 = counters();
    tun_set(3, 0, 0); /* the cap drops: the surplus goes back at the next slow path */
    ck_assert_uint_le(stats()->slabs_cached, 3);
    ck_assert_uint_ge(counters().slabs_to_source - c0.slabs_to_source, N - 5);
    ck_assert_uint_le(stats()->slabs_held, 3 + zkm__tls_heap->nslabs);
    tun_set(0, 0, 0); /* 0: the client's default again */
    for (int i = 0; i < N * 127; i++)
        big[i] = zkm_malloc(ZKM_UNIT_SIZE);
    for (int i = 0; i < N * 127; i++)
        zkm_free(big[i]);
    ck_assert_uint_ge(stats()->slabs_cached, N - 2);
}
END_TEST

/* Spans of one unit (16 KiB objects) until one lands outside slab `not`; returns count. */
static int fill_units(void **out, int max, struct zkm_shdr *in)
{
    int n = 0;
    while (n < max) {
        out[n] = zkm_malloc(ZKM_UNIT_SIZE);
        ck_assert_ptr_nonnull(out[n]);
        if (in && zkm__slab_of(out[n]) != in)
            return n + 1;
        n++;
    }
    return n;
}

/* Freed large spans of up to 4 units come back to the next request of their size, last
 * freed first, at most ZKM_LCACHE_DEPTH per size; calloc still gets zeros from a kept span;
 * a refresh that finds none taken gives them back to their slabs. */
START_TEST(large_spans_kept_lifo)
{
    enum { SZ = 40 << 10, K = (SZ + ZKM_UNIT_SIZE - 1) / ZKM_UNIT_SIZE - 1, N = 6 };
    uint8_t *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = zkm_malloc(SZ);
        ck_assert_ptr_nonnull(p[i]);
        memset(p[i], 0x5a, SZ);
    }
    struct zkm_heap *h = zkm__tls_heap; /* made by the first call */
    struct zkm_shdr *s = zkm__slab_of(p[0]);
    for (int i = 0; i < N; i++)
        ck_assert_ptr_eq(zkm__slab_of(p[i]), s);
    zkm_free(p[1]);
    ck_assert_uint_eq(h->lcache_n[K], 1);
    ck_assert_ptr_eq(zkm_malloc(SZ), p[1]); /* the span just freed */
    ck_assert_uint_eq(h->lcache_n[K], 0);
    zkm_free(p[1]);
    uint8_t *z = zkm_calloc(1, SZ);
    ck_assert_ptr_eq(z, p[1]);
    for (size_t i = 0; i < SZ; i++)
        ck_assert_uint_eq(z[i], 0);
    unsigned free_before = s->free_units;
    for (int i = 0; i < N; i++)
        zkm_free(p[i]);
    ck_assert_uint_eq(h->lcache_n[K], ZKM_LCACHE_DEPTH);
    zkm__heap_lcache_refresh(h); /* one was taken since the last refresh: kept */
    ck_assert_uint_eq(h->lcache_n[K], ZKM_LCACHE_DEPTH);
    zkm__heap_lcache_refresh(h); /* none since: back to the slab */
    ck_assert_uint_eq(h->lcache_n[K], 0);
    ck_assert_uint_eq(s->free_units, free_before + (K + 1) * N); /* all six in s, as below */
}
END_TEST

START_TEST(fullest_first_and_drain)
{
    tun_set(2, 0, 0);
    enum { K = 1024, PER_PAGE = 64 }; /* 1 KiB: a medium class, 64 blocks in 4 units */
    ramp_done(K);
    static void *small[4 * PER_PAGE], *units[512];
    struct zkm_heap *h = zkm__tls_heap;
    int before = (int)h->nslabs;
    ck_assert_int_le(before, 1);
    /* slab A: four 1 KiB pages, then spans to its end; slab B: 100 spans */
    for (int i = 0; i < 4 * PER_PAGE; i++)
        small[i] = zkm_malloc(K);
    struct zkm_shdr *a = zkm__slab_of(small[0]);
    ck_assert_uint_eq(zkm__page_of(a, small[0])->capacity, PER_PAGE);
    for (int i = 0; i < 4 * PER_PAGE; i++)
        ck_assert_ptr_eq(zkm__slab_of(small[i]), a);
    int na = fill_units(units, 512, a) - 1; /* units[na] is the first one in B */
    struct zkm_shdr *b = zkm__slab_of(units[na]);
    ck_assert_ptr_ne(b, a);
    ck_assert_uint_eq(a->free_units, 0);
    for (int i = na + 1; i < na + 100; i++) {
        units[i] = zkm_malloc(ZKM_UNIT_SIZE);
        ck_assert_ptr_eq(zkm__slab_of(units[i]), b);
    }
    int nb = na + 100;
    /* A drains to its four pages (16 of 127 units used); three of them get a block back */
    for (int i = 0; i < na; i++)
        zkm_free(units[i]);
    for (int p = 0; p < 3; p++)
        zkm_free(small[p * PER_PAGE + 5]);
    ck_assert_uint_eq(h->lcache_n[0], ZKM_LCACHE_DEPTH); /* the last spans freed are kept... */
    zkm__heap_lcache_refresh(h); /* ...until a refresh finds none of them taken */
    ck_assert_uint_eq(h->lcache_n[0], 0);
    ck_assert_uint_le(127 - a->free_units, 16 + 1); /* + the 8-byte class's page of tun_set */
    ck_assert_uint_eq(b->free_units, 27);
    /* fullest first: a new span goes into B (27 free), not A (111 free) */
    void *x = zkm_malloc(ZKM_UNIT_SIZE);
    ck_assert_ptr_eq(zkm__slab_of(x), b);
    /* drain: the daemon's drain list names A (what drain_apply does with its handles); the
     * 1 KiB class's current page is used up and its queue holds A's pages, but A is being
     * drained and B has room: a new page in B */
    zkm__pool_drain_slabs(&a, 1);
    ck_assert(zkm__pool_draining(a) && !zkm__pool_draining(b));
    /* the heap's next ring tick or refresh gives back what its rings hold of A */
    zkm__ring_flush_all(h, true);
    for (unsigned r = 1; r <= ZKM_RING_CLASSES; r++)
        for (uint32_t i = h->ring[r].hd; i != h->ring[r].tl; i++)
            ck_assert_ptr_ne(zkm__slab_of(h->rslot[r][i % ZKM_RING_SLOTS]), a);
    struct zkm_alloc_counters c0 = counters();
    void *y = zkm_malloc(K);
    ck_assert_ptr_eq(zkm__slab_of(y), b);
    /* B full: then A's queued pages are used, not a new slab */
    static void *rest[PER_PAGE * 2];
    int nrest = 0;
    while (b->free_units > 0)
        rest[nrest++] = zkm_malloc(ZKM_UNIT_SIZE);
    for (int i = 1; i < PER_PAGE; i++)
        rest[nrest++] = zkm_malloc(K); /* the rest of y's page */
    void *z = zkm_malloc(K);
    ck_assert_ptr_eq(zkm__slab_of(z), a);
    zkm__pool_drain_slabs(NULL, 0); /* an empty list: nothing drained */
    ck_assert(!zkm__pool_drain_on() && !zkm__pool_draining(a));
    struct zkm_alloc_counters c1 = counters();
    ck_assert_uint_eq(c1.slabs_from_source + c1.slabs_reused,
                      c0.slabs_from_source + c0.slabs_reused);
    zkm_free(x);
    zkm_free(y);
    zkm_free(z);
    for (int i = 0; i < nrest; i++)
        zkm_free(rest[i]);
    for (int i = na; i < nb; i++)
        zkm_free(units[i]);
    for (int i = 0; i < 4 * PER_PAGE; i++)
        if (i % PER_PAGE != 5 || i / PER_PAGE == 3)
            zkm_free(small[i]);
    ck_assert_uint_le(h->nslabs, 1);
}
END_TEST

START_TEST(tcache_tunables_size_new_pages)
{
    ramp_done(2048);
    ramp_done(256);
    ramp_done(3000);
    uint8_t *m0 = zkm_malloc(2048); /* medium: 64 blocks of 2 KiB, 8 units */
    struct zkm_page *pg0 = zkm__page_of(zkm__slab_of(m0), m0);
    ck_assert_uint_eq(pg0->capacity, 64);
    ck_assert_uint_eq(pg0->units, 8);
    tun_set(0, 16, 8);
    uint8_t *s1 = zkm_malloc(256); /* small: 16 x 256 B -> the one-unit minimum */
    struct zkm_page *ps = zkm__page_of(zkm__slab_of(s1), s1);
    ck_assert_uint_eq(ps->units, 1);
    ck_assert_uint_eq(ps->capacity, 64);
    static void *m[64];
    for (int i = 0; i < 64; i++) /* 63 from the old page, then a new one */
        m[i] = zkm_malloc(2048);
    ck_assert_ptr_eq(zkm__page_of(zkm__slab_of(m[62]), m[62]), pg0);
    struct zkm_page *pg1 = zkm__page_of(zkm__slab_of(m[63]), m[63]);
    ck_assert_ptr_ne(pg1, pg0);
    ck_assert_uint_eq(pg1->units, 1);
    ck_assert_uint_eq(pg1->capacity, 8);
    for (int i = 0; i < 64; i++)
        zkm_free(m[i]);
    zkm_free(m0);
    zkm_free(s1);
    /* back up: pages made after it are the big ones again */
    tun_set(0, 256, 64);
    uint8_t *m2 = zkm_malloc(3000);
    ck_assert_uint_eq(zkm__page_of(zkm__slab_of(m2), m2)->capacity, 64);
    zkm_free(m2);
}
END_TEST

/* The rings follow the thread-cache targets too: tcache_small 16 and tcache_medium 8 make
 * the 256 B ring hold 16 and the 2 KiB ring 8 (from the classes' next page refill; a ring
 * holding more gives the excess back at its next overflow), and a target of 2 -- no more
 * than malloc leaves in a ring -- turns the ring off: frees go straight to the pages. */
static unsigned ring_fill(size_t size, unsigned n)
{
    static void *v[256];
    unsigned r = zkm__class_of(size) + 1, most = 0;
    for (unsigned i = 0; i < n; i++)
        v[i] = zkm_malloc(size);
    struct zkm_ring *rg = &zkm__tls_heap->ring[r]; /* (the heap exists now) */
    for (unsigned i = 0; i < n; i++) {
        zkm_free(v[i]);
        if (rg->tl - rg->hd > most)
            most = rg->tl - rg->hd;
    }
    return most;
}

static void *ring_off_thread(void *arg)
{
    (void)arg;
    struct zkm_heap *h = zkm__heap_get();
    unsigned rm = zkm__class_of(2048) + 1;
    uint8_t *p = zkm_malloc(2048); /* a new heap's current page, with the ring off */
    struct zkm_page *pg = zkm__page_of(zkm__slab_of(p), p);
    ck_assert_uint_eq(zkm__slab_of(p)->ring_of[pg->start], 0);
    uint32_t used = zkm__page_used(pg), tl = h->ring[rm].tl;
    zkm_free(p); /* straight to its page: used drops, the ring does not move */
    ck_assert_uint_eq(h->ring[rm].tl, tl);
    ck_assert_uint_eq(zkm__page_used(pg), used - 1);
    return NULL;
}

START_TEST(tcache_tunables_size_rings)
{
    zkm_free(zkm_malloc(1));
    struct zkm_heap *h = zkm__tls_heap;
    unsigned rs = zkm__class_of(256) + 1, rm = zkm__class_of(2048) + 1;
    /* the defaults: tcache_small 128 (256 KiB / 256 B is more), tcache_medium 64 */
    ck_assert_uint_eq(ring_fill(256, 200), 128);
    ck_assert_uint_eq(ring_fill(2048, 200), 64);
    tun_set(0, 16, 8);
    ck_assert_uint_eq(zkm__ring_cap_global(rs), 16);
    ck_assert_uint_eq(zkm__ring_cap_global(rm), 8);
    /* (each fill's 200 frees with no malloc between turn the ring off at the end; the next
     * fill's allocations refill a page, which turns it on with the new capacity) */
    ck_assert_uint_eq(ring_fill(256, 200), 16);
    ck_assert_uint_eq(ring_fill(2048, 200), 8);
    tun_set(0, 2, 2); /* off */
    ck_assert_uint_eq(zkm__ring_cap_global(rs), 0);
    ck_assert_uint_eq(zkm__ring_cap_global(rm), 0);
    ck_assert_uint_eq(ring_fill(256, 200), 0);
    ck_assert_uint_eq(h->ring_cap[rs], 0);
    run_thread(ring_off_thread, NULL); /* current pages while off: no ring at all */
    tun_set(0, 128, 64);               /* back on, for the pages of the class that become current */
    ck_assert_uint_eq(ring_fill(256, 200), 128);
}
END_TEST

/* A heap's first pages of a class are small and double up to the class's size: 2 KiB
 * blocks (a 64-block, 8-unit page) come in pages of 1, 2, 4, then 8 units; a new thread's
 * heap starts small again. */
static void page_ramp_check(void)
{
    enum { B = 2048 };
    static const unsigned want[] = {1, 2, 4, 8, 8};
    static void *v[8 + 16 + 32 + 64 + 64];
    unsigned n = 0;
    for (unsigned k = 0; k < 5; k++) {
        uint8_t *p = zkm_malloc(B);
        ck_assert_ptr_nonnull(p);
        v[n++] = p;
        struct zkm_page *pg = zkm__page_of(zkm__slab_of(p), p);
        ck_assert_msg(pg->units == want[k], "page %u of the 2 KiB class: %u units, want %u", k,
                      (unsigned)pg->units, want[k]);
        ck_assert_uint_eq(pg->capacity, want[k] * ZKM_UNIT_SIZE / B);
        for (uint32_t i = 1; i < pg->capacity; i++) /* the rest of the page */
            v[n++] = zkm_malloc(B);
    }
    for (unsigned i = 0; i < n; i++)
        zkm_free(v[i]);
}

static void *page_ramp_thread(void *arg)
{
    (void)arg;
    page_ramp_check();
    return NULL;
}

START_TEST(page_ramp)
{
    page_ramp_check();
    run_thread(page_ramp_thread, NULL);
}
END_TEST

/* The ramp follows the class's pages in use, not the pages ever made: once the 2 KiB
 * class's 1-, 2- and 4-unit pages empty and go, the heap's next new page of the class is
 * small again, where a count of pages made would keep handing out 8-unit pages (a program
 * whose batches come and go, zkbench touch, held 12.4 instead of 8.3 MiB). */
static void *page_ramp_down_thread(void *arg)
{
    (void)arg;
    enum { B = 2048, N = 8 + 16 + 32 + 64 };
    static void *v[N + 64 + 1];
    for (unsigned i = 0; i < N; i++) /* pages of 1, 2, 4 and 8 units, all full */
        v[i] = zkm_malloc(B);
    struct zkm_page *last = zkm__page_of(zkm__slab_of(v[N - 1]), v[N - 1]);
    ck_assert_uint_eq(last->units, 8);
    for (unsigned i = 0; i < N; i++)
        zkm_free(v[i]);
    /* the 8-unit page is still the current one; the page after it is new */
    unsigned n = 0;
    for (; n < 64 + 1; n++) {
        v[n] = zkm_malloc(B);
        ck_assert_ptr_nonnull(v[n]);
        if (zkm__page_of(zkm__slab_of(v[n]), v[n]) != last)
            break;
    }
    ck_assert_uint_le(n, 64);
    struct zkm_page *pg = zkm__page_of(zkm__slab_of(v[n]), v[n]);
    ck_assert_msg(pg->units <= 2, "new 2 KiB page after the class emptied: %u units, want <= 2",
                  (unsigned)pg->units);
    for (unsigned i = 0; i <= n; i++)
        zkm_free(v[i]);
    return NULL;
}

START_TEST(page_ramp_follows_pages_in_use)
{
    run_thread(page_ramp_down_thread, NULL);
}
END_TEST

START_TEST(tcache_env_wins_over_tunables)
{
    setenv("ZKMEM_TCACHE_MEDIUM", "32", 1);
    tun_set(0, 16, 8);
    ramp_done(2048);
    uint8_t *p = zkm_malloc(2048);
    ck_assert_uint_eq(zkm__page_of(zkm__slab_of(p), p)->capacity, 32);
    zkm_free(p);
}
END_TEST

static pthread_barrier_t idle_bar;

static void *alloc_free_idle(void *arg)
{
    enum { N = 200000 };
    static void *v[N];
    for (int i = 0; i < N; i++)
        v[i] = zkm_malloc(rnd_size(16, 512));
    for (int i = 0; i < N; i++)
        zkm_free(v[i]);
    *(uint32_t *)arg = zkm__tls_heap->nslabs;
    pthread_barrier_wait(&idle_bar); /* idle, heap alive */
    pthread_barrier_wait(&idle_bar);
    return NULL;
}

START_TEST(idle_thread_holds_little)
{
    tun_set(2, 0, 0);
    uint32_t main_slabs = zkm__tls_heap->nslabs;
    uint32_t nslabs = 99;
    ck_assert_int_eq(pthread_barrier_init(&idle_bar, NULL, 2), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, alloc_free_idle, &nslabs), 0);
    pthread_barrier_wait(&idle_bar);
    /* the thread freed everything and idles: one empty slab of its own at most */
    ck_assert_uint_le(nslabs, 1);
    ck_assert_uint_le(stats()->slabs_held, main_slabs + 1 + 2);
    pthread_barrier_wait(&idle_bar);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    pthread_barrier_destroy(&idle_bar);
}
END_TEST

/* Batches of mixed medium and large objects, all freed after each batch (zkbench touch and
 * large in one): slabs empty and fill again every batch. Retiring and releasing them each
 * time only re-fetches and re-carves them, so the heap backs off; but the thread, idle
 * afterwards, still holds a small constant of slabs. */
enum { CHURN_ROUNDS = 4000, CHURN_BATCH = 64 };

static size_t churn_size(unsigned i)
{
    return i % 16 == 0 ? rnd_size(256 << 10, 1536 << 10) : rnd_size(64, 64 << 10);
}

static uint64_t slab_gets(void)
{
    struct zkm_alloc_counters c;
    zkm__alloc_counters(&c);
    return c.slabs_from_source + c.slabs_reused + c.slabs_adopted;
}

/* Distinct slabs of the calling thread that hold one of its current pages. */
static uint64_t cur_page_slabs(void)
{
    const void *seen[ZKM_NCLASS];
    uint64_t n = 0;
    for (unsigned c = 0; c < ZKM_NCLASS; c++) {
        struct zkm_page *pg = zkm__tls_heap->cur[c];
        if (pg->cls == ZKM_CLASS_NONE)
            continue;
        const void *sl = zkm__slab_of(pg);
        bool dup = false;
        for (uint64_t i = 0; i < n; i++)
            dup |= seen[i] == sl;
        if (!dup)
            seen[n++] = sl;
    }
    return n;
}

static void *churn_idle(void *arg)
{
    static void *v[CHURN_BATCH];
    uint64_t *ret = arg, gets_mid = 0;
    for (unsigned r = 0; r < CHURN_ROUNDS; r++) {
        if (r == CHURN_ROUNDS / 2)
            gets_mid = slab_gets();
        for (unsigned i = 0; i < CHURN_BATCH; i++) {
            size_t n = churn_size(i);
            v[i] = zkm_malloc(n);
            ck_assert_ptr_nonnull(v[i]);
            memset(v[i], (int)r, n < 4096 ? n : 4096);
        }
        for (unsigned i = 0; i < CHURN_BATCH; i++)
            zkm_free(v[i]);
    }
    ret[0] = slab_gets() - gets_mid;
    ret[1] = zkm__tls_heap->nslabs;
    ret[2] = cur_page_slabs();
    pthread_barrier_wait(&idle_bar); /* idle, heap alive */
    pthread_barrier_wait(&idle_bar);
    return NULL;
}

START_TEST(batch_churn_backs_off_and_idles_small)
{
    tun_set(2, 0, 0);
    uint32_t main_slabs = zkm__tls_heap->nslabs;
    uint64_t r[3] = {99999, 99, 0};
    ck_assert_int_eq(pthread_barrier_init(&idle_bar, NULL, 2), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, churn_idle, r), 0);
    pthread_barrier_wait(&idle_bar);
    /* second half of the rounds: fewer than one slab taken per round (without the back-off
     * about three: the batch's frees gave slabs away and its mallocs took them back; 6484
     * at 6125356, about 420 with it) */
    ck_assert_msg(r[0] <= CHURN_ROUNDS / 2, "%lu slab acquisitions in %d rounds",
                  (unsigned long)r[0], CHURN_ROUNDS / 2);
    /* idle: the slabs its (empty) current pages pin -- while the back-off holds they are
     * retired only at the next trim or at exit -- plus the one spare it keeps: a constant
     * (at most one slab per class, in practice the few that fullest-first fills), whatever
     * the number of rounds; no slab holding nothing at all beyond the spare */
    ck_assert_uint_le(r[2], 8);
    ck_assert_uint_le(r[1], r[2] + 1);
    /* the process: those, L2 at the cap of 2 plus the churn boost (at most 4) */
    ck_assert_uint_le(stats()->slabs_held, main_slabs + r[1] + 2 + 4);
    pthread_barrier_wait(&idle_bar);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    pthread_barrier_destroy(&idle_bar);
    /* after the thread's exit its empty slabs went to L2 (or beyond the cap, the source) */
    ck_assert_uint_le(stats()->slabs_held, main_slabs + 2 + 4);
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

/* realloc growth of a span takes up to twice its units when they are free behind it;
 * growth inside that spare touches nothing; a shrink below what was last asked for gives
 * the units beyond the new size back (usable size exact again). */
START_TEST(large_realloc_growth_spare)
{
    uint8_t *p = zkm_malloc(100000); /* 7 units, at the start of free units */
    ck_assert_ptr_nonnull(p);
    memset(p, 0x3c, 100000);
    ck_assert_uint_eq(zkm_usable_size(p), 7 * ZKM_UNIT_SIZE);
    uint8_t *q = zkm_realloc(p, 120000); /* needs 8: takes 14 */
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_eq(zkm_usable_size(q), 14 * ZKM_UNIT_SIZE);
    q = zkm_realloc(q, 200000); /* inside the spare */
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_eq(zkm_usable_size(q), 14 * ZKM_UNIT_SIZE);
    for (size_t i = 0; i < 100000; i++)
        ck_assert_uint_eq(q[i], 0x3c);
    q = zkm_realloc(q, 150000); /* below the last request: 10 units, the rest back */
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_eq(zkm_usable_size(q), 10 * ZKM_UNIT_SIZE);
    for (size_t i = 0; i < 100000; i++)
        ck_assert_uint_eq(q[i], 0x3c);
    zkm_free(q);
}
END_TEST

/* A realloc that grows a block above half of large_threshold (8 KiB by default, at least
 * 4 KiB) moves it to a span, which then grows in place up to its units; a shrink below
 * what was asked back into class sizes moves it to a class block again. Content intact. */
START_TEST(realloc_growth_moves_to_a_span)
{
    uint8_t *p = zkm_malloc(3000);
    ck_assert_ptr_nonnull(p);
    memset(p, 0x6b, 3000);
    ck_assert_int_ne(zkm__page_of(zkm__slab_of(p), p)->cls, ZKM_CLASS_LARGE);
    uint8_t *q = zkm_realloc(p, 5000); /* growing, above 4 KiB: a span */
    ck_assert_ptr_nonnull(q);
    ck_assert_int_eq(zkm__page_of(zkm__slab_of(q), q)->cls, ZKM_CLASS_LARGE);
    ck_assert_uint_eq(zkm_usable_size(q), ZKM_UNIT_SIZE);
    memset(q + 3000, 0x6b, 2000);
    uint8_t *r = zkm_realloc(q, 7000); /* in place */
    ck_assert_ptr_eq(r, q);
    r = zkm_realloc(r, 12000); /* in place, above large_threshold */
    ck_assert_ptr_eq(r, q);
    for (size_t i = 0; i < 5000; i++)
        ck_assert_uint_eq(r[i], 0x6b);
    uint8_t *t = zkm_realloc(r, 2000); /* shrunk into class sizes: a class block again */
    ck_assert_ptr_nonnull(t);
    ck_assert_int_ne(zkm__page_of(zkm__slab_of(t), t)->cls, ZKM_CLASS_LARGE);
    for (size_t i = 0; i < 2000; i++)
        ck_assert_uint_eq(t[i], 0x6b);
    /* a malloc of the same size is still a class block */
    uint8_t *m = zkm_malloc(5000);
    ck_assert_int_ne(zkm__page_of(zkm__slab_of(m), m)->cls, ZKM_CLASS_LARGE);
    zkm_free(m);
    zkm_free(t);
}
END_TEST

/* A growing class block moves to a block for half as much again (alloc.c
 * zkm__alloc_growing): growth by steps of 8 bytes from 128 B to 4000 B moves a few times,
 * not at every one of the 40 class boundaries on the way; content intact; a block that
 * was only allocated holds what its class holds. */
START_TEST(realloc_growth_headroom)
{
    void *once = zkm_malloc(120);
    ck_assert_uint_lt(zkm_usable_size(once), 180);
    zkm_free(once);
    uint8_t *p = zkm_malloc(100);
    ck_assert_ptr_nonnull(p);
    memset(p, 0x2d, 100);
    uint8_t *q = zkm_realloc(p, 120);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_ne(q, p);                     /* 120 does not fit 100's class: moved */
    ck_assert_uint_ge(zkm_usable_size(q), 180); /* ...to a block for 1.5 x 120 */
    ck_assert_uint_le(zkm_usable_size(q), 180 * 9 / 8 + 16); /* its class, no more */
    for (size_t i = 0; i < 100; i++)
        ck_assert_uint_eq(q[i], 0x2d);
    unsigned moves = 0, classes = 0;
    size_t last_class_size = 0;
    for (size_t n = 128; n <= 4000; n += 8) {
        size_t c = zkm__class_size(zkm__class_of(n));
        classes += c != last_class_size;
        last_class_size = c;
        uint8_t *r = zkm_realloc(q, n);
        ck_assert_ptr_nonnull(r);
        moves += r != q;
        if (r != q)
            ck_assert_uint_eq(r[99], 0x2d); /* the first 100 bytes came along */
        q = r;
    }
    ck_assert_uint_ge(classes, 30);
    ck_assert_uint_le(moves, classes / 2);
    zkm_free(q);
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

/* A big request takes the kept mapping closest above its size, not the first in range: the
 * pages past its end stay resident. */
START_TEST(direct_cache_takes_closest)
{
    const size_t mb = (size_t)1 << 20;
    zkm__dcache_purge(UINT64_MAX / 2); /* start from an empty cache */
    uint8_t *a = zkm_malloc(9 * mb), *b = zkm_malloc(5 * mb);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    zkm_free(a); /* kept first: the first fit would take it */
    zkm_free(b);
    struct zkm_alloc_counters c0 = counters();
    uint8_t *e = zkm_malloc(46 * mb / 10); /* both in range (up to twice the size) */
    ck_assert_ptr_nonnull(e);
    struct zkm_alloc_counters c1 = counters();
    ck_assert_uint_eq(c1.direct_reused, c0.direct_reused + 1);
    ck_assert_uint_eq(c1.direct_maps, c0.direct_maps);
    ck_assert_uint_lt(zkm_usable_size(e), 6 * mb);
    uint8_t *f = zkm_malloc(85 * mb / 10); /* the 9 MiB one is still kept */
    ck_assert_ptr_nonnull(f);
    struct zkm_alloc_counters c2 = counters();
    ck_assert_uint_eq(c2.direct_reused, c1.direct_reused + 1);
    ck_assert_uint_eq(c2.direct_maps, c1.direct_maps);
    zkm_free(e);
    zkm_free(f);
}
END_TEST

/* realloc of a DIRECT object that cannot grow where it is: its pages move (mremap), no copy
 * and no second resident set; a shrink below half that still needs a mapping gives the tail
 * back where it is. */
START_TEST(direct_realloc_moves_pages)
{
    size_t big = (size_t)5 << 20, bigger = (size_t)12 << 20, smaller = (size_t)3 << 20;
    uint8_t *d = zkm_malloc(big);
    ck_assert_ptr_nonnull(d);
    for (size_t i = 0; i < big; i++)
        d[i] = (uint8_t)(i * 31 + 7);
    /* something right after the mapping, so that it cannot grow in place */
    uint8_t *end = d + zkm_usable_size(d);
    ck_assert_uint_eq((uintptr_t)end & 4095, 0);
    void *guard =
        mmap(end, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    ck_assert_msg(guard == end || errno == EEXIST, "guard mapping: %s", strerror(errno));
    struct zkm_client_stats st0, st1;
    ck_assert_int_eq(zkm_stats_snapshot(&st0), 0);
    size_t u0 = zkm_usable_size(d);
    struct zkm_alloc_counters c0 = counters();
    long rss0 = zkm_test_self_status_kb("RssAnon");
    uint8_t *e = zkm_realloc(d, bigger);
    long rss1 = zkm_test_self_status_kb("RssAnon");
    struct zkm_alloc_counters c1 = counters();
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_ne(e, d);
    ck_assert(zkm_owns(e));
    ck_assert_uint_ge(zkm_usable_size(e), bigger);
    ck_assert_uint_eq(c1.direct_moved, c0.direct_moved + 1);
    ck_assert_uint_eq(c1.direct_maps, c0.direct_maps);
    for (size_t i = 0; i < big; i++)
        if (e[i] != (uint8_t)(i * 31 + 7))
            ck_abort_msg("byte %zu changed in the move", i);
    /* a copy would have written 5 MiB of new pages and kept the old ones */
    ck_assert_msg(rss1 - rss0 < 1024, "RssAnon grew by %ld kB in the move", rss1 - rss0);
    ck_assert_int_eq(zkm_stats_snapshot(&st1), 0);
    ck_assert_int_eq((int64_t)(st1.bytes_in_use - st0.bytes_in_use),
                     (int64_t)zkm_usable_size(e) - (int64_t)u0);
    memset(e + big, 9, bigger - big);
    /* shrink below half, still a mapping: in place, the tail unmapped */
    uint8_t *f = zkm_realloc(e, smaller);
    ck_assert_ptr_eq(f, e);
    ck_assert_uint_ge(zkm_usable_size(f), smaller);
    ck_assert_uint_lt(zkm_usable_size(f), smaller + 8192);
    for (size_t i = 0; i < smaller; i++)
        if (f[i] != (uint8_t)(i * 31 + 7))
            ck_abort_msg("byte %zu changed in the shrink", i);
    unsigned char v;
    ck_assert_int_eq(mincore(f + bigger - 4096, 4096, &v), -1); /* the tail is gone */
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_int_eq(zkm_stats_snapshot(&st1), 0);
    ck_assert_int_eq((int64_t)(st1.bytes_in_use - st0.bytes_in_use),
                     (int64_t)zkm_usable_size(f) - (int64_t)u0);
    zkm_free(f);
    ck_assert_int_eq(zkm_stats_snapshot(&st1), 0);
    ck_assert_int_eq((int64_t)(st1.bytes_in_use - st0.bytes_in_use), -(int64_t)u0);
    if (guard == end)
        munmap(guard, 4096);
}
END_TEST

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A kept mapping that nobody takes for 10 ms is unmapped; a young one stays for reuse. */
START_TEST(direct_cache_decays)
{
    size_t big = (size_t)6 << 20;
    zkm__dcache_purge(UINT64_MAX / 2); /* start from an empty cache */
    uint8_t *d = zkm_malloc(big);
    ck_assert_ptr_nonnull(d);
    memset(d, 5, big);
    zkm_free(d);
    struct zkm_alloc_counters c0 = counters();
    uint64_t t = mono_ns();
    ck_assert_uint_eq(zkm__dcache_purge(t), 0); /* just put: kept */
    ck_assert_uint_eq(counters().direct_unmaps, c0.direct_unmaps);
    ck_assert_uint_eq(zkm__dcache_purge(t + 20000000ull), 1); /* 20 ms later: gone */
    struct zkm_alloc_counters c1 = counters();
    ck_assert_uint_eq(c1.direct_purged, c0.direct_purged + 1);
    ck_assert_uint_eq(c1.direct_unmaps, c0.direct_unmaps + 1);
    /* so the next one of that size is a fresh (zero) mapping, not a reuse */
    uint8_t *e = zkm_malloc(big);
    ck_assert_ptr_nonnull(e);
    struct zkm_alloc_counters c2 = counters();
    ck_assert_uint_eq(c2.direct_maps, c1.direct_maps + 1);
    ck_assert_uint_eq(c2.direct_reused, c1.direct_reused);
    for (size_t i = 0; i < big; i += 4096)
        if (e[i] != 0)
            ck_abort_msg("byte %zu of a fresh direct mapping not zero", i);
    zkm_free(e);
    /* the heap's periodic refresh purges on its own: slow paths, time passing */
    uint64_t until = mono_ns() + 2000000000ull;
    while (counters().direct_purged == c2.direct_purged && mono_ns() < until) {
        void *v[64];
        for (int i = 0; i < 64; i++)
            v[i] = zkm_malloc(20000 + (size_t)i * 16384); /* spans: every one a slow path */
        for (int i = 0; i < 64; i++)
            zkm_free(v[i]);
    }
    ck_assert_uint_eq(counters().direct_purged, c2.direct_purged + 1);
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
    run_thread(churn, (void *)100000L); /* thread exit flushes */
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
    run_thread(churn, (void *)100000L);
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
    run_thread(churn, (void *)10000L);
    ck_assert_uint_ge(st->alloc_ops - a0, 10000);
    ck_assert_uint_eq(st->lat_hist[0] + st->lat_hist[5] + st->lat_hist[10], 0);
}
END_TEST

/* Balanced counts on the inline paths are exact once flushed (thread exit flushes):
 * ops, frees, tiers, and bytes_in_use by class size. */
static void *keep_some(void *arg)
{
    void **objs = arg;
    for (int i = 0; i < 1000; i++)
        objs[i] = zkm_malloc(24); /* class 32: small */
    for (int i = 1000; i < 1500; i++)
        objs[i] = zkm_malloc(3000); /* medium */
    for (int i = 0; i < 400; i++)
        zkm_free(objs[i]);
    return NULL;
}

START_TEST(mode_balanced_counts_exact)
{
    setenv("ZKMEM_MODE", "balanced", 1);
    struct zkm_client_stats s0, s1;
    ck_assert_int_eq(zkm_stats_snapshot(&s0), 0);
    static void *objs[1500];
    run_thread(keep_some, objs);
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_eq(s1.alloc_ops - s0.alloc_ops, 1500);
    ck_assert_uint_eq(s1.free_ops - s0.free_ops, 400);
    ck_assert_uint_eq(s1.small_allocs - s0.small_allocs, 1000);
    ck_assert_uint_eq(s1.medium_allocs - s0.medium_allocs, 500);
    ck_assert_uint_eq((s1.tcache_hits + s1.tcache_misses) - (s0.tcache_hits + s0.tcache_misses),
                      1500);
    size_t medium = zkm_usable_size(objs[1000]);
    ck_assert_uint_eq(s1.bytes_in_use - s0.bytes_in_use, 600 * 32 + 500 * medium);
    /* the control block has the same totals */
    ck_assert_uint_eq(zkm__source_stats()->alloc_ops, s1.alloc_ops);
    ck_assert_uint_eq(zkm__source_stats()->bytes_in_use, s1.bytes_in_use);
    for (int i = 400; i < 1500; i++)
        zkm_free(objs[i]); /* remote frees, counted by this thread */
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_eq(s1.free_ops - s0.free_ops, 1500);
    ck_assert_uint_eq(s1.remote_frees - s0.remote_frees, 1100);
    /* their bytes leave bytes_in_use when the slabs' next owner collects them (adoption) */
    ck_assert_uint_eq(s1.bytes_in_use - s0.bytes_in_use, 600 * 32 + 500 * medium);
}
END_TEST

/* Large spans count their units' bytes in bytes_in_use (the generic path knows them without
 * looking the object up, zkm__alloc_generic and zkm__alloc_growing), whatever was asked:
 * sizes that are not a multiple of a unit, an aligned span, and a block that realloc moved
 * into a span with room to grow. */
START_TEST(stats_bytes_of_large_spans)
{
    setenv("ZKMEM_MODE", "balanced", 1);
    struct zkm_client_stats s0, s1;
    zkm_free(zkm_malloc(24)); /* the thread's heap, in balanced mode */
    ck_assert_int_eq(zkm_stats_snapshot(&s0), 0);
    size_t sizes[] = {ZKM_TABLE_MAX + 1, 20000, 3 * ZKM_UNIT_SIZE, 100000, 600000};
    void *p[8];
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++, n++) {
        p[n] = zkm_malloc(sizes[i]);
        ck_assert_ptr_nonnull(p[n]);
        ck_assert_uint_eq(zkm_usable_size(p[n]) % ZKM_UNIT_SIZE, 0); /* a span */
        bytes += zkm_usable_size(p[n]);
    }
    p[n] = zkm_aligned_alloc(4 * ZKM_UNIT_SIZE, 50000);
    ck_assert_ptr_nonnull(p[n]);
    ck_assert_uint_eq((uintptr_t)p[n] % (4 * ZKM_UNIT_SIZE), 0);
    bytes += zkm_usable_size(p[n++]);
    void *g = zkm_malloc(ZKM_TABLE_MAX / 2); /* a class block that grows into a span */
    ck_assert_ptr_nonnull(g);
    void *q = zkm_realloc(g, ZKM_TABLE_MAX + 100);
    ck_assert_ptr_nonnull(q);
    ck_assert_uint_eq(zkm_usable_size(q) % ZKM_UNIT_SIZE, 0);
    p[n++] = q;
    bytes += zkm_usable_size(q);
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_eq(s1.alloc_ops - s0.alloc_ops, n + 1); /* and the class block */
    ck_assert_uint_eq(s1.bytes_in_use - s0.bytes_in_use, bytes);
    for (size_t i = 0; i < n; i++)
        zkm_free(p[i]);
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_eq(s1.bytes_in_use, s0.bytes_in_use);
}
END_TEST

/* Balanced mode counts with nothing on the inline malloc: a loop of malloc/free pairs on
 * one block takes no slow path at all, yet its counts reach the control block (the page's
 * free count ticks every ZKM_TICK_FREES, every 4th tick reads the clock, a flush when 250 ms
 * passed) while it runs, and they are exact once folded. Then the same with a live set that
 * spreads the frees over several pages of several classes and also takes slow paths. */
START_TEST(mode_balanced_tight_loop_publishes)
{
    setenv("ZKMEM_MODE", "balanced", 1);
    struct zkm_client_stats s0, s1;
    for (int i = 0; i < 100; i++) /* the thread's heap, in balanced mode; its ring filled */
        zkm_free(zkm_malloc(24));
    ck_assert_int_eq(zkm_stats_snapshot(&s0), 0);
    struct zkm_heap *h = zkm__tls_heap;
    const volatile uint64_t *published = &zkm__source_stats()->alloc_ops;
    ck_assert_uint_eq(*published, s0.alloc_ops);
    uint64_t slow0 = h->slow_calls, n = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (int i = 0; i < 100000; i++, n++)
            zkm_free(zkm_malloc(24));
        if (*published != s0.alloc_ops)
            break;
        clock_gettime(CLOCK_MONOTONIC, &t);
        ck_assert_msg(t.tv_sec - t0.tv_sec < 10, "%llu pairs in 10 s, nothing published",
                      (unsigned long long)n);
    }
    ck_assert_uint_eq(h->slow_calls, slow0);
    ck_assert_uint_gt(*published, s0.alloc_ops);
    ck_assert_uint_le(*published, s0.alloc_ops + n);
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_eq(s1.alloc_ops - s0.alloc_ops, n);
    ck_assert_uint_eq(s1.free_ops - s0.free_ops, n);
    ck_assert_uint_eq(s1.small_allocs - s0.small_allocs, n);
    ck_assert_uint_eq(s1.tcache_misses, s0.tcache_misses);
    ck_assert_uint_eq(s1.bytes_in_use, s0.bytes_in_use);

    /* a ring of 3000 live blocks of 16..1024 bytes: the fold's arithmetic across page
     * switches, refills (slow allocations, counted there) and pages that empty and go */
    static void *ring[3000];
    uint64_t allocs = 0, frees = 0, bytes = 0;
    s0 = s1;
    for (int i = 0; i < 400000; i++) {
        int k = i % 3000;
        if (ring[k]) {
            bytes -= zkm_usable_size(ring[k]);
            zkm_free(ring[k]);
            frees++;
        }
        ring[k] = zkm_malloc(16 + (size_t)i * 7919 % 1009);
        ck_assert_ptr_nonnull(ring[k]);
        bytes += zkm_usable_size(ring[k]);
        allocs++;
    }
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_gt(h->slow_calls, slow0);
    ck_assert_uint_eq(s1.alloc_ops - s0.alloc_ops, allocs);
    ck_assert_uint_eq(s1.free_ops - s0.free_ops, frees);
    ck_assert_uint_eq(s1.bytes_in_use - s0.bytes_in_use, bytes);
    ck_assert_uint_eq((s1.tcache_hits + s1.tcache_misses) - (s0.tcache_hits + s0.tcache_misses),
                      allocs);
    for (int k = 0; k < 3000; k++) {
        bytes -= zkm_usable_size(ring[k]);
        zkm_free(ring[k]);
        ring[k] = NULL;
    }
    ck_assert_int_eq(zkm_stats_snapshot(&s1), 0);
    ck_assert_uint_eq(s1.free_ops - s0.free_ops, frees + 3000);
    ck_assert_uint_eq(s1.bytes_in_use - s0.bytes_in_use, bytes);
    ck_assert_uint_eq(bytes, 0);
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

/* A field ("Rss:", "VmFlags:", ...) of the smaps entry of the mapping that holds p. */
static void smaps_field(const void *p, const char *key, char *out, size_t outlen)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    ck_assert_ptr_nonnull(f);
    char line[512];
    int in = 0;
    out[0] = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            continue;
        }
        if (in && strncmp(line, key, strlen(key)) == 0)
            snprintf(out, outlen, "%s", line + strlen(key));
    }
    fclose(f);
}

/* A field in kB of the mapping that holds p ("KernelPageSize:", "AnonHugePages:"). */
static long smaps_kb(const void *p, const char *key)
{
    char v[64];
    smaps_field(p, key, v, sizeof(v));
    return v[0] ? atol(v) : -1;
}

/* An object above a slab is a direct mapping that the system's THP setting governs: not
 * advised MADV_HUGEPAGE ("hg" in VmFlags), so writing its two ends makes two pages
 * resident, not two zeroed 2 MiB pages (unless THP is "always" system-wide). */
START_TEST(direct_mappings_not_thp_advised)
{
    size_t n = (size_t)6 << 20;
    uint8_t *p = zkm_malloc(n);
    ck_assert_ptr_nonnull(p);
    p[0] = 1;
    p[n - 1] = 2;
    char flags[256], rss[64];
    smaps_field(p, "VmFlags:", flags, sizeof(flags));
    ck_assert_msg(flags[0] != 0, "no smaps entry for the mapping");
    ck_assert_msg(strstr(flags, " hg") == NULL, "VmFlags:%s", flags);
    char thp[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(thp, sizeof(thp), f))
            thp[0] = 0;
        fclose(f);
    }
    if (strstr(thp, "[always]") == NULL) {
        smaps_field(p, "Rss:", rss, sizeof(rss));
        ck_assert_msg(atol(rss) <= 64, "Rss of the mapping: %s", rss);
    } else {
        zkm_test_skip("direct_mappings_not_thp_advised (Rss)", "THP is \"always\" here");
    }
    zkm_free(p);
}
END_TEST

/* Memory of the daemon's mapped in this process: hugetlb, or shared small pages. */
static long daemon_memory_kb(void)
{
    long h = zkm_test_self_status_kb("HugetlbPages"), s = zkm_test_self_status_kb("RssShmem");
    return (h > 0 ? h : 0) + (s > 0 ? s : 0);
}

/* A zkmemd in a temporary directory with extra_config, and the allocator pointed at it
 * (ZKMEM_SOCKET); false, the test skipped with the reason, when it does not start. */
static bool daemon_for(struct zkm_test_daemon *d, const char *test, const char *extra_config)
{
    if (zkm_test_daemon_start(d, extra_config, NULL) != 0) {
        zkm_test_skip(test, "zkmemd did not start ($ZKMEM_DAEMON)");
        return false;
    }
    setenv("ZKMEM_SOCKET", d->sock, 1);
    return true;
}

/* start_slabs: a process's first slabs are its own 4 KiB pages, so a small heap pins no
 * hugepage; the slab after them comes from the daemon. Counted in start_bytes, which the
 * daemon shows in the client's record. */
START_TEST(start_slabs_before_daemon_slabs)
{
    struct zkm_test_daemon d;
    if (!daemon_for(&d, "start_slabs_before_daemon_slabs", NULL))
        return;
    setenv("ZKMEM_START_SLABS", "2", 1);
    enum { K = 1024, MAX = 8192 };
    static uint8_t *blk[MAX];
    struct zkm_source_counters sc = {0};
    long before = -1;
    unsigned n = 0;
    struct zkm_shdr *first = NULL;
    for (; n < MAX && sc.daemon_slabs == 0; n++) {
        blk[n] = zkm_malloc(K);
        ck_assert_ptr_nonnull(blk[n]);
        memset(blk[n], (int)(n & 0xff), K);
        if (!first)
            first = zkm__slab_of(blk[0]);
        zkm__source_counters(&sc);
        if (sc.daemon_slabs == 0) {
            ck_assert_uint_le(sc.start_slabs, 2);
            before = daemon_memory_kb(); /* the control block, a few pages at most */
        }
    }
    ck_assert_msg(sc.daemon_slabs == 1, "no daemon slab after %u blocks of 1 KiB", n);
    ck_assert_uint_eq(sc.start_slabs, 2);
    ck_assert_uint_eq(sc.local_slabs, 0);
    ck_assert_int_ge(before, 0);
    ck_assert_msg(before < 512, "%ld kB of daemon memory mapped with only start slabs", before);
    ck_assert_int_gt(daemon_memory_kb(), before); /* the last block went into daemon memory */
    ck_assert_int_eq(smaps_kb(first, "KernelPageSize:"), 4);
    ck_assert_int_eq(smaps_kb(first, "AnonHugePages:"), 0);
    long page_kb = smaps_kb(blk[n - 1], "KernelPageSize:");
    ck_assert_msg(page_kb != 4 || zkm_test_self_status_kb("HugetlbPages") <= 0,
                  "the daemon slab is in %ld kB pages though hugepages back the daemon", page_kb);

    struct zkm_client_stats st;
    zkm_stats_snapshot(&st);
    ck_assert_uint_eq(st.start_bytes, 2 * ZKM_SOURCE_SLAB);
    const char *const argv[] = {getenv("ZKMEMCTL"), "--socket", d.sock, "--json", "clients", NULL};
    static char out[65536];
    ck_assert_msg(argv[0] != NULL, "$ZKMEMCTL is not set");
    ck_assert_int_eq(zkm_test_capture(argv, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "\"start_bytes\": 4194304") != NULL, "zkmemctl clients: %s", out);

    for (unsigned i = 0; i < n; i++) {
        for (unsigned b = 0; b < K; b += 97)
            ck_assert_uint_eq(blk[i][b], i & 0xff);
        zkm_free(blk[i]);
    }
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

/* 4 KiB pages of the span of class page pg that are resident. */
static unsigned resident_pages(struct zkm_shdr *s, struct zkm_page *pg)
{
    enum { MAXP = (16u << ZKM_UNIT_SHIFT) / 4096u };
    unsigned char vec[MAXP];
    size_t len = (size_t)pg->units << ZKM_UNIT_SHIFT;
    ck_assert_uint_le(len / 4096, MAXP);
    ck_assert_int_eq(mincore(zkm__page_start(s, pg), len, vec), 0);
    unsigned n = 0;
    for (size_t i = 0; i < len / 4096; i++)
        n += vec[i] & 1;
    return n;
}

static void *four_blocks_and_exit(void *arg)
{
    void **p = arg;
    for (unsigned i = 0; i < 4; i++) { /* class 1024: 16 blocks in one unit, its first page */
        p[i] = zkm_malloc(1000);
        ck_assert_ptr_nonnull(p[i]);
    }
    struct zkm_shdr *s = zkm__slab_of(p[0]);
    struct zkm_page *pg = zkm__page_of(s, p[0]);
    ck_assert_uint_eq(pg->units, 1);
    ck_assert_uint_eq(pg->capacity, 16);
    /* linked as used: the 4 blocks of the first 4 KiB, not all 16 (4 pages) */
    ck_assert_uint_eq(resident_pages(s, pg), 1);
    ck_assert_uint_eq(pg->carved, 4);
    ck_assert_ptr_null(pg->free);
    /* a fresh zeroed slab: of its header only the first 4 KiB page was written (descriptors
     * of units not yet reached and the remote-free lists are left zero) */
    unsigned char hv[3];
    ck_assert_int_eq(mincore(s, 3 * 4096, hv), 0);
    ck_assert_msg((hv[0] & 1) && !(hv[1] & 1) && !(hv[2] & 1), "header pages resident: %d %d %d",
                  hv[0] & 1, hv[1] & 1, hv[2] & 1);
    ck_assert_uint_lt((uintptr_t)pg - (uintptr_t)s, 4096);
    return NULL; /* exit: the heap is abandoned with the page's linked blocks all out */
}

/* A class page's blocks are linked into its free list as they are needed (a start slab,
 * 4 KiB pages, stays resident only as far as the page is used), and an adopted page whose
 * free list is empty but has blocks never linked is refilled from, not taken for full. */
START_TEST(class_pages_linked_as_used)
{
    struct zkm_test_daemon d;
    if (!daemon_for(&d, "class_pages_linked_as_used", NULL)) /* start slabs: 4 KiB pages */
        return;
    void *p[4];
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, four_blocks_and_exit, p), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_int_eq(smaps_kb(p[0], "KernelPageSize:"), 4);
    struct zkm_shdr *s = zkm__slab_of(p[0]);
    struct zkm_page *pg = zkm__page_of(s, p[0]);
    /* the main thread adopts the slab (its first page there is a new one; the adopted page
     * is queued) and then fills the adopted page's other 12 blocks */
    enum { MAXQ = 64 };
    void *q[MAXQ];
    unsigned nq = 0, in_pg = 0;
    for (; nq < MAXQ && in_pg < 12; nq++) {
        q[nq] = zkm_malloc(1000);
        ck_assert_ptr_nonnull(q[nq]);
        memset(q[nq], 0x5a, 1000);
        if (zkm__page_of(zkm__slab_of(q[nq]), q[nq]) != pg)
            continue;
        for (unsigned i = 0; i < 4; i++)
            ck_assert_ptr_ne(q[nq], p[i]);
        in_pg++;
        ck_assert_uint_eq(resident_pages(s, pg), (in_pg + 3) / 4 + 1); /* block 4 + in_pg */
    }
    ck_assert_msg(in_pg == 12, "%u of the adopted page's 12 free blocks in %u mallocs", in_pg, nq);
    ck_assert_uint_eq(pg->carved, 16);
    ck_assert_uint_eq(zkm__page_used(pg), 16);
    ck_assert_int_eq(smaps_kb(p[0], "AnonHugePages:"), 0);
    for (unsigned i = 0; i < 4; i++)
        zkm_free(p[i]);
    for (unsigned i = 0; i < nq; i++)
        zkm_free(q[i]);
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

START_TEST(fork_local_memory)
{
    fork_private();
}
END_TEST

START_TEST(fork_daemon_memory)
{
    struct zkm_test_daemon d;
    if (!daemon_for(&d, "fork_daemon_memory", NULL))
        return;
    setenv("ZKMEM_START_SLABS", "0", 1); /* daemon memory from the first slab */
    void *p = zkm_malloc(100);           /* first slab: from the daemon */
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
    if (!daemon_for(&d, "daemon_slabs_and_stats", NULL))
        return;
    setenv("ZKMEM_MODE", "balanced", 1);
    setenv("ZKMEM_START_SLABS", "0", 1); /* every tier on daemon memory, below */
    run_thread(churn, (void *)50000L);
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

/* The compactor end to end: this process publishes its slabs' occupancy, the daemon
 * names the sparse ones in its drain list, and the allocator then refills from the others.
 * Eight slabs of 1 KiB blocks (pages of 64 blocks in 4 units); in slabs 0-3 one block is
 * kept in 4 pages (16 units used: sparse), in slabs 4-7 every other page is kept full
 * (room for the sparse slabs' units twice over). */
START_TEST(daemon_drains_sparse_slabs)
{
    struct zkm_test_daemon d;
    if (!daemon_for(&d, "daemon_drains_sparse_slabs", "enable_compaction = yes\n"))
        return;
    setenv("ZKMEM_START_SLABS", "0", 1); /* the daemon drains only slabs it granted */
    enum { K = 1024, PER_PAGE = 64, SLABS = 8, PAGES = 31 }; /* 31 pages of 4 units a slab */
    ramp_done(K);
    static void *blk[SLABS][PAGES][PER_PAGE];
    struct zkm_shdr *slab[SLABS];
    unsigned got = 0;
    static void *spill[4 * PAGES * PER_PAGE];
    unsigned nspill = 0;
    /* fill: blocks by slab and page until eight slabs fresh from the daemon hold 31 full
     * pages each (fullest-first fills one slab after the other); blocks elsewhere spill */
    memset(blk, 0, sizeof(blk));
    for (unsigned placed = 0; placed < SLABS * PAGES * PER_PAGE;) {
        void *p = zkm_malloc(K);
        ck_assert_ptr_nonnull(p);
        struct zkm_shdr *s = zkm__slab_of(p);
        struct zkm_page *pg = zkm__page_of(s, p);
        unsigned idx = 0;
        while (idx < got && slab[idx] != s)
            idx++;
        if (idx == got && got < SLABS && s->free_units == ZKM_UNITS - 1 - 4)
            slab[got++] = s;
        unsigned pi = (pg->start - 1u) / 4u;
        if (idx == got || pi >= PAGES) {
            spill[nspill++] = p; /* a slab that held other things, or its last units */
            ck_assert_uint_lt(nspill, 4 * PAGES * PER_PAGE);
            continue;
        }
        blk[idx][pi][((uint8_t *)p - zkm__page_start(s, pg)) / K] = p;
        placed++;
    }
    struct zkm_source_counters sc;
    zkm__source_counters(&sc);
    if (sc.daemon_slabs == 0) {
        zkm_test_daemon_stop(&d);
        zkm_test_skip("daemon_drains_sparse_slabs", "zkmemd granted no slab (see its log)");
        return;
    }
    for (unsigned i = 0; i < SLABS; i++)
        for (unsigned pi = 0; pi < PAGES; pi++)
            for (unsigned bi = 0; bi < PER_PAGE; bi++) {
                bool keep = i < 4 ? pi < 4 && bi == 0 : pi % 2 == 0;
                if (!keep && blk[i][pi][bi]) {
                    zkm_free(blk[i][pi][bi]);
                    blk[i][pi][bi] = NULL;
                }
            }
    for (unsigned i = 0; i < 4; i++)
        ck_assert_uint_le(ZKM_UNITS - 1 - slab[i]->free_units, 16);
    /* publish the table, have `zkmemctl compact` pick the slabs now, take the list */
    struct zkm_client_stats st;
    zkm_stats_snapshot(&st);
    const char *const argv[] = {getenv("ZKMEMCTL"), "--socket", d.sock, "compact", NULL};
    char out[512];
    ck_assert_msg(argv[0] != NULL, "$ZKMEMCTL is not set");
    ck_assert_int_eq(zkm_test_capture(argv, 1, out, sizeof(out)), 0);
    zkm_stats_snapshot(&st);
    bool drained = true;
    for (unsigned i = 0; i < SLABS; i++)
        drained &= zkm__pool_draining(slab[i]) == (i < 4);
    ck_assert(zkm_test_daemon_log_contains(&d, "drain lists: 4 sparse slabs of 1 clients"));
    ck_assert_msg(drained, "the daemon's drain list did not name slabs 0-3 (and only them)");
    /* new 1 KiB blocks come from slabs 4-7, though the class queue holds pages of 0-3 */
    static void *fresh[16 * PER_PAGE];
    for (unsigned n = 0; n < 16 * PER_PAGE; n++) {
        fresh[n] = zkm_malloc(K);
        struct zkm_shdr *s = zkm__slab_of(fresh[n]);
        for (unsigned i = 0; i < 4; i++)
            ck_assert_msg(s != slab[i], "block %u went into drained slab %u", n, i);
    }
    for (unsigned n = 0; n < 16 * PER_PAGE; n++)
        zkm_free(fresh[n]);
    for (unsigned i = 0; i < SLABS; i++)
        for (unsigned pi = 0; pi < PAGES; pi++)
            for (unsigned bi = 0; bi < PER_PAGE; bi++)
                zkm_free(blk[i][pi][bi]);
    for (unsigned n = 0; n < nspill; n++)
        zkm_free(spill[n]);
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
    tcase_add_test(tc, large_threshold_inside_a_word);
    tcase_add_test(tc, large_threshold_above_table);
    suite_add_tcase(s, tc);

    tc = tcase_create("heaps");
    tcase_add_test(tc, thread_cache_ring_no_slab_traffic);
    tcase_add_test(tc, ring_bounds_and_turns_off);
    tcase_add_test(tc, ring_reuses_pages);
    tcase_add_test(tc, remote_frees_collected);
    tcase_add_test(tc, remote_frees_by_pointer);
    tcase_add_test(tc, remote_free_of_large_span);
    tcase_add_test(tc, stranded_remote_frees_swept);
    tcase_add_test(tc, thread_exit_adoption);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("compaction");
    tcase_add_test(tc, generations_return_slabs);
    tcase_add_test(tc, random_frees_reused);
    tcase_add_test(tc, random_frees_leave_holes_for_medium);
    tcase_add_test(tc, holes_adopted);
    tcase_add_test(tc, l2_cap_trims);
    tcase_add_test(tc, fullest_first_and_drain);
    tcase_add_test(tc, tcache_tunables_size_new_pages);
    tcase_add_test(tc, tcache_tunables_size_rings);
    tcase_add_test(tc, page_ramp);
    tcase_add_test(tc, page_ramp_follows_pages_in_use);
    tcase_add_test(tc, tcache_env_wins_over_tunables);
    tcase_add_test(tc, idle_thread_holds_little);
    tcase_add_test(tc, batch_churn_backs_off_and_idles_small);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("tiers");
    tcase_add_test(tc, large_spans_and_realloc_in_place);
    tcase_add_test(tc, large_realloc_growth_spare);
    tcase_add_test(tc, realloc_growth_moves_to_a_span);
    tcase_add_test(tc, realloc_growth_headroom);
    tcase_add_test(tc, huge_and_direct);
    tcase_add_test(tc, direct_cache_decays);
    tcase_add_test(tc, direct_realloc_moves_pages);
    tcase_add_test(tc, direct_cache_takes_closest);
    tcase_add_test(tc, calloc_zero_tracking);
    tcase_add_test(tc, alloc_node);
    tcase_add_test(tc, bulk);
    tcase_add_test(tc, direct_mappings_not_thp_advised);
    tcase_add_test(tc, large_spans_kept_lifo);
    suite_add_tcase(s, tc);

    tc = tcase_create("modes");
    tcase_add_test(tc, mode_monitoring_counts_and_samples);
    tcase_add_test(tc, mode_high_performance_no_stats);
    tcase_add_test(tc, mode_balanced_counts);
    tcase_add_test(tc, mode_balanced_counts_exact);
    tcase_add_test(tc, stats_bytes_of_large_spans);
    tcase_add_test(tc, mode_balanced_tight_loop_publishes);
    suite_add_tcase(s, tc);

    tc = tcase_create("fork");
    tcase_add_test(tc, fork_local_memory);
    tcase_add_test(tc, fork_daemon_memory);
    tcase_add_test(tc, daemon_slabs_and_stats);
    tcase_add_test(tc, daemon_drains_sparse_slabs);
    tcase_add_test(tc, start_slabs_before_daemon_slabs);
    tcase_add_test(tc, class_pages_linked_as_used);
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
