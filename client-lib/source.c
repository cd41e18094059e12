/* SPDX-License-Identifier: MIT */
/*
 * source.c - the allocator's slab source: daemon memory when there is a daemon, local
 * anonymous memory when there is not (see source.h for the contract).
 *
 * State (process-wide):
 *   g_conn   the live session, published with release/acquire; NULL without one.
 *   g_gen    bumped whenever a session is abandoned (daemon gone, fork child); a slab
 *            remembers the generation that gave it, so a slab of an abandoned session
 *            is unmapped locally instead of being "returned" to a daemon that does not
 *            know it.
 *   g_lock   serialises connecting, generation changes and, when the daemon's slabs
 *            are larger than ZKM_SOURCE_SLAB, the carving of daemon slabs into pieces.
 * With 2 MiB daemon slabs (the default) get and put take no lock: a ring pop and a
 * ring push in conn.c.
 */
#include "source.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "zkm_config.h"

#define RETRY_NS 1000000000ULL /* try to reach a daemon at most once a second */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct zkm_conn *g_conn;
static uint32_t g_gen = 1;
static int g_inited;
static uint32_t g_require_daemon, g_verbose, g_start_slabs;
static char g_socket[ZKM_CONFIG_STR_MAX];
static uint64_t g_next_try_ns;
static int g_said_local;
static struct zkm_source_counters g_count;
static struct zkm_client_stats g_local_stats;
static struct zkm_tunables g_local_tun;

/* Carving of daemon slabs larger than ZKM_SOURCE_SLAB (slab_pages > 1), under g_lock. */
struct carve {
    struct zkm_slab cur; /* slab being handed out piece by piece; size 0 when none */
    uint32_t next;       /* next piece of cur */
};
static struct carve g_carve[ZKM_MAX_NODES];
static uint16_t *g_pieces_out[ZKM_MAX_NODES]; /* per daemon slab: pieces not yet put */
static size_t g_pieces_bytes[ZKM_MAX_NODES];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void say(const char *msg)
{
    ssize_t r = write(2, msg, strlen(msg));
    (void)r;
}

/* Under g_lock. */
static void load_config(void)
{
    if (g_inited)
        return;
    struct zkm_config cfg;
    const char *bad = NULL;
    zkm_config_defaults(&cfg);
    zkm_config_from_env(&cfg, NULL, &bad);
    g_require_daemon = cfg.require_daemon;
    g_verbose = cfg.verbose;
    g_start_slabs = (uint32_t)cfg.start_slabs;
    memcpy(g_socket, cfg.socket, sizeof(g_socket));
    g_local_tun.mode = cfg.mode;
    g_local_tun.small_threshold = (uint32_t)cfg.small_threshold;
    g_local_tun.large_threshold = (uint32_t)cfg.large_threshold;
    g_local_tun.tcache_cap[0] = (uint32_t)cfg.tcache_small;
    g_local_tun.tcache_cap[1] = (uint32_t)cfg.tcache_medium;
    g_inited = 1;
}

/* Under g_lock: set up per-session carving bookkeeping. */
static int conn_prepare(struct zkm_conn *c)
{
    if (c->slab_size == ZKM_SOURCE_SLAB)
        return 0;
    for (uint32_t n = 0; n < c->n_nodes; n++) {
        size_t bytes = c->node_slabs[n] * sizeof(uint16_t);
        bytes = (bytes + 4095) & ~(size_t)4095;
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -ENOMEM;
        g_pieces_out[n] = p;
        g_pieces_bytes[n] = bytes;
        memset(&g_carve[n], 0, sizeof(g_carve[n]));
    }
    return 0;
}

/* Under g_lock: forget the session (the daemon is gone, or we are a fork child). Its
 * mappings stay: slabs the allocator still uses remain valid memory. */
static void conn_abandon(void)
{
    for (uint32_t n = 0; n < ZKM_MAX_NODES; n++) {
        if (g_pieces_out[n])
            munmap(g_pieces_out[n], g_pieces_bytes[n]);
        g_pieces_out[n] = NULL;
        memset(&g_carve[n], 0, sizeof(g_carve[n]));
    }
    __atomic_store_n(&g_conn, NULL, __ATOMIC_RELEASE);
    __atomic_fetch_add(&g_gen, 1, __ATOMIC_ACQ_REL);
}

static struct zkm_conn *try_connect(void)
{
    struct zkm_conn *c;

    pthread_mutex_lock(&g_lock);
    load_config();
    c = g_conn;
    uint64_t t = now_ns();
    if (!c && t >= g_next_try_ns) {
        g_next_try_ns = t + RETRY_NS;
        int err = zkm_connect(g_socket[0] ? g_socket : NULL, &c);
        if (!err && conn_prepare(c) != 0) {
            zkm_disconnect(c);
            err = -ENOMEM;
        }
        if (err) {
            c = NULL;
            g_count.connect_failures++;
        } else {
            if (g_count.daemon_slabs || g_count.local_slabs)
                g_count.reconnects++;
            /* a new session (daemon restart, fork child) still shows the start slabs */
            __atomic_store_n(&c->ctrl->stats.start_bytes,
                             __atomic_load_n(&g_count.start_slabs, __ATOMIC_RELAXED) *
                                 ZKM_SOURCE_SLAB,
                             __ATOMIC_RELAXED);
            __atomic_store_n(&g_conn, c, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&g_lock);
    return c;
}

void zkm__unmap_outside(void *raw, size_t span, void *keep, size_t len)
{
    char *r = raw, *k = keep;
    if (k > r)
        munmap(r, (size_t)(k - r));
    if (k + len < r + span)
        munmap(k + len, (size_t)(r + span - (k + len)));
}

/* A ZKM_SOURCE_SLAB-aligned private anonymous slab, advised `advice`; NULL when out of
 * address space. */
static void *map_local(int advice)
{
    size_t span = 2 * ZKM_SOURCE_SLAB;
    char *r = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)r + ZKM_SOURCE_SLAB - 1) & ~(uintptr_t)(ZKM_SOURCE_SLAB - 1));
    zkm__unmap_outside(r, span, a, ZKM_SOURCE_SLAB);
    madvise(a, ZKM_SOURCE_SLAB, advice);
    return a;
}

static void fill_local(struct zkm_source_slab *ret, void *addr, int node)
{
    ret->addr = addr;
    ret->handle = ZKM_HANDLE_INVALID;
    ret->gen = 0;
    ret->node = node;
    ret->kind = ZKM_SOURCE_LOCAL;
    ret->zeroed = 1;
}

/* One of the process's start slabs (source.h, 1a), while any is left: 1 taken, 0 none left
 * or not for this request. The first touch places its pages on the node the thread runs
 * on, so only requests for any node or the local one take it. Out of mappings
 * (max_map_count), the request goes on to a daemon slab, which needs none. */
static int get_start(struct zkm_conn *c, int node, struct zkm_source_slab *ret)
{
    if (node != ZKM_NODE_ANY && node != ZKM_NODE_LOCAL && node != zkm_conn_local_node(c))
        return 0;
    uint64_t n = __atomic_load_n(&g_count.start_slabs, __ATOMIC_RELAXED);
    do {
        if (n >= g_start_slabs)
            return 0;
    } while (!__atomic_compare_exchange_n(&g_count.start_slabs, &n, n + 1, 1, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    void *a = map_local(MADV_NOHUGEPAGE);
    if (!a) {
        __atomic_fetch_sub(&g_count.start_slabs, 1, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_fetch_add(&c->ctrl->stats.start_bytes, ZKM_SOURCE_SLAB, __ATOMIC_RELAXED);
    fill_local(ret, a, zkm_conn_local_node(c));
    return 1;
}

static int get_local(struct zkm_source_slab *ret)
{
    void *a = map_local(MADV_HUGEPAGE);
    if (!a)
        return -ENOMEM;
    __atomic_fetch_add(&g_count.local_slabs, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&g_local_stats.local_fallback_bytes, ZKM_SOURCE_SLAB, __ATOMIC_RELAXED);
    if (g_verbose && !__atomic_exchange_n(&g_said_local, 1, __ATOMIC_RELAXED))
        say("zkmem: no zkmemd reachable; serving from local memory (start zkmemd or set "
            "ZKMEM_SOCKET; ZKMEM_REQUIRE_DAEMON=1 makes this an error)\n");
    fill_local(ret, a, 0);
    return 0;
}

static void fill(struct zkm_source_slab *ret, void *addr, uint32_t handle, uint32_t gen, int node,
                 int zeroed)
{
    ret->addr = addr;
    ret->handle = handle;
    ret->gen = gen;
    ret->node = node;
    ret->kind = ZKM_SOURCE_DAEMON;
    ret->zeroed = (uint8_t)zeroed;
}

/* Daemon slabs larger than a source slab: hand them out piece by piece. */
static int get_carved(struct zkm_conn *c, int node, uint32_t gen, struct zkm_source_slab *ret)
{
    pthread_mutex_lock(&g_lock);
    if (g_conn != c || g_gen != gen) {
        pthread_mutex_unlock(&g_lock);
        return -EAGAIN;
    }
    if (node == ZKM_NODE_LOCAL)
        node = zkm_conn_local_node(c);
    else if (node < 0 || (uint32_t)node >= c->n_nodes)
        node = (int)(c->ctrl->home_node < c->n_nodes ? c->ctrl->home_node : 0);
    struct carve *cv = &g_carve[node];
    uint32_t pieces = c->slab_size / ZKM_SOURCE_SLAB;
    if (cv->cur.size == 0 || cv->next == pieces) {
        struct zkm_slab s;
        int err = zkm_slab_acquire(c, node, &s);
        if (err) {
            pthread_mutex_unlock(&g_lock);
            return err;
        }
        cv->cur = s;
        cv->next = 0;
    }
    uint32_t sn = (uint32_t)cv->cur.node, si = zkm_handle_index(cv->cur.handle);
    g_pieces_out[sn][si]++;
    fill(ret, (char *)cv->cur.addr + (size_t)cv->next * ZKM_SOURCE_SLAB, cv->cur.handle, gen,
         cv->cur.node, cv->cur.zeroed);
    cv->next++;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

int zkm__source_get(int node, struct zkm_source_slab *ret)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t gen = __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE);
        struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
        if (!c)
            c = try_connect();
        if (!c)
            break;
        if (get_start(c, node, ret))
            return 0;
        int err;
        if (c->slab_size == ZKM_SOURCE_SLAB) {
            struct zkm_slab s;
            err = zkm_slab_acquire(c, node, &s);
            if (!err) {
                fill(ret, s.addr, s.handle, gen, s.node, s.zeroed);
                __atomic_fetch_add(&g_count.daemon_slabs, 1, __ATOMIC_RELAXED);
                return 0;
            }
        } else {
            err = get_carved(c, node, gen, ret);
            if (!err) {
                __atomic_fetch_add(&g_count.daemon_slabs, 1, __ATOMIC_RELAXED);
                return 0;
            }
            if (err == -EAGAIN)
                continue;
        }
        if (err == -ENOTCONN)
            break; /* no daemon right now: the session reattaches when one is back */
        if (err != -ESRCH)
            return err; /* -ENOMEM, -EDQUOT: the daemon said no; no silent fallback */
        /* a daemon that does not know our lease: keep the memory, start a new session */
        pthread_mutex_lock(&g_lock);
        if (g_conn == c)
            conn_abandon();
        g_next_try_ns = 0;
        pthread_mutex_unlock(&g_lock);
    }
    if (!g_inited) {
        pthread_mutex_lock(&g_lock);
        load_config();
        pthread_mutex_unlock(&g_lock);
    }
    if (g_require_daemon)
        return -ENOTCONN;
    return get_local(ret);
}

void zkm__source_put(const struct zkm_source_slab *s)
{
    struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
    if (s->kind == ZKM_SOURCE_LOCAL || !c || s->gen != __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE)) {
        munmap(s->addr, ZKM_SOURCE_SLAB);
        return;
    }
    uint32_t node = zkm_handle_node(s->handle), index = zkm_handle_index(s->handle);
    if (c->slab_size == ZKM_SOURCE_SLAB) {
        struct zkm_slab slab = {
            .addr = s->addr, .size = ZKM_SOURCE_SLAB, .handle = s->handle, .node = (int)node};
        zkm_slab_release(c, &slab);
        return;
    }
    pthread_mutex_lock(&g_lock);
    if (g_conn == c && s->gen == g_gen && node < c->n_nodes && index < c->node_slabs[node] &&
        g_pieces_out[node][index] > 0 && --g_pieces_out[node][index] == 0) {
        struct carve *cv = &g_carve[node];
        int current = cv->cur.size && cv->cur.handle == s->handle;
        if (!current || cv->next == c->slab_size / ZKM_SOURCE_SLAB) {
            struct zkm_slab slab = {.addr = c->node_base[node] + (size_t)index * c->slab_size,
                                    .size = c->slab_size,
                                    .handle = s->handle,
                                    .node = (int)node};
            zkm_slab_release(c, &slab);
            if (current)
                memset(cv, 0, sizeof(*cv));
        }
    }
    pthread_mutex_unlock(&g_lock);
}

int zkm__source_local_node(void)
{
    struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
    return c ? zkm_conn_local_node(c) : 0;
}

int zkm__source_nodes(void)
{
    struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
    return c ? (int)c->n_nodes : 1;
}

struct zkm_client_stats *zkm__source_stats(void)
{
    struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
    return c ? &c->ctrl->stats : &g_local_stats;
}

const struct zkm_tunables *zkm__source_tunables(void)
{
    struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
    return c ? &c->ctrl->tun : &g_local_tun;
}

int zkm__source_drain_tables(struct zkm_occupancy **ret_occ,
                             const struct zkm_drain_list **ret_drain, uint32_t *ret_gen)
{
    struct zkm_conn *c = __atomic_load_n(&g_conn, __ATOMIC_ACQUIRE);
    if (!c || __atomic_load_n(&c->dead, __ATOMIC_RELAXED) || c->slab_size != ZKM_SOURCE_SLAB)
        return -ENOTCONN;
    *ret_occ = &c->ctrl->occ;
    *ret_drain = &c->ctrl->drain;
    *ret_gen = __atomic_load_n(&g_gen, __ATOMIC_ACQUIRE);
    return 0;
}

struct zkm_tunables *zkm__source_local_tunables(void)
{
    pthread_mutex_lock(&g_lock);
    load_config();
    pthread_mutex_unlock(&g_lock);
    return &g_local_tun;
}

void zkm__source_counters(struct zkm_source_counters *ret)
{
    ret->daemon_slabs = __atomic_load_n(&g_count.daemon_slabs, __ATOMIC_RELAXED);
    ret->local_slabs = __atomic_load_n(&g_count.local_slabs, __ATOMIC_RELAXED);
    ret->start_slabs = __atomic_load_n(&g_count.start_slabs, __ATOMIC_RELAXED);
    ret->connect_failures = __atomic_load_n(&g_count.connect_failures, __ATOMIC_RELAXED);
    ret->reconnects = __atomic_load_n(&g_count.reconnects, __ATOMIC_RELAXED);
}

void zkm__source_atfork_prepare(void)
{
    pthread_mutex_lock(&g_lock);
    if (g_conn)
        zkm__conn_lock(g_conn);
}

void zkm__source_atfork_parent(void)
{
    if (g_conn)
        zkm__conn_unlock(g_conn);
    pthread_mutex_unlock(&g_lock);
}

void zkm__source_atfork_child(void)
{
    pthread_mutex_init(&g_lock, NULL);
    if (g_conn) {
        zkm__conn_fork_child(g_conn);
        conn_abandon();
    }
    g_next_try_ns = 0;
}
