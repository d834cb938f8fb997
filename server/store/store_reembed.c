/* store_reembed.c: moving the item store to a new model version (see
 * store_reembed.h).
 *
 * State (store_internal.h, under rw): vec_version is the version searched;
 * target_version the one being moved to. While they differ, shadow (cap,
 * dim) holds the new vectors and shadow_ok which rows have one; rows move
 * and grow together with the matrix (store.c). A row is pending when it
 * has a text, is not a client vector (version 0) and lacks a target vector:
 * while moving, !shadow_ok; otherwise, version != vec_version (an upsert
 * embedded with an older version that raced a switch). The switch copies
 * the shadow into the matrix under the write lock, drops the approximate
 * index (rebuilt in the background; search is exact meanwhile) and then
 * snapshots, so that a restart finds the new vectors. */
#include "store_reembed.h"

#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

/* 1 when row r still needs a vector of the target version. Caller holds rw. */
static int row_pending(const store *s, long r)
{
    const store_row *row = &s->rows[r];
    if (row->text == NULL || row->version == 0)
        return 0;
    if (s->target_version != s->vec_version)
        return !s->shadow_ok[r];
    return (uint32_t)row->version != s->vec_version;
}

uint32_t store_vectors_version(store *s)
{
    pthread_rwlock_rdlock(&s->rw);
    uint32_t v = s->vec_version;
    pthread_rwlock_unlock(&s->rw);
    return v;
}

uint32_t store_target_version(store *s)
{
    pthread_rwlock_rdlock(&s->rw);
    uint32_t v = s->target_version;
    pthread_rwlock_unlock(&s->rw);
    return v;
}

int store_reembed_pending(store *s)
{
    pthread_rwlock_rdlock(&s->rw);
    int p = s->target_version != s->vec_version || s->reembed_dirty;
    pthread_rwlock_unlock(&s->rw);
    return p;
}

static void shadow_free(store *s)
{
    free(s->shadow);
    free(s->shadow_ok);
    s->shadow = NULL;
    s->shadow_ok = NULL;
    s->shadow_cap = 0;
}

int store_reembed_start(store *s, uint32_t version, emb_err *err)
{
    if (s->remote.reembed_start != NULL &&
        s->remote.reembed_start(s->remote.ctx, version, err) != 0)
        return -1;
    int rc = 0;
    pthread_rwlock_wrlock(&s->rw);
    if (s->vec_version == 0) {
        /* no text item yet: adopt the version at once */
        s->vec_version = s->target_version = version;
    } else if (version != s->target_version) {
        shadow_free(s);
        s->target_version = version;
        if (version != s->vec_version)
            rc = store_shadow_reserve(s, err);
        if (rc != 0)
            s->target_version = s->vec_version;
        s->reembed_cursor = 0;
        s->reembed_dirty = 1;
    }
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

int store_reembed_take(store *s, int max, store_text_item *out, emb_err *err)
{
    int n = 0;
    pthread_rwlock_wrlock(&s->rw); /* moves the cursor */
    if (!s->reembed_dirty) {
        pthread_rwlock_unlock(&s->rw);
        return 0;
    }
    long seen = 0;
    while (n < max && seen < s->count) {
        if (s->reembed_cursor >= s->count)
            s->reembed_cursor = 0;
        long r = s->reembed_cursor++;
        seen++;
        if (!row_pending(s, r))
            continue;
        const store_row *row = &s->rows[r];
        char *text = malloc((size_t)row->text_len + 1);
        if (text == NULL) {
            store_text_items_free(out, n);
            pthread_rwlock_unlock(&s->rw);
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        }
        memcpy(text, row->text, row->text_len);
        text[row->text_len] = '\0';
        out[n].label = row->label;
        out[n].gen = row->gen;
        out[n].text = text;
        out[n].len = row->text_len;
        n++;
    }
    if (n == 0 && s->target_version == s->vec_version)
        s->reembed_dirty = 0; /* a full pass found nothing */
    pthread_rwlock_unlock(&s->rw);
    return n;
}

/* Row of a taken item if it is unchanged since the take, else -1. */
static long taken_row(const store *s, const store_text_item *it)
{
    if (it->label >= s->label_cap || s->label_row[it->label] == 0)
        return -1;
    long r = (long)s->label_row[it->label] - 1;
    return s->rows[r].gen == it->gen ? r : -1;
}

/* store_reembed_put with a remote: the ids and texts of the items still
 * unchanged go to it, with their vectors. */
static int put_remote(store *s, const store_text_item *items, int n, const float *vecs,
                      uint32_t version, emb_err *err)
{
    store_id *ids = calloc((size_t)n + 1, sizeof *ids);
    const char **texts = calloc((size_t)n + 1, sizeof *texts);
    size_t *lens = calloc((size_t)n + 1, sizeof *lens);
    char **names = calloc((size_t)n + 1, sizeof *names);
    float *kept = malloc(sizeof(float) * ((size_t)n * (size_t)s->dim + 1));
    int m = 0, rc = -1, moving = 0;
    if (ids == NULL || texts == NULL || lens == NULL || names == NULL || kept == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    pthread_rwlock_rdlock(&s->rw);
    moving = s->target_version != s->vec_version;
    if (version != s->target_version) {
        pthread_rwlock_unlock(&s->rw);
        rc = 0;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        long r = taken_row(s, &items[i]);
        if (r < 0)
            continue;
        ids[m] = store_row_id(&s->rows[r]);
        if (ids[m].kind == STORE_ID_STR) {
            names[m] = strndup(ids[m].str, ids[m].len);
            if (names[m] == NULL)
                break;
            ids[m].str = names[m];
        }
        texts[m] = items[i].text;
        lens[m] = items[i].len;
        memcpy(kept + (size_t)m * s->dim, vecs + (size_t)i * s->dim, sizeof(float) * (size_t)s->dim);
        m++;
    }
    pthread_rwlock_unlock(&s->rw);
    rc = m == 0 ? 0
                : s->remote.reembed_put(s->remote.ctx, ids, texts, lens, m, kept, version, moving,
                                        err);
out:
    for (int i = 0; names != NULL && i < n; i++)
        free(names[i]);
    free(ids);
    free(texts);
    free(lens);
    free(names);
    free(kept);
    return rc;
}

int store_reembed_put(store *s, const store_text_item *items, int n, const float *vecs,
                      uint32_t version, emb_err *err)
{
    if (s->remote.reembed_put != NULL)
        return put_remote(s, items, n, vecs, version, err);
    const size_t bytes = sizeof(float) * (size_t)s->dim;
    pthread_rwlock_wrlock(&s->rw);
    if (version != s->target_version) {
        pthread_rwlock_unlock(&s->rw);
        return 0; /* a newer move began: these vectors are of no use */
    }
    for (int i = 0; i < n; i++) {
        long r = taken_row(s, &items[i]);
        if (r < 0)
            continue;
        const float *v = vecs + (size_t)i * (size_t)s->dim;
        if (s->target_version != s->vec_version) {
            memcpy(s->shadow + (size_t)r * s->dim, v, bytes);
            s->shadow_ok[r] = 1;
        } else {
            store_row_set_vector(s, r, v, (int32_t)version);
        }
    }
    pthread_rwlock_unlock(&s->rw);
    (void)err;
    return 0;
}

/* 1 when some row still needs a target vector. Caller holds rw. */
static int any_pending(const store *s)
{
    for (long r = 0; r < s->count; r++) {
        if (row_pending(s, r))
            return 1;
    }
    return 0;
}

/* Copies the shadow into the matrix (rows that have one) and searches the
 * target version from now on. Caller holds rw exclusively. */
static void switch_locked(store *s)
{
    const size_t bytes = sizeof(float) * (size_t)s->dim;
    for (long r = 0; r < s->count; r++) {
        if (s->rows[r].text == NULL || s->rows[r].version == 0 || !s->shadow_ok[r])
            continue;
        memcpy(s->matrix + (size_t)r * s->dim, s->shadow + (size_t)r * s->dim, bytes);
        s->rows[r].version = (int32_t)s->target_version;
    }
    s->vec_version = s->target_version;
    shadow_free(s);
    s->reembed_dirty = 1; /* catch upserts that raced the switch */
    store_index_reset(s);
}

/* store_reembed_finish with a remote: the system of record decides, and
 * its follower switches this store (store_reembed_switch). */
static int finish_remote(store *s, emb_err *err)
{
    pthread_rwlock_rdlock(&s->rw);
    uint32_t target = s->target_version;
    int idle = target == s->vec_version, pending = !idle && any_pending(s);
    pthread_rwlock_unlock(&s->rw);
    if (idle || pending)
        return 0;
    return s->remote.reembed_finish(s->remote.ctx, target, err);
}

int store_reembed_finish(store *s, emb_err *err)
{
    if (s->remote.reembed_finish != NULL)
        return finish_remote(s, err);
    pthread_rwlock_wrlock(&s->rw);
    if (s->target_version == s->vec_version || any_pending(s)) {
        pthread_rwlock_unlock(&s->rw);
        return 0;
    }
    switch_locked(s);
    pthread_rwlock_unlock(&s->rw);
    if (s->dir != NULL && store_snapshot(s, err) != 0)
        return -1;
    return 1;
}

void store_text_items_free(store_text_item *items, int n)
{
    for (int i = 0; i < n; i++)
        free(items[i].text);
}

void store_reembed_progress(store *s, long *done, long *total)
{
    long d = 0, t = 0;
    pthread_rwlock_rdlock(&s->rw);
    for (long r = 0; r < s->count; r++) {
        if (s->rows[r].text == NULL || s->rows[r].version == 0)
            continue;
        t++;
        d += !row_pending(s, r);
    }
    pthread_rwlock_unlock(&s->rw);
    *done = d;
    *total = t;
}

void store_reembed_adopt(store *s, uint32_t version)
{
    pthread_rwlock_wrlock(&s->rw);
    shadow_free(s);
    s->vec_version = s->target_version = version;
    s->reembed_cursor = 0;
    s->reembed_dirty = 1;
    pthread_rwlock_unlock(&s->rw);
}

void store_reembed_put_ids(store *s, const store_id *ids, int n, const float *vecs,
                           uint32_t version)
{
    pthread_rwlock_wrlock(&s->rw);
    if (version == s->target_version && s->target_version != s->vec_version) {
        for (int i = 0; i < n; i++) {
            long r = store_find(s, &ids[i]);
            emb_err e;
            if (r >= 0 && store_normalise(vecs + (size_t)i * s->dim,
                                          s->shadow + (size_t)r * s->dim, s->dim, &e) == 0)
                s->shadow_ok[r] = 1;
        }
    }
    pthread_rwlock_unlock(&s->rw);
}

int store_reembed_switch(store *s, uint32_t version)
{
    pthread_rwlock_wrlock(&s->rw);
    int moving = s->target_version == version && s->vec_version != version;
    if (moving)
        switch_locked(s);
    pthread_rwlock_unlock(&s->rw);
    return moving;
}
