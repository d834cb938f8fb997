/* reclog.c: see reclog.h for the file layout and the recovery rules. */
#include "reclog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"
#include "crc32c.h"
#include "fileio.h"

struct reclog {
    reclog_format f;
    int dir_fd;                /* the caller's */
    char *dir;                 /* for messages */
    char *name;
    int fd;
    uint64_t size;             /* bytes in the file */
    int damaged;
};

static size_t header_size(const reclog_format *f)
{
    return RECLOG_HEADER_FIXED + f->extra;
}

static void header_encode(const reclog_format *f, const unsigned char *extra, unsigned char *h)
{
    memcpy(h, f->magic, 8);
    emb_put_u32(h + 8, f->version);
    if (f->extra > 0) {
        if (extra != NULL)
            memcpy(h + 12, extra, f->extra);
        else
            memset(h + 12, 0, f->extra);
    }
    emb_put_u32(h + 12 + f->extra, emb_crc32c(0, h, 12 + f->extra));
}

void reclog_frame(unsigned char *frame, const void *body, size_t len)
{
    emb_put_u32(frame, (uint32_t)len);
    uint32_t crc = emb_crc32c(0, frame, 4);
    emb_put_u32(frame + 4, emb_crc32c(crc, body, len));
}

/* ---- a fresh log ------------------------------------------------------------ */

/* Writes header + body as NAME.tmp and renames it over NAME. Returns the
 * new file's descriptor, or -1. */
static int log_create(reclog *l, const unsigned char *extra, const void *body, size_t n,
                      emb_err *err)
{
    unsigned char h[RECLOG_HEADER_FIXED + RECLOG_EXTRA_MAX];
    size_t hs = header_size(&l->f);
    header_encode(&l->f, extra, h);
    emb_replace r;
    if (emb_replace_begin_at_mode(&r, l->dir_fd, l->dir, l->name,
                                  l->f.file_mode != 0 ? l->f.file_mode : 0644, err) != 0)
        return -1;
    if (emb_pwrite_all(r.fd, h, hs, 0) != 0 ||
        (n > 0 && emb_pwrite_all(r.fd, body, n, hs) != 0)) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", r.dir, r.tmp, strerror(errno));
        emb_replace_abort(&r);
        return -1;
    }
    int fd = -1;
    if (emb_replace_commit(&r, &fd, err) != 0)
        return -1;
    return fd;
}

/* ---- replay ------------------------------------------------------------------ */

typedef struct scan {
    const unsigned char *p;    /* the mapped file */
    uint64_t size;
    uint64_t off;              /* end of the last good record */
    char why[200];             /* set when the tail is torn */
} scan;

/* Checks the frame at s->off. Returns the record's total size, or 0 (with
 * s->why) when it starts the torn tail. */
static uint64_t frame_check(const reclog_format *f, scan *s)
{
    uint64_t left = s->size - s->off;
    const unsigned char *rec = s->p + s->off;
    if (left < RECLOG_FRAME) {
        snprintf(s->why, sizeof s->why, "short record header (%llu bytes)",
                 (unsigned long long)left);
        return 0;
    }
    uint32_t len = emb_get_u32(rec);
    if (len < f->min_len || len > f->max_len) {
        snprintf(s->why, sizeof s->why, "record length %u out of range", len);
        return 0;
    }
    if ((uint64_t)len > left - RECLOG_FRAME) {
        snprintf(s->why, sizeof s->why, "short record (%u bytes, %llu left)", len,
                 (unsigned long long)(left - RECLOG_FRAME));
        return 0;
    }
    uint32_t crc = emb_crc32c(0, rec, 4);
    if (emb_crc32c(crc, rec + RECLOG_FRAME, len) != emb_get_u32(rec + 4)) {
        snprintf(s->why, sizeof s->why, "checksum mismatch");
        return 0;
    }
    return (uint64_t)len + RECLOG_FRAME;
}

/* Hands each good record to the replay function until the first bad one.
 * Returns -1 on a fatal error from it. */
static int scan_records(const reclog_format *f, scan *s, const reclog_replay *replay,
                        reclog_recovery *rec, emb_err *err)
{
    while (s->off < s->size) {
        uint64_t n = frame_check(f, s);
        if (n == 0)
            return 0;
        emb_err why = {0};
        int rc = replay->record(replay->user, s->p + s->off + RECLOG_FRAME,
                                (size_t)(n - RECLOG_FRAME), &why);
        if (rc < 0) {
            if (err != NULL)
                *err = why;
            return -1;
        }
        if (rc > 0) {
            snprintf(s->why, sizeof s->why, "%.199s", why.msg);
            return 0;
        }
        rec->records++;
        s->off += n;
    }
    return 0;
}

/* Why a header cannot be used; NULL when it is fine. Sets *fatal for a
 * header that is intact but not ours to read. */
static const char *header_problem(const reclog_format *f, const unsigned char *h, uint64_t size,
                                  int *fatal, char *buf, size_t cap)
{
    *fatal = 0;
    size_t hs = header_size(f);
    if (size < hs)
        return "short header";
    if (memcmp(h, f->magic, 8) != 0)
        return "bad magic";
    if (emb_crc32c(0, h, 12 + f->extra) != emb_get_u32(h + 12 + f->extra))
        return "header checksum mismatch";
    if (emb_get_u32(h + 8) != f->version) {
        *fatal = 1;
        snprintf(buf, cap, "format version %u (this build reads %u)", emb_get_u32(h + 8),
                 (unsigned)f->version);
        return buf;
    }
    return NULL;
}

/* Checksum bytes spent looking for records after a bad one. A real torn
 * tail is a partial record plus perhaps some garbage, far below this. */
#define RESYNC_BUDGET ((uint64_t)1 << 30)

/* 1 when a whole record that verifies starts at off; *n = its size. */
static int frame_at(const reclog_format *f, const unsigned char *p, uint64_t size, uint64_t off,
                    uint64_t *n, uint64_t *spent)
{
    if (size - off < RECLOG_FRAME)
        return 0;
    uint32_t len = emb_get_u32(p + off);
    if (len < f->min_len || len > f->max_len || len > size - off - RECLOG_FRAME)
        return 0;
    *spent += len;
    uint32_t crc = emb_crc32c(0, p + off, 4);
    if (emb_crc32c(crc, p + off + RECLOG_FRAME, len) != emb_get_u32(p + off + 4))
        return 0;
    *n = (uint64_t)len + RECLOG_FRAME;
    return 1;
}

/* Records that verify from `from` on, trying every offset (one that
 * verifies is skipped whole); *first is the first one's offset. -1 when the
 * budget ran out before the end of the file. */
static long verifiable_records(const reclog_format *f, const unsigned char *p, uint64_t size,
                               uint64_t from, uint64_t *first)
{
    long count = 0;
    uint64_t spent = 0, off = from, n = 0;
    while (off < size && size - off >= RECLOG_FRAME) {
        if (spent > RESYNC_BUDGET)
            return -1;
        if (frame_at(f, p, size, off, &n, &spent)) {
            if (count++ == 0)
                *first = off;
            off += n;
        } else {
            off++;
        }
    }
    return count;
}

/* A bad record (or header) at off is corruption, not a torn tail, when a
 * record that verifies follows it: then nothing is cut and the open fails,
 * naming the file, the offset and what would have been lost. */
static int refuse_if_corrupt(const reclog *l, const unsigned char *p, uint64_t size,
                             uint64_t off, uint64_t from, const char *why, emb_err *err)
{
    uint64_t first = 0;
    long n = verifiable_records(&l->f, p, size, from, &first);
    if (n == 0)
        return 0;
    char after[160];
    if (n > 0)
        snprintf(after, sizeof after, "%ld record%s after it verif%s (the first at offset %llu)",
                 n, n == 1 ? "" : "s", n == 1 ? "ies" : "y", (unsigned long long)first);
    else
        snprintf(after, sizeof after, "the %llu bytes after it could not all be checked",
                 (unsigned long long)(size - off));
    return emb_fail_as(err, EMB_ERR_INVALID,
                       "%s/%s is damaged at offset %llu (%s) and %s: refusing to open it "
                       "rather than drop them; `embedd repair --data %s` moves the file aside "
                       "and keeps every record that verifies",
                       l->dir, l->name, (unsigned long long)off, why, after, l->dir);
}

/* 1 when the bytes from off to the end are all zero: space the file had
 * reserved but whose data never arrived (as after a power cut). */
static int zero_to_end(const unsigned char *p, uint64_t size, uint64_t off)
{
    for (uint64_t i = off; i < size; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

/* A bad LAST record is a torn tail only when it looks like a write that
 * never finished: shorter than its length says, or zeros. An acknowledged
 * record reached the disk whole, so a whole record that ends exactly at the
 * end of the file and fails its checksum was damaged after it was written;
 * so was one whose only fault is its length field (the record up to the end
 * of the file verifies with the length the file implies). Both are refused
 * like damage in the middle: cutting them would drop an acknowledged write.
 * (Garbage after a whole record is still a torn tail: a failed append that
 * its ftruncate did not undo. A last record that verifies but that the
 * record function refused is cut as before.) */
static const char *damaged_last_record(const reclog_format *f, const unsigned char *p,
                                       uint64_t size, uint64_t off)
{
    uint64_t left = size - off;
    if (left < RECLOG_FRAME || zero_to_end(p, size, off))
        return NULL;
    uint32_t len = emb_get_u32(p + off);
    uint64_t implied = left - RECLOG_FRAME;
    if ((uint64_t)len == implied) {
        uint32_t crc = emb_crc32c(0, p + off, 4);
        if (emb_crc32c(crc, p + off + RECLOG_FRAME, len) == emb_get_u32(p + off + 4))
            return NULL;   /* it verifies: the record function refused it (its own rule) */
        return "a whole last record that fails its checksum";
    }
    if (implied < f->min_len || implied > f->max_len)
        return NULL;
    unsigned char len_bytes[4];
    emb_put_u32(len_bytes, (uint32_t)implied);
    uint32_t crc = emb_crc32c(0, len_bytes, 4);
    if (emb_crc32c(crc, p + off + RECLOG_FRAME, (size_t)implied) == emb_get_u32(p + off + 4))
        return "the last record's length field is damaged";
    return NULL;
}

/* The torn tail: a bad record with no record that verifies after it
 * (refuse_if_corrupt has checked); it and everything after it are cut. */
static int tail_cut(reclog *l, const scan *s, reclog_recovery *rec, emb_err *err)
{
    rec->truncated_at = s->off;
    rec->truncated_bytes = s->size - s->off;
    snprintf(rec->message, sizeof rec->message,
             "%s/%s: torn tail at offset %llu (%s): %llu bytes cut off", l->dir, l->name,
             (unsigned long long)s->off, s->why, (unsigned long long)(s->size - s->off));
    if (ftruncate(l->fd, (off_t)s->off) != 0 || fsync(l->fd) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: cannot cut the torn tail: %s", l->dir,
                           l->name, strerror(errno));
    return 0;
}

/* Replays the mapped log and cuts a torn tail. Returns 1 when the file
 * must be replaced by a fresh log (unusable header). */
static int log_recover(reclog *l, const unsigned char *p, uint64_t size,
                       const reclog_replay *replay, reclog_recovery *rec, emb_err *err)
{
    char buf[128];
    int fatal = 0;
    const char *problem = header_problem(&l->f, p, size, &fatal, buf, sizeof buf);
    if (problem != NULL && fatal)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s/%s: %s", l->dir, l->name, problem);
    if (problem != NULL) {
        size_t hs = header_size(&l->f);
        if (size > hs && refuse_if_corrupt(l, p, size, 0, hs, problem, err) != 0)
            return -1;
        snprintf(rec->message, sizeof rec->message,
                 "%s/%s: %s; its %llu bytes were discarded and a new log started", l->dir,
                 l->name, problem, (unsigned long long)size);
        rec->truncated_bytes = size;
        rec->restarted = 1;
        return 1;
    }
    if (replay->header != NULL && replay->header(replay->user, p + 12, err) != 0)
        return -1;
    scan s = {.p = p, .size = size, .off = header_size(&l->f)};
    if (scan_records(&l->f, &s, replay, rec, err) != 0)
        return -1;
    if (s.off < size) {
        if (refuse_if_corrupt(l, p, size, s.off, s.off + 1, s.why, err) != 0)
            return -1;
        const char *damage = damaged_last_record(&l->f, p, size, s.off);
        if (damage != NULL)
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "%s/%s is damaged at offset %llu (%s; %s): refusing to open it "
                               "rather than drop an acknowledged record; `embedd repair --data "
                               "%s` moves the file aside and keeps every record that verifies",
                               l->dir, l->name, (unsigned long long)s.off, s.why, damage, l->dir);
        if (tail_cut(l, &s, rec, err) != 0)
            return -1;
    }
    l->size = s.off;
    return 0;
}

/* Opens and replays an existing dir/name. Returns 1 when there is none or
 * it must be replaced by a fresh log. */
static int log_open_existing(reclog *l, const reclog_replay *replay, reclog_recovery *rec,
                             emb_err *err)
{
    l->fd = openat(l->dir_fd, l->name, O_RDWR | O_CLOEXEC);
    if (l->fd < 0 && errno == ENOENT) {
        rec->created = 1;
        return 1;
    }
    if (l->fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", l->dir, l->name, strerror(errno));
    struct stat st;
    if (fstat(l->fd, &st) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", l->dir, l->name, strerror(errno));
    if (l->f.file_mode != 0 && (st.st_mode & 07777) != l->f.file_mode &&
        fchmod(l->fd, (mode_t)l->f.file_mode) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: chmod: %s", l->dir, l->name, strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        snprintf(rec->message, sizeof rec->message, "%s/%s: empty file; a new log started",
                 l->dir, l->name);
        rec->restarted = 1;
        return 1;
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, l->fd, 0);
    if (map == MAP_FAILED)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: mmap: %s", l->dir, l->name,
                           strerror(errno));
    int rc = log_recover(l, map, size, replay, rec, err);
    munmap(map, (size_t)size);
    return rc;
}

static int format_check(const reclog_format *f, emb_err *err)
{
    if (f->extra > RECLOG_EXTRA_MAX || f->min_len > f->max_len || f->max_len > UINT32_MAX - 16)
        return emb_fail_as(err, EMB_ERR_INVALID, "reclog: bad format description");
    return 0;
}

reclog *reclog_open(int dir_fd, const char *dir, const char *name, const reclog_format *f,
                    const unsigned char *fresh_extra, const reclog_replay *replay,
                    reclog_recovery *rec, emb_err *err)
{
    memset(rec, 0, sizeof *rec);
    if (format_check(f, err) != 0)
        return NULL;
    reclog *l = calloc(1, sizeof *l);
    if (l == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    l->f = *f;
    l->dir_fd = dir_fd;
    l->fd = -1;
    l->dir = strdup(dir);
    l->name = strdup(name);
    if (l->dir == NULL || l->name == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    int rc = log_open_existing(l, replay, rec, err);
    if (rc < 0)
        goto fail;
    if (rc == 1) {
        if (l->fd >= 0)
            close(l->fd);
        l->fd = log_create(l, fresh_extra, NULL, 0, err);
        if (l->fd < 0)
            goto fail;
        l->size = header_size(f);
    }
    return l;
fail:
    reclog_close(l);
    return NULL;
}

/* ---- salvage ------------------------------------------------------------- */

typedef struct outbuf {
    unsigned char *p;
    size_t n, cap;
} outbuf;

static int out_put(outbuf *o, const void *data, size_t n)
{
    if (emb_bytes_reserve(&o->p, &o->cap, o->n + n, 1 << 16) != 0)
        return -1;
    memcpy(o->p + o->n, data, n);
    o->n += n;
    return 0;
}

/* Scans every offset after the header; the records kept go to out (as
 * framed records). 1 when anything changed, 0 when not, -1 on failure. */
static int salvage_scan(const reclog_format *f, const unsigned char *p, uint64_t size,
                        uint64_t from, const reclog_salvage_fns *fns,
                        reclog_salvage_report *rep, outbuf *out, emb_err *err)
{
    int changed = 0, in_gap = 0;
    uint64_t off = from, n = 0, spent = 0;
    unsigned char *body = NULL;
    while (off < size) {
        if (!frame_at(f, p, size, off, &n, &spent)) {
            rep->bytes_dropped++;
            rep->ranges_dropped += !in_gap;
            in_gap = 1;
            changed = 1;
            off++;
            continue;
        }
        in_gap = 0;
        size_t len = (size_t)(n - RECLOG_FRAME);
        unsigned char *b = realloc(body, len > 0 ? len : 1);
        if (b == NULL) {
            free(body);
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        }
        body = b;
        memcpy(body, p + off + RECLOG_FRAME, len);
        int keep = fns != NULL && fns->record != NULL ? fns->record(fns->user, body, len, err) : 1;
        if (keep < 0) {
            free(body);
            return -1;
        }
        if (keep == 0 || memcmp(body, p + off + RECLOG_FRAME, len) != 0)
            changed = 1;
        if (keep == 0) {
            rep->records_dropped++;
        } else {
            unsigned char frame[RECLOG_FRAME];
            reclog_frame(frame, body, len);
            if (out_put(out, frame, sizeof frame) != 0 || out_put(out, body, len) != 0) {
                free(body);
                return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            }
            rep->records_kept++;
        }
        off += n;
    }
    free(body);
    return changed;
}

/* Keeps the damaged file as NAME.damaged-<time>[-k] (a hard link). */
static int keep_damaged(int dir_fd, const char *dir, const char *name,
                        reclog_salvage_report *rep, emb_err *err)
{
    long t = (long)time(NULL);
    for (int k = 0; k < 100; k++) {
        if (k == 0)
            snprintf(rep->kept_as, sizeof rep->kept_as, "%s.damaged-%ld", name, t);
        else
            snprintf(rep->kept_as, sizeof rep->kept_as, "%s.damaged-%ld-%d", name, t, k);
        if (linkat(dir_fd, name, dir_fd, rep->kept_as, 0) == 0)
            return emb_fsync_dir(dir, err);
        if (errno != EEXIST)
            return emb_fail_as(err, EMB_ERR_IO, "%s/%s: cannot keep it as %s: %s", dir, name,
                               rep->kept_as, strerror(errno));
    }
    return emb_fail_as(err, EMB_ERR_IO, "%s/%s: no free name to keep it under", dir, name);
}

/* Writes the new log: header (extra) and the kept records. */
static int salvage_write(int dir_fd, const char *dir, const char *name, const reclog_format *f,
                         const unsigned char *extra, const outbuf *out, emb_err *err)
{
    unsigned char h[RECLOG_HEADER_FIXED + RECLOG_EXTRA_MAX];
    size_t hs = header_size(f);
    header_encode(f, extra, h);
    emb_replace r;
    if (emb_replace_begin_at(&r, dir_fd, dir, name, err) != 0)
        return -1;
    if (emb_pwrite_all(r.fd, h, hs, 0) != 0 ||
        (out->n > 0 && emb_pwrite_all(r.fd, out->p, out->n, hs) != 0)) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", r.dir, r.tmp, strerror(errno));
        emb_replace_abort(&r);
        return -1;
    }
    return emb_replace_commit(&r, NULL, err);
}

static int salvage_mapped(int dir_fd, const char *dir, const char *name, const reclog_format *f,
                          const unsigned char *p, uint64_t size, const reclog_salvage_fns *fns,
                          reclog_salvage_report *rep, emb_err *err)
{
    char buf[128];
    int fatal = 0;
    const char *problem = header_problem(f, p, size, &fatal, buf, sizeof buf);
    if (problem != NULL && fatal)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s/%s: %s", dir, name, problem);
    rep->header_bad = problem != NULL;
    if (fns != NULL && fns->begin != NULL)
        fns->begin(fns->user, problem == NULL ? p + 12 : NULL);
    size_t hs = header_size(f);
    outbuf out = {0};
    int changed = salvage_scan(f, p, size, size < hs ? size : hs, fns, rep, &out, err);
    unsigned char extra[RECLOG_EXTRA_MAX] = {0};
    if (problem == NULL && f->extra > 0)
        memcpy(extra, p + 12, f->extra);
    int rc = changed < 0 ? -1 : 0;
    if (rc == 0 && fns != NULL && fns->header != NULL)
        rc = fns->header(fns->user, extra, err);
    if (rc == 0 && (changed > 0 || rep->header_bad)) {
        rc = keep_damaged(dir_fd, dir, name, rep, err);
        if (rc == 0)
            rc = salvage_write(dir_fd, dir, name, f, extra, &out, err);
        rep->rewritten = rc == 0;
    }
    free(out.p);
    return rc;
}

int reclog_salvage(int dir_fd, const char *dir, const char *name, const reclog_format *f,
                   const reclog_salvage_fns *fns, reclog_salvage_report *rep, emb_err *err)
{
    memset(rep, 0, sizeof *rep);
    if (format_check(f, err) != 0)
        return -1;
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        snprintf(rep->message, sizeof rep->message, "%s/%s: no file", dir, name);
        return 0;
    }
    if (fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", dir, name, strerror(errno));
    rep->found = 1;
    struct stat st;
    int rc = -1;
    void *map = MAP_FAILED;
    if (fstat(fd, &st) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", dir, name, strerror(errno));
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > 0)
        map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (size > 0 && map == MAP_FAILED) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: mmap: %s", dir, name, strerror(errno));
        goto out;
    }
    rc = salvage_mapped(dir_fd, dir, name, f, map == MAP_FAILED ? (const unsigned char *)"" : map,
                        size, fns, rep, err);
    if (rc == 0 && rep->rewritten)
        snprintf(rep->message, sizeof rep->message,
                 "%s/%s: kept %llu records, dropped %llu bytes in %llu place%s%s%s; the damaged "
                 "file is %s/%s",
                 dir, name, (unsigned long long)rep->records_kept,
                 (unsigned long long)rep->bytes_dropped, (unsigned long long)rep->ranges_dropped,
                 rep->ranges_dropped == 1 ? "" : "s",
                 rep->header_bad ? ", rebuilt the header" : "",
                 rep->records_dropped > 0 ? ", left out records already elsewhere" : "", dir,
                 rep->kept_as);
    else if (rc == 0)
        snprintf(rep->message, sizeof rep->message, "%s/%s: verifies (%llu records); unchanged",
                 dir, name, (unsigned long long)rep->records_kept);
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)size);
    close(fd);
    return rc;
}

/* ---- writing ---------------------------------------------------------------- */

/* After a failed write at l->size: cut the file back, or note that it
 * could not be. */
static void undo_write(reclog *l)
{
    if (ftruncate(l->fd, (off_t)l->size) != 0)
        l->damaged = 1;
}

int reclog_append(reclog *l, const void *head, size_t head_len, const void *payload, size_t len,
                  emb_err *err)
{
    size_t body = head_len + len;
    if (body < l->f.min_len || body > l->f.max_len || head_len > 64)
        return emb_fail_as(err, EMB_ERR_TOO_LARGE,
                           "%s/%s: a record of %zu bytes is out of the log's range (%u..%u)",
                           l->dir, l->name, body, l->f.min_len, l->f.max_len);
    unsigned char h[RECLOG_FRAME + 64];
    memcpy(h + RECLOG_FRAME, head, head_len);
    emb_put_u32(h, (uint32_t)body);
    uint32_t crc = emb_crc32c(0, h, 4);
    crc = emb_crc32c(crc, head, head_len);
    emb_put_u32(h + 4, emb_crc32c(crc, payload, len));
    if (emb_pwrite_all(l->fd, h, RECLOG_FRAME + head_len, l->size) != 0 ||
        (len > 0 && emb_pwrite_all(l->fd, payload, len, l->size + RECLOG_FRAME + head_len) != 0)) {
        int e = errno;
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: write: %s", l->dir, l->name, strerror(e));
        undo_write(l);
        errno = e;
        return -1;
    }
    l->size += RECLOG_FRAME + body;
    return 0;
}

int reclog_write(reclog *l, const void *records, size_t n, emb_err *err)
{
    if (n == 0)
        return 0;
    if (emb_pwrite_all(l->fd, records, n, l->size) != 0) {
        int e = errno;
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: write: %s", l->dir, l->name, strerror(e));
        undo_write(l);
        errno = e;
        return -1;
    }
    l->size += n;
    return 0;
}

int reclog_sync(reclog *l, emb_err *err)
{
    if (fdatasync(l->fd) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: fdatasync: %s", l->dir, l->name,
                           strerror(errno));
    return 0;
}

int reclog_reset(reclog *l, const unsigned char *extra, const void *body, size_t n,
                 emb_err *err)
{
    int fd = log_create(l, extra, body, n, err);
    if (fd < 0)
        return -1;
    close(l->fd);
    l->fd = fd;
    l->size = header_size(&l->f) + n;
    l->damaged = 0;
    return 0;
}

uint64_t reclog_size(const reclog *l)
{
    return l->size;
}

int reclog_damaged(const reclog *l)
{
    return l->damaged;
}

void reclog_close(reclog *l)
{
    if (l == NULL)
        return;
    if (l->fd >= 0)
        close(l->fd);
    free(l->dir);
    free(l->name);
    free(l);
}
