/* SPDX-License-Identifier: MIT */
/*
 * zkm_config.h - every configuration key, defined once.
 *
 * The same keys configure the daemon (/etc/zkmem/zkmemd.conf, `key = value` lines) and
 * the client (environment variables ZKMEM_<KEY in upper case>). One list generates the
 * struct, the defaults, the parser, `zkmemd --print-config`, `zkmemctl config`, the
 * zkmemd.conf(5) table and the tests.
 *
 * X(name, kind, default, min, max, scope, doc)
 *   kind:  U = unsigned integer (uint64_t), B = boolean (yes/no/true/false/1/0/on/off),
 *          S = string (char[256]), E = enum (uint32_t; names in ZKM_CONFIG_ENUM_<name>)
 *   scope: D daemon only, C client only, DC both
 *   min/max apply to U (and to E as index bounds); strings ignore them.
 */
#ifndef ZKM_CONFIG_H
#define ZKM_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define ZKM_CONFIG_KEYS(X)                                                                         \
    X(runtime_dir, S, "/run/zkmem", 0, 0, D, "directory of the control socket zkmemd.sock")        \
    X(mode, E, 1, 0, 2, DC, "performance mode: high_performance, balanced or monitoring")          \
    X(slab_pages, U, 1, 1, 512, D, "2 MiB hugepages per slab")                                     \
    X(hugepages_per_node, U, 0, 0, 1048576, D,                                                     \
      "hugepages to reserve per node at start (0: use what the admin reserved)")                   \
    X(max_hugepages_per_node, U, 0, 0, 1048576, D,                                                 \
      "cap on hugepages the arena takes per node (0: all that are free)")                          \
    X(fallback_mb, U, 1024, 0, 1048576, D,                                                         \
      "per-node capacity in MiB served from shared small pages when there are no hugepages")       \
    X(require_hugepages, B, 0, 0, 1, D,                                                            \
      "refuse to start without hugepages instead of falling back")                                 \
    X(memory_budget_mb, U, 0, 0, UINT64_MAX / 2, D,                                                \
      "bytes a domain (a uid) may hold, in MiB (0: unlimited)")                                    \
    X(grant_depth, U, 4, 0, 64, D,                                                                 \
      "slabs pre-granted per client and node at start; the tuner then follows demand (0: none)")   \
    X(max_clients, U, 4096, 1, 1048576, D, "concurrent client sessions")                           \
    X(allow_other_uids, B, 1, 0, 1, D,                                                             \
      "serve clients whose uid differs from the daemon's (each uid is its own domain)")            \
    X(admin_group, S, "zkmem-admin", 0, 0, D, "group whose members may run admin actions")         \
    X(enable_compaction, B, 1, 0, 1, D, "return idle slabs to the node pool in the background")    \
    X(enable_tuning, B, 1, 0, 1, D, "adapt grant depth and cache sizes to each client")            \
    X(decay_ms, U, 1000, 0, 3600000, D, "how long a returned slab stays cached before release")    \
    X(tick_ms, U, 50, 1, 10000, D, "background timer period")                                      \
    X(recovery_ms, U, 5000, 0, 600000, D,                                                          \
      "how long a restarted daemon keeps a previous daemon's leases for their clients")            \
    X(enable_bpf, B, 1, 0, 1, D, "load the eBPF observer when permitted")                          \
    X(log_level, E, 2, 0, 3, D, "error, warning, info or debug")                                   \
    X(small_threshold, U, 256, 16, 4096, DC, "largest small-tier object in bytes")                 \
    X(large_threshold, U, 8192, 512, 1048576, DC, "largest medium-tier object in bytes")           \
    X(tcache_small, U, 128, 0, 65536, C, "objects per small size class in a thread cache")         \
    X(tcache_medium, U, 64, 0, 65536, C, "objects per medium size class in a thread cache")        \
    X(start_slabs, U, 4, 0, 64, C,                                                                 \
      "slabs a process takes from its own 4 KiB pages before its first hugepage slab (0: none)")   \
    X(require_daemon, B, 0, 0, 1, C,                                                               \
      "fail allocations instead of using local memory without a daemon")                           \
    X(verbose, B, 0, 0, 1, C, "say once on stderr when falling back to local memory")              \
    X(socket, S, "", 0, 0, C, "control socket path (empty: <runtime_dir>/zkmemd.sock)")

#define ZKM_CONFIG_ENUM_mode      "high_performance", "balanced", "monitoring"
#define ZKM_CONFIG_ENUM_log_level "error", "warning", "info", "debug"

#define ZKM_CONFIG_STR_MAX 256

#define ZKM_CFG_TYPE_U uint64_t
#define ZKM_CFG_TYPE_B uint32_t
#define ZKM_CFG_TYPE_E uint32_t

struct zkm_config {
#define ZKM_CFG_FIELD_U(n)                                   uint64_t n;
#define ZKM_CFG_FIELD_B(n)                                   uint32_t n;
#define ZKM_CFG_FIELD_E(n)                                   uint32_t n;
#define ZKM_CFG_FIELD_S(n)                                   char n[ZKM_CONFIG_STR_MAX];
#define ZKM_CFG_FIELD(name, kind, def, min, max, scope, doc) ZKM_CFG_FIELD_##kind(name)
    ZKM_CONFIG_KEYS(ZKM_CFG_FIELD)
#undef ZKM_CFG_FIELD
};

/* Fill every key with its default. */
void zkm_config_defaults(struct zkm_config *cfg);

/*
 * Parse `key = value` lines (# comments, blank lines). On the first error returns
 * -EINVAL and writes one line to `err` (errlen bytes) naming the file, the line number,
 * the key and what is wrong, e.g.
 *   "zkmemd.conf:7: unknown key 'slab_page' (did you mean 'slab_pages'?)"
 *   "zkmemd.conf:3: grant_depth = 900: out of range 0..64"
 * Keys whose scope lacks D are rejected by the daemon (`for_daemon` = 1).
 */
int zkm_config_parse_text(struct zkm_config *cfg, const char *text, const char *name,
                          int for_daemon, char *err, size_t errlen);
int zkm_config_load_file(struct zkm_config *cfg, const char *path, int for_daemon, char *err,
                         size_t errlen);

/* Set one key from a string (used by the parser, the environment and `tune set`). */
int zkm_config_set(struct zkm_config *cfg, const char *key, const char *value, int for_daemon,
                   char *err, size_t errlen);

/*
 * Client side: apply ZKMEM_<KEY> variables from `envp` (NULL: environ) for keys whose
 * scope has C. Must not allocate from the C heap (it runs inside malloc). Bad values
 * are ignored and reported through `bad_key` (the first one), never printed.
 */
int zkm_config_from_env(struct zkm_config *cfg, char *const *envp, const char **bad_key);

/* Write every key as `key = value  # doc` lines (for --print-config and the QUERY). */
int zkm_config_format(const struct zkm_config *cfg, char *buf, size_t len, int with_docs);
void zkm_config_print(const struct zkm_config *cfg, FILE *out);

#endif
