/* SPDX-License-Identifier: MIT */
/*
 * observer_abi.h - the layout shared by the eBPF observer (observer.bpf.c) and its loader
 * (daemon/observer.c): map keys and values and the compile-time sizes.
 *
 * Included by both sides: the BPF side gets __u32/__u64 from vmlinux.h, the user side from
 * <linux/types.h>. Only fixed-width types, no padding holes, so the two compilers agree.
 */
#ifndef ZKM_OBSERVER_ABI_H
#define ZKM_OBSERVER_ABI_H

#define OBS_MAX_NODES   8     /* == ZKM_MAX_NODES (checked in observer.c) */
#define OBS_MAX_CPUS    1024  /* == ZKM_MAX_CPUS (checked in observer.c) */
#define OBS_MAX_TRACKED 16384 /* processes watched at once (both maps) */

/* ranges map, key: tgid. Where the process's zkmem memory is; written only by user space. */
struct obs_ranges {
    __u64 start[OBS_MAX_NODES]; /* [start, end) */
    __u64 end[OBS_MAX_NODES];
    __u32 n;
    __u32 pad;
};

/* stats map, key: tgid. Presence in this map is what "tracked" means; counters are
 * incremented by the programs with atomic adds, read by user space. */
struct obs_stats {
    __u64 page_faults;
    __u64 page_faults_all;
    __u64 hugetlb_events;
    __u64 migrations;
    __u64 runs_on_node[OBS_MAX_NODES];
};

#endif
