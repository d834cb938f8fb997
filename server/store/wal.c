/* wal.c: see wal.h for the file layout and the group-commit design. The
 * framing, checksums, torn-tail repair and new-log creation are reclog's. */
#include "wal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"
#include "base/reclog.h"
#include "common/clock.h"

#define WAL_EXTRA (WAL_HEADER_SIZE - RECLOG_HEADER_FIXED) /* tag, base_seq, reserved */

static const reclog_format wal_format = {
    .magic = {'E', 'M', 'B', 'D', 'W', 'A', 'L', 0},
    .version = WAL_VERSION,
    .extra = WAL_EXTRA,
    .min_len = 8,
    .max_len = WAL_MAX_RECORD,
};

#define PROBE_BYTES (64 << 10) /* wal_heal's proof that the disk takes writes */

struct wal {
    pthread_mutex_t lock;
    pthread_cond_t synced;     /* broadcast when a sync round or a heal ends */
    char *dir;                 /* for messages */
    int dir_fd;                /* the caller's */
    reclog *log;
    uint32_t tag;
    uint64_t last_seq;         /* last appended */
    uint64_t synced_seq;       /* every record up to it is on disk */
    int syncing;               /* a leader is in fdatasync, or wal_heal in its I/O */
    /* Failure episodes (wal.h, Design). */
    int failed;
    int needs_rewrite;
    char failure[256];
    double failed_since;
    uint64_t n_episodes;
    uint64_t n_heals;
    double last_outage;
    uint64_t n_refused;
    uint64_t n_errors[WAL_OP_COUNT];
    uint64_t n_records;
    uint64_t n_syncs;
};

const char *wal_op_name(wal_op op)
{
    static const char *const names[WAL_OP_COUNT] = {"write", "fsync", "reopen", "rotate"};
    return op >= 0 && op < WAL_OP_COUNT ? names[op] : "?";
}

/* Counts an I/O error and starts an episode (or goes on with it). Caller
 * holds lock. */
static void mark_failed(wal *w, wal_op op, const char *msg)
{
    w->n_errors[op]++;
    if (!w->failed) {
        w->failed = 1;
        w->failed_since = mono_seconds();
        w->n_episodes++;
    }
    if (op == WAL_OP_FSYNC)
        w->needs_rewrite = 1;
    snprintf(w->failure, sizeof w->failure, "%s", msg);
}

/* Ends an episode. Caller holds lock. */
static void mark_healed(wal *w)
{
    if (!w->failed)
        return;
    w->last_outage = mono_seconds() - w->failed_since;
    w->n_heals++;
    w->failed = 0;
    w->needs_rewrite = 0;
    w->failure[0] = '\0';
}

/* ---- fault injection (tests only; wal.h) ------------------------------------ */

static struct {
    pthread_mutex_t lock;
    wal_op op;
    long nth, count, calls;
    int errnum;
} fault = {.lock = PTHREAD_MUTEX_INITIALIZER};

void wal_fault_set(wal_op op, long nth, long count, int errnum)
{
    pthread_mutex_lock(&fault.lock);
    fault.op = op;
    fault.nth = nth;
    fault.count = count;
    fault.calls = 0;
    fault.errnum = errnum;
    pthread_mutex_unlock(&fault.lock);
}

/* The injected errno for this call of op, or 0. */
static int fault_hit(wal_op op)
{
    pthread_mutex_lock(&fault.lock);
    int e = 0;
    if (fault.nth > 0 && fault.op == op) {
        long call = ++fault.calls;
        if (call >= fault.nth && (fault.count == 0 || call < fault.nth + fault.count))
            e = fault.errnum;
    }
    pthread_mutex_unlock(&fault.lock);
    return e;
}

int wal_fault_parse(const char *spec, emb_err *err)
{
    static const struct { const char *name; int e; } errnos[] = {
        {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EPERM", EPERM}, {"EROFS", EROFS}, {"EDQUOT", EDQUOT}};
    if (spec == NULL || spec[0] == '\0') {
        wal_fault_set(WAL_OP_WRITE, 0, 0, 0);
        return 0;
    }
    char op[16] = "", name[16] = "";
    long nth = 0, count = 1;
    int n = sscanf(spec, "%15s %ld %ld %15s", op, &nth, &count, name);
    int e = EIO;
    if (n >= 4) {
        e = atoi(name);
        for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++) {
            if (strcmp(name, errnos[i].name) == 0)
                e = errnos[i].e;
        }
    }
    int is_write = strcmp(op, "write") == 0, is_fsync = strcmp(op, "fsync") == 0;
    if (n < 2 || (!is_write && !is_fsync) || nth < 1 || count < 0 || e <= 0)
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "fault \"%s\": expected \"write|fsync NTH [COUNT [ERRNO]]\"", spec);
    wal_fault_set(is_write ? WAL_OP_WRITE : WAL_OP_FSYNC, nth, count, e);
    return 0;
}

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
    w->dir_fd = dir_fd;
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
        w->n_refused++;
        emb_fail_as(err, EMB_ERR_UNAVAILABLE, "%s", w->failure);
        goto out;
    }
    uint64_t s = w->last_seq + 1;
    unsigned char h[8];
    emb_put_u64(h, s);
    int injected = fault_hit(WAL_OP_WRITE);
    if (injected != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s/wal: write: %s (injected fault)", w->dir,
                    strerror(injected));
        mark_failed(w, WAL_OP_WRITE, err->msg);
        goto out;
    }
    if (reclog_append(w->log, h, sizeof h, payload, len, err) != 0) {
        /* Not acknowledged either way; while the partial record may still
         * be there (the undo failed too), nothing may be appended after it. */
        if (err->kind == EMB_ERR_IO) {
            char msg[256];
            snprintf(msg, sizeof msg, "%.200s%s", err->msg,
                     reclog_damaged(w->log) ? " (and could not be undone)" : "");
            mark_failed(w, WAL_OP_WRITE, msg);
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

/* One fdatasync, or the injected fault instead. */
static int log_sync(wal *w, emb_err *err)
{
    int injected = fault_hit(WAL_OP_FSYNC);
    if (injected != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/wal: fdatasync: %s (injected fault)", w->dir,
                           strerror(injected));
    return reclog_sync(w->log, err);
}

int wal_sync(wal *w, uint64_t seq, emb_err *err)
{
    int result = -1;
    int led_failure = 0;       /* this call's own fdatasync failed */
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
        int rc = log_sync(w, &serr);
        pthread_mutex_lock(&w->lock);
        w->syncing = 0;
        w->n_syncs++;
        if (rc == 0 && target > w->synced_seq)
            w->synced_seq = target;
        if (rc != 0) {
            mark_failed(w, WAL_OP_FSYNC, serr.msg);
            led_failure = 1;
        }
        pthread_cond_broadcast(&w->synced);
    }
    if (w->synced_seq >= seq)
        result = 0;
    else    /* the failure itself is an I/O error; the waiters it covered are refused */
        emb_fail_as(err, led_failure ? EMB_ERR_IO : EMB_ERR_UNAVAILABLE, "%s", w->failure);
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
    if (base_seq != w->last_seq) {
        emb_fail(err, "wal_rotate at seq %llu, but the last record is %llu",
                 (unsigned long long)base_seq, (unsigned long long)w->last_seq);
        goto out;
    }
    unsigned char x[WAL_EXTRA];
    header_extra(x, w->tag, base_seq);
    if (reclog_reset(w->log, x, NULL, 0, err) != 0) {
        /* The old log is untouched and still open: a healthy one goes on. */
        w->n_errors[WAL_OP_ROTATE]++;
        if (w->failed)
            snprintf(w->failure, sizeof w->failure, "%.255s", err->msg);
        goto out;
    }
    w->synced_seq = base_seq;
    mark_healed(w);   /* a new, fsync'd file: nothing of the old one is needed */
    pthread_cond_broadcast(&w->synced);
    result = 0;
out:
    pthread_mutex_unlock(&w->lock);
    return result;
}

/* wal_heal's I/O, on a descriptor of its own (the same file): a block of
 * zeros written after the last good record and synced proves the disk
 * takes writes; the file is then cut back to that record. 1 when the file
 * is shorter than the records written (it needs a new one). */
static int probe_and_cut(int dir_fd, const char *dir, uint64_t good, emb_err *err)
{
    static const unsigned char zeros[PROBE_BYTES];
    int fd = openat(dir_fd, "wal", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/wal: reopen: %s", dir, strerror(errno));
    const char *op = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        op = "fstat";
    else if (emb_pwrite_all(fd, zeros, sizeof zeros, good) != 0)
        op = "write";
    else if (fdatasync(fd) != 0)
        op = "fdatasync";
    else if (ftruncate(fd, (off_t)good) != 0)
        op = "ftruncate";
    else if (fdatasync(fd) != 0)
        op = "fdatasync";
    int e = errno;
    close(fd);
    if (op != NULL)
        return emb_fail_as(err, EMB_ERR_IO, "%s/wal: %s (recovery): %s", dir, op, strerror(e));
    return (uint64_t)st.st_size < good ? 1 : 0;
}

int wal_heal(wal *w, emb_err *err)
{
    pthread_mutex_lock(&w->lock);
    while (w->syncing)
        pthread_cond_wait(&w->synced, &w->lock);
    if (!w->failed) {
        pthread_mutex_unlock(&w->lock);
        return 0;
    }
    /* Appends are refused while failed; the flag keeps rotate and close out
     * while the I/O runs without the lock (stats stay readable). */
    w->syncing = 1;
    uint64_t good = reclog_size(w->log);
    pthread_mutex_unlock(&w->lock);
    int rc = probe_and_cut(w->dir_fd, w->dir, good, err);
    pthread_mutex_lock(&w->lock);
    w->syncing = 0;
    if (rc < 0)
        mark_failed(w, WAL_OP_REOPEN, err->msg);
    else if (rc > 0)
        w->needs_rewrite = 1;
    if (rc == 0 && w->needs_rewrite)
        rc = 1;
    if (rc == 0)
        mark_healed(w);
    pthread_cond_broadcast(&w->synced);
    pthread_mutex_unlock(&w->lock);
    return rc;
}

int wal_failed(wal *w)
{
    pthread_mutex_lock(&w->lock);
    int failed = w->failed;
    pthread_mutex_unlock(&w->lock);
    return failed;
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
    out->needs_rewrite = w->needs_rewrite;
    snprintf(out->failure, sizeof out->failure, "%s", w->failure);
    out->failed_for = w->failed ? mono_seconds() - w->failed_since : 0;
    out->episodes = w->n_episodes;
    out->heals = w->n_heals;
    out->last_outage = w->last_outage;
    out->refused = w->n_refused;
    memcpy(out->errors, w->n_errors, sizeof out->errors);
    pthread_mutex_unlock(&w->lock);
}

/* ---- repair ---------------------------------------------------------------------- */

typedef struct repair {
    uint32_t tag;
    uint64_t snapshot_seq;
    uint64_t base;
    int have_tag, have_base;
    uint64_t next;             /* the next kept record's seq; 0 before the first */
    wal_payload_check check;   /* NULL: every record that verifies is kept */
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
    /* A record that verifies but that replay would refuse (only a bug or a
     * hand could write one) is dropped too, or the repaired log would
     * still be refused. */
    if (r->check != NULL && r->have_tag && r->check(body + 8, len - 8, r->tag) != 0)
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
               wal_payload_check check, reclog_salvage_report *rep, emb_err *err)
{
    repair r = {.tag = tag, .have_tag = tag != 0, .snapshot_seq = snapshot_seq,
                .check = check};
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
