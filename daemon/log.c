/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

static int log_level = ZKM_LOG_INFO;
static uint64_t fb_count[ZKM_FB_MAX];

void zkm_log_set_level(int level)
{
    log_level = level;
}

static void vlog(int level, const char *fmt, va_list ap)
{
    /* syslog priorities: 3 err, 4 warning, 6 info, 7 debug */
    static const int prio[] = {3, 4, 6, 7};
    char line[1024];
    int n = snprintf(line, sizeof(line), "<%d>", prio[level]);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    fprintf(stderr, "%s\n", line);
}

void zkm_log(int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void zkm_fallback(enum zkm_fallback kind, const char *fmt, ...)
{
    if (fb_count[kind]++ != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(ZKM_LOG_WARNING, fmt, ap);
    va_end(ap);
}

uint64_t zkm_fallback_count(enum zkm_fallback kind)
{
    return fb_count[kind];
}

uint64_t zkm_fallback_total(void)
{
    uint64_t t = 0;
    for (int i = 0; i < ZKM_FB_MAX; i++)
        t += fb_count[i];
    return t;
}
