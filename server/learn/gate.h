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
 *   2. the candidate's validation loss is finite and strictly lower;
 *   3. with use_sts, its STS Spearman is at most sts_tolerance below.
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
} gate_side;

/* The tolerances (learner_opts: --gate-tolerance and the collapse alarm). */
typedef struct gate_limits {
    double max_cos;            /* alarm above this mean pairwise cosine ... */
    double cos_rise;           /* ... or a rise of more than this over the current's */
    double min_var;            /* alarm below this share of the current's variance */
    int use_sts;               /* 1: the sts fields were measured and count */
    double sts_tolerance;      /* largest Spearman x100 drop allowed */
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

#endif
