/* ops.h: the encoder's numeric kernels, as small stateless functions over
 * raw float pointers with explicit dimensions (llm.c style). They allocate
 * nothing; callers own every buffer.
 *
 * Legend:
 *   T   tokens in a packed batch (all sequences back to back, no padding)
 *   S   sequences in the batch; seq_off (S+1) gives each one's first token
 *   C   hidden size          NH  attention heads       HD  head dim = C / NH
 *   I   intermediate (FFN)   V   vocabulary            P   max positions
 * Linear weights use PyTorch's (out, in) layout: y = x W^T + b. */
#ifndef EMBEDD_OPS_H
#define EMBEDD_OPS_H

#include <stdint.h>

/* out (T,C) = wte[ids[t]] + wpe[pos[t]] + wtt[0]; position restarts at 0 for
 * every sequence. */
void embeddings_forward(float *out, const int32_t *ids, const int *seq_off, int S,
                        const float *wte, const float *wpe, const float *wtt, int C);

/* out (T,OUT) = in (T,IN) W^T (OUT,IN) + bias (OUT, may be NULL). */
void matmul_forward(float *out, const float *in, const float *w, const float *bias,
                    int T, int IN, int OUT);

/* x (T,C) = LayerNorm(x + delta + bias) with weight w, bias b. delta and
 * bias may be NULL. The post-LN residual step of BERT. */
void residual_layernorm_forward(float *x, const float *delta, const float *bias,
                                const float *w, const float *b, int T, int C, float eps);

/* residual_layernorm_forward on the calling thread only (for callers that
 * are already one of several threads). */
void residual_layernorm_serial(float *x, const float *delta, const float *bias, const float *w,
                               const float *b, int T, int C, float eps);

/* x (T,N) = gelu(x + bias), exact erf GELU, in place; bias may be NULL. */
void bias_gelu_forward(float *x, const float *bias, int T, int N);

/* Scaled dot-product attention within each sequence (no sequence longer
 * than max_len), on at most n_threads OpenMP threads. qkv (T,3C) holds
 * [q | k | v] per token; out (T,C) gets the heads concatenated. scratch
 * holds attention_scratch_floats(max_len, C/NH, n_threads) floats. */
void attention_forward(float *out, const float *qkv, const int *seq_off, int S,
                       int C, int NH, float *scratch, int max_len, int n_threads);
long attention_scratch_floats(int max_len, int head_dim, int n_threads);

/* out (S,C): mean over each sequence's tokens, its first token (CLS) or its
 * last token. mode: 0 mean, 1 cls, 2 last (emb_pooling values). */
void pool_forward(float *out, const float *x, const int *seq_off, int S, int C, int mode);

/* A sentence-transformers Dense module on S rows: out (S,OUT) =
 * act(in (S,IN) W^T (OUT,IN) + bias (OUT, may be NULL)), act 0 identity
 * or 1 tanh (emb_activation values). out may not alias in. */
void dense_forward(float *out, const float *in, const float *w, const float *bias, int S,
                   int IN, int OUT, int act);

/* Rows of x (S,C) scaled to unit L2 norm in place (zero rows stay zero). */
void l2norm_forward(float *x, int S, int C);

#endif
