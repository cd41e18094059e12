/* SPDX-License-Identifier: MIT */
/*
 * zkm_proto.h - the zkmem wire protocol and control-block layout.
 *
 * Shared by zkmemd, libzkmem-client and zkmemctl. PROTOCOL.md beside this file is the
 * prose spec; this header is the normative layout. Every size is pinned with
 * _Static_assert, so a change that moves a byte fails to compile instead of failing in
 * the field.
 *
 * 1. Socket messages. SOCK_SEQPACKET, one message per packet. Every message starts with
 *    struct zkm_hdr; the payload layout is fixed per type (zkm_msg_size()). A peer that
 *    receives a message decodes it only through zkm_msg_validate() (proto/validate.c).
 *
 * 2. Control block. One memfd per client, created and sized by the daemon, mapped
 *    MAP_SHARED by both. The client can write every byte of it, so the daemon treats it
 *    as hostile: it keeps private shadows of everything it writes there (ring tails,
 *    ring contents), reads each client-written word once (READ_ONCE), and validates it
 *    against its shadow before use (zkm_ctrl_* validators in validate.c).
 *
 * 3. Handles. A slab crosses the process boundary as a 32-bit handle: the logical node
 *    in the top 8 bits, the slab index inside that node's domain memfd in the low 24.
 *    Its bytes live at offset index * slab_size in that memfd. Never an address.
 *
 * Memory ordering on the rings (SPSC between the daemon and one client process):
 *   producer: write slot[tail & mask]; store-release tail = tail + 1
 *   consumer: load-acquire tail; read slot[head & mask]; store-release head = head + 1
 * Several threads of one client may consume one grant ring; they claim a slot with a
 * CAS on head after reading it (the producer never rewrites a slot at or after head).
 */
#ifndef ZKM_PROTO_H
#define ZKM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define ZKM_PROTO_MAGIC       0x314d4b5aU /* "ZKM1" little-endian */
#define ZKM_CTRL_MAGIC        0x4c52434bU /* "KCRL" */
#define ZKM_PROTO_VERSION_MIN 2
#define ZKM_PROTO_VERSION_MAX 2

#define ZKM_MAX_NODES    8    /* logical nodes a daemon serves */
#define ZKM_MAX_CPUS     1024 /* cpu -> node map entries in the control block */
#define ZKM_GRANT_CAP    64   /* entries per grant ring (power of two) */
#define ZKM_RETURN_CAP   256  /* entries in the return ring (power of two) */
#define ZKM_ACQUIRE_MAX  16   /* handles per ACQUIRE round trip */
#define ZKM_RELEASE_MAX  64   /* handles per RELEASE message */
#define ZKM_QUERY_MAX    32   /* records per QUERY reply page */
#define ZKM_COMM_LEN     16
#define ZKM_MSG_MAX_SIZE 8192 /* no message is larger; receivers use this buffer size */
#define ZKM_MSG_MAX_FDS  (1 + ZKM_MAX_NODES)

/* handle = node << 24 | slab index */
#define ZKM_HANDLE_NODE_SHIFT 24
#define ZKM_HANDLE_INDEX_MASK 0x00ffffffU
#define ZKM_HANDLE_INVALID    0xffffffffU
static inline uint32_t zkm_handle_make(uint32_t node, uint32_t index)
{
    return (node << ZKM_HANDLE_NODE_SHIFT) | (index & ZKM_HANDLE_INDEX_MASK);
}
static inline uint32_t zkm_handle_node(uint32_t h)
{
    return h >> ZKM_HANDLE_NODE_SHIFT;
}
static inline uint32_t zkm_handle_index(uint32_t h)
{
    return h & ZKM_HANDLE_INDEX_MASK;
}

/* A grant-ring slot is a slab index; this bit says the daemon guarantees it is zeroed. */
#define ZKM_GRANT_ZEROED 0x80000000U
/* Slot values that are never an index: a consumer that won an entry exchanges its slot to
 * TAKEN; the daemon withdraws an entry not yet taken by a CAS of its value to REVOKED
 * (zkm_ring.h). */
#define ZKM_GRANT_TAKEN   0x7fffffffU
#define ZKM_GRANT_REVOKED 0x7ffffffeU
_Static_assert(ZKM_HANDLE_INDEX_MASK < ZKM_GRANT_REVOKED, "ring markers are not indices");

/* ------------------------------------------------------------------------------------ */
/* Messages                                                                              */

enum zkm_msg_type {
    ZKM_MSG_HELLO = 1,     /* client -> daemon: version range, identity */
    ZKM_MSG_HELLO_REPLY,   /* daemon -> client: session, fds: ctrl + one memfd per node */
    ZKM_MSG_ACQUIRE,       /* client -> daemon: slabs now (ring was empty) */
    ZKM_MSG_ACQUIRE_REPLY, /* daemon -> client: handles */
    ZKM_MSG_RELEASE,       /* client -> daemon: handles back (bulk; ring is the usual way) */
    ZKM_MSG_STATUS_REPLY,  /* daemon -> client: status only */
    ZKM_MSG_QUERY,         /* zkmemctl -> daemon: read-only records */
    ZKM_MSG_QUERY_REPLY,   /* daemon -> zkmemctl */
    ZKM_MSG_ADMIN,         /* zkmemctl -> daemon: privileged action */
    ZKM_MSG_TYPE_END
};

/* Flags in HELLO. */
#define ZKM_HELLO_CTL 0x1U /* zkmemctl: no lease, no control block */
#define ZKM_HELLO_REATTACH                                                                         \
    0x2U /* a client of a previous daemon: reattach_id is its old session                          \
            id, the message carries its node memfds (one per node) */

/* Backing kinds, reported per arena. */
enum zkm_backing {
    ZKM_BACKING_HUGETLB = 1, /* hugetlb memfd, pages from the node's pool */
    ZKM_BACKING_SHMEM_THP,   /* shmem memfd with MADV_HUGEPAGE: fallback, logged */
    ZKM_BACKING_SHMEM_4K,    /* shmem memfd, 4 KiB pages: fallback, logged */
};

struct zkm_hdr {
    uint32_t magic;   /* ZKM_PROTO_MAGIC */
    uint16_t version; /* HELLO: 0; afterwards the negotiated version */
    uint16_t type;    /* enum zkm_msg_type */
    uint32_t len;     /* whole message, header included */
    uint32_t seq;     /* request sequence, echoed in the reply */
};
_Static_assert(sizeof(struct zkm_hdr) == 16, "hdr");

struct zkm_msg_hello {
    struct zkm_hdr hdr;
    uint16_t version_min;
    uint16_t version_max;
    uint32_t flags; /* ZKM_HELLO_* */
    char comm[ZKM_COMM_LEN];
    uint32_t want_depth;  /* hint: pre-granted slabs per node; 0 = daemon's choice */
    uint32_t reattach_id; /* with ZKM_HELLO_REATTACH, else 0 */
};
_Static_assert(sizeof(struct zkm_msg_hello) == 48, "hello");

struct zkm_msg_hello_reply {
    struct zkm_hdr hdr;
    int32_t status;       /* 0 or -errno; on -EPROTONOSUPPORT the range below is the daemon's;
                             -EAGAIN: the daemon is recovering this uid's memory, retry;
                             -ESRCH: REATTACH of a session the daemon does not know */
    uint16_t version;     /* negotiated */
    uint16_t version_max; /* daemon's highest */
    uint32_t client_id;
    uint32_t n_nodes;                   /* logical nodes; fds[1 + n] is node n's domain memfd */
    uint32_t n_fds;                     /* fds carried by this message */
    uint32_t slab_size;                 /* bytes, multiple of 2 MiB */
    uint32_t ctrl_size;                 /* bytes of the control block memfd (fds[0]) */
    uint32_t backing;                   /* enum zkm_backing of node 0 (all nodes share one kind) */
    uint64_t node_bytes[ZKM_MAX_NODES]; /* size of each node memfd (map it whole) */
};
_Static_assert(sizeof(struct zkm_msg_hello_reply) == 112, "hello_reply");

#define ZKM_NODE_ANY   (-1) /* daemon's choice (the client's home node, then by distance) */
#define ZKM_NODE_LOCAL (-2) /* the node of the calling thread's CPU (client resolves it) */

#define ZKM_ACQUIRE_STRICT 0x1U /* only this node: fail rather than fall back */

struct zkm_msg_acquire {
    struct zkm_hdr hdr;
    int32_t node;   /* logical node or ZKM_NODE_ANY */
    uint32_t count; /* 1..ZKM_ACQUIRE_MAX */
    uint32_t flags; /* ZKM_ACQUIRE_* */
    uint32_t reserved;
};
_Static_assert(sizeof(struct zkm_msg_acquire) == 32, "acquire");

struct zkm_msg_acquire_reply {
    struct zkm_hdr hdr;
    int32_t status; /* 0 (count > 0) or -errno (-ENOMEM: arenas exhausted; -EDQUOT: budget) */
    uint32_t count;
    uint32_t flags; /* bit i set: handles[i] is zeroed memory */
    uint32_t reserved;
    uint32_t handles[ZKM_ACQUIRE_MAX];
};
_Static_assert(sizeof(struct zkm_msg_acquire_reply) == 96, "acquire_reply");

struct zkm_msg_release {
    struct zkm_hdr hdr;
    uint32_t count; /* 1..ZKM_RELEASE_MAX */
    uint32_t reserved;
    uint32_t handles[ZKM_RELEASE_MAX];
};
_Static_assert(sizeof(struct zkm_msg_release) == 280, "release");

struct zkm_msg_status_reply {
    struct zkm_hdr hdr;
    int32_t status;
    uint32_t value; /* type-specific (RELEASE: handles accepted) */
};
_Static_assert(sizeof(struct zkm_msg_status_reply) == 24, "status_reply");

enum zkm_query_kind {
    ZKM_QUERY_STATUS = 1, /* one zkm_status_info */
    ZKM_QUERY_ARENAS,     /* zkm_arena_info per node */
    ZKM_QUERY_CLIENTS,    /* zkm_client_info per client, paged */
    ZKM_QUERY_CONFIG,     /* text: key = value lines */
    ZKM_QUERY_MAP,        /* arena slot map of one node, paged, one byte per slab */
    ZKM_QUERY_ADVICE,     /* zkm_advice_info per client, paged */
    ZKM_QUERY_KIND_END
};

struct zkm_msg_query {
    struct zkm_hdr hdr;
    uint32_t kind;   /* enum zkm_query_kind */
    uint32_t offset; /* first record (paging) */
    int32_t arg;     /* kind-specific (MAP: node; CLIENTS: pid filter or 0) */
    uint32_t reserved;
};
_Static_assert(sizeof(struct zkm_msg_query) == 32, "query");

#define ZKM_QUERY_PAYLOAD_MAX (ZKM_MSG_MAX_SIZE - 32)
struct zkm_msg_query_reply {
    struct zkm_hdr hdr;
    int32_t status;
    uint32_t kind;
    uint32_t count; /* records (or bytes for CONFIG/MAP) in this page */
    uint32_t total; /* records (bytes) in all pages */
    uint8_t payload[ZKM_QUERY_PAYLOAD_MAX];
};
_Static_assert(sizeof(struct zkm_msg_query_reply) == ZKM_MSG_MAX_SIZE, "query_reply");

enum zkm_admin_op {
    ZKM_ADMIN_COMPACT = 1, /* run a compaction pass now */
    ZKM_ADMIN_RESERVE,     /* arg0 = node, arg1 = hugepages */
    ZKM_ADMIN_TUNE_SET,    /* key = value */
    ZKM_ADMIN_OP_END
};

struct zkm_msg_admin {
    struct zkm_hdr hdr;
    uint32_t op;
    int32_t arg0;
    int64_t arg1;
    char key[32];
    char value[64];
};
_Static_assert(sizeof(struct zkm_msg_admin) == 128, "admin");

/* ------------------------------------------------------------------------------------ */
/* Query records                                                                         */

/* X(type, name, description): one list generates the struct, the JSON and the tables. */
#define ZKM_ARENA_FIELDS(X)                                                                        \
    X(uint32_t, node, "logical node")                                                              \
    X(int32_t, phys_node, "kernel node the pages are placed on")                                   \
    X(uint32_t, backing, "1 hugetlb, 2 shmem+THP, 3 shmem 4 KiB")                                  \
    X(uint32_t, simulated, "node comes from a simulated topology")                                 \
    X(uint64_t, slab_size, "bytes per slab")                                                       \
    X(uint64_t, capacity_slabs, "slabs the arena can grant")                                       \
    X(uint64_t, free_slabs, "slabs not granted")                                                   \
    X(uint64_t, granted_slabs, "slabs granted to clients (held or pre-granted)")                   \
    X(uint64_t, pregranted_slabs, "slabs waiting in clients' grant rings")                         \
    X(uint64_t, grants_total, "slabs granted since start")                                         \
    X(uint64_t, returns_total, "slabs returned since start")                                       \
    X(uint64_t, reclaimed_total, "slabs reclaimed from dead clients")                              \
    X(uint64_t, fallback_slabs, "slabs granted from small-page fallback memory")                   \
    X(uint64_t, misplaced_pages, "pages the kernel placed on another node")                        \
    X(uint64_t, exhausted_total, "requests that found the arena empty")                            \
    X(uint64_t, hugepages_free_sys, "HugePages free in this node's kernel pool")                   \
    X(uint64_t, cached_slabs, "returned slabs kept (pages resident) for their domain's reuse")     \
    X(uint64_t, cache_reuses_total, "grants served from a domain's cache (no zeroing)")            \
    X(uint64_t, decayed_total, "cached slabs given back to the node pool after decay_ms")          \
    X(uint64_t, pressure_reclaims_total,                                                           \
      "cached slabs taken back early because the arena ran out")                                   \
    X(uint64_t, remote_grants_total, "slabs granted here for a client whose home node ran out")    \
    X(uint64_t, stray_pages_total,                                                                 \
      "pages clients touched outside their leases, punched by the audit")

struct zkm_arena_info {
#define ZKM_X_FIELD(t, n, d) t n;
    ZKM_ARENA_FIELDS(ZKM_X_FIELD)
};
_Static_assert(sizeof(struct zkm_arena_info) == 160, "arena_info");

#define ZKM_CLIENT_FIELDS(X)                                                                       \
    X(uint32_t, client_id, "session id")                                                           \
    X(int32_t, pid, "process id")                                                                  \
    X(uint32_t, uid, "user id")                                                                    \
    X(uint32_t, node, "home node")                                                                 \
    X(uint64_t, slabs, "slabs held or pre-granted")                                                \
    X(uint64_t, bytes_granted, "bytes granted")                                                    \
    X(uint64_t, bytes_in_use, "bytes in live objects (client-published)")                          \
    X(uint64_t, refills, "slabs taken from the grant ring")                                        \
    X(uint64_t, waits, "acquisitions that needed a round trip to the daemon")                      \
    X(uint64_t, returns, "slabs returned")                                                         \
    X(uint64_t, alloc_ops, "allocations (client-published)")                                       \
    X(uint64_t, free_ops, "frees (client-published)")                                              \
    X(uint64_t, violations, "invalid writes to the control block seen by the daemon")              \
    X(uint64_t, page_faults, "user page faults inside zkmem memory (eBPF observer)")               \
    X(uint64_t, page_faults_all, "user page faults anywhere in the process (eBPF observer)")       \
    X(uint64_t, remote_runs, "scheduler runs on a node other than home (eBPF observer)")           \
    X(uint64_t, tcache_hits, "allocations served by the thread cache (client-published)")          \
    X(uint64_t, tcache_misses, "allocations that went past the thread cache (client-published)")   \
    X(uint64_t, small_allocs, "allocations in the small tier (client-published)")                  \
    X(uint64_t, medium_allocs, "allocations in the medium tier (client-published)")                \
    X(uint64_t, large_allocs, "allocations in the large tier (client-published)")                  \
    X(uint64_t, huge_allocs, "allocations in the huge tier (client-published)")                    \
    X(uint64_t, start_bytes,                                                                       \
      "bytes of start slabs in 4 KiB pages, not hugepages (client-published)")

struct zkm_client_info {
    ZKM_CLIENT_FIELDS(ZKM_X_FIELD)
    char comm[ZKM_COMM_LEN];
};
_Static_assert(sizeof(struct zkm_client_info) == 184, "client_info");

#define ZKM_STATUS_FIELDS(X)                                                                       \
    X(uint32_t, version, "protocol version")                                                       \
    X(int32_t, pid, "daemon pid")                                                                  \
    X(uint32_t, n_nodes, "logical nodes")                                                          \
    X(uint32_t, n_clients, "connected clients")                                                    \
    X(uint64_t, uptime_ms, "milliseconds since start")                                             \
    X(uint32_t, backing, "1 hugetlb, 2 shmem+THP, 3 shmem 4 KiB")                                  \
    X(uint32_t, simulated_topology, "topology is simulated")                                       \
    X(uint32_t, futex_mode, "1 io_uring futex wait, 2 timer polling fallback")                     \
    X(uint32_t, bpf_loaded, "eBPF observer loaded")                                                \
    X(uint64_t, clients_total, "clients accepted since start")                                     \
    X(uint64_t, clients_rejected, "connections refused (auth, version, bad hello)")                \
    X(uint64_t, protocol_errors, "malformed messages dropped")                                     \
    X(uint64_t, violations, "control-block violations")                                            \
    X(uint64_t, fallbacks, "fallback events (see log)")

struct zkm_status_info {
    ZKM_STATUS_FIELDS(ZKM_X_FIELD)
};
_Static_assert(sizeof(struct zkm_status_info) == 80, "status_info");
#undef ZKM_X_FIELD

/* What the tuner learnt about a client (ZKM_QUERY_ADVICE); zkmemctl advise words it. */
enum zkm_pattern {
    ZKM_PATTERN_UNKNOWN = 0, /* not enough history yet */
    ZKM_PATTERN_IDLE,        /* no allocation in the last 10 s */
    ZKM_PATTERN_STEADY,
    ZKM_PATTERN_BURSTY,  /* refills come in bursts: peak well above the mean */
    ZKM_PATTERN_GROWING, /* live bytes grew, with some decreases */
    ZKM_PATTERN_LEAKING, /* live bytes grew in every sample while the client kept freeing */
};

#define ZKM_ADVICE_FIELDS(X)                                                                       \
    X(uint32_t, client_id, "session id")                                                           \
    X(int32_t, pid, "process id")                                                                  \
    X(uint32_t, pattern, "enum zkm_pattern")                                                       \
    X(uint32_t, samples, "seconds of history the pattern rests on")                                \
    X(uint64_t, bytes_in_use, "live bytes now (client-published)")                                 \
    X(uint64_t, bytes_first, "live bytes at the start of the history")                             \
    X(int64_t, growth_per_min, "live-byte growth over the history, bytes per minute")              \
    X(uint32_t, rising_samples, "samples in which live bytes rose")                                \
    X(uint32_t, falling_samples, "samples in which live bytes fell")                               \
    X(uint64_t, frees_in_history, "frees during the history (client-published)")                   \
    X(uint64_t, slabs, "slabs held or pre-granted now")                                            \
    X(uint64_t, peak_slabs, "most slabs held in the history")                                      \
    X(uint64_t, mean_slabs, "mean slabs held over the history")                                    \
    X(uint64_t, peak_refills, "most slabs taken in one second of the history")                     \
    X(uint64_t, mean_refills_milli, "mean slabs taken per second, x1000")                          \
    X(uint64_t, waits, "acquisitions that needed a round trip (since connect)")                    \
    X(uint64_t, refills, "slabs taken from the grant rings (since connect)")                       \
    X(uint32_t, home_node, "node new slabs come from")                                             \
    X(uint32_t, busiest_node, "node its threads ran on most in the last second (observer)")        \
    X(uint32_t, remote_pct, "share of its scheduler runs on other nodes than home, %")             \
    X(uint32_t, placement_moves, "times the tuner moved its home node")                            \
    X(uint32_t, grant_depth, "pre-granted depth on its home node now")                             \
    X(uint32_t, tcache_scale, "thread-cache caps as a multiple of the configured ones")            \
    X(uint32_t, tcache_hit_pct, "thread-cache hit rate in the last second, %")                     \
    X(uint32_t, tuning, "enable_tuning is on")                                                     \
    X(uint64_t, budget_bytes, "memory_budget_mb in bytes (0: none)")

struct zkm_advice_info {
#define ZKM_X_FIELD(t, n, d) t n;
    ZKM_ADVICE_FIELDS(ZKM_X_FIELD)
#undef ZKM_X_FIELD
};

/* Slot states in a ZKM_QUERY_MAP page. */
enum zkm_slot_state {
    ZKM_SLOT_FREE = '.',
    ZKM_SLOT_PREGRANTED = 'r', /* in a grant ring */
    ZKM_SLOT_HELD = 'H',       /* taken by a client */
    ZKM_SLOT_CACHED = 'c',     /* returned, pages kept for its domain until decay_ms */
};

/* ------------------------------------------------------------------------------------ */
/* Control block                                                                         */

/* Client statistics, published by the client into its control block. */
#define ZKM_CLIENT_STATS(X)                                                                        \
    X(alloc_ops, "allocations")                                                                    \
    X(free_ops, "frees")                                                                           \
    X(bytes_in_use, "bytes in live objects")                                                       \
    X(tcache_hits, "allocations served by the thread cache")                                       \
    X(tcache_misses, "allocations that went past the thread cache")                                \
    X(remote_frees, "frees of another thread's objects")                                           \
    X(small_allocs, "allocations in the small tier")                                               \
    X(medium_allocs, "allocations in the medium tier")                                             \
    X(large_allocs, "allocations in the large tier")                                               \
    X(huge_allocs, "allocations in the huge tier")                                                 \
    X(local_fallback_bytes, "bytes served from local memory (no daemon)")                          \
    X(slabs_held, "slabs the allocator holds (heaps, pools, huge objects)")                        \
    X(slabs_sparse, "held slabs of pages less than a quarter full")                                \
    X(slabs_cached, "empty slabs kept in the process pool")                                        \
    X(start_bytes, "bytes of start slabs: the process's own 4 KiB pages (start_slabs)")

struct zkm_client_stats {
#define ZKM_X_STAT(n, d) uint64_t n;
    ZKM_CLIENT_STATS(ZKM_X_STAT)
#undef ZKM_X_STAT
    uint64_t lat_hist[16]; /* monitoring mode: sampled latency, bucket i = [2^i, 2^(i+1)) ns */
};

struct zkm_grant_ring {
    _Alignas(64) uint32_t tail;                /* daemon writes (producer) */
    _Alignas(64) uint32_t head;                /* client writes (consumer) */
    _Alignas(64) uint32_t slot[ZKM_GRANT_CAP]; /* slab index [| ZKM_GRANT_ZEROED] */
};
_Static_assert(sizeof(struct zkm_grant_ring) == 128 + 4 * ZKM_GRANT_CAP, "grant ring");

struct zkm_return_ring {
    _Alignas(64) uint32_t tail;                 /* client writes (producer) */
    _Alignas(64) uint32_t head;                 /* daemon writes (consumer) */
    _Alignas(64) uint32_t slot[ZKM_RETURN_CAP]; /* handles */
};

/* What the daemon tells the client; the client reads it, the daemon never reads it back. */
struct zkm_tunables {
    uint32_t gen;                        /* bumped on every change */
    uint32_t mode;                       /* 0 high_performance, 1 balanced, 2 monitoring */
    uint32_t grant_depth[ZKM_MAX_NODES]; /* pre-granted slabs the daemon keeps per node */
    uint32_t tcache_cap[4];              /* per tier: small, medium, large, huge */
    uint32_t small_threshold;
    uint32_t large_threshold;
    uint32_t l2_cap;    /* empty slabs the client keeps per node (0: the client's default) */
    uint32_t reserved0; /* was drain_below (a per-client threshold): the drain list below
                         * replaced it; written 0 */
    uint32_t reserved[6];
};

/*
 * Draining (compaction). The client lists its sparsest slabs with their occupancy; the
 * daemon's compactor picks those the client's fuller slabs can absorb and names them in
 * the drain list; the client then starts no new page in them and refills from pages of
 * other slabs first, so their blocks run out and the slabs empty and go back.
 * occ is client-written as a seqlock: seq odd while the table is rewritten (release
 * stores around it); a reader copies it between two loads of an even, equal seq. drain is
 * daemon-written: handles and n first, then gen bumped (release).
 */
#define ZKM_OCC_MAX 64
struct zkm_occupancy {
    uint32_t seq;
    uint32_t n;                   /* entries (<= ZKM_OCC_MAX) */
    uint32_t room_units;          /* free units in the client's slabs that are not listed */
    uint32_t slab_units;          /* units a slab has for blocks (the client's geometry) */
    uint32_t handle[ZKM_OCC_MAX]; /* slab handles, sparsest first */
    uint16_t used[ZKM_OCC_MAX];   /* units in use in each */
};
struct zkm_drain_list {
    uint32_t gen; /* bumped after every change of the list */
    uint32_t n;   /* entries (<= ZKM_OCC_MAX) */
    uint32_t handle[ZKM_OCC_MAX];
};

struct zkm_ctrl {
    /* written once by the daemon before the client maps it */
    uint32_t magic;   /* ZKM_CTRL_MAGIC */
    uint32_t version; /* protocol version */
    uint32_t size;    /* bytes */
    uint32_t client_id;
    uint32_t n_nodes;
    uint32_t n_cpus; /* valid entries in cpu_node */
    uint32_t slab_size;
    uint32_t home_node;

    _Alignas(64) struct zkm_tunables tun;

    /* doorbell: the client increments it after taking from a grant ring or queueing a
     * return, then calls FUTEX_WAKE only if daemon_waiting is set */
    _Alignas(64) uint32_t doorbell;
    _Alignas(64) uint32_t daemon_waiting;

    _Alignas(64) uint8_t cpu_node[ZKM_MAX_CPUS]; /* logical node of each cpu */

    /* client-written: where it mapped each node's memory (for the observer's fault
     * attribution only; the daemon never dereferences it) */
    _Alignas(64) uint64_t client_node_base[ZKM_MAX_NODES];

    struct zkm_grant_ring grant[ZKM_MAX_NODES];
    struct zkm_return_ring ret;

    _Alignas(64) struct zkm_client_stats stats; /* client-published */

    _Alignas(64) struct zkm_occupancy occ;    /* client-published */
    _Alignas(64) struct zkm_drain_list drain; /* daemon-written */
};

#define ZKM_CTRL_SIZE 16384 /* bytes of the control-block memfd */
_Static_assert(sizeof(struct zkm_ctrl) <= ZKM_CTRL_SIZE, "ctrl fits its memfd");
_Static_assert(offsetof(struct zkm_ctrl, tun) == 64, "ctrl layout");
_Static_assert((ZKM_GRANT_CAP & (ZKM_GRANT_CAP - 1)) == 0, "grant cap pow2");
_Static_assert((ZKM_RETURN_CAP & (ZKM_RETURN_CAP - 1)) == 0, "return cap pow2");

/* ------------------------------------------------------------------------------------ */
/* Validators (proto/validate.c): every decode goes through these.                       */

/*
 * Check a received message: len bytes in buf, n_fds descriptors came with it.
 * Verifies magic, length (exactly the type's size), type, version (0 only for HELLO,
 * else `version`), per-type field bounds and the fd count (only HELLO_REPLY, and HELLO
 * with ZKM_HELLO_REATTACH, carry fds).
 * `from_daemon` selects which direction's types are acceptable.
 * Returns 0 or -EBADMSG (malformed), -EPROTO (wrong direction/type), -EPROTONOSUPPORT.
 */
int zkm_msg_validate(const void *buf, size_t len, unsigned n_fds, uint16_t version,
                     int from_daemon);

/* Size of a message of this type, or 0 for an unknown type. */
size_t zkm_msg_size(uint16_t type);

/* Pick the version both sides speak; -EPROTONOSUPPORT if none. */
int zkm_version_negotiate(uint16_t peer_min, uint16_t peer_max, uint16_t *ret_version);

/*
 * Daemon side: read a grant ring's client-written head once and check it against the
 * daemon's own tail. On success *ret_head is in [prev_head, tail]; a head that moved
 * backwards or past tail is -EFAULT (the client scribbled its control block).
 */
int zkm_ctrl_grant_head(const struct zkm_grant_ring *r, uint32_t prev_head, uint32_t tail,
                        uint32_t *ret_head);

/*
 * Daemon side: read the return ring's client-written tail once; *ret_avail entries in
 * [head, tail) may be consumed. A tail more than ZKM_RETURN_CAP ahead of head, or behind
 * it, is -EFAULT.
 */
int zkm_ctrl_return_tail(const struct zkm_return_ring *r, uint32_t head, uint32_t *ret_avail);

/* Decode a handle for a daemon with n_nodes nodes of node_slabs[] slabs; -EINVAL if out
 * of range. */
int zkm_handle_check(uint32_t handle, uint32_t n_nodes, const uint64_t *node_slabs);

#endif /* ZKM_PROTO_H */
