/* train.h: training the encoder in C: a forward pass that keeps its
 * activations, the backward pass through every op, the self-supervised
 * objectives (unsupervised SimCSE and BERT masked-token prediction), an
 * optional L2-SP anchor, and AdamW with warm-up, decay and clipping.
 *
 * One flat block holds every parameter: the model's own block (the 17
 * encoder tensors in emb_weights order, then its Dense modules, bert.h),
 * then the 5 tensors of the MLM head. The gradients and both AdamW moments
 * are flat blocks of the same size and layout, so "the gradient of tensor
 * X" is the same offset everywhere.
 *
 * A training step on texts x_1..x_B (each [CLS] ... [SEP]) packs one batch:
 *   SimCSE:  x_1..x_B, then x_1..x_B again (2B sequences; independent
 *            dropout masks give the two views);
 *   MLM:     x_1..x_B with 15% of their ordinary tokens chosen (80% -> [MASK],
 *            10% -> a random id, 10% kept), appended after the SimCSE views.
 * loss = simcse_weight * InfoNCE(cos(z_i, z'_j) / temperature, i)
 *      + mlm_weight * mean cross-entropy over the chosen tokens
 *      + l2sp / 2 * ||theta_enc - theta_enc_0||^2.
 * z is the model's own pooling (mean, cls or last) of the last hidden state,
 * then its Dense modules in order (sentence-transformers Dense, config.h),
 * then L2-normalised: the embedding the model serves.
 *
 * Dense modules are frozen. The loss backpropagates through them into the
 * encoder, but their weights never change: no gradient is accumulated for
 * them and AdamW skips their block, so they are saved exactly as loaded.
 * The reason: the Dense modules embedd meets are fixed maps fitted
 * outside the SimCSE objective (a projection shipped with a model, or a
 * whitening transform from `embedd whiten` whose meaning, zero mean and
 * unit covariance of the corpus, the contrastive loss would not keep).
 * To retrain a whitening, train the encoder and whiten again.
 *
 * Dropout follows BERT: after the embedding LayerNorm, on the attention
 * probabilities, and on the attention-output and FFN-output projections
 * before their residual LayerNorms. */
#ifndef EMBEDD_TRAIN_H
#define EMBEDD_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "bert.h"
#include "ops_train.h"

/* The MLM head (BertOnlyMLMHead): transform = dense, GELU, LayerNorm; the
 * decoder is tied to the word embeddings, plus its own bias. */
typedef struct emb_mlm_head {
    float *dense_w;  /* (C, C)  cls.predictions.transform.dense.weight */
    float *dense_b;  /* (C)     cls.predictions.transform.dense.bias */
    float *ln_w;     /* (C)     cls.predictions.transform.LayerNorm.weight */
    float *ln_b;     /* (C)     cls.predictions.transform.LayerNorm.bias */
    float *bias;     /* (V)     cls.predictions.bias */
} emb_mlm_head;

#define EMB_N_HEAD_TENSORS 5

/* PAIRS: contrastive learning on given positive pairs instead of two
 * dropout views of one text: emb_batch_build takes 2B texts, B anchors then
 * their B positives, packed like SimCSE's two views, and the InfoNCE loss is
 * symmetric (anchor -> positive and positive -> anchor, averaged). It is not
 * combined with the other objectives. */
enum { EMB_OBJ_SIMCSE = 1, EMB_OBJ_MLM = 2, EMB_OBJ_BOTH = 3, EMB_OBJ_PAIRS = 4 };
enum { EMB_SCHED_CONSTANT = 0, EMB_SCHED_LINEAR, EMB_SCHED_COSINE };

typedef struct emb_train_config {
    int objective;           /* EMB_OBJ_* */
    float simcse_weight;     /* 1 */
    float mlm_weight;        /* 1 */
    float temperature;       /* 0.05 */
    float mlm_prob;          /* 0.15 */
    int word_embeddings_only; /* 1: only the word embeddings learn (the rest is
                                 frozen, though its gradients are computed) */
    float hidden_dropout;    /* < 0: the model's hidden_dropout_prob */
    float attn_dropout;      /* < 0: the model's attention_probs_dropout_prob */
    float l2sp;              /* L2-SP strength toward the starting weights; 0 off */
    float lr;                /* peak learning rate */
    float weight_decay;      /* 0.01, not on biases or LayerNorm weights */
    float beta1, beta2, adam_eps;
    float clip_norm;         /* global gradient-norm clip; <= 0 off */
    int warmup_steps;
    int total_steps;         /* for the decay; <= 0: constant after warm-up */
    int schedule;            /* EMB_SCHED_* after warm-up */
    uint64_t seed;
} emb_train_config;

/* The defaults above. */
emb_train_config emb_train_config_default(void);

/* Learning rate of optimizer step `step` (1-based): linear warm-up from
 * lr/warmup to lr over warmup steps, then the schedule to 0 at total_steps. */
float emb_lr_at(const emb_train_config *tc, long step);

typedef struct emb_step_stats {
    double loss;             /* total, L2-SP included */
    double simcse_loss;      /* unweighted; 0 when off */
    double mlm_loss;         /* unweighted; 0 when off */
    double grad_norm;        /* before clipping */
    float lr;
    int skipped;             /* 1: non-finite loss or gradient, nothing applied */
    long tokens;             /* tokens through the encoder this step */
    int mlm_targets;         /* tokens predicted */
} emb_step_stats;

typedef struct emb_train_acts emb_train_acts;

typedef struct emb_trainer {
    emb_config cfg;
    emb_train_config tc;
    emb_special_tokens special;
    size_t n_enc;            /* the model's floats (emb_model.n_params): encoder, Dense */
    size_t dense_at;         /* where the Dense block starts: [dense_at, n_enc) is frozen */
    size_t n_params;         /* n_enc + the head */
    float *params;           /* (n_params) */
    float *grads;            /* (n_params) */
    float *m, *v;            /* (n_params) AdamW moments */
    float *anchor;           /* (n_enc) L2-SP target, or NULL */
    float *decay_mask;       /* (n_params) 1 where weight decay applies, else 0 */
    emb_weights w, gw;       /* views of params and grads */
    emb_dense_w dw[EMB_MAX_DENSE]; /* (cfg.n_dense) views of the frozen Dense weights */
    emb_mlm_head hw, ghw;
    long step;               /* optimizer steps applied */
    long skipped;            /* steps skipped for non-finite values */
    emb_rng rng;
    emb_train_acts *acts;
    /* the step in progress (emb_train_begin / emb_train_advance) */
    const struct emb_batch *cur_batch;
    int cur_phase, cur_masks, cur_backward;
    float apply_scale, apply_lr; /* the update in progress (emb_train_apply_begin) */
} emb_trainer;

/* A trainer starting from model's weights. The MLM head comes from
 * head_dir's safetensors (cls.predictions.*) when head_dir is not NULL and
 * has them; otherwise it is initialised (dense N(0, 0.02), LayerNorm 1/0,
 * bias 0). */
emb_trainer *emb_trainer_new(const emb_model *model, const char *head_dir,
                             const emb_train_config *tc, emb_err *err);
void emb_trainer_free(emb_trainer *t);

/* Sizes in floats of the head tensors, and pointing views into a block. */
void emb_head_sizes(const emb_config *cfg, size_t sizes[EMB_N_HEAD_TENSORS]);
void emb_head_point(emb_mlm_head *h, float *base, const emb_config *cfg);
/* Reads the cls.predictions.* tensors of dir/model.safetensors into head
 * (emb_head_sizes layout). Returns 1 when loaded, 0 when the file or the
 * tensors are absent, -1 on a bad file. */
int emb_head_load(const char *dir, const emb_config *cfg, float *head, emb_err *err);

/* One optimizer step on n texts (ids back to back, each [CLS] ... [SEP],
 * lens[i] tokens): forward, losses, backward, clip, AdamW. */
int emb_train_step(emb_trainer *t, const int32_t *ids, const int *lens, int n,
                   emb_step_stats *st, emb_err *err);

/* ---- the pieces of a step, for tests and for evaluation ---------------- */

/* A packed training batch, built by emb_batch_build. */
typedef struct emb_batch {
    int n_texts;             /* B */
    int n_simcse;            /* sequences in SimCSE views: 2B or 0 */
    int n_mlm;               /* MLM sequences: B or 0 */
    int S, T;                /* sequences and tokens in all */
    int32_t *ids;            /* (T) */
    int *seq_off;            /* (S + 1) */
    int *labels;             /* (T) original id at MLM targets, else -1 */
    int cap_T, cap_S;
} emb_batch;

void emb_batch_free(emb_batch *b);
/* Packs n texts for the objectives in t->tc, drawing the MLM choices from
 * t->rng. */
int emb_batch_build(emb_trainer *t, emb_batch *b, const int32_t *ids, const int *lens, int n,
                    emb_err *err);

/* Dropout masks of the next forward pass, for tests that import torch's:
 * emb_train_prepare sizes the activations for b and returns, in masks, the
 * 1 + 3L buffers in order: embeddings (T,C); then per layer: attention
 * probabilities (layout of ops_train.h), attention output (T,C), FFN output
 * (T,C). Sizes go to sizes. */
int emb_train_prepare(emb_trainer *t, const emb_batch *b, float **masks, long *sizes,
                      emb_err *err);

/* Forward and backward of b: zeroes the gradients, fills them, and returns
 * the losses in st (grad_norm too; no clipping, no update). dropout: 1 draws
 * fresh masks from t->rng, 0 uses the masks already in place (after
 * emb_train_prepare), -1 runs without dropout. */
int emb_train_forward_backward(emb_trainer *t, const emb_batch *b, int dropout,
                               emb_step_stats *st, emb_err *err);

/* The same step in pieces of about one layer's work, so that a caller can
 * interleave other work between them: emb_train_begin, then
 * emb_train_advance until it returns 0 (the gradients and st are then
 * complete). b must stay alive until then. */
int emb_train_begin(emb_trainer *t, const emb_batch *b, int dropout, emb_step_stats *st,
                    emb_err *err);
int emb_train_advance(emb_trainer *t, emb_step_stats *st);

/* The losses of b only (forward, no gradients), e.g. for validation. */
int emb_train_loss(emb_trainer *t, const emb_batch *b, int dropout, emb_step_stats *st,
                   emb_err *err);

/* Clips, checks for non-finite values and applies AdamW with the learning
 * rate of the next step (never to the frozen Dense block). Returns 1 when
 * the step was skipped, else 0. */
int emb_train_apply(emb_trainer *t, emb_step_stats *st);

/* emb_train_apply in pieces: _begin does the checks, the clipping factor,
 * the step count and the learning rate (1 when skipped, then nothing else
 * may be called); _range updates parameters [from, to). */
int emb_train_apply_begin(emb_trainer *t, emb_step_stats *st);
void emb_train_apply_range(emb_trainer *t, size_t from, size_t to);

/* Restarts optimisation from weights (n_enc floats: the model block, as in
 * emb_model.params; NULL keeps the current ones): the model block takes
 * them, both AdamW moments go to 0 and the step count to 0, so warm-up
 * starts again. The MLM head, the L2-SP anchor, the skip count and the
 * random state are kept. */
void emb_trainer_reset(emb_trainer *t, const float *weights);

/* Copies the trainer's model block (encoder and Dense) into model (same
 * config) and repacks it. */
int emb_trainer_export(const emb_trainer *t, emb_model *model, emb_err *err);

#endif
