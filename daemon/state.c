/* SPDX-License-Identifier: MIT */
/*
 * state.c - the lease table file (see state.h).
 *
 * Layout of zkmemd.state (all offsets 64-byte aligned):
 *   header            magic, version, layout (slab size, nodes, slots per node, sessions),
 *                     next session id, offsets of the tables below
 *   domains           ZKM_STATE_MAX_DOMAINS x struct zkm_state_domain
 *   sessions          max_sessions x struct zkm_state_session
 *   per node          max_slots bytes of slot state, max_slots x u32 owner,
 *                     max_slots x u16 domain
 * The file is written only by the daemon (mode 0600, root's runtime dir). A header whose
 * layout differs from this daemon's (other slab size, node count, memory size) is not
 * trusted: the file is started afresh and the old leases are left to the kernel (their
 * memfds die with their last client).
 */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_MAGIC   0x54534b5aU /* "ZKST" */
#define STATE_VERSION 1

struct state_hdr {
    uint32_t magic;
    uint32_t version;
    struct zkm_state_layout layout;
    uint32_t next_session_id;
    uint32_t pad;
    uint64_t off_domains, off_sessions;
    uint64_t off_state[ZKM_MAX_NODES], off_owner[ZKM_MAX_NODES], off_domain[ZKM_MAX_NODES];
    uint64_t size;
};

static struct state_hdr *hdr;
static char path[512];

static uint64_t align64(uint64_t x)
{
    return (x + 63) & ~(uint64_t)63;
}

static void plan(struct state_hdr *h, const struct zkm_state_layout *l)
{
    uint64_t off = align64(sizeof(*h));
    h->off_domains = off;
    off = align64(off + sizeof(struct zkm_state_domain) * ZKM_STATE_MAX_DOMAINS);
    h->off_sessions = off;
    off = align64(off + sizeof(struct zkm_state_session) * l->max_sessions);
    for (uint32_t n = 0; n < l->n_nodes; n++) {
        h->off_state[n] = off;
        off = align64(off + l->max_slots[n]);
        h->off_owner[n] = off;
        off = align64(off + 4 * l->max_slots[n]);
        h->off_domain[n] = off;
        off = align64(off + 2 * l->max_slots[n]);
    }
    h->size = (off + 4095) & ~(uint64_t)4095;
}

int zkm_state_open(const char *dir, const struct zkm_state_layout *layout, int *ret_recovered,
                   char *err, size_t errlen)
{
    struct state_hdr want;
    memset(&want, 0, sizeof(want));
    want.magic = STATE_MAGIC;
    want.version = STATE_VERSION;
    want.layout = *layout;
    plan(&want, layout);

    if ((size_t)snprintf(path, sizeof(path), "%s/zkmemd.state", dir) >= sizeof(path)) {
        snprintf(err, errlen, "runtime dir too long for the state file");
        return -ENAMETOOLONG;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open state file %s: %s", path, strerror(errno));
        return -errno;
    }
    struct stat st;
    int recovered = 0;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size == want.size) {
        struct state_hdr old;
        if (pread(fd, &old, sizeof(old), 0) == (ssize_t)sizeof(old) && old.magic == STATE_MAGIC &&
            old.version == STATE_VERSION && old.size == want.size &&
            !memcmp(&old.layout, layout, sizeof(*layout)))
            recovered = 1;
    }
    if (!recovered && (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)want.size) < 0)) {
        snprintf(err, errlen, "cannot size state file %s: %s", path, strerror(errno));
        close(fd);
        return -errno;
    }
    void *m = mmap(NULL, want.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "cannot map state file %s: %s", path, strerror(errno));
        return -errno;
    }
    hdr = m;
    if (!recovered) {
        want.next_session_id = 1;
        memcpy(hdr, &want, sizeof(want));
        for (uint32_t n = 0; n < layout->n_nodes; n++)
            memset((char *)m + hdr->off_state[n], ZKM_SLOT_FREE, layout->max_slots[n]);
    }
    *ret_recovered = recovered;
    return 0;
}

uint32_t zkm_state_peek_backing(const char *dir)
{
    char p[512];
    struct state_hdr old;
    if ((size_t)snprintf(p, sizeof(p), "%s/zkmemd.state", dir) >= sizeof(p))
        return 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    ssize_t n = pread(fd, &old, sizeof(old), 0);
    close(fd);
    if (n != (ssize_t)sizeof(old) || old.magic != STATE_MAGIC || old.version != STATE_VERSION)
        return 0;
    return old.layout.backing;
}

void zkm_state_close(int remove_file)
{
    if (!hdr)
        return;
    munmap(hdr, hdr->size);
    hdr = NULL;
    if (remove_file)
        unlink(path);
}

uint8_t *zkm_state_slot_state(uint32_t node)
{
    return (uint8_t *)hdr + hdr->off_state[node];
}

uint32_t *zkm_state_slot_owner(uint32_t node)
{
    return (uint32_t *)((char *)hdr + hdr->off_owner[node]);
}

uint16_t *zkm_state_slot_domain(uint32_t node)
{
    return (uint16_t *)((char *)hdr + hdr->off_domain[node]);
}

struct zkm_state_domain *zkm_state_domains(void)
{
    return (struct zkm_state_domain *)((char *)hdr + hdr->off_domains);
}

struct zkm_state_session *zkm_state_sessions(void)
{
    return (struct zkm_state_session *)((char *)hdr + hdr->off_sessions);
}

uint32_t zkm_state_max_sessions(void)
{
    return hdr->layout.max_sessions;
}

uint32_t zkm_state_next_session_id(void)
{
    uint32_t id = hdr->next_session_id++;
    if (hdr->next_session_id == 0)
        hdr->next_session_id = 1;
    return id;
}
