/* errors.h: the one table from an error's kind to what a client sees.
 *
 * model/ and server/ return errors as values with a kind (base/error.h).
 * The HTTP layer never reads a message to choose a status: reply_fail
 * (server.h) looks the kind up here and writes the TEI or OpenAI body.
 * The same table gives the OpenAI error type and code of every status the
 * server sends, including the refusals the HTTP layer decides on its own
 * (400 empty input or ambiguous framing, 401, 405, 413, 414, 431, 429),
 * which have no kind and go through reply_error with an explicit status.
 * Every 429 and 503 also gets Retry-After (reply.retry_after).
 *
 * Constant data, no locks: any thread. */
#ifndef EMBEDD_HTTP_ERRORS_H
#define EMBEDD_HTTP_ERRORS_H

#include "base/error.h"

typedef struct http_error {
    int status;
    const char *tei_type;      /* TEI's error_type */
    const char *openai_type;   /* OpenAI's error.type */
    const char *openai_code;   /* OpenAI's error.code; NULL: null */
} http_error;

/* The reply to an error of this kind (an unknown kind: EMB_ERR_FAILED's). */
const http_error *http_error_of_kind(emb_err_kind kind);

/* The first row with this status; for an unknown status a 4xx or 5xx
 * default with TEI type NULL. Gives the OpenAI type and code of a status. */
const http_error *http_error_of_status(int status);

#endif
