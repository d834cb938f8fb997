/* error.h: errors as values for the model library and the server.
 *
 * model/ never prints and never exits. A function that can fail takes an
 * emb_err* as its last argument, fills in a kind and a human-readable
 * message and returns -1 (or NULL). Callers in server/ decide what to do
 * with it; the HTTP layer maps the kind, never the message, to a status
 * (server/http/errors.c). */
#ifndef EMBEDD_ERROR_H
#define EMBEDD_ERROR_H

typedef enum emb_err_kind {
    EMB_ERR_FAILED = 0,   /* no more specific kind: an internal failure */
    EMB_ERR_INVALID,      /* the caller's input or a file's content is wrong */
    EMB_ERR_TOO_LARGE,    /* the input is over a configured limit */
    EMB_ERR_NOT_FOUND,    /* what was asked for does not exist */
    EMB_ERR_CONFLICT,     /* the request is valid but not in this state */
    EMB_ERR_UNAVAILABLE,  /* shutting down or overloaded: retry later */
    EMB_ERR_IO,           /* the disk or a file system call failed */
    EMB_ERR_NO_MEMORY,    /* an allocation failed */
    EMB_ERR_GONE,         /* it existed but was retired (an old model version) */
    EMB_ERR_KIND_COUNT
} emb_err_kind;

typedef struct emb_err {
    emb_err_kind kind;
    char msg[512];
} emb_err;

/* Formats msg into err (if err is not NULL), sets kind EMB_ERR_FAILED and
 * returns -1. */
int emb_fail(emb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same with a kind. */
int emb_fail_as(emb_err *err, emb_err_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A short lower-case name of a kind ("invalid", "not found", ...). */
const char *emb_err_kind_name(emb_err_kind kind);

#endif
