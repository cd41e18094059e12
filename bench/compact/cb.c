/* SPDX-License-Identifier: MIT */
/*
 * cb.c - phase lines, memory readings and bookkeeping for the compaction benchmarks.
 * See cb.h for the output format. Nothing here allocates through malloc after cb_start():
 * lines are formatted on the stack and written with write(2), /proc files are read with
 * read(2) into stack buffers.
 */
#include "cb.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "zkm_proto.h" /* struct zkm_client_stats: layout only, no link */

struct cb_state cb;

void cb_die(const char *msg)
{
    dprintf(2, "%s\n", msg);
    exit(2);
}

double cb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Value in kB of "Key:" in a /proc status text, 0 if absent. */
static uint64_t status_kb(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    if (!p)
        return 0;
    p += strlen(key);
    while (*p == ' ' || *p == '\t')
        p++;
    return strtoull(p, NULL, 10);
}

void cb_mem_read(struct cb_mem *ret)
{
    char buf[8192];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    uint64_t huge = status_kb(buf, "HugetlbPages:");
    ret->hugetlb_kb = huge;
    ret->rss_kb = status_kb(buf, "VmRSS:") + huge;
    ret->hwm_kb = status_kb(buf, "VmHWM:") + huge;
}

void cb_reset_hwm(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t r = write(fd, "5", 1);
    (void)r;
    close(fd);
}

/* Which shared object provides `malloc` right now. */
static const char *malloc_provider(void)
{
    Dl_info di;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    if (m && dladdr(m, &di) && di.dli_fname)
        return di.dli_fname;
    return "unknown";
}

static void put_line(const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t w = write(1, s + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

void cb_start(void)
{
    char line[4200];
    snprintf(line, sizeof(line), "allocator=%s\n", malloc_provider());
    put_line(line);
    cb_reset_hwm();
    struct cb_mem m;
    cb_mem_read(&m);
    cb.base_kb = m.rss_kb;
    cb.t0_ms = cb_now_ms();
}

/* zkmem's own counters, if the allocator in effect exports them (looked up by name, so
 * these programs never link zkmem): " zk_<stat>=<value>" for every ZKM_CLIENT_STATS. */
typedef int (*stats_fn)(struct zkm_client_stats *);

static size_t format_zkmem_stats(char *buf, size_t len)
{
    stats_fn fn = (stats_fn)dlsym(RTLD_DEFAULT, "zkm_stats_snapshot");
    struct zkm_client_stats z;
    if (!fn || fn(&z) != 0)
        return 0;
    size_t off = 0;
#define CB_X_STAT(n, d)                                                                            \
    if (off < len)                                                                                 \
        off += (size_t)snprintf(buf + off, len - off, " zk_" #n "=%" PRIu64, z.n);
    ZKM_CLIENT_STATS(CB_X_STAT)
#undef CB_X_STAT
    return off < len ? off : len;
}

void cb_phase(const char *name, const char *extra)
{
    char line[4096];
    struct cb_mem m;
    double now = cb_now_ms();
    cb_mem_read(&m);
    int off = snprintf(line, sizeof(line),
                       "phase=%s mono_ms=%.1f t_ms=%.1f rss_kb=%" PRIu64 " hwm_kb=%" PRIu64
                       " hugetlb_kb=%" PRIu64 " base_kb=%" PRIu64 " book_kb=%" PRIu64
                       " live_bytes=%" PRIu64 " fails=%" PRIu64,
                       name, now, now - cb.t0_ms, m.rss_kb, m.hwm_kb, m.hugetlb_kb, cb.base_kb,
                       cb.book_bytes / 1024, cb.live_bytes, cb.fails);
    if (off > 0 && (size_t)off < sizeof(line) - 2)
        off += (int)format_zkmem_stats(line + off, sizeof(line) - 2 - (size_t)off);
    if (extra && off > 0 && (size_t)off < sizeof(line) - 2)
        off += snprintf(line + off, sizeof(line) - 2 - (size_t)off, " %s", extra);
    if (off < 0 || (size_t)off > sizeof(line) - 2)
        off = (int)strlen(line);
    line[off++] = '\n';
    line[off] = '\0';
    put_line(line);
    cb_reset_hwm();
}

void *cb_array(size_t bytes)
{
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        cb_die("cb: mmap of a bookkeeping array failed");
    return p;
}

void cb_book(size_t bytes)
{
    cb.book_bytes += bytes;
}

void *cb_alloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        cb.fails++;
        return NULL;
    }
    memset(p, 0xa5, n);
    __asm__ volatile("" : : "g"(p) : "memory"); /* the object escapes: no elision */
    cb.live_bytes += n;
    return p;
}

void *cb_alloc_sparse(size_t n)
{
    char *p = malloc(n);
    if (!p) {
        cb.fails++;
        return NULL;
    }
    for (size_t i = 0; i < n; i += 4096)
        p[i] = (char)0xa5;
    p[n - 1] = (char)0xa5;
    __asm__ volatile("" : : "g"(p) : "memory");
    cb.live_bytes += n;
    return p;
}

void cb_free(void *p, size_t n)
{
    if (!p)
        return;
    free(p);
    cb.live_bytes -= n;
}

void cb_sleep_ms(double ms)
{
    double end = cb_now_ms() + ms;
    struct timespec ts;
    ts.tv_sec = (time_t)(end / 1e3);
    ts.tv_nsec = (long)((end - (double)ts.tv_sec * 1e3) * 1e6);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

int cb_opt_str(int argc, char **argv, int *i, const char *name, const char **ret)
{
    if (strcmp(argv[*i], name) != 0)
        return 0;
    if (*i + 1 >= argc) {
        dprintf(2, "option %s needs a value\n", name);
        exit(2);
    }
    *ret = argv[++*i];
    return 1;
}

int cb_opt_u64(int argc, char **argv, int *i, const char *name, uint64_t *ret)
{
    const char *s;
    if (!cb_opt_str(argc, argv, i, name, &s))
        return 0;
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 10);
    if (errno || end == s || *end) {
        dprintf(2, "option %s: '%s' is not a number\n", name, s);
        exit(2);
    }
    *ret = v;
    return 1;
}
