/* store_reembed.h: moving a store (the item store, or a collection that
 * holds texts, collections.h) to a new model version. Each store moves and
 * switches on its own (learn/reembed.h drives them all).
 *
 * Every item records the model version of its vector (0 for vectors given
 * by the client, which are never re-embedded). The store searches the
 * vectors of one version, store_vectors_version(); /similar embeds its
 * query with that version. After a publish, the learner re-embeds every
 * item that has a text with the new version, in small chunks at the lowest
 * priority, into vectors kept beside the searched ones; meanwhile searches
 * keep using the old vectors. When no item is left, store_reembed_finish
 * switches every search to the new vectors at once (and the log records
 * it, so that a restart finds the same state). Items written during the
 * move with the old version are taken again until none is left. */
#ifndef EMBEDD_STORE_REEMBED_H
#define EMBEDD_STORE_REEMBED_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "store.h"

typedef struct store_text_item {
    uint64_t label, gen;     /* identify the item and its state at take time */
    char *text;              /* copy, NUL-terminated */
    size_t len;
} store_text_item;

/* The version whose vectors are searched: after open, the highest version
 * of any item with a text (0 for a store without one, which adopts the
 * first version asked for). */
uint32_t store_vectors_version(store *s);
/* The version being moved to; equal to store_vectors_version when idle. */
uint32_t store_target_version(store *s);

/* 1 when the store may have work (moving, or rows to check since a write
 * or a switch), 0 when it surely has none: a cheap read-locked test, so
 * that an idle re-embedder does not take every store's write lock. */
int store_reembed_pending(store *s);

/* Starts moving to `version` (a no-op when already there or under way). */
int store_reembed_start(store *s, uint32_t version, emb_err *err);
/* Up to max items that still lack a vector of the target version, with
 * copies of their texts; returns how many (0: none left), or -1. */
int store_reembed_take(store *s, int max, store_text_item *out, emb_err *err);
/* Their vectors (n, dim), already normalised, of `version`. Items that
 * changed or went since the take are skipped. */
int store_reembed_put(store *s, const store_text_item *items, int n, const float *vecs,
                      uint32_t version, emb_err *err);
/* Switches searches to the target version once no item is left; returns 1
 * when it switched, 0 when items remain, -1 on error. */
int store_reembed_finish(store *s, emb_err *err);
void store_text_items_free(store_text_item *items, int n);

/* With a remote (store.h, store_set_remote): start, put and finish above
 * go through it, and its follower calls these to apply what it committed,
 * on every replica alike. */
/* Searches version from now on, with no move under way (a replica that
 * loads the system of record's state). */
void store_reembed_adopt(store *s, uint32_t version);
/* The move's target vectors of these items (n, dim; normalised here), of
 * `version`; ignored unless the store is moving to it. */
void store_reembed_put_ids(store *s, const store_id *ids, int n, const float *vecs,
                           uint32_t version);
/* Switches searches to the target `version` now: items with a target
 * vector take it; the others keep theirs and are not searched until they
 * get one. 1 when switched, 0 when not moving to that version. */
int store_reembed_switch(store *s, uint32_t version);
/* Items with a text, and how many of them have a target-version vector. */
void store_reembed_progress(store *s, long *done, long *total);

#endif
