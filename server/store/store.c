/* store.c: the table of rows (id table, labels, vectors), writes, recovery,
 * open and close. See store.h for the design; rows.c has the rows,
 * store_disk.c the file formats, store_index.c the approximate index,
 * store_search.c the search, store_reembed.c the move to a new version. */
#include "store_internal.h"
#include "hnsw.h"
#include "store_disk.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dirlock.h"
#include "common/clock.h"

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
        if (store_row_has_id(&s->rows[v - 1], hash, id)) {
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
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for an id table of %llu slots",
                           (unsigned long long)size);
    free(s->slots);
    s->slots = slots;
    s->mask = size - 1;
    for (long r = 0; r < s->count; r++)
        table_put(s, s->rows[r].hash, r);
    return 0;
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
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %llu labels",
                               (unsigned long long)cap);
        memset(m + s->label_cap, 0, sizeof(uint32_t) * (cap - s->label_cap));
        s->label_row = m;
        s->label_cap = cap;
    }
    if (s->hnsw == NULL)
        return 0;
    return hnsw_reserve(s->hnsw, hnsw_count(s->hnsw) + (size_t)extra, err);
}

/* Grows the shadow arrays to the store's capacity. Caller holds rw
 * exclusively. */
int store_shadow_reserve(store *s, emb_err *err)
{
    if (s->target_version == s->vec_version || s->shadow_cap >= s->cap)
        return 0;
    float *sh = realloc(s->shadow, sizeof(float) * (size_t)s->cap * (size_t)s->dim);
    if (sh == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for re-embedded vectors");
    s->shadow = sh;
    unsigned char *ok = realloc(s->shadow_ok, (size_t)s->cap);
    if (ok == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for re-embedded vectors");
    memset(ok + s->shadow_cap, 0, (size_t)(s->cap - s->shadow_cap));
    s->shadow_ok = ok;
    s->shadow_cap = s->cap;
    return 0;
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
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %ld vectors", cap);
        s->matrix = m;
        store_row *rows = realloc(s->rows, sizeof(store_row) * (size_t)cap);
        if (rows == NULL)
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %ld rows", cap);
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
        store_index_log(s, s->rows[row].label);
        emb_err e;
        /* An existing label is updated in place (hnswlib 0.6.2's addPoint). */
        if (s->hnsw != NULL &&
            hnsw_add(s->hnsw, s->rows[row].label, s->matrix + (size_t)row * s->dim, &e) != 0)
            store_index_failed(s, &e);
    }
    store_index_maintain(s);
}

/* Removes one row: its slot is emptied and the last row moves into the hole. */
static void row_remove(store *s, long row, uint64_t slot)
{
    table_remove_slot(s, slot);
    free(s->rows[row].blob);
    s->label_row[s->rows[row].label] = 0;
    store_index_log(s, s->rows[row].label);
    if (s->hnsw != NULL) {
        emb_err e;
        if (hnsw_mark_delete(s->hnsw, s->rows[row].label, &e) != 0)
            store_index_failed(s, &e);
    }
    long last = s->count - 1;
    if (row != last) {
        uint64_t last_slot = table_slot_of(s, last);
        s->rows[row] = s->rows[last];
        s->label_row[s->rows[row].label] = (uint32_t)row + 1;
        store_index_log(s, s->rows[row].label);   /* a build may have copied past row */
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
    store_index_maintain(s);
    return deleted;
}

void store_row_set_vector(store *s, long r, const float *v, int32_t version)
{
    float *dst = s->matrix + (size_t)r * s->dim;
    memcpy(dst, v, sizeof(float) * (size_t)s->dim);
    s->rows[r].version = version;
    s->rows[r].gen = ++s->gen_counter;
    store_index_log(s, s->rows[r].label);
    emb_err e;
    if (s->hnsw != NULL && hnsw_add(s->hnsw, s->rows[r].label, dst, &e) != 0)
        store_index_failed(s, &e);
}

void store_set_remote(store *s, const store_remote *r)
{
    if (r != NULL)
        s->remote = *r;
    else
        memset(&s->remote, 0, sizeof s->remote);
}

int store_has_remote(const store *s)
{
    return s->remote.upsert != NULL;
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
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
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

/* ---- recovery: snapshot and WAL replay ------------------------------------ */

static store_files files_of(const store *s)
{
    store_files f = {.dir_fd = s->dir_fd, .dir = s->dir, .max_items = s->max_items};
    return f;
}

static int sink_reserve(void *user, long count, emb_err *err)
{
    return store_reserve(user, count, err);
}

static void sink_put(void *user, store_row *row, const float *vec)
{
    void *old = NULL;
    store_apply_upsert(user, row, vec, 1, &old);
    free(old);
}

static int snapshot_load(store *s, store_recovery *rec, emb_err *err)
{
    store_files f = files_of(s);
    store_snapshot_sink sink = {.user = s, .reserve = sink_reserve, .put = sink_put};
    uint64_t count = 0;
    if (store_snapshot_load(&f, s->dim, &sink, &rec->snapshot_seq, &count, err) != 0)
        return -1;
    rec->snapshot_items = count;
    s->seq = rec->snapshot_seq;
    return 0;
}

static int replay_upsert(store *s, store_op *op, emb_err *err)
{
    void **old = calloc(op->n > 0 ? op->n : 1, sizeof *old);
    if (old == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory replaying %u items", op->n);
    int rc = store_reserve(s, store_count_new(s, op->rows, (int)op->n), err);
    if (rc == 0)
        store_apply_upsert(s, op->rows, op->vecs, (int)op->n, old);
    for (uint32_t i = 0; i < op->n; i++)
        free(old[i]);
    free(old);
    return rc;
}

/* wal_apply_fn: applies one logged write. 0, 1 when the record is
 * malformed, -1 when it cannot be applied (out of memory, full). */
static int replay_record(void *user, uint64_t seq, const unsigned char *payload, size_t len,
                         emb_err *err)
{
    store *s = user;
    store_op op;
    int rc = store_op_decode(payload, len, s->dim, seq, &op, err);
    if (rc == 0 && op.kind == STORE_OP_UPSERT)
        rc = replay_upsert(s, &op, err);
    else if (rc == 0)
        store_apply_delete(s, op.ids, (int)op.n);
    store_op_free(&op);
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
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
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
    s->heal_interval = opt->heal_interval > 0 ? opt->heal_interval : STORE_HEAL_INTERVAL;
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
    if (snapshot_load(s, rec, err) != 0)
        goto fail;
    wal_recovery wr;
    s->wal = wal_open(s->dir, s->dir_fd, (uint32_t)s->dim, rec->snapshot_seq,
                      replay_record, s, &wr, err);
    if (s->wal == NULL)
        goto fail;
    s->seq = wr.last_seq;
    rec->wal_records = wr.records;
    rec->wal_skipped = wr.skipped;
    rec->truncated_bytes = wr.truncated_bytes;
    snprintf(rec->message, sizeof rec->message, "%s", wr.message);
    settle_versions(s);
    s->hnsw_threshold = opt->hnsw_threshold;
    store_index_maintain(s);   /* in the background, after recovery */
    return s;
fail:
    store_free(s);
    return NULL;
}

void store_close(store *s)
{
    if (s == NULL)
        return;
    store_index_stop(s);
    store_free(s);
}

/* ---- writes ----------------------------------------------------------------- */

static int snapshot_locked(store *s, emb_err *err)
{
    pthread_rwlock_rdlock(&s->rw);
    store_files f = files_of(s);
    store_table_view t = {.dim = s->dim, .seq = s->seq, .rows = s->rows, .matrix = s->matrix,
                          .count = s->count};
    int rc = store_snapshot_write(&f, &t, err);
    int write_failed = rc != 0 && err->kind == EMB_ERR_IO;
    if (rc == 0)
        rc = wal_rotate(s->wal, s->seq, err);   /* counts its own errors */
    pthread_rwlock_unlock(&s->rw);
    pthread_mutex_lock(&s->stat_lock);
    if (rc == 0)
        s->n_snapshots++;
    if (write_failed)
        s->snapshot_errors++;
    pthread_mutex_unlock(&s->stat_lock);
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
 * the write itself succeeded; the next automatic try waits
 * STORE_SNAPSHOT_RETRY (a full disk would otherwise make every write try
 * to write the whole store). */
static void snapshot_if_due(store *s)
{
    if (s->wal == NULL || s->snapshot_wal_bytes == 0)
        return;
    wal_stats ws;
    wal_get_stats(s->wal, &ws);
    if (ws.bytes <= s->snapshot_wal_bytes)
        return;
    double now = mono_seconds();
    pthread_mutex_lock(&s->stat_lock);
    int wait = now < s->next_auto_snapshot;
    pthread_mutex_unlock(&s->stat_lock);
    if (wait || pthread_mutex_trylock(&s->snap_lock) != 0)
        return;
    wal_get_stats(s->wal, &ws);
    if (ws.bytes > s->snapshot_wal_bytes) {
        emb_err e = {0};
        if (snapshot_locked(s, &e) != 0) {
            store_set_error(s, e.msg);
            pthread_mutex_lock(&s->stat_lock);
            s->next_auto_snapshot = mono_seconds() + STORE_SNAPSHOT_RETRY;
            pthread_mutex_unlock(&s->stat_lock);
        }
    }
    pthread_mutex_unlock(&s->snap_lock);
}

/* ---- sick and well again (store.h, Design) ----------------------------------- */

/* A log failure as writers see it: retry later, the store heals itself.
 * The failure itself (not a refusal) is kept for the stats and the log. */
static int refuse_write(store *s, emb_err *err)
{
    if (err->kind != EMB_ERR_IO && err->kind != EMB_ERR_UNAVAILABLE)
        return -1;
    if (err->kind == EMB_ERR_IO) {
        store_set_error(s, err->msg);
        /* The first recovery attempt waits too: an immediate one would
         * most likely meet the same disk. */
        pthread_mutex_lock(&s->stat_lock);
        s->next_heal = mono_seconds() + s->heal_interval;
        pthread_mutex_unlock(&s->stat_lock);
    }
    char why[sizeof err->msg];
    snprintf(why, sizeof why, "%s", err->msg);
    return emb_fail_as(err, EMB_ERR_UNAVAILABLE,
                       "store unavailable: %.400s; writes are refused until the disk takes "
                       "them again (reads go on)", why);
}

int store_heal(store *s, emb_err *err)
{
    if (s->wal == NULL || !wal_failed(s->wal))
        return 0;
    double now = mono_seconds();
    pthread_mutex_lock(&s->stat_lock);
    int due = now >= s->next_heal;
    if (due)
        s->next_heal = now + s->heal_interval;
    pthread_mutex_unlock(&s->stat_lock);
    /* Not due, or a snapshot (or another recovery) runs: the state stays. */
    if (!due || pthread_mutex_trylock(&s->snap_lock) != 0) {
        wal_stats ws;
        wal_get_stats(s->wal, &ws);
        if (!ws.failed)
            return 0;
        return emb_fail_as(err, EMB_ERR_UNAVAILABLE, "%s", ws.failure);
    }
    emb_err e = {0};
    int rc = wal_heal(s->wal, &e);
    /* The disk takes writes, but the log's unsynced pages cannot be
     * trusted: memory holds every write, so a snapshot of it and a new
     * log replace the files. */
    if (rc == 1)
        rc = snapshot_locked(s, &e);
    pthread_mutex_unlock(&s->snap_lock);
    if (rc != 0) {
        store_set_error(s, e.msg);
        return emb_fail_as(err, EMB_ERR_UNAVAILABLE, "%s", e.msg);
    }
    return 0;
}

/* store_io's WAL rows are wal_op's, in the same order. */
_Static_assert((int)STORE_IO_WAL_WRITE == (int)WAL_OP_WRITE &&
                   (int)STORE_IO_WAL_ROTATE == (int)WAL_OP_ROTATE &&
                   (int)STORE_IO_SNAPSHOT_WRITE == (int)WAL_OP_COUNT,
               "store_io and wal_op disagree");

void store_io_label(store_io k, const char **file, const char **op)
{
    *file = k == STORE_IO_SNAPSHOT_WRITE ? "snapshot" : "wal";
    *op = k == STORE_IO_SNAPSHOT_WRITE ? "write" : wal_op_name((wal_op)k);
}

void store_get_health(store *s, store_health *out)
{
    memset(out, 0, sizeof *out);
    if (s->wal == NULL)
        return;
    wal_stats ws;
    wal_get_stats(s->wal, &ws);
    out->degraded = ws.failed;
    snprintf(out->reason, sizeof out->reason, "%s", ws.failure);
    out->degraded_for = ws.failed_for;
    out->episodes = ws.episodes;
    out->recoveries = ws.heals;
    out->last_outage = ws.last_outage;
    out->writes_refused = ws.refused;
    for (int k = 0; k < WAL_OP_COUNT; k++)
        out->io_errors[k] = ws.errors[k];
    pthread_mutex_lock(&s->stat_lock);
    out->io_errors[STORE_IO_SNAPSHOT_WRITE] = s->snapshot_errors;
    snprintf(out->last_error, sizeof out->last_error, "%s", s->last_error);
    pthread_mutex_unlock(&s->stat_lock);
    for (int k = 0; k < STORE_IO_COUNT; k++)
        out->io_errors_total += out->io_errors[k];
}

int store_item_check(const store *s, const store_item *it, emb_err *err)
{
    if (it->vector == NULL || it->vector_dim != s->dim)
        return emb_fail_as(err, EMB_ERR_INVALID, "vector has %d dimensions, the store has %d",
                           it->vector == NULL ? 0 : it->vector_dim, s->dim);
    double sum = 0;
    for (int i = 0; i < s->dim; i++) {
        if (!isfinite(it->vector[i]))
            return emb_fail_as(err, EMB_ERR_INVALID, "vector element %d is not a finite number", i);
        sum += (double)it->vector[i] * it->vector[i];
    }
    if (sum == 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "vector is all zeros");
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
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "item %d: vector has %d dimensions, the store has %d", i,
                               it->vector == NULL ? 0 : it->vector_dim, s->dim);
        emb_err e;
        if (store_normalise(it->vector, vecs + (size_t)i * s->dim, s->dim, &e) != 0)
            return emb_fail_as(err, e.kind, "item %d: %s", i, e.msg);
        if (store_row_prepare(&it->id, it->model_version, it->text, it->text_len, it->payload,
                              it->payload_len, &rows[i], &e) != 0)
            return emb_fail_as(err, e.kind, "item %d: %s", i, e.msg);
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
    if (s->remote.upsert == NULL)
        return store_upsert_local(s, items, n, err);
    if (n < 1 || n > STORE_MAX_BATCH)
        return emb_fail_as(err, EMB_ERR_INVALID, "an upsert takes 1 to %d items, not %d",
                           STORE_MAX_BATCH, n);
    for (int i = 0; i < n; i++) {
        emb_err e;
        if (store_item_check(s, &items[i], &e) != 0)
            return emb_fail_as(err, e.kind, "item %d: %s", i, e.msg);
    }
    /* what the local copy cannot hold never goes to the system of record:
     * its follower could not apply it */
    pthread_rwlock_rdlock(&s->rw);
    long n_new = 0;
    for (int i = 0; i < n; i++)
        n_new += store_find(s, &items[i].id) < 0;
    long count = s->count;
    pthread_rwlock_unlock(&s->rw);
    if (count + n_new > s->max_items)
        return emb_fail(err, "the store is full: %ld items, max_items is %ld", count,
                        s->max_items);
    return s->remote.upsert(s->remote.ctx, items, n, err);
}

int store_upsert_local(store *s, const store_item *items, int n, emb_err *err)
{
    if (n < 1 || n > STORE_MAX_BATCH)
        return emb_fail_as(err, EMB_ERR_INVALID, "an upsert takes 1 to %d items, not %d",
                           STORE_MAX_BATCH, n);
    int result = -1;
    strbuf rec;
    sb_init(&rec, STORE_MAX_RECORD_BYTES);
    store_row *rows = calloc((size_t)n, sizeof *rows);
    void **old = calloc((size_t)n, sizeof *old);
    float *vecs = malloc(sizeof(float) * (size_t)n * (size_t)s->dim);
    if (rows == NULL || old == NULL || vecs == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for a batch of %d items", n);
        goto out;
    }
    if (upsert_prepare(s, items, n, rows, vecs, err) != 0)
        goto out;
    if (s->wal != NULL && store_encode_upsert(&rec, rows, vecs, n, s->dim) != 0) {
        emb_fail_as(err, EMB_ERR_TOO_LARGE, "the batch is over %u bytes encoded; send fewer items",
                    STORE_MAX_RECORD_BYTES);
        goto out;
    }
    uint64_t seq = 0;
    store_heal(s, NULL);   /* while degraded: try to recover first, when due */
    pthread_rwlock_wrlock(&s->rw);
    if (store_reserve(s, store_count_new(s, rows, n), err) != 0) {
        pthread_rwlock_unlock(&s->rw);
        goto out;
    }
    if (s->wal != NULL && wal_append(s->wal, rec.buf, rec.len, &seq, err) != 0) {
        pthread_rwlock_unlock(&s->rw);
        refuse_write(s, err);
        goto out;
    }
    if (s->wal == NULL)
        seq = s->seq + 1;
    store_apply_upsert(s, rows, vecs, n, old);
    s->seq = seq;
    pthread_rwlock_unlock(&s->rw);
    if (s->wal != NULL && wal_sync(s->wal, seq, err) != 0) {
        refuse_write(s, err);
        goto out;
    }
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

/* A delete's arguments are valid; *n_deleted (may be NULL) is zeroed. */
static int delete_check(const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    if (n_deleted != NULL)
        *n_deleted = 0;
    if (n < 0 || n > STORE_MAX_BATCH)
        return emb_fail_as(err, EMB_ERR_INVALID, "a delete takes 0 to %d ids, not %d",
                           STORE_MAX_BATCH, n);
    for (int i = 0; i < n; i++) {
        emb_err e;
        if (store_id_check(&ids[i], &e) != 0)
            return emb_fail_as(err, e.kind, "id %d: %s", i, e.msg);
    }
    return 0;
}

int store_delete(store *s, const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    if (s->remote.remove == NULL)
        return store_delete_local(s, ids, n, n_deleted, err);
    if (delete_check(ids, n, n_deleted, err) != 0)
        return -1;
    return n == 0 ? 0 : s->remote.remove(s->remote.ctx, ids, n, n_deleted, err);
}

int store_delete_local(store *s, const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    if (delete_check(ids, n, n_deleted, err) != 0)
        return -1;
    int result = -1;
    strbuf rec;
    sb_init(&rec, STORE_MAX_RECORD_BYTES);
    if (s->wal != NULL) {
        store_encode_delete(&rec, ids, n);
        if (rec.failed) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for a delete of %d ids", n);
            goto out;
        }
    }
    store_heal(s, NULL);   /* while degraded: try to recover first, when due */
    pthread_rwlock_wrlock(&s->rw);
    if (!any_exists(s, ids, n)) {
        /* Nothing to log; there may still be an earlier, unsynced delete of
         * these ids, so wait for the log to catch up with what we saw. */
        uint64_t seen = s->seq;
        pthread_rwlock_unlock(&s->rw);
        if (s->wal != NULL && wal_sync(s->wal, seen, err) != 0) {
            refuse_write(s, err);
            goto out;
        }
        result = 0;
        goto out;
    }
    uint64_t seq = 0;
    if (s->wal != NULL && wal_append(s->wal, rec.buf, rec.len, &seq, err) != 0) {
        pthread_rwlock_unlock(&s->rw);
        refuse_write(s, err);
        goto out;
    }
    if (s->wal == NULL)
        seq = s->seq + 1;
    int deleted = store_apply_delete(s, ids, n);
    s->seq = seq;
    pthread_rwlock_unlock(&s->rw);
    if (s->wal != NULL && wal_sync(s->wal, seq, err) != 0) {
        refuse_write(s, err);
        goto out;
    }
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
    if (store_id_check(id, err) != 0)
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
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    out->mem = mem;
    out->vector = mem;         /* the vector first: malloc's alignment */
    memcpy(out->vector, s->matrix + (size_t)row * s->dim, vec_bytes);
    char *at = (char *)mem + vec_bytes;
    out->id = store_row_id(r);
    if (r->id_kind == STORE_ID_STR)
        out->id.str = store_put_string(&at, r->id_str, r->id_len);
    if (r->text != NULL) {
        out->text_len = r->text_len;
        out->text = store_put_string(&at, r->text, r->text_len);
    }
    if (r->payload != NULL) {
        out->payload_len = r->payload_len;
        out->payload = store_put_string(&at, r->payload, r->payload_len);
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
