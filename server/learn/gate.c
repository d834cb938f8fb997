/* gate.c: see gate.h. */
#include "gate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    else if (lim->use_val_loss && !isfinite(c->val_loss))
        snprintf(reason, cap, "candidate validation loss is not finite");
    else if (lim->use_val_loss && !(c->val_loss < u->val_loss))
        snprintf(reason, cap, "validation loss did not improve (%.5f vs %.5f)", c->val_loss,
                 u->val_loss);
    else if (lim->use_lex && !(c->lex >= u->lex - lim->lex_tolerance))
        snprintf(reason, cap, "lexical agreement fell from %.2f to %.2f", u->lex, c->lex);
    else if (lim->use_lex && !lim->use_val_loss && !(c->lex >= u->lex + lim->lex_min_gain))
        snprintf(reason, cap, "lexical agreement did not rise by %.2f (%.2f vs %.2f)",
                 lim->lex_min_gain, c->lex, u->lex);
    else if (!lim->use_lex && !lim->use_val_loss)
        snprintf(reason, cap, "no quality signal: neither the loss nor the lexical agreement "
                 "counts");
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

/* ---- ranks and the lexical check ------------------------------------------------ */

typedef struct keyed {
    double v;
    int i;
} keyed;

static int by_value(const void *x, const void *y)
{
    double a = ((const keyed *)x)->v, b = ((const keyed *)y)->v;
    return a < b ? -1 : a > b;
}

/* Ranks (1-based, ties averaged) of x into r; -1 out of memory. */
static int ranks(const double *x, int n, double *r)
{
    keyed *k = malloc(sizeof(keyed) * (size_t)n);
    if (k == NULL)
        return -1;
    for (int i = 0; i < n; i++)
        k[i] = (keyed){x[i], i};
    qsort(k, (size_t)n, sizeof(keyed), by_value);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && k[j + 1].v == k[i].v)
            j++;
        for (int m = i; m <= j; m++)
            r[k[m].i] = (i + j) / 2.0 + 1;
        i = j + 1;
    }
    free(k);
    return 0;
}

double gate_spearman(const double *x, const double *y, int n)
{
    double *rx = malloc(sizeof(double) * (size_t)n), *ry = malloc(sizeof(double) * (size_t)n);
    double rho = NAN;
    if (rx != NULL && ry != NULL && n >= 2 && ranks(x, n, rx) == 0 && ranks(y, n, ry) == 0) {
        double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++) {
            mx += rx[i];
            my += ry[i];
        }
        mx /= n;
        my /= n;
        for (int i = 0; i < n; i++) {
            sxy += (rx[i] - mx) * (ry[i] - my);
            sxx += (rx[i] - mx) * (rx[i] - mx);
            syy += (ry[i] - my) * (ry[i] - my);
        }
        if (sxx > 0 && syy > 0)
            rho = sxy / sqrt(sxx * syy);
    }
    free(rx);
    free(ry);
    return rho;
}

/* One text's TF-IDF vector as sorted (term, weight) entries, L2-normalised. */
typedef struct tfidf_vec {
    int n;
    int *term;
    double *w;
} tfidf_vec;

static int cmp_int(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    return a < b ? -1 : a > b;
}

static double tfidf_dot(const tfidf_vec *x, const tfidf_vec *y)
{
    double d = 0;
    for (int i = 0, j = 0; i < x->n && j < y->n;) {
        if (x->term[i] == y->term[j])
            d += x->w[i++] * y->w[j++];
        else if (x->term[i] < y->term[j])
            i++;
        else
            j++;
    }
    return d;
}

/* The TF-IDF vectors of the n texts into v (n); -1 out of memory. */
static int tfidf_build(const int *ids, const int *lens, int n, int vocab, int skip_below,
                       tfidf_vec *v)
{
    int *df = calloc((size_t)vocab, sizeof(int));
    if (df == NULL)
        return -1;
    long at = 0;
    for (int i = 0; i < n; i++) {
        int *t = malloc(sizeof(int) * (size_t)(lens[i] > 0 ? lens[i] : 1));
        double *w = malloc(sizeof(double) * (size_t)(lens[i] > 0 ? lens[i] : 1));
        if (t == NULL || w == NULL) {
            free(t);
            free(w);
            free(df);
            return -1;
        }
        int m = 0;
        for (int k = 0; k < lens[i]; k++) {
            int id = ids[at + k];
            if (id >= skip_below && id < vocab)
                t[m++] = id;
        }
        at += lens[i];
        qsort(t, (size_t)m, sizeof(int), cmp_int);
        int u = 0; /* distinct terms with their counts in w */
        for (int k = 0; k < m; k++) {
            if (u > 0 && t[u - 1] == t[k]) {
                w[u - 1] += 1;
            } else {
                t[u] = t[k];
                w[u++] = 1;
            }
        }
        for (int k = 0; k < u; k++)
            df[t[k]]++;
        v[i] = (tfidf_vec){.n = u, .term = t, .w = w};
    }
    for (int i = 0; i < n; i++) {
        double norm = 0;
        for (int k = 0; k < v[i].n; k++) {
            v[i].w[k] *= log((double)n / df[v[i].term[k]]);
            norm += v[i].w[k] * v[i].w[k];
        }
        norm = norm > 0 ? 1.0 / sqrt(norm) : 0;
        for (int k = 0; k < v[i].n; k++)
            v[i].w[k] *= norm;
    }
    free(df);
    return 0;
}

int gate_lexical_pairs(const int *ids, const int *lens, int n, int vocab, int skip_below,
                       int *a, int *b, double *sim)
{
    tfidf_vec *v = calloc((size_t)n, sizeof(tfidf_vec));
    if (v == NULL)
        return -1;
    int rc = tfidf_build(ids, lens, n, vocab, skip_below, v);
    if (rc == 0) {
        for (int i = 0; i < n; i++) {
            int best = (i + 1) % n;
            double best_sim = -1;
            for (int j = 0; j < n; j++) {
                double s = j == i ? -1 : tfidf_dot(&v[i], &v[j]);
                if (s > best_sim) {
                    best_sim = s;
                    best = j;
                }
            }
            a[2 * i] = i;
            b[2 * i] = best;
            sim[2 * i] = best_sim;
            a[2 * i + 1] = i;
            b[2 * i + 1] = (i + 1) % n;
            sim[2 * i + 1] = tfidf_dot(&v[i], &v[(i + 1) % n]);
        }
    }
    for (int i = 0; i < n; i++) {
        free(v[i].term);
        free(v[i].w);
    }
    free(v);
    return rc;
}

double gate_lexical_agreement(const float *e, int dim, const int *a, const int *b,
                              const double *sim, int n_pairs)
{
    double *cos = malloc(sizeof(double) * (size_t)n_pairs);
    if (cos == NULL)
        return NAN;
    for (int p = 0; p < n_pairs; p++) {
        double d = 0;
        for (int c = 0; c < dim; c++)
            d += (double)e[(long)a[p] * dim + c] * e[(long)b[p] * dim + c];
        cos[p] = d;
    }
    double rho = gate_spearman(cos, sim, n_pairs);
    free(cos);
    return 100.0 * rho;
}

double gate_uniformity(const float *e, int n, int dim)
{
    double sum = 0;
    long pairs = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            double d2 = 0;
            for (int c = 0; c < dim; c++) {
                double d = (double)e[(long)i * dim + c] - e[(long)j * dim + c];
                d2 += d * d;
            }
            sum += exp(-2.0 * d2);
            pairs++;
        }
    return pairs > 0 ? log(sum / pairs) : NAN;
}
