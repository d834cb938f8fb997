/* test_train.c: the trainer against PyTorch autograd
 * (scripts/gen_train_reference.py, fixtures in tests/fixtures/train):
 * SimCSE and MLM losses and every parameter gradient without dropout and
 * with torch's dropout masks, parameters after 5 AdamW steps, the SimCSE
 * gradient through two frozen Dense modules (dense.safetensors), the
 * symmetric InfoNCE of the pairs objective (pairs.safetensors); plus the
 * learning-rate schedule, skipped non-finite steps, batch building,
 * training the word embeddings only, and a Dense model through training,
 * checkpoints and `embedd train`. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "reffixture.h"
#include "run_suite.h"
#include "safetensors.h"
#include "sts.h"
#include "testutil.h"
#include "train.h"

#define FIXTURE "tests/fixtures/train"

static emb_st_file ref;
static emb_model *model;

static void setup(void)
{
    emb_err err = {0};
    ck_assert_msg(emb_st_open(&ref, FIXTURE "/ref.safetensors", &err) == 0, "%s", err.msg);
    model = emb_model_load(FIXTURE "/model", &err);
    ck_assert_msg(model != NULL, "%s", err.msg);
}

static void teardown(void)
{
    emb_model_free(model);
    emb_st_close(&ref);
}

static emb_train_config fixture_config(void)
{
    emb_train_config tc = emb_train_config_default();
    tc.objective = EMB_OBJ_BOTH;
    tc.temperature = (float)rf_setting(&ref, "temperature");
    tc.simcse_weight = (float)rf_setting(&ref, "simcse_weight");
    tc.mlm_weight = (float)rf_setting(&ref, "mlm_weight");
    tc.lr = (float)rf_setting(&ref, "lr");
    tc.weight_decay = (float)rf_setting(&ref, "weight_decay");
    tc.beta1 = (float)rf_setting(&ref, "beta1");
    tc.beta2 = (float)rf_setting(&ref, "beta2");
    tc.adam_eps = (float)rf_setting(&ref, "adam_eps");
    tc.clip_norm = (float)rf_setting(&ref, "clip_norm");
    tc.warmup_steps = (int)rf_setting(&ref, "warmup_steps");
    tc.total_steps = (int)rf_setting(&ref, "total_steps");
    tc.schedule = EMB_SCHED_LINEAR;
    return tc;
}

/* The packed batch exactly as the reference built it. */
static void fixture_batch(emb_batch *b)
{
    long T, S1;
    float *ids = rf_tensor(&ref, "batch.ids", &T);
    float *labels = rf_tensor(&ref, "batch.labels", NULL);
    float *off = rf_tensor(&ref, "batch.seq_off", &S1);
    memset(b, 0, sizeof *b);
    b->ids = malloc(sizeof(int32_t) * (size_t)T);
    b->labels = malloc(sizeof(int) * (size_t)T);
    b->seq_off = malloc(sizeof(int) * (size_t)S1);
    for (long i = 0; i < T; i++) {
        b->ids[i] = (int32_t)ids[i];
        b->labels[i] = (int)labels[i];
    }
    for (long i = 0; i < S1; i++)
        b->seq_off[i] = (int)off[i];
    b->T = (int)T;
    b->S = (int)S1 - 1;
    b->cap_T = b->T;
    b->cap_S = b->S + 1;
    b->n_texts = (int)rf_setting(&ref, "n_texts");
    b->n_simcse = (int)rf_setting(&ref, "n_simcse");
    b->n_mlm = (int)rf_setting(&ref, "n_mlm");
    free(ids);
    free(labels);
    free(off);
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / (sqrt(den) > 1e-30 ? sqrt(den) : 1e-30);
}

static const char *const tensor_names[EMB_N_PARAM_TENSORS + EMB_N_HEAD_TENSORS] = {
    "wte", "wpe", "wtt", "emb_lnw", "emb_lnb", "qkvw", "qkvb", "attn_ow", "attn_ob", "ln1w",
    "ln1b", "fcw", "fcb", "fc_projw", "fc_projb", "ln2w", "ln2b", "mlm.dense_w", "mlm.dense_b",
    "mlm.ln_w", "mlm.ln_b", "mlm.bias",
};

/* Each tensor's gradient within 1e-3 relative (in norm) of the reference. */
static void check_grads(const emb_trainer *t, const float *want)
{
    size_t sizes[EMB_N_PARAM_TENSORS + EMB_N_HEAD_TENSORS];
    emb_param_sizes(&t->cfg, sizes);
    emb_head_sizes(&t->cfg, sizes + EMB_N_PARAM_TENSORS);
    size_t at = 0;
    for (int i = 0; i < EMB_N_PARAM_TENSORS + EMB_N_HEAD_TENSORS; i++) {
        double e = rel_err(t->grads + at, want + at, sizes[i]);
        ck_assert_msg(e <= 1e-3, "gradient of %s: relative error %.3g", tensor_names[i], e);
        at += sizes[i];
    }
    ck_assert_uint_eq(at, t->n_params);
}

static void check_losses(const emb_step_stats *st, const float *want)
{
    const double got[3] = {st->simcse_loss, st->mlm_loss, st->loss};
    const char *names[3] = {"simcse", "mlm", "total"};
    for (int i = 0; i < 3; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= 1e-4 * fabs(want[i]) + 1e-7,
                      "%s loss %.7f, reference %.7f", names[i], got[i], want[i]);
}

START_TEST(test_layout_matches_reference)
{
    emb_err err;
    emb_train_config tc = fixture_config();
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    long n;
    float *init = rf_tensor(&ref, "init.params", &n);
    ck_assert_int_eq(n, (long)t->n_params);
    ck_assert_msg(memcmp(init, t->params, sizeof(float) * (size_t)n) == 0,
                  "trainer parameters (encoder + MLM head) differ from the reference layout");
    free(init);
    emb_trainer_free(t);
}
END_TEST

START_TEST(test_gradients_without_dropout)
{
    emb_err err;
    emb_train_config tc = fixture_config();
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    emb_batch b;
    fixture_batch(&b);
    emb_step_stats st;
    ck_assert_msg(emb_train_forward_backward(t, &b, -1, &st, &err) == 0, "%s", err.msg);
    float *loss = rf_tensor(&ref, "nodrop.loss", NULL);
    float *grads = rf_tensor(&ref, "nodrop.grads", NULL);
    check_losses(&st, loss);
    check_grads(t, grads);
    ck_assert_int_eq(st.mlm_targets, 7);
    free(loss);
    free(grads);
    emb_batch_free(&b);
    emb_trainer_free(t);
}
END_TEST

START_TEST(test_gradients_with_torch_dropout_masks)
{
    emb_err err;
    emb_train_config tc = fixture_config();
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    emb_batch b;
    fixture_batch(&b);
    const int n_masks = 1 + 3 * t->cfg.num_hidden_layers;
    float *masks[1 + 3 * 8];
    long sizes[1 + 3 * 8];
    ck_assert_msg(emb_train_prepare(t, &b, masks, sizes, &err) == 0, "%s", err.msg);
    for (int i = 0; i < n_masks; i++) {
        char name[32];
        long n;
        snprintf(name, sizeof name, "drop.mask.%d", i);
        float *m = rf_tensor(&ref, name, &n);
        ck_assert_msg(n == sizes[i], "mask %d: torch has %ld values, embedd %ld", i, n, sizes[i]);
        memcpy(masks[i], m, sizeof(float) * (size_t)n);
        free(m);
    }
    emb_step_stats st;
    ck_assert_msg(emb_train_forward_backward(t, &b, 0, &st, &err) == 0, "%s", err.msg);
    float *loss = rf_tensor(&ref, "drop.loss", NULL);
    float *grads = rf_tensor(&ref, "drop.grads", NULL);
    check_losses(&st, loss);
    check_grads(t, grads);
    /* The masks matter: without them the loss is the no-dropout one. */
    float *nodrop = rf_tensor(&ref, "nodrop.loss", NULL);
    ck_assert(fabs(loss[2] - nodrop[2]) > 1e-3);
    free(nodrop);
    free(loss);
    free(grads);
    emb_batch_free(&b);
    emb_trainer_free(t);
}
END_TEST

/* ---- the pairs objective ------------------------------------------------------ */

/* A pairs.safetensors tensor as floats (caller frees); *n gets its size. */
static float *pairs_tensor(const emb_st_file *f, const char *name, long *n)
{
    emb_err err;
    const emb_st_tensor *t = emb_st_find(f, name);
    ck_assert_msg(t != NULL, "pairs.safetensors has no %s", name);
    float *out = malloc(sizeof(float) * (size_t)emb_st_numel(t));
    ck_assert(out != NULL && emb_st_read_f32(f, t, out, &err) == 0);
    if (n != NULL)
        *n = (long)emb_st_numel(t);
    return out;
}

static double pairs_setting(const emb_st_file *f, const char *key)
{
    uint64_t len;
    memcpy(&len, f->map, sizeof len);
    cJSON *root = cJSON_ParseWithLength((const char *)f->map + 8, (size_t)len);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), key);
    ck_assert_msg(cJSON_IsString(v), "pairs.safetensors metadata has no %s", key);
    double out = atof(v->valuestring);
    cJSON_Delete(root);
    return out;
}

/* The 2B texts of pairs.safetensors (B anchors, then their positives). */
static int pairs_texts(const emb_st_file *f, int32_t **ids, int **lens)
{
    long n_ids, n;
    float *fi = pairs_tensor(f, "pairs.ids", &n_ids);
    float *fl = pairs_tensor(f, "pairs.lens", &n);
    *ids = malloc(sizeof(int32_t) * (size_t)n_ids);
    *lens = malloc(sizeof(int) * (size_t)n);
    for (long i = 0; i < n_ids; i++)
        (*ids)[i] = (int32_t)fi[i];
    long total = 0;
    for (long i = 0; i < n; i++) {
        (*lens)[i] = (int)fl[i];
        total += (*lens)[i];
    }
    ck_assert_int_eq(total, n_ids);
    free(fi);
    free(fl);
    return (int)n;
}

/* EMB_OBJ_PAIRS: emb_batch_build packs the 2B texts as they come, and the
 * symmetric InfoNCE loss and every gradient match autograd
 * (gen_train_reference.py --part pairs), without dropout. */
START_TEST(test_pairs_gradients)
{
    emb_err err;
    emb_st_file pf;
    ck_assert_msg(emb_st_open(&pf, FIXTURE "/pairs.safetensors", &err) == 0, "%s", err.msg);
    emb_train_config tc = fixture_config();
    tc.objective = EMB_OBJ_PAIRS;
    tc.temperature = (float)pairs_setting(&pf, "temperature");
    tc.simcse_weight = (float)pairs_setting(&pf, "simcse_weight");
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    int32_t *ids;
    int *lens;
    const int n = pairs_texts(&pf, &ids, &lens);
    const int B = (int)pairs_setting(&pf, "n_pairs");
    ck_assert_int_eq(n, 2 * B);
    emb_batch b = {0};
    ck_assert_msg(emb_batch_build(t, &b, ids, lens, n, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(b.n_texts, B);
    ck_assert_int_eq(b.n_simcse, 2 * B);
    ck_assert_int_eq(b.n_mlm, 0);
    ck_assert_int_eq(b.S, 2 * B);
    ck_assert(memcmp(b.ids, ids, sizeof(int32_t) * (size_t)b.T) == 0);
    for (int s = 0, at = 0; s < n; s++) {
        ck_assert_int_eq(b.seq_off[s], at);
        at += lens[s];
    }
    for (int i = 0; i < b.T; i++)
        ck_assert_int_eq(b.labels[i], -1);
    emb_step_stats st;
    ck_assert_msg(emb_train_forward_backward(t, &b, -1, &st, &err) == 0, "%s", err.msg);
    float *loss = pairs_tensor(&pf, "pairs.loss", NULL);
    ck_assert_msg(fabs(st.simcse_loss - loss[0]) <= 1e-4 * fabs(loss[0]),
                  "pairs loss %.7f, reference %.7f", st.simcse_loss, (double)loss[0]);
    ck_assert_msg(fabs(st.loss - loss[1]) <= 1e-4 * fabs(loss[1]),
                  "weighted loss %.7f, reference %.7f", st.loss, (double)loss[1]);
    ck_assert(st.mlm_loss == 0.0 && st.mlm_targets == 0);
    float *grads = pairs_tensor(&pf, "pairs.grads", NULL);
    check_grads(t, grads);
    for (size_t i = t->n_enc; i < t->n_params; i++)
        ck_assert_msg(t->grads[i] == 0.0f, "MLM head float %zu has a gradient", i - t->n_enc);
    /* an odd number of texts is no set of pairs */
    ck_assert_int_eq(emb_batch_build(t, &b, ids, lens, n - 1, &err), -1);
    ck_assert_msg(strstr(err.msg, "even number of texts") != NULL, "%s", err.msg);
    free(grads);
    free(loss);
    free(ids);
    free(lens);
    emb_batch_free(&b);
    emb_trainer_free(t);
    emb_st_close(&pf);
}
END_TEST

/* word_embeddings_only: gradients are computed for everything, but a step
 * changes the word embeddings only: the rows of the batch's tokens (no
 * weight decay here, so the other rows keep their values); the rest of the
 * encoder, its moments and the MLM head stay exactly as they were. */
START_TEST(test_word_embeddings_only)
{
    emb_err err;
    emb_st_file pf;
    ck_assert_msg(emb_st_open(&pf, FIXTURE "/pairs.safetensors", &err) == 0, "%s", err.msg);
    emb_train_config tc = fixture_config();
    tc.objective = EMB_OBJ_PAIRS;
    tc.word_embeddings_only = 1;
    tc.warmup_steps = 0;
    tc.weight_decay = 0.0f;
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    int32_t *ids;
    int *lens;
    const int n = pairs_texts(&pf, &ids, &lens);
    float *before = malloc(sizeof(float) * t->n_params);
    memcpy(before, t->params, sizeof(float) * t->n_params);
    const size_t n_wte = (size_t)t->cfg.vocab_size * (size_t)t->cfg.hidden_size;
    for (int step = 0; step < 2; step++) {
        emb_step_stats st;
        ck_assert_msg(emb_train_step(t, ids, lens, n, &st, &err) == 0, "%s", err.msg);
        ck_assert(!st.skipped && st.lr > 0);
    }
    double outside = 0.0;
    for (size_t i = n_wte; i < t->n_enc; i++)
        outside += fabs(t->grads[i]);
    ck_assert_msg(outside > 0, "no gradient outside the word embeddings");
    ck_assert_msg(memcmp(before + n_wte, t->params + n_wte,
                         sizeof(float) * (t->n_params - n_wte)) == 0,
                  "a step changed weights other than the word embeddings");
    for (size_t i = n_wte; i < t->n_params; i++)
        ck_assert(t->m[i] == 0.0f && t->v[i] == 0.0f);
    /* the rows of the batch's tokens moved, and only those */
    const int C = t->cfg.hidden_size;
    int total = 0;
    for (int i = 0; i < n; i++)
        total += lens[i];
    int moved = 0;
    for (int32_t id = 0; id < t->cfg.vocab_size; id++) {
        int in_batch = 0;
        for (int i = 0; i < total; i++)
            in_batch |= ids[i] == id;
        const int differs = memcmp(before + (size_t)id * C, t->params + (size_t)id * C,
                                   sizeof(float) * (size_t)C) != 0;
        ck_assert_msg(differs == in_batch, "row of token %d: %s", id,
                      in_batch ? "in the batch, did not move" : "not in the batch, moved");
        moved += differs;
    }
    ck_assert(moved > 10);
    /* the same steps with everything learning change more */
    tc.word_embeddings_only = 0;
    emb_trainer *all = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(all != NULL, "%s", err.msg);
    emb_step_stats st;
    ck_assert(emb_train_step(all, ids, lens, n, &st, &err) == 0);
    ck_assert(memcmp(before + n_wte, all->params + n_wte,
                     sizeof(float) * (all->n_enc - n_wte)) != 0);
    emb_trainer_free(all);
    free(before);
    free(ids);
    free(lens);
    emb_trainer_free(t);
    emb_st_close(&pf);
}
END_TEST

/* ---- Dense modules ----------------------------------------------------------- */

/* The fixture model with dense.safetensors' two Dense modules after its
 * pooling: 32 -> 24 (bias, Tanh), 24 -> 16 (no bias, Identity). */
static emb_model *dense_model(emb_st_file *dense)
{
    emb_err err = {0};
    ck_assert_msg(emb_st_open(dense, FIXTURE "/dense.safetensors", &err) == 0, "%s", err.msg);
    const emb_dense_config d0 = {.in_features = 32, .out_features = 24, .bias = 1,
                                 .activation = EMB_ACT_TANH};
    const emb_dense_config d1 = {.in_features = 24, .out_features = 16, .bias = 0,
                                 .activation = EMB_ACT_IDENTITY};
    float w0[24 * 32], b0[24], w1[16 * 24];
    const struct { const char *name; float *dst; long n; } t[] = {
        {"dense.0.weight", w0, 24 * 32}, {"dense.0.bias", b0, 24}, {"dense.1.weight", w1, 16 * 24},
    };
    for (int i = 0; i < 3; i++) {
        const emb_st_tensor *tt = emb_st_find(dense, t[i].name);
        ck_assert_msg(tt != NULL && emb_st_numel(tt) == t[i].n, "dense.safetensors: %s",
                      t[i].name);
        ck_assert(emb_st_read_f32(dense, tt, t[i].dst, &err) == 0);
    }
    emb_model *one = emb_model_add_dense(model, &d0, w0, b0, &err);
    ck_assert_msg(one != NULL, "%s", err.msg);
    emb_model *two = emb_model_add_dense(one, &d1, w1, NULL, &err);
    ck_assert_msg(two != NULL, "%s", err.msg);
    emb_model_free(one);
    ck_assert_int_eq(emb_model_dim(two), 16);
    ck_assert_str_eq(two->cfg.dense[1].folder, "3_Dense");
    /* one more that does not fit is refused */
    ck_assert(emb_model_add_dense(two, &d1, w1, NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "in_features 24, the model gives 16"), "%s", err.msg);
    return two;
}

/* A dense.safetensors tensor as floats (caller frees). */
static float *dense_tensor(const emb_st_file *dense, const char *name)
{
    emb_err err;
    const emb_st_tensor *t = emb_st_find(dense, name);
    ck_assert_msg(t != NULL, "dense.safetensors has no %s", name);
    float *out = malloc(sizeof(float) * (size_t)emb_st_numel(t));
    ck_assert(out != NULL && emb_st_read_f32(dense, t, out, &err) == 0);
    return out;
}

/* The trainer's gradients against a reference in the layout without the
 * Dense block (encoder tensors, then the head); the frozen Dense block
 * must have none. */
static void check_dense_grads(const emb_trainer *t, const float *want, const char *what)
{
    size_t sizes[EMB_N_PARAM_TENSORS + EMB_N_HEAD_TENSORS];
    emb_param_sizes(&t->cfg, sizes);
    emb_head_sizes(&t->cfg, sizes + EMB_N_PARAM_TENSORS);
    size_t at = 0, ref_at = 0;
    for (int i = 0; i < EMB_N_PARAM_TENSORS + EMB_N_HEAD_TENSORS; i++) {
        if (i == EMB_N_PARAM_TENSORS) {
            ck_assert_uint_eq(at, t->dense_at);
            for (size_t j = t->dense_at; j < t->n_enc; j++)
                ck_assert_msg(t->grads[j] == 0.0f, "%s: frozen Dense float %zu has gradient %g",
                              what, j - t->dense_at, (double)t->grads[j]);
            at = t->n_enc;
        }
        if (i >= EMB_N_PARAM_TENSORS)
            continue; /* the MLM weight is 0: the head has no gradient to compare */
        double e = rel_err(t->grads + at, want + ref_at, sizes[i]);
        ck_assert_msg(e <= 1e-3, "%s: gradient of %s: relative error %.3g", what,
                      tensor_names[i], e);
        at += sizes[i];
        ref_at += sizes[i];
    }
}

/* SimCSE through the Dense modules (MLM weight 0), against autograd:
 * without dropout, and with torch's dropout masks. */
START_TEST(test_dense_gradients)
{
    emb_err err;
    emb_st_file dense;
    emb_model *m = dense_model(&dense);
    emb_train_config tc = fixture_config();
    tc.mlm_weight = 0.0f;
    emb_trainer *t = emb_trainer_new(m, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    ck_assert_uint_eq(t->n_enc - t->dense_at, 24 * 32 + 24 + 16 * 24);
    emb_batch b;
    fixture_batch(&b);
    emb_step_stats st;
    ck_assert_msg(emb_train_forward_backward(t, &b, -1, &st, &err) == 0, "%s", err.msg);
    float *loss = dense_tensor(&dense, "dense.nodrop.loss");
    float *grads = dense_tensor(&dense, "dense.nodrop.grads");
    ck_assert_msg(fabs(st.simcse_loss - loss[0]) <= 1e-4 * fabs(loss[0]),
                  "simcse loss %.7f, reference %.7f", st.simcse_loss, (double)loss[0]);
    check_dense_grads(t, grads, "no dropout");
    free(loss);
    free(grads);

    const int n_masks = 1 + 3 * t->cfg.num_hidden_layers;
    float *masks[1 + 3 * 8];
    long sizes[1 + 3 * 8];
    ck_assert_msg(emb_train_prepare(t, &b, masks, sizes, &err) == 0, "%s", err.msg);
    for (int i = 0; i < n_masks; i++) {
        char name[32];
        long n;
        snprintf(name, sizeof name, "drop.mask.%d", i);
        float *mk = rf_tensor(&ref, name, &n);
        ck_assert_int_eq(n, sizes[i]);
        memcpy(masks[i], mk, sizeof(float) * (size_t)n);
        free(mk);
    }
    ck_assert_msg(emb_train_forward_backward(t, &b, 0, &st, &err) == 0, "%s", err.msg);
    loss = dense_tensor(&dense, "dense.drop.loss");
    grads = dense_tensor(&dense, "dense.drop.grads");
    ck_assert_msg(fabs(st.simcse_loss - loss[0]) <= 1e-4 * fabs(loss[0]),
                  "simcse loss with dropout %.7f, reference %.7f", st.simcse_loss,
                  (double)loss[0]);
    check_dense_grads(t, grads, "torch dropout masks");
    free(loss);
    free(grads);
    emb_batch_free(&b);
    emb_trainer_free(t);
    emb_model_free(m);
    emb_st_close(&dense);
}
END_TEST

/* Training leaves the Dense weights exactly as they were, a checkpoint
 * keeps them (and the order of the modules), and resuming is exact. */
START_TEST(test_dense_frozen_through_checkpoint)
{
    emb_err err;
    emb_st_file dense;
    emb_model *m = dense_model(&dense);
    emb_train_config tc = fixture_config();
    emb_trainer *t = emb_trainer_new(m, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    const size_t nd = t->n_enc - t->dense_at;
    emb_batch b;
    fixture_batch(&b);
    emb_step_stats st;
    for (int i = 0; i < 3; i++) {
        ck_assert(emb_train_forward_backward(t, &b, 1, &st, &err) == 0);
        ck_assert_int_eq(emb_train_apply(t, &st), 0);
    }
    ck_assert(memcmp(t->params + t->dense_at, m->params + t->dense_at, sizeof(float) * nd) == 0);
    ck_assert(memcmp(t->params, m->params, sizeof(float) * t->dense_at) != 0);
    char dir[256], out[300];
    tu_mkdtemp(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/ckpt", dir);
    ck_assert_msg(emb_save_model_dir(out, &t->cfg, NULL, NULL, FIXTURE "/model", EMB_DT_F16, t,
                                     &err) == 0, "%s", err.msg);
    emb_model *m2 = emb_model_load(out, &err);
    ck_assert_msg(m2 != NULL, "%s", err.msg);
    ck_assert_int_eq(m2->cfg.n_dense, 2);
    ck_assert_int_eq(m2->cfg.dense[0].activation, EMB_ACT_TANH);
    ck_assert_int_eq(m2->cfg.dense[1].bias, 0);
    ck_assert_int_eq(m2->cfg.normalize, 1);
    /* Dense weights are saved F32 even when the encoder is F16 */
    ck_assert(memcmp(m2->params + t->dense_at, m->params + t->dense_at, sizeof(float) * nd) == 0);
    emb_trainer *t2 = emb_trainer_new(m2, out, &tc, &err);
    ck_assert_msg(t2 != NULL, "%s", err.msg);
    ck_assert_int_eq(emb_trainer_load_state(t2, out, &err), 0);
    ck_assert(memcmp(t2->m, t->m, sizeof(float) * t->n_params) == 0);
    emb_trainer_free(t2);
    emb_model_free(m2);
    emb_remove_tree(dir, &err);
    emb_batch_free(&b);
    emb_trainer_free(t);
    emb_model_free(m);
    emb_st_close(&dense);
}
END_TEST

START_TEST(test_five_adamw_steps)
{
    emb_err err;
    emb_train_config tc = fixture_config();
    tc.l2sp = (float)rf_setting(&ref, "l2sp");
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    emb_batch b;
    fixture_batch(&b);
    const int steps = (int)rf_setting(&ref, "steps");
    float *losses = rf_tensor(&ref, "adam.losses", NULL);
    for (int s = 0; s < steps; s++) {
        emb_step_stats st;
        ck_assert_msg(emb_train_forward_backward(t, &b, -1, &st, &err) == 0, "%s", err.msg);
        ck_assert_msg(fabs(st.loss - losses[s]) <= 1e-4 * fabs(losses[s]),
                      "step %d: loss %.7f, reference %.7f", s + 1, st.loss, losses[s]);
        ck_assert_int_eq(emb_train_apply(t, &st), 0);
        ck_assert(st.lr > 0);
    }
    ck_assert_int_eq(t->step, steps);
    long n;
    float *want = rf_tensor(&ref, "adam.params", &n);
    ck_assert_int_eq(n, (long)t->n_params);
    double worst = 0.0;
    long at = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)t->params[i] - want[i]);
        if (d > worst) {
            worst = d;
            at = i;
        }
    }
    ck_assert_msg(worst <= 1e-4, "parameters after %d steps: max |diff| %.3g at %ld", steps,
                  worst, at);
    free(want);
    free(losses);
    emb_batch_free(&b);
    emb_trainer_free(t);
}
END_TEST

START_TEST(test_non_finite_step_is_skipped)
{
    emb_err err;
    emb_train_config tc = fixture_config();
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    emb_batch b;
    fixture_batch(&b);
    t->w.ln2w[3] = NAN;
    float *before = malloc(sizeof(float) * t->n_params);
    memcpy(before, t->params, sizeof(float) * t->n_params);
    emb_step_stats st;
    ck_assert_msg(emb_train_forward_backward(t, &b, 1, &st, &err) == 0, "%s", err.msg);
    ck_assert(!isfinite(st.loss));
    ck_assert_int_eq(emb_train_apply(t, &st), 1);
    ck_assert_int_eq(st.skipped, 1);
    ck_assert_int_eq(t->skipped, 1);
    ck_assert_int_eq(t->step, 0);
    ck_assert(memcmp(before, t->params, sizeof(float) * t->n_params) == 0);
    /* A finite loss with a non-finite gradient is skipped too. */
    t->w.ln2w[3] = 1.0f;
    ck_assert(emb_train_forward_backward(t, &b, 1, &st, &err) == 0);
    ck_assert(isfinite(st.loss));
    st.grad_norm = INFINITY;
    ck_assert_int_eq(emb_train_apply(t, &st), 1);
    ck_assert_int_eq(t->skipped, 2);
    free(before);
    emb_batch_free(&b);
    emb_trainer_free(t);
}
END_TEST

START_TEST(test_learning_rate_schedule)
{
    emb_train_config tc = emb_train_config_default();
    tc.lr = 1.0f;
    tc.warmup_steps = 4;
    tc.total_steps = 14;
    tc.schedule = EMB_SCHED_LINEAR;
    ck_assert_float_eq_tol(emb_lr_at(&tc, 1), 0.25f, 1e-6f);
    ck_assert_float_eq_tol(emb_lr_at(&tc, 4), 1.0f, 1e-6f);
    ck_assert_float_eq_tol(emb_lr_at(&tc, 9), 0.5f, 1e-6f);
    ck_assert_float_eq_tol(emb_lr_at(&tc, 14), 0.0f, 1e-6f);
    ck_assert_float_eq_tol(emb_lr_at(&tc, 100), 0.0f, 1e-6f);
    tc.schedule = EMB_SCHED_COSINE;
    ck_assert_float_eq_tol(emb_lr_at(&tc, 9), 0.5f, 1e-6f);
    ck_assert_float_eq_tol(emb_lr_at(&tc, 6), 0.5f * (1.0f + cosf((float)M_PI * 0.2f)), 1e-6f);
    tc.schedule = EMB_SCHED_CONSTANT;
    ck_assert_float_eq_tol(emb_lr_at(&tc, 100), 1.0f, 1e-6f);
}
END_TEST

/* emb_batch_build: two identical SimCSE views, then an MLM copy where only
 * ordinary tokens are chosen, at about the configured rate, with the
 * 80/10/10 split. */
START_TEST(test_batch_masking)
{
    emb_err err;
    emb_train_config tc = emb_train_config_default();
    tc.objective = EMB_OBJ_BOTH;
    tc.seed = 3;
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    enum { N = 200, LEN = 40 };
    int32_t *ids = malloc(sizeof(int32_t) * N * LEN);
    int lens[N];
    for (int i = 0; i < N; i++) {
        lens[i] = LEN;
        ids[i * LEN] = t->special.cls_id;
        for (int j = 1; j < LEN - 1; j++)
            ids[i * LEN + j] = 5 + (i * 7 + j) % 90;
        ids[i * LEN + LEN - 1] = t->special.sep_id;
    }
    emb_batch b = {0};
    ck_assert_msg(emb_batch_build(t, &b, ids, lens, N, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(b.S, 3 * N);
    ck_assert_int_eq(b.T, 3 * N * LEN);
    ck_assert(memcmp(b.ids, ids, sizeof(int32_t) * N * LEN) == 0);
    ck_assert(memcmp(b.ids + N * LEN, ids, sizeof(int32_t) * N * LEN) == 0);
    int chosen = 0, masked = 0, kept = 0, specials_chosen = 0;
    for (int i = 0; i < N * LEN; i++) {
        int at = 2 * N * LEN + i;
        ck_assert_int_eq(b.labels[i], -1);
        if (b.labels[at] < 0) {
            ck_assert_int_eq(b.ids[at], ids[i]);
            continue;
        }
        chosen++;
        ck_assert_int_eq(b.labels[at], ids[i]);
        specials_chosen += ids[i] == t->special.cls_id || ids[i] == t->special.sep_id;
        masked += b.ids[at] == t->special.mask_id;
        kept += b.ids[at] == ids[i];
    }
    const int ordinary = N * (LEN - 2);
    ck_assert_int_eq(specials_chosen, 0);
    ck_assert_msg(fabs((double)chosen / ordinary - 0.15) < 0.02, "chose %d of %d", chosen,
                  ordinary);
    ck_assert_msg(fabs((double)masked / chosen - 0.8) < 0.05, "masked %d of %d", masked, chosen);
    ck_assert_msg(kept > chosen / 20 && kept < chosen / 5, "kept %d of %d", kept, chosen);
    emb_batch_free(&b);
    free(ids);
    emb_trainer_free(t);
}
END_TEST

/* A few SimCSE steps with dropout on one batch lower its loss. */
START_TEST(test_simcse_steps_lower_the_loss)
{
    emb_err err;
    emb_train_config tc = emb_train_config_default();
    tc.objective = EMB_OBJ_SIMCSE;
    tc.lr = 1e-3f;
    tc.seed = 11;
    emb_trainer *t = emb_trainer_new(model, NULL, &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    enum { N = 16, LEN = 10 };
    int32_t ids[N * LEN];
    int lens[N];
    for (int i = 0; i < N; i++) {
        lens[i] = LEN;
        ids[i * LEN] = t->special.cls_id;
        for (int j = 1; j < LEN - 1; j++)
            ids[i * LEN + j] = 5 + (i * 13 + j * j) % 90;
        ids[i * LEN + LEN - 1] = t->special.sep_id;
    }
    double first = 0.0, last = 0.0;
    for (int s = 0; s < 30; s++) {
        emb_step_stats st;
        ck_assert_msg(emb_train_step(t, ids, lens, N, &st, &err) == 0, "%s", err.msg);
        ck_assert(!st.skipped);
        if (s < 3)
            first += st.loss / 3;
        if (s >= 27)
            last += st.loss / 3;
    }
    ck_assert_msg(last < 0.8 * first, "SimCSE loss %.4f -> %.4f", first, last);
    emb_trainer_free(t);
}
END_TEST


/* Save with optimizer state, load into a fresh trainer: identical
 * parameters, moments, step and random state, so the next step is
 * identical too. The saved weights also load as a plain model. */
START_TEST(test_checkpoint_resume_is_exact)
{
    emb_err err;
    emb_train_config tc = fixture_config();
    emb_trainer *t = emb_trainer_new(model, FIXTURE "/model", &tc, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    emb_batch b;
    fixture_batch(&b);
    emb_step_stats st;
    for (int i = 0; i < 2; i++) {
        ck_assert(emb_train_forward_backward(t, &b, 1, &st, &err) == 0);
        ck_assert_int_eq(emb_train_apply(t, &st), 0);
    }
    char dir[256], out[300];
    tu_mkdtemp(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/ckpt", dir);
    ck_assert_msg(emb_save_model_dir(out, &t->cfg, NULL, NULL, FIXTURE "/model", EMB_DT_F32, t,
                                     &err) == 0, "%s", err.msg);
    /* saving again over it replaces it atomically */
    ck_assert_msg(emb_save_model_dir(out, &t->cfg, NULL, NULL, FIXTURE "/model", EMB_DT_F32, t,
                                     &err) == 0, "%s", err.msg);
    emb_model *m2 = emb_model_load(out, &err);
    ck_assert_msg(m2 != NULL, "%s", err.msg);
    emb_trainer *t2 = emb_trainer_new(m2, out, &tc, &err);
    ck_assert_msg(t2 != NULL, "%s", err.msg);
    ck_assert_int_eq(emb_trainer_load_state(t2, out, &err), 0);
    ck_assert_int_eq(t2->step, 2);
    ck_assert(memcmp(t->params, t2->params, sizeof(float) * t->n_params) == 0);
    ck_assert(memcmp(t->m, t2->m, sizeof(float) * t->n_params) == 0);
    ck_assert(memcmp(t->v, t2->v, sizeof(float) * t->n_params) == 0);
    emb_step_stats s1, s2;
    ck_assert(emb_train_forward_backward(t, &b, 1, &s1, &err) == 0);
    ck_assert(emb_train_forward_backward(t2, &b, 1, &s2, &err) == 0);
    ck_assert(s1.loss == s2.loss);
    emb_train_apply(t, &s1);
    emb_train_apply(t2, &s2);
    ck_assert(memcmp(t->params, t2->params, sizeof(float) * t->n_params) == 0);
    /* A directory without trainer state says so. */
    ck_assert_int_eq(emb_trainer_load_state(t2, FIXTURE "/model", &err), 1);
    emb_trainer_free(t2);
    emb_model_free(m2);
    emb_batch_free(&b);
    emb_trainer_free(t);
    emb_remove_tree(dir, &err);
}
END_TEST

START_TEST(test_spearman)
{
    const double x[] = {1, 2, 3, 4, 5};
    const double up[] = {10, 20, 30, 40, 50}, down[] = {5, 4, 3, 2, 1};
    const double ties[] = {1, 1, 2, 2, 3};
    ck_assert_double_eq_tol(emb_spearman(x, up, 5), 1.0, 1e-12);
    ck_assert_double_eq_tol(emb_spearman(x, down, 5), -1.0, 1e-12);
    /* ranks of ties: 1.5 1.5 3.5 3.5 5 -> Pearson with 1..5 */
    ck_assert_double_eq_tol(emb_spearman(x, ties, 5), 0.9486832980505138, 1e-9);
}
END_TEST

static const char *bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

/* `embedd train` writes a checkpoint that `embedd eval` and `embedd train`
 * (resuming) read back; bad flags are usage errors. */
START_TEST(test_cli_train_eval_resume)
{
    char dir[256], cmd[4096], sts[512], corpus[300];
    tu_mkdtemp(dir, sizeof dir);
    tu_shared_path(sts, sizeof sts, "stsb/sts-dev.tsv");
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    FILE *fp = fopen(corpus, "w");
    ck_assert(fp != NULL);
    for (int i = 0; i < 50; i++)
        fprintf(fp, "sentence number %d says something about %s and more words\n", i,
                i % 2 ? "dogs" : "the weather");
    fclose(fp);
    snprintf(cmd, sizeof cmd,
             "%s train --model tests/fixtures/tiny-f16 --corpus %s --out %s/out --steps 4 "
             "--batch-size 8 --max-seq-len 16 --objective both --save-every 2 --lr 1e-3 "
             "--eval-sts %s --eval-every 2 > %s/log 2>&1",
             bin(), corpus, dir, sts, dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    snprintf(cmd, sizeof cmd, "grep -q 'step 4: checkpoint written' %s/log && "
             "grep -q 'STS Spearman x100' %s/log && test -f %s/out/optimizer.safetensors",
             dir, dir, dir);
    ck_assert_msg(tu_run(cmd) == 0, "train log or checkpoint incomplete");
    snprintf(cmd, sizeof cmd, "%s eval --model %s/out --sts %s > %s/eval", bin(), dir, sts, dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/eval", dir);
    char *text = tu_read_file(cmd, NULL);
    ck_assert(text != NULL);
    double rho = -1000;
    ck_assert_msg(sscanf(text, "spearman_x100 %lf", &rho) == 1, "eval printed: %s", text);
    ck_assert(rho > -100 && rho < 100);
    free(text);
    /* resuming: 2 more steps from step 4 */
    snprintf(cmd, sizeof cmd,
             "%s train --model tests/fixtures/tiny-f16 --corpus %s --out %s/out --steps 6 "
             "--batch-size 8 --max-seq-len 16 --objective both > %s/log2 2>&1 && "
             "grep -q 'resuming from .* at step 4' %s/log2 && grep -q '6 steps done' %s/log2",
             bin(), corpus, dir, dir, dir, dir);
    ck_assert_msg(tu_run(cmd) == 0, "resume failed");
    snprintf(cmd, sizeof cmd, "%s train --model tests/fixtures/tiny-f16 --corpus %s --out %s/x "
             "--objective nope 2>/dev/null", bin(), corpus, dir);
    ck_assert_int_eq(WEXITSTATUS(tu_run(cmd)), 2);
    snprintf(cmd, sizeof cmd, "%s eval --model tests/fixtures/tiny-f16 --sts %s/corpus.txt "
             "2>/dev/null", bin(), dir);
    ck_assert_int_eq(WEXITSTATUS(tu_run(cmd)), 1);
    emb_err err;
    emb_remove_tree(dir, &err);
}
END_TEST

/* `embedd train` on a model with Dense modules: the checkpoint keeps them
 * in order with the same weights, and embeds at their dimension. */
START_TEST(test_cli_train_dense)
{
    char dir[256], cmd[4096], corpus[300];
    tu_mkdtemp(dir, sizeof dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    FILE *fp = fopen(corpus, "w");
    ck_assert(fp != NULL);
    for (int i = 0; i < 30; i++)
        fprintf(fp, "text %d is about %s and a few more words\n", i, i % 2 ? "cats" : "rain");
    fclose(fp);
    snprintf(cmd, sizeof cmd,
             "%s train --model tests/fixtures/tiny-dense --corpus %s --out %s/out --steps 2 "
             "--batch-size 4 --max-seq-len 16 --lr 1e-3 > %s/log 2>&1", bin(), corpus, dir, dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    emb_err err;
    emb_model *a = emb_model_load("tests/fixtures/tiny-dense", &err);
    snprintf(cmd, sizeof cmd, "%s/out", dir);
    emb_model *b = emb_model_load(cmd, &err);
    ck_assert_msg(a != NULL && b != NULL, "%s", err.msg);
    ck_assert_int_eq(b->cfg.n_dense, 2);
    for (int k = 0; k < 2; k++) {
        const emb_dense_config *x = &a->cfg.dense[k], *y = &b->cfg.dense[k];
        ck_assert(x->in_features == y->in_features && x->out_features == y->out_features &&
                  x->bias == y->bias && x->activation == y->activation);
    }
    const size_t at = emb_encoder_floats(&a->cfg);
    ck_assert_uint_eq(a->n_params, b->n_params);
    ck_assert(memcmp(a->params + at, b->params + at, sizeof(float) * (a->n_params - at)) == 0);
    ck_assert_int_eq(b->cfg.normalize, 1);
    snprintf(cmd, sizeof cmd, "grep -q '\"4_Normalize\"' %s/out/modules.json && "
             "test -d %s/out/4_Normalize", dir, dir);
    ck_assert_msg(tu_run(cmd) == 0, "Normalize is not the last module");
    emb_model_free(a);
    emb_model_free(b);
    /* eval embeds through the Dense modules too */
    snprintf(cmd, sizeof cmd, "%s/pairs.tsv", dir);
    fp = fopen(cmd, "w");
    ck_assert(fp != NULL);
    fputs("5.0\ta cat sits\ta cat is sitting\n1.0\ta cat sits\tstocks fell\n"
          "3.0\train today\tit rains\n0.5\train today\ta red car\n", fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "%s eval --model %s/out --sts %s/pairs.tsv | "
             "grep -q '^spearman_x100 .* pairs 4 '", bin(), dir, dir);
    ck_assert_msg(tu_run(cmd) == 0, "eval of the Dense checkpoint failed");
    emb_remove_tree(dir, &err);
}
END_TEST

static Suite *train_suite(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_layout_matches_reference);
    tcase_add_test(tc, test_gradients_without_dropout);
    tcase_add_test(tc, test_gradients_with_torch_dropout_masks);
    tcase_add_test(tc, test_pairs_gradients);
    tcase_add_test(tc, test_word_embeddings_only);
    tcase_add_test(tc, test_dense_gradients);
    tcase_add_test(tc, test_dense_frozen_through_checkpoint);
    tcase_add_test(tc, test_five_adamw_steps);
    tcase_add_test(tc, test_non_finite_step_is_skipped);
    tcase_add_test(tc, test_learning_rate_schedule);
    tcase_add_test(tc, test_batch_masking);
    tcase_add_test(tc, test_simcse_steps_lower_the_loss);
    tcase_add_test(tc, test_checkpoint_resume_is_exact);
    tcase_add_test(tc, test_spearman);
    tcase_add_test(tc, test_cli_train_eval_resume);
    tcase_add_test(tc, test_cli_train_dense);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(train_suite());
}
