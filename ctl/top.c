/* SPDX-License-Identifier: MIT */
/*
 * top.c - `zkmemctl top`: a live view refreshed every second.
 *
 * Each frame takes one snapshot (status, arenas, clients), draws a header, one bar per
 * node (granted share of the arena) and the clients sorted by bytes granted, with
 * alloc/free rates from the previous frame (matched by client_id). The frame is drawn
 * into a memory stream and written with one write, so the screen does not flicker.
 *
 * Terminal: with a tty on stdin the terminal goes to non-canonical, no-echo mode; the
 * original settings are restored on every exit path (normal return, error, SIGINT,
 * SIGTERM, SIGHUP) by restore_tty(), which is async-signal-safe. 'q' (or Ctrl-C) quits.
 * Without a tty, 'q' or end of input on stdin quits after the frame, which makes the
 * view scriptable and testable (`echo q | zkmemctl top`).
 */
#include "ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static struct termios saved_tty;
static volatile sig_atomic_t tty_raw;

static void restore_tty(void)
{
    if (tty_raw) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tty);
        tty_raw = 0;
        /* show the cursor again */
        (void)!write(STDOUT_FILENO, "\033[?25h", 6);
    }
}

static void on_signal(int sig)
{
    restore_tty();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int enter_raw(void)
{
    struct termios t;
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tty) < 0)
        return 0;
    t = saved_tty;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    atexit(restore_tty);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) < 0)
        return 0;
    tty_raw = 1;
    return 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const struct zkm_client_info *find_prev(const struct zkm_client_info *prev, size_t n,
                                               uint32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (prev[i].client_id == id)
            return &prev[i];
    return NULL;
}

static void draw(FILE *f, const struct ctl_snapshot *s, const struct zkm_client_info *prev,
                 size_t n_prev, double dt, int cols, int rows, int tty)
{
    char a[24], b[24];
    uint64_t up = s->status.uptime_ms / 1000;

    if (tty)
        fputs("\033[H\033[2J\033[?25l", f);
    fprintf(f,
            "zkmemd pid %" PRId32 "  up %" PRIu64 "h%02" PRIu64 "m%02" PRIu64 "s  protocol %" PRIu32
            "  %" PRIu32 " nodes  %" PRIu32 " clients  backing %s%s   (q quits)\n",
            s->status.pid, up / 3600, up / 60 % 60, up % 60, s->status.version, s->status.n_nodes,
            s->status.n_clients,
            s->status.backing == ZKM_BACKING_HUGETLB     ? "hugetlb"
            : s->status.backing == ZKM_BACKING_SHMEM_THP ? "shmem+THP (FALLBACK)"
                                                         : "shmem 4K (FALLBACK)",
            s->status.simulated_topology ? "  simulated topology" : "");
    int bar = cols - 48;
    if (bar < 10)
        bar = 10;
    if (bar > 80)
        bar = 80;
    for (size_t i = 0; i < s->n_arenas; i++) {
        const struct zkm_arena_info *ar = &s->arenas[i];
        uint64_t cap = ar->capacity_slabs ? ar->capacity_slabs : 1;
        int filled = (int)((ar->granted_slabs * (uint64_t)bar + cap - 1) / cap);
        if (filled > bar)
            filled = bar;
        render_size(a, sizeof(a), ar->granted_slabs * ar->slab_size);
        render_size(b, sizeof(b), ar->capacity_slabs * ar->slab_size);
        fprintf(f, "node %-2" PRIu32 " [", ar->node);
        for (int k = 0; k < bar; k++)
            fputc(k < filled ? '#' : '.', f);
        fprintf(f, "] %s / %s\n", a, b);
    }
    fprintf(f, "\n%7s %-15s %4s %6s %10s %10s %10s %10s\n", "PID", "COMM", "NODE", "SLABS",
            "GRANTED", "IN USE", "ALLOC/s", "FREE/s");
    int room = rows - 4 - (int)s->n_arenas;
    for (size_t i = 0; i < s->n_clients && (int)i < (room > 1 ? room : 1); i++) {
        const struct zkm_client_info *c = &s->clients[i];
        const struct zkm_client_info *p = find_prev(prev, n_prev, c->client_id);
        char comm[ZKM_COMM_LEN];
        size_t k;
        for (k = 0; k < ZKM_COMM_LEN - 1 && c->comm[k]; k++)
            comm[k] = (c->comm[k] >= 0x20 && c->comm[k] < 0x7f) ? c->comm[k] : '?';
        comm[k] = '\0';
        render_size(a, sizeof(a), c->bytes_granted);
        render_size(b, sizeof(b), c->bytes_in_use);
        double ra = 0, rf = 0;
        if (p && dt > 0) {
            ra = (double)(c->alloc_ops - p->alloc_ops) / dt;
            rf = (double)(c->free_ops - p->free_ops) / dt;
        }
        fprintf(f, "%7" PRId32 " %-15s %4" PRIu32 " %6" PRIu64 " %10s %10s %10.0f %10.0f\n", c->pid,
                comm, c->node, c->slabs, a, b, ra, rf);
    }
    if (s->n_clients == 0)
        fputs("(no clients connected)\n", f);
}

int ctl_top(struct ctl_conn *c, const char *socket_path)
{
    struct zkm_client_info *prev = NULL;
    size_t n_prev = 0;
    double t_prev = 0;
    int tty = enter_raw();
    int r = CTL_OK;

    (void)socket_path;
    for (;;) {
        struct ctl_snapshot s;
        struct winsize ws = {0};
        int cols = 100, rows = 40;
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col && ws.ws_row) {
            cols = ws.ws_col;
            rows = ws.ws_row;
        }
        r = ctl_snapshot_get(c, 0, &s);
        if (r != CTL_OK)
            break;
        clients_sort(s.clients, s.n_clients);
        double t = now_s();

        char *frame = NULL;
        size_t flen = 0;
        FILE *f = open_memstream(&frame, &flen);
        if (!f) {
            ctl_snapshot_free(&s);
            r = CTL_DAEMON;
            break;
        }
        draw(f, &s, prev, n_prev, t_prev ? t - t_prev : 0, cols, rows, tty);
        fclose(f);
        fwrite(frame, 1, flen, stdout);
        fflush(stdout);
        free(frame);

        free(prev);
        prev = s.clients;
        n_prev = s.n_clients;
        s.clients = NULL;
        t_prev = t;
        ctl_snapshot_free(&s);

        /* wait up to 1 s for a key */
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int quit = 0;
        double deadline = t + 1.0;
        for (;;) {
            int ms = (int)((deadline - now_s()) * 1000);
            if (ms <= 0)
                break;
            int pr = poll(&pfd, 1, ms);
            if (pr < 0 && errno == EINTR)
                continue;
            if (pr <= 0)
                break;
            char ch[64];
            ssize_t n = read(STDIN_FILENO, ch, sizeof(ch));
            if (n <= 0) {
                if (!tty) { /* end of input: quit after this frame */
                    quit = 1;
                    break;
                }
                continue;
            }
            if (memchr(ch, 'q', (size_t)n) || memchr(ch, 'Q', (size_t)n) ||
                memchr(ch, 3, (size_t)n)) {
                quit = 1;
                break;
            }
        }
        if (quit)
            break;
    }
    free(prev);
    restore_tty();
    if (tty)
        fputc('\n', stdout);
    return r;
}
