/* bowtrain.c: the bag-of-words contrastive trainer of bowtrain.h. */
#include "bowtrain.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- pairs ------------------------------------------------------------------ */

static int grow(void **p, long *cap, long need, size_t elem)
{
    if (need <= *cap)
        return 0;
    long c = *cap > 0 ? *cap : 1024;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

int emb_text_pairs_add(emb_text_pairs *p, const int32_t *a, int na, const int32_t *b, int nb,
                       emb_err *err)
{
    if (na < 1 || nb < 1)
        return emb_fail(err, "a text pair needs a token on each side");
    long at = p->n > 0 ? p->off[2 * p->n] : 0;
    if (grow((void **)&p->ids, &p->cap_ids, at + na + nb, sizeof(int32_t)) != 0 ||
        grow((void **)&p->off, &p->cap_off, 2 * p->n + 3, sizeof(long)) != 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %ld text pairs", p->n + 1);
    memcpy(p->ids + at, a, sizeof(int32_t) * (size_t)na);
    memcpy(p->ids + at + na, b, sizeof(int32_t) * (size_t)nb);
    p->off[2 * p->n] = at;
    p->off[2 * p->n + 1] = at + na;
    p->off[2 * p->n + 2] = at + na + nb;
    p->n++;
    return 0;
}

void emb_text_pairs_free(emb_text_pairs *p)
{
    free(p->ids);
    free(p->off);
    memset(p, 0, sizeof *p);
}

/* ---- the trainer -------------------------------------------------------------- */

emb_bow_train_options emb_bow_train_options_default(void)
{
    emb_bow_train_options o = {.batch = 256, .lr = 1e-3f, .temperature = 0.05f, .seed = 42};
    return o;
}

emb_bow_trainer *emb_bow_trainer_new(float *E, const float *weight, int V, int D,
                                     const emb_bow_train_options *o, emb_err *err)
{
    if (o->batch < 2 || !(o->temperature > 0) || !(o->lr > 0)) {
        emb_fail(err, "bag-of-words training: batch must be >= 2, temperature and lr > 0");
        return NULL;
    }
    emb_bow_trainer *t = calloc(1, sizeof *t);
    if (t == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    const size_t VD = (size_t)V * (size_t)D, B = (size_t)o->batch;
    t->V = V;
    t->D = D;
    t->o = *o;
    t->E = E;
    t->weight = weight;
    t->grad = calloc(VD, sizeof(float));
    t->m = calloc(VD, sizeof(float));
    t->v = calloc(VD, sizeof(float));
    t->z = malloc(sizeof(float) * 2 * B * (size_t)D);
    t->unit = malloc(sizeof(float) * 2 * B * (size_t)D);
    t->dunit = malloc(sizeof(float) * 2 * B * (size_t)D);
    t->norms = malloc(sizeof(float) * 2 * B);
    t->sim = malloc(sizeof(float) * 2 * B * B);
    t->labels = malloc(sizeof(int) * B);
    if (t->grad == NULL || t->m == NULL || t->v == NULL || t->z == NULL || t->unit == NULL ||
        t->dunit == NULL || t->norms == NULL || t->sim == NULL || t->labels == NULL) {
        emb_bow_trainer_free(t);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for bag-of-words training (%d x %d)", V,
                    D);
        return NULL;
    }
    for (int i = 0; i < o->batch; i++)
        t->labels[i] = i;
    return t;
}

void emb_bow_trainer_free(emb_bow_trainer *t)
{
    if (t == NULL)
        return;
    free(t->grad);
    free(t->m);
    free(t->v);
    free(t->z);
    free(t->unit);
    free(t->dunit);
    free(t->norms);
    free(t->sim);
    free(t->labels);
    free(t->order);
    free(t);
}

/* z (D) = sum of weight(t) E[t] over ids[from, to). */
static void bow_forward(const emb_bow_trainer *t, const int32_t *ids, long from, long to,
                        float *z)
{
    const int D = t->D;
    memset(z, 0, sizeof(float) * (size_t)D);
    for (long i = from; i < to; i++) {
        const float w = t->weight[ids[i]];
        const float *e = t->E + (size_t)ids[i] * D;
        for (int d = 0; d < D; d++)
            z[d] += w * e[d];
    }
}

/* grad[t] += weight(t) dz for the tokens ids[from, to). */
static void bow_backward(emb_bow_trainer *t, const int32_t *ids, long from, long to,
                         const float *dz)
{
    const int D = t->D;
    for (long i = from; i < to; i++) {
        const float w = t->weight[ids[i]];
        float *g = t->grad + (size_t)ids[i] * D;
        for (int d = 0; d < D; d++)
            g[d] += w * dz[d];
    }
}

double emb_bow_loss_grad(emb_bow_trainer *t, const emb_text_pairs *p, const long *idx, int B)
{
    if (B < 1 || B > t->o.batch)
        return NAN; /* the step buffers hold o.batch pairs */
    const int D = t->D;
    const float inv_tau = 1.0f / t->o.temperature;
    float *za = t->z, *zb = t->z + (size_t)B * D;
    for (int i = 0; i < B; i++) {
        const long k = idx[i];
        bow_forward(t, p->ids, p->off[2 * k], p->off[2 * k + 1], za + (size_t)i * D);
        bow_forward(t, p->ids, p->off[2 * k + 1], p->off[2 * k + 2], zb + (size_t)i * D);
    }
    l2norm_forward_train(t->unit, t->norms, t->z, 2 * B, D);
    const float *ua = t->unit, *ub = t->unit + (size_t)B * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, inv_tau, ua, D, ub, D, 0.0f,
                t->sim, B);
    double loss = infonce_symmetric(t->sim, t->sim + (size_t)B * B, t->labels, B, 1.0f);
    float *dua = t->dunit, *dub = t->dunit + (size_t)B * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, D, B, inv_tau, t->sim, B, ub, D,
                0.0f, dua, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, B, D, B, inv_tau, t->sim, B, ua, D,
                0.0f, dub, D);
    l2norm_backward(t->dunit, t->dunit, t->unit, t->norms, 2 * B, D);
    memset(t->grad, 0, sizeof(float) * (size_t)t->V * (size_t)D);
    for (int i = 0; i < B; i++) {
        const long k = idx[i];
        bow_backward(t, p->ids, p->off[2 * k], p->off[2 * k + 1], dua + (size_t)i * D);
        bow_backward(t, p->ids, p->off[2 * k + 1], p->off[2 * k + 2], dub + (size_t)i * D);
    }
    return loss;
}

/* torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, no weight decay) on E. */
static void adam_step(emb_bow_trainer *t)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    t->step++;
    const double bc1 = 1.0 - pow(b1, (double)t->step), bc2 = 1.0 - pow(b2, (double)t->step);
    const float step_size = (float)(t->o.lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const long n = (long)t->V * t->D;
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        const float g = t->grad[i];
        const float m = b1 * t->m[i] + (1.0f - b1) * g;
        const float v = b2 * t->v[i] + (1.0f - b2) * g * g;
        t->m[i] = m;
        t->v[i] = v;
        t->E[i] -= step_size * m / (sqrtf(v) / bc2_sqrt + eps);
    }
}

int emb_bow_train_epoch(emb_bow_trainer *t, const emb_text_pairs *p, int epoch,
                        double *mean_loss, emb_err *err)
{
    const int B = t->o.batch;
    if (p->n < B)
        return emb_fail(err, "bag-of-words training: %ld pairs, fewer than one batch of %d",
                        p->n, B);
    for (long i = 0; i < p->off[2 * p->n]; i++) {
        if (p->ids[i] < 0 || p->ids[i] >= t->V)
            return emb_fail(err, "bag-of-words training: token id %d out of range", p->ids[i]);
    }
    if (grow((void **)&t->order, &t->cap_order, p->n, sizeof(long)) != 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    emb_shuffle_order(t->order, p->n, t->o.seed, epoch);
    double sum = 0.0;
    long steps = 0;
    for (long at = 0; at + B <= p->n; at += B) {
        sum += emb_bow_loss_grad(t, p, t->order + at, B);
        adam_step(t);
        steps++;
    }
    *mean_loss = sum / (double)steps;
    return 0;
}
