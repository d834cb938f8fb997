/* store_internal.h: the store's private structures, shared by store.c (rows,
 * table, writes), store_disk.c (record and snapshot formats) and
 * store_search.c (filters and search). See store.h for the design. */
#ifndef EMBEDD_STORE_INTERNAL_H
#define EMBEDD_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "store.h"
#include "common/strbuf.h"
#include "wal.h"

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

struct store_filter {
    int n_must;
    int n_must_not;
    store_field *conds;        /* must, then must_not */
};

struct store {
    int dim;
    long max_items;
    uint64_t snapshot_wal_bytes;
    char *dir;                 /* NULL: memory only */
    int dir_fd;
    int lock_fd;
    wal *wal;

    pthread_rwlock_t rw;       /* guards everything below */
    float *matrix;             /* (cap, dim) */
    store_row *rows;           /* (cap) */
    long count;
    long cap;
    uint32_t *slots;           /* (mask + 1): row + 1, 0 = empty */
    uint64_t mask;
    uint64_t seq;              /* last applied write */
    /* Labels: every row has one, from next_label, kept while the row moves
     * and while its id is upserted; never reused. label_row maps it back. */
    uint32_t *label_row;       /* (label_cap): label -> row + 1, 0 = deleted */
    uint64_t label_cap;
    uint64_t next_label;
    /* The approximate index (store.h, "Approximate index"); NULL: none. */
    struct hnsw_index *hnsw;
    long hnsw_threshold;       /* 0 while recovering, and when never */
    int hnsw_m;
    int hnsw_ef_construction;
    int hnsw_ef;               /* default search width */
    int hnsw_off;              /* a build or update failed: exact search from now on */
    int building;              /* a build runs: writes append their labels to blog */
    uint64_t *blog;            /* (blog_cap): labels written since the build began */
    size_t blog_n;
    size_t blog_cap;
    int blog_overflow;         /* blog could not grow: the build is abandoned */
    uint64_t n_builds;         /* indexes swapped in since open */

    /* The build thread; build_mu guards build_started and build_done. */
    pthread_t build_thread;
    pthread_mutex_t build_mu;
    pthread_cond_t build_cv;
    int build_started;         /* a thread was created and not yet joined */
    int build_done;            /* it no longer touches the store */
    atomic_int build_cancel;   /* store_close asks it to stop */

    /* Model versions (store_reembed.c); guarded by rw. */
    uint32_t vec_version;      /* version whose vectors are searched; 0: no text item yet */
    uint32_t target_version;   /* version being moved to (== vec_version when idle) */
    float *shadow;             /* (shadow_cap, dim) target vectors while moving */
    unsigned char *shadow_ok;  /* (shadow_cap) 1: shadow row filled */
    long shadow_cap;
    long reembed_cursor;       /* next row store_reembed_take looks at */
    int reembed_dirty;         /* rows may be pending */
    uint64_t gen_counter;

    pthread_mutex_t snap_lock; /* one snapshot at a time */
    pthread_mutex_t stat_lock; /* guards the fields below */
    uint64_t n_snapshots;
    char last_error[512];
};

/* ---- store.c ---- */

uint64_t store_id_hash(const store_id *id);
/* Row of id, or -1. Caller holds rw. */
long store_find(const store *s, const store_id *id);
store_id store_row_id(const store_row *r);
/* Builds a row (copies everything) from an item's parts. Returns 0, 1 when
 * the input is invalid (err says why), -1 when out of memory. */
int store_row_prepare(const store_id *id, int32_t version, const char *text, size_t text_len,
                      const char *payload, size_t payload_len, store_row *out, emb_err *err);
void store_row_free(store_row *r);
/* How many of the rows' ids are not in the store (an upper bound on the
 * rows they add). Caller holds rw. */
long store_count_new(const store *s, const store_row *rows, int n);
/* Makes room for up to `extra` new rows. Caller holds rw exclusively. */
int store_reserve(store *s, long extra, emb_err *err);
/* Applies n prepared rows with their vectors (n, dim); the rows' blobs move
 * into the store and replaced blobs go to old_blobs (n). Cannot fail after
 * store_reserve(s, n). Caller holds rw exclusively. */
void store_apply_upsert(store *s, store_row *rows, const float *vecs, int n, void **old_blobs);
/* Returns how many of the ids existed. Caller holds rw exclusively. */
int store_apply_delete(store *s, const store_id *ids, int n);
void store_set_error(store *s, const char *msg);
/* out = v / |v|; fails on a non-finite value or a zero vector. */
int store_normalise(const float *v, float *out, int dim, emb_err *err);

/* Sets row r's vector (normalised) and version, and updates the index.
 * Caller holds rw exclusively. */
void store_row_set_vector(store *s, long r, const float *v, int32_t version);
/* Drops the approximate index after every vector changed and starts a
 * rebuild in the background (search is exact meanwhile). Caller holds rw
 * exclusively. */
void store_index_reset(store *s);

/* ---- store_reembed.c ---- */

/* Grows the shadow arrays with the store. Caller holds rw exclusively. */
int store_shadow_reserve(store *s, emb_err *err);

/* ---- store_disk.c ---- */

int store_encode_upsert(strbuf *sb, const store_row *rows, const float *vecs, int n, int dim);
void store_encode_delete(strbuf *sb, const store_id *ids, int n);
/* wal_apply_fn: user is the store. */
int store_replay_record(void *user, uint64_t seq, const unsigned char *payload, size_t len,
                        emb_err *err);
/* Loads DIR/snapshot into an empty store; *seq = 0 when there is none. */
int store_snapshot_load(store *s, store_recovery *rec, emb_err *err);
/* Writes the state to DIR/snapshot. Caller holds snap_lock and rw shared. */
int store_snapshot_write(store *s, emb_err *err);

#endif
