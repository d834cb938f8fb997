/* wal.c: see wal.h for the file layout and the group-commit design. */
#include "wal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"

static const unsigned char wal_magic[8] = {'E', 'M', 'B', 'D', 'W', 'A', 'L', 0};

struct wal {
    pthread_mutex_t lock;
    pthread_cond_t synced;     /* broadcast when a sync round ends */
    char *dir;                 /* for messages */
    int dir_fd;                /* the caller's */
    int fd;
    uint32_t tag;
    uint64_t size;             /* bytes in the file */
    uint64_t last_seq;         /* last appended */
    uint64_t synced_seq;       /* every record up to it is on disk */
    int syncing;               /* a leader is in fdatasync */
    int failed;
    char failure[256];
    uint64_t n_records;
    uint64_t n_syncs;
};

/* ---- CRC-32C, slicing by 8 ------------------------------------------------ */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (int i = 0; i < 256; i++) {
        for (int s = 1; s < 8; s++) {
            uint32_t prev = crc_table[s - 1][i];
            crc_table[s][i] = (prev >> 8) ^ crc_table[0][prev & 0xff];
        }
    }
}

uint32_t wal_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ wal_get_u32(p);
        uint32_t hi = wal_get_u32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        crc = crc_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
        p++;
        n--;
    }
    return ~crc;
}

/* ---- file helpers ---------------------------------------------------------- */

static void header_encode(unsigned char *h, uint32_t tag, uint64_t base_seq)
{
    memset(h, 0, WAL_HEADER_SIZE);
    memcpy(h, wal_magic, 8);
    wal_put_u32(h + 8, WAL_VERSION);
    wal_put_u32(h + 12, tag);
    wal_put_u64(h + 16, base_seq);
    wal_put_u32(h + 28, wal_crc32c(0, h, 28));
}

/* Writes a new log holding only a header as DIR/wal.tmp, makes it durable
 * and renames it over DIR/wal. Returns its fd, open for writing. */
static int log_create(wal *w, uint64_t base_seq, emb_err *err)
{
    unsigned char h[WAL_HEADER_SIZE];
    header_encode(h, w->tag, base_seq);
    int fd = openat(w->dir_fd, "wal.tmp", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        emb_fail(err, "%s/wal.tmp: %s", w->dir, strerror(errno));
        return -1;
    }
    if (emb_pwrite_all(fd, h, sizeof h, 0) != 0 || fsync(fd) != 0) {
        emb_fail(err, "%s/wal.tmp: %s", w->dir, strerror(errno));
        goto fail;
    }
    if (renameat(w->dir_fd, "wal.tmp", w->dir_fd, "wal") != 0) {
        emb_fail(err, "rename %s/wal.tmp: %s", w->dir, strerror(errno));
        goto fail;
    }
    if (fsync(w->dir_fd) != 0) {
        emb_fail(err, "fsync %s: %s", w->dir, strerror(errno));
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

/* ---- recovery -------------------------------------------------------------- */

typedef struct replay {
    const unsigned char *p;    /* the mapped file */
    uint64_t size;
    uint64_t off;              /* end of the last good record */
    uint64_t seq;              /* its seq */
    char why[200];             /* set when the tail is torn */
} replay;

/* Checks the record at r->off. Returns its total size, or 0 (with r->why)
 * when it starts the torn tail. */
static uint64_t record_check(replay *r)
{
    uint64_t left = r->size - r->off;
    const unsigned char *rec = r->p + r->off;
    if (left < WAL_RECORD_HEADER) {
        snprintf(r->why, sizeof r->why, "short record header (%llu bytes)",
                 (unsigned long long)left);
        return 0;
    }
    uint32_t len = wal_get_u32(rec);
    if (len < 8 || len > WAL_MAX_RECORD) {
        snprintf(r->why, sizeof r->why, "record length %u out of range", len);
        return 0;
    }
    if ((uint64_t)len + 8 > left) {
        snprintf(r->why, sizeof r->why, "short record (%u bytes, %llu left)", len,
                 (unsigned long long)(left - 8));
        return 0;
    }
    uint32_t crc = wal_crc32c(0, rec, 4);
    crc = wal_crc32c(crc, rec + 8, len);
    if (crc != wal_get_u32(rec + 4)) {
        snprintf(r->why, sizeof r->why, "checksum mismatch");
        return 0;
    }
    uint64_t seq = wal_get_u64(rec + 8);
    if (seq != r->seq + 1) {
        snprintf(r->why, sizeof r->why, "seq %llu after %llu", (unsigned long long)seq,
                 (unsigned long long)r->seq);
        return 0;
    }
    return (uint64_t)len + 8;
}

/* Replays every good record. Returns -1 on a fatal error from apply. */
static int replay_records(replay *r, uint64_t snapshot_seq, wal_apply_fn apply, void *user,
                          wal_recovery *rec, emb_err *err)
{
    while (r->off < r->size) {
        uint64_t n = record_check(r);
        if (n == 0)
            return 0;
        const unsigned char *rp = r->p + r->off;
        uint64_t seq = wal_get_u64(rp + 8);
        if (seq <= snapshot_seq) {
            rec->skipped++;
        } else {
            emb_err aerr = {0};
            int rc = apply(user, seq, rp + WAL_RECORD_HEADER, (size_t)(n - WAL_RECORD_HEADER),
                           &aerr);
            if (rc < 0) {
                emb_fail(err, "%s", aerr.msg);
                return -1;
            }
            if (rc > 0) {
                snprintf(r->why, sizeof r->why, "malformed record: %.160s", aerr.msg);
                return 0;
            }
            rec->records++;
        }
        r->seq = seq;
        r->off += n;
    }
    return 0;
}

/* Why a header cannot be used; NULL when it is fine. Sets *fatal for a
 * header that is intact but not ours to read. */
static const char *header_problem(wal *w, const unsigned char *h, uint64_t size, int *fatal,
                                  char *buf, size_t cap)
{
    *fatal = 0;
    if (size < WAL_HEADER_SIZE)
        return "short header";
    if (memcmp(h, wal_magic, 8) != 0)
        return "bad magic";
    if (wal_crc32c(0, h, 28) != wal_get_u32(h + 28))
        return "header checksum mismatch";
    *fatal = 1;
    if (wal_get_u32(h + 8) != WAL_VERSION) {
        snprintf(buf, cap, "format version %u (this build reads %u)", wal_get_u32(h + 8),
                 (unsigned)WAL_VERSION);
        return buf;
    }
    if (wal_get_u32(h + 12) != w->tag) {
        snprintf(buf, cap, "tag (dimension) %u, expected %u", wal_get_u32(h + 12), w->tag);
        return buf;
    }
    *fatal = 0;
    return NULL;
}

/* Replays the mapped log; on success sets w->size, w->last_seq and the
 * report, and truncates a torn tail. Returns 1 when the log must be
 * replaced by a fresh one (unusable header). */
static int log_recover(wal *w, const unsigned char *p, uint64_t size, uint64_t snapshot_seq,
                       wal_apply_fn apply, void *user, wal_recovery *rec, emb_err *err)
{
    char buf[128];
    int fatal = 0;
    const char *problem = header_problem(w, p, size, &fatal, buf, sizeof buf);
    if (problem != NULL && fatal)
        return emb_fail(err, "%s/wal: %s", w->dir, problem);
    if (problem != NULL) {
        snprintf(rec->message, sizeof rec->message,
                 "%s/wal: %s; its %llu bytes were discarded and a new log started", w->dir,
                 problem, (unsigned long long)size);
        rec->truncated_bytes = size;
        rec->restarted = 1;
        return 1;
    }
    uint64_t base = wal_get_u64(p + 16);
    if (base > snapshot_seq)
        return emb_fail(err,
                        "%s/wal starts after seq %llu but the snapshot ends at seq %llu: "
                        "records are missing",
                        w->dir, (unsigned long long)base, (unsigned long long)snapshot_seq);
    replay r = {.p = p, .size = size, .off = WAL_HEADER_SIZE, .seq = base};
    if (replay_records(&r, snapshot_seq, apply, user, rec, err) != 0)
        return -1;
    if (r.off < size) {
        rec->truncated_at = r.off;
        rec->truncated_bytes = size - r.off;
        snprintf(rec->message, sizeof rec->message,
                 "%s/wal: torn tail at offset %llu (%s): %llu bytes cut off", w->dir,
                 (unsigned long long)r.off, r.why, (unsigned long long)(size - r.off));
        if (ftruncate(w->fd, (off_t)r.off) != 0 || fsync(w->fd) != 0)
            return emb_fail(err, "%s/wal: cannot truncate the torn tail: %s", w->dir,
                            strerror(errno));
    }
    w->size = r.off;
    w->last_seq = r.seq;
    return 0;
}

static void wal_free(wal *w)
{
    if (w == NULL)
        return;
    if (w->fd >= 0)
        close(w->fd);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->synced);
    free(w->dir);
    free(w);
}

/* Opens DIR/wal read-write and replays it; *fresh is set when there is none. */
static int log_open_existing(wal *w, uint64_t snapshot_seq, wal_apply_fn apply, void *user,
                             wal_recovery *rec, emb_err *err)
{
    w->fd = openat(w->dir_fd, "wal", O_RDWR | O_CLOEXEC);
    if (w->fd < 0 && errno == ENOENT)
        return 1;
    if (w->fd < 0)
        return emb_fail(err, "%s/wal: %s", w->dir, strerror(errno));
    struct stat st;
    if (fstat(w->fd, &st) != 0)
        return emb_fail(err, "%s/wal: %s", w->dir, strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        snprintf(rec->message, sizeof rec->message, "%s/wal: empty file; a new log started",
                 w->dir);
        rec->restarted = 1;
        return 1;
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, w->fd, 0);
    if (map == MAP_FAILED)
        return emb_fail(err, "%s/wal: mmap: %s", w->dir, strerror(errno));
    int rc = log_recover(w, map, size, snapshot_seq, apply, user, rec, err);
    munmap(map, (size_t)size);
    return rc;
}

wal *wal_open(const char *dir, int dir_fd, uint32_t tag, uint64_t snapshot_seq,
              wal_apply_fn apply, void *user, wal_recovery *rec, emb_err *err)
{
    memset(rec, 0, sizeof *rec);
    wal *w = calloc(1, sizeof *w);
    if (w == NULL) {
        emb_fail(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->synced, NULL);
    w->fd = -1;
    w->dir_fd = dir_fd;
    w->tag = tag;
    w->dir = strdup(dir);
    if (w->dir == NULL) {
        emb_fail(err, "out of memory");
        goto fail;
    }
    int rc = log_open_existing(w, snapshot_seq, apply, user, rec, err);
    if (rc < 0)
        goto fail;
    /* A missing or unusable log, or one that ends before the snapshot (its
     * last records never reached the disk, but the snapshot has them): start
     * a new one at the snapshot, so appends keep the seqs contiguous. */
    if (rc == 1 || w->last_seq < snapshot_seq) {
        if (w->fd >= 0)
            close(w->fd);
        w->fd = log_create(w, snapshot_seq, err);
        if (w->fd < 0)
            goto fail;
        w->size = WAL_HEADER_SIZE;
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
        return emb_fail(err, "record of %zu bytes is over the log's limit of %u", len,
                        WAL_MAX_RECORD - 8);
    int result = -1;
    pthread_mutex_lock(&w->lock);
    if (w->failed) {
        emb_fail(err, "%s", w->failure);
        goto out;
    }
    uint64_t s = w->last_seq + 1;
    unsigned char h[WAL_RECORD_HEADER];
    wal_put_u32(h, (uint32_t)len + 8);
    wal_put_u64(h + 8, s);
    uint32_t crc = wal_crc32c(0, h, 4);
    crc = wal_crc32c(crc, h + 8, 8);
    crc = wal_crc32c(crc, payload, len);
    wal_put_u32(h + 4, crc);
    if (emb_pwrite_all(w->fd, h, sizeof h, w->size) != 0 ||
        emb_pwrite_all(w->fd, payload, len, w->size + sizeof h) != 0) {
        int e = errno;
        emb_fail(err, "%s/wal: write: %s", w->dir, strerror(e));
        if (ftruncate(w->fd, (off_t)w->size) != 0) {
            w->failed = 1;
            snprintf(w->failure, sizeof w->failure,
                     "%s/wal: write failed (%s) and could not be undone", w->dir, strerror(e));
        }
        goto out;
    }
    w->size += sizeof h + len;
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
        int fd = w->fd;
        pthread_mutex_unlock(&w->lock);
        int rc = fdatasync(fd);
        int e = errno;
        pthread_mutex_lock(&w->lock);
        w->syncing = 0;
        w->n_syncs++;
        if (rc == 0 && target > w->synced_seq)
            w->synced_seq = target;
        if (rc != 0) {
            w->failed = 1;
            snprintf(w->failure, sizeof w->failure, "%s/wal: fdatasync: %s", w->dir,
                     strerror(e));
        }
        pthread_cond_broadcast(&w->synced);
    }
    if (w->synced_seq >= seq)
        result = 0;
    else
        emb_fail(err, "%s", w->failure);
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
        emb_fail(err, "%s", w->failure);
        goto out;
    }
    if (base_seq != w->last_seq) {
        emb_fail(err, "wal_rotate at seq %llu, but the last record is %llu",
                 (unsigned long long)base_seq, (unsigned long long)w->last_seq);
        goto out;
    }
    int fd = log_create(w, base_seq, err);
    if (fd < 0)
        goto out;
    close(w->fd);
    w->fd = fd;
    w->size = WAL_HEADER_SIZE;
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
    out->bytes = w->size;
    out->last_seq = w->last_seq;
    out->synced_seq = w->synced_seq;
    out->records = w->n_records;
    out->syncs = w->n_syncs;
    out->failed = w->failed;
    pthread_mutex_unlock(&w->lock);
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
