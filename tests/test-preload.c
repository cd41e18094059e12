/* SPDX-License-Identifier: MIT */
/*
 * test-preload.c - real programs under LD_PRELOAD=$ZKMEM_PRELOAD.
 *
 *   python3 (PYTHONMALLOC=malloc: every object through zkmem) running threads, dlopen'ed
 *     extension modules, exec (subprocess) and os.fork() with a private-heap check, and
 *     printing a deterministic digest;
 *   sqlite3 :memory: running a script (bulk inserts, indexes, updates, VACUUM);
 *   this binary itself, re-executed with --contracts, calling the malloc family by its
 *     C names and checking through the preload's zkm_owns() that zkmem served them;
 *   this binary re-executed with --churn against a real zkmemd: eight threads allocating
 *     a few hundred objects a second each (a growing live set) while the test reads
 *     `zkmemctl --json clients` and requires its alloc_ops and bytes_in_use to grow
 *     within a bounded wait, in balanced and in monitoring mode.
 * Each program's stdout must be byte-for-byte the same as without the preload, and the
 * run must prove the preload was in effect: $ZKMEM_STATS_FD makes the preload write its
 * counters at exit (heaps, slabs) to a file we read back.
 * Skipped, with the reason printed, under sanitizers (they own malloc) or when a program
 * is missing.
 */
#include "harness.h"

#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define PYTHON  "/usr/bin/python3"
#define SQLITE3 "/usr/bin/sqlite3"

static char g_self[4096];
static char g_dir[256];

static const char py_script[] =
    "import threading, os, sys, hashlib, json, random, subprocess, zlib\n"
    "def work(k, out):\n"
    "    rnd = random.Random(k)\n"
    "    d = {}\n"
    "    for i in range(30000):\n"
    "        d[(k, i)] = str(i * k) * (i % 9)\n"
    "        if i % 3 == 0:\n"
    "            d.pop((k, i - 3), None)\n"
    "    blobs = [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 3000)))\n"
    "             for _ in range(300)]\n"
    "    z = zlib.compress(b''.join(blobs))\n"
    "    h = hashlib.sha256(json.dumps(sorted((str(a), b) for a, b in d.items())).encode())\n"
    "    h.update(z)\n"
    "    out[k] = h.hexdigest()\n"
    "out = {}\n"
    "ts = [threading.Thread(target=work, args=(k, out)) for k in range(4)]\n"
    "for t in ts: t.start()\n"
    "for t in ts: t.join()\n"
    "for k in sorted(out): print('thread', k, out[k])\n"
    "print(subprocess.run(['/bin/echo', 'exec ok'], capture_output=True).stdout.decode().strip())\n"
    "buf = bytearray(b'before fork' + bytes(5000))\n"
    "keep = [bytearray(i % 700 + 1) for i in range(5000)]\n"
    "r1, w1 = os.pipe(); r2, w2 = os.pipe()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    ok = bytes(buf[:11]) == b'before fork'\n"
    "    buf[:11] = b'child wrote'\n"
    "    for b in keep: b[0] = 7\n"
    "    o = {}\n"
    "    t = threading.Thread(target=work, args=(9, o)); t.start(); t.join()\n"
    "    os.write(w1, b'x'); os.read(r2, 1)\n"
    "    ok = ok and bytes(buf[:11]) == b'child wrote' and all(b[0] == 7 for b in keep)\n"
    "    os.write(w1, (o[9][:16] if ok else 'BAD').encode())\n"
    "    os._exit(0)\n"
    "os.read(r1, 1)\n"
    "print('parent sees', bytes(buf[:11]), sum(b[0] for b in keep))\n"
    "buf[:11] = b'parent wrot'\n"
    "os.write(w2, b'p')\n"
    "res = os.read(r1, 64)\n"
    "os.waitpid(pid, 0)\n"
    "print('child says', res.decode())\n";

static const char sql_script[] =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v REAL, b BLOB);\n"
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<30000)\n"
    "  INSERT INTO t SELECT x, 'name' || (x*7919 % 1000), x*1.5, zeroblob(x % 300) FROM c;\n"
    "CREATE INDEX ti ON t(name);\n"
    "SELECT name, count(*), sum(v), sum(length(b)) FROM t GROUP BY name ORDER BY name LIMIT 20;\n"
    "SELECT group_concat(id) FROM (SELECT id FROM t WHERE name='name7' ORDER BY id LIMIT 50);\n"
    "UPDATE t SET name = upper(name) || printf('%08d', id) WHERE id % 5 = 0;\n"
    "DELETE FROM t WHERE id % 7 = 0;\n"
    "SELECT count(*), total(v), max(name), min(name) FROM t;\n"
    "SELECT length(replace(hex(zeroblob(50000)),'0','ab'));\n"
    "CREATE TABLE u AS SELECT a.id AS x, b.id AS y FROM t a JOIN t b ON a.id = b.id + 1 WHERE "
    "a.id < 5000;\n"
    "SELECT count(*), sum(x - y) FROM u;\n"
    "VACUUM;\n"
    "SELECT count(*), sum(id) FROM t;\n";

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(text);
    ck_assert_int_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap + 1);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Run argv with stdin from `in` (or /dev/null), stdout to `out`, fd 3 to `stats`,
 * extra environment `env` (NULL-terminated "K=V"). Returns the exit status. */
static int run(char *const argv[], const char *in, const char *out, const char *stats,
               const char *const env[])
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int i = open(in ? in : "/dev/null", O_RDONLY);
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int s = open(stats, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (i < 0 || o < 0 || s < 0)
            _exit(120);
        dup2(i, 0);
        dup2(o, 1);
        dup2(s, 3);
        for (int k = 0; env && env[k]; k++)
            putenv((char *)env[k]);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

static uint64_t stat_field(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

/* Run the program with and without the preload; compare stdout; return the stats text. */
static char *compare_runs(const char *name, char *const argv[], const char *in,
                          const char *const env_plain[], const char *const env_pre[])
{
    char out0[512], out1[512], stats[512];
    snprintf(out0, sizeof(out0), "%s/%s.plain", g_dir, name);
    snprintf(out1, sizeof(out1), "%s/%s.preload", g_dir, name);
    snprintf(stats, sizeof(stats), "%s/%s.stats", g_dir, name);
    unlink(stats);
    ck_assert_int_eq(run(argv, in, out0, stats, env_plain), 0);
    int rc = run(argv, in, out1, stats, env_pre);
    ck_assert_msg(rc == 0, "%s under the preload exited with %d", name, rc);
    size_t n0, n1, ns;
    char *a = read_file(out0, &n0), *b = read_file(out1, &n1);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_gt(n0, 0);
    ck_assert_msg(n0 == n1 && memcmp(a, b, n0) == 0,
                  "%s: output differs:\n--- plain\n%s\n--- preload\n%s", name, a, b);
    free(a);
    free(b);
    char *st = read_file(stats, &ns);
    ck_assert_msg(st && strstr(st, "zkmem-preload:"),
                  "%s: the preload left no stats: not in effect", name);
    return st;
}

static const char *preload_path(void)
{
    const char *p = getenv("ZKMEM_PRELOAD");
    return p && access(p, R_OK) == 0 ? p : NULL;
}

static bool skip_common(const char *test, const char *prog)
{
    if (SANITIZED) {
        zkm_test_skip(test, "built with a sanitizer, which replaces malloc itself");
        return true;
    }
    if (!preload_path()) {
        zkm_test_skip(test, "$ZKMEM_PRELOAD is not set or not readable (run through meson test)");
        return true;
    }
    if (prog && access(prog, X_OK) != 0) {
        zkm_test_skip(test, prog);
        return true;
    }
    return false;
}

static void setup(void)
{
    snprintf(g_dir, sizeof(g_dir), "%s/zkm-preload-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    int r = system(cmd);
    (void)r;
}

START_TEST(python_threads_fork)
{
    if (skip_common("python_threads_fork", PYTHON))
        return;
    char script[512], pre[600];
    snprintf(script, sizeof(script), "%s/work.py", g_dir);
    write_file(script, py_script);
    snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", preload_path());
    const char *plain[] = {"PYTHONMALLOC=malloc", "PYTHONHASHSEED=0", NULL};
    const char *with[] = {"PYTHONMALLOC=malloc", "PYTHONHASHSEED=0", pre, "ZKMEM_STATS_FD=3", NULL};
    char *argv[] = {PYTHON, script, NULL};
    char *st = compare_runs("python", argv, NULL, plain, with);
    /* the python process used several threads' heaps and got slabs; the exec'd echo and
     * the forked child (os._exit: no report) do not matter here */
    ck_assert_msg(stat_field(st, " heaps=") >= 5, "stats: %s", st);
    ck_assert_msg(stat_field(st, " slabs_from_source=") >= 1, "stats: %s", st);
    size_t n;
    char out[512];
    snprintf(out, sizeof(out), "%s/python.preload", g_dir);
    char *o = read_file(out, &n);
    ck_assert_ptr_nonnull(strstr(o, "parent sees b'before fork' 0\n"));
    ck_assert_ptr_null(strstr(o, "BAD"));
    ck_assert_ptr_nonnull(strstr(o, "exec ok"));
    free(o);
    free(st);
}
END_TEST

START_TEST(python_on_daemon_memory)
{
    if (skip_common("python_on_daemon_memory", PYTHON))
        return;
    struct zkm_test_daemon d;
    if (zkm_test_daemon_start(&d, NULL, NULL) != 0) {
        zkm_test_skip("python_on_daemon_memory", "zkmemd did not start ($ZKMEM_DAEMON)");
        return;
    }
    char script[512], pre[600], sock[400];
    snprintf(script, sizeof(script), "%s/work.py", g_dir);
    write_file(script, py_script);
    snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", preload_path());
    snprintf(sock, sizeof(sock), "ZKMEM_SOCKET=%s", d.sock);
    const char *plain[] = {"PYTHONMALLOC=malloc", "PYTHONHASHSEED=0", NULL};
    const char *with[] = {
        "PYTHONMALLOC=malloc", "PYTHONHASHSEED=0", pre, sock, "ZKMEM_STATS_FD=3", NULL};
    char *argv[] = {PYTHON, script, NULL};
    char *st = compare_runs("python-daemon", argv, NULL, plain, with);
    /* the fork check inside the script ran on daemon (shared) memory */
    ck_assert_msg(stat_field(st, " daemon_slabs=") >= 1, "stats: %s", st);
    ck_assert_msg(stat_field(st, " local_slabs=") == 0, "stats: %s", st);
    free(st);
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

START_TEST(sqlite3_script)
{
    if (skip_common("sqlite3_script", SQLITE3))
        return;
    char script[512], pre[600];
    snprintf(script, sizeof(script), "%s/script.sql", g_dir);
    write_file(script, sql_script);
    snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", preload_path());
    const char *with[] = {pre, "ZKMEM_STATS_FD=3", NULL};
    char *argv[] = {SQLITE3, ":memory:", NULL};
    char *st = compare_runs("sqlite3", argv, script, NULL, with);
    ck_assert_msg(stat_field(st, " slabs_from_source=") >= 1, "stats: %s", st);
    free(st);
}
END_TEST

START_TEST(c_contracts_by_name)
{
    if (skip_common("c_contracts_by_name", NULL))
        return;
    char pre[600];
    snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", preload_path());
    const char *with[] = {pre, "ZKMEM_STATS_FD=3", NULL};
    char *argv[] = {g_self, "--contracts", NULL};
    char out[512], stats[512];
    snprintf(out, sizeof(out), "%s/contracts.out", g_dir);
    snprintf(stats, sizeof(stats), "%s/contracts.stats", g_dir);
    int rc = run(argv, NULL, out, stats, with);
    size_t n;
    char *o = read_file(out, &n);
    ck_assert_msg(rc == 0, "contracts under the preload failed (%d): %s", rc, o ? o : "");
    free(o);
}
END_TEST

/* ---- stats reach the daemon ---------------------------------------------------------- */

/* `zkmemctl --socket sock --json clients` into out. */
static void ctl_clients(const char *sock, char *out, size_t outlen)
{
    const char *ctl = getenv("ZKMEMCTL");
    ck_assert_ptr_nonnull(ctl);
    const char *argv[] = {ctl, "--socket", sock, "--json", "clients", NULL};
    int st = zkm_test_capture(argv, 0, out, outlen);
    ck_assert_msg(st == 0, "zkmemctl clients: status %d", st);
}

struct client_figures {
    const char *sock;
    pid_t pid;
    uint64_t alloc_ops, bytes_in_use; /* last reading */
    uint64_t above_ops, above_bytes;  /* the predicate: both must be above these */
    int listed;
};

/* The figures of the client whose "pid" is f->pid (keys follow "pid" in its object). */
static int client_grew(void *arg)
{
    struct client_figures *f = arg;
    static char out[1 << 16];
    char pat[48];
    ctl_clients(f->sock, out, sizeof(out));
    snprintf(pat, sizeof(pat), "\"pid\": %d,", (int)f->pid);
    const char *c = strstr(out, pat);
    const char *ops = c ? strstr(c, "\"alloc_ops\": ") : NULL;
    const char *bytes = c ? strstr(c, "\"bytes_in_use\": ") : NULL;
    if (!ops || !bytes)
        return 0;
    f->listed = 1;
    f->alloc_ops = strtoull(ops + strlen("\"alloc_ops\": "), NULL, 10);
    f->bytes_in_use = strtoull(bytes + strlen("\"bytes_in_use\": "), NULL, 10);
    return f->alloc_ops > f->above_ops && f->bytes_in_use > f->above_bytes;
}

static pid_t spawn_churn(const char *sock, const char *mode)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char pre[600], s[400], m[64];
        snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", preload_path());
        snprintf(s, sizeof(s), "ZKMEM_SOCKET=%s", sock);
        snprintf(m, sizeof(m), "ZKMEM_MODE=%s", mode);
        putenv(pre);
        putenv(s);
        putenv(m);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        execl(g_self, g_self, "--churn", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/*
 * A preloaded program that allocates steadily but slowly per thread (8 threads, about
 * 4,000 allocations a second in all, no thread anywhere near 4,096 in a few seconds):
 * `zkmemctl clients` shows its alloc_ops and bytes_in_use above zero within 5 s, and
 * larger again within another 5 s, while it runs. In both counting modes.
 */
START_TEST(stats_reach_daemon)
{
    if (skip_common("stats_reach_daemon", NULL))
        return;
    struct zkm_test_daemon d;
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, NULL), 0);
    const char *modes[] = {"balanced", "monitoring"};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        struct client_figures f = {.sock = d.sock, .pid = spawn_churn(d.sock, modes[i])};
        int first = zkm_test_wait_until(client_grew, &f, 5000);
        fprintf(stderr, "stats_reach_daemon %s: listed %d, alloc_ops %llu, bytes_in_use %llu\n",
                modes[i], f.listed, (unsigned long long)f.alloc_ops,
                (unsigned long long)f.bytes_in_use);
        int second = -1;
        if (first == 0) {
            f.above_ops = f.alloc_ops;
            f.above_bytes = f.bytes_in_use;
            second = zkm_test_wait_until(client_grew, &f, 5000);
            fprintf(stderr, "stats_reach_daemon %s: then alloc_ops %llu, bytes_in_use %llu\n",
                    modes[i], (unsigned long long)f.alloc_ops, (unsigned long long)f.bytes_in_use);
        }
        kill(f.pid, SIGKILL);
        int st;
        ck_assert_int_eq(waitpid(f.pid, &st, 0), f.pid);
        ck_assert_msg(WIFSIGNALED(st), "the churn program ended early (status %d)", st);
        ck_assert_msg(f.listed, "%s: the program never appeared in zkmemctl clients", modes[i]);
        ck_assert_msg(first == 0, "%s: alloc_ops/bytes_in_use stayed 0 for 5 s", modes[i]);
        ck_assert_msg(second == 0, "%s: alloc_ops/bytes_in_use did not grow in 5 s", modes[i]);
    }
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

/* ---- --contracts: runs under the preload, uses the C names ------------------------------ */

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            printf("FAILED: %s (line %d)\n", #c, __LINE__);                                        \
            fflush(stdout);                                                                        \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

static size_t vsize(size_t v)
{
    volatile size_t x = v;
    return x;
}

extern void *__libc_malloc(size_t n);

static int contracts(void)
{
    void *h = dlopen(getenv("LD_PRELOAD"), RTLD_NOW | RTLD_NOLOAD);
    REQUIRE(h != NULL);
    int (*owns)(const void *) = (int (*)(const void *))dlsym(h, "zkm_owns");
    REQUIRE(owns != NULL);
    /* the preload really serves malloc */
    void *p = malloc(100);
    REQUIRE(p && owns(p));
    REQUIRE(malloc_usable_size(p) >= 100);
    free(p);
    free(NULL);
    void *z0 = malloc(0), *z1 = malloc(0);
    REQUIRE(z0 && z1 && z0 != z1 && owns(z0));
    free(z0);
    free(z1);
    errno = 0;
    REQUIRE(calloc(vsize(SIZE_MAX / 2 + 1), 4) == NULL && errno == ENOMEM);
    errno = 0;
    REQUIRE(malloc(vsize(SIZE_MAX)) == NULL && errno == ENOMEM);
    unsigned char *c = calloc(1000, 3);
    REQUIRE(c && owns(c));
    for (int i = 0; i < 3000; i++)
        REQUIRE(c[i] == 0);
    memset(c, 9, 3000);
    c = realloc(c, 100000);
    REQUIRE(c && c[2999] == 9 && owns(c));
    REQUIRE(realloc(c, 0) == NULL);
    void *m = NULL;
    errno = 77;
    REQUIRE(posix_memalign(&m, 24, 10) == EINVAL && m == NULL && errno == 77);
    REQUIRE(posix_memalign(&m, (size_t)1 << 21, 10) == 0 && ((uintptr_t)m & ((1u << 21) - 1)) == 0);
    REQUIRE(owns(m));
    free(m);
    errno = 0;
    REQUIRE(aligned_alloc(3, 10) == NULL && errno == EINVAL);
    void *a = aligned_alloc(4096, 4096);
    REQUIRE(a && ((uintptr_t)a & 4095) == 0 && owns(a));
    free(a);
    a = memalign(64, 10);
    REQUIRE(a && ((uintptr_t)a & 63) == 0);
    free(a);
    a = valloc(10);
    REQUIRE(a && ((uintptr_t)a & 4095) == 0);
    free(a);
    a = pvalloc(10);
    REQUIRE(a && malloc_usable_size(a) >= 4096);
    free(a);
    errno = 0;
    REQUIRE(reallocarray(NULL, vsize(SIZE_MAX / 2), 3) == NULL && errno == ENOMEM);
    /* a block from glibc itself: recognised, usable size known, freed by glibc */
    char *g = __libc_malloc(500);
    REQUIRE(g && !owns(g));
    REQUIRE(malloc_usable_size(g) >= 500);
    strcpy(g, "from glibc");
    g = realloc(g, 1000);
    REQUIRE(g && strcmp(g, "from glibc") == 0);
    free(g);
    /* the library is mapped */
    FILE *f = fopen("/proc/self/maps", "r");
    REQUIRE(f);
    char line[1024];
    int mapped = 0;
    while (fgets(line, sizeof(line), f))
        mapped |= strstr(line, "libzkmem-preload.so") != NULL;
    fclose(f);
    REQUIRE(mapped);
    puts("contracts ok");
    return 0;
}

/* ---- --churn: runs under the preload, allocates steadily until killed ------------------ */

#define CHURN_THREADS 8
#define CHURN_LIVE    20000 /* per thread: the live set grows for 40 s */

static void *churn_thread(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    void **live = calloc(CHURN_LIVE, sizeof(void *));
    if (!live) {
        fprintf(stderr, "churn: calloc(%d, %zu): %s\n", CHURN_LIVE, sizeof(void *),
                strerror(errno));
        _exit(2);
    }
    struct timespec ts = {0, 2000000}; /* about 500 allocations a second */
    for (size_t i = 0;; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t slot = i % CHURN_LIVE;
        if (i % 2 == 1 && slot > 0) { /* free every other one: frees too, the set grows */
            free(live[slot - 1]);
            live[slot - 1] = NULL;
        }
        free(live[slot]);
        live[slot] = malloc(48 + (seed >> 16) % 512);
        if (!live[slot])
            _exit(3);
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int churn(void)
{
    pthread_t t[CHURN_THREADS];
    for (uintptr_t i = 0; i < CHURN_THREADS; i++)
        if (pthread_create(&t[i], NULL, churn_thread, (void *)(i + 1)) != 0)
            return 1;
    sleep(60); /* the test kills us long before */
    return 4;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--contracts") == 0)
        return contracts();
    if (argc > 1 && strcmp(argv[1], "--churn") == 0)
        return churn();
    ssize_t n = readlink("/proc/self/exe", g_self, sizeof(g_self) - 1);
    if (n <= 0)
        return EXIT_FAILURE;
    g_self[n] = 0;
    Suite *s = suite_create("preload");
    TCase *tc = tcase_create("programs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, python_threads_fork);
    tcase_add_test(tc, python_on_daemon_memory);
    tcase_add_test(tc, sqlite3_script);
    tcase_add_test(tc, c_contracts_by_name);
    tcase_add_test(tc, stats_reach_daemon);
    tcase_set_timeout(tc, 240);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
