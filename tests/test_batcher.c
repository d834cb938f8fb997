/* test_batcher.c: the continuous batcher on its own: many submitting
 * threads, jobs larger than one pass, and draining on stop. Each job's
 * vectors must equal the same texts embedded alone. Run under
 * SANITIZER=thread with OMP_NUM_THREADS=1 for the race check. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "run_suite.h"
#include "batch/batcher.h"
#include "bert.h"

#define N_THREADS 8
#define JOBS_PER_THREAD 12

static emb_model *model;
static const char *sentences[] = {
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Two dogs run across a snowy field while the sun sets behind the hills.",
    "Hello!",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "caf\xc3\xa9",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
};
#define N_SENT ((int)(sizeof sentences / sizeof sentences[0]))

#define MAX_SEQS 64

typedef struct test_job {
    emb_job job;
    int32_t ids[MAX_SEQS * 64];
    int lens[MAX_SEQS];
    float out[MAX_SEQS * 64];
    int which[MAX_SEQS];
    atomic_int done;
} test_job;

static float reference[N_SENT][64];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void on_done(emb_job *job)
{
    test_job *tj = job->user;
    atomic_store(&tj->done, 1);
}

/* Fills a job with n sentences starting at `first`. */
static void make_job(test_job *tj, int first, int n)
{
    memset(tj, 0, sizeof *tj);
    long off = 0;
    for (int i = 0; i < n; i++) {
        int s = (first + i) % N_SENT;
        tj->which[i] = s;
        tj->lens[i] = emb_encode(model->tok, sentences[s], strlen(sentences[s]), 64, 0,
                                 tj->ids + off, NULL);
        off += tj->lens[i];
    }
    tj->job.n_seqs = n;
    tj->job.ids = tj->ids;
    tj->job.lens = tj->lens;
    tj->job.out = tj->out;
    tj->job.done = on_done;
    tj->job.user = tj;
}

static void check_job(const test_job *tj)
{
    const int C = model->cfg.hidden_size;
    ck_assert(!tj->job.failed);
    for (int i = 0; i < tj->job.n_seqs; i++) {
        for (int c = 0; c < C; c++) {
            float got = tj->out[i * C + c];
            float want = reference[tj->which[i]][c];
            ck_assert_msg(fabsf(got - want) <= 1e-5f, "sentence %d dim %d: %g vs %g",
                          tj->which[i], c, got, want);
        }
    }
}

static void setup(void)
{
    emb_err err;
    model = emb_model_load("tests/fixtures/tiny-f16", &err);
    ck_assert_msg(model != NULL, "%s", err.msg);
    emb_workspace *ws = emb_workspace_new(model, 4096, &err);
    ck_assert(ws != NULL);
    for (int s = 0; s < N_SENT; s++) {
        int32_t ids[64];
        int len = emb_encode(model->tok, sentences[s], strlen(sentences[s]), 64, 0, ids, NULL);
        ck_assert(emb_embed_ids(model, ws, ids, &len, 1, model->cfg.pooling, 0, reference[s],
                                &err) == 0);
    }
    emb_workspace_free(ws);
}

static void teardown(void)
{
    emb_model_free(model);
}

typedef struct submitter {
    batcher *b;
    int index;
    test_job *jobs;
} submitter;

static void *submit_main(void *arg)
{
    submitter *sub = arg;
    for (int j = 0; j < JOBS_PER_THREAD; j++) {
        test_job *tj = &sub->jobs[j];
        make_job(tj, sub->index + j, 1 + (sub->index + j) % N_SENT);
        ck_assert(batcher_submit(sub->b, &tj->job) == 0);
        if (j % 3 == 0)
            usleep(100);
    }
    return NULL;
}

START_TEST(test_many_submitters)
{
    emb_err err;
    metrics *mx = metrics_new();
    batcher *b = batcher_start(model, 256, mx, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    pthread_t threads[N_THREADS];
    submitter subs[N_THREADS];
    test_job *jobs = calloc(N_THREADS * JOBS_PER_THREAD, sizeof(test_job));
    for (int t = 0; t < N_THREADS; t++) {
        subs[t].b = b;
        subs[t].index = t;
        subs[t].jobs = jobs + t * JOBS_PER_THREAD;
        pthread_create(&threads[t], NULL, submit_main, &subs[t]);
    }
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(threads[t], NULL);
    batcher_stop(b); /* drains: every job must be done afterwards */
    for (int j = 0; j < N_THREADS * JOBS_PER_THREAD; j++) {
        ck_assert_msg(atomic_load(&jobs[j].done), "job %d not finished after stop", j);
        check_job(&jobs[j]);
    }
    char *text = metrics_render(mx);
    ck_assert(strstr(text, "embedd_batches_total") != NULL);
    free(text);
    free(jobs);
    metrics_free(mx);
}
END_TEST

/* A job bigger than the token budget is split over several passes. */
START_TEST(test_split_large_job)
{
    emb_err err;
    metrics *mx = metrics_new();
    const int budget = model->cfg.max_seq_length; /* the smallest budget allowed */
    batcher *b = batcher_start(model, budget, mx, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    test_job *big = calloc(1, sizeof *big);
    make_job(big, 0, MAX_SEQS); /* every sentence 8 times */
    long total = 0;
    for (int i = 0; i < MAX_SEQS; i++)
        total += big->lens[i];
    ck_assert_msg(total > 2 * budget, "job of %ld tokens is too small for the test", total);
    ck_assert(batcher_submit(b, &big->job) == 0);
    batcher_stop(b);
    ck_assert(atomic_load(&big->done));
    check_job(big);
    char *text = metrics_render(mx);
    unsigned long passes = 0;
    const char *p = strstr(text, "\nembedd_batches_total ");
    ck_assert(p != NULL);
    passes = strtoul(p + strlen("\nembedd_batches_total "), NULL, 10);
    ck_assert_msg(passes >= 3, "job of %ld tokens ran in %lu passes of %d", total, passes,
                  budget);
    free(text);
    free(big);
    metrics_free(mx);
}
END_TEST

START_TEST(test_submit_after_stop_fails)
{
    emb_err err;
    metrics *mx = metrics_new();
    batcher *b = batcher_start(model, 1024, mx, &err);
    ck_assert(b != NULL);
    test_job *tj = calloc(1, sizeof *tj);
    make_job(tj, 0, 0);
    ck_assert_int_eq(batcher_submit(b, &tj->job), -1); /* zero sequences */
    batcher_stop(b);
    free(tj);
    metrics_free(mx);
}
END_TEST

START_TEST(test_budget_below_max_len_rejected)
{
    emb_err err = {0};
    metrics *mx = metrics_new();
    ck_assert(batcher_start(model, 8, mx, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "max_seq_length") != NULL, "%s", err.msg);
    metrics_free(mx);
}
END_TEST


/* ---- idle work: rest and minimum share ---------------------------------------- */

typedef struct idle_probe {
    atomic_int calls;
    atomic_int answer;          /* what the callback returns */
    int work_us;                /* each call's wall time */
} idle_probe;

static int probe_idle(void *ctx)
{
    idle_probe *p = ctx;
    atomic_fetch_add(&p->calls, 1);
    if (p->work_us > 0)
        usleep((useconds_t)p->work_us);
    return atomic_load(&p->answer);
}

static void run_one_job(batcher *b)
{
    test_job *tj = calloc(1, sizeof *tj);
    make_job(tj, 0, 2);
    ck_assert(batcher_submit(b, &tj->job) == 0);
    while (!atomic_load(&tj->done))
        usleep(1000);
    check_job(tj);
    free(tj);
}

/* A callback that answers REST is not called again, neither by time nor
 * after jobs, until batcher_wake; one that answers LATER is polled. */
START_TEST(test_idle_rest_until_woken)
{
    emb_err err;
    metrics *mx = metrics_new();
    batcher *b = batcher_start(model, 1024, mx, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    idle_probe p = {.work_us = 0};
    atomic_init(&p.calls, 0);
    atomic_init(&p.answer, BATCHER_IDLE_REST);
    batcher_set_idle(b, probe_idle, &p, 0.02);
    usleep(300000);
    ck_assert_int_eq(atomic_load(&p.calls), 1);
    run_one_job(b);
    usleep(200000);
    ck_assert_int_eq(atomic_load(&p.calls), 1);
    batcher_wake(b);
    usleep(200000);
    ck_assert_int_eq(atomic_load(&p.calls), 2);
    atomic_store(&p.answer, BATCHER_IDLE_LATER);
    batcher_wake(b);
    usleep(300000);
    int polled = atomic_load(&p.calls);
    ck_assert_msg(polled >= 6, "LATER polled %d times in 0.3 s at 0.02 s", polled - 2);
    atomic_store(&p.answer, BATCHER_IDLE_REST);
    batcher_stop(b);
    metrics_free(mx);
}
END_TEST

/* Under a backlog that never empties, idle work runs only with a minimum
 * share, and then takes about that share of the wall time. */
static void backlog_with_share(double share, double *busy_share, long *forced)
{
    emb_err err;
    metrics *mx = metrics_new();
    batcher *b = batcher_start(model, model->cfg.max_seq_length, mx, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    idle_probe p = {.work_us = 0};
    atomic_init(&p.calls, 0);
    batcher_set_idle_delay(b, 0.05); /* no gaps: the backlog is queued at once */
    batcher_set_idle_share(b, share);
    enum { N_JOBS = 40 };
    test_job *jobs = calloc(N_JOBS, sizeof *jobs);
    atomic_store(&p.answer, BATCHER_IDLE_LATER);
    batcher_set_idle(b, probe_idle, &p, 0.001);
    usleep(100000);
    for (int j = 0; j < N_JOBS; j++)
        make_job(&jobs[j], j, MAX_SEQS);
    atomic_store(&p.answer, BATCHER_IDLE_REST);
    batcher_wake(b);
    usleep(50000);
    p.work_us = 2000;          /* read by the compute thread after the wake below */
    /* Queue the backlog first, then let the idle work in: idle time spent
     * while the queue is still empty would not be the share under load. */
    double t0 = now_s();
    for (int j = 0; j < N_JOBS; j++)
        ck_assert(batcher_submit(b, &jobs[j].job) == 0);
    double s0;
    long f0;
    batcher_idle_stats(b, &s0, &f0);
    atomic_store(&p.answer, BATCHER_IDLE_MORE);
    batcher_wake(b);
    for (int j = 0; j < N_JOBS; j++)
        while (!atomic_load(&jobs[j].done))
            usleep(200);
    double t = now_s() - t0;
    double s1;
    batcher_idle_stats(b, &s1, forced);
    for (int j = 0; j < N_JOBS; j++)
        check_job(&jobs[j]);
    *forced -= f0;
    *busy_share = (s1 - s0) / t;
    atomic_store(&p.answer, BATCHER_IDLE_REST);
    batcher_stop(b);
    free(jobs);
    metrics_free(mx);
}

START_TEST(test_idle_min_share_under_backlog)
{
    double busy;
    long forced;
    backlog_with_share(0, &busy, &forced);
    ck_assert_msg(forced == 0, "share 0: %ld idle calls ran ahead of jobs", forced);
    backlog_with_share(0.3, &busy, &forced);
    ck_assert_msg(forced >= 5, "share 0.3: only %ld idle calls ran ahead of jobs", forced);
    ck_assert_msg(busy > 0.1 && busy < 0.6, "share 0.3: idle work took %.2f of the time",
                  busy);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("batcher");
    TCase *tc = tcase_create("batcher");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_many_submitters);
    tcase_add_test(tc, test_split_large_job);
    tcase_add_test(tc, test_submit_after_stop_fails);
    tcase_add_test(tc, test_budget_below_max_len_rejected);
    suite_add_tcase(s, tc);
    TCase *idle = tcase_create("idle");
    tcase_add_checked_fixture(idle, setup, teardown);
    tcase_set_timeout(idle, 120);
    tcase_add_test(idle, test_idle_rest_until_woken);
    tcase_add_test(idle, test_idle_min_share_under_backlog);
    suite_add_tcase(s, idle);
    return run_suite(s);
}
