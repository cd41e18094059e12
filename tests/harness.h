/* SPDX-License-Identifier: MIT */
/*
 * harness.h - helpers for integration tests that run a real zkmemd.
 *
 * The harness knows only the daemon's command line and its config key `runtime_dir`:
 * the binary comes from $ZKMEM_DAEMON, it is started as
 *     $ZKMEM_DAEMON --config <dir>/zkmemd.conf [extra argv...]
 * with stdout and stderr appended to <dir>/zkmemd.log, and it is considered up when
 * <dir>/zkmemd.sock accepts a SOCK_SEQPACKET connection. Nothing here depends on the
 * daemon's internals.
 *
 * Every function returns 0 (or the documented value) or a negative errno. The daemon
 * child gets PR_SET_PDEATHSIG(SIGKILL), so a test that dies does not leave daemons
 * behind; it inherits no descriptors beyond 0-2.
 */
#ifndef ZKM_TEST_HARNESS_H
#define ZKM_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct zkm_test_daemon {
    pid_t pid;      /* 0 when not running */
    char dir[256];  /* temporary runtime dir, also holds conf and log */
    char sock[300]; /* <dir>/zkmemd.sock */
    char conf[300]; /* <dir>/zkmemd.conf */
    char log[300];  /* <dir>/zkmemd.log */
};

/*
 * mkdtemp under $TMPDIR (or /tmp); write `extra_config` (may be NULL) plus
 * `runtime_dir = <dir>` to <dir>/zkmemd.conf; spawn the daemon; wait (10 s at most) until
 * its socket accepts a connection. If the daemon exits or never listens, its log is
 * copied to stderr, the directory is removed and -ESRCH (exited) / -ETIMEDOUT is
 * returned; -ENOENT when $ZKMEM_DAEMON is unset, -ENAMETOOLONG when the socket path would
 * not fit sun_path.
 */
int zkm_test_daemon_start(struct zkm_test_daemon *d, const char *extra_config,
                          const char *const *extra_argv);

/* Start the daemon again in the same directory with the same config (after kill9), and
 * wait for its socket as zkm_test_daemon_start() does. The log is appended to. */
int zkm_test_daemon_respawn(struct zkm_test_daemon *d, const char *const *extra_argv);

/* SIGTERM, wait at most 10 s (then SIGKILL and -ETIMEDOUT), remove the directory.
 * Returns the exit status (0..255), 128 + signal if it died of a signal, or -errno. */
int zkm_test_daemon_stop(struct zkm_test_daemon *d);

/* SIGKILL and reap; keeps the directory (for respawn or inspection). Returns 0 or -errno. */
int zkm_test_daemon_kill9(struct zkm_test_daemon *d);

/* Remove the directory of a daemon that is no longer running (after kill9). */
int zkm_test_daemon_cleanup(struct zkm_test_daemon *d);

/* 1 if the daemon's log contains `needle`, 0 if not, -errno if it cannot be read. */
int zkm_test_daemon_log_contains(const struct zkm_test_daemon *d, const char *needle);

/* Copy the daemon's log to stderr (for failure diagnostics). */
void zkm_test_daemon_dump_log(const struct zkm_test_daemon *d);

/* HugePages_Free / HugePages_Total from /proc/meminfo, or -errno. */
long zkm_test_hugepages_free(void);
/* A field of /proc/self/status in kB (HugetlbPages, RssShmem, ...); -ENOENT when absent. */
long zkm_test_self_status_kb(const char *key);
long zkm_test_hugepages_total(void);

/* Entries in /proc/<pid>/fd, or -errno. */
int zkm_test_fd_count(pid_t pid);

/*
 * Poll pred(arg) (1 ms, backing off to 10 ms) until it returns nonzero or timeout_ms
 * passed; 0 when it became true, -ETIMEDOUT otherwise. For conditions that happen
 * asynchronously (the daemon reclaimed a dead client's pages), not for sleeping.
 */
int zkm_test_wait_until(int (*pred)(void *), void *arg, int timeout_ms);

/* Run fn(arg) in a forked child under setresgid(gid)/setresuid(uid) with no
 * supplementary groups (root only, else -EPERM). Returns the child's exit status
 * (fn's return value & 0xff), 128 + signal if it died of one, or -errno. */
int zkm_test_run_as(uid_t uid, gid_t gid, int (*fn)(void *), void *arg);

/* Write one word per 4 KiB page of [p, p + n), derived from seed; check_pages: 1 when
 * every one is still there. For proving memory kept (or did not leak) its contents. */
void zkm_test_fill_pages(void *p, size_t n, uint64_t seed);
int zkm_test_check_pages(const void *p, size_t n, uint64_t seed);

/* Run argv (argv[0] is the program's path) with its stdout, and its stderr too when
 * with_stderr, captured into out (NUL-terminated). Returns its exit status, 128 + signal
 * if it died of one, or -errno. */
int zkm_test_capture(const char *const argv[], int with_stderr, char *out, size_t outlen);

/* Print "SKIP <test>: <reason>" to stderr; the caller then returns. */
void zkm_test_skip(const char *test, const char *reason);

#endif
