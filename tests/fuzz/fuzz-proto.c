/* SPDX-License-Identifier: MIT */
/*
 * fuzz-proto.c - libFuzzer target for the message and control-block validators.
 *
 * Input: byte 0 selects the mode.
 *   even: a socket message. Byte 1 = fds received (mod ZKM_MSG_MAX_FDS + 3), byte 2 bit 0
 *         = direction (from the daemon), bits 1-2 = the session's negotiated version
 *         (0..3); the rest is the packet, copied into a heap buffer of exactly its length
 *         so that any read past it is an ASan report. When zkm_msg_validate() accepts it,
 *         the fields are decoded as a receiver would and the validator's promises are
 *         asserted (counts in bounds, strings terminated, records inside the payload...).
 *   odd:  a scribbled control block. Bytes 1..48 seed the daemon's private shadow state
 *         (a consistent one: each grant ring's tail is 0..CAP ahead of its last head), the
 *         rest is copied over an aligned struct zkm_ctrl as the client would have written
 *         it. The daemon's side then runs: zkm_ctrl_grant_head() + zkm_grant_push() on
 *         every ring, zkm_return_drain() and zkm_handle_check() on what it drained.
 */
#include "fuzz.h"
#include "zkm_proto.h"
#include "zkm_ring.h"

#include <errno.h>
#include <string.h>

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
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
    default:
        return 1;
    }
}

/* What a receiver does with an accepted message; asserts what validation promised. */
static void decode(const uint8_t *buf, size_t len, unsigned n_fds, uint16_t version)
{
    struct zkm_hdr h;
    memcpy(&h, buf, sizeof(h));
    FUZZ_CHECK(h.magic == ZKM_PROTO_MAGIC && h.len == len && zkm_msg_size(h.type) == len);
    FUZZ_CHECK(len <= ZKM_MSG_MAX_SIZE);
    if (h.type != ZKM_MSG_HELLO && h.type != ZKM_MSG_HELLO_REPLY)
        FUZZ_CHECK(h.version == version);
    static const uint64_t node_slabs[ZKM_MAX_NODES] = {64, 1, 0, 4096, 2, 2, 2, 2};

    switch (h.type) {
    case ZKM_MSG_HELLO: {
        struct zkm_msg_hello m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(h.version == 0);
        if (m.flags & ZKM_HELLO_REATTACH) /* the old session's node memfds */
            FUZZ_CHECK(n_fds >= 1 && n_fds <= ZKM_MAX_NODES && m.reattach_id != 0 &&
                       !(m.flags & ZKM_HELLO_CTL));
        else
            FUZZ_CHECK(n_fds == 0 && m.reattach_id == 0);
        FUZZ_CHECK(strnlen(m.comm, sizeof(m.comm)) < sizeof(m.comm));
        FUZZ_CHECK(m.version_min >= 1 && m.version_min <= m.version_max);
        FUZZ_CHECK(m.want_depth <= ZKM_GRANT_CAP &&
                   !(m.flags & ~(ZKM_HELLO_CTL | ZKM_HELLO_REATTACH)));
        uint16_t v = 0;
        int r = zkm_version_negotiate(m.version_min, m.version_max, &v);
        FUZZ_CHECK(r == 0 || r == -EPROTONOSUPPORT);
        if (r == 0)
            FUZZ_CHECK(v >= m.version_min && v <= m.version_max && v >= ZKM_PROTO_VERSION_MIN &&
                       v <= ZKM_PROTO_VERSION_MAX);
        else
            FUZZ_CHECK(v == 0);
        break;
    }
    case ZKM_MSG_HELLO_REPLY: {
        struct zkm_msg_hello_reply m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.status <= 0 && m.n_fds == n_fds);
        if (m.status < 0 || n_fds == 0)
            break;
        /* a client maps fds[1 + i] for every node: the counts must agree */
        FUZZ_CHECK(m.n_nodes >= 1 && m.n_nodes <= ZKM_MAX_NODES && n_fds == 1 + m.n_nodes);
        FUZZ_CHECK(m.slab_size != 0 && m.slab_size % (2u << 20) == 0);
        FUZZ_CHECK(m.ctrl_size == ZKM_CTRL_SIZE);
        uint64_t slabs[ZKM_MAX_NODES] = {0};
        for (uint32_t i = 0; i < m.n_nodes; i++) {
            FUZZ_CHECK(m.node_bytes[i] % m.slab_size == 0);
            slabs[i] = m.node_bytes[i] / m.slab_size;
            FUZZ_CHECK(slabs[i] <= ZKM_HANDLE_INDEX_MASK);
        }
        /* the last slab of each node is addressable by a handle, one past it is not */
        for (uint32_t i = 0; i < m.n_nodes; i++) {
            if (slabs[i])
                FUZZ_CHECK(zkm_handle_check(zkm_handle_make(i, (uint32_t)slabs[i] - 1), m.n_nodes,
                                            slabs) == 0);
            if (slabs[i] < ZKM_HANDLE_INDEX_MASK + 1ull)
                FUZZ_CHECK(zkm_handle_check(zkm_handle_make(i, (uint32_t)slabs[i]), m.n_nodes,
                                            slabs) == -EINVAL);
        }
        break;
    }
    case ZKM_MSG_ACQUIRE: {
        struct zkm_msg_acquire m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.count >= 1 && m.count <= ZKM_ACQUIRE_MAX);
        FUZZ_CHECK(m.node >= ZKM_NODE_ANY && m.node < ZKM_MAX_NODES);
        FUZZ_CHECK(!(m.flags & ~ZKM_ACQUIRE_STRICT) && m.reserved == 0);
        break;
    }
    case ZKM_MSG_ACQUIRE_REPLY: {
        struct zkm_msg_acquire_reply m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.count <= ZKM_ACQUIRE_MAX && m.status <= 0);
        FUZZ_CHECK((m.status == 0) == (m.count > 0));
        uint32_t ok = 0;
        for (uint32_t i = 0; i < m.count; i++) {
            int r = zkm_handle_check(m.handles[i], ZKM_MAX_NODES, node_slabs);
            FUZZ_CHECK(r == 0 || r == -EINVAL);
            if (r == 0) {
                FUZZ_CHECK(zkm_handle_node(m.handles[i]) < ZKM_MAX_NODES);
                FUZZ_CHECK(zkm_handle_index(m.handles[i]) <
                           node_slabs[zkm_handle_node(m.handles[i])]);
                ok++;
            }
        }
        FUZZ_CHECK(ok <= m.count);
        break;
    }
    case ZKM_MSG_RELEASE: {
        struct zkm_msg_release m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.count >= 1 && m.count <= ZKM_RELEASE_MAX && m.reserved == 0);
        for (uint32_t i = 0; i < m.count; i++) {
            int r = zkm_handle_check(m.handles[i], 4, node_slabs);
            if (r == 0)
                FUZZ_CHECK(zkm_handle_node(m.handles[i]) < 4);
        }
        break;
    }
    case ZKM_MSG_STATUS_REPLY: {
        struct zkm_msg_status_reply m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.status <= 0);
        break;
    }
    case ZKM_MSG_QUERY: {
        struct zkm_msg_query m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.kind >= 1 && m.kind < ZKM_QUERY_KIND_END && m.reserved == 0);
        break;
    }
    case ZKM_MSG_QUERY_REPLY: {
        /* read the records straight out of the packet, as zkmemctl does */
        const uint8_t *payload = buf + offsetof(struct zkm_msg_query_reply, payload);
        uint32_t kind = rd32(buf + offsetof(struct zkm_msg_query_reply, kind));
        uint32_t count = rd32(buf + offsetof(struct zkm_msg_query_reply, count));
        FUZZ_CHECK(kind >= 1 && kind < ZKM_QUERY_KIND_END);
        size_t rec = record_size(kind);
        uint8_t tmp[sizeof(struct zkm_arena_info) + sizeof(struct zkm_client_info) + 128];
        uint64_t sum = 0;
        for (uint32_t i = 0; i < count; i++) {
            memcpy(tmp, payload + (size_t)i * rec, rec);
            sum += tmp[0];
        }
        FUZZ_CHECK(sum <= (uint64_t)count * 255);
        FUZZ_CHECK(payload + (size_t)count * rec <= buf + len);
        break;
    }
    case ZKM_MSG_ADMIN: {
        struct zkm_msg_admin m;
        memcpy(&m, buf, sizeof(m));
        FUZZ_CHECK(m.op >= 1 && m.op < ZKM_ADMIN_OP_END);
        FUZZ_CHECK(strlen(m.key) < sizeof(m.key) && strlen(m.value) < sizeof(m.value));
        break;
    }
    default:
        FUZZ_CHECK(!"validator accepted an unknown type");
    }
}

static void fuzz_message(const uint8_t *data, size_t size)
{
    if (size < 3)
        return;
    unsigned n_fds = data[1] % (ZKM_MSG_MAX_FDS + 3);
    int from_daemon = data[2] & 1;
    uint16_t version = (data[2] >> 1) & 3;
    size_t len = size - 3;
    /* exactly len bytes on the heap: an over-read is an ASan report */
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    memcpy(buf, data + 3, len);

    int r = zkm_msg_validate(buf, len, n_fds, version, from_daemon);
    FUZZ_CHECK(r == 0 || r == -EBADMSG || r == -EPROTO || r == -EPROTONOSUPPORT);
    /* deterministic, and a pure function of its inputs */
    FUZZ_CHECK(zkm_msg_validate(buf, len, n_fds, version, from_daemon) == r);
    if (r == 0) {
        decode(buf, len, n_fds, version);
        /* no message is acceptable in both directions */
        FUZZ_CHECK(zkm_msg_validate(buf, len, n_fds, version, !from_daemon) == -EPROTO);
    }
    free(buf);
}

static void fuzz_ctrl(const uint8_t *data, size_t size)
{
    enum { SEED = 48 };
    uint8_t seed[SEED] = {0};
    memcpy(seed, data + 1, size - 1 < SEED ? size - 1 : SEED);
    const uint8_t *scribble = size > 1 + SEED ? data + 1 + SEED : NULL;
    size_t scribble_len = size > 1 + SEED ? size - 1 - SEED : 0;

    static struct zkm_ctrl *c;
    if (!c && !(c = aligned_alloc(64, sizeof(*c))))
        return;
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < ZKM_MAX_NODES; i++)
        zkm_grant_ring_init(&c->grant[i]);

    /* the daemon's consistent private state */
    uint32_t base = rd32(seed);
    uint32_t prev_head[ZKM_MAX_NODES], tail[ZKM_MAX_NODES];
    for (int i = 0; i < ZKM_MAX_NODES; i++) {
        prev_head[i] = base + seed[4 + i] * 0x01010101u;
        tail[i] = prev_head[i] + seed[12 + i] % (ZKM_GRANT_CAP + 1);
        c->grant[i].head = prev_head[i];
        c->grant[i].tail = tail[i];
    }
    uint32_t ret_head = rd32(seed + 20);
    uint32_t max = seed[24] ? seed[24] : ZKM_RETURN_CAP + 16;
    uint32_t n_nodes = 1 + seed[25] % ZKM_MAX_NODES;
    uint64_t node_slabs[ZKM_MAX_NODES];
    for (int i = 0; i < ZKM_MAX_NODES; i++)
        node_slabs[i] = seed[26 + i] % 4 == 3 ? ZKM_HANDLE_INDEX_MASK + 1ull : seed[26 + i];
    c->ret.head = ret_head;
    c->ret.tail = ret_head;

    /* the client scribbles over its whole control block */
    if (scribble)
        memcpy(c, scribble, scribble_len < sizeof(*c) ? scribble_len : sizeof(*c));

    for (int i = 0; i < ZKM_MAX_NODES; i++) {
        uint32_t head = 0x5eed5eedu;
        uint32_t written = c->grant[i].head;
        int r = zkm_ctrl_grant_head(&c->grant[i], prev_head[i], tail[i], &head);
        int inside = (uint32_t)(written - prev_head[i]) <= (uint32_t)(tail[i] - prev_head[i]);
        FUZZ_CHECK(r == (inside ? 0 : -EFAULT));
        if (r) {
            FUZZ_CHECK(head == 0x5eed5eedu);
            continue;
        }
        FUZZ_CHECK(head == written);
        /* refill: never more than CAP outstanding, and never over a slot a consumer has
         * not claimed (a scribbled slot value stops the producer: -EBUSY) */
        uint32_t t = tail[i], pushed = 0;
        int pr;
        while ((pr = zkm_grant_push(&c->grant[i], &t, head, pushed)) == 0)
            pushed++;
        FUZZ_CHECK(t - head <= ZKM_GRANT_CAP);
        FUZZ_CHECK(pushed <= ZKM_GRANT_CAP - (tail[i] - head));
        if (pr == -EBUSY) {
            uint32_t v = c->grant[i].slot[t & (ZKM_GRANT_CAP - 1)];
            FUZZ_CHECK(v != ZKM_GRANT_TAKEN);
        } else {
            FUZZ_CHECK(pr == -ENOSPC && t - head == ZKM_GRANT_CAP);
        }
        if (!scribble)
            FUZZ_CHECK(t - head == ZKM_GRANT_CAP); /* slots as the daemon made them */
        /* a withdrawal succeeds only on the value the daemon pushed there */
        if (pushed) {
            uint32_t last = t - 1, v = c->grant[i].slot[last & (ZKM_GRANT_CAP - 1)];
            FUZZ_CHECK(v == pushed - 1);
            FUZZ_CHECK(!zkm_grant_revoke(&c->grant[i], last, v + 1));
            FUZZ_CHECK(zkm_grant_revoke(&c->grant[i], last, v));
            FUZZ_CHECK(c->grant[i].slot[last & (ZKM_GRANT_CAP - 1)] == ZKM_GRANT_REVOKED);
        }
        /* the published tail is the shadow's once the daemon wrote it; a ring that was
         * already full keeps whatever the client scribbled there (it only hurts itself) */
        if (pushed)
            FUZZ_CHECK(c->grant[i].tail == t);
    }

    uint32_t out[ZKM_RETURN_CAP + 16];
    uint32_t sh = ret_head, written = c->ret.tail;
    int n = zkm_return_drain(&c->ret, &sh, out, max);
    if (n < 0) {
        FUZZ_CHECK(n == -EFAULT && sh == ret_head && written - ret_head > ZKM_RETURN_CAP);
        return;
    }
    FUZZ_CHECK((uint32_t)n <= ZKM_RETURN_CAP && (uint32_t)n <= max);
    FUZZ_CHECK((uint32_t)n == (written - ret_head < max ? written - ret_head : max));
    FUZZ_CHECK(sh == ret_head + (uint32_t)n && c->ret.head == sh);
    for (int k = 0; k < n; k++) {
        int r = zkm_handle_check(out[k], n_nodes, node_slabs);
        uint32_t node = zkm_handle_node(out[k]);
        if (r == 0)
            FUZZ_CHECK(node < n_nodes && zkm_handle_index(out[k]) < node_slabs[node]);
        else
            FUZZ_CHECK(r == -EINVAL &&
                       (node >= n_nodes || zkm_handle_index(out[k]) >= node_slabs[node]));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_ctrl(data, size);
    else
        fuzz_message(data, size);
    return 0;
}
