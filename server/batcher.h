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
 *   - Shutdown: batcher_stop lets the thread finish every queued job (each
 *     gets its done call), then joins it. Submissions after stop fail.
 */
#ifndef EMBEDD_BATCHER_H
#define EMBEDD_BATCHER_H

#include <stdint.h>

#include "bert.h"
#include "metrics.h"

typedef struct emb_job emb_job;

struct emb_job {
    /* Filled in by the submitter. */
    int n_seqs;
    const int32_t *ids;        /* all sequences' ids, back to back */
    const int *lens;           /* (n_seqs) */
    float *out;                /* (n_seqs, C): pooled, not normalised */
    void (*done)(emb_job *job);
    void *user;

    /* Set by the batcher before done is called. */
    int failed;                /* 1 when the forward pass failed */
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

/* Starts the compute thread. The model must outlive the batcher. */
batcher *batcher_start(const emb_model *model, int max_batch_tokens, metrics *mx, emb_err *err);
/* Queues a job; returns -1 (job untouched) once stopping has begun or when
 * n_seqs < 1. */
int batcher_submit(batcher *b, emb_job *job);
/* Sequences waiting, for /metrics and /info. */
int batcher_queue_depth(batcher *b);
/* Finishes all queued work, stops the thread and frees the batcher. */
void batcher_stop(batcher *b);

#endif
