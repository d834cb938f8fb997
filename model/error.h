/* error.h: errors as values for the model library.
 *
 * model/ never prints and never exits. A function that can fail takes an
 * emb_err* as its last argument, fills in a human-readable message and
 * returns -1 (or NULL). Callers in server/ decide what to do with it. */
#ifndef EMBEDD_ERROR_H
#define EMBEDD_ERROR_H

typedef struct emb_err {
    char msg[512];
} emb_err;

/* Formats msg into err (if err is not NULL) and returns -1. */
int emb_fail(emb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
