/* reembed.c: see reembed.h. */
#include "reembed.h"

#include <stdlib.h>
#include <string.h>

#include "store/store_reembed.h"

#define REEMBED_CHUNK 64

struct reembedder {
    versions *v;
    store *st;
    collections *colls;        /* borrowed; NULL: the item store only */
    emb_workspace *ws;         /* compute thread only */
    int dim;
    reembed_report_fn report;
    void *report_ctx;
};

static void tell(reembedder *r, const char *msg)
{
    if (r->report != NULL)
        r->report(r->report_ctx, "re-embedding", msg);
}

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

/* The registry's in-use callback: a store of the item store or of a
 * collection searches or moves to id. */
static int version_in_use(void *ctx, uint32_t id)
{
    reembedder *r = ctx;
    if (r->st != NULL && (store_vectors_version(r->st) == id || store_target_version(r->st) == id))
        return 1;
    return r->colls != NULL && collections_version_in_use(r->colls, id);
}

int reembedder_set_collections(reembedder *r, collections *c, emb_err *err)
{
    r->colls = c;
    versions_set_in_use(r->v, c != NULL ? version_in_use : NULL, r);
    if (c == NULL)
        return 0;
    collection **list = NULL;
    int n = collections_with_dim(c, r->dim, &list, err);
    if (n < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        uint32_t have = store_vectors_version(collection_store(list[i]));
        emb_err e;
        /* when it cannot be loaded, the collection's Document queries fail
         * until its move is done: reported, not fatal */
        if (have != 0 && versions_keep(r->v, have, &e) != 0)
            tell(r, e.msg);
        collection_release(c, list[i]);
    }
    free(list);
    return 0;
}

void reembedder_free(reembedder *r)
{
    if (r == NULL)
        return;
    if (r->colls != NULL)
        versions_set_in_use(r->v, NULL, NULL);
    emb_workspace_free(r->ws);
    free(r);
}

/* Every store to move, referenced: the item store first (cols[0] NULL),
 * then each collection of the model's dimension but "default" (the item
 * store again). *cols is malloc'd; stores_release lets go. */
static int stores_take(reembedder *r, store ***stores, collection ***cols, emb_err *err)
{
    collection **list = NULL;
    int n = 0;
    if (r->colls != NULL && (n = collections_with_dim(r->colls, r->dim, &list, err)) < 0)
        return -1;
    *stores = malloc(sizeof **stores * (size_t)(n + 1));
    *cols = malloc(sizeof **cols * (size_t)(n + 1));
    if (*stores == NULL || *cols == NULL) {
        for (int i = 0; i < n; i++)
            collection_release(r->colls, list[i]);
        free(list);
        free(*stores);
        free(*cols);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    int k = 0;
    if (r->st != NULL) {
        (*stores)[k] = r->st;
        (*cols)[k++] = NULL;
    }
    for (int i = 0; i < n; i++) {
        if (collection_store(list[i]) == r->st) {
            collection_release(r->colls, list[i]);
            continue;
        }
        (*stores)[k] = collection_store(list[i]);
        (*cols)[k++] = list[i];
    }
    free(list);
    return k;
}

static void stores_release(reembedder *r, store **stores, collection **cols, int n)
{
    for (int i = 0; i < n; i++)
        if (cols[i] != NULL)
            collection_release(r->colls, cols[i]);
    free(stores);
    free(cols);
}

int reembedder_start(reembedder *r, uint32_t id, emb_err *err)
{
    store **stores;
    collection **cols;
    int n = stores_take(r, &stores, &cols, err);
    if (n < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (store_reembed_start(stores[i], id, err) != 0)
            rc = -1;
    stores_release(r, stores, cols, n);
    return rc;
}

/* Embeds the n items with m into the store as vectors of version id. */
static int embed_items(reembedder *r, store *st, const emb_model *m, uint32_t id,
                       store_text_item *items, int n)
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
        store_reembed_put(st, items, n, vecs, id, &err) != 0) {
        tell(r, ok ? err.msg : "out of memory");
        rc = -1;
    }
    free(ids);
    free(vecs);
    return rc;
}

/* One chunk of st's move; 1 when it did work. */
static int work_store(reembedder *r, store *st, uint32_t current)
{
    emb_err err;
    /* a store that missed a start (a collection created or opened since,
     * or a start that failed) catches up with the current version; a
     * replica's store moves when its cluster says so (cluster.h), and the
     * current version may lag its target while it loads */
    if (!store_has_remote(st) && store_target_version(st) != current &&
        store_vectors_version(st) != 0 && store_reembed_start(st, current, &err) != 0) {
        tell(r, err.msg);
        return 0;
    }
    uint32_t target = store_target_version(st);
    if (target == 0 || !store_reembed_pending(st))
        return 0;
    store_text_item items[REEMBED_CHUNK];
    int n = store_reembed_take(st, REEMBED_CHUNK, items, &err);
    if (n < 0) {
        tell(r, err.msg);
        return 0;
    }
    if (n == 0) {
        if (target == store_vectors_version(st))
            return 0;
        if (store_reembed_finish(st, &err) < 0) {
            tell(r, err.msg);
            return 0;
        }
        return 1;
    }
    model_version *mv = versions_get(r->v, target);
    int rc = 1;
    if (mv == NULL) {
        tell(r, "the target version is not in memory");
        rc = 0;
    } else if (embed_items(r, st, mv->model, target, items, n) != 0) {
        rc = 0;
    }
    versions_release(r->v, mv);
    store_text_items_free(items, n);
    return rc;
}

int reembedder_work(reembedder *r)
{
    emb_err err;
    store **stores;
    collection **cols;
    int n = stores_take(r, &stores, &cols, &err);
    if (n < 0) {
        tell(r, err.msg);
        return 0;
    }
    uint32_t current = versions_current_id(r->v);
    int did = 0;
    for (int i = 0; i < n && !did; i++)
        did = work_store(r, stores[i], current);
    stores_release(r, stores, cols, n);
    return did;
}

void reembedder_progress(reembedder *r, reembed_progress *p)
{
    memset(p, 0, sizeof *p);
    emb_err err;
    store **stores;
    collection **cols;
    int n = stores_take(r, &stores, &cols, &err);
    if (n < 0)
        return;
    for (int i = 0; i < n; i++) {
        long done = 0, total = 0;
        store_reembed_progress(stores[i], &done, &total);
        p->stores++;
        p->moving += store_vectors_version(stores[i]) != store_target_version(stores[i]);
        p->done += done;
        p->total += total;
    }
    stores_release(r, stores, cols, n);
}
