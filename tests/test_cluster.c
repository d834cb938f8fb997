/* test_cluster.c: issue 18's cluster, process by process, without Docker.
 *
 * The work is in scripts/cluster_test.py (Python 3, standard library, with
 * scripts/cluster_lib.py): it initdb's a throwaway PostgreSQL cluster on a
 * free loopback port, starts three `embedd serve --store postgres://...`
 * replicas and haproxy in front of them, and checks propagation between
 * replicas, kill -9 of a replica under load, kill -9 of the training
 * replica, and a PostgreSQL restart; it prints one line per scenario with
 * its numbers. This suite runs it on the binary under test (EMBEDD_BIN).
 *
 * It fails (it does not skip) when PostgreSQL or haproxy is missing:
 * scripts/install-deps.sh installs both. The Makefile runs it in the plain
 * pass of `make test` only, not in the sanitizer passes (three replicas
 * under ASan on two cores take too long); `make test SANITIZER=address
 * TESTS=cluster` still runs it when asked. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "run_suite.h"

/* cluster_test.py bounds itself (--timeout, killing all it started); the
 * timeout command bounds the script; the TCase bounds the test. */
#define SCRIPT_BOUND 360
#define TCASE_BOUND (SCRIPT_BOUND + 40)

static const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

START_TEST(cluster_scenarios_pass)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "timeout -k 10 %d /usr/bin/python3 scripts/cluster_test.py --binary '%s' --timeout %d",
             SCRIPT_BOUND + 20, embedd_bin(), SCRIPT_BOUND);
    fflush(stdout);
    int status = system(cmd);
    ck_assert_msg(status != -1, "cannot run: %s", cmd);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "a cluster scenario failed (exit status %d); its lines are above: %s",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1, cmd);
}
END_TEST

static Suite *cluster_suite(void)
{
    Suite *s = suite_create("cluster");
    TCase *tc = tcase_create("scenarios");
    tcase_set_timeout(tc, TCASE_BOUND);
    tcase_add_test(tc, cluster_scenarios_pass);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(cluster_suite());
}
