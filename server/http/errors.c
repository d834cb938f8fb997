/* errors.c: see errors.h. Also the error replies (server.h), which are the
 * table's only users besides the tests. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

/* OpenAI answers every invalid request with 400 (it has no 422): the
 * TEI family keeps 422. */
static int openai_status(int status)
{
    return status == 422 ? 400 : status;
}

/* The request field an error is about, for OpenAI's "param": the first
 * `name` the message quotes, without an index ("`input[3]` cannot be
 * empty" -> "input"). Every validation message of the embedding routes
 * names its field that way. Empty when the message names none. */
static void param_of_message(const char *msg, char *out, size_t cap)
{
    out[0] = '\0';
    const char *open = strchr(msg, '`');
    if (open == NULL)
        return;
    size_t n = strcspn(open + 1, "`[. ");
    if (open[1 + n] == '\0' || n == 0 || n >= cap)
        return;
    memcpy(out, open + 1, n);
    out[n] = '\0';
}

static void put_openai(strbuf *b, int status, const char *msg, const char *param,
                       const char *code)
{
    const http_error *e = http_error_of_status(status);
    sb_puts(b, "{\"error\":{\"message\":");
    sb_json_string(b, msg);
    sb_puts(b, ",\"type\":");
    sb_json_string(b, e->openai_type);
    sb_puts(b, ",\"param\":");
    if (param != NULL && param[0] != '\0')
        sb_json_string(b, param);
    else
        sb_puts(b, "null");
    sb_puts(b, ",\"code\":");
    if (code == NULL)
        code = e->openai_code;
    if (code != NULL)
        sb_json_string(b, code);
    else
        sb_puts(b, "null");
    sb_puts(b, "}}");
}

static void reply_body(reply *rp, api_family api, int status, const char *type, const char *msg)
{
    sb_free(&rp->body);
    if (api == API_OPENAI)
        status = openai_status(status);
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
        char param[64];
        param_of_message(msg, param, sizeof param);
        put_openai(&rp->body, status, msg, param, NULL);
        return;
    }
    sb_puts(&rp->body, "{\"error\":");
    sb_json_string(&rp->body, msg);
    sb_puts(&rp->body, ",\"error_type\":");
    sb_json_string(&rp->body, type);
    sb_putc(&rp->body, '}');
}

/* A reply's message: formatted, and valid UTF-8 (a quoted URL or a string
 * cut short must not break the JSON body). */
static void format_message(char *msg, size_t cap, const char *fmt, va_list ap)
{
    vsnprintf(msg, cap, fmt, ap);
    utf8_sanitize(msg);
}

void reply_openai_error(reply *rp, int status, const char *param, const char *code,
                        const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    format_message(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sb_free(&rp->body);
    rp->status = openai_status(status);
    rp->content_type = "application/json";
    rp->retry_after = (status == 429 || status == 503) ? RETRY_AFTER_SECONDS : 0;
    put_openai(&rp->body, rp->status, msg, param, code);
}

void reply_error(reply *rp, api_family api, int status, const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    format_message(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_body(rp, api, status, type, msg);
}

void reply_fail(reply *rp, api_family api, emb_err_kind kind, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    format_message(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const http_error *e = http_error_of_kind(kind);
    reply_body(rp, api, e->status, e->tei_type, msg);
}
