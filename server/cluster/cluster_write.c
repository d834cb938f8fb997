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

static const char *UPSERT_SQL =
    "INSERT INTO embedd_items (coll, id_kind, id, text, payload, version, vector, seq)"
    " VALUES ('" CLUSTER_COLL "', $1, $2, $3, $4, $5, $6, nextval('embedd_seq'))"
    " ON CONFLICT (coll, id_kind, id) DO UPDATE SET text = EXCLUDED.text,"
    " payload = EXCLUDED.payload, version = EXCLUDED.version, vector = EXCLUDED.vector,"
    " next_version = NULL, next_vector = NULL, seq = EXCLUDED.seq, updated = now()"
    " RETURNING seq";

static int upsert_one(PGconn *conn, const store_item *it, const float *unit, int dim,
                      uint64_t *seq, emb_err *err)
{
    char num[32];
    const char *ids;
    size_t idlen;
    id_text(&it->id, num, sizeof num, &ids, &idlen);
    pg_params p;
    pg_params_init(&p);
    pg_param_i16(&p, it->id.kind);
    pg_param_text(&p, ids, idlen);
    pg_param_text(&p, it->text, it->text_len);
    pg_param_json(&p, it->payload, it->payload_len);
    pg_param_i32(&p, it->model_version);
    pg_param_bytes(&p, unit, sizeof(float) * (size_t)dim);
    PGresult *r = pg_query(conn, UPSERT_SQL, &p, "upsert", err);
    if (r == NULL)
        return -1;
    *seq = (uint64_t)pg_get_i64(r, 0, 0);
    PQclear(r);
    return 0;
}

static int remote_upsert(void *ctx, const store_item *items, int n, emb_err *err)
{
    cluster *c = ctx;
    float *unit = malloc(sizeof(float) * (size_t)c->dim);
    if (unit == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    for (int i = 0; i < n; i++) {
        if (check_storable(&items[i], i, err) != 0) {
            free(unit);
            return -1;
        }
    }
    uint64_t seq = 0;
    int rc = 0;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = writer(c, err);
    if (conn == NULL || begin_write(conn, err) != 0) {
        rc = -1;
    } else {
        for (int i = 0; rc == 0 && i < n; i++) {
            emb_err e;
            if (store_normalise(items[i].vector, unit, c->dim, &e) != 0)
                rc = emb_fail_as(err, EMB_ERR_INVALID, "item %d: %s", i, e.msg);
            else
                rc = upsert_one(conn, &items[i], unit, c->dim, &seq, err);
        }
        if (rc != 0 && err->kind != EMB_ERR_INVALID)
            abort_write(conn, err);
        else if (rc != 0)
            pg_exec(conn, "ROLLBACK", "rollback", &(emb_err){0});
        else if (commit_write(conn, err) != 0)
            rc = abort_write(conn, err);
    }
    pthread_mutex_unlock(&c->wmu);
    free(unit);
    if (rc == 0)
        cluster_wait_applied(c, seq);
    return rc;
}

static const char *DELETE_SQL =
    "WITH gone AS (DELETE FROM embedd_items WHERE coll = '" CLUSTER_COLL "' AND id_kind = $1"
    " AND id = $2 RETURNING 1)"
    " INSERT INTO embedd_deletes (seq, coll, id_kind, id)"
    " SELECT nextval('embedd_seq'), '" CLUSTER_COLL "', $1, $2 FROM gone RETURNING seq";

static int remote_remove(void *ctx, const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    cluster *c = ctx;
    uint64_t seq = 0;
    int rc = 0, deleted = 0;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = writer(c, err);
    if (conn == NULL || begin_write(conn, err) != 0) {
        rc = -1;
    } else {
        for (int i = 0; rc == 0 && i < n; i++) {
            char num[32];
            const char *s;
            size_t len;
            id_text(&ids[i], num, sizeof num, &s, &len);
            pg_params p;
            pg_params_init(&p);
            pg_param_i16(&p, ids[i].kind);
            pg_param_text(&p, s, len);
            PGresult *r = pg_query(conn, DELETE_SQL, &p, "delete", err);
            if (r == NULL) {
                rc = -1;
                break;
            }
            if (PQntuples(r) == 1) {
                seq = (uint64_t)pg_get_i64(r, 0, 0);
                deleted++;
            }
            PQclear(r);
        }
        if (rc != 0)
            abort_write(conn, err);
        else if (commit_write(conn, err) != 0)
            rc = abort_write(conn, err);
    }
    pthread_mutex_unlock(&c->wmu);
    if (rc == 0) {
        if (n_deleted != NULL)
            *n_deleted = deleted;
        if (seq > 0)
            cluster_wait_applied(c, seq);
    }
    return rc;
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
    PGconn *conn = writer(c, err);
    if (conn != NULL && begin_write(conn, err) == 0) {
        pg_params p;
        pg_params_init(&p);
        pg_param_i32(&p, (int32_t)version);
        pg_param_bytes(&p, files.buf != NULL ? files.buf : "", files.len);
        pg_param_text(&p, c->replica, strlen(c->replica));
        PGresult *r = pg_query(conn,
                               "INSERT INTO embedd_versions (version, files, replica)"
                               " VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
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
        if (r == NULL)
            abort_write(conn, err);
        else if (commit_write(conn, err) != 0)
            abort_write(conn, err);
        else
            rc = 0;
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

/* The trainer's re-embedded vectors: an item whose text changed since is
 * left alone (its new text is taken again). */
static int remote_put(void *ctx, const store_id *ids, const char *const *texts,
                      const size_t *lens, int n, const float *vecs, uint32_t version,
                      int moving, emb_err *err)
{
    cluster *c = ctx;
    uint64_t seq = 0;
    int rc = 0;
    pthread_mutex_lock(&c->wmu);
    PGconn *conn = writer(c, err);
    if (conn == NULL || begin_write(conn, err) != 0) {
        rc = -1;
    } else {
        for (int i = 0; rc == 0 && i < n; i++) {
            char num[32];
            const char *s;
            size_t len;
            id_text(&ids[i], num, sizeof num, &s, &len);
            pg_params p;
            pg_params_init(&p);
            pg_param_i16(&p, ids[i].kind);
            pg_param_text(&p, s, len);
            pg_param_i32(&p, (int32_t)version);
            pg_param_bytes(&p, vecs + (size_t)i * c->dim, sizeof(float) * (size_t)c->dim);
            pg_param_text(&p, texts[i], lens[i]);
            PGresult *r = pg_query(conn, moving ? PUT_NEXT_SQL : PUT_MAIN_SQL, &p, "re-embed",
                                   err);
            if (r == NULL) {
                rc = -1;
                break;
            }
            if (PQntuples(r) == 1)
                seq = (uint64_t)pg_get_i64(r, 0, 0);
            PQclear(r);
        }
        if (rc != 0)
            abort_write(conn, err);
        else if (commit_write(conn, err) != 0)
            rc = abort_write(conn, err);
    }
    pthread_mutex_unlock(&c->wmu);
    if (rc == 0 && seq > 0)
        cluster_wait_applied(c, seq);
    return rc;
}

/* Texts still lacking a vector of version. */
static const char *PENDING_SQL =
    "SELECT count(*) FROM embedd_items WHERE coll = '" CLUSTER_COLL "' AND text IS NOT NULL"
    " AND version <> 0 AND version <> $1 AND next_version IS DISTINCT FROM $1";
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
    PGconn *conn = writer(c, err);
    if (conn != NULL && begin_write(conn, err) == 0) {
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
        } else if (seq == 0) {
            abort_write(conn, err);
        } else if (commit_write(conn, err) != 0) {
            abort_write(conn, err);
        } else {
            rc = 1;
        }
    }
    pthread_mutex_unlock(&c->wmu);
    if (rc == 1)
        cluster_wait_applied(c, seq);
    return rc;
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
