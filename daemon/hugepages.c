/* SPDX-License-Identifier: MIT */
/*
 * hugepages.c - the kernel's 2 MiB hugepage pool: counters, growing it, a usability probe,
 * and page placement checks.
 *
 * 1. Per-node counters live in /sys/devices/system/node/node<N>/hugepages/hugepages-2048kB/:
 *    nr_hugepages (persistent + surplus), free_hugepages, surplus_hugepages. Writing a node's
 *    nr_hugepages sets its *persistent* count; the kernel allocates what it can (possibly
 *    fewer, no error) and we read back the truth.
 * 2. A kernel without NUMA has no node directories: node 0 then means the system-wide pool
 *    (/sys/kernel/mm/hugepages/hugepages-2048kB/, or /proc/meminfo when its default size is
 *    2 MiB).
 * 3. Writing needs write access to the sysfs file (root-owned 0644: uid 0, no capability);
 *    a sandbox that mounts /sys read-only gives EROFS. Either is returned, never hidden.
 * No state, no locks: every call reads the kernel afresh.
 */
#include "hugepages.h"

#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

#define NODE_DIR   "/sys/devices/system/node/node%d/hugepages/hugepages-2048kB"
#define GLOBAL_DIR "/sys/kernel/mm/hugepages/hugepages-2048kB"

static int read_long(const char *path, long *ret)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n < 0)
        return -e;
    buf[n] = '\0';
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno || end == buf || v < 0)
        return -EIO;
    *ret = v;
    return 0;
}

static int write_long(const char *path, long v)
{
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%ld\n", v);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, buf, (size_t)len);
    int e = errno;
    close(fd);
    if (n < 0)
        return -e;
    return n == len ? 0 : -EIO;
}

/* Directory holding the node's counters, or -ENOENT. Point 2 of the header comment. */
static int pool_dir(int phys_node, char *dir, size_t len)
{
    struct stat st;
    if (phys_node < 0)
        return -EINVAL;
    snprintf(dir, len, NODE_DIR, phys_node);
    if (stat(dir, &st) == 0)
        return 0;
    if (phys_node != 0 || stat("/sys/devices/system/node/node0", &st) == 0)
        return -ENOENT; /* the node exists without a 2 MiB pool, or there is no such node */
    snprintf(dir, len, GLOBAL_DIR);
    return stat(dir, &st) == 0 ? 0 : -ENOENT;
}

static int read_counter(const char *dir, const char *name, long *ret)
{
    char path[192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return read_long(path, ret);
}

/* Last resort of point 2: HugePages_Total/Free, when Hugepagesize is 2048 kB. */
static int read_meminfo(long *ret_total, long *ret_free)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -errno;
    char line[128];
    long total = -1, nfree = -1, size_kb = -1;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "HugePages_Total: %ld", &total);
        sscanf(line, "HugePages_Free: %ld", &nfree);
        sscanf(line, "Hugepagesize: %ld kB", &size_kb);
    }
    fclose(f);
    if (total < 0 || nfree < 0 || size_kb != 2048)
        return -ENOENT;
    *ret_total = total;
    *ret_free = nfree;
    return 0;
}

int zkm_hugepages_read(int phys_node, long *ret_total, long *ret_free)
{
    char dir[160];
    long total, nfree;
    int r = pool_dir(phys_node, dir, sizeof dir);
    if (r == -ENOENT && phys_node == 0)
        return read_meminfo(ret_total, ret_free);
    if (r < 0)
        return r;
    if ((r = read_counter(dir, "nr_hugepages", &total)) < 0 ||
        (r = read_counter(dir, "free_hugepages", &nfree)) < 0)
        return r;
    *ret_total = total;
    *ret_free = nfree;
    return 0;
}

int zkm_hugepages_set(int phys_node, long pages)
{
    char dir[160], path[192];
    if (pages < 0)
        return -EINVAL;
    int r = pool_dir(phys_node, dir, sizeof dir);
    if (r < 0)
        return r;
    snprintf(path, sizeof path, "%s/nr_hugepages", dir);
    return write_long(path, pages);
}

long zkm_hugepages_reserve(int phys_node, long want)
{
    char dir[160];
    long nr, nfree, surplus;
    int r = pool_dir(phys_node, dir, sizeof dir);
    if (r < 0)
        return r;
    if ((r = read_counter(dir, "nr_hugepages", &nr)) < 0 ||
        (r = read_counter(dir, "free_hugepages", &nfree)) < 0)
        return r;
    if (read_counter(dir, "surplus_hugepages", &surplus) < 0)
        surplus = 0;
    if (want <= nfree)
        return nfree;

    long persistent = nr > surplus ? nr - surplus : 0;
    if ((r = zkm_hugepages_set(phys_node, persistent + (want - nfree))) < 0)
        return r;
    if ((r = read_counter(dir, "free_hugepages", &nfree)) < 0)
        return r;
    return nfree;
}

int zkm_hugepages_probe(void)
{
    int fd = memfd_create("zkmem-probe", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
    if (fd < 0)
        return 0;
    int ok =
        ftruncate(fd, (off_t)ZKM_HUGEPAGE_SIZE) == 0 &&
        fallocate(fd, 0, 0, (off_t)ZKM_HUGEPAGE_SIZE) == 0 &&
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)ZKM_HUGEPAGE_SIZE) == 0;
    close(fd); /* the last reference: any page still allocated goes back to the pool */
    return ok;
}

int zkm_page_node(const void *addr)
{
    int node = -1;
    if (get_mempolicy(&node, NULL, 0, (void *)addr, MPOL_F_NODE | MPOL_F_ADDR) < 0)
        return -errno;
    return node;
}
