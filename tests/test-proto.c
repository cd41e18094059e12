/* SPDX-License-Identifier: MIT */
/*
 * test-proto.c - the wire-protocol validator (proto/validate.c) and the control-block
 * rings (proto/zkm_ring.h).
 *
 * Messages: one valid message of every type is built by make_msg(); every generic
 * mutation (truncation at each length, oversize, magic, len field, version, direction,
 * fds) is applied to each type through Check loop tests, then each bounded field of each
 * type is pushed just inside and just outside its range.
 *
 * Rings: FIFO order, full/empty and index wrap-around across 2^32 on both rings, the
 * daemon-side validators against scribbled indices, and one concurrent test: a producer
 * thread (the daemon's role) and two consumer threads (a client's threads) on one grant
 * ring; every value must arrive exactly once.
 */
#include "zkm_proto.h"
#include "zkm_ring.h"

#include <check.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define V 1 /* negotiated version used throughout */

/* Big enough for any message plus room to test oversize. */
union msgbuf {
    struct zkm_hdr hdr;
    struct zkm_msg_hello hello;
    struct zkm_msg_hello_reply hello_reply;
    struct zkm_msg_acquire acquire;
    struct zkm_msg_acquire_reply acquire_reply;
    struct zkm_msg_release release;
    struct zkm_msg_status_reply status_reply;
    struct zkm_msg_query query;
    struct zkm_msg_query_reply query_reply;
    struct zkm_msg_admin admin;
    uint8_t bytes[ZKM_MSG_MAX_SIZE + 128];
};

static int type_from_daemon(uint16_t type)
{
    return type == ZKM_MSG_HELLO_REPLY || type == ZKM_MSG_ACQUIRE_REPLY ||
           type == ZKM_MSG_STATUS_REPLY || type == ZKM_MSG_QUERY_REPLY;
}

/* fds that come with the valid message of this type */
static unsigned type_fds(uint16_t type)
{
    return type == ZKM_MSG_HELLO_REPLY ? 3 : 0;
}

/* Fill `m` with a valid message of `type`; returns its size. */
static size_t make_msg(union msgbuf *m, uint16_t type)
{
    size_t size = zkm_msg_size(type);
    memset(m, 0, sizeof(*m));
    m->hdr.magic = ZKM_PROTO_MAGIC;
    m->hdr.version = type == ZKM_MSG_HELLO ? 0 : V;
    m->hdr.type = type;
    m->hdr.len = (uint32_t)size;
    m->hdr.seq = 42;
    switch (type) {
    case ZKM_MSG_HELLO:
        m->hello.version_min = 1;
        m->hello.version_max = 1;
        strcpy(m->hello.comm, "test-proto");
        m->hello.want_depth = 4;
        break;
    case ZKM_MSG_HELLO_REPLY:
        m->hello_reply.version = V;
        m->hello_reply.version_max = ZKM_PROTO_VERSION_MAX;
        m->hello_reply.client_id = 7;
        m->hello_reply.n_nodes = 2;
        m->hello_reply.n_fds = 3;
        m->hello_reply.slab_size = 2u << 20;
        m->hello_reply.ctrl_size = ZKM_CTRL_SIZE;
        m->hello_reply.backing = ZKM_BACKING_HUGETLB;
        m->hello_reply.node_bytes[0] = 16ull << 21;
        m->hello_reply.node_bytes[1] = 8ull << 21;
        break;
    case ZKM_MSG_ACQUIRE:
        m->acquire.node = 0;
        m->acquire.count = 4;
        break;
    case ZKM_MSG_ACQUIRE_REPLY:
        m->acquire_reply.count = 2;
        m->acquire_reply.handles[0] = zkm_handle_make(0, 1);
        m->acquire_reply.handles[1] = zkm_handle_make(1, 2);
        break;
    case ZKM_MSG_RELEASE:
        m->release.count = 3;
        break;
    case ZKM_MSG_STATUS_REPLY:
        m->status_reply.value = 3;
        break;
    case ZKM_MSG_QUERY:
        m->query.kind = ZKM_QUERY_ARENAS;
        break;
    case ZKM_MSG_QUERY_REPLY:
        m->query_reply.kind = ZKM_QUERY_ARENAS;
        m->query_reply.count = 2;
        m->query_reply.total = 2;
        break;
    case ZKM_MSG_ADMIN:
        m->admin.op = ZKM_ADMIN_COMPACT;
        break;
    }
    return size;
}

static int check_msg(const union msgbuf *m, size_t len)
{
    uint16_t t = m->hdr.type;
    return zkm_msg_validate(m, len, type_fds(t), V, type_from_daemon(t));
}

/* ---------------------------------------------------------------------------------- */
/* Generic mutations, once per type (loop index = type)                                */

START_TEST(msg_sizes)
{
    ck_assert_uint_eq(zkm_msg_size(0), 0);
    ck_assert_uint_eq(zkm_msg_size(ZKM_MSG_TYPE_END), 0);
    ck_assert_uint_eq(zkm_msg_size(0xffff), 0);
    ck_assert_uint_eq(zkm_msg_size(ZKM_MSG_HELLO), sizeof(struct zkm_msg_hello));
    ck_assert_uint_eq(zkm_msg_size(ZKM_MSG_ADMIN), sizeof(struct zkm_msg_admin));
    for (uint16_t t = 1; t < ZKM_MSG_TYPE_END; t++) {
        ck_assert_uint_ge(zkm_msg_size(t), sizeof(struct zkm_hdr));
        ck_assert_uint_le(zkm_msg_size(t), ZKM_MSG_MAX_SIZE);
    }
    ck_assert_int_eq(zkm_msg_validate(NULL, 16, 0, V, 0), -EBADMSG);
}
END_TEST

START_TEST(msg_valid)
{
    union msgbuf m;
    size_t size = make_msg(&m, (uint16_t)_i);
    ck_assert_int_eq(check_msg(&m, size), 0);
    /* seq is opaque */
    m.hdr.seq = UINT32_MAX;
    ck_assert_int_eq(check_msg(&m, size), 0);
}
END_TEST

START_TEST(msg_truncated)
{
    union msgbuf m;
    size_t size = make_msg(&m, (uint16_t)_i);
    for (size_t l = 0; l < size; l++) {
        /* len field still says the full size */
        ck_assert_int_eq(check_msg(&m, l), -EBADMSG);
        /* len field consistent with the truncated length */
        union msgbuf c = m;
        c.hdr.len = (uint32_t)l;
        ck_assert_int_eq(check_msg(&c, l), -EBADMSG);
    }
}
END_TEST

START_TEST(msg_oversized)
{
    static const size_t extra[] = {1, 4, 64, 127};
    union msgbuf m;
    size_t size = make_msg(&m, (uint16_t)_i);
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        m.hdr.len = (uint32_t)(size + extra[i]);
        ck_assert_int_eq(check_msg(&m, size + extra[i]), -EBADMSG);
    }
}
END_TEST

START_TEST(msg_bad_magic)
{
    union msgbuf m;
    size_t size = make_msg(&m, (uint16_t)_i);
    for (int bit = 0; bit < 32; bit++) {
        union msgbuf c = m;
        c.hdr.magic ^= 1u << bit;
        ck_assert_int_eq(check_msg(&c, size), -EBADMSG);
    }
    m.hdr.magic = ZKM_CTRL_MAGIC;
    ck_assert_int_eq(check_msg(&m, size), -EBADMSG);
}
END_TEST

START_TEST(msg_len_mismatch)
{
    union msgbuf m;
    size_t size = make_msg(&m, (uint16_t)_i);
    const uint32_t lens[] = {
        0, 16, (uint32_t)size - 1, (uint32_t)size + 1, ZKM_MSG_MAX_SIZE, UINT32_MAX};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        if (lens[i] == size)
            continue;
        m.hdr.len = lens[i];
        ck_assert_int_eq(check_msg(&m, size), -EBADMSG);
    }
}
END_TEST

START_TEST(msg_bad_version)
{
    uint16_t type = (uint16_t)_i;
    union msgbuf m;
    size_t size = make_msg(&m, type);
    const uint16_t versions[] = {0, 1, 2, 0xffff};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        m.hdr.version = versions[i];
        int want;
        if (type == ZKM_MSG_HELLO)
            want = versions[i] == 0 ? 0 : -EPROTONOSUPPORT;
        else if (type == ZKM_MSG_HELLO_REPLY)
            want = 0; /* carries its own version fields; hdr.version is not checked */
        else
            want = versions[i] == V ? 0 : -EPROTONOSUPPORT;
        ck_assert_int_eq(check_msg(&m, size), want);
    }
    /* a session that negotiated another version rejects V messages */
    make_msg(&m, type);
    int r = zkm_msg_validate(&m, size, type_fds(type), V + 1, type_from_daemon(type));
    if (type == ZKM_MSG_HELLO || type == ZKM_MSG_HELLO_REPLY)
        ck_assert_int_eq(r, 0);
    else
        ck_assert_int_eq(r, -EPROTONOSUPPORT);
}
END_TEST

START_TEST(msg_wrong_direction)
{
    uint16_t type = (uint16_t)_i;
    union msgbuf m;
    size_t size = make_msg(&m, type);
    ck_assert_int_eq(zkm_msg_validate(&m, size, type_fds(type), V, !type_from_daemon(type)),
                     -EPROTO);
    /* from_daemon is a boolean: any nonzero value means "from the daemon" */
    if (type_from_daemon(type))
        ck_assert_int_eq(zkm_msg_validate(&m, size, type_fds(type), V, 77), 0);
}
END_TEST

START_TEST(msg_unexpected_fds)
{
    uint16_t type = (uint16_t)_i;
    union msgbuf m;
    size_t size = make_msg(&m, type);
    for (unsigned fds = 0; fds <= ZKM_MSG_MAX_FDS + 2; fds++) {
        if (fds == type_fds(type))
            continue;
        ck_assert_int_eq(zkm_msg_validate(&m, size, fds, V, type_from_daemon(type)), -EBADMSG);
    }
    ck_assert_int_eq(zkm_msg_validate(&m, size, UINT_MAX, V, type_from_daemon(type)), -EBADMSG);
}
END_TEST

START_TEST(msg_unknown_type)
{
    static const uint16_t types[] = {0, ZKM_MSG_TYPE_END, ZKM_MSG_TYPE_END + 1, 0x100, 0xffff};
    union msgbuf m;
    size_t size = make_msg(&m, ZKM_MSG_ACQUIRE);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        m.hdr.type = types[i];
        ck_assert_int_eq(zkm_msg_validate(&m, size, 0, V, 0), -EPROTO);
        ck_assert_int_eq(zkm_msg_validate(&m, size, 0, V, 1), -EPROTO);
    }
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Per-type field bounds                                                               */

#define EXPECT(m, size, want) ck_assert_int_eq(check_msg(&(m), (size)), (want))

START_TEST(hello_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_HELLO);
    m.hello.version_min = 0;
    EXPECT(m, s, -EBADMSG);
    make_msg(&m, ZKM_MSG_HELLO);
    m.hello.version_min = 3;
    m.hello.version_max = 2;
    EXPECT(m, s, -EBADMSG);
    m.hello.version_max = 0xffff; /* a future client's wide range is fine for the validator */
    EXPECT(m, s, 0);

    make_msg(&m, ZKM_MSG_HELLO);
    memset(m.hello.comm, 'x', ZKM_COMM_LEN); /* no NUL */
    EXPECT(m, s, -EBADMSG);
    m.hello.comm[ZKM_COMM_LEN - 1] = '\0';
    EXPECT(m, s, 0);
    memset(m.hello.comm, 0, ZKM_COMM_LEN); /* empty name */
    EXPECT(m, s, 0);

    make_msg(&m, ZKM_MSG_HELLO);
    m.hello.want_depth = ZKM_GRANT_CAP;
    EXPECT(m, s, 0);
    m.hello.want_depth = ZKM_GRANT_CAP + 1;
    EXPECT(m, s, -EBADMSG);
    m.hello.want_depth = UINT32_MAX;
    EXPECT(m, s, -EBADMSG);

    make_msg(&m, ZKM_MSG_HELLO);
    m.hello.reattach_id = 1; /* only with ZKM_HELLO_REATTACH */
    EXPECT(m, s, -EBADMSG);

    /* REATTACH: an old session id and 1..ZKM_MAX_NODES memfds, never with CTL */
    make_msg(&m, ZKM_MSG_HELLO);
    m.hello.flags = ZKM_HELLO_REATTACH;
    m.hello.reattach_id = 7;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 1, V, 0), 0);
    ck_assert_int_eq(zkm_msg_validate(&m, s, ZKM_MAX_NODES, V, 0), 0);
    ck_assert_int_eq(zkm_msg_validate(&m, s, 0, V, 0), -EBADMSG);
    ck_assert_int_eq(zkm_msg_validate(&m, s, ZKM_MAX_NODES + 1, V, 0), -EBADMSG);
    m.hello.reattach_id = 0;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 1, V, 0), -EBADMSG);
    m.hello.reattach_id = 7;
    m.hello.flags = ZKM_HELLO_REATTACH | ZKM_HELLO_CTL;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 1, V, 0), -EBADMSG);

    make_msg(&m, ZKM_MSG_HELLO);
    m.hello.flags = ZKM_HELLO_CTL;
    EXPECT(m, s, 0);
    for (int bit = 1; bit < 32; bit++) {
        m.hello.flags = ZKM_HELLO_CTL | (1u << bit);
        EXPECT(m, s, -EBADMSG);
    }
}
END_TEST

START_TEST(hello_reply_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_HELLO_REPLY);
    const int D = 1;

    m.hello_reply.status = 1;
    EXPECT(m, s, -EBADMSG);

    /* refusal: no fds, nothing else checked */
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.status = -EPROTONOSUPPORT;
    m.hello_reply.n_fds = 0;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 0, V, D), 0);
    m.hello_reply.n_fds = 1;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 1, V, D), -EBADMSG);

    /* zkmemctl session: status 0, no fds */
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.n_fds = 0;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 0, V, D), 0);
    m.hello_reply.n_nodes = ZKM_MAX_NODES + 1;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 0, V, D), -EBADMSG);

    /* n_fds field must equal the fds received and 1 + n_nodes */
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    ck_assert_int_eq(zkm_msg_validate(&m, s, 2, V, D), -EBADMSG);
    m.hello_reply.n_fds = 2;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 2, V, D), -EBADMSG);
    m.hello_reply.n_nodes = 1;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 2, V, D), 0);
    m.hello_reply.n_nodes = 0;
    m.hello_reply.n_fds = 1;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 1, V, D), -EBADMSG);

    /* the maximum: every node */
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.n_nodes = ZKM_MAX_NODES;
    m.hello_reply.n_fds = 1 + ZKM_MAX_NODES;
    for (int i = 0; i < ZKM_MAX_NODES; i++)
        m.hello_reply.node_bytes[i] = (uint64_t)(i + 1) << 21;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 1 + ZKM_MAX_NODES, V, D), 0);
    m.hello_reply.n_nodes = ZKM_MAX_NODES + 1;
    m.hello_reply.n_fds = 2 + ZKM_MAX_NODES;
    ck_assert_int_eq(zkm_msg_validate(&m, s, 2 + ZKM_MAX_NODES, V, D), -EBADMSG);

    /* slab size: nonzero multiple of 2 MiB */
    const uint32_t bad_slab[] = {0, 4096, (2u << 20) + 4096, 3u << 19, 0xffffffffu};
    for (size_t i = 0; i < sizeof(bad_slab) / sizeof(bad_slab[0]); i++) {
        make_msg(&m, ZKM_MSG_HELLO_REPLY);
        m.hello_reply.slab_size = bad_slab[i];
        EXPECT(m, s, -EBADMSG);
    }
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.slab_size = 4u << 20;
    m.hello_reply.node_bytes[0] = 4u << 20;
    m.hello_reply.node_bytes[1] = 0; /* a node with no memory for this domain yet */
    EXPECT(m, s, 0);

    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.ctrl_size = ZKM_CTRL_SIZE / 2;
    EXPECT(m, s, -EBADMSG);

    /* node sizes: whole slabs, and no more slabs than a handle can index */
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.node_bytes[1] += 4096;
    EXPECT(m, s, -EBADMSG);
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.node_bytes[1] = (uint64_t)ZKM_HANDLE_INDEX_MASK << 21;
    EXPECT(m, s, 0);
    m.hello_reply.node_bytes[1] = ((uint64_t)ZKM_HANDLE_INDEX_MASK + 1) << 21;
    EXPECT(m, s, -EBADMSG);
    m.hello_reply.node_bytes[1] = UINT64_MAX - (UINT64_MAX % (2u << 20));
    EXPECT(m, s, -EBADMSG);
    /* entries past n_nodes are not looked at */
    make_msg(&m, ZKM_MSG_HELLO_REPLY);
    m.hello_reply.node_bytes[5] = 12345;
    EXPECT(m, s, 0);
}
END_TEST

START_TEST(acquire_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_ACQUIRE);
    m.acquire.count = 0;
    EXPECT(m, s, -EBADMSG);
    m.acquire.count = 1;
    EXPECT(m, s, 0);
    m.acquire.count = ZKM_ACQUIRE_MAX;
    EXPECT(m, s, 0);
    m.acquire.count = ZKM_ACQUIRE_MAX + 1;
    EXPECT(m, s, -EBADMSG);
    m.acquire.count = UINT32_MAX;
    EXPECT(m, s, -EBADMSG);

    const int32_t ok_nodes[] = {ZKM_NODE_ANY, 0, ZKM_MAX_NODES - 1};
    const int32_t bad_nodes[] = {ZKM_NODE_LOCAL, -3, INT32_MIN, ZKM_MAX_NODES, INT32_MAX};
    make_msg(&m, ZKM_MSG_ACQUIRE);
    for (size_t i = 0; i < sizeof(ok_nodes) / sizeof(ok_nodes[0]); i++) {
        m.acquire.node = ok_nodes[i];
        EXPECT(m, s, 0);
    }
    for (size_t i = 0; i < sizeof(bad_nodes) / sizeof(bad_nodes[0]); i++) {
        m.acquire.node = bad_nodes[i];
        EXPECT(m, s, -EBADMSG);
    }

    make_msg(&m, ZKM_MSG_ACQUIRE);
    m.acquire.flags = ZKM_ACQUIRE_STRICT;
    EXPECT(m, s, 0);
    for (int bit = 1; bit < 32; bit++) {
        m.acquire.flags = 1u << bit;
        EXPECT(m, s, -EBADMSG);
    }
    make_msg(&m, ZKM_MSG_ACQUIRE);
    m.acquire.reserved = 0x80000000u;
    EXPECT(m, s, -EBADMSG);
}
END_TEST

START_TEST(acquire_reply_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_ACQUIRE_REPLY);
    m.acquire_reply.status = 1;
    EXPECT(m, s, -EBADMSG);
    /* success needs handles, failure carries none */
    make_msg(&m, ZKM_MSG_ACQUIRE_REPLY);
    m.acquire_reply.count = 0;
    EXPECT(m, s, -EBADMSG);
    m.acquire_reply.status = -ENOMEM;
    EXPECT(m, s, 0);
    m.acquire_reply.status = -EDQUOT;
    EXPECT(m, s, 0);
    m.acquire_reply.count = 1;
    EXPECT(m, s, -EBADMSG);
    make_msg(&m, ZKM_MSG_ACQUIRE_REPLY);
    m.acquire_reply.count = ZKM_ACQUIRE_MAX;
    EXPECT(m, s, 0);
    m.acquire_reply.count = ZKM_ACQUIRE_MAX + 1;
    EXPECT(m, s, -EBADMSG);
    m.acquire_reply.count = UINT32_MAX;
    EXPECT(m, s, -EBADMSG);
}
END_TEST

START_TEST(release_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_RELEASE);
    m.release.count = 0;
    EXPECT(m, s, -EBADMSG);
    m.release.count = ZKM_RELEASE_MAX;
    EXPECT(m, s, 0);
    m.release.count = ZKM_RELEASE_MAX + 1;
    EXPECT(m, s, -EBADMSG);
    m.release.count = UINT32_MAX;
    EXPECT(m, s, -EBADMSG);
    make_msg(&m, ZKM_MSG_RELEASE);
    m.release.reserved = 1;
    EXPECT(m, s, -EBADMSG);
}
END_TEST

START_TEST(status_reply_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_STATUS_REPLY);
    m.status_reply.status = -EINVAL;
    EXPECT(m, s, 0);
    m.status_reply.status = INT32_MIN;
    EXPECT(m, s, 0);
    m.status_reply.status = 1;
    EXPECT(m, s, -EBADMSG);
    m.status_reply.status = INT32_MAX;
    EXPECT(m, s, -EBADMSG);
}
END_TEST

START_TEST(query_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_QUERY);
    for (uint32_t k = ZKM_QUERY_STATUS; k < ZKM_QUERY_KIND_END; k++) {
        m.query.kind = k;
        EXPECT(m, s, 0);
    }
    m.query.kind = 0;
    EXPECT(m, s, -EBADMSG);
    m.query.kind = ZKM_QUERY_KIND_END;
    EXPECT(m, s, -EBADMSG);
    m.query.kind = UINT32_MAX;
    EXPECT(m, s, -EBADMSG);
    make_msg(&m, ZKM_MSG_QUERY);
    m.query.reserved = 2;
    EXPECT(m, s, -EBADMSG);
    /* offset and arg are the daemon's to interpret */
    make_msg(&m, ZKM_MSG_QUERY);
    m.query.offset = UINT32_MAX;
    m.query.arg = INT32_MIN;
    EXPECT(m, s, 0);
}
END_TEST

START_TEST(query_reply_fields)
{
    static const struct {
        uint32_t kind;
        size_t rec;
    } kinds[] = {
        {ZKM_QUERY_STATUS, sizeof(struct zkm_status_info)},
        {ZKM_QUERY_ARENAS, sizeof(struct zkm_arena_info)},
        {ZKM_QUERY_CLIENTS, sizeof(struct zkm_client_info)},
        {ZKM_QUERY_CONFIG, 1},
        {ZKM_QUERY_MAP, 1},
    };
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_QUERY_REPLY);
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        uint32_t fit = (uint32_t)(ZKM_QUERY_PAYLOAD_MAX / kinds[i].rec);
        m.query_reply.kind = kinds[i].kind;
        m.query_reply.count = 0;
        EXPECT(m, s, 0);
        m.query_reply.count = fit;
        EXPECT(m, s, 0);
        m.query_reply.count = fit + 1;
        EXPECT(m, s, -EBADMSG);
        m.query_reply.count = UINT32_MAX; /* count * rec must not wrap */
        EXPECT(m, s, -EBADMSG);
        if (kinds[i].rec > 1) { /* the smallest count whose 32-bit product wraps */
            m.query_reply.count = (uint32_t)(((uint64_t)UINT32_MAX + 1) / kinds[i].rec + 1);
            EXPECT(m, s, -EBADMSG);
        }
    }
    make_msg(&m, ZKM_MSG_QUERY_REPLY);
    m.query_reply.kind = 0;
    EXPECT(m, s, -EBADMSG);
    m.query_reply.kind = ZKM_QUERY_KIND_END;
    EXPECT(m, s, -EBADMSG);
    make_msg(&m, ZKM_MSG_QUERY_REPLY);
    m.query_reply.status = 5;
    EXPECT(m, s, -EBADMSG);
    m.query_reply.status = -EPERM;
    m.query_reply.count = 0;
    EXPECT(m, s, 0);
}
END_TEST

START_TEST(admin_fields)
{
    union msgbuf m;
    size_t s = make_msg(&m, ZKM_MSG_ADMIN);
    for (uint32_t op = ZKM_ADMIN_COMPACT; op < ZKM_ADMIN_OP_END; op++) {
        m.admin.op = op;
        EXPECT(m, s, 0);
    }
    m.admin.op = 0;
    EXPECT(m, s, -EBADMSG);
    m.admin.op = ZKM_ADMIN_OP_END;
    EXPECT(m, s, -EBADMSG);

    make_msg(&m, ZKM_MSG_ADMIN);
    m.admin.op = ZKM_ADMIN_TUNE_SET;
    strcpy(m.admin.key, "grant_depth");
    strcpy(m.admin.value, "8");
    EXPECT(m, s, 0);
    memset(m.admin.key, 'k', sizeof(m.admin.key));
    EXPECT(m, s, -EBADMSG);
    m.admin.key[sizeof(m.admin.key) - 1] = '\0';
    EXPECT(m, s, 0);
    memset(m.admin.value, 'v', sizeof(m.admin.value));
    EXPECT(m, s, -EBADMSG);
    m.admin.value[sizeof(m.admin.value) - 1] = '\0';
    EXPECT(m, s, 0);
}
END_TEST

START_TEST(version_negotiation)
{
    uint16_t v = 0xabcd;
    ck_assert_int_eq(zkm_version_negotiate(ZKM_PROTO_VERSION_MIN, ZKM_PROTO_VERSION_MAX, &v), 0);
    ck_assert_uint_eq(v, ZKM_PROTO_VERSION_MAX);
    v = 0;
    ck_assert_int_eq(zkm_version_negotiate(1, 0xffff, &v), 0); /* newer client: our highest */
    ck_assert_uint_eq(v, ZKM_PROTO_VERSION_MAX);
    v = 0;
    ck_assert_int_eq(zkm_version_negotiate(0, ZKM_PROTO_VERSION_MIN, &v), 0);
    ck_assert_uint_eq(v, ZKM_PROTO_VERSION_MIN);

    /* disjoint ranges, both sides: ret untouched */
    v = 0xabcd;
    ck_assert_int_eq(
        zkm_version_negotiate(ZKM_PROTO_VERSION_MAX + 1, ZKM_PROTO_VERSION_MAX + 5, &v),
        -EPROTONOSUPPORT);
    ck_assert_int_eq(zkm_version_negotiate(0, 0, &v), -EPROTONOSUPPORT);
    ck_assert_int_eq(zkm_version_negotiate(0xffff, 0xffff, &v), -EPROTONOSUPPORT);
    /* inverted range is malformed, not merely unsupported */
    ck_assert_int_eq(zkm_version_negotiate(2, 1, &v), -EBADMSG);
    ck_assert_uint_eq(v, 0xabcd);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Rings                                                                                */

static const uint32_t ring_starts[] = {
    0, 1, 0x7fffffffu, UINT32_MAX - ZKM_GRANT_CAP / 2, UINT32_MAX - 1, UINT32_MAX};

START_TEST(grant_ring_wrap)
{
    struct zkm_ctrl *c = aligned_alloc(64, sizeof(*c));
    ck_assert_ptr_nonnull(c);
    memset(c, 0, sizeof(*c));
    struct zkm_grant_ring *r = &c->grant[3];
    zkm_grant_ring_init(r);
    uint32_t start = ring_starts[_i];
    uint32_t tail = start, head = start, next_in = 1000, next_out = 1000;
    r->tail = r->head = start;

    /* several rounds of fill-to-full then partial drain: indices cross 2^32 */
    for (int round = 0; round < 4 * ZKM_GRANT_CAP; round++) {
        uint32_t h;
        ck_assert_int_eq(zkm_ctrl_grant_head(r, head, tail, &h), 0);
        head = h;
        while (zkm_grant_push(r, &tail, head, next_in) == 0)
            next_in++;
        ck_assert_uint_eq(tail - head, ZKM_GRANT_CAP);
        ck_assert_uint_eq(r->tail, tail);
        ck_assert_uint_eq(zkm_grant_count(r), ZKM_GRANT_CAP);
        ck_assert_int_eq(zkm_grant_push(r, &tail, head, 1), -ENOSPC);
        uint32_t take = 1 + (uint32_t)round % ZKM_GRANT_CAP;
        for (uint32_t k = 0; k < take; k++) {
            uint32_t v;
            ck_assert_int_eq(zkm_grant_pop(r, &v), 0);
            ck_assert_uint_eq(v, next_out++);
        }
        ck_assert_uint_eq(zkm_grant_count(r), ZKM_GRANT_CAP - take);
    }
    /* drain to empty */
    uint32_t v = 0xdead;
    while (zkm_grant_pop(r, &v) == 0)
        ck_assert_uint_eq(v, next_out++);
    ck_assert_uint_eq(next_out, next_in);
    v = 0xdead;
    ck_assert_int_eq(zkm_grant_pop(r, &v), -EAGAIN);
    ck_assert_uint_eq(v, 0xdead);
    ck_assert_uint_eq(zkm_grant_count(r), 0);
    ck_assert_uint_eq(r->head - start, next_out - 1000);
    if (start >= UINT32_MAX - ZKM_GRANT_CAP)
        ck_assert_uint_lt(r->head, start); /* the indices wrapped */
    /* other rings untouched */
    ck_assert_uint_eq(c->grant[2].tail, 0);
    ck_assert_uint_eq(c->grant[4].head, 0);
    free(c);
}
END_TEST

START_TEST(return_ring_wrap)
{
    struct zkm_ctrl *c = aligned_alloc(64, sizeof(*c));
    ck_assert_ptr_nonnull(c);
    memset(c, 0, sizeof(*c));
    struct zkm_return_ring *r = &c->ret;
    uint32_t start = ring_starts[_i];
    uint32_t shadow = start, next_in = 0, next_out = 0;
    uint32_t out[ZKM_RETURN_CAP + 8];
    r->tail = r->head = start;

    ck_assert_int_eq(zkm_return_drain(r, &shadow, out, ZKM_RETURN_CAP), 0); /* empty */
    for (int round = 0; round < 64; round++) {
        while (zkm_return_push(r, zkm_handle_make(next_in % 3, next_in)) == 0)
            next_in++;
        ck_assert_uint_eq(r->tail - shadow, ZKM_RETURN_CAP);
        uint32_t max = 1 + (uint32_t)round * 7 % (ZKM_RETURN_CAP + 8);
        int n = zkm_return_drain(r, &shadow, out, max);
        ck_assert_int_eq(n, max < ZKM_RETURN_CAP ? max : ZKM_RETURN_CAP);
        ck_assert_uint_eq(r->head, shadow);
        for (int k = 0; k < n; k++, next_out++)
            ck_assert_uint_eq(out[k], zkm_handle_make(next_out % 3, next_out));
    }
    int n;
    while ((n = zkm_return_drain(r, &shadow, out, 5)) > 0)
        for (int k = 0; k < n; k++, next_out++)
            ck_assert_uint_eq(out[k], zkm_handle_make(next_out % 3, next_out));
    ck_assert_int_eq(n, 0);
    ck_assert_uint_eq(next_out, next_in);
    ck_assert_uint_eq(r->tail, start + next_in);
    free(c);
}
END_TEST

START_TEST(grant_head_validator)
{
    struct zkm_grant_ring *r = aligned_alloc(64, sizeof(*r));
    ck_assert_ptr_nonnull(r);
    uint32_t prev = ring_starts[_i], tail = prev + 10, h;
    for (uint32_t d = 0; d <= 10; d++) {
        r->head = prev + d;
        h = 0xdead;
        ck_assert_int_eq(zkm_ctrl_grant_head(r, prev, tail, &h), 0);
        ck_assert_uint_eq(h, prev + d);
    }
    const uint32_t bad[] = {prev - 1,           prev - ZKM_GRANT_CAP,
                            tail + 1,           tail + ZKM_GRANT_CAP,
                            prev + 0x80000000u, tail + 0x7fffffffu};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r->head = bad[i];
        h = 0xdead;
        ck_assert_int_eq(zkm_ctrl_grant_head(r, prev, tail, &h), -EFAULT);
        ck_assert_uint_eq(h, 0xdead);
    }
    /* empty ring: only head == tail */
    r->head = prev;
    ck_assert_int_eq(zkm_ctrl_grant_head(r, prev, prev, &h), 0);
    r->head = prev + 1;
    ck_assert_int_eq(zkm_ctrl_grant_head(r, prev, prev, &h), -EFAULT);
    /* every possible scribble agrees with the rule "head in [prev, tail]" */
    srand(1);
    for (int i = 0; i < 100000; i++) {
        uint32_t x = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
        r->head = i & 1 ? x : prev + (x % 32) - 16;
        int ok = (uint32_t)(r->head - prev) <= 10;
        ck_assert_int_eq(zkm_ctrl_grant_head(r, prev, tail, &h), ok ? 0 : -EFAULT);
    }
    free(r);
}
END_TEST

START_TEST(return_tail_validator)
{
    struct zkm_return_ring *r = aligned_alloc(64, sizeof(*r));
    ck_assert_ptr_nonnull(r);
    memset(r, 0, sizeof(*r));
    uint32_t head = ring_starts[_i], avail;
    for (uint32_t d = 0; d <= ZKM_RETURN_CAP; d += 17) {
        r->tail = head + d;
        ck_assert_int_eq(zkm_ctrl_return_tail(r, head, &avail), 0);
        ck_assert_uint_eq(avail, d);
    }
    r->tail = head + ZKM_RETURN_CAP;
    ck_assert_int_eq(zkm_ctrl_return_tail(r, head, &avail), 0);
    ck_assert_uint_eq(avail, ZKM_RETURN_CAP);

    const uint32_t bad[] = {head + ZKM_RETURN_CAP + 1, head - 1, head - ZKM_RETURN_CAP,
                            head + 0x80000000u, head + UINT32_MAX / 2};
    uint32_t out[ZKM_RETURN_CAP];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r->tail = bad[i];
        r->head = head;
        avail = 0xdead;
        ck_assert_int_eq(zkm_ctrl_return_tail(r, head, &avail), -EFAULT);
        ck_assert_uint_eq(avail, 0xdead);
        /* the drain refuses too, and moves nothing */
        uint32_t shadow = head;
        ck_assert_int_eq(zkm_return_drain(r, &shadow, out, ZKM_RETURN_CAP), -EFAULT);
        ck_assert_uint_eq(shadow, head);
        ck_assert_uint_eq(r->head, head);
    }
    /* a scribbled head is ignored: the daemon works from its shadow */
    r->tail = head + 3;
    r->head = head + 1000;
    uint32_t shadow = head;
    ck_assert_int_eq(zkm_return_drain(r, &shadow, out, ZKM_RETURN_CAP), 3);
    ck_assert_uint_eq(shadow, head + 3);
    ck_assert_uint_eq(r->head, head + 3);
    free(r);
}
END_TEST

START_TEST(handle_checks)
{
    const uint64_t slabs[ZKM_MAX_NODES] = {10, 0, ZKM_HANDLE_INDEX_MASK + 1ull, 1};
    ck_assert_uint_eq(zkm_handle_node(zkm_handle_make(5, 77)), 5);
    ck_assert_uint_eq(zkm_handle_index(zkm_handle_make(5, 77)), 77);
    ck_assert_uint_eq(zkm_handle_index(zkm_handle_make(1, 0x1ffffff)), 0xffffff);
    ck_assert_uint_eq(zkm_handle_node(ZKM_HANDLE_INVALID), 0xff);

    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(0, 0), 4, slabs), 0);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(0, 9), 4, slabs), 0);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(0, 10), 4, slabs), -EINVAL);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(1, 0), 4, slabs), -EINVAL);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(2, ZKM_HANDLE_INDEX_MASK), 4, slabs), 0);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(3, 0), 4, slabs), 0);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(3, 0), 3, slabs), -EINVAL);
    ck_assert_int_eq(zkm_handle_check(zkm_handle_make(4, 0), 4, slabs), -EINVAL);
    ck_assert_int_eq(zkm_handle_check(ZKM_HANDLE_INVALID, 4, slabs), -EINVAL);
    ck_assert_int_eq(zkm_handle_check(ZKM_GRANT_ZEROED | 1, 4, slabs), -EINVAL);
    ck_assert_int_eq(zkm_handle_check(0, 0, slabs), -EINVAL);
}
END_TEST

/* One producer (the daemon's role: validated head, shadow tail) and two consumer threads
 * popping with CAS. Indices start just below 2^32 so they wrap during the run. In the
 * _revoke variant the producer also withdraws its newest entry now and then, racing the
 * consumers: every value must then be received or withdrawn, exactly once. */
#define MT_N         300000u
#define MT_CONSUMERS 2

struct mt_state {
    struct zkm_grant_ring *r;
    uint8_t *seen;    /* per value: times received */
    uint8_t *revoked; /* per value: withdrawn by the producer */
    int revoke;       /* the producer withdraws entries */
    uint32_t n_revoked;
    int producer_error;
    int order_error;
    int done;
    uint32_t received[MT_CONSUMERS];
};

struct mt_consumer {
    struct mt_state *s;
    int id;
};

static void *mt_produce(void *arg)
{
    struct mt_state *s = arg;
    uint32_t tail = s->r->tail, head = tail;
    for (uint32_t v = 0; v < MT_N;) {
        uint32_t h;
        if (zkm_ctrl_grant_head(s->r, head, tail, &h) != 0) {
            __atomic_store_n(&s->producer_error, 1, __ATOMIC_RELAXED);
            break;
        }
        head = h;
        if (zkm_grant_push(s->r, &tail, head, v) != 0) {
            sched_yield();
            continue;
        }
        /* withdraw the entry just pushed, every 7th time, if no consumer claimed it */
        if (s->revoke && v % 7 == 3 && zkm_grant_revoke(s->r, tail - 1, v)) {
            s->revoked[v] = 1;
            s->n_revoked++;
        }
        v++;
    }
    return NULL;
}

static void *mt_consume(void *arg)
{
    struct mt_consumer *c = arg;
    struct mt_state *s = c->s;
    uint32_t last = 0, n = 0;
    for (;;) {
        uint32_t v;
        if (zkm_grant_pop(s->r, &v) != 0) {
            if (__atomic_load_n(&s->done, __ATOMIC_ACQUIRE) && zkm_grant_count(s->r) == 0)
                break;
            sched_yield();
            continue;
        }
        if (v >= MT_N || (n && v <= last) || v == ZKM_GRANT_REVOKED ||
            v == ZKM_GRANT_TAKEN) { /* FIFO: each consumer sees increasing values */
            __atomic_store_n(&s->order_error, 1, __ATOMIC_RELAXED);
            continue;
        }
        __atomic_fetch_add(&s->seen[v], 1, __ATOMIC_RELAXED);
        last = v;
        n++;
    }
    s->received[c->id] = n;
    return NULL;
}

START_TEST(grant_ring_mpmc)
{
    struct mt_state s = {0};
    s.revoke = _i;
    s.r = aligned_alloc(64, sizeof(*s.r));
    s.seen = calloc(MT_N, 1);
    s.revoked = calloc(MT_N, 1);
    ck_assert_ptr_nonnull(s.r);
    ck_assert_ptr_nonnull(s.seen);
    ck_assert_ptr_nonnull(s.revoked);
    memset(s.r, 0, sizeof(*s.r));
    zkm_grant_ring_init(s.r);
    s.r->head = s.r->tail = UINT32_MAX - MT_N / 2;

    pthread_t prod, cons[MT_CONSUMERS];
    struct mt_consumer cs[MT_CONSUMERS];
    for (int i = 0; i < MT_CONSUMERS; i++) {
        cs[i] = (struct mt_consumer){&s, i};
        ck_assert_int_eq(pthread_create(&cons[i], NULL, mt_consume, &cs[i]), 0);
    }
    ck_assert_int_eq(pthread_create(&prod, NULL, mt_produce, &s), 0);
    pthread_join(prod, NULL);
    __atomic_store_n(&s.done, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < MT_CONSUMERS; i++)
        pthread_join(cons[i], NULL);

    ck_assert_int_eq(s.producer_error, 0);
    ck_assert_int_eq(s.order_error, 0);
    ck_assert_uint_eq(s.received[0] + s.received[1] + s.n_revoked, MT_N);
    for (uint32_t v = 0; v < MT_N; v++)
        ck_assert_msg(s.seen[v] + s.revoked[v] == 1, "value %u received %u times, withdrawn %u", v,
                      s.seen[v], s.revoked[v]);
    if (s.revoke)
        ck_assert_uint_gt(s.n_revoked, 0);
    ck_assert_uint_eq(s.r->head, s.r->tail);
    ck_assert_uint_lt(s.r->head, UINT32_MAX - MT_N / 2); /* it did wrap */
    free(s.seen);
    free(s.revoked);
    free(s.r);
}
END_TEST

static Suite *proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("messages");
    tcase_add_test(tc, msg_sizes);
    tcase_add_loop_test(tc, msg_valid, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_truncated, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_oversized, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_bad_magic, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_len_mismatch, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_bad_version, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_wrong_direction, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_loop_test(tc, msg_unexpected_fds, ZKM_MSG_HELLO, ZKM_MSG_TYPE_END);
    tcase_add_test(tc, msg_unknown_type);
    tcase_add_test(tc, hello_fields);
    tcase_add_test(tc, hello_reply_fields);
    tcase_add_test(tc, acquire_fields);
    tcase_add_test(tc, acquire_reply_fields);
    tcase_add_test(tc, release_fields);
    tcase_add_test(tc, status_reply_fields);
    tcase_add_test(tc, query_fields);
    tcase_add_test(tc, query_reply_fields);
    tcase_add_test(tc, admin_fields);
    tcase_add_test(tc, version_negotiation);
    suite_add_tcase(s, tc);

    int n_starts = (int)(sizeof(ring_starts) / sizeof(ring_starts[0]));
    tc = tcase_create("rings");
    tcase_add_loop_test(tc, grant_ring_wrap, 0, n_starts);
    tcase_add_loop_test(tc, return_ring_wrap, 0, n_starts);
    tcase_add_loop_test(tc, grant_head_validator, 0, n_starts);
    tcase_add_loop_test(tc, return_tail_validator, 0, n_starts);
    tcase_add_test(tc, handle_checks);
    tcase_add_loop_test(tc, grant_ring_mpmc, 0, 2); /* 1: with withdrawals */
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(proto_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
