/* ops_simd.h: what the kernels of ops.c and ops_train.c share (private to
 * model/).
 *
 * HOT_CLONES: hot loops are compiled for several instruction sets and
 * picked at load time (GCC function multiversioning), so one binary runs
 * everywhere and still uses AVX-512 where the CPU has it. Not under
 * ThreadSanitizer: its instrumented ifunc resolvers run before its runtime
 * is up and crash. */
#ifndef EMBEDD_OPS_SIMD_H
#define EMBEDD_OPS_SIMD_H

#include <math.h>

#if defined(__x86_64__) && defined(__GLIBC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define HOT_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define HOT_CLONES
#endif

/* Mean and 1/sqrt(variance + eps) of one row of C values (LayerNorm's
 * statistics). Always inlined, so each HOT_CLONES caller vectorises it for
 * its own instruction set. */
static inline __attribute__((always_inline)) void row_mean_rstd(const float *x, int C, float eps,
                                                                float *mean_out, float *rstd_out)
{
    float mean = 0.0f;
#pragma omp simd reduction(+ : mean)
    for (int c = 0; c < C; c++)
        mean += x[c];
    mean /= (float)C;
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; c++) {
        float d = x[c] - mean;
        var += d * d;
    }
    var /= (float)C;
    *mean_out = mean;
    *rstd_out = 1.0f / sqrtf(var + eps);
}

#endif
