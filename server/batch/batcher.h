/* batcher.h: continuous batching of embedding work onto one compute thread.
 *
 * Design
 *   - HTTP threads parse and tokenise, then submit an emb_job: n sequences
 *     of token ids, back to back. They never touch BLAS.
 *   - One compute thread owns the model's forward pass (and so BLAS). It
 *     loops: take sequences from the front of the queue, across jobs, until
 *     the token budget (max_batch_tokens) is full; pack them without padding;
 *     run one forward pass; copy each vector into its job; call job->done
 *     for every job whose last sequence just finished. There is no fixed
 *     wait: while a pass runs, new jobs queue up and form the next batch.
 *     A job larger than the budget is split across passes.
 *   - Ownership: between batcher_submit and job->done, the job belongs to the
 *     batcher; the submitter must not touch or free it. done runs on the
 *     compute thread and must be short (it resumes an HTTP connection).
 *   - Versions: each job names the model it must run on (versions.h); a
 *     batch only packs jobs of one model, so in-flight work finishes on the
 *     version it started with. All models share one configuration.
 *   - Idle work: when no job waits, the compute thread calls the idle
 *     callback (batcher_set_idle), which does one small piece of background
 *     work (about one layer of a training step) and returns; jobs that
 *     arrive meanwhile run as soon as that piece ends. The callback returns
 *     1 when it has more to do, 0 when idle (the thread then sleeps until a
 *     job arrives, batcher_wake, or idle_poll seconds pass). It starts only
 *     after a short quiet gap (batcher_set_idle_delay).
 *   - Shutdown: batcher_stop lets the thread finish every queued job (each
 *     gets its done call), then joins it. Submissions after stop fail.
 */
#ifndef EMBEDD_BATCHER_H
#define EMBEDD_BATCHER_H

#include <stdint.h>

#include "base/error.h"
#include "bert.h"
#include "common/metrics.h"

typedef struct emb_job emb_job;

struct emb_job {
    /* Filled in by the submitter. */
    int n_seqs;
    const int32_t *ids;        /* all sequences' ids, back to back */
    const int *lens;           /* (n_seqs) */
    float *out;                /* (n_seqs, C): pooled, not normalised */
    const emb_model *model;    /* the model version to run (NULL: the batcher's
                                  default); the submitter keeps it alive until done */
    void (*done)(emb_job *job);
    void *user;

    /* Set by the batcher before done is called, or by a refused
     * batcher_submit. */
    int failed;                /* 1 when the job failed */
    emb_err_kind error_kind;   /* why, for the caller's status: the forward
                                  pass's kind, EMB_ERR_UNAVAILABLE when
                                  stopping (base/error.h) */
    char error[512];

    /* Private to the batcher. */
    int next_seq;              /* first sequence not yet taken */
    long next_tok;             /* its offset into ids */
    int remaining;             /* sequences not yet finished */
    double t_submit;
    int started;
    emb_job *next;
};

typedef struct batcher batcher;

/* Starts the compute thread. The model (the default for jobs without one,
 * and the shape of every model) must outlive the batcher. */
batcher *batcher_start(const emb_model *model, int max_batch_tokens, metrics *mx, emb_err *err);
/* Queues a job. Returns -1 once stopping has begun (error_kind
 * EMB_ERR_UNAVAILABLE) or when n_seqs < 1 (EMB_ERR_INVALID), with failed,
 * error_kind and error set and done not called: the job is the caller's. */
int batcher_submit(batcher *b, emb_job *job);
/* Sets the idle callback (NULL: none); call before any work is queued, or
 * from the compute thread. */
void batcher_set_idle(batcher *b, int (*idle)(void *ctx), void *ctx, double idle_poll);
/* Idle work starts only once no job has arrived or run for this many
 * seconds (default 0.002), so that back-to-back requests, as under heavy
 * load, never wait behind it. */
void batcher_set_idle_delay(batcher *b, double seconds);
/* Wakes a sleeping compute thread so that it calls the idle callback. */
void batcher_wake(batcher *b);
/* Sequences waiting, for /metrics and /info. */
int batcher_queue_depth(batcher *b);
/* Finishes all queued work, stops the thread and frees the batcher. */
void batcher_stop(batcher *b);

#endif
