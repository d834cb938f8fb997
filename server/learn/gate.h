/* gate.h: the publish gate's decision, apart from its measurements.
 *
 * The learner measures two sides on the same held-out texts (and, with
 * --eval-sts, the same scored pairs): the candidate (the EMA of the
 * trainer's weights) and the current version. gate_decide compares them
 * and says whether the candidate may be published, and why (or why not).
 * The checks, in order, the first failing one giving the reason:
 *   1. collapse alarm: the candidate's mean pairwise cosine is above
 *      max_cos, or rose by more than cos_rise over the current's, or its
 *      per-dimension variance fell below min_var x the current's;
 *   2. with use_val_loss (a gradient stage's candidate, whose loss compares
 *      with the current's), the candidate's validation loss is finite and
 *      strictly lower;
 *   3. with use_lex, its agreement with a lexical baseline on held-out
 *      pairs (gate_lexical_agreement) is at most lex_tolerance below the
 *      current's; and when the loss does not count (a stage without a
 *      loss, such as refitting the whitening), it must rise by at least
 *      lex_min_gain: such a candidate passes on that signal alone;
 *   4. with use_sts, its STS Spearman is at most sts_tolerance below.
 * Without use_val_loss and use_lex nothing shows a gain: the candidate
 * fails ("no quality signal").
 *
 * Why a lexical baseline: the SimCSE validation loss saturates within
 * minutes (1e-4, compared at the fifth digit), and a whitening refit has no
 * loss at all. TF-IDF cosines of held-out texts are a label-free reference
 * that does not move with the model: the Spearman correlation of the
 * model's cosines with them over pairs that range from near-duplicates
 * (each text and its TF-IDF nearest neighbour) to unrelated texts (each
 * text and the next) measures whether the model still ranks by content;
 * docs/learning.md reports how its decisions track STS-B.
 *
 * uniformity (Wang and Isola, 2020) is measured and shown, not decided on.
 *
 * Everything here is a pure function of its arguments: no state, no
 * threads, no I/O; tests/test_gate.c runs it over a table of cases. */
#ifndef EMBEDD_GATE_H
#define EMBEDD_GATE_H

#include <stddef.h>

/* One measured side. */
typedef struct gate_side {
    double val_loss;           /* mean validation loss on the held-out texts */
    double mean_cos;           /* mean pairwise cosine of their embeddings */
    double variance;           /* mean per-dimension variance of them */
    double sts;                /* Spearman x100, NAN when not measured */
    double lex;                /* lexical agreement x100 (gate_lexical_agreement), NAN: not
                                * measured */
    double uniformity;         /* log mean exp(-2 |e_i - e_j|^2), lower is more spread; shown */
} gate_side;

/* The tolerances (learner_opts: --gate-tolerance and the collapse alarm). */
typedef struct gate_limits {
    double max_cos;            /* alarm above this mean pairwise cosine ... */
    double cos_rise;           /* ... or a rise of more than this over the current's */
    double min_var;            /* alarm below this share of the current's variance */
    int use_sts;               /* 1: the sts fields were measured and count */
    double sts_tolerance;      /* largest Spearman x100 drop allowed */
    int use_val_loss;          /* 1: val_loss compares (a gradient stage's candidate) */
    int use_lex;               /* 1: the lex fields were measured and count */
    double lex_tolerance;      /* largest lexical agreement x100 drop allowed */
    double lex_min_gain;       /* rise needed when the loss does not count */
} gate_limits;

/* 1 when cand may replace cur, else 0; reason (cap bytes, NUL-terminated)
 * says "passed" or which check failed, with the numbers. */
int gate_decide(const gate_limits *lim, const gate_side *cand, const gate_side *cur,
                char *reason, size_t cap);

/* The collapse statistics of n >= 2 L2-normalised embeddings e (n, dim):
 * their mean pairwise cosine (over pairs i != j) and the mean over the
 * dimensions of their variance. A collapsed model maps everything to
 * nearly one point: cosine near 1, variance near 0. 0, or -1 out of
 * memory. */
int gate_collapse_stats(const float *e, int n, int dim, double *mean_cos, double *variance);

/* The held-out pairs of the lexical check and their TF-IDF cosines, from
 * the n >= 3 texts as term ids (ids: the texts' terms back to back, lens
 * their counts; terms are ids in [0, vocab), e.g. the model's word pieces;
 * ids below skip_below, the special tokens, are ignored). IDF is log(n /
 * df) over these texts. Pairs: (i, its nearest TF-IDF neighbour) and (i,
 * i + 1 mod n) for each i, so 2n pairs into a, b (2n) and sim (2n).
 * Deterministic. 0, or -1 out of memory. */
int gate_lexical_pairs(const int *ids, const int *lens, int n, int vocab, int skip_below,
                       int *a, int *b, double *sim);

/* Spearman x100 of the cosines of L2-normalised embeddings e (n, dim) over
 * the pairs (a, b) with the reference similarities sim (n_pairs). NAN out
 * of memory or without variance. */
double gate_lexical_agreement(const float *e, int dim, const int *a, const int *b,
                              const double *sim, int n_pairs);

/* Uniformity of n >= 2 L2-normalised embeddings (Wang and Isola): log of
 * the mean over pairs i < j of exp(-2 |e_i - e_j|^2). */
double gate_uniformity(const float *e, int n, int dim);

/* Spearman correlation (ties get their mean rank) of x and y (n); NAN
 * without variance or out of memory. */
double gate_spearman(const double *x, const double *y, int n);

#endif
