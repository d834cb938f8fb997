/* rows.h: one item as the store keeps it, and the ids that name items.
 *
 * A store_row owns one block (blob) holding everything the row points to:
 * its fields, id string, text and payload, so that moving a row is a struct
 * copy and freeing it one free(). Rows know nothing of the table, the
 * index or the files: store.c keeps them, store_disk.c encodes them,
 * store_search.c filters on their fields. */
#ifndef EMBEDD_STORE_ROWS_H
#define EMBEDD_STORE_ROWS_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "store.h"

typedef enum field_type {
    FIELD_STR = 1,
    FIELD_NUM = 2,
    FIELD_BOOL = 3,
} field_type;

/* One top-level scalar of a payload (an array gives one per scalar element). */
typedef struct store_field {
    const char *key;
    uint32_t key_len;
    uint32_t type;             /* field_type */
    double num;                /* FIELD_NUM; FIELD_BOOL as 0 or 1 */
    const char *str;           /* FIELD_STR */
    uint32_t str_len;
} store_field;

/* One item's metadata. Everything it points to lives in one block, blob:
 * [fields][id string][text][payload][field keys and strings], each string
 * NUL-terminated. */
typedef struct store_row {
    uint64_t hash;
    uint64_t id_num;
    const char *id_str;
    uint32_t id_len;
    uint32_t id_kind;          /* store_id_kind */
    int32_t version;
    const char *text;          /* NULL: none */
    uint32_t text_len;
    const char *payload;       /* NULL: none */
    uint32_t payload_len;
    const store_field *fields;
    uint32_t n_fields;
    uint64_t label;            /* key in the HNSW index (valid while there is one) */
    uint64_t gen;              /* changes with every write of the row (re-embedding) */
    void *blob;
} store_row;

/* 0 when id is well formed (a kind; a string of 1 to STORE_MAX_ID_LEN
 * bytes without NUL). */
int store_id_check(const store_id *id, emb_err *err);
uint64_t store_id_hash(const store_id *id);
store_id store_row_id(const store_row *r);
/* 1 when row r has this id (hash = store_id_hash(id)). */
int store_row_has_id(const store_row *r, uint64_t hash, const store_id *id);
/* Builds a row (copies everything) from an item's parts. Returns 0, 1 when
 * the input is invalid (err says why), -1 when out of memory. */
int store_row_prepare(const store_id *id, int32_t version, const char *text, size_t text_len,
                      const char *payload, size_t payload_len, store_row *out, emb_err *err);
void store_row_free(store_row *r);
/* Copies n bytes of s to *at with a NUL after them, advances *at, and
 * returns the copy. */
char *store_put_string(char **at, const char *s, size_t n);
/* out = v / |v|; fails on a non-finite value or a zero vector. */
int store_normalise(const float *v, float *out, int dim, emb_err *err);

#endif
