/* SPDX-License-Identifier: MIT */
/*
 * test-tune.c - the daemon's demand model (daemon/tune.c) driven by a simulated clock.
 *
 * A session with a real control block (heap memory) is fed what a client would do - slabs
 * taken from its ring, waits, published statistics - one tick at a time, and the test
 * checks what the tuner publishes: ring depth, thread-cache caps, compaction hints, and
 * the pattern behind `zkmemctl advise`. No daemon, no sleeping: time is an argument.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "observer.h"
#include "log.h"
#include "tune.h"

/* the arena and observer, as tune.c sees them */
uint32_t zkm_arena_count(void)
{
    return 1;
}
uint64_t zkm_arena_budget(void)
{
    return 0;
}
uint64_t zkm_arena_slab_size(void)
{
    return (uint64_t)2 << 20;
}
int zkm_observer_read(pid_t tgid, struct zkm_observer_stats *ret)
{
    (void)tgid;
    (void)ret;
    return -ENOENT;
}
/* session.c and log.c, as tune.c sees them: the client holds handles below 1000 */
int zkm_session_holds(const struct zkm_session *s, uint32_t handle)
{
    (void)s;
    return handle < 1000;
}
void zkm_log(int level, const char *fmt, ...)
{
    (void)level;
    (void)fmt;
}

static struct zkm_session *session_with(const struct zkm_config *cfg_in)
{
    struct zkm_config cfg = *cfg_in;
    zkm_tune_apply_config(&cfg);
    struct zkm_session *s = calloc(1, sizeof(*s));
    ck_assert_ptr_nonnull(s);
    s->ctrl = aligned_alloc(64, ZKM_CTRL_SIZE);
    ck_assert_ptr_nonnull(s->ctrl);
    memset(s->ctrl, 0, ZKM_CTRL_SIZE);
    s->ctrl->tun.tcache_cap[0] = (uint32_t)cfg.tcache_small;
    s->ctrl->tun.tcache_cap[1] = (uint32_t)cfg.tcache_medium;
    s->id = 7;
    s->pid = 4242;
    zkm_tune_init(s, 1000);
    return s;
}

static struct zkm_session *session_new(const char *extra)
{
    struct zkm_config cfg;
    char err[256];
    zkm_config_defaults(&cfg);
    if (extra)
        ck_assert_int_eq(zkm_config_parse_text(&cfg, extra, "test", 1, err, sizeof(err)), 0);
    return session_with(&cfg);
}

static void session_free(struct zkm_session *s)
{
    free(s->ctrl);
    free(s);
}

/* Advance the clock by `ms` in 50 ms ticks; the client takes `per_tick` slabs each tick. */
static uint64_t run(struct zkm_session *s, uint64_t now, uint64_t ms, uint32_t per_tick)
{
    for (uint64_t t = 0; t < ms; t += 50) {
        now += 50;
        s->ring[0].taken += per_tick;
        s->refills += per_tick;
        zkm_tune_session(s, now);
    }
    return now;
}

START_TEST(depth_follows_demand)
{
    struct zkm_session *s = session_new("grant_depth = 4\n");
    ck_assert_uint_eq(s->ring[0].depth, 4); /* as configured until the model has data */
    uint32_t gen = s->ctrl->tun.gen;
    uint64_t now = run(s, 1000, 950, 0);
    ck_assert_uint_eq(zkm_tune_depth(s, 0), 4); /* young (decay_ms): not below the config */
    now = run(s, now, 50, 0);
    ck_assert_uint_eq(zkm_tune_depth(s, 0), 1); /* no demand: one slab ready */
    ck_assert_uint_eq(s->ctrl->tun.grant_depth[0], 1);
    ck_assert_uint_ne(s->ctrl->tun.gen, gen); /* published */

    /* 400 slabs/s (20 per 50 ms tick): the ring must cover 50 ms of it */
    now = run(s, now, 3000, 20);
    ck_assert_uint_ge(s->ring[0].depth, 21);
    ck_assert_uint_le(s->ring[0].depth, 63);
    ck_assert_uint_eq(s->ctrl->tun.grant_depth[0], s->ring[0].depth);

    /* idle again: the short average forgets in seconds, the long one within a minute */
    now = run(s, now, 60000, 0);
    ck_assert_uint_eq(s->ring[0].depth, 1);
    session_free(s);
}
END_TEST

/* One interval in which the client took `n` slabs at once, then `idle_ms` without any. */
static uint64_t burst(struct zkm_session *s, uint64_t now, uint32_t n, uint64_t idle_ms)
{
    now += 50;
    s->ring[0].taken += n;
    s->refills += n;
    zkm_tune_session(s, now);
    return run(s, now, idle_ms, 0);
}

/* Bursts are remembered between them (a rate average would spread one over seconds), a
 * growing series is met by a ring as large as the next one, a repeating one is not
 * inflated, and an idle client forgets them. */
START_TEST(depth_anticipates_bursts)
{
    struct zkm_session *s = session_new("grant_depth = 4\ndecay_ms = 1000\n");
    uint64_t now = run(s, 1000, 1000, 0);
    ck_assert_uint_eq(s->ring[0].depth, 1);
    now = burst(s, now, 4, 450);
    ck_assert_uint_ge(s->ring[0].depth, 4 + 1); /* the same again fits */
    now = burst(s, now, 8, 450);                /* doubled: the next is expected at 16 */
    ck_assert_uint_ge(s->ring[0].depth, 16 + 1);
    ck_assert_uint_le(s->ring[0].depth, 16 + 2);
    now = burst(s, now, 16, 450); /* expected 32, decayed by 450 ms of its 8 s half-life */
    ck_assert_uint_ge(s->ring[0].depth, 31 + 1);
    ck_assert_uint_le(s->ring[0].depth, 32 + 2);
    session_free(s);

    s = session_new("grant_depth = 4\ndecay_ms = 1000\n");
    now = run(s, 1000, 1000, 0);
    for (int i = 0; i < 10; i++)
        now = burst(s, now, 8, 450);
    ck_assert_uint_ge(s->ring[0].depth, 8 + 1);
    ck_assert_uint_le(s->ring[0].depth, 8 + 2); /* not doubled: these do not grow */
    now = run(s, now, 1000, 0);                 /* idle for decay_ms */
    ck_assert_uint_le(s->ring[0].depth, 2);
    session_free(s);
}
END_TEST

/* Start slabs (the client's own pages, counted in its start_bytes) are demand: a client
 * that took four of them in one interval gets a ring for four more, as if it had taken
 * them from the ring; a partial slab waits for the rest; a lying counter is bounded and one
 * that goes backwards counts nothing. */
START_TEST(start_slabs_count_as_demand)
{
    struct zkm_session *s = session_new("grant_depth = 4\n");
    uint64_t now = run(s, 1000, 1000, 0);
    ck_assert_uint_eq(s->ring[0].depth, 1); /* nothing taken from the ring or elsewhere */
    s->ctrl->stats.start_bytes = 4 * ((uint64_t)2 << 20) + 4096;
    now = run(s, now, 50, 0);
    ck_assert_uint_ge(s->ring[0].depth, 4 + 1);
    ck_assert_uint_le(s->ring[0].depth, 4 + 2);
    ck_assert_uint_eq(s->tune.start_seen, 4 * ((uint64_t)2 << 20));
    s->ctrl->stats.start_bytes = 1; /* backwards: nothing */
    now = run(s, now, 50, 0);
    ck_assert_uint_eq(s->tune.start_seen, 4 * ((uint64_t)2 << 20));
    session_free(s);

    s = session_new("grant_depth = 4\n");
    s->ctrl->stats.start_bytes = UINT64_MAX; /* a hostile client: 64 slabs at most */
    now = run(s, 1000, 50, 0);
    ck_assert_uint_eq(s->tune.start_seen, ZKM_TUNE_START_MAX * ((uint64_t)2 << 20));
    ck_assert_uint_le(s->ring[0].depth, ZKM_GRANT_CAP - 1);
    s->ctrl->stats.start_bytes = 0;
    now = run(s, now, 60000, 0);
    ck_assert_uint_eq(s->ring[0].depth, 1); /* and forgotten like any burst */
    session_free(s);
}
END_TEST

START_TEST(waits_boost_depth)
{
    struct zkm_session *s = session_new("grant_depth = 2\n");
    uint64_t now = run(s, 1000, 1000, 0);
    ck_assert_uint_eq(s->ring[0].depth, 1);
    s->waits += 3; /* the client had to ask by round trip */
    now = run(s, now, 50, 0);
    ck_assert_uint_ge(s->ring[0].depth, 3);
    s->waits += 1;
    now = run(s, now, 50, 0);
    ck_assert_uint_ge(s->ring[0].depth, 5); /* doubles on every interval with waits */
    now = run(s, now, 8000, 0);             /* halves every second without */
    ck_assert_uint_eq(s->ring[0].depth, 1);
    session_free(s);
}
END_TEST

START_TEST(tuning_off_keeps_config)
{
    struct zkm_session *s = session_new("grant_depth = 6\nenable_tuning = no\n");
    uint64_t now = run(s, 1000, 2000, 20);
    s->waits += 5;
    now = run(s, now, 2000, 0);
    ck_assert_uint_eq(s->ring[0].depth, 6);
    ck_assert_uint_eq(zkm_tune_depth(s, 0), 6);
    session_free(s);
}
END_TEST

START_TEST(tcache_caps_grow_on_misses)
{
    struct zkm_config cfg;
    zkm_config_defaults(&cfg);
    cfg.tcache_small = 100; /* client keys: the daemon passes its defaults on */
    cfg.tcache_medium = 10;
    struct zkm_session *s = session_with(&cfg);
    struct zkm_client_stats *st = &s->ctrl->stats;
    uint64_t now = 1000;
    /* 99.5% hits: nothing changes */
    st->tcache_hits += 199000;
    st->tcache_misses += 1000;
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->tun.tcache_cap[0], 100);
    /* 90% hits: caps double each second, up to 4x */
    for (int i = 0; i < 4; i++) {
        st->tcache_hits += 90000;
        st->tcache_misses += 10000;
        now = run(s, now, 1000, 0);
    }
    ck_assert_uint_eq(s->ctrl->tun.tcache_cap[0], 400);
    ck_assert_uint_eq(s->ctrl->tun.tcache_cap[1], 40);
    /* a client publishing nonsense (counters going backwards) changes nothing */
    st->tcache_misses -= 5000;
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->tun.tcache_cap[0], 400);
    session_free(s);
}
END_TEST

/* What a client publishes: n slabs (handles h[], used units u[]) and its room elsewhere. */
static void occ_publish(struct zkm_session *s, const uint32_t *h, const uint16_t *u, uint32_t n,
                        uint32_t room)
{
    struct zkm_occupancy *o = &s->ctrl->occ;
    o->seq++;
    o->n = n;
    o->room_units = room;
    o->slab_units = 127;
    for (uint32_t i = 0; i < n && i < ZKM_OCC_MAX; i++) {
        o->handle[i] = h[i];
        o->used[i] = u[i];
    }
    o->seq++;
}

START_TEST(compaction_hints)
{
    struct zkm_session *s = session_new(NULL);
    ck_assert_uint_eq(s->ctrl->tun.l2_cap, ZKM_COMPACT_L2_CAP);
    /* sparsest first while the room covers twice their used units: 1, 2, 3 (2 x 6 <= 13);
     * 40 of 127 is not sparse; 5000 is not the client's */
    static const uint32_t h[] = {1, 2, 3, 4, 5, 6, 5000};
    static const uint16_t u[] = {2, 3, 5, 40, 10, 1, 1};
    occ_publish(s, h, u, 7, 13);
    uint64_t now = run(s, 1000, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.gen, 1);
    ck_assert_uint_eq(s->ctrl->drain.n, 3);
    ck_assert_uint_eq(s->ctrl->drain.handle[0], 6);
    ck_assert_uint_eq(s->ctrl->drain.handle[1], 1);
    ck_assert_uint_eq(s->ctrl->drain.handle[2], 2);
    ck_assert_uint_eq(s->tune.occ_rejected, 1);
    /* the same table: the list stands, gen unchanged */
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.gen, 1);
    /* a table being rewritten (odd seq) is not read: the list stands */
    s->ctrl->occ.seq++;
    s->ctrl->occ.room_units = 1000;
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.gen, 1);
    ck_assert_uint_eq(s->ctrl->drain.n, 3);
    s->ctrl->occ.seq++;
    /* more room: every sparse slab (1, 2, 3, 5, 10 used) */
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.gen, 2);
    ck_assert_uint_eq(s->ctrl->drain.n, 5);
    /* room for one slab only: draining one is not worth it, the list empties */
    occ_publish(s, h, u, 7, 2);
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.gen, 3);
    ck_assert_uint_eq(s->ctrl->drain.n, 0);
    /* a hostile table: a count past the table, used units past a slab; only the in-range
     * entries of held handles count, and the daemon never reads past ZKM_OCC_MAX */
    occ_publish(s, h, u, 7, 1000);
    s->ctrl->occ.n = 1u << 30;
    s->ctrl->occ.used[1] = 60000;
    uint64_t rejected = s->tune.occ_rejected;
    now = run(s, now, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.n, 4); /* 6, 1, 3, 5: handle 2 dropped */
    ck_assert_uint_eq(s->tune.occ_rejected, rejected + ((1u << 30) - ZKM_OCC_MAX) + 2);
    session_free(s);

    s = session_new("enable_compaction = no\n");
    ck_assert_uint_eq(s->ctrl->tun.l2_cap, 0); /* the client's own default */
    occ_publish(s, h, u, 7, 1000);
    run(s, 1000, 1000, 0);
    ck_assert_uint_eq(s->ctrl->drain.n, 0);
    ck_assert_uint_eq(s->ctrl->drain.gen, 0);
    session_free(s);
}
END_TEST

START_TEST(pick_drain)
{
    uint32_t out[ZKM_OCC_MAX];
    static const uint32_t h[] = {10, 11, 12, 13};
    static const uint16_t u[] = {31, 32, 0, 30}; /* 31 * 4 < 127 qualifies, 32 does not */
    ck_assert_uint_eq(zkm_tune_pick_drain(h, u, 4, 1000, 127, out), 2);
    ck_assert_uint_eq(out[0], 13);
    ck_assert_uint_eq(out[1], 10);
    ck_assert_uint_eq(zkm_tune_pick_drain(h, u, 4, 121, 127, out), 0); /* 2 x 61 > 121 */
    ck_assert_uint_eq(zkm_tune_pick_drain(h, u, 4, 122, 127, out), 2);
    ck_assert_uint_eq(zkm_tune_pick_drain(h, u, 0, 1000, 127, out), 0);
}
END_TEST

/* One simulated second: publish live bytes and operation counters, take `refills`. */
static uint64_t second(struct zkm_session *s, uint64_t now, uint64_t bytes, uint64_t allocs,
                       uint64_t frees, uint32_t refills)
{
    s->ctrl->stats.bytes_in_use = bytes;
    s->ctrl->stats.alloc_ops += allocs;
    s->ctrl->stats.free_ops += frees;
    s->slabs += refills;
    s->ring[0].taken += refills;
    s->refills += refills;
    now += 1000;
    zkm_tune_session(s, now);
    return now;
}

static struct zkm_advice_info advise(struct zkm_session *s)
{
    struct zkm_advice_info a;
    zkm_tune_advice(s, &a);
    ck_assert_uint_eq(a.client_id, 7);
    ck_assert_int_eq(a.pid, 4242);
    return a;
}

START_TEST(pattern_needs_history)
{
    struct zkm_session *s = session_new(NULL);
    uint64_t now = 1000;
    for (int i = 0; i < 5; i++)
        now = second(s, now, 1 << 20, 100, 100, 0);
    ck_assert_uint_eq(advise(s).pattern, ZKM_PATTERN_UNKNOWN);
    ck_assert_uint_eq(advise(s).samples, 5);
    session_free(s);
}
END_TEST

START_TEST(pattern_steady_and_idle)
{
    struct zkm_session *s = session_new(NULL);
    uint64_t now = 1000;
    for (int i = 0; i < 20; i++)
        now = second(s, now, (64u << 20) + (i % 2) * 4096, 100000, 100000, 1);
    struct zkm_advice_info a = advise(s);
    ck_assert_uint_eq(a.pattern, ZKM_PATTERN_STEADY);
    ck_assert_uint_eq(a.rising_samples + a.falling_samples, 0); /* 4 KiB wobble is noise */
    for (int i = 0; i < 12; i++)
        now = second(s, now, 64u << 20, 0, 0, 0);
    ck_assert_uint_eq(advise(s).pattern, ZKM_PATTERN_IDLE);
    session_free(s);
}
END_TEST

START_TEST(pattern_growing_and_leaking)
{
    /* rises by 4 MiB a second, never falls, keeps freeing: leaking */
    struct zkm_session *s = session_new(NULL);
    uint64_t now = 1000;
    for (int i = 0; i < 30; i++)
        now = second(s, now, (32ull << 20) + (uint64_t)i * (4u << 20), 50000, 40000, 2);
    struct zkm_advice_info a = advise(s);
    ck_assert_uint_eq(a.pattern, ZKM_PATTERN_LEAKING);
    ck_assert_uint_eq(a.rising_samples, 29);
    ck_assert_uint_eq(a.falling_samples, 0);
    ck_assert_int_eq(a.growth_per_min, 240ll << 20); /* 4 MiB/s */
    ck_assert_uint_eq(a.bytes_first, 32u << 20);
    ck_assert_uint_gt(a.frees_in_history, 0);
    session_free(s);

    /* the same growth with a fall every fifth second: growing */
    s = session_new(NULL);
    now = 1000;
    for (int i = 0; i < 30; i++) {
        uint64_t b = (32ull << 20) + (uint64_t)i * (4u << 20) - (i % 5 == 4 ? (6u << 20) : 0);
        now = second(s, now, b, 50000, 40000, 2);
    }
    a = advise(s);
    ck_assert_uint_eq(a.pattern, ZKM_PATTERN_GROWING);
    ck_assert_uint_gt(a.falling_samples, 0);
    session_free(s);
}
END_TEST

START_TEST(pattern_bursty)
{
    struct zkm_session *s = session_new(NULL);
    uint64_t now = 1000;
    for (int i = 0; i < 30; i++)
        now = second(s, now, 100u << 20, 100000, 100000, i % 10 == 0 ? 40 : 1);
    struct zkm_advice_info a = advise(s);
    ck_assert_uint_eq(a.pattern, ZKM_PATTERN_BURSTY);
    ck_assert_uint_eq(a.peak_refills, 40);
    ck_assert_uint_lt(a.mean_refills_milli, 10000);
    session_free(s);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("tune");
    TCase *t = tcase_create("model");
    tcase_add_test(t, depth_follows_demand);
    tcase_add_test(t, waits_boost_depth);
    tcase_add_test(t, start_slabs_count_as_demand);
    tcase_add_test(t, depth_anticipates_bursts);
    tcase_add_test(t, tuning_off_keeps_config);
    tcase_add_test(t, tcache_caps_grow_on_misses);
    tcase_add_test(t, compaction_hints);
    tcase_add_test(t, pick_drain);
    tcase_add_test(t, pattern_needs_history);
    tcase_add_test(t, pattern_steady_and_idle);
    tcase_add_test(t, pattern_growing_and_leaking);
    tcase_add_test(t, pattern_bursty);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
