/* ops_train.c: training-mode kernels and the backward of every encoder op.
 * See ops_train.h for the conventions and ops.h for the legend.
 *
 * Threading: dense products go to OpenBLAS. Element-wise loops use OpenMP
 * over rows; parameter gradients that sum over rows (LayerNorm's w and b, a
 * linear layer's bias) are split over blocks of columns instead, so no two
 * threads add into the same float and nothing needs per-thread buffers.
 * Attention runs OpenMP over (sequence, head) pairs with small sgemm calls;
 * inside a parallel region the OpenMP build of OpenBLAS runs each call on
 * the calling thread. */
#include "ops_train.h"
#include "ops_simd.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include <cblas.h>


/* Below this many elements an OpenMP region costs more than the loop. */
#define PAR_MIN 32768L

/* Column block for the column-split reductions: 64 floats fit in registers
 * as 4 AVX-512 or 8 AVX2 accumulators. */
#define COL_BLOCK 64

/* ---- random numbers ---------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void emb_shuffle_order(long *order, long n, uint64_t seed, long epoch)
{
    emb_rng r;
    emb_rng_seed(&r, seed * 1000003u + (uint64_t)epoch);
    for (long i = 0; i < n; i++)
        order[i] = i;
    for (long i = n - 1; i > 0; i--) {
        long j = (long)(emb_rng_next(&r) % (uint64_t)(i + 1));
        long tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
}

void emb_rng_seed(emb_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    r->s[0] = splitmix64(&x);
    r->s[1] = splitmix64(&x);
    /* the all-zero state is a fixed point of the generator */
    if (r->s[0] == 0 && r->s[1] == 0)
        r->s[0] = 1;
}

/* xoroshiro128+ (Blackman and Vigna, 2018 constants 24, 16, 37). Its low
 * bits are weak, so callers take the high ones. */
uint64_t emb_rng_next(emb_rng *r)
{
    uint64_t s0 = r->s[0];
    uint64_t s1 = r->s[1];
    uint64_t result = s0 + s1;
    s1 ^= s0;
    r->s[0] = rotl64(s0, 24) ^ s1 ^ (s1 << 16);
    r->s[1] = rotl64(s1, 37);
    return result;
}

float emb_rng_uniform(emb_rng *r)
{
    /* 24 bits: every value is exact in float and below 1 */
    return (float)(emb_rng_next(r) >> 40) * 0x1p-24f;
}

void dropout_mask_fill(float *mask, long n, float p, emb_rng *r)
{
    if (p <= 0.0f) {
        for (long i = 0; i < n; i++)
            mask[i] = 1.0f;
        return;
    }
    /* p >= 1 drops everything; 1/(1-p) would be infinite */
    const float keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    for (long i = 0; i < n; i++)
        mask[i] = emb_rng_uniform(r) < p ? 0.0f : keep;
}

void mul_mask_inplace(float *x, const float *mask, long n)
{
    if (mask == NULL)
        return;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (long i = 0; i < n; i++)
        x[i] *= mask[i];
}

/* ---- vector exp (libmvec on x86-64, as ops.c does for the forward) ----- */

#if defined(__x86_64__) && defined(__GLIBC__)
#include <immintrin.h>
/* v8 only crosses these libmvec calls: no ABI of ours to keep stable. */
#pragma GCC diagnostic ignored "-Wpsabi"
__m256 _ZGVdN8v_expf(__m256 x);
__m256 _ZGVdN8v_erff(__m256 x);

static int cpu_has_avx2(void)
{
    static int cached = -1;
    if (cached < 0)
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return cached;
}

/* Exponentiates the first multiple-of-8 values of x; returns how many. */
__attribute__((target("avx2,fma"))) static long exp8_avx2(float *x, long n)
{
    long i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _ZGVdN8v_expf(_mm256_loadu_ps(x + i)));
    return i;
}
#endif

/* x[i] = exp(x[i]) for n values. */
static void exp_inplace(float *x, long n)
{
    long i = 0;
#if defined(__x86_64__) && defined(__GLIBC__)
    if (cpu_has_avx2())
        i = exp8_avx2(x, n);
#endif
    for (; i < n; i++)
        x[i] = expf(x[i]);
}

/* ---- embeddings -------------------------------------------------------- */

static void add_row(float *dst, const float *src, int C)
{
    for (int c = 0; c < C; c++)
        dst[c] += src[c];
}

/* Serial: ids repeat, so rows of dwte cannot be split by token, and the
 * whole pass is a few adds per element of dout. */
void embeddings_backward(float *dwte, float *dwpe, float *dwtt, const float *dout,
                         const int32_t *ids, const int *seq_off, int S, int C)
{
    for (int s = 0; s < S; s++) {
        for (int t = seq_off[s]; t < seq_off[s + 1]; t++) {
            const float *g = dout + (long)t * C;
            add_row(dwte + (long)ids[t] * C, g, C);
            add_row(dwpe + (long)(t - seq_off[s]) * C, g, C);
            add_row(dwtt, g, C);
        }
    }
}

/* ---- LayerNorm --------------------------------------------------------- */

HOT_CLONES static void layernorm_row(float *out, float *mean_out, float *rstd_out,
                                     const float *x, const float *w, const float *b, int C,
                                     float eps)
{
    float mean, rstd;
    row_mean_rstd(x, C, eps, &mean, &rstd);
#pragma omp simd
    for (int c = 0; c < C; c++)
        out[c] = (x[c] - mean) * rstd * w[c] + b[c];
    *mean_out = mean;
    *rstd_out = rstd;
}

void layernorm_forward_train(float *out, float *mean, float *rstd, const float *inp,
                             const float *w, const float *b, int T, int C, float eps)
{
#pragma omp parallel for schedule(static) if ((long)T * C > PAR_MIN)
    for (int t = 0; t < T; t++)
        layernorm_row(out + (long)t * C, &mean[t], &rstd[t], inp + (long)t * C, w, b, C, eps);
}

/* dw[c0..c1) += sum_t dout * xhat, db[c0..c1) += sum_t dout. */
HOT_CLONES static void layernorm_param_grads(float *dw, float *db, const float *dout,
                                             const float *inp, const float *mean,
                                             const float *rstd, int T, int C, int c0, int c1)
{
    float acc_w[COL_BLOCK] = {0};
    float acc_b[COL_BLOCK] = {0};
    const int nc = c1 - c0;
    for (int t = 0; t < T; t++) {
        const float *g = dout + (long)t * C + c0;
        const float *x = inp + (long)t * C + c0;
        const float m = mean[t];
        const float r = rstd[t];
#pragma omp simd
        for (int c = 0; c < nc; c++) {
            acc_w[c] += g[c] * ((x[c] - m) * r);
            acc_b[c] += g[c];
        }
    }
    for (int c = 0; c < nc; c++) {
        dw[c0 + c] += acc_w[c];
        db[c0 + c] += acc_b[c];
    }
}

/* dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dout * w. Reads the
 * whole row of dout before writing dx, so dx may alias dout. */
HOT_CLONES static void layernorm_input_grad(float *dx, const float *dout, const float *x,
                                            float mean, float rstd, const float *w, int C)
{
    float sum_g = 0.0f;
    float sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int c = 0; c < C; c++) {
        float g = dout[c] * w[c];
        sum_g += g;
        sum_gx += g * ((x[c] - mean) * rstd);
    }
    const float mg = sum_g / (float)C;
    const float mgx = sum_gx / (float)C;
#pragma omp simd
    for (int c = 0; c < C; c++) {
        float xhat = (x[c] - mean) * rstd;
        dx[c] = rstd * (dout[c] * w[c] - mg - xhat * mgx);
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *mean, const float *rstd, const float *w, int T, int C)
{
    const int nblocks = (C + COL_BLOCK - 1) / COL_BLOCK;
    const int par = (long)T * C > PAR_MIN;
    /* parameters first: dinp may then overwrite dout */
#pragma omp parallel for schedule(static) if (par)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * COL_BLOCK;
        int c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
        layernorm_param_grads(dw, db, dout, inp, mean, rstd, T, C, c0, c1);
    }
#pragma omp parallel for schedule(static) if (par)
    for (int t = 0; t < T; t++) {
        layernorm_input_grad(dinp + (long)t * C, dout + (long)t * C, inp + (long)t * C, mean[t],
                             rstd[t], w, C);
    }
}

/* ---- linear ------------------------------------------------------------ */

/* db[c0..c1) += column sums of dout (T, ld) over those columns. */
HOT_CLONES static void column_sums_add(float *db, const float *dout, int T, int ld, int c0,
                                       int c1)
{
    float acc[COL_BLOCK] = {0};
    const int nc = c1 - c0;
    for (int t = 0; t < T; t++) {
        const float *g = dout + (long)t * ld + c0;
#pragma omp simd
        for (int c = 0; c < nc; c++)
            acc[c] += g[c];
    }
    for (int c = 0; c < nc; c++)
        db[c0 + c] += acc[c];
}

void matmul_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                     const float *w, int T, int IN, int OUT)
{
    if (T <= 0) {
        /* nothing flows; BLAS would reject K = 0 leading dimensions */
        return;
    }
    if (din != NULL) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, IN, OUT, 1.0f, dout, OUT, w,
                    IN, 0.0f, din, IN);
    }
    if (dw != NULL)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OUT, IN, T, 1.0f, dout, OUT, in,
                    IN, 1.0f, dw, IN);
    if (db == NULL)
        return;
    const int nblocks = (OUT + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((long)T * OUT > PAR_MIN)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * COL_BLOCK;
        int c1 = c0 + COL_BLOCK < OUT ? c0 + COL_BLOCK : OUT;
        column_sums_add(db, dout, T, OUT, c0, c1);
    }
}

/* ---- Dense ------------------------------------------------------------- */

void dense_backward(float *din, float *dw, float *db, float *dout, const float *in,
                    const float *out, const float *w, int S, int IN, int OUT, int act)
{
    if (act == 1) {
        for (long i = 0; i < (long)S * OUT; i++)
            dout[i] *= 1.0f - out[i] * out[i];
    }
    matmul_backward(din, dw, db, dout, in, w, S, IN, OUT);
}

/* ---- GELU -------------------------------------------------------------- */

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

/* GELU'(x) = Phi(x) + x phi(x), Phi and phi the normal cdf and pdf. */
static void gelu_grad_scalar(float *dinp, const float *inp, const float *dout, long n)
{
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        float pdf = expf(-0.5f * x * x) * INV_SQRT_2PI;
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

#if defined(__x86_64__) && defined(__GLIBC__)
/* Scalar erff costs ~17 ns; libmvec's does 8 lanes in about that time. */
__attribute__((target("avx2,fma"))) static void gelu_grad_avx2(float *dinp, const float *inp,
                                                               const float *dout, long n)
{
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 mhalf = _mm256_set1_ps(-0.5f);
    const __m256 inv_sqrt2 = _mm256_set1_ps(INV_SQRT2);
    const __m256 inv_sqrt_2pi = _mm256_set1_ps(INV_SQRT_2PI);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(inp + i);
        __m256 g = _mm256_loadu_ps(dout + i);
        __m256 e = _ZGVdN8v_erff(_mm256_mul_ps(x, inv_sqrt2));
        __m256 cdf = _mm256_fmadd_ps(half, e, half);
        __m256 pdf = _mm256_mul_ps(_ZGVdN8v_expf(_mm256_mul_ps(mhalf, _mm256_mul_ps(x, x))),
                                   inv_sqrt_2pi);
        __m256 d = _mm256_fmadd_ps(x, pdf, cdf);
        _mm256_storeu_ps(dinp + i, _mm256_mul_ps(g, d));
    }
    gelu_grad_scalar(dinp + i, inp + i, dout + i, n - i);
}
#endif

/* Elements per OpenMP chunk of the GELU backward. */
#define GELU_CHUNK 8192L

void gelu_backward(float *dinp, const float *inp, const float *dout, long n)
{
#if defined(__x86_64__) && defined(__GLIBC__)
    const int vector = cpu_has_avx2();
#endif
    const long nchunks = (n + GELU_CHUNK - 1) / GELU_CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (long k = 0; k < nchunks; k++) {
        long i0 = k * GELU_CHUNK;
        long m = n - i0 < GELU_CHUNK ? n - i0 : GELU_CHUNK;
#if defined(__x86_64__) && defined(__GLIBC__)
        if (vector) {
            gelu_grad_avx2(dinp + i0, inp + i0, dout + i0, m);
            continue;
        }
#endif
        gelu_grad_scalar(dinp + i0, inp + i0, dout + i0, m);
    }
}

/* ---- attention --------------------------------------------------------- */

void attention_probs_offsets(long *off, const int *seq_off, int S, int NH)
{
    off[0] = 0;
    for (int s = 0; s < S; s++) {
        long n = seq_off[s + 1] - seq_off[s];
        off[s + 1] = off[s] + (long)NH * n * n;
    }
}

/* Softmax of each of the n rows of p (n, n), in place. */
static void softmax_rows(float *p, int n)
{
    for (int i = 0; i < n; i++) {
        float *row = p + (long)i * n;
        float maxv = row[0];
        for (int j = 1; j < n; j++)
            maxv = row[j] > maxv ? row[j] : maxv;
        for (int j = 0; j < n; j++)
            row[j] -= maxv;
        exp_inplace(row, n);
        float sum = 0.0f;
        for (int j = 0; j < n; j++)
            sum += row[j];
        const float inv = 1.0f / sum;
        for (int j = 0; j < n; j++)
            row[j] *= inv;
    }
}

/* o (n rows, stride ldo) = (p * mask) (n, n) v (n rows, stride ld). A loop
 * rather than sgemm, so the masked probabilities need no buffer. */
HOT_CLONES static void masked_values(float *o, int ldo, const float *p, const float *mask,
                                     const float *v, int ld, int n, int HD)
{
    for (int i = 0; i < n; i++) {
        float *orow = o + (long)i * ldo;
        for (int d = 0; d < HD; d++)
            orow[d] = 0.0f;
        for (int j = 0; j < n; j++) {
            float pij = p[(long)i * n + j] * mask[(long)i * n + j];
            const float *vj = v + (long)j * ld;
#pragma omp simd
            for (int d = 0; d < HD; d++)
                orow[d] += pij * vj[d];
        }
    }
}

/* One head of one sequence of n tokens; q, k, v rows have stride 3C, out
 * rows stride C; p and mask are this head's n x n blocks. */
static void attention_head_train(float *out, float *p, const float *q, const float *mask,
                                 int n, int C, int HD)
{
    const int ld = 3 * C;
    const float *k = q + C;
    const float *v = q + 2 * C;
    const float scale = 1.0f / sqrtf((float)HD);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, HD, scale, q, ld, k, ld, 0.0f, p,
                n);
    softmax_rows(p, n);
    if (mask == NULL) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, HD, n, 1.0f, p, n, v, ld,
                    0.0f, out, C);
    } else {
        masked_values(out, C, p, mask, v, ld, n, HD);
    }
}

void attention_forward_train(float *out, float *probs, const float *qkv, const float *mask,
                             const long *off, const int *seq_off, int S, int C, int NH)
{
    const int HD = C / NH;
#pragma omp parallel for schedule(dynamic, 1) if (off[S] * HD > PAR_MIN)
    for (int sh = 0; sh < S * NH; sh++) {
        int s = sh / NH;
        int h = sh % NH;
        int t0 = seq_off[s];
        int n = seq_off[s + 1] - t0;
        if (n == 0)
            continue;
        long blk = off[s] + (long)h * n * n;
        attention_head_train(out + (long)t0 * C + h * HD, probs + blk,
                             qkv + (long)t0 * 3 * C + h * HD, mask != NULL ? mask + blk : NULL,
                             n, C, HD);
    }
}

/* Per thread: the gradient wrt the probabilities (n, n) and the masked
 * probabilities (n, n). */
long attention_backward_scratch_floats(int max_len, int n_threads)
{
    return 2L * max_len * max_len * n_threads;
}

/* dp (n, n) = p * (dp - rowsum(dp * p)): the softmax backward, in place. */
static void softmax_backward_rows(float *dp, const float *p, int n)
{
    for (int i = 0; i < n; i++) {
        float *g = dp + (long)i * n;
        const float *pr = p + (long)i * n;
        float dot = 0.0f;
        for (int j = 0; j < n; j++)
            dot += g[j] * pr[j];
        for (int j = 0; j < n; j++)
            g[j] = pr[j] * (g[j] - dot);
    }
}

/* One head of one sequence: dq, dk, dv (rows stride 3C) from dout (rows
 * stride C). dp and pd are n x n scratch. */
static void attention_head_backward(float *dq, const float *dout, const float *q, const float *p,
                                    const float *mask, int n, int C, int HD, float *dp, float *pd)
{
    const int ld = 3 * C;
    const float *k = q + C;
    const float *v = q + 2 * C;
    float *dk = dq + C;
    float *dv = dq + 2 * C;
    const float scale = 1.0f / sqrtf((float)HD);
    const long nn = (long)n * n;
    /* gradient wrt the dropped-out probabilities: dout v^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, HD, 1.0f, dout, C, v, ld, 0.0f,
                dp, n);
    const float *used = p;
    if (mask != NULL) {
        for (long i = 0; i < nn; i++) {
            pd[i] = p[i] * mask[i];
            dp[i] *= mask[i];
        }
        used = pd;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, HD, n, 1.0f, used, n, dout, C, 0.0f,
                dv, ld);
    softmax_backward_rows(dp, p, n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, HD, n, scale, dp, n, k, ld, 0.0f,
                dq, ld);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, HD, n, scale, dp, n, q, ld, 0.0f, dk,
                ld);
}

/* The caller sized scratch for n_threads >= omp_get_max_threads() (the
 * team this region gets), with max_len at least the longest sequence. */
void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs,
                        const float *mask, const long *off, const int *seq_off, int S, int C,
                        int NH, float *scratch)
{
    const int HD = C / NH;
    int max_len = 0;
    for (int s = 0; s < S; s++) {
        int n = seq_off[s + 1] - seq_off[s];
        max_len = n > max_len ? n : max_len;
    }
    const long per_thread = attention_backward_scratch_floats(max_len, 1);
#pragma omp parallel for schedule(dynamic, 1) if (off[S] * HD > PAR_MIN)
    for (int sh = 0; sh < S * NH; sh++) {
        int s = sh / NH;
        int h = sh % NH;
        int t0 = seq_off[s];
        int n = seq_off[s + 1] - t0;
        if (n == 0)
            continue;
        long blk = off[s] + (long)h * n * n;
        float *dp = scratch + per_thread * omp_get_thread_num();
        float *pd = dp + (long)n * n;
        long row0 = (long)t0 * 3 * C + h * HD;
        attention_head_backward(dqkv + row0, dout + (long)t0 * C + h * HD, qkv + row0,
                                probs + blk, mask != NULL ? mask + blk : NULL, n, C, HD, dp, pd);
    }
}

/* ---- pooling and L2 normalisation -------------------------------------- */

void pool_backward(float *dx, const float *dpooled, const int *seq_off, int S, int C, int mode)
{
    const long T = seq_off[S];
    memset(dx, 0, sizeof(float) * (size_t)(T * C));
    for (int s = 0; s < S; s++) {
        int t0 = seq_off[s];
        int n = seq_off[s + 1] - t0;
        const float *g = dpooled + (long)s * C;
        if (n == 0)
            continue;
        if (mode == 1 || mode == 2) {
            int t = mode == 1 ? t0 : t0 + n - 1;
            memcpy(dx + (long)t * C, g, sizeof(float) * C);
            continue;
        }
        const float inv = 1.0f / (float)n;
        for (int t = t0; t < t0 + n; t++) {
            float *r = dx + (long)t * C;
            for (int c = 0; c < C; c++)
                r[c] = g[c] * inv;
        }
    }
}

void l2norm_forward_train(float *y, float *norm, const float *x, int S, int C)
{
    for (int s = 0; s < S; s++) {
        const float *r = x + (long)s * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++)
            ss += (double)r[c] * r[c];
        /* sentence-transformers: x / max(||x||, 1e-12) */
        double nrm = sqrt(ss);
        if (nrm < 1e-12)
            nrm = 1e-12;
        norm[s] = (float)nrm;
        float inv = (float)(1.0 / nrm);
        for (int c = 0; c < C; c++)
            y[(long)s * C + c] = r[c] * inv;
    }
}

void l2norm_backward(float *dx, const float *dy, const float *y, const float *norm, int S, int C)
{
    for (int s = 0; s < S; s++) {
        const float *g = dy + (long)s * C;
        const float *yr = y + (long)s * C;
        float *d = dx + (long)s * C;
        double dot = 0.0;
        for (int c = 0; c < C; c++)
            dot += (double)yr[c] * g[c];
        const float inv = 1.0f / norm[s];
        const float fdot = (float)dot;
        for (int c = 0; c < C; c++)
            d[c] = (g[c] - yr[c] * fdot) * inv;
    }
}

/* ---- cross-entropy ----------------------------------------------------- */

/* Rows are exponentiated in chunks of this many floats, in place in
 * dlogits or, without it, in a stack buffer. */
#define CE_CHUNK 256

/* Loss of one kept row; d (V, may alias row, or NULL) gets scale *
 * (softmax - onehot). */
static double cross_entropy_row(float *d, const float *row, int label, int V, float scale)
{
    float maxv = row[0];
    for (int j = 1; j < V; j++)
        maxv = row[j] > maxv ? row[j] : maxv;
    /* read before d overwrites it when d aliases row */
    const float target = row[label] - maxv;
    float local[CE_CHUNK];
    double sum = 0.0;
    for (int j0 = 0; j0 < V; j0 += CE_CHUNK) {
        int m = V - j0 < CE_CHUNK ? V - j0 : CE_CHUNK;
        float *buf = d != NULL ? d + j0 : local;
        for (int j = 0; j < m; j++)
            buf[j] = row[j0 + j] - maxv;
        exp_inplace(buf, m);
        for (int j = 0; j < m; j++)
            sum += buf[j];
    }
    if (d != NULL) {
        const float k = (float)(scale / sum);
        for (int j = 0; j < V; j++)
            d[j] *= k;
        d[label] -= scale;
    }
    return log(sum) - (double)target;
}

/* Labels >= V are treated like ignored rows rather than read out of
 * bounds. */
double softmax_cross_entropy(float *dlogits, const float *logits, const int *labels, int N,
                             int V, float scale)
{
    double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if ((long)N * V > PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *row = logits + (long)i * V;
        float *d = dlogits != NULL ? dlogits + (long)i * V : NULL;
        int label = labels[i];
        if (label < 0 || label >= V) {
            if (d != NULL)
                memset(d, 0, sizeof(float) * V);
            continue;
        }
        loss += cross_entropy_row(d, row, label, V, scale);
    }
    return loss;
}

double infonce_symmetric(float *sim, float *spare, const int *labels, int B, float weight)
{
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++)
            spare[(long)j * B + i] = sim[(long)i * B + j];
    const float scale = weight / (2.0f * (float)B);
    double loss = softmax_cross_entropy(sim, sim, labels, B, B, scale) +
                  softmax_cross_entropy(spare, spare, labels, B, B, scale);
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++)
            sim[(long)i * B + j] += spare[(long)j * B + i];
    return loss / (2.0 * B);
}
