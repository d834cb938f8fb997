/* upsert.h: a batch of items on their way into a store, shared by the two
 * upsert routes (POST /items and Qdrant's PUT /collections/{name}/points).
 *
 * A route parses each item of the request into the batch: its id, either
 * a client's vector (parsed into upsert_vector(b, i)) or a text to embed
 * (upsert_set_text, which queues it in `texts`), and its payload
 * (upsert_set_payload). With texts, the route encodes `texts` into `tj`
 * and submits the job; its finish calls upsert_take_vectors, which puts
 * the embedded vectors (normalised, with the version that made them) into
 * the items and offers the texts to the learner. Then store_upsert takes
 * `items`.
 *
 * Ownership: the batch lives in the route's request state and keeps the
 * request's parsed JSON (`root`), from which items borrow ids and texts;
 * their vectors and payloads are the batch's; upsert_free releases all of
 * it. */
#ifndef EMBEDD_UPSERT_H
#define EMBEDD_UPSERT_H

#include <cjson/cJSON.h>

#include "server.h"
#include "textjob.h"

typedef struct upsert_batch {
    text_job tj;               /* the texts' job (textjob.h) */
    cJSON *root;               /* the request's body: items borrow its strings */
    int n;                     /* items */
    int dim;                   /* the store's */
    store_item *items;         /* (n) */
    float *vecs;               /* (n, dim): the items' vectors */
    char **payloads;           /* (n) printed payload objects, or NULL */
    textjob_input *texts;      /* (n) the texts to embed, n_text of them */
    int *text_item;            /* (n) the item of each text */
    int n_text;
} upsert_batch;

/* Sizes the batch for n items of dim floats. 0, or -1 when out of memory. */
int upsert_alloc(upsert_batch *b, int n, int dim);
void upsert_free(upsert_batch *b);

/* Item i's vector, for the route to parse a client's vector into. */
static inline float *upsert_vector(upsert_batch *b, int i)
{
    return b->vecs + (long)i * b->dim;
}

/* Item i is text (a string of the request's JSON): queued to be embedded. */
void upsert_set_text(upsert_batch *b, int i, const char *text);

/* Item i's vector and dimension, once it is parsed or queued (a text's
 * vector is a stand-in until embedded, so store_item_check can run). */
void upsert_set_vector(upsert_batch *b, int i);

/* Item i's payload (a JSON object) printed into the batch. 0, or -1 when
 * out of memory. */
int upsert_set_payload(upsert_batch *b, int i, const cJSON *payload);

/* After the job: each text's vector, normalised, with the version that
 * made it, into its item; the texts are offered to the learner. */
void upsert_take_vectors(server *srv, upsert_batch *b);

#endif
