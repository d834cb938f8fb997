/* textjob.c: see textjob.h. */
#include "textjob.h"

#include <stdlib.h>
#include <string.h>

#include "store/store_reembed.h"

/* Copies the client's token ids of input i to dst, keeping the last
 * max_len when truncating left. *n gets the count kept, *full all of them.
 * Returns 0, or -1 after filling rp. */
static int copy_ids(const server *srv, const text_job *tj, const cJSON *ids, int i,
                    const textjob_opts *o, int32_t *dst, int *n, int *full, reply *rp)
{
    const emb_model *m = srv->model;
    const int max_len = m->cfg.max_seq_length;
    *full = cJSON_GetArraySize(ids);
    *n = 0;
    if (*full == 0) {
        reply_error(rp, tj->api, 400, "Empty", "%s %d is empty", o->noun, i);
        return -1;
    }
    int skip = o->truncate_left && *full > max_len ? *full - max_len : 0;
    int k = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, ids) {
        double v = el->valuedouble;
        if (v < 0 || v >= m->cfg.vocab_size) {
            reply_error(rp, tj->api, 422, "Validation",
                        "%s %d: token id %.0f is outside the vocabulary (0..%d)", o->noun, i, v,
                        m->cfg.vocab_size - 1);
            return -1;
        }
        if (k >= skip && *n < max_len)
            dst[(*n)++] = (int32_t)v;
        k++;
    }
    return 0;
}

/* Tokenises the text of input i into dst. Same contract as copy_ids. */
static int encode_text(const server *srv, const text_job *tj, const textjob_input *in, int i,
                       const textjob_opts *o, int32_t *dst, int *n, int *full, reply *rp)
{
    const emb_model *m = srv->model;
    *full = 0;
    if (in->len == 0) {
        reply_error(rp, tj->api, 400, "Empty", "%s %d is empty", o->noun, i);
        return -1;
    }
    *n = emb_encode(m->tok, in->text, in->len, m->cfg.max_seq_length, o->truncate_left, dst,
                    full);
    if (*n < 0) {
        reply_error(rp, tj->api, 422, "Tokenizer", "%s %d could not be tokenised", o->noun, i);
        return -1;
    }
    return 0;
}

int textjob_encode(const server *srv, text_job *tj, api_family api, const textjob_input *in,
                   int n, const textjob_opts *opts, reply *rp)
{
    const emb_model *m = srv->model;
    const int max_len = m->cfg.max_seq_length;
    tj->api = api;
    tj->n = n;
    tj->tokens = 0;
    tj->ids = malloc(sizeof(int32_t) * (size_t)n * (size_t)max_len);
    tj->lens = malloc(sizeof(int) * (size_t)n);
    tj->out = malloc(sizeof(float) * (size_t)n * (size_t)emb_model_dim(m));
    if (tj->ids == NULL || tj->lens == NULL || tj->out == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        return -1;
    }
    long off = 0;
    for (int i = 0; i < n; i++) {
        int32_t *dst = tj->ids + off;
        int k = 0, full = 0;
        int rc = in[i].ids != NULL ? copy_ids(srv, tj, in[i].ids, i, opts, dst, &k, &full, rp)
                                   : encode_text(srv, tj, &in[i], i, opts, dst, &k, &full, rp);
        if (rc != 0)
            return -1;
        if (full > max_len && !opts->truncate) {
            reply_error(rp, api, 422, "Validation",
                        "%s %d has %d tokens, more than the maximum of %d%s", opts->noun, i,
                        full, max_len, opts->truncate_hint ? "; set truncate" : "");
            return -1;
        }
        tj->lens[i] = k;
        tj->tokens += k;
        off += k;
    }
    return 0;
}

/* The version for policy, referenced. */
static model_version *take_version(server *srv, const text_job *tj, textjob_version policy)
{
    store *st = tj->st != NULL ? tj->st : srv->store;
    if (policy == TEXTJOB_STORE && st != NULL) {
        uint32_t want = store_vectors_version(st);
        model_version *mv = want != 0 ? versions_get(srv->versions, want) : NULL;
        if (mv != NULL)
            return mv;
    }
    return versions_current(srv->versions);
}

int textjob_pin(server *srv, text_job *tj, uint32_t id, reply *rp)
{
    emb_err err;
    versions_release(NULL, tj->mv);
    tj->mv = NULL;
    if (versions_pin(srv->versions, id, &tj->mv, &err) == 0)
        return 0;
    reply_fail(rp, tj->api, err.kind, "%s", err.msg);
    return -1;
}

route_result textjob_submit(server *srv, request *rq, text_job *tj, textjob_version policy)
{
    if (policy != TEXTJOB_PINNED || tj->mv == NULL) {
        versions_release(NULL, tj->mv);
        tj->mv = take_version(srv, tj, policy);
    }
    tj->job.model = tj->mv->model;
    rq->model_version = tj->mv->id;
    tj->job.n_seqs = tj->n;
    tj->job.ids = tj->ids;
    tj->job.lens = tj->lens;
    tj->job.out = tj->out;
    server_submit(srv, rq, &tj->job);
    return ROUTE_SUSPEND;
}

int textjob_failed(const text_job *tj, reply *rp)
{
    if (!tj->job.failed)
        return 0;
    /* A forward pass that failed inside (non-finite outputs of broken
     * weights) is the version's fault: name it, so the operator knows what
     * to roll back. */
    if (tj->job.error_kind == EMB_ERR_FAILED && tj->mv != NULL)
        reply_fail(rp, tj->api, tj->job.error_kind, "%s (model version %u)", tj->job.error,
                   tj->mv->id);
    else
        reply_fail(rp, tj->api, tj->job.error_kind, "%s", tj->job.error);
    return 1;
}

void textjob_free(text_job *tj)
{
    free(tj->ids);
    free(tj->lens);
    free(tj->out);
    versions_release(NULL, tj->mv);
    tj->ids = NULL;
    tj->lens = NULL;
    tj->out = NULL;
    tj->mv = NULL;
}
