/* store_disk.c: the store's on-disk formats (layouts in store.h): WAL
 * record payloads and snapshots (see store_disk.h). */
#include "store_disk.h"
#include "wal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/bytes.h"
#include "base/crc32c.h"
#include "base/fileio.h"

enum { FLAG_TEXT = 1, FLAG_PAYLOAD = 2 };

#define SNAPSHOT_HEADER 40
#define SNAPSHOT_TRAILER 4
/* One encoded item, at most: id, version, flags, lengths, text, payload, vector. */
#define ITEM_MAX_BYTES (300 + STORE_MAX_TEXT + STORE_MAX_PAYLOAD + 4 * STORE_MAX_DIM)

static const unsigned char snapshot_magic[8] = {'E', 'M', 'B', 'D', 'S', 'N', 'A', 'P'};

/* ---- encoding ---------------------------------------------------------------- */

static void put_u8(strbuf *sb, unsigned v)
{
    sb_putc(sb, (char)(unsigned char)v);
}

static void put_u32(strbuf *sb, uint32_t v)
{
    unsigned char b[4];
    emb_put_u32(b, v);
    sb_append(sb, (const char *)b, 4);
}

static void put_u64(strbuf *sb, uint64_t v)
{
    unsigned char b[8];
    emb_put_u64(b, v);
    sb_append(sb, (const char *)b, 8);
}

static void put_floats(strbuf *sb, const float *v, int n)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    sb_append(sb, (const char *)v, sizeof(float) * (size_t)n);
#else
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        put_u32(sb, u);
    }
#endif
}

static void put_id(strbuf *sb, const store_id *id)
{
    put_u8(sb, (unsigned)id->kind);
    if (id->kind == STORE_ID_NUM) {
        put_u64(sb, id->num);
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
    put_u32(sb, (uint32_t)r->version);
    unsigned flags = (r->text != NULL ? FLAG_TEXT : 0) | (r->payload != NULL ? FLAG_PAYLOAD : 0);
    put_u8(sb, flags);
    if (r->text != NULL) {
        put_u32(sb, r->text_len);
        sb_append(sb, r->text, r->text_len);
    }
    if (r->payload != NULL) {
        put_u32(sb, r->payload_len);
        sb_append(sb, r->payload, r->payload_len);
    }
    put_floats(sb, vec, dim);
}

int store_encode_upsert(strbuf *sb, const store_row *rows, const float *vecs, int n, int dim)
{
    put_u8(sb, STORE_OP_UPSERT);
    put_u32(sb, (uint32_t)n);
    for (int i = 0; i < n; i++)
        put_row(sb, &rows[i], vecs + (size_t)i * dim, dim);
    return sb->failed ? -1 : 0;
}

void store_encode_delete(strbuf *sb, const store_id *ids, int n)
{
    put_u8(sb, STORE_OP_DELETE);
    put_u32(sb, (uint32_t)n);
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

/* A buffered writer that keeps a running CRC-32C of what it wrote. */
typedef struct file_writer {
    int fd;
    unsigned char *buf;
    size_t len;
    size_t cap;
    uint32_t crc;
    int err_no;                /* first error, 0 when none */
} file_writer;

static void fw_flush(file_writer *fw)
{
    size_t off = 0;
    while (fw->err_no == 0 && off < fw->len) {
        ssize_t w = write(fw->fd, fw->buf + off, fw->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fw->err_no = w < 0 ? errno : EIO;
        else
            off += (size_t)w;
    }
    fw->len = 0;
}

static void fw_write(file_writer *fw, const void *data, size_t n)
{
    fw->crc = emb_crc32c(fw->crc, data, n);
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

static void snapshot_header(unsigned char *h, int dim, uint64_t seq, uint64_t count)
{
    memset(h, 0, SNAPSHOT_HEADER);
    memcpy(h, snapshot_magic, 8);
    emb_put_u32(h + 8, STORE_SNAPSHOT_VERSION);
    emb_put_u32(h + 12, (uint32_t)dim);
    emb_put_u64(h + 16, seq);
    emb_put_u64(h + 24, count);
    emb_put_u32(h + 36, emb_crc32c(0, h, 36));
}

/* Writes every row to fd: header, items, trailer. Returns 0 or an errno. */
static int snapshot_stream(const store_table_view *t, int fd)
{
    file_writer fw = {.fd = fd, .cap = 1 << 20};
    strbuf item;
    sb_init(&item, ITEM_MAX_BYTES);
    fw.buf = malloc(fw.cap);
    if (fw.buf == NULL)
        return ENOMEM;
    unsigned char h[SNAPSHOT_HEADER];
    snapshot_header(h, t->dim, t->seq, (uint64_t)t->count);
    fw_write(&fw, h, sizeof h);
    for (long r = 0; r < t->count && fw.err_no == 0; r++) {
        item.len = 0;
        put_row(&item, &t->rows[r], t->matrix + (size_t)r * t->dim, t->dim);
        if (item.failed) {
            fw.err_no = ENOMEM;
            break;
        }
        fw_write(&fw, item.buf, item.len);
    }
    unsigned char trailer[SNAPSHOT_TRAILER];
    emb_put_u32(trailer, fw.crc);
    fw_write(&fw, trailer, sizeof trailer);
    fw_flush(&fw);
    sb_free(&item);
    free(fw.buf);
    return fw.err_no;
}

/* Writes DIR/snapshot by replace-by-rename (fileio.h): a crash leaves the
 * old snapshot or the new one. */
int store_snapshot_write(const store_files *s, const store_table_view *t, emb_err *err)
{
    emb_replace r;
    if (emb_replace_begin_at(&r, s->dir_fd, s->dir, "snapshot", err) != 0)
        return -1;
    int e = snapshot_stream(t, r.fd);
    if (e != 0) {
        emb_replace_abort(&r);
        return emb_fail_as(err, e == ENOMEM ? EMB_ERR_NO_MEMORY : EMB_ERR_IO,
                           "%s/snapshot.tmp: %s", s->dir, strerror(e));
    }
    return emb_replace_commit(&r, NULL, err);
}

/* Checks a mapped snapshot's header and checksums; returns its count. */
static int snapshot_check(const store_files *s, int dim, const unsigned char *p, size_t size,
                          uint64_t *count, emb_err *err)
{
    if (size < SNAPSHOT_HEADER + SNAPSHOT_TRAILER)
        return emb_fail(err, "%s/snapshot is damaged: only %zu bytes", s->dir, size);
    if (memcmp(p, snapshot_magic, 8) != 0 || emb_crc32c(0, p, 36) != emb_get_u32(p + 36))
        return emb_fail(err, "%s/snapshot is damaged: bad header", s->dir);
    if (emb_get_u32(p + 8) != STORE_SNAPSHOT_VERSION)
        return emb_fail(err, "%s/snapshot has format version %u; this build reads %u", s->dir,
                        emb_get_u32(p + 8), STORE_SNAPSHOT_VERSION);
    if (emb_get_u32(p + 12) != (uint32_t)dim)
        return emb_fail(err, "%s/snapshot holds vectors of dimension %u, not %d", s->dir,
                        emb_get_u32(p + 12), dim);
    size_t body = size - SNAPSHOT_TRAILER;
    if (emb_crc32c(0, p, body) != emb_get_u32(p + body))
        return emb_fail(err, "%s/snapshot is damaged: checksum mismatch", s->dir);
    *count = emb_get_u64(p + 24);
    if (*count > (uint64_t)s->max_items)
        return emb_fail(err, "%s/snapshot holds %llu items, over max_items %ld", s->dir,
                        (unsigned long long)*count, s->max_items);
    return 0;
}

/* Decodes count items into the sink. */
static int snapshot_apply(const store_files *s, int dim, reader *r, uint64_t count,
                          const store_snapshot_sink *sink, emb_err *err)
{
    float *vec = malloc(sizeof(float) * (size_t)dim);
    if (vec == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    int result = -1;
    if (sink->reserve(sink->user, (long)count, err) != 0)
        goto out;
    for (uint64_t i = 0; i < count; i++) {
        store_row row;
        emb_err e;
        if (item_read(r, dim, &row, vec, &e) != 0) {
            emb_fail(err, "%s/snapshot: item %llu: %s", s->dir, (unsigned long long)i, e.msg);
            goto out;
        }
        sink->put(sink->user, &row, vec);
    }
    if (r->p != r->end) {
        emb_fail(err, "%s/snapshot: bytes after the last item", s->dir);
        goto out;
    }
    result = 0;
out:
    free(vec);
    return result;
}

/* DIR/snapshot, mapped and checked (dim 0: any). 1 when there is none. */
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

static int snapshot_map_checked(const store_files *s, int dim, snapshot_map *m, uint64_t *count,
                                emb_err *err)
{
    m->map = MAP_FAILED;
    m->size = 0;
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
    m->p = m->map == MAP_FAILED ? (const unsigned char *)"" : m->map;
    if (m->map != MAP_FAILED)
        madvise(m->map, m->size, MADV_SEQUENTIAL);
    if (dim == 0 && m->size >= SNAPSHOT_HEADER)
        dim = (int)emb_get_u32(m->p + 12);
    return snapshot_check(s, dim, m->p, m->size, count, err);
}

int store_snapshot_load(const store_files *s, int dim, const store_snapshot_sink *sink,
                        uint64_t *seq, uint64_t *count, emb_err *err)
{
    *seq = 0;
    *count = 0;
    snapshot_map m;
    int rc = snapshot_map_checked(s, dim, &m, count, err);
    if (rc == 0) {
        reader r = {m.p + SNAPSHOT_HEADER, m.p + m.size - SNAPSHOT_TRAILER};
        rc = snapshot_apply(s, dim, &r, *count, sink, err);
        if (rc == 0)
            *seq = emb_get_u64(m.p + 16);
    }
    snapshot_unmap(&m);
    return rc == 1 ? 0 : rc;
}

int store_snapshot_peek(const store_files *s, int *dim, uint64_t *seq, emb_err *err)
{
    *dim = 0;
    *seq = 0;
    snapshot_map m;
    uint64_t count = 0;
    int rc = snapshot_map_checked(s, 0, &m, &count, err);
    if (rc == 0) {
        *dim = (int)emb_get_u32(m.p + 12);
        *seq = emb_get_u64(m.p + 16);
    }
    snapshot_unmap(&m);
    return rc;
}
