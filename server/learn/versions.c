/* versions.c: see versions.h. One mutex guards the list; references are
 * atomic so that releasing is cheap. A second one serialises hand-overs
 * (publish, rollback, align), so that `current` on disk and the hook's
 * calls follow the order of the changes. Nothing slow (loading or saving a
 * model) runs under either. */
#include "versions.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/fileio.h"
#include "checkpoint.h"

struct versions {
    pthread_mutex_t lock;
    model_version *head;      /* newest first */
    model_version *current;
    uint32_t latest;
    int keep;
    /* set at open, read-only after */
    char *data_dir;           /* NULL: nothing on disk */
    const char *base_dir;     /* borrowed */
    const emb_model *base;    /* borrowed; NULL for versions_new */
    versions_hooks hooks;
    pthread_mutex_t change;   /* serialises hand-overs */
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
    pthread_mutex_init(&v->change, NULL);
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
    pthread_mutex_destroy(&v->change);
    free(v->data_dir);
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

static model_version *versions_publish(versions *v, emb_model *model, uint32_t id)
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

static int versions_add(versions *v, emb_model *model, uint32_t id)
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

static int versions_make_current(versions *v, uint32_t id)
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

static void versions_note_latest(versions *v, uint32_t id)
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

void versions_set_hooks(versions *v, const versions_hooks *h)
{
    pthread_mutex_lock(&v->change);
    v->hooks = *h;
    pthread_mutex_unlock(&v->change);
}

/* ---- DATA/models ------------------------------------------------------------------ */

/* The highest n with DATA/models/vN (a published version), or 0. */
static uint32_t latest_saved_version(const char *data_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models", data_dir);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    uint32_t best = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        unsigned n = 0;
        char tail;
        if (sscanf(e->d_name, "v%u%c", &n, &tail) == 1 && n > best)
            best = n;
    }
    closedir(d);
    return best;
}

/* The version DATA/models/current names (written at each publish and
 * rollback), or the latest saved one. 1 means the loaded model. */
static uint32_t current_saved_version(const char *data_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models/current", data_dir);
    FILE *fp = fopen(path, "r");
    unsigned id = 0;
    if (fp != NULL) {
        if (fscanf(fp, "%u", &id) != 1)
            id = 0;
        fclose(fp);
    }
    if (id == 1)
        return 1;
    if (id > 1) {
        snprintf(path, sizeof path, "%s/models/v%u/config.json", data_dir, id);
        if (access(path, R_OK) == 0)
            return id;
    }
    return latest_saved_version(data_dir);
}

/* Version id from DATA/models/vN, packed in the served model's precision;
 * a copy of base for 1. */
static emb_model *load_saved_version(const char *data_dir, const emb_model *base, uint32_t id,
                                     emb_err *err)
{
    if (id == 1)
        return emb_model_clone(base, err);
    if (data_dir == NULL) {
        emb_fail_as(err, EMB_ERR_NOT_FOUND, "model version %u: no data directory", id);
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/models/v%u", data_dir, id);
    return emb_model_load_precision(path, base->precision, err);
}

versions *versions_open(const char *data_dir, const char *base_dir, const emb_model *base,
                        int keep, emb_err *err)
{
    uint32_t id = data_dir != NULL ? current_saved_version(data_dir) : 0;
    if (id == 0)
        id = 1;
    emb_model *cur = load_saved_version(data_dir, base, id, err);
    if (cur == NULL)
        return NULL;
    versions *v = versions_new(cur, id, keep);
    if (v == NULL) {
        emb_model_free(cur);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    v->base = base;
    v->base_dir = base_dir;
    if (data_dir != NULL && (v->data_dir = strdup(data_dir)) == NULL) {
        versions_free(v);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    /* numbering goes on after every saved version, whichever is current */
    uint32_t latest = data_dir != NULL ? latest_saved_version(data_dir) : 0;
    if (latest > id)
        versions_note_latest(v, latest);
    if (id > 1)
        fprintf(stderr, "embedd: serving model version %u from %s/models\n", id, data_dir);
    return v;
}

int versions_save(versions *v, uint32_t id, const emb_model *m, const float *head,
                  emb_err *err)
{
    if (v->data_dir == NULL)
        return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models", v->data_dir);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/models/v%u", v->data_dir, id);
    return emb_save_model_dir(dir, &m->cfg, m->params, head, v->base_dir, EMB_DT_F32, NULL, err);
}

static void report(versions *v, const char *what, const char *msg)
{
    if (v->hooks.report != NULL)
        v->hooks.report(v->hooks.ctx, what, msg);
}

/* DATA/models/current names the current version, so that a restart comes
 * back on it (after a rollback too). Replaced atomically; a failure is
 * reported and changes nothing else. */
static void write_current(versions *v, uint32_t id)
{
    if (v->data_dir == NULL)
        return;
    char dir[4096], path[4200], line[16];
    snprintf(dir, sizeof dir, "%s/models", v->data_dir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/current", dir);
    int n = snprintf(line, sizeof line, "%u\n", id);
    emb_err err;
    if (emb_write_file_atomic(path, line, (size_t)n, &err) != 0)
        report(v, "saving the current version", err.msg);
}

/* The one hand-over, with v->change held: `current` on disk, then the
 * hook. Returns the hook's result. */
static int hand_over(versions *v, uint32_t id, emb_err *err)
{
    write_current(v, id);
    if (v->hooks.on_change == NULL)
        return 0;
    return v->hooks.on_change(v->hooks.ctx, id, err);
}

int versions_publish_saved(versions *v, emb_model *m, uint32_t id, emb_err *err)
{
    pthread_mutex_lock(&v->change);
    model_version *mv = versions_publish(v, m, id);
    if (mv == NULL) {
        pthread_mutex_unlock(&v->change);
        emb_model_free(m);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    versions_release(v, mv);
    emb_err herr;
    if (hand_over(v, id, &herr) != 0)
        report(v, "re-embedding", herr.msg);
    pthread_mutex_unlock(&v->change);
    return 0;
}

/* Version id from DATA/models/v{id}, or NULL with err. */
static emb_model *load_for_rollback(versions *v, uint32_t id, emb_err *err)
{
    char dir[4096];
    struct stat stt;
    if (v->data_dir != NULL)
        snprintf(dir, sizeof dir, "%s/models/v%u", v->data_dir, id);
    if (v->data_dir == NULL || v->base == NULL || id < 2 || stat(dir, &stt) != 0) {
        emb_fail_as(err, EMB_ERR_NOT_FOUND,
                    "model version %u is neither in memory nor on disk", id);
        return NULL;
    }
    emb_err lerr;
    emb_model *m = emb_model_load_precision(dir, v->base->precision, &lerr);
    if (m == NULL)
        emb_fail_as(err, lerr.kind, "model version %u: %s", id, lerr.msg);
    return m;
}

int versions_rollback(versions *v, uint32_t id, emb_err *err)
{
    /* the common case: still in memory */
    pthread_mutex_lock(&v->change);
    if (versions_make_current(v, id) == 0) {
        int rc = hand_over(v, id, err);
        pthread_mutex_unlock(&v->change);
        return rc;
    }
    pthread_mutex_unlock(&v->change);
    /* loading takes a while: not under the lock */
    emb_model *m = load_for_rollback(v, id, err);
    if (m == NULL)
        return -1;
    pthread_mutex_lock(&v->change);
    int rc;
    if (versions_make_current(v, id) == 0) { /* loaded meanwhile by another rollback */
        emb_model_free(m);
        rc = hand_over(v, id, err);
    } else {
        model_version *mv = versions_publish(v, m, id);
        if (mv == NULL) {
            emb_model_free(m);
            rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        } else {
            versions_release(v, mv);
            rc = hand_over(v, id, err);
        }
    }
    pthread_mutex_unlock(&v->change);
    return rc;
}

int versions_align(versions *v, uint32_t have, emb_err *err)
{
    pthread_mutex_lock(&v->change);
    uint32_t want = versions_current_id(v);
    int rc = 0;
    if (have != want && have != 0) {
        model_version *mv = versions_get(v, have);
        if (mv != NULL) {
            versions_release(v, mv);
        } else {
            emb_model *m = load_saved_version(v->data_dir, v->base, have, err);
            if (m == NULL) {
                rc = -1;
            } else if (versions_add(v, m, have) != 0) {
                emb_model_free(m);
                rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            }
        }
    }
    /* have == 0: no text item yet, the store adopts the current version */
    if (rc == 0 && have != want && v->hooks.on_change != NULL)
        rc = v->hooks.on_change(v->hooks.ctx, want, err);
    pthread_mutex_unlock(&v->change);
    return rc;
}
