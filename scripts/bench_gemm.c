/* bench_gemm.c: emb_gemm against OpenBLAS on the encoder's layer shapes.
 *
 *   make bench-gemm [BENCH_GEMM_ARGS="-r 5 512 4096"]
 *   env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=SkylakeX OMP_NUM_THREADS=2 \
 *       build/bench_gemm [-p] [-r RUNS] [-w] [-n] [-s K,N[,gelu]]... [M...]
 *
 * For each M (default 512 2048 4096 16384) and shape, the two sides run
 * alternately, REPS times each, and the best time of each side is kept
 * (GFLOP/s = 2 M N K / time; the epilogue is not counted as flops). With
 * -r RUNS the whole table is measured RUNS times, round after round, and
 * the medians of the per-run figures (and of the per-run ratios) are
 * printed: the machine is shared and noisy. -s replaces the default shapes
 * (bge-small's four layers) by its own, e.g. -s 768,3072,gelu. -p only
 * prints the fp32 FMA peak of one thread and of all (24 chains of AVX-512
 * FMAs): the clock under AVX-512 load sets it, not the nominal one.
 *
 * Strict alternation means each side starts with caches full of the other
 * side's data (as in the encoder, where other ops run between the GEMMs);
 * this costs OpenBLAS, which re-packs W and in on every call, more (5-20%
 * at M = 512) than emb_gemm. -w runs each side once, untimed, just before
 * each of its timed calls: warm caches for both. -n drops the bias of the
 * plain layers on both sides (matmul_forward then is cblas_sgemm alone), to
 * compare the GEMM kernels without matmul_forward's serial bias copy.
 *
 * The OpenBLAS side is what the encoder did before emb_gemm:
 * matmul_forward (bias copied into out, beta = 1) and, for the GELU layer,
 * a separate bias_gelu_forward pass (libmvec AVX2 erff). Inputs are random,
 * activations in [-1, 1) and weights in [-1/sqrt(K), 1/sqrt(K)); the worst
 * relative difference |emb - blas| / (|blas| + 1) is printed too. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "gemm.h"
#include "ops.h"

#define REPS 5

static int warm_calls = 0; /* -w: 1 */
static int no_bias = 0;    /* -n: 1 */

typedef struct shape {
    const char *name;
    int k, n, gelu;
} shape;

static shape shapes[16] = {
    {"qkv      384->1152", 384, 1152, 0},
    {"attn_out 384->384", 384, 384, 0},
    {"ffn_up   384->1536", 384, 1536, 0},
    {"ffn_up+gelu", 384, 1536, 1},
    {"ffn_down 1536->384", 1536, 384, 0},
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *random_floats(size_t n, unsigned *seed, float scale)
{
    float *p = malloc(n * sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = scale * ((float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f);
    return p;
}

static void run_blas(float *out, const float *in, int m, const shape *s, const float *w,
                     const float *bias)
{
    if (s->gelu) {
        matmul_forward(out, in, w, NULL, m, s->k, s->n);
        bias_gelu_forward(out, bias, m, s->n);
    } else {
        matmul_forward(out, in, w, bias, m, s->k, s->n);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define MAX_M 16
#define MAX_RUNS 64
#define MAX_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))
static int n_shapes = 5;
static char shape_names[MAX_SHAPES][32];

typedef struct result {
    double emb[MAX_RUNS], blas[MAX_RUNS], ratio[MAX_RUNS];
    double maxrel;
} result;

/* One measurement: best of REPS alternating runs of each side. */
static void measure(int m, const shape *s, unsigned *seed, result *res, int run)
{
    float *in = random_floats((size_t)m * s->k, seed, 1.0f);
    float *w = random_floats((size_t)s->n * s->k, seed, 1.0f / sqrtf((float)s->k));
    float *bias_buf = random_floats((size_t)s->n, seed, 1.0f);
    /* -n: plain GEMM on both sides (the GELU layer keeps its bias) */
    const float *bias = no_bias && !s->gelu ? NULL : bias_buf;
    float *out_e = calloc((size_t)m * s->n, sizeof(float));
    float *out_b = calloc((size_t)m * s->n, sizeof(float));
    emb_gemm_w pw;
    emb_err err;
    if (out_e == NULL || out_b == NULL || emb_gemm_pack(&pw, w, s->n, s->k, &err) != 0) {
        fprintf(stderr, "setup failed\n");
        exit(1);
    }
    const int epi = s->gelu ? EMB_EPI_GELU : EMB_EPI_NONE;
    /* warm up both */
    emb_gemm(out_e, in, m, &pw, bias, epi);
    run_blas(out_b, in, m, s, w, bias);
    double best_e = 1e30, best_b = 1e30;
    for (int r = 0; r < REPS; r++) {
        /* with warm_calls, each side first runs untimed right before its
         * timed call, so neither pays for the other evicting its data */
        for (int c = 0; c < warm_calls; c++)
            emb_gemm(out_e, in, m, &pw, bias, epi);
        double t0 = now();
        emb_gemm(out_e, in, m, &pw, bias, epi);
        double t1 = now();
        for (int c = 0; c < warm_calls; c++)
            run_blas(out_b, in, m, s, w, bias);
        double t2 = now();
        run_blas(out_b, in, m, s, w, bias);
        double t3 = now();
        if (t1 - t0 < best_e)
            best_e = t1 - t0;
        if (t3 - t2 < best_b)
            best_b = t3 - t2;
    }
    for (size_t i = 0; i < (size_t)m * s->n; i++) {
        double d = fabs((double)out_e[i] - out_b[i]) / (fabs((double)out_b[i]) + 1.0);
        if (!(d <= res->maxrel))
            res->maxrel = d;
    }
    const double flops = 2.0 * m * s->n * s->k;
    res->emb[run] = flops / best_e * 1e-9;
    res->blas[run] = flops / best_b * 1e-9;
    res->ratio[run] = best_b / best_e;
    emb_gemm_free(&pw);
    free(in);
    free(w);
    free(bias_buf);
    free(out_e);
    free(out_b);
}

/* ---- -p: the FMA peak --------------------------------------------------- */

/* 24 independent chains of 16-lane FMAs (enough to hide the latency on two
 * FMA ports), iters steps each; returns a value that depends on all of
 * them, so nothing is optimised away. */
__attribute__((target("avx512f,fma"), noinline)) static float fma_chains(long iters)
{
    typedef float v16 __attribute__((vector_size(64)));
    v16 acc[24];
    const v16 mul = (v16){0} + 1.0000001f, add = (v16){0} + 1e-7f;
    for (int i = 0; i < 24; i++)
        acc[i] = (v16){0} + (float)i;
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++)
            acc[i] = __builtin_ia32_vfmaddps512_mask(acc[i], mul, add, (short)-1, 4);
    }
    float sum = 0.0f;
    for (int i = 0; i < 24; i++)
        sum += acc[i][0];
    return sum;
}

/* Prints the fp32 FMA peak (AVX-512) of 1 thread and of all OpenMP
 * threads, best of 5: the ceiling that GFLOP/s figures compare with. The
 * clock under AVX-512 load, not the nominal one, sets it. */
static int print_fma_peak(void)
{
    if (!__builtin_cpu_supports("avx512f")) {
        printf("fma peak: no AVX-512 on this CPU\n");
        return 0;
    }
    const long iters = 20000000;
    const int nt = omp_get_max_threads();
    for (int threads = 1; threads <= nt; threads = threads == nt ? nt + 1 : nt) {
        double best = 0.0;
        float sink = 0.0f;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
            sink += fma_chains(iters);
            double gf = threads * iters * 24.0 * 32.0 / (omp_get_wtime() - t0) / 1e9;
            best = gf > best ? gf : best;
        }
        printf("fp32 FMA peak, AVX-512, %d thread%s: %.1f GFLOP/s (%g)\n", threads,
               threads == 1 ? "" : "s", best, (double)sink);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int ms[MAX_M] = {512, 2048, 4096, 16384};
    int nm = 4, runs = 1, custom_m = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            runs = atoi(argv[++i]);
            if (runs < 1 || runs > MAX_RUNS) {
                fprintf(stderr, "-r: 1..%d\n", MAX_RUNS);
                return 2;
            }
        } else if (strcmp(argv[i], "-p") == 0) {
            return print_fma_peak();
        } else if (strcmp(argv[i], "-n") == 0) {
            no_bias = 1;
        } else if (strcmp(argv[i], "-w") == 0) {
            warm_calls = 1;
        } else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            /* -s K,N[,gelu]: replaces the default shapes */
            static int custom_shapes = 0;
            shape sh = {NULL, 0, 0, 0};
            char gelu[8] = "";
            if (!custom_shapes)
                n_shapes = 0;
            custom_shapes = 1;
            if (sscanf(argv[++i], "%d,%d,%7s", &sh.k, &sh.n, gelu) < 2 || sh.k < 1 || sh.n < 1 ||
                n_shapes == MAX_SHAPES) {
                fprintf(stderr, "-s K,N[,gelu]\n");
                return 2;
            }
            sh.gelu = strcmp(gelu, "gelu") == 0;
            snprintf(shape_names[n_shapes], sizeof shape_names[0], "%d->%d%s", sh.k, sh.n,
                     sh.gelu ? "+gelu" : "");
            sh.name = shape_names[n_shapes];
            shapes[n_shapes++] = sh;
        } else if (atoi(argv[i]) > 0 && nm < MAX_M) {
            if (!custom_m)
                nm = 0;
            custom_m = 1;
            ms[nm++] = atoi(argv[i]);
        } else {
            fprintf(stderr, "usage: %s [-p] [-r RUNS] [-w] [-n] [-s K,N[,gelu]]... [M...]\n", argv[0]);
            return 2;
        }
    }
    const char *core = getenv("OPENBLAS_CORETYPE");
    printf("emb_gemm fast path: %s; OpenMP threads: %d; OPENBLAS_CORETYPE=%s; %s\n",
           emb_gemm_fast_path() ? "AVX-512" : "no (OpenBLAS)", omp_get_max_threads(),
           core != NULL ? core : "(unset)", openblas_get_config());
    static result res[MAX_M][MAX_SHAPES];
    unsigned seed = 1234;
    for (int run = 0; run < runs; run++) {
        for (int mi = 0; mi < nm; mi++) {
            for (int si = 0; si < n_shapes; si++)
                measure(ms[mi], &shapes[si], &seed, &res[mi][si], run);
        }
        fprintf(stderr, "run %d/%d done\n", run + 1, runs);
    }
    printf("%s of %d run%s, each the best of %d alternating calls per side%s\n",
           runs > 1 ? "median" : "result", runs, runs > 1 ? "s" : "", REPS,
           warm_calls ? " (each after an untimed warm-up call, -w)" : "");
    if (no_bias)
        printf("no bias except on the GELU layer (-n)\n");
    printf("%-20s %6s %10s %10s %7s %9s\n", "shape", "M", "emb GF/s", "blas GF/s", "ratio",
           "max rel");
    for (int mi = 0; mi < nm; mi++) {
        for (int si = 0; si < n_shapes; si++) {
            result *r = &res[mi][si];
            printf("%-20s %6d %10.1f %10.1f %7.3f %9.1e\n", shapes[si].name, ms[mi],
                   median(r->emb, runs), median(r->blas, runs), median(r->ratio, runs),
                   r->maxrel);
        }
    }
    return 0;
}
