/* cli_whiten.c: `embedd whiten`: fits a whitening transform (model/whiten.h)
 * on a model's raw embeddings of unlabelled text and writes the model back
 * with it as one more sentence-transformers Dense module before Normalize.
 *
 * The steps, in order:
 *   1. load the model (--model, --model-id or the bundled default);
 *   2. sample at most --max-texts lines of the corpus files, each line
 *      equally likely (reservoir sampling, seeded), so the corpus never has
 *      to fit in memory;
 *   3. embed them without normalisation: pooling, then the model's own
 *      Dense modules, which is what its Normalize would see;
 *   4. accumulate their mean and covariance in double, and fit the
 *      transform on them (eigendecomposition by LAPACK);
 *   5. append it as a Dense module (Identity activation, with bias) and save
 *      a complete model directory to --out: encoder weights (in the storage
 *      type of the source's model.safetensors), the existing and the new
 *      Dense modules, Normalize last, the tokenizer files, and the MLM head
 *      when the model has one. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "ops_train.h"
#include "options.h"
#include "textfiles.h"
#include "safetensors.h"
#include "whiten.h"

typedef struct whiten_opts {
    const char *model_dir, *model_id, *corpus, *out;
    double shrink;             /* in [0, 1) */
    int dims, max_texts, max_seq_len, seed, threads;
} whiten_opts;

#define WOPT_STR(flag, field, help) OPT_STR(whiten_opts, flag, NULL, field, NULL, help)
#define WOPT_INT(flag, field, def, lo, hi, help) \
    OPT_INTEGER(whiten_opts, flag, NULL, field, def, lo, hi, help)

static const opt_spec whiten_specs[] = {
    WOPT_STR("model", model_dir, "model directory (default: the bundled model)"),
    WOPT_STR("model-id", model_id, "or a Hugging Face model id to download"),
    WOPT_STR("corpus", corpus, "text files, one text per line, comma-separated"),
    WOPT_STR("out", out, "directory to write the whitened model to"),
    WOPT_INT("dims", dims, "0", 0, 1 << 16,
         "output dimensions, the directions of largest variance (0: every direction the "
         "texts vary in)"),
    WOPT_INT("max-texts", max_texts, "20000", 2, 1 << 24,
         "texts to fit on, sampled evenly from the corpus lines"),
    WOPT_INT("max-seq-len", max_seq_len, "0", 0, 1 << 16,
         "tokens per text, [CLS] and [SEP] included (0: the model's)"),
    {.flag = "shrink", .type = OPT_FLOAT, .offset = offsetof(whiten_opts, shrink), .def = "0",
     .min = 0, .max = 1, .max_open = 1, .help = "pull the eigenvalues toward their mean by this share, in [0, 1)"},
    WOPT_INT("seed", seed, "42", 0, INT_MAX, "random seed of the sampling"),
    WOPT_INT("threads", threads, "0", 0, 1024, "compute threads (0: all cores)"),
};

#define N_WHITEN_SPECS ((int)(sizeof whiten_specs / sizeof whiten_specs[0]))

static const char whiten_usage[] =
    "usage: embedd whiten [--model DIR | --model-id ORG/NAME] --corpus FILE[,FILE...] --out DIR "
    "[options]\n"
    "Fits a whitening transform (mean and covariance of the model's embeddings of the corpus,\n"
    "before normalisation) and writes the model with it as a sentence-transformers Dense\n"
    "module before Normalize. It usually helps models whose embeddings crowd into a narrow\n"
    "cone (anisotropy); strong contrastively trained models may lose accuracy: measure.";

/* Tokens per forward pass while embedding the sample. */
#define WHITEN_BATCH_TOKENS 16384
/* Longest corpus line read; longer lines are cut (the model truncates anyway). */
#define WHITEN_MAX_LINE (1L << 20)

/* ---- sampling the corpus ------------------------------------------------------ */

/* At most cap lines, each of the seen lines equally likely. */
typedef struct sample {
    char **text;       /* (cap) */
    int cap, n;
    long seen;         /* non-blank lines read */
    emb_rng rng;
} sample;

static void sample_free(sample *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->text[i]);
    free(s->text);
}

/* Reservoir sampling (Algorithm R): line number `seen` replaces a random
 * slot with probability cap / (seen + 1). */
static int sample_offer(sample *s, const char *line, size_t len)
{
    long slot = s->seen;
    if (s->seen >= s->cap)
        slot = (long)(emb_rng_next(&s->rng) % (uint64_t)(s->seen + 1));
    s->seen++;
    if (slot >= s->cap)
        return 0;
    char *copy = strndup(line, len);
    if (copy == NULL)
        return -1;
    if (slot < s->n) {
        free(s->text[slot]);
    } else {
        s->n++;
    }
    s->text[slot] = copy;
    return 0;
}

/* textfiles_each_line's callback: offers one line (cut at WHITEN_MAX_LINE). */
static int offer_line(const char *line, size_t len, void *ctx)
{
    if (len > (size_t)WHITEN_MAX_LINE)
        len = (size_t)WHITEN_MAX_LINE;
    if (sample_offer(ctx, line, len) != 0) {
        fprintf(stderr, "embedd whiten: out of memory reading the corpus\n");
        return -1;
    }
    return 0;
}

/* Samples the comma-separated corpus files into s. */
static int sample_corpus(sample *s, const char *files, int cap, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->cap = cap;
    s->text = calloc((size_t)cap, sizeof(char *));
    if (s->text == NULL) {
        fprintf(stderr, "embedd whiten: out of memory\n");
        return -1;
    }
    emb_rng_seed(&s->rng, seed);
    return textfiles_each_line(files, "whiten", offer_line, s);
}

/* ---- embedding the sample ------------------------------------------------------- */

/* Embeds every text of s with m, unnormalised, into the moments. */
static int embed_sample(const emb_model *m, const sample *s, int max_len, emb_moments *mo)
{
    const int D = emb_model_dim(m);
    const int max_seqs = WHITEN_BATCH_TOKENS / 2; /* every text has [CLS] and [SEP] */
    int32_t *ids = malloc(sizeof(int32_t) * WHITEN_BATCH_TOKENS);
    int *lens = malloc(sizeof(int) * (size_t)max_seqs);
    float *out = malloc(sizeof(float) * (size_t)max_seqs * (size_t)D);
    emb_err err;
    emb_workspace *ws = emb_workspace_new(m, WHITEN_BATCH_TOKENS, &err);
    int rc = -1;
    if (ids == NULL || lens == NULL || out == NULL || ws == NULL) {
        fprintf(stderr, "embedd whiten: %s\n", ws == NULL ? err.msg : "out of memory");
        goto out;
    }
    int i = 0;
    while (i < s->n) {
        int n = 0, tokens = 0;
        while (i < s->n && n < max_seqs && tokens + max_len <= WHITEN_BATCH_TOKENS) {
            const char *t = s->text[i++];
            int len = emb_encode(m->tok, t, strlen(t), max_len, 0, ids + tokens, NULL);
            if (len < 0) {
                fprintf(stderr, "embedd whiten: out of memory tokenising\n");
                goto out;
            }
            lens[n++] = len;
            tokens += len;
        }
        if (emb_embed_ids(m, ws, ids, lens, n, m->cfg.pooling, 0, out, &err) != 0 ||
            emb_moments_add(mo, out, n, &err) != 0) {
            fprintf(stderr, "embedd whiten: %s\n", err.msg);
            goto out;
        }
    }
    rc = 0;
out:
    emb_workspace_free(ws);
    free(ids);
    free(lens);
    free(out);
    return rc;
}

/* ---- fitting and saving ------------------------------------------------------------ */

/* The storage type of the source's encoder weights (its word embeddings in
 * model.safetensors), so that an F16 model stays F16; F32 when that cannot
 * be told (sharded weights). */
static emb_dtype source_dtype(const char *model_dir)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    emb_st_file f;
    emb_err ignored;
    if (emb_st_open(&f, path, &ignored) != 0)
        return EMB_DT_F32;
    const emb_st_tensor *t = emb_st_find(&f, "embeddings.word_embeddings.weight");
    if (t == NULL)
        t = emb_st_find(&f, "bert.embeddings.word_embeddings.weight");
    emb_dtype dt = t != NULL ? t->dtype : EMB_DT_F32;
    emb_st_close(&f);
    return dt == EMB_DT_F16 || dt == EMB_DT_BF16 ? dt : EMB_DT_F32;
}

static void print_spectrum(const emb_whiten *w, long n_texts, long lines)
{
    const double top = w->eigenvalues[0], low = w->eigenvalues[w->rank - 1];
    fprintf(stderr, "embedd whiten: %ld texts (of %ld corpus lines), %d dims -> %d\n", n_texts,
            lines, w->dim, w->k);
    fprintf(stderr, "embedd whiten: covariance eigenvalues %.4g .. %.4g", top, low);
    if (w->rank < w->dim)
        fprintf(stderr, " and %d without variance (e.g. the direction a last LayerNorm "
                "removes)", w->dim - w->rank);
    fprintf(stderr, "; the %d kept directions hold %.1f%% of the variance\n", w->k,
            100.0 * w->kept_variance);
    if (n_texts <= w->dim)
        fprintf(stderr, "embedd whiten: warning: %ld texts for %d dimensions leave the covariance "
                "singular; use more texts\n", n_texts, w->dim);
}

/* The model with the transform appended, saved to o->out. */
static int save_whitened(const emb_model *m, const char *model_dir, const emb_whiten *w,
                         const char *out)
{
    const emb_dtype dtype = source_dtype(model_dir);
    emb_err err;
    const emb_dense_config d = {.in_features = w->dim, .out_features = w->k, .bias = 1,
                                .activation = EMB_ACT_IDENTITY};
    emb_model *wm = emb_model_add_dense(m, &d, w->w, w->b, &err);
    size_t head_sizes[EMB_N_HEAD_TENSORS], head_n = 0;
    emb_head_sizes(&m->cfg, head_sizes);
    for (int i = 0; i < EMB_N_HEAD_TENSORS; i++)
        head_n += head_sizes[i];
    float *head = malloc(sizeof(float) * head_n);
    int rc = 1;
    if (wm == NULL || head == NULL) {
        fprintf(stderr, "embedd whiten: %s\n", wm == NULL ? err.msg : "out of memory");
        goto out;
    }
    int got = emb_head_load(model_dir, &m->cfg, head, &err);
    if (got < 0 || emb_save_model_dir(out, &wm->cfg, wm->params, got == 1 ? head : NULL,
                                      model_dir, dtype, NULL, &err) != 0) {
        fprintf(stderr, "embedd whiten: %s\n", err.msg);
        goto out;
    }
    char folder[32];
    emb_dense_folder(wm->cfg.n_dense - 1, folder, sizeof folder);
    fprintf(stderr,
            "embedd whiten: wrote %s (encoder %s; Dense module %s: %d -> %d, Identity, bias%s)\n",
            out, emb_dtype_name(dtype), folder, w->dim, w->k,
            wm->cfg.normalize ? "; Normalize after it" : "");
    rc = 0;
out:
    free(head);
    emb_model_free(wm);
    return rc;
}

static int run_whiten(const whiten_opts *o, double shrink)
{
    char model_dir[PATH_MAX];
    int rc = cli_model_dir(o->model_dir, o->model_id, model_dir, sizeof model_dir, "whiten");
    if (rc != 0)
        return rc;
    cli_set_threads(o->threads);
    emb_err err;
    emb_model *m = emb_model_load(model_dir, &err);
    if (m == NULL) {
        fprintf(stderr, "embedd whiten: %s\n", err.msg);
        return 1;
    }
    const int D = emb_model_dim(m);
    int max_len = m->cfg.max_seq_length;
    if (o->max_seq_len > 0 && o->max_seq_len < max_len)
        max_len = o->max_seq_len < 2 ? 2 : o->max_seq_len;
    if (max_len > WHITEN_BATCH_TOKENS)
        max_len = WHITEN_BATCH_TOKENS;
    sample s = {0};
    emb_moments mo = {0};
    emb_whiten w = {0};
    err.msg[0] = '\0';
    rc = 1;
    if (o->dims > D) {
        fprintf(stderr, "embedd whiten: --dims %d is more than the model's %d dimensions\n",
                o->dims, D);
        rc = 2;
        goto out;
    }
    if (sample_corpus(&s, o->corpus, o->max_texts, (uint64_t)o->seed) != 0)
        goto out;
    if (s.n < 2) {
        fprintf(stderr, "embedd whiten: the corpus has %d non-blank lines; at least 2 needed\n",
                s.n);
        goto out;
    }
    if (emb_moments_init(&mo, D, &err) != 0 || embed_sample(m, &s, max_len, &mo) != 0 ||
        emb_whiten_fit(&mo, o->dims, shrink, &w, &err) != 0) {
        if (err.msg[0] != '\0')
            fprintf(stderr, "embedd whiten: %s\n", err.msg);
        goto out;
    }
    print_spectrum(&w, mo.n, s.seen);
    rc = save_whitened(m, model_dir, &w, o->out);
out:
    emb_whiten_free(&w);
    emb_moments_free(&mo);
    sample_free(&s);
    emb_model_free(m);
    return rc;
}

int cli_whiten(int argc, char **argv)
{
    whiten_opts o;
    memset(&o, 0, sizeof o);
    int rc = options_parse(whiten_specs, N_WHITEN_SPECS, &o, argc, argv, whiten_usage);
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (o.corpus == NULL || o.out == NULL) {
        fprintf(stderr, "embedd whiten: --corpus and --out are required\n");
        return 2;
    }
    return run_whiten(&o, o.shrink);
}
