/* SPDX-License-Identifier: MIT */
/*
 * conn.c - the client's session with zkmemd (slab level).
 *
 * A session is one SEQPACKET connection, one control block (struct zkm_ctrl, shared
 * memory written by both sides) and one read-write mapping per node of the domain's
 * memfd. Slabs are named by handles (node, index); their bytes are at
 * node_base[node] + index * slab_size.
 *
 * Paths, cheapest first:
 *   1. acquire: pop a pre-granted index from the node's grant ring (a CAS on head; no
 *      syscall), mark it held, ring the doorbell (a FUTEX_WAKE only when the ring fell
 *      to its low-water mark and the daemon is waiting on it).
 *   2. acquire when the ring is empty: ACQUIRE round trip over the socket, under
 *      conn->lock (one request in flight per session).
 *   3. release: push the handle on the return ring under conn->lock (several threads
 *      may release; the ring has one producer at a time); when the ring is full, a
 *      RELEASE message instead.
 *
 * Held slabs are tracked in a per-node bitmap (atomic bit ops): release of a slab this
 * session does not hold is -EINVAL, and a fork child privatises exactly these slabs.
 *
 * Nothing here allocates from the C heap or prints: this code runs inside malloc.
 */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "source.h"
#include "zkm_ring.h"

/* glibc >= 2.35 registers rseq for every thread and exports where the area is. */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

static void *map_anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int current_cpu(void)
{
    if (&__rseq_size != NULL && __rseq_size >= 8) {
        const volatile uint32_t *cpu_id =
            (const volatile uint32_t *)((char *)__builtin_thread_pointer() + __rseq_offset + 4);
        uint32_t cpu = *cpu_id;
        if ((int32_t)cpu >= 0)
            return (int)cpu;
    }
    int cpu = sched_getcpu(); /* vDSO on x86_64: no syscall */
    return cpu < 0 ? 0 : cpu;
}

int zkm_conn_local_node(const struct zkm_conn *c)
{
    int cpu = current_cpu();
    if (!c || (uint32_t)cpu >= c->n_cpus)
        return 0;
    uint32_t node = __atomic_load_n(&c->ctrl->cpu_node[cpu], __ATOMIC_RELAXED);
    return node < c->n_nodes ? (int)node : 0;
}

int zkm_conn_nodes(const struct zkm_conn *c)
{
    return c ? (int)c->n_nodes : 0;
}

size_t zkm_conn_slab_size(const struct zkm_conn *c)
{
    return c ? c->slab_size : 0;
}

void zkm_conn_counters(const struct zkm_conn *c, struct zkm_conn_counters *ret)
{
    ret->ring_pops = __atomic_load_n(&c->ring_pops, __ATOMIC_RELAXED);
    ret->round_trips = __atomic_load_n(&c->round_trips, __ATOMIC_RELAXED);
    ret->releases = __atomic_load_n(&c->releases, __ATOMIC_RELAXED);
    ret->doorbell_wakes = __atomic_load_n(&c->doorbell_wakes, __ATOMIC_RELAXED);
}

static void close_fds(int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Send one request and receive its reply into `reply` (ZKM_MSG_MAX_SIZE bytes). fds that
 * come with the reply are stored in fds[] (up to ZKM_MSG_MAX_FDS), *n_fds set. */
static int exchange_fds(int sock, const void *req, size_t req_len, const int *send_fds,
                        unsigned n_send, void *reply, size_t *reply_len, int *fds, unsigned *n_fds)
{
    ssize_t n;
    union {
        char buf[CMSG_SPACE(sizeof(int) * ZKM_MAX_NODES)];
        struct cmsghdr align;
    } sbuf;
    struct iovec siov = {.iov_base = (void *)req, .iov_len = req_len};
    struct msghdr smh = {.msg_iov = &siov, .msg_iovlen = 1};
    if (n_send) {
        memset(&sbuf, 0, sizeof(sbuf));
        smh.msg_control = sbuf.buf;
        smh.msg_controllen = CMSG_SPACE(sizeof(int) * n_send);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&smh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * n_send);
        memcpy(CMSG_DATA(cm), send_fds, sizeof(int) * n_send);
    }
    do {
        n = sendmsg(sock, &smh, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EPIPE || errno == ECONNRESET ? -ENOTCONN : -errno;

    union {
        char buf[CMSG_SPACE(sizeof(int) * ZKM_MSG_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {.iov_base = reply, .iov_len = ZKM_MSG_MAX_SIZE};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = cbuf.buf,
                        .msg_controllen = sizeof(cbuf.buf)};
    do {
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN ? -ETIMEDOUT : errno == ECONNRESET ? -ENOTCONN : -errno;
    if (n == 0)
        return -ENOTCONN;

    unsigned got = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        unsigned k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int tmp[ZKM_MSG_MAX_FDS + 8];
        if (k > ZKM_MSG_MAX_FDS + 8)
            k = ZKM_MSG_MAX_FDS + 8;
        memcpy(tmp, CMSG_DATA(cm), k * sizeof(int));
        for (unsigned i = 0; i < k; i++) {
            if (fds && got < ZKM_MSG_MAX_FDS)
                fds[got++] = tmp[i];
            else
                close(tmp[i]);
        }
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        if (fds)
            close_fds(fds, got);
        /* cbuf holds the most descriptors a message may carry, so cut-off descriptors
         * mean the kernel could not install them here: our own fd limit */
        return mh.msg_flags & MSG_TRUNC ? -EBADMSG : -EMFILE;
    }
    *reply_len = (size_t)n;
    if (n_fds)
        *n_fds = got;
    return 0;
}

static int exchange(int sock, const void *req, size_t req_len, void *reply, size_t *reply_len,
                    int *fds, unsigned *n_fds)
{
    return exchange_fds(sock, req, req_len, NULL, 0, reply, reply_len, fds, n_fds);
}

static void hdr_init(struct zkm_hdr *h, uint16_t type, uint16_t version, uint32_t len, uint32_t seq)
{
    h->magic = ZKM_PROTO_MAGIC;
    h->version = version;
    h->type = type;
    h->len = len;
    h->seq = seq;
}

static const char *resolve_path(const char *path)
{
    if (!path || !*path) {
        path = getenv("ZKMEM_SOCKET");
        if (!path || !*path)
            path = ZKM_DEFAULT_SOCKET;
    }
    return path;
}

int zkm__conn_open_socket(const char *path, int *ret_sock)
{
    path = resolve_path(path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t plen = strlen(path);
    if (plen >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, plen + 1);

    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -errno;
    /* a hung daemon must not hang the client forever */
    struct timeval tv = {.tv_sec = 10};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = -errno;
        close(sock);
        return err;
    }
    *ret_sock = sock;
    return 0;
}

/* Map `len` bytes of fd at an address aligned to `align`. */
static void *map_aligned(int fd, size_t len, size_t align, int prot, int flags)
{
    size_t span = len + align;
    char *r = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)r + align - 1) & ~(uintptr_t)(align - 1));
    void *m = mmap(a, len, prot, flags | MAP_FIXED, fd, 0);
    if (m == MAP_FAILED) {
        munmap(r, span);
        return NULL;
    }
    zkm__unmap_outside(r, span, a, len);
    return a;
}

static void conn_unmap(struct zkm_conn *c)
{
    for (uint32_t i = 0; i < c->n_nodes; i++) {
        if (c->node_fd[i] >= 0)
            close(c->node_fd[i]);
        c->node_fd[i] = -1;
        if (c->node_base[i])
            munmap(c->node_base[i], c->node_bytes[i]);
        if (c->held[i])
            munmap(c->held[i], c->held_bytes[i]);
        c->node_base[i] = NULL;
        c->held[i] = NULL;
    }
    if (c->ctrl)
        munmap(c->ctrl, ZKM_CTRL_SIZE);
    c->ctrl = NULL;
}

union hello_reply {
    struct zkm_msg_hello_reply r;
    char buf[ZKM_MSG_MAX_SIZE];
};

/* Open a socket, say HELLO (a REATTACH when reattach_id != 0, carrying send_fds) and
 * check the reply. On success the socket, the reply and its fds are the caller's. */
static int hello(const char *path, uint32_t reattach_id, const int *send_fds, unsigned n_send,
                 int *ret_sock, union hello_reply *u, int *fds, unsigned *n_fds)
{
    int sock, err = zkm__conn_open_socket(path, &sock);
    if (err)
        return err;
    struct zkm_msg_hello h;
    memset(&h, 0, sizeof(h));
    hdr_init(&h.hdr, ZKM_MSG_HELLO, 0, sizeof(h), 1);
    h.version_min = ZKM_PROTO_VERSION_MIN;
    h.version_max = ZKM_PROTO_VERSION_MAX;
    if (reattach_id) {
        h.flags = ZKM_HELLO_REATTACH;
        h.reattach_id = reattach_id;
    }
    prctl(PR_GET_NAME, h.comm, 0, 0, 0);
    h.comm[ZKM_COMM_LEN - 1] = '\0';

    size_t len = 0;
    *n_fds = 0;
    err = exchange_fds(sock, &h, sizeof(h), send_fds, n_send, u->buf, &len, fds, n_fds);
    if (err) {
        close(sock);
        return err;
    }
    err = zkm_msg_validate(u->buf, len, *n_fds, 0, 1);
    if (!err && u->r.hdr.type != ZKM_MSG_HELLO_REPLY)
        err = -EBADMSG;
    if (!err && u->r.status < 0)
        err = u->r.status;
    if (!err && *n_fds != 1 + u->r.n_nodes)
        err = -EBADMSG;
    if (!err && (u->r.version < ZKM_PROTO_VERSION_MIN || u->r.version > ZKM_PROTO_VERSION_MAX))
        err = -EPROTONOSUPPORT;
    if (err) {
        close_fds(fds, *n_fds);
        close(sock);
        return err;
    }
    *ret_sock = sock;
    return 0;
}

/* Map and check a control block the daemon sent. */
static struct zkm_ctrl *map_ctrl(int fd, const struct zkm_msg_hello_reply *r)
{
    struct zkm_ctrl *ctrl = mmap(NULL, ZKM_CTRL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ctrl == MAP_FAILED)
        return NULL;
    if (ctrl->magic != ZKM_CTRL_MAGIC || ctrl->version != r->version ||
        ctrl->size != ZKM_CTRL_SIZE || ctrl->n_nodes != r->n_nodes ||
        ctrl->slab_size != r->slab_size) {
        munmap(ctrl, ZKM_CTRL_SIZE);
        return NULL;
    }
    return ctrl;
}

int zkm_connect(const char *socket_path, struct zkm_conn **ret_conn)
{
    int sock, err;
    union hello_reply u;
    int fds[ZKM_MSG_MAX_FDS];
    unsigned n_fds = 0;

    if (!ret_conn)
        return -EINVAL;
    err = hello(socket_path, 0, NULL, 0, &sock, &u, fds, &n_fds);
    if (err)
        return err;

    struct zkm_conn *c = map_anon(sizeof(*c));
    if (!c) {
        close_fds(fds, n_fds);
        close(sock);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    for (uint32_t i = 0; i < ZKM_MAX_NODES; i++)
        c->node_fd[i] = -1;
    const char *path = resolve_path(socket_path);
    if (strlen(path) >= sizeof(c->path)) {
        err = -ENAMETOOLONG;
        goto fail;
    }
    memcpy(c->path, path, strlen(path) + 1);
    c->sock = sock;
    c->version = u.r.version;
    c->client_id = u.r.client_id;
    c->n_nodes = u.r.n_nodes;
    c->slab_size = u.r.slab_size;
    c->backing = u.r.backing;
    c->seq = 1;

    err = -EBADMSG;
    c->ctrl = map_ctrl(fds[0], &u.r);
    if (!c->ctrl)
        goto fail;
    c->n_cpus = c->ctrl->n_cpus < ZKM_MAX_CPUS ? c->ctrl->n_cpus : ZKM_MAX_CPUS;

    for (uint32_t i = 0; i < c->n_nodes; i++) {
        c->node_bytes[i] = u.r.node_bytes[i];
        c->node_slabs[i] = u.r.node_bytes[i] / c->slab_size;
        err = -ENOMEM;
        c->node_base[i] = map_aligned(fds[1 + i], c->node_bytes[i], c->slab_size,
                                      PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE);
        if (!c->node_base[i])
            goto fail;
        if (c->backing != ZKM_BACKING_HUGETLB)
            madvise(c->node_base[i], c->node_bytes[i], MADV_HUGEPAGE);
        c->ctrl->client_node_base[i] = (uint64_t)(uintptr_t)c->node_base[i];
        c->held_bytes[i] = ((c->node_slabs[i] + 63) / 64) * 8;
        if (c->held_bytes[i] == 0)
            c->held_bytes[i] = 8;
        c->held[i] = map_anon(c->held_bytes[i]);
        if (!c->held[i])
            goto fail;
        /* kept: they prove this process's domain to a restarted daemon (reattach) */
        c->node_fd[i] = fds[1 + i];
        fds[1 + i] = -1;
    }
    close_fds(fds, n_fds);
    *ret_conn = c;
    return 0;

fail:
    conn_unmap(c);
    close_fds(fds, n_fds);
    close(sock);
    munmap(c, sizeof(*c));
    return err;
}

static int held_test_and_set(struct zkm_conn *c, uint32_t node, uint32_t index, int set)
{
    uint64_t bit = 1ULL << (index & 63);
    uint64_t *w = &c->held[node][index / 64];
    uint64_t old = set ? __atomic_fetch_or(w, bit, __ATOMIC_ACQ_REL)
                       : __atomic_fetch_and(w, ~bit, __ATOMIC_ACQ_REL);
    return (old & bit) != 0;
}

int zkm__conn_holds(const struct zkm_conn *c, uint32_t node, uint32_t index)
{
    return (__atomic_load_n(&c->held[node][index / 64], __ATOMIC_RELAXED) >> (index & 63)) & 1;
}

/* Tell the daemon something changed; a syscall only if it sleeps on the doorbell and
 * `urgent` (the grant ring ran low, the return ring filled up). */
static void doorbell(struct zkm_conn *c, int urgent)
{
    __atomic_fetch_add(&c->ctrl->doorbell, 1, __ATOMIC_SEQ_CST);
    if (urgent && __atomic_load_n(&c->ctrl->daemon_waiting, __ATOMIC_SEQ_CST)) {
        syscall(SYS_futex, &c->ctrl->doorbell, FUTEX_WAKE, 1, NULL, NULL, 0);
        __atomic_fetch_add(&c->doorbell_wakes, 1, __ATOMIC_RELAXED);
    }
}

static void fill_slab(struct zkm_conn *c, uint32_t node, uint32_t index, int zeroed,
                      struct zkm_slab *ret)
{
    ret->addr = c->node_base[node] + (size_t)index * c->slab_size;
    ret->size = c->slab_size;
    ret->handle = zkm_handle_make(node, index);
    ret->node = (int)node;
    ret->zeroed = zeroed;
}

static int round_trip_acquire_once(struct zkm_conn *c, int node, struct zkm_slab *ret)
{
    struct zkm_msg_acquire req;
    union {
        struct zkm_msg_acquire_reply r;
        char buf[ZKM_MSG_MAX_SIZE];
    } u;
    size_t len = 0;
    int err;

    memset(&req, 0, sizeof(req));
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        pthread_mutex_unlock(&c->lock);
        return -ENOTCONN;
    }
    hdr_init(&req.hdr, ZKM_MSG_ACQUIRE, c->version, sizeof(req), ++c->seq);
    req.node = node;
    req.count = 1;
    err = exchange(c->sock, &req, sizeof(req), u.buf, &len, NULL, NULL);
    if (!err)
        err = zkm_msg_validate(u.buf, len, 0, c->version, 1);
    if (!err && (u.r.hdr.type != ZKM_MSG_ACQUIRE_REPLY || u.r.hdr.seq != req.hdr.seq))
        err = -EBADMSG;
    if (err == -ENOTCONN || err == -EBADMSG || err == -ETIMEDOUT)
        c->dead = 1;
    pthread_mutex_unlock(&c->lock);
    if (err)
        return err;
    if (u.r.status < 0)
        return u.r.status;
    /* we asked for one; a daemon that sends more is not trusted with our bookkeeping */
    uint32_t h = u.r.handles[0];
    uint32_t hn = zkm_handle_node(h), hi = zkm_handle_index(h);
    if (u.r.count != 1 || hn >= c->n_nodes || hi >= c->node_slabs[hn])
        return -EBADMSG;
    held_test_and_set(c, hn, hi, 1);
    __atomic_fetch_add(&c->round_trips, 1, __ATOMIC_RELAXED);
    fill_slab(c, hn, hi, u.r.flags & 1, ret);
    return 0;
}

/* A round trip that finds the daemon gone reattaches to its successor and tries again. */
static int round_trip_acquire(struct zkm_conn *c, int node, struct zkm_slab *ret)
{
    int err = round_trip_acquire_once(c, node, ret);
    if (err == -ENOTCONN) {
        int e = zkm__conn_reattach(c);
        err = e == 0 ? round_trip_acquire_once(c, node, ret) : e;
    }
    return err;
}

int zkm_slab_acquire(struct zkm_conn *c, int node, struct zkm_slab *ret)
{
    if (!c || !ret)
        return -EINVAL;
    if (node == ZKM_NODE_LOCAL)
        node = zkm_conn_local_node(c);
    else if (node == ZKM_NODE_ANY)
        node = (int)(c->ctrl->home_node < c->n_nodes ? c->ctrl->home_node : 0);
    if (node < 0 || (uint32_t)node >= c->n_nodes)
        return -EINVAL;
    if (__atomic_load_n(&c->dead, __ATOMIC_RELAXED)) {
        int e = zkm__conn_reattach(c);
        if (e)
            return e;
    }

    struct zkm_grant_ring *r = &__atomic_load_n(&c->ctrl, __ATOMIC_ACQUIRE)->grant[node];
    uint32_t v;
    if (zkm_grant_pop(r, &v) == 0) {
        uint32_t index = v & ~ZKM_GRANT_ZEROED;
        if (index < c->node_slabs[node]) {
            held_test_and_set(c, (uint32_t)node, index, 1);
            __atomic_fetch_add(&c->ring_pops, 1, __ATOMIC_RELAXED);
            uint32_t depth = __atomic_load_n(&c->ctrl->tun.grant_depth[node], __ATOMIC_RELAXED);
            doorbell(c, zkm_grant_count(r) <= depth / 2);
            fill_slab(c, (uint32_t)node, index, (v & ZKM_GRANT_ZEROED) != 0, ret);
            return 0;
        }
        /* an index out of range can only come from a scribbled ring: ask the daemon */
    }
    /* the ring is empty: ask for one now (and the doorbell makes the daemon refill) */
    doorbell(c, 1);
    return round_trip_acquire(c, node, ret);
}

static int release_message(struct zkm_conn *c, uint32_t handle)
{
    struct zkm_msg_release req;
    union {
        struct zkm_msg_status_reply r;
        char buf[ZKM_MSG_MAX_SIZE];
    } u;
    size_t len = 0;

    memset(&req, 0, sizeof(req));
    hdr_init(&req.hdr, ZKM_MSG_RELEASE, c->version, sizeof(req), ++c->seq);
    req.count = 1;
    req.handles[0] = handle;
    int err = exchange(c->sock, &req, sizeof(req), u.buf, &len, NULL, NULL);
    if (!err)
        err = zkm_msg_validate(u.buf, len, 0, c->version, 1);
    if (!err && (u.r.hdr.type != ZKM_MSG_STATUS_REPLY || u.r.hdr.seq != req.hdr.seq))
        err = -EBADMSG;
    if (err == -ENOTCONN || err == -EBADMSG || err == -ETIMEDOUT)
        c->dead = 1;
    return err ? err : u.r.status;
}

int zkm_slab_release(struct zkm_conn *c, const struct zkm_slab *s)
{
    if (!c || !s)
        return -EINVAL;
    uint32_t node = zkm_handle_node(s->handle), index = zkm_handle_index(s->handle);
    if (node >= c->n_nodes || index >= c->node_slabs[node] ||
        s->addr != c->node_base[node] + (size_t)index * c->slab_size)
        return -EINVAL;
    if (!held_test_and_set(c, node, index, 0))
        return -EINVAL;
    /* Drop this process's page-table entries: the pages stay in the domain's memfd (the
     * daemon caches or punches them), but a returned slab no longer counts in our RSS
     * (HugetlbPages), and the next process of the domain that takes it is not charged
     * twice. A later touch by us would fault it in again: nothing is lost either way. */
    madvise(s->addr, c->slab_size, MADV_DONTNEED);

    int err = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&c->lock);
        if (c->dead)
            err = -ENOTCONN;
        else if (zkm_return_push(&c->ctrl->ret, s->handle) != 0)
            err = release_message(c, s->handle);
        else
            err = 0;
        pthread_mutex_unlock(&c->lock);
        if (err != -ENOTCONN || zkm__conn_reattach(c) != 0)
            break;
    }
    if (err == -ENOTCONN) {
        /* no daemon now: queue it on the old session's return ring, which the reattach
         * hands to the next daemon (dropping it here would leave it in the lease, unused,
         * for as long as the process lives) */
        pthread_mutex_lock(&c->lock);
        if (c->path[0] && c->ctrl != &c->dead_ctrl &&
            zkm_return_push(&c->ctrl->ret, s->handle) == 0)
            err = 0;
        pthread_mutex_unlock(&c->lock);
    }
    if (err) {
        held_test_and_set(c, node, index, 1);
        return err;
    }
    __atomic_fetch_add(&c->releases, 1, __ATOMIC_RELAXED);
    uint32_t queued = __atomic_load_n(&c->ctrl->ret.tail, __ATOMIC_RELAXED) -
                      __atomic_load_n(&c->ctrl->ret.head, __ATOMIC_RELAXED);
    doorbell(c, queued >= ZKM_RETURN_CAP / 2);
    return 0;
}

void zkm_disconnect(struct zkm_conn *c)
{
    if (!c)
        return;
    /* Closing the socket ends the session: the daemon reclaims every slab of the lease,
     * held or pre-granted, and punches it back to the node pool. */
    close(c->sock);
    conn_unmap(c);
    pthread_mutex_destroy(&c->lock);
    munmap(c, sizeof(*c));
}

/* ---- fork: the child's heap must be its own ---------------------------------------- */

void zkm__conn_lock(struct zkm_conn *c)
{
    pthread_mutex_lock(&c->lock);
}

void zkm__conn_unlock(struct zkm_conn *c)
{
    pthread_mutex_unlock(&c->lock);
}

/*
 * In a fork child: every held slab becomes private anonymous memory with the same
 * contents at the same address; everything else of the shared mappings is replaced by
 * inaccessible anonymous memory; the socket and control block are dropped. The
 * session is then dead for the child (the parent's is untouched).
 *
 * Per node: copy each run of held slabs into a scratch anonymous mapping, cover the
 * node's whole range with a fresh private mapping (MAP_FIXED), then move the scratch
 * pages into place with mremap (no second copy).
 */
int zkm__conn_fork_child(struct zkm_conn *c)
{
    int err = 0;
    pthread_mutex_init(&c->lock, NULL);
    close(c->sock);
    c->sock = -1;
    c->dead = 1;
    c->path[0] = '\0'; /* never reattach: the parent's lease is the parent's */
    for (uint32_t n = 0; n < c->n_nodes; n++) {
        if (c->node_fd[n] >= 0)
            close(c->node_fd[n]);
        c->node_fd[n] = -1;
    }
    if (c->ctrl)
        munmap(c->ctrl, ZKM_CTRL_SIZE);
    c->ctrl = &c->dead_ctrl; /* readers of tunables/cpu map see zeros, not a fault */

    for (uint32_t n = 0; n < c->n_nodes; n++) {
        size_t held = 0;
        for (uint64_t i = 0; i < c->node_slabs[n]; i++)
            held += zkm__conn_holds(c, n, (uint32_t)i);
        char *scratch = NULL;
        if (held) {
            scratch = map_anon(held * c->slab_size);
            if (!scratch) {
                err = -ENOMEM;
                continue;
            }
            size_t k = 0;
            for (uint64_t i = 0; i < c->node_slabs[n]; i++)
                if (zkm__conn_holds(c, n, (uint32_t)i))
                    memcpy(scratch + (k++) * c->slab_size, c->node_base[n] + i * c->slab_size,
                           c->slab_size);
        }
        void *m = mmap(c->node_base[n], c->node_bytes[n], PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        if (m == MAP_FAILED) {
            err = -errno;
            continue;
        }
        size_t k = 0;
        for (uint64_t i = 0; held && i < c->node_slabs[n]; i++) {
            if (!zkm__conn_holds(c, n, (uint32_t)i))
                continue;
            char *dst = c->node_base[n] + i * c->slab_size;
            void *r = mremap(scratch + (k++) * c->slab_size, c->slab_size, c->slab_size,
                             MREMAP_MAYMOVE | MREMAP_FIXED, dst);
            if (r == MAP_FAILED)
                err = -errno;
        }
    }
    return err;
}

/* ---- daemon restart ------------------------------------------------------------------ */

/*
 * Rejoin a restarted daemon without losing anything: HELLO with ZKM_HELLO_REATTACH, the
 * old session id and the domain's memfds (kept since connect). The new daemon finds the
 * lease in its state file and hands it to the new session, held. The mappings, and so
 * every address the program uses, stay as they are; only the socket and the control
 * block change.
 *
 * What was in flight in the old control block is settled here, under conn->lock:
 *   - slabs still in the old grant rings are taken (they are ours in the lease table);
 *   - handles queued on the old return ring that the old daemon never drained are
 *     released again by message.
 * The old control block stays mapped (another thread may be reading its rings right
 * now); 16 KiB per daemon restart.
 */
int zkm__conn_reattach(struct zkm_conn *c)
{
    union hello_reply u;
    int fds[ZKM_MSG_MAX_FDS], sock, err;
    unsigned n_fds = 0;

    pthread_mutex_lock(&c->lock);
    if (!c->dead) {
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    if (!c->path[0]) {
        pthread_mutex_unlock(&c->lock);
        return -ESRCH;
    }
    /* at most one attempt per 100 ms while no daemon answers */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    if (now < c->next_reattach_ns) {
        pthread_mutex_unlock(&c->lock);
        return -ENOTCONN;
    }
    c->next_reattach_ns = now + 100000000ULL;
    err = hello(c->path, c->client_id, c->node_fd, c->n_nodes, &sock, &u, fds, &n_fds);
    if (err) {
        pthread_mutex_unlock(&c->lock);
        /* no daemon (yet), or it is still recovering: try again later */
        if (err == -ECONNREFUSED || err == -ENOENT || err == -EAGAIN || err == -ETIMEDOUT)
            return -ENOTCONN;
        return err == -EPERM ? -ESRCH : err;
    }
    struct zkm_ctrl *ctrl = NULL;
    err = -EBADMSG;
    if (u.r.n_nodes == c->n_nodes && u.r.slab_size == c->slab_size)
        ctrl = map_ctrl(fds[0], &u.r);
    for (uint32_t i = 0; ctrl && i < c->n_nodes; i++)
        if (u.r.node_bytes[i] != c->node_bytes[i])
            ctrl = (munmap(ctrl, ZKM_CTRL_SIZE), NULL);
    close_fds(fds, n_fds);
    if (!ctrl) {
        close(sock);
        pthread_mutex_unlock(&c->lock);
        return err;
    }

    /* What the old session still had in flight is the new session's now (the daemon made
     * every slot of the lease HELD): the old rings' unclaimed entries - nobody here asked
     * for them, so they go back at once instead of staying held and unused - and the
     * returns the old daemon never read. */
    struct zkm_ctrl *old = c->ctrl;
    uint32_t pending[ZKM_RETURN_CAP + ZKM_MAX_NODES * ZKM_GRANT_CAP];
    uint32_t n_pending = 0;
    for (uint32_t n = 0; n < c->n_nodes; n++) {
        uint32_t v;
        while (zkm_grant_pop(&old->grant[n], &v) == 0) {
            uint32_t index = v & ~ZKM_GRANT_ZEROED;
            if (index < c->node_slabs[n])
                pending[n_pending++] = zkm_handle_make(n, index);
        }
    }
    uint32_t h = __atomic_load_n(&old->ret.head, __ATOMIC_ACQUIRE);
    uint32_t t = __atomic_load_n(&old->ret.tail, __ATOMIC_ACQUIRE);
    for (uint32_t k = 0; h != t && k < ZKM_RETURN_CAP; h++, k++)
        pending[n_pending++] = old->ret.slot[h & (ZKM_RETURN_CAP - 1)];

    for (uint32_t i = 0; i < c->n_nodes; i++)
        ctrl->client_node_base[i] = (uint64_t)(uintptr_t)c->node_base[i];
    close(c->sock);
    c->sock = sock;
    c->version = u.r.version;
    c->client_id = u.r.client_id;
    c->n_cpus = ctrl->n_cpus < ZKM_MAX_CPUS ? ctrl->n_cpus : ZKM_MAX_CPUS;
    __atomic_store_n(&c->ctrl, ctrl, __ATOMIC_RELEASE);
    __atomic_store_n(&c->dead, 0, __ATOMIC_RELEASE);
    c->reattaches++;

    for (uint32_t i = 0; i < n_pending; i++)
        release_message(c, pending[i]);
    pthread_mutex_unlock(&c->lock);
    return 0;
}
