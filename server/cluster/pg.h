/* pg.h: the little of libpq the cluster needs: connecting with timeouts
 * and keep-alives, statements with binary parameters and results, and
 * errors as emb_err (EMB_ERR_UNAVAILABLE: the database cannot be used). */
#ifndef EMBEDD_CLUSTER_PG_H
#define EMBEDD_CLUSTER_PG_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define PG_MAX_PARAMS 8

/* Parameters of one statement, sent in binary. */
typedef struct pg_params {
    int n;
    Oid types[PG_MAX_PARAMS];
    const char *values[PG_MAX_PARAMS];
    int lengths[PG_MAX_PARAMS];
    int formats[PG_MAX_PARAMS];
    unsigned char ints[PG_MAX_PARAMS][8]; /* network-order integers */
} pg_params;

void pg_params_init(pg_params *p);
void pg_param_i16(pg_params *p, int v);
void pg_param_i32(pg_params *p, int32_t v);
void pg_param_i64(pg_params *p, int64_t v);
/* Text, json and bytea: borrowed bytes (NULL: SQL NULL). */
void pg_param_text(pg_params *p, const char *s, size_t len);
void pg_param_json(pg_params *p, const char *s, size_t len);
void pg_param_bytes(pg_params *p, const void *b, size_t len);

/* A connection to url (a libpq URI or key=value string) named
 * application_name, with a connect timeout and TCP keep-alives, so that a
 * cut network is noticed in seconds. NULL with err. */
PGconn *pg_connect(const char *url, const char *application_name, emb_err *err);

/* Runs sql (several commands allowed, no parameters). 0, or -1 with err
 * naming what. */
int pg_exec(PGconn *c, const char *sql, const char *what, emb_err *err);
/* One statement with parameters (may be NULL), binary results. The result
 * (free with PQclear), or NULL with err. */
PGresult *pg_query(PGconn *c, const char *sql, const pg_params *p, const char *what,
                   emb_err *err);

/* Binary result fields. */
int64_t pg_get_i64(const PGresult *r, int row, int col);
int32_t pg_get_i32(const PGresult *r, int row, int col);
int pg_get_i16(const PGresult *r, int row, int col);
int pg_get_bool(const PGresult *r, int row, int col);
int pg_is_null(const PGresult *r, int row, int col);

/* 1 when the connection is usable. */
int pg_alive(PGconn *c);

#endif
