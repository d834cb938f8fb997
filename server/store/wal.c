/* wal.c: see wal.h for the file layout and the group-commit design. The
 * framing, checksums, torn-tail repair and new-log creation are reclog's. */
#include "wal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/reclog.h"

#define WAL_EXTRA (WAL_HEADER_SIZE - RECLOG_HEADER_FIXED) /* tag, base_seq, reserved */

static const reclog_format wal_format = {
    .magic = {'E', 'M', 'B', 'D', 'W', 'A', 'L', 0},
    .version = WAL_VERSION,
    .extra = WAL_EXTRA,
    .min_len = 8,
    .max_len = WAL_MAX_RECORD,
};

struct wal {
    pthread_mutex_t lock;
    pthread_cond_t synced;     /* broadcast when a sync round ends */
    char *dir;                 /* for messages */
    reclog *log;
    uint32_t tag;
    uint64_t last_seq;         /* last appended */
    uint64_t synced_seq;       /* every record up to it is on disk */
    int syncing;               /* a leader is in fdatasync */
    int failed;
    char failure[256];
    uint64_t n_records;
    uint64_t n_syncs;
};

/* The header fields after magic and version: tag, base_seq, reserved. */
static void header_extra(unsigned char *x, uint32_t tag, uint64_t base_seq)
{
    memset(x, 0, WAL_EXTRA);
    emb_put_u32(x, tag);
    emb_put_u64(x + 4, base_seq);
}

/* ---- recovery -------------------------------------------------------------- */

typedef struct replay {
    wal *w;
    uint64_t snapshot_seq;
    uint64_t seq;              /* the last good record's */
    wal_apply_fn apply;
    void *user;
    wal_recovery *rec;
} replay;

static int replay_header(void *user, const unsigned char *x, emb_err *err)
{
    replay *r = user;
    uint32_t tag = emb_get_u32(x);
    if (tag != r->w->tag)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s/wal: tag (dimension) %u, expected %u",
                           r->w->dir, tag, r->w->tag);
    uint64_t base = emb_get_u64(x + 4);
    if (base > r->snapshot_seq)
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "%s/wal starts after seq %llu but the snapshot ends at seq %llu: "
                           "records are missing",
                           r->w->dir, (unsigned long long)base,
                           (unsigned long long)r->snapshot_seq);
    r->seq = base;
    return 0;
}

/* One record: seq order, then the snapshot skip or the caller's apply. */
static int replay_record(void *user, const unsigned char *body, size_t len, emb_err *err)
{
    replay *r = user;
    uint64_t seq = emb_get_u64(body);
    if (seq != r->seq + 1) {
        emb_fail(err, "seq %llu after %llu", (unsigned long long)seq,
                 (unsigned long long)r->seq);
        return 1;
    }
    if (seq <= r->snapshot_seq) {
        r->rec->skipped++;
    } else {
        emb_err aerr = {0};
        int rc = r->apply(r->user, seq, body + 8, len - 8, &aerr);
        if (rc < 0) {
            *err = aerr;
            return -1;
        }
        if (rc > 0) {
            emb_fail(err, "malformed record: %.160s", aerr.msg);
            return 1;
        }
        r->rec->records++;
    }
    r->seq = seq;
    return 0;
}

static void wal_free(wal *w)
{
    if (w == NULL)
        return;
    reclog_close(w->log);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->synced);
    free(w->dir);
    free(w);
}

wal *wal_open(const char *dir, int dir_fd, uint32_t tag, uint64_t snapshot_seq,
              wal_apply_fn apply, void *user, wal_recovery *rec, emb_err *err)
{
    memset(rec, 0, sizeof *rec);
    wal *w = calloc(1, sizeof *w);
    if (w == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->synced, NULL);
    w->tag = tag;
    w->dir = strdup(dir);
    if (w->dir == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    unsigned char x[WAL_EXTRA];
    header_extra(x, tag, snapshot_seq);
    replay r = {.w = w, .snapshot_seq = snapshot_seq, .seq = snapshot_seq,
                .apply = apply, .user = user, .rec = rec};
    reclog_replay fns = {.header = replay_header, .record = replay_record, .user = &r};
    reclog_recovery lr;
    w->log = reclog_open(dir_fd, dir, "wal", &wal_format, x, &fns, &lr, err);
    if (w->log == NULL)
        goto fail;
    rec->truncated_bytes = lr.truncated_bytes;
    rec->truncated_at = lr.truncated_at;
    rec->restarted = lr.restarted;
    snprintf(rec->message, sizeof rec->message, "%s", lr.message);
    w->last_seq = r.seq;
    /* A log that ends before the snapshot (its last records never reached
     * the disk, but the snapshot has them): start a new one at the
     * snapshot, so appends keep the seqs contiguous. */
    if (w->last_seq < snapshot_seq) {
        if (reclog_reset(w->log, x, NULL, 0, err) != 0)
            goto fail;
        w->last_seq = snapshot_seq;
    }
    w->synced_seq = w->last_seq;
    rec->last_seq = w->last_seq;
    return w;
fail:
    wal_free(w);
    return NULL;
}

/* ---- appending and group commit ---------------------------------------- */

int wal_append(wal *w, const void *payload, size_t len, uint64_t *seq, emb_err *err)
{
    if (len > WAL_MAX_RECORD - 8)
        return emb_fail_as(err, EMB_ERR_TOO_LARGE,
                           "record of %zu bytes is over the log's limit of %u", len,
                           WAL_MAX_RECORD - 8);
    int result = -1;
    pthread_mutex_lock(&w->lock);
    if (w->failed) {
        emb_fail_as(err, EMB_ERR_IO, "%s", w->failure);
        goto out;
    }
    uint64_t s = w->last_seq + 1;
    unsigned char h[8];
    emb_put_u64(h, s);
    if (reclog_append(w->log, h, sizeof h, payload, len, err) != 0) {
        if (reclog_damaged(w->log)) {
            w->failed = 1;
            snprintf(w->failure, sizeof w->failure,
                     "%s/wal: write failed (%s) and could not be undone", w->dir,
                     strerror(errno));
        }
        goto out;
    }
    w->last_seq = s;
    w->n_records++;
    *seq = s;
    result = 0;
out:
    pthread_mutex_unlock(&w->lock);
    return result;
}

int wal_sync(wal *w, uint64_t seq, emb_err *err)
{
    int result = -1;
    pthread_mutex_lock(&w->lock);
    if (seq > w->last_seq) {
        emb_fail(err, "wal_sync: seq %llu was never appended", (unsigned long long)seq);
        goto out;
    }
    while (!w->failed && w->synced_seq < seq) {
        if (w->syncing) {
            pthread_cond_wait(&w->synced, &w->lock);
            continue;
        }
        /* Lead one round: everything appended so far goes in this fdatasync. */
        w->syncing = 1;
        uint64_t target = w->last_seq;
        pthread_mutex_unlock(&w->lock);
        emb_err serr = {0};
        int rc = reclog_sync(w->log, &serr);
        pthread_mutex_lock(&w->lock);
        w->syncing = 0;
        w->n_syncs++;
        if (rc == 0 && target > w->synced_seq)
            w->synced_seq = target;
        if (rc != 0) {
            w->failed = 1;
            snprintf(w->failure, sizeof w->failure, "%.255s", serr.msg);
        }
        pthread_cond_broadcast(&w->synced);
    }
    if (w->synced_seq >= seq)
        result = 0;
    else
        emb_fail_as(err, EMB_ERR_IO, "%s", w->failure);
out:
    pthread_mutex_unlock(&w->lock);
    return result;
}

int wal_rotate(wal *w, uint64_t base_seq, emb_err *err)
{
    int result = -1;
    pthread_mutex_lock(&w->lock);
    while (w->syncing)
        pthread_cond_wait(&w->synced, &w->lock);
    if (w->failed) {
        emb_fail_as(err, EMB_ERR_IO, "%s", w->failure);
        goto out;
    }
    if (base_seq != w->last_seq) {
        emb_fail(err, "wal_rotate at seq %llu, but the last record is %llu",
                 (unsigned long long)base_seq, (unsigned long long)w->last_seq);
        goto out;
    }
    unsigned char x[WAL_EXTRA];
    header_extra(x, w->tag, base_seq);
    if (reclog_reset(w->log, x, NULL, 0, err) != 0)
        goto out;
    w->synced_seq = base_seq;
    pthread_cond_broadcast(&w->synced);
    result = 0;
out:
    pthread_mutex_unlock(&w->lock);
    return result;
}

void wal_get_stats(wal *w, wal_stats *out)
{
    pthread_mutex_lock(&w->lock);
    out->bytes = reclog_size(w->log);
    out->last_seq = w->last_seq;
    out->synced_seq = w->synced_seq;
    out->records = w->n_records;
    out->syncs = w->n_syncs;
    out->failed = w->failed;
    pthread_mutex_unlock(&w->lock);
}

/* ---- repair ---------------------------------------------------------------------- */

typedef struct repair {
    uint32_t tag;
    uint64_t snapshot_seq;
    uint64_t base;
    int have_tag, have_base;
    uint64_t next;             /* the next kept record's seq; 0 before the first */
} repair;

static void repair_begin(void *user, const unsigned char *old)
{
    repair *r = user;
    if (old == NULL)
        return;
    r->tag = emb_get_u32(old);
    r->base = emb_get_u64(old + 4);
    r->have_tag = r->have_base = 1;
}

/* Leaves out what the snapshot holds; renumbers the rest without gaps. */
static int repair_record(void *user, unsigned char *body, size_t len, emb_err *err)
{
    repair *r = user;
    uint64_t seq = emb_get_u64(body);
    if (seq <= r->snapshot_seq)
        return 0;
    if (r->next == 0) {
        if (!r->have_base)
            r->base = seq - 1;
        if (r->base < r->snapshot_seq)
            r->base = r->snapshot_seq;
        r->have_base = 1;
        r->next = r->base + 1;
    }
    emb_put_u64(body, r->next++);
    return 1;
}

static int repair_header(void *user, unsigned char *extra, emb_err *err)
{
    repair *r = user;
    if (!r->have_tag)
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "the wal's header is damaged and the store's dimension is unknown "
                           "(no snapshot to read it from)");
    if (!r->have_base || r->base < r->snapshot_seq)
        r->base = r->snapshot_seq;
    header_extra(extra, r->tag, r->base);
    return 0;
}

int wal_repair(const char *dir, int dir_fd, uint32_t tag, uint64_t snapshot_seq,
               reclog_salvage_report *rep, emb_err *err)
{
    repair r = {.tag = tag, .have_tag = tag != 0, .snapshot_seq = snapshot_seq};
    reclog_salvage_fns fns = {.begin = repair_begin, .record = repair_record,
                              .header = repair_header, .user = &r};
    return reclog_salvage(dir_fd, dir, "wal", &wal_format, &fns, rep, err);
}

void wal_close(wal *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    while (w->syncing)
        pthread_cond_wait(&w->synced, &w->lock);
    pthread_mutex_unlock(&w->lock);
    wal_free(w);
}
