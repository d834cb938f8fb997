/* errors.c: see errors.h. Also the error replies (server.h), which are the
 * table's only users besides the tests. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

#include "jsoncheck.h"
#include "server.h"

#define NO_KIND (-1)
#define RETRY_AFTER_SECONDS 1

typedef struct row {
    int kind;                  /* an emb_err_kind, or NO_KIND */
    http_error e;
} row;

/* Rows of one status agree on the OpenAI type and code. */
static const row rows[] = {
    /* kind                    status  TEI type   OpenAI type               OpenAI code */
    {EMB_ERR_INVALID,         {422, "Validation", "invalid_request_error", NULL}},
    {EMB_ERR_TOO_LARGE,       {422, "Validation", "invalid_request_error", NULL}},
    {EMB_ERR_NOT_FOUND,       {404, "NotFound", "invalid_request_error", "not_found"}},
    {EMB_ERR_GONE,            {410, "Gone", "invalid_request_error", "gone"}},
    {EMB_ERR_CONFLICT,        {409, "Conflict", "invalid_request_error", NULL}},
    {EMB_ERR_UNAVAILABLE,     {503, "Unhealthy", "server_error", "service_unavailable"}},
    {EMB_ERR_FAILED,          {500, "Backend", "server_error", NULL}},
    {EMB_ERR_IO,              {500, "Backend", "server_error", NULL}},
    {EMB_ERR_NO_MEMORY,       {500, "Backend", "server_error", NULL}},
    /* refusals of the HTTP layer itself */
    {NO_KIND,                 {400, "Empty", "invalid_request_error", NULL}},
    {NO_KIND,                 {401, "Unauthorized", "authentication_error", "invalid_api_key"}},
    {NO_KIND,                 {405, "Validation", "invalid_request_error", "method_not_allowed"}},
    {NO_KIND,                 {413, "Validation", "invalid_request_error", "payload_too_large"}},
    {NO_KIND,                 {414, "Validation", "invalid_request_error", "uri_too_long"}},
    {NO_KIND,                 {431, "Validation", "invalid_request_error", "headers_too_large"}},
    {NO_KIND,                 {429, "Overloaded", "rate_limit_error", "rate_limit_exceeded"}},
};

#define N_ROWS (sizeof rows / sizeof rows[0])

const http_error *http_error_of_kind(emb_err_kind kind)
{
    for (size_t i = 0; i < N_ROWS; i++) {
        if (rows[i].kind == (int)kind)
            return &rows[i].e;
    }
    return http_error_of_kind(EMB_ERR_FAILED);
}

const http_error *http_error_of_status(int status)
{
    static const http_error client_side = {0, NULL, "invalid_request_error", NULL};
    static const http_error server_side = {0, NULL, "server_error", NULL};
    for (size_t i = 0; i < N_ROWS; i++) {
        if (rows[i].e.status == status)
            return &rows[i].e;
    }
    return status >= 500 ? &server_side : &client_side;
}

static void reply_body(reply *rp, api_family api, int status, const char *type, const char *msg)
{
    sb_free(&rp->body);
    rp->status = status;
    rp->content_type = "application/json";
    /* Overload and unavailability pass: tell clients when to come back
     * rather than leave them to retry at once. */
    rp->retry_after = (status == 429 || status == 503) ? RETRY_AFTER_SECONDS : 0;
    if (api == API_QDRANT) {
        /* Qdrant's error envelope; the time is not measured for errors */
        sb_puts(&rp->body, "{\"status\":{\"error\":");
        sb_json_string(&rp->body, msg);
        sb_puts(&rp->body, "},\"time\":0}");
        return;
    }
    if (api == API_OPENAI) {
        const http_error *e = http_error_of_status(status);
        sb_puts(&rp->body, "{\"error\":{\"message\":");
        sb_json_string(&rp->body, msg);
        sb_puts(&rp->body, ",\"type\":");
        sb_json_string(&rp->body, e->openai_type);
        sb_puts(&rp->body, ",\"param\":null,\"code\":");
        if (e->openai_code != NULL)
            sb_json_string(&rp->body, e->openai_code);
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

void reply_error(reply *rp, api_family api, int status, const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    utf8_sanitize(msg); /* a quoted URL or a string cut short must not break the body */
    reply_body(rp, api, status, type, msg);
}

void reply_fail(reply *rp, api_family api, emb_err_kind kind, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    utf8_sanitize(msg);
    const http_error *e = http_error_of_kind(kind);
    reply_body(rp, api, e->status, e->tei_type, msg);
}
