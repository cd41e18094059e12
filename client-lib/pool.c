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
 * Nothing here allocates from the C heap or takes a lock (the source may, on L3 misses).
 */
#include "alloc.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_DESCS (1u << 22) /* 8 TiB of slabs */
#define MAX_HEAPS (1u << 15) /* threads alive at once */

struct desc {
    _Atomic uint32_t next;
    uint32_t _pad;
    struct zkm_source_slab src;
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

void zkm__pool_init_pages(struct zkm_shdr *s, bool zeroed)
{
    s->kind = ZKM_SLAB_PAGES;
    atomic_store_explicit(&s->owner, NULL, memory_order_relaxed);
    atomic_store_explicit(&s->pending, 0, memory_order_relaxed);
    atomic_store_explicit(&s->xbatch, NULL, memory_order_relaxed);
    s->free_units = ZKM_UNITS - 1;
    s->bin = 0;
    s->sparse = 0;
    s->retire_arms = 0;
    s->retire_after = 0;
    s->n_pages = s->n_cur = 0;
    s->freemap[0] = ~(uint64_t)1;
    s->freemap[1] = ~(uint64_t)0;
    if (zeroed) {
        s->dirtymap[0] = 1;
        s->dirtymap[1] = 0;
    } else {
        s->dirtymap[0] = s->dirtymap[1] = ~(uint64_t)0;
    }
    s->next = s->prev = s->hnext = s->hprev = NULL;
    for (unsigned u = 0; u < ZKM_UNITS; u++) {
        struct zkm_page *pg = &s->pages[u];
        s->unit_page[u] = pg;
        pg->free = NULL;
        zkm__page_set_used(pg, 0);
        zkm__page_set_notify(pg, ZKM_NOTIFY_NEVER);
        pg->cls = ZKM_CLASS_NONE;
        pg->state = ZKM_PAGE_FREE;
        pg->start = (uint8_t)u;
        pg->units = 1;
        pg->next = pg->prev = NULL;
        atomic_store_explicit(&s->xfree[u], NULL, memory_order_relaxed);
    }
}

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
        zkm__pool_init_pages(s, false);
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
