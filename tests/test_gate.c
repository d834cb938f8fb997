/* test_gate.c: the learner's pieces that run without a server:
 *   - the publish gate's decision (server/learn/gate.h) over a table of
 *     measured sides and tolerances: which check fails first, and the
 *     reason it gives;
 *   - the collapse statistics on vectors whose answer is known;
 *   - the lexical check's pieces (TF-IDF pairs, Spearman agreement) and
 *     uniformity on inputs whose answer is known;
 *   - the whitening stage (server/learn/stages.h) on the bundled model:
 *     the output dimension stays, and a refit replaces the whitening module
 *     instead of stacking a second one;
 *   - the versions registry as the owner of DATA/models (versions.h):
 *     open, save and publish, rollback (with the kind of each failure),
 *     `current` on disk, the on-change hook, and a restart that aligns. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "learn/gate.h"
#include "learn/stages.h"
#include "learn/versions.h"
#include "safetensors.h"
#include "run_suite.h"
#include "testutil.h"

/* ---- the decision ------------------------------------------------------- */

static const gate_limits LIMITS = {.max_cos = 0.98, .cos_rise = 0.1, .min_var = 0.5,
                                   .use_sts = 0, .sts_tolerance = 0.5, .use_val_loss = 1,
                                   .use_lex = 0, .lex_tolerance = 0.5, .lex_min_gain = 0.5};

typedef struct gate_case {
    const char *name;
    gate_side cand, cur;
    int use_sts;
    int passed;
    const char *reason;        /* the expected reason, exactly */
    int use_lex;               /* the lexical check counts */
    int no_loss;               /* a stage without a loss (whitening): use_val_loss 0 */
} gate_case;

/* val_loss, mean_cos, variance, sts, lex, uniformity */
static const gate_case CASES[] = {
    {"better loss passes", {1.0, 0.30, 0.010, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 1, "passed", 0, 0},
    {"equal loss fails", {1.2, 0.30, 0.010, NAN, NAN, NAN}, {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 0,
     "validation loss did not improve (1.20000 vs 1.20000)", 0, 0},
    {"worse loss fails", {1.3, 0.30, 0.010, NAN, NAN, NAN}, {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 0,
     "validation loss did not improve (1.30000 vs 1.20000)", 0, 0},
    {"NaN loss fails", {NAN, 0.30, 0.010, NAN, NAN, NAN}, {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 0,
     "candidate validation loss is not finite", 0, 0},
    {"infinite loss fails", {INFINITY, 0.30, 0.010, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 0,
     "candidate validation loss is not finite", 0, 0},
    {"current NaN loss: no improvement", {1.0, 0.30, 0.010, NAN, NAN, NAN},
     {NAN, 0.30, 0.010, NAN, NAN, NAN}, 0,
     0, "validation loss did not improve (1.00000 vs nan)", 0, 0},
    {"collapsed: cosine above the ceiling", {0.5, 0.985, 0.010, NAN, NAN, NAN},
     {1.2, 0.97, 0.010, NAN, NAN, NAN}, 0, 0,
     "collapse alarm: held-out embeddings are nearly identical (mean pairwise cosine 0.9850 "
     "> 0.98)", 0, 0},
    {"cosine at the ceiling is allowed", {1.0, 0.98, 0.010, NAN, NAN, NAN},
     {1.2, 0.95, 0.010, NAN, NAN, NAN}, 0,
     1, "passed", 0, 0},
    {"cosine rose too much", {1.0, 0.45, 0.010, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 0,
     "collapse alarm: mean pairwise cosine rose from 0.3000 to 0.4500", 0, 0},
    {"cosine rose within the limit", {1.0, 0.39, 0.010, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 1,
     "passed", 0, 0},
    {"variance halved and more", {1.0, 0.30, 0.004, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 0,
     "collapse alarm: embedding variance 0.004 fell below 0.50 x the current 0.01", 0, 0},
    {"variance at half is allowed", {1.0, 0.30, 0.005, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN}, 0, 1,
     "passed", 0, 0},
    {"collapse is checked before the loss", {NAN, 0.99, 0.0, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, NAN, NAN, NAN},
     0, 0,
     "collapse alarm: held-out embeddings are nearly identical (mean pairwise cosine 0.9900 "
     "> 0.98)", 0, 0},
    {"STS within the tolerance", {1.0, 0.30, 0.010, 79.6, NAN, NAN},
     {1.2, 0.30, 0.010, 80.0, NAN, NAN}, 1, 1,
     "passed", 0, 0},
    {"STS fell too far", {1.0, 0.30, 0.010, 79.0, NAN, NAN},
     {1.2, 0.30, 0.010, 80.0, NAN, NAN}, 1, 0,
     "STS Spearman fell from 80.00 to 79.00", 0, 0},
    {"STS not measured on the candidate", {1.0, 0.30, 0.010, NAN, NAN, NAN},
     {1.2, 0.30, 0.010, 80.0, NAN, NAN},
     1, 0, "STS Spearman fell from 80.00 to nan", 0, 0},
    {"STS ignored without --eval-sts", {1.0, 0.30, 0.010, 10.0, NAN, NAN},
     {1.2, 0.30, 0.010, 80.0, NAN, NAN}, 0,
     1, "passed", 0, 0},
    {"loss is checked before STS", {1.3, 0.30, 0.010, 10.0, NAN, NAN},
     {1.2, 0.30, 0.010, 80.0, NAN, NAN}, 1, 0,
     "validation loss did not improve (1.30000 vs 1.20000)", 0, 0},
    /* the lexical check; whitening candidates have no loss (NAN on both sides) */
    {"whitening: lexical agreement rose", {NAN, 0.01, 0.0038, NAN, 72.9, -3.9},
     {NAN, 0.06, 0.0036, NAN, 59.9, -3.6}, 0, 1, "passed", 1, 1},
    {"whitening: a rise of exactly the gain passes", {NAN, 0.30, 0.010, NAN, 60.5, -3.6},
     {NAN, 0.30, 0.010, NAN, 60.0, -3.6}, 0, 1, "passed", 1, 1},
    {"whitening: too small a rise", {NAN, 0.30, 0.010, NAN, 60.2, -3.6},
     {NAN, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0,
     "lexical agreement did not rise by 0.50 (60.20 vs 59.90)", 1, 1},
    {"whitening: lexical agreement fell", {NAN, 0.30, 0.010, NAN, 58.0, -3.6},
     {NAN, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0, "lexical agreement fell from 59.90 to 58.00",
     1, 1},
    {"whitening: collapse is checked first", {NAN, 0.99, 0.010, NAN, 90.0, -3.6},
     {NAN, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0,
     "collapse alarm: held-out embeddings are nearly identical (mean pairwise cosine 0.9900 "
     "> 0.98)", 1, 1},
    {"whitening: STS still counts", {NAN, 0.30, 0.010, 70.0, 65.0, -3.6},
     {NAN, 0.30, 0.010, 75.0, 59.9, -3.6}, 1, 0, "STS Spearman fell from 75.00 to 70.00", 1, 1},
    {"no loss and no lexical check: nothing shows a gain", {NAN, 0.30, 0.010, NAN, 90.0, -3.6},
     {NAN, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0,
     "no quality signal: neither the loss nor the lexical agreement counts", 0, 1},
    {"gradient: lexical agreement within the tolerance", {1.0, 0.30, 0.010, NAN, 59.5, -3.6},
     {1.2, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 1, "passed", 1, 0},
    {"gradient: lexical agreement fell too far", {1.0, 0.30, 0.010, NAN, 59.0, -3.6},
     {1.2, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0, "lexical agreement fell from 59.90 to 59.00",
     1, 0},
    {"gradient: no gain needed beyond a better loss", {1.0, 0.30, 0.010, NAN, 59.9, -3.6},
     {1.2, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 1, "passed", 1, 0},
    {"gradient: the loss is checked before the lexical agreement",
     {1.3, 0.30, 0.010, NAN, 10.0, -3.6}, {1.2, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0,
     "validation loss did not improve (1.30000 vs 1.20000)", 1, 0},
    {"gradient: lexical agreement not measured", {1.0, 0.30, 0.010, NAN, NAN, -3.6},
     {1.2, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 0, "lexical agreement fell from 59.90 to nan", 1,
     0},
    {"lexical agreement ignored when off", {1.0, 0.30, 0.010, NAN, 10.0, -3.6},
     {1.2, 0.30, 0.010, NAN, 59.9, -3.6}, 0, 1, "passed", 0, 0},
};

START_TEST(test_gate_table)
{
    const gate_case *c = &CASES[_i];
    gate_limits lim = LIMITS;
    lim.use_sts = c->use_sts;
    lim.use_lex = c->use_lex;
    lim.use_val_loss = !c->no_loss;
    char reason[256];
    memset(reason, 'x', sizeof reason);
    int passed = gate_decide(&lim, &c->cand, &c->cur, reason, sizeof reason);
    ck_assert_msg(passed == c->passed, "%s: passed %d, want %d (%s)", c->name, passed,
                  c->passed, reason);
    ck_assert_msg(strcmp(reason, c->reason) == 0, "%s: reason '%s', want '%s'", c->name,
                  reason, c->reason);
}
END_TEST

/* A short buffer cuts the reason but keeps the verdict. */
START_TEST(test_gate_short_reason)
{
    const gate_case *c = &CASES[2];
    char reason[8];
    ck_assert_int_eq(gate_decide(&LIMITS, &c->cand, &c->cur, reason, sizeof reason), 0);
    ck_assert_str_eq(reason, "validat");
}
END_TEST

/* ---- the lexical check and uniformity ------------------------------------- */

START_TEST(test_spearman_known)
{
    const double x[5] = {1, 2, 3, 4, 5}, up[5] = {10, 20, 30, 40, 50};
    const double down[5] = {5, 4, 3, 2, 1}, flat[5] = {1, 1, 1, 1, 1};
    const double ties[4] = {1, 1, 2, 3}, y4[4] = {1, 2, 3, 4};
    ck_assert_double_eq_tol(gate_spearman(x, up, 5), 1.0, 1e-12);
    ck_assert_double_eq_tol(gate_spearman(x, down, 5), -1.0, 1e-12);
    ck_assert(isnan(gate_spearman(x, flat, 5)));
    /* ranks 1.5 1.5 3 4 against 1 2 3 4: r = 4.5 / sqrt(4.5 * 5) */
    ck_assert_double_eq_tol(gate_spearman(ties, y4, 4), 4.5 / sqrt(4.5 * 5.0), 1e-12);
}
END_TEST

/* Four texts over terms 0..5: text 0 and 1 share terms, 2 and 3 share
 * others. Each text's nearest neighbour is its partner; (i, i + 1) pairs
 * with no shared term have cosine 0. */
START_TEST(test_lexical_pairs_known)
{
    const int ids[] = {0, 1, 2, /**/ 0, 1, 2, 2, /**/ 3, 4, /**/ 3, 4, 5};
    const int lens[] = {3, 4, 2, 3};
    int a[8], b[8];
    double sim[8];
    ck_assert_int_eq(gate_lexical_pairs(ids, lens, 4, 6, 0, a, b, sim), 0);
    const int nn[4] = {1, 0, 3, 2};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(a[2 * i], i);
        ck_assert_int_eq(b[2 * i], nn[i]);
        ck_assert_int_eq(a[2 * i + 1], i);
        ck_assert_int_eq(b[2 * i + 1], (i + 1) % 4);
        ck_assert(sim[2 * i] > 0.3 && sim[2 * i] <= 1.0 + 1e-12);
    }
    ck_assert_double_eq_tol(sim[3], 0.0, 1e-12);  /* text 1 and text 2 */
    ck_assert_double_eq_tol(sim[7], 0.0, 1e-12);  /* text 3 and text 0 */
    ck_assert(sim[1] > 0.3);                      /* text 0 and text 1: the same terms */
    /* skip_below drops terms: with every term skipped nothing is similar */
    ck_assert_int_eq(gate_lexical_pairs(ids, lens, 4, 6, 6, a, b, sim), 0);
    for (int p = 0; p < 8; p++)
        ck_assert_double_eq_tol(sim[p], 0.0, 1e-12);
}
END_TEST

/* Embeddings that rank pairs as the reference does agree 100; reversed, -100. */
START_TEST(test_lexical_agreement_known)
{
    /* three unit vectors in 2-D at angles 0, 30 and 90 degrees */
    const float e[6] = {1, 0, 0.8660254f, 0.5f, 0, 1};
    const int a[3] = {0, 0, 1}, b[3] = {1, 2, 2};
    const double same[3] = {0.9, 0.1, 0.5}, reversed[3] = {0.1, 0.9, 0.5};
    ck_assert_double_eq_tol(gate_lexical_agreement(e, 2, a, b, same, 3), 100.0, 1e-9);
    ck_assert_double_eq_tol(gate_lexical_agreement(e, 2, a, b, reversed, 3), -100.0, 1e-9);
}
END_TEST

START_TEST(test_uniformity_known)
{
    const float same[4] = {1, 0, 1, 0}, orth[4] = {1, 0, 0, 1};
    ck_assert_double_eq_tol(gate_uniformity(same, 2, 2), 0.0, 1e-12);
    ck_assert_double_eq_tol(gate_uniformity(orth, 2, 2), -4.0, 1e-9); /* |d|^2 = 2 */
}
END_TEST

/* ---- the whitening stage -------------------------------------------------- */

/* n lines of the shared WordNet glosses, as the stage takes them. */
static char **gloss_texts(int n)
{
    char path[4096];
    tu_shared_path(path, sizeof path, "corpus/wordnet30-glosses.txt");
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char **t = calloc((size_t)n, sizeof(char *));
    char line[4096];
    int k = 0;
    while (k < n && fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] != '\0')
            t[k++] = strdup(line);
    }
    fclose(f);
    ck_assert_int_eq(k, n);
    return t;
}

/* Refitting keeps the dimension; refitting a whitened model on the same
 * texts replaces its module (one Dense module, the same weights as the
 * first fit) instead of stacking a second one. */
START_TEST(test_whiten_stage_replaces)
{
    emb_err err;
    emb_model *m = emb_model_load("models/embedd-small", &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    const int D = emb_model_dim(m), n = 600;
    ck_assert_int_eq(stage_whitening_index(m), -1);
    emb_model *w1 = stage_whiten_fit(m, gloss_texts(n), n, 0.1, 64, &err);
    ck_assert_msg(w1 != NULL, "%s", err.msg);
    ck_assert_int_eq(w1->cfg.n_dense, m->cfg.n_dense + 1);
    ck_assert_int_eq(emb_model_dim(w1), D);
    ck_assert_int_eq(stage_whitening_index(w1), w1->cfg.n_dense - 1);
    emb_model *w2 = stage_whiten_fit(w1, gloss_texts(n), n, 0.1, 64, &err);
    ck_assert_msg(w2 != NULL, "%s", err.msg);
    ck_assert_int_eq(w2->cfg.n_dense, w1->cfg.n_dense);
    ck_assert_int_eq(emb_model_dim(w2), D);
    const int k = w1->cfg.n_dense - 1;
    double max_diff = 0, max_w = 0;
    for (long i = 0; i < (long)D * D; i++) {
        double d = fabs((double)w1->dense[k].w[i] - w2->dense[k].w[i]);
        max_diff = d > max_diff ? d : max_diff;
        max_w = fabs(w1->dense[k].w[i]) > max_w ? fabs(w1->dense[k].w[i]) : max_w;
    }
    ck_assert_msg(max_diff <= 1e-3 * max_w, "refit differs by %g (largest weight %g)", max_diff,
                  max_w);
    /* the encoder is untouched */
    ck_assert_int_eq(memcmp(w2->params, m->params, sizeof(float) * emb_encoder_floats(&m->cfg)),
                     0);
    /* too few texts is an error, not a model */
    char **two = calloc(1, sizeof(char *));
    two[0] = strdup("one text");
    ck_assert_ptr_null(stage_whiten_fit(m, two, 1, 0.1, 64, &err));
    emb_model_free(w2);
    emb_model_free(w1);
    emb_model_free(m);
}
END_TEST

/* ---- the collapse statistics --------------------------------------------- */

START_TEST(test_collapse_identical)
{
    const int n = 5, C = 3;
    float e[5 * 3];
    for (int i = 0; i < n; i++) {
        e[i * C] = 0.6f;
        e[i * C + 1] = 0.8f;
        e[i * C + 2] = 0.0f;
    }
    double cos = 0, var = 1;
    ck_assert_int_eq(gate_collapse_stats(e, n, C, &cos, &var), 0);
    ck_assert_double_eq_tol(cos, 1.0, 1e-6);
    ck_assert_double_eq_tol(var, 0.0, 1e-12);
}
END_TEST

/* The basis vectors: orthogonal (cosine 0); each dimension holds one 1
 * among n values, variance (1/n)(1 - 1/n). */
START_TEST(test_collapse_orthogonal)
{
    enum { N = 4 };
    float e[N * N] = {0};
    for (int i = 0; i < N; i++)
        e[i * N + i] = 1.0f;
    double cos = 1, var = 0;
    ck_assert_int_eq(gate_collapse_stats(e, N, N, &cos, &var), 0);
    ck_assert_double_eq_tol(cos, 0.0, 1e-12);
    ck_assert_double_eq_tol(var, (1.0 / N) * (1.0 - 1.0 / N), 1e-12);
}
END_TEST

/* Two opposite vectors: cosine -1, the mean is 0, variance 1/C. */
START_TEST(test_collapse_opposite)
{
    const float e[2 * 2] = {1.0f, 0.0f, -1.0f, 0.0f};
    double cos = 0, var = 0;
    ck_assert_int_eq(gate_collapse_stats(e, 2, 2, &cos, &var), 0);
    ck_assert_double_eq_tol(cos, -1.0, 1e-12);
    ck_assert_double_eq_tol(var, 0.5, 1e-12);
}
END_TEST

/* ---- versions and DATA/models -------------------------------------------- */

#define TINY "tests/fixtures/tiny-dense"

static char dir[64];
static emb_model *base;

/* What the on-change hook saw. */
typedef struct hook_log {
    int calls;
    uint32_t last;
    int fail;                  /* 1: the hook fails */
    int reports;
    char report[512];
} hook_log;

static int on_change(void *ctx, uint32_t id, emb_err *err)
{
    hook_log *h = ctx;
    h->calls++;
    h->last = id;
    if (h->fail)
        return emb_fail_as(err, EMB_ERR_IO, "the hook failed");
    return 0;
}

static void on_report(void *ctx, const char *what, const char *msg)
{
    hook_log *h = ctx;
    h->reports++;
    snprintf(h->report, sizeof h->report, "%s: %s", what, msg);
}

static void versions_setup(void)
{
    emb_err err;
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
    base = emb_model_load(TINY, &err);
    ck_assert_msg(base != NULL, "%s", err.msg);
}

static void versions_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
    emb_model_free(base);
}

static versions *open_with_hooks(const char *data, hook_log *h)
{
    emb_err err;
    versions *v = versions_open(data, TINY, base, 3, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    memset(h, 0, sizeof *h);
    versions_hooks hooks = {.on_change = on_change, .report = on_report, .ctx = h};
    versions_set_hooks(v, &hooks);
    return v;
}

static unsigned read_current(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/models/current", dir);
    size_t len = 0;
    char *s = tu_read_file(path, &len);
    ck_assert_msg(s != NULL, "no %s", path);
    unsigned id = (unsigned)strtoul(s, NULL, 10);
    ck_assert_msg(len > 0 && s[len - 1] == '\n', "current has no newline");
    free(s);
    return id;
}

/* Version id: base's weights with one changed, saved to the registry's
 * directory (not yet handed over). */
static emb_model *save_version(versions *v, uint32_t id)
{
    emb_err err;
    emb_model *m = emb_model_clone(base, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    m->params[0] += 0.25f * (float)id;
    ck_assert_msg(emb_model_pack(m, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_save(v, id, m, NULL, &err) == 0, "%s", err.msg);
    return m;
}

/* A new version, saved then published. */
static void save_and_publish(versions *v, uint32_t id)
{
    emb_err err;
    emb_model *m = save_version(v, id);
    ck_assert_msg(versions_publish_saved(v, m, id, &err) == 0, "%s", err.msg);
}

START_TEST(test_versions_memory_only)
{
    hook_log h;
    emb_err err;
    versions *v = open_with_hooks(NULL, &h);
    ck_assert_uint_eq(versions_current_id(v), 1);
    ck_assert_uint_eq(versions_latest_id(v), 1);
    save_and_publish(v, 2);    /* nothing on disk, still published */
    ck_assert_uint_eq(versions_current_id(v), 2);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.last, 2);
    ck_assert_int_eq(versions_rollback(v, 1, &err), 0);
    ck_assert_uint_eq(versions_current_id(v), 1);
    ck_assert_int_eq(versions_rollback(v, 7, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "neither in memory nor on disk") != NULL, "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 1);
    ck_assert_int_eq(h.reports, 0);
    versions_free(v);
}
END_TEST

START_TEST(test_versions_on_disk)
{
    hook_log h;
    emb_err err;
    char path[160];
    versions *v = open_with_hooks(dir, &h);
    ck_assert_uint_eq(versions_current_id(v), 1);
    save_and_publish(v, 2);
    save_and_publish(v, 3);
    ck_assert_uint_eq(read_current(), 3);
    snprintf(path, sizeof path, "%s/models/v2/config.json", dir);
    ck_assert_msg(access(path, R_OK) == 0, "no %s", path);
    ck_assert_int_eq(h.calls, 2);
    ck_assert_uint_eq(h.last, 3);

    /* rollback to one in memory: current on disk and the hook follow */
    ck_assert_msg(versions_rollback(v, 2, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 2);
    ck_assert_uint_eq(read_current(), 2);
    ck_assert_uint_eq(h.last, 2);
    /* unknown: not found, nothing changes */
    ck_assert_int_eq(versions_rollback(v, 9, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_NOT_FOUND);
    ck_assert_uint_eq(read_current(), 2);
    /* on disk but unreadable: the loader's kind, not "not found" */
    snprintf(path, sizeof path, "%s/models/v5", dir);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/models/v5/config.json", dir);
    ck_assert_int_eq(tu_write_file(path, "{not json", 9), 0);
    ck_assert_int_eq(versions_rollback(v, 5, &err), -1);
    ck_assert_int_ne(err.kind, EMB_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err.msg, "model version 5") != NULL, "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 2);
    snprintf(path, sizeof path, "rm -rf %s/models/v5", dir);
    tu_run(path);
    /* the hook's failure is the rollback's (the version is current anyway) */
    h.fail = 1;
    ck_assert_int_eq(versions_rollback(v, 3, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    ck_assert_uint_eq(versions_current_id(v), 3);
    /* ... and is reported, not returned, after a publish */
    save_and_publish(v, 4);
    ck_assert_int_eq(h.reports, 1);
    ck_assert_str_eq(h.report, "re-embedding: the hook failed");
    h.fail = 0;
    ck_assert_msg(versions_rollback(v, 2, &err) == 0, "%s", err.msg);
    versions_free(v);

    /* a restart comes back on `current`, numbers after the latest saved,
     * and loads a version it must not be current for */
    v = open_with_hooks(dir, &h);
    ck_assert_uint_eq(versions_current_id(v), 2);
    ck_assert_uint_eq(versions_latest_id(v), 4);
    ck_assert_msg(versions_align(v, 3, &err) == 0, "%s", err.msg);
    model_version *mv = versions_get(v, 3);
    ck_assert_ptr_nonnull(mv);
    /* saved (and served) in the fixture's F16 */
    ck_assert_float_eq(mv->model->params[0],
                       emb_f16_to_f32(emb_f32_to_f16(base->params[0] + 0.75f)));
    versions_release(v, mv);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.last, 2);
    /* a store already on the current version: no call */
    ck_assert_msg(versions_align(v, 2, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(h.calls, 1);
    /* an empty store adopts the current version */
    ck_assert_msg(versions_align(v, 0, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(h.calls, 2);
    versions_free(v);

    /* a version 4 that has gone from disk: rollback after a restart fails,
     * as gone (it existed: DATA/models/latest says 4) */
    snprintf(path, sizeof path, "rm -rf %s/models/v4", dir);
    tu_run(path);
    v = open_with_hooks(dir, &h);
    ck_assert_int_eq(versions_rollback(v, 4, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_GONE);
    ck_assert_int_eq(versions_rollback(v, 6, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_NOT_FOUND);
    ck_assert_msg(versions_rollback(v, 3, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(read_current(), 3);
    versions_free(v);
}
END_TEST

/* A candidate: base's weights with one changed, saved, then handed over
 * by the registry's publish mode. Returns versions_candidate's result. */
static int save_candidate(versions *v, uint32_t id)
{
    emb_err err;
    emb_model *m = save_version(v, id);
    int rc = versions_candidate(v, m, id, versions_current_id(v), "passed", &err);
    ck_assert_msg(rc >= 0, "%s", err.msg);
    return rc;
}

static int has_dir(uint32_t id)
{
    char path[160];
    snprintf(path, sizeof path, "%s/models/v%u", dir, id);
    struct stat st;
    return stat(path, &st) == 0;
}

/* The kind of pinning id (0 when it is servable). */
static int pin_kind(versions *v, uint32_t id, emb_err *err)
{
    model_version *mv = NULL;
    if (versions_pin(v, id, &mv, err) != 0) {
        ck_assert_ptr_null(mv);
        return (int)err->kind;
    }
    ck_assert_uint_eq(mv->id, id);
    versions_release(v, mv);
    return 0;
}

static int listened;
static void on_listen(void *ctx)
{
    (void)ctx;
    listened++;
}

/* Retention (--keep-versions 2), manual publishing and promotion, pins of
 * retired and unknown versions, events, pruning on disk, stale temporary
 * directories, and saves in the model's F16. */
START_TEST(test_versions_keep_manual)
{
    hook_log h;
    emb_err err;
    char path[256];
    /* a save killed half-way left these */
    snprintf(path, sizeof path, "mkdir -p %s/models/v9.tmp-4242 && touch %s/models/v9.tmp-4242/x",
             dir, dir);
    ck_assert_int_eq(tu_run(path), 0);
    versions *v = versions_open(dir, TINY, base, 2, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    memset(&h, 0, sizeof h);
    versions_hooks hooks = {.on_change = on_change, .report = on_report, .ctx = &h};
    versions_set_hooks(v, &hooks);
    listened = 0;
    versions_set_listener(v, on_listen, NULL);
    snprintf(path, sizeof path, "%s/models/v9.tmp-4242", dir);
    ck_assert_msg(access(path, F_OK) != 0, "stale %s not removed", path);
    ck_assert_int_eq(versions_get_publish(v), VERSIONS_PUBLISH_MANUAL);

    /* manual: a candidate waits, the current one stays */
    ck_assert_int_eq(save_candidate(v, 2), 0);
    ck_assert_uint_eq(versions_current_id(v), 1);
    ck_assert_uint_eq(versions_pending_id(v), 2);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_int_eq(pin_kind(v, 2, &err), 0);   /* a pending version can be pinned */
    /* a newer candidate replaces it; the replaced one is retired and deleted */
    ck_assert_int_eq(save_candidate(v, 3), 0);
    ck_assert_uint_eq(versions_pending_id(v), 3);
    ck_assert_int_eq(pin_kind(v, 2, &err), EMB_ERR_GONE);
    ck_assert_msg(strstr(err.msg, "available: 3 (pending), 1 (current)") != NULL, "%s",
                  err.msg);
    ck_assert_int_eq(pin_kind(v, 9, &err), EMB_ERR_NOT_FOUND);
    ck_assert_int_eq(pin_kind(v, 0, &err), EMB_ERR_NOT_FOUND);
    ck_assert(!has_dir(2) && has_dir(3));
    /* promote: only the pending one */
    uint32_t got = 0;
    ck_assert_int_eq(versions_promote(v, 2, &got, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_CONFLICT);
    ck_assert_msg(versions_promote(v, 0, &got, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(got, 3);
    ck_assert_uint_eq(versions_current_id(v), 3);
    ck_assert_uint_eq(versions_pending_id(v), 0);
    ck_assert_uint_eq(read_current(), 3);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_int_eq(versions_promote(v, 0, &got, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_CONFLICT);
    /* keep 2: {3, 1} servable */
    ck_assert_int_eq(pin_kind(v, 1, &err), 0);

    /* auto: current at once; 1 falls out of the window */
    versions_set_publish(v, VERSIONS_PUBLISH_AUTO);
    ck_assert_int_eq(save_candidate(v, 4), 1);
    ck_assert_uint_eq(versions_current_id(v), 4);
    ck_assert_int_eq(pin_kind(v, 1, &err), EMB_ERR_GONE);
    ck_assert_int_eq(pin_kind(v, 3, &err), 0);
    ck_assert_int_eq(save_candidate(v, 5), 1);
    ck_assert(!has_dir(3) && has_dir(4) && has_dir(5));
    ck_assert_int_eq(pin_kind(v, 3, &err), EMB_ERR_GONE);

    /* the events, in order, and the listener told of each */
    versions_event ev[16];
    uint64_t last = 0;
    int n = versions_events(v, 0, ev, 16, &last);
    ck_assert_int_eq(n, 5);
    ck_assert_int_eq(listened, 5);
    ck_assert_uint_eq(last, 5);
    const versions_event_kind kinds[] = {VERSIONS_EV_PENDING, VERSIONS_EV_PENDING,
                                         VERSIONS_EV_PROMOTE, VERSIONS_EV_PUBLISH,
                                         VERSIONS_EV_PUBLISH};
    const uint32_t ids[] = {2, 3, 3, 4, 5};
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(ev[i].kind, kinds[i]);
        ck_assert_uint_eq(ev[i].id, ids[i]);
        ck_assert_uint_eq(ev[i].seq, (uint64_t)i + 1);
    }
    ck_assert_int_eq(versions_events(v, 3, ev, 16, NULL), 2);
    ck_assert_uint_eq(ev[0].id, 4);
    ck_assert_msg(versions_rollback(v, 4, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(versions_events(v, 5, ev, 16, NULL), 1);
    ck_assert_int_eq(ev[0].kind, VERSIONS_EV_ROLLBACK);
    ck_assert_uint_eq(ev[0].previous, 5);

    /* the list */
    strbuf b;
    sb_init(&b, 1 << 20);
    versions_list_json(v, &b);
    ck_assert_msg(strstr(b.buf, "{\"id\":5,\"status\":\"servable\"") != NULL &&
                      strstr(b.buf, "{\"id\":4,\"status\":\"current\"") != NULL &&
                      strstr(b.buf, "{\"id\":2,\"status\":\"retired\"") != NULL &&
                      strstr(b.buf, "\"gate\":\"passed\"") != NULL,
                  "%s", b.buf);
    sb_free(&b);
    versions_set_listener(v, NULL, NULL);
    versions_free(v);

    /* saved in the loaded model's precision (the fixture is F16) */
    emb_st_file f;
    snprintf(path, sizeof path, "%s/models/v5/model.safetensors", dir);
    ck_assert_msg(emb_st_open(&f, path, &err) == 0, "%s", err.msg);
    for (int i = 0; i < f.n_tensors; i++)
        ck_assert_msg(f.tensors[i].dtype == EMB_DT_F16, "%s is %s", f.tensors[i].name,
                      emb_dtype_name(f.tensors[i].dtype));
    emb_st_close(&f);

    /* a restart: the window {4 current, 5} loads; numbers go on after 5 */
    v = versions_open(dir, TINY, base, 2, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 4);
    ck_assert_uint_eq(versions_latest_id(v), 5);
    ck_assert_int_eq(pin_kind(v, 5, &err), 0);
    ck_assert_int_eq(pin_kind(v, 3, &err), EMB_ERR_GONE);
    ck_assert_int_eq(pin_kind(v, 6, &err), EMB_ERR_NOT_FOUND);
    versions_free(v);

    /* a pending version survives a restart, still pending */
    v = versions_open(dir, TINY, base, 2, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    ck_assert_int_eq(save_candidate(v, 6), 0);
    versions_free(v);
    v = versions_open(dir, TINY, base, 2, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    ck_assert_uint_eq(versions_current_id(v), 4);
    ck_assert_uint_eq(versions_pending_id(v), 6);
    ck_assert_int_eq(pin_kind(v, 5, &err), 0);
    ck_assert(has_dir(4) && has_dir(5) && has_dir(6));
    versions_free(v);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gate");
    TCase *tc = tcase_create("decision");
    tcase_add_loop_test(tc, test_gate_table, 0, (int)(sizeof CASES / sizeof CASES[0]));
    tcase_add_test(tc, test_gate_short_reason);
    tcase_add_test(tc, test_collapse_identical);
    tcase_add_test(tc, test_collapse_orthogonal);
    tcase_add_test(tc, test_collapse_opposite);
    tcase_add_test(tc, test_spearman_known);
    tcase_add_test(tc, test_lexical_pairs_known);
    tcase_add_test(tc, test_lexical_agreement_known);
    tcase_add_test(tc, test_uniformity_known);
    tcase_add_test(tc, test_whiten_stage_replaces);
    suite_add_tcase(s, tc);
    TCase *tv = tcase_create("versions");
    tcase_add_checked_fixture(tv, versions_setup, versions_teardown);
    tcase_add_test(tv, test_versions_memory_only);
    tcase_add_test(tv, test_versions_on_disk);
    tcase_add_test(tv, test_versions_keep_manual);
    suite_add_tcase(s, tv);
    return run_suite(s);
}
