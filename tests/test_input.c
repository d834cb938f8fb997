/* test_input.c: strict input validation and per-response size caps.
 *
 * Two parts. The jsoncheck unit tests (no server) run json_check and
 * utf8_check (server/http/jsoncheck.h) over a corpus of valid and invalid
 * strings: every escape, 2-, 3- and 4-byte UTF-8, overlongs, encoded
 * surrogates, code points past U+10FFFF, truncated sequences; and time
 * json_check on a 1 MB body.
 *
 * The integration tests start the real binary ($EMBEDD_BIN) on a loopback
 * port with the helpers of tests/serverproc.h, as tests/test_server.c does, with
 * --data in a temporary directory and --max-response-bytes 65536, and
 * send the reproductions: each must get a clear JSON error with
 * the right status, and the store must not change (item "nul" keeps its
 * text, the count stays the same). */
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

#include "http/jsoncheck.h"
#include "run_suite.h"
#include "testutil.h"
/* after testutil.h: its tu_read_file has a local named buf */
#include "serverproc.h"

#define MODEL "tests/fixtures/tiny-f16"
#define DIMS 32          /* tiny-f16's hidden size */

static long http_bytes(const char *method, const char *path, const char *body, size_t len,
                       http_resp *r)
{
    return http_port_bytes(g_srv.port, method, path, body, len, NULL, r);
}

/* A TEI or OpenAI error with this status whose message contains every one of the
 * NULL-terminated words; the body itself must be valid UTF-8 (nothing
 * invalid the client sent is echoed). */
static void expect_error_words(const http_resp *r, long status, const char *what, ...)
{
    ck_assert_msg(r->status == status, "%s: status %ld, want %ld: %.300s", what, r->status,
                  status, r->body.p);
    ck_assert_msg(utf8_check(r->body.p, r->body.len, NULL) == JSON_OK,
                  "%s: the error body is not valid UTF-8", what);
    cJSON *j = json_of(r);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (cJSON_IsObject(e)) /* OpenAI's shape */
        e = cJSON_GetObjectItemCaseSensitive(e, "message");
    ck_assert_msg(cJSON_IsString(e), "%s: no error message in %s", what, r->body.p);
    va_list ap;
    va_start(ap, what);
    for (const char *w = va_arg(ap, const char *); w != NULL; w = va_arg(ap, const char *))
        ck_assert_msg(strstr(e->valuestring, w) != NULL, "%s: error '%s' does not mention '%s'",
                      what, e->valuestring, w);
    va_end(ap);
    cJSON_Delete(j);
}

/* POST body (len bytes) to path and expect status with the words. */
static void refused(const char *method, const char *path, const char *body, size_t len,
                    long status, const char *w1, const char *w2)
{
    http_resp r;
    char what[200];
    snprintf(what, sizeof what, "%s %s %.60s", method, path, body != NULL ? body : "");
    if (body != NULL)
        http_bytes(method, path, body, len, &r);
    else
        http(method, path, NULL, &r);
    expect_error_words(&r, status, what, w1, w2, (const char *)NULL);
    resp_free(&r);
}

#define REFUSED(method, path, lit, status, w1, w2) \
    refused(method, path, lit, sizeof(lit) - 1, status, w1, w2)

/* The text of item path (GET /items/...), or NULL when it is not found. */
static char *item_text(const char *path)
{
    http_resp r;
    http("GET", path, NULL, &r);
    char *text = NULL;
    if (r.status == 200) {
        cJSON *j = json_of(&r);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (cJSON_IsString(t))
            text = strdup(t->valuestring);
        cJSON_Delete(j);
    } else {
        ck_assert_msg(r.status == 404, "GET %s: %ld %s", path, r.status, r.body.p);
    }
    resp_free(&r);
    return text;
}

static long item_count(void)
{
    http_resp r;
    ck_assert_int_eq(http("GET", "/items/count", NULL, &r), 200);
    cJSON *j = json_of(&r);
    long n = (long)cJSON_GetObjectItemCaseSensitive(j, "count")->valuedouble;
    cJSON_Delete(j);
    resp_free(&r);
    return n;
}

static void expect_text(const char *path, const char *want)
{
    char *got = item_text(path);
    if (want == NULL)
        ck_assert_msg(got == NULL, "%s: found '%s', want none", path, got);
    else
        ck_assert_msg(got != NULL && strcmp(got, want) == 0, "%s: text '%s', want '%s'", path,
                      got != NULL ? got : "(not found)", want);
    free(got);
}

static void ok(const char *method, const char *path, const char *body)
{
    http_resp r;
    http(method, path, body, &r);
    ck_assert_msg(r.status == 200, "%s %s %.100s: %ld %.300s", method, path, body, r.status,
                  r.body.p);
    resp_free(&r);
}

/* ======================================================================== */
/* jsoncheck, no server                                                      */
/* ======================================================================== */

typedef struct check_case {
    const char *body;
    size_t len;                /* 0: strlen */
    json_fault_kind want;
    size_t offset;             /* of the fault, when want != JSON_OK */
} check_case;

#define C(lit, kind, off) {lit, sizeof(lit) - 1, kind, off}

static const check_case check_cases[] = {
    /* valid: every escape, 2-, 3- and 4-byte UTF-8, the edges of the ranges */
    C("{\"a\":\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0041 \\u00e9 \\uFFFF\"}", JSON_OK, 0),
    C("{\"a\":\"\\ud83d\\ude00 \\uDBFF\\uDFFF \\uD800\\uDC00\"}", JSON_OK, 0),
    C("[\"\xc2\x80 \xdf\xbf \xc3\xa9\"]", JSON_OK, 0),
    C("[\"\xe0\xa0\x80 \xe2\x82\xac \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf\"]", JSON_OK, 0),
    C("[\"\xf0\x90\x80\x80 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"]", JSON_OK, 0),
    C("{\"k\": [1, 2.5e-3, true, null, {\"x\": \"plain ascii text over eight bytes\"}]}\n",
      JSON_OK, 0),
    C("\x7f", JSON_OK, 0), /* DEL is not a control character in JSON */
    /* NUL */
    C("{\"id\":\"nul\\u0000x\"}", JSON_BAD_NUL, 10),
    C("{\"id\":\"nul\0x\"}", JSON_BAD_NUL, 10),
    C("{\"id\":1}\0", JSON_BAD_NUL, 8),
    /* malformed escapes and surrogates */
    C("[\"\\uZZZZ\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\u12\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\u12", JSON_BAD_SYNTAX, 2),
    C("[\"\\x41\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\'\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\", JSON_BAD_SYNTAX, 2),
    C("[\"\\ud800\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\udc00x\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\ud800\\u0041\"]", JSON_BAD_SYNTAX, 2),
    C("[\"\\ud800\\ud800\"]", JSON_BAD_SYNTAX, 2),
    C("[\"ab\\udbff\"]", JSON_BAD_SYNTAX, 4),
    /* raw control characters and unterminated strings */
    C("[\"a\nb\"]", JSON_BAD_SYNTAX, 3),
    C("[\"a\tb\"]", JSON_BAD_SYNTAX, 3),
    C("[\"\x1f\"]", JSON_BAD_SYNTAX, 2),
    C("[\"abc", JSON_BAD_SYNTAX, 5),
    /* invalid UTF-8 */
    C("[\"bad\xff\xfe\"]", JSON_BAD_UTF8, 5),
    C("[\"\xc0\x80\"]", JSON_BAD_UTF8, 2),             /* overlong NUL */
    C("[\"\xc1\xbf\"]", JSON_BAD_UTF8, 2),             /* overlong */
    C("[\"\xe0\x80\xaf\"]", JSON_BAD_UTF8, 2),         /* overlong '/' */
    C("[\"\xf0\x80\x80\xaf\"]", JSON_BAD_UTF8, 2),     /* overlong '/' */
    C("[\"\xed\xa0\x80\"]", JSON_BAD_UTF8, 2),         /* encoded surrogate D800 */
    C("[\"\xed\xbf\xbf\"]", JSON_BAD_UTF8, 2),         /* encoded surrogate DFFF */
    C("[\"\xf4\x90\x80\x80\"]", JSON_BAD_UTF8, 2),     /* U+110000 */
    C("[\"\xf5\x80\x80\x80\"]", JSON_BAD_UTF8, 2),
    C("[\"\x80\"]", JSON_BAD_UTF8, 2),                 /* lone continuation */
    C("[\"\xc3\"]", JSON_BAD_UTF8, 2),                 /* truncated before the quote */
    C("[\"\xe2\x82\"]", JSON_BAD_UTF8, 2),
    C("[\"\xe2\x82", JSON_BAD_UTF8, 2),                /* truncated at the end of the body */
    C("[\"\xf0\x9f\x98", JSON_BAD_UTF8, 2),
    C("[\"abcdefgh\xff\"]", JSON_BAD_UTF8, 10),        /* after a fast 8-byte step */
    /* outside strings */
    C("[1,\xc3\xa9]", JSON_BAD_SYNTAX, 3),
};

START_TEST(test_jsoncheck_corpus)
{
    const check_case *c = &check_cases[_i];
    json_fault f;
    json_fault_kind got = json_check(c->body, c->len, &f);
    ck_assert_msg(got == c->want, "case %d: kind %d, want %d (%s)", _i, got, c->want,
                  f.reason != NULL ? f.reason : "");
    if (c->want != JSON_OK) {
        ck_assert_msg(f.offset == c->offset, "case %d: offset %zu, want %zu", _i, f.offset,
                      c->offset);
        ck_assert_msg(f.reason != NULL && f.reason[0] != '\0', "case %d: no reason", _i);
    }
}
END_TEST

START_TEST(test_jsoncheck_field_names)
{
    json_fault f;
    const char *body = "{\"items\":[{\"id\":1,\"text\":\"a\"},{\"id\":\"x\\u0000\"}]}";
    ck_assert_int_eq(json_check(body, strlen(body), &f), JSON_BAD_NUL);
    ck_assert_str_eq(f.field, "items[1].id");
    body = "{\"items\":[{\"payload\":{\"k\":[1,\"\xff\"]}}]}";
    ck_assert_int_eq(json_check(body, strlen(body), &f), JSON_BAD_UTF8);
    ck_assert_str_eq(f.field, "items[0].payload.k[1]");
    body = "{\"inputs\":[\"a\",\"b\",\"\\uZZZZ\"]}";
    ck_assert_int_eq(json_check(body, strlen(body), &f), JSON_BAD_SYNTAX);
    ck_assert_str_eq(f.field, "inputs[2]");
    /* a fault inside a key names the object holding it */
    body = "{\"a\":{\"b\\u0000\":1}}";
    ck_assert_int_eq(json_check(body, strlen(body), &f), JSON_BAD_NUL);
    ck_assert_str_eq(f.field, "a");
    /* a key that is not printable ASCII is named with '?' */
    body = "{\"\xc3\xa9t\xc3\xa9\":\"\\ud800\"}";
    ck_assert_int_eq(json_check(body, strlen(body), &f), JSON_BAD_SYNTAX);
    ck_assert_str_eq(f.field, "??t??");
}
END_TEST

START_TEST(test_utf8_check)
{
    size_t at = 99;
    ck_assert_int_eq(utf8_check("caf\xc3\xa9 \xf0\x9f\x98\x80", 10, &at), JSON_OK);
    ck_assert_int_eq(utf8_check("bad\xff\xfe", 5, &at), JSON_BAD_UTF8);
    ck_assert_uint_eq(at, 3);
    ck_assert_int_eq(utf8_check("nul\xc0\x80x", 6, &at), JSON_BAD_NUL); /* %00 decoded */
    ck_assert_uint_eq(at, 3);
    ck_assert_int_eq(utf8_check("a\0b", 3, &at), JSON_BAD_NUL);
    ck_assert_uint_eq(at, 1);
    ck_assert_int_eq(utf8_check("\xed\xa0\x80", 3, &at), JSON_BAD_UTF8);
    ck_assert_int_eq(utf8_check("\xe2\x82", 2, &at), JSON_BAD_UTF8);
}
END_TEST

START_TEST(test_utf8_sanitize)
{
    char s[] = "ok caf\xc3\xa9 bad\xff\xfe nul\xc0\x80 cut\xe2\x82";
    utf8_sanitize(s);
    ck_assert_str_eq(s, "ok caf\xc3\xa9 bad?? nul?? cut??");
    ck_assert_int_eq(utf8_check(s, strlen(s), NULL), JSON_OK);
}
END_TEST

/* json_check on a 1 MB body of the shape /embed gets (English text with
 * some accented and CJK characters); prints ns/byte. The bound is loose:
 * it catches a quadratic regression, not noise. */
START_TEST(test_jsoncheck_speed)
{
    const char *piece = "The quick brown fox jumps over the lazy dog, caf\xc3\xa9 "
                        "\xe6\x97\xa5\xe6\x9c\xac \\\"quoted\\\" \\n";
    buf b = {0};
    buf_add(&b, "{\"inputs\":[", 11);
    while (b.len < (1u << 20)) {
        buf_add(&b, "\"", 1);
        for (int k = 0; k < 8; k++)
            buf_add(&b, piece, strlen(piece));
        buf_add(&b, "\",", 2);
    }
    buf_add(&b, "\"end\"]}", 7);
    json_fault f;
    ck_assert_int_eq(json_check(b.p, b.len, &f), JSON_OK);
    const int rounds = 20;
    double t0 = now_s();
    for (int i = 0; i < rounds; i++)
        ck_assert_int_eq(json_check(b.p, b.len, &f), JSON_OK);
    double ns_per_byte = (now_s() - t0) * 1e9 / ((double)rounds * (double)b.len);
    fprintf(stderr, "test_jsoncheck_speed: %zu bytes, %.3f ns/byte (%.2f ms per body)\n", b.len,
            ns_per_byte, ns_per_byte * (double)b.len / 1e6);
    /* loose enough for sanitizer builds on a loaded machine */
    ck_assert_msg(ns_per_byte < 50.0, "json_check takes %.2f ns/byte", ns_per_byte);
    free(b.p);
}
END_TEST

/* ======================================================================== */
/* The server, on --data in a temporary directory                            */
/* ======================================================================== */

static char g_dir[64];

static void setup_input(void)
{
    strcpy(g_dir, "/tmp/embedd-input-XXXXXX");
    ck_assert(mkdtemp(g_dir) != NULL);
    char data[128];
    snprintf(data, sizeof data, "%s/data", g_dir);
    const char *args[] = {"--data", data, "--max-response-bytes", "65536", "--train", "off",
                          "--max-client-batch-size", "4096", NULL};
    fixture_start(args);
}

static void teardown_input(void)
{
    fixture_stop();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    tu_run(cmd);
}

/* Item "nul" with its old text: what every refused request must leave. */
static void seed_nul(void)
{
    ok("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"old text\"}]}");
    expect_text("/items/nul", "old text");
}

/* 1. NUL in any request string: refused, naming the field; nothing stored. */
START_TEST(test_nul_refused_everywhere)
{
    REQUIRE_SERVER();
    seed_nul();
    long n = item_count();
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\\u0000x\",\"text\":\"new\"}]}", 422,
            "NUL", "items[0].id");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\0x\",\"text\":\"new\"}]}", 422, "NUL",
            "items[0].id");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"new\\u0000 tail\"}]}",
            422, "NUL", "items[0].text");
    REFUSED("POST", "/items",
            "{\"items\":[{\"id\":\"nul\",\"text\":\"new\",\"payload\":{\"k\\u0000\":1}}]}", 422,
            "NUL", "items[0].payload");
    REFUSED("POST", "/items",
            "{\"items\":[{\"id\":\"nul\",\"text\":\"new\",\"payload\":{\"k\":\"v\\u0000\"}}]}",
            422, "NUL", "items[0].payload.k");
    REFUSED("POST", "/items/delete", "{\"ids\":[\"nul\\u0000x\"]}", 422, "NUL", "ids[0]");
    REFUSED("POST", "/similar", "{\"text\":\"a\\u0000b\"}", 422, "NUL", "text");
    REFUSED("POST", "/embed", "{\"inputs\":[\"a\",\"b\\u0000c\"]}", 422, "NUL", "inputs[1]");
    REFUSED("POST", "/tokenize", "{\"inputs\":\"b\\u0000c\"}", 422, "NUL", "inputs");
    /* OpenAI's status for an invalid request is 400 */
    REFUSED("POST", "/v1/embeddings", "{\"input\":\"a\",\"model\":\"m\\u0000@2\"}", 400, "NUL",
            "model");
    /* the path: %00 must not cut "nul%00x" down to "nul" */
    refused("DELETE", "/items/nul%00x", NULL, 0, 422, "NUL", "path");
    refused("GET", "/items/nul%00x", NULL, 0, 422, "NUL", "path");
    refused("GET", "/similar?q=a%00b", NULL, 0, 422, "NUL", "`q`");
    expect_text("/items/nul", "old text");
    ck_assert_int_eq(item_count(), n);
}
END_TEST

/* 2. Malformed escapes and lone surrogates: malformed JSON (422). */
START_TEST(test_malformed_escapes_refused)
{
    REQUIRE_SERVER();
    seed_nul();
    long n = item_count();
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\\uZZZZ\",\"text\":\"new\"}]}", 422,
            "malformed JSON", "items[0].id");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"\\uZZZZ\"}]}", 422,
            "malformed JSON", "items[0].text");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\\ud800\",\"text\":\"new\"}]}", 422,
            "malformed JSON", "surrogate");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\\udc00x\",\"text\":\"new\"}]}", 422,
            "malformed JSON", "surrogate");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\\q\",\"text\":\"new\"}]}", 422,
            "malformed JSON", "escape");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"raw\nnewline\"}]}", 422,
            "malformed JSON", "control character");
    REFUSED("POST", "/embed", "{\"inputs\":\"\\ud800\"}", 422, "malformed JSON", "inputs");
    expect_text("/items/nul", "old text");
    ck_assert_int_eq(item_count(), n);
    /* a proper pair is a 4-byte character, kept whole */
    ok("POST", "/items", "{\"items\":[{\"id\":\"emoji\",\"text\":\"a \\ud83d\\ude00 b\"}]}");
    expect_text("/items/emoji", "a \xf0\x9f\x98\x80 b");
}
END_TEST

/* 3. Numeric ids: integers in [0, 2^53-1]; the path form never aliases. */
START_TEST(test_numeric_id_range)
{
    REQUIRE_SERVER();
    ok("POST", "/items", "{\"items\":[{\"id\":9007199254740991,\"text\":\"max safe\"}]}");
    long n = item_count();
    const char *bad[] = {"9007199254740993", "9007199254740992", "1e300", "-1", "1.5", NULL};
    for (int i = 0; bad[i] != NULL; i++) {
        char body[200];
        snprintf(body, sizeof body, "{\"items\":[{\"id\":%s,\"text\":\"new\"}]}", bad[i]);
        refused("POST", "/items", body, strlen(body), 422, "9007199254740991", "strings");
        snprintf(body, sizeof body, "{\"ids\":[%s]}", bad[i]);
        refused("POST", "/items/delete", body, strlen(body), 422, "9007199254740991",
                "strings");
    }
    ck_assert_int_eq(item_count(), n);
    expect_text("/items/9007199254740991", "max safe");
    /* beyond the safe range a path segment is a string id, never 2^53 */
    expect_text("/items/9007199254740992", NULL);
    ok("POST", "/items", "{\"items\":[{\"id\":\"9007199254740993\",\"text\":\"big as string\"}]}");
    expect_text("/items/9007199254740993", "big as string");
    http_resp r;
    ck_assert_int_eq(http("GET", "/items/9007199254740993", NULL, &r), 200);
    ck_assert_msg(strstr(r.body.p, "\"id\":\"9007199254740993\"") != NULL, "%s", r.body.p);
    resp_free(&r);
    expect_text("/items/9007199254740991", "max safe");
}
END_TEST

/* 4. Invalid UTF-8 anywhere: 422, never stored or echoed. */
START_TEST(test_invalid_utf8_refused)
{
    REQUIRE_SERVER();
    seed_nul();
    long n = item_count();
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"bad\xff\xfe\",\"text\":\"new\"}]}", 422,
            "invalid UTF-8", "items[0].id");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"over\xc0\x80long\"}]}",
            422, "invalid UTF-8", "items[0].text");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"sur\xed\xa0\x80\"}]}", 422,
            "invalid UTF-8", "surrogate");
    REFUSED("POST", "/items", "{\"items\":[{\"id\":\"nul\",\"text\":\"big\xf4\x90\x80\x80\"}]}",
            422, "invalid UTF-8", "U+10FFFF");
    REFUSED("POST", "/items",
            "{\"items\":[{\"id\":\"nul\",\"text\":\"a\",\"payload\":{\"k\":\"t\xe2\x82\"}}]}",
            422, "invalid UTF-8", "items[0].payload.k");
    REFUSED("POST", "/embed", "{\"inputs\":\"\xff\"}", 422, "invalid UTF-8", "inputs");
    REFUSED("POST", "/v1/embeddings", "{\"input\":[\"ok\",\"\xfe\"]}", 400, "invalid UTF-8",
            "input[1]");
    refused("GET", "/items/bad%ff%fe", NULL, 0, 422, "UTF-8", "path");
    refused("DELETE", "/items/bad%ff%fe", NULL, 0, 422, "UTF-8", "path");
    refused("DELETE", "/items/sur%ed%a0%80", NULL, 0, 422, "UTF-8", "path");
    refused("GET", "/similar?q=%ff", NULL, 0, 422, "UTF-8", "`q`");
    /* refusals that quote the path never echo its invalid bytes */
    refused("POST", "/items/bad%ff%fe", NULL, 0, 405, "not allowed", "/items/bad?");
    refused("GET", "/nowhere%ff%c0%80", NULL, 0, 404, "no route", "/nowhere???");
    expect_text("/items/nul", "old text");
    ck_assert_int_eq(item_count(), n);
    /* valid multi-byte text is untouched, in the body and in the path */
    ok("POST", "/items", "{\"items\":[{\"id\":\"caf\xc3\xa9\",\"text\":\"\xe6\x97\xa5\"}]}");
    expect_text("/items/caf%c3%a9", "\xe6\x97\xa5");
}
END_TEST

/* 5. /items/count and /items/delete are names of routes, never of items. */
START_TEST(test_reserved_item_paths)
{
    REQUIRE_SERVER();
    ok("POST", "/items", "{\"items\":[{\"id\":\"count\",\"text\":\"named count\"},"
                         "{\"id\":\"delete\",\"text\":\"named delete\"}]}");
    long n = item_count();
    struct { const char *method, *path, *allow; } cases[] = {
        {"DELETE", "/items/count", "GET"},
        {"POST", "/items/count", "GET"},
        {"GET", "/items/delete", "POST"},
        {"DELETE", "/items/delete", "POST"},
        {"POST", "/items/some-id", "GET, DELETE"}, /* every method of the path */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_resp r;
        http(cases[i].method, cases[i].path, NULL, &r);
        expect_error_words(&r, 405, cases[i].path, "not allowed", (const char *)NULL);
        const char *allow = header_value(&r, "Allow");
        ck_assert_msg(allow != NULL && strcmp(allow, cases[i].allow) == 0, "%s %s: Allow %s",
                      cases[i].method, cases[i].path, allow != NULL ? allow : "(none)");
        resp_free(&r);
    }
    ck_assert_int_eq(item_count(), n);
    /* the body routes reach them */
    http_resp r;
    http("POST", "/items/delete", "{\"ids\":[\"count\",\"delete\"]}", &r);
    ck_assert_msg(r.status == 200 && strstr(r.body.p, "\"deleted\":2") != NULL, "%s", r.body.p);
    resp_free(&r);
    ck_assert_int_eq(item_count(), n - 2);
}
END_TEST

/* 6. Empty input: 400 "cannot be empty" on all three routes (TEI's answer). */
START_TEST(test_empty_input_consistent)
{
    REQUIRE_SERVER();
    const char *tei[][2] = {
        {"/embed", "{\"inputs\":\"\"}"},      {"/embed", "{\"inputs\":[]}"},
        {"/embed", "{\"inputs\":[\"a\",\"\"]}"}, {"/tokenize", "{\"inputs\":\"\"}"},
        {"/tokenize", "{\"inputs\":[]}"},     {"/tokenize", "{\"inputs\":[\"a\",\"\"]}"},
    };
    for (size_t i = 0; i < sizeof tei / sizeof tei[0]; i++) {
        http_resp r;
        http("POST", tei[i][0], tei[i][1], &r);
        expect_error_words(&r, 400, tei[i][1], "`inputs", "cannot be empty", (const char *)NULL);
        cJSON *j = json_of(&r);
        ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "error_type")->valuestring, "Empty");
        cJSON_Delete(j);
        resp_free(&r);
    }
    const char *oai[] = {"{\"input\":\"\"}", "{\"input\":[]}", "{\"input\":[\"a\",\"\"]}"};
    for (size_t i = 0; i < sizeof oai / sizeof oai[0]; i++) {
        http_resp r;
        http("POST", "/v1/embeddings", oai[i], &r);
        ck_assert_msg(r.status == 400, "%s: %ld %s", oai[i], r.status, r.body.p);
        cJSON *j = json_of(&r);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
        ck_assert_msg(cJSON_IsString(m) && strstr(m->valuestring, "cannot be empty") != NULL,
                      "%s: %s", oai[i], r.body.p);
        ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "type")->valuestring,
                         "invalid_request_error");
        cJSON_Delete(j);
        resp_free(&r);
    }
}
END_TEST

/* n texts "word k" as a JSON array body for key. */
static char *many_inputs(const char *key, int n, const char *text, const char *extra)
{
    buf b = {0};
    buf_addf(&b, "{\"%s\":[", key);
    for (int i = 0; i < n; i++)
        buf_addf(&b, "%s\"%s %d\"", i > 0 ? "," : "", text, i);
    buf_addf(&b, "]%s}", extra);
    return b.p;
}

/* 7. Response caps (--max-response-bytes 65536), checked before building. */
START_TEST(test_response_caps)
{
    REQUIRE_SERVER();
    http_resp r;
    /* /embed: 200 inputs x 32 floats is over; 8 dimensions fit */
    char *body = many_inputs("inputs", 200, "a", "");
    http("POST", "/embed", body, &r);
    expect_error_words(&r, 422, "/embed 200 inputs", "--max-response-bytes", "inputs",
                       (const char *)NULL);
    resp_free(&r);
    free(body);
    body = many_inputs("inputs", 200, "a", ",\"dimensions\":8");
    ck_assert_int_eq(http("POST", "/embed", body, &r), 200);
    ck_assert_uint_lt(r.body.len, 65536);
    resp_free(&r);
    free(body);
    body = many_inputs("input", 200, "a", "");
    http("POST", "/v1/embeddings", body, &r);
    ck_assert_int_eq(r.status, 400); /* OpenAI: 400 for an invalid request */
    resp_free(&r);
    free(body);
    /* /tokenize: 60 long inputs of 128 tokens each are over, 2 are not */
    char long_text[2048] = "";
    for (int k = 0; k < 150; k++)
        strcat(long_text, "cat ");
    body = many_inputs("inputs", 60, long_text, "");
    http("POST", "/tokenize", body, &r);
    expect_error_words(&r, 422, "/tokenize 60 inputs", "--max-response-bytes", "inputs",
                       (const char *)NULL);
    resp_free(&r);
    free(body);
    body = many_inputs("inputs", 2, long_text, "");
    ck_assert_int_eq(http("POST", "/tokenize", body, &r), 200);
    resp_free(&r);
    free(body);
    /* /similar: 300 items by vector */
    buf b = {0};
    buf_addf(&b, "{\"items\":[");
    for (int i = 0; i < 300; i++) {
        buf_addf(&b, "%s{\"id\":%d,\"vector\":[", i > 0 ? "," : "", 100000 + i);
        for (int d = 0; d < DIMS; d++)
            buf_addf(&b, "%s%d", d > 0 ? "," : "", d == i % DIMS ? 1 : 0);
        buf_addf(&b, "]}");
    }
    buf_addf(&b, "]}");
    ck_assert_int_eq(http("POST", "/items", b.p, &r), 200);
    resp_free(&r);
    free(b.p);
    char q[1024] = "{\"vector\":[1";
    for (int d = 1; d < DIMS; d++)
        strcat(q, ",0");
    char req[1200];
    snprintf(req, sizeof req, "%s],\"limit\":300,\"with_vector\":true}", q);
    http("POST", "/similar", req, &r);
    expect_error_words(&r, 422, "/similar with_vector", "--max-response-bytes", "with_vector",
                       (const char *)NULL);
    resp_free(&r);
    snprintf(req, sizeof req, "%s],\"limit\":300}", q);
    ck_assert_int_eq(http("POST", "/similar", req, &r), 200);
    cJSON *j = json_of(&r);
    ck_assert_int_ge(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "result")), 300);
    cJSON_Delete(j);
    resp_free(&r);
    /* payloads only known after the search: 10 of 8 KB are over */
    char *pay = malloc(8200);
    memset(pay, 'x', 8000);
    pay[8000] = '\0';
    b = (buf){0};
    buf_addf(&b, "{\"items\":[");
    for (int i = 0; i < 10; i++)
        buf_addf(&b, "%s{\"id\":\"p%d\",\"text\":\"payload carrier\",\"payload\":{\"s\":\"", i > 0 ? "," : "", i),
            buf_add(&b, pay, 8000), buf_addf(&b, "\"}}");
    buf_addf(&b, "]}");
    ck_assert_int_eq(http("POST", "/items", b.p, &r), 200);
    resp_free(&r);
    free(b.p);
    free(pay);
    http("POST", "/similar", "{\"text\":\"payload carrier\",\"limit\":300}", &r);
    expect_error_words(&r, 422, "/similar payloads", "--max-response-bytes", "with_payload",
                       (const char *)NULL);
    resp_free(&r);
    ck_assert_int_eq(
        http("POST", "/similar", "{\"text\":\"payload carrier\",\"limit\":300,\"with_payload\":false}", &r),
        200);
    resp_free(&r);
}
END_TEST

/* /tokenize counts against --max-concurrent-requests like /embed. */
START_TEST(test_tokenize_is_compute)
{
    server_proc own = {0};
    const char *args[] = {"--max-concurrent-requests", "1", "--train", "off", NULL};
    ck_assert_int_eq(srv_start(&own, args), 0);
    const char *body = "{\"inputs\":\"held\"}";
    int fd = hold_request(own.port, "/embed", body);
    http_resp r;
    http_port(own.port, "POST", "/tokenize", "{\"inputs\":\"a\"}", NULL, &r);
    ck_assert_msg(r.status == 429, "/tokenize while /embed holds the slot: %ld %s", r.status,
                  r.body.p);
    resp_free(&r);
    raw_send(fd, body, strlen(body));
    http_resp held;
    ck_assert_int_eq(raw_read_response(fd, 10.0, &held), 200);
    resp_free(&held);
    close(fd);
    long st = 0;
    for (int k = 0; k < 100 && st != 200; k++) { /* the slot frees when the reply is sent */
        st = http_port(own.port, "POST", "/tokenize", "{\"inputs\":\"a\"}", NULL, &r);
        resp_free(&r);
        if (st != 200)
            usleep(20000);
    }
    ck_assert_int_eq(st, 200);
    int ws = srv_stop(&own);
    ck_assert_msg(ws != -1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit %d: %s", ws,
                  tail(own.log));
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("input");
    TCase *tc = tcase_create("jsoncheck");
    tcase_add_loop_test(tc, test_jsoncheck_corpus, 0,
                        (int)(sizeof check_cases / sizeof check_cases[0]));
    tcase_add_test(tc, test_jsoncheck_field_names);
    tcase_add_test(tc, test_utf8_check);
    tcase_add_test(tc, test_utf8_sanitize);
    tcase_add_test(tc, test_jsoncheck_speed);
    suite_add_tcase(s, tc);
    tc = tcase_create("server");
    tcase_add_unchecked_fixture(tc, setup_input, teardown_input);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_nul_refused_everywhere);
    tcase_add_test(tc, test_malformed_escapes_refused);
    tcase_add_test(tc, test_numeric_id_range);
    tcase_add_test(tc, test_invalid_utf8_refused);
    tcase_add_test(tc, test_reserved_item_paths);
    tcase_add_test(tc, test_empty_input_consistent);
    tcase_add_test(tc, test_response_caps);
    tcase_add_test(tc, test_tokenize_is_compute);
    suite_add_tcase(s, tc);
    int rc = run_suite(s);
    curl_global_cleanup();
    return rc;
}
