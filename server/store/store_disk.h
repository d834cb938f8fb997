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
/* 1 when replay would refuse the payload for a store of dim dimensions
 * (it does not decode), else 0: wal_repair's check (wal.h). */
int store_op_refused(const unsigned char *payload, size_t len, uint32_t dim);

/* ---- snapshots ----
 *
 * DIR/snapshot, format 2, little-endian: every item has its own checksum,
 * so a damaged byte is found, named and costs one item, never the file.
 *   header, 40 bytes
 *     0   u8[8]  magic "EMBDSNAP"
 *     8   u32    format version (2)
 *     12  u32    dim
 *     16  u64    seq: the last WAL record it holds
 *     24  u64    count
 *     32  u32    reserved, 0
 *     36  u32    CRC-32C of bytes 0..35
 *   count item records, back to back
 *     0   u32    len of the body
 *     4   u32    CRC-32C of the len field, then of the body
 *     8   u8[len] body: one item (store.h's layout)
 *   trailer, 40 bytes: the header's layout with magic "EMBDSEND" and the
 *     same fields, so that a damaged header still names dim, seq and count
 * Every byte is covered by a checksum. Format 1 (the same header with
 * version 1, the items unframed, then a u32 CRC-32C of every byte before
 * it) is still read; new snapshots are always format 2.
 *
 * A snapshot is renamed into place whole, so one that does not verify is
 * damage, not a torn write: loading refuses it, naming the file, the
 * offset, the item record and the ids around it, and how many items
 * verify. store_snapshot_repair (`embedd repair`) keeps every item record
 * that verifies. */

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

/* Checks DIR/snapshot whole (header, every record, trailer) and reads its
 * dimension and last seq: 0, 1 when there is none, -1 when it does not
 * verify (err names the damage). */
int store_snapshot_peek(const store_files *f, int *dim, uint64_t *seq, emb_err *err);

typedef struct store_snapshot_repair_report {
    int found;                 /* there is a snapshot */
    int rewritten;             /* it did not verify and was rewritten */
    int dim;                   /* its dimension and last seq (from the header, */
    uint64_t seq;              /*   else the trailer), kept in the new file */
    uint64_t items_expected;   /* the count it says it holds */
    uint64_t items_kept;       /* item records that verify */
    uint64_t bytes_dropped;    /* bytes in no header, record or trailer that verifies */
    char kept_as[64];          /* the damaged file's new name in DIR */
    char message[640];         /* what was found and done */
} store_snapshot_repair_report;

/* `embedd repair` for DIR/snapshot (no store may have DIR open). A
 * snapshot that verifies is left alone. Otherwise (format 2) it is kept as
 * snapshot.damaged-<unix time> (a hard link, never deleted) and replaced,
 * by replace-by-rename, with a snapshot of every item record that
 * verifies, at the same seq, so the WAL still replays on top. Fails (-1)
 * when it cannot be repaired: a damaged format 1 snapshot (one checksum
 * for the whole file), or neither header nor trailer verifies. 0 also when
 * there is none (found 0). */
int store_snapshot_repair(const store_files *f, store_snapshot_repair_report *rep, emb_err *err);

#endif
