/* test_browser.c: the web console, /docs, /openapi.json and the learning
 * curve of `embedd serve`.
 *
 * TCase pages (always): the real server (tests/serverproc.h) with an API
 * key and a learner that trains at once on a tiny budget: GET / gives a
 * browser the console and a client JSON, HEAD works, the pages need no key
 * and /train/history does, the served document is the file, and the
 * history fills with steps and gate decisions with their numbers.
 *
 * TCase chromium: runs tests/browser/console.test.mjs (node --test,
 * playwright-core driving Debian's chromium), which starts its own server.
 * Installs the npm package first (npm ci) when node_modules is missing.
 * Skips, saying why, when node or chromium is absent
 * (scripts/install-deps.sh installs chromium). Run from the repository
 * root, as `make test` does. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run_suite.h"
#include "testutil.h"
/* after testutil.h: its tu_read_file has a local named buf */
#include "serverproc.h"

#define BROWSER_DIR "tests/browser"
#define KEY "pages-key"

static const char *const AUTH[] = {"Authorization: Bearer " KEY, NULL};

/* ======================================================================== */
/* TCase pages                                                              */
/* ======================================================================== */

static void setup_pages(void)
{
    const char *args[] = {"--api-key", KEY, "--train-min-samples", "8", "--train-batch-size", "4",
                          "--publish-every", "5", "--publish", "auto", "--train-max-cpu", "90",
                          NULL};
    fixture_start(args);
}

START_TEST(test_root_by_accept)
{
    REQUIRE_SERVER();
    http_resp r;
    /* a client (no Accept: text/html) gets the name and release, no key */
    ck_assert_int_eq(http("GET", "/", NULL, &r), 200);
    cJSON *j = json_of(&r);
    const cJSON *title = cJSON_GetObjectItemCaseSensitive(j, "title");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(j, "version");
    ck_assert_msg(cJSON_IsString(title) && strcmp(title->valuestring, "embedd") == 0, "%s",
                  r.body.p);
    ck_assert_msg(cJSON_IsString(version) && version->valuestring[0] >= '0' &&
                  version->valuestring[0] <= '9', "%s", r.body.p);
    cJSON_Delete(j);
    resp_free(&r);

    /* a browser gets the console */
    const char *browser[] = {"Accept: text/html,application/xhtml+xml,*" "/*;q=0.8", NULL};
    ck_assert_int_eq(http_port(g_srv.port, "GET", "/", NULL, browser, &r), 200);
    const char *type = header_value(&r, "Content-Type");
    ck_assert_msg(type != NULL && strncmp(type, "text/html", 9) == 0, "%s", type);
    ck_assert_msg(strstr(r.body.p, "<title>embedd console</title>") != NULL, "%s", tail(r.body.p));
    /* the body depends on Accept: a shared cache must keep both */
    const char *vary = header_value(&r, "Vary");
    ck_assert_msg(vary != NULL && strcmp(vary, "Accept") == 0, "Vary: %s", vary);
    resp_free(&r);

    /* HEAD: the headers of GET, no body */
    int fd = raw_connect(g_srv.port);
    const char *head = "HEAD / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n"
                       "Connection: close\r\n\r\n";
    raw_send(fd, head, strlen(head));
    buf out = {0};
    ck_assert(raw_read_until_closed(fd, 10, &out) >= 0);
    close(fd);
    ck_assert_msg(out.p != NULL && strncmp(out.p, "HTTP/1.1 200", 12) == 0, "%s", out.p);
    ck_assert_msg(strcasestr(out.p, "Content-Type: text/html") != NULL, "%s", out.p);
    ck_assert_msg(strstr(out.p, "<!doctype") == NULL, "HEAD sent a body: %s", tail(out.p));
    free(out.p);
}
END_TEST

START_TEST(test_pages_need_no_key_and_history_does)
{
    REQUIRE_SERVER();
    http_resp r;
    ck_assert_int_eq(http("GET", "/docs", NULL, &r), 200);
    ck_assert_msg(strstr(r.body.p, "/openapi.json") != NULL, "%s", tail(r.body.p));
    resp_free(&r);

    ck_assert_int_eq(http("GET", "/openapi.json", NULL, &r), 200);
    size_t len = 0;
    char *file = tu_read_file("server/web/openapi.json", &len);
    ck_assert(file != NULL);
    ck_assert_msg(r.body.len == len && memcmp(r.body.p, file, len) == 0,
                  "/openapi.json (%zu bytes) is not server/web/openapi.json (%zu bytes)",
                  r.body.len, len);
    free(file);
    resp_free(&r);

    ck_assert_int_eq(http("GET", "/train/history", NULL, &r), 401);
    check_tei_error(&r, 401, "Unauthorized", "/train/history without the key");
    resp_free(&r);
}
END_TEST

/* Polls /train/history (at most 60 s) until it holds at least `steps`
 * steps and `gates` gate decisions; returns it parsed. */
static cJSON *history_with(int steps, int gates)
{
    cJSON *j = NULL;
    const double until = now_s() + 60;
    for (;;) {
        http_resp r;
        ck_assert_int_eq(http_port(g_srv.port, "GET", "/train/history", NULL, AUTH, &r), 200);
        j = json_of(&r);
        resp_free(&r);
        int ns = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "steps"));
        int ng = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "gates"));
        if ((ns >= steps && ng >= gates) || now_s() > until)
            return j;
        cJSON_Delete(j);
        usleep(200 * 1000);
    }
}

START_TEST(test_history_fills_with_steps_and_gates)
{
    REQUIRE_SERVER();
    /* 120 texts: the buffer holds out about 5% of them (by hash), and the
     * gate needs at least 2 held-out texts */
    char body[16384] = "{\"texts\":[";
    for (int i = 0; i < 120; i++) {
        size_t used = strlen(body);
        snprintf(body + used, sizeof body - used, "%s\"history text %d about thing %d\"",
                 i > 0 ? "," : "", i, i % 7);
    }
    strcat(body, "]}");
    http_resp r;
    ck_assert_int_eq(http_port(g_srv.port, "POST", "/train/samples", body, AUTH, &r), 200);
    resp_free(&r);

    cJSON *j = history_with(10, 1);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
    const cJSON *gates = cJSON_GetObjectItemCaseSensitive(j, "gates");
    ck_assert_msg(cJSON_GetArraySize(steps) >= 10 && cJSON_GetArraySize(gates) >= 1,
                  "no training in 60 s: %d steps, %d gates", cJSON_GetArraySize(steps),
                  cJSON_GetArraySize(gates));
    /* steps: oldest first, numbered 1, 2, ..., with a time and a finite loss */
    long want = 1;
    double last_at = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, steps) {
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(p, "step");
        const cJSON *at = cJSON_GetObjectItemCaseSensitive(p, "at");
        const cJSON *loss = cJSON_GetObjectItemCaseSensitive(p, "loss");
        ck_assert_msg(cJSON_IsNumber(step) && step->valuedouble == (double)want,
                      "step %ld out of order", want);
        ck_assert(cJSON_IsNumber(at) && at->valuedouble >= last_at && at->valuedouble > 1e9);
        ck_assert_msg(cJSON_IsNumber(loss) && loss->valuedouble > 0, "step %ld's loss", want);
        last_at = at->valuedouble;
        want++;
    }
    /* a gate decision carries its verdict and both sides' numbers */
    const cJSON *g = cJSON_GetArrayItem(gates, 0);
    ck_assert(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(g, "passed")));
    ck_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(g, "reason")));
    const cJSON *gstep = cJSON_GetObjectItemCaseSensitive(g, "step");
    ck_assert(cJSON_IsNumber(gstep) && gstep->valuedouble >= 1);
    const char *sides[] = {"candidate", "current"};
    for (int i = 0; i < 2; i++) {
        const cJSON *side = cJSON_GetObjectItemCaseSensitive(g, sides[i]);
        const cJSON *vl = cJSON_GetObjectItemCaseSensitive(side, "val_loss");
        const cJSON *cos = cJSON_GetObjectItemCaseSensitive(side, "mean_cos");
        ck_assert_msg(cJSON_IsNumber(vl) && cJSON_IsNumber(cos), "gate %s: %s", sides[i],
                      cJSON_PrintUnformatted(side));
    }
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(j, "total");
    const cJSON *tsteps = cJSON_GetObjectItemCaseSensitive(total, "steps");
    ck_assert(cJSON_IsNumber(tsteps) && tsteps->valuedouble >= cJSON_GetArraySize(steps));
    cJSON_Delete(j);

    /* it agrees with /train/status */
    ck_assert_int_eq(http_port(g_srv.port, "GET", "/train/status", NULL, AUTH, &r), 200);
    cJSON *st = json_of(&r);
    resp_free(&r);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(st, "steps");
    ck_assert(cJSON_IsNumber(n) && n->valuedouble >= want - 1);
    cJSON_Delete(st);
}
END_TEST

/* ======================================================================== */
/* TCase chromium                                                           */
/* ======================================================================== */

static const char *chromium_path(void)
{
    const char *env = getenv("CHROMIUM");
    return env != NULL && env[0] != '\0' ? env : "/usr/bin/chromium";
}

/* Runs cmd with its output into dir/name; returns the exit status (-1: did
 * not exit) and *out the output (free it). */
static int run_logged(const char *cmd, const char *dir, const char *name, char **out)
{
    char full[4096], path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(full, sizeof full, "%s > %s 2>&1", cmd, path);
    int st = system(full);
    *out = tu_read_file(path, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_console_and_docs_in_chromium)
{
    if (system("command -v node > /dev/null 2>&1") != 0) {
        printf("test_browser: node not installed, the console is not checked in a browser\n");
        return;
    }
    struct stat sb;
    if (stat(chromium_path(), &sb) != 0) {
        printf("test_browser: no chromium at %s (apt-get install chromium, or set CHROMIUM), "
               "the console is not checked in a browser\n", chromium_path());
        return;
    }
    char dir[256], cmd[1024];
    tu_mkdtemp(dir, sizeof dir);
    char *out = NULL;
    if (stat(BROWSER_DIR "/node_modules/playwright-core", &sb) != 0) {
        int rc = run_logged("npm ci --prefix " BROWSER_DIR " --no-audit --no-fund", dir,
                            "npm.txt", &out);
        if (rc != 0) {
            snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
            tu_run(cmd);
        }
        ck_assert_msg(rc == 0, "npm ci failed:\n%s", tail(out));
        free(out);
    }
    /* node's own timeout bounds it: the tests' timeouts sum to 2 minutes */
    snprintf(cmd, sizeof cmd, "EMBEDD_BIN=%s CHROMIUM=%s timeout 180 node --test " BROWSER_DIR "/",
             embedd_bin(), chromium_path());
    int rc = run_logged(cmd, dir, "node.txt", &out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
    ck_assert_msg(rc == 0, "node --test " BROWSER_DIR "/ failed (%d):\n%s", rc, tail(out));
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("browser");
    TCase *pages = tcase_create("pages");
    tcase_add_unchecked_fixture(pages, setup_pages, fixture_stop);
    tcase_set_timeout(pages, 120);
    tcase_add_test(pages, test_root_by_accept);
    tcase_add_test(pages, test_pages_need_no_key_and_history_does);
    tcase_add_test(pages, test_history_fills_with_steps_and_gates);
    suite_add_tcase(s, pages);
    TCase *tc = tcase_create("chromium");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_console_and_docs_in_chromium);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
