/* reembed.h: the store re-embedder: moves the vectors of every store that
 * holds texts to the current model version, one chunk at a time, at the
 * lowest priority. The stores: the item store (/items, /similar, the
 * collection "default") and, with reembedder_set_collections, every named
 * collection whose size is the model's dimension (the ones that accept
 * Qdrant Documents, http/routes_qdrant.c).
 *
 * When the current version changes (a publish, a rollback, or a restart
 * that finds the store searching an older version), the versions module's
 * on-change hook calls reembedder_start, which tells every store its new
 * target (store_reembed.h). From then on every reembedder_work call takes
 * up to 64 items of one store (the item store first, then the collections
 * by name) whose text still lacks a vector of the target version, embeds
 * them with the target version and hands the vectors back; when none is
 * left that store switches its searches over at once, on its own: each
 * store searches one version at a time, and its queries are embedded with
 * that version (textjob.h TEXTJOB_STORE), so no query mixes versions. A
 * store that missed the start (a collection created or opened since)
 * catches up at its next reembedder_work.
 *
 * Versions in memory: reembedder_set_collections makes the registry ask
 * the re-embedder before dropping a version (versions_set_in_use): a
 * version that any store searches or moves to stays loaded, whatever
 * --keep-versions says; it also loads the version each collection searches
 * at start-up (versions_keep). When that version is gone from disk (a
 * restart in the middle of a move, long after), the collection's Document
 * queries fail with 503 until its move is done (reported to the learner).
 *
 * Collections are taken from the registry with references for each call
 * (collections_with_dim), so a collection dropped meanwhile stays open
 * until the call lets go, and is then closed and removed by the release.
 *
 * Ownership: the re-embedder borrows the registry, the store and the
 * collections (all outlive it) and owns its workspace, sized for one chunk,
 * so it shares no buffer with training or the gate.
 * Threads: reembedder_work runs on the batcher's compute thread only (the
 * learner's idle callback calls it before any training work);
 * reembedder_start is safe from any thread (the store locks).
 * Errors are not returned by reembedder_work: they go to the report
 * callback (the learner's last_error and log) and the chunk is retried on
 * a later call. */
#ifndef EMBEDD_REEMBED_H
#define EMBEDD_REEMBED_H

#include <stdint.h>

#include "store/collections.h"
#include "store/store.h"
#include "versions.h"

typedef struct reembedder reembedder;

/* Called with what failed ("re-embedding") and the message. */
typedef void (*reembed_report_fn)(void *ctx, const char *what, const char *msg);

/* A re-embedder for st (may be NULL: it then never has work). */
reembedder *reembedder_new(versions *v, store *st, reembed_report_fn report, void *report_ctx,
                           emb_err *err);
void reembedder_free(reembedder *r);

/* Moves the collections of c of the model's dimension too (c may be NULL)
 * and sets the registry's in-use callback (cleared by reembedder_free);
 * call before versions_align. 0; a collection's version that cannot be
 * loaded is reported, not an error. */
int reembedder_set_collections(reembedder *r, collections *c, emb_err *err);

/* Starts moving every store to version id (a no-op when already there or
 * under way). */
int reembedder_start(reembedder *r, uint32_t id, emb_err *err);

/* One chunk of the move. 1 when it did work, 0 when there is none (or it
 * failed and reported why). */
int reembedder_work(reembedder *r);

/* Progress over every store (the item store and the collections). */
typedef struct reembed_progress {
    long stores;               /* stores of the model's dimension */
    long moving;               /* of them, moving to another version */
    long done, total;          /* text items with a target-version vector, and all */
} reembed_progress;
void reembedder_progress(reembedder *r, reembed_progress *p);

#endif
