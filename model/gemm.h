/* gemm.h: single-precision GEMM against constant, pre-packed weights.
 *
 *   out (M, N) = in (M, K) W^T + bias (N), then an optional epilogue,
 *
 * with W in PyTorch's nn.Linear layout (N, K) row-major, out and in
 * row-major and contiguous (ldo = N, ldi = K). This is every dense layer of
 * the encoder:
 *
 *   QKV          emb_gemm(qkv, x,   T, &qkvw,    qkvb, EMB_EPI_NONE)  K=C, N=3C
 *   attn output  emb_gemm_ln(tmp, att, T, &attn_ow, attn_ob, &ln1)   K=C, N=C
 *   FFN up       emb_gemm(ffn, x,   T, &fcw,     fcb,  EMB_EPI_GELU)  K=C, N=I
 *   FFN down     emb_gemm_ln(tmp, ffn, T, &projw, projb, &ln2)        K=I, N=C
 *
 * (emb_gemm_ln: then x = LayerNorm(x + tmp), fused; see below.)
 *
 * Fast path: on CPUs with AVX-512 F/BW/VL, emb_gemm_pack copies W once into
 * the micro-kernel's layout (panels of 64 outputs, zero padded: about
 * n * k floats more memory per weight) and emb_gemm runs a register-blocked
 * AVX-512 kernel on OpenMP threads, with bias and exact-erf GELU applied to
 * the accumulators before the output tile is stored.
 *
 * Fallback: everywhere else, or when the environment has
 * EMBEDD_GEMM=openblas (read once, at the first call of any function here;
 * for A/B tests), nothing is packed and emb_gemm calls OpenBLAS cblas_sgemm
 * on the original W, then a scalar bias/GELU pass. The two paths agree to
 * ~2e-6 of |y| + 1 on the encoder's shapes.
 *
 * Threads: emb_gemm uses omp_get_max_threads() threads: an OpenMP team, or,
 * for at most EMB_GEMM_POOL_ROWS rows (a pass of one short text), the
 * calling thread and the helpers of pool.h, whose join never waits for a
 * helper that has not started. Called from inside an active parallel region
 * it runs on the calling thread only, so several threads may run their own
 * GEMMs at once. An emb_gemm_w is
 * read-only after emb_gemm_pack and may be shared by any number of threads. */
#ifndef EMBEDD_GEMM_H
#define EMBEDD_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct emb_gemm_w {
    int n, k;             /* W is (n, k) */
    const float *w;       /* the original (n, k) weights; not owned, must outlive this */
    float *packed;        /* fast-path layout, owned; NULL: emb_gemm uses OpenBLAS on w */
    size_t packed_floats; /* size of packed */
    int8_t *packed_i8;    /* int8 layout (emb_gemm_pack_int8), owned, or NULL */
    float *scale_i8;      /* per output: its weights' scale (max |w| / 127) */
    int32_t *sum_i8;      /* per output: the sum of its int8 weights */
} emb_gemm_w;

/* Fills pw for W (n, k), n, k >= 1. Packs a copy of W when the fast path is
 * available; otherwise only keeps w. Returns 0, or -1 with err filled in
 * (bad dims, out of memory). An emb_gemm_w set up by hand with
 * packed == NULL is valid too and always takes the OpenBLAS path. */
int emb_gemm_pack(emb_gemm_w *pw, const float *w, int n, int k, emb_err *err);

/* Like emb_gemm_pack, but for the int8 path: W quantized per output row
 * (symmetric, scale max|w| / 127); emb_gemm then quantizes in per row and
 * per call (asymmetric, 0..255, the range including 0) and multiplies with
 * AVX-512 VNNI, accumulating in int32 and scaling back to float before the
 * bias and GELU. About 1% error of an output's typical size; opt-in. Fails
 * where emb_gemm_int8_available() is 0. If the per-call buffers (m * K
 * bytes) cannot be allocated, emb_gemm falls back to OpenBLAS in fp32. */
int emb_gemm_pack_int8(emb_gemm_w *pw, const float *w, int n, int k, emb_err *err);

/* 1 when the int8 path can run: the fast path's CPU features and VNNI. */
int emb_gemm_int8_available(void);

/* Frees the packed copies (not w) and zeroes pw. Safe on a zeroed struct. */
void emb_gemm_free(emb_gemm_w *pw);

enum { EMB_EPI_NONE = 0, EMB_EPI_GELU = 1 };

/* Calls with at most this many rows run on the pool (see Threads above). */
#define EMB_GEMM_POOL_ROWS 32

/* out (m, n) = in (m, k) W^T + bias (n, may be NULL), then the epilogue:
 * EMB_EPI_GELU applies 0.5 v (1 + erf(v / sqrt 2)) to every output.
 * m >= 0 (m == 0 does nothing); out must not overlap in. */
void emb_gemm(float *out, const float *in, int m, const emb_gemm_w *pw, const float *bias,
              int epilogue);

/* The post-LN residual step of BERT: x (m, n) = LayerNorm(x + y) with
 * weight w and bias b (n each). */
typedef struct emb_layernorm {
    float *x;
    const float *w, *b;
    float eps;
} emb_layernorm;

/* emb_gemm (no epilogue) into out, then ln->x = LayerNorm(ln->x + out) row
 * by row: each group of rows is normalised by the thread that finishes its
 * last block of outputs, while they are in its cache, instead of in a
 * separate pass. ln->x must not overlap out or in. */
void emb_gemm_ln(float *out, const float *in, int m, const emb_gemm_w *pw, const float *bias,
                 const emb_layernorm *ln);

/* 1 when emb_gemm_pack packs for the AVX-512 kernel: the CPU has AVX-512
 * F/BW/VL and EMBEDD_GEMM is not "openblas". */
int emb_gemm_fast_path(void);

#endif
