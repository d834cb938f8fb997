/* store_search.c: payload filters and exact cosine search.
 *
 * Shapes: Q (nq, dim) normalised queries; M (count, dim) the store's matrix;
 * scores (nq, m) for a block of m rows: one sgemv when nq == 1, else one
 * sgemm per block. Blocks bound the score buffer to SCORE_BUF_FLOATS.
 * Each query keeps a min-heap of its best offset + limit candidates; the
 * threshold and the heap's floor are checked before the filter, so the
 * filter runs only on rows that would enter the top, and a selective
 * filter still yields the best matching rows, not a cut of the best rows. */
#include "store_internal.h"
#include "hnsw.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCORE_BUF_FLOATS (1 << 22) /* 16 MiB of scores per call */

/* ---- filters ------------------------------------------------------------------ */

static int count_list(const cJSON *list, const char *name, int *n, emb_err *err)
{
    *n = 0;
    if (list == NULL || cJSON_IsNull(list))
        return 0;
    if (cJSON_IsObject(list)) {
        *n = 1;                /* one condition without the brackets */
        return 0;
    }
    if (!cJSON_IsArray(list))
        return emb_fail_as(err, EMB_ERR_INVALID, "filter.%s must be an array of conditions", name);
    *n = cJSON_GetArraySize(list);
    if (*n > STORE_MAX_CONDITIONS)
        return emb_fail_as(err, EMB_ERR_TOO_LARGE, "filter.%s has %d conditions; the limit is %d",
                           name, *n, STORE_MAX_CONDITIONS);
    return 0;
}

static int match_compile(const cJSON *match, const char *where, store_field *out, emb_err *err)
{
    if (!cJSON_IsObject(match))
        return emb_fail_as(err, EMB_ERR_INVALID, "%s.match must be an object {\"value\": v}",
                           where);
    const cJSON *value = NULL;
    const cJSON *m;
    cJSON_ArrayForEach(m, match) {
        if (strcmp(m->string, "value") != 0)
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "%s.match: unknown key \"%.64s\" (only {\"value\": v} is "
                               "supported)",
                               where, m->string);
        value = m;
    }
    if (value == NULL)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s.match needs a \"value\"", where);
    if (cJSON_IsString(value)) {
        size_t len = strlen(value->valuestring);
        if (len > STORE_MAX_PAYLOAD)
            return emb_fail_as(err, EMB_ERR_TOO_LARGE, "%s.match.value is too long", where);
        out->type = FIELD_STR;
        out->str_len = (uint32_t)len;
        out->str = strdup(value->valuestring);
        if (out->str == NULL)
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return 0;
    }
    if (cJSON_IsNumber(value)) {
        out->type = FIELD_NUM;
        out->num = value->valuedouble;
        return 0;
    }
    if (cJSON_IsBool(value)) {
        out->type = FIELD_BOOL;
        out->num = cJSON_IsTrue(value) ? 1 : 0;
        return 0;
    }
    return emb_fail_as(err, EMB_ERR_INVALID, "%s.match.value must be a string, number or bool",
                       where);
}

static int cond_compile(const cJSON *c, const char *where, store_field *out, emb_err *err)
{
    if (!cJSON_IsObject(c))
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "%s must be an object {\"key\": k, \"match\": {\"value\": v}}", where);
    const cJSON *key = NULL;
    const cJSON *match = NULL;
    const cJSON *m;
    cJSON_ArrayForEach(m, c) {
        if (strcmp(m->string, "key") == 0)
            key = m;
        else if (strcmp(m->string, "match") == 0)
            match = m;
        else
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "%s: unknown key \"%.64s\" (a condition is {\"key\": k, "
                               "\"match\": {\"value\": v}})",
                               where, m->string);
    }
    if (!cJSON_IsString(key) || key->valuestring[0] == '\0' ||
        strlen(key->valuestring) > STORE_MAX_ID_LEN)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s.key must be a string of 1 to %d bytes", where,
                           STORE_MAX_ID_LEN);
    if (match == NULL)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s needs a \"match\"", where);
    out->key_len = (uint32_t)strlen(key->valuestring);
    out->key = strdup(key->valuestring);
    if (out->key == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    return match_compile(match, where, out, err);
}

static int list_compile(const cJSON *list, const char *name, int n, store_field *out,
                        emb_err *err)
{
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_IsObject(list) ? list : cJSON_GetArrayItem(list, i);
        char where[64];
        snprintf(where, sizeof where, "filter.%s[%d]", name, i);
        if (cond_compile(c, where, &out[i], err) != 0)
            return -1;
    }
    return 0;
}

void store_filter_free(store_filter *f)
{
    if (f == NULL)
        return;
    for (int i = 0; i < f->n_must + f->n_must_not; i++) {
        free((char *)f->conds[i].key);
        free((char *)f->conds[i].str);
    }
    free(f->conds);
    free(f);
}

store_filter *store_filter_compile(const cJSON *json, emb_err *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (json == NULL || cJSON_IsNull(json))
        return NULL;
    if (!cJSON_IsObject(json)) {
        emb_fail_as(err, EMB_ERR_INVALID,
                    "filter must be an object {\"must\": [...], \"must_not\": [...]}");
        return NULL;
    }
    const cJSON *must = NULL;
    const cJSON *must_not = NULL;
    const cJSON *m;
    cJSON_ArrayForEach(m, json) {
        if (strcmp(m->string, "must") == 0) {
            must = m;
        } else if (strcmp(m->string, "must_not") == 0) {
            must_not = m;
        } else {
            emb_fail_as(err, EMB_ERR_INVALID,
                        "filter: unknown key \"%.64s\" (only must and must_not are supported)",
                        m->string);
            return NULL;
        }
    }
    int n_must;
    int n_must_not;
    if (count_list(must, "must", &n_must, err) != 0 ||
        count_list(must_not, "must_not", &n_must_not, err) != 0)
        return NULL;
    store_filter *f = calloc(1, sizeof *f);
    if (f != NULL)
        f->conds = calloc((size_t)(n_must + n_must_not) + 1, sizeof *f->conds);
    if (f == NULL || f->conds == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        store_filter_free(f);
        return NULL;
    }
    f->n_must = n_must;
    f->n_must_not = n_must_not;
    if (list_compile(must, "must", n_must, f->conds, err) != 0 ||
        list_compile(must_not, "must_not", n_must_not, f->conds + n_must, err) != 0) {
        store_filter_free(f);
        return NULL;
    }
    return f;
}

static int field_equal(const store_field *a, const store_field *b)
{
    if (a->type != b->type || a->key_len != b->key_len)
        return 0;
    if (memcmp(a->key, b->key, a->key_len) != 0)
        return 0;
    if (a->type == FIELD_STR)
        return a->str_len == b->str_len && memcmp(a->str, b->str, a->str_len) == 0;
    return a->num == b->num;
}

static int row_has(const store_row *r, const store_field *cond)
{
    for (uint32_t i = 0; i < r->n_fields; i++) {
        if (field_equal(&r->fields[i], cond))
            return 1;
    }
    return 0;
}

int store_filter_match(const store_filter *f, const store_row *r)
{
    for (int i = 0; i < f->n_must; i++) {
        if (!row_has(r, &f->conds[i]))
            return 0;
    }
    for (int i = f->n_must; i < f->n_must + f->n_must_not; i++) {
        if (row_has(r, &f->conds[i]))
            return 0;
    }
    return 1;
}

/* ---- queries ------------------------------------------------------------------- */

void store_query_init(store_query *q, const float *vector, int vector_dim)
{
    memset(q, 0, sizeof *q);
    q->vector = vector;
    q->vector_dim = vector_dim;
    q->limit = 10;
    q->score_threshold = -INFINITY;
    q->with_payload = 1;
}

int store_query_check(const store *s, const store_query *q, emb_err *err)
{
    if (q->vector == NULL || q->vector_dim != s->dim)
        return emb_fail_as(err, EMB_ERR_INVALID, "query vector has %d dimensions, the store has %d",
                           q->vector == NULL ? 0 : q->vector_dim, s->dim);
    if (q->limit < 1)
        return emb_fail_as(err, EMB_ERR_INVALID, "limit must be at least 1");
    if (q->offset < 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "offset must not be negative");
    if ((long)q->offset + q->limit > STORE_MAX_RESULTS)
        return emb_fail_as(err, EMB_ERR_INVALID, "offset + limit must be at most %d",
                           STORE_MAX_RESULTS);
    if (q->hnsw_ef < 0 || q->hnsw_ef > STORE_MAX_HNSW_EF)
        return emb_fail_as(err, EMB_ERR_INVALID, "hnsw_ef must be in 0..%d", STORE_MAX_HNSW_EF);
    if (isnan(q->score_threshold))
        return emb_fail_as(err, EMB_ERR_INVALID, "score_threshold is not a number");
    double sum = 0;
    for (int i = 0; i < s->dim; i++) {
        if (!isfinite(q->vector[i]))
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "query vector element %d is not a finite number", i);
        sum += (double)q->vector[i] * q->vector[i];
    }
    if (sum == 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "query vector is all zeros");
    return 0;
}

/* ---- top-k selection ------------------------------------------------------------ */

typedef struct cand {
    float score;
    long row;
} cand;

/* A min-heap of the best k candidates: a[0] is the worst kept. */
typedef struct topk {
    cand *a;
    int n;
    int k;
} topk;

/* Lower score, or the same score in a later row. */
static int worse(cand x, cand y)
{
    return x.score < y.score || (x.score == y.score && x.row > y.row);
}

static void sift_down(topk *h, int i)
{
    for (;;) {
        int l = 2 * i + 1;
        int r = l + 1;
        int m = i;
        if (l < h->n && worse(h->a[l], h->a[m]))
            m = l;
        if (r < h->n && worse(h->a[r], h->a[m]))
            m = r;
        if (m == i)
            return;
        cand t = h->a[i];
        h->a[i] = h->a[m];
        h->a[m] = t;
        i = m;
    }
}

static void sift_up(topk *h, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!worse(h->a[i], h->a[p]))
            return;
        cand t = h->a[i];
        h->a[i] = h->a[p];
        h->a[p] = t;
        i = p;
    }
}

/* Would c enter the heap? */
static int topk_admits(const topk *h, cand c)
{
    return h->n < h->k || worse(h->a[0], c);
}

static void topk_push(topk *h, cand c)
{
    if (h->n < h->k) {
        h->a[h->n] = c;
        h->n++;
        sift_up(h, h->n - 1);
        return;
    }
    h->a[0] = c;
    sift_down(h, 0);
}

static int cand_order(const void *pa, const void *pb)
{
    const cand *a = pa;
    const cand *b = pb;
    if (worse(*b, *a))
        return -1;
    if (worse(*a, *b))
        return 1;
    return 0;
}

/* Rows made by another model version than the one searched are never
 * compared with the query (store_reembed.h); client vectors always are. */
static int row_searchable(const store *s, long row)
{
    const store_row *r = &s->rows[row];
    return r->text == NULL || r->version == 0 || s->vec_version == 0 ||
           (uint32_t)r->version == s->vec_version;
}

/* Offers rows start..start+m-1 with their scores to one query's heap. */
static void topk_offer(const store *s, const store_query *q, topk *h, const float *scores,
                       long start, long m)
{
    const float thr = q->score_threshold;
    for (long j = 0; j < m; j++) {
        cand c = {scores[j], start + j};
        if (!(c.score >= thr))
            continue;
        if (!row_searchable(s, c.row))
            continue;
        if (!topk_admits(h, c))
            continue;
        if (q->filter != NULL && !store_filter_match(q->filter, &s->rows[c.row]))
            continue;
        topk_push(h, c);
    }
}

/* Scores every row against the nq queries Q (nq, dim) and fills the heaps.
 * Caller holds rw shared. */
static int score_all(const store *s, const store_query *qs, const float *Q, int nq, topk *heaps,
                     emb_err *err)
{
    const int dim = s->dim;
    const long n = s->count;
    if (n == 0)
        return 0;
    long block = SCORE_BUF_FLOATS / nq;
    if (block < 1)
        block = 1;
    if (block > n)
        block = n;
    float *scores = malloc(sizeof(float) * (size_t)block * (size_t)nq);
    if (scores == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for scores");
    for (long start = 0; start < n; start += block) {
        long m = n - start < block ? n - start : block;
        const float *M = s->matrix + (size_t)start * dim;   /* (m, dim) */
        if (nq == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, dim, 1.0f, M, dim, Q, 1, 0.0f,
                        scores, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, (int)m, dim, 1.0f, Q, dim,
                        M, dim, 0.0f, scores, (int)m);
        for (int qi = 0; qi < nq; qi++)
            topk_offer(s, &qs[qi], &heaps[qi], scores + (size_t)qi * m, start, m);
    }
    free(scores);
    return 0;
}

/* ---- the approximate index ----------------------------------------------------- */

/* A query's search width: its own or the store's, and at least 2 (offset + limit). */
static int query_ef(const store *s, const store_query *q)
{
    int ef = q->hnsw_ef > 0 ? q->hnsw_ef : s->hnsw_ef;
    int k2 = 2 * (q->offset + q->limit);
    return ef > k2 ? ef : k2;
}

/* Offers one query's HNSW candidates, rescored exactly against the matrix,
 * to its heap. Returns 1 when the heap is the answer, 0 when the query must
 * fall back to exact search (the filter or threshold left the heap short
 * while the index may hold more), -1 on error. Caller holds rw shared. */
static int hnsw_offer(const store *s, const store_query *q, const float *qv, topk *h,
                      uint64_t *labels, float *dists, emb_err *err)
{
    const int ef = query_ef(s, q);
    int got = hnsw_search(s->hnsw, qv, ef, ef, labels, dists, err);
    if (got < 0)
        return -1;
    const float thr = q->score_threshold;
    int below = 0;
    int rejected = 0;
    for (int i = 0; i < got; i++) {
        if (labels[i] >= s->label_cap || s->label_row[labels[i]] == 0)
            continue;          /* cannot happen: deleted nodes are marked */
        long row = (long)s->label_row[labels[i]] - 1;
        if (!row_searchable(s, row)) {
            rejected++;        /* like a filter: exact search may find more */
            continue;
        }
        cand c = {cblas_sdot(s->dim, qv, 1, s->matrix + (size_t)row * s->dim, 1), row};
        if (!(c.score >= thr)) {
            below++;
            continue;
        }
        if (!topk_admits(h, c))
            continue;
        if (q->filter != NULL && !store_filter_match(q->filter, &s->rows[c.row])) {
            rejected++;
            continue;
        }
        topk_push(h, c);
    }
    if (h->n < h->k && got == ef && (rejected > 0 || below == 0))
        return 0;
    return 1;
}

/* Runs the queries on the index; those that must fall back to exact search
 * are scored by score_all. Caller holds rw shared. */
static int search_hnsw(const store *s, const store_query *qs, const float *Q, int nq, topk *heaps,
                       emb_err *err)
{
    int ef = 1;
    for (int i = 0; i < nq; i++) {
        int e = query_ef(s, &qs[i]);
        ef = e > ef ? e : ef;
    }
    uint64_t *labels = malloc(sizeof(uint64_t) * (size_t)ef);
    float *dists = malloc(sizeof(float) * (size_t)ef);
    int *slow = malloc(sizeof(int) * (size_t)nq);
    int rc = -1;
    int n_slow = 0;
    store_query *qs2 = NULL;
    float *Q2 = NULL;
    topk *heaps2 = NULL;
    if (labels == NULL || dists == NULL || slow == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for search candidates");
        goto out;
    }
    for (int i = 0; i < nq; i++) {
        int r = 0;
        if (!qs[i].exact)
            r = hnsw_offer(s, &qs[i], Q + (size_t)i * s->dim, &heaps[i], labels, dists, err);
        if (r < 0)
            goto out;
        if (r == 0) {
            heaps[i].n = 0;
            slow[n_slow++] = i;
        }
    }
    if (n_slow > 0) {
        qs2 = malloc(sizeof *qs2 * (size_t)n_slow);
        Q2 = malloc(sizeof(float) * (size_t)n_slow * (size_t)s->dim);
        heaps2 = malloc(sizeof *heaps2 * (size_t)n_slow);
        if (qs2 == NULL || Q2 == NULL || heaps2 == NULL) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d queries", n_slow);
            goto out;
        }
        for (int j = 0; j < n_slow; j++) {
            qs2[j] = qs[slow[j]];
            memcpy(Q2 + (size_t)j * s->dim, Q + (size_t)slow[j] * s->dim,
                   sizeof(float) * (size_t)s->dim);
            heaps2[j] = heaps[slow[j]];
        }
        if (score_all(s, qs2, Q2, n_slow, heaps2, err) != 0)
            goto out;
        for (int j = 0; j < n_slow; j++)
            heaps[slow[j]] = heaps2[j];
    }
    rc = 0;
out:
    free(labels);
    free(dists);
    free(slow);
    free(qs2);
    free(Q2);
    free(heaps2);
    return rc;
}

/* ---- results ------------------------------------------------------------------- */

static char *copy_string(char **at, const char *src, size_t n)
{
    char *p = *at;
    memcpy(p, src, n);
    p[n] = '\0';
    *at = p + n + 1;
    return p;
}

/* Copies the hits offset.. of a sorted heap out. Caller holds rw shared. */
static int result_build(const store *s, const store_query *q, const topk *h, store_result *out,
                        emb_err *err)
{
    int n = h->n - q->offset;
    if (n < 0)
        n = 0;
    if (n > q->limit)
        n = q->limit;
    const cand *c = h->a + q->offset;
    size_t vec_bytes = q->with_vector ? sizeof(float) * (size_t)s->dim : 0;
    size_t size = sizeof(store_hit) * (size_t)(n > 0 ? n : 1) + vec_bytes * (size_t)n;
    for (int i = 0; i < n; i++) {
        const store_row *r = &s->rows[c[i].row];
        size += r->id_len + 1;
        if (q->with_payload && r->payload != NULL)
            size += r->payload_len + 1;
    }
    char *mem = malloc(size);
    if (mem == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d results", n);
    store_hit *hits = (store_hit *)mem;
    float *vecs = (float *)(hits + (n > 0 ? n : 1));
    char *at = (char *)vecs + vec_bytes * (size_t)n;
    for (int i = 0; i < n; i++) {
        const store_row *r = &s->rows[c[i].row];
        store_hit *hit = &hits[i];
        memset(hit, 0, sizeof *hit);
        hit->id = store_row_id(r);
        if (r->id_kind == STORE_ID_STR)
            hit->id.str = copy_string(&at, r->id_str, r->id_len);
        hit->score = c[i].score;
        hit->model_version = r->version;
        if (q->with_payload && r->payload != NULL)
            hit->payload = copy_string(&at, r->payload, r->payload_len);
        if (q->with_vector) {
            float *v = vecs + (size_t)i * s->dim;
            memcpy(v, s->matrix + (size_t)c[i].row * s->dim, vec_bytes);
            hit->vector = v;
        }
    }
    out->n = n;
    out->hits = hits;
    out->mem = mem;
    return 0;
}

void store_result_free(store_result *r)
{
    if (r == NULL)
        return;
    free(r->mem);
    memset(r, 0, sizeof *r);
}

/* Heaps for nq queries, carved from one allocation. */
static cand *heaps_alloc(const store_query *qs, int nq, topk *heaps)
{
    size_t total = 0;
    for (int i = 0; i < nq; i++)
        total += (size_t)qs[i].offset + (size_t)qs[i].limit;
    cand *all = malloc(sizeof(cand) * total);
    if (all == NULL)
        return NULL;
    size_t at = 0;
    for (int i = 0; i < nq; i++) {
        heaps[i].a = all + at;
        heaps[i].n = 0;
        heaps[i].k = qs[i].offset + qs[i].limit;
        at += (size_t)heaps[i].k;
    }
    return all;
}

/* Validates every query and normalises it into Q (nq, dim). */
static int queries_prepare(const store *s, const store_query *qs, int nq, float *Q, emb_err *err)
{
    for (int i = 0; i < nq; i++) {
        emb_err e;
        if (store_query_check(s, &qs[i], &e) != 0)
            return nq == 1 ? emb_fail_as(err, e.kind, "%s", e.msg)
                           : emb_fail_as(err, e.kind, "query %d: %s", i, e.msg);
        if (store_normalise(qs[i].vector, Q + (size_t)i * s->dim, s->dim, &e) != 0)
            return emb_fail_as(err, e.kind, "query %d: %s", i, e.msg);
    }
    return 0;
}

int store_search_batch(store *s, const store_query *qs, int nq, store_result *outs, emb_err *err)
{
    if (nq < 1 || nq > STORE_MAX_QUERIES)
        return emb_fail_as(err, EMB_ERR_INVALID, "a search batch takes 1 to %d queries, not %d",
                           STORE_MAX_QUERIES, nq);
    for (int i = 0; i < nq; i++)
        memset(&outs[i], 0, sizeof outs[i]);
    int result = -1;
    int built = 0;
    float *Q = malloc(sizeof(float) * (size_t)nq * (size_t)s->dim);
    topk *heaps = calloc((size_t)nq, sizeof *heaps);
    cand *cands = NULL;
    if (Q == NULL || heaps == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d queries", nq);
        goto out;
    }
    if (queries_prepare(s, qs, nq, Q, err) != 0)
        goto out;
    cands = heaps_alloc(qs, nq, heaps);
    if (cands == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d queries' results", nq);
        goto out;
    }
    pthread_rwlock_rdlock(&s->rw);
    for (int i = 0; i < nq; i++) {
        if (qs[i].model_version != 0 && s->vec_version != 0 &&
            qs[i].model_version != s->vec_version) {
            pthread_rwlock_unlock(&s->rw);
            emb_fail_as(err, EMB_ERR_UNAVAILABLE, "the store now searches model version %u, not %u",
                        s->vec_version, qs[i].model_version);
            result = STORE_VERSION_MOVED;
            goto out;
        }
    }
    int rc = s->hnsw != NULL ? search_hnsw(s, qs, Q, nq, heaps, err)
                             : score_all(s, qs, Q, nq, heaps, err);
    for (int i = 0; rc == 0 && i < nq; i++) {
        qsort(heaps[i].a, (size_t)heaps[i].n, sizeof(cand), cand_order);
        rc = result_build(s, &qs[i], &heaps[i], &outs[i], err);
        if (rc == 0)
            built++;
    }
    pthread_rwlock_unlock(&s->rw);
    if (rc != 0)
        goto out;
    result = 0;
out:
    for (int i = 0; result != 0 && i < built; i++)
        store_result_free(&outs[i]);
    free(Q);
    free(heaps);
    free(cands);
    return result;
}

int store_search(store *s, const store_query *q, store_result *out, emb_err *err)
{
    return store_search_batch(s, q, 1, out, err);
}
