/* test_clients.c: the client matrix (tests/clients, `node --test`) against
 * the real server: the openai SDK, @langchain/openai, @huggingface/inference
 * and LangChain's HuggingFaceInferenceEmbeddings at the base URL, and
 * @qdrant/js-client-rest, each unchanged.
 *
 * The unchecked fixture starts two learning-off servers with memory stores:
 * one with --api-key (the OpenAI and TEI clients send it as Authorization:
 * Bearer), one without, for the Qdrant client, which sends its key as
 * "api-key: KEY" and so would get 401 from the first (see docs/clients.md).
 * The test runs `npm ci --prefix tests/clients` when node_modules is missing
 * or older than the lock file, then `node --test tests/clients/`, and fails
 * with the tail of node's output. Without node it prints why and passes.
 *
 * Routes the matrix needs that are not in the route table (routes_table())
 * go to node as EMBEDD_MISSING_ROUTES; the tests that call them are reported
 * as TODO (still run, their failure printed, not failing the run). A route
 * added to the table makes its tests count at once, with no edit here. */
#include <check.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "http/server.h"
#include "run_suite.h"
#include "testutil.h"

#include "serverproc.h"

#define API_KEY "clients-key"
#define CLIENTS_DIR "tests/clients"

/* Every route a client of the matrix calls, "METHOD /path" with "{}" for a
 * path parameter (the needs() calls in tests/clients name the same strings). */
static const char *const needed_routes[] = {
    "POST /embed",
    "GET /info",
    "POST /v1/embeddings",
    "GET /v1/models",
    "GET /v1/models/{}",
    "POST /embeddings",
    "POST /",
    "GET /collections",
    "PUT /collections/{}",
    "GET /collections/{}",
    "DELETE /collections/{}",
    "PUT /collections/{}/points",
    "POST /collections/{}/points",
    "GET /collections/{}/points/{}",
    "POST /collections/{}/points/search",
    "POST /collections/{}/points/query",
    "POST /collections/{}/points/count",
    "POST /collections/{}/points/delete",
};
#define N_NEEDED (sizeof needed_routes / sizeof needed_routes[0])

/* "METHOD template" with each "{name}" reduced to "{}", so the matrix does
 * not depend on what a route calls its parameters. */
static void route_key(const char *method, const char *path, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "%s ", method);
    for (const char *p = path; *p != '\0' && o + 3 < cap; p++) {
        if (*p == '{') {
            const char *end = strchr(p, '}');
            if (end != NULL) {
                out[o++] = '{';
                out[o++] = '}';
                p = end;
                continue;
            }
        }
        out[o++] = *p;
    }
    out[o] = '\0';
}

/* 1 when the route table has key ("POST /collections/{}/points"). */
static int route_known(const char *key)
{
    size_t n = 0;
    const route *t = routes_table(&n);
    char k[512];
    for (size_t i = 0; i < n; i++) {
        route_key(t[i].method, t[i].path, k, sizeof k);
        if (strcmp(k, key) == 0)
            return 1;
    }
    return 0;
}

/* The needed routes missing from the table, comma-separated, into out. */
static void missing_routes(char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < N_NEEDED; i++) {
        if (route_known(needed_routes[i]))
            continue;
        int w = snprintf(out + o, cap - o, "%s%s", o > 0 ? "," : "", needed_routes[i]);
        ck_assert(w > 0 && (size_t)w < cap - o);
        o += (size_t)w;
    }
}

/* ======================================================================== */
/* TCase routes: the route keys (no server)                                 */
/* ======================================================================== */

START_TEST(test_route_key)
{
    char k[128];
    route_key("GET", "/collections/{collection_name}/points/{id}", k, sizeof k);
    ck_assert_str_eq(k, "GET /collections/{}/points/{}");
    route_key("POST", "/", k, sizeof k);
    ck_assert_str_eq(k, "POST /");
    /* routes every build has are found, under any parameter name */
    ck_assert(route_known("POST /embed"));
    ck_assert(route_known("GET /items/{}"));
    ck_assert(!route_known("GET /items/{}/x"));
    ck_assert(!route_known("PATCH /embed"));
    /* and do not count as missing */
    char miss[2048], list[2050];
    missing_routes(miss, sizeof miss);
    snprintf(list, sizeof list, ",%s,", miss);
    ck_assert_msg(strstr(list, ",POST /embed,") == NULL, "%s", miss);
    ck_assert_msg(strstr(list, ",GET /v1/models,") == NULL, "%s", miss);
    ck_assert_msg(strstr(list, ",GET /info,") == NULL, "%s", miss);
}
END_TEST

/* ======================================================================== */
/* TCase matrix: node --test tests/clients/                                 */
/* ======================================================================== */

static server_proc g_keyless;

static void setup_matrix(void)
{
    const char *keyed[] = {"--api-key", API_KEY, "--train=false", NULL};
    fixture_start(keyed);
    const char *keyless[] = {"--train=false", NULL};
    if (srv_start(&g_keyless, keyless) != 0)
        g_keyless.port = 0;
}

static void teardown_matrix(void)
{
    if (g_keyless.port > 0) {
        int st = srv_stop(&g_keyless);
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fprintf(stderr, "test_clients: keyless server exit status %d; its stderr:\n%s\n", st,
                    g_keyless.log);
    }
    fixture_stop();
}

/* 1 when node_modules is missing or older than the lock file (npm ci writes
 * node_modules/.package-lock.json last). */
static int modules_stale(void)
{
    struct stat lock, installed;
    if (stat(CLIENTS_DIR "/package-lock.json", &lock) != 0)
        return 1;
    if (stat(CLIENTS_DIR "/node_modules/.package-lock.json", &installed) != 0)
        return 1;
    return installed.st_mtime < lock.st_mtime;
}

/* Runs cmd with its output in dir/name; returns the wait status and the
 * output (free it) in *out. */
static int run_logged(const char *cmd, const char *dir, const char *name, char **out)
{
    char full[4096], path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(full, sizeof full, "%s > %s 2>&1", cmd, path);
    int st = system(full);
    *out = tu_read_file(path, NULL);
    return st;
}

/* Prints node's summary ("# tests 26", "# todo 16", ...) and each TODO
 * test, so a run that passes still says what is not checked yet. */
static void print_summary(const char *out)
{
    for (const char *line = out; line != NULL && *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        if (strncmp(line, "# tests", 7) == 0 || strncmp(line, "# pass", 6) == 0 ||
            strncmp(line, "# fail", 6) == 0 || strncmp(line, "# todo", 6) == 0 ||
            strncmp(line, "# skipped", 9) == 0 || memmem(line, len, " # TODO ", 8) != NULL)
            printf("test_clients: %.*s\n", (int)len, line);
        line = end != NULL ? end + 1 : NULL;
    }
}

START_TEST(test_client_matrix)
{
    REQUIRE_SERVER();
    ck_assert_msg(g_keyless.port > 0, "the keyless server did not start: %s", tail(g_keyless.log));
    if (system("command -v node > /dev/null 2>&1") != 0) {
        printf("test_clients: node not installed, client matrix not checked\n");
        return;
    }
    char dir[256];
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
    char *out = NULL;
    if (modules_stale()) {
        int st = run_logged("npm ci --prefix " CLIENTS_DIR " --no-audit --no-fund", dir, "npm.txt", &out);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "npm ci failed:\n%s", tail(out));
        free(out);
    }
    char missing[2048], cmd[4096];
    missing_routes(missing, sizeof missing);
    snprintf(cmd, sizeof cmd,
             "env -u EMBEDD_QDRANT_API_KEY EMBEDD_URL=http://127.0.0.1:%d "
             "EMBEDD_TEST_API_KEY=" API_KEY " EMBEDD_QDRANT_URL=http://127.0.0.1:%d "
             "EMBEDD_MISSING_ROUTES='%s' timeout 120 node --test " CLIENTS_DIR "/",
             g_srv.port, g_keyless.port, missing);
    int st = run_logged(cmd, dir, "node.txt", &out);
    print_summary(out);
    /* the failure message holds only the tail: the whole report goes to
     * stdout, where a failure among the TODO ones can be found */
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        printf("test_clients: node --test output:\n%s\n", out != NULL ? out : "(none)");
    fflush(stdout);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "node --test failed:\n%s", tail(out));
    free(out);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("clients");
    TCase *tc = tcase_create("routes");
    tcase_add_test(tc, test_route_key);
    suite_add_tcase(s, tc);
    tc = tcase_create("matrix");
    tcase_add_unchecked_fixture(tc, setup_matrix, teardown_matrix);
    /* npm ci on a fresh checkout takes most of it */
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_client_matrix);
    suite_add_tcase(s, tc);
    int rc = run_suite(s);
    curl_global_cleanup();
    return rc;
}
