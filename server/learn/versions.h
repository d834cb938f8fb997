/* versions.h: the served model versions, in memory and on disk. This
 * module is the one owner of DATA/models: nothing else reads or writes it.
 *
 * In memory: each version is an immutable emb_model with a number (1 is
 * the model embedd started from, numbers are never reused); exactly one is
 * current. Readers take a reference for as long as they use a version (a
 * batch, a query), so a publish or a rollback never pulls a model out from
 * under a forward pass: the old one is freed when its last reference goes.
 *
 * Retention (--keep-versions N): the current version and the N - 1 newest
 * others (by number) stay in memory and are servable (clients pin them:
 * versions_pin); so does a pending version, the version the item store
 * searches while it re-embeds (versions_align), and every version the
 * in-use callback names (versions_set_in_use: the re-embedder sets it to
 * ask every store of the model's dimension, collections.h, whether it
 * searches or moves to a version), so a query is always embedded with the
 * version its store searches. A version kept that way is dropped at the
 * next trim (the next version made or loaded) after its last store moved. Any other version below
 * the latest number is retired: pinning it is EMB_ERR_GONE (410), a number
 * never made is EMB_ERR_NOT_FOUND (404), both with the servable list.
 *
 * Publish mode: a candidate that passed the gate (versions_candidate) is
 * made current at once (VERSIONS_PUBLISH_AUTO), or saved as the one
 * pending version (VERSIONS_PUBLISH_MANUAL) that versions_promote makes
 * current; a newer candidate replaces an unpromoted one (which is retired).
 *
 * On disk (with --data):
 *   DATA/models/v{n}/   version n >= 2 (a full model directory, written by
 *                       versions_save in the served precision: F16 or BF16
 *                       when the loaded model's file is, else F32), with
 *                       version.json: the size and CRC-32C of every file,
 *                       checked at every load (a mismatch is EMB_ERR_IO
 *                       naming the file); saved into v{n}.tmp-*-stage and
 *                       renamed, so a v{n} without version.json (or, from
 *                       older builds, config.json) is incomplete: moved
 *                       aside to v{n}.incomplete-<time> at open;
 *   DATA/models/current the number of the current version;
 *   DATA/models/pending the pending version's number (0: none);
 *   DATA/models/latest  the highest number ever made (so that a pruned
 *                       number is never made again);
 * each replaced atomically. Directories of retired versions are deleted
 * (never the current or the pending one, nor one that failed to load at
 * open), and so are stale temporary directories (v{n}.tmp-*, left by a
 * kill during a save) at open.
 * versions_open reads them; every change of the current version
 * (versions_candidate in auto mode, versions_promote, versions_rollback)
 * goes through one hand-over: write `current` (or `pending`), then make
 * it current in memory, then call the on-change hook. When the write
 * fails the change is an error and nothing switches: a version is never
 * served, nor a change acknowledged, that a restart would undo. Tests
 * make the write fail with EMBEDD_FAULT_FILE_REPLACE=current (names,
 * comma separated: current, pending, latest, version.json). The hook is how the item store is moved to the new
 * version (the learner sets it to start its re-embedder, reembed.h);
 * versions_align calls it at start-up when the store searches an older
 * version.
 *
 * Events: each change (a pending version, a publish, a promotion, a
 * rollback) is numbered and kept in a ring of the last VERSIONS_EVENTS;
 * versions_events reads them, and the listener (the HTTP feed of
 * GET /train/versions/stream) is told after each one.
 *
 * Threads: every function is safe from any thread. Hand-overs are
 * serialised among themselves; the hooks and the listener run on the
 * caller's thread, inside that serialisation, and must not call back into
 * the hand-over functions (the listener must not block). versions_save
 * touches no shared state (it runs on the learner's saving thread). */
#ifndef EMBEDD_VERSIONS_H
#define EMBEDD_VERSIONS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "base/error.h"
#include "common/strbuf.h"
#include "bert.h"

typedef struct model_version {
    uint32_t id;
    emb_model *model;
    atomic_int refs;          /* readers + 1 while retained by the registry */
    double published_at;      /* unix seconds it was made (or loaded) */
    int pending;              /* waits for versions_promote (under the registry's lock) */
    struct model_version *next;
} model_version;

typedef struct versions versions;

typedef enum versions_publish {
    VERSIONS_PUBLISH_MANUAL = 0, /* candidates wait for versions_promote */
    VERSIONS_PUBLISH_AUTO,       /* candidates become current at once */
} versions_publish;

/* One change, as the feed reports it. */
typedef enum versions_event_kind {
    VERSIONS_EV_PENDING = 0,  /* id saved, waiting for a promotion */
    VERSIONS_EV_PUBLISH,      /* id made current by the learner (auto mode) */
    VERSIONS_EV_PROMOTE,      /* id made current by versions_promote */
    VERSIONS_EV_ROLLBACK,     /* id made current again by versions_rollback */
} versions_event_kind;

#define VERSIONS_EVENTS 64

typedef struct versions_event {
    uint64_t seq;             /* 1, 2, ... in order */
    versions_event_kind kind;
    uint32_t id;
    uint32_t previous;        /* the current version before (for PENDING: the current one) */
    double at;                /* unix seconds */
} versions_event;

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
 * disk), the version DATA/models/current names (else the newest complete
 * saved one) is current, verified and loaded in base's precision; without
 * one, or when there is none, a copy of base as version 1. When that
 * version is missing or fails its checksums, NULL with err naming the
 * file and the saved versions: never silently another version. Numbering goes on after the highest
 * saved version. base (version 1 as loaded) and base_dir (its directory:
 * tokenizer files for each save) are borrowed and outlive the registry.
 * NULL with err. */
versions *versions_open(const char *data_dir, const char *base_dir, const emb_model *base,
                        int keep, emb_err *err);
void versions_free(versions *v);    /* every reference must be released */
/* Sets the hooks (copied); call before any hand-over can happen. */
void versions_set_hooks(versions *v, const versions_hooks *h);
/* fn(ctx, id) says whether a store still searches (or moves to) version
 * id; such a version is never dropped from memory. fn runs under the
 * registry's lock and must not call back into it (fn NULL: none). Waits
 * for a trim in progress, so ctx may be freed once this returns with NULL. */
void versions_set_in_use(versions *v, int (*fn)(void *ctx, uint32_t id), void *ctx);
/* Puts version id in memory (from disk, or base for 1) when it is not
 * there, e.g. the version a collection searches at start-up; it stays
 * while the in-use callback names it. 0, or -1 with err. */
int versions_keep(versions *v, uint32_t id, emb_err *err);
/* The publish mode (default manual). */
void versions_set_publish(versions *v, versions_publish mode);
versions_publish versions_get_publish(versions *v);
/* Called after each event (fn NULL: none); fn must return quickly. Waits
 * for a call in progress, so ctx may be freed once this returns. */
void versions_set_listener(versions *v, void (*fn)(void *ctx), void *ctx);

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
/* The pending version's id, 0 when none. */
uint32_t versions_pending_id(versions *v);

/* A client's pinned version: referenced into *out, or -1 with err:
 * EMB_ERR_NOT_FOUND for a number never made (0 included), EMB_ERR_GONE for
 * a retired one; the message lists the servable versions. */
int versions_pin(versions *v, uint32_t id, model_version **out, emb_err *err);
/* The servable versions as text, "4 (current), 5 (pending), 3, 2". */
void versions_available(versions *v, char *buf, size_t cap);
/* Events with seq > after, oldest first, into out (cap); returns how many.
 * *last gets the newest seq (0: none yet). Older ones than the ring holds
 * are skipped. */
int versions_events(versions *v, uint64_t after, versions_event *out, int cap, uint64_t *last);
const char *versions_event_name(versions_event_kind kind);
/* GET /train/versions's body: {"current": n, "pending": n|null, "latest":
 * n, "keep": n, "publish": "auto"|"manual", "versions": [{"id", "status":
 * current|pending|servable|retired, "created" (unix s|null), "parent"
 * (n|null), "gate" (text|null)}, ...]} newest first, at most 100. */
void versions_list_json(versions *v, strbuf *b);

/* Writes m (the model block) and head (the MLM head floats, or NULL) as
 * DATA/models/v{id}, with its version.json, staged and renamed; a no-op
 * without --data. Does not publish. Any thread;
 * the slow part of a publish, so the learner runs it off the compute
 * thread. 0, or -1 with err. */
int versions_save(versions *v, uint32_t id, emb_model *m, const float *head,
                  emb_err *err);
/* The hand-over of a saved candidate (m owned, freed on failure), made
 * while version `parent` was current, with the gate's verdict `gate` (may
 * be NULL): by the publish mode, current at once (as versions_publish_saved)
 * or pending. Returns 1 when published, 0 when pending, -1 with err (out of
 * memory, or `current`/`pending` not written: EMB_ERR_IO, nothing
 * switched, the number stays used). */
int versions_candidate(versions *v, emb_model *m, uint32_t id, uint32_t parent,
                       const char *gate, emb_err *err);
/* Makes the pending version current (id 0: whichever is pending), with the
 * hand-over. *out gets its id. -1 with err: EMB_ERR_CONFLICT when nothing
 * is pending or id is not the pending one, EMB_ERR_IO when `current`
 * cannot be written (nothing switched), or on_change's error (the version
 * is then current). */
int versions_promote(versions *v, uint32_t id, uint32_t *out, emb_err *err);
/* The hand-over after versions_save: m (owned, freed on failure) becomes
 * version id and current, `current` names it, on_change(id) runs (its
 * failure goes to report as "re-embedding"). 0, or -1 with err when it
 * was not published (out of memory, `current` not written). */
int versions_publish_saved(versions *v, emb_model *m, uint32_t id, emb_err *err);
/* Makes version id current again, from memory or DATA/models/v{id} (or
 * base for 1), with the same hand-over (a pending id is promoted). -1 with
 * err: EMB_ERR_NOT_FOUND when id was never made and is not on disk,
 * EMB_ERR_GONE when it was retired and deleted, EMB_ERR_IO when it is
 * there but fails its checksums or does not load (the message is the real
 * reason, naming the file), EMB_ERR_IO when `current` cannot be written
 * (nothing switched), EMB_ERR_NO_MEMORY, or on_change's error (the version
 * is then current, but the store is not moving to it). */
int versions_rollback(versions *v, uint32_t id, emb_err *err);
/* At start-up: the store searches version `have` (0: it has no text item
 * yet). Keeps `have` in memory (loading it from disk, or copying base for
 * 1) so that searches can embed their queries with it, then calls
 * on_change(current) when have is not current. 0, or -1 with err. */
int versions_align(versions *v, uint32_t have, emb_err *err);

/* Replicas (cluster/cluster.h): version id, published by another replica
 * and brought here with versions_import, becomes current with the same
 * hand-over as a publish (a no-op when it already is). Errors as
 * versions_rollback. */
int versions_adopt(versions *v, uint32_t id, emb_err *err);
/* What is known of version id (creation time in unix seconds, parent, the
 * gate's verdict; 0 and "" when unknown): 1 when id has a record. */
int versions_record(versions *v, uint32_t id, double *created, uint32_t *parent, char *gate,
                    size_t cap);
/* Records them for a version made by another replica's trainer, so that
 * /train/versions shows them here too. */
void versions_note(versions *v, uint32_t id, double created, uint32_t parent, const char *gate);
/* The directory given to versions_open (NULL: memory only). */
const char *versions_data_dir(const versions *v);

/* versions_archive.c: a saved version as one byte string, to move it
 * between replicas. The archive is "EMBV1\n", then per file under
 * DATA/models/v{id}: u32 path length, the relative path, u64 size, the
 * bytes (little endian). Export: 0, or -1 with err (EMB_ERR_NOT_FOUND when
 * the version is not on disk). Import writes DATA/models/v{id} (staged and
 * renamed; a no-op when it is there) and loads it into memory
 * (versions_keep, which checks version.json's checksums): 0, or -1 with
 * err (EMB_ERR_INVALID for a malformed archive). */
struct strbuf;
int versions_export(versions *v, uint32_t id, struct strbuf *out, emb_err *err);
int versions_import(versions *v, uint32_t id, const void *data, size_t len, emb_err *err);

#endif
