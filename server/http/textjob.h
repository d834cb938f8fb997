/* textjob.h: the one path from texts to vectors, for /embed,
 * /v1/embeddings, /items and /similar.
 *
 * A route collects its inputs (texts, or token ids where the API allows
 * them), then, on its HTTP thread:
 *   textjob_encode   tokenises (or copies) every input into the job's
 *                    buffers; a bad input is answered there (400, 422);
 *   textjob_submit   picks the model version by the route's policy,
 *                    suspends the connection and queues the job on the
 *                    batcher (batcher.h); returns ROUTE_SUSPEND;
 * the compute thread fills `out` with the pooled, not normalised vectors
 * and resumes the connection; the route's finish then runs on an HTTP
 * thread and calls
 *   textjob_failed   which answers a failed job with the status of its
 *                    error kind (errors.h) and returns 1, else 0; a
 *                    failure inside the forward pass (EMB_ERR_FAILED, e.g.
 *                    non-finite outputs) is a 500 naming the version.
 * A route may submit the same job again (a retry) after it finished.
 *
 * Ownership: a text_job lives inside the route's request state, zeroed by
 * calloc, and textjob_free releases its buffers and model version with
 * that state. Between submit and finish the batcher owns tj->job (the
 * submitter must not touch it). The version is referenced from submit
 * until the next submit or textjob_free, so a finish can name it. */
#ifndef EMBEDD_TEXTJOB_H
#define EMBEDD_TEXTJOB_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "server.h"

/* Which model version embeds the texts. */
typedef enum textjob_version {
    TEXTJOB_CURRENT,           /* the current version: /embed, /v1/embeddings */
    TEXTJOB_STORE,             /* the version whose vectors the store searches
                                  (the current one until a re-embedding
                                  finishes): /items, /similar; the job's
                                  store (tj->st) or, when NULL, the item
                                  store (a Qdrant collection sets its own) */
    TEXTJOB_PINNED,            /* the version textjob_pin took: a client's
                                  pin (model "name@N", model_version) */
} textjob_version;

/* One input: a text, or the token ids a client sent. */
typedef struct textjob_input {
    const char *text;
    size_t len;
    const cJSON *ids;          /* array of integers; NULL for a text */
} textjob_input;

/* How textjob_encode reads the inputs. */
typedef struct textjob_opts {
    int truncate;              /* 0: an input over max_seq_length is a 422 */
    int truncate_left;         /* keep the end of a long input */
    const char *noun;          /* "input" or "text", for the messages */
    int truncate_hint;         /* 1: the too-long message says "set truncate" */
} textjob_opts;

typedef struct text_job {
    emb_job job;
    api_family api;            /* the error replies' shape */
    int n;                     /* inputs */
    int32_t *ids;              /* all inputs' ids, back to back */
    int *lens;                 /* (n) */
    float *out;                /* (n, C) pooled */
    long tokens;               /* sum of lens: the prompt tokens */
    model_version *mv;         /* the version of the last submit, referenced */
    store *st;                 /* TEXTJOB_STORE's store, borrowed; NULL: srv->store */
} text_job;

/* Tokenises the n inputs into tj (n >= 1). Returns 0, or -1 after filling
 * rp. */
int textjob_encode(const server *srv, text_job *tj, api_family api, const textjob_input *in,
                   int n, const textjob_opts *opts, reply *rp);

/* Takes version id for the job (a client's pin); 0, or -1 after filling
 * rp: 404 for a number never made, 410 for a retired one (versions_pin).
 * Then submit with TEXTJOB_PINNED. */
int textjob_pin(server *srv, text_job *tj, uint32_t id, reply *rp);

/* Takes a version by policy, names it in rq's reply header and queues the
 * job (server_submit). Returns ROUTE_SUSPEND. */
route_result textjob_submit(server *srv, request *rq, text_job *tj, textjob_version policy);

/* 1 after filling rp when the job failed, else 0. */
int textjob_failed(const text_job *tj, reply *rp);

/* Frees what tj holds (not tj itself); tj may be all zeros. */
void textjob_free(text_job *tj);

#endif
