/* SPDX-License-Identifier: MIT */
/*
 * session.h - one connected client (or zkmemctl) and its lease.
 */
#ifndef ZKMD_SESSION_H
#define ZKMD_SESSION_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "arena.h"
#include "tune.h"
#include "zkm_proto.h"

/* An operation in flight on the event loop; user_data points at it. */
enum zkm_op_kind {
    ZKM_OP_ACCEPT = 1,
    ZKM_OP_RECV,
    ZKM_OP_PIDFD,
    ZKM_OP_FUTEX,
    ZKM_OP_TIMER,
    ZKM_OP_SIGNAL,
    ZKM_OP_CANCEL
};
struct zkm_op {
    uint8_t kind;
    uint8_t armed;
    void *owner;
};

#define ZKM_SESSION_RX_FDS 8

struct zkm_session_ring {
    uint32_t tail; /* daemon's own: never read back from shared memory */
    uint32_t head; /* last validated client head */
    uint32_t shadow[ZKM_GRANT_CAP];
    uint32_t depth; /* pre-grant target */
    uint8_t active; /* the client draws from this node */
    uint64_t taken; /* entries the client consumed (not counting withdrawn ones) */
};

struct zkm_session {
    uint32_t id;
    uint32_t state_idx; /* 1 + index of its entry in the state file's session table; 0: none */
    pid_t pid;
    uid_t uid;
    gid_t gid;
    char comm[ZKM_COMM_LEN];
    int sock;
    int pidfd;
    uint16_t version; /* 0 until HELLO */
    uint8_t is_ctl;
    uint8_t is_admin;
    uint8_t closing;
    uint32_t inflight; /* ops armed on the loop; freed at 0 after closing */
    struct zkm_domain *dom;
    struct zkm_ctrl *ctrl; /* daemon's mapping of the control block */
    uint32_t home;
    struct zkm_session_ring ring[ZKM_MAX_NODES];
    uint32_t ret_head;
    uint32_t doorbell_seen;
    uint64_t slabs; /* held + pre-granted */
    uint64_t refills, waits, returns, violations, withdrawn;
    uint64_t withdraw_pass;  /* last zkm_sessions_withdraw pass that visited it */
    uint8_t refill_deferred; /* a ring is below depth after a bounded refill */
    struct zkm_tune tune;
    uint64_t connected_ms;
    uint64_t obs_base[ZKM_MAX_NODES]; /* client_node_base last given to the observer */

    struct zkm_op op_recv, op_pidfd, op_futex;
    struct msghdr rx_msg;
    struct iovec rx_iov;
    union {
        char buf[CMSG_SPACE(sizeof(int) * ZKM_SESSION_RX_FDS)];
        struct cmsghdr align;
    } rx_cmsg;
    _Alignas(8) char rx_buf[ZKM_MSG_MAX_SIZE];

    struct zkm_session *next, *prev;
};

int zkm_sessions_init(const struct zkm_config *cfg);
void zkm_sessions_fini(void);

/* Loop callbacks. */
void zkm_session_accept(int fd);
void zkm_session_on_recv(struct zkm_session *s, int res);
void zkm_session_on_pidfd(struct zkm_session *s, int res);
void zkm_session_on_futex(struct zkm_session *s, int res);
/* After the handler of a completed op ran (the loop cleared op->armed before calling it;
 * the handler may have re-armed it): frees a closing session whose last op this was. */
void zkm_session_op_done(struct zkm_session *s);
void zkm_sessions_tick(void);
/* Deferred work, run by the loop between completions: one more bounded refill of every
 * session whose rings are still below their depth. 1 while some is left. */
int zkm_sessions_backlog(void);

/* Take back pre-granted slabs on `node` from idle sessions other than `except` (the most
 * idle first) until `want` were withdrawn; returns how many. For memory pressure. */
uint32_t zkm_sessions_withdraw(uint32_t node, const struct zkm_session *except, uint32_t want);

/* A compaction pass now (zkmemctl compact): service every session, recompute its drain
 * list, withdraw idle surplus, give every cached slab back. Returns the slabs given back
 * to the node pools; the slabs in drain lists, and the clients with one, through ret_*. */
uint64_t zkm_sessions_compact(uint32_t *ret_drain_slabs, uint32_t *ret_drain_clients);

/* Runtime-changeable settings (SIGHUP reload, `tune set`). */
void zkm_sessions_apply_config(const struct zkm_config *cfg);

/* Iteration for queries. */
struct zkm_session *zkm_sessions_first(void);
uint32_t zkm_sessions_count(void);
void zkm_session_info(const struct zkm_session *s, struct zkm_client_info *ret);

struct zkm_daemon_counters {
    uint64_t clients_total, clients_rejected, protocol_errors, violations;
};
const struct zkm_daemon_counters *zkm_sessions_counters(void);
/* A connection refused before it became a session (the loop ran out of descriptors):
 * its queued HELLO, if any, gets -EMFILE; the fd is closed. */
void zkm_sessions_refuse_fd(int fd);

/* Send a reply on a session's socket (non-blocking; a client that does not read its
 * replies is disconnected). */
int zkm_session_send(struct zkm_session *s, const void *msg, size_t len, const int *fds,
                     unsigned n_fds);
void zkm_session_close(struct zkm_session *s, const char *reason);

#endif
