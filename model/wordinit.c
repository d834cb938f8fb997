/* wordinit.c: the bag-of-words start of wordinit.h. */
#include "wordinit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_train.h"

/* ---- token counts ---------------------------------------------------------- */

int emb_token_counts_init(emb_token_counts *c, int V, emb_err *err)
{
    memset(c, 0, sizeof *c);
    c->count = calloc((size_t)V, sizeof(double));
    if (c->count == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d token counts", V);
    c->V = V;
    return 0;
}

void emb_token_counts_add(emb_token_counts *c, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) {
        if (ids[i] >= 0 && ids[i] < c->V) {
            c->count[ids[i]] += 1.0;
            c->total += 1.0;
        }
    }
}

void emb_token_counts_free(emb_token_counts *c)
{
    free(c->count);
    memset(c, 0, sizeof *c);
}

/* ---- word families ----------------------------------------------------------- */

emb_family_options emb_family_options_default(void)
{
    emb_family_options o = {.n_alt = 150, .min_stem = 3, .max_suffix = 4, .min_count = 5.0};
    return o;
}

#define SUFFIX_CAP 8   /* max_suffix is capped to SUFFIX_CAP - 1 */

/* One way to read a word: stem + suffix (the suffix may be empty). */
typedef struct split {
    const char *word;  /* the vocabulary entry (not owned) */
    int stem_len;
    int32_t id;
} split;

/* An ending alternation: two suffixes, a < b, that one stem takes. */
typedef struct alternation {
    char a[SUFFIX_CAP], b[SUFFIX_CAP];
    long stems;        /* how many stems take both */
} alternation;

static int is_plain_word(const char *s, int min_len)
{
    int n = 0;
    for (; s[n] != '\0'; n++) {
        if (s[n] < 'a' || s[n] > 'z')
            return 0;
    }
    return n >= min_len;
}

static int split_cmp(const void *x, const void *y)
{
    const split *p = x, *q = y;
    int n = p->stem_len < q->stem_len ? p->stem_len : q->stem_len;
    int c = memcmp(p->word, q->word, (size_t)n);
    if (c != 0)
        return c;
    if (p->stem_len != q->stem_len)
        return p->stem_len < q->stem_len ? -1 : 1;
    return strcmp(p->word + p->stem_len, q->word + q->stem_len);
}

static int same_stem(const split *p, const split *q)
{
    return p->stem_len == q->stem_len && memcmp(p->word, q->word, (size_t)p->stem_len) == 0;
}

static int alt_key_cmp(const void *x, const void *y)
{
    const alternation *p = x, *q = y;
    int c = strcmp(p->a, q->a);
    return c != 0 ? c : strcmp(p->b, q->b);
}

static int alt_count_cmp(const void *x, const void *y)
{
    const alternation *p = x, *q = y;
    if (p->stems != q->stems)
        return p->stems > q->stems ? -1 : 1;
    return alt_key_cmp(x, y);
}

static void alt_set(alternation *alt, const split *p, const split *q)
{
    const char *sa = p->word + p->stem_len, *sb = q->word + q->stem_len;
    if (strcmp(sa, sb) > 0) {
        const char *t = sa;
        sa = sb;
        sb = t;
    }
    snprintf(alt->a, SUFFIX_CAP, "%s", sa);
    snprintf(alt->b, SUFFIX_CAP, "%s", sb);
    alt->stems = 1;
}

/* Every (stem, suffix) reading of every plain word, sorted by stem. */
static split *word_splits(const emb_tokenizer *tok, const emb_family_options *o, long *n_out)
{
    const int V = emb_tokenizer_vocab_size(tok);
    const int max_suffix = o->max_suffix < SUFFIX_CAP - 1 ? o->max_suffix : SUFFIX_CAP - 1;
    split *s = malloc(sizeof(split) * (size_t)V * (size_t)(max_suffix + 1));
    long n = 0;
    if (s == NULL)
        return NULL;
    for (int32_t id = 0; id < V; id++) {
        const char *w = emb_tokenizer_token(tok, id);
        if (w == NULL || !is_plain_word(w, o->min_stem))
            continue;
        int len = (int)strlen(w);
        for (int k = 0; k <= max_suffix && len - k >= o->min_stem; k++)
            s[n++] = (split){.word = w, .stem_len = len - k, .id = id};
    }
    qsort(s, (size_t)n, sizeof(split), split_cmp);
    *n_out = n;
    return s;
}

/* The alternations of all stems, counted and sorted by how many stems take
 * them (most first). */
static alternation *count_alternations(const split *s, long n, long *n_out)
{
    long cap = 1024, k = 0;
    alternation *all = malloc(sizeof(alternation) * (size_t)cap);
    if (all == NULL)
        return NULL;
    for (long i = 0; i < n;) {
        long j = i + 1;
        while (j < n && same_stem(&s[i], &s[j]))
            j++;
        for (long p = i; p < j; p++) {
            for (long q = p + 1; q < j; q++) {
                if (k == cap) {
                    cap *= 2;
                    alternation *g = realloc(all, sizeof(alternation) * (size_t)cap);
                    if (g == NULL) {
                        free(all);
                        return NULL;
                    }
                    all = g;
                }
                alt_set(&all[k++], &s[p], &s[q]);
            }
        }
        i = j;
    }
    qsort(all, (size_t)k, sizeof(alternation), alt_key_cmp);
    long m = 0;
    for (long i = 0; i < k; i++) {
        if (m > 0 && alt_key_cmp(&all[m - 1], &all[i]) == 0)
            all[m - 1].stems++;
        else
            all[m++] = all[i];
    }
    qsort(all, (size_t)m, sizeof(alternation), alt_count_cmp);
    *n_out = m;
    return all;
}

static int32_t family_root(int32_t *family, int32_t x)
{
    while (family[x] != x) {
        family[x] = family[family[x]];
        x = family[x];
    }
    return x;
}

int emb_word_families(const emb_tokenizer *tok, const emb_token_counts *counts,
                      const emb_family_options *o, int32_t *family, int *n_merged,
                      emb_err *err)
{
    const int V = emb_tokenizer_vocab_size(tok);
    if (counts->V != V)
        return emb_fail(err, "word families: %d counts for a vocabulary of %d", counts->V, V);
    long n_split = 0, n_alt = 0;
    split *s = word_splits(tok, o, &n_split);
    alternation *alt = s != NULL ? count_alternations(s, n_split, &n_alt) : NULL;
    if (alt == NULL) {
        free(s);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "word families: out of memory");
    }
    if (n_alt > o->n_alt)
        n_alt = o->n_alt;
    qsort(alt, (size_t)n_alt, sizeof(alternation), alt_key_cmp);
    for (int32_t id = 0; id < V; id++)
        family[id] = id;
    int merged = 0;
    for (long i = 0; i < n_split;) {
        long j = i + 1;
        while (j < n_split && same_stem(&s[i], &s[j]))
            j++;
        for (long p = i; p < j; p++) {
            for (long q = p + 1; q < j; q++) {
                alternation key;
                alt_set(&key, &s[p], &s[q]);
                if (counts->count[s[p].id] < o->min_count ||
                    counts->count[s[q].id] < o->min_count ||
                    bsearch(&key, alt, (size_t)n_alt, sizeof(alternation), alt_key_cmp) == NULL)
                    continue;
                int32_t a = family_root(family, s[p].id), b = family_root(family, s[q].id);
                if (a != b) {
                    family[a] = b;
                    merged++;
                }
            }
        }
        i = j;
    }
    for (int32_t id = 0; id < V; id++)
        family[id] = family_root(family, id);
    free(alt);
    free(s);
    *n_merged = merged;
    return 0;
}

/* ---- the initialisation -------------------------------------------------------- */

emb_bow_init_options emb_bow_init_options_default(void)
{
    emb_bow_init_options o = {.sif_a = 1e-3f, .scale = 2.0f, .logit_gain = 40.0f,
                              .min_logit = -7.0f, .mix = 50.0f};
    return o;
}

static double normal01(emb_rng *r)
{
    double u1 = ((double)emb_rng_uniform(r) + 1e-12), u2 = emb_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* v (n) = a random unit vector with mean 0 over its n elements. */
static void random_centred_unit(float *v, int n, emb_rng *r)
{
    double mean = 0.0, norm = 0.0;
    for (int i = 0; i < n; i++) {
        v[i] = (float)normal01(r);
        mean += v[i];
    }
    mean /= n;
    for (int i = 0; i < n; i++) {
        v[i] -= (float)mean;
        norm += (double)v[i] * v[i];
    }
    float inv = norm > 0 ? (float)(1.0 / sqrt(norm)) : 0.0f;
    for (int i = 0; i < n; i++)
        v[i] *= inv;
}

void emb_token_weights(const emb_tokenizer *tok, const emb_token_counts *counts, float a,
                       float *weight)
{
    const emb_special_tokens sp = emb_tokenizer_specials(tok);
    for (int32_t id = 0; id < counts->V; id++) {
        double p = counts->total > 0 ? counts->count[id] / counts->total : 0.0;
        weight[id] = (float)(a / (a + p));
        const char *t = emb_tokenizer_token(tok, id);
        if (id == sp.cls_id || id == sp.sep_id || id == sp.pad_id || id == sp.unk_id ||
            (t != NULL && strncmp(t, "[unused", 7) == 0))
            weight[id] = 0.0f;
        if (id == sp.mask_id)
            weight[id] = 0.5f;
    }
}

int emb_family_vectors(const int32_t *family, int V, int D, uint64_t seed, float *E,
                       emb_err *err)
{
    emb_rng r;
    emb_rng_seed(&r, seed);
    for (int32_t id = 0; id < V; id++) {
        if (family[id] < 0 || family[id] >= V || family[family[id]] != family[id])
            return emb_fail(err, "family vectors: token %d has no valid family", id);
        if (family[id] == id)
            random_centred_unit(E + (size_t)id * D, D, &r);
    }
    for (int32_t id = 0; id < V; id++) {
        if (family[id] != id)
            memcpy(E + (size_t)id * D, E + (size_t)family[id] * D, sizeof(float) * (size_t)D);
    }
    return 0;
}

/* The key coordinate a of a token of weight w: the attention logit
 * gain * a must be log(w / r), r = sqrt(1 - Z a^2) being the length left to
 * the word part (a fixed point, reached in a few steps). log w is clamped to
 * [max(min_logit, -top), top], top = gain / (2 sqrt(Z)), so |a| <= 0.5/sqrt(Z). */
static void logit_coordinate(float w, const emb_bow_init_options *o, float *a, float *r)
{
    /* |a| <= 0.5 / sqrt(Z) keeps r >= 0.87 */
    const double top = 0.5 * o->logit_gain / sqrt((double)EMB_BOW_Z_DIMS);
    const double floor = fmax(o->min_logit, -top);
    const double lw = w > 0 ? fmin(fmax(log(w), floor), top) : floor;
    double ra = 1.0, aa = 0.0;
    for (int it = 0; it < 8; it++) {
        aa = (lw - log(ra)) / o->logit_gain;
        ra = sqrt(1.0 - EMB_BOW_Z_DIMS * aa * aa);
    }
    *a = (float)aa;
    *r = (float)ra;
}

/* word_embeddings: row t = scale * [s_0 a, s_1 a, ..., r v], v the unit,
 * centred direction of E[t] and the weight w(t) |E[t] - mean| (the length a
 * trained E gives a token scales its weight, as in the bag of words). */
static void init_word_rows(emb_model *m, const float *weight, const float *E,
                           const emb_bow_init_options *o)
{
    const int V = m->cfg.vocab_size, C = m->cfg.hidden_size, Z = EMB_BOW_Z_DIMS, D = C - Z;
    for (int32_t id = 0; id < V; id++) {
        float *row = m->w.wte + (size_t)id * C;
        const float *e = E + (size_t)id * D;
        double mean = 0.0, norm = 0.0;
        for (int i = 0; i < D; i++)
            mean += e[i];
        mean /= D;
        for (int i = 0; i < D; i++)
            norm += (e[i] - mean) * (e[i] - mean);
        norm = sqrt(norm);
        float a, r;
        logit_coordinate((float)(weight[id] * norm), o, &a, &r);
        const float inv = norm > 0 ? (float)(1.0 / norm) : 0.0f;
        for (int i = 0; i < Z; i++)
            row[i] = (i % 2 == 0 ? o->scale : -o->scale) * a;
        for (int i = 0; i < D; i++)
            row[Z + i] = o->scale * r * (float)(e[i] - mean) * inv;
    }
}

/* Every layer an identity (zero output projections, LayerNorms 1/0); the
 * last one's attention pools: every query attends to every key with logit
 * gain * a (the signed mean of the Z key coordinates), its values are the
 * inputs themselves, and the output projection mix * I makes the pooled
 * average outweigh each token's own residual. */
static void init_layers(emb_model *m, const emb_bow_init_options *o)
{
    const emb_config *c = &m->cfg;
    const int C = c->hidden_size, L = c->num_hidden_layers, I = c->intermediate_size;
    const int NH = c->num_attention_heads, HD = C / NH, Z = EMB_BOW_Z_DIMS;
    const emb_weights *w = &m->w;
    memset(w->wpe, 0, sizeof(float) * (size_t)c->max_position_embeddings * C);
    memset(w->wtt, 0, sizeof(float) * (size_t)c->type_vocab_size * C);
    for (int i = 0; i < C; i++) {
        w->emb_lnw[i] = 1.0f;
        w->emb_lnb[i] = 0.0f;
    }
    memset(w->qkvb, 0, sizeof(float) * (size_t)L * 3 * C);
    memset(w->attn_ow, 0, sizeof(float) * (size_t)L * C * C);
    memset(w->attn_ob, 0, sizeof(float) * (size_t)L * C);
    memset(w->fcb, 0, sizeof(float) * (size_t)L * I);
    memset(w->fc_projw, 0, sizeof(float) * (size_t)L * C * I);
    memset(w->fc_projb, 0, sizeof(float) * (size_t)L * C);
    for (long i = 0; i < (long)L * C; i++) {
        w->ln1w[i] = 1.0f;
        w->ln1b[i] = 0.0f;
        w->ln2w[i] = 1.0f;
        w->ln2b[i] = 0.0f;
    }
    const long l = L - 1;
    float *wq = w->qkvw + l * 3 * C * C, *wk = wq + (long)C * C, *wv = wk + (long)C * C;
    float *bq = w->qkvb + l * 3 * C;
    memset(wq, 0, sizeof(float) * 3 * (size_t)C * C);
    /* score = q.k / sqrt(HD) with q = bias only and k = sqrt(C) a (the
     * embedding LayerNorm scales rows of length `scale` to sqrt(C)). */
    const float q = o->logit_gain * sqrtf((float)HD) / sqrtf((float)C);
    for (int h = 0; h < NH; h++) {
        bq[h * HD] = q;
        for (int i = 0; i < Z; i++)
            wk[(long)(h * HD) * C + i] = (i % 2 == 0 ? 1.0f : -1.0f) / (float)Z;
    }
    for (int i = 0; i < C; i++) {
        wv[(long)i * C + i] = 1.0f;
        w->attn_ow[l * C * C + (long)i * C + i] = o->mix;
    }
    for (int i = 0; i < Z; i++)
        w->ln2w[l * C + i] = 0.0f;
}

int emb_init_bag_of_words(emb_model *m, const float *weight, const float *E,
                          const emb_bow_init_options *o, emb_err *err)
{
    const emb_config *c = &m->cfg;
    const int C = c->hidden_size;
    if (C < 2 * EMB_BOW_Z_DIMS || C % c->num_attention_heads != 0)
        return emb_fail(err, "bag-of-words init: hidden size %d must be at least %d and a "
                        "multiple of the %d heads", C, 2 * EMB_BOW_Z_DIMS,
                        c->num_attention_heads);
    if (c->pooling != EMB_POOL_MEAN)
        return emb_fail(err, "bag-of-words init: needs mean pooling, the model pools by %s",
                        emb_pooling_name(c->pooling));
    init_word_rows(m, weight, E, o);
    init_layers(m, o);
    return emb_model_pack(m, err);
}
