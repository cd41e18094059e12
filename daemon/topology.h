/* SPDX-License-Identifier: MIT */
/*
 * topology.h - the machine's NUMA nodes as the daemon serves them.
 *
 * Logical nodes (0..n_nodes-1) are what clients, the protocol and zkmemctl see; each maps
 * to a physical (kernel) node that set_mempolicy/mbind may be given. With a simulated
 * topology (HWLOC_SYNTHETIC, HWLOC_XMLFILE, or any hwloc topology that is not this system)
 * the logical nodes are hwloc's, the physical ones are real nodes with memory (round robin)
 * and the real CPUs are spread over the logical nodes, so that placement falls back to the
 * real machine and every logical node is reachable from some CPU.
 */
#ifndef ZKM_TOPOLOGY_H
#define ZKM_TOPOLOGY_H

#include <stddef.h>
#include <stdint.h>

#include "zkm_proto.h" /* ZKM_MAX_NODES, ZKM_MAX_CPUS */

struct zkm_topo_node {
    uint32_t logical;                 /* 0..n_nodes-1 */
    int phys;                         /* kernel node for set_mempolicy/mbind; never simulated */
    uint32_t n_cpus;                  /* real CPUs mapped to this logical node */
    char cpulist[128];                /* e.g. "0-1" (real CPU ids) */
    uint32_t distance[ZKM_MAX_NODES]; /* hwloc/ACPI SLIT-style, 10 = local */
};

struct zkm_topology {
    uint32_t n_nodes;
    int simulated;                  /* HWLOC_SYNTHETIC / HWLOC_XMLFILE / not this system */
    uint32_t n_cpus;                /* real possible CPUs covered by cpu_node */
    uint8_t cpu_node[ZKM_MAX_CPUS]; /* real cpu id -> logical node */
    struct zkm_topo_node node[ZKM_MAX_NODES];
    char source[64];          /* "this system", "synthetic: pack:2 ...", "xml: /path" */
    uint32_t n_cpus_possible; /* the kernel's possible CPUs (> n_cpus: ids beyond
                                 ZKM_MAX_CPUS are not in cpu_node) */
    int distances_default;    /* 1: hwloc had no NUMA distances, 10/20 assumed */
};

/*
 * Load with hwloc (which reads HWLOC_SYNTHETIC / HWLOC_XMLFILE from the environment
 * itself; hwloc_topology_is_thissystem() tells whether the result is this machine). Fills
 * the nodes (more than ZKM_MAX_NODES is an error), distances (10 local / 20 remote when
 * hwloc has none) and the CPU map. `err` gets one line on failure. 0 or -errno; *t is
 * written only on success.
 */
int zkm_topology_load(struct zkm_topology *t, char *err, size_t errlen);

/* Nodes by distance from `from` (itself first, ties by logical number): fallback order.
 * out[0..n_nodes-1] is written. */
void zkm_topology_order(const struct zkm_topology *t, uint32_t from, uint32_t out[ZKM_MAX_NODES]);

/* One paragraph for the log. Returns the length snprintf would have written, or -EINVAL. */
int zkm_topology_describe(const struct zkm_topology *t, char *buf, size_t len);

#endif
