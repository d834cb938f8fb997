/* test_readme.c: every command in README.md, run as a user would run it.
 *
 * The work is in scripts/readme_test.py (Python 3, standard library): it
 * extracts the README's ```sh blocks, starts `embedd serve` on a free
 * loopback port, runs each command against it and checks the output the
 * README shows (docs/development.md, "The README test", has the
 * conventions). This suite runs it on the binary under test (EMBEDD_BIN,
 * so the sanitizer builds run it too), so that `make test` and
 * `make check` fail when a README command breaks. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "run_suite.h"

static const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

START_TEST(readme_commands_work)
{
    char cmd[1024];
    /* timeout: the script bounds each command itself; this bounds the whole. */
    snprintf(cmd, sizeof cmd, "timeout 110 /usr/bin/python3 scripts/readme_test.py --binary '%s'", embedd_bin());
    int status = system(cmd);
    ck_assert_msg(status != -1, "cannot run: %s", cmd);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "a README command failed (exit status %d); its output is above: %s",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1, cmd);
}
END_TEST

static Suite *readme_suite(void)
{
    Suite *s = suite_create("readme");
    TCase *tc = tcase_create("commands");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, readme_commands_work);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(readme_suite());
}
