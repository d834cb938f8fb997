/* test_wordinit.c: the bag-of-words start of model/wordinit.h on the
 * hand-written vocabulary tests/fixtures/wordinit/vocab.txt:
 *   - token counts;
 *   - word families: which words join, and how min_count, n_alt (the most
 *     frequent ending alternations) and min_stem gate the joining;
 *   - SIF weights a / (a + p) and the weights of the special tokens;
 *   - family vectors: one centred unit row per family, shared by members;
 *   - the BERT that emb_init_bag_of_words writes computes the bag of words
 *     sum_t weight(t) centred(E[t]) (normalised), checked against that sum
 *     computed here, and it survives training steps with dropout.
 *
 * The vocabulary's alternations, counted by the stems that take them:
 *   ("", "s")    walk talk jump cat     4
 *   ("", "ed")   walk talk jump         3
 *   ("ed", "s")  walk talk jump         3
 *   ("k", "ks"), ("k", "ked"), ("ked", "ks")    wal tal   2
 *   ("", "ing"), ("ed", "ing"), ("p", "ps"), ... one stem each
 * so n_alt 1 joins only plurals, n_alt 3 adds -ed, and the default (150)
 * also joins walking. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert.h"
#include "run_suite.h"
#include "tokenizer.h"
#include "train.h"
#include "wordinit.h"

#define VOCAB_DIR "tests/fixtures/wordinit"

static emb_tokenizer *tok;
static int V;

static void setup(void)
{
    emb_err err = {0};
    tok = emb_tokenizer_load(VOCAB_DIR, &err);
    ck_assert_msg(tok != NULL, "%s", err.msg);
    V = emb_tokenizer_vocab_size(tok);
    ck_assert_int_eq(V, 23);
}

static void teardown(void)
{
    emb_tokenizer_free(tok);
}

static int32_t id_of(const char *word)
{
    int32_t id = emb_tokenizer_token_id(tok, word);
    ck_assert_msg(id >= 0, "%s is not in the fixture vocabulary", word);
    return id;
}

/* Counts: every token of the vocabulary `each` times. */
static void count_all(emb_token_counts *c, int each)
{
    emb_err err;
    ck_assert(emb_token_counts_init(c, V, &err) == 0);
    for (int32_t id = 0; id < V; id++) {
        for (int k = 0; k < each; k++)
            emb_token_counts_add(c, &id, 1);
    }
}

static double normal(emb_rng *r)
{
    double u1 = emb_rng_uniform(r), u2 = emb_rng_uniform(r);
    if (u1 < 1e-12)
        u1 = 1e-12;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- counts ------------------------------------------------------------------- */

START_TEST(test_token_counts)
{
    emb_err err;
    emb_token_counts c;
    ck_assert(emb_token_counts_init(&c, V, &err) == 0);
    const int32_t ids[] = {6, 6, 7, -1, 23, 1000, 0, 22};
    emb_token_counts_add(&c, ids, 8);
    ck_assert_double_eq(c.total, 5.0);
    ck_assert_double_eq(c.count[6], 2.0);
    ck_assert_double_eq(c.count[7], 1.0);
    ck_assert_double_eq(c.count[0], 1.0);
    ck_assert_double_eq(c.count[22], 1.0);
    ck_assert_double_eq(c.count[8], 0.0);
    emb_token_counts_free(&c);
    ck_assert(c.count == NULL && c.V == 0);
}
END_TEST

/* ---- families ----------------------------------------------------------------- */

static int32_t fam[64];

static int families(const emb_token_counts *c, const emb_family_options *o)
{
    emb_err err;
    int merged = -1;
    ck_assert_msg(emb_word_families(tok, c, o, fam, &merged, &err) == 0, "%s", err.msg);
    for (int32_t id = 0; id < V; id++)
        ck_assert_msg(fam[id] >= 0 && fam[id] < V && fam[fam[id]] == fam[id],
                      "family of %d is %d, not a root", id, fam[id]);
    return merged;
}

static int joined(const char *a, const char *b)
{
    return fam[id_of(a)] == fam[id_of(b)];
}

static int alone(const char *a)
{
    const int32_t id = id_of(a);
    for (int32_t j = 0; j < V; j++) {
        if (j != id && fam[j] == fam[id])
            return 0;
    }
    return 1;
}

START_TEST(test_families_default)
{
    emb_token_counts c;
    count_all(&c, 10);
    emb_family_options o = emb_family_options_default();
    ck_assert_int_eq(o.n_alt, 150);
    ck_assert_int_eq(o.min_stem, 3);
    /* walk: 3 joined, talk 2, jump 2, cat 1 */
    ck_assert_int_eq(families(&c, &o), 8);
    ck_assert(joined("walk", "walks") && joined("walk", "walked") && joined("walk", "walking"));
    ck_assert(joined("talk", "talks") && joined("talk", "talked"));
    ck_assert(joined("jump", "jumps") && joined("jump", "jumped"));
    ck_assert(joined("cat", "cats"));
    ck_assert(!joined("walk", "talk") && !joined("walk", "jump") && !joined("talk", "jump"));
    ck_assert(!joined("walks", "talks") && !joined("cat", "dog"));
    const char *singles[] = {"dog", "the", "a", "and", "##s", "[PAD]", "[UNK]", "[CLS]",
                             "[SEP]", "[MASK]", "[unused0]"};
    for (size_t i = 0; i < sizeof singles / sizeof singles[0]; i++)
        ck_assert_msg(alone(singles[i]), "%s joined a family", singles[i]);
    emb_token_counts_free(&c);
}
END_TEST

/* Only the n_alt alternations that join the most stems count. */
START_TEST(test_families_n_alt)
{
    emb_token_counts c;
    count_all(&c, 10);
    emb_family_options o = emb_family_options_default();
    o.n_alt = 1; /* ("", "s") */
    ck_assert_int_eq(families(&c, &o), 4);
    ck_assert(joined("walk", "walks") && joined("talk", "talks") && joined("jump", "jumps") &&
              joined("cat", "cats"));
    ck_assert(alone("walked") && alone("walking") && alone("talked") && alone("jumped"));
    o.n_alt = 3; /* and ("", "ed"), ("ed", "s") */
    ck_assert_int_eq(families(&c, &o), 7);
    ck_assert(joined("walk", "walked") && joined("walks", "walked") && joined("talk", "talked"));
    ck_assert(joined("jump", "jumped") && joined("cat", "cats"));
    ck_assert(alone("walking"));
    o.n_alt = 0;
    ck_assert_int_eq(families(&c, &o), 0);
    for (int32_t id = 0; id < V; id++)
        ck_assert_int_eq(fam[id], id);
    emb_token_counts_free(&c);
}
END_TEST

/* Both words of a join need min_count; stems need min_stem letters. */
START_TEST(test_families_min_count_and_stem)
{
    emb_token_counts c;
    count_all(&c, 10);
    c.count[id_of("walks")] = 4;
    emb_family_options o = emb_family_options_default();
    ck_assert_int_eq(families(&c, &o), 7);
    ck_assert(alone("walks"));
    ck_assert(joined("walk", "walked") && joined("walk", "walking"));
    ck_assert(joined("talk", "talks") && joined("cat", "cats"));
    o.n_alt = 1;
    ck_assert_int_eq(families(&c, &o), 3);
    ck_assert(alone("walk") && alone("walks"));
    o.min_count = 4;
    ck_assert_int_eq(families(&c, &o), 4);
    ck_assert(joined("walk", "walks"));
    /* a word never seen joins nothing, even at min_count 0.5 */
    c.count[id_of("cats")] = 0;
    o.min_count = 0.5;
    families(&c, &o);
    ck_assert(alone("cats"));
    /* stems of 5 letters: no two words share one */
    emb_token_counts_free(&c);
    count_all(&c, 10);
    o = emb_family_options_default();
    o.min_stem = 5;
    ck_assert_int_eq(families(&c, &o), 0);
    /* counts of another vocabulary are refused */
    emb_token_counts other;
    emb_err err;
    int merged;
    ck_assert(emb_token_counts_init(&other, V + 1, &err) == 0);
    ck_assert_int_eq(emb_word_families(tok, &other, &o, fam, &merged, &err), -1);
    ck_assert_msg(strstr(err.msg, "24 counts for a vocabulary of 23") != NULL, "%s", err.msg);
    emb_token_counts_free(&other);
    emb_token_counts_free(&c);
}
END_TEST

/* ---- weights ---------------------------------------------------------------------- */

START_TEST(test_token_weights)
{
    emb_token_counts c;
    emb_err err;
    ck_assert(emb_token_counts_init(&c, V, &err) == 0);
    for (int32_t id = 0; id < V; id++)
        c.count[id] = id % 5 == 0 ? 0 : 3 * id; /* specials counted too */
    c.count[id_of("the")] = 5000;
    c.count[id_of("walks")] = 0;
    for (int32_t id = 0; id < V; id++)
        c.total += c.count[id];
    float w[64];
    const float a = 1e-3f;
    emb_token_weights(tok, &c, a, w);
    const char *zero[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[unused0]"};
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
        ck_assert_msg(w[id_of(zero[i])] == 0.0f, "%s has weight %g", zero[i],
                      (double)w[id_of(zero[i])]);
    ck_assert(w[id_of("[MASK]")] == 0.5f);
    int checked = 0;
    for (int32_t id = 6; id < V; id++) {
        const double p = c.count[id] / c.total;
        const double want = a / (a + p);
        ck_assert_msg(fabs(w[id] - want) <= 1e-6 * want, "%s: weight %.8g, SIF %.8g",
                      emb_tokenizer_token(tok, id), (double)w[id], want);
        checked++;
    }
    ck_assert_int_eq(checked, V - 6);
    ck_assert(w[id_of("the")] < 0.01f);               /* frequent: small */
    ck_assert(w[id_of("walks")] == 1.0f);             /* never seen: 1 */
    /* nothing counted: every ordinary token weighs 1 */
    emb_token_counts_free(&c);
    ck_assert(emb_token_counts_init(&c, V, &err) == 0);
    emb_token_weights(tok, &c, a, w);
    ck_assert(w[id_of("dog")] == 1.0f && w[id_of("[CLS]")] == 0.0f);
    emb_token_counts_free(&c);
}
END_TEST

/* ---- family vectors -------------------------------------------------------------- */

START_TEST(test_family_vectors)
{
    enum { D = 24 };
    emb_token_counts c;
    count_all(&c, 10);
    emb_family_options o = emb_family_options_default();
    families(&c, &o);
    emb_token_counts_free(&c);
    float *E = malloc(sizeof(float) * (size_t)V * D);
    float *E2 = malloc(sizeof(float) * (size_t)V * D);
    emb_err err;
    ck_assert(emb_family_vectors(fam, V, D, 7, E, &err) == 0);
    for (int32_t id = 0; id < V; id++) {
        const float *e = E + (size_t)id * D;
        double mean = 0.0, norm = 0.0;
        for (int d = 0; d < D; d++) {
            mean += e[d];
            norm += (double)e[d] * e[d];
        }
        ck_assert_msg(fabs(mean / D) < 1e-6 && fabs(sqrt(norm) - 1.0) < 1e-5,
                      "row %d: mean %g, norm %g", id, mean / D, sqrt(norm));
        for (int32_t j = 0; j < id; j++) {
            const float *f = E + (size_t)j * D;
            if (fam[j] == fam[id]) {
                ck_assert_msg(memcmp(e, f, sizeof(float) * D) == 0, "rows %d and %d differ", j,
                              id);
            } else {
                double dot = 0.0;
                for (int d = 0; d < D; d++)
                    dot += (double)e[d] * f[d];
                ck_assert_msg(fabs(dot) < 0.95, "rows %d and %d: cos %g", j, id, dot);
            }
        }
    }
    /* seeded: the same seed gives the same rows, another seed others */
    ck_assert(emb_family_vectors(fam, V, D, 7, E2, &err) == 0);
    ck_assert(memcmp(E, E2, sizeof(float) * (size_t)V * D) == 0);
    ck_assert(emb_family_vectors(fam, V, D, 8, E2, &err) == 0);
    ck_assert(memcmp(E, E2, sizeof(float) * (size_t)V * D) != 0);
    /* a family that points at a non-root is refused */
    const int32_t walked = id_of("walked"), walks = id_of("walks");
    fam[walks] = walked;
    fam[walked] = id_of("walk");
    ck_assert_int_eq(emb_family_vectors(fam, V, D, 7, E2, &err), -1);
    free(E);
    free(E2);
}
END_TEST

/* ---- the BERT that computes the bag of words ---------------------------------------- */

enum { HIDDEN = 32, DIMS = HIDDEN - EMB_BOW_Z_DIMS };

/* A new model as `embedd pretrain` configures it: hidden 32, 2 heads,
 * 2 layers, mean pooling, BERT's random start. */
static emb_model *new_model(int layers, uint64_t seed)
{
    emb_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.model_type, sizeof cfg.model_type, "bert");
    snprintf(cfg.hidden_act, sizeof cfg.hidden_act, "gelu");
    cfg.vocab_size = V;
    cfg.hidden_size = HIDDEN;
    cfg.num_hidden_layers = layers;
    cfg.num_attention_heads = 2;
    cfg.intermediate_size = 64;
    cfg.max_position_embeddings = 64;
    cfg.type_vocab_size = 2;
    cfg.layer_norm_eps = 1e-12f;
    cfg.hidden_dropout_prob = 0.1f;
    cfg.attention_probs_dropout_prob = 0.1f;
    cfg.has_modules_json = 1;
    cfg.pooling = EMB_POOL_MEAN;
    cfg.normalize = 1;
    cfg.max_seq_length = 64;
    emb_err err;
    emb_model *m = emb_model_init(&cfg, VOCAB_DIR, seed, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    return m;
}

/* weight (V): uniform in [0.05, 1], with the special tokens' weights of
 * emb_token_weights; E (V, DIMS): normal rows (not centred, not unit). */
static void random_bag(float *weight, float *E, uint64_t seed)
{
    emb_rng r;
    emb_rng_seed(&r, seed);
    const emb_special_tokens sp = emb_tokenizer_specials(tok);
    for (int32_t id = 0; id < V; id++) {
        weight[id] = 0.05f + 0.95f * emb_rng_uniform(&r);
        for (int d = 0; d < DIMS; d++)
            E[(size_t)id * DIMS + d] = (float)normal(&r) + 0.3f;
    }
    weight[sp.cls_id] = weight[sp.sep_id] = weight[sp.pad_id] = weight[sp.unk_id] = 0.0f;
    weight[id_of("[unused0]")] = 0.0f;
    weight[sp.mask_id] = 0.5f;
}

enum { N_TEXTS = 12, MAX_TEXT = 24 };

/* N_TEXTS texts [CLS] ... [SEP] of ordinary and special tokens, the last
 * ones with repeats; returns the total number of ids. */
static int random_texts(int32_t *ids, int *lens, uint64_t seed)
{
    emb_rng r;
    emb_rng_seed(&r, seed);
    const emb_special_tokens sp = emb_tokenizer_specials(tok);
    int at = 0;
    for (int s = 0; s < N_TEXTS; s++) {
        int n = 1 + (int)(emb_rng_next(&r) % 12);
        ids[at++] = sp.cls_id;
        for (int k = 0; k < n; k++) {
            int32_t id = 4 + (int32_t)(emb_rng_next(&r) % (uint64_t)(V - 4));
            if (s >= N_TEXTS - 3 && k > 0 && k % 2 == 0)
                id = ids[at - 1]; /* repeats */
            ids[at++] = id;
        }
        ids[at++] = sp.sep_id;
        lens[s] = n + 2;
    }
    return at;
}

/* z (DIMS) = sum over the text's ids of weight(t) (E[t] - mean(E[t])). */
static void bag_of_words(const int32_t *ids, int n, const float *weight, const float *E,
                         double *z)
{
    memset(z, 0, sizeof(double) * DIMS);
    for (int i = 0; i < n; i++) {
        const float *e = E + (size_t)ids[i] * DIMS;
        double mean = 0.0;
        for (int d = 0; d < DIMS; d++)
            mean += e[d];
        mean /= DIMS;
        for (int d = 0; d < DIMS; d++)
            z[d] += weight[ids[i]] * (e[d] - mean);
    }
}

/* The worst cosine, over the texts, between the model's (normalised)
 * embedding and the bag of words computed here. The model's first
 * EMB_BOW_Z_DIMS dimensions must be 0. */
static double worst_cosine(const emb_model *m, const float *weight, const float *E,
                           uint64_t seed)
{
    int32_t ids[N_TEXTS * MAX_TEXT];
    int lens[N_TEXTS];
    const int total = random_texts(ids, lens, seed);
    emb_err err;
    emb_workspace *ws = emb_workspace_new(m, 4096, &err);
    ck_assert_msg(ws != NULL, "%s", err.msg);
    float out[N_TEXTS * HIDDEN];
    ck_assert_msg(emb_embed_ids(m, ws, ids, lens, N_TEXTS, EMB_POOL_MEAN, 1, out, &err) == 0,
                  "%s", err.msg);
    emb_workspace_free(ws);
    double worst = 1.0;
    int at = 0;
    for (int s = 0; s < N_TEXTS; s++) {
        const float *o = out + (size_t)s * HIDDEN;
        double z[DIMS], zz = 0.0, dot = 0.0, oo = 0.0;
        bag_of_words(ids + at, lens[s], weight, E, z);
        for (int d = 0; d < EMB_BOW_Z_DIMS; d++)
            ck_assert_msg(fabs(o[d]) < 1e-6, "text %d: dimension %d is %g", s, d, (double)o[d]);
        for (int d = 0; d < DIMS; d++) {
            zz += z[d] * z[d];
            oo += (double)o[EMB_BOW_Z_DIMS + d] * o[EMB_BOW_Z_DIMS + d];
            dot += z[d] * o[EMB_BOW_Z_DIMS + d];
        }
        ck_assert_msg(fabs(oo - 1.0) < 1e-4, "text %d: embedding of norm^2 %g", s, oo);
        const double cos = dot / sqrt(zz * oo);
        if (cos < worst)
            worst = cos;
        at += lens[s];
    }
    ck_assert_int_eq(at, total);
    return worst;
}

/* With a large mix the residual leak is negligible: the model is the bag
 * of words. With the default options it is close to it. */
START_TEST(test_bag_of_words_equivalence)
{
    float weight[64], *E = malloc(sizeof(float) * (size_t)V * DIMS);
    emb_err err;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        emb_model *m = new_model(2, seed);
        random_bag(weight, E, 100 + seed);
        emb_bow_init_options o = emb_bow_init_options_default();
        o.mix = 1e4f;
        ck_assert_msg(emb_init_bag_of_words(m, weight, E, &o, &err) == 0, "%s", err.msg);
        double cos = worst_cosine(m, weight, E, 200 + seed);
        ck_assert_msg(cos > 0.99999, "seed %d, mix 1e4: worst cosine %.7f", (int)seed, cos);
        o = emb_bow_init_options_default();
        ck_assert_msg(emb_init_bag_of_words(m, weight, E, &o, &err) == 0, "%s", err.msg);
        cos = worst_cosine(m, weight, E, 200 + seed);
        ck_assert_msg(cos > 0.999, "seed %d, default options: worst cosine %.7f", (int)seed,
                      cos);
        emb_model_free(m);
    }
    /* one layer (the pooling layer only) and four */
    for (int layers = 1; layers <= 4; layers += 3) {
        emb_model *m = new_model(layers, 9);
        random_bag(weight, E, 9);
        emb_bow_init_options o = emb_bow_init_options_default();
        o.mix = 1e4f;
        ck_assert_msg(emb_init_bag_of_words(m, weight, E, &o, &err) == 0, "%s", err.msg);
        double cos = worst_cosine(m, weight, E, 10);
        ck_assert_msg(cos > 0.99999, "%d layers: worst cosine %.7f", layers, cos);
        emb_model_free(m);
    }
    free(E);
}
END_TEST

/* The start built as `embedd pretrain` builds it (counts, SIF weights,
 * family vectors): members of a family are interchangeable, and the order
 * of the words does not matter. */
START_TEST(test_bag_of_words_families_and_order)
{
    emb_token_counts c;
    count_all(&c, 10);
    c.count[id_of("the")] = 400;
    c.total += 390;
    emb_family_options fo = emb_family_options_default();
    families(&c, &fo);
    float weight[64], *E = malloc(sizeof(float) * (size_t)V * DIMS);
    emb_token_weights(tok, &c, 1e-3f, weight);
    emb_err err;
    ck_assert(emb_family_vectors(fam, V, DIMS, 5, E, &err) == 0);
    emb_model *m = new_model(2, 5);
    emb_bow_init_options o = emb_bow_init_options_default();
    ck_assert_msg(emb_init_bag_of_words(m, weight, E, &o, &err) == 0, "%s", err.msg);
    const int32_t cls = id_of("[CLS]"), sep = id_of("[SEP]");
    const int32_t ids[] = {
        cls, id_of("the"), id_of("cat"), id_of("walks"), sep,      /* the cat walks */
        cls, id_of("the"), id_of("cats"), id_of("walked"), sep,    /* the cats walked */
        cls, id_of("walks"), id_of("the"), id_of("cat"), sep,      /* walks the cat */
        cls, id_of("the"), id_of("dog"), id_of("jumps"), sep,      /* the dog jumps */
    };
    const int lens[] = {5, 5, 5, 5};
    float out[4 * HIDDEN];
    emb_workspace *ws = emb_workspace_new(m, 1024, &err);
    ck_assert(ws != NULL);
    ck_assert(emb_embed_ids(m, ws, ids, lens, 4, EMB_POOL_MEAN, 1, out, &err) == 0);
    double cos[4];
    for (int k = 1; k < 4; k++) {
        cos[k] = 0.0;
        for (int d = 0; d < HIDDEN; d++)
            cos[k] += (double)out[d] * out[k * HIDDEN + d];
    }
    ck_assert_msg(cos[1] > 0.99 && cos[2] > 0.99, "family %.5f, order %.5f", cos[1], cos[2]);
    ck_assert_msg(cos[3] < 0.5, "unrelated text: cos %.5f", cos[3]);
    emb_workspace_free(ws);
    emb_model_free(m);
    emb_token_counts_free(&c);
    free(E);
}
END_TEST

START_TEST(test_bag_of_words_refusals)
{
    float weight[64], *E = malloc(sizeof(float) * (size_t)V * DIMS);
    random_bag(weight, E, 1);
    emb_err err;
    emb_bow_init_options o = emb_bow_init_options_default();
    emb_model *m = new_model(2, 1);
    m->cfg.pooling = EMB_POOL_CLS;
    ck_assert_int_eq(emb_init_bag_of_words(m, weight, E, &o, &err), -1);
    ck_assert_msg(strstr(err.msg, "needs mean pooling") != NULL, "%s", err.msg);
    m->cfg.pooling = EMB_POOL_MEAN;
    m->cfg.hidden_size = 15; /* checked before anything is written */
    ck_assert_int_eq(emb_init_bag_of_words(m, weight, E, &o, &err), -1);
    ck_assert_msg(strstr(err.msg, "hidden size 15") != NULL, "%s", err.msg);
    m->cfg.hidden_size = HIDDEN;
    emb_model_free(m);
    free(E);
}
END_TEST

/* Training steps on the bag-of-words model with dropout (SimCSE and MLM,
 * 64 texts): finite losses and moderate gradients. Variant 1: the weight-0
 * tokens' vectors are 0, so their rows live in the EMB_BOW_Z_DIMS
 * dimensions only, and dropout 0.5 zeroes such rows entirely now and then:
 * still finite. */
START_TEST(test_bag_of_words_trains_with_dropout)
{
    enum { B = 64 };
    float weight[64], *E = malloc(sizeof(float) * (size_t)V * DIMS);
    int32_t *ids = malloc(sizeof(int32_t) * B * MAX_TEXT);
    int lens[B];
    emb_err err;
    const emb_special_tokens sp = emb_tokenizer_specials(tok);
    for (int variant = 0; variant < 2; variant++) {
        emb_model *m = new_model(2, 3 + variant);
        random_bag(weight, E, 3 + variant);
        if (variant == 1) {
            const int32_t zero[] = {sp.cls_id, sp.sep_id, sp.pad_id, sp.unk_id};
            for (int k = 0; k < 4; k++)
                memset(E + (size_t)zero[k] * DIMS, 0, sizeof(float) * DIMS);
        }
        emb_bow_init_options o = emb_bow_init_options_default();
        ck_assert_msg(emb_init_bag_of_words(m, weight, E, &o, &err) == 0, "%s", err.msg);
        emb_train_config tc = emb_train_config_default();
        tc.objective = EMB_OBJ_BOTH;
        tc.lr = 1e-3f;
        tc.seed = 17 + variant;
        if (variant == 1)
            tc.hidden_dropout = tc.attn_dropout = 0.5f;
        emb_trainer *t = emb_trainer_new(m, NULL, &tc, &err);
        ck_assert_msg(t != NULL, "%s", err.msg);
        emb_rng r;
        emb_rng_seed(&r, 99 + variant);
        int at = 0;
        for (int s = 0; s < B; s++) {
            int n = 1 + (int)(emb_rng_next(&r) % (MAX_TEXT - 2));
            ids[at++] = sp.cls_id;
            for (int k = 0; k < n; k++)
                ids[at++] = 4 + (int32_t)(emb_rng_next(&r) % (uint64_t)(V - 4));
            ids[at++] = sp.sep_id;
            lens[s] = n + 2;
        }
        emb_batch b = {0};
        ck_assert_msg(emb_batch_build(t, &b, ids, lens, B, &err) == 0, "%s", err.msg);
        for (int step = 0; step < 4; step++) {
            emb_step_stats st;
            ck_assert_msg(emb_train_forward_backward(t, &b, 1, &st, &err) == 0, "%s", err.msg);
            ck_assert_msg(isfinite(st.loss) && isfinite(st.grad_norm),
                          "variant %d step %d: loss %g, gradient norm %g", variant, step,
                          st.loss, st.grad_norm);
            /* The zero rows of variant 1 are a known weak spot (reported):
             * when dropout zeroes all EMB_BOW_Z_DIMS coordinates of such a
             * row, the next LayerNorm sees a zero row, and its backward
             * scales by 1/sqrt(eps) = 1e6: finite, but a gradient norm of
             * about 1e11 that clipping then spreads over the whole step. */
            if (variant == 0)
                ck_assert_msg(st.grad_norm < 1e4, "step %d: gradient norm %g", step,
                              st.grad_norm);
            for (size_t i = 0; i < t->n_params; i++)
                ck_assert_msg(isfinite(t->grads[i]), "gradient %zu is %g", i,
                              (double)t->grads[i]);
            ck_assert_int_eq(emb_train_apply(t, &st), 0);
        }
        emb_batch_free(&b);
        emb_trainer_free(t);
        emb_model_free(m);
    }
    free(ids);
    free(E);
}
END_TEST

static Suite *wordinit_suite(void)
{
    Suite *s = suite_create("wordinit");
    TCase *tc = tcase_create("wordinit");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_token_counts);
    tcase_add_test(tc, test_families_default);
    tcase_add_test(tc, test_families_n_alt);
    tcase_add_test(tc, test_families_min_count_and_stem);
    tcase_add_test(tc, test_token_weights);
    tcase_add_test(tc, test_family_vectors);
    tcase_add_test(tc, test_bag_of_words_equivalence);
    tcase_add_test(tc, test_bag_of_words_families_and_order);
    tcase_add_test(tc, test_bag_of_words_refusals);
    tcase_add_test(tc, test_bag_of_words_trains_with_dropout);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(wordinit_suite());
}
