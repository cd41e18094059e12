/* SPDX-License-Identifier: MIT */
/*
 * test-harness.c - the integration-test harness (harness.c) tested on its own.
 *
 * The daemon under test here is this very binary: started as `<self> --config FILE ...`
 * it acts as a fake zkmemd (fake_daemon()) that reads runtime_dir from the config,
 * listens on <runtime_dir>/zkmemd.sock and accepts connections until SIGTERM. Extra
 * arguments select failure modes: --fail (exit 3 before listening), --no-listen (never
 * listen), --ignore-term (ignore SIGTERM), --exit-code N (exit N on SIGTERM).
 */
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

static int fake_daemon(int argc, char **argv)
{
    int exit_code = 0, fail = 0, no_listen = 0, ignore_term = 0;
    for (int i = 3; i < argc; i++) {
        fprintf(stderr, "fake-zkmemd: arg %s\n", argv[i]);
        if (!strcmp(argv[i], "--fail"))
            fail = 1;
        else if (!strcmp(argv[i], "--no-listen"))
            no_listen = 1;
        else if (!strcmp(argv[i], "--ignore-term"))
            ignore_term = 1;
        else if (!strcmp(argv[i], "--exit-code") && i + 1 < argc)
            exit_code = atoi(argv[++i]);
    }
    if (fail) {
        fprintf(stderr, "fake-zkmemd: refusing to start as asked\n");
        return 3;
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        fprintf(stderr, "fake-zkmemd: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    char line[512], dir[90] = "";
    while (fgets(line, sizeof(line), f)) {
        fprintf(stderr, "fake-zkmemd: config: %s", line);
        if (sscanf(line, " runtime_dir = %89s", dir) == 1)
            continue;
    }
    fclose(f);

    struct sigaction sa = {.sa_handler = ignore_term ? SIG_IGN : on_term};
    sigaction(SIGTERM, &sa, NULL);
    if (no_listen) {
        for (;;)
            pause();
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/zkmemd.sock", dir);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 16) < 0) {
        fprintf(stderr, "fake-zkmemd: %s: %s\n", addr.sun_path, strerror(errno));
        return 1;
    }
    fprintf(stderr, "fake-zkmemd: listening on %s\n", addr.sun_path);
    while (!got_term) {
        int c = accept(fd, NULL, NULL); /* EINTR on SIGTERM */
        if (c >= 0)
            close(c);
    }
    fprintf(stderr, "fake-zkmemd: SIGTERM, exiting with %d\n", exit_code);
    return exit_code;
}

static char self_exe[PATH_MAX];

static void use_fake(void)
{
    ck_assert_int_eq(setenv("ZKMEM_DAEMON", self_exe, 1), 0);
    ck_assert_int_eq(setenv("ZKM_TEST_DAEMON_TIMEOUT_MS", "10000", 1), 0);
    unsetenv("ZKM_TEST_DAEMON_WRAPPER");
}

START_TEST(start_stop)
{
    use_fake();
    struct zkm_test_daemon d;
    const char *argv[] = {"--exit-code", "0", NULL};
    ck_assert_int_eq(zkm_test_daemon_start(&d, "grant_depth = 2", argv), 0);
    ck_assert_int_gt(d.pid, 0);
    struct stat st;
    ck_assert_int_eq(stat(d.sock, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_int_eq(zkm_test_daemon_log_contains(&d, "listening on "), 1);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&d, "config: grant_depth = 2"), 1);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&d, "config: runtime_dir = "), 1);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&d, "arg --exit-code"), 1);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&d, "no such line"), 0);
    /* inherits 0-2 only; plus its listening socket */
    ck_assert_int_eq(zkm_test_fd_count(d.pid), 4);
    char dir[sizeof(d.dir)];
    strcpy(dir, d.dir);
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
    ck_assert_int_eq(d.pid, 0);
    ck_assert_int_eq(access(dir, F_OK), -1); /* removed */
}
END_TEST

START_TEST(stop_returns_exit_status)
{
    use_fake();
    struct zkm_test_daemon d;
    const char *argv[] = {"--exit-code", "7", NULL};
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, argv), 0);
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 7);
    ck_assert_int_eq(zkm_test_daemon_stop(&d), -ESRCH);
}
END_TEST

START_TEST(daemon_that_fails)
{
    use_fake();
    struct zkm_test_daemon d;
    memset(&d, 0x5a, sizeof(d));
    const char *argv[] = {"--fail", NULL};
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, argv), -ESRCH);
    ck_assert_int_eq(d.pid, 0x5a5a5a5a); /* untouched on failure */

    ck_assert_int_eq(setenv("ZKMEM_DAEMON", "/bin/false", 1), 0);
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, NULL), -ESRCH);
    unsetenv("ZKMEM_DAEMON");
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, NULL), -ENOENT);
    ck_assert_int_eq(setenv("ZKMEM_DAEMON", "/nonexistent/zkmemd", 1), 0);
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, NULL), -ENOENT);
}
END_TEST

START_TEST(daemon_that_never_listens)
{
    use_fake();
    ck_assert_int_eq(setenv("ZKM_TEST_DAEMON_TIMEOUT_MS", "300", 1), 0);
    struct zkm_test_daemon d;
    const char *argv[] = {"--no-listen", NULL};
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, argv), -ETIMEDOUT);
}
END_TEST

START_TEST(daemon_that_ignores_sigterm)
{
    use_fake();
    struct zkm_test_daemon d;
    const char *argv[] = {"--ignore-term", NULL};
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, argv), 0);
    ck_assert_int_eq(setenv("ZKM_TEST_DAEMON_TIMEOUT_MS", "300", 1), 0);
    pid_t pid = d.pid;
    ck_assert_int_eq(zkm_test_daemon_stop(&d), -ETIMEDOUT);
    ck_assert_int_eq(kill(pid, 0), -1); /* it was killed and reaped */
}
END_TEST

START_TEST(kill9_and_respawn)
{
    use_fake();
    struct zkm_test_daemon d;
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, NULL), 0);
    pid_t first = d.pid;
    ck_assert_int_eq(zkm_test_daemon_kill9(&d), 0);
    ck_assert_int_eq(d.pid, 0);
    ck_assert_int_eq(kill(first, 0), -1);
    ck_assert_int_eq(access(d.conf, R_OK), 0); /* directory kept */
    /* the dead daemon left its socket file; the new one must replace it */
    unlink(d.sock);
    const char *argv[] = {"--exit-code", "0", NULL};
    ck_assert_int_eq(zkm_test_daemon_respawn(&d, argv), 0);
    ck_assert_int_ne(d.pid, first);
    ck_assert_int_eq(zkm_test_daemon_respawn(&d, argv), -EBUSY);
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

START_TEST(wrapper)
{
    use_fake();
    ck_assert_int_eq(setenv("ZKM_TEST_DAEMON_WRAPPER", "/usr/bin/env ZKM_WRAPPED=1", 1), 0);
    struct zkm_test_daemon d;
    ck_assert_int_eq(zkm_test_daemon_start(&d, NULL, NULL), 0);
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/environ", (int)d.pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    ck_assert_ptr_nonnull(memmem(buf, n, "ZKM_WRAPPED=1", 13));
    ck_assert_int_eq(zkm_test_daemon_stop(&d), 0);
}
END_TEST

static int counter_reached(void *arg)
{
    int *c = arg;
    return ++*c >= 5;
}

static int never(void *arg)
{
    (void)arg;
    return 0;
}

START_TEST(wait_until)
{
    int c = 0;
    ck_assert_int_eq(zkm_test_wait_until(counter_reached, &c, 10000), 0);
    ck_assert_int_eq(c, 5);
    ck_assert_int_eq(zkm_test_wait_until(never, NULL, 20), -ETIMEDOUT);
}
END_TEST

START_TEST(proc_counters)
{
    long total = zkm_test_hugepages_total(), free_ = zkm_test_hugepages_free();
    ck_assert_int_ge(total, 0);
    ck_assert_int_ge(free_, 0);
    ck_assert_int_le(free_, total);
    int before = zkm_test_fd_count(getpid());
    ck_assert_int_gt(before, 0);
    int fd = dup(0);
    ck_assert_int_eq(zkm_test_fd_count(getpid()), before + 1);
    close(fd);
    ck_assert_int_eq(zkm_test_fd_count(getpid()), before);
    ck_assert_int_eq(zkm_test_fd_count(0), -ENOENT);
}
END_TEST

static int report_ids(void *arg)
{
    (void)arg;
    uid_t r, e, s;
    gid_t gr, ge, gs;
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    int ok = r == 65534 && e == 65534 && s == 65534 && gr == 65533 && ge == 65533 && gs == 65533 &&
             getgroups(0, NULL) == 0;
    return ok ? 42 : 1;
}

START_TEST(run_as)
{
    if (geteuid() != 0) {
        ck_assert_int_eq(zkm_test_run_as(65534, 65534, report_ids, NULL), -EPERM);
        zkm_test_skip("run_as", "not root: only the -EPERM path was tested");
        return;
    }
    ck_assert_int_eq(zkm_test_run_as(65534, 65533, report_ids, NULL), 42);
    ck_assert_int_eq(getuid(), 0); /* the parent keeps its ids */
}
END_TEST

START_TEST(capture)
{
    char out[256];
    const char *both[] = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    ck_assert_int_eq(zkm_test_capture(both, 1, out, sizeof(out)), 3);
    ck_assert_str_eq(out, "out\nerr\n");
    ck_assert_int_eq(zkm_test_capture(both, 0, out, sizeof(out)), 3);
    ck_assert_str_eq(out, "out\n");
    const char *killed[] = {"/bin/sh", "-c", "kill -9 $$", NULL};
    ck_assert_int_eq(zkm_test_capture(killed, 0, out, sizeof(out)), 128 + SIGKILL);
    char small[4]; /* truncated, still terminated */
    ck_assert_int_eq(zkm_test_capture(both, 0, small, sizeof(small)), 3);
    ck_assert_str_eq(small, "out");
}
END_TEST

START_TEST(page_pattern)
{
    size_t n = 64 * 4096;
    uint8_t *p = calloc(1, n);
    ck_assert_ptr_nonnull(p);
    zkm_test_fill_pages(p, n, 7);
    ck_assert(zkm_test_check_pages(p, n, 7));
    ck_assert(!zkm_test_check_pages(p, n, 8));
    p[33 * 4096] ^= 1; /* one page changed */
    ck_assert(!zkm_test_check_pages(p, n, 7));
    free(p);
}
END_TEST

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "--config"))
        return fake_daemon(argc, argv);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    if (n <= 0)
        return EXIT_FAILURE;
    self_exe[n] = '\0';

    Suite *s = suite_create("harness");
    TCase *tc = tcase_create("harness");
    tcase_add_test(tc, start_stop);
    tcase_add_test(tc, stop_returns_exit_status);
    tcase_add_test(tc, daemon_that_fails);
    tcase_add_test(tc, daemon_that_never_listens);
    tcase_add_test(tc, daemon_that_ignores_sigterm);
    tcase_add_test(tc, kill9_and_respawn);
    tcase_add_test(tc, wrapper);
    tcase_add_test(tc, wait_until);
    tcase_add_test(tc, proc_counters);
    tcase_add_test(tc, run_as);
    tcase_add_test(tc, capture);
    tcase_add_test(tc, page_pattern);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
