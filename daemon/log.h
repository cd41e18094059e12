/* SPDX-License-Identifier: MIT */
/*
 * log.h - the daemon's log: stderr lines with syslog priority prefixes ("<3>"), which
 * journald turns into priorities. Never a line per allocation: per-client events are
 * logged once per client, system events (fallbacks) once per daemon, through
 * zkm_log_once() with a counter that zkmemctl shows.
 */
#ifndef ZKMD_LOG_H
#define ZKMD_LOG_H

#include <stdint.h>

enum { ZKM_LOG_ERR = 0, ZKM_LOG_WARNING = 1, ZKM_LOG_INFO = 2, ZKM_LOG_DEBUG = 3 };

void zkm_log_set_level(int level);
void zkm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Fallback events: each kind logged the first time, counted always. */
enum zkm_fallback {
    ZKM_FB_NO_HUGEPAGES,    /* serving from shmem small pages */
    ZKM_FB_SIMULATED_NODES, /* simulated topology: placement falls back to real nodes */
    ZKM_FB_RESERVE_DENIED,  /* could not write nr_hugepages */
    ZKM_FB_RESERVE_SHORT,   /* kernel granted fewer hugepages than asked */
    ZKM_FB_NO_FUTEX_URING,  /* io_uring lacks FUTEX_WAIT: doorbells polled on the timer */
    ZKM_FB_MISPLACED,       /* a page landed on another node than asked */
    ZKM_FB_NODE_FALLBACK,   /* a request was served from another node than asked */
    ZKM_FB_BPF_UNAVAILABLE, /* the eBPF observer could not load */
    ZKM_FB_STRAY_PAGES,     /* a client touched memory outside its leases (punched) */
    ZKM_FB_MAX
};
void zkm_fallback(enum zkm_fallback kind, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
uint64_t zkm_fallback_count(enum zkm_fallback kind);
uint64_t zkm_fallback_total(void);

#endif
