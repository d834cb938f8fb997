/* test_bowtrain.c: the bag-of-words contrastive trainer (model/bowtrain.h):
 *   - the loss and gradient of emb_bow_loss_grad against finite differences
 *     on a tiny V, D;
 *   - against PyTorch (scripts/gen_bow_reference.py, fixture
 *     tests/fixtures/bow/ref.safetensors): the symmetric InfoNCE loss, the
 *     gradient of E, and E after 3 torch.optim.Adam steps;
 *   - training lowers the loss; bad input is refused.
 *
 * The public API has no call that takes one Adam step on chosen pairs
 * (adam_step is static), so the Adam comparison runs emb_bow_train_epoch on
 * a data set of exactly one batch: each epoch is one step on the same
 * pairs, in an order the epoch's shuffle picks. The loss and its gradient
 * do not depend on that order (anchors and positives are permuted alike,
 * so the positives stay on the diagonal of the similarity matrix), only
 * the float rounding of the sums does. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bowtrain.h"
#include "reffixture.h"
#include "run_suite.h"
#include "safetensors.h"

#define FIXTURE "tests/fixtures/bow/ref.safetensors"

/* ---- finite differences ------------------------------------------------------ */

START_TEST(test_gradient_finite_differences)
{
    enum { V = 6, D = 4, B = 3 };
    float E[V * D], weight[V] = {0.0f, 0.9f, 0.4f, 1.3f, 0.7f, 0.25f};
    emb_rng r;
    emb_rng_seed(&r, 3);
    for (int i = 0; i < V * D; i++)
        E[i] = 2.0f * emb_rng_uniform(&r) - 1.0f;
    emb_text_pairs p = {0};
    emb_err err;
    const int32_t a0[] = {1, 2, 2}, b0[] = {3, 0};
    const int32_t a1[] = {4}, b1[] = {5, 1, 4};
    const int32_t a2[] = {0, 3, 5}, b2[] = {2};
    ck_assert(emb_text_pairs_add(&p, a0, 3, b0, 2, &err) == 0);
    ck_assert(emb_text_pairs_add(&p, a1, 1, b1, 3, &err) == 0);
    ck_assert(emb_text_pairs_add(&p, a2, 3, b2, 1, &err) == 0);
    emb_bow_train_options o = emb_bow_train_options_default();
    o.batch = B;
    o.temperature = 0.5f;
    emb_bow_trainer *t = emb_bow_trainer_new(E, weight, V, D, &o, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    const long idx[B] = {0, 1, 2};
    const double loss = emb_bow_loss_grad(t, &p, idx, B);
    ck_assert(isfinite(loss) && loss > 0);
    float grad[V * D];
    memcpy(grad, t->grad, sizeof grad);
    for (int d = 0; d < D; d++)
        ck_assert(grad[d] == 0.0f); /* token 0 weighs 0 */
    const float h = 2e-3f;
    double gnorm = 0.0;
    for (int i = 0; i < V * D; i++)
        gnorm = fmax(gnorm, fabs(grad[i]));
    ck_assert(gnorm > 0.05);
    for (int i = D; i < V * D; i++) {
        const float keep = E[i];
        E[i] = keep + h;
        const double up = emb_bow_loss_grad(t, &p, idx, B);
        E[i] = keep - h;
        const double down = emb_bow_loss_grad(t, &p, idx, B);
        E[i] = keep;
        const double fd = (up - down) / (2.0 * h);
        ck_assert_msg(fabs(fd - grad[i]) <= 2e-3 * gnorm + 1e-2 * fabs(fd),
                      "d loss / d E[%d][%d]: %.6f, finite differences %.6f", i / D, i % D,
                      (double)grad[i], fd);
    }
    /* the gradient is overwritten, not accumulated */
    ck_assert(emb_bow_loss_grad(t, &p, idx, B) == loss);
    ck_assert(memcmp(grad, t->grad, sizeof grad) == 0);
    emb_bow_trainer_free(t);
    emb_text_pairs_free(&p);
}
END_TEST

/* ---- against PyTorch --------------------------------------------------------------- */

static emb_st_file ref;

static void setup(void)
{
    emb_err err = {0};
    ck_assert_msg(emb_st_open(&ref, FIXTURE, &err) == 0, "%s", err.msg);
}

static void teardown(void)
{
    emb_st_close(&ref);
}

typedef struct problem {
    int V, D, B;
    float *E, *weight;
    emb_text_pairs pairs;
    emb_bow_train_options o;
} problem;

static void load_problem(problem *pb)
{
    memset(pb, 0, sizeof *pb);
    pb->V = (int)rf_setting(&ref, "V");
    pb->D = (int)rf_setting(&ref, "D");
    pb->B = (int)rf_setting(&ref, "pairs");
    long nE, nw, nids, noff;
    pb->E = rf_tensor(&ref, "E", &nE);
    pb->weight = rf_tensor(&ref, "weight", &nw);
    ck_assert_int_eq(nE, (long)pb->V * pb->D);
    ck_assert_int_eq(nw, pb->V);
    float *ids = rf_tensor(&ref, "ids", &nids);
    float *off = rf_tensor(&ref, "off", &noff);
    ck_assert_int_eq(noff, 2 * pb->B + 1);
    emb_err err;
    for (int k = 0; k < pb->B; k++) {
        int32_t a[64], b[64];
        const int a0 = (int)off[2 * k], a1 = (int)off[2 * k + 1], b1 = (int)off[2 * k + 2];
        for (int i = a0; i < a1; i++)
            a[i - a0] = (int32_t)ids[i];
        for (int i = a1; i < b1; i++)
            b[i - a1] = (int32_t)ids[i];
        ck_assert(emb_text_pairs_add(&pb->pairs, a, a1 - a0, b, b1 - a1, &err) == 0);
    }
    ck_assert_int_eq(pb->pairs.off[2 * pb->B], nids);
    free(ids);
    free(off);
    pb->o = emb_bow_train_options_default();
    pb->o.batch = pb->B;
    pb->o.temperature = (float)rf_setting(&ref, "temperature");
    pb->o.lr = (float)rf_setting(&ref, "lr");
}

static void free_problem(problem *pb)
{
    free(pb->E);
    free(pb->weight);
    emb_text_pairs_free(&pb->pairs);
}

START_TEST(test_torch_loss_and_gradient)
{
    problem pb;
    load_problem(&pb);
    emb_err err;
    emb_bow_trainer *t = emb_bow_trainer_new(pb.E, pb.weight, pb.V, pb.D, &pb.o, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    long idx[64];
    for (int i = 0; i < pb.B; i++)
        idx[i] = i;
    const double loss = emb_bow_loss_grad(t, &pb.pairs, idx, pb.B);
    float *want_loss = rf_tensor(&ref, "loss", NULL);
    ck_assert_msg(fabs(loss - want_loss[0]) <= 1e-5 * fabs(want_loss[0]),
                  "loss %.8f, torch %.8f", loss, (double)want_loss[0]);
    long n;
    float *want = rf_tensor(&ref, "grad", &n);
    ck_assert_int_eq(n, (long)pb.V * pb.D);
    double num = 0.0, den = 0.0, top = 0.0;
    for (long i = 0; i < n; i++) {
        num += ((double)t->grad[i] - want[i]) * ((double)t->grad[i] - want[i]);
        den += (double)want[i] * want[i];
        top = fmax(top, fabs(want[i]));
    }
    ck_assert_msg(sqrt(num / den) <= 1e-5, "gradient: relative error %.3g", sqrt(num / den));
    for (long i = 0; i < n; i++)
        ck_assert_msg(fabs(t->grad[i] - want[i]) <= 1e-5 * top, "d loss / d E[%ld][%ld]: %.8g, "
                      "torch %.8g", i / pb.D, i % pb.D, (double)t->grad[i], (double)want[i]);
    /* the loss did not move E */
    float *E0 = rf_tensor(&ref, "E", NULL);
    ck_assert(memcmp(E0, pb.E, sizeof(float) * (size_t)n) == 0);
    ck_assert_int_eq(t->step, 0);
    /* the order of the pairs does not change the loss */
    long rev[64];
    for (int i = 0; i < pb.B; i++)
        rev[i] = pb.B - 1 - i;
    ck_assert(fabs(emb_bow_loss_grad(t, &pb.pairs, rev, pb.B) - loss) <= 1e-6 * loss);
    free(E0);
    free(want);
    free(want_loss);
    emb_bow_trainer_free(t);
    free_problem(&pb);
}
END_TEST

/* Each epoch over a data set of one batch is one Adam step on it. */
START_TEST(test_torch_adam_steps)
{
    problem pb;
    load_problem(&pb);
    emb_err err;
    emb_bow_trainer *t = emb_bow_trainer_new(pb.E, pb.weight, pb.V, pb.D, &pb.o, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    const int steps = (int)rf_setting(&ref, "steps");
    float *losses = rf_tensor(&ref, "step_losses", NULL);
    int shuffled = 0;
    for (int s = 0; s < steps; s++) {
        double loss = -1.0;
        ck_assert_msg(emb_bow_train_epoch(t, &pb.pairs, s, &loss, &err) == 0, "%s", err.msg);
        ck_assert_msg(fabs(loss - losses[s]) <= 1e-5 * fabs(losses[s]),
                      "step %d: loss %.8f, torch %.8f", s + 1, loss, (double)losses[s]);
        for (int i = 0; i < pb.B; i++)
            shuffled |= t->order[i] != i;
    }
    /* the comparison did go through a shuffled order */
    ck_assert_msg(shuffled, "every epoch kept the pairs in order");
    ck_assert_int_eq(t->step, steps);
    long n;
    float *want = rf_tensor(&ref, "E3", &n);
    float *E0 = rf_tensor(&ref, "E", NULL);
    double moved = 0.0;
    for (long i = 0; i < n; i++) {
        ck_assert_msg(fabs(pb.E[i] - want[i]) <= 1e-5 * fmax(1.0, fabs(want[i])),
                      "E[%ld][%ld] after %d steps: %.8f, torch %.8f", i / pb.D, i % pb.D, steps,
                      (double)pb.E[i], (double)want[i]);
        moved = fmax(moved, fabs(want[i] - E0[i]));
    }
    ck_assert(moved > 0.02); /* 3 steps of lr 0.01 */
    /* rows of weight-0 tokens (0 and 1) never move */
    ck_assert(memcmp(pb.E, E0, sizeof(float) * 2 * (size_t)pb.D) == 0);
    free(E0);
    free(want);
    free(losses);
    emb_bow_trainer_free(t);
    free_problem(&pb);
}
END_TEST

/* ---- training and refusals ---------------------------------------------------------- */

/* 64 pairs (a word and a short "definition" of other words) over 20
 * epochs of batches of 16: the loss falls well below its start. */
START_TEST(test_training_lowers_the_loss)
{
    enum { V = 200, D = 16, N = 64 };
    float *E = malloc(sizeof(float) * V * D), weight[V];
    emb_rng r;
    emb_rng_seed(&r, 5);
    for (int i = 0; i < V * D; i++)
        E[i] = 2.0f * emb_rng_uniform(&r) - 1.0f;
    for (int i = 0; i < V; i++)
        weight[i] = 0.2f + emb_rng_uniform(&r);
    emb_text_pairs p = {0};
    emb_err err;
    for (int k = 0; k < N; k++) {
        int32_t a[1] = {k}, b[3];
        for (int j = 0; j < 3; j++)
            b[j] = N + (int32_t)(emb_rng_next(&r) % (V - N));
        ck_assert(emb_text_pairs_add(&p, a, 1, b, 3, &err) == 0);
    }
    ck_assert_int_eq(p.n, N);
    emb_bow_train_options o = emb_bow_train_options_default();
    o.batch = 16;
    o.lr = 0.02f;
    emb_bow_trainer *t = emb_bow_trainer_new(E, weight, V, D, &o, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    double first = 0.0, last = 0.0;
    for (int e = 0; e < 20; e++) {
        ck_assert(emb_bow_train_epoch(t, &p, e, &last, &err) == 0);
        if (e == 0)
            first = last;
    }
    ck_assert_int_eq(t->step, 20 * (N / 16));
    ck_assert_msg(last < 0.5 * first, "loss %.4f -> %.4f", first, last);
    emb_bow_trainer_free(t);
    emb_text_pairs_free(&p);
    free(E);
}
END_TEST

START_TEST(test_refusals)
{
    enum { V = 8, D = 3 };
    float E[V * D] = {0}, weight[V] = {0};
    emb_text_pairs p = {0};
    emb_err err;
    const int32_t a[] = {1, 2}, b[] = {3};
    ck_assert_int_eq(emb_text_pairs_add(&p, a, 0, b, 1, &err), -1);
    ck_assert_int_eq(emb_text_pairs_add(&p, a, 2, b, 0, &err), -1);
    ck_assert_int_eq(p.n, 0);
    ck_assert(emb_text_pairs_add(&p, a, 2, b, 1, &err) == 0);
    emb_bow_train_options o = emb_bow_train_options_default();
    o.batch = 1;
    ck_assert(emb_bow_trainer_new(E, weight, V, D, &o, &err) == NULL);
    o.batch = 2;
    o.temperature = 0.0f;
    ck_assert(emb_bow_trainer_new(E, weight, V, D, &o, &err) == NULL);
    o.temperature = 0.05f;
    o.lr = 0.0f;
    ck_assert(emb_bow_trainer_new(E, weight, V, D, &o, &err) == NULL);
    o.lr = 1e-3f;
    emb_bow_trainer *t = emb_bow_trainer_new(E, weight, V, D, &o, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    double loss;
    ck_assert_int_eq(emb_bow_train_epoch(t, &p, 0, &loss, &err), -1);
    ck_assert_msg(strstr(err.msg, "fewer than one batch") != NULL, "%s", err.msg);
    const int32_t bad[] = {V};
    ck_assert(emb_text_pairs_add(&p, a, 1, bad, 1, &err) == 0);
    ck_assert_int_eq(emb_bow_train_epoch(t, &p, 0, &loss, &err), -1);
    ck_assert_msg(strstr(err.msg, "token id 8 out of range") != NULL, "%s", err.msg);
    ck_assert_int_eq(t->step, 0);
    emb_bow_trainer_free(t);
    emb_text_pairs_free(&p);
}
END_TEST

static Suite *bowtrain_suite(void)
{
    Suite *s = suite_create("bowtrain");
    TCase *tc = tcase_create("bowtrain");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_gradient_finite_differences);
    tcase_add_test(tc, test_torch_loss_and_gradient);
    tcase_add_test(tc, test_torch_adam_steps);
    tcase_add_test(tc, test_training_lowers_the_loss);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(bowtrain_suite());
}
