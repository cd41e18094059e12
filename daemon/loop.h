/* SPDX-License-Identifier: MIT */
/*
 * loop.h - the daemon's event loop on io_uring: accept, per-session recvmsg, pidfd polls,
 * doorbell futex waits, the background timer and signals, all as SQEs on one ring.
 */
#ifndef ZKMD_LOOP_H
#define ZKMD_LOOP_H

#include <stdint.h>

#include "session.h"

struct zkm_loop_hooks {
    void (*tick)(void);     /* every tick_ms */
    void (*reload)(void);   /* SIGHUP */
    void (*refuse)(int fd); /* a connection taken off the backlog for lack of descriptors */
    int (*backlog)(void);   /* deferred work, a slice per loop pass; 1 while some is left */
};

int zkm_loop_init(int listen_fd, uint64_t tick_ms, const struct zkm_loop_hooks *hooks);
void zkm_loop_fini(void);
/* Run until SIGTERM/SIGINT or zkm_loop_stop(). 0 or -errno. */
int zkm_loop_run(void);
void zkm_loop_stop(void);
void zkm_loop_set_tick(uint64_t tick_ms);

/* 1: IORING_OP_FUTEX_WAIT works here; 0: doorbells are looked at on the timer. */
int zkm_loop_futex_supported(void);

void zkm_loop_arm_recv(struct zkm_session *s);
void zkm_loop_arm_pidfd(struct zkm_session *s);
void zkm_loop_arm_futex(struct zkm_session *s, uint32_t expected);
void zkm_loop_cancel_session(struct zkm_session *s);

#endif
