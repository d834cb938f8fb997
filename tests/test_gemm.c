/* test_gemm.c: emb_gemm (AVX-512 fast path and OpenBLAS fallback) against a
 * double-precision reference, over a table of shapes that hit every tile
 * edge, with and without bias and GELU; plus calls from inside an OpenMP
 * parallel region, on one thread, and the packing API's errors. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "run_suite.h"
#include "gemm.h"
#include "ops.h"

/* ---- helpers ----------------------------------------------------------- */

/* Inputs: activations uniform in [-1, 1] (LayerNorm output is O(1)) and
 * weights uniform in [-1/sqrt(K), 1/sqrt(K)] (nn.Linear's initialisation),
 * so outputs are O(1) as in the encoder. With unit weights and K = 1536 the
 * outputs reach |50| and fp32 rounding alone (OpenBLAS's too) exceeds
 * 1e-5 of |ref| + 1 on near-zero outputs. */
static float w_scale(int k)
{
    return 1.0f / sqrtf((float)k);
}

typedef struct gemm_case {
    int m, n, k;
} gemm_case;

/* Shapes: degenerate, not multiples of the 6 x 64 tile or its 16-column
 * vectors, K = 1, the encoder's layers at small M, and sizes that need
 * several N blocks and (K > 1536) several K chunks. */
static const gemm_case cases[] = {
    {1, 1, 1},      {1, 1, 5},       {2, 3, 1},       {13, 37, 5},     {5, 17, 1},
    {7, 100, 33},   {6, 64, 384},    {64, 64, 64},    {200, 48, 16},   {3, 1, 7},
    {1, 1152, 384}, {130, 1536, 384}, {77, 384, 1536}, {29, 1153, 385}, {97, 15, 1031},
    {150, 700, 1100}, {5, 70, 1600},    {37, 130, 3100},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static float *random_floats(size_t n, unsigned *seed, float scale)
{
    float *p = malloc(n * sizeof(float) + 1);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * ((float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f);
    return p;
}

/* ref (m, n) = in W^T + bias, then GELU, in double. */
static double *reference(const float *in, const float *w, const float *bias, int m, int n, int k,
                         int epilogue)
{
    double *ref = malloc(sizeof(double) * (size_t)m * n);
    ck_assert_ptr_nonnull(ref);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double acc = bias != NULL ? bias[j] : 0.0;
            for (int kk = 0; kk < k; kk++)
                acc += (double)in[(size_t)i * k + kk] * w[(size_t)j * k + kk];
            if (epilogue == EMB_EPI_GELU)
                acc = 0.5 * acc * (1.0 + erf(acc / sqrt(2.0)));
            ref[(size_t)i * n + j] = acc;
        }
    }
    return ref;
}

/* max over elements of |c - ref| / (|ref| + 1) */
static double max_rel_err(const float *c, const double *ref, size_t count)
{
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = fabs((double)c[i] - ref[i]) / (fabs(ref[i]) + 1.0);
        if (!(d <= worst))
            worst = d; /* also catches NaN */
    }
    return worst;
}

#define GUARD 37
#define GUARD_VALUE 12345.0f

/* Output buffer of m*n floats followed by GUARD sentinels, NaN-filled so
 * that an element the GEMM forgets to write fails the comparison. */
static float *out_alloc(int m, int n)
{
    size_t count = (size_t)m * n;
    float *out = malloc(sizeof(float) * (count + GUARD));
    ck_assert_ptr_nonnull(out);
    for (size_t i = 0; i < count; i++)
        out[i] = NAN;
    for (int i = 0; i < GUARD; i++)
        out[count + i] = GUARD_VALUE;
    return out;
}

static void guard_check(const float *out, int m, int n)
{
    for (int i = 0; i < GUARD; i++)
        ck_assert_msg(out[(size_t)m * n + i] == GUARD_VALUE, "write past the end of out");
}

/* Runs one case on pw (fast or fallback) for all four bias/epilogue
 * combinations and checks each against the reference. */
static void check_case(const gemm_case *gc, const emb_gemm_w *pw, const float *in,
                       const float *w, const float *bias, const char *path)
{
    for (int variant = 0; variant < 4; variant++) {
        const float *b = (variant & 1) ? bias : NULL;
        int epi = (variant & 2) ? EMB_EPI_GELU : EMB_EPI_NONE;
        double *ref = reference(in, w, b, gc->m, gc->n, gc->k, epi);
        float *out = out_alloc(gc->m, gc->n);
        emb_gemm(out, in, gc->m, pw, b, epi);
        double err = max_rel_err(out, ref, (size_t)gc->m * gc->n);
        ck_assert_msg(err <= 1e-5, "%s M=%d N=%d K=%d bias=%d gelu=%d: max rel err %g", path,
                      gc->m, gc->n, gc->k, b != NULL, epi, err);
        guard_check(out, gc->m, gc->n);
        free(out);
        free(ref);
    }
}

/* ---- tests ------------------------------------------------------------- */

START_TEST(test_fast_path_shapes)
{
    if (!emb_gemm_fast_path())
        return; /* main says so once */
    const gemm_case *gc = &cases[_i];
    unsigned seed = 1000u + (unsigned)_i;
    float *in = random_floats((size_t)gc->m * gc->k, &seed, 1.0f);
    float *w = random_floats((size_t)gc->n * gc->k, &seed, w_scale(gc->k));
    float *bias = random_floats((size_t)gc->n, &seed, 1.0f);
    emb_gemm_w pw;
    emb_err err;
    ck_assert_int_eq(emb_gemm_pack(&pw, w, gc->n, gc->k, &err), 0);
    ck_assert_ptr_nonnull(pw.packed);
    ck_assert_uint_ge(pw.packed_floats, (size_t)gc->n * gc->k);
    check_case(gc, &pw, in, w, bias, "fast");
    emb_gemm_free(&pw);
    ck_assert_ptr_null(pw.packed);
    free(in);
    free(w);
    free(bias);
}
END_TEST

START_TEST(test_fallback_shapes)
{
    const gemm_case *gc = &cases[_i];
    unsigned seed = 2000u + (unsigned)_i;
    float *in = random_floats((size_t)gc->m * gc->k, &seed, 1.0f);
    float *w = random_floats((size_t)gc->n * gc->k, &seed, w_scale(gc->k));
    float *bias = random_floats((size_t)gc->n, &seed, 1.0f);
    /* packed == NULL always takes the OpenBLAS path */
    emb_gemm_w pw = {.n = gc->n, .k = gc->k, .w = w};
    check_case(gc, &pw, in, w, bias, "openblas");
    free(in);
    free(w);
    free(bias);
}
END_TEST

/* Random shapes (fixed seed), fast path and fallback. */
START_TEST(test_random_shapes)
{
    unsigned seed = 4242u + (unsigned)_i;
    gemm_case gc;
    gc.m = 1 + rand_r(&seed) % 100;
    gc.n = 1 + rand_r(&seed) % 200;
    gc.k = 1 + rand_r(&seed) % 600;
    float *in = random_floats((size_t)gc.m * gc.k, &seed, 1.0f);
    float *w = random_floats((size_t)gc.n * gc.k, &seed, w_scale(gc.k));
    float *bias = random_floats((size_t)gc.n, &seed, 1.0f);
    emb_gemm_w blas = {.n = gc.n, .k = gc.k, .w = w};
    check_case(&gc, &blas, in, w, bias, "openblas");
    if (emb_gemm_fast_path()) {
        emb_gemm_w pw;
        emb_err err;
        ck_assert_int_eq(emb_gemm_pack(&pw, w, gc.n, gc.k, &err), 0);
        check_case(&gc, &pw, in, w, bias, "fast");
        emb_gemm_free(&pw);
    }
    free(in);
    free(w);
    free(bias);
}
END_TEST

/* Both paths on the same inputs agree to 1e-5 relative. */
START_TEST(test_paths_agree)
{
    if (!emb_gemm_fast_path())
        return;
    const int m = 301, n = 1536, k = 384;
    unsigned seed = 7;
    float *in = random_floats((size_t)m * k, &seed, 1.0f);
    float *w = random_floats((size_t)n * k, &seed, w_scale(k));
    float *bias = random_floats((size_t)n, &seed, 1.0f);
    emb_gemm_w fast;
    emb_err err;
    ck_assert_int_eq(emb_gemm_pack(&fast, w, n, k, &err), 0);
    emb_gemm_w blas = {.n = n, .k = k, .w = w};
    float *a = out_alloc(m, n);
    float *b = out_alloc(m, n);
    emb_gemm(a, in, m, &fast, bias, EMB_EPI_GELU);
    emb_gemm(b, in, m, &blas, bias, EMB_EPI_GELU);
    double worst = 0.0;
    for (size_t i = 0; i < (size_t)m * n; i++) {
        double d = fabs((double)a[i] - b[i]) / (fabs((double)b[i]) + 1.0);
        worst = d > worst ? d : worst;
    }
    ck_assert_msg(worst <= 1e-5, "paths differ by %g", worst);
    emb_gemm_free(&fast);
    free(a);
    free(b);
    free(in);
    free(w);
    free(bias);
}
END_TEST

/* GELU over a wide range of pre-activations (bias only, W = 0): the
 * libmvec erff path must match the exact formula closely. */
START_TEST(test_gelu_range)
{
    const int m = 3, k = 2, n = 4001;
    float *w = calloc((size_t)n * k, sizeof(float));
    float *bias = malloc(sizeof(float) * n);
    float *in = calloc((size_t)m * k, sizeof(float));
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(bias);
    ck_assert_ptr_nonnull(in);
    for (int j = 0; j < n; j++)
        bias[j] = -10.0f + 20.0f * (float)j / (float)(n - 1);
    emb_gemm_w pw;
    emb_err err;
    ck_assert_int_eq(emb_gemm_pack(&pw, w, n, k, &err), 0);
    float *out = out_alloc(m, n);
    emb_gemm(out, in, m, &pw, bias, EMB_EPI_GELU);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double x = bias[j];
            double ref = 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
            double got = out[(size_t)i * n + j];
            /* a few float ulps of the result, plus 0.5 |x| times 3 ulps
             * of erf near +-1 (1 + erf cancels for negative x) */
            double tol = 4.0 * 0x1p-24 * fabs(ref) + 0.5 * fabs(x) * 3.0 * 0x1p-24;
            ck_assert_msg(fabs(got - ref) <= tol, "gelu(%g) = %.9g, want %.9g", x, got, ref);
        }
    }
    guard_check(out, m, n);
    emb_gemm_free(&pw);
    free(out);
    free(w);
    free(bias);
    free(in);
}
END_TEST

/* Two threads, each running its own GEMM inside a parallel region: the
 * calls must run serially on their thread and give the right answers. */
START_TEST(test_inside_parallel)
{
    const gemm_case shapes[2] = {{130, 1536, 384}, {77, 384, 1536}};
    float *in[2], *w[2], *bias[2], *out[2];
    double *ref[2];
    emb_gemm_w pw[2];
    emb_err err;
    unsigned seed = 99;
    for (int t = 0; t < 2; t++) {
        const gemm_case *gc = &shapes[t];
        in[t] = random_floats((size_t)gc->m * gc->k, &seed, 1.0f);
        w[t] = random_floats((size_t)gc->n * gc->k, &seed, w_scale(gc->k));
        bias[t] = random_floats((size_t)gc->n, &seed, 1.0f);
        out[t] = out_alloc(gc->m, gc->n);
        ref[t] = reference(in[t], w[t], bias[t], gc->m, gc->n, gc->k, t == 0 ? EMB_EPI_GELU : 0);
        ck_assert_int_eq(emb_gemm_pack(&pw[t], w[t], gc->n, gc->k, &err), 0);
    }
    int ran[2] = {0, 0};
#pragma omp parallel num_threads(2)
    {
        int t = omp_get_thread_num();
        /* with fewer threads than asked, thread 0 does both */
        for (int job = t; job < 2; job += omp_get_num_threads()) {
            emb_gemm(out[job], in[job], shapes[job].m, &pw[job], bias[job],
                     job == 0 ? EMB_EPI_GELU : EMB_EPI_NONE);
            ran[job] = 1;
        }
    }
    for (int t = 0; t < 2; t++) {
        const gemm_case *gc = &shapes[t];
        ck_assert(ran[t]);
        double e = max_rel_err(out[t], ref[t], (size_t)gc->m * gc->n);
        ck_assert_msg(e <= 1e-5, "job %d: max rel err %g", t, e);
        guard_check(out[t], gc->m, gc->n);
        emb_gemm_free(&pw[t]);
        free(in[t]);
        free(w[t]);
        free(bias[t]);
        free(out[t]);
        free(ref[t]);
    }
}
END_TEST

/* One OpenMP thread, and more threads than the work can use. */
START_TEST(test_thread_counts)
{
    const gemm_case gc = {97, 200, 300};
    unsigned seed = 5;
    float *in = random_floats((size_t)gc.m * gc.k, &seed, 1.0f);
    float *w = random_floats((size_t)gc.n * gc.k, &seed, w_scale(gc.k));
    float *bias = random_floats((size_t)gc.n, &seed, 1.0f);
    double *ref = reference(in, w, bias, gc.m, gc.n, gc.k, EMB_EPI_NONE);
    emb_gemm_w pw;
    emb_err err;
    ck_assert_int_eq(emb_gemm_pack(&pw, w, gc.n, gc.k, &err), 0);
    const int saved = omp_get_max_threads();
    const int counts[] = {1, 3, 8};
    for (int c = 0; c < 3; c++) {
        omp_set_num_threads(counts[c]);
        float *out = out_alloc(gc.m, gc.n);
        emb_gemm(out, in, gc.m, &pw, bias, EMB_EPI_NONE);
        double e = max_rel_err(out, ref, (size_t)gc.m * gc.n);
        ck_assert_msg(e <= 1e-5, "%d threads: max rel err %g", counts[c], e);
        guard_check(out, gc.m, gc.n);
        free(out);
    }
    omp_set_num_threads(saved);
    emb_gemm_free(&pw);
    free(in);
    free(w);
    free(bias);
    free(ref);
}
END_TEST

START_TEST(test_pack_errors)
{
    emb_gemm_w pw;
    emb_err err;
    float w[4] = {1, 2, 3, 4};
    err.msg[0] = '\0';
    ck_assert_int_eq(emb_gemm_pack(&pw, w, 0, 4, &err), -1);
    ck_assert_msg(strstr(err.msg, "gemm") != NULL, "message: %s", err.msg);
    ck_assert_int_eq(emb_gemm_pack(&pw, w, 4, 0, &err), -1);
    ck_assert_int_eq(emb_gemm_pack(&pw, w, -1, 4, &err), -1);
    ck_assert_int_eq(emb_gemm_pack(&pw, NULL, 2, 2, &err), -1);
    ck_assert_ptr_null(pw.packed);
    emb_gemm_free(&pw); /* zeroed struct: no-op */
    ck_assert_int_eq(emb_gemm_pack(&pw, w, 2, 2, NULL), 0);
    ck_assert_ptr_eq(pw.w, w);
    ck_assert_int_eq(pw.n, 2);
    ck_assert_int_eq(pw.k, 2);
    /* m == 0 touches nothing */
    float out[1] = {GUARD_VALUE};
    emb_gemm(out, w, 0, &pw, NULL, EMB_EPI_GELU);
    ck_assert(out[0] == GUARD_VALUE);
    emb_gemm_free(&pw);
    ck_assert_ptr_null(pw.packed);
    ck_assert_ptr_null(pw.w);
}
END_TEST

/* ---- int8 path ---------------------------------------------------------- */

/* Inputs on an integer grid the quantizers map exactly (every row of in
 * spans lo .. lo + 255 with 0 inside: scale 1, zero point -lo; every row of
 * W reaches +-127: scale 1), integer bias: int8 results must equal the
 * exact ones, for every tile edge and both epilogues' inputs. */
START_TEST(test_int8_exact)
{
    if (!emb_gemm_int8_available())
        return;
    const gemm_case *gc = &cases[_i];
    unsigned seed = 9000u + (unsigned)_i;
    float *in = malloc(sizeof(float) * (size_t)gc->m * gc->k + 1);
    float *w = malloc(sizeof(float) * (size_t)gc->n * gc->k + 1);
    float *bias = malloc(sizeof(float) * (size_t)gc->n);
    ck_assert(in != NULL && w != NULL && bias != NULL);
    for (int r = 0; r < gc->m; r++) {
        const int lo = -(int)(rand_r(&seed) % 256);
        float *row = in + (size_t)r * gc->k;
        for (int kk = 0; kk < gc->k; kk++)
            row[kk] = (float)(lo + (int)(rand_r(&seed) % 256));
        row[0] = (float)lo; /* the range: lo .. lo + 255 (0 is inside) */
        if (gc->k > 1)
            row[gc->k - 1] = (float)(lo + 255);
        else if (lo != 0 && lo != -255)
            row[0] = 0.0f; /* one value: 0 .. 0, nothing to quantize */
    }
    for (int c = 0; c < gc->n; c++) {
        float *row = w + (size_t)c * gc->k;
        for (int kk = 0; kk < gc->k; kk++)
            row[kk] = (float)((int)(rand_r(&seed) % 255) - 127);
        row[rand_r(&seed) % gc->k] = rand_r(&seed) % 2 ? 127.0f : -127.0f;
        bias[c] = (float)((int)(rand_r(&seed) % 2001) - 1000);
    }
    emb_gemm_w pw;
    emb_err err;
    ck_assert_int_eq(emb_gemm_pack_int8(&pw, w, gc->n, gc->k, &err), 0);
    float *out = out_alloc(gc->m, gc->n);
    emb_gemm(out, in, gc->m, &pw, bias, EMB_EPI_NONE);
    double *ref = reference(in, w, bias, gc->m, gc->n, gc->k, EMB_EPI_NONE);
    for (size_t i = 0; i < (size_t)gc->m * gc->n; i++) {
        /* |sums| stay below 2^24 for these shapes, so float holds them exactly */
        if (fabs(ref[i]) < 16777216.0)
            ck_assert_msg(out[i] == (float)ref[i], "%d x %d x %d: out[%zu] %g, exact %g", gc->m,
                          gc->n, gc->k, i, out[i], ref[i]);
    }
    guard_check(out, gc->m, gc->n);
    emb_gemm_free(&pw);
    ck_assert_ptr_null(pw.packed_i8);
    free(out);
    free(ref);
    free(in);
    free(w);
    free(bias);
}
END_TEST

/* Encoder-like values: int8 within a few per cent of the exact result,
 * measured against the size of the outputs, with bias and GELU; on one
 * thread, on the pool (few rows) and on the OpenMP team. */
START_TEST(test_int8_accuracy)
{
    if (!emb_gemm_int8_available())
        return;
    const int ms[] = {1, 7, 30, 301};
    const gemm_case shapes[] = {{0, 1152, 384}, {0, 1536, 384}, {0, 384, 1536}, {0, 37, 5}};
    unsigned seed = 77;
    for (int si = 0; si < 4; si++) {
        for (int mi = 0; mi < 4; mi++) {
            const int m = ms[mi], n = shapes[si].n, k = shapes[si].k;
            float *in = random_floats((size_t)m * k, &seed, 1.0f);
            float *w = random_floats((size_t)n * k, &seed, w_scale(k));
            float *bias = random_floats((size_t)n, &seed, 0.1f);
            emb_gemm_w pw;
            emb_err err;
            ck_assert_int_eq(emb_gemm_pack_int8(&pw, w, n, k, &err), 0);
            for (int epi = 0; epi < 2; epi++) {
                double *ref = reference(in, w, bias, m, n, k, epi);
                float *out = out_alloc(m, n);
                emb_gemm(out, in, m, &pw, bias, epi);
                double se = 0.0, sr = 0.0;
                for (size_t i = 0; i < (size_t)m * n; i++) {
                    se += (out[i] - ref[i]) * (out[i] - ref[i]);
                    sr += ref[i] * ref[i];
                }
                const double rel = sqrt(se / (sr + 1e-30));
                ck_assert_msg(rel < 0.03, "%d x %d x %d epi %d: rms error %.4f of rms output", m,
                              n, k, epi, rel);
                guard_check(out, m, n);
                free(out);
                free(ref);
            }
            emb_gemm_free(&pw);
            free(in);
            free(w);
            free(bias);
        }
    }
}
END_TEST

START_TEST(test_int8_pack_errors)
{
    emb_gemm_w pw;
    emb_err err;
    float w[4] = {1, 2, 3, 4};
    ck_assert_int_eq(emb_gemm_pack_int8(&pw, w, 0, 4, &err), -1);
    ck_assert_int_eq(emb_gemm_pack_int8(&pw, NULL, 2, 2, &err), -1);
    ck_assert_ptr_null(pw.packed_i8);
    if (!emb_gemm_int8_available()) {
        ck_assert_int_eq(emb_gemm_pack_int8(&pw, w, 2, 2, &err), -1);
        ck_assert_msg(strstr(err.msg, "VNNI") != NULL, "message: %s", err.msg);
        return;
    }
    /* all-zero weights and input rows: scale 1, zero outputs plus bias */
    float zeros[6] = {0};
    const float bias[2] = {0.5f, -1.5f};
    ck_assert_int_eq(emb_gemm_pack_int8(&pw, zeros, 2, 3, &err), 0);
    float out[4];
    emb_gemm(out, zeros, 2, &pw, bias, EMB_EPI_NONE);
    ck_assert(out[0] == 0.5f && out[1] == -1.5f && out[2] == 0.5f && out[3] == -1.5f);
    emb_gemm_free(&pw);
}
END_TEST

/* emb_gemm_ln equals emb_gemm followed by residual_layernorm_forward: few
 * rows (the pool), many rows and several N blocks (the team), K > one
 * chunk, every path (fast, OpenBLAS, int8). */
START_TEST(test_fused_layernorm)
{
    const gemm_case shapes[] = {{5, 384, 384}, {30, 384, 1536}, {301, 384, 1536},
                                {200, 384, 384}, {97, 130, 3100}};
    unsigned seed = 31;
    for (int si = 0; si < 5; si++) {
        const int m = shapes[si].m, n = shapes[si].n, k = shapes[si].k;
        float *in = random_floats((size_t)m * k, &seed, 1.0f);
        float *w = random_floats((size_t)n * k, &seed, w_scale(k));
        float *bias = random_floats((size_t)n, &seed, 0.5f);
        float *lw = random_floats((size_t)n, &seed, 1.0f);
        float *lb = random_floats((size_t)n, &seed, 1.0f);
        float *x0 = random_floats((size_t)m * n, &seed, 2.0f);
        for (int path = 0; path < 3; path++) {
            emb_gemm_w pw = {.n = n, .k = k, .w = w};
            emb_err err;
            if (path == 0 && (!emb_gemm_fast_path() || emb_gemm_pack(&pw, w, n, k, &err) != 0))
                continue;
            if (path == 2 &&
                (!emb_gemm_int8_available() || emb_gemm_pack_int8(&pw, w, n, k, &err) != 0))
                continue;
            float *want = malloc(sizeof(float) * (size_t)m * n);
            float *got = malloc(sizeof(float) * (size_t)m * n);
            float *tmp = out_alloc(m, n);
            ck_assert(want != NULL && got != NULL);
            memcpy(want, x0, sizeof(float) * (size_t)m * n);
            memcpy(got, x0, sizeof(float) * (size_t)m * n);
            emb_gemm(tmp, in, m, &pw, bias, EMB_EPI_NONE);
            residual_layernorm_forward(want, tmp, NULL, lw, lb, m, n, 1e-12f);
            const emb_layernorm ln = {got, lw, lb, 1e-12f};
            emb_gemm_ln(tmp, in, m, &pw, bias, &ln);
            guard_check(tmp, m, n);
            for (size_t i = 0; i < (size_t)m * n; i++)
                ck_assert_msg(fabsf(got[i] - want[i]) <= 1e-5f * (1.0f + fabsf(want[i])),
                              "%d x %d x %d path %d: x[%zu] %g vs %g", m, n, k, path, i, got[i],
                              want[i]);
            free(want);
            free(got);
            free(tmp);
            emb_gemm_free(&pw);
        }
        free(in);
        free(w);
        free(bias);
        free(lw);
        free(lb);
        free(x0);
    }
}
END_TEST

static Suite *gemm_suite(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("shapes");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_fast_path_shapes, 0, N_CASES);
    tcase_add_loop_test(tc, test_fallback_shapes, 0, N_CASES);
    tcase_add_loop_test(tc, test_random_shapes, 0, 12);
    tcase_add_test(tc, test_paths_agree);
    tcase_add_test(tc, test_gelu_range);
    tcase_add_test(tc, test_fused_layernorm);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_inside_parallel);
    tcase_add_test(tc, test_thread_counts);
    suite_add_tcase(s, tc);

    tc = tcase_create("api");
    tcase_add_test(tc, test_pack_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("int8");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_int8_exact, 0, N_CASES);
    tcase_add_test(tc, test_int8_accuracy);
    tcase_add_test(tc, test_int8_pack_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (!emb_gemm_fast_path())
        fprintf(stderr, "test_gemm: no AVX-512, or EMBEDD_GEMM=openblas: "
                        "only the OpenBLAS path is tested\n");
    return run_suite(gemm_suite());
}
