/* routes_train.c: GET /train/status and POST /train/{pause,resume,rollback,
 * samples,promote}: the control surface of continuous learning (learner.h);
 * GET /train/versions and its event stream (versions.h, feed.h). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "feed.h"
#include "server.h"

/* 1 when training is on; otherwise fills rp with 503. */
static int training_on(server *srv, reply *rp)
{
    if (learner_enabled(srv->learner))
        return 1;
    reply_error(rp, API_TEI, 503, "Unhealthy", "training is off (embedd serve --train off)");
    return 0;
}

route_result handle_train_status(server *srv, request *rq, reply *rp)
{
    learner_status_json(srv->learner, &rp->body);
    return ROUTE_DONE;
}

route_result handle_train_pause(server *srv, request *rq, reply *rp)
{
    if (!training_on(srv, rp))
        return ROUTE_DONE;
    learner_pause(srv->learner);
    sb_puts(&rp->body, "{\"state\":\"paused\"}");
    return ROUTE_DONE;
}

route_result handle_train_resume(server *srv, request *rq, reply *rp)
{
    if (!training_on(srv, rp))
        return ROUTE_DONE;
    learner_resume(srv->learner);
    sb_puts(&rp->body, "{\"state\":\"running\"}");
    return ROUTE_DONE;
}

route_result handle_train_rollback(server *srv, request *rq, reply *rp)
{
    if (!training_on(srv, rp))
        return ROUTE_DONE;
    cJSON *root = route_parse_body(rq, API_TEI, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 ||
        v->valuedouble > 4294967295.0) {
        reply_error(rp, API_TEI, 422, "Validation", "`version` must be a positive integer");
        cJSON_Delete(root);
        return ROUTE_DONE;
    }
    uint32_t id = (uint32_t)v->valuedouble;
    cJSON_Delete(root);
    emb_err err;
    if (learner_rollback(srv->learner, id, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return ROUTE_DONE;
    }
    sb_printf(&rp->body, "{\"status\":\"ok\",\"current\":%u}", id);
    return ROUTE_DONE;
}

route_result handle_train_samples(server *srv, request *rq, reply *rp)
{
    if (!training_on(srv, rp))
        return ROUTE_DONE;
    cJSON *root = route_parse_body(rq, API_TEI, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *texts = cJSON_GetObjectItemCaseSensitive(root, "texts");
    int n = cJSON_IsArray(texts) ? cJSON_GetArraySize(texts) : -1;
    if (n < 1) {
        reply_error(rp, API_TEI, 422, "Validation", "`texts` must be a non-empty array of strings");
        goto out;
    }
    if (n > srv->opts.max_client_batch_size) {
        reply_error(rp, API_TEI, 413, "Validation", "%d texts is more than the limit of %d", n,
                    srv->opts.max_client_batch_size);
        goto out;
    }
    const char **ptrs = malloc(sizeof(char *) * (size_t)n);
    size_t *lens = malloc(sizeof(size_t) * (size_t)n);
    if (ptrs == NULL || lens == NULL) {
        free(ptrs);
        free(lens);
        reply_error(rp, API_TEI, 500, "Backend", "out of memory");
        goto out;
    }
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, texts) {
        if (!cJSON_IsString(el)) {
            reply_error(rp, API_TEI, 422, "Validation", "texts[%d] is not a string", i);
            free(ptrs);
            free(lens);
            goto out;
        }
        ptrs[i] = el->valuestring;
        lens[i] = strlen(el->valuestring);
        i++;
    }
    int added = learner_offer_explicit(srv->learner, ptrs, lens, n);
    free(ptrs);
    free(lens);
    sb_printf(&rp->body, "{\"status\":\"ok\",\"received\":%d,\"added\":%d}", n, added);
out:
    cJSON_Delete(root);
    return ROUTE_DONE;
}

/* POST /train/promote [{"version": n}]: the pending version (manual
 * publish mode) becomes current; the store re-embeds to it. 409 when
 * nothing (or another version) is pending. Works with --train off too: a
 * version left pending by an earlier run can still be promoted. */
route_result handle_train_promote(server *srv, request *rq, reply *rp)
{
    uint32_t want = 0;
    if (rq->body != NULL && rq->body_len > 0) {
        cJSON *root = route_parse_body(rq, API_TEI, rp);
        if (root == NULL)
            return ROUTE_DONE;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
        if (v != NULL && !cJSON_IsNull(v)) {
            if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
                v->valuedouble < 1 || v->valuedouble > 4294967295.0) {
                reply_error(rp, API_TEI, 422, "Validation",
                            "`version` must be a positive integer");
                cJSON_Delete(root);
                return ROUTE_DONE;
            }
            want = (uint32_t)v->valuedouble;
        }
        cJSON_Delete(root);
    }
    emb_err err;
    uint32_t id = 0;
    if (versions_promote(srv->versions, want, &id, &err) != 0) {
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
        return ROUTE_DONE;
    }
    sb_printf(&rp->body, "{\"status\":\"ok\",\"current\":%u}", id);
    return ROUTE_DONE;
}

/* GET /train/versions: every number with its status (versions.h). */
route_result handle_train_versions(server *srv, request *rq, reply *rp)
{
    versions_list_json(srv->versions, &rp->body);
    return ROUTE_DONE;
}

/* GET /train/versions/stream: server-sent events of changes (feed.h). */
route_result handle_train_versions_stream(server *srv, request *rq, reply *rp)
{
    const char *last = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Last-Event-ID");
    uint64_t seen = last != NULL ? strtoull(last, NULL, 10) : 0;
    emb_err err;
    rp->stream = feed_subscribe(srv->feed, rq->conn, seen, &err);
    if (rp->stream == NULL)
        reply_fail(rp, API_TEI, err.kind, "%s", err.msg);
    return ROUTE_DONE;
}
