/* routes_items.c: the item store's routes: /items, /items/{id},
 * /items/delete, /items/count and /similar (store.h is the engine).
 *
 * Texts (items to upsert, /similar queries) are embedded through the
 * batcher exactly like /embed: handle tokenises and submits one job, the
 * connection is suspended, finish normalises the vectors and calls the
 * store. Requests without texts never suspend. Ids are written back as
 * they came: numbers as JSON numbers, strings as JSON strings; payloads
 * are written back as their stored JSON text. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "jsoncheck.h"
#include "ops.h"
#include "server.h"
#include "textjob.h"
#include "upsert.h"
#include "store/store_reembed.h"

void route_put_id(strbuf *b, const store_id *id)
{
    if (id->kind == STORE_ID_NUM) {
        sb_printf(b, "%llu", (unsigned long long)id->num);
        return;
    }
    char tmp[STORE_MAX_ID_LEN + 1];
    size_t n = id->len < STORE_MAX_ID_LEN ? id->len : STORE_MAX_ID_LEN;
    memcpy(tmp, id->str, n);
    tmp[n] = '\0';
    sb_json_string(b, tmp);
}

/* Texts are embedded with the version whose vectors the store searches,
 * at most the server's max_seq_length tokens each (truncated per
 * --auto-truncate). */
static int encode_texts(const server *srv, text_job *tj, const textjob_input *texts, int n,
                        reply *rp)
{
    textjob_opts o = {.truncate = srv->opts.auto_truncate, .noun = "text"};
    return textjob_encode(srv, tj, API_TEI, texts, n, &o, rp);
}

/* Parses a JSON array of dim numbers into v. Returns 0, or -1 after
 * filling rp (422). */
static int parse_vector(const cJSON *arr, int dim, float *v, const char *what, reply *rp)
{
    if (!cJSON_IsArray(arr)) {
        reply_error(rp, API_TEI, 422, "Validation", "%s must be an array of numbers", what);
        return -1;
    }
    int n = cJSON_GetArraySize(arr);
    if (n != dim) {
        reply_error(rp, API_TEI, 422, "Validation",
                    "%s has dimension %d, the store's is %d", what, n, dim);
        return -1;
    }
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, arr) {
        if (!cJSON_IsNumber(el)) {
            reply_error(rp, API_TEI, 422, "Validation", "%s[%d] is not a number", what, i);
            return -1;
        }
        v[i++] = (float)el->valuedouble;
    }
    return 0;
}

/* ---- POST /items --------------------------------------------------------- */

/* POST /items keeps its upsert batch as the request state. */
static void items_state_free(void *p)
{
    upsert_free(p);
    free(p);
}

static void items_upsert_reply(server *srv, upsert_batch *b, reply *rp)
{
    emb_err err;
    if (store_upsert(srv->store, b->items, b->n, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return;
    }
    sb_printf(&rp->body, "{\"status\":\"ok\",\"upserted\":%d}", b->n);
}

/* Reads items[i] (el) into the batch: its id, its text (queued for
 * embedding) or vector, and its payload, checked against the store. 0, or
 * -1 after replying. */
static int parse_item(server *srv, const cJSON *el, int i, upsert_batch *b, reply *rp)
{
    char what[64];
    emb_err err;
    store_item *it = &b->items[i];
    if (!cJSON_IsObject(el)) {
        reply_error(rp, API_TEI, 422, "Validation", "items[%d] must be an object", i);
        return -1;
    }
    if (store_id_from_json(cJSON_GetObjectItemCaseSensitive(el, "id"), &it->id, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "items[%d]: %s", i, err.msg);
        return -1;
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(el, "text");
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(el, "vector");
    if (cJSON_IsNull(text))
        text = NULL;
    if (cJSON_IsNull(vec))
        vec = NULL;
    if ((text == NULL) == (vec == NULL)) {
        reply_error(rp, API_TEI, 422, "Validation",
                    "items[%d] needs exactly one of `text` and `vector`", i);
        return -1;
    }
    if (text != NULL) {
        if (!cJSON_IsString(text)) {
            reply_error(rp, API_TEI, 422, "Validation", "items[%d].text must be a string", i);
            return -1;
        }
        upsert_set_text(b, i, text->valuestring);
    } else {
        snprintf(what, sizeof what, "items[%d].vector", i);
        if (parse_vector(vec, b->dim, upsert_vector(b, i), what, rp) != 0)
            return -1;
    }
    upsert_set_vector(b, i);
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(el, "payload");
    if (payload != NULL && !cJSON_IsNull(payload)) {
        if (!cJSON_IsObject(payload)) {
            reply_error(rp, API_TEI, 422, "Validation",
                        "items[%d].payload must be an object", i);
            return -1;
        }
        if (upsert_set_payload(b, i, payload) != 0) {
            reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
            return -1;
        }
    }
    if (store_item_check(srv->store, it, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "items[%d]: %s", i, err.msg);
        return -1;
    }
    return 0;
}

route_result handle_items_upsert(server *srv, request *rq, reply *rp)
{
    cJSON *root = route_parse_body(rq, API_TEI, rp);
    if (root == NULL)
        return ROUTE_DONE;
    upsert_batch *b = calloc(1, sizeof *b);
    if (b == NULL) {
        cJSON_Delete(root);
        reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
        return ROUTE_DONE;
    }
    b->root = root;
    rq->state = b;
    rq->free_state = items_state_free;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "items");
    if (!cJSON_IsArray(arr)) {
        reply_error(rp, API_TEI, 422, "Validation", "`items` must be an array of items");
        return ROUTE_DONE;
    }
    int n = cJSON_GetArraySize(arr);
    if (n == 0) {
        reply_error(rp, API_TEI, 400, "Empty", "`items` is empty");
        return ROUTE_DONE;
    }
    int max = srv->opts.max_client_batch_size < STORE_MAX_BATCH ? srv->opts.max_client_batch_size
                                                                 : STORE_MAX_BATCH;
    if (n > max) {
        reply_error(rp, API_TEI, 422, "Validation",
                    "batch size %d exceeds the maximum of %d items per request", n, max);
        return ROUTE_DONE;
    }
    if (upsert_alloc(b, n, store_dim(srv->store)) != 0) {
        reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
        return ROUTE_DONE;
    }
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, arr) {
        if (parse_item(srv, el, i, b, rp) != 0)
            return ROUTE_DONE;
        i++;
    }
    if (b->n_text == 0) {
        items_upsert_reply(srv, b, rp);
        return ROUTE_DONE;
    }
    if (encode_texts(srv, &b->tj, b->texts, b->n_text, rp) != 0)
        return ROUTE_DONE;
    return textjob_submit(srv, rq, &b->tj, TEXTJOB_STORE);
}

void finish_items_upsert(server *srv, request *rq, reply *rp)
{
    upsert_batch *b = rq->state;
    if (textjob_failed(&b->tj, rp))
        return;
    upsert_take_vectors(srv, b);
    items_upsert_reply(srv, b, rp);
}

/* ---- /items/{id}, /items/delete, /items/count ------------------------------ */

/* Refuses a query argument or path segment that is not UTF-8 or holds
 * a NUL (%00: routes_unescape). what names it. 0, or -1 after filling rp. */
static int check_url_text(const char *s, const char *what, reply *rp)
{
    size_t at = 0;
    json_fault_kind k = utf8_check(s, strlen(s), &at);
    if (k == JSON_BAD_NUL)
        reply_error(rp, API_TEI, 422, "Validation",
                    "%s contains a NUL character (%%00) at byte %zu; ids and texts must not "
                    "contain NUL", what, at);
    else if (k != JSON_OK)
        reply_error(rp, API_TEI, 422, "Validation", "%s is not valid UTF-8 (byte %zu)", what,
                    at);
    return k == JSON_OK ? 0 : -1;
}

/* The id of a path segment (already percent-decoded): an unsigned integer
 * without leading zeros ("0" itself is fine) up to 2^53-1 is a number,
 * as in JSON; anything else, longer digit strings included, a string. A
 * string id that looks like a number ("12", "007") is reached through the
 * body routes. Never another id: the segment is checked whole. */
static int id_of_segment(const char *seg, store_id *id, reply *rp)
{
    if (check_url_text(seg, "the item id in the path", rp) != 0)
        return -1;
    size_t n = strlen(seg);
    int numeric = n > 0 && n <= 16 && (seg[0] != '0' || n == 1);
    for (size_t i = 0; numeric && i < n; i++)
        numeric = seg[i] >= '0' && seg[i] <= '9';
    if (numeric) {
        unsigned long long v = strtoull(seg, NULL, 10);
        if (v <= (unsigned long long)STORE_MAX_JSON_ID) {
            *id = store_id_num(v);
            return 0;
        }
    }
    if (n > STORE_MAX_ID_LEN) {
        reply_error(rp, API_TEI, 422, "Validation", "id is longer than %d bytes",
                    STORE_MAX_ID_LEN);
        return -1;
    }
    *id = store_id_str(seg);
    return 0;
}

/* The {id} of /items/{id}: the rest of the path (rest route), so it ends
 * the NUL-terminated url. */
static const char *item_segment(const request *rq)
{
    return rq->params.at[0];
}

static void not_found(reply *rp, const store_id *id)
{
    strbuf b;
    sb_init(&b, 4096);
    route_put_id(&b, id);
    char *s = sb_take(&b, NULL);
    reply_fail(rp, API_TEI, EMB_ERR_NOT_FOUND, "item %s not found", s != NULL ? s : "?");
    free(s);
}

static int query_bool(request *rq, const char *name, int def, reply *rp)
{
    const char *v = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
    if (v == NULL)
        return def;
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        return 1;
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        return 0;
    reply_error(rp, API_TEI, 422, "Validation", "`%s` must be true or false", name);
    return -1;
}

route_result handle_item_get(server *srv, request *rq, reply *rp)
{
    store_id id;
    store_record r;
    emb_err err;
    if (id_of_segment(item_segment(rq), &id, rp) != 0)
        return ROUTE_DONE;
    int with_vector = query_bool(rq, "with_vector", 0, rp);
    if (with_vector < 0)
        return ROUTE_DONE;
    int found = store_get(srv->store, &id, &r, &err);
    if (found < 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return ROUTE_DONE;
    }
    if (found == 0) {
        not_found(rp, &id);
        return ROUTE_DONE;
    }
    strbuf *b = &rp->body;
    sb_puts(b, "{\"id\":");
    route_put_id(b, &r.id);
    sb_puts(b, ",\"text\":");
    if (r.text != NULL)
        sb_json_string(b, r.text);
    else
        sb_puts(b, "null");
    sb_puts(b, ",\"payload\":");
    sb_puts(b, r.payload != NULL ? r.payload : "null");
    sb_printf(b, ",\"model_version\":%d", r.model_version);
    if (with_vector) {
        sb_puts(b, ",\"vector\":");
        sb_json_floats(b, r.vector, store_dim(srv->store));
    }
    sb_putc(b, '}');
    store_record_free(&r);
    return ROUTE_DONE;
}

route_result handle_item_delete(server *srv, request *rq, reply *rp)
{
    store_id id;
    emb_err err;
    int deleted = 0;
    if (id_of_segment(item_segment(rq), &id, rp) != 0)
        return ROUTE_DONE;
    if (store_delete(srv->store, &id, 1, &deleted, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return ROUTE_DONE;
    }
    if (deleted == 0) {
        not_found(rp, &id);
        return ROUTE_DONE;
    }
    sb_printf(&rp->body, "{\"status\":\"ok\",\"deleted\":%d}", deleted);
    return ROUTE_DONE;
}

route_result handle_items_delete(server *srv, request *rq, reply *rp)
{
    emb_err err;
    store_id *ids = NULL;
    cJSON *root = route_parse_body(rq, API_TEI, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "ids");
    if (!cJSON_IsArray(arr)) {
        reply_error(rp, API_TEI, 422, "Validation", "`ids` must be an array of ids");
        goto out;
    }
    int n = cJSON_GetArraySize(arr);
    if (n == 0) {
        reply_error(rp, API_TEI, 400, "Empty", "`ids` is empty");
        goto out;
    }
    int max = srv->opts.max_client_batch_size < STORE_MAX_BATCH ? srv->opts.max_client_batch_size
                                                                 : STORE_MAX_BATCH;
    if (n > max) {
        reply_error(rp, API_TEI, 422, "Validation",
                    "batch size %d exceeds the maximum of %d ids per request", n, max);
        goto out;
    }
    ids = calloc((size_t)n, sizeof *ids);
    if (ids == NULL) {
        reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, arr) {
        if (store_id_from_json(el, &ids[i], &err) != 0) {
            reply_fail(rp, API_TEI, err.kind, "ids[%d]: %s", i, err.msg);
            goto out;
        }
        i++;
    }
    int deleted = 0;
    if (store_delete(srv->store, ids, n, &deleted, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        goto out;
    }
    sb_printf(&rp->body, "{\"status\":\"ok\",\"deleted\":%d}", deleted);
out:
    free(ids);
    cJSON_Delete(root);
    return ROUTE_DONE;
}

/* {"count": n, "index": {"kind": "exact"|"hnsw", "building": bool, "nodes": n,
 * "deleted": n}}: nodes and deleted are the HNSW graph's (deleted ones
 * included in nodes); building is true while an index is built. */
route_result handle_items_count(server *srv, request *rq, reply *rp)
{
    store_stats st;
    store_get_stats(srv->store, &st);
    sb_printf(&rp->body,
              "{\"count\":%ld,\"index\":{\"kind\":\"%s\",\"building\":%s,\"nodes\":%llu,"
              "\"deleted\":%llu}}",
              st.count, st.hnsw_nodes > 0 ? "hnsw" : "exact", st.hnsw_building ? "true" : "false",
              (unsigned long long)st.hnsw_nodes, (unsigned long long)st.hnsw_deleted);
    return ROUTE_DONE;
}

/* ---- /similar -------------------------------------------------------------- */

typedef struct similar_state {
    text_job tj;
    store_query q;
    store_filter *filter;
    float *vec;                /* (dim) */
    int moved;                 /* times the store switched versions under the query */
    uint32_t pin;              /* the client's model version; 0: the store's */
} similar_state;

static void similar_state_free(void *p)
{
    similar_state *st = p;
    if (st == NULL)
        return;
    textjob_free(&st->tj);
    store_filter_free(st->filter);
    free(st->vec);
    free(st);
}

static similar_state *new_similar_state(server *srv, request *rq, reply *rp)
{
    similar_state *st = calloc(1, sizeof *st);
    if (st != NULL)
        st->vec = calloc((size_t)store_dim(srv->store), sizeof(float));
    if (st == NULL || st->vec == NULL) {
        free(st);
        reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    rq->state = st;
    rq->free_state = similar_state_free;
    store_query_init(&st->q, st->vec, store_dim(srv->store));
    return st;
}

/* Bytes of one hit's printed vector, every float at its longest (0
 * without with_vector). */
static size_t hit_vector_bytes(const server *srv, const similar_state *st)
{
    return st->q.with_vector ? (size_t)store_dim(srv->store) * 16 + 12 : 0;
}
/* The rest of a hit but its id and payload: {"id":,"score":-1.23456789e-05,
 * "payload":,"vector":}, */
#define HIT_OVERHEAD 64

/* Bytes put_id writes for id. */
static size_t id_json_len(const store_id *id)
{
    if (id->kind == STORE_ID_NUM)
        return 20;
    size_t n = 2;
    for (size_t i = 0; i < id->len && i < STORE_MAX_ID_LEN; i++) {
        unsigned char c = (unsigned char)id->str[i];
        n += c == '"' || c == '\\' ? 2 : c < 0x20 ? 6 : 1;
    }
    return n;
}

/* The exact room of the reply to res (up to the float lengths, taken at
 * their longest), measured before it is written. */
static size_t similar_reply_bytes(const server *srv, const similar_state *st,
                                  const store_result *res)
{
    size_t bytes = 128;
    for (int i = 0; i < res->n; i++) {
        const store_hit *h = &res->hits[i];
        bytes += HIT_OVERHEAD + id_json_len(&h->id);
        if (st->q.with_payload)
            bytes += h->payload != NULL ? strlen(h->payload) : 4;
        if (h->vector != NULL)
            bytes += hit_vector_bytes(srv, st);
    }
    return bytes;
}

/* Searches and writes the reply. */
static void similar_reply(server *srv, request *rq, similar_state *st, reply *rp)
{
    emb_err err;
    store_result res;
    if (store_query_check(srv->store, &st->q, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return;
    }
    int rc = store_search(srv->store, &st->q, &res, &err);
    if (rc == STORE_VERSION_MOVED) {
        /* the store switched versions since the query was embedded */
        st->moved++;
        if (st->pin != 0) {
            reply_fail(rp, API_TEI, EMB_ERR_CONFLICT,
                       "the store moved to model version %u during the query; the query "
                       "pinned version %u",
                       store_vectors_version(srv->store), st->pin);
            return;
        }
        if (st->tj.n > 0 && st->moved < 4) {
            textjob_submit(srv, rq, &st->tj, TEXTJOB_STORE);
            return;
        }
        reply_fail(rp, API_TEI, err.kind, "%s; retry", err.msg);
        return;
    }
    if (rc != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return;
    }
    if (!route_response_fits(srv, similar_reply_bytes(srv, st, &res), API_TEI,
                             "`limit`, or set `with_vector` or `with_payload` to false", rp)) {
        store_result_free(&res);
        return;
    }
    const int dim = store_dim(srv->store);
    strbuf *b = &rp->body;
    sb_puts(b, "{\"result\":[");
    for (int i = 0; i < res.n; i++) {
        const store_hit *h = &res.hits[i];
        sb_puts(b, i > 0 ? ",{\"id\":" : "{\"id\":");
        route_put_id(b, &h->id);
        sb_printf(b, ",\"score\":%.9g", (double)h->score);
        if (st->q.with_payload) {
            sb_puts(b, ",\"payload\":");
            sb_puts(b, h->payload != NULL ? h->payload : "null");
        }
        if (st->q.with_vector && h->vector != NULL) {
            sb_puts(b, ",\"vector\":");
            sb_json_floats(b, h->vector, dim);
        }
        sb_putc(b, '}');
    }
    sb_printf(b, "],\"model_version\":%u,\"time\":%.6f}",
              st->q.model_version != 0 ? st->q.model_version
                                       : store_vectors_version(srv->store),
              mono_seconds() - rq->t_start);
    store_result_free(&res);
}

/* The store holds one version's vectors: a pin to another is refused
 * (409). 0, or -1 after filling rp. */
static int similar_check_pin(server *srv, const similar_state *st, reply *rp)
{
    uint32_t have = store_vectors_version(srv->store);
    if (st->pin == 0 || have == 0 || have == st->pin)
        return 0;
    reply_fail(rp, API_TEI, EMB_ERR_CONFLICT,
               "the store searches vectors of model version %u, not %u: pin %u or none", have,
               st->pin, have);
    return -1;
}

/* Starts the text query's job, or answers at once. */
static route_result similar_go(server *srv, request *rq, similar_state *st, const char *text,
                               reply *rp)
{
    if (similar_check_pin(srv, st, rp) != 0)
        return ROUTE_DONE;
    /* what is known before searching: the vectors' share of the reply */
    size_t least = (size_t)st->q.limit * (HIT_OVERHEAD + hit_vector_bytes(srv, st));
    if (!route_response_fits(srv, least, API_TEI, "`limit` or set `with_vector` to false", rp))
        return ROUTE_DONE;
    if (text == NULL) {
        similar_reply(srv, rq, st, rp);
        return ROUTE_DONE;
    }
    textjob_input in = {.text = text, .len = strlen(text)};
    if (encode_texts(srv, &st->tj, &in, 1, rp) != 0)
        return ROUTE_DONE;
    if (st->pin != 0 && textjob_pin(srv, &st->tj, st->pin, rp) != 0)
        return ROUTE_DONE;
    return textjob_submit(srv, rq, &st->tj, st->pin != 0 ? TEXTJOB_PINNED : TEXTJOB_STORE);
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
        reply_error(rp, API_TEI, 422, "Validation", "`%s` must be an integer in %d..%d", name,
                    min, max);
        return -1;
    }
    *out = (int)f->valuedouble;
    return 0;
}

/* Qdrant's search params: {"hnsw_ef": n, "exact": bool}. */
static int get_params(const cJSON *root, store_query *q, reply *rp)
{
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "params");
    if (params == NULL || cJSON_IsNull(params))
        return 0;
    if (!cJSON_IsObject(params)) {
        reply_error(rp, API_TEI, 422, "Validation",
                    "`params` must be an object {\"hnsw_ef\": n, \"exact\": bool}");
        return -1;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, params) {
        if (strcmp(m->string, "hnsw_ef") != 0 && strcmp(m->string, "exact") != 0) {
            reply_error(rp, API_TEI, 422, "Validation",
                        "params: unknown key \"%.64s\" (hnsw_ef and exact are supported)",
                        m->string);
            return -1;
        }
    }
    if (get_int(params, "hnsw_ef", 0, 1, STORE_MAX_HNSW_EF, &q->hnsw_ef, rp) != 0)
        return -1;
    q->exact = route_get_bool(params, "exact", 0, API_TEI, rp);
    return q->exact < 0 ? -1 : 0;
}

route_result handle_similar(server *srv, request *rq, reply *rp)
{
    const int dim = store_dim(srv->store);
    route_result result = ROUTE_DONE;
    emb_err err;
    cJSON *root = route_parse_body(rq, API_TEI, rp);
    if (root == NULL)
        return ROUTE_DONE;
    similar_state *st = new_similar_state(srv, rq, rp);
    if (st == NULL)
        goto out;
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(root, "vector");
    const cJSON *idj = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (cJSON_IsNull(text))
        text = NULL;
    if (cJSON_IsNull(vec))
        vec = NULL;
    if (cJSON_IsNull(idj))
        idj = NULL;
    if ((text != NULL) + (vec != NULL) + (idj != NULL) != 1) {
        reply_error(rp, API_TEI, 422, "Validation",
                    "give exactly one of `text`, `vector` and `id`");
        goto out;
    }
    if (get_int(root, "limit", 10, 1, STORE_MAX_RESULTS, &st->q.limit, rp) != 0 ||
        get_int(root, "offset", 0, 0, STORE_MAX_RESULTS, &st->q.offset, rp) != 0 ||
        (st->q.with_payload = route_get_bool(root, "with_payload", 1, API_TEI, rp)) < 0 ||
        (st->q.with_vector = route_get_bool(root, "with_vector", 0, API_TEI, rp)) < 0 ||
        get_params(root, &st->q, rp) != 0 || route_get_pin(rq, root, API_TEI, &st->pin, rp) != 0)
        goto out;
    const cJSON *thr = cJSON_GetObjectItemCaseSensitive(root, "score_threshold");
    if (thr != NULL && !cJSON_IsNull(thr)) {
        if (!cJSON_IsNumber(thr)) {
            reply_error(rp, API_TEI, 422, "Validation", "`score_threshold` must be a number");
            goto out;
        }
        st->q.score_threshold = (float)thr->valuedouble;
    }
    const cJSON *filter = cJSON_GetObjectItemCaseSensitive(root, "filter");
    if (filter != NULL && !cJSON_IsNull(filter)) {
        err.msg[0] = '\0';
        st->filter = store_filter_compile(filter, &err);
        if (st->filter == NULL) {
            reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
            goto out;
        }
        st->q.filter = st->filter;
    }
    if (text != NULL) {
        if (!cJSON_IsString(text)) {
            reply_error(rp, API_TEI, 422, "Validation", "`text` must be a string");
            goto out;
        }
        /* a query prompt (bge's, e5's "query: ") applies to the query
         * only: stored texts are embedded as they are, so that the
         * re-embedder, which has only the text, makes the same vectors */
        char *prompted = route_prompted_text(srv, root, API_TEI, text->valuestring, rp);
        if (prompted != NULL)
            result = similar_go(srv, rq, st, prompted, rp);
        free(prompted);
        goto out;
    }
    if (vec != NULL) {
        if (parse_vector(vec, dim, st->vec, "`vector`", rp) != 0)
            goto out;
    } else {
        store_id id;
        store_record r;
        if (store_id_from_json(idj, &id, &err) != 0) {
            reply_fail(rp, API_TEI, err.kind, "id: %s", err.msg);
            goto out;
        }
        int found = store_get(srv->store, &id, &r, &err);
        if (found < 0) {
            reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
            goto out;
        }
        if (found == 0) {
            not_found(rp, &id);
            goto out;
        }
        memcpy(st->vec, r.vector, sizeof(float) * (size_t)dim);
        st->q.model_version = r.model_version > 0 ? (uint32_t)r.model_version : 0;
        store_record_free(&r);
    }
    result = similar_go(srv, rq, st, NULL, rp);
out:
    cJSON_Delete(root);
    return result;
}

route_result handle_similar_get(server *srv, request *rq, reply *rp)
{
    const char *q = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "q");
    const char *k = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "k");
    if (q == NULL) {
        reply_error(rp, API_TEI, 422, "Validation", "missing query argument `q`");
        return ROUTE_DONE;
    }
    if (check_url_text(q, "query argument `q`", rp) != 0)
        return ROUTE_DONE;
    similar_state *st = new_similar_state(srv, rq, rp);
    if (st == NULL)
        return ROUTE_DONE;
    if (k != NULL) {
        char *end = NULL;
        long v = strtol(k, &end, 10);
        if (end == k || *end != '\0' || v < 1 || v > STORE_MAX_RESULTS) {
            reply_error(rp, API_TEI, 422, "Validation", "`k` must be an integer in 1..%d",
                        STORE_MAX_RESULTS);
            return ROUTE_DONE;
        }
        st->q.limit = (int)v;
    }
    const char *pin = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "model_version");
    if (route_get_pin(rq, NULL, API_TEI, &st->pin, rp) != 0)
        return ROUTE_DONE;
    if (pin != NULL) {
        char *end = NULL;
        unsigned long v = strtoul(pin, &end, 10);
        if (end == pin || *end != '\0' || v < 1 || v > 4294967295ul ||
            (st->pin != 0 && st->pin != v)) {
            reply_error(rp, API_TEI, 422, "Validation",
                        "`model_version` must be a positive integer (and agree with "
                        "X-Embedd-Model-Version)");
            return ROUTE_DONE;
        }
        st->pin = (uint32_t)v;
    }
    char *prompted = route_prompted_text(srv, NULL, API_TEI, q, rp);
    if (prompted == NULL)
        return ROUTE_DONE;
    route_result result = similar_go(srv, rq, st, prompted, rp);
    free(prompted);
    return result;
}

void finish_similar(server *srv, request *rq, reply *rp)
{
    similar_state *st = rq->state;
    const int dim = store_dim(srv->store);
    if (textjob_failed(&st->tj, rp))
        return;
    memcpy(st->vec, st->tj.out, sizeof(float) * (size_t)dim);
    l2norm_forward(st->vec, 1, dim);
    st->q.model_version = st->tj.mv->id;
    similar_reply(srv, rq, st, rp);
}
