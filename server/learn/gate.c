/* gate.c: see gate.h. */
#include "gate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int gate_decide(const gate_limits *lim, const gate_side *c, const gate_side *u, char *reason,
                size_t cap)
{
    if (c->mean_cos > lim->max_cos)
        snprintf(reason, cap,
                 "collapse alarm: held-out embeddings are nearly identical (mean pairwise "
                 "cosine %.4f > %.2f)", c->mean_cos, lim->max_cos);
    else if (c->mean_cos > u->mean_cos + lim->cos_rise)
        snprintf(reason, cap, "collapse alarm: mean pairwise cosine rose from %.4f to %.4f",
                 u->mean_cos, c->mean_cos);
    else if (c->variance < lim->min_var * u->variance)
        snprintf(reason, cap,
                 "collapse alarm: embedding variance %.3g fell below %.2f x the current %.3g",
                 c->variance, lim->min_var, u->variance);
    else if (!isfinite(c->val_loss))
        snprintf(reason, cap, "candidate validation loss is not finite");
    else if (!(c->val_loss < u->val_loss))
        snprintf(reason, cap, "validation loss did not improve (%.5f vs %.5f)", c->val_loss,
                 u->val_loss);
    else if (lim->use_sts && !(c->sts >= u->sts - lim->sts_tolerance))
        snprintf(reason, cap, "STS Spearman fell from %.2f to %.2f", u->sts, c->sts);
    else {
        snprintf(reason, cap, "passed");
        return 1;
    }
    return 0;
}

int gate_collapse_stats(const float *e, int n, int dim, double *mean_cos, double *variance)
{
    const int C = dim;
    double *mean = calloc((size_t)C, sizeof(double));
    if (mean == NULL)
        return -1;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++)
            mean[c] += e[(long)i * C + c];
    double sum2 = 0, var = 0;
    for (int c = 0; c < C; c++) {
        mean[c] /= n;
        sum2 += mean[c] * mean[c];
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            double d = e[(long)i * C + c] - mean[c];
            var += d * d;
        }
    /* unit vectors: sum_{i != j} <e_i, e_j> = |sum e|^2 - n */
    *mean_cos = (sum2 * n * n - n) / ((double)n * (n - 1));
    *variance = var / n / C;
    free(mean);
    return 0;
}
