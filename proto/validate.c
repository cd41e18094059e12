/* SPDX-License-Identifier: MIT */
/*
 * validate.c - the one place where bytes from the other side become trusted values.
 *
 * Messages: a receiver hands the raw packet to zkm_msg_validate() before it looks at any
 * field beyond the header; the function reads each field it checks once and decides on
 * that copy. Control block: the daemon reads client-written ring indices through
 * zkm_ctrl_grant_head()/zkm_ctrl_return_tail(), which read the word once (volatile
 * atomic load) and check it against the daemon's private shadow.
 */
#include "zkm_proto.h"

#include <errno.h>
#include <string.h>

static const size_t msg_sizes[ZKM_MSG_TYPE_END] = {
    [ZKM_MSG_HELLO] = sizeof(struct zkm_msg_hello),
    [ZKM_MSG_HELLO_REPLY] = sizeof(struct zkm_msg_hello_reply),
    [ZKM_MSG_ACQUIRE] = sizeof(struct zkm_msg_acquire),
    [ZKM_MSG_ACQUIRE_REPLY] = sizeof(struct zkm_msg_acquire_reply),
    [ZKM_MSG_RELEASE] = sizeof(struct zkm_msg_release),
    [ZKM_MSG_STATUS_REPLY] = sizeof(struct zkm_msg_status_reply),
    [ZKM_MSG_QUERY] = sizeof(struct zkm_msg_query),
    [ZKM_MSG_QUERY_REPLY] = sizeof(struct zkm_msg_query_reply),
    [ZKM_MSG_ADMIN] = sizeof(struct zkm_msg_admin),
};

size_t zkm_msg_size(uint16_t type)
{
    if (type == 0 || type >= ZKM_MSG_TYPE_END)
        return 0;
    return msg_sizes[type];
}

static int is_daemon_type(uint16_t type)
{
    switch (type) {
    case ZKM_MSG_HELLO_REPLY:
    case ZKM_MSG_ACQUIRE_REPLY:
    case ZKM_MSG_STATUS_REPLY:
    case ZKM_MSG_QUERY_REPLY:
        return 1;
    default:
        return 0;
    }
}

int zkm_version_negotiate(uint16_t peer_min, uint16_t peer_max, uint16_t *ret_version)
{
    if (peer_min > peer_max)
        return -EBADMSG;
    uint16_t hi = peer_max < ZKM_PROTO_VERSION_MAX ? peer_max : ZKM_PROTO_VERSION_MAX;
    uint16_t lo = peer_min > ZKM_PROTO_VERSION_MIN ? peer_min : ZKM_PROTO_VERSION_MIN;
    if (hi < lo)
        return -EPROTONOSUPPORT;
    *ret_version = hi;
    return 0;
}

static int comm_ok(const char *comm)
{
    /* must be NUL-terminated inside its field */
    return memchr(comm, '\0', ZKM_COMM_LEN) != NULL;
}

static int validate_body(const void *buf, uint16_t type, unsigned n_fds)
{
    switch (type) {
    case ZKM_MSG_HELLO: {
        struct zkm_msg_hello m;
        memcpy(&m, buf, sizeof(m));
        if (m.version_min == 0 || m.version_min > m.version_max)
            return -EBADMSG;
        if (!comm_ok(m.comm) || m.want_depth > ZKM_GRANT_CAP)
            return -EBADMSG;
        if (m.flags & ~(ZKM_HELLO_CTL | ZKM_HELLO_REATTACH))
            return -EBADMSG;
        if (m.flags & ZKM_HELLO_REATTACH) {
            /* a previous daemon's client: its old session id and one memfd per node */
            if ((m.flags & ZKM_HELLO_CTL) || m.reattach_id == 0 || n_fds == 0 ||
                n_fds > ZKM_MAX_NODES)
                return -EBADMSG;
        } else if (n_fds != 0 || m.reattach_id != 0) {
            return -EBADMSG;
        }
        return 0;
    }
    case ZKM_MSG_HELLO_REPLY: {
        struct zkm_msg_hello_reply m;
        memcpy(&m, buf, sizeof(m));
        if (m.status > 0 || n_fds != m.n_fds)
            return -EBADMSG;
        if (m.status < 0)
            return n_fds == 0 ? 0 : -EBADMSG;
        if (m.n_nodes > ZKM_MAX_NODES)
            return -EBADMSG;
        if (m.n_fds != 0 && m.n_fds != 1 + m.n_nodes)
            return -EBADMSG;
        if (m.n_fds != 0 && (m.n_nodes == 0 || m.slab_size == 0 ||
                             (m.slab_size & ((2u << 20) - 1)) != 0 || m.ctrl_size != ZKM_CTRL_SIZE))
            return -EBADMSG;
        for (uint32_t i = 0; i < m.n_nodes; i++)
            if (m.n_fds != 0 && (m.node_bytes[i] % m.slab_size != 0 ||
                                 m.node_bytes[i] / m.slab_size > ZKM_HANDLE_INDEX_MASK))
                return -EBADMSG;
        return 0;
    }
    case ZKM_MSG_ACQUIRE: {
        struct zkm_msg_acquire m;
        memcpy(&m, buf, sizeof(m));
        if (n_fds || m.count == 0 || m.count > ZKM_ACQUIRE_MAX || m.reserved != 0)
            return -EBADMSG;
        if (m.node < ZKM_NODE_ANY || m.node >= ZKM_MAX_NODES || (m.flags & ~ZKM_ACQUIRE_STRICT))
            return -EBADMSG;
        return 0;
    }
    case ZKM_MSG_ACQUIRE_REPLY: {
        struct zkm_msg_acquire_reply m;
        memcpy(&m, buf, sizeof(m));
        if (n_fds || m.status > 0 || m.count > ZKM_ACQUIRE_MAX)
            return -EBADMSG;
        if ((m.status == 0) != (m.count > 0))
            return -EBADMSG;
        return 0;
    }
    case ZKM_MSG_RELEASE: {
        struct zkm_msg_release m;
        memcpy(&m, buf, sizeof(m));
        if (n_fds || m.count == 0 || m.count > ZKM_RELEASE_MAX || m.reserved != 0)
            return -EBADMSG;
        return 0;
    }
    case ZKM_MSG_STATUS_REPLY: {
        struct zkm_msg_status_reply m;
        memcpy(&m, buf, sizeof(m));
        return (n_fds || m.status > 0) ? -EBADMSG : 0;
    }
    case ZKM_MSG_QUERY: {
        struct zkm_msg_query m;
        memcpy(&m, buf, sizeof(m));
        if (n_fds || m.kind == 0 || m.kind >= ZKM_QUERY_KIND_END || m.reserved != 0)
            return -EBADMSG;
        return 0;
    }
    case ZKM_MSG_QUERY_REPLY: {
        const struct zkm_msg_query_reply *m = buf;
        int32_t status;
        uint32_t kind, count;
        memcpy(&status, &m->status, sizeof(status));
        memcpy(&kind, &m->kind, sizeof(kind));
        memcpy(&count, &m->count, sizeof(count));
        if (n_fds || status > 0 || kind == 0 || kind >= ZKM_QUERY_KIND_END)
            return -EBADMSG;
        size_t rec = kind == ZKM_QUERY_ARENAS    ? sizeof(struct zkm_arena_info)
                     : kind == ZKM_QUERY_CLIENTS ? sizeof(struct zkm_client_info)
                     : kind == ZKM_QUERY_ADVICE  ? sizeof(struct zkm_advice_info)
                     : kind == ZKM_QUERY_STATUS  ? sizeof(struct zkm_status_info)
                                                 : 1;
        if ((uint64_t)count * rec > ZKM_QUERY_PAYLOAD_MAX)
            return -EBADMSG;
        return 0;
    }
    case ZKM_MSG_ADMIN: {
        struct zkm_msg_admin m;
        memcpy(&m, buf, sizeof(m));
        if (n_fds || m.op == 0 || m.op >= ZKM_ADMIN_OP_END)
            return -EBADMSG;
        if (!memchr(m.key, '\0', sizeof(m.key)) || !memchr(m.value, '\0', sizeof(m.value)))
            return -EBADMSG;
        return 0;
    }
    default:
        return -EPROTO;
    }
}

int zkm_msg_validate(const void *buf, size_t len, unsigned n_fds, uint16_t version, int from_daemon)
{
    struct zkm_hdr h;

    if (!buf || len < sizeof(h) || n_fds > ZKM_MSG_MAX_FDS)
        return -EBADMSG;
    memcpy(&h, buf, sizeof(h));
    if (h.magic != ZKM_PROTO_MAGIC || h.len != len)
        return -EBADMSG;
    size_t want = zkm_msg_size(h.type);
    if (want == 0)
        return -EPROTO;
    if (!!from_daemon != is_daemon_type(h.type))
        return -EPROTO;
    if (len != want)
        return -EBADMSG;
    if (h.type == ZKM_MSG_HELLO) {
        if (h.version != 0)
            return -EPROTONOSUPPORT;
    } else if (h.type == ZKM_MSG_HELLO_REPLY) {
        /* carries its own version fields */
    } else if (h.version != version) {
        return -EPROTONOSUPPORT;
    }
    return validate_body(buf, h.type, n_fds);
}

int zkm_ctrl_grant_head(const struct zkm_grant_ring *r, uint32_t prev_head, uint32_t tail,
                        uint32_t *ret_head)
{
    uint32_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    /* unsigned distances: head must lie in [prev_head, tail] */
    if ((uint32_t)(head - prev_head) > (uint32_t)(tail - prev_head))
        return -EFAULT;
    *ret_head = head;
    return 0;
}

int zkm_ctrl_return_tail(const struct zkm_return_ring *r, uint32_t head, uint32_t *ret_avail)
{
    uint32_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    uint32_t avail = tail - head;
    if (avail > ZKM_RETURN_CAP)
        return -EFAULT;
    *ret_avail = avail;
    return 0;
}

int zkm_handle_check(uint32_t handle, uint32_t n_nodes, const uint64_t *node_slabs)
{
    uint32_t node = zkm_handle_node(handle);
    if (node >= n_nodes || zkm_handle_index(handle) >= node_slabs[node])
        return -EINVAL;
    return 0;
}
