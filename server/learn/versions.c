/* versions.c: see versions.h. One mutex guards the list; references are
 * atomic so that releasing is cheap. */
#include "versions.h"

#include <stdlib.h>
#include <time.h>

struct versions {
    pthread_mutex_t lock;
    model_version *head;      /* newest first */
    model_version *current;
    uint32_t latest;
    int keep;
};

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static model_version *version_new(emb_model *model, uint32_t id)
{
    model_version *mv = calloc(1, sizeof *mv);
    if (mv == NULL)
        return NULL;
    mv->id = id;
    mv->model = model;
    atomic_init(&mv->refs, 1); /* the registry's */
    mv->published_at = unix_now();
    return mv;
}

static void version_unref(model_version *mv)
{
    if (atomic_fetch_sub(&mv->refs, 1) == 1) {
        emb_model_free(mv->model);
        free(mv);
    }
}

versions *versions_new(emb_model *model, uint32_t id, int keep)
{
    versions *v = calloc(1, sizeof *v);
    model_version *mv = version_new(model, id);
    if (v == NULL || mv == NULL) {
        free(v);
        free(mv);
        return NULL;
    }
    pthread_mutex_init(&v->lock, NULL);
    v->head = v->current = mv;
    v->latest = id;
    v->keep = keep < 1 ? 1 : keep;
    return v;
}

void versions_free(versions *v)
{
    if (v == NULL)
        return;
    model_version *mv = v->head;
    while (mv != NULL) {
        model_version *next = mv->next;
        version_unref(mv);
        mv = next;
    }
    pthread_mutex_destroy(&v->lock);
    free(v);
}

model_version *versions_current(versions *v)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = v->current;
    atomic_fetch_add(&mv->refs, 1);
    pthread_mutex_unlock(&v->lock);
    return mv;
}

model_version *versions_get(versions *v, uint32_t id)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = v->head;
    while (mv != NULL && mv->id != id)
        mv = mv->next;
    if (mv != NULL)
        atomic_fetch_add(&mv->refs, 1);
    pthread_mutex_unlock(&v->lock);
    return mv;
}

void versions_release(versions *v, model_version *mv)
{
    (void)v;
    if (mv != NULL)
        version_unref(mv);
}

uint32_t versions_current_id(versions *v)
{
    pthread_mutex_lock(&v->lock);
    uint32_t id = v->current->id;
    pthread_mutex_unlock(&v->lock);
    return id;
}

uint32_t versions_latest_id(versions *v)
{
    pthread_mutex_lock(&v->lock);
    uint32_t id = v->latest;
    pthread_mutex_unlock(&v->lock);
    return id;
}

/* Drops the registry's reference to versions beyond the newest `keep`
 * non-current ones. Called with the lock held. */
static void trim(versions *v)
{
    int kept = 0;
    model_version **link = &v->head;
    while (*link != NULL) {
        model_version *mv = *link;
        if (mv == v->current || kept < v->keep) {
            kept += mv != v->current;
            link = &mv->next;
            continue;
        }
        *link = mv->next;
        version_unref(mv);
    }
}

model_version *versions_publish(versions *v, emb_model *model, uint32_t id)
{
    model_version *mv = version_new(model, id);
    if (mv == NULL)
        return NULL;
    atomic_fetch_add(&mv->refs, 1); /* the caller's */
    pthread_mutex_lock(&v->lock);
    mv->next = v->head;
    v->head = mv;
    v->current = mv;
    if (id > v->latest)
        v->latest = id;
    trim(v);
    pthread_mutex_unlock(&v->lock);
    return mv;
}

int versions_add(versions *v, emb_model *model, uint32_t id)
{
    model_version *mv = version_new(model, id);
    if (mv == NULL)
        return -1;
    pthread_mutex_lock(&v->lock);
    mv->next = v->head;
    v->head = mv;
    if (id > v->latest)
        v->latest = id;
    trim(v);
    pthread_mutex_unlock(&v->lock);
    return 0;
}

int versions_make_current(versions *v, uint32_t id)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = v->head;
    while (mv != NULL && mv->id != id)
        mv = mv->next;
    if (mv != NULL)
        v->current = mv;
    pthread_mutex_unlock(&v->lock);
    return mv != NULL ? 0 : -1;
}

void versions_note_latest(versions *v, uint32_t id)
{
    pthread_mutex_lock(&v->lock);
    if (id > v->latest)
        v->latest = id;
    pthread_mutex_unlock(&v->lock);
}

int versions_list(versions *v, uint32_t *ids, int cap)
{
    pthread_mutex_lock(&v->lock);
    int n = 0;
    for (model_version *mv = v->head; mv != NULL && n < cap; mv = mv->next)
        ids[n++] = mv->id;
    pthread_mutex_unlock(&v->lock);
    return n;
}
