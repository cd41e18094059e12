/* SPDX-License-Identifier: MIT */
/*
 * observer.c - loads zkmemd's eBPF observer (daemon/bpf/observer.bpf.c) through its
 * bpftool-generated CO-RE skeleton, and reads and writes its two maps.
 *
 * State (file-static, owned by the main thread between init and fini):
 *   skel      the skeleton; NULL when not loaded
 *   stats_fd  map tgid -> struct obs_stats; presence means "tracked"
 *   ranges_fd map tgid -> struct obs_ranges
 * Tracking order: ranges first, then stats with BPF_NOEXIST, so a fault in a tracked process
 * always finds its ranges and re-tracking (new ranges) keeps the counters. Untracking removes
 * stats first, then ranges. Both maps have the same capacity and are kept in step, so only
 * the stats insert can find the map full (E2BIG from the kernel, -ENOSPC here).
 *
 * libbpf's messages are captured (the daemon's library code never prints): the first warning
 * and, when the verifier refused a program, the last line of its log, go into `err`.
 */
#include "observer.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(ZKM_HAVE_BPF) && ZKM_HAVE_BPF

#include <stdarg.h>
#include <time.h>
#include <unistd.h>

#include <linux/types.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "bpf/observer_abi.h"
#include "observer.skel.h"

_Static_assert(OBS_MAX_NODES == ZKM_MAX_NODES, "observer_abi.h and zkm_proto.h disagree");
_Static_assert(OBS_MAX_CPUS == ZKM_MAX_CPUS, "observer_abi.h and zkm_proto.h disagree");
_Static_assert(sizeof(((struct zkm_observer_stats *)0)->runs_on_node) ==
                   sizeof(((struct obs_stats *)0)->runs_on_node),
               "runs_on_node sizes differ");

static struct observer_bpf *skel;
static int stats_fd = -1;
static int ranges_fd = -1;

/* ---- libbpf message capture (init only) ---- */

static char libbpf_first[200];    /* first warning libbpf printed */
static char libbpf_verifier[200]; /* last line of a verifier log */

static void copy_line(char *dst, size_t len, const char *src, size_t n)
{
    while (n && (src[n - 1] == '\n' || src[n - 1] == ' '))
        n--;
    if (n >= len)
        n = len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int capture_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_DEBUG)
        return 0;
    char buf[4096];
    vsnprintf(buf, sizeof buf, fmt, ap);
    const char *end = strstr(buf, "-- END PROG LOAD LOG --");
    if (end) {
        /* the verifier's verdict is the last non-empty line before the END marker */
        const char *e = end;
        while (e > buf && (e[-1] == '\n' || e[-1] == ' '))
            e--;
        const char *b = e;
        while (b > buf && b[-1] != '\n')
            b--;
        if (e > b)
            copy_line(libbpf_verifier, sizeof libbpf_verifier, b, (size_t)(e - b));
        return 0;
    }
    if (!libbpf_first[0]) {
        const char *nl = strchr(buf, '\n');
        copy_line(libbpf_first, sizeof libbpf_first, buf, nl ? (size_t)(nl - buf) : strlen(buf));
    }
    return 0;
}

static void say(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *const required_tps[] = {"page_fault_user", "sched_switch", "sched_migrate_task"};
static const char *const hugetlbfs_tps[] = {"hugetlbfs_alloc_inode", "hugetlbfs_evict_inode",
                                            "hugetlbfs_free_inode", "hugetlbfs_setattr",
                                            "hugetlbfs_fallocate"};

/* A BTF tracepoint "x" exists when vmlinux BTF has the typedef btf_trace_x. */
static int has_tracepoint(const struct btf *vmlinux, const char *tp)
{
    char name[96];
    snprintf(name, sizeof name, "btf_trace_%s", tp);
    return btf__find_by_name_kind(vmlinux, name, BTF_KIND_TYPEDEF) >= 0;
}

static struct bpf_program *prog_for(const char *tp)
{
    char name[96];
    snprintf(name, sizeof name, "on_%s", tp);
    return bpf_object__find_program_by_name(skel->obj, name);
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static const char *why_refused(int e)
{
    if ((e == -EPERM || e == -EACCES) && geteuid() != 0)
        return "not root (needs root, or CAP_BPF and CAP_PERFMON)";
    if (libbpf_verifier[0])
        return libbpf_verifier;
    if (libbpf_first[0])
        return libbpf_first;
    return strerror(-e);
}

int zkm_observer_init(const uint8_t *cpu_node, uint32_t n_cpus, char *err, size_t errlen)
{
    if (skel) {
        say(err, errlen, "observer already loaded");
        return -EALREADY;
    }
    if (n_cpus > OBS_MAX_CPUS) {
        say(err, errlen, "observer: %u cpus, at most %u supported", n_cpus, OBS_MAX_CPUS);
        return -EINVAL;
    }
    if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
        int e = -errno;
        say(err, errlen,
            "observer: kernel BTF /sys/kernel/btf/vmlinux unreadable (%s); "
            "needs CONFIG_DEBUG_INFO_BTF and root",
            strerror(-e));
        return e;
    }

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    libbpf_first[0] = libbpf_verifier[0] = '\0';
    libbpf_print_fn_t old_print = libbpf_set_print(capture_print);
    int ret;
    unsigned n_hugetlb = 0;
    const char *missing = NULL;

    struct btf *vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) {
        ret = -errno;
        say(err, errlen, "observer: cannot parse kernel BTF: %s", strerror(-ret));
        goto out_print;
    }
    for (size_t i = 0; i < sizeof required_tps / sizeof *required_tps; i++)
        if (!has_tracepoint(vmlinux, required_tps[i]))
            missing = required_tps[i];

    skel = observer_bpf__open();
    if (!skel) {
        ret = -errno;
        say(err, errlen, "observer: cannot open the BPF object: %s", why_refused(ret));
        btf__free(vmlinux);
        goto out_print;
    }
    if (missing) {
        ret = -ENOENT;
        say(err, errlen, "observer: this kernel has no tracepoint %s", missing);
        btf__free(vmlinux);
        goto out_destroy;
    }
    for (size_t i = 0; i < sizeof hugetlbfs_tps / sizeof *hugetlbfs_tps; i++) {
        int have = has_tracepoint(vmlinux, hugetlbfs_tps[i]);
        struct bpf_program *p = prog_for(hugetlbfs_tps[i]);
        if (p)
            bpf_program__set_autoload(p, have);
        n_hugetlb += have && p;
    }
    btf__free(vmlinux);

    for (uint32_t c = 0; c < OBS_MAX_CPUS; c++)
        skel->rodata->cpu_node[c] = !cpu_node ? 0 : c < n_cpus ? cpu_node[c] : 0xff;

    ret = observer_bpf__load(skel);
    if (ret < 0) {
        say(err, errlen, "observer: kernel refused the BPF programs: %s", why_refused(ret));
        goto out_destroy;
    }
    ret = observer_bpf__attach(skel);
    if (ret < 0) {
        say(err, errlen, "observer: cannot attach to tracepoints: %s", why_refused(ret));
        goto out_destroy;
    }
    stats_fd = bpf_map__fd(skel->maps.stats);
    ranges_fd = bpf_map__fd(skel->maps.ranges);
    say(err, errlen,
        "observer: attached (tp_btf) page_fault_user, sched_switch, sched_migrate_task and "
        "%u/%zu hugetlbfs tracepoints in %.1f ms",
        n_hugetlb, sizeof hugetlbfs_tps / sizeof *hugetlbfs_tps, ms_since(&t0));
    libbpf_set_print(old_print);
    return 0;

out_destroy:
    observer_bpf__destroy(skel);
    skel = NULL;
out_print:
    libbpf_set_print(old_print);
    return ret;
}

void zkm_observer_fini(void)
{
    if (!skel)
        return;
    observer_bpf__destroy(skel);
    skel = NULL;
    stats_fd = ranges_fd = -1;
}

int zkm_observer_loaded(void)
{
    return skel != NULL;
}

int zkm_observer_track(pid_t tgid, const uint64_t *range_start, const uint64_t *range_end,
                       uint32_t n_ranges)
{
    if (!skel)
        return -EOPNOTSUPP;
    if (tgid <= 0 || n_ranges > OBS_MAX_NODES || (n_ranges && (!range_start || !range_end)))
        return -EINVAL;

    struct obs_ranges r = {.n = n_ranges};
    for (uint32_t i = 0; i < n_ranges; i++) {
        if (range_start[i] >= range_end[i])
            return -EINVAL;
        r.start[i] = range_start[i];
        r.end[i] = range_end[i];
    }
    __u32 key = (__u32)tgid;
    struct obs_ranges old;
    int had_ranges = bpf_map_lookup_elem(ranges_fd, &key, &old) == 0;

    int ret = bpf_map_update_elem(ranges_fd, &key, &r, BPF_ANY);
    if (ret < 0)
        return ret == -E2BIG ? -ENOSPC : ret;
    struct obs_stats zero = {0};
    ret = bpf_map_update_elem(stats_fd, &key, &zero, BPF_NOEXIST);
    if (ret == -EEXIST)
        return 0;
    if (ret < 0) {
        if (!had_ranges)
            bpf_map_delete_elem(ranges_fd, &key);
        return ret == -E2BIG ? -ENOSPC : ret;
    }
    return 0;
}

void zkm_observer_untrack(pid_t tgid)
{
    if (!skel || tgid <= 0)
        return;
    __u32 key = (__u32)tgid;
    bpf_map_delete_elem(stats_fd, &key);
    bpf_map_delete_elem(ranges_fd, &key);
}

int zkm_observer_read(pid_t tgid, struct zkm_observer_stats *ret)
{
    if (!skel)
        return -EOPNOTSUPP;
    if (tgid <= 0 || !ret)
        return -EINVAL;
    __u32 key = (__u32)tgid;
    struct obs_stats s;
    int r = bpf_map_lookup_elem(stats_fd, &key, &s);
    if (r < 0)
        return r;
    ret->page_faults = s.page_faults;
    ret->page_faults_all = s.page_faults_all;
    ret->hugetlb_events = s.hugetlb_events;
    ret->migrations = s.migrations;
    for (int i = 0; i < ZKM_MAX_NODES; i++)
        ret->runs_on_node[i] = s.runs_on_node[i];
    return 0;
}

#else /* !ZKM_HAVE_BPF: stubs, so zkmemd builds and runs without BPF tooling */

int zkm_observer_init(const uint8_t *cpu_node, uint32_t n_cpus, char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "observer: zkmemd was built without BPF support (meson -Dbpf)");
    return -EOPNOTSUPP;
}

void zkm_observer_fini(void) {}

int zkm_observer_loaded(void)
{
    return 0;
}

int zkm_observer_track(pid_t tgid, const uint64_t *range_start, const uint64_t *range_end,
                       uint32_t n_ranges)
{
    return -EOPNOTSUPP;
}

void zkm_observer_untrack(pid_t tgid) {}

int zkm_observer_read(pid_t tgid, struct zkm_observer_stats *ret)
{
    return -EOPNOTSUPP;
}

#endif
