/* ops.c: forward kernels of the BERT encoder. See ops.h for the legend.
 *
 * Threading: dense layers go to OpenBLAS, which runs its own threads. The
 * element-wise and attention loops here use OpenMP over rows or over
 * (sequence, head) pairs; they never run at the same time as a BLAS call. */
#include "ops.h"
#include "ops_simd.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include <cblas.h>

void embeddings_forward(float *out, const int32_t *ids, const int *seq_off, int S,
                        const float *wte, const float *wpe, const float *wtt, int C)
{
    for (int s = 0; s < S; s++) {
        for (int t = seq_off[s]; t < seq_off[s + 1]; t++) {
            const float *w = wte + (long)ids[t] * C;
            const float *p = wpe + (long)(t - seq_off[s]) * C;
            float *o = out + (long)t * C;
            for (int c = 0; c < C; c++)
                o[c] = w[c] + p[c] + wtt[c];
        }
    }
}

void matmul_forward(float *out, const float *in, const float *w, const float *bias,
                    int T, int IN, int OUT)
{
    float beta = 0.0f;
    if (bias != NULL) {
        for (int t = 0; t < T; t++)
            memcpy(out + (long)t * OUT, bias, sizeof(float) * OUT);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OUT, IN,
                1.0f, in, IN, w, IN, beta, out, OUT);
}

void dense_forward(float *out, const float *in, const float *w, const float *bias, int S,
                   int IN, int OUT, int act)
{
    matmul_forward(out, in, w, bias, S, IN, OUT);
    if (act != 1)
        return;
    for (long i = 0; i < (long)S * OUT; i++)
        out[i] = tanhf(out[i]);
}

/* Rows up to which residual_layernorm_forward runs on the calling thread. */
#define LAYERNORM_SERIAL_ROWS 64

/* x = LayerNorm(x + delta + bias) for one row; delta and bias may be NULL. */
HOT_CLONES static void residual_layernorm_row(float *x, const float *delta, const float *bias,
                                              const float *w, const float *b, int C, float eps)
{
    if (delta != NULL) {
#pragma omp simd
        for (int c = 0; c < C; c++)
            x[c] += delta[c];
    }
    if (bias != NULL) {
#pragma omp simd
        for (int c = 0; c < C; c++)
            x[c] += bias[c];
    }
    float mean, rstd;
    row_mean_rstd(x, C, eps, &mean, &rstd);
#pragma omp simd
    for (int c = 0; c < C; c++)
        x[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

void residual_layernorm_serial(float *x, const float *delta, const float *bias, const float *w,
                               const float *b, int T, int C, float eps)
{
    for (int t = 0; t < T; t++) {
        const float *d = delta != NULL ? delta + (long)t * C : NULL;
        residual_layernorm_row(x + (long)t * C, d, bias, w, b, C, eps);
    }
}

void residual_layernorm_forward(float *x, const float *delta, const float *bias,
                                const float *w, const float *b, int T, int C, float eps)
{
    /* a few rows (one short text) stay on the calling thread: waking the
     * team costs more than the work, and its threads would keep spinning
     * against the GEMM pool's (pool.h) */
#pragma omp parallel for schedule(static) if (T > LAYERNORM_SERIAL_ROWS)
    for (int t = 0; t < T; t++) {
        const float *d = delta != NULL ? delta + (long)t * C : NULL;
        residual_layernorm_row(x + (long)t * C, d, bias, w, b, C, eps);
    }
}

/* GELU(v) = 0.5 v (1 + erf(v / sqrt 2)), exact erf. glibc's scalar erff
 * costs ~17 ns; libmvec's vector erff (glibc >= 2.35, within a few ulp) does
 * 8 lanes in about the time of one, so x86-64 rows go through it. */
static void gelu_row_scalar(float *row, const float *bias, int n)
{
    const float inv_sqrt2 = 0.70710678118654752f;
    for (int i = 0; i < n; i++) {
        float v = row[i] + (bias != NULL ? bias[i] : 0.0f);
        row[i] = 0.5f * v * (1.0f + erff(v * inv_sqrt2));
    }
}

#if defined(__x86_64__) && defined(__GLIBC__)
#include <immintrin.h>
__m256 _ZGVdN8v_erff(__m256 x); /* libmvec, AVX2 variant */

__attribute__((target("avx2,fma"))) static void gelu_row_avx2(float *row, const float *bias, int n)
{
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 inv_sqrt2 = _mm256_set1_ps(0.70710678118654752f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(row + i);
        if (bias != NULL)
            v = _mm256_add_ps(v, _mm256_loadu_ps(bias + i));
        __m256 e = _ZGVdN8v_erff(_mm256_mul_ps(v, inv_sqrt2));
        _mm256_storeu_ps(row + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
    }
    gelu_row_scalar(row + i, bias != NULL ? bias + i : NULL, n - i);
}

static int have_avx2(void)
{
    static int cached = -1;
    if (cached < 0)
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return cached;
}
#endif

void bias_gelu_forward(float *x, const float *bias, int T, int N)
{
#if defined(__x86_64__) && defined(__GLIBC__)
    const int vector = have_avx2();
#else
    const int vector = 0;
#endif
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *row = x + (long)t * N;
#if defined(__x86_64__) && defined(__GLIBC__)
        if (vector) {
            gelu_row_avx2(row, bias, N);
            continue;
        }
#endif
        gelu_row_scalar(row, bias, N);
    }
}

/* Attention, per (sequence, head) of n tokens: S = Q K^T / sqrt(HD),
 * P = softmax(S), O = P V, on blocks of ROWS query rows. Keys run along
 * 16-lane vectors (GCC vector extensions, compiled for AVX-512, AVX2 and the
 * baseline; see attention_head_pick), so K is first copied transposed into kt (HD, np),
 * np = n rounded up to 16, times log2(e) / sqrt(HD): the scores come out in
 * base 2 and the softmax needs only exp2. Score columns n..np-1 are set to
 * -inf, so they drop out of every max, exp2 and sum. Each row's max is taken
 * while its scores are made and its sum while they are exponentiated; 1/sum
 * scales the HD outputs rather than the n probabilities. */
#define ROWS 8
#define LANES 16
/* -std=c11 turns off FMA contraction (-ffp-contract=off); these loops are
 * all multiply-adds, and fused ones only round less. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
/* v16 only ever crosses static, inlined helpers: no ABI to keep stable. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16 __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t v16i __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline __attribute__((always_inline)) v16 load16(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void store16(float *p, v16 v)
{
    memcpy(p, &v, sizeof v);
}

/* Lane-wise keep ? a : b; keep lanes are all ones or all zeros. */
static inline __attribute__((always_inline)) v16 select16(v16i keep, v16 a, v16 b)
{
    return (v16)((keep & (v16i)a) | (~keep & (v16i)b));
}

static inline __attribute__((always_inline)) v16 max16(v16 a, v16 b)
{
    return select16(a > b, a, b);
}

/* Lanes rem..15 of a set to -inf (0 < rem <= 16). */
static inline __attribute__((always_inline)) v16 mask_tail16(v16 a, int rem)
{
    const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16 neg_inf = (v16){0} - INFINITY;
    return select16(lane < rem, a, neg_inf);
}

/* Largest and sum of the 16 lanes, by halving. */
static inline __attribute__((always_inline)) float hmax16(v16 v)
{
    v = max16(v, __builtin_shuffle(v, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    v = max16(v, __builtin_shuffle(v, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3}));
    v = max16(v, __builtin_shuffle(v, (v16i){2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1}));
    v = max16(v, __builtin_shuffle(v, (v16i){1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0}));
    return v[0];
}

static inline __attribute__((always_inline)) float hsum16(v16 v)
{
    v += __builtin_shuffle(v, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    v += __builtin_shuffle(v, (v16i){2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
    v += __builtin_shuffle(v, (v16i){1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
    return v[0];
}

/* 2^x for x <= 0 (and -inf): x = k + f with k an integer and |f| <= 1/2;
 * 2^f from Cephes' exp2f polynomial (relative error < 2e-7), 2^k added to
 * its exponent bits. Below -125 the result is 0 (true value < 3e-38). */
static inline __attribute__((always_inline)) v16 exp2_16(v16 x)
{
    const float round = 0x1.8p23f; /* x + round has round(x) in its low bits */
    const v16i keep = x >= -125.0f;
    x = select16(keep, x, (v16){0} - 125.0f);
    v16 t = x + round;
    v16 f = x - (t - round);
    v16 p = (v16){0} + 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    v16i k = (v16i)t - (v16i)((v16){0} + round);
    return (v16)(((v16i)p + k * (1 << 23)) & keep);
}

static int round_up16(int n)
{
    return (n + LANES - 1) / LANES * LANES;
}

/* Per thread: K of one head transposed (HD, np) and ROWS rows of scores
 * (np), np = max_len rounded up to 16. */
long attention_scratch_floats(int max_len, int head_dim, int n_threads)
{
    return (long)round_up16(max_len) * (head_dim + ROWS) * n_threads;
}

/* t (16 rows of 16) transposed in place: four stages that swap the
 * off-diagonal b x b blocks, b = 8, 4, 2, 1, one two-input shuffle per row. */
static inline __attribute__((always_inline)) void transpose16(v16 *t)
{
    for (int b = LANES / 2; b > 0; b /= 2) {
        v16i lo, hi;
        for (int c = 0; c < LANES; c++) {
            lo[c] = c & b ? LANES + c - b : c;
            hi[c] = c & b ? LANES + c : c + b;
        }
        for (int i = 0; i < LANES; i++) {
            if (i & b)
                continue;
            v16 x = __builtin_shuffle(t[i], t[i + b], lo);
            v16 y = __builtin_shuffle(t[i], t[i + b], hi);
            t[i] = x;
            t[i + b] = y;
        }
    }
}

/* kt (HD, np) = c k^T for k (n rows, stride ld); columns n..np-1 zero.
 * 16 x 16 tiles through registers, then the last HD % 16 rows of kt one
 * value at a time. */
static inline __attribute__((always_inline)) void transpose_k(float *kt, const float *k, int ld,
                                                              int n, int np, int HD, float c)
{
    const int hd16 = HD / LANES * LANES;
    for (int jb = 0; jb < np; jb += LANES) {
        for (int db = 0; db < hd16; db += LANES) {
            v16 t[LANES];
            for (int j = 0; j < LANES; j++)
                t[j] = jb + j < n ? c * load16(k + (long)(jb + j) * ld + db) : (v16){0};
            transpose16(t);
            for (int d = 0; d < LANES; d++)
                store16(kt + (long)(db + d) * np + jb, t[d]);
        }
    }
    for (int d = hd16; d < HD; d++) {
        for (int j = 0; j < np; j++)
            kt[(long)d * np + j] = j < n ? c * k[(long)j * ld + d] : 0.0f;
    }
}

/* Columns jb..jb+16*nv-1 of s (r rows, stride np) = q kt, nv = 1 or 2;
 * mx (ROWS) takes their max. Rows r..ROWS-1 repeat row 0. */
static inline __attribute__((always_inline)) void scores_tile(float *s, v16 *mx, const float *q,
                                                              int ld, int r, const float *kt,
                                                              int np, int n, int HD, int jb,
                                                              int nv)
{
    v16 acc[ROWS][2] = {{{0}}};
    for (int d = 0; d < HD; d++) {
        for (int c = 0; c < nv; c++) {
            v16 k = load16(kt + (long)d * np + jb + c * LANES);
            for (int i = 0; i < ROWS; i++)
                acc[i][c] += q[(long)(i < r ? i : 0) * ld + d] * k;
        }
    }
    for (int c = 0; c < nv; c++) {
        int rem = n - jb - c * LANES;
        for (int i = 0; i < ROWS; i++) {
            v16 a = rem < LANES ? mask_tail16(acc[i][c], rem) : acc[i][c];
            mx[i] = max16(mx[i], a);
            if (i < r)
                store16(s + (long)i * np + jb + c * LANES, a);
        }
    }
}

/* s (r, np) = q (r rows, stride ld) kt (HD, np), columns n..np-1 -inf;
 * mx (r) gets each row's max. */
static inline __attribute__((always_inline)) void scores_block(float *s, float *mx, const float *q,
                                                               int ld, int r, const float *kt,
                                                               int np, int n, int HD)
{
    v16 m[ROWS];
    for (int i = 0; i < ROWS; i++)
        m[i] = (v16){0} - INFINITY;
    int jb = 0;
    for (; jb + 2 * LANES <= np; jb += 2 * LANES)
        scores_tile(s, m, q, ld, r, kt, np, n, HD, jb, 2);
    if (jb < np)
        scores_tile(s, m, q, ld, r, kt, np, n, HD, jb, 1);
    for (int i = 0; i < r; i++)
        mx[i] = hmax16(m[i]);
}

/* s (np) = 2^(s - mx) in place; returns the sum. */
static inline __attribute__((always_inline)) float exp2_row(float *s, int np, float mx)
{
    v16 sum = {0};
    for (int j = 0; j < np; j += LANES) {
        v16 p = exp2_16(load16(s + j) - mx);
        store16(s + j, p);
        sum += p;
    }
    return hsum16(sum);
}

/* Columns db..db+16*nv-1 of o (r rows, stride ldo) = inv * (p v), nv = 1
 * or 2. Rows r..ROWS-1 repeat row 0. */
static inline __attribute__((always_inline)) void values_tile(float *o, int ldo, const float *p,
                                                              int np, int r, const float *inv,
                                                              const float *v, int ld, int n,
                                                              int db, int nv)
{
    v16 acc[ROWS][2] = {{{0}}};
    for (int j = 0; j < n; j++) {
        for (int c = 0; c < nv; c++) {
            v16 vj = load16(v + (long)j * ld + db + c * LANES);
            for (int i = 0; i < ROWS; i++)
                acc[i][c] += p[(long)(i < r ? i : 0) * np + j] * vj;
        }
    }
    for (int i = 0; i < r; i++) {
        for (int c = 0; c < nv; c++)
            store16(o + (long)i * ldo + db + c * LANES, acc[i][c] * inv[i]);
    }
}

/* o (r rows, stride ldo) = inv * (p (r, np) v (n rows, stride ld)), head
 * dim HD: 32 columns at a time, then 16, then one. */
static inline __attribute__((always_inline)) void values_block(float *o, int ldo, const float *p,
                                                               int np, int r, const float *inv,
                                                               const float *v, int ld, int n,
                                                               int HD)
{
    int db = 0;
    for (; db + 2 * LANES <= HD; db += 2 * LANES)
        values_tile(o, ldo, p, np, r, inv, v, ld, n, db, 2);
    if (db + LANES <= HD) {
        values_tile(o, ldo, p, np, r, inv, v, ld, n, db, 1);
        db += LANES;
    }
    for (; db < HD; db++) {
        for (int i = 0; i < r; i++) {
            float acc = 0.0f;
            for (int j = 0; j < n; j++)
                acc += p[(long)i * np + j] * v[(long)j * ld + db];
            o[(long)i * ldo + db] = acc * inv[i];
        }
    }
}

/* One head of one sequence: n tokens starting at row 0 of q/k/v (row
 * stride ld); output rows have stride ldo. kt (HD, np) and s (ROWS, np)
 * are scratch. */
static inline __attribute__((always_inline)) void attention_head(float *out, int ldo,
                                                                 const float *q, const float *k,
                                                                 const float *v, int ld, int n,
                                                                 int HD, float *kt, float *s)
{
    const float log2e = 1.44269504088896341f;
    const int np = round_up16(n);
    transpose_k(kt, k, ld, n, np, HD, log2e / sqrtf((float)HD));
    for (int i0 = 0; i0 < n; i0 += ROWS) {
        int r = n - i0 < ROWS ? n - i0 : ROWS;
        float mx[ROWS], inv[ROWS];
        scores_block(s, mx, q + (long)i0 * ld, ld, r, kt, np, n, HD);
        for (int i = 0; i < r; i++)
            inv[i] = 1.0f / exp2_row(s + (long)i * np, np, mx[i]);
        values_block(out + (long)i0 * ldo, ldo, s, np, r, inv, v, ld, n, HD);
    }
}

/* attention_head compiled for AVX-512 and for AVX2, picked at run time,
 * and for the baseline. Not HOT_CLONES: its AVX-512 clone has no FMA
 * (GCC 12's -mavx512f does not imply -mfma), which halves this kernel. */
typedef void attention_head_fn(float *out, int ldo, const float *q, const float *k,
                               const float *v, int ld, int n, int HD, float *kt, float *s);

static void attention_head_generic(float *out, int ldo, const float *q, const float *k,
                                   const float *v, int ld, int n, int HD, float *kt, float *s)
{
    attention_head(out, ldo, q, k, v, ld, n, HD, kt, s);
}

#if defined(__x86_64__) && defined(__GLIBC__)
__attribute__((target("avx512f,fma"))) static void attention_head_avx512(
    float *out, int ldo, const float *q, const float *k, const float *v, int ld, int n, int HD,
    float *kt, float *s)
{
    attention_head(out, ldo, q, k, v, ld, n, HD, kt, s);
}

__attribute__((target("avx2,fma"))) static void attention_head_avx2(
    float *out, int ldo, const float *q, const float *k, const float *v, int ld, int n, int HD,
    float *kt, float *s)
{
    attention_head(out, ldo, q, k, v, ld, n, HD, kt, s);
}
#endif

static attention_head_fn *attention_head_pick(void)
{
#if defined(__x86_64__) && defined(__GLIBC__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
        return attention_head_avx512;
    if (have_avx2())
        return attention_head_avx2;
#endif
    return attention_head_generic;
}

void attention_forward(float *out, const float *qkv, const int *seq_off, int S,
                       int C, int NH, float *scratch, int max_len, int n_threads)
{
    const int HD = C / NH;
    const int ld = 3 * C;
    attention_head_fn *head = attention_head_pick();
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int sh = 0; sh < S * NH; sh++) {
        int s = sh / NH;
        int h = sh % NH;
        int t0 = seq_off[s];
        int n = seq_off[s + 1] - t0;
        const float *q = qkv + (long)t0 * ld + h * HD;
        const long np = round_up16(max_len);
        float *kt = scratch + (long)omp_get_thread_num() * np * (HD + ROWS);
        float *scores = kt + np * HD;
        head(out + (long)t0 * C + h * HD, C, q, q + C, q + 2 * C, ld, n, HD, kt, scores);
    }
}

#pragma GCC pop_options

void pool_forward(float *out, const float *x, const int *seq_off, int S, int C, int mode)
{
    for (int s = 0; s < S; s++) {
        int t0 = seq_off[s];
        int n = seq_off[s + 1] - t0;
        float *o = out + (long)s * C;
        if (mode == 1 || n == 0) {
            if (n == 0)
                memset(o, 0, sizeof(float) * C);
            else
                memcpy(o, x + (long)t0 * C, sizeof(float) * C);
            continue;
        }
        if (mode == 2) {
            memcpy(o, x + (long)(t0 + n - 1) * C, sizeof(float) * C);
            continue;
        }
        for (int c = 0; c < C; c++)
            o[c] = 0.0f;
        for (int t = t0; t < t0 + n; t++) {
            const float *r = x + (long)t * C;
            for (int c = 0; c < C; c++)
                o[c] += r[c];
        }
        float inv = 1.0f / (float)n;
        for (int c = 0; c < C; c++)
            o[c] *= inv;
    }
}

void l2norm_forward(float *x, int S, int C)
{
    for (int s = 0; s < S; s++) {
        float *r = x + (long)s * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++)
            ss += (double)r[c] * r[c];
        /* sentence-transformers: x / max(||x||, 1e-12) */
        double norm = sqrt(ss);
        if (norm < 1e-12)
            norm = 1e-12;
        float inv = (float)(1.0 / norm);
        for (int c = 0; c < C; c++)
            r[c] *= inv;
    }
}
