/* SPDX-License-Identifier: MIT */
/*
 * observer.h - zkmemd's eBPF observer: per-client counters gathered in the kernel from
 * tracepoints (user page faults inside zkmem memory, hugetlbfs events, scheduler switch-ins
 * by logical node, task migrations). See daemon/bpf/observer.bpf.c for the design.
 *
 * Built with -DZKM_HAVE_BPF=1 when clang, bpftool and libbpf were found (meson -Dbpf);
 * otherwise every function is a stub: init returns -EOPNOTSUPP, the others -EOPNOTSUPP or
 * nothing. zkm_observer_init/fini are not thread-safe (call them from the main thread);
 * track/untrack/read are single map syscalls and may be called from any thread between
 * them. Needs root (or CAP_BPF + CAP_PERFMON) and kernel BTF; tracefs is not needed.
 */
#ifndef ZKM_OBSERVER_H
#define ZKM_OBSERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "zkm_proto.h" /* ZKM_MAX_NODES */

struct zkm_observer_stats {
    /* user page faults with the address inside one of the process's zkmem ranges */
    uint64_t page_faults;
    /* all user page faults of the process */
    uint64_t page_faults_all;
    /* hugetlbfs tracepoint events attributed to the process (if any fire for it) */
    uint64_t hugetlb_events;
    /* sched_switch-in of the process's threads, by logical node of the CPU */
    uint64_t runs_on_node[ZKM_MAX_NODES];
    /* sched_migrate_task of its threads */
    uint64_t migrations;
};

/* Load and attach (CO-RE skeleton). cpu_node: real cpu -> logical node map (from topology),
   n_cpus entries (at most ZKM_MAX_CPUS; NULL: every cpu is node 0; cpus past n_cpus or
   mapped to a node >= ZKM_MAX_NODES are not counted in runs_on_node).
   0, or -errno with one line in err saying why (not root/CAP_BPF, no BTF, a tracepoint missing,
   verifier said...). On success err holds one line saying what was attached, for the log.
   -EALREADY when already loaded. */
int zkm_observer_init(const uint8_t *cpu_node, uint32_t n_cpus, char *err, size_t errlen);
void zkm_observer_fini(void);
int zkm_observer_loaded(void);
/* Start/stop watching a client process (tgid). ranges: up to ZKM_MAX_NODES [start, end)
   address ranges of zkmem memory in that process (may be updated later by calling again;
   counters are kept). 0 or -errno (-ENOSPC when the map is full, -EINVAL for bad ranges,
   -EOPNOTSUPP when not loaded). */
int zkm_observer_track(pid_t tgid, const uint64_t *range_start, const uint64_t *range_end,
                       uint32_t n_ranges);
void zkm_observer_untrack(pid_t tgid);
/* 0 and *ret filled, -ENOENT when tgid is not tracked, -EOPNOTSUPP when not loaded. */
int zkm_observer_read(pid_t tgid, struct zkm_observer_stats *ret);

#endif
