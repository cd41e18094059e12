/* SPDX-License-Identifier: MIT */
/*
 * tune.c - the per-client demand model and what it decides (see tune.h).
 */
#include "tune.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "arena.h"
#include "log.h"
#include "observer.h"
#include "session.h"

static struct zkm_tune_settings settings;
/* Per node: the most pre-granted slabs one client may have, a share of the arena (set
 * by the sessions' tick); UINT32_MAX until known. */
static uint32_t node_share[ZKM_MAX_NODES] = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX,
                                             UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX};

void zkm_tune_set_share(uint32_t node, uint32_t slabs)
{
    if (node < ZKM_MAX_NODES)
        node_share[node] = slabs ? slabs : 1;
}

void zkm_tune_apply_config(const struct zkm_config *cfg)
{
    settings.tuning = cfg->enable_tuning != 0;
    settings.compaction = cfg->enable_compaction != 0;
    settings.decay_ms = cfg->decay_ms;
    settings.grant_depth = (uint32_t)cfg->grant_depth;
    settings.tcache_small = (uint32_t)cfg->tcache_small;
    settings.tcache_medium = (uint32_t)cfg->tcache_medium;
}

const struct zkm_tune_settings *zkm_tune_settings(void)
{
    return &settings;
}

static uint32_t l2_cap_now(void)
{
    return settings.compaction ? ZKM_COMPACT_L2_CAP : 0;
}

void zkm_tune_init(struct zkm_session *s, uint64_t now_ms)
{
    struct zkm_tune *t = &s->tune;
    memset(t, 0, sizeof(*t));
    t->last_ms = t->second_ms = t->last_take_ms = t->born_ms = now_ms;
    t->young = 1;
    t->tcache_scale = 1;
    t->last_hit_pct = 100;
    t->busiest_node = s->home;
    for (uint32_t n = 0; n < ZKM_MAX_NODES; n++)
        s->ring[n].depth = settings.grant_depth;
    if (s->ctrl) {
        s->ctrl->tun.l2_cap = l2_cap_now();
        s->ctrl->drain.n = 0;
        s->ctrl->drain.gen = 0;
    }
}

/* ---- demand ----------------------------------------------------------------------------- */

static double ewma(double avg, double sample, uint64_t dt_ms, uint64_t half_life_ms)
{
    double keep = exp2(-(double)dt_ms / (double)half_life_ms);
    return avg * keep + sample * (1.0 - keep);
}

uint32_t zkm_tune_depth(const struct zkm_session *s, uint32_t node)
{
    const struct zkm_tune *t = &s->tune;
    if (!settings.tuning || settings.grant_depth == 0) /* 0: no pre-granting at all */
        return settings.grant_depth;
    double shrt = t->rate_short[node], lng = t->rate_long[node];
    double predicted = (shrt > lng ? shrt : lng) + (shrt > lng ? shrt - lng : 0.0);
    /* slabs needed over the lead time; a trickle under a tenth of a slab is no demand
     * (the averages decay towards zero but never reach it) */
    double need = predicted * ZKM_TUNE_LEAD_MS / 1000.0;
    if (t->burst[node] > need)
        need = t->burst[node];
    /* (a decayed burst a hair above a whole number of slabs needs that number) */
    double d = (need < 0.1 ? 0.0 : ceil(need - 0.05)) + 1.0 + t->boost;
    /* A few ticks of a new client say little about it (its start is often one burst), so
     * for its first decay_ms it keeps at least what tuning off gives everyone; only an
     * idle spell as long as that makes the model cut deeper. */
    if (t->young && d < (double)settings.grant_depth)
        d = (double)settings.grant_depth;
    uint32_t cap = ZKM_GRANT_CAP - 1; /* one slot of slack for a consumer mid-claim */
    if (node < ZKM_MAX_NODES && node_share[node] < cap)
        cap = node_share[node]; /* pre-grants of busy clients must not starve the others */
    return d >= cap ? cap : (uint32_t)d;
}

/* The burst memory of one node. Both figures decay; a record clearly above the last one
 * means bursts are growing, and the next is expected to grow as much again (bounded); a
 * burst like the last refreshes the memory without growth. */
static void update_burst(struct zkm_tune *t, uint32_t n, uint64_t taken, uint64_t now, uint64_t dt)
{
    if (!taken && now - t->last_take_ms >= settings.decay_ms) {
        t->peak[n] = t->burst[n] = 0.0;
        return;
    }
    double keep = exp2(-(double)dt / (double)ZKM_TUNE_BURST_MS);
    double peak = t->peak[n] * keep, x = (double)taken;
    t->burst[n] *= keep;
    if (x <= peak) {
        t->peak[n] = peak;
        return;
    }
    double growth = peak >= 1.0 ? x / peak : 1.0;
    if (growth < 1.25)
        growth = 1.0; /* the same bursts again */
    if (growth > ZKM_TUNE_GROWTH_MAX)
        growth = ZKM_TUNE_GROWTH_MAX;
    t->peak[n] = x;
    if (x * growth > t->burst[n])
        t->burst[n] = x * growth;
}

/* Whole slabs of start slabs (the client's own 4 KiB pages, PROTOCOL.md 4.8) taken since the
 * last look: demand the grant ring never saw, and the tuner must, or a client living on its
 * start slabs looks idle and finds a one-slab ring when they run out. Client-published, so
 * bounded: no more than ZKM_TUNE_START_MAX slabs' worth ever, and a counter that goes
 * backwards counts nothing. */
static uint64_t start_taken(struct zkm_session *s)
{
    struct zkm_tune *t = &s->tune;
    uint64_t slab = zkm_arena_slab_size();
    uint64_t b = __atomic_load_n(&s->ctrl->stats.start_bytes, __ATOMIC_RELAXED);
    if (b > ZKM_TUNE_START_MAX * slab)
        b = ZKM_TUNE_START_MAX * slab;
    if (b <= t->start_seen || !slab)
        return 0;
    uint64_t n = (b - t->start_seen) / slab;
    t->start_seen += n * slab;
    return n;
}

static int update_demand(struct zkm_session *s, uint64_t now, uint64_t dt)
{
    struct zkm_tune *t = &s->tune;
    int changed = 0;
    uint64_t started = start_taken(s);
    if (t->young && now - t->born_ms >= settings.decay_ms)
        t->young = 0;
    if (s->waits != t->waits_seen) {
        t->boost = t->boost ? t->boost * 2 : 2;
        if (t->boost > ZKM_GRANT_CAP)
            t->boost = ZKM_GRANT_CAP;
        t->waits_seen = s->waits;
    }
    for (uint32_t n = 0; n < zkm_arena_count(); n++) {
        uint64_t taken = s->ring[n].taken - t->taken_seen[n];
        t->taken_seen[n] = s->ring[n].taken;
        if (n == s->home)
            taken += started;
        if (taken)
            t->last_take_ms = now;
        double rate = (double)taken * 1000.0 / (double)dt;
        t->rate_short[n] = ewma(t->rate_short[n], rate, dt, ZKM_TUNE_SHORT_MS);
        t->rate_long[n] = ewma(t->rate_long[n], rate, dt, ZKM_TUNE_LONG_MS);
        update_burst(t, n, taken, now, dt);
        uint32_t depth = zkm_tune_depth(s, n);
        if (depth != s->ring[n].depth) {
            s->ring[n].depth = depth;
            __atomic_store_n(&s->ctrl->tun.grant_depth[n], depth, __ATOMIC_RELAXED);
            changed = 1;
        }
    }
    return changed;
}

/* ---- once a second: caches, compaction hints, placement, pattern history -------------------- */

static int update_caches(struct zkm_session *s)
{
    struct zkm_tune *t = &s->tune;
    uint64_t hits = __atomic_load_n(&s->ctrl->stats.tcache_hits, __ATOMIC_RELAXED);
    uint64_t misses = __atomic_load_n(&s->ctrl->stats.tcache_misses, __ATOMIC_RELAXED);
    uint64_t dh = hits - t->hits_seen, dm = misses - t->misses_seen;
    t->hits_seen = hits;
    t->misses_seen = misses;
    if (dh + dm < 10000 || dh + dm < dh) /* too little traffic, or a client that lied */
        return 0;
    t->last_hit_pct = (uint32_t)(dh * 100 / (dh + dm));
    if (!settings.tuning || dm * 50 <= dh + dm || t->tcache_scale >= 4)
        return 0;
    t->tcache_scale *= 2;
    __atomic_store_n(&s->ctrl->tun.tcache_cap[0], settings.tcache_small * t->tcache_scale,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&s->ctrl->tun.tcache_cap[1], settings.tcache_medium * t->tcache_scale,
                     __ATOMIC_RELAXED);
    return 1;
}

uint32_t zkm_tune_pick_drain(const uint32_t *handle, const uint16_t *used, uint32_t n,
                             uint64_t room, uint32_t slab_units, uint32_t *out)
{
    uint32_t idx[ZKM_OCC_MAX], m = 0;
    if (n > ZKM_OCC_MAX)
        n = ZKM_OCC_MAX;
    for (uint32_t i = 0; i < n; i++) { /* qualifying entries, by used units (insertion) */
        if (!used[i] || (uint32_t)used[i] * 4 >= slab_units)
            continue;
        uint32_t k = m++;
        for (; k > 0 && used[idx[k - 1]] > used[i]; k--)
            idx[k] = idx[k - 1];
        idx[k] = i;
    }
    uint64_t need = 0;
    uint32_t picked = 0;
    for (uint32_t k = 0; k < m; k++) {
        need += used[idx[k]];
        if (2 * need > room)
            break;
        out[picked++] = handle[idx[k]];
    }
    return picked >= 2 ? picked : 0;
}

/* Copy the client's occupancy table (seqlock); 0, or -EAGAIN when it was being rewritten
 * (the current list stays until the next second). Entries not valid for s are dropped. */
static int occupancy_read(struct zkm_session *s, uint32_t *hs, uint16_t *us, uint32_t *ret_n,
                          uint64_t *ret_room, uint32_t *ret_units)
{
    const struct zkm_occupancy *o = &s->ctrl->occ;
    uint32_t seq = __atomic_load_n(&o->seq, __ATOMIC_ACQUIRE);
    if (seq & 1)
        return -EAGAIN;
    uint32_t n = __atomic_load_n(&o->n, __ATOMIC_RELAXED);
    uint32_t room = __atomic_load_n(&o->room_units, __ATOMIC_RELAXED);
    uint32_t units = __atomic_load_n(&o->slab_units, __ATOMIC_RELAXED);
    uint32_t take = n > ZKM_OCC_MAX ? ZKM_OCC_MAX : n;
    for (uint32_t i = 0; i < take; i++) {
        hs[i] = __atomic_load_n(&o->handle[i], __ATOMIC_RELAXED);
        us[i] = __atomic_load_n(&o->used[i], __ATOMIC_RELAXED);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&o->seq, __ATOMIC_RELAXED) != seq)
        return -EAGAIN;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < take; i++) {
        if (units == 0 || us[i] > units || !zkm_session_holds(s, hs[i]))
            continue;
        hs[kept] = hs[i];
        us[kept++] = us[i];
    }
    s->tune.occ_rejected += (n - take) + (take - kept);
    *ret_n = kept;
    *ret_room = room;
    *ret_units = units;
    return 0;
}

/* The drain list from the client's occupancy (nothing with compaction off). */
static void update_drain(struct zkm_session *s)
{
    struct zkm_tune *t = &s->tune;
    uint32_t hs[ZKM_OCC_MAX], pick[ZKM_OCC_MAX], n = 0, units = 0;
    uint16_t us[ZKM_OCC_MAX];
    uint64_t room = 0;
    if (settings.compaction) {
        if (occupancy_read(s, hs, us, &n, &room, &units) != 0)
            return;
        n = zkm_tune_pick_drain(hs, us, n, room, units, pick);
    }
    if (n == t->drain_n && memcmp(pick, t->drain, n * sizeof(pick[0])) == 0)
        return;
    struct zkm_drain_list *d = &s->ctrl->drain;
    for (uint32_t i = 0; i < n; i++)
        __atomic_store_n(&d->handle[i], pick[i], __ATOMIC_RELAXED);
    __atomic_store_n(&d->n, n, __ATOMIC_RELAXED);
    __atomic_store_n(&d->gen, ++t->drain_gen, __ATOMIC_RELEASE);
    memcpy(t->drain, pick, n * sizeof(pick[0]));
    t->drain_n = n;
    t->drain_lists++;
    zkm_log(ZKM_LOG_DEBUG, "client %u: drain list of %u slabs (room %" PRIu64 " units)", s->id, n,
            room);
}

uint32_t zkm_tune_drain_now(struct zkm_session *s)
{
    update_drain(s);
    return s->tune.drain_n;
}

static int update_compaction_hints(struct zkm_session *s)
{
    update_drain(s);
    uint32_t l2 = l2_cap_now();
    if (__atomic_load_n(&s->ctrl->tun.l2_cap, __ATOMIC_RELAXED) != l2) {
        __atomic_store_n(&s->ctrl->tun.l2_cap, l2, __ATOMIC_RELAXED);
        return 1;
    }
    return 0;
}

static void update_placement(struct zkm_session *s)
{
    struct zkm_tune *t = &s->tune;
    struct zkm_observer_stats o;
    if (zkm_arena_count() < 2 || zkm_observer_read(s->pid, &o) != 0)
        return;
    uint64_t total = 0, best = 0, home = 0;
    uint32_t busiest = s->home;
    for (uint32_t n = 0; n < zkm_arena_count(); n++) {
        uint64_t d = o.runs_on_node[n] - t->runs_seen[n];
        t->runs_seen[n] = o.runs_on_node[n];
        total += d;
        if (d > best) {
            best = d;
            busiest = n;
        }
        if (n == s->home)
            home = d;
    }
    if (total < 20) /* too few runs to say */
        return;
    t->busiest_node = busiest;
    t->remote_pct = (uint32_t)((total - home) * 100 / total);
    if (settings.tuning && busiest != s->home && best * 4 >= total * 3) {
        s->home = busiest; /* new slabs (ACQUIRE ANY, and its ring) come from there */
        s->ring[busiest].active = 1;
        t->placement_moves++;
    }
}

static void sample_history(struct zkm_session *s)
{
    struct zkm_tune *t = &s->tune;
    struct zkm_tune_sample *x = &t->hist[t->hist_pos];
    x->bytes_in_use = __atomic_load_n(&s->ctrl->stats.bytes_in_use, __ATOMIC_RELAXED);
    x->allocs = __atomic_load_n(&s->ctrl->stats.alloc_ops, __ATOMIC_RELAXED);
    x->frees = __atomic_load_n(&s->ctrl->stats.free_ops, __ATOMIC_RELAXED);
    x->slabs = s->slabs;
    x->refills = s->refills;
    t->hist_pos = (t->hist_pos + 1) % ZKM_TUNE_HIST;
    if (t->hist_n < ZKM_TUNE_HIST)
        t->hist_n++;
}

void zkm_tune_session(struct zkm_session *s, uint64_t now)
{
    struct zkm_tune *t = &s->tune;
    uint64_t dt = now - t->last_ms;
    if (dt == 0)
        return;
    t->last_ms = now;
    int changed = update_demand(s, now, dt);
    if (now - t->second_ms >= 1000) {
        t->second_ms = now;
        if (t->boost)
            t->boost /= 2;
        changed |= update_caches(s);
        changed |= update_compaction_hints(s);
        update_placement(s);
        sample_history(s);
    }
    if (changed)
        __atomic_fetch_add(&s->ctrl->tun.gen, 1, __ATOMIC_RELEASE);
}

/* ---- advice ---------------------------------------------------------------------------------- */

static const struct zkm_tune_sample *hist_at(const struct zkm_tune *t, uint32_t i)
{
    /* i = 0 is the oldest sample kept */
    uint32_t start = (t->hist_pos + ZKM_TUNE_HIST - t->hist_n) % ZKM_TUNE_HIST;
    return &t->hist[(start + i) % ZKM_TUNE_HIST];
}

static void history_figures(const struct zkm_tune *t, struct zkm_advice_info *r)
{
    uint64_t sum_slabs = 0, sum_refills = 0;
    for (uint32_t i = 0; i < t->hist_n; i++) {
        const struct zkm_tune_sample *x = hist_at(t, i);
        sum_slabs += x->slabs;
        if (x->slabs > r->peak_slabs)
            r->peak_slabs = x->slabs;
        if (i == 0)
            continue;
        const struct zkm_tune_sample *p = hist_at(t, i - 1);
        uint64_t refills = x->refills - p->refills;
        sum_refills += refills;
        if (refills > r->peak_refills)
            r->peak_refills = refills;
        /* a change under 1% (or 64 KiB) is noise, not a rise or a fall */
        uint64_t slack = p->bytes_in_use / 100 > 65536 ? p->bytes_in_use / 100 : 65536;
        if (x->bytes_in_use > p->bytes_in_use + slack)
            r->rising_samples++;
        else if (x->bytes_in_use + slack < p->bytes_in_use)
            r->falling_samples++;
    }
    r->samples = t->hist_n;
    r->mean_slabs = t->hist_n ? sum_slabs / t->hist_n : 0;
    r->mean_refills_milli = t->hist_n > 1 ? sum_refills * 1000 / (t->hist_n - 1) : 0;
    if (t->hist_n > 1) {
        const struct zkm_tune_sample *first = hist_at(t, 0), *last = hist_at(t, t->hist_n - 1);
        r->bytes_first = first->bytes_in_use;
        r->frees_in_history = last->frees - first->frees;
        double per_min = ((double)last->bytes_in_use - (double)first->bytes_in_use) * 60.0 /
                         (double)(t->hist_n - 1);
        r->growth_per_min = (int64_t)per_min;
    }
}

static uint32_t classify(const struct zkm_tune *t, const struct zkm_advice_info *r)
{
    if (t->hist_n < 10)
        return ZKM_PATTERN_UNKNOWN;
    const struct zkm_tune_sample *last = hist_at(t, t->hist_n - 1);
    const struct zkm_tune_sample *ten = hist_at(t, t->hist_n - 10);
    if (last->allocs == ten->allocs)
        return ZKM_PATTERN_IDLE;
    uint64_t grew = r->bytes_in_use > r->bytes_first ? r->bytes_in_use - r->bytes_first : 0;
    if (grew * 5 > r->bytes_first && grew > (8u << 20))
        return r->falling_samples == 0 && r->frees_in_history > 0 ? ZKM_PATTERN_LEAKING
                                                                  : ZKM_PATTERN_GROWING;
    if (r->peak_refills >= 8 && r->peak_refills * 1000 >= 4 * r->mean_refills_milli)
        return ZKM_PATTERN_BURSTY;
    return ZKM_PATTERN_STEADY;
}

void zkm_tune_advice(const struct zkm_session *s, struct zkm_advice_info *r)
{
    const struct zkm_tune *t = &s->tune;
    memset(r, 0, sizeof(*r));
    r->client_id = s->id;
    r->pid = s->pid;
    if (s->ctrl)
        r->bytes_in_use = __atomic_load_n(&s->ctrl->stats.bytes_in_use, __ATOMIC_RELAXED);
    history_figures(t, r);
    if (t->hist_n)
        r->bytes_in_use = hist_at(t, t->hist_n - 1)->bytes_in_use;
    r->pattern = classify(t, r);
    r->slabs = s->slabs;
    r->waits = s->waits;
    r->refills = s->refills;
    r->home_node = s->home;
    r->busiest_node = t->busiest_node;
    r->remote_pct = t->remote_pct;
    r->placement_moves = t->placement_moves;
    r->grant_depth = s->ring[s->home].depth;
    r->tcache_scale = t->tcache_scale;
    r->tcache_hit_pct = t->last_hit_pct;
    r->tuning = (uint32_t)settings.tuning;
    r->budget_bytes = zkm_arena_budget();
}
