/* stages.c: see stages.h. */
#include "stages.h"

#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

struct whiten_stage {
    double shrink;
    int max_seq_len;
    /* the fit in progress */
    const emb_model *m;        /* borrowed */
    emb_model raw;             /* m without its whitening module: a view sharing m's weights */
    char **texts;
    int n, at;
    emb_workspace *ws;
    emb_moments mo;
    int have_mo;
    int32_t *ids;
    int lens[STAGE_CHUNK];
    float *out;
    int last_n;
};

whiten_stage *whiten_stage_new(double shrink, int max_seq_len, emb_err *err)
{
    whiten_stage *s = calloc(1, sizeof *s);
    if (s == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    s->shrink = shrink;
    s->max_seq_len = max_seq_len;
    return s;
}

void whiten_stage_cancel(whiten_stage *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < s->n; i++)
        free(s->texts[i]);
    free(s->texts);
    s->texts = NULL;
    s->n = s->at = 0;
    emb_workspace_free(s->ws);
    s->ws = NULL;
    if (s->have_mo)
        emb_moments_free(&s->mo);
    s->have_mo = 0;
    free(s->ids);
    free(s->out);
    s->ids = NULL;
    s->out = NULL;
    s->m = NULL;
}

void whiten_stage_free(whiten_stage *s)
{
    whiten_stage_cancel(s);
    free(s);
}

int whiten_stage_running(const whiten_stage *s)
{
    return s->m != NULL;
}

int whiten_stage_last_n(const whiten_stage *s)
{
    return s->last_n;
}

int stage_whitening_index(const emb_model *m)
{
    const int k = m->cfg.n_dense - 1;
    if (k < 0)
        return -1;
    const emb_dense_config *d = &m->cfg.dense[k];
    return d->activation == EMB_ACT_IDENTITY && d->bias && d->in_features == d->out_features
               ? k : -1;
}

int whiten_stage_begin(whiten_stage *s, const emb_model *m, char **texts, int n, emb_err *err)
{
    whiten_stage_cancel(s);
    s->texts = texts;
    s->n = n;
    s->at = 0;
    if (n < 2) {
        whiten_stage_cancel(s);
        return emb_fail_as(err, EMB_ERR_INVALID, "whitening needs at least 2 texts");
    }
    s->raw = *m;
    if (stage_whitening_index(m) >= 0)
        s->raw.cfg.n_dense--; /* the outputs the whitening module sees */
    const int D = emb_model_dim(&s->raw);
    if (D != emb_model_dim(m)) {
        whiten_stage_cancel(s);
        return emb_fail_as(err, EMB_ERR_INVALID, "the whitening module changes the dimension");
    }
    s->m = m;
    s->ws = emb_workspace_new(&s->raw, STAGE_CHUNK * s->max_seq_len, err);
    s->ids = malloc(sizeof(int32_t) * STAGE_CHUNK * (size_t)s->max_seq_len);
    s->out = malloc(sizeof(float) * STAGE_CHUNK * (size_t)D);
    if (s->ws == NULL || emb_moments_init(&s->mo, D, err) != 0) {
        whiten_stage_cancel(s);
        return -1;
    }
    s->have_mo = 1;
    if (s->ids == NULL || s->out == NULL) {
        whiten_stage_cancel(s);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    return 0;
}

int whiten_stage_work(whiten_stage *s, emb_err *err)
{
    int k = 0;
    long tokens = 0;
    while (s->at < s->n && k < STAGE_CHUNK) {
        const char *t = s->texts[s->at++];
        int len = emb_encode(s->m->tok, t, strlen(t), s->max_seq_len, 0, s->ids + tokens, NULL);
        if (len < 0)
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory tokenising");
        s->lens[k++] = len;
        tokens += len;
    }
    if (k > 0 && (emb_embed_ids(&s->raw, s->ws, s->ids, s->lens, k, s->raw.cfg.pooling, 0,
                                s->out, err) != 0 ||
                  emb_moments_add(&s->mo, s->out, k, err) != 0))
        return -1;
    return s->at < s->n;
}

emb_model *stage_with_whitening(const emb_model *m, const emb_whiten *w, emb_err *err)
{
    const int k = stage_whitening_index(m);
    if (k < 0) {
        const emb_dense_config d = {.in_features = w->dim, .out_features = w->k, .bias = 1,
                                    .activation = EMB_ACT_IDENTITY};
        return emb_model_add_dense(m, &d, w->w, w->b, err);
    }
    if (m->cfg.dense[k].in_features != w->dim || m->cfg.dense[k].out_features != w->k) {
        emb_fail_as(err, EMB_ERR_INVALID, "the refitted whitening is %d x %d, the model's %d x %d",
                    w->k, w->dim, m->cfg.dense[k].out_features, m->cfg.dense[k].in_features);
        return NULL;
    }
    emb_model *c = emb_model_clone(m, err);
    if (c == NULL)
        return NULL;
    memcpy(c->dense[k].w, w->w, sizeof(float) * (size_t)w->k * (size_t)w->dim);
    memcpy(c->dense[k].b, w->b, sizeof(float) * (size_t)w->k);
    return c; /* the Dense block is not packed: nothing to repack */
}

emb_model *whiten_stage_finish(whiten_stage *s, emb_err *err)
{
    emb_whiten w;
    memset(&w, 0, sizeof w);
    emb_model *c = NULL;
    const int D = s->mo.dim;
    int rc = emb_whiten_fit(&s->mo, D, s->shrink, &w, err);
    if (rc != 0 && s->shrink < STAGE_MIN_SHRINK) {
        emb_whiten_free(&w);
        memset(&w, 0, sizeof w);
        rc = emb_whiten_fit(&s->mo, D, STAGE_MIN_SHRINK, &w, err); /* rank < D */
    }
    if (rc == 0)
        c = stage_with_whitening(s->m, &w, err);
    emb_whiten_free(&w);
    if (c != NULL)
        s->last_n = s->n;
    whiten_stage_cancel(s);
    return c;
}

emb_model *stage_whiten_fit(const emb_model *m, char **texts, int n, double shrink,
                            int max_seq_len, emb_err *err)
{
    whiten_stage *s = whiten_stage_new(shrink, max_seq_len, err);
    if (s == NULL) {
        for (int i = 0; i < n; i++)
            free(texts[i]);
        free(texts);
        return NULL;
    }
    emb_model *c = NULL;
    if (whiten_stage_begin(s, m, texts, n, err) == 0) {
        int more;
        while ((more = whiten_stage_work(s, err)) == 1)
            ;
        if (more == 0)
            c = whiten_stage_finish(s, err);
    }
    whiten_stage_free(s);
    return c;
}
