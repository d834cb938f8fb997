/* ops.c: forward kernels of the BERT encoder. See ops.h for the legend.
 *
 * Threading: dense layers go to OpenBLAS, which runs its own threads. The
 * element-wise and attention loops here use OpenMP over rows or over
 * (sequence, head) pairs; they never run at the same time as a BLAS call. */
#include "ops.h"

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

static void layernorm_row(float *x, const float *w, const float *b, int C, float eps)
{
    float mean = 0.0f;
    for (int c = 0; c < C; c++)
        mean += x[c];
    mean /= (float)C;
    float var = 0.0f;
    for (int c = 0; c < C; c++) {
        float d = x[c] - mean;
        var += d * d;
    }
    var /= (float)C;
    float rstd = 1.0f / sqrtf(var + eps);
    for (int c = 0; c < C; c++)
        x[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

void residual_layernorm_forward(float *x, const float *delta, const float *bias,
                                const float *w, const float *b, int T, int C, float eps)
{
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *row = x + (long)t * C;
        if (delta != NULL) {
            const float *d = delta + (long)t * C;
            for (int c = 0; c < C; c++)
                row[c] += d[c];
        }
        if (bias != NULL) {
            for (int c = 0; c < C; c++)
                row[c] += bias[c];
        }
        layernorm_row(row, w, b, C, eps);
    }
}

/* GELU(v) = 0.5 v (1 + erf(v / sqrt 2)), exact erf. glibc's scalar erff
 * costs ~17 ns; libmvec's vector erff (glibc >= 2.35, within a few ulp) does
 * 8 lanes in about the time of one, so x86-64 rows go through it. */
static void gelu_row_scalar(float *row, const float *bias, int n)
{
    const float inv_sqrt2 = 0.70710678118654752f;
    for (int i = 0; i < n; i++) {
        float v = row[i] + bias[i];
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
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(bias + i));
        __m256 e = _ZGVdN8v_erff(_mm256_mul_ps(v, inv_sqrt2));
        _mm256_storeu_ps(row + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
    }
    gelu_row_scalar(row + i, bias + i, n - i);
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

long attention_scratch_floats(int max_len)
{
    return (long)max_len * omp_get_max_threads();
}

/* One head of one sequence: n tokens starting at row 0 of q/k/v (stride
 * ld), output rows of stride ldo. */
static void attention_head(float *out, int ldo, const float *q, const float *k,
                           const float *v, int ld, int n, int HD, float *scores)
{
    const float scale = 1.0f / sqrtf((float)HD);
    for (int i = 0; i < n; i++) {
        const float *qi = q + (long)i * ld;
        float maxv = -INFINITY;
        for (int j = 0; j < n; j++) {
            const float *kj = k + (long)j * ld;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int d = 0; d < HD; d++)
                dot += qi[d] * kj[d];
            dot *= scale;
            scores[j] = dot;
            if (dot > maxv)
                maxv = dot;
        }
        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            scores[j] = expf(scores[j] - maxv);
            sum += scores[j];
        }
        float inv = 1.0f / sum;
        float *oi = out + (long)i * ldo;
        for (int d = 0; d < HD; d++)
            oi[d] = 0.0f;
        for (int j = 0; j < n; j++) {
            const float *vj = v + (long)j * ld;
            float p = scores[j] * inv;
#pragma omp simd
            for (int d = 0; d < HD; d++)
                oi[d] += p * vj[d];
        }
    }
}

void attention_forward(float *out, const float *qkv, const int *seq_off, int S,
                       int C, int NH, float *scratch, int max_len)
{
    const int HD = C / NH;
    const int ld = 3 * C;
#pragma omp parallel for schedule(dynamic, 1)
    for (int sh = 0; sh < S * NH; sh++) {
        int s = sh / NH;
        int h = sh % NH;
        int t0 = seq_off[s];
        int n = seq_off[s + 1] - t0;
        const float *q = qkv + (long)t0 * ld + h * HD;
        float *scores = scratch + (long)omp_get_thread_num() * max_len;
        attention_head(out + (long)t0 * C + h * HD, C, q, q + C, q + 2 * C, ld, n, HD, scores);
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
