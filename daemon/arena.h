/* SPDX-License-Identifier: MIT */
/*
 * arena.h - one arena per logical node: the slabs the daemon can grant there, who holds
 * each, and the domains (one per uid) whose memfds back them.
 */
#ifndef ZKMD_ARENA_H
#define ZKMD_ARENA_H

#include <stdint.h>
#include <sys/types.h>

#include "topology.h"
#include "zkm_config.h"
#include "zkm_proto.h"

/* A domain: the processes of one uid. Its memory is its own memfds (one per node); other
 * domains never get these fds. Slot i of a node's arena lives at offset i * slab_size of
 * the holder's domain memfd, so a slot index names memory for exactly one domain. */
/* Returned slots of one domain on one node whose pages are kept for reuse: a deque in
 * slot[] (capacity cap), newest at the back (reused first, warm), oldest at the front
 * (decayed first). since[] is when each entry was returned (ms, monotonic). */
struct zkm_slab_cache {
    uint32_t *slot;
    uint64_t *since;
    uint32_t front, n, cap;
};

struct zkm_domain {
    uid_t uid;
    uint32_t index; /* in the state file's domain table */
    int memfd[ZKM_MAX_NODES];
    char *map[ZKM_MAX_NODES]; /* daemon's mapping, for placement and pre-faulting */
    uint64_t granted_slabs;   /* budget accounting (cached slots do not count) */
    uint32_t sessions;
    struct zkm_slab_cache cache[ZKM_MAX_NODES];
};

struct zkm_arena {
    uint32_t node; /* logical */
    int phys;      /* kernel node */
    int simulated;
    uint32_t backing; /* enum zkm_backing */
    uint64_t slab_size;
    uint64_t max_slots; /* slots addressable in a domain memfd (its size / slab_size) */
    uint64_t capacity;  /* slots that may be granted (<= max_slots) */
    uint64_t cap_limit; /* the most zkm_arena_topup may grow capacity to */
    uint64_t granted;   /* slots held or pre-granted */
    uint64_t pregranted;
    uint32_t *free_stack; /* free slot indices < capacity */
    uint64_t n_free;
    /* per slot, in the state file: */
    uint8_t *state;  /* enum zkm_slot_state */
    uint32_t *owner; /* session id */
    uint16_t *dom;   /* domain index (whose memfd holds it) */
    uint64_t grants_total, returns_total, reclaimed_total, misplaced_pages, exhausted_total;
    uint64_t fallback_slabs;
    uint64_t cached; /* slots in state CACHED, over all domains */
    uint64_t cache_reuses_total, decayed_total, pressure_reclaims_total, remote_grants_total;
    uint64_t stray_pages_total;
};

int zkm_arenas_init(const struct zkm_config *cfg, const struct zkm_topology *topo, char *err,
                    size_t errlen);
void zkm_arenas_fini(void);
uint32_t zkm_arena_count(void);
struct zkm_arena *zkm_arena_get(uint32_t node);
const struct zkm_topology *zkm_arena_topology(void);
uint32_t zkm_arena_backing(void);
uint64_t zkm_arena_slab_size(void);
void zkm_arena_set_budget(uint64_t bytes);
uint64_t zkm_arena_budget(void);

/* The domain of `uid`, created (memfds per node, sealed) on first use. */
int zkm_domain_get(uid_t uid, struct zkm_domain **ret);
/* Drop a session's reference; the domain's memfds are closed when it has no sessions
 * and no granted slabs. */
void zkm_domain_put(struct zkm_domain *d);

/*
 * Grant one slot of arena `a` to session `owner` of domain `d`, in state `state`
 * (ZKM_SLOT_PREGRANTED or ZKM_SLOT_HELD): checks the domain budget (-EDQUOT); takes the
 * domain's newest cached slot on this node (*ret_zeroed = 0), else a free slot whose pages
 * it allocates and zeroes on the arena's node (*ret_zeroed = 1); when there is no free
 * slot it first punches another cached slot (the most idle domain's oldest); -ENOMEM when
 * none is left or the kernel pool ran dry (the slot goes back); verifies placement.
 */
int zkm_arena_grant(struct zkm_arena *a, struct zkm_domain *d, uint32_t owner, uint8_t state,
                    uint32_t *ret_index, int *ret_zeroed);

/*
 * Give slot `index` back. reclaimed = 0: a client returned it; with caching on it stays
 * CACHED for its domain (pages resident) until decay, else it is punched and FREE.
 * reclaimed = 1 (dead client, violation): always punched.
 */
void zkm_arena_free(struct zkm_arena *a, uint32_t index, int reclaimed);

/* Compaction settings: caching of returned slots on/off (off punches at once). */
void zkm_arena_set_caching(int enable);

/* Punch every cached slot returned at or before `older_than_ms` (all with UINT64_MAX);
 * returns how many. The background tick calls it with now - decay_ms. */
uint64_t zkm_arena_decay(uint64_t older_than_ms);

/* Free every slot `owner` holds on every arena; returns how many. */
uint64_t zkm_arena_reclaim_owner(uint32_t owner);

/* Recovery after a restart (see state.h). */
int zkm_arena_recovering(void);
void zkm_arena_recovery_start(uint64_t now_ms, uint64_t window_ms);
uint64_t zkm_arena_recovery_deadline(void);
void zkm_arena_recovery_end(void);
int zkm_domain_reattach(uint32_t index, uid_t uid, const int *fds, uint32_t n_fds,
                        struct zkm_domain **ret);
uint64_t zkm_arena_restore_owner(uint32_t old_id, uint32_t new_id);
uint64_t zkm_arena_release_stale(uint32_t owner);

/* Punch pages clients made outside their domain's slots (see arena.c); returns pages. */
uint64_t zkm_arena_audit(void);

/* A restarted daemon starts without the slots its predecessor had cached (their pages may
 * still be allocated in memfds that clients hold, until recovery punches them). Grow each
 * hugetlb arena back, by the free hugepages of its kernel node beyond what its own free
 * slots will need, up to cap_limit (never beyond what it had). Returns the slots added.
 * Run once a second. */
uint64_t zkm_arena_topup(void);

/* Grow capacity of a node by reserving more hugepages (admin `reserve`). */
int zkm_arena_reserve(uint32_t node, long pages, char *err, size_t errlen);

/* Fill an info record (zkmemctl arenas). */
void zkm_arena_info(uint32_t node, struct zkm_arena_info *ret);

#endif
