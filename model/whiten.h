/* whiten.h: a whitening transform fitted on embeddings (the BERT-whitening
 * of Su et al., 2021), to be appended to a model as a sentence-transformers
 * Dense module (Identity activation, with bias).
 *
 * Legend: D the embedding dimension, k the output dimension (k <= D), n
 * the rows (texts) fitted.
 *
 *   mu      = mean of the rows x_i                              (D)
 *   Sigma   = sum_i (x_i - mu)(x_i - mu)^T / (n - 1)            (D, D)
 *   Sigma   = U diag(lambda) U^T, lambda descending             LAPACK dsyevd
 *   lambda' = (1 - shrink) lambda + shrink * mean(lambda)
 *   W       = diag(lambda'_1..k)^(-1/2) U_1..k^T                (k, D)
 *   b       = -W mu                                             (k)
 *
 * y = W x + b then has zero mean over the fitted rows, and with shrink 0
 * the identity as covariance; its first k dimensions are the k directions
 * of largest variance, largest first. shrink in [0, 1) pulls the spectrum
 * toward its mean (a Ledoit-Wolf-style shrinkage of Sigma toward a scaled
 * identity) so that directions of little variance are blown up less.
 *
 * Directions without variance (eigenvalues below 1e-10 of the largest:
 * float rounding noise) cannot be whitened. They are common: a BERT's last
 * LayerNorm makes every token vector, and so every mean or CLS pooling,
 * satisfy one linear equation, so D-dimensional embeddings span D - 1
 * directions. k = 0 asks for every direction that has variance (the
 * rank). A k beyond the rank needs shrink > 0.
 *
 * Everything is double precision: mean and covariance are accumulated
 * chunk by chunk (emb_moments_add merges each chunk's centred scatter,
 * Chan et al.'s pairwise update, so a large common mean costs no
 * precision), and the eigendecomposition is LAPACK's dsyevd from the
 * OpenBLAS that embedd links. */
#ifndef EMBEDD_WHITEN_H
#define EMBEDD_WHITEN_H

#include "base/error.h"

/* Running mean and scatter of rows of dimension D. */
typedef struct emb_moments {
    int dim;                   /* D */
    long n;                    /* rows added so far */
    double *mean;              /* (D) */
    double *m2;                /* (D, D) sum of (x - mean)(x - mean)^T; upper triangle */
    double *chunk;             /* (cap_rows, D) the centred rows of one add */
    double *chunk_mean;        /* (D) */
    int cap_rows;
} emb_moments;

int emb_moments_init(emb_moments *m, int dim, emb_err *err);
/* Adds rows x (rows, D). */
int emb_moments_add(emb_moments *m, const float *x, int rows, emb_err *err);
void emb_moments_free(emb_moments *m);
/* Sigma (D, D) = m2 / (n - 1), both triangles; needs n >= 2. */
int emb_moments_covariance(const emb_moments *m, double *sigma, emb_err *err);

typedef struct emb_whiten {
    int dim;                   /* D */
    int k;                     /* output dimension */
    float *w;                  /* (k, D) the Dense module's linear.weight */
    float *b;                  /* (k) its linear.bias */
    double *eigenvalues;       /* (D) of Sigma, descending, before shrinking */
    int rank;                  /* directions with variance */
    double kept_variance;      /* share of the total variance in the k directions */
} emb_whiten;

/* Fits the transform of the rows in m (n >= 2) with k output dimensions
 * (1..D, or 0 for the rank) and shrink in [0, 1). With shrink 0, a k above
 * the rank is an error that names the rank. */
int emb_whiten_fit(const emb_moments *m, int k, double shrink, emb_whiten *out, emb_err *err);
void emb_whiten_free(emb_whiten *w);

#endif
