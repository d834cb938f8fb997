/* test_whiten.c: the whitening transform (model/whiten.c) on synthetic
 * embeddings with a known covariance: the fitted rows come out with zero
 * mean and identity covariance, --dims k keeps the k directions of largest
 * variance, chunked moments equal a two-pass computation, and bad input
 * is refused with a message that says what to do. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops_train.h"
#include "run_suite.h"
#include "whiten.h"

enum { D = 6, N = 4000 };

/* The true spread: variances along the orthonormal rows of q. */
static const double variances[D] = {16.0, 9.0, 4.0, 1.0, 0.25, 0.0625};
static const double offset[D] = {5.0, -3.0, 10.0, 0.0, 2.0, 1.0};

static double normal(emb_rng *r)
{
    double u1 = emb_rng_uniform(r), u2 = emb_rng_uniform(r);
    if (u1 < 1e-12)
        u1 = 1e-12;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* q (D, D): a random orthonormal basis (Gram-Schmidt on normal rows). */
static void random_basis(double *q, emb_rng *r)
{
    for (int i = 0; i < D; i++) {
        double *v = q + i * D;
        for (int c = 0; c < D; c++)
            v[c] = normal(r);
        for (int j = 0; j < i; j++) {
            double dot = 0.0;
            for (int c = 0; c < D; c++)
                dot += v[c] * q[j * D + c];
            for (int c = 0; c < D; c++)
                v[c] -= dot * q[j * D + c];
        }
        double norm = 0.0;
        for (int c = 0; c < D; c++)
            norm += v[c] * v[c];
        for (int c = 0; c < D; c++)
            v[c] /= sqrt(norm);
    }
}

/* x (n, D) = offset + sum_i sqrt(variances[i]) z_i q_i. */
static float *sample(int n, const double *q, emb_rng *r)
{
    float *x = malloc(sizeof(float) * (size_t)n * D);
    ck_assert(x != NULL);
    for (int t = 0; t < n; t++) {
        double row[D];
        memcpy(row, offset, sizeof row);
        for (int i = 0; i < D; i++) {
            double z = normal(r) * sqrt(variances[i]);
            for (int c = 0; c < D; c++)
                row[c] += z * q[i * D + c];
        }
        for (int c = 0; c < D; c++)
            x[(long)t * D + c] = (float)row[c];
    }
    return x;
}

/* y (n, k) = x W^T + b, in double. */
static double *apply(const emb_whiten *w, const float *x, int n)
{
    double *y = malloc(sizeof(double) * (size_t)n * (size_t)w->k);
    ck_assert(y != NULL);
    for (int t = 0; t < n; t++) {
        for (int r = 0; r < w->k; r++) {
            double acc = w->b[r];
            for (int c = 0; c < D; c++)
                acc += (double)w->w[(long)r * D + c] * x[(long)t * D + c];
            y[(long)t * w->k + r] = acc;
        }
    }
    return y;
}

/* The largest |mean| and |cov - I| of y (n, k). */
static void moments_error(const double *y, int n, int k, double *mean_err, double *cov_err)
{
    double mean[D] = {0};
    for (int t = 0; t < n; t++) {
        for (int r = 0; r < k; r++)
            mean[r] += y[(long)t * k + r] / n;
    }
    *mean_err = 0.0;
    *cov_err = 0.0;
    for (int r = 0; r < k; r++) {
        *mean_err = fmax(*mean_err, fabs(mean[r]));
        for (int s = 0; s < k; s++) {
            double cov = 0.0;
            for (int t = 0; t < n; t++)
                cov += (y[(long)t * k + r] - mean[r]) * (y[(long)t * k + s] - mean[s]);
            cov /= n - 1;
            *cov_err = fmax(*cov_err, fabs(cov - (r == s ? 1.0 : 0.0)));
        }
    }
}

static void fit(const float *x, int n, int k, double shrink, emb_whiten *w)
{
    emb_err err = {0};
    emb_moments m;
    ck_assert_msg(emb_moments_init(&m, D, &err) == 0, "%s", err.msg);
    ck_assert_msg(emb_moments_add(&m, x, n, &err) == 0, "%s", err.msg);
    ck_assert_msg(emb_whiten_fit(&m, k, shrink, w, &err) == 0, "%s", err.msg);
    emb_moments_free(&m);
}

START_TEST(test_full_whitening)
{
    emb_rng r;
    emb_rng_seed(&r, 11);
    double q[D * D];
    random_basis(q, &r);
    float *x = sample(N, q, &r);
    emb_whiten w;
    fit(x, N, D, 0.0, &w);
    ck_assert_int_eq(w.k, D);
    double *y = apply(&w, x, N);
    double mean_err, cov_err;
    moments_error(y, N, D, &mean_err, &cov_err);
    ck_assert_msg(mean_err < 1e-4 && cov_err < 1e-4, "mean off by %g, covariance off by %g",
                  mean_err, cov_err);
    /* the eigenvalues come out largest first, near the true variances */
    for (int i = 0; i < D; i++) {
        ck_assert_msg(fabs(w.eigenvalues[i] / variances[i] - 1.0) < 0.1,
                      "eigenvalue %d: %g, true variance %g", i, w.eigenvalues[i], variances[i]);
        if (i > 0)
            ck_assert(w.eigenvalues[i] <= w.eigenvalues[i - 1]);
    }
    ck_assert(fabs(w.kept_variance - 1.0) < 1e-12);
    free(y);
    emb_whiten_free(&w);
    free(x);
}
END_TEST

/* Rows on a hyperplane (each row's values sum to the same number, as
 * LayerNorm makes a BERT's outputs): k = 0 whitens the D - 1 directions
 * with variance and leaves out the one without. */
START_TEST(test_direction_without_variance)
{
    emb_rng r;
    emb_rng_seed(&r, 16);
    double q[D * D];
    random_basis(q, &r);
    float *x = sample(N, q, &r);
    for (int t = 0; t < N; t++) {
        double mean = 0.0;
        for (int c = 0; c < D; c++)
            mean += x[(long)t * D + c] / D;
        for (int c = 0; c < D; c++)
            x[(long)t * D + c] = (float)(x[(long)t * D + c] - mean + 0.5);
    }
    emb_whiten w;
    fit(x, N, 0, 0.0, &w);
    ck_assert_int_eq(w.rank, D - 1);
    ck_assert_int_eq(w.k, D - 1);
    double *y = apply(&w, x, N);
    double mean_err, cov_err;
    moments_error(y, N, D - 1, &mean_err, &cov_err);
    ck_assert_msg(mean_err < 1e-4 && cov_err < 1e-4, "mean %g covariance %g", mean_err, cov_err);
    free(y);
    emb_whiten_free(&w);
    free(x);
}
END_TEST

/* --dims 2: the two outputs are the directions of variance 16 and 9 (up
 * to sign), whitened. */
START_TEST(test_top_k_directions)
{
    emb_rng r;
    emb_rng_seed(&r, 12);
    double q[D * D];
    random_basis(q, &r);
    float *x = sample(N, q, &r);
    emb_whiten w;
    fit(x, N, 2, 0.0, &w);
    for (int row = 0; row < 2; row++) {
        double dot = 0.0, norm = 0.0;
        for (int c = 0; c < D; c++) {
            dot += w.w[row * D + c] * q[row * D + c];
            norm += (double)w.w[row * D + c] * w.w[row * D + c];
        }
        double cosine = fabs(dot) / sqrt(norm);
        ck_assert_msg(cosine > 0.99, "output %d: |cos| to the true direction %g", row, cosine);
        /* scaled by 1/sqrt(variance) */
        ck_assert_msg(fabs(sqrt(norm) * sqrt(variances[row]) - 1.0) < 0.05, "output %d scale",
                      row);
    }
    double *y = apply(&w, x, N);
    double mean_err, cov_err;
    moments_error(y, N, 2, &mean_err, &cov_err);
    ck_assert_msg(mean_err < 1e-4 && cov_err < 1e-4, "mean %g covariance %g", mean_err, cov_err);
    double total = 0.0;
    for (int i = 0; i < D; i++)
        total += variances[i];
    ck_assert_msg(fabs(w.kept_variance - 25.0 / total) < 0.02, "kept %g", w.kept_variance);
    free(y);
    emb_whiten_free(&w);
    free(x);
}
END_TEST

/* Rows added in small chunks give the moments of a two-pass computation
 * in double, whatever the large common offset. */
START_TEST(test_chunked_moments)
{
    emb_rng r;
    emb_rng_seed(&r, 13);
    double q[D * D];
    random_basis(q, &r);
    const int n = 2500;
    float *x = sample(n, q, &r);
    emb_err err;
    emb_moments m;
    ck_assert(emb_moments_init(&m, D, &err) == 0);
    for (int t = 0; t < n; t += 7)
        ck_assert(emb_moments_add(&m, x + (long)t * D, n - t < 7 ? n - t : 7, &err) == 0);
    ck_assert_int_eq(m.n, n);
    double mean[D] = {0}, sigma[D * D], want;
    for (int t = 0; t < n; t++) {
        for (int c = 0; c < D; c++)
            mean[c] += x[(long)t * D + c] / (double)n;
    }
    ck_assert(emb_moments_covariance(&m, sigma, &err) == 0);
    for (int i = 0; i < D; i++) {
        ck_assert(fabs(m.mean[i] - mean[i]) < 1e-10);
        for (int j = 0; j < D; j++) {
            want = 0.0;
            for (int t = 0; t < n; t++)
                want += (x[(long)t * D + i] - mean[i]) * (x[(long)t * D + j] - mean[j]);
            want /= n - 1;
            ck_assert_msg(fabs(sigma[i * D + j] - want) < 1e-9 * (1.0 + fabs(want)),
                          "sigma[%d][%d] %.15g, two-pass %.15g", i, j, sigma[i * D + j], want);
        }
    }
    emb_moments_free(&m);
    free(x);
}
END_TEST

/* Shrinking pulls the spectrum toward its mean: the fitted rows are then
 * no longer exactly white, but their variances are ordered and finite. */
START_TEST(test_shrink)
{
    emb_rng r;
    emb_rng_seed(&r, 14);
    double q[D * D];
    random_basis(q, &r);
    float *x = sample(N, q, &r);
    emb_whiten w;
    fit(x, N, D, 0.5, &w);
    double *y = apply(&w, x, N);
    /* output r has variance lambda_r / ((lambda_r + mean) / 2): below 2, rising
     * with r's rank from the top (small directions are scaled up less) */
    double mean_l = 0.0;
    for (int i = 0; i < D; i++)
        mean_l += w.eigenvalues[i] / D;
    for (int s = 0; s < D; s++) {
        double v = 0.0;
        for (int t = 0; t < N; t++)
            v += y[(long)t * D + s] * y[(long)t * D + s];
        v /= N - 1;
        double want = w.eigenvalues[s] / (0.5 * w.eigenvalues[s] + 0.5 * mean_l);
        ck_assert_msg(fabs(v - want) < 1e-3 * want, "output %d variance %g, expected %g", s, v,
                      want);
    }
    free(y);
    emb_whiten_free(&w);
    free(x);
}
END_TEST

START_TEST(test_refusals)
{
    emb_rng r;
    emb_rng_seed(&r, 15);
    double q[D * D];
    random_basis(q, &r);
    float *x = sample(4, q, &r);
    emb_err err = {0};
    emb_moments m;
    emb_whiten w;
    ck_assert(emb_moments_init(&m, 0, &err) == -1);
    ck_assert(emb_moments_init(&m, D, &err) == 0);
    ck_assert(emb_moments_add(&m, x, 1, &err) == 0);
    ck_assert(emb_whiten_fit(&m, D, 0.0, &w, &err) == -1);
    ck_assert_msg(strstr(err.msg, "at least 2 texts") != NULL, "%s", err.msg);
    /* 4 texts span 3 directions of 6: the other 3 cannot be whitened ... */
    ck_assert(emb_moments_add(&m, x + D, 3, &err) == 0);
    ck_assert(emb_whiten_fit(&m, D, 0.0, &w, &err) == -1);
    ck_assert_msg(strstr(err.msg, "direction 4 of 6 has no variance") != NULL &&
                  strstr(err.msg, "--dims 3") != NULL, "%s", err.msg);
    /* ... unless asked for 3 dims (or 0: the rank, 3), or shrunk */
    ck_assert_msg(emb_whiten_fit(&m, 3, 0.0, &w, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(w.rank, 3);
    emb_whiten_free(&w);
    ck_assert_msg(emb_whiten_fit(&m, 0, 0.0, &w, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(w.k, 3);
    emb_whiten_free(&w);
    ck_assert_msg(emb_whiten_fit(&m, D, 0.1, &w, &err) == 0, "%s", err.msg);
    emb_whiten_free(&w);
    ck_assert(emb_whiten_fit(&m, D + 1, 0.0, &w, &err) == -1);
    ck_assert(emb_whiten_fit(&m, -1, 0.0, &w, &err) == -1);
    ck_assert(emb_whiten_fit(&m, D, 1.0, &w, &err) == -1);
    ck_assert_msg(strstr(err.msg, "shrink") != NULL, "%s", err.msg);
    float bad[D] = {1, 2, NAN, 4, 5, 6};
    ck_assert(emb_moments_add(&m, bad, 1, &err) == -1);
    ck_assert_msg(strstr(err.msg, "non-finite") != NULL, "%s", err.msg);
    emb_moments_free(&m);
    free(x);
}
END_TEST

static Suite *whiten_suite(void)
{
    Suite *s = suite_create("whiten");
    TCase *tc = tcase_create("whiten");
    tcase_add_test(tc, test_full_whitening);
    tcase_add_test(tc, test_top_k_directions);
    tcase_add_test(tc, test_direction_without_variance);
    tcase_add_test(tc, test_chunked_moments);
    tcase_add_test(tc, test_shrink);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(whiten_suite());
}
