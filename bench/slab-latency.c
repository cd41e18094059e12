/* SPDX-License-Identifier: MIT */
/*
 * slab-latency.c - slab acquisition latency through the public slab API.
 *
 *   slab-latency [--socket PATH] [--iters N] [--hold N] [--node N] [--json]
 *
 * Connects to a running zkmemd (zkm_connect: --socket, else $ZKMEM_SOCKET, else the
 * default socket) and times zkm_slab_acquire and zkm_slab_release one call at a time
 * (rdtsc, see tsc.h). Each acquisition is classified by the connection's own counters
 * (zkm_conn_counters before and after, read outside the timed region): a ring pop
 * (pre-granted slab, no syscall) or a round trip (ACQUIRE message to the daemon).
 *
 * Two passes:
 *   pairs  N x (acquire; release): the steady state in which the daemon keeps the grant
 *          ring topped up, so almost every acquisition should be a ring pop;
 *   burst  N/hold x (acquire `hold` slabs without releasing, then release them all):
 *          with hold > grant_depth the ring runs dry and the later acquisitions are
 *          round trips (with grant_depth = 0 in the daemon's config, all of them are).
 *
 * Reported per pass and class: count, mean, p50, p99, p99.9 (ns) and calls per second of
 * time spent in them; per pass, grants/s = acquisitions / (time inside zkm_slab_acquire)
 * and the wall-clock rate of the whole pass (acquire + release + bookkeeping).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <zkmem/zkmem.h>

#include "tsc.h"

struct series {
    uint64_t *v;
    size_t n, cap;
};

static void series_init(struct series *s, size_t cap)
{
    s->v = mmap(NULL, cap * sizeof(uint64_t), PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (s->v == MAP_FAILED) {
        perror("slab-latency: mmap");
        exit(2);
    }
    s->n = 0;
    s->cap = cap;
}

static void series_add(struct series *s, uint64_t ticks)
{
    if (s->n < s->cap)
        s->v[s->n++] = ticks;
}

static double g_tpns;
static uint64_t g_ovh;
static int g_json;

/* per_sec: calls of this class per second of time spent inside them. */
static void report(const char *pass, const char *what, struct series *s)
{
    if (s->n == 0) {
        if (g_json)
            printf("{\"pass\":\"%s\",\"class\":\"%s\",\"n\":0}\n", pass, what);
        else
            printf("%-6s %-11s %9s\n", pass, what, "0");
        return;
    }
    double sum = 0, raw = 0;
    for (size_t i = 0; i < s->n; i++) {
        raw += (double)s->v[i];
        s->v[i] = s->v[i] > g_ovh ? s->v[i] - g_ovh : 0;
        sum += (double)s->v[i];
    }
    qsort(s->v, s->n, sizeof(uint64_t), tsc_cmp_u64);
#define P(q) ((double)s->v[(size_t)((double)(s->n - 1) * (q))] / g_tpns)
    double mean = sum / (double)s->n / g_tpns;
    double rate = (double)s->n / (raw / g_tpns * 1e-9);
    if (g_json)
        printf("{\"pass\":\"%s\",\"class\":\"%s\",\"n\":%zu,\"mean_ns\":%.1f,\"p50_ns\":%.1f,"
               "\"p99_ns\":%.1f,\"p999_ns\":%.1f,\"max_ns\":%.1f,\"per_sec\":%.0f}\n",
               pass, what, s->n, mean, P(0.5), P(0.99), P(0.999), P(1.0), rate);
    else
        printf("%-6s %-11s %9zu %10.0f %10.0f %10.0f %10.0f %12.0f\n", pass, what, s->n, mean,
               P(0.5), P(0.99), P(0.999), rate);
#undef P
}

static void die_err(const char *what, int err)
{
    fprintf(stderr, "slab-latency: %s: %s\n", what, strerror(-err));
    exit(1);
}

/* Failed acquisitions: counted and reported, not fatal (the figures still come out). */
static uint64_t g_errors;
static int g_first_error;

/* One timed acquisition, classified into pop or rt. Returns 0 or the API's -errno. */
static int timed_acquire(struct zkm_conn *c, int node, struct zkm_slab *ret, struct series *pop,
                         struct series *rt, uint64_t *busy)
{
    struct zkm_conn_counters a, b;
    zkm_conn_counters(c, &a);
    uint64_t t0 = tsc();
    int err = zkm_slab_acquire(c, node, ret);
    uint64_t t1 = tsc();
    if (err) {
        if (!g_errors++)
            g_first_error = err;
        if (err == -ENOTCONN)
            die_err("zkm_slab_acquire", err);
        return err;
    }
    zkm_conn_counters(c, &b);
    *busy += t1 - t0;
    if (b.round_trips != a.round_trips)
        series_add(rt, t1 - t0);
    else if (b.ring_pops != a.ring_pops)
        series_add(pop, t1 - t0);
    return 0;
}

static void timed_release(struct zkm_conn *c, const struct zkm_slab *s, struct series *rel)
{
    uint64_t t0 = tsc();
    int err = zkm_slab_release(c, s);
    uint64_t t1 = tsc();
    if (err)
        die_err("zkm_slab_release", err);
    series_add(rel, t1 - t0);
}

int main(int argc, char **argv)
{
    const char *sock = NULL;
    size_t iters = 100000, hold = 32;
    int node = ZKM_NODE_ANY;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            g_json = 1;
        else if (i + 1 < argc && strcmp(argv[i], "--socket") == 0)
            sock = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--iters") == 0)
            iters = strtoull(argv[++i], NULL, 0);
        else if (i + 1 < argc && strcmp(argv[i], "--hold") == 0)
            hold = strtoull(argv[++i], NULL, 0);
        else if (i + 1 < argc && strcmp(argv[i], "--node") == 0)
            node = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: slab-latency [--socket PATH] [--iters N] [--hold N] "
                            "[--node N] [--json]\n");
            return 2;
        }
    }
    if (iters < 1 || hold < 1 || hold > 4096) {
        fprintf(stderr, "slab-latency: --iters >= 1, 1 <= --hold <= 4096\n");
        return 2;
    }

    g_tpns = tsc_per_ns();
    g_ovh = tsc_overhead();
    struct zkm_conn *c;
    int err = zkm_connect(sock, &c);
    if (err) {
        fprintf(stderr,
                "slab-latency: zkm_connect(%s): %s (is zkmemd running? see "
                "bench/run-slab.sh)\n",
                sock ? sock : "$ZKMEM_SOCKET or default", strerror(-err));
        return 1;
    }
    if (!g_json) {
        printf("# nodes %d, slab size %zu KiB, tsc %.3f ticks/ns, timer overhead %" PRIu64
               " ticks subtracted\n",
               zkm_conn_nodes(c), zkm_conn_slab_size(c) >> 10, g_tpns, g_ovh);
        printf("%-6s %-11s %9s %10s %10s %10s %10s %12s\n", "pass", "class", "n", "mean_ns",
               "p50_ns", "p99_ns", "p99.9_ns", "per_sec");
    }

    struct series pop, rt, rel;
    struct zkm_slab s, *held = calloc(hold, sizeof(*held));
    if (!held)
        return 1;

    /* warm-up: first touch of the control block and the mappings' page tables */
    for (int i = 0; i < 64; i++) {
        if ((err = zkm_slab_acquire(c, node, &s)) || (err = zkm_slab_release(c, &s)))
            die_err("warm-up", err);
    }

    /* pass 1: acquire/release pairs */
    series_init(&pop, iters);
    series_init(&rt, iters);
    series_init(&rel, iters);
    uint64_t busy = 0;
    double w0 = now_s();
    for (size_t i = 0; i < iters; i++)
        if (timed_acquire(c, node, &s, &pop, &rt, &busy) == 0)
            timed_release(c, &s, &rel);
    double wall = now_s() - w0;
    double bsec = (double)busy / g_tpns * 1e-9;
    size_t ok = pop.n + rt.n;
    report("pairs", "ring_pop", &pop);
    report("pairs", "round_trip", &rt);
    report("pairs", "release", &rel);
    if (g_json)
        printf("{\"pass\":\"pairs\",\"acquisitions\":%zu,\"grants_per_sec\":%.0f,"
               "\"pairs_per_sec_wall\":%.0f}\n",
               ok, (double)ok / bsec, (double)ok / wall);
    else
        printf("pairs: %zu acquisitions, %.0f grants/s inside acquire, %.0f acquire+release "
               "pairs/s wall\n",
               ok, (double)ok / bsec, (double)ok / wall);

    /* pass 2: bursts of `hold` acquisitions that outrun the grant ring */
    size_t rounds = iters / hold ? iters / hold : 1;
    series_init(&pop, rounds * hold);
    series_init(&rt, rounds * hold);
    series_init(&rel, rounds * hold);
    busy = 0;
    w0 = now_s();
    for (size_t r = 0; r < rounds; r++) {
        size_t got = 0;
        for (size_t k = 0; k < hold; k++)
            if (timed_acquire(c, node, &held[got], &pop, &rt, &busy) == 0)
                got++;
        for (size_t k = 0; k < got; k++)
            timed_release(c, &held[k], &rel);
    }
    wall = now_s() - w0;
    bsec = (double)busy / g_tpns * 1e-9;
    size_t n = pop.n + rt.n;
    report("burst", "ring_pop", &pop);
    report("burst", "round_trip", &rt);
    report("burst", "release", &rel);
    struct zkm_conn_counters cc;
    zkm_conn_counters(c, &cc);
    if (g_json)
        printf("{\"pass\":\"burst\",\"hold\":%zu,\"acquisitions\":%zu,\"grants_per_sec\":%.0f,"
               "\"wall_per_sec\":%.0f,\"ring_pops\":%" PRIu64 ",\"round_trips\":%" PRIu64
               ",\"doorbell_wakes\":%" PRIu64 "}\n",
               hold, n, (double)n / bsec, (double)n / wall, cc.ring_pops, cc.round_trips,
               cc.doorbell_wakes);
    else
        printf("burst: hold %zu, %zu acquisitions, %.0f grants/s inside acquire, %.0f "
               "acquisitions/s wall; session totals: %" PRIu64 " ring pops, %" PRIu64
               " round trips, %" PRIu64 " doorbell wakes\n",
               hold, n, (double)n / bsec, (double)n / wall, cc.ring_pops, cc.round_trips,
               cc.doorbell_wakes);
    if (g_errors)
        fprintf(stderr, "slab-latency: %" PRIu64 " acquisitions failed, first with %s\n", g_errors,
                strerror(-g_first_error));
    zkm_disconnect(c);
    free(held);
    return g_errors ? 1 : 0;
}
