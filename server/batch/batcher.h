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
 *     BATCHER_IDLE_MORE (1) when it has more to do at once,
 *     BATCHER_IDLE_LATER (0) when it may have work later (the thread sleeps
 *     until a job arrives and ends, batcher_wake, or idle_poll seconds
 *     pass), or BATCHER_IDLE_REST (2) when it has nothing to do until told:
 *     the thread then blocks (no timer, no CPU) until batcher_wake, and
 *     jobs alone do not call it again. It starts only after a short quiet
 *     gap (batcher_set_idle_delay).
 *   - Minimum share (batcher_set_idle_share): under steady load no gap ever
 *     comes, so idle work would starve. The thread measures the wall time
 *     its idle calls take over a sliding window (2 s, its
 *     history halved as it slides); while the callback has work
 *     (MORE, or LATER once idle_poll has passed) and that time is below
 *     share x the window, one idle call runs between two batches, even with
 *     jobs waiting. A job's extra wait is at most one piece of idle work.
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
/* The idle callback's answers (see Idle work above). */
enum { BATCHER_IDLE_LATER = 0, BATCHER_IDLE_MORE = 1, BATCHER_IDLE_REST = 2 };
/* The least share (0..1) of the compute thread's working time that idle
 * work gets while jobs keep coming (default 0: idle work only in gaps). */
void batcher_set_idle_share(batcher *b, double share);
/* Seconds spent in idle calls, and how many of them ran ahead of waiting
 * jobs because of the minimum share (for tests and /metrics). */
void batcher_idle_stats(batcher *b, double *seconds, long *forced);
/* Idle work starts only once no job has arrived or run for this many
 * seconds (default 0.002), so that back-to-back requests, as under heavy
 * load, never wait behind it. */
void batcher_set_idle_delay(batcher *b, double seconds);
/* Wakes a sleeping (or resting) compute thread so that it calls the idle
 * callback. */
void batcher_wake(batcher *b);
/* Sequences waiting, for /metrics and /info. */
int batcher_queue_depth(batcher *b);
/* Finishes all queued work and stops the thread; the batcher stays
 * allocated, so that threads that may still call batcher_wake or
 * batcher_submit (the learner's saving thread, an HTTP thread; a submit
 * then fails as "shutting down") are safe until batcher_stop. */
void batcher_halt(batcher *b);
/* batcher_halt (if not done yet), then frees the batcher. */
void batcher_stop(batcher *b);

#endif
