/* http.c: the libmicrohttpd side of `embedd serve`: daemon start and stop,
 * the three-phase access handler, early refusals, replies and metrics.
 * See server.h for threads and ownership. */
#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "cli/cli.h"
#include "server.h"
#include "store/store_reembed.h"
#include "train.h"

/* ---- replies ------------------------------------------------------------ */

static const char *openai_error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 429:
        return "rate_limit_error";
    case 500:
    case 503:
        return "server_error";
    default:
        return "invalid_request_error";
    }
}

static const char *openai_error_code(int status)
{
    switch (status) {
    case 401:
        return "invalid_api_key";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 413:
        return "payload_too_large";
    case 429:
        return "rate_limit_exceeded";
    case 503:
        return "service_unavailable";
    default:
        return NULL;
    }
}

void reply_error(reply *rp, api_family api, int status, const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sb_free(&rp->body);
    rp->status = status;
    rp->content_type = "application/json";
    if (api == API_OPENAI) {
        const char *code = openai_error_code(status);
        sb_puts(&rp->body, "{\"error\":{\"message\":");
        sb_json_string(&rp->body, msg);
        sb_puts(&rp->body, ",\"type\":");
        sb_json_string(&rp->body, openai_error_type(status));
        sb_puts(&rp->body, ",\"param\":null,\"code\":");
        if (code != NULL)
            sb_json_string(&rp->body, code);
        else
            sb_puts(&rp->body, "null");
        sb_puts(&rp->body, "}}");
        return;
    }
    sb_puts(&rp->body, "{\"error\":");
    sb_json_string(&rp->body, msg);
    sb_puts(&rp->body, ",\"error_type\":");
    sb_json_string(&rp->body, type);
    sb_putc(&rp->body, '}');
}

static void reply_init(reply *rp)
{
    memset(rp, 0, sizeof *rp);
    rp->status = 200;
    rp->content_type = "application/json";
    sb_init(&rp->body, (size_t)1 << 30);
}

static enum MHD_Result send_reply(request *rq, reply *rp)
{
    if (rp->body.failed) {
        api_family api = rq->rt != NULL ? rq->rt->api : API_TEI;
        rp->body.failed = 0;
        reply_error(rp, api, 500, "Backend", "response too large or out of memory");
    }
    size_t len = 0;
    char *body = sb_take(&rp->body, &len);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body != NULL ? body : (char *)"",
                                        body != NULL ? MHD_RESPMEM_MUST_FREE
                                                     : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, rp->content_type);
    if (rp->allow != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, rp->allow);
    if (rq->model_version != 0) {
        char version[16];
        snprintf(version, sizeof version, "%u", rq->model_version);
        MHD_add_response_header(resp, "X-Embedd-Model-Version", version);
    }
    if (rp->status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    rq->status = rp->status;
    enum MHD_Result ret = MHD_queue_response(rq->conn, (unsigned)rp->status, resp);
    MHD_destroy_response(resp);
    sb_free(&rp->body);
    return ret;
}

/* ---- early checks (first call, before the body is read) ----------------- */

/* Constant-time comparison of the bearer token with the key. */
static int bearer_matches(const char *header, const char *key)
{
    const char *prefix = "Bearer "; /* the scheme is case-insensitive (RFC 7235) */
    if (header == NULL || strncasecmp(header, prefix, strlen(prefix)) != 0)
        return 0;
    const char *token = header + strlen(prefix);
    size_t tlen = strlen(token), klen = strlen(key);
    unsigned diff = (unsigned)(tlen ^ klen);
    for (size_t i = 0; i < klen; i++)
        diff |= (unsigned)(unsigned char)key[i] ^ (unsigned)(unsigned char)(i < tlen ? token[i] : 0);
    return diff == 0;
}

static api_family api_of_path(const char *url)
{
    return strncmp(url, "/v1/", 4) == 0 ? API_OPENAI : API_TEI;
}

/* Returns 1 and fills rp when the request is refused before its body. */
static int refuse_early(server *srv, request *rq, const char *url, const char *method,
                        reply *rp)
{
    int path_known = 0;
    const char *allow = NULL;
    rq->rt = routes_find(url, method, &path_known, &allow);
    if (rq->rt == NULL) {
        api_family api = api_of_path(url);
        if (path_known) {
            reply_error(rp, api, 405, "Validation", "method %s not allowed on %s", method, url);
            rp->allow = allow;
        } else {
            reply_error(rp, api, 404, "Validation", "no route %s %s", method, url);
        }
        return 1;
    }
    const route *rt = rq->rt;
    if (rt->needs_auth && srv->opts.api_key != NULL && srv->opts.api_key[0] != '\0') {
        const char *auth =
            MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!bearer_matches(auth, srv->opts.api_key)) {
            reply_error(rp, rt->api, 401, "Unauthorized",
                        auth == NULL ? "missing bearer token" : "invalid bearer token");
            return 1;
        }
    }
    const char *clen =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (clen != NULL && strtoull(clen, NULL, 10) > (unsigned long long)srv->opts.payload_limit) {
        reply_error(rp, rt->api, 413, "Validation", "payload of %s bytes exceeds the limit of %d",
                    clen, srv->opts.payload_limit);
        return 1;
    }
    if (rt->needs_compute) {
        if (!atomic_load(&srv->ready)) {
            reply_error(rp, rt->api, 503, "Unhealthy", "server is not ready");
            return 1;
        }
        int n = atomic_fetch_add(&srv->inflight, 1);
        rq->admitted = 1;
        if (n >= srv->opts.max_concurrent_requests) {
            reply_error(rp, rt->api, 429, "Overloaded",
                        "too many concurrent requests (limit %d)",
                        srv->opts.max_concurrent_requests);
            return 1;
        }
    }
    return 0;
}

/* ---- the access handler ------------------------------------------------ */

static int append_body(server *srv, request *rq, const char *data, size_t n)
{
    if (rq->body_too_large)
        return 0;
    if (rq->body_len + n > (size_t)srv->opts.payload_limit) {
        rq->body_too_large = 1;
        free(rq->body);
        rq->body = NULL;
        rq->body_len = rq->body_cap = 0;
        return 0;
    }
    if (rq->body_len + n + 1 > rq->body_cap) {
        size_t want = rq->body_cap < 4096 ? 4096 : rq->body_cap;
        while (want < rq->body_len + n + 1)
            want *= 2;
        char *p = realloc(rq->body, want);
        if (p == NULL)
            return -1;
        rq->body = p;
        rq->body_cap = want;
    }
    memcpy(rq->body + rq->body_len, data, n);
    rq->body_len += n;
    rq->body[rq->body_len] = '\0';
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    server *srv = cls;
    request *rq = *con_cls;
    reply rp;
    if (rq == NULL) {
        rq = calloc(1, sizeof *rq);
        if (rq == NULL)
            return MHD_NO;
        rq->conn = conn;
        rq->srv = srv;
        rq->t_start = mono_seconds();
        *con_cls = rq;
        rq->url = strdup(url);
        if (rq->url == NULL)
            return MHD_NO;
        reply_init(&rp);
        if (refuse_early(srv, rq, url, method, &rp))
            return send_reply(rq, &rp);
        sb_free(&rp.body);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (append_body(srv, rq, upload_data, *upload_data_size) != 0)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    reply_init(&rp);
    if (rq->suspended) {
        rq->suspended = 0;
        rq->rt->finish(srv, rq, &rp);
        if (rq->suspended) {   /* finish queued more work (a retry) */
            sb_free(&rp.body);
            return MHD_YES;
        }
        return send_reply(rq, &rp);
    }
    if (rq->body_too_large) {
        reply_error(&rp, rq->rt->api, 413, "Validation", "payload exceeds the limit of %d bytes",
                    srv->opts.payload_limit);
        return send_reply(rq, &rp);
    }
    if (rq->rt->handle(srv, rq, &rp) == ROUTE_SUSPEND) {
        sb_free(&rp.body);
        return MHD_YES;
    }
    return send_reply(rq, &rp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *srv = cls;
    request *rq = *con_cls;
    if (rq == NULL)
        return;
    if (rq->status != 0)
        metrics_request(srv->mx, rq->rt != NULL ? rq->rt->name : "unknown", rq->status,
                        mono_seconds() - rq->t_start);
    if (rq->free_state != NULL)
        rq->free_state(rq->state);
    free(rq->body);
    free(rq->url);
    if (rq->admitted)
        atomic_fetch_sub(&srv->inflight, 1);
    free(rq);
    *con_cls = NULL;
}

void server_job_done(emb_job *job)
{
    request *rq = job->user;
    MHD_resume_connection(rq->conn);
}

/* Suspends the connection and queues the job. If the batcher refuses (it
 * is stopping), the job completes at once as failed, through the same path. */
void server_submit(server *srv, request *rq, emb_job *job)
{
    job->user = rq;
    job->done = server_job_done;
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    if (batcher_submit(srv->batcher, job) != 0) {
        job->failed = 1;
        snprintf(job->error, sizeof job->error, "server is shutting down");
        server_job_done(job);
    }
}

/* ---- start and stop ---------------------------------------------------- */

static int resolve_bind(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len,
                        int *ipv6)
{
    struct addrinfo hints, *res = NULL;
    char portstr[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(portstr, sizeof portstr, "%d", port);
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    *ipv6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return 0;
}

/* ---- model versions and learning ---------------------------------------- */

static int parse_number(const char *name, const char *s, double lo, double hi, double *out,
                        emb_err *err)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= lo && v <= hi))
        return emb_fail(err, "--%s must be a number in [%g, %g], got '%s'", name, lo, hi, s);
    *out = v;
    return 0;
}

static int learner_options(const server_opts *o, const server *srv, learner_opts *lo,
                           emb_err *err)
{
    memset(lo, 0, sizeof *lo);
    if (strcmp(o->train_objective, "simcse") == 0)
        lo->objective = EMB_OBJ_SIMCSE;
    else if (strcmp(o->train_objective, "mlm") == 0)
        lo->objective = EMB_OBJ_MLM;
    else if (strcmp(o->train_objective, "both") == 0)
        lo->objective = EMB_OBJ_BOTH;
    else
        return emb_fail(err, "--train-objective must be simcse, mlm or both");
    double lr, l2sp, ema, tol, every;
    if (parse_number("train-lr", o->train_lr, 0, 10, &lr, err) ||
        parse_number("train-l2sp", o->train_l2sp, 0, 1e6, &l2sp, err) ||
        parse_number("train-ema", o->train_ema, 0, 0.999999, &ema, err) ||
        parse_number("gate-tolerance", o->gate_tolerance, 0, 100, &tol, err))
        return -1;
    size_t n = strlen(o->publish_every);
    int secs = n > 0 && o->publish_every[n - 1] == 's';
    char buf[64];
    snprintf(buf, sizeof buf, "%.*s", (int)(secs ? n - 1 : n), o->publish_every);
    if (parse_number("publish-every", buf, 1, 1e9, &every, err))
        return -1;
    lo->lr = (float)lr;
    lo->l2sp = (float)l2sp;
    lo->ema_decay = (float)ema;
    lo->gate_tolerance = (float)tol;
    lo->publish_every_steps = secs ? 0 : (int)every;
    lo->publish_every_secs = secs ? every : 0;
    lo->batch_size = o->train_batch_size;
    lo->max_seq_len = o->train_max_seq_len < srv->model->cfg.max_seq_length
                          ? o->train_max_seq_len : srv->model->cfg.max_seq_length;
    lo->max_cpu = (float)o->train_max_cpu / 100.0f;
    lo->min_samples = o->train_min_samples;
    lo->holdout_eval_max = 256;
    lo->eval_sts = o->eval_sts;
    lo->collapse_max_cos = 0.98f;
    lo->collapse_cos_rise = 0.1f;
    lo->collapse_min_var = 0.5f;
    lo->from_embed = o->train_from_embed;
    lo->from_items = o->train_from_items;
    lo->from_explicit = o->train_from_explicit;
    lo->paused = o->train_paused;
    lo->data_dir = o->data_dir;
    lo->base_dir = o->model_dir;
    lo->base = srv->model;
    lo->seed = (uint64_t)o->train_seed;
    const char *nan_every = getenv("EMBEDD_DEBUG_NAN_EVERY"); /* tests only */
    lo->nan_every = nan_every != NULL ? atoi(nan_every) : 0;
    return 0;
}

/* The learner always runs: with --train off it only re-embeds stored items
 * when the store searches another version than the current one. */
static int start_learning(server *srv, emb_err *err)
{
    learner_opts lo;
    if (learner_options(&srv->opts, srv, &lo, err) != 0)
        return -1;
    lo.enabled = srv->opts.train;
    srv->learner = learner_start(&lo, srv->versions, srv->batcher, srv->store, srv->mx, err);
    if (srv->learner == NULL)
        return -1;
    batcher_set_idle(srv->batcher, learner_idle, srv->learner, 0.25);
    return 0;
}

/* Once a second while serving: persist the sample buffer, update gauges. */
static void housekeeping(server *srv)
{
    long done = 0, total = 0;
    store_reembed_progress(srv->store, &done, &total);
    unsigned long buffer = 0;
    int paused = 1;
    if (srv->learner != NULL) {
        learner_flush(srv->learner);
        learner_gauges(srv->learner, &buffer, &paused);
    }
    metrics_train_gauges(srv->mx, versions_current_id(srv->versions), buffer, done, total,
                         paused);
}

static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    fputs("embedd: http: ", stderr);
    vfprintf(stderr, fmt, ap);
}

int server_run(server_opts *opts)
{
    server srv;
    emb_err err;
    int rc = 1;
    memset(&srv, 0, sizeof srv);
    srv.opts = *opts;
    atomic_init(&srv.inflight, 0);
    atomic_init(&srv.ready, 0);

    /* Signals are taken by sigwait below; every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    cli_set_threads(opts->threads);

    emb_precision precision;
    if (emb_precision_parse(opts->precision, &precision) != 0) {
        fprintf(stderr, "embedd serve: --precision must be fp32 or int8, not '%s'\n",
                opts->precision);
        return 2;
    }
    srv.model = emb_model_load_precision(opts->model_dir, precision, &err);
    if (srv.model == NULL) {
        fprintf(stderr, "embedd serve: %s\n", err.msg);
        return 1;
    }
    srv.model_name = opts->served_model_name;
    if (srv.model_name == NULL || srv.model_name[0] == '\0') {
        const char *slash = strrchr(opts->model_dir, '/');
        srv.model_name = slash != NULL && slash[1] != '\0' ? slash + 1 : opts->model_dir;
    }
    srv.mx = metrics_new();
    if (srv.mx == NULL) {
        fprintf(stderr, "embedd serve: out of memory\n");
        goto out;
    }
    srv.versions = versions_open(opts->data_dir, opts->model_dir, srv.model, 3, &err);
    if (srv.versions == NULL) {
        fprintf(stderr, "embedd serve: %s\n", err.msg);
        goto out;
    }
    if (srv.opts.max_batch_tokens < srv.model->cfg.max_seq_length)
        srv.opts.max_batch_tokens = srv.model->cfg.max_seq_length;
    srv.batcher = batcher_start(srv.model, srv.opts.max_batch_tokens, srv.mx, &err);
    if (srv.batcher == NULL) {
        fprintf(stderr, "embedd serve: %s\n", err.msg);
        goto out;
    }

    store_options so = {.dir = opts->data_dir, .dim = emb_model_dim(srv.model),
                        .hnsw_threshold = opts->hnsw_threshold, .hnsw_m = opts->hnsw_m,
                        .hnsw_ef_construction = opts->hnsw_ef_construction,
                        .hnsw_ef = opts->hnsw_ef,
                        .snapshot_wal_bytes = (uint64_t)opts->snapshot_wal_bytes};
    store_recovery rec;
    memset(&rec, 0, sizeof rec);
    srv.store = store_open(&so, &rec, &err);
    if (srv.store == NULL) {
        fprintf(stderr, "embedd serve: %s\n", err.msg);
        goto out;
    }
    if (rec.message[0] != '\0')
        fprintf(stderr, "embedd: store: %s\n", rec.message);
    if (start_learning(&srv, &err) != 0) { /* learner_start aligns the store (versions_align) */
        fprintf(stderr, "embedd serve: %s\n", err.msg);
        goto out;
    }

    struct sockaddr_storage addr;
    socklen_t addr_len = 0;
    int ipv6 = 0;
    if (resolve_bind(opts->host, opts->port, &addr, &addr_len, &ipv6) != 0) {
        fprintf(stderr, "embedd serve: cannot resolve host '%s'\n", opts->host);
        goto out;
    }
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | (ipv6 ? MHD_USE_IPv6 : 0);
    srv.daemon = MHD_start_daemon(
        flags, (uint16_t)opts->port, NULL, NULL, on_request, &srv,
        MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)opts->http_threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)opts->timeout,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(opts->max_concurrent_requests + 64),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, &srv,
        MHD_OPTION_END);
    if (srv.daemon == NULL) {
        fprintf(stderr, "embedd serve: cannot listen on %s:%d\n", opts->host, opts->port);
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv.daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv.port = info != NULL ? info->port : opts->port;
    atomic_store(&srv.ready, 1);
    fprintf(stderr, "embedd: model %s (%d dims, %s pooling, max %d tokens)\n", srv.model_name,
            emb_model_dim(srv.model), emb_pooling_name(srv.model->cfg.pooling),
            srv.model->cfg.max_seq_length);
    fprintf(stderr, "embedd: listening on http://%s:%d\n", opts->host, srv.port);
    fflush(stderr);

    int sig = 0;
    for (;;) {
        struct timespec second = {1, 0};
        sig = sigtimedwait(&sigs, NULL, &second);
        if (sig == SIGINT || sig == SIGTERM)
            break;
        housekeeping(&srv);
    }
    fprintf(stderr, "embedd: %s received, finishing in-flight requests\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT");
    atomic_store(&srv.ready, 0);
    /* Stop accepting: new connections are refused at once instead of
     * waiting in the backlog of a socket nobody reads. */
    MHD_socket listen_fd = MHD_quiesce_daemon(srv.daemon);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    /* Every admitted request gets its answer before the daemon stops. */
    for (int waited_ms = 0; atomic_load(&srv.inflight) > 0 && waited_ms < 120000; waited_ms += 5)
        usleep(5000);
    batcher_stop(srv.batcher);
    srv.batcher = NULL;
    learner_stop(srv.learner);
    srv.learner = NULL;
    MHD_stop_daemon(srv.daemon);
    srv.daemon = NULL;
    /* A snapshot now makes the next start read one file, not the whole log. */
    if (opts->data_dir != NULL && opts->data_dir[0] != '\0' && store_snapshot(srv.store, &err) != 0)
        fprintf(stderr, "embedd: snapshot at shutdown failed: %s\n", err.msg);
    store_close(srv.store);
    srv.store = NULL;
    fprintf(stderr, "embedd: stopped\n");
    rc = 0;
out:
    if (srv.daemon != NULL)
        MHD_stop_daemon(srv.daemon);
    batcher_stop(srv.batcher);
    learner_stop(srv.learner);
    if (srv.store != NULL)
        store_close(srv.store);
    metrics_free(srv.mx);
    versions_free(srv.versions);
    emb_model_free(srv.model);
    return rc;
}
