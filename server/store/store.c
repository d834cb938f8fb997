/* store.c: rows, the id table, writes, open and close. See store.h for the
 * design; store_disk.c has the file formats, store_search.c the search. */
#include "store_internal.h"
#include "hnsw.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dirlock.h"

/* ---- ids ----------------------------------------------------------------- */

store_id store_id_str(const char *s)
{
    store_id id = {.kind = STORE_ID_STR, .str = s, .len = strlen(s)};
    return id;
}

int store_id_from_json(const cJSON *json, store_id *id, emb_err *err)
{
    if (cJSON_IsString(json)) {
        *id = store_id_str(json->valuestring);
        if (id->len == 0 || id->len > STORE_MAX_ID_LEN)
            return emb_fail(err, "a string id must have 1 to %d bytes", STORE_MAX_ID_LEN);
        return 0;
    }
    if (cJSON_IsNumber(json)) {
        double d = json->valuedouble;
        if (!(d >= 0) || d > STORE_MAX_JSON_ID || d != floor(d))
            return emb_fail(err, "a numeric id must be an integer from 0 to 2^53");
        *id = store_id_num((uint64_t)d);
        return 0;
    }
    return emb_fail(err, "an id must be a string or an unsigned integer");
}

static int id_check(const store_id *id, emb_err *err)
{
    if (id->kind == STORE_ID_NUM)
        return 0;
    if (id->kind != STORE_ID_STR)
        return emb_fail(err, "id has no kind");
    if (id->str == NULL || id->len == 0 || id->len > STORE_MAX_ID_LEN)
        return emb_fail(err, "a string id must have 1 to %d bytes", STORE_MAX_ID_LEN);
    if (memchr(id->str, '\0', id->len) != NULL)
        return emb_fail(err, "a string id must not contain NUL");
    return 0;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t store_id_hash(const store_id *id)
{
    if (id->kind == STORE_ID_NUM)
        return mix64(id->num);
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < id->len; i++) {
        h ^= (unsigned char)id->str[i];
        h *= 0x100000001b3ull;
    }
    return mix64(h ^ 0x5354520000000000ull);
}

store_id store_row_id(const store_row *r)
{
    store_id id = {.kind = (store_id_kind)r->id_kind, .num = r->id_num, .str = r->id_str,
                   .len = r->id_len};
    return id;
}

static int row_has_id(const store_row *r, uint64_t hash, const store_id *id)
{
    if (r->hash != hash || r->id_kind != (uint32_t)id->kind)
        return 0;
    if (id->kind == STORE_ID_NUM)
        return r->id_num == id->num;
    return r->id_len == id->len && memcmp(r->id_str, id->str, id->len) == 0;
}

int store_normalise(const float *v, float *out, int dim, emb_err *err)
{
    double sum = 0;
    for (int i = 0; i < dim; i++) {
        if (!isfinite(v[i]))
            return emb_fail(err, "vector element %d is not a finite number", i);
        sum += (double)v[i] * v[i];
    }
    if (sum == 0)
        return emb_fail(err, "vector is all zeros");
    double inv = 1.0 / sqrt(sum);
    for (int i = 0; i < dim; i++)
        out[i] = (float)(v[i] * inv);
    return 0;
}

/* ---- the id table: open addressing, linear probing ----------------------- */

/* Slot holding id, or the empty slot where it would go; *row = -1 then. */
static uint64_t table_probe(const store *s, const store_id *id, uint64_t hash, long *row)
{
    uint64_t i = hash & s->mask;
    for (;;) {
        uint32_t v = s->slots[i];
        if (v == 0) {
            *row = -1;
            return i;
        }
        if (row_has_id(&s->rows[v - 1], hash, id)) {
            *row = (long)v - 1;
            return i;
        }
        i = (i + 1) & s->mask;
    }
}

long store_find(const store *s, const store_id *id)
{
    long row;
    table_probe(s, id, store_id_hash(id), &row);
    return row;
}

static void table_put(store *s, uint64_t hash, long row)
{
    uint64_t i = hash & s->mask;
    while (s->slots[i] != 0)
        i = (i + 1) & s->mask;
    s->slots[i] = (uint32_t)row + 1;
}

/* Empties slot i, shifting later entries of the run back (no tombstones). */
static void table_remove_slot(store *s, uint64_t i)
{
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        uint32_t v = s->slots[j];
        if (v == 0)
            break;
        uint64_t home = s->rows[v - 1].hash & s->mask;
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        s->slots[i] = v;
        i = j;
    }
    s->slots[i] = 0;
}

/* Slot that points at row (the row's id is in the table). */
static uint64_t table_slot_of(const store *s, long row)
{
    uint64_t i = s->rows[row].hash & s->mask;
    while (s->slots[i] != (uint32_t)row + 1)
        i = (i + 1) & s->mask;
    return i;
}

static int table_resize(store *s, uint64_t size, emb_err *err)
{
    uint32_t *slots = calloc(size, sizeof *slots);
    if (slots == NULL)
        return emb_fail(err, "out of memory for an id table of %llu slots",
                        (unsigned long long)size);
    free(s->slots);
    s->slots = slots;
    s->mask = size - 1;
    for (long r = 0; r < s->count; r++)
        table_put(s, s->rows[r].hash, r);
    return 0;
}

/* ---- rows ------------------------------------------------------------------ */

/* Counts a payload's fields and the bytes of their strings. */
static void fields_measure(const cJSON *obj, uint32_t *n, size_t *bytes)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, obj) {
        size_t key = strlen(m->string) + 1;
        if (cJSON_IsArray(m)) {
            const cJSON *el;
            cJSON_ArrayForEach(el, m) {
                if (cJSON_IsString(el) || cJSON_IsNumber(el) || cJSON_IsBool(el)) {
                    (*n)++;
                    *bytes += key + (cJSON_IsString(el) ? strlen(el->valuestring) + 1 : 0);
                }
            }
        } else if (cJSON_IsString(m) || cJSON_IsNumber(m) || cJSON_IsBool(m)) {
            (*n)++;
            *bytes += key + (cJSON_IsString(m) ? strlen(m->valuestring) + 1 : 0);
        }
    }
}

/* Copies s (n bytes) and a NUL to *at; returns the copy. */
static char *put_string(char **at, const char *s, size_t n)
{
    char *p = *at;
    if (n > 0)
        memcpy(p, s, n);
    p[n] = '\0';
    *at = p + n + 1;
    return p;
}

static void field_fill(store_field *f, const char *key, const cJSON *v, char **at)
{
    memset(f, 0, sizeof *f);
    f->key_len = (uint32_t)strlen(key);
    f->key = put_string(at, key, f->key_len);
    if (cJSON_IsString(v)) {
        f->type = FIELD_STR;
        f->str_len = (uint32_t)strlen(v->valuestring);
        f->str = put_string(at, v->valuestring, f->str_len);
    } else if (cJSON_IsNumber(v)) {
        f->type = FIELD_NUM;
        f->num = v->valuedouble;
    } else {
        f->type = FIELD_BOOL;
        f->num = cJSON_IsTrue(v) ? 1 : 0;
    }
}

static void fields_fill(const cJSON *obj, store_field *fields, char **at)
{
    uint32_t k = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, obj) {
        if (cJSON_IsArray(m)) {
            const cJSON *el;
            cJSON_ArrayForEach(el, m) {
                if (cJSON_IsString(el) || cJSON_IsNumber(el) || cJSON_IsBool(el))
                    field_fill(&fields[k++], m->string, el, at);
            }
        } else if (cJSON_IsString(m) || cJSON_IsNumber(m) || cJSON_IsBool(m)) {
            field_fill(&fields[k++], m->string, m, at);
        }
    }
}

static int is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Parses a payload that must be exactly one JSON object. */
static cJSON *payload_parse(const char *payload, size_t len, emb_err *err)
{
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(payload, len, &end, 0);
    if (obj == NULL) {
        emb_fail(err, "payload is not valid JSON");
        return NULL;
    }
    while (end != NULL && end < payload + len && is_json_space(*end))
        end++;
    if (!cJSON_IsObject(obj) || end != payload + len) {
        cJSON_Delete(obj);
        emb_fail(err, "payload must be one JSON object");
        return NULL;
    }
    return obj;
}

void store_row_free(store_row *r)
{
    free(r->blob);
    r->blob = NULL;
}

int store_row_prepare(const store_id *id, int32_t version, const char *text, size_t text_len,
                      const char *payload, size_t payload_len, store_row *out, emb_err *err)
{
    memset(out, 0, sizeof *out);
    if (id_check(id, err) != 0)
        return 1;
    if (text != NULL && text_len > STORE_MAX_TEXT) {
        emb_fail(err, "text of %zu bytes is over the limit of %d", text_len, STORE_MAX_TEXT);
        return 1;
    }
    if (payload != NULL && payload_len > STORE_MAX_PAYLOAD) {
        emb_fail(err, "payload of %zu bytes is over the limit of %d", payload_len,
                 STORE_MAX_PAYLOAD);
        return 1;
    }
    int result = -1;
    cJSON *obj = NULL;
    uint32_t n_fields = 0;
    size_t field_bytes = 0;
    if (payload != NULL) {
        obj = payload_parse(payload, payload_len, err);
        if (obj == NULL) {
            result = 1;
            goto out;
        }
        fields_measure(obj, &n_fields, &field_bytes);
    }
    size_t id_bytes = id->kind == STORE_ID_STR ? id->len + 1 : 0;
    size_t size = sizeof(store_field) * n_fields + id_bytes + (text ? text_len + 1 : 0) +
                  (payload ? payload_len + 1 : 0) + field_bytes;
    out->blob = malloc(size > 0 ? size : 1);
    if (out->blob == NULL) {
        emb_fail(err, "out of memory");
        goto out;
    }
    store_field *fields = out->blob;
    char *at = (char *)(fields + n_fields);
    out->id_kind = (uint32_t)id->kind;
    out->id_num = id->kind == STORE_ID_NUM ? id->num : 0;
    if (id->kind == STORE_ID_STR) {
        out->id_len = (uint32_t)id->len;
        out->id_str = put_string(&at, id->str, id->len);
    }
    out->hash = store_id_hash(id);
    out->version = version;
    if (text != NULL) {
        out->text_len = (uint32_t)text_len;
        out->text = put_string(&at, text, text_len);
    }
    if (payload != NULL) {
        out->payload_len = (uint32_t)payload_len;
        out->payload = put_string(&at, payload, payload_len);
        fields_fill(obj, fields, &at);
        out->fields = fields;
        out->n_fields = n_fields;
    }
    result = 0;
out:
    cJSON_Delete(obj);
    return result;
}

/* ---- the approximate index ---------------------------------------------------- */

#define HNSW_SEED 100
#define BUILD_CHUNK 1024           /* rows copied per read-lock hold */
#define BUILD_FINAL 1024           /* log entries left for the swap, under the write lock */
#define BUILD_LOG_MAX (1u << 26)   /* labels logged during one build; past it, abandoned */

/* An index update failed: search stays exact from now on. Caller holds rw
 * exclusively. */
static void hnsw_fail(store *s, const emb_err *e)
{
    hnsw_free(s->hnsw);
    s->hnsw = NULL;
    s->hnsw_off = 1;
    char msg[512];
    snprintf(msg, sizeof msg, "approximate index off, search is exact: %.440s", e->msg);
    store_set_error(s, msg);
}

/* Records that label's row changed (written, deleted or moved) while a build
 * runs. Caller holds rw exclusively. */
static void build_log(store *s, uint64_t label)
{
    if (!s->building || s->blog_overflow)
        return;
    if (s->blog_n == s->blog_cap) {
        size_t cap = s->blog_cap < 1024 ? 1024 : s->blog_cap * 2;
        uint64_t *m = cap <= BUILD_LOG_MAX ? realloc(s->blog, sizeof(uint64_t) * cap) : NULL;
        if (m == NULL) {
            s->blog_overflow = 1;
            return;
        }
        s->blog = m;
        s->blog_cap = cap;
    }
    s->blog[s->blog_n++] = label;
}

/* Brings label's node in the new index h up to date with the store: the
 * row's vector v, or deleted when v is NULL. */
static int build_apply(hnsw_index *h, uint64_t label, const float *v, emb_err *e)
{
    if (v != NULL)
        return hnsw_add(h, label, v, e);
    return hnsw_mark_delete(h, label, e);
}

/* Pops up to max logged labels and copies their state: vectors into vbuf
 * (max, dim), live[i] = 0 for a deleted label. Caller holds rw (shared is
 * enough: only the build thread takes from the log). */
static size_t build_take_log(store *s, uint64_t *lbuf, float *vbuf, int *live, size_t max)
{
    size_t m = 0;
    while (m < max && s->blog_n > 0) {
        uint64_t label = s->blog[--s->blog_n];
        uint32_t r = s->label_row[label];
        lbuf[m] = label;
        live[m] = r != 0;
        if (r != 0)
            memcpy(vbuf + m * (size_t)s->dim, s->matrix + (size_t)(r - 1) * s->dim,
                   sizeof(float) * (size_t)s->dim);
        m++;
    }
    return m;
}

static int build_cancelled(store *s)
{
    return atomic_load_explicit(&s->build_cancel, memory_order_relaxed);
}

/* The build thread. It never holds rw while it adds to the index:
 *   1. copies the rows BUILD_CHUNK at a time under the read lock and adds
 *      them to a private index (writes meanwhile log their labels, and so
 *      does a delete for the row it moves into the hole, so a row copied
 *      twice or missed is in the log);
 *   2. drains the log the same way (each label gets the store's current
 *      state: its vector, or a delete mark) until at most BUILD_FINAL
 *      entries remain;
 *   3. takes the write lock, applies the rest and swaps the index in.
 * Searches use the old index (or exact search) until then. */
static void *build_main(void *p)
{
    store *s = p;
    const int dim = s->dim;
    emb_err e = {0};
    hnsw_index *h = NULL;
    hnsw_index *old = NULL;
    uint64_t *lbuf = malloc(sizeof(uint64_t) * BUILD_CHUNK);
    float *vbuf = malloc(sizeof(float) * BUILD_CHUNK * (size_t)dim);
    int *live = malloc(sizeof(int) * BUILD_CHUNK);
    int done = 0;              /* building is cleared */
    if (lbuf == NULL || vbuf == NULL || live == NULL) {
        snprintf(e.msg, sizeof e.msg, "out of memory for the index build");
        goto out;
    }
    pthread_rwlock_rdlock(&s->rw);
    size_t n0 = (size_t)s->count;
    pthread_rwlock_unlock(&s->rw);
    h = hnsw_create(dim, n0 + n0 / 8 + 1024, s->hnsw_m, s->hnsw_ef_construction, HNSW_SEED, &e);
    if (h == NULL)
        goto out;
    for (long start = 0;; start += BUILD_CHUNK) {
        pthread_rwlock_rdlock(&s->rw);
        long m = s->count - start;
        m = m < BUILD_CHUNK ? m : BUILD_CHUNK;
        for (long i = 0; i < m; i++)
            lbuf[i] = s->rows[start + i].label;
        if (m > 0)
            memcpy(vbuf, s->matrix + (size_t)start * dim, sizeof(float) * (size_t)m * dim);
        pthread_rwlock_unlock(&s->rw);
        if (m <= 0)
            break;
        for (long i = 0; i < m; i++) {
            if (build_cancelled(s))
                goto out;
            if (hnsw_add(h, lbuf[i], vbuf + (size_t)i * dim, &e) != 0)
                goto out;
        }
    }
    for (;;) {
        pthread_rwlock_rdlock(&s->rw);
        size_t m = 0;
        if (s->blog_n > BUILD_FINAL && !s->blog_overflow)
            m = build_take_log(s, lbuf, vbuf, live, BUILD_CHUNK);
        pthread_rwlock_unlock(&s->rw);
        if (m == 0)
            break;
        for (size_t i = 0; i < m; i++) {
            if (build_cancelled(s))
                goto out;
            if (build_apply(h, lbuf[i], live[i] ? vbuf + i * (size_t)dim : NULL, &e) != 0)
                goto out;
        }
    }
    pthread_rwlock_wrlock(&s->rw);
    int ok = !s->hnsw_off && !s->blog_overflow && !build_cancelled(s);
    while (ok && s->blog_n > 0) {
        uint64_t label = s->blog[--s->blog_n];
        uint32_t r = s->label_row[label];
        const float *v = r != 0 ? s->matrix + (size_t)(r - 1) * dim : NULL;
        if (build_apply(h, label, v, &e) != 0) {
            pthread_rwlock_unlock(&s->rw);
            goto out;
        }
    }
    if (ok) {                  /* else cancelled, off, or too many writes meanwhile */
        old = s->hnsw;
        s->hnsw = h;
        h = NULL;
        s->n_builds++;
    }
    s->building = 0;
    s->blog_n = 0;
    s->blog_overflow = 0;
    pthread_rwlock_unlock(&s->rw);
    done = 1;
out:
    if (!done) {
        pthread_rwlock_wrlock(&s->rw);
        if (e.msg[0] != '\0' && !build_cancelled(s))
            hnsw_fail(s, &e);
        s->building = 0;
        s->blog_n = 0;
        s->blog_overflow = 0;
        pthread_rwlock_unlock(&s->rw);
    }
    hnsw_free(h);
    hnsw_free(old);
    free(lbuf);
    free(vbuf);
    free(live);
    pthread_mutex_lock(&s->build_mu);
    s->build_done = 1;
    pthread_cond_broadcast(&s->build_cv);
    pthread_mutex_unlock(&s->build_mu);
    return NULL;
}

/* Joins a finished build thread. Returns 1 when a build still runs. */
static int build_reap(store *s)
{
    pthread_mutex_lock(&s->build_mu);
    int started = s->build_started;
    int done = s->build_done;
    pthread_mutex_unlock(&s->build_mu);
    if (!started)
        return 0;
    if (!done)
        return 1;
    pthread_join(s->build_thread, NULL);
    pthread_mutex_lock(&s->build_mu);
    s->build_started = 0;
    pthread_mutex_unlock(&s->build_mu);
    return 0;
}

/* Starts a build in the background. Caller holds rw exclusively. */
static void build_start(store *s)
{
    s->building = 1;
    s->blog_n = 0;
    s->blog_overflow = 0;
    pthread_mutex_lock(&s->build_mu);
    s->build_done = 0;
    int rc = pthread_create(&s->build_thread, NULL, build_main, s);
    s->build_started = rc == 0;
    pthread_mutex_unlock(&s->build_mu);
    if (rc != 0) {
        s->building = 0;
        store_set_error(s, "cannot start the index build thread; search stays exact for now");
    }
}

/* Starts a build once the store reaches the threshold, and a rebuild when
 * deleted nodes outnumber live ones (hnswlib 0.6.2 cannot reuse them).
 * Caller holds rw exclusively (or is open, before anyone else has the store). */
static void hnsw_maintain(store *s)
{
    if (s->hnsw_threshold <= 0 || s->hnsw_off || s->building)
        return;
    if (build_reap(s))
        return;
    if (s->hnsw == NULL) {
        if (s->count >= s->hnsw_threshold)
            build_start(s);
        return;
    }
    size_t dead = hnsw_deleted(s->hnsw);
    if (dead > 1024 && dead > (size_t)s->count)
        build_start(s);
}

int store_wait_index(store *s)
{
    pthread_mutex_lock(&s->build_mu);
    while (s->build_started && !s->build_done)
        pthread_cond_wait(&s->build_cv, &s->build_mu);
    pthread_mutex_unlock(&s->build_mu);
    pthread_rwlock_rdlock(&s->rw);
    int has = s->hnsw != NULL;
    pthread_rwlock_unlock(&s->rw);
    return has;
}

/* Room for `extra` new labels (and nodes in the index). */
static int labels_reserve(store *s, long extra, emb_err *err)
{
    uint64_t need = s->next_label + (uint64_t)extra;
    if (need > s->label_cap) {
        uint64_t cap = s->label_cap < 1024 ? 1024 : s->label_cap * 2;
        while (cap < need)
            cap *= 2;
        uint32_t *m = realloc(s->label_row, sizeof(uint32_t) * cap);
        if (m == NULL)
            return emb_fail(err, "out of memory for %llu labels", (unsigned long long)cap);
        memset(m + s->label_cap, 0, sizeof(uint32_t) * (cap - s->label_cap));
        s->label_row = m;
        s->label_cap = cap;
    }
    if (s->hnsw == NULL)
        return 0;
    return hnsw_reserve(s->hnsw, hnsw_count(s->hnsw) + (size_t)extra, err);
}

int store_reserve(store *s, long extra, emb_err *err)
{
    long need = s->count + extra;
    if (need > s->max_items)
        return emb_fail(err, "the store is full: %ld items, max_items is %ld", s->count,
                        s->max_items);
    if (need > s->cap) {
        long cap = s->cap < 1024 ? 1024 : s->cap * 2;
        while (cap < need)
            cap *= 2;
        if (cap > s->max_items)
            cap = s->max_items;
        float *m = realloc(s->matrix, sizeof(float) * (size_t)cap * (size_t)s->dim);
        if (m == NULL)
            return emb_fail(err, "out of memory for %ld vectors", cap);
        s->matrix = m;
        store_row *rows = realloc(s->rows, sizeof(store_row) * (size_t)cap);
        if (rows == NULL)
            return emb_fail(err, "out of memory for %ld rows", cap);
        s->rows = rows;
        s->cap = cap;
        if (store_shadow_reserve(s, err) != 0)
            return -1;
    }
    if (labels_reserve(s, extra, err) != 0)
        return -1;
    /* Keep the table at most half full. */
    uint64_t size = s->mask + 1;
    if ((uint64_t)need * 2 > size) {
        while ((uint64_t)need * 2 > size)
            size *= 2;
        if (table_resize(s, size, err) != 0)
            return -1;
    }
    return 0;
}

void store_apply_upsert(store *s, store_row *rows, const float *vecs, int n, void **old_blobs)
{
    const size_t row_bytes = sizeof(float) * (size_t)s->dim;
    for (int i = 0; i < n; i++) {
        store_id id = store_row_id(&rows[i]);
        long row;
        uint64_t slot = table_probe(s, &id, rows[i].hash, &row);
        old_blobs[i] = NULL;
        if (row >= 0) {
            old_blobs[i] = s->rows[row].blob;
            rows[i].label = s->rows[row].label;
        } else {
            row = s->count++;
            s->slots[slot] = (uint32_t)row + 1;
            rows[i].label = s->next_label++;   /* room: store_reserve */
            s->label_row[rows[i].label] = (uint32_t)row + 1;
        }
        rows[i].gen = ++s->gen_counter;
        s->rows[row] = rows[i];
        memcpy(s->matrix + (size_t)row * s->dim, vecs + (size_t)i * s->dim, row_bytes);
        if (s->shadow_ok != NULL)
            s->shadow_ok[row] = 0;
        if (rows[i].text != NULL && rows[i].version != 0) {
            if (s->vec_version == 0)   /* the first text item sets the store's version */
                s->vec_version = s->target_version = (uint32_t)rows[i].version;
            if ((uint32_t)rows[i].version != s->vec_version || s->shadow_ok != NULL)
                s->reembed_dirty = 1;
        }
        rows[i].blob = NULL;   /* the store owns it now */
        build_log(s, s->rows[row].label);
        emb_err e;
        /* An existing label is updated in place (hnswlib 0.6.2's addPoint). */
        if (s->hnsw != NULL &&
            hnsw_add(s->hnsw, s->rows[row].label, s->matrix + (size_t)row * s->dim, &e) != 0)
            hnsw_fail(s, &e);
    }
    hnsw_maintain(s);
}

/* Removes one row: its slot is emptied and the last row moves into the hole. */
static void row_remove(store *s, long row, uint64_t slot)
{
    table_remove_slot(s, slot);
    free(s->rows[row].blob);
    s->label_row[s->rows[row].label] = 0;
    build_log(s, s->rows[row].label);
    if (s->hnsw != NULL) {
        emb_err e;
        if (hnsw_mark_delete(s->hnsw, s->rows[row].label, &e) != 0)
            hnsw_fail(s, &e);
    }
    long last = s->count - 1;
    if (row != last) {
        uint64_t last_slot = table_slot_of(s, last);
        s->rows[row] = s->rows[last];
        s->label_row[s->rows[row].label] = (uint32_t)row + 1;
        build_log(s, s->rows[row].label);   /* a build may have copied past row */
        memcpy(s->matrix + (size_t)row * s->dim, s->matrix + (size_t)last * s->dim,
               sizeof(float) * (size_t)s->dim);
        if (s->shadow_ok != NULL) {
            memcpy(s->shadow + (size_t)row * s->dim, s->shadow + (size_t)last * s->dim,
                   sizeof(float) * (size_t)s->dim);
            s->shadow_ok[row] = s->shadow_ok[last];
        }
        s->slots[last_slot] = (uint32_t)row + 1;
    }
    s->count--;
}

int store_apply_delete(store *s, const store_id *ids, int n)
{
    int deleted = 0;
    for (int i = 0; i < n; i++) {
        long row;
        uint64_t slot = table_probe(s, &ids[i], store_id_hash(&ids[i]), &row);
        if (row < 0)
            continue;
        row_remove(s, row, slot);
        deleted++;
    }
    hnsw_maintain(s);
    return deleted;
}

void store_row_set_vector(store *s, long r, const float *v, int32_t version)
{
    float *dst = s->matrix + (size_t)r * s->dim;
    memcpy(dst, v, sizeof(float) * (size_t)s->dim);
    s->rows[r].version = version;
    s->rows[r].gen = ++s->gen_counter;
    build_log(s, s->rows[r].label);
    emb_err e;
    if (s->hnsw != NULL && hnsw_add(s->hnsw, s->rows[r].label, dst, &e) != 0)
        hnsw_fail(s, &e);
}

void store_index_reset(store *s)
{
    if (s->hnsw != NULL) {
        hnsw_free(s->hnsw);
        s->hnsw = NULL;
    }
    /* a build under way copied old vectors: everything counts as written */
    for (long r = 0; r < s->count; r++)
        build_log(s, s->rows[r].label);
    hnsw_maintain(s);
}

void store_set_error(store *s, const char *msg)
{
    pthread_mutex_lock(&s->stat_lock);
    snprintf(s->last_error, sizeof s->last_error, "%s", msg);
    pthread_mutex_unlock(&s->stat_lock);
}

/* ---- open and close ---------------------------------------------------------- */

/* After recovery: the searched version is the newest of any text item (a
 * crash during a move can leave older ones, which then wait to be
 * re-embedded and are not searched meanwhile). */
static void settle_versions(store *s)
{
    uint32_t best = 0;
    for (long r = 0; r < s->count; r++) {
        if (s->rows[r].text != NULL && (uint32_t)s->rows[r].version > best)
            best = (uint32_t)s->rows[r].version;
    }
    s->vec_version = s->target_version = best;
    s->reembed_dirty = 1;
}

static void store_free(store *s)
{
    if (s == NULL)
        return;
    free(s->shadow);
    free(s->shadow_ok);
    wal_close(s->wal);
    hnsw_free(s->hnsw);
    free(s->label_row);
    free(s->blog);
    for (long r = 0; r < s->count; r++)
        free(s->rows[r].blob);
    free(s->rows);
    free(s->matrix);
    free(s->slots);
    emb_dirlock_release(s->lock_fd);
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    free(s->dir);
    pthread_rwlock_destroy(&s->rw);
    pthread_mutex_destroy(&s->snap_lock);
    pthread_mutex_destroy(&s->stat_lock);
    pthread_mutex_destroy(&s->build_mu);
    pthread_cond_destroy(&s->build_cv);
    free(s);
}

/* Creates (one level) and locks the data directory; removes leftovers of
 * an interrupted snapshot or log rotation. */
static int dir_open(store *s, const char *dir, emb_err *err)
{
    s->dir = strdup(dir);
    if (s->dir == NULL)
        return emb_fail(err, "out of memory");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return emb_fail(err, "cannot create data directory %s: %s", dir, strerror(errno));
    s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0)
        return emb_fail(err, "cannot open data directory %s: %s", dir, strerror(errno));
    s->lock_fd = emb_dirlock_take(s->dir_fd, dir, "lock", "store", err);
    if (s->lock_fd < 0)
        return -1;
    unlinkat(s->dir_fd, "snapshot.tmp", 0);
    unlinkat(s->dir_fd, "wal.tmp", 0);
    return 0;
}

static int locks_init(store *s)
{
    pthread_rwlockattr_t attr;
    if (pthread_rwlockattr_init(&attr) != 0)
        return -1;
    /* Searches are frequent; without this, writers could starve. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&s->rw, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&s->snap_lock, NULL);
    pthread_mutex_init(&s->stat_lock, NULL);
    pthread_mutex_init(&s->build_mu, NULL);
    pthread_cond_init(&s->build_cv, NULL);
    return rc;
}

store *store_open(const store_options *opt, store_recovery *rec, emb_err *err)
{
    store_recovery local;
    if (rec == NULL)
        rec = &local;
    memset(rec, 0, sizeof *rec);
    if (opt->dim < 1 || opt->dim > STORE_MAX_DIM) {
        emb_fail(err, "dimension %d is out of range (1..%d)", opt->dim, STORE_MAX_DIM);
        return NULL;
    }
    store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        emb_fail(err, "out of memory");
        return NULL;
    }
    s->dir_fd = -1;
    s->lock_fd = -1;
    s->dim = opt->dim;
    s->max_items = opt->max_items > 0 ? opt->max_items : STORE_DEFAULT_MAX_ITEMS;
    if (s->max_items > (long)UINT32_MAX - 1)
        s->max_items = (long)UINT32_MAX - 1;
    s->snapshot_wal_bytes = opt->snapshot_wal_bytes;
    s->hnsw_m = opt->hnsw_m > 0 ? opt->hnsw_m : STORE_DEFAULT_HNSW_M;
    s->hnsw_ef_construction =
        opt->hnsw_ef_construction > 0 ? opt->hnsw_ef_construction : STORE_DEFAULT_HNSW_EF_CONSTRUCTION;
    s->hnsw_ef = opt->hnsw_ef > 0 ? opt->hnsw_ef : STORE_DEFAULT_HNSW_EF;
    if (locks_init(s) != 0) {
        emb_fail(err, "cannot create the store's lock");
        free(s);
        return NULL;
    }
    if (table_resize(s, 1024, err) != 0)
        goto fail;
    if (opt->dir == NULL) {
        s->hnsw_threshold = opt->hnsw_threshold;
        return s;
    }
    if (dir_open(s, opt->dir, err) != 0)
        goto fail;
    if (store_snapshot_load(s, rec, err) != 0)
        goto fail;
    wal_recovery wr;
    s->wal = wal_open(s->dir, s->dir_fd, (uint32_t)s->dim, rec->snapshot_seq,
                      store_replay_record, s, &wr, err);
    if (s->wal == NULL)
        goto fail;
    s->seq = wr.last_seq;
    rec->wal_records = wr.records;
    rec->wal_skipped = wr.skipped;
    rec->truncated_bytes = wr.truncated_bytes;
    snprintf(rec->message, sizeof rec->message, "%s", wr.message);
    settle_versions(s);
    s->hnsw_threshold = opt->hnsw_threshold;
    hnsw_maintain(s);   /* in the background, after recovery */
    return s;
fail:
    store_free(s);
    return NULL;
}

void store_close(store *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->build_cancel, 1);
    pthread_mutex_lock(&s->build_mu);
    int started = s->build_started;
    pthread_mutex_unlock(&s->build_mu);
    if (started)
        pthread_join(s->build_thread, NULL);
    store_free(s);
}

/* ---- writes ----------------------------------------------------------------- */

static int snapshot_locked(store *s, emb_err *err)
{
    pthread_rwlock_rdlock(&s->rw);
    int rc = store_snapshot_write(s, err);
    if (rc == 0)
        rc = wal_rotate(s->wal, s->seq, err);
    pthread_rwlock_unlock(&s->rw);
    if (rc == 0) {
        pthread_mutex_lock(&s->stat_lock);
        s->n_snapshots++;
        pthread_mutex_unlock(&s->stat_lock);
    }
    return rc;
}

int store_snapshot(store *s, emb_err *err)
{
    if (s->wal == NULL)
        return emb_fail(err, "the store is in memory only: there is nothing to snapshot to");
    pthread_mutex_lock(&s->snap_lock);
    int rc = snapshot_locked(s, err);
    pthread_mutex_unlock(&s->snap_lock);
    if (rc != 0)
        store_set_error(s, err->msg);
    return rc;
}

/* After a durable write: snapshot when the log has grown past the limit and
 * no other snapshot runs. A failure is kept for the stats, not returned:
 * the write itself succeeded. */
static void snapshot_if_due(store *s)
{
    if (s->wal == NULL || s->snapshot_wal_bytes == 0)
        return;
    wal_stats ws;
    wal_get_stats(s->wal, &ws);
    if (ws.bytes <= s->snapshot_wal_bytes)
        return;
    if (pthread_mutex_trylock(&s->snap_lock) != 0)
        return;
    wal_get_stats(s->wal, &ws);
    if (ws.bytes > s->snapshot_wal_bytes) {
        emb_err e = {0};
        if (snapshot_locked(s, &e) != 0)
            store_set_error(s, e.msg);
    }
    pthread_mutex_unlock(&s->snap_lock);
}

int store_item_check(const store *s, const store_item *it, emb_err *err)
{
    if (it->vector == NULL || it->vector_dim != s->dim)
        return emb_fail(err, "vector has %d dimensions, the store has %d",
                        it->vector == NULL ? 0 : it->vector_dim, s->dim);
    double sum = 0;
    for (int i = 0; i < s->dim; i++) {
        if (!isfinite(it->vector[i]))
            return emb_fail(err, "vector element %d is not a finite number", i);
        sum += (double)it->vector[i] * it->vector[i];
    }
    if (sum == 0)
        return emb_fail(err, "vector is all zeros");
    store_row row;
    if (store_row_prepare(&it->id, it->model_version, it->text, it->text_len, it->payload,
                          it->payload_len, &row, err) != 0)
        return -1;
    store_row_free(&row);
    return 0;
}

/* Validates and copies a batch outside any lock. */
static int upsert_prepare(const store *s, const store_item *items, int n, store_row *rows,
                          float *vecs, emb_err *err)
{
    for (int i = 0; i < n; i++) {
        const store_item *it = &items[i];
        if (it->vector == NULL || it->vector_dim != s->dim)
            return emb_fail(err, "item %d: vector has %d dimensions, the store has %d", i,
                            it->vector == NULL ? 0 : it->vector_dim, s->dim);
        emb_err e;
        if (store_normalise(it->vector, vecs + (size_t)i * s->dim, s->dim, &e) != 0)
            return emb_fail(err, "item %d: %s", i, e.msg);
        if (store_row_prepare(&it->id, it->model_version, it->text, it->text_len, it->payload,
                              it->payload_len, &rows[i], &e) != 0)
            return emb_fail(err, "item %d: %s", i, e.msg);
    }
    return 0;
}

long store_count_new(const store *s, const store_row *rows, int n)
{
    long n_new = 0;
    for (int i = 0; i < n; i++) {
        store_id id = store_row_id(&rows[i]);
        long row;
        table_probe(s, &id, rows[i].hash, &row);
        if (row < 0)
            n_new++;
    }
    return n_new;
}

int store_upsert(store *s, const store_item *items, int n, emb_err *err)
{
    if (n < 1 || n > STORE_MAX_BATCH)
        return emb_fail(err, "an upsert takes 1 to %d items, not %d", STORE_MAX_BATCH, n);
    int result = -1;
    strbuf rec;
    sb_init(&rec, STORE_MAX_RECORD_BYTES);
    store_row *rows = calloc((size_t)n, sizeof *rows);
    void **old = calloc((size_t)n, sizeof *old);
    float *vecs = malloc(sizeof(float) * (size_t)n * (size_t)s->dim);
    if (rows == NULL || old == NULL || vecs == NULL) {
        emb_fail(err, "out of memory for a batch of %d items", n);
        goto out;
    }
    if (upsert_prepare(s, items, n, rows, vecs, err) != 0)
        goto out;
    if (s->wal != NULL && store_encode_upsert(&rec, rows, vecs, n, s->dim) != 0) {
        emb_fail(err, "the batch is over %u bytes encoded; send fewer items",
                 STORE_MAX_RECORD_BYTES);
        goto out;
    }
    uint64_t seq = 0;
    pthread_rwlock_wrlock(&s->rw);
    if (store_reserve(s, store_count_new(s, rows, n), err) != 0) {
        pthread_rwlock_unlock(&s->rw);
        goto out;
    }
    if (s->wal != NULL && wal_append(s->wal, rec.buf, rec.len, &seq, err) != 0) {
        pthread_rwlock_unlock(&s->rw);
        goto out;
    }
    if (s->wal == NULL)
        seq = s->seq + 1;
    store_apply_upsert(s, rows, vecs, n, old);
    s->seq = seq;
    pthread_rwlock_unlock(&s->rw);
    if (s->wal != NULL && wal_sync(s->wal, seq, err) != 0)
        goto out;
    result = 0;
    snapshot_if_due(s);
out:
    for (int i = 0; rows != NULL && i < n; i++)
        store_row_free(&rows[i]);
    for (int i = 0; old != NULL && i < n; i++)
        free(old[i]);
    free(rows);
    free(old);
    free(vecs);
    sb_free(&rec);
    return result;
}

static int any_exists(const store *s, const store_id *ids, int n)
{
    for (int i = 0; i < n; i++) {
        if (store_find(s, &ids[i]) >= 0)
            return 1;
    }
    return 0;
}

int store_delete(store *s, const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    if (n_deleted != NULL)
        *n_deleted = 0;
    if (n < 0 || n > STORE_MAX_BATCH)
        return emb_fail(err, "a delete takes 0 to %d ids, not %d", STORE_MAX_BATCH, n);
    for (int i = 0; i < n; i++) {
        emb_err e;
        if (id_check(&ids[i], &e) != 0)
            return emb_fail(err, "id %d: %s", i, e.msg);
    }
    int result = -1;
    strbuf rec;
    sb_init(&rec, STORE_MAX_RECORD_BYTES);
    if (s->wal != NULL) {
        store_encode_delete(&rec, ids, n);
        if (rec.failed) {
            emb_fail(err, "out of memory for a delete of %d ids", n);
            goto out;
        }
    }
    pthread_rwlock_wrlock(&s->rw);
    if (!any_exists(s, ids, n)) {
        /* Nothing to log; there may still be an earlier, unsynced delete of
         * these ids, so wait for the log to catch up with what we saw. */
        uint64_t seen = s->seq;
        pthread_rwlock_unlock(&s->rw);
        if (s->wal != NULL && wal_sync(s->wal, seen, err) != 0)
            goto out;
        result = 0;
        goto out;
    }
    uint64_t seq = 0;
    if (s->wal != NULL && wal_append(s->wal, rec.buf, rec.len, &seq, err) != 0) {
        pthread_rwlock_unlock(&s->rw);
        goto out;
    }
    if (s->wal == NULL)
        seq = s->seq + 1;
    int deleted = store_apply_delete(s, ids, n);
    s->seq = seq;
    pthread_rwlock_unlock(&s->rw);
    if (s->wal != NULL && wal_sync(s->wal, seq, err) != 0)
        goto out;
    if (n_deleted != NULL)
        *n_deleted = deleted;
    result = 0;
    snapshot_if_due(s);
out:
    sb_free(&rec);
    return result;
}

/* ---- reads -------------------------------------------------------------------- */

int store_get(store *s, const store_id *id, store_record *out, emb_err *err)
{
    memset(out, 0, sizeof *out);
    if (id_check(id, err) != 0)
        return -1;
    int result = -1;
    pthread_rwlock_rdlock(&s->rw);
    long row = store_find(s, id);
    if (row < 0) {
        result = 0;
        goto out;
    }
    const store_row *r = &s->rows[row];
    size_t vec_bytes = sizeof(float) * (size_t)s->dim;
    size_t size = vec_bytes + r->id_len + 1 + r->text_len + 1 + r->payload_len + 1;
    void *mem = malloc(size);
    if (mem == NULL) {
        emb_fail(err, "out of memory");
        goto out;
    }
    out->mem = mem;
    out->vector = mem;         /* the vector first: malloc's alignment */
    memcpy(out->vector, s->matrix + (size_t)row * s->dim, vec_bytes);
    char *at = (char *)mem + vec_bytes;
    out->id = store_row_id(r);
    if (r->id_kind == STORE_ID_STR)
        out->id.str = put_string(&at, r->id_str, r->id_len);
    if (r->text != NULL) {
        out->text_len = r->text_len;
        out->text = put_string(&at, r->text, r->text_len);
    }
    if (r->payload != NULL) {
        out->payload_len = r->payload_len;
        out->payload = put_string(&at, r->payload, r->payload_len);
    }
    out->model_version = r->version;
    result = 1;
out:
    pthread_rwlock_unlock(&s->rw);
    return result;
}

void store_record_free(store_record *r)
{
    free(r->mem);
    memset(r, 0, sizeof *r);
}

long store_count(store *s)
{
    pthread_rwlock_rdlock(&s->rw);
    long n = s->count;
    pthread_rwlock_unlock(&s->rw);
    return n;
}

int store_dim(const store *s)
{
    return s->dim;
}

void store_get_stats(store *s, store_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&s->rw);
    out->count = s->count;
    out->seq = s->seq;
    if (s->hnsw != NULL) {
        out->hnsw_nodes = hnsw_count(s->hnsw);
        out->hnsw_deleted = hnsw_deleted(s->hnsw);
    }
    out->hnsw_building = s->building;
    out->hnsw_builds = s->n_builds;
    pthread_rwlock_unlock(&s->rw);
    out->dim = s->dim;
    out->memory_only = s->wal == NULL;
    if (s->wal != NULL) {
        wal_stats ws;
        wal_get_stats(s->wal, &ws);
        out->wal_bytes = ws.bytes;
        out->wal_records = ws.records;
        out->wal_syncs = ws.syncs;
        out->failed = ws.failed;
    }
    pthread_mutex_lock(&s->stat_lock);
    out->snapshots = s->n_snapshots;
    snprintf(out->last_error, sizeof out->last_error, "%s", s->last_error);
    pthread_mutex_unlock(&s->stat_lock);
}
