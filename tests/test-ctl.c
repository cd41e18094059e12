/* SPDX-License-Identifier: MIT */
/*
 * test-ctl.c - the real zkmemctl binary ($ZKMEMCTL) against a fake zkmemd.
 *
 * The fake is a thread in the test serving a SOCK_SEQPACKET socket in a temporary dir:
 * it validates every request with zkm_msg_validate(), answers HELLO, QUERY (canned
 * records built here, in small pages so paging is exercised) and ADMIN, and records what
 * it was asked. Each test starts a fake, runs zkmemctl as a child with stdout/stderr
 * captured, stops the fake (joining the thread, so what it recorded is final) and then
 * asserts on the output, the exit code and the recorded requests.
 */
#include "harness.h"
#include "zkm_proto.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------ */
/* The fake daemon                                                                       */

enum hello_mode { HELLO_OK, HELLO_MISMATCH, HELLO_GARBAGE };

struct fake {
    char dir[128];
    char sock[160];
    int lfd;
    int stop[2];
    pthread_t thr;
    pthread_mutex_t mu; /* held by the fake while it handles a message; by tests to look */
    /* behaviour */
    enum hello_mode hello;
    int32_t query_status; /* 0 or -errno for every QUERY */
    int32_t admin_status;
    uint32_t admin_value;
    uint32_t page_records; /* records per QUERY page */
    uint32_t page_bytes;   /* bytes per CONFIG/MAP page */
    struct zkm_status_info status;
    struct zkm_arena_info arenas[2];
    uint32_t n_arenas;
    struct zkm_client_info clients[5];
    uint32_t n_clients;
    const char *config_text;
    uint8_t map[2][200];
    uint32_t map_len[2];
    struct zkm_advice_info advice[8];
    uint32_t n_advice;
    /* recorded */
    unsigned connections, queries, bad_requests;
    int32_t last_clients_arg, last_advice_arg;
    struct zkm_msg_admin admin;
    unsigned admins;
};

static void fake_reply_query(struct fake *f, int fd, const struct zkm_msg_query *q)
{
    struct zkm_msg_query_reply r;
    const uint8_t *src = NULL;
    size_t rec = 1, total = 0, page = f->page_records;
    struct zkm_client_info filtered[5];
    struct zkm_advice_info advice[8];

    memset(&r, 0, sizeof(r));
    r.hdr = (struct zkm_hdr){ZKM_PROTO_MAGIC, q->hdr.version, ZKM_MSG_QUERY_REPLY, sizeof(r),
                             q->hdr.seq};
    r.kind = q->kind;
    r.status = f->query_status;
    switch (q->kind) {
    case ZKM_QUERY_STATUS:
        src = (const uint8_t *)&f->status, rec = sizeof(f->status), total = 1;
        break;
    case ZKM_QUERY_ARENAS:
        src = (const uint8_t *)f->arenas, rec = sizeof(f->arenas[0]), total = f->n_arenas;
        break;
    case ZKM_QUERY_CLIENTS: {
        f->last_clients_arg = q->arg;
        for (uint32_t i = 0; i < f->n_clients; i++)
            if (q->arg == 0 || f->clients[i].pid == q->arg)
                filtered[total++] = f->clients[i];
        src = (const uint8_t *)filtered, rec = sizeof(filtered[0]);
        break;
    }
    case ZKM_QUERY_ADVICE: /* as CLIENTS: pid filter in arg */
        f->last_advice_arg = q->arg;
        for (uint32_t i = 0; i < f->n_advice; i++)
            if (q->arg == 0 || f->advice[i].pid == q->arg)
                advice[total++] = f->advice[i];
        src = (const uint8_t *)advice, rec = sizeof(advice[0]);
        break;
    case ZKM_QUERY_CONFIG:
        src = (const uint8_t *)f->config_text, total = strlen(f->config_text);
        page = f->page_bytes;
        break;
    case ZKM_QUERY_MAP:
        if (q->arg < 0 || q->arg >= 2) {
            r.status = -EINVAL;
            break;
        }
        src = f->map[q->arg], total = f->map_len[q->arg], page = f->page_bytes;
        break;
    }
    if (r.status == 0 && src) {
        size_t off = q->offset < total ? q->offset : total;
        size_t n = total - off < page ? total - off : page;
        memcpy(r.payload, src + off * rec, n * rec);
        r.count = (uint32_t)n;
        r.total = (uint32_t)total;
    }
    send(fd, &r, sizeof(r), MSG_NOSIGNAL);
}

union msg {
    struct zkm_hdr hdr;
    struct zkm_msg_hello hello;
    struct zkm_msg_query query;
    struct zkm_msg_admin admin;
    uint8_t bytes[ZKM_MSG_MAX_SIZE];
};

static int fake_handle(struct fake *f, int fd, const union msg *mp, size_t len, uint16_t *ver);

static void fake_serve(struct fake *f, int fd)
{
    union msg m;
    uint16_t version = 0;

    for (;;) {
        ssize_t n = recv(fd, m.bytes, sizeof(m.bytes), 0);
        if (n <= 0)
            return;
        pthread_mutex_lock(&f->mu);
        int keep = fake_handle(f, fd, &m, (size_t)n, &version);
        pthread_mutex_unlock(&f->mu);
        if (!keep)
            return;
    }
}

/* One request; returns 0 when the connection should be closed. Called under f->mu. */
static int fake_handle(struct fake *f, int fd, const union msg *mp, size_t len, uint16_t *ver)
{
    uint16_t version = *ver;
    if (zkm_msg_validate(mp->bytes, len, 0, version, 0) < 0) {
        f->bad_requests++;
        return 0;
    }
    if (mp->hdr.type == ZKM_MSG_HELLO) {
        struct zkm_msg_hello_reply r;
        memset(&r, 0, sizeof(r));
        r.hdr = (struct zkm_hdr){ZKM_PROTO_MAGIC, 0, ZKM_MSG_HELLO_REPLY, sizeof(r), mp->hdr.seq};
        if (!(mp->hello.flags & ZKM_HELLO_CTL) || mp->hello.version_min != ZKM_PROTO_VERSION_MIN)
            f->bad_requests++;
        if (f->hello == HELLO_MISMATCH) {
            r.status = -EPROTONOSUPPORT;
            r.version_max = 9;
            send(fd, &r, sizeof(r), MSG_NOSIGNAL);
            return 0;
        }
        if (f->hello == HELLO_GARBAGE) {
            r.hdr.magic = 0xdeadbeef;
            send(fd, &r, sizeof(r), MSG_NOSIGNAL);
            return 0;
        }
        r.version = *ver = ZKM_PROTO_VERSION_MAX;
        r.version_max = ZKM_PROTO_VERSION_MAX;
        r.client_id = 1;
        r.n_nodes = f->n_arenas;
        send(fd, &r, sizeof(r), MSG_NOSIGNAL);
    } else if (mp->hdr.type == ZKM_MSG_QUERY) {
        f->queries++;
        fake_reply_query(f, fd, &mp->query);
    } else if (mp->hdr.type == ZKM_MSG_ADMIN) {
        struct zkm_msg_status_reply r = {
            .hdr = {ZKM_PROTO_MAGIC, version, ZKM_MSG_STATUS_REPLY, sizeof(r), mp->hdr.seq},
            .status = f->admin_status,
            .value = f->admin_value,
        };
        f->admin = mp->admin;
        f->admins++;
        send(fd, &r, sizeof(r), MSG_NOSIGNAL);
    } else {
        f->bad_requests++;
        return 0;
    }
    return 1;
}

static void *fake_thread(void *arg)
{
    struct fake *f = arg;
    for (;;) {
        struct pollfd p[2] = {{f->lfd, POLLIN, 0}, {f->stop[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0)
            continue;
        if (p[1].revents)
            return NULL;
        int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&f->mu);
        f->connections++;
        pthread_mutex_unlock(&f->mu);
        fake_serve(f, fd);
        close(fd);
    }
}

static void client_rec(struct zkm_client_info *c, uint32_t id, int32_t pid, const char *comm,
                       uint64_t granted)
{
    memset(c, 0, sizeof(*c));
    c->client_id = id;
    c->pid = pid;
    c->uid = 1000;
    c->node = id % 2;
    c->slabs = granted >> 21;
    c->bytes_granted = granted;
    c->bytes_in_use = granted / 2;
    c->alloc_ops = 77 + id;
    c->free_ops = 70 + id;
    strncpy(c->comm, comm, ZKM_COMM_LEN - 1);
}

static void fake_init(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    snprintf(f->dir, sizeof(f->dir), "%s/zkm-ctl-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(f->dir));
    snprintf(f->sock, sizeof(f->sock), "%s/zkmemd.sock", f->dir);
    f->page_records = 2;
    f->page_bytes = 50;

    f->status.version = 1;
    f->status.pid = 4242;
    f->status.n_nodes = 2;
    f->status.n_clients = 5;
    f->status.uptime_ms = 3723000; /* 1h 02m 03s */
    f->status.backing = ZKM_BACKING_HUGETLB;
    f->status.futex_mode = 1;
    f->status.clients_total = 12;
    f->status.protocol_errors = 3;

    f->n_arenas = 2;
    for (uint32_t i = 0; i < 2; i++) {
        struct zkm_arena_info *a = &f->arenas[i];
        a->node = i;
        a->phys_node = 0;
        a->backing = ZKM_BACKING_HUGETLB;
        a->simulated = 1;
        a->slab_size = 2u << 20;
        a->capacity_slabs = 512;
        a->granted_slabs = 12 + i;
        a->free_slabs = 500 - i;
        a->grants_total = 1000 + i;
        a->misplaced_pages = 7;
        a->cached_slabs = 3 + i;
        a->cache_reuses_total = 40 + i;
        a->decayed_total = 50 + i;
        a->pressure_reclaims_total = 60 + i;
        a->remote_grants_total = 70 + i;
    }
    f->n_clients = 5;
    client_rec(&f->clients[0], 1, 101, "app", 4u << 20);
    client_rec(&f->clients[1], 2, 102, "ev\"il\x01", 64u << 20);
    client_rec(&f->clients[2], 3, 103, "db", 2048u << 20);
    client_rec(&f->clients[3], 4, 104, "cache", 8u << 20);
    client_rec(&f->clients[4], 5, 105, "worker", 0);
    f->config_text = "runtime_dir = \"/run/zkmem\"  # directory of the control socket\n"
                     "grant_depth = 4  # slabs kept pre-granted per client and node [0..64]\n"
                     "mode = balanced  # performance mode\n";
    f->map_len[0] = 130;
    memset(f->map[0], ZKM_SLOT_FREE, 130);
    memset(f->map[0] + 64, ZKM_SLOT_HELD, 3);
    f->map[0][67] = ZKM_SLOT_PREGRANTED;
    f->map[0][68] = ZKM_SLOT_CACHED;
    f->map[0][69] = ZKM_SLOT_CACHED;
    f->map[0][129] = 'x'; /* unknown state */
    f->map_len[1] = 10;
    memset(f->map[1], ZKM_SLOT_HELD, 10);
}

static void fake_start(struct fake *f)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, f->sock);
    f->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(f->lfd, 0);
    ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(f->lfd, 8), 0);
    ck_assert_int_eq(pipe2(f->stop, O_CLOEXEC), 0);
    ck_assert_int_eq(pthread_create(&f->thr, NULL, fake_thread, f), 0);
}

static void fake_stop(struct fake *f)
{
    ck_assert_int_eq(write(f->stop[1], "x", 1), 1);
    pthread_join(f->thr, NULL);
    close(f->stop[0]);
    close(f->stop[1]);
    close(f->lfd);
    unlink(f->sock);
    rmdir(f->dir);
}

/* ------------------------------------------------------------------------------------ */
/* Running zkmemctl                                                                      */

struct run {
    int code; /* exit status, or 128 + signal */
    char out[65536];
    char err[8192];
};

static void slurp(int fd, char *buf, size_t len)
{
    size_t n = 0;
    lseek(fd, 0, SEEK_SET);
    for (;;) {
        ssize_t r = read(fd, buf + n, len - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
}

/* Run $ZKMEMCTL argv... with ZKMEM_SOCKET=sock (NULL: unset), stdin from /dev/null,
 * as uid (0: unchanged; else uid = gid = `as_uid` with no supplementary groups). */
static void run_ctl_as(struct run *r, const char *sock, uid_t as_uid, const char *const *argv)
{
    const char *bin = getenv("ZKMEMCTL");
    char tmpl_o[] = "/tmp/zkm-ctl-out-XXXXXX", tmpl_e[] = "/tmp/zkm-ctl-err-XXXXXX";
    int fo = mkstemp(tmpl_o), fe = mkstemp(tmpl_e);
    const char *args[16];
    size_t n = 0;

    ck_assert_msg(bin != NULL, "ZKMEMCTL is not set (run through meson test)");
    ck_assert_int_ge(fo, 0);
    ck_assert_int_ge(fe, 0);
    unlink(tmpl_o);
    unlink(tmpl_e);
    args[n++] = bin;
    for (; *argv && n < 15; argv++)
        args[n++] = *argv;
    args[n] = NULL;

    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        if (as_uid && (setgroups(0, NULL) < 0 || setresgid(as_uid, as_uid, as_uid) < 0 ||
                       setresuid(as_uid, as_uid, as_uid) < 0))
            _exit(126);
        if (sock)
            setenv("ZKMEM_SOCKET", sock, 1);
        else
            unsetenv("ZKMEM_SOCKET");
        execv(bin, (char *const *)args);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    r->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(fo, r->out, sizeof(r->out));
    slurp(fe, r->err, sizeof(r->err));
    close(fo);
    close(fe);
}

#define RUN_AS(r, sock, uid, ...)                                                                  \
    do {                                                                                           \
        const char *const argv_[] = {__VA_ARGS__, NULL};                                           \
        run_ctl_as((r), (sock), (uid), argv_);                                                     \
    } while (0)
#define RUN(r, sock, ...) RUN_AS(r, sock, 0, __VA_ARGS__)

#define ASSERT_HAS(hay, needle)                                                                    \
    ck_assert_msg(strstr((hay), (needle)) != NULL, "missing <%s> in:\n%.3000s", (needle), (hay))

/* A small JSON syntax checker: the output must be exactly one JSON value. */
static const char *json_value(const char *p);
static const char *json_ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
        p++;
    return p;
}
static const char *json_string_end(const char *p)
{
    if (*p++ != '"')
        return NULL;
    for (; *p != '"'; p++) {
        if ((unsigned char)*p < 0x20)
            return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i])
                        return NULL;
                p += 4;
            } else if (!*p || !strchr("\"\\/bfnrt", *p)) {
                return NULL;
            }
        }
    }
    return p + 1;
}
static const char *json_value(const char *p)
{
    p = json_ws(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = json_ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                p = json_string_end(json_ws(p));
                if (!p)
                    return NULL;
                p = json_ws(p);
                if (*p++ != ':')
                    return NULL;
            }
            p = json_value(p);
            if (!p)
                return NULL;
            p = json_ws(p);
            if (*p == ',') {
                p++;
                continue;
            }
            return *p == close ? p + 1 : NULL;
        }
    }
    if (*p == '"')
        return json_string_end(p);
    if (strncmp(p, "true", 4) == 0 || strncmp(p, "null", 4) == 0)
        return p + 4;
    if (strncmp(p, "false", 5) == 0)
        return p + 5;
    const char *s = p;
    if (*p == '-')
        p++;
    while (*p >= '0' && *p <= '9')
        p++;
    return p > s ? p : NULL;
}
static void assert_one_json(const char *text)
{
    const char *end = json_value(text);
    ck_assert_msg(end != NULL, "not JSON:\n%s", text);
    ck_assert_msg(*json_ws(end) == '\0', "trailing text after the JSON document:\n%s", text);
}

/* ------------------------------------------------------------------------------------ */

static struct run R;
static struct fake F;

START_TEST(test_missing_socket)
{
    char dir[] = "/tmp/zkm-ctl-none-XXXXXX", sock[64], want[512];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sock, sizeof(sock), "%s/zkmemd.sock", dir);
    RUN(&R, sock, "status");
    ck_assert_int_eq(R.code, 2);
    snprintf(want, sizeof(want),
             "zkmemctl: cannot reach zkmemd at %s: No such file or directory (is zkmemd "
             "running? start it with 'systemctl start zkmemd', or point ZKMEM_SOCKET at its "
             "socket)\n",
             sock);
    ck_assert_str_eq(R.err, want);
    ck_assert_str_eq(R.out, "");
    /* --socket wins over the environment */
    RUN(&R, "/nonexistent/a.sock", "--socket", sock, "--json", "arenas");
    ck_assert_int_eq(R.code, 2);
    ck_assert_str_eq(R.err, want);
    rmdir(dir);
}
END_TEST

START_TEST(test_usage_errors)
{
    RUN(&R, "/nonexistent/zkmemd.sock", "status", "--frobnicate");
    ck_assert_int_eq(R.code, 1);
    ASSERT_HAS(R.err, "zkmemctl: unknown option '--frobnicate'\n");
    ASSERT_HAS(R.err, "usage: zkmemctl");
    RUN(&R, "/nonexistent/zkmemd.sock", "launch");
    ck_assert_int_eq(R.code, 1);
    ASSERT_HAS(R.err, "zkmemctl: unknown command 'launch'\n");
    RUN(&R, "/nonexistent/zkmemd.sock", "clients", "--map");
    ck_assert_int_eq(R.code, 1);
    RUN(&R, "/nonexistent/zkmemd.sock", "reserve", "--node", "1");
    ck_assert_int_eq(R.code, 1);
    ASSERT_HAS(R.err, "'reserve' needs --node N and --pages P");
    RUN(&R, "/nonexistent/zkmemd.sock", "reserve", "--node", "x", "--pages", "3");
    ck_assert_int_eq(R.code, 1);
    RUN(&R, "/nonexistent/zkmemd.sock", "stats", "--json", "--prometheus");
    ck_assert_int_eq(R.code, 1);
    /* a bad tune key is caught before connecting, with a suggestion */
    RUN(&R, "/nonexistent/zkmemd.sock", "tune", "set", "grant_dept", "4");
    ck_assert_int_eq(R.code, 1);
    ck_assert_str_eq(R.err, "zkmemctl: unknown key 'grant_dept' (did you mean 'grant_depth'?)\n");
    RUN(&R, "/nonexistent/zkmemd.sock", "tune", "set", "grant_depth", "900");
    ck_assert_int_eq(R.code, 1);
    ck_assert_str_eq(R.err, "zkmemctl: grant_depth = 900: out of range 0..64\n");
    RUN(&R, NULL, "--help");
    ck_assert_int_eq(R.code, 0);
    ASSERT_HAS(R.out, "usage: zkmemctl");
    ASSERT_HAS(R.out, "exit status: 0 ok, 1 usage error, 2 zkmemd unreachable");
}
END_TEST

START_TEST(test_version_mismatch)
{
    fake_init(&F);
    F.hello = HELLO_MISMATCH;
    fake_start(&F);
    RUN(&R, F.sock, "status");
    fake_stop(&F);
    ck_assert_int_eq(R.code, 3);
    char want[96];
    snprintf(want, sizeof(want),
             "zkmemctl: protocol version mismatch: zkmemctl speaks versions %d..%d, zkmemd at ",
             ZKM_PROTO_VERSION_MIN, ZKM_PROTO_VERSION_MAX);
    ASSERT_HAS(R.err, want);
    ASSERT_HAS(R.err, "speaks up to version 9");
    ck_assert_str_eq(R.out, "");
    ck_assert_uint_eq(F.bad_requests, 0);
}
END_TEST

START_TEST(test_protocol_garbage)
{
    fake_init(&F);
    F.hello = HELLO_GARBAGE;
    fake_start(&F);
    RUN(&R, F.sock, "clients");
    fake_stop(&F);
    ck_assert_int_eq(R.code, 3);
    ASSERT_HAS(R.err, "zkmemctl: bad reply from zkmemd at ");
    ASSERT_HAS(R.err, "malformed message");
}
END_TEST

START_TEST(test_status_json)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "--json", "status");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_uint_eq(F.bad_requests, 0);
    assert_one_json(R.out);
    ASSERT_HAS(R.out, "\"status\": {");
    ASSERT_HAS(R.out, "\"pid\": 4242");
    ASSERT_HAS(R.out, "\"uptime_ms\": 3723000");
    ASSERT_HAS(R.out, "\"protocol_errors\": 3");
    /* every field of the list is a key */
#define KEY_CHECK(t, n, d) ASSERT_HAS(R.out, "\"" #n "\": ");
    ZKM_STATUS_FIELDS(KEY_CHECK)
}
END_TEST

START_TEST(test_status_human)
{
    fake_init(&F);
    F.status.backing = ZKM_BACKING_SHMEM_THP;
    fake_start(&F);
    RUN(&R, F.sock, "status");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ASSERT_HAS(R.out, "WARNING: zkmemd is serving small-page fallback memory");
    ASSERT_HAS(R.out, "1h 02m 03s");
    ASSERT_HAS(R.out, "shmem+THP");
    ASSERT_HAS(R.out, "io_uring futex wait");
}
END_TEST

START_TEST(test_arenas)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "arenas");
    struct run j;
    RUN(&j, F.sock, "arenas", "--json");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ASSERT_HAS(R.out, "NODE 0");
    ASSERT_HAS(R.out, "NODE 1");
    ASSERT_HAS(R.out, "2.0 MiB");       /* slab_size */
    ASSERT_HAS(R.out, "512 (1.0 GiB)"); /* capacity_slabs with bytes */
    ASSERT_HAS(R.out, "13 (26.0 MiB)"); /* granted_slabs of node 1 */
    ASSERT_HAS(R.out, "cached_slabs ");
    ASSERT_HAS(R.out, "4 (8.0 MiB)"); /* cached_slabs of node 1 */
    ASSERT_HAS(R.out, "remote_grants_total ");
    ck_assert_ptr_null(strstr(R.out, "WARNING"));
    ck_assert_int_eq(j.code, 0);
    assert_one_json(j.out);
    ASSERT_HAS(j.out, "\"arenas\": [");
    ASSERT_HAS(j.out, "\"grants_total\": 1001");
    ASSERT_HAS(j.out, "\"cached_slabs\": 4");
    ASSERT_HAS(j.out, "\"pressure_reclaims_total\": 61");
#define AKEY_CHECK(t, n, d) ASSERT_HAS(j.out, "\"" #n "\": ");
    ZKM_ARENA_FIELDS(AKEY_CHECK)
}
END_TEST

START_TEST(test_clients_paged_sorted)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "clients", "--json");
    pthread_mutex_lock(&F.mu);
    unsigned q = F.queries;
    pthread_mutex_unlock(&F.mu);
    struct run h;
    RUN(&h, F.sock, "clients");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_uint_eq(q, 3); /* 5 records, 2 a page */
    assert_one_json(R.out);
    /* sorted by bytes_granted: 103, 102, 104, 101, 105 */
    const char *p103 = strstr(R.out, "\"pid\": 103"), *p102 = strstr(R.out, "\"pid\": 102"),
               *p104 = strstr(R.out, "\"pid\": 104"), *p101 = strstr(R.out, "\"pid\": 101"),
               *p105 = strstr(R.out, "\"pid\": 105");
    ck_assert_msg(p103 && p102 && p104 && p101 && p105, "%s", R.out);
    ck_assert(p103 < p102 && p102 < p104 && p104 < p101 && p101 < p105);
    /* hostile comm escaped */
    ASSERT_HAS(R.out, "\"comm\": \"ev\\\"il\\u0001\"");
    ASSERT_HAS(R.out, "\"bytes_granted\": 2147483648");
#define CKEY_CHECK(t, n, d) ASSERT_HAS(R.out, "\"" #n "\": ");
    ZKM_CLIENT_FIELDS(CKEY_CHECK)
    ck_assert_int_eq(h.code, 0);
    ASSERT_HAS(h.out, "BYTES_GRANTED");
    ASSERT_HAS(h.out, "2.0 GiB");
    ASSERT_HAS(h.out, "ev\"il?");
}
END_TEST

START_TEST(test_stats_prometheus)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "stats", "--prometheus");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ASSERT_HAS(R.out, "# HELP zkmem_uptime_ms milliseconds since start\n"
                      "# TYPE zkmem_uptime_ms gauge\nzkmem_uptime_ms 3723000\n");
    ASSERT_HAS(R.out, "# TYPE zkmem_clients_total counter\n");
    ASSERT_HAS(R.out,
               "# TYPE zkmem_protocol_errors_total counter\nzkmem_protocol_errors_total 3\n");
    ASSERT_HAS(R.out, "# TYPE zkmem_arena_grants_total counter\n");
    ASSERT_HAS(R.out, "zkmem_arena_free_slabs{node=\"1\"} 499\n");
    ASSERT_HAS(R.out, "zkmem_client_alloc_ops_total{pid=\"101\",uid=\"1000\",node=\"1\","
                      "comm=\"app\"} 78\n");
    ASSERT_HAS(R.out, "zkmem_client_bytes_in_use{pid=\"103\",uid=\"1000\",node=\"1\","
                      "comm=\"db\"} 1073741824\n");
    ASSERT_HAS(R.out, "comm=\"ev\\\"il?\"");
    ASSERT_HAS(R.out, "# TYPE zkmem_client_bytes_granted gauge\n");
    ASSERT_HAS(R.out, "# TYPE zkmem_client_violations_total counter\n");
    ASSERT_HAS(R.out, "# TYPE zkmem_arena_free_slabs gauge\n");
    /* every metric line: name{labels} value, or a comment */
    for (const char *l = R.out; *l; l = strchr(l, '\n') + 1) {
        ck_assert_msg(strncmp(l, "# HELP zkmem_", 13) == 0 ||
                          strncmp(l, "# TYPE zkmem_", 13) == 0 || strncmp(l, "zkmem_", 6) == 0,
                      "bad line %.60s", l);
        ck_assert_ptr_nonnull(strchr(l, '\n'));
    }
}
END_TEST

START_TEST(test_stats_client_filter)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "stats", "--client", "104", "--json");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_int_eq(F.last_clients_arg, 104);
    assert_one_json(R.out);
    ASSERT_HAS(R.out, "\"status\": {");
    ASSERT_HAS(R.out, "\"arenas\": [");
    ASSERT_HAS(R.out, "\"pid\": 104");
    ck_assert_ptr_null(strstr(R.out, "\"pid\": 101"));
}
END_TEST

START_TEST(test_map)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "arenas", "--map");
    struct run j;
    RUN(&j, F.sock, "arenas", "--map", "--json");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ASSERT_HAS(R.out, "node 0: 130 slabs (260.0 MiB): 123 free, 4 granted (8.0 MiB: 3 held, 1 "
                      "pre-granted), 2 cached (4.0 MiB), 1 in an unknown state\n");
    ASSERT_HAS(R.out, "      64  HHHrcc.......... ................ ................ "
                      "................\n");
    ASSERT_HAS(R.out, "     128  .?\n");
    ASSERT_HAS(R.out, "node 1: 10 slabs (20.0 MiB): 0 free, 10 granted");
    ASSERT_HAS(R.out, "legend: '.' free");
    ASSERT_HAS(R.out, "'c' cached (returned, pages kept for its uid until decay_ms)");
    ck_assert_int_eq(j.code, 0);
    assert_one_json(j.out);
    ASSERT_HAS(j.out, "\"held\": 10");
    ASSERT_HAS(j.out, "\"cached\": 2,");
    ASSERT_HAS(j.out, "HHHrcc....");
    ASSERT_HAS(j.out, "\"map\": \"HHHHHHHHHH\"");
}
END_TEST

START_TEST(test_config)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "config");
    struct run j, g;
    RUN(&j, F.sock, "config", "--json");
    RUN(&g, F.sock, "tune", "get", "grant_depth");
    fake_stop(&F);
    ck_assert_int_eq(R.code, 0);
    ck_assert_str_eq(R.out, F.config_text); /* 3 pages of 50 bytes, reassembled */
    ck_assert_int_eq(j.code, 0);
    assert_one_json(j.out);
    ASSERT_HAS(j.out, "\"runtime_dir\": \"/run/zkmem\"");
    ASSERT_HAS(j.out, "\"grant_depth\": 4");
    ASSERT_HAS(j.out, "\"mode\": \"balanced\"");
    ck_assert_int_eq(g.code, 0);
    ck_assert_str_eq(g.out, "grant_depth = 4\n");
}
END_TEST

/* What the running fake last got as ADMIN (under its lock). */
static struct zkm_msg_admin last_admin(unsigned *ret_count)
{
    pthread_mutex_lock(&F.mu);
    struct zkm_msg_admin a = F.admin;
    if (ret_count)
        *ret_count = F.admins;
    pthread_mutex_unlock(&F.mu);
    return a;
}

static void set_admin_status(int32_t status)
{
    pthread_mutex_lock(&F.mu);
    F.admin_status = status;
    pthread_mutex_unlock(&F.mu);
}

START_TEST(test_admin)
{
    struct zkm_msg_admin a;
    unsigned admins;

    fake_init(&F);
    F.admin_value = 6;
    fake_start(&F);
    RUN(&R, F.sock, "tune", "set", "grant_depth", "8");
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_str_eq(R.out, "grant_depth = 8\n");
    a = last_admin(NULL);
    ck_assert_uint_eq(a.op, ZKM_ADMIN_TUNE_SET);
    ck_assert_str_eq(a.key, "grant_depth");
    ck_assert_str_eq(a.value, "8");
    RUN(&R, F.sock, "reserve", "--node", "1", "--pages", "16");
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    a = last_admin(NULL);
    ck_assert_uint_eq(a.op, ZKM_ADMIN_RESERVE);
    ck_assert_int_eq(a.arg0, 1);
    ck_assert_int_eq(a.arg1, 16);
    RUN(&R, F.sock, "compact", "--json");
    ck_assert_int_eq(R.code, 0);
    assert_one_json(R.out);
    ASSERT_HAS(R.out, "\"value\": 6");
    ck_assert_uint_eq(last_admin(NULL).op, ZKM_ADMIN_COMPACT);

    set_admin_status(-EPERM);
    RUN(&R, F.sock, "compact");
    ck_assert_int_eq(R.code, 4);
    ck_assert_str_eq(R.err, "zkmemctl: permission denied: admin actions need root or membership "
                            "in group zkmem-admin\n");
    ck_assert_str_eq(R.out, "");
    set_admin_status(-EINVAL);
    RUN(&R, F.sock, "tune", "set", "decay_ms", "10");
    ck_assert_int_eq(R.code, 5);
    ck_assert_str_eq(R.err, "zkmemctl: zkmemd refused the setting: Invalid argument (some keys "
                            "cannot change while zkmemd runs: edit zkmemd.conf and restart it; "
                            "its log says why)\n");
    last_admin(&admins);
    fake_stop(&F);
    ck_assert_uint_eq(admins, 5);
    ck_assert_uint_eq(F.bad_requests, 0);
}
END_TEST

START_TEST(test_daemon_error)
{
    fake_init(&F);
    F.query_status = -EIO;
    fake_start(&F);
    RUN(&R, F.sock, "arenas");
    fake_stop(&F);
    ck_assert_int_eq(R.code, 5);
    ck_assert_str_eq(R.err, "zkmemctl: zkmemd refused the query: Input/output error\n");
}
END_TEST

/* A socket the caller may not open: exit 4 with a hint, not "is zkmemd running?". */
START_TEST(test_socket_permission)
{
    if (geteuid() != 0) {
        zkm_test_skip("test_socket_permission", "needs root to run zkmemctl as another uid");
        return;
    }
    fake_init(&F);
    fake_start(&F);
    ck_assert_int_eq(chmod(F.dir, 0755), 0);
    ck_assert_int_eq(chmod(F.sock, 0600), 0);
    RUN_AS(&R, F.sock, 65534, "status");
    fake_stop(&F);
    ck_assert_int_eq(R.code, 4);
    ASSERT_HAS(R.err, ": Permission denied (the socket does not let you in: run as root or as a "
                      "member of the socket's group)\n");
}
END_TEST

START_TEST(test_top_one_frame)
{
    fake_init(&F);
    fake_start(&F);
    RUN(&R, F.sock, "top"); /* stdin is /dev/null: one frame, then end of input quits */
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ASSERT_HAS(R.out, "zkmemd pid 4242  up 1h02m03s");
    ASSERT_HAS(R.out, "node 0  [");
    /* largest client first */
    const char *db = strstr(R.out, " db "), *app = strstr(R.out, " app ");
    ck_assert_msg(db && app && db < app, "%s", R.out);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* zkmemctl advise: one crafted ADVICE record per pattern, the exact words it gets      */

#define MiB (1ull << 20)

static const char advise_config_on[] = "mode = balanced  # performance mode\n"
                                       "enable_compaction = yes  # return idle slabs\n"
                                       "decay_ms = 1000  # cache time\n";
static const char advise_config_off[] = "mode = balanced  # performance mode\n"
                                        "enable_compaction = no  # return idle slabs\n"
                                        "decay_ms = 1000  # cache time\n";

/* A record of the fake's client `id` (pid 100 + id): 60 samples, tuning on, no extras. */
static struct zkm_advice_info *advice_add(struct fake *f, uint32_t id, uint32_t pattern)
{
    struct zkm_advice_info *a = &f->advice[f->n_advice++];
    memset(a, 0, sizeof(*a));
    a->client_id = id;
    a->pid = (int32_t)(100 + id);
    a->pattern = pattern;
    a->samples = 60;
    a->tcache_scale = 1;
    a->tcache_hit_pct = 99;
    a->tuning = 1;
    a->grant_depth = 4;
    return a;
}

/* The fake for advice: node 1 has only 20 free slabs, the configuration has the keys. */
static void advise_fake_init(struct fake *f)
{
    fake_init(f);
    f->arenas[1].free_slabs = 20;
    f->config_text = advise_config_on;
}

/* Run `zkmemctl advise` against F and expect exactly `want` on stdout. */
static void advise_expect(const char *want)
{
    RUN(&R, F.sock, "advise");
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_str_eq(R.out, want);
}

START_TEST(test_advise_unknown)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 1, ZKM_PATTERN_UNKNOWN);
    a->samples = 4;
    a->bytes_in_use = 1 * MiB;
    a->slabs = 2;
    fake_start(&F);
    advise_expect("pid 101 (app) client 1: 1.0 MiB live, 4.0 MiB granted, home node 0\n"
                  "  unknown: not enough history yet (4 s of 10 s)\n");
    fake_stop(&F);
    ck_assert_uint_eq(F.bad_requests, 0);
}
END_TEST

START_TEST(test_advise_idle)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 4, ZKM_PATTERN_IDLE);
    a->slabs = 12;
    a->bytes_in_use = 5 * MiB;
    F.config_text = advise_config_off;
    fake_start(&F);
    advise_expect("pid 104 (cache) client 4: 5.0 MiB live, 8.0 MiB granted, home node 0\n"
                  "  idle: no allocation in the last 10 s; holds 24.0 MiB (12 slabs), 5.0 MiB of "
                  "it live\n"
                  "  - holds 24.0 MiB while idle: enable_compaction = yes gives idle memory back "
                  "after decay_ms (now 1000 ms)\n");
    /* compaction already on: no change to suggest, and when the memory goes back */
    pthread_mutex_lock(&F.mu);
    F.config_text = advise_config_on;
    pthread_mutex_unlock(&F.mu);
    RUN(&R, F.sock, "advise");
    ck_assert_int_eq(R.code, 0);
    ASSERT_HAS(R.out, "\n  - holds 24.0 MiB while idle; enable_compaction is on, so its empty "
                      "slabs go back to the node pool after decay_ms (now 1000 ms)\n");
    ck_assert_ptr_null(strstr(R.out, "= yes"));
    /* a daemon that does not report the keys: the advice hedges */
    pthread_mutex_lock(&F.mu);
    F.config_text = "mode = balanced\n";
    pthread_mutex_unlock(&F.mu);
    RUN(&R, F.sock, "advise");
    ck_assert_int_eq(R.code, 0);
    ASSERT_HAS(R.out, "\n  - holds 24.0 MiB while idle: enable_compaction = yes gives idle memory "
                      "back after decay_ms (if it is off)\n");
    /* holding nothing: nothing to change */
    pthread_mutex_lock(&F.mu);
    F.advice[0].slabs = 0;
    pthread_mutex_unlock(&F.mu);
    RUN(&R, F.sock, "advise");
    ck_assert_int_eq(R.code, 0);
    ASSERT_HAS(R.out, "holds 0.0 MiB (0 slabs), 5.0 MiB of it live\n  - nothing to change\n");
    fake_stop(&F);
}
END_TEST

START_TEST(test_advise_steady)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 3, ZKM_PATTERN_STEADY);
    a->home_node = 1;
    a->bytes_in_use = 64 * MiB;
    a->slabs = 40;
    fake_start(&F);
    advise_expect("pid 103 (db) client 3: 64.0 MiB live, 2.0 GiB granted, home node 1\n"
                  "  steady: 64.0 MiB live in 80.0 MiB (40 slabs) over 59 s\n"
                  "  - nothing to change\n");
    fake_stop(&F);
}
END_TEST

/* The checks every pattern gets: thread cache, placement, round trips. */
START_TEST(test_advise_extras)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 2, ZKM_PATTERN_STEADY);
    a->bytes_in_use = 10 * MiB;
    a->slabs = 6;
    a->tcache_hit_pct = 70;
    a->tcache_scale = 4;
    a->remote_pct = 80;
    a->busiest_node = 1;
    a->placement_moves = 2;
    a = advice_add(&F, 4, ZKM_PATTERN_STEADY);
    a->bytes_in_use = 10 * MiB;
    a->slabs = 6;
    a->tuning = 0;
    a->waits = 17;
    a->tcache_hit_pct = 70;
    a->remote_pct = 60;
    a->busiest_node = 1;
    fake_start(&F);
    advise_expect(
        "pid 102 (ev\"il?) client 2: 10.0 MiB live, 64.0 MiB granted, home node 0\n"
        "  steady: 10.0 MiB live in 12.0 MiB (6 slabs) over 59 s\n"
        "  - thread-cache hit rate 70%: caps are now x4, the tuner's limit; consider mode = "
        "high_performance (now balanced)\n"
        "  - 80% of its scheduler runs were off its home node 0, most on node 1; the tuner moved "
        "its home 2 times\n"
        "\n"
        "pid 104 (cache) client 4: 10.0 MiB live, 8.0 MiB granted, home node 0\n"
        "  steady: 10.0 MiB live in 12.0 MiB (6 slabs) over 59 s\n"
        "  - thread-cache hit rate 70%: caps are now x1\n"
        "  - 60% of its scheduler runs were off its home node 0, most on node 1\n"
        "  - enable_tuning = yes (it waited 17 times for a round trip; the tuner raises "
        "thread-cache caps (now x1) up to x4; the tuner moves its home to a node with 3/4 of its "
        "runs)\n");
    /* mode unknown: the suggestion says "if it is not" */
    pthread_mutex_lock(&F.mu);
    F.config_text = "decay_ms = 1000\n";
    pthread_mutex_unlock(&F.mu);
    RUN(&R, F.sock, "advise");
    ck_assert_int_eq(R.code, 0);
    ASSERT_HAS(R.out, "consider mode = high_performance if it is not\n");
    fake_stop(&F);
}
END_TEST

START_TEST(test_advise_bursty)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 5, ZKM_PATTERN_BURSTY);
    a->home_node = 1; /* 20 free slabs there */
    a->bytes_in_use = 30 * MiB;
    a->slabs = 20;
    a->peak_slabs = 100;
    a->mean_slabs = 30;
    a->peak_refills = 40;
    a->mean_refills_milli = 2500;
    a->tuning = 0;
    a->waits = 17;
    a = advice_add(&F, 1, ZKM_PATTERN_BURSTY);
    a->bytes_in_use = 30 * MiB;
    a->slabs = 20;
    a->peak_slabs = 100;
    a->mean_slabs = 30;
    a->peak_refills = 12;
    a->mean_refills_milli = 250;
    a->grant_depth = 12;
    fake_start(&F);
    advise_expect("pid 105 (worker) client 5: 30.0 MiB live, 0 B granted, home node 1\n"
                  "  bursty: bursts of up to 40 slabs/s against a mean of 2.5/s over 59 s; held "
                  "100 slabs at most, 30 on average\n"
                  "  - reserve hugepages for its peak: zkmemctl reserve --node 1 --pages 100 "
                  "(peak 100 slabs x 2.0 MiB = 200.0 MiB; node 1 has 20 free slabs)\n"
                  "  - enable_tuning = yes (it waited 17 times for a round trip)\n"
                  "\n"
                  "pid 101 (app) client 1: 30.0 MiB live, 4.0 MiB granted, home node 0\n"
                  "  bursty: bursts of up to 12 slabs/s against a mean of 0.25/s over 59 s; held "
                  "100 slabs at most, 30 on average\n"
                  "  - grant depth follows the bursts (now 12)\n"
                  "  - no hugepages to reserve: node 0 has 500 free slabs, its peak was 100 slabs "
                  "(200.0 MiB)\n");
    fake_stop(&F);
}
END_TEST

START_TEST(test_advise_growing)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 3, ZKM_PATTERN_GROWING);
    a->home_node = 1;
    a->bytes_first = 120 * MiB;
    a->bytes_in_use = 310 * MiB + MiB / 2;
    a->growth_per_min = 190 * (int64_t)MiB;
    a->rising_samples = 41;
    a->falling_samples = 6;
    a->slabs = 150;
    a->peak_slabs = 160;
    a = advice_add(&F, 4, ZKM_PATTERN_GROWING);
    *a = F.advice[0];
    a->client_id = 4;
    a->pid = 104;
    a->budget_bytes = 1024 * MiB;
    fake_start(&F);
    advise_expect(
        "pid 103 (db) client 3: 310.5 MiB live, 2.0 GiB granted, home node 1\n"
        "  growing: live bytes 120.0 MiB -> 310.5 MiB over 59 s (+190.0 MiB/min), rose in 41 of "
        "59 samples, fell in 6\n"
        "  - set memory_budget_mb = 11711 for one more hour of growth (310.5 MiB live + 60 min x "
        "190.0 MiB/min; the budget is per uid)\n"
        "  - reserve hugepages for its peak: zkmemctl reserve --node 1 --pages 160 (peak 160 "
        "slabs x 2.0 MiB = 320.0 MiB; node 1 has 20 free slabs)\n"
        "\n"
        "pid 104 (cache) client 4: 310.5 MiB live, 8.0 MiB granted, home node 1\n"
        "  growing: live bytes 120.0 MiB -> 310.5 MiB over 59 s (+190.0 MiB/min), rose in 41 of "
        "59 samples, fell in 6\n"
        "  - at 190.0 MiB/min it reaches the budget of 1024 MiB in 3.8 min\n"
        "  - reserve hugepages for its peak: zkmemctl reserve --node 1 --pages 160 (peak 160 "
        "slabs x 2.0 MiB = 320.0 MiB; node 1 has 20 free slabs)\n");
    fake_stop(&F);
}
END_TEST

START_TEST(test_advise_leaking)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 1, ZKM_PATTERN_LEAKING);
    a->samples = 30;
    a->bytes_first = 40 * MiB;
    a->bytes_in_use = 100 * MiB;
    a->growth_per_min = 120 * (int64_t)MiB;
    a->rising_samples = 29;
    a->frees_in_history = 123456;
    a->slabs = 55;
    a = advice_add(&F, 2, ZKM_PATTERN_LEAKING);
    *a = F.advice[0];
    a->client_id = 2;
    a->pid = 102;
    a->rising_samples = 25;
    a->budget_bytes = 150 * MiB;
    a = advice_add(&F, 3, ZKM_PATTERN_LEAKING);
    *a = F.advice[0];
    a->client_id = 3;
    a->pid = 103;
    a->budget_bytes = 64 * MiB;
    fake_start(&F);
    advise_expect(
        "pid 101 (app) client 1: 100.0 MiB live, 4.0 MiB granted, home node 0\n"
        "  leaking: live bytes 40.0 MiB -> 100.0 MiB over 29 s (+120.0 MiB/min), rose in 29 of 29 "
        "samples, never fell, freed 123456 objects meanwhile\n"
        "  - live bytes rose in every one of 29 samples while it freed 123456 objects: look for a "
        "leak\n"
        "  - set memory_budget_mb = 200 to stop it at ~2x today's live bytes (it grows 120.0 "
        "MiB/min: it would reach that in 50 s; the budget is per uid)\n"
        "\n"
        "pid 102 (ev\"il?) client 2: 100.0 MiB live, 64.0 MiB granted, home node 0\n"
        "  leaking: live bytes 40.0 MiB -> 100.0 MiB over 29 s (+120.0 MiB/min), rose in 25 of 29 "
        "samples, never fell, freed 123456 objects meanwhile\n"
        "  - live bytes rose in 25 of 29 samples and never fell while it freed 123456 objects: "
        "look for a leak\n"
        "  - at 120.0 MiB/min it reaches the budget of 150 MiB in 25 s\n"
        "\n"
        "pid 103 (db) client 3: 100.0 MiB live, 2.0 GiB granted, home node 0\n"
        "  leaking: live bytes 40.0 MiB -> 100.0 MiB over 29 s (+120.0 MiB/min), rose in 29 of 29 "
        "samples, never fell, freed 123456 objects meanwhile\n"
        "  - live bytes rose in every one of 29 samples while it freed 123456 objects: look for a "
        "leak\n"
        "  - its live bytes (100.0 MiB) have reached the budget of 64 MiB: grants to its uid stop "
        "there\n");
    fake_stop(&F);
}
END_TEST

/* A pattern zkmemctl does not know, a session CLIENTS did not list, a node with no arena,
 * absurd numbers: worded as far as they go, no crash. */
START_TEST(test_advise_bad_record)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 9, 9);
    a->pid = 999;
    a->home_node = 7;
    a->peak_slabs = UINT64_MAX;
    a->samples = 0;
    a = advice_add(&F, 2, ZKM_PATTERN_GROWING);
    a->growth_per_min = INT64_MAX;
    a->bytes_in_use = UINT64_MAX;
    a->peak_slabs = UINT64_MAX;
    a->mean_refills_milli = UINT64_MAX;
    fake_start(&F);
    RUN(&R, F.sock, "advise");
    struct run j;
    RUN(&j, F.sock, "advise", "--json");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ASSERT_HAS(R.out, "pid 999 (?) client 9: 0 B live, home node 7\n"
                      "  unknown pattern 9 (is zkmemctl older than zkmemd?)\n");
    ck_assert_ptr_null(strstr(R.out, "unknown pattern 9 (is zkmemctl older than zkmemd?)\n  -"));
    ASSERT_HAS(R.out, "--pages 8796093022208 (peak 18446744073709551615 slabs"); /* saturated */
    ck_assert_int_eq(j.code, 0);
    assert_one_json(j.out);
    ASSERT_HAS(j.out, "\"pattern\": 9,");
    ASSERT_HAS(j.out, "\"comm\": null,");
    ASSERT_HAS(j.out, "\"pattern_name\": null,");
    ASSERT_HAS(j.out, "\"evidence\": \"unknown pattern 9 (is zkmemctl older than zkmemd?)\",");
    ASSERT_HAS(j.out, "\"advice\": []");
}
END_TEST

/* Run python3's json module on text with `check` (a Python expression over d); 77 if no
 * python3, else its exit code. */
static int python_json_check(const char *text, const char *check)
{
    char path[] = "/tmp/zkm-ctl-json-XXXXXX", cmd[1024];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    if (system("command -v python3 >/dev/null 2>&1") != 0) {
        unlink(path);
        return 77;
    }
    snprintf(cmd, sizeof(cmd),
             "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
             "sys.exit(0 if (%s) else 1)' %s",
             check, path);
    int st = system(cmd);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

START_TEST(test_advise_json)
{
    advise_fake_init(&F);
    struct zkm_advice_info *a = advice_add(&F, 1, ZKM_PATTERN_UNKNOWN);
    a->samples = 4;
    a = advice_add(&F, 2, ZKM_PATTERN_STEADY);
    a->bytes_in_use = 10 * MiB;
    a = advice_add(&F, 3, ZKM_PATTERN_GROWING);
    a->home_node = 1;
    a->bytes_first = 120 * MiB;
    a->bytes_in_use = 310 * MiB + MiB / 2;
    a->growth_per_min = 190 * (int64_t)MiB;
    a->rising_samples = 41;
    a->falling_samples = 6;
    a->peak_slabs = 160;
    a = advice_add(&F, 4, ZKM_PATTERN_IDLE);
    a = advice_add(&F, 5, ZKM_PATTERN_BURSTY);
    a->growth_per_min = -5 * (int64_t)MiB;
    fake_start(&F);
    RUN(&R, F.sock, "advise", "--json");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_uint_eq(F.bad_requests, 0);
    assert_one_json(R.out);
#define ADVKEY_CHECK(t, n, d) ASSERT_HAS(R.out, "\"" #n "\": ");
    ZKM_ADVICE_FIELDS(ADVKEY_CHECK)
    ASSERT_HAS(R.out, "\"growth_per_min\": -5242880,");
    ASSERT_HAS(R.out, "\"comm\": \"ev\\\"il\\u0001\",");
    ASSERT_HAS(R.out, "\"pattern_name\": \"growing\",");
    ASSERT_HAS(R.out, "\"evidence\": \"growing: live bytes 120.0 MiB -> 310.5 MiB over 59 s "
                      "(+190.0 MiB/min), rose in 41 of 59 samples, fell in 6\",");
    ASSERT_HAS(R.out, "\"set memory_budget_mb = 11711 for one more hour of growth (310.5 MiB "
                      "live + 60 min x 190.0 MiB/min; the budget is per uid)\",");
    int py = python_json_check(
        R.out, "[c[\"pattern_name\"] for c in d[\"clients\"]] == [\"unknown\", \"steady\", "
               "\"growing\", \"idle\", \"bursty\"] and all(isinstance(x, str) for c in "
               "d[\"clients\"] for x in c[\"advice\"]) and d[\"clients\"][2][\"advice\"][1]"
               ".startswith(\"reserve hugepages for its peak: zkmemctl reserve --node 1 "
               "--pages 160 \") and d[\"clients\"][0][\"advice\"] == []");
    if (py == 77)
        zkm_test_skip("test_advise_json (python3 part)", "python3 is not installed");
    else
        ck_assert_msg(py == 0, "python3 json check failed (%d) on:\n%.3000s", py, R.out);
}
END_TEST

START_TEST(test_advise_client_filter)
{
    advise_fake_init(&F);
    advice_add(&F, 1, ZKM_PATTERN_STEADY);
    advice_add(&F, 4, ZKM_PATTERN_STEADY);
    advice_add(&F, 5, ZKM_PATTERN_STEADY);
    fake_start(&F);
    RUN(&R, F.sock, "advise", "--client", "104");
    pthread_mutex_lock(&F.mu);
    int32_t advice_arg = F.last_advice_arg, clients_arg = F.last_clients_arg;
    pthread_mutex_unlock(&F.mu);
    struct run none, j;
    RUN(&none, F.sock, "advise", "--client=999");
    RUN(&j, F.sock, "--json", "advise", "--client", "999");
    fake_stop(&F);
    ck_assert_msg(R.code == 0, "exit %d: %s", R.code, R.err);
    ck_assert_int_eq(advice_arg, 104);
    ck_assert_int_eq(clients_arg, 104);
    ASSERT_HAS(R.out, "pid 104 (cache) client 4:");
    ck_assert_ptr_null(strstr(R.out, "pid 101"));
    ck_assert_ptr_null(strstr(R.out, "pid 105"));
    ck_assert_int_eq(none.code, 0);
    ck_assert_str_eq(none.out, "no zkmem client with pid 999\n");
    ck_assert_int_eq(j.code, 0);
    ck_assert_str_eq(j.out, "{\n  \"clients\": []\n}\n");
}
END_TEST

START_TEST(test_advise_usage)
{
    RUN(&R, "/nonexistent/zkmemd.sock", "advise", "--map");
    ck_assert_int_eq(R.code, 1);
    RUN(&R, "/nonexistent/zkmemd.sock", "advise", "now");
    ck_assert_int_eq(R.code, 1);
    ASSERT_HAS(R.err, "zkmemctl: unexpected argument 'now'\n");
    RUN(&R, "/nonexistent/zkmemd.sock", "clients", "--client", "3");
    ck_assert_int_eq(R.code, 1);
    ASSERT_HAS(R.err, "option --client belongs to 'stats' and 'advise', not 'clients'");
    RUN(&R, NULL, "--help");
    ASSERT_HAS(R.out, "  advise [--client PID]");
}
END_TEST

static Suite *ctl_suite(void)
{
    Suite *s = suite_create("zkmemctl");
    TCase *tc = tcase_create("fake-daemon");
    tcase_add_test(tc, test_missing_socket);
    tcase_add_test(tc, test_usage_errors);
    tcase_add_test(tc, test_version_mismatch);
    tcase_add_test(tc, test_protocol_garbage);
    tcase_add_test(tc, test_status_json);
    tcase_add_test(tc, test_status_human);
    tcase_add_test(tc, test_arenas);
    tcase_add_test(tc, test_clients_paged_sorted);
    tcase_add_test(tc, test_stats_prometheus);
    tcase_add_test(tc, test_stats_client_filter);
    tcase_add_test(tc, test_map);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_admin);
    tcase_add_test(tc, test_daemon_error);
    tcase_add_test(tc, test_socket_permission);
    tcase_add_test(tc, test_top_one_frame);
    tcase_add_test(tc, test_advise_unknown);
    tcase_add_test(tc, test_advise_idle);
    tcase_add_test(tc, test_advise_steady);
    tcase_add_test(tc, test_advise_extras);
    tcase_add_test(tc, test_advise_bursty);
    tcase_add_test(tc, test_advise_growing);
    tcase_add_test(tc, test_advise_leaking);
    tcase_add_test(tc, test_advise_bad_record);
    tcase_add_test(tc, test_advise_json);
    tcase_add_test(tc, test_advise_client_filter);
    tcase_add_test(tc, test_advise_usage);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (!getenv("ZKMEMCTL")) {
        zkm_test_skip("test-ctl", "ZKMEMCTL is not set (run through meson test)");
        return 77;
    }
    SRunner *sr = srunner_create(ctl_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
