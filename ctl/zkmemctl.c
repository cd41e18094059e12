/* SPDX-License-Identifier: MIT */
/*
 * zkmemctl.c - command line of zkmemctl: parse arguments, run one command against zkmemd.
 *
 * Arguments are checked completely before the socket is touched, so a usage error is
 * always exit 1 whatever the daemon's state. Options may appear before or after the
 * command. Output: human tables on stdout by default, or with --json exactly one JSON
 * document; errors are one line on stderr (conn.c prints the protocol ones).
 */
#include "ctl.h"
#include "zkm_config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: zkmemctl [--socket PATH] [--json] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  status                        daemon status\n"
    "  arenas [--map]                per-node arenas; --map draws each node's slab map\n"
    "  clients                       connected clients, largest first\n"
    "  stats [--client PID] [--prometheus]\n"
    "                                status, arenas and clients in one view\n"
    "  config                        the daemon's effective configuration\n"
    "  top                           live view, refreshed every second ('q' quits)\n"
    "  advise [--client PID]         each client's allocation pattern, with its evidence,\n"
    "                                and what to change (budget, tuning, hugepages)\n"
    "  compact                       run a compaction pass now (admin)\n"
    "  reserve --node N --pages P    reserve P hugepages on node N (admin)\n"
    "  tune get KEY                  show one configuration value\n"
    "  tune set KEY VALUE            change a configuration value at run time (admin)\n"
    "\n"
    "options:\n"
    "  --socket PATH   zkmemd's control socket (default: $ZKMEM_SOCKET, else " ZKM_DEFAULT_SOCKET
    ")\n"
    "  --json          print one JSON document instead of tables\n"
    "  -h, --help      show this help\n"
    "  --version       show the version\n"
    "\n"
    "exit status: 0 ok, 1 usage error, 2 zkmemd unreachable, 3 protocol error or version\n"
    "mismatch, 4 permission denied, 5 zkmemd returned an error\n";

struct opts {
    const char *socket;
    int json, map, prometheus;
    int have_client, have_node, have_pages;
    int32_t client_pid;
    int32_t node;
    int64_t pages;
    const char *args[4];
    int n_args;
};

static int usage_error(const char *fmt, const char *what)
{
    fputs("zkmemctl: ", stderr);
    fprintf(stderr, fmt, what);
    fputs("\n", stderr);
    fputs(usage_text, stderr);
    return CTL_USAGE;
}

static int parse_num(const char *s, int64_t min, int64_t max, int64_t *ret)
{
    char *end;
    if (!s || !*s || *s == '+' || *s == ' ')
        return -EINVAL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

/* Value of --opt VALUE or --opt=VALUE; advances *i. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (*i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

static int opt_is(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    int64_t v;
    const char *val;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(CTL_OK);
        } else if (strcmp(a, "--version") == 0) {
            printf("zkmemctl %s (protocol %d..%d)\n", ZKM_VERSION, ZKM_PROTO_VERSION_MIN,
                   ZKM_PROTO_VERSION_MAX);
            exit(CTL_OK);
        } else if (strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if (strcmp(a, "--map") == 0) {
            o->map = 1;
        } else if (strcmp(a, "--prometheus") == 0) {
            o->prometheus = 1;
        } else if (opt_is(a, "--socket")) {
            val = opt_value(argc, argv, &i, "--socket");
            if (!val || !*val)
                return usage_error("option '%s' needs a path", "--socket");
            o->socket = val;
        } else if (opt_is(a, "--client")) {
            val = opt_value(argc, argv, &i, "--client");
            if (parse_num(val, 1, INT32_MAX, &v) < 0)
                return usage_error("option '%s' needs a process id", "--client");
            o->client_pid = (int32_t)v;
            o->have_client = 1;
        } else if (opt_is(a, "--node")) {
            val = opt_value(argc, argv, &i, "--node");
            if (parse_num(val, 0, ZKM_MAX_NODES - 1, &v) < 0)
                return usage_error("option '%s' needs a node number from 0 to 7", "--node");
            o->node = (int32_t)v;
            o->have_node = 1;
        } else if (opt_is(a, "--pages")) {
            val = opt_value(argc, argv, &i, "--pages");
            if (parse_num(val, 0, 1048576, &v) < 0)
                return usage_error("option '%s' needs a number of hugepages (0..1048576)",
                                   "--pages");
            o->pages = v;
            o->have_pages = 1;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s'", a);
        } else {
            if (o->n_args == (int)(sizeof(o->args) / sizeof(o->args[0])))
                return usage_error("unexpected argument '%s'", a);
            o->args[o->n_args++] = a;
        }
    }
    return CTL_OK;
}

/* Which options each command takes. */
enum { ALLOW_JSON = 1, ALLOW_MAP = 2, ALLOW_PROM = 4, ALLOW_CLIENT = 8, ALLOW_NODE_PAGES = 16 };

struct command {
    const char *name;
    int n_args; /* positional arguments after the name (tune: 2 or 3, checked there) */
    int allow;
    int (*run)(struct ctl_conn *c, const struct opts *o);
};

static int check_allowed(const struct command *cmd, const struct opts *o)
{
    if (o->json && !(cmd->allow & ALLOW_JSON))
        return usage_error("'%s' has no --json output", cmd->name);
    if (o->map && !(cmd->allow & ALLOW_MAP))
        return usage_error("option --map belongs to 'arenas', not '%s'", cmd->name);
    if (o->prometheus && !(cmd->allow & ALLOW_PROM))
        return usage_error("option --prometheus belongs to 'stats', not '%s'", cmd->name);
    if (o->prometheus && o->json)
        return usage_error("choose one of --json and --prometheus%s", "");
    if (o->have_client && !(cmd->allow & ALLOW_CLIENT))
        return usage_error("option --client belongs to 'stats' and 'advise', not '%s'", cmd->name);
    if ((o->have_node || o->have_pages) && !(cmd->allow & ALLOW_NODE_PAGES))
        return usage_error("options --node and --pages belong to 'reserve', not '%s'", cmd->name);
    return CTL_OK;
}

/* ------------------------------------------------------------------------------------ */

static int cmd_status(struct ctl_conn *c, const struct opts *o)
{
    struct ctl_snapshot s;
    int r = ctl_snapshot_get(c, 0, &s);
    if (r != CTL_OK)
        return r;
    if (o->json) {
        fputs("{\n  \"status\": ", stdout);
        render_status_json(stdout, &s.status, 2);
        fputs("\n}\n", stdout);
    } else {
        render_fallback_warning(stdout, &s.status);
        render_status_human(stdout, &s.status);
    }
    ctl_snapshot_free(&s);
    return CTL_OK;
}

static int cmd_map(struct ctl_conn *c, const struct opts *o, const struct zkm_arena_info *a,
                   size_t n)
{
    if (o->json)
        fputs("{\n  \"maps\": [\n", stdout);
    for (size_t i = 0; i < n; i++) {
        void *map = NULL;
        size_t bytes = 0;
        int r = ctl_query(c, ZKM_QUERY_MAP, (int32_t)a[i].node, &map, &bytes);
        if (r != CTL_OK)
            return r;
        if (o->json) {
            render_map_json(stdout, &a[i], map, bytes, i == 0);
        } else {
            if (i)
                fputc('\n', stdout);
            render_map_human(stdout, &a[i], map, bytes);
        }
        free(map);
    }
    if (o->json)
        fputs("\n  ]\n}\n", stdout);
    else
        printf("\nlegend: '%c' free  '%c' pre-granted (in a client's grant ring)  '%c' held by "
               "a client  '%c' cached (returned, pages kept for its uid until decay_ms)  '?' "
               "unknown; 64 slabs a row\n",
               ZKM_SLOT_FREE, ZKM_SLOT_PREGRANTED, ZKM_SLOT_HELD, ZKM_SLOT_CACHED);
    return CTL_OK;
}

static int cmd_arenas(struct ctl_conn *c, const struct opts *o)
{
    struct ctl_snapshot s;
    int r = ctl_snapshot_get(c, 0, &s);
    if (r != CTL_OK)
        return r;
    if (o->map) {
        if (!o->json)
            render_fallback_warning(stdout, &s.status);
        r = cmd_map(c, o, s.arenas, s.n_arenas);
    } else if (o->json) {
        fputs("{\n  \"arenas\": ", stdout);
        render_arenas_json(stdout, s.arenas, s.n_arenas, 2);
        fputs("\n}\n", stdout);
    } else {
        render_fallback_warning(stdout, &s.status);
        render_arenas_human(stdout, s.arenas, s.n_arenas);
    }
    ctl_snapshot_free(&s);
    return r;
}

/* Keep only the clients of pid (the daemon filters too; this guards an old daemon). */
static size_t filter_pid(struct zkm_client_info *cl, size_t n, int32_t pid)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (cl[i].pid == pid)
            cl[k++] = cl[i];
    return k;
}

static int cmd_clients(struct ctl_conn *c, const struct opts *o)
{
    void *buf = NULL;
    size_t n = 0;
    int r = ctl_query(c, ZKM_QUERY_CLIENTS, 0, &buf, &n);
    if (r != CTL_OK)
        return r;
    clients_sort(buf, n);
    if (o->json) {
        fputs("{\n  \"clients\": ", stdout);
        render_clients_json(stdout, buf, n, 2);
        fputs("\n}\n", stdout);
    } else {
        render_clients_human(stdout, buf, n);
    }
    free(buf);
    return CTL_OK;
}

static int cmd_stats(struct ctl_conn *c, const struct opts *o)
{
    struct ctl_snapshot s;
    int r = ctl_snapshot_get(c, o->have_client ? o->client_pid : 0, &s);
    if (r != CTL_OK)
        return r;
    if (o->have_client)
        s.n_clients = filter_pid(s.clients, s.n_clients, o->client_pid);
    clients_sort(s.clients, s.n_clients);
    if (o->prometheus) {
        render_prometheus(stdout, &s);
    } else if (o->json) {
        fputs("{\n  \"status\": ", stdout);
        render_status_json(stdout, &s.status, 2);
        fputs(",\n  \"arenas\": ", stdout);
        render_arenas_json(stdout, s.arenas, s.n_arenas, 2);
        fputs(",\n  \"clients\": ", stdout);
        render_clients_json(stdout, s.clients, s.n_clients, 2);
        fputs("\n}\n", stdout);
    } else {
        render_fallback_warning(stdout, &s.status);
        fputs("STATUS\n", stdout);
        render_status_human(stdout, &s.status);
        fputs("\nARENAS\n", stdout);
        render_arenas_human(stdout, s.arenas, s.n_arenas);
        fputs("\nCLIENTS\n", stdout);
        if (o->have_client && s.n_clients == 0)
            printf("no zkmem client with pid %" PRId32 "\n", o->client_pid);
        else
            render_clients_human(stdout, s.clients, s.n_clients);
    }
    ctl_snapshot_free(&s);
    return CTL_OK;
}

static int cmd_config(struct ctl_conn *c, const struct opts *o)
{
    void *text = NULL;
    size_t n = 0;
    int r = ctl_query(c, ZKM_QUERY_CONFIG, 0, &text, &n);
    if (r != CTL_OK)
        return r;
    if (o->json) {
        fputs("{\n  \"config\": ", stdout);
        render_config_json(stdout, text);
        fputs("\n}\n", stdout);
    } else {
        fputs(text, stdout);
        if (n && ((char *)text)[n - 1] != '\n')
            fputc('\n', stdout);
    }
    free(text);
    return CTL_OK;
}

static int cmd_compact(struct ctl_conn *c, const struct opts *o)
{
    uint32_t value = 0;
    int r = ctl_admin(c, ZKM_ADMIN_COMPACT, 0, 0, NULL, NULL, &value);
    if (r != CTL_OK)
        return r;
    if (o->json)
        printf("{\n  \"ok\": true,\n  \"op\": \"compact\",\n  \"value\": %" PRIu32 "\n}\n", value);
    else
        printf("compaction pass done: %" PRIu32 " slabs released\n", value);
    return CTL_OK;
}

static int cmd_reserve(struct ctl_conn *c, const struct opts *o)
{
    uint32_t value = 0;
    int r = ctl_admin(c, ZKM_ADMIN_RESERVE, o->node, o->pages, NULL, NULL, &value);
    if (r != CTL_OK)
        return r;
    if (o->json)
        printf("{\n  \"ok\": true,\n  \"op\": \"reserve\",\n  \"node\": %" PRId32
               ",\n  \"pages\": %" PRId64 ",\n  \"value\": %" PRIu32 "\n}\n",
               o->node, o->pages, value);
    else
        printf("node %" PRId32 ": asked for %" PRId64 " hugepages, zkmemd reports %" PRIu32 "\n",
               o->node, o->pages, value);
    return CTL_OK;
}

/* Check a key (and value) against the local key table: usage errors before any I/O. */
static int check_key(const char *key, const char *value)
{
    struct zkm_config scratch;
    char err[256];
    if (strlen(key) >= sizeof(((struct zkm_msg_admin *)0)->key) ||
        (value && strlen(value) >= sizeof(((struct zkm_msg_admin *)0)->value)))
        return usage_error("tune: key or value too long for the protocol (%s)", key);
    zkm_config_defaults(&scratch);
    if (zkm_config_set(&scratch, key, value ? value : "", 1, err, sizeof(err)) == 0)
        return CTL_OK;
    /* for `get`, only an unknown or client-only key is an error, not the empty value */
    if (!value && !strstr(err, "unknown key") && !strstr(err, "client setting"))
        return CTL_OK;
    fprintf(stderr, "zkmemctl: %s\n", err);
    return CTL_USAGE;
}

static int cmd_tune(struct ctl_conn *c, const struct opts *o)
{
    const char *sub = o->args[1], *key = o->args[2], *value = o->args[3];

    if (strcmp(sub, "set") == 0) {
        int r;
        uint32_t v = 0;
        r = ctl_admin(c, ZKM_ADMIN_TUNE_SET, 0, 0, key, value, &v);
        if (r != CTL_OK)
            return r;
        if (o->json) {
            fputs("{\n  \"ok\": true,\n  \"op\": \"tune_set\",\n  \"key\": ", stdout);
            json_string(stdout, key, 64);
            fputs(",\n  \"value\": ", stdout);
            json_string(stdout, value, 64);
            fputs("\n}\n", stdout);
        } else {
            printf("%s = %s\n", key, value);
        }
        return CTL_OK;
    }

    /* get: read the daemon's effective configuration and pick the key's line */
    if (o->n_args != 3)
        return usage_error("usage: zkmemctl tune get KEY%s", "");
    int r;
    void *text = NULL;
    size_t n = 0;
    r = ctl_query(c, ZKM_QUERY_CONFIG, 0, &text, &n);
    if (r != CTL_OK)
        return r;
    size_t kl = strlen(key);
    const char *line = NULL;
    for (const char *s = text; *s;) {
        const char *e = strchr(s, '\n');
        if (!e)
            e = s + strlen(s);
        if (strncmp(s, key, kl) == 0 && (s[kl] == ' ' || s[kl] == '=')) {
            line = s;
            break;
        }
        s = *e ? e + 1 : e;
    }
    if (!line) {
        fprintf(stderr, "zkmemctl: zkmemd does not report '%s' in its configuration\n", key);
        free(text);
        return CTL_DAEMON;
    }
    size_t len = strcspn(line, "\n");
    char one[1024];
    snprintf(one, sizeof(one), "%.*s", (int)len, line);
    char *doc = strstr(one, "  #");
    if (o->json) {
        fputs("{\n  \"config\": ", stdout);
        render_config_json(stdout, one);
        fputs("\n}\n", stdout);
    } else {
        if (doc)
            *doc = '\0';
        printf("%s\n", one);
    }
    free(text);
    return CTL_OK;
}

/* The daemon's effective configuration, for the keys the advice looks at. */
static int advise_env_get(struct ctl_conn *c, struct advise_env *env)
{
    void *text = NULL;
    size_t n = 0;
    int r = ctl_query(c, ZKM_QUERY_CONFIG, 0, &text, &n);
    if (r != CTL_OK)
        return r;
    advise_env_from_config(env, text);
    free(text);
    return CTL_OK;
}

static int cmd_advise(struct ctl_conn *c, const struct opts *o)
{
    int32_t pid = o->have_client ? o->client_pid : 0;
    struct ctl_snapshot s;
    struct advise_env env;
    void *buf = NULL;
    size_t n = 0;
    int r = ctl_snapshot_get(c, pid, &s);
    if (r != CTL_OK)
        return r;
    r = advise_env_get(c, &env);
    if (r == CTL_OK)
        r = ctl_query(c, ZKM_QUERY_ADVICE, pid, &buf, &n);
    if (r != CTL_OK) {
        ctl_snapshot_free(&s);
        return r;
    }
    if (o->have_client)
        n = advice_filter_pid(buf, n, pid);
    if (o->json) {
        fputs("{\n  \"clients\": ", stdout);
        render_advice_json(stdout, buf, n, &s, &env, 2);
        fputs("\n}\n", stdout);
    } else if (n == 0 && o->have_client) {
        printf("no zkmem client with pid %" PRId32 "\n", pid);
    } else if (n == 0) {
        printf("no clients connected\n");
    } else {
        render_advice_human(stdout, buf, n, &s, &env);
    }
    free(buf);
    ctl_snapshot_free(&s);
    return CTL_OK;
}

static int cmd_top(struct ctl_conn *c, const struct opts *o)
{
    return ctl_top(c, o->socket);
}

static const struct command commands[] = {
    {"status", 0, ALLOW_JSON, cmd_status},
    {"arenas", 0, ALLOW_JSON | ALLOW_MAP, cmd_arenas},
    {"clients", 0, ALLOW_JSON, cmd_clients},
    {"stats", 0, ALLOW_JSON | ALLOW_PROM | ALLOW_CLIENT, cmd_stats},
    {"config", 0, ALLOW_JSON, cmd_config},
    {"top", 0, 0, cmd_top},
    {"advise", 0, ALLOW_JSON | ALLOW_CLIENT, cmd_advise},
    {"compact", 0, ALLOW_JSON, cmd_compact},
    {"reserve", 0, ALLOW_JSON | ALLOW_NODE_PAGES, cmd_reserve},
    {"tune", -1, ALLOW_JSON, cmd_tune},
};

int main(int argc, char **argv)
{
    struct opts o = {0};
    const struct command *cmd = NULL;
    struct ctl_conn c;
    int r;

    r = parse_args(argc, argv, &o);
    if (r != CTL_OK)
        return r;
    if (o.n_args == 0)
        return usage_error("no command given%s", "");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(o.args[0], commands[i].name) == 0)
            cmd = &commands[i];
    if (!cmd)
        return usage_error("unknown command '%s'", o.args[0]);
    if (cmd->n_args >= 0 && o.n_args != 1 + cmd->n_args)
        return usage_error("unexpected argument '%s'", o.args[1 + cmd->n_args]);
    if (cmd->n_args < 0) { /* tune */
        if (o.n_args < 2 || (strcmp(o.args[1], "get") != 0 && strcmp(o.args[1], "set") != 0))
            return usage_error("'tune' takes 'get KEY' or 'set KEY VALUE'%s", "");
        if (strcmp(o.args[1], "get") == 0 && o.n_args != 3)
            return usage_error("usage: zkmemctl tune get KEY%s", "");
        if (strcmp(o.args[1], "set") == 0 && o.n_args != 4)
            return usage_error("usage: zkmemctl tune set KEY VALUE%s", "");
        r = check_key(o.args[2], o.n_args == 4 ? o.args[3] : NULL);
        if (r != CTL_OK)
            return r;
    }
    r = check_allowed(cmd, &o);
    if (r != CTL_OK)
        return r;
    if ((cmd->allow & ALLOW_NODE_PAGES) && (!o.have_node || !o.have_pages))
        return usage_error("'%s' needs --node N and --pages P", cmd->name);

    if (!o.socket) {
        const char *env = getenv("ZKMEM_SOCKET");
        o.socket = env && *env ? env : ZKM_DEFAULT_SOCKET;
    }
    r = ctl_connect(&c, o.socket);
    if (r != CTL_OK)
        return r;
    r = cmd->run(&c, &o);
    ctl_close(&c);
    if (fflush(stdout) != 0 && r == CTL_OK) {
        fprintf(stderr, "zkmemctl: cannot write the output: %s\n", strerror(errno));
        r = CTL_DAEMON;
    }
    return r;
}
