/* learner.h: continuous self-supervised fine-tuning inside `embedd serve`:
 * the training scheduler, and the owner of the learning workers.
 *
 * Data flow
 *   HTTP threads offer the texts they see (/embed, /v1/embeddings, /items,
 *   POST /train/samples) to a sample buffer (samples.h): bounded,
 *   de-duplicated, persisted under --data, with a held-out part.
 *   The batcher's compute thread, whenever no request waits, calls
 *   learner_idle, which does one piece of work of about one encoder layer:
 *     1. re-embedding stored items for a newly current version (reembed.h;
 *        first: /similar serves the old version until it is done);
 *     2. a training step (SimCSE and/or MLM on a batch from the buffer),
 *        split into per-layer pieces; after it, AdamW with clipping and
 *        L2-SP, NaN steps skipped, and the serving candidate updated as an
 *        exponential moving average of the trainer's weights;
 *     3. every --publish-every steps (or seconds), the gate: the candidate
 *        and the current version are measured on the held-out texts
 *        (validation loss, collapse statistics, with --eval-sts the STS
 *        Spearman) and gate_decide (gate.h) compares them. A pass saves
 *        DATA/models/v{n} (versions_save, on a helper thread, off the
 *        compute thread) and then hands it over (versions_publish_saved:
 *        current, DATA/models/current, re-embedding); a failure is logged
 *        and counted, and training goes on.
 *   Before the first gradient step with --train-whiten-min-texts texts, and
 *   again each time the buffer has doubled, the whitening stage (stages.h)
 *   refits the whitening module on up to --train-whiten-max-texts buffer
 *   texts and offers it to the gate as a candidate (no validation loss:
 *   the lexical agreement must rise); published, training restarts from it.
 *   The duty cycle of training and gate work is capped at --train-max-cpu
 *   of wall time.
 *
 * Rest and share
 *   Each new text earns --train-max-epochs uses (budget.h); once they are
 *   spent the trainer rests: learner_idle answers BATCHER_IDLE_REST and the
 *   compute thread blocks without a timer until batcher_wake, which new
 *   texts (learner_offer), a resume, a rollback or a finished save send.
 *   Re-embedding still runs first, and a gate due by time still comes.
 *   Under steady load the batcher gives idle work at least
 *   --train-min-share of wall time (batcher_set_idle_share).
 *
 * Ownership
 *   The learner owns the sample buffer, the trainer (emb_trainer, with the
 *   candidate and its EMA weights), the gate's measurements and workspace,
 *   the publish in progress, and the re-embedder (with its own workspace).
 *   It borrows the registry (versions.h: the one owner of DATA/models), the
 *   batcher, the store and the metrics, which all outlive it. learner_start
 *   sets the registry's hooks to itself: on a change of the current version
 *   the re-embedder starts, and failures that undo nothing go to
 *   last_error (/train/status); learner_stop clears them.
 *
 * Threads
 *   learner_idle runs on the compute thread only, and with it every piece
 *   of training, gate and re-embedding work. The saving thread runs
 *   versions_save for one publish at a time; the compute thread joins it.
 *   learner_offer, learner_pause/resume/rollback, learner_status_json,
 *   learner_gauges and learner_flush are safe from any thread. A rollback
 *   (an HTTP thread) makes the version current at once and leaves a note;
 *   the compute thread then resets the trainer (emb_trainer_reset) at its
 *   next idle call, after a save in progress has finished.
 *
 * Shutdown: batcher_stop first (no idle call can be running any more),
 * then learner_stop (clears the hooks, joins the saving thread, flushes
 * the sample buffer, frees the workers); the store and the registry are
 * closed after it (versions_free last). */
#ifndef EMBEDD_LEARNER_H
#define EMBEDD_LEARNER_H

#include <stddef.h>
#include <stdint.h>

#include "batch/batcher.h"
#include "common/metrics.h"
#include "store/collections.h"
#include "store/store.h"
#include "common/strbuf.h"
#include "versions.h"

typedef struct learner_opts {
    int enabled;               /* 0 (--train off): only re-embedding, no intake or training */
    int objective;             /* EMB_OBJ_* */
    int batch_size;            /* texts per step */
    int max_seq_len;           /* tokens per training text */
    float lr;
    float l2sp;                /* pull toward the starting weights */
    float ema_decay;           /* serving weights: EMA of the trainer's */
    float max_cpu;             /* share of wall time for training work */
    int publish_every_steps;   /* 0: by time only */
    double publish_every_secs; /* 0: by steps only */
    int min_samples;           /* training texts needed before the first step */
    int holdout_eval_max;      /* held-out texts the gate uses */
    const char *eval_sts;      /* optional score<TAB>s1<TAB>s2 gate file */
    float gate_tolerance;      /* largest Spearman x100 drop allowed */
    float collapse_max_cos;    /* alarm above this mean pairwise cosine ... */
    float collapse_cos_rise;   /* ... that also rose this much over the current's */
    float collapse_min_var;    /* alarm below this share of the current's variance */
    int gate_lex;              /* the gate checks agreement with TF-IDF (gate.h) */
    float gate_lex_tolerance;  /* largest lexical agreement x100 drop allowed */
    float gate_lex_gain;       /* rise a stage without a loss (whitening) must show */
    int whiten;                /* the whitening stage (stages.h) runs */
    float whiten_shrink;       /* its eigenvalue shrinkage */
    int whiten_min_texts;      /* training texts before the first refit */
    int whiten_max_texts;      /* texts one refit embeds */
    int from_embed, from_items, from_explicit; /* intake sources */
    int paused;                /* start paused */
    int max_epochs;            /* uses each new text earns before the trainer rests
                                  (budget.h); 0: no limit */
    int persist_samples;       /* 0: the sample buffer stays in memory (no samples.log) */
    const char *data_dir;      /* NULL: nothing persisted */
    const char *base_dir;      /* directory of version 1 (tokenizer files, MLM head) */
    const emb_model *base;     /* version 1's weights: the L2-SP anchor */
    uint64_t seed;
    int nan_every;             /* testing: force a NaN loss every n-th step (0: never) */
    collections *collections;  /* borrowed, may be NULL: the named collections the
                                  re-embedder moves too (reembed.h) */
} learner_opts;

typedef struct learner learner;

/* Starts the re-embedder, hooks it to v, and aligns the store with the
 * current version (versions_align: a restart may find it searching an
 * older one); with o->enabled also the buffer, the trainer and the gate.
 * st may be NULL (nothing to re-embed). NULL with err. */
learner *learner_start(const learner_opts *o, versions *v, batcher *b, store *st, metrics *mx,
                       emb_err *err);
/* Flushes the sample buffer and frees; the batcher must be stopped. */
void learner_stop(learner *l);

/* The compute thread's idle work (batcher_set_idle). */
int learner_idle(void *ctx);

/* A text seen by the server (source: enum samples_source). */
/* Replicas (cluster/cluster.h): only the replica that holds the trainer's
 * lock trains and re-embeds. Every replica, that one included, hands the
 * texts it would learn from to forward (any thread); the cluster queues
 * them in PostgreSQL and the trainer's replica feeds them back with
 * learner_add_sample, so a new trainer can take up the recent ones.
 * leader is asked on the compute thread; when it turns true, training
 * restarts from the current version (the newest one the cluster
 * published). */
typedef struct learner_cluster {
    void *ctx;
    int (*leader)(void *ctx);
    void (*forward)(void *ctx, const char *text, size_t len, int source);
    /* the number for the next version, above latest and above any the
     * cluster handed out before; 0 with err when none can be had now (the
     * publish is skipped) */
    uint32_t (*next_version)(void *ctx, uint32_t latest, emb_err *err);
} learner_cluster;
void learner_set_cluster(learner *l, const learner_cluster *c);
/* A text for the sample buffer as it is (learner_offer's sources already
 * chose it); any thread. */
void learner_add_sample(learner *l, const char *text, size_t len, int source);

void learner_offer(learner *l, const char *text, size_t len, int source);
/* Texts from POST /train/samples: how many were new. */
int learner_offer_explicit(learner *l, const char *const *texts, const size_t *lens, int n);

/* 0 when started with enabled = 0. */
int learner_enabled(const learner *l);
void learner_pause(learner *l);
void learner_resume(learner *l);
/* Makes version `id` current again (versions_rollback: from memory or
 * DATA/models/v{id}; re-embedding starts) and restarts training from it.
 * 0, or -1 with err: EMB_ERR_NOT_FOUND when the version is unknown, else
 * the failure's own kind (I/O, no memory, ...). */
int learner_rollback(learner *l, uint32_t id, emb_err *err);

/* The state for GET /train/status, as a JSON object. */
void learner_status_json(learner *l, strbuf *out);
/* The learning curve for GET /train/history, as a JSON object: the last
 * 1000 training steps (time, step, losses) and the last 64 gate decisions
 * with their numbers, oldest first. l may be NULL (training off). */
void learner_history_json(learner *l, strbuf *out);
/* Training texts in the buffer, and whether training is paused. */
void learner_gauges(learner *l, unsigned long *buffer, int *paused);
/* Flushes the sample buffer to disk (the server calls it periodically). */
void learner_flush(learner *l);

#endif
