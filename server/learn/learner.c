/* learner.c: the training scheduler; see learner.h for the data flow.
 *
 * Compute-thread state machine (learner_idle):
 *   IDLE  -> STEP  a batch is drawn, tokenised and started
 *   STEP  -> STEP  one piece (embeddings, a layer, the losses, ...)
 *   STEP  -> APPLY the losses are in: AdamW starts (or the step is skipped)
 *   APPLY -> IDLE  AdamW and the EMA applied in pieces
 *   IDLE  -> GATE  a publish is due: the gate's work list is built
 *   GATE  -> GATE  one piece of gate work (a validation batch, an embedding
 *                  chunk, an STS chunk) for the candidate or the current
 *   GATE  -> SAVE  passed (gate.h): a helper thread writes DATA/models/v{n}
 *                  (versions_save)
 *   SAVE  -> IDLE  written: versions_candidate makes it current (which
 *                  starts re-embedding through the on-change hook) or,
 *                  with --publish manual, pending (publish_or_hold)
 *   IDLE  -> WHITEN a whitening refit is due (stages.h): buffer texts are
 *                  embedded a chunk per call, then the refitted model goes
 *                  to the gate (GATE) as the candidate, without the
 *                  validation loss; once it is current (published, or
 *                  promoted later), training restarts from it (the trainer
 *                  is rebuilt when the layout changed)
 * Re-embedding chunks (reembed.h) go before all of these. */
#include "learner.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "common/clock.h"
#include "common/log.h"
#include "gate.h"
#include "reembed.h"
#include "samples.h"
#include "stages.h"
#include "store/store_reembed.h"
#include "sts.h"
#include "train.h"

#define GATE_BATCH 32
#define STS_CHUNK 64
#define DUTY_WINDOW 10.0       /* seconds over which the duty cycle is measured */

enum { PH_IDLE = 0, PH_STEP, PH_APPLY, PH_GATE, PH_SAVE, PH_WHITEN };

/* Parameters updated per piece of the optimizer step (a few ms each). */
#define APPLY_CHUNK ((size_t)1 << 20)

/* A gate's outcome, as /train/status shows it. */
typedef struct gate_result {
    int valid;
    int passed;
    uint32_t candidate_id;
    long step;
    const char *stage;         /* "gradient" or "whiten" */
    gate_side cand, cur;
    char reason[256];
    double at;                 /* unix seconds */
} gate_result;

/* The learning curve for GET /train/history: the last HISTORY_STEPS
 * training steps and the last HISTORY_GATES gate decisions, in rings under
 * the learner's lock (about 60 KB together). Old entries are overwritten:
 * a console polls far more often than the ring turns over. */
#define HISTORY_STEPS 1000
#define HISTORY_GATES 64

typedef struct history_point {
    double at;                 /* unix seconds */
    long step;
    float loss, simcse, mlm;   /* NAN: that objective is off */
} history_point;

/* The gate's measurements in progress (compute thread). */
typedef struct gate_run {
    emb_workspace *ws;         /* embeddings of held-out texts and STS pairs */
    int task, n_tasks;         /* the work list: see side_tasks */
    int32_t *h_ids;            /* held-out texts, tokenised */
    int *h_lens;
    int h_n;
    int val_batches[2];        /* batches summed into cand/cur.val_loss */
    emb_sts sts;
    int have_sts;
    float *sts_a, *sts_b;      /* (n, C) embeddings of the pairs, per side */
    float *scratch;            /* (n_enc) the current version's weights */
    int *lex_a, *lex_b;        /* (2 h_n) the lexical pairs (gate.h) */
    double *lex_sim;           /* (2 h_n) their TF-IDF cosines */
    emb_model *stage_cand;     /* a stage's candidate (stages.h), else NULL: the EMA */
    gate_result res;
} gate_run;

/* A publish being saved (the compute thread starts and joins the thread;
 * rc and err are the thread's until done is set under the lock). */
typedef struct save_run {
    pthread_t thread;
    int running;
    int rc;
    char err[512];
    emb_model *model;          /* owned until published */
    float *head;               /* the MLM head at the time of the save */
    uint32_t id;
    int done;                  /* under the learner's lock */
} save_run;

struct learner {
    learner_opts o;
    versions *v;
    batcher *b;
    store *st;
    metrics *mx;
    samples *buf;              /* NULL with enabled = 0 */
    reembedder *re;
    learner_cluster cluster;   /* leader NULL: a single server, always trains */
    int was_leader;            /* compute thread only */
    emb_config cfg;
    train_budget budget;       /* text uses left before the trainer rests */

    /* compute thread only */
    emb_trainer *t;
    emb_model *cand;           /* the candidate: EMA weights, packed for inference */
    float *ema;                /* (n_enc) */
    emb_batch batch;
    emb_step_stats step_st;
    int32_t *ids;
    int *lens;
    char **texts;
    int phase;
    double last_publish;
    long steps_since_publish;
    size_t apply_at;           /* next parameter of the update in progress */
    double window_start, window_busy; /* duty cycle */
    gate_run gate;
    save_run save;
    whiten_stage *whiten;      /* NULL: the whitening stage is off */
    long whiten_next;          /* buffer size at which the next refit is due */
    int restart_after_save;    /* a stage's candidate was published: reset the trainer */
    uint32_t whiten_pending;   /* a stage's candidate left pending (manual): restart
                                  from it once it is promoted; 0: none */
    model_version *whiten_mv;  /* the version a refit in progress starts from (a reference) */

    /* shared, under lock */
    pthread_mutex_t lock;
    int paused;
    int rollback_pending;
    int version_changed;       /* the on-change hook ran (a promote, from any thread) */
    atomic_int resting;        /* every text used up and nothing in flight
                                  (set and cleared by the compute thread) */
    long steps, skipped, published, rejected;
    double last_loss, last_simcse, last_mlm, loss_ema;
    gate_result last_gate;
    char last_error[256];
    history_point hist[HISTORY_STEPS]; /* ring: entry i % HISTORY_STEPS */
    long hist_n;                       /* points ever recorded */
    gate_result hist_gates[HISTORY_GATES];
    long hist_gates_n;
};

static void restart_from_current(learner *l);

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
    if (l->cluster.forward != NULL) {
        l->cluster.forward(l->cluster.ctx, text, len, source); /* comes back to the trainer */
        return;
    }
    learner_add_sample(l, text, len, source);
}

void learner_add_sample(learner *l, const char *text, size_t len, int source)
{
    if (l == NULL || !l->o.enabled)
        return;
    if (samples_add(l->buf, text, len, source) == 1) {
        budget_earn(&l->budget, 1);
        atomic_store(&l->resting, 0);
        batcher_wake(l->b);
    }
}

int learner_offer_explicit(learner *l, const char *const *texts, const size_t *lens, int n)
{
    if (l->cluster.forward != NULL) {
        for (int i = 0; i < n; i++)
            l->cluster.forward(l->cluster.ctx, texts[i], lens[i], SAMPLES_SRC_EXPLICIT);
        return n;
    }
    int added = 0;
    for (int i = 0; i < n; i++)
        added += samples_add(l->buf, texts[i], lens[i], SAMPLES_SRC_EXPLICIT) == 1;
    if (added > 0) {
        budget_earn(&l->budget, added);
        atomic_store(&l->resting, 0);
        batcher_wake(l->b);
    }
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
    log_line ln;
    if (log_begin(&ln, LOG_ERROR, "learner: %s failed", what)) {
        log_str(&ln, "error", msg);
        log_end(&ln);
    }
}

/* A gate's numbers as fields of a log line: the candidate's and the
 * current version's, so a line says why it passed or not. */
static void log_gate(log_line *ln, const gate_result *g)
{
    log_int(ln, "step", g->step);
    log_str(ln, "stage", g->stage);
    log_str(ln, "gate", g->reason);
    log_num(ln, "val_loss", g->cand.val_loss, -1);
    log_num(ln, "val_loss_current", g->cur.val_loss, -1);
    log_num(ln, "mean_cos", g->cand.mean_cos, 4);
    log_num(ln, "mean_cos_current", g->cur.mean_cos, 4);
    log_num(ln, "variance", g->cand.variance, -1);
    log_num(ln, "variance_current", g->cur.variance, -1);
    log_num(ln, "sts", g->cand.sts, 2);
    log_num(ln, "sts_current", g->cur.sts, 2);
    log_num(ln, "lexical", g->cand.lex, 2);
    log_num(ln, "lexical_current", g->cur.lex, 2);
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

/* Embeds n tokenised texts with m into out (n, D), L2-normalised, with the
 * gate's workspace. */
static int embed_ids(learner *l, const emb_model *m, const int32_t *ids, const int *lens, int n,
                     float *out, emb_err *err)
{
    return emb_embed_ids(m, l->gate.ws, ids, lens, n, m->cfg.pooling, 1, out, err);
}

/* The hooks the registry calls (versions.h): a new current version starts
 * re-embedding and wakes a resting compute thread (a promote or rollback
 * comes from an HTTP thread); failures that do not undo a change go to
 * last_error. */
static int on_version_change(void *ctx, uint32_t id, emb_err *err)
{
    learner *l = ctx;
    int rc = reembedder_start(l->re, id, err);
    pthread_mutex_lock(&l->lock);
    l->version_changed = 1;
    pthread_mutex_unlock(&l->lock);
    batcher_wake(l->b);
    return rc;
}

static void report_error(void *ctx, const char *what, const char *msg)
{
    set_error(ctx, what, msg);
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
    budget_spend(&l->budget, got);
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
        l->hist[l->hist_n % HISTORY_STEPS] = (history_point){
            .at = unix_now(), .step = l->steps, .loss = st->loss, .simcse = st->simcse_loss,
            .mlm = st->mlm_loss};
        l->hist_n++;
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

/* The lexical pairs of the held-out texts and their TF-IDF cosines (gate.h),
 * on the word pieces without [CLS] and [SEP]. */
static int lexical_prepare(learner *l, int vocab)
{
    gate_run *g = &l->gate;
    const int n = g->h_n;
    free(g->lex_a);
    free(g->lex_b);
    free(g->lex_sim);
    g->lex_a = malloc(sizeof(int) * 2 * (size_t)n);
    g->lex_b = malloc(sizeof(int) * 2 * (size_t)n);
    g->lex_sim = malloc(sizeof(double) * 2 * (size_t)n);
    int *ids = malloc(sizeof(int) * (size_t)n * (size_t)l->o.max_seq_len);
    int *lens = malloc(sizeof(int) * (size_t)n);
    int rc = -1;
    if (g->lex_a != NULL && g->lex_b != NULL && g->lex_sim != NULL && ids != NULL &&
        lens != NULL && n >= 3) {
        long at = 0, to = 0;
        for (int i = 0; i < n; i++) {
            const int len = g->h_lens[i];
            lens[i] = len > 2 ? len - 2 : 0;
            for (int k = 1; k + 1 < len; k++)
                ids[to++] = g->h_ids[at + k];
            at += len;
        }
        rc = gate_lexical_pairs(ids, lens, n, vocab, 0, g->lex_a, g->lex_b, g->lex_sim);
    }
    free(ids);
    free(lens);
    return rc;
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
    free(l->gate.h_ids);
    free(l->gate.h_lens);
    l->gate.h_ids = malloc(sizeof(int32_t) * (size_t)use * (size_t)l->o.max_seq_len);
    l->gate.h_lens = malloc(sizeof(int) * (size_t)use);
    model_version *mv = versions_current(l->v);
    int rc = (l->gate.h_ids == NULL || l->gate.h_lens == NULL ||
              tokenize_texts(mv->model, texts, use, l->o.max_seq_len, l->gate.h_ids,
                             l->gate.h_lens) != 0)
                 ? -1 : 0;
    const int vocab = mv->model->cfg.vocab_size;
    versions_release(l->v, mv);
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    l->gate.h_n = rc == 0 ? use : 0;
    if (rc == 0 && l->o.gate_lex)
        rc = lexical_prepare(l, vocab);
    return rc;
}

/* Work list: for each side (0 candidate, 1 current): validation batches,
 * one collapse measurement, STS chunks. */
static int val_batches(const learner *l)
{
    if (l->gate.stage_cand != NULL)
        return 0; /* a stage's candidate has no loss to compare */
    return (l->gate.h_n + GATE_BATCH - 1) / GATE_BATCH;
}

static int sts_chunks(const learner *l)
{
    return l->gate.have_sts ? 2 * ((l->gate.sts.n + STS_CHUNK - 1) / STS_CHUNK) : 0;
}

static int side_tasks(const learner *l)
{
    return val_batches(l) + 1 + sts_chunks(l);
}

static void start_gate(learner *l)
{
    memset(&l->gate.res, 0, sizeof l->gate.res);
    l->gate.val_batches[0] = l->gate.val_batches[1] = 0;
    if (gate_prepare(l) != 0) {
        set_error(l, "gate", "fewer than 2 held-out texts: publishing waits for more");
        l->steps_since_publish = 0;
        l->last_publish = mono_seconds();
        return;
    }
    l->gate.res.step = l->steps;
    l->gate.res.stage = l->gate.stage_cand != NULL ? "whiten" : "gradient";
    l->gate.res.cand.sts = l->gate.res.cur.sts = NAN;
    l->gate.res.cand.lex = l->gate.res.cur.lex = NAN;
    l->gate.res.cand.val_loss = l->gate.res.cur.val_loss = l->gate.stage_cand != NULL ? NAN : 0;
    l->gate.task = 0;
    l->gate.n_tasks = 2 * side_tasks(l);
    if (l->gate.stage_cand == NULL) {
        /* the candidate's packed weights: the EMA */
        memcpy(l->cand->params, l->ema, sizeof(float) * l->t->n_enc);
        emb_err err;
        if (emb_model_pack(l->cand, &err) != 0) {
            set_error(l, "gate", err.msg);
            return;
        }
    }
    l->phase = PH_GATE;
}

/* Validation loss of one held-out batch with fixed dropout masks, for the
 * weights in w (swapped into the trainer for the duration). */
static int gate_val_batch(learner *l, float *w, int k, int side_no, gate_side *side)
{
    emb_err err;
    int first = k * GATE_BATCH;
    int n = l->gate.h_n - first < GATE_BATCH ? l->gate.h_n - first : GATE_BATCH;
    long at = 0;
    for (int i = 0; i < first; i++)
        at += l->gate.h_lens[i];
    emb_rng saved = l->t->rng;
    emb_rng_seed(&l->t->rng, 1234567u + (uint64_t)k);
    emb_batch b = {0};
    emb_step_stats st;
    swap_encoder(l, w);
    int rc = emb_batch_build(l->t, &b, l->gate.h_ids + at, l->gate.h_lens + first, n, &err);
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
    l->gate.val_batches[side_no]++;
    return 0;
}

/* The collapse statistics (gate.h) of the held-out embeddings by m. */
static int gate_collapse(learner *l, const emb_model *m, gate_side *side)
{
    emb_err err;
    const int C = emb_config_dim(&l->cfg), n = l->gate.h_n;
    float *e = malloc(sizeof(float) * (size_t)n * (size_t)C);
    if (e == NULL || embed_ids(l, m, l->gate.h_ids, l->gate.h_lens, n, e, &err) != 0) {
        free(e);
        set_error(l, "gate", e == NULL ? "out of memory" : err.msg);
        return -1;
    }
    int rc = gate_collapse_stats(e, n, C, &side->mean_cos, &side->variance);
    side->uniformity = gate_uniformity(e, n, C);
    if (l->gate.lex_a != NULL && l->o.gate_lex)
        side->lex = gate_lexical_agreement(e, C, l->gate.lex_a, l->gate.lex_b, l->gate.lex_sim,
                                           2 * n);
    free(e);
    if (rc != 0)
        set_error(l, "gate", "out of memory");
    return rc;
}

/* One STS chunk: embeddings of pairs [k*STS_CHUNK, ...) of one side. */
static int gate_sts_chunk(learner *l, const emb_model *m, int k, gate_side *side)
{
    emb_err err;
    const int C = emb_config_dim(&l->cfg), max_len = m->cfg.max_seq_length;
    const int chunks = (l->gate.sts.n + STS_CHUNK - 1) / STS_CHUNK;
    const int which = k / chunks, c0 = (k % chunks) * STS_CHUNK;
    const int n = l->gate.sts.n - c0 < STS_CHUNK ? l->gate.sts.n - c0 : STS_CHUNK;
    char **texts = which == 0 ? l->gate.sts.a : l->gate.sts.b;
    float *out = (which == 0 ? l->gate.sts_a : l->gate.sts_b) + (long)c0 * C;
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
        double *cos = malloc(sizeof(double) * (size_t)l->gate.sts.n);
        if (cos == NULL)
            return -1;
        for (int i = 0; i < l->gate.sts.n; i++) {
            double d = 0;
            for (int c = 0; c < C; c++)
                d += (double)l->gate.sts_a[(long)i * C + c] * l->gate.sts_b[(long)i * C + c];
            cos[i] = d;
        }
        side->sts = 100.0 * emb_spearman(cos, l->gate.sts.score, l->gate.sts.n);
        free(cos);
    }
    return 0;
}

/* The verdict, once both sides are measured. */
static void gate_finish(learner *l)
{
    gate_result *g = &l->gate.res;
    const int *nb = l->gate.val_batches;
    g->cand.val_loss /= nb[0] > 0 ? nb[0] : 1;
    g->cur.val_loss /= nb[1] > 0 ? nb[1] : 1;
    g->valid = 1;
    g->at = unix_now();
    gate_limits lim = {.max_cos = l->o.collapse_max_cos, .cos_rise = l->o.collapse_cos_rise,
                       .min_var = l->o.collapse_min_var, .use_sts = l->gate.have_sts,
                       .sts_tolerance = l->o.gate_tolerance,
                       .use_val_loss = l->gate.stage_cand == NULL, .use_lex = l->o.gate_lex,
                       .lex_tolerance = l->o.gate_lex_tolerance,
                       .lex_min_gain = l->o.gate_lex_gain};
    g->passed = gate_decide(&lim, &g->cand, &g->cur, g->reason, sizeof g->reason);
}

/* ---- publish -------------------------------------------------------------------------- */

static void *saver_main(void *arg)
{
    learner *l = arg;
    emb_err err = {0};
    int rc = versions_save(l->v, l->save.id, l->save.model, l->save.head, &err);
    pthread_mutex_lock(&l->lock);
    l->save.rc = rc;
    snprintf(l->save.err, sizeof l->save.err, "%s", err.msg);
    l->save.done = 1;
    pthread_mutex_unlock(&l->lock);
    batcher_wake(l->b);
    return NULL;
}

/* The gate passed: copy the candidate and save it off the compute thread. */
/* The number of the next version: the registry's next, or with replicas
 * one the cluster hands out (never reused, whichever replica trains). 0
 * with err when there is none to be had. */
static uint32_t next_version_id(learner *l, emb_err *err)
{
    if (l->cluster.next_version != NULL)
        return l->cluster.next_version(l->cluster.ctx, versions_latest_id(l->v), err);
    return versions_latest_id(l->v) + 1;
}

static void start_save(learner *l)
{
    emb_err err;
    uint32_t id = next_version_id(l, &err);
    if (id == 0) {
        set_error(l, "publish", err.msg);
        l->phase = PH_IDLE;
        return;
    }
    l->save.model = emb_model_clone(l->gate.stage_cand != NULL ? l->gate.stage_cand : l->cand,
                                    &err);
    if (l->save.model == NULL) {
        set_error(l, "publish", err.msg);
        l->phase = PH_IDLE;
        return;
    }
    memcpy(l->save.head, l->t->params + l->t->n_enc,
           sizeof(float) * (l->t->n_params - l->t->n_enc));
    l->save.id = id;
    l->gate.res.candidate_id = l->save.id;
    pthread_mutex_lock(&l->lock);
    l->last_gate.candidate_id = l->save.id;
    if (l->hist_gates_n > 0) /* end_gate recorded this gate just before */
        l->hist_gates[(l->hist_gates_n - 1) % HISTORY_GATES].candidate_id = l->save.id;
    pthread_mutex_unlock(&l->lock);
    l->save.done = 0;
    if (pthread_create(&l->save.thread, NULL, saver_main, l) != 0) {
        set_error(l, "publish", "cannot start the saving thread");
        emb_model_free(l->save.model);
        l->save.model = NULL;
        l->phase = PH_IDLE;
        return;
    }
    l->save.running = 1;
    l->phase = PH_SAVE;
}

/* The gate passed and the candidate is saved: by the publish mode
 * (versions.h), it becomes current or waits for POST /train/promote. The
 * trainer goes on from its own state either way. */
static int publish_or_hold(learner *l)
{
    const gate_result *g = &l->gate.res;
    char summary[160];
    snprintf(summary, sizeof summary, "%.64s at step %ld: validation loss %.6g vs %.6g", g->reason,
             g->step, (double)g->cand.val_loss, (double)g->cur.val_loss);
    emb_err err;
    int rc = versions_candidate(l->v, l->save.model, l->save.id, versions_current_id(l->v),
                                summary, &err);
    if (rc < 0) {
        set_error(l, "publish", err.msg);
        return -1;
    }
    pthread_mutex_lock(&l->lock);
    l->published += rc;
    pthread_mutex_unlock(&l->lock);
    metrics_train_publish(l->mx, 1);
    log_line ln;
    const char *what = rc == 1 ? "published" : "saved (pending, POST /train/promote)";
    if (log_begin(&ln, LOG_INFO, "%s model version %u", what, l->save.id)) {
        log_gate(&ln, g);
        log_end(&ln);
    }
    return rc;
}

static void finish_save(learner *l)
{
    pthread_join(l->save.thread, NULL);
    l->save.running = 0;
    if (l->save.rc != 0) {
        set_error(l, "publish: saving the checkpoint", l->save.err);
        emb_model_free(l->save.model);
    } else {
        int rc = publish_or_hold(l);
        if (rc == 1 && l->restart_after_save)
            restart_from_current(l);
        else if (rc == 0) /* a newer candidate replaces a pending one */
            l->whiten_pending = l->restart_after_save ? l->save.id : 0;
    }
    l->restart_after_save = 0;
    l->save.model = NULL;
    l->phase = PH_IDLE;
}

static void end_gate(learner *l)
{
    gate_finish(l);
    l->restart_after_save = l->gate.stage_cand != NULL;
    l->steps_since_publish = 0;
    l->last_publish = mono_seconds();
    pthread_mutex_lock(&l->lock);
    l->last_gate = l->gate.res;
    l->hist_gates[l->hist_gates_n % HISTORY_GATES] = l->gate.res;
    l->hist_gates_n++;
    if (!l->gate.res.passed)
        l->rejected++;
    pthread_mutex_unlock(&l->lock);
    if (l->gate.res.passed) {
        start_save(l);
    } else {
        metrics_train_publish(l->mx, 0);
        log_line ln;
        if (log_begin(&ln, LOG_INFO, "learner: candidate at step %ld (%s) rejected",
                      l->gate.res.step, l->gate.res.stage)) {
            log_gate(&ln, &l->gate.res);
            log_end(&ln);
        }
        l->phase = PH_IDLE;
    }
    emb_model_free(l->gate.stage_cand); /* start_save kept a copy */
    l->gate.stage_cand = NULL;
}

/* One piece of gate work. */
static void gate_work(learner *l)
{
    const int per_side = side_tasks(l);
    const int side_no = l->gate.task / per_side, k = l->gate.task % per_side;
    gate_side *side = side_no == 0 ? &l->gate.res.cand : &l->gate.res.cur;
    model_version *cur = side_no == 1 ? versions_current(l->v) : NULL;
    const emb_model *m = side_no == 1           ? cur->model
                         : l->gate.stage_cand != NULL ? l->gate.stage_cand : l->cand;
    int rc;
    if (k < val_batches(l) && side_no == 1)
        memcpy(l->gate.scratch, cur->model->params, sizeof(float) * l->t->n_enc);
    if (k < val_batches(l))
        rc = gate_val_batch(l, side_no == 0 ? l->ema : l->gate.scratch, k, side_no, side);
    else if (k == val_batches(l))
        rc = gate_collapse(l, m, side);
    else
        rc = gate_sts_chunk(l, m, k - val_batches(l) - 1, side);
    versions_release(l->v, cur);
    if (rc != 0) {
        emb_model_free(l->gate.stage_cand);
        l->gate.stage_cand = NULL;
        l->phase = PH_IDLE;
        l->steps_since_publish = 0;
        l->last_publish = mono_seconds();
        return;
    }
    if (++l->gate.task == l->gate.n_tasks)
        end_gate(l);
}

/* ---- the whitening stage (stages.h) ------------------------------------------------------- */

static void stop_whiten(learner *l)
{
    if (l->whiten != NULL)
        whiten_stage_cancel(l->whiten);
    versions_release(l->v, l->whiten_mv);
    l->whiten_mv = NULL;
}

/* A refit is due when the training texts reached whiten_next (at first
 * --train-whiten-min-texts, then twice the texts of the last refit). */
static int whiten_due(learner *l)
{
    if (l->whiten == NULL)
        return 0;
    samples_stats ss;
    samples_stats_get(l->buf, &ss);
    return (long)ss.train >= l->whiten_next;
}

static void start_whiten(learner *l)
{
    emb_err err;
    const int cap = l->o.whiten_max_texts;
    char **texts = calloc((size_t)cap, sizeof(char *));
    int n = texts != NULL ? samples_draw(l->buf, cap, &l->t->rng, texts, cap) : -1;
    samples_stats ss;
    samples_stats_get(l->buf, &ss);
    l->whiten_next = 2 * (long)ss.train;
    if (n < 2) {
        for (int i = 0; i < n; i++)
            free(texts[i]);
        free(texts);
        return;
    }
    l->whiten_mv = versions_current(l->v);
    if (whiten_stage_begin(l->whiten, l->whiten_mv->model, texts, n, &err) != 0) {
        set_error(l, "whitening stage", err.msg);
        stop_whiten(l);
        return;
    }
    l->phase = PH_WHITEN;
}

/* One chunk of the refit; at the end the candidate goes to the gate. */
static void whiten_work(learner *l)
{
    emb_err err;
    int rc = whiten_stage_work(l->whiten, &err);
    if (rc == 1)
        return;
    emb_model *c = rc == 0 ? whiten_stage_finish(l->whiten, &err) : NULL;
    stop_whiten(l);
    l->phase = PH_IDLE;
    if (c == NULL) {
        set_error(l, "whitening stage", err.msg);
        return;
    }
    l->gate.stage_cand = c;
    start_gate(l);
    if (l->phase != PH_GATE) {
        emb_model_free(l->gate.stage_cand);
        l->gate.stage_cand = NULL;
    }
}

/* ---- rollback ------------------------------------------------------------------------------ */

int learner_rollback(learner *l, uint32_t id, emb_err *err)
{
    if (versions_rollback(l->v, id, err) != 0)
        return -1;
    pthread_mutex_lock(&l->lock);
    l->rollback_pending = 1;
    pthread_mutex_unlock(&l->lock);
    batcher_wake(l->b);
    return 0;
}

/* On the compute thread: training restarts from the current version. */
static void apply_rollback(learner *l)
{
    stop_whiten(l);
    emb_model_free(l->gate.stage_cand);
    l->gate.stage_cand = NULL;
    restart_from_current(l);
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

/* What to tell the batcher when there is nothing to do now: rest until
 * woken, unless re-embedding is unfinished (a failed chunk is retried) or
 * a gate comes due by time. */
static int idle_answer(learner *l, int rest)
{
    if (l->st != NULL && store_vectors_version(l->st) != store_target_version(l->st))
        return BATCHER_IDLE_LATER;
    return rest ? BATCHER_IDLE_REST : BATCHER_IDLE_LATER;
}

int learner_idle(void *ctx)
{
    learner *l = ctx;
    double t0 = mono_seconds();
    pthread_mutex_lock(&l->lock);
    int paused = l->paused, saver_done = l->save.done;
    int rollback = l->rollback_pending && l->phase != PH_SAVE; /* after a save completes */
    if (rollback)
        l->rollback_pending = 0;
    int changed = l->version_changed && l->phase != PH_SAVE;
    if (changed)
        l->version_changed = 0;
    pthread_mutex_unlock(&l->lock);
    /* a pending whitening candidate was promoted: train on from it */
    if (changed && l->whiten_pending != 0 && versions_current_id(l->v) == l->whiten_pending) {
        rollback = 1;
        l->whiten_pending = 0;
    }
    if (l->cluster.leader != NULL) {
        int lead = l->cluster.leader(l->cluster.ctx);
        if (lead && !l->was_leader && l->t != NULL && l->phase != PH_SAVE)
            rollback = 1; /* train on from the cluster's newest version */
        l->was_leader = lead;
        if (!lead)
            return BATCHER_IDLE_LATER; /* another replica trains and re-embeds */
    }
    if (rollback && l->t != NULL)
        apply_rollback(l);
    if (reembedder_work(l->re))
        return BATCHER_IDLE_MORE;
    if (!l->o.enabled || l->t == NULL)
        return idle_answer(l, 1);
    if (l->phase == PH_SAVE) {
        if (!saver_done)
            return idle_answer(l, 1); /* the saving thread wakes us */
        finish_save(l);
        return BATCHER_IDLE_MORE;
    }
    if (paused && l->phase != PH_STEP && l->phase != PH_APPLY)
        return idle_answer(l, 1); /* learner_resume wakes us */
    if (!duty_allows(l, t0))
        return BATCHER_IDLE_LATER;
    int more = BATCHER_IDLE_MORE;
    if (l->phase == PH_GATE) {
        gate_work(l);
    } else if (l->phase == PH_STEP) {
        if (emb_train_advance(l->t, &l->step_st) == 0)
            finish_step(l);
    } else if (l->phase == PH_APPLY) {
        apply_work(l);
    } else if (l->phase == PH_WHITEN) {
        whiten_work(l);
    } else if (gate_due(l)) {
        start_gate(l);
    } else if (whiten_due(l)) {
        start_whiten(l);
    } else {
        samples_stats ss;
        samples_stats_get(l->buf, &ss);
        if ((long)ss.train < l->o.min_samples)
            more = idle_answer(l, 1); /* new texts wake us */
        else if (!budget_allows(&l->budget)) {
            /* every text used up: rest until new ones come (a gate due by
             * time still runs) */
            atomic_store(&l->resting, 1);
            more = idle_answer(l, !(l->steps_since_publish > 0 && l->o.publish_every_secs > 0));
        } else if (!start_step(l)) {
            more = BATCHER_IDLE_LATER;
        } else {
            atomic_store(&l->resting, 0);
        }
    }
    l->window_busy += mono_seconds() - t0;
    return more;
}

void learner_set_cluster(learner *l, const learner_cluster *c)
{
    l->cluster = *c;
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

/* "name":value pairs, comma-separated (non-finite values as null). */
static void json_numbers(strbuf *b, const char *const *names, const double *v, int n)
{
    for (int i = 0; i < n; i++) {
        sb_printf(b, "%s\"%s\":", i > 0 ? "," : "", names[i]);
        sb_double(b, v[i]);
    }
}

static void side_json(strbuf *b, const char *name, const gate_side *s)
{
    static const char *const names[] = {"val_loss",          "mean_cos",  "variance",
                                        "sts_spearman",      "lexical_agreement",
                                        "uniformity"};
    const double v[] = {s->val_loss, s->mean_cos, s->variance, s->sts, s->lex, s->uniformity};
    sb_printf(b, "\"%s\":{", name);
    json_numbers(b, names, v, 6);
    sb_puts(b, "}");
}

/* A gate decision with its numbers, or null when there was none. */
static void gate_json(strbuf *b, const gate_result *g)
{
    if (!g->valid) {
        sb_puts(b, "null");
        return;
    }
    sb_printf(b, "{\"passed\":%s,\"step\":%ld,\"stage\":\"%s\",\"reason\":",
              g->passed ? "true" : "false", g->step, g->stage != NULL ? g->stage : "gradient");
    sb_json_string(b, g->reason);
    if (g->passed)
        sb_printf(b, ",\"version\":%u", g->candidate_id);
    sb_puts(b, ",");
    side_json(b, "candidate", &g->cand);
    sb_puts(b, ",");
    side_json(b, "current", &g->cur);
    sb_printf(b, ",\"at\":%.3f}", g->at);
}

void learner_history_json(learner *l, strbuf *b)
{
    if (l == NULL) {
        sb_printf(b, "{\"state\":\"off\",\"steps\":[],\"gates\":[],\"capacity\":"
                  "{\"steps\":%d,\"gates\":%d}}", HISTORY_STEPS, HISTORY_GATES);
        return;
    }
    pthread_mutex_lock(&l->lock);
    const char *state = !l->o.enabled ? "off" : l->paused ? "paused" : "running";
    sb_printf(b, "{\"state\":\"%s\",\"steps\":[", state);
    long first = l->hist_n > HISTORY_STEPS ? l->hist_n - HISTORY_STEPS : 0;
    for (long i = first; i < l->hist_n; i++) {
        const history_point *p = &l->hist[i % HISTORY_STEPS];
        static const char *const names[] = {"loss", "simcse_loss", "mlm_loss"};
        const double v[] = {p->loss, p->simcse, p->mlm};
        sb_printf(b, "%s{\"at\":%.3f,\"step\":%ld,", i > first ? "," : "", p->at, p->step);
        json_numbers(b, names, v, 3);
        sb_puts(b, "}");
    }
    sb_puts(b, "],\"gates\":[");
    first = l->hist_gates_n > HISTORY_GATES ? l->hist_gates_n - HISTORY_GATES : 0;
    for (long i = first; i < l->hist_gates_n; i++) {
        if (i > first)
            sb_puts(b, ",");
        gate_json(b, &l->hist_gates[i % HISTORY_GATES]);
    }
    sb_printf(b, "],\"total\":{\"steps\":%ld,\"gates\":%ld},"
              "\"capacity\":{\"steps\":%d,\"gates\":%d}}",
              l->hist_n, l->hist_gates_n, HISTORY_STEPS, HISTORY_GATES);
    pthread_mutex_unlock(&l->lock);
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
              "\"rejected\":%ld,", state, l->steps, l->skipped, l->published, l->rejected);
    static const char *const loss_names[] = {"loss", "loss_avg", "simcse_loss", "mlm_loss"};
    const double losses[] = {l->last_loss, l->loss_ema, l->last_simcse, l->last_mlm};
    json_numbers(b, loss_names, losses, 4);
    sb_puts(b, ",\"last_gate\":");
    gate_json(b, &l->last_gate);
    sb_printf(b, ",\"last_error\":");
    sb_json_string(b, l->last_error);
    pthread_mutex_unlock(&l->lock);
    sb_printf(b, ",\"buffer\":{\"train\":%llu,\"holdout\":%llu,\"bytes\":%llu,\"seen\":%llu,"
              "\"duplicates\":%llu}", (unsigned long long)ss.train,
              (unsigned long long)ss.holdout,
              (unsigned long long)(ss.train_bytes + ss.holdout_bytes),
              (unsigned long long)ss.seen, (unsigned long long)ss.duplicates);
    /* resting: every buffered text used --train-max-epochs times, and the
     * last step, gate and save are done */
    sb_printf(b, ",\"resting\":%s,\"text_uses_left\":%lld",
              l->o.enabled && atomic_load(&l->resting) ? "true" : "false",
              l->o.enabled ? budget_left(&l->budget) : 0LL);
    long done = 0, total = 0;
    uint32_t vec_version = 0, target = 0;
    if (l->st != NULL) {
        store_reembed_progress(l->st, &done, &total);
        vec_version = store_vectors_version(l->st);
        target = store_target_version(l->st);
    }
    /* the fields above are the item store's; "all" counts every store the
     * re-embedder moves (the item store and the collections, reembed.h) */
    reembed_progress all;
    reembedder_progress(l->re, &all);
    sb_printf(b, ",\"reembed\":{\"store_version\":%u,\"target_version\":%u,\"done\":%ld,"
              "\"total\":%ld,\"running\":%s,\"all\":{\"stores\":%ld,\"moving\":%ld,"
              "\"done\":%ld,\"total\":%ld}}", vec_version, target, done, total,
              vec_version != target ? "true" : "false", all.stores, all.moving, all.done,
              all.total);
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
    if (emb_sts_load(&l->gate.sts, l->o.eval_sts, err) != 0)
        return -1;
    l->gate.have_sts = 1;
    const size_t n = (size_t)l->gate.sts.n * (size_t)emb_config_dim(&l->cfg);
    l->gate.sts_a = malloc(sizeof(float) * n);
    l->gate.sts_b = malloc(sizeof(float) * n);
    if (l->gate.sts_a == NULL || l->gate.sts_b == NULL)
        return emb_fail(err, "out of memory for the STS gate");
    return 0;
}

/* Frees what make_workers made. */
static void free_workers(learner *l)
{
    emb_trainer_free(l->t);
    emb_model_free(l->cand);
    emb_workspace_free(l->gate.ws);
    free(l->ema);
    free(l->gate.scratch);
    free(l->save.head);
    l->t = NULL;
    l->cand = NULL;
    l->gate.ws = NULL;
    l->ema = l->gate.scratch = l->save.head = NULL;
}

/* The trainer, the candidate and its EMA, the gate's workspace and buffers
 * for model m: at start, and when a stage changed the model's layout (a
 * whitening module appended). 0, or -1 with err. */
static int make_workers(learner *l, const emb_model *m, emb_err *err)
{
    const learner_opts *o = &l->o;
    l->cfg = m->cfg;
    int ws_tokens = o->holdout_eval_max * o->max_seq_len;
    if (ws_tokens < STS_CHUNK * l->cfg.max_seq_length)
        ws_tokens = STS_CHUNK * l->cfg.max_seq_length;
    l->gate.ws = emb_workspace_new(m, ws_tokens, err);
    if (l->gate.ws == NULL)
        return -1;
    emb_train_config tc = emb_train_config_default();
    tc.objective = o->objective;
    tc.lr = o->lr;
    tc.l2sp = o->l2sp;
    tc.warmup_steps = 20;
    tc.schedule = EMB_SCHED_CONSTANT;
    tc.seed = o->seed;
    l->t = emb_trainer_new(m, o->base_dir, &tc, err);
    if (l->t == NULL)
        return -1;
    if (l->t->anchor != NULL && o->base != NULL && o->base->n_params == l->t->n_enc)
        memcpy(l->t->anchor, o->base->params, sizeof(float) * l->t->n_enc);
    l->cand = emb_model_clone(m, err);
    l->ema = malloc(sizeof(float) * l->t->n_enc);
    l->gate.scratch = malloc(sizeof(float) * l->t->n_enc);
    l->save.head = malloc(sizeof(float) * (l->t->n_params - l->t->n_enc));
    if (l->cand == NULL)
        return -1;
    if (l->ema == NULL || l->gate.scratch == NULL || l->save.head == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for the learner");
    memcpy(l->ema, m->params, sizeof(float) * l->t->n_enc);
    return 0;
}

/* Training restarts from the current version: the trainer is reset to its
 * weights, or rebuilt when its layout differs (a stage appended a Dense
 * module, or a rollback went back before one). */
static void restart_from_current(learner *l)
{
    model_version *mv = versions_current(l->v);
    emb_err err;
    if (mv->model->n_params == l->t->n_enc) {
        emb_trainer_reset(l->t, mv->model->params);
        memcpy(l->ema, mv->model->params, sizeof(float) * l->t->n_enc);
        memcpy(l->cand->params + l->t->dense_at, mv->model->params + l->t->dense_at,
               sizeof(float) * (l->t->n_enc - l->t->dense_at)); /* its Dense block */
    } else {
        free_workers(l);
        if (make_workers(l, mv->model, &err) != 0) {
            set_error(l, "restarting training", err.msg);
            free_workers(l);
        }
    }
    versions_release(l->v, mv);
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
    /* the re-embedder first: the registry's hook starts it, and the store
     * may already have to catch up with the current version */
    l->re = reembedder_new(v, st, report_error, l, err);
    if (l->re == NULL) {
        learner_stop(l);
        return NULL;
    }
    if (reembedder_set_collections(l->re, o->collections, err) != 0) {
        learner_stop(l);
        return NULL;
    }
    versions_hooks hooks = {.on_change = on_version_change, .report = report_error, .ctx = l};
    versions_set_hooks(v, &hooks);
    if (st != NULL && versions_align(v, store_vectors_version(st), err) != 0) {
        learner_stop(l);
        return NULL;
    }
    if (!o->enabled)
        return l; /* re-embedding only */
    model_version *mv = versions_current(v);
    samples_opts so;
    samples_opts_init(&so);
    so.seed = o->seed;
    char dir[4096];
    if (o->data_dir != NULL)
        snprintf(dir, sizeof dir, "%s", o->data_dir);
    l->buf = samples_open(o->data_dir != NULL && o->persist_samples ? dir : NULL, &so, err);
    if (l->buf != NULL) {
        samples_stats ss;
        samples_stats_get(l->buf, &ss);
        budget_init(&l->budget, o->max_epochs, (long long)ss.train);
    }
    const int B = o->batch_size;
    int rc = l->buf != NULL ? make_workers(l, mv->model, err) : -1;
    versions_release(v, mv);
    l->ids = malloc(sizeof(int32_t) * (size_t)B * (size_t)o->max_seq_len);
    l->lens = malloc(sizeof(int) * (size_t)B);
    l->texts = calloc((size_t)B, sizeof(char *));
    if (o->whiten && rc == 0)
        l->whiten = whiten_stage_new(o->whiten_shrink, o->max_seq_len, err);
    l->whiten_next = o->whiten_min_texts;
    if (rc != 0 || (o->whiten && l->whiten == NULL) || l->ids == NULL || l->lens == NULL ||
        l->texts == NULL || load_sts(l, err) != 0) {
        if (rc == 0 && (l->ids == NULL || l->texts == NULL || l->lens == NULL))
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
    if (l->whiten_mv != NULL)
        stop_whiten(l);
    versions_hooks none = {0};
    if (l->re != NULL)
        versions_set_hooks(l->v, &none);
    if (l->save.running)
        pthread_join(l->save.thread, NULL);
    emb_model_free(l->save.model);
    if (l->buf != NULL) {
        emb_err err;
        if (samples_flush(l->buf, &err) != 0)
            log_msg(LOG_WARN, "learner: flushing the sample buffer: %s", err.msg);
        samples_close(l->buf);
    }
    free_workers(l);
    whiten_stage_free(l->whiten);
    emb_model_free(l->gate.stage_cand);
    free(l->gate.lex_a);
    free(l->gate.lex_b);
    free(l->gate.lex_sim);
    reembedder_free(l->re);
    emb_batch_free(&l->batch);
    free(l->ids);
    free(l->lens);
    free(l->texts);
    free(l->gate.h_ids);
    free(l->gate.h_lens);
    if (l->gate.have_sts)
        emb_sts_free(&l->gate.sts);
    free(l->gate.sts_a);
    free(l->gate.sts_b);
    pthread_mutex_destroy(&l->lock);
    free(l);
}
