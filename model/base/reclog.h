/* reclog.h: one checksummed, append-only record log with torn-tail repair.
 * The item WAL (server/store/wal.h) and the sample log
 * (server/learn/samples.h) are both this file format with their own magic,
 * header fields and record contents.
 *
 * File DIR/NAME, little-endian:
 *   header, 16 + extra bytes
 *     0        u8[8]  magic (the format's)
 *     8        u32    format version
 *     12       u8[extra] the caller's header fields (the WAL: tag, base seq)
 *     12+extra u32    CRC-32C of bytes 0 .. 12+extra-1
 *   records, back to back
 *     0   u32    len: body bytes, min_len <= len <= max_len
 *     4   u32    CRC-32C of the len field, then of the body
 *     8   u8[len] body (opaque here)
 *
 * Opening (reclog_open) maps the file and replays it:
 *   - no file: a fresh log (header only) is created; rec->created.
 *   - an empty file, a short header, a bad magic or a header checksum
 *     mismatch with no record after it that verifies: it is replaced by a
 *     fresh log and the lost bytes reported (rec->restarted,
 *     rec->truncated_bytes).
 *   - an intact header with another version, or header fields the caller's
 *     header function rejects: open fails, the file is left as it is.
 *   - then each record in order goes to the caller's record function. The
 *     first record that is short, has a length out of range, a bad checksum,
 *     or that the record function refuses (returns 1) is bad. When no
 *     record that verifies follows it (every later offset is tried), it is
 *     a torn tail: it and everything after it are cut off (ftruncate +
 *     fsync) and reported, and the open goes on. When one does, the log is
 *     corrupt, not torn: the open fails (EMB_ERR_INVALID) naming the file,
 *     the offset and the records after it, and nothing is cut;
 *     reclog_salvage (`embedd repair`) rewrites it. A bad last record is
 *     corrupt too when it cannot be an unfinished write: whole (its frame
 *     ends exactly at the end of the file) and not zeros, or whole but for
 *     a damaged length field (it verifies with the length the file
 *     implies). A torn write is a prefix of its frame, so it is cut.
 *   - the same for an unusable header: a fresh log replaces it only when no
 *     record after it verifies.
 * A fresh log, and every reclog_reset, is written by replace-by-rename
 * (fileio.h), so DIR/NAME is always a whole, valid log.
 *
 * Writing: reclog_append writes one record, reclog_write records framed by
 * the caller (reclog_frame); both only reach the page cache and undo a
 * failed write with ftruncate. reclog_sync makes them durable (fdatasync).
 *
 * Threads and ownership: a reclog owns its file descriptor; the directory
 * descriptor stays the caller's and must outlive it. It has no lock: the
 * caller serialises every call, except that reclog_sync may run in one
 * thread while another appends (pwrite and fdatasync on one descriptor
 * are safe together; this is how the WAL's group commit uses it). Nothing
 * may run during reclog_reset or reclog_close. */
#ifndef EMBEDD_RECLOG_H
#define EMBEDD_RECLOG_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define RECLOG_FRAME 8        /* len, crc */
#define RECLOG_HEADER_FIXED 16 /* magic, version, crc */
#define RECLOG_EXTRA_MAX 64

typedef struct reclog_format {
    unsigned char magic[8];
    uint32_t version;
    uint32_t extra;           /* caller's header bytes, <= RECLOG_EXTRA_MAX */
    uint32_t min_len;         /* record body length range */
    uint32_t max_len;
    uint32_t file_mode;       /* permission bits of the file (0: 0644 less the
                                 umask); an existing log is set to them at open */
} reclog_format;

typedef struct reclog_recovery {
    uint64_t records;         /* accepted by the record function */
    uint64_t truncated_bytes; /* torn tail cut off, or a whole unusable file */
    uint64_t truncated_at;    /* the torn tail's offset */
    int created;              /* there was no file */
    int restarted;            /* an unusable file was replaced by a fresh log */
    char message[512];        /* what was repaired, "" when nothing */
} reclog_recovery;

/* Replay callbacks, each given user.
 * header: checks the caller's extra header bytes; 0 when fine, -1 (err
 *   set) to fail the open. NULL: any.
 * record: one record's body; 0 when accepted, 1 when it starts the torn
 *   tail (err->msg says why), -1 to fail the open (err set). */
typedef struct reclog_replay {
    int (*header)(void *user, const unsigned char *extra, emb_err *err);
    int (*record)(void *user, const unsigned char *body, size_t len, emb_err *err);
    void *user;
} reclog_replay;

typedef struct reclog reclog;

/* Opens, creating or repairing, dir_fd/name (dir is dir_fd's path, for
 * messages) and replays it (see above). fresh_extra: the header fields of
 * a fresh log (f->extra bytes; NULL with extra 0). rec is filled in. */
reclog *reclog_open(int dir_fd, const char *dir, const char *name, const reclog_format *f,
                    const unsigned char *fresh_extra, const reclog_replay *replay,
                    reclog_recovery *rec, emb_err *err);

/* Appends one record whose body is head (head_len <= 64 bytes, the
 * caller's fixed fields, e.g. the WAL's seq) then payload.
 * On failure the file is cut back to where it was; when even that fails,
 * reclog_damaged turns true. Not durable until reclog_sync. */
int reclog_append(reclog *l, const void *head, size_t head_len, const void *payload, size_t len,
                  emb_err *err);

/* Appends n bytes of records framed with reclog_frame, as reclog_append. */
int reclog_write(reclog *l, const void *records, size_t n, emb_err *err);

/* Writes the frame (len, crc) of a record whose body is the len bytes at
 * body: frame and body may be one buffer (body = frame + RECLOG_FRAME). */
void reclog_frame(unsigned char *frame, const void *body, size_t len);

/* fdatasync: every append so far is durable. */
int reclog_sync(reclog *l, emb_err *err);

/* Replaces the log by a fresh one with these header fields, holding the
 * framed records body (n bytes, may be 0). On failure the old log is
 * untouched and still open. */
int reclog_reset(reclog *l, const unsigned char *extra, const void *body, size_t n,
                 emb_err *err);

/* ---- salvage: what `embedd repair` does with a corrupt log ---- */

/* Callbacks of reclog_salvage, each given user.
 * begin: before the scan, with the old header's fields when the header
 *   verifies (else NULL). May be NULL.
 * record: each record that verifies, in file order; may rewrite the body
 *   in place (same length). Returns 1 to keep it, 0 to drop it (counted in
 *   records_dropped), -1 to fail (err set). NULL keeps every record.
 * header: after the scan, the header fields of the rewritten log (f->extra
 *   bytes); 0, or -1 (err set) to fail. NULL: the old fields, or zeros when
 *   the old header did not verify. */
typedef struct reclog_salvage_fns {
    void (*begin)(void *user, const unsigned char *old_extra);
    int (*record)(void *user, unsigned char *body, size_t len, emb_err *err);
    int (*header)(void *user, unsigned char *extra, emb_err *err);
    void *user;
} reclog_salvage_fns;

typedef struct reclog_salvage_report {
    int found;                 /* the file exists */
    int rewritten;             /* it did not verify and was rewritten */
    int header_bad;            /* its header did not verify */
    uint64_t records_kept;
    uint64_t records_dropped;  /* by the record callback */
    uint64_t bytes_dropped;    /* bytes in no record that verifies */
    uint64_t ranges_dropped;   /* runs of such bytes */
    char kept_as[256];         /* the damaged file's new name (in dir) */
    char message[512];
} reclog_salvage_report;

/* Checks dir/name from end to end, trying every offset for records that
 * verify. A log that verifies whole (header, every record, no bytes
 * between or after) is left alone (unless the record callback drops or
 * rewrites records, when it is rewritten too). Otherwise the damaged file
 * is kept, never deleted, as NAME.damaged-<unix time> (a hard link made
 * before anything changes), and NAME is replaced by replace-by-rename with
 * a valid log of the records kept. The log must not be open. */
int reclog_salvage(int dir_fd, const char *dir, const char *name, const reclog_format *f,
                   const reclog_salvage_fns *fns, reclog_salvage_report *rep, emb_err *err);

uint64_t reclog_size(const reclog *l);      /* bytes in the file */
int reclog_damaged(const reclog *l);        /* a failed write could not be undone */
void reclog_close(reclog *l);

#endif
