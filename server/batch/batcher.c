/* batcher.c: see batcher.h for the design. */
#include "common/clock.h"
#include "batcher.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bert.h"

#define IDLE_SHARE_WINDOW 2.0 /* seconds over which the idle share is measured */

typedef struct slice {
    emb_job *job;
    int first, count;          /* sequences job->first .. first+count-1 */
} slice;

struct batcher {
    const emb_model *model;
    metrics *mx;
    int max_tokens;

    pthread_mutex_t lock;
    pthread_cond_t wake;
    emb_job *head, *tail;      /* jobs with sequences not yet taken */
    int queued_seqs;
    int stopping;
    int halted;                /* batcher_halt joined the thread */
    int woken;                 /* batcher_wake since the last idle call */
    pthread_t thread;
    int (*idle)(void *ctx);
    void *idle_ctx;
    double idle_poll;
    double idle_delay;
    double last_busy;          /* mono time of the last job arrival or batch end */
    double idle_at;            /* mono time the idle callback is due: 0 now,
                                  INFINITY only after batcher_wake (it rests) */
    double idle_share;         /* least share of wall time for idle work */
    double share_start, share_busy; /* the share's window and idle seconds in it */
    double share_total;        /* seconds of work (batches and idle calls) in it */
    double idle_seconds;       /* all idle calls, for batcher_idle_stats */
    long forced;               /* idle calls run ahead of waiting jobs */

    /* Compute thread only. */
    emb_workspace *ws;
    int32_t *ids;              /* (max_tokens) */
    int *lens;                 /* (max_tokens) */
    float *out;                /* (max_tokens, C) */
    slice *slices;             /* (max_tokens) */
};

static const emb_model *job_model(const batcher *b, const emb_job *job)
{
    return job->model != NULL ? job->model : b->model;
}

/* Takes sequences from the queue until the token budget is full, from jobs
 * of one model (the first job's). Called with the lock held. Returns the
 * number of slices; fills the packed ids and *model. */
static int take_batch(batcher *b, int *n_seqs, int *n_tokens, const emb_model **model)
{
    int ns = 0, nt = 0, nsl = 0;
    double t = mono_seconds();
    *model = job_model(b, b->head);
    while (b->head != NULL && job_model(b, b->head) == *model) {
        emb_job *job = b->head;
        int first = job->next_seq;
        while (job->next_seq < job->n_seqs) {
            int len = job->lens[job->next_seq];
            if (nt + len > b->max_tokens && ns > 0)
                break;
            memcpy(b->ids + nt, job->ids + job->next_tok, sizeof(int32_t) * (size_t)len);
            b->lens[ns] = len;
            ns++;
            nt += len;
            job->next_tok += len;
            job->next_seq++;
        }
        if (job->next_seq > first) {
            b->slices[nsl].job = job;
            b->slices[nsl].first = first;
            b->slices[nsl].count = job->next_seq - first;
            nsl++;
            b->queued_seqs -= job->next_seq - first;
            if (!job->started) {
                job->started = 1;
                metrics_queue_time(b->mx, t - job->t_submit);
            }
        }
        if (job->next_seq < job->n_seqs)
            break;             /* budget full inside this job */
        b->head = job->next;
        if (b->head == NULL)
            b->tail = NULL;
    }
    *n_seqs = ns;
    *n_tokens = nt;
    return nsl;
}

static void run_batch(batcher *b, const emb_model *model, int n_slices, int n_seqs,
                      int n_tokens)
{
    const int C = emb_model_dim(model);
    emb_err err;
    double t0 = mono_seconds();
    int rc = emb_embed_ids(model, b->ws, b->ids, b->lens, n_seqs, model->cfg.pooling, 0, b->out,
                           &err);
    metrics_batch(b->mx, n_seqs, n_tokens, mono_seconds() - t0);
    int row = 0;
    for (int i = 0; i < n_slices; i++) {
        slice *sl = &b->slices[i];
        emb_job *job = sl->job;
        if (rc == 0) {
            memcpy(job->out + (long)sl->first * C, b->out + (long)row * C,
                   sizeof(float) * (size_t)sl->count * C);
        } else {
            job->failed = 1;
            job->error_kind = err.kind;
            snprintf(job->error, sizeof job->error, "%s", err.msg);
        }
        row += sl->count;
        job->remaining -= sl->count;
        if (job->remaining == 0)
            job->done(job);
    }
    if (rc == 0)
        metrics_embedded(b->mx, n_seqs, n_tokens);
}

/* Waits on the wake condition for at most `seconds`. Lock held. */
static void wait_until(batcher *b, double seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double s = until.tv_sec + until.tv_nsec * 1e-9 + seconds;
    until.tv_sec = (time_t)s;
    until.tv_nsec = (long)((s - (double)until.tv_sec) * 1e9);
    pthread_cond_timedwait(&b->wake, &b->lock, &until);
}

/* Slides the share's window to end at now, halving the history for each
 * half window passed (so that the share is smooth). Lock held. */
static void share_slide(batcher *b, double now)
{
    if (now - b->share_start > 20 * IDLE_SHARE_WINDOW) {
        b->share_busy = 0;     /* a long quiet time: nothing of it counts */
        b->share_total = 0;
        b->share_start = now - IDLE_SHARE_WINDOW * 0.5;
    }
    while (now - b->share_start > IDLE_SHARE_WINDOW) {
        b->share_busy *= 0.5;
        b->share_total *= 0.5;
        b->share_start += IDLE_SHARE_WINDOW * 0.5;
    }
}

/* 1 when idle work is owed its minimum share now: of the compute
 * thread's working time in the window (batches and idle calls; time with
 * nothing to do does not count, so a quiet spell builds no debt), idle
 * calls had less than the share. Lock held. */
static int share_owed(batcher *b, double now)
{
    if (b->idle_share <= 0)
        return 0;
    share_slide(b, now);
    return b->share_busy <= b->idle_share * b->share_total;
}

/* One idle call, unlocked; its answer decides when the next is due. Lock
 * held on entry and exit. */
static void run_idle(batcher *b)
{
    b->woken = 0;
    pthread_mutex_unlock(&b->lock);
    double t0 = mono_seconds();
    int rc = b->idle(b->idle_ctx);
    double t1 = mono_seconds();
    pthread_mutex_lock(&b->lock);
    share_slide(b, t1);
    b->share_busy += t1 - t0;
    b->share_total += t1 - t0;
    b->idle_seconds += t1 - t0;
    if (rc == BATCHER_IDLE_MORE)
        b->idle_at = 0;
    else if (rc == BATCHER_IDLE_REST)
        b->idle_at = INFINITY;
    else
        b->idle_at = t1 + b->idle_poll;
    if (b->woken)
        b->idle_at = 0;        /* woken during the call */
}

static void *compute_main(void *arg)
{
    batcher *b = arg;
    pthread_mutex_lock(&b->lock);
    for (;;) {
        if (b->head == NULL && b->stopping)
            break;
        double now = mono_seconds();
        int due = b->idle != NULL && (b->woken || now >= b->idle_at);
        if (b->head != NULL && due && share_owed(b, now)) {
            b->forced++;
            run_idle(b);       /* one piece ahead of the waiting jobs */
            continue;
        }
        if (b->head == NULL && due) {
            double quiet = now - b->last_busy;
            if (quiet < b->idle_delay) {
                wait_until(b, b->idle_delay - quiet);
                continue;
            }
            run_idle(b);
            continue;
        }
        if (b->head == NULL) {
            if (b->idle != NULL && isfinite(b->idle_at))
                wait_until(b, b->idle_at - now);
            else
                pthread_cond_wait(&b->wake, &b->lock); /* no idle work: rest */
            continue;
        }
        int n_seqs = 0, n_tokens = 0;
        const emb_model *model;
        int n_slices = take_batch(b, &n_seqs, &n_tokens, &model);
        metrics_queue_depth(b->mx, b->queued_seqs);
        pthread_mutex_unlock(&b->lock);
        double t0 = mono_seconds();
        run_batch(b, model, n_slices, n_seqs, n_tokens);
        pthread_mutex_lock(&b->lock);
        b->last_busy = mono_seconds();
        share_slide(b, b->last_busy);
        b->share_total += b->last_busy - t0;
        if (isfinite(b->idle_at))
            b->idle_at = 0;    /* a waiting callback is asked again after the gap */
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

static void batcher_free(batcher *b)
{
    emb_workspace_free(b->ws);
    free(b->ids);
    free(b->lens);
    free(b->out);
    free(b->slices);
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->wake);
    free(b);
}

batcher *batcher_start(const emb_model *model, int max_batch_tokens, metrics *mx, emb_err *err)
{
    if (max_batch_tokens < model->cfg.max_seq_length) {
        emb_fail(err, "max batch tokens (%d) must be at least the model's max_seq_length (%d)",
                 max_batch_tokens, model->cfg.max_seq_length);
        return NULL;
    }
    batcher *b = calloc(1, sizeof *b);
    if (b == NULL) {
        emb_fail(err, "out of memory");
        return NULL;
    }
    b->model = model;
    b->mx = mx;
    b->max_tokens = max_batch_tokens;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->wake, NULL);
    size_t n = (size_t)max_batch_tokens;
    b->ids = malloc(sizeof(int32_t) * n);
    b->lens = malloc(sizeof(int) * n);
    b->out = malloc(sizeof(float) * n * (size_t)emb_model_dim(model));
    b->slices = malloc(sizeof(slice) * n);
    b->ws = emb_workspace_new(model, max_batch_tokens, err);
    if (b->ids == NULL || b->lens == NULL || b->out == NULL || b->slices == NULL ||
        b->ws == NULL) {
        if (b->ws != NULL)
            emb_fail(err, "out of memory for a batch of %d tokens", max_batch_tokens);
        batcher_free(b);
        return NULL;
    }
    if (pthread_create(&b->thread, NULL, compute_main, b) != 0) {
        emb_fail(err, "cannot start the compute thread");
        batcher_free(b);
        return NULL;
    }
    return b;
}

/* Marks job refused; returns -1. */
static int refuse(emb_job *job, emb_err_kind kind, const char *msg)
{
    job->failed = 1;
    job->error_kind = kind;
    snprintf(job->error, sizeof job->error, "%s", msg);
    return -1;
}

int batcher_submit(batcher *b, emb_job *job)
{
    if (job->n_seqs < 1)
        return refuse(job, EMB_ERR_INVALID, "a job needs at least one sequence");
    job->failed = 0;
    job->error_kind = EMB_ERR_FAILED;
    job->error[0] = '\0';
    job->next_seq = 0;
    job->next_tok = 0;
    job->remaining = job->n_seqs;
    job->started = 0;
    job->next = NULL;
    job->t_submit = mono_seconds();
    pthread_mutex_lock(&b->lock);
    if (b->stopping) {
        pthread_mutex_unlock(&b->lock);
        return refuse(job, EMB_ERR_UNAVAILABLE, "server is shutting down");
    }
    if (b->tail != NULL)
        b->tail->next = job;
    else
        b->head = job;
    b->tail = job;
    b->queued_seqs += job->n_seqs;
    b->last_busy = mono_seconds();
    metrics_queue_depth(b->mx, b->queued_seqs);
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->lock);
    return 0;
}

void batcher_set_idle(batcher *b, int (*idle)(void *ctx), void *ctx, double idle_poll)
{
    pthread_mutex_lock(&b->lock);
    b->idle = idle;
    b->idle_ctx = ctx;
    b->idle_poll = idle_poll > 0 ? idle_poll : 0.25;
    if (b->idle_delay == 0)
        b->idle_delay = 0.002;
    b->idle_at = 0;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->lock);
}

void batcher_set_idle_delay(batcher *b, double seconds)
{
    pthread_mutex_lock(&b->lock);
    b->idle_delay = seconds;
    pthread_mutex_unlock(&b->lock);
}

void batcher_set_idle_share(batcher *b, double share)
{
    pthread_mutex_lock(&b->lock);
    b->idle_share = share > 0 ? (share < 1 ? share : 1) : 0;
    b->share_start = mono_seconds();
    b->share_busy = 0;
    b->share_total = 0;
    pthread_mutex_unlock(&b->lock);
}

void batcher_idle_stats(batcher *b, double *seconds, long *forced)
{
    pthread_mutex_lock(&b->lock);
    *seconds = b->idle_seconds;
    *forced = b->forced;
    pthread_mutex_unlock(&b->lock);
}

void batcher_wake(batcher *b)
{
    pthread_mutex_lock(&b->lock);
    b->woken = 1;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->lock);
}

int batcher_queue_depth(batcher *b)
{
    pthread_mutex_lock(&b->lock);
    int n = b->queued_seqs;
    pthread_mutex_unlock(&b->lock);
    return n;
}

void batcher_halt(batcher *b)
{
    if (b == NULL || b->halted)
        return;
    pthread_mutex_lock(&b->lock);
    b->stopping = 1;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->lock);
    pthread_join(b->thread, NULL);
    b->halted = 1;
}

void batcher_stop(batcher *b)
{
    if (b == NULL)
        return;
    batcher_halt(b);
    batcher_free(b);
}
