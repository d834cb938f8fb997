/* collections.h: named collections, each an item store (store.h) with its
 * own dimension, behind the Qdrant routes (http/routes_qdrant.c).
 *
 * The collection "default" is the server's item store (the one /items and
 * /similar use, with the model's dimension): it is borrowed, never created,
 * dropped or closed here, and its files stay where they always were
 * (DATA/wal, DATA/snapshot). Every other collection has its own store.
 * A collection whose dimension is the model's may hold texts (Qdrant
 * Documents) beside client vectors; the re-embedder (learn/reembed.h)
 * moves those stores to each new model version like the item store,
 * walking them with collections_with_dim.
 *
 * Files (with a data directory; without one, collections live in memory)
 *   DATA/collections/<name>/store/            the collection's store dir
 *   DATA/collections/<name>/collection.json   {"name", "size", "distance"}
 *   DATA/collections/.trash-<n>-<name>/       a dropped collection being removed
 *
 * Crash safety: collection.json is the commit mark.
 *   create   mkdir <name>, open the store in <name>/store, then write
 *            collection.json atomically (fileio.h: temp file, fsync, rename,
 *            fsync of the directory). Only then does it exist.
 *   drop     unlink collection.json and fsync the directory (from here it
 *            is gone, also after a crash), rename the directory to
 *            .trash-..., and once the last request using it is done,
 *            close its store and remove the files.
 *   open     every directory without a readable collection.json (a create
 *            or drop cut short) and every .trash-* is removed, and said so
 *            in the open report; the others are opened.
 *
 * Distance: only "Cosine" (the store keeps vectors normalised and scores
 * cosine). Names: 1..COLL_MAX_NAME bytes of [A-Za-z0-9_-.], not starting
 * with '.', so a name is always one plain directory entry.
 *
 * Threads: any thread may call anything but collections_close. A
 * collection handed out by collections_get is referenced: its store stays
 * open until collection_release, even when it is dropped meanwhile. A
 * rwlock guards the table; creating and dropping hold it exclusively
 * (including the disk work: they are rare and fast). Errors are values. */
#ifndef EMBEDD_COLLECTIONS_H
#define EMBEDD_COLLECTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "store.h"

#define COLL_MAX_NAME 128
#define COLL_MAX_COUNT 1000
#define COLL_DEFAULT_NAME "default"

typedef struct collections collections;
typedef struct collection collection;

typedef struct collections_options {
    const char *data_dir;      /* NULL: memory only */
    store *default_store;      /* borrowed: the collection "default"; may be NULL */
    store_options store_opts;  /* template for every collection's store (dir and dim are set here) */
} collections_options;

/* Opens every committed collection under data_dir/collections and cleans
 * up leftovers. report (may be NULL) gets a line of what was done. NULL
 * with err when a committed collection cannot be opened. */
collections *collections_open(const collections_options *o, char *report, size_t report_size,
                              emb_err *err);
/* Snapshots (with snapshot and a data dir) and closes every named store.
 * The default store is the caller's. */
void collections_close(collections *c, int snapshot);

/* 0 when name (len bytes) is a valid collection name, else -1 with err
 * (EMB_ERR_INVALID) saying why. */
int collections_name_check(const char *name, size_t len, emb_err *err);

/* Creates a collection of dimension dim with the Cosine distance; err
 * EMB_ERR_CONFLICT when it exists, EMB_ERR_INVALID for a bad name or size,
 * EMB_ERR_IO for the disk. 0 or -1. */
int collections_create(collections *c, const char *name, int dim, emb_err *err);
/* Drops a collection: 1 dropped, 0 there was none, -1 with err (the
 * default one cannot be dropped: EMB_ERR_CONFLICT). */
int collections_drop(collections *c, const char *name, emb_err *err);

/* The collection, referenced, or NULL when there is none. */
collection *collections_get(collections *c, const char *name);
void collection_release(collections *c, collection *col);

/* Names of all collections, sorted; *names is one malloc block (free it). */
int collections_list(collections *c, char ***names, emb_err *err);
/* How many collections, and points in all of them. */
void collections_totals(collections *c, long *n_collections, long *n_points);

/* The collections whose store has dimension dim (the default one
 * included), each referenced (collection_release each, then free *out).
 * The re-embedder walks them this way, so a collection dropped meanwhile
 * stays open until it lets go. Returns how many, or -1 with err. */
int collections_with_dim(collections *c, int dim, collection ***out, emb_err *err);
/* 1 when some collection's store searches version id or is moving to it
 * (store_reembed.h), else 0. Takes the table's and each store's read lock. */
int collections_version_in_use(collections *c, uint32_t id);

store *collection_store(const collection *col);
const char *collection_name(const collection *col);
int collection_is_default(const collection *col);

/* Stores matching a compiled filter (store.h): their ids, copied (*ids
 * and the strings they point to are one malloc block), at most max.
 * Returns how many, or -1 with err. The count alone: ids NULL. */
long collection_match(store *s, const store_filter *f, long max, store_id **ids, emb_err *err);

#endif
