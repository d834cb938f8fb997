/* store_disk.c: the store's on-disk formats (layouts in store.h): WAL
 * record payloads and snapshots (see store_disk.h). */
#include "store_disk.h"
#include "wal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/bytes.h"
#include "base/crc32c.h"
#include "base/fileio.h"

enum { FLAG_TEXT = 1, FLAG_PAYLOAD = 2 };

/* One encoded item, at most: id, version, flags, lengths, text, payload, vector. */
#define ITEM_MAX_BYTES (300 + STORE_MAX_TEXT + STORE_MAX_PAYLOAD + 4 * STORE_MAX_DIM)

static const unsigned char snapshot_magic[8] = {'E', 'M', 'B', 'D', 'S', 'N', 'A', 'P'};

/* ---- encoding ---------------------------------------------------------------- */

static void put_u8(strbuf *sb, unsigned v)
{
    sb_putc(sb, (char)(unsigned char)v);
}

static void put_floats(strbuf *sb, const float *v, int n)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    sb_append(sb, (const char *)v, sizeof(float) * (size_t)n);
#else
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        sb_put_u32(sb, u);
    }
#endif
}

static void put_id(strbuf *sb, const store_id *id)
{
    put_u8(sb, (unsigned)id->kind);
    if (id->kind == STORE_ID_NUM) {
        sb_put_u64(sb, id->num);
        return;
    }
    put_u8(sb, (unsigned)(id->len & 0xff));
    put_u8(sb, (unsigned)(id->len >> 8));
    sb_append(sb, id->str, id->len);
}

static void put_row(strbuf *sb, const store_row *r, const float *vec, int dim)
{
    store_id id = store_row_id(r);
    put_id(sb, &id);
    sb_put_u32(sb, (uint32_t)r->version);
    unsigned flags = (r->text != NULL ? FLAG_TEXT : 0) | (r->payload != NULL ? FLAG_PAYLOAD : 0);
    put_u8(sb, flags);
    if (r->text != NULL) {
        sb_put_u32(sb, r->text_len);
        sb_append(sb, r->text, r->text_len);
    }
    if (r->payload != NULL) {
        sb_put_u32(sb, r->payload_len);
        sb_append(sb, r->payload, r->payload_len);
    }
    put_floats(sb, vec, dim);
}

int store_encode_upsert(strbuf *sb, const store_row *rows, const float *vecs, int n, int dim)
{
    put_u8(sb, STORE_OP_UPSERT);
    sb_put_u32(sb, (uint32_t)n);
    for (int i = 0; i < n; i++)
        put_row(sb, &rows[i], vecs + (size_t)i * dim, dim);
    return sb->failed ? -1 : 0;
}

void store_encode_delete(strbuf *sb, const store_id *ids, int n)
{
    put_u8(sb, STORE_OP_DELETE);
    sb_put_u32(sb, (uint32_t)n);
    for (int i = 0; i < n; i++)
        put_id(sb, &ids[i]);
}

/* ---- decoding: every read is bounds-checked ------------------------------- */

typedef struct reader {
    const unsigned char *p;
    const unsigned char *end;
} reader;

static const unsigned char *get_bytes(reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return NULL;
    const unsigned char *at = r->p;
    r->p += n;
    return at;
}

static int get_u8(reader *r, unsigned *v)
{
    const unsigned char *b = get_bytes(r, 1);
    if (b == NULL)
        return -1;
    *v = b[0];
    return 0;
}

static int get_u32(reader *r, uint32_t *v)
{
    const unsigned char *b = get_bytes(r, 4);
    if (b == NULL)
        return -1;
    *v = emb_get_u32(b);
    return 0;
}

static int get_u64(reader *r, uint64_t *v)
{
    const unsigned char *b = get_bytes(r, 8);
    if (b == NULL)
        return -1;
    *v = emb_get_u64(b);
    return 0;
}

/* A string id points into the buffer (not NUL-terminated). */
static int get_id(reader *r, store_id *id, emb_err *err)
{
    unsigned kind;
    memset(id, 0, sizeof *id);
    if (get_u8(r, &kind) != 0)
        return emb_fail(err, "truncated id");
    if (kind == STORE_ID_NUM) {
        id->kind = STORE_ID_NUM;
        if (get_u64(r, &id->num) != 0)
            return emb_fail(err, "truncated id");
        return 0;
    }
    if (kind != STORE_ID_STR)
        return emb_fail(err, "id kind %u", kind);
    const unsigned char *len = get_bytes(r, 2);
    if (len == NULL)
        return emb_fail(err, "truncated id");
    id->kind = STORE_ID_STR;
    id->len = (size_t)len[0] | (size_t)len[1] << 8;
    id->str = (const char *)get_bytes(r, id->len);
    if (id->str == NULL)
        return emb_fail(err, "truncated id");
    return 0;
}

/* An item's parts, pointing into the buffer; the vector is copied to vec. */
typedef struct item_view {
    store_id id;
    int32_t version;
    const char *text;
    size_t text_len;
    const char *payload;
    size_t payload_len;
} item_view;

static int get_blob(reader *r, size_t max, const char **s, size_t *len, emb_err *err)
{
    uint32_t n;
    if (get_u32(r, &n) != 0 || n > max)
        return emb_fail(err, "bad text or payload length");
    *s = (const char *)get_bytes(r, n);
    *len = n;
    if (*s == NULL)
        return emb_fail(err, "truncated text or payload");
    return 0;
}

static int get_vector(reader *r, float *vec, int dim, emb_err *err)
{
    const unsigned char *b = get_bytes(r, sizeof(float) * (size_t)dim);
    if (b == NULL)
        return emb_fail(err, "truncated vector");
    for (int i = 0; i < dim; i++) {
        uint32_t u = emb_get_u32(b + 4 * (size_t)i);
        memcpy(&vec[i], &u, 4);
        if (!isfinite(vec[i]))
            return emb_fail(err, "vector element %d is not finite", i);
    }
    return 0;
}

static int get_item(reader *r, int dim, item_view *it, float *vec, emb_err *err)
{
    memset(it, 0, sizeof *it);
    if (get_id(r, &it->id, err) != 0)
        return -1;
    uint32_t version;
    unsigned flags;
    if (get_u32(r, &version) != 0 || get_u8(r, &flags) != 0 || flags > 3)
        return emb_fail(err, "truncated item or bad flags");
    it->version = (int32_t)version;
    if ((flags & FLAG_TEXT) && get_blob(r, STORE_MAX_TEXT, &it->text, &it->text_len, err) != 0)
        return -1;
    if ((flags & FLAG_PAYLOAD) &&
        get_blob(r, STORE_MAX_PAYLOAD, &it->payload, &it->payload_len, err) != 0)
        return -1;
    return get_vector(r, vec, dim, err);
}

/* Decodes and prepares one item. 0, 1 when malformed, -1 out of memory. */
static int item_read(reader *r, int dim, store_row *row, float *vec, emb_err *err)
{
    item_view it;
    if (get_item(r, dim, &it, vec, err) != 0)
        return 1;
    return store_row_prepare(&it.id, it.version, it.text, it.text_len, it.payload,
                             it.payload_len, row, err);
}

/* ---- WAL records ---------------------------------------------------------------- */

static int decode_upsert(reader *r, int dim, store_op *op, emb_err *err)
{
    op->rows = calloc(op->n > 0 ? op->n : 1, sizeof *op->rows);
    op->vecs = malloc(sizeof(float) * (size_t)(op->n > 0 ? op->n : 1) * (size_t)dim);
    if (op->rows == NULL || op->vecs == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory replaying %u items", op->n);
        return -1;
    }
    for (uint32_t i = 0; i < op->n; i++) {
        int rc = item_read(r, dim, &op->rows[i], op->vecs + (size_t)i * dim, err);
        if (rc != 0)
            return rc;
    }
    if (r->p != r->end) {
        emb_fail(err, "%zu bytes after the last item", (size_t)(r->end - r->p));
        return 1;
    }
    return 0;
}

static int decode_delete(reader *r, store_op *op, emb_err *err)
{
    op->ids = calloc(op->n > 0 ? op->n : 1, sizeof *op->ids);
    if (op->ids == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory replaying a delete of %u ids", op->n);
        return -1;
    }
    for (uint32_t i = 0; i < op->n; i++) {
        if (get_id(r, &op->ids[i], err) != 0)
            return 1;
    }
    if (r->p != r->end) {
        emb_fail(err, "%zu bytes after the last id", (size_t)(r->end - r->p));
        return 1;
    }
    return 0;
}

int store_op_decode(const unsigned char *payload, size_t len, int dim, uint64_t seq,
                    store_op *op, emb_err *err)
{
    memset(op, 0, sizeof *op);
    reader r = {payload, payload + len};
    unsigned kind;
    if (get_u8(&r, &kind) != 0 || get_u32(&r, &op->n) != 0) {
        emb_fail(err, "record %llu: truncated", (unsigned long long)seq);
        return 1;
    }
    if (op->n > STORE_MAX_BATCH) {
        emb_fail(err, "record %llu: batch of %u", (unsigned long long)seq, op->n);
        return 1;
    }
    op->kind = (int)kind;
    if (kind == STORE_OP_UPSERT)
        return decode_upsert(&r, dim, op, err);
    if (kind == STORE_OP_DELETE)
        return decode_delete(&r, op, err);
    emb_fail(err, "record %llu: unknown op %u", (unsigned long long)seq, kind);
    return 1;
}

int store_op_refused(const unsigned char *payload, size_t len, uint32_t dim)
{
    store_op op;
    emb_err err;
    int rc = store_op_decode(payload, len, (int)dim, 0, &op, &err);
    store_op_free(&op);
    return rc != 0;
}

void store_op_free(store_op *op)
{
    for (uint32_t i = 0; op->rows != NULL && i < op->n; i++)
        store_row_free(&op->rows[i]);
    free(op->rows);
    free(op->vecs);
    free(op->ids);
    memset(op, 0, sizeof *op);
}

/* ---- snapshots ------------------------------------------------------------------ */

/* Format 2 (store_disk.h) frames every item with its own checksum, so that
 * a damaged byte costs one item, found and named, not the whole file.
 * Format 1 (one checksum over the whole file) is still read. */
#define SNAPSHOT_V1 1
#define SNAPSHOT_V2 2
#define SNAPSHOT_FRAME 40          /* the header, and format 2's trailer */
#define SNAPSHOT_V1_TRAILER 4
#define RECORD_FRAME 8             /* len, crc */
#define ITEM_MIN_BYTES 10          /* the smallest id, version, flags, one float */

static const unsigned char trailer_magic[8] = {'E', 'M', 'B', 'D', 'S', 'E', 'N', 'D'};

/* A buffered writer. */
typedef struct file_writer {
    int fd;
    unsigned char *buf;
    size_t len;
    size_t cap;
    int err_no;                /* first error, 0 when none */
} file_writer;

static void fw_flush(file_writer *fw)
{
    if (fw->err_no == 0 && emb_write_all(fw->fd, fw->buf, fw->len) != 0)
        fw->err_no = errno != 0 ? errno : EIO;
    fw->len = 0;
}

static void fw_write(file_writer *fw, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0 && fw->err_no == 0) {
        size_t k = fw->cap - fw->len;
        if (k > n)
            k = n;
        memcpy(fw->buf + fw->len, p, k);
        fw->len += k;
        p += k;
        n -= k;
        if (fw->len == fw->cap)
            fw_flush(fw);
    }
}

/* One item record: len, CRC-32C of the len field then of the body, body. */
static void fw_record(file_writer *fw, const void *body, size_t len)
{
    unsigned char frame[RECORD_FRAME];
    emb_put_u32(frame, (uint32_t)len);
    emb_put_u32(frame + 4, emb_crc32c(emb_crc32c(0, frame, 4), body, len));
    fw_write(fw, frame, sizeof frame);
    fw_write(fw, body, len);
}

/* The header (magic EMBDSNAP) and the trailer (EMBDSEND) share a layout. */
static void snapshot_frame(unsigned char *h, const unsigned char *magic, int dim, uint64_t seq,
                           uint64_t count)
{
    memset(h, 0, SNAPSHOT_FRAME);
    memcpy(h, magic, 8);
    emb_put_u32(h + 8, SNAPSHOT_V2);
    emb_put_u32(h + 12, (uint32_t)dim);
    emb_put_u64(h + 16, seq);
    emb_put_u64(h + 24, count);
    emb_put_u32(h + 36, emb_crc32c(0, h, 36));
}

/* 1 when the avail bytes at h start with a format 2 header or trailer. */
static int frame_ok(const unsigned char *h, size_t avail, const unsigned char *magic)
{
    if (avail < SNAPSHOT_FRAME || memcmp(h, magic, 8) != 0 ||
        emb_crc32c(0, h, 36) != emb_get_u32(h + 36))
        return 0;
    uint32_t dim = emb_get_u32(h + 12);
    return emb_get_u32(h + 8) == SNAPSHOT_V2 && dim >= 1 && dim <= STORE_MAX_DIM;
}

/* What writes a snapshot's items: emit writes count records to fw. */
typedef struct snapshot_source {
    int dim;
    uint64_t seq;
    uint64_t count;
    void (*emit)(void *user, file_writer *fw);
    void *user;
} snapshot_source;

/* Writes DIR/snapshot by replace-by-rename (fileio.h): a crash leaves the
 * old snapshot or the new one. */
static int snapshot_write_source(const store_files *s, const snapshot_source *src, emb_err *err)
{
    emb_replace r;
    if (emb_replace_begin_at(&r, s->dir_fd, s->dir, "snapshot", err) != 0)
        return -1;
    file_writer fw = {.fd = r.fd, .cap = 1 << 20};
    fw.buf = malloc(fw.cap);
    if (fw.buf == NULL) {
        fw.err_no = ENOMEM;
    } else {
        unsigned char h[SNAPSHOT_FRAME];
        snapshot_frame(h, snapshot_magic, src->dim, src->seq, src->count);
        fw_write(&fw, h, sizeof h);
        src->emit(src->user, &fw);
        snapshot_frame(h, trailer_magic, src->dim, src->seq, src->count);
        fw_write(&fw, h, sizeof h);
        fw_flush(&fw);
        free(fw.buf);
    }
    if (fw.err_no != 0) {
        emb_replace_abort(&r);
        return emb_fail_as(err, fw.err_no == ENOMEM ? EMB_ERR_NO_MEMORY : EMB_ERR_IO,
                           "%s/snapshot.tmp: %s", s->dir, strerror(fw.err_no));
    }
    return emb_replace_commit(&r, NULL, err);
}

static void emit_table(void *user, file_writer *fw)
{
    const store_table_view *t = user;
    strbuf item;
    sb_init(&item, ITEM_MAX_BYTES);
    for (long r = 0; r < t->count && fw->err_no == 0; r++) {
        item.len = 0;
        put_row(&item, &t->rows[r], t->matrix + (size_t)r * t->dim, t->dim);
        if (item.failed) {
            fw->err_no = ENOMEM;
            break;
        }
        fw_record(fw, item.buf, item.len);
    }
    sb_free(&item);
}

int store_snapshot_write(const store_files *s, const store_table_view *t, emb_err *err)
{
    snapshot_source src = {.dim = t->dim, .seq = t->seq, .count = (uint64_t)t->count,
                           .emit = emit_table, .user = (void *)t};
    return snapshot_write_source(s, &src, err);
}

/* ---- reading: DIR/snapshot mapped ------------------------------------------------ */

typedef struct snapshot_map {
    int fd;
    void *map;
    size_t size;
    const unsigned char *p;
} snapshot_map;

static void snapshot_unmap(snapshot_map *m)
{
    if (m->map != MAP_FAILED)
        munmap(m->map, m->size);
    if (m->fd >= 0)
        close(m->fd);
}

/* Maps DIR/snapshot. 0, 1 when there is none, -1 on an I/O error. */
static int snapshot_map_open(const store_files *s, snapshot_map *m, emb_err *err)
{
    m->map = MAP_FAILED;
    m->size = 0;
    m->p = (const unsigned char *)"";
    m->fd = openat(s->dir_fd, "snapshot", O_RDONLY | O_CLOEXEC);
    if (m->fd < 0 && errno == ENOENT)
        return 1;
    if (m->fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/snapshot: %s", s->dir, strerror(errno));
    struct stat st;
    if (fstat(m->fd, &st) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s/snapshot: %s", s->dir, strerror(errno));
    m->size = (size_t)st.st_size;
    if (m->size > 0)
        m->map = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
    if (m->size > 0 && m->map == MAP_FAILED)
        return emb_fail_as(err, EMB_ERR_IO, "%s/snapshot: mmap: %s", s->dir, strerror(errno));
    if (m->map != MAP_FAILED) {
        m->p = m->map;
        madvise(m->map, m->size, MADV_SEQUENTIAL);
    }
    return 0;
}

/* 1 when the file starts with an intact format 1 header. */
static int is_v1(const unsigned char *p, size_t size)
{
    return size >= SNAPSHOT_FRAME && memcmp(p, snapshot_magic, 8) == 0 &&
           emb_crc32c(0, p, 36) == emb_get_u32(p + 36) && emb_get_u32(p + 8) == SNAPSHOT_V1;
}

/* Format 1: checks the header and the whole-file checksum; returns its count. */
static int v1_check(const store_files *s, int dim, const unsigned char *p, size_t size,
                    uint64_t *count, emb_err *err)
{
    if (size < SNAPSHOT_FRAME + SNAPSHOT_V1_TRAILER)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s/snapshot is damaged: only %zu bytes",
                           s->dir, size);
    if (dim != 0 && emb_get_u32(p + 12) != (uint32_t)dim)
        return emb_fail(err, "%s/snapshot holds vectors of dimension %u, not %d", s->dir,
                        emb_get_u32(p + 12), dim);
    size_t body = size - SNAPSHOT_V1_TRAILER;
    if (emb_crc32c(0, p, body) != emb_get_u32(p + body))
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "%s/snapshot (format 1) is damaged: checksum mismatch; format 1 has "
                           "one checksum over the whole file, so the items that are intact "
                           "cannot be told from the damaged ones: restore it from a backup",
                           s->dir);
    *count = emb_get_u64(p + 24);
    if (*count > (uint64_t)s->max_items)
        return emb_fail(err, "%s/snapshot holds %llu items, over max_items %ld", s->dir,
                        (unsigned long long)*count, s->max_items);
    return 0;
}

/* Format 1: decodes count items into the sink. */
static int v1_apply(const store_files *s, int dim, const unsigned char *p, size_t size,
                    uint64_t count, const store_snapshot_sink *sink, emb_err *err)
{
    reader r = {p + SNAPSHOT_FRAME, p + size - SNAPSHOT_V1_TRAILER};
    float *vec = malloc(sizeof(float) * (size_t)dim);
    if (vec == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    int result = -1;
    if (sink->reserve(sink->user, (long)count, err) != 0)
        goto out;
    for (uint64_t i = 0; i < count; i++) {
        store_row row;
        emb_err e;
        if (item_read(&r, dim, &row, vec, &e) != 0) {
            emb_fail_as(err, EMB_ERR_INVALID, "%s/snapshot: item %llu: %s", s->dir,
                        (unsigned long long)i, e.msg);
            goto out;
        }
        sink->put(sink->user, &row, vec);
    }
    if (r.p != r.end) {
        emb_fail_as(err, EMB_ERR_INVALID, "%s/snapshot: bytes after the last item", s->dir);
        goto out;
    }
    result = 0;
out:
    free(vec);
    return result;
}

/* ---- format 2: the scan ---------------------------------------------------------- */

/* Called with each item record that verifies, in file order (the item's
 * parts point into the file; vec is scratch). 0, or -1 to stop (err set). */
typedef int (*scan_item_fn)(void *user, const item_view *it, const float *vec,
                            const unsigned char *body, size_t len, emb_err *err);

/* What a scan found. Every byte is in the header, an item record that
 * verifies, the trailer, or a damaged range. */
typedef struct snap_scan {
    int header_ok;
    int trailer_ok;
    int dim;                   /* from the header, else the trailer (0: neither) */
    uint64_t seq;
    uint64_t count;            /* items the header (or trailer) says it holds */
    int fields_differ;         /* header and trailer both verify but disagree */
    uint64_t items;            /* item records that verify */
    uint64_t bad_bytes;
    uint64_t bad_ranges;
    uint64_t first_bad;        /* offset of the first damaged byte */
    uint64_t items_before;     /* items that verify before it */
    char before[80];           /* the ids either side of the first damage ("" none) */
    char after[80];
} snap_scan;

/* A short printable form of an id, for messages. */
static void id_text(const store_id *id, char *out, size_t cap)
{
    if (id->kind == STORE_ID_NUM) {
        snprintf(out, cap, "%llu", (unsigned long long)id->num);
        return;
    }
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < id->len && n + 5 < cap; i++) {
        unsigned char c = (unsigned char)id->str[i];
        out[n++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
    }
    out[n++] = '"';
    out[n] = '\0';
}

/* 1 when an item record that verifies starts at pos; its body length in
 * *len, its parts in it and vec. */
static int record_at(const unsigned char *p, size_t size, size_t pos, int dim, item_view *it,
                     float *vec, size_t *len)
{
    if (size - pos < RECORD_FRAME)
        return 0;
    uint32_t n = emb_get_u32(p + pos);
    if (n < ITEM_MIN_BYTES || n > ITEM_MAX_BYTES || n > size - pos - RECORD_FRAME)
        return 0;
    const unsigned char *body = p + pos + RECORD_FRAME;
    if (emb_crc32c(emb_crc32c(0, p + pos, 4), body, n) != emb_get_u32(p + pos + 4))
        return 0;
    reader r = {body, body + n};
    emb_err e;
    if (get_item(&r, dim, it, vec, &e) != 0 || r.p != r.end)
        return 0;
    *len = n;
    return 1;
}

/* Reads the header, or the trailer when the header does not verify. */
static void scan_frames(snap_scan *sc, const unsigned char *p, size_t size)
{
    memset(sc, 0, sizeof *sc);
    sc->first_bad = UINT64_MAX;
    const unsigned char *h = NULL;
    if (frame_ok(p, size, snapshot_magic)) {
        sc->header_ok = 1;
        h = p;
    } else if (size >= 2 * SNAPSHOT_FRAME &&
               frame_ok(p + size - SNAPSHOT_FRAME, SNAPSHOT_FRAME, trailer_magic)) {
        h = p + size - SNAPSHOT_FRAME;
    }
    if (h != NULL) {
        sc->dim = (int)emb_get_u32(h + 12);
        sc->seq = emb_get_u64(h + 16);
        sc->count = emb_get_u64(h + 24);
    }
}

static void note_bad(snap_scan *sc, size_t from, size_t to)
{
    if (to <= from)
        return;
    if (sc->bad_ranges == 0) {
        sc->first_bad = from;
        sc->items_before = sc->items;
    }
    sc->bad_bytes += to - from;
    sc->bad_ranges++;
}

/* Walks a format 2 snapshot whose dimension is known (scan_frames), trying
 * every offset after damage for a record or the trailer that verifies, so
 * that every intact item is found. fn (may be NULL) gets each item. */
static int scan_items(snap_scan *sc, const unsigned char *p, size_t size, scan_item_fn fn,
                      void *user, emb_err *err)
{
    float *vec = malloc(sizeof(float) * (size_t)sc->dim);
    if (vec == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    size_t pos = size < SNAPSHOT_FRAME ? size : SNAPSHOT_FRAME;
    if (!sc->header_ok)
        note_bad(sc, 0, pos);
    size_t bad_from = SIZE_MAX;  /* start of the damaged range being walked */
    int rc = 0;
    while (pos < size && !sc->trailer_ok) {
        item_view it;
        size_t len;
        int is_record = record_at(p, size, pos, sc->dim, &it, vec, &len);
        int is_trailer = !is_record && frame_ok(p + pos, size - pos, trailer_magic);
        if (!is_record && !is_trailer) {
            if (bad_from == SIZE_MAX)
                bad_from = pos;
            pos++;
            continue;
        }
        if (bad_from != SIZE_MAX) {
            note_bad(sc, bad_from, pos);
            bad_from = SIZE_MAX;
        }
        if (is_trailer) {
            sc->trailer_ok = 1;
            const unsigned char *t = p + pos;
            if (sc->header_ok && (emb_get_u32(t + 12) != (uint32_t)sc->dim ||
                                  emb_get_u64(t + 16) != sc->seq ||
                                  emb_get_u64(t + 24) != sc->count))
                sc->fields_differ = 1;
            pos += SNAPSHOT_FRAME;
            break;
        }
        if (sc->bad_ranges == 1 && sc->after[0] == '\0')
            id_text(&it.id, sc->after, sizeof sc->after);
        if (sc->bad_ranges == 0)
            id_text(&it.id, sc->before, sizeof sc->before);
        if (fn != NULL && fn(user, &it, vec, p + pos + RECORD_FRAME, len, err) != 0) {
            rc = -1;
            break;
        }
        sc->items++;
        pos += RECORD_FRAME + len;
    }
    if (rc == 0) {
        if (bad_from != SIZE_MAX)
            note_bad(sc, bad_from, size);
        else
            note_bad(sc, pos, size);  /* bytes after the trailer */
    }
    if (sc->bad_ranges == 0)
        sc->before[0] = '\0';
    free(vec);
    return rc;
}

static int scan_clean(const snap_scan *sc)
{
    return sc->header_ok && sc->trailer_ok && !sc->fields_differ && sc->bad_bytes == 0 &&
           sc->items == sc->count;
}

/* Names where the damage is and what it affects. */
static void describe_damage(const snap_scan *sc, size_t size, char *out, size_t cap)
{
    char where[96];
    if (sc->bad_ranges == 0 && sc->fields_differ)
        snprintf(where, sizeof where, "at its end: its header and trailer disagree");
    else if (sc->bad_ranges == 0 && !sc->trailer_ok)
        snprintf(where, sizeof where, "at its end: its trailer is missing");
    else if (sc->bad_ranges == 0)
        snprintf(where, sizeof where, "in its item count: the header says %llu, %llu verify",
                 (unsigned long long)sc->count, (unsigned long long)sc->items);
    else if (sc->first_bad < SNAPSHOT_FRAME)
        snprintf(where, sizeof where, "at byte %llu, its header", (unsigned long long)sc->first_bad);
    else if (!sc->trailer_ok && sc->first_bad + SNAPSHOT_FRAME >= size && sc->items == sc->count)
        snprintf(where, sizeof where, "at byte %llu, its trailer", (unsigned long long)sc->first_bad);
    else
        snprintf(where, sizeof where, "at byte %llu, in item record %llu",
                 (unsigned long long)sc->first_bad, (unsigned long long)sc->items_before + 1);
    char ids[200] = "";
    if (sc->before[0] != '\0' || sc->after[0] != '\0')
        snprintf(ids, sizeof ids, " (after id %s, before id %s)",
                 sc->before[0] ? sc->before : "(none)", sc->after[0] ? sc->after : "(none)");
    uint64_t lost = sc->count > sc->items ? sc->count - sc->items : 0;
    snprintf(out, cap, "%s%s: %llu of %llu items verify, %llu unreadable, %llu damaged bytes in "
             "%llu place%s", where, ids, (unsigned long long)sc->items,
             (unsigned long long)sc->count, (unsigned long long)lost,
             (unsigned long long)sc->bad_bytes, (unsigned long long)sc->bad_ranges,
             sc->bad_ranges == 1 ? "" : "s");
}

/* The refusal for a format 2 snapshot that does not verify. */
static int refuse_damaged(const store_files *s, const snap_scan *sc, size_t size, emb_err *err)
{
    if (sc->dim == 0)
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "%s/snapshot is damaged: neither its header nor its trailer "
                           "verifies; restore it from a backup", s->dir);
    char what[400];
    describe_damage(sc, size, what, sizeof what);
    return emb_fail_as(err, EMB_ERR_INVALID,
                       "%s/snapshot is damaged %s; refusing to start rather than lose items: "
                       "`embedd repair --data %s` keeps every item that verifies",
                       s->dir, what, s->dir);
}

/* ---- loading ------------------------------------------------------------------- */

typedef struct load_ctx {
    const store_snapshot_sink *sink;
    const snap_scan *sc;
    const store_files *files;
} load_ctx;

/* Puts items while the file verifies so far (the count was reserved);
 * past damage the scan only goes on to describe it. */
static int load_item(void *user, const item_view *it, const float *vec,
                     const unsigned char *body, size_t len, emb_err *err)
{
    load_ctx *c = user;
    if (c->sc->bad_ranges > 0 || c->sc->items >= c->sc->count)
        return 0;
    store_row row;
    emb_err e;
    int rc = store_row_prepare(&it->id, it->version, it->text, it->text_len, it->payload,
                               it->payload_len, &row, &e);
    if (rc < 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s/snapshot: %s", c->files->dir, e.msg);
    if (rc > 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s/snapshot: item %llu: %s", c->files->dir,
                           (unsigned long long)c->sc->items + 1, e.msg);
    c->sink->put(c->sink->user, &row, vec);
    return 0;
}

static int v2_load(const store_files *s, int dim, const snapshot_map *m,
                   const store_snapshot_sink *sink, uint64_t *seq, uint64_t *count, emb_err *err)
{
    snap_scan sc;
    scan_frames(&sc, m->p, m->size);
    if (sc.dim != 0 && sc.dim != dim)
        return emb_fail(err, "%s/snapshot holds vectors of dimension %d, not %d", s->dir, sc.dim,
                        dim);
    if (!sc.header_ok) {
        if (sc.dim != 0 && scan_items(&sc, m->p, m->size, NULL, NULL, err) != 0)
            return -1;
        return refuse_damaged(s, &sc, m->size, err);
    }
    if (sc.count > (uint64_t)s->max_items)
        return emb_fail(err, "%s/snapshot holds %llu items, over max_items %ld", s->dir,
                        (unsigned long long)sc.count, s->max_items);
    if (sink->reserve(sink->user, (long)sc.count, err) != 0)
        return -1;
    load_ctx c = {.sink = sink, .sc = &sc, .files = s};
    if (scan_items(&sc, m->p, m->size, load_item, &c, err) != 0)
        return -1;
    if (!scan_clean(&sc))
        return refuse_damaged(s, &sc, m->size, err);
    *seq = sc.seq;
    *count = sc.count;
    return 0;
}

int store_snapshot_load(const store_files *s, int dim, const store_snapshot_sink *sink,
                        uint64_t *seq, uint64_t *count, emb_err *err)
{
    *seq = 0;
    *count = 0;
    snapshot_map m;
    int rc = snapshot_map_open(s, &m, err);
    if (rc == 0 && is_v1(m.p, m.size)) {
        uint64_t n = 0;
        rc = v1_check(s, dim, m.p, m.size, &n, err);
        if (rc == 0)
            rc = v1_apply(s, dim, m.p, m.size, n, sink, err);
        if (rc == 0) {
            *seq = emb_get_u64(m.p + 16);
            *count = n;
        }
    } else if (rc == 0) {
        rc = v2_load(s, dim, &m, sink, seq, count, err);
    }
    snapshot_unmap(&m);
    return rc == 1 ? 0 : rc;
}

int store_snapshot_peek(const store_files *s, int *dim, uint64_t *seq, emb_err *err)
{
    *dim = 0;
    *seq = 0;
    snapshot_map m;
    int rc = snapshot_map_open(s, &m, err);
    if (rc == 0 && is_v1(m.p, m.size)) {
        uint64_t count = 0;
        rc = v1_check(s, 0, m.p, m.size, &count, err);
        if (rc == 0) {
            *dim = (int)emb_get_u32(m.p + 12);
            *seq = emb_get_u64(m.p + 16);
        }
    } else if (rc == 0) {
        snap_scan sc;
        scan_frames(&sc, m.p, m.size);
        if (sc.dim != 0)
            rc = scan_items(&sc, m.p, m.size, NULL, NULL, err);
        if (rc == 0 && !scan_clean(&sc))
            rc = refuse_damaged(s, &sc, m.size, err);
        if (rc == 0) {
            *dim = sc.dim;
            *seq = sc.seq;
        }
    }
    snapshot_unmap(&m);
    return rc;
}

/* ---- repair -------------------------------------------------------------------- */

/* The kept records: offset and length of each body in the old file. */
typedef struct kept_list {
    const unsigned char *base;
    size_t *off;
    size_t *len;
    size_t n;
    size_t cap;
    uint64_t unusable;         /* verified but refused as an item */
} kept_list;

static int keep_item(void *user, const item_view *it, const float *vec,
                     const unsigned char *body, size_t len, emb_err *err)
{
    kept_list *k = user;
    store_row row;
    emb_err e;
    int rc = store_row_prepare(&it->id, it->version, it->text, it->text_len, it->payload,
                               it->payload_len, &row, &e);
    if (rc < 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    if (rc > 0) {
        k->unusable++;
        return 0;
    }
    store_row_free(&row);
    if (k->n == k->cap) {
        size_t cap = k->cap > 0 ? 2 * k->cap : 256;
        size_t *off = realloc(k->off, cap * sizeof *off);
        if (off != NULL)
            k->off = off;
        size_t *lens = off != NULL ? realloc(k->len, cap * sizeof *lens) : NULL;
        if (lens == NULL)
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        k->len = lens;
        k->cap = cap;
    }
    k->off[k->n] = (size_t)(body - k->base);
    k->len[k->n] = len;
    k->n++;
    return 0;
}

static void emit_kept(void *user, file_writer *fw)
{
    const kept_list *k = user;
    for (size_t i = 0; i < k->n && fw->err_no == 0; i++)
        fw_record(fw, k->base + k->off[i], k->len[i]);
}

/* Keeps the damaged file as snapshot.damaged-<time>[-k] (a hard link). */
static int keep_damaged(const store_files *s, char *kept_as, size_t cap, emb_err *err)
{
    long t = (long)time(NULL);
    for (int k = 0; k < 100; k++) {
        if (k == 0)
            snprintf(kept_as, cap, "snapshot.damaged-%ld", t);
        else
            snprintf(kept_as, cap, "snapshot.damaged-%ld-%d", t, k);
        if (linkat(s->dir_fd, "snapshot", s->dir_fd, kept_as, 0) == 0)
            return emb_fsync_dir(s->dir, err);
        if (errno != EEXIST)
            return emb_fail_as(err, EMB_ERR_IO, "%s/snapshot: cannot keep it as %s: %s", s->dir,
                               kept_as, strerror(errno));
    }
    return emb_fail_as(err, EMB_ERR_IO, "%s/snapshot: no free name to keep it under", s->dir);
}

static int v2_repair(const store_files *s, const snapshot_map *m,
                     store_snapshot_repair_report *rep, emb_err *err)
{
    snap_scan sc;
    scan_frames(&sc, m->p, m->size);
    if (sc.dim == 0)
        return refuse_damaged(s, &sc, m->size, err);
    kept_list k = {.base = m->p};
    int rc = scan_items(&sc, m->p, m->size, keep_item, &k, err);
    rep->dim = sc.dim;
    rep->seq = sc.seq;
    rep->items_expected = sc.count;
    rep->items_kept = k.n;
    if (rc == 0 && scan_clean(&sc) && k.unusable == 0) {
        snprintf(rep->message, sizeof rep->message,
                 "verifies (%llu items, dimension %d, up to seq %llu)",
                 (unsigned long long)sc.count, sc.dim, (unsigned long long)sc.seq);
    } else if (rc == 0) {
        char what[400];
        describe_damage(&sc, m->size, what, sizeof what);
        rc = keep_damaged(s, rep->kept_as, sizeof rep->kept_as, err);
        snapshot_source src = {.dim = sc.dim, .seq = sc.seq, .count = k.n,
                               .emit = emit_kept, .user = &k};
        if (rc == 0)
            rc = snapshot_write_source(s, &src, err);
        if (rc == 0) {
            rep->rewritten = 1;
            rep->bytes_dropped = sc.bad_bytes;
            uint64_t lost = sc.count > k.n ? sc.count - k.n : 0;
            snprintf(rep->message, sizeof rep->message,
                     "damaged %s; kept %zu items (up to seq %llu), dropped %llu; the damaged "
                     "file is kept as %s", what, k.n, (unsigned long long)sc.seq,
                     (unsigned long long)lost, rep->kept_as);
        }
    }
    free(k.off);
    free(k.len);
    return rc;
}

int store_snapshot_repair(const store_files *s, store_snapshot_repair_report *rep, emb_err *err)
{
    memset(rep, 0, sizeof *rep);
    snapshot_map m;
    int rc = snapshot_map_open(s, &m, err);
    if (rc == 0) {
        rep->found = 1;
        if (is_v1(m.p, m.size)) {
            uint64_t count = 0;
            rc = v1_check(s, 0, m.p, m.size, &count, err);
            rep->dim = (int)emb_get_u32(m.p + 12);
            rep->seq = emb_get_u64(m.p + 16);
            rep->items_expected = rep->items_kept = count;
            if (rc == 0)
                snprintf(rep->message, sizeof rep->message,
                         "verifies (format 1, %llu items, dimension %d, up to seq %llu)",
                         (unsigned long long)count, rep->dim, (unsigned long long)rep->seq);
        } else {
            rc = v2_repair(s, &m, rep, err);
        }
    } else if (rc == 1) {
        snprintf(rep->message, sizeof rep->message, "none");
        rc = 0;
    }
    snapshot_unmap(&m);
    return rc;
}
