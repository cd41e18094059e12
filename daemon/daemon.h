/* SPDX-License-Identifier: MIT */
/* daemon.h - what main.c offers the modules: the effective config and the daemon's state. */
#ifndef ZKMD_DAEMON_H
#define ZKMD_DAEMON_H

#include "zkm_config.h"
#include "zkm_proto.h"

const struct zkm_config *zkm_daemon_config(void);
/* Change one runtime key (admin `tune set`); err gets one line. 0 or -errno. */
int zkm_daemon_tune(const char *key, const char *value, char *err, size_t errlen);
void zkm_daemon_status(struct zkm_status_info *ret);

#endif
