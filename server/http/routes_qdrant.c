/* routes_qdrant.c: Qdrant's REST API for the common calls, over named
 * collections (store/collections.h). docs/qdrant.md says what is covered.
 *
 * Shapes: every answer is {"result": ..., "status": "ok", "time": s};
 * every error {"status": {"error": "..."}, "time": 0} (API_QDRANT in
 * errors.c) with Qdrant's statuses: 400 for a bad request, 404 for an
 * unknown collection or point, 409 for an existing collection, 422 for a
 * body that is not the JSON expected.
 *
 * Texts: a vector may be Qdrant's Document, {"text": "...", "model": ...},
 * to be embedded here. That is allowed in every collection whose size is
 * the model's dimension ("default", the server's item store, and named
 * ones of that size); elsewhere a Document is a 400. A Document is
 * embedded with the version its collection's store searches (TEXTJOB_STORE
 * with tj.st), keeps its text and version, and the re-embedder
 * (learn/reembed.h) moves every such store to a new current version, so a
 * query never meets vectors of another version. Texts go through the one
 * text-job path (textjob.h) like
 * /items and /similar: handle submits, the connection is suspended,
 * finish stores or searches.
 *
 * A request holds a reference to its collection (collections_get) from
 * handle to the end, so a concurrent drop never closes a store under it. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "jsoncheck.h"
#include "ops.h"
#include "server.h"
#include "store/collections.h"
#include "store/store_reembed.h"
#include "textjob.h"
#include "upsert.h"

#define QD_DEFAULT_LIMIT 10

/* ---- envelope and errors ------------------------------------------------------ */

static void qd_error(reply *rp, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void qd_error(reply *rp, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_error(rp, API_QDRANT, status, NULL, "%s", msg);
}

/* An error value, with Qdrant's status for bad input (400, not 422). */
static void qd_fail(reply *rp, const emb_err *err)
{
    if (err->kind == EMB_ERR_INVALID || err->kind == EMB_ERR_TOO_LARGE)
        qd_error(rp, 400, "Bad request: %s", err->msg);
    else
        reply_fail(rp, API_QDRANT, err->kind, "%s", err->msg);
}

static void qd_ok_begin(reply *rp)
{
    sb_puts(&rp->body, "{\"result\":");
}

static void qd_ok_end(const request *rq, reply *rp)
{
    sb_printf(&rp->body, ",\"status\":\"ok\",\"time\":%.6f}", mono_seconds() - rq->t_start);
}

/* ---- path and body helpers -------------------------------------------------------- */

/* The {name} path parameter, NUL-terminated into buf (COLL_MAX_NAME + 1
 * bytes); a longer one is cut and then fails the name check. */
static const char *name_param(const request *rq, char *buf)
{
    size_t n = rq->params.len[0] < COLL_MAX_NAME + 1 ? rq->params.len[0] : COLL_MAX_NAME + 1;
    memcpy(buf, rq->params.at[0], n);
    buf[n] = '\0';
    return buf;
}

/* The route's collection, referenced; NULL after a 404. */
static collection *get_collection(server *srv, const request *rq, reply *rp)
{
    char name[COLL_MAX_NAME + 2];
    name_param(rq, name);
    collection *col = srv->collections != NULL ? collections_get(srv->collections, name) : NULL;
    if (col == NULL)
        qd_error(rp, 404, "Not found: Collection `%s` doesn't exist!", name);
    return col;
}

/* A point id: an unsigned integer (up to 2^53) or a string (Qdrant wants
 * a UUID; any string id of the store is taken). 0, or -1 after a 400. */
static int parse_id(const cJSON *j, store_id *id, const char *what, reply *rp)
{
    emb_err err;
    if (store_id_from_json(j, id, &err) != 0) {
        qd_error(rp, 400, "Bad request: %s: %s", what, err.msg);
        return -1;
    }
    return 0;
}

/* Qdrant's with_payload / with_vector: a bool, or a selector (a list of
 * keys or names, an include/exclude object), which is taken as true. */
static int get_with(const cJSON *root, const char *name, int def)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, name);
    if (f == NULL || cJSON_IsNull(f))
        return def;
    if (cJSON_IsBool(f))
        return cJSON_IsTrue(f);
    return 1;
}

static int get_int(const cJSON *root, const char *name, int def, int min, int max, int *out,
                   reply *rp)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, name);
    *out = def;
    if (f == NULL || cJSON_IsNull(f))
        return 0;
    if (!cJSON_IsNumber(f) || f->valuedouble != floor(f->valuedouble) || f->valuedouble < min ||
        f->valuedouble > max) {
        qd_error(rp, 400, "Bad request: `%s` must be an integer in %d..%d", name, min, max);
        return -1;
    }
    *out = (int)f->valuedouble;
    return 0;
}

/* 1 when j is Qdrant's Document: {"text": "...", "model": ...}. */
static int is_document(const cJSON *j)
{
    return cJSON_IsObject(j) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "text"));
}

/* A vector of dim numbers into v; a named-vector object {"vector": [...]}
 * or {"": [...]} is unwrapped. 0, or -1 after a 400. */
static int parse_vector(const cJSON *arr, int dim, float *v, const char *what, reply *rp)
{
    if (cJSON_IsObject(arr) && cJSON_GetArraySize(arr) == 1 && cJSON_IsArray(arr->child))
        arr = arr->child; /* {"name": [...]} of one unnamed or named vector */
    if (!cJSON_IsArray(arr)) {
        qd_error(rp, 400, "Bad request: %s must be an array of numbers or a Document "
                          "{\"text\": ..., \"model\": ...}", what);
        return -1;
    }
    int n = cJSON_GetArraySize(arr);
    if (n != dim) {
        qd_error(rp, 400, "Wrong input: Vector dimension error: expected dim: %d, got %d", dim,
                 n);
        return -1;
    }
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, arr) {
        if (!cJSON_IsNumber(el)) {
            qd_error(rp, 400, "Bad request: %s[%d] is not a number", what, i);
            return -1;
        }
        v[i++] = (float)el->valuedouble;
    }
    return 0;
}

/* A Document is accepted in a collection whose size is the model's
 * dimension: its texts are embedded with the version its store searches
 * and re-embedded with its store on a new version (learn/reembed.h). */
static int documents_allowed(const server *srv, const collection *col, reply *rp)
{
    const int model_dim = emb_model_dim(srv->model);
    if (store_dim(collection_store(col)) == model_dim)
        return 1;
    qd_error(rp, 400,
             "Bad request: collection `%s` has size %d; a Document (text to embed) needs a "
             "collection whose size equals the model's dimension %d",
             collection_name(col), store_dim(collection_store(col)), model_dim);
    return 0;
}

static int compile_filter(const cJSON *root, store_filter **out, reply *rp)
{
    const cJSON *filter = cJSON_GetObjectItemCaseSensitive(root, "filter");
    *out = NULL;
    if (filter == NULL || cJSON_IsNull(filter))
        return 0;
    emb_err err;
    err.msg[0] = '\0';
    *out = store_filter_compile(filter, &err);
    if (*out == NULL) {
        qd_error(rp, 400, "Bad request: %s", err.msg); /* the store's message names the filter */
        return -1;
    }
    return 0;
}

/* Records (retrieve, get point): {"id", "payload", "vector"}. */
static void put_record(strbuf *b, const store_record *r, int dim, int with_payload,
                       int with_vector)
{
    sb_puts(b, "{\"id\":");
    route_put_id(b, &r->id);
    sb_puts(b, ",\"payload\":");
    if (with_payload)
        sb_puts(b, r->payload != NULL ? r->payload : "{}");
    else
        sb_puts(b, "null");
    sb_puts(b, ",\"vector\":");
    if (with_vector)
        sb_json_floats(b, r->vector, dim);
    else
        sb_puts(b, "null");
    sb_putc(b, '}');
}

/* ---- collections ------------------------------------------------------------------ */

route_result handle_qd_collections(server *srv, request *rq, reply *rp)
{
    emb_err err;
    char **names = NULL;
    int n = collections_list(srv->collections, &names, &err);
    if (n < 0) {
        qd_fail(rp, &err);
        return ROUTE_DONE;
    }
    qd_ok_begin(rp);
    sb_puts(&rp->body, "{\"collections\":[");
    for (int i = 0; i < n; i++) {
        sb_puts(&rp->body, i > 0 ? ",{\"name\":" : "{\"name\":");
        sb_json_string(&rp->body, names[i]);
        sb_putc(&rp->body, '}');
    }
    sb_puts(&rp->body, "]}");
    qd_ok_end(rq, rp);
    free(names);
    return ROUTE_DONE;
}

/* {"vectors": {"size": N, "distance": "Cosine"}}; Qdrant's other
 * settings (hnsw_config, optimizers_config, ...) are accepted and unused. */
route_result handle_qd_collection_create(server *srv, request *rq, reply *rp)
{
    char name[COLL_MAX_NAME + 2];
    emb_err err;
    name_param(rq, name);
    if (collections_name_check(rq->params.at[0], rq->params.len[0], &err) != 0) {
        qd_error(rp, 422, "Validation error in path parameters: [name: %s]", err.msg);
        return ROUTE_DONE;
    }
    cJSON *root = route_parse_body(rq, API_QDRANT, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *vectors = cJSON_GetObjectItemCaseSensitive(root, "vectors");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(vectors, "size");
    const cJSON *dist = cJSON_GetObjectItemCaseSensitive(vectors, "distance");
    if (!cJSON_IsObject(vectors)) {
        qd_error(rp, 400, "Bad request: `vectors` must be {\"size\": N, \"distance\": \"Cosine\"}");
        goto out;
    }
    if (size == NULL && cJSON_IsObject(vectors->child)) {
        qd_error(rp, 400, "Bad request: named vectors are not supported; give one unnamed "
                          "vector {\"size\": N, \"distance\": \"Cosine\"}");
        goto out;
    }
    if (!cJSON_IsNumber(size) || size->valuedouble != floor(size->valuedouble) ||
        size->valuedouble < 1 || size->valuedouble > STORE_MAX_DIM) {
        qd_error(rp, 400, "Bad request: `vectors.size` must be an integer in 1..%d",
                 STORE_MAX_DIM);
        goto out;
    }
    if (!cJSON_IsString(dist)) {
        qd_error(rp, 400, "Bad request: `vectors.distance` is required (\"Cosine\")");
        goto out;
    }
    if (strcmp(dist->valuestring, "Cosine") != 0) {
        qd_error(rp, 400, "Bad request: distance \"%.32s\" is not supported: embedd scores "
                          "cosine similarity only (\"Cosine\")", dist->valuestring);
        goto out;
    }
    if (srv->cluster_mode) {
        qd_error(rp, 400, "Bad request: with --store postgres only the collection `default` "
                          "exists (it is the shared item store)");
        goto out;
    }
    if (collections_create(srv->collections, name, (int)size->valuedouble, &err) != 0) {
        if (err.kind == EMB_ERR_CONFLICT)
            qd_error(rp, 409, "Wrong input: %s", err.msg);
        else
            qd_fail(rp, &err);
        goto out;
    }
    qd_ok_begin(rp);
    sb_puts(&rp->body, "true");
    qd_ok_end(rq, rp);
out:
    cJSON_Delete(root);
    return ROUTE_DONE;
}

route_result handle_qd_collection_get(server *srv, request *rq, reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return ROUTE_DONE;
    store_stats st;
    store_get_stats(collection_store(col), &st);
    qd_ok_begin(rp);
    sb_printf(&rp->body,
              "{\"status\":\"green\",\"optimizer_status\":\"ok\",\"vectors_count\":%ld,"
              "\"indexed_vectors_count\":%llu,\"points_count\":%ld,\"segments_count\":1,"
              "\"config\":{\"params\":{\"vectors\":{\"size\":%d,\"distance\":\"Cosine\"},"
              "\"shard_number\":1,\"replication_factor\":1,\"write_consistency_factor\":1,"
              "\"on_disk_payload\":false},"
              "\"hnsw_config\":{\"m\":%d,\"ef_construct\":%d,\"full_scan_threshold\":%d,"
              "\"max_indexing_threads\":0,\"on_disk\":false},"
              "\"optimizer_config\":{\"deleted_threshold\":0.2,\"vacuum_min_vector_number\":1000,"
              "\"default_segment_number\":1,\"max_segment_size\":null,\"memmap_threshold\":null,"
              "\"indexing_threshold\":%d,\"flush_interval_sec\":5,\"max_optimization_threads\":null},"
              "\"wal_config\":{\"wal_capacity_mb\":32,\"wal_segments_ahead\":0},"
              "\"quantization_config\":null},\"payload_schema\":{}}",
              st.count, (unsigned long long)st.hnsw_nodes, st.count, st.dim,
              srv->opts.hnsw_m, srv->opts.hnsw_ef_construction, srv->opts.hnsw_threshold,
              srv->opts.hnsw_threshold);
    qd_ok_end(rq, rp);
    collection_release(srv->collections, col);
    return ROUTE_DONE;
}

/* Qdrant answers true when it dropped one, false when there was none. */
route_result handle_qd_collection_delete(server *srv, request *rq, reply *rp)
{
    char name[COLL_MAX_NAME + 2];
    emb_err err;
    int rc = collections_drop(srv->collections, name_param(rq, name), &err);
    if (rc < 0) {
        if (err.kind == EMB_ERR_CONFLICT)
            qd_error(rp, 400, "Bad request: %s", err.msg);
        else
            qd_fail(rp, &err);
        return ROUTE_DONE;
    }
    qd_ok_begin(rp);
    sb_puts(&rp->body, rc == 1 ? "true" : "false");
    qd_ok_end(rq, rp);
    return ROUTE_DONE;
}

route_result handle_qd_collection_exists(server *srv, request *rq, reply *rp)
{
    char name[COLL_MAX_NAME + 2];
    collection *col = collections_get(srv->collections, name_param(rq, name));
    qd_ok_begin(rp);
    sb_printf(&rp->body, "{\"exists\":%s}", col != NULL ? "true" : "false");
    qd_ok_end(rq, rp);
    collection_release(srv->collections, col);
    return ROUTE_DONE;
}

/* ---- upsert --------------------------------------------------------------------------- */

typedef struct upsert_state {
    upsert_batch b;
    collections *reg;
    collection *col;
} upsert_state;

static void upsert_state_free(void *p)
{
    upsert_state *st = p;
    if (st == NULL)
        return;
    upsert_free(&st->b);
    collection_release(st->reg, st->col);
    free(st);
}

/* The operation's answer: {"operation_id": seq, "status": "completed"}
 * (every write is durable when it is answered: ?wait is moot). */
static void put_update_result(const request *rq, store *s, reply *rp)
{
    store_stats stats;
    store_get_stats(s, &stats);
    qd_ok_begin(rp);
    sb_printf(&rp->body, "{\"operation_id\":%llu,\"status\":\"completed\"}",
              (unsigned long long)stats.seq);
    qd_ok_end(rq, rp);
}

static void upsert_reply(const request *rq, upsert_state *st, reply *rp)
{
    emb_err err;
    store *s = collection_store(st->col);
    if (store_upsert(s, st->b.items, st->b.n, &err) != 0) {
        qd_fail(rp, &err);
        return;
    }
    put_update_result(rq, s, rp);
}

/* One point's parts (from the list or the batch form) into item i. */
static int parse_point(server *srv, upsert_state *st, int i, const cJSON *id, const cJSON *vec,
                       const cJSON *payload, reply *rp)
{
    store *s = collection_store(st->col);
    upsert_batch *b = &st->b;
    char what[64];
    emb_err err;
    store_item *it = &b->items[i];
    snprintf(what, sizeof what, "points[%d].id", i);
    if (parse_id(id, &it->id, what, rp) != 0)
        return -1;
    snprintf(what, sizeof what, "points[%d].vector", i);
    if (vec == NULL || cJSON_IsNull(vec)) {
        qd_error(rp, 400, "Bad request: %s is missing", what);
        return -1;
    }
    if (is_document(vec)) {
        if (!documents_allowed(srv, st->col, rp))
            return -1;
        upsert_set_text(b, i, cJSON_GetObjectItemCaseSensitive(vec, "text")->valuestring);
    } else if (parse_vector(vec, b->dim, upsert_vector(b, i), what, rp) != 0) {
        return -1;
    }
    upsert_set_vector(b, i);
    if (payload != NULL && !cJSON_IsNull(payload)) {
        if (!cJSON_IsObject(payload)) {
            qd_error(rp, 400, "Bad request: points[%d].payload must be an object", i);
            return -1;
        }
        if (upsert_set_payload(b, i, payload) != 0) {
            reply_fail(rp, API_QDRANT, EMB_ERR_NO_MEMORY, "out of memory");
            return -1;
        }
    }
    if (store_item_check(s, it, &err) != 0) {
        qd_error(rp, 400, "Bad request: points[%d]: %s", i, err.msg);
        return -1;
    }
    return 0;
}

/* {"points": [{"id", "vector", "payload"}, ...]} or {"batch": {"ids": [...],
 * "vectors": [...], "payloads": [...]}}: the number of points, or -1. */
static int point_count(const cJSON *root, const cJSON **points, const cJSON **batch, reply *rp)
{
    *points = cJSON_GetObjectItemCaseSensitive(root, "points");
    *batch = cJSON_GetObjectItemCaseSensitive(root, "batch");
    if (cJSON_IsArray(*points))
        return cJSON_GetArraySize(*points);
    if (!cJSON_IsObject(*batch)) {
        qd_error(rp, 400, "Bad request: give `points` (a list of points) or `batch` "
                          "({\"ids\", \"vectors\", \"payloads\"})");
        return -1;
    }
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(*batch, "ids");
    const cJSON *vecs = cJSON_GetObjectItemCaseSensitive(*batch, "vectors");
    const cJSON *pls = cJSON_GetObjectItemCaseSensitive(*batch, "payloads");
    if (!cJSON_IsArray(ids) || !cJSON_IsArray(vecs) ||
        cJSON_GetArraySize(ids) != cJSON_GetArraySize(vecs) ||
        (pls != NULL && !cJSON_IsNull(pls) &&
         (!cJSON_IsArray(pls) || cJSON_GetArraySize(pls) != cJSON_GetArraySize(ids)))) {
        qd_error(rp, 400, "Bad request: `batch` needs `ids` and `vectors` (and optionally "
                          "`payloads`) as lists of the same length");
        return -1;
    }
    return cJSON_GetArraySize(ids);
}

static int parse_points(server *srv, upsert_state *st, const cJSON *points, const cJSON *batch,
                        reply *rp)
{
    if (points != NULL && cJSON_IsArray(points)) {
        int i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, points) {
            if (!cJSON_IsObject(p)) {
                qd_error(rp, 400, "Bad request: points[%d] must be an object", i);
                return -1;
            }
            if (parse_point(srv, st, i, cJSON_GetObjectItemCaseSensitive(p, "id"),
                            cJSON_GetObjectItemCaseSensitive(p, "vector"),
                            cJSON_GetObjectItemCaseSensitive(p, "payload"), rp) != 0)
                return -1;
            i++;
        }
        return 0;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(batch, "ids")->child;
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(batch, "vectors")->child;
    const cJSON *pls = cJSON_GetObjectItemCaseSensitive(batch, "payloads");
    const cJSON *pl = cJSON_IsArray(pls) ? pls->child : NULL;
    for (int i = 0; i < st->b.n; i++) {
        if (parse_point(srv, st, i, id, vec, pl, rp) != 0)
            return -1;
        id = id->next;
        vec = vec->next;
        pl = pl != NULL ? pl->next : NULL;
    }
    return 0;
}

route_result handle_qd_upsert(server *srv, request *rq, reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return ROUTE_DONE;
    upsert_state *st = calloc(1, sizeof *st);
    if (st == NULL) {
        collection_release(srv->collections, col);
        reply_fail(rp, API_QDRANT, EMB_ERR_NO_MEMORY, "out of memory");
        return ROUTE_DONE;
    }
    st->reg = srv->collections;
    st->col = col;
    rq->state = st;
    rq->free_state = upsert_state_free;
    st->b.root = route_parse_body(rq, API_QDRANT, rp);
    if (st->b.root == NULL)
        return ROUTE_DONE;
    const cJSON *points, *batch;
    int n = point_count(st->b.root, &points, &batch, rp);
    if (n < 0)
        return ROUTE_DONE;
    if (n == 0) {
        put_update_result(rq, collection_store(col), rp);
        return ROUTE_DONE;
    }
    if (n > STORE_MAX_BATCH) {
        qd_error(rp, 400, "Bad request: %d points in one request, the most is %d", n,
                 STORE_MAX_BATCH);
        return ROUTE_DONE;
    }
    if (upsert_alloc(&st->b, n, store_dim(collection_store(col))) != 0) {
        reply_fail(rp, API_QDRANT, EMB_ERR_NO_MEMORY, "out of memory");
        return ROUTE_DONE;
    }
    if (parse_points(srv, st, points, batch, rp) != 0)
        return ROUTE_DONE;
    if (st->b.n_text == 0) {
        upsert_reply(rq, st, rp);
        return ROUTE_DONE;
    }
    if (st->b.n_text > srv->opts.max_client_batch_size) {
        qd_error(rp, 400, "Bad request: %d Documents to embed in one request, the most is %d "
                          "(--max-client-batch-size)",
                 st->b.n_text, srv->opts.max_client_batch_size);
        return ROUTE_DONE;
    }
    textjob_opts o = {.truncate = srv->opts.auto_truncate, .noun = "text"};
    if (textjob_encode(srv, &st->b.tj, API_QDRANT, st->b.texts, st->b.n_text, &o, rp) != 0)
        return ROUTE_DONE;
    st->b.tj.st = collection_store(col); /* embedded with the version it searches */
    return textjob_submit(srv, rq, &st->b.tj, TEXTJOB_STORE);
}

void finish_qd_upsert(server *srv, request *rq, reply *rp)
{
    upsert_state *st = rq->state;
    if (textjob_failed(&st->b.tj, rp))
        return;
    upsert_take_vectors(srv, &st->b);
    upsert_reply(rq, st, rp);
}

/* ---- retrieve, get point ---------------------------------------------------------------- */

route_result handle_qd_retrieve(server *srv, request *rq, reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return ROUTE_DONE;
    store *s = collection_store(col);
    cJSON *root = route_parse_body(rq, API_QDRANT, rp);
    if (root == NULL)
        goto out;
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "ids");
    if (!cJSON_IsArray(ids) || cJSON_GetArraySize(ids) > STORE_MAX_BATCH) {
        qd_error(rp, 400, "Bad request: `ids` must be a list of at most %d point ids",
                 STORE_MAX_BATCH);
        goto out;
    }
    int with_payload = get_with(root, "with_payload", 1);
    int with_vector = get_with(root, "with_vector", 0);
    store_id *list = calloc((size_t)cJSON_GetArraySize(ids) + 1, sizeof *list);
    if (list == NULL) {
        reply_fail(rp, API_QDRANT, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    int n = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, ids) {
        char what[32];
        snprintf(what, sizeof what, "ids[%d]", n);
        if (parse_id(el, &list[n++], what, rp) != 0) {
            free(list);
            goto out;
        }
    }
    strbuf b;
    sb_init(&b, (size_t)srv->opts.max_response_bytes);
    sb_putc(&b, '[');
    int first = 1;
    for (int i = 0; i < n; i++) {
        store_record r;
        emb_err err;
        int found = store_get(s, &list[i], &r, &err);
        if (found < 0) {
            qd_fail(rp, &err);
            sb_free(&b);
            free(list);
            goto out;
        }
        if (found == 0)
            continue; /* Qdrant leaves missing ids out */
        if (!first)
            sb_putc(&b, ',');
        first = 0;
        put_record(&b, &r, store_dim(s), with_payload, with_vector);
        store_record_free(&r);
    }
    sb_putc(&b, ']');
    free(list);
    size_t len = 0;
    char *text = sb_take(&b, &len);
    if (text == NULL) {
        qd_error(rp, 400, "Bad request: the response is over --max-response-bytes; ask for "
                          "fewer ids or set with_vector false");
        goto out;
    }
    qd_ok_begin(rp);
    sb_puts(&rp->body, text);
    qd_ok_end(rq, rp);
    free(text);
out:
    cJSON_Delete(root);
    collection_release(srv->collections, col);
    return ROUTE_DONE;
}

/* The {id} segment: digits (no leading zero, up to 2^53-1) are a number,
 * anything else a string id. */
static int id_of_segment(const char *seg, size_t n, char *buf, store_id *id, reply *rp)
{
    size_t at = 0;
    if (n > STORE_MAX_ID_LEN || utf8_check(seg, n, &at) != JSON_OK) {
        qd_error(rp, 400, "Bad request: the point id in the path is not a valid id");
        return -1;
    }
    memcpy(buf, seg, n);
    buf[n] = '\0';
    int numeric = n > 0 && n <= 16 && (buf[0] != '0' || n == 1);
    for (size_t i = 0; numeric && i < n; i++)
        numeric = buf[i] >= '0' && buf[i] <= '9';
    unsigned long long v = numeric ? strtoull(buf, NULL, 10) : 0;
    if (numeric && v <= (unsigned long long)STORE_MAX_JSON_ID)
        *id = store_id_num(v);
    else
        *id = store_id_str(buf);
    return 0;
}

route_result handle_qd_point_get(server *srv, request *rq, reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return ROUTE_DONE;
    store *s = collection_store(col);
    char buf[STORE_MAX_ID_LEN + 1];
    store_id id;
    store_record r;
    emb_err err;
    if (id_of_segment(rq->params.at[1], rq->params.len[1], buf, &id, rp) != 0)
        goto out;
    int found = store_get(s, &id, &r, &err);
    if (found < 0) {
        qd_fail(rp, &err);
        goto out;
    }
    if (found == 0) {
        qd_error(rp, 404, "Not found: No point with id %s found", buf);
        goto out;
    }
    qd_ok_begin(rp);
    put_record(&rp->body, &r, store_dim(s), 1, 1);
    qd_ok_end(rq, rp);
    store_record_free(&r);
out:
    collection_release(srv->collections, col);
    return ROUTE_DONE;
}

/* ---- search and query ---------------------------------------------------------------------- */

typedef struct search_state {
    text_job tj;
    collections *reg;
    collection *col;
    store_query q;
    store_filter *filter;
    float *vec;                /* (dim) */
    int is_query;              /* /points/query: {"points": [...]} */
    int has_exclude;           /* query by a point id: that point is left out */
    store_id exclude;
    char exclude_str[STORE_MAX_ID_LEN + 1];
    int want;                  /* the client's limit */
    int moved;                 /* times the store switched versions under the query */
} search_state;

static void search_state_free(void *p)
{
    search_state *st = p;
    if (st == NULL)
        return;
    textjob_free(&st->tj);
    store_filter_free(st->filter);
    free(st->vec);
    collection_release(st->reg, st->col);
    free(st);
}

static int same_id(const store_id *a, const store_id *b)
{
    if (a->kind != b->kind)
        return 0;
    if (a->kind == STORE_ID_NUM)
        return a->num == b->num;
    return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
}

/* Bytes of the reply to res, every float at its longest. */
static size_t search_reply_bytes(const search_state *st, const store_result *res, int dim)
{
    size_t bytes = 256;
    for (int i = 0; i < res->n; i++) {
        const store_hit *h = &res->hits[i];
        bytes += 96 + (h->id.kind == STORE_ID_STR ? h->id.len * 6 + 2 : 20);
        if (h->payload != NULL)
            bytes += strlen(h->payload);
        if (h->vector != NULL)
            bytes += (size_t)dim * 16 + 2;
    }
    return bytes;
}

static void search_reply(server *srv, request *rq, search_state *st, reply *rp)
{
    emb_err err;
    store_result res;
    store *s = collection_store(st->col);
    const int dim = store_dim(s);
    int rc = store_search(s, &st->q, &res, &err);
    if (rc == STORE_VERSION_MOVED) {
        /* the store switched model versions since the text was embedded */
        st->moved++;
        if (st->tj.n > 0 && st->moved < 4) {
            textjob_submit(srv, rq, &st->tj, TEXTJOB_STORE);
            return;
        }
        reply_fail(rp, API_QDRANT, err.kind, "%s; retry", err.msg);
        return;
    }
    if (rc != 0) {
        qd_fail(rp, &err);
        return;
    }
    if (!route_response_fits(srv, search_reply_bytes(st, &res, dim), API_QDRANT,
                             "`limit`, or set `with_vector` or `with_payload` to false", rp)) {
        store_result_free(&res);
        return;
    }
    strbuf *b = &rp->body;
    qd_ok_begin(rp);
    sb_puts(b, st->is_query ? "{\"points\":[" : "[");
    int first = 1;
    int shown = 0;
    for (int i = 0; i < res.n && shown < st->want; i++) {
        const store_hit *h = &res.hits[i];
        if (st->has_exclude && same_id(&h->id, &st->exclude))
            continue;
        sb_puts(b, first ? "{\"id\":" : ",{\"id\":");
        first = 0;
        shown++;
        route_put_id(b, &h->id);
        sb_printf(b, ",\"version\":0,\"score\":%.9g,\"payload\":", (double)h->score);
        if (st->q.with_payload)
            sb_puts(b, h->payload != NULL ? h->payload : "{}");
        else
            sb_puts(b, "null");
        sb_puts(b, ",\"vector\":");
        if (st->q.with_vector && h->vector != NULL)
            sb_json_floats(b, h->vector, dim);
        else
            sb_puts(b, "null");
        sb_putc(b, '}');
    }
    sb_puts(b, st->is_query ? "]}" : "]");
    qd_ok_end(rq, rp);
    store_result_free(&res);
}

/* Qdrant's search params: {"hnsw_ef": n, "exact": bool}; others are
 * accepted and unused (quantization, indexed_only). */
static int get_params(const cJSON *root, store_query *q, reply *rp)
{
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "params");
    if (params == NULL || cJSON_IsNull(params))
        return 0;
    if (!cJSON_IsObject(params)) {
        qd_error(rp, 400, "Bad request: `params` must be an object");
        return -1;
    }
    if (get_int(params, "hnsw_ef", 0, 1, STORE_MAX_HNSW_EF, &q->hnsw_ef, rp) != 0)
        return -1;
    q->exact = get_with(params, "exact", 0);
    return 0;
}

static search_state *new_search_state(server *srv, request *rq, collection *col, reply *rp)
{
    const int dim = store_dim(collection_store(col));
    search_state *st = calloc(1, sizeof *st);
    if (st != NULL)
        st->vec = calloc((size_t)dim, sizeof(float));
    if (st == NULL || st->vec == NULL) {
        free(st);
        collection_release(srv->collections, col);
        reply_fail(rp, API_QDRANT, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    st->reg = srv->collections;
    st->col = col;
    rq->state = st;
    rq->free_state = search_state_free;
    store_query_init(&st->q, st->vec, dim);
    return st;
}

/* limit, offset, score_threshold, with_payload, with_vector, params, filter. */
static int search_options(const cJSON *root, search_state *st, reply *rp)
{
    if (get_int(root, "limit", QD_DEFAULT_LIMIT, 1, STORE_MAX_RESULTS, &st->q.limit, rp) != 0 ||
        get_int(root, "offset", 0, 0, STORE_MAX_RESULTS - 1, &st->q.offset, rp) != 0 ||
        get_params(root, &st->q, rp) != 0 || compile_filter(root, &st->filter, rp) != 0)
        return -1;
    if (st->q.offset + st->q.limit > STORE_MAX_RESULTS)
        st->q.limit = STORE_MAX_RESULTS - st->q.offset;
    st->want = st->q.limit;
    st->q.filter = st->filter;
    st->q.with_payload = get_with(root, "with_payload", 0);
    st->q.with_vector = get_with(root, "with_vector", 0);
    const cJSON *thr = cJSON_GetObjectItemCaseSensitive(root, "score_threshold");
    if (thr != NULL && !cJSON_IsNull(thr)) {
        if (!cJSON_IsNumber(thr)) {
            qd_error(rp, 400, "Bad request: `score_threshold` must be a number");
            return -1;
        }
        st->q.score_threshold = (float)thr->valuedouble;
    }
    return 0;
}

/* The query vector from a point id: its stored vector and version; the
 * point itself is left out of the answer (as Qdrant does). */
static int vector_of_point(search_state *st, const cJSON *idj, reply *rp)
{
    store *s = collection_store(st->col);
    store_id id;
    store_record r;
    emb_err err;
    if (parse_id(idj, &id, "query", rp) != 0)
        return -1;
    int found = store_get(s, &id, &r, &err);
    if (found < 0) {
        qd_fail(rp, &err);
        return -1;
    }
    if (found == 0) {
        strbuf b;
        sb_init(&b, 1024);
        route_put_id(&b, &id);
        char *txt = sb_take(&b, NULL);
        qd_error(rp, 404, "Not found: No point with id %s found", txt != NULL ? txt : "?");
        free(txt);
        return -1;
    }
    memcpy(st->vec, r.vector, sizeof(float) * (size_t)store_dim(s));
    st->q.model_version = r.model_version > 0 ? (uint32_t)r.model_version : 0;
    st->has_exclude = 1;
    st->exclude = id;
    if (id.kind == STORE_ID_STR) {
        snprintf(st->exclude_str, sizeof st->exclude_str, "%s", id.str);
        st->exclude.str = st->exclude_str;
    }
    store_record_free(&r);
    /* one more to make up for the point itself */
    if (st->q.offset + st->q.limit < STORE_MAX_RESULTS)
        st->q.limit++;
    return 0;
}

/* Runs the search for a vector (q), a Document (text) or a point id. */
static route_result search_go(server *srv, request *rq, search_state *st, const cJSON *what,
                              reply *rp)
{
    store *s = collection_store(st->col);
    if (is_document(what)) {
        if (!documents_allowed(srv, st->col, rp))
            return ROUTE_DONE;
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(what, "text");
        textjob_input in = {.text = text->valuestring, .len = strlen(text->valuestring)};
        textjob_opts o = {.truncate = srv->opts.auto_truncate, .noun = "text"};
        if (textjob_encode(srv, &st->tj, API_QDRANT, &in, 1, &o, rp) != 0)
            return ROUTE_DONE;
        st->tj.st = s; /* the collection's version embeds the query */
        return textjob_submit(srv, rq, &st->tj, TEXTJOB_STORE);
    }
    if (cJSON_IsNumber(what) || cJSON_IsString(what)) {
        if (vector_of_point(st, what, rp) != 0)
            return ROUTE_DONE;
    } else if (parse_vector(what, store_dim(s), st->vec, "the query vector", rp) != 0) {
        return ROUTE_DONE;
    }
    search_reply(srv, rq, st, rp);
    return ROUTE_DONE;
}

/* The start of search and query: the collection, the request's state,
 * the body and its options. The body (the caller deletes it), or NULL
 * after replying. */
static cJSON *search_begin(server *srv, request *rq, int is_query, search_state **out,
                           reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return NULL;
    search_state *st = new_search_state(srv, rq, col, rp);
    if (st == NULL)
        return NULL;
    st->is_query = is_query;
    cJSON *root = route_parse_body(rq, API_QDRANT, rp);
    if (root != NULL && search_options(root, st, rp) != 0) {
        cJSON_Delete(root);
        return NULL;
    }
    *out = st;
    return root;
}

route_result handle_qd_search(server *srv, request *rq, reply *rp)
{
    route_result result = ROUTE_DONE;
    search_state *st = NULL;
    cJSON *root = search_begin(srv, rq, 0, &st, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(root, "vector");
    if (vec == NULL || cJSON_IsNull(vec) || cJSON_IsNumber(vec) || cJSON_IsString(vec)) {
        qd_error(rp, 400, "Bad request: `vector` is required: a list of numbers or a "
                          "Document {\"text\": ...}");
        goto out;
    }
    /* the named form {"name": "", "vector": [...]} */
    if (cJSON_IsObject(vec) && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(vec, "vector")))
        vec = cJSON_GetObjectItemCaseSensitive(vec, "vector");
    result = search_go(srv, rq, st, vec, rp);
out:
    cJSON_Delete(root);
    return result;
}

/* {"query": vector | point id | Document | {"nearest": one of those}, ...} */
route_result handle_qd_query(server *srv, request *rq, reply *rp)
{
    route_result result = ROUTE_DONE;
    search_state *st = NULL;
    cJSON *root = search_begin(srv, rq, 1, &st, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *prefetch = cJSON_GetObjectItemCaseSensitive(root, "prefetch");
    if (prefetch != NULL && !cJSON_IsNull(prefetch)) {
        qd_error(rp, 400, "Bad request: `prefetch` is not supported");
        goto out;
    }
    const cJSON *query = cJSON_GetObjectItemCaseSensitive(root, "query");
    if (cJSON_IsObject(query) && cJSON_GetObjectItemCaseSensitive(query, "nearest") != NULL)
        query = cJSON_GetObjectItemCaseSensitive(query, "nearest");
    if (query == NULL || cJSON_IsNull(query)) {
        qd_error(rp, 400, "Bad request: `query` is required (a vector, a point id, a Document "
                          "or {\"nearest\": ...}); scrolling without a query is not supported");
        goto out;
    }
    if (cJSON_IsObject(query) && !is_document(query)) {
        qd_error(rp, 400, "Bad request: this `query` kind is not supported (vector, point id, "
                          "Document and {\"nearest\": ...} are)");
        goto out;
    }
    result = search_go(srv, rq, st, query, rp);
out:
    cJSON_Delete(root);
    return result;
}

void finish_qd_search(server *srv, request *rq, reply *rp)
{
    search_state *st = rq->state;
    const int dim = store_dim(collection_store(st->col));
    if (textjob_failed(&st->tj, rp))
        return;
    memcpy(st->vec, st->tj.out, sizeof(float) * (size_t)dim);
    l2norm_forward(st->vec, 1, dim);
    st->q.model_version = st->tj.mv->id;
    search_reply(srv, rq, st, rp);
}

/* ---- delete and count ------------------------------------------------------------------------ */

/* {"points": [ids]} or {"filter": {...}} */
route_result handle_qd_delete(server *srv, request *rq, reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return ROUTE_DONE;
    store *s = collection_store(col);
    store_filter *f = NULL;
    store_id *ids = NULL;
    emb_err err;
    long n = 0;
    cJSON *root = route_parse_body(rq, API_QDRANT, rp);
    if (root == NULL)
        goto out;
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(root, "points");
    const cJSON *filter = cJSON_GetObjectItemCaseSensitive(root, "filter");
    if (cJSON_IsArray(points)) {
        n = cJSON_GetArraySize(points);
        if (n > STORE_MAX_BATCH) {
            qd_error(rp, 400, "Bad request: at most %d ids per request", STORE_MAX_BATCH);
            goto out;
        }
        ids = calloc((size_t)n + 1, sizeof *ids);
        if (ids == NULL) {
            reply_fail(rp, API_QDRANT, EMB_ERR_NO_MEMORY, "out of memory");
            goto out;
        }
        int i = 0;
        const cJSON *el;
        cJSON_ArrayForEach(el, points) {
            char what[32];
            snprintf(what, sizeof what, "points[%d]", i);
            if (parse_id(el, &ids[i++], what, rp) != 0)
                goto out;
        }
    } else if (cJSON_IsObject(filter)) {
        if (compile_filter(root, &f, rp) != 0)
            goto out;
    } else {
        qd_error(rp, 400, "Bad request: give `points` (a list of ids) or `filter`");
        goto out;
    }
    /* by filter: delete what matches, a batch at a time */
    int deleted = 0;
    do {
        if (f != NULL) {
            free(ids);
            ids = NULL;
            n = collection_match(s, f, STORE_MAX_BATCH, &ids, &err);
            if (n < 0) {
                qd_fail(rp, &err);
                goto out;
            }
        }
        if (n > 0 && store_delete(s, ids, (int)n, &deleted, &err) != 0) {
            qd_fail(rp, &err);
            goto out;
        }
    } while (f != NULL && n == STORE_MAX_BATCH && deleted > 0);
    put_update_result(rq, s, rp);
out:
    free(ids);
    store_filter_free(f);
    cJSON_Delete(root);
    collection_release(srv->collections, col);
    return ROUTE_DONE;
}

/* {"filter", "exact"} -> {"count": n}; always exact. An empty body counts all. */
route_result handle_qd_count(server *srv, request *rq, reply *rp)
{
    collection *col = get_collection(srv, rq, rp);
    if (col == NULL)
        return ROUTE_DONE;
    store *s = collection_store(col);
    store_filter *f = NULL;
    cJSON *root = NULL;
    emb_err err;
    if (rq->body_len > 0) {
        root = route_parse_body(rq, API_QDRANT, rp);
        if (root == NULL || compile_filter(root, &f, rp) != 0)
            goto out;
    }
    long n = f != NULL ? collection_match(s, f, LONG_MAX, NULL, &err)
                       : store_count(s);
    qd_ok_begin(rp);
    sb_printf(&rp->body, "{\"count\":%ld}", n);
    qd_ok_end(rq, rp);
out:
    store_filter_free(f);
    cJSON_Delete(root);
    collection_release(srv->collections, col);
    return ROUTE_DONE;
}

/* ---- /health ---------------------------------------------------------------------------------- */

void qd_health_counts(server *srv, strbuf *b)
{
    if (srv->collections == NULL || b->len == 0 || b->buf[b->len - 1] != '}')
        return;
    long n_collections = 0, n_points = 0;
    collections_totals(srv->collections, &n_collections, &n_points);
    b->len--; /* reopen the object */
    sb_printf(b, ",\"collections\":%ld,\"points\":%ld}", n_collections, n_points);
}
