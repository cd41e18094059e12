/* SPDX-License-Identifier: MIT */
/*
 * gen-corpus.c - write the seed corpora for fuzz-proto and fuzz-config.
 *
 *   build/tests/fuzz/fuzz-gen-corpus tests/fuzz/corpus
 *
 * writes tests/fuzz/corpus/proto/seed-* (one valid message of every type in the input
 * framing of fuzz-proto.c, a few invalid ones, control-block images) and
 * tests/fuzz/corpus/config/seed-* (formatted configs and broken lines). Messages are
 * built from the real structs in zkm_proto.h, so the seeds follow the layout.
 */
#include "zkm_config.h"
#include "zkm_proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *outdir;

static void emit(const char *sub, const char *name, const void *a, size_t alen, const void *b,
                 size_t blen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s/seed-%s", outdir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(a, 1, alen, f) != alen || (blen && fwrite(b, 1, blen, f) != blen) ||
        fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* fuzz-proto message framing: [0]=mode (even), [1]=fds, [2]=from_daemon | version << 1 */
static void emit_msg(const char *name, const void *msg, size_t len, unsigned fds, int from_daemon)
{
    uint8_t pre[3] = {0, (uint8_t)fds, (uint8_t)(from_daemon | 1 << 1)};
    emit("proto", name, pre, sizeof(pre), msg, len);
}

static void hdr(void *m, uint16_t type)
{
    struct zkm_hdr h = {ZKM_PROTO_MAGIC, type == ZKM_MSG_HELLO ? 0 : 1, type,
                        (uint32_t)zkm_msg_size(type), 1};
    memcpy(m, &h, sizeof(h));
}

static void gen_messages(void)
{
    struct zkm_msg_hello hello = {0};
    hdr(&hello, ZKM_MSG_HELLO);
    hello.version_min = hello.version_max = 1;
    strcpy(hello.comm, "seed");
    hello.want_depth = 4;
    emit_msg("hello", &hello, sizeof(hello), 0, 0);
    hello.flags = ZKM_HELLO_CTL;
    emit_msg("hello-ctl", &hello, sizeof(hello), 0, 0);
    hello.flags = ZKM_HELLO_REATTACH;
    hello.reattach_id = 12;
    emit_msg("hello-reattach", &hello, sizeof(hello), 2, 0);
    hello.flags = 0;
    hello.reattach_id = 0;

    struct zkm_msg_hello_reply hr = {0};
    hdr(&hr, ZKM_MSG_HELLO_REPLY);
    hr.version = hr.version_max = 1;
    hr.client_id = 3;
    hr.n_nodes = 2;
    hr.n_fds = 3;
    hr.slab_size = 2u << 20;
    hr.ctrl_size = ZKM_CTRL_SIZE;
    hr.backing = ZKM_BACKING_HUGETLB;
    hr.node_bytes[0] = 32ull << 21;
    hr.node_bytes[1] = 16ull << 21;
    emit_msg("hello-reply", &hr, sizeof(hr), 3, 1);
    hr.status = -EPROTONOSUPPORT;
    hr.n_fds = 0;
    emit_msg("hello-reply-refused", &hr, sizeof(hr), 0, 1);

    struct zkm_msg_acquire acq = {0};
    hdr(&acq, ZKM_MSG_ACQUIRE);
    acq.node = ZKM_NODE_ANY;
    acq.count = 4;
    emit_msg("acquire", &acq, sizeof(acq), 0, 0);
    acq.count = 0;
    emit_msg("acquire-count0", &acq, sizeof(acq), 0, 0);

    struct zkm_msg_acquire_reply ar = {0};
    hdr(&ar, ZKM_MSG_ACQUIRE_REPLY);
    ar.count = 3;
    ar.flags = 5;
    for (uint32_t i = 0; i < 3; i++)
        ar.handles[i] = zkm_handle_make(i, 10 + i);
    emit_msg("acquire-reply", &ar, sizeof(ar), 0, 1);
    ar.status = -EDQUOT;
    ar.count = 0;
    emit_msg("acquire-reply-edquot", &ar, sizeof(ar), 0, 1);

    struct zkm_msg_release rel = {0};
    hdr(&rel, ZKM_MSG_RELEASE);
    rel.count = 5;
    for (uint32_t i = 0; i < 5; i++)
        rel.handles[i] = zkm_handle_make(i & 1, i);
    emit_msg("release", &rel, sizeof(rel), 0, 0);
    emit_msg("release-with-fd", &rel, sizeof(rel), 1, 0);

    struct zkm_msg_status_reply st = {0};
    hdr(&st, ZKM_MSG_STATUS_REPLY);
    st.value = 5;
    emit_msg("status-reply", &st, sizeof(st), 0, 1);
    emit_msg("status-reply-wrong-direction", &st, sizeof(st), 0, 0);

    struct zkm_msg_query q = {0};
    hdr(&q, ZKM_MSG_QUERY);
    q.kind = ZKM_QUERY_CLIENTS;
    emit_msg("query", &q, sizeof(q), 0, 0);

    static struct zkm_msg_query_reply qr;
    hdr(&qr, ZKM_MSG_QUERY_REPLY);
    qr.kind = ZKM_QUERY_ARENAS;
    qr.count = qr.total = 2;
    emit_msg("query-reply", &qr, sizeof(qr), 0, 1);
    qr.kind = ZKM_QUERY_CONFIG;
    qr.count = qr.total = ZKM_QUERY_PAYLOAD_MAX;
    emit_msg("query-reply-config-full", &qr, sizeof(qr), 0, 1);

    struct zkm_msg_admin ad = {0};
    hdr(&ad, ZKM_MSG_ADMIN);
    ad.op = ZKM_ADMIN_TUNE_SET;
    strcpy(ad.key, "grant_depth");
    strcpy(ad.value, "8");
    emit_msg("admin", &ad, sizeof(ad), 0, 0);

    /* invalid framing */
    emit_msg("truncated-hello", &hello, sizeof(hello) - 5, 0, 0);
    struct zkm_msg_acquire bad = acq;
    bad.count = 2;
    bad.hdr.magic ^= 0x100;
    emit_msg("bad-magic", &bad, sizeof(bad), 0, 0);
    emit_msg("header-only", &acq, sizeof(struct zkm_hdr), 0, 0);
}

/* fuzz-proto control-block framing: [0]=odd, 48 seed bytes, then the ctrl image */
static void gen_ctrl(void)
{
    static struct zkm_ctrl c;
    uint8_t pre[1 + 48] = {1};
    uint32_t base = 0xfffffff0u;
    memcpy(pre + 1, &base, 4);
    for (int i = 0; i < ZKM_MAX_NODES; i++)
        pre[1 + 12 + i] = (uint8_t)(4 * i); /* tail - head per ring */
    uint32_t ret_head = 0xffffff00u;
    memcpy(pre + 1 + 20, &ret_head, 4);
    pre[1 + 24] = 32;  /* drain max */
    pre[1 + 25] = 1;   /* 2 nodes */
    pre[1 + 26] = 100; /* node 0 slabs */
    pre[1 + 27] = 50;

    /* consistent image: heads where the daemon expects them, 10 returns queued */
    c.magic = ZKM_CTRL_MAGIC;
    c.version = 1;
    c.size = ZKM_CTRL_SIZE;
    c.n_nodes = 2;
    for (int i = 0; i < ZKM_MAX_NODES; i++) {
        c.grant[i].head = base + (uint32_t)i * 2;
        c.grant[i].tail = base + (uint32_t)i * 4;
    }
    c.ret.head = ret_head;
    c.ret.tail = ret_head + 10;
    for (uint32_t i = 0; i < 10; i++)
        c.ret.slot[(ret_head + i) % ZKM_RETURN_CAP] = zkm_handle_make(i & 1, i * 7);
    emit("proto", "ctrl-consistent", pre, sizeof(pre), &c, sizeof(c));
    /* scribbles: head behind, head past tail, return tail far ahead */
    c.grant[3].head = base - 1;
    c.grant[5].head = base + 100;
    c.ret.tail = ret_head + ZKM_RETURN_CAP + 1;
    emit("proto", "ctrl-scribbled", pre, sizeof(pre), &c, sizeof(c));
    emit("proto", "ctrl-seed-only", pre, sizeof(pre), NULL, 0);
}

static void emit_text(const char *name, int mode, const char *text)
{
    uint8_t pre = (uint8_t)mode;
    emit("config", name, &pre, 1, text, strlen(text));
}

static void gen_config(void)
{
    static char buf[64 * 1024];
    struct zkm_config cfg;
    zkm_config_defaults(&cfg);
    if (zkm_config_format(&cfg, buf, sizeof(buf), 1) < 0)
        exit(1);
    /* mode bit 0: for_daemon; bit 1: with_docs; bits 2-7: errlen - 1 (63: 256) */
    emit_text("defaults-all-keys", 0xfc | 1, buf);
    emit_text("daemon", 0xfc | 1,
              "# zkmemd.conf\n"
              "runtime_dir = /run/zkmem\n"
              "mode = monitoring\n"
              "slab_pages = 2\n"
              "hugepages_per_node = 64\n"
              "memory_budget_mb = 4096   # per uid\n"
              "grant_depth = 8\n"
              "require_hugepages = yes\n"
              "enable_bpf = off\n"
              "log_level = debug\n"
              "admin_group = 'wheel'\n");
    emit_text("client", 0xfc | 2,
              "mode = high_performance\nsmall_threshold = 128\ntcache_small = 512\n"
              "require_daemon = true\nsocket = \"/tmp/zk # sock\"\n");
    emit_text("unknown-key", 0xfc | 1, "slab_page = 2\n");
    emit_text("out-of-range", 0xfc | 1, "grant_depth = 900\n");
    emit_text("duplicate", 0xfc | 1, "tick_ms = 5\n\ntick_ms = 6\n");
    emit_text("unterminated-quote", 0xfc | 1, "runtime_dir = \"/run/x\n");
    emit_text("scope", 0xfc | 1, "tcache_small = 3\n");
    emit_text("bad-enum", 1 << 2 | 1, "mode = turbo\n");
    emit_text("no-equals", 8 << 2 | 1, "enable_compaction\n");
    emit_text("crlf-and-tabs", 0xfc | 1, "\tdecay_ms\t=\t250\r\n  # note\r\n");
    /* also fed to zkm_config_from_env() line by line */
    emit_text("environment", 0xfc,
              "ZKMEM_MODE=monitoring\nZKMEM_TCACHE_SMALL=12\nZKMEM_SMALL_THRESHOLD=9\n"
              "ZKMEM_SOCKET=/tmp/zk.sock\nZKMEM_DAEMON=/usr/sbin/zkmemd\nZKMEM_GRANT_DEPTH=3\n"
              "PATH=/bin\nZKMEM_REQUIRE_DAEMON=On\n");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR  (writes CORPUS_DIR/{proto,config}/seed-*)\n",
                argv[0]);
        return 2;
    }
    outdir = argv[1];
    gen_messages();
    gen_ctrl();
    gen_config();
    return 0;
}
