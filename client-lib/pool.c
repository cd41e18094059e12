/* SPDX-License-Identifier: MIT */
/*
 * pool.c - L2: the process-wide pools between the thread heaps and the slab source.
 *
 * Data structures:
 *   1. The slab map (zkm__slabmap): a byte per 2 MiB chunk of the 47-bit address space,
 *      set before a slab is used, cleared before it goes back to the source (relaxed
 *      atomic byte stores; each byte belongs to one slab).
 *   2. Slab descriptors: a MAP_NORESERVE array of struct desc, never unmapped, indexed
 *      by a 32-bit number (0 = none). A slab header records its descriptor; the
 *      descriptor keeps what the source needs to take the slab back. The stacks below
 *      link descriptors, never slab memory, so a pop that loses a race reads a
 *      descriptor that is still mapped even if its slab has been unmapped meanwhile.
 *   3. Treiber stacks (struct stack): head = tag << 32 | index in one 64-bit word.
 *      Push: write next (relaxed atomic), CAS head (release). Pop: load head (acquire),
 *      read next, CAS head to (tag + 1) << 32 | next (acquire). The tag changes on every
 *      successful CAS, so a head that was popped and pushed back (ABA) fails the CAS.
 *      Stacks: free descriptors; empty slabs per node (L2, capped at g_l2_cap,
 *      beyond it slabs go back to the source; the daemon's tun.l2_cap sets it, and a
 *      lower cap gives the surplus back at once); abandoned slabs per node; free heaps.
 *   5. Accounting: slabs held, sparse heap slabs, slabs in L2 -- relaxed counters changed
 *      on slab transitions only (never on malloc/free), stored as absolute values into
 *      the control block's stats, so a new session's block is right from its first store.
 *   4. Thread heaps: a MAP_NORESERVE array of struct zkm_heap, never unmapped (a stale
 *      owner pointer read by a remote free stays writable).
 *   6. Draining (compaction): a heap stores each of its slabs' used units into the slab's
 *      descriptor (relaxed, on the slow paths that change them). At most every
 *      ZKM_DRAIN_PERIOD_NS one thread (a flag, never waited on) lists the sparsest daemon
 *      slabs in the control block (struct zkm_occupancy, a seqlock) with the free units
 *      of the others, and applies a new drain list from the daemon: the named slabs'
 *      descriptors get the next mark, and zkm__pool_draining() compares with it, so a new
 *      list replaces the old one without clearing anything. Descriptors never go away, so
 *      neither step reads or writes slab memory that may have left the process.
 * Nothing here allocates from the C heap or takes a lock (the source may, on L3 misses).
 */
#include "alloc.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_DESCS (1u << 22) /* 8 TiB of slabs */
#define MAX_HEAPS (1u << 15) /* threads alive at once */

/* One cache line each: a heap stores `used` at every change of its slab's free units, and
 * with 48-byte descriptors the slabs of two threads shared lines (zkbench realloc on two
 * threads: two span changes per growth step, each a line moving between the cores). */
struct desc {
    _Alignas(64) _Atomic uint32_t next;
    uint32_t _pad;
    struct zkm_source_slab src;
    /* draining (point 6 above): read by whichever thread publishes or applies, so atomic */
    _Atomic uint64_t key;   /* gen << 32 | handle of a daemon slab; 0: none (local memory) */
    _Atomic uint32_t used;  /* units in use while a heap holds the slab; 0 otherwise */
    _Atomic uint32_t drain; /* == g_drain_mark: the daemon asked to drain this slab */
};

struct stack {
    _Atomic uint64_t head;
    _Atomic uint32_t count;
};

_Atomic uint8_t zkm__slabmap[ZKM_MAP_SIZE];

static struct desc *g_descs;
static _Atomic uint32_t g_desc_bump = 1;
static struct stack g_desc_free;
static struct stack g_l2[ZKM_MAX_NODES];
static struct stack g_abandoned[ZKM_MAX_NODES];
static _Atomic uint32_t g_l2_cap = ZKM_L2_CAP_DEFAULT;

/* Slab accounting for the control block (relaxed; published as absolute values). */
static _Atomic int64_t g_held;   /* slabs from the source not yet given back */
static _Atomic int64_t g_sparse; /* heap slabs less than a quarter used */
static _Atomic int64_t g_cached; /* empty slabs in L2, all nodes */

/* Draining (point 6). */
static _Atomic uint32_t g_drain_mark; /* descriptors with drain == mark are drained; 0: none */
static _Atomic int g_drain_busy;      /* one publisher/applier at a time; others skip */
static _Atomic uint64_t g_drain_next_ns;
static uint32_t g_drain_seen_gen, g_drain_seen_conn; /* under g_drain_busy */

static struct zkm_heap *g_heaps;
static _Atomic uint32_t g_heap_bump = 1;
static struct stack g_heap_free;

static _Atomic uint32_t *desc_next(uint32_t i)
{
    return &g_descs[i].next;
}

static _Atomic uint32_t *heap_next(uint32_t i)
{
    return &g_heaps[i].pool_next;
}

static void stack_push(struct stack *st, _Atomic uint32_t *(*next)(uint32_t), uint32_t i)
{
    uint64_t old = atomic_load_explicit(&st->head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(next(i), (uint32_t)old, memory_order_relaxed);
        uint64_t nw = (((old >> 32) + 1) << 32) | i;
        if (atomic_compare_exchange_weak_explicit(&st->head, &old, nw, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
    atomic_fetch_add_explicit(&st->count, 1, memory_order_relaxed);
}

static uint32_t stack_pop(struct stack *st, _Atomic uint32_t *(*next)(uint32_t))
{
    uint64_t old = atomic_load_explicit(&st->head, memory_order_acquire);
    for (;;) {
        uint32_t i = (uint32_t)old;
        if (i == 0)
            return 0;
        uint32_t n = atomic_load_explicit(next(i), memory_order_relaxed);
        uint64_t nw = (((old >> 32) + 1) << 32) | n;
        if (atomic_compare_exchange_weak_explicit(&st->head, &old, nw, memory_order_acquire,
                                                  memory_order_acquire)) {
            atomic_fetch_sub_explicit(&st->count, 1, memory_order_relaxed);
            return i;
        }
    }
}

void zkm__map_set(uintptr_t a, unsigned v)
{
    atomic_store_explicit(&zkm__slabmap[a >> ZKM_SLAB_SHIFT], (uint8_t)v, memory_order_relaxed);
}

static void *reserve(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int zkm__pool_init(void)
{
    if (!g_descs) {
        g_descs = reserve((size_t)MAX_DESCS * sizeof(struct desc));
        if (!g_descs)
            return -ENOMEM;
    }
    if (!g_heaps) {
        g_heaps = reserve((size_t)MAX_HEAPS * sizeof(struct zkm_heap));
        if (!g_heaps)
            return -ENOMEM;
    }
    return 0;
}

static int node_index(int node)
{
    return node >= 0 && node < ZKM_MAX_NODES ? node : 0;
}

/* ---- heaps ---------------------------------------------------------------------------- */

struct zkm_heap *zkm__pool_heap_new(void)
{
    uint32_t i = stack_pop(&g_heap_free, heap_next);
    if (!i) {
        i = atomic_fetch_add_explicit(&g_heap_bump, 1, memory_order_relaxed);
        if (i >= MAX_HEAPS)
            return NULL;
        ZKM_COUNT(heaps_created, 1);
    }
    struct zkm_heap *h = &g_heaps[i];
    h->idx = i;
    return h;
}

void zkm__pool_heap_free(struct zkm_heap *h)
{
    stack_push(&g_heap_free, heap_next, h->idx);
}

/* ---- slabs ---------------------------------------------------------------------------- */

static uint32_t desc_new(void)
{
    uint32_t i = stack_pop(&g_desc_free, desc_next);
    if (i)
        return i;
    i = atomic_fetch_add_explicit(&g_desc_bump, 1, memory_order_relaxed);
    return i < MAX_DESCS ? i : 0;
}

static int64_t load_nonneg(_Atomic int64_t *v)
{
    int64_t x = atomic_load_explicit(v, memory_order_relaxed);
    return x > 0 ? x : 0;
}

void zkm__pool_stats(struct zkm_client_stats *ret)
{
    ret->slabs_held = (uint64_t)load_nonneg(&g_held);
    ret->slabs_sparse = (uint64_t)load_nonneg(&g_sparse);
    ret->slabs_cached = (uint64_t)load_nonneg(&g_cached);
}

void zkm__pool_publish(void)
{
    struct zkm_client_stats *st = zkm__source_stats(), t;
    if (!st)
        return;
    zkm__pool_stats(&t);
    atomic_store_explicit((_Atomic uint64_t *)&st->slabs_held, t.slabs_held, memory_order_relaxed);
    atomic_store_explicit((_Atomic uint64_t *)&st->slabs_sparse, t.slabs_sparse,
                          memory_order_relaxed);
    atomic_store_explicit((_Atomic uint64_t *)&st->slabs_cached, t.slabs_cached,
                          memory_order_relaxed);
}

static void account(_Atomic int64_t *v, int64_t delta)
{
    atomic_fetch_add_explicit(v, delta, memory_order_relaxed);
    zkm__pool_publish();
}

void zkm__pool_sparse_add(int delta)
{
    account(&g_sparse, delta);
}

static void to_source(struct zkm_shdr *s)
{
    uint32_t d = s->desc;
    struct zkm_source_slab src = g_descs[d].src;
    zkm__map_set((uintptr_t)s, 0);
    zkm__source_put(&src);
    stack_push(&g_desc_free, desc_next, d);
    ZKM_COUNT(slabs_to_source, 1);
    account(&g_held, -1);
}

/* L2 push and pop, with the cached count. */
static void l2_push(int ni, uint32_t d)
{
    stack_push(&g_l2[ni], desc_next, d);
    account(&g_cached, 1);
}

static uint32_t l2_pop(int ni)
{
    uint32_t d = stack_pop(&g_l2[ni], desc_next);
    if (d)
        account(&g_cached, -1);
    return d;
}

/*
 * Churn back-off. A slab given to the source and another taken from it within a few pool
 * events means the cap is below the workload's swing (objects of slab size replaced, a
 * buffer regrown): each such pair costs a trip to the source and cold memory. Then L2 may
 * keep g_l2_boost slabs above the cap (doubled per pair, up to L2_BOOST_MAX); gives to the
 * source with no take for 4 windows halve it; a new cap from the daemon resets it.
 * Events are counted only on the source side (rare), relaxed: a lost update only delays.
 */
#define L2_CHURN_WINDOW 8 /* pool events */
#define L2_BOOST_MAX    4 /* 8 MiB per node at most above the cap */
static _Atomic uint32_t g_l2_boost;
static _Atomic uint64_t g_src_events, g_last_give, g_last_take;

static uint32_t l2_cap_now(void)
{
    return atomic_load_explicit(&g_l2_cap, memory_order_relaxed) +
           atomic_load_explicit(&g_l2_boost, memory_order_relaxed);
}

static void churn_note_take(void)
{
    uint64_t now = atomic_fetch_add_explicit(&g_src_events, 1, memory_order_relaxed) + 1;
    uint64_t give = atomic_load_explicit(&g_last_give, memory_order_relaxed);
    atomic_store_explicit(&g_last_take, now, memory_order_relaxed);
    if (!give || now - give > L2_CHURN_WINDOW)
        return;
    uint32_t b = atomic_load_explicit(&g_l2_boost, memory_order_relaxed);
    b = b ? 2 * b : 1;
    atomic_store_explicit(&g_l2_boost, b < L2_BOOST_MAX ? b : L2_BOOST_MAX, memory_order_relaxed);
}

static void churn_note_give(void)
{
    uint64_t now = atomic_fetch_add_explicit(&g_src_events, 1, memory_order_relaxed) + 1;
    uint64_t take = atomic_load_explicit(&g_last_take, memory_order_relaxed);
    atomic_store_explicit(&g_last_give, now, memory_order_relaxed);
    uint32_t b = atomic_load_explicit(&g_l2_boost, memory_order_relaxed);
    if (b && now - take > 4 * L2_CHURN_WINDOW)
        atomic_store_explicit(&g_l2_boost, b / 2, memory_order_relaxed);
}

/* Give back what L2 holds above cap on node index ni. */
static void l2_trim(int ni, uint32_t cap)
{
    while (atomic_load_explicit(&g_l2[ni].count, memory_order_relaxed) > cap) {
        uint32_t d = l2_pop(ni);
        if (!d)
            break;
        to_source(g_descs[d].src.addr);
    }
}

void zkm__pool_set_l2_cap(uint32_t cap)
{
    uint32_t old = atomic_exchange_explicit(&g_l2_cap, cap, memory_order_relaxed);
    if (cap != old)
        atomic_store_explicit(&g_l2_boost, 0, memory_order_relaxed);
    if (cap < old)
        for (int n = 0; n < ZKM_MAX_NODES; n++)
            l2_trim(n, cap);
}

/* The header of a PAGES slab, but not its page descriptors and remote-free lists (see
 * zkm__pool_slab_get). */
static void init_header(struct zkm_shdr *s, bool zeroed)
{
    s->kind = ZKM_SLAB_PAGES;
    atomic_store_explicit(&s->owner, NULL, memory_order_relaxed);
    atomic_store_explicit(&s->pending, 0, memory_order_relaxed);
    if (!zeroed) /* (in the header's third page: a zeroed slab's stays untouched) */
        atomic_store_explicit(&s->xbatch, NULL, memory_order_relaxed);
    s->free_units = ZKM_UNITS - 1;
    s->bin = 0;
    s->sparse = 0;
    s->retire_arms = 0;
    s->n_lcached = 0;
    s->retire_after = 0;
    s->n_pages = s->n_cur = 0;
    memset(s->ring_of, 0, sizeof(s->ring_of));
    s->freemap[0] = ~(uint64_t)1;
    s->freemap[1] = ~(uint64_t)0;
    if (zeroed) {
        s->dirtymap[0] = 1;
        s->dirtymap[1] = 0;
    } else {
        s->dirtymap[0] = s->dirtymap[1] = ~(uint64_t)0;
    }
    s->next = s->prev = s->hnext = s->hprev = NULL;
}

void zkm__page_init(struct zkm_page *pg, unsigned u)
{
    pg->free = NULL;
    zkm__page_set_used(pg, 0);
    zkm__page_set_notify(pg, ZKM_NOTIFY_NEVER);
    pg->cls = ZKM_CLASS_NONE;
    pg->state = ZKM_PAGE_FREE;
    pg->start = (uint8_t)u;
    pg->units = 1;
    __atomic_store_n(&pg->holes, 0, __ATOMIC_RELAXED);
    pg->hbin = ZKM_HOLE_NONE;
    pg->next = pg->prev = NULL;
}

/* Descriptors (8 KiB) and remote-free lists (1 KiB) fill the header's second and third
 * 4 KiB pages: in a zeroed slab (remote-free lists already empty) a descriptor is written
 * when a span first starts at its unit (heap.c span_take), so a process living in its start
 * slabs (small pages) keeps 8 KiB less resident per slab. unit_page stays in the first
 * page, written here: every unit maps to its own descriptor until a page starts there or a
 * class page covers it. */
void zkm__pool_init_pages(struct zkm_shdr *s, bool zeroed)
{
    init_header(s, zeroed);
    for (unsigned u = 0; u < ZKM_UNITS; u++)
        s->unit_page[u] = &s->pages[u];
    if (zeroed) {
        s->initmap[0] = 1;
        s->initmap[1] = 0;
        zkm__page_init(&s->pages[0], 0);
        return;
    }
    for (unsigned u = 0; u < ZKM_UNITS; u++) {
        zkm__page_init(&s->pages[u], u);
        atomic_store_explicit(&s->xfree[u], NULL, memory_order_relaxed);
    }
    s->initmap[0] = s->initmap[1] = ~(uint64_t)0;
}

#if ZKM_DEBUG_LEVEL >= 3
static void pages_verify_clean(const struct zkm_shdr *s)
{
    for (unsigned u = 1; u < ZKM_UNITS; u++) {
        if (!((s->initmap[u >> 6] >> (u & 63)) & 1))
            continue; /* never written: zero, as the slab came */
        const struct zkm_page *pg = s->unit_page[u];
        zkm_assert_expensive(pg->state == ZKM_PAGE_FREE && pg->cls == ZKM_CLASS_NONE);
        zkm_assert_expensive(pg->free == NULL && zkm__page_used(pg) == 0);
        zkm_assert_expensive(pg->notify_at == ZKM_NOTIFY_NEVER && pg->holes == 0);
        zkm_assert_expensive(s->pages[u].state == ZKM_PAGE_FREE);
        zkm_assert_expensive(atomic_load_explicit(&s->xfree[u], memory_order_relaxed) == NULL);
    }
    zkm_assert_expensive(atomic_load_explicit(&s->xbatch, memory_order_relaxed) == NULL);
}
#else
#define pages_verify_clean(s) ((void)0)
#endif

/* A slab from L2 or the source, header not yet initialised. */
static int slab_fresh(int node, struct zkm_shdr **ret, bool *zeroed, bool *reused)
{
    int ni = node_index(node);
    uint32_t d = l2_pop(ni);
    if (d) {
        *ret = g_descs[d].src.addr;
        *zeroed = false;
        *reused = true;
        ZKM_COUNT(slabs_reused, 1);
        return 0;
    }
    d = desc_new();
    if (!d)
        return -ENOMEM;
    struct zkm_source_slab src;
    int err = zkm__source_get(node, &src);
    if (err) {
        stack_push(&g_desc_free, desc_next, d);
        return err;
    }
    churn_note_take();
    g_descs[d].src = src;
    atomic_store_explicit(&g_descs[d].drain, 0, memory_order_relaxed);
    atomic_store_explicit(&g_descs[d].used, 0, memory_order_relaxed);
    atomic_store_explicit(&g_descs[d].key,
                          src.kind == ZKM_SOURCE_DAEMON ? (uint64_t)src.gen << 32 | src.handle : 0,
                          memory_order_relaxed);
    struct zkm_shdr *s = src.addr;
    s->desc = d;
    s->node = src.node;
    zkm__map_set((uintptr_t)s, 1);
    *ret = s;
    *zeroed = src.zeroed != 0;
    *reused = false;
    ZKM_COUNT(slabs_from_source, 1);
    account(&g_held, 1);
    return 0;
}

int zkm__pool_slab_get(int node, struct zkm_shdr **ret, bool *adopted)
{
    int ni = node_index(node);
    uint32_t d = stack_pop(&g_abandoned[ni], desc_next);
    for (int n = 0; !d && n < ZKM_MAX_NODES; n++) /* adopt anywhere before growing */
        if (n != ni && atomic_load_explicit(&g_abandoned[n].count, memory_order_relaxed))
            d = stack_pop(&g_abandoned[n], desc_next);
    if (d) {
        *ret = g_descs[d].src.addr;
        *adopted = true;
        ZKM_COUNT(slabs_adopted, 1);
        return 0;
    }
    struct zkm_shdr *s;
    bool zeroed, reused;
    int err = slab_fresh(node, &s, &zeroed, &reused);
    if (err)
        return err;
    if (reused) {
        uint64_t d0 = s->dirtymap[0], d1 = s->dirtymap[1];
        if (s->kind == ZKM_SLAB_PAGES) {
            /* It went to L2 empty: every span was freed (span_free left its descriptor FREE,
             * as init makes it) and every remote free collected (xfree lists empty); a unit
             * inside a former span still maps to that span's FREE descriptor, which no valid
             * pointer reaches and span_take rewrites. Rewriting 10 KiB of descriptors for
             * every reuse was 9% of zkbench large on two threads (heaps giving slabs to L2
             * and taking them back). */
            pages_verify_clean(s);
            init_header(s, false);
        } else {
            zkm__pool_init_pages(s, false); /* a HUGE object wrote over the descriptors */
        }
        s->dirtymap[0] = d0 | 1;
        s->dirtymap[1] = d1;
    } else {
        zkm__pool_init_pages(s, zeroed);
    }
    *ret = s;
    *adopted = false;
    return 0;
}

void zkm__pool_slab_put(struct zkm_shdr *s)
{
    int ni = node_index(s->node);
    atomic_store_explicit(&g_descs[s->desc].used, 0, memory_order_relaxed);
    atomic_store_explicit(&s->owner, NULL, memory_order_relaxed);
    if (s->sparse) {
        s->sparse = 0;
        zkm__pool_sparse_add(-1);
    }
    uint32_t cap = l2_cap_now();
    if (atomic_load_explicit(&g_l2[ni].count, memory_order_relaxed) >= cap) {
        churn_note_give();
        to_source(s);
        return;
    }
    l2_push(ni, s->desc);
    l2_trim(ni, cap); /* another thread may have pushed, or the cap dropped, meanwhile */
}

void zkm__pool_abandon(struct zkm_shdr *s)
{
    atomic_store_explicit(&s->owner, NULL, memory_order_release);
    stack_push(&g_abandoned[node_index(s->node)], desc_next, s->desc);
    ZKM_COUNT(slabs_abandoned, 1);
}

int zkm__pool_huge_get(int node, struct zkm_shdr **ret, bool *zeroed)
{
    struct zkm_shdr *s;
    bool z, reused;
    int err = slab_fresh(node, &s, &z, &reused);
    if (err)
        return err;
    if (reused)
        z = s->dirtymap[0] == 0 && s->dirtymap[1] == 0;
    s->kind = ZKM_SLAB_HUGE;
    s->sparse = 0;
    atomic_store_explicit(&s->owner, NULL, memory_order_relaxed);
    s->dirtymap[0] = s->dirtymap[1] = ~(uint64_t)0;
    *ret = s;
    *zeroed = z;
    return 0;
}

/* ---- draining (point 6) ------------------------------------------------------------------ */

void zkm__pool_note_used(const struct zkm_shdr *s)
{
    atomic_store_explicit(&g_descs[s->desc].used, ZKM_UNITS - 1 - s->free_units,
                          memory_order_relaxed);
}

bool zkm__pool_drain_on(void)
{
    return atomic_load_explicit(&g_drain_mark, memory_order_relaxed) != 0;
}

bool zkm__pool_draining(const struct zkm_shdr *s)
{
    uint32_t m = atomic_load_explicit(&g_drain_mark, memory_order_relaxed);
    return m && atomic_load_explicit(&g_descs[s->desc].drain, memory_order_relaxed) == m;
}

static uint32_t descs_in_use(void)
{
    uint32_t n = atomic_load_explicit(&g_desc_bump, memory_order_relaxed);
    return n < MAX_DESCS ? n : MAX_DESCS;
}

/* The sparsest held daemon slabs of connection generation gen into the table (seqlock). */
static void occupancy_publish(struct zkm_occupancy *o, uint32_t gen)
{
    uint32_t hs[ZKM_OCC_MAX];
    uint16_t us[ZKM_OCC_MAX];
    uint32_t n = 0, room = 0, end = descs_in_use();
    for (uint32_t d = 1; d < end; d++) {
        uint32_t used = atomic_load_explicit(&g_descs[d].used, memory_order_relaxed);
        uint64_t key = atomic_load_explicit(&g_descs[d].key, memory_order_relaxed);
        if (!used || used >= ZKM_UNITS || !key || (uint32_t)(key >> 32) != gen)
            continue;
        if (ZKM_UNITS - 1 - used < ZKM_SPARSE_FREE) {
            room += ZKM_UNITS - 1 - used;
            continue;
        }
        /* sparse: insert by used units; a full table drops its fullest entry to room */
        if (n == ZKM_OCC_MAX) {
            if (used >= us[n - 1]) {
                room += ZKM_UNITS - 1 - used;
                continue;
            }
            room += ZKM_UNITS - 1 - us[--n];
        }
        uint32_t i = n++;
        for (; i > 0 && us[i - 1] > used; i--) {
            hs[i] = hs[i - 1];
            us[i] = us[i - 1];
        }
        hs[i] = (uint32_t)key;
        us[i] = (uint16_t)used;
    }
    uint32_t seq = __atomic_load_n(&o->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&o->seq, seq | 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&o->n, n, __ATOMIC_RELAXED);
    __atomic_store_n(&o->room_units, room, __ATOMIC_RELAXED);
    __atomic_store_n(&o->slab_units, ZKM_UNITS - 1, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < n; i++) {
        __atomic_store_n(&o->handle[i], hs[i], __ATOMIC_RELAXED);
        __atomic_store_n(&o->used[i], us[i], __ATOMIC_RELAXED);
    }
    __atomic_store_n(&o->seq, (seq | 1) + 1, __ATOMIC_RELEASE);
}

static uint32_t drain_next_mark(void)
{
    uint32_t mark = atomic_load_explicit(&g_drain_mark, memory_order_relaxed) + 1;
    return mark ? mark : 1;
}

/* A new drain list: mark the named slabs of generation gen with the next mark. */
static void drain_apply(const struct zkm_drain_list *dl, uint32_t dgen, uint32_t gen)
{
    uint32_t hs[ZKM_OCC_MAX];
    uint32_t n = __atomic_load_n(&dl->n, __ATOMIC_RELAXED);
    if (n > ZKM_OCC_MAX)
        n = 0; /* a daemon that scribbled: drain nothing */
    for (uint32_t i = 0; i < n; i++)
        hs[i] = __atomic_load_n(&dl->handle[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&dl->gen, __ATOMIC_RELAXED) != dgen)
        return; /* rewritten meanwhile: the next call takes the new one */
    uint32_t mark = drain_next_mark(), marked = 0, end = descs_in_use();
    for (uint32_t d = 1; d < end && n; d++) {
        uint64_t key = atomic_load_explicit(&g_descs[d].key, memory_order_relaxed);
        if (!key || (uint32_t)(key >> 32) != gen ||
            !atomic_load_explicit(&g_descs[d].used, memory_order_relaxed))
            continue;
        for (uint32_t i = 0; i < n; i++) {
            if (hs[i] == (uint32_t)key) {
                atomic_store_explicit(&g_descs[d].drain, mark, memory_order_relaxed);
                marked++;
                break;
            }
        }
    }
    atomic_store_explicit(&g_drain_mark, marked ? mark : 0, memory_order_relaxed);
    g_drain_seen_gen = dgen;
    g_drain_seen_conn = gen;
}

void zkm__pool_drain_slabs(struct zkm_shdr *const *slabs, unsigned n)
{
    uint32_t mark = drain_next_mark();
    for (unsigned i = 0; i < n; i++)
        atomic_store_explicit(&g_descs[slabs[i]->desc].drain, mark, memory_order_relaxed);
    atomic_store_explicit(&g_drain_mark, n ? mark : 0, memory_order_relaxed);
}

void zkm__pool_drain_sync(uint64_t now_ns, bool force)
{
    if (!force && now_ns < atomic_load_explicit(&g_drain_next_ns, memory_order_relaxed))
        return;
    if (atomic_exchange_explicit(&g_drain_busy, 1, memory_order_acquire))
        return;
    atomic_store_explicit(&g_drain_next_ns, now_ns + ZKM_DRAIN_PERIOD_NS, memory_order_relaxed);
    uint32_t gen;
    struct zkm_occupancy *o;
    const struct zkm_drain_list *dl;
    if (zkm__source_drain_tables(&o, &dl, &gen) == 0) {
        occupancy_publish(o, gen);
        uint32_t dgen = __atomic_load_n(&dl->gen, __ATOMIC_ACQUIRE);
        if (dgen != g_drain_seen_gen || gen != g_drain_seen_conn)
            drain_apply(dl, dgen, gen);
    }
    atomic_store_explicit(&g_drain_busy, 0, memory_order_release);
}
