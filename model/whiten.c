/* whiten.c: mean, covariance and the whitening transform of embeddings.
 * See whiten.h for the math. */
#include "whiten.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#undef I /* cblas.h brings complex.h */

/* LAPACK's symmetric eigensolver (divide and conquer) from the LAPACK that
 * OpenBLAS bundles; Debian's OpenBLAS packages ship no lapacke.h, so the
 * Fortran symbol is declared here. gfortran passes the lengths of the two
 * character arguments last. Column-major: on return column j of a is the
 * eigenvector of w[j], eigenvalues ascending. */
extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                    double *w, double *work, const int *lwork, int *iwork, const int *liwork,
                    int *info, size_t jobz_len, size_t uplo_len);

/* Rows per emb_moments_add chunk buffer. */
#define MOMENTS_CHUNK_ROWS 1024
/* The largest dimension whitened (a D x D double matrix is 8 D^2 bytes). */
#define WHITEN_MAX_DIM 16384
/* An eigenvalue below this share of the largest is a direction without
 * variance: float32 embeddings carry ~1e-7 relative rounding noise, whose
 * variance is ~1e-14 of the signal's, while real spectra stay far above
 * (embedd-small: 5e-4 for its smallest real direction). */
#define WHITEN_NO_VARIANCE 1e-10

/* ---- moments -------------------------------------------------------------- */

int emb_moments_init(emb_moments *m, int dim, emb_err *err)
{
    memset(m, 0, sizeof *m);
    if (dim < 1 || dim > WHITEN_MAX_DIM)
        return emb_fail(err, "whitening: dimension %d out of range [1, %d]", dim, WHITEN_MAX_DIM);
    m->dim = dim;
    m->cap_rows = MOMENTS_CHUNK_ROWS;
    m->mean = calloc((size_t)dim, sizeof(double));
    m->chunk_mean = calloc((size_t)dim, sizeof(double));
    m->m2 = calloc((size_t)dim * (size_t)dim, sizeof(double));
    m->chunk = malloc(sizeof(double) * (size_t)m->cap_rows * (size_t)dim);
    if (m->mean == NULL || m->chunk_mean == NULL || m->m2 == NULL || m->chunk == NULL) {
        emb_moments_free(m);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY,
                           "whitening: out of memory for a %d x %d covariance", dim, dim);
    }
    return 0;
}

void emb_moments_free(emb_moments *m)
{
    free(m->mean);
    free(m->chunk_mean);
    free(m->m2);
    free(m->chunk);
    memset(m, 0, sizeof *m);
}

/* Merges rows x (nb, D), nb <= cap_rows: chunk mean cm and centred scatter
 * S_b, then (Chan et al.) delta = cm - mean, n = na + nb,
 * m2 += S_b + delta delta^T na nb / n, mean += delta nb / n. */
static void moments_merge(emb_moments *m, const float *x, int nb)
{
    const int D = m->dim;
    double *cm = m->chunk_mean;
    memset(cm, 0, sizeof(double) * (size_t)D);
    for (int r = 0; r < nb; r++) {
        for (int c = 0; c < D; c++)
            cm[c] += x[(long)r * D + c];
    }
    for (int c = 0; c < D; c++)
        cm[c] /= nb;
    for (int r = 0; r < nb; r++) {
        for (int c = 0; c < D; c++)
            m->chunk[(long)r * D + c] = x[(long)r * D + c] - cm[c];
    }
    /* m2 (upper) += chunk^T chunk */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D, nb, 1.0, m->chunk, D, 1.0, m->m2, D);
    const double na = (double)m->n, n = na + nb;
    for (int c = 0; c < D; c++)
        cm[c] -= m->mean[c]; /* cm is delta from here on */
    if (m->n > 0)
        cblas_dsyr(CblasRowMajor, CblasUpper, D, na * nb / n, cm, 1, m->m2, D);
    for (int c = 0; c < D; c++)
        m->mean[c] += cm[c] * nb / n;
    m->n += nb;
}

int emb_moments_add(emb_moments *m, const float *x, int rows, emb_err *err)
{
    if (rows < 0)
        return emb_fail(err, "whitening: negative row count");
    for (int r0 = 0; r0 < rows; r0 += m->cap_rows) {
        int nb = rows - r0 < m->cap_rows ? rows - r0 : m->cap_rows;
        const float *chunk = x + (long)r0 * m->dim;
        for (long i = 0; i < (long)nb * m->dim; i++) {
            if (!isfinite(chunk[i]))
                return emb_fail(err, "whitening: row %ld has a non-finite value",
                                m->n + i / m->dim);
        }
        moments_merge(m, chunk, nb);
    }
    return 0;
}

int emb_moments_covariance(const emb_moments *m, double *sigma, emb_err *err)
{
    const int D = m->dim;
    if (m->n < 2)
        return emb_fail(err, "whitening needs at least 2 texts, got %ld", m->n);
    const double scale = 1.0 / (double)(m->n - 1);
    for (int i = 0; i < D; i++) {
        for (int j = i; j < D; j++) {
            double v = m->m2[(long)i * D + j] * scale;
            sigma[(long)i * D + j] = v;
            sigma[(long)j * D + i] = v;
        }
    }
    return 0;
}

/* ---- the transform ----------------------------------------------------------- */

/* Eigenvalues (ascending, into lambda) and eigenvectors (row j of a is the
 * eigenvector of lambda[j]) of the symmetric a (D, D), in place. */
static int eigen_symmetric(double *a, int D, double *lambda, emb_err *err)
{
    int lwork = -1, liwork = -1, info = 0, iwork_query = 0;
    double work_query = 0.0;
    /* a is symmetric, so row- and column-major are the same matrix; the
     * eigenvectors come back as columns of the column-major result, which
     * are the rows of our row-major array. */
    dsyevd_("V", "U", &D, a, &D, lambda, &work_query, &lwork, &iwork_query, &liwork, &info, 1, 1);
    if (info != 0)
        return emb_fail(err, "whitening: LAPACK dsyevd workspace query failed (info %d)", info);
    lwork = (int)work_query;
    liwork = iwork_query;
    double *work = malloc(sizeof(double) * (size_t)(lwork > 1 ? lwork : 1));
    int *iwork = malloc(sizeof(int) * (size_t)(liwork > 1 ? liwork : 1));
    int rc = 0;
    if (work == NULL || iwork == NULL) {
        rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "whitening: out of memory for the eigensolver");
    } else {
        dsyevd_("V", "U", &D, a, &D, lambda, work, &lwork, iwork, &liwork, &info, 1, 1);
        if (info != 0)
            rc = emb_fail(err, "whitening: LAPACK dsyevd failed (info %d)", info);
    }
    free(work);
    free(iwork);
    return rc;
}

void emb_whiten_free(emb_whiten *w)
{
    free(w->w);
    free(w->b);
    free(w->eigenvalues);
    memset(w, 0, sizeof *w);
}

/* How many eigenvalues (ascending in lambda) carry variance. */
static int variance_rank(const double *lambda, int D)
{
    const double floor = lambda[D - 1] * WHITEN_NO_VARIANCE;
    int r = 0;
    while (r < D && lambda[D - 1 - r] > floor && lambda[D - 1 - r] > 0.0)
        r++;
    return r;
}

/* W (k, D) rows from the eigenvectors u (row j for lambda[j], ascending)
 * scaled by 1/sqrt(lambda'), largest first; b = -W mu. */
static int build_transform(emb_whiten *out, const double *u, const double *lambda,
                           const double *mu, double shrink, emb_err *err)
{
    const int D = out->dim, k = out->k;
    double mean_lambda = 0.0, total = 0.0, kept = 0.0;
    for (int j = 0; j < D; j++) {
        double l = lambda[j] > 0.0 ? lambda[j] : 0.0;
        mean_lambda += l / D;
        total += l;
    }
    if (k > out->rank && shrink == 0.0)
        return emb_fail(err,
                        "whitening: direction %d of %d has no variance in the texts (they span "
                        "%d): use --dims %d or less, or a positive --shrink",
                        out->rank + 1, D, out->rank, out->rank);
    for (int r = 0; r < k; r++) {
        const int j = D - 1 - r;
        const double l = lambda[j] > 0.0 ? lambda[j] : 0.0;
        const double shrunk = (1.0 - shrink) * l + shrink * mean_lambda;
        if (!(shrunk > 0.0))
            return emb_fail(err, "whitening: the texts have no variance at all");
        const double scale = 1.0 / sqrt(shrunk);
        double bias = 0.0;
        for (int c = 0; c < D; c++) {
            double wv = u[(long)j * D + c] * scale;
            out->w[(long)r * D + c] = (float)wv;
            bias -= wv * mu[c];
        }
        out->b[r] = (float)bias;
        kept += l;
    }
    for (int j = 0; j < D; j++)
        out->eigenvalues[j] = lambda[D - 1 - j];
    out->kept_variance = total > 0.0 ? kept / total : 0.0;
    return 0;
}

int emb_whiten_fit(const emb_moments *m, int k, double shrink, emb_whiten *out, emb_err *err)
{
    const int D = m->dim;
    memset(out, 0, sizeof *out);
    if (k < 0 || k > D)
        return emb_fail(err, "whitening: %d output dimensions, must be 1..%d (or 0)", k, D);
    if (!(shrink >= 0.0 && shrink < 1.0))
        return emb_fail(err, "whitening: shrink %g must be in [0, 1)", shrink);
    double *a = malloc(sizeof(double) * (size_t)D * (size_t)D);
    double *lambda = malloc(sizeof(double) * (size_t)D);
    out->dim = D;
    out->eigenvalues = malloc(sizeof(double) * (size_t)D);
    int rc = -1;
    if (a == NULL || lambda == NULL || out->eigenvalues == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "whitening: out of memory");
        goto out;
    }
    if (emb_moments_covariance(m, a, err) != 0 || eigen_symmetric(a, D, lambda, err) != 0)
        goto out;
    out->rank = variance_rank(lambda, D);
    out->k = k > 0 ? k : out->rank;
    out->w = malloc(sizeof(float) * (size_t)out->k * (size_t)D);
    out->b = malloc(sizeof(float) * (size_t)(out->k > 0 ? out->k : 1));
    if (out->w == NULL || out->b == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "whitening: out of memory");
        goto out;
    }
    rc = build_transform(out, a, lambda, m->mean, shrink, err);
out:
    free(a);
    free(lambda);
    if (rc != 0)
        emb_whiten_free(out);
    return rc;
}
