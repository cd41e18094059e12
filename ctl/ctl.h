/* SPDX-License-Identifier: MIT */
/* ctl.h - zkmemctl internals: the daemon connection (conn.c), the renderers (render.c),
 * the live view (top.c), the advice (advise.c). zkmemctl is a CLI: these functions print their
 * one-line error to stderr themselves and return an exit code (enum ctl_exit). */
#ifndef ZKM_CTL_H
#define ZKM_CTL_H

#include "zkm_proto.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define ZKM_DEFAULT_SOCKET "/run/zkmem/zkmemd.sock"

/* Exit codes, documented in zkmemctl(8). */
enum ctl_exit {
    CTL_OK = 0,
    CTL_USAGE = 1,       /* bad command line */
    CTL_UNREACHABLE = 2, /* socket missing, daemon down or not answering */
    CTL_PROTOCOL = 3,    /* malformed reply or protocol version mismatch */
    CTL_PERM = 4,        /* permission denied */
    CTL_DAEMON = 5,      /* the daemon returned an error */
};

static inline void freep(void *p)
{
    free(*(void **)p);
}
#define _cleanup_free_ __attribute__((cleanup(freep)))

struct ctl_conn {
    int fd;
    uint16_t version; /* negotiated */
    uint32_t seq;
    const char *path;
};

/* Connect to path and say HELLO as zkmemctl. */
int ctl_connect(struct ctl_conn *c, const char *path);
void ctl_close(struct ctl_conn *c);

/*
 * Run one paged query: all pages of `kind` (with `arg`) concatenated into a malloc'ed
 * buffer (*ret_buf, NUL-terminated for text), *ret_count records (bytes for CONFIG/MAP).
 */
int ctl_query(struct ctl_conn *c, uint32_t kind, int32_t arg, void **ret_buf, size_t *ret_count);

/* Send an ADMIN message; *ret_value gets the reply's value. */
int ctl_admin(struct ctl_conn *c, uint32_t op, int32_t arg0, int64_t arg1, const char *key,
              const char *value, uint32_t *ret_value);

/* Everything one view needs. */
struct ctl_snapshot {
    struct zkm_status_info status;
    struct zkm_arena_info *arenas;
    size_t n_arenas;
    struct zkm_client_info *clients;
    size_t n_clients;
};
int ctl_snapshot_get(struct ctl_conn *c, int32_t pid_filter, struct ctl_snapshot *s);
void ctl_snapshot_free(struct ctl_snapshot *s);

/* render.c */
void render_size(char *buf, size_t len, uint64_t bytes); /* "2.0 GiB" */
void json_string(FILE *out, const char *s, size_t maxlen);

void render_status_human(FILE *out, const struct zkm_status_info *st);
void render_arenas_human(FILE *out, const struct zkm_arena_info *a, size_t n);
void render_clients_human(FILE *out, const struct zkm_client_info *c, size_t n);
void render_fallback_warning(FILE *out, const struct zkm_status_info *st);

void render_status_json(FILE *out, const struct zkm_status_info *st, int indent);
void render_arenas_json(FILE *out, const struct zkm_arena_info *a, size_t n, int indent);
void render_clients_json(FILE *out, const struct zkm_client_info *c, size_t n, int indent);
void render_config_json(FILE *out, const char *text);
/* Every ZKM_ADVICE_FIELDS member of one record, one per line, each ending ",\n": the
 * caller adds its own members and closes the object. */
void render_advice_fields_json(FILE *out, const struct zkm_advice_info *a, int indent);

void render_prometheus(FILE *out, const struct ctl_snapshot *s);

struct map_summary {
    uint64_t slabs, free, pregranted, held, cached, other;
};
void map_summarize(const uint8_t *map, size_t n, struct map_summary *sum);
void render_map_human(FILE *out, const struct zkm_arena_info *a, const uint8_t *map, size_t n);
void render_map_json(FILE *out, const struct zkm_arena_info *a, const uint8_t *map, size_t n,
                     int first);

/* Sort helper shared by clients/top: by bytes_granted, descending, then pid. */
void clients_sort(struct zkm_client_info *c, size_t n);

/* advise.c: the three configuration keys the advice looks at; -1 when not reported. */
struct advise_env {
    int compaction;   /* enable_compaction */
    int mode;         /* mode: 0 high_performance, 1 balanced, 2 monitoring */
    int64_t decay_ms; /* decay_ms */
};
void advise_env_from_config(struct advise_env *env, const char *config_text);
const char *advice_pattern_name(uint32_t pattern); /* NULL when out of range */
size_t advice_filter_pid(struct zkm_advice_info *a, size_t n, int32_t pid);
/* Per client: header, the pattern's evidence, then "  - " recommendations. */
void render_advice_human(FILE *out, const struct zkm_advice_info *a, size_t n,
                         const struct ctl_snapshot *snap, const struct advise_env *env);
/* A JSON array: each record's fields, comm, pattern_name, evidence and advice (strings). */
void render_advice_json(FILE *out, const struct zkm_advice_info *a, size_t n,
                        const struct ctl_snapshot *snap, const struct advise_env *env, int indent);

/* top.c */
int ctl_top(struct ctl_conn *c, const char *socket_path);

#endif
