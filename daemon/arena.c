/* SPDX-License-Identifier: MIT */
/*
 * arena.c - per-node arenas of slabs and the domains whose memfds back them.
 *
 * Data structures (all owned by the event-loop thread; no locks):
 *   arenas[node]        capacity, counters, and per slot: state (free / pre-granted /
 *                       held), owner session id, owner domain.
 *   arena.free_stack    free slot indices below capacity (LIFO: a recently freed slot's
 *                       page tables are warm in no one's cache, but LIFO keeps the set of
 *                       touched offsets small).
 *   domains             list by uid; per node one memfd of max_slots * slab_size bytes,
 *                       sparse: only granted slots have pages.
 *
 * Memory: granting a slot allocates its pages now, on the arena's kernel node, in the
 * daemon (so a client never pays a first-touch fault and never meets SIGBUS):
 *   hugetlb  set_mempolicy(MPOL_BIND, phys) + fallocate(range); ENOSPC when the pool is
 *            empty (pages it already got for the range are punched back).
 *   shmem    set_mempolicy(MPOL_BIND, phys) + MADV_POPULATE_WRITE on the daemon's
 *            MADV_HUGEPAGE mapping (fallback when there are no hugepages).
 * Then the placement is verified with get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR) and a page
 * on the wrong node is counted (misplaced_pages). Freeing punches the range
 * (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE): the pages go back to the node pool, and the next
 * grant of that slot - to any domain - gets pages the kernel zeroed.
 *
 * Persistence: the per-slot tables live in the state file (state.c), so a restarted
 * daemon knows every lease. A stop never punches: clients keep their memory while no
 * daemon runs. Recovery (zkm_arena_recover_*) re-adopts domains when their clients
 * reattach and releases what no live client claims.
 */
#include "arena.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hugepages.h"
#include "log.h"
#include "state.h"

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static struct zkm_arena arenas[ZKM_MAX_NODES];
static uint32_t n_arenas;
static struct zkm_topology topo;
static struct zkm_domain *domtab[ZKM_STATE_MAX_DOMAINS]; /* by state domain index */
static int recovering;
static void forget_unused_domains(void);
static uint64_t recovery_deadline_ms;
static uint32_t backing;
static uint64_t slab_size;
static uint64_t budget_bytes;
static int caching; /* enable_compaction: returned slots stay CACHED until decay */

uint32_t zkm_arena_count(void)
{
    return n_arenas;
}

struct zkm_arena *zkm_arena_get(uint32_t node)
{
    return node < n_arenas ? &arenas[node] : NULL;
}

const struct zkm_topology *zkm_arena_topology(void)
{
    return &topo;
}

uint32_t zkm_arena_backing(void)
{
    return backing;
}

uint64_t zkm_arena_slab_size(void)
{
    return slab_size;
}

uint64_t zkm_arena_budget(void)
{
    return budget_bytes;
}

void zkm_arena_set_budget(uint64_t bytes)
{
    budget_bytes = bytes;
}

static uint64_t mem_total_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : (uint64_t)1 << 34;
}

static const char *shmem_thp_mode(void)
{
    static char mode[32];
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
    if (!f)
        return "unknown";
    char line[256];
    mode[0] = '\0';
    if (fgets(line, sizeof(line), f)) {
        char *l = strchr(line, '['), *r = l ? strchr(l, ']') : NULL;
        if (l && r && (size_t)(r - l - 1) < sizeof(mode)) {
            memcpy(mode, l + 1, (size_t)(r - l - 1));
            mode[r - l - 1] = '\0';
        }
    }
    fclose(f);
    return mode[0] ? mode : "unknown";
}

static int arena_alloc_tables(struct zkm_arena *a)
{
    a->free_stack = calloc(a->max_slots, sizeof(*a->free_stack));
    if (!a->free_stack)
        return -ENOMEM;
    a->state = zkm_state_slot_state(a->node);
    a->owner = zkm_state_slot_owner(a->node);
    a->dom = zkm_state_slot_domain(a->node);
    /* slots leased before a restart stay out of the free stack until recovery decides */
    uint64_t leased = 0, orphaned = 0;
    a->pregranted = 0;
    for (uint64_t i = 0; i < a->max_slots; i++) {
        if (a->state[i] == ZKM_SLOT_CACHED) { /* no lease: recovery punches its pages */
            a->state[i] = ZKM_SLOT_FREE;
            orphaned++;
        }
        leased += a->state[i] != ZKM_SLOT_FREE;
        a->pregranted += a->state[i] == ZKM_SLOT_PREGRANTED;
    }
    if (a->backing == ZKM_BACKING_HUGETLB)
        a->capacity += leased; /* their pages were not among the free ones */
    else if (a->capacity < leased)
        a->capacity = leased; /* fallback_mb covers leased slabs too */
    if (a->capacity > a->max_slots)
        a->capacity = a->max_slots;
    /* a cached slot's pages may still be allocated in a memfd a client holds: not free
     * now, so not in the capacity, but they are once recovery punches them */
    a->cap_limit = a->capacity + orphaned < a->max_slots ? a->capacity + orphaned : a->max_slots;
    /* highest index at the bottom: slot 0 is granted first */
    a->n_free = 0;
    for (uint64_t i = a->capacity; i-- > 0;)
        if (a->state[i] == ZKM_SLOT_FREE)
            a->free_stack[a->n_free++] = (uint32_t)i;
    a->granted = leased;
    return 0;
}

/* Hugepages this daemon takes on each kernel node, split between the logical nodes that
 * map to it. */
static uint32_t node_sharing[ZKM_MAX_NODES]; /* logical nodes on the same kernel node */

static void plan_hugepages(const struct zkm_config *cfg, uint64_t pages_per_slab,
                           uint64_t cap_slabs[ZKM_MAX_NODES], uint64_t *ret_pool)
{
    uint32_t sharing[ZKM_MAX_NODES + 64] = {0};
    int max_phys = 0;
    for (uint32_t i = 0; i < topo.n_nodes; i++) {
        int p = topo.node[i].phys;
        if (p >= 0 && p < (int)(sizeof(sharing) / sizeof(sharing[0]))) {
            sharing[p]++;
            if (p > max_phys)
                max_phys = p;
        }
    }
    for (int p = 0; p <= max_phys; p++) {
        if (!sharing[p])
            continue;
        if (cfg->hugepages_per_node) {
            long want = (long)(cfg->hugepages_per_node * sharing[p]);
            long got = zkm_hugepages_reserve(p, want);
            if (got < 0)
                zkm_fallback(ZKM_FB_RESERVE_DENIED,
                             "cannot reserve %ld hugepages on node %d: %s; using what the "
                             "admin reserved (as root: sysctl vm.nr_hugepages=N)",
                             want, p, strerror((int)-got));
            else if (got < want)
                zkm_fallback(ZKM_FB_RESERVE_SHORT,
                             "asked the kernel for %ld hugepages on node %d, it granted %ld "
                             "(memory fragmented or short; reserve at boot with hugepages=N)",
                             want, p, got);
        }
    }
    for (uint32_t i = 0; i < topo.n_nodes; i++) {
        long total = 0, free_pages = 0;
        int p = topo.node[i].phys;
        cap_slabs[i] = 0;
        if (zkm_hugepages_read(p, &total, &free_pages) != 0 || total <= 0)
            continue;
        *ret_pool += (uint64_t)total;
        if (free_pages <= 0)
            continue;
        uint64_t share = (uint64_t)free_pages / (sharing[p] ? sharing[p] : 1);
        if (cfg->max_hugepages_per_node && share > cfg->max_hugepages_per_node)
            share = cfg->max_hugepages_per_node;
        cap_slabs[i] = share / pages_per_slab;
        node_sharing[i] = sharing[p];
    }
}

int zkm_arenas_init(const struct zkm_config *cfg, const struct zkm_topology *t, char *err,
                    size_t errlen)
{
    uint64_t cap_slabs[ZKM_MAX_NODES] = {0}, pool = 0;

    topo = *t;
    n_arenas = t->n_nodes;
    slab_size = cfg->slab_pages * ZKM_HUGEPAGE_SIZE;
    budget_bytes = cfg->memory_budget_mb << 20;

    /* hugetlb when the admin reserved a pool (even if clients of a previous daemon hold
     * all of it now), and the kernel lets us use it */
    plan_hugepages(cfg, cfg->slab_pages, cap_slabs, &pool);
    uint64_t total = 0;
    for (uint32_t i = 0; i < n_arenas; i++)
        total += cap_slabs[i];
    if (pool > 0 && total > 0 && !zkm_hugepages_probe())
        pool = 0;
    /* a pool with nothing free is someone else's: serve from the fallback - unless a
     * previous daemon's hugetlb leases hold it (their clients come back to us) */
    if (pool > 0 && total == 0 && zkm_state_peek_backing(cfg->runtime_dir) != ZKM_BACKING_HUGETLB) {
        zkm_log(ZKM_LOG_WARNING, "the kernel has %llu hugepages but none is free",
                (unsigned long long)pool);
        pool = 0;
    }
    if (pool == 0) {
        if (cfg->require_hugepages) {
            snprintf(err, errlen,
                     "no free 2 MiB hugepages and require_hugepages = yes: reserve some "
                     "(sysctl vm.nr_hugepages=N, or hugepages_per_node in the config)");
            return -ENOMEM;
        }
        const char *thp = shmem_thp_mode();
        int thp_ok = strcmp(thp, "never") && strcmp(thp, "deny") && strcmp(thp, "unknown");
        backing = thp_ok ? ZKM_BACKING_SHMEM_THP : ZKM_BACKING_SHMEM_4K;
        zkm_fallback(ZKM_FB_NO_HUGEPAGES,
                     "NO HUGEPAGES: serving %llu MiB per node from shared %s memory "
                     "(shmem_enabled=%s); reserve hugepages (sysctl vm.nr_hugepages=N or "
                     "hugepages_per_node) for hugepage-backed slabs",
                     (unsigned long long)cfg->fallback_mb,
                     thp_ok ? "transparent-hugepage" : "4 KiB-page", thp);
        for (uint32_t i = 0; i < n_arenas; i++)
            cap_slabs[i] = (cfg->fallback_mb << 20) / slab_size;
    } else {
        backing = ZKM_BACKING_HUGETLB;
    }

    uint64_t max_slots = mem_total_bytes() / slab_size;
    if (max_slots > ZKM_HANDLE_INDEX_MASK)
        max_slots = ZKM_HANDLE_INDEX_MASK;
    struct zkm_state_layout layout;
    memset(&layout, 0, sizeof(layout));
    layout.slab_size = slab_size;
    layout.n_nodes = n_arenas;
    layout.backing = backing;
    layout.max_sessions = (uint32_t)(cfg->max_clients + 64);
    for (uint32_t i = 0; i < n_arenas; i++)
        layout.max_slots[i] = max_slots > cap_slabs[i] ? max_slots : cap_slabs[i];
    int err_state = zkm_state_open(cfg->runtime_dir, &layout, &recovering, err, errlen);
    if (err_state)
        return err_state;
    if (recovering) {
        recovery_deadline_ms = 0; /* set by zkm_arena_recovery_start() */
        zkm_log(ZKM_LOG_INFO, "found the lease table of a previous zkmemd: recovering its "
                              "leases as its clients reattach");
    }
    for (uint32_t i = 0; i < n_arenas; i++) {
        struct zkm_arena *a = &arenas[i];
        memset(a, 0, sizeof(*a));
        a->node = i;
        a->phys = topo.node[i].phys;
        a->simulated = topo.simulated;
        a->backing = backing;
        a->slab_size = slab_size;
        a->capacity = cap_slabs[i];
        a->max_slots = layout.max_slots[i];
        if (arena_alloc_tables(a) != 0) {
            snprintf(err, errlen, "out of memory for the arena tables of node %u", i);
            return -ENOMEM;
        }
        zkm_log(ZKM_LOG_INFO, "node %u: arena of %llu slabs x %llu MiB (%s) on kernel node %d", i,
                (unsigned long long)a->capacity, (unsigned long long)(slab_size >> 20),
                backing == ZKM_BACKING_HUGETLB ? "hugetlb" : "shmem fallback", a->phys);
    }
    return 0;
}

static void domain_free(struct zkm_domain *d)
{
    for (uint32_t i = 0; i < ZKM_MAX_NODES; i++) {
        free(d->cache[i].slot);
        free(d->cache[i].since);
    }
    for (uint32_t i = 0; i < n_arenas; i++) {
        if (d->map[i])
            munmap(d->map[i], arenas[i].max_slots * slab_size);
        if (d->memfd[i] >= 0)
            close(d->memfd[i]);
    }
    if (domtab[d->index] == d)
        domtab[d->index] = NULL;
    free(d);
}

/* A stop leaves every lease in place: clients keep using their memory, and the state
 * file tells the next daemon who holds what. Nothing is punched here. */
void zkm_arenas_fini(void)
{
    int leased = 0;
    /* domains first: unmapping a domain needs its arenas' sizes */
    for (uint32_t i = 0; i < ZKM_STATE_MAX_DOMAINS; i++)
        if (domtab[i])
            domain_free(domtab[i]);
    for (uint32_t i = 0; i < n_arenas; i++) {
        struct zkm_arena *a = &arenas[i];
        leased |= a->granted > 0;
        free(a->free_stack);
        memset(a, 0, sizeof(*a));
    }
    zkm_state_close(!leased);
    n_arenas = 0;
}

static void punch(struct zkm_domain *d, uint32_t node, uint64_t off, uint64_t len)
{
    if (fallocate(d->memfd[node], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) < 0)
        zkm_log(ZKM_LOG_ERR, "punching %llu bytes at %llu of node %u failed: %s",
                (unsigned long long)len, (unsigned long long)off, node, strerror(errno));
}

/* Map the domain's memfds in the daemon (placement checks, pre-faulting, punching). */
static int domain_map(struct zkm_domain *d)
{
    for (uint32_t i = 0; i < n_arenas; i++) {
        size_t size = arenas[i].max_slots * slab_size;
        void *m =
            mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, d->memfd[i], 0);
        if (m == MAP_FAILED)
            return -errno;
        d->map[i] = m;
        if (backing != ZKM_BACKING_HUGETLB)
            madvise(m, size, MADV_HUGEPAGE);
    }
    return 0;
}

static struct zkm_domain *domain_new(uint32_t index, uid_t uid)
{
    struct zkm_domain *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->uid = uid;
    d->index = index;
    for (uint32_t i = 0; i < ZKM_MAX_NODES; i++)
        d->memfd[i] = -1;
    return d;
}

static int domain_create(uid_t uid, struct zkm_domain **ret)
{
    struct zkm_state_domain *sd = zkm_state_domains();
    uint32_t index = 0;
    while (index < ZKM_STATE_MAX_DOMAINS && (sd[index].in_use || domtab[index]))
        index++;
    if (index == ZKM_STATE_MAX_DOMAINS) {
        zkm_log(ZKM_LOG_ERR, "too many domains (%d uids with memory)", ZKM_STATE_MAX_DOMAINS);
        return -EUSERS;
    }
    struct zkm_domain *d = domain_new(index, uid);
    if (!d)
        return -ENOMEM;
    for (uint32_t i = 0; i < n_arenas; i++) {
        char name[64];
        snprintf(name, sizeof(name), "zkmem-uid%u-node%u", (unsigned)uid, i);
        unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
        if (backing == ZKM_BACKING_HUGETLB)
            flags |= MFD_HUGETLB | MFD_HUGE_2MB;
        int fd = memfd_create(name, flags);
        if (fd < 0)
            goto fail_errno;
        d->memfd[i] = fd;
        off_t size = (off_t)(arenas[i].max_slots * slab_size);
        if (ftruncate(fd, size) < 0)
            goto fail_errno;
        /* The size is the daemon's: a client that shrank it would make every other
         * holder's mapping SIGBUS. F_SEAL_SEAL last, so no one adds seals after us. */
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
            goto fail_errno;
    }
    if (domain_map(d) != 0)
        goto fail_errno;
    struct zkm_state_domain rec = {.in_use = 1, .uid = (uint32_t)uid};
    for (uint32_t i = 0; i < n_arenas; i++) {
        struct stat st;
        if (fstat(d->memfd[i], &st) < 0)
            goto fail_errno;
        rec.ino[i] = st.st_ino;
        rec.dev[i] = st.st_dev;
    }
    sd[index] = rec;
    domtab[index] = d;
    *ret = d;
    return 0;

fail_errno : {
    int e = -errno;
    zkm_log(ZKM_LOG_ERR, "cannot create the memory of domain uid %u: %s", (unsigned)uid,
            strerror(-e));
    domain_free(d);
    return e;
}
}

int zkm_domain_get(uid_t uid, struct zkm_domain **ret)
{
    struct zkm_state_domain *sd = zkm_state_domains();
    for (uint32_t i = 0; i < ZKM_STATE_MAX_DOMAINS; i++) {
        if (domtab[i] && domtab[i]->uid == uid) {
            domtab[i]->sessions++;
            *ret = domtab[i];
            return 0;
        }
        /* the uid's memory from before a restart has not come back yet: new sessions
         * wait for it rather than split the domain in two */
        if (recovering && sd[i].in_use && sd[i].uid == uid)
            return -EAGAIN;
    }
    struct zkm_domain *d = NULL;
    int err = domain_create(uid, &d);
    if (err)
        return err;
    d->sessions = 1;
    *ret = d;
    return 0;
}

static void cache_drop_all(struct zkm_domain *d);

/* Close a domain's memfds once no session uses it and it holds no slab. */
static void domain_release_if_unused(struct zkm_domain *d)
{
    if (d->sessions > 0 || d->granted_slabs > 0)
        return;
    cache_drop_all(d);
    memset(&zkm_state_domains()[d->index], 0, sizeof(struct zkm_state_domain));
    domain_free(d);
}

void zkm_domain_put(struct zkm_domain *d)
{
    if (!d)
        return;
    d->sessions--;
    domain_release_if_unused(d);
}

/* Allocate the pages of one slot on the arena's kernel node. */
static int populate(struct zkm_arena *a, struct zkm_domain *d, uint64_t off)
{
    unsigned long mask[(ZKM_MAX_NODES + 64) / (8 * sizeof(unsigned long)) + 1] = {0};
    int bind = a->phys >= 0 && a->phys < (int)(8 * sizeof(mask));
    if (bind) {
        mask[a->phys / (8 * sizeof(unsigned long))] |= 1UL
                                                       << (a->phys % (8 * sizeof(unsigned long)));
        if (set_mempolicy(MPOL_BIND, mask, 8 * sizeof(mask)) < 0)
            bind = 0;
    }
    /* Both calls stop with EINTR when a signal - or io_uring task work, which the kernel
     * signals the same way - is pending; the pages got so far stay, so go on. */
    int err = 0, r;
    if (a->backing == ZKM_BACKING_HUGETLB) {
        while ((r = fallocate(d->memfd[a->node], 0, (off_t)off, (off_t)slab_size)) < 0 &&
               errno == EINTR)
            ;
        if (r < 0) {
            err = errno == ENOSPC ? -ENOMEM : -errno;
            punch(d, a->node, off, slab_size); /* fallocate keeps what it got */
        }
    } else {
        while ((r = madvise(d->map[a->node] + off, slab_size, MADV_POPULATE_WRITE)) < 0 &&
               errno == EINTR)
            ;
        if (r < 0) {
            err = (errno == EFAULT || errno == ENOMEM) ? -ENOMEM : -errno;
            punch(d, a->node, off, slab_size);
        }
    }
    if (bind)
        set_mempolicy(MPOL_DEFAULT, NULL, 0);
    if (err)
        return err;

    /* verify: where did each 2 MiB page land? */
    for (uint64_t p = 0; p < slab_size; p += ZKM_HUGEPAGE_SIZE) {
        int n = zkm_page_node(d->map[a->node] + off + p);
        if (n >= 0 && n != a->phys) {
            a->misplaced_pages += a->backing == ZKM_BACKING_HUGETLB ? 1 : ZKM_HUGEPAGE_SIZE / 4096;
            zkm_fallback(ZKM_FB_MISPLACED,
                         "a page for node %u landed on kernel node %d instead of %d "
                         "(counted in misplaced_pages)",
                         a->node, n, a->phys);
        }
    }
    return 0;
}

/* ---- the domains' slab caches ----------------------------------------------------------- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void zkm_arena_set_caching(int enable)
{
    caching = enable;
    if (!enable)
        zkm_arena_decay(UINT64_MAX);
}

static int cache_push(struct zkm_domain *d, uint32_t node, uint32_t index)
{
    struct zkm_slab_cache *c = &d->cache[node];
    if (!c->slot) {
        uint32_t cap = (uint32_t)arenas[node].max_slots;
        c->slot = calloc(cap, sizeof(*c->slot));
        c->since = calloc(cap, sizeof(*c->since));
        if (!c->slot || !c->since) {
            free(c->slot);
            free(c->since);
            c->slot = NULL;
            c->since = NULL;
            return -ENOMEM;
        }
        c->cap = cap;
    }
    if (c->n == c->cap)
        return -ENOSPC; /* cannot happen: a slot is cached at most once */
    uint32_t at = (c->front + c->n) % c->cap;
    c->slot[at] = index;
    c->since[at] = mono_ms();
    c->n++;
    return 0;
}

static uint32_t cache_pop_newest(struct zkm_slab_cache *c)
{
    c->n--;
    return c->slot[(c->front + c->n) % c->cap];
}

static uint32_t cache_pop_oldest(struct zkm_slab_cache *c)
{
    uint32_t index = c->slot[c->front];
    c->front = (c->front + 1) % c->cap;
    c->n--;
    return index;
}

/* A cached slot leaves its domain: pages back to the node pool, slot FREE. */
static void cached_release(struct zkm_arena *a, struct zkm_domain *d, uint32_t index)
{
    punch(d, a->node, (uint64_t)index * slab_size, slab_size);
    __atomic_store_n(&a->state[index], ZKM_SLOT_FREE, __ATOMIC_RELEASE);
    a->cached--;
    a->free_stack[a->n_free++] = index;
}

static void cache_drop_all(struct zkm_domain *d)
{
    for (uint32_t n = 0; n < n_arenas; n++)
        while (d->cache[n].n)
            cached_release(&arenas[n], d, cache_pop_oldest(&d->cache[n]));
}

uint64_t zkm_arena_decay(uint64_t older_than_ms)
{
    uint64_t freed = 0;
    for (uint32_t i = 0; i < ZKM_STATE_MAX_DOMAINS; i++) {
        struct zkm_domain *d = domtab[i];
        for (uint32_t n = 0; d && n < n_arenas; n++) {
            struct zkm_slab_cache *c = &d->cache[n];
            while (c->n && c->since[c->front] <= older_than_ms) {
                cached_release(&arenas[n], d, cache_pop_oldest(c));
                arenas[n].decayed_total++;
                freed++;
            }
        }
    }
    return freed;
}

/* The arena ran out of free slots: punch one cached slot of the domain that has been idle
 * longest on this node (the one whose oldest cached slot is oldest). 1 if one was freed. */
static int reclaim_for_pressure(struct zkm_arena *a)
{
    struct zkm_domain *idlest = NULL;
    uint64_t oldest = UINT64_MAX;
    for (uint32_t i = 0; i < ZKM_STATE_MAX_DOMAINS; i++) {
        struct zkm_domain *d = domtab[i];
        struct zkm_slab_cache *c = d ? &d->cache[a->node] : NULL;
        if (c && c->n && c->since[c->front] < oldest) {
            oldest = c->since[c->front];
            idlest = d;
        }
    }
    if (!idlest)
        return 0;
    cached_release(a, idlest, cache_pop_oldest(&idlest->cache[a->node]));
    a->pressure_reclaims_total++;
    return 1;
}

/* A free slot with fresh pages on the arena's node. */
static int take_fresh(struct zkm_arena *a, struct zkm_domain *d, uint32_t *ret_index)
{
    if (a->n_free == 0 && !reclaim_for_pressure(a))
        return -ENOMEM;
    uint32_t index = a->free_stack[--a->n_free];
    int err = populate(a, d, (uint64_t)index * slab_size);
    if (err) {
        a->free_stack[a->n_free++] = index;
        return err;
    }
    if (a->backing != ZKM_BACKING_HUGETLB)
        a->fallback_slabs++;
    *ret_index = index;
    return 0;
}

int zkm_arena_grant(struct zkm_arena *a, struct zkm_domain *d, uint32_t owner, uint8_t state,
                    uint32_t *ret_index, int *ret_zeroed)
{
    if (budget_bytes && (d->granted_slabs + 1) * slab_size > budget_bytes)
        return -EDQUOT;
    uint32_t index;
    int zeroed = 0;
    if (d->cache[a->node].n) {
        index = cache_pop_newest(&d->cache[a->node]);
        a->cached--;
        a->cache_reuses_total++;
    } else {
        int err = take_fresh(a, d, &index);
        if (err) {
            a->exhausted_total++;
            return err;
        }
        zeroed = 1;
    }
    /* record the lease before the client can see the slab (state file order) */
    a->owner[index] = owner;
    a->dom[index] = (uint16_t)d->index;
    __atomic_store_n(&a->state[index], state, __ATOMIC_RELEASE);
    a->granted++;
    if (state == ZKM_SLOT_PREGRANTED)
        a->pregranted++;
    a->grants_total++;
    d->granted_slabs++;
    *ret_index = index;
    if (ret_zeroed)
        *ret_zeroed = zeroed;
    return 0;
}

/* End a lease: the slot becomes FREE (the caller punched it, or cannot: its memfd is not
 * ours now) or CACHED (the caller queued it in its domain's cache). */
static void slot_release(struct zkm_arena *a, uint32_t index, int reclaimed, uint8_t to)
{
    if (a->state[index] == ZKM_SLOT_PREGRANTED)
        a->pregranted--;
    __atomic_store_n(&a->state[index], to, __ATOMIC_RELEASE);
    a->owner[index] = 0;
    a->granted--;
    if (to == ZKM_SLOT_FREE && index < a->capacity)
        a->free_stack[a->n_free++] = index;
    if (reclaimed)
        a->reclaimed_total++;
    else
        a->returns_total++;
}

void zkm_arena_free(struct zkm_arena *a, uint32_t index, int reclaimed)
{
    if (index >= a->max_slots || a->state[index] == ZKM_SLOT_FREE ||
        a->state[index] == ZKM_SLOT_CACHED)
        return;
    struct zkm_domain *d = domtab[a->dom[index]];
    if (d && caching && !reclaimed && index < a->capacity && cache_push(d, a->node, index) == 0) {
        slot_release(a, index, 0, ZKM_SLOT_CACHED);
        a->cached++;
        d->granted_slabs--;
        return;
    }
    if (d)
        punch(d, a->node, (uint64_t)index * slab_size, slab_size);
    slot_release(a, index, reclaimed, ZKM_SLOT_FREE);
    if (d) {
        d->granted_slabs--;
        domain_release_if_unused(d);
    }
}

uint64_t zkm_arena_reclaim_owner(uint32_t owner)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < n_arenas; i++) {
        struct zkm_arena *a = &arenas[i];
        for (uint64_t s = 0; s < a->max_slots && a->granted; s++) {
            if (a->state[s] != ZKM_SLOT_FREE && a->owner[s] == owner) {
                zkm_arena_free(a, (uint32_t)s, 1);
                n++;
            }
        }
    }
    return n;
}

/* Punch every range of domain d's memfd on node n that no slot of d (leased or cached)
 * covers; returns the slots d has there. */
static uint64_t punch_unowned(struct zkm_domain *d, uint32_t n)
{
    struct zkm_arena *a = &arenas[n];
    uint64_t run = 0, owned = 0;
    for (uint64_t s = 0; s <= a->max_slots; s++) {
        int mine = s < a->max_slots && a->state[s] != ZKM_SLOT_FREE && a->dom[s] == d->index;
        owned += mine;
        if (mine || s == a->max_slots) {
            if (s > run)
                punch(d, n, run * slab_size, (s - run) * slab_size);
            run = s + 1;
        }
    }
    return owned;
}

/*
 * A client maps its whole domain memfd, so it can touch offsets it holds no lease on and
 * make the kernel allocate pages there - hugepages no one accounts for. Compare each
 * memfd's allocated blocks with what its slots explain; where there is more, punch every
 * range outside the domain's slots. Returns the pages punched (counted per arena).
 */
uint64_t zkm_arena_audit(void)
{
    uint64_t stray_total = 0;
    for (uint32_t i = 0; i < ZKM_STATE_MAX_DOMAINS; i++) {
        struct zkm_domain *d = domtab[i];
        for (uint32_t n = 0; d && n < n_arenas; n++) {
            struct zkm_arena *a = &arenas[n];
            struct stat st;
            if (fstat(d->memfd[n], &st) < 0)
                continue;
            uint64_t slots = 0;
            for (uint64_t s = 0; s < a->max_slots; s++)
                slots += a->state[s] != ZKM_SLOT_FREE && a->dom[s] == d->index;
            uint64_t have = (uint64_t)st.st_blocks * 512, explained = slots * slab_size;
            if (have <= explained)
                continue;
            punch_unowned(d, n);
            uint64_t pages =
                (have - explained) / (a->backing == ZKM_BACKING_HUGETLB ? ZKM_HUGEPAGE_SIZE : 4096);
            a->stray_pages_total += pages;
            stray_total += pages;
            zkm_fallback(ZKM_FB_STRAY_PAGES,
                         "a client of uid %u touched %llu KiB of node %u memory outside its "
                         "leases: punched (counted in stray_pages_total)",
                         (unsigned)d->uid, (unsigned long long)((have - explained) >> 10), n);
        }
    }
    return stray_total;
}

/* Add slots [capacity, capacity + add) to the free stack (those that are free). */
static void grow_capacity(struct zkm_arena *a, uint64_t add)
{
    for (uint64_t i = 0; i < add; i++) {
        uint32_t idx = (uint32_t)(a->capacity + i);
        if (a->state[idx] == ZKM_SLOT_FREE)
            a->free_stack[a->n_free++] = idx;
    }
    a->capacity += add;
}

uint64_t zkm_arena_topup(void)
{
    if (backing != ZKM_BACKING_HUGETLB)
        return 0;
    uint64_t pps = slab_size / ZKM_HUGEPAGE_SIZE, added = 0;
    for (uint32_t n = 0; n < n_arenas; n++) {
        struct zkm_arena *a = &arenas[n];
        long total = 0, free_pages = 0;
        if (a->capacity >= a->cap_limit || zkm_hugepages_read(a->phys, &total, &free_pages) != 0)
            continue;
        /* a free slot has no pages: granting it takes them from the node's free pool */
        uint64_t share =
            (uint64_t)(free_pages > 0 ? free_pages : 0) / (node_sharing[n] ? node_sharing[n] : 1);
        uint64_t spare = share / pps > a->n_free ? share / pps - a->n_free : 0;
        uint64_t add = spare < a->cap_limit - a->capacity ? spare : a->cap_limit - a->capacity;
        if (!add)
            continue;
        uint64_t before = a->capacity;
        grow_capacity(a, add);
        added += add;
        zkm_log(ZKM_LOG_INFO,
                "node %u: %llu slabs an earlier daemon had cached are free again: "
                "capacity %llu -> %llu",
                n, (unsigned long long)add, (unsigned long long)before,
                (unsigned long long)a->capacity);
    }
    return added;
}

/* ---- recovery after a restart -------------------------------------------------------- */

int zkm_arena_recovering(void)
{
    return recovering;
}

void zkm_arena_recovery_start(uint64_t now_ms, uint64_t window_ms)
{
    recovery_deadline_ms = now_ms + window_ms;
}

/*
 * A client brings back domain `index`'s memfds (fds[n] for node n). Each must be the very
 * inode the state file names. The first to bring them gives the domain back to the daemon;
 * later ones only prove membership. On adoption every range of the memfds that no lease
 * of this domain covers is punched: pages a dying daemon allocated but never recorded,
 * and slabs of this domain's clients that did not survive.
 * Takes ownership of fds on success. 0 or -errno (-EPERM: not the recorded memfds).
 */
int zkm_domain_reattach(uint32_t index, uid_t uid, const int *fds, uint32_t n_fds,
                        struct zkm_domain **ret)
{
    if (index >= ZKM_STATE_MAX_DOMAINS || n_fds != n_arenas)
        return -EPERM;
    struct zkm_state_domain *sd = &zkm_state_domains()[index];
    if (!sd->in_use || sd->uid != (uint32_t)uid)
        return -EPERM;
    for (uint32_t i = 0; i < n_fds; i++) {
        struct stat st;
        if (fstat(fds[i], &st) < 0 || st.st_ino != sd->ino[i] || st.st_dev != sd->dev[i])
            return -EPERM;
    }
    struct zkm_domain *d = domtab[index];
    if (d) {
        for (uint32_t i = 0; i < n_fds; i++)
            close(fds[i]);
        d->sessions++;
        *ret = d;
        return 0;
    }
    d = domain_new(index, uid);
    if (!d)
        return -ENOMEM;
    for (uint32_t i = 0; i < n_fds; i++)
        d->memfd[i] = fds[i];
    int err = domain_map(d);
    if (err) {
        for (uint32_t i = 0; i < n_fds; i++)
            d->memfd[i] = -1; /* the caller still owns them on failure */
        domain_free(d);
        return err;
    }
    for (uint32_t n = 0; n < n_arenas; n++)
        d->granted_slabs += punch_unowned(d, n);
    domtab[index] = d;
    d->sessions = 1;
    *ret = d;
    return 0;
}

/* Move every slot of session `old_id` to `new_id`, held. Returns the count. */
uint64_t zkm_arena_restore_owner(uint32_t old_id, uint32_t new_id)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < n_arenas; i++) {
        struct zkm_arena *a = &arenas[i];
        for (uint64_t s = 0; s < a->max_slots; s++) {
            if (a->state[s] == ZKM_SLOT_FREE || a->owner[s] != old_id)
                continue;
            if (a->state[s] == ZKM_SLOT_PREGRANTED)
                a->pregranted--;
            a->owner[s] = new_id;
            a->state[s] = ZKM_SLOT_HELD;
            n++;
        }
    }
    return n;
}

/*
 * Release what no live client can claim any more: leases of `owner` (a session of the
 * previous daemon whose process is gone, or that did not come back in time). Its slots in
 * a domain the daemon has back are punched; the others are only forgotten - their pages
 * belong to memfds that die with their last holder.
 */
uint64_t zkm_arena_release_stale(uint32_t owner)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < n_arenas; i++) {
        struct zkm_arena *a = &arenas[i];
        for (uint64_t s = 0; s < a->max_slots; s++) {
            if (a->state[s] == ZKM_SLOT_FREE || a->owner[s] != owner)
                continue;
            zkm_arena_free(a, (uint32_t)s, 1);
            n++;
        }
    }
    if (!recovering)
        forget_unused_domains();
    return n;
}

/* A domain that did not come back is forgotten once no lease in the table uses it. */
static void forget_unused_domains(void)
{
    struct zkm_state_domain *sd = zkm_state_domains();
    struct zkm_state_session *t = zkm_state_sessions();
    for (uint32_t i = 0; i < ZKM_STATE_MAX_DOMAINS; i++) {
        if (!sd[i].in_use || domtab[i])
            continue;
        int used = 0;
        for (uint32_t k = 0; k < zkm_state_max_sessions() && !used; k++)
            used = t[k].id != 0 && t[k].domain == i;
        if (!used)
            memset(&sd[i], 0, sizeof(sd[i]));
    }
}

/* End of the recovery window: new sessions no longer wait for their uid's old domain. */
void zkm_arena_recovery_end(void)
{
    recovering = 0;
    forget_unused_domains();
}

uint64_t zkm_arena_recovery_deadline(void)
{
    return recovery_deadline_ms;
}

int zkm_arena_reserve(uint32_t node, long pages, char *err, size_t errlen)
{
    struct zkm_arena *a = zkm_arena_get(node);
    if (!a || pages <= 0) {
        snprintf(err, errlen, "no node %u or no pages asked", node);
        return -EINVAL;
    }
    if (backing != ZKM_BACKING_HUGETLB) {
        snprintf(err, errlen,
                 "the daemon runs on fallback memory; restart it after reserving "
                 "hugepages");
        return -EOPNOTSUPP;
    }
    long have = 0, total = 0;
    zkm_hugepages_read(a->phys, &total, &have);
    long got = zkm_hugepages_reserve(a->phys, have + pages);
    if (got < 0) {
        snprintf(err, errlen, "cannot reserve hugepages on kernel node %d: %s", a->phys,
                 strerror((int)-got));
        return (int)got;
    }
    uint64_t add = (uint64_t)(got - have > 0 ? got - have : 0) / (slab_size / ZKM_HUGEPAGE_SIZE);
    if (a->capacity + add > a->max_slots)
        add = a->max_slots - a->capacity;
    if (a->cap_limit < a->capacity + add)
        a->cap_limit = a->capacity + add; /* the admin asked for these */
    grow_capacity(a, add);
    snprintf(err, errlen, "node %u: +%llu slabs (capacity %llu)", node, (unsigned long long)add,
             (unsigned long long)a->capacity);
    return 0;
}

void zkm_arena_info(uint32_t node, struct zkm_arena_info *r)
{
    struct zkm_arena *a = &arenas[node];
    long total = 0, free_pages = 0;
    memset(r, 0, sizeof(*r));
    zkm_hugepages_read(a->phys, &total, &free_pages);
    r->node = a->node;
    r->phys_node = a->phys;
    r->backing = a->backing;
    r->simulated = (uint32_t)a->simulated;
    r->slab_size = a->slab_size;
    r->capacity_slabs = a->capacity;
    r->free_slabs = a->n_free;
    r->granted_slabs = a->granted;
    r->pregranted_slabs = a->pregranted;
    r->grants_total = a->grants_total;
    r->returns_total = a->returns_total;
    r->reclaimed_total = a->reclaimed_total;
    r->fallback_slabs = a->fallback_slabs;
    r->misplaced_pages = a->misplaced_pages;
    r->exhausted_total = a->exhausted_total;
    r->hugepages_free_sys = free_pages > 0 ? (uint64_t)free_pages : 0;
    r->cached_slabs = a->cached;
    r->cache_reuses_total = a->cache_reuses_total;
    r->decayed_total = a->decayed_total;
    r->pressure_reclaims_total = a->pressure_reclaims_total;
    r->remote_grants_total = a->remote_grants_total;
    r->stray_pages_total = a->stray_pages_total;
}
