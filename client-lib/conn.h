/* SPDX-License-Identifier: MIT */
/* conn.h - the session with zkmemd, internals shared by conn.c and source.c. */
#ifndef ZKM_CLIENT_CONN_H
#define ZKM_CLIENT_CONN_H

#include <pthread.h>
#include <stdint.h>

#include <zkmem/zkmem.h>

#include "zkm_proto.h"

struct zkm_conn {
    int sock;
    uint16_t version;
    uint32_t client_id;
    uint32_t n_nodes;
    uint32_t n_cpus;
    uint32_t slab_size;
    uint32_t backing;
    uint32_t seq;         /* under lock */
    int dead;             /* the daemon is gone or spoke garbage; sticky */
    pthread_mutex_t lock; /* round trips and the return ring's producer side */
    struct zkm_ctrl *ctrl;
    char *node_base[ZKM_MAX_NODES];
    uint64_t node_bytes[ZKM_MAX_NODES];
    uint64_t node_slabs[ZKM_MAX_NODES];
    int node_fd[ZKM_MAX_NODES];    /* the domain's memfds: proof of membership on reattach */
    char path[108];                /* socket path, for reconnecting */
    uint64_t *held[ZKM_MAX_NODES]; /* bit per slab this session holds */
    size_t held_bytes[ZKM_MAX_NODES];
    uint64_t ring_pops, round_trips, releases, doorbell_wakes, reattaches;
    uint64_t next_reattach_ns; /* under lock */
    struct zkm_ctrl dead_ctrl; /* stands in for the control block after fork */
};

int zkm__conn_open_socket(const char *path, int *ret_sock);
int zkm__conn_holds(const struct zkm_conn *c, uint32_t node, uint32_t index);
void zkm__conn_lock(struct zkm_conn *c);
void zkm__conn_unlock(struct zkm_conn *c);
int zkm__conn_fork_child(struct zkm_conn *c);
/* The daemon went away (c->dead): join the daemon now at c->path, keeping this
 * session's memory and lease (see conn.c). 0 or -errno; -ESRCH: the daemon there does
 * not know this lease (the session cannot be continued). */
int zkm__conn_reattach(struct zkm_conn *c);

#endif
