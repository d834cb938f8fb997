/* test_hub.c: Hugging Face Hub downloads (server/hub/hub.c) against a mock hub.
 *
 * The mock is a libmicrohttpd daemon on 127.0.0.1 (a free port) inside the
 * test process. It serves tests/fixtures/tiny-f16 the way the Hub does:
 *   GET|HEAD /{org}/{name}/resolve/{revision}/{path}
 *     repos: org/tiny (public) and org/private (needs Bearer TOKEN);
 *     org/dense serves tests/fixtures/tiny-dense (the same weights, two
 *     Dense modules after pooling) and org/densebin the same without the
 *     Dense modules' model.safetensors (as if only pytorch_model.bin);
 *     revisions: main -> COMMIT_MAIN, v1.0 -> COMMIT_V1, or a commit itself;
 *     every answer carries X-Repo-Commit; small files answer 200 with an
 *     ETag (tokenizer.json a weak one); model.safetensors answers 302 to
 *     /cdn/MODEL_SHA with X-Linked-Etag and X-Linked-Size, like an LFS file;
 *     errors carry X-Error-Code like the Hub's.
 *   GET /cdn/MODEL_SHA: the weights, honouring "Range: bytes=N-"; while
 *     breaks_left > 0 a GET sends break_after bytes and drops the connection.
 * Every request is logged (method, URL, Range, Authorization) for the
 * tests to inspect. */
#include <arpa/inet.h>
#include <check.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <microhttpd.h>

#include "bert.h"
#include "hub/hub.h"
#include "run_suite.h"
#include "testutil.h"

#define FIXTURE "tests/fixtures/tiny-f16"
#define COMMIT_MAIN "0123456789abcdef0123456789abcdef01234567"
#define COMMIT_V1 "89abcdef0123456789abcdef0123456789abcdef"
#define MODEL_SHA "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"
#define TOKEN "hf_test_secret"
#define MAX_LOG 256

typedef struct logged {
    char method[8];
    char url[256];
    char range[64];
    char auth[96];
} logged;

typedef struct mock {
    struct MHD_Daemon *daemon;
    int port;
    pthread_mutex_t mu;
    logged log[MAX_LOG];
    int n_log;
    char *model;               /* the fixture's model.safetensors */
    size_t model_len;
    size_t break_after;        /* bytes a breaking GET sends before it drops */
    int breaks_left;           /* CDN GETs that still break off */
} mock;

static mock M;
static char tmpdir[256];
static hub_opts O;

/* ---- the mock hub ----------------------------------------------------- */

static void log_request(struct MHD_Connection *c, const char *method, const char *url)
{
    const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    pthread_mutex_lock(&M.mu);
    if (M.n_log < MAX_LOG) {
        logged *l = &M.log[M.n_log++];
        snprintf(l->method, sizeof l->method, "%s", method);
        snprintf(l->url, sizeof l->url, "%s", url);
        snprintf(l->range, sizeof l->range, "%s", range != NULL ? range : "");
        snprintf(l->auth, sizeof l->auth, "%s", auth != NULL ? auth : "");
    }
    pthread_mutex_unlock(&M.mu);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *code)
{
    static const char body[] = "{\"error\":\"mock\"}";
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
                                                             MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "X-Error-Code", code);
    MHD_add_response_header(r, "X-Error-Message", "mock says no");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* A deterministic 40-hex "git sha" of a file's bytes. */
static void fake_sha1(const char *data, size_t len, char out[41])
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)data[i]) * 1099511628211ull;
    snprintf(out, 41, "%016llx%016llx%08x", (unsigned long long)h,
             (unsigned long long)(h * 31), (unsigned)len);
}

typedef struct stream {
    size_t start;              /* offset in the model of the response's first byte */
    size_t limit;              /* bytes to send before dropping; SIZE_MAX: all */
} stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream *s = cls;
    if (pos >= s->limit)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = M.model_len - s->start - (size_t)pos;
    if (n > max)
        n = max;
    if (n > s->limit - (size_t)pos)
        n = s->limit - (size_t)pos;
    if (n > 8192)
        n = 8192;
    memcpy(buf, M.model + s->start + pos, n);
    return (ssize_t)n;
}

static enum MHD_Result serve_cdn(struct MHD_Connection *c, const char *url)
{
    if (strcmp(url, "/cdn/" MODEL_SHA) != 0)
        return send_error(c, 404, "EntryNotFound");
    const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
    size_t start = 0;
    if (range != NULL && sscanf(range, "bytes=%zu-", &start) != 1)
        return send_error(c, 400, "BadRange");
    if (start >= M.model_len)
        return send_error(c, 416, "RangeNotSatisfiable");
    stream *s = malloc(sizeof *s);
    s->start = start;
    s->limit = SIZE_MAX;
    pthread_mutex_lock(&M.mu);
    if (M.breaks_left > 0) {
        M.breaks_left--;
        s->limit = M.break_after;
    }
    pthread_mutex_unlock(&M.mu);
    struct MHD_Response *r =
        MHD_create_response_from_callback(M.model_len - start, 8192, stream_read, s, free);
    char cr[96];
    snprintf(cr, sizeof cr, "bytes %zu-%zu/%zu", start, M.model_len - 1, M.model_len);
    if (range != NULL)
        MHD_add_response_header(r, "Content-Range", cr);
    MHD_add_response_header(r, "ETag", "\"cdn-etag\"");
    enum MHD_Result ret = MHD_queue_response(c, range != NULL ? 206 : 200, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *commit_of(const char *rev)
{
    if (strcmp(rev, "main") == 0 || strcmp(rev, COMMIT_MAIN) == 0)
        return COMMIT_MAIN;
    if (strcmp(rev, "v1.0") == 0 || strcmp(rev, COMMIT_V1) == 0)
        return COMMIT_V1;
    return NULL;
}

/* The LFS answer: a redirect to the CDN with the file's metadata. */
static enum MHD_Result redirect_lfs(struct MHD_Connection *c, const char *commit)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    char size[32];
    snprintf(size, sizeof size, "%zu", M.model_len);
    MHD_add_response_header(r, "Location", "/cdn/" MODEL_SHA);
    MHD_add_response_header(r, "X-Repo-Commit", commit);
    MHD_add_response_header(r, "X-Linked-Etag", "\"" MODEL_SHA "\"");
    MHD_add_response_header(r, "X-Linked-Size", size);
    MHD_add_response_header(r, "ETag", "\"pointer-file-sha\"");
    enum MHD_Result ret = MHD_queue_response(c, 302, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result serve_file(struct MHD_Connection *c, const char *commit, const char *dir,
                                  const char *path)
{
    char full[512];
    size_t len = 0;
    snprintf(full, sizeof full, "%s/%s", dir, path);
    char *data = strstr(path, "..") == NULL ? tu_read_file(full, &len) : NULL;
    struct stat st;
    if (data == NULL || stat(full, &st) != 0 || !S_ISREG(st.st_mode)) {
        free(data);
        return send_error(c, 404, "EntryNotFound");
    }
    char sha[41], etag[64];
    fake_sha1(data, len, sha);
    snprintf(etag, sizeof etag, "%s\"%s\"", strcmp(path, "tokenizer.json") == 0 ? "W/" : "",
             sha);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "X-Repo-Commit", commit);
    MHD_add_response_header(r, "ETag", etag);
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* /{org}/{name}/resolve/{revision}/{path} */
static enum MHD_Result serve_resolve(struct MHD_Connection *c, const char *url)
{
    char org[64], name[64], rev[64];
    int used = 0;
    if (sscanf(url, "/%63[^/]/%63[^/]/resolve/%63[^/]/%n", org, name, rev, &used) != 3 ||
        used == 0)
        return send_error(c, 404, "RepoNotFound");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    int authorised = auth != NULL && strcmp(auth, "Bearer " TOKEN) == 0;
    const int dense = strcmp(name, "dense") == 0 || strcmp(name, "densebin") == 0;
    if (strcmp(org, "org") != 0 ||
        (strcmp(name, "tiny") != 0 && strcmp(name, "private") != 0 && !dense))
        return send_error(c, 404, "RepoNotFound");
    if (strcmp(name, "private") == 0 && !authorised)
        return send_error(c, 401, "RepoNotFound");
    const char *commit = commit_of(rev);
    if (commit == NULL)
        return send_error(c, 404, "RevisionNotFound");
    const char *path = url + used;
    if (strcmp(path, "model.safetensors") == 0)
        return redirect_lfs(c, commit); /* tiny-dense's is tiny-f16's */
    const char *slash = strchr(path, '/');
    if (strcmp(name, "densebin") == 0 && slash != NULL &&
        strcmp(slash, "/model.safetensors") == 0 && strstr(path, "_Dense/") != NULL)
        return send_error(c, 404, "EntryNotFound");
    return serve_file(c, commit, dense ? "tests/fixtures/tiny-dense" : FIXTURE, path);
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    if (*state == NULL) {
        *state = (void *)1;
        return MHD_YES;
    }
    log_request(c, method, url);
    if (strncmp(url, "/cdn/", 5) == 0)
        return serve_cdn(c, url);
    return serve_resolve(c, url);
}

static void mock_start(void)
{
    M.model = tu_read_file(FIXTURE "/model.safetensors", &M.model_len);
    ck_assert(M.model != NULL);
    pthread_mutex_init(&M.mu, NULL);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    M.daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                0, NULL, NULL, answer, NULL, MHD_OPTION_SOCK_ADDR, &addr,
                                MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    ck_assert(M.daemon != NULL);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(M.daemon, MHD_DAEMON_INFO_BIND_PORT);
    M.port = info->port;
}

static void mock_stop(void)
{
    if (M.daemon != NULL)
        MHD_stop_daemon(M.daemon);
    free(M.model);
    pthread_mutex_destroy(&M.mu);
    memset(&M, 0, sizeof M);
}

/* Requests logged since mark with this method and URL prefix. */
static int count_requests(int mark, const char *method, const char *prefix)
{
    int n = 0;
    pthread_mutex_lock(&M.mu);
    for (int i = mark; i < M.n_log; i++) {
        if (strcmp(M.log[i].method, method) == 0 &&
            strncmp(M.log[i].url, prefix, strlen(prefix)) == 0)
            n++;
    }
    pthread_mutex_unlock(&M.mu);
    return n;
}

static int log_mark(void)
{
    pthread_mutex_lock(&M.mu);
    int n = M.n_log;
    pthread_mutex_unlock(&M.mu);
    return n;
}

/* The Range header of the last CDN GET ("" when none). */
static void last_cdn_range(char *out, size_t cap)
{
    out[0] = '\0';
    pthread_mutex_lock(&M.mu);
    for (int i = 0; i < M.n_log; i++) {
        if (strcmp(M.log[i].method, "GET") == 0 && strncmp(M.log[i].url, "/cdn/", 5) == 0)
            snprintf(out, cap, "%s", M.log[i].range);
    }
    pthread_mutex_unlock(&M.mu);
}

/* ---- fixtures and helpers --------------------------------------------- */

static void setup(void)
{
    tu_mkdtemp(tmpdir, sizeof tmpdir);
    ck_assert(tmpdir[0] != '\0');
    mock_start();
    memset(&O, 0, sizeof O);
    snprintf(O.endpoint, sizeof O.endpoint, "http://127.0.0.1:%d", M.port);
    snprintf(O.cache_dir, sizeof O.cache_dir, "%s/hub", tmpdir);
    O.timeout_s = 5;
    O.retries = 2;
}

static void teardown(void)
{
    mock_stop();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    tu_run(cmd);
}

static int fetch(const char *id, char *out, emb_err *err)
{
    return hub_fetch(id, &O, out, PATH_MAX, err);
}

static void repo_path(char *out, size_t cap, const char *rel)
{
    snprintf(out, cap, "%s/hub/models--org--tiny/%s", tmpdir, rel);
}

static void assert_link(const char *snapshot, const char *name, const char *target)
{
    char path[PATH_MAX], got[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", snapshot, name);
    ssize_t n = readlink(path, got, sizeof got - 1);
    ck_assert_msg(n > 0, "%s is not a symlink", path);
    got[n] = '\0';
    ck_assert_msg(strncmp(got, target, strlen(target)) == 0, "%s -> %s, want %s...", name, got,
                  target);
}

static void assert_same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *da = tu_read_file(a, &la);
    char *db = tu_read_file(b, &lb);
    ck_assert_msg(da != NULL && db != NULL, "cannot read %s or %s", a, b);
    ck_assert_msg(la == lb && memcmp(da, db, la) == 0, "%s differs from %s", a, b);
    free(da);
    free(db);
}

/* dir/name, asserting that it fits. */
static void join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    ck_assert(n > 0 && (size_t)n < cap);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Embeds one text with the model in dir into out (C floats). */
static int embed_one(const char *dir, float *out, int cap)
{
    emb_err err;
    emb_model *m = emb_model_load(dir, &err);
    ck_assert_msg(m != NULL, "%s: %s", dir, err.msg);
    int32_t ids[64];
    const char *text = "The quick brown fox jumps over the lazy dog.";
    int n = emb_encode(m->tok, text, strlen(text), 64, 0, ids, NULL);
    ck_assert_int_gt(n, 2);
    emb_workspace *ws = emb_workspace_new(m, 64, &err);
    ck_assert(ws != NULL);
    int C = emb_model_dim(m);
    ck_assert_int_le(C, cap);
    ck_assert_int_eq(emb_embed_ids(m, ws, ids, &n, 1, m->cfg.pooling, 1, out, &err), 0);
    emb_workspace_free(ws);
    emb_model_free(m);
    return C;
}

/* ---- tests ------------------------------------------------------------ */

START_TEST(test_download_layout)
{
    char dir[PATH_MAX], want[PATH_MAX], path[PATH_MAX];
    emb_err err;
    ck_assert_msg(fetch("org/tiny", dir, &err) == 0, "%s", err.msg);
    repo_path(want, sizeof want, "snapshots/" COMMIT_MAIN);
    ck_assert_str_eq(dir, want);

    repo_path(path, sizeof path, "refs/main");
    char *ref = tu_read_file(path, NULL);
    ck_assert(ref != NULL);
    ck_assert_str_eq(ref, COMMIT_MAIN);
    free(ref);

    static const char *const files[] = {
        "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "modules.json", "sentence_bert_config.json", "model.safetensors",
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        assert_link(dir, files[i], "../../blobs/");
        char a[PATH_MAX], b[PATH_MAX];
        join(a, sizeof a, dir, files[i]);
        snprintf(b, sizeof b, FIXTURE "/%s", files[i]);
        assert_same_file(a, b);
    }
    assert_link(dir, "1_Pooling/config.json", "../../../blobs/");
    assert_link(dir, "model.safetensors", "../../blobs/" MODEL_SHA);
    /* W/ and quotes stripped from the weak ETag of tokenizer.json */
    char target[PATH_MAX];
    join(path, sizeof path, dir, "tokenizer.json");
    ssize_t n = readlink(path, target, sizeof target - 1);
    target[n > 0 ? n : 0] = '\0';
    ck_assert_msg(strchr(target, '"') == NULL && strstr(target, "W/") == NULL, "%s", target);

    /* tokenizer.json exists, so vocab.txt is not fetched; a 404 leaves a
     * .no_exist marker; no partial file is left. */
    join(path, sizeof path, dir, "vocab.txt");
    ck_assert(!exists(path));
    repo_path(path, sizeof path, ".no_exist/" COMMIT_MAIN "/config_sentence_transformers.json");
    ck_assert(exists(path));
    repo_path(path, sizeof path, "blobs/" MODEL_SHA ".incomplete");
    ck_assert(!exists(path));
    ck_assert_int_eq(count_requests(0, "GET", "/cdn/"), 1);

    float a[256], b[256];
    int C = embed_one(dir, a, 256);
    ck_assert_int_eq(embed_one(FIXTURE, b, 256), C);
    ck_assert(memcmp(a, b, sizeof(float) * (size_t)C) == 0);
}
END_TEST

START_TEST(test_second_run_downloads_nothing)
{
    char dir[PATH_MAX], again[PATH_MAX];
    emb_err err;
    ck_assert_msg(fetch("org/tiny", dir, &err) == 0, "%s", err.msg);
    int mark = log_mark();
    ck_assert_msg(fetch("org/tiny", again, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(dir, again);
    ck_assert_int_eq(count_requests(mark, "GET", "/"), 0);
    ck_assert_int_gt(count_requests(mark, "HEAD", "/org/tiny/resolve/"), 0);
}
END_TEST

START_TEST(test_resume_within_one_run)
{
    char dir[PATH_MAX], path[PATH_MAX], range[64];
    emb_err err;
    M.break_after = 700000;
    M.breaks_left = 1;
    ck_assert_msg(fetch("org/tiny", dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(count_requests(0, "GET", "/cdn/"), 2);
    last_cdn_range(range, sizeof range);
    long from = -1;
    ck_assert_msg(sscanf(range, "bytes=%ld-", &from) == 1 && from > 0 && from <= 700000,
                  "range '%s'", range);
    join(path, sizeof path, dir, "model.safetensors");
    assert_same_file(path, FIXTURE "/model.safetensors");
}
END_TEST

START_TEST(test_resume_next_run)
{
    char dir[PATH_MAX], path[PATH_MAX], range[64];
    emb_err err;
    M.break_after = 500000;
    M.breaks_left = 100;
    O.retries = 1;
    ck_assert_int_ne(fetch("org/tiny", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "cannot reach") != NULL, "%s", err.msg);
    repo_path(path, sizeof path, "blobs/" MODEL_SHA ".incomplete");
    size_t part = 0;
    char *data = tu_read_file(path, &part);
    ck_assert_msg(data != NULL && part > 0 && part < M.model_len, "partial %zu", part);
    ck_assert(memcmp(data, M.model, part) == 0);
    free(data);
    repo_path(path, sizeof path, "blobs/" MODEL_SHA);
    ck_assert(!exists(path));
    repo_path(path, sizeof path, "refs/main");
    ck_assert(!exists(path)); /* the ref is written once the snapshot is complete */

    M.breaks_left = 0;
    int mark = log_mark();
    ck_assert_msg(fetch("org/tiny", dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(count_requests(mark, "GET", "/cdn/"), 1);
    last_cdn_range(range, sizeof range);
    char want[64];
    snprintf(want, sizeof want, "bytes=%zu-", part);
    ck_assert_str_eq(range, want);
    join(path, sizeof path, dir, "model.safetensors");
    assert_same_file(path, FIXTURE "/model.safetensors");
    repo_path(path, sizeof path, "blobs/" MODEL_SHA ".incomplete");
    ck_assert(!exists(path));
}
END_TEST

START_TEST(test_unauthorised_mentions_token)
{
    char dir[PATH_MAX];
    emb_err err;
    ck_assert_int_ne(fetch("org/private", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "401") != NULL && strstr(err.msg, "HF_TOKEN") != NULL, "%s",
                  err.msg);

    O.token = TOKEN;
    int mark = log_mark();
    ck_assert_msg(fetch("org/private", dir, &err) == 0, "%s", err.msg);
    pthread_mutex_lock(&M.mu);
    for (int i = mark; i < M.n_log; i++)
        ck_assert_str_eq(M.log[i].auth, "Bearer " TOKEN);
    pthread_mutex_unlock(&M.mu);
}
END_TEST

START_TEST(test_not_found)
{
    char dir[PATH_MAX];
    emb_err err;
    ck_assert_int_ne(fetch("org/nothing", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "no model org/nothing") != NULL, "%s", err.msg);
    ck_assert_int_ne(fetch("org/tiny@no-such-branch", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "no revision 'no-such-branch'") != NULL, "%s", err.msg);
    ck_assert_int_ne(fetch("not a model id", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "ORG/NAME") != NULL, "%s", err.msg);
    ck_assert_int_ne(fetch("org/../x", dir, &err), 0);
    ck_assert_int_ne(fetch("org/tiny@../../x", dir, &err), 0);
}
END_TEST

/* A model with Dense modules: their folders come along; without their
 * model.safetensors the download says what to do. */
START_TEST(test_dense_modules)
{
    char dir[PATH_MAX], path[PATH_MAX];
    emb_err err;
    ck_assert_msg(fetch("org/dense", dir, &err) == 0, "%s", err.msg);
    static const char *const files[] = {"2_Dense/config.json", "2_Dense/model.safetensors",
                                        "3_Dense/config.json", "3_Dense/model.safetensors",
                                        "1_Pooling/config.json", "modules.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char want[PATH_MAX];
        join(path, sizeof path, dir, files[i]);
        snprintf(want, sizeof want, "tests/fixtures/tiny-dense/%s", files[i]);
        assert_same_file(path, want);
    }
    float a[256], b[256];
    ck_assert_int_eq(embed_one(dir, a, 256), 16);
    ck_assert_int_eq(embed_one("tests/fixtures/tiny-dense", b, 256), 16);
    ck_assert(memcmp(a, b, sizeof(float) * 16) == 0);

    ck_assert_int_ne(fetch("org/densebin", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "org/densebin@main: the Dense module in 2_Dense has no "
                                  "model.safetensors") != NULL &&
                  strstr(err.msg, "re-saved as safetensors") != NULL, "%s", err.msg);
}
END_TEST

/* A port nothing listens on. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ck_assert(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    ck_assert(getsockname(fd, (struct sockaddr *)&addr, &len) == 0);
    close(fd);
    return ntohs(addr.sin_port);
}

START_TEST(test_unreachable)
{
    char dir[PATH_MAX];
    emb_err err;
    snprintf(O.endpoint, sizeof O.endpoint, "http://127.0.0.1:%d", closed_port());
    ck_assert_int_ne(fetch("org/tiny", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "cannot reach") != NULL &&
                      strstr(err.msg, "/org/tiny/resolve/main/config.json") != NULL,
                  "%s", err.msg);
}
END_TEST

START_TEST(test_offline)
{
    char dir[PATH_MAX], cached[PATH_MAX];
    emb_err err;
    O.offline = 1;
    ck_assert_int_ne(fetch("org/tiny", dir, &err), 0);
    ck_assert_msg(strstr(err.msg, "HF_HUB_OFFLINE") != NULL &&
                      strstr(err.msg, "not in the cache") != NULL,
                  "%s", err.msg);
    ck_assert_int_eq(log_mark(), 0);

    O.offline = 0;
    ck_assert_msg(fetch("org/tiny", dir, &err) == 0, "%s", err.msg);
    O.offline = 1;
    int mark = log_mark();
    ck_assert_msg(fetch("org/tiny", cached, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(dir, cached);
    ck_assert_msg(fetch("org/tiny@" COMMIT_MAIN, cached, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(dir, cached);
    ck_assert_int_ne(fetch("org/tiny@v1.0", cached, &err), 0);
    ck_assert_int_eq(log_mark(), mark); /* no network at all */

    /* Online but the Hub is unreachable: the cached snapshot is used. */
    O.offline = 0;
    snprintf(O.endpoint, sizeof O.endpoint, "http://127.0.0.1:%d", closed_port());
    ck_assert_msg(fetch("org/tiny", cached, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(dir, cached);
}
END_TEST

START_TEST(test_revision)
{
    char dir[PATH_MAX], want[PATH_MAX], path[PATH_MAX];
    emb_err err;
    ck_assert_msg(fetch("org/tiny@v1.0", dir, &err) == 0, "%s", err.msg);
    repo_path(want, sizeof want, "snapshots/" COMMIT_V1);
    ck_assert_str_eq(dir, want);
    repo_path(path, sizeof path, "refs/v1.0");
    char *ref = tu_read_file(path, NULL);
    ck_assert(ref != NULL);
    ck_assert_str_eq(ref, COMMIT_V1);
    free(ref);
    repo_path(path, sizeof path, "refs/main");
    ck_assert(!exists(path));
    /* the revision names the first file; the commit pins the rest */
    ck_assert_str_eq(M.log[0].url, "/org/tiny/resolve/v1.0/config.json");
    ck_assert_int_gt(count_requests(0, "HEAD", "/org/tiny/resolve/" COMMIT_V1 "/"), 5);
    ck_assert_int_eq(count_requests(0, "HEAD", "/org/tiny/resolve/main/"), 0);

    /* main has the same files: its snapshot shares every blob */
    int mark = log_mark();
    ck_assert_msg(fetch("org/tiny", dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(count_requests(mark, "GET", "/"), 0);
    join(path, sizeof path, dir, "model.safetensors");
    assert_same_file(path, FIXTURE "/model.safetensors");
}
END_TEST

START_TEST(test_options_from_env)
{
    hub_opts o;
    emb_err err;
    setenv("HF_ENDPOINT", "http://hub.example//", 1);
    setenv("HF_HUB_CACHE", "/tmp/a", 1);
    setenv("HF_HOME", "/tmp/b", 1);
    setenv("HF_TOKEN", "tok", 1);
    setenv("HF_HUB_OFFLINE", "1", 1);
    ck_assert_int_eq(hub_opts_from_env(&o, &err), 0);
    ck_assert_str_eq(o.endpoint, "http://hub.example");
    ck_assert_str_eq(o.cache_dir, "/tmp/a");
    ck_assert_str_eq(o.token, "tok");
    ck_assert_int_eq(o.offline, 1);
    unsetenv("HF_HUB_CACHE");
    setenv("HF_HUB_OFFLINE", "0", 1);
    ck_assert_int_eq(hub_opts_from_env(&o, &err), 0);
    ck_assert_str_eq(o.cache_dir, "/tmp/b/hub");
    ck_assert_int_eq(o.offline, 0);
    unsetenv("HF_HOME");
    unsetenv("XDG_CACHE_HOME");
    unsetenv("HF_ENDPOINT");
    unsetenv("HF_TOKEN");
    setenv("HOME", "/home/u", 1);
    ck_assert_int_eq(hub_opts_from_env(&o, &err), 0);
    ck_assert_str_eq(o.cache_dir, "/home/u/.cache/huggingface/hub");
    ck_assert_str_eq(o.endpoint, "https://huggingface.co");
    ck_assert(o.token == NULL);
}
END_TEST

/* ---- the binary ------------------------------------------------------- */

static const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

/* Runs `env ENV BIN embed ARGS` on one line of text; returns the exit
 * status, with stdout and stderr in tmpdir/out.txt and err.txt. */
static int run_embed(const char *env, const char *bin, const char *args)
{
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd,
                     "echo 'The quick brown fox.' | env %s %s embed %s > %s/out.txt 2> %s/err.txt",
                     env, bin, args, tmpdir, tmpdir);
    ck_assert(n > 0 && (size_t)n < sizeof cmd);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_tmp(const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    char *s = tu_read_file(path, NULL);
    ck_assert_msg(s != NULL, "cannot read %s", path);
    return s;
}

START_TEST(test_cli_model_id)
{
    char env[sizeof O.endpoint + sizeof O.cache_dir + 64];
    snprintf(env, sizeof env, "-u HF_TOKEN -u HF_HUB_OFFLINE HF_ENDPOINT=%s HF_HUB_CACHE=%s",
             O.endpoint, O.cache_dir);
    ck_assert_int_eq(run_embed(env, embedd_bin(), "--model " FIXTURE), 0);
    char *want = read_tmp("out.txt");
    ck_assert_int_eq(run_embed(env, embedd_bin(), "--model-id org/tiny@v1.0"), 0);
    char *got = read_tmp("out.txt");
    ck_assert_str_eq(got, want);
    free(got);
    char path[PATH_MAX];
    repo_path(path, sizeof path, "refs/v1.0");
    ck_assert(exists(path));

    ck_assert_int_eq(run_embed(env, embedd_bin(), "--model-id org/nothing"), 1);
    char *msg = read_tmp("err.txt");
    ck_assert_msg(strstr(msg, "no model org/nothing") != NULL, "%s", msg);
    free(msg);
    ck_assert_int_eq(run_embed(env, embedd_bin(), "--model-id org/tiny --model " FIXTURE), 2);
    free(want);
}
END_TEST

/* A copy of the binary in tmpdir/LAYOUT/bin finds the default model beside
 * it: LAYOUT/models/embedd-small, then LAYOUT/share/embedd/models/embedd-small. */
START_TEST(test_default_model)
{
    char cmd[16384], fixture[PATH_MAX], bin[PATH_MAX];
    ck_assert(realpath(FIXTURE, fixture) != NULL);
    int n = snprintf(cmd, sizeof cmd,
             "mkdir -p %1$s/src/bin %1$s/src/models %1$s/inst/bin %1$s/inst/share/embedd/models"
             " %1$s/none/bin && cp %2$s %1$s/src/bin/embedd && cp %2$s %1$s/inst/bin/embedd && "
             "cp %2$s %1$s/none/bin/embedd && ln -s %3$s %1$s/src/models/embedd-small && "
             "ln -s %3$s %1$s/inst/share/embedd/models/embedd-small",
             tmpdir, embedd_bin(), fixture);
    ck_assert(n > 0 && (size_t)n < sizeof cmd);
    ck_assert_int_eq(tu_run(cmd), 0);
    ck_assert_int_eq(run_embed("EMBEDD_X=1", embedd_bin(), "--model " FIXTURE), 0);
    char *want = read_tmp("out.txt");
    static const char *const layouts[] = {"src", "inst"};
    for (int i = 0; i < 2; i++) {
        snprintf(bin, sizeof bin, "%s/%s/bin/embedd", tmpdir, layouts[i]);
        ck_assert_int_eq(run_embed("EMBEDD_X=1", bin, ""), 0);
        char *got = read_tmp("out.txt");
        ck_assert_str_eq(got, want);
        free(got);
    }
    snprintf(bin, sizeof bin, "%s/none/bin/embedd", tmpdir);
    ck_assert_int_eq(run_embed("EMBEDD_X=1", bin, ""), 2);
    char *msg = read_tmp("err.txt");
    ck_assert_msg(strstr(msg, "--model DIR or --model-id") != NULL &&
                      strstr(msg, "/none/models/embedd-small") != NULL,
                  "%s", msg);
    free(msg);
    free(want);
}
END_TEST

static Suite *hub_suite(void)
{
    Suite *s = suite_create("hub");
    TCase *tc = tcase_create("mock");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_download_layout);
    tcase_add_test(tc, test_dense_modules);
    tcase_add_test(tc, test_second_run_downloads_nothing);
    tcase_add_test(tc, test_resume_within_one_run);
    tcase_add_test(tc, test_resume_next_run);
    tcase_add_test(tc, test_unauthorised_mentions_token);
    tcase_add_test(tc, test_not_found);
    tcase_add_test(tc, test_unreachable);
    tcase_add_test(tc, test_offline);
    tcase_add_test(tc, test_revision);
    tcase_add_test(tc, test_options_from_env);
    tcase_add_test(tc, test_cli_model_id);
    tcase_add_test(tc, test_default_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(hub_suite());
}
