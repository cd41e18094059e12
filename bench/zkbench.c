/* SPDX-License-Identifier: MIT */
/*
 * zkbench.c - one allocator workload, measured; prints one JSON line.
 *
 *   zkbench WORKLOAD [--threads N] [--ops N] [--seed S] [--lat-period P]
 *
 * Allocator-agnostic: it calls plain malloc/free/realloc, so whatever library provides
 * `malloc` (glibc, or an LD_PRELOADed jemalloc/mimalloc/tcmalloc/zkmem) is what gets
 * measured. The JSON names that library ("allocator", from dladdr on the resolved
 * `malloc`) so the runner can reject a run whose preload silently failed.
 *
 * What one "op" is, per workload (the ops_per_sec denominator):
 *   pairs     malloc(16..64) + write 1 byte + free
 *   ring10k   free the oldest of 10,000 live objects (16..256 B) + malloc a new one
 *   live100k  free a random one of 100,000 live objects (8 B..8 KiB, log-uniform) + malloc
 *   large     free one of 4 live 64 KiB..4 MiB objects + malloc + write first and last page
 *   xthread   one object malloc'ed by the producer and freed by the consumer (2 threads)
 *   realloc   one realloc() step of a buffer growing 16 B -> 1 MiB (x1.25 + 16), then free
 *   touch     malloc(64 B..64 KiB) + memset of every byte; frees in batches of 64
 *   plan      malloc(8 B..8 KiB) + free, in batches of 32 (the seed plan's "unified"
 *             figure); then a memory phase with 100,000 live 8 B..8 KiB objects for
 *             memory efficiency
 * Every workload reports zkmem's own stats (cache hit rate, tier shares) when the
 * allocator in effect exports zkm_stats_snapshot().
 *
 * Phases, separated by barriers that the main thread also joins:
 *   1. each thread builds its state (precomputed sizes/indices in mmap'ed arrays, so the
 *      benchmark's own bookkeeping never goes through the allocator under test, and the
 *      live set for ring/live/large) - untimed;
 *   2. throughput: the workload loop, ops/threads per thread, no clock read inside; the
 *      main thread times barrier to barrier;
 *   3. latency: a separate pass of ops/4 per thread where one op in P (256 for the cheap
 *      workloads, 16 for large/touch/realloc) is timed with rdtsc (lfence'd), minus the
 *      timer's own measured overhead; p50/p99/p99.9 come from these samples;
 *   4. RSS with the live set still held (memory efficiency = live requested bytes /
 *      (RSS - RSS before phase 1));
 *   5. threads free everything; main calls malloc_trim(0) only when `malloc` is glibc's,
 *      then reads RSS again (rss_after_free_kb). rss_peak_kb is VmHWM plus the hugetlb high-water
 *      mark (see mem_now()).
 *
 * No RNG in the timed loops: sizes and indices come from per-thread arrays filled from
 * a fixed-seed xorshift64* before phase 2 and indexed by the op number. Every pointer
 * escapes through an empty asm with a memory clobber, so no malloc/free pair or memset
 * can be elided.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "tsc.h"
#include "zkm_proto.h" /* struct zkm_client_stats: layout only, no link */

#define SZ_N        (1u << 16) /* precomputed sizes per thread */
#define IDX_N       (1u << 17) /* precomputed slot indices per thread */
#define RING_N      10000u
#define LIVE_N      100000u
#define LARGE_N     4u
#define TOUCH_N     64u
#define PLAN_BATCH  32u
#define Q_N         1024u /* SPSC queue slots (power of two) */
#define MAX_THREADS 64

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

static inline void escape(void *p)
{
    __asm__ volatile("" : : "g"(p) : "memory");
}

/* ---- small utilities ---------------------------------------------------------------- */

static void die(const char *msg)
{
    fprintf(stderr, "zkbench: %s\n", msg);
    exit(2);
}

/* Bookkeeping memory straight from the kernel: never from the allocator under test. */
static void *bk_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    if (p == MAP_FAILED)
        die("mmap of bookkeeping memory failed");
    return p;
}

static uint64_t xorshift64s(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi]. */
static uint32_t rnd_uniform(uint64_t *s, uint32_t lo, uint32_t hi)
{
    return lo + (uint32_t)(xorshift64s(s) % (uint64_t)(hi - lo + 1));
}

/* Log-uniform in [lo, hi] without libm: pick an octave uniformly (in 1/256 steps of
 * log2), then interpolate linearly inside it. lo and hi are powers of two. */
static uint32_t rnd_loguniform(uint64_t *s, uint32_t lo, uint32_t hi)
{
    unsigned llo = (unsigned)__builtin_ctz(lo), lhi = (unsigned)__builtin_ctz(hi);
    uint64_t r = xorshift64s(s) % ((uint64_t)(lhi - llo) * 256);
    unsigned oct = llo + (unsigned)(r / 256), frac = (unsigned)(r % 256);
    uint64_t v = (1ULL << oct) + (((1ULL << oct) * frac) >> 8);
    return v > hi ? hi : (uint32_t)v;
}

/*
 * Memory as the process holds it, from /proc/self/status: VmRSS counts anonymous, file
 * and shared small pages (zkmem's fallback shmem included) but not hugetlb pages, which
 * is what zkmem's daemon-granted slabs are; HugetlbPages counts those. VmHWM is the
 * peak of VmRSS only (not ru_maxrss: Linux carries the parent's peak across fork+exec),
 * so the hugetlb part of the peak is the largest HugetlbPages seen at the phase
 * boundaries (hugetlb mappings only grow within a phase: slabs are not unmapped).
 */
struct mem {
    long rss, hwm, hugetlb; /* KiB */
};

/* ZKBENCH_SMAPS=FILE: /proc/self/smaps at the end, to see where the resident memory is
 * (bench/README.md). Through the raw descriptors: no allocation. */
static void copy_smaps(const char *to)
{
    if (!to)
        return;
    int in = open("/proc/self/smaps", O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char buf[4096];
    ssize_t n;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n)
            break;
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
}

static struct mem mem_now(void)
{
    struct mem m = {0, 0, 0};
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    if (!f)
        return m;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmRSS: %ld", &m.rss) == 1 || sscanf(line, "VmHWM: %ld", &m.hwm) == 1)
            continue;
        sscanf(line, "HugetlbPages: %ld", &m.hugetlb);
    }
    fclose(f);
    return m;
}

static long g_hugetlb_max;

/* Resident KiB including hugetlb; tracks the hugetlb high-water mark. */
static long rss_kb(void)
{
    struct mem m = mem_now();
    if (m.hugetlb > g_hugetlb_max)
        g_hugetlb_max = m.hugetlb;
    return m.rss + m.hugetlb;
}

/* ---- per-thread state --------------------------------------------------------------- */

/* SPSC queue of pointers. Each side works on a private cursor and publishes it (release)
 * every Q_PUB items and before it waits, so the shared cache lines move once per batch,
 * not once per object: the cost measured is the allocator's remote free, not the queue. */
#define Q_PUB 32u
struct spsc {
    _Alignas(64) _Atomic uint64_t head;        /* published by the consumer */
    _Alignas(64) _Atomic uint64_t tail;        /* published by the producer */
    _Alignas(64) uint64_t p_tail, p_head_seen; /* producer-private */
    _Alignas(64) uint64_t c_head, c_tail_seen; /* consumer-private */
    _Alignas(64) void *slot[Q_N];
};

struct tstate {
    int tid;
    uint64_t rng;
    uint64_t ops;    /* this thread's share */
    uint32_t *sizes; /* SZ_N precomputed sizes */
    uint32_t *idx;   /* IDX_N precomputed slot indices (live100k) */
    void **slots;    /* live set */
    uint32_t *slot_sz;
    size_t nslots, head;
    uint64_t live_bytes; /* requested bytes held after phase 3 */
    struct spsc *q;      /* xthread */
    int role;            /* xthread: 0 producer, 1 consumer */
    uint64_t *samples;   /* latency samples in tsc ticks */
    size_t nsamples, cap;
};

static struct {
    const char *name;
    unsigned threads;
    uint64_t ops;
    uint64_t seed;
    unsigned lat_period;
    pthread_barrier_t bar;
    struct tstate ts[MAX_THREADS];
    uint32_t realloc_steps[128];
    unsigned nrealloc_steps;
    uint64_t tsc_overhead;
} G;

/* ---- the workloads: init / op / fini ------------------------------------------------- */

static void fill_sizes(struct tstate *t, uint32_t lo, uint32_t hi, int logu)
{
    for (uint32_t i = 0; i < SZ_N; i++)
        t->sizes[i] = logu ? rnd_loguniform(&t->rng, lo, hi) : rnd_uniform(&t->rng, lo, hi);
}

/* The timed paths too: a NULL (an exhausted arena, a budget) ends the run with a message
 * instead of a SIGSEGV; the branch is never taken in a measured run. */
static inline void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (unlikely(!p))
        die("malloc failed");
    return p;
}

static void fill_slots(struct tstate *t, size_t n)
{
    t->nslots = n;
    for (size_t i = 0; i < n; i++) {
        uint32_t sz = t->sizes[(i * 7919) & (SZ_N - 1)];
        char *p = xmalloc(sz);
        p[0] = 1;
        t->slots[i] = p;
        t->slot_sz[i] = sz;
    }
}

static void free_slots(struct tstate *t)
{
    for (size_t i = 0; i < t->nslots; i++) {
        free(t->slots[i]);
        t->slots[i] = NULL;
    }
}

/* Requested bytes of the live set, each object written in full first (untimed) so that
 * RSS counts what a program using its memory would: efficiency is then meaningful. */
static uint64_t slots_bytes(const struct tstate *t)
{
    uint64_t b = 0;
    for (size_t i = 0; i < t->nslots; i++)
        if (t->slots[i]) {
            memset(t->slots[i], 0x5a, t->slot_sz[i]);
            b += t->slot_sz[i];
        }
    return b;
}

/* pairs */
static inline void op_pairs(struct tstate *t, uint64_t i)
{
    char *p = xmalloc(t->sizes[i & (SZ_N - 1)]);
    p[0] = (char)i;
    escape(p);
    free(p);
}

/* ring10k: free oldest, alloc new */
static inline void op_ring(struct tstate *t, uint64_t i)
{
    size_t h = t->head;
    uint32_t sz = t->sizes[i & (SZ_N - 1)];
    free(t->slots[h]);
    char *p = xmalloc(sz);
    p[0] = (char)i;
    escape(p);
    t->slots[h] = p;
    t->slot_sz[h] = sz;
    t->head = h + 1 == RING_N ? 0 : h + 1;
}

/* live100k and large: random replace */
static inline void op_replace(struct tstate *t, uint64_t i)
{
    uint32_t j = t->idx[i & (IDX_N - 1)];
    uint32_t sz = t->sizes[i & (SZ_N - 1)];
    free(t->slots[j]);
    char *p = xmalloc(sz);
    p[0] = (char)i;
    escape(p);
    t->slots[j] = p;
    t->slot_sz[j] = sz;
}

static inline void op_large(struct tstate *t, uint64_t i)
{
    uint32_t j = (uint32_t)(i % LARGE_N);
    uint32_t sz = t->sizes[i & (SZ_N - 1)];
    free(t->slots[j]);
    char *p = xmalloc(sz);
    p[0] = (char)i;
    p[sz - 1] = (char)i; /* first and last page */
    escape(p);
    t->slots[j] = p;
    t->slot_sz[j] = sz;
}

/* realloc: slots[0] is the buffer, head the step index */
static inline void op_realloc(struct tstate *t, uint64_t i)
{
    size_t k = t->head + 1;
    if (unlikely(k == G.nrealloc_steps)) {
        free(t->slots[0]);
        t->slots[0] = NULL;
        k = 0;
    }
    uint32_t sz = G.realloc_steps[k];
    char *p = realloc(t->slots[0], sz);
    if (unlikely(!p))
        die("realloc failed");
    p[sz - 1] = (char)i;
    escape(p);
    t->slots[0] = p;
    t->slot_sz[0] = sz;
    t->head = k;
}

/* touch: slots[0..63] is the batch */
static inline void op_touch(struct tstate *t, uint64_t i)
{
    uint32_t sz = t->sizes[i & (SZ_N - 1)];
    char *p = xmalloc(sz);
    memset(p, (int)i, sz);
    escape(p);
    size_t h = t->head;
    t->slots[h] = p;
    if (++h == TOUCH_N) {
        for (size_t k = 0; k < TOUCH_N; k++)
            free(t->slots[k]);
        h = 0;
    }
    t->head = h;
}

/* plan: batches of 32 allocations, then 32 frees */
static inline void op_plan(struct tstate *t, uint64_t i)
{
    char *p = xmalloc(t->sizes[i & (SZ_N - 1)]);
    p[0] = (char)i;
    escape(p);
    size_t h = t->head;
    t->slots[h] = p;
    if (++h == PLAN_BATCH) {
        for (size_t k = 0; k < PLAN_BATCH; k++)
            free(t->slots[k]);
        h = 0;
    }
    t->head = h;
}

/* xthread: producer and consumer on an SPSC queue of pointers. A side that waits spins
 * with pause and yields the CPU every 256 spins: with 2 CPUs shared with anything else,
 * pure spinning can hold the CPU the other side needs for a whole time slice. */
static inline void spin_wait(unsigned *spins)
{
    if ((++*spins & 255) == 0)
        sched_yield();
    else
        _mm_pause();
}

static inline void q_push(struct spsc *q, void *p)
{
    uint64_t t = q->p_tail;
    if (unlikely(t - q->p_head_seen >= Q_N)) {
        unsigned spins = 0;
        atomic_store_explicit(&q->tail, t, memory_order_release);
        while (t - (q->p_head_seen = atomic_load_explicit(&q->head, memory_order_acquire)) >= Q_N)
            spin_wait(&spins);
    }
    q->slot[t & (Q_N - 1)] = p;
    q->p_tail = ++t;
    if ((t & (Q_PUB - 1)) == 0)
        atomic_store_explicit(&q->tail, t, memory_order_release);
}

static void q_flush(struct spsc *q)
{
    atomic_store_explicit(&q->tail, q->p_tail, memory_order_release);
}

static inline void *q_pop(struct spsc *q)
{
    uint64_t h = q->c_head;
    if (unlikely(h == q->c_tail_seen)) {
        unsigned spins = 0;
        atomic_store_explicit(&q->head, h, memory_order_release);
        while ((q->c_tail_seen = atomic_load_explicit(&q->tail, memory_order_acquire)) == h)
            spin_wait(&spins);
    }
    void *p = q->slot[h & (Q_N - 1)];
    q->c_head = ++h;
    if ((h & (Q_PUB - 1)) == 0)
        atomic_store_explicit(&q->head, h, memory_order_release);
    return p;
}

static void xthread_loop(struct tstate *t, uint64_t n, unsigned period)
{
    uint64_t mask = period ? period - 1 : UINT64_MAX;
    if (t->role == 0) {
        for (uint64_t i = 0; i < n; i++) {
            char *p;
            if (period && (i & mask) == 0 && t->nsamples < t->cap) {
                uint64_t a = tsc();
                p = xmalloc(t->sizes[i & (SZ_N - 1)]);
                uint64_t b = tsc();
                t->samples[t->nsamples++] = b - a;
            } else {
                p = xmalloc(t->sizes[i & (SZ_N - 1)]);
            }
            p[0] = (char)i;
            q_push(t->q, p);
        }
        q_flush(t->q);
    } else {
        for (uint64_t i = 0; i < n; i++) {
            void *p = q_pop(t->q);
            if (period && (i & mask) == 0 && t->nsamples < t->cap) {
                uint64_t a = tsc();
                free(p);
                uint64_t b = tsc();
                t->samples[t->nsamples++] = b - a;
            } else {
                free(p);
            }
        }
    }
}

/* ---- workload table and generic loops ----------------------------------------------- */

enum wl { WL_PAIRS, WL_RING, WL_LIVE, WL_LARGE, WL_XTHREAD, WL_REALLOC, WL_TOUCH, WL_PLAN };

static const struct {
    const char *name;
    uint64_t default_ops;
    unsigned lat_period;
} wl_table[] = {
    [WL_PAIRS] = {"pairs", 20000000, 256},    [WL_RING] = {"ring10k", 10000000, 256},
    [WL_LIVE] = {"live100k", 5000000, 256},   [WL_LARGE] = {"large", 100000, 16},
    [WL_XTHREAD] = {"xthread", 1000000, 256}, [WL_REALLOC] = {"realloc", 400000, 16},
    [WL_TOUCH] = {"touch", 300000, 16},       [WL_PLAN] = {"plan", 20000000, 256},
};
#define WL_COUNT (sizeof(wl_table) / sizeof(wl_table[0]))
static enum wl W;

/* One generic loop per op function; always_inline so the op is inlined into it. */
#define LOOPS(fn)                                                                                  \
    static void run_##fn(struct tstate *t, uint64_t base, uint64_t n)                              \
    {                                                                                              \
        for (uint64_t i = base; i < base + n; i++)                                                 \
            op_##fn(t, i);                                                                         \
    }                                                                                              \
    static void lat_##fn(struct tstate *t, uint64_t base, uint64_t n, unsigned period)             \
    {                                                                                              \
        for (uint64_t i = base; i < base + n; i++) {                                               \
            if (unlikely((i & (period - 1)) == 0) && t->nsamples < t->cap) {                       \
                uint64_t a = tsc();                                                                \
                op_##fn(t, i);                                                                     \
                uint64_t b = tsc();                                                                \
                t->samples[t->nsamples++] = b - a;                                                 \
            } else {                                                                               \
                op_##fn(t, i);                                                                     \
            }                                                                                      \
        }                                                                                          \
    }
LOOPS(pairs)
LOOPS(ring)
LOOPS(replace)
LOOPS(large)
LOOPS(realloc)
LOOPS(touch)
LOOPS(plan)

static void run_ops(struct tstate *t, uint64_t base, uint64_t n, unsigned period)
{
#define DISPATCH(fn)                                                                               \
    do {                                                                                           \
        if (period)                                                                                \
            lat_##fn(t, base, n, period);                                                          \
        else                                                                                       \
            run_##fn(t, base, n);                                                                  \
    } while (0)
    switch (W) {
    case WL_PAIRS:
        DISPATCH(pairs);
        break;
    case WL_RING:
        DISPATCH(ring);
        break;
    case WL_LIVE:
        DISPATCH(replace);
        break;
    case WL_LARGE:
        DISPATCH(large);
        break;
    case WL_REALLOC:
        DISPATCH(realloc);
        break;
    case WL_TOUCH:
        DISPATCH(touch);
        break;
    case WL_PLAN:
        DISPATCH(plan);
        break;
    case WL_XTHREAD:
        xthread_loop(t, n, period);
        break;
    }
#undef DISPATCH
}

/* In the main thread, before the RSS baseline: the bookkeeping arrays (populated, so
 * they are in the baseline) and the precomputed sizes/indices. */
static void wl_prepare(struct tstate *t)
{
    size_t cap = W == WL_LIVE || W == WL_PLAN ? LIVE_N : W == WL_RING ? RING_N : TOUCH_N;
    t->sizes = bk_alloc(SZ_N * sizeof(uint32_t));
    t->slots = bk_alloc(cap * sizeof(void *));
    t->slot_sz = bk_alloc(cap * sizeof(uint32_t));
    switch (W) {
    case WL_PAIRS:
        fill_sizes(t, 16, 64, 0);
        break;
    case WL_RING:
        fill_sizes(t, 16, 256, 0);
        break;
    case WL_LIVE:
        fill_sizes(t, 8, 8192, 1);
        t->idx = bk_alloc(IDX_N * sizeof(uint32_t));
        for (uint32_t i = 0; i < IDX_N; i++)
            t->idx[i] = (uint32_t)(xorshift64s(&t->rng) % LIVE_N);
        break;
    case WL_LARGE:
        fill_sizes(t, 64 << 10, 4 << 20, 1);
        break;
    case WL_XTHREAD:
        fill_sizes(t, 16, 256, 0);
        break;
    case WL_REALLOC:
        break;
    case WL_TOUCH:
        fill_sizes(t, 64, 64 << 10, 1);
        break;
    case WL_PLAN:
        fill_sizes(t, 8, 8192, 1);
        break;
    }
}

/* In the thread, untimed: the initial live set. */
static void wl_init(struct tstate *t)
{
    switch (W) {
    case WL_RING:
        fill_slots(t, RING_N);
        break;
    case WL_LIVE:
        fill_slots(t, LIVE_N);
        break;
    case WL_LARGE:
        fill_slots(t, LARGE_N);
        break;
    case WL_REALLOC:
        t->nslots = 1;
        t->head = G.nrealloc_steps - 1; /* the first op starts a fresh buffer */
        break;
    default:
        break;
    }
}

/* Phase 4 bookkeeping: live requested bytes; plan builds its memory-phase live set. */
static void wl_hold(struct tstate *t)
{
    switch (W) {
    case WL_RING:
    case WL_LIVE:
    case WL_LARGE:
    case WL_REALLOC:
        t->live_bytes = slots_bytes(t);
        break;
    case WL_TOUCH:
        for (size_t k = 0; k < t->head; k++)
            free(t->slots[k]);
        t->head = 0;
        break;
    case WL_PLAN:
        for (size_t k = 0; k < t->head; k++)
            free(t->slots[k]);
        t->head = 0;
        fill_slots(t, LIVE_N);
        t->live_bytes = slots_bytes(t);
        break;
    default:
        break;
    }
}

static void wl_fini(struct tstate *t)
{
    switch (W) {
    case WL_RING:
    case WL_LIVE:
    case WL_LARGE:
    case WL_REALLOC:
    case WL_PLAN:
        free_slots(t);
        break;
    default:
        break;
    }
}

/* ---- threads and phases ------------------------------------------------------------- */

static void flush_own_zkmem_stats(void);

static void *thread_main(void *arg)
{
    struct tstate *t = arg;
    uint64_t lat_ops = t->ops / 4;
    wl_init(t);
    pthread_barrier_wait(&G.bar); /* 1: state built */
    pthread_barrier_wait(&G.bar); /* 2: go */
    run_ops(t, 0, t->ops, 0);
    pthread_barrier_wait(&G.bar); /* 3: throughput done */
    run_ops(t, t->ops, lat_ops, G.lat_period);
    wl_hold(t);
    flush_own_zkmem_stats();
    pthread_barrier_wait(&G.bar); /* 4: latency done, live set held */
    pthread_barrier_wait(&G.bar); /* 5: RSS read */
    wl_fini(t);
    return NULL;
}

/* Which shared object provides `malloc` right now. */
static const char *malloc_provider(void)
{
    Dl_info di;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    if (m && dladdr(m, &di) && di.dli_fname)
        return di.dli_fname;
    return "unknown";
}

static int is_glibc(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    return strncmp(b, "libc.so", 7) == 0 || strncmp(b, "libc-", 5) == 0;
}

static void json_str(const char *k, const char *v)
{
    printf("\"%s\":\"", k);
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            putchar('\\');
        putchar(*v);
    }
    printf("\",");
}

/*
 * zkmem's own figures (cache hit rate, tier distribution), if the allocator in effect
 * exports them. Looked up by name so zkbench never links zkmem and runs under any
 * allocator; only the struct layout comes from proto/zkm_proto.h (header only). The
 * entry point: `int zkm_stats_snapshot(struct zkm_client_stats *ret)`, the process's
 * counters summed over its threads, 0 or -errno. Taken with the live set still held.
 */
typedef int (*stats_fn)(struct zkm_client_stats *);
static struct zkm_client_stats g_zstats;
static int g_have_zstats;

/* zkmem flushes a thread's counts on its own schedule (every few hundred ms) or when the
 * thread calls zkm_stats_snapshot(): each worker does, untimed, before main reads them. */
static void flush_own_zkmem_stats(void)
{
    stats_fn fn = (stats_fn)dlsym(RTLD_DEFAULT, "zkm_stats_snapshot");
    struct zkm_client_stats tmp;
    if (fn)
        fn(&tmp);
}

static void snapshot_zkmem_stats(void)
{
    stats_fn fn = (stats_fn)dlsym(RTLD_DEFAULT, "zkm_stats_snapshot");
    g_have_zstats = fn && fn(&g_zstats) == 0;
}

static void print_zkmem_stats(void)
{
    if (!g_have_zstats)
        return;
    const struct zkm_client_stats *z = &g_zstats;
    printf("\"zkmem_stats\":{");
#define ZKM_X_PRINT(n, d) printf("\"" #n "\":%" PRIu64 ",", z->n);
    ZKM_CLIENT_STATS(ZKM_X_PRINT)
#undef ZKM_X_PRINT
    uint64_t look = z->tcache_hits + z->tcache_misses;
    uint64_t tiers = z->small_allocs + z->medium_allocs + z->large_allocs + z->huge_allocs;
    printf("\"cache_hit_rate\":%.4f,", look ? (double)z->tcache_hits / (double)look : 0.0);
    printf("\"tier_share\":{\"small\":%.4f,\"medium\":%.4f,\"large\":%.4f,\"huge\":%.4f}},",
           tiers ? (double)z->small_allocs / (double)tiers : 0.0,
           tiers ? (double)z->medium_allocs / (double)tiers : 0.0,
           tiers ? (double)z->large_allocs / (double)tiers : 0.0,
           tiers ? (double)z->huge_allocs / (double)tiers : 0.0);
}

static void usage(void)
{
    fprintf(stderr, "usage: zkbench WORKLOAD [--threads N] [--ops N] [--seed S] "
                    "[--lat-period P]\nworkloads:");
    for (size_t i = 0; i < WL_COUNT; i++)
        fprintf(stderr, " %s", wl_table[i].name);
    fprintf(stderr, "\n");
    exit(2);
}

static uint64_t parse_u64(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    G.name = argv[1];
    size_t w;
    for (w = 0; w < WL_COUNT; w++)
        if (strcmp(G.name, wl_table[w].name) == 0)
            break;
    if (w == WL_COUNT)
        usage();
    W = (enum wl)w;
    G.threads = 1;
    G.ops = wl_table[W].default_ops;
    G.seed = 0x5eed2026;
    G.lat_period = wl_table[W].lat_period;
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--threads") == 0)
            G.threads = (unsigned)parse_u64(argv[++i]);
        else if (strcmp(argv[i], "--ops") == 0)
            G.ops = parse_u64(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0)
            G.seed = parse_u64(argv[++i]);
        else if (strcmp(argv[i], "--lat-period") == 0)
            G.lat_period = (unsigned)parse_u64(argv[++i]);
        else
            usage();
    }
    if (G.threads < 1 || G.threads > MAX_THREADS || G.ops < G.threads)
        usage();
    if (G.lat_period == 0 || (G.lat_period & (G.lat_period - 1)))
        die("--lat-period must be a power of two");
    if (W == WL_XTHREAD)
        G.threads = 2; /* one producer, one consumer */

    /* realloc growth steps: 16 B, x1.25 + 16, ..., 1 MiB */
    for (uint64_t s = 16; G.nrealloc_steps < 127; s = s + s / 4 + 16) {
        if (s >= (1u << 20)) {
            G.realloc_steps[G.nrealloc_steps++] = 1u << 20;
            break;
        }
        G.realloc_steps[G.nrealloc_steps++] = (uint32_t)s;
    }

    double ticks_per_ns = tsc_per_ns();
    G.tsc_overhead = tsc_overhead();
    const char *alloc_path = malloc_provider();

    struct spsc *q = W == WL_XTHREAD ? bk_alloc(sizeof(*q)) : NULL;
    for (unsigned i = 0; i < G.threads; i++) {
        struct tstate *t = &G.ts[i];
        t->tid = (int)i;
        t->rng = G.seed * 0x9E3779B97F4A7C15ULL + i + 1;
        t->ops = W == WL_XTHREAD ? G.ops : G.ops / G.threads; /* xthread: both move all */
        t->q = q;
        t->role = (int)i;
        t->cap = t->ops / 4 / G.lat_period + 2;
        t->samples = bk_alloc(t->cap * sizeof(uint64_t));
        wl_prepare(t);
    }
    uint64_t total_ops = W == WL_XTHREAD ? G.ts[0].ops : G.ts[0].ops * G.threads;

    long rss_base = rss_kb();
    pthread_barrier_init(&G.bar, NULL, G.threads + 1);
    pthread_t th[MAX_THREADS];
    for (unsigned i = 0; i < G.threads; i++)
        if (pthread_create(&th[i], NULL, thread_main, &G.ts[i]))
            die("pthread_create failed");
    pthread_barrier_wait(&G.bar); /* 1 */
    double t0 = now_s();
    pthread_barrier_wait(&G.bar); /* 2 */
    pthread_barrier_wait(&G.bar); /* 3 */
    double t1 = now_s();
    rss_kb();                     /* hugetlb high-water sample after the throughput pass */
    pthread_barrier_wait(&G.bar); /* 4 */
    long rss_live = rss_kb();
    snapshot_zkmem_stats();
    uint64_t live_bytes = 0;
    for (unsigned i = 0; i < G.threads; i++)
        live_bytes += G.ts[i].live_bytes;
    pthread_barrier_wait(&G.bar); /* 5 */
    for (unsigned i = 0; i < G.threads; i++)
        pthread_join(th[i], NULL);
    int trimmed = 0;
    if (is_glibc(alloc_path)) {
        int (*trim)(size_t) = (int (*)(size_t))dlsym(RTLD_DEFAULT, "malloc_trim");
        if (trim) {
            trim(0);
            trimmed = 1;
        }
    }
    long rss_after = rss_kb();
    long rss_peak = mem_now().hwm + g_hugetlb_max;
    copy_smaps(getenv("ZKBENCH_SMAPS"));
    if (rss_peak < rss_live)
        rss_peak = rss_live;

    /* latency samples of all threads */
    size_t ns = 0;
    for (unsigned i = 0; i < G.threads; i++)
        ns += G.ts[i].nsamples;
    uint64_t *all = bk_alloc((ns + 1) * sizeof(uint64_t));
    size_t k = 0;
    double sum = 0;
    for (unsigned i = 0; i < G.threads; i++)
        for (size_t j = 0; j < G.ts[i].nsamples; j++) {
            uint64_t v = G.ts[i].samples[j];
            v = v > G.tsc_overhead ? v - G.tsc_overhead : 0;
            all[k++] = v;
            sum += (double)v;
        }
    qsort(all, ns, sizeof(uint64_t), tsc_cmp_u64);
#define PCT(p) (ns ? (double)all[(size_t)((double)(ns - 1) * (p))] / ticks_per_ns : 0.0)

    double secs = t1 - t0;
    printf("{");
    json_str("workload", G.name);
    printf("\"threads\":%u,\"ops\":%" PRIu64 ",\"seconds\":%.6f,\"ops_per_sec\":%.1f,", G.threads,
           total_ops, secs, (double)total_ops / secs);
    /* mean per-op time as one thread sees it (throughput pass) */
    printf("\"mean_ns\":%.3f,", secs * 1e9 * (W == WL_XTHREAD ? 1 : G.threads) / total_ops);
    printf("\"lat_samples\":%zu,\"lat_sampled_mean_ns\":%.3f,\"p50_ns\":%.2f,\"p99_ns\":%.2f,"
           "\"p999_ns\":%.2f,",
           ns, ns ? sum / (double)ns / ticks_per_ns : 0.0, PCT(0.50), PCT(0.99), PCT(0.999));
    printf("\"rss_base_kb\":%ld,\"rss_live_kb\":%ld,\"rss_peak_kb\":%ld,\"rss_after_free_kb\":%ld,"
           "\"malloc_trim\":%s,",
           rss_base, rss_live, rss_peak, rss_after, trimmed ? "true" : "false");
    printf("\"hugetlb_peak_kb\":%ld,\"live_bytes\":%" PRIu64 ",", g_hugetlb_max, live_bytes);
    if (live_bytes >= (1u << 20) && rss_live > rss_base)
        printf("\"mem_efficiency\":%.4f,",
               (double)live_bytes / 1024.0 / (double)(rss_live - rss_base));
    else
        printf("\"mem_efficiency\":null,");
    print_zkmem_stats();
    printf("\"seed\":%" PRIu64 ",", G.seed);
    json_str("allocator", alloc_path);
    printf("\"tsc_per_ns\":%.4f}\n", ticks_per_ns);
    return 0;
}
