/* samples.h: the training sample buffer: a bounded, de-duplicated,
 * persistent uniform sample of the texts the server has seen, which the
 * background trainer draws its batches from.
 *
 * What goes in
 *   samples_add takes one text and a source tag. The text is trimmed of
 *   ASCII whitespace at both ends; shorter than min_chars bytes it is
 *   ignored, longer than max_chars bytes it is cut at a UTF-8 character
 *   boundary; a text with a NUL byte is ignored (texts come back as C
 *   strings). What is left is the stored text, and its 64-bit hash is its
 *   identity: a text whose hash is in the buffer is a duplicate (counted,
 *   not added).
 *
 * Two reservoirs
 *   The hash also decides, once and for all, whether a text is held out:
 *   a fraction holdout_fraction of all distinct texts goes to a small
 *   held-out reservoir (validation only, never drawn for training), the rest
 *   to the training reservoir. Same text, same answer, on every run.
 *   Each reservoir is a uniform sample (Algorithm R) of the distinct texts
 *   routed to it: while it has room a text is appended; once full, the
 *   seen-th distinct text replaces a uniformly random slot with probability
 *   count/seen, else it is dropped. The training reservoir is full at
 *   max_texts texts or max_bytes text bytes, whichever comes first; when a
 *   replacement is longer than what it replaced and the bytes go over,
 *   further random slots are evicted (so under the byte cap the sample is
 *   uniform up to that small length effect). The held-out reservoir is
 *   capped at holdout_max texts only (at most holdout_max * max_chars
 *   bytes, 4 MB by default).
 *   An evicted text's hash leaves the set, so the same text may come back
 *   later as a new one. Remembering evicted hashes would need memory that
 *   grows with everything ever seen; we do not.
 *
 * Persistence (dir given): DIR/samples.log, a record log of
 *   model/base/reclog.h (framing, checksums, torn-tail repair and the
 *   replace-by-rename of a compacted log are reclog's), little-endian
 *   header, 16 bytes: u8[8] magic "EMBDSMPL", u32 version, u32 CRC-32C of
 *   bytes 0..11 (reclog's header with no extra fields)
 *   records, back to back: u32 len (payload bytes), u32 CRC-32C of the len
 *   field then of the payload, payload:
 *     u8 1 (slot),  u8 reservoir (0 train, 1 held out), u32 slot, text bytes:
 *                   slot == count appends, slot < count replaces
 *     u8 2 (drop),  u8 reservoir, u32 slot: the last slot moves into it
 *     u8 3 (counters), 13 u64: version, held-out version, duplicates,
 *                   ignored, truncated, received[3], added[3], train seen,
 *                   held-out seen
 *   Replaying the records in order rebuilds the exact buffer, slot order
 *   included. samples_add only appends a record to an in-memory buffer;
 *   samples_flush writes the buffer, then a counters record, and fsyncs.
 *   So kill -9 loses at most the changes since the last flush, and a
 *   samples_close (which flushes) loses nothing. When the log grows past
 *   twice the size of the live state (and past compact_min_bytes),
 *   samples_flush rewrites the live state to samples.log.tmp, fsyncs it,
 *   renames it over samples.log and fsyncs the directory, so samples.log is
 *   always a whole, valid log.
 *   On open the log is replayed. The first record that is short, has a bad
 *   checksum or does not apply (an unknown type, a slot out of range) starts
 *   the torn tail: it and everything after it is cut off (ftruncate + fsync)
 *   and reported in samples_stats (truncated_bytes, recovery). A header
 *   that is not ours is reported and the file replaced by an empty log.
 *   If the caps are now lower than the log's contents, random slots are
 *   evicted down to the caps.
 *   DIR/samples.lock is held (model/base/dirlock.h) while the buffer is
 *   open, so two processes, or two buffers in one, cannot share one log.
 *
 * Threads
 *   Any number of threads may call samples_add, samples_draw,
 *   samples_holdout and samples_stats concurrently. One mutex guards the
 *   reservoirs, the hash set, the counters and the pending records; an add
 *   hashes outside it and does O(1) work inside it (no I/O). samples_flush
 *   is serialised by a second mutex that owns the file; it takes the first
 *   only to swap out the pending records (and, when compacting, to copy the
 *   live state, which stalls adds for as long as a memcpy of the buffer
 *   takes). Lock order: flush lock, then the state lock.
 *   Shutdown: stop the callers, then samples_close.
 */
#ifndef EMBEDD_SAMPLES_H
#define EMBEDD_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/reclog.h"
#include "ops_train.h"

enum samples_source {
    SAMPLES_SRC_EMBED = 0,    /* /embed and /v1/embeddings */
    SAMPLES_SRC_ITEMS = 1,    /* /items */
    SAMPLES_SRC_EXPLICIT = 2, /* POST /train/samples */
    SAMPLES_N_SOURCES = 3
};

typedef struct samples_opts {
    int max_texts;            /* training reservoir, texts (100000) */
    size_t max_bytes;         /* training reservoir, text bytes (64 MiB) */
    int max_chars;            /* longer texts are cut, in bytes (2000) */
    int min_chars;            /* shorter texts (after trimming) are ignored (8) */
    double holdout_fraction;  /* of distinct texts, by hash (0.05) */
    int holdout_max;          /* held-out reservoir, texts (2000) */
    uint64_t seed;            /* reservoir decisions; 0: from the clock (0) */
    size_t compact_min_bytes; /* never compact a smaller log (1 MiB) */
    size_t pending_max;       /* unflushed records; past it the next flush
                                 rewrites the whole log instead (16 MiB) */
} samples_opts;

typedef struct samples_stats {
    uint64_t train;           /* texts in the training reservoir */
    uint64_t holdout;         /* texts in the held-out reservoir */
    uint64_t train_bytes;     /* their text bytes */
    uint64_t holdout_bytes;
    uint64_t seen;            /* distinct texts offered (train_seen + holdout_seen) */
    uint64_t train_seen;
    uint64_t holdout_seen;
    uint64_t duplicates;      /* texts already in the buffer */
    uint64_t ignored;         /* too short, or with a NUL byte */
    uint64_t truncated;       /* cut to max_chars */
    uint64_t received[SAMPLES_N_SOURCES]; /* samples_add calls per source */
    uint64_t added[SAMPLES_N_SOURCES];    /* of those, texts that went in */
    uint64_t version;         /* changes whenever the contents change */
    uint64_t holdout_version; /* changes whenever the held-out texts change */
    /* persistence (0 without a dir) */
    uint64_t log_bytes;       /* samples.log as of the last flush */
    uint64_t pending_bytes;   /* records not yet flushed */
    uint64_t flushes;
    uint64_t compactions;
    uint64_t replayed;        /* records replayed at open */
    uint64_t truncated_bytes; /* torn tail cut off at open */
    uint64_t io_errors;       /* failed flushes since open */
    char recovery[256];       /* what open repaired, "" when nothing */
} samples_stats;

typedef struct samples samples;

/* Fills o with the defaults above. */
void samples_opts_init(samples_opts *o);

/* Opens the buffer; dir NULL keeps it in memory only, else DIR/samples.log
 * is replayed (the directory is created if missing). o NULL: defaults. */
samples *samples_open(const char *dir, const samples_opts *o, emb_err *err);
/* Flushes (errors are lost: call samples_flush first to see them) and frees. */
void samples_close(samples *s);

/* Offers one text of len bytes from a source (enum samples_source).
 * Returns 1 when it went into a reservoir, 0 when not (duplicate, too
 * short, or not sampled), -1 on bad arguments. Never does I/O. */
int samples_add(samples *s, const char *text, size_t len, int source);

/* Up to min(n, cap) distinct random training texts into out, as malloc'd
 * NUL-terminated copies the caller frees. Returns how many (0 when the
 * reservoir is empty), -1 when out of memory. rng is the caller's. */
int samples_draw(samples *s, int n, emb_rng *rng, char **out, int cap);

/* Copies of every held-out text, ordered by hash (the same contents always
 * give the same list): *out is a malloc'd array of *n malloc'd strings; the
 * caller frees each, then the array. Returns 0, or -1 when out of memory. */
int samples_holdout(samples *s, char ***out, int *n);

void samples_stats_get(samples *s, samples_stats *st);

/* Writes and fsyncs the records added since the last flush, compacting
 * the log when due. The server calls it about once a second and at
 * shutdown. No-op without a dir. After a failed flush the next one
 * rewrites the whole log. */
int samples_flush(samples *s, emb_err *err);

/* `embedd repair` for DIR/samples.log, which must not be open
 * (reclog_salvage: keeps every record that verifies; the damaged file is
 * kept as samples.log.damaged-<time>). */
int samples_repair(const char *dir, int dir_fd, reclog_salvage_report *rep, emb_err *err);

#endif
