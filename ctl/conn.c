/* SPDX-License-Identifier: MIT */
/*
 * conn.c - zkmemctl's side of the protocol: connect, HELLO as a ctl peer, paged QUERY,
 * ADMIN. Every reply is received with recvmsg (any fds that came along are counted and
 * closed) and goes through zkm_msg_validate() before a field of it is read; then the
 * type, the echoed sequence number and the query kind are checked. One request is in
 * flight at a time, so replies match requests by seq.
 *
 * Every failure prints one line to stderr saying what to do and returns an exit code
 * (enum ctl_exit): unreachable 2, protocol 3, permission 4, daemon error 5.
 */
#include "ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define REPLY_TIMEOUT_S 10
#define QUERY_MAX_BYTES (64u << 20) /* refuse absurd totals */

static int unreachable(const struct ctl_conn *c, int err)
{
    if (err == EACCES || err == EPERM) {
        fprintf(stderr,
                "zkmemctl: cannot reach zkmemd at %s: %s (the socket does not let you in: run as "
                "root or as a member of the socket's group)\n",
                c->path, strerror(err));
        return CTL_PERM;
    }
    fprintf(stderr,
            "zkmemctl: cannot reach zkmemd at %s: %s (is zkmemd running? start it with "
            "'systemctl start zkmemd', or point ZKMEM_SOCKET at its socket)\n",
            c->path, strerror(err));
    return CTL_UNREACHABLE;
}

static int hung_up(const struct ctl_conn *c)
{
    fprintf(stderr,
            "zkmemctl: zkmemd at %s closed the connection (see its log: "
            "'journalctl -u zkmemd')\n",
            c->path);
    return CTL_UNREACHABLE;
}

static int protocol_error(const struct ctl_conn *c, const char *what)
{
    fprintf(stderr,
            "zkmemctl: bad reply from zkmemd at %s: %s (are zkmemctl and zkmemd from the same "
            "release?)\n",
            c->path, what);
    return CTL_PROTOCOL;
}

static int permission_denied(void)
{
    fprintf(stderr, "zkmemctl: permission denied: admin actions need root or membership in group "
                    "zkmem-admin\n");
    return CTL_PERM;
}

static int daemon_error(const char *what, int32_t status)
{
    if (status == -EPERM || status == -EACCES)
        return permission_denied();
    fprintf(stderr, "zkmemctl: zkmemd refused %s: %s\n", what, strerror(-status));
    return CTL_DAEMON;
}

static void hdr_init(struct ctl_conn *c, struct zkm_hdr *h, uint16_t type, uint32_t len)
{
    h->magic = ZKM_PROTO_MAGIC;
    h->version = type == ZKM_MSG_HELLO ? 0 : c->version;
    h->type = type;
    h->len = len;
    h->seq = ++c->seq;
}

static int send_msg(struct ctl_conn *c, const void *msg, size_t len)
{
    for (;;) {
        ssize_t n = send(c->fd, msg, len, MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            return CTL_OK;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            return hung_up(c);
        return unreachable(c, n < 0 ? errno : EMSGSIZE);
    }
}

union reply_buf {
    struct zkm_hdr hdr;
    struct zkm_msg_hello_reply hello;
    struct zkm_msg_status_reply status;
    struct zkm_msg_query_reply query;
    uint8_t bytes[ZKM_MSG_MAX_SIZE];
};

/* Receive one reply of `type` to the last request, validated. */
static int recv_reply(struct ctl_conn *c, union reply_buf *rb, uint16_t type)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * ZKM_MSG_MAX_FDS)];
    } cbuf;
    struct iovec iov = {.iov_base = rb->bytes, .iov_len = sizeof(rb->bytes)};
    struct msghdr mh = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = cbuf.buf,
        .msg_controllen = sizeof(cbuf.buf),
    };
    ssize_t n;
    unsigned nfds = 0;
    char what[160];

    do {
        n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        fprintf(stderr,
                "zkmemctl: zkmemd at %s did not answer within %d s (is it stuck? see "
                "'journalctl -u zkmemd')\n",
                c->path, REPLY_TIMEOUT_S);
        return CTL_UNREACHABLE;
    }
    if (n < 0 && errno == ECONNRESET)
        return hung_up(c);
    if (n < 0)
        return unreachable(c, errno);
    if (n == 0)
        return hung_up(c);

    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
            close(fd);
        }
        nfds += (unsigned)k;
    }
    if (mh.msg_flags & MSG_TRUNC)
        return protocol_error(c, "message larger than the protocol allows");
    if (mh.msg_flags & MSG_CTRUNC)
        return protocol_error(c, "too many file descriptors");

    int r = zkm_msg_validate(rb->bytes, (size_t)n, nfds, c->version, 1);
    if (r < 0) {
        if (r == -EPROTONOSUPPORT) {
            snprintf(what, sizeof(what), "protocol version %u, expected the negotiated %u",
                     rb->hdr.version, c->version);
            fprintf(stderr, "zkmemctl: protocol version mismatch with zkmemd at %s: %s\n", c->path,
                    what);
            return CTL_PROTOCOL;
        }
        snprintf(what, sizeof(what), "malformed message (%s, %zd bytes, %u fds)", strerror(-r), n,
                 nfds);
        return protocol_error(c, what);
    }
    if (rb->hdr.type != type) {
        snprintf(what, sizeof(what), "message type %u where %u was expected", rb->hdr.type, type);
        return protocol_error(c, what);
    }
    if (rb->hdr.seq != c->seq) {
        snprintf(what, sizeof(what), "sequence %u where %u was expected", rb->hdr.seq, c->seq);
        return protocol_error(c, what);
    }
    return CTL_OK;
}

int ctl_connect(struct ctl_conn *c, const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = REPLY_TIMEOUT_S};
    struct zkm_msg_hello h;
    union reply_buf rb;
    int r;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->path = path;
    if (strlen(path) >= sizeof(sa.sun_path))
        return unreachable(c, ENAMETOOLONG);
    memcpy(sa.sun_path, path, strlen(path) + 1);

    c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return unreachable(c, errno);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = unreachable(c, errno);
        ctl_close(c);
        return r;
    }

    memset(&h, 0, sizeof(h));
    hdr_init(c, &h.hdr, ZKM_MSG_HELLO, sizeof(h));
    h.version_min = ZKM_PROTO_VERSION_MIN;
    h.version_max = ZKM_PROTO_VERSION_MAX;
    h.flags = ZKM_HELLO_CTL;
    snprintf(h.comm, sizeof(h.comm), "zkmemctl");
    r = send_msg(c, &h, sizeof(h));
    if (r == CTL_OK)
        r = recv_reply(c, &rb, ZKM_MSG_HELLO_REPLY);
    if (r != CTL_OK) {
        ctl_close(c);
        return r;
    }
    if (rb.hello.status == -EPROTONOSUPPORT ||
        (rb.hello.status == 0 &&
         (rb.hello.version < ZKM_PROTO_VERSION_MIN || rb.hello.version > ZKM_PROTO_VERSION_MAX))) {
        fprintf(stderr,
                "zkmemctl: protocol version mismatch: zkmemctl speaks versions %u..%u, zkmemd at "
                "%s speaks up to version %u (install zkmemctl from the same release as zkmemd)\n",
                ZKM_PROTO_VERSION_MIN, ZKM_PROTO_VERSION_MAX, path, rb.hello.version_max);
        ctl_close(c);
        return CTL_PROTOCOL;
    }
    if (rb.hello.status == -EPERM || rb.hello.status == -EACCES) {
        fprintf(stderr,
                "zkmemctl: zkmemd at %s refused this connection: %s (it serves only the uids its "
                "configuration allows; see allow_other_uids in zkmemd.conf)\n",
                path, strerror(-rb.hello.status));
        ctl_close(c);
        return CTL_PERM;
    }
    if (rb.hello.status < 0) {
        r = daemon_error("the connection", rb.hello.status);
        ctl_close(c);
        return r;
    }
    if (rb.hello.n_fds != 0) {
        ctl_close(c);
        return protocol_error(c, "a control session came with file descriptors");
    }
    c->version = rb.hello.version;
    return CTL_OK;
}

void ctl_close(struct ctl_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static size_t record_size(uint32_t kind)
{
    switch (kind) {
    case ZKM_QUERY_STATUS:
        return sizeof(struct zkm_status_info);
    case ZKM_QUERY_ARENAS:
        return sizeof(struct zkm_arena_info);
    case ZKM_QUERY_CLIENTS:
        return sizeof(struct zkm_client_info);
    case ZKM_QUERY_ADVICE:
        return sizeof(struct zkm_advice_info);
    default:
        return 1;
    }
}

int ctl_query(struct ctl_conn *c, uint32_t kind, int32_t arg, void **ret_buf, size_t *ret_count)
{
    size_t rec = record_size(kind), have = 0, cap = 0;
    uint8_t *out = NULL;
    union reply_buf rb;
    char what[160];
    int r;

    for (;;) {
        struct zkm_msg_query q;
        memset(&q, 0, sizeof(q));
        hdr_init(c, &q.hdr, ZKM_MSG_QUERY, sizeof(q));
        q.kind = kind;
        q.offset = (uint32_t)have;
        q.arg = arg;
        r = send_msg(c, &q, sizeof(q));
        if (r == CTL_OK)
            r = recv_reply(c, &rb, ZKM_MSG_QUERY_REPLY);
        if (r != CTL_OK)
            goto fail;
        const struct zkm_msg_query_reply *m = &rb.query;
        if (m->status < 0) {
            r = daemon_error("the query", m->status);
            goto fail;
        }
        if (m->kind != kind) {
            snprintf(what, sizeof(what), "query kind %u where %u was asked", m->kind, kind);
            r = protocol_error(c, what);
            goto fail;
        }
        if ((uint64_t)m->total * rec > QUERY_MAX_BYTES) {
            r = protocol_error(c, "query total too large");
            goto fail;
        }
        if (have + m->count > m->total || (m->count == 0 && have < m->total)) {
            snprintf(what, sizeof(what), "page of %u at offset %zu does not fit a total of %u",
                     m->count, have, m->total);
            r = protocol_error(c, what);
            goto fail;
        }
        /* capacity: total records plus a NUL for text */
        size_t need = (size_t)m->total * rec + 1;
        if (need > cap) {
            uint8_t *n = realloc(out, need);
            if (!n) {
                fprintf(stderr, "zkmemctl: out of memory\n");
                r = CTL_DAEMON;
                goto fail;
            }
            out = n;
            cap = need;
        }
        memcpy(out + have * rec, m->payload, (size_t)m->count * rec);
        have += m->count;
        if (have >= m->total)
            break;
    }
    if (!out) {
        out = malloc(1);
        if (!out) {
            fprintf(stderr, "zkmemctl: out of memory\n");
            return CTL_DAEMON;
        }
    }
    out[have * rec] = 0;
    *ret_buf = out;
    *ret_count = have;
    return CTL_OK;
fail:
    free(out);
    return r;
}

int ctl_admin(struct ctl_conn *c, uint32_t op, int32_t arg0, int64_t arg1, const char *key,
              const char *value, uint32_t *ret_value)
{
    struct zkm_msg_admin a;
    union reply_buf rb;
    int r;

    memset(&a, 0, sizeof(a));
    hdr_init(c, &a.hdr, ZKM_MSG_ADMIN, sizeof(a));
    a.op = op;
    a.arg0 = arg0;
    a.arg1 = arg1;
    if (key)
        snprintf(a.key, sizeof(a.key), "%s", key);
    if (value)
        snprintf(a.value, sizeof(a.value), "%s", value);
    r = send_msg(c, &a, sizeof(a));
    if (r == CTL_OK)
        r = recv_reply(c, &rb, ZKM_MSG_STATUS_REPLY);
    if (r != CTL_OK)
        return r;
    if (rb.status.status < 0) {
        if (rb.status.status == -EPERM || rb.status.status == -EACCES)
            return permission_denied();
        if (op == ZKM_ADMIN_TUNE_SET && rb.status.status == -EINVAL) {
            fprintf(stderr,
                    "zkmemctl: zkmemd refused the setting: %s (some keys cannot change while "
                    "zkmemd runs: edit zkmemd.conf and restart it; its log says why)\n",
                    strerror(EINVAL));
            return CTL_DAEMON;
        }
        const char *what = op == ZKM_ADMIN_COMPACT   ? "the compaction"
                           : op == ZKM_ADMIN_RESERVE ? "the reservation"
                                                     : "the setting";
        return daemon_error(what, rb.status.status);
    }
    if (ret_value)
        *ret_value = rb.status.value;
    return CTL_OK;
}

int ctl_snapshot_get(struct ctl_conn *c, int32_t pid_filter, struct ctl_snapshot *s)
{
    void *buf = NULL;
    size_t n = 0;
    int r;

    memset(s, 0, sizeof(*s));
    r = ctl_query(c, ZKM_QUERY_STATUS, 0, &buf, &n);
    if (r != CTL_OK)
        return r;
    if (n != 1) {
        free(buf);
        return protocol_error(c, "status query did not return one record");
    }
    memcpy(&s->status, buf, sizeof(s->status));
    free(buf);
    r = ctl_query(c, ZKM_QUERY_ARENAS, 0, &buf, &n);
    if (r != CTL_OK)
        return r;
    s->arenas = buf;
    s->n_arenas = n;
    r = ctl_query(c, ZKM_QUERY_CLIENTS, pid_filter, &buf, &n);
    if (r != CTL_OK) {
        ctl_snapshot_free(s);
        return r;
    }
    s->clients = buf;
    s->n_clients = n;
    return CTL_OK;
}

void ctl_snapshot_free(struct ctl_snapshot *s)
{
    free(s->arenas);
    free(s->clients);
    s->arenas = NULL;
    s->clients = NULL;
}
