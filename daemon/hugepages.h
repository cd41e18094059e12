/* SPDX-License-Identifier: MIT */
/*
 * hugepages.h - the kernel's 2 MiB hugepage pool, per node: read, grow, probe, and where a
 * page landed. Kernel node numbers only (zkm_topo_node.phys), never logical ones.
 */
#ifndef ZKM_HUGEPAGES_H
#define ZKM_HUGEPAGES_H

#define ZKM_HUGEPAGE_SIZE (2UL * 1024 * 1024)

/*
 * 2 MiB pages of kernel node `phys_node`, from
 * /sys/devices/system/node/node<N>/hugepages/hugepages-2048kB/{nr,free}_hugepages
 * (*ret_total counts surplus pages too); when those are missing (no NUMA in the kernel),
 * node 0 reads the system-wide pool (/sys/kernel/mm/hugepages, else /proc/meminfo when its
 * default size is 2 MiB). 0 or -errno (-ENOENT: no such node or no 2 MiB pool).
 */
int zkm_hugepages_read(int phys_node, long *ret_total, long *ret_free);

/*
 * Make `want` pages free on the node: writes nr_hugepages = persistent + missing, then reads
 * back what the kernel granted (it may grant fewer; the caller compares and logs). Returns
 * the number of pages now free on the node, or -errno (-EACCES/-EPERM/-EROFS when not
 * permitted: the caller logs once and uses what the admin reserved). Never shrinks the pool.
 */
long zkm_hugepages_reserve(int phys_node, long want);

/*
 * Set the node's persistent pool to exactly `pages` (for tests and an admin `reserve`
 * that gives pages back). 0 or -errno.
 */
int zkm_hugepages_set(int phys_node, long pages);

/*
 * Is hugetlb usable at all: memfd_create(MFD_HUGETLB|MFD_HUGE_2MB) + ftruncate(2 MiB) +
 * fallocate(2 MiB) + punch. Returns 1 or 0; leaves the pool as it found it.
 */
int zkm_hugepages_probe(void);

/*
 * Kernel node of the page at `addr` (get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR)); the page is
 * faulted in if it was not yet. Kernel node or -errno.
 */
int zkm_page_node(const void *addr);

#endif
