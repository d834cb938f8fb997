/* http.c: the libmicrohttpd side of `embedd serve`: daemon start and stop,
 * the three-phase access handler, early refusals, replies and metrics.
 * See server.h for threads and ownership. */
#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "conntrack.h"
#include "feed.h"
#include "frontdoor.h"
#include "server.h"

/* Per-connection memory of libmicrohttpd (request head, header records,
 * write buffer), mapped lazily. Its default, 32 KiB, ran out at about 460
 * query arguments and then hung the connection instead of answering. */
#define CONNECTION_POOL_BYTES (128 * 1024)
/* Our own head limits, well inside the pool, so that we answer a large
 * head with JSON before libmicrohttpd would with HTML. */
#define MAX_HEAD_BYTES (32 * 1024)
#define MAX_URI_BYTES (16 * 1024)
/* A body over the payload limit is read and dropped up to this much, so
 * that a client which sends its whole body before reading (Python's
 * http.client, urllib) sees the 413 instead of a broken pipe. */
#define DRAIN_MAX_BYTES ((size_t)64 << 20)
/* Replies up to this size are never refused for the response budget. */
#define SMALL_REPLY_BYTES (16 * 1024)

/* ---- replies (the error replies are in errors.c) --------------------- */

static void reply_init(reply *rp)
{
    memset(rp, 0, sizeof *rp);
    rp->status = 200;
    rp->content_type = "application/json";
    sb_init(&rp->body, (size_t)1 << 30);
}

/* ---- CORS (--cors-allow-origin) ---------------------------------------- */

/* The Access-Control-Allow-Origin value for this request's Origin: "*"
 * when any origin is allowed, the origin itself when it is in the list,
 * NULL when CORS is off, the request has no Origin or it is not allowed. */
static const char *cors_origin(const request *rq)
{
    const char *list = rq->srv->opts.cors_allow_origin;
    if (list == NULL || list[0] == '\0')
        return NULL;
    const char *origin = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Origin");
    if (origin == NULL)
        return NULL;
    size_t olen = strlen(origin);
    for (const char *p = list; *p != '\0';) {
        p += strspn(p, " ,");
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && p[m - 1] == ' ')
            m--;
        if (m == 1 && p[0] == '*')
            return "*";
        if (m > 0 && m == olen && strncasecmp(p, origin, m) == 0)
            return origin;
        p += n;
    }
    return NULL;
}

/* "Authorization, Content-Type" and the other headers a preflight asked
 * for (Access-Control-Request-Headers), each once. */
static void cors_allow_headers(const char *asked, char *out, size_t cap)
{
    size_t len = (size_t)snprintf(out, cap, "Authorization, Content-Type");
    for (const char *p = asked; p != NULL && *p != '\0' && len + 1 < cap;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, " \t,");
        int ours = (n == 13 && strncasecmp(p, "authorization", n) == 0) ||
                   (n == 12 && strncasecmp(p, "content-type", n) == 0);
        if (n > 0 && !ours && len + n + 3 < cap)
            len += (size_t)snprintf(out + len, cap - len, ", %.*s", (int)n, p);
        p += n;
    }
}

/* CORS headers of an allowed origin: on every reply, and on a preflight
 * also the methods and headers the path accepts. Vary: Origin because the
 * answer depends on it (a cache must not give one origin's to another). */
static void add_cors_headers(const request *rq, const reply *rp, struct MHD_Response *resp)
{
    const char *allow_origin = cors_origin(rq);
    if (allow_origin == NULL)
        return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", allow_origin);
    MHD_add_response_header(resp, "Vary", "Origin");
    if (!rp->preflight) {
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Embedd-Model-Version, Retry-After");
        return;
    }
    char methods[96];
    snprintf(methods, sizeof methods, "%s, OPTIONS", rp->allow != NULL ? rp->allow : "");
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", methods);
    /* what the browser asks for, plus the two our clients always need */
    const char *asked = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND,
                                                    "Access-Control-Request-Headers");
    char headers[1024];
    cors_allow_headers(asked, headers, sizeof headers);
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", headers);
    MHD_add_response_header(resp, "Access-Control-Max-Age", "86400");
}

/* OPTIONS on a known path: 204 with Allow (RFC 9110), and with the CORS
 * preflight headers when the Origin is allowed (add_cors_headers). No API
 * key: browsers never send credentials on a preflight. An unknown path is
 * a 404 as for any method. */
static int answer_options(request *rq, const char *url, reply *rp)
{
    int path_known = 0;
    const char *allow = NULL;
    routes_find(rq->url, "OPTIONS", &path_known, &allow, NULL);
    if (!path_known) {
        reply_error(rp, strncmp(url, "/v1/", 4) == 0 ? API_OPENAI : API_TEI, 404, "Validation",
                    "no route OPTIONS %s", url);
        return 1;
    }
    sb_free(&rp->body);
    rp->status = 204;
    rp->allow = allow;
    rp->preflight = 1;
    return 1;
}

/* An event stream (feed.h): its own response, no body. */
static enum MHD_Result send_stream(request *rq, reply *rp)
{
    struct MHD_Response *resp = rp->stream;
    rp->stream = NULL;
    sb_free(&rp->body);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    add_cors_headers(rq, rp, resp);
    rq->status = 200;
    enum MHD_Result ret = MHD_queue_response(rq->conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    conntrack_set(rq->srv->conns, rq->conn_entry, CONN_STREAM);
    return ret;
}

/* Counts len bytes against --max-response-memory; 0 when they do not fit
 * (nothing counted then). Small replies are counted but always pass, so
 * /health, /metrics and error replies answer when large ones fill the
 * budget (their total is bounded by the connection limit). */
static int reserve_response_bytes(server *srv, request *rq, size_t len)
{
    double budget = srv->opts.max_response_memory;
    if (budget <= 0 || len == 0)
        return 1;
    long long total = atomic_fetch_add(&srv->response_bytes, (long long)len) + (long long)len;
    if ((double)total > budget && len > SMALL_REPLY_BYTES) {
        atomic_fetch_sub(&srv->response_bytes, (long long)len);
        return 0;
    }
    rq->response_bytes = len;
    return 1;
}

/* The request's work is done once its reply is ready: it stops counting
 * against --max-concurrent-requests then, not when the last byte has been
 * sent (the completion callback runs after the client may already have
 * read the reply and sent its next request). */
static void end_work(request *rq)
{
    if (rq->working) {
        rq->working = 0;
        atomic_fetch_sub(&rq->srv->working, 1);
    }
}

/* Another request than a probe on the probes' daemon (frontdoor.h): a
 * client that checked /health and then reuses the connection for its
 * work. It is answered with Connection: close, so that its next request
 * comes through the front door to the main daemon; probes keep their
 * keep-alive connection. */
static int off_probe_lane(const request *rq)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_DAEMON);
    if (ci == NULL || ci->daemon == NULL || ci->daemon != rq->srv->probes)
        return 0;
    return rq->rt == NULL ||
           (strcmp(rq->rt->path, "/health") != 0 && strcmp(rq->rt->path, "/metrics") != 0);
}

static enum MHD_Result send_reply(request *rq, reply *rp)
{
    end_work(rq);
    if (rp->stream != NULL)
        return send_stream(rq, rp);
    if (rp->body.failed) {
        api_family api = rq->rt != NULL ? rq->rt->api : API_TEI;
        rp->body.failed = 0;
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "response too large or out of memory");
    }
    if (!reserve_response_bytes(rq->srv, rq, rp->body.len)) {
        api_family api = rq->rt != NULL ? rq->rt->api : API_TEI;
        size_t want = rp->body.len;
        reply_error(rp, api, 503, "Unhealthy",
                    "responses waiting to be sent fill the server's memory budget "
                    "(--max-response-memory %.0f bytes; this one has %zu); retry later",
                    rq->srv->opts.max_response_memory, want);
    }
    size_t len = 0;
    char *body = sb_take(&rp->body, &len);
    rq->reply_bytes = len;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body != NULL ? body : (char *)"",
                                        body != NULL ? MHD_RESPMEM_MUST_FREE
                                                     : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        free(body);
        return MHD_NO;
    }
    if (rp->status != 204)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, rp->content_type);
    if (rp->allow != NULL) {
        char allow[96];
        snprintf(allow, sizeof allow, "%s%s", rp->allow, rp->preflight ? ", OPTIONS" : "");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (rp->vary != NULL)
        MHD_add_response_header(resp, "Vary", rp->vary);
    add_cors_headers(rq, rp, resp);
    if (rq->model_version != 0) {
        char version[16];
        snprintf(version, sizeof version, "%u", rq->model_version);
        MHD_add_response_header(resp, "X-Embedd-Model-Version", version);
    }
    if (rq->srv->replica[0] != '\0')
        MHD_add_response_header(resp, "X-Embedd-Replica", rq->srv->replica);
    if (rp->status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    /* every 429 and 503 is temporary: Retry-After, 1 s unless the reply says */
    int retry = rp->retry_after > 0 ? rp->retry_after
                : (rp->status == 503 || rp->status == 429) ? 1 : 0;
    if (retry > 0) {
        char secs[16];
        snprintf(secs, sizeof secs, "%d", retry);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, secs);
    }
    if (rp->close || off_probe_lane(rq))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    rq->status = rp->status;
    enum MHD_Result ret = MHD_queue_response(rq->conn, (unsigned)rp->status, resp);
    MHD_destroy_response(resp);
    sb_free(&rp->body);
    conntrack_set(rq->srv->conns, rq->conn_entry, CONN_SENDING);
    return ret;
}

/* ---- early checks (first call, before the body is read) ----------------- */

/* Constant-time comparison of a token with the key. */
static int key_matches(const char *token, const char *key)
{
    size_t tlen = strlen(token), klen = strlen(key);
    unsigned diff = (unsigned)(tlen ^ klen);
    for (size_t i = 0; i < klen; i++)
        diff |= (unsigned)(unsigned char)key[i] ^ (unsigned)(unsigned char)(i < tlen ? token[i] : 0);
    return diff == 0;
}

/* The same for "Authorization: Bearer TOKEN". */
static int bearer_matches(const char *header, const char *key)
{
    const char *prefix = "Bearer "; /* the scheme is case-insensitive (RFC 7235) */
    if (header == NULL || strncasecmp(header, prefix, strlen(prefix)) != 0)
        return 0;
    return key_matches(header + strlen(prefix), key);
}

static api_family api_of_path(const char *url)
{
    return strncmp(url, "/v1/", 4) == 0 ? API_OPENAI : API_TEI;
}

/* What the request head says about its framing and size. */
typedef struct head_scan {
    size_t bytes;              /* names and values of headers (or arguments) */
    int n_te, n_cl;
    const char *te, *cl;
    int cl_differ;             /* two Content-Length headers with different values */
} head_scan;

static enum MHD_Result scan_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    head_scan *h = cls;
    h->bytes += strlen(key) + (value != NULL ? strlen(value) : 0) + 4;
    if (kind != MHD_HEADER_KIND || value == NULL)
        return MHD_YES;
    if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        h->n_te++;
        h->te = value;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (h->cl != NULL && strcmp(h->cl, value) != 0)
            h->cl_differ = 1;
        h->n_cl++;
        h->cl = value;
    }
    return MHD_YES;
}

static int all_digits(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return 0;
    }
    return 1;
}

/* Refuses (1, rp filled) a head that is too large or whose body framing is
 * ambiguous. libmicrohttpd takes the first Content-Length, lets chunked win
 * over Content-Length and waits forever for a body it cannot frame
 * ("xchunked"); a proxy in front may frame the same bytes differently
 * (request smuggling), so all of these get 400 and the connection closes. */
static int refuse_head(request *rq, const char *url, reply *rp)
{
    api_family api = api_of_path(url);
    head_scan args = {0}, hdrs = {0};
    MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, scan_value, &args);
    MHD_get_connection_values(rq->conn, MHD_HEADER_KIND, scan_value, &hdrs);
    size_t uri_bytes = strlen(url) + args.bytes;
    rp->close = 1;
    if (uri_bytes > MAX_URI_BYTES) {
        reply_error(rp, api, 414, "Validation", "request target of %zu bytes exceeds %d",
                    uri_bytes, MAX_URI_BYTES);
        return 1;
    }
    if (uri_bytes + hdrs.bytes > MAX_HEAD_BYTES) {
        reply_error(rp, api, 431, "Validation", "request head of %zu bytes exceeds %d",
                    uri_bytes + hdrs.bytes, MAX_HEAD_BYTES);
        return 1;
    }
    if (hdrs.n_te > 1 || (hdrs.te != NULL && strcasecmp(hdrs.te, "chunked") != 0)) {
        reply_error(rp, api, 400, "Validation",
                    "unsupported Transfer-Encoding '%.100s' (only a single 'chunked')",
                    hdrs.te);
        return 1;
    }
    if (hdrs.te != NULL && hdrs.n_cl > 0) {
        reply_error(rp, api, 400, "Validation",
                    "both Content-Length and Transfer-Encoding: the body's length is ambiguous");
        return 1;
    }
    if (hdrs.cl_differ) {
        reply_error(rp, api, 400, "Validation", "conflicting Content-Length headers");
        return 1;
    }
    if (hdrs.cl != NULL && !all_digits(hdrs.cl)) {
        reply_error(rp, api, 400, "Validation", "malformed Content-Length '%.40s'", hdrs.cl);
        return 1;
    }
    rp->close = 0;
    return 0;
}

/* Why the request lacks the API key, or NULL when it carries it: as
 * "Authorization: Bearer KEY", or on the Qdrant routes as "api-key: KEY"
 * (the header Qdrant's clients send). */
static const char *key_refusal(request *rq, const route *rt, const char *key)
{
    const char *auth =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (auth != NULL)
        return bearer_matches(auth, key) ? NULL : "invalid bearer token";
    if (rt->api != API_QDRANT)
        return "missing bearer token";
    const char *qd_key = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "api-key");
    if (qd_key == NULL)
        return "missing api key (the api-key header or Authorization: Bearer)";
    return key_matches(qd_key, key) ? NULL : "invalid api key";
}

/* Returns 1 and fills rp when the request is refused before its body. */
static int refuse_early(server *srv, request *rq, const char *url, const char *method,
                        reply *rp)
{
    int path_known = 0;
    const char *allow = NULL;
    /* HEAD is GET without the body: libmicrohttpd sends the same headers
     * and leaves the body out. */
    const char *as_method = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0 ? MHD_HTTP_METHOD_GET : method;
    rq->rt = routes_find(rq->url, as_method, &path_known, &allow, &rq->params);
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
        const char *why = key_refusal(rq, rt, srv->opts.api_key);
        if (why != NULL) {
            reply_error(rp, rt->api, 401, "Unauthorized", "%s", why);
            return 1;
        }
    }
    const char *clen =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = clen != NULL ? strtoull(clen, NULL, 10) : 0;
    if (declared > (unsigned long long)srv->opts.payload_limit) {
        /* A client that waits for "100 Continue" sends nothing more, and a
         * body past the drain bound is not worth reading: answer now. Any
         * other is read and dropped, and answered at its end. */
        const char *expect =
            MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
        if (expect != NULL || declared > DRAIN_MAX_BYTES) {
            reply_error(rp, rt->api, 413, "Validation",
                        "payload of %s bytes exceeds the limit of %d", clen,
                        srv->opts.payload_limit);
            rp->close = 1;
            return 1;
        }
        rq->body_too_large = 1;
        return 0;
    }
    if (rt->needs_compute) {
        if (!atomic_load(&srv->ready)) {
            reply_error(rp, rt->api, 503, "Unhealthy", "server is not ready");
            return 1;
        }
        atomic_fetch_add(&srv->inflight, 1);
        rq->admitted = 1;
        int n = atomic_fetch_add(&srv->working, 1);
        rq->working = 1;
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

/* 0, or -1 to close the connection (out of memory, or a refused body
 * longer than we drain). */
static int append_body(server *srv, request *rq, const char *data, size_t n)
{
    if (rq->body_too_large) {
        rq->drained += n;
        return rq->drained > DRAIN_MAX_BYTES ? -1 : 0;
    }
    if (rq->body_len + n > (size_t)srv->opts.payload_limit) {
        rq->body_too_large = 1;
        rq->drained = rq->body_len + n;
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
        snprintf(rq->method, sizeof rq->method, "%s", method);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        rq->conn_entry = ci != NULL ? ci->socket_context : NULL;
        /* The head is in. If its deadline cut the connection while it
         * waited for a busy thread, answering would be wasted work. */
        if (conntrack_set(srv->conns, rq->conn_entry, CONN_BODY))
            return MHD_NO;
        reply_init(&rp);
        if (refuse_head(rq, url, &rp))
            return send_reply(rq, &rp);
        /* OPTIONS is answered once its (empty) body is in: libmicrohttpd
         * closes a connection whose answer comes before that, and a
         * browser's preflight is followed by the real request */
        rq->options = strcmp(method, MHD_HTTP_METHOD_OPTIONS) == 0;
        if (!rq->options && refuse_early(srv, rq, url, method, &rp))
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
    if (rq->options) {
        answer_options(rq, rq->url, &rp);
        return send_reply(rq, &rp);
    }
    if (!rq->suspended)
        conntrack_set(srv->conns, rq->conn_entry, CONN_HANDLING); /* the body is in */
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

/* The route's name in metrics and the access log. */
static const char *route_label(const request *rq)
{
    if (rq->rt != NULL)
        return rq->rt->name;
    return rq->options ? "options" : "unknown";
}

/* ---- the access log ------------------------------------------------------ */

/* The client's address as text ("127.0.0.1", "::1"), or "-". */
static void client_address(struct MHD_Connection *conn, char *out, size_t cap)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci != NULL ? ci->client_addr : NULL;
    snprintf(out, cap, "-");
    if (sa != NULL && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa != NULL && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
}

/* Why a request ended without its response sent in full; NULL when it was. */
static const char *termination_name(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return NULL;
    case MHD_REQUEST_TERMINATED_WITH_ERROR: return "error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR: return "read_error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client_abort";
    default: return "other";
    }
}

/* One line per request (docs/logs.md): never the body, the query or a
 * header. Probes (/health, /metrics) only at debug: a load balancer
 * asking every second would bury everything else. */
static void log_access(struct MHD_Connection *conn, const request *rq,
                       enum MHD_RequestTerminationCode toe, double seconds)
{
    int probe = rq->rt != NULL &&
                (strcmp(rq->rt->path, "/health") == 0 || strcmp(rq->rt->path, "/metrics") == 0);
    log_line ln;
    if (!log_begin(&ln, probe ? LOG_DEBUG : LOG_INFO, "request"))
        return;
    char client[INET6_ADDRSTRLEN + 1];
    client_address(conn, client, sizeof client);
    log_str(&ln, "method", rq->method);
    log_str(&ln, "path", rq->url);
    log_int(&ln, "status", rq->status);
    log_num(&ln, "duration_ms", seconds * 1000.0, 2);
    log_int(&ln, "response_bytes", (long long)rq->reply_bytes);
    log_int(&ln, "request_bytes",
            (long long)(rq->body_too_large ? rq->drained : rq->body_len));
    log_int(&ln, "model_version", rq->model_version);
    log_str(&ln, "client", client);
    log_str(&ln, "route", route_label(rq));
    const char *end = termination_name(toe);
    if (end != NULL)
        log_str(&ln, "end", end);
    log_end(&ln);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *srv = cls;
    request *rq = *con_cls;
    if (rq == NULL)
        return;
    double seconds = mono_seconds() - rq->t_start;
    if (rq->status != 0)
        metrics_request(srv->mx, route_label(rq), rq->status, seconds);
    log_access(conn, rq, toe, seconds);
    if (rq->free_state != NULL)
        rq->free_state(rq->state);
    free(rq->body);
    free(rq->url);
    end_work(rq);
    if (rq->admitted)
        atomic_fetch_sub(&srv->inflight, 1);
    if (rq->response_bytes > 0)
        atomic_fetch_sub(&srv->response_bytes, (long long)rq->response_bytes);
    /* Until the next request's head: a keep-alive connection at rest. */
    conntrack_set(srv->conns, rq->conn_entry, CONN_IDLE);
    free(rq);
    *con_cls = NULL;
}

/* libmicrohttpd's connection start and end: the tracker's entry lives in
 * the connection's socket context. CLOSED comes before libmicrohttpd
 * closes the fd (daemon.c, MHD_cleanup_connections), so the sweeper never
 * shuts down a reused fd. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = ci != NULL ? conntrack_add(srv->conns, ci->connect_fd) : NULL;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        conntrack_remove(srv->conns, *socket_context);
        *socket_context = NULL;
        /* The front door counted it against the connection limits. */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        frontdoor_release(srv->door, ci != NULL ? ci->client_addr : NULL);
    }
}

static void count_cut(void *ctx, conn_phase p)
{
    server *srv = ctx;
    metrics_connection_cut(srv->mx, conntrack_phase_name(p));
}

/* Thousands of connections need as many descriptors: raise the soft limit
 * to the hard one when it is lower than that. */
static void raise_fd_limit(int connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)connections + 256;
    if (rl.rlim_cur >= want || rl.rlim_cur == rl.rlim_max)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

void server_job_done(emb_job *job)
{
    request *rq = job->user;
    MHD_resume_connection(rq->conn);
}

/* Suspends the connection and queues the job. If the batcher refuses (it
 * is stopping), the job completes at once as failed, through the same
 * path, with the batcher's error kind and message. */
void server_submit(server *srv, request *rq, emb_job *job)
{
    job->user = rq;
    job->done = server_job_done;
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
    if (batcher_submit(srv->batcher, job) != 0)
        server_job_done(job);
}

/* ---- start and stop ---------------------------------------------------- */

#define FEED_MAX_SUBSCRIBERS 16

static int resolve_bind(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
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
    freeaddrinfo(res);
    return 0;
}

/* libmicrohttpd's messages, at warn, at most LOG_PER_SECOND a second: a
 * flood of refused connections (one line each) must not fill the disk. */
#define LOG_PER_SECOND 20
static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static time_t window;
    static int shown, hidden;
    if (!log_on(LOG_WARN))
        return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0'; /* its messages end in a newline */
    time_t now = time(NULL);
    int show = 0, not_shown = 0;
    pthread_mutex_lock(&lock);
    if (now != window) {
        not_shown = hidden;
        window = now;
        shown = hidden = 0;
    }
    if (shown < LOG_PER_SECOND) {
        shown++;
        show = 1;
    } else {
        hidden++;
    }
    pthread_mutex_unlock(&lock);
    if (not_shown > 0)
        log_msg(LOG_WARN, "http: (%d more messages not shown)", not_shown);
    if (show)
        log_msg(LOG_WARN, "http: %s", line);
}

/* One libmicrohttpd daemon without a listening socket (the front door
 * hands it connections) with threads threads (1: one internal thread). */
static struct MHD_Daemon *start_daemon(server *srv, unsigned threads)
{
    const server_opts *opts = &srv->opts;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET;
    /* A pool size of 0 or 1 makes libmicrohttpd log a warning: one thread
     * is asked for by leaving the option out (the array ends early). */
    struct MHD_OptionItem pool[] = {
        {MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    if (threads <= 1)
        pool[0] = pool[1];
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, srv,
        MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL,
        MHD_OPTION_ARRAY, pool,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)opts->timeout,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)opts->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)opts->max_connections_per_ip,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_POOL_BYTES,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_UNESCAPE_CALLBACK, routes_unescape, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_END);
}

/* Starts libmicrohttpd on opts.host:opts.port; see server.h. The
 * listening socket is the front door's (frontdoor.h): libmicrohttpd gets
 * each connection once its first head has passed. */
int http_start(server *srv, emb_err *err)
{
    const server_opts *opts = &srv->opts;
    struct sockaddr_storage addr;
    socklen_t addr_len = 0;
    if (resolve_bind(opts->host, opts->port, &addr, &addr_len) != 0)
        return emb_fail(err, "cannot resolve host '%s'", opts->host);
    srv->feed = feed_new(srv->versions, FEED_MAX_SUBSCRIBERS);
    if (srv->feed == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    conntrack_limits limits = {{0}};
    limits.seconds[CONN_HEAD] = opts->header_timeout;
    limits.seconds[CONN_BODY] = opts->body_timeout;
    limits.seconds[CONN_SENDING] = opts->send_timeout;
    limits.seconds[CONN_IDLE] = opts->keepalive_timeout;
    srv->conns = conntrack_new(&limits, count_cut, srv);
    if (srv->conns == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "cannot start the connection sweeper");
    raise_fd_limit(opts->max_connections);
    srv->door = frontdoor_open(srv, (struct sockaddr *)&addr, addr_len, err);
    if (srv->door == NULL)
        return -1;
    srv->daemon = start_daemon(srv, (unsigned)opts->http_threads);
    /* The probes' lane: one thread of its own for /health and /metrics
     * (frontdoor.h); anything else on it is answered once and the
     * connection closed (off_probe_lane). */
    srv->probes = start_daemon(srv, 1);
    if (srv->daemon == NULL || srv->probes == NULL)
        return emb_fail(err, "cannot start the HTTP daemon on %s:%d", opts->host, opts->port);
    srv->port = frontdoor_port(srv->door);
    if (frontdoor_start(srv->door, srv->daemon, srv->probes) != 0)
        return emb_fail(err, "cannot start the accept thread");
    atomic_store(&srv->ready, 1);
    return 0;
}

void http_quiesce(server *srv)
{
    atomic_store(&srv->ready, 0);
    if (srv->daemon == NULL) {
        feed_close(srv->feed);
        return;
    }
    /* Stop accepting: new connections are refused at once instead of
     * waiting in the backlog of a socket nobody reads. Heads already in
     * the front door still pass (to get their 503) until http_stop. */
    frontdoor_quiesce(srv->door);
    feed_close(srv->feed); /* version streams end now (after the socket: not to delay it) */
    /* Every admitted request gets its answer before the daemon stops. */
    for (int waited_ms = 0; atomic_load(&srv->inflight) > 0 && waited_ms < 120000; waited_ms += 5)
        usleep(5000);
}

void http_stop(server *srv)
{
    atomic_store(&srv->ready, 0);
    feed_close(srv->feed); /* no stream may stay suspended */
    frontdoor_stop(srv->door); /* it hands connections to the daemons */
    if (srv->daemon != NULL)
        MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
    if (srv->probes != NULL)
        MHD_stop_daemon(srv->probes);
    srv->probes = NULL;
    frontdoor_free(srv->door); /* after the daemon: its close notifications release slots */
    srv->door = NULL;
    feed_free(srv->feed);
    srv->feed = NULL;
    conntrack_free(srv->conns); /* after the daemon: no more notifications */
    srv->conns = NULL;
}
