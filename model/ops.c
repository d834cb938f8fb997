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

void residual_layernorm_forward(float *x, const float *delta, const float *bias,
                                const float *w, const float *b, int T, int C, float eps)
{
#pragma omp parallel for schedule(static)
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

__m256 _ZGVdN8v_expf(__m256 x); /* libmvec, AVX2 variant */

/* Exponentiates the first multiple-of-8 values of x; returns how many. */
__attribute__((target("avx2,fma"))) static int exp_avx2(float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _ZGVdN8v_expf(_mm256_loadu_ps(x + i)));
    return i;
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

/* Attention works on blocks of ROWS query rows against 16 keys at a time,
 * with the running sums held in vector registers (GCC vector extensions;
 * the HOT_CLONES versions compile them to AVX-512 or AVX2). */
#define ROWS 4
#define LANES 16
/* v16 only ever crosses static, inlined helpers: no ABI to keep stable. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16 __attribute__((vector_size(LANES * sizeof(float))));

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

/* x[i] = exp(x[i]) for n values. */
static void exp_inplace(float *x, int n)
{
    int i = 0;
#if defined(__x86_64__) && defined(__GLIBC__)
    if (have_avx2())
        i = exp_avx2(x, n);
#endif
    for (; i < n; i++)
        x[i] = expf(x[i]);
}

/* s (r, np) = q (r rows, stride ld) kt (HD, np), for r <= ROWS. */
HOT_CLONES static void scores_block(float *s, const float *q, int ld, int r, const float *kt,
                                    int np, int HD)
{
    for (int jb = 0; jb < np; jb += LANES) {
        v16 acc[ROWS] = {{0}};
        for (int d = 0; d < HD; d++) {
            v16 k = load16(kt + (long)d * np + jb);
            for (int i = 0; i < ROWS; i++)
                acc[i] += q[(long)(i < r ? i : 0) * ld + d] * k;
        }
        for (int i = 0; i < r; i++)
            store16(s + (long)i * np + jb, acc[i]);
    }
}

/* Row-wise softmax of scale * s over its first n entries. */
HOT_CLONES static void softmax_row(float *s, int n, float scale)
{
    float maxv = s[0];
    for (int j = 1; j < n; j++)
        maxv = s[j] > maxv ? s[j] : maxv;
    for (int j = 0; j < n; j++)
        s[j] = (s[j] - maxv) * scale;
    exp_inplace(s, n);
    float sum = 0.0f;
    for (int j = 0; j < n; j++)
        sum += s[j];
    const float inv = 1.0f / sum;
    for (int j = 0; j < n; j++)
        s[j] *= inv;
}

/* o (r rows, stride ldo) = p (r, np) v (n rows, stride ld), head dim HD. */
HOT_CLONES static void values_block(float *o, int ldo, const float *p, int np, int r,
                                    const float *v, int ld, int n, int HD)
{
    int db = 0;
    for (; db + 2 * LANES <= HD; db += 2 * LANES) {
        v16 acc0[ROWS] = {{0}}, acc1[ROWS] = {{0}};
        for (int j = 0; j < n; j++) {
            v16 v0 = load16(v + (long)j * ld + db);
            v16 v1 = load16(v + (long)j * ld + db + LANES);
            for (int i = 0; i < ROWS; i++) {
                float pij = p[(long)(i < r ? i : 0) * np + j];
                acc0[i] += pij * v0;
                acc1[i] += pij * v1;
            }
        }
        for (int i = 0; i < r; i++) {
            store16(o + (long)i * ldo + db, acc0[i]);
            store16(o + (long)i * ldo + db + LANES, acc1[i]);
        }
    }
    for (; db < HD; db++) {
        for (int i = 0; i < r; i++) {
            float acc = 0.0f;
            for (int j = 0; j < n; j++)
                acc += p[(long)i * np + j] * v[(long)j * ld + db];
            o[(long)i * ldo + db] = acc;
        }
    }
}

/* One head of one sequence: n tokens starting at row 0 of q/k/v (row
 * stride ld); output rows have stride ldo. kt (HD, np) and s (ROWS, np)
 * are scratch. */
HOT_CLONES static void attention_head(float *out, int ldo, const float *q, const float *k,
                           const float *v, int ld, int n, int HD, float *kt, float *s)
{
    const float scale = 1.0f / sqrtf((float)HD);
    const int np = round_up16(n);
    for (int j = 0; j < n; j++) {
        const float *kj = k + (long)j * ld;
        for (int d = 0; d < HD; d++)
            kt[(long)d * np + j] = kj[d];
    }
    for (int d = 0; d < HD; d++) {
        for (int j = n; j < np; j++)
            kt[(long)d * np + j] = 0.0f;
    }
    for (int i0 = 0; i0 < n; i0 += ROWS) {
        int r = n - i0 < ROWS ? n - i0 : ROWS;
        scores_block(s, q + (long)i0 * ld, ld, r, kt, np, HD);
        for (int i = 0; i < r; i++)
            softmax_row(s + (long)i * np, n, scale);
        values_block(out + (long)i0 * ldo, ldo, s, np, r, v, ld, n, HD);
    }
}

void attention_forward(float *out, const float *qkv, const int *seq_off, int S,
                       int C, int NH, float *scratch, int max_len, int n_threads)
{
    const int HD = C / NH;
    const int ld = 3 * C;
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
        attention_head(out + (long)t0 * C + h * HD, C, q, q + C, q + 2 * C, ld, n, HD, kt,
                       scores);
    }
}

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
