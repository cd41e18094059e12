/* SPDX-License-Identifier: MIT */
/*
 * test-observer.c - daemon/observer.c and its eBPF programs (daemon/bpf/observer.bpf.c),
 * linked directly into this program.
 *
 * A forked child maps N fresh anonymous 4 KiB pages (no MAP_POPULATE, MADV_NOHUGEPAGE so
 * every page costs exactly one fault), sends its range over a pipe and then obeys one-byte
 * commands (touch the first or second half, pin itself to a cpu, create a hugetlb memfd,
 * quit), acknowledging each, so the parent knows exactly which faults happened between two
 * reads of the counters. Needs root and a kernel that loads the programs; otherwise each
 * test prints why it skips. ZKM_TEST_REQUIRE_BPF=1 (CI, as root) turns "cannot load" into a
 * failure instead of a skip.
 */
#include "observer.h"
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_PAGES 256
#define PAGE    4096UL

static char load_msg[256];

/* Load the observer with cpu -> node map `map` (NULL: all node 0). 1 loaded, 0 skip. */
static int load_or_skip(const char *test, const uint8_t *map, uint32_t n)
{
    if (geteuid() != 0) {
        zkm_test_skip(test, "loading BPF programs needs root");
        return 0;
    }
    int ret = zkm_observer_init(map, n, load_msg, sizeof load_msg);
    if (ret == 0) {
        printf("%s: %s\n", test, load_msg);
        return 1;
    }
    const char *req = getenv("ZKM_TEST_REQUIRE_BPF");
    if (req && strcmp(req, "1") == 0 && ret != -EOPNOTSUPP)
        ck_abort_msg("observer did not load (%d): %s", ret, load_msg);
    zkm_test_skip(test, load_msg);
    return 0;
}

/* ---- the child ---- */

struct child {
    pid_t pid;
    int cmd;             /* write end: commands */
    int ack;             /* read end: range, then one byte per command */
    uint64_t start, end; /* its N_PAGES range */
};

static void pin_self(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        _exit(3);
}

static void child_main(int cmd, int ack, int cpu)
{
    if (cpu >= 0)
        pin_self(cpu);
    size_t len = N_PAGES * PAGE;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || madvise(p, len, MADV_NOHUGEPAGE) != 0)
        _exit(2);
    uint64_t range[2] = {(uint64_t)(uintptr_t)p, (uint64_t)(uintptr_t)p + len};
    if (write(ack, range, sizeof range) != sizeof range)
        _exit(2);
    for (;;) {
        char c;
        if (read(cmd, &c, 1) != 1)
            _exit(1);
        switch (c) {
        case 'a': /* first half */
        case 'b': /* second half */
            for (size_t i = c == 'a' ? 0 : N_PAGES / 2, e = i + N_PAGES / 2; i < e; i++)
                ((volatile char *)p)[i * PAGE] = 1;
            break;
        case '0':
        case '1':
            pin_self(c - '0');
            break;
        case 'h': { /* a hugetlbfs inode comes and goes: alloc/evict/free_inode */
            int fd = memfd_create("zkm-observer-test", MFD_HUGETLB);
            if (fd >= 0)
                close(fd);
            break;
        }
        case 'q':
            _exit(0);
        }
        if (write(ack, "k", 1) != 1)
            _exit(2);
    }
}

static void child_start(struct child *c, int cpu)
{
    int cmd[2], ack[2];
    ck_assert_int_eq(pipe(cmd), 0);
    ck_assert_int_eq(pipe(ack), 0);
    c->pid = fork();
    ck_assert_int_ge(c->pid, 0);
    if (c->pid == 0) {
        close(cmd[1]);
        close(ack[0]);
        child_main(cmd[0], ack[1], cpu);
    }
    close(cmd[0]);
    close(ack[1]);
    c->cmd = cmd[1];
    c->ack = ack[0];
    uint64_t range[2];
    ck_assert_int_eq(read(c->ack, range, sizeof range), sizeof range);
    c->start = range[0];
    c->end = range[1];
}

static void child_do(struct child *c, char what)
{
    char k;
    ck_assert_int_eq(write(c->cmd, &what, 1), 1);
    ck_assert_int_eq(read(c->ack, &k, 1), 1);
}

static void child_quit(struct child *c)
{
    int status;
    ck_assert_int_eq(write(c->cmd, "q", 1), 1);
    ck_assert_int_eq(waitpid(c->pid, &status, 0), c->pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(c->cmd);
    close(c->ack);
}

static struct zkm_observer_stats read_stats(pid_t pid)
{
    struct zkm_observer_stats s;
    memset(&s, 0xa5, sizeof s);
    ck_assert_int_eq(zkm_observer_read(pid, &s), 0);
    return s;
}

static void print_stats(const char *what, const struct zkm_observer_stats *s)
{
    printf(
        "%s: page_faults %llu all %llu hugetlb %llu migrations %llu runs node0 %llu node1 %llu\n",
        what, (unsigned long long)s->page_faults, (unsigned long long)s->page_faults_all,
        (unsigned long long)s->hugetlb_events, (unsigned long long)s->migrations,
        (unsigned long long)s->runs_on_node[0], (unsigned long long)s->runs_on_node[1]);
}

/* about n faults: [0.9 n, 1.1 n] */
#define ck_assert_about(v, n)                                                                      \
    do {                                                                                           \
        ck_assert_uint_ge((v), (n)*9 / 10);                                                        \
        ck_assert_uint_le((v), (n)*11 / 10);                                                       \
    } while (0)

/* ---- tests ---- */

START_TEST(not_loaded)
{
    uint64_t s = 0x1000, e = 0x2000;
    struct zkm_observer_stats st;
    ck_assert_int_eq(zkm_observer_loaded(), 0);
    ck_assert_int_eq(zkm_observer_track(getpid(), &s, &e, 1), -EOPNOTSUPP);
    ck_assert_int_eq(zkm_observer_read(getpid(), &st), -EOPNOTSUPP);
    zkm_observer_untrack(getpid());
    zkm_observer_fini();
#if !(defined(ZKM_HAVE_BPF) && ZKM_HAVE_BPF)
    char err[128] = "";
    ck_assert_int_eq(zkm_observer_init(NULL, 0, err, sizeof err), -EOPNOTSUPP);
    ck_assert_ptr_nonnull(strstr(err, "without BPF"));
#endif
}
END_TEST

START_TEST(init_errors)
{
    char err[256] = "";
    ck_assert_int_eq(zkm_observer_init(NULL, ZKM_MAX_CPUS + 1, err, sizeof err),
#if defined(ZKM_HAVE_BPF) && ZKM_HAVE_BPF
                     -EINVAL);
    ck_assert_int_eq(zkm_observer_loaded(), 0);
#else
                     -EOPNOTSUPP);
#endif
    if (!load_or_skip("init_errors", NULL, 0))
        return;
    ck_assert_int_eq(zkm_observer_loaded(), 1);
    ck_assert_int_eq(zkm_observer_init(NULL, 0, err, sizeof err), -EALREADY);
    zkm_observer_fini();
    ck_assert_int_eq(zkm_observer_loaded(), 0);
    /* loads again after fini */
    ck_assert_int_eq(zkm_observer_init(NULL, 0, err, sizeof err), 0);
    zkm_observer_fini();
}
END_TEST

static int init_as_nobody(void *arg)
{
    char err[256] = "";
    int ret = zkm_observer_init(NULL, 0, err, sizeof err);
    printf("init as uid 65534: %d: %s\n", ret, err);
    if (ret == 0)
        return 1;
    if (ret != -EPERM && ret != -EACCES)
        return 2;
    return strstr(err, "root") ? 0 : 3;
}

START_TEST(unprivileged_refused)
{
    if (geteuid() != 0) {
        zkm_test_skip("unprivileged_refused", "needs root to drop to another uid");
        return;
    }
#if !(defined(ZKM_HAVE_BPF) && ZKM_HAVE_BPF)
    zkm_test_skip("unprivileged_refused", "built without BPF support");
    return;
#endif
    fflush(stdout);
    ck_assert_int_eq(zkm_test_run_as(65534, 65534, init_as_nobody, NULL), 0);
}
END_TEST

START_TEST(faults_in_range)
{
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    uint8_t map[ZKM_MAX_CPUS] = {0}; /* every cpu on logical node 0 */
    if (!load_or_skip("faults_in_range", map,
                      (uint32_t)(ncpu < ZKM_MAX_CPUS ? ncpu : ZKM_MAX_CPUS)))
        return;
    struct child c;
    child_start(&c, -1);
    ck_assert_int_eq(zkm_observer_track(c.pid, &c.start, &c.end, 1), 0);
    child_do(&c, 'a');
    child_do(&c, 'b');
    child_quit(&c);

    struct zkm_observer_stats s = read_stats(c.pid);
    print_stats("faults_in_range", &s);
    ck_assert_about(s.page_faults, N_PAGES);
    ck_assert_uint_ge(s.page_faults_all, s.page_faults);
    ck_assert_uint_gt(s.runs_on_node[0], 0);
    for (int i = 1; i < ZKM_MAX_NODES; i++)
        ck_assert_uint_eq(s.runs_on_node[i], 0);
    /* the parent itself is not tracked */
    ck_assert_int_eq(zkm_observer_read(getpid(), &s), -ENOENT);
    zkm_observer_untrack(c.pid);
    zkm_observer_fini();
}
END_TEST

START_TEST(ranges_filter_and_update)
{
    if (!load_or_skip("ranges_filter_and_update", NULL, 0))
        return;
    struct child c;
    child_start(&c, -1);
    uint64_t mid = c.start + N_PAGES / 2 * PAGE;

    /* only the first half is zkmem memory: faults in the second half count in _all only */
    uint64_t s0[1] = {c.start}, e0[1] = {mid};
    ck_assert_int_eq(zkm_observer_track(c.pid, s0, e0, 1), 0);
    child_do(&c, 'a');
    struct zkm_observer_stats s = read_stats(c.pid);
    ck_assert_about(s.page_faults, N_PAGES / 2);
    ck_assert_uint_ge(s.page_faults_all, s.page_faults);

    /* new ranges, two of them, the second covering the second half: counters are kept */
    uint64_t s1[2] = {c.start, mid}, e1[2] = {c.start + PAGE, c.end};
    ck_assert_int_eq(zkm_observer_track(c.pid, s1, e1, 2), 0);
    struct zkm_observer_stats t = read_stats(c.pid);
    ck_assert_uint_ge(t.page_faults, s.page_faults);
    ck_assert_uint_ge(t.page_faults_all, s.page_faults_all);
    child_do(&c, 'b');
    child_quit(&c);
    t = read_stats(c.pid);
    print_stats("ranges_filter_and_update", &t);
    ck_assert_about(t.page_faults, N_PAGES);
    ck_assert_uint_ge(t.page_faults_all, t.page_faults);
    zkm_observer_untrack(c.pid);

    /* the same pattern with a range that covers nothing the child touches */
    child_start(&c, -1);
    uint64_t s2 = c.end + PAGE, e2 = c.end + 2 * PAGE;
    ck_assert_int_eq(zkm_observer_track(c.pid, &s2, &e2, 1), 0);
    child_do(&c, 'a');
    child_do(&c, 'b');
    child_quit(&c);
    t = read_stats(c.pid);
    ck_assert_uint_eq(t.page_faults, 0);
    ck_assert_uint_ge(t.page_faults_all, N_PAGES);
    zkm_observer_untrack(c.pid);
    zkm_observer_fini();
}
END_TEST

START_TEST(untrack_stops_counting)
{
    if (!load_or_skip("untrack_stops_counting", NULL, 0))
        return;
    struct child c;
    child_start(&c, -1);
    ck_assert_int_eq(zkm_observer_track(c.pid, &c.start, &c.end, 1), 0);
    child_do(&c, 'a');
    struct zkm_observer_stats s = read_stats(c.pid);
    ck_assert_about(s.page_faults, N_PAGES / 2);

    zkm_observer_untrack(c.pid);
    ck_assert_int_eq(zkm_observer_read(c.pid, &s), -ENOENT);
    child_do(&c, 'b'); /* 128 faults nobody counts */
    ck_assert_int_eq(zkm_observer_read(c.pid, &s), -ENOENT);

    /* tracked again: fresh counters, none of the untracked faults */
    ck_assert_int_eq(zkm_observer_track(c.pid, &c.start, &c.end, 1), 0);
    s = read_stats(c.pid);
    ck_assert_uint_eq(s.page_faults, 0);
    child_quit(&c);
    s = read_stats(c.pid);
    ck_assert_uint_eq(s.page_faults, 0);
    zkm_observer_untrack(c.pid);
    zkm_observer_untrack(c.pid); /* twice is harmless */
    zkm_observer_fini();
}
END_TEST

START_TEST(nodes_and_migrations)
{
    cpu_set_t mine;
    ck_assert_int_eq(sched_getaffinity(0, sizeof mine, &mine), 0);
    if (!CPU_ISSET(0, &mine) || !CPU_ISSET(1, &mine)) {
        zkm_test_skip("nodes_and_migrations", "needs cpus 0 and 1");
        return;
    }
    /* cpu 0 -> node 0, cpu 1 -> node 1, any other cpu -> node 2 */
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    uint32_t n = (uint32_t)(ncpu < ZKM_MAX_CPUS ? ncpu : ZKM_MAX_CPUS);
    uint8_t map[ZKM_MAX_CPUS];
    for (uint32_t i = 0; i < n; i++)
        map[i] = i < 2 ? (uint8_t)i : 2;
    if (!load_or_skip("nodes_and_migrations", map, n))
        return;

    struct child c;
    child_start(&c, 1); /* pinned to cpu 1 before it is tracked */
    ck_assert_int_eq(zkm_observer_track(c.pid, &c.start, &c.end, 1), 0);
    child_do(&c, 'a');
    struct zkm_observer_stats s = read_stats(c.pid);
    print_stats("on cpu 1", &s);
    ck_assert_uint_gt(s.runs_on_node[1], 0);
    ck_assert_uint_eq(s.runs_on_node[0], 0);
    ck_assert_uint_eq(s.runs_on_node[2], 0);

    child_do(&c, '0'); /* moves itself to cpu 0: at least one migration */
    child_do(&c, 'b');
    child_quit(&c);
    s = read_stats(c.pid);
    print_stats("moved to cpu 0", &s);
    ck_assert_uint_gt(s.runs_on_node[0], 0);
    ck_assert_uint_ge(s.migrations, 1);
    ck_assert_uint_eq(s.runs_on_node[2], 0);
    ck_assert_about(s.page_faults, N_PAGES);
    zkm_observer_untrack(c.pid);
    zkm_observer_fini();
}
END_TEST

START_TEST(hugetlbfs_events)
{
    if (!load_or_skip("hugetlbfs_events", NULL, 0))
        return;
    unsigned have = 0, total = 0;
    const char *p = strstr(load_msg, "and ");
    if (!p || sscanf(p, "and %u/%u hugetlbfs", &have, &total) != 2 || have == 0) {
        zkm_test_skip("hugetlbfs_events", "this kernel has no hugetlbfs tracepoints");
        zkm_observer_fini();
        return;
    }
    int probe = memfd_create("zkm-probe", MFD_HUGETLB);
    if (probe < 0) {
        zkm_test_skip("hugetlbfs_events", "no hugetlbfs mount for memfd (MFD_HUGETLB)");
        zkm_observer_fini();
        return;
    }
    close(probe);
    struct child c;
    child_start(&c, -1);
    ck_assert_int_eq(zkm_observer_track(c.pid, &c.start, &c.end, 1), 0);
    struct zkm_observer_stats s = read_stats(c.pid);
    ck_assert_uint_eq(s.hugetlb_events, 0);
    child_do(&c, 'h');
    child_quit(&c);
    s = read_stats(c.pid);
    print_stats("hugetlbfs_events", &s);
    ck_assert_uint_ge(s.hugetlb_events, 1); /* at least hugetlbfs_alloc_inode */
    zkm_observer_untrack(c.pid);
    zkm_observer_fini();
}
END_TEST

START_TEST(map_full_and_bad_args)
{
    if (!load_or_skip("map_full_and_bad_args", NULL, 0))
        return;
    uint64_t s[ZKM_MAX_NODES + 1], e[ZKM_MAX_NODES + 1];
    for (int i = 0; i <= ZKM_MAX_NODES; i++) {
        s[i] = 0x100000ULL * (uint64_t)(i + 1);
        e[i] = s[i] + 0x1000;
    }
    ck_assert_int_eq(zkm_observer_track(0, s, e, 1), -EINVAL);
    ck_assert_int_eq(zkm_observer_track(-5, s, e, 1), -EINVAL);
    ck_assert_int_eq(zkm_observer_track(1, s, e, ZKM_MAX_NODES + 1), -EINVAL);
    ck_assert_int_eq(zkm_observer_track(1, e, s, 1), -EINVAL); /* start > end */
    ck_assert_int_eq(zkm_observer_track(1, s, s, 1), -EINVAL); /* empty */
    ck_assert_int_eq(zkm_observer_track(1, NULL, NULL, 1), -EINVAL);
    ck_assert_int_eq(zkm_observer_read(1, NULL), -EINVAL);

    /* tgids nobody uses (above any pid_max): the maps do not care whether they exist */
    const pid_t base = 0x40000000;
    int tracked = 0, ret = 0;
    for (; tracked < 100000; tracked++) {
        ret = zkm_observer_track(base + tracked, s, e, ZKM_MAX_NODES);
        if (ret != 0)
            break;
    }
    printf("map_full_and_bad_args: %d tracked, then %d\n", tracked, ret);
    ck_assert_int_eq(ret, -ENOSPC);
    ck_assert_int_ge(tracked, 16384);
    /* full: a tracked tgid still takes new ranges and keeps reading */
    ck_assert_int_eq(zkm_observer_track(base, s, e, 1), 0);
    struct zkm_observer_stats st = read_stats(base);
    ck_assert_uint_eq(st.page_faults, 0);
    ck_assert_int_eq(zkm_observer_read(base + tracked, &st), -ENOENT);
    /* one out, one in */
    zkm_observer_untrack(base + 7);
    ck_assert_int_eq(zkm_observer_track(base + tracked, s, e, 0), 0);
    ck_assert_int_eq(zkm_observer_track(base + tracked + 1, s, e, 0), -ENOSPC);
    for (int i = 0; i <= tracked; i++)
        zkm_observer_untrack(base + i);
    ck_assert_int_eq(zkm_observer_read(base, &st), -ENOENT);
    ck_assert_int_eq(zkm_observer_track(base + tracked + 1, s, e, 1), 0);
    zkm_observer_fini();
}
END_TEST

static Suite *observer_suite(void)
{
    Suite *s = suite_create("observer");
    TCase *tc = tcase_create("api");
    tcase_add_test(tc, not_loaded);
    tcase_add_test(tc, init_errors);
    tcase_add_test(tc, unprivileged_refused);
    tcase_add_test(tc, map_full_and_bad_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("events");
    tcase_add_test(tc, faults_in_range);
    tcase_add_test(tc, ranges_filter_and_update);
    tcase_add_test(tc, untrack_stops_counting);
    tcase_add_test(tc, nodes_and_migrations);
    tcase_add_test(tc, hugetlbfs_events);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(observer_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
