/* pg.c: see pg.h. */
#include "pg.h"

#include <stdio.h>
#include <string.h>

/* Type oids (pg_type.h; stable across PostgreSQL versions). */
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_TEXT 25
#define OID_JSON 114

void pg_params_init(pg_params *p)
{
    memset(p, 0, sizeof *p);
}

static void put_be(unsigned char *dst, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        dst[i] = (unsigned char)v;
        v >>= 8;
    }
}

static void param_int(pg_params *p, Oid type, uint64_t v, int bytes)
{
    int i = p->n++;
    put_be(p->ints[i], v, bytes);
    p->types[i] = type;
    p->values[i] = (const char *)p->ints[i];
    p->lengths[i] = bytes;
    p->formats[i] = 1;
}

void pg_param_i16(pg_params *p, int v)
{
    param_int(p, OID_INT2, (uint64_t)(uint16_t)v, 2);
}

void pg_param_i32(pg_params *p, int32_t v)
{
    param_int(p, OID_INT4, (uint64_t)(uint32_t)v, 4);
}

void pg_param_i64(pg_params *p, int64_t v)
{
    param_int(p, OID_INT8, (uint64_t)v, 8);
}

static void param_raw(pg_params *p, Oid type, const void *b, size_t len)
{
    int i = p->n++;
    p->types[i] = type;
    p->values[i] = b;
    p->lengths[i] = (int)len;
    p->formats[i] = 1;
}

void pg_param_text(pg_params *p, const char *s, size_t len)
{
    param_raw(p, OID_TEXT, s, len);
}

void pg_param_json(pg_params *p, const char *s, size_t len)
{
    param_raw(p, OID_JSON, s, len);
}

void pg_param_bytes(pg_params *p, const void *b, size_t len)
{
    param_raw(p, OID_BYTEA, b, len);
}

/* The first line of a libpq message (the rest is a hint such as "Is the
 * server running on that host...?"). */
static void first_line(const char *msg, char *out, size_t cap)
{
    snprintf(out, cap, "%.*s", (int)strcspn(msg, "\n"), msg);
}

static void conn_message(PGconn *c, char *out, size_t cap)
{
    first_line(c != NULL ? PQerrorMessage(c) : "no connection", out, cap);
}

/* PostgreSQL's notices ("relation ... already exists, skipping") are not
 * errors: libpq would print them to stderr. */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *pg_connect(const char *url, const char *application_name, emb_err *err)
{
    /* dbname first: expanded from the URI, later keys add to it */
    const char *keys[] = {"dbname", "application_name", "connect_timeout", "keepalives",
                          "keepalives_idle", "keepalives_interval", "keepalives_count",
                          "tcp_user_timeout", "client_encoding", NULL};
    const char *values[] = {url, application_name, "3", "1", "5", "2", "3", "10000", "UTF8",
                            NULL};
    PGconn *c = PQconnectdbParams(keys, values, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        char msg[400];
        conn_message(c, msg, sizeof msg);
        emb_fail_as(err, EMB_ERR_UNAVAILABLE, "postgres: %s", msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    return c;
}

static int result_error(PGconn *c, PGresult *r, const char *what, emb_err *err)
{
    char msg[400];
    const char *m = r != NULL ? PQresultErrorMessage(r) : "";
    if (m == NULL || m[0] == '\0')
        conn_message(c, msg, sizeof msg);
    else
        first_line(m, msg, sizeof msg);
    return emb_fail_as(err, EMB_ERR_UNAVAILABLE, "postgres: %s: %s", what, msg);
}

int pg_exec(PGconn *c, const char *sql, const char *what, emb_err *err)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : result_error(c, r, what, err);
    PQclear(r);
    return rc;
}

PGresult *pg_query(PGconn *c, const char *sql, const pg_params *p, const char *what,
                   emb_err *err)
{
    PGresult *r = PQexecParams(c, sql, p != NULL ? p->n : 0, p != NULL ? p->types : NULL,
                               p != NULL ? p->values : NULL, p != NULL ? p->lengths : NULL,
                               p != NULL ? p->formats : NULL, 1);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    result_error(c, r, what, err);
    PQclear(r);
    return NULL;
}

static uint64_t get_be(const PGresult *r, int row, int col, int bytes)
{
    const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
    if (PQgetlength(r, row, col) != bytes)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

int64_t pg_get_i64(const PGresult *r, int row, int col)
{
    return (int64_t)get_be(r, row, col, 8);
}

int32_t pg_get_i32(const PGresult *r, int row, int col)
{
    return (int32_t)(uint32_t)get_be(r, row, col, 4);
}

int pg_get_i16(const PGresult *r, int row, int col)
{
    return (int16_t)(uint16_t)get_be(r, row, col, 2);
}

int pg_get_bool(const PGresult *r, int row, int col)
{
    return get_be(r, row, col, 1) != 0;
}

int pg_is_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col);
}

int pg_alive(PGconn *c)
{
    return c != NULL && PQstatus(c) == CONNECTION_OK;
}
