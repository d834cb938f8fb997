/* store_internal.h: the store's private state, shared by store.c (the
 * table, writes, recovery), store_index.c (the approximate index),
 * store_search.c (filters and search) and store_reembed.c (the move to a
 * new version). rows.h and store_disk.h sit below it and do not include
 * it: the layers are rows -> disk formats -> table -> index, search,
 * re-embedding. See store.h for the design. */
#ifndef EMBEDD_STORE_INTERNAL_H
#define EMBEDD_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "rows.h"
#include "store.h"
#include "wal.h"

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
    store_remote remote;       /* hooks all NULL: none (store_set_remote) */

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

    pthread_mutex_t snap_lock; /* one snapshot (or recovery) at a time */
    pthread_mutex_t stat_lock; /* guards the fields below */
    uint64_t n_snapshots;
    char last_error[512];
    double heal_interval;      /* seconds between store_heal attempts */
    double next_heal;          /* mono_seconds() of the next allowed attempt */
    double next_auto_snapshot; /* after a failed automatic snapshot */
    uint64_t snapshot_errors;  /* snapshot writes that failed with an I/O error */
};

/* ---- store.c: the table ---- */

/* Row of id, or -1. Caller holds rw. */
long store_find(const store *s, const store_id *id);
/* How many of the rows' ids are not in the store (an upper bound on the
 * rows they add). Caller holds rw. */
long store_count_new(const store *s, const store_row *rows, int n);
/* Makes room for up to `extra` new rows. Caller holds rw exclusively. */
int store_reserve(store *s, long extra, emb_err *err);
/* Grows the shadow arrays (store_reembed.c) with the store while a move
 * to a new version is under way. Caller holds rw exclusively. */
int store_shadow_reserve(store *s, emb_err *err);
/* Applies n prepared rows with their vectors (n, dim); the rows' blobs move
 * into the store and replaced blobs go to old_blobs (n). Cannot fail after
 * store_reserve(s, n). Caller holds rw exclusively. */
void store_apply_upsert(store *s, store_row *rows, const float *vecs, int n, void **old_blobs);
/* Returns how many of the ids existed. Caller holds rw exclusively. */
int store_apply_delete(store *s, const store_id *ids, int n);
void store_set_error(store *s, const char *msg);
/* Sets row r's vector (normalised) and version, and updates the index.
 * Caller holds rw exclusively. */
void store_row_set_vector(store *s, long r, const float *v, int32_t version);

/* ---- store_search.c ---- */

/* 1 when row r passes filter f (collections.c counts and deletes by filter). */
int store_filter_match(const store_filter *f, const store_row *r);

/* ---- store_index.c: the approximate index ---- */

/* Row with this label was written (a build under way replays it). */
void store_index_log(store *s, uint64_t label);
/* An index update failed: search stays exact from now on. */
void store_index_failed(store *s, const emb_err *e);
/* Starts a build at the threshold, or a rebuild when deleted nodes
 * outnumber live ones. */
void store_index_maintain(store *s);
/* Drops the index after every vector changed and starts a rebuild in the
 * background (search is exact meanwhile). */
void store_index_reset(store *s);
/* Cancels and joins a build (store_close). */
void store_index_stop(store *s);

#endif
