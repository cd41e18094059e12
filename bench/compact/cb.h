/* SPDX-License-Identifier: MIT */
/*
 * cb.h - shared pieces of the compaction/tuning benchmarks (bench/compact/cb-*.c).
 *
 * The programs call plain malloc/free, so the allocator under test is whatever provides
 * `malloc` (glibc, or an LD_PRELOADed jemalloc/mimalloc/tcmalloc/zkmem). Their own
 * bookkeeping (pointer and size arrays) is mmap'ed, never from the allocator under test,
 * and its touched size is reported (book_kb) so the runner can subtract it.
 *
 * Output, one line each, written with write(2) from a stack buffer (no stdio buffer, no
 * allocation through the allocator under test between phases):
 *   allocator=<path of the object that provides malloc>
 *   phase=<name> mono_ms=<CLOCK_MONOTONIC ms> t_ms=<ms since start> rss_kb=<VmRSS +
 *     HugetlbPages> hwm_kb=<VmHWM since the phase began + HugetlbPages> hugetlb_kb=...
 *     base_kb=<RSS before the workload> book_kb=<benchmark arrays> live_bytes=<requested
 *     bytes of live objects> fails=<malloc returned NULL> [zk_<stat>=... when the
 *     allocator exports zkm_stats_snapshot()] [workload extras]
 * mono_ms is the clock the runner samples the daemon with (Python's time.monotonic()).
 */
#ifndef CB_H
#define CB_H

#include <stddef.h>
#include <stdint.h>

struct cb_mem {
    uint64_t rss_kb;     /* VmRSS + HugetlbPages */
    uint64_t hwm_kb;     /* VmHWM (since the last cb_reset_hwm) + HugetlbPages */
    uint64_t hugetlb_kb; /* HugetlbPages */
};

/* Process-wide benchmark state, updated by the workloads. */
struct cb_state {
    uint64_t live_bytes; /* requested bytes of live objects */
    uint64_t fails;      /* malloc calls that returned NULL */
    uint64_t book_bytes; /* touched bytes of the benchmark's own arrays */
    uint64_t base_kb;    /* RSS before the workload */
    double t0_ms;
};
extern struct cb_state cb;

/* xorshift64*: the workloads' only randomness (fixed seed per run). */
static inline uint64_t cb_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi]. */
static inline uint32_t cb_size(uint64_t *s, uint32_t lo, uint32_t hi)
{
    return lo + (uint32_t)(cb_rand(s) % (uint64_t)(hi - lo + 1));
}

/* Print the allocator line, reset VmHWM, record the baseline RSS and the start time. */
void cb_start(void);

double cb_now_ms(void);
void cb_mem_read(struct cb_mem *ret);

/* Reset VmHWM to the current RSS (/proc/self/clear_refs "5"), so a phase's peak is its own. */
void cb_reset_hwm(void);

/* Print one phase line (see the top of this file); `extra` is appended as is (may be NULL).
 * Resets VmHWM afterwards, so the next phase's hwm_kb is its own peak. */
void cb_phase(const char *name, const char *extra);

/* Anonymous mapping for bookkeeping; never fails silently (exits with a message). */
void *cb_array(size_t bytes);
/* Count `bytes` of a bookkeeping array as touched. */
void cb_book(size_t bytes);

/* malloc(n), write every byte, count it live; NULL counted in cb.fails. */
void *cb_alloc(size_t n);
/* malloc(n), write one byte per 4 KiB page and the last one (a buffer reserved ahead of
 * use): the allocator's own cost per byte, not the program's memset, sets the pace. */
void *cb_alloc_sparse(size_t n);
/* free(p) of an object of requested size n. */
void cb_free(void *p, size_t n);

/* Sleep ms milliseconds (absolute deadline; restarted on EINTR). */
void cb_sleep_ms(double ms);

/* Parse "--name VALUE" options: returns 1 and sets *ret if argv[*i] is --name. */
int cb_opt_u64(int argc, char **argv, int *i, const char *name, uint64_t *ret);
int cb_opt_str(int argc, char **argv, int *i, const char *name, const char **ret);
void cb_die(const char *msg);

#define CB_MIB (1024ull * 1024ull)

#endif
