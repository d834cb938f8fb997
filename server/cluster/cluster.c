/* cluster.c: see cluster.h. Opening (tables, the start-up load), the
 * follower thread (changes, events, the trainer's lock, samples) and the
 * stats; the store's write hooks are in cluster_write.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster_internal.h"
#include "common/clock.h"
#include "common/log.h"
#include "store/store_reembed.h"

#define FETCH_PAGE 500
#define LOAD_PAGE 2000
#define FOLLOW_WAIT_MS 500
#define RECONNECT_EVERY 1.0
#define LEADER_CHECK_EVERY 1.0
#define SAMPLES_PER_ROUND 256
#define SAMPLES_EVERY 0.5             /* seconds between sample exchanges */
#define SAMPLES_REPLAY 4096           /* texts a new trainer reads again */
#define SAMPLES_KEEP 20000            /* texts the queue keeps behind the trainer */
#define SAMPLES_TRIM_EVERY 60.0       /* seconds between trims of the queue */

int cluster_url_is_postgres(const char *url)
{
    return url != NULL &&
           (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0);
}

void cluster_note_error(cluster *c, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    int same = strcmp(c->last_error, msg) == 0;
    snprintf(c->last_error, sizeof c->last_error, "%s", msg);
    pthread_mutex_unlock(&c->mu);
    if (!same)
        log_msg(LOG_WARN, "cluster: %s", msg);
}

/* ---- tables ------------------------------------------------------------------------- */

static const char *SCHEMA_SQL =
    "CREATE SEQUENCE IF NOT EXISTS embedd_seq;"
    "CREATE SEQUENCE IF NOT EXISTS embedd_version_seq MINVALUE 2 START 2;"
    "CREATE TABLE IF NOT EXISTS embedd_meta (key text PRIMARY KEY, value text NOT NULL);"
    "CREATE TABLE IF NOT EXISTS embedd_items ("
    " coll text NOT NULL, id_kind smallint NOT NULL, id text NOT NULL,"
    " text text, payload json, version integer NOT NULL, vector bytea NOT NULL,"
    " next_version integer, next_vector bytea, seq bigint NOT NULL,"
    " updated timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (coll, id_kind, id));"
    "CREATE INDEX IF NOT EXISTS embedd_items_seq ON embedd_items (seq);"
    "CREATE TABLE IF NOT EXISTS embedd_deletes (seq bigint PRIMARY KEY, coll text NOT NULL,"
    " id_kind smallint NOT NULL, id text NOT NULL, at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS embedd_events (seq bigint PRIMARY KEY, kind text NOT NULL,"
    " version integer NOT NULL, at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS embedd_versions (version integer PRIMARY KEY,"
    " files bytea NOT NULL, parent integer, gate text, replica text,"
    " created timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS embedd_samples (id bigserial PRIMARY KEY, text text NOT NULL,"
    " source smallint NOT NULL DEFAULT 0, replica text,"
    " at timestamptz NOT NULL DEFAULT now());";

/* The value of meta key, set to want when missing; 0 when it equals want,
 * else -1 with err (a cluster made for another model). */
static int meta_check(PGconn *conn, const char *key, const char *want, emb_err *err)
{
    pg_params p;
    pg_params_init(&p);
    pg_param_text(&p, key, strlen(key));
    pg_param_text(&p, want, strlen(want));
    PGresult *r = pg_query(conn,
                           "WITH put AS (INSERT INTO embedd_meta VALUES ($1, $2)"
                           " ON CONFLICT (key) DO NOTHING RETURNING value)"
                           " SELECT value FROM put UNION ALL"
                           " SELECT value FROM embedd_meta WHERE key = $1",
                           &p, "meta", err);
    if (r == NULL)
        return -1;
    int rc = 0;
    if (PQntuples(r) < 1 || (size_t)PQgetlength(r, 0, 0) != strlen(want) ||
        memcmp(PQgetvalue(r, 0, 0), want, strlen(want)) != 0)
        rc = emb_fail_as(err, EMB_ERR_CONFLICT,
                         "postgres: this database's embedd tables were made with %s %.*s, "
                         "not %s (use another database, or the same model)",
                         key, PQntuples(r) > 0 ? PQgetlength(r, 0, 0) : 0,
                         PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "", want);
    PQclear(r);
    return rc;
}

static int make_tables(cluster *c, PGconn *conn, emb_err *err)
{
    char lock[96], dim[32];
    snprintf(lock, sizeof lock, "BEGIN; SELECT pg_advisory_xact_lock(%d)", CLUSTER_LOCK_SCHEMA);
    snprintf(dim, sizeof dim, "%d", c->dim);
    if (pg_exec(conn, lock, "begin", err) != 0)
        return -1;
    if (pg_exec(conn, SCHEMA_SQL, "creating tables", err) != 0 ||
        meta_check(conn, "dim", dim, err) != 0 || meta_check(conn, "model", c->model, err) != 0) {
        emb_err ignored;
        pg_exec(conn, "ROLLBACK", "rollback", &ignored);
        return -1;
    }
    return pg_exec(conn, "COMMIT", "commit", err);
}

/* ---- open and close ------------------------------------------------------------------ */

static void cluster_free(cluster *c)
{
    if (c == NULL)
        return;
    PQfinish(c->wconn);
    PQfinish(c->fconn);
    PQfinish(c->lconn);
    PQfinish(c->load_conn);
    if (c->wake[0] >= 0)
        close(c->wake[0]);
    if (c->wake[1] >= 0)
        close(c->wake[1]);
    for (int i = 0; i < c->out_n; i++)
        free(c->outbox[i].text);
    pthread_mutex_destroy(&c->wmu);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->out_mu);
    pthread_mutex_destroy(&c->load_mu);
    pthread_cond_destroy(&c->applied_cv);
    pthread_cond_destroy(&c->load_cv);
    free(c->vec);
    free(c->url);
    free(c->replica);
    free(c->model);
    free(c);
}

cluster *cluster_open(const cluster_options *o, emb_err *err)
{
    cluster *c = calloc(1, sizeof *c);
    if (c == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    c->wake[0] = c->wake[1] = -1;
    pthread_mutex_init(&c->wmu, NULL);
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->out_mu, NULL);
    pthread_mutex_init(&c->load_mu, NULL);
    pthread_cond_init(&c->applied_cv, NULL);
    pthread_cond_init(&c->load_cv, NULL);
    c->url = strdup(o->url);
    c->replica = strdup(o->replica != NULL ? o->replica : "embedd");
    c->model = strdup(o->model != NULL ? o->model : "");
    c->dim = o->dim;
    c->vec = malloc(sizeof(float) * (size_t)(o->dim > 0 ? o->dim : 1));
    if (c->url == NULL || c->replica == NULL || c->model == NULL || c->vec == NULL ||
        pipe2(c->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        cluster_free(c);
        return NULL;
    }
    double give_up = mono_seconds() + (o->connect_wait > 0 ? o->connect_wait : 0);
    for (int tries = 0;; tries++) {
        c->fconn = pg_connect(c->url, "embedd follower", err);
        if (c->fconn != NULL || mono_seconds() >= give_up)
            break;
        if (tries == 0)
            log_msg(LOG_WARN, "cluster: %s; trying again every second for %.0f s", err->msg,
                    o->connect_wait);
        sleep(1);
    }
    if (c->fconn == NULL || make_tables(c, c->fconn, err) != 0) {
        cluster_free(c);
        return NULL;
    }
    return c;
}

/* ---- applying changes ------------------------------------------------------------------ */

/* The columns of a change row (FETCH_SQL and LOAD_SQL). */
enum { COL_SEQ, COL_OP, COL_KIND, COL_ID, COL_TEXT, COL_PAYLOAD, COL_VERSION, COL_VECTOR,
       COL_NEXT_VERSION, COL_NEXT_VECTOR };
enum { OP_UPSERT = 1, OP_DELETE = 2, OP_EVENT = 3 };

/* id of row i; a string id points into r (or into num for a number). */
static int row_id(const PGresult *r, int i, store_id *id, char *num, size_t cap)
{
    int kind = pg_get_i16(r, i, COL_KIND);
    const char *s = PQgetvalue(r, i, COL_ID);
    int len = PQgetlength(r, i, COL_ID);
    if (kind == STORE_ID_NUM) {
        snprintf(num, cap, "%.*s", len, s);
        char *end;
        errno = 0;
        unsigned long long v = strtoull(num, &end, 10);
        if (errno != 0 || *end != '\0' || end == num)
            return -1;
        *id = store_id_num(v);
        return 0;
    }
    if (kind != STORE_ID_STR)
        return -1;
    id->kind = STORE_ID_STR;
    id->str = s;
    id->len = (size_t)len;
    return 0;
}

/* A vector column into c->vec (libpq does not align binary values). */
static const float *column_vector(cluster *c, const PGresult *r, int i, int col)
{
    memcpy(c->vec, PQgetvalue(r, i, col), sizeof(float) * (size_t)c->dim);
    return c->vec;
}

static int apply_upsert(cluster *c, const PGresult *r, int i, emb_err *err)
{
    char num[32];
    store_item it = {0};
    if (row_id(r, i, &it.id, num, sizeof num) != 0)
        return emb_fail(err, "change %lld: bad id", (long long)pg_get_i64(r, i, COL_SEQ));
    if (PQgetlength(r, i, COL_VECTOR) != (int)(sizeof(float) * (size_t)c->dim))
        return emb_fail(err, "change %lld: the vector has %d bytes, not %zu",
                        (long long)pg_get_i64(r, i, COL_SEQ), PQgetlength(r, i, COL_VECTOR),
                        sizeof(float) * (size_t)c->dim);
    it.vector = column_vector(c, r, i, COL_VECTOR);
    it.vector_dim = c->dim;
    if (!pg_is_null(r, i, COL_TEXT)) {
        it.text = PQgetvalue(r, i, COL_TEXT);
        it.text_len = (size_t)PQgetlength(r, i, COL_TEXT);
    }
    if (!pg_is_null(r, i, COL_PAYLOAD)) {
        it.payload = PQgetvalue(r, i, COL_PAYLOAD);
        it.payload_len = (size_t)PQgetlength(r, i, COL_PAYLOAD);
    }
    it.model_version = pg_get_i32(r, i, COL_VERSION);
    if (store_upsert_local(c->st, &it, 1, err) != 0)
        return -1;
    if (!pg_is_null(r, i, COL_NEXT_VERSION) &&
        PQgetlength(r, i, COL_NEXT_VECTOR) == (int)(sizeof(float) * (size_t)c->dim))
        store_reembed_put_ids(c->st, &it.id, 1, column_vector(c, r, i, COL_NEXT_VECTOR),
                              (uint32_t)pg_get_i32(r, i, COL_NEXT_VERSION));
    return 0;
}

static int apply_delete(cluster *c, const PGresult *r, int i, emb_err *err)
{
    char num[32];
    store_id id;
    if (row_id(r, i, &id, num, sizeof num) != 0)
        return emb_fail(err, "change %lld: bad id", (long long)pg_get_i64(r, i, COL_SEQ));
    return store_delete_local(c->st, &id, 1, NULL, err);
}

int cluster_ensure_version(cluster *c, PGconn *conn, uint32_t id, emb_err *err)
{
    model_version *mv = versions_get(c->v, id);
    if (mv != NULL) {
        versions_release(c->v, mv);
        return 0;
    }
    if (id == 1)
        return versions_keep(c->v, 1, err);
    pg_params p;
    pg_params_init(&p);
    pg_param_i32(&p, (int32_t)id);
    PGresult *r = pg_query(conn,
                           "SELECT files, coalesce(parent, 0), coalesce(gate, ''),"
                           " extract(epoch FROM created)::float8::text"
                           " FROM embedd_versions WHERE version = $1",
                           &p, "version download", err);
    if (r == NULL)
        return -1;
    int rc;
    if (PQntuples(r) != 1) {
        rc = emb_fail_as(err, EMB_ERR_NOT_FOUND, "model version %u is not in embedd_versions", id);
    } else {
        rc = versions_import(c->v, id, PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0), err);
        if (rc == 0)
            versions_note(c->v, id, atof(PQgetvalue(r, 0, 3)), (uint32_t)pg_get_i32(r, 0, 1),
                          PQgetvalue(r, 0, 2));
    }
    PQclear(r);
    return rc;
}

/* Version id loaded and current; under load_mu, on the loader's or the
 * follower's connection. id 0: the newest asked for (load_want, read under
 * load_mu, so that the loader never makes an older version current after
 * the follower made a newer one); *done gets the id. */
static int load_version(cluster *c, PGconn *conn, uint32_t id, uint32_t *done, emb_err *err)
{
    pthread_mutex_lock(&c->load_mu);
    if (id == 0) {
        pthread_mutex_lock(&c->mu);
        id = c->load_want;
        pthread_mutex_unlock(&c->mu);
    }
    int rc = cluster_ensure_version(c, conn, id, err);
    if (rc == 0)
        rc = versions_adopt(c->v, id, err);
    pthread_mutex_unlock(&c->load_mu);
    *done = id;
    return rc;
}

/* The loader thread: the newest version asked for, loaded and made
 * current (so /embed answers with it); retried every second on failure. */
static void *loader_main(void *arg)
{
    cluster *c = arg;
    cluster_applying = 1;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (!atomic_load(&c->stop) && c->load_want == c->load_done)
            pthread_cond_wait(&c->load_cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
        if (atomic_load(&c->stop))
            break;
        emb_err err;
        uint32_t want = 0;
        if (!pg_alive(c->load_conn)) {
            PQfinish(c->load_conn);
            c->load_conn = pg_connect(c->url, "embedd version loader", &err);
        }
        if (c->load_conn == NULL || load_version(c, c->load_conn, 0, &want, &err) != 0) {
            cluster_note_error(c, err.msg);
            sleep(1);
            continue;
        }
        pthread_mutex_lock(&c->mu);
        c->load_done = want; /* a newer want meanwhile: the loop goes on with it */
        pthread_mutex_unlock(&c->mu);
        log_msg(LOG_INFO, "cluster: model version %u loaded and current", want);
    }
    return NULL;
}

/* 'target': version id is published. The store starts moving to it here,
 * in sequence (the re-embedded vectors that follow are kept for it); the
 * loader makes it current meanwhile. */
static int follow_target(cluster *c, uint32_t id, emb_err *err)
{
    if (store_reembed_start(c->st, id, err) != 0)
        return -1;
    pthread_mutex_lock(&c->mu);
    c->target = id;
    c->load_want = id;
    pthread_cond_broadcast(&c->load_cv);
    pthread_mutex_unlock(&c->mu);
    log_msg(LOG_INFO, "cluster: model version %u published; re-embedding the store", id);
    return 0;
}

/* 'serve': every text has a vector of id; searches switch to it here,
 * once the version is loaded (normally long since, by the loader). */
static int follow_serve(cluster *c, PGconn *conn, uint32_t id, emb_err *err)
{
    uint32_t done;
    if (load_version(c, conn, id, &done, err) != 0)
        return -1;
    if (store_target_version(c->st) != id && store_vectors_version(c->st) != id &&
        store_reembed_start(c->st, id, err) != 0)
        return -1;
    store_reembed_switch(c->st, id);
    pthread_mutex_lock(&c->mu);
    c->serving = c->target = id;
    pthread_mutex_unlock(&c->mu);
    log_msg(LOG_INFO, "cluster: searches now use model version %u", id);
    return 0;
}

static int apply_event(cluster *c, PGconn *conn, const PGresult *r, int i, emb_err *err)
{
    const char *kind = PQgetvalue(r, i, COL_ID);
    uint32_t id = (uint32_t)pg_get_i32(r, i, COL_VERSION);
    if (strcmp(kind, "target") == 0)
        return follow_target(c, id, err);
    if (strcmp(kind, "serve") == 0)
        return follow_serve(c, conn, id, err);
    return 0; /* a kind from a newer embedd: nothing to do here */
}

/* Applies rows in order; *applied gets the seq of the last one applied.
 * A row that cannot be applied stops the page (it is retried: the follower
 * lags rather than skips), with err. */
static int apply_rows(cluster *c, PGconn *conn, const PGresult *r, uint64_t *applied,
                      emb_err *err)
{
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        int op = pg_get_i16(r, i, COL_OP), rc = 0;
        if (op == OP_UPSERT)
            rc = apply_upsert(c, r, i, err);
        else if (op == OP_DELETE)
            rc = apply_delete(c, r, i, err);
        else if (op == OP_EVENT)
            rc = apply_event(c, conn, r, i, err);
        if (rc != 0)
            return -1;
        *applied = (uint64_t)pg_get_i64(r, i, COL_SEQ);
    }
    return 0;
}

static void set_applied(cluster *c, uint64_t seq, uint64_t n_changes, int caught_up)
{
    pthread_mutex_lock(&c->mu);
    c->applied = seq;
    if (c->head < seq)
        c->head = seq;
    c->changes += n_changes;
    if (caught_up) {
        c->head = seq;
        c->caught_up_at = mono_seconds();
    }
    pthread_cond_broadcast(&c->applied_cv);
    pthread_mutex_unlock(&c->mu);
}

/* ---- the start-up load --------------------------------------------------------------------- */

static const char *HEAD_SQL =
    "SELECT greatest((SELECT coalesce(max(seq), 0) FROM embedd_items),"
    " (SELECT coalesce(max(seq), 0) FROM embedd_deletes),"
    " (SELECT coalesce(max(seq), 0) FROM embedd_events))::bigint";

static const char *ITEM_COLUMNS =
    "seq, 1::int2, id_kind, id, text, payload::text, version, vector, next_version, next_vector";

static int query_u64(PGconn *conn, const char *sql, uint64_t *out, emb_err *err)
{
    PGresult *r = pg_query(conn, sql, NULL, "head", err);
    if (r == NULL)
        return -1;
    *out = PQntuples(r) == 1 && !pg_is_null(r, 0, 0) ? (uint64_t)pg_get_i64(r, 0, 0) : 0;
    PQclear(r);
    return 0;
}

/* The newest event of kind (0: none). */
static int last_event(PGconn *conn, const char *kind, uint32_t *out, emb_err *err)
{
    pg_params p;
    pg_params_init(&p);
    pg_param_text(&p, kind, strlen(kind));
    PGresult *r = pg_query(conn,
                           "SELECT version FROM embedd_events WHERE kind = $1"
                           " ORDER BY seq DESC LIMIT 1",
                           &p, "events", err);
    if (r == NULL)
        return -1;
    *out = PQntuples(r) == 1 ? (uint32_t)pg_get_i32(r, 0, 0) : 0;
    PQclear(r);
    return 0;
}

/* The versions the cluster searches (serving) and moves to (target) become
 * known here, target current, and the store searches serving. A cluster
 * that never published searches version 1, the model every replica loads. */
static int load_versions(cluster *c, PGconn *conn, emb_err *err)
{
    uint32_t serving, target;
    if (last_event(conn, "serve", &serving, err) != 0 ||
        last_event(conn, "target", &target, err) != 0)
        return -1;
    if (serving == 0)
        serving = 1;
    if (target == 0)
        target = serving;
    if (cluster_ensure_version(c, conn, serving, err) != 0 ||
        cluster_ensure_version(c, conn, target, err) != 0 ||
        versions_adopt(c->v, target, err) != 0)
        return -1;
    store_reembed_adopt(c->st, serving);
    if (target != serving && store_reembed_start(c->st, target, err) != 0)
        return -1;
    c->serving = serving;
    c->target = target;
    return 0;
}

/* The cluster's versions and every item, as of one snapshot whose newest
 * change is *head (events and items alike, so that the follower goes on
 * from exactly there). */
static int load_state(cluster *c, PGconn *conn, uint64_t *head, emb_err *err)
{
    if (pg_exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "begin", err) != 0)
        return -1;
    int rc = query_u64(conn, HEAD_SQL, head, err);
    if (rc == 0)
        rc = load_versions(c, conn, err);
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT %s FROM embedd_items WHERE coll = '" CLUSTER_COLL "' AND seq > $1"
             " ORDER BY seq LIMIT %d",
             ITEM_COLUMNS, LOAD_PAGE);
    uint64_t last = 0;
    while (rc == 0) {
        pg_params p;
        pg_params_init(&p);
        pg_param_i64(&p, (int64_t)last);
        PGresult *r = pg_query(conn, sql, &p, "loading items", err);
        if (r == NULL) {
            rc = -1;
            break;
        }
        int n = PQntuples(r);
        rc = apply_rows(c, conn, r, &last, err);
        PQclear(r);
        if (n < LOAD_PAGE)
            break;
    }
    emb_err ignored;
    if (rc != 0) {
        pg_exec(conn, "ROLLBACK", "rollback", &ignored);
        return -1;
    }
    return pg_exec(conn, "COMMIT", "commit", err);
}

/* ---- following --------------------------------------------------------------------- */

static int fetch_sql_init(char *sql, size_t cap)
{
    return snprintf(sql, cap,
                    "SELECT %s FROM embedd_items WHERE coll = '" CLUSTER_COLL "' AND seq > $1"
                    " UNION ALL SELECT seq, 2::int2, id_kind, id, NULL::text, NULL::text, 0,"
                    " NULL::bytea, NULL::int, NULL::bytea FROM embedd_deletes"
                    " WHERE coll = '" CLUSTER_COLL "' AND seq > $1"
                    " UNION ALL SELECT seq, 3::int2, 0::int2, kind, NULL::text, NULL::text,"
                    " version, NULL::bytea, NULL::int, NULL::bytea FROM embedd_events"
                    " WHERE seq > $1 ORDER BY 1 LIMIT %d",
                    ITEM_COLUMNS, FETCH_PAGE);
}

/* Applies every change after the applied seq, a page at a time. */
static int catch_up(cluster *c, emb_err *err)
{
    char sql[1024];
    fetch_sql_init(sql, sizeof sql);
    for (;;) {
        pthread_mutex_lock(&c->mu);
        uint64_t from = c->applied;
        pthread_mutex_unlock(&c->mu);
        pg_params p;
        pg_params_init(&p);
        pg_param_i64(&p, (int64_t)from);
        PGresult *r = pg_query(c->fconn, sql, &p, "following changes", err);
        if (r == NULL)
            return -1;
        int n = PQntuples(r);
        uint64_t last = from;
        int rc = apply_rows(c, c->fconn, r, &last, err);
        PQclear(r);
        uint64_t head = 0;
        if (rc == 0 && n == FETCH_PAGE && query_u64(c->fconn, HEAD_SQL, &head, err) == 0) {
            pthread_mutex_lock(&c->mu);
            c->head = head;
            pthread_mutex_unlock(&c->mu);
        }
        set_applied(c, last, (uint64_t)(n > 0 ? n : 0), rc == 0 && n < FETCH_PAGE);
        if (rc != 0)
            return -1;
        if (n < FETCH_PAGE)
            return 0;
    }
}

static void set_connected(cluster *c, int yes)
{
    pthread_mutex_lock(&c->mu);
    if (c->connected && !yes)
        log_msg(LOG_WARN, "cluster: lost PostgreSQL; serving reads from the local copy");
    if (!c->connected && yes && c->reconnects > 0) {
        log_msg(LOG_INFO, "cluster: PostgreSQL is back; catching up");
        c->last_error[0] = '\0';
    }
    c->connected = yes;
    pthread_mutex_unlock(&c->mu);
}

static int listen_changes(cluster *c, emb_err *err)
{
    return pg_exec(c->fconn, "LISTEN embedd_changes", "listen", err);
}

/* (Re)connects the follower; 0 when connected. */
static int follower_connect(cluster *c)
{
    if (pg_alive(c->fconn))
        return 0;
    PQfinish(c->fconn);
    emb_err err;
    c->fconn = pg_connect(c->url, "embedd follower", &err);
    if (c->fconn == NULL || listen_changes(c, &err) != 0) {
        cluster_note_error(c, err.msg);
        PQfinish(c->fconn);
        c->fconn = NULL;
        return -1;
    }
    pthread_mutex_lock(&c->mu);
    c->reconnects++;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* ---- the trainer's lock --------------------------------------------------------------- */

static void set_leader(cluster *c, int yes)
{
    pthread_mutex_lock(&c->mu);
    int was = c->leader;
    c->leader = yes;
    pthread_mutex_unlock(&c->mu);
    if (yes && !was) {
        c->cursor_set = 0; /* follower thread only, like the cursor */
        log_msg(LOG_INFO, "cluster: this replica (%s) now trains", c->replica);
    }
    if (!yes && was)
        log_msg(LOG_WARN, "cluster: this replica (%s) no longer trains", c->replica);
}

/* Takes the lock when free; checks the session that holds it. */
static void check_leadership(cluster *c)
{
    double now = mono_seconds();
    if (now < c->next_leader_check)
        return;
    c->next_leader_check = now + LEADER_CHECK_EVERY;
    emb_err err;
    if (!pg_alive(c->lconn)) {
        set_leader(c, 0);
        PQfinish(c->lconn);
        c->lconn = pg_connect(c->url, "embedd trainer lock", &err);
        if (c->lconn == NULL)
            return;
        /* the server's side too: when this replica's host vanishes, the
         * session (and the lock with it) ends in about 30 s, not in the
         * kernel's default two hours */
        if (pg_exec(c->lconn,
                    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;"
                    " SET tcp_keepalives_count = 4",
                    "keep-alives", &err) != 0)
            cluster_note_error(c, err.msg);
    }
    char sql[96];
    pthread_mutex_lock(&c->mu);
    int leader = c->leader;
    pthread_mutex_unlock(&c->mu);
    if (leader)
        snprintf(sql, sizeof sql, "SELECT true");
    else
        snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d)", CLUSTER_LOCK_TRAINER);
    PGresult *r = pg_query(c->lconn, sql, NULL, "trainer lock", &err);
    if (r == NULL) {
        set_leader(c, 0);
        PQfinish(c->lconn);
        c->lconn = NULL;
        return;
    }
    set_leader(c, PQntuples(r) == 1 && pg_get_bool(r, 0, 0));
    PQclear(r);
}

/* ---- samples ------------------------------------------------------------------------------- */

void cluster_forward_sample(cluster *c, const char *text, size_t len, int source)
{
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return;
    memcpy(copy, text, len);
    copy[len] = '\0';
    pthread_mutex_lock(&c->out_mu);
    if (c->out_n == CLUSTER_OUTBOX) { /* full: the oldest goes */
        free(c->outbox[0].text);
        memmove(c->outbox, c->outbox + 1, sizeof c->outbox[0] * (CLUSTER_OUTBOX - 1));
        c->out_n--;
    }
    c->outbox[c->out_n++] = (outbox_text){copy, len, source};
    pthread_mutex_unlock(&c->out_mu);
}

void cluster_set_sample_sink(cluster *c,
                             void (*fn)(void *ctx, const char *text, size_t len, int source),
                             void *ctx)
{
    pthread_mutex_lock(&c->out_mu);
    c->sink = fn;
    c->sink_ctx = ctx;
    pthread_mutex_unlock(&c->out_mu);
}

/* A non-trainer's outbox goes to embedd_samples (texts PostgreSQL refuses,
 * such as ones with a NUL, are dropped with the batch). */
static void send_samples(cluster *c, outbox_text *texts, int n)
{
    emb_err err;
    int rc = pg_exec(c->fconn, "BEGIN", "begin", &err);
    for (int i = 0; rc == 0 && i < n; i++) {
        pg_params p;
        pg_params_init(&p);
        pg_param_text(&p, texts[i].text, texts[i].len);
        pg_param_i16(&p, texts[i].source);
        pg_param_text(&p, c->replica, strlen(c->replica));
        PGresult *r = pg_query(c->fconn,
                               "INSERT INTO embedd_samples (text, source, replica)"
                               " VALUES ($1, $2, $3)",
                               &p, "samples", &err);
        rc = r != NULL ? 0 : -1;
        PQclear(r);
    }
    if (rc == 0)
        rc = pg_exec(c->fconn, "COMMIT", "commit", &err);
    if (rc != 0) {
        emb_err ignored;
        pg_exec(c->fconn, "ROLLBACK", "rollback", &ignored);
        cluster_note_error(c, err.msg);
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->forwarded += (uint64_t)n;
    pthread_mutex_unlock(&c->mu);
}

/* Where a new trainer starts reading: the newest SAMPLES_REPLAY texts
 * again, which the replica before it may have held in its buffer. */
static int samples_start(cluster *c, emb_err *err)
{
    uint64_t newest;
    if (query_u64(c->fconn, "SELECT coalesce(max(id), 0) FROM embedd_samples", &newest, err) != 0)
        return -1;
    c->sample_cursor = newest > SAMPLES_REPLAY ? newest - SAMPLES_REPLAY : 0;
    c->cursor_set = 1;
    return 0;
}

/* The trainer reads the queue in id order, and now and then trims it to
 * the newest SAMPLES_KEEP texts. Ids come from a sequence, not in commit
 * order: a text committed late behind the cursor is skipped (training
 * texts are a sample, not a log). */
static void receive_samples(cluster *c)
{
    emb_err err;
    if (!c->cursor_set && samples_start(c, &err) != 0) {
        cluster_note_error(c, err.msg);
        return;
    }
    char sql[192];
    snprintf(sql, sizeof sql,
             "SELECT id, text, source FROM embedd_samples WHERE id > $1 ORDER BY id LIMIT %d",
             SAMPLES_PER_ROUND);
    pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)c->sample_cursor);
    PGresult *r = pg_query(c->fconn, sql, &p, "samples", &err);
    if (r == NULL) {
        cluster_note_error(c, err.msg);
        return;
    }
    int n = PQntuples(r);
    pthread_mutex_lock(&c->out_mu);
    for (int i = 0; c->sink != NULL && i < n; i++)
        c->sink(c->sink_ctx, PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1),
                pg_get_i16(r, i, 2));
    pthread_mutex_unlock(&c->out_mu);
    if (n > 0)
        c->sample_cursor = (uint64_t)pg_get_i64(r, n - 1, 0);
    PQclear(r);
    pthread_mutex_lock(&c->mu);
    c->received += (uint64_t)n;
    pthread_mutex_unlock(&c->mu);
    if (c->sample_cursor > SAMPLES_KEEP && mono_seconds() >= c->next_trim) {
        c->next_trim = mono_seconds() + SAMPLES_TRIM_EVERY;
        pg_params_init(&p);
        pg_param_i64(&p, (int64_t)(c->sample_cursor - SAMPLES_KEEP));
        PQclear(pg_query(c->fconn, "DELETE FROM embedd_samples WHERE id <= $1", &p,
                         "trimming samples", &err));
    }
}

/* Every replica queues its texts in PostgreSQL (the trainer's too, so that
 * the queue holds all of them for a trainer that takes over); the trainer
 * reads them back into its sample buffer. */
static void exchange_samples(cluster *c)
{
    double now = mono_seconds();
    if (now < c->next_samples)
        return;
    c->next_samples = now + SAMPLES_EVERY;
    outbox_text texts[CLUSTER_OUTBOX];
    pthread_mutex_lock(&c->out_mu);
    int n = c->out_n;
    memcpy(texts, c->outbox, sizeof texts[0] * (size_t)n);
    c->out_n = 0;
    pthread_mutex_unlock(&c->out_mu);
    if (n > 0)
        send_samples(c, texts, n);
    for (int i = 0; i < n; i++)
        free(texts[i].text);
    if (cluster_is_leader(c))
        receive_samples(c);
}

/* ---- the follower thread ----------------------------------------------------------------- */

/* Until a NOTIFY, a writer's poke, or FOLLOW_WAIT_MS. */
static void wait_for_changes(cluster *c)
{
    struct pollfd fds[2] = {{.fd = c->wake[0], .events = POLLIN},
                            {.fd = pg_alive(c->fconn) ? PQsocket(c->fconn) : -1,
                             .events = POLLIN}};
    poll(fds, 2, FOLLOW_WAIT_MS);
    char buf[64];
    while (read(c->wake[0], buf, sizeof buf) > 0) {
    }
    if (pg_alive(c->fconn)) {
        PQconsumeInput(c->fconn);
        PGnotify *nt;
        while ((nt = PQnotifies(c->fconn)) != NULL)
            PQfreemem(nt);
    }
}

static void *follower_main(void *arg)
{
    cluster *c = arg;
    cluster_applying = 1;
    while (!atomic_load(&c->stop)) {
        if (follower_connect(c) != 0) {
            set_connected(c, 0);
            set_leader(c, 0);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000 * 1000};
            for (int i = 0; i < (int)(RECONNECT_EVERY / 0.2) && !atomic_load(&c->stop); i++)
                nanosleep(&ts, NULL);
            continue;
        }
        emb_err err;
        if (catch_up(c, &err) != 0) {
            cluster_note_error(c, err.msg);
            if (!pg_alive(c->fconn)) {
                set_connected(c, 0);
                continue;
            }
        } else {
            set_connected(c, 1);
        }
        check_leadership(c);
        exchange_samples(c);
        wait_for_changes(c);
    }
    return NULL;
}

int cluster_start(cluster *c, store *st, versions *v, emb_err *err)
{
    c->st = st;
    c->v = v;
    cluster_applying = 1;
    uint64_t head = 0;
    int rc = load_state(c, c->fconn, &head, err);
    cluster_applying = 0;
    if (rc != 0 || listen_changes(c, err) != 0)
        return -1;
    set_applied(c, head, 0, 1);
    c->connected = 1;
    cluster_set_hooks(c);
    c->load_want = c->load_done = c->target;
    if (pthread_create(&c->loader, NULL, loader_main, c) != 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "cannot start the cluster's version loader");
    c->loader_started = 1;
    if (pthread_create(&c->thread, NULL, follower_main, c) != 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "cannot start the cluster follower");
    c->started = 1;
    return 0;
}

void cluster_close(cluster *c)
{
    if (c == NULL)
        return;
    atomic_store(&c->stop, 1);
    ssize_t ignored = write(c->wake[1], "s", 1);
    (void)ignored;
    pthread_mutex_lock(&c->mu);
    pthread_cond_broadcast(&c->load_cv);
    pthread_mutex_unlock(&c->mu);
    if (c->started)
        pthread_join(c->thread, NULL);
    if (c->loader_started)
        pthread_join(c->loader, NULL);
    if (c->st != NULL)
        store_set_remote(c->st, NULL);
    pthread_mutex_lock(&c->mu);
    pthread_cond_broadcast(&c->applied_cv);
    pthread_mutex_unlock(&c->mu);
    cluster_free(c);
}

int cluster_is_leader(cluster *c)
{
    pthread_mutex_lock(&c->mu);
    int yes = c->leader;
    pthread_mutex_unlock(&c->mu);
    return yes;
}

void cluster_get_stats(cluster *c, cluster_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu);
    out->connected = c->connected;
    out->leader = c->leader;
    out->applied_seq = c->applied;
    out->head_seq = c->head > c->applied ? c->head : c->applied;
    int caught_up = c->connected && out->head_seq == c->applied;
    out->lag_seconds = caught_up ? 0.0 : mono_seconds() - c->caught_up_at;
    out->reconnects = c->reconnects;
    out->changes_applied = c->changes;
    out->serving_version = c->serving;
    out->target_version = c->target;
    out->samples_forwarded = c->forwarded;
    out->samples_received = c->received;
    snprintf(out->last_error, sizeof out->last_error, "%s", c->last_error);
    pthread_mutex_unlock(&c->mu);
}
