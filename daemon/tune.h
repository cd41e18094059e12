/* SPDX-License-Identifier: MIT */
/*
 * tune.h - the daemon's per-client demand model and the decisions it drives.
 *
 * Every tick the tuner looks at each client session:
 *   demand     slabs taken from each grant ring per second, as two exponentially
 *              weighted averages (half-lives ZKM_TUNE_SHORT_MS and ZKM_TUNE_LONG_MS);
 *              the prediction is max(short, long) plus the short trend (short - long
 *              when rising). The ring depth covers the prediction over ZKM_TUNE_LEAD_MS
 *              or the next burst, whichever is more, plus one, plus a boost that doubles
 *              whenever the client had to wait for a round trip and halves each second
 *              without one. The next burst: the most slabs taken in one interval lately
 *              (half-life ZKM_TUNE_BURST_MS), times the growth from the last record to
 *              the one before when bursts grow (at most ZKM_TUNE_GROWTH_MAX): a rate
 *              average spreads a burst over seconds and would pre-grant a fraction of it.
 *              A client that took nothing for decay_ms has no bursts to remember (its
 *              surplus pre-grants go back, see compaction).
 *   caches     the client's thread-cache hit rate per second; below 98% (with enough
 *              traffic to mean something) the small and medium caps double, up to 4x
 *              the configured value.
 *   compaction how much of its own L2 the client may keep (tun.l2_cap), and which of
 *              its slabs to drain: from the occupancy table the client publishes (its
 *              sparsest slabs, and the free units of the others), the sparsest slabs whose
 *              used units the others' free units can take twice over, when at least two
 *              qualify, go into its drain list (ctrl->drain). Handles the client does not
 *              hold are dropped and counted.
 *   placement  the observer's count of scheduler runs per node: when most runs of the
 *              last interval were on another node, that node becomes its home.
 *   pattern    one sample per second of live bytes, slabs, refills and operations (the
 *              last ZKM_TUNE_HIST seconds) classifies it as idle, steady, bursty,
 *              growing or leaking; `zkmemctl advise` turns this into advice.
 * Client-published numbers (stats) steer only that client's own tunables: a client that
 * lies hurts only itself. Nothing here allocates or makes a syscall except the observer
 * read.
 */
#ifndef ZKMD_TUNE_H
#define ZKMD_TUNE_H

#include <stdint.h>

#include "zkm_config.h"
#include "zkm_proto.h"

#define ZKM_TUNE_HIST       64   /* seconds of pattern history */
#define ZKM_TUNE_SHORT_MS   500  /* half-life of the short demand average */
#define ZKM_TUNE_LONG_MS    8000 /* half-life of the long demand average */
#define ZKM_TUNE_LEAD_MS    50   /* horizon the pre-granted depth must cover */
#define ZKM_TUNE_BURST_MS   8000 /* half-life of the remembered burst */
#define ZKM_TUNE_START_MAX  64   /* start slabs a client can have (start_slabs' maximum) */
#define ZKM_TUNE_GROWTH_MAX 2.0  /* largest growth from one burst to the next anticipated */
#define ZKM_COMPACT_L2_CAP  2    /* empty slabs a client keeps when the daemon caches for it */

struct zkm_session;

struct zkm_tune_sample {
    uint64_t bytes_in_use, slabs, refills, allocs, frees;
};

struct zkm_tune {
    uint64_t last_ms;   /* last model update */
    uint64_t second_ms; /* last once-a-second update */
    uint64_t taken_seen[ZKM_MAX_NODES];
    double rate_short[ZKM_MAX_NODES], rate_long[ZKM_MAX_NODES]; /* slabs per second */
    double peak[ZKM_MAX_NODES];  /* most slabs taken in one interval lately (decaying) */
    double burst[ZKM_MAX_NODES]; /* slabs the next burst is expected to take (decaying) */
    uint64_t waits_seen;
    uint64_t start_seen; /* the client's start_bytes counted as demand so far */
    uint64_t born_ms;    /* session start */
    int young;           /* younger than decay_ms: the depth stays >= grant_depth */
    uint32_t boost;
    uint64_t hits_seen, misses_seen;
    uint32_t tcache_scale; /* 1, 2 or 4 */
    uint32_t last_hit_pct;
    uint64_t runs_seen[ZKM_MAX_NODES];
    uint32_t remote_pct, busiest_node;
    uint32_t placement_moves;
    uint64_t last_take_ms; /* when the client last took a slab */
    struct zkm_tune_sample hist[ZKM_TUNE_HIST];
    uint32_t hist_n, hist_pos;
    /* the drain list as last written (the client's copy in its control block is not
     * trusted), and what the client's occupancy tables were worth */
    uint32_t drain[ZKM_OCC_MAX];
    uint32_t drain_n, drain_gen;
    uint64_t drain_lists;  /* lists written (changes) */
    uint64_t occ_rejected; /* table entries dropped: not a slab it holds, or out of range */
};

struct zkm_tune_settings {
    int tuning;     /* enable_tuning */
    int compaction; /* enable_compaction */
    uint32_t grant_depth;
    uint32_t tcache_small, tcache_medium;
    uint64_t decay_ms; /* idle this long: bursts forgotten */
};

void zkm_tune_apply_config(const struct zkm_config *cfg);
const struct zkm_tune_settings *zkm_tune_settings(void);

/* A new session: model empty, tunables as configured (written into its control block
 * before the client maps it). */
void zkm_tune_init(struct zkm_session *s, uint64_t now_ms);

/* One tick for one session: update the model, publish what changed (gen bumped once). */
void zkm_tune_session(struct zkm_session *s, uint64_t now_ms);

/* The compactor's choice (pure): from n slabs (handles, used units; any order) and the
 * client's free units in its other slabs, the slabs to drain, sparsest first, into out[]
 * (ZKM_OCC_MAX entries); returns how many. A slab qualifies when under a quarter of
 * slab_units is used; the sparsest are taken while the room covers twice their used
 * units; fewer than two qualifying slabs drain nothing. */
uint32_t zkm_tune_pick_drain(const uint32_t *handle, const uint16_t *used, uint32_t n,
                             uint64_t room, uint32_t slab_units, uint32_t *out);

/* The drain list from the client's table now (zkmemctl compact); returns its length. */
uint32_t zkm_tune_drain_now(struct zkm_session *s);

/* session.c: the client of s holds this slab handle (state HELD, owner s). */
int zkm_session_holds(const struct zkm_session *s, uint32_t handle);

/* The most pre-granted slabs a client may have on `node` (its share of the arena). */
void zkm_tune_set_share(uint32_t node, uint32_t slabs);

/* The pre-granted depth the session's ring on `node` should have now. */
uint32_t zkm_tune_depth(const struct zkm_session *s, uint32_t node);

/* The advice record of a session (QUERY ADVICE). */
void zkm_tune_advice(const struct zkm_session *s, struct zkm_advice_info *ret);

#endif
