/* reembed.h: the store re-embedder: moves the item store's vectors to the
 * current model version, one chunk at a time, at the lowest priority.
 *
 * When the current version changes (a publish, a rollback, or a restart
 * that finds the store searching an older version), the versions module's
 * on-change hook calls reembedder_start, which tells the store its new
 * target (store_reembed.h). From then on every reembedder_work call takes
 * up to 64 items whose text still lacks a vector of the target version,
 * embeds them with the target version and hands the vectors back; when
 * none is left the store switches its searches over at once.
 *
 * Ownership: the re-embedder borrows the registry and the store (both
 * outlive it) and owns its workspace, sized for one chunk, so it shares no
 * buffer with training or the gate.
 * Threads: reembedder_work runs on the batcher's compute thread only (the
 * learner's idle callback calls it before any training work);
 * reembedder_start is safe from any thread (the store locks).
 * Errors are not returned by reembedder_work: they go to the report
 * callback (the learner's last_error and log) and the chunk is retried on
 * a later call. */
#ifndef EMBEDD_REEMBED_H
#define EMBEDD_REEMBED_H

#include <stdint.h>

#include "store/store.h"
#include "versions.h"

typedef struct reembedder reembedder;

/* Called with what failed ("re-embedding") and the message. */
typedef void (*reembed_report_fn)(void *ctx, const char *what, const char *msg);

/* A re-embedder for st (may be NULL: it then never has work). */
reembedder *reembedder_new(versions *v, store *st, reembed_report_fn report, void *report_ctx,
                           emb_err *err);
void reembedder_free(reembedder *r);

/* Starts moving the store to version id (a no-op when already there or
 * under way). */
int reembedder_start(reembedder *r, uint32_t id, emb_err *err);

/* One chunk of the move. 1 when it did work, 0 when there is none (or it
 * failed and reported why). */
int reembedder_work(reembedder *r);

#endif
