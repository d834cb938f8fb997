/* store_disk.h: the store's bytes on disk, as codecs over rows (rows.h):
 * the payloads of its WAL records and the snapshot file (layouts in
 * store.h). It knows neither the table nor the index: store.c decides what
 * a decoded record does and hands a snapshot a view of its rows. */
#ifndef EMBEDD_STORE_DISK_H
#define EMBEDD_STORE_DISK_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"
#include "rows.h"

enum { STORE_OP_UPSERT = 1, STORE_OP_DELETE = 2 };

/* ---- WAL record payloads ---- */

int store_encode_upsert(strbuf *sb, const store_row *rows, const float *vecs, int n, int dim);
void store_encode_delete(strbuf *sb, const store_id *ids, int n);

/* One decoded record. */
typedef struct store_op {
    int kind;                  /* STORE_OP_UPSERT or STORE_OP_DELETE */
    uint32_t n;
    store_row *rows;           /* upsert: n prepared rows (each owns its blob) */
    float *vecs;               /* upsert: (n, dim) */
    store_id *ids;             /* delete: n ids pointing into the payload */
} store_op;

/* Decodes a record's payload (seq only names it in messages). 0, 1 when
 * it is malformed, -1 when out of memory. store_op_free in every case. */
int store_op_decode(const unsigned char *payload, size_t len, int dim, uint64_t seq,
                    store_op *op, emb_err *err);
void store_op_free(store_op *op);

/* ---- snapshots ---- */

/* Where the files live. */
typedef struct store_files {
    int dir_fd;
    const char *dir;
    long max_items;            /* a snapshot holding more is refused */
} store_files;

/* What a snapshot writes: rows and their vectors, and the last write. */
typedef struct store_table_view {
    int dim;
    uint64_t seq;
    const store_row *rows;
    const float *matrix;       /* (count, dim) */
    long count;
} store_table_view;

/* Writes DIR/snapshot (through snapshot.tmp, then rename and fsync). */
int store_snapshot_write(const store_files *f, const store_table_view *t, emb_err *err);

/* Receives a snapshot's items: reserve once with the count, then put each
 * row (which hands over its blob) with its vector. */
typedef struct store_snapshot_sink {
    void *user;
    int (*reserve)(void *user, long count, emb_err *err);
    void (*put)(void *user, store_row *row, const float *vec);
} store_snapshot_sink;

/* Reads DIR/snapshot into the sink; *seq = *count = 0 when there is none. */
int store_snapshot_load(const store_files *f, int dim, const store_snapshot_sink *sink,
                        uint64_t *seq, uint64_t *count, emb_err *err);

/* Checks DIR/snapshot whole (header and checksum) and reads its dimension
 * and last seq: 0, 1 when there is none, -1 when it does not verify. */
int store_snapshot_peek(const store_files *f, int *dim, uint64_t *seq, emb_err *err);

#endif
