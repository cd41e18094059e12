/* SPDX-License-Identifier: MIT */
/*
 * loop.c - one io_uring, one thread.
 *
 * Every SQE's user_data points at a struct zkm_op (kind + owner). A session's ops live in
 * the session; the session counts them (inflight) and is freed only when the last one
 * has completed after it was closed, so a completion never points at freed memory.
 * Handlers run with the completing op still counted (zkm_session_op_done() afterwards).
 *
 * Futex doorbells: IORING_OP_FUTEX_WAIT (opcode 51, kernel >= 6.7) on the control
 * block's doorbell word; liburing 2.3 predates it, so the SQE is filled by hand:
 * fd = futex2 flags (FUTEX2_SIZE_U32), addr = the word, off = expected value,
 * addr3 = bitset mask. Where the kernel lacks it the timer services every session
 * each tick instead (logged once, shown in `zkmemctl status`).
 */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "log.h"

#ifndef IORING_OP_FUTEX_WAIT
#define IORING_OP_FUTEX_WAIT 51
#endif
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#define FUTEX_MATCH_ANY 0xffffffffULL

static struct io_uring ring;
static int ring_ok;
static int listen_fd = -1;
static int sig_fd = -1;
static int futex_ok;
static int stopping;
static struct zkm_loop_hooks hooks;
static struct __kernel_timespec tick_ts;
static struct zkm_op op_accept = {.kind = ZKM_OP_ACCEPT};
static struct zkm_op op_timer = {.kind = ZKM_OP_TIMER};
static struct zkm_op op_signal = {.kind = ZKM_OP_SIGNAL};
static struct zkm_op op_cancel = {.kind = ZKM_OP_CANCEL};
static struct signalfd_siginfo sig_info;
/* Out of descriptors: accepting is paused until the next tick (a multishot accept that
 * failed with EMFILE would fail again at once, forever); one descriptor is kept spare to
 * take the waiting client off the backlog and hang up on it. */
static int accept_paused;
static int fd_starved; /* since the last successful accept */
static int spare_fd = -1;

static struct io_uring_sqe *get_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

int zkm_loop_futex_supported(void)
{
    return futex_ok;
}

void zkm_loop_set_tick(uint64_t tick_ms)
{
    tick_ts.tv_sec = (long long)(tick_ms / 1000);
    tick_ts.tv_nsec = (long long)(tick_ms % 1000) * 1000000;
}

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    io_uring_sqe_set_data(sqe, &op_accept);
}

static void arm_timer(void)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_timeout(sqe, &tick_ts, 0, 0);
    io_uring_sqe_set_data(sqe, &op_timer);
}

static void arm_signal(void)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_read(sqe, sig_fd, &sig_info, sizeof(sig_info), 0);
    io_uring_sqe_set_data(sqe, &op_signal);
}

static void arm(struct zkm_session *s, struct zkm_op *op, uint8_t kind)
{
    op->kind = kind;
    op->owner = s;
    op->armed = 1;
    s->inflight++;
}

void zkm_loop_arm_recv(struct zkm_session *s)
{
    if (s->op_recv.armed || s->closing)
        return;
    memset(&s->rx_msg, 0, sizeof(s->rx_msg));
    s->rx_iov.iov_base = s->rx_buf;
    s->rx_iov.iov_len = sizeof(s->rx_buf);
    s->rx_msg.msg_iov = &s->rx_iov;
    s->rx_msg.msg_iovlen = 1;
    s->rx_msg.msg_control = s->rx_cmsg.buf;
    s->rx_msg.msg_controllen = sizeof(s->rx_cmsg.buf);
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recvmsg(sqe, s->sock, &s->rx_msg, MSG_CMSG_CLOEXEC);
    arm(s, &s->op_recv, ZKM_OP_RECV);
    io_uring_sqe_set_data(sqe, &s->op_recv);
}

void zkm_loop_arm_pidfd(struct zkm_session *s)
{
    if (s->op_pidfd.armed || s->closing || s->pidfd < 0)
        return;
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_poll_add(sqe, s->pidfd, POLLIN);
    arm(s, &s->op_pidfd, ZKM_OP_PIDFD);
    io_uring_sqe_set_data(sqe, &s->op_pidfd);
}

void zkm_loop_arm_futex(struct zkm_session *s, uint32_t expected)
{
    if (!futex_ok || s->op_futex.armed || s->closing || !s->ctrl)
        return;
    struct io_uring_sqe *sqe = get_sqe();
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_FUTEX_WAIT;
    sqe->fd = FUTEX2_SIZE_U32;
    sqe->addr = (uint64_t)(uintptr_t)&s->ctrl->doorbell;
    sqe->off = expected;
    sqe->addr3 = FUTEX_MATCH_ANY;
    arm(s, &s->op_futex, ZKM_OP_FUTEX);
    io_uring_sqe_set_data(sqe, &s->op_futex);
}

void zkm_loop_cancel_session(struct zkm_session *s)
{
    struct zkm_op *ops[] = {&s->op_recv, &s->op_pidfd, &s->op_futex};
    for (unsigned i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (!ops[i]->armed)
            continue;
        struct io_uring_sqe *sqe = get_sqe();
        io_uring_prep_cancel(sqe, ops[i], 0);
        io_uring_sqe_set_data(sqe, &op_cancel);
    }
}

static int probe_futex(void)
{
    struct io_uring_probe *p = io_uring_get_probe_ring(&ring);
    int ok = p && io_uring_opcode_supported(p, IORING_OP_FUTEX_WAIT);
    if (p)
        io_uring_free_probe(p);
    return ok;
}

/* The process is out of descriptors: refuse the client at the head of the backlog (its
 * HELLO gets -EMFILE; it falls back to local memory) instead of letting it wait for its
 * timeout, and accept nothing more until the next tick. */
static void accept_out_of_fds(int err)
{
    if (!fd_starved)
        zkm_log(ZKM_LOG_ERR,
                "out of file descriptors (%s): refusing new clients until some close "
                "(raise LimitNOFILE; each client takes 2)",
                strerror(err));
    fd_starved = 1;
    accept_paused = 1;
    if (spare_fd >= 0) {
        close(spare_fd);
        spare_fd = -1;
    }
    /* the listening socket blocks: look before taking (only this thread accepts, and the
     * multishot accept ended with the error) */
    struct pollfd p = {.fd = listen_fd, .events = POLLIN};
    int fd =
        poll(&p, 1, 0) == 1 ? accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK) : -1;
    if (fd >= 0) {
        if (hooks.refuse)
            hooks.refuse(fd);
        else
            close(fd);
    }
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void accept_resume(void)
{
    if (!accept_paused || stopping)
        return;
    accept_paused = 0;
    arm_accept();
}

int zkm_loop_init(int lfd, uint64_t tick_ms, const struct zkm_loop_hooks *h)
{
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = 16384;
    int err = io_uring_queue_init_params(1024, &ring, &params);
    if (err < 0) {
        zkm_log(ZKM_LOG_ERR,
                "io_uring_queue_init failed: %s (is io_uring disabled? check "
                "/proc/sys/kernel/io_uring_disabled)",
                strerror(-err));
        return err;
    }
    ring_ok = 1;
    hooks = *h;
    listen_fd = lfd;
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    zkm_loop_set_tick(tick_ms);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sig_fd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sig_fd < 0)
        return -errno;

    futex_ok = probe_futex();
    if (!futex_ok)
        zkm_fallback(ZKM_FB_NO_FUTEX_URING,
                     "this kernel's io_uring has no FUTEX_WAIT (needs Linux 6.7): client "
                     "doorbells are looked at every %llu ms instead",
                     (unsigned long long)tick_ms);
    arm_accept();
    arm_timer();
    arm_signal();
    io_uring_submit(&ring);
    return 0;
}

void zkm_loop_stop(void)
{
    stopping = 1;
}

static void on_signal(int res)
{
    if (res != (int)sizeof(sig_info)) {
        arm_signal();
        return;
    }
    if (sig_info.ssi_signo == SIGHUP) {
        zkm_log(ZKM_LOG_INFO, "SIGHUP: reloading the configuration");
        if (hooks.reload)
            hooks.reload();
    } else {
        zkm_log(ZKM_LOG_INFO, "%s: stopping", strsignal((int)sig_info.ssi_signo));
        stopping = 1;
    }
    arm_signal();
}

static void dispatch(struct io_uring_cqe *cqe)
{
    struct zkm_op *op = io_uring_cqe_get_data(cqe);
    if (!op)
        return;
    int res = cqe->res;
    switch (op->kind) {
    case ZKM_OP_ACCEPT:
        if (res >= 0) {
            if (fd_starved)
                zkm_log(ZKM_LOG_INFO, "descriptors available again: accepting clients");
            fd_starved = 0;
            zkm_session_accept(res);
        } else if (res == -EMFILE || res == -ENFILE) {
            accept_out_of_fds(-res);
            return; /* the tick re-arms */
        } else if (res != -ECANCELED) {
            zkm_log(ZKM_LOG_WARNING, "accept failed: %s", strerror(-res));
        }
        if (!(cqe->flags & IORING_CQE_F_MORE) && !stopping)
            arm_accept();
        return;
    case ZKM_OP_TIMER:
        accept_resume();
        if (hooks.tick)
            hooks.tick();
        if (!stopping)
            arm_timer();
        return;
    case ZKM_OP_SIGNAL:
        on_signal(res);
        return;
    case ZKM_OP_CANCEL:
        return;
    default:
        break;
    }
    struct zkm_session *s = op->owner;
    op->armed = 0;
    switch (op->kind) {
    case ZKM_OP_RECV:
        zkm_session_on_recv(s, res);
        break;
    case ZKM_OP_PIDFD:
        zkm_session_on_pidfd(s, res);
        break;
    case ZKM_OP_FUTEX:
        zkm_session_on_futex(s, res);
        break;
    }
    zkm_session_op_done(s);
}

int zkm_loop_run(void)
{
    int backlog = 0;
    while (!stopping) {
        /* with deferred work left, look at what completed without waiting for it */
        int err = backlog ? io_uring_submit(&ring) : io_uring_submit_and_wait(&ring, 1);
        if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
            zkm_log(ZKM_LOG_ERR, "io_uring_submit_and_wait: %s", strerror(-err));
            return err;
        }
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            dispatch(cqe);
            n++;
        }
        io_uring_cq_advance(&ring, n);
        backlog = hooks.backlog ? hooks.backlog() : 0;
    }
    return 0;
}

void zkm_loop_fini(void)
{
    if (ring_ok)
        io_uring_queue_exit(&ring);
    ring_ok = 0;
    if (sig_fd >= 0)
        close(sig_fd);
    sig_fd = -1;
}
