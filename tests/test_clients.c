/* test_clients.c: the client matrix (tests/clients, `node --test`) against
 * the real server: the openai SDK, @langchain/openai, @huggingface/inference
 * and LangChain's HuggingFaceInferenceEmbeddings at the base URL, and
 * @qdrant/js-client-rest, each unchanged.
 *
 * The unchecked fixture starts a learning-off server with a memory store and
 * --api-key (the OpenAI and TEI clients send it as Authorization: Bearer,
 * the Qdrant client as "api-key: KEY"; see docs/clients.md).
 * The test runs `npm ci --prefix tests/clients` when node_modules is missing
 * or older than the lock file, then `node --test tests/clients/`, and fails
 * with the tail of node's output. Without node it prints why and passes. */
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

/* ======================================================================== */
/* TCase matrix: node --test tests/clients/                                 */
/* ======================================================================== */

static void setup_matrix(void)
{
    const char *args[] = {"--api-key", API_KEY, "--train=false", NULL};
    fixture_start(args);
}

static void teardown_matrix(void)
{
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
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "EMBEDD_URL=http://127.0.0.1:%d EMBEDD_TEST_API_KEY=" API_KEY
             " EMBEDD_QDRANT_API_KEY=" API_KEY " timeout 120 node --test " CLIENTS_DIR "/",
             g_srv.port);
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
    TCase *tc = tcase_create("matrix");
    tcase_add_unchecked_fixture(tc, setup_matrix, teardown_matrix);
    /* npm ci on a fresh checkout takes most of it */
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_client_matrix);
    suite_add_tcase(s, tc);
    int rc = run_suite(s);
    curl_global_cleanup();
    return rc;
}
