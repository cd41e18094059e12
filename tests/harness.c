/* SPDX-License-Identifier: MIT */
/*
 * harness.c - start, stop and observe a real zkmemd for integration tests.
 *
 * Lifecycle of a test daemon:
 *   start:   mkdtemp -> write zkmemd.conf -> fork/exec (log on fd 1 and 2) -> poll
 *            connect() on the socket every 10 ms, checking waitpid(WNOHANG) each round,
 *            until it accepts or the bound passes.
 *   stop:    SIGTERM -> waitpid(WNOHANG) polled until the bound -> remove the directory.
 *   kill9:   SIGKILL -> waitpid; the directory stays (respawn, inspection).
 *
 * Environment, read at each call:
 *   ZKMEM_DAEMON                 the daemon binary (required)
 *   ZKM_TEST_DAEMON_WRAPPER      words put before it, e.g. "valgrind --error-exitcode=99"
 *   ZKM_TEST_DAEMON_TIMEOUT_MS   bound for start and stop (default 10000)
 *   ZKM_TEST_DAEMON_CONFIG       config lines appended to every test daemon's config
 *
 * Only the test process's own children are signalled, by pid.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <dirent.h>
#include <grp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 64

static int timeout_ms(void)
{
    const char *s = getenv("ZKM_TEST_DAEMON_TIMEOUT_MS");
    long v = s ? strtol(s, NULL, 10) : 0;
    return v > 0 && v < 3600000 ? (int)v : 10000;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int status_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -ECHILD;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int rm_tree(const char *dir)
{
    if (!dir[0])
        return 0;
    if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) < 0)
        return -errno;
    return 0;
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_config(const struct zkm_test_daemon *d, const char *extra)
{
    int fd = open(d->conf, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char line[320];
    int n = snprintf(line, sizeof(line), "# written by the zkmem test harness\nruntime_dir = %s\n",
                     d->dir);
    int err = write_all(fd, line, (size_t)n);
    /* the test's own lines, then the run's ($ZKM_TEST_DAEMON_CONFIG, e.g. for valgrind) */
    const char *parts[2] = {extra, getenv("ZKM_TEST_DAEMON_CONFIG")};
    for (int i = 0; i < 2; i++) {
        const char *x = parts[i];
        if (err || !x || !x[0])
            continue;
        size_t len = strlen(x);
        err = write_all(fd, x, len);
        if (!err && x[len - 1] != '\n')
            err = write_all(fd, "\n", 1);
    }
    if (close(fd) < 0 && !err)
        err = -errno;
    return err;
}

/* argv = [wrapper words...] daemon --config conf [extra...] */
static int build_argv(const struct zkm_test_daemon *d, const char *daemon, char *wrapbuf,
                      size_t wraplen, const char *const *extra, char **argv)
{
    int n = 0;
    const char *w = getenv("ZKM_TEST_DAEMON_WRAPPER");
    if (w && w[0]) {
        if (strlen(w) >= wraplen)
            return -E2BIG;
        strcpy(wrapbuf, w);
        for (char *save = NULL, *tok = strtok_r(wrapbuf, " \t", &save); tok;
             tok = strtok_r(NULL, " \t", &save)) {
            if (n >= MAX_ARGS - 8)
                return -E2BIG;
            argv[n++] = tok;
        }
    }
    argv[n++] = (char *)daemon;
    argv[n++] = (char *)"--config";
    argv[n++] = (char *)d->conf;
    for (int i = 0; extra && extra[i]; i++) {
        if (n >= MAX_ARGS - 1)
            return -E2BIG;
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    return 0;
}

static int spawn(struct zkm_test_daemon *d, const char *const *extra_argv)
{
    const char *daemon = getenv("ZKMEM_DAEMON");
    if (!daemon || !daemon[0])
        return -ENOENT;
    if (access(daemon, X_OK) < 0)
        return -errno;

    char wrapbuf[512];
    char *argv[MAX_ARGS];
    int err = build_argv(d, daemon, wrapbuf, sizeof(wrapbuf), extra_argv, argv);
    if (err)
        return err;

    int logfd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0)
        return -errno;
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nullfd < 0) {
        err = -errno;
        close(logfd);
        return err;
    }

    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        err = -errno;
        close(logfd);
        close(nullfd);
        return err;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
            _exit(127);
        syscall(SYS_close_range, 3u, ~0u, 0u);
        execv(argv[0], argv);
        dprintf(2, "zkm test harness: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    d->pid = pid;
    return 0;
}

static int try_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* Reap the child if it exited; 1 if it did (pid cleared), 0 if running, -errno. */
static int reap(struct zkm_test_daemon *d, int *ret_code)
{
    int status;
    pid_t r = waitpid(d->pid, &status, WNOHANG);
    if (r < 0)
        return -errno;
    if (r == 0)
        return 0;
    d->pid = 0;
    *ret_code = status_code(status);
    return 1;
}

static int wait_ready(struct zkm_test_daemon *d)
{
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms();
    for (;;) {
        int code;
        int r = reap(d, &code);
        if (r < 0)
            return r;
        if (r == 1) {
            fprintf(stderr, "zkm test harness: daemon exited (status %d) before listening on %s\n",
                    code, d->sock);
            zkm_test_daemon_dump_log(d);
            return -ESRCH;
        }
        if (try_connect(d->sock) == 0)
            return 0;
        if (now_ms() >= deadline)
            break;
        sleep_ms(10);
    }
    fprintf(stderr, "zkm test harness: daemon pid %d not accepting on %s after %d ms\n",
            (int)d->pid, d->sock, timeout_ms());
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    zkm_test_daemon_dump_log(d);
    return -ETIMEDOUT;
}

int zkm_test_daemon_start(struct zkm_test_daemon *d, const char *extra_config,
                          const char *const *extra_argv)
{
    struct zkm_test_daemon t;
    memset(&t, 0, sizeof(t));
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0])
        tmp = "/tmp";
    struct sockaddr_un sa;
    int n = snprintf(t.dir, sizeof(t.dir), "%s/zkmemd-test.XXXXXX", tmp);
    if (n < 0 || (size_t)n >= sizeof(t.dir) ||
        (size_t)n + strlen("/zkmemd.sock") >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    if (!mkdtemp(t.dir))
        return -errno;
    /* other uids (isolation tests) must reach the socket inside */
    chmod(t.dir, 0755);
    snprintf(t.sock, sizeof(t.sock), "%s/zkmemd.sock", t.dir);
    snprintf(t.conf, sizeof(t.conf), "%s/zkmemd.conf", t.dir);
    snprintf(t.log, sizeof(t.log), "%s/zkmemd.log", t.dir);

    int err = write_config(&t, extra_config);
    if (!err)
        err = spawn(&t, extra_argv);
    if (!err)
        err = wait_ready(&t);
    if (err) {
        rm_tree(t.dir);
        return err;
    }
    *d = t;
    return 0;
}

int zkm_test_daemon_respawn(struct zkm_test_daemon *d, const char *const *extra_argv)
{
    if (d->pid > 0)
        return -EBUSY;
    if (!d->dir[0])
        return -EINVAL;
    /* The killed daemon's listening socket can outlive it for a moment (its io_uring is
     * torn down asynchronously) and still accept: remove the path so that only the new
     * daemon's socket counts as ready. */
    unlink(d->sock);
    int err = spawn(d, extra_argv);
    return err ? err : wait_ready(d);
}

int zkm_test_daemon_stop(struct zkm_test_daemon *d)
{
    if (d->pid <= 0)
        return -ESRCH;
    if (kill(d->pid, SIGTERM) < 0)
        return -errno;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms();
    int delay = 1, code = 0;
    for (;;) {
        int r = reap(d, &code);
        if (r < 0)
            return r;
        if (r == 1)
            break;
        if (now_ms() >= deadline) {
            fprintf(stderr, "zkm test harness: daemon pid %d ignored SIGTERM for %d ms\n",
                    (int)d->pid, timeout_ms());
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
            d->pid = 0;
            zkm_test_daemon_dump_log(d);
            rm_tree(d->dir);
            return -ETIMEDOUT;
        }
        sleep_ms(delay);
        delay = delay < 10 ? delay * 2 : 10;
    }
    if (code != 0) {
        fprintf(stderr, "zkm test harness: daemon exited with status %d\n", code);
        zkm_test_daemon_dump_log(d);
    }
    rm_tree(d->dir);
    return code;
}

int zkm_test_daemon_kill9(struct zkm_test_daemon *d)
{
    if (d->pid <= 0)
        return -ESRCH;
    if (kill(d->pid, SIGKILL) < 0)
        return -errno;
    int status;
    while (waitpid(d->pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    d->pid = 0;
    return 0;
}

int zkm_test_daemon_cleanup(struct zkm_test_daemon *d)
{
    if (d->pid > 0)
        return -EBUSY;
    return rm_tree(d->dir);
}

static char *read_file(const char *path, size_t *ret_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf)
            break;
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (buf) {
        buf[len] = '\0';
        *ret_len = len;
    }
    return buf;
}

int zkm_test_daemon_log_contains(const struct zkm_test_daemon *d, const char *needle)
{
    size_t len;
    errno = 0;
    char *buf = read_file(d->log, &len);
    if (!buf)
        return errno ? -errno : -ENOMEM;
    int found = memmem(buf, len, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

void zkm_test_daemon_dump_log(const struct zkm_test_daemon *d)
{
    size_t len;
    char *buf = read_file(d->log, &len);
    fprintf(stderr, "---- %s ----\n", d->log);
    if (buf) {
        fwrite(buf, 1, len, stderr);
        if (len && buf[len - 1] != '\n')
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "(unreadable: %s)\n", strerror(errno));
    }
    fprintf(stderr, "---- end of log ----\n");
    free(buf);
}

/* The value of "key:" in a /proc file of "key: value [kB]" lines; -ENOENT when absent. */
static long proc_field(const char *file, const char *key)
{
    FILE *f = fopen(file, "re");
    if (!f)
        return -errno;
    char line[256];
    size_t klen = strlen(key);
    long v = -ENOENT;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static long meminfo(const char *key)
{
    return proc_field("/proc/meminfo", key);
}

long zkm_test_self_status_kb(const char *key)
{
    return proc_field("/proc/self/status", key);
}

long zkm_test_hugepages_free(void)
{
    return meminfo("HugePages_Free");
}

long zkm_test_hugepages_total(void)
{
    return meminfo("HugePages_Total");
}

int zkm_test_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -errno;
    /* when counting ourselves, do not count the directory stream's own fd */
    int self = pid == getpid() ? dirfd(dir) : -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.' && atoi(e->d_name) != self)
            n++;
    closedir(dir);
    return n;
}

int zkm_test_wait_until(int (*pred)(void *), void *arg, int timeout_ms_)
{
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms_ > 0 ? timeout_ms_ : 0);
    int delay = 1;
    for (;;) {
        if (pred(arg))
            return 0;
        if (now_ms() >= deadline)
            return pred(arg) ? 0 : -ETIMEDOUT;
        sleep_ms(delay);
        delay = delay < 10 ? delay * 2 : 10;
    }
}

int zkm_test_run_as(uid_t uid, gid_t gid, int (*fn)(void *), void *arg)
{
    if (geteuid() != 0)
        return -EPERM;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        close(pfd[0]);
        close(pfd[1]);
        return err;
    }
    if (pid == 0) {
        close(pfd[0]);
        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
            setresuid(uid, uid, uid) < 0) {
            int e = errno;
            (void)!write(pfd[1], &e, sizeof(e));
            _exit(127);
        }
        close(pfd[1]);
        int r = fn(arg);
        fflush(NULL);
        _exit(r & 0xff);
    }
    close(pfd[1]);
    int e = 0;
    ssize_t got = read(pfd[0], &e, sizeof(e));
    close(pfd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    if (got == (ssize_t)sizeof(e))
        return -e;
    return status_code(status);
}

void zkm_test_skip(const char *test, const char *reason)
{
    fprintf(stderr, "SKIP %s: %s\n", test, reason);
}

void zkm_test_fill_pages(void *p, size_t n, uint64_t seed)
{
    uint64_t *w = p;
    for (size_t i = 0; i < n / 8; i += 512) /* one word per 4 KiB page */
        w[i] = seed ^ (i * 0x9e3779b97f4a7c15ULL);
}

int zkm_test_check_pages(const void *p, size_t n, uint64_t seed)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < n / 8; i += 512)
        if (w[i] != (seed ^ (i * 0x9e3779b97f4a7c15ULL)))
            return 0;
    return 1;
}

int zkm_test_capture(const char *const argv[], int with_stderr, char *out, size_t outlen)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        return -e;
    }
    if (pid == 0) {
        dup2(p[1], 1);
        if (with_stderr)
            dup2(p[1], 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t k;
    while (outlen > 0 && n + 1 < outlen && (k = read(p[0], out + n, outlen - 1 - n)) > 0)
        n += (size_t)k;
    if (outlen > 0)
        out[n] = '\0';
    close(p[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return status_code(status);
}
