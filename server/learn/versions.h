/* versions.h: the served model versions, in memory and on disk. This
 * module is the one owner of DATA/models: nothing else reads or writes it.
 *
 * In memory: each published version is an immutable emb_model with a number
 * (1 is the model embedd started from); exactly one is current. Readers take
 * a reference for as long as they use a version (a batch, a query), so a
 * publish or a rollback never pulls a model out from under a forward pass:
 * the old one is freed when its last reference goes.
 *
 * Retention: the current version and the `keep` most recent others stay in
 * memory; an older one is freed once unreferenced (its checkpoint on disk,
 * if any, lets a rollback load it again).
 *
 * On disk (with --data):
 *   DATA/models/v{n}/   a published version n >= 2 (a full model directory,
 *                       written by versions_save before it is published);
 *   DATA/models/current the number of the current version, replaced
 *                       atomically at each publish and rollback, so that a
 *                       restart comes back on it.
 * versions_open reads them, versions_save writes v{n}; every change of the
 * current version (versions_publish_saved, versions_rollback) goes through
 * one hand-over: make it current, write `current`, call the on-change hook.
 * The hook is how the item store is moved to the new version (the learner
 * sets it to start its re-embedder, reembed.h); versions_align calls it at
 * start-up when the store searches an older version.
 *
 * Threads: every function is safe from any thread. Hand-overs are
 * serialised among themselves; the hooks run on the caller's thread,
 * inside that serialisation, and must not call back into the hand-over
 * functions. versions_save touches no shared state (it runs on the
 * learner's saving thread). */
#ifndef EMBEDD_VERSIONS_H
#define EMBEDD_VERSIONS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "base/error.h"
#include "bert.h"

typedef struct model_version {
    uint32_t id;
    emb_model *model;
    atomic_int refs;          /* readers + 1 while retained by the registry */
    double published_at;      /* unix seconds */
    struct model_version *next;
} model_version;

typedef struct versions versions;

/* What a hand-over calls. Both may be NULL. */
typedef struct versions_hooks {
    /* The current version is now id (or, from versions_align, the store
     * must move to it): start re-embedding. 0, or -1 with err. */
    int (*on_change)(void *ctx, uint32_t id, emb_err *err);
    /* A failure that does not undo the change (DATA/models/current not
     * written, or on_change failing after a publish): what and why. */
    void (*report)(void *ctx, const char *what, const char *msg);
    void *ctx;
} versions_hooks;

/* A registry in memory only, whose current version is `model` as version
 * `id` (owned). */
versions *versions_new(emb_model *model, uint32_t id, int keep);
/* The registry for `embedd serve`: with data_dir (may be NULL: nothing on
 * disk), the version DATA/models/current names (else the latest saved one)
 * is current, loaded in base's precision; without one, or when there is
 * none, a copy of base as version 1. Numbering goes on after the highest
 * saved version. base (version 1 as loaded) and base_dir (its directory:
 * tokenizer files for each save) are borrowed and outlive the registry.
 * NULL with err. */
versions *versions_open(const char *data_dir, const char *base_dir, const emb_model *base,
                        int keep, emb_err *err);
void versions_free(versions *v);    /* every reference must be released */
/* Sets the hooks (copied); call before any hand-over can happen. */
void versions_set_hooks(versions *v, const versions_hooks *h);

/* The current version, referenced. Never NULL. */
model_version *versions_current(versions *v);
/* Version id if in memory, referenced; else NULL. */
model_version *versions_get(versions *v, uint32_t id);
void versions_release(versions *v, model_version *mv);
uint32_t versions_current_id(versions *v);
/* Highest id ever published or saved (the next one is this + 1). */
uint32_t versions_latest_id(versions *v);
/* Ids in memory, newest first, into ids (cap); returns how many. */
int versions_list(versions *v, uint32_t *ids, int cap);

/* Writes m (the model block) and head (the MLM head floats, or NULL) as
 * DATA/models/v{id}; a no-op without --data. Does not publish. Any thread;
 * the slow part of a publish, so the learner runs it off the compute
 * thread. 0, or -1 with err. */
int versions_save(versions *v, uint32_t id, const emb_model *m, const float *head,
                  emb_err *err);
/* The hand-over after versions_save: m (owned, freed on failure) becomes
 * version id and current, `current` names it, on_change(id) runs (its
 * failure goes to report as "re-embedding"). 0, or -1 with err when it
 * was not published (out of memory). */
int versions_publish_saved(versions *v, emb_model *m, uint32_t id, emb_err *err);
/* Makes version id current again, from memory or DATA/models/v{id}, with
 * the same hand-over. -1 with err: EMB_ERR_NOT_FOUND when id is neither in
 * memory nor on disk, the loader's kind when it is there but unreadable,
 * EMB_ERR_NO_MEMORY, or on_change's error (the version is then current,
 * but the store is not moving to it). */
int versions_rollback(versions *v, uint32_t id, emb_err *err);
/* At start-up: the store searches version `have` (0: it has no text item
 * yet). Keeps `have` in memory (loading it from disk, or copying base for
 * 1) so that searches can embed their queries with it, then calls
 * on_change(current) when have is not current. 0, or -1 with err. */
int versions_align(versions *v, uint32_t have, emb_err *err);

#endif
