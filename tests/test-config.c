/* SPDX-License-Identifier: MIT */
/* test-config.c - the config parser (proto/config.c): defaults, every kind, every error
 * class with its message, scope, round trip through zkm_config_format, the environment
 * path and the shipped systemd/zkmemd.conf. */
#include "zkm_config.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * zkm_config_from_env() runs inside malloc: it must not allocate. Count heap calls made
 * while `heap_armed` is set by interposing the malloc family on top of glibc's own
 * (__libc_*). Not under ASan, which owns malloc itself.
 */
#if defined(__SANITIZE_ADDRESS__)
#define ZKM_NO_HEAP_COUNT 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) ||                         \
    __has_feature(thread_sanitizer)
#define ZKM_NO_HEAP_COUNT 1
#endif
#elif defined(__SANITIZE_THREAD__)
#define ZKM_NO_HEAP_COUNT 1
#endif

static volatile int heap_armed;
static volatile unsigned heap_calls;
#ifndef ZKM_NO_HEAP_COUNT
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
void *malloc(size_t n)
{
    if (heap_armed)
        heap_calls++;
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size)
{
    if (heap_armed)
        heap_calls++;
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t n)
{
    if (heap_armed)
        heap_calls++;
    return __libc_realloc(p, n);
}
#endif

/* Key names and kinds from the one list, for the table-driven tests. */
struct tkey {
    const char *name;
    char kind;
    char scope_d, scope_c;
};
#define TK_SCOPE_D                                1, 0
#define TK_SCOPE_C                                0, 1
#define TK_SCOPE_DC                               1, 1
#define TK(name, kind, def, min, max, scope, doc) {#name, #kind[0], TK_SCOPE_##scope},
static const struct tkey tkeys[] = {ZKM_CONFIG_KEYS(TK)};
#undef TK
#define N_TKEYS (sizeof(tkeys) / sizeof(tkeys[0]))

static char err[512];

static int parse(struct zkm_config *c, const char *text, int for_daemon)
{
    return zkm_config_parse_text(c, text, "t.conf", for_daemon, err, sizeof(err));
}

/* Parse `text` into a fresh default config and expect failure with exactly `msg`. */
static void expect_error(const char *text, int for_daemon, const char *msg)
{
    struct zkm_config c, before;
    zkm_config_defaults(&c);
    before = c;
    ck_assert_int_eq(parse(&c, text, for_daemon), -EINVAL);
    ck_assert_str_eq(err, msg);
    ck_assert_msg(memcmp(&c, &before, sizeof(c)) == 0, "config changed on error: %s", text);
}

START_TEST(test_defaults)
{
    struct zkm_config c;
    memset(&c, 0xa5, sizeof(c));
    zkm_config_defaults(&c);
    ck_assert_str_eq(c.runtime_dir, "/run/zkmem");
    ck_assert_uint_eq(c.mode, 1);
    ck_assert_uint_eq(c.slab_pages, 1);
    ck_assert_uint_eq(c.fallback_mb, 1024);
    ck_assert_uint_eq(c.grant_depth, 4);
    ck_assert_uint_eq(c.enable_compaction, 1);
    ck_assert_uint_eq(c.require_hugepages, 0);
    ck_assert_uint_eq(c.log_level, 2);
    ck_assert_str_eq(c.admin_group, "zkmem-admin");
    ck_assert_str_eq(c.socket, "");
    ck_assert_uint_eq(c.small_threshold, 256);
}
END_TEST

START_TEST(test_every_kind)
{
    struct zkm_config c;
    zkm_config_defaults(&c);
    ck_assert_int_eq(parse(&c,
                           "# a comment\n"
                           "\n"
                           "   grant_depth   =   17   \n"
                           "memory_budget_mb=4096 # trailing comment\n"
                           "require_hugepages = yes\n"
                           "enable_bpf = OFF\n"
                           "enable_tuning = false\r\n"
                           "allow_other_uids = 0\n"
                           "mode = monitoring\n"
                           "log_level = Debug\n"
                           "runtime_dir = \"/tmp/zk # not a comment\"  # a comment\n"
                           "admin_group = 'wheel'\n"
                           "small_threshold = 512",
                           1),
                     0);
    ck_assert_uint_eq(c.grant_depth, 17);
    ck_assert_uint_eq(c.memory_budget_mb, 4096);
    ck_assert_uint_eq(c.require_hugepages, 1);
    ck_assert_uint_eq(c.enable_bpf, 0);
    ck_assert_uint_eq(c.enable_tuning, 0);
    ck_assert_uint_eq(c.allow_other_uids, 0);
    ck_assert_uint_eq(c.mode, 2);
    ck_assert_uint_eq(c.log_level, 3);
    ck_assert_str_eq(c.runtime_dir, "/tmp/zk # not a comment");
    ck_assert_str_eq(c.admin_group, "wheel");
    ck_assert_uint_eq(c.small_threshold, 512);
    /* untouched keys keep their defaults */
    ck_assert_uint_eq(c.tick_ms, 50);

    /* every boolean spelling */
    static const char *const yes[] = {"yes", "true", "on", "1", "YES", "True"};
    static const char *const no[] = {"no", "false", "off", "0", "No", "FALSE"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        ck_assert_int_eq(zkm_config_set(&c, "verbose", yes[i], 0, err, sizeof(err)), 0);
        ck_assert_uint_eq(c.verbose, 1);
        ck_assert_int_eq(zkm_config_set(&c, "verbose", no[i], 0, err, sizeof(err)), 0);
        ck_assert_uint_eq(c.verbose, 0);
    }
    /* range edges are inclusive; empty string allowed for strings */
    ck_assert_int_eq(zkm_config_set(&c, "grant_depth", "64", 1, err, sizeof(err)), 0);
    ck_assert_int_eq(zkm_config_set(&c, "grant_depth", "0", 1, err, sizeof(err)), 0);
    ck_assert_int_eq(zkm_config_set(&c, "socket", "", 0, err, sizeof(err)), 0);
    ck_assert_str_eq(c.socket, "");
    ck_assert_int_eq(parse(&c, "socket = \"\"\n", 0), 0);
    ck_assert_str_eq(c.socket, "");
}
END_TEST

START_TEST(test_errors)
{
    expect_error("slab_pages = 2\nslab_page = 4\n", 1,
                 "t.conf:2: unknown key 'slab_page' (did you mean 'slab_pages'?)");
    expect_error("grant-depth = 4\n", 1,
                 "t.conf:1: unknown key 'grant-depth' (did you mean 'grant_depth'?)");
    expect_error("frobnicate = 1\n", 1,
                 "t.conf:1: unknown key 'frobnicate' (see zkmemd --print-config for every key)");
    expect_error("\n\n# x\ngrant_depth = 900\n", 1,
                 "t.conf:4: grant_depth = 900: out of range 0..64");
    expect_error("max_clients = 0\n", 1, "t.conf:1: max_clients = 0: out of range 1..1048576");
    expect_error("grant_depth = 99999999999999999999999\n", 1,
                 "t.conf:1: grant_depth = 99999999999999999999999: out of range 0..64");
    expect_error("fallback_mb = 2G\n", 1,
                 "t.conf:1: fallback_mb = 2G: not an unsigned decimal integer (no signs or unit "
                 "suffixes; the unit is in the key name)");
    expect_error("grant_depth = -1\n", 1,
                 "t.conf:1: grant_depth = -1: not an unsigned decimal integer (no signs or unit "
                 "suffixes; the unit is in the key name)");
    expect_error("enable_bpf = maybe\n", 1,
                 "t.conf:1: enable_bpf = maybe: not a boolean (use yes/no, true/false, on/off or "
                 "1/0)");
    expect_error("mode = fast\n", 1,
                 "t.conf:1: mode = fast: unknown value (one of: high_performance, balanced, "
                 "monitoring)");
    expect_error("grant_depth =\n", 1, "t.conf:1: grant_depth: missing value");
    expect_error("grant_depth = 1\ntick_ms = 5\ngrant_depth = 2\n", 1,
                 "t.conf:3: duplicate key 'grant_depth' (already set on line 1)");
    expect_error("just some words\n", 1, "t.conf:1: expected 'key = value', got 'just some words'");
    expect_error("= 5\n", 1, "t.conf:1: expected 'key = value', got '= 5'");
    expect_error("runtime_dir = \"/run/x\n", 1, "t.conf:1: runtime_dir: unterminated quote");
    expect_error("runtime_dir = \"/run/x\" junk\n", 1,
                 "t.conf:1: runtime_dir: unexpected text after the closing quote");

    char longv[400];
    memset(longv, 'a', sizeof(longv));
    memcpy(longv, "runtime_dir = ", 14);
    strcpy(longv + 14 + 300, "\n");
    expect_error(longv, 1, "t.conf:1: runtime_dir: value too long (300 bytes, at most 255)");
    expect_error("admin_group = a\"b\n", 1,
                 "t.conf:1: admin_group: value contains a quote or control character");

    /* scope: the daemon refuses client keys, the client refuses daemon keys */
    expect_error("tcache_small = 4\n", 1,
                 "t.conf:1: 'tcache_small' is a client setting, not a daemon one (set "
                 "ZKMEM_TCACHE_SMALL in the client's environment)");
    expect_error("decay_ms = 4\n", 0,
                 "t.conf:1: 'decay_ms' is a daemon setting, not a client one (set it in "
                 "zkmemd.conf)");

    /* zkm_config_set: the same messages without the file prefix, cfg untouched */
    struct zkm_config c;
    zkm_config_defaults(&c);
    ck_assert_int_eq(zkm_config_set(&c, "grant_depth", "65", 1, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "grant_depth = 65: out of range 0..64");
    ck_assert_uint_eq(c.grant_depth, 4);
    ck_assert_int_eq(zkm_config_set(&c, "tick_msec", "5", 1, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "unknown key 'tick_msec' (did you mean 'tick_ms'?)");

    /* a tiny error buffer truncates, never overflows */
    char small[8];
    memset(small, 'x', sizeof(small));
    ck_assert_int_eq(zkm_config_parse_text(&c, "nope = 1", "t", 1, small, sizeof(small)), -EINVAL);
    ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
}
END_TEST

/* Put a non-default value in every key (per kind), format, parse back, compare. */
START_TEST(test_round_trip)
{
    struct zkm_config a, b;
    static char buf[32768];

    for (int with_docs = 0; with_docs <= 1; with_docs++) {
        zkm_config_defaults(&a);
        a.slab_pages = 512;
        a.memory_budget_mb = UINT64_MAX / 2;
        a.mode = 2;
        a.log_level = 0;
        a.require_hugepages = 1;
        a.enable_bpf = 0;
        strcpy(a.runtime_dir, "/tmp/with space#hash");
        strcpy(a.socket, "");
        strcpy(a.admin_group, "  padded  ");
        int n = zkm_config_format(&a, buf, sizeof(buf), with_docs);
        ck_assert_int_gt(n, 0);
        ck_assert_uint_eq(strlen(buf), (size_t)n);
        /* deterministic: the same config gives the same bytes */
        static char buf2[32768];
        ck_assert_int_eq(zkm_config_format(&a, buf2, sizeof(buf2), with_docs), n);
        ck_assert_str_eq(buf, buf2);
        /* every key once, in list order */
        const char *p = buf;
        for (size_t i = 0; i < N_TKEYS; i++) {
            size_t kl = strlen(tkeys[i].name);
            ck_assert_msg(strncmp(p, tkeys[i].name, kl) == 0 && p[kl] == ' ', "line %zu is not %s",
                          i, tkeys[i].name);
            p = strchr(p, '\n') + 1;
        }
        ck_assert_str_eq(p, "");
        if (with_docs)
            ck_assert_ptr_nonnull(strstr(buf, "grant_depth = 4  # slabs pre-granted per client "
                                              "and node at start; the tuner then follows "
                                              "demand (0: none) [0..64]\n"));
        /* parse back: as "both" scopes, key by key via the right side */
        zkm_config_defaults(&b);
        memset(b.runtime_dir, 0, sizeof(b.runtime_dir));
        char *line = buf;
        unsigned lineno = 0;
        while (*line) {
            char *nl = strchr(line, '\n');
            *nl = '\0';
            lineno++;
            size_t i = lineno - 1;
            int r = zkm_config_parse_text(&b, line, "rt", tkeys[i].scope_d, err, sizeof(err));
            ck_assert_msg(r == 0, "round trip line %u: %s", lineno, err);
            line = nl + 1;
        }
        static char buf3[32768];
        ck_assert_int_gt(zkm_config_format(&a, buf2, sizeof(buf2), 1), 0);
        ck_assert_int_gt(zkm_config_format(&b, buf3, sizeof(buf3), 1), 0);
        ck_assert_str_eq(buf2, buf3);
        ck_assert_str_eq(b.runtime_dir, a.runtime_dir);
        ck_assert_str_eq(b.admin_group, "  padded  ");
        ck_assert_uint_eq(b.memory_budget_mb, UINT64_MAX / 2);
        ck_assert_uint_eq(b.slab_pages, 512);
        ck_assert_uint_eq(b.mode, 2);
        ck_assert_uint_eq(b.log_level, 0);
        ck_assert_uint_eq(b.require_hugepages, 1);
        ck_assert_uint_eq(b.enable_bpf, 0);
    }

    /* too small a buffer: -ENOSPC with whole lines only */
    char tiny[40];
    zkm_config_defaults(&a);
    ck_assert_int_eq(zkm_config_format(&a, tiny, sizeof(tiny), 0), -ENOSPC);
    ck_assert_str_eq(tiny, "runtime_dir = \"/run/zkmem\"\n");
}
END_TEST

START_TEST(test_env)
{
    struct zkm_config c, d;
    const char *bad = NULL;
    char *env[] = {
        "PATH=/usr/bin",
        "ZKMEM_TCACHE_SMALL=17",
        "ZKMEM_SOCKET=/tmp/s.sock",
        "ZKMEM_MODE=high_performance",
        "ZKMEM_REQUIRE_DAEMON=on",
        "ZKMEM_RUNTIME_DIR=/elsewhere",  /* daemon-only: not applied, not an error */
        "ZKMEM_DAEMON=/usr/sbin/zkmemd", /* not a key: ignored */
        "ZKMEM_tcache_medium=5",         /* lower case: not a key */
        "ZKMEM_TCACHE=9",                /* prefix of a key: not a key */
        NULL,
    };

    zkm_config_defaults(&c);
#ifndef ZKM_NO_HEAP_COUNT
    /* the counter works: a real allocation is seen */
    heap_calls = 0;
    heap_armed = 1;
    void *volatile probe = malloc(16);
    heap_armed = 0;
    free(probe);
    ck_assert_uint_eq(heap_calls, 1);
#else
    fprintf(stderr, "test_env: heap-call check skipped: sanitizer build owns malloc\n");
#endif
    heap_calls = 0;
    heap_armed = 1;
    int r = zkm_config_from_env(&c, env, &bad);
    heap_armed = 0;
    ck_assert_int_eq(r, 0);
    ck_assert_uint_eq(heap_calls, 0);
    ck_assert_ptr_null(bad);
    ck_assert_uint_eq(c.tcache_small, 17);
    ck_assert_str_eq(c.socket, "/tmp/s.sock");
    ck_assert_uint_eq(c.mode, 0);
    ck_assert_uint_eq(c.require_daemon, 1);
    ck_assert_str_eq(c.runtime_dir, "/run/zkmem");
    ck_assert_uint_eq(c.tcache_medium, 64);

    char *env_bad[] = {
        "ZKMEM_VERBOSE=1",          "ZKMEM_SMALL_THRESHOLD=8", /* below 16: first bad */
        "ZKMEM_TCACHE_MEDIUM=lots", "ZKMEM_LARGE_THRESHOLD=2048", NULL,
    };
    zkm_config_defaults(&c);
    d = c;
    ck_assert_int_eq(zkm_config_from_env(&c, env_bad, &bad), -EINVAL);
    ck_assert_str_eq(bad, "small_threshold");
    ck_assert_uint_eq(c.small_threshold, d.small_threshold);
    ck_assert_uint_eq(c.tcache_medium, d.tcache_medium);
    ck_assert_uint_eq(c.verbose, 1);
    ck_assert_uint_eq(c.large_threshold, 2048);

    /* NULL envp reads environ */
    setenv("ZKMEM_TCACHE_MEDIUM", "33", 1);
    zkm_config_defaults(&c);
    bad = NULL;
    ck_assert_int_eq(zkm_config_from_env(&c, NULL, &bad), 0);
    ck_assert_uint_eq(c.tcache_medium, 33);
    unsetenv("ZKMEM_TCACHE_MEDIUM");
}
END_TEST

START_TEST(test_load_file)
{
    struct zkm_config c;
    char path[] = "/tmp/zkm-test-config-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *text = "grant_depth = 8\n\ntick_ms = 0\n";
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);

    zkm_config_defaults(&c);
    ck_assert_int_eq(zkm_config_load_file(&c, path, 1, err, sizeof(err)), -EINVAL);
    char want[256];
    snprintf(want, sizeof(want), "%s:3: tick_ms = 0: out of range 1..10000", path);
    ck_assert_str_eq(err, want);
    ck_assert_uint_eq(c.grant_depth, 4); /* untouched on error */
    unlink(path);

    ck_assert_int_eq(zkm_config_load_file(&c, "/nonexistent/zkmemd.conf", 1, err, sizeof(err)),
                     -ENOENT);
    ck_assert_str_eq(err, "/nonexistent/zkmemd.conf: cannot open: No such file or directory");
}
END_TEST

/* systemd/zkmemd.conf: parses for the daemon, and names every daemon key (client keys may
 * only appear commented out, with their environment variable). */
START_TEST(test_shipped_conf)
{
    const char *src = getenv("ZKMEM_SRCDIR");
    if (!src) {
        fprintf(stderr, "test_shipped_conf: skipped: ZKMEM_SRCDIR not set (run through meson)\n");
        return;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/systemd/zkmemd.conf", src);
    struct zkm_config c, def;
    zkm_config_defaults(&c);
    zkm_config_defaults(&def);
    int r = zkm_config_load_file(&c, path, 1, err, sizeof(err));
    ck_assert_msg(r == 0, "%s", err);
    ck_assert_msg(memcmp(&c, &def, sizeof(c)) == 0, "zkmemd.conf must hold the defaults");

    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    for (size_t i = 0; i < N_TKEYS; i++) {
        char pat[128];
        if (tkeys[i].scope_d)
            snprintf(pat, sizeof(pat), "\n%s = ", tkeys[i].name);
        else
            snprintf(pat, sizeof(pat), "\n# %s = ", tkeys[i].name);
        ck_assert_msg(strstr(text, pat), "zkmemd.conf lacks key %s", tkeys[i].name);
    }
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_every_kind);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_env);
    tcase_add_test(tc, test_load_file);
    tcase_add_test(tc, test_shipped_conf);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
