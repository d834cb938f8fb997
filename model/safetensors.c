/* safetensors.c: read and write Hugging Face safetensors files.
 *
 * Reading: the file is mmap'd read-only and the fd closed at once (the
 * mapping keeps the file alive). The header is parsed with cJSON and every
 * entry is checked before emb_st_open returns, so callers can trust
 * begin/end/shape of every tensor: known dtype, shape of non-negative dims
 * whose product does not overflow, begin <= end <= data_size,
 * end - begin == numel * dtype size, and no two tensors overlap.
 *
 * Writing: the header lists tensors in the caller's order with contiguous
 * data_offsets, padded with spaces to a multiple of 8 bytes as the reference
 * implementation does. The file goes to path.tmp, is fsync'd, renamed over
 * path, and the directory is fsync'd.
 *
 * All multi-byte values are little-endian; the host must be too. */
#include "safetensors.h"
#include "base/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors.c reads and writes little-endian data with memcpy");

/* The reference implementation refuses headers above 100 MB. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
/* Offsets and dims travel as JSON numbers (doubles): exact up to 2^53. */
#define ST_MAX_JSON_INT 9007199254740992.0
/* Conversion buffer for writing, in elements. */
#define ST_WRITE_CHUNK 16384

static const char *const dtype_names[] = {
    [EMB_DT_F32] = "F32",   [EMB_DT_F16] = "F16", [EMB_DT_BF16] = "BF16",
    [EMB_DT_F64] = "F64",   [EMB_DT_I64] = "I64", [EMB_DT_I32] = "I32",
    [EMB_DT_I16] = "I16",   [EMB_DT_I8] = "I8",   [EMB_DT_U8] = "U8",
    [EMB_DT_BOOL] = "BOOL",
};

static const size_t dtype_sizes[] = {
    [EMB_DT_F32] = 4, [EMB_DT_F16] = 2, [EMB_DT_BF16] = 2, [EMB_DT_F64] = 8,
    [EMB_DT_I64] = 8, [EMB_DT_I32] = 4, [EMB_DT_I16] = 2, [EMB_DT_I8] = 1,
    [EMB_DT_U8] = 1,  [EMB_DT_BOOL] = 1,
};

#define N_DTYPES ((int)(sizeof dtype_names / sizeof dtype_names[0]))

size_t emb_dtype_size(emb_dtype dt)
{
    if ((int)dt < 0 || (int)dt >= N_DTYPES)
        return 0;
    return dtype_sizes[dt];
}

const char *emb_dtype_name(emb_dtype dt)
{
    if ((int)dt < 0 || (int)dt >= N_DTYPES)
        return "unknown";
    return dtype_names[dt];
}

/* 0 and *out set when s names a known dtype, else -1. */
static int dtype_parse(const char *s, emb_dtype *out)
{
    for (int i = 0; i < N_DTYPES; i++) {
        if (strcmp(s, dtype_names[i]) == 0) {
            *out = (emb_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* ---- scalar conversions ------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float emb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;

    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        float mag = (float)mant * 0x1p-24f;
        return f32_from_bits(sign | f32_bits(mag));
    }
    if (exp == 31) {
        /* inf (mant 0) or nan (payload kept) */
        return f32_from_bits(sign | 0x7f800000 | (mant << 13));
    }
    return f32_from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

/* Shifts m right by shift bits (1..31), rounding to nearest, ties to even. */
static uint32_t shift_round_even(uint32_t m, int shift)
{
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1)))
        r++;
    return r;
}

uint16_t emb_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t absx = x & 0x7fffffff;
    uint32_t exp = absx >> 23;
    uint32_t mant = absx & 0x7fffff;

    if (absx > 0x7f800000) {
        /* nan: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00 | (mant >> 13));
    }
    if (absx >= 0x47800000) {
        /* >= 65536 (and inf): beyond the largest finite f16 */
        return (uint16_t)(sign | 0x7c00);
    }
    if (absx < 0x38800000) {
        /* below 2^-14: f16 subnormal or zero, in units of 2^-24 */
        if (absx <= 0x33000000)
            return sign; /* <= 2^-25: rounds to zero (a tie goes to even 0) */
        uint32_t m = mant | 0x800000;
        int shift = 126 - (int)exp; /* 14..24 */
        /* a carry out of the mantissa gives 0x400, the smallest normal */
        return (uint16_t)(sign | shift_round_even(m, shift));
    }
    /* normal: a carry out of the mantissa bumps the exponent, and from the
     * largest finite value it gives exactly 0x7c00 (inf) */
    uint32_t h = ((exp - 127 + 15) << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float emb_bf16_to_f32(uint16_t b)
{
    return f32_from_bits((uint32_t)b << 16);
}

uint16_t emb_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) {
        /* nan: quiet it so truncation cannot turn it into inf */
        return (uint16_t)((x >> 16) | 0x0040);
    }
    /* round to nearest even; overflow carries into inf as it should */
    uint32_t bias = 0x7fff + ((x >> 16) & 1);
    return (uint16_t)((x + bias) >> 16);
}

/* ---- reading ----------------------------------------------------------- */

/* Reads a JSON number that must be an integer in [0, max]. */
static int json_uint(const cJSON *item, double max, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return -1;
    double v = item->valuedouble;
    if (!(v >= 0 && v <= max)) /* also false for nan */
        return -1;
    if (v != floor(v))
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Parses "shape" into t->shape/ndim and returns numel in *numel. */
static int parse_shape(const cJSON *shape, emb_st_tensor *t, uint64_t *numel,
                       const char *path, emb_err *err)
{
    if (!cJSON_IsArray(shape))
        return emb_fail(err, "%s: tensor '%s': \"shape\" is missing or not an array", path,
                        t->name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > EMB_ST_MAX_DIMS)
        return emb_fail(err, "%s: tensor '%s': shape has %d dims, at most %d supported", path,
                        t->name, ndim, EMB_ST_MAX_DIMS);

    uint64_t n = 1;
    int i = 0;
    const cJSON *dim = NULL;
    cJSON_ArrayForEach(dim, shape)
    {
        uint64_t d = 0;
        if (json_uint(dim, ST_MAX_JSON_INT, &d) != 0) {
            char *text = cJSON_PrintUnformatted(dim);
            emb_fail(err, "%s: tensor '%s': shape[%d] = %s is not a non-negative integer",
                     path, t->name, i, text != NULL ? text : "?");
            free(text);
            return -1;
        }
        if (d != 0 && n > (uint64_t)INT64_MAX / d)
            return emb_fail(err, "%s: tensor '%s': shape is too large (element count overflows)",
                            path, t->name);
        n *= d;
        t->shape[i] = (int64_t)d;
        i++;
    }
    t->ndim = ndim;
    *numel = n;
    return 0;
}

/* Parses "data_offsets" and checks them against the data area and numel. */
static int parse_offsets(const cJSON *offs, emb_st_tensor *t, uint64_t numel,
                         size_t data_size, const char *path, emb_err *err)
{
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return emb_fail(err, "%s: tensor '%s': \"data_offsets\" is missing or not [begin, end]",
                        path, t->name);
    uint64_t begin = 0;
    uint64_t end = 0;
    if (json_uint(cJSON_GetArrayItem(offs, 0), ST_MAX_JSON_INT, &begin) != 0 ||
        json_uint(cJSON_GetArrayItem(offs, 1), ST_MAX_JSON_INT, &end) != 0)
        return emb_fail(err, "%s: tensor '%s': data_offsets must be non-negative integers",
                        path, t->name);
    if (begin > end)
        return emb_fail(err, "%s: tensor '%s': data_offsets begin %llu is after end %llu", path,
                        t->name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return emb_fail(err,
                        "%s: tensor '%s': data_offsets end %llu past data area of %zu bytes "
                        "(file truncated?)",
                        path, t->name, (unsigned long long)end, data_size);

    /* end <= data_size, so a larger product cannot match anyway */
    size_t esize = emb_dtype_size(t->dtype);
    uint64_t len = end - begin;
    if (numel > len / esize || numel * esize != len)
        return emb_fail(err,
                        "%s: tensor '%s': data_offsets span %llu bytes but shape and dtype %s "
                        "need %llu elements of %zu bytes",
                        path, t->name, (unsigned long long)len, emb_dtype_name(t->dtype),
                        (unsigned long long)numel, esize);
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    return 0;
}

/* Fills t (name already set) from its header entry. */
static int parse_tensor(const cJSON *entry, emb_st_tensor *t, size_t data_size,
                        const char *path, emb_err *err)
{
    if (!cJSON_IsObject(entry))
        return emb_fail(err, "%s: tensor '%s': header entry is not an object", path, t->name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dtype))
        return emb_fail(err, "%s: tensor '%s': \"dtype\" is missing or not a string", path,
                        t->name);
    if (dtype_parse(dtype->valuestring, &t->dtype) != 0)
        return emb_fail(err, "%s: tensor '%s': unknown dtype \"%s\"", path, t->name,
                        dtype->valuestring);

    uint64_t numel = 0;
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (parse_shape(shape, t, &numel, path, err) != 0)
        return -1;

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    return parse_offsets(offs, t, numel, data_size, path, err);
}

/* "__metadata__" must be an object of string values. */
static int check_metadata(const cJSON *meta, const char *path, emb_err *err)
{
    if (!cJSON_IsObject(meta))
        return emb_fail(err, "%s: \"__metadata__\" is not an object", path);
    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, meta)
    {
        if (!cJSON_IsString(item))
            return emb_fail(err, "%s: \"__metadata__\" value for '%s' is not a string", path,
                            item->string);
    }
    return 0;
}

static int cmp_by_begin(const void *a, const void *b)
{
    const emb_st_tensor *x = *(const emb_st_tensor *const *)a;
    const emb_st_tensor *y = *(const emb_st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_by_name(const void *a, const void *b)
{
    const emb_st_tensor *x = *(const emb_st_tensor *const *)a;
    const emb_st_tensor *y = *(const emb_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* No two tensors share bytes, and no name appears twice. */
static int check_layout(emb_st_file *f, const char *path, emb_err *err)
{
    int result = -1;
    int n = f->n_tensors;
    if (n < 2)
        return 0;

    const emb_st_tensor **order = malloc((size_t)n * sizeof *order);
    if (order == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < n; i++)
        order[i] = &f->tensors[i];

    qsort(order, (size_t)n, sizeof *order, cmp_by_begin);
    for (int i = 1; i < n; i++) {
        const emb_st_tensor *prev = order[i - 1];
        const emb_st_tensor *cur = order[i];
        if (cur->begin < prev->end) {
            emb_fail(err, "%s: tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap", path,
                     prev->name, prev->begin, prev->end, cur->name, cur->begin, cur->end);
            goto out;
        }
    }

    qsort(order, (size_t)n, sizeof *order, cmp_by_name);
    for (int i = 1; i < n; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            emb_fail(err, "%s: tensor '%s' appears twice in the header", path, order[i]->name);
            goto out;
        }
    }
    result = 0;
out:
    free(order);
    return result;
}

/* Builds f->tensors and f->names from the parsed header object. */
static int load_tensors(emb_st_file *f, const cJSON *header, const char *path, emb_err *err)
{
    int n = 0;
    size_t names_len = 0;
    const cJSON *entry = NULL;
    cJSON_ArrayForEach(entry, header)
    {
        if (strcmp(entry->string, "__metadata__") == 0)
            continue;
        n++;
        names_len += strlen(entry->string) + 1;
    }

    f->tensors = calloc(n > 0 ? (size_t)n : 1, sizeof *f->tensors);
    f->names = malloc(names_len > 0 ? names_len : 1);
    if (f->tensors == NULL || f->names == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory for %d tensors", path, n);

    char *name = f->names;
    int i = 0;
    cJSON_ArrayForEach(entry, header)
    {
        if (strcmp(entry->string, "__metadata__") == 0) {
            if (check_metadata(entry, path, err) != 0)
                return -1;
            continue;
        }
        size_t len = strlen(entry->string);
        memcpy(name, entry->string, len + 1);
        emb_st_tensor *t = &f->tensors[i];
        t->name = name;
        name += len + 1;
        if (parse_tensor(entry, t, f->data_size, path, err) != 0)
            return -1;
        i++;
        f->n_tensors = i;
    }
    return check_layout(f, path, err);
}

/* Parses and validates the header bytes at map[8 .. 8+hlen). */
static int parse_header(emb_st_file *f, size_t hlen, const char *path, emb_err *err)
{
    const char *text = (const char *)f->map + 8;
    int result = -1;
    cJSON *header = NULL;

    if (memchr(text, '\0', hlen) != NULL) {
        emb_fail(err, "%s: header contains a NUL byte", path);
        goto out;
    }
    const char *end = NULL;
    header = cJSON_ParseWithLengthOpts(text, hlen, &end, 0);
    if (header == NULL) {
        size_t at = end != NULL && end >= text ? (size_t)(end - text) : 0;
        emb_fail(err, "%s: header is not valid JSON (error near byte %zu of %zu)", path, at, hlen);
        goto out;
    }
    /* the reference writer pads the header with spaces */
    for (const char *p = end; p < text + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            emb_fail(err, "%s: header has trailing bytes after the JSON object", path);
            goto out;
        }
    }
    if (!cJSON_IsObject(header)) {
        emb_fail(err, "%s: header is not a JSON object", path);
        goto out;
    }
    result = load_tensors(f, header, path, err);
out:
    cJSON_Delete(header);
    return result;
}

int emb_st_open(emb_st_file *f, const char *path, emb_err *err)
{
    int result = -1;
    memset(f, 0, sizeof *f);

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        emb_fail(err, "%s: %s", path, errno == ENOENT ? "not found" : strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        emb_fail(err, "%s: stat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        emb_fail(err, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size < 8) {
        emb_fail(err, "%s: file is %lld bytes, too short for the 8-byte header length", path,
                 (long long)st.st_size);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        emb_fail(err, "%s: mmap: %s", path, strerror(errno));
        goto out;
    }
    f->map = map;
    f->map_size = size;

    uint64_t hlen = 0;
    memcpy(&hlen, f->map, sizeof hlen);
    if (hlen > ST_MAX_HEADER) {
        emb_fail(err, "%s: header length %llu exceeds the %llu byte limit (not a safetensors file?)",
                 path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
        goto out;
    }
    if (hlen > size - 8) {
        emb_fail(err, "%s: header length %llu is larger than the rest of the file (%zu bytes)",
                 path, (unsigned long long)hlen, size - 8);
        goto out;
    }
    f->data = (const unsigned char *)f->map + 8 + hlen;
    f->data_size = size - 8 - (size_t)hlen;

    result = parse_header(f, (size_t)hlen, path, err);
out:
    if (fd >= 0)
        close(fd);
    if (result != 0)
        emb_st_close(f);
    return result;
}

void emb_st_close(emb_st_file *f)
{
    if (f == NULL)
        return;
    if (f->map != NULL)
        munmap(f->map, f->map_size);
    free(f->tensors);
    free(f->names);
    memset(f, 0, sizeof *f);
}

const emb_st_tensor *emb_st_find(const emb_st_file *f, const char *name)
{
    for (int i = 0; i < f->n_tensors; i++) {
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    }
    return NULL;
}

int64_t emb_st_numel(const emb_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int emb_st_read_f32(const emb_st_file *f, const emb_st_tensor *t, float *dst, emb_err *err)
{
    size_t esize = emb_dtype_size(t->dtype);
    if (t->dtype != EMB_DT_F32 && t->dtype != EMB_DT_F16 && t->dtype != EMB_DT_BF16)
        return emb_fail(err, "tensor '%s': dtype %s cannot be read as f32 (F32, F16, BF16 only)",
                        t->name, emb_dtype_name(t->dtype));
    if (t->begin > t->end || t->end > f->data_size)
        return emb_fail(err, "tensor '%s': bytes [%zu, %zu) outside the data area of %zu bytes",
                        t->name, t->begin, t->end, f->data_size);

    const unsigned char *src = f->data + t->begin;
    size_t n = (t->end - t->begin) / esize;
    if (t->dtype == EMB_DT_F32) {
        if (n > 0)
            memcpy(dst, src, n * sizeof(float));
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        if (t->dtype == EMB_DT_F16)
            dst[i] = emb_f16_to_f32(h);
        else
            dst[i] = emb_bf16_to_f32(h);
    }
    return 0;
}

/* ---- writing ----------------------------------------------------------- */

/* Checks one entry and returns its byte length in *nbytes. */
static int check_entry(const emb_st_entry *e, int idx, size_t *nbytes, const char *path,
                       emb_err *err)
{
    if (e->name == NULL || e->name[0] == '\0')
        return emb_fail(err, "%s: tensor #%d has no name", path, idx);
    if (strcmp(e->name, "__metadata__") == 0)
        return emb_fail(err, "%s: tensor #%d: the name \"__metadata__\" is reserved", path, idx);
    if (e->dtype != EMB_DT_F32 && e->dtype != EMB_DT_F16 && e->dtype != EMB_DT_BF16)
        return emb_fail(err, "%s: tensor '%s': cannot write dtype %s (F32, F16, BF16 only)", path,
                        e->name, emb_dtype_name(e->dtype));
    if (e->ndim < 0 || e->ndim > EMB_ST_MAX_DIMS)
        return emb_fail(err, "%s: tensor '%s': ndim %d outside [0, %d]", path, e->name, e->ndim,
                        EMB_ST_MAX_DIMS);

    uint64_t numel = 1;
    for (int i = 0; i < e->ndim; i++) {
        int64_t d = e->shape[i];
        if (d < 0)
            return emb_fail(err, "%s: tensor '%s': shape[%d] = %lld is negative", path, e->name,
                            i, (long long)d);
        if (d != 0 && numel > (uint64_t)(ST_MAX_JSON_INT / 8) / (uint64_t)d)
            return emb_fail(err, "%s: tensor '%s': shape is too large", path, e->name);
        numel *= (uint64_t)d;
    }
    if (numel > 0 && e->data == NULL)
        return emb_fail(err, "%s: tensor '%s': data is NULL", path, e->name);
    *nbytes = (size_t)(numel * emb_dtype_size(e->dtype));
    return 0;
}

/* Builds the padded header text; *out is malloc'd, length in *len. */
static int build_header(const emb_st_entry *entries, int n, const char *metadata_json,
                        const char *path, char **out, size_t *len, emb_err *err)
{
    int result = -1;
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = NULL;
    char *text = NULL;
    if (root == NULL)
        goto oom;

    if (metadata_json != NULL) {
        meta = cJSON_Parse(metadata_json);
        if (meta == NULL) {
            emb_fail(err, "%s: metadata is not valid JSON", path);
            goto out;
        }
        if (check_metadata(meta, path, err) != 0)
            goto out;
        if (!cJSON_AddItemToObject(root, "__metadata__", meta))
            goto oom;
        meta = NULL; /* owned by root now */
    }

    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        const emb_st_entry *e = &entries[i];
        size_t nbytes = 0;
        if (check_entry(e, i, &nbytes, path, err) != 0)
            goto out;
        if (cJSON_GetObjectItemCaseSensitive(root, e->name) != NULL) {
            emb_fail(err, "%s: tensor '%s' is listed twice", path, e->name);
            goto out;
        }
        if (nbytes > (size_t)ST_MAX_JSON_INT - offset) {
            emb_fail(err, "%s: tensor '%s': total data size too large", path, e->name);
            goto out;
        }
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        if (t == NULL)
            goto oom;
        if (cJSON_AddStringToObject(t, "dtype", emb_dtype_name(e->dtype)) == NULL)
            goto oom;
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        if (shape == NULL)
            goto oom;
        for (int d = 0; d < e->ndim; d++) {
            cJSON *dim = cJSON_CreateNumber((double)e->shape[d]);
            if (dim == NULL)
                goto oom;
            if (!cJSON_AddItemToArray(shape, dim)) {
                cJSON_Delete(dim);
                goto oom;
            }
        }
        double span[2] = {(double)offset, (double)(offset + nbytes)};
        cJSON *offs = cJSON_CreateDoubleArray(span, 2);
        if (offs == NULL)
            goto oom;
        if (!cJSON_AddItemToObject(t, "data_offsets", offs)) {
            cJSON_Delete(offs);
            goto oom;
        }
        offset += nbytes;
    }

    text = cJSON_PrintUnformatted(root);
    if (text == NULL)
        goto oom;
    size_t n_text = strlen(text);
    size_t padded = (n_text + 7) / 8 * 8;
    char *buf = malloc(padded);
    if (buf == NULL)
        goto oom;
    memcpy(buf, text, n_text);
    memset(buf + n_text, ' ', padded - n_text);
    *out = buf;
    *len = padded;
    result = 0;
    goto out;
oom:
    emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory building the header", path);
out:
    free(text);
    cJSON_Delete(meta);
    cJSON_Delete(root);
    return result;
}

/* Writes one tensor's data, converting f32 to its dtype in chunks. */
static int write_tensor_data(int fd, const emb_st_entry *e, size_t nbytes)
{
    size_t n = nbytes / emb_dtype_size(e->dtype);
    if (e->dtype == EMB_DT_F32)
        return emb_write_all(fd, e->data, nbytes);

    uint16_t buf[ST_WRITE_CHUNK];
    size_t done = 0;
    while (done < n) {
        size_t k = n - done;
        if (k > ST_WRITE_CHUNK)
            k = ST_WRITE_CHUNK;
        for (size_t i = 0; i < k; i++) {
            float v = e->data[done + i];
            if (e->dtype == EMB_DT_F16)
                buf[i] = emb_f32_to_f16(v);
            else
                buf[i] = emb_f32_to_bf16(v);
        }
        if (emb_write_all(fd, buf, k * sizeof buf[0]) != 0)
            return -1;
        done += k;
    }
    return 0;
}

int emb_st_write(const char *path, const emb_st_entry *entries, int n_entries,
                 const char *metadata_json, emb_err *err)
{
    int result = -1;
    int fd = -1;
    char *header = NULL;
    char *tmp = NULL;
    size_t hlen = 0;

    if (n_entries < 0 || (n_entries > 0 && entries == NULL))
        return emb_fail(err, "%s: invalid tensor list", path);
    if (build_header(entries, n_entries, metadata_json, path, &header, &hlen, err) != 0)
        return -1;

    size_t plen = strlen(path);
    tmp = malloc(plen + sizeof ".tmp");
    if (tmp == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory", path);
        goto out;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", sizeof ".tmp");

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        emb_fail(err, "%s: create: %s", tmp, strerror(errno));
        goto out;
    }
    uint64_t hlen64 = hlen;
    if (emb_write_all(fd, &hlen64, sizeof hlen64) != 0 || emb_write_all(fd, header, hlen) != 0) {
        emb_fail(err, "%s: write: %s", tmp, strerror(errno));
        goto out;
    }
    for (int i = 0; i < n_entries; i++) {
        const emb_st_entry *e = &entries[i];
        size_t nbytes = 0;
        check_entry(e, i, &nbytes, path, NULL); /* already checked by build_header */
        if (write_tensor_data(fd, e, nbytes) != 0) {
            emb_fail(err, "%s: write of tensor '%s': %s", tmp, e->name, strerror(errno));
            goto out;
        }
    }
    {
        int commit = emb_commit_file(fd, tmp, path, err);
        fd = -1;
        if (commit != 0)
            goto out;
    }
    result = 0;
out:
    if (fd >= 0)
        close(fd);
    if (result != 0 && tmp != NULL)
        unlink(tmp);
    free(tmp);
    free(header);
    return result;
}
