/* server.h: the HTTP embedding service (`embedd serve`).
 *
 * Threads and ownership
 *   - libmicrohttpd runs a pool of http_threads threads. They read requests,
 *     parse JSON, tokenise and format responses. They never run the model.
 *   - The batcher's compute thread runs every forward pass (batcher.h).
 *   - A request that needs embeddings is suspended after its job is
 *     submitted (textjob.h, the one path for every route with texts); the
 *     compute thread's done callback resumes it; the HTTP thread then
 *     formats the response (routes.c, routes_items.c).
 *   - Errors: a failure that comes as a value carries its kind
 *     (base/error.h); errors.h is the one table from kind to status and
 *     TEI/OpenAI error types.
 *   - The model is loaded before the daemon starts and is read-only.
 *   - The item store (store.h, `--data`) is opened before the daemon
 *     starts; HTTP threads call it directly (it has its own locks).
 * Startup and shutdown order: server/cli/serve.h. */
#ifndef EMBEDD_SERVER_H
#define EMBEDD_SERVER_H

#include <stdatomic.h>

#include <microhttpd.h>

#include "batch/batcher.h"
#include "learn/learner.h"
#include "bert.h"
#include "common/metrics.h"
#include "store/store.h"
#include "common/strbuf.h"
#include "learn/versions.h"

struct collections;
struct cluster;

typedef struct server_opts {
    /* Filled by serve's option table (cli_serve.c), which holds every
     * default; read-only once serve_run starts. */
    const char *model_dir;
    const char *served_model_name;
    const char *host;
    int pooling;               /* emb_pooling overriding the model's; -1: the model's */
    const char *default_prompt_name; /* overrides the model's default prompt; NULL: keep it */
    const char *cors_allow_origin; /* comma list of origins, "*" for any; NULL: no CORS */
    int port;
    const char *api_key;
    int max_batch_tokens;
    int max_client_batch_size;
    int max_concurrent_requests;
    int payload_limit;
    int max_response_bytes;    /* largest response body a route builds (422 above) */
    int auto_truncate;
    int threads;
    int http_threads;
    int timeout;               /* libmicrohttpd's inactivity timeout (restarts on every byte) */
    /* total deadlines that no trickle of bytes extends (conntrack.h), seconds */
    int header_timeout;        /* connection (or keep-alive idle end) to complete request head */
    int body_timeout;          /* first to last body byte */
    int send_timeout;          /* response queued to fully sent */
    int keepalive_timeout;     /* idle between requests on a keep-alive connection */
    int max_connections;       /* open connections in total */
    int max_connections_per_ip;
    double max_response_memory; /* bytes of queued response bodies not yet sent; 0: no limit */
    const char *data_dir;      /* NULL: the item store lives in memory */
    const char *store_url;     /* "local" (data_dir), or postgres://... (cluster.h) */
    const char *replica_name;  /* with postgres: this replica's name; NULL: host:port */
    int hnsw_threshold;        /* items at which the store builds its HNSW index; 0: never */
    int hnsw_m;                /* HNSW links per node */
    int hnsw_ef_construction;  /* HNSW build width */
    int hnsw_ef;               /* default /similar search width */
    int snapshot_wal_bytes;    /* snapshot when the WAL passes this; 0: never */
    int precision;             /* emb_precision */
    /* continuous learning (learner.h) */
    int train;                 /* 0: off entirely */
    int train_objective;       /* EMB_OBJ_SIMCSE, _MLM or _BOTH */
    int train_batch_size;
    int train_max_seq_len;     /* capped by the model's at startup */
    double train_lr;
    double train_l2sp;
    double train_ema;
    int train_max_cpu;         /* percent of wall time */
    int publish_every_steps;   /* publish attempts every n steps (0: by time) ... */
    double publish_every_secs; /* ... or every n seconds (0: by steps) */
    int train_min_samples;
    const char *eval_sts;
    double gate_tolerance;     /* largest STS Spearman x100 drop */
    int train_from_embed, train_from_items, train_from_explicit;
    int train_paused;
    int train_seed;
    int train_max_epochs;      /* uses per buffered text before the trainer rests; 0: no limit */
    double train_min_share;    /* least share of wall time for idle work under load; 0: none */
    int train_persist_samples; /* 0: training texts stay in memory (no DATA/samples.log) */
    int publish_mode;          /* versions_publish: 0 manual, 1 auto */
    int keep_versions;         /* servable versions, the current one included */
    /* fixed settings of the publish gate (no flag; defaults in the table) */
    int holdout_eval_max;
    double collapse_max_cos, collapse_cos_rise, collapse_min_var;
    int gate_lex, train_whiten, train_whiten_min_texts, train_whiten_max_texts; /* learner.h */
    double gate_lex_tolerance, gate_lex_gain, train_whiten_shrink;
} server_opts;

typedef struct server {
    server_opts opts;
    const char *model_name;
    emb_model *model;          /* version 1 as loaded: the shape (config, tokenizer) of all */
    versions *versions;        /* the served model versions */
    learner *learner;          /* NULL with --train off */
    batcher *batcher;
    store *store;              /* items; open from before the daemon starts until after the batcher stops */
    struct collections *collections; /* Qdrant collections (store/collections.h), "default" is store;
                                      * opened after it, closed before it */
    int cluster_mode;          /* --store is a postgres:// URL */
    struct cluster *cluster;   /* --store postgres://: the shared store (cluster/cluster.h); else NULL */
    char replica[128];         /* with a cluster: this replica's name (X-Embedd-Replica) */
    char scratch_dir[256];     /* with a cluster and no --data: a temporary one for versions */
    metrics *mx;
    struct MHD_Daemon *daemon;
    struct MHD_Daemon *probes; /* /health and /metrics on a thread of their own (frontdoor.h) */
    struct feed *feed;         /* GET /train/versions/stream (feed.h); from http_start to http_stop */
    struct frontdoor *door;    /* our listening socket and first-head check (frontdoor.h); same lifetime */
    struct conntrack *conns;   /* open connections and their deadlines (conntrack.h); same lifetime */
    atomic_llong response_bytes; /* queued response bodies not yet completed (max_response_memory) */
    int port;                  /* the bound port */
    atomic_int inflight;       /* admitted requests not yet completed (sent in full) */
    atomic_int working;        /* admitted requests whose reply is not ready yet:
                                * what --max-concurrent-requests limits */
    atomic_int ready;          /* 1 while serving, 0 while starting or stopping */
} server;

/* API families decide the error body's shape. */
typedef enum {
    API_TEI,
    API_OPENAI,
    API_QDRANT,                /* {"status": {"error": "..."}, "time": 0} (routes_qdrant.c) */
} api_family;

/* A response being built by a route handler. */
typedef struct reply {
    int status;
    const char *content_type;
    strbuf body;
    const char *allow;         /* Allow header for 405 */
    struct MHD_Response *stream; /* set: sent instead of body (an event stream, feed.h) */
    int retry_after;           /* seconds for a Retry-After header (429, 503); 0: none */
    int close;                 /* 1: "Connection: close" (a request whose framing we refused) */
    int preflight;             /* 1: a CORS preflight (OPTIONS); allow holds the path's methods */
    const char *vary;          /* a Vary header: the request headers the body depends on */
} reply;

/* Per-request state; allocated on the first call of the access handler,
 * freed by the completion callback. */
typedef struct request request;

typedef enum { ROUTE_DONE = 0, ROUTE_SUSPEND = 1 } route_result;

typedef struct route {
    const char *method;
    const char *path;
    const char *name;          /* metrics label */
    api_family api;
    int needs_auth;
    int needs_compute;         /* counts against max_concurrent_requests */
    /* Runs once the body is in. Fills rp, or submits a job and returns
     * ROUTE_SUSPEND; then finish runs after the job is done. */
    route_result (*handle)(server *srv, request *rq, reply *rp);
    void (*finish)(server *srv, request *rq, reply *rp);
    int rest;                  /* 1: the path's final "{param}" takes the rest of the
                                * path, slashes included ("/items/{id}") */
} route;

/* The values of a route's "{param}" segments, in order: pointers into the
 * request's decoded path (not NUL-terminated). */
#define ROUTE_MAX_PARAMS 4
typedef struct route_params {
    int n;
    const char *at[ROUTE_MAX_PARAMS];
    size_t len[ROUTE_MAX_PARAMS];
} route_params;

struct request {
    const route *rt;
    struct MHD_Connection *conn;
    server *srv;
    double t_start;
    char *url;                 /* the decoded path, without the query */
    char *body;
    size_t body_len, body_cap;
    int body_too_large;        /* over payload_limit: the rest is drained, then 413 */
    size_t drained;            /* bytes read and dropped after body_too_large */
    route_params params;       /* the route's "{param}" values, in rq->url */
    struct conn_entry *conn_entry; /* the connection's deadlines (conntrack.h); may be NULL */
    size_t response_bytes;     /* counted in srv->response_bytes until completion */
    int admitted;              /* counted in srv->inflight */
    int working;               /* counted in srv->working */
    int suspended;
    int options;               /* an OPTIONS request: answered when its body is in */
    int status;                /* sent status, for metrics */
    uint32_t model_version;    /* X-Embedd-Model-Version of the reply; 0: none */
    /* Route-specific state (routes.c). */
    void *state;
    void (*free_state)(void *state);
    /* for the access log line (http.c, on_completed) */
    char method[16];           /* as the client sent it (cut at 15 bytes) */
    size_t reply_bytes;        /* body bytes of the queued reply; 0 for a stream */
};

/* Error replies in the route family's shape (errors.c). reply_fail takes
 * the status and error types from the kind, through the table of errors.h:
 * use it for every error that comes from model/ or server/ as a value.
 * reply_error is for the HTTP layer's own refusals, which choose a status
 * (and TEI error_type) themselves. */
void reply_fail(reply *rp, api_family api, emb_err_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void reply_error(reply *rp, api_family api, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* An OpenAI error with its "param" and "code" given (NULL: null), e.g.
 * 404 "model" "model_not_found" for an unknown model. */
void reply_openai_error(reply *rp, int status, const char *param, const char *code,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Parses the body as one JSON object; NULL after filling rp (routes.c). */
cJSON *route_parse_body(request *rq, api_family api, reply *rp);
/* The model version a client pins: the JSON field "model_version" of root
 * (may be NULL) or the request header X-Embedd-Model-Version; 0 for none.
 * -1 after filling rp (422) when it is not a positive integer or the two
 * disagree (routes.c). */
int route_get_pin(request *rq, const cJSON *root, api_family api, uint32_t *id, reply *rp);
/* 1 when a response of about `bytes` is within --max-response-bytes;
 * else 0 after filling rp (422 naming what to lower). Checked before the
 * response is built (routes.c). */
int route_response_fits(const server *srv, size_t bytes, api_family api, const char *lower,
                        reply *rp);
/* libmicrohttpd's URL decoder (MHD_OPTION_UNESCAPE_CALLBACK): %00 becomes
 * the overlong NUL C0 80, never a NUL that cuts the path (routes.c). */
size_t routes_unescape(void *cls, struct MHD_Connection *conn, char *s);
/* text with the request's prompt before it ("prompt_name" of root, which may
 * be NULL, else the model's default prompt; none: text as it is): a new
 * string the caller frees, or NULL after filling rp (422 for an unknown
 * prompt) (routes.c). */
char *route_prompted_text(const server *srv, const cJSON *root, api_family api, const char *text,
                          reply *rp);
/* An item id as JSON, as it came: a number, or a string (routes_items.c). */
void route_put_id(strbuf *b, const store_id *id);
/* An optional boolean field of root: def when missing or null, -1 after
 * filling rp (422) when it is not true or false (routes.c). */
int route_get_bool(const cJSON *root, const char *name, int def, api_family api, reply *rp);

/* Item and search handlers (routes_items.c). */
route_result handle_items_upsert(server *srv, request *rq, reply *rp);
void finish_items_upsert(server *srv, request *rq, reply *rp);
route_result handle_item_get(server *srv, request *rq, reply *rp);
route_result handle_item_delete(server *srv, request *rq, reply *rp);
route_result handle_items_delete(server *srv, request *rq, reply *rp);
route_result handle_items_count(server *srv, request *rq, reply *rp);
route_result handle_similar(server *srv, request *rq, reply *rp);
route_result handle_similar_get(server *srv, request *rq, reply *rp);
void finish_similar(server *srv, request *rq, reply *rp);

/* Qdrant collections (routes_qdrant.c). */
route_result handle_qd_collections(server *srv, request *rq, reply *rp);
route_result handle_qd_collection_create(server *srv, request *rq, reply *rp);
route_result handle_qd_collection_get(server *srv, request *rq, reply *rp);
route_result handle_qd_collection_delete(server *srv, request *rq, reply *rp);
route_result handle_qd_collection_exists(server *srv, request *rq, reply *rp);
route_result handle_qd_upsert(server *srv, request *rq, reply *rp);
void finish_qd_upsert(server *srv, request *rq, reply *rp);
route_result handle_qd_retrieve(server *srv, request *rq, reply *rp);
route_result handle_qd_point_get(server *srv, request *rq, reply *rp);
route_result handle_qd_search(server *srv, request *rq, reply *rp);
route_result handle_qd_query(server *srv, request *rq, reply *rp);
void finish_qd_search(server *srv, request *rq, reply *rp);
route_result handle_qd_delete(server *srv, request *rq, reply *rp);
route_result handle_qd_count(server *srv, request *rq, reply *rp);
/* Adds "collections" and "points" (all collections) to a JSON object just
 * written to b, before its closing brace (/health). */
void qd_health_counts(server *srv, strbuf *b);

/* Training control (routes_train.c). */
route_result handle_train_status(server *srv, request *rq, reply *rp);
route_result handle_train_pause(server *srv, request *rq, reply *rp);
route_result handle_train_resume(server *srv, request *rq, reply *rp);
route_result handle_train_rollback(server *srv, request *rq, reply *rp);
route_result handle_train_samples(server *srv, request *rq, reply *rp);
route_result handle_train_promote(server *srv, request *rq, reply *rp);
route_result handle_train_versions(server *srv, request *rq, reply *rp);
route_result handle_train_versions_stream(server *srv, request *rq, reply *rp);

/* The web console, the OpenAPI document, the docs page and the learning
 * curve (routes_web.c). */
route_result handle_web_root(server *srv, request *rq, reply *rp);
route_result handle_web_openapi(server *srv, request *rq, reply *rp);
route_result handle_web_docs(server *srv, request *rq, reply *rp);
route_result handle_train_history(server *srv, request *rq, reply *rp);

/* The route table and its lookup (routes.c). routes_find fills params
 * (may be NULL) with the matched route's "{param}" values. */
const route *routes_find(const char *path, const char *method, int *path_known,
                         const char **allow, route_params *params);
/* Every route, in table order (the OpenAPI document is checked against it). */
const route *routes_table(size_t *n);

/* The compute-thread callback of a route's job: resumes the connection. */
void server_job_done(emb_job *job);
/* Suspends rq's connection and queues job; finish runs once it is done
 * (job->failed tells whether it worked). */
void server_submit(server *srv, request *rq, emb_job *job);

/* ---- the daemon (http.c) ----------------------------------------------
 * serve.c (server/cli/serve.h) fills srv, starts everything the routes
 * use, then the daemon last; it stops the daemon's intake first. */

/* Starts libmicrohttpd on srv->opts.host:port with http_threads threads,
 * srv the context of every handler, and the connection tracker whose
 * sweeper enforces the total deadlines (conntrack.h); sets srv->port to
 * the bound port and srv->ready to 1. 0, or -1 with err ("cannot listen
 * on ..."). */
int http_start(server *srv, emb_err *err);
/* Stops accepting (ready 0, listening socket closed) and waits, up to
 * 120 s, until every admitted request has been answered. The daemon's
 * threads keep running: suspended requests resume through them. */
void http_quiesce(server *srv);
/* Stops the daemon and joins its threads; nothing when it never started. */
void http_stop(server *srv);

#endif
