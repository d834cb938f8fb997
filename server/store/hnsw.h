/* hnsw.h: a C API over Debian's header-only hnswlib (0.6.2), for the item
 * store's approximate index (see store.h, "Approximate index").
 *
 * The space is inner product: hnswlib's distance is 1 - <a, b>, so for the
 * store's normalised vectors score = 1 - distance (a cosine similarity).
 * Labels are the caller's u64 keys. Every C++ exception is caught in
 * hnsw.cpp and comes back as -1 (or NULL) with err filled in.
 *
 * Threads: hnsw_search may run from several threads at once (it never
 * changes the index: the search width is passed per call, not set on the
 * index); hnsw_add, hnsw_add_batch, hnsw_mark_delete and hnsw_reserve need
 * the caller to exclude every other call. */
#ifndef EMBEDD_HNSW_H
#define EMBEDD_HNSW_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hnsw_index hnsw_index;

/* M <= 0: 16; ef_construction <= 0: 200. */
hnsw_index *hnsw_create(int dim, size_t max_elements, int M, int ef_construction,
                        uint64_t seed, emb_err *err);
void hnsw_free(hnsw_index *h);
/* Grows the capacity to at least max_elements (doubling). */
int hnsw_reserve(hnsw_index *h, size_t max_elements, emb_err *err);
/* Adds vector v (dim floats) under label; an existing label is updated in
 * place (and un-deleted), as hnswlib 0.6.2's addPoint does. Grows when full. */
int hnsw_add(hnsw_index *h, uint64_t label, const float *v, emb_err *err);
/* Adds n vectors (n, dim), one after another (see hnsw.cpp). */
int hnsw_add_batch(hnsw_index *h, const uint64_t *labels, const float *vecs, size_t n,
                   emb_err *err);
/* Excluded from results from now on; the node stays in the graph. A label
 * that is not there, or already deleted, is left alone. */
int hnsw_mark_delete(hnsw_index *h, uint64_t label, emb_err *err);
/* Up to k nearest (best first) into labels and dists (k each); the search
 * keeps max(k, ef) candidates. Returns how many, or -1. */
int hnsw_search(const hnsw_index *h, const float *query, int k, int ef, uint64_t *labels,
                float *dists, emb_err *err);
size_t hnsw_count(const hnsw_index *h);    /* nodes, deleted ones included */
size_t hnsw_deleted(const hnsw_index *h);  /* nodes marked deleted */
size_t hnsw_capacity(const hnsw_index *h);

#ifdef __cplusplus
}
#endif

#endif
