/* test_pool.c: emb_pool_run (model/pool.c): every task runs exactly once,
 * job after job, whatever the task count; a second caller while a job runs
 * gets its tasks done on its own thread; helpers do take part; and the
 * degenerate cases. Also run under ThreadSanitizer (make check). */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "run_suite.h"
#include "pool.h"

#define MAX_TASKS 512

typedef struct counts {
    atomic_int ran[MAX_TASKS];
    atomic_int calls;
} counts;

static void count_task(void *arg, int task)
{
    counts *c = arg;
    atomic_fetch_add(&c->ran[task], 1);
    atomic_fetch_add(&c->calls, 1);
}

static void check_job(int threads, int n)
{
    counts *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    emb_pool_run(threads, n, count_task, c);
    ck_assert_int_eq(atomic_load(&c->calls), n);
    for (int t = 0; t < n; t++)
        ck_assert_msg(atomic_load(&c->ran[t]) == 1, "threads %d, %d tasks: task %d ran %d times",
                      threads, n, t, atomic_load(&c->ran[t]));
    free(c);
}

/* Thousands of jobs back to back, of every size from 0 up: each task once. */
START_TEST(test_every_task_once)
{
    unsigned seed = 11;
    for (int job = 0; job < 3000; job++) {
        int n = job < MAX_TASKS ? job : rand_r(&seed) % (MAX_TASKS + 1);
        check_job(job % 3 == 0 ? 4 : 2, n);
    }
}
END_TEST

START_TEST(test_one_thread)
{
    check_job(1, 100);
    check_job(0, 5);
    check_job(-3, 5);
    check_job(2, 0);
    check_job(2, 1);
}
END_TEST

/* Two threads call at once, many times: one of them finds the pool busy and
 * runs alone; every job is still complete. */
static void *caller_main(void *arg)
{
    (void)arg;
    for (int job = 0; job < 1500; job++)
        check_job(2, 1 + job % 97);
    return NULL;
}

START_TEST(test_concurrent_callers)
{
    pthread_t a, b;
    ck_assert_int_eq(pthread_create(&a, NULL, caller_main, NULL), 0);
    ck_assert_int_eq(pthread_create(&b, NULL, caller_main, NULL), 0);
    ck_assert_int_eq(pthread_join(a, NULL), 0);
    ck_assert_int_eq(pthread_join(b, NULL), 0);
}
END_TEST

/* A task that takes a few microseconds and notes which thread ran it. */
typedef struct who {
    pthread_t caller;
    atomic_int by_helper;
} who;

static void who_task(void *arg, int task)
{
    who *w = arg;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t1);
    while ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 2000);
    if (!pthread_equal(pthread_self(), w->caller))
        atomic_fetch_add(&w->by_helper, 1);
    (void)task;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

/* With two threads a helper takes some of the tasks (given time: on a busy
 * host the pool runs jobs alone for a while after a stall). With one, the
 * caller runs them all. */
START_TEST(test_helpers_take_part)
{
    who w = {.caller = pthread_self()};
    for (int job = 0; job < 20; job++)
        emb_pool_run(1, 32, who_task, &w);
    ck_assert_int_eq(atomic_load(&w.by_helper), 0);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&w.by_helper) == 0 && seconds_since(&t0) < 20.0)
        emb_pool_run(2, 32, who_task, &w);
    ck_assert_int_gt(atomic_load(&w.by_helper), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_every_task_once);
    tcase_add_test(tc, test_one_thread);
    tcase_add_test(tc, test_concurrent_callers);
    tcase_add_test(tc, test_helpers_take_part);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
