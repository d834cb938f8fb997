/* gemm.c: out (M,N) = in (M,K) W^T + bias, then GELU, on pre-packed W.
 * See gemm.h for the API and the OpenBLAS fallback.
 *
 * Legend: M rows of in/out (tokens), N outputs (rows of W), K inputs.
 *
 * Fast path (BLIS-style, W packed once at load):
 *
 *   packed W   panels of NR = 64 outputs; panel p holds W[p*NR + c][k] at
 *              packed[(p*K + k)*NR + c] (zero past N), so a K x NR panel is
 *              one contiguous run that the kernel streams through.
 *   tile       MR = 6 rows x NR columns of out in 24 zmm accumulators. Each
 *              k step loads 4 vectors of the panel and broadcasts 6 values
 *              of in straight from its rows (in is not packed).
 *   blocking   K in chunks of at most KC_MAX (K itself for K <= 1536, so a
 *              tile is stored once, bias and GELU fused). N in blocks of
 *              panels whose packed W (~1 MB) stays in the core's L2 while
 *              the 6-row strips of in pass by; a strip (6 x KC floats) is
 *              reused from L1 (or L2) for each panel. The panel stream is
 *              prefetched into L1 32 k steps ahead, and the next strip of in
 *              into L2 during the first panel.
 *   loops      task (row chunk, N block) > pc (K chunk) > ir (6 rows) >
 *              jr (panel) > k.
 *   epilogue   bias seeds the accumulators of the first K chunk; GELU (a
 *              vpermps-table erf, see erf16) runs on the accumulators of the
 *              last one, just before the store.
 *
 * Threads: one OpenMP loop per call over tasks (MC rows x one N block),
 * N-block-major, schedule(dynamic): every task writes its own rectangle of
 * out and only reads in and packed W, so there is nothing to share or lock.
 * Inside an active parallel region the call runs on the calling thread. */
#include "gemm.h"
#include "ops.h"
#include "pool.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>


/* ---- dispatch ------------------------------------------------------------ */

static int fast_path_ok;
static pthread_once_t fast_path_once = PTHREAD_ONCE_INIT;

static void fast_path_init(void)
{
    const char *env = getenv("EMBEDD_GEMM");
    int forced_blas = env != NULL && strcmp(env, "openblas") == 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    fast_path_ok = !forced_blas && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
    (void)forced_blas;
    fast_path_ok = 0;
#endif
}

int emb_gemm_fast_path(void)
{
    pthread_once(&fast_path_once, fast_path_init);
    return fast_path_ok;
}

/* Threads for one call: 1 inside an active parallel region or for work too
 * small to pay for waking the team. */
static int gemm_threads(int m, int n, int k)
{
    if (omp_in_parallel())
        return 1;
    if ((double)m * n * k < 65536.0)
        return 1;
    return omp_get_max_threads();
}

/* ---- the OpenBLAS fallback --------------------------------------------- */

static void gemm_openblas(float *out, const float *in, int m, const emb_gemm_w *pw,
                          const float *bias, int epilogue)
{
    if (epilogue == EMB_EPI_GELU) {
        matmul_forward(out, in, pw->w, NULL, m, pw->k, pw->n);
        bias_gelu_forward(out, bias, m, pw->n); /* vector erf where the CPU has AVX2 */
        return;
    }
    matmul_forward(out, in, pw->w, bias, m, pw->k, pw->n);
}

/* ---- AVX-512 kernel ------------------------------------------------------ */

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_KERNEL 1
#include <immintrin.h>

/* Tunables, picked by A/B runs on a 2-core Xeon (Sapphire/Emerald Rapids
 * class: 48 KB L1d, 2 MB L2 per core) against 8 x 48 and 14 x 32 tiles
 * (2-7% slower), KC 256 to 1536, N-block budgets of 256 KB to 1.5 MB, row
 * chunks of 48 to 192 (within noise), no prefetch of W (8-13% slower on
 * the K = 384 layers) and non-temporal stores of out (slower): */
#define MR 6  /* rows per register tile */
#define NV 4  /* zmm vectors per tile row: 6 x 4 accumulators + 4 + 1 of 32 */
#define NR (16 * NV)
/* Longest K chunk. K = 1536 in one chunk beats 2 or 3 chunks by 1-5%
 * (out is stored once, not re-read per chunk), though the 6 x 1536 strip of
 * in (36 KB) is then partly re-read from L2 for each panel. */
#define KC_MAX 1536
/* Bytes of packed W (all of K) per N block: kept hot in each core's L2. */
#define L2_BYTES (1024 * 1024)
/* Rows per task (a multiple of MR). */
#define MC 96
/* Packed W is prefetched into L1 this many k steps ahead (8 KB). */
#define PREFETCH_B_K 32

#define KERNEL_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

/* erf for 16 floats. Checked on every float in [0, 5] (erf is odd): within
 * 1.48 ulp of the exact erf and 2 ulp of glibc's scalar erff. glibc's
 * libmvec _ZGVeN16v_erff is off by up to 4 ulp there and costs ~44 cycles a
 * vector, which made GELU ~20% of the FFN-up layer's time; this costs ~10.
 * (-DGEMM_LIBMVEC_ERF=1 builds the libmvec version for comparison.)
 *
 * For |z| < 3.95, erf(|z|) is a degree-6 polynomial in t = |z| - i/4 on
 * each of 16 intervals [i/4, (i+1)/4); vpermps picks each lane's
 * coefficients from one zmm per degree. Coefficients: Chebyshev
 * interpolation at 7 nodes per interval (of erf(z)/z on the first one, so
 * that tiny z keep their relative accuracy), in 40-digit arithmetic
 * (mpmath), rounded to float. From 3.95 on, erf is 1 in float. */
static const float erf_coef[7][16] __attribute__((aligned(64))) = {
    {/* t^0 */
     0.000000000e0f, 2.763263881e-1f, 5.204998851e-1f, 7.111556530e-1f,
     8.427007794e-1f, 9.229001403e-1f, 9.661051631e-1f, 9.866716862e-1f,
     9.953222871e-1f, 9.985373020e-1f, 9.995930195e-1f, 9.998993874e-1f,
     9.999778867e-1f, 9.999957085e-1f, 9.999992847e-1f, 9.999998808e-1f,
    },
    {/* t^1 */
     1.128379226e0f, 1.060014129e0f, 8.787825704e-1f, 6.429310441e-1f,
     4.151074588e-1f, 2.365211248e-1f, 1.189303100e-1f, 5.277501047e-2f,
     2.066699229e-2f, 7.142318878e-3f, 2.178282244e-3f, 5.862756516e-4f,
     1.392522245e-4f, 2.918870450e-5f, 5.399325801e-6f, 8.814060948e-7f,
    },
    {/* t^2 */
     -8.610627447e-7f, -2.650048435e-1f, -4.393889010e-1f, -4.821948111e-1f,
     -4.151055515e-1f, -2.956515551e-1f, -1.783965677e-1f, -9.235719591e-2f,
     -4.133435711e-2f, -1.607021317e-2f, -5.445585586e-3f, -1.612160238e-3f,
     -4.177062074e-4f, -9.484359907e-5f, -1.889148189e-5f, -3.303682661e-6f,
    },
    {/* t^3 */
     -3.760860860e-1f, -3.091380000e-1f, -1.465203166e-1f, 2.670481242e-2f,
     1.383216977e-1f, 1.675386131e-1f, 1.387789547e-1f, 9.018035978e-2f,
     4.823245108e-2f, 2.172452770e-2f, 8.347100578e-3f, 2.757921349e-3f,
     7.878160104e-4f, 1.953049650e-4f, 4.213652574e-5f, 7.928293599e-6f,
    },
    {/* t^4 */
     -6.913560210e-4f, 1.265802383e-1f, 1.837078631e-1f, 1.516484916e-1f,
     6.974075735e-2f, -6.180467550e-3f, -4.490446672e-2f, -4.836892337e-2f,
     -3.455680236e-2f, -1.908475347e-2f, -8.588432334e-3f, -3.229618305e-3f,
     -1.029437641e-3f, -2.806550765e-4f, -6.584527000e-5f, -1.335223897e-5f,
    },
    {/* t^5 */
     1.182216555e-1f, 8.267625421e-2f, 3.836807096e-3f, -5.889579654e-2f,
     -7.259058952e-2f, -4.717761278e-2f, -1.310239453e-2f, 8.219946176e-3f,
     1.378195547e-2f, 1.068393700e-2f, 5.920801777e-3f, 2.585531212e-3f,
     9.257782367e-4f, 2.775127359e-4f, 7.051973807e-5f, 1.531679300e-5f,
    },
    {/* t^6 */
     -1.946739294e-2f, -4.980013892e-2f, -4.116240144e-2f, -1.041778829e-2f,
     1.537253242e-2f, 2.204489522e-2f, 1.439882722e-2f, 4.144094419e-3f,
     -1.783652464e-3f, -3.097804729e-3f, -2.245847136e-3f, -1.143764821e-3f,
     -4.553554463e-4f, -1.479110360e-4f, -4.008041287e-5f, -9.181907444e-6f,
    },
};

#if GEMM_LIBMVEC_ERF
/* glibc libmvec (>= 2.35), AVX-512 variant of erff. Only called from
 * AVX-512 functions, so the zmm calling convention is fine. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
__m512 _ZGVeN16v_erff(__m512 x);
#pragma GCC diagnostic pop
#endif

KERNEL_TARGET static inline __m512 erf16(__m512 z)
{
#if GEMM_LIBMVEC_ERF
    return _ZGVeN16v_erff(z);
#else
    /* NaN lanes become 3.95 here; GELU's x * (...) keeps them NaN */
    const __m512 az = _mm512_min_ps(_mm512_abs_ps(z), _mm512_set1_ps(3.95f));
    const __m512i idx = _mm512_cvttps_epi32(_mm512_mul_ps(az, _mm512_set1_ps(4.0f)));
    const __m512 t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(idx), _mm512_set1_ps(0.25f), az);
#define ERF_C(j) _mm512_permutexvar_ps(idx, _mm512_load_ps(erf_coef[j]))
    /* c0 + t (c1 + t r) with r = c2 + t (c3 + ...), summed as
     * (c0 + t (t r)) + t c1 so that on the first interval (c0 = 0), where
     * erf is about 1.13 t, the result is rounded about once, not twice */
    __m512 r = ERF_C(6);
    for (int j = 5; j >= 2; j--)
        r = _mm512_fmadd_ps(r, t, ERF_C(j));
    __m512 p = _mm512_fmadd_ps(t, _mm512_mul_ps(t, r), ERF_C(0));
    p = _mm512_fmadd_ps(t, ERF_C(1), p);
#undef ERF_C
    p = _mm512_min_ps(p, _mm512_set1_ps(1.0f));
    const __m512i sign = _mm512_and_epi32(_mm512_castps_si512(z), _mm512_set1_epi32(INT32_MIN));
    return _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(p), sign));
#endif
}

/* 0.5 x (1 + erf(x / sqrt 2)) */
KERNEL_TARGET static inline __m512 gelu16(__m512 x)
{
    const __m512 hx = _mm512_mul_ps(_mm512_set1_ps(0.5f), x);
    const __m512 e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
    return _mm512_fmadd_ps(hx, e, hx);
}

/* One tile's job. */
typedef struct tile_args {
    const float *a;    /* in at (row, k0); rows lda apart */
    long lda;
    const float *b;    /* panel at k0: kc rows of NR floats */
    float *c;          /* out at (row, col); rows ldc apart */
    long ldc;
    int kc;
    int accumulate;    /* add to c (a later K chunk) instead of storing */
    const float *bias; /* bias at col, or NULL; used when !accumulate */
    int gelu;          /* apply GELU before the store (last K chunk) */
    __mmask16 mask;    /* columns of the last vector that exist */
    const float *pf;   /* the next row strip of in (same k0) to prefetch, or NULL */
    int pf_rows;       /* its row count */
} tile_args;

/* out tile (mr rows, nv vectors) = [out +] in strip x panel, then the
 * epilogue. mr <= MR and nv <= NV are compile-time constants in each
 * tile_R_V below, so the loops unroll and acc lives in registers. */
KERNEL_TARGET static inline __attribute__((always_inline)) void
tile_kernel(const int mr, const int nv, const tile_args *t)
{
    const float *a = t->a;
    const long lda = t->lda;
    const float *b = t->b;
    const int kc = t->kc;
    const __mmask16 last_mask = t->mask;
    __m512 acc[MR][NV];

#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        __m512 init = _mm512_setzero_ps();
        if (!t->accumulate && t->bias != NULL) {
            __mmask16 mk = v == nv - 1 ? last_mask : (__mmask16)0xffff;
            init = _mm512_maskz_loadu_ps(mk, t->bias + 16 * v);
        }
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++)
            acc[i][v] = init;
    }

    for (int k = 0; k < kc; k++) {
        /* the next strip of in: MR lines every 16 k, toward L2 */
        if (t->pf != NULL && (k & 15) == 0) {
            for (int i = 0; i < t->pf_rows; i++)
                _mm_prefetch((const char *)(t->pf + i * lda + k), _MM_HINT_T1);
        }
        __m512 bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            _mm_prefetch((const char *)(b + (long)(k + PREFETCH_B_K) * NR + 16 * v), _MM_HINT_T0);
            bv[v] = _mm512_load_ps(b + (long)k * NR + 16 * v);
        }
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512 ai = _mm512_set1_ps(a[i * lda + k]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
        }
    }

    float *c = t->c;
    const long ldc = t->ldc;
    const int accumulate = t->accumulate, gelu = t->gelu;
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            float *p = c + i * ldc + 16 * v;
            const __mmask16 mk = v == nv - 1 ? last_mask : (__mmask16)0xffff;
            __m512 x = acc[i][v];
            if (accumulate)
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mk, p));
            if (gelu)
                x = gelu16(x);
            _mm512_mask_storeu_ps(p, mk, x);
        }
    }
}

/* One function per tile shape (R rows, V vectors) of a kernel NAME_kernel,
 * so that R and V are constants in each, and a table of them:
 * NAME_fns[mr - 1][nv - 1]. */
#define TILE_FN(NAME, TARGET, ARGS, R, V)                                                    \
    TARGET static void NAME##_##R##_##V(const ARGS *t)                                       \
    {                                                                                        \
        NAME##_kernel(R, V, t);                                                              \
    }
#define TILE_FNS(NAME, TARGET, ARGS, R)                                                      \
    TILE_FN(NAME, TARGET, ARGS, R, 1)                                                        \
    TILE_FN(NAME, TARGET, ARGS, R, 2)                                                        \
    TILE_FN(NAME, TARGET, ARGS, R, 3) TILE_FN(NAME, TARGET, ARGS, R, 4)
#define TILE_ROW(NAME, R) {NAME##_##R##_1, NAME##_##R##_2, NAME##_##R##_3, NAME##_##R##_4}
#define TILE_TABLE(NAME, TARGET, ARGS)                                                       \
    TILE_FNS(NAME, TARGET, ARGS, 1) TILE_FNS(NAME, TARGET, ARGS, 2)                          \
    TILE_FNS(NAME, TARGET, ARGS, 3) TILE_FNS(NAME, TARGET, ARGS, 4)                          \
    TILE_FNS(NAME, TARGET, ARGS, 5) TILE_FNS(NAME, TARGET, ARGS, 6)                          \
    static void (*const NAME##_fns[MR][NV])(const ARGS *) = {                                \
        TILE_ROW(NAME, 1), TILE_ROW(NAME, 2), TILE_ROW(NAME, 3),                             \
        TILE_ROW(NAME, 4), TILE_ROW(NAME, 5), TILE_ROW(NAME, 6),                             \
    };
TILE_TABLE(tile, KERNEL_TARGET, tile_args)
_Static_assert(MR == 6 && NV == 4, "TILE_TABLE lists 6 x 4 tile shapes");

/* The output columns col.. of a panel that exist (up to NR of n): how many
 * 16-lane vectors they take; *mask gets the lanes of the last one. */
static int panel_vectors(int n, int col, __mmask16 *mask)
{
    const int cols = n - col < NR ? n - col : NR;
    const int nv = (cols + 15) / 16;
    *mask = (__mmask16)((1u << (cols - 16 * (nv - 1))) - 1u);
    return nv;
}

/* K chunk length: all of K, or K cut evenly into chunks <= KC_MAX. */
static int k_chunk(int k)
{
    int chunks = (k + KC_MAX - 1) / KC_MAX;
    return (k + chunks - 1) / chunks;
}

/* Rows [m0, m1) x panels [p0, p1) of out: one task. */
KERNEL_TARGET static void gemm_block(float *out, const float *in, int m0, int m1, int p0, int p1,
                                     const emb_gemm_w *pw, const float *bias, int epilogue)
{
    const int n = pw->n, k = pw->k;
    const int kc_len = k_chunk(k);
    for (int pc = 0; pc < k; pc += kc_len) {
        tile_args t;
        t.kc = pc + kc_len < k ? kc_len : k - pc;
        t.accumulate = pc > 0;
        t.gelu = epilogue == EMB_EPI_GELU && pc + t.kc == k;
        t.lda = k;
        t.ldc = n;
        for (int ir = m0; ir < m1; ir += MR) {
            const int mr = m1 - ir < MR ? m1 - ir : MR;
            const int next_rows = m1 - (ir + mr) < MR ? m1 - (ir + mr) : MR;
            t.a = in + (size_t)ir * k + pc;
            for (int jp = p0; jp < p1; jp++) {
                /* during the first panel, pull the next strip of in in
                 * (for large M it comes from memory) */
                t.pf = jp == p0 && next_rows > 0 ? t.a + (size_t)mr * k : NULL;
                t.pf_rows = next_rows;
                const int col = jp * NR;
                const int nv = panel_vectors(n, col, &t.mask);
                t.b = pw->packed + ((size_t)jp * k + pc) * NR;
                t.c = out + (size_t)ir * n + col;
                t.bias = bias != NULL ? bias + col : NULL;
                tile_fns[mr - 1][nv - 1](&t);
            }
        }
    }
}

/* How one call cuts out (M, N) into tasks: row chunks of mc rows times
 * N blocks of ncp panels. */
typedef struct gemm_plan {
    int mc, row_chunks;
    int ncp, nblocks;
} gemm_plan;

/* Calls of a few rows run on the pool (pool.h), so that a helper the
 * scheduler has not run yet holds nothing up; others on an OpenMP team. */
static int gemm_on_pool(int m, int nt)
{
    return nt > 1 && m <= EMB_GEMM_POOL_ROWS;
}

static gemm_plan gemm_plan_make(int m, int n, long per_panel, int nt)
{
    gemm_plan p;
    const int panels = (n + NR - 1) / NR;
    /* N block: its packed W (per_panel bytes a panel, all of K) within the
     * L2 budget; blocks even */
    p.ncp = (int)(L2_BYTES / per_panel);
    if (p.ncp < 1)
        p.ncp = 1;
    p.nblocks = (panels + p.ncp - 1) / p.ncp;
    p.ncp = (panels + p.nblocks - 1) / p.nblocks;
    p.mc = MC;
    p.row_chunks = (m + p.mc - 1) / p.mc;
    if (gemm_on_pool(m, nt)) {
        /* a few rows, on the pool: one panel per task */
        p.ncp = 1;
        p.nblocks = panels;
        return p;
    }
    /* few rows: cut N finer, so that every thread gets tasks (and reads only
     * part of W) */
    if ((long)p.row_chunks * p.nblocks < 2L * nt) {
        int want = (2 * nt + p.row_chunks - 1) / p.row_chunks;
        if (want > panels)
            want = panels;
        if (want > p.nblocks) {
            p.ncp = (panels + want - 1) / want;
            p.nblocks = (panels + p.ncp - 1) / p.ncp;
        }
    }
    return p;
}

/* One call's work, cut into tasks (see gemm_fast). */
typedef struct gemm_job {
    float *out;
    const float *in;
    int m, panels;
    const emb_gemm_w *pw;
    const float *bias;
    int epilogue;
    gemm_plan p;
    const struct quantized_rows *q; /* int8 path: in, quantized; else NULL */
    const emb_layernorm *ln;        /* fused residual LayerNorm (emb_gemm_ln), or NULL */
    atomic_int *blocks_done;        /* with ln: N blocks finished, per row chunk */
} gemm_job;

static void gemm_block_i8(const gemm_job *j, int m0, int m1, int p0, int p1);

static void gemm_task(void *arg, int task)
{
    const gemm_job *j = arg;
    const int blk = task / j->p.row_chunks, r = task % j->p.row_chunks;
    const int m0 = r * j->p.mc;
    const int m1 = m0 + j->p.mc < j->m ? m0 + j->p.mc : j->m;
    const int p0 = blk * j->p.ncp;
    const int p1 = p0 + j->p.ncp < j->panels ? p0 + j->p.ncp : j->panels;
    if (j->q != NULL)
        gemm_block_i8(j, m0, m1, p0, p1);
    else
        gemm_block(j->out, j->in, m0, m1, p0, p1, j->pw, j->bias, j->epilogue);
    /* the task that completes a row chunk's last N block normalises its
     * rows, while they are still in this core's cache (acq_rel: it sees
     * the other blocks' outputs) */
    if (j->ln != NULL && atomic_fetch_add_explicit(&j->blocks_done[r], 1, memory_order_acq_rel) +
                                 1 == j->p.nblocks) {
        const int n = j->pw->n;
        residual_layernorm_serial(j->ln->x + (size_t)m0 * n, j->out + (size_t)m0 * n, NULL,
                                  j->ln->w, j->ln->b, m1 - m0, n, j->ln->eps);
    }
}

/* Runs j's tasks: on the pool for a few rows, else on an OpenMP team. */
/* Runs j's tasks, with ln fused when given; -1 when ln's counters could not
 * be allocated (nothing done). */
static int gemm_run(gemm_job *j, int nt, const emb_layernorm *ln)
{
    if (ln != NULL) {
        j->blocks_done = calloc((size_t)j->p.row_chunks, sizeof(atomic_int));
        if (j->blocks_done == NULL)
            return -1;
        j->ln = ln;
    }
    const int tasks = j->p.row_chunks * j->p.nblocks;
    if (gemm_on_pool(j->m, nt)) {
        emb_pool_run(nt, tasks, gemm_task, j);
    } else {
        /* Tasks in N-block-major order, first come first served: the
         * threads share one block of W (each from its own L2) while they
         * take row chunks, and a thread that is preempted holds up only its
         * chunk. */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
        for (int task = 0; task < tasks; task++)
            gemm_task(j, task);
    }
    free(j->blocks_done);
    return 0;
}

static int gemm_fast(float *out, const float *in, int m, const emb_gemm_w *pw, const float *bias,
                     int epilogue, const emb_layernorm *ln)
{
    const int nt = gemm_threads(m, pw->n, pw->k);
    gemm_job j = {out, in, m, (pw->n + NR - 1) / NR, pw, bias, epilogue,
                  gemm_plan_make(m, pw->n, (long)pw->k * NR * (long)sizeof(float), nt), NULL,
                  NULL, NULL};
    return gemm_run(&j, nt, ln);
}

static int pack_panels(emb_gemm_w *pw, emb_err *err)
{
    const int n = pw->n, k = pw->k;
    const size_t panels = ((size_t)n + NR - 1) / NR;
    const size_t floats = panels * (size_t)k * NR;
    if (floats > SIZE_MAX / sizeof(float) / 2)
        return emb_fail(err, "gemm: packed weights (%d x %d) too large", n, k);
    float *p = aligned_alloc(64, floats * sizeof(float));
    if (p == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "gemm: out of memory packing %d x %d weights", n,
                           k);
    memset(p, 0, floats * sizeof(float));
    for (int j = 0; j < n; j++) {
        const float *row = pw->w + (size_t)j * k;
        float *dst = p + (size_t)(j / NR) * k * NR + j % NR;
        for (int kk = 0; kk < k; kk++)
            dst[(size_t)kk * NR] = row[kk];
    }
    pw->packed = p;
    pw->packed_floats = floats;
    return 0;
}

/* ---- int8 path (AVX-512 VNNI) ------------------------------------------- *
 *
 * out = in W^T + bias with W quantized once per output row (symmetric:
 * w8 = round(W / sw), sw = max|W row| / 127) and in quantized per call and
 * per row (asymmetric: q = round(x / sa) + za in 0..255, the range made to
 * include 0). vpdpbusd multiplies 4 unsigned bytes of in by 4 signed bytes
 * of W and adds the 4 products to an int32 lane, so
 *
 *   out[r][c] = sa[r] sw[c] (acc[r][c] - za[r] sum_k w8[c][k]) + bias[c]
 *
 * exactly, from the int32 sums (at most 255 * 127 * K: no overflow below
 * K = 66,000). Packed W: panels of NR outputs as in the float path, each
 * K/4 quads of NR x 4 bytes (output c's 4 consecutive k), zero padded.
 * Tiles are MR x NR as in the float path; K is never cut (int32 sums). */

#define KERNEL_I8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

/* in, quantized: m rows of k4 bytes (k rounded up to 4, zero padded), and
 * each row's scale and zero point. */
typedef struct quantized_rows {
    uint8_t *q;
    float *scale;
    int32_t *zero;
    int k4;
} quantized_rows;

/* Quantizes one row of k floats into k4 bytes. */
KERNEL_I8_TARGET static void quantize_row(const float *x, int k, uint8_t *q, int k4, float *scale,
                                          int32_t *zero)
{
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps(); /* the range includes 0 */
    for (int i = 0; i < k; i += 16) {
        const __mmask16 mk = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(mk, x + i);
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    const float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
    float s = (h - l) / 255.0f;
    int z = 0;
    if (!(s > 0.0f) || !isfinite(s)) {
        s = 1.0f; /* all zeros (or not finite: garbage in, garbage out, but no UB) */
    } else {
        z = (int)lrintf(-l / s);
        z = z < 0 ? 0 : z > 255 ? 255 : z;
    }
    const __m512 inv = _mm512_set1_ps(1.0f / s);
    const __m512i zv = _mm512_set1_epi32(z), q_max = _mm512_set1_epi32(255);
    for (int i = 0; i < k4; i += 16) {
        const __mmask16 in_k = i >= k ? 0 : k - i >= 16 ? (__mmask16)0xffff
                                                        : (__mmask16)((1u << (k - i)) - 1u);
        const __mmask16 in_k4 = k4 - i >= 16 ? (__mmask16)0xffff
                                             : (__mmask16)((1u << (k4 - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(in_k, x + i);
        __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), zv);
        qi = _mm512_min_epi32(_mm512_max_epi32(qi, _mm512_setzero_si512()), q_max);
        qi = _mm512_maskz_mov_epi32(in_k, qi); /* padding: 0 (its weights are 0 too) */
        _mm_mask_storeu_epi8(q + i, in_k4, _mm512_cvtepi32_epi8(qi));
    }
    *scale = s;
    *zero = z;
}

static void quantize_rows(const float *in, int m, int k, quantized_rows *qr, int nt)
{
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && m > EMB_GEMM_POOL_ROWS)
    for (int r = 0; r < m; r++)
        quantize_row(in + (size_t)r * k, k, qr->q + (size_t)r * qr->k4, qr->k4, &qr->scale[r],
                     &qr->zero[r]);
}

typedef struct tile_i8_args {
    const uint8_t *a;     /* quantized in at row; rows lda bytes apart */
    long lda;
    const int8_t *b;      /* the panel */
    int kq;               /* k4 / 4 */
    float *c;             /* out at (row, col); rows ldc apart */
    long ldc;
    const float *a_scale; /* at row */
    const int32_t *a_zero;
    const float *w_scale; /* at col */
    const int32_t *w_sum;
    const float *bias;    /* at col, or NULL */
    int gelu;
    __mmask16 mask;       /* columns of the last vector that exist */
} tile_i8_args;

KERNEL_I8_TARGET static inline __attribute__((always_inline)) void
tile_i8_kernel(const int mr, const int nv, const tile_i8_args *t)
{
    const uint8_t *a = t->a;
    const long lda = t->lda;
    const int8_t *b = t->b;
    __m512i acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[i][v] = _mm512_setzero_si512();
    }
    for (int kq = 0; kq < t->kq; kq++) {
        __m512i bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            _mm_prefetch((const char *)(b + ((long)kq + PREFETCH_B_K) * NR * 4 + 64 * v),
                         _MM_HINT_T0);
            bv[v] = _mm512_load_si512(b + (long)kq * NR * 4 + 64 * v);
        }
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            int32_t quad;
            memcpy(&quad, a + i * lda + 4 * kq, sizeof quad);
            const __m512i ai = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], ai, bv[v]);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        const __mmask16 mk = v == nv - 1 ? t->mask : (__mmask16)0xffff;
        const __m512 ws = _mm512_loadu_ps(t->w_scale + 16 * v);
        const __m512i wsum = _mm512_loadu_si512(t->w_sum + 16 * v);
        const __m512 bias = t->bias != NULL ? _mm512_maskz_loadu_ps(mk, t->bias + 16 * v)
                                            : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512i corr = _mm512_mullo_epi32(_mm512_set1_epi32(t->a_zero[i]), wsum);
            const __m512 sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][v], corr));
            __m512 x = _mm512_fmadd_ps(sum, _mm512_mul_ps(ws, _mm512_set1_ps(t->a_scale[i])), bias);
            if (t->gelu)
                x = gelu16(x);
            _mm512_mask_storeu_ps(t->c + i * t->ldc + 16 * v, mk, x);
        }
    }
}

TILE_TABLE(tile_i8, KERNEL_I8_TARGET, tile_i8_args)

/* Rows [m0, m1) x panels [p0, p1) of out, from the quantized rows. */
static void gemm_block_i8(const gemm_job *j, int m0, int m1, int p0, int p1)
{
    const emb_gemm_w *pw = j->pw;
    const quantized_rows *qr = j->q;
    const int n = pw->n;
    tile_i8_args t;
    t.lda = qr->k4;
    t.kq = qr->k4 / 4;
    t.ldc = n;
    t.gelu = j->epilogue == EMB_EPI_GELU;
    for (int ir = m0; ir < m1; ir += MR) {
        const int mr = m1 - ir < MR ? m1 - ir : MR;
        t.a = qr->q + (size_t)ir * qr->k4;
        t.a_scale = qr->scale + ir;
        t.a_zero = qr->zero + ir;
        for (int jp = p0; jp < p1; jp++) {
            const int col = jp * NR;
            const int nv = panel_vectors(n, col, &t.mask);
            t.b = pw->packed_i8 + (size_t)jp * qr->k4 * NR;
            t.w_scale = pw->scale_i8 + col;
            t.w_sum = pw->sum_i8 + col;
            t.c = j->out + (size_t)ir * n + col;
            t.bias = j->bias != NULL ? j->bias + col : NULL;
            tile_i8_fns[mr - 1][nv - 1](&t);
        }
    }
}

/* 0 when done; -1 when the row buffers could not be allocated. */
static int gemm_int8(float *out, const float *in, int m, const emb_gemm_w *pw, const float *bias,
                     int epilogue, const emb_layernorm *ln)
{
    quantized_rows qr;
    qr.k4 = (pw->k + 3) & ~3;
    qr.q = malloc((size_t)m * qr.k4);
    qr.scale = malloc(sizeof(float) * (size_t)m);
    qr.zero = malloc(sizeof(int32_t) * (size_t)m);
    if (qr.q == NULL || qr.scale == NULL || qr.zero == NULL) {
        free(qr.q);
        free(qr.scale);
        free(qr.zero);
        return -1;
    }
    const int nt = gemm_threads(m, pw->n, pw->k);
    quantize_rows(in, m, pw->k, &qr, nt);
    gemm_job j = {out, in, m, (pw->n + NR - 1) / NR, pw, bias, epilogue,
                  gemm_plan_make(m, pw->n, (long)qr.k4 * NR, nt), &qr, NULL, NULL};
    const int rc = gemm_run(&j, nt, ln);
    free(qr.q);
    free(qr.scale);
    free(qr.zero);
    return rc;
}

static int pack_int8(emb_gemm_w *pw, emb_err *err)
{
    const int n = pw->n, k = pw->k, k4 = (k + 3) & ~3;
    const size_t panels = ((size_t)n + NR - 1) / NR;
    const size_t bytes = panels * (size_t)k4 * NR;
    int8_t *p = aligned_alloc(64, bytes);
    float *scale = calloc(panels * NR, sizeof(float));
    int32_t *sum = calloc(panels * NR, sizeof(int32_t));
    if (p == NULL || scale == NULL || sum == NULL) {
        free(p);
        free(scale);
        free(sum);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY,
                           "gemm: out of memory packing %d x %d int8 weights", n, k);
    }
    memset(p, 0, bytes);
    for (int c = 0; c < n; c++) {
        const float *row = pw->w + (size_t)c * k;
        float amax = 0.0f;
        for (int kk = 0; kk < k; kk++)
            amax = fabsf(row[kk]) > amax ? fabsf(row[kk]) : amax;
        const float s = amax > 0.0f && isfinite(amax) ? amax / 127.0f : 1.0f;
        int8_t *dst = p + (size_t)(c / NR) * k4 * NR + (c % NR) * 4;
        int32_t total = 0;
        for (int kk = 0; kk < k; kk++) {
            long v = isfinite(row[kk]) ? lrintf(row[kk] / s) : 0;
            v = v < -127 ? -127 : v > 127 ? 127 : v;
            dst[(size_t)(kk / 4) * NR * 4 + kk % 4] = (int8_t)v;
            total += (int32_t)v;
        }
        scale[c] = s;
        sum[c] = total;
    }
    pw->packed_i8 = p;
    pw->scale_i8 = scale;
    pw->sum_i8 = sum;
    return 0;
}
#else
#define HAVE_KERNEL 0
#endif

/* ---- API ----------------------------------------------------------------- */

int emb_gemm_pack(emb_gemm_w *pw, const float *w, int n, int k, emb_err *err)
{
    memset(pw, 0, sizeof *pw);
    if (w == NULL || n < 1 || k < 1)
        return emb_fail(err, "gemm: bad weights (%d x %d)", n, k);
    pw->n = n;
    pw->k = k;
    pw->w = w;
#if HAVE_KERNEL
    if (emb_gemm_fast_path())
        return pack_panels(pw, err);
#endif
    return 0;
}

int emb_gemm_int8_available(void)
{
#if HAVE_KERNEL
    return emb_gemm_fast_path() && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

int emb_gemm_pack_int8(emb_gemm_w *pw, const float *w, int n, int k, emb_err *err)
{
    memset(pw, 0, sizeof *pw);
    if (w == NULL || n < 1 || k < 1)
        return emb_fail(err, "gemm: bad weights (%d x %d)", n, k);
    if (!emb_gemm_int8_available())
        return emb_fail(err, "int8 needs a CPU with AVX-512 VNNI (and EMBEDD_GEMM unset)");
    pw->n = n;
    pw->k = k;
    pw->w = w;
#if HAVE_KERNEL
    return pack_int8(pw, err);
#else
    return 0;
#endif
}

void emb_gemm_free(emb_gemm_w *pw)
{
    free(pw->packed);
    free(pw->packed_i8);
    free(pw->scale_i8);
    free(pw->sum_i8);
    memset(pw, 0, sizeof *pw);
}

/* out = in W^T + bias (+ epilogue), then, with ln, ln->x = LayerNorm(ln->x + out). */
static void gemm_dispatch(float *out, const float *in, int m, const emb_gemm_w *pw,
                          const float *bias, int epilogue, const emb_layernorm *ln)
{
    if (m <= 0)
        return;
#if HAVE_KERNEL
    if (pw->packed_i8 != NULL && gemm_int8(out, in, m, pw, bias, epilogue, ln) == 0)
        return;
    if (pw->packed != NULL && gemm_fast(out, in, m, pw, bias, epilogue, ln) == 0)
        return;
#endif
    gemm_openblas(out, in, m, pw, bias, epilogue);
    if (ln != NULL)
        residual_layernorm_forward(ln->x, out, NULL, ln->w, ln->b, m, pw->n, ln->eps);
}

void emb_gemm(float *out, const float *in, int m, const emb_gemm_w *pw, const float *bias,
              int epilogue)
{
    gemm_dispatch(out, in, m, pw, bias, epilogue, NULL);
}

void emb_gemm_ln(float *out, const float *in, int m, const emb_gemm_w *pw, const float *bias,
                 const emb_layernorm *ln)
{
    gemm_dispatch(out, in, m, pw, bias, EMB_EPI_NONE, ln);
}
