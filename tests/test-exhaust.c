/* SPDX-License-Identifier: MIT */
/*
 * test-exhaust.c - running out of resources, against a real zkmemd.
 *
 * What runs out, and what must happen:
 *   1. the daemon's descriptors (RLIMIT_NOFILE): the client that cannot be served is
 *      refused with -EMFILE and counted (clients_rejected), the reason is logged, clients
 *      already connected keep being served, nothing leaks, and once descriptors are free
 *      again new clients are accepted;
 *   2. a client's descriptors: it cannot open the socket or cannot receive the memfds;
 *      zkm_connect() fails, the allocator falls back to local memory and counts it, and
 *      the daemon drops the half-made session without leaking a descriptor or a slab;
 *   3. a client's mappings (vm.max_map_count): allocation returns NULL with errno ENOMEM
 *      or succeeds, nothing crashes, and it works again once mappings are free.
 * Hugepage exhaustion and memory budgets are tested in test-daemon.c.
 *
 * Figures are read as an operator reads them, with `zkmemctl --json`. Work done under
 * pressure runs in a forked child that makes only syscalls and zkm_* calls (no stdio, no
 * C heap: those would need descriptors or mappings themselves) and reports a plain
 * struct through a pipe; the test asserts on it.
 *
 * Cases that show a product bug are tagged "known-bug": excluded from the default run
 * (main() says so on stderr), they run with ZKM_TEST_KNOWN_BUGS=1 and fail until fixed.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zkmem/zkmem.h>

#include "harness.h"
#include "source.h"

static struct zkm_test_daemon D;

/* ---- daemon, zkmemctl, log ---------------------------------------------------------- */

static void start(const char *extra)
{
    int err = zkm_test_daemon_start(&D, extra, NULL);
    ck_assert_int_eq(err, 0);
}

static void stop(void)
{
    int st = zkm_test_daemon_stop(&D);
    ck_assert_msg(st == 0, "zkmemd exit status %d", st);
}

/* zkmemd with RLIMIT_NOFILE = n: the harness forks it from this process, so it inherits
 * our soft limit, lowered only around the start. */
static void start_with_nofile(rlim_t n, const char *extra)
{
    struct rlimit old, low;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    ck_assert_uint_gt(old.rlim_cur, n);
    low = old;
    low.rlim_cur = n;
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    int err = zkm_test_daemon_start(&D, extra, NULL);
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
    ck_assert_int_eq(err, 0);
    struct rlimit got;
    ck_assert_int_eq(prlimit(D.pid, RLIMIT_NOFILE, NULL, &got), 0);
    ck_assert_uint_eq(got.rlim_cur, n);
}

/* Run `zkmemctl --socket <sock> --json <cmd>`; its output goes to out. */
static void ctl_json(const char *cmd, char *out, size_t outlen)
{
    const char *ctl = getenv("ZKMEMCTL");
    ck_assert_ptr_nonnull(ctl);
    const char *argv[] = {ctl, "--socket", D.sock, "--json", cmd, NULL};
    int st = zkm_test_capture(argv, 0, out, outlen);
    ck_assert_msg(st == 0, "zkmemctl %s: status %d", cmd, st);
}

/* The sum of every `"key": N` in `zkmemctl --json cmd` (arenas: one per node). */
static uint64_t ctl_sum(const char *cmd, const char *key)
{
    static char out[1 << 16];
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    ctl_json(cmd, out, sizeof(out));
    uint64_t sum = 0;
    int found = 0;
    for (const char *p = strstr(out, pat); p; p = strstr(p + 1, pat)) {
        sum += strtoull(p + strlen(pat), NULL, 10);
        found = 1;
    }
    ck_assert_msg(found, "zkmemctl --json %s has no %s", cmd, key);
    return sum;
}

static uint64_t daemon_status(const char *key)
{
    return ctl_sum("status", key);
}

static uint64_t granted(void)
{
    return ctl_sum("arenas", "granted_slabs");
}

static int granted_is(void *arg)
{
    return granted() == *(uint64_t *)arg;
}

static int daemon_fds_at_most(void *arg)
{
    int n = zkm_test_fd_count(D.pid);
    return n >= 0 && n <= *(int *)arg;
}

static int daemon_fds_above(void *arg)
{
    return zkm_test_fd_count(D.pid) > *(int *)arg;
}

/* Occurrences of `needle` in the daemon's log (read in chunks: a flooded log is large). */
static long log_count(const char *needle)
{
    FILE *f = fopen(D.log, "re");
    ck_assert_ptr_nonnull(f);
    size_t nl = strlen(needle), keep = 0;
    static char buf[(1 << 16) + 256];
    long count = 0;
    size_t got;
    while ((got = fread(buf + keep, 1, (1 << 16), f)) > 0) {
        size_t len = keep + got;
        for (char *p = buf; (p = memmem(p, (size_t)(buf + len - p), needle, nl)); p += nl)
            count++;
        keep = len < nl - 1 ? len : nl - 1; /* a match cut by the chunk boundary */
        memmove(buf, buf + len - keep, keep);
    }
    fclose(f);
    return count;
}

/* User + system CPU time of the daemon, in clock ticks. */
static long daemon_cpu_ticks(void)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)D.pid);
    FILE *f = fopen(path, "re");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    fclose(f);
    const char *p = strrchr(line, ')');
    unsigned long ut = 0, st = 0;
    ck_assert_int_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st),
                     2);
    return (long)(ut + st);
}

static int raw_connect(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, D.sock, strlen(D.sock) + 1);
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(s, 0);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return s;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A client that still gets, writes, checks and returns slabs (round trips included). */
static void workload(struct zkm_conn *c, uint64_t seed)
{
    struct zkm_slab s[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(zkm_slab_acquire(c, ZKM_NODE_ANY, &s[i]), 0);
        zkm_test_fill_pages(s[i].addr, s[i].size, seed + (uint64_t)i);
    }
    for (int i = 0; i < 4; i++) {
        ck_assert(zkm_test_check_pages(s[i].addr, s[i].size, seed + (uint64_t)i));
        ck_assert_int_eq(zkm_slab_release(c, &s[i]), 0);
    }
}

/* ---- 1. the daemon's descriptor limit ----------------------------------------------- */

/* Low enough to reach in a few dozen sessions, above what zkmemd opens at start (about
 * 28 with the eBPF observer, 12 without). */
enum { DAEMON_NOFILE = 64 };

/* Each session costs the daemon its socket and a pidfd, and a control-block memfd while
 * it says HELLO; a daemon with fewer than three free refuses the client. */
struct fleet {
    struct zkm_conn *c[DAEMON_NOFILE];
    int n;
    int refusals;
};

/* Open sessions until the daemon has refused `want` of them; every refusal is -EMFILE. */
static void fill_daemon(struct fleet *f, int want)
{
    while (f->refusals < want) {
        ck_assert_int_lt(f->n, DAEMON_NOFILE); /* a session takes at least one daemon fd */
        struct zkm_conn *c;
        int err = zkm_connect(D.sock, &c);
        if (err == 0) {
            f->c[f->n++] = c;
            continue;
        }
        if (err != -EMFILE)
            zkm_test_daemon_dump_log(&D);
        ck_assert_msg(err == -EMFILE, "refused with %d (%s), not -EMFILE", err, strerror(-err));
        f->refusals++;
    }
}

static void fleet_close(struct fleet *f)
{
    while (f->n > 0)
        zkm_disconnect(f->c[--f->n]);
}

struct client_a {
    struct zkm_conn *c;
    struct zkm_slab s;
};

static void client_a_start(struct client_a *a)
{
    ck_assert_int_eq(zkm_connect(D.sock, &a->c), 0);
    ck_assert_int_eq(zkm_slab_acquire(a->c, ZKM_NODE_ANY, &a->s), 0);
    zkm_test_fill_pages(a->s.addr, a->s.size, 0xa11ce);
}

static void client_a_end(struct client_a *a)
{
    ck_assert(zkm_test_check_pages(a->s.addr, a->s.size, 0xa11ce));
    ck_assert_int_eq(zkm_slab_release(a->c, &a->s), 0);
    zkm_disconnect(a->c);
}

/* A new client is served: connect, a checked workload, leave. */
static void newcomer_served(uint64_t seed)
{
    struct zkm_conn *c;
    ck_assert_int_eq(zkm_connect(D.sock, &c), 0);
    workload(c, seed);
    zkm_disconnect(c);
}

/*
 * The daemon runs out of descriptors while clients arrive: each one it cannot serve is
 * refused with -EMFILE, counted and logged; client A, connected before, keeps its memory
 * and its service (round trips included); after the extra sessions leave, the daemon is
 * back to its descriptor count and serves new clients.
 */
START_TEST(test_daemon_fd_limit)
{
    /* no pre-granting: every acquire below is a round trip through the full daemon (with
     * a ring, the daemon may refill it fast enough that the workload never asks) */
    start_with_nofile(DAEMON_NOFILE, "grant_depth = 0\nenable_tuning = no\n");
    uint64_t rejected0 = daemon_status("clients_rejected");
    struct client_a a;
    client_a_start(&a);
    int fds_with_a = zkm_test_fd_count(D.pid);
    ck_assert_int_gt(fds_with_a, 0);
    ck_assert_int_lt(fds_with_a, DAEMON_NOFILE - 3);

    struct fleet f = {.n = 0};
    fill_daemon(&f, 3);
    ck_assert_int_ge(f.n, 1);
    fprintf(stderr,
            "daemon fd limit %d: %d fds with one client, %d more sessions, then -EMFILE; "
            "%ld 'accept failed' log lines\n",
            DAEMON_NOFILE, fds_with_a, f.n, log_count("accept failed"));

    /* at the limit: A still served, each of its acquires by a round trip */
    struct zkm_conn_counters before, after;
    zkm_conn_counters(a.c, &before);
    workload(a.c, 0xbee);
    zkm_conn_counters(a.c, &after);
    ck_assert_uint_ge(after.round_trips, before.round_trips + 4);
    ck_assert(zkm_test_check_pages(a.s.addr, a.s.size, 0xa11ce));

    fleet_close(&f);
    ck_assert_int_eq(zkm_test_wait_until(daemon_fds_at_most, &fds_with_a, 5000), 0);
    ck_assert_uint_eq(daemon_status("clients_rejected"), rejected0 + 3);
    ck_assert_uint_eq(daemon_status("n_clients"), 1);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&D, "cannot create the control block"), 1);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&D, "Too many open files"), 1);

    newcomer_served(0xc0de);
    client_a_end(&a);
    uint64_t zero = 0;
    ck_assert_int_eq(zkm_test_wait_until(granted_is, &zero, 5000), 0);
    ck_assert_int_eq(zkm_test_daemon_log_contains(&D, "violation"), 0);
    stop();
}
END_TEST

struct connect_result {
    int err;
    uint64_t ms;
};

/* A client process that connects and reports what it got and how long it took. */
static pid_t spawn_connecting_client(int *ret_fd)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        struct connect_result r;
        uint64_t t0 = now_ms();
        struct zkm_conn *c = NULL;
        r.err = zkm_connect(D.sock, &c);
        r.ms = now_ms() - t0;
        _exit(write(p[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
    }
    close(p[1]);
    *ret_fd = p[0];
    return pid;
}

/* Take the daemon's remaining descriptors with idle connections (a client that has not
 * said HELLO yet). Returns how many were opened. */
static int take_last_fds(int *idle, int max)
{
    int n = 0;
    while (zkm_test_fd_count(D.pid) < DAEMON_NOFILE) {
        ck_assert_int_lt(n, max);
        int had = zkm_test_fd_count(D.pid);
        idle[n++] = raw_connect();
        ck_assert_int_eq(zkm_test_wait_until(daemon_fds_above, &had, 5000), 0);
    }
    return n;
}

/*
 * Every descriptor of the daemon in use, one more client arrives. The daemon idles (no
 * busy loop on the failing accept, one log line for the episode), the newcomer gets a
 * clear -EMFILE refusal promptly (the daemon keeps a spare descriptor to take it off the
 * backlog and answer its HELLO), and it is counted. This found a busy loop that logged
 * ~100k lines a second and left the newcomer to its 10 s timeout.
 */
START_TEST(test_daemon_full_idles_and_refuses)
{
    start_with_nofile(DAEMON_NOFILE, "grant_depth = 1\n");
    uint64_t rejected0 = daemon_status("clients_rejected");
    struct client_a a;
    client_a_start(&a);
    int fds_with_a = zkm_test_fd_count(D.pid);
    struct fleet f = {.n = 0};
    fill_daemon(&f, 1);
    /* settled: the refused session is gone, each served one holds a socket and a pidfd
     * (the last one may have had to do without its pidfd: its socket's EOF still ends it) */
    int settled = fds_with_a + 2 * f.n;
    ck_assert_int_eq(zkm_test_wait_until(daemon_fds_at_most, &settled, 5000), 0);
    ck_assert_int_ge(zkm_test_fd_count(D.pid), settled - 1);
    int idle[4];
    int n_idle = take_last_fds(idle, 4);

    /* the daemon is full and a newcomer knocks: watch the daemon for half a second */
    long lines0 = log_count("out of file descriptors"), cpu0 = daemon_cpu_ticks();
    int rfd;
    pid_t pid = spawn_connecting_client(&rfd);
    sleep_ms(500);
    long lines = log_count("out of file descriptors") - lines0, cpu = daemon_cpu_ticks() - cpu0;
    long hz = sysconf(_SC_CLK_TCK);
    struct pollfd pfd = {.fd = rfd, .events = POLLIN};
    int answered = poll(&pfd, 1, 2500) == 1;

    /* free the daemon before judging, so that it can be stopped either way */
    for (int i = 0; i < n_idle; i++)
        close(idle[i]);
    fleet_close(&f);
    struct connect_result r = {0, 0};
    ck_assert_int_eq(read(rfd, &r, sizeof(r)), sizeof(r));
    close(rfd);
    waitpid(pid, NULL, 0);
    workload(a.c, 0xf00);
    client_a_end(&a);
    uint64_t rejected = daemon_status("clients_rejected") - rejected0;
    fprintf(stderr,
            "daemon full for 500 ms: %ld 'out of file descriptors' log lines, %ld of %ld CPU "
            "ticks; "
            "newcomer: %d (%s) after %llu ms; rejected %llu\n",
            lines, cpu, hz / 2, r.err, strerror(-r.err), (unsigned long long)r.ms,
            (unsigned long long)rejected);
    newcomer_served(0xd00d);
    stop();

    ck_assert_msg(lines <= 1, "full daemon logged 'out of file descriptors' %ld times in 500 ms",
                  lines);
    ck_assert_msg(cpu * 5 <= hz / 2, "full daemon used %ld of %ld CPU ticks", cpu, hz / 2);
    ck_assert_msg(answered && (r.err == -EMFILE || r.err == -ENFILE || r.err == -EUSERS),
                  "newcomer to a full daemon: %d (%s) after %llu ms, wanted a refusal", r.err,
                  strerror(-r.err), (unsigned long long)r.ms);
    ck_assert_uint_ge(rejected, (uint64_t)f.refusals + 1); /* and the newcomer */
}
END_TEST

/* ---- 2. a client's descriptor limit ------------------------------------------------- */

struct client_fd_result {
    int err_no_socket; /* zkm_connect with no descriptor left */
    int err_no_memfds; /* zkm_connect with one descriptor left (the socket) */
    int fd_after;      /* lowest free descriptor after both (nothing leaked: == first) */
    int fd_first;      /* lowest free descriptor before */
    int malloc_ok;     /* zkm_malloc with one descriptor left: usable memory */
    int malloc_errno;  /* errno when it returned NULL */
    int err_raised;    /* zkm_connect once the limit is back up */
    struct zkm_source_counters sc;
};

static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd;
}

static int set_nofile(rlim_t n)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0)
        return -errno;
    r.rlim_cur = n;
    return setrlimit(RLIMIT_NOFILE, &r) == 0 ? 0 : -errno;
}

/* In a forked child: only syscalls and zkm_* calls until the result is written. */
static void client_fd_child(int wr)
{
    struct client_fd_result r;
    memset(&r, 0, sizeof(r));
    struct rlimit old;
    getrlimit(RLIMIT_NOFILE, &old);
    r.fd_first = lowest_free_fd();
    struct zkm_conn *c = NULL;
    set_nofile((rlim_t)r.fd_first); /* socket() itself fails */
    r.err_no_socket = zkm_connect(D.sock, &c);
    set_nofile((rlim_t)r.fd_first + 1); /* the socket, but not the memfds of the reply */
    r.err_no_memfds = zkm_connect(D.sock, &c);
    set_nofile(old.rlim_cur);
    r.fd_after = lowest_free_fd();

    /* the allocator, with the same one descriptor to spare */
    set_nofile((rlim_t)r.fd_first + 1);
    char *p = zkm_malloc(1000);
    r.malloc_errno = p ? 0 : errno;
    if (p) {
        memset(p, 0x5a, 1000);
        r.malloc_ok = p[999] == 0x5a;
        zkm_free(p);
    }
    zkm__source_counters(&r.sc);
    set_nofile(old.rlim_cur);

    r.err_raised = zkm_connect(D.sock, &c);
    if (r.err_raised == 0)
        zkm_disconnect(c);
    _exit(write(wr, &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
}

/*
 * A client process whose RLIMIT_NOFILE leaves no room: with no descriptor zkm_connect()
 * fails with -EMFILE before reaching the daemon; with one (the socket) the daemon's
 * HELLO reply arrives with its memfds cut off (MSG_CTRUNC) and zkm_connect() fails with
 * -EMFILE too (the client's own limit, not a daemon speaking garbage), closing everything
 * it got. The allocator then serves from local memory and
 * counts it. The daemon reclaims the half-made session: its descriptors, its pre-granted
 * slab, the client count are back where they were.
 */
START_TEST(test_client_fd_limit)
{
    start("grant_depth = 1\n");
    int fds0 = zkm_test_fd_count(D.pid);
    ck_assert_int_gt(fds0, 0);
    uint64_t granted0 = granted();

    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        setenv("ZKMEM_SOCKET", D.sock, 1);
        client_fd_child(p[1]);
    }
    close(p[1]);
    struct client_fd_result r;
    ck_assert_int_eq(read(p[0], &r, sizeof(r)), sizeof(r));
    close(p[0]);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client status %d", st);
    fprintf(stderr,
            "client fd limit: no fd -> %d, one fd -> %d; malloc ok %d (errno %d); source: "
            "daemon %llu local %llu connect_failures %llu\n",
            r.err_no_socket, r.err_no_memfds, r.malloc_ok, r.malloc_errno,
            (unsigned long long)r.sc.daemon_slabs, (unsigned long long)r.sc.local_slabs,
            (unsigned long long)r.sc.connect_failures);

    ck_assert_int_eq(r.err_no_socket, -EMFILE);
    ck_assert_int_eq(r.err_no_memfds, -EMFILE);
    ck_assert_int_eq(r.fd_after, r.fd_first);
    ck_assert_int_eq(r.malloc_ok, 1);
    ck_assert_uint_eq(r.sc.connect_failures, 1);
    ck_assert_uint_eq(r.sc.daemon_slabs, 0);
    ck_assert_uint_ge(r.sc.local_slabs, 1);
    ck_assert_int_eq(r.err_raised, 0);

    /* the daemon let go of every half-made session */
    ck_assert_int_eq(zkm_test_wait_until(daemon_fds_at_most, &fds0, 5000), 0);
    ck_assert_int_eq(zkm_test_wait_until(granted_is, &granted0, 5000), 0);
    ck_assert_uint_eq(daemon_status("n_clients"), 0);
    newcomer_served(0x5eed);
    ck_assert_int_eq(zkm_test_wait_until(daemon_fds_at_most, &fds0, 5000), 0);
    stop();
}
END_TEST

/* ---- 3. a client's max_map_count ---------------------------------------------------- */

/* A filler that takes every mapping the process may still create: a PROT_NONE region
 * with every other page made readable, so that no two neighbours merge. */
struct filler {
    char *base;
    size_t pages;
    size_t split; /* pages made readable: each added two mappings */
};

static long max_map_count(void)
{
    char buf[32];
    int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

/* Fill until mprotect fails with ENOMEM, then give back `headroom` mappings (rounded up
 * to an even number). 0, or -errno when the region cannot be had or fails otherwise. */
static int filler_fill(struct filler *f, long headroom)
{
    memset(f, 0, sizeof(*f));
    long limit = max_map_count();
    if (limit <= 0)
        return (int)limit;
    f->pages = (size_t)limit + 16;
    f->split = 0;
    f->base =
        mmap(NULL, f->pages * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (f->base == MAP_FAILED)
        return -errno;
    for (size_t i = 1; i + 1 < f->pages; i += 2) {
        if (mprotect(f->base + i * 4096, 4096, PROT_READ) != 0) {
            if (errno != ENOMEM)
                return -errno;
            break;
        }
        f->split++;
    }
    if (f->split == 0 || 2 * f->split + 2 >= f->pages)
        return -ERANGE; /* never ran out: the count was not what /proc said */
    for (long k = 0; k < (headroom + 1) / 2; k++)
        mprotect(f->base + (2 * (f->split - 1 - (size_t)k) + 1) * 4096, 4096, PROT_NONE);
    return 0;
}

static void filler_drop(struct filler *f)
{
    munmap(f->base, f->pages * 4096);
}

/* Sizes of every tier: small, medium, large, a whole slab, a direct mapping. */
static const size_t pressure_sizes[] = {16, 200, 4000, 50000, 1 << 20, 3 << 20};
#define N_SIZES (sizeof(pressure_sizes) / sizeof(pressure_sizes[0]))
enum { PER_SIZE = 8 };

struct map_result {
    int fill_err;        /* filler_fill() */
    size_t maps_taken;   /* mappings the filler added */
    int ok[N_SIZES];     /* allocations that succeeded under pressure */
    int enomem[N_SIZES]; /* NULL with errno ENOMEM */
    int other[N_SIZES];  /* NULL with another errno (must stay 0) */
    int bad_bytes;       /* a successful allocation that did not hold its bytes */
    int after_ok;        /* allocations after the filler left (must be N_SIZES) */
    struct zkm_source_counters sc_before, sc_under, sc_after;
};

/* Allocate PER_SIZE objects of each size, write both ends, free them. */
static void allocate_all(struct map_result *r, int under)
{
    for (size_t s = 0; s < N_SIZES; s++) {
        void *objs[PER_SIZE];
        for (int i = 0; i < PER_SIZE; i++) {
            errno = 0;
            unsigned char *p = objs[i] = zkm_malloc(pressure_sizes[s]);
            if (!p) {
                if (errno == ENOMEM)
                    r->enomem[s]++;
                else
                    r->other[s]++;
                continue;
            }
            p[0] = 0xa5;
            p[pressure_sizes[s] - 1] = 0x5a;
            if (p[0] != 0xa5 || p[pressure_sizes[s] - 1] != 0x5a)
                r->bad_bytes++;
            if (under)
                r->ok[s]++;
            else if (i == 0)
                r->after_ok++;
        }
        for (int i = 0; i < PER_SIZE; i++)
            zkm_free(objs[i]);
    }
}

/* How the client stands when its mappings run out. */
enum pressure_mode {
    CONNECTED,   /* its allocator already holds daemon slabs */
    GOING_LOCAL, /* served locally so far; the daemon appears just as its mappings run out */
    FIRST_CALL,  /* its very first allocation happens under pressure */
};

/* ZKMEM_SOCKET for GOING_LOCAL: a symlink that leads nowhere, then to the daemon. */
static char g_link[320];

/* In a forked child: get ready as `mode` says, take every mapping but `headroom`,
 * allocate, let go of the mappings, allocate again. Only syscalls and zkm_* calls. */
static void map_pressure_child(int wr, enum pressure_mode mode, long headroom)
{
    struct map_result r;
    memset(&r, 0, sizeof(r));
    if (mode != FIRST_CALL)
        zkm_free(zkm_malloc(64));
    zkm__source_counters(&r.sc_before);
    if (mode == GOING_LOCAL && (unlink(g_link) != 0 || symlink(D.sock, g_link) != 0))
        _exit(3);
    struct filler f;
    r.fill_err = filler_fill(&f, headroom);
    if (r.fill_err == 0) {
        r.maps_taken = 2 * f.split;
        if (mode == GOING_LOCAL)
            sleep_ms(1100); /* the source tries a daemon at most once a second */
        allocate_all(&r, 1);
        zkm__source_counters(&r.sc_under);
        filler_drop(&f);
        allocate_all(&r, 0);
        zkm__source_counters(&r.sc_after);
    }
    _exit(write(wr, &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
}

static struct map_result run_map_pressure(enum pressure_mode mode, long headroom)
{
    if (mode == GOING_LOCAL) {
        snprintf(g_link, sizeof(g_link), "%s/later.sock", D.dir);
        unlink(g_link);
        ck_assert_int_eq(symlink("/nonexistent/zkmemd.sock", g_link), 0);
    }
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        setenv("ZKMEM_SOCKET", mode == GOING_LOCAL ? g_link : D.sock, 1);
        map_pressure_child(p[1], mode, headroom);
    }
    close(p[1]);
    struct map_result r;
    ssize_t n = read(p[0], &r, sizeof(r));
    close(p[0]);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %s %d",
                  WIFSIGNALED(st) ? "killed by signal" : "exit status",
                  WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    ck_assert_int_eq(n, sizeof(r));
    ck_assert_msg(r.fill_err == 0, "filling the mappings: %s", strerror(-r.fill_err));
    return r;
}

static void report(const char *what, const struct map_result *r)
{
    fprintf(stderr, "max_map_count, %s: filler took %zu mappings; ok/ENOMEM per size:", what,
            r->maps_taken);
    for (size_t s = 0; s < N_SIZES; s++)
        fprintf(stderr, " %zu:%d/%d", pressure_sizes[s], r->ok[s], r->enomem[s]);
    fprintf(
        stderr,
        "; source (before/under/after) daemon %llu/%llu/%llu start %llu/%llu/%llu "
        "local %llu/%llu/%llu connect_failures %llu/%llu/%llu\n",
        (unsigned long long)r->sc_before.daemon_slabs, (unsigned long long)r->sc_under.daemon_slabs,
        (unsigned long long)r->sc_after.daemon_slabs, (unsigned long long)r->sc_before.start_slabs,
        (unsigned long long)r->sc_under.start_slabs, (unsigned long long)r->sc_after.start_slabs,
        (unsigned long long)r->sc_before.local_slabs, (unsigned long long)r->sc_under.local_slabs,
        (unsigned long long)r->sc_after.local_slabs,
        (unsigned long long)r->sc_before.connect_failures,
        (unsigned long long)r->sc_under.connect_failures,
        (unsigned long long)r->sc_after.connect_failures);
}

/* What holds in every case: NULL means ENOMEM, memory handed out holds its bytes, and
 * once the filler is gone every size allocates again. */
static void check_pressure(const struct map_result *r)
{
    for (size_t s = 0; s < N_SIZES; s++) {
        ck_assert_int_eq(r->other[s], 0);
        ck_assert_int_eq(r->ok[s] + r->enomem[s], PER_SIZE);
    }
    ck_assert_int_eq(r->bad_bytes, 0);
    ck_assert_int_eq(r->after_ok, (int)N_SIZES);
}

struct baseline {
    uint64_t granted;
    int fds;
};

static struct baseline daemon_baseline(void)
{
    struct baseline b = {.granted = granted(), .fds = zkm_test_fd_count(D.pid)};
    ck_assert_int_gt(b.fds, 0);
    return b;
}

/* The daemon was not disturbed: it serves, and every slab and descriptor came back. */
static void daemon_unharmed(struct baseline b)
{
    newcomer_served(0x3a9);
    ck_assert_int_eq(zkm_test_wait_until(granted_is, &b.granted, 5000), 0);
    ck_assert_int_eq(zkm_test_wait_until(daemon_fds_at_most, &b.fds, 5000), 0);
    ck_assert_uint_eq(daemon_status("n_clients"), 0);
    stop();
}

/*
 * A client connected to zkmemd uses up its mappings. What needs a new mapping (a direct
 * mapping for 3 MiB) fails with ENOMEM - the first may still merge with its neighbour -
 * while objects up to a whole slab keep coming from daemon slabs, which need no mapping.
 * With some mappings to spare, the same. Once the mappings are free, every size
 * allocates again. Nothing counts the failed allocations: the library has no counter
 * for them (zkm__source_counters and zkm__alloc_counters count slabs and maps made).
 */
START_TEST(test_max_map_count_connected)
{
    start("grant_depth = 2\n");
    struct baseline b = daemon_baseline();

    struct map_result r = run_map_pressure(CONNECTED, 0);
    report("connected, no headroom", &r);
    check_pressure(&r);
    ck_assert_uint_ge(r.sc_before.daemon_slabs + r.sc_before.start_slabs, 1);
    ck_assert_int_ge(r.enomem[N_SIZES - 1], PER_SIZE - 1);
    for (size_t s = 0; s + 1 < N_SIZES; s++)
        ck_assert_int_eq(r.ok[s], PER_SIZE);
    ck_assert_uint_gt(r.sc_under.daemon_slabs, r.sc_before.daemon_slabs);
    ck_assert_uint_eq(r.sc_under.connect_failures, 0);

    r = run_map_pressure(CONNECTED, 64);
    report("connected, 64 to spare", &r);
    check_pressure(&r);
    daemon_unharmed(b);
}
END_TEST

/*
 * A client served from local memory (no daemon yet) runs out of mappings just as the
 * daemon appears: the session it opens cannot map the daemon's memory, which the source
 * counts (connect_failures), and local memory cannot be mapped either, so allocations
 * that need a slab fail with ENOMEM. Once the mappings are free it allocates again.
 */
START_TEST(test_max_map_count_connect_fails)
{
    start("grant_depth = 2\n");
    struct baseline b = daemon_baseline();

    struct map_result r = run_map_pressure(GOING_LOCAL, 0);
    report("daemon appears, no headroom", &r);
    check_pressure(&r);
    ck_assert_uint_eq(r.sc_before.connect_failures, 1);
    ck_assert_uint_eq(r.sc_before.local_slabs, 1);
    ck_assert_uint_gt(r.sc_under.connect_failures, r.sc_before.connect_failures);
    ck_assert_uint_eq(r.sc_under.daemon_slabs, 0);
    daemon_unharmed(b);
}
END_TEST

/*
 * The process's very first zkmem allocation happens with its mappings used up: the
 * allocator cannot reserve its metadata, so every allocation fails with ENOMEM (no
 * crash), and once mappings are free again the next one initialises it and succeeds.
 */
START_TEST(test_max_map_count_first_call)
{
    start("grant_depth = 2\n");
    struct baseline b = daemon_baseline();
    struct map_result r = run_map_pressure(FIRST_CALL, 0);
    report("first call, no headroom", &r);
    check_pressure(&r);
    daemon_unharmed(b);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("exhaust");
    TCase *t = tcase_create("integration");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_daemon_fd_limit);
    tcase_add_test(t, test_client_fd_limit);
    tcase_add_test(t, test_max_map_count_connected);
    tcase_add_test(t, test_max_map_count_connect_fails);
    tcase_add_test(t, test_daemon_full_idles_and_refuses);
    tcase_add_test(t, test_max_map_count_first_call);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    const char *bugs = getenv("ZKM_TEST_KNOWN_BUGS");
    int run_bugs = bugs && !strcmp(bugs, "1");
    /* explicit exclusions replace $CK_EXCLUDE_TAGS: keep the caller's */
    const char *env = getenv("CK_EXCLUDE_TAGS");
    char exclude[256];
    snprintf(exclude, sizeof(exclude), "%s known-bug", env ? env : "");
    SRunner *sr = srunner_create(suite());
    srunner_run_tagged(sr, NULL, NULL, NULL, run_bugs ? env : exclude, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
