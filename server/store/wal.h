/* wal.h: the write-ahead log: an append-only file of checksummed records,
 * with group commit. The records' contents are opaque here (the store puts
 * its upsert and delete batches in them).
 *
 * The file is a record log of model/base/reclog.h (which owns the framing,
 * the checksums, the torn-tail repair and the replace-by-rename of a new
 * log); the WAL adds the seq numbers, the tag and base seq in the header,
 * the snapshot skip and the group commit. File `DIR/wal`, little-endian:
 *   header, 32 bytes
 *     0   u8[8]  magic "EMBDWAL\0"
 *     8   u32    format version (WAL_VERSION)
 *     12  u32    tag: the caller's compatibility tag (the store's dimension)
 *     16  u64    base_seq: the first record's seq is base_seq + 1
 *     24  u32    reserved, 0
 *     28  u32    CRC-32C of bytes 0..27
 *   records, back to back
 *     0   u32    len: bytes after the crc field (8 + payload), 8 <= len <= WAL_MAX_RECORD
 *     4   u32    CRC-32C of the len field, then of those len bytes
 *     8   u64    seq: base_seq + 1, + 2, ... with no gaps
 *     16  u8[len - 8] payload
 *
 * Recovery (wal_open) reads every record in order. Records with seq <= the
 * snapshot's seq are already in the snapshot and are skipped; the others go
 * to the caller's apply function. A record that is short, has a length out
 * of range, a bad checksum, a seq out of order, or that the caller calls
 * malformed is bad. With no record that verifies after it, it is a torn
 * tail: it and everything after it is cut off (ftruncate + fsync) and
 * reported in wal_recovery. With one after it, the log is corrupt and
 * wal_open fails naming the offset (reclog.h); wal_repair (`embedd
 * repair`) keeps every record that verifies. Recovery also fails on I/O
 * errors, on a header with another version or tag, and when records
 * between the snapshot and the log are missing.
 *
 * A new log (first start, or wal_rotate after a snapshot) is written as
 * `DIR/wal.tmp`, fsync'd, renamed over `DIR/wal`, and the directory fsync'd,
 * so `DIR/wal` is always a whole, valid log.
 *
 * Design
 *   - One appender at a time: the caller serialises wal_append (the store
 *     holds its write lock), so the file order is the seq order. The append
 *     itself only writes into the page cache.
 *   - Group commit: wal_sync(seq) returns once the record with that seq is on
 *     disk. The first waiter that finds no sync running becomes the leader:
 *     it notes the last appended seq, drops the mutex, calls fdatasync, then
 *     publishes synced_seq and wakes everyone. Waiters whose record was
 *     covered return; the others wait for, or lead, the next round. So the
 *     records appended while one fdatasync runs share the next one.
 *   - Ownership: the wal owns its reclog; all of its fields are guarded
 *     by `lock`, except that the leader calls reclog_sync without it
 *     (rotation and close wait until no sync runs).
 *   - Failure and recovery: any I/O error of an append or of an fdatasync
 *     marks the log failed (an episode: it starts then, and ends when the
 *     log heals). A failed append is undone with ftruncate where it can be,
 *     but is never acknowledged either way. While failed, appends are
 *     refused (EMB_ERR_UNAVAILABLE) and nothing is written. wal_heal then
 *     tries, on the caller's schedule, to make the log writable again
 *     without a restart: it reopens DIR/wal, proves the disk takes a write
 *     (a 64 KiB block of zeros past the last good record, fdatasync'd),
 *     and cuts the file back to the last good record (ftruncate,
 *     fdatasync). A crash in between leaves only zeros after the last
 *     record: a torn tail, cut at the next open. After a failed fdatasync
 *     the page cache can no longer be trusted (the kernel may have dropped
 *     the dirty pages), so the file cannot heal in place: wal_heal answers
 *     1 and only a new file (wal_rotate, after a snapshot of the caller's
 *     memory) ends the episode. Every I/O error is counted by operation
 *     (wal_stats.errors).
 *   - Fault injection, for tests only: wal_fault_set (or the server's
 *     EMBEDD_DEBUG_WAL_FAULT, parsed by wal_fault_parse) makes chosen
 *     appends or fdatasyncs fail with a chosen errno before they touch
 *     the file. Off unless set; one process-wide setting.
 *   - Shutdown: the caller stops appending; wal_close waits for a running
 *     sync to finish, then closes the files.
 */
#ifndef EMBEDD_WAL_H
#define EMBEDD_WAL_H

#include <stddef.h>
#include <stdint.h>

#include "base/bytes.h"
#include "base/crc32c.h"
#include "base/error.h"
#include "base/reclog.h"

#define WAL_VERSION 1
#define WAL_HEADER_SIZE 32
#define WAL_RECORD_HEADER 16        /* len, crc, seq */
#define WAL_MAX_RECORD (256u << 20) /* len field cap */

/* The store's file formats used these names before model/base had them;
 * they stay as aliases. */
static inline uint32_t wal_crc32c(uint32_t crc, const void *data, size_t n)
{
    return emb_crc32c(crc, data, n);
}

static inline void wal_put_u32(unsigned char *p, uint32_t v)
{
    emb_put_u32(p, v);
}

static inline void wal_put_u64(unsigned char *p, uint64_t v)
{
    emb_put_u64(p, v);
}

static inline uint32_t wal_get_u32(const unsigned char *p)
{
    return emb_get_u32(p);
}

static inline uint64_t wal_get_u64(const unsigned char *p)
{
    return emb_get_u64(p);
}

/* Called for each record to replay. Returns 0 when applied, 1 when the
 * payload is malformed (it becomes the torn tail), -1 on a fatal error
 * (with err set: recovery stops and the file is left as it is). */
typedef int (*wal_apply_fn)(void *user, uint64_t seq, const unsigned char *payload, size_t len,
                            emb_err *err);

typedef struct wal_recovery {
    uint64_t records;           /* replayed through apply */
    uint64_t skipped;           /* already in the snapshot */
    uint64_t last_seq;          /* last valid record's seq, or the snapshot's */
    uint64_t truncated_bytes;   /* torn tail cut off */
    uint64_t truncated_at;      /* its offset in the file */
    int restarted;              /* a fresh log replaced an unusable one */
    char message[512];          /* why, when truncated_bytes > 0 or restarted */
} wal_recovery;

/* The operations whose I/O errors are counted. */
typedef enum wal_op {
    WAL_OP_WRITE,               /* an append's pwrite (and its undo) */
    WAL_OP_FSYNC,               /* group commit's fdatasync */
    WAL_OP_REOPEN,              /* wal_heal's reopen, probe and truncate */
    WAL_OP_ROTATE,              /* wal_rotate's new file */
    WAL_OP_COUNT
} wal_op;

/* "write", "fsync", "reopen", "rotate". */
const char *wal_op_name(wal_op op);

typedef struct wal_stats {
    uint64_t bytes;             /* file size */
    uint64_t last_seq;          /* last appended */
    uint64_t synced_seq;        /* last known on disk */
    uint64_t records;           /* appended since open */
    uint64_t syncs;             /* fdatasync calls since open */
    int failed;                 /* appends refused after an I/O error */
    int needs_rewrite;          /* an fdatasync failed: only wal_rotate heals */
    char failure[256];          /* the episode's last error; "" when not failed */
    double failed_for;          /* seconds since the episode began; 0 when not failed */
    uint64_t episodes;          /* times the log failed since open */
    uint64_t heals;             /* times it became writable again */
    double last_outage;         /* seconds the last healed episode lasted */
    uint64_t refused;           /* appends refused while failed */
    uint64_t errors[WAL_OP_COUNT]; /* I/O errors by operation since open */
} wal_stats;

typedef struct wal wal;

/* Opens (creating if missing) DIR/wal and replays it over a snapshot that
 * holds every record up to snapshot_seq. dir_fd is the open directory (the
 * caller keeps it open while the wal lives). */
wal *wal_open(const char *dir, int dir_fd, uint32_t tag, uint64_t snapshot_seq,
              wal_apply_fn apply, void *user, wal_recovery *rec, emb_err *err);
/* Appends one record with the next seq (stored in *seq). Not yet durable:
 * call wal_sync. Callers serialise appends. */
int wal_append(wal *w, const void *payload, size_t len, uint64_t *seq, emb_err *err);
/* Returns 0 once every record up to seq is on disk, -1 when the log failed. */
int wal_sync(wal *w, uint64_t seq, emb_err *err);
/* Starts a new, empty log at base_seq after a snapshot that holds every
 * record up to base_seq (which must be the last appended seq). No appends
 * may run meanwhile. Waiters on seqs <= base_seq are released: the snapshot
 * holds their records. Allowed while the log is failed: the new file ends
 * the episode. */
int wal_rotate(wal *w, uint64_t base_seq, emb_err *err);
/* A failed log: tries to make it writable again in place (see Design).
 * 0 when it is writable (or was not failed), 1 when the disk takes writes
 * again but the log needs a new file (wal_rotate after a snapshot), -1
 * (err, kind EMB_ERR_IO) when the disk still fails. The caller decides how
 * often to try. */
int wal_heal(wal *w, emb_err *err);
/* 1 while appends are refused after an I/O error. */
int wal_failed(wal *w);
void wal_get_stats(wal *w, wal_stats *out);

/* Test-only fault injection (see Design). From now on, the nth call
 * (1-based) of op (WAL_OP_WRITE: appends; WAL_OP_FSYNC: fdatasyncs) and
 * the count - 1 calls after it fail with errnum, without touching the
 * file; count 0: every call from the nth on; nth 0: off. */
void wal_fault_set(wal_op op, long nth, long count, int errnum);
/* The same from text, "OP NTH [COUNT [ERRNO]]": OP write or fsync, COUNT
 * 1 by default, ERRNO a number or EIO, ENOSPC, EPERM, EROFS, EDQUOT (EIO
 * by default). NULL or "" turns injection off. */
int wal_fault_parse(const char *spec, emb_err *err);
void wal_close(wal *w);

/* `embedd repair` for DIR/wal, which must not be open (reclog_salvage:
 * the damaged file is kept as wal.damaged-<time>). Records the snapshot
 * already holds (seq <= snapshot_seq) are left out and the rest renumbered
 * without gaps after max(the log's base seq, snapshot_seq), so that the
 * repaired log replays. tag: the store's dimension (from its snapshot; 0
 * when unknown), used when the log's own header does not verify. check
 * (may be NULL): a record's payload that replay would refuse (non-zero
 * for tag) is dropped too, counted in rep->records_dropped. */
typedef int (*wal_payload_check)(const unsigned char *payload, size_t len, uint32_t tag);
int wal_repair(const char *dir, int dir_fd, uint32_t tag, uint64_t snapshot_seq,
               wal_payload_check check, reclog_salvage_report *rep, emb_err *err);

#endif
