/* train.c: forward with kept activations, losses, backward and AdamW for
 * the encoder. See train.h for the batch layout and the objectives, and
 * ops_train.h for the kernels. */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>
#undef I /* cblas.h brings complex.h; I is the FFN size here */

#include "ops.h"
#include "safetensors.h"

/* ---- configuration and schedule ----------------------------------------- */

emb_train_config emb_train_config_default(void)
{
    emb_train_config tc = {
        .objective = EMB_OBJ_SIMCSE,
        .simcse_weight = 1.0f,
        .mlm_weight = 1.0f,
        .temperature = 0.05f,
        .mlm_prob = 0.15f,
        .hidden_dropout = -1.0f,
        .attn_dropout = -1.0f,
        .l2sp = 0.0f,
        .lr = 3e-5f,
        .weight_decay = 0.01f,
        .beta1 = 0.9f,
        .beta2 = 0.999f,
        .adam_eps = 1e-6f,
        .clip_norm = 1.0f,
        .warmup_steps = 0,
        .total_steps = 0,
        .schedule = EMB_SCHED_LINEAR,
        .seed = 42,
    };
    return tc;
}

float emb_lr_at(const emb_train_config *tc, long step)
{
    if (step < 1)
        step = 1;
    if (tc->warmup_steps > 0 && step <= tc->warmup_steps)
        return tc->lr * (float)step / (float)tc->warmup_steps;
    if (tc->total_steps <= tc->warmup_steps || tc->schedule == EMB_SCHED_CONSTANT)
        return tc->lr;
    double span = (double)(tc->total_steps - tc->warmup_steps);
    double progress = (double)(step - tc->warmup_steps) / span;
    if (progress > 1.0)
        progress = 1.0;
    if (tc->schedule == EMB_SCHED_COSINE)
        return (float)(tc->lr * 0.5 * (1.0 + cos(M_PI * progress)));
    return (float)(tc->lr * (1.0 - progress));
}

/* ---- parameter layout ---------------------------------------------------- */

void emb_head_sizes(const emb_config *cfg, size_t sizes[EMB_N_HEAD_TENSORS])
{
    size_t C = (size_t)cfg->hidden_size, V = (size_t)cfg->vocab_size;
    sizes[0] = C * C;
    sizes[1] = C;
    sizes[2] = C;
    sizes[3] = C;
    sizes[4] = V;
}

void emb_head_point(emb_mlm_head *h, float *base, const emb_config *cfg)
{
    size_t sizes[EMB_N_HEAD_TENSORS];
    emb_head_sizes(cfg, sizes);
    float **ptrs[EMB_N_HEAD_TENSORS] = {&h->dense_w, &h->dense_b, &h->ln_w, &h->ln_b, &h->bias};
    for (int i = 0; i < EMB_N_HEAD_TENSORS; i++) {
        *ptrs[i] = base;
        base += sizes[i];
    }
}

static const char *const head_names[EMB_N_HEAD_TENSORS] = {
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.bias",
};

/* Weight decay applies to matrices and embeddings, not to biases or
 * LayerNorm parameters (the usual BERT recipe). */
static void fill_decay_mask(emb_trainer *t)
{
    size_t enc[EMB_N_PARAM_TENSORS], head[EMB_N_HEAD_TENSORS];
    emb_param_sizes(&t->cfg, enc);
    emb_head_sizes(&t->cfg, head);
    static const int enc_decays[EMB_N_PARAM_TENSORS] = {1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0,
                                                         1, 0, 1, 0, 0, 0};
    static const int head_decays[EMB_N_HEAD_TENSORS] = {1, 0, 0, 0, 0};
    float *p = t->decay_mask;
    for (int i = 0; i < EMB_N_PARAM_TENSORS; i++) {
        for (size_t j = 0; j < enc[i]; j++)
            *p++ = (float)enc_decays[i];
    }
    for (size_t j = t->dense_at; j < t->n_enc; j++)
        *p++ = 0.0f; /* the Dense block is frozen: no update at all */
    for (int i = 0; i < EMB_N_HEAD_TENSORS; i++) {
        for (size_t j = 0; j < head[i]; j++)
            *p++ = (float)head_decays[i];
    }
}

static float rng_normal(emb_rng *r)
{
    float u1 = emb_rng_uniform(r), u2 = emb_rng_uniform(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(2.0f * (float)M_PI * u2);
}

static void init_head(emb_trainer *t)
{
    const int C = t->cfg.hidden_size;
    for (long i = 0; i < (long)C * C; i++)
        t->hw.dense_w[i] = 0.02f * rng_normal(&t->rng);
    memset(t->hw.dense_b, 0, sizeof(float) * (size_t)C);
    for (int i = 0; i < C; i++)
        t->hw.ln_w[i] = 1.0f;
    memset(t->hw.ln_b, 0, sizeof(float) * (size_t)C);
    memset(t->hw.bias, 0, sizeof(float) * (size_t)t->cfg.vocab_size);
}

int emb_head_load(const char *dir, const emb_config *cfg, float *head, emb_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return 0;
    fclose(fp);
    emb_st_file f;
    if (emb_st_open(&f, path, err) != 0)
        return -1;
    size_t sizes[EMB_N_HEAD_TENSORS];
    emb_head_sizes(cfg, sizes);
    emb_mlm_head h;
    emb_head_point(&h, head, cfg);
    float *dst[EMB_N_HEAD_TENSORS] = {h.dense_w, h.dense_b, h.ln_w, h.ln_b, h.bias};
    int rc = 1;
    for (int i = 0; i < EMB_N_HEAD_TENSORS && rc == 1; i++) {
        char prefixed[128];
        snprintf(prefixed, sizeof prefixed, "bert.%s", head_names[i]);
        const emb_st_tensor *tt = emb_st_find(&f, head_names[i]);
        if (tt == NULL)
            tt = emb_st_find(&f, prefixed);
        if (tt == NULL) {
            rc = 0;
        } else if (emb_st_numel(tt) != (int64_t)sizes[i]) {
            rc = emb_fail(err, "%s: tensor '%s' has %lld values, expected %zu", path, tt->name,
                          (long long)emb_st_numel(tt), sizes[i]);
        } else if (emb_st_read_f32(&f, tt, dst[i], err) != 0) {
            rc = -1;
        }
    }
    emb_st_close(&f);
    return rc;
}

/* ---- activations ---------------------------------------------------------- */

struct emb_train_acts {
    int T, S, B;             /* tokens, sequences, SimCSE texts */
    long P;                  /* attention probabilities per layer */
    int M;                   /* MLM targets */
    size_t cap_T, cap_S, cap_P, cap_M;
    /* forward, kept for the backward */
    float *emb_sum, *emb_mean, *emb_rstd, *emb_mask;
    float *x;                /* (L+1, T, C) layer inputs; x[L] the last hidden state */
    float *qkv;              /* (L, T, 3C) */
    float *probs, *amask;    /* (L, P) */
    float *att;              /* (L, T, C) */
    float *ln1_in, *ln1_mean, *ln1_rstd, *mask1, *xmid;
    float *ffn_pre, *ffn_act; /* (L, T, I) */
    float *ln2_in, *ln2_mean, *ln2_rstd, *mask2;
    long *probs_off;         /* (S + 1) */
    /* backward */
    float *dx, *dtmp, *dmid, *dqkv, *datt, *dffn, *attn_scratch;
    long attn_scratch_floats;
    /* SimCSE; W = the widest of C and the Dense outputs, D the model's dimension */
    float *pooled, *dpooled;                              /* (2B, C) */
    float *dense_out;                                     /* (2B, sum of Dense outputs) */
    float *unit, *dunit, *ddense;                         /* (2B, D), (2B, D), (2B, W) */
    float *norms, *sim;                                   /* (2B), (B, B) */
    /* MLM */
    int *seq_labels;                                      /* (S) InfoNCE targets */
    int *mlm_rows, *mlm_labels;                           /* (M) */
    float *mh, *ma, *mg, *mn, *mmean, *mrstd, *dm1, *dm2; /* (M, C) and (M) */
    float *logits;                                        /* (M, V) */
};

static void acts_free(emb_train_acts *a)
{
    if (a == NULL)
        return;
    float **bufs[] = {&a->emb_sum, &a->emb_mean, &a->emb_rstd, &a->emb_mask, &a->x, &a->qkv,
                      &a->probs, &a->amask, &a->att, &a->ln1_in, &a->ln1_mean, &a->ln1_rstd,
                      &a->mask1, &a->xmid, &a->ffn_pre, &a->ffn_act, &a->ln2_in, &a->ln2_mean,
                      &a->ln2_rstd, &a->mask2, &a->dx, &a->dtmp, &a->dmid, &a->dqkv, &a->datt,
                      &a->dffn, &a->attn_scratch, &a->pooled, &a->unit, &a->norms, &a->dunit,
                      &a->dpooled, &a->dense_out, &a->ddense, &a->sim, &a->mh, &a->ma, &a->mg,
                      &a->mn, &a->mmean, &a->mrstd, &a->dm1, &a->dm2, &a->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(*bufs[i]);
    free(a->probs_off);
    free(a->seq_labels);
    free(a->mlm_rows);
    free(a->mlm_labels);
    free(a);
}

static int realloc_floats(float **p, size_t n)
{
    float *q = realloc(*p, (n ? n : 1) * sizeof(float));
    if (q == NULL)
        return -1;
    *p = q;
    return 0;
}

/* Grows cap to at least need (by half again), reporting whether it grew. */
static int grow_cap(size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap + *cap / 2;
    *cap = c > need ? c : need;
    return 1;
}

static int acts_reserve_tokens(emb_train_acts *a, const emb_config *c, size_t T)
{
    if (!grow_cap(&a->cap_T, T))
        return 0;
    const size_t n = a->cap_T, C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    const size_t L = (size_t)c->num_hidden_layers;
    struct { float **p; size_t n; } want[] = {
        {&a->emb_sum, n * C}, {&a->emb_mean, n}, {&a->emb_rstd, n}, {&a->emb_mask, n * C},
        {&a->x, (L + 1) * n * C}, {&a->qkv, L * n * 3 * C}, {&a->att, L * n * C},
        {&a->ln1_in, L * n * C}, {&a->ln1_mean, L * n}, {&a->ln1_rstd, L * n},
        {&a->mask1, L * n * C}, {&a->xmid, L * n * C}, {&a->ffn_pre, L * n * I},
        {&a->ffn_act, L * n * I}, {&a->ln2_in, L * n * C}, {&a->ln2_mean, L * n},
        {&a->ln2_rstd, L * n}, {&a->mask2, L * n * C}, {&a->dx, n * C}, {&a->dtmp, n * C},
        {&a->dmid, n * C}, {&a->dqkv, n * 3 * C}, {&a->datt, n * C}, {&a->dffn, n * I},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (realloc_floats(want[i].p, want[i].n) != 0)
            return -1;
    }
    return 0;
}

/* The widest of C and the Dense outputs, and the sum of the Dense outputs. */
static size_t head_width(const emb_config *c, size_t *sum_out)
{
    size_t w = (size_t)c->hidden_size;
    *sum_out = 0;
    for (int k = 0; k < c->n_dense; k++) {
        size_t o = (size_t)c->dense[k].out_features;
        w = o > w ? o : w;
        *sum_out += o;
    }
    return w;
}

static int acts_reserve_seqs(emb_train_acts *a, const emb_config *c, size_t S)
{
    if (!grow_cap(&a->cap_S, S))
        return 0;
    size_t sum_out = 0;
    const size_t n = a->cap_S, C = (size_t)c->hidden_size, W = head_width(c, &sum_out);
    long *off = realloc(a->probs_off, sizeof(long) * (n + 1));
    if (off == NULL)
        return -1;
    a->probs_off = off;
    int *labels = realloc(a->seq_labels, sizeof(int) * n);
    if (labels == NULL)
        return -1;
    a->seq_labels = labels;
    struct { float **p; size_t n; } want[] = {
        {&a->pooled, n * C}, {&a->dpooled, n * C}, {&a->dense_out, n * sum_out},
        {&a->unit, n * W}, {&a->dunit, n * W}, {&a->ddense, n * W},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (realloc_floats(want[i].p, want[i].n) != 0)
            return -1;
    }
    if (realloc_floats(&a->norms, n) != 0 || realloc_floats(&a->sim, n * n) != 0)
        return -1;
    return 0;
}

static int acts_reserve_probs(emb_train_acts *a, const emb_config *c, size_t P)
{
    if (!grow_cap(&a->cap_P, P))
        return 0;
    const size_t L = (size_t)c->num_hidden_layers;
    if (realloc_floats(&a->probs, L * a->cap_P) != 0 || realloc_floats(&a->amask, L * a->cap_P))
        return -1;
    return 0;
}

static int acts_reserve_mlm(emb_train_acts *a, const emb_config *c, size_t M)
{
    if (!grow_cap(&a->cap_M, M))
        return 0;
    const size_t n = a->cap_M, C = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    int *rows = realloc(a->mlm_rows, sizeof(int) * n);
    if (rows == NULL)
        return -1;
    a->mlm_rows = rows;
    int *labels = realloc(a->mlm_labels, sizeof(int) * n);
    if (labels == NULL)
        return -1;
    a->mlm_labels = labels;
    float **bufs[] = {&a->mh, &a->ma, &a->mg, &a->mn, &a->dm1, &a->dm2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (realloc_floats(bufs[i], n * C) != 0)
            return -1;
    }
    if (realloc_floats(&a->mmean, n) || realloc_floats(&a->mrstd, n) ||
        realloc_floats(&a->logits, n * V))
        return -1;
    return 0;
}

static int max_seq_len(const int *seq_off, int S)
{
    int m = 1;
    for (int s = 0; s < S; s++) {
        if (seq_off[s + 1] - seq_off[s] > m)
            m = seq_off[s + 1] - seq_off[s];
    }
    return m;
}

/* Sizes every buffer for batch b. */
static int acts_prepare(emb_trainer *t, const emb_batch *b, emb_err *err)
{
    emb_train_acts *a = t->acts;
    const emb_config *c = &t->cfg;
    if (acts_reserve_tokens(a, c, (size_t)b->T) || acts_reserve_seqs(a, c, (size_t)b->S))
        return emb_fail(err, "out of memory for training activations of %d tokens", b->T);
    attention_probs_offsets(a->probs_off, b->seq_off, b->S, c->num_attention_heads);
    if (acts_reserve_probs(a, c, (size_t)a->probs_off[b->S]))
        return emb_fail(err, "out of memory for attention probabilities");
    int M = 0;
    for (int i = b->seq_off[b->n_simcse]; i < b->T; i++)
        M += b->labels[i] >= 0;
    if (acts_reserve_mlm(a, c, (size_t)M))
        return emb_fail(err, "out of memory for %d MLM targets", M);
    M = 0;
    for (int i = b->seq_off[b->n_simcse]; i < b->T; i++) {
        if (b->labels[i] >= 0) {
            a->mlm_rows[M] = i;
            a->mlm_labels[M] = b->labels[i];
            M++;
        }
    }
    long scratch = attention_backward_scratch_floats(max_seq_len(b->seq_off, b->S),
                                                     omp_get_max_threads());
    if (scratch > a->attn_scratch_floats) {
        if (realloc_floats(&a->attn_scratch, (size_t)scratch) != 0)
            return emb_fail(err, "out of memory for attention scratch");
        a->attn_scratch_floats = scratch;
    }
    a->T = b->T;
    a->S = b->S;
    a->B = b->n_texts;
    a->P = a->probs_off[b->S];
    a->M = M;
    return 0;
}

/* ---- the trainer ---------------------------------------------------------- */

emb_trainer *emb_trainer_new(const emb_model *model, const char *head_dir,
                             const emb_train_config *tc, emb_err *err)
{
    emb_trainer *t = calloc(1, sizeof *t);
    if (t == NULL) {
        emb_fail(err, "out of memory");
        return NULL;
    }
    t->cfg = model->cfg;
    t->tc = *tc;
    t->special = emb_tokenizer_specials(model->tok);
    if (t->tc.hidden_dropout < 0)
        t->tc.hidden_dropout = model->cfg.hidden_dropout_prob;
    if (t->tc.attn_dropout < 0)
        t->tc.attn_dropout = model->cfg.attention_probs_dropout_prob;
    if ((t->tc.objective & EMB_OBJ_MLM) && t->special.mask_id < 0) {
        emb_fail(err, "masked-token prediction needs a [MASK] token in the vocabulary");
        goto fail;
    }
    if (t->tc.objective != EMB_OBJ_PAIRS &&
        (t->tc.objective == 0 || (t->tc.objective & ~EMB_OBJ_BOTH))) {
        emb_fail(err, "unknown training objective %d", t->tc.objective);
        goto fail;
    }
    size_t head[EMB_N_HEAD_TENSORS];
    emb_head_sizes(&t->cfg, head);
    t->n_enc = model->n_params;
    t->dense_at = emb_encoder_floats(&t->cfg);
    t->n_params = t->n_enc;
    for (int i = 0; i < EMB_N_HEAD_TENSORS; i++)
        t->n_params += head[i];
    t->params = malloc(sizeof(float) * t->n_params);
    t->grads = calloc(t->n_params, sizeof(float));
    t->m = calloc(t->n_params, sizeof(float));
    t->v = calloc(t->n_params, sizeof(float));
    t->decay_mask = malloc(sizeof(float) * t->n_params);
    t->acts = calloc(1, sizeof *t->acts);
    if (t->params == NULL || t->grads == NULL || t->m == NULL || t->v == NULL ||
        t->decay_mask == NULL || t->acts == NULL) {
        emb_fail(err, "out of memory for %zu trainable parameters", t->n_params);
        goto fail;
    }
    memcpy(t->params, model->params, sizeof(float) * t->n_enc);
    emb_weights_point(&t->w, t->params, &t->cfg);
    emb_weights_point(&t->gw, t->grads, &t->cfg);
    emb_dense_point(t->dw, t->params + t->dense_at, &t->cfg);
    emb_head_point(&t->hw, t->params + t->n_enc, &t->cfg);
    emb_head_point(&t->ghw, t->grads + t->n_enc, &t->cfg);
    fill_decay_mask(t);
    emb_rng_seed(&t->rng, tc->seed);
    int got = head_dir != NULL ? emb_head_load(head_dir, &t->cfg, t->params + t->n_enc, err) : 0;
    if (got < 0)
        goto fail;
    if (got == 0)
        init_head(t);
    if (t->tc.l2sp > 0) {
        t->anchor = malloc(sizeof(float) * t->n_enc);
        if (t->anchor == NULL) {
            emb_fail(err, "out of memory for the L2-SP anchor");
            goto fail;
        }
        memcpy(t->anchor, t->params, sizeof(float) * t->n_enc);
    }
    return t;
fail:
    emb_trainer_free(t);
    return NULL;
}

void emb_trainer_free(emb_trainer *t)
{
    if (t == NULL)
        return;
    free(t->params);
    free(t->grads);
    free(t->m);
    free(t->v);
    free(t->anchor);
    free(t->decay_mask);
    acts_free(t->acts);
    free(t);
}

void emb_trainer_reset(emb_trainer *t, const float *weights)
{
    if (weights != NULL)
        memcpy(t->params, weights, sizeof(float) * t->n_enc);
    memset(t->m, 0, sizeof(float) * t->n_params);
    memset(t->v, 0, sizeof(float) * t->n_params);
    t->step = 0;
}

int emb_trainer_export(const emb_trainer *t, emb_model *model, emb_err *err)
{
    if (model->n_params != t->n_enc)
        return emb_fail(err, "export: the model has %zu parameters, the trainer %zu",
                        model->n_params, t->n_enc);
    memcpy(model->params, t->params, sizeof(float) * t->n_enc);
    return emb_model_pack(model, err);
}

/* ---- batches -------------------------------------------------------------- */

void emb_batch_free(emb_batch *b)
{
    free(b->ids);
    free(b->seq_off);
    free(b->labels);
    memset(b, 0, sizeof *b);
}

static int batch_reserve(emb_batch *b, int T, int S)
{
    if (T > b->cap_T) {
        int32_t *ids = realloc(b->ids, sizeof(int32_t) * (size_t)T);
        if (ids == NULL)
            return -1;
        b->ids = ids;
        int *labels = realloc(b->labels, sizeof(int) * (size_t)T);
        if (labels == NULL)
            return -1;
        b->labels = labels;
        b->cap_T = T;
    }
    if (S + 1 > b->cap_S) {
        int *off = realloc(b->seq_off, sizeof(int) * (size_t)(S + 1));
        if (off == NULL)
            return -1;
        b->seq_off = off;
        b->cap_S = S + 1;
    }
    return 0;
}

/* Appends the n texts to b, as they are (labels -1). */
static void batch_append(emb_batch *b, const int32_t *ids, const int *lens, int n)
{
    long t0 = 0;
    for (int i = 0; i < n; i++) {
        memcpy(b->ids + b->T, ids + t0, sizeof(int32_t) * (size_t)lens[i]);
        for (int j = 0; j < lens[i]; j++)
            b->labels[b->T + j] = -1;
        t0 += lens[i];
        b->T += lens[i];
        b->seq_off[++b->S] = b->T;
    }
}

/* BERT's masking of the MLM copy, tokens [from, b->T): each ordinary token
 * is chosen with probability mlm_prob; a chosen token becomes [MASK] (80%),
 * a random id (10%) or stays (10%), and its label is the original id. */
static void batch_mask(emb_trainer *t, emb_batch *b, int from)
{
    const emb_special_tokens *sp = &t->special;
    for (int i = from; i < b->T; i++) {
        int32_t id = b->ids[i];
        if (id == sp->cls_id || id == sp->sep_id || id == sp->pad_id)
            continue;
        if (emb_rng_uniform(&t->rng) >= t->tc.mlm_prob)
            continue;
        b->labels[i] = id;
        float r = emb_rng_uniform(&t->rng);
        if (r < 0.8f)
            b->ids[i] = sp->mask_id;
        else if (r < 0.9f)
            b->ids[i] = (int32_t)(emb_rng_next(&t->rng) % (uint64_t)t->cfg.vocab_size);
    }
}

int emb_batch_build(emb_trainer *t, emb_batch *b, const int32_t *ids, const int *lens, int n,
                    emb_err *err)
{
    if (n < 1)
        return emb_fail(err, "empty training batch");
    long total = 0;
    for (int i = 0; i < n; i++) {
        if (lens[i] < 2 || lens[i] > t->cfg.max_position_embeddings)
            return emb_fail(err, "training text %d has %d tokens; must be 2..%d", i, lens[i],
                            t->cfg.max_position_embeddings);
        total += lens[i];
    }
    for (long i = 0; i < total; i++) {
        if (ids[i] < 0 || ids[i] >= t->cfg.vocab_size)
            return emb_fail(err, "token id %d out of range", ids[i]);
    }
    const int pairs = t->tc.objective == EMB_OBJ_PAIRS;
    if (pairs && n % 2 != 0)
        return emb_fail(err, "a pairs batch needs an even number of texts, got %d", n);
    const int simcse = (t->tc.objective & EMB_OBJ_SIMCSE) != 0;
    const int mlm = (t->tc.objective & EMB_OBJ_MLM) != 0;
    const int copies = pairs ? 1 : 2 * simcse + mlm;
    if (total * copies > (1L << 30))
        return emb_fail(err, "training batch too large");
    if (batch_reserve(b, (int)(total * copies), n * copies) != 0)
        return emb_fail(err, "out of memory for a training batch");
    b->n_texts = pairs ? n / 2 : n;
    b->n_simcse = simcse ? 2 * n : pairs ? n : 0;
    b->n_mlm = mlm ? n : 0;
    b->S = 0;
    b->T = 0;
    b->seq_off[0] = 0;
    if (pairs)
        batch_append(b, ids, lens, n);
    if (simcse) {
        batch_append(b, ids, lens, n);
        batch_append(b, ids, lens, n);
    }
    if (mlm) {
        int from = b->T;
        batch_append(b, ids, lens, n);
        batch_mask(t, b, from);
    }
    return 0;
}

/* ---- dropout masks -------------------------------------------------------- */

static void mask_views(const emb_trainer *t, float **masks, long *sizes)
{
    const emb_train_acts *a = t->acts;
    const long TC = (long)a->T * t->cfg.hidden_size;
    masks[0] = a->emb_mask;
    sizes[0] = TC;
    for (int l = 0; l < t->cfg.num_hidden_layers; l++) {
        masks[1 + 3 * l] = a->amask + (long)l * a->P;
        sizes[1 + 3 * l] = a->P;
        masks[2 + 3 * l] = a->mask1 + (long)l * TC;
        sizes[2 + 3 * l] = TC;
        masks[3 + 3 * l] = a->mask2 + (long)l * TC;
        sizes[3 + 3 * l] = TC;
    }
}

int emb_train_prepare(emb_trainer *t, const emb_batch *b, float **masks, long *sizes,
                      emb_err *err)
{
    if (acts_prepare(t, b, err) != 0)
        return -1;
    mask_views(t, masks, sizes);
    return 0;
}

static void draw_masks(emb_trainer *t)
{
    const int n = 1 + 3 * t->cfg.num_hidden_layers;
    float *masks[1 + 3 * 64];
    long sizes[1 + 3 * 64];
    mask_views(t, masks, sizes);
    for (int i = 0; i < n; i++) {
        float p = (i % 3 == 1) ? t->tc.attn_dropout : t->tc.hidden_dropout;
        dropout_mask_fill(masks[i], sizes[i], p, &t->rng);
    }
}

/* ---- forward ---------------------------------------------------------------- */

static void add_inplace(float *x, const float *y, long n)
{
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++)
        x[i] += y[i];
}

/* Embeddings, their LayerNorm and dropout, into x[0]. */
static void embed_forward(emb_trainer *t, const emb_batch *b, int use_masks)
{
    emb_train_acts *a = t->acts;
    const emb_config *c = &t->cfg;
    const emb_weights *w = &t->w;
    const int T = a->T, C = c->hidden_size;
    embeddings_forward(a->emb_sum, b->ids, b->seq_off, a->S, w->wte, w->wpe, w->wtt, C);
    layernorm_forward_train(a->x, a->emb_mean, a->emb_rstd, a->emb_sum, w->emb_lnw, w->emb_lnb,
                            T, C, c->layer_norm_eps);
    if (use_masks)
        mul_mask_inplace(a->x, a->emb_mask, (long)T * C);
}

/* Encoder layer l, from x[l] into x[l+1], keeping its activations, in two
 * halves (part 0: attention block up to LN1; part 1: the FFN block). */
static void layer_forward(emb_trainer *t, const emb_batch *b, int l, int part, int use_masks)
{
    emb_train_acts *a = t->acts;
    const emb_config *c = &t->cfg;
    const emb_weights *w = &t->w;
    const int T = a->T, S = a->S, C = c->hidden_size, I = c->intermediate_size;
    const int NH = c->num_attention_heads;
    const long TC = (long)T * C, TI = (long)T * I, lC = (long)l * C;
    const float eps = c->layer_norm_eps;
    float *xin = a->x + l * TC, *qkv = a->qkv + l * 3 * TC, *att = a->att + l * TC;
    float *ln1_in = a->ln1_in + l * TC, *xmid = a->xmid + l * TC;
    float *ffn_pre = a->ffn_pre + l * TI, *ffn_act = a->ffn_act + l * TI;
    float *ln2_in = a->ln2_in + l * TC;
    if (part == 0) {
        matmul_forward(qkv, xin, w->qkvw + lC * 3 * C, w->qkvb + lC * 3, T, C, 3 * C);
        attention_forward_train(att, a->probs + l * a->P, qkv,
                                use_masks ? a->amask + l * a->P : NULL, a->probs_off,
                                b->seq_off, S, C, NH);
        matmul_forward(ln1_in, att, w->attn_ow + lC * C, w->attn_ob + lC, T, C, C);
        if (use_masks)
            mul_mask_inplace(ln1_in, a->mask1 + l * TC, TC);
        add_inplace(ln1_in, xin, TC);
        layernorm_forward_train(xmid, a->ln1_mean + (long)l * T, a->ln1_rstd + (long)l * T,
                                ln1_in, w->ln1w + lC, w->ln1b + lC, T, C, eps);
        return;
    }
    matmul_forward(ffn_pre, xmid, w->fcw + (long)l * I * C, w->fcb + (long)l * I, T, C, I);
    memcpy(ffn_act, ffn_pre, sizeof(float) * (size_t)TI);
    bias_gelu_forward(ffn_act, NULL, T, I);
    matmul_forward(ln2_in, ffn_act, w->fc_projw + lC * I, w->fc_projb + lC, T, I, C);
    if (use_masks)
        mul_mask_inplace(ln2_in, a->mask2 + l * TC, TC);
    add_inplace(ln2_in, xmid, TC);
    layernorm_forward_train(a->x + (l + 1) * TC, a->ln2_mean + (long)l * T,
                            a->ln2_rstd + (long)l * T, ln2_in, w->ln2w + lC, w->ln2b + lC, T, C,
                            eps);
}

/* ---- losses ----------------------------------------------------------------- */

/* The model's Dense modules on S pooled rows, keeping each output for the
 * backward: a->pooled (S, C) -> the returned rows (S, D), a->pooled itself
 * when there are none. */
static const float *dense_stack_forward(emb_trainer *t, int S)
{
    emb_train_acts *a = t->acts;
    const float *in = a->pooled;
    float *out = a->dense_out;
    for (int k = 0; k < t->cfg.n_dense; k++) {
        const emb_dense_config *d = &t->cfg.dense[k];
        dense_forward(out, in, t->dw[k].w, t->dw[k].b, S, d->in_features, d->out_features,
                      (int)d->activation);
        in = out;
        out += (long)S * d->out_features;
    }
    return in;
}

/* The backward of dense_stack_forward into a->dpooled (S, C), for the
 * input only: the Dense weights are frozen (train.h). dz (S, D) is the
 * gradient wrt the last output; it and a->ddense are overwritten. */
static void dense_stack_backward(emb_trainer *t, float *dz, int S)
{
    emb_train_acts *a = t->acts;
    const int n = t->cfg.n_dense;
    long off[EMB_MAX_DENSE + 1];
    off[0] = 0;
    for (int k = 0; k < n; k++)
        off[k + 1] = off[k] + (long)S * t->cfg.dense[k].out_features;
    float *dout = dz, *spare = a->ddense;
    for (int k = n - 1; k >= 0; k--) {
        const emb_dense_config *d = &t->cfg.dense[k];
        const float *in = k > 0 ? a->dense_out + off[k - 1] : a->pooled;
        float *din = k > 0 ? spare : a->dpooled;
        dense_backward(din, NULL, NULL, dout, in, a->dense_out + off[k], t->dw[k].w, S,
                       d->in_features, d->out_features, (int)d->activation);
        spare = dout;
        dout = din;
    }
}

/* InfoNCE over the 2B SimCSE sequences, on z = normalize(Dense(pool(h)));
 * writes the gradient of weight * loss into dx's rows of those sequences.
 * Returns the loss. */
static double simcse_loss(emb_trainer *t, const emb_batch *b, const float *h, float *dx,
                          float weight)
{
    emb_train_acts *a = t->acts;
    const int B = b->n_texts, C = t->cfg.hidden_size, mode = (int)t->cfg.pooling;
    const int D = emb_config_dim(&t->cfg);
    const float inv_tau = 1.0f / t->tc.temperature;
    pool_forward(a->pooled, h, b->seq_off, 2 * B, C, mode);
    const float *z = dense_stack_forward(t, 2 * B);
    l2norm_forward_train(a->unit, a->norms, z, 2 * B, D);
    const float *u1 = a->unit, *u2 = a->unit + (long)B * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, inv_tau, u1, D, u2, D, 0.0f,
                a->sim, B);
    for (int i = 0; i < B; i++)
        a->seq_labels[i] = i;
    double loss;
    if (t->tc.objective == EMB_OBJ_PAIRS)
        loss = infonce_symmetric(a->sim, a->sim + (long)B * B, a->seq_labels, B, weight);
    else
        loss = softmax_cross_entropy(a->sim, a->sim, a->seq_labels, B, B, weight / (float)B) / B;
    float *du1 = a->dunit, *du2 = a->dunit + (long)B * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, D, B, inv_tau, a->sim, B, u2, D,
                0.0f, du1, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, B, D, B, inv_tau, a->sim, B, u1, D,
                0.0f, du2, D);
    if (t->cfg.n_dense == 0) {
        l2norm_backward(a->dpooled, a->dunit, a->unit, a->norms, 2 * B, C);
    } else {
        l2norm_backward(a->dunit, a->dunit, a->unit, a->norms, 2 * B, D);
        dense_stack_backward(t, a->dunit, 2 * B);
    }
    pool_backward(dx, a->dpooled, b->seq_off, 2 * B, C, mode);
    return loss;
}

/* Masked-token prediction on the a->M targets; adds the gradient of
 * weight * loss into dx's target rows. Returns the loss. */
static double mlm_loss(emb_trainer *t, const float *h, float *dx, float weight)
{
    emb_train_acts *a = t->acts;
    const int M = a->M, C = t->cfg.hidden_size, V = t->cfg.vocab_size;
    const float eps = t->cfg.layer_norm_eps;
    if (M == 0)
        return 0.0;
    for (int i = 0; i < M; i++)
        memcpy(a->mh + (long)i * C, h + (long)a->mlm_rows[i] * C, sizeof(float) * (size_t)C);
    matmul_forward(a->ma, a->mh, t->hw.dense_w, t->hw.dense_b, M, C, C);
    memcpy(a->mg, a->ma, sizeof(float) * (size_t)M * C);
    bias_gelu_forward(a->mg, NULL, M, C);
    layernorm_forward_train(a->mn, a->mmean, a->mrstd, a->mg, t->hw.ln_w, t->hw.ln_b, M, C, eps);
    matmul_forward(a->logits, a->mn, t->w.wte, t->hw.bias, M, C, V);
    double loss = softmax_cross_entropy(a->logits, a->logits, a->mlm_labels, M, V,
                                        weight / (float)M) / M;
    matmul_backward(a->dm1, t->gw.wte, t->ghw.bias, a->logits, a->mn, t->w.wte, M, C, V);
    layernorm_backward(a->dm2, t->ghw.ln_w, t->ghw.ln_b, a->dm1, a->mg, a->mmean, a->mrstd,
                       t->hw.ln_w, M, C);
    gelu_backward(a->dm2, a->ma, a->dm2, (long)M * C);
    matmul_backward(a->dm1, t->ghw.dense_w, t->ghw.dense_b, a->dm2, a->mh, t->hw.dense_w, M, C,
                    C);
    for (int i = 0; i < M; i++) {
        float *row = dx + (long)a->mlm_rows[i] * C;
        const float *g = a->dm1 + (long)i * C;
        for (int c = 0; c < C; c++)
            row[c] += g[c];
    }
    return loss;
}

/* ---- backward ----------------------------------------------------------------- */

/* Backward of layer l in two halves, the reverse of layer_forward's: part
 * 1 (the FFN block) takes a->dx, the gradient wrt x[l+1], to a->dmid, the
 * one wrt xmid; part 0 (the attention block) takes a->dmid to a->dx, the
 * gradient wrt x[l]. Both accumulate the parameter gradients. */
static void layer_backward(emb_trainer *t, const emb_batch *b, int l, int part, int use_masks)
{
    emb_train_acts *a = t->acts;
    const emb_config *c = &t->cfg;
    const emb_weights *w = &t->w;
    const emb_weights *g = &t->gw;
    const int T = a->T, S = a->S, C = c->hidden_size, I = c->intermediate_size;
    const int NH = c->num_attention_heads;
    const long TC = (long)T * C, TI = (long)T * I, lC = (long)l * C;
    float *dx = a->dx, *dtmp = a->dtmp, *dmid = a->dmid;
    const float *xin = a->x + l * TC, *qkv = a->qkv + l * 3 * TC, *att = a->att + l * TC;
    const float *xmid = a->xmid + l * TC, *ffn_act = a->ffn_act + l * TI;
    if (part == 1) {
        /* x_out = LN2(xmid + drop(ffn_act W2^T + b2)) */
        layernorm_backward(dmid, g->ln2w + lC, g->ln2b + lC, dx, a->ln2_in + l * TC,
                           a->ln2_mean + (long)l * T, a->ln2_rstd + (long)l * T, w->ln2w + lC,
                           T, C);
        memcpy(dtmp, dmid, sizeof(float) * (size_t)TC);
        if (use_masks)
            mul_mask_inplace(dtmp, a->mask2 + l * TC, TC);
        matmul_backward(a->dffn, g->fc_projw + lC * I, g->fc_projb + lC, dtmp, ffn_act,
                        w->fc_projw + lC * I, T, I, C);
        gelu_backward(a->dffn, a->ffn_pre + l * TI, a->dffn, TI);
        matmul_backward(dtmp, g->fcw + (long)l * I * C, g->fcb + (long)l * I, a->dffn, xmid,
                        w->fcw + (long)l * I * C, T, C, I);
        add_inplace(dmid, dtmp, TC);
        return;
    }
    /* xmid = LN1(xin + drop(att Wo^T + bo)) */
    layernorm_backward(dx, g->ln1w + lC, g->ln1b + lC, dmid, a->ln1_in + l * TC,
                       a->ln1_mean + (long)l * T, a->ln1_rstd + (long)l * T, w->ln1w + lC, T, C);
    memcpy(dtmp, dx, sizeof(float) * (size_t)TC);
    if (use_masks)
        mul_mask_inplace(dtmp, a->mask1 + l * TC, TC);
    matmul_backward(a->datt, g->attn_ow + lC * C, g->attn_ob + lC, dtmp, att, w->attn_ow + lC * C,
                    T, C, C);
    attention_backward(a->dqkv, a->datt, qkv, a->probs + l * a->P,
                       use_masks ? a->amask + l * a->P : NULL, a->probs_off, b->seq_off, S, C, NH,
                       a->attn_scratch);
    matmul_backward(dtmp, g->qkvw + lC * 3 * C, g->qkvb + lC * 3, a->dqkv, xin,
                    w->qkvw + lC * 3 * C, T, C, 3 * C);
    add_inplace(dx, dtmp, TC);
}

static void embed_backward(emb_trainer *t, const emb_batch *b, int use_masks)
{
    emb_train_acts *a = t->acts;
    const emb_weights *w = &t->w;
    const emb_weights *g = &t->gw;
    const int T = a->T, C = t->cfg.hidden_size;
    if (use_masks)
        mul_mask_inplace(a->dx, a->emb_mask, (long)T * C);
    layernorm_backward(a->dtmp, g->emb_lnw, g->emb_lnb, a->dx, a->emb_sum, a->emb_mean,
                       a->emb_rstd, w->emb_lnw, T, C);
    embeddings_backward(g->wte, g->wpe, g->wtt, a->dtmp, b->ids, b->seq_off, a->S, C);
}

static double l2sp_penalty(emb_trainer *t)
{
    if (t->anchor == NULL || t->tc.l2sp <= 0)
        return 0.0;
    const float lambda = t->tc.l2sp;
    double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (long i = 0; i < (long)t->n_enc; i++) {
        float d = t->params[i] - t->anchor[i];
        sum += (double)d * d;
        t->grads[i] += lambda * d;
    }
    return 0.5 * lambda * sum;
}

static double grad_norm(const emb_trainer *t)
{
    double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (long i = 0; i < (long)t->n_params; i++)
        sum += (double)t->grads[i] * t->grads[i];
    return sqrt(sum);
}

/* The losses on the last hidden state; seeds a->dx with their gradient. */
static void losses_forward_backward(emb_trainer *t, const emb_batch *b, emb_step_stats *st)
{
    emb_train_acts *a = t->acts;
    const int C = t->cfg.hidden_size;
    const float *h = a->x + (long)t->cfg.num_hidden_layers * a->T * C;
    const int t_simcse = b->seq_off[b->n_simcse];
    memset(a->dx + (long)t_simcse * C, 0, sizeof(float) * (size_t)(a->T - t_simcse) * (size_t)C);
    if (b->n_simcse > 0) {
        st->simcse_loss = simcse_loss(t, b, h, a->dx, t->tc.simcse_weight);
        st->loss += t->tc.simcse_weight * st->simcse_loss;
    }
    if (b->n_mlm > 0) {
        st->mlm_loss = mlm_loss(t, h, a->dx, t->tc.mlm_weight);
        st->loss += t->tc.mlm_weight * st->mlm_loss;
        st->mlm_targets = a->M;
    }
}

/* The pieces of a step, in order: phase 0 embeddings; 1..2L the halves of
 * each layer forward; 2L+1 the losses; 2L+2..4L+1 the halves of each layer
 * backward (last layer first); 4L+2 embeddings backward and the gradient's
 * norm. */
int emb_train_begin(emb_trainer *t, const emb_batch *b, int dropout, emb_step_stats *st,
                    emb_err *err)
{
    memset(st, 0, sizeof *st);
    t->cur_batch = NULL;
    if (acts_prepare(t, b, err) != 0)
        return -1;
    if (dropout > 0)
        draw_masks(t);
    t->cur_batch = b;
    t->cur_masks = dropout >= 0;
    t->cur_phase = 0;
    t->cur_backward = 1;
    st->tokens = t->acts->T;
    return 0;
}

int emb_train_advance(emb_trainer *t, emb_step_stats *st)
{
    const emb_batch *b = t->cur_batch;
    const int L = t->cfg.num_hidden_layers, m = t->cur_masks;
    if (b == NULL)
        return 0;
    int ph = t->cur_phase++;
    if (ph == 0) {
        if (t->cur_backward)
            memset(t->grads, 0, sizeof(float) * t->n_params);
        embed_forward(t, b, m);
    } else if (ph <= 2 * L) {
        layer_forward(t, b, (ph - 1) / 2, (ph - 1) % 2, m);
    } else if (ph == 2 * L + 1) {
        losses_forward_backward(t, b, st);
        if (!t->cur_backward) {
            t->cur_batch = NULL;
            return 0;
        }
    } else if (ph <= 4 * L + 1) {
        int k = 4 * L + 1 - ph; /* 2L-1 .. 0: layer k/2, part k%2 */
        layer_backward(t, b, k / 2, k % 2, m);
    } else {
        embed_backward(t, b, m);
        st->loss += l2sp_penalty(t);
        st->grad_norm = grad_norm(t);
        t->cur_batch = NULL;
        return 0;
    }
    return 1;
}

int emb_train_forward_backward(emb_trainer *t, const emb_batch *b, int dropout,
                               emb_step_stats *st, emb_err *err)
{
    if (emb_train_begin(t, b, dropout, st, err) != 0)
        return -1;
    while (emb_train_advance(t, st) == 1)
        ;
    return 0;
}

int emb_train_loss(emb_trainer *t, const emb_batch *b, int dropout, emb_step_stats *st,
                   emb_err *err)
{
    if (emb_train_begin(t, b, dropout, st, err) != 0)
        return -1;
    t->cur_backward = 0;
    while (emb_train_advance(t, st) == 1)
        ;
    return 0;
}

/* ---- AdamW -------------------------------------------------------------------- */

/* torch.optim.AdamW's update, element by element, on [from, to); the
 * gradient is scaled by the clipping factor on the way in. */
static void adamw_range(emb_trainer *t, size_t from, size_t to)
{
    const emb_train_config *tc = &t->tc;
    const float lr = t->apply_lr, scale = t->apply_scale;
    const double bc1 = 1.0 - pow(tc->beta1, (double)t->step);
    const double bc2 = 1.0 - pow(tc->beta2, (double)t->step);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float b1 = tc->beta1, b2 = tc->beta2, eps = tc->adam_eps;
    const float decay = lr * tc->weight_decay;
    if (to > t->n_params)
        to = t->n_params;
#pragma omp parallel for simd schedule(static)
    for (long i = (long)from; i < (long)to; i++) {
        float g = t->grads[i] * scale;
        float p = t->params[i] * (1.0f - decay * t->decay_mask[i]);
        float m = b1 * t->m[i] + (1.0f - b1) * g;
        float v = b2 * t->v[i] + (1.0f - b2) * g * g;
        t->m[i] = m;
        t->v[i] = v;
        t->params[i] = p - step_size * m / (sqrtf(v) / bc2_sqrt + eps);
    }
}

void emb_train_apply_range(emb_trainer *t, size_t from, size_t to)
{
    if (t->tc.word_embeddings_only) {
        /* emb_weights starts with wte (V, C) */
        const size_t n_wte = (size_t)t->cfg.vocab_size * (size_t)t->cfg.hidden_size;
        adamw_range(t, from, to < n_wte ? to : n_wte);
        return;
    }
    /* the frozen Dense block [dense_at, n_enc) is left exactly as it is */
    adamw_range(t, from, to < t->dense_at ? to : t->dense_at);
    adamw_range(t, from > t->n_enc ? from : t->n_enc, to);
}

int emb_train_apply_begin(emb_trainer *t, emb_step_stats *st)
{
    if (!isfinite(st->loss) || !isfinite(st->grad_norm)) {
        t->skipped++;
        st->skipped = 1;
        st->lr = 0.0f;
        return 1;
    }
    t->apply_scale = 1.0f;
    if (t->tc.clip_norm > 0 && st->grad_norm > t->tc.clip_norm)
        t->apply_scale = (float)(t->tc.clip_norm / (st->grad_norm + 1e-6));
    t->step++;
    st->lr = emb_lr_at(&t->tc, t->step);
    t->apply_lr = st->lr;
    return 0;
}

int emb_train_apply(emb_trainer *t, emb_step_stats *st)
{
    if (emb_train_apply_begin(t, st) != 0)
        return 1;
    emb_train_apply_range(t, 0, t->n_params);
    return 0;
}

int emb_train_step(emb_trainer *t, const int32_t *ids, const int *lens, int n,
                   emb_step_stats *st, emb_err *err)
{
    emb_batch b = {0};
    int rc = -1;
    if (emb_batch_build(t, &b, ids, lens, n, err) == 0 &&
        emb_train_forward_backward(t, &b, 1, st, err) == 0) {
        emb_train_apply(t, st);
        rc = 0;
    }
    emb_batch_free(&b);
    return rc;
}
