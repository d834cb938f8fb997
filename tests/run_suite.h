/* run_suite.h: the common end of every Check suite's main(). */
#ifndef EMBEDD_RUN_SUITE_H
#define EMBEDD_RUN_SUITE_H

#include <check.h>

/* Runs every test of s and returns the process exit status: 0 when all
 * passed. */
static inline int run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

#endif
