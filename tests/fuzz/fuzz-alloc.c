/* SPDX-License-Identifier: MIT */
/*
 * fuzz-alloc.c - libFuzzer target for the object allocator (libzkmem-client).
 *
 * The input is a sequence of 8-byte records, each one operation on one of 64 slots:
 *
 *   [0] op      (mod OP_COUNT; see enum op)
 *   [1] slot    (mod NSLOTS)
 *   [2] aux     alignment / flags: bits 0-4 log2 of the alignment (mod 21: up to 1 MiB),
 *               bits 5-6 pick a bad alignment (0, 4, 3 * 2^k) for the aligned calls,
 *               bit 7 a variant (realloc to 0 bytes - as is a realloc whose size decodes
 *               to 0 -, calloc overflow, zkm_alloc_node on node 0)
 *   [3] tier    bits 0-3: 0-5 small (<= 256 B), 6-9 medium (<= 8 KiB), 10-12 large
 *               (up to a whole 2 MiB slab), 13-14 an edge of a tier +-16, 15 huge (above a
 *               slab, up to 8 MiB)
 *   [4..6] v    24-bit little-endian value that picks the size inside the tier
 *   [7] count   bulk count, calloc element count, bulk-free slot mask
 *
 * A short final record is ignored. Every operation goes through the library's own entry
 * points (zkm_malloc & co. and the zkm__posix_memalign / zkm__memalign that
 * libzkmem-preload.so exports as posix_memalign / memalign). Each live object's usable
 * bytes (malloc_usable_size, not just the request) hold a pattern derived from its
 * slot, size and a per-input serial; the pattern is checked before free and realloc
 * (realloc must keep min(old, new) requested bytes) and for every live object at the
 * end. Objects larger than 16 KiB are patterned on their first and last 4 KiB and one
 * word in 32 between (every page is still touched). Each new object must be non-NULL,
 * aligned as asked (16 bytes by default, 8 for requests up to 8), owned by zkmem
 * (zkm_owns), and its usable range must not overlap another live object's.
 *
 * Two ops hand work to a helper thread and wait for it (deterministic): a free of our
 * object on another thread (a remote free), and an allocation made by the helper that
 * we then own and free here. One op round-trips a C library pointer through zkm_realloc
 * and zkm_free (the foreign-pointer path).
 *
 * No daemon: $ZKMEM_SOCKET is pointed at a path that cannot exist before the first
 * allocation, so the library serves from local memory and never reaches a system zkmemd.
 */
#include "fuzz.h"

#include "alloc.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#define NSLOTS      64
#define RECORD      8
#define MAX_OPS     1200
#define BIG_PATTERN (16 * 1024) /* objects above this are patterned sparsely */
#define EDGE_WORDS  512         /* first and last 4 KiB of a big object */
#define HUGE_SPAN   ((size_t)6 << 20)

/* The pattern loops are not what is fuzzed: without this, libFuzzer's comparison tracing
 * of every word they check took 3/4 of the run time. */
#if defined(__clang__) && __clang_major__ >= 13
#define NO_COVERAGE __attribute__((no_sanitize("coverage"), noinline))
#else
#define NO_COVERAGE __attribute__((noinline))
#endif

enum op {
    OP_MALLOC,
    OP_CALLOC,
    OP_FREE,
    OP_REALLOC,
    OP_POSIX_MEMALIGN,
    OP_ALIGNED_ALLOC,
    OP_MEMALIGN,
    OP_USABLE,
    OP_BULK_ALLOC,
    OP_BULK_FREE,
    OP_REMOTE_FREE,
    OP_REMOTE_MALLOC,
    OP_FOREIGN,
    OP_ALLOC_NODE,
    OP_COUNT
};

struct obj {
    uint8_t *p;    /* NULL: slot empty */
    size_t size;   /* requested */
    size_t usable; /* zkm_usable_size() when it was patterned */
    uint64_t seed;
};

struct rec {
    uint8_t op, slot, aux, tier, count;
    uint32_t v;
};

static struct obj g_slots[NSLOTS];
static uint64_t g_serial;

/* ---- pattern ------------------------------------------------------------------------ */

typedef uint64_t __attribute__((may_alias)) word_t;

static inline uint64_t word_of(uint64_t seed, size_t j)
{
    uint64_t x = seed + j * 0x9e3779b97f4a7c15ULL;
    x ^= x >> 29;
    return x * 0xbf58476d1ce4e5b9ULL;
}

static uint64_t seed_for(unsigned slot, size_t size)
{
    g_serial++;
    return ((uint64_t)(slot + 1) << 48) ^ ((uint64_t)size * 0xc2b2ae3d27d4eb4fULL) ^ g_serial;
}

/* Whether word j of an object of `usable` bytes carries the pattern: every word up to
 * BIG_PATTERN bytes; above, the first and last EDGE_WORDS and every 32nd between. */
static inline bool word_patterned(size_t j, size_t usable)
{
    size_t words = (usable + 7) / 8;
    return usable <= BIG_PATTERN || j < EDGE_WORDS || j + EDGE_WORDS >= words || j % 32 == 0;
}

/* The first word after j that word_patterned(). */
static inline size_t next_word(size_t j, size_t usable)
{
    size_t words = (usable + 7) / 8;
    j++;
    if (usable <= BIG_PATTERN || j < EDGE_WORDS || j + EDGE_WORDS >= words)
        return j;
    size_t up = (j + 31) & ~(size_t)31;
    return up < words - EDGE_WORDS ? up : words - EDGE_WORDS;
}

/* Byte n of the object is byte n % 8 of word_of(seed, n / 8): whole words are stored as
 * such (objects are 8-byte aligned), a partial last word byte by byte. */
NO_COVERAGE static void pattern_fill(uint8_t *p, uint64_t seed, size_t usable)
{
    size_t full = usable / 8;
    for (size_t j = 0; j < full; j = next_word(j, usable))
        *(word_t *)(p + j * 8) = word_of(seed, j);
    if (usable % 8) {
        uint64_t w = word_of(seed, full);
        memcpy(p + full * 8, &w, usable % 8);
    }
}

static void report_corrupt(const uint8_t *p, size_t usable, size_t at)
{
    fprintf(stderr, "fuzz-alloc: object %p (%zu usable) corrupt at byte %zu\n", (const void *)p,
            usable, at);
}

/* Check the pattern laid for `usable` bytes, on its first `limit` bytes only. */
NO_COVERAGE static void pattern_check(const uint8_t *p, uint64_t seed, size_t usable, size_t limit)
{
    size_t full = limit / 8;
    for (size_t j = 0; j < full; j = next_word(j, usable)) {
        if (*(const word_t *)(p + j * 8) != word_of(seed, j)) {
            report_corrupt(p, usable, j * 8);
            FUZZ_CHECK(!"pattern intact");
        }
    }
    if (limit % 8 && word_patterned(full, usable)) {
        uint64_t w = word_of(seed, full), got = 0;
        memcpy(&got, p + full * 8, limit % 8);
        w &= (1ULL << (8 * (limit % 8))) - 1;
        if (got != w)
            report_corrupt(p, usable, full * 8);
        FUZZ_CHECK(got == w);
    }
}

NO_COVERAGE static void check_zero(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        FUZZ_CHECK(*(const word_t *)(p + i) == 0);
    for (; i < n; i++)
        FUZZ_CHECK(p[i] == 0);
}

/* ---- decoding --------------------------------------------------------------------------- */

static size_t edge_size(uint32_t v)
{
    static const size_t edges[] = {
        0,
        1,
        8,
        16,
        128,
        256,
        257,
        1024,
        4096,
        8192,
        8193,
        16384,
        65536,
        (size_t)1 << 20,
        ZKM_LARGE_MAX - ZKM_UNIT_SIZE,
        ZKM_LARGE_MAX,
        ZKM_HUGE_MAX,
        ZKM_SLAB_SIZE,
        2 * ZKM_SLAB_SIZE,
    };
    size_t e = edges[v % (sizeof(edges) / sizeof(edges[0]))];
    size_t d = (v >> 8) % 33;
    return e + d >= 16 ? e + d - 16 : 0;
}

static size_t decode_size(uint8_t tier, uint32_t v)
{
    unsigned t = tier & 15;
    if (t <= 5)
        return v % 257;
    if (t <= 9)
        return 257 + v % (8192 - 256);
    if (t <= 12)
        return 8193 + v % (ZKM_HUGE_MAX - 8192);
    if (t <= 14)
        return edge_size(v);
    return ZKM_HUGE_MAX + 1 + v % HUGE_SPAN;
}

/* A power of two up to 1 MiB, or (bits 5-6) one that is bad for some of the calls. */
static size_t decode_align(uint8_t aux)
{
    size_t a = (size_t)1 << ((aux & 31) % 21);
    switch ((aux >> 5) & 3) {
    case 1:
        return 0;
    case 2:
        return 4;
    case 3:
        return a >= 4 ? 3 * a : 24;
    default:
        return a;
    }
}

static bool pow2(size_t a)
{
    return a && !(a & (a - 1));
}

/* ---- live objects ----------------------------------------------------------------------- */

static void check_fresh(unsigned slot, const uint8_t *p, size_t size, size_t align)
{
    FUZZ_CHECK(p != NULL);
    FUZZ_CHECK(zkm_owns(p));
    size_t min_align = size <= 8 ? 8 : 16;
    FUZZ_CHECK((uintptr_t)p % min_align == 0);
    if (align)
        FUZZ_CHECK((uintptr_t)p % align == 0);
    size_t usable = zkm_usable_size(p);
    FUZZ_CHECK(usable >= size);
    for (unsigned i = 0; i < NSLOTS; i++) {
        const struct obj *o = &g_slots[i];
        if (i == slot || !o->p)
            continue;
        bool apart = p + usable <= o->p || o->p + o->usable <= p;
        if (!apart)
            fprintf(stderr, "fuzz-alloc: new %p+%zu overlaps slot %u %p+%zu\n", (const void *)p,
                    usable, i, (const void *)o->p, o->usable);
        FUZZ_CHECK(apart);
    }
}

/* Take a new object into an empty slot: check it, pattern it. */
static void adopt(unsigned slot, uint8_t *p, size_t size, size_t align)
{
    struct obj *o = &g_slots[slot];
    FUZZ_CHECK(o->p == NULL);
    check_fresh(slot, p, size, align);
    o->p = p;
    o->size = size;
    o->usable = zkm_usable_size(p);
    o->seed = seed_for(slot, size);
    pattern_fill(p, o->seed, o->usable);
}

static void check_obj(const struct obj *o)
{
    FUZZ_CHECK(zkm_usable_size(o->p) == o->usable);
    pattern_check(o->p, o->seed, o->usable, o->usable);
}

/* Check and forget the slot's object; returns it (NULL if the slot was empty). */
static uint8_t *release(unsigned slot)
{
    struct obj *o = &g_slots[slot];
    uint8_t *p = o->p;
    if (p)
        check_obj(o);
    o->p = NULL;
    return p;
}

static void drop(unsigned slot)
{
    zkm_free(release(slot));
}

/* ---- helper thread: remote frees and objects allocated elsewhere ---------------------- */

static pthread_mutex_t h_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t h_cond = PTHREAD_COND_INITIALIZER;
static enum { H_IDLE, H_FREE, H_MALLOC, H_DONE } h_state;
static void *h_ptr;
static size_t h_size;

static void *helper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&h_lock);
    for (;;) {
        while (h_state != H_FREE && h_state != H_MALLOC)
            pthread_cond_wait(&h_cond, &h_lock);
        if (h_state == H_FREE)
            zkm_free(h_ptr);
        else
            h_ptr = zkm_malloc(h_size);
        h_state = H_DONE;
        pthread_cond_broadcast(&h_cond);
    }
    return NULL;
}

/* Run one request on the helper thread and wait for it. */
static void *on_helper(int what, void *p, size_t size)
{
    static pthread_t tid;
    static bool started;
    if (!started) {
        FUZZ_CHECK(pthread_create(&tid, NULL, helper_main, NULL) == 0);
        started = true;
    }
    pthread_mutex_lock(&h_lock);
    h_ptr = p;
    h_size = size;
    h_state = what;
    pthread_cond_broadcast(&h_cond);
    while (h_state != H_DONE)
        pthread_cond_wait(&h_cond, &h_lock);
    h_state = H_IDLE;
    void *r = h_ptr;
    pthread_mutex_unlock(&h_lock);
    return r;
}

/* ---- operations ---------------------------------------------------------------------------- */

static void op_calloc(const struct rec *r, size_t size)
{
    if (r->aux & 0x80) { /* n * size overflows (volatile: no compile-time warning) */
        volatile size_t big = SIZE_MAX / 3 + r->count;
        errno = 0;
        FUZZ_CHECK(zkm_calloc(big, 4 + size) == NULL);
        FUZZ_CHECK(errno == ENOMEM);
        return;
    }
    size_t n = 1 + r->count % 8, each = size / n;
    uint8_t *p = zkm_calloc(n, each);
    FUZZ_CHECK(p != NULL);
    check_zero(p, n * each);
    drop(r->slot);
    adopt(r->slot, p, n * each, 0);
}

static void op_realloc(const struct rec *r, size_t size)
{
    struct obj *o = &g_slots[r->slot];
    if (!o->p) { /* realloc(NULL, n) = malloc(n) */
        adopt(r->slot, zkm_realloc(NULL, size), size, 0);
        return;
    }
    struct obj old = *o;
    uint8_t *p = release(r->slot);
    if ((r->aux & 0x80) || size == 0) { /* realloc(p, 0) frees p and returns NULL */
        FUZZ_CHECK(zkm_realloc(p, 0) == NULL);
        return;
    }
    uint8_t *q = zkm_realloc(p, size);
    FUZZ_CHECK(q != NULL);
    pattern_check(q, old.seed, old.usable, old.size < size ? old.size : size);
    check_fresh(r->slot, q, size, 0);
    o->p = q;
    o->size = size;
    o->usable = zkm_usable_size(q);
    o->seed = old.seed; /* the kept bytes carry it; the rest is laid anew */
    pattern_fill(q, o->seed, o->usable);
}

static void op_posix_memalign(const struct rec *r, size_t size)
{
    size_t align = decode_align(r->aux);
    void *p = (void *)&g_slots; /* must stay untouched on failure */
    errno = 12345;
    int err = zkm__posix_memalign(&p, align, size);
    FUZZ_CHECK(errno == 12345);
    if (align < sizeof(void *) || !pow2(align)) {
        FUZZ_CHECK(err == EINVAL && p == (void *)&g_slots);
        return;
    }
    FUZZ_CHECK(err == 0);
    drop(r->slot);
    adopt(r->slot, p, size, align);
}

static void op_aligned_alloc(const struct rec *r, size_t size)
{
    size_t align = decode_align(r->aux);
    errno = 0;
    void *p = zkm_aligned_alloc(align, size);
    if (!pow2(align)) {
        FUZZ_CHECK(p == NULL && errno == EINVAL);
        return;
    }
    drop(r->slot);
    adopt(r->slot, p, size, align);
}

static void op_memalign(const struct rec *r, size_t size)
{
    size_t align = decode_align(r->aux), want = align ? align : 1;
    while (!pow2(want)) /* memalign rounds up to a power of two */
        want = (want | (want - 1)) + 1;
    void *p = zkm__memalign(align, size);
    drop(r->slot);
    adopt(r->slot, p, size, want);
}

static void op_usable(const struct rec *r)
{
    const struct obj *o = &g_slots[r->slot];
    if (!o->p) {
        FUZZ_CHECK(zkm_usable_size(NULL) == 0);
        return;
    }
    FUZZ_CHECK(zkm_owns(o->p) && zkm_usable_size(o->p) >= o->size);
    check_obj(o);
}

/* zkm_alloc_bulk into count % 8 + 1 consecutive slots. */
static void op_bulk_alloc(const struct rec *r, size_t size)
{
    size_t n = 1 + r->count % 8;
    void *out[8];
    for (size_t i = 0; i < n; i++)
        drop((r->slot + i) % NSLOTS);
    FUZZ_CHECK(zkm_alloc_bulk(size, n, out) == 0);
    for (size_t i = 0; i < n; i++)
        adopt((unsigned)(r->slot + i) % NSLOTS, out[i], size, 0);
}

/* zkm_free_bulk on the slots slot + i for every bit i of count (empty ones as NULL). */
static void op_bulk_free(const struct rec *r)
{
    void *ptrs[8];
    size_t n = 0;
    for (unsigned i = 0; i < 8; i++)
        if (r->count & (1u << i))
            ptrs[n++] = release((r->slot + i) % NSLOTS);
    zkm_free_bulk(ptrs, n);
}

static void op_foreign(size_t size)
{
    size = size % 65536 + 1;
    uint8_t *p = malloc(size);
    FUZZ_CHECK(p != NULL);
    FUZZ_CHECK(!zkm_owns(p));
    memset(p, 0x5a, size);
    uint8_t *q = zkm_realloc(p, size * 2);
    FUZZ_CHECK(q != NULL && !zkm_owns(q));
    for (size_t i = 0; i < size; i++)
        FUZZ_CHECK(q[i] == 0x5a);
    zkm_free(q);
}

static void op_alloc_node(const struct rec *r, size_t size)
{
    int node = (r->aux & 0x80) ? 0 : ZKM_NODE_LOCAL;
    void *p = zkm_alloc_node(size, node);
    drop(r->slot);
    adopt(r->slot, p, size, 0);
}

static void run(const struct rec *r)
{
    size_t size = decode_size(r->tier, r->v);
    switch (r->op % OP_COUNT) {
    case OP_MALLOC:
        drop(r->slot);
        adopt(r->slot, zkm_malloc(size), size, 0);
        break;
    case OP_CALLOC:
        op_calloc(r, size);
        break;
    case OP_FREE:
        drop(r->slot);
        break;
    case OP_REALLOC:
        op_realloc(r, size);
        break;
    case OP_POSIX_MEMALIGN:
        op_posix_memalign(r, size);
        break;
    case OP_ALIGNED_ALLOC:
        op_aligned_alloc(r, size);
        break;
    case OP_MEMALIGN:
        op_memalign(r, size);
        break;
    case OP_USABLE:
        op_usable(r);
        break;
    case OP_BULK_ALLOC:
        op_bulk_alloc(r, size);
        break;
    case OP_BULK_FREE:
        op_bulk_free(r);
        break;
    case OP_REMOTE_FREE:
        on_helper(H_FREE, release(r->slot), 0);
        break;
    case OP_REMOTE_MALLOC:
        drop(r->slot);
        adopt(r->slot, on_helper(H_MALLOC, NULL, size), size, 0);
        break;
    case OP_FOREIGN:
        op_foreign(size);
        break;
    case OP_ALLOC_NODE:
        op_alloc_node(r, size);
        break;
    }
}

static void setup_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    /* before the allocator's first call reads the environment */
    setenv("ZKMEM_SOCKET", "/nonexistent/zkmem-fuzz/zkmemd.sock", 1);
    unsetenv("ZKMEM_REQUIRE_DAEMON");
    unsetenv("ZKMEM_MODE");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup_once();
    g_serial = 0;
    size_t ops = size / RECORD;
    if (ops > MAX_OPS)
        ops = MAX_OPS;
    for (size_t i = 0; i < ops; i++) {
        const uint8_t *b = data + i * RECORD;
        struct rec r = {.op = b[0],
                        .slot = (uint8_t)(b[1] % NSLOTS),
                        .aux = b[2],
                        .tier = b[3],
                        .v = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16,
                        .count = b[7]};
        run(&r);
    }
    for (unsigned s = 0; s < NSLOTS; s++)
        drop(s);
    return 0;
}
