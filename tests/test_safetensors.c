/* test_safetensors.c: write/read round trip, f16/bf16 conversion tables,
 * hand-made broken files, and a mutation loop that must never crash. */
#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <float.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "run_suite.h"
#include "safetensors.h"

/* ---- helpers ----------------------------------------------------------- */

static void tmpdir_make(char *dir, size_t size)
{
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(dir, size, "%s/test_safetensors.XXXXXX", base);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s failed", dir);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void tmpdir_remove(const char *dir)
{
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void file_write(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    if (len > 0)
        ck_assert_uint_eq(fwrite(buf, 1, len, fp), len);
    ck_assert_int_eq(fclose(fp), 0);
}

static unsigned char *file_slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

/* Writes 8-byte length + header + data_len bytes of 0x11 (hlen_override
 * replaces the true header length when non-zero). */
static void st_make(const char *path, const char *header, uint64_t hlen_override,
                    size_t data_len)
{
    size_t hlen = strlen(header);
    uint64_t stored = hlen_override != 0 ? hlen_override : hlen;
    size_t total = 8 + hlen + data_len;
    unsigned char *buf = malloc(total);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, &stored, 8);
    memcpy(buf + 8, header, hlen);
    memset(buf + 8 + hlen, 0x11, data_len);
    file_write(path, buf, total);
    free(buf);
}

static int file_is_zeroed(const emb_st_file *f)
{
    return f->map == NULL && f->tensors == NULL && f->names == NULL && f->n_tensors == 0 &&
           f->map_size == 0 && f->data == NULL && f->data_size == 0;
}

/* ---- round trip --------------------------------------------------------- */

static float a_data[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -1e20f};
static float b_data[4] = {0.1f, -65504.0f, 6e-8f, 1.0f / 3.0f};
static float c_data[8] = {1.0f, 3.14159265f, -0.007f, 1e30f, -1e-30f, 255.5f, 2.0f, -0.0f};
static float s_data[1] = {42.0f};
static float t_data[3] = {7.0f, 8.0f, 9.0f};

static void fill_entries(emb_st_entry e[6])
{
    memset(e, 0, 6 * sizeof e[0]);
    e[0] = (emb_st_entry){"a.f32", EMB_DT_F32, 2, {2, 3}, a_data};
    e[1] = (emb_st_entry){"b.f16", EMB_DT_F16, 1, {4}, b_data};
    e[2] = (emb_st_entry){"c.bf16", EMB_DT_BF16, 3, {2, 2, 2}, c_data};
    e[3] = (emb_st_entry){"scalar", EMB_DT_F32, 0, {0}, s_data};
    e[4] = (emb_st_entry){"empty", EMB_DT_F16, 2, {0, 5}, NULL};
    e[5] = (emb_st_entry){"z.tail", EMB_DT_F32, 1, {3}, t_data};
}

START_TEST(test_roundtrip)
{
    char dir[256];
    char path[512];
    emb_err err = {0};
    emb_st_entry e[6];
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fill_entries(e);

    int rc = emb_st_write(path, e, 6, "{\"format\": \"pt\", \"note\": \"x\"}", &err);
    ck_assert_msg(rc == 0, "write failed: %s", err.msg);

    /* no temporary left behind; header padded to 8 and in the given order */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ck_assert_int_ne(access(tmp, F_OK), 0);
    size_t len = 0;
    unsigned char *raw = file_slurp(path, &len);
    uint64_t hlen = 0;
    memcpy(&hlen, raw, 8);
    ck_assert_uint_eq(hlen % 8, 0);
    cJSON *hdr = cJSON_ParseWithLength((const char *)raw + 8, (size_t)hlen);
    ck_assert_ptr_nonnull(hdr);
    const char *want_order[] = {"__metadata__", "a.f32", "b.f16", "c.bf16", "scalar", "empty",
                                "z.tail"};
    int k = 0;
    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, hdr)
    {
        ck_assert_int_lt(k, 7);
        ck_assert_str_eq(item->string, want_order[k]);
        k++;
    }
    ck_assert_int_eq(k, 7);
    cJSON_Delete(hdr);
    free(raw);

    emb_st_file f;
    rc = emb_st_open(&f, path, &err);
    ck_assert_msg(rc == 0, "open failed: %s", err.msg);
    ck_assert_int_eq(f.n_tensors, 6);
    ck_assert_uint_eq(f.map_size, len);

    size_t expect_begin = 0;
    for (int i = 0; i < 6; i++) {
        const emb_st_tensor *t = emb_st_find(&f, e[i].name);
        ck_assert_msg(t != NULL, "tensor %s missing", e[i].name);
        ck_assert_str_eq(t->name, e[i].name);
        ck_assert_int_eq(t->dtype, e[i].dtype);
        ck_assert_int_eq(t->ndim, e[i].ndim);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            ck_assert_int_eq(t->shape[d], e[i].shape[d]);
            numel *= e[i].shape[d];
        }
        ck_assert_int_eq(emb_st_numel(t), numel);
        ck_assert_uint_eq(t->begin, expect_begin);
        ck_assert_uint_eq(t->end - t->begin, (size_t)numel * emb_dtype_size(t->dtype));
        expect_begin = t->end;

        float out[8];
        rc = emb_st_read_f32(&f, t, out, &err);
        ck_assert_msg(rc == 0, "read %s: %s", t->name, err.msg);
        for (int j = 0; j < numel; j++) {
            float want = e[i].data[j];
            if (t->dtype == EMB_DT_F32)
                ck_assert_msg(memcmp(&out[j], &want, 4) == 0, "%s[%d]", t->name, j);
            else if (t->dtype == EMB_DT_F16)
                ck_assert_float_eq(out[j], emb_f16_to_f32(emb_f32_to_f16(want)));
            else
                ck_assert_float_eq(out[j], emb_bf16_to_f32(emb_f32_to_bf16(want)));
        }
    }
    ck_assert_uint_eq(f.data_size, expect_begin);

    /* the quantised values are close to the originals */
    float b_out[4];
    ck_assert_int_eq(emb_st_read_f32(&f, emb_st_find(&f, "b.f16"), b_out, &err), 0);
    ck_assert_float_eq_tol(b_out[0], 0.1f, 0.1f * 0x1p-11f);
    ck_assert_float_eq(b_out[1], -65504.0f);
    ck_assert_float_eq_tol(b_out[2], 6e-8f, 0x1p-25f); /* subnormal in f16 */
    ck_assert_float_eq_tol(b_out[3], 1.0f / 3.0f, 0x1p-12f);
    float c_out[8];
    ck_assert_int_eq(emb_st_read_f32(&f, emb_st_find(&f, "c.bf16"), c_out, &err), 0);
    for (int j = 0; j < 8; j++)
        ck_assert_float_eq_tol(c_out[j], c_data[j], fabsf(c_data[j]) * 0x1p-8f + FLT_TRUE_MIN);
    ck_assert(signbit(c_out[7]));

    ck_assert_ptr_null(emb_st_find(&f, "nope"));
    ck_assert_ptr_null(emb_st_find(&f, "__metadata__"));
    emb_st_close(&f);
    ck_assert(file_is_zeroed(&f));
    emb_st_close(&f); /* twice is fine */

    /* write again over the same path: replaced atomically */
    rc = emb_st_write(path, e, 1, NULL, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_int_eq(emb_st_open(&f, path, &err), 0);
    ck_assert_int_eq(f.n_tensors, 1);
    emb_st_close(&f);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_empty_file_list)
{
    char dir[256];
    char path[512];
    emb_err err = {0};
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/none.safetensors", dir);
    ck_assert_int_eq(emb_st_write(path, NULL, 0, NULL, &err), 0);
    emb_st_file f;
    ck_assert_msg(emb_st_open(&f, path, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n_tensors, 0);
    ck_assert_uint_eq(f.data_size, 0);
    emb_st_close(&f);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_close_zeroed)
{
    emb_st_file f;
    memset(&f, 0, sizeof f);
    emb_st_close(&f);
    emb_st_close(NULL);
    ck_assert(file_is_zeroed(&f));
}
END_TEST

START_TEST(test_dtype_names)
{
    const char *names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"};
    const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
    for (int i = 0; i < 10; i++) {
        ck_assert_str_eq(emb_dtype_name((emb_dtype)i), names[i]);
        ck_assert_uint_eq(emb_dtype_size((emb_dtype)i), sizes[i]);
    }
    ck_assert_uint_eq(emb_dtype_size((emb_dtype)99), 0);
    ck_assert_uint_eq(emb_dtype_size((emb_dtype)-1), 0);
    ck_assert_str_eq(emb_dtype_name((emb_dtype)99), "unknown");
}
END_TEST

/* ---- conversions ------------------------------------------------------- */

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

typedef struct conv_case {
    uint32_t f32; /* input bits */
    uint16_t want;
    const char *what;
} conv_case;

static const conv_case f16_cases[] = {
    {0x00000000, 0x0000, "+0"},
    {0x80000000, 0x8000, "-0"},
    {0x3f800000, 0x3c00, "1"},
    {0xc0000000, 0xc000, "-2"},
    {0x3dcccccd, 0x2e66, "0.1"},
    {0x3eaaaaab, 0x3555, "1/3"},
    {0x477fe000, 0x7bff, "65504, largest finite"},
    {0x477fefff, 0x7bff, "just below 65520 rounds down"},
    {0x477ff000, 0x7c00, "65520 ties to even = inf"},
    {0x49742400, 0x7c00, "1e6 overflows"},
    {0x7f7fffff, 0x7c00, "FLT_MAX overflows"},
    {0x7f800000, 0x7c00, "+inf"},
    {0xff800000, 0xfc00, "-inf"},
    {0x3f801000, 0x3c00, "1 + 2^-11: tie, to even (down)"},
    {0x3f803000, 0x3c02, "1 + 3*2^-11: tie, to even (up)"},
    {0x3f801001, 0x3c01, "1 + 2^-11 + tiny: up"},
    {0x3f802000, 0x3c01, "1 + 2^-10 exact"},
    {0x38800000, 0x0400, "2^-14, smallest normal"},
    {0x387fc000, 0x03ff, "1023 * 2^-24, largest subnormal"},
    {0x387fe000, 0x0400, "1023.5 * 2^-24: tie, to even (up to normal)"},
    {0x33800000, 0x0001, "2^-24, smallest subnormal"},
    {0x33000000, 0x0000, "2^-25: tie, to even (zero)"},
    {0x33000001, 0x0001, "just above 2^-25: up"},
    {0xb3000001, 0x8001, "negative just above 2^-25"},
    {0x33c00000, 0x0002, "3 * 2^-25 = 1.5 units: tie, to even (2)"},
    {0x34200000, 0x0002, "5 * 2^-25 = 2.5 units: tie, to even (2)"},
    {0x34a00000, 0x0005, "5 * 2^-24, exact subnormal"},
    {0x00000001, 0x0000, "f32 subnormal -> 0"},
    {0x80000001, 0x8000, "negative f32 subnormal -> -0"},
};

static const conv_case bf16_cases[] = {
    {0x00000000, 0x0000, "+0"},
    {0x80000000, 0x8000, "-0"},
    {0x3f800000, 0x3f80, "1"},
    {0x3f808000, 0x3f80, "tie, to even (down)"},
    {0x3f818000, 0x3f82, "tie, to even (up)"},
    {0x3f808001, 0x3f81, "above tie: up"},
    {0x3f807fff, 0x3f80, "below tie: down"},
    {0x7f7fffff, 0x7f80, "FLT_MAX rounds to inf"},
    {0x7f7f7fff, 0x7f7f, "largest that stays finite"},
    {0x7f800000, 0x7f80, "+inf"},
    {0xff800000, 0xff80, "-inf"},
    {0x00000001, 0x0000, "smallest subnormal -> 0"},
    {0x00008000, 0x0000, "subnormal tie, to even (0)"},
    {0x00018000, 0x0002, "subnormal tie, to even (2)"},
    {0x007fffff, 0x0080, "largest subnormal rounds up to smallest normal"},
    {0xc0490fdb, 0xc049, "-pi"},
};

START_TEST(test_f16_table)
{
    for (size_t i = 0; i < sizeof f16_cases / sizeof f16_cases[0]; i++) {
        const conv_case *c = &f16_cases[i];
        uint16_t got = emb_f32_to_f16(from_bits(c->f32));
        ck_assert_msg(got == c->want, "f32_to_f16(%s): got 0x%04x want 0x%04x", c->what, got,
                      c->want);
    }
    /* nan stays nan, sign kept */
    uint16_t n = emb_f32_to_f16(NAN);
    ck_assert((n & 0x7c00) == 0x7c00 && (n & 0x03ff) != 0);
    n = emb_f32_to_f16(from_bits(0x7f800001)); /* signalling nan, low payload */
    ck_assert((n & 0x7c00) == 0x7c00 && (n & 0x03ff) != 0);
    n = emb_f32_to_f16(from_bits(0xffc00000));
    ck_assert((n & 0xfc00) == 0xfc00 && (n & 0x03ff) != 0);
}
END_TEST

START_TEST(test_f16_to_f32)
{
    ck_assert_float_eq(emb_f16_to_f32(0x0001), 0x1p-24f);
    ck_assert_float_eq(emb_f16_to_f32(0x8001), -0x1p-24f);
    ck_assert_float_eq(emb_f16_to_f32(0x03ff), 1023 * 0x1p-24f);
    ck_assert_float_eq(emb_f16_to_f32(0x0200), 0x1p-15f);
    ck_assert_float_eq(emb_f16_to_f32(0x0400), 0x1p-14f);
    ck_assert_float_eq(emb_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(emb_f16_to_f32(0xc000), -2.0f);
    ck_assert_float_eq(emb_f16_to_f32(0x7bff), 65504.0f);
    ck_assert_float_eq(emb_f16_to_f32(0x3555), 0.333251953125f);
    ck_assert(isinf(emb_f16_to_f32(0x7c00)) && emb_f16_to_f32(0x7c00) > 0);
    ck_assert(isinf(emb_f16_to_f32(0xfc00)) && emb_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(emb_f16_to_f32(0x7e00)));
    ck_assert(isnan(emb_f16_to_f32(0x7c01)));
    ck_assert(isnan(emb_f16_to_f32(0xfe00)));
    float z = emb_f16_to_f32(0x8000);
    ck_assert(z == 0.0f && signbit(z));

    /* every non-nan f16 survives f16 -> f32 -> f16 unchanged */
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float f = emb_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0) {
            ck_assert_msg(isnan(f), "0x%04x should be nan", h);
            ck_assert(isnan(emb_f16_to_f32(emb_f32_to_f16(f))));
            continue;
        }
        if (emb_f32_to_f16(f) != h)
            ck_abort_msg("0x%04x round trip gave 0x%04x", h, emb_f32_to_f16(f));
    }
}
END_TEST

#if defined(__FLT16_MAX__)
/* Compare with the compiler's own IEEE conversion on many floats. */
START_TEST(test_f16_vs_compiler)
{
    uint32_t x = 12345;
    for (int i = 0; i < 1000000; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        /* bias toward the f16 range: exponents 100..150 */
        uint32_t bits = x;
        if (i % 2 == 0)
            bits = (x & 0x807fffff) | ((100 + (x >> 8) % 51) << 23);
        float f = from_bits(bits);
        if (isnan(f))
            continue;
        volatile _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, (const void *)&h, 2);
        uint16_t got = emb_f32_to_f16(f);
        if (got != want) /* ck_assert on every pass is slow under ASan */
            ck_abort_msg("f32 0x%08x: got 0x%04x, compiler 0x%04x", bits, got, want);
    }
}
END_TEST
#endif

START_TEST(test_bf16_table)
{
    for (size_t i = 0; i < sizeof bf16_cases / sizeof bf16_cases[0]; i++) {
        const conv_case *c = &bf16_cases[i];
        uint16_t got = emb_f32_to_bf16(from_bits(c->f32));
        ck_assert_msg(got == c->want, "f32_to_bf16(%s): got 0x%04x want 0x%04x", c->what, got,
                      c->want);
    }
    /* nan stays nan (a truncated signalling nan could have become inf) */
    uint16_t n = emb_f32_to_bf16(from_bits(0x7f800001));
    ck_assert((n & 0x7f80) == 0x7f80 && (n & 0x007f) != 0);
    n = emb_f32_to_bf16(from_bits(0xff800001));
    ck_assert((n & 0xff80) == 0xff80 && (n & 0x007f) != 0);
    n = emb_f32_to_bf16(NAN);
    ck_assert((n & 0x7f80) == 0x7f80 && (n & 0x007f) != 0);

    ck_assert_float_eq(emb_bf16_to_f32(0x3f80), 1.0f);
    ck_assert_float_eq(emb_bf16_to_f32(0x0001), from_bits(0x00010000));
    ck_assert(isinf(emb_bf16_to_f32(0x7f80)));
    ck_assert(isnan(emb_bf16_to_f32(0x7fc0)));
    for (uint32_t b = 0; b <= 0xffff; b++) {
        float f = emb_bf16_to_f32((uint16_t)b);
        if (to_bits(f) != b << 16)
            ck_abort_msg("bf16 0x%04x widened to 0x%08x", b, to_bits(f));
        if (isnan(f))
            continue;
        if (emb_f32_to_bf16(f) != b)
            ck_abort_msg("bf16 0x%04x round trip gave 0x%04x", b, emb_f32_to_bf16(f));
    }
}
END_TEST

/* ---- broken files ------------------------------------------------------ */

typedef struct bad_case {
    const char *what;
    const char *header;
    uint64_t hlen;   /* stored header length, 0: the true one */
    size_t data_len;
    const char *want; /* substring of the error message */
} bad_case;

#define T_A "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static const bad_case bad_cases[] = {
    {"header length larger than file", "{}", 1000, 0, "larger than the rest of the file"},
    {"header length absurd", "{}", (uint64_t)1 << 40, 0, "exceeds"},
    {"header length all ones", "{}", UINT64_MAX, 0, "exceeds"},
    {"zero-length header", "", 0, 0, "not valid JSON"},
    {"invalid JSON", "{\"a\": {\"dtype\": ", 0, 0, "not valid JSON"},
    {"non-object header", "[1, 2, 3]", 0, 0, "not a JSON object"},
    {"string header", "\"hello\"", 0, 0, "not a JSON object"},
    {"trailing garbage", "{}  x", 0, 0, "trailing"},
    {"NUL in header", "{}\0   ", 0, 0, "header contains a NUL byte"},
    {"entry not an object", "{\"a\": 5}", 0, 0, "'a': header entry is not an object"},
    {"missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, "'a': \"dtype\""},
    {"dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8,
     "\"dtype\""},
    {"unknown dtype Q4", "{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8,
     "'w': unknown dtype \"Q4\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 0, 8, "\"shape\""},
    {"negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8,
     "shape[0] = -2 is not a non-negative integer"},
    {"fractional shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 0,
     8, "shape[0] = 2.5"},
    {"string in shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 0,
     8, "shape[0]"},
    {"too many dims",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 0, 8,
     "9 dims"},
    {"shape overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
     "\"data_offsets\":[0,8]}}",
     0, 8, "overflows"},
    {"huge dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 0, 8,
     "shape[0]"},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 8, "\"data_offsets\""},
    {"offsets of length 3", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}",
     0, 8, "data_offsets"},
    {"negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 0, 8,
     "non-negative integers"},
    {"fractional offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", 0,
     9, "non-negative integers"},
    {"begin after end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 0, 8,
     "begin 8 is after end 0"},
    {"end past data", "{" T_A "}", 0, 7, "'a': data_offsets end 8 past data area of 7 bytes"},
    {"dtype/shape length mismatch",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8,
     "span 8 bytes but shape and dtype F32 need 3 elements"},
    {"F16 length mismatch", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,4]}}",
     0, 8, "need 4 elements of 2 bytes"},
    {"overlapping offsets",
     "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, 12,
     "overlap"},
    {"same offsets twice",
     "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}," T_A "}", 0, 8, "overlap"},
    {"duplicate names", "{" T_A ",\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     0, 12, "'a' appears twice"},
    {"metadata not an object", "{\"__metadata__\": [1]," T_A "}", 0, 8, "__metadata__"},
    {"metadata value not a string", "{\"__metadata__\": {\"format\": 1}}", 0, 0,
     "\"__metadata__\" value for 'format' is not a string"},
};

START_TEST(test_bad_file)
{
    const bad_case *c = &bad_cases[_i];
    char dir[256];
    char path[512];
    emb_err err = {0};
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);

    /* "NUL in header" needs its embedded NUL written: use the literal size */
    if (strcmp(c->what, "NUL in header") == 0) {
        unsigned char buf[8 + 6];
        uint64_t hlen = 6;
        memcpy(buf, &hlen, 8);
        memcpy(buf + 8, "{}\0   ", 6);
        file_write(path, buf, sizeof buf);
    } else {
        st_make(path, c->header, c->hlen, c->data_len);
    }

    emb_st_file f;
    memset(&f, 0xab, sizeof f); /* open must not rely on a zeroed struct */
    int rc = emb_st_open(&f, path, &err);
    ck_assert_msg(rc == -1, "%s: open succeeded", c->what);
    ck_assert_msg(strstr(err.msg, c->want) != NULL, "%s: message \"%s\" lacks \"%s\"", c->what,
                  err.msg, c->want);
    ck_assert_msg(strstr(err.msg, path) != NULL, "%s: message \"%s\" lacks the path", c->what,
                  err.msg);
    ck_assert_msg(file_is_zeroed(&f), "%s: struct not left closed", c->what);
    emb_st_close(&f);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_nul_header)
{
    /* covered in test_bad_file; this checks the message explicitly */
    char dir[256];
    char path[512];
    emb_err err = {0};
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/nul.safetensors", dir);
    unsigned char buf[16];
    uint64_t hlen = 8;
    memcpy(buf, &hlen, 8);
    memcpy(buf + 8, "{\"a\0\":1}", 8);
    file_write(path, buf, sizeof buf);
    emb_st_file f;
    ck_assert_int_eq(emb_st_open(&f, path, &err), -1);
    ck_assert_msg(strstr(err.msg, "NUL") != NULL, "%s", err.msg);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_bad_paths)
{
    char dir[256];
    char path[512];
    emb_err err = {0};
    emb_st_file f;
    tmpdir_make(dir, sizeof dir);

    snprintf(path, sizeof path, "%s/missing.safetensors", dir);
    ck_assert_int_eq(emb_st_open(&f, path, &err), -1);
    ck_assert_msg(strstr(err.msg, "not found") != NULL, "%s", err.msg);
    ck_assert(file_is_zeroed(&f));

    ck_assert_int_eq(emb_st_open(&f, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "not a regular file") != NULL, "%s", err.msg);

    snprintf(path, sizeof path, "%s/empty.safetensors", dir);
    file_write(path, "", 0);
    ck_assert_int_eq(emb_st_open(&f, path, &err), -1);
    ck_assert_msg(strstr(err.msg, "0 bytes, too short") != NULL, "%s", err.msg);
    ck_assert(file_is_zeroed(&f));

    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    file_write(path, "\x02\0\0\0", 4);
    ck_assert_int_eq(emb_st_open(&f, path, &err), -1);
    ck_assert_msg(strstr(err.msg, "4 bytes, too short") != NULL, "%s", err.msg);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_truncated)
{
    char dir[256];
    char path[512];
    emb_err err = {0};
    emb_st_entry e[6];
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fill_entries(e);
    ck_assert_int_eq(emb_st_write(path, e, 6, NULL, &err), 0);
    size_t len = 0;
    unsigned char *raw = file_slurp(path, &len);

    /* cut the last bytes: the last tensor now ends past the data area */
    for (size_t cut = 1; cut <= 12; cut++) {
        file_write(path, raw, len - cut);
        emb_st_file f;
        ck_assert_int_eq(emb_st_open(&f, path, &err), -1);
        ck_assert_msg(strstr(err.msg, "'z.tail': data_offsets end") != NULL &&
                          strstr(err.msg, "(file truncated?)") != NULL,
                      "cut %zu: %s", cut, err.msg);
    }
    /* trailing bytes after the last tensor are tolerated */
    unsigned char *longer = malloc(len + 4);
    memcpy(longer, raw, len);
    memset(longer + len, 0, 4);
    file_write(path, longer, len + 4);
    emb_st_file f;
    ck_assert_msg(emb_st_open(&f, path, &err) == 0, "%s", err.msg);
    emb_st_close(&f);
    free(longer);
    free(raw);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_padded_header)
{
    /* a header padded with spaces (and the odd newline) is fine, gaps too */
    char dir[256];
    char path[512];
    emb_err err = {0};
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/pad.safetensors", dir);
    st_make(path,
            "{\"__metadata__\":{\"format\":\"pt\"}," T_A
            ",\"e\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[8,8]},"
            "\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[16,24]}}   \n  ",
            0, 24);
    emb_st_file f;
    ck_assert_msg(emb_st_open(&f, path, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n_tensors, 3);
    float out[2];
    ck_assert_int_eq(emb_st_read_f32(&f, emb_st_find(&f, "a"), out, &err), 0);
    ck_assert_int_eq(emb_st_read_f32(&f, emb_st_find(&f, "e"), NULL, &err), 0);

    /* non-float dtypes cannot be read as f32 */
    const emb_st_tensor *c = emb_st_find(&f, "c");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(c->dtype, EMB_DT_I64);
    ck_assert_int_eq(emb_st_read_f32(&f, c, out, &err), -1);
    ck_assert_msg(strstr(err.msg, "'c'") != NULL && strstr(err.msg, "I64") != NULL, "%s",
                  err.msg);
    emb_st_close(&f);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_write_errors)
{
    char dir[256];
    char path[512];
    char tmp[600];
    emb_err err = {0};
    float x[4] = {1, 2, 3, 4};
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    emb_st_entry e[2] = {{"x", EMB_DT_I32, 1, {4}, x}, {"y", EMB_DT_F32, 1, {4}, x}};
    ck_assert_int_eq(emb_st_write(path, e, 1, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "'x'") && strstr(err.msg, "I32"), "%s", err.msg);

    e[0] = (emb_st_entry){"x", EMB_DT_F32, 1, {-4}, x};
    ck_assert_int_eq(emb_st_write(path, e, 1, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "negative"), "%s", err.msg);

    e[0] = (emb_st_entry){"x", EMB_DT_F32, 9, {1}, x};
    ck_assert_int_eq(emb_st_write(path, e, 1, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "ndim 9"), "%s", err.msg);

    e[0] = (emb_st_entry){"y", EMB_DT_F32, 1, {4}, x};
    ck_assert_int_eq(emb_st_write(path, e, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "'y' is listed twice"), "%s", err.msg);

    e[0] = (emb_st_entry){"__metadata__", EMB_DT_F32, 1, {4}, x};
    ck_assert_int_eq(emb_st_write(path, e, 1, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "reserved"), "%s", err.msg);

    e[0] = (emb_st_entry){"x", EMB_DT_F32, 1, {4}, NULL};
    ck_assert_int_eq(emb_st_write(path, e, 1, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "NULL"), "%s", err.msg);

    e[0] = (emb_st_entry){"x", EMB_DT_F32, 1, {4}, x};
    ck_assert_int_eq(emb_st_write(path, e, 1, "{\"a\": 1}", &err), -1);
    ck_assert_msg(strstr(err.msg, "metadata"), "%s", err.msg);
    ck_assert_int_eq(emb_st_write(path, e, 1, "not json", &err), -1);
    ck_assert_msg(strstr(err.msg, "metadata"), "%s", err.msg);

    ck_assert_int_ne(access(path, F_OK), 0);
    ck_assert_int_ne(access(tmp, F_OK), 0);

    snprintf(path, sizeof path, "%s/no/such/dir/out.safetensors", dir);
    ck_assert_int_eq(emb_st_write(path, e, 1, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "out.safetensors.tmp"), "%s", err.msg);
    tmpdir_remove(dir);
}
END_TEST

/* ---- mutations ---------------------------------------------------------- */

static uint32_t rng_state;

static uint32_t rng_next(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

/* Open descriptors and mappings of this process, to catch leaks. */
static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

static int count_file_maps(const char *name)
{
    char line[1024];
    int n = 0;
    FILE *fp = fopen("/proc/self/maps", "r");
    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof line, fp) != NULL) {
        if (strstr(line, name) != NULL)
            n++;
    }
    fclose(fp);
    return n;
}

/* Opens path; when it opens, reads every float tensor. Never crashes. */
static int open_and_read(const char *path)
{
    emb_st_file f;
    emb_err err = {0};
    if (emb_st_open(&f, path, &err) != 0) {
        ck_assert_msg(err.msg[0] != '\0', "error without message");
        ck_assert(file_is_zeroed(&f));
        return -1;
    }
    for (int i = 0; i < f.n_tensors; i++) {
        const emb_st_tensor *t = &f.tensors[i];
        ck_assert(t->begin <= t->end && t->end <= f.data_size);
        int64_t n = emb_st_numel(t);
        float *dst = malloc((size_t)(n > 0 ? n : 1) * sizeof *dst);
        ck_assert_ptr_nonnull(dst);
        emb_st_read_f32(&f, t, dst, &err);
        free(dst);
    }
    emb_st_close(&f);
    return 0;
}

START_TEST(test_mutations)
{
    char dir[256];
    char path[512];
    char src[512];
    emb_err err = {0};
    emb_st_entry e[6];
    tmpdir_make(dir, sizeof dir);
    snprintf(src, sizeof src, "%s/src.safetensors", dir);
    snprintf(path, sizeof path, "%s/mut.safetensors", dir);
    fill_entries(e);
    ck_assert_int_eq(emb_st_write(src, e, 6, "{\"format\":\"pt\"}", &err), 0);
    size_t len = 0;
    unsigned char *raw = file_slurp(src, &len);
    unsigned char *buf = malloc(len);
    ck_assert_ptr_nonnull(buf);
    int opened = 0;
    int failed = 0;
    int fds_before = count_fds();

    /* every truncation */
    for (size_t cut = 0; cut < len; cut++) {
        file_write(path, raw, cut);
        if (open_and_read(path) == 0)
            opened++;
        else
            failed++;
    }
    /* every byte of the length and header, replaced by a few nasty values */
    uint64_t hlen = 0;
    memcpy(&hlen, raw, 8);
    const unsigned char nasty[] = {0x00, 0xff, '{', '}', '"', '-', '9', ' ', '[', ','};
    for (size_t pos = 0; pos < 8 + hlen; pos++) {
        for (size_t k = 0; k < sizeof nasty; k++) {
            memcpy(buf, raw, len);
            buf[pos] = nasty[k];
            file_write(path, buf, len);
            if (open_and_read(path) == 0)
                opened++;
            else
                failed++;
        }
    }
    /* random bit flips and truncations, fixed seed */
    rng_state = 0x9e3779b9u;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, raw, len);
        int flips = 1 + (int)(rng_next() % 4);
        for (int j = 0; j < flips; j++) {
            size_t pos = rng_next() % len;
            buf[pos] ^= (unsigned char)(1u << (rng_next() % 8));
        }
        size_t n = len;
        if (rng_next() % 4 == 0)
            n = rng_next() % (len + 1);
        file_write(path, buf, n);
        if (open_and_read(path) == 0)
            opened++;
        else
            failed++;
    }
    /* the pristine file still opens */
    ck_assert_int_eq(open_and_read(src), 0);
    /* the mapping is visible while open (so the counts below mean something) */
    emb_st_file f;
    ck_assert_int_eq(emb_st_open(&f, src, &err), 0);
    ck_assert_int_eq(count_file_maps("src.safetensors"), 1);
    ck_assert_int_eq(count_fds(), fds_before);
    emb_st_close(&f);
    /* every fd and every mapping was released */
    ck_assert_int_eq(count_fds(), fds_before);
    ck_assert_int_eq(count_file_maps("mut.safetensors"), 0);
    ck_assert_int_eq(count_file_maps("src.safetensors"), 0);
    ck_assert_int_gt(failed, 1000);
    ck_assert_int_gt(opened, 10);
    free(buf);
    free(raw);
    tmpdir_remove(dir);
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");

    TCase *tc = tcase_create("roundtrip");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_empty_file_list);
    tcase_add_test(tc, test_close_zeroed);
    tcase_add_test(tc, test_dtype_names);
    tcase_add_test(tc, test_padded_header);
    tcase_add_test(tc, test_write_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("convert");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_f16_table);
    tcase_add_test(tc, test_f16_to_f32);
#if defined(__FLT16_MAX__)
    tcase_add_test(tc, test_f16_vs_compiler);
#endif
    tcase_add_test(tc, test_bf16_table);
    suite_add_tcase(s, tc);

    tc = tcase_create("broken");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_bad_file, 0, (int)(sizeof bad_cases / sizeof bad_cases[0]));
    tcase_add_test(tc, test_nul_header);
    tcase_add_test(tc, test_bad_paths);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_mutations);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(safetensors_suite());
}
