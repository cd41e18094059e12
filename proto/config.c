/* SPDX-License-Identifier: MIT */
/*
 * config.c - the one parser for every configuration key (zkm_config.h).
 *
 * 1. The key table. `keys[]` is generated from ZKM_CONFIG_KEYS: name, kind, offset and
 *    size in struct zkm_config, default, range, scope, doc and (for enums) the value
 *    names from ZKM_CONFIG_ENUM_<name>. No key name is spelled anywhere else; every
 *    function below walks this table.
 *
 * 2. Values. parse_value() turns one value string (pointer + length, not necessarily
 *    NUL-terminated) into the bytes of one field, or an error code plus a reason enum.
 *    It uses no heap, no stdio and no locale (hand-written decimal parser and ASCII
 *    case folding), because the client calls it from zkm_config_from_env() inside malloc.
 *    Error *messages* are composed only on the file/tune paths (snprintf), never there.
 *      U: unsigned decimal digits only (no sign, no suffix: units live in key names),
 *         then the key's [min, max] range.
 *      B: yes/no, true/false, on/off, 1/0 (ASCII case-insensitive).
 *      E: one of the key's value names (ASCII case-insensitive).
 *      S: at most ZKM_CONFIG_STR_MAX - 1 bytes, no control characters, no quotes (so
 *         every value formats back as "value" and parses to itself).
 *
 * 3. Files. `key = value` lines; `#` starts a comment (outside quotes); whitespace is
 *    trimmed; a value may be wrapped in '...' or "...". The whole text is parsed into a
 *    copy and committed only when every line is good, so on error the caller's config is
 *    untouched. A key set twice is an error naming both lines.
 *
 * 4. Scope. for_daemon = 1 rejects keys without D (client-only keys), for_daemon = 0
 *    rejects keys without C. The environment path applies C keys and silently skips D-only
 *    keys and unknown ZKMEM_* names (the test harness and tools use ZKMEM_DAEMON etc.).
 *
 * No locks, no global mutable state: every function is reentrant. Only
 * zkm_config_load_file() touches the heap (one buffer for the file, freed before return).
 */
#include "zkm_config.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

enum kind { KIND_U, KIND_B, KIND_S, KIND_E };

#define SCOPE_D  1u
#define SCOPE_C  2u
#define SCOPE_DC (SCOPE_D | SCOPE_C)

struct keydef {
    const char *name;
    const char *doc;
    const char *const *enums; /* E: value names */
    uint64_t def_u;           /* U, B, E */
    const char *def_s;        /* S */
    uint64_t min, max;
    size_t off;
    uint32_t n_enums;
    uint8_t kind;
    uint8_t scope;
};

/* Enum value-name arrays, one per E key. */
#define ENUM_ARRAY_U(n)
#define ENUM_ARRAY_B(n)
#define ENUM_ARRAY_S(n)
#define ENUM_ARRAY_E(n)                                   static const char *const enum_names_##n[] = {ZKM_CONFIG_ENUM_##n};
#define ENUM_ARRAY(name, kind, def, min, max, scope, doc) ENUM_ARRAY_##kind(name)
ZKM_CONFIG_KEYS(ENUM_ARRAY)
#undef ENUM_ARRAY

#define ENUM_REF_U(n) .enums = NULL, .n_enums = 0
#define ENUM_REF_B(n) ENUM_REF_U(n)
#define ENUM_REF_S(n) ENUM_REF_U(n)
#define ENUM_REF_E(n)                                                                              \
    .enums = enum_names_##n, .n_enums = sizeof(enum_names_##n) / sizeof(enum_names_##n[0])
#define DEFAULT_U(d) .def_u = (uint64_t)(d)
#define DEFAULT_B(d) .def_u = (uint64_t)(d)
#define DEFAULT_E(d) .def_u = (uint64_t)(d)
#define DEFAULT_S(d) .def_s = (d)

#define KEY_ENTRY(name_, kind_, def_, min_, max_, scope_, doc_)                                    \
    {.name = #name_,                                                                               \
     .doc = doc_,                                                                                  \
     ENUM_REF_##kind_(name_),                                                                      \
     DEFAULT_##kind_(def_),                                                                        \
     .min = (uint64_t)(min_),                                                                      \
     .max = (uint64_t)(max_),                                                                      \
     .off = offsetof(struct zkm_config, name_),                                                    \
     .kind = KIND_##kind_,                                                                         \
     .scope = SCOPE_##scope_},
static const struct keydef keys[] = {ZKM_CONFIG_KEYS(KEY_ENTRY)};
#undef KEY_ENTRY

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

/* Every E default must name a value, every E range must match its names. */
#define CHECK_ENUM_U(n, d, mx)
#define CHECK_ENUM_B(n, d, mx)
#define CHECK_ENUM_S(n, d, mx)
#define CHECK_ENUM_E(n, d, mx)                                                                     \
    _Static_assert((d) < sizeof(enum_names_##n) / sizeof(enum_names_##n[0]) &&                     \
                       (mx) + 1 == sizeof(enum_names_##n) / sizeof(enum_names_##n[0]),             \
                   "enum " #n " default/range");
#define CHECK_ENUM(name, kind, def, min, max, scope, doc) CHECK_ENUM_##kind(name, def, max)
ZKM_CONFIG_KEYS(CHECK_ENUM)
#undef CHECK_ENUM

/* ------------------------------------------------------------------------------------ */
/* Heap-free, locale-free helpers                                                        */

static int ascii_lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
}

static int is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Case-insensitive equality of s[0..n) and the NUL-terminated word. */
static int word_eq(const char *s, size_t n, const char *word)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (word[i] == '\0' ||
            ascii_lower((unsigned char)s[i]) != ascii_lower((unsigned char)word[i]))
            return 0;
    return word[i] == '\0';
}

static int name_eq(const char *s, size_t n, const char *name)
{
    return strncmp(s, name, n) == 0 && name[n] == '\0';
}

static const struct keydef *find_key(const char *s, size_t n)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (name_eq(s, n, keys[i].name))
            return &keys[i];
    return NULL;
}

enum bad {
    BAD_NONE,
    BAD_INTEGER, /* not decimal digits */
    BAD_RANGE,
    BAD_BOOL,
    BAD_ENUM,
    BAD_TOO_LONG,
    BAD_CHAR, /* control character or quote inside a string */
    BAD_EMPTY,
};

union value {
    uint64_t u;
    uint32_t u32;
    char s[ZKM_CONFIG_STR_MAX];
};

static enum bad parse_value(const struct keydef *k, const char *v, size_t n, union value *out)
{
    switch (k->kind) {
    case KIND_U: {
        uint64_t x = 0;
        if (n == 0)
            return BAD_EMPTY;
        for (size_t i = 0; i < n; i++) {
            unsigned d = (unsigned char)v[i] - '0';
            if (d > 9)
                return BAD_INTEGER;
            if (x > (UINT64_MAX - d) / 10)
                return BAD_RANGE;
            x = x * 10 + d;
        }
        if (x < k->min || x > k->max)
            return BAD_RANGE;
        out->u = x;
        return BAD_NONE;
    }
    case KIND_B: {
        static const char *const yes[] = {"yes", "true", "on", "1"};
        static const char *const no[] = {"no", "false", "off", "0"};
        if (n == 0)
            return BAD_EMPTY;
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
            if (word_eq(v, n, yes[i])) {
                out->u32 = 1;
                return BAD_NONE;
            }
            if (word_eq(v, n, no[i])) {
                out->u32 = 0;
                return BAD_NONE;
            }
        }
        return BAD_BOOL;
    }
    case KIND_E:
        if (n == 0)
            return BAD_EMPTY;
        for (uint32_t i = 0; i < k->n_enums; i++) {
            if (word_eq(v, n, k->enums[i])) {
                if (i < k->min || i > k->max)
                    return BAD_RANGE;
                out->u32 = i;
                return BAD_NONE;
            }
        }
        return BAD_ENUM;
    case KIND_S:
    default:
        if (n >= ZKM_CONFIG_STR_MAX)
            return BAD_TOO_LONG;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)v[i];
            if (c < 0x20 || c == 0x7f || c == '"' || c == '\'')
                return BAD_CHAR;
        }
        memcpy(out->s, v, n);
        out->s[n] = '\0';
        return BAD_NONE;
    }
}

static void store_value(struct zkm_config *cfg, const struct keydef *k, const union value *v)
{
    char *field = (char *)cfg + k->off;
    switch (k->kind) {
    case KIND_U:
        memcpy(field, &v->u, sizeof(uint64_t));
        break;
    case KIND_B:
    case KIND_E:
        memcpy(field, &v->u32, sizeof(uint32_t));
        break;
    default:
        memcpy(field, v->s, strlen(v->s) + 1);
        break;
    }
}

static int scope_ok(const struct keydef *k, int for_daemon)
{
    return (k->scope & (for_daemon ? SCOPE_D : SCOPE_C)) != 0;
}

void zkm_config_defaults(struct zkm_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct keydef *k = &keys[i];
        union value v;
        if (k->kind == KIND_S) {
            size_t n = strlen(k->def_s);
            memcpy(v.s, k->def_s, n + 1);
        } else if (k->kind == KIND_U) {
            v.u = k->def_u;
        } else {
            v.u32 = (uint32_t)k->def_u;
        }
        store_value(cfg, k, &v);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Environment (client; runs inside malloc)                                              */

/* Does env entry `e` name key k as ZKMEM_<KEY>=? Returns the value or NULL. */
static const char *env_match(const char *e, const struct keydef *k)
{
    const char *n = k->name;
    for (; *n; n++, e++) {
        int up = (*n >= 'a' && *n <= 'z') ? *n - 'a' + 'A' : *n;
        if (*e != up)
            return NULL;
    }
    return *e == '=' ? e + 1 : NULL;
}

int zkm_config_from_env(struct zkm_config *cfg, char *const *envp, const char **bad_key)
{
    int rc = 0;

    if (!envp)
        envp = environ;
    if (!envp)
        return 0;
    for (; *envp; envp++) {
        const char *e = *envp;
        if (strncmp(e, "ZKMEM_", 6) != 0)
            continue;
        for (size_t i = 0; i < N_KEYS; i++) {
            const struct keydef *k = &keys[i];
            const char *val = env_match(e + 6, k);
            if (!val)
                continue;
            if (scope_ok(k, 0)) {
                union value v;
                if (parse_value(k, val, strlen(val), &v) == BAD_NONE) {
                    store_value(cfg, k, &v);
                } else if (rc == 0) {
                    rc = -EINVAL;
                    if (bad_key)
                        *bad_key = k->name;
                }
            }
            break;
        }
    }
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Messages (file, tune and daemon paths only)                                           */

static size_t edit_distance(const char *a, size_t la, const char *b)
{
    size_t lb = strlen(b);
    size_t row[64];
    if (la >= 63 || lb >= 63)
        return (size_t)-1;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = ascii_lower((unsigned char)a[i - 1]) == b[j - 1] ||
                                  (a[i - 1] == '-' && b[j - 1] == '_')
                              ? 0
                              : 1;
            size_t best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const struct keydef *suggest(const char *s, size_t n)
{
    const struct keydef *best = NULL;
    size_t best_d = (size_t)-1;
    size_t limit = n / 3 > 2 ? n / 3 : 2;
    for (size_t i = 0; i < N_KEYS; i++) {
        size_t d = edit_distance(s, n, keys[i].name);
        if (d < best_d) {
            best_d = d;
            best = &keys[i];
        }
    }
    return best_d <= limit ? best : NULL;
}

/* Append to err (bounded). */
#define ERRF(...)                                                                                  \
    do {                                                                                           \
        if (err && errlen) {                                                                       \
            size_t used_ = strnlen(err, errlen);                                                   \
            if (used_ < errlen)                                                                    \
                snprintf(err + used_, errlen - used_, __VA_ARGS__);                                \
        }                                                                                          \
    } while (0)

static void explain_bad(const struct keydef *k, const char *v, size_t n, enum bad why, char *err,
                        size_t errlen)
{
    int shown = n > 64 ? 64 : (int)n;
    const char *ell = n > 64 ? "..." : "";

    switch (why) {
    case BAD_EMPTY:
        ERRF("%s: missing value", k->name);
        return;
    case BAD_INTEGER:
        ERRF("%s = %.*s%s: not an unsigned decimal integer (no signs or unit suffixes; "
             "the unit is in the key name)",
             k->name, shown, v, ell);
        return;
    case BAD_RANGE:
        if (k->kind == KIND_E)
            ERRF("%s = %.*s%s: not allowed here", k->name, shown, v, ell);
        else
            ERRF("%s = %.*s%s: out of range %llu..%llu", k->name, shown, v, ell,
                 (unsigned long long)k->min, (unsigned long long)k->max);
        return;
    case BAD_BOOL:
        ERRF("%s = %.*s%s: not a boolean (use yes/no, true/false, on/off or 1/0)", k->name, shown,
             v, ell);
        return;
    case BAD_ENUM:
        ERRF("%s = %.*s%s: unknown value (one of: ", k->name, shown, v, ell);
        for (uint32_t i = 0; i < k->n_enums; i++)
            ERRF("%s%s", i ? ", " : "", k->enums[i]);
        ERRF(")");
        return;
    case BAD_TOO_LONG:
        ERRF("%s: value too long (%zu bytes, at most %d)", k->name, n, ZKM_CONFIG_STR_MAX - 1);
        return;
    case BAD_CHAR:
        ERRF("%s: value contains a quote or control character", k->name);
        return;
    default:
        return;
    }
}

static void explain_scope(const struct keydef *k, int for_daemon, char *err, size_t errlen)
{
    if (for_daemon) {
        char env[64];
        size_t i;
        for (i = 0; k->name[i] && i < sizeof(env) - 1; i++)
            env[i] = (char)(k->name[i] >= 'a' && k->name[i] <= 'z' ? k->name[i] - 32 : k->name[i]);
        env[i] = '\0';
        ERRF("'%s' is a client setting, not a daemon one (set ZKMEM_%s in the client's "
             "environment)",
             k->name, env);
    } else {
        ERRF("'%s' is a daemon setting, not a client one (set it in zkmemd.conf)", k->name);
    }
}

static void explain_unknown(const char *key, size_t n, char *err, size_t errlen)
{
    const struct keydef *s = suggest(key, n);
    int shown = n > 64 ? 64 : (int)n;
    if (s)
        ERRF("unknown key '%.*s' (did you mean '%s'?)", shown, key, s->name);
    else
        ERRF("unknown key '%.*s' (see zkmemd --print-config for every key)", shown, key);
}

/* Set key[0..kn) from v[0..vn) into cfg; message into err (appended) on failure. */
static int set_one(struct zkm_config *cfg, const char *key, size_t kn, const char *v, size_t vn,
                   int for_daemon, const struct keydef **ret_k, char *err, size_t errlen)
{
    const struct keydef *k = find_key(key, kn);
    union value val;
    enum bad why;

    if (!k) {
        explain_unknown(key, kn, err, errlen);
        return -ENOENT;
    }
    if (ret_k)
        *ret_k = k;
    if (!scope_ok(k, for_daemon)) {
        explain_scope(k, for_daemon, err, errlen);
        return -EPERM;
    }
    why = parse_value(k, v, vn, &val);
    if (why != BAD_NONE) {
        explain_bad(k, v, vn, why, err, errlen);
        return why == BAD_RANGE ? -ERANGE : -EINVAL;
    }
    store_value(cfg, k, &val);
    return 0;
}

int zkm_config_set(struct zkm_config *cfg, const char *key, const char *value, int for_daemon,
                   char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!cfg || !key || !value)
        return -EINVAL;
    int r = set_one(cfg, key, strlen(key), value, strlen(value), for_daemon, NULL, err, errlen);
    return r < 0 ? -EINVAL : 0;
}

/* ------------------------------------------------------------------------------------ */
/* Files                                                                                 */

static int is_key_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

/* Parse one line [s, e). Returns 0, or -EINVAL with the message (without the prefix). */
static int parse_line(struct zkm_config *cfg, const char *s, const char *e, int for_daemon,
                      unsigned line, unsigned *seen, char *err, size_t errlen)
{
    while (s < e && is_space((unsigned char)*s))
        s++;
    while (e > s && is_space((unsigned char)e[-1]))
        e--;
    if (s == e || *s == '#')
        return 0;

    const char *key = s;
    while (s < e && is_key_char((unsigned char)*s))
        s++;
    size_t kn = (size_t)(s - key);
    while (s < e && is_space((unsigned char)*s))
        s++;
    if (kn == 0 || s == e || *s != '=') {
        int n = (int)(e - key > 60 ? 60 : e - key);
        ERRF("expected 'key = value', got '%.*s%s'", n, key, e - key > 60 ? "..." : "");
        return -EINVAL;
    }
    s++;
    while (s < e && is_space((unsigned char)*s))
        s++;

    const char *v = s, *ve;
    if (s < e && (*s == '"' || *s == '\'')) {
        char q = *s;
        v = s + 1;
        ve = memchr(v, q, (size_t)(e - v));
        if (!ve) {
            ERRF("%.*s: unterminated quote", (int)kn, key);
            return -EINVAL;
        }
        const char *t = ve + 1;
        while (t < e && is_space((unsigned char)*t))
            t++;
        if (t < e && *t != '#') {
            ERRF("%.*s: unexpected text after the closing quote", (int)kn, key);
            return -EINVAL;
        }
    } else {
        ve = memchr(v, '#', (size_t)(e - v));
        if (!ve)
            ve = e;
        while (ve > v && is_space((unsigned char)ve[-1]))
            ve--;
    }

    const struct keydef *k = find_key(key, kn);
    if (k && seen[k - keys]) {
        ERRF("duplicate key '%s' (already set on line %u)", k->name, seen[k - keys]);
        return -EINVAL;
    }
    if (set_one(cfg, key, kn, v, (size_t)(ve - v), for_daemon, NULL, err, errlen) < 0)
        return -EINVAL;
    seen[k - keys] = line;
    return 0;
}

int zkm_config_parse_text(struct zkm_config *cfg, const char *text, const char *name,
                          int for_daemon, char *err, size_t errlen)
{
    struct zkm_config tmp;
    unsigned seen[N_KEYS] = {0};
    unsigned line = 0;

    if (err && errlen)
        err[0] = '\0';
    if (!cfg || !text)
        return -EINVAL;
    if (!name)
        name = "<config>";
    memcpy(&tmp, cfg, sizeof(tmp));
    for (const char *s = text; *s;) {
        const char *e = strchr(s, '\n');
        if (!e)
            e = s + strlen(s);
        line++;
        ERRF("%s:%u: ", name, line);
        if (parse_line(&tmp, s, e, for_daemon, line, seen, err, errlen) < 0)
            return -EINVAL;
        if (err && errlen)
            err[0] = '\0';
        s = *e ? e + 1 : e;
    }
    memcpy(cfg, &tmp, sizeof(tmp));
    return 0;
}

#define CONFIG_FILE_MAX (1u << 20)

int zkm_config_load_file(struct zkm_config *cfg, const char *path, int for_daemon, char *err,
                         size_t errlen)
{
    char *buf;
    size_t n = 0;
    int fd, r;

    if (err && errlen)
        err[0] = '\0';
    if (!cfg || !path)
        return -EINVAL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r = -errno;
        ERRF("%s: cannot open: %s", path, strerror(-r));
        return r;
    }
    buf = malloc(CONFIG_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        ERRF("%s: out of memory", path);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t got = read(fd, buf + n, CONFIG_FILE_MAX + 1 - n);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            close(fd);
            free(buf);
            ERRF("%s: cannot read: %s", path, strerror(-r));
            return r;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > CONFIG_FILE_MAX) {
            close(fd);
            free(buf);
            ERRF("%s: larger than %u bytes; is this a config file?", path, CONFIG_FILE_MAX);
            return -EFBIG;
        }
    }
    close(fd);
    if (memchr(buf, '\0', n)) {
        free(buf);
        ERRF("%s: contains a NUL byte; is this a config file?", path);
        return -EINVAL;
    }
    buf[n] = '\0';
    r = zkm_config_parse_text(cfg, buf, path, for_daemon, err, errlen);
    free(buf);
    return r;
}

/* ------------------------------------------------------------------------------------ */
/* Formatting                                                                            */

/* One `key = value[  # doc]` line with '\n' into out; returns snprintf's count. */
static int format_line(const struct zkm_config *cfg, const struct keydef *k, char *out, size_t len,
                       int with_docs)
{
    const char *field = (const char *)cfg + k->off;
    char val[ZKM_CONFIG_STR_MAX + 8];
    char rng[160] = "";
    uint64_t u;
    uint32_t u32;

    switch (k->kind) {
    case KIND_U:
        memcpy(&u, field, sizeof(u));
        snprintf(val, sizeof(val), "%llu", (unsigned long long)u);
        snprintf(rng, sizeof(rng), " [%llu..%llu]", (unsigned long long)k->min,
                 (unsigned long long)k->max);
        break;
    case KIND_B:
        memcpy(&u32, field, sizeof(u32));
        snprintf(val, sizeof(val), "%s", u32 ? "yes" : "no");
        snprintf(rng, sizeof(rng), " [yes|no]");
        break;
    case KIND_E: {
        memcpy(&u32, field, sizeof(u32));
        snprintf(val, sizeof(val), "%s", u32 < k->n_enums ? k->enums[u32] : "?");
        size_t used = 0;
        for (uint32_t i = 0; i < k->n_enums && used < sizeof(rng); i++)
            used += (size_t)snprintf(rng + used, sizeof(rng) - used, "%s%s", i ? "|" : " [",
                                     k->enums[i]);
        if (used < sizeof(rng))
            snprintf(rng + used, sizeof(rng) - used, "]");
        break;
    }
    default:
        snprintf(val, sizeof(val), "\"%.*s\"", ZKM_CONFIG_STR_MAX - 1, field);
        break;
    }
    if (with_docs)
        return snprintf(out, len, "%s = %s  # %s%s\n", k->name, val, k->doc, rng);
    return snprintf(out, len, "%s = %s\n", k->name, val);
}

/*
 * Returns the length written (without the NUL), or -ENOSPC if buf is too small (it then
 * holds as many whole lines as fit).
 */
int zkm_config_format(const struct zkm_config *cfg, char *buf, size_t len, int with_docs)
{
    size_t used = 0;

    if (!cfg || !buf || len == 0)
        return -EINVAL;
    buf[0] = '\0';
    for (size_t i = 0; i < N_KEYS; i++) {
        int n = format_line(cfg, &keys[i], buf + used, len - used, with_docs);
        if (n < 0 || (size_t)n >= len - used) {
            buf[used] = '\0';
            return -ENOSPC;
        }
        used += (size_t)n;
    }
    return (int)used;
}

void zkm_config_print(const struct zkm_config *cfg, FILE *out)
{
    char line[1024];
    for (size_t i = 0; i < N_KEYS; i++) {
        format_line(cfg, &keys[i], line, sizeof(line), 1);
        fputs(line, out);
    }
}
