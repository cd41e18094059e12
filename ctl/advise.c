/* SPDX-License-Identifier: MIT */
/*
 * advise.c - `zkmemctl advise`: the tuner's per-client figures (ZKM_QUERY_ADVICE, computed
 * in daemon/tune.c) worded as a pattern, its evidence, and recommendations that each carry
 * the number behind them.
 *
 * 1. Inputs. One struct zkm_advice_info per client session, joined by client_id with its
 *    zkm_client_info (comm, bytes granted), with the arena of its home node (slab size,
 *    free slabs, backing) and with three keys of the daemon's effective configuration
 *    (enable_compaction, decay_ms, mode). A missing join or key is not an error: the line
 *    that needs it is left out or says "if it is not".
 *
 * 2. Rules. advise_words() is a pure function of those inputs: one evidence line for the
 *    pattern, then the pattern's recommendations, then the checks every client gets (thread
 *    cache, placement, round trips; the reasons to turn enable_tuning on are gathered into
 *    one line). zkmemctl(8) lists the rules; tests/test-ctl.c checks each one.
 *
 * 3. Arithmetic. Budgets and hugepage counts are integers rounded up, computed without
 *    overflow (a record is daemon data, not trusted to be sane); MiB figures are printed
 *    with one decimal. History spans `samples - 1` seconds: samples are taken once a second
 *    and rises and falls are counted between consecutive ones.
 */
#include "ctl.h"
#include "zkm_config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MIB_BYTES     (1u << 20)
#define HUGEPAGE_SIZE (2u << 20)
#define ADVICE_LINE   320
#define ADVICE_MAX    8

/* The wording of one client: evidence and recommendations. */
struct advice_words {
    char evidence[ADVICE_LINE];
    char line[ADVICE_MAX][ADVICE_LINE];
    size_t n;
    char tuning_why[ADVICE_LINE]; /* reasons for enable_tuning = yes, "; "-separated */
};

/* What one client's advice rests on (see 1. above). */
struct advice_subject {
    const struct zkm_advice_info *rec;
    const struct zkm_client_info *client; /* NULL: not in the CLIENTS answer */
    const struct zkm_arena_info *home;    /* NULL: no arena for home_node */
};

static const char *const pattern_names[] = {
    [ZKM_PATTERN_UNKNOWN] = "unknown", [ZKM_PATTERN_IDLE] = "idle",
    [ZKM_PATTERN_STEADY] = "steady",   [ZKM_PATTERN_BURSTY] = "bursty",
    [ZKM_PATTERN_GROWING] = "growing", [ZKM_PATTERN_LEAKING] = "leaking",
};

const char *advice_pattern_name(uint32_t pattern)
{
    return pattern < sizeof(pattern_names) / sizeof(pattern_names[0]) ? pattern_names[pattern]
                                                                      : NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Numbers                                                                               */

static double mib(uint64_t bytes)
{
    return (double)bytes / MIB_BYTES;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

/* ceil(bytes / unit) without overflow. */
static uint64_t div_up(uint64_t bytes, uint64_t unit)
{
    return bytes / unit + (bytes % unit != 0);
}

/* "50 s", "3.8 min", "42 min", "5.5 h" for a time given in minutes. */
static void fmt_minutes(char *buf, size_t len, double minutes)
{
    if (minutes < 1.0)
        snprintf(buf, len, "%.0f s", minutes * 60.0);
    else if (minutes < 10.0)
        snprintf(buf, len, "%.1f min", minutes);
    else if (minutes < 120.0)
        snprintf(buf, len, "%.0f min", minutes);
    else
        snprintf(buf, len, "%.1f h", minutes / 60.0);
}

/* Up to two decimals, trailing zeros dropped: 2.5, 0.25, 3. */
static void fmt_short(char *buf, size_t len, double x)
{
    snprintf(buf, len, "%.2f", x);
    char *dot = strchr(buf, '.');
    if (!dot)
        return;
    char *end = buf + strlen(buf);
    while (end > dot + 1 && end[-1] == '0')
        *--end = '\0';
    if (end == dot + 1)
        *dot = '\0';
}

static uint32_t span_s(const struct zkm_advice_info *a)
{
    return a->samples > 1 ? a->samples - 1 : 0;
}

static double growth_mib_min(const struct zkm_advice_info *a)
{
    return (double)a->growth_per_min / MIB_BYTES;
}

/* ------------------------------------------------------------------------------------ */
/* Lines                                                                                 */

__attribute__((format(printf, 2, 3))) static void add_line(struct advice_words *w, const char *fmt,
                                                           ...)
{
    va_list ap;
    if (w->n == ADVICE_MAX)
        return;
    va_start(ap, fmt);
    vsnprintf(w->line[w->n++], ADVICE_LINE, fmt, ap);
    va_end(ap);
}

static void add_tuning_reason(struct advice_words *w, const char *reason)
{
    size_t l = strlen(w->tuning_why);
    snprintf(w->tuning_why + l, sizeof(w->tuning_why) - l, "%s%s", l ? "; " : "", reason);
}

/* "24.0 MiB (12 slabs)", or "12 slabs" when the slab size is unknown. */
static void fmt_held(char *buf, size_t len, uint64_t slabs, const struct zkm_arena_info *home)
{
    if (home && home->slab_size)
        snprintf(buf, len, "%.1f MiB (%" PRIu64 " slabs)", mib(sat_mul(slabs, home->slab_size)),
                 slabs);
    else
        snprintf(buf, len, "%" PRIu64 " slabs", slabs);
}

/* "live bytes 120.0 MiB -> 310.5 MiB over 59 s (+190.0 MiB/min)" */
static void fmt_growth(char *buf, size_t len, const struct zkm_advice_info *a)
{
    snprintf(buf, len, "live bytes %.1f MiB -> %.1f MiB over %" PRIu32 " s (%+.1f MiB/min)",
             mib(a->bytes_first), mib(a->bytes_in_use), span_s(a), growth_mib_min(a));
}

/* ------------------------------------------------------------------------------------ */
/* Pattern rules                                                                         */

/* With a budget already set: when the live bytes reach it. */
static void budget_reach(struct advice_words *w, const struct zkm_advice_info *a)
{
    uint64_t budget_mib = a->budget_bytes / MIB_BYTES;
    char when[32];
    if (a->bytes_in_use >= a->budget_bytes) {
        add_line(w,
                 "its live bytes (%.1f MiB) have reached the budget of %" PRIu64
                 " MiB: grants to its uid stop there",
                 mib(a->bytes_in_use), budget_mib);
        return;
    }
    if (a->growth_per_min <= 0)
        return;
    fmt_minutes(when, sizeof(when),
                (double)(a->budget_bytes - a->bytes_in_use) / (double)a->growth_per_min);
    add_line(w, "at %.1f MiB/min it reaches the budget of %" PRIu64 " MiB in %s", growth_mib_min(a),
             budget_mib, when);
}

/* LEAKING: a budget at ~2x today's live bytes, so the leak stops before the machine does. */
static void budget_for_leak(struct advice_words *w, const struct zkm_advice_info *a)
{
    if (a->budget_bytes) {
        budget_reach(w, a);
        return;
    }
    uint64_t b = div_up(sat_mul(a->bytes_in_use, 2), MIB_BYTES);
    b = b ? b : 1;
    if (a->growth_per_min <= 0) {
        add_line(w,
                 "set memory_budget_mb = %" PRIu64
                 " to stop it at ~2x today's live bytes (the budget is per uid)",
                 b);
        return;
    }
    char when[32];
    uint64_t to_go = sat_mul(b, MIB_BYTES) - a->bytes_in_use;
    fmt_minutes(when, sizeof(when), (double)to_go / (double)a->growth_per_min);
    add_line(w,
             "set memory_budget_mb = %" PRIu64
             " to stop it at ~2x today's live bytes (it grows %.1f MiB/min: it would reach "
             "that in %s; the budget is per uid)",
             b, growth_mib_min(a), when);
}

/* GROWING: a budget one hour of growth ahead. */
static void budget_for_growth(struct advice_words *w, const struct zkm_advice_info *a)
{
    if (a->budget_bytes) {
        budget_reach(w, a);
        return;
    }
    if (a->growth_per_min <= 0)
        return;
    uint64_t hour = sat_mul((uint64_t)a->growth_per_min, 60);
    uint64_t b = div_up(sat_add(a->bytes_in_use, hour), MIB_BYTES);
    add_line(w,
             "set memory_budget_mb = %" PRIu64
             " for one more hour of growth (%.1f MiB live + 60 min x %.1f MiB/min; the budget "
             "is per uid)",
             b, mib(a->bytes_in_use), growth_mib_min(a));
}

/* GROWING, BURSTY: hugepages for the most slabs it held, unless its node has room. */
static void reserve_for_peak(struct advice_words *w, const struct advice_subject *s)
{
    const struct zkm_advice_info *a = s->rec;
    const struct zkm_arena_info *h = s->home;
    if (!a->peak_slabs || !h || !h->slab_size)
        return;
    uint64_t bytes = sat_mul(a->peak_slabs, h->slab_size);
    uint64_t pages = div_up(bytes, HUGEPAGE_SIZE);
    if (h->backing != ZKM_BACKING_HUGETLB) {
        add_line(w,
                 "its peak of %" PRIu64 " slabs (%.1f MiB) needs %" PRIu64
                 " hugepages, but node %" PRIu32
                 " serves fallback memory: reserve hugepages (vm.nr_hugepages) and restart zkmemd",
                 a->peak_slabs, mib(bytes), pages, h->node);
        return;
    }
    if (h->free_slabs >= a->peak_slabs) {
        add_line(w,
                 "no hugepages to reserve: node %" PRIu32 " has %" PRIu64
                 " free slabs, its peak was %" PRIu64 " slabs (%.1f MiB)",
                 h->node, h->free_slabs, a->peak_slabs, mib(bytes));
        return;
    }
    add_line(w,
             "reserve hugepages for its peak: zkmemctl reserve --node %" PRIu32 " --pages %" PRIu64
             " (peak %" PRIu64 " slabs x %.1f MiB = %.1f MiB; node %" PRIu32 " has %" PRIu64
             " free slabs)",
             h->node, pages, a->peak_slabs, mib(h->slab_size), mib(bytes), h->node, h->free_slabs);
}

static void words_unknown(struct advice_words *w, const struct advice_subject *s)
{
    snprintf(w->evidence, ADVICE_LINE, "unknown: not enough history yet (%" PRIu32 " s of 10 s)",
             s->rec->samples);
}

static void words_idle(struct advice_words *w, const struct advice_subject *s,
                       const struct advise_env *env)
{
    const struct zkm_advice_info *a = s->rec;
    char held[64], held_mib[32], decay[48] = "decay_ms";
    fmt_held(held, sizeof(held), a->slabs, s->home);
    snprintf(w->evidence, ADVICE_LINE,
             "idle: no allocation in the last 10 s; holds %s, %.1f MiB of it live", held,
             mib(a->bytes_in_use));
    if (a->slabs == 0)
        return;
    if (env->decay_ms >= 0)
        snprintf(decay, sizeof(decay), "decay_ms (now %" PRId64 " ms)", env->decay_ms);
    if (s->home && s->home->slab_size)
        snprintf(held_mib, sizeof(held_mib), "%.1f MiB",
                 mib(sat_mul(a->slabs, s->home->slab_size)));
    else
        snprintf(held_mib, sizeof(held_mib), "%" PRIu64 " slabs", a->slabs);
    if (env->compaction == 1)
        add_line(w,
                 "holds %s while idle; enable_compaction is on, so its empty slabs go back to "
                 "the node pool after %s",
                 held_mib, decay);
    else
        add_line(w,
                 "holds %s while idle: enable_compaction = yes gives idle memory back after %s%s",
                 held_mib, decay, env->compaction == 0 ? "" : " (if it is off)");
}

static void words_steady(struct advice_words *w, const struct advice_subject *s)
{
    const struct zkm_advice_info *a = s->rec;
    char held[64];
    fmt_held(held, sizeof(held), a->slabs, s->home);
    snprintf(w->evidence, ADVICE_LINE, "steady: %.1f MiB live in %s over %" PRIu32 " s",
             mib(a->bytes_in_use), held, span_s(a));
}

static void words_bursty(struct advice_words *w, const struct advice_subject *s)
{
    const struct zkm_advice_info *a = s->rec;
    char mean[32];
    fmt_short(mean, sizeof(mean), (double)a->mean_refills_milli / 1000.0);
    snprintf(w->evidence, ADVICE_LINE,
             "bursty: bursts of up to %" PRIu64 " slabs/s against a mean of %s/s over %" PRIu32
             " s; held %" PRIu64 " slabs at most, %" PRIu64 " on average",
             a->peak_refills, mean, span_s(a), a->peak_slabs, a->mean_slabs);
    if (a->tuning)
        add_line(w, "grant depth follows the bursts (now %" PRIu32 ")", a->grant_depth);
    reserve_for_peak(w, s);
}

static void words_growing(struct advice_words *w, const struct advice_subject *s)
{
    const struct zkm_advice_info *a = s->rec;
    char growth[160];
    fmt_growth(growth, sizeof(growth), a);
    snprintf(w->evidence, ADVICE_LINE,
             "growing: %s, rose in %" PRIu32 " of %" PRIu32 " samples, fell in %" PRIu32, growth,
             a->rising_samples, span_s(a), a->falling_samples);
    budget_for_growth(w, a);
    reserve_for_peak(w, s);
}

static void words_leaking(struct advice_words *w, const struct advice_subject *s)
{
    const struct zkm_advice_info *a = s->rec;
    char growth[160];
    fmt_growth(growth, sizeof(growth), a);
    snprintf(w->evidence, ADVICE_LINE,
             "leaking: %s, rose in %" PRIu32 " of %" PRIu32 " samples, never fell, freed %" PRIu64
             " objects meanwhile",
             growth, a->rising_samples, span_s(a), a->frees_in_history);
    if (a->rising_samples >= span_s(a))
        add_line(w,
                 "live bytes rose in every one of %" PRIu32 " samples while it freed %" PRIu64
                 " objects: look for a leak",
                 span_s(a), a->frees_in_history);
    else
        add_line(w,
                 "live bytes rose in %" PRIu32 " of %" PRIu32 " samples and never fell while it "
                 "freed %" PRIu64 " objects: look for a leak",
                 a->rising_samples, span_s(a), a->frees_in_history);
    budget_for_leak(w, a);
}

/* ------------------------------------------------------------------------------------ */
/* Checks every client gets                                                              */

static const char *const mode_names[] = {ZKM_CONFIG_ENUM_mode};

static void check_tcache(struct advice_words *w, const struct zkm_advice_info *a,
                         const struct advise_env *env)
{
    char why[96];
    if (a->tcache_hit_pct >= 90)
        return;
    if (!a->tuning) {
        snprintf(why, sizeof(why), "the tuner raises thread-cache caps (now x%" PRIu32 ") up to x4",
                 a->tcache_scale);
        add_tuning_reason(w, why);
    }
    if (a->tcache_scale < 4 || !a->tuning) {
        add_line(w, "thread-cache hit rate %" PRIu32 "%%: caps are now x%" PRIu32,
                 a->tcache_hit_pct, a->tcache_scale);
    } else if (env->mode < 0) {
        add_line(w,
                 "thread-cache hit rate %" PRIu32 "%%: caps are now x%" PRIu32
                 ", the tuner's limit; consider mode = high_performance if it is not",
                 a->tcache_hit_pct, a->tcache_scale);
    } else if (env->mode > 0 && (size_t)env->mode < sizeof(mode_names) / sizeof(mode_names[0])) {
        add_line(w,
                 "thread-cache hit rate %" PRIu32 "%%: caps are now x%" PRIu32
                 ", the tuner's limit; consider mode = high_performance (now %s)",
                 a->tcache_hit_pct, a->tcache_scale, mode_names[env->mode]);
    } else {
        add_line(w,
                 "thread-cache hit rate %" PRIu32 "%%: caps are now x%" PRIu32
                 ", the tuner's limit, in mode high_performance",
                 a->tcache_hit_pct, a->tcache_scale);
    }
}

static void check_placement(struct advice_words *w, const struct zkm_advice_info *a)
{
    char tail[128] = "";
    if (a->remote_pct < 50)
        return;
    if (a->placement_moves)
        snprintf(tail, sizeof(tail), "; the tuner moved its home %" PRIu32 " times",
                 a->placement_moves);
    else if (a->tuning)
        snprintf(tail, sizeof(tail),
                 "; the tuner moves its home once one node has 3/4 of its runs");
    else
        add_tuning_reason(w, "the tuner moves its home to a node with 3/4 of its runs");
    add_line(w,
             "%" PRIu32 "%% of its scheduler runs were off its home node %" PRIu32
             ", most on node %" PRIu32 "%s",
             a->remote_pct, a->home_node, a->busiest_node, tail);
}

static void advise_words(const struct advice_subject *s, const struct advise_env *env,
                         struct advice_words *w)
{
    const struct zkm_advice_info *a = s->rec;
    memset(w, 0, sizeof(*w));
    switch (a->pattern) {
    case ZKM_PATTERN_UNKNOWN:
        words_unknown(w, s);
        break;
    case ZKM_PATTERN_IDLE:
        words_idle(w, s, env);
        break;
    case ZKM_PATTERN_STEADY:
        words_steady(w, s);
        break;
    case ZKM_PATTERN_BURSTY:
        words_bursty(w, s);
        break;
    case ZKM_PATTERN_GROWING:
        words_growing(w, s);
        break;
    case ZKM_PATTERN_LEAKING:
        words_leaking(w, s);
        break;
    default:
        snprintf(w->evidence, ADVICE_LINE,
                 "unknown pattern %" PRIu32 " (is zkmemctl older than zkmemd?)", a->pattern);
    }
    if (!a->tuning && a->waits) { /* first: round trips are what the client feels */
        char why[64];
        snprintf(why, sizeof(why), "it waited %" PRIu64 " times for a round trip", a->waits);
        add_tuning_reason(w, why);
    }
    check_tcache(w, a, env);
    check_placement(w, a);
    if (!a->tuning && w->tuning_why[0])
        add_line(w, "enable_tuning = yes (%s)", w->tuning_why);
    if (w->n == 0 && a->pattern != ZKM_PATTERN_UNKNOWN && advice_pattern_name(a->pattern))
        add_line(w, "nothing to change");
}

/* ------------------------------------------------------------------------------------ */
/* Inputs                                                                                */

/* The value of `key` in `key = value  # doc` lines into buf; 0 if found. */
static int config_value(const char *text, const char *key, char *buf, size_t len)
{
    size_t kl = strlen(key);
    for (const char *s = text; s && *s;) {
        const char *e = strchr(s, '\n');
        size_t ll = e ? (size_t)(e - s) : strlen(s);
        const char *eq = memchr(s, '=', ll);
        if (eq && strncmp(s, key, kl) == 0 && strspn(s + kl, " \t") == (size_t)(eq - s - kl)) {
            const char *v = eq + 1 + strspn(eq + 1, " \t");
            const char *end = memchr(v, '#', ll - (size_t)(v - s));
            end = end ? end : s + ll;
            while (end > v && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
                end--;
            snprintf(buf, len, "%.*s", (int)(end - v), v);
            return 0;
        }
        s = e ? e + 1 : NULL;
    }
    return -1;
}

/* Parse one key's value with the configuration's own parser; 0 if it is valid. */
static int config_get(const char *text, const char *key, struct zkm_config *cfg)
{
    char val[128], err[256];
    if (config_value(text, key, val, sizeof(val)) < 0)
        return -1;
    return zkm_config_set(cfg, key, val, 1, err, sizeof(err)) == 0 ? 0 : -1;
}

void advise_env_from_config(struct advise_env *env, const char *text)
{
    struct zkm_config cfg;
    zkm_config_defaults(&cfg);
    env->compaction =
        config_get(text, "enable_compaction", &cfg) == 0 ? (int)cfg.enable_compaction : -1;
    env->mode = config_get(text, "mode", &cfg) == 0 ? (int)cfg.mode : -1;
    env->decay_ms = config_get(text, "decay_ms", &cfg) == 0 ? (int64_t)cfg.decay_ms : -1;
}

size_t advice_filter_pid(struct zkm_advice_info *a, size_t n, int32_t pid)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i].pid == pid)
            a[k++] = a[i];
    return k;
}

static void subject_of(const struct zkm_advice_info *a, const struct ctl_snapshot *snap,
                       struct advice_subject *s)
{
    s->rec = a;
    s->client = NULL;
    s->home = NULL;
    for (size_t i = 0; i < snap->n_clients; i++)
        if (snap->clients[i].client_id == a->client_id && snap->clients[i].pid == a->pid)
            s->client = &snap->clients[i];
    for (size_t i = 0; i < snap->n_arenas; i++)
        if (snap->arenas[i].node == a->home_node)
            s->home = &snap->arenas[i];
}

/* The client's command name, printable; "" when unknown. */
static void subject_comm(const struct advice_subject *s, char *buf)
{
    size_t i = 0;
    if (s->client)
        for (; i < ZKM_COMM_LEN - 1 && s->client->comm[i]; i++) {
            char ch = s->client->comm[i];
            buf[i] = ch >= 0x20 && ch < 0x7f ? ch : '?';
        }
    buf[i] = '\0';
}

/* ------------------------------------------------------------------------------------ */
/* Output                                                                                */

void render_advice_human(FILE *out, const struct zkm_advice_info *a, size_t n,
                         const struct ctl_snapshot *snap, const struct advise_env *env)
{
    for (size_t i = 0; i < n; i++) {
        struct advice_subject s;
        struct advice_words w;
        char comm[ZKM_COMM_LEN], live[24], granted[24];
        subject_of(&a[i], snap, &s);
        subject_comm(&s, comm);
        advise_words(&s, env, &w);
        render_size(live, sizeof(live), a[i].bytes_in_use);
        if (i)
            fputc('\n', out);
        fprintf(out, "pid %" PRId32 " (%s) client %" PRIu32 ": %s live", a[i].pid,
                s.client ? comm : "?", a[i].client_id, live);
        if (s.client) {
            render_size(granted, sizeof(granted), s.client->bytes_granted);
            fprintf(out, ", %s granted", granted);
        }
        fprintf(out, ", home node %" PRIu32 "\n  %s\n", a[i].home_node, w.evidence);
        for (size_t k = 0; k < w.n; k++)
            fprintf(out, "  - %s\n", w.line[k]);
    }
}

void render_advice_json(FILE *out, const struct zkm_advice_info *a, size_t n,
                        const struct ctl_snapshot *snap, const struct advise_env *env, int indent)
{
    if (n == 0) {
        fputs("[]", out);
        return;
    }
    fputs("[\n", out);
    for (size_t i = 0; i < n; i++) {
        struct advice_subject s;
        struct advice_words w;
        char comm[ZKM_COMM_LEN];
        const char *name = advice_pattern_name(a[i].pattern);
        int in = indent + 4;
        subject_of(&a[i], snap, &s);
        advise_words(&s, env, &w);
        fprintf(out, "%*s{\n", indent + 2, "");
        render_advice_fields_json(out, &a[i], in);
        fprintf(out, "%*s\"comm\": ", in, "");
        if (s.client) { /* as in `clients --json`: every byte, escaped */
            memcpy(comm, s.client->comm, ZKM_COMM_LEN);
            comm[ZKM_COMM_LEN - 1] = '\0';
            json_string(out, comm, sizeof(comm));
        } else {
            fputs("null", out);
        }
        fprintf(out, ",\n%*s\"pattern_name\": ", in, "");
        if (name)
            json_string(out, name, 16);
        else
            fputs("null", out);
        fprintf(out, ",\n%*s\"evidence\": ", in, "");
        json_string(out, w.evidence, sizeof(w.evidence));
        fprintf(out, ",\n%*s\"advice\": [", in, "");
        for (size_t k = 0; k < w.n; k++) {
            fprintf(out, "%s\n%*s", k ? "," : "", in + 2, "");
            json_string(out, w.line[k], sizeof(w.line[k]));
        }
        if (w.n)
            fprintf(out, "\n%*s", in, "");
        fputs("]\n", out);
        fprintf(out, "%*s}%s\n", indent + 2, "", i + 1 < n ? "," : "");
    }
    fprintf(out, "%*s]", indent, "");
}
