/* SPDX-License-Identifier: MIT */
/*
 * topology.c - NUMA nodes, their CPUs and distances, from hwloc; the logical -> kernel map.
 *
 * 1. hwloc is the only source of nodes and distances. It reads HWLOC_SYNTHETIC (wins) or
 *    HWLOC_XMLFILE itself at load time; we only look at those variables to name the source.
 *    hwloc_topology_is_thissystem() == 0 makes the topology "simulated".
 * 2. Real topology: logical node i is hwloc's NUMANode with logical index i, its kernel node
 *    is the object's os_index, its CPUs are the PUs of its cpuset. Possible CPUs that hwloc
 *    does not place (offline, disallowed) go to the node libnuma names for them, else 0.
 * 3. Simulated topology: none of hwloc's node or CPU numbers exist in the kernel, so they
 *    must never reach set_mempolicy/mbind (EINVAL). Each logical node gets a real kernel node
 *    that has memory (round robin over them), and the real possible CPUs are cut into
 *    contiguous blocks, one per logical node. With fewer CPUs than nodes, node k borrows CPU
 *    k mod n_cpus (so every node has a CPU to run on) and each CPU maps to the lowest node
 *    that holds it.
 * 4. Distances: the first NUMA latency matrix hwloc has (ACPI SLIT on real machines, the
 *    XML's distances2 element in tests), by logical index; 10 local / 20 remote when none.
 *
 * Loading is done once at start (and on reload) by one thread; the result is a plain value
 * that readers copy or share read-only. No locks.
 */
#include "topology.h"

#include <errno.h>
#include <hwloc.h>
#include <numa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_LOCAL  10
#define DEFAULT_REMOTE 20

/* The kernel's possible CPUs: highest id in /sys/devices/system/cpu/possible, plus one. */
static uint32_t possible_cpus(void)
{
    char buf[256];
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* "0-1", "0,2-5", "0": the last number is the highest id */
        long last = -1;
        for (char *p = buf; *p;) {
            if (*p >= '0' && *p <= '9') {
                char *end;
                last = strtol(p, &end, 10);
                p = end;
            } else {
                p++;
            }
        }
        if (last >= 0)
            return (uint32_t)last + 1;
    }
    long n = sysconf(_SC_NPROCESSORS_CONF);
    return n > 0 ? (uint32_t)n : 1;
}

/* Real kernel nodes that have memory this process may use, ascending. Returns the count
 * (at least 1: node 0 when libnuma says NUMA is unavailable). */
static int real_memory_nodes(int out[], int max)
{
    int n = 0;
    if (numa_available() >= 0) {
        int maxnode = numa_max_node();
        for (int i = 0; i <= maxnode && n < max; i++) {
            if (!numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)i))
                continue;
            long long freemem;
            if (numa_node_size64(i, &freemem) <= 0)
                continue;
            out[n++] = i;
        }
    }
    if (n == 0)
        out[n++] = 0;
    return n;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void name_source(struct zkm_topology *t, hwloc_topology_t topo)
{
    const char *syn = getenv("HWLOC_SYNTHETIC");
    const char *xml = getenv("HWLOC_XMLFILE");
    if (syn && *syn) {
        snprintf(t->source, sizeof t->source, "synthetic: %s", syn);
    } else if (xml && *xml) {
        snprintf(t->source, sizeof t->source, "xml: %s", xml);
    } else if (t->simulated) {
        const char *backend = hwloc_obj_get_info_by_name(hwloc_get_root_obj(topo), "Backend");
        snprintf(t->source, sizeof t->source, "not this system (%s)", backend ? backend : "?");
    } else {
        snprintf(t->source, sizeof t->source, "this system");
    }
}

static void load_distances(struct zkm_topology *t, hwloc_topology_t topo)
{
    for (uint32_t i = 0; i < t->n_nodes; i++)
        for (uint32_t j = 0; j < t->n_nodes; j++)
            t->node[i].distance[j] = i == j ? DEFAULT_LOCAL : DEFAULT_REMOTE;
    t->distances_default = 1;

    unsigned nr = 1;
    struct hwloc_distances_s *d = NULL;
    if (hwloc_distances_get_by_type(topo, HWLOC_OBJ_NUMANODE, &nr, &d,
                                    HWLOC_DISTANCES_KIND_MEANS_LATENCY, 0) < 0 ||
        nr == 0 || !d)
        return;
    for (unsigned i = 0; i < d->nbobjs; i++) {
        for (unsigned j = 0; j < d->nbobjs; j++) {
            unsigned li = d->objs[i]->logical_index, lj = d->objs[j]->logical_index;
            if (li >= t->n_nodes || lj >= t->n_nodes)
                continue;
            hwloc_uint64_t v = d->values[i * d->nbobjs + j];
            t->node[li].distance[lj] = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        }
    }
    t->distances_default = 0;
    hwloc_distances_release(topo, d);
}

/* Point 2 of the header comment. */
static int map_real(struct zkm_topology *t, hwloc_topology_t topo, hwloc_bitmap_t cpus[])
{
    uint8_t covered[ZKM_MAX_CPUS] = {0};
    for (uint32_t i = 0; i < t->n_nodes; i++) {
        hwloc_obj_t obj = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i);
        t->node[i].phys = (int)obj->os_index;
        if (!obj->cpuset)
            continue;
        int id;
        hwloc_bitmap_foreach_begin(id, obj->cpuset)
        {
            hwloc_bitmap_set(cpus[i], (unsigned)id);
            if ((uint32_t)id < t->n_cpus && !covered[id]) {
                t->cpu_node[id] = (uint8_t)i;
                covered[id] = 1;
            }
        }
        hwloc_bitmap_foreach_end();
    }
    int have_numa = numa_available() >= 0;
    for (uint32_t c = 0; c < t->n_cpus; c++) {
        if (covered[c])
            continue;
        int phys = have_numa ? numa_node_of_cpu((int)c) : -1;
        t->cpu_node[c] = 0;
        for (uint32_t i = 0; i < t->n_nodes; i++) {
            if (phys >= 0 && t->node[i].phys == phys) {
                t->cpu_node[c] = (uint8_t)i;
                break;
            }
        }
    }
    return 0;
}

/* Point 3 of the header comment. */
static void map_simulated(struct zkm_topology *t, hwloc_bitmap_t cpus[])
{
    int mem[ZKM_MAX_NODES];
    int nmem = real_memory_nodes(mem, ZKM_MAX_NODES);
    uint32_t n = t->n_nodes, nc = t->n_cpus;

    for (uint32_t i = 0; i < n; i++)
        t->node[i].phys = mem[i % (uint32_t)nmem];

    if (nc >= n) {
        for (uint32_t i = 0; i < n; i++) {
            uint32_t lo = (uint32_t)((uint64_t)i * nc / n);
            uint32_t hi = (uint32_t)((uint64_t)(i + 1) * nc / n);
            for (uint32_t c = lo; c < hi; c++) {
                t->cpu_node[c] = (uint8_t)i;
                hwloc_bitmap_set(cpus[i], c);
            }
        }
    } else {
        for (uint32_t c = 0; c < nc; c++)
            t->cpu_node[c] = (uint8_t)c;
        for (uint32_t i = 0; i < n; i++)
            hwloc_bitmap_set(cpus[i], i % nc);
    }
}

int zkm_topology_load(struct zkm_topology *ret, char *err, size_t errlen)
{
    struct zkm_topology t;
    hwloc_topology_t topo;
    hwloc_bitmap_t cpus[ZKM_MAX_NODES] = {0};
    int r = 0;

    memset(&t, 0, sizeof t);
    if (hwloc_topology_init(&topo) < 0) {
        r = -errno ?: -ENOMEM;
        set_err(err, errlen, "hwloc: cannot initialise a topology: %s", strerror(-r));
        return r;
    }
    /* hwloc reads the variables itself but silently falls back to this system when they
     * are invalid: give them to it explicitly so a bad one is an error, not a surprise. */
    const char *syn = getenv("HWLOC_SYNTHETIC"), *xml = getenv("HWLOC_XMLFILE");
    errno = 0;
    if ((syn && *syn && hwloc_topology_set_synthetic(topo, syn) < 0) ||
        (!(syn && *syn) && xml && *xml && hwloc_topology_set_xml(topo, xml) < 0) ||
        hwloc_topology_load(topo) < 0) {
        r = errno ? -errno : -EINVAL;
        if (syn && *syn)
            set_err(err, errlen,
                    "hwloc: cannot load HWLOC_SYNTHETIC=\"%s\": %s (unset it or fix it)", syn,
                    strerror(-r));
        else if (xml && *xml)
            set_err(err, errlen, "hwloc: cannot load HWLOC_XMLFILE=%s: %s (unset it or fix it)",
                    xml, strerror(-r));
        else
            set_err(err, errlen, "hwloc: cannot load this system's topology: %s", strerror(-r));
        goto out;
    }

    int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    if (n <= 0) {
        r = -ENODEV;
        set_err(err, errlen, "hwloc: the topology has no NUMA node");
        goto out;
    }
    if (n > ZKM_MAX_NODES) {
        r = -E2BIG;
        set_err(err, errlen,
                "hwloc: the topology has %d NUMA nodes, zkmemd serves at most %d (ZKM_MAX_NODES)",
                n, ZKM_MAX_NODES);
        goto out;
    }
    t.n_nodes = (uint32_t)n;
    /* even with HWLOC_THISSYSTEM=1 a synthetic or XML topology's numbers are not the kernel's */
    t.simulated = (syn && *syn) || (xml && *xml) || !hwloc_topology_is_thissystem(topo);
    name_source(&t, topo);

    t.n_cpus_possible = possible_cpus();
    t.n_cpus = t.n_cpus_possible < ZKM_MAX_CPUS ? t.n_cpus_possible : ZKM_MAX_CPUS;

    for (uint32_t i = 0; i < t.n_nodes; i++) {
        t.node[i].logical = i;
        cpus[i] = hwloc_bitmap_alloc();
        if (!cpus[i]) {
            r = -ENOMEM;
            set_err(err, errlen, "hwloc: out of memory");
            goto out;
        }
    }
    if (t.simulated)
        map_simulated(&t, cpus);
    else
        map_real(&t, topo, cpus);
    for (uint32_t i = 0; i < t.n_nodes; i++) {
        t.node[i].n_cpus = (uint32_t)hwloc_bitmap_weight(cpus[i]);
        if (hwloc_bitmap_iszero(cpus[i]))
            snprintf(t.node[i].cpulist, sizeof t.node[i].cpulist, "none");
        else
            hwloc_bitmap_list_snprintf(t.node[i].cpulist, sizeof t.node[i].cpulist, cpus[i]);
    }
    load_distances(&t, topo);
    *ret = t;

out:
    for (uint32_t i = 0; i < ZKM_MAX_NODES; i++)
        if (cpus[i])
            hwloc_bitmap_free(cpus[i]);
    hwloc_topology_destroy(topo);
    return r;
}

void zkm_topology_order(const struct zkm_topology *t, uint32_t from, uint32_t out[ZKM_MAX_NODES])
{
    uint32_t n = t->n_nodes;
    if (from >= n)
        from = 0;
    /* insertion sort of at most ZKM_MAX_NODES entries; `from` first, then by distance, then
     * by logical number (stable) */
    uint32_t k = 0;
    out[k++] = from;
    for (uint32_t i = 0; i < n; i++) {
        if (i == from)
            continue;
        uint32_t d = t->node[from].distance[i];
        uint32_t j = k;
        while (j > 1 && t->node[from].distance[out[j - 1]] > d) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = i;
        k++;
    }
}

struct sbuf {
    char *p;
    size_t len, used; /* used may exceed len: snprintf semantics */
};

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->used < b->len ? b->len - b->used : 0;
    int w = vsnprintf(room ? b->p + b->used : NULL, room, fmt, ap);
    va_end(ap);
    if (w > 0)
        b->used += (size_t)w;
}

int zkm_topology_describe(const struct zkm_topology *t, char *buf, size_t len)
{
    if (!t || (!buf && len))
        return -EINVAL;
    struct sbuf b = {buf, len, 0};
    if (len)
        buf[0] = '\0';

    sb_printf(&b, "%u node%s (", t->n_nodes, t->n_nodes == 1 ? "" : "s");
    if (t->simulated) {
        /* the distinct kernel nodes placement falls back to */
        sb_printf(&b, "simulated, %s; placement falls back to kernel node", t->source);
        int seen[ZKM_MAX_NODES], nseen = 0;
        for (uint32_t i = 0; i < t->n_nodes; i++) {
            int dup = 0;
            for (int j = 0; j < nseen; j++)
                dup |= seen[j] == t->node[i].phys;
            if (!dup)
                seen[nseen++] = t->node[i].phys;
        }
        sb_printf(&b, nseen > 1 ? "s" : "");
        for (int j = 0; j < nseen; j++)
            sb_printf(&b, "%s%d", j ? "," : " ", seen[j]);
        sb_printf(&b, ")");
    } else {
        sb_printf(&b, "%s)", t->source);
    }
    sb_printf(&b, ":");
    for (uint32_t i = 0; i < t->n_nodes; i++) {
        const struct zkm_topo_node *nd = &t->node[i];
        sb_printf(&b, " node %u: cpus %s -> kernel node %d;", i, nd->cpulist, nd->phys);
    }
    sb_printf(&b, " distances%s",
              t->distances_default && t->n_nodes > 1 ? " (none from hwloc, assumed)" : "");
    for (uint32_t i = 0; i < t->n_nodes; i++) {
        sb_printf(&b, i ? " /" : "");
        for (uint32_t j = 0; j < t->n_nodes; j++)
            sb_printf(&b, " %u", t->node[i].distance[j]);
    }
    sb_printf(&b, "; %u CPU%s mapped", t->n_cpus, t->n_cpus == 1 ? "" : "s");
    if (t->n_cpus_possible > t->n_cpus)
        sb_printf(&b, " (%u possible: CPUs from %u on are not mapped, their clients get node 0)",
                  t->n_cpus_possible, t->n_cpus);
    sb_printf(&b, ".");
    return b.used > INT32_MAX ? INT32_MAX : (int)b.used;
}
