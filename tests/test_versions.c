/* test_versions.c: model versions that are durable and verified
 * (server/learn/versions.h), and broken weights that never reach a client
 * as numbers.
 *
 * In process (TCase disk), on a registry over a temporary DATA:
 *   - a save writes vN/version.json with the size and CRC-32C of every
 *     file, and a restart verifies it;
 *   - flipped bytes in a version's weights: the load is refused with
 *     "checksum mismatch" naming the file, at open (when current) and on a
 *     rollback, and the directory is kept;
 *   - a version saved before checksums (no version.json) still loads;
 *   - an empty vN directory is moved aside, never fatal;
 *   - `current` naming a missing version: open refuses, naming it;
 *   - the fault seam (EMBEDD_FAULT_FILE_REPLACE=current): rollback, publish
 *     and promote fail, nothing switches, `current` is unchanged, and a
 *     restart comes back on the old version;
 *   - emb_embed_ids on NaN or infinite weights fails instead of answering.
 * Against the real binary (TCase server; $EMBEDD_BIN, a loopback port):
 *   - POST /train/rollback with the fault seam: 500 with the reason, the
 *     served version and `current` unchanged, a restart on the old one;
 *   - a current version with corrupt weights: the server refuses to start,
 *     naming the file;
 *   - a model whose weights are NaN: /embed, /v1/embeddings (base64) and a
 *     text /similar answer 500 naming the cause, never vectors or a 422. */
#include <check.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "common/strbuf.h"
#include "learn/versions.h"
#include "safetensors.h"
#include "run_suite.h"
#include "testutil.h"

#define TINY "tests/fixtures/tiny-dense"

static char dir[64];
static emb_model *base;

static void setup(void)
{
    emb_err err;
    unsetenv("EMBEDD_FAULT_FILE_REPLACE");
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
    base = emb_model_load(TINY, &err);
    ck_assert_msg(base != NULL, "%s", err.msg);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
    emb_model_free(base);
    unsetenv("EMBEDD_FAULT_FILE_REPLACE");
}

static int hook_calls;

static int on_change(void *ctx, uint32_t id, emb_err *err)
{
    (void)ctx;
    (void)id;
    (void)err;
    hook_calls++;
    return 0;
}

static versions *open_data(void)
{
    emb_err err;
    versions *v = versions_open(dir, TINY, base, 3, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    versions_hooks hooks = {.on_change = on_change};
    versions_set_hooks(v, &hooks);
    hook_calls = 0;
    return v;
}

/* Version id: base's weights with one changed, saved (not handed over). */
static emb_model *save_version(versions *v, uint32_t id)
{
    emb_err err;
    emb_model *m = emb_model_clone(base, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    m->params[0] += 0.25f * (float)id;
    ck_assert_msg(emb_model_pack(m, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_save(v, id, m, NULL, &err) == 0, "%s", err.msg);
    return m;
}

static void save_and_publish(versions *v, uint32_t id)
{
    emb_err err;
    emb_model *m = save_version(v, id);
    ck_assert_msg(versions_publish_saved(v, m, id, &err) == 0, "%s", err.msg);
}

static unsigned read_number(const char *name)
{
    char path[160];
    snprintf(path, sizeof path, "%s/models/%s", dir, name);
    char *s = tu_read_file(path, NULL);
    ck_assert_msg(s != NULL, "no %s", path);
    unsigned id = (unsigned)strtoul(s, NULL, 10);
    free(s);
    return id;
}

static void write_current(unsigned id)
{
    char path[160], line[16];
    snprintf(path, sizeof path, "%s/models/current", dir);
    int n = snprintf(line, sizeof line, "%u\n", id);
    ck_assert_int_eq(tu_write_file(path, line, (size_t)n), 0);
}

static int exists(const char *rel)
{
    char path[300];
    snprintf(path, sizeof path, "%s/models/%s", dir, rel);
    struct stat st;
    return stat(path, &st) == 0;
}

/* Overwrites 64 bytes in the middle of DATA/models/<rel> with 0xFF. */
static void corrupt(const char *rel)
{
    char path[300];
    snprintf(path, sizeof path, "%s/models/%s", dir, rel);
    size_t len = 0;
    char *s = tu_read_file(path, &len);
    ck_assert_msg(s != NULL && len > 256, "no %s", path);
    memset(s + len / 2, 0xFF, 64);
    ck_assert_int_eq(tu_write_file(path, s, len), 0);
    free(s);
}

/* The manifest entry of `name` in DATA/models/v{id}/version.json. */
static cJSON *manifest_entry(uint32_t id, const char *name, cJSON **root)
{
    char path[300];
    snprintf(path, sizeof path, "%s/models/v%u/version.json", dir, id);
    char *text = tu_read_file(path, NULL);
    ck_assert_msg(text != NULL, "no %s", path);
    *root = cJSON_Parse(text);
    free(text);
    ck_assert_msg(*root != NULL, "%s is not JSON", path);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(*root, "files");
    cJSON *f;
    cJSON_ArrayForEach(f, files) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(f, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
            return f;
    }
    return NULL;
}

/* ---- in process ----------------------------------------------------------- */

START_TEST(test_manifest_written_and_verified)
{
    versions *v = open_data();
    save_and_publish(v, 2);
    versions_free(v);
    ck_assert(!exists("v2.tmp-stage")); /* nothing staged is left */

    cJSON *root;
    cJSON *f = manifest_entry(2, "model.safetensors", &root);
    ck_assert_msg(f != NULL, "version.json lists no model.safetensors");
    char path[300];
    snprintf(path, sizeof path, "%s/models/v2/model.safetensors", dir);
    size_t len = 0;
    char *bytes = tu_read_file(path, &len);
    ck_assert(bytes != NULL);
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", emb_crc32c(0, bytes, len));
    free(bytes);
    ck_assert_double_eq(cJSON_GetObjectItemCaseSensitive(f, "bytes")->valuedouble, (double)len);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(f, "crc32c")->valuestring, hex);
    cJSON_Delete(root);
    /* so are the config and the Dense modules' weights */
    ck_assert_ptr_nonnull(manifest_entry(2, "config.json", &root));
    cJSON_Delete(root);
    ck_assert_ptr_nonnull(manifest_entry(2, "2_Dense/model.safetensors", &root));
    cJSON_Delete(root);

    /* a restart verifies and serves it */
    v = open_data();
    ck_assert_uint_eq(versions_current_id(v), 2);
    model_version *mv = versions_current(v);
    ck_assert_float_eq(mv->model->params[0],
                       emb_f16_to_f32(emb_f32_to_f16(base->params[0] + 0.5f)));
    versions_release(v, mv);
    versions_free(v);
}
END_TEST

/* A version moves between replicas as one archive (versions_archive.c):
 * another registry imports it, verifies it and adopts it as current with
 * the same weights; a second import is a no-op; unsafe or cut archives are
 * refused and leave nothing behind. */
START_TEST(test_archive_moves_a_version)
{
    emb_err err;
    versions *v = open_data();
    emb_model *m = save_version(v, 2);
    float want = m->params[0];
    emb_model_free(m);
    strbuf arch;
    sb_init(&arch, 1u << 30);
    ck_assert_msg(versions_export(v, 2, &arch, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(versions_export(v, 7, &arch, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_NOT_FOUND);
    versions_free(v);

    char other[64];
    tu_mkdtemp(other, sizeof other);
    versions *w = versions_open(other, TINY, base, 3, &err);
    ck_assert_msg(w != NULL, "%s", err.msg);
    ck_assert_msg(versions_import(w, 2, arch.buf, arch.len, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_import(w, 2, arch.buf, arch.len, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_adopt(w, 2, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(w), 2);
    model_version *mv = versions_current(w);
    ck_assert_float_eq(mv->model->params[0], want);
    versions_release(w, mv);

    /* cut short: refused, and no v3 appears */
    ck_assert_int_eq(versions_import(w, 3, arch.buf, arch.len / 2, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_INVALID);
    char path[160];
    snprintf(path, sizeof path, "%s/models/v3", other);
    ck_assert_int_ne(access(path, F_OK), 0);
    /* a path that climbs out of the version's directory */
    strbuf bad;
    sb_init(&bad, 1024);
    sb_puts(&bad, "EMBV1\n");
    const char name[] = "../evil";
    unsigned char len4[4] = {sizeof name - 1, 0, 0, 0}, size8[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    sb_append(&bad, (const char *)len4, 4);
    sb_append(&bad, name, sizeof name - 1);
    sb_append(&bad, (const char *)size8, 8);
    sb_putc(&bad, 'x');
    ck_assert_int_eq(versions_import(w, 4, bad.buf, bad.len, &err), -1);
    ck_assert_msg(strstr(err.msg, "unsafe path") != NULL, "%s", err.msg);
    snprintf(path, sizeof path, "%s/models/evil", other);
    ck_assert_int_ne(access(path, F_OK), 0);
    sb_free(&bad);
    versions_free(w);
    sb_free(&arch);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", other);
    tu_run(cmd);
}
END_TEST

START_TEST(test_corrupt_weights_refused)
{
    emb_err err;
    versions *v = open_data();
    save_and_publish(v, 2);
    save_and_publish(v, 3);
    versions_free(v);
    corrupt("v3/model.safetensors");

    /* current names it: no silent fallback, the reason names the file */
    ck_assert_ptr_null(versions_open(dir, TINY, base, 3, &err));
    ck_assert_msg(strstr(err.msg, "v3/model.safetensors: checksum mismatch (expected ") != NULL,
                  "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "models/current") != NULL, "%s", err.msg);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    ck_assert_uint_eq(read_number("current"), 3);

    /* the operator points current at 2: it serves; 3 is refused on a
     * rollback with the real error, and stays on disk for a look */
    write_current(2);
    v = open_data();
    ck_assert_uint_eq(versions_current_id(v), 2);
    ck_assert_ptr_null(versions_get(v, 3));
    ck_assert_int_eq(versions_rollback(v, 3, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    ck_assert_msg(strstr(err.msg, "model version 3") != NULL &&
                      strstr(err.msg, "v3/model.safetensors: checksum mismatch") != NULL,
                  "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 2);
    ck_assert_uint_eq(read_number("current"), 2);
    ck_assert_int_eq(hook_calls, 0);
    ck_assert(exists("v3/model.safetensors"));
    versions_free(v);

    /* a truncated file is a size mismatch */
    char path[300];
    snprintf(path, sizeof path, "%s/models/v2/model.safetensors", dir);
    ck_assert_int_eq(truncate(path, 100), 0);
    ck_assert_ptr_null(versions_open(dir, TINY, base, 3, &err));
    ck_assert_msg(strstr(err.msg, "v2/model.safetensors: size mismatch") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_pre_checksum_version_accepted)
{
    versions *v = open_data();
    save_and_publish(v, 2);
    versions_free(v);
    char path[300];
    snprintf(path, sizeof path, "%s/models/v2/version.json", dir);
    ck_assert_int_eq(unlink(path), 0);
    v = open_data();
    ck_assert_uint_eq(versions_current_id(v), 2);
    model_version *mv = versions_current(v);
    ck_assert_float_eq(mv->model->params[0],
                       emb_f16_to_f32(emb_f32_to_f16(base->params[0] + 0.5f)));
    versions_release(v, mv);
    /* and a rollback away and back loads it from memory or disk alike */
    emb_err err;
    ck_assert_msg(versions_rollback(v, 1, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_rollback(v, 2, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(read_number("current"), 2);
    versions_free(v);
}
END_TEST

START_TEST(test_incomplete_dir_ignored)
{
    versions *v = open_data();
    save_and_publish(v, 2);
    versions_free(v);
    char path[300];
    snprintf(path, sizeof path, "%s/models/v3", dir);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    v = open_data();
    ck_assert_uint_eq(versions_current_id(v), 2);
    ck_assert(!exists("v3"));
    snprintf(path, sizeof path, "ls -d %s/models/v3.incomplete-* > /dev/null 2>&1", dir);
    ck_assert_msg(tu_run(path) == 0, "v3 was not moved aside");
    versions_free(v);

    /* without a `current` file, the newest complete version is served, not
     * a stray empty one */
    snprintf(path, sizeof path, "%s/models/current", dir);
    ck_assert_int_eq(unlink(path), 0);
    snprintf(path, sizeof path, "%s/models/v4", dir);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    v = open_data();
    ck_assert_uint_eq(versions_current_id(v), 2);
    versions_free(v);
}
END_TEST

START_TEST(test_current_names_missing_version)
{
    emb_err err;
    versions *v = open_data();
    save_and_publish(v, 2);
    versions_free(v);
    write_current(7);
    ck_assert_ptr_null(versions_open(dir, TINY, base, 3, &err));
    ck_assert_int_eq(err.kind, EMB_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "models/current names model version 7") != NULL &&
                      strstr(err.msg, "models/v7 does not exist") != NULL &&
                      strstr(err.msg, "saved: 2, 1") != NULL,
                  "%s", err.msg);
    ck_assert_uint_eq(read_number("current"), 7);
}
END_TEST

START_TEST(test_fault_seam_nothing_switches)
{
    emb_err err;
    versions *v = open_data();
    save_and_publish(v, 2);
    save_and_publish(v, 3);
    int calls = hook_calls;

    setenv("EMBEDD_FAULT_FILE_REPLACE", "current", 1);
    /* rollback to one in memory */
    ck_assert_int_eq(versions_rollback(v, 2, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    ck_assert_msg(strstr(err.msg, "model version 2 not made current (still serving 3)") != NULL &&
                      strstr(err.msg, "Input/output error") != NULL,
                  "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 3);
    ck_assert_uint_eq(read_number("current"), 3);
    ck_assert_int_eq(hook_calls, calls);
    /* ... and to the base (not in memory: loaded, then refused) */
    ck_assert_int_eq(versions_rollback(v, 1, &err), -1);
    ck_assert_uint_eq(versions_current_id(v), 3);
    /* an auto publish: saved, numbered, not current */
    emb_model *m = save_version(v, 4);
    ck_assert_int_eq(versions_publish_saved(v, m, 4, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    ck_assert_msg(strstr(err.msg, "model version 4 saved but not published") != NULL, "%s",
                  err.msg);
    ck_assert_uint_eq(versions_current_id(v), 3);
    ck_assert_uint_eq(versions_latest_id(v), 4);
    ck_assert_uint_eq(read_number("current"), 3);
    /* a promotion: the pending version stays pending */
    m = save_version(v, 5);
    ck_assert_int_eq(versions_candidate(v, m, 5, 3, "passed", &err), 0);
    ck_assert_uint_eq(versions_pending_id(v), 5);
    uint32_t got = 0;
    ck_assert_int_eq(versions_promote(v, 0, &got, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    ck_assert_uint_eq(versions_current_id(v), 3);
    ck_assert_uint_eq(versions_pending_id(v), 5);
    ck_assert_uint_eq(read_number("current"), 3);
    ck_assert_int_eq(hook_calls, calls);
    versions_free(v);

    /* a restart comes back on the version that was served */
    unsetenv("EMBEDD_FAULT_FILE_REPLACE");
    v = open_data();
    ck_assert_uint_eq(versions_current_id(v), 3);
    ck_assert_uint_eq(versions_pending_id(v), 5);
    ck_assert_msg(versions_promote(v, 5, &got, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(read_number("current"), 5);
    versions_free(v);

    /* a manifest that cannot be written: the save fails, nothing is left */
    setenv("EMBEDD_FAULT_FILE_REPLACE", "latest,version.json", 1);
    v = open_data();
    m = emb_model_clone(base, &err);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(versions_save(v, 6, m, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "version.json") != NULL, "%s", err.msg);
    emb_model_free(m);
    ck_assert(!exists("v6"));
    char cmd[300];
    snprintf(cmd, sizeof cmd, "ls -d %s/models/v6* > /dev/null 2>&1", dir);
    ck_assert_msg(tu_run(cmd) != 0, "a staging directory was left");
    versions_free(v);
}
END_TEST

START_TEST(test_non_finite_outputs_fail)
{
    emb_err err;
    const float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 2; k++) {
        emb_model *m = emb_model_clone(base, &err);
        ck_assert_ptr_nonnull(m);
        size_t n = emb_encoder_floats(&m->cfg);
        for (size_t i = 0; i < n; i++)
            m->params[i] = bad[k];
        ck_assert_msg(emb_model_pack(m, &err) == 0, "%s", err.msg);
        emb_workspace *ws = emb_workspace_new(m, 64, &err);
        ck_assert_ptr_nonnull(ws);
        const int32_t ids[4] = {101, 2000, 2001, 102};
        const int lens[1] = {4};
        float out[64];
        for (int norm = 0; norm < 2; norm++) {
            out[0] = 7.0f;
            ck_assert_int_eq(emb_embed_ids(m, ws, ids, lens, 1, m->cfg.pooling, norm, out, &err),
                             -1);
            ck_assert_int_eq(err.kind, EMB_ERR_FAILED);
            ck_assert_str_eq(err.msg, "model produced non-finite values");
        }
        emb_workspace_free(ws);
        emb_model_free(m);
    }
    /* the intact model still embeds */
    emb_workspace *ws = emb_workspace_new(base, 64, &err);
    const int32_t ids[4] = {101, 2000, 2001, 102};
    const int lens[1] = {4};
    float out[64];
    ck_assert_msg(emb_embed_ids(base, ws, ids, lens, 1, base->cfg.pooling, 1, out, &err) == 0,
                  "%s", err.msg);
    ck_assert(isfinite(out[0]));
    emb_workspace_free(ws);
}
END_TEST

/* ---- against the real binary ---------------------------------------------- */

typedef struct proc {
    pid_t pid;
    int port;
    char log[300];             /* its stderr */
} proc;

static const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Starts `embedd serve --model model --port 0 ARGS...` with env (NULL
 * ends; "NAME=value" entries added to a copy of ours). Returns 0 once it
 * listens, 1 when it exited first (*status gets its wait status), -1 on a
 * timeout. */
static int start(proc *p, const char *model, const char *const *args, const char *env_add,
                 int *status)
{
    memset(p, 0, sizeof *p);
    snprintf(p->log, sizeof p->log, "%s/server.log", dir);
    const char *argv[32];
    int a = 0;
    argv[a++] = embedd_bin();
    argv[a++] = "serve";
    argv[a++] = "--model";
    argv[a++] = model;
    argv[a++] = "--host";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--port";
    argv[a++] = "0";
    for (int i = 0; args[i] != NULL && a < 31; i++)
        argv[a++] = args[i];
    argv[a] = NULL;
    unlink(p->log); /* never read an earlier run's port */
    pid_t parent = getpid();
    p->pid = fork();
    ck_assert_int_ge(p->pid, 0);
    if (p->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(nul, 1);
        unsetenv("EMBEDD_FAULT_FILE_REPLACE");
        if (env_add != NULL)
            putenv((char *)env_add);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    const char *marker = "listening on http://127.0.0.1:";
    double deadline = now_s() + 20;
    while (now_s() < deadline) {
        char *text = tu_read_file(p->log, NULL);
        const char *at = text != NULL ? strstr(text, marker) : NULL;
        if (at != NULL && strchr(at, '\n') != NULL)
            p->port = atoi(at + strlen(marker));
        free(text);
        if (p->port > 0)
            return 0;
        if (waitpid(p->pid, status, WNOHANG) == p->pid) {
            p->pid = 0;
            return 1;
        }
        usleep(20000);
    }
    return -1;
}

static void stop(proc *p)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, SIGTERM);
    double deadline = now_s() + 15;
    int st;
    while (waitpid(p->pid, &st, WNOHANG) == 0) {
        if (now_s() > deadline) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            break;
        }
        usleep(10000);
    }
    p->pid = 0;
}

static size_t collect(char *data, size_t size, size_t n, void *user)
{
    strbuf *b = user;
    sb_append(b, data, size * n);
    return size * n;
}

/* One request; returns the status (0 on a transport error); *body gets the
 * answer (the caller frees it). */
static long request(const proc *p, const char *method, const char *path, const char *json,
                    char **body)
{
    CURL *c = curl_easy_init();
    ck_assert_ptr_nonnull(c);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", p->port, path);
    strbuf b;
    sb_init(&b, 1 << 20);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (json != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    *body = sb_take(&b, NULL);
    return status;
}

/* /info's model_version. */
static int served_version(const proc *p)
{
    char *body;
    ck_assert_int_eq(request(p, "GET", "/info", NULL, &body), 200);
    cJSON *j = cJSON_Parse(body);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "model_version");
    int id = cJSON_IsNumber(v) ? v->valueint : -1;
    cJSON_Delete(j);
    free(body);
    return id;
}

static const char *const TRAIN_ARGS[] = {"--data", dir, "--train", "on", "--train-paused",
                                         "true", NULL};

START_TEST(test_server_rollback_not_saved_is_an_error)
{
    versions *v = open_data();
    save_and_publish(v, 2);
    save_and_publish(v, 3);
    versions_free(v);

    proc p;
    int st;
    ck_assert_int_eq(start(&p, TINY, TRAIN_ARGS, "EMBEDD_FAULT_FILE_REPLACE=current", &st), 0);
    ck_assert_int_eq(served_version(&p), 3);
    char *body;
    long code = request(&p, "POST", "/train/rollback", "{\"version\":2}", &body);
    ck_assert_msg(code == 500 && strstr(body, "not made current (still serving 3)") != NULL,
                  "%ld %s", code, body);
    free(body);
    ck_assert_int_eq(served_version(&p), 3);
    ck_assert_uint_eq(read_number("current"), 3);
    stop(&p);

    /* a restart comes back on 3; without the fault the rollback is saved */
    ck_assert_int_eq(start(&p, TINY, TRAIN_ARGS, NULL, &st), 0);
    ck_assert_int_eq(served_version(&p), 3);
    code = request(&p, "POST", "/train/rollback", "{\"version\":2}", &body);
    ck_assert_msg(code == 200, "%ld %s", code, body);
    free(body);
    ck_assert_uint_eq(read_number("current"), 2);
    ck_assert_int_eq(served_version(&p), 2);
    stop(&p);
}
END_TEST

START_TEST(test_server_refuses_corrupt_current)
{
    versions *v = open_data();
    save_and_publish(v, 2);
    versions_free(v);
    corrupt("v2/model.safetensors");
    proc p;
    int st = 0;
    ck_assert_int_eq(start(&p, TINY, TRAIN_ARGS, NULL, &st), 1);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    char *log = tu_read_file(p.log, NULL);
    ck_assert_msg(log != NULL && strstr(log, "v2/model.safetensors: checksum mismatch") != NULL,
                  "%s", log);
    free(log);
}
END_TEST

/* A copy of tiny-f16 whose weights are all 0xFF bytes (NaN in F16). */
static void nan_model(char *out, size_t cap)
{
    snprintf(out, cap, "%s/nan-model", dir);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "cp -rL tests/fixtures/tiny-f16 %s", out);
    ck_assert_int_eq(tu_run(cmd), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    size_t len = 0;
    unsigned char *s = (unsigned char *)tu_read_file(path, &len);
    ck_assert(s != NULL && len > 8);
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--)
        header = header << 8 | s[i];
    ck_assert(8 + header < len);
    memset(s + 8 + header, 0xFF, len - 8 - header);
    ck_assert_int_eq(tu_write_file(path, s, len), 0);
    free(s);
}

START_TEST(test_server_nan_model_is_an_internal_error)
{
    char model[200];
    nan_model(model, sizeof model);
    const char *const args[] = {"--data", dir, "--train", "off", NULL};
    proc p;
    int st;
    ck_assert_int_eq(start(&p, model, args, NULL, &st), 0);
    const struct {
        const char *path, *body;
    } calls[] = {
        {"/embed", "{\"inputs\":\"hello world\"}"},
        {"/v1/embeddings", "{\"input\":\"hello world\",\"encoding_format\":\"base64\"}"},
        {"/similar", "{\"text\":\"hello world\"}"},
        {"/items", "{\"items\":[{\"id\":\"a\",\"text\":\"hello world\"}]}"},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        char *body;
        long code = request(&p, "POST", calls[i].path, calls[i].body, &body);
        ck_assert_msg(code == 500 &&
                          strstr(body, "model produced non-finite values (model version 1)") !=
                              NULL,
                      "%s: %ld %s", calls[i].path, code, body);
        free(body);
    }
    stop(&p);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    Suite *s = suite_create("versions");
    TCase *td = tcase_create("disk");
    tcase_add_checked_fixture(td, setup, teardown);
    tcase_add_test(td, test_manifest_written_and_verified);
    tcase_add_test(td, test_corrupt_weights_refused);
    tcase_add_test(td, test_archive_moves_a_version);
    tcase_add_test(td, test_pre_checksum_version_accepted);
    tcase_add_test(td, test_incomplete_dir_ignored);
    tcase_add_test(td, test_current_names_missing_version);
    tcase_add_test(td, test_fault_seam_nothing_switches);
    tcase_add_test(td, test_non_finite_outputs_fail);
    suite_add_tcase(s, td);
    TCase *ts = tcase_create("server");
    tcase_add_checked_fixture(ts, setup, teardown);
    tcase_set_timeout(ts, 120);
    tcase_add_test(ts, test_server_rollback_not_saved_is_an_error);
    tcase_add_test(ts, test_server_refuses_corrupt_current);
    tcase_add_test(ts, test_server_nan_model_is_an_internal_error);
    suite_add_tcase(s, ts);
    int rc = run_suite(s);
    curl_global_cleanup();
    return rc;
}
