/* test_server.c: `embedd serve` as clients see it, over HTTP on 127.0.0.1.
 *
 * Each TCase starts the real binary ($EMBEDD_BIN) once, in an unchecked
 * fixture (so in the runner process, before the forked tests): fork/exec,
 * stderr to a pipe, read until "listening on http://127.0.0.1:PORT". A
 * small drain process then copies the rest of the pipe into a shared log
 * that failing tests print. Tests that send SIGTERM start their own server
 * inside the test. The server gets the environment without EMBEDD_*.
 *
 * TCases (server flags): embed (defaults), openai (--served-model-name),
 * batching (--threads 1 --max-batch-tokens 512), errors (--payload-limit
 * 4096 --max-client-batch-size 4), auth (--api-key), busy
 * (--max-concurrent-requests 1), slow (--timeout 2), shutdown (own servers),
 * items (--data in a temporary directory, --payload-limit 200000
 * --max-client-batch-size 8; its persistence test starts its own servers).
 * The official Node clients run in tests/test_clients.c.
 *
 * Clients: libcurl easy handles for ordinary requests; raw sockets where the
 * test needs control of the bytes on the wire (a request admitted with
 * "Expect: 100-continue" and its body held back, a stalled upload, a huge
 * declared Content-Length, chunked bodies, keep-alive connections opened
 * before a shutdown).
 *
 * Expected vectors come from running `embedd embed` on the same texts. Both
 * normalise and print floats the same way, so a request that packs the same
 * texts into one forward pass as the CLI gets byte-identical lines. Where the
 * batch's composition differs (one text per request, concurrent clients),
 * the last bits may too (GEMM blocking), so vectors are compared to 1e-6. */
#include <check.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "bert.h"
#include "gemm.h"
#include "safetensors.h"
#include "http/errors.h"
#include "run_suite.h"
#include "testutil.h"
/* after testutil.h: its tu_read_file has a local named buf */
#include "serverproc.h"

#define MODEL "tests/fixtures/tiny-f16"
#define REF_DIR "tests/fixtures/reference"
#define DIMS 32          /* tiny-f16's hidden size */
#define MAX_LEN 128      /* tiny-f16's max_seq_length */
#define TOL 1e-6

/* ---- texts and the CLI --------------------------------------------------- */

/* The reference texts usable both as JSON strings and as CLI lines: valid
 * UTF-8, non-empty, no NUL and no newline (the STS-B sentences, plus the
 * accents, CJK, emoji, 3,000-word, [UNK] and punctuation cases). */
static char **g_texts;
static int g_n_texts;
static int g_long_text = -1;   /* index of the 3,000-word text */

static void load_texts(void)
{
    if (g_texts != NULL)
        return;
    size_t size = 0;
    char *b = tu_read_file(REF_DIR "/texts.bin", &size);
    ck_assert(b != NULL && size >= 4);
    uint32_t n;
    memcpy(&n, b, 4);
    g_texts = calloc(n, sizeof *g_texts);
    size_t pos = 4;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len;
        memcpy(&len, b + pos, 4);
        pos += 4;
        const char *t = b + pos;
        pos += len;
        if (len == 0 || memchr(t, '\n', len) != NULL || memchr(t, '\0', len) != NULL ||
            !utf8_valid((const unsigned char *)t, len))
            continue;
        if (len > 10000)
            g_long_text = g_n_texts;
        g_texts[g_n_texts] = malloc(len + 1);
        memcpy(g_texts[g_n_texts], t, len);
        g_texts[g_n_texts][len] = '\0';
        g_n_texts++;
    }
    free(b);
    ck_assert_msg(g_n_texts >= 210 && g_long_text >= 0, "only %d usable texts", g_n_texts);
}

typedef struct lines {
    char **line;
    int n;
} lines;

static void lines_free(lines *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->line[i]);
    free(l->line);
    memset(l, 0, sizeof *l);
}

/* Runs `embedd embed --model MODEL ARGS` on texts (one per line) and
 * returns its output lines. */
static lines cli_embed(char *const *texts, int n, const char *args)
{
    char dir[256];
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
    char in[512], out[512], cmd[2048];
    snprintf(in, sizeof in, "%s/in.txt", dir);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    FILE *fp = fopen(in, "wb");
    ck_assert(fp != NULL);
    for (int i = 0; i < n; i++)
        fprintf(fp, "%s\n", texts[i]);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "%s embed --model %s %s < %s > %s", embedd_bin(), MODEL, args, in,
             out);
    int st = system(cmd);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "failed: %s", cmd);
    char *text = tu_read_file(out, NULL);
    ck_assert(text != NULL);
    lines l = {calloc((size_t)n + 1, sizeof(char *)), 0};
    for (char *p = text; *p != '\0';) {
        char *nl = strchr(p, '\n');
        ck_assert(nl != NULL && l.n < n);
        l.line[l.n++] = strndup(p, (size_t)(nl - p));
        p = nl + 1;
    }
    free(text);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
    ck_assert_msg(l.n == n, "CLI printed %d lines for %d texts", l.n, n);
    return l;
}

/* The rows "[...]" of a TEI /embed answer "[[...],[...]]", as text. */
static lines embed_rows(const char *body)
{
    lines l = {NULL, 0};
    int cap = 0;
    ck_assert_msg(body[0] == '[', "not an array: %.200s", body);
    const char *p = body + 1;
    while (*p == '[') {
        const char *end = strchr(p, ']');
        ck_assert(end != NULL);
        if (l.n == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            l.line = realloc(l.line, sizeof(char *) * (size_t)cap);
        }
        l.line[l.n++] = strndup(p, (size_t)(end - p + 1));
        p = end + 1;
        if (*p == ',')
            p++;
    }
    ck_assert_msg(strcmp(p, "]") == 0, "trailing bytes after the rows: %.100s", p);
    return l;
}

/* Parses a JSON array of numbers into v (room for DIMS); returns the count. */
static int vec_of_json(const cJSON *arr, float *v)
{
    ck_assert(cJSON_IsArray(arr));
    int n = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, arr) {
        ck_assert(cJSON_IsNumber(el) && n < DIMS);
        v[n++] = (float)el->valuedouble;
    }
    return n;
}

static int vec_of_text(const char *s, float *v)
{
    cJSON *j = cJSON_Parse(s);
    ck_assert_msg(j != NULL, "not JSON: %.200s", s);
    int n = vec_of_json(j, v);
    cJSON_Delete(j);
    return n;
}

static double max_diff(const float *a, const float *b, int n)
{
    double m = 0.0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* Asserts that two JSON vectors have DIMS (or `dims`) values within TOL. */
static void check_vec_text(const char *got, const char *want, int dims, const char *what)
{
    float g[DIMS], w[DIMS];
    int ng = vec_of_text(got, g), nw = vec_of_text(want, w);
    ck_assert_msg(ng == dims && nw == dims, "%s: %d and %d values, want %d", what, ng, nw, dims);
    double d = max_diff(g, w, dims);
    ck_assert_msg(d <= TOL, "%s: max |diff| %g\n got  %s\n want %s", what, d, got, want);
}

/* {"inputs": [texts]} plus extra members (",\"normalize\":false"...). */
static char *inputs_body(const char *key, char *const *texts, int n, const char *extra)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, key, cJSON_CreateStringArray((const char *const *)texts, n));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    buf b = {0};
    buf_add(&b, s, strlen(s) - 1);
    free(s);
    if (extra != NULL)
        buf_add(&b, extra, strlen(extra));
    buf_add(&b, "}", 1);
    return b.p;
}

static char *string_body(const char *key, const char *text, const char *extra)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, key, text);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    buf b = {0};
    buf_add(&b, s, strlen(s) - 1);
    free(s);
    if (extra != NULL)
        buf_add(&b, extra, strlen(extra));
    buf_add(&b, "}", 1);
    return b.p;
}

/* POST /embed {"inputs": text, extra}; returns the single row's text. */
static char *embed_one(int port, const char *text, const char *extra)
{
    char *body = string_body("inputs", text, extra);
    http_resp r;
    http_port(port, "POST", "/embed", body, NULL, &r);
    ck_assert_msg(r.status == 200, "status %ld: %.300s", r.status, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, 1);
    char *row = rows.line[0];
    free(rows.line);
    resp_free(&r);
    free(body);
    return row;
}

/* Token ids of text from POST /tokenize, with the special tokens. */
static int tokenize(const char *text, int *ids, int cap)
{
    char *body = string_body("inputs", text, NULL);
    http_resp r;
    http("POST", "/tokenize", body, &r);
    ck_assert_msg(r.status == 200, "tokenize: %ld %.300s", r.status, r.body.p);
    cJSON *j = json_of(&r);
    ck_assert(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 1);
    int n = 0;
    const cJSON *tok;
    cJSON_ArrayForEach(tok, cJSON_GetArrayItem(j, 0)) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(tok, "id");
        ck_assert(cJSON_IsNumber(id) && n < cap);
        ids[n++] = id->valueint;
    }
    cJSON_Delete(j);
    resp_free(&r);
    free(body);
    return n;
}

/* The value of an unlabelled sample, or one with its exact labels:
 * metric_value(text, "embedd_batch_size_bucket{le=\"1\"}"). */
static double metric_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line != NULL && *line != '\0';) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    ck_abort_msg("no sample %s in /metrics", series);
    return 0;
}

static char *get_metrics(int port)
{
    http_resp r;
    http_port(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_msg(r.status == 200, "/metrics: %ld", r.status);
    char *text = r.body.p;
    free(r.hdr.p);
    return text;
}

/* ======================================================================== */
/* TCase embed: /embed against the CLI                                      */
/* ======================================================================== */

static void setup_default(void)
{
    fixture_start(NULL);
}

START_TEST(test_embed_matches_cli)
{
    REQUIRE_SERVER();
    load_texts();
    lines want = cli_embed(g_texts, g_n_texts, "");
    char *body = inputs_body("inputs", g_texts, g_n_texts, NULL);
    http_resp r;
    http("POST", "/embed", body, &r);
    ck_assert_msg(r.status == 200, "status %ld: %.300s", r.status, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, g_n_texts);
    /* One request, one forward pass of the same texts as the CLI's: the same
     * bytes. */
    for (int i = 0; i < g_n_texts; i++) {
        char what[64];
        snprintf(what, sizeof what, "array input, text %d", i);
        check_vec_text(rows.line[i], want.line[i], DIMS, what);
        ck_assert_msg(strcmp(rows.line[i], want.line[i]) == 0,
                      "text %d: not byte-identical to the CLI's line\n got  %s\n want %s", i,
                      rows.line[i], want.line[i]);
    }
    /* A string input gives one row, the same vector (its own pass). */
    for (int i = 0; i < g_n_texts; i += 7) {
        char *row = embed_one(g_srv.port, g_texts[i], NULL);
        char what[64];
        snprintf(what, sizeof what, "string input, text %d", i);
        check_vec_text(row, want.line[i], DIMS, what);
        free(row);
    }
    lines_free(&rows);
    lines_free(&want);
    resp_free(&r);
    free(body);
}
END_TEST

START_TEST(test_embed_normalize_false)
{
    REQUIRE_SERVER();
    load_texts();
    const int n = 60;
    lines want = cli_embed(g_texts, n, "--no-normalize");
    char *body = inputs_body("inputs", g_texts, n, ",\"normalize\":false");
    http_resp r;
    http("POST", "/embed", body, &r);
    ck_assert_msg(r.status == 200, "status %ld: %.300s", r.status, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, n);
    int not_unit = 0;
    for (int i = 0; i < n; i++) {
        check_vec_text(rows.line[i], want.line[i], DIMS, "normalize:false");
        float v[DIMS];
        vec_of_text(rows.line[i], v);
        double ss = 0.0;
        for (int k = 0; k < DIMS; k++)
            ss += (double)v[k] * v[k];
        not_unit += fabs(sqrt(ss) - 1.0) > 1e-3;
    }
    ck_assert_msg(not_unit == n, "only %d of %d raw vectors are not unit length", not_unit, n);
    lines_free(&rows);
    lines_free(&want);
    resp_free(&r);
    free(body);
}
END_TEST

/* Matryoshka: the first d dims, renormalised (or just cut with
 * normalize:false). */
START_TEST(test_embed_dimensions)
{
    REQUIRE_SERVER();
    load_texts();
    const int n = 20;
    lines raw = cli_embed(g_texts, n, "--no-normalize");
    const int dims[] = {1, 8, 31, 32};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        const int d = dims[k];
        for (int normalize = 0; normalize <= 1; normalize++) {
            char extra[96];
            snprintf(extra, sizeof extra, ",\"dimensions\":%d,\"normalize\":%s", d,
                     normalize ? "true" : "false");
            char *body = inputs_body("inputs", g_texts, n, extra);
            http_resp r;
            http("POST", "/embed", body, &r);
            ck_assert_msg(r.status == 200, "%s: %ld %.300s", extra, r.status, r.body.p);
            lines rows = embed_rows(r.body.p);
            ck_assert_int_eq(rows.n, n);
            for (int i = 0; i < n; i++) {
                float got[DIMS], full[DIMS], want[DIMS];
                ck_assert_int_eq(vec_of_text(rows.line[i], got), d);
                vec_of_text(raw.line[i], full);
                double ss = 0.0;
                for (int c = 0; c < d; c++)
                    ss += (double)full[c] * full[c];
                for (int c = 0; c < d; c++)
                    want[c] = normalize ? (float)(full[c] / sqrt(ss)) : full[c];
                double diff = max_diff(got, want, d);
                ck_assert_msg(diff <= TOL, "%s text %d: max |diff| %g\n got %s", extra, i, diff,
                              rows.line[i]);
            }
            lines_free(&rows);
            resp_free(&r);
            free(body);
        }
    }
    lines_free(&raw);
}
END_TEST

START_TEST(test_embed_truncate)
{
    REQUIRE_SERVER();
    load_texts();
    const char *text = g_texts[g_long_text];
    char *body = string_body("inputs", text, ",\"truncate\":false");
    http_resp r;
    http("POST", "/embed", body, &r);
    check_tei_error(&r, 422, "Validation", "truncate:false on a long text");
    resp_free(&r);
    free(body);
    /* The server's default (--auto-truncate true) and truncate:true cut it on
     * the right, as the CLI does. */
    lines want = cli_embed(&g_texts[g_long_text], 1, "");
    char *row = embed_one(g_srv.port, text, NULL);
    check_vec_text(row, want.line[0], DIMS, "default truncation");
    free(row);
    row = embed_one(g_srv.port, text, ",\"truncate\":true,\"truncation_direction\":\"right\"");
    check_vec_text(row, want.line[0], DIMS, "truncate:true");
    free(row);
    lines_free(&want);
}
END_TEST

/* "apple" x 200 then "banana" x 126, each one token: right truncation keeps
 * [CLS] apple x 126 [SEP], left keeps [CLS] banana x 126 [SEP]. */
START_TEST(test_embed_truncation_direction)
{
    REQUIRE_SERVER();
    int ids[8];
    ck_assert_int_eq(tokenize("apple", ids, 8), 3);
    ck_assert_int_eq(tokenize("banana", ids, 8), 3);
    const int keep = MAX_LEN - 2;
    buf lng = {0}, apples = {0}, bananas = {0};
    for (int i = 0; i < 200; i++)
        buf_add(&lng, "apple ", 6);
    for (int i = 0; i < keep; i++) {
        buf_add(&lng, i + 1 < keep ? "banana " : "banana", i + 1 < keep ? 7 : 6);
        buf_add(&apples, i + 1 < keep ? "apple " : "apple", i + 1 < keep ? 6 : 5);
        buf_add(&bananas, i + 1 < keep ? "banana " : "banana", i + 1 < keep ? 7 : 6);
    }
    char *left = embed_one(g_srv.port, lng.p, ",\"truncation_direction\":\"left\"");
    char *right = embed_one(g_srv.port, lng.p, ",\"truncation_direction\":\"right\"");
    char *want_right = embed_one(g_srv.port, apples.p, ",\"truncate\":false");
    char *want_left = embed_one(g_srv.port, bananas.p, ",\"truncate\":false");
    float l[DIMS], rr[DIMS];
    vec_of_text(left, l);
    vec_of_text(right, rr);
    ck_assert_msg(max_diff(l, rr, DIMS) > 1e-2, "left and right truncation agree:\n%s\n%s", left,
                  right);
    check_vec_text(right, want_right, DIMS, "right truncation keeps the start");
    check_vec_text(left, want_left, DIMS, "left truncation keeps the end");
    free(left);
    free(right);
    free(want_left);
    free(want_right);
    free(lng.p);
    free(apples.p);
    free(bananas.p);
}
END_TEST

START_TEST(test_tokenize_info_models)
{
    REQUIRE_SERVER();
    /* /tokenize gives the reference ids of the first text. */
    load_texts();
    char *ref = tu_read_file(REF_DIR "/tiny-f16.ids.txt", NULL);
    ck_assert(ref != NULL);
    *strchr(ref, '\n') = '\0';
    int ids[MAX_LEN];
    int n = tokenize(g_texts[0], ids, MAX_LEN);
    buf got = {0};
    for (int i = 0; i < n; i++)
        buf_addf(&got, "%s%d", i > 0 ? " " : "", ids[i]);
    ck_assert_str_eq(got.p, ref);
    free(got.p);
    free(ref);
    http_resp r;
    http("POST", "/tokenize", "{\"inputs\":[\"hello world\"],\"add_special_tokens\":false}", &r);
    ck_assert_int_eq(r.status, 200);
    /* TEI's shape: each token's byte span in the input, and its text */
    ck_assert_str_eq(r.body.p, "[[{\"id\":7592,\"text\":\"hello\",\"special\":false,"
                               "\"start\":0,\"stop\":5},"
                               "{\"id\":2088,\"text\":\"world\",\"special\":false,"
                               "\"start\":6,\"stop\":11}]]");
    resp_free(&r);

    http("GET", "/info", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model_id")->valuestring, "tiny-f16");
    ck_assert_int_eq(cJSON_GetObjectItem(j, "dimension")->valueint, DIMS);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "max_input_length")->valueint, MAX_LEN);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "pooling")->valuestring, "mean");
    cJSON_Delete(j);
    resp_free(&r);

    http("GET", "/health", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    /* the collections ("default", the item store) and their points (none yet) */
    ck_assert_str_eq(r.body.p, "{\"status\":\"ok\",\"collections\":1,\"points\":0}");
    resp_free(&r);
}
END_TEST

/* JSON escapes (\u00e9, a surrogate pair, \", \\, \t) decode to the same text
 * as the raw UTF-8. */
START_TEST(test_embed_json_escapes)
{
    REQUIRE_SERVER();
    const char *raw = "caf\xc3\xa9 party \xf0\x9f\x8e\x89 \"quoted\" back\\slash\ttab";
    char *want = embed_one(g_srv.port, raw, NULL);  /* cJSON writes raw UTF-8 */
    const char *escaped = "{\"inputs\":\"caf\\u00e9 party \\ud83c\\udf89 \\\"quoted\\\" "
                          "back\\\\slash\\ttab\"}";
    http_resp r;
    http("POST", "/embed", escaped, &r);
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, 1);
    check_vec_text(rows.line[0], want, DIMS, "escaped vs raw");
    lines_free(&rows);
    resp_free(&r);
    free(want);
}
END_TEST

/* /metrics is valid Prometheus text (promtool) and counts requests. */
START_TEST(test_metrics_format)
{
    REQUIRE_SERVER();
    char *row = embed_one(g_srv.port, "metrics please", NULL);
    free(row);
    http_resp r;
    http("GET", "/nope", NULL, &r);
    resp_free(&r);
    http("GET", "/metrics", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    const char *ct = header_value(&r, "Content-Type");
    ck_assert_msg(ct != NULL && strncmp(ct, "text/plain; version=0.0.4", 25) == 0, "type %s", ct);
    const char *ok_series = "embedd_requests_total{route=\"embed\",code=\"200\"}";
    ck_assert_msg(metric_value(r.body.p, ok_series) >= 1, "%s", tail(r.body.p));
    ck_assert(metric_value(r.body.p, "embedd_embedded_texts_total") >= 1);
    ck_assert(metric_value(r.body.p, "embedd_batch_size_count") >= 1);
    ck_assert(metric_value(r.body.p, "embedd_batch_size_bucket{le=\"+Inf\"}") ==
              metric_value(r.body.p, "embedd_batch_size_count"));
    if (system("command -v promtool > /dev/null 2>&1") != 0) {
        printf("test_metrics_format: promtool not installed, format not checked "
               "(scripts/install-deps.sh installs it)\n");
        resp_free(&r);
        return;
    }
    char dir[256];
    tu_mkdtemp(dir, sizeof dir);
    char path[512], cmd[1400];
    snprintf(path, sizeof path, "%s/metrics.txt", dir);
    ck_assert(tu_write_file(path, r.body.p, r.body.len) == 0);
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s > %s/out.txt 2>&1", path, dir);
    int st = system(cmd);
    snprintf(path, sizeof path, "%s/out.txt", dir);
    char *out = tu_read_file(path, NULL);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "promtool check metrics: %s\n%s",
                  tail(out), tail(r.body.p));
    free(out);
    resp_free(&r);
}
END_TEST

/* ======================================================================== */
/* TCase openai: /v1/embeddings and /v1/models                              */
/* ======================================================================== */

static void setup_openai(void)
{
    const char *args[] = {"--served-model-name", "test-model", NULL};
    fixture_start(args);
}

static int b64_value(char c)
{
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(alphabet, c);
    return c != '\0' && p != NULL ? (int)(p - alphabet) : -1;
}

/* Decodes standard padded base64; returns the byte count, -1 if invalid. */
static int b64_decode(const char *s, unsigned char *out, int cap)
{
    size_t n = strlen(s);
    if (n % 4 != 0)
        return -1;
    int o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else {
                v[k] = b64_value(s[i + k]);
                if (v[k] < 0 || pad > 0)
                    return -1;
            }
        }
        unsigned x = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | v[3];
        unsigned char bytes[3] = {(unsigned char)(x >> 16), (unsigned char)(x >> 8),
                                  (unsigned char)x};
        for (int k = 0; k < 3 - pad; k++) {
            if (o >= cap)
                return -1;
            out[o++] = bytes[k];
        }
    }
    return o;
}

/* Checks the OpenAI list envelope and fills vecs (n x DIMS) from it. */
static void openai_vectors(const http_resp *r, int n, int dims, int base64, float *vecs,
                           long *prompt_tokens)
{
    ck_assert_msg(r->status == 200, "status %ld: %.300s", r->status, r->body.p);
    cJSON *j = json_of(r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "list");
    /* the served name @ the version that made the vectors */
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model")->valuestring, "test-model@1");
    const cJSON *data = cJSON_GetObjectItem(j, "data");
    ck_assert_int_eq(cJSON_GetArraySize(data), n);
    for (int i = 0; i < n; i++) {
        const cJSON *d = cJSON_GetArrayItem(data, i);
        ck_assert_str_eq(cJSON_GetObjectItem(d, "object")->valuestring, "embedding");
        ck_assert_int_eq(cJSON_GetObjectItem(d, "index")->valueint, i);
        const cJSON *e = cJSON_GetObjectItem(d, "embedding");
        float *v = vecs + (size_t)i * DIMS;
        if (base64) {
            ck_assert_msg(cJSON_IsString(e), "embedding %d is not a string", i);
            unsigned char bytes[DIMS * 4];
            int nb = b64_decode(e->valuestring, bytes, (int)sizeof bytes);
            ck_assert_msg(nb == dims * 4, "embedding %d: %d bytes of base64", i, nb);
            for (int k = 0; k < dims; k++) {
                /* little-endian f32 */
                uint32_t u = (uint32_t)bytes[4 * k] | (uint32_t)bytes[4 * k + 1] << 8 |
                             (uint32_t)bytes[4 * k + 2] << 16 | (uint32_t)bytes[4 * k + 3] << 24;
                memcpy(&v[k], &u, 4);
            }
        } else {
            ck_assert_int_eq(vec_of_json(e, v), dims);
        }
    }
    const cJSON *usage = cJSON_GetObjectItem(j, "usage");
    long pt = (long)cJSON_GetObjectItem(usage, "prompt_tokens")->valuedouble;
    ck_assert_int_eq(pt, (long)cJSON_GetObjectItem(usage, "total_tokens")->valuedouble);
    if (prompt_tokens != NULL)
        *prompt_tokens = pt;
    cJSON_Delete(j);
}

START_TEST(test_openai_float_and_base64)
{
    REQUIRE_SERVER();
    load_texts();
    enum { N = 6 };
    char *texts[N];
    long want_tokens = 0;
    for (int i = 0; i < N; i++) {
        texts[i] = g_texts[i * 30];
        int ids[MAX_LEN];
        want_tokens += tokenize(texts[i], ids, MAX_LEN);
    }
    lines want = cli_embed(texts, N, "");
    float vf[N * DIMS], vb[N * DIMS];
    long pt_f = 0, pt_b = 0;
    char *body =
        inputs_body("input", texts, N, ",\"model\":\"whatever\",\"encoding_format\":\"float\"");
    http_resp r;
    http("POST", "/v1/embeddings", body, &r);
    openai_vectors(&r, N, DIMS, 0, vf, &pt_f);
    resp_free(&r);
    free(body);
    body = inputs_body("input", texts, N, ",\"encoding_format\":\"base64\"");
    http("POST", "/v1/embeddings", body, &r);
    openai_vectors(&r, N, DIMS, 1, vb, &pt_b);
    resp_free(&r);
    free(body);
    ck_assert_int_eq(pt_f, want_tokens);
    ck_assert_int_eq(pt_b, want_tokens);
    for (int i = 0; i < N; i++) {
        float w[DIMS];
        vec_of_text(want.line[i], w);
        double d1 = max_diff(vf + i * DIMS, w, DIMS);
        double d2 = max_diff(vb + i * DIMS, vf + i * DIMS, DIMS);
        ck_assert_msg(d1 <= TOL, "float %d vs CLI: %g", i, d1);
        ck_assert_msg(d2 <= TOL, "base64 %d vs float: %g", i, d2);
    }
    /* A string input, and dimensions (renormalised). */
    body = string_body("input", texts[1], ",\"dimensions\":8");
    http("POST", "/v1/embeddings", body, &r);
    float v8[DIMS];
    openai_vectors(&r, 1, 8, 0, v8, NULL);
    double ss = 0.0, ss_full = 0.0;
    for (int k = 0; k < 8; k++) {
        ss += (double)v8[k] * v8[k];
        ss_full += (double)vf[DIMS + k] * vf[DIMS + k];
    }
    ck_assert_msg(fabs(ss - 1.0) < 1e-5, "dimensions 8: squared norm %g", ss);
    for (int k = 0; k < 8; k++)
        ck_assert_msg(fabs(v8[k] - vf[DIMS + k] / sqrt(ss_full)) <= TOL, "dims 8, value %d", k);
    resp_free(&r);
    free(body);
    lines_free(&want);
}
END_TEST

static char *ids_json(const int *ids, int n)
{
    buf b = {0};
    buf_add(&b, "[", 1);
    for (int i = 0; i < n; i++)
        buf_addf(&b, "%s%d", i > 0 ? "," : "", ids[i]);
    buf_add(&b, "]", 1);
    return b.p;
}

START_TEST(test_openai_token_ids)
{
    REQUIRE_SERVER();
    const char *t0 = "hello world", *t1 = "The quick brown fox jumps over the lazy dog.";
    int ids0[MAX_LEN], ids1[MAX_LEN];
    int n0 = tokenize(t0, ids0, MAX_LEN), n1 = tokenize(t1, ids1, MAX_LEN);
    ck_assert_int_eq(n0, 4);
    char *texts[2] = {(char *)t0, (char *)t1};
    lines want = cli_embed(texts, 2, "");
    float w0[DIMS], w1[DIMS], v[2 * DIMS];
    vec_of_text(want.line[0], w0);
    vec_of_text(want.line[1], w1);
    /* [int]: one input */
    char *a0 = ids_json(ids0, n0), *a1 = ids_json(ids1, n1);
    buf body = {0};
    buf_addf(&body, "{\"input\":%s}", a0);
    http_resp r;
    long pt = 0;
    http("POST", "/v1/embeddings", body.p, &r);
    openai_vectors(&r, 1, DIMS, 0, v, &pt);
    ck_assert_int_eq(pt, n0);
    ck_assert_msg(max_diff(v, w0, DIMS) <= TOL, "ids of '%s' vs its text", t0);
    resp_free(&r);
    /* [[int]]: two inputs, in order */
    body.len = 0;
    buf_addf(&body, "{\"input\":[%s,%s],\"encoding_format\":\"base64\"}", a1, a0);
    http("POST", "/v1/embeddings", body.p, &r);
    openai_vectors(&r, 2, DIMS, 1, v, &pt);
    ck_assert_int_eq(pt, n0 + n1);
    ck_assert_msg(max_diff(v, w1, DIMS) <= TOL, "[[ids]] 0");
    ck_assert_msg(max_diff(v + DIMS, w0, DIMS) <= TOL, "[[ids]] 1");
    resp_free(&r);
    /* strings and ids mixed */
    body.len = 0;
    buf_addf(&body, "{\"input\":[\"%s\",%s]}", t1, a0);
    http("POST", "/v1/embeddings", body.p, &r);
    openai_vectors(&r, 2, DIMS, 0, v, &pt);
    ck_assert_msg(max_diff(v, w1, DIMS) <= TOL && max_diff(v + DIMS, w0, DIMS) <= TOL, "mixed");
    resp_free(&r);
    free(body.p);
    free(a0);
    free(a1);
    lines_free(&want);
}
END_TEST

START_TEST(test_openai_models)
{
    REQUIRE_SERVER();
    http_resp r;
    http("GET", "/v1/models", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "list");
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(m, "id")->valuestring, "test-model");
    ck_assert_str_eq(cJSON_GetObjectItem(m, "object")->valuestring, "model");
    cJSON_Delete(j);
    resp_free(&r);
    http("GET", "/info", NULL, &r);
    j = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model_id")->valuestring, "test-model");
    cJSON_Delete(j);
    resp_free(&r);
}
END_TEST

/* ======================================================================== */
/* TCase batching: many clients at once                                     */
/* ======================================================================== */

#define BATCH_TOKENS 512

static void setup_batching(void)
{
    const char *args[] = {"--threads", "1", "--max-batch-tokens", "512", NULL};
    fixture_start(args);
}

/* One request of more tokens than a forward pass holds is split across
 * passes of at most --max-batch-tokens, and comes back whole, in order. */
START_TEST(test_job_split_across_passes)
{
    REQUIRE_SERVER();
    load_texts();
    lines want = cli_embed(g_texts, g_n_texts, "");
    char *before = get_metrics(g_srv.port);
    char *body = inputs_body("inputs", g_texts, g_n_texts, NULL);
    http_resp r;
    http("POST", "/embed", body, &r);
    ck_assert_msg(r.status == 200, "status %ld: %.200s", r.status, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, g_n_texts);
    for (int i = 0; i < g_n_texts; i++)
        check_vec_text(rows.line[i], want.line[i], DIMS, "split job");
    char *after = get_metrics(g_srv.port);
    const char *le512 = "embedd_batch_tokens_bucket{le=\"512\"}";
    double passes = metric_value(after, "embedd_batch_tokens_count") -
                    metric_value(before, "embedd_batch_tokens_count");
    double tokens = metric_value(after, "embedd_batch_tokens_sum") -
                    metric_value(before, "embedd_batch_tokens_sum");
    double within = metric_value(after, le512) - metric_value(before, le512);
    ck_assert_msg(passes >= tokens / BATCH_TOKENS && passes > 1, "%.0f tokens in %.0f passes",
                  tokens, passes);
    ck_assert_msg(within == passes, "%.0f of %.0f passes over %d tokens", passes - within, passes,
                  BATCH_TOKENS);
    free(before);
    free(after);
    lines_free(&rows);
    lines_free(&want);
    resp_free(&r);
    free(body);
}
END_TEST

enum { N_CLIENTS = 48, ROUNDS = 4 };

typedef struct client {
    int port;
    int id;
    char **texts;              /* (N_CLIENTS * ROUNDS) */
    char **want;               /* the CLI's rows */
    pthread_barrier_t *start;
    int ok;
    char err[512];
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    c->ok = 1;
    pthread_barrier_wait(c->start);
    CURL *h = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/embed", c->port);
    for (int round = 0; round < ROUNDS && c->ok; round++) {
        int k = round * N_CLIENTS + c->id;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "inputs", c->texts[k]);
        char *body = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        buf out = {0};
        struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(hl);
        free(body);
        float got[DIMS], want[DIMS];
        int ng = -1;
        if (rc == CURLE_OK && status == 200 && out.p != NULL && out.len > 4) {
            /* "[[...]]" -> "[...]" */
            out.p[out.len - 1] = '\0';
            cJSON *j = cJSON_Parse(out.p + 1);
            if (cJSON_IsArray(j) && cJSON_GetArraySize(j) == DIMS) {
                ng = 0;
                const cJSON *el;
                cJSON_ArrayForEach(el, j) got[ng++] = (float)el->valuedouble;
            }
            cJSON_Delete(j);
        }
        cJSON *w = cJSON_Parse(c->want[k]);
        int nw = 0;
        const cJSON *el;
        cJSON_ArrayForEach(el, w) want[nw++] = (float)el->valuedouble;
        cJSON_Delete(w);
        double d = ng == DIMS ? max_diff(got, want, DIMS) : INFINITY;
        if (d > TOL) {
            c->ok = 0;
            snprintf(c->err, sizeof c->err, "client %d text %d: curl %d status %ld diff %g: %.200s",
                     c->id, k, (int)rc, status, d, out.p != NULL ? out.p : "");
        }
        free(out.p);
    }
    curl_easy_cleanup(h);
    return NULL;
}

START_TEST(test_concurrent_clients_batching)
{
    REQUIRE_SERVER();
    load_texts();
    /* N_CLIENTS * ROUNDS distinct texts of ~40-90 tokens. */
    enum { N = N_CLIENTS * ROUNDS };
    char *texts[N];
    for (int i = 0; i < N; i++) {
        buf b = {0};
        buf_addf(&b, "%d: %s %s %s", i, g_texts[i % 200], g_texts[(i + 1) % 200],
                 g_texts[(i + 7) % 200]);
        texts[i] = b.p;
    }
    lines want = cli_embed(texts, N, "");
    char *before = get_metrics(g_srv.port);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N_CLIENTS);
    client cl[N_CLIENTS];
    pthread_t th[N_CLIENTS];
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i] = (client){.port = g_srv.port, .id = i, .texts = texts, .want = want.line,
                         .start = &start};
        ck_assert(pthread_create(&th[i], NULL, client_main, &cl[i]) == 0);
    }
    for (int i = 0; i < N_CLIENTS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < N_CLIENTS; i++)
        ck_assert_msg(cl[i].ok, "%s", cl[i].err);
    char *after = get_metrics(g_srv.port);
    const char *le1 = "embedd_batch_size_bucket{le=\"1\"}";
    double singles = metric_value(after, le1) - metric_value(before, le1);
    double passes = metric_value(after, "embedd_batch_size_count") -
                    metric_value(before, "embedd_batch_size_count");
    double seqs = metric_value(after, "embedd_batch_size_sum") -
                  metric_value(before, "embedd_batch_size_sum");
    printf("test_concurrent_clients_batching: %d requests of one text in %.0f forward passes, "
           "%.0f of them with one sequence, mean batch %.2f\n",
           N, passes, singles, passes > 0 ? seqs / passes : 0.0);
    ck_assert_msg(seqs == N, "the batches held %.0f sequences, want %d", seqs, N);
    ck_assert_msg(singles < passes, "no forward pass held more than one sequence (%.0f passes)",
                  passes);
    free(before);
    free(after);
    lines_free(&want);
    for (int i = 0; i < N; i++)
        free(texts[i]);
}
END_TEST

/* ======================================================================== */
/* TCase errors: every refusal with its status and shape                    */
/* ======================================================================== */

#define PAYLOAD_LIMIT 4096
#define MAX_CLIENT_BATCH 4

static void setup_errors(void)
{
    const char *args[] = {"--payload-limit", "4096", "--max-client-batch-size", "4", NULL};
    fixture_start(args);
}

typedef struct err_case {
    const char *method, *path, *body;
    long status;
    int openai;                /* 1: OpenAI shape */
    const char *type;          /* TEI error_type or OpenAI error.type */
    const char *code;          /* OpenAI error.code (NULL: null) */
} err_case;

#define TEI(m, p, b, s, t) {m, p, b, s, 0, t, NULL}
#define OAI(m, p, b, s, c) {m, p, b, s, 1, "invalid_request_error", c}

static const err_case err_cases[] = {
    TEI("GET", "/nope", NULL, 404, "Validation"),
    TEI("POST", "/embed/", "{}", 404, "Validation"),
    OAI("GET", "/v1/nope", NULL, 404, "not_found"),
    TEI("GET", "/embed", NULL, 405, "Validation"),
    TEI("POST", "/health", "{}", 405, "Validation"),
    OAI("GET", "/v1/embeddings", NULL, 405, "method_not_allowed"),
    OAI("DELETE", "/v1/models", NULL, 405, "method_not_allowed"),
    /* malformed and mistyped bodies */
    TEI("POST", "/embed", "{\"inputs\":", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\"} trailing", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\"}{}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"lone \\ud800 surrogate\"}", 422, "Validation"),
    TEI("POST", "/embed", "", 422, "Validation"),
    TEI("POST", "/embed", "[\"a\"]", 422, "Validation"),
    TEI("POST", "/embed", "{}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":5}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":null}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":[\"a\",5]}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":[1,2]}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"normalize\":\"yes\"}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"truncate\":1}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"dimensions\":0}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"dimensions\":9999}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"dimensions\":33}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"dimensions\":2.5}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"dimensions\":\"8\"}", 422, "Validation"),
    TEI("POST", "/embed", "{\"inputs\":\"a\",\"truncation_direction\":\"up\"}", 422, "Validation"),
    TEI("POST", "/tokenize", "{\"inputs\":5}", 422, "Validation"),
    TEI("POST", "/tokenize", "{\"inputs\":\"a\",\"add_special_tokens\":\"no\"}", 422,
        "Validation"),
    OAI("POST", "/v1/embeddings", "{\"input\":", 400, NULL),
    OAI("POST", "/v1/embeddings", "{}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":5}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":\"a\",\"encoding_format\":\"hex\"}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":\"a\",\"encoding_format\":1}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":\"a\",\"dimensions\":0}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":\"a\",\"dimensions\":9999}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":\"a\",\"model\":5}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[1.5]}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[1,\"a\"]}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[[1,2],[3.5]]}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[999999]}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[-1]}", 400, NULL),
    /* empty input */
    TEI("POST", "/embed", "{\"inputs\":[]}", 400, "Empty"),
    TEI("POST", "/embed", "{\"inputs\":\"\"}", 400, "Empty"),
    TEI("POST", "/embed", "{\"inputs\":[\"a\",\"\"]}", 400, "Empty"),
    OAI("POST", "/v1/embeddings", "{\"input\":[]}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":\"\"}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[[]]}", 400, NULL),
    /* more than --max-client-batch-size 4 inputs */
    TEI("POST", "/embed", "{\"inputs\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 422, "Validation"),
    TEI("POST", "/tokenize", "{\"inputs\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 422, "Validation"),
    OAI("POST", "/v1/embeddings", "{\"input\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, NULL),
    OAI("POST", "/v1/embeddings", "{\"input\":[[1],[2],[3],[4],[5]]}", 400, NULL),
};

START_TEST(test_error_table)
{
    REQUIRE_SERVER();
    const err_case *c = &err_cases[_i];
    char what[256];
    snprintf(what, sizeof what, "case %d: %s %s %.80s", _i, c->method, c->path,
             c->body != NULL ? c->body : "");
    http_resp r;
    http(c->method, c->path, c->body, &r);
    if (c->openai)
        check_openai_error(&r, c->status, c->type, c->code, what);
    else
        check_tei_error(&r, c->status, c->type, what);
    if (c->status == 405) {
        const char *allow = header_value(&r, "Allow");
        const char *want = strcmp(c->path, "/embed") == 0 || strcmp(c->path, "/v1/embeddings") == 0
                               ? "POST"
                               : "GET";
        ck_assert_msg(allow != NULL && strcmp(allow, want) == 0, "%s: Allow: %s", what,
                      allow != NULL ? allow : "(none)");
    }
    resp_free(&r);
}
END_TEST

/* Nesting deep enough to overflow a naive recursive parser's stack. */
START_TEST(test_deep_nesting)
{
    REQUIRE_SERVER();
    buf b = {0};
    buf_add(&b, "{\"inputs\":", 10);
    for (int i = 0; i < 1500; i++)
        buf_add(&b, "[", 1);
    for (int i = 0; i < 1500; i++)
        buf_add(&b, "]", 1);
    buf_add(&b, "}", 1);
    http_resp r;
    http("POST", "/embed", b.p, &r);
    check_tei_error(&r, 422, "Validation", "1500 nested arrays");
    resp_free(&r);
    free(b.p);
    http("GET", "/health", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

/* The same limits let good requests through. */
START_TEST(test_limits_accept_within)
{
    REQUIRE_SERVER();
    http_resp r;
    http("POST", "/embed", "{\"inputs\":[\"a\",\"b\",\"c\",\"d\"]}", &r);
    ck_assert_msg(r.status == 200, "4 inputs: %ld %s", r.status, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, MAX_CLIENT_BATCH);
    lines_free(&rows);
    resp_free(&r);
    /* a body of exactly the limit */
    buf b = {0};
    buf_add(&b, "{\"inputs\":\"", 11);
    while (b.len < PAYLOAD_LIMIT - 2)
        buf_add(&b, "a", 1);
    buf_add(&b, "\"}", 2);
    ck_assert_int_eq(b.len, PAYLOAD_LIMIT);
    http("POST", "/embed", b.p, &r);
    ck_assert_msg(r.status == 200, "body of the limit: %ld %s", r.status, r.body.p);
    resp_free(&r);
    free(b.p);
}
END_TEST

/* A body over --payload-limit gets 413, in each family's shape. */
START_TEST(test_413_body)
{
    REQUIRE_SERVER();
    buf words = {0};
    while (words.len < PAYLOAD_LIMIT)
        buf_add(&words, "word ", 5);
    char *oai = string_body("input", words.p, NULL), *tei = string_body("inputs", words.p, NULL);
    http_resp r;
    http("POST", "/v1/embeddings", oai, &r);
    check_openai_error(&r, 413, "invalid_request_error", "payload_too_large", "openai 413");
    resp_free(&r);
    http("POST", "/embed", tei, &r);
    check_tei_error(&r, 413, "Validation", "tei 413");
    resp_free(&r);
    free(words.p);
    free(oai);
    free(tei);
}
END_TEST

/* A declared Content-Length over the limit is refused from the headers
 * alone: the answer comes without any body byte sent. */
START_TEST(test_413_before_body)
{
    REQUIRE_SERVER();
    const char *paths[] = {"/embed", "/v1/embeddings"};
    for (int i = 0; i < 2; i++) {
        int fd = raw_connect(g_srv.port);
        raw_post_headers(fd, paths[i], 100000000, 0);
        http_resp r;
        double t0 = now_s();
        long st = raw_read_response(fd, 5.0, &r);
        ck_assert_msg(st == 413, "%s: status %ld after %.2f s (no body sent)", paths[i], st,
                      now_s() - t0);
        if (i == 0)
            check_tei_error(&r, 413, "Validation", "early 413");
        else
            check_openai_error(&r, 413, "invalid_request_error", "payload_too_large", "early 413");
        resp_free(&r);
        close(fd);
    }
}
END_TEST

/* A chunked body (no Content-Length) that grows past the limit. */
START_TEST(test_413_chunked)
{
    REQUIRE_SERVER();
    int fd = raw_connect(g_srv.port);
    const char *h = "POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n";
    raw_send(fd, h, strlen(h));
    char chunk[1000 + 16];
    int n = snprintf(chunk, sizeof chunk, "3e8\r\n");
    memset(chunk + n, 'x', 1000);
    memcpy(chunk + n + 1000, "\r\n", 2);
    for (int i = 0; i < 5; i++)
        raw_send(fd, chunk, (size_t)n + 1002);
    raw_send(fd, "0\r\n\r\n", 5);
    http_resp r;
    long st = raw_read_response(fd, 5.0, &r);
    ck_assert_msg(st == 413, "chunked body of 5000 bytes: %ld %s", st, r.body.p);
    check_tei_error(&r, 413, "Validation", "chunked 413");
    resp_free(&r);
    close(fd);
}
END_TEST

/* ======================================================================== */
/* TCase auth: --api-key                                                    */
/* ======================================================================== */

static void setup_auth(void)
{
    const char *args[] = {"--api-key", "s3cret", NULL};
    fixture_start(args);
}

typedef struct auth_case {
    const char *method, *path, *body, *authorization;
    long status;
} auth_case;

static const auth_case auth_cases[] = {
    {"POST", "/embed", "{\"inputs\":\"a\"}", NULL, 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "Bearer wrong", 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "Bearer s3cretX", 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "Bearer s3cre", 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "Bearer ", 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "Basic s3cret", 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "s3cret", 401},
    {"POST", "/embed", "{\"inputs\":\"a\"}", "Bearer s3cret", 200},
    {"POST", "/v1/embeddings", "{\"input\":\"a\"}", NULL, 401},
    {"POST", "/v1/embeddings", "{\"input\":\"a\"}", "Bearer nope", 401},
    {"POST", "/v1/embeddings", "{\"input\":\"a\"}", "Bearer s3cret", 200},
    {"POST", "/tokenize", "{\"inputs\":\"a\"}", NULL, 401},
    {"POST", "/tokenize", "{\"inputs\":\"a\"}", "Bearer s3cret", 200},
    {"GET", "/info", NULL, NULL, 401},
    {"GET", "/info", NULL, "Bearer s3cret", 200},
    {"GET", "/v1/models", NULL, NULL, 401},
    {"GET", "/v1/models", NULL, "Bearer s3cret", 200},
    {"GET", "/health", NULL, NULL, 200},
    {"GET", "/metrics", NULL, NULL, 200},
    {"GET", "/health", NULL, "Bearer wrong", 200},
};

START_TEST(test_auth_table)
{
    REQUIRE_SERVER();
    const auth_case *c = &auth_cases[_i];
    char hdr[128], what[256];
    const char *headers[2] = {NULL, NULL};
    if (c->authorization != NULL) {
        snprintf(hdr, sizeof hdr, "Authorization: %s", c->authorization);
        headers[0] = hdr;
    }
    snprintf(what, sizeof what, "%s %s with '%s'", c->method, c->path,
             c->authorization != NULL ? c->authorization : "(none)");
    http_resp r;
    http_port(g_srv.port, c->method, c->path, c->body, headers, &r);
    if (c->status == 401) {
        if (strncmp(c->path, "/v1/", 4) == 0)
            check_openai_error(&r, 401, "authentication_error", "invalid_api_key", what);
        else
            check_tei_error(&r, 401, "Unauthorized", what);
        const char *www = header_value(&r, "WWW-Authenticate");
        ck_assert_msg(www != NULL && strncmp(www, "Bearer", 6) == 0, "%s: WWW-Authenticate %s",
                      what, www != NULL ? www : "(none)");
    } else {
        ck_assert_msg(r.status == c->status, "%s: %ld %.200s", what, r.status, r.body.p);
    }
    resp_free(&r);
}
END_TEST

/* ======================================================================== */
/* TCase busy: --max-concurrent-requests 1                                  */
/* ======================================================================== */

static void setup_busy(void)
{
    const char *args[] = {"--max-concurrent-requests", "1", NULL};
    fixture_start(args);
}

/* 200, or 429 for a while after a slot was freed elsewhere (up to 30 s: a
 * sanitizer build on a loaded machine may still be computing an abandoned
 * batch; one CI run under UBSan with other jobs running needed over 10 s). */
static long post_until_admitted(const char *path, const char *body, http_resp *r)
{
    double deadline = now_s() + 30.0;
    for (;;) {
        http("POST", path, body, r);
        if (r->status != 429 || now_s() > deadline)
            return r->status;
        resp_free(r);
        usleep(20000);
    }
}

START_TEST(test_429_when_busy)
{
    REQUIRE_SERVER();
    const char *body = "{\"inputs\":\"held request\"}";
    int held = hold_request(g_srv.port, "/embed", body);
    http_resp r;
    http("POST", "/embed", "{\"inputs\":\"second\"}", &r);
    check_tei_error(&r, 429, "Overloaded", "second /embed while one is in flight");
    ck_assert_msg(r.seconds < 1.0, "429 took %.2f s", r.seconds);
    resp_free(&r);
    http("POST", "/v1/embeddings", "{\"input\":\"second\"}", &r);
    check_openai_error(&r, 429, "rate_limit_error", "rate_limit_exceeded", "/v1/embeddings busy");
    resp_free(&r);
    /* Routes that do not compute are not limited; /tokenize is (its
     * response can be many times its body). */
    http("GET", "/health", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http("POST", "/tokenize", "{\"inputs\":\"x\"}", &r);
    ck_assert_int_eq(r.status, 429);
    resp_free(&r);
    /* The held request completes with its vector... */
    raw_send(held, body, strlen(body));
    long st = raw_read_response(held, 10.0, &r);
    ck_assert_msg(st == 200, "held request: %ld %s", st, r.body.p);
    resp_free(&r);
    close(held);
}
END_TEST

START_TEST(test_429_then_slot_freed)
{
    REQUIRE_SERVER();
    const char *body = "{\"inputs\":\"held request\"}";
    int held = hold_request(g_srv.port, "/embed", body);
    raw_send(held, body, strlen(body));
    http_resp r;
    long st = raw_read_response(held, 10.0, &r);
    ck_assert_msg(st == 200, "held request: %ld %s", st, r.body.p);
    lines rows = embed_rows(r.body.p);
    ck_assert_int_eq(rows.n, 1);
    resp_free(&r);
    close(held);
    /* ...and frees its slot: the next one is admitted. */
    ck_assert_int_eq(post_until_admitted("/embed", "{\"inputs\":\"held request\"}", &r), 200);
    lines again = embed_rows(r.body.p);
    check_vec_text(again.line[0], rows.line[0], DIMS, "same text after the slot is free");
    lines_free(&again);
    lines_free(&rows);
    resp_free(&r);
}
END_TEST

/* A client that goes away mid-body gives its slot back. */
START_TEST(test_slot_freed_on_abort)
{
    REQUIRE_SERVER();
    const char *body = "{\"inputs\":\"abandoned\"}";
    int held = hold_request(g_srv.port, "/embed", body);
    raw_send(held, body, 5);
    http_resp r;
    http("POST", "/embed", "{\"inputs\":\"x\"}", &r);
    ck_assert_int_eq(r.status, 429);
    resp_free(&r);
    close(held);
    ck_assert_int_eq(post_until_admitted("/embed", "{\"inputs\":\"x\"}", &r), 200);
    resp_free(&r);
    /* Also when the client leaves during the computation: a large batch,
     * closed at once. */
    buf b = {0};
    buf_add(&b, "{\"inputs\":[", 11);
    for (int i = 0; i < 1000; i++)
        buf_addf(&b, "%s\"text number %d of a batch that nobody waits for\"", i ? "," : "", i);
    buf_add(&b, "]}", 2);
    int fd = raw_connect(g_srv.port);
    raw_post_headers(fd, "/embed", b.len, 0);
    raw_send(fd, b.p, b.len);
    close(fd);
    ck_assert_int_eq(post_until_admitted("/embed", "{\"inputs\":\"x\"}", &r), 200);
    resp_free(&r);
    free(b.p);
}
END_TEST

/* ======================================================================== */
/* TCase slow: --timeout 2 and a stalled client                             */
/* ======================================================================== */

static void setup_slow(void)
{
    const char *args[] = {"--timeout", "2", NULL};
    fixture_start(args);
}

typedef struct prompt_arg {
    int port;
    int n_ok;
    double worst;
} prompt_arg;

static void *prompt_main(void *arg)
{
    prompt_arg *p = arg;
    for (int i = 0; i < 5; i++) {
        http_resp r;
        http_port(p->port, "POST", "/embed", "{\"inputs\":[\"are you there\",\"still here\"]}",
                  NULL, &r);
        p->n_ok += r.status == 200;
        if (r.seconds > p->worst)
            p->worst = r.seconds;
        resp_free(&r);
    }
    return NULL;
}

START_TEST(test_slow_client)
{
    REQUIRE_SERVER();
    const char *body = "{\"inputs\":\"a body that never fully arrives\"}";
    int stalled = raw_connect(g_srv.port);
    raw_post_headers(stalled, "/embed", strlen(body), 0);
    raw_send(stalled, body, strlen(body) / 2);
    double t_stall = now_s();
    /* Slowloris: headers that never end. */
    int partial = raw_connect(g_srv.port);
    const char *h = "POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty";
    raw_send(partial, h, strlen(h));
    /* Others are answered meanwhile, promptly. */
    enum { T = 8 };
    pthread_t th[T];
    prompt_arg pa[T];
    for (int i = 0; i < T; i++) {
        pa[i] = (prompt_arg){.port = g_srv.port};
        ck_assert(pthread_create(&th[i], NULL, prompt_main, &pa[i]) == 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    double served = now_s() - t_stall;
    for (int i = 0; i < T; i++) {
        ck_assert_msg(pa[i].n_ok == 5, "client %d: %d of 5 answered", i, pa[i].n_ok);
        ck_assert_msg(pa[i].worst < 1.0, "client %d waited %.2f s", i, pa[i].worst);
    }
    ck_assert_msg(served < 1.5, "the other clients took %.2f s", served);
    /* The stalled connections are closed after --timeout 2 s, not before. */
    double closed = raw_wait_closed(stalled, 8.0);
    ck_assert_msg(closed >= 0, "stalled upload still open after %.1f s", now_s() - t_stall);
    double at = now_s() - t_stall;
    ck_assert_msg(at >= 1.5 && at < 6.0, "stalled upload closed after %.2f s", at);
    closed = raw_wait_closed(partial, 8.0);
    ck_assert_msg(closed >= 0, "stalled headers still open after %.1f s", now_s() - t_stall);
    close(stalled);
    close(partial);
    /* The server still works. */
    http_resp r;
    http("POST", "/embed", "{\"inputs\":\"after\"}", &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

/* ======================================================================== */
/* TCase shutdown: SIGTERM (each test starts its own server)                */
/* ======================================================================== */

static server_proc s_own;

static void start_own(const char *const *extra)
{
    ck_assert_msg(srv_start(&s_own, extra) == 0, "server did not start");
}

/* GET /health on a keep-alive raw connection; returns the status. */
static long raw_get(int fd, const char *path, http_resp *r)
{
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    raw_send(fd, req, (size_t)n);
    return raw_read_response(fd, 5.0, r);
}

/* Sends SIGTERM and waits until the server says it began shutting down
 * (its /health turns 503 on the keep-alive connection probe). */
static void sigterm_and_wait_draining(int probe)
{
    ck_assert(kill(s_own.pid, SIGTERM) == 0);
    double deadline = now_s() + 5.0;
    for (;;) {
        http_resp r;
        long st = raw_get(probe, "/health", &r);
        resp_free(&r);
        if (st == 503)
            return;
        ck_assert_msg(st == 200 && now_s() < deadline, "/health during shutdown: %ld", st);
        usleep(10000);
    }
}

static void expect_exit_zero(double timeout_s)
{
    int st = srv_wait(&s_own, timeout_s);
    srv_release(&s_own);
    ck_assert_msg(st != -1, "server still running %.0f s after SIGTERM: %s", timeout_s,
                  tail(s_own.log));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "server exit status 0x%x: %s", st,
                  tail(s_own.log));
    ck_assert_msg(strstr(s_own.log, "SIGTERM received") != NULL, "%s", tail(s_own.log));
}

START_TEST(test_shutdown_idle)
{
    start_own(NULL);
    double t0 = now_s();
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(5.0);
    ck_assert_msg(now_s() - t0 < 2.0, "idle shutdown took %.2f s", now_s() - t0);
}
END_TEST

/* In-flight requests: 8 admitted, 4 of them with their (large) bodies sent
 * before SIGTERM, 4 after. All get 200 and their vectors; then exit 0. */
START_TEST(test_shutdown_graceful)
{
    const char *args[] = {"--threads", "1", NULL};
    start_own(args);
    load_texts();
    enum { K = 8, N = 200 };
    lines want = cli_embed(g_texts, N, "");
    char *body = inputs_body("inputs", g_texts, N, NULL);
    size_t len = strlen(body);
    int probe = raw_connect(s_own.port);
    http_resp r;
    ck_assert_int_eq(raw_get(probe, "/health", &r), 200);
    resp_free(&r);
    int fd[K];
    for (int i = 0; i < K; i++)
        fd[i] = hold_request(s_own.port, "/embed", body);
    for (int i = 0; i < K / 2; i++)
        raw_send(fd[i], body, len);
    sigterm_and_wait_draining(probe);
    for (int i = K / 2; i < K; i++)
        raw_send(fd[i], body, len);
    for (int i = 0; i < K; i++) {
        long st = raw_read_response(fd[i], 20.0, &r);
        ck_assert_msg(st == 200, "in-flight request %d: %ld %.200s\n%s", i, st, r.body.p,
                      tail(s_own.log));
        lines rows = embed_rows(r.body.p);
        ck_assert_int_eq(rows.n, N);
        for (int k = 0; k < N; k++)
            check_vec_text(rows.line[k], want.line[k], DIMS, "in-flight during shutdown");
        lines_free(&rows);
        resp_free(&r);
        close(fd[i]);
    }
    close(probe);
    expect_exit_zero(10.0);
    ck_assert_msg(strstr(s_own.log, " info stopped\n") != NULL, "%s", tail(s_own.log));
    lines_free(&want);
    free(body);
}
END_TEST

/* While draining, requests on already open keep-alive connections get 503
 * (/health and /embed), and /metrics still answers. */
START_TEST(test_shutdown_503)
{
    start_own(NULL);
    const char *body = "{\"inputs\":\"keeps the server draining\"}";
    int probe = raw_connect(s_own.port), emb = raw_connect(s_own.port);
    http_resp r;
    ck_assert_int_eq(raw_get(emb, "/health", &r), 200);
    resp_free(&r);
    int held = hold_request(s_own.port, "/embed", body);
    sigterm_and_wait_draining(probe);
    ck_assert_int_eq(raw_get(probe, "/health", &r), 503);
    check_tei_error(&r, 503, "Unhealthy", "/health while draining");
    resp_free(&r);
    const char *b2 = "{\"inputs\":\"too late\"}";
    raw_post_headers(emb, "/embed", strlen(b2), 0);
    raw_send(emb, b2, strlen(b2));
    ck_assert_int_eq(raw_read_response(emb, 5.0, &r), 503);
    check_tei_error(&r, 503, "Unhealthy", "/embed while draining");
    resp_free(&r);
    ck_assert_int_eq(raw_get(probe, "/metrics", &r), 200);
    resp_free(&r);
    raw_send(held, body, strlen(body));
    ck_assert_int_eq(raw_read_response(held, 10.0, &r), 200);
    resp_free(&r);
    close(held);
    close(probe);
    close(emb);
    expect_exit_zero(10.0);
}
END_TEST

/* "Stops accepting": once draining, a new connection is refused (or closed)
 * at once instead of waiting unanswered in the listen backlog until exit. */
START_TEST(test_shutdown_refuses_new_connections)
{
    start_own(NULL);
    const char *body = "{\"inputs\":\"keeps the server draining\"}";
    int probe = raw_connect(s_own.port);
    int held = hold_request(s_own.port, "/embed", body);
    sigterm_and_wait_draining(probe);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s_own.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int refused = connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0;
    double closed_after = -1;
    if (!refused) {
        const char *req = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        send(fd, req, strlen(req), MSG_NOSIGNAL);
        closed_after = raw_wait_closed(fd, 1.0);
    }
    close(fd);
    /* finish the drain before asserting, so the server exits either way */
    raw_send(held, body, strlen(body));
    http_resp r;
    ck_assert_int_eq(raw_read_response(held, 10.0, &r), 200);
    resp_free(&r);
    close(held);
    close(probe);
    expect_exit_zero(10.0);
    ck_assert_msg(refused || closed_after >= 0,
                  "a connection made while draining was accepted into the listen backlog and "
                  "left unanswered (the quiesced listen socket stays open until exit)");
}
END_TEST

/* ======================================================================== */
/* TCase items: the item store's routes, on --data in a temporary dir      */
/* ======================================================================== */

static char g_items_dir[64];

static void setup_items(void)
{
    strcpy(g_items_dir, "/tmp/embedd-items-XXXXXX");
    ck_assert(mkdtemp(g_items_dir) != NULL);
    char data[128];
    snprintf(data, sizeof data, "%s/data", g_items_dir);
    const char *args[] = {"--data", data, "--payload-limit", "200000",
                          "--max-client-batch-size", "8", NULL};
    fixture_start(args);
}

static void teardown_items(void)
{
    fixture_stop();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_items_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_server: could not remove %s\n", g_items_dir);
}

/* Sends a request; on 200 *out (when not NULL) gets the parsed body. */
static long req_port(int port, const char *method, const char *path, const char *body,
                     cJSON **out)
{
    http_resp r;
    long st = http_port(port, method, path, body, NULL, &r);
    if (out != NULL)
        *out = st == 200 ? json_of(&r) : NULL;
    if (st != 200 && out != NULL)
        fprintf(stderr, "%s %s: %ld %.300s\n", method, path, st, r.body.p);
    resp_free(&r);
    return st;
}

static long req(const char *method, const char *path, const char *body, cJSON **out)
{
    return req_port(g_srv.port, method, path, body, out);
}

static void expect_error(const char *method, const char *path, const char *body, long status,
                         const char *type)
{
    http_resp r;
    http(method, path, body, &r);
    char what[256];
    snprintf(what, sizeof what, "%s %s %.100s", method, path, body != NULL ? body : "");
    check_tei_error(&r, status, type, what);
    resp_free(&r);
}

static long get_count(int port)
{
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(port, "GET", "/items/count", NULL, &j), 200);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "count");
    ck_assert(cJSON_IsNumber(c));
    long n = (long)c->valuedouble;
    cJSON_Delete(j);
    return n;
}

/* The JSON of (1, 0.1 i, 0, ...), DIMS values. */
static char *ramp_vector(int i)
{
    buf b = {0};
    buf_addf(&b, "[1,%g", 0.1 * i);
    for (int k = 2; k < DIMS; k++)
        buf_add(&b, ",0", 2);
    buf_add(&b, "]", 2);
    return b.p;
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(f) ? f->valuestring : NULL;
}

static double num_of(const cJSON *o, const char *key)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(f), "`%s` is not a number", key);
    return f->valuedouble;
}

/* The ids of a /similar result as text ("100,101,\"fox\""). */
static void result_ids(const cJSON *res, char *out, size_t cap)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(res, "result");
    ck_assert(cJSON_IsArray(arr));
    out[0] = '\0';
    const cJSON *h;
    cJSON_ArrayForEach(h, arr) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(h, "id");
        char *s = cJSON_PrintUnformatted(id);
        if (out[0] != '\0')
            strncat(out, ",", cap - strlen(out) - 1);
        strncat(out, s, cap - strlen(out) - 1);
        free(s);
    }
}

static void expect_similar(const char *body, const char *want)
{
    cJSON *j = NULL;
    ck_assert_int_eq(req("POST", "/similar", body, &j), 200);
    char ids[512];
    result_ids(j, ids, sizeof ids);
    ck_assert_msg(strcmp(ids, want) == 0, "/similar %s: ids %s, want %s", body, ids, want);
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "time")));
    ck_assert_int_eq((int)num_of(j, "model_version"), 1);
    cJSON_Delete(j);
}

START_TEST(test_items_crud)
{
    REQUIRE_SERVER();
    long base = get_count(g_srv.port);
    cJSON *j = NULL;
    ck_assert_int_eq(req("POST", "/items",
                         "{\"items\":[{\"id\":7,\"text\":\"the cat sat\",\"payload\":{\"kind\":"
                         "\"num\"}},{\"id\":\"7\",\"text\":\"a dog ran\",\"payload\":{\"kind\":"
                         "\"str\"}}]}",
                         &j),
                     200);
    ck_assert_str_eq(str_of(j, "status"), "ok");
    ck_assert_int_eq((int)num_of(j, "upserted"), 2);
    cJSON_Delete(j);
    ck_assert_int_eq(get_count(g_srv.port), base + 2); /* 7 and "7" are two items */

    ck_assert_int_eq(req("GET", "/items/7", NULL, &j), 200);
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "id")));
    ck_assert_int_eq((int)num_of(j, "id"), 7);
    ck_assert_str_eq(str_of(j, "text"), "the cat sat");
    ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(j, "payload"), "kind"), "num");
    ck_assert_int_eq((int)num_of(j, "model_version"), 1);
    ck_assert(cJSON_GetObjectItemCaseSensitive(j, "vector") == NULL);
    cJSON_Delete(j);

    /* the stored vector is /embed's of the text (normalised) */
    ck_assert_int_eq(req("GET", "/items/7?with_vector=true", NULL, &j), 200);
    char *vec = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "vector"));
    char *want = embed_one(g_srv.port, "the cat sat", NULL);
    check_vec_text(vec, want, DIMS, "stored vector");
    free(vec);
    free(want);
    cJSON_Delete(j);

    /* the string id "7" is another item */
    ck_assert_int_eq(req("POST", "/similar", "{\"id\":\"7\",\"limit\":1}", &j), 200);
    char ids[256];
    result_ids(j, ids, sizeof ids);
    ck_assert_str_eq(ids, "\"7\"");
    cJSON_Delete(j);

    /* upsert replaces everything */
    ck_assert_int_eq(req("POST", "/items",
                         "{\"items\":[{\"id\":7,\"text\":\"new text\",\"payload\":{\"kind\":"
                         "\"num2\"}}]}",
                         NULL),
                     200);
    ck_assert_int_eq(get_count(g_srv.port), base + 2);
    ck_assert_int_eq(req("GET", "/items/7", NULL, &j), 200);
    ck_assert_str_eq(str_of(j, "text"), "new text");
    ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(j, "payload"), "kind"), "num2");
    cJSON_Delete(j);

    /* string ids in the path */
    ck_assert_int_eq(req("POST", "/items",
                         "{\"items\":[{\"id\":\"a b/c\",\"text\":\"spaced\"}]}", NULL),
                     200);
    ck_assert_int_eq(req("GET", "/items/a%20b%2Fc", NULL, &j), 200);
    ck_assert_str_eq(str_of(j, "id"), "a b/c");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "payload")));
    cJSON_Delete(j);

    /* deletes */
    ck_assert_int_eq(req("DELETE", "/items/7", NULL, &j), 200);
    ck_assert_int_eq((int)num_of(j, "deleted"), 1);
    cJSON_Delete(j);
    expect_error("DELETE", "/items/7", NULL, 404, "NotFound");
    expect_error("GET", "/items/7", NULL, 404, "NotFound");
    ck_assert_int_eq(req("POST", "/items/delete", "{\"ids\":[\"7\",123456,\"a b/c\"]}", &j),
                     200);
    ck_assert_int_eq((int)num_of(j, "deleted"), 2);
    cJSON_Delete(j);
    ck_assert_int_eq(get_count(g_srv.port), base);

    ck_assert_int_eq(req("GET", "/info", NULL, &j), 200);
    ck_assert_str_eq(str_of(j, "store"), "disk");
    ck_assert(str_of(j, "data_dir") != NULL);
    ck_assert_int_eq((int)num_of(j, "items"), base);
    cJSON_Delete(j);
}
END_TEST

START_TEST(test_items_similar)
{
    REQUIRE_SERVER();
    /* 8 items in set s1: (1, 0.1 i); the closer to (1, 0) the smaller i */
    buf b = {0};
    buf_addf(&b, "{\"items\":[");
    for (int i = 0; i < 8; i++) {
        char *v = ramp_vector(i);
        buf_addf(&b, "%s{\"id\":%d,\"vector\":%s,\"payload\":{\"set\":\"s1\",\"group\":\"%s\","
                 "\"i\":%d}}",
                 i > 0 ? "," : "", 100 + i, v, i % 2 == 0 ? "even" : "odd", i);
        free(v);
    }
    buf_addf(&b, "]}");
    ck_assert_int_eq(req("POST", "/items", b.p, NULL), 200);
    free(b.p);
    ck_assert_int_eq(req("POST", "/items",
                         "{\"items\":[{\"id\":\"fox\",\"text\":\"the quick brown fox\","
                         "\"payload\":{\"set\":\"s2\"}}]}",
                         NULL),
                     200);

    char *q = ramp_vector(0);
    char body[4096];
    const char *s1 = "\"filter\":{\"must\":[{\"key\":\"set\",\"match\":{\"value\":\"s1\"}}]}";
    snprintf(body, sizeof body, "{\"vector\":%s,\"limit\":3,%s}", q, s1);
    expect_similar(body, "100,101,102");
    snprintf(body, sizeof body, "{\"vector\":%s,\"limit\":3,\"offset\":3,%s}", q, s1);
    expect_similar(body, "103,104,105");
    snprintf(body, sizeof body, "{\"vector\":%s,\"limit\":3,\"offset\":6,%s}", q, s1);
    expect_similar(body, "106,107");
    /* must and must_not */
    snprintf(body, sizeof body,
             "{\"vector\":%s,\"filter\":{\"must\":[{\"key\":\"set\",\"match\":{\"value\":\"s1\"}},"
             "{\"key\":\"group\",\"match\":{\"value\":\"even\"}}]}}",
             q);
    expect_similar(body, "100,102,104,106");
    snprintf(body, sizeof body,
             "{\"vector\":%s,\"filter\":{\"must\":[{\"key\":\"set\",\"match\":{\"value\":\"s1\"}}],"
             "\"must_not\":[{\"key\":\"group\",\"match\":{\"value\":\"even\"}},"
             "{\"key\":\"i\",\"match\":{\"value\":7}}]}}",
             q);
    expect_similar(body, "101,103,105");
    /* threshold: cos = 1/sqrt(1 + 0.01 i^2) >= 0.9 keeps i <= 4 */
    snprintf(body, sizeof body, "{\"vector\":%s,\"score_threshold\":0.9,%s}", q, s1);
    expect_similar(body, "100,101,102,103,104");
    /* search params change nothing without an index; exact is exact */
    snprintf(body, sizeof body,
             "{\"vector\":%s,\"limit\":3,\"params\":{\"hnsw_ef\":128,\"exact\":true},%s}", q,
             s1);
    expect_similar(body, "100,101,102");
    snprintf(body, sizeof body, "{\"vector\":%s,\"limit\":3,\"params\":{\"exact\":false},%s}",
             q, s1);
    expect_similar(body, "100,101,102");
    /* by id: the item itself first, score 1 */
    snprintf(body, sizeof body, "{\"id\":103,\"limit\":3,%s}", s1);
    expect_similar(body, "103,104,102"); /* angles: 103 at 16.7°, 104 21.8°, 102 11.3° */
    /* payload and vector switches */
    snprintf(body, sizeof body,
             "{\"vector\":%s,\"limit\":1,\"with_payload\":false,\"with_vector\":true,%s}", q, s1);
    cJSON *j = NULL;
    ck_assert_int_eq(req("POST", "/similar", body, &j), 200);
    const cJSON *h = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "result"), 0);
    ck_assert(cJSON_GetObjectItemCaseSensitive(h, "payload") == NULL);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(h, "vector")), DIMS);
    ck_assert(fabs(num_of(h, "score") - 1.0) < 1e-5);
    cJSON_Delete(j);
    free(q);

    /* by text == by /embed's vector of that text */
    char *v = embed_one(g_srv.port, "the quick brown fox", NULL);
    cJSON *jt = NULL, *jv = NULL;
    ck_assert_int_eq(req("POST", "/similar", "{\"text\":\"the quick brown fox\",\"limit\":5}",
                         &jt),
                     200);
    snprintf(body, sizeof body, "{\"vector\":%s,\"limit\":5}", v);
    ck_assert_int_eq(req("POST", "/similar", body, &jv), 200);
    char ids_t[512], ids_v[512];
    result_ids(jt, ids_t, sizeof ids_t);
    result_ids(jv, ids_v, sizeof ids_v);
    ck_assert_str_eq(ids_t, ids_v);
    ck_assert_msg(strncmp(ids_t, "\"fox\"", 5) == 0, "text query found %s", ids_t);
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(jt, "result");
    const cJSON *rv = cJSON_GetObjectItemCaseSensitive(jv, "result");
    for (int i = 0; i < cJSON_GetArraySize(rt); i++)
        ck_assert(fabs(num_of(cJSON_GetArrayItem(rt, i), "score") -
                       num_of(cJSON_GetArrayItem(rv, i), "score")) < 1e-5);
    ck_assert(fabs(num_of(cJSON_GetArrayItem(rt, 0), "score") - 1.0) < 1e-5);
    ck_assert_str_eq(str_of(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rt, 0),
                                                             "payload"),
                            "set"),
                     "s2");
    cJSON_Delete(jt);
    cJSON_Delete(jv);
    free(v);

    /* the quick form */
    ck_assert_int_eq(req("GET", "/similar?q=the%20quick%20brown%20fox&k=2", NULL, &j), 200);
    char ids[512];
    result_ids(j, ids, sizeof ids);
    ck_assert_msg(strncmp(ids, "\"fox\",", 6) == 0 && strchr(ids + 6, ',') == NULL,
                  "quick form: %s", ids);
    cJSON_Delete(j);
}
END_TEST

START_TEST(test_items_errors)
{
    REQUIRE_SERVER();
    expect_error("POST", "/items", "{\"items\":[{\"id\":1,\"vector\":[1,2,3]}]}", 422,
                 "Validation");
    expect_error("POST", "/similar", "{\"vector\":[1,2,3]}", 422, "Validation");
    expect_error("GET", "/items/987654", NULL, 404, "NotFound");
    expect_error("GET", "/items/no-such-item", NULL, 404, "NotFound");
    expect_error("DELETE", "/items/987654", NULL, 404, "NotFound");
    expect_error("POST", "/similar", "{\"id\":987654}", 404, "NotFound");
    expect_error("POST", "/similar", "{\"text\":\"x\",\"filter\":{\"should\":[]}}", 422,
                 "Validation");
    expect_error("POST", "/similar",
                 "{\"text\":\"x\",\"filter\":{\"must\":[{\"key\":\"a\",\"match\":{}}]}}", 422,
                 "Validation");
    expect_error("POST", "/items", "{\"items\":[]}", 400, "Empty");
    expect_error("POST", "/items/delete", "{\"ids\":[]}", 400, "Empty");
    expect_error("POST", "/items", "{\"items\":[{\"id\":1}]}", 422, "Validation");
    expect_error("POST", "/items", "{\"items\":[{\"id\":1,\"text\":\"a\",\"vector\":[1]}]}", 422,
                 "Validation");
    expect_error("POST", "/items", "{\"items\":[{\"id\":-1,\"text\":\"a\"}]}", 422,
                 "Validation");
    expect_error("POST", "/items", "{\"items\":[{\"id\":1,\"text\":\"a\",\"payload\":[1]}]}",
                 422, "Validation");
    expect_error("POST", "/similar", "{\"limit\":3}", 422, "Validation");
    expect_error("POST", "/similar", "{\"text\":\"a\",\"id\":1}", 422, "Validation");
    expect_error("GET", "/similar", NULL, 422, "Validation");
    /* search params (Qdrant's): an object of hnsw_ef 1..10000 and exact */
    expect_error("POST", "/similar", "{\"text\":\"a\",\"params\":5}", 422, "Validation");
    expect_error("POST", "/similar", "{\"text\":\"a\",\"params\":{\"hnsw_ef\":0}}", 422,
                 "Validation");
    expect_error("POST", "/similar", "{\"text\":\"a\",\"params\":{\"hnsw_ef\":1.5}}", 422,
                 "Validation");
    expect_error("POST", "/similar", "{\"text\":\"a\",\"params\":{\"hnsw_ef\":10001}}",
                 422, "Validation");
    expect_error("POST", "/similar", "{\"text\":\"a\",\"params\":{\"exact\":1}}", 422,
                 "Validation");
    expect_error("POST", "/similar", "{\"text\":\"a\",\"params\":{\"quantization\":{}}}",
                 422, "Validation");
    /* more items than --max-client-batch-size 8 */
    buf b = {0};
    buf_addf(&b, "{\"items\":[");
    for (int i = 0; i < 9; i++)
        buf_addf(&b, "%s{\"id\":%d,\"text\":\"t\"}", i > 0 ? "," : "", i);
    buf_addf(&b, "]}");
    expect_error("POST", "/items", b.p, 422, "Validation");
    free(b.p);
    /* a body over --payload-limit 200000 */
    b = (buf){0};
    buf_addf(&b, "{\"items\":[{\"id\":1,\"text\":\"");
    for (int i = 0; i < 25000; i++)
        buf_add(&b, "aaaaaaaa", 8);
    buf_addf(&b, "\"}]}");
    expect_error("POST", "/items", b.p, 413, "Validation");
    free(b.p);
}
END_TEST

/* Items survive a restart on the same --data; without it /info says memory. */
START_TEST(test_items_persistence)
{
    char dir[] = "/tmp/embedd-items-XXXXXX";
    ck_assert(mkdtemp(dir) != NULL);
    char data[128];
    snprintf(data, sizeof data, "%s/data", dir);
    const char *args[] = {"--data", data, NULL};
    start_own(args);
    char *v = ramp_vector(3);
    char body[2048];
    snprintf(body, sizeof body,
             "{\"items\":[{\"id\":1,\"text\":\"kept text\",\"payload\":{\"p\":[1,\"x\"]}},"
             "{\"id\":\"two\",\"vector\":%s},{\"id\":3,\"text\":\"gone\"}]}",
             v);
    free(v);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/items", body, NULL), 200);
    ck_assert_int_eq(req_port(s_own.port, "DELETE", "/items/3", NULL, NULL), 200);
    cJSON *before = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/items/two?with_vector=true", NULL, &before),
                     200);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(10.0);

    start_own(args);
    ck_assert_int_eq(get_count(s_own.port), 2);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/items/1", NULL, &j), 200);
    ck_assert_str_eq(str_of(j, "text"), "kept text");
    char *p = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "payload"));
    ck_assert_str_eq(p, "{\"p\":[1,\"x\"]}");
    free(p);
    cJSON_Delete(j);
    ck_assert_int_eq(req_port(s_own.port, "GET", "/items/two?with_vector=true", NULL, &j), 200);
    char *a = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(before, "vector"));
    char *c = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "vector"));
    ck_assert_str_eq(a, c);
    free(a);
    free(c);
    cJSON_Delete(j);
    cJSON_Delete(before);
    ck_assert_int_eq(req_port(s_own.port, "GET", "/items/3", NULL, NULL), 404);
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    ck_assert_str_eq(str_of(j, "store"), "disk");
    ck_assert_int_eq((int)num_of(j, "items"), 2);
    cJSON_Delete(j);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(10.0);

    start_own(NULL);
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    ck_assert_str_eq(str_of(j, "store"), "memory");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "data_dir")));
    ck_assert_int_eq((int)num_of(j, "items"), 0);
    cJSON_Delete(j);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(10.0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST


/* ======================================================================== */
/* TCase learn: continuous training, the publish gate, versions (own servers) */
/* ======================================================================== */

/* STS-B train sentences (first column), at most max. */
static int sts_sentences(char ***out, int max)
{
    char path[1024];
    tu_shared_path(path, sizeof path, "stsb/sts-train.tsv");
    char *text = tu_read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    char **v = calloc((size_t)max, sizeof *v);
    int n = 0;
    for (char *line = strtok(text, "\n"); line != NULL && n < max; line = strtok(NULL, "\n")) {
        char *a = strchr(line, '\t');
        char *b = a != NULL ? strchr(a + 1, '\t') : NULL;
        if (b == NULL)
            continue;
        *b = '\0';
        v[n++] = strdup(a + 1);
    }
    free(text);
    *out = v;
    return n;
}

static void strings_free(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* POST /train/samples with texts; returns how many were added. */
static int learn_feed(int port, char **texts, int n)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "texts");
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(texts[i]));
    char *body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cJSON *j = NULL;
    long st = req_port(port, "POST", "/train/samples", body, &j);
    free(body);
    ck_assert_int_eq(st, 200);
    int added = (int)num_of(j, "added");
    cJSON_Delete(j);
    return added;
}

/* POST /items with texts as items 0..n-1. */
static void learn_items(int port, char **texts, int n)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "items");
    for (int i = 0; i < n; i++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "id", i);
        cJSON_AddStringToObject(it, "text", texts[i]);
        cJSON_AddItemToArray(arr, it);
    }
    char *body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    ck_assert_int_eq(req_port(port, "POST", "/items", body, NULL), 200);
    free(body);
}

static cJSON *learn_status(int port)
{
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(port, "GET", "/train/status", NULL, &j), 200);
    return j;
}

/* --precision int8 (where the CPU has AVX-512 VNNI): /info says so and
 * /embed answers with unit vectors of the model's dimension. */
START_TEST(test_serve_int8)
{
    if (!emb_gemm_int8_available())
        return;
    const char *args[] = {"--precision", "int8", "--train", "off", NULL};
    start_own(args);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "precision");
    ck_assert_msg(cJSON_IsString(p) && strcmp(p->valuestring, "int8") == 0, "precision");
    const int dim = (int)num_of(j, "dimension");
    cJSON_Delete(j);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/embed", "{\"inputs\":\"an int8 probe\"}",
                              &j),
                     200);
    const cJSON *v = cJSON_GetArrayItem(j, 0);
    ck_assert_int_eq(cJSON_GetArraySize(v), dim);
    double norm = 0.0;
    for (int c = 0; c < dim; c++)
        norm += cJSON_GetArrayItem(v, c)->valuedouble * cJSON_GetArrayItem(v, c)->valuedouble;
    ck_assert_msg(fabs(norm - 1.0) < 1e-4, "norm^2 %g", norm);
    cJSON_Delete(j);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(10.0);
}
END_TEST

/* A model with Dense modules (tests/fixtures/tiny-dense, 16 dims after
 * them): /info reports their dimension, /embed answers with it (and
 * shorter with "dimensions"), and the item store holds vectors of it. */
START_TEST(test_serve_dense)
{
    const char *args[] = {"--model", "tests/fixtures/tiny-dense", "--train", "off", NULL};
    start_own(args);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    ck_assert_int_eq((int)num_of(j, "dimension"), 16);
    cJSON_Delete(j);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/embed",
                              "{\"inputs\":[\"a dense probe\",\"another one\"]}", &j), 200);
    ck_assert_int_eq(cJSON_GetArraySize(j), 2);
    const cJSON *v = cJSON_GetArrayItem(j, 0);
    ck_assert_int_eq(cJSON_GetArraySize(v), 16);
    double norm = 0.0;
    for (int c = 0; c < 16; c++)
        norm += cJSON_GetArrayItem(v, c)->valuedouble * cJSON_GetArrayItem(v, c)->valuedouble;
    ck_assert_msg(fabs(norm - 1.0) < 1e-4, "norm^2 %g", norm);
    cJSON_Delete(j);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/embed",
                              "{\"inputs\":\"a dense probe\",\"dimensions\":8}", &j), 200);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(j, 0)), 8);
    cJSON_Delete(j);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/embed",
                              "{\"inputs\":\"a dense probe\",\"dimensions\":17}", NULL), 422);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/items",
                              "{\"items\":[{\"id\":\"a\",\"text\":\"a cat on a mat\"},"
                              "{\"id\":\"b\",\"text\":\"stock prices fell\"}]}", NULL), 200);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/similar",
                              "{\"text\":\"a cat\",\"limit\":2}", &j), 200);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "result")), 2);
    cJSON_Delete(j);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(10.0);
}
END_TEST

static double status_num(const cJSON *st, const char *obj, const char *key)
{
    const cJSON *o = obj != NULL ? cJSON_GetObjectItemCaseSensitive(st, obj) : st;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Polls /train/status until obj.key >= want; returns the status (caller
 * frees) or fails after timeout_s. */
static cJSON *learn_wait(int port, const char *obj, const char *key, double want,
                         double timeout_s)
{
    double deadline = now_s() + timeout_s;
    for (;;) {
        cJSON *st = learn_status(port);
        if (status_num(st, obj, key) >= want)
            return st;
        char *text = cJSON_PrintUnformatted(st);
        cJSON_Delete(st);
        if (now_s() > deadline) {
            ck_abort_msg("%s.%s did not reach %g in %.0f s: %s\nserver: %s", obj ? obj : "",
                         key, want, timeout_s, text, tail(s_own.log));
        }
        free(text);
        usleep(100000);
    }
}

/* The X-Embedd-Model-Version of POST /embed, and /info's model_version. */
static void learn_expect_version(int port, int want)
{
    http_resp r;
    ck_assert_int_eq(http_port(port, "POST", "/embed", "{\"inputs\":\"a version probe\"}", NULL,
                               &r), 200);
    const char *h = header_value(&r, "X-Embedd-Model-Version");
    ck_assert_msg(h != NULL && atoi(h) == want, "X-Embedd-Model-Version %s, expected %d",
                  h != NULL ? h : "(none)", want);
    resp_free(&r);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(port, "GET", "/info", NULL, &j), 200);
    ck_assert_int_eq((int)num_of(j, "model_version"), want);
    cJSON_Delete(j);
}

/* Fast, decisive settings: a gate every 6 steps, and candidates that move
 * (EMA 0.5) so that a handful of steps changes the validation loss. */
static const char *learn_flags[] = {
    "--publish-every", "6", "--train-min-samples", "16", "--train-batch-size", "8",
    "--train-max-seq-len", "16", "--train-lr", "2e-4", "--train-max-cpu", "100",
    "--train-ema", "0.5", NULL};

/* flags + extra (NULL-terminated) into argv (cap 40). These tests expect
 * gate-passing candidates served at once: --publish auto, unless extra
 * says otherwise. */
static const char **learn_args(const char **argv, const char *data_dir, const char *const *extra)
{
    int a = 0, publish = 0;
    for (int i = 0; learn_flags[i] != NULL; i++)
        argv[a++] = learn_flags[i];
    if (data_dir != NULL) {
        argv[a++] = "--data";
        argv[a++] = data_dir;
    }
    for (int i = 0; extra != NULL && extra[i] != NULL; i++) {
        publish |= strcmp(extra[i], "--publish") == 0;
        argv[a++] = extra[i];
    }
    if (!publish) {
        argv[a++] = "--publish";
        argv[a++] = "auto";
    }
    argv[a] = NULL;
    return argv;
}

START_TEST(test_learn_publish_rollback_restart)
{
    char dir[256], path[512];
    tu_mkdtemp(dir, sizeof dir);
    const char *argv[40];
    start_own(learn_args(argv, dir, NULL));
    char **texts;
    int n = sts_sentences(&texts, 400);
    learn_items(s_own.port, texts, 20);
    ck_assert_int_gt(learn_feed(s_own.port, texts, n), 300);
    cJSON *st = learn_wait(s_own.port, NULL, "published", 1, 120);
    cJSON_Delete(st);
    /* Pause, so that the version stays put: with steps of a few
     * milliseconds, more versions may have followed the first by now. A
     * publish under way when the pause arrives still completes. */
    ck_assert_int_eq(req_port(s_own.port, "POST", "/train/pause", NULL, NULL), 200);
    usleep(500000);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    const int v = (int)num_of(j, "model_version");
    cJSON_Delete(j);
    ck_assert_int_ge(v, 2);
    learn_expect_version(s_own.port, v);
    snprintf(path, sizeof path, "%s/models/v%d/model.safetensors", dir, v);
    ck_assert_msg(access(path, R_OK) == 0, "no checkpoint at %s", path);
    /* the store moves to version v, then /similar says so */
    st = learn_wait(s_own.port, "reembed", "store_version", v, 60);
    cJSON_Delete(st);
    ck_assert_int_eq(req_port(s_own.port, "GET", "/similar?q=a%20man&k=3", NULL, &j), 200);
    ck_assert_int_eq((int)num_of(j, "model_version"), v);
    cJSON_Delete(j);
    /* rollback */
    ck_assert_int_eq(req_port(s_own.port, "POST", "/train/rollback", "{\"version\":1}", NULL), 200);
    learn_expect_version(s_own.port, 1);
    http_resp r;
    http_port(s_own.port, "POST", "/train/rollback", "{\"version\":99}", NULL, &r);
    check_tei_error(&r, 404, "NotFound", "rollback to an unknown version");
    resp_free(&r);
    http_port(s_own.port, "POST", "/train/rollback", "{\"version\":\"2\"}", NULL, &r);
    check_tei_error(&r, 422, "Validation", "rollback with a string");
    resp_free(&r);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    /* a restart comes back on the rolled-back version; v loads from disk */
    const char *extra[] = {"--train-paused", NULL};
    start_own(learn_args(argv, dir, extra));
    learn_expect_version(s_own.port, 1);
    char rollback[64];
    snprintf(rollback, sizeof rollback, "{\"version\":%d}", v);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/train/rollback", rollback, NULL), 200);
    learn_expect_version(s_own.port, v);
    st = learn_wait(s_own.port, "reembed", "store_version", v, 60);
    cJSON_Delete(st);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    start_own(learn_args(argv, dir, extra));
    learn_expect_version(s_own.port, v);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    strings_free(texts, n);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The gate on a run whose learning rate blows the weights up: rejected,
 * nothing published, version 1 still serves. */
/* The learner on a model with Dense modules (tiny-dense): a published
 * version keeps them, frozen bit for bit, with the trained encoder, and a
 * restart serves it at their dimension. */
START_TEST(test_learn_dense_publish)
{
    char dir[256], path[512];
    tu_mkdtemp(dir, sizeof dir);
    const char *argv[40];
    const char *dense[] = {"--model", "tests/fixtures/tiny-dense", NULL};
    start_own(learn_args(argv, dir, dense));
    char **texts;
    int n = sts_sentences(&texts, 400);
    ck_assert_int_gt(learn_feed(s_own.port, texts, n), 300);
    cJSON *st = learn_wait(s_own.port, NULL, "published", 1, 120);
    cJSON_Delete(st);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/train/pause", NULL, NULL), 200);
    usleep(500000);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    const int v = (int)num_of(j, "model_version");
    ck_assert_int_eq((int)num_of(j, "dimension"), 16);
    cJSON_Delete(j);
    ck_assert_int_ge(v, 2);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);

    emb_err err;
    snprintf(path, sizeof path, "%s/models/v%d", dir, v);
    emb_model *base = emb_model_load("tests/fixtures/tiny-dense", &err);
    emb_model *pub = emb_model_load(path, &err);
    ck_assert_msg(base != NULL && pub != NULL, "%s", err.msg);
    ck_assert_int_eq(pub->cfg.n_dense, 2);
    ck_assert_int_eq(pub->cfg.normalize, 1);
    const size_t at = emb_encoder_floats(&base->cfg);
    ck_assert_uint_eq(pub->n_params, base->n_params);
    ck_assert_msg(memcmp(pub->params + at, base->params + at,
                         sizeof(float) * (base->n_params - at)) == 0,
                  "the published Dense weights differ from the starting ones");
    ck_assert_msg(memcmp(pub->params, base->params, sizeof(float) * at) != 0,
                  "the published encoder did not train");
    emb_model_free(base);
    emb_model_free(pub);

    const char *paused[] = {"--model", "tests/fixtures/tiny-dense", "--train-paused", NULL};
    start_own(learn_args(argv, dir, paused));
    learn_expect_version(s_own.port, v);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/embed", "{\"inputs\":\"a probe\"}", &j),
                     200);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(j, 0)), 16);
    cJSON_Delete(j);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    strings_free(texts, n);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_learn_gate_rejects_lr_blowup)
{
    const char *argv[40];
    const char *extra[] = {"--train-lr", "5", NULL};
    start_own(learn_args(argv, NULL, extra));
    char **texts;
    int n = sts_sentences(&texts, 400);
    learn_feed(s_own.port, texts, n);
    cJSON *st = learn_wait(s_own.port, NULL, "rejected", 1, 120);
    ck_assert_int_eq((int)status_num(st, NULL, "published"), 0);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(st, "last_gate");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(g, "passed")));
    cJSON_Delete(st);
    learn_expect_version(s_own.port, 1);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    strings_free(texts, n);
}
END_TEST

/* A buffer poisoned with one advertisement (numbered, so that it is not
 * de-duplicated away) trips the collapse alarm: nothing is published. */
START_TEST(test_learn_gate_rejects_poisoned_buffer)
{
    const char *argv[40];
    start_own(learn_args(argv, NULL, NULL));
    enum { N = 400 };
    char **texts = calloc(N, sizeof *texts);
    for (int i = 0; i < N; i++) {
        char t[128];
        snprintf(t, sizeof t, "buy cheap replica watches now at the best price, offer %d", i);
        texts[i] = strdup(t);
    }
    learn_feed(s_own.port, texts, N);
    cJSON *st = learn_wait(s_own.port, NULL, "rejected", 1, 120);
    ck_assert_int_eq((int)status_num(st, NULL, "published"), 0);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(st, "last_gate");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(g, "reason");
    ck_assert_msg(cJSON_IsString(reason) && strstr(reason->valuestring, "collapse") != NULL,
                  "gate reason: %s", cJSON_IsString(reason) ? reason->valuestring : "?");
    cJSON_Delete(st);
    learn_expect_version(s_own.port, 1);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    strings_free(texts, N);
}
END_TEST

/* Non-finite steps (forced every 3rd step) are skipped and counted; the
 * others train, and a version is still published (through the STS gate,
 * made lenient here: a random tiny model's Spearman is noise). */
START_TEST(test_learn_nan_steps_skipped)
{
    setenv("EMBEDD_DEBUG_NAN_EVERY", "3", 1);
    char sts[1024];
    tu_shared_path(sts, sizeof sts, "stsb/sts-dev.tsv");
    const char *argv[40];
    const char *extra[] = {"--eval-sts", sts, "--gate-tolerance", "100", NULL};
    start_own(learn_args(argv, NULL, extra));
    unsetenv("EMBEDD_DEBUG_NAN_EVERY");
    char **texts;
    int n = sts_sentences(&texts, 400);
    learn_feed(s_own.port, texts, n);
    cJSON *st = learn_wait(s_own.port, NULL, "published", 1, 180);
    ck_assert_int_ge((int)status_num(st, NULL, "skipped_steps"), 1);
    ck_assert_int_ge((int)status_num(st, NULL, "steps"), 6);
    /* the STS gate ran on both sides */
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(st, "last_gate");
    const cJSON *cand = cJSON_GetObjectItemCaseSensitive(g, "candidate");
    const cJSON *rho = cJSON_GetObjectItemCaseSensitive(cand, "sts_spearman");
    ck_assert_msg(cJSON_IsNumber(rho) && rho->valuedouble > -100 && rho->valuedouble < 100,
                  "no STS Spearman in the gate");
    cJSON_Delete(st);
    http_resp r;
    http_port(s_own.port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert(strstr(r.body.p, "embedd_train_skipped_steps_total") != NULL);
    resp_free(&r);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    strings_free(texts, n);
}
END_TEST

/* Queries run while a version is published and the store is re-embedded:
 * a query equal to a stored text must find it with cosine 1, which only
 * happens when both were embedded by the same version. */
typedef struct query_stream {
    int port;
    char **texts;
    int n;
    atomic_int stop;
    int queries, bad;
    int versions_seen[8];
    char first_bad[512];
} query_stream;

static void *query_stream_main(void *p)
{
    query_stream *q = p;
    for (int i = 0; !atomic_load(&q->stop); i++) {
        int k = i % q->n;
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "text", q->texts[k]);
        cJSON_AddNumberToObject(body, "limit", 1);
        char *b = cJSON_PrintUnformatted(body);
        cJSON_Delete(body);
        http_resp r;
        long st = http_port(q->port, "POST", "/similar", b, NULL, &r);
        free(b);
        cJSON *j = st == 200 ? json_of(&r) : NULL;
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(j, "result");
        const cJSON *top = cJSON_GetArrayItem(res, 0);
        const char *h = header_value(&r, "X-Embedd-Model-Version");
        int v = (int)num_of(j, "model_version");
        double score = cJSON_GetObjectItemCaseSensitive(top, "score") != NULL
                           ? cJSON_GetObjectItemCaseSensitive(top, "score")->valuedouble : -1;
        int ok = st == 200 && h != NULL && atoi(h) == v && score > 0.9999;
        if (!ok && q->bad++ == 0)
            snprintf(q->first_bad, sizeof q->first_bad, "status %ld header %s: %.300s", st,
                     h ? h : "-", r.body.p);
        if (v >= 0 && v < 8)
            q->versions_seen[v]++;
        q->queries++;
        cJSON_Delete(j);
        resp_free(&r);
        usleep(3000); /* gaps in which the server may train (slow under sanitizers) */
    }
    return NULL;
}

START_TEST(test_learn_publish_mid_query_stream)
{
    const char *argv[40];
    start_own(learn_args(argv, NULL, NULL));
    char **texts;
    int n = sts_sentences(&texts, 400);
    learn_items(s_own.port, texts, 40);
    query_stream q = {.port = s_own.port, .texts = texts, .n = 40};
    atomic_init(&q.stop, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, query_stream_main, &q), 0);
    learn_feed(s_own.port, texts, n);
    cJSON *st = learn_wait(s_own.port, "reembed", "store_version", 2, 120);
    cJSON_Delete(st);
    usleep(500000);
    atomic_store(&q.stop, 1);
    pthread_join(th, NULL);
    ck_assert_msg(q.bad == 0, "%d of %d queries compared across versions or failed; first: %s",
                  q.bad, q.queries, q.first_bad);
    ck_assert_msg(q.versions_seen[1] > 0 && q.versions_seen[2] > 0,
                  "queries saw version 1 %d times, version 2 %d times", q.versions_seen[1],
                  q.versions_seen[2]);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    strings_free(texts, n);
}
END_TEST

/* ---- pins, the version feed, manual promotion ------------------------------ */

/* GET /train/versions/stream on a raw connection; what it read so far. */
typedef struct sse {
    int fd;
    buf acc;
    size_t from;               /* where the next expect searches */
} sse;

static void sse_open(sse *e, int port)
{
    memset(e, 0, sizeof *e);
    e->fd = raw_connect(port);
    const char *rq = "GET /train/versions/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    raw_send(e->fd, rq, strlen(rq));
}

/* Reads until `a` and then `b` (may be NULL) appear after what the last
 * call matched; fails after timeout_s. */
static void sse_expect(sse *e, const char *a, const char *b, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    for (;;) {
        const char *at = e->acc.p != NULL ? strstr(e->acc.p + e->from, a) : NULL;
        const char *bt = at != NULL && b != NULL ? strstr(at, b) : at;
        if (bt != NULL) {
            /* the whole event (up to its blank line) counts as read */
            const char *end = strstr(bt, "\n\n");
            e->from = (size_t)((end != NULL ? end : bt) - e->acc.p);
            return;
        }
        int left_ms = (int)((deadline - now_s()) * 1000);
        struct pollfd pfd = {.fd = e->fd, .events = POLLIN};
        ck_assert_msg(left_ms > 0 && poll(&pfd, 1, left_ms) > 0,
                      "no \"%s\" %s in the version stream after %.0f s: %s", a, b ? b : "",
                      timeout_s, e->acc.p != NULL ? e->acc.p : "");
        char chunk[4096];
        ssize_t n = recv(e->fd, chunk, sizeof chunk, 0);
        ck_assert_msg(n > 0, "the version stream closed: %s", e->acc.p ? e->acc.p : "");
        buf_add(&e->acc, chunk, (size_t)n);
    }
}

/* GET /train/versions's "pending" (0: null). */
static int versions_pending(int port)
{
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(port, "GET", "/train/versions", NULL, &j), 200);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pending");
    int id = cJSON_IsNumber(p) ? (int)p->valuedouble : 0;
    cJSON_Delete(j);
    return id;
}

/* Waits for a pending version above `above`, then pauses training and
 * returns the pending one (a save under way when the pause came may have
 * replaced it). */
static int learn_pending_then_pause(int port, int above, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    while (versions_pending(port) <= above) {
        ck_assert_msg(now_s() < deadline, "no pending version above %d after %.0f s: %s", above,
                      timeout_s, tail(s_own.log));
        usleep(100000);
    }
    ck_assert_int_eq(req_port(port, "POST", "/train/pause", NULL, NULL), 200);
    usleep(500000);
    return versions_pending(port);
}

/* The body of a 200 answer (caller frees); hdr_version gets the
 * X-Embedd-Model-Version header (0: none). */
static char *post_body(int port, const char *path, const char *body, int *hdr_version)
{
    http_resp r;
    long st = http_port(port, "POST", path, body, NULL, &r);
    ck_assert_msg(st == 200, "%s %s: %ld %.300s", path, body, st, r.body.p);
    const char *h = header_value(&r, "X-Embedd-Model-Version");
    if (hdr_version != NULL)
        *hdr_version = h != NULL ? atoi(h) : 0;
    char *out = strdup(r.body.p);
    resp_free(&r);
    return out;
}

/* The "model" of an OpenAI embeddings answer. */
static void expect_openai_model(const char *body, const char *want)
{
    cJSON *j = cJSON_Parse(body);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
    ck_assert_msg(cJSON_IsString(m) && strcmp(m->valuestring, want) == 0,
                  "model in %.200s, want %s", body, want);
    cJSON_Delete(j);
}

/* The v{n} directories under dir/models, as "n,n," newest first. */
static void model_dirs(const char *dir, char *out, size_t cap)
{
    char path[300];
    snprintf(path, sizeof path, "%s/models", dir);
    out[0] = '\0';
    for (int id = 200; id >= 1; id--) {
        char d[400];
        struct stat st;
        snprintf(d, sizeof d, "%s/v%d", path, id);
        if (stat(d, &st) == 0)
            snprintf(out + strlen(out), cap - strlen(out), "%d,", id);
    }
}

/* Manual publishing (the default) with --keep-versions 2: candidates wait
 * for POST /train/promote; answers pinned to a version are byte-identical
 * before and after a promotion; the OpenAI model field and the TEI header
 * name the version; unknown pins are 404, retired ones 410, both listing
 * the servable versions; /similar refuses a pin other than the store's;
 * the event stream reports promotions and rollbacks and ends at
 * shutdown; retired directories and stale temporary ones are deleted and
 * versions are saved in the model's F16. */
START_TEST(test_learn_manual_pins_feed)
{
    char dir[256], path[512], cmd[700];
    tu_mkdtemp(dir, sizeof dir);
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/models/v77.tmp-4242' && touch '%s/models/v77.tmp-4242/x'", dir, dir);
    ck_assert_int_eq(system(cmd), 0);
    const char *argv[40];
    const char *extra[] = {"--publish", "manual", "--keep-versions", "2", NULL};
    start_own(learn_args(argv, dir, extra));
    const int port = s_own.port;
    snprintf(path, sizeof path, "%s/models/v77.tmp-4242", dir);
    ck_assert_msg(access(path, F_OK) != 0, "stale %s not removed at start", path);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(port, "GET", "/info", NULL, &j), 200);
    char name[100], want[260];
    snprintf(name, sizeof name, "%s", str_of(j, "model_id"));
    cJSON_Delete(j);

    char **texts;
    int n = sts_sentences(&texts, 400);
    learn_items(port, texts, 20);
    ck_assert_int_gt(learn_feed(port, texts, n), 300);
    const int p = learn_pending_then_pause(port, 1, 120);
    ck_assert_int_ge(p, 2);
    learn_expect_version(port, 1); /* nothing published: still version 1 */

    /* answers under pins before the promotion */
    char body[400];
    int hv = 0;
    char *tei1 = post_body(port, "/embed", "{\"inputs\":\"a pinned probe\",\"model_version\":1}",
                           &hv);
    ck_assert_int_eq(hv, 1);
    snprintf(body, sizeof body, "{\"input\":\"a pinned probe\",\"model\":\"%s@1\"}", name);
    char *oai1 = post_body(port, "/v1/embeddings", body, NULL);
    snprintf(want, sizeof want, "%s@1", name);
    expect_openai_model(oai1, want);
    snprintf(body, sizeof body, "{\"inputs\":\"a pinned probe\",\"model_version\":%d}", p);
    char *teip = post_body(port, "/embed", body, &hv); /* a pending version can be pinned */
    ck_assert_int_eq(hv, p);
    ck_assert_str_ne(tei1, teip);

    sse e;
    sse_open(&e, port);
    sse_expect(&e, "event: current", "\"version\":1", 10);
    /* at most 16 streams: the 17th is refused */
    sse more[15];
    for (int i = 0; i < 15; i++) {
        sse_open(&more[i], port);
        sse_expect(&more[i], "event: current", NULL, 10);
    }
    http_resp r;
    http_port(port, "GET", "/train/versions/stream", NULL, NULL, &r);
    check_tei_error(&r, 503, "Unhealthy", "a 17th version stream");
    resp_free(&r);
    for (int i = 0; i < 15; i++) {
        close(more[i].fd);
        free(more[i].acc.p);
    }
    ck_assert_int_eq(req_port(port, "POST", "/train/promote", NULL, &j), 200);
    ck_assert_int_eq((int)num_of(j, "current"), p);
    cJSON_Delete(j);
    char ver[32];
    snprintf(ver, sizeof ver, "\"version\":%d,", p);
    sse_expect(&e, "event: promote", ver, 10);
    learn_expect_version(port, p);

    /* after: pinned answers byte for byte as before; unpinned is version p */
    char *again = post_body(port, "/embed", "{\"inputs\":\"a pinned probe\",\"model_version\":1}",
                            &hv);
    ck_assert_str_eq(again, tei1);
    free(again);
    const char *hdr[] = {"X-Embedd-Model-Version: 1", NULL};
    ck_assert_int_eq(http_port(port, "POST", "/embed", "{\"inputs\":\"a pinned probe\"}", hdr, &r),
                     200);
    ck_assert_str_eq(r.body.p, tei1);
    resp_free(&r);
    snprintf(body, sizeof body, "{\"input\":\"a pinned probe\",\"model\":\"%s@1\"}", name);
    again = post_body(port, "/v1/embeddings", body, NULL);
    ck_assert_str_eq(again, oai1);
    free(again);
    again = post_body(port, "/embed", "{\"inputs\":\"a pinned probe\"}", &hv);
    ck_assert_int_eq(hv, p);
    ck_assert_str_eq(again, teip);
    free(again);
    snprintf(body, sizeof body, "{\"input\":\"a pinned probe\",\"model\":\"%s\"}", name);
    again = post_body(port, "/v1/embeddings", body, NULL);
    snprintf(want, sizeof want, "%s@%d", name, p);
    expect_openai_model(again, want);
    free(again);
    /* unknown: 404 with the servable versions */
    http_port(port, "POST", "/embed", "{\"inputs\":\"x\",\"model_version\":999}", NULL, &r);
    check_tei_error(&r, 404, "NotFound", "a pin to an unknown version");
    ck_assert_msg(strstr(r.body.p, "available") != NULL, "%s", r.body.p);
    resp_free(&r);
    http_port(port, "POST", "/embed", "{\"inputs\":\"x\",\"model_version\":\"2\"}", NULL, &r);
    check_tei_error(&r, 422, "Validation", "a pin that is a string");
    resp_free(&r);

    /* /similar: the store holds version p's vectors once re-embedded */
    cJSON *st = learn_wait(port, "reembed", "store_version", p, 60);
    cJSON_Delete(st);
    http_port(port, "POST", "/similar", "{\"text\":\"a man\",\"model_version\":1}", NULL, &r);
    check_tei_error(&r, 409, "Conflict", "a /similar pin other than the store's");
    resp_free(&r);
    snprintf(body, sizeof body, "{\"text\":\"a man\",\"limit\":3,\"model_version\":%d}", p);
    ck_assert_int_eq(req_port(port, "POST", "/similar", body, &j), 200);
    ck_assert_int_eq((int)num_of(j, "model_version"), p);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "/similar?q=a%%20man&k=2&model_version=%d", p);
    ck_assert_int_eq(req_port(port, "GET", path, NULL, &j), 200);
    cJSON_Delete(j);

    /* a second candidate, promoted by number: version 1 leaves the window */
    ck_assert_int_eq(req_port(port, "POST", "/train/resume", NULL, NULL), 200);
    const int q = learn_pending_then_pause(port, p, 120);
    snprintf(body, sizeof body, "{\"version\":%d}", p);
    http_port(port, "POST", "/train/promote", body, NULL, &r);
    check_tei_error(&r, 409, "Conflict", "promoting a version that is not pending");
    resp_free(&r);
    snprintf(body, sizeof body, "{\"version\":%d}", q);
    ck_assert_int_eq(req_port(port, "POST", "/train/promote", body, NULL), 200);
    snprintf(ver, sizeof ver, "\"version\":%d,", q);
    sse_expect(&e, "event: promote", ver, 10);
    http_port(port, "POST", "/embed", "{\"inputs\":\"x\",\"model_version\":1}", NULL, &r);
    check_tei_error(&r, 410, "Gone", "a pin to a retired version");
    snprintf(want, sizeof want, "available: %d (current), %d", q, p);
    ck_assert_msg(strstr(r.body.p, want) != NULL, "%s", r.body.p);
    resp_free(&r);
    snprintf(body, sizeof body, "{\"input\":\"x\",\"model\":\"%s@1\"}", name);
    http_port(port, "POST", "/v1/embeddings", body, NULL, &r);
    check_openai_error(&r, 410, "invalid_request_error", "gone",
                       "an OpenAI pin to a retired version");
    resp_free(&r);
    /* the list */
    ck_assert_int_eq(req_port(port, "GET", "/train/versions", NULL, &j), 200);
    ck_assert_int_eq((int)num_of(j, "current"), q);
    ck_assert_int_eq((int)num_of(j, "keep"), 2);
    ck_assert_str_eq(str_of(j, "publish"), "manual");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "versions");
    const cJSON *it;
    int seen_current = 0, seen_servable = 0, seen_retired = 0;
    cJSON_ArrayForEach(it, list) {
        int id = (int)num_of(it, "id");
        const char *status = str_of(it, "status");
        if (id == q) {
            ck_assert_str_eq(status, "current");
            ck_assert_int_eq((int)num_of(it, "parent"), p);
            ck_assert_msg(strstr(str_of(it, "gate"), "passed") != NULL, "gate %s",
                          str_of(it, "gate"));
            seen_current = 1;
        } else if (id == p) {
            ck_assert_str_eq(status, "servable");
            seen_servable = 1;
        } else {
            ck_assert_str_eq(status, "retired");
            seen_retired += id == 1;
        }
    }
    ck_assert(seen_current && seen_servable && seen_retired);
    cJSON_Delete(j);
    /* on disk: the two servable versions, no other */
    char dirs[256], want_dirs[64];
    model_dirs(dir, dirs, sizeof dirs);
    snprintf(want_dirs, sizeof want_dirs, "%d,%d,", q, p);
    ck_assert_str_eq(dirs, want_dirs);
    /* saved in the served F16 */
    emb_st_file f;
    emb_err err;
    snprintf(path, sizeof path, "%s/models/v%d/model.safetensors", dir, q);
    ck_assert_msg(emb_st_open(&f, path, &err) == 0, "%s", err.msg);
    for (int i = 0; i < f.n_tensors; i++)
        ck_assert_msg(f.tensors[i].dtype == EMB_DT_F16, "%s is %s", f.tensors[i].name,
                      emb_dtype_name(f.tensors[i].dtype));
    emb_st_close(&f);

    /* a rollback is an event too */
    snprintf(body, sizeof body, "{\"version\":%d}", p);
    ck_assert_int_eq(req_port(port, "POST", "/train/rollback", body, NULL), 200);
    snprintf(ver, sizeof ver, "\"version\":%d,", p);
    sse_expect(&e, "event: rollback", ver, 10);

    /* shutdown ends the stream, and does not wait for it */
    kill(s_own.pid, SIGTERM);
    ck_assert_msg(raw_wait_closed(e.fd, 20) >= 0, "the version stream outlived the server");
    close(e.fd);
    free(e.acc.p);
    expect_exit_zero(20.0);
    free(tei1);
    free(oai1);
    free(teip);
    strings_free(texts, n);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_learn_off)
{
    const char *extra[] = {"--train", "off", NULL};
    start_own(extra);
    cJSON *st = learn_status(s_own.port);
    ck_assert_str_eq(str_of(st, "state"), "off");
    cJSON_Delete(st);
    http_resp r;
    http_port(s_own.port, "POST", "/train/pause", NULL, NULL, &r);
    check_tei_error(&r, 503, "Unhealthy", "pause with training off");
    resp_free(&r);
    http_port(s_own.port, "POST", "/train/samples", "{\"texts\":[\"a b c d e f g h\"]}", NULL, &r);
    check_tei_error(&r, 503, "Unhealthy", "samples with training off");
    resp_free(&r);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
}
END_TEST

START_TEST(test_learn_control_errors)
{
    const char *argv[40];
    const char *extra[] = {"--train-paused", NULL};
    start_own(learn_args(argv, NULL, extra));
    http_resp r;
    http_port(s_own.port, "POST", "/train/samples", "{\"texts\":\"not an array\"}", NULL, &r);
    check_tei_error(&r, 422, "Validation", "samples not an array");
    resp_free(&r);
    http_port(s_own.port, "POST", "/train/samples", "{\"texts\":[1,2]}", NULL, &r);
    check_tei_error(&r, 422, "Validation", "samples not strings");
    resp_free(&r);
    http_port(s_own.port, "POST", "/train/rollback", "{}", NULL, &r);
    check_tei_error(&r, 422, "Validation", "rollback without a version");
    resp_free(&r);
    cJSON *st = learn_status(s_own.port);
    ck_assert_str_eq(str_of(st, "state"), "paused");
    cJSON_Delete(st);
    ck_assert_int_eq(req_port(s_own.port, "POST", "/train/resume", NULL, NULL), 200);
    st = learn_status(s_own.port);
    ck_assert_str_eq(str_of(st, "state"), "running");
    cJSON_Delete(st);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
}
END_TEST

/* ======================================================================== */

static TCase *tcase_with_fixture(Suite *s, const char *name, void (*setup)(void), int timeout)
{
    TCase *tc = tcase_create(name);
    if (setup != NULL)
        tcase_add_unchecked_fixture(tc, setup,
                                    setup == setup_items ? teardown_items : fixture_stop);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

/* ---- the error table (no server) ----------------------------------------- */

typedef struct kind_case {
    emb_err_kind kind;
    int status;
    const char *tei_type, *openai_type, *openai_code;
} kind_case;

/* Every kind's reply; the statuses are the ones the routes sent before
 * errors carried kinds. */
static const kind_case kind_cases[] = {
    {EMB_ERR_FAILED, 500, "Backend", "server_error", NULL},
    {EMB_ERR_INVALID, 422, "Validation", "invalid_request_error", NULL},
    {EMB_ERR_TOO_LARGE, 422, "Validation", "invalid_request_error", NULL},
    {EMB_ERR_NOT_FOUND, 404, "NotFound", "invalid_request_error", "not_found"},
    {EMB_ERR_CONFLICT, 409, "Conflict", "invalid_request_error", NULL},
    {EMB_ERR_UNAVAILABLE, 503, "Unhealthy", "server_error", "service_unavailable"},
    {EMB_ERR_IO, 500, "Backend", "server_error", NULL},
    {EMB_ERR_NO_MEMORY, 500, "Backend", "server_error", NULL},
    {EMB_ERR_GONE, 410, "Gone", "invalid_request_error", "gone"},
    {EMB_ERR_KIND_COUNT, 500, "Backend", "server_error", NULL}, /* unknown: FAILED's */
};

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

START_TEST(test_error_kind_table)
{
    const kind_case *c = &kind_cases[_i];
    const http_error *e = http_error_of_kind(c->kind);
    ck_assert_msg(e->status == c->status && same_str(e->tei_type, c->tei_type) &&
                      same_str(e->openai_type, c->openai_type) &&
                      same_str(e->openai_code, c->openai_code),
                  "kind %s: %d %s %s %s", emb_err_kind_name(c->kind), e->status, e->tei_type,
                  e->openai_type, e->openai_code != NULL ? e->openai_code : "null");
    /* the OpenAI side of a kind is the OpenAI side of its status */
    const http_error *by_status = http_error_of_status(e->status);
    ck_assert(same_str(by_status->openai_type, e->openai_type));
    ck_assert(same_str(by_status->openai_code, e->openai_code));
}
END_TEST

/* The statuses the HTTP layer sends without a kind keep their OpenAI
 * types and codes. */
START_TEST(test_error_status_table)
{
    static const struct {
        int status;
        const char *type, *code;
    } want[] = {
        {400, "invalid_request_error", NULL},
        {401, "authentication_error", "invalid_api_key"},
        {404, "invalid_request_error", "not_found"},
        {405, "invalid_request_error", "method_not_allowed"},
        {413, "invalid_request_error", "payload_too_large"},
        {422, "invalid_request_error", NULL},
        {429, "rate_limit_error", "rate_limit_exceeded"},
        {500, "server_error", NULL},
        {503, "server_error", "service_unavailable"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const http_error *e = http_error_of_status(want[i].status);
        ck_assert_msg(same_str(e->openai_type, want[i].type) &&
                          same_str(e->openai_code, want[i].code),
                      "status %d: %s %s", want[i].status, e->openai_type,
                      e->openai_code != NULL ? e->openai_code : "null");
    }
}
END_TEST


/* ======================================================================== */
/* TCase resources: the trainer rests, its share under load, the sample log */
/* ======================================================================== */

/* utime + stime of a process in seconds (/proc/PID/stat fields 14, 15). */
static double proc_cpu_seconds(pid_t pid)
{
    char path[64], line[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    const char *p = strrchr(line, ')'); /* the command may hold spaces */
    ck_assert(p != NULL);
    unsigned long long ut = 0, st = 0;
    /* after ")": state (3), then fields 4 .. 13, then utime (14), stime (15) */
    int got = sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
    ck_assert_int_eq(got, 2);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int status_bool(const cJSON *st, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, key));
}

/* Polls /train/status until "resting" is true; returns the status. */
static cJSON *wait_resting(int port, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    for (;;) {
        cJSON *st = learn_status(port);
        if (status_bool(st, "resting"))
            return st;
        char *text = cJSON_PrintUnformatted(st);
        cJSON_Delete(st);
        if (now_s() > deadline)
            ck_abort_msg("not resting after %.0f s: %s", timeout_s, text);
        free(text);
        usleep(100000);
    }
}

/* An idle server whose buffered texts are used up rests: it uses almost no
 * CPU (the issue's bound is 1 s over 60 s; this test measures
 * EMBEDD_IDLE_CPU_SECONDS, 20 by default, against the same rate, 1/60 of
 * the time). New texts wake it. The sample log is mode 0600, and /info
 * says where training texts are kept. */
START_TEST(test_rest_when_texts_used_up)
{
    char dir[256], path[512];
    tu_mkdtemp(dir, sizeof dir);
    const char *argv[40];
    const char *extra[] = {"--train-max-epochs", "2", NULL};
    start_own(learn_args(argv, dir, extra));
    char **texts;
    int n = sts_sentences(&texts, 200);
    int added = learn_feed(s_own.port, texts, 100);
    ck_assert_int_gt(added, 80);
    cJSON *st = wait_resting(s_own.port, 120);
    const double steps = status_num(st, NULL, "steps");
    const double train = status_num(st, "buffer", "train");
    cJSON_Delete(st);
    /* 2 uses per text, 8 texts per step: about train / 4 steps, then rest */
    ck_assert_msg(steps >= train * 2 / 8 - 1 && steps <= train * 2 / 8 + 2,
                  "%.0f steps for %.0f texts at 2 epochs of batch 8", steps, train);
    usleep(1500000); /* a gate or save in flight settles; the log is flushed */

    const char *env = getenv("EMBEDD_IDLE_CPU_SECONDS");
    const double window = env != NULL && atof(env) > 0 ? atof(env) : 20.0;
    const double c0 = proc_cpu_seconds(s_own.pid);
    usleep((useconds_t)(window * 1e6));
    const double used = proc_cpu_seconds(s_own.pid) - c0;
    fprintf(stderr, "test_rest_when_texts_used_up: %.2f s CPU over %.0f s idle\n", used,
            window);
    ck_assert_msg(used < window / 60.0, "an idle server used %.2f s CPU in %.0f s", used,
                  window);
    st = learn_status(s_own.port);
    ck_assert_int_eq((int)status_num(st, NULL, "steps"), (int)steps);
    ck_assert_int_eq((int)status_num(st, NULL, "text_uses_left"), 0);
    cJSON_Delete(st);

    /* the sample log: only the server's user may read it */
    struct stat sb;
    snprintf(path, sizeof path, "%s/samples.log", dir);
    ck_assert_msg(stat(path, &sb) == 0, "no %s", path);
    ck_assert_msg((sb.st_mode & 0777) == 0600, "samples.log mode %o", sb.st_mode & 0777);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "train_samples");
    ck_assert_str_eq(str_of(ts, "kept"), "disk");
    ck_assert_str_eq(str_of(ts, "path"), path);
    cJSON_Delete(j);

    /* new texts wake it */
    ck_assert_int_gt(learn_feed(s_own.port, texts + 100, n - 100), 80);
    st = learn_wait(s_own.port, NULL, "steps", steps + 5, 60);
    cJSON_Delete(st);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_msg((sb.st_mode & 0777) == 0600, "samples.log mode %o after shutdown",
                  sb.st_mode & 0777);
    strings_free(texts, n);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A sample log written by an older server with mode 0644 is tightened to
 * 0600 when it is opened. */
START_TEST(test_sample_log_mode_tightened)
{
    char dir[256], path[512];
    tu_mkdtemp(dir, sizeof dir);
    const char *argv[40];
    start_own(learn_args(argv, dir, NULL));
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    snprintf(path, sizeof path, "%s/samples.log", dir);
    ck_assert_int_eq(chmod(path, 0644), 0);
    start_own(learn_args(argv, dir, NULL));
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_msg((sb.st_mode & 0777) == 0600, "samples.log mode %o", sb.st_mode & 0777);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* --train-persist-samples false: training texts stay in memory; nothing
 * is written, and /info says so. */
START_TEST(test_samples_in_memory_only)
{
    char dir[256], path[512];
    tu_mkdtemp(dir, sizeof dir);
    const char *argv[40];
    const char *extra[] = {"--train-persist-samples", "false", "--train-paused", NULL};
    start_own(learn_args(argv, dir, extra));
    char **texts;
    int n = sts_sentences(&texts, 100);
    ck_assert_int_gt(learn_feed(s_own.port, texts, n), 80);
    cJSON *j = NULL;
    ck_assert_int_eq(req_port(s_own.port, "POST", "/embed", "{\"inputs\":\"a text to learn from\"}",
                              NULL), 200);
    ck_assert_int_eq(req_port(s_own.port, "GET", "/info", NULL, &j), 200);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "train_samples");
    ck_assert_str_eq(str_of(ts, "kept"), "memory");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(ts, "persist")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(ts, "path")));
    cJSON_Delete(j);
    cJSON *st = learn_status(s_own.port);
    ck_assert_int_gt((int)status_num(st, "buffer", "train"), 50);
    cJSON_Delete(st);
    usleep(1500000); /* past a housekeeping flush */
    snprintf(path, sizeof path, "%s/samples.log", dir);
    ck_assert_msg(access(path, F_OK) != 0, "%s exists", path);
    kill(s_own.pid, SIGTERM);
    expect_exit_zero(20.0);
    ck_assert_msg(access(path, F_OK) != 0, "%s exists after shutdown", path);
    snprintf(path, sizeof path, "%s/samples.log.tmp", dir);
    ck_assert_msg(access(path, F_OK) != 0, "%s exists after shutdown", path);
    strings_free(texts, n);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

typedef struct load_client {
    int port;
    double until;
    int ok, failed;
} load_client;

/* Back-to-back /embed requests of 32 texts until `until`. */
static void *load_main(void *arg)
{
    load_client *c = arg;
    char text[4096];
    int at = snprintf(text, sizeof text, "{\"inputs\":[");
    for (int i = 0; i < 32; i++)
        at += snprintf(text + at, sizeof text - (size_t)at,
                       "%s\"a steady stream of requests keeps the compute thread busy %d\"",
                       i ? "," : "", i);
    snprintf(text + at, sizeof text - (size_t)at, "]}");
    while (now_s() < c->until) {
        http_resp r;
        if (http_port(c->port, "POST", "/embed", text, NULL, &r) == 200)
            c->ok++;
        else
            c->failed++;
        resp_free(&r);
    }
    return NULL;
}

/* Training steps taken during `seconds` of load by n clients. */
static double steps_under_load(int port, int n, double seconds, int *requests)
{
    enum { MAX_CLIENTS = 8 };
    load_client c[MAX_CLIENTS];
    pthread_t th[MAX_CLIENTS];
    cJSON *st = learn_status(port);
    double s0 = status_num(st, NULL, "steps");
    cJSON_Delete(st);
    const double until = now_s() + seconds;
    for (int i = 0; i < n; i++) {
        c[i] = (load_client){.port = port, .until = until};
        ck_assert_int_eq(pthread_create(&th[i], NULL, load_main, &c[i]), 0);
    }
    *requests = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(c[i].failed, 0);
        *requests += c[i].ok;
    }
    st = learn_status(port);
    double s1 = status_num(st, NULL, "steps");
    cJSON_Delete(st);
    return s1 - s0;
}

/* Under continuous requests the trainer still takes steps when
 * --train-min-share is above 0; with 0 it gets only what gaps leave. */
START_TEST(test_min_share_under_load)
{
    const char *argv[40];
    char **texts;
    int n = sts_sentences(&texts, 400);
    double steps[2];
    int requests[2];
    const char *shares[2] = {"0", "0.3"};
    for (int k = 0; k < 2; k++) {
        const char *extra[] = {"--train-min-share", shares[k], "--publish-every", "100000",
                               "--train-max-epochs", "0", "--http-threads", "4", NULL};
        start_own(learn_args(argv, NULL, extra));
        ck_assert_int_gt(learn_feed(s_own.port, texts, n), 300);
        cJSON *st = learn_wait(s_own.port, NULL, "steps", 1, 60); /* training runs */
        cJSON_Delete(st);
        steps[k] = steps_under_load(s_own.port, 6, 5.0, &requests[k]);
        kill(s_own.pid, SIGTERM);
        expect_exit_zero(20.0);
    }
    fprintf(stderr, "test_min_share_under_load: share 0: %.0f steps, %d requests; "
            "share 0.3: %.0f steps, %d requests in 5 s\n", steps[0], requests[0], steps[1],
            requests[1]);
    ck_assert_msg(steps[1] >= 2, "share 0.3: %.0f steps under load", steps[1]);
    ck_assert_msg(steps[1] > 2 * steps[0], "share 0.3: %.0f steps, share 0: %.0f", steps[1],
                  steps[0]);
    strings_free(texts, n);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("server");
    TCase *kinds = tcase_create("error_kinds");
    tcase_add_loop_test(kinds, test_error_kind_table, 0,
                        (int)(sizeof kind_cases / sizeof kind_cases[0]));
    tcase_add_test(kinds, test_error_status_table);
    suite_add_tcase(s, kinds);
    TCase *tc = tcase_with_fixture(s, "embed", setup_default, 60);
    tcase_add_test(tc, test_embed_matches_cli);
    tcase_add_test(tc, test_embed_normalize_false);
    tcase_add_test(tc, test_embed_dimensions);
    tcase_add_test(tc, test_embed_truncate);
    tcase_add_test(tc, test_embed_truncation_direction);
    tcase_add_test(tc, test_tokenize_info_models);
    tcase_add_test(tc, test_embed_json_escapes);
    tcase_add_test(tc, test_metrics_format);

    tc = tcase_with_fixture(s, "openai", setup_openai, 60);
    tcase_add_test(tc, test_openai_float_and_base64);
    tcase_add_test(tc, test_openai_token_ids);
    tcase_add_test(tc, test_openai_models);

    tc = tcase_with_fixture(s, "batching", setup_batching, 60);
    tcase_add_test(tc, test_concurrent_clients_batching);
    tcase_add_test(tc, test_job_split_across_passes);

    tc = tcase_with_fixture(s, "errors", setup_errors, 60);
    tcase_add_loop_test(tc, test_error_table, 0, (int)(sizeof err_cases / sizeof err_cases[0]));
    tcase_add_test(tc, test_deep_nesting);
    tcase_add_test(tc, test_limits_accept_within);
    tcase_add_test(tc, test_413_body);
    tcase_add_test(tc, test_413_before_body);
    tcase_add_test(tc, test_413_chunked);

    tc = tcase_with_fixture(s, "auth", setup_auth, 60);
    tcase_add_loop_test(tc, test_auth_table, 0, (int)(sizeof auth_cases / sizeof auth_cases[0]));

    tc = tcase_with_fixture(s, "busy", setup_busy, 60);
    tcase_add_test(tc, test_429_when_busy);
    tcase_add_test(tc, test_429_then_slot_freed);
    tcase_add_test(tc, test_slot_freed_on_abort);

    tc = tcase_with_fixture(s, "slow", setup_slow, 60);
    tcase_add_test(tc, test_slow_client);

    tc = tcase_with_fixture(s, "shutdown", NULL, 60);
    tcase_add_test(tc, test_shutdown_idle);
    tcase_add_test(tc, test_serve_int8);
    tcase_add_test(tc, test_serve_dense);
    tcase_add_test(tc, test_shutdown_graceful);
    tcase_add_test(tc, test_shutdown_503);
    tcase_add_test(tc, test_shutdown_refuses_new_connections);

    tc = tcase_with_fixture(s, "items", setup_items, 60);
    tcase_add_test(tc, test_items_crud);
    tcase_add_test(tc, test_items_similar);
    tcase_add_test(tc, test_items_errors);
    tcase_add_test(tc, test_items_persistence);

    tc = tcase_with_fixture(s, "learn", NULL, 300);
    tcase_add_test(tc, test_learn_publish_rollback_restart);
    tcase_add_test(tc, test_learn_dense_publish);
    tcase_add_test(tc, test_learn_gate_rejects_lr_blowup);
    tcase_add_test(tc, test_learn_gate_rejects_poisoned_buffer);
    tcase_add_test(tc, test_learn_nan_steps_skipped);
    tcase_add_test(tc, test_learn_publish_mid_query_stream);
    tcase_add_test(tc, test_learn_manual_pins_feed);
    tcase_add_test(tc, test_learn_off);
    tcase_add_test(tc, test_learn_control_errors);


    tc = tcase_with_fixture(s, "resources", NULL, 300);
    tcase_add_test(tc, test_rest_when_texts_used_up);
    tcase_add_test(tc, test_sample_log_mode_tightened);
    tcase_add_test(tc, test_samples_in_memory_only);
    tcase_add_test(tc, test_min_share_under_load);

    int rc = run_suite(s);
    curl_global_cleanup();
    return rc;
}
