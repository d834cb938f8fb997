/* test_browser.c: runs the browser test of the web console and /docs,
 * tests/browser/console.test.mjs (node --test, playwright-core driving
 * Debian's chromium), which starts the real server itself. Installs the
 * npm package first (npm ci) when node_modules is missing. Skips, saying
 * why, when node or chromium is absent (scripts/install-deps.sh installs
 * chromium). Run from the repository root, as `make test` does. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "run_suite.h"
#include "testutil.h"
/* after testutil.h: its tu_read_file has a local named buf */
#include "serverproc.h"

#define BROWSER_DIR "tests/browser"

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
    TCase *tc = tcase_create("browser");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_console_and_docs_in_chromium);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
