/* store.h: the item store: vectors with ids, texts and payloads, exact
 * cosine search with BLAS, and crash-safe persistence (snapshot + WAL).
 *
 * Items
 *   An id is a uint64 or a string: two kinds, so 7 and "7" are different
 *   items. Each item has a vector of the store's dimension, kept
 *   L2-normalised (scores are cosine similarities, in [-1, 1]), an optional
 *   text (kept so a later model can re-embed it), an optional payload (a JSON
 *   object, for filters and for the caller), and the model version that made
 *   the vector. Upserting an existing id replaces all of it.
 *
 * Memory layout
 *   matrix   (cap_rows, dim) floats; rows 0..count-1 are live, one per item
 *   rows     (cap_rows) metadata: id, text, payload, the payload's top-level
 *            scalar fields (for filters), model version; one heap block each
 *   table    open addressing, linear probing: slot -> row + 1 (0 = empty)
 *   Deleting a row moves the last row into the hole, so the matrix stays
 *   dense and one sgemv/sgemm scores every item.
 *
 * Files under the data directory (little-endian)
 *   lock        flock'd while a store has the directory open
 *   wal         write-ahead log, see wal.h for its framing. Record payloads:
 *                 u8 op (1 upsert, 2 delete), u32 n, then n items (upsert) or
 *                 n ids (delete)
 *   snapshot    the whole state at one seq: a header (dim, seq, count),
 *               one checksummed record per item, a trailer repeating the
 *               header (layout in store_disk.h)
 *   id          u8 kind (1 number, 2 string), then u64 number, or u16 len and
 *               len bytes
 *   item        id, i32 model version, u8 flags (1 text, 2 payload),
 *               [u32 len, text bytes], [u32 len, payload JSON bytes],
 *               dim f32 (normalised)
 *   snapshot.tmp, wal.tmp   being written; removed at open
 *
 * Durability and recovery
 *   An upsert or delete is encoded as one WAL record, appended and applied
 *   under the write lock (so log order is apply order), then waits for the
 *   group-commit fsync; it returns only when its record is on disk. Readers
 *   may see a write a moment before it is durable (as in Redis's AOF); no
 *   write is acknowledged before it is.
 *   A snapshot writes snapshot.tmp under the read lock, fsyncs it, renames
 *   it to snapshot, fsyncs the directory, then starts a new WAL. Writers
 *   wait meanwhile, and since the lock prefers writers, so do searches that
 *   arrive after a waiting writer (100k x 384 takes about 0.3 s here).
 *   A crash between the rename and the new WAL leaves an old WAL beside a
 *   newer snapshot: its records carry seqs, the snapshot its seq, and
 *   recovery skips the records the snapshot already holds.
 *   Open loads the snapshot (every checksum must match, or open fails
 *   naming the damage: a renamed snapshot is never torn, so a bad one is
 *   damage, not a crash; `embedd repair` keeps the items that verify),
 *   then replays the WAL; a torn or corrupt WAL tail is cut off and
 *   reported in store_recovery, never fatal.
 *
 * Approximate index (HNSW)
 *   With store_options.hnsw_threshold > 0 (the server's --hnsw-threshold),
 *   the store builds an HNSW index (hnswlib, via hnsw.h; inner product;
 *   M hnsw_m, ef_construction hnsw_ef_construction) once it holds that many
 *   items, and keeps it until close, even if deletes bring it under the
 *   threshold. Every row has a label, assigned when its id is first stored,
 *   kept while the row moves on delete and while the id is upserted, never
 *   reused; label_row maps it back to the row. With an index, an upsert of
 *   an existing id updates its node in place, a new id adds a node and a
 *   delete marks the node deleted, all under the write lock.
 *   Builds run on their own thread, without the store's lock (see
 *   build_main in store.c): the first one when the store reaches the
 *   threshold (or at open, after recovery), a rebuild when deleted nodes
 *   outnumber live ones (and exceed 1024). The thread copies rows a chunk
 *   at a time under the read lock; writes meanwhile log the labels they
 *   touch; the thread replays the log (each label gets the store's current
 *   vector, or a delete mark) and swaps the new index in under the write
 *   lock, with at most 1024 log entries left to apply there. Until then
 *   searches are exact (first build) or use the old index (rebuild).
 *   store_close cancels a running build and joins its thread. The index is
 *   never persisted.
 *   Search: a query takes ef = max(hnsw_ef, 2 * (offset + limit))
 *   candidates from the index (hnsw_ef: the query's, else the store's),
 *   rescores them exactly against the matrix (scores are the same cosines
 *   exact search gives), and applies the threshold and the filter to them.
 *   When that leaves fewer than offset + limit hits although the index
 *   returned a full ef (so the filter rejected candidates, or no candidate
 *   fell under the threshold), the query falls back to exact search. So a
 *   selective filter gets exact results, a broad one approximate ones. A
 *   query with exact set skips the index. If an index update or build fails
 *   (memory), the index is dropped and search stays exact (store_stats.
 *   last_error says so).
 *
 * Design (threads)
 *   - Any thread may call any function except store_close. The store owns
 *     all item memory; results are copies the caller frees.
 *   - Errors are values (emb_err); nothing here prints or exits.
 *   - `rw`, a writer-preferring rwlock, guards the matrix, rows, table and
 *     seq. store_get and store_search hold it shared (several searches run
 *     at once, each calling BLAS on the caller's thread); upsert and delete
 *     hold it exclusively while they append to the WAL and apply, but not
 *     while they wait for the fsync (wal.h: group commit). Validation,
 *     copying and encoding happen before the lock is taken.
 *   - Snapshots are serialised by `snap_lock` and hold `rw` shared. The
 *     writer whose record pushes the WAL past snapshot_wal_bytes writes the
 *     snapshot itself, after its own record is durable, if no other
 *     snapshot runs.
 *   - Sick and well again: after a WAL write or fsync fails (disk full,
 *     EIO, EPERM, a read-only remount), the store is degraded: writes are
 *     refused with EMB_ERR_UNAVAILABLE ("store unavailable: <reason>"),
 *     reads and searches go on. store_heal, called by later writes and by
 *     the server once a second, at most every heal_interval, makes it
 *     writable again without a restart once the disk is: wal_heal (reopen,
 *     probe, cut the partial record), and after a failed fsync a snapshot
 *     of memory and a new WAL, since the old file's unsynced pages cannot
 *     be trusted. No acknowledged write is lost: a write is acknowledged
 *     only after its fsync. A refused write is absent after a restart,
 *     with one exception: when its fdatasync failed, its record was
 *     already applied in memory (readers may see it) and possibly on disk;
 *     the store cannot take it back, and the snapshot that heals the log
 *     keeps it. So a write answered with an error may or may not be kept
 *     (retrying it is safe: upserts and deletes are idempotent), a write
 *     answered with success always is. Snapshot failures (also ENOSPC)
 *     leave the WAL as it was: writes go on, the error is counted, and
 *     automatic snapshots wait STORE_SNAPSHOT_RETRY seconds before the
 *     next try. store_get_health reports all of it.
 *   - The build thread (above) holds rw shared only to copy rows and log
 *     entries, and exclusively for the swap; build_mu and build_cv guard
 *     its start and end (store_wait_index waits on them).
 *   - Shutdown: the caller stops all other calls, then store_close cancels
 *     and joins a running index build, closes the WAL (every acknowledged
 *     record is already on disk) and unlocks the directory. It does not
 *     snapshot; call store_snapshot first for a fast restart.
 */
#ifndef EMBEDD_STORE_H
#define EMBEDD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "base/error.h"

/* Hard caps; past them a call fails with a message. */
#define STORE_MAX_DIM 16384
#define STORE_MAX_ID_LEN 256               /* bytes of a string id */
#define STORE_MAX_JSON_ID 9007199254740991.0 /* 2^53-1: larger numbers lose digits in JSON */
#define STORE_MAX_TEXT (1 << 20)           /* bytes of an item's text */
#define STORE_MAX_PAYLOAD (64 << 10)       /* bytes of a payload's JSON */
#define STORE_MAX_BATCH 4096               /* items or ids per upsert/delete */
#define STORE_MAX_RECORD_BYTES (64u << 20) /* one upsert batch, encoded */
#define STORE_MAX_RESULTS 10000            /* offset + limit */
#define STORE_MAX_QUERIES 1024             /* queries per store_search_batch */
#define STORE_MAX_CONDITIONS 64            /* per must / must_not list */
#define STORE_DEFAULT_MAX_ITEMS 10000000
#define STORE_SNAPSHOT_VERSION 2            /* written; 1 is still read */
#define STORE_MAX_HNSW_EF 10000            /* search width of one query */
#define STORE_DEFAULT_HNSW_M 16
#define STORE_DEFAULT_HNSW_EF_CONSTRUCTION 200
#define STORE_DEFAULT_HNSW_EF 64
#define STORE_HEAL_INTERVAL 1.0            /* seconds between recovery attempts */
#define STORE_SNAPSHOT_RETRY 10.0          /* seconds after a failed automatic snapshot */

typedef enum store_id_kind {
    STORE_ID_NUM = 1,
    STORE_ID_STR = 2,
} store_id_kind;

typedef struct store_id {
    store_id_kind kind;
    uint64_t num;              /* STORE_ID_NUM */
    const char *str;           /* STORE_ID_STR: 1..STORE_MAX_ID_LEN bytes, no NUL inside */
    size_t len;
} store_id;

static inline store_id store_id_num(uint64_t num)
{
    store_id id = {.kind = STORE_ID_NUM, .num = num};
    return id;
}

/* s must be NUL-terminated and outlive the id. */
store_id store_id_str(const char *s);
/* A JSON id: a string, or an integer in [0, 2^53]. The id borrows the
 * cJSON string. */
int store_id_from_json(const cJSON *json, store_id *id, emb_err *err);

/* One item to upsert; everything is borrowed for the call. */
typedef struct store_item {
    store_id id;
    const float *vector;       /* (vector_dim); normalised by the store; finite, not all zero */
    int vector_dim;            /* must equal the store's dim */
    const char *text;          /* NULL: none */
    size_t text_len;
    const char *payload;       /* JSON object text; NULL: none */
    size_t payload_len;
    int model_version;
} store_item;

/* An item copied out by store_get; free with store_record_free. */
typedef struct store_record {
    store_id id;               /* a string id points into mem */
    float *vector;             /* (dim), normalised */
    char *text;                /* NUL-terminated; NULL: none */
    size_t text_len;
    char *payload;             /* NUL-terminated JSON object; NULL: none */
    size_t payload_len;
    int model_version;
    void *mem;                 /* owns all of the above */
} store_record;

/* A compiled filter: {"must": [cond...], "must_not": [cond...]}, where a
 * cond is {"key": k, "match": {"value": v}} and v a string, number or bool.
 * A cond holds when the payload's top-level key k equals v (or, for an
 * array, one of its elements does); numbers compare as doubles; a payload
 * without k, or an item without a payload, does not match. */
typedef struct store_filter store_filter;

/* NULL with err naming the problem (for a 422) when the JSON is not a
 * filter of that shape. A JSON null compiles to NULL without an error:
 * check err->msg[0], or pass only objects. */
store_filter *store_filter_compile(const cJSON *json, emb_err *err);
void store_filter_free(store_filter *f);

typedef struct store_query {
    const float *vector;       /* (vector_dim); normalised by the store */
    int vector_dim;            /* must equal the store's dim */
    int limit;                 /* >= 1 */
    int offset;                /* >= 0; offset + limit <= STORE_MAX_RESULTS */
    float score_threshold;     /* keep scores >= it; -INFINITY keeps all */
    const store_filter *filter; /* NULL: every item */
    int with_payload;
    int with_vector;
    int hnsw_ef;               /* search width; 0: the store's hnsw_ef */
    int exact;                 /* 1: exact search even when there is an index */
    uint32_t model_version;    /* version the query vector comes from; 0: a client vector.
                                  Only items of that version (and client vectors) are
                                  searched; see store_reembed.h */
} store_query;

/* limit 10, offset 0, no threshold, no filter, payload, no vector. */
void store_query_init(store_query *q, const float *vector, int vector_dim);

typedef struct store_hit {
    store_id id;               /* a string id points into the result */
    float score;               /* cosine similarity */
    int model_version;
    const char *payload;       /* with_payload and the item has one; NUL-terminated */
    const float *vector;       /* with_vector: (dim) */
} store_hit;

/* Best first: score descending, ties in row order. */
typedef struct store_result {
    int n;
    store_hit *hits;           /* (n) */
    void *mem;                 /* owns hits and what they point to */
} store_result;

void store_result_free(store_result *r);

typedef struct store_options {
    const char *dir;           /* data directory (created if missing); NULL: memory only */
    int dim;                   /* 1..STORE_MAX_DIM */
    long max_items;            /* 0: STORE_DEFAULT_MAX_ITEMS */
    uint64_t snapshot_wal_bytes; /* snapshot when the WAL grows past it; 0: never */
    long hnsw_threshold;       /* build the HNSW index at this many items; 0: never */
    int hnsw_m;                /* links per node; 0: STORE_DEFAULT_HNSW_M */
    int hnsw_ef_construction;  /* build width; 0: STORE_DEFAULT_HNSW_EF_CONSTRUCTION */
    int hnsw_ef;               /* default search width; 0: STORE_DEFAULT_HNSW_EF */
    double heal_interval;      /* seconds between recovery attempts; 0: STORE_HEAL_INTERVAL */
} store_options;

/* What open found and did; log message when truncated_bytes > 0. */
typedef struct store_recovery {
    uint64_t snapshot_items;
    uint64_t snapshot_seq;
    uint64_t wal_records;      /* replayed */
    uint64_t wal_skipped;      /* older than the snapshot */
    uint64_t truncated_bytes;  /* torn WAL tail cut off */
    char message[512];
} store_recovery;

typedef struct store_stats {
    long count;
    int dim;
    int memory_only;
    uint64_t seq;              /* last applied write */
    uint64_t wal_bytes;
    uint64_t wal_records;      /* appended since open */
    uint64_t wal_syncs;        /* fdatasync calls since open: records / syncs = group size */
    uint64_t snapshots;        /* written since open */
    int failed;                /* writes refused after an I/O error */
    char last_error[512];      /* last snapshot or I/O failure, "" when none */
    uint64_t hnsw_nodes;       /* in the HNSW index, deleted ones too; 0: no index */
    uint64_t hnsw_deleted;     /* marked deleted in it */
    int hnsw_building;         /* a build runs in the background */
    uint64_t hnsw_builds;      /* indexes built and swapped in since open */
} store_stats;

/* Where the store's I/O errors happened: the WAL's operations (wal.h),
 * then snapshot writing (store_io_label names them). */
typedef enum store_io {
    STORE_IO_WAL_WRITE,
    STORE_IO_WAL_FSYNC,
    STORE_IO_WAL_REOPEN,
    STORE_IO_WAL_ROTATE,
    STORE_IO_SNAPSHOT_WRITE,
    STORE_IO_COUNT
} store_io;

/* file ("wal", "snapshot") and op ("write", "fsync", "reopen", "rotate"). */
void store_io_label(store_io k, const char **file, const char **op);

/* Is the store well? (see Design, "Sick and well again"). */
typedef struct store_health {
    int degraded;              /* writes refused after an I/O error; reads go on */
    char reason[256];          /* the episode's last error; "" when well */
    double degraded_for;       /* seconds so far */
    uint64_t episodes;         /* times it became degraded since open */
    uint64_t recoveries;       /* times it became writable again by itself */
    double last_outage;        /* seconds the last recovered episode lasted */
    uint64_t writes_refused;   /* refused while degraded */
    uint64_t io_errors[STORE_IO_COUNT];
    uint64_t io_errors_total;
    char last_error[512];      /* the last snapshot or I/O failure; "" when none */
} store_health;

typedef struct store store;

/* A store whose writes go to a system of record first (cluster/cluster.h:
 * PostgreSQL, shared by replicas). With a remote set, store_upsert,
 * store_delete and the re-embedding calls (store_reembed.h) hand their
 * work to it instead of applying it: the remote commits it and returns
 * once its follower has applied the change here with the _local calls
 * below (so a writer reads its own write). Every hook is 0 or -1 with err
 * (EMB_ERR_UNAVAILABLE when the system of record cannot be reached). */
typedef struct store_remote {
    void *ctx;
    int (*upsert)(void *ctx, const store_item *items, int n, emb_err *err);
    int (*remove)(void *ctx, const store_id *ids, int n, int *n_deleted, emb_err *err);
    /* the store starts moving to version */
    int (*reembed_start)(void *ctx, uint32_t version, emb_err *err);
    /* vectors of version for these items, provided their texts are still
     * these; moving: they are the target's (kept beside the searched ones),
     * else they replace the searched ones */
    int (*reembed_put)(void *ctx, const store_id *ids, const char *const *texts,
                       const size_t *lens, int n, const float *vecs, uint32_t version,
                       int moving, emb_err *err);
    /* every item has a vector of version: switch searches to it; 1 when
     * switched, 0 when items remain */
    int (*reembed_finish)(void *ctx, uint32_t version, emb_err *err);
} store_remote;

/* Opens (and with a dir, recovers) a store. rec may be NULL. */
store *store_open(const store_options *opt, store_recovery *rec, emb_err *err);
void store_close(store *s);

/* 0 when store_upsert would accept the item; otherwise the message is about
 * the input (for a 422), so a later store_upsert failure is the server's
 * (I/O, memory, max_items). */
int store_item_check(const store *s, const store_item *it, emb_err *err);
/* Upserts n items, all or none; returns when durable. */
int store_upsert(store *s, const store_item *items, int n, emb_err *err);
/* Deletes n ids; *n_deleted (may be NULL) gets how many existed. Durable on
 * return. */
int store_delete(store *s, const store_id *ids, int n, int *n_deleted, emb_err *err);
/* 1 and a copy in *out when found, 0 when not, -1 on error. */
int store_get(store *s, const store_id *id, store_record *out, emb_err *err);
void store_record_free(store_record *r);
long store_count(store *s);
int store_dim(const store *s);

/* 0 when q is valid for this store (the vector is checked too). */
int store_query_check(const store *s, const store_query *q, emb_err *err);
/* Returns 0, -1 on error, or STORE_VERSION_MOVED when a query's
 * model_version is no longer the one the store searches (embed it again
 * with store_vectors_version() and retry). */
#define STORE_VERSION_MOVED (-2)
int store_search(store *s, const store_query *q, store_result *out, emb_err *err);
/* nq queries scored with one sgemm per block of rows; outs (nq). Fails as a
 * whole (naming the query) when one query is invalid. */
int store_search_batch(store *s, const store_query *qs, int nq, store_result *outs,
                       emb_err *err);

/* Writes a snapshot and starts a new WAL. Fails in memory-only mode. */
int store_snapshot(store *s, emb_err *err);
/* Waits until no index build runs; returns 1 when the store has an index. */
int store_wait_index(store *s);
void store_get_stats(store *s, store_stats *out);
/* Memory-only stores are always well. Cheap: no I/O, no store lock. */
void store_get_health(store *s, store_health *out);
/* While degraded: tries to recover (at most every heal_interval; 0 at
 * once when well or when it recovered; -1 with err otherwise, kind
 * EMB_ERR_UNAVAILABLE). Writes call it themselves; the server also calls it
 * once a second so that a store nobody writes to is reported well again. */
int store_heal(store *s, emb_err *err);

/* Sends writes to r (copied; NULL: none) from now on. Call before serving. */
void store_set_remote(store *s, const store_remote *r);
/* 1 when writes go to a remote: the store's version moves are then the
 * system of record's to start (its follower calls store_reembed_start). */
int store_has_remote(const store *s);
/* The writes as a store without a remote applies them: what the remote's
 * follower calls. Memory-only stores only need these. */
int store_upsert_local(store *s, const store_item *items, int n, emb_err *err);
int store_delete_local(store *s, const store_id *ids, int n, int *n_deleted, emb_err *err);

#endif
