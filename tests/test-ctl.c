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
    /* recorded */
    unsigned connections, queries, bad_requests;
    int32_t last_clients_arg;
    struct zkm_msg_admin admin;
    unsigned admins;
};

static void fake_reply_query(struct fake *f, int fd, const struct zkm_msg_query *q)
{
    struct zkm_msg_query_reply r;
    const uint8_t *src = NULL;
    size_t rec = 1, total = 0, page = f->page_records;
    struct zkm_client_info filtered[5];

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
    ck_assert_msg(strstr((hay), (needle)) != NULL, "missing <%s> in:\n%s", (needle), (hay))

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
    ASSERT_HAS(R.err, "zkmemctl: protocol version mismatch: zkmemctl speaks versions 1..1, "
                      "zkmemd at ");
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
    ck_assert_ptr_null(strstr(R.out, "WARNING"));
    ck_assert_int_eq(j.code, 0);
    assert_one_json(j.out);
    ASSERT_HAS(j.out, "\"arenas\": [");
    ASSERT_HAS(j.out, "\"grants_total\": 1001");
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
    ASSERT_HAS(R.out, "node 0: 130 slabs (260.0 MiB): 125 free, 4 granted (8.0 MiB: 3 held, 1 "
                      "pre-granted), 1 in an unknown state\n");
    ASSERT_HAS(R.out, "      64  HHHr............ ................ ................ "
                      "................\n");
    ASSERT_HAS(R.out, "     128  .?\n");
    ASSERT_HAS(R.out, "node 1: 10 slabs (20.0 MiB): 0 free, 10 granted");
    ASSERT_HAS(R.out, "legend: '.' free");
    ck_assert_int_eq(j.code, 0);
    assert_one_json(j.out);
    ASSERT_HAS(j.out, "\"held\": 10");
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
