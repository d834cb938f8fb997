/* learner.c: see learner.h for the data flow.
 *
 * Compute-thread state machine (learner_idle):
 *   IDLE  -> STEP  a batch is drawn, tokenised and started
 *   STEP  -> STEP  one piece (embeddings, a layer, the losses, ...)
 *   STEP  -> IDLE  AdamW applied (or skipped), EMA updated
 *   IDLE  -> GATE  a publish is due: the gate's work list is built
 *   GATE  -> GATE  one piece of gate work (a validation batch, an embedding
 *                  chunk, an STS chunk) for the candidate or the current
 *   GATE  -> SAVE  passed: a helper thread writes DATA/models/v{n}
 *   SAVE  -> IDLE  written: the version is published, re-embedding starts
 * Re-embedding chunks go before all of these. */
#include "learner.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "base/fileio.h"
#include "common/clock.h"
#include "samples.h"
#include "store/store_reembed.h"
#include "sts.h"
#include "train.h"

#define REEMBED_CHUNK 64
#define GATE_BATCH 32
#define STS_CHUNK 64
#define DUTY_WINDOW 10.0       /* seconds over which the duty cycle is measured */

enum { PH_IDLE = 0, PH_STEP, PH_APPLY, PH_GATE, PH_SAVE };

/* Parameters updated per piece of the optimizer step (a few ms each). */
#define APPLY_CHUNK ((size_t)1 << 20)

/* One side of the gate: the candidate or the current version. */
typedef struct gate_side {
    double val_loss;
    int val_batches;
    double mean_cos, variance;
    double sts;                /* Spearman x100, NAN when not measured */
} gate_side;

typedef struct gate_result {
    int valid;
    int passed;
    uint32_t candidate_id;
    long step;
    gate_side cand, cur;
    char reason[256];
    double at;                 /* unix seconds */
} gate_result;

struct learner {
    learner_opts o;
    versions *v;
    batcher *b;
    store *st;
    metrics *mx;
    samples *buf;
    emb_config cfg;
    emb_special_tokens special;

    /* compute thread only */
    emb_trainer *t;
    emb_model *cand;           /* the candidate: EMA weights, packed for inference */
    float *ema;                /* (n_enc) */
    emb_workspace *ws;
    emb_batch batch;
    emb_step_stats step_st;
    int32_t *ids;
    int *lens;
    char **texts;
    int phase;
    double last_publish;
    long steps_since_publish;
    size_t apply_at;           /* next parameter of the update in progress */
    /* duty cycle */
    double window_start, window_busy;
    /* gate */
    int gate_task, gate_n_tasks;
    int32_t *h_ids;            /* held-out texts, tokenised */
    int *h_lens;
    int h_n;
    emb_sts sts;
    int have_sts;
    float *sts_a, *sts_b;      /* (n, C) embeddings of the pairs, per side */
    gate_result gate;
    /* save */
    pthread_t saver;
    int saver_running;
    int saved_rc;
    char saved_err[512];
    emb_model *saving;         /* owned until published */
    float *saving_head;        /* the MLM head at the time of the save */
    float *scratch;            /* (n_enc) a version's weights for the gate */
    uint32_t saving_id;

    /* shared, under lock */
    pthread_mutex_t lock;
    int paused;
    int rollback_pending;
    uint32_t rollback_id;
    long steps, skipped, published, rejected;
    double last_loss, last_simcse, last_mlm, loss_ema;
    gate_result last_gate;
    char last_error[256];
    int saver_done;            /* set by the saver thread */
};

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- intake ------------------------------------------------------------------ */

int learner_enabled(const learner *l)
{
    return l != NULL && l->o.enabled;
}

void learner_offer(learner *l, const char *text, size_t len, int source)
{
    if (l == NULL || !l->o.enabled)
        return;
    if ((source == SAMPLES_SRC_EMBED && !l->o.from_embed) ||
        (source == SAMPLES_SRC_ITEMS && !l->o.from_items) ||
        (source == SAMPLES_SRC_EXPLICIT && !l->o.from_explicit))
        return;
    if (samples_add(l->buf, text, len, source) == 1)
        batcher_wake(l->b);
}

int learner_offer_explicit(learner *l, const char *const *texts, const size_t *lens, int n)
{
    int added = 0;
    for (int i = 0; i < n; i++)
        added += samples_add(l->buf, texts[i], lens[i], SAMPLES_SRC_EXPLICIT) == 1;
    if (added > 0)
        batcher_wake(l->b);
    return added;
}

void learner_flush(learner *l)
{
    emb_err err;
    if (l != NULL && l->buf != NULL && samples_flush(l->buf, &err) != 0) {
        pthread_mutex_lock(&l->lock);
        snprintf(l->last_error, sizeof l->last_error, "sample buffer: %.200s", err.msg);
        pthread_mutex_unlock(&l->lock);
    }
}

/* ---- helpers ------------------------------------------------------------------ */

static void set_error(learner *l, const char *what, const char *msg)
{
    pthread_mutex_lock(&l->lock);
    snprintf(l->last_error, sizeof l->last_error, "%.60s: %.180s", what, msg);
    pthread_mutex_unlock(&l->lock);
    fprintf(stderr, "embedd: learner: %s: %s\n", what, msg);
}

/* Tokenises texts into ids/lens (caller's buffers, n * max_len ids). */
static int tokenize_texts(const emb_model *m, char **texts, int n, int max_len, int32_t *ids,
                          int *lens)
{
    long at = 0;
    for (int i = 0; i < n; i++) {
        int got = emb_encode(m->tok, texts[i], strlen(texts[i]), max_len, 0, ids + at, NULL);
        if (got < 0)
            return -1;
        lens[i] = got;
        at += got;
    }
    return 0;
}

/* Embeds n tokenised texts with m into out (n, D), L2-normalised, in chunks
 * that fit the workspace. */
static int embed_ids(learner *l, const emb_model *m, const int32_t *ids, const int *lens, int n,
                     float *out, emb_err *err)
{
    return emb_embed_ids(m, l->ws, ids, lens, n, m->cfg.pooling, 1, out, err);
}

/* ---- re-embedding ---------------------------------------------------------------- */

/* One chunk of moving the store to its target version. Returns 1 when it
 * did work, 0 when there is none. */
static int reembed_chunk(learner *l)
{
    if (l->st == NULL)
        return 0;
    uint32_t target = store_target_version(l->st);
    if (target == store_vectors_version(l->st))
        return 0;
    emb_err err;
    model_version *mv = versions_get(l->v, target);
    if (mv == NULL) {
        set_error(l, "re-embedding", "the target version is not in memory");
        return 0;
    }
    store_text_item items[REEMBED_CHUNK];
    int n = store_reembed_take(l->st, REEMBED_CHUNK, items, &err);
    int rc = 1;
    if (n < 0) {
        set_error(l, "re-embedding", err.msg);
        rc = 0;
    } else if (n == 0) {
        if (store_reembed_finish(l->st, &err) < 0) {
            set_error(l, "re-embedding", err.msg);
            rc = 0;
        }
    } else {
        const int C = emb_config_dim(&l->cfg), max_len = mv->model->cfg.max_seq_length;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)n * (size_t)max_len);
        int lens[REEMBED_CHUNK];
        float *vecs = malloc(sizeof(float) * (size_t)n * (size_t)C);
        long at = 0;
        int ok = ids != NULL && vecs != NULL;
        for (int i = 0; ok && i < n; i++) {
            lens[i] = emb_encode(mv->model->tok, items[i].text, items[i].len, max_len, 0,
                                 ids + at, NULL);
            ok = lens[i] > 0;
            at += ok ? lens[i] : 0;
        }
        if (!ok || embed_ids(l, mv->model, ids, lens, n, vecs, &err) != 0 ||
            store_reembed_put(l->st, items, n, vecs, target, &err) != 0) {
            set_error(l, "re-embedding", ok ? err.msg : "out of memory");
            rc = 0;
        }
        free(ids);
        free(vecs);
        store_text_items_free(items, n);
    }
    versions_release(l->v, mv);
    return rc;
}

/* ---- training ------------------------------------------------------------------------ */

/* EMA of the encoder weights on [from, to). The frozen Dense block after
 * them (train.h) stays as it is: an average of equal values could still
 * move it by rounding. */
static void ema_update(learner *l, size_t from, size_t to)
{
    const float d = l->o.ema_decay;
    const float *p = l->t->params;
    float *e = l->ema;
    if (to > l->t->dense_at)
        to = l->t->dense_at;
#pragma omp parallel for simd schedule(static)
    for (long i = (long)from; i < (long)to; i++)
        e[i] = d * e[i] + (1.0f - d) * p[i];
}

static int start_step(learner *l)
{
    emb_err err;
    const int B = l->o.batch_size;
    int got = samples_draw(l->buf, B, &l->t->rng, l->texts, B);
    if (got < 2) {
        for (int i = 0; i < got; i++)
            free(l->texts[i]);
        return 0;
    }
    model_version *mv = versions_current(l->v);
    int rc = tokenize_texts(mv->model, l->texts, got, l->o.max_seq_len, l->ids, l->lens);
    versions_release(l->v, mv);
    for (int i = 0; i < got; i++)
        free(l->texts[i]);
    if (rc != 0 || emb_batch_build(l->t, &l->batch, l->ids, l->lens, got, &err) != 0 ||
        emb_train_begin(l->t, &l->batch, 1, &l->step_st, &err) != 0) {
        set_error(l, "training step", rc != 0 ? "out of memory" : err.msg);
        return 0;
    }
    l->phase = PH_STEP;
    return 1;
}

static void finish_step(learner *l)
{
    emb_step_stats *st = &l->step_st;
    pthread_mutex_lock(&l->lock);
    long step_no = l->steps + l->skipped + 1;
    pthread_mutex_unlock(&l->lock);
    if (l->o.nan_every > 0 && step_no % l->o.nan_every == 0)
        st->loss = NAN;
    int skipped = emb_train_apply_begin(l->t, st);
    if (!skipped) {
        /* the update itself runs in pieces: apply_work */
        l->apply_at = 0;
        l->phase = PH_APPLY;
    }
    pthread_mutex_lock(&l->lock);
    if (skipped) {
        l->skipped++;
    } else {
        l->steps++;
        l->last_loss = st->loss;
        l->last_simcse = st->simcse_loss;
        l->last_mlm = st->mlm_loss;
        l->loss_ema = l->loss_ema == 0 ? st->loss : 0.95 * l->loss_ema + 0.05 * st->loss;
    }
    pthread_mutex_unlock(&l->lock);
    metrics_train_step(l->mx, skipped, st->loss, st->tokens);
    if (!skipped)
        l->steps_since_publish++;
    else
        l->phase = PH_IDLE;
}

/* One piece of AdamW and of the EMA that follows it. */
static void apply_work(learner *l)
{
    size_t to = l->apply_at + APPLY_CHUNK;
    emb_train_apply_range(l->t, l->apply_at, to);
    if (l->apply_at < l->t->n_enc)
        ema_update(l, l->apply_at, to);
    l->apply_at = to;
    if (l->apply_at >= l->t->n_params)
        l->phase = PH_IDLE;
}

/* ---- the gate ---------------------------------------------------------------------------- */

/* Swaps the trainer's encoder weights with w (n_enc floats) in place. */
static void swap_encoder(learner *l, float *w)
{
    float *p = l->t->params;
    const long n = (long)l->t->n_enc;
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        float tmp = p[i];
        p[i] = w[i];
        w[i] = tmp;
    }
}

static int gate_due(learner *l)
{
    if (l->steps_since_publish == 0)
        return 0;
    if (l->o.publish_every_steps > 0 && l->steps_since_publish >= l->o.publish_every_steps)
        return 1;
    return l->o.publish_every_secs > 0 && mono_seconds() - l->last_publish >= l->o.publish_every_secs;
}

/* Tokenises the held-out texts for the gate. */
static int gate_prepare(learner *l)
{
    char **texts = NULL;
    int n = 0;
    if (samples_holdout(l->buf, &texts, &n) != 0 || n < 2) {
        for (int i = 0; i < n; i++)
            free(texts[i]);
        free(texts);
        return -1;
    }
    int use = n < l->o.holdout_eval_max ? n : l->o.holdout_eval_max;
    free(l->h_ids);
    free(l->h_lens);
    l->h_ids = malloc(sizeof(int32_t) * (size_t)use * (size_t)l->o.max_seq_len);
    l->h_lens = malloc(sizeof(int) * (size_t)use);
    model_version *mv = versions_current(l->v);
    int rc = (l->h_ids == NULL || l->h_lens == NULL ||
              tokenize_texts(mv->model, texts, use, l->o.max_seq_len, l->h_ids, l->h_lens) != 0)
                 ? -1 : 0;
    versions_release(l->v, mv);
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    l->h_n = rc == 0 ? use : 0;
    return rc;
}

/* Work list: for each side (0 candidate, 1 current): validation batches,
 * one collapse measurement, STS chunks. */
static int val_batches(const learner *l)
{
    return (l->h_n + GATE_BATCH - 1) / GATE_BATCH;
}

static int sts_chunks(const learner *l)
{
    return l->have_sts ? 2 * ((l->sts.n + STS_CHUNK - 1) / STS_CHUNK) : 0;
}

static int side_tasks(const learner *l)
{
    return val_batches(l) + 1 + sts_chunks(l);
}

static void start_gate(learner *l)
{
    memset(&l->gate, 0, sizeof l->gate);
    if (gate_prepare(l) != 0) {
        set_error(l, "gate", "fewer than 2 held-out texts: publishing waits for more");
        l->steps_since_publish = 0;
        l->last_publish = mono_seconds();
        return;
    }
    l->gate.step = l->steps;
    l->gate.cand.sts = l->gate.cur.sts = NAN;
    l->gate_task = 0;
    l->gate_n_tasks = 2 * side_tasks(l);
    /* the candidate's packed weights: the EMA */
    memcpy(l->cand->params, l->ema, sizeof(float) * l->t->n_enc);
    emb_err err;
    if (emb_model_pack(l->cand, &err) != 0) {
        set_error(l, "gate", err.msg);
        return;
    }
    l->phase = PH_GATE;
}

/* Validation loss of one held-out batch with fixed dropout masks, for the
 * weights in w (swapped into the trainer for the duration). */
static int gate_val_batch(learner *l, float *w, int k, gate_side *side)
{
    emb_err err;
    int first = k * GATE_BATCH;
    int n = l->h_n - first < GATE_BATCH ? l->h_n - first : GATE_BATCH;
    long at = 0;
    for (int i = 0; i < first; i++)
        at += l->h_lens[i];
    emb_rng saved = l->t->rng;
    emb_rng_seed(&l->t->rng, 1234567u + (uint64_t)k);
    emb_batch b = {0};
    emb_step_stats st;
    swap_encoder(l, w);
    int rc = emb_batch_build(l->t, &b, l->h_ids + at, l->h_lens + first, n, &err);
    if (rc == 0)
        rc = emb_train_loss(l->t, &b, 1, &st, &err);
    swap_encoder(l, w);
    l->t->rng = saved;
    emb_batch_free(&b);
    if (rc != 0) {
        set_error(l, "gate", err.msg);
        return -1;
    }
    side->val_loss += st.loss;
    side->val_batches++;
    return 0;
}

/* Mean pairwise cosine and mean per-dimension variance of the held-out
 * embeddings: a collapsed model maps everything to nearly one point. */
static int gate_collapse(learner *l, const emb_model *m, gate_side *side)
{
    emb_err err;
    const int C = emb_config_dim(&l->cfg), n = l->h_n;
    float *e = malloc(sizeof(float) * (size_t)n * (size_t)C);
    if (e == NULL || embed_ids(l, m, l->h_ids, l->h_lens, n, e, &err) != 0) {
        free(e);
        set_error(l, "gate", e == NULL ? "out of memory" : err.msg);
        return -1;
    }
    double *mean = calloc((size_t)C, sizeof(double));
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++)
            mean[c] += e[(long)i * C + c];
    double sum2 = 0, var = 0;
    for (int c = 0; c < C; c++) {
        mean[c] /= n;
        sum2 += mean[c] * mean[c];
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            double d = e[(long)i * C + c] - mean[c];
            var += d * d;
        }
    /* unit vectors: sum_{i != j} <e_i, e_j> = |sum e|^2 - n */
    side->mean_cos = (sum2 * n * n - n) / ((double)n * (n - 1));
    side->variance = var / n / C;
    free(mean);
    free(e);
    return 0;
}

/* One STS chunk: embeddings of pairs [k*STS_CHUNK, ...) of one side. */
static int gate_sts_chunk(learner *l, const emb_model *m, int k, gate_side *side)
{
    emb_err err;
    const int C = emb_config_dim(&l->cfg), max_len = m->cfg.max_seq_length;
    const int chunks = (l->sts.n + STS_CHUNK - 1) / STS_CHUNK;
    const int which = k / chunks, c0 = (k % chunks) * STS_CHUNK;
    const int n = l->sts.n - c0 < STS_CHUNK ? l->sts.n - c0 : STS_CHUNK;
    char **texts = which == 0 ? l->sts.a : l->sts.b;
    float *out = (which == 0 ? l->sts_a : l->sts_b) + (long)c0 * C;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n * (size_t)max_len);
    int lens[STS_CHUNK];
    int rc = ids != NULL ? tokenize_texts(m, texts + c0, n, max_len, ids, lens) : -1;
    if (rc == 0)
        rc = embed_ids(l, m, ids, lens, n, out, &err);
    free(ids);
    if (rc != 0) {
        set_error(l, "gate", "STS embedding failed");
        return -1;
    }
    if (k == 2 * chunks - 1) {
        double *cos = malloc(sizeof(double) * (size_t)l->sts.n);
        if (cos == NULL)
            return -1;
        for (int i = 0; i < l->sts.n; i++) {
            double d = 0;
            for (int c = 0; c < C; c++)
                d += (double)l->sts_a[(long)i * C + c] * l->sts_b[(long)i * C + c];
            cos[i] = d;
        }
        side->sts = 100.0 * emb_spearman(cos, l->sts.score, l->sts.n);
        free(cos);
    }
    return 0;
}

/* The verdict, once both sides are measured. */
static void gate_decide(learner *l)
{
    gate_result *g = &l->gate;
    gate_side *c = &g->cand, *u = &g->cur;
    c->val_loss /= c->val_batches > 0 ? c->val_batches : 1;
    u->val_loss /= u->val_batches > 0 ? u->val_batches : 1;
    g->valid = 1;
    g->at = unix_now();
    g->passed = 0;
    if (c->mean_cos > l->o.collapse_max_cos)
        snprintf(g->reason, sizeof g->reason,
                 "collapse alarm: held-out embeddings are nearly identical (mean pairwise "
                 "cosine %.4f > %.2f)", c->mean_cos, (double)l->o.collapse_max_cos);
    else if (c->mean_cos > u->mean_cos + l->o.collapse_cos_rise)
        snprintf(g->reason, sizeof g->reason,
                 "collapse alarm: mean pairwise cosine rose from %.4f to %.4f", u->mean_cos,
                 c->mean_cos);
    else if (c->variance < l->o.collapse_min_var * u->variance)
        snprintf(g->reason, sizeof g->reason,
                 "collapse alarm: embedding variance %.3g fell below %.2f x the current %.3g",
                 c->variance, (double)l->o.collapse_min_var, u->variance);
    else if (!isfinite(c->val_loss))
        snprintf(g->reason, sizeof g->reason, "candidate validation loss is not finite");
    else if (!(c->val_loss < u->val_loss))
        snprintf(g->reason, sizeof g->reason,
                 "validation loss did not improve (%.5f vs %.5f)", c->val_loss, u->val_loss);
    else if (l->have_sts && !(c->sts >= u->sts - l->o.gate_tolerance))
        snprintf(g->reason, sizeof g->reason, "STS Spearman fell from %.2f to %.2f", u->sts,
                 c->sts);
    else {
        g->passed = 1;
        snprintf(g->reason, sizeof g->reason, "passed");
    }
}

/* DATA/models/current names the current version, so that a restart comes
 * back on it (after a rollback too). Written atomically. */
static void save_current(learner *l, uint32_t id)
{
    if (l->o.data_dir == NULL)
        return;
    char dir[4096], tmp[4200], path[4200];
    snprintf(dir, sizeof dir, "%s/models", l->o.data_dir);
    mkdir(dir, 0755);
    snprintf(tmp, sizeof tmp, "%s/current.tmp", dir);
    snprintf(path, sizeof path, "%s/current", dir);
    FILE *fp = fopen(tmp, "w");
    int ok = fp != NULL && fprintf(fp, "%u\n", id) > 0;
    if (fp != NULL)
        ok = fflush(fp) == 0 && fsync(fileno(fp)) == 0 && ok;
    if (fp != NULL)
        ok = fclose(fp) == 0 && ok;
    if (!ok || rename(tmp, path) != 0)
        set_error(l, "saving the current version", strerror(errno));
    else {
        emb_err err;
        emb_fsync_dir(dir, &err);
    }
}

static void *saver_main(void *arg)
{
    learner *l = arg;
    emb_err err = {0};
    char dir[4096];
    int rc = 0;
    if (l->o.data_dir != NULL) {
        snprintf(dir, sizeof dir, "%s/models", l->o.data_dir);
        mkdir(dir, 0755);
        snprintf(dir, sizeof dir, "%s/models/v%u", l->o.data_dir, l->saving_id);
        rc = emb_save_model_dir(dir, &l->saving->cfg, l->saving->params,
                                l->saving_head, l->o.base_dir, EMB_DT_F32, NULL,
                                &err);
    }
    pthread_mutex_lock(&l->lock);
    l->saved_rc = rc;
    snprintf(l->saved_err, sizeof l->saved_err, "%s", err.msg);
    l->saver_done = 1;
    pthread_mutex_unlock(&l->lock);
    batcher_wake(l->b);
    return NULL;
}

/* The gate passed: copy the candidate and save it off the compute thread. */
static void start_save(learner *l)
{
    emb_err err;
    l->saving = emb_model_clone(l->cand, &err);
    if (l->saving == NULL) {
        set_error(l, "publish", err.msg);
        l->phase = PH_IDLE;
        return;
    }
    memcpy(l->saving_head, l->t->params + l->t->n_enc,
           sizeof(float) * (l->t->n_params - l->t->n_enc));
    l->saving_id = versions_latest_id(l->v) + 1;
    l->gate.candidate_id = l->saving_id;
    pthread_mutex_lock(&l->lock);
    l->last_gate.candidate_id = l->saving_id;
    pthread_mutex_unlock(&l->lock);
    l->saver_done = 0;
    if (pthread_create(&l->saver, NULL, saver_main, l) != 0) {
        set_error(l, "publish", "cannot start the saving thread");
        emb_model_free(l->saving);
        l->saving = NULL;
        l->phase = PH_IDLE;
        return;
    }
    l->saver_running = 1;
    l->phase = PH_SAVE;
}

static void finish_save(learner *l)
{
    pthread_join(l->saver, NULL);
    l->saver_running = 0;
    if (l->saved_rc != 0) {
        set_error(l, "publish: saving the checkpoint", l->saved_err);
        emb_model_free(l->saving);
    } else {
        model_version *mv = versions_publish(l->v, l->saving, l->saving_id);
        if (mv == NULL) {
            set_error(l, "publish", "out of memory");
            emb_model_free(l->saving);
        } else {
            versions_release(l->v, mv);
            save_current(l, l->saving_id);
            emb_err err;
            if (l->st != NULL && store_reembed_start(l->st, l->saving_id, &err) != 0)
                set_error(l, "re-embedding", err.msg);
            pthread_mutex_lock(&l->lock);
            l->published++;
            pthread_mutex_unlock(&l->lock);
            metrics_train_publish(l->mx, 1);
            fprintf(stderr, "embedd: learner: published model version %u (step %ld)\n",
                    l->saving_id, l->gate.step);
        }
    }
    l->saving = NULL;
    l->phase = PH_IDLE;
}

static void end_gate(learner *l)
{
    gate_decide(l);
    l->steps_since_publish = 0;
    l->last_publish = mono_seconds();
    pthread_mutex_lock(&l->lock);
    l->last_gate = l->gate;
    if (!l->gate.passed)
        l->rejected++;
    pthread_mutex_unlock(&l->lock);
    if (l->gate.passed) {
        start_save(l);
    } else {
        metrics_train_publish(l->mx, 0);
        fprintf(stderr, "embedd: learner: candidate at step %ld rejected: %s\n", l->gate.step,
                l->gate.reason);
        l->phase = PH_IDLE;
    }
}

/* One piece of gate work. */
static void gate_work(learner *l)
{
    const int per_side = side_tasks(l);
    const int side_no = l->gate_task / per_side, k = l->gate_task % per_side;
    gate_side *side = side_no == 0 ? &l->gate.cand : &l->gate.cur;
    model_version *cur = side_no == 1 ? versions_current(l->v) : NULL;
    const emb_model *m = side_no == 0 ? l->cand : cur->model;
    int rc;
    if (k < val_batches(l) && side_no == 1)
        memcpy(l->scratch, cur->model->params, sizeof(float) * l->t->n_enc);
    if (k < val_batches(l))
        rc = gate_val_batch(l, side_no == 0 ? l->ema : l->scratch, k, side);
    else if (k == val_batches(l))
        rc = gate_collapse(l, m, side);
    else
        rc = gate_sts_chunk(l, m, k - val_batches(l) - 1, side);
    versions_release(l->v, cur);
    if (rc != 0) {
        l->phase = PH_IDLE;
        l->steps_since_publish = 0;
        l->last_publish = mono_seconds();
        return;
    }
    if (++l->gate_task == l->gate_n_tasks)
        end_gate(l);
}

/* ---- rollback ------------------------------------------------------------------------------ */

static emb_model *load_version(learner *l, uint32_t id, emb_err *err)
{
    if (l->o.data_dir == NULL)
        return NULL;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/v%u", l->o.data_dir, id);
    struct stat stt;
    if (stat(dir, &stt) != 0)
        return NULL;
    return emb_model_load_precision(dir, l->o.base->precision, err);
}

int learner_rollback(learner *l, uint32_t id, emb_err *err)
{
    model_version *mv = versions_get(l->v, id);
    if (mv != NULL) {
        versions_release(l->v, mv);
        versions_make_current(l->v, id);
    } else {
        emb_model *m = load_version(l, id, err);
        if (m == NULL)
            return emb_fail(err, "model version %u is neither in memory nor on disk", id);
        mv = versions_publish(l->v, m, id);
        if (mv == NULL) {
            emb_model_free(m);
            return emb_fail(err, "out of memory");
        }
        versions_release(l->v, mv);
    }
    save_current(l, id);
    if (l->st != NULL && store_reembed_start(l->st, id, err) != 0)
        return -1;
    pthread_mutex_lock(&l->lock);
    l->rollback_pending = 1;
    l->rollback_id = id;
    pthread_mutex_unlock(&l->lock);
    batcher_wake(l->b);
    return 0;
}

/* On the compute thread: training restarts from the current version. */
static void apply_rollback(learner *l)
{
    model_version *mv = versions_current(l->v);
    memcpy(l->t->params, mv->model->params, sizeof(float) * l->t->n_enc);
    memcpy(l->ema, mv->model->params, sizeof(float) * l->t->n_enc);
    memset(l->t->m, 0, sizeof(float) * l->t->n_params);
    memset(l->t->v, 0, sizeof(float) * l->t->n_params);
    l->t->step = 0;
    versions_release(l->v, mv);
    l->phase = PH_IDLE;
    l->steps_since_publish = 0;
    l->last_publish = mono_seconds();
}

/* ---- the idle callback ---------------------------------------------------------------------- */

/* 1 when training work may run now under the --train-max-cpu cap. */
static int duty_allows(learner *l, double now)
{
    if (now - l->window_start > DUTY_WINDOW) {
        /* keep half the history so the cap is smooth across windows */
        l->window_busy *= 0.5;
        l->window_start = now - DUTY_WINDOW * 0.5;
    }
    return l->window_busy <= l->o.max_cpu * (now - l->window_start);
}

int learner_idle(void *ctx)
{
    learner *l = ctx;
    double t0 = mono_seconds();
    pthread_mutex_lock(&l->lock);
    int paused = l->paused, saver_done = l->saver_done;
    int rollback = l->rollback_pending && l->phase != PH_SAVE; /* after a save completes */
    if (rollback)
        l->rollback_pending = 0;
    pthread_mutex_unlock(&l->lock);
    if (rollback)
        apply_rollback(l);
    if (reembed_chunk(l))
        return 1;
    if (!l->o.enabled)
        return 0;
    if (l->phase == PH_SAVE) {
        if (!saver_done)
            return 0;
        finish_save(l);
        return 1;
    }
    if (paused && l->phase != PH_STEP && l->phase != PH_APPLY)
        return 0;
    if (!duty_allows(l, t0))
        return 0;
    int more = 1;
    if (l->phase == PH_GATE) {
        gate_work(l);
    } else if (l->phase == PH_STEP) {
        if (emb_train_advance(l->t, &l->step_st) == 0)
            finish_step(l);
    } else if (l->phase == PH_APPLY) {
        apply_work(l);
    } else if (gate_due(l)) {
        start_gate(l);
    } else {
        samples_stats ss;
        samples_stats_get(l->buf, &ss);
        more = (long)ss.train >= l->o.min_samples && start_step(l);
    }
    l->window_busy += mono_seconds() - t0;
    return more;
}

/* ---- control and status ------------------------------------------------------------------------ */

void learner_gauges(learner *l, unsigned long *buffer, int *paused)
{
    samples_stats ss;
    memset(&ss, 0, sizeof ss);
    if (l->buf != NULL)
        samples_stats_get(l->buf, &ss);
    *buffer = (unsigned long)ss.train;
    pthread_mutex_lock(&l->lock);
    *paused = l->paused;
    pthread_mutex_unlock(&l->lock);
}

void learner_pause(learner *l)
{
    pthread_mutex_lock(&l->lock);
    l->paused = 1;
    pthread_mutex_unlock(&l->lock);
}

void learner_resume(learner *l)
{
    pthread_mutex_lock(&l->lock);
    l->paused = 0;
    pthread_mutex_unlock(&l->lock);
    batcher_wake(l->b);
}

static void sb_double(strbuf *b, double v)
{
    if (isfinite(v))
        sb_printf(b, "%.6g", v);
    else
        sb_puts(b, "null");
}

static void side_json(strbuf *b, const char *name, const gate_side *s)
{
    sb_printf(b, "\"%s\":{\"val_loss\":", name);
    sb_double(b, s->val_loss);
    sb_puts(b, ",\"mean_cos\":");
    sb_double(b, s->mean_cos);
    sb_puts(b, ",\"variance\":");
    sb_double(b, s->variance);
    sb_puts(b, ",\"sts_spearman\":");
    sb_double(b, s->sts);
    sb_puts(b, "}");
}

void learner_status_json(learner *l, strbuf *b)
{
    samples_stats ss;
    memset(&ss, 0, sizeof ss);
    if (l->buf != NULL)
        samples_stats_get(l->buf, &ss);
    uint32_t ids[16];
    int nv = versions_list(l->v, ids, 16);
    pthread_mutex_lock(&l->lock);
    const char *state = !l->o.enabled ? "off" : l->paused ? "paused" : "running";
    sb_printf(b, "{\"state\":\"%s\",\"steps\":%ld,\"skipped_steps\":%ld,\"published\":%ld,"
              "\"rejected\":%ld,\"loss\":", state, l->steps, l->skipped, l->published,
              l->rejected);
    sb_double(b, l->last_loss);
    sb_puts(b, ",\"loss_avg\":");
    sb_double(b, l->loss_ema);
    sb_puts(b, ",\"simcse_loss\":");
    sb_double(b, l->last_simcse);
    sb_puts(b, ",\"mlm_loss\":");
    sb_double(b, l->last_mlm);
    sb_puts(b, ",\"last_gate\":");
    const gate_result *g = &l->last_gate;
    if (!g->valid) {
        sb_puts(b, "null");
    } else {
        sb_printf(b, "{\"passed\":%s,\"step\":%ld,\"reason\":", g->passed ? "true" : "false",
                  g->step);
        sb_json_string(b, g->reason);
        if (g->passed)
            sb_printf(b, ",\"version\":%u", g->candidate_id);
        sb_puts(b, ",");
        side_json(b, "candidate", &g->cand);
        sb_puts(b, ",");
        side_json(b, "current", &g->cur);
        sb_printf(b, ",\"at\":%.3f}", g->at);
    }
    sb_printf(b, ",\"last_error\":");
    sb_json_string(b, l->last_error);
    pthread_mutex_unlock(&l->lock);
    sb_printf(b, ",\"buffer\":{\"train\":%llu,\"holdout\":%llu,\"bytes\":%llu,\"seen\":%llu,"
              "\"duplicates\":%llu}", (unsigned long long)ss.train,
              (unsigned long long)ss.holdout,
              (unsigned long long)(ss.train_bytes + ss.holdout_bytes),
              (unsigned long long)ss.seen, (unsigned long long)ss.duplicates);
    long done = 0, total = 0;
    uint32_t vec_version = 0, target = 0;
    if (l->st != NULL) {
        store_reembed_progress(l->st, &done, &total);
        vec_version = store_vectors_version(l->st);
        target = store_target_version(l->st);
    }
    sb_printf(b, ",\"reembed\":{\"store_version\":%u,\"target_version\":%u,\"done\":%ld,"
              "\"total\":%ld,\"running\":%s}", vec_version, target, done, total,
              vec_version != target ? "true" : "false");
    sb_printf(b, ",\"versions\":{\"current\":%u,\"latest\":%u,\"in_memory\":[",
              versions_current_id(l->v), versions_latest_id(l->v));
    for (int i = 0; i < nv; i++)
        sb_printf(b, "%s%u", i ? "," : "", ids[i]);
    sb_puts(b, "]}}");
}

/* ---- start and stop ------------------------------------------------------------------------------ */

static int load_sts(learner *l, emb_err *err)
{
    if (l->o.eval_sts == NULL)
        return 0;
    if (emb_sts_load(&l->sts, l->o.eval_sts, err) != 0)
        return -1;
    l->have_sts = 1;
    const size_t n = (size_t)l->sts.n * (size_t)emb_config_dim(&l->cfg);
    l->sts_a = malloc(sizeof(float) * n);
    l->sts_b = malloc(sizeof(float) * n);
    if (l->sts_a == NULL || l->sts_b == NULL)
        return emb_fail(err, "out of memory for the STS gate");
    return 0;
}

learner *learner_start(const learner_opts *o, versions *v, batcher *b, store *st, metrics *mx,
                       emb_err *err)
{
    learner *l = calloc(1, sizeof *l);
    if (l == NULL) {
        emb_fail(err, "out of memory");
        return NULL;
    }
    l->o = *o;
    l->v = v;
    l->b = b;
    l->st = st;
    l->mx = mx;
    l->paused = o->paused;
    pthread_mutex_init(&l->lock, NULL);
    l->last_publish = mono_seconds();
    l->window_start = mono_seconds();
    model_version *mv = versions_current(v);
    l->cfg = mv->model->cfg;
    int ws_tokens = o->holdout_eval_max * o->max_seq_len;
    if (ws_tokens < STS_CHUNK * l->cfg.max_seq_length)
        ws_tokens = STS_CHUNK * l->cfg.max_seq_length;
    if (ws_tokens < REEMBED_CHUNK * l->cfg.max_seq_length)
        ws_tokens = REEMBED_CHUNK * l->cfg.max_seq_length;
    l->ws = emb_workspace_new(mv->model, ws_tokens, err);
    if (!o->enabled || l->ws == NULL) {
        /* re-embedding only */
        versions_release(v, mv);
        if (l->ws == NULL) {
            learner_stop(l);
            return NULL;
        }
        return l;
    }
    samples_opts so;
    samples_opts_init(&so);
    so.seed = o->seed;
    char dir[4096];
    if (o->data_dir != NULL)
        snprintf(dir, sizeof dir, "%s", o->data_dir);
    l->buf = samples_open(o->data_dir != NULL ? dir : NULL, &so, err);
    emb_train_config tc = emb_train_config_default();
    tc.objective = o->objective;
    tc.lr = o->lr;
    tc.l2sp = o->l2sp;
    tc.warmup_steps = 20;
    tc.schedule = EMB_SCHED_CONSTANT;
    tc.seed = o->seed;
    const int B = o->batch_size;
    if (l->buf != NULL)
        l->t = emb_trainer_new(mv->model, o->base_dir, &tc, err);
    if (l->t != NULL && l->t->anchor != NULL && o->base != NULL &&
        o->base->n_params == l->t->n_enc)
        memcpy(l->t->anchor, o->base->params, sizeof(float) * l->t->n_enc);
    if (l->t != NULL) {
        l->cand = emb_model_clone(mv->model, err);
        l->ema = malloc(sizeof(float) * l->t->n_enc);
        l->scratch = malloc(sizeof(float) * l->t->n_enc);
        l->saving_head = malloc(sizeof(float) * (l->t->n_params - l->t->n_enc));
        l->ids = malloc(sizeof(int32_t) * (size_t)B * (size_t)o->max_seq_len);
        l->lens = malloc(sizeof(int) * (size_t)B);
        l->texts = calloc((size_t)B, sizeof(char *));
        if (l->ema != NULL)
            memcpy(l->ema, mv->model->params, sizeof(float) * l->t->n_enc);
    }
    versions_release(v, mv);
    if (l->t == NULL || l->cand == NULL || l->ema == NULL || l->scratch == NULL ||
        l->saving_head == NULL || l->ids == NULL || l->lens == NULL ||
        l->texts == NULL || l->ws == NULL || load_sts(l, err) != 0) {
        if (l->t != NULL && (l->ema == NULL || l->ids == NULL || l->texts == NULL))
            emb_fail(err, "out of memory for the learner");
        learner_stop(l);
        return NULL;
    }
    return l;
}

void learner_stop(learner *l)
{
    if (l == NULL)
        return;
    if (l->saver_running)
        pthread_join(l->saver, NULL);
    emb_model_free(l->saving);
    if (l->buf != NULL) {
        emb_err err;
        if (samples_flush(l->buf, &err) != 0)
            fprintf(stderr, "embedd: learner: flushing the sample buffer: %s\n", err.msg);
        samples_close(l->buf);
    }
    emb_trainer_free(l->t);
    emb_model_free(l->cand);
    emb_workspace_free(l->ws);
    emb_batch_free(&l->batch);
    free(l->ema);
    free(l->scratch);
    free(l->saving_head);
    free(l->ids);
    free(l->lens);
    free(l->texts);
    free(l->h_ids);
    free(l->h_lens);
    if (l->have_sts)
        emb_sts_free(&l->sts);
    free(l->sts_a);
    free(l->sts_b);
    pthread_mutex_destroy(&l->lock);
    free(l);
}
