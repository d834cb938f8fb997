/* sts.h: semantic textual similarity evaluation, as the STS benchmark
 * reports it: Spearman rank correlation between the cosine similarity of
 * each pair's embeddings and its human score. */
#ifndef EMBEDD_STS_H
#define EMBEDD_STS_H

#include "bert.h"

typedef struct emb_sts {
    int n;               /* pairs */
    double *score;       /* (n) human scores */
    char **a, **b;       /* (n) the two sentences of each pair */
} emb_sts;

/* Reads a TSV of score<TAB>sentence1<TAB>sentence2 lines. A first line
 * whose score is not a number is taken as a header and skipped; any other
 * malformed line is an error that names it. */
int emb_sts_load(emb_sts *s, const char *path, emb_err *err);
void emb_sts_free(emb_sts *s);

/* Spearman's rho of x and y (n >= 2), ties given their average rank. */
double emb_spearman(const double *x, const double *y, int n);

/* Embeds every sentence with m (its pooling and max_seq_length) and
 * returns, in *rho, Spearman's rho of the pairs' cosine similarities
 * against the scores. */
int emb_sts_eval(const emb_model *m, const emb_sts *s, double *rho, emb_err *err);

#endif
