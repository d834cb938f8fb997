/* test_backward.c: every backward of ops_train.h against central finite
 * differences of its forward, on tiny shapes.
 *
 * Each check takes a scalar loss L = sum(out * R) with a fixed random R, so
 * dL/dout = R is what backward receives. The forward runs in float, but L
 * is summed in double and each difference is divided by the step that the
 * float input really took, which keeps the numeric gradient to about 1e-4
 * of its size. Parameter gradients start from random values (subtracted
 * before comparing) to prove they accumulate; activation gradients start as
 * NaN to prove every element is overwritten. Larger shapes, which take the
 * OpenMP paths, are checked along random directions instead. A last test
 * case shows the checker fails on deliberately wrong gradients. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "ops_train.h"
#include "run_suite.h"

/* ---- helpers ----------------------------------------------------------- */

/* Finite-difference step; inputs are O(1). */
#define FD_EPS 1e-2
/* Largest error allowed, relative to the largest gradient element. */
#define GRAD_TOL 1e-3
/* BERT's LayerNorm eps (config.json). */
#define LN_EPS 1e-12f

static float *alloc_floats(long n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    ck_assert_ptr_nonnull(p);
    return p;
}

static float *random_floats(long n, emb_rng *r, float lo, float hi)
{
    float *p = alloc_floats(n);
    for (long i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * emb_rng_uniform(r);
    return p;
}

static float *nan_floats(long n)
{
    float *p = alloc_floats(n);
    for (long i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static float *copy_floats(const float *src, long n)
{
    float *p = alloc_floats(n);
    memcpy(p, src, sizeof(float) * (size_t)n);
    return p;
}

static double dot_loss(const float *out, const float *R, long n)
{
    double acc = 0.0;
    for (long i = 0; i < n; i++)
        acc += (double)out[i] * R[i];
    return acc;
}

typedef double (*loss_fn)(void *ctx);

/* g (n) = dL/dx by central differences; f reads x through ctx. */
static double *numeric_grad(float *x, long n, loss_fn f, void *ctx)
{
    double *g = malloc(sizeof(double) * (size_t)n);
    ck_assert_ptr_nonnull(g);
    for (long i = 0; i < n; i++) {
        const float saved = x[i];
        x[i] = saved + (float)FD_EPS;
        const double up = x[i];
        const double lp = f(ctx);
        x[i] = saved - (float)FD_EPS;
        const double down = x[i];
        const double lm = f(ctx);
        x[i] = saved;
        g[i] = (lp - lm) / (up - down);
    }
    /* leave the forward's saved state (y, probs...) at the unperturbed x */
    f(ctx);
    return g;
}

/* max |(a - base) - num| / max |num|; base (NULL: zeros) is what a
 * parameter gradient held before backward. NaN gives infinity. */
static double grad_error(const float *a, const float *base, const double *num, long n)
{
    double scale = 0.0;
    for (long i = 0; i < n; i++)
        scale = fabs(num[i]) > scale ? fabs(num[i]) : scale;
    double worst = 0.0;
    for (long i = 0; i < n; i++) {
        double got = (double)a[i] - (base != NULL ? base[i] : 0.0);
        double d = fabs(got - num[i]) / scale;
        if (isnan(d))
            return INFINITY;
        worst = d > worst ? d : worst;
    }
    return worst;
}

static void expect_grad(const char *what, const float *a, const float *base, const double *num,
                        long n)
{
    double scale = 0.0;
    for (long i = 0; i < n; i++)
        scale = fabs(num[i]) > scale ? fabs(num[i]) : scale;
    ck_assert_msg(scale > 1e-3, "%s: numeric gradient is ~0, the check would be vacuous", what);
    double err = grad_error(a, base, num, n);
    ck_assert_msg(err <= GRAD_TOL, "%s: gradient error %g (tolerance %g)", what, err, GRAD_TOL);
}

/* Checks dL/dx against a numeric gradient, x (n) reachable through ctx. */
static void check_grad(const char *what, const float *a, const float *base, float *x, long n,
                       loss_fn f, void *ctx)
{
    double *num = numeric_grad(x, n, f, ctx);
    expect_grad(what, a, base, num, n);
    free(num);
}

/* Directional check for shapes too big for one difference per element:
 * (L(x + e v) - L(x - e v)) / 2e against a . v for random v. */
static void check_directional(const char *what, const float *a, float *x, long n, loss_fn f,
                              void *ctx, emb_rng *r)
{
    float *saved = copy_floats(x, n);
    for (int k = 0; k < 3; k++) {
        float *v = random_floats(n, r, -1.0f, 1.0f);
        double want = 0.0;
        double scale = 0.0;
        for (long i = 0; i < n; i++) {
            want += (double)a[i] * v[i];
            scale += fabs((double)a[i] * v[i]);
        }
        const float e = 1e-2f;
        for (long i = 0; i < n; i++)
            x[i] = saved[i] + e * v[i];
        double lp = f(ctx);
        for (long i = 0; i < n; i++)
            x[i] = saved[i] - e * v[i];
        double lm = f(ctx);
        memcpy(x, saved, sizeof(float) * (size_t)n);
        double got = (lp - lm) / (2.0 * e);
        /* scale: the sum of |terms|, so cancellation cannot hide an error */
        ck_assert_msg(fabs(got - want) <= 1e-4 * scale, "%s: direction %d: %g vs %g (scale %g)",
                      what, k, got, want, scale);
        free(v);
    }
    free(saved);
}

/* ---- embeddings -------------------------------------------------------- */

typedef struct emb_ctx {
    const int32_t *ids;
    const int *seq_off;
    int S, C;
    float *wte, *wpe, *wtt, *out;
    const float *R;
} emb_ctx;

static double emb_loss(void *p)
{
    emb_ctx *c = p;
    embeddings_forward(c->out, c->ids, c->seq_off, c->S, c->wte, c->wpe, c->wtt, c->C);
    return dot_loss(c->out, c->R, (long)c->seq_off[c->S] * c->C);
}

START_TEST(test_embeddings)
{
    enum { V = 7, P = 6, TV = 2, C = 5, S = 3 };
    const int seq_off[S + 1] = {0, 4, 5, 9};
    const int32_t ids[9] = {1, 3, 3, 6, 0, 3, 2, 1, 5}; /* repeats must add up */
    const long T = seq_off[S];
    emb_rng r;
    emb_rng_seed(&r, 11);
    float *wte = random_floats((long)V * C, &r, -1, 1);
    float *wpe = random_floats((long)P * C, &r, -1, 1);
    float *wtt = random_floats((long)TV * C, &r, -1, 1);
    float *R = random_floats(T * C, &r, -1, 1);
    float *out = alloc_floats(T * C);
    float *base_te = random_floats((long)V * C, &r, -1, 1);
    float *base_pe = random_floats((long)P * C, &r, -1, 1);
    float *base_tt = random_floats((long)TV * C, &r, -1, 1);
    float *dwte = copy_floats(base_te, (long)V * C);
    float *dwpe = copy_floats(base_pe, (long)P * C);
    float *dwtt = copy_floats(base_tt, (long)TV * C);
    embeddings_backward(dwte, dwpe, dwtt, R, ids, seq_off, S, C);

    emb_ctx ctx = {ids, seq_off, S, C, wte, wpe, wtt, out, R};
    check_grad("dwte", dwte, base_te, wte, (long)V * C, emb_loss, &ctx);
    check_grad("dwpe", dwpe, base_pe, wpe, (long)P * C, emb_loss, &ctx);
    check_grad("dwtt", dwtt, base_tt, wtt, (long)TV * C, emb_loss, &ctx);
    /* token type 1 is never used: its row is left exactly as it was */
    for (int c = 0; c < C; c++)
        ck_assert(dwtt[C + c] == base_tt[C + c]);

    float *bufs[] = {wte, wpe, wtt, R, out, base_te, base_pe, base_tt, dwte, dwpe, dwtt};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}
END_TEST

/* ---- LayerNorm --------------------------------------------------------- */

typedef struct ln_ctx {
    float *inp, *w, *b, *out, *mean, *rstd;
    const float *R;
    int T, C;
} ln_ctx;

static double ln_loss(void *p)
{
    ln_ctx *c = p;
    layernorm_forward_train(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->T, c->C, LN_EPS);
    return dot_loss(c->out, c->R, (long)c->T * c->C);
}

/* A LayerNorm problem of T x C with random inputs, weights and R. */
static ln_ctx ln_make(int T, int C, emb_rng *r)
{
    ln_ctx c;
    c.T = T;
    c.C = C;
    c.inp = random_floats((long)T * C, r, -2, 2);
    c.w = random_floats(C, r, 0.5f, 1.5f);
    c.b = random_floats(C, r, -0.5f, 0.5f);
    c.out = alloc_floats((long)T * C);
    c.mean = alloc_floats(T);
    c.rstd = alloc_floats(T);
    c.R = random_floats((long)T * C, r, -1, 1);
    return c;
}

static void ln_free(ln_ctx *c)
{
    free(c->inp);
    free(c->w);
    free(c->b);
    free(c->out);
    free(c->mean);
    free(c->rstd);
    free((float *)c->R);
}

START_TEST(test_layernorm_forward)
{
    enum { T = 4, C = 67 };
    emb_rng r;
    emb_rng_seed(&r, 20);
    ln_ctx c = ln_make(T, C, &r);
    ln_loss(&c);
    float *ref = copy_floats(c.inp, (long)T * C);
    residual_layernorm_forward(ref, NULL, NULL, c.w, c.b, T, C, LN_EPS);
    for (long i = 0; i < (long)T * C; i++)
        ck_assert_msg(fabsf(c.out[i] - ref[i]) <= 1e-5f, "out[%ld] %g vs %g", i, c.out[i], ref[i]);
    for (int t = 0; t < T; t++) {
        double m = 0.0, v = 0.0;
        for (int k = 0; k < C; k++)
            m += c.inp[t * C + k];
        m /= C;
        for (int k = 0; k < C; k++)
            v += (c.inp[t * C + k] - m) * (c.inp[t * C + k] - m);
        v /= C;
        ck_assert(fabs(c.mean[t] - m) <= 1e-5);
        ck_assert(fabs(c.rstd[t] - 1.0 / sqrt(v + LN_EPS)) <= 1e-5 / sqrt(v));
    }
    free(ref);
    ln_free(&c);
}
END_TEST

START_TEST(test_layernorm_backward)
{
    enum { T = 3, C = 9 };
    emb_rng r;
    emb_rng_seed(&r, 21);
    ln_ctx c = ln_make(T, C, &r);
    ln_loss(&c);
    float *dinp = nan_floats((long)T * C);
    float *base_w = random_floats(C, &r, -1, 1);
    float *base_b = random_floats(C, &r, -1, 1);
    float *dw = copy_floats(base_w, C);
    float *db = copy_floats(base_b, C);
    layernorm_backward(dinp, dw, db, c.R, c.inp, c.mean, c.rstd, c.w, T, C);
    check_grad("dinp", dinp, NULL, c.inp, (long)T * C, ln_loss, &c);
    check_grad("dw", dw, base_w, c.w, C, ln_loss, &c);
    check_grad("db", db, base_b, c.b, C, ln_loss, &c);
    free(dinp);
    free(base_w);
    free(base_b);
    free(dw);
    free(db);
    ln_free(&c);
}
END_TEST

/* ---- linear ------------------------------------------------------------ */

typedef struct mm_ctx {
    float *in, *w, *bias, *out;
    const float *R;
    int T, IN, OUT;
} mm_ctx;

static double mm_loss(void *p)
{
    mm_ctx *c = p;
    matmul_forward(c->out, c->in, c->w, c->bias, c->T, c->IN, c->OUT);
    return dot_loss(c->out, c->R, (long)c->T * c->OUT);
}

static mm_ctx mm_make(int T, int IN, int OUT, emb_rng *r)
{
    mm_ctx c;
    c.T = T;
    c.IN = IN;
    c.OUT = OUT;
    c.in = random_floats((long)T * IN, r, -1, 1);
    c.w = random_floats((long)OUT * IN, r, -1, 1);
    c.bias = random_floats(OUT, r, -1, 1);
    c.out = alloc_floats((long)T * OUT);
    c.R = random_floats((long)T * OUT, r, -1, 1);
    return c;
}

static void mm_free(mm_ctx *c)
{
    free(c->in);
    free(c->w);
    free(c->bias);
    free(c->out);
    free((float *)c->R);
}

START_TEST(test_matmul_backward)
{
    enum { T = 5, IN = 7, OUT = 6 };
    emb_rng r;
    emb_rng_seed(&r, 30);
    mm_ctx c = mm_make(T, IN, OUT, &r);
    float *din = nan_floats((long)T * IN);
    float *base_w = random_floats((long)OUT * IN, &r, -1, 1);
    float *base_b = random_floats(OUT, &r, -1, 1);
    float *dw = copy_floats(base_w, (long)OUT * IN);
    float *db = copy_floats(base_b, OUT);
    matmul_backward(din, dw, db, c.R, c.in, c.w, T, IN, OUT);
    check_grad("din", din, NULL, c.in, (long)T * IN, mm_loss, &c);
    check_grad("dw", dw, base_w, c.w, (long)OUT * IN, mm_loss, &c);
    check_grad("db", db, base_b, c.bias, OUT, mm_loss, &c);

    /* din and db NULL: only dw, the same as before */
    float *dw2 = copy_floats(base_w, (long)OUT * IN);
    matmul_backward(NULL, dw2, NULL, c.R, c.in, c.w, T, IN, OUT);
    for (long i = 0; i < (long)OUT * IN; i++)
        ck_assert(fabsf(dw2[i] - dw[i]) <= 1e-6f);
    /* no tokens: nothing changes */
    matmul_backward(din, dw2, db, c.R, c.in, c.w, 0, IN, OUT);
    ck_assert(fabsf(dw2[0] - dw[0]) <= 1e-6f);
    free(dw2);
    free(din);
    free(base_w);
    free(base_b);
    free(dw);
    free(db);
    mm_free(&c);
}
END_TEST

/* ---- Dense (sentence-transformers) -------------------------------------- */

typedef struct dense_ctx {
    mm_ctx mm;
    int act;
} dense_ctx;

static double dense_loss(void *p)
{
    dense_ctx *c = p;
    mm_ctx *m = &c->mm;
    dense_forward(m->out, m->in, m->w, m->bias, m->T, m->IN, m->OUT, c->act);
    return dot_loss(m->out, m->R, (long)m->T * m->OUT);
}

START_TEST(test_dense_backward)
{
    enum { S = 4, IN = 6, OUT = 5 };
    for (int act = 0; act <= 1; act++) {
        emb_rng r;
        emb_rng_seed(&r, 35 + (uint64_t)act);
        dense_ctx c = {mm_make(S, IN, OUT, &r), act};
        dense_loss(&c);
        float *din = nan_floats((long)S * IN);
        float *base_w = random_floats((long)OUT * IN, &r, -1, 1);
        float *base_b = random_floats(OUT, &r, -1, 1);
        float *dw = copy_floats(base_w, (long)OUT * IN);
        float *db = copy_floats(base_b, OUT);
        float *dout = copy_floats(c.mm.R, (long)S * OUT);
        dense_backward(din, dw, db, dout, c.mm.in, c.mm.out, c.mm.w, S, IN, OUT, act);
        const char *names[2][3] = {{"identity din", "identity dw", "identity db"},
                                   {"tanh din", "tanh dw", "tanh db"}};
        check_grad(names[act][0], din, NULL, c.mm.in, (long)S * IN, dense_loss, &c);
        check_grad(names[act][1], dw, base_w, c.mm.w, (long)OUT * IN, dense_loss, &c);
        check_grad(names[act][2], db, base_b, c.mm.bias, OUT, dense_loss, &c);

        /* frozen (dw, db NULL): the same din */
        float *din2 = nan_floats((long)S * IN);
        memcpy(dout, c.mm.R, sizeof(float) * S * OUT);
        dense_backward(din2, NULL, NULL, dout, c.mm.in, c.mm.out, c.mm.w, S, IN, OUT, act);
        for (long i = 0; i < (long)S * IN; i++)
            ck_assert(din2[i] == din[i]);
        free(din2);
        free(dout);
        free(din);
        free(base_w);
        free(base_b);
        free(dw);
        free(db);
        mm_free(&c.mm);
    }
}
END_TEST

/* ---- GELU -------------------------------------------------------------- */

typedef struct gelu_ctx {
    float *inp, *out;
    const float *R;
    long n;
} gelu_ctx;

static double gelu_loss(void *p)
{
    gelu_ctx *c = p;
    memcpy(c->out, c->inp, sizeof(float) * (size_t)c->n);
    bias_gelu_forward(c->out, NULL, 1, (int)c->n);
    return dot_loss(c->out, c->R, c->n);
}

static gelu_ctx gelu_make(long n, emb_rng *r)
{
    gelu_ctx c;
    c.n = n;
    c.inp = random_floats(n, r, -5, 5);
    c.out = alloc_floats(n);
    c.R = random_floats(n, r, -1, 1);
    return c;
}

static void gelu_free(gelu_ctx *c)
{
    free(c->inp);
    free(c->out);
    free((float *)c->R);
}

START_TEST(test_gelu_backward)
{
    /* 8-wide vector chunks and a scalar tail */
    const long n = 37;
    emb_rng r;
    emb_rng_seed(&r, 40);
    gelu_ctx c = gelu_make(n, &r);
    float *dinp = nan_floats(n);
    gelu_backward(dinp, c.inp, c.R, n);
    check_grad("dinp", dinp, NULL, c.inp, n, gelu_loss, &c);

    /* in place over dout gives the same values */
    float *d = copy_floats(c.R, n);
    gelu_backward(d, c.inp, d, n);
    for (long i = 0; i < n; i++)
        ck_assert(d[i] == dinp[i]);
    free(d);
    free(dinp);
    gelu_free(&c);
}
END_TEST

/* Pointwise against the formula in double, including far tails. */
START_TEST(test_gelu_derivative_values)
{
    const long n = 4001;
    float *x = alloc_floats(n);
    float *ones = alloc_floats(n);
    float *d = nan_floats(n);
    for (long i = 0; i < n; i++) {
        x[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
        ones[i] = 1.0f;
    }
    gelu_backward(d, x, ones, n);
    for (long i = 0; i < n; i++) {
        double v = x[i];
        double want = 0.5 * (1.0 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2.0 * M_PI);
        ck_assert_msg(fabs(d[i] - want) <= 1e-6 + 1e-5 * fabs(want), "gelu'(%g) = %.9g, want %.9g",
                      v, d[i], want);
    }
    free(x);
    free(ones);
    free(d);
}
END_TEST

/* ---- attention --------------------------------------------------------- */

typedef struct attn_ctx {
    float *qkv, *out, *probs;
    const float *mask;
    const long *off;
    const int *seq_off;
    const float *R;
    int S, C, NH;
} attn_ctx;

static double attn_loss(void *p)
{
    attn_ctx *c = p;
    attention_forward_train(c->out, c->probs, c->qkv, c->mask, c->off, c->seq_off, c->S, c->C,
                            c->NH);
    return dot_loss(c->out, c->R, (long)c->seq_off[c->S] * c->C);
}

/* Three sequences of different lengths and an empty one. */
enum { AT_S = 4, AT_C = 8, AT_NH = 2 };
static const int at_seq_off[AT_S + 1] = {0, 3, 8, 8, 10};
#define AT_T 10
#define AT_MAX_LEN 5

START_TEST(test_attention_offsets)
{
    long off[AT_S + 1];
    attention_probs_offsets(off, at_seq_off, AT_S, AT_NH);
    const long want[AT_S + 1] = {0, 18, 68, 68, 76};
    for (int s = 0; s <= AT_S; s++)
        ck_assert_int_eq(off[s], want[s]);
}
END_TEST

START_TEST(test_attention_forward)
{
    const int C = AT_C, NH = AT_NH, S = AT_S;
    long off[AT_S + 1];
    attention_probs_offsets(off, at_seq_off, S, NH);
    emb_rng r;
    emb_rng_seed(&r, 50);
    float *qkv = random_floats((long)AT_T * 3 * C, &r, -2, 2);
    float *out = nan_floats((long)AT_T * C);
    float *probs = nan_floats(off[S]);
    attention_forward_train(out, probs, qkv, NULL, off, at_seq_off, S, C, NH);

    const int nt = omp_get_max_threads();
    float *scratch = alloc_floats(attention_scratch_floats(AT_MAX_LEN, C / NH, nt));
    float *ref = alloc_floats((long)AT_T * C);
    attention_forward(ref, qkv, at_seq_off, S, C, NH, scratch, AT_MAX_LEN, nt);
    for (long i = 0; i < (long)AT_T * C; i++)
        ck_assert_msg(fabsf(out[i] - ref[i]) <= 1e-5f, "out[%ld] %g vs %g", i, out[i], ref[i]);

    /* every probability row sums to 1 */
    for (int s = 0; s < S; s++) {
        int n = at_seq_off[s + 1] - at_seq_off[s];
        for (int row = 0; row < NH * n; row++) {
            double sum = 0.0;
            for (int j = 0; j < n; j++)
                sum += probs[off[s] + (long)row * n + j];
            ck_assert(fabs(sum - 1.0) <= 1e-5);
        }
    }

    /* a mask of ones takes the masked path to the same result */
    float *ones = alloc_floats(off[S]);
    for (long i = 0; i < off[S]; i++)
        ones[i] = 1.0f;
    float *out2 = nan_floats((long)AT_T * C);
    attention_forward_train(out2, probs, qkv, ones, off, at_seq_off, S, C, NH);
    for (long i = 0; i < (long)AT_T * C; i++)
        ck_assert(fabsf(out2[i] - ref[i]) <= 1e-5f);
    free(out2);
    free(ones);
    free(ref);
    free(scratch);
    free(probs);
    free(out);
    free(qkv);
}
END_TEST

/* The inference kernel's edge shapes: one token, lengths off its 16-key
 * blocks, the longest sequence; head dims 64 and 48 (32 + 16 columns). */
START_TEST(test_attention_forward_shapes)
{
    enum { S = 3, MAX_LEN = 512 };
    const int seq_off[S + 1] = {0, 1, 18, 18 + MAX_LEN};
    const int C = _i == 0 ? 128 : 96, NH = 2;
    const long T = seq_off[S];
    long off[S + 1];
    attention_probs_offsets(off, seq_off, S, NH);
    emb_rng r;
    emb_rng_seed(&r, 52 + _i);
    float *qkv = random_floats(T * 3 * C, &r, -1, 1);
    float *want = nan_floats(T * C);
    float *probs = nan_floats(off[S]);
    attention_forward_train(want, probs, qkv, NULL, off, seq_off, S, C, NH);

    const int nt = omp_get_max_threads();
    float *scratch = nan_floats(attention_scratch_floats(MAX_LEN, C / NH, nt));
    float *got = nan_floats(T * C);
    attention_forward(got, qkv, seq_off, S, C, NH, scratch, MAX_LEN, nt);
    for (long i = 0; i < T * C; i++)
        ck_assert_msg(fabsf(got[i] - want[i]) <= 1e-5f, "C %d out[%ld] %g vs %g", C, i, got[i],
                      want[i]);
    free(got);
    free(scratch);
    free(probs);
    free(want);
    free(qkv);
}
END_TEST

/* _i: 0 without dropout, 1 with a dropout mask on the probabilities. */
START_TEST(test_attention_backward)
{
    const int C = AT_C, NH = AT_NH, S = AT_S;
    long off[AT_S + 1];
    attention_probs_offsets(off, at_seq_off, S, NH);
    emb_rng r;
    emb_rng_seed(&r, 51);
    float *mask = NULL;
    if (_i == 1) {
        mask = alloc_floats(off[S]);
        dropout_mask_fill(mask, off[S], 0.3f, &r);
    }
    attn_ctx c;
    c.qkv = random_floats((long)AT_T * 3 * C, &r, -2, 2);
    c.out = alloc_floats((long)AT_T * C);
    c.probs = alloc_floats(off[S]);
    c.mask = mask;
    c.off = off;
    c.seq_off = at_seq_off;
    c.R = random_floats((long)AT_T * C, &r, -1, 1);
    c.S = S;
    c.C = C;
    c.NH = NH;
    attn_loss(&c);

    /* exactly the documented size, so ASan sees any overrun */
    float *scratch = alloc_floats(attention_backward_scratch_floats(AT_MAX_LEN,
                                                                    omp_get_max_threads()));
    float *dqkv = nan_floats((long)AT_T * 3 * C);
    attention_backward(dqkv, c.R, c.qkv, c.probs, mask, off, at_seq_off, S, C, NH, scratch);
    check_grad(_i ? "dqkv (dropout)" : "dqkv", dqkv, NULL, c.qkv, (long)AT_T * 3 * C, attn_loss,
               &c);
    free(dqkv);
    free(scratch);
    free(c.qkv);
    free(c.out);
    free(c.probs);
    free((float *)c.R);
    free(mask);
}
END_TEST

/* ---- pooling ----------------------------------------------------------- */

typedef struct pool_ctx {
    float *x, *out;
    const float *R;
    const int *seq_off;
    int S, C, mode;
} pool_ctx;

static double pool_loss(void *p)
{
    pool_ctx *c = p;
    pool_forward(c->out, c->x, c->seq_off, c->S, c->C, c->mode);
    return dot_loss(c->out, c->R, (long)c->S * c->C);
}

/* _i: the pooling mode (0 mean, 1 cls, 2 last). */
START_TEST(test_pool_backward)
{
    enum { S = 3, C = 4 };
    const int seq_off[S + 1] = {0, 3, 4, 8};
    const long T = seq_off[S];
    emb_rng r;
    emb_rng_seed(&r, 60 + (uint64_t)_i);
    pool_ctx c;
    c.x = random_floats(T * C, &r, -1, 1);
    c.out = alloc_floats((long)S * C);
    c.R = random_floats((long)S * C, &r, -1, 1);
    c.seq_off = seq_off;
    c.S = S;
    c.C = C;
    c.mode = _i;
    float *dx = nan_floats(T * C);
    pool_backward(dx, c.R, seq_off, S, C, _i);
    check_grad("pool dx", dx, NULL, c.x, T * C, pool_loss, &c);
    free(dx);
    free(c.x);
    free(c.out);
    free((float *)c.R);
}
END_TEST

/* ---- L2 normalisation -------------------------------------------------- */

typedef struct l2_ctx {
    float *x, *y, *norm;
    const float *R;
    int S, C;
} l2_ctx;

static double l2_loss(void *p)
{
    l2_ctx *c = p;
    l2norm_forward_train(c->y, c->norm, c->x, c->S, c->C);
    return dot_loss(c->y, c->R, (long)c->S * c->C);
}

START_TEST(test_l2norm)
{
    enum { S = 3, C = 6 };
    emb_rng r;
    emb_rng_seed(&r, 70);
    l2_ctx c;
    c.x = random_floats((long)S * C, &r, -1, 1);
    c.y = alloc_floats((long)S * C);
    c.norm = alloc_floats(S);
    c.R = random_floats((long)S * C, &r, -1, 1);
    c.S = S;
    c.C = C;
    l2_loss(&c);

    float *ref = copy_floats(c.x, (long)S * C);
    l2norm_forward(ref, S, C);
    for (long i = 0; i < (long)S * C; i++)
        ck_assert(fabsf(c.y[i] - ref[i]) <= 1e-6f);
    for (int s = 0; s < S; s++)
        ck_assert(fabsf(c.x[s * C] / c.norm[s] - c.y[s * C]) <= 1e-6f);

    float *dx = nan_floats((long)S * C);
    l2norm_backward(dx, c.R, c.y, c.norm, S, C);
    check_grad("l2norm dx", dx, NULL, c.x, (long)S * C, l2_loss, &c);
    /* in place over dy */
    float *d = copy_floats(c.R, (long)S * C);
    l2norm_backward(d, d, c.y, c.norm, S, C);
    for (long i = 0; i < (long)S * C; i++)
        ck_assert_msg(d[i] == dx[i], "%ld: %.9g vs %.9g", i, d[i], dx[i]);

    /* a zero row stays zero and its gradient is finite */
    float zero[C] = {0}, y0[C], n0, g0[C];
    l2norm_forward_train(y0, &n0, zero, 1, C);
    l2norm_backward(g0, c.R, y0, &n0, 1, C);
    for (int k = 0; k < C; k++) {
        ck_assert(y0[k] == 0.0f);
        ck_assert(isfinite(g0[k]));
    }
    free(d);
    free(dx);
    free(ref);
    free(c.x);
    free(c.y);
    free(c.norm);
    free((float *)c.R);
}
END_TEST

/* ---- cross-entropy ----------------------------------------------------- */

typedef struct ce_ctx {
    float *logits;
    const int *labels;
    int N, V;
    float scale;
} ce_ctx;

static double ce_loss(void *p)
{
    ce_ctx *c = p;
    return c->scale * softmax_cross_entropy(NULL, c->logits, c->labels, c->N, c->V, c->scale);
}

/* Sum of -log softmax[label] over kept rows, in double. */
static double ce_reference(const float *logits, const int *labels, int N, int V)
{
    double total = 0.0;
    for (int i = 0; i < N; i++) {
        if (labels[i] < 0)
            continue;
        const float *row = logits + (long)i * V;
        double m = row[0];
        for (int j = 1; j < V; j++)
            m = row[j] > m ? row[j] : m;
        double sum = 0.0;
        for (int j = 0; j < V; j++)
            sum += exp(row[j] - m);
        total += log(sum) + m - row[labels[i]];
    }
    return total;
}

START_TEST(test_cross_entropy)
{
    enum { N = 4, V = 11 };
    const int labels[N] = {3, -1, 0, 10};
    const float scale = 0.25f; /* e.g. 1 / kept rows */
    emb_rng r;
    emb_rng_seed(&r, 80);
    ce_ctx c = {random_floats((long)N * V, &r, -3, 3), labels, N, V, scale};

    double loss = softmax_cross_entropy(NULL, c.logits, labels, N, V, scale);
    ck_assert(fabs(loss - ce_reference(c.logits, labels, N, V)) <= 1e-5 * fabs(loss));
    float *d = nan_floats((long)N * V);
    double loss2 = softmax_cross_entropy(d, c.logits, labels, N, V, scale);
    ck_assert(loss2 == loss);
    check_grad("dlogits", d, NULL, c.logits, (long)N * V, ce_loss, &c);
    for (int j = 0; j < V; j++)
        ck_assert(d[V + j] == 0.0f); /* the ignored row */

    /* dlogits over logits */
    float *inplace = copy_floats(c.logits, (long)N * V);
    double loss3 = softmax_cross_entropy(inplace, inplace, labels, N, V, scale);
    ck_assert(loss3 == loss);
    for (long i = 0; i < (long)N * V; i++)
        ck_assert(inplace[i] == d[i]);

    /* stable far from zero: shifting every logit changes nothing */
    float *shifted = copy_floats(c.logits, (long)N * V);
    for (long i = 0; i < (long)N * V; i++)
        shifted[i] += 1000.0f;
    double loss4 = softmax_cross_entropy(NULL, shifted, labels, N, V, scale);
    ck_assert_msg(isfinite(loss4) && fabs(loss4 - loss) <= 1e-3, "shifted loss %g vs %g", loss4,
                  loss);

    /* every row ignored */
    const int none[N] = {-1, -1, -1, -1};
    ck_assert(softmax_cross_entropy(d, c.logits, none, N, V, scale) == 0.0);
    for (long i = 0; i < (long)N * V; i++)
        ck_assert(d[i] == 0.0f);
    free(shifted);
    free(inplace);
    free(d);
    free(c.logits);
}
END_TEST

/* ---- dropout and random numbers ---------------------------------------- */

START_TEST(test_rng)
{
    emb_rng a, b;
    emb_rng_seed(&a, 123);
    emb_rng_seed(&b, 123);
    for (int i = 0; i < 100; i++)
        ck_assert(emb_rng_next(&a) == emb_rng_next(&b));
    emb_rng_seed(&b, 124);
    ck_assert(emb_rng_next(&a) != emb_rng_next(&b));

    emb_rng_seed(&a, 0); /* seed 0 must not be the stuck all-zero state */
    const int n = 100000;
    double sum = 0.0;
    float lo = 1.0f, hi = 0.0f;
    for (int i = 0; i < n; i++) {
        float u = emb_rng_uniform(&a);
        ck_assert(u >= 0.0f && u < 1.0f);
        sum += u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    /* mean 0.5, standard error 0.29 / sqrt(n) ~ 1e-3 */
    ck_assert_msg(fabs(sum / n - 0.5) < 5e-3, "mean %g", sum / n);
    ck_assert(lo < 1e-3f && hi > 1.0f - 1e-3f);
}
END_TEST

START_TEST(test_dropout_mask)
{
    const long n = 200000;
    const float p = 0.1f;
    const float keep = 1.0f / (1.0f - p);
    emb_rng r;
    emb_rng_seed(&r, 7);
    float *m = alloc_floats(n);
    dropout_mask_fill(m, n, p, &r);
    long zeros = 0;
    double sum = 0.0;
    for (long i = 0; i < n; i++) {
        ck_assert_msg(m[i] == 0.0f || m[i] == keep, "mask[%ld] = %g", i, m[i]);
        zeros += m[i] == 0.0f;
        sum += m[i];
    }
    /* standard error sqrt(p (1 - p) / n) ~ 7e-4 */
    ck_assert_msg(fabs((double)zeros / n - p) < 5e-3, "zero fraction %g", (double)zeros / n);
    ck_assert_msg(fabs(sum / n - 1.0) < 1e-2, "mean %g: dropout must keep the expectation", sum / n);

    /* the same seed gives the same mask; another seed does not */
    float *m2 = alloc_floats(n);
    emb_rng_seed(&r, 7);
    dropout_mask_fill(m2, n, p, &r);
    ck_assert(memcmp(m, m2, sizeof(float) * (size_t)n) == 0);
    emb_rng_seed(&r, 8);
    dropout_mask_fill(m2, n, p, &r);
    ck_assert(memcmp(m, m2, sizeof(float) * (size_t)n) != 0);

    /* p = 0: all ones; p = 1: all zeros */
    dropout_mask_fill(m2, n, 0.0f, &r);
    for (long i = 0; i < n; i++)
        ck_assert(m2[i] == 1.0f);
    dropout_mask_fill(m2, 100, 1.0f, &r);
    for (long i = 0; i < 100; i++)
        ck_assert(m2[i] == 0.0f);

    /* mul_mask_inplace: the elementwise product; NULL leaves x alone */
    float *x = random_floats(n, &r, -1, 1);
    float *x0 = copy_floats(x, n);
    mul_mask_inplace(x, NULL, n);
    ck_assert(memcmp(x, x0, sizeof(float) * (size_t)n) == 0);
    mul_mask_inplace(x, m, n);
    for (long i = 0; i < n; i++)
        ck_assert(x[i] == x0[i] * m[i]);
    free(x);
    free(x0);
    free(m);
    free(m2);
}
END_TEST

/* ---- accumulation ------------------------------------------------------ */

/* Two backward calls into zeroed parameter gradients give twice one call;
 * activation gradients come out the same both times. */
START_TEST(test_accumulate_and_overwrite)
{
    emb_rng r;
    emb_rng_seed(&r, 90);
    mm_ctx m = mm_make(4, 5, 3, &r);
    float dw[15] = {0}, db[3] = {0}, din[20], din1[20];
    matmul_backward(din1, dw, db, m.R, m.in, m.w, 4, 5, 3);
    float dw1[15], db1[3];
    memcpy(dw1, dw, sizeof dw);
    memcpy(db1, db, sizeof db);
    matmul_backward(din, dw, db, m.R, m.in, m.w, 4, 5, 3);
    for (int i = 0; i < 15; i++)
        ck_assert(fabsf(dw[i] - 2.0f * dw1[i]) <= 1e-6f);
    for (int i = 0; i < 3; i++)
        ck_assert(fabsf(db[i] - 2.0f * db1[i]) <= 1e-6f);
    ck_assert(memcmp(din, din1, sizeof din) == 0);
    mm_free(&m);

    ln_ctx l = ln_make(3, 4, &r);
    ln_loss(&l);
    float lw[4] = {0}, lb[4] = {0}, ld[12], ld1[12], lw1[4], lb1[4];
    layernorm_backward(ld1, lw, lb, l.R, l.inp, l.mean, l.rstd, l.w, 3, 4);
    memcpy(lw1, lw, sizeof lw);
    memcpy(lb1, lb, sizeof lb);
    layernorm_backward(ld, lw, lb, l.R, l.inp, l.mean, l.rstd, l.w, 3, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert(fabsf(lw[i] - 2.0f * lw1[i]) <= 1e-6f);
        ck_assert(fabsf(lb[i] - 2.0f * lb1[i]) <= 1e-6f);
    }
    ck_assert(memcmp(ld, ld1, sizeof ld) == 0);
    ln_free(&l);
}
END_TEST

/* ---- larger shapes: the OpenMP and column-block paths ------------------ */

START_TEST(test_large_layernorm)
{
    /* C not a multiple of the 64-column blocks */
    enum { T = 130, C = 300 };
    emb_rng r;
    emb_rng_seed(&r, 100);
    ln_ctx c = ln_make(T, C, &r);
    ln_loss(&c);
    float *dinp = nan_floats((long)T * C);
    float *dw = calloc(C, sizeof(float));
    float *db = calloc(C, sizeof(float));
    ck_assert_ptr_nonnull(dw);
    ck_assert_ptr_nonnull(db);
    layernorm_backward(dinp, dw, db, c.R, c.inp, c.mean, c.rstd, c.w, T, C);
    check_directional("large dinp", dinp, c.inp, (long)T * C, ln_loss, &c, &r);
    check_directional("large dw", dw, c.w, C, ln_loss, &c, &r);
    check_directional("large db", db, c.b, C, ln_loss, &c, &r);
    free(dinp);
    free(dw);
    free(db);
    ln_free(&c);
}
END_TEST

START_TEST(test_large_matmul_and_gelu)
{
    emb_rng r;
    emb_rng_seed(&r, 101);
    mm_ctx m = mm_make(150, 40, 300, &r);
    float *din = nan_floats(150L * 40);
    float *dw = calloc(300L * 40, sizeof(float));
    float *db = calloc(300, sizeof(float));
    ck_assert_ptr_nonnull(dw);
    ck_assert_ptr_nonnull(db);
    matmul_backward(din, dw, db, m.R, m.in, m.w, 150, 40, 300);
    check_directional("large din", din, m.in, 150L * 40, mm_loss, &m, &r);
    check_directional("large dw", dw, m.w, 300L * 40, mm_loss, &m, &r);
    check_directional("large db", db, m.bias, 300, mm_loss, &m, &r);
    free(din);
    free(dw);
    free(db);
    mm_free(&m);

    gelu_ctx g = gelu_make(40003, &r);
    float *dg = nan_floats(g.n);
    gelu_backward(dg, g.inp, g.R, g.n);
    check_directional("large gelu", dg, g.inp, g.n, gelu_loss, &g, &r);
    free(dg);
    gelu_free(&g);
}
END_TEST

START_TEST(test_large_attention)
{
    /* sequences up to 40 tokens, 4 heads of 16 */
    enum { S = 5, C = 64, NH = 4 };
    const int seq_off[S + 1] = {0, 40, 47, 80, 81, 110};
    const long T = seq_off[S];
    long off[S + 1];
    attention_probs_offsets(off, seq_off, S, NH);
    emb_rng r;
    emb_rng_seed(&r, 102);
    float *mask = alloc_floats(off[S]);
    dropout_mask_fill(mask, off[S], 0.1f, &r);
    attn_ctx c;
    c.qkv = random_floats(T * 3 * C, &r, -1, 1);
    c.out = alloc_floats(T * C);
    c.probs = alloc_floats(off[S]);
    c.mask = mask;
    c.off = off;
    c.seq_off = seq_off;
    c.R = random_floats(T * C, &r, -1, 1);
    c.S = S;
    c.C = C;
    c.NH = NH;
    attn_loss(&c);
    float *scratch = alloc_floats(attention_backward_scratch_floats(40, omp_get_max_threads()));
    float *dqkv = nan_floats(T * 3 * C);
    attention_backward(dqkv, c.R, c.qkv, c.probs, mask, off, seq_off, S, C, NH, scratch);
    check_directional("large dqkv", dqkv, c.qkv, T * 3 * C, attn_loss, &c, &r);
    free(dqkv);
    free(scratch);
    free(c.qkv);
    free(c.out);
    free(c.probs);
    free((float *)c.R);
    free(mask);
}
END_TEST

START_TEST(test_large_cross_entropy)
{
    /* V not a multiple of the 256-float chunks */
    enum { N = 9, V = 5001 };
    const int labels[N] = {0, 5000, -1, 17, 256, 255, 4999, -1, 3};
    emb_rng r;
    emb_rng_seed(&r, 103);
    ce_ctx c = {random_floats((long)N * V, &r, -4, 4), labels, N, V, 1.0f / 7.0f};
    double loss = softmax_cross_entropy(NULL, c.logits, labels, N, V, c.scale);
    double ref = ce_reference(c.logits, labels, N, V);
    ck_assert_msg(fabs(loss - ref) <= 1e-6 * fabs(ref), "loss %.9g vs %.9g", loss, ref);
    float *d = nan_floats((long)N * V);
    softmax_cross_entropy(d, c.logits, labels, N, V, c.scale);
    check_directional("large dlogits", d, c.logits, (long)N * V, ce_loss, &c, &r);
    free(d);
    free(c.logits);
}
END_TEST

/* ---- the checker itself ------------------------------------------------ */

/* Plausible mistakes must fail the same tolerance the tests use. */
START_TEST(test_checker_catches_errors)
{
    emb_rng r;
    emb_rng_seed(&r, 110);

    /* one element of a correct gradient off by 1% of the largest */
    ln_ctx l = ln_make(3, 9, &r);
    ln_loss(&l);
    float *dinp = alloc_floats(27);
    float dw[9] = {0}, db[9] = {0};
    layernorm_backward(dinp, dw, db, l.R, l.inp, l.mean, l.rstd, l.w, 3, 9);
    double *num = numeric_grad(l.inp, 27, ln_loss, &l);
    ck_assert(grad_error(dinp, NULL, num, 27) <= GRAD_TOL);
    double big = 0.0;
    for (int i = 0; i < 27; i++)
        big = fabs(num[i]) > big ? fabs(num[i]) : big;
    dinp[13] += (float)(0.01 * big);
    ck_assert(grad_error(dinp, NULL, num, 27) > GRAD_TOL);

    /* LayerNorm backward without its mean terms: rstd * w * dout */
    for (int t = 0; t < 3; t++) {
        for (int k = 0; k < 9; k++)
            dinp[t * 9 + k] = l.rstd[t] * l.w[k] * l.R[t * 9 + k];
    }
    ck_assert(grad_error(dinp, NULL, num, 27) > GRAD_TOL);
    free(num);
    free(dinp);
    ln_free(&l);

    /* GELU' without the x pdf(x) term */
    gelu_ctx g = gelu_make(16, &r);
    float *dg = alloc_floats(16);
    for (int i = 0; i < 16; i++)
        dg[i] = g.R[i] * 0.5f * (1.0f + erff(g.inp[i] / sqrtf(2.0f)));
    num = numeric_grad(g.inp, 16, gelu_loss, &g);
    ck_assert(grad_error(dg, NULL, num, 16) > GRAD_TOL);
    free(num);
    free(dg);
    gelu_free(&g);

    /* attention backward that forgets the dropout mask */
    long off[AT_S + 1];
    attention_probs_offsets(off, at_seq_off, AT_S, AT_NH);
    float *mask = alloc_floats(off[AT_S]);
    dropout_mask_fill(mask, off[AT_S], 0.3f, &r);
    attn_ctx c;
    c.qkv = random_floats((long)AT_T * 3 * AT_C, &r, -2, 2);
    c.out = alloc_floats((long)AT_T * AT_C);
    c.probs = alloc_floats(off[AT_S]);
    c.mask = mask;
    c.off = off;
    c.seq_off = at_seq_off;
    c.R = random_floats((long)AT_T * AT_C, &r, -1, 1);
    c.S = AT_S;
    c.C = AT_C;
    c.NH = AT_NH;
    attn_loss(&c);
    float *scratch = alloc_floats(attention_backward_scratch_floats(AT_MAX_LEN,
                                                                    omp_get_max_threads()));
    float *dqkv = alloc_floats((long)AT_T * 3 * AT_C);
    attention_backward(dqkv, c.R, c.qkv, c.probs, NULL, off, at_seq_off, AT_S, AT_C, AT_NH,
                       scratch);
    num = numeric_grad(c.qkv, (long)AT_T * 3 * AT_C, attn_loss, &c);
    ck_assert(grad_error(dqkv, NULL, num, (long)AT_T * 3 * AT_C) > GRAD_TOL);
    /* a gradient left NaN is caught too */
    attention_backward(dqkv, c.R, c.qkv, c.probs, mask, off, at_seq_off, AT_S, AT_C, AT_NH,
                       scratch);
    ck_assert(grad_error(dqkv, NULL, num, (long)AT_T * 3 * AT_C) <= GRAD_TOL);
    dqkv[5] = NAN;
    ck_assert(grad_error(dqkv, NULL, num, (long)AT_T * 3 * AT_C) > GRAD_TOL);
    free(num);
    free(dqkv);
    free(scratch);
    free(c.qkv);
    free(c.out);
    free(c.probs);
    free((float *)c.R);
    free(mask);
}
END_TEST

static Suite *backward_suite(void)
{
    Suite *s = suite_create("backward");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_embeddings);
    tcase_add_test(tc, test_layernorm_forward);
    tcase_add_test(tc, test_layernorm_backward);
    tcase_add_test(tc, test_matmul_backward);
    tcase_add_test(tc, test_dense_backward);
    tcase_add_test(tc, test_gelu_backward);
    tcase_add_test(tc, test_gelu_derivative_values);
    tcase_add_test(tc, test_attention_offsets);
    tcase_add_test(tc, test_attention_forward);
    tcase_add_loop_test(tc, test_attention_forward_shapes, 0, 2);
    tcase_add_loop_test(tc, test_attention_backward, 0, 2);
    tcase_add_loop_test(tc, test_pool_backward, 0, 3);
    tcase_add_test(tc, test_l2norm);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_accumulate_and_overwrite);
    suite_add_tcase(s, tc);

    tc = tcase_create("random");
    tcase_add_test(tc, test_rng);
    tcase_add_test(tc, test_dropout_mask);
    suite_add_tcase(s, tc);

    tc = tcase_create("large");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_large_layernorm);
    tcase_add_test(tc, test_large_matmul_and_gelu);
    tcase_add_test(tc, test_large_attention);
    tcase_add_test(tc, test_large_cross_entropy);
    suite_add_tcase(s, tc);

    tc = tcase_create("checker");
    tcase_add_test(tc, test_checker_catches_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(backward_suite());
}
