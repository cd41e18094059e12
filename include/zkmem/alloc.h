/* SPDX-License-Identifier: MIT */
/*
 * alloc.h - the object allocator API (included by zkmem.h).
 *
 * Objects are carved from 2 MiB slabs that zkmemd grants (or local memory without a
 * daemon). These functions behave like their C counterparts (they return NULL and set
 * errno to ENOMEM on failure); libzkmem-preload.so exports the malloc family itself.
 *
 * Size tiers (thresholds from $ZKMEM_SMALL_THRESHOLD / $ZKMEM_LARGE_THRESHOLD):
 *   small  <= small_threshold (256 B)   size classes, per-thread pages
 *   medium <= large_threshold (8 KiB)   size classes, per-thread pages
 *   large  <= 2 MiB - 16 KiB            a span of 16 KiB units inside a slab
 *   huge   <= 2 MiB - 4 KiB             a whole slab
 *   above that                          a direct 2 MiB-aligned, hugepage-advised mapping
 * Every object is 16-byte aligned (8-byte objects: 8). Internal waste of a size class:
 * less than 16 bytes for requests up to 128 B, less than 1/8 of the request above.
 */
#ifndef ZKMEM_ALLOC_H
#define ZKMEM_ALLOC_H

#include <stddef.h>

#ifndef ZKM_API
#define ZKM_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

ZKM_API void *zkm_malloc(size_t size) __attribute__((malloc, alloc_size(1)));
/* NULL is a no-op; a pointer zkmem did not allocate is handed to the C library's free. */
ZKM_API void zkm_free(void *p);
/* n * size overflow: NULL and errno ENOMEM. */
ZKM_API void *zkm_calloc(size_t n, size_t size) __attribute__((malloc, alloc_size(1, 2)));
/* realloc(NULL, n) = malloc(n); realloc(p, 0) frees p and returns NULL (as glibc). */
ZKM_API void *zkm_realloc(void *p, size_t size) __attribute__((alloc_size(2)));
/* alignment: a power of two (any size, up to 1 GiB); else NULL and errno EINVAL. */
ZKM_API void *zkm_aligned_alloc(size_t alignment, size_t size)
    __attribute__((malloc, alloc_size(2)));
/* Bytes usable at p (>= the size asked for); 0 for NULL. */
ZKM_API size_t zkm_usable_size(const void *p);

/* Allocate on a logical node (ZKM_NODE_ANY, ZKM_NODE_LOCAL or 0..nodes-1). Objects on a
 * node other than the thread's own take at least a 16 KiB unit: meant for buffers. */
ZKM_API void *zkm_alloc_node(size_t size, int node) __attribute__((malloc, alloc_size(1)));

/* Allocate n objects of `size` bytes into out[0..n-1]: 0, or -ENOMEM with nothing
 * allocated and out[] untouched. */
ZKM_API int zkm_alloc_bulk(size_t size, size_t n, void **out);
/* Free ptrs[0..n-1] (NULL entries are skipped). */
ZKM_API void zkm_free_bulk(void **ptrs, size_t n);

/* 1 if p points into memory zkmem manages (an object it returned, or its slabs), else 0. */
ZKM_API int zkm_owns(const void *p);

/* The process's allocator counters (struct zkm_client_stats, the ZKM_CLIENT_STATS list in
 * zkmem's proto/zkm_proto.h: the figures zkmemd publishes for the process), read after
 * flushing the calling thread's own counts; other threads' counts are in up to their
 * last flush (at most a fraction of a second behind while they allocate; all of it once
 * they exit). In high_performance mode only the slab counts move. 0, or -EINVAL. */
struct zkm_client_stats;
ZKM_API int zkm_stats_snapshot(struct zkm_client_stats *ret);

#ifdef __cplusplus
}
#endif

#endif
