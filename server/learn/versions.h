/* versions.h: the served model versions. Each published version is an
 * immutable emb_model with a number (1 is the model embedd started from);
 * exactly one is current. Readers take a reference for as long as they use
 * a version (a batch, a query), so a publish or a rollback never pulls a
 * model out from under a forward pass: the old one is freed when its last
 * reference goes.
 *
 * Retention: the current version and the `keep` most recent others stay in
 * memory; an older one is freed once unreferenced (its checkpoint on disk,
 * if any, lets a rollback load it again: versions_adopt). */
#ifndef EMBEDD_VERSIONS_H
#define EMBEDD_VERSIONS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "bert.h"

typedef struct model_version {
    uint32_t id;
    emb_model *model;
    atomic_int refs;          /* readers + 1 while retained by the registry */
    double published_at;      /* unix seconds */
    struct model_version *next;
} model_version;

typedef struct versions versions;

/* A registry whose current version is `model` as version `id` (owned). */
versions *versions_new(emb_model *model, uint32_t id, int keep);
void versions_free(versions *v);    /* every reference must be released */

/* The current version, referenced. Never NULL. */
model_version *versions_current(versions *v);
/* Version id if in memory, referenced; else NULL. */
model_version *versions_get(versions *v, uint32_t id);
void versions_release(versions *v, model_version *mv);
uint32_t versions_current_id(versions *v);
/* Highest id ever published (for the next number). */
uint32_t versions_latest_id(versions *v);

/* Makes model (owned) version id and current. Returns it, referenced. */
model_version *versions_publish(versions *v, emb_model *model, uint32_t id);
/* Adds model (owned) as version id without making it current (a version
 * the store still searches, after a restart). 0, or -1 out of memory. */
int versions_add(versions *v, emb_model *model, uint32_t id);
/* Makes an in-memory version current again (rollback). 0, or -1 if absent. */
int versions_make_current(versions *v, uint32_t id);

/* Raises the highest id ever published to at least id (versions saved on
 * disk but not loaded). */
void versions_note_latest(versions *v, uint32_t id);
/* Ids in memory, newest first, into ids (cap); returns how many. */
int versions_list(versions *v, uint32_t *ids, int cap);

#endif
