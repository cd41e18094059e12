/* SPDX-License-Identifier: MIT */
/*
 * test-topology.c - daemon/topology.c (hwloc nodes, logical -> kernel map, distances,
 * fallback order) and daemon/hugepages.c (pool counters, reserve, probe, page node).
 *
 * Simulated topologies come from HWLOC_SYNTHETIC strings and the hwloc XML files in
 * tests/topologies/ (exported with lstopo from synthetic topologies, distances added with
 * hwloc-annotate). Each test runs in its own forked process (Check's default), so setenv()
 * in one test does not leak into the next. Tests that change the hugepage pool need root
 * and restore the original persistent count; they skip with a printed reason otherwise.
 */
#include "hugepages.h"
#include "topology.h"

#include <check.h>
#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef ZKM_TEST_TOPOLOGIES
#define ZKM_TEST_TOPOLOGIES "tests/topologies"
#endif

static void use_env(const char *synthetic, const char *xml)
{
    unsetenv("HWLOC_SYNTHETIC");
    unsetenv("HWLOC_XMLFILE");
    if (synthetic)
        setenv("HWLOC_SYNTHETIC", synthetic, 1);
    if (xml) {
        static char path[512];
        const char *src = getenv("ZKMEM_SRCDIR");
        if (src)
            snprintf(path, sizeof path, "%s/tests/topologies/%s", src, xml);
        else
            snprintf(path, sizeof path, "%s/%s", ZKM_TEST_TOPOLOGIES, xml);
        ck_assert_msg(access(path, R_OK) == 0, "test topology %s missing", path);
        setenv("HWLOC_XMLFILE", path, 1);
    }
}

static long possible_cpus(void)
{
    long last = -1;
    FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
    if (f) {
        char buf[256];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        char *p = strrchr(buf, '-');
        char *q = strrchr(buf, ',');
        p = p && (!q || p > q) ? p + 1 : q ? q + 1 : buf;
        last = strtol(p, NULL, 10);
    }
    return last >= 0 ? last + 1 : sysconf(_SC_NPROCESSORS_CONF);
}

/* A kernel node that exists and has memory. */
static int is_real_memory_node(int phys)
{
    if (phys < 0)
        return 0;
    if (numa_available() < 0)
        return phys == 0;
    long long freemem;
    return phys <= numa_max_node() && numa_node_size64(phys, &freemem) > 0;
}

/* Invariants that hold for every topology. */
static void check_common(const struct zkm_topology *t)
{
    ck_assert_uint_ge(t->n_nodes, 1);
    ck_assert_uint_le(t->n_nodes, ZKM_MAX_NODES);
    long possible = possible_cpus();
    ck_assert_uint_eq(t->n_cpus, possible < ZKM_MAX_CPUS ? possible : ZKM_MAX_CPUS);
    ck_assert_uint_eq(t->n_cpus_possible, possible);
    for (uint32_t c = 0; c < t->n_cpus; c++)
        ck_assert_msg(t->cpu_node[c] < t->n_nodes, "cpu %u maps to node %u of %u", c,
                      t->cpu_node[c], t->n_nodes);
    for (uint32_t i = 0; i < t->n_nodes; i++) {
        ck_assert_uint_eq(t->node[i].logical, i);
        ck_assert_msg(is_real_memory_node(t->node[i].phys), "node %u -> kernel node %d is not real",
                      i, t->node[i].phys);
        ck_assert_uint_eq(t->node[i].distance[i], 10);
        for (uint32_t j = 0; j < t->n_nodes; j++)
            if (j != i)
                ck_assert_uint_gt(t->node[i].distance[j], t->node[i].distance[i]);
        /* cpu_node and the node's CPU count agree when each CPU is one node's */
        uint32_t mapped = 0;
        for (uint32_t c = 0; c < t->n_cpus; c++)
            mapped += t->cpu_node[c] == i;
        if (t->n_cpus >= t->n_nodes || !t->simulated)
            ck_assert_uint_eq(mapped, t->node[i].n_cpus);
    }
    char desc[2048];
    int n = zkm_topology_describe(t, desc, sizeof desc);
    ck_assert_int_gt(n, 0);
    ck_assert_int_lt(n, (int)sizeof desc);
    ck_assert_uint_eq(strlen(desc), (size_t)n);
}

static void load_ok(struct zkm_topology *t)
{
    char err[256] = "";
    int r = zkm_topology_load(t, err, sizeof err);
    ck_assert_msg(r == 0, "zkm_topology_load: %d: %s", r, err);
    check_common(t);
}

START_TEST(real_system)
{
    struct zkm_topology t;
    use_env(NULL, NULL);
    load_ok(&t);
    ck_assert_int_eq(t.simulated, 0);
    ck_assert_str_eq(t.source, "this system");
    if (numa_available() >= 0)
        ck_assert_int_eq((int)t.n_nodes, numa_num_configured_nodes());
    /* every real online CPU sits on the node the kernel says */
    for (uint32_t c = 0; c < t.n_cpus && numa_available() >= 0; c++) {
        int phys = numa_node_of_cpu((int)c);
        if (phys >= 0)
            ck_assert_int_eq(t.node[t.cpu_node[c]].phys, phys);
    }
    char desc[2048];
    zkm_topology_describe(&t, desc, sizeof desc);
    printf("real: %s\n", desc);
    ck_assert_ptr_nonnull(strstr(desc, "this system"));
    ck_assert_ptr_null(strstr(desc, "simulated"));
}
END_TEST

START_TEST(synthetic_one_node)
{
    struct zkm_topology t;
    use_env("numa:1 core:2 pu:1", NULL);
    load_ok(&t);
    ck_assert_uint_eq(t.n_nodes, 1);
    ck_assert_int_eq(t.simulated, 1);
    ck_assert_str_eq(t.source, "synthetic: numa:1 core:2 pu:1");
    ck_assert_uint_eq(t.node[0].n_cpus, t.n_cpus);
    ck_assert_int_eq(t.distances_default, 1);
    uint32_t order[ZKM_MAX_NODES];
    zkm_topology_order(&t, 0, order);
    ck_assert_uint_eq(order[0], 0);
}
END_TEST

START_TEST(synthetic_two_nodes)
{
    struct zkm_topology t;
    use_env("pack:2 numa:1 core:2 pu:1", NULL);
    load_ok(&t);
    ck_assert_uint_eq(t.n_nodes, 2);
    ck_assert_int_eq(t.simulated, 1);
    ck_assert_int_eq(t.distances_default, 1);
    ck_assert_uint_eq(t.node[0].distance[1], 20);
    ck_assert_uint_eq(t.node[1].distance[0], 20);
    /* contiguous blocks, every node has CPUs when there are enough */
    for (uint32_t c = 1; c < t.n_cpus; c++)
        ck_assert_uint_ge(t.cpu_node[c], t.cpu_node[c - 1]);
    for (uint32_t i = 0; i < t.n_nodes; i++)
        ck_assert_uint_ge(t.node[i].n_cpus, 1);
    if (t.n_cpus == 2) {
        ck_assert_str_eq(t.node[0].cpulist, "0");
        ck_assert_str_eq(t.node[1].cpulist, "1");
    }
    uint32_t order[ZKM_MAX_NODES];
    zkm_topology_order(&t, 1, order);
    ck_assert_uint_eq(order[0], 1);
    ck_assert_uint_eq(order[1], 0);

    char desc[2048];
    zkm_topology_describe(&t, desc, sizeof desc);
    printf("synthetic 2: %s\n", desc);
    ck_assert_ptr_nonnull(strstr(desc, "2 nodes (simulated, synthetic: pack:2 numa:1 core:2 pu:1"));
    ck_assert_ptr_nonnull(strstr(desc, "placement falls back to kernel node"));
    /* a too-small buffer: truncated, terminated, full length returned */
    char small[16];
    int n = zkm_topology_describe(&t, small, sizeof small);
    ck_assert_int_eq(n, (int)strlen(desc));
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
}
END_TEST

START_TEST(synthetic_four_nodes)
{
    struct zkm_topology t;
    use_env("pack:4 numa:1 core:1 pu:1", NULL);
    load_ok(&t);
    ck_assert_uint_eq(t.n_nodes, 4);
    ck_assert_int_eq(t.simulated, 1);
    /* every logical node has a real CPU to run on, even with fewer CPUs than nodes */
    for (uint32_t i = 0; i < t.n_nodes; i++) {
        ck_assert_uint_ge(t.node[i].n_cpus, 1);
        int cpu = atoi(t.node[i].cpulist);
        ck_assert_int_lt(cpu, (int)t.n_cpus);
    }
    /* every CPU maps to a node that lists it */
    for (uint32_t c = 0; c < t.n_cpus; c++) {
        const char *list = t.node[t.cpu_node[c]].cpulist;
        if (t.n_cpus < t.n_nodes)
            ck_assert_int_eq(atoi(list), (int)c);
    }
    uint32_t order[ZKM_MAX_NODES];
    zkm_topology_order(&t, 2, order);
    ck_assert_uint_eq(order[0], 2);
    ck_assert_uint_eq(order[1], 0); /* all remote at 20: by logical number */
    ck_assert_uint_eq(order[2], 1);
    ck_assert_uint_eq(order[3], 3);
}
END_TEST

START_TEST(xml_two_nodes)
{
    struct zkm_topology t;
    use_env(NULL, "two-nodes.xml");
    load_ok(&t);
    ck_assert_uint_eq(t.n_nodes, 2);
    ck_assert_int_eq(t.simulated, 1);
    ck_assert_int_eq(strncmp(t.source, "xml: ", 5), 0);
    ck_assert_int_eq(t.distances_default, 0);
    ck_assert_uint_eq(t.node[0].distance[0], 10);
    ck_assert_uint_eq(t.node[0].distance[1], 21);
    ck_assert_uint_eq(t.node[1].distance[0], 21);
    ck_assert_uint_eq(t.node[1].distance[1], 10);
    uint32_t order[ZKM_MAX_NODES];
    zkm_topology_order(&t, 0, order);
    ck_assert_uint_eq(order[0], 0);
    ck_assert_uint_eq(order[1], 1);
    char desc[2048];
    zkm_topology_describe(&t, desc, sizeof desc);
    ck_assert_ptr_nonnull(strstr(desc, "10 21 / 21 10"));
}
END_TEST

START_TEST(xml_four_nodes_ring)
{
    /* node i is 16 from i+-1 and 22 from i+2 */
    struct zkm_topology t;
    use_env(NULL, "four-nodes-ring.xml");
    load_ok(&t);
    ck_assert_uint_eq(t.n_nodes, 4);
    ck_assert_int_eq(t.distances_default, 0);
    static const uint32_t want[4][4] = {{0, 1, 3, 2}, {1, 0, 2, 3}, {2, 1, 3, 0}, {3, 0, 2, 1}};
    for (uint32_t from = 0; from < 4; from++) {
        uint32_t order[ZKM_MAX_NODES];
        zkm_topology_order(&t, from, order);
        for (int k = 0; k < 4; k++)
            ck_assert_msg(order[k] == want[from][k], "order from %u, position %d: %u, want %u",
                          from, k, order[k], want[from][k]);
    }
}
END_TEST

START_TEST(too_many_nodes)
{
    struct zkm_topology t;
    memset(&t, 0x5a, sizeof t);
    char err[256] = "";
    use_env("pack:9 numa:1 core:1 pu:1", NULL);
    ck_assert_int_eq(zkm_topology_load(&t, err, sizeof err), -E2BIG);
    ck_assert_ptr_nonnull(strstr(err, "9 NUMA nodes"));
    ck_assert_ptr_null(strchr(err, '\n'));
    ck_assert_uint_eq(t.n_nodes, 0x5a5a5a5a); /* untouched on failure */
}
END_TEST

START_TEST(bad_synthetic)
{
    struct zkm_topology t;
    char err[256] = "";
    use_env("pack:2 bogus:7", NULL);
    int r = zkm_topology_load(&t, err, sizeof err);
    ck_assert_int_lt(r, 0);
    ck_assert_ptr_nonnull(strstr(err, "HWLOC_SYNTHETIC"));
}
END_TEST

START_TEST(missing_xml)
{
    struct zkm_topology t;
    char err[256] = "";
    use_env(NULL, NULL);
    setenv("HWLOC_XMLFILE", "/nonexistent/zkmem-topology.xml", 1);
    int r = zkm_topology_load(&t, err, sizeof err);
    ck_assert_int_lt(r, 0);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/zkmem-topology.xml"));
}
END_TEST

/* ---- hugepages ---- */

static int meminfo_long(const char *key, long *ret)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    size_t klen = strlen(key);
    int r = -ENOENT;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, klen) && line[klen] == ':') {
            *ret = strtol(line + klen + 1, NULL, 10);
            r = 0;
        }
    if (f)
        fclose(f);
    return r;
}

static long read_sysfs_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

START_TEST(hugepages_read_node0)
{
    long total = -1, nfree = -1;
    ck_assert_int_eq(zkm_hugepages_read(0, &total, &nfree), 0);
    ck_assert_int_ge(total, 0);
    ck_assert_int_ge(nfree, 0);
    ck_assert_int_le(nfree, total);
    long mt, size_kb;
    if (numa_available() < 0 || numa_num_configured_nodes() == 1) {
        if (meminfo_long("Hugepagesize", &size_kb) == 0 && size_kb == 2048 &&
            meminfo_long("HugePages_Total", &mt) == 0)
            ck_assert_int_eq(total, mt);
    }
    /* bad nodes: untouched outputs */
    long t2 = 77, f2 = 78;
    ck_assert_int_eq(zkm_hugepages_read(-1, &t2, &f2), -EINVAL);
    ck_assert_int_eq(zkm_hugepages_read(4095, &t2, &f2), -ENOENT);
    ck_assert_int_eq(t2, 77);
    ck_assert_int_eq(f2, 78);
}
END_TEST

START_TEST(hugepages_reserve_restore)
{
    if (geteuid() != 0) {
        /* not permitted: a clear error and nothing changes */
        long t0, f0, t1, f1;
        ck_assert_int_eq(zkm_hugepages_read(0, &t0, &f0), 0);
        ck_assert_int_eq(zkm_hugepages_reserve(0, f0 + 1), -EACCES);
        ck_assert_int_eq(zkm_hugepages_read(0, &t1, &f1), 0);
        ck_assert_int_eq(t1, t0);
        printf("SKIP hugepages_reserve_restore: growing the pool needs root (checked -EACCES)\n");
        return;
    }
    const char *nr_path = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages";
    const char *sp_path =
        "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/surplus_hugepages";
    long total, nfree;
    ck_assert_int_eq(zkm_hugepages_read(0, &total, &nfree), 0);
    long surplus = read_sysfs_long(sp_path);
    long persistent = total - (surplus > 0 ? surplus : 0);

    long want = nfree + 3;
    long got = zkm_hugepages_reserve(0, want);
    if (got == -EACCES || got == -EPERM || got == -EROFS) {
        printf("SKIP hugepages_reserve_restore: nr_hugepages not writable here (%s)\n",
               strerror((int)-got));
        return;
    }
    ck_assert_msg(got >= 0, "reserve: %s", strerror((int)-got));
    long t2, f2;
    ck_assert_int_eq(zkm_hugepages_read(0, &t2, &f2), 0);
    /* the pool grew by what the kernel granted */
    ck_assert_int_ge(t2, total);
    if (got < want)
        printf("reserve: kernel granted %ld of %ld pages asked for\n", got - nfree, want - nfree);
    if (got == nfree) {
        printf("SKIP hugepages_reserve_restore: the kernel granted no page\n");
    } else {
        ck_assert_int_gt(got, nfree);
        ck_assert_int_le(got, want);
        /* asking for no more than is free changes nothing */
        ck_assert_int_eq(zkm_hugepages_reserve(0, 1), got);
        ck_assert_int_eq(read_sysfs_long(nr_path), t2);
    }
    ck_assert_int_eq(zkm_hugepages_set(0, persistent), 0);
    long t3, f3;
    ck_assert_int_eq(zkm_hugepages_read(0, &t3, &f3), 0);
    ck_assert_int_eq(t3, total);
}
END_TEST

START_TEST(hugepages_probe)
{
    long total, nfree;
    ck_assert_int_eq(zkm_hugepages_read(0, &total, &nfree), 0);
    long overcommit = read_sysfs_long("/proc/sys/vm/nr_overcommit_hugepages");
    int reserved = 0;
    long persistent = -1;
    if (nfree == 0 && geteuid() == 0) {
        persistent =
            total - read_sysfs_long("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/"
                                    "surplus_hugepages");
        long got = zkm_hugepages_reserve(0, 1);
        reserved = got >= 1;
        if (reserved)
            nfree = got;
    }
    int probe = zkm_hugepages_probe();
    if (nfree > 0)
        ck_assert_int_eq(probe, 1);
    else if (overcommit == 0)
        ck_assert_int_eq(probe, 0); /* no page free and none may be made up */
    else
        printf("probe with no free page but overcommit %ld: %d\n", overcommit, probe);
    /* the probe gives its page back */
    long t2, f2;
    ck_assert_int_eq(zkm_hugepages_read(0, &t2, &f2), 0);
    ck_assert_int_eq(f2, nfree);
    if (reserved)
        ck_assert_int_eq(zkm_hugepages_set(0, persistent), 0);
}
END_TEST

START_TEST(page_node)
{
    long pagesz = sysconf(_SC_PAGESIZE);
    char *p =
        mmap(NULL, (size_t)pagesz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(p, MAP_FAILED);
    struct zkm_topology t;
    char err[256];
    use_env(NULL, NULL);
    ck_assert_int_eq(zkm_topology_load(&t, err, sizeof err), 0);
    int target = t.node[t.n_nodes - 1].phys;
    if (numa_available() >= 0) {
        unsigned long mask = 1UL << target;
        ck_assert_int_eq(mbind(p, (unsigned long)pagesz, MPOL_BIND, &mask, sizeof mask * 8, 0), 0);
    }
    p[0] = 1;
    ck_assert_int_eq(zkm_page_node(p), target);
    munmap(p, (size_t)pagesz);
    ck_assert_int_eq(zkm_page_node(p), -EFAULT);
}
END_TEST

static Suite *topology_suite(void)
{
    Suite *s = suite_create("topology");
    TCase *tc = tcase_create("topology");
    tcase_add_test(tc, real_system);
    tcase_add_test(tc, synthetic_one_node);
    tcase_add_test(tc, synthetic_two_nodes);
    tcase_add_test(tc, synthetic_four_nodes);
    tcase_add_test(tc, xml_two_nodes);
    tcase_add_test(tc, xml_four_nodes_ring);
    tcase_add_test(tc, too_many_nodes);
    tcase_add_test(tc, bad_synthetic);
    tcase_add_test(tc, missing_xml);
    suite_add_tcase(s, tc);

    tc = tcase_create("hugepages");
    tcase_add_test(tc, hugepages_read_node0);
    tcase_add_test(tc, hugepages_reserve_restore);
    tcase_add_test(tc, hugepages_probe);
    tcase_add_test(tc, page_node);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(topology_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
