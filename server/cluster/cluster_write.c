/* cluster_write.c: the item store's remote hooks (store.h, store_remote):
 * every write is a PostgreSQL transaction that holds the write lock from
 * its first seq to its commit, then waits for this replica's follower. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster_internal.h"
#include "common/clock.h"
#include "common/strbuf.h"
#include "store/rows.h"

_Thread_local int cluster_applying;

#define RECONNECT_EVERY 1.0

/* The writers' connection, reconnected at most every RECONNECT_EVERY while
 * PostgreSQL is away (a write then fails at once). Caller holds wmu. */
static PGconn *writer(cluster *c, emb_err *err)
{
    if (pg_alive(c->wconn))
        return c->wconn;
    PQfinish(c->wconn);
    c->wconn = NULL;
    double now = mono_seconds();
    if (now < c->wretry_at)
        return emb_fail_as(err, EMB_ERR_UNAVAILABLE,
                           "store unavailable: postgres: not reachable (retrying every %.0f s)",
                           RECONNECT_EVERY),
               NULL;
    emb_err e;
    c->wconn = pg_connect(c->url, "embedd writer", &e);
    if (c->wconn == NULL) {
        c->wretry_at = now + RECONNECT_EVERY;
        emb_fail_as(err, EMB_ERR_UNAVAILABLE, "store unavailable: %s", e.msg);
    }
    return c->wconn;
}

static int begin_write(PGconn *conn, emb_err *err)
{
    char sql[128];
    snprintf(sql, sizeof sql, "BEGIN; SELECT pg_advisory_xact_lock(%d)", CLUSTER_LOCK_WRITE);
    return pg_exec(conn, sql, "begin", err);
}

static int commit_write(PGconn *conn, emb_err *err)
{
    return pg_exec(conn, "NOTIFY embedd_changes; COMMIT", "commit", err);
}

/* The writers' connection in a write transaction, or NULL with err. A
 * connection that died since its last use (PostgreSQL restarted) is
 * noticed only here: it is replaced once, since nothing was sent yet.
 * Caller holds wmu. */
static PGconn *begin_on_writer(cluster *c, emb_err *err)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *conn = writer(c, err);
        if (conn == NULL)
            return NULL;
        if (begin_write(conn, err) == 0)
            return conn;
        if (pg_alive(conn))
            break;
    }
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", err->msg);
    emb_fail_as(err, EMB_ERR_UNAVAILABLE, "store unavailable: %s", msg);
    return NULL;
}

/* After a failed statement: the transaction is rolled back (or the
 * connection is gone); the error says the store is unavailable. */
static int abort_write(PGconn *conn, emb_err *err)
{
    emb_err ignored;
    if (pg_alive(conn))
        pg_exec(conn, "ROLLBACK", "rollback", &ignored);
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", err->msg);
    return emb_fail_as(err, EMB_ERR_UNAVAILABLE, "store unavailable: %s", msg);
}

/* Commits the transaction when rc is 0, else rolls it back; 0 when it
 * committed, else -1 with err saying the store is unavailable. */
static int end_write(PGconn *conn, int rc, emb_err *err)
{
    if (rc == 0 && commit_write(conn, err) == 0)
        return 0;
    return abort_write(conn, err);
}

static void id_text(const store_id *id, char *buf, size_t cap, const char **s, size_t *len)
{
    if (id->kind == STORE_ID_NUM) {
        snprintf(buf, cap, "%llu", (unsigned long long)id->num);
        *s = buf;
        *len = strlen(buf);
    } else {
        *s = id->str;
        *len = id->len;
    }
}

/* PostgreSQL's text and json cannot hold a NUL character. */
static int check_storable(const store_item *it, int i, emb_err *err)
{
    if (it->text != NULL && memchr(it->text, 0, it->text_len) != NULL)
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "item %d: the text holds a NUL character, which PostgreSQL cannot store",
                           i);
    if (it->payload != NULL && memchr(it->payload, 0, it->payload_len) != NULL)
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "item %d: the payload holds a NUL character, which PostgreSQL cannot "
                           "store", i);
    return 0;
}

/* One statement per item in one write transaction. fill gives item i's
 * statement and parameters (num: room for a number id's text); a
 * statement that returns a row (RETURNING seq) is a hit. */
typedef const char *(*fill_fn)(void *ctx, int i, pg_params *p, char *num, emb_err *err);

/* 0 with *seq the last seq returned (0: none) and *hits (may be NULL), or
 * -1 with err; then waits until the follower applied *seq. */
static int write_each(cluster *c, int n, fill_fn fill, void *ctx, int *hits, emb_err *err)
{
    uint64_t seq = 0;
    int rc = 0, got = 0;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = begin_on_writer(c, err);
    if (conn == NULL) {
        rc = -1;
    } else {
        for (int i = 0; rc == 0 && i < n; i++) {
            char num[32];
            pg_params p;
            pg_params_init(&p);
            const char *sql = fill(ctx, i, &p, num, err);
            PGresult *r = sql != NULL ? pg_query(conn, sql, &p, "write", err) : NULL;
            if (r == NULL) {
                rc = -1;
                break;
            }
            if (PQntuples(r) == 1) {
                seq = (uint64_t)pg_get_i64(r, 0, 0);
                got++;
            }
            PQclear(r);
        }
        rc = end_write(conn, rc, err);
    }
    pthread_mutex_unlock(&c->wmu);
    if (rc != 0)
        return -1;
    if (hits != NULL)
        *hits = got;
    if (seq > 0)
        cluster_wait_applied(c, seq);
    return 0;
}

/* The id's kind and text as the first two parameters. */
static void param_id(pg_params *p, const store_id *id, char *num)
{
    const char *s;
    size_t len;
    id_text(id, num, 32, &s, &len);
    pg_param_i16(p, id->kind);
    pg_param_text(p, s, len);
}

static const char *UPSERT_SQL =
    "INSERT INTO embedd_items (coll, id_kind, id, text, payload, version, vector, seq)"
    " VALUES ('" CLUSTER_COLL "', $1, $2, $3, $4, $5, $6, nextval('embedd_seq'))"
    " ON CONFLICT (coll, id_kind, id) DO UPDATE SET text = EXCLUDED.text,"
    " payload = EXCLUDED.payload, version = EXCLUDED.version, vector = EXCLUDED.vector,"
    " next_version = NULL, next_vector = NULL, seq = EXCLUDED.seq, updated = now()"
    " RETURNING seq";

typedef struct upsert_job {
    const store_item *items;
    float *unit;               /* (n, dim): the vectors normalised */
    int dim;
} upsert_job;

static const char *fill_upsert(void *ctx, int i, pg_params *p, char *num, emb_err *err)
{
    upsert_job *j = ctx;
    const store_item *it = &j->items[i];
    param_id(p, &it->id, num);
    pg_param_text(p, it->text, it->text_len);
    pg_param_json(p, it->payload, it->payload_len);
    pg_param_i32(p, it->model_version);
    pg_param_bytes(p, j->unit + (size_t)i * j->dim, sizeof(float) * (size_t)j->dim);
    return UPSERT_SQL;
}

static int remote_upsert(void *ctx, const store_item *items, int n, emb_err *err)
{
    cluster *c = ctx;
    upsert_job j = {items, malloc(sizeof(float) * (size_t)n * (size_t)c->dim), c->dim};
    if (j.unit == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = check_storable(&items[i], i, err);
        /* store_upsert checked the vectors: normalising cannot fail */
        if (rc == 0)
            rc = store_normalise(items[i].vector, j.unit + (size_t)i * c->dim, c->dim, err);
    }
    if (rc == 0)
        rc = write_each(c, n, fill_upsert, &j, NULL, err);
    free(j.unit);
    return rc;
}

static const char *DELETE_SQL =
    "WITH gone AS (DELETE FROM embedd_items WHERE coll = '" CLUSTER_COLL "' AND id_kind = $1"
    " AND id = $2 RETURNING 1)"
    " INSERT INTO embedd_deletes (seq, coll, id_kind, id)"
    " SELECT nextval('embedd_seq'), '" CLUSTER_COLL "', $1, $2 FROM gone RETURNING seq";

static const char *fill_delete(void *ctx, int i, pg_params *p, char *num, emb_err *err)
{
    param_id(p, &((const store_id *)ctx)[i], num);
    return DELETE_SQL;
}

static int remote_remove(void *ctx, const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    return write_each(ctx, n, fill_delete, (void *)ids, n_deleted, err);
}

/* ---- versions and re-embedding ----------------------------------------------------- */

/* The trainer published (or a client rolled back to) `version`: its files
 * and a 'target' event, in one transaction, so that every replica that
 * sees the event can load the version. The follower applies it here too. */
static int remote_start(void *ctx, uint32_t version, emb_err *err)
{
    cluster *c = ctx;
    if (cluster_applying)
        return 0; /* the follower applies what PostgreSQL already holds */
    pthread_mutex_lock(&c->mu);
    int known = version == c->target;
    pthread_mutex_unlock(&c->mu);
    if (known)
        return 0;
    strbuf files;
    sb_init(&files, 1u << 30);
    if (version != 1 && versions_export(c->v, version, &files, err) != 0) {
        sb_free(&files);
        return -1;
    }
    int rc = -1;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = begin_on_writer(c, err);
    if (conn != NULL) {
        double created;
        uint32_t parent;
        char gate[256];
        versions_record(c->v, version, &created, &parent, gate, sizeof gate);
        pg_params p;
        pg_params_init(&p);
        pg_param_i32(&p, (int32_t)version);
        pg_param_bytes(&p, files.buf != NULL ? files.buf : "", files.len);
        pg_param_text(&p, c->replica, strlen(c->replica));
        pg_param_i32(&p, (int32_t)parent);
        pg_param_text(&p, gate, strlen(gate));
        PGresult *r = pg_query(conn,
                               "INSERT INTO embedd_versions (version, files, replica, parent, gate)"
                               " VALUES ($1, $2, $3, nullif($4, 0), nullif($5, ''))"
                               " ON CONFLICT (version) DO NOTHING",
                               &p, "version upload", err);
        PQclear(r);
        if (r != NULL) {
            pg_params e;
            pg_params_init(&e);
            pg_param_i32(&e, (int32_t)version);
            r = pg_query(conn,
                         "INSERT INTO embedd_events (seq, kind, version)"
                         " VALUES (nextval('embedd_seq'), 'target', $1)",
                         &e, "target event", err);
            PQclear(r);
        }
        rc = end_write(conn, r != NULL ? 0 : -1, err);
    }
    pthread_mutex_unlock(&c->wmu);
    sb_free(&files);
    return rc;
}

static const char *PUT_NEXT_SQL =
    "UPDATE embedd_items SET next_version = $3, next_vector = $4, seq = nextval('embedd_seq')"
    " WHERE coll = '" CLUSTER_COLL "' AND id_kind = $1 AND id = $2 AND text = $5"
    " AND version <> 0 RETURNING seq";
static const char *PUT_MAIN_SQL =
    "UPDATE embedd_items SET version = $3, vector = $4, next_version = NULL,"
    " next_vector = NULL, seq = nextval('embedd_seq'), updated = now()"
    " WHERE coll = '" CLUSTER_COLL "' AND id_kind = $1 AND id = $2 AND text = $5"
    " AND version <> 0 RETURNING seq";

typedef struct put_job {
    const store_id *ids;
    const char *const *texts;
    const size_t *lens;
    const float *vecs;
    uint32_t version;
    int moving, dim;
} put_job;

static const char *fill_put(void *ctx, int i, pg_params *p, char *num, emb_err *err)
{
    put_job *j = ctx;
    param_id(p, &j->ids[i], num);
    pg_param_i32(p, (int32_t)j->version);
    pg_param_bytes(p, j->vecs + (size_t)i * j->dim, sizeof(float) * (size_t)j->dim);
    pg_param_text(p, j->texts[i], j->lens[i]);
    return j->moving ? PUT_NEXT_SQL : PUT_MAIN_SQL;
}

/* The trainer's re-embedded vectors: an item whose text changed since is
 * left alone (its new text is taken again). */
static int remote_put(void *ctx, const store_id *ids, const char *const *texts,
                      const size_t *lens, int n, const float *vecs, uint32_t version,
                      int moving, emb_err *err)
{
    cluster *c = ctx;
    put_job j = {ids, texts, lens, vecs, version, moving, c->dim};
    return write_each(c, n, fill_put, &j, NULL, err);
}

/* Texts still lacking a vector of version. */
static const char *PENDING_SQL =
    "SELECT count(*) FROM embedd_items WHERE coll = '" CLUSTER_COLL "' AND text IS NOT NULL"
    " AND version <> 0 AND version <> $1 AND next_version IS DISTINCT FROM $1";
/* The switch leaves seq alone: a follower that is up to date switches its
 * copy from the vectors it already holds, at the 'serve' event. One that
 * is catching up from before the switch reads these rows with T's vectors
 * at their old seqs, and their items are not searched until it reaches
 * the event, later in the same catch-up. */
static const char *SWITCH_SQL =
    "UPDATE embedd_items SET version = next_version, vector = next_vector,"
    " next_version = NULL, next_vector = NULL"
    " WHERE coll = '" CLUSTER_COLL "' AND next_version = $1";

/* Every text has a vector of version: PostgreSQL's items take them and a
 * 'serve' event tells every replica to switch at this point. */
static int remote_finish(void *ctx, uint32_t version, emb_err *err)
{
    cluster *c = ctx;
    uint64_t seq = 0;
    int rc = -1;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = begin_on_writer(c, err);
    if (conn != NULL) {
        pg_params p;
        pg_params_init(&p);
        pg_param_i32(&p, (int32_t)version);
        PGresult *r = pg_query(conn, PENDING_SQL, &p, "pending count", err);
        long pending = r != NULL ? (long)pg_get_i64(r, 0, 0) : -1;
        PQclear(r);
        if (pending == 0) {
            r = pg_query(conn, SWITCH_SQL, &p, "switch", err);
            PQclear(r);
            if (r != NULL) {
                r = pg_query(conn,
                             "INSERT INTO embedd_events (seq, kind, version)"
                             " VALUES (nextval('embedd_seq'), 'serve', $1) RETURNING seq",
                             &p, "serve event", err);
                if (r != NULL)
                    seq = (uint64_t)pg_get_i64(r, 0, 0);
                PQclear(r);
            }
        }
        if (pending > 0) {
            emb_err ignored;
            pg_exec(conn, "ROLLBACK", "rollback", &ignored);
            rc = 0;
        } else if (end_write(conn, seq > 0 ? 0 : -1, err) == 0) {
            rc = 1;
        }
    }
    pthread_mutex_unlock(&c->wmu);
    if (rc == 1)
        cluster_wait_applied(c, seq);
    return rc;
}

uint32_t cluster_next_version(cluster *c, uint32_t latest, emb_err *err)
{
    uint32_t id = 0;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = writer(c, err);
    pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)latest + 1);
    /* setval moves the sequence past a number this replica already has
     * (a version made before it joined a cluster, or one whose upload
     * failed), so that it is never handed out */
    PGresult *r = conn != NULL ? pg_query(conn,
                                          "SELECT CASE WHEN last_value >= $1 THEN"
                                          " nextval('embedd_version_seq')"
                                          " ELSE setval('embedd_version_seq', $1, true) END"
                                          " FROM embedd_version_seq",
                                          &p, "version number", err)
                               : NULL;
    if (r != NULL && PQntuples(r) == 1)
        id = (uint32_t)pg_get_i64(r, 0, 0);
    PQclear(r);
    pthread_mutex_unlock(&c->wmu);
    return id;
}

void cluster_set_hooks(cluster *c)
{
    store_remote r = {.ctx = c,
                      .upsert = remote_upsert,
                      .remove = remote_remove,
                      .reembed_start = remote_start,
                      .reembed_put = remote_put,
                      .reembed_finish = remote_finish};
    store_set_remote(c->st, &r);
}

void cluster_wait_applied(cluster *c, uint64_t seq)
{
    if (cluster_applying)
        return; /* the follower itself: it applies after we return */
    ssize_t ignored = write(c->wake[1], "w", 1);
    (void)ignored;
    double deadline = mono_seconds() + CLUSTER_APPLY_WAIT;
    pthread_mutex_lock(&c->mu);
    while (c->applied < seq && !atomic_load(&c->stop)) {
        double left = deadline - mono_seconds();
        if (left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = ts.tv_sec + ts.tv_nsec * 1e-9 + (left < 0.1 ? left : 0.1);
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&c->applied_cv, &c->mu, &ts);
    }
    pthread_mutex_unlock(&c->mu);
}
