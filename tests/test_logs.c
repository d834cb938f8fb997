/* test_logs.c: the server's log (server/common/log.h, docs/logs.md).
 *
 * Unit tests of the formatter: exact text and JSON lines for a fixed time,
 * JSON escaping of quotes, newlines, control bytes, UTF-8 and bytes that
 * are not UTF-8 (every line must parse, and decode to what was logged),
 * long values cut without breaking a line, level filtering, and whole
 * lines from several threads at once.
 *
 * Integration tests start the real binary (serverproc.h) and read its
 * stderr: with --log-format json every line parses and the access lines
 * carry the fields and values of the requests made; the Authorization
 * value and the query string never appear; the start line names the model
 * and the learning state; --log-level warn hides the access lines and
 * --log-level debug shows the probes. */
#include <check.h>
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "run_suite.h"
#include "serverproc.h"

/* 2025-12-06T15:40:00.123Z */
#define T_MS 1765035600123LL
#define T_TEXT "2025-12-06T15:40:00.123Z"

static char out[LOG_LINE_BYTES];

static const char *fmt_line(const log_line *ln, log_format f)
{
    size_t n = log_format_line(ln, f, T_MS, out, sizeof out);
    ck_assert_uint_eq(n, strlen(out));
    return out;
}

/* ---- the formatter ------------------------------------------------------- */

START_TEST(text_line_exact)
{
    log_setup(LOG_DEBUG, LOG_TEXT);
    log_line ln;
    ck_assert(log_begin(&ln, LOG_INFO, "request %d", 7));
    log_str(&ln, "method", "GET");
    log_str(&ln, "path", "/a b");
    log_int(&ln, "status", 404);
    log_num(&ln, "ms", 1.5, 2);
    log_str(&ln, "empty", "");
    log_str(&ln, "q", "say \"hi\"\\ x=1");
    log_bool(&ln, "ok", 0);
    log_str(&ln, "utf8", "caf\xc3\xa9");
    ck_assert_str_eq(fmt_line(&ln, LOG_TEXT),
                     T_TEXT " info request 7 method=GET path=\"/a b\" status=404 ms=1.50 "
                     "empty=\"\" q=\"say \\\"hi\\\"\\\\ x=1\" ok=false utf8=caf\xc3\xa9\n");
}
END_TEST

START_TEST(text_line_stays_one_line)
{
    log_setup(LOG_DEBUG, LOG_TEXT);
    log_line ln;
    ck_assert(log_begin(&ln, LOG_WARN, "two\nlines\r\x01"));
    log_str(&ln, "v", "a\nb\x7f\xff");
    ck_assert_str_eq(fmt_line(&ln, LOG_TEXT),
                     T_TEXT " warn two\\nlines\\r\\x01 v=\"a\\nb\\x7f\\xff\"\n");
}
END_TEST

START_TEST(json_line_exact)
{
    log_setup(LOG_DEBUG, LOG_JSON);
    log_line ln;
    ck_assert(log_begin(&ln, LOG_ERROR, "say \"%s\"", "hi"));
    log_str(&ln, "path", "/a\nb\\c\t\x01\x1f\x7f");
    log_int(&ln, "status", -3);
    log_num(&ln, "nan", 0.0 / 0.0, 2);
    log_bool(&ln, "on", 1);
    ck_assert_str_eq(fmt_line(&ln, LOG_JSON),
                     "{\"time\":\"" T_TEXT "\",\"level\":\"error\",\"msg\":\"say \\\"hi\\\"\","
                     "\"path\":\"/a\\nb\\\\c\\t\\u0001\\u001f\\u007f\",\"status\":-3,"
                     "\"nan\":null,\"on\":true}\n");
}
END_TEST

/* Each case: the bytes logged and the UTF-8 a JSON parser must read back
 * (U+FFFD for every byte that is not part of a well-formed sequence). */
static const struct {
    const char *in, *want;
} utf8_cases[] = {
    {"caf\xc3\xa9", "caf\xc3\xa9"},
    {"\xe2\x82\xac 5", "\xe2\x82\xac 5"},
    {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
    {"a\xff" "b", "a\xef\xbf\xbd" "b"},
    {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},               /* overlong NUL (%00 in a path) */
    {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
    {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
    {"\xe2\x82", "\xef\xbf\xbd\xef\xbf\xbd"},               /* cut short */
    {"q\"uo\\te\n", "q\"uo\\te\n"},
};

START_TEST(json_escapes_decode_back)
{
    log_setup(LOG_DEBUG, LOG_JSON);
    for (size_t i = 0; i < sizeof utf8_cases / sizeof utf8_cases[0]; i++) {
        log_line ln;
        ck_assert(log_begin(&ln, LOG_INFO, "%s", utf8_cases[i].in));
        log_str(&ln, "v", utf8_cases[i].in);
        const char *line = fmt_line(&ln, LOG_JSON);
        ck_assert_msg(utf8_valid((const unsigned char *)line, strlen(line)), "case %zu: %s", i,
                      line);
        cJSON *j = cJSON_Parse(line);
        ck_assert_msg(j != NULL, "case %zu does not parse: %s", i, line);
        ck_assert_str_eq(cJSON_GetObjectItem(j, "msg")->valuestring, utf8_cases[i].want);
        ck_assert_str_eq(cJSON_GetObjectItem(j, "v")->valuestring, utf8_cases[i].want);
        cJSON_Delete(j);
    }
}
END_TEST

START_TEST(time_is_iso8601_utc_ms)
{
    log_line ln;
    log_setup(LOG_DEBUG, LOG_TEXT);
    ck_assert(log_begin(&ln, LOG_DEBUG, "m"));
    log_format_line(&ln, LOG_TEXT, 0, out, sizeof out);
    ck_assert_str_eq(out, "1970-01-01T00:00:00.000Z debug m\n");
    log_format_line(&ln, LOG_TEXT, 951782400999LL, out, sizeof out); /* a leap day */
    ck_assert_str_eq(out, "2000-02-29T00:00:00.999Z debug m\n");
}
END_TEST

/* A value longer than a line is cut at a character, ends in "...", and the
 * line still parses; fields that no longer fit are left out. */
START_TEST(long_values_are_cut_cleanly)
{
    static char big[20000];
    for (size_t i = 0; i + 2 < sizeof big; i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    big[sizeof big - 2] = '\0';
    log_setup(LOG_DEBUG, LOG_JSON);
    log_line ln;
    ck_assert(log_begin(&ln, LOG_INFO, "big"));
    log_str(&ln, "a", "first");
    log_str(&ln, "big", big);
    log_str(&ln, "after", "x");
    const char *line = fmt_line(&ln, LOG_JSON);
    size_t n = strlen(line);
    ck_assert_uint_lt(n, LOG_LINE_BYTES);
    ck_assert(line[n - 1] == '\n');
    ck_assert(utf8_valid((const unsigned char *)line, n));
    cJSON *j = cJSON_Parse(line);
    ck_assert_msg(j != NULL, "%s", tail(line));
    ck_assert_str_eq(cJSON_GetObjectItem(j, "a")->valuestring, "first");
    const char *v = cJSON_GetObjectItem(j, "big")->valuestring;
    ck_assert_uint_gt(strlen(v), 1000);
    ck_assert_str_eq(v + strlen(v) - 3, "...");
    ck_assert(cJSON_GetObjectItem(j, "after") == NULL);
    cJSON_Delete(j);
    /* text too */
    log_format_line(&ln, LOG_TEXT, T_MS, out, sizeof out);
    n = strlen(out);
    ck_assert(n < LOG_LINE_BYTES && out[n - 1] == '\n' && strchr(out, '\n') == out + n - 1);
    ck_assert(utf8_valid((const unsigned char *)out, n));
}
END_TEST

START_TEST(levels_filter)
{
    log_line ln;
    log_setup(LOG_WARN, LOG_TEXT);
    ck_assert(log_on(LOG_ERROR) && log_on(LOG_WARN));
    ck_assert(!log_on(LOG_INFO) && !log_on(LOG_DEBUG));
    ck_assert(!log_begin(&ln, LOG_INFO, "x"));
    ck_assert(log_begin(&ln, LOG_ERROR, "x"));
    log_setup(LOG_ERROR, LOG_TEXT);
    ck_assert(!log_on(LOG_WARN));
    log_setup(LOG_INFO, LOG_TEXT);
    ck_assert(log_on(LOG_INFO) && !log_on(LOG_DEBUG));
    log_setup(LOG_DEBUG, LOG_TEXT);
    ck_assert(log_on(LOG_DEBUG));
    ck_assert_str_eq(log_level_name(LOG_WARN), "warn");
}
END_TEST

/* ---- writing: stderr redirected to a file (Check forks each test) --------- */

/* Reads the file behind fd from its start. */
static char *read_all(int fd, size_t *len)
{
    struct stat st;
    ck_assert(fstat(fd, &st) == 0);
    char *text = malloc((size_t)st.st_size + 1);
    ck_assert(text != NULL);
    ck_assert(pread(fd, text, (size_t)st.st_size, 0) == st.st_size);
    text[st.st_size] = '\0';
    *len = (size_t)st.st_size;
    return text;
}

static int stderr_to_tmpfile(void)
{
    char path[] = "/tmp/test_logs_XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    unlink(path);
    ck_assert(dup2(fd, 2) == 2);
    return fd;
}

START_TEST(written_lines_respect_level)
{
    int fd = stderr_to_tmpfile();
    log_setup(LOG_WARN, LOG_JSON);
    log_msg(LOG_INFO, "hidden");
    log_msg(LOG_WARN, "shown %d", 1);
    log_msg(LOG_DEBUG, "hidden too");
    log_msg(LOG_ERROR, "shown %d", 2);
    size_t len;
    char *text = read_all(fd, &len);
    ck_assert_msg(strstr(text, "hidden") == NULL, "%s", text);
    char *second = strchr(text, '\n');
    ck_assert(second != NULL);
    const char *first = strstr(text, "\"level\":\"warn\",\"msg\":\"shown 1\"}\n");
    ck_assert(first != NULL && first < second);
    ck_assert(strstr(second + 1, "\"level\":\"error\",\"msg\":\"shown 2\"}\n") != NULL);
    ck_assert(text[len - 1] == '\n' && strchr(second + 1, '\n') == text + len - 1);
    free(text);
    close(fd);
}
END_TEST

#define WRITERS 4
#define LINES_EACH 300

static void *writer_main(void *arg)
{
    long id = (long)(intptr_t)arg;
    char pad[3000];
    memset(pad, 'a' + (int)id, sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < LINES_EACH; i++) {
        log_line ln;
        if (log_begin(&ln, LOG_INFO, "w%ld", id)) {
            log_int(&ln, "i", i);
            log_str(&ln, "pad", pad + (i % 7) * 300); /* lines of various lengths */
            log_end(&ln);
        }
    }
    return NULL;
}

/* Lines of several threads never mix: each line read back parses and its
 * pad is one letter, that of its writer; every line arrives. */
START_TEST(threads_never_interleave)
{
    int fd = stderr_to_tmpfile();
    log_setup(LOG_INFO, LOG_JSON);
    pthread_t t[WRITERS];
    for (long i = 0; i < WRITERS; i++)
        ck_assert(pthread_create(&t[i], NULL, writer_main, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(t[i], NULL);
    size_t len;
    char *text = read_all(fd, &len);
    int count[WRITERS] = {0};
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        cJSON *j = cJSON_Parse(line);
        ck_assert_msg(j != NULL, "a broken line: %.200s", line);
        const char *msg = cJSON_GetObjectItem(j, "msg")->valuestring;
        int id = msg[1] - '0';
        ck_assert(id >= 0 && id < WRITERS);
        const char *pad = cJSON_GetObjectItem(j, "pad")->valuestring;
        for (const char *p = pad; *p != '\0'; p++)
            ck_assert_int_eq(*p, 'a' + id);
        count[id]++;
        cJSON_Delete(j);
    }
    for (int i = 0; i < WRITERS; i++)
        ck_assert_int_eq(count[i], LINES_EACH);
    free(text);
    close(fd);
}
END_TEST

/* ---- the real server -------------------------------------------------------- */

#define KEY "sk-logtest-7f3a9c"
#define WRONG_KEY "wrong-token-b41d"

/* The lines of s's log parsed as JSON (a failed check when one does not
 * parse); a cJSON array to delete. */
static cJSON *json_lines(const char *log)
{
    cJSON *all = cJSON_CreateArray();
    const char *line = log;
    for (const char *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        char *copy = strndup(line, (size_t)(nl - line));
        cJSON *j = cJSON_Parse(copy);
        ck_assert_msg(j != NULL && cJSON_IsObject(j), "not a JSON object: %s", copy);
        free(copy);
        const cJSON *t = cJSON_GetObjectItem(j, "time");
        ck_assert(cJSON_IsString(t) && strlen(t->valuestring) == 24);
        ck_assert(t->valuestring[10] == 'T' && t->valuestring[19] == '.' &&
                  t->valuestring[23] == 'Z');
        ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "level")));
        ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "msg")));
        cJSON_AddItemToArray(all, j);
    }
    ck_assert_msg(*line == '\0', "a line without its newline: %s", line);
    return all;
}

static const char *str_of(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    ck_assert_msg(cJSON_IsString(v), "no string %s", key);
    return v->valuestring;
}

static double num_of(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    ck_assert_msg(cJSON_IsNumber(v), "no number %s", key);
    return v->valuedouble;
}

/* The access line of method path with status, or NULL. */
static const cJSON *find_access(const cJSON *lines, const char *method, const char *path,
                                int status)
{
    const cJSON *j;
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(str_of(j, "msg"), "request") != 0)
            continue;
        if (strcmp(str_of(j, "method"), method) == 0 && strcmp(str_of(j, "path"), path) == 0 &&
            (int)num_of(j, "status") == status)
            return j;
    }
    return NULL;
}

static int count_msg(const cJSON *lines, const char *msg)
{
    int n = 0;
    const cJSON *j;
    cJSON_ArrayForEach(j, lines) n += strcmp(str_of(j, "msg"), msg) == 0;
    return n;
}

static void check_access_fields(const cJSON *j, const char *route, long request_bytes)
{
    ck_assert_str_eq(str_of(j, "level"), "info");
    ck_assert_str_eq(str_of(j, "route"), route);
    ck_assert_str_eq(str_of(j, "client"), "127.0.0.1");
    ck_assert(num_of(j, "duration_ms") >= 0);
    ck_assert(num_of(j, "response_bytes") > 0);
    ck_assert_int_eq((long)num_of(j, "request_bytes"), request_bytes);
    ck_assert(num_of(j, "model_version") >= 0);
}

START_TEST(server_json_access_log)
{
    server_proc s = {0};
    const char *extra[] = {"--log-format", "json", "--api-key", KEY, NULL};
    ck_assert_int_eq(srv_start(&s, extra), 0);
    const char *auth[] = {"Authorization: Bearer " KEY, NULL};
    const char *wrong[] = {"Authorization: Bearer " WRONG_KEY, NULL};
    const char *body = "{\"inputs\":\"hello logs\"}";
    http_resp r = {0};
    ck_assert_int_eq(http_port(s.port, "POST", "/embed", body, auth, &r), 200);
    resp_free(&r);
    ck_assert_int_eq(http_port(s.port, "GET", "/health", NULL, NULL, &r), 200);
    resp_free(&r);
    ck_assert_int_eq(http_port(s.port, "GET", "/no/such?token=querysecret", NULL, auth, &r), 404);
    resp_free(&r);
    ck_assert_int_eq(http_port(s.port, "POST", "/embed", body, wrong, &r), 401);
    resp_free(&r);
    ck_assert_int_eq(http_port(s.port, "POST", "/embed", body, NULL, &r), 401);
    resp_free(&r);
    /* a head the front door refuses before a request exists */
    int fd = raw_connect(s.port);
    const char *bad = "GET /x y z HTTP/1.1\r\nHost: a\r\n\r\n";
    raw_send(fd, bad, strlen(bad));
    ck_assert_int_eq(raw_read_response(fd, 10.0, &r), 400);
    resp_free(&r);
    close(fd);
    int st = srv_stop(&s);
    ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", tail(s.log));

    ck_assert_msg(strstr(s.log, KEY) == NULL, "the API key is in the log: %s", tail(s.log));
    ck_assert_msg(strstr(s.log, WRONG_KEY) == NULL, "a bearer token is in the log");
    ck_assert_msg(strstr(s.log, "querysecret") == NULL, "the query is in the log");
    ck_assert_msg(strstr(s.log, "hello logs") == NULL, "the body is in the log");
    cJSON *lines = json_lines(s.log);

    const cJSON *start = cJSON_GetArrayItem(lines, 0);
    const cJSON *j;
    cJSON_ArrayForEach(j, lines)
    {
        if (strncmp(str_of(j, "msg"), "listening on http://127.0.0.1:", 30) == 0)
            start = j;
    }
    ck_assert_msg(strncmp(str_of(start, "msg"), "listening on", 12) == 0, "%s", tail(s.log));
    ck_assert_str_eq(str_of(start, "level"), "info");
    ck_assert_str_eq(str_of(start, "model"), "tiny-f16");
    ck_assert_int_eq((int)num_of(start, "dim"), 32);
    ck_assert_str_eq(str_of(start, "learning"), "on");
    ck_assert_str_eq(str_of(start, "publish"), "manual");
    ck_assert_str_eq(str_of(start, "precision"), "fp32");
    ck_assert_str_eq(str_of(start, "store"), "memory");
    ck_assert_str_eq(str_of(start, "api_key"), "on");
    ck_assert_int_eq((int)num_of(start, "items"), 0);

    const cJSON *ok = find_access(lines, "POST", "/embed", 200);
    ck_assert_msg(ok != NULL, "%s", tail(s.log));
    check_access_fields(ok, "embed", (long)strlen(body));
    ck_assert_int_eq((int)num_of(ok, "model_version"), 1);
    const cJSON *missing = find_access(lines, "GET", "/no/such", 404);
    ck_assert_msg(missing != NULL, "%s", tail(s.log));
    check_access_fields(missing, "unknown", 0);
    ck_assert_int_eq((int)num_of(missing, "model_version"), 0);
    int refused = 0;
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(str_of(j, "msg"), "request") == 0 && (int)num_of(j, "status") == 401) {
            check_access_fields(j, "embed", 0); /* refused before its body was read */
            ck_assert_str_eq(str_of(j, "method"), "POST");
            ck_assert_str_eq(str_of(j, "path"), "/embed");
            refused++;
        }
    }
    ck_assert_int_eq(refused, 2);
    /* /health is a probe: debug only; every request above has one line */
    ck_assert(find_access(lines, "GET", "/health", 200) == NULL);
    ck_assert_int_eq(count_msg(lines, "request"), 4);
    int door = 0;
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(str_of(j, "msg"), "refused request head") == 0) {
            ck_assert_str_eq(str_of(j, "level"), "warn");
            ck_assert_int_eq((int)num_of(j, "status"), 400);
            ck_assert_str_eq(str_of(j, "client"), "127.0.0.1");
            door++;
        }
    }
    ck_assert_int_eq(door, 1);
    ck_assert_int_eq(count_msg(lines, "stopped"), 1);
    cJSON_Delete(lines);
}
END_TEST

/* --log-level warn: the start line (it names the port) and nothing at info. */
START_TEST(server_level_warn_hides_access)
{
    server_proc s = {0};
    const char *extra[] = {"--log-level", "warn", "--log-format", "json", "--no-train", NULL};
    ck_assert_int_eq(srv_start(&s, extra), 0);
    http_resp r = {0};
    ck_assert_int_eq(http_port(s.port, "POST", "/embed", "{\"inputs\":\"x\"}", NULL, &r), 200);
    resp_free(&r);
    ck_assert_int_eq(http_port(s.port, "GET", "/nope", NULL, NULL, &r), 404);
    resp_free(&r);
    int st = srv_stop(&s);
    ck_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cJSON *lines = json_lines(s.log);
    ck_assert_int_eq(count_msg(lines, "request"), 0);
    const cJSON *j;
    int n = 0;
    cJSON_ArrayForEach(j, lines)
    {
        n++;
        ck_assert_msg(strncmp(str_of(j, "msg"), "listening on", 12) == 0, "%s", tail(s.log));
        ck_assert_str_eq(str_of(j, "learning"), "off");
    }
    ck_assert_int_eq(n, 1);
    cJSON_Delete(lines);
}
END_TEST

/* Text is the default; --log-level debug adds the probes' lines. */
START_TEST(server_text_debug_shows_probes)
{
    server_proc s = {0};
    const char *extra[] = {"--log-level", "debug", NULL};
    ck_assert_int_eq(srv_start(&s, extra), 0);
    http_resp r = {0};
    ck_assert_int_eq(http_port(s.port, "GET", "/health", NULL, NULL, &r), 200);
    resp_free(&r);
    ck_assert_int_eq(http_port(s.port, "GET", "/metrics", NULL, NULL, &r), 200);
    resp_free(&r);
    int st = srv_stop(&s);
    ck_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_msg(strstr(s.log, " debug request method=GET path=/health status=200 ") != NULL,
                  "%s", tail(s.log));
    ck_assert_msg(strstr(s.log, " debug request method=GET path=/metrics status=200 ") != NULL,
                  "%s", tail(s.log));
    ck_assert(strstr(s.log, " info listening on http://127.0.0.1:") != NULL);
    ck_assert(strstr(s.log, " learning=on ") != NULL);
    ck_assert(strstr(s.log, " info stopped\n") != NULL);
    ck_assert(s.log[0] != '{');
}
END_TEST

/* A bad value of either flag is a usage error that names it. */
START_TEST(bad_flag_values_refused)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s serve --log-format xml 2>&1", embedd_bin());
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    char text[1024] = "";
    size_t n = fread(text, 1, sizeof text - 1, p);
    text[n] = '\0';
    int st = pclose(p);
    ck_assert_int_eq(WEXITSTATUS(st), 2);
    ck_assert_msg(strstr(text, "--log-format") != NULL && strstr(text, "xml") != NULL, "%s",
                  text);
    snprintf(cmd, sizeof cmd, "EMBEDD_LOG_LEVEL=loud %s serve 2>&1", embedd_bin());
    p = popen(cmd, "r");
    ck_assert(p != NULL);
    n = fread(text, 1, sizeof text - 1, p);
    text[n] = '\0';
    st = pclose(p);
    ck_assert_int_eq(WEXITSTATUS(st), 2);
    ck_assert_msg(strstr(text, "EMBEDD_LOG_LEVEL") != NULL, "%s", text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("logs");
    TCase *tc = tcase_create("format");
    tcase_add_test(tc, text_line_exact);
    tcase_add_test(tc, text_line_stays_one_line);
    tcase_add_test(tc, json_line_exact);
    tcase_add_test(tc, json_escapes_decode_back);
    tcase_add_test(tc, time_is_iso8601_utc_ms);
    tcase_add_test(tc, long_values_are_cut_cleanly);
    tcase_add_test(tc, levels_filter);
    tcase_add_test(tc, written_lines_respect_level);
    tcase_add_test(tc, threads_never_interleave);
    suite_add_tcase(s, tc);
    TCase *srv = tcase_create("server");
    tcase_set_timeout(srv, 60);
    tcase_add_test(srv, server_json_access_log);
    tcase_add_test(srv, server_level_warn_hides_access);
    tcase_add_test(srv, server_text_debug_shows_probes);
    tcase_add_test(srv, bad_flag_values_refused);
    suite_add_tcase(s, srv);
    return run_suite(s);
}
