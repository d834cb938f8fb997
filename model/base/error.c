#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static void set(emb_err *err, emb_err_kind kind, const char *fmt, va_list ap)
{
    err->kind = kind;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
}

int emb_fail(emb_err *err, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        set(err, EMB_ERR_FAILED, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int emb_fail_as(emb_err *err, emb_err_kind kind, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        set(err, kind, fmt, ap);
        va_end(ap);
    }
    return -1;
}

const char *emb_err_kind_name(emb_err_kind kind)
{
    static const char *const names[EMB_ERR_KIND_COUNT] = {
        [EMB_ERR_FAILED] = "failed",       [EMB_ERR_INVALID] = "invalid",
        [EMB_ERR_TOO_LARGE] = "too large", [EMB_ERR_NOT_FOUND] = "not found",
        [EMB_ERR_CONFLICT] = "conflict",   [EMB_ERR_UNAVAILABLE] = "unavailable",
        [EMB_ERR_IO] = "i/o",              [EMB_ERR_NO_MEMORY] = "no memory",
        [EMB_ERR_GONE] = "gone",
    };
    return (unsigned)kind < EMB_ERR_KIND_COUNT ? names[kind] : "failed";
}
