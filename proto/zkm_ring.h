/* SPDX-License-Identifier: MIT */
/*
 * zkm_ring.h - the control block's rings, both ends.
 *
 * Grant ring (per node): the daemon produces slab indices, the client's threads consume.
 * Return ring: the client's threads produce handles (under the client's return lock),
 * the daemon consumes.
 *
 * Orderings: the producer writes the slot, then store-release of tail; the consumer
 * load-acquires tail, reads the slot, then publishes head with store-release (single
 * consumer) or claims it with a CAS (several consumer threads). A producer only writes
 * slots in [tail, head + cap), so a slot read before a successful CAS was not rewritten.
 *
 * Withdrawal: the daemon may take back an entry the client has not consumed (an idle
 * client's surplus, or memory another client needs) by a CAS of its slot from the value
 * it pushed to ZKM_GRANT_REVOKED. A consumer that wins head then exchanges the slot to
 * ZKM_GRANT_TAKEN: whoever changes the slot first owns the slab. A consumer that finds
 * REVOKED skips the entry (and leaves the slot TAKEN: only then may the producer reuse it). The
 * daemon then forgets the entry in its shadow, so when head passes it nothing turns HELD.
 *
 * The daemon never trusts what the client wrote: its producer side works from a private
 * shadow tail and checks head through zkm_ctrl_grant_head(); its consumer side checks
 * tail through zkm_ctrl_return_tail() and every handle through zkm_handle_check() and its
 * own lease records.
 */
#ifndef ZKM_RING_H
#define ZKM_RING_H

#include "zkm_proto.h"

#include <errno.h>

/* Daemon, at control-block creation: every slot free for the producer. */
static inline void zkm_grant_ring_init(struct zkm_grant_ring *r)
{
    for (uint32_t i = 0; i < ZKM_GRANT_CAP; i++)
        __atomic_store_n(&r->slot[i], ZKM_GRANT_TAKEN, __ATOMIC_RELAXED);
}

/* Daemon: put `value` at *shadow_tail if the ring has room given the validated head and
 * the slot's previous entry was claimed (TAKEN). A consumer that moved head but has not
 * claimed its slot yet still holds it: -EBUSY, try later. That includes a withdrawn
 * (REVOKED) slot: the consumer that passes it turns it into TAKEN, so a slow consumer
 * never claims a later lap's entry in its place. */
static inline int zkm_grant_push(struct zkm_grant_ring *r, uint32_t *shadow_tail, uint32_t head,
                                 uint32_t value)
{
    uint32_t t = *shadow_tail;
    if ((uint32_t)(t - head) >= ZKM_GRANT_CAP)
        return -ENOSPC;
    uint32_t *slot = &r->slot[t & (ZKM_GRANT_CAP - 1)];
    uint32_t old = ZKM_GRANT_TAKEN;
    if (!__atomic_compare_exchange_n(slot, &old, value, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return -EBUSY;
    *shadow_tail = t + 1;
    __atomic_store_n(&r->tail, t + 1, __ATOMIC_RELEASE);
    return 0;
}

/* Client (any thread): take one entry. -EAGAIN when empty. Lock-free (CAS on head, then
 * the slot is claimed against a concurrent withdrawal). */
static inline int zkm_grant_pop(struct zkm_grant_ring *r, uint32_t *ret_value)
{
    uint32_t h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t t = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        if (h == t)
            return -EAGAIN;
        if (!__atomic_compare_exchange_n(&r->head, &h, h + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            continue; /* h was reloaded by the failed CAS */
        /* entry h is ours unless the daemon withdraws it first; the producer rewrites
         * the slot only after it was claimed or withdrawn */
        uint32_t v = __atomic_exchange_n(&r->slot[h & (ZKM_GRANT_CAP - 1)], ZKM_GRANT_TAKEN,
                                         __ATOMIC_ACQ_REL);
        if (v != ZKM_GRANT_REVOKED && v != ZKM_GRANT_TAKEN) {
            *ret_value = v;
            return 0;
        }
        h++; /* withdrawn by the daemon: try the next entry */
    }
}

/* Daemon: withdraw entry `pos` (in [validated head, shadow tail)) whose pushed value was
 * `value`. 1 if withdrawn (the client will never use it), 0 if the client took it. */
static inline int zkm_grant_revoke(struct zkm_grant_ring *r, uint32_t pos, uint32_t value)
{
    uint32_t expect = value;
    return __atomic_compare_exchange_n(&r->slot[pos & (ZKM_GRANT_CAP - 1)], &expect,
                                       ZKM_GRANT_REVOKED, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

/* Entries available to the client right now (racy snapshot). */
static inline uint32_t zkm_grant_count(const struct zkm_grant_ring *r)
{
    uint32_t t = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    uint32_t h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    return t - h;
}

/* Client (one producer at a time): queue a handle. -ENOSPC when full. */
static inline int zkm_return_push(struct zkm_return_ring *r, uint32_t handle)
{
    uint32_t t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    uint32_t h = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    if ((uint32_t)(t - h) >= ZKM_RETURN_CAP)
        return -ENOSPC;
    __atomic_store_n(&r->slot[t & (ZKM_RETURN_CAP - 1)], handle, __ATOMIC_RELAXED);
    __atomic_store_n(&r->tail, t + 1, __ATOMIC_RELEASE);
    return 0;
}

/* Daemon: take up to `max` handles after validating tail; returns the count (>= 0) or
 * -EFAULT for a scribbled tail. *shadow_head is the daemon's own head. */
static inline int zkm_return_drain(struct zkm_return_ring *r, uint32_t *shadow_head, uint32_t *out,
                                   uint32_t max)
{
    uint32_t avail;
    int err = zkm_ctrl_return_tail(r, *shadow_head, &avail);
    if (err)
        return err;
    uint32_t n = avail < max ? avail : max;
    uint32_t h = *shadow_head;
    for (uint32_t i = 0; i < n; i++)
        out[i] = __atomic_load_n(&r->slot[(h + i) & (ZKM_RETURN_CAP - 1)], __ATOMIC_RELAXED);
    *shadow_head = h + n;
    __atomic_store_n(&r->head, h + n, __ATOMIC_RELEASE);
    return (int)n;
}

#endif
