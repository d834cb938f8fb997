/* ops_train.h: training-mode kernels. Forward steps that keep what their
 * backward needs, and the backward of every op of the encoder (ops.h has the
 * legend: T tokens, S sequences, seq_off, C, NH, HD, I, V).
 *
 * Conventions:
 *   - Gradients of parameters ACCUMULATE (+=): a step zeroes them once.
 *   - Gradients of activations (din, dinp, dx, dqkv) are OVERWRITTEN (=),
 *     unless the comment says otherwise.
 *   - Dropout masks are float arrays holding 0 or 1/(1-p) per element, so
 *     applying a mask and its backward are the same elementwise product.
 *     A NULL mask means no dropout.
 *   - Nothing allocates unless stated; callers own every buffer.
 *   - Attention probabilities are stored per sequence s (length n_s) as
 *     NH blocks of n_s x n_s, [head][query i][key j], the sequences back to
 *     back: attention_probs_offsets() gives each sequence's start. */
#ifndef EMBEDD_OPS_TRAIN_H
#define EMBEDD_OPS_TRAIN_H

#include <stdint.h>

/* ---- random numbers (xoshiro128+-style, seeded; reproducible) ---------- */
typedef struct emb_rng {
    uint64_t s[2];
} emb_rng;

void emb_rng_seed(emb_rng *r, uint64_t seed);
uint64_t emb_rng_next(emb_rng *r);
/* Uniform in [0, 1). */
float emb_rng_uniform(emb_rng *r);

/* order (n) = a permutation of 0..n-1, the same for the same seed and
 * epoch (Fisher-Yates on a generator seeded from both). */
void emb_shuffle_order(long *order, long n, uint64_t seed, long epoch);

/* mask (n) = 0 with probability p, else 1/(1-p). p <= 0: all ones. */
void dropout_mask_fill(float *mask, long n, float p, emb_rng *r);
/* x (n) *= mask (n). Dropout forward and backward alike. mask NULL: no-op. */
void mul_mask_inplace(float *x, const float *mask, long n);

/* ---- embeddings -------------------------------------------------------- */
/* dwte (V,C), dwpe (P,C), dwtt (TV,C) += the gradient of
 * embeddings_forward (ops.h) for dout (T,C). Token type is always 0. */
void embeddings_backward(float *dwte, float *dwpe, float *dwtt, const float *dout,
                         const int32_t *ids, const int *seq_off, int S, int C);

/* ---- LayerNorm --------------------------------------------------------- */
/* out (T,C) = LayerNorm(inp) * w + b; mean and rstd (T) keep the row
 * statistics. out may not alias inp. */
void layernorm_forward_train(float *out, float *mean, float *rstd, const float *inp,
                             const float *w, const float *b, int T, int C, float eps);
/* dinp (T,C) = gradient wrt inp; dw, db (C) +=. */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *mean, const float *rstd, const float *w, int T, int C);

/* ---- linear ------------------------------------------------------------ */
/* For out (T,OUT) = in (T,IN) W^T (OUT,IN) + bias:
 * din (T,IN) = dout W (din may be NULL: skipped); dw (OUT,IN) += dout^T in
 * (dw may be NULL: skipped); db (OUT) += column sums of dout (db may be
 * NULL). Uses cblas_sgemm. */
void matmul_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                     const float *w, int T, int IN, int OUT);

/* ---- Dense (sentence-transformers) ------------------------------------- */
/* For out (S,OUT) = act(in (S,IN) W^T + bias), dense_forward (ops.h), act
 * 0 identity or 1 tanh: din (S,IN) = the gradient wrt in; dw, db += as in
 * matmul_backward (either may be NULL: a frozen module). out is the
 * forward's output (tanh' = 1 - out^2). dout is overwritten with the
 * gradient wrt the pre-activation. */
void dense_backward(float *din, float *dw, float *db, float *dout, const float *in,
                    const float *out, const float *w, int S, int IN, int OUT, int act);

/* ---- GELU (exact erf) -------------------------------------------------- */
/* dinp (n) = dout * GELU'(inp), inp the pre-activation (bias included).
 * dinp may alias dout. */
void gelu_backward(float *dinp, const float *inp, const float *dout, long n);

/* ---- attention --------------------------------------------------------- */
/* Start of each sequence's probability blocks (S+1 entries; off[S] is the
 * total number of floats): off[s+1] = off[s] + NH * n_s * n_s. */
void attention_probs_offsets(long *off, const int *seq_off, int S, int NH);

/* qkv (T,3C) holds [q | k | v] per token, head h at columns h*HD.. of each.
 * probs (off[S]) = softmax(q k^T / sqrt(HD)) within each sequence, per head
 * (saved, before dropout); out (T,C) = (probs * mask) v, heads concatenated.
 * mask has the layout of probs, or is NULL. */
void attention_forward_train(float *out, float *probs, const float *qkv, const float *mask,
                             const long *off, const int *seq_off, int S, int C, int NH);
/* dqkv (T,3C) = gradient wrt qkv for dout (T,C). scratch holds
 * attention_backward_scratch_floats(max_len, n_threads) floats, max_len the
 * longest sequence; runs on OpenMP threads over (sequence, head). */
void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs,
                        const float *mask, const long *off, const int *seq_off, int S, int C,
                        int NH, float *scratch);
long attention_backward_scratch_floats(int max_len, int n_threads);

/* ---- pooling and L2 normalisation -------------------------------------- */
/* dx (T,C) = gradient of pool_forward (ops.h; mode 0 mean, 1 cls, 2 last)
 * for dpooled (S,C); rows that were not pooled get zeros. */
void pool_backward(float *dx, const float *dpooled, const int *seq_off, int S, int C, int mode);

/* y (S,C) = x / max(||x||, 1e-12) per row; norm (S) keeps max(||x||, 1e-12). */
void l2norm_forward_train(float *y, float *norm, const float *x, int S, int C);
/* dx (S,C) = (dy - y (y . dy)) / norm per row. dx may alias dy. */
void l2norm_backward(float *dx, const float *dy, const float *y, const float *norm, int S, int C);

/* ---- cross-entropy ----------------------------------------------------- */
/* For logits (N,V) and labels (N; < 0 means ignore the row): returns the sum
 * over kept rows of -log softmax(logits)[label] (in double for accuracy),
 * and, when dlogits is not NULL, sets dlogits (N,V) = scale * (softmax -
 * onehot(label)) for kept rows and 0 for ignored rows. dlogits may alias
 * logits. Numerically stable (max subtracted). */
double softmax_cross_entropy(float *dlogits, const float *logits, const int *labels, int N,
                             int V, float scale);

/* Symmetric InfoNCE over sim (B,B), the positives at (i, labels[i]) (the
 * diagonal for labels[i] = i): the mean of the cross-entropy over sim's
 * rows and over its columns. Returns that loss (mean over the B rows) and
 * replaces sim by weight times its gradient. spare holds B x B floats. */
double infonce_symmetric(float *sim, float *spare, const int *labels, int B, float weight);

#endif
