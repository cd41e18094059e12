/* SPDX-License-Identifier: MIT */
/*
 * preload.c - libzkmem-preload.so: the C library's malloc family, served by zkmem.
 *
 *   LD_PRELOAD=libzkmem-preload.so program
 *
 * Safe from the first call: the allocator initialises lazily without the C heap or
 * stdio (alloc.c), TLS is initial-exec, and nothing here uses dlsym on the hot paths.
 * Pointers zkmem did not allocate (from glibc before the preload was active, or from a
 * library bound to glibc directly) are recognised by the slab map and handed to glibc
 * through its exported __libc_* entry points, so they are never crashed on.
 *
 * $ZKMEM_STATS_FD=<fd>: at exit, one line of counters is written to that descriptor
 * (proof for tests and benchmarks that the preload was in effect). Nothing else prints.
 */
#include "alloc.h"

#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PUBLIC __attribute__((visibility("default")))

extern void __libc_free(void *p);
extern void *__libc_realloc(void *p, size_t n);

void zkm__foreign_free(void *p)
{
    __libc_free(p);
}

void *zkm__foreign_realloc(void *p, size_t n)
{
    return __libc_realloc(p, n);
}

size_t zkm__foreign_usable_size(void *p)
{
    static size_t (*real)(void *);
    if (!real)
        real = (size_t(*)(void *))dlvsym(RTLD_NEXT, "malloc_usable_size", "GLIBC_2.2.5");
    return real ? real(p) : 0;
}

PUBLIC void *malloc(size_t size)
{
    return zkm__malloc_inline(size);
}

PUBLIC void free(void *p)
{
    zkm__free_inline(p);
}

PUBLIC void *calloc(size_t n, size_t size)
{
    return zkm_calloc(n, size);
}

PUBLIC void *realloc(void *p, size_t size)
{
    return zkm__realloc(p, size);
}

PUBLIC void *reallocarray(void *p, size_t n, size_t size)
{
    return zkm__reallocarray(p, n, size);
}

PUBLIC int posix_memalign(void **ret, size_t alignment, size_t size)
{
    return zkm__posix_memalign(ret, alignment, size);
}

PUBLIC void *aligned_alloc(size_t alignment, size_t size)
{
    return zkm_aligned_alloc(alignment, size);
}

PUBLIC void *memalign(size_t alignment, size_t size)
{
    return zkm__memalign(alignment, size);
}

PUBLIC void *valloc(size_t size)
{
    return zkm__valloc(size);
}

PUBLIC void *pvalloc(size_t size)
{
    return zkm__pvalloc(size);
}

PUBLIC size_t malloc_usable_size(void *p)
{
    return zkm__usable(p);
}

PUBLIC void cfree(void *p);
PUBLIC void cfree(void *p)
{
    zkm__free_inline(p);
}

/* ---- ZKMEM_STATS_FD ------------------------------------------------------------------- */

static char *put_str(char *o, const char *s)
{
    while (*s)
        *o++ = *s++;
    return o;
}

static char *put_u64(char *o, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *o++ = tmp[--n];
    return o;
}

static char *put_field(char *o, const char *key, uint64_t v)
{
    return put_u64(put_str(o, key), v);
}

__attribute__((destructor)) static void preload_stats_dump(void)
{
    const char *e = getenv("ZKMEM_STATS_FD");
    if (!e || *e < '0' || *e > '9')
        return;
    int fd = atoi(e);
    struct zkm_alloc_counters c;
    zkm__alloc_counters(&c);
    struct zkm_source_counters sc;
    zkm__source_counters(&sc);
    char buf[512], *o = buf;
    o = put_field(o, "zkmem-preload: pid=", (uint64_t)getpid());
    o = put_field(o, " heaps=", c.heaps_created);
    o = put_field(o, " slabs_from_source=", c.slabs_from_source);
    o = put_field(o, " daemon_slabs=", sc.daemon_slabs);
    o = put_field(o, " local_slabs=", sc.local_slabs);
    o = put_field(o, " start_slabs=", sc.start_slabs);
    struct zkm_client_stats ps;
    zkm__pool_stats(&ps);
    o = put_field(o, " slabs_held=", ps.slabs_held);
    o = put_field(o, " slabs_sparse=", ps.slabs_sparse);
    o = put_field(o, " slabs_cached=", ps.slabs_cached);
    o = put_field(o, " direct_maps=", c.direct_maps);
    o = put_field(o, " direct_reused=", c.direct_reused);
    o = put_field(o, " direct_moved=", c.direct_moved);
    o = put_field(o, " remote_frees=", c.remote_frees);
    o = put_field(o, " foreign_frees=", c.foreign_frees);
    o = put_field(o, " hole_pages=", c.hole_pages);
    o = put_field(o, " hole_allocs=", c.hole_allocs);
    *o++ = '\n';
    ssize_t r = write(fd, buf, (size_t)(o - buf));
    (void)r;
}
