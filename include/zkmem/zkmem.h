/* SPDX-License-Identifier: MIT */
/*
 * zkmem.h - the public API of libzkmem-client.
 *
 * Two levels:
 *   - slabs: connect to zkmemd and acquire/release whole hugepage slabs (zkm_slab_*);
 *   - objects: the allocator built on them (zkm_malloc & co., the malloc family through
 *     libzkmem-preload.so).
 * Every function returns 0 or a negative errno unless it says otherwise, leaves its
 * ret_ outputs untouched on failure, and never prints.
 */
#ifndef ZKMEM_ZKMEM_H
#define ZKMEM_ZKMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZKM_API __attribute__((visibility("default")))

#define ZKMEM_VERSION_MAJOR 0
#define ZKMEM_VERSION_MINOR 1

/* Default socket; $ZKMEM_SOCKET overrides it. */
#define ZKM_DEFAULT_SOCKET "/run/zkmem/zkmemd.sock"

/* Node selectors for zkm_slab_acquire() and zkm_alloc_node(). */
#define ZKM_NODE_ANY   (-1) /* the daemon's choice: the client's home node, then nearest */
#define ZKM_NODE_LOCAL (-2) /* the node of the CPU the calling thread runs on */

struct zkm_conn;

/* A slab granted by the daemon, mapped in this process. */
struct zkm_slab {
    void *addr;      /* aligned to its size */
    size_t size;     /* bytes; a multiple of 2 MiB */
    uint32_t handle; /* daemon's handle (node << 24 | index) */
    int node;        /* logical node it was placed on */
    int zeroed;      /* 1: every byte is zero */
};

/*
 * Connect to zkmemd at `socket_path` (NULL: $ZKMEM_SOCKET, else ZKM_DEFAULT_SOCKET),
 * authenticate, negotiate the protocol version and map the control block and the
 * domain's node memory. Safe to call from inside malloc: it never allocates from the
 * C heap. Errors: -ENOENT/-ECONNREFUSED (no daemon), -EPROTONOSUPPORT (version mismatch),
 * -EACCES (refused by the daemon's policy), -EMFILE (out of descriptors: this process's,
 * or the daemon's, which refuses the client), -EBADMSG (daemon spoke garbage).
 */
ZKM_API int zkm_connect(const char *socket_path, struct zkm_conn **ret_conn);

/* Give every held slab back and close the session. */
ZKM_API void zkm_disconnect(struct zkm_conn *conn);

/*
 * Acquire one slab on `node` (a logical node, ZKM_NODE_ANY or ZKM_NODE_LOCAL). The
 * common case pops a pre-granted slab from the node's grant ring in shared memory: no
 * syscall, no round trip. When the ring is empty it asks the daemon over the socket.
 * Lock-free and thread-safe on the ring; the round trip is serialised per connection.
 * Errors: -ENOMEM (arenas exhausted), -EDQUOT (domain budget), -ENOTCONN (daemon gone).
 */
ZKM_API int zkm_slab_acquire(struct zkm_conn *conn, int node, struct zkm_slab *ret_slab);

/* Return a slab. Through the return ring: no syscall unless the daemon sleeps.
 * -EINVAL if the slab was not acquired through this connection. */
ZKM_API int zkm_slab_release(struct zkm_conn *conn, const struct zkm_slab *slab);

/* Logical nodes the daemon serves, and the node of the calling thread's CPU (read from
 * rseq: no syscall). */
ZKM_API int zkm_conn_nodes(const struct zkm_conn *conn);
ZKM_API int zkm_conn_local_node(const struct zkm_conn *conn);
ZKM_API size_t zkm_conn_slab_size(const struct zkm_conn *conn);

/* Session counters of this connection (for tests and benchmarks). */
struct zkm_conn_counters {
    uint64_t ring_pops;      /* slabs taken from a grant ring */
    uint64_t round_trips;    /* acquisitions that needed the daemon */
    uint64_t releases;       /* slabs given back */
    uint64_t doorbell_wakes; /* FUTEX_WAKE syscalls made */
};
ZKM_API void zkm_conn_counters(const struct zkm_conn *conn, struct zkm_conn_counters *ret);

#ifdef __cplusplus
}
#endif

#include <zkmem/alloc.h>

#endif /* ZKMEM_ZKMEM_H */
