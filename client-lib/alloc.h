/* SPDX-License-Identifier: MIT */
/*
 * alloc.h - internals of the object allocator: size classes, slab/page layout, thread
 * heaps, and the inline fast paths of malloc and free.
 *
 * 1. Memory. Everything lives in 2 MiB slabs from the source (L3, source.h). A slab of
 *    kind PAGES is split into 128 units of 16 KiB; unit 0 holds the slab header
 *    (struct zkm_shdr: owner, unit bitmaps, one struct zkm_page per unit, and per unit a
 *    pointer to the page that holds it: free finds its page with one load). A page is a
 *    span of units that holds blocks of one size class, or one large object (class
 *    ZKM_CLASS_LARGE). A HUGE slab holds one object at offset 4 KiB; a DIRECT mapping
 *    (bigger than a slab) has the same header at its 2 MiB-aligned start. Any object's
 *    header is therefore at p & ~(2 MiB - 1) -- except DIRECT objects with an alignment
 *    of 2 MiB or more, whose header sits one slab lower (slab map value 2).
 *
 * 2. Slab map (pool.c). One byte per 2 MiB of the 47-bit address space (64 MiB of
 *    .bss, touched only where we have slabs: 4 KiB of map per 8 GiB of address space):
 *    0 not ours, 1 header at the chunk, 2 header one chunk lower. Written (relaxed
 *    atomic byte store) when a slab enters or leaves the process, read with one byte
 *    load on every free; a pointer that is not ours goes to the C library. A byte map
 *    rather than a bitmap: the free path is 3 instructions shorter.
 *
 * 3. L1, the thread heap (heap.c). Why mimalloc-style pages instead of DPDK-style
 *    pointer stacks: free must find the owner from the pointer alone (p & ~mask) to
 *    send cross-thread frees home, and a per-page free list makes both directions a
 *    single pointer pop/push with no copying of pointer batches between stacks; the
 *    thread's pages are its cache (tcache_small/tcache_medium size them), with a ring of
 *    block pointers per class in front of them (point 9).
 *      heap->cur[cls]   the page this thread allocates class cls from (state CURRENT)
 *      heap->queue[cls] other pages of cls with free blocks (state QUEUED)
 *      FULL pages are in no list; a free into one requeues it.
 *    malloc: TLS heap, class table, pop cur[cls]->free, one unlikely branch; whatever
 *    must go slow meets fast_max 0 or a page with no free block (heap.c page_empty). One
 *    path for every size up to fast_max: a per-heap table by words for requests up to
 *    1 KiB (mimalloc's pages_free_direct) saved 2 instructions on uniform small sizes but
 *    made the size test a coin toss for mixed ones (zkbench plan, log-uniform 8 B-8 KiB:
 *    +0.36 mispredicted branches per op under callgrind's branch simulation, 104 -> 76
 *    Mops/s), so it was taken out again.
 *    free: slab = p & ~mask, slab map byte, slab->owner == heap, push to page->free,
 *    `--left == 0`, used reached notify_at (one unlikely branch covers "a FULL page got a
 *    block back" and "a QUEUED page became empty": notify_at is capacity-1, 0, or never).
 *    Only the owning thread touches these fields: no atomics.
 *    Page sizes: a class's page holds tcache_small (128) or tcache_medium (64) blocks,
 *    between 1 and 16 units (16..256 KiB) and at least one block; a page's blocks are
 *    linked into its free list 4 KiB at a time as the free list runs dry (heap.c
 *    page_extend: a slab of 4 KiB pages stays resident only as far as it is used, and
 *    no line is written before it is needed). The daemon's tun.tcache_cap[0..1] replace the
 *    targets when its gen changes (unless ZKMEM_TCACHE_* set them): new pages only.
 *    A heap ramps up to that size: its k-th page of a class (k = 0, 1, ...) has at most
 *    2^k units, where k counts the pages made less the pages given back, so a class whose
 *    pages empty and go starts small again. A slab is resident as a whole (hugetlb), so a
 *    page is memory the moment it is carved; a program that uses many classes a little
 *    (Python's start-up: dozens of medium classes, a few objects each; zkbench touch:
 *    batches of 64 objects of 64 B-64 KiB) would otherwise hold up to 256 KiB per class.
 *    Holes (heap.c): a sparse page of a small class may become a HOLES page whose free runs
 *    serve medium requests; it is never current and never queued, and its free list only
 *    collects frees for the owner to read into the page's block array.
 *
 * 4. Remote frees. A thread that frees a block of a slab it does not own does not write
 *    into it: it appends the pointer to one of 8 buffers of its own heap (struct
 *    zkm_xbuf, 60 pointers, one slab each; up to 4 being filled), and queues a buffer on
 *    slab->xbatch (CAS, release) when it is full, when another slab needs its place, at
 *    the thread's refreshes (every 64th slow path), zkm_stats_snapshot and exit. The owner
 *    frees the pointers locally and sets the buffer FREE (release) for the freer to fill
 *    again. Writing a next pointer into each freed block, as intrusive lists do, moved every
 *    block's cache line to the freeing core and back (zkbench xthread). When all 8 buffers
 *    are out, and for a block at a unit's start (maybe a whole large span), the block is
 *    pushed as before: slab->xfree[unit of the block], never reading the page descriptor,
 *    which the owner's malloc writes. Either way the freer sets slab->pending and
 *    owner->remote_hint (relaxed stores) before the push, so it never touches the slab
 *    after the blocks are visible to the owner (who might free the slab). The owner, in its
 *    slow path, sees remote_hint, exchanges the pending flags of its slabs, their xbatch
 *    and the xfree lists of each page's units (acquire) and frees the blocks locally in
 *    bulk (and counts their bytes). A push that races with a collection (announced before
 *    the collector took the pending flag, pushed after it looked) waits for a sweep: every
 *    page of every slab, before one slab acquisition in nslabs/8, so a stranded block waits
 *    at most that many acquisitions and memory never grows without bound because of it (a
 *    sweep before every acquisition cost a look at every page of the heap: a stall of
 *    50-250 us per new slab of a growing heap of a few hundred slabs). A thread that stops
 *    freeing holds at most 4 unfinished buffers (240 class blocks) until its next refresh
 *    or its exit.
 *
 * 5. L2, the process pool (pool.c). Empty slabs per node and abandoned slabs per node
 *    are Treiber stacks of slab *descriptors* (indices into a never-unmapped array, so
 *    a stale pop never reads unmapped memory), with a 32-bit tag beside the 32-bit
 *    index in one 64-bit CAS word (ABA-safe). L2 keeps up to l2_cap empty slabs per node:
 *    32 by default, the daemon's tun.l2_cap when it sets one (small with compaction on:
 *    the daemon keeps returned slabs hot and regrants them without zeroing). A lower cap
 *    gives the surplus back at the next slow path that sees the new tunables generation.
 *    Thread heaps are recycled the same way; heaps are never unmapped, so a stale owner
 *    pointer is always safe to write a hint to. Slabs held, sparse heap slabs (< 1/4 of
 *    units used) and slabs in L2 are relaxed counters changed on slab transitions and
 *    stored into the control block's stats (never on the malloc/free fast path).
 *    Placement (heap.c): a heap files its slabs in 128 bins by free units; a new page goes
 *    into the fullest slab that has room (tcmalloc's hugepage filler idea), so partly used
 *    slabs fill up and sparse ones empty and leave. A slab the daemon's compactor names in
 *    its drain list (pool.c point 6) gets no new page, and a class refill passes over its
 *    queued pages while a fuller slab has room. A heap keeps at most one empty slab; a slab that
 * holds only empty current pages gives them up when another page of it is released (the busy ones
 * are armed once to notify when they empty) and at every 1024th slow path.
 *
 * 6. Thread exit (pthread key destructor): the heap collects, gives empty slabs to L2
 *    and pushes the others on the abandoned stack with owner = NULL; a thread needing
 *    a slab adopts them (collects every page and rebuilds its queues) before it asks
 *    L2 or the source. Fork: the atfork child handler of the source makes daemon slabs
 *    private; other threads' heaps are left as they were (their blocks stay valid).
 *
 * 7. Huge objects: a whole slab (from L2/L3, back to L2 on free), or above that a
 *    direct mapping; freed direct mappings up to 64 MiB are kept in 16 slots for reuse
 *    until one is unused for 10 ms (alloc.c). realloc grows a direct mapping in place, or
 *    has the kernel move its pages (mremap) when it cannot: no copy, no second resident
 *    set; it shrinks one in place (the tail unmapped). calloc skips the memset for spans and
 *    slabs known to be zero (the per-unit dirty bitmap of a slab that came zeroed from the
 *    source) and for fresh mappings; small objects are always cleared.
 *
 * 8. Statistics and modes. Every mode runs the same inline paths, and the inline malloc counts
 *    nothing: a ring's hd (point 9) or a class page's used is the count. Each page carries
 *    used_base (used at its last fold, moved along by every change of used outside the inline
 *    paths, which count where they happen) and ftick, which the inline free decrements from
 *    ZKM_TICK_FREES (256) in the line it writes anyway, testing the flags of that decrement. A fold
 *    of a page (heap.c zkm__page_fold) reads its inline frees, f = 256 - ftick, and its inline
 *    allocations, used - used_base + f, and resets both. Why: an increment of a per-class count in
 *    malloc, or of any count besides the page's two, was one more store per operation, and cost
 *    zkbench ring10k on two threads 12% (347 -> 390 Mops/s median of 10, 100 M operations), pairs
 *    on one 4%. A free that takes ftick to 0 ticks (zkm__free_tick: the page is folded); every 4th
 *    tick the counting modes read the clock and flush when 250 ms passed, and monitoring times the
 *    next malloc and free (fast_max 0, zkm__tls_owner NONE: both take the slow path, timed), about
 *    one of each in 1024 frees. A loop of malloc/free pairs that never leaves its pages therefore
 *    publishes within a second. The heap's pages are all folded at every flush (a walk of the
 *    heap's slabs), and a page is folded when it is released. Everything else is counted on the
 *    slow paths. A flush folds the counts into alloc_ops, free_ops, bytes_in_use (class sizes), the
 *    tiers and the thread-cache hits, adds them to the process totals and stores the totals into
 *    the control block (absolute values). Flush points: a tick or a slow-path refresh once 250 ms
 *    passed, a failed allocation, thread exit, zkm_stats_snapshot(). high_performance never
 *    publishes (its ticks fold pages and read no clock).
 *
 * 9. Thread-cache rings. In front of the pages, each class up to ZKM_TABLE_MAX (8 KiB) has a ring
 *    of block pointers in the heap (heap->ring[cls + 1], rslot): free pushes the pointer at tl,
 *    malloc takes the oldest at hd, and neither touches the block. Through the page's intrusive
 *    list, free wrote a link into the freed block (a read-for-ownership miss when it is cold) and
 *    malloc read the next link out of the block it handed out (a dependent miss): zkbench live100k
 *    (100,000 random live objects, 128 MiB) stayed at 0.88-0.96 of tcmalloc, whose per-CPU pointer
 *    arrays touch neither. The free finds the ring from the pointer alone, slab->ring_of[unit] (in
 *    the header's first lines, beside the owner it loads anyway), so the push's address does not
 *    wait for the page descriptor: a per-class pointer stack whose class came from the descriptor
 *    halved zkbench pairs (each malloc's load of the count waited for the free's store). FIFO, and
 *    malloc leaves the last ZKM_RING_MIN pushes: a malloc/free pair reuses the block pushed three
 *    frees before, not the one the free just stored (a stack's pop reads the push it follows, the
 *    same store-to-load chain; leaving one instead of two: pairs 266 -> 150 Mops/s, though touch's
 *    RSS peak was 180 kB lower). A ring holds min(128, 256 KiB / block size) blocks, at least 8,
 *    and no more than its tier's thread-cache target (tcache_small 128, tcache_medium 64 by
 *    default: alloc.c ring_cap_for; 2 or less turns it off, and the class's next current page
 *    takes no ring). A full ring gives back its oldest blocks down to half its capacity
 *    (zkm__ring_overflow); a malloc that finds ZKM_RING_MIN or fewer pops the class's current page
 *    inline as before, so bursts of allocations still come from the pages and a ring fills from
 *    frees only (refilling it from the pages in batches read the links of 16 cold blocks in a row:
 *    live100k 52.6 instead of 65.3 Mops/s at the same capacities). Both ends are rare in a steady
 *    state (a random walk between 2 and the capacity, re-centred by the flush): with 16 slots and
 *    the page paths at both ends, ring10k mispredicted at them and lost 18%; with capacities of
 *    8-32 for the medium classes, live100k 62-67 instead of 74 Mops/s. Small classes at 128
 *    instead of 64 (the default tcache_small, which 64 slots had cut short): ring10k 228 -> 250
 *    Mops/s, with 144 overflows in 2.5 M frees instead of 1,475 (each gives half a ring back,
 *    writing the links of cold blocks: 9,200 instead of 47,000).
 *    A class that frees without allocating (a second overflow with no pop since the first: a
 *    program letting go of its objects) turns its ring off (ring_cap 0, its frees go to their pages
 *    through zkm__ring_overflow) until its next page refill, so that what it let go of leaves with
 *    its pages and slabs. A block in a ring is used for its page, which never empties under it. The
 *    rings are given back at thread exit and at the heap's trim (every 1024th slow path); during a
 *    drain, the blocks in drained slabs at the next ring tick or refresh. Counting: a ring's hd and
 *    tl are its allocations and frees (a flush moves hd and ring_hd0 together: not operations);
 *    every ZKM_RING_TICK pushes the ring is folded (zkm__ring_tick), and the counting modes read
 *    the clock there as at a page's tick.
 *
 * Ordering summary: slab ownership moves only through the stacks (release push,
 * acquire pop) or by the owner itself; page lists, free lists, unit bitmaps and
 * counters are owner-only; xfree, pending, remote_hint and the slab map are atomics.
 */
#ifndef ZKM_CLIENT_ALLOC_H
#define ZKM_CLIENT_ALLOC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zkmem/zkmem.h>

#include "source.h"
#include "zkm_proto.h"

#ifndef ZKM_DEBUG_LEVEL
#define ZKM_DEBUG_LEVEL 1
#endif

#define zkm_likely(x)   __builtin_expect(!!(x), 1)
#define zkm_unlikely(x) __builtin_expect(!!(x), 0)
#define ZKM_NOINLINE    __attribute__((noinline))
#define ZKM_HIDDEN      __attribute__((visibility("hidden")))

void zkm__assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#if ZKM_DEBUG_LEVEL >= 2
#define zkm_assert_internal(e) ((e) ? (void)0 : zkm__assert_fail(#e, __FILE__, __LINE__))
#else
#define zkm_assert_internal(e) ((void)0)
#endif
#if ZKM_DEBUG_LEVEL >= 3
#define zkm_assert_expensive(e) zkm_assert_internal(e)
#else
#define zkm_assert_expensive(e) ((void)0)
#endif

/* ---- geometry ------------------------------------------------------------------------ */
#define ZKM_SLAB_SHIFT 21
#define ZKM_SLAB_SIZE  ((size_t)1 << ZKM_SLAB_SHIFT)
#define ZKM_SLAB_MASK  (ZKM_SLAB_SIZE - 1)
#define ZKM_UNIT_SHIFT 14
#define ZKM_UNIT_SIZE  ((size_t)1 << ZKM_UNIT_SHIFT)
#define ZKM_UNITS      128 /* per slab; unit 0 is the header */
#define ZKM_LARGE_MAX  ((size_t)(ZKM_UNITS - 1) << ZKM_UNIT_SHIFT) /* largest span object */
#define ZKM_HUGE_OFF   ((size_t)4096) /* object offset in a HUGE slab / DIRECT mapping */
#define ZKM_HUGE_MAX   (ZKM_SLAB_SIZE - ZKM_HUGE_OFF)
#define ZKM_MAX_ALIGN  ((size_t)1 << 30)
#define ZKM_ADDR_BITS  47

_Static_assert(ZKM_SOURCE_SLAB == ZKM_SLAB_SIZE, "source slab is the allocator slab");

/* ---- size classes ---------------------------------------------------------------------
 * 8, 16, 32, 48, ..., 128 (16-byte steps), then 8 classes per doubling up to 1 MiB, and
 * ZKM_HDR_CLASSES more at 2^k + 16 for k = 9..12 (528, 1040, 2064, 4112): a power of two
 * with a small header in front would otherwise take the next class, 11% more (sqlite
 * prefixes its 1 KiB and 4 KiB buffers with 8 bytes of size: 1032 and 4104 bytes, 170,000
 * requests in bench/compare.py's script; its peak went from 69.7-71.6 to 67.5 MiB, glibc
 * 63.8). block(n) - n < 16 for n <= 128 and < n/8 above (the waste bound tested in
 * test-alloc). Classes up to 8 KiB are found with one table load; above, with a clz. */
#define ZKM_CLASS_MAX_SIZE ((size_t)1 << 20) /* large_threshold's maximum */
#define ZKM_HDR_CLASSES    4
#define ZKM_NCLASS         (113 + ZKM_HDR_CLASSES)
#define ZKM_TABLE_MAX      8192
#define ZKM_CLASS_LARGE    0xfe
#define ZKM_LCACHE_UNITS   4    /* large spans up to 4 units (64 KiB) are kept for reuse... */
#define ZKM_LCACHE_DEPTH   4    /* ...up to 4 of each size per heap (640 KiB at most) */
#define ZKM_TICK_FREES     256u /* inline frees into a page between its ticks (point 8) */
#define ZKM_CLASS_NONE     0xff

/* Thread-cache rings (point 9): classes up to ZKM_TABLE_MAX (8 B..8 KiB, 61 classes) */
#define ZKM_RING_CLASSES (9u + ZKM_HDR_CLASSES + 8u * 6u)
#define ZKM_RING_SLOTS   128u                /* pointers a ring can hold (a power of two) */
#define ZKM_RING_MIN     2u                  /* malloc never takes the last ZKM_RING_MIN frees */
#define ZKM_RING_BYTES   ((size_t)256 << 10) /* a ring's capacity: this many bytes of blocks */
#define ZKM_RING_CAP_MIN 8u                  /* ...but at least this many blocks */
#define ZKM_RING_TICK    256u                /* pushes into a ring between its folds */

enum zkm_tier { ZKM_TIER_SMALL, ZKM_TIER_MEDIUM, ZKM_TIER_LARGE, ZKM_TIER_HUGE, ZKM_NTIER };

enum zkm_page_state {
    ZKM_PAGE_FREE = 0,
    ZKM_PAGE_CURRENT,
    ZKM_PAGE_QUEUED,
    ZKM_PAGE_FULL,
    ZKM_PAGE_HOLES,   /* a small class's sparse page whose free runs hold medium blocks */
    ZKM_PAGE_LCACHED, /* a freed large span kept whole in its heap's lcache for reuse */
};

enum zkm_slab_kind { ZKM_SLAB_PAGES = 1, ZKM_SLAB_HUGE = 2, ZKM_SLAB_DIRECT = 3 };

#define ZKM_NOTIFY_NEVER UINT32_MAX

/* Holes (heap.c): medium requests of ZKM_HOLE_MIN..ZKM_HOLE_MAX bytes served from the free
 * runs of sparse pages of classes of ZKM_HOLE_HOST_MIN..ZKM_HOLE_HOST_MAX bytes. */
#define ZKM_HOLE_MIN      512
#define ZKM_HOLE_MAX      8192
#define ZKM_HOLE_HOST_MIN 32
#define ZKM_HOLE_HOST_MAX 256
#define ZKM_HOLE_BINS     17 /* by the longest run: 4 per doubling, 512 B..8 KiB, and up */
#define ZKM_HOLE_NONE     0xff

struct zkm_block {
    struct zkm_block *next;
};

struct zkm_heap;

/* Blocks out of a page are kept as their distance to notify_at, so that the inline free
 * tests one decrement (zkm__page_used and the setters below keep the two in step). */
struct zkm_page {
    struct zkm_block *free; /* owner only */
    uint32_t left;          /* used - notify_at (mod 2^32): free's --left == 0 is the notify */
    uint32_t notify_at;     /* free takes the slow path when used (blocks out, including
                             * remote-freed ones not yet collected) drops to this */
    uint32_t block_size;    /* bytes; for a large object the span's bytes */
    uint16_t capacity;      /* blocks (at most 16 units of 8-byte blocks: 32768) */
    uint16_t carved;        /* blocks [carved, capacity) were never handed out nor linked:
                             * free, and not yet written (heap.c page_extend) */
    uint8_t cls;            /* class, ZKM_CLASS_LARGE or ZKM_CLASS_NONE */
    uint8_t state;          /* enum zkm_page_state */
    uint8_t zeroed;         /* large: the span was all zero when handed out */
    uint8_t start;          /* first unit */
    uint16_t units;         /* span length */
    uint8_t holes;          /* HOLES: 1 (atomic, release after the state array is written:
                             * zkm__class_usable reads it from any thread) */
    uint8_t hbin;           /* HOLES: heap->holes[hbin] holds it; ZKM_HOLE_NONE: no bin */
    struct zkm_page *next, *prev; /* heap->queue[cls] links; HOLES: heap->holes[hbin] */
    uint32_t ftick; /* ZKM_TICK_FREES less the inline frees since the last fold (point 8) */
    union {
        uint32_t asked;     /* large: bytes of the last malloc/realloc (growth spare) */
        uint32_t used_base; /* class and HOLES pages: used at the last fold, moved along by
                             * every change of used outside the inline paths (point 8) */
    };
    uint32_t hmeta;   /* HOLES: offset of the state array in the page */
    uint16_t hmaxrun; /* HOLES: longest run of free blocks (at the last look) */
    uint16_t hchunks; /* HOLES: medium blocks out */
};
_Static_assert(sizeof(struct zkm_page) == 64, "page descriptor is one cache line");
_Static_assert((16u << ZKM_UNIT_SHIFT) / 8u <= UINT16_MAX, "a class page's blocks fit capacity");

static inline uint32_t zkm__page_used(const struct zkm_page *pg)
{
    return pg->left + pg->notify_at;
}
static inline void zkm__page_set_used(struct zkm_page *pg, uint32_t used)
{
    pg->left = used - pg->notify_at;
}
static inline void zkm__page_set_notify(struct zkm_page *pg, uint32_t at)
{
    uint32_t used = zkm__page_used(pg);
    pg->notify_at = at;
    pg->left = used - at;
}

struct zkm_shdr {
    uint32_t kind;                    /* enum zkm_slab_kind */
    uint32_t desc;                    /* descriptor index (pool.c), 0 for DIRECT */
    _Atomic(struct zkm_heap *) owner; /* PAGES: owning heap; NULL when abandoned */
    _Atomic uint32_t pending;         /* some page has remote frees */
    int32_t node;
    /* owner only (PAGES) */
    uint32_t free_units;
    uint8_t bin;           /* heap->bins[bin] holds it (bin == free_units once placed) */
    uint8_t sparse;        /* counted in the process's slabs_sparse (pool.c) */
    uint8_t n_lcached;     /* of its pages, large spans kept in the owner's lcache (heap.c) */
    uint8_t retire_arms;   /* heap.c slab_retire_current */
    uint64_t freemap[2];   /* 1: unit free */
    uint64_t dirtymap[2];  /* 1: unit was written since the slab came zeroed */
    uint64_t initmap[2];   /* 1: the unit's descriptor was initialised (pool.c, heap.c
                            * span_take); a zeroed slab's are written as spans start there */
    uint64_t retire_after; /* heap.c: owner's slow_calls before the next retire */
    uint16_t n_pages;      /* pages (spans) in use */
    uint16_t n_cur;        /* of them, heaps' current pages */
    struct zkm_shdr *next, *prev;   /* heap->bins[bin] links */
    struct zkm_shdr *hnext, *hprev; /* heap->slabs links (every slab of the heap) */
    /* HUGE / DIRECT */
    size_t obj_size; /* usable bytes of the object */
    void *map_base;  /* DIRECT: mapping start and length */
    size_t map_len;
    uint8_t obj_zeroed;
    uint8_t _pad[7];
    /* PAGES: unit -> ring of its page's class (class + 1, set when the page becomes its
     * heap's current one; 0: no ring -- free units, large spans, HOLES pages, classes above
     * ZKM_TABLE_MAX, a class whose ring its tcache target turned off). Read by the inline
     * free from the pointer alone, before and without the page descriptor (point 9). */
    uint8_t ring_of[ZKM_UNITS];
    /* unit -> its page's descriptor: a page's first unit, and every unit of a class page (its
     * blocks are anywhere in it); a large span's other units are never looked up (an object's
     * pointer is its span's start), and a span of 36 units was 36 stores, on every large
     * allocation (heap.c span_take, page_carve) */
    _Alignas(64) struct zkm_page *unit_page[ZKM_UNITS];
    struct zkm_page pages[ZKM_UNITS];
    /* buffers of remote frees into this slab (struct zkm_xbuf), drained by the owner */
    _Alignas(64) _Atomic(struct zkm_xbuf *) xbatch;
    /* remote frees by the unit the block starts in, drained by the owner: apart from the
     * pages, so a freeing thread never touches the line the owner's malloc writes */
    _Alignas(64) _Atomic(struct zkm_block *) xfree[ZKM_UNITS];
};
_Static_assert(sizeof(struct zkm_shdr) <= ZKM_UNIT_SIZE, "slab header fits unit 0");

/* Remote frees by pointer (alloc.h point 4): a freeing thread fills a buffer of its own
 * heap with pointers into one slab, then queues the buffer on the slab (xbatch); the
 * owner frees the pointers locally and hands the buffer back (state FREE, release). */
#define ZKM_XBUF_N 60 /* pointers per buffer */
#define ZKM_XBUFS  8  /* buffers per heap */
#define ZKM_XOPEN  4  /* of them being filled at once (by slab) */
enum { ZKM_XBUF_FREE = 0, ZKM_XBUF_OPEN, ZKM_XBUF_QUEUED };
struct zkm_xbuf {
    struct zkm_xbuf *next; /* slab->xbatch link, written before the push */
    _Atomic uint32_t state;
    uint32_t n;
    struct zkm_shdr *slab;
    void *p[ZKM_XBUF_N];
};

/* A thread-cache ring (point 9): blocks [hd, tl) of its class, oldest first, in
 * heap->rslot[ring][i % ZKM_RING_SLOTS]. Both only grow (mod 2^32). */
struct zkm_ring {
    uint32_t hd; /* pops by malloc, and blocks flushed back to their pages */
    uint32_t tl; /* pushes by free */
};

/* Thread heap (L1). Lives in never-unmapped metadata; recycled across threads. */
struct zkm_heap {
    size_t fast_max;   /* requests 1..fast_max take the inline path; 0: every call is slow
                        * (no heap yet, or a monitoring sample is due) */
    uint32_t counting; /* mode: 0 high_performance, 1 balanced, 2 monitoring */
    uint32_t idx;      /* index in the heap array (pool.c) */
    uint32_t sampling; /* monitoring: bit 0 time the next malloc, bit 1 the next free */
    uint32_t ticks;    /* zkm__free_tick and zkm__ring_tick calls */
    struct zkm_ring ring[ZKM_RING_CLASSES + 1]; /* [0]: no ring */
    /* blocks each ring holds: zkm__g.ring_cap, 0 while its class only frees ([0]: 0) */
    uint32_t ring_cap[ZKM_RING_CLASSES + 1];
    struct zkm_page *cur[ZKM_NCLASS];
    struct zkm_page *queue[ZKM_NCLASS];
    struct zkm_page *holes[ZKM_HOLE_BINS]; /* HOLES pages by their longest free run */
    uint32_t hole_cls; /* heap.c hole_grow: host classes (largest = 0) to skip at first */
    /* heap.c: freed large spans of 1..ZKM_LCACHE_UNITS units kept whole (LIFO per size),
     * released at the first refresh that finds none taken since the one before */
    struct zkm_page *lcache[ZKM_LCACHE_UNITS][ZKM_LCACHE_DEPTH];
    uint8_t lcache_n[ZKM_LCACHE_UNITS];
    uint8_t lcache_taken;
    _Alignas(64) _Atomic uint32_t remote_hint;
    _Atomic uint32_t pool_next;
    _Alignas(64) struct zkm_shdr *slabs; /* every PAGES slab of the heap (hnext) */
    uint64_t binmap[2];                  /* bit b: bins[b] is not empty */
    struct zkm_shdr *bins[ZKM_UNITS];    /* slabs by free units; bins[0]: full */
    uint32_t nslabs;
    uint32_t grows_since_sweep; /* heap.c collect_before_grow */
    int32_t sparse_delta;       /* slabs that crossed the sparse line, not yet in the total */
    int node;
    uint32_t tun_gen;
    uint32_t generic_calls; /* allocations through zkm__alloc_generic */
    uint64_t slow_calls;
    uint64_t next_refresh; /* slow_calls at which heap_refresh runs again */
    uint32_t refreshes;
    /* heap.c retirement back-off: a slab taken soon after a retirement gave one away means
     * the retirement was wasted (the workload refills at once); then none before hold */
    uint32_t retire_gap;  /* slow paths: "soon", doubled per wasted retirement */
    uint64_t retired_at;  /* slow_calls + 1 at the last retirement (0: none yet) */
    uint64_t retire_hold; /* slow_calls before which slab_maybe_release retires nothing */
    /* Counts of the slow paths, and the inline ones folded in; flushed to the process */
    uint64_t c_alloc, c_free, c_miss, c_remote;
    uint64_t c_tier[ZKM_NTIER];
    int64_t c_bytes;
    uint64_t flush_ns;              /* CLOCK_MONOTONIC of the last flush */
    uint8_t pages_made[ZKM_NCLASS]; /* heap.c page ramp: pages of the class made less
                                     * those given back, up to 16 */
    /* each ring's hd and tl at its last fold; a flush moves hd0 with hd (not operations) */
    uint32_t ring_hd0[ZKM_RING_CLASSES + 1], ring_tl0[ZKM_RING_CLASSES + 1];
    uint32_t ring_ovf[ZKM_RING_CLASSES + 1]; /* each ring's hd after its last overflow */
    struct zkm_xbuf *xopen[ZKM_XOPEN];       /* buffers being filled, by slab (owner only) */
    uint32_t xskip; /* remote frees to push one by one before looking for a buffer again */
    /* remote-free buffers: FREE and OPEN are the heap's, QUEUED the collector's; a heap
     * that is recycled keeps their states (a queued buffer comes back when collected) */
    _Alignas(64) struct zkm_xbuf xbuf[ZKM_XBUFS];
    _Alignas(64) void *rslot[ZKM_RING_CLASSES + 1][ZKM_RING_SLOTS]; /* [0] unused */
};

/* Process-wide state (alloc.c). */
struct zkm_globals {
    _Atomic int state; /* 0 none, 1 initialising, 2 ready */
    int cfg_final;     /* config read from a real environment */
    uint32_t mode;     /* 0 high_performance, 1 balanced, 2 monitoring */
    int mode_from_env;
    size_t small_threshold, large_threshold, fast_max;
    uint32_t tcache_small, tcache_medium;
    uint32_t class_size[ZKM_NCLASS];
    uint16_t class_units[ZKM_NCLASS];
    uint8_t class_of8[ZKM_TABLE_MAX / 8 + 1]; /* (size + 7) / 8 -> class */
    uint8_t ring_cap[ZKM_RING_CLASSES + 1];   /* blocks a ring holds; [0] = 0 (point 9) */
    int tcache_from_env;                      /* ZKMEM_TCACHE_*: tunables leave them */
};

extern struct zkm_globals zkm__g;
extern struct zkm_heap zkm__heap_empty;
extern __thread struct zkm_heap *zkm__tls_heap __attribute__((tls_model("initial-exec")));
/* The thread's heap, which its inline free compares with a slab's owner; ZKM_OWNER_NONE (never
 * an owner) while a monitoring sample is due, so that the next free goes slow and is timed. */
extern __thread struct zkm_heap *zkm__tls_owner __attribute__((tls_model("initial-exec")));
#define ZKM_OWNER_NONE ((struct zkm_heap *)1)
extern _Atomic uint8_t zkm__slabmap[];

/* ---- classes --------------------------------------------------------------------------- */
static inline unsigned zkm__class_of(size_t n) /* 1 <= n <= ZKM_CLASS_MAX_SIZE */
{
    if (n <= ZKM_TABLE_MAX)
        return zkm__g.class_of8[(n + 7) >> 3];
    size_t s = n - 1;
    unsigned k = 63u - (unsigned)__builtin_clzl(s);
    return 9u + ZKM_HDR_CLASSES + 8u * (k - 7u) + (unsigned)((s >> (k - 3u)) & 7u);
}
static inline size_t zkm__class_size(unsigned cls)
{
    return zkm__g.class_size[cls];
}
/* Units of the large span that holds an object of n bytes, at least one; the span's usable
 * size is that many units (heap.c zkm__heap_alloc_large, zkm__heap_resize_large). */
static inline size_t zkm__span_units(size_t n)
{
    size_t units = (n + ZKM_UNIT_SIZE - 1) >> ZKM_UNIT_SHIFT;
    return units ? units : 1;
}

static inline enum zkm_tier zkm__tier_of(size_t n)
{
    if (n <= zkm__g.small_threshold)
        return ZKM_TIER_SMALL;
    if (n <= zkm__g.large_threshold)
        return ZKM_TIER_MEDIUM;
    if (n <= ZKM_LARGE_MAX)
        return ZKM_TIER_LARGE;
    return ZKM_TIER_HUGE;
}

/* ---- slab map -------------------------------------------------------------------------- */
#define ZKM_MAP_SIZE ((size_t)1 << (ZKM_ADDR_BITS - ZKM_SLAB_SHIFT))

static inline unsigned zkm__map_get(uintptr_t a)
{
    uintptr_t c = a >> ZKM_SLAB_SHIFT;
    if (zkm_unlikely(c >= ZKM_MAP_SIZE))
        return 0;
    return atomic_load_explicit(&zkm__slabmap[c], memory_order_relaxed);
}
void zkm__map_set(uintptr_t chunk_addr, unsigned v);

/* Header of the slab holding p, or NULL when p is not ours. */
static inline struct zkm_shdr *zkm__slab_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    unsigned v = zkm__map_get(a);
    if (zkm_likely(v == 1))
        return (struct zkm_shdr *)(a & ~(uintptr_t)ZKM_SLAB_MASK);
    if (v == 2)
        return (struct zkm_shdr *)((a & ~(uintptr_t)ZKM_SLAB_MASK) - ZKM_SLAB_SIZE);
    return NULL;
}
static inline struct zkm_page *zkm__page_of(struct zkm_shdr *s, const void *p)
{
    return s->unit_page[((uintptr_t)p & ZKM_SLAB_MASK) >> ZKM_UNIT_SHIFT];
}
static inline uint8_t *zkm__page_start(struct zkm_shdr *s, const struct zkm_page *pg)
{
    return (uint8_t *)s + ((size_t)pg->start << ZKM_UNIT_SHIFT);
}

/* Usable bytes of a block of class page pg (any thread may ask about a block it holds):
 * the class's size, or in a HOLES page the block's run of the host class's blocks. */
size_t zkm__hole_usable(struct zkm_shdr *s, const struct zkm_page *pg, const void *p);
static inline size_t zkm__class_usable(struct zkm_shdr *s, const struct zkm_page *pg, const void *p)
{
    if (zkm_unlikely(__atomic_load_n(&pg->holes, __ATOMIC_ACQUIRE)))
        return zkm__hole_usable(s, pg, p);
    return pg->block_size;
}

/* ---- slow paths (heap.c, alloc.c) ------------------------------------------------------- */
void *zkm__malloc_slow(size_t n) ZKM_NOINLINE;
void zkm__free_slow(void *p) ZKM_NOINLINE;
void zkm__page_notify(struct zkm_heap *h, struct zkm_page *pg) ZKM_NOINLINE;
void zkm__free_tick(struct zkm_heap *h, struct zkm_page *pg) ZKM_NOINLINE;
/* ring r is full (or off): give blocks back to their pages, then p */
void zkm__ring_overflow(struct zkm_heap *h, unsigned r, void *p) ZKM_NOINLINE;
void zkm__ring_tick(struct zkm_heap *h, unsigned r) ZKM_NOINLINE; /* ZKM_RING_TICK pushes */

/* Ring r's capacity for a heap that turns it on (tunables may change it: alloc.c) */
static inline uint32_t zkm__ring_cap_global(unsigned r)
{
    return __atomic_load_n(&zkm__g.ring_cap[r], __ATOMIC_RELAXED);
}

/* ---- fast paths ------------------------------------------------------------------------ */

/* malloc: one path for every request up to fast_max (class table, the class's ring): no
 * test of the size beyond fast_max, so mixed sizes cost no mispredicted branch (point 1).
 * Whatever must go slow (no heap, a monitoring sample, above fast_max) sees fast_max. With
 * ZKM_RING_MIN blocks or fewer in the ring, the block comes from the class's current page
 * (point 9); one with no free block goes slow. Nothing is counted here: the ring's hd, or
 * the page's used, is the count. */
static inline void *zkm__malloc_inline(size_t n)
{
    struct zkm_heap *h = zkm__tls_heap;
    size_t m = n - 1;
    if (zkm_unlikely(m >= h->fast_max)) /* n == 0 wraps: slow */
        return zkm__malloc_slow(n);
    size_t cls = zkm__g.class_of8[(m >> 3) + 1]; /* = [(n + 7) >> 3], one instruction less */
    struct zkm_ring *rg = &h->ring[1] + cls;     /* its ring: cls + 1 */
    uint32_t hd = rg->hd;
    if (zkm_likely(rg->tl - hd > ZKM_RING_MIN)) {
        rg->hd = hd + 1;
        return (&h->rslot[1])[cls][hd % ZKM_RING_SLOTS];
    }
    struct zkm_page *pg = h->cur[cls];
    struct zkm_block *b = pg->free;
    if (zkm_unlikely(b == NULL))
        return zkm__malloc_slow(n);
    pg->free = b->next;
    pg->left++; /* used++ */
    return b;
}

/* The end of an inline free of a block of pg (o: its owner, the calling thread), after
 * the push: the page's free count, which ticks every ZKM_TICK_FREES (the tick does the
 * rest), and used, which notifies when it reaches notify_at. The count's test reads the
 * flags of its own decrement: no store beyond the two the free makes anyway (a separate
 * per-heap tick count cost zkbench ring10k on two threads 12%). Both calls are tail calls. */
static inline void zkm__free_finish(struct zkm_heap *o, struct zkm_page *pg)
{
    if (zkm_unlikely(--pg->ftick == 0)) {
        zkm__free_tick(o, pg);
        return;
    }
    if (zkm_unlikely(--pg->left == 0)) /* used reached notify_at */
        zkm__page_notify(o, pg);
}

/* free of a block the calling thread owns: one map load, owner compare, then the block's
 * ring, found from the pointer alone (slab->ring_of, beside the map byte and the owner):
 * a push of the pointer, which writes nothing into the block (point 9). A full ring gives
 * half back to the pages; a block with no ring (large spans, HOLES pages) is pushed on its
 * page and counted there (1). While a monitoring sample is due zkm__tls_owner is not the
 * heap, so the free takes the slow path (and is timed). */
static inline void zkm__free_inline(void *p)
{
    uintptr_t a = (uintptr_t)p, c = a >> ZKM_SLAB_SHIFT;
    struct zkm_shdr *s = (struct zkm_shdr *)(a & ~(uintptr_t)ZKM_SLAB_MASK);
    struct zkm_heap *o;
    if (zkm_unlikely(c >= ZKM_MAP_SIZE ||
                     atomic_load_explicit(&zkm__slabmap[c], memory_order_relaxed) != 1 ||
                     (o = atomic_load_explicit(&s->owner, memory_order_relaxed)) !=
                         zkm__tls_owner)) {
        zkm__free_slow(p);
        return;
    }
    unsigned u = (unsigned)((a & ZKM_SLAB_MASK) >> ZKM_UNIT_SHIFT), r = s->ring_of[u];
    struct zkm_ring *rg = &o->ring[r];
    uint32_t tl = rg->tl;
    if (zkm_likely(tl - rg->hd < o->ring_cap[r])) {
        o->rslot[r][tl % ZKM_RING_SLOTS] = p;
        rg->tl = ++tl;
        if (zkm_unlikely(tl % ZKM_RING_TICK == 0))
            zkm__ring_tick(o, r);
        return;
    }
    if (r) {
        zkm__ring_overflow(o, r, p);
        return;
    }
    struct zkm_page *pg = s->unit_page[u];
    struct zkm_block *b = p;
    b->next = pg->free;
    pg->free = b;
    zkm__free_finish(o, pg);
}

/* ---- internal API between the files ------------------------------------------------------ */
/* alloc.c */
int zkm__init(void); /* process init; safe to call often; 0 or -ENOMEM (retried later) */
struct zkm_heap *zkm__heap_get(void); /* the thread's heap, created on demand (NULL: none) */
void *zkm__huge_alloc(size_t n, size_t align, int node, bool zero);
void zkm__huge_free(struct zkm_shdr *s);
void zkm__stats_flush(struct zkm_heap *h);
bool zkm__in_boot(const void *p);
size_t zkm__boot_usable(const void *p);

/* Everything the inline paths do not do (align 0: default). Sets errno on failure. */
void *zkm__alloc_generic(size_t n, size_t align, int node, bool zero);
void *zkm__alloc_growing(size_t n); /* realloc's new home for a growing object */
/* realloc of DIRECT object p (slab s) to n bytes, beyond what its place can hold: the
 * kernel moves the pages; NULL when it could not (p untouched: the caller copies). */
void *zkm__direct_move(struct zkm_shdr *s, void *p, size_t n);
size_t zkm__usable(const void *p);
size_t zkm__usable_of(struct zkm_shdr *s, const void *p);         /* p in our slab s */
bool zkm__resize_in_place(struct zkm_shdr *s, void *p, size_t n); /* p in our slab s */

/* heap.c */
void zkm__heap_reset(struct zkm_heap *h, int node);
/* A block of class cls for n bytes (a block from a hole holds n rounded up to the host
 * page's blocks, not the class's size; it is only 16-byte aligned, so align > 16 never
 * gets one). */
void *zkm__heap_alloc_class(struct zkm_heap *h, unsigned cls, size_t n, size_t align);
void zkm__heap_lcache_refresh(struct zkm_heap *h); /* heap refresh: release an unused lcache */
void zkm__heap_flush_sparse(struct zkm_heap *h);   /* add sparse_delta to the pool's count */
/* growing (realloc moving a large object up): room to grow in place after it -- the start
 * of the longest free run of the heap's slabs, if at least twice its size (fullest-first
 * placement would leave none). */
void *zkm__heap_alloc_large(struct zkm_heap *h, size_t n, size_t align, int node, bool zero,
                            bool growing);
void zkm__heap_free_local(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg, void *p);
void zkm__free_remote(struct zkm_shdr *s, void *p);
/* A remote free by pointer (h: the freeing thread's heap); the block is not touched. */
void zkm__free_remote_batched(struct zkm_heap *h, struct zkm_shdr *s, void *p);
void zkm__heap_flush_remote(struct zkm_heap *h); /* queue every buffer being filled */
void zkm__heap_collect(struct zkm_heap *h, bool all);
void zkm__heap_fold(struct zkm_heap *h); /* every page's inline counts into h's (point 8) */
void zkm__page_fold(struct zkm_heap *h, struct zkm_page *pg);
void zkm__heap_trim(struct zkm_heap *h); /* retire empty current pages of otherwise empty slabs */
void zkm__ring_fold(struct zkm_heap *h, unsigned r); /* ring r's pops and pushes into h's counts */
void zkm__ring_flush_all(struct zkm_heap *h, bool draining_only);
void zkm__heap_abandon(struct zkm_heap *h);
/* n bytes in place; growth takes up to twice the span's units if they are free behind it */
bool zkm__heap_resize_large(struct zkm_heap *h, struct zkm_shdr *s, struct zkm_page *pg, size_t n);

/* pool.c: metadata, descriptors, L2 stacks */
int zkm__pool_init(void);
struct zkm_heap *zkm__pool_heap_new(void);
void zkm__pool_heap_free(struct zkm_heap *h);
/* A PAGES slab for heap use (adopted slabs are returned through *adopted). */
int zkm__pool_slab_get(int node, struct zkm_shdr **ret, bool *adopted);
void zkm__pool_slab_put(struct zkm_shdr *s); /* empty slab: to L2 or the source */
void zkm__pool_abandon(struct zkm_shdr *s);
int zkm__pool_huge_get(int node, struct zkm_shdr **ret, bool *zeroed);
/* A fresh PAGES slab's header; a zeroed slab's descriptors are left to span_take
 * (zkm__page_init), so that a slab of small pages has one header page resident, not three. */
void zkm__pool_init_pages(struct zkm_shdr *s, bool zeroed);
void zkm__page_init(struct zkm_page *pg, unsigned u); /* the FREE descriptor of unit u */
/* L2 cap (tunables, alloc.c); a lower cap gives the extra empty slabs back at once. */
#define ZKM_L2_CAP_DEFAULT 32 /* 64 MiB of empty slabs per node */
void zkm__pool_set_l2_cap(uint32_t cap);
/* A PAGES slab with at least this many free units is sparse (less than 1/4 used). */
#define ZKM_SPARSE_FREE (ZKM_UNITS - 1 - (ZKM_UNITS - 1) / 4)
void zkm__pool_sparse_add(int delta);
/* Store slabs_held, slabs_sparse and slabs_cached into the control-block stats. */
void zkm__pool_publish(void);
void zkm__pool_stats(struct zkm_client_stats *ret); /* the three slab counts into ret */
/* Draining (pool.c point 6): a heap's slab's used units changed (owner, slow paths). */
void zkm__pool_note_used(const struct zkm_shdr *s);
/* Publish the occupancy table and apply a new drain list, at most every
 * ZKM_DRAIN_PERIOD_NS unless forced (one thread at a time; the others skip). */
#define ZKM_DRAIN_PERIOD_NS 50000000ull
void zkm__pool_drain_sync(uint64_t now_ns, bool force);
bool zkm__pool_drain_on(void);                     /* some slab is being drained */
bool zkm__pool_draining(const struct zkm_shdr *s); /* the daemon named s */
/* Drain exactly these slabs (what a new drain list does; tests call it directly). */
void zkm__pool_drain_slabs(struct zkm_shdr *const *slabs, unsigned n);

/* Counters for tests (all processes-wide, relaxed). */
struct zkm_alloc_counters {
    uint64_t slabs_from_source, slabs_to_source, slabs_reused, slabs_adopted, slabs_abandoned;
    uint64_t direct_maps, direct_unmaps, direct_reused, direct_purged, heaps_created;
    uint64_t direct_moved;            /* realloc moved a DIRECT object's pages (mremap), no copy */
    uint64_t hole_pages, hole_allocs; /* pages turned into hole pages; blocks served there */
    uint64_t remote_frees; /* added at heap flushes (thread exit, zkm_stats_snapshot, ...) */
    uint64_t remote_collected;
    uint64_t sweeps; /* heap.c collect_before_grow: passes over every page of a heap */
    uint64_t foreign_frees;
};
/* Sharded by heap index, a shard per cache line pair: a count on a slow path that one
 * thread takes often (a reused direct mapping, a slab from L2) must not move a line between
 * cores (zkbench large, two threads: the shared direct_reused add was half of the time in
 * zkm__huge_alloc). zkm__alloc_counters sums the shards. */
#define ZKM_COUNT_SHARDS 8
struct zkm_count_shard {
    _Alignas(64) struct zkm_alloc_counters c;
};
extern struct zkm_count_shard zkm__counters[ZKM_COUNT_SHARDS];
#define ZKM_COUNT(f, v)                                                                            \
    atomic_fetch_add_explicit(                                                                     \
        (_Atomic uint64_t *)&zkm__counters[zkm__tls_heap->idx % ZKM_COUNT_SHARDS].c.f, (v),        \
        memory_order_relaxed)
void zkm__alloc_counters(struct zkm_alloc_counters *ret);
/* Unmap kept direct mappings unused for 10 ms (alloc.c); how many. */
unsigned zkm__dcache_purge(uint64_t now_ns);

/* malloc.c: the glibc-only members of the family */
int zkm__posix_memalign(void **ret, size_t alignment, size_t size);
void *zkm__memalign(size_t alignment, size_t size);
void *zkm__valloc(size_t size);
void *zkm__pvalloc(size_t size);
void *zkm__reallocarray(void *p, size_t n, size_t size);
void *zkm__realloc(void *p, size_t size); /* zkm_realloc without the PLT (preload.c) */

/* foreign pointers (malloc.c has the plain-library versions; preload.c overrides them) */
void zkm__foreign_free(void *p);
void *zkm__foreign_realloc(void *p, size_t n);
size_t zkm__foreign_usable_size(void *p);

#endif
