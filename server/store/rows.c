/* rows.c: ids and item rows (see rows.h). */
#include "rows.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
            return emb_fail_as(err, EMB_ERR_INVALID, "a string id must have 1 to %d bytes",
                               STORE_MAX_ID_LEN);
        return 0;
    }
    if (cJSON_IsNumber(json)) {
        /* JSON numbers arrive as doubles: above 2^53-1 two integers share
         * one double (9007199254740993 reads as 2^53), so such an id would
         * name another item. Refuse; strings keep every digit. */
        double d = json->valuedouble;
        if (!(d >= 0) || d > STORE_MAX_JSON_ID || d != floor(d))
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "a numeric id must be an integer from 0 to 9007199254740991 "
                               "(2^53-1); send larger or non-integer ids as strings");
        *id = store_id_num((uint64_t)d);
        return 0;
    }
    return emb_fail_as(err, EMB_ERR_INVALID, "an id must be a string or an unsigned integer");
}

int store_id_check(const store_id *id, emb_err *err)
{
    if (id->kind == STORE_ID_NUM)
        return 0;
    if (id->kind != STORE_ID_STR)
        return emb_fail_as(err, EMB_ERR_INVALID, "id has no kind");
    if (id->str == NULL || id->len == 0 || id->len > STORE_MAX_ID_LEN)
        return emb_fail_as(err, EMB_ERR_INVALID, "a string id must have 1 to %d bytes",
                           STORE_MAX_ID_LEN);
    if (memchr(id->str, '\0', id->len) != NULL)
        return emb_fail_as(err, EMB_ERR_INVALID, "a string id must not contain NUL");
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

int store_row_has_id(const store_row *r, uint64_t hash, const store_id *id)
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
            return emb_fail_as(err, EMB_ERR_INVALID, "vector element %d is not a finite number", i);
        sum += (double)v[i] * v[i];
    }
    if (sum == 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "vector is all zeros");
    double inv = 1.0 / sqrt(sum);
    for (int i = 0; i < dim; i++)
        out[i] = (float)(v[i] * inv);
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
char *store_put_string(char **at, const char *s, size_t n)
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
    f->key = store_put_string(at, key, f->key_len);
    if (cJSON_IsString(v)) {
        f->type = FIELD_STR;
        f->str_len = (uint32_t)strlen(v->valuestring);
        f->str = store_put_string(at, v->valuestring, f->str_len);
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
        emb_fail_as(err, EMB_ERR_INVALID, "payload is not valid JSON");
        return NULL;
    }
    while (end != NULL && end < payload + len && is_json_space(*end))
        end++;
    if (!cJSON_IsObject(obj) || end != payload + len) {
        cJSON_Delete(obj);
        emb_fail_as(err, EMB_ERR_INVALID, "payload must be one JSON object");
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
    if (store_id_check(id, err) != 0)
        return 1;
    if (text != NULL && text_len > STORE_MAX_TEXT) {
        emb_fail_as(err, EMB_ERR_TOO_LARGE, "text of %zu bytes is over the limit of %d", text_len,
                    STORE_MAX_TEXT);
        return 1;
    }
    if (payload != NULL && payload_len > STORE_MAX_PAYLOAD) {
        emb_fail_as(err, EMB_ERR_TOO_LARGE, "payload of %zu bytes is over the limit of %d",
                    payload_len, STORE_MAX_PAYLOAD);
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
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    store_field *fields = out->blob;
    char *at = (char *)(fields + n_fields);
    out->id_kind = (uint32_t)id->kind;
    out->id_num = id->kind == STORE_ID_NUM ? id->num : 0;
    if (id->kind == STORE_ID_STR) {
        out->id_len = (uint32_t)id->len;
        out->id_str = store_put_string(&at, id->str, id->len);
    }
    out->hash = store_id_hash(id);
    out->version = version;
    if (text != NULL) {
        out->text_len = (uint32_t)text_len;
        out->text = store_put_string(&at, text, text_len);
    }
    if (payload != NULL) {
        out->payload_len = (uint32_t)payload_len;
        out->payload = store_put_string(&at, payload, payload_len);
        fields_fill(obj, fields, &at);
        out->fields = fields;
        out->n_fields = n_fields;
    }
    result = 0;
out:
    cJSON_Delete(obj);
    return result;
}
