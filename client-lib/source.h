/* SPDX-License-Identifier: MIT */
/*
 * source.h - where the allocator gets its slabs (internal to libzkmem-client).
 *
 * The allocator never talks to the daemon itself; it asks this layer for a slab of
 * ZKM_SOURCE_SLAB bytes, aligned to ZKM_SOURCE_SLAB, on a node. The source serves:
 *   1. from zkmemd, through the process-wide connection (grant ring: no syscall);
 *   1a. the first start_slabs slabs of a process with a daemon come from its own anonymous
 *      memory, 4 KiB pages faulted on first touch (MADV_NOHUGEPAGE): a process whose heap
 *      stays under start_slabs x 2 MiB pins no hugepage, and its RSS is what it touched.
 *      Policy, not a fallback: counted (start_bytes), not logged;
 *   2. without a reachable daemon, from local anonymous memory (2 MiB aligned,
 *      MADV_HUGEPAGE), counted, said once on stderr if $ZKMEM_VERBOSE is set, and
 *      retried so that the process moves to daemon memory when one appears;
 *   3. with $ZKMEM_REQUIRE_DAEMON=1 and no daemon: -ENOTCONN, nothing local.
 * All of it is safe inside malloc: no C-heap allocation, no stdio.
 */
#ifndef ZKM_CLIENT_SOURCE_H
#define ZKM_CLIENT_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include <zkmem/zkmem.h>

#include "zkm_proto.h"

#define ZKM_SOURCE_SLAB ((size_t)2 << 20) /* every slab is exactly this size and aligned */

enum zkm_source_kind {
    ZKM_SOURCE_DAEMON = 1,
    ZKM_SOURCE_LOCAL = 2, /* anonymous memory: no daemon, or a fork child's private copy */
};

struct zkm_source_slab {
    void *addr;      /* ZKM_SOURCE_SLAB-aligned */
    uint32_t handle; /* daemon handle, or ZKM_HANDLE_INVALID for local memory */
    uint32_t gen;    /* connection generation that granted it */
    int node;        /* logical node */
    uint8_t kind;    /* enum zkm_source_kind */
    uint8_t zeroed;  /* 1: all bytes zero */
};

/* raw .. raw + span was reserved to place [keep, keep + len) aligned inside it: unmap the
 * rest (the head before keep and the tail after it; either may be empty). */
void zkm__unmap_outside(void *raw, size_t span, void *keep, size_t len);

/* One slab on `node` (logical, ZKM_NODE_ANY or ZKM_NODE_LOCAL). 0 or -errno. */
int zkm__source_get(int node, struct zkm_source_slab *ret);

/* Give a slab back (to the daemon, or unmap local memory). A slab from an older
 * connection generation (daemon restarted, or we are a fork child) is unmapped locally. */
void zkm__source_put(const struct zkm_source_slab *s);

/* Node of the calling thread's CPU (rseq, no syscall); 0 without a daemon. */
int zkm__source_local_node(void);
int zkm__source_nodes(void);

/* The process's control-block statistics (without a daemon, a process-local block;
 * never NULL). The allocator adds its counters here (relaxed atomic adds at flush points). */
struct zkm_client_stats *zkm__source_stats(void);

/* Tunables the daemon published (generation counter lets the allocator poll cheaply). */
const struct zkm_tunables *zkm__source_tunables(void);

/* Draining (pool.c): the control block's occupancy table (ours to write) and the daemon's
 * drain list, with the generation a slab must carry for its handle to mean something to
 * this daemon. -ENOTCONN without a session, or when daemon slabs are larger than a
 * source slab (one handle would stand for several of our slabs). */
int zkm__source_drain_tables(struct zkm_occupancy **ret_occ,
                             const struct zkm_drain_list **ret_drain, uint32_t *ret_gen);

/* Test seam: the tunables used without a daemon, writable. A test changes fields and
 * then increments gen (release), as the daemon does in the control block. */
struct zkm_tunables *zkm__source_local_tunables(void);

/* Called by the allocator's pthread_atfork handlers. In the child, every slab the
 * parent held becomes private anonymous memory with the same contents at the same
 * address (the shared mappings would leak writes between parent and child); the child
 * then opens its own session lazily. */
void zkm__source_atfork_prepare(void);
void zkm__source_atfork_parent(void);
void zkm__source_atfork_child(void);

/* Counters of the source layer (for stats and tests). */
struct zkm_source_counters {
    uint64_t daemon_slabs; /* slabs obtained from the daemon */
    uint64_t local_slabs;  /* slabs obtained from local memory (no daemon) */
    uint64_t start_slabs;  /* start slabs: the process's own 4 KiB pages (start_slabs) */
    uint64_t connect_failures;
    uint64_t reconnects;
};
void zkm__source_counters(struct zkm_source_counters *ret);

#endif
