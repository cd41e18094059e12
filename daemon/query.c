/* SPDX-License-Identifier: MIT */
/*
 * query.c - answers zkmemctl: read-only records (status, arenas, clients, config, slot
 * map), paged through ZKM_MSG_QUERY_REPLY, and admin actions for root or the admin group.
 */
#include "query.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "log.h"

static void reply_init(struct zkm_msg_query_reply *r, const struct zkm_session *s,
                       const struct zkm_msg_query *m)
{
    memset(r, 0, offsetof(struct zkm_msg_query_reply, payload));
    r->hdr.magic = ZKM_PROTO_MAGIC;
    r->hdr.version = s->version;
    r->hdr.type = ZKM_MSG_QUERY_REPLY;
    r->hdr.len = sizeof(*r);
    r->hdr.seq = m->hdr.seq;
    r->kind = m->kind;
}

/* Copy `total` bytes of `src` starting at `offset` (in records of `rec` bytes). */
static void page(struct zkm_msg_query_reply *r, const void *src, uint32_t total, size_t rec,
                 uint32_t offset)
{
    uint32_t per_page = (uint32_t)(ZKM_QUERY_PAYLOAD_MAX / rec);
    uint32_t n = offset < total ? total - offset : 0;
    if (n > per_page)
        n = per_page;
    memcpy(r->payload, (const char *)src + (size_t)offset * rec, (size_t)n * rec);
    r->count = n;
    r->total = total;
}

static struct zkm_msg_query_reply reply_buf;

/* CLIENTS or ADVICE: one record per client session from `offset` on, in list order; a
 * pid filter in `arg`. */
static void client_records(struct zkm_msg_query_reply *r, const struct zkm_msg_query *m)
{
    size_t rec = m->kind == ZKM_QUERY_CLIENTS ? sizeof(struct zkm_client_info)
                                              : sizeof(struct zkm_advice_info);
    uint32_t total = 0, k = 0, per_page = (uint32_t)(ZKM_QUERY_PAYLOAD_MAX / rec);
    for (struct zkm_session *c = zkm_sessions_first(); c; c = c->next) {
        if (c->is_ctl || c->closing || (m->arg > 0 && c->pid != m->arg))
            continue;
        if (total >= m->offset && k < per_page) {
            void *at = r->payload + (size_t)k * rec;
            if (m->kind == ZKM_QUERY_CLIENTS)
                zkm_session_info(c, at);
            else
                zkm_tune_advice(c, at);
            k++;
        }
        total++;
    }
    r->count = k;
    r->total = total;
}
static char text_buf[1 << 16];

void zkm_query_handle(struct zkm_session *s, const struct zkm_msg_query *m)
{
    struct zkm_msg_query_reply *r = &reply_buf;
    reply_init(r, s, m);
    switch (m->kind) {
    case ZKM_QUERY_STATUS: {
        struct zkm_status_info st;
        zkm_daemon_status(&st);
        page(r, &st, 1, sizeof(st), m->offset);
        break;
    }
    case ZKM_QUERY_ARENAS: {
        struct zkm_arena_info info[ZKM_MAX_NODES];
        uint32_t n = zkm_arena_count();
        for (uint32_t i = 0; i < n; i++)
            zkm_arena_info(i, &info[i]);
        page(r, info, n, sizeof(info[0]), m->offset);
        break;
    }
    case ZKM_QUERY_CLIENTS:
    case ZKM_QUERY_ADVICE:
        client_records(r, m);
        break;
    case ZKM_QUERY_CONFIG: {
        int n = zkm_config_format(zkm_daemon_config(), text_buf, sizeof(text_buf), 0);
        page(r, text_buf, n > 0 ? (uint32_t)n : 0, 1, m->offset);
        break;
    }
    case ZKM_QUERY_MAP: {
        struct zkm_arena *a = zkm_arena_get(m->arg < 0 ? UINT32_MAX : (uint32_t)m->arg);
        if (!a) {
            r->status = -EINVAL;
            break;
        }
        /* the slots that can be granted; beyond capacity only what is still held */
        uint64_t n = a->capacity;
        for (uint64_t i = n; i < a->max_slots; i++)
            if (a->state[i] != ZKM_SLOT_FREE)
                n = i + 1;
        page(r, a->state, (uint32_t)n, 1, m->offset);
        break;
    }
    default:
        r->status = -EINVAL;
    }
    zkm_session_send(s, r, sizeof(*r), NULL, 0);
}

void zkm_admin_handle(struct zkm_session *s, const struct zkm_msg_admin *m)
{
    struct zkm_msg_status_reply r;
    char msg[160] = "";
    memset(&r, 0, sizeof(r));
    r.hdr.magic = ZKM_PROTO_MAGIC;
    r.hdr.version = s->version;
    r.hdr.type = ZKM_MSG_STATUS_REPLY;
    r.hdr.len = sizeof(r);
    r.hdr.seq = m->hdr.seq;

    if (!s->is_ctl || !s->is_admin) {
        r.status = -EPERM;
        zkm_log(ZKM_LOG_WARNING,
                "refused admin action %u from pid %d uid %u: not root or in the "
                "admin group",
                m->op, (int)s->pid, (unsigned)s->uid);
        zkm_session_send(s, &r, sizeof(r), NULL, 0);
        return;
    }
    switch (m->op) {
    case ZKM_ADMIN_COMPACT: {
        uint32_t drain_slabs, drain_clients;
        uint64_t freed = zkm_sessions_compact(&drain_slabs, &drain_clients);
        r.value = freed > UINT32_MAX ? UINT32_MAX : (uint32_t)freed;
        snprintf(msg, sizeof(msg),
                 "compaction pass gave %u slabs (%llu MiB) back to the node pools; drain "
                 "lists: %u sparse slabs of %u clients",
                 r.value, (unsigned long long)(freed * zkm_arena_slab_size() >> 20), drain_slabs,
                 drain_clients);
        break;
    }
    case ZKM_ADMIN_RESERVE:
        r.status = zkm_arena_reserve((uint32_t)m->arg0, (long)m->arg1, msg, sizeof(msg));
        break;
    case ZKM_ADMIN_TUNE_SET:
        r.status = zkm_daemon_tune(m->key, m->value, msg, sizeof(msg));
        break;
    default:
        r.status = -EINVAL;
    }
    zkm_log(r.status ? ZKM_LOG_WARNING : ZKM_LOG_INFO, "admin action %u by uid %u: %s%s", m->op,
            (unsigned)s->uid, r.status ? "failed: " : "", msg);
    zkm_session_send(s, &r, sizeof(r), NULL, 0);
}
