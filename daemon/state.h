/* SPDX-License-Identifier: MIT */
/*
 * state.h - what survives a daemon restart: the lease table, in a file in the runtime dir.
 *
 * The arena's per-slot tables (state, owner session, owner domain), the domain table (uid
 * and the inode of each node memfd) and the session table (id, pid, uid) live in one
 * MAP_SHARED mapping of <runtime_dir>/zkmemd.state. The daemon updates them in place, so
 * they are on the (tmpfs) file the moment they change - a SIGKILL loses nothing. The
 * memory itself survives in the clients: their mappings keep the domain memfds alive.
 *
 * A new daemon that finds a matching state file recovers: slots that were granted stay
 * reserved; each surviving client reconnects with ZKM_HELLO_REATTACH, its old session id
 * and its node memfds (checked by inode against the table), and gets its lease back;
 * the domain's memfds are adopted from the first client that brings them. Sessions whose
 * process is gone, and everything not reclaimed by the end of the recovery window, are
 * released (punched where the memfd came back). See docs/ARCHITECTURE.md.
 */
#ifndef ZKMD_STATE_H
#define ZKMD_STATE_H

#include <stdint.h>
#include <sys/types.h>

#include "zkm_proto.h"

#define ZKM_STATE_MAX_DOMAINS 1024

struct zkm_state_domain {
    uint32_t in_use;
    uint32_t uid;
    uint64_t ino[ZKM_MAX_NODES]; /* memfd inode per node: proof a client brings the real one */
    uint64_t dev[ZKM_MAX_NODES];
};

struct zkm_state_session {
    uint32_t id; /* 0: free entry */
    int32_t pid;
    uint32_t uid;
    uint32_t domain;     /* index in the domain table */
    uint64_t start_time; /* the process's start time (clock ticks since boot): tells a live
                            client from a reused pid */
};

struct zkm_state_layout {
    uint64_t slab_size;
    uint32_t n_nodes;
    uint32_t max_sessions;
    uint32_t backing; /* enum zkm_backing */
    uint32_t pad;
    uint64_t max_slots[ZKM_MAX_NODES];
};

/*
 * Open <dir>/zkmemd.state. If it exists and its layout matches, keep its contents and set
 * *ret_recovered = 1; otherwise start a fresh, zeroed table. 0 or -errno (err: one line).
 */
int zkm_state_open(const char *dir, const struct zkm_state_layout *layout, int *ret_recovered,
                   char *err, size_t errlen);
/* The backing recorded by a previous daemon's state file in `dir`, or 0 if none. */
uint32_t zkm_state_peek_backing(const char *dir);
/* Clean stop with nothing leased: remove the file. Otherwise keep it for the next daemon. */
void zkm_state_close(int remove_file);

uint8_t *zkm_state_slot_state(uint32_t node);       /* [max_slots] enum zkm_slot_state */
uint32_t *zkm_state_slot_owner(uint32_t node);      /* [max_slots] session id */
uint16_t *zkm_state_slot_domain(uint32_t node);     /* [max_slots] domain index */
struct zkm_state_domain *zkm_state_domains(void);   /* [ZKM_STATE_MAX_DOMAINS] */
struct zkm_state_session *zkm_state_sessions(void); /* [max_sessions] */
uint32_t zkm_state_max_sessions(void);
/* Next session id, persisted so ids never repeat across restarts. */
uint32_t zkm_state_next_session_id(void);

#endif
