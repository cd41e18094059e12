/* SPDX-License-Identifier: MIT */
/* query.h - read-only queries (zkmemctl) and admin actions. */
#ifndef ZKMD_QUERY_H
#define ZKMD_QUERY_H

#include "session.h"

void zkm_query_handle(struct zkm_session *s, const struct zkm_msg_query *m);
void zkm_admin_handle(struct zkm_session *s, const struct zkm_msg_admin *m);

#endif
