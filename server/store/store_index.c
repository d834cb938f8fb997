/* store_index.c: the approximate (HNSW) index of the store's vectors,
 * built on a background thread off the write lock (store.h, "Approximate
 * index").
 *
 * A build copies the rows in chunks under the read lock into a new index
 * while writes go on; every write meanwhile logs its label (blog), and the
 * build replays the log, then swaps the index in under the write lock with
 * the last BUILD_FINAL entries. Writes update a live index in place; a
 * failed update turns the index off (exact search from then on).
 *
 * Threads: store_index_log, _failed, _maintain and _reset run with rw held
 * exclusively (or during open); the build thread takes rw itself;
 * store_index_stop cancels and joins it (store_close). */
#include "store_internal.h"
#include "hnsw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HNSW_SEED 100
#define BUILD_CHUNK 1024           /* rows copied per read-lock hold */
#define BUILD_FINAL 1024           /* log entries left for the swap, under the write lock */
#define BUILD_LOG_MAX (1u << 26)   /* labels logged during one build; past it, abandoned */

/* An index update failed: search stays exact from now on. Caller holds rw
 * exclusively. */
void store_index_failed(store *s, const emb_err *e)
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
void store_index_log(store *s, uint64_t label)
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
            store_index_failed(s, &e);
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
void store_index_maintain(store *s)
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

void store_index_reset(store *s)
{
    if (s->hnsw != NULL) {
        hnsw_free(s->hnsw);
        s->hnsw = NULL;
    }
    /* a build under way copied old vectors: everything counts as written */
    for (long r = 0; r < s->count; r++)
        store_index_log(s, s->rows[r].label);
    store_index_maintain(s);
}

void store_index_stop(store *s)
{
    atomic_store(&s->build_cancel, 1);
    pthread_mutex_lock(&s->build_mu);
    int started = s->build_started;
    pthread_mutex_unlock(&s->build_mu);
    if (started)
        pthread_join(s->build_thread, NULL);
}
