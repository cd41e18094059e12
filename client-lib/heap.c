/* SPDX-License-Identifier: MIT */
/*
 * heap.c - L1: the thread heap's slow paths. Pages of size classes and large spans
 * inside the heap's slabs, the page state machine, collection of remote frees, thread
 * exit (abandon) and adoption. See alloc.h (points 3, 4, 6) for the design.
 *
 * Page states (owner-only fields, no atomics):
 *   CURRENT  heap->cur[cls]; notify_at = NEVER (an empty current page is kept: a tight
 *            malloc/free loop never leaves the fast path)
 *   QUEUED   in heap->queue[cls] (doubly linked), has free blocks; notify_at = 0: the
 *            free that empties it retires it
 *   FULL     no free block, in no list; notify_at = capacity - 1: the first free queues
 *            it (large objects are FULL pages of capacity 1: their free retires them)
 *   FREE     its units are free in the slab
 * Slabs of a heap are on heap->slabs (all of them, for collection and exit) and in
 * heap->bins[free units] (bins[0]: full), with a 128-bit map of the non-empty bins. A new
 * page goes into the fullest slab that has room for it -- one ctz per bin, not a walk of
 * the slabs (tcmalloc's hugepage filler idea): partly used slabs fill up, sparse ones are
 * left alone until their blocks are freed and they empty. While the daemon's compactor
 * names a slab in its drain list (pool.c point 6), a page of it at the head of a class
 * queue is passed over for a queued page of another slab, or a new page in a slab not
 * drained; only when neither exists is the drained slab used (never a new slab instead). A slab
 * whose units are all free goes back to L2 unless it is the heap's last one (one empty slab per
 * heap at most).
 */
#include "alloc.h"

#include <string.h>

/* no free block: an inline malloc from it goes slow */
static struct zkm_page page_empty = {
    .left = 1, .notify_at = ZKM_NOTIFY_NEVER, .cls = ZKM_CLASS_NONE};

/* The PAGES slab holding pg (a descriptor, or a block of its pages). */
static inline struct zkm_shdr *slab_of_page(const void *pg)
{
    return (struct zkm_shdr *)((uintptr_t)pg & ~(uintptr_t)ZKM_SLAB_MASK);
}

/* Every state change of an in-use page goes through here: the slab counts its current
 * pages (slab_retire_current looks at a slab only when they are all it holds). */
static inline void page_state(struct zkm_page *pg, uint8_t state)
{
    struct zkm_shdr *s = slab_of_page(pg);
    s->n_cur = (uint16_t)(s->n_cur + (state == ZKM_PAGE_CURRENT) - (pg->state == ZKM_PAGE_CURRENT));
    pg->state = state;
}

/* ---- slab lists --------------------------------------------------------------------- */

static void list_add(struct zkm_shdr **head, struct zkm_shdr *s)
{
    s->prev = NULL;
    s->next = *head;
    if (*head)
        (*head)->prev = s;
    *head = s;
}

static void list_del(struct zkm_shdr **head, struct zkm_shdr *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        *head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
}

/* ---- occupancy bins ------------------------------------------------------------------ */

/* Crossings of the sparse line are counted in the heap and added to the process's count
 * at its flushes and refreshes: a shared atomic and three stores into the control block at
 * every crossing were 17% of zkbench realloc on two threads (a 1 MiB buffer crosses twice
 * per growth series). */
static void sparse_note(struct zkm_heap *h, struct zkm_shdr *s)
{
    zkm__pool_note_used(s);
    uint8_t sp = s->free_units >= ZKM_SPARSE_FREE;
    if (sp != s->sparse) {
        s->sparse = sp;
        h->sparse_delta += sp ? 1 : -1;
    }
}

void zkm__heap_flush_sparse(struct zkm_heap *h)
{
    if (h->sparse_delta) {
        zkm__pool_sparse_add(h->sparse_delta);
        h->sparse_delta = 0;
    }
}

static void bin_add(struct zkm_heap *h, struct zkm_shdr *s)
{
    unsigned b = s->free_units;
    list_add(&h->bins[b], s);
    h->binmap[b >> 6] |= (uint64_t)1 << (b & 63);
    s->bin = (uint8_t)b;
}

static void bin_del(struct zkm_heap *h, struct zkm_shdr *s)
{
    unsigned b = s->bin;
    list_del(&h->bins[b], s);
    if (!h->bins[b])
        h->binmap[b >> 6] &= ~((uint64_t)1 << (b & 63));
}

/* s->free_units changed: move s to its bin (O(1)). */
static void slab_rebin(struct zkm_heap *h, struct zkm_shdr *s)
{
    if (s->bin == s->free_units)
        return;
    bin_del(h, s);
    bin_add(h, s);
    sparse_note(h, s);
}

static void slab_attach(struct zkm_heap *h, struct zkm_shdr *s)
{
    atomic_store_explicit(&s->owner, h, memory_order_release);
    bin_add(h, s);
    sparse_note(h, s);
    s->hprev = NULL;
    s->hnext = h->slabs;
    if (h->slabs)
        h->slabs->hprev = s;
    h->slabs = s;
    h->nslabs++;
}

static void slab_detach(struct zkm_heap *h, struct zkm_shdr *s)
{
    bin_del(h, s);
    if (s->hprev)
        s->hprev->hnext = s->hnext;
    else
        h->slabs = s->hnext;
    if (s->hnext)
        s->hnext->hprev = s->hprev;
    s->hnext = s->hprev = NULL;
    h->nslabs--;
}

/* ---- unit bitmap ---------------------------------------------------------------------- */

typedef unsigned __int128 u128;

static inline unsigned ctz128(u128 x)
{
    uint64_t lo = (uint64_t)x;
    return lo ? (unsigned)__builtin_ctzll(lo)
              : 64u + (unsigned)__builtin_ctzll((uint64_t)(x >> 64));
}

static inline u128 map_get(const uint64_t m[2])
{
    return ((u128)m[1] << 64) | m[0];
}

static inline void map_put(uint64_t m[2], u128 v)
{
    m[0] = (uint64_t)v;
    m[1] = (uint64_t)(v >> 64);
}

static inline u128 range_mask(unsigned start, unsigned n)
{
    u128 ones = n >= 128 ? ~(u128)0 : (((u128)1 << n) - 1);
    return ones << start;
}

/* First start >= 1, multiple of align_u, of n free units; -1 if none. */
static int span_find(const struct zkm_shdr *s, unsigned n, unsigned align_u)
{
    u128 m = map_get(s->freemap);
    unsigned pos = 1;
    while (pos + n <= ZKM_UNITS) {
        u128 r = m >> pos;
        if (!r)
            return -1;
        unsigned start = pos + ctz128(r);
        unsigned run = ctz128(~(m >> start)); /* zeros shift in: terminates */
        if (start + run > ZKM_UNITS)
            run = ZKM_UNITS - start;
        unsigned a = (start + align_u - 1) / align_u * align_u;
        if (a + n <= start + run)
            return (int)a;
        pos = start + run;
    }
    return -1;
}

static struct zkm_page *span_take(struct zkm_heap *h, struct zkm_shdr *s, unsigned start,
                                  unsigned n)
{
    u128 rm = range_mask(start, n);
    zkm_assert_internal((map_get(s->freemap) & rm) == rm);
    map_put(s->freemap, map_get(s->freemap) & ~rm);
    u128 dirty = map_get(s->dirtymap);
    map_put(s->dirtymap, dirty | rm);
    s->free_units -= n;
    struct zkm_page *pg = &s->pages[start];
    if (zkm_unlikely(!((s->initmap[start >> 6] >> (start & 63)) & 1))) {
        s->initmap[start >> 6] |= (uint64_t)1 << (start & 63); /* pool.c zkm__pool_init_pages */
        zkm__page_init(pg, start);
    }
    s->n_pages++;
    s->unit_page[start] = pg; /* the rest: page_carve, for a class page */
    pg->start = (uint8_t)start;
    pg->units = (uint16_t)n;
    pg->zeroed = (dirty & rm) == 0;
    pg->free = NULL;
    pg->ftick = ZKM_TICK_FREES;
    pg->next = pg->prev = NULL;
    slab_rebin(h, s);
    return pg;
}

/* The page's inline operations into the heap's counts (alloc.h point 8): its inline frees
 * (a large span's bytes left in zkm__page_notify; a class block's bytes leave here) and, for
 * a class page, its inline allocations -- used grew by them less the frees, every other
 * change of used moved used_base along (page_used_add). */
void zkm__page_fold(struct zkm_heap *h, struct zkm_page *pg)
{
    uint32_t f = ZKM_TICK_FREES - pg->ftick;
    pg->ftick = ZKM_TICK_FREES;
    h->c_free += f;
    if (pg->cls == ZKM_CLASS_LARGE)
        return;
    h->c_bytes -= (int64_t)f * pg->block_size;
    if (pg->cls >= ZKM_NCLASS)
        return;
    uint32_t used = zkm__page_used(pg), a = used - pg->used_base + f;
    zkm_assert_internal(a <= INT32_MAX); /* never fewer allocations than nothing */
    pg->used_base = used;
    h->c_alloc += a;
    h->c_tier[pg->block_size <= zkm__g.small_threshold ? ZKM_TIER_SMALL : ZKM_TIER_MEDIUM] += a;
    h->c_bytes += (int64_t)a * pg->block_size;
}

/* used += d outside the inline paths (counted where it happens): used_base follows, so
 * that the fold counts only the inline allocations. */
static inline void page_used_add(struct zkm_page *pg, uint32_t d)
{
    pg->left += d;
    if (pg->cls < ZKM_NCLASS)
        pg->used_base += d;
}

/* Give a page's units back to its slab. */
static void span_free(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg)
{
    zkm__page_fold(h, pg);
    if (pg->cls < ZKM_NCLASS && h->pages_made[pg->cls])
        h->pages_made[pg->cls]--;
    map_put(s->freemap, map_get(s->freemap) | range_mask(pg->start, pg->units));
    s->free_units += pg->units;
    memset(&s->ring_of[pg->start], 0, pg->units);
    page_state(pg, ZKM_PAGE_FREE);
    s->n_pages--;
    __atomic_store_n(&pg->holes, 0, __ATOMIC_RELAXED);
    pg->hbin = ZKM_HOLE_NONE;
    pg->cls = ZKM_CLASS_NONE;
    pg->free = NULL;
    zkm__page_set_used(pg, 0);
    zkm__page_set_notify(pg, ZKM_NOTIFY_NEVER);
    slab_rebin(h, s);
}

static inline bool unit_free(const struct zkm_shdr *s, unsigned u)
{
    return (s->freemap[u >> 6] >> (u & 63)) & 1;
}

/* First unit >= u (u >= 1) that is not free, or ZKM_UNITS. */
static inline unsigned next_used(const struct zkm_shdr *s, unsigned u)
{
    if (u >= ZKM_UNITS)
        return ZKM_UNITS;
    u128 used = ~map_get(s->freemap) >> u;
    return used ? u + ctz128(used) : ZKM_UNITS;
}

#define RETIRE_ARMS 4 /* re-armings of a slab's current pages per page released in it */
/* Slow paths (allocations that refilled) after retiring a slab's current pages before it
 * may happen again: a workload that empties a slab and fills it at once (a batch of frees,
 * then mallocs) would otherwise retire the current pages and carve them anew every time. */
#define RETIRE_PERIOD 64

#define RETIRE_GAP_MAX (1u << 16) /* slow paths */

/* A retirement gave a slab's current pages up, or an empty slab left the heap. Doing so
 * rarely (more than 4 gaps apart) shrinks the gap back towards RETIRE_PERIOD. */
static void retire_note(struct zkm_heap *h)
{
    if (h->retired_at && h->slow_calls + 1 - h->retired_at > 4 * (uint64_t)h->retire_gap &&
        h->retire_gap > RETIRE_PERIOD)
        h->retire_gap /= 2;
    h->retired_at = h->slow_calls + 1;
}

/* The heap takes a new slab. Within retire_gap slow paths of a retirement or a release, that
 * only made the workload carve its pages again in cold memory (a batch freed, then the
 * same mallocs: zkbench touch) or fetch and initialise a slab again (large objects
 * replaced: zkbench large): for the next gap slow paths frees retire nothing and the heap
 * keeps one empty slab beyond its last; the gap doubles. The periodic trim and thread exit
 * still give empty slabs back. */
static void retire_check_wasted(struct zkm_heap *h)
{
    if (!h->retired_at || h->slow_calls + 1 - h->retired_at > h->retire_gap)
        return;
    h->retire_hold = h->slow_calls + h->retire_gap;
    if (h->retire_gap < RETIRE_GAP_MAX)
        h->retire_gap *= 2;
    h->retired_at = 0;
}

/*
 * Stops at the first page that is not current (usually the first page). If s holds
 * nothing but current pages and every one is empty, they stop being current and the slab
 * empties. If some are busy, they are armed (notify_at 0): the free that empties one
 * calls page_check, which comes back here. Arming happens after another page of the slab
 * was released (a slow path) and at most RETIRE_ARMS times after it, so two hot classes
 * taking turns cannot make every free slow.
 */
static void slab_retire_current(struct zkm_heap *h, struct zkm_shdr *s)
{
    if (s->n_cur != s->n_pages || h->slow_calls < s->retire_after)
        return; /* holds other pages; or retired pages lately: let it be reused first */
    bool busy = false;
    for (unsigned u = next_used(s, 1); u < ZKM_UNITS; u = next_used(s, u + s->pages[u].units)) {
        const struct zkm_page *pg = &s->pages[u];
        if (pg->state != ZKM_PAGE_CURRENT)
            return;
        busy |= zkm__page_used(pg) != 0;
    }
    if (busy && s->retire_arms >= RETIRE_ARMS)
        return;
    if (busy)
        s->retire_arms++;
    for (unsigned u = next_used(s, 1), n; u < ZKM_UNITS; u = next_used(s, u + n)) {
        struct zkm_page *pg = &s->pages[u];
        n = pg->units;
        if (busy) {
            zkm__page_set_notify(pg, zkm__page_used(pg) ? 0 : ZKM_NOTIFY_NEVER);
        } else {
            h->cur[pg->cls] = &page_empty;
            span_free(h, s, pg);
        }
    }
    if (!busy) {
        s->retire_after = h->slow_calls + RETIRE_PERIOD;
        retire_note(h);
    }
}

#if ZKM_DEBUG_LEVEL >= 3
/* The slab's counts match its unit map and pages: free units, bin, sparse flag. */
static void slab_verify(const struct zkm_shdr *s)
{
    unsigned nfree = 0, npages = 0, ncur = 0;
    for (unsigned u = 1; u < ZKM_UNITS;) {
        if (unit_free(s, u)) {
            nfree++;
            u++;
            continue;
        }
        const struct zkm_page *pg = &s->pages[u];
        zkm_assert_expensive(pg->units >= 1 && u + pg->units <= ZKM_UNITS);
        npages++;
        ncur += pg->state == ZKM_PAGE_CURRENT;
        u += pg->units;
    }
    zkm_assert_expensive(nfree == s->free_units);
    zkm_assert_expensive(npages == s->n_pages && ncur == s->n_cur);
    zkm_assert_expensive(s->bin == s->free_units);
    zkm_assert_expensive(s->sparse == (s->free_units >= ZKM_SPARSE_FREE));
}
#else
#define slab_verify(s) ((void)0)
#endif

/* An emptied slab goes to L2 unless pinned or the heap's last one. A slab whose other
 * units are all free gives up its empty current pages for that (not again within
 * RETIRE_PERIOD slow paths; the 1024th-slow-path trim catches the rest). */
/* The heap has an empty slab besides s (empty slabs are in the last bin). */
static inline bool heap_other_empty(const struct zkm_heap *h, const struct zkm_shdr *s)
{
    const struct zkm_shdr *e = h->bins[ZKM_UNITS - 1];
    return e && (e != s || s->next);
}

static void lcache_evict(struct zkm_heap *h, struct zkm_shdr *s);

static void slab_release_if_empty(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_shdr *pin,
                                  bool retire)
{
    slab_verify(s);
    if (s == pin || h->nslabs <= 1)
        return;
    if (retire && s->free_units < ZKM_UNITS - 1)
        slab_retire_current(h, s);
    if (s->n_lcached && s->n_pages == s->n_lcached)
        lcache_evict(h, s); /* kept spans alone do not hold a slab */
    if (s->free_units == ZKM_UNITS - 1) {
        if (!retire && !heap_other_empty(h, s))
            return; /* churning (see retire_check_wasted): keep one spare empty slab */
        slab_detach(h, s);
        zkm__pool_slab_put(s);
        retire_note(h);
    }
}

/* The same after a free or a collection: retirement only outside a hold. */
static void slab_maybe_release(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_shdr *pin)
{
    slab_release_if_empty(h, s, pin, h->slow_calls >= h->retire_hold);
}

static void span_release(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg,
                         struct zkm_shdr *pin)
{
    span_free(h, s, pg);
    s->retire_arms = 0;
    slab_maybe_release(h, s, pin);
}

void zkm__heap_trim(struct zkm_heap *h)
{
    if (h->nslabs <= 1)
        return;
    zkm__ring_flush_all(h, false); /* a block kept in a ring keeps its page */
    for (unsigned c = 0; c < ZKM_NCLASS; c++) {
        struct zkm_page *pg = h->cur[c];
        if (pg != &page_empty && zkm__page_used(pg) == 0)
            slab_release_if_empty(h, slab_of_page(pg), NULL, true);
    }
}

/* ---- invariants (ZKM_DEBUG_LEVEL 3) ------------------------------------------------------- */

#if ZKM_DEBUG_LEVEL >= 3
/* Every block of a page is either on its free list, on its xfree list or counted in used:
 * walk the free list (bounds, alignment, no cycle longer than capacity). */
static void page_verify(struct zkm_shdr *s, const struct zkm_page *pg)
{
    if (pg->cls == ZKM_CLASS_LARGE || pg->cls == ZKM_CLASS_NONE || pg->state == ZKM_PAGE_HOLES)
        return;
    uint8_t *base = zkm__page_start(s, pg);
    uint8_t *end = base + (size_t)pg->carved * pg->block_size;
    uint32_t n = 0;
    for (struct zkm_block *b = pg->free; b; b = b->next) {
        zkm_assert_expensive((uint8_t *)b >= base && (uint8_t *)b < end);
        zkm_assert_expensive(((uint8_t *)b - base) % pg->block_size == 0);
        zkm_assert_expensive(++n <= pg->capacity);
    }
    zkm_assert_expensive(n + zkm__page_used(pg) + (pg->capacity - pg->carved) == pg->capacity);
}
#else
#define page_verify(s, pg) ((void)0)
#endif

/* Blocks on its free list or not yet carved. */
static inline bool page_has_free(const struct zkm_page *pg)
{
    return pg->free != NULL || pg->carved < pg->capacity;
}

/* ---- page state machine ----------------------------------------------------------------- */

/*
 * heap->queue[cls] is FIFO: a page joins at the tail (a FULL page that got a block back)
 * and refills take the head, the page queued longest, which has had the most time to
 * collect frees -- LIFO would hand back the page that just got its first block, and a
 * class under random frees would refill on nearly every malloc. Doubly linked, NULL-ended
 * forward; the head's prev is the tail (other pages' prev: their predecessor).
 */
static void queue_push(struct zkm_heap *h, struct zkm_page *pg)
{
    struct zkm_page **q = &h->queue[pg->cls], *head = *q;
    pg->next = NULL;
    if (!head) {
        pg->prev = pg;
        *q = pg;
    } else {
        struct zkm_page *tail = head->prev;
        tail->next = pg;
        pg->prev = tail;
        head->prev = pg;
    }
    page_state(pg, ZKM_PAGE_QUEUED);
    zkm__page_set_notify(pg, 0);
}

static void queue_del(struct zkm_heap *h, struct zkm_page *pg)
{
    struct zkm_page **q = &h->queue[pg->cls], *head = *q;
    if (pg == head) {
        *q = pg->next;
        if (pg->next)
            pg->next->prev = pg->prev; /* the tail */
    } else {
        pg->prev->next = pg->next;
        if (pg->next)
            pg->next->prev = pg->prev;
        else
            head->prev = pg->prev; /* pg was the tail */
    }
    pg->next = pg->prev = NULL;
}

/* ---- holes --------------------------------------------------------------------------------
 *
 * Random frees leave small-class pages nearly empty without emptying any of them, and a
 * page serves only its class: a program that frees most of its small objects at random and
 * then allocates medium ones would take new slabs beside gigabytes of free runs (the
 * random-frees benchmark). When a medium request (ZKM_HOLE_MIN..ZKM_HOLE_MAX, alignment
 * 16 at most) finds neither a queued page nor free units in the heap's slabs, sparse
 * queued pages (at most a quarter used) of the host classes (ZKM_HOLE_HOST_MIN..MAX)
 * become HOLES pages, and medium blocks are cut from runs of their free blocks (pages
 * binned by their longest run; in a page, the shortest run that fits).
 *   - A HOLES page keeps its class, block size and live blocks (pinned: they stay where
 *     they are). One byte per block, in an array that takes a run of the page's own free
 *     blocks, says what each block is: free, pinned, the start of a medium block (its
 *     length in blocks) or inside one. It leaves its class queue and is never current,
 *     so no inline malloc pops from it.
 *   - Frees need no new path: every free (inline, collected, by pointer) pushes the
 *     block on the page's free list as before and counts it out of `used` (pinned blocks
 *     and medium blocks alike). The owner reads that list into the array when it looks at
 *     the page again: at an allocation from it, and when HOLE_NOTIFY frees have come in
 *     (notify_at), which also rebins it by its longest free run. At used 0 the page goes
 *     like any other.
 *   - The size of a block another thread asks about (realloc, malloc_usable_size) is its
 *     array entry, read after the page's `holes` flag (release/acquire); a pinned block
 *     reads the class's size either way, and the entry of a live block never changes.
 *   - Pinned blocks' neighbours serve only medium requests until the page empties; a page
 *     is never turned back (its array is read by other threads for its pinned blocks).
 */
#define HS_FREE     0x00
#define HS_INSIDE   0xfe
#define HS_PINNED   0xff
#define HS_LEN_MAX  0xfd /* longest medium block, in host blocks (8 KiB of 32 B ones: 256) */
#define HOLE_NOTIFY 8    /* frees into a HOLES page between looks */
#define HOLE_SCAN   32   /* queued host pages looked at per conversion attempt */
#define HOLE_TRIES  8    /* pages tried in the best-fitting bin before larger ones */

static inline uint8_t *hole_state(struct zkm_shdr *s, const struct zkm_page *pg)
{
    return zkm__page_start(s, pg) + pg->hmeta;
}

size_t zkm__hole_usable(struct zkm_shdr *s, const struct zkm_page *pg, const void *p)
{
    size_t i = (size_t)((const uint8_t *)p - zkm__page_start(s, pg)) / pg->block_size;
    uint8_t v = hole_state(s, pg)[i];
    return v >= 1 && v <= HS_LEN_MAX ? (size_t)v * pg->block_size : pg->block_size;
}

/* Bins by the longest run: four per doubling from 512 B (bin 0: 512..639 B) up to 8 KiB,
 * and one for 8 KiB and more; a request's bin may hold runs too short for it, every bin
 * above it holds runs that fit. */
static unsigned hole_bin_of(uint32_t bytes)
{
    if (bytes < ZKM_HOLE_MIN)
        return ZKM_HOLE_NONE;
    if (bytes >= ZKM_HOLE_MAX)
        return ZKM_HOLE_BINS - 1;
    unsigned k = 31u - (unsigned)__builtin_clz(bytes);
    return 4u * (k - 9u) + ((bytes >> (k - 2u)) & 3u);
}

static void hole_unbin(struct zkm_heap *h, struct zkm_page *pg)
{
    if (pg->hbin == ZKM_HOLE_NONE)
        return;
    if (pg->prev)
        pg->prev->next = pg->next;
    else
        h->holes[pg->hbin] = pg->next;
    if (pg->next)
        pg->next->prev = pg->prev;
    pg->next = pg->prev = NULL;
    pg->hbin = ZKM_HOLE_NONE;
}

static void hole_rebin(struct zkm_heap *h, struct zkm_page *pg)
{
    unsigned b = hole_bin_of((uint32_t)pg->hmaxrun * pg->block_size);
    if (b == pg->hbin)
        return;
    hole_unbin(h, pg);
    if (b == ZKM_HOLE_NONE)
        return;
    pg->prev = NULL;
    pg->next = h->holes[b];
    if (pg->next)
        pg->next->prev = pg;
    h->holes[b] = pg;
    pg->hbin = (uint8_t)b;
}

static uint16_t hole_maxrun(const uint8_t *st, uint32_t cap)
{
    uint32_t best = 0, run = 0;
    for (uint32_t i = 0; i < cap; i++) {
        run = st[i] == HS_FREE ? run + 1 : 0;
        if (run > best)
            best = run;
    }
    return (uint16_t)(best < UINT16_MAX ? best : UINT16_MAX);
}

/* Free after HOLE_NOTIFY more frees, or when the page empties. */
static void hole_arm(struct zkm_page *pg)
{
    uint32_t used = zkm__page_used(pg);
    zkm__page_set_notify(pg, used > HOLE_NOTIFY ? used - HOLE_NOTIFY : 0);
}

/* The blocks freed into pg since the last look go into its array. A medium block's bytes
 * beyond its first block leave the heap's count here (its free counted one block). */
static void hole_absorb(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg)
{
    uint8_t *st = hole_state(s, pg), *base = zkm__page_start(s, pg);
    struct zkm_block *b = pg->free;
    pg->free = NULL;
    while (b) {
        struct zkm_block *next = b->next;
        uint32_t i = (uint32_t)(((uint8_t *)b - base) / pg->block_size);
        uint8_t v = i * pg->block_size == pg->hmeta ? HS_FREE : st[i]; /* the array: never */
        if (v == HS_PINNED) {
            st[i] = HS_FREE;
        } else {
            zkm_assert_internal(v >= 1 && v <= HS_LEN_MAX); /* else a double free */
            if (v >= 1 && v <= HS_LEN_MAX) {
                memset(st + i, HS_FREE, v);
                pg->hchunks--;
                h->c_bytes -= (int64_t)(v - 1) * pg->block_size;
            }
        }
        b = next;
    }
    pg->hmaxrun = hole_maxrun(st, pg->capacity);
}

/* A medium block of need host blocks from the shortest of pg's runs that hold it (the
 * long ones stay for long requests). The same pass finds the two longest runs, which give
 * the page's longest run after the cut. */
static void *hole_take(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg, uint32_t need)
{
    uint8_t *st = hole_state(s, pg);
    uint32_t run = 0, best = UINT32_MAX, start = 0, max1 = 0, max1_at = 0, max2 = 0;
    for (uint32_t i = 0; i <= pg->capacity; i++) {
        if (i < pg->capacity && st[i] == HS_FREE) {
            run++;
            continue;
        }
        if (run >= need && run < best) {
            best = run;
            start = i - run;
        }
        if (run > max1) {
            max2 = max1;
            max1 = run;
            max1_at = i - run;
        } else if (run > max2) {
            max2 = run;
        }
        run = 0;
    }
    zkm_assert_internal(best != UINT32_MAX);
    memset(st + start + 1, HS_INSIDE, need - 1);
    st[start] = (uint8_t)need;
    pg->hchunks++;
    page_used_add(pg, 1);
    hole_arm(pg);
    uint32_t rest = best - need, longest = start == max1_at ? (max2 > rest ? max2 : rest) : max1;
    pg->hmaxrun = (uint16_t)(longest < UINT16_MAX ? longest : UINT16_MAX);
    zkm_assert_expensive(pg->hmaxrun == hole_maxrun(st, pg->capacity));
    hole_rebin(h, pg);
    ZKM_COUNT(hole_allocs, 1);
    return zkm__page_start(s, pg) + (size_t)start * pg->block_size;
}

/* A block of size bytes from the heap's HOLES pages: a few of the bin where it may fit,
 * then the first page of a larger bin (where it fits). NULL if none has a run for it. */
static void *hole_alloc(struct zkm_heap *h, uint32_t size)
{
    for (unsigned b = hole_bin_of(size); b < ZKM_HOLE_BINS; b++) {
        unsigned tries = 0;
        for (struct zkm_page *pg = h->holes[b], *next; pg && tries < HOLE_TRIES; pg = next) {
            next = pg->next;
            tries++;
            struct zkm_shdr *s = slab_of_page(pg);
            if (pg->free) {
                hole_absorb(h, s, pg);
                hole_rebin(h, pg);
            }
            uint32_t need = (size + pg->block_size - 1) / pg->block_size;
            if (pg->hmaxrun >= need && need <= HS_LEN_MAX)
                return hole_take(h, s, pg, need);
        }
    }
    return NULL;
}

/* Make pg (queued, of a host class) a HOLES page; false, and pg left as it was, when no
 * run of its free blocks can hold its array. */
static bool hole_convert(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg)
{
    enum { CAP_MAX = (16u << ZKM_UNIT_SHIFT) / ZKM_HOLE_HOST_MIN + 1 };
    uint64_t map[(CAP_MAX + 63) / 64];
    uint32_t cap = pg->capacity, bs = pg->block_size;
    if (cap > CAP_MAX)
        return false;
    memset(map, 0, ((cap + 63) / 64) * sizeof(map[0]));
    uint8_t *base = zkm__page_start(s, pg);
    for (struct zkm_block *b = pg->free; b; b = b->next) {
        uint32_t i = (uint32_t)(((uint8_t *)b - base) / bs);
        map[i / 64] |= 1ull << (i % 64);
    }
    for (uint32_t i = pg->carved; i < cap; i++) /* never carved: free */
        map[i / 64] |= 1ull << (i % 64);
    uint32_t meta = (cap + bs - 1) / bs, run = 0, at = cap;
    for (uint32_t i = 0; i < cap; i++) {
        run = (map[i / 64] >> (i % 64)) & 1 ? run + 1 : 0;
        if (run == meta) {
            at = i + 1 - meta;
            break;
        }
    }
    if (at == cap)
        return false;
    uint8_t *st = base + (size_t)at * bs;
    for (uint32_t i = 0; i < cap; i++)
        st[i] = (map[i / 64] >> (i % 64)) & 1 ? HS_FREE : HS_PINNED;
    memset(st + at + 1, HS_INSIDE, meta - 1);
    st[at] = (uint8_t)meta; /* the array itself: a block that is never freed */
    queue_del(h, pg);
    pg->free = NULL;
    pg->carved = (uint16_t)cap; /* the state array says what is free from now on */
    pg->hmeta = at * bs;
    pg->hchunks = 0;
    pg->hbin = ZKM_HOLE_NONE;
    pg->hmaxrun = hole_maxrun(st, cap);
    page_state(pg, ZKM_PAGE_HOLES);
    memset(&s->ring_of[pg->start], 0, pg->units); /* its blocks have no class size now */
    __atomic_store_n(&pg->holes, 1, __ATOMIC_RELEASE);
    hole_arm(pg);
    hole_rebin(h, pg);
    ZKM_COUNT(hole_pages, 1);
    return true;
}

/* Turn sparse queued pages of the host classes into HOLES pages until one has a run of
 * size bytes (HOLE_SCAN pages looked at; the others go to the back of their queue). Each
 * call starts at the class after the one the last call ended in, so that a long queue of
 * busy pages in one class does not hide the sparse pages of the others. */
static bool hole_grow(struct zkm_heap *h, uint32_t size)
{
    unsigned hi = zkm__class_of(ZKM_HOLE_HOST_MAX), n = hi + 1 - zkm__class_of(ZKM_HOLE_HOST_MIN);
    unsigned start = h->hole_cls % n, looked = 0, k = 0;
    for (; k < n && looked < HOLE_SCAN; k++) { /* the largest blocks (longest runs) first */
        unsigned c = hi - (start + k) % n;
        struct zkm_page *head = h->queue[c];
        for (struct zkm_page *pg = head, *next; pg && looked < HOLE_SCAN; pg = next) {
            next = pg->next;
            looked++;
            struct zkm_shdr *s = slab_of_page(pg);
            if (zkm__page_used(pg) * 4 <= pg->capacity && hole_convert(h, s, pg)) {
                if ((uint32_t)pg->hmaxrun * pg->block_size >= size) {
                    h->hole_cls = (start + k) % n; /* this class had some: again first */
                    return true;
                }
            } else if (pg->next) { /* not sparse, or no room for the array: to the back */
                queue_del(h, pg);
                queue_push(h, pg);
            }
            if (next == head)
                break;
        }
    }
    h->hole_cls = (start + k) % n;
    return false;
}

/* HOLES page pg got frees (notify) or lost its last block. */
static void hole_check(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg,
                       struct zkm_shdr *pin)
{
    if (zkm__page_used(pg) == 0) {
        hole_unbin(h, pg);
        span_release(h, s, pg, pin);
        return;
    }
    hole_absorb(h, s, pg);
    hole_arm(pg);
    hole_rebin(h, pg);
}

/* ---- the large-span cache ----------------------------------------------------------------
 * A freed large span of up to ZKM_LCACHE_UNITS units stays whole, in its slab, on a LIFO of
 * its size: the next request of that size takes it back without searching the slabs' free
 * maps and rebinning twice, and gets the span that was just written (still in cache).
 * zkbench touch (64 B..64 KiB, every byte written) spent 11% of its time in span_find,
 * span_search_in, slab_rebin and span_take. Bounded (ZKM_LCACHE_DEPTH per size), emptied
 * before the heap grows, at the first refresh with nothing taken since the one before,
 * and when the heap is abandoned; a span whose slab is being drained is not reused. */
static bool lcache_put(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg)
{
    unsigned k = pg->units - 1u;
    if (pg->cls != ZKM_CLASS_LARGE || k >= ZKM_LCACHE_UNITS || h->lcache_n[k] == ZKM_LCACHE_DEPTH ||
        s->n_pages - s->n_lcached <= 1 || zkm__pool_draining(s))
        return false; /* (the last page in use of its slab: see lcache_evict) */
    s->n_lcached++;
    pg->free = NULL; /* the block its free pushed: the span is one block */
    pg->zeroed = 0;
    page_state(pg, ZKM_PAGE_LCACHED);
    h->lcache[k][h->lcache_n[k]++] = pg;
    return true;
}

/* pg, just taken off its LIFO, is no longer kept: an in-use span again (FULL, one block). */
static void lcache_unkeep(struct zkm_page *pg)
{
    slab_of_page(pg)->n_lcached--;
    page_state(pg, ZKM_PAGE_FULL);
}

/* A kept span's units back to its slab. */
static void lcache_drop(struct zkm_heap *h, struct zkm_page *pg)
{
    lcache_unkeep(pg);
    span_release(h, slab_of_page(pg), pg, NULL);
}

/* The spans kept from slab s, the only pages it still holds, back to it (span_free: the
 * caller, slab_release_if_empty, sees to the slab). Kept spans must never keep a slab that
 * would otherwise go: an idle thread refreshes nothing and would hold it for good. */
static void lcache_evict(struct zkm_heap *h, struct zkm_shdr *s)
{
    for (unsigned k = 0; k < ZKM_LCACHE_UNITS; k++) {
        unsigned kept = 0;
        for (unsigned i = 0; i < h->lcache_n[k]; i++) {
            struct zkm_page *pg = h->lcache[k][i];
            if (slab_of_page(pg) != s) {
                h->lcache[k][kept++] = pg; /* order kept: still LIFO */
                continue;
            }
            lcache_unkeep(pg);
            span_free(h, s, pg);
        }
        h->lcache_n[k] = (uint8_t)kept;
    }
    zkm_assert_internal(s->n_lcached == 0);
}

static void lcache_flush(struct zkm_heap *h)
{
    for (unsigned k = 0; k < ZKM_LCACHE_UNITS; k++)
        while (h->lcache_n[k])
            lcache_drop(h, h->lcache[k][--h->lcache_n[k]]);
}

static struct zkm_page *lcache_take(struct zkm_heap *h, unsigned units)
{
    unsigned k = units - 1u;
    while (h->lcache_n[k]) {
        struct zkm_page *pg = h->lcache[k][--h->lcache_n[k]];
        if (!zkm__pool_draining(slab_of_page(pg))) {
            lcache_unkeep(pg);
            h->lcache_taken = 1;
            return pg;
        }
        lcache_drop(h, pg); /* the compactor wants its slab empty */
    }
    return NULL;
}

void zkm__heap_lcache_refresh(struct zkm_heap *h)
{
    if (!h->lcache_taken)
        lcache_flush(h);
    h->lcache_taken = 0;
}

/* After blocks came back to pg (locally or collected): move it to its right state. */
static void page_check(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg,
                       struct zkm_shdr *pin)
{
    switch (pg->state) {
    case ZKM_PAGE_QUEUED:
        if (zkm__page_used(pg) == 0) {
            queue_del(h, pg);
            span_release(h, s, pg, pin);
        }
        break;
    case ZKM_PAGE_FULL:
        if (zkm__page_used(pg) == 0 && !lcache_put(h, s, pg))
            span_release(h, s, pg, pin);
        else if (pg->cls != ZKM_CLASS_LARGE && page_has_free(pg))
            queue_push(h, pg);
        break;
    case ZKM_PAGE_HOLES:
        hole_check(h, s, pg, pin);
        break;
    case ZKM_PAGE_CURRENT: /* armed by slab_retire_current */
        if (zkm__page_used(pg) == 0) {
            zkm__page_set_notify(pg, ZKM_NOTIFY_NEVER);
            slab_maybe_release(h, s, pin);
        }
        break;
    default:
        break;
    }
}

void zkm__page_notify(struct zkm_heap *h, struct zkm_page *pg)
{
    if (pg->cls == ZKM_CLASS_LARGE) /* its inline free counted the op, not the bytes */
        h->c_bytes -= (int64_t)pg->block_size;
    page_verify(slab_of_page(pg), pg);
    page_check(h, slab_of_page(pg), pg, NULL);
}

void zkm__heap_free_local(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg, void *p)
{
    struct zkm_block *b = p;
    b->next = pg->free;
    pg->free = b;
    page_used_add(pg, (uint32_t)-1);
    if (pg->left == 0) /* used reached notify_at */
        page_check(h, s, pg, NULL);
}

/* Blocks other threads freed into pg (the xfree lists of its units: a large span's only
 * block is at its first) onto its free list; their bytes leave the heap's count here.
 * Returns how many. */
static uint32_t page_take_remote(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg)
{
    uint32_t n = 0;
    unsigned end = pg->start + (pg->cls == ZKM_CLASS_LARGE ? 1u : pg->units);
    for (unsigned u = pg->start; u < end; u++) {
        if (!atomic_load_explicit(&s->xfree[u], memory_order_relaxed))
            continue;
        struct zkm_block *b = atomic_exchange_explicit(&s->xfree[u], NULL, memory_order_acquire);
        if (!b)
            continue;
        struct zkm_block *t = b;
        n++;
        while (t->next) {
            t = t->next;
            n++;
        }
        t->next = pg->free;
        pg->free = b;
    }
    zkm_assert_internal(n <= zkm__page_used(pg));
    page_used_add(pg, -n);
    h->c_bytes -= (int64_t)n * pg->block_size;
    return n;
}

/* Blocks other threads freed into pg: take them all, free them locally. */
static uint32_t page_collect(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg,
                             struct zkm_shdr *pin)
{
    uint32_t n = page_take_remote(h, s, pg);
    if (n)
        page_check(h, s, pg, pin);
    return n;
}

/* The buffers of pointers other threads queued on s: free each block locally, hand each
 * buffer back; returns how many blocks. check: move pages to their states as blocks come
 * back (the slab pinned: it cannot empty while pointers remain, and must not leave under
 * this loop); adoption passes false and rebuilds every page's state itself. */
static uint64_t slab_take_xbatch(struct zkm_heap *h, struct zkm_shdr *s, bool check)
{
    if (!atomic_load_explicit(&s->xbatch, memory_order_relaxed))
        return 0;
    struct zkm_xbuf *b = atomic_exchange_explicit(&s->xbatch, NULL, memory_order_acquire);
    uint64_t got = 0;
    while (b) {
        struct zkm_xbuf *next = b->next;
        uint32_t n = b->n;
        for (uint32_t i = 0; i < n; i++) {
            struct zkm_block *blk = b->p[i];
            struct zkm_page *pg = zkm__page_of(s, blk);
            blk->next = pg->free;
            pg->free = blk;
            page_used_add(pg, (uint32_t)-1);
            h->c_bytes -= (int64_t)pg->block_size;
            if (check && (pg->left == 0 || pg->state == ZKM_PAGE_FULL || zkm__page_used(pg) == 0))
                page_check(h, s, pg, s);
        }
        got += n;
        atomic_store_explicit(&b->state, ZKM_XBUF_FREE, memory_order_release); /* b is done */
        b = next;
    }
    return got;
}

static void slab_collect(struct zkm_heap *h, struct zkm_shdr *s)
{
    uint64_t got = 0;
    atomic_exchange_explicit(&s->pending, 0, memory_order_acq_rel);
    got += slab_take_xbatch(h, s, true);
    for (unsigned u = 1; u < ZKM_UNITS;) {
        if ((s->freemap[u >> 6] >> (u & 63)) & 1) {
            u++;
            continue;
        }
        struct zkm_page *pg = &s->pages[u];
        unsigned n = pg->units;
        got += page_collect(h, s, pg, s);
        u += n;
    }
    if (got)
        ZKM_COUNT(remote_collected, got);
    slab_maybe_release(h, s, NULL);
}

void zkm__heap_fold(struct zkm_heap *h)
{
    for (unsigned r = 1; r <= ZKM_RING_CLASSES; r++)
        zkm__ring_fold(h, r);
    for (struct zkm_shdr *s = h->slabs; s; s = s->hnext)
        for (unsigned u = next_used(s, 1); u < ZKM_UNITS; u = next_used(s, u + s->pages[u].units))
            zkm__page_fold(h, &s->pages[u]);
}

void zkm__heap_collect(struct zkm_heap *h, bool all)
{
    if (!atomic_exchange_explicit(&h->remote_hint, 0, memory_order_acquire) && !all)
        return;
    for (struct zkm_shdr *s = h->slabs, *nx; s; s = nx) {
        nx = s->hnext; /* collecting s may detach s, never another slab */
        if (all || atomic_load_explicit(&s->pending, memory_order_relaxed))
            slab_collect(h, s);
    }
}

/* ---- thread-cache rings (alloc.h point 9) ------------------------------------------------ */

/* Ring r's pops and pushes since its last fold into the heap's counts: its blocks are of
 * class r - 1's size (a ring only ever holds blocks of class pages). */
void zkm__ring_fold(struct zkm_heap *h, unsigned r)
{
    struct zkm_ring *rg = &h->ring[r];
    uint32_t a = rg->hd - h->ring_hd0[r], f = rg->tl - h->ring_tl0[r];
    if (!a && !f)
        return;
    h->ring_hd0[r] = rg->hd;
    h->ring_tl0[r] = rg->tl;
    size_t bs = zkm__class_size(r - 1);
    h->c_alloc += a;
    h->c_free += f;
    h->c_tier[bs <= zkm__g.small_threshold ? ZKM_TIER_SMALL : ZKM_TIER_MEDIUM] += a;
    h->c_bytes += ((int64_t)a - (int64_t)f) * (int64_t)bs;
}

/* Block q, taken out of a ring, back onto its page (not an operation: the caller moves hd0). */
static inline void ring_give_back(struct zkm_heap *h, void *q)
{
    struct zkm_shdr *s = slab_of_page(q);
    zkm__heap_free_local(h, s, zkm__page_of(s, q), q);
}

/* The oldest k blocks of ring r back to their pages (not operations: hd0 moves along). */
static void ring_flush_oldest(struct zkm_heap *h, unsigned r, uint32_t k)
{
    struct zkm_ring *rg = &h->ring[r];
    zkm_assert_internal(k <= rg->tl - rg->hd);
    uint32_t hd = rg->hd;
    rg->hd = hd + k;
    h->ring_hd0[r] += k;
    for (uint32_t i = hd; i != hd + k; i++)
        ring_give_back(h, h->rslot[r][i % ZKM_RING_SLOTS]);
}

/* Free of p found ring r full, or off. A class that frees without allocating (no pop
 * since the ring last overflowed: a program letting go of its objects) turns its ring off
 * until its next page refill (zkm__heap_alloc_class), and its frees go to their pages, so
 * that what it let go of can leave with its pages and slabs; otherwise the oldest half goes
 * back to their pages and p is pushed. */
void zkm__ring_overflow(struct zkm_heap *h, unsigned r, void *p)
{
    struct zkm_ring *rg = &h->ring[r];
    h->slow_calls++;
    if (h->ring_cap[r] && rg->hd != h->ring_ovf[r]) {
        /* down to half the capacity (more than half of a ring whose capacity came down) */
        ring_flush_oldest(h, r, rg->tl - rg->hd - h->ring_cap[r] / 2u);
        h->ring_ovf[r] = rg->hd;
    } else {
        h->ring_cap[r] = 0;                       /* on again at the class's next page refill */
        ring_flush_oldest(h, r, rg->tl - rg->hd); /* (p's slot may be the oldest's) */
    }
    h->rslot[r][rg->tl % ZKM_RING_SLOTS] = p; /* counted as a push, then flushed if off */
    if (++rg->tl % ZKM_RING_TICK == 0)
        zkm__ring_tick(h, r);
    if (!h->ring_cap[r])
        ring_flush_oldest(h, r, rg->tl - rg->hd);
}

/* Give every ring's blocks back to their pages, or only those in slabs being drained
 * (the others keep their order). */
void zkm__ring_flush_all(struct zkm_heap *h, bool draining_only)
{
    for (unsigned r = 1; r <= ZKM_RING_CLASSES; r++) {
        struct zkm_ring *rg = &h->ring[r];
        if (!draining_only) {
            ring_flush_oldest(h, r, rg->tl - rg->hd);
            continue;
        }
        uint32_t w = rg->tl; /* kept blocks are moved up to end at tl */
        for (uint32_t i = rg->tl; i != rg->hd;) {
            void *q = h->rslot[r][--i % ZKM_RING_SLOTS];
            if (!zkm__pool_draining(slab_of_page(q)))
                h->rslot[r][--w % ZKM_RING_SLOTS] = q;
            else
                ring_give_back(h, q);
        }
        h->ring_hd0[r] += w - rg->hd;
        rg->hd = w;
    }
}

/* ---- finding units --------------------------------------------------------------------- */

/* n units in the fullest slab (fewest free units) that has them, passing over slabs being
 * drained if asked. O(non-empty bins) for single units; a fragmented slab costs one
 * span_find. */
static struct zkm_page *span_search_in(struct zkm_heap *h, unsigned n, unsigned align_u, int node,
                                       bool skip_drained)
{
    if (n > ZKM_UNITS - 1)
        return NULL;
    u128 m = map_get(h->binmap) & range_mask(n, ZKM_UNITS - n);
    while (m) {
        unsigned b = ctz128(m);
        for (struct zkm_shdr *s = h->bins[b]; s; s = s->next) {
            if ((node >= 0 && s->node != node) || (skip_drained && zkm__pool_draining(s)))
                continue;
            int start = span_find(s, n, align_u);
            if (start >= 0)
                return span_take(h, s, (unsigned)start, n);
        }
        m &= m - 1;
    }
    return NULL;
}

static struct zkm_page *span_search(struct zkm_heap *h, unsigned n, unsigned align_u, int node)
{
    return span_search_in(h, n, align_u, node, false);
}

/* Take over an abandoned slab: collect every page and rebuild this heap's queues. */
static void heap_adopt(struct zkm_heap *h, struct zkm_shdr *s)
{
    atomic_store_explicit(&s->owner, h, memory_order_release);
    atomic_exchange_explicit(&s->pending, 0, memory_order_acq_rel);
    slab_attach(h, s);
    slab_take_xbatch(h, s, false); /* the loop below gives every page its state */
    for (unsigned u = 1; u < ZKM_UNITS;) {
        if ((s->freemap[u >> 6] >> (u & 63)) & 1) {
            u++;
            continue;
        }
        struct zkm_page *pg = &s->pages[u];
        unsigned n = pg->units;
        page_take_remote(h, s, pg);
        pg->next = pg->prev = NULL;
        if (pg->state == ZKM_PAGE_HOLES) {
            pg->hbin = ZKM_HOLE_NONE;
            hole_check(h, s, pg, s); /* releases it at used 0, else into h's bins */
        } else if (zkm__page_used(pg) == 0) {
            page_state(pg, ZKM_PAGE_FULL); /* not in a queue: release just frees the units */
            span_release(h, s, pg, s);
        } else if (pg->cls != ZKM_CLASS_LARGE && page_has_free(pg)) {
            queue_push(h, pg);
        } else {
            page_state(pg, ZKM_PAGE_FULL);
            zkm__page_set_notify(pg, pg->capacity - 1);
        }
        u += n;
    }
    slab_maybe_release(h, s, NULL);
}

/* Before the heap grows, the blocks remote frees sent back: the slabs marked pending, and
 * once per nslabs/8 growths every page of every slab, for pushes that raced with a
 * collection (alloc.h, point 4). */
static void collect_before_grow(struct zkm_heap *h)
{
    if (++h->grows_since_sweep * 8 >= h->nslabs) {
        h->grows_since_sweep = 0;
        ZKM_COUNT(sweeps, 1);
        zkm__heap_collect(h, true);
    } else {
        zkm__heap_collect(h, false);
    }
}

/* n units aligned to align_u units on `node` (-1: any of the heap's slabs). */
static struct zkm_page *span_alloc(struct zkm_heap *h, unsigned n, unsigned align_u, int node)
{
    struct zkm_page *pg = span_search(h, n, align_u, node);
    if (pg)
        return pg;
    if (h->nslabs) {
        lcache_flush(h);        /* kept spans are free units for this request */
        collect_before_grow(h); /* never grow while remote frees wait */
        if ((pg = span_search(h, n, align_u, node)))
            return pg;
    }
    if (node < 0)
        h->node = zkm__source_local_node(); /* draw from the node the thread runs on now */
    int want = node >= 0 ? node : h->node;
    retire_check_wasted(h);
    for (int tries = 0; tries < 1024; tries++) {
        struct zkm_shdr *s;
        bool adopted;
        if (zkm__pool_slab_get(want, &s, &adopted) != 0)
            return NULL;
        if (adopted) {
            heap_adopt(h, s);
            if ((pg = span_search(h, n, align_u, node)))
                return pg;
            continue;
        }
        slab_attach(h, s);
        int start = span_find(s, n, align_u);
        zkm_assert_internal(start >= 0);
        if (start >= 0)
            return span_take(h, s, (unsigned)start, n);
    }
    return NULL;
}

/* ---- allocation ------------------------------------------------------------------------- */

static unsigned class_units(unsigned cls)
{
    return __atomic_load_n(&zkm__g.class_units[cls], __ATOMIC_RELAXED); /* tunables change it */
}

/* Link the page's next uncarved blocks onto its (empty) free list: those that start in the
 * 4 KiB page where the first of them starts, at least one. A page's blocks are linked as they
 * are needed, not when the page is made (mimalloc's page extension): linking writes a word
 * into every block, which makes a slab of 4 KiB pages (start slabs, local memory) resident
 * as far as it goes, and for hugetlb slabs writes cache lines long before they are used. A
 * 16-unit page of 1 KiB blocks that holds three objects keeps 4 KiB resident, not 256. */
static void page_extend(struct zkm_page *pg)
{
    zkm_assert_internal(pg->free == NULL && pg->carved < pg->capacity);
    uint32_t bs = pg->block_size, first = pg->carved;
    size_t off = (size_t)first * bs, end = (off | 4095u) + 1;
    uint32_t last = (uint32_t)((end - 1) / bs); /* the last block that starts before end */
    if (last >= pg->capacity)
        last = pg->capacity - 1u;
    uint8_t *base = zkm__page_start(slab_of_page(pg), pg);
    for (uint32_t i = first; i < last; i++)
        ((struct zkm_block *)(base + (size_t)i * bs))->next =
            (struct zkm_block *)(base + (size_t)(i + 1) * bs);
    ((struct zkm_block *)(base + (size_t)last * bs))->next = NULL;
    pg->free = (struct zkm_block *)(base + off);
    pg->carved = (uint16_t)(last + 1u);
}

/* Make the span pg a page of class cls, its first blocks linked (page_extend). */
static struct zkm_page *page_carve(struct zkm_page *pg, unsigned cls)
{
    struct zkm_shdr *s = slab_of_page(pg);
    for (unsigned u = pg->start + 1u; u < pg->start + pg->units; u++)
        s->unit_page[u] = pg; /* its blocks are anywhere in its units (span_take) */
    size_t bs = zkm__class_size(cls);
    pg->cls = (uint8_t)cls;
    pg->block_size = (uint32_t)bs;
    pg->capacity = (uint16_t)(((size_t)pg->units << ZKM_UNIT_SHIFT) / bs);
    pg->carved = 0;
    pg->free = NULL;
    zkm__page_set_used(pg, 0);
    pg->used_base = 0;
    page_extend(pg);
    return pg; /* (ring_of: where it becomes current, zkm__heap_alloc_class) */
}

/* Units of the heap's next page of class cls: the class's target, or 2^k units for its
 * k-th page if that is less (alloc.h point 3), and always room for one block. */
static unsigned page_units(const struct zkm_heap *h, unsigned cls)
{
    unsigned units = class_units(cls), k = h->pages_made[cls];
    if (k < 16 && units > (1u << k)) {
        unsigned min = (unsigned)((zkm__class_size(cls) + ZKM_UNIT_SIZE - 1) >> ZKM_UNIT_SHIFT);
        units = (1u << k) > min ? 1u << k : min;
    }
    return units;
}

/* Make the span pg a page of class cls, one more of the heap's ramp. */
static struct zkm_page *page_made(struct zkm_heap *h, struct zkm_page *pg, unsigned cls)
{
    if (h->pages_made[cls] < 16)
        h->pages_made[cls]++;
    return page_carve(pg, cls);
}

static struct zkm_page *page_new(struct zkm_heap *h, unsigned cls)
{
    struct zkm_page *pg = span_alloc(h, page_units(h, cls), 1, -1);
    return pg ? page_made(h, pg, cls) : NULL;
}

#define DRAIN_LOOKAHEAD 4 /* queued pages looked at past a head in a draining slab */

/* The head of class cls's queue, pg, sits in a slab the daemon asked to drain: a queued
 * page of another slab (among the next few), else a new page in a slab not drained, else
 * pg after all. Out of line: off the refill path while nothing is drained. */
static ZKM_NOINLINE struct zkm_page *queue_pick_drain(struct zkm_heap *h, unsigned cls,
                                                      struct zkm_page *pg)
{
    if (zkm__pool_draining(slab_of_page(pg))) {
        struct zkm_page *q = pg->next;
        for (int i = 0; q && i < DRAIN_LOOKAHEAD; q = q->next, i++) {
            if (!zkm__pool_draining(slab_of_page(q))) {
                queue_del(h, q);
                return q;
            }
        }
        struct zkm_page *np = span_search_in(h, page_units(h, cls), 1, -1, true);
        if (np)
            return page_made(h, np, cls);
    }
    queue_del(h, pg);
    return pg;
}

/* The page to refill class cls from: the head of its queue (draining aside); NULL when
 * the queue is empty. */
static inline struct zkm_page *queue_pick(struct zkm_heap *h, unsigned cls)
{
    struct zkm_page *pg = h->queue[cls];
    if (!pg)
        return NULL;
    if (zkm_unlikely(zkm__pool_drain_on()))
        return queue_pick_drain(h, cls, pg);
    queue_del(h, pg);
    return pg;
}

/* Class cls's queue is empty (a request that holes serve, alignment 16 at most): a block
 * from a HOLES page that has room; else a new page in the heap's free units (NULL, *ret_pg
 * set); else, before the heap takes a slab, from sparse host pages made HOLES pages now. */
static ZKM_NOINLINE void *hole_refill(struct zkm_heap *h, unsigned cls, uint32_t size,
                                      struct zkm_page **ret_pg)
{
    void *p = hole_alloc(h, size);
    if (p)
        return p;
    struct zkm_page *np = span_search(h, page_units(h, cls), 1, -1);
    if (np) {
        *ret_pg = page_made(h, np, cls);
        return NULL;
    }
    if (hole_grow(h, size))
        p = hole_alloc(h, size);
    return p;
}

void *zkm__heap_alloc_class(struct zkm_heap *h, unsigned cls, size_t n, size_t align)
{
    struct zkm_page *pg = h->cur[cls];
    if (zkm_likely(pg->free != NULL))
        goto pop;
    h->slow_calls++;
    h->c_miss++;
    if (cls < ZKM_RING_CLASSES) /* the class allocates: its ring is on (zkm__ring_overflow) */
        h->ring_cap[cls + 1] = zkm__ring_cap_global(cls + 1);
    if (atomic_load_explicit(&h->remote_hint, memory_order_relaxed)) {
        zkm__heap_collect(h, false);
        pg = h->cur[cls];
        if (pg->free)
            goto pop;
    }
    if (pg->carved < pg->capacity) {
        page_extend(pg);
        goto pop;
    }
    if (pg != &page_empty) {
        page_verify(slab_of_page(pg), pg);
        page_state(pg, ZKM_PAGE_FULL);
        zkm__page_set_notify(pg, pg->capacity - 1);
        if (zkm__page_used(pg) == 0) /* everything came back remotely and was collected */
            span_release(h, slab_of_page(pg), pg, NULL);
    }
    pg = queue_pick(h, cls);
    if (!pg && n >= ZKM_HOLE_MIN && n <= ZKM_HOLE_MAX && align <= 16) {
        void *p = hole_refill(h, cls, (uint32_t)n, &pg);
        if (p) {
            h->cur[cls] = &page_empty;
            return p;
        }
    }
    if (!pg) {
        pg = page_new(h, cls);
        if (!pg) {
            h->cur[cls] = &page_empty;
            return NULL;
        }
    }
    if (!pg->free)
        page_extend(pg); /* a queued page with only uncarved blocks (adopted) */
    page_state(pg, ZKM_PAGE_CURRENT);
    zkm__page_set_notify(pg, ZKM_NOTIFY_NEVER);
    if (cls < ZKM_RING_CLASSES) { /* its frees go to the class's ring (point 9), unless the
                                   * tcache target turned the ring off */
        uint8_t r = zkm__ring_cap_global(cls + 1) ? (uint8_t)(cls + 1) : 0;
        uint8_t *ring_of = &slab_of_page(pg)->ring_of[pg->start];
        if (*ring_of != r)
            memset(ring_of, r, pg->units);
    }
    h->cur[cls] = pg;
pop:;
    struct zkm_block *b = pg->free;
    pg->free = b->next;
    page_used_add(pg, 1); /* counted by the caller */
    return b;
}

/* n units at the start of a free run of at least n + room units (fullest slab first), so
 * that the span can grow in place; NULL when no slab of the heap has such a run. */
static struct zkm_page *span_search_room(struct zkm_heap *h, unsigned n, unsigned room)
{
    unsigned want = n + room > ZKM_UNITS - 1 ? ZKM_UNITS - 1 : n + room;
    u128 m = map_get(h->binmap) & range_mask(want, ZKM_UNITS - want);
    while (m) {
        unsigned b = ctz128(m);
        for (struct zkm_shdr *s = h->bins[b]; s; s = s->next) {
            int start = span_find(s, want, 1);
            if (start >= 0)
                return span_take(h, s, (unsigned)start, n);
        }
        m &= m - 1;
    }
    return NULL;
}

void *zkm__heap_alloc_large(struct zkm_heap *h, size_t n, size_t align, int node, bool zero,
                            bool growing)
{
    unsigned units = (unsigned)zkm__span_units(n);
    unsigned align_u = align > ZKM_UNIT_SIZE ? (unsigned)(align >> ZKM_UNIT_SHIFT) : 1;
    h->slow_calls++;
    if (atomic_load_explicit(&h->remote_hint, memory_order_relaxed))
        zkm__heap_collect(h, false);
    struct zkm_page *pg = NULL;
    if (units <= ZKM_LCACHE_UNITS && align_u == 1 && !growing && node < 0)
        pg = lcache_take(h, units);
    /* growing: the longest free run up to a whole slab, halving down to twice the size */
    for (unsigned want = ZKM_UNITS - 1; growing && !pg && want >= 2 * units; want /= 2)
        pg = span_search_room(h, units, want - units);
    if (!pg)
        pg = span_alloc(h, units, align_u, node);
    if (!pg)
        return NULL;
    pg->cls = ZKM_CLASS_LARGE;
    pg->block_size = units << ZKM_UNIT_SHIFT;
    pg->asked = (uint32_t)n;
    pg->capacity = pg->carved = 1;
    zkm__page_set_used(pg, 1);
    page_state(pg, ZKM_PAGE_FULL);
    zkm__page_set_notify(pg, 0);
    uint8_t *p = zkm__page_start(slab_of_page(pg), pg);
    if (zero && !(pg->zeroed && slab_of_page(pg)->kind == ZKM_SLAB_PAGES))
        memset(p, 0, n);
    return p;
}

bool zkm__heap_resize_large(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg, size_t n)
{
    unsigned units = (unsigned)zkm__span_units(n);
    unsigned start = pg->start, cur = pg->units;
    if (units == cur) {
        pg->asked = (uint32_t)n;
        return true;
    }
    if (units < cur) {
        map_put(s->freemap, map_get(s->freemap) | range_mask(start + units, cur - units));
        s->free_units += cur - units;
        slab_rebin(h, s);
    } else {
        /* growth takes up to twice the units when they are free: a span that grew is
         * likely to grow again (a 1.25x series to 1 MiB: 6 resizes instead of 17) */
        unsigned limit = next_used(s, start + cur) - start;
        if (units > limit)
            return false;
        if (units < 2 * cur)
            units = 2 * cur < limit ? 2 * cur : limit;
        u128 rm = range_mask(start + cur, units - cur);
        map_put(s->freemap, map_get(s->freemap) & ~rm);
        map_put(s->dirtymap, map_get(s->dirtymap) | rm);
        s->free_units -= units - cur;
        slab_rebin(h, s);
    }
    pg->units = (uint16_t)units;
    pg->block_size = units << ZKM_UNIT_SHIFT;
    pg->asked = (uint32_t)n;
    return true;
}

/* ---- remote frees ------------------------------------------------------------------------ */

/* Tell s's owner that remote frees are coming: before the push, because once they are
 * pushed the owner may free the whole slab. */
static void remote_announce(struct zkm_shdr *s)
{
    struct zkm_heap *owner = atomic_load_explicit(&s->owner, memory_order_relaxed);
    if (!atomic_load_explicit(&s->pending, memory_order_relaxed))
        atomic_store_explicit(&s->pending, 1, memory_order_relaxed);
    if (owner && !atomic_load_explicit(&owner->remote_hint, memory_order_relaxed))
        atomic_store_explicit(&owner->remote_hint, 1, memory_order_relaxed);
}

void zkm__free_remote(struct zkm_shdr *s, void *p)
{
    remote_announce(s);
    _Atomic(struct zkm_block *) *list = &s->xfree[((uintptr_t)p & ZKM_SLAB_MASK) >> ZKM_UNIT_SHIFT];
    struct zkm_block *b = p;
    struct zkm_block *old = atomic_load_explicit(list, memory_order_relaxed);
    do {
        b->next = old;
    } while (!atomic_compare_exchange_weak_explicit(list, &old, b, memory_order_release,
                                                    memory_order_relaxed));
}

/* A FREE buffer of h for remote frees into s, now OPEN; NULL when all are out. */
static struct zkm_xbuf *xbuf_take(struct zkm_heap *h, struct zkm_shdr *s)
{
    for (unsigned i = 0; i < ZKM_XBUFS; i++) {
        struct zkm_xbuf *b = &h->xbuf[i];
        if (atomic_load_explicit(&b->state, memory_order_acquire) != ZKM_XBUF_FREE)
            continue; /* (acquire: the collector's reads of it are over) */
        atomic_store_explicit(&b->state, ZKM_XBUF_OPEN, memory_order_relaxed);
        b->slab = s;
        b->n = 0;
        return b;
    }
    return NULL;
}

/* Queue b on its slab for the owner. */
static void xbuf_queue(struct zkm_xbuf *b)
{
    struct zkm_shdr *s = b->slab;
    atomic_store_explicit(&b->state, ZKM_XBUF_QUEUED, memory_order_relaxed);
    remote_announce(s);
    struct zkm_xbuf *old = atomic_load_explicit(&s->xbatch, memory_order_relaxed);
    do {
        b->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&s->xbatch, &old, b, memory_order_release,
                                                    memory_order_relaxed));
}

void zkm__free_remote_batched(struct zkm_heap *h, struct zkm_shdr *s, void *p)
{
    if (zkm_unlikely(!((uintptr_t)p & (ZKM_UNIT_SIZE - 1)))) {
        zkm__free_remote(s, p); /* maybe a whole large span: never held back */
        return;
    }
    unsigned k = (unsigned)((uintptr_t)s >> ZKM_SLAB_SHIFT) & (ZKM_XOPEN - 1);
    struct zkm_xbuf *b = h->xopen[k];
    if (zkm_unlikely(!b || b->slab != s)) {
        if (b) {
            xbuf_queue(b);
            h->xopen[k] = NULL;
        }
        /* every buffer is with an owner: the block itself, and the next ones too for a
         * while rather than look for a buffer each time */
        if (h->xskip) {
            h->xskip--;
            zkm__free_remote(s, p);
            return;
        }
        b = h->xopen[k] = xbuf_take(h, s);
        if (zkm_unlikely(!b)) {
            h->xskip = ZKM_XBUF_N;
            zkm__free_remote(s, p);
            return;
        }
    }
    b->p[b->n++] = p;
    if (zkm_unlikely(b->n == ZKM_XBUF_N)) {
        xbuf_queue(b);
        h->xopen[k] = NULL;
    }
}

void zkm__heap_flush_remote(struct zkm_heap *h)
{
    for (unsigned k = 0; k < ZKM_XOPEN; k++) {
        if (h->xopen[k]) {
            xbuf_queue(h->xopen[k]);
            h->xopen[k] = NULL;
        }
    }
}

/* ---- lifecycle --------------------------------------------------------------------------- */

void zkm__heap_reset(struct zkm_heap *h, int node)
{
    for (unsigned c = 0; c < ZKM_NCLASS; c++) {
        h->cur[c] = &page_empty;
        h->queue[c] = NULL;
    }
    for (unsigned b = 0; b < ZKM_HOLE_BINS; b++)
        h->holes[b] = NULL;
    h->hole_cls = 0;
    for (unsigned r = 0; r <= ZKM_RING_CLASSES; r++) /* abandon gave the blocks back */
        h->ring_cap[r] = zkm__ring_cap_global(r);
    memset(h->ring, 0, sizeof(h->ring));
    memset(h->ring_ovf, 0, sizeof(h->ring_ovf));
    memset(h->ring_hd0, 0, sizeof(h->ring_hd0));
    memset(h->ring_tl0, 0, sizeof(h->ring_tl0));
    memset(h->lcache_n, 0, sizeof(h->lcache_n)); /* abandon released the spans */
    h->lcache_taken = 0;
    h->grows_since_sweep = 0;
    h->sparse_delta = 0; /* abandon added it to the count */
    h->sampling = 0;
    atomic_store_explicit(&h->remote_hint, 0, memory_order_relaxed);
    h->slabs = NULL;
    h->binmap[0] = h->binmap[1] = 0;
    for (unsigned b = 0; b < ZKM_UNITS; b++)
        h->bins[b] = NULL;
    h->nslabs = 0;
    h->node = node;
    h->tun_gen = 0;
    h->slow_calls = h->next_refresh = 0;
    h->refreshes = h->generic_calls = 0;
    h->retire_gap = RETIRE_PERIOD;
    h->retired_at = h->retire_hold = 0;
    memset(h->pages_made, 0, sizeof(h->pages_made));
    memset(h->xopen, 0, sizeof(h->xopen)); /* (xbuf states stay: see alloc.h) */
    h->xskip = 0;
    h->ticks = 0;
    h->sampling = 0;
    h->c_alloc = h->c_free = h->c_miss = h->c_remote = 0;
    for (int t = 0; t < ZKM_NTIER; t++)
        h->c_tier[t] = 0;
    h->c_bytes = 0;
    h->flush_ns = 0;
}

void zkm__heap_abandon(struct zkm_heap *h)
{
    zkm__heap_flush_remote(h);
    zkm__ring_flush_all(h, false);
    zkm__heap_collect(h, true);
    lcache_flush(h);
    zkm__heap_flush_sparse(h);
    /* current pages that are empty are not worth handing over */
    for (unsigned c = 0; c < ZKM_NCLASS; c++) {
        struct zkm_page *pg = h->cur[c];
        h->cur[c] = &page_empty;
        if (pg == &page_empty)
            continue;
        page_state(pg, ZKM_PAGE_FULL); /* adoption rebuilds its state */
        zkm__page_set_notify(pg, pg->capacity - 1);
        if (zkm__page_used(pg) == 0)
            span_release(h, slab_of_page(pg), pg, NULL);
    }
    while (h->slabs) {
        struct zkm_shdr *s = h->slabs;
        slab_detach(h, s);
        if (s->free_units == ZKM_UNITS - 1)
            zkm__pool_slab_put(s);
        else
            zkm__pool_abandon(s);
    }
    for (unsigned c = 0; c < ZKM_NCLASS; c++)
        h->queue[c] = NULL;
    for (unsigned b = 0; b < ZKM_HOLE_BINS; b++)
        h->holes[b] = NULL; /* adoption rebins the HOLES pages */
}
