/* sts.c: STS loading and Spearman evaluation. See sts.h. */
#include "sts.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static char *dup_range(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* Splits one line into score, a, b. 0 ok, -1 malformed, -2 out of memory. */
static int parse_line(char *line, double *score, char **a, char **b)
{
    char *tab1 = strchr(line, '\t');
    char *tab2 = tab1 != NULL ? strchr(tab1 + 1, '\t') : NULL;
    if (tab2 == NULL)
        return -1;
    *tab1 = '\0';
    char *end;
    errno = 0;
    *score = strtod(line, &end);
    if (end == line || *end != '\0' || errno != 0 || !isfinite(*score))
        return -1;
    size_t len_b = strcspn(tab2 + 1, "\t\r\n");
    *a = dup_range(tab1 + 1, (size_t)(tab2 - tab1 - 1));
    *b = dup_range(tab2 + 1, len_b);
    return (*a != NULL && *b != NULL) ? 0 : -2;
}

static int sts_push(emb_sts *s, int *cap, double score, char *a, char *b)
{
    if (s->n == *cap) {
        int c = *cap ? *cap * 2 : 256;
        double *sc = realloc(s->score, sizeof(double) * (size_t)c);
        if (sc != NULL)
            s->score = sc;
        char **na = realloc(s->a, sizeof(char *) * (size_t)c);
        if (na != NULL)
            s->a = na;
        char **nb = realloc(s->b, sizeof(char *) * (size_t)c);
        if (nb != NULL)
            s->b = nb;
        if (sc == NULL || na == NULL || nb == NULL)
            return -1;
        *cap = c;
    }
    s->score[s->n] = score;
    s->a[s->n] = a;
    s->b[s->n] = b;
    s->n++;
    return 0;
}

int emb_sts_load(emb_sts *s, const char *path, emb_err *err)
{
    memset(s, 0, sizeof *s);
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return emb_fail(err, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap_line = 0;
    int cap = 0, line_no = 0, rc = 0;
    while (getline(&line, &cap_line, fp) >= 0) {
        line_no++;
        if (line[0] == '\n' || line[0] == '\0')
            continue;
        double score;
        char *a = NULL, *b = NULL;
        int r = parse_line(line, &score, &a, &b);
        if (r == -1 && line_no == 1)
            continue; /* header */
        if (r == 0 && sts_push(s, &cap, score, a, b) == 0)
            continue;
        free(a);
        free(b);
        rc = r == -1
                 ? emb_fail(err, "%s:%d: expected score<TAB>sentence1<TAB>sentence2", path, line_no)
                 : emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        break;
    }
    free(line);
    fclose(fp);
    if (rc == 0 && s->n < 2)
        rc = emb_fail(err, "%s: fewer than 2 scored pairs", path);
    if (rc != 0)
        emb_sts_free(s);
    return rc;
}

void emb_sts_free(emb_sts *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->a[i]);
        free(s->b[i]);
    }
    free(s->a);
    free(s->b);
    free(s->score);
    memset(s, 0, sizeof *s);
}

/* ---- Spearman ---------------------------------------------------------------- */

static int by_key(const void *pa, const void *pb, void *key)
{
    const double *x = key;
    double a = x[*(const int *)pa], b = x[*(const int *)pb];
    return (a > b) - (a < b);
}

/* rank (n) of each value of x, 1-based, ties averaged. */
static int ranks(const double *x, int n, double *rank)
{
    int *idx = malloc(sizeof(int) * (size_t)n);
    if (idx == NULL)
        return -1;
    for (int i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, (size_t)n, sizeof(int), by_key, (void *)x);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && x[idx[j + 1]] == x[idx[i]])
            j++;
        double avg = (i + j) / 2.0 + 1.0;
        for (int k = i; k <= j; k++)
            rank[idx[k]] = avg;
        i = j + 1;
    }
    free(idx);
    return 0;
}

static double pearson(const double *x, const double *y, int n)
{
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++) {
        mx += x[i];
        my += y[i];
    }
    mx /= n;
    my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) {
        sxy += (x[i] - mx) * (y[i] - my);
        sxx += (x[i] - mx) * (x[i] - mx);
        syy += (y[i] - my) * (y[i] - my);
    }
    return (sxx > 0 && syy > 0) ? sxy / sqrt(sxx * syy) : 0.0;
}

double emb_spearman(const double *x, const double *y, int n)
{
    double *rx = malloc(sizeof(double) * (size_t)n), *ry = malloc(sizeof(double) * (size_t)n);
    double rho = NAN;
    if (rx != NULL && ry != NULL && ranks(x, n, rx) == 0 && ranks(y, n, ry) == 0)
        rho = pearson(rx, ry, n);
    free(rx);
    free(ry);
    return rho;
}

/* ---- evaluation ----------------------------------------------------------------- */

/* Embeds n texts into out (n, C), L2-normalised, in batches of ~4096 tokens. */
static int embed_texts(const emb_model *m, char *const *texts, int n, float *out, emb_err *err)
{
    const int max_len = m->cfg.max_seq_length;
    const int C = emb_model_dim(m);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)max_len * 64);
    int lens[64];
    emb_workspace *ws = emb_workspace_new(m, max_len * 64, err);
    int rc = ids != NULL && ws != NULL ? 0 : -1;
    if (rc != 0 && ws != NULL)
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    for (int i0 = 0; rc == 0 && i0 < n; i0 += 64) {
        int cnt = n - i0 < 64 ? n - i0 : 64;
        long at = 0;
        for (int j = 0; j < cnt && rc == 0; j++) {
            const char *t = texts[i0 + j];
            lens[j] = emb_encode(m->tok, t, strlen(t), max_len, 0, ids + at, NULL);
            if (lens[j] < 0)
                rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory tokenising");
            at += lens[j];
        }
        if (rc == 0)
            rc = emb_embed_ids(m, ws, ids, lens, cnt, m->cfg.pooling, 1, out + (long)i0 * C,
                               err);
    }
    emb_workspace_free(ws);
    free(ids);
    return rc;
}

int emb_sts_eval(const emb_model *m, const emb_sts *s, double *rho, emb_err *err)
{
    const int C = emb_model_dim(m);
    float *ea = malloc(sizeof(float) * (size_t)s->n * C);
    float *eb = malloc(sizeof(float) * (size_t)s->n * C);
    double *cos = malloc(sizeof(double) * (size_t)s->n);
    int rc = -1;
    if (ea == NULL || eb == NULL || cos == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d pairs", s->n);
        goto out;
    }
    if (embed_texts(m, s->a, s->n, ea, err) != 0 || embed_texts(m, s->b, s->n, eb, err) != 0)
        goto out;
    for (int i = 0; i < s->n; i++) {
        double dot = 0;
        for (int c = 0; c < C; c++)
            dot += (double)ea[(long)i * C + c] * eb[(long)i * C + c];
        cos[i] = dot;
    }
    *rho = emb_spearman(cos, s->score, s->n);
    rc = 0;
out:
    free(ea);
    free(eb);
    free(cos);
    return rc;
}
