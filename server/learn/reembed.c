/* reembed.c: see reembed.h. */
#include "reembed.h"

#include <stdlib.h>

#include "store/store_reembed.h"

#define REEMBED_CHUNK 64

struct reembedder {
    versions *v;
    store *st;
    emb_workspace *ws;         /* compute thread only */
    int dim;
    reembed_report_fn report;
    void *report_ctx;
};

reembedder *reembedder_new(versions *v, store *st, reembed_report_fn report, void *report_ctx,
                           emb_err *err)
{
    reembedder *r = calloc(1, sizeof *r);
    if (r == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    r->v = v;
    r->st = st;
    r->report = report;
    r->report_ctx = report_ctx;
    model_version *mv = versions_current(v);
    r->dim = emb_config_dim(&mv->model->cfg);
    r->ws = emb_workspace_new(mv->model, REEMBED_CHUNK * mv->model->cfg.max_seq_length, err);
    versions_release(v, mv);
    if (r->ws == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void reembedder_free(reembedder *r)
{
    if (r == NULL)
        return;
    emb_workspace_free(r->ws);
    free(r);
}

int reembedder_start(reembedder *r, uint32_t id, emb_err *err)
{
    if (r->st == NULL)
        return 0;
    return store_reembed_start(r->st, id, err);
}

static void report(reembedder *r, const char *msg)
{
    if (r->report != NULL)
        r->report(r->report_ctx, "re-embedding", msg);
}

/* Embeds the n items with m into the store as vectors of version id. */
static int embed_items(reembedder *r, const emb_model *m, uint32_t id, store_text_item *items,
                       int n)
{
    emb_err err;
    const int C = r->dim, max_len = m->cfg.max_seq_length;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n * (size_t)max_len);
    int lens[REEMBED_CHUNK];
    float *vecs = malloc(sizeof(float) * (size_t)n * (size_t)C);
    long at = 0;
    int ok = ids != NULL && vecs != NULL;
    for (int i = 0; ok && i < n; i++) {
        lens[i] = emb_encode(m->tok, items[i].text, items[i].len, max_len, 0, ids + at, NULL);
        ok = lens[i] > 0;
        at += ok ? lens[i] : 0;
    }
    int rc = 0;
    if (!ok || emb_embed_ids(m, r->ws, ids, lens, n, m->cfg.pooling, 1, vecs, &err) != 0 ||
        store_reembed_put(r->st, items, n, vecs, id, &err) != 0) {
        report(r, ok ? err.msg : "out of memory");
        rc = -1;
    }
    free(ids);
    free(vecs);
    return rc;
}

int reembedder_work(reembedder *r)
{
    if (r->st == NULL)
        return 0;
    uint32_t target = store_target_version(r->st);
    if (target == store_vectors_version(r->st))
        return 0;
    emb_err err;
    model_version *mv = versions_get(r->v, target);
    if (mv == NULL) {
        report(r, "the target version is not in memory");
        return 0;
    }
    store_text_item items[REEMBED_CHUNK];
    int n = store_reembed_take(r->st, REEMBED_CHUNK, items, &err);
    int rc = 1;
    if (n < 0) {
        report(r, err.msg);
        rc = 0;
    } else if (n == 0) {
        if (store_reembed_finish(r->st, &err) < 0) {
            report(r, err.msg);
            rc = 0;
        }
    } else {
        if (embed_items(r, mv->model, target, items, n) != 0)
            rc = 0;
        store_text_items_free(items, n);
    }
    versions_release(r->v, mv);
    return rc;
}
