/* SPDX-License-Identifier: MIT */
/*
 * session.c - client sessions: authentication, the lease, the control block's rings.
 *
 * Trust: everything a client sends or writes into its control block is hostile. Messages
 * are decoded only after zkm_msg_validate(); ring indices are read once and checked
 * against the daemon's shadows (zkm_ctrl_grant_head, zkm_return_drain); a handle is
 * accepted back only if the arena says this session holds it. A session that breaks a
 * rule is closed with one logged reason, and its whole lease is reclaimed: the harm stays
 * with the one client.
 *
 * Lease states of a slot (arena.state + arena.owner):
 *   PREGRANTED  the daemon pushed it on the session's grant ring; the client may take it
 *   HELD        the client took it (head moved past it) or got it by ACQUIRE
 *   FREE        back in the arena
 * The daemon learns that the client took ring entries by reading head; it turns entries
 * [old head, new head) from PREGRANTED into HELD using its private shadow copy of the ring,
 * never the shared slots. A return of a slot that is not HELD by this session is a
 * violation (it would let a client free a slot still sitting in its ring and then use
 * it).
 *
 * Death: the socket's EOF or the pidfd's POLLIN (whichever first) reclaims every slot of
 * the lease and punches it; that runs in the loop iteration that sees the event.
 */
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "observer.h"
#include "loop.h"
#include "query.h"
#include "state.h"
#include "zkm_ring.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

static struct zkm_session *sessions;
static uint32_t n_sessions;
static uint8_t *state_live;    /* per state-file session entry: 1 = a session of this daemon */
static uint32_t stale_entries; /* previous daemon's leases whose process still lives */
static unsigned long long proc_stat_field(pid_t pid, int want);
static struct zkm_daemon_counters counters;
static struct {
    uint32_t grant_depth;
    uint64_t max_clients;
    uint32_t allow_other_uids;
    gid_t admin_gid;
    int have_admin_gid;
    uint32_t mode;
    uint64_t decay_ms, tick_ms;
    int compaction;
    uint32_t small_threshold, large_threshold;
    uint32_t tcache_small, tcache_medium;
} settings;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void zkm_sessions_apply_config(const struct zkm_config *cfg)
{
    settings.grant_depth = (uint32_t)cfg->grant_depth;
    settings.max_clients = cfg->max_clients;
    settings.allow_other_uids = cfg->allow_other_uids;
    settings.mode = cfg->mode;
    settings.decay_ms = cfg->decay_ms;
    settings.tick_ms = cfg->tick_ms;
    settings.compaction = cfg->enable_compaction != 0;
    settings.small_threshold = (uint32_t)cfg->small_threshold;
    settings.large_threshold = (uint32_t)cfg->large_threshold;
    settings.tcache_small = (uint32_t)cfg->tcache_small;
    settings.tcache_medium = (uint32_t)cfg->tcache_medium;
    struct group *g = cfg->admin_group[0] ? getgrnam(cfg->admin_group) : NULL;
    settings.have_admin_gid = g != NULL;
    settings.admin_gid = g ? g->gr_gid : 0;
    zkm_arena_set_budget(cfg->memory_budget_mb << 20);
    zkm_arena_set_caching(settings.compaction);
    zkm_tune_apply_config(cfg);
    for (struct zkm_session *s = sessions; s; s = s->next) {
        if (!s->ctrl)
            continue;
        for (uint32_t n = 0; n < zkm_arena_count(); n++) {
            s->ring[n].depth = zkm_tune_depth(s, n);
            __atomic_store_n(&s->ctrl->tun.grant_depth[n], s->ring[n].depth, __ATOMIC_RELAXED);
        }
        __atomic_store_n(&s->ctrl->tun.l2_cap, settings.compaction ? ZKM_COMPACT_L2_CAP : 0,
                         __ATOMIC_RELAXED);
        __atomic_store_n(&s->ctrl->tun.mode, settings.mode, __ATOMIC_RELAXED);
        __atomic_fetch_add(&s->ctrl->tun.gen, 1, __ATOMIC_RELEASE);
    }
}

int zkm_sessions_init(const struct zkm_config *cfg)
{
    state_live = calloc(zkm_state_max_sessions(), 1);
    if (!state_live)
        return -ENOMEM;
    zkm_sessions_apply_config(cfg);
    return 0;
}

/* The session's entry in the state file: who may reattach to this lease after a restart. */
static int state_entry_add(struct zkm_session *s)
{
    struct zkm_state_session *t = zkm_state_sessions();
    for (uint32_t i = 0; i < zkm_state_max_sessions(); i++) {
        if (t[i].id != 0)
            continue;
        t[i].pid = s->pid;
        t[i].uid = s->uid;
        t[i].domain = s->dom->index;
        t[i].start_time = proc_stat_field(s->pid, 22);
        __atomic_store_n(&t[i].id, s->id, __ATOMIC_RELEASE);
        state_live[i] = 1;
        s->state_idx = i + 1;
        return 0;
    }
    return -EUSERS;
}

static void state_entry_drop(struct zkm_session *s)
{
    if (!s->state_idx)
        return;
    uint32_t i = s->state_idx - 1;
    memset(&zkm_state_sessions()[i], 0, sizeof(struct zkm_state_session));
    state_live[i] = 0;
    s->state_idx = 0;
}

static int state_entry_alive(const struct zkm_state_session *e);

/*
 * Leases of the previous daemon's sessions (state entries not live here) wait for their
 * client to reattach. One whose process is gone is released (punched where its domain
 * came back). One whose process lives on keeps its slots reserved for as long as it
 * lives - releasing them could hand its memory to someone else - even after the recovery
 * window; the window only bounds how long new sessions of its uid wait for the domain.
 */
static void recovery_tick(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    uint32_t waiting = 0;
    struct zkm_state_session *t = zkm_state_sessions();
    if (!zkm_arena_recovering() && !stale_entries)
        return;
    for (uint32_t i = 0; i < zkm_state_max_sessions(); i++) {
        if (t[i].id == 0 || state_live[i])
            continue;
        if (state_entry_alive(&t[i])) {
            waiting++;
            continue;
        }
        uint64_t n = zkm_arena_release_stale(t[i].id);
        zkm_log(ZKM_LOG_INFO,
                "recovery: lease %u (pid %d uid %u) released, its process is "
                "gone: %llu slabs",
                t[i].id, t[i].pid, t[i].uid, (unsigned long long)n);
        memset(&t[i], 0, sizeof(t[i]));
    }
    stale_entries = waiting;
    if (zkm_arena_recovering() && (waiting == 0 || now >= zkm_arena_recovery_deadline())) {
        zkm_arena_recovery_end();
        if (waiting)
            zkm_log(ZKM_LOG_WARNING,
                    "recovery window over: %u live clients of the previous "
                    "daemon have not reattached; their slabs stay reserved "
                    "until they reattach or exit",
                    waiting);
        else
            zkm_log(ZKM_LOG_INFO, "recovery complete: every surviving lease is back");
    }
}

struct zkm_session *zkm_sessions_first(void)
{
    return sessions;
}

uint32_t zkm_sessions_count(void)
{
    return n_sessions;
}

const struct zkm_daemon_counters *zkm_sessions_counters(void)
{
    return &counters;
}

static void session_free(struct zkm_session *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    n_sessions--;
    if (s->sock >= 0)
        close(s->sock);
    if (s->pidfd >= 0)
        close(s->pidfd);
    free(s);
}

void zkm_session_close(struct zkm_session *s, const char *reason)
{
    if (s->closing)
        return;
    s->closing = 1;
    if (!s->is_ctl && s->version)
        zkm_observer_untrack(s->pid);
    uint64_t n = zkm_arena_reclaim_owner(s->id);
    state_entry_drop(s);
    if (s->ctrl)
        munmap(s->ctrl, ZKM_CTRL_SIZE);
    s->ctrl = NULL;
    if (s->dom)
        zkm_domain_put(s->dom);
    s->dom = NULL;
    if (!s->is_ctl || reason)
        zkm_log(reason ? ZKM_LOG_WARNING : ZKM_LOG_INFO,
                "client %u (pid %d uid %u %s) %s%s; %llu slabs returned to the node pools", s->id,
                (int)s->pid, (unsigned)s->uid, s->comm, reason ? "disconnected: " : "left",
                reason ? reason : "", (unsigned long long)n);
    shutdown(s->sock, SHUT_RDWR);
    zkm_loop_cancel_session(s);
    if (s->inflight == 0)
        session_free(s);
}

void zkm_session_op_done(struct zkm_session *s)
{
    s->inflight--;
    if (s->closing && s->inflight == 0)
        session_free(s);
}

int zkm_session_send(struct zkm_session *s, const void *msg, size_t len, const int *fds,
                     unsigned n_fds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * ZKM_MSG_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n_fds) {
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
    }
    ssize_t r;
    do {
        r = sendmsg(s->sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN)
            zkm_session_close(s, "does not read its replies (socket buffer full)");
        else
            zkm_session_close(s, NULL);
        return -errno;
    }
    return 0;
}

static void hdr_reply(struct zkm_hdr *h, uint16_t type, uint16_t version, uint32_t len,
                      uint32_t seq)
{
    h->magic = ZKM_PROTO_MAGIC;
    h->version = version;
    h->type = type;
    h->len = len;
    h->seq = seq;
}

/* The loop had no descriptor for a session: answer the HELLO already queued on `fd` (if
 * any) with -EMFILE, so the client sees a refusal rather than a hang-up, and close it. */
void zkm_sessions_refuse_fd(int fd)
{
    struct zkm_msg_hello h;
    ssize_t n = recv(fd, &h, sizeof(h), MSG_DONTWAIT);
    if (n == (ssize_t)sizeof(h) && zkm_msg_validate(&h, sizeof(h), 0, 0, 0) == 0 &&
        h.hdr.type == ZKM_MSG_HELLO) {
        struct zkm_msg_hello_reply r;
        memset(&r, 0, sizeof(r));
        hdr_reply(&r.hdr, ZKM_MSG_HELLO_REPLY, 0, sizeof(r), h.hdr.seq);
        r.version_max = ZKM_PROTO_VERSION_MAX;
        r.status = -EMFILE;
        (void)!send(fd, &r, sizeof(r), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    close(fd);
    counters.clients_rejected++;
}

static void send_status(struct zkm_session *s, uint32_t seq, int32_t status, uint32_t value)
{
    struct zkm_msg_status_reply r;
    memset(&r, 0, sizeof(r));
    hdr_reply(&r.hdr, ZKM_MSG_STATUS_REPLY, s->version, sizeof(r), seq);
    r.status = status;
    r.value = value;
    zkm_session_send(s, &r, sizeof(r), NULL, 0);
}

static int is_admin(const struct zkm_session *s)
{
    if (s->uid == 0)
        return 1;
    if (!settings.have_admin_gid)
        return 0;
    if (s->gid == settings.admin_gid)
        return 1;
    gid_t groups[256];
    socklen_t len = sizeof(groups);
    if (getsockopt(s->sock, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
        for (socklen_t i = 0; i < len / sizeof(gid_t); i++)
            if (groups[i] == settings.admin_gid)
                return 1;
    return 0;
}

void zkm_session_accept(int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        counters.clients_rejected++;
        close(fd);
        return;
    }
    struct zkm_session *s = calloc(1, sizeof(*s));
    if (!s) {
        zkm_log(ZKM_LOG_ERR, "out of memory accepting a client (pid %d)", (int)cred.pid);
        counters.clients_rejected++;
        close(fd);
        return;
    }
    s->id = zkm_state_next_session_id();
    s->sock = fd;
    s->pid = cred.pid;
    s->uid = cred.uid;
    s->gid = cred.gid;
    s->connected_ms = now_ms();
    int pidfd = -1;
    len = sizeof(pidfd);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0)
        pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
    s->pidfd = pidfd;
    s->next = sessions;
    if (sessions)
        sessions->prev = s;
    sessions = s;
    n_sessions++;
    counters.clients_total++;
    zkm_loop_arm_recv(s);
}

static void protocol_error(struct zkm_session *s, const char *what)
{
    counters.protocol_errors++;
    char reason[128];
    snprintf(reason, sizeof(reason), "protocol error: %s", what);
    zkm_session_close(s, reason);
}

static void violation(struct zkm_session *s, const char *what)
{
    s->violations++;
    counters.violations++;
    char reason[160];
    snprintf(reason, sizeof(reason), "control block violation: %s", what);
    zkm_session_close(s, reason);
}

/* ---- control block and rings -------------------------------------------------------- */

static int ctrl_create(struct zkm_session *s, int *ret_fd)
{
    char name[32];
    snprintf(name, sizeof(name), "zkmem-ctrl-%u", s->id);
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd < 0 && errno == EINVAL)
        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, ZKM_CTRL_SIZE) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct zkm_ctrl *c = mmap(NULL, ZKM_CTRL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c == MAP_FAILED) {
        int e = -errno;
        close(fd);
        return e;
    }
    const struct zkm_topology *t = zkm_arena_topology();
    c->magic = ZKM_CTRL_MAGIC;
    c->version = s->version;
    c->size = ZKM_CTRL_SIZE;
    c->client_id = s->id;
    c->n_nodes = zkm_arena_count();
    c->n_cpus = t->n_cpus < ZKM_MAX_CPUS ? t->n_cpus : ZKM_MAX_CPUS;
    c->slab_size = (uint32_t)zkm_arena_slab_size();
    c->home_node = s->home;
    memcpy(c->cpu_node, t->cpu_node, c->n_cpus);
    c->tun.gen = 1;
    c->tun.mode = settings.mode;
    for (uint32_t n = 0; n < c->n_nodes; n++)
        c->tun.grant_depth[n] = settings.grant_depth;
    c->tun.tcache_cap[0] = settings.tcache_small;
    c->tun.tcache_cap[1] = settings.tcache_medium;
    c->tun.small_threshold = settings.small_threshold;
    c->tun.large_threshold = settings.large_threshold;
    for (uint32_t n = 0; n < ZKM_MAX_NODES; n++)
        zkm_grant_ring_init(&c->grant[n]);
    s->ctrl = c;
    *ret_fd = fd;
    return 0;
}

/* Field `want` (1-based, as in proc(5)) of /proc/<pid>/stat; 0 when unreadable. */
static unsigned long long proc_stat_field(pid_t pid, int want)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    int field = 2;
    for (; p && *p; p++)
        if (*p == ' ' && ++field == want)
            return strtoull(p + 1, NULL, 10);
    return 0;
}

/* The node the client's process last ran on: its home. */
static uint32_t home_node_of(pid_t pid)
{
    unsigned long long cpu = proc_stat_field(pid, 39);
    const struct zkm_topology *t = zkm_arena_topology();
    return cpu < t->n_cpus ? t->cpu_node[cpu] : 0;
}

/* Is the process that had this state entry still the one running under its pid? */
static int state_entry_alive(const struct zkm_state_session *e)
{
    unsigned long long st = proc_stat_field(e->pid, 22);
    return st != 0 && st == e->start_time;
}

/* Give back one slab of the session's lease; -EINVAL unless the session holds it (a slab
 * still in its grant ring, or anyone else's, is not its to return). */
static int return_slab(struct zkm_session *s, uint32_t handle)
{
    uint32_t index = zkm_handle_index(handle);
    struct zkm_arena *a = zkm_arena_get(zkm_handle_node(handle));
    if (!a || index >= a->max_slots || a->state[index] != ZKM_SLOT_HELD || a->owner[index] != s->id)
        return -EINVAL;
    zkm_arena_free(a, index, 0);
    s->slabs--;
    s->returns++;
    return 0;
}

/* Take in what the client did since the last look: ring entries it consumed and slabs it
 * returned. 0, or -EFAULT after closing the session for a violation.
 * The returns are read first: a client pops a slab (its head moves) before it can return
 * it, so every pop behind a return read here is visible to the head read after it. Read
 * the other way round, a pop and its return made between the two reads showed a return
 * of a slab still pre-granted: a well-behaved client closed for a violation (seen under
 * ASan in test_many_processes). */
static int absorb(struct zkm_session *s)
{
    uint32_t handles[ZKM_RETURN_CAP];
    int got = zkm_return_drain(&s->ctrl->ret, &s->ret_head, handles, ZKM_RETURN_CAP);
    if (got < 0) {
        violation(s, "return ring tail out of range");
        return -EFAULT;
    }
    for (uint32_t n = 0; n < zkm_arena_count(); n++) {
        struct zkm_session_ring *r = &s->ring[n];
        if (r->tail == r->head)
            continue;
        uint32_t head;
        if (zkm_ctrl_grant_head(&s->ctrl->grant[n], r->head, r->tail, &head) != 0) {
            violation(s, "grant ring head out of range");
            return -EFAULT;
        }
        struct zkm_arena *a = zkm_arena_get(n);
        for (uint32_t i = r->head; i != head; i++) {
            uint32_t v = r->shadow[i & (ZKM_GRANT_CAP - 1)];
            if (v == ZKM_GRANT_REVOKED)
                continue; /* withdrawn: the client skipped it */
            uint32_t index = v & ~ZKM_GRANT_ZEROED;
            if (a->state[index] == ZKM_SLOT_PREGRANTED && a->owner[index] == s->id) {
                a->state[index] = ZKM_SLOT_HELD;
                a->pregranted--;
            }
            s->refills++;
            r->taken++;
        }
        r->head = head;
    }
    for (int i = 0; i < got; i++) {
        if (return_slab(s, handles[i]) != 0) {
            violation(s, "returned a slab it does not hold");
            return -EFAULT;
        }
    }
    return 0;
}

/* Slabs one refill pass grants a session. Populating a slab costs from a fraction of a
 * millisecond to several (the first touch of a hugepage in a VM), and the loop serves no
 * request meanwhile: a tuned ring 60 deep filled in one go kept a waiting client's round
 * trip for up to 600 ms. The rest of a ring is filled by later passes, with the requests
 * that arrived in between served first (zkm_sessions_backlog). */
#define ZKM_REFILL_BATCH 4

static int any_refill_deferred; /* some session is marked refill_deferred */

static void defer_refill(struct zkm_session *s)
{
    s->refill_deferred = 1;
    any_refill_deferred = 1;
}

/* Bring each active grant ring towards its depth, at most `budget` slabs now; the rest is
 * marked for the loop's backlog pass. */
static void refill_upto(struct zkm_session *s, uint32_t budget)
{
    for (uint32_t n = 0; n < zkm_arena_count(); n++) {
        struct zkm_session_ring *r = &s->ring[n];
        if (!r->active)
            continue;
        struct zkm_arena *a = zkm_arena_get(n);
        struct zkm_grant_ring *g = &s->ctrl->grant[n];
        while ((uint32_t)(r->tail - r->head) < r->depth) {
            if (budget == 0) {
                defer_refill(s);
                return;
            }
            uint32_t slot =
                __atomic_load_n(&g->slot[r->tail & (ZKM_GRANT_CAP - 1)], __ATOMIC_RELAXED);
            if (slot != ZKM_GRANT_TAKEN)
                break; /* a consumer is mid-claim there: next time */
            uint32_t index;
            int zeroed;
            if (zkm_arena_grant(a, s->dom, s->id, ZKM_SLOT_PREGRANTED, &index, &zeroed) != 0)
                break; /* no pre-grant beyond what the arena or budget allows */
            uint32_t v = zeroed ? index | ZKM_GRANT_ZEROED : index;
            r->shadow[r->tail & (ZKM_GRANT_CAP - 1)] = v;
            if (zkm_grant_push(g, &r->tail, r->head, v) != 0) {
                zkm_arena_free(a, index, 0); /* the slot changed under us: the client's doing */
                break;
            }
            s->slabs++;
            budget--;
        }
    }
}

static void refill(struct zkm_session *s)
{
    refill_upto(s, ZKM_REFILL_BATCH);
}

int zkm_sessions_backlog(void)
{
    if (!any_refill_deferred)
        return 0;
    any_refill_deferred = 0;
    for (struct zkm_session *s = sessions; s; s = s->next) {
        if (!s->refill_deferred)
            continue;
        s->refill_deferred = 0;
        if (!s->closing && s->ctrl && absorb(s) == 0)
            refill(s); /* marks it again while its rings stay short */
    }
    return any_refill_deferred;
}

/* Withdraw entries of ring `n`, newest first, until at most `keep` unclaimed ones are
 * left or `max` were withdrawn. Withdrawn slabs go back to the domain's cache. */
static uint32_t ring_withdraw(struct zkm_session *s, uint32_t n, uint32_t keep, uint32_t max)
{
    struct zkm_session_ring *r = &s->ring[n];
    struct zkm_arena *a = zkm_arena_get(n);
    uint32_t live = 0, got = 0;
    for (uint32_t p = r->head; p != r->tail; p++)
        live += r->shadow[p & (ZKM_GRANT_CAP - 1)] != ZKM_GRANT_REVOKED;
    for (uint32_t p = r->tail; p != r->head && live > keep && got < max;) {
        p--;
        uint32_t *sh = &r->shadow[p & (ZKM_GRANT_CAP - 1)];
        if (*sh == ZKM_GRANT_REVOKED)
            continue;
        if (!zkm_grant_revoke(&s->ctrl->grant[n], p, *sh))
            break; /* the client is taking from this end too: it is not idle */
        zkm_arena_free(a, *sh & ~ZKM_GRANT_ZEROED, 0);
        *sh = ZKM_GRANT_REVOKED;
        s->slabs--;
        s->withdrawn++;
        live--;
        got++;
    }
    return got;
}

/* Absorb, refill, and go back to sleep on the doorbell. */
/* The observer attributes faults to zkmem memory by the ranges the client says it mapped
 * (client-written: only bounds-checked, used for counting and nothing else). */
static void observer_ranges(struct zkm_session *s)
{
    uint64_t st[ZKM_MAX_NODES], en[ZKM_MAX_NODES];
    uint32_t k = 0, changed = 0;
    for (uint32_t n = 0; n < zkm_arena_count(); n++) {
        uint64_t base = __atomic_load_n(&s->ctrl->client_node_base[n], __ATOMIC_RELAXED);
        uint64_t len = zkm_arena_get(n)->max_slots * zkm_arena_slab_size();
        changed |= base != s->obs_base[n];
        s->obs_base[n] = base;
        if (base && base + len > base) {
            st[k] = base;
            en[k++] = base + len;
        }
    }
    if (changed && zkm_observer_loaded())
        zkm_observer_track(s->pid, st, en, k);
}

static void service(struct zkm_session *s)
{
    if (s->closing || !s->ctrl)
        return;
    observer_ranges(s);
    if (absorb(s) != 0)
        return;
    refill(s);
    /* high_performance: the daemon polls the rings every millisecond instead of sleeping
     * on the doorbell, so clients never pay a FUTEX_WAKE */
    if (zkm_loop_futex_supported() && !s->op_futex.armed && settings.mode != 0) {
        /* Arm first, then look again: a doorbell rung between our last look and the arm
         * makes the wait return at once (value mismatch), so nothing is missed. */
        __atomic_store_n(&s->ctrl->daemon_waiting, 1, __ATOMIC_SEQ_CST);
        uint32_t bell = __atomic_load_n(&s->ctrl->doorbell, __ATOMIC_SEQ_CST);
        s->doorbell_seen = bell;
        zkm_loop_arm_futex(s, bell);
    }
}

void zkm_session_on_futex(struct zkm_session *s, int res)
{
    if (s->closing || !s->ctrl)
        return;
    __atomic_store_n(&s->ctrl->daemon_waiting, 0, __ATOMIC_SEQ_CST);
    service(s);
}

/* An idle client (no slab taken for decay_ms) keeps no more pre-granted slabs than its
 * tuned depth: the rest goes back to its domain's cache, and from there to the pool. */
static void withdraw_surplus(struct zkm_session *s, uint64_t now)
{
    if (!settings.compaction || now - s->tune.last_take_ms < settings.decay_ms)
        return;
    for (uint32_t n = 0; n < zkm_arena_count(); n++)
        if (s->ring[n].tail != s->ring[n].head)
            ring_withdraw(s, n, s->ring[n].depth, ZKM_GRANT_CAP);
}

static uint64_t last_background_ms, last_audit_ms, withdraw_passes;

/* A client's pre-grants on a node are capped at a quarter of the arena split between the
 * clients, so that bursty clients' rings cannot hold what another client needs. */
static void update_shares(void)
{
    uint32_t clients = 0;
    for (struct zkm_session *s = sessions; s; s = s->next)
        clients += s->ctrl && !s->closing;
    for (uint32_t n = 0; n < zkm_arena_count(); n++) {
        uint64_t share = zkm_arena_get(n)->capacity / (4 * (uint64_t)(clients ? clients : 1));
        zkm_tune_set_share(n, share > UINT32_MAX ? UINT32_MAX : (uint32_t)share);
    }
}

void zkm_sessions_tick(void)
{
    recovery_tick();
    uint64_t now = now_ms();
    /* high_performance polls every millisecond; the model and decay run once per tick_ms */
    int background = now - last_background_ms >= settings.tick_ms;
    if (background)
        update_shares();
    struct zkm_session *next;
    for (struct zkm_session *s = sessions; s; s = next) {
        next = s->next;
        if (!s->ctrl || s->closing)
            continue;
        service(s);
        if (background && !s->closing && s->ctrl) {
            zkm_tune_session(s, now);
            withdraw_surplus(s, now);
        }
    }
    if (background) {
        last_background_ms = now;
        if (settings.compaction)
            zkm_arena_decay(now >= settings.decay_ms ? now - settings.decay_ms : 0);
        if (now - last_audit_ms >= 1000) {
            last_audit_ms = now;
            zkm_arena_audit();
            zkm_arena_topup();
        }
    }
}

uint32_t zkm_sessions_withdraw(uint32_t node, const struct zkm_session *except, uint32_t want)
{
    uint32_t got = 0;
    uint64_t seen_before = UINT64_MAX; /* visit sessions most idle first, each once */
    while (got < want) {
        struct zkm_session *idlest = NULL;
        for (struct zkm_session *s = sessions; s; s = s->next) {
            if (s == except || !s->ctrl || s->closing || s->ring[node].tail == s->ring[node].head)
                continue;
            if (s->withdraw_pass == seen_before)
                continue;
            if (!idlest || s->tune.last_take_ms < idlest->tune.last_take_ms)
                idlest = s;
        }
        if (!idlest)
            break;
        if (seen_before == UINT64_MAX)
            seen_before = ++withdraw_passes;
        idlest->withdraw_pass = seen_before;
        if (absorb(idlest) != 0 || idlest->closing)
            continue;
        got += ring_withdraw(idlest, node, 0, want - got); /* 0: it is taking right now */
    }
    return got;
}

uint64_t zkm_sessions_compact(uint32_t *ret_drain_slabs, uint32_t *ret_drain_clients)
{
    uint64_t freed = 0;
    *ret_drain_slabs = *ret_drain_clients = 0;
    for (struct zkm_session *s = sessions; s; s = s->next) {
        if (!s->ctrl || s->closing)
            continue;
        service(s);
        uint32_t d = zkm_tune_drain_now(s);
        *ret_drain_slabs += d;
        *ret_drain_clients += d != 0;
        for (uint32_t n = 0; n < zkm_arena_count() && !s->closing; n++)
            ring_withdraw(s, n, s->ring[n].depth, ZKM_GRANT_CAP);
    }
    for (uint32_t n = 0; n < zkm_arena_count(); n++)
        freed += zkm_arena_get(n)->cached;
    zkm_arena_decay(UINT64_MAX);
    return freed;
}

void zkm_session_on_pidfd(struct zkm_session *s, int res)
{
    if (!s->closing)
        zkm_session_close(s, NULL);
}

/* ---- messages ----------------------------------------------------------------------- */

/* The lease of a previous daemon's session: find its entry (same id, pid and uid) and
 * its domain, checked against the memfds the client brought. 0 or -errno. */
static int reattach(struct zkm_session *s, uint32_t old_id, const int *fds, unsigned n_fds)
{
    struct zkm_state_session *t = zkm_state_sessions();
    for (uint32_t i = 0; i < zkm_state_max_sessions(); i++) {
        if (t[i].id != old_id || state_live[i])
            continue;
        if (t[i].pid != (int32_t)s->pid || t[i].uid != (uint32_t)s->uid)
            return -ESRCH;
        int err = zkm_domain_reattach(t[i].domain, s->uid, fds, n_fds, &s->dom);
        if (err)
            return err;
        s->slabs = zkm_arena_restore_owner(old_id, s->id);
        t[i].id = s->id;
        state_live[i] = 1;
        s->state_idx = i + 1;
        zkm_log(ZKM_LOG_INFO, "client %u (pid %d uid %u %s) reattached to lease %u: %llu slabs",
                s->id, (int)s->pid, (unsigned)s->uid, s->comm, old_id,
                (unsigned long long)s->slabs);
        return 0;
    }
    return -ESRCH;
}

static const char *refusal(int err)
{
    switch (err) {
    case -EPROTONOSUPPORT:
        return "no common protocol version";
    case -EACCES:
        return "uid not allowed (allow_other_uids = no)";
    case -EUSERS:
        return "too many clients (max_clients)";
    case -ESRCH:
        return "asked to reattach to a lease this daemon does not know";
    case -EPERM:
        return "reattach with memfds that are not its domain's";
    case -EAGAIN:
        return "its uid's memory is still being recovered; it will retry";
    default:
        return strerror(-err);
    }
}

/* Takes ownership of fds (a REATTACH carries the client's node memfds). */
static void on_hello(struct zkm_session *s, const struct zkm_msg_hello *m, int *fds_in,
                     unsigned n_in)
{
    struct zkm_msg_hello_reply r;
    memset(&r, 0, sizeof(r));
    hdr_reply(&r.hdr, ZKM_MSG_HELLO_REPLY, 0, sizeof(r), m->hdr.seq);
    r.version_max = ZKM_PROTO_VERSION_MAX;
    memcpy(s->comm, m->comm, ZKM_COMM_LEN);
    s->comm[ZKM_COMM_LEN - 1] = '\0';

    uint16_t v = 0;
    int ctl = (m->flags & ZKM_HELLO_CTL) != 0;
    int err = zkm_version_negotiate(m->version_min, m->version_max, &v);
    if (!err && !ctl && !settings.allow_other_uids && s->uid != getuid() && s->uid != 0)
        err = -EACCES;
    if (!err && !ctl && n_sessions > settings.max_clients)
        err = -EUSERS;
    s->version = v;
    r.version = v;
    r.client_id = s->id;
    r.n_nodes = zkm_arena_count();
    r.slab_size = (uint32_t)zkm_arena_slab_size();
    r.backing = zkm_arena_backing();
    if (!err && ctl) {
        s->is_ctl = 1;
        s->is_admin = (uint8_t)is_admin(s);
        zkm_session_send(s, &r, sizeof(r), NULL, 0);
        return;
    }

    int ctrl_fd = -1;
    if (!err) {
        s->home = home_node_of(s->pid);
        if (m->flags & ZKM_HELLO_REATTACH) {
            err = reattach(s, m->reattach_id, fds_in, n_in);
            if (!err)
                n_in = 0; /* the domain owns them now */
        } else {
            err = zkm_domain_get(s->uid, &s->dom);
            if (!err && (err = state_entry_add(s)) != 0) {
                zkm_domain_put(s->dom);
                s->dom = NULL;
            }
        }
    }
    for (unsigned i = 0; i < n_in; i++)
        close(fds_in[i]);
    if (!err && (err = ctrl_create(s, &ctrl_fd)) != 0)
        zkm_log(ZKM_LOG_ERR, "cannot create the control block of client %u: %s", s->id,
                strerror(-err));
    if (err) {
        counters.clients_rejected++;
        r.status = err;
        zkm_log(err == -EAGAIN ? ZKM_LOG_INFO : ZKM_LOG_WARNING,
                "refused client pid %d uid %u (%s): %s", (int)s->pid, (unsigned)s->uid, s->comm,
                refusal(err));
        zkm_session_send(s, &r, sizeof(r), NULL, 0);
        zkm_session_close(s, NULL);
        return;
    }

    int fds[ZKM_MSG_MAX_FDS];
    fds[0] = ctrl_fd;
    for (uint32_t n = 0; n < r.n_nodes; n++) {
        fds[1 + n] = s->dom->memfd[n];
        r.node_bytes[n] = zkm_arena_get(n)->max_slots * zkm_arena_slab_size();
    }
    zkm_tune_init(s, now_ms());
    r.ctrl_size = ZKM_CTRL_SIZE;
    r.n_fds = 1 + r.n_nodes;
    s->ring[s->home].active = 1;
    /* The ring right after the reply (the loop's backlog pass), not before: populating a
     * hugepage slab (its zeroing) was most of a HELLO, and a process starts on its own
     * start slabs (client key start_slabs, 4 by default), so it needs none at once. A
     * trivial program under the preload took 2.21-2.39 ms (median of 600 runs, 3 runs of
     * hyperfine) with one slab populated before the reply and 1.93-2.10 without; four
     * before the reply had cost more still (cb-ramp step0: 1355 vs 1163 us median). */
    refill_upto(s, 0);
    zkm_session_send(s, &r, sizeof(r), fds, r.n_fds);
    close(ctrl_fd);
    zkm_log(ZKM_LOG_DEBUG, "client %u: pid %d uid %u %s, home node %u", s->id, (int)s->pid,
            (unsigned)s->uid, s->comm, s->home);
    if (!s->closing) {
        if (s->pidfd >= 0)
            zkm_loop_arm_pidfd(s);
        zkm_observer_track(s->pid, NULL, NULL, 0);
        service(s);
    }
}

static void on_acquire(struct zkm_session *s, const struct zkm_msg_acquire *m)
{
    struct zkm_msg_acquire_reply r;
    memset(&r, 0, sizeof(r));
    hdr_reply(&r.hdr, ZKM_MSG_ACQUIRE_REPLY, s->version, sizeof(r), m->hdr.seq);
    uint32_t nn = zkm_arena_count();
    uint32_t want = m->node == ZKM_NODE_ANY ? s->home : (uint32_t)m->node;
    if (want >= nn) {
        r.status = -EINVAL;
        zkm_session_send(s, &r, sizeof(r), NULL, 0);
        return;
    }
    if (absorb(s) != 0)
        return;
    s->waits++;
    s->ring[want].active = 1;
    uint32_t order[ZKM_MAX_NODES];
    zkm_topology_order(zkm_arena_topology(), want, order);
    uint32_t tries = (m->flags & ZKM_ACQUIRE_STRICT) ? 1 : nn;
    int err = -ENOMEM, withdrew = 0;
    while (r.count < m->count) {
        int got = 0;
        for (uint32_t k = 0; k < tries; k++) {
            uint32_t index;
            int zeroed;
            struct zkm_arena *a = zkm_arena_get(order[k]);
            err = zkm_arena_grant(a, s->dom, s->id, ZKM_SLOT_HELD, &index, &zeroed);
            if (err == -EDQUOT)
                break;
            if (err == 0) {
                if (k > 0) {
                    a->remote_grants_total++;
                    zkm_fallback(ZKM_FB_NODE_FALLBACK,
                                 "node %u exhausted: serving from node %u by distance "
                                 "(counted per arena in remote_grants_total)",
                                 want, order[k]);
                }
                r.handles[r.count] = zkm_handle_make(order[k], index);
                if (zeroed)
                    r.flags |= 1U << r.count;
                r.count++;
                s->slabs++;
                got = 1;
                break;
            }
        }
        if (!got && err == -ENOMEM && !withdrew) {
            /* every node is out: take back idle clients' pre-granted slabs, then retry */
            withdrew = 1;
            for (uint32_t k = 0; k < tries; k++)
                if (zkm_sessions_withdraw(order[k], s, m->count - r.count))
                    break;
            continue;
        }
        if (!got && err == -EDQUOT && !withdrew) {
            /* at its budget with slabs still in its own rings (refilled while this request
             * was on its way): a slab it asks for beats one it may want later */
            withdrew = 1;
            uint32_t n = 0;
            for (uint32_t k = 0; k < nn && n < m->count - r.count; k++)
                n += ring_withdraw(s, order[k], 0, m->count - r.count - n);
            if (n)
                continue;
        }
        if (!got)
            break;
    }
    r.status = r.count ? 0 : err;
    zkm_session_send(s, &r, sizeof(r), NULL, 0);
    if (!s->closing)
        refill(s);
}

static void on_release(struct zkm_session *s, const struct zkm_msg_release *m)
{
    if (absorb(s) != 0)
        return;
    uint32_t ok = 0;
    int status = 0;
    for (uint32_t i = 0; i < m->count; i++) {
        if (return_slab(s, m->handles[i]) != 0)
            status = -EINVAL;
        else
            ok++;
    }
    if (status) {
        s->violations++;
        counters.violations++;
    }
    send_status(s, m->hdr.seq, status, ok);
}

void zkm_session_on_recv(struct zkm_session *s, int res)
{
    if (s->closing)
        return;
    if (res <= 0) {
        zkm_session_close(s, res < 0 && res != -ECONNRESET ? "socket error" : NULL);
        return;
    }
    /* fds come only with a REATTACH HELLO; any others are closed and make it an error */
    int fds[ZKM_SESSION_RX_FDS];
    unsigned n_fds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&s->rx_msg); cm; cm = CMSG_NXTHDR(&s->rx_msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            unsigned k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (unsigned i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (n_fds < ZKM_SESSION_RX_FDS)
                    fds[n_fds++] = fd;
                else
                    close(fd);
            }
        }
    }
    if (s->rx_msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        for (unsigned i = 0; i < n_fds; i++)
            close(fds[i]);
        protocol_error(s, "oversized message");
        return;
    }
    int err = zkm_msg_validate(s->rx_buf, (size_t)res, n_fds, s->version, 0);
    if (err) { /* the validator allows fds only on a REATTACH HELLO */
        for (unsigned i = 0; i < n_fds; i++)
            close(fds[i]);
        protocol_error(s, err == -EPROTONOSUPPORT ? "wrong protocol version"
                          : n_fds                 ? "unexpected file descriptors"
                                                  : "malformed message");
        return;
    }
    struct zkm_hdr h;
    memcpy(&h, s->rx_buf, sizeof(h));
    if ((h.type == ZKM_MSG_HELLO) != (s->version == 0)) {
        for (unsigned i = 0; i < n_fds; i++)
            close(fds[i]);
        protocol_error(s, s->version ? "second HELLO" : "request before HELLO");
        return;
    }
    switch (h.type) {
    case ZKM_MSG_HELLO:
        on_hello(s, (const struct zkm_msg_hello *)s->rx_buf, fds, n_fds);
        break;
    case ZKM_MSG_ACQUIRE:
    case ZKM_MSG_RELEASE:
        if (s->is_ctl) {
            protocol_error(s, "slab request on a zkmemctl session");
            return;
        }
        if (h.type == ZKM_MSG_ACQUIRE)
            on_acquire(s, (const struct zkm_msg_acquire *)s->rx_buf);
        else
            on_release(s, (const struct zkm_msg_release *)s->rx_buf);
        break;
    case ZKM_MSG_QUERY:
        zkm_query_handle(s, (const struct zkm_msg_query *)s->rx_buf);
        break;
    case ZKM_MSG_ADMIN:
        zkm_admin_handle(s, (const struct zkm_msg_admin *)s->rx_buf);
        break;
    default:
        protocol_error(s, "unexpected message type");
        return;
    }
    if (!s->closing)
        zkm_loop_arm_recv(s);
}

int zkm_session_holds(const struct zkm_session *s, uint32_t handle)
{
    uint32_t node = zkm_handle_node(handle), index = zkm_handle_index(handle);
    if (handle == ZKM_HANDLE_INVALID || node >= zkm_arena_count())
        return 0;
    const struct zkm_arena *a = zkm_arena_get(node);
    return index < a->max_slots && a->state[index] == ZKM_SLOT_HELD && a->owner[index] == s->id;
}

void zkm_session_info(const struct zkm_session *s, struct zkm_client_info *r)
{
    memset(r, 0, sizeof(*r));
    r->client_id = s->id;
    r->pid = s->pid;
    r->uid = s->uid;
    r->node = s->home;
    r->slabs = s->slabs;
    r->bytes_granted = s->slabs * zkm_arena_slab_size();
    r->refills = s->refills;
    r->waits = s->waits;
    r->returns = s->returns;
    r->violations = s->violations;
    struct zkm_observer_stats o;
    if (!s->is_ctl && zkm_observer_read(s->pid, &o) == 0) {
        r->page_faults = o.page_faults;
        r->page_faults_all = o.page_faults_all;
        for (uint32_t n = 0; n < ZKM_MAX_NODES; n++)
            if (n != s->home)
                r->remote_runs += o.runs_on_node[n];
    }
    if (s->ctrl) {
        /* client-published: read once, shown as is, never trusted for decisions */
        r->bytes_in_use = __atomic_load_n(&s->ctrl->stats.bytes_in_use, __ATOMIC_RELAXED);
        r->alloc_ops = __atomic_load_n(&s->ctrl->stats.alloc_ops, __ATOMIC_RELAXED);
        r->free_ops = __atomic_load_n(&s->ctrl->stats.free_ops, __ATOMIC_RELAXED);
        r->tcache_hits = __atomic_load_n(&s->ctrl->stats.tcache_hits, __ATOMIC_RELAXED);
        r->tcache_misses = __atomic_load_n(&s->ctrl->stats.tcache_misses, __ATOMIC_RELAXED);
        r->small_allocs = __atomic_load_n(&s->ctrl->stats.small_allocs, __ATOMIC_RELAXED);
        r->medium_allocs = __atomic_load_n(&s->ctrl->stats.medium_allocs, __ATOMIC_RELAXED);
        r->large_allocs = __atomic_load_n(&s->ctrl->stats.large_allocs, __ATOMIC_RELAXED);
        r->huge_allocs = __atomic_load_n(&s->ctrl->stats.huge_allocs, __ATOMIC_RELAXED);
        r->start_bytes = __atomic_load_n(&s->ctrl->stats.start_bytes, __ATOMIC_RELAXED);
    }
    memcpy(r->comm, s->comm, ZKM_COMM_LEN);
}

/* A stop keeps every lease (clients go on using their memory; the next daemon takes the
 * leases over from the state file). Only this daemon's own resources are released. */
void zkm_sessions_fini(void)
{
    while (sessions) {
        struct zkm_session *s = sessions;
        if (s->ctrl)
            munmap(s->ctrl, ZKM_CTRL_SIZE);
        if (s->dom)
            zkm_domain_put(s->dom);
        sessions = s->next;
        if (s->sock >= 0)
            close(s->sock);
        if (s->pidfd >= 0)
            close(s->pidfd);
        free(s);
    }
    n_sessions = 0;
    free(state_live);
    state_live = NULL;
}
