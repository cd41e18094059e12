/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - the allocator's process-level parts: lazy init, config and modes, size-class
 * tables, thread heaps (creation, exit), the generic allocation path behind the inline
 * fast paths, huge objects (whole slabs, direct mappings), statistics and fork.
 *
 * Init is lazy and recursion-proof: the first slow-path call CASes state 0 -> 1, builds
 * the tables, reads ZKMEM_* (no C heap, no stdio), reserves the metadata arrays and
 * registers the pthread key (thread exit) and the atfork handlers, then publishes
 * state 2 (release). A call that re-enters malloc from inside init on the same thread
 * (pthread_atfork may allocate) is served from a static bootstrap buffer whose blocks
 * are recognised and never freed; other threads spin until state 2.
 * If the environment is not there yet (a preload's first malloc runs before libc set
 * `environ`), defaults are used and the config is read again at the next slow path.
 */
#include "alloc.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "zkm_config.h"

extern char **environ;

struct zkm_globals zkm__g;
struct zkm_count_shard zkm__counters[ZKM_COUNT_SHARDS];
/* fast_max 0: everything goes to the slow path */
struct zkm_heap zkm__heap_empty;
__thread struct zkm_heap *zkm__tls_heap __attribute__((tls_model("initial-exec"))) =
    &zkm__heap_empty;
__thread struct zkm_heap *zkm__tls_owner __attribute__((tls_model("initial-exec"))) =
    ZKM_OWNER_NONE;
static __thread int tls_in_init __attribute__((tls_model("initial-exec")));

static pthread_key_t g_key;

/* ---- bootstrap buffer (re-entry during init only) ------------------------------------- */

#define BOOT_SIZE (64 * 1024)
static _Alignas(64) uint8_t g_boot[BOOT_SIZE];
static _Atomic size_t g_boot_used;

static void *boot_alloc(size_t n)
{
    size_t need = 16 + ((n + 15) & ~(size_t)15);
    size_t off = atomic_fetch_add_explicit(&g_boot_used, need, memory_order_relaxed);
    if (n > BOOT_SIZE || off + need > BOOT_SIZE)
        return NULL;
    *(size_t *)(g_boot + off) = n;
    return g_boot + off + 16;
}

bool zkm__in_boot(const void *p)
{
    return (const uint8_t *)p >= g_boot && (const uint8_t *)p < g_boot + BOOT_SIZE;
}

size_t zkm__boot_usable(const void *p)
{
    return *(const size_t *)((const uint8_t *)p - 16);
}

void zkm__assert_fail(const char *expr, const char *file, int line)
{
    char buf[512];
    int n = 0;
    const char *parts[] = {"zkmem: assertion failed: ", expr, " at ", file, "\n"};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        for (const char *c = parts[i]; *c && n < (int)sizeof(buf) - 1; c++)
            buf[n++] = *c;
    (void)line;
    ssize_t r = write(2, buf, (size_t)n);
    (void)r;
    abort();
}

void zkm__alloc_counters(struct zkm_alloc_counters *ret)
{
    uint64_t *dst = (uint64_t *)ret;
    memset(ret, 0, sizeof(*ret));
    for (unsigned k = 0; k < ZKM_COUNT_SHARDS; k++) {
        const _Atomic uint64_t *src = (const _Atomic uint64_t *)&zkm__counters[k].c;
        for (size_t i = 0; i < sizeof(*ret) / sizeof(uint64_t); i++)
            dst[i] += atomic_load_explicit(&src[i], memory_order_relaxed);
    }
}

/* ---- classes and config ----------------------------------------------------------------- */

/* The c-th regular class. */
static size_t class_size_calc(unsigned c)
{
    if (c == 0)
        return 8;
    if (c <= 8)
        return 16u * c;
    unsigned k = 7 + (c - 9) / 8, sub = (c - 9) % 8;
    return ((size_t)1 << k) + ((size_t)(sub + 1) << (k - 3));
}

/* The regular classes with the header classes (alloc.h) in their places. */
static void classes_init(void)
{
#define HDR_CLASS(e) (((uint32_t)512 << (e)) + 16) /* 2^k + 16, k = 9 + e */
    unsigned e = 0, c = 0;
    for (unsigned r = 0; c < ZKM_NCLASS; r++) {
        size_t bs = class_size_calc(r);
        if (e < ZKM_HDR_CLASSES && HDR_CLASS(e) < bs) {
            zkm__g.class_size[c++] = HDR_CLASS(e);
            e++;
        }
        zkm__g.class_size[c++] = (uint32_t)bs;
    }
    _Static_assert(HDR_CLASS(ZKM_HDR_CLASSES - 1) < ZKM_TABLE_MAX, "header classes in the table");
#undef HDR_CLASS
    c = 0;
    for (unsigned i = 0; i <= ZKM_TABLE_MAX / 8; i++) {
        size_t n = (size_t)i * 8;
        while (zkm__g.class_size[c] < n)
            c++;
        zkm__g.class_of8[i] = (uint8_t)c;
    }
    /* the rings (alloc.h point 9): classes up to ZKM_TABLE_MAX (capacities: below) */
    zkm_assert_internal(zkm__g.class_size[ZKM_RING_CLASSES - 1] == ZKM_TABLE_MAX);
}

/* A class's ring capacity (alloc.h point 9): ZKM_RING_BYTES of blocks, within
 * [ZKM_RING_CAP_MIN, ZKM_RING_SLOTS], and no more than the thread-cache target of its tier
 * (tcache_small, tcache_medium: objects per class in a thread cache); a ring that could
 * hold no more than malloc leaves in it (ZKM_RING_MIN) is off (0). */
static size_t ring_cap_for(size_t bs, size_t target)
{
    size_t cap = ZKM_RING_BYTES / bs;
    if (cap < ZKM_RING_CAP_MIN)
        cap = ZKM_RING_CAP_MIN;
    if (cap > ZKM_RING_SLOTS)
        cap = ZKM_RING_SLOTS;
    if (cap > target)
        cap = target;
    return cap > ZKM_RING_MIN ? cap : 0;
}

/* Units of a class's page: room for the thread-cache target, at least one block; and the
 * class's ring capacity. Rerun when the daemon's tunables change the targets: pages made
 * after it have the new size, existing pages keep theirs, and a heap's ring takes the new
 * capacity at the class's next page refill (relaxed stores; page_new loads one entry). */
static void classes_size_pages(void)
{
    for (unsigned c = 0; c < ZKM_NCLASS; c++) {
        size_t bs = zkm__g.class_size[c];
        size_t target = bs <= zkm__g.small_threshold
                            ? __atomic_load_n(&zkm__g.tcache_small, __ATOMIC_RELAXED)
                            : __atomic_load_n(&zkm__g.tcache_medium, __ATOMIC_RELAXED);
        if (c < ZKM_RING_CLASSES)
            __atomic_store_n(&zkm__g.ring_cap[c + 1], (uint8_t)ring_cap_for(bs, target),
                             __ATOMIC_RELAXED);
        size_t units = (target * bs + ZKM_UNIT_SIZE - 1) >> ZKM_UNIT_SHIFT;
        if (units > 16)
            units = 16;
        size_t min = (bs + ZKM_UNIT_SIZE - 1) >> ZKM_UNIT_SHIFT;
        if (units < min)
            units = min;
        if (units < 1)
            units = 1;
        __atomic_store_n(&zkm__g.class_units[c], (uint16_t)units, __ATOMIC_RELAXED);
    }
}

static void config_load(void)
{
    static struct zkm_config cfg; /* under state 1 or from one slow path at a time: see below */
    const char *bad = NULL;
    zkm_config_defaults(&cfg);
    if (environ) {
        zkm_config_from_env(&cfg, environ, &bad);
        zkm__g.cfg_final = 1;
        const char *m = NULL;
        int tc = 0;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "ZKMEM_MODE=", 11) == 0)
                m = *e;
            if (strncmp(*e, "ZKMEM_TCACHE_SMALL=", 19) == 0 ||
                strncmp(*e, "ZKMEM_TCACHE_MEDIUM=", 20) == 0)
                tc = 1;
        }
        zkm__g.mode_from_env = m != NULL;
        zkm__g.tcache_from_env = tc;
    }
    size_t large = cfg.large_threshold, small = cfg.small_threshold;
    if (large > ZKM_CLASS_MAX_SIZE)
        large = ZKM_CLASS_MAX_SIZE;
    if (small > large)
        small = large;
    zkm__g.small_threshold = small;
    zkm__g.large_threshold = large;
    zkm__g.fast_max = large < ZKM_TABLE_MAX ? large : ZKM_TABLE_MAX;
    __atomic_store_n(&zkm__g.tcache_small, (uint32_t)cfg.tcache_small, __ATOMIC_RELAXED);
    __atomic_store_n(&zkm__g.tcache_medium, (uint32_t)cfg.tcache_medium, __ATOMIC_RELAXED);
    zkm__g.mode = cfg.mode;
    classes_size_pages();
}

static void thread_exit(void *arg);
static void fork_prepare(void)
{
    zkm__source_atfork_prepare();
}
static void fork_parent(void)
{
    zkm__source_atfork_parent();
}
static void fork_child(void)
{
    zkm__source_atfork_child();
}

/* 0, or -ENOMEM when the metadata arrays cannot be reserved (no mapping left): the state
 * goes back to 0 and the next call tries again. Re-entry during init returns 0 with the
 * state still 1 (the caller checks tls_in_init). */
int zkm__init(void)
{
    for (;;) {
        int st = atomic_load_explicit(&zkm__g.state, memory_order_acquire);
        if (zkm_likely(st == 2))
            return 0;
        if (tls_in_init)
            return 0;
        if (st == 1) {
            sched_yield();
            continue;
        }
        int expect = 0;
        if (!atomic_compare_exchange_strong(&zkm__g.state, &expect, 1))
            continue;
        tls_in_init = 1;
        classes_init();
        config_load();
        int err = zkm__pool_init();
        if (err) {
            tls_in_init = 0;
            atomic_store_explicit(&zkm__g.state, 0, memory_order_release);
            return err;
        }
        pthread_key_create(&g_key, thread_exit);
        pthread_atfork(fork_prepare, fork_parent, fork_child);
        tls_in_init = 0;
        atomic_store_explicit(&zkm__g.state, 2, memory_order_release);
        return 0;
    }
}

/* ---- thread heaps ------------------------------------------------------------------------- */

static uint32_t tun_load(const uint32_t *f)
{
    return __atomic_load_n(f, __ATOMIC_RELAXED);
}

/*
 * The daemon's tunables, process-wide (every thread that sees a new gen applies the same
 * values; the first one does the work): the L2 cap (0: ZKM_L2_CAP_DEFAULT; a lower cap
 * trims L2 now) and the thread-cache targets that size new pages (unless ZKMEM_TCACHE_* set them).
 */
static void tun_apply(const struct zkm_tunables *t)
{
    uint32_t cap = tun_load(&t->l2_cap);
    zkm__pool_set_l2_cap(cap ? cap : ZKM_L2_CAP_DEFAULT);
    uint32_t small = tun_load(&t->tcache_cap[0]), medium = tun_load(&t->tcache_cap[1]);
    if (!zkm__g.tcache_from_env &&
        (__atomic_load_n(&zkm__g.tcache_small, __ATOMIC_RELAXED) != small ||
         __atomic_load_n(&zkm__g.tcache_medium, __ATOMIC_RELAXED) != medium)) {
        __atomic_store_n(&zkm__g.tcache_small, small, __ATOMIC_RELAXED);
        __atomic_store_n(&zkm__g.tcache_medium, medium, __ATOMIC_RELAXED);
        classes_size_pages();
    }
}

/* Ticks (alloc.h, point 8): every ZKM_TICK_FREES inline frees into a page. Every
 * TICK_CLOCK_EVERY ticks (about 1024 frees) the counting modes read the clock (a flush
 * when FLUSH_NS passed), and monitoring times the next malloc and free. */
#define TICK_CLOCK_EVERY 4u

static void heap_apply_mode(struct zkm_heap *h)
{
    uint32_t mode = zkm__g.mode;
    const struct zkm_tunables *t = zkm__source_tunables();
    if (t) {
        uint32_t gen = atomic_load_explicit((_Atomic uint32_t *)&t->gen, memory_order_acquire);
        h->tun_gen = gen;
        if (gen && !zkm__g.mode_from_env && t->mode <= 2)
            mode = t->mode;
        if (gen)
            tun_apply(t);
    }
    zkm__heap_fold(h); /* what was counted so far belongs to the old mode */
    h->counting = mode;
    h->sampling = 0;
    h->fast_max = zkm__g.fast_max;
    zkm__tls_owner = h;
}

struct zkm_heap *zkm__heap_get(void)
{
    struct zkm_heap *h = zkm__tls_heap;
    if (zkm_likely(h != &zkm__heap_empty))
        return h;
    if (tls_in_init)
        return NULL;
    if (zkm__init() != 0 || tls_in_init)
        return NULL;
    h = zkm__pool_heap_new();
    if (!h)
        return NULL;
    zkm__heap_reset(h, zkm__source_local_node());
    zkm__tls_heap = h;
    heap_apply_mode(h);
    pthread_setspecific(g_key, h);
    return h;
}

static void thread_exit(void *arg)
{
    struct zkm_heap *h = arg;
    if (!h || h == &zkm__heap_empty)
        return;
    zkm__stats_flush(h);
    zkm__heap_abandon(h);
    if (zkm__tls_heap == h) {
        zkm__tls_heap = &zkm__heap_empty;
        zkm__tls_owner = ZKM_OWNER_NONE;
    }
    zkm__pool_heap_free(h);
}

/* Slow-path housekeeping (every 64th slow call): late config, daemon tunables, a stats
 * flush when it is due, kept direct mappings unused for 10 ms, the occupancy table and
 * drain list (at most every 50 ms); every 16th time, empty current pages that keep an
 * otherwise empty slab (a load per class). */
static void stats_flush_if_due(struct zkm_heap *h, uint64_t now);
static uint64_t now_ns(void);

static void heap_refresh(struct zkm_heap *h)
{
    h->next_refresh = h->slow_calls + 64;
    if (zkm_unlikely(!zkm__g.cfg_final) && environ) {
        config_load(); /* benign race: every writer stores the same values */
        heap_apply_mode(h);
    }
    const struct zkm_tunables *t = zkm__source_tunables();
    if (t && atomic_load_explicit((_Atomic uint32_t *)&t->gen, memory_order_relaxed) != h->tun_gen)
        heap_apply_mode(h);
    uint64_t now = now_ns(); /* one clock read for the three timed chores */
    if (h->counting)
        stats_flush_if_due(h, now);
    zkm__heap_flush_remote(h);
    zkm__dcache_purge(now); /* 16 slots' loads */
    zkm__heap_lcache_refresh(h);
    zkm__heap_flush_sparse(h);
    zkm__pool_drain_sync(now, false);
    if (zkm__pool_drain_on())
        zkm__ring_flush_all(h, true); /* a ring must not keep a drained slab */
    if (++h->refreshes % 16 == 0)
        zkm__heap_trim(h);
}

/* ---- statistics ------------------------------------------------------------------------------
 *
 * A heap counts into its own fields (owner only, no atomics; alloc.h point 8). A flush
 * folds the inline per-class counts into the heap's slow-path counts, adds those to the
 * process totals (relaxed atomics, process memory) and, in the counting modes, publishes
 * the totals as absolute values into the control block of the current session (relaxed
 * stores): a block that changed under us (first connect, reconnect, fork child) is right
 * from its next flush, and bytes_in_use never goes below zero because frees were flushed
 * into a newer block than the allocations. */
#define FLUSH_NS     250000000ull /* a thread that keeps allocating is at most this stale */
#define GENERIC_TICK 256u         /* generic allocations between clock reads */

static struct zkm_client_stats g_totals;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void total_add(uint64_t *f, uint64_t v)
{
    if (v)
        atomic_fetch_add_explicit((_Atomic uint64_t *)f, v, memory_order_relaxed);
}

static inline uint64_t total_get(const uint64_t *f)
{
    return atomic_load_explicit((const _Atomic uint64_t *)f, memory_order_relaxed);
}

/* The allocator's counters (everything but the slab counts pool.c keeps) into ret. */
static void totals_read(struct zkm_client_stats *ret)
{
    ret->alloc_ops = total_get(&g_totals.alloc_ops);
    ret->free_ops = total_get(&g_totals.free_ops);
    int64_t bytes = (int64_t)total_get(&g_totals.bytes_in_use);
    ret->bytes_in_use = bytes > 0 ? (uint64_t)bytes : 0; /* other threads' frees flushed first */
    ret->tcache_hits = total_get(&g_totals.tcache_hits);
    ret->tcache_misses = total_get(&g_totals.tcache_misses);
    ret->remote_frees = total_get(&g_totals.remote_frees);
    ret->small_allocs = total_get(&g_totals.small_allocs);
    ret->medium_allocs = total_get(&g_totals.medium_allocs);
    ret->large_allocs = total_get(&g_totals.large_allocs);
    ret->huge_allocs = total_get(&g_totals.huge_allocs);
    for (int b = 0; b < 16; b++)
        ret->lat_hist[b] = total_get(&g_totals.lat_hist[b]);
}

static void totals_publish(void)
{
    struct zkm_client_stats *st = zkm__source_stats(), t;
    totals_read(&t);
#define PUT(f) atomic_store_explicit((_Atomic uint64_t *)&st->f, t.f, memory_order_relaxed)
    PUT(alloc_ops);
    PUT(free_ops);
    PUT(bytes_in_use);
    PUT(tcache_hits);
    PUT(tcache_misses);
    PUT(remote_frees);
    PUT(small_allocs);
    PUT(medium_allocs);
    PUT(large_allocs);
    PUT(huge_allocs);
    for (int b = 0; b < 16; b++)
        PUT(lat_hist[b]);
#undef PUT
    zkm__pool_publish(); /* the slab counts */
}

void zkm__stats_flush(struct zkm_heap *h)
{
    zkm__heap_flush_sparse(h);
    zkm__heap_fold(h); /* the inline counts */
    total_add(&g_totals.alloc_ops, h->c_alloc);
    total_add(&g_totals.free_ops, h->c_free);
    total_add(&g_totals.tcache_misses, h->c_miss);
    total_add(&g_totals.tcache_hits, h->c_alloc > h->c_miss ? h->c_alloc - h->c_miss : 0);
    total_add(&g_totals.remote_frees, h->c_remote);
    if (h->c_remote)
        ZKM_COUNT(remote_frees, h->c_remote); /* the test counters, in bulk */
    total_add(&g_totals.small_allocs, h->c_tier[ZKM_TIER_SMALL]);
    total_add(&g_totals.medium_allocs, h->c_tier[ZKM_TIER_MEDIUM]);
    total_add(&g_totals.large_allocs, h->c_tier[ZKM_TIER_LARGE]);
    total_add(&g_totals.huge_allocs, h->c_tier[ZKM_TIER_HUGE]);
    total_add(&g_totals.bytes_in_use, (uint64_t)h->c_bytes);
    h->c_alloc = h->c_free = h->c_miss = h->c_remote = 0;
    for (int t = 0; t < ZKM_NTIER; t++)
        h->c_tier[t] = 0;
    h->c_bytes = 0;
    if (h->counting) {
        h->flush_ns = now_ns();
        totals_publish();
    }
}

/* Counting modes: flush when FLUSH_NS passed since the last flush. */
static void stats_flush_if_due(struct zkm_heap *h, uint64_t now)
{
    if (now - h->flush_ns >= FLUSH_NS)
        zkm__stats_flush(h);
}

static void stats_maybe_flush(struct zkm_heap *h)
{
    if (h->counting) /* the clock only in the modes that publish */
        stats_flush_if_due(h, now_ns());
}

ZKM_API int zkm_stats_snapshot(struct zkm_client_stats *ret)
{
    if (!ret)
        return -EINVAL;
    struct zkm_heap *h = zkm__tls_heap;
    if (h != &zkm__heap_empty) {
        zkm__heap_flush_remote(h);
        zkm__stats_flush(h);
    }
    zkm__pool_drain_sync(now_ns(), true);
    struct zkm_client_stats t;
    memset(&t, 0, sizeof(t));
    totals_read(&t);
    zkm__pool_stats(&t);
    struct zkm_source_counters sc;
    zkm__source_counters(&sc);
    t.local_fallback_bytes = sc.local_slabs * ZKM_SOURCE_SLAB;
    t.start_bytes = sc.start_slabs * ZKM_SOURCE_SLAB;
    *ret = t;
    return 0;
}

static void lat_record(uint64_t ns)
{
    unsigned b = ns ? 63u - (unsigned)__builtin_clzll(ns) : 0;
    if (b > 15)
        b = 15;
    atomic_fetch_add_explicit((_Atomic uint64_t *)&g_totals.lat_hist[b], 1, memory_order_relaxed);
}

/* Every TICK_CLOCK_EVERY ticks, in the counting modes: a monitoring sample, and the clock. */
static ZKM_NOINLINE void tick_clock(struct zkm_heap *h)
{
    if (h->counting == 2) { /* time the next two */
        h->sampling = 3;
        h->fast_max = 0;
        zkm__tls_owner = ZKM_OWNER_NONE;
    }
    stats_flush_if_due(h, now_ns());
}

/* The inline free of a block of pg took the page's tick count to 0 (ZKM_TICK_FREES frees
 * since the last fold): fold the page, then the rest of that free (used, the notify). In
 * every mode; high_performance publishes nothing and reads no clock. */
void zkm__free_tick(struct zkm_heap *h, struct zkm_page *pg)
{
    uint32_t left = --pg->left; /* first: the fold reads used */
    zkm__page_fold(h, pg);
    if (++h->ticks % TICK_CLOCK_EVERY == 0 && h->counting)
        tick_clock(h);
    if (left == 0) /* used reached notify_at */
        zkm__page_notify(h, pg);
}

/* ZKM_RING_TICK pushes into ring r since its last tick: fold it; during a drain, give back
 * the blocks of slabs being drained; then the clock as zkm__free_tick does. */
void zkm__ring_tick(struct zkm_heap *h, unsigned r)
{
    zkm__ring_fold(h, r);
    if (zkm_unlikely(zkm__pool_drain_on()))
        zkm__ring_flush_all(h, true);
    if (++h->ticks % TICK_CLOCK_EVERY == 0 && h->counting)
        tick_clock(h);
}

/* ---- huge objects ---------------------------------------------------------------------------- */

#define usable_of zkm__usable_of
size_t zkm__usable_of(struct zkm_shdr *s, const void *p)
{
    if (s->kind != ZKM_SLAB_PAGES)
        return s->obj_size;
    return zkm__class_usable(s, zkm__page_of(s, p), p);
}

/*
 * A direct mapping (an object above a slab) is not advised MADV_HUGEPAGE: the system's THP
 * setting decides, as for every other allocator's big mappings. zkmem's hugepages are the
 * daemon's slabs; THP here made every touched 2 MiB of a sparsely written buffer resident
 * and zeroed (zkbench large, objects up to 4 MiB written at both ends: 3.1-5.6 -> 6.8-7.1
 * Mops/s, RSS peak 29-35 -> 17 MiB), and its direct compaction once stalled a 256 MiB fill
 * for 612 ms. What it bought: a fresh 64 MiB buffer filled in 80 ms instead of 98-102, and
 * read back about 10% faster (fewer TLB misses).
 *
 * Freed direct mappings are kept in a few slots for reuse (a fresh mapping costs three
 * syscalls and a fault per touched page). A slot holds the
 * header pointer; its length sits beside it so that a taker decides without reading a
 * mapping it does not own yet: only the CAS winner dereferences the header.
 *
 * A kept mapping is resident memory nobody uses: one that nobody took for DCACHE_DECAY_NS
 * is unmapped by the next heap refresh (every 64th slow path) of any thread. A program
 * that churns big objects takes them again well within 10 ms (zkbench large: 10-11 mappings
 * made in 100,000 operations, with or without the decay), and one that freed a big buffer
 * and went on with other work no longer carries it at its peak (sqlite's 8 MiB sorter
 * buffer was 8 MiB of a 94 MiB peak).
 *
 * A taker takes the kept mapping closest above its size (at most twice it), from its own
 * region first: the pages past the new object's end stay resident from earlier use, and
 * with the first fit in range they piled up (zkbench large, objects of 2-4 MiB written at
 * both ends: each kept mapping about 1 MiB resident; 4 runs, RSS peak 15.2-15.9 MiB with
 * the first fit, 12.7 with the closest, throughput 3.0-6.0 vs 6.0-6.5 Mops/s, 8 mappings
 * made either way). Taking only mappings up to 1.25 times the size: 91-150 mappings made,
 * 12.3-12.5 MiB, 4.8-5.5 Mops/s.
 */
#define DCACHE_SLOTS    16
#define DCACHE_REGION   4                  /* slots a thread looks at first */
#define DCACHE_MAX      ((size_t)64 << 20) /* larger mappings are unmapped at once */
#define DCACHE_DECAY_NS 10000000ull
#define DCACHE_CLOSE    ((size_t)64 << 10) /* a fit this close ends the search */
/* A slot per cache line, and each thread starts at its own region of 4 (by heap index):
 * threads that churn big objects each mostly reuse their own mappings and touch their own
 * lines. With three shared arrays and a shared count, two threads doing so (zkbench large)
 * spent 28% of their time in dcache_take and dcache_put. */
struct dslot {
    _Alignas(64) _Atomic(struct zkm_shdr *) s;
    _Atomic size_t len;
    _Atomic uint64_t at; /* when the slot was filled (CLOCK_MONOTONIC_COARSE) */
};
static struct dslot g_dcache[DCACHE_SLOTS];

static unsigned dcache_first(void)
{
    return (zkm__tls_heap->idx % (DCACHE_SLOTS / DCACHE_REGION)) * DCACHE_REGION;
}

static uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* no TSC read; a tick of a few ms is fine */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct zkm_shdr *dcache_take(size_t need)
{
    for (int tries = 0; tries < 4; tries++) { /* a lost race: look again */
        struct dslot *best = NULL;
        size_t best_len = SIZE_MAX;
        for (unsigned k = 0, first = dcache_first(); k < DCACHE_SLOTS; k++) {
            struct dslot *d = &g_dcache[(first + k) % DCACHE_SLOTS];
            if (!atomic_load_explicit(&d->s, memory_order_relaxed))
                continue;
            size_t len = atomic_load_explicit(&d->len, memory_order_relaxed);
            if (len < need || len > 2 * need || len >= best_len)
                continue;
            best = d;
            best_len = len;
            if (len - need < DCACHE_CLOSE)
                break;
        }
        if (!best)
            return NULL;
        struct zkm_shdr *s = atomic_load_explicit(&best->s, memory_order_acquire);
        if (s && atomic_compare_exchange_strong_explicit(&best->s, &s, NULL, memory_order_acquire,
                                                         memory_order_relaxed)) {
            if (s->map_len >= need)
                return s;
            munmap(s->map_base, s->map_len); /* the length changed under us */
            ZKM_COUNT(direct_unmaps, 1);
        }
    }
    return NULL;
}

static bool dcache_put(struct zkm_shdr *s)
{
    if (s->map_len > DCACHE_MAX)
        return false;
    uint64_t now = 0;
    for (unsigned k = 0, first = dcache_first(); k < DCACHE_SLOTS; k++) {
        struct dslot *d = &g_dcache[(first + k) % DCACHE_SLOTS];
        struct zkm_shdr *none = NULL;
        if (atomic_load_explicit(&d->s, memory_order_relaxed))
            continue;
        if (!now)
            now = coarse_ns();
        atomic_store_explicit(&d->len, s->map_len, memory_order_relaxed);
        atomic_store_explicit(&d->at, now, memory_order_relaxed);
        if (atomic_compare_exchange_strong_explicit(&d->s, &none, s, memory_order_release,
                                                    memory_order_relaxed))
            return true;
    }
    return false;
}

/* Unmap the kept mappings filled before now - DCACHE_DECAY_NS; returns how many. */
unsigned zkm__dcache_purge(uint64_t now)
{
    unsigned n = 0;
    for (int i = 0; i < DCACHE_SLOTS; i++) {
        struct dslot *d = &g_dcache[i];
        struct zkm_shdr *s = atomic_load_explicit(&d->s, memory_order_relaxed);
        uint64_t at = atomic_load_explicit(&d->at, memory_order_relaxed);
        if (!s || now - at < DCACHE_DECAY_NS || now < at)
            continue;
        if (!atomic_compare_exchange_strong_explicit(&d->s, &s, NULL, memory_order_acquire,
                                                     memory_order_relaxed))
            continue; /* taken, or replaced by a fresh one */
        munmap(s->map_base, s->map_len);
        ZKM_COUNT(direct_unmaps, 1);
        ZKM_COUNT(direct_purged, 1);
        n++;
    }
    return n;
}

static void *direct_map(size_t n, size_t align, bool *ret_zeroed)
{
    size_t a = align < ZKM_HUGE_OFF ? ZKM_HUGE_OFF : align;
    size_t off, len, slack;
    if (a < ZKM_SLAB_SIZE) {
        off = a;
        slack = ZKM_SLAB_SIZE;
    } else {
        off = ZKM_SLAB_SIZE; /* header one slab below the aligned object */
        slack = a + ZKM_SLAB_SIZE;
    }
    if (n > PTRDIFF_MAX - off - slack - 4096)
        return NULL;
    len = (off + n + 4095) & ~(size_t)4095;
    if (a < ZKM_SLAB_SIZE) {
        struct zkm_shdr *s = dcache_take(len);
        if (s) {
            uint8_t *obj = (uint8_t *)s->map_base + off;
            s->obj_size = s->map_len - off;
            zkm__map_set((uintptr_t)obj, 1);
            ZKM_COUNT(direct_reused, 1);
            *ret_zeroed = false;
            return obj;
        }
    }
    uint8_t *raw = mmap(NULL, len + slack, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uint8_t *base, *obj;
    if (a < ZKM_SLAB_SIZE) {
        base = (uint8_t *)(((uintptr_t)raw + ZKM_SLAB_MASK) & ~(uintptr_t)ZKM_SLAB_MASK);
        obj = base + off;
    } else {
        obj = (uint8_t *)(((uintptr_t)raw + ZKM_SLAB_SIZE + a - 1) & ~(uintptr_t)(a - 1));
        base = obj - ZKM_SLAB_SIZE;
    }
    zkm__unmap_outside(raw, len + slack, base, len);
    struct zkm_shdr *s = (struct zkm_shdr *)base;
    s->kind = ZKM_SLAB_DIRECT;
    s->desc = 0;
    atomic_store_explicit(&s->owner, NULL, memory_order_relaxed);
    s->obj_size = len - off;
    s->map_base = base;
    s->map_len = len;
    s->node = -1;
    zkm__map_set((uintptr_t)obj, a < ZKM_SLAB_SIZE ? 1 : 2);
    ZKM_COUNT(direct_maps, 1);
    *ret_zeroed = true;
    return obj;
}

void *zkm__huge_alloc(size_t n, size_t align, int node, bool zero)
{
    bool zeroed = false;
    void *p;
    if (n <= ZKM_HUGE_MAX && align <= ZKM_HUGE_OFF) {
        struct zkm_shdr *s;
        struct zkm_heap *h = zkm__tls_heap;
        if (zkm__pool_huge_get(node >= 0 ? node : h->node, &s, &zeroed) != 0)
            return NULL;
        s->obj_size = ZKM_HUGE_MAX;
        p = (uint8_t *)s + ZKM_HUGE_OFF;
    } else {
        p = direct_map(n, align, &zeroed);
        if (!p)
            return NULL;
    }
    if (zero && !zeroed)
        memset(p, 0, n);
    return p;
}

void zkm__huge_free(struct zkm_shdr *s)
{
    if (s->kind == ZKM_SLAB_HUGE) {
        zkm__pool_slab_put(s);
        return;
    }
    uint8_t *obj = (uint8_t *)s->map_base + (s->map_len - s->obj_size);
    zkm__map_set((uintptr_t)obj, 0);
    if ((uint8_t *)obj - (uint8_t *)s->map_base < (ptrdiff_t)ZKM_SLAB_SIZE && dcache_put(s))
        return;
    munmap(s->map_base, s->map_len);
    ZKM_COUNT(direct_unmaps, 1);
}

/* A DIRECT object's usable size changed in place (realloc): bytes_in_use follows, as a free
 * takes obj_size off. */
static void count_resized(size_t old, size_t now)
{
    struct zkm_heap *h = zkm__tls_heap;
    if (h != &zkm__heap_empty)
        h->c_bytes += (int64_t)now - (int64_t)old;
}

/* A DIRECT object that cannot grow where it is moves without a copy: the kernel moves its
 * pages (and the header in the first one) into a fresh 2 MiB-aligned reservation. With a
 * copy the old pages stayed resident beside the new ones until the kept mapping decayed:
 * sqlite growing one buffer 4 -> 6 -> 10 MiB (compare.py's script) held all three, a
 * VmHWM of 21.7 MiB where glibc, which mremaps its mmapped chunks, peaks at its live set.
 * Objects aligned to 2 MiB or more keep direct_map's placement: they are copied. */
void *zkm__direct_move(struct zkm_shdr *s, void *p, size_t n)
{
    size_t off = s->map_len - s->obj_size;
    if (off >= ZKM_SLAB_SIZE || n > PTRDIFF_MAX - off - ZKM_SLAB_SIZE - 4096)
        return NULL;
    size_t len = (off + n + 4095) & ~(size_t)4095, span = len + ZKM_SLAB_SIZE;
    uint8_t *raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uint8_t *base = (uint8_t *)(((uintptr_t)raw + ZKM_SLAB_MASK) & ~(uintptr_t)ZKM_SLAB_MASK);
    zkm__map_set((uintptr_t)p, 0); /* p is the caller's alone: no other thread looks it up */
    if (mremap(s->map_base, s->map_len, len, MREMAP_MAYMOVE | MREMAP_FIXED, base) == MAP_FAILED) {
        zkm__map_set((uintptr_t)p, 1);
        munmap(raw, span);
        return NULL;
    }
    zkm__unmap_outside(raw, span, base, len);
    s = (struct zkm_shdr *)base;
    count_resized(s->obj_size, len - off);
    s->map_base = base;
    s->map_len = len;
    s->obj_size = len - off;
    uint8_t *obj = base + off;
    zkm__map_set((uintptr_t)obj, 1);
    ZKM_COUNT(direct_moved, 1);
    return obj;
}

/* ---- the generic allocation path ----------------------------------------------------------------
 */

/* *span: the usable bytes when the object is a large span (its units), else left alone. */
static void *alloc_in(struct zkm_heap *h, size_t n, size_t align, int node, bool zero, size_t *span)
{
    if (n == 0)
        n = 1;
    if (node >= 0 && node != h->node) {
        if (node >= zkm__source_nodes())
            node = -1;
    } else {
        node = -1;
    }
    if (node < 0 && n <= zkm__g.large_threshold) {
        unsigned cls = zkm__class_of(n);
        if (align > 8 && cls == 0)
            cls = 1; /* the 8-byte class is only 8-byte aligned */
        if (align > 16) {
            if (align > ZKM_UNIT_SIZE)
                goto large;
            while (cls < ZKM_NCLASS && zkm__class_size(cls) % align != 0)
                cls++;
            if (cls >= ZKM_NCLASS || zkm__class_size(cls) > zkm__g.large_threshold)
                goto large;
        }
        void *p = zkm__heap_alloc_class(h, cls, n, align);
        if (p && zero)
            memset(p, 0, n);
        return p;
    }
large:
    if (n <= ZKM_LARGE_MAX) {
        size_t units = zkm__span_units(n);
        size_t au = align > ZKM_UNIT_SIZE ? align >> ZKM_UNIT_SHIFT : 1;
        if (au + units <= ZKM_UNITS) {
            *span = units << ZKM_UNIT_SHIFT;
            return zkm__heap_alloc_large(h, n, align, node, zero, false);
        }
    }
    return zkm__huge_alloc(n, align, node, zero);
}

/* Slow-path counts of one allocation of n bytes at p (class, large, huge or direct) that holds
 * `usable` bytes; 0 if the caller does not know, and then it is looked up (the slab map, the
 * slab's unit map and the page descriptor: reads a large span's allocation avoids). */
static void count_alloc(struct zkm_heap *h, size_t n, void *p, size_t usable)
{
    h->c_alloc++;
    h->c_tier[zkm__tier_of(n)]++;
    h->c_bytes += (int64_t)(usable ? usable : usable_of(zkm__slab_of(p), p));
    if (zkm_unlikely(++h->generic_calls % GENERIC_TICK == 0))
        stats_maybe_flush(h);
}

/* Everything the inline path does not do. Sets errno on failure. */
void *zkm__alloc_generic(size_t n, size_t align, int node, bool zero)
{
    if (zkm_unlikely(n > PTRDIFF_MAX)) {
        errno = ENOMEM;
        return NULL;
    }
    struct zkm_heap *h = zkm__heap_get();
    if (zkm_unlikely(!h)) {
        void *p = tls_in_init ? boot_alloc(n) : NULL;
        if (!p)
            errno = ENOMEM;
        else if (zero)
            memset(p, 0, n);
        return p;
    }
    if (zkm_unlikely(!zkm__g.cfg_final || h->slow_calls >= h->next_refresh))
        heap_refresh(h);
    size_t span = 0;
    void *p = alloc_in(h, n, align, node, zero, &span);
    if (zkm_likely(p)) {
        count_alloc(h, n, p, span);
        return p;
    }
    zkm__stats_flush(h);
    errno = ENOMEM;
    return NULL;
}

/* realloc's new home for an object growing to n: a span with room to grow in place behind
 * it above large_threshold, and already above half of it (but not below 4 KiB: a span then
 * holds at most 4 times the bytes) -- a block that grew is likely to grow again, and a
 * span grows in place where a class block moves (zkbench realloc: 4 fewer copies of 4 to
 * 8 KiB a cycle, in place up to 16 KiB). Below that, a block for half as much again as n
 * (while that stays below the span line): growth by small steps moves through a third as
 * many classes, each move a copy and, for a class the thread had not used, a page touched
 * (zkbench realloc, steps of 1.25x from 16 B: 84 -> 108 Mops/s, RSS peak 2392 -> 2356 kB
 * on one thread and 3104 -> 3032 on two; the python and sqlite workloads' peaks unchanged).
 * A grown object may hold up to 1.5 times its size; one allocated once holds what it asked
 * for. */
#define GROW_SPAN_MIN (ZKM_UNIT_SIZE / 4)
void *zkm__alloc_growing(size_t n)
{
    struct zkm_heap *h = zkm__tls_heap;
    size_t large = zkm__g.large_threshold;
    size_t from = large / 2 > GROW_SPAN_MIN ? large / 2 : GROW_SPAN_MIN;
    if (from > large)
        from = large;
    if (n <= from)
        return zkm__malloc_inline(n + n / 2 <= from ? n + n / 2 : n);
    if (n > ZKM_LARGE_MAX || h == &zkm__heap_empty)
        return zkm__malloc_inline(n);
    void *p = zkm__heap_alloc_large(h, n, 0, -1, false, true);
    if (zkm_unlikely(!p))
        return zkm__alloc_generic(n, 0, -1, false);
    count_alloc(h, n, p, zkm__span_units(n) << ZKM_UNIT_SHIFT);
    return p;
}

void *zkm__malloc_slow(size_t n)
{
    struct zkm_heap *h = zkm__tls_heap;
    if (zkm_likely(!(h->sampling & 1)))
        return zkm__alloc_generic(n, 0, -1, false);
    /* monitoring: this malloc is the sample (about 1 in 1024) */
    h->sampling &= ~1u;
    h->fast_max = zkm__g.fast_max;
    uint64_t t0 = now_ns();
    void *p = zkm__alloc_generic(n, 0, -1, false);
    lat_record(now_ns() - t0);
    return p;
}

/* Frees the inline path cannot do that are not remote frees: foreign and boot pointers,
 * huge and direct objects, a thread's first free, own blocks while sampling. Counted
 * unless the thread has no heap (a thread that frees before it allocates gets one here:
 * a consumer thread may never allocate). */
static ZKM_NOINLINE void free_other(struct zkm_heap *h, void *p, struct zkm_shdr *s)
{
    if (!s) {
        if (!p || zkm__in_boot(p))
            return;
        ZKM_COUNT(foreign_frees, 1);
        zkm__foreign_free(p);
        return;
    }
    if (h == &zkm__heap_empty) {
        struct zkm_heap *nh = zkm__heap_get();
        if (nh)
            h = nh;
    }
    bool count = h != &zkm__heap_empty;
    if (s->kind != ZKM_SLAB_PAGES) {
        if (count) {
            h->c_free++;
            h->c_bytes -= (int64_t)s->obj_size;
        }
        zkm__huge_free(s);
        return;
    }
    struct zkm_page *pg = zkm__page_of(s, p);
    bool own = atomic_load_explicit(&s->owner, memory_order_relaxed) == h;
    if (count) {
        h->c_free++;
        h->c_remote += !own;
        if (own) /* a remote block's bytes are counted by its owner when it collects */
            h->c_bytes -= (int64_t)pg->block_size;
    } else if (!own) {
        ZKM_COUNT(remote_frees, 1);
    }
    if (own)
        zkm__heap_free_local(h, s, pg, p);
    else
        zkm__free_remote(s, p);
}

/* The common slow free: a block of another thread's page (about 20 instructions and the
 * push); everything else in free_other. */
static inline void free_generic(struct zkm_heap *h, void *p)
{
    struct zkm_shdr *s = zkm__slab_of(p);
    if (zkm_likely(s && s->kind == ZKM_SLAB_PAGES && h != &zkm__heap_empty)) {
        struct zkm_heap *o = atomic_load_explicit(&s->owner, memory_order_relaxed);
        if (zkm_likely(o != h)) { /* the owner counts the bytes when it collects */
            h->c_free++;
            h->c_remote++;
            zkm__free_remote_batched(h, s, p);
            return;
        }
    }
    free_other(h, p, s);
}

static ZKM_NOINLINE void free_sampled(struct zkm_heap *h, void *p)
{
    h->sampling &= ~2u;
    zkm__tls_owner = h;
    uint64_t t0 = now_ns();
    free_generic(h, p);
    lat_record(now_ns() - t0);
}

void zkm__free_slow(void *p)
{
    struct zkm_heap *h = zkm__tls_heap;
    if (zkm_unlikely(h->sampling & 2)) { /* monitoring: this free is the sample */
        free_sampled(h, p);
        return;
    }
    free_generic(h, p);
}

size_t zkm__usable(const void *p)
{
    struct zkm_shdr *s = zkm__slab_of(p);
    if (!s) {
        if (!p)
            return 0;
        if (zkm__in_boot(p))
            return zkm__boot_usable(p);
        return zkm__foreign_usable_size((void *)p);
    }
    return usable_of(s, p);
}

/* A large span of ours, when this thread owns it: within the spare (n between the bytes
 * last asked for and its size) nothing changes, whatever n (a span from
 * zkm__alloc_growing may hold less than large_threshold); otherwise above large_threshold
 * the span grows or shrinks to n in place. false: move. */
static bool resize_large(struct zkm_shdr *s, struct zkm_page *pg, size_t n)
{
    size_t old = pg->block_size;
    struct zkm_heap *h = zkm__tls_heap;
    if (n > ZKM_LARGE_MAX || atomic_load_explicit(&s->owner, memory_order_relaxed) != h)
        return n <= old && n > old / 2;
    if (n <= old && n >= pg->asked) {
        pg->asked = (uint32_t)n;
        return true;
    }
    if (n <= zkm__g.large_threshold)
        return n <= old && n > old / 2;
    if (!zkm__heap_resize_large(h, s, pg, n))
        return false;
    h->c_bytes += (int64_t)pg->block_size - (int64_t)old;
    return true;
}

/* In-place resize of p (in our slab s); true when p now holds n bytes. */
bool zkm__resize_in_place(struct zkm_shdr *s, void *p, size_t n)
{
    if (zkm_likely(s->kind == ZKM_SLAB_PAGES)) {
        struct zkm_page *pg = zkm__page_of(s, p);
        if (pg->cls == ZKM_CLASS_LARGE)
            return resize_large(s, pg, n);
        size_t old = zkm__class_usable(s, pg, p);
        return n <= old && n > old / 2; /* a smaller class would save memory: move */
    }
    size_t old = s->obj_size;
    if (s->kind == ZKM_SLAB_HUGE)
        return n <= old && n > ZKM_LARGE_MAX / 2;
    size_t off = s->map_len - s->obj_size;
    if (n <= old) { /* DIRECT: keep it, or give the tail back while a mapping still fits */
        if (n > old / 2)
            return true;
        if (n <= ZKM_HUGE_MAX)
            return false; /* a slab or a span holds it: move */
        size_t len = (off + n + 4095) & ~(size_t)4095;
        if (munmap((uint8_t *)s->map_base + len, s->map_len - len) != 0)
            return false;
        count_resized(old, len - off);
        s->map_len = len;
        s->obj_size = len - off;
        return true;
    }
    /* DIRECT: try to extend the mapping where it is */
    if (n > PTRDIFF_MAX - off - 4096)
        return false;
    size_t len = (off + n + 4095) & ~(size_t)4095;
    void *r = mremap(s->map_base, s->map_len, len, 0);
    if (r == MAP_FAILED)
        return false;
    count_resized(old, len - off);
    s->map_len = len;
    s->obj_size = len - off;
    return true;
}
