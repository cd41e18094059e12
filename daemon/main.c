/* SPDX-License-Identifier: MIT */
/*
 * main.c - zkmemd: configuration, module lifecycle, the listening socket, systemd.
 *
 * Modules start in dependency order and stop in reverse:
 *   config -> topology -> arenas -> sessions -> socket -> loop   (run)   -> back.
 * zkmemd stays in the foreground (systemd supervises it) and logs to stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"
#include "daemon.h"
#include "log.h"
#include "loop.h"
#include "observer.h"
#include "session.h"
#include "topology.h"

#define DEFAULT_CONFIG "/etc/zkmem/zkmemd.conf"

static struct zkm_config cfg;
static const char *config_path;
static int config_given;
static char runtime_dir_override[ZKM_CONFIG_STR_MAX];
static struct zkm_topology topo;
static uint64_t start_ms;
static uint64_t watchdog_usec, last_watchdog_ms;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const struct zkm_config *zkm_daemon_config(void)
{
    return &cfg;
}

void zkm_daemon_status(struct zkm_status_info *r)
{
    const struct zkm_daemon_counters *c = zkm_sessions_counters();
    memset(r, 0, sizeof(*r));
    r->version = ZKM_PROTO_VERSION_MAX;
    r->pid = getpid();
    r->n_nodes = zkm_arena_count();
    r->n_clients = 0;
    for (struct zkm_session *s = zkm_sessions_first(); s; s = s->next)
        r->n_clients += !s->is_ctl && !s->closing;
    r->uptime_ms = mono_ms() - start_ms;
    r->backing = zkm_arena_backing();
    r->simulated_topology = (uint32_t)topo.simulated;
    r->futex_mode = zkm_loop_futex_supported() ? 1 : 2;
    r->bpf_loaded = (uint32_t)zkm_observer_loaded();
    r->clients_total = c->clients_total;
    r->clients_rejected = c->clients_rejected;
    r->protocol_errors = c->protocol_errors;
    r->violations = c->violations;
    r->fallbacks = zkm_fallback_total();
}

/* Keys an operator may change while the daemon runs (tune set, SIGHUP). */
static const char *const runtime_keys[] = {
    "mode",
    "grant_depth",
    "max_clients",
    "allow_other_uids",
    "memory_budget_mb",
    "enable_compaction",
    "enable_tuning",
    "decay_ms",
    "tick_ms",
    "log_level",
    "admin_group",
};

static int is_runtime_key(const char *key)
{
    for (size_t i = 0; i < sizeof(runtime_keys) / sizeof(runtime_keys[0]); i++)
        if (!strcmp(key, runtime_keys[i]))
            return 1;
    return 0;
}

/* high_performance polls the clients' rings every millisecond (session.c) */
static uint64_t loop_period_ms(void)
{
    return cfg.mode == 0 && cfg.tick_ms > 1 ? 1 : cfg.tick_ms;
}

static void apply_runtime(void)
{
    zkm_log_set_level((int)cfg.log_level);
    zkm_sessions_apply_config(&cfg);
    zkm_loop_set_tick(loop_period_ms());
}

int zkm_daemon_tune(const char *key, const char *value, char *err, size_t errlen)
{
    if (!is_runtime_key(key)) {
        snprintf(err, errlen, "'%s' cannot change while zkmemd runs (edit the config and restart)",
                 key);
        return -EINVAL;
    }
    struct zkm_config next = cfg;
    int r = zkm_config_set(&next, key, value, 1, err, errlen);
    if (r)
        return r;
    cfg = next;
    apply_runtime();
    snprintf(err, errlen, "%s = %s", key, value);
    return 0;
}

static void reload(void)
{
    if (!config_path) {
        zkm_log(ZKM_LOG_INFO, "no config file to reload (running on the embedded defaults)");
        return;
    }
    struct zkm_config next;
    char err[512];
    zkm_config_defaults(&next);
    if (zkm_config_load_file(&next, config_path, 1, err, sizeof(err)) != 0) {
        zkm_log(ZKM_LOG_ERR, "reload: %s; keeping the running configuration", err);
        return;
    }
    /* only runtime keys change; the rest needs a restart */
    struct zkm_config keep = cfg;
#define ZKM_RELOAD_KEY(name, kind, def, min, max, scope, doc)                                      \
    if (is_runtime_key(#name))                                                                     \
        memcpy(&keep.name, &next.name, sizeof(keep.name));
    ZKM_CONFIG_KEYS(ZKM_RELOAD_KEY)
#undef ZKM_RELOAD_KEY
    cfg = keep;
    if (runtime_dir_override[0])
        snprintf(cfg.runtime_dir, sizeof(cfg.runtime_dir), "%s", runtime_dir_override);
    apply_runtime();
    sd_notify(0, "RELOADING=0\nREADY=1\nSTATUS=configuration reloaded");
    zkm_log(ZKM_LOG_INFO, "configuration reloaded from %s", config_path);
}

static void tick(void)
{
    zkm_sessions_tick();
    if (watchdog_usec) {
        uint64_t now = mono_ms();
        if (now - last_watchdog_ms >= watchdog_usec / 2000) {
            sd_notify(0, "WATCHDOG=1");
            last_watchdog_ms = now;
        }
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: zkmemd [OPTIONS]\n"
            "Serve NUMA-aware hugepage slabs to zkmem clients over shared memory.\n\n"
            "  -c, --config FILE       configuration file (default %s if it exists,\n"
            "                          else the embedded defaults)\n"
            "  -r, --runtime-dir DIR   directory of the control socket (overrides runtime_dir)\n"
            "  -p, --print-config      print the effective configuration and exit\n"
            "  -h, --help              this help\n"
            "  -V, --version           version\n\n"
            "zkmemd runs in the foreground and logs to stderr. SIGTERM stops it, SIGHUP reloads\n"
            "the runtime keys of its configuration. See zkmemd(8) and zkmemd.conf(5).\n",
            DEFAULT_CONFIG);
}

static int parse_args(int argc, char **argv, int *print_config)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"runtime-dir", required_argument, NULL, 'r'},
        {"print-config", no_argument, NULL, 'p'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:r:phV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            config_given = 1;
            break;
        case 'r':
            if (strlen(optarg) >= sizeof(runtime_dir_override) - 16) {
                fprintf(stderr, "zkmemd: --runtime-dir is too long (at most %zu bytes)\n",
                        sizeof(runtime_dir_override) - 16);
                return 2;
            }
            snprintf(runtime_dir_override, sizeof(runtime_dir_override), "%s", optarg);
            break;
        case 'p':
            *print_config = 1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("zkmemd %s (protocol %d..%d)\n", ZKMEM_VERSION_STRING, ZKM_PROTO_VERSION_MIN,
                   ZKM_PROTO_VERSION_MAX);
            exit(0);
        case ':':
            fprintf(stderr, "zkmemd: option '%s' needs a value (see zkmemd --help)\n",
                    argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "zkmemd: unknown option '%s' (see zkmemd --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "zkmemd: unexpected argument '%s' (see zkmemd --help)\n", argv[optind]);
        return 2;
    }
    return 0;
}

static int load_config(void)
{
    char err[512];
    zkm_config_defaults(&cfg);
    if (!config_given && access(DEFAULT_CONFIG, F_OK) == 0)
        config_path = DEFAULT_CONFIG;
    if (config_path && zkm_config_load_file(&cfg, config_path, 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "zkmemd: %s\n", err);
        return 2;
    }
    if (runtime_dir_override[0])
        snprintf(cfg.runtime_dir, sizeof(cfg.runtime_dir), "%s", runtime_dir_override);
    if (strlen(cfg.runtime_dir) + sizeof("/zkmemd.sock") >
        sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "zkmemd: runtime_dir '%s' is too long for a socket path\n",
                cfg.runtime_dir);
        return 2;
    }
    return 0;
}

static int mkdir_p(const char *dir)
{
    char path[ZKM_CONFIG_STR_MAX];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int lock_fd = -1;

/* One daemon per runtime dir: it holds the lease table and the socket. */
static int lock_runtime_dir(void)
{
    char path[ZKM_CONFIG_STR_MAX + 16];
    int err = mkdir_p(cfg.runtime_dir);
    if (err) {
        zkm_log(ZKM_LOG_ERR, "cannot create runtime directory %s: %s", cfg.runtime_dir,
                strerror(-err));
        return err;
    }
    snprintf(path, sizeof(path), "%s/zkmemd.lock", cfg.runtime_dir);
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
        zkm_log(ZKM_LOG_ERR, "another zkmemd is running with runtime dir %s (lock %s held)",
                cfg.runtime_dir, path);
        return -EBUSY;
    }
    return 0;
}

/* The listening socket: from systemd when socket-activated, else our own. */
static int open_listener(int *ret_fd)
{
    int n = sd_listen_fds(1);
    if (n > 1) {
        zkm_log(ZKM_LOG_ERR, "systemd passed %d sockets; zkmemd.socket must have exactly one", n);
        return -EINVAL;
    }
    if (n == 1) {
        int fd = SD_LISTEN_FDS_START;
        if (sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) <= 0) {
            zkm_log(ZKM_LOG_ERR, "the socket systemd passed is not a listening SOCK_SEQPACKET "
                                 "unix socket (ListenSequentialPacket= in zkmemd.socket)");
            return -EINVAL;
        }
        zkm_log(ZKM_LOG_INFO, "listening on the socket passed by systemd");
        *ret_fd = fd;
        return 0;
    }

    char path[ZKM_CONFIG_STR_MAX + 16];
    int err;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(path, sizeof(path), "%s/zkmemd.sock", cfg.runtime_dir);
    memcpy(sa.sun_path, path, strlen(path) + 1); /* length checked in load_config() */
    unlink(sa.sun_path); /* stale: we hold the lock, so no daemon serves it */
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(sa.sun_path, 0666) < 0 ||
        listen(fd, SOMAXCONN) < 0) {
        err = -errno;
        zkm_log(ZKM_LOG_ERR, "cannot listen on %s: %s", sa.sun_path, strerror(-err));
        close(fd);
        return err;
    }
    zkm_log(ZKM_LOG_INFO, "listening on %s", sa.sun_path);
    *ret_fd = fd;
    return 0;
}

int main(int argc, char **argv)
{
    int print_config = 0, rc;
    char err[512];

    rc = parse_args(argc, argv, &print_config);
    if (rc)
        return rc;
    rc = load_config();
    if (rc)
        return rc;
    if (print_config) {
        zkm_config_print(&cfg, stdout);
        return 0;
    }
    zkm_log_set_level((int)cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    start_ms = mono_ms();
    zkm_log(ZKM_LOG_INFO, "zkmemd %s starting (config: %s)", ZKMEM_VERSION_STRING,
            config_path ? config_path : "embedded defaults");

    if (zkm_topology_load(&topo, err, sizeof(err)) != 0) {
        zkm_log(ZKM_LOG_ERR, "topology: %s", err);
        return 1;
    }
    char desc[1024];
    zkm_topology_describe(&topo, desc, sizeof(desc));
    zkm_log(ZKM_LOG_INFO, "topology: %s", desc);
    if (topo.simulated)
        zkm_fallback(ZKM_FB_SIMULATED_NODES,
                     "simulated topology (%s): %u logical nodes, pages placed on the real "
                     "kernel nodes they map to",
                     topo.source, topo.n_nodes);

    if (!cfg.enable_bpf)
        zkm_log(ZKM_LOG_INFO, "eBPF observer off (enable_bpf = no)");
    else if (zkm_observer_init(topo.cpu_node, topo.n_cpus, err, sizeof(err)) == 0)
        zkm_log(ZKM_LOG_INFO, "%s", err);
    else
        zkm_fallback(ZKM_FB_BPF_UNAVAILABLE,
                     "%s; running without the eBPF observer (page-fault and placement "
                     "figures in zkmemctl clients stay 0)",
                     err);

    rc = 1;
    if (lock_runtime_dir() != 0)
        return 1;
    if (zkm_arenas_init(&cfg, &topo, err, sizeof(err)) != 0) {
        zkm_log(ZKM_LOG_ERR, "arenas: %s", err);
        goto out_arenas;
    }
    zkm_arena_recovery_start(mono_ms(), cfg.recovery_ms);
    if (zkm_sessions_init(&cfg) != 0)
        goto out_sessions;
    int lfd = -1;
    if (open_listener(&lfd) != 0)
        goto out_sessions;
    struct zkm_loop_hooks hooks = {.tick = tick,
                                   .reload = reload,
                                   .refuse = zkm_sessions_refuse_fd,
                                   .backlog = zkm_sessions_backlog};
    if (zkm_loop_init(lfd, loop_period_ms(), &hooks) != 0)
        goto out_listener;

    uint64_t cap = 0;
    for (uint32_t i = 0; i < zkm_arena_count(); i++)
        cap += zkm_arena_get(i)->capacity;
    char status[256];
    snprintf(status, sizeof(status), "STATUS=serving %u node(s), %llu MiB of %s", topo.n_nodes,
             (unsigned long long)((cap * zkm_arena_slab_size()) >> 20),
             zkm_arena_backing() == ZKM_BACKING_HUGETLB ? "hugepages" : "FALLBACK small pages");
    zkm_log(ZKM_LOG_INFO, "ready: %s", status + 7);
    sd_notifyf(0, "READY=1\n%s\nMAINPID=%d", status, (int)getpid());
    if (sd_watchdog_enabled(0, &watchdog_usec) <= 0)
        watchdog_usec = 0;

    rc = zkm_loop_run() == 0 ? 0 : 1;
    sd_notify(0, "STOPPING=1");

    zkm_loop_fini();
out_listener:
    close(lfd);
    if (lock_fd >= 0 && sd_listen_fds(0) <= 0) {
        char path[ZKM_CONFIG_STR_MAX + 16];
        snprintf(path, sizeof(path), "%s/zkmemd.sock", cfg.runtime_dir);
        unlink(path);
    }
out_sessions:
    zkm_sessions_fini();
    zkm_observer_fini();
out_arenas:
    zkm_arenas_fini();
    zkm_log(ZKM_LOG_INFO, "zkmemd stopped");
    return rc;
}
