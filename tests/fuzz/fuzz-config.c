/* SPDX-License-Identifier: MIT */
/*
 * fuzz-config.c - libFuzzer target for the config parser (proto/config.c).
 *
 * Input: byte 0 bit 0 = for_daemon, bit 1 = with_docs for the re-format, bits 2-7 pick
 * the error buffer size (1..64, or 256); the rest is the config text (NUL-terminated copy;
 * an embedded NUL simply ends the text, as it would for a C string).
 *
 * Asserted:
 *   - parse never crashes and returns 0 or -EINVAL;
 *   - on error: a message was written, it is NUL-terminated inside the buffer, one line
 *     (no '\n'), and the caller's config is untouched;
 *   - on success: zkm_config_format() of the result, reduced to the keys of the same scope
 *     (format writes every key; a daemon rejects client keys and the other way round),
 *     parses back to a config equal to the first, key by key; and formatting that gives
 *     the same text again (a fixed point);
 *   - the same text split into lines is also fed to zkm_config_from_env() as an
 *     environment: it returns 0 or -EINVAL naming a client key, and what it stored
 *     formats and parses back as a valid client config.
 */
#include "fuzz.h"
#include "zkm_config.h"

#include <errno.h>
#include <string.h>

#define SCOPE_D  1
#define SCOPE_C  2
#define SCOPE_DC 3

static const struct {
    const char *name;
    int scope;
} key_scopes[] = {
#define KEY_SCOPE(name, kind, def, min, max, scope, doc) {#name, SCOPE_##scope},
    ZKM_CONFIG_KEYS(KEY_SCOPE)
#undef KEY_SCOPE
};

static int line_in_scope(const char *line, size_t n, int for_daemon)
{
    for (size_t i = 0; i < sizeof(key_scopes) / sizeof(key_scopes[0]); i++) {
        size_t kn = strlen(key_scopes[i].name);
        if (kn < n && !memcmp(line, key_scopes[i].name, kn) && line[kn] == ' ')
            return (key_scopes[i].scope & (for_daemon ? SCOPE_D : SCOPE_C)) != 0;
    }
    FUZZ_CHECK(!"zkm_config_format wrote a line that names no key");
    return 0;
}

/* Keep the lines of `text` whose key is in scope. */
static void filter_scope(const char *text, char *out, int for_daemon)
{
    for (const char *s = text; *s;) {
        const char *e = strchr(s, '\n');
        FUZZ_CHECK(e); /* every formatted line ends in '\n' */
        if (line_in_scope(s, (size_t)(e - s), for_daemon)) {
            memcpy(out, s, (size_t)(e - s + 1));
            out += e - s + 1;
        }
        s = e + 1;
    }
    *out = '\0';
}

static int config_equal(const struct zkm_config *a, const struct zkm_config *b)
{
#define CMP_U(n)                                   (a->n == b->n)
#define CMP_B(n)                                   (a->n == b->n)
#define CMP_E(n)                                   (a->n == b->n)
#define CMP_S(n)                                   (strncmp(a->n, b->n, ZKM_CONFIG_STR_MAX) == 0)
#define CMP(name, kind, def, min, max, scope, doc) &&CMP_##kind(name)
    return 1 ZKM_CONFIG_KEYS(CMP);
#undef CMP
}

static char fmt1[64 * 1024], fmt2[64 * 1024], filtered[64 * 1024];

/* Format cfg, keep the keys of one scope, parse that back and compare. */
static void check_round_trip(const struct zkm_config *cfg, int for_daemon, int with_docs)
{
    struct zkm_config back;
    int n1 = zkm_config_format(cfg, fmt1, sizeof(fmt1), with_docs);
    FUZZ_CHECK(n1 > 0 && (size_t)n1 == strlen(fmt1));
    filter_scope(fmt1, filtered, for_daemon);

    zkm_config_defaults(&back);
    char err[256];
    int r = zkm_config_parse_text(&back, filtered, "formatted", for_daemon, err, sizeof(err));
    if (r) {
        fprintf(stderr, "formatted config does not parse back: %s\n---\n%s---\n", err, filtered);
        abort();
    }
    FUZZ_CHECK(config_equal(cfg, &back));
    int n2 = zkm_config_format(&back, fmt2, sizeof(fmt2), with_docs);
    FUZZ_CHECK(n2 == n1 && !memcmp(fmt1, fmt2, (size_t)n1));
}

/* The client's environment path: each line of the text is one environment entry. */
static void fuzz_env(char *text)
{
    char *envp[65];
    int n = 0;
    for (char *s = text, *save = NULL, *tok = strtok_r(s, "\n", &save); tok && n < 64;
         tok = strtok_r(NULL, "\n", &save))
        envp[n++] = tok;
    envp[n] = NULL;

    struct zkm_config cfg;
    zkm_config_defaults(&cfg);
    const char *bad = NULL;
    int r = zkm_config_from_env(&cfg, envp, &bad);
    FUZZ_CHECK(r == 0 || r == -EINVAL);
    if (r) {
        FUZZ_CHECK(bad);
        int known = 0;
        for (size_t i = 0; i < sizeof(key_scopes) / sizeof(key_scopes[0]); i++)
            known |= !strcmp(bad, key_scopes[i].name) && (key_scopes[i].scope & SCOPE_C);
        FUZZ_CHECK(known);
    } else {
        FUZZ_CHECK(!bad);
    }
    /* whatever the environment set is a valid client config */
    check_round_trip(&cfg, 0, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int for_daemon = data[0] & 1;
    int with_docs = (data[0] >> 1) & 1;
    size_t errlen = (data[0] >> 2) == 63 ? 256 : 1 + (data[0] >> 2);

    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';

    struct zkm_config cfg, before;
    zkm_config_defaults(&cfg);
    memcpy(&before, &cfg, sizeof(cfg));
    char *err = malloc(errlen); /* exact size: an overflow is an ASan report */
    FUZZ_CHECK(err);
    memset(err, 'X', errlen);

    int r = zkm_config_parse_text(&cfg, text, "fuzz.conf", for_daemon, err, errlen);
    FUZZ_CHECK(r == 0 || r == -EINVAL);
    FUZZ_CHECK(memchr(err, '\0', errlen));
    if (r) {
        FUZZ_CHECK(!strchr(err, '\n'));
        FUZZ_CHECK(errlen == 1 || err[0] != '\0');
        FUZZ_CHECK(!memcmp(&cfg, &before, sizeof(cfg)));
        goto out;
    }
    FUZZ_CHECK(err[0] == '\0');

    check_round_trip(&cfg, for_daemon, with_docs);
    int n1 = (int)strlen(fmt1);

    /* a buffer too small fails cleanly with whole lines and a terminator */
    size_t small = (size_t)data[size - 1] % (size_t)n1 + 1;
    char *tight = malloc(small);
    FUZZ_CHECK(tight);
    FUZZ_CHECK(zkm_config_format(&cfg, tight, small, with_docs) == -ENOSPC);
    size_t tl = strnlen(tight, small);
    FUZZ_CHECK(tl < small && (tl == 0 || tight[tl - 1] == '\n') && !memcmp(tight, fmt1, tl));
    free(tight);
out:
    /* the same bytes as ZKMEM_* environment entries (strtok_r cuts the text up: last) */
    fuzz_env(text);
    free(err);
    free(text);
    return 0;
}
