// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * observer.bpf.c - the in-kernel half of zkmemd's observer: per-client counters of user page
 * faults (all, and inside zkmem memory), hugetlbfs events, scheduler switch-ins by logical
 * node and task migrations.
 *
 * Design
 *  1. Only tracepoints exist on the target kernel (no kprobes, fentry refused), so every
 *     program is a BTF tracepoint (tp_btf): typed arguments, attached through the raw
 *     tracepoint interface, which needs neither tracefs nor perf events.
 *  2. Two hash maps keyed by tgid (observer_abi.h): `stats` (counters; a tgid present here is
 *     tracked) and `ranges` (the [start, end) ranges of zkmem memory in that process).
 *     User space inserts the stats entry with BPF_NOEXIST so that updating the ranges later
 *     never resets counters. Every program does one lookup in `stats` and returns at once
 *     for untracked processes; only a tracked page fault does the second lookup.
 *  3. Counters are shared by all CPUs: __sync_fetch_and_add (BPF atomic add). Readers in
 *     user space see each counter atomically, the set of counters not as one snapshot.
 *  4. The cpu -> logical node table is read-only data filled by the loader before load, so
 *     the verifier sees a constant-size array indexed by a bounds-checked cpu number.
 *  5. hugetlbfs tracepoints vary across kernels; the loader turns off autoload for those
 *     this kernel does not have. They are attributed to the current process.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "observer_abi.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Filled by the loader before load: logical node of each cpu (>= OBS_MAX_NODES: unknown). */
const volatile __u8 cpu_node[OBS_MAX_CPUS] = {};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, OBS_MAX_TRACKED);
    __type(key, __u32);
    __type(value, struct obs_stats);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, OBS_MAX_TRACKED);
    __type(key, __u32);
    __type(value, struct obs_ranges);
} ranges SEC(".maps");

static __always_inline struct obs_stats *current_stats(__u32 *ret_tgid)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;

    *ret_tgid = tgid;
    return bpf_map_lookup_elem(&stats, &tgid);
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(on_page_fault_user, unsigned long address, struct pt_regs *regs,
             unsigned long error_code)
{
    __u32 tgid;
    struct obs_stats *s = current_stats(&tgid);
    if (!s)
        return 0;
    __sync_fetch_and_add(&s->page_faults_all, 1);

    struct obs_ranges *r = bpf_map_lookup_elem(&ranges, &tgid);
    if (!r)
        return 0;
    __u32 n = r->n;
    for (__u32 i = 0; i < OBS_MAX_NODES; i++) {
        if (i >= n)
            break;
        if (address >= r->start[i] && address < r->end[i]) {
            __sync_fetch_and_add(&s->page_faults, 1);
            break;
        }
    }
    return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
    __u32 tgid = next->tgid;
    struct obs_stats *s = bpf_map_lookup_elem(&stats, &tgid);
    if (!s)
        return 0;
    __u32 cpu = bpf_get_smp_processor_id();
    if (cpu >= OBS_MAX_CPUS)
        return 0;
    __u32 node = cpu_node[cpu];
    if (node >= OBS_MAX_NODES)
        return 0;
    __sync_fetch_and_add(&s->runs_on_node[node], 1);
    return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(on_sched_migrate_task, struct task_struct *p, int dest_cpu)
{
    __u32 tgid = p->tgid;
    struct obs_stats *s = bpf_map_lookup_elem(&stats, &tgid);
    if (s)
        __sync_fetch_and_add(&s->migrations, 1);
    return 0;
}

static __always_inline int count_hugetlb(void)
{
    __u32 tgid;
    struct obs_stats *s = current_stats(&tgid);
    if (s)
        __sync_fetch_and_add(&s->hugetlb_events, 1);
    return 0;
}

/* One program per hugetlbfs tracepoint; the names after "on_" are the tracepoint names. */
SEC("tp_btf/hugetlbfs_alloc_inode")
int on_hugetlbfs_alloc_inode(void *ctx)
{
    return count_hugetlb();
}

SEC("tp_btf/hugetlbfs_evict_inode")
int on_hugetlbfs_evict_inode(void *ctx)
{
    return count_hugetlb();
}

SEC("tp_btf/hugetlbfs_free_inode")
int on_hugetlbfs_free_inode(void *ctx)
{
    return count_hugetlb();
}

SEC("tp_btf/hugetlbfs_setattr")
int on_hugetlbfs_setattr(void *ctx)
{
    return count_hugetlb();
}

SEC("tp_btf/hugetlbfs_fallocate")
int on_hugetlbfs_fallocate(void *ctx)
{
    return count_hugetlb();
}
