/* wordinit.h: a bag-of-words start for a BERT encoder, computed from the
 * statistics of an unlabelled corpus instead of drawn at random.
 *
 * The initialised model embeds a text as the SIF-weighted average of one
 * vector per word family:
 *
 *   embedding(text) ~ sum over tokens t of  w(t) * v(family(t)),
 *   w(t) = a / (a + p(t))            (p: the token's corpus frequency)
 *
 * so it starts as a good bag of words, and training moves it from there.
 *
 *   family   Words of one stem that differ by a frequent ending alternation
 *            (walk, walks, walked, walking) share one vector. The
 *            alternations are learnt from the vocabulary itself: the n_alt
 *            (suffix, suffix) pairs that join the most stems, e.g. ("", "s"),
 *            ("ed", "ing"), ("e", "es"). Both words must be seen min_count
 *            times in the corpus.
 *   v        one random unit vector per family: random vectors in C
 *            dimensions are nearly orthogonal, so distinct families barely
 *            overlap and the average behaves like a sparse bag of words.
 *
 * How BERT's layers compute that average (post-LayerNorm BERT, C hidden,
 * NH heads of HD, the first Z = EMB_BOW_Z_DIMS dimensions reserved):
 *   word_embeddings[t] = scale * [ a(t), -a(t), a(t), ..., r(t) * v ],
 *     r(t) = sqrt(1 - Z a(t)^2), v centred and unit, so every row has mean 0
 *     and length `scale`: the embedding LayerNorm (weight 1, bias 0;
 *     position and token-type embeddings 0) maps row t to sqrt(C) times it.
 *   The last layer's attention pools: its query is a bias alone and its key
 *     reads the signed mean of the Z coordinates, so every token attends to
 *     token j with logit gain * a(j) = log(w(j) / r(j)): softmax weights
 *     w(j) / r(j) / sum. Its values are the inputs (an identity), so each
 *     head outputs its slice of the weighted average sum_j w(j) v(j) (the
 *     r(j) cancel) / sum_j w(j) (plus the small a-part).
 *   Its output projection is mix * I: LayerNorm(x_i + mix * average) is
 *     close to the normalised average for every token i, so mean pooling
 *     returns it. The last LayerNorm's weight is 0 on the Z dimensions.
 *   Every other output projection (attention and FFN, every layer) is 0,
 *     making its residual LayerNorm an identity; query, key, value and
 *     FFN-in of the other layers keep BERT's random start.
 * The weight lives in a log-scale attention logit, not in a row's length:
 * an optimizer step of a given size (Adam moves every parameter by about
 * the learning rate) then changes a weight by a bounded factor, where a
 * length-coded weight of a frequent word (w ~ 0.01) would be overrun by
 * the first steps. Z coordinates (not one) carry a, so that dropout of one
 * of them moves a logit by 1/Z only.
 * [CLS], [SEP], [PAD], [UNK] and [unusedN] get w = 0 (the logit floor
 * min_logit), [MASK] 0.5.
 */
#ifndef EMBEDD_WORDINIT_H
#define EMBEDD_WORDINIT_H

#include <stdint.h>

#include "bert.h"
#include "base/error.h"
#include "tokenizer.h"

#define EMB_BOW_Z_DIMS 8

/* Token counts of a corpus. */
typedef struct emb_token_counts {
    int V;
    double *count;    /* (V) */
    double total;     /* sum of count */
} emb_token_counts;

int emb_token_counts_init(emb_token_counts *c, int V, emb_err *err);
/* Counts n ids (special tokens included; they get weight 0 anyway). Ids
 * outside 0..V-1 are ignored. */
void emb_token_counts_add(emb_token_counts *c, const int32_t *ids, int n);
void emb_token_counts_free(emb_token_counts *c);

typedef struct emb_family_options {
    int n_alt;          /* ending alternations used (150) */
    int min_stem;       /* letters a stem keeps (3) */
    int max_suffix;     /* longest suffix considered (4) */
    double min_count;   /* corpus count both words need (5) */
} emb_family_options;

emb_family_options emb_family_options_default(void);

/* family (V): for each token id, the id that represents its family (itself
 * when alone). Only whole words of lowercase ASCII letters take part.
 * *n_merged gets the number of words joined to another's family. */
int emb_word_families(const emb_tokenizer *tok, const emb_token_counts *counts,
                      const emb_family_options *o, int32_t *family, int *n_merged,
                      emb_err *err);

typedef struct emb_bow_init_options {
    float sif_a;        /* SIF's a (1e-3) */
    float scale;        /* row length of word_embeddings (2): an optimizer step of a
                           given size then moves a row by a small share of it (an
                           MLM decoder tied to these rows starts with logits of
                           standard deviation about 2) */
    float logit_gain;   /* attention logit per unit of a (40): the smaller, the less
                           a step moves a weight, but |logit| <= gain / (2 sqrt(Z)) */
    float min_logit;    /* the log-weight floor, for weight 0 (-7: e^-7 = 0.0009,
                           against 0.02 for "the"); log-weights are also kept
                           within +-logit_gain / (2 sqrt(Z)) */
    float mix;          /* the pooling layer's output projection scale (50) */
} emb_bow_init_options;

emb_bow_init_options emb_bow_init_options_default(void);

/* weight (V): the SIF weight a / (a + p(t)) of every token, p its share of
 * the counted tokens; 0 for [CLS], [SEP], [PAD], [UNK] and [unusedN], 0.5
 * for [MASK]. */
void emb_token_weights(const emb_tokenizer *tok, const emb_token_counts *counts, float a,
                       float *weight);

/* E (V, D): one random unit vector with mean 0 per family (seeded), the
 * same row for every member. */
int emb_family_vectors(const int32_t *family, int V, int D, uint64_t seed, float *E,
                       emb_err *err);

/* Rewrites m's embeddings and layers so that m computes the bag of words
 * sum_t weight(t) E[t] as described above (E (V, C - EMB_BOW_Z_DIMS); each
 * row is centred; its length multiplies the token's weight). The query,
 * key, value and FFN-in weights of the other layers are kept (e.g. from
 * emb_model_init). m must pool by mean. Repacks m. */
int emb_init_bag_of_words(emb_model *m, const float *weight, const float *E,
                          const emb_bow_init_options *o, emb_err *err);

#endif
