/* SPDX-License-Identifier: MIT */
/*
 * render.c - every zkmemctl output format, generated from the record lists in zkm_proto.h.
 *
 * 1. Field tables. ZKM_STATUS_FIELDS, ZKM_ARENA_FIELDS, ZKM_CLIENT_FIELDS and
 *    ZKM_ADVICE_FIELDS expand into `struct field` arrays (name, description, offset,
 *    size, signedness). No field name is written here by hand: JSON keys, table columns
 *    and Prometheus metric names are the X-macro names; the client's `comm` (outside its
 *    X-macro) is added explicitly.
 *
 * 2. Presentation is inferred from the name and description, so a new field renders
 *    without touching this file: `*bytes*` and `*_size` are sizes ("2.0 GiB"), `*_ms`
 *    durations, a description of the form "1 a, 2 b" is an enum shown by its label.
 *    Prometheus: `*_total` names are counters; so are the suffixes in counter_suffix[]
 *    (counts since start whose names lack `_total`; they are exported with `_total`).
 *
 * 3. Untrusted text. `comm` comes from a client process; it is escaped for JSON and
 *    Prometheus and made printable for tables.
 */
#include "ctl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct field {
    const char *name;
    const char *desc;
    size_t off;
    uint8_t size;
    uint8_t is_signed;
};

#define SIGNED_T(t)           _Generic((t)0, int8_t : 1, int16_t : 1, int32_t : 1, int64_t : 1, default : 0)
#define FIELD_OF(st, t, n, d) {#n, d, offsetof(st, n), sizeof(t), SIGNED_T(t)},
#define STATUS_F(t, n, d)     FIELD_OF(struct zkm_status_info, t, n, d)
#define ARENA_F(t, n, d)      FIELD_OF(struct zkm_arena_info, t, n, d)
#define CLIENT_F(t, n, d)     FIELD_OF(struct zkm_client_info, t, n, d)
#define ADVICE_F(t, n, d)     FIELD_OF(struct zkm_advice_info, t, n, d)
static const struct field status_fields[] = {ZKM_STATUS_FIELDS(STATUS_F)};
static const struct field arena_fields[] = {ZKM_ARENA_FIELDS(ARENA_F)};
static const struct field client_fields[] = {ZKM_CLIENT_FIELDS(CLIENT_F)};
static const struct field advice_fields[] = {ZKM_ADVICE_FIELDS(ADVICE_F)};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Value of a field as a signed/unsigned pair; printed by fmt_plain. */
struct value {
    int neg;
    uint64_t mag;
};

static struct value field_get(const struct field *f, const void *rec)
{
    const char *p = (const char *)rec + f->off;
    struct value v = {0, 0};
    if (f->size == 4 && f->is_signed) {
        int32_t x;
        memcpy(&x, p, 4);
        v.neg = x < 0;
        v.mag = x < 0 ? (uint64_t)(-(int64_t)x) : (uint64_t)x;
    } else if (f->size == 4) {
        uint32_t x;
        memcpy(&x, p, 4);
        v.mag = x;
    } else if (f->size == 8 && f->is_signed) {
        int64_t x;
        memcpy(&x, p, 8);
        v.neg = x < 0;
        v.mag = x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
    } else {
        memcpy(&v.mag, p, 8);
    }
    return v;
}

static void fmt_plain(char *buf, size_t len, struct value v)
{
    snprintf(buf, len, "%s%" PRIu64, v.neg ? "-" : "", v.mag);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int is_bytes(const struct field *f)
{
    return strstr(f->name, "bytes") != NULL || ends_with(f->name, "_size");
}

/* "1 hugetlb, 2 shmem+THP, 3 shmem 4 KiB": the label of value v into buf, or 0. */
static int enum_label(const struct field *f, uint64_t v, char *buf, size_t len)
{
    const char *p = f->desc;
    int found = 0;
    while (*p) {
        char *end;
        if (*p < '0' || *p > '9')
            return 0;
        unsigned long long k = strtoull(p, &end, 10);
        if (*end != ' ')
            return 0;
        const char *label = end + 1;
        const char *next = strstr(label, ", ");
        size_t n = next ? (size_t)(next - label) : strlen(label);
        if (k == v && !found) {
            snprintf(buf, len, "%.*s", (int)n, label);
            found = 1;
        }
        p = next ? next + 2 : label + n;
    }
    if (!found)
        snprintf(buf, len, "unknown (%" PRIu64 ")", v);
    return 1;
}

void render_size(char *buf, size_t len, uint64_t bytes)
{
    static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        snprintf(buf, len, "%" PRIu64 " B", bytes);
        return;
    }
    double x = (double)bytes / 1024.0;
    size_t u = 0;
    while (x >= 1024.0 && u + 1 < N_OF(unit)) {
        x /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.1f %s", x, unit[u]);
}

static void render_ms(char *buf, size_t len, uint64_t ms)
{
    uint64_t s = ms / 1000;
    if (s == 0)
        snprintf(buf, len, "%" PRIu64 " ms", ms);
    else if (s < 60)
        snprintf(buf, len, "%" PRIu64 ".%03" PRIu64 " s", s, ms % 1000);
    else if (s < 3600)
        snprintf(buf, len, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", s / 3600, s / 60 % 60,
                 s % 60);
    else
        snprintf(buf, len, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", s / 86400, s / 3600 % 24,
                 s / 60 % 60);
}

/* Human form of a field value. */
static void fmt_human(const struct field *f, const void *rec, char *buf, size_t len)
{
    struct value v = field_get(f, rec);
    if (!v.neg && is_bytes(f)) {
        render_size(buf, len, v.mag);
    } else if (!v.neg && ends_with(f->name, "_ms")) {
        render_ms(buf, len, v.mag);
    } else if (v.neg || !enum_label(f, v.mag, buf, len)) {
        fmt_plain(buf, len, v);
    }
}

/* Copy untrusted comm, printable ASCII only. */
static void comm_printable(char *dst, const char *comm)
{
    size_t i;
    for (i = 0; i < ZKM_COMM_LEN - 1 && comm[i]; i++)
        dst[i] = (comm[i] >= 0x20 && comm[i] < 0x7f) ? comm[i] : '?';
    dst[i] = '\0';
}

/* ------------------------------------------------------------------------------------ */
/* Aligned tables                                                                        */

#define CELL 48
struct table {
    size_t rows, cols;
    char (*cell)[CELL];
    unsigned char *right; /* per column: right-align */
};

static int table_init(struct table *t, size_t rows, size_t cols)
{
    t->rows = rows;
    t->cols = cols;
    t->cell = calloc(rows * cols > 0 ? rows * cols : 1, CELL);
    t->right = calloc(cols ? cols : 1, 1);
    return t->cell && t->right ? 0 : -1;
}

static char *table_at(struct table *t, size_t r, size_t c)
{
    return t->cell[r * t->cols + c];
}

static void table_print(FILE *out, struct table *t)
{
    size_t w[64] = {0};
    for (size_t c = 0; c < t->cols && c < 64; c++)
        for (size_t r = 0; r < t->rows; r++) {
            size_t n = strlen(table_at(t, r, c));
            if (n > w[c])
                w[c] = n;
        }
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t c = 0; c < t->cols && c < 64; c++) {
            const char *s = table_at(t, r, c);
            int last = c + 1 == t->cols;
            if (t->right[c] && r > 0)
                fprintf(out, "%*s", (int)w[c], s);
            else if (last)
                fputs(s, out);
            else
                fprintf(out, "%-*s", (int)w[c], s);
            if (!last)
                fputs("  ", out);
        }
        fputc('\n', out);
    }
    free(t->cell);
    free(t->right);
}

static void upper(char *dst, const char *src, size_t len)
{
    size_t i;
    for (i = 0; i + 1 < len && src[i]; i++)
        dst[i] = (src[i] >= 'a' && src[i] <= 'z') ? (char)(src[i] - 32) : src[i];
    dst[i] = '\0';
}

void render_fallback_warning(FILE *out, const struct zkm_status_info *st)
{
    if (st->backing == ZKM_BACKING_HUGETLB)
        return;
    fprintf(out,
            "WARNING: zkmemd is serving small-page fallback memory (%s), not hugepages: reserve "
            "hugepages (sysctl vm.nr_hugepages=N) and restart zkmemd\n\n",
            st->backing == ZKM_BACKING_SHMEM_THP ? "shmem with transparent hugepages"
                                                 : "shmem, 4 KiB pages");
}

void render_status_human(FILE *out, const struct zkm_status_info *st)
{
    struct table t;
    if (table_init(&t, N_OF(status_fields) + 1, 3) < 0)
        return;
    snprintf(table_at(&t, 0, 0), CELL, "FIELD");
    snprintf(table_at(&t, 0, 1), CELL, "VALUE");
    snprintf(table_at(&t, 0, 2), CELL, "DESCRIPTION");
    for (size_t i = 0; i < N_OF(status_fields); i++) {
        snprintf(table_at(&t, i + 1, 0), CELL, "%s", status_fields[i].name);
        fmt_human(&status_fields[i], st, table_at(&t, i + 1, 1), CELL);
        snprintf(table_at(&t, i + 1, 2), CELL, "%.*s", CELL - 1, status_fields[i].desc);
    }
    t.right[1] = 1;
    table_print(out, &t);
}

/* Arenas: one column per node (records have many fields and there are few nodes). */
void render_arenas_human(FILE *out, const struct zkm_arena_info *a, size_t n)
{
    struct table t;
    if (n == 0) {
        fprintf(out, "no arenas\n");
        return;
    }
    if (n > 60)
        n = 60;
    if (table_init(&t, N_OF(arena_fields) + 1, n + 2) < 0)
        return;
    snprintf(table_at(&t, 0, 0), CELL, "FIELD");
    snprintf(table_at(&t, 0, n + 1), CELL, "DESCRIPTION");
    for (size_t j = 0; j < n; j++) {
        snprintf(table_at(&t, 0, j + 1), CELL, "NODE %" PRIu32, a[j].node);
        t.right[j + 1] = 1;
    }
    for (size_t i = 0; i < N_OF(arena_fields); i++) {
        const struct field *f = &arena_fields[i];
        snprintf(table_at(&t, i + 1, 0), CELL, "%s", f->name);
        snprintf(table_at(&t, i + 1, n + 1), CELL, "%.*s", CELL - 1, f->desc);
        for (size_t j = 0; j < n; j++) {
            char *c = table_at(&t, i + 1, j + 1);
            fmt_human(f, &a[j], c, CELL);
            if (ends_with(f->name, "_slabs") && a[j].slab_size) {
                char sz[24];
                render_size(sz, sizeof(sz), field_get(f, &a[j]).mag * a[j].slab_size);
                size_t l = strlen(c);
                snprintf(c + l, CELL - l, " (%s)", sz);
            }
        }
    }
    table_print(out, &t);
}

static int client_cmp(const void *pa, const void *pb)
{
    const struct zkm_client_info *a = pa, *b = pb;
    if (a->bytes_granted != b->bytes_granted)
        return a->bytes_granted > b->bytes_granted ? -1 : 1;
    return (a->pid > b->pid) - (a->pid < b->pid);
}

void clients_sort(struct zkm_client_info *c, size_t n)
{
    qsort(c, n, sizeof(*c), client_cmp);
}

void render_clients_human(FILE *out, const struct zkm_client_info *c, size_t n)
{
    struct table t;
    size_t nf = N_OF(client_fields);
    if (n == 0) {
        fprintf(out, "no clients connected\n");
        return;
    }
    if (table_init(&t, n + 1, nf + 1) < 0)
        return;
    for (size_t i = 0; i < nf; i++) {
        upper(table_at(&t, 0, i), client_fields[i].name, CELL);
        t.right[i] = 1;
    }
    snprintf(table_at(&t, 0, nf), CELL, "COMM");
    for (size_t r = 0; r < n; r++) {
        for (size_t i = 0; i < nf; i++)
            fmt_human(&client_fields[i], &c[r], table_at(&t, r + 1, i), CELL);
        comm_printable(table_at(&t, r + 1, nf), c[r].comm);
    }
    table_print(out, &t);
}

/* ------------------------------------------------------------------------------------ */
/* JSON                                                                                  */

void json_string(FILE *out, const char *s, size_t maxlen)
{
    fputc('"', out);
    for (size_t i = 0; i < maxlen && s[i]; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(out, "\\u%04x", ch); /* bytes as Latin-1: always valid JSON */
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static void json_record(FILE *out, const struct field *fs, size_t nf, const void *rec,
                        const char *comm, int indent)
{
    char num[32];
    fputs("{\n", out);
    for (size_t i = 0; i < nf; i++) {
        fmt_plain(num, sizeof(num), field_get(&fs[i], rec));
        fprintf(out, "%*s\"%s\": %s%s\n", indent + 2, "", fs[i].name, num,
                (i + 1 < nf || comm) ? "," : "");
    }
    if (comm) {
        fprintf(out, "%*s\"comm\": ", indent + 2, "");
        json_string(out, comm, ZKM_COMM_LEN);
        fputc('\n', out);
    }
    fprintf(out, "%*s}", indent, "");
}

void render_advice_fields_json(FILE *out, const struct zkm_advice_info *a, int indent)
{
    char num[32];
    for (size_t i = 0; i < N_OF(advice_fields); i++) {
        fmt_plain(num, sizeof(num), field_get(&advice_fields[i], a));
        fprintf(out, "%*s\"%s\": %s,\n", indent, "", advice_fields[i].name, num);
    }
}

void render_status_json(FILE *out, const struct zkm_status_info *st, int indent)
{
    json_record(out, status_fields, N_OF(status_fields), st, NULL, indent);
}

void render_arenas_json(FILE *out, const struct zkm_arena_info *a, size_t n, int indent)
{
    if (n == 0) {
        fputs("[]", out);
        return;
    }
    fputs("[\n", out);
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%*s", indent + 2, "");
        json_record(out, arena_fields, N_OF(arena_fields), &a[i], NULL, indent + 2);
        fputs(i + 1 < n ? ",\n" : "\n", out);
    }
    fprintf(out, "%*s]", indent, "");
}

void render_clients_json(FILE *out, const struct zkm_client_info *c, size_t n, int indent)
{
    if (n == 0) {
        fputs("[]", out);
        return;
    }
    fputs("[\n", out);
    for (size_t i = 0; i < n; i++) {
        char comm[ZKM_COMM_LEN];
        memcpy(comm, c[i].comm, ZKM_COMM_LEN);
        comm[ZKM_COMM_LEN - 1] = '\0';
        fprintf(out, "%*s", indent + 2, "");
        json_record(out, client_fields, N_OF(client_fields), &c[i], comm, indent + 2);
        fputs(i + 1 < n ? ",\n" : "\n", out);
    }
    fprintf(out, "%*s]", indent, "");
}

/* `key = value  # doc` lines -> {"key": value}; decimal values as numbers. */
void render_config_json(FILE *out, const char *text)
{
    int first = 1;
    fputs("{", out);
    for (const char *s = text; *s;) {
        const char *e = strchr(s, '\n');
        if (!e)
            e = s + strlen(s);
        const char *eq = memchr(s, '=', (size_t)(e - s));
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        if (eq && s < eq && *s != '#') {
            const char *ke = eq;
            while (ke > s && (ke[-1] == ' ' || ke[-1] == '\t'))
                ke--;
            const char *v = eq + 1, *ve;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            if (v < e && (*v == '"' || *v == '\'')) {
                char q = *v++;
                ve = memchr(v, q, (size_t)(e - v));
                if (!ve)
                    ve = e;
            } else {
                ve = memchr(v, '#', (size_t)(e - v));
                if (!ve)
                    ve = e;
                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\r'))
                    ve--;
            }
            char key[128], val[512];
            snprintf(key, sizeof(key), "%.*s", (int)(ke - s), s);
            snprintf(val, sizeof(val), "%.*s", (int)(ve - v), v);
            int numeric = val[0] != '\0' && strspn(val, "0123456789") == strlen(val) &&
                          (val[0] != '0' || val[1] == '\0') && strlen(val) < 16;
            fputs(first ? "\n    " : ",\n    ", out);
            json_string(out, key, sizeof(key));
            fputs(": ", out);
            if (numeric)
                fputs(val, out);
            else
                json_string(out, val, sizeof(val));
            first = 0;
        }
        s = *e ? e + 1 : e;
    }
    fputs(first ? "}" : "\n  }", out);
}

/* ------------------------------------------------------------------------------------ */
/* Prometheus text exposition                                                            */

static const char *const counter_suffix[] = {
    "_total",  "_ops",  "_errors", "_rejected", "violations",  "fallbacks",
    "refills", "waits", "returns", "_faults",   "_faults_all", "_runs",
};

static int is_counter(const char *name)
{
    for (size_t i = 0; i < N_OF(counter_suffix); i++)
        if (ends_with(name, counter_suffix[i]))
            return 1;
    return 0;
}

static void prom_header(FILE *out, const char *prefix, const struct field *f, char *metric,
                        size_t len)
{
    int counter = is_counter(f->name);
    snprintf(metric, len, "zkmem_%s%s%s", prefix, f->name,
             counter && !ends_with(f->name, "_total") ? "_total" : "");
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", metric, f->desc, metric,
            counter ? "counter" : "gauge");
}

static void prom_label(FILE *out, const char *s, size_t maxlen)
{
    fputc('"', out);
    for (size_t i = 0; i < maxlen && s[i]; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", out);
        else
            fputc(ch >= 0x20 && ch < 0x7f ? ch : '?', out);
    }
    fputc('"', out);
}

void render_prometheus(FILE *out, const struct ctl_snapshot *s)
{
    char metric[96], num[32];

    for (size_t i = 0; i < N_OF(status_fields); i++) {
        prom_header(out, "", &status_fields[i], metric, sizeof(metric));
        fmt_plain(num, sizeof(num), field_get(&status_fields[i], &s->status));
        fprintf(out, "%s %s\n", metric, num);
    }
    for (size_t i = 0; i < N_OF(arena_fields); i++) {
        const struct field *f = &arena_fields[i];
        if (f->off == offsetof(struct zkm_arena_info, node))
            continue; /* a label */
        prom_header(out, "arena_", f, metric, sizeof(metric));
        for (size_t j = 0; j < s->n_arenas; j++) {
            fmt_plain(num, sizeof(num), field_get(f, &s->arenas[j]));
            fprintf(out, "%s{node=\"%" PRIu32 "\"} %s\n", metric, s->arenas[j].node, num);
        }
    }
    for (size_t i = 0; i < N_OF(client_fields); i++) {
        const struct field *f = &client_fields[i];
        if (f->off == offsetof(struct zkm_client_info, pid) ||
            f->off == offsetof(struct zkm_client_info, node) ||
            f->off == offsetof(struct zkm_client_info, uid))
            continue; /* labels */
        prom_header(out, "client_", f, metric, sizeof(metric));
        for (size_t j = 0; j < s->n_clients; j++) {
            const struct zkm_client_info *c = &s->clients[j];
            fmt_plain(num, sizeof(num), field_get(f, c));
            fprintf(out,
                    "%s{pid=\"%" PRId32 "\",uid=\"%" PRIu32 "\",node=\"%" PRIu32 "\",comm=", metric,
                    c->pid, c->uid, c->node);
            prom_label(out, c->comm, ZKM_COMM_LEN);
            fprintf(out, "} %s\n", num);
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* Slot maps                                                                             */

void map_summarize(const uint8_t *map, size_t n, struct map_summary *sum)
{
    memset(sum, 0, sizeof(*sum));
    sum->slabs = n;
    for (size_t i = 0; i < n; i++) {
        switch (map[i]) {
        case ZKM_SLOT_FREE:
            sum->free++;
            break;
        case ZKM_SLOT_PREGRANTED:
            sum->pregranted++;
            break;
        case ZKM_SLOT_HELD:
            sum->held++;
            break;
        case ZKM_SLOT_CACHED:
            sum->cached++;
            break;
        default:
            sum->other++;
        }
    }
}

static char slot_char(uint8_t b)
{
    switch (b) {
    case ZKM_SLOT_FREE:
    case ZKM_SLOT_PREGRANTED:
    case ZKM_SLOT_HELD:
    case ZKM_SLOT_CACHED:
        return (char)b;
    default:
        return '?';
    }
}

#define MAP_ROW 64

void render_map_human(FILE *out, const struct zkm_arena_info *a, const uint8_t *map, size_t n)
{
    struct map_summary s;
    char total[24], granted[24], cached[24];
    map_summarize(map, n, &s);
    render_size(total, sizeof(total), (uint64_t)n * a->slab_size);
    render_size(granted, sizeof(granted), (s.pregranted + s.held) * a->slab_size);
    render_size(cached, sizeof(cached), s.cached * a->slab_size);
    fprintf(out,
            "node %" PRIu32 ": %zu slabs (%s): %" PRIu64 " free, %" PRIu64 " granted (%s: %" PRIu64
            " held, %" PRIu64 " pre-granted), %" PRIu64 " cached (%s)",
            a->node, n, total, s.free, s.pregranted + s.held, granted, s.held, s.pregranted,
            s.cached, cached);
    if (s.other)
        fprintf(out, ", %" PRIu64 " in an unknown state", s.other);
    fputc('\n', out);
    for (size_t row = 0; row < n; row += MAP_ROW) {
        fprintf(out, "  %6zu  ", row);
        for (size_t i = row; i < n && i < row + MAP_ROW; i++) {
            fputc(slot_char(map[i]), out);
            if ((i + 1) % 16 == 0 && i + 1 < row + MAP_ROW && i + 1 < n)
                fputc(' ', out);
        }
        fputc('\n', out);
    }
}

void render_map_json(FILE *out, const struct zkm_arena_info *a, const uint8_t *map, size_t n,
                     int first)
{
    struct map_summary s;
    map_summarize(map, n, &s);
    fprintf(out,
            "%s    {\n      \"node\": %" PRIu32 ",\n      \"slab_size\": %" PRIu64
            ",\n      \"slabs\": %zu,\n      \"free\": %" PRIu64 ",\n      \"pregranted\": %" PRIu64
            ",\n      \"held\": %" PRIu64 ",\n      \"cached\": %" PRIu64
            ",\n      \"unknown\": %" PRIu64 ",\n      \"map\": \"",
            first ? "" : ",\n", a->node, a->slab_size, n, s.free, s.pregranted, s.held, s.cached,
            s.other);
    for (size_t i = 0; i < n; i++)
        fputc(slot_char(map[i]), out);
    fputs("\"\n    }", out);
}
