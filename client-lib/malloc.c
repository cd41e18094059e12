/* SPDX-License-Identifier: MIT */
/*
 * malloc.c - the public object API (zkm_*) with the exact contracts of the C malloc
 * family; preload.c exports the same functions under the C library's names.
 *
 * Contracts (as glibc): malloc(0) returns a unique pointer; free(NULL) does nothing;
 * calloc/reallocarray overflow -> NULL + ENOMEM; realloc(NULL, n) = malloc(n),
 * realloc(p, 0) frees and returns NULL; sizes above PTRDIFF_MAX -> ENOMEM;
 * posix_memalign returns EINVAL/ENOMEM and leaves errno alone; aligned_alloc with a
 * non-power-of-two alignment -> EINVAL; memalign rounds the alignment up to a power of
 * two. Pointers zkmem did not allocate go to the C library (zkm__foreign_*; the
 * versions here are weak: preload.c replaces them with glibc's __libc_* entry points).
 */
#include "alloc.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- foreign pointers (plain library: the program's own C allocator) ---------------- */

__attribute__((weak)) void zkm__foreign_free(void *p)
{
    free(p);
}

__attribute__((weak)) void *zkm__foreign_realloc(void *p, size_t n)
{
    return realloc(p, n);
}

__attribute__((weak)) size_t zkm__foreign_usable_size(void *p)
{
    return malloc_usable_size(p);
}

/* ---- the family ---------------------------------------------------------------------------- */

ZKM_API void *zkm_malloc(size_t size)
{
    return zkm__malloc_inline(size);
}

ZKM_API void zkm_free(void *p)
{
    zkm__free_inline(p);
}

ZKM_API void *zkm_calloc(size_t n, size_t size)
{
    size_t t;
    if (zkm_unlikely(__builtin_mul_overflow(n, size, &t))) {
        errno = ENOMEM;
        return NULL;
    }
    if (t <= 1024) {
        void *p = zkm__malloc_inline(t);
        if (p)
            memset(p, 0, t);
        return p;
    }
    return zkm__alloc_generic(t, 0, -1, true);
}

ZKM_API size_t zkm_usable_size(const void *p)
{
    return zkm__usable(p);
}

static ZKM_NOINLINE void *realloc_not_ours(void *p, size_t size)
{
    if (zkm__in_boot(p)) {
        void *q = zkm__malloc_inline(size);
        if (q) {
            size_t old = zkm__boot_usable(p);
            memcpy(q, p, old < size ? old : size);
        }
        return q;
    }
    return zkm__foreign_realloc(p, size);
}

/* A class block p of page pg in slab s moves to a block for size (copy, free). The free
 * knows its page: no second slab lookup when this thread owns the slab. */
static void *realloc_class_move(struct zkm_shdr *s, struct zkm_page *pg, void *p, size_t size)
{
    size_t old = zkm__class_usable(s, pg, p);
    void *q = size > old ? zkm__alloc_growing(size) : zkm__malloc_inline(size);
    if (!q)
        return NULL; /* p untouched */
    memcpy(q, p, old < size ? old : size);
    struct zkm_heap *o = atomic_load_explicit(&s->owner, memory_order_relaxed);
    if (zkm_unlikely(o != zkm__tls_owner)) { /* remote, or a monitoring sample is due */
        zkm__free_slow(p);
        return q;
    }
    struct zkm_block *b = p;
    b->next = pg->free;
    pg->free = b;
    zkm__free_finish(o, pg);
    return q;
}

/* One slab lookup: in place, or a new home and a copy. */
void *zkm__realloc(void *p, size_t size)
{
    if (!p)
        return zkm__malloc_inline(size);
    if (size == 0) {
        zkm__free_inline(p);
        return NULL;
    }
    if (zkm_unlikely(size > PTRDIFF_MAX)) {
        errno = ENOMEM;
        return NULL;
    }
    struct zkm_shdr *s = zkm__slab_of(p);
    if (zkm_unlikely(!s))
        return realloc_not_ours(p, size);
    if (zkm_likely(s->kind == ZKM_SLAB_PAGES)) {
        struct zkm_page *pg = zkm__page_of(s, p);
        if (zkm_likely(pg->cls != ZKM_CLASS_LARGE)) {
            size_t old = pg->block_size;       /* a block from a hole holds at least this */
            if (size <= old && size > old / 2) /* a smaller class would not save half */
                return p;
            return realloc_class_move(s, pg, p, size);
        }
    }
    if (zkm__resize_in_place(s, p, size))
        return p;
    size_t old = zkm__usable_of(s, p);
    if (s->kind == ZKM_SLAB_DIRECT && size > old) {
        void *q = zkm__direct_move(s, p, size);
        if (q)
            return q;
    }
    void *q = size > old ? zkm__alloc_growing(size) : zkm__malloc_inline(size);
    if (!q)
        return NULL; /* p untouched */
    memcpy(q, p, old < size ? old : size);
    zkm__free_inline(p);
    return q;
}

ZKM_API void *zkm_realloc(void *p, size_t size)
{
    return zkm__realloc(p, size);
}

/* alignment: a power of two. */
static void *alloc_aligned(size_t align, size_t size)
{
    if (align <= 8)
        return zkm__malloc_inline(size);
    if (size > PTRDIFF_MAX || align > ((size_t)1 << 40)) {
        errno = ENOMEM;
        return NULL;
    }
    return zkm__alloc_generic(size, align, -1, false);
}

ZKM_API void *zkm_aligned_alloc(size_t alignment, size_t size)
{
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    return alloc_aligned(alignment, size);
}

ZKM_API void *zkm_alloc_node(size_t size, int node)
{
    if (node == ZKM_NODE_ANY)
        return zkm__malloc_inline(size);
    if (node == ZKM_NODE_LOCAL)
        node = zkm__source_local_node();
    if (node < 0) {
        errno = EINVAL;
        return NULL;
    }
    return zkm__alloc_generic(size, 0, node, false);
}

ZKM_API int zkm_alloc_bulk(size_t size, size_t n, void **out)
{
    for (size_t i = 0; i < n; i++) {
        void *p = zkm__malloc_inline(size);
        if (zkm_unlikely(!p)) {
            while (i > 0)
                zkm__free_inline(out[--i]);
            return -ENOMEM;
        }
        out[i] = p;
    }
    return 0;
}

ZKM_API void zkm_free_bulk(void **ptrs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        zkm__free_inline(ptrs[i]);
}

ZKM_API int zkm_owns(const void *p)
{
    return zkm__slab_of(p) != NULL;
}

/* ---- glibc-only members (used by preload.c and the tests) ------------------------------ */

int zkm__posix_memalign(void **ret, size_t alignment, size_t size)
{
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0)
        return EINVAL;
    int saved = errno;
    void *p = alloc_aligned(alignment, size);
    errno = saved;
    if (!p)
        return ENOMEM;
    *ret = p;
    return 0;
}

void *zkm__memalign(size_t alignment, size_t size)
{
    if (alignment > ((size_t)1 << 62)) {
        errno = EINVAL;
        return NULL;
    }
    if (alignment & (alignment - 1)) /* glibc: round up to a power of two */
        alignment = (size_t)1 << (64 - __builtin_clzl(alignment));
    return alloc_aligned(alignment ? alignment : 1, size);
}

void *zkm__valloc(size_t size)
{
    return alloc_aligned((size_t)sysconf(_SC_PAGESIZE), size);
}

void *zkm__pvalloc(size_t size)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    if (size > PTRDIFF_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    size = size ? (size + pg - 1) & ~(pg - 1) : pg;
    return alloc_aligned(pg, size);
}

void *zkm__reallocarray(void *p, size_t n, size_t size)
{
    size_t t;
    if (__builtin_mul_overflow(n, size, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return zkm__realloc(p, t);
}
