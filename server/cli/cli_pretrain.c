/* cli_pretrain.c: `embedd pretrain`, a sentence encoder from scratch, in
 * stages that each write a model directory under --out and are skipped
 * when rerun (a training stage in progress resumes from its checkpoint):
 *
 *   init/    the start. By default a bag of words from the corpus
 *            (wordinit.h: token counts, word families, SIF weights, one
 *            random vector per family), whose word vectors are then trained
 *            contrastively on text pairs when --pairs is given (bowtrain.h;
 *            a word and its definition, say), and which is written as a BERT
 *            that computes it. --init random: BERT's random initialisation.
 *            This stage restarts from the beginning if interrupted (minutes).
 *   mlm/     masked-token prediction on --corpus (--mlm-steps);
 *   simcse/  unsupervised SimCSE on --simcse-corpus (--simcse-steps);
 *   model/   the result in F16. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "cli_train.h"
#include "options.h"
#include "textfiles.h"
#include "bowtrain.h"
#include "sts.h"
#include "train.h"
#include "wordinit.h"

typedef struct pretrain_opts {
    const char *corpus, *simcse_corpus, *pairs, *vocab, *out, *eval_sts;
    int init;                  /* INIT_BOW or INIT_RANDOM */
    double lr_mlm, lr_simcse, lr_pairs, sif_a, temperature;
    int layers, hidden, heads, intermediate, max_position;
    int mlm_steps, simcse_steps, pairs_epochs, mlm_batch, simcse_batch, pairs_batch;
    int mlm_len, simcse_len, family_alternations;
    int save_every, eval_every, seed, threads;
} pretrain_opts;

enum { INIT_BOW, INIT_RANDOM };
static const opt_choice inits[] = {{"bow", INIT_BOW}, {"random", INIT_RANDOM}, {NULL, 0}};

#define P_STR(flag, field, def, help) OPT_STR(pretrain_opts, flag, NULL, field, def, help)
#define P_INT(flag, field, def, lo, hi, help) \
    OPT_INTEGER(pretrain_opts, flag, NULL, field, def, lo, hi, help)
#define P_NUM(flag, field, def, lo, hi, help) \
    OPT_NUMBER(pretrain_opts, flag, NULL, field, def, lo, hi, help)

static const opt_spec pretrain_specs[] = {
    P_STR("corpus", corpus, NULL, "text files, one text per line, comma-separated: token statistics of the start, and MLM"),
    P_STR("vocab", vocab, NULL, "directory with the tokenizer (vocab.txt or tokenizer.json)"),
    P_STR("out", out, NULL, "work directory: init/, mlm/, simcse/ and the final model/"),
    OPT_ONE_OF(pretrain_opts, "init", NULL, init, "bow", inits, "start: a bag of words from --corpus statistics (bow) or BERT's random initialisation"),
    P_NUM("sif-a", sif_a, "1e-3", 1e-9, 1, "bow start: SIF weight a / (a + frequency)"),
    P_INT("family-alternations", family_alternations, "150", 0, 100000, "bow start: ending alternations that join word families (0: none)"),
    P_INT("layers", layers, "4", 1, 48, "encoder layers"),
    P_INT("hidden", hidden, "256", 16, 4096, "hidden size"),
    P_INT("heads", heads, "4", 1, 64, "attention heads"),
    P_INT("intermediate", intermediate, "1024", 16, 16384, "FFN size"),
    P_INT("max-position", max_position, "128", 8, 8192, "position embeddings (longest input)"),
    P_INT("mlm-steps", mlm_steps, "0", 0, INT_MAX, "masked-token prediction steps on --corpus"),
    P_INT("mlm-batch", mlm_batch, "64", 2, 1 << 16, "texts per MLM step"),
    P_INT("mlm-len", mlm_len, "128", 8, 8192, "tokens per MLM text"),
    P_NUM("lr-mlm", lr_mlm, "5e-4", 0, 1, "peak learning rate of MLM"),
    P_STR("pairs", pairs, NULL, "bow start: text-pair files, anchor<TAB>positive per line, comma-separated, to train the word vectors on"),
    P_INT("pairs-epochs", pairs_epochs, "6", 0, 1000, "bow start: passes over --pairs"),
    P_INT("pairs-batch", pairs_batch, "256", 2, 1 << 16, "bow start: pairs per step (in-batch negatives)"),
    P_NUM("lr-pairs", lr_pairs, "1e-3", 1e-7, 1, "bow start: Adam learning rate on --pairs"),
    P_STR("simcse-corpus", simcse_corpus, NULL, "SimCSE text files (default: --corpus)"),
    P_INT("simcse-steps", simcse_steps, "0", 0, INT_MAX, "unsupervised SimCSE steps"),
    P_INT("simcse-batch", simcse_batch, "64", 2, 1 << 16, "texts per SimCSE step"),
    P_INT("simcse-len", simcse_len, "32", 8, 8192, "tokens per SimCSE text"),
    P_NUM("lr-simcse", lr_simcse, "5e-5", 0, 1, "peak learning rate of SimCSE"),
    P_NUM("temperature", temperature, "0.05", 1e-4, 100, "contrastive temperature (pairs and SimCSE)"),
    P_STR("eval-sts", eval_sts, NULL, "score<TAB>s1<TAB>s2 file for periodic Spearman"),
    P_INT("eval-every", eval_every, "1000", 0, INT_MAX, "steps between STS evaluations"),
    P_INT("save-every", save_every, "250", 0, INT_MAX, "steps between checkpoints"),
    P_INT("seed", seed, "42", 0, INT_MAX, "random seed"),
    P_INT("threads", threads, "0", 0, 1024, "compute threads (0: all cores)"),
};

static int dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The configuration of a new model: BERT with the requested shape, mean
 * pooling and normalisation, as sentence-transformers writes it. */
static void new_config(emb_config *cfg, const pretrain_opts *p, const emb_tokenizer *tok)
{
    emb_special_tokens sp = emb_tokenizer_specials(tok);
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->model_type, sizeof cfg->model_type, "bert");
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "gelu");
    cfg->vocab_size = emb_tokenizer_vocab_size(tok);
    cfg->hidden_size = p->hidden;
    cfg->num_hidden_layers = p->layers;
    cfg->num_attention_heads = p->heads;
    cfg->intermediate_size = p->intermediate;
    cfg->max_position_embeddings = p->max_position;
    cfg->type_vocab_size = 2;
    cfg->pad_token_id = sp.pad_id >= 0 ? sp.pad_id : 0;
    cfg->layer_norm_eps = 1e-12f;
    cfg->hidden_dropout_prob = 0.1f;
    cfg->attention_probs_dropout_prob = 0.1f;
    cfg->has_modules_json = 1;
    cfg->pooling = EMB_POOL_MEAN;
    cfg->normalize = 1;
    cfg->max_seq_length = p->max_position;
    cfg->do_lower_case = 0;
}

/* Token counting, line by line: the ids buffer grows to the longest line. */
typedef struct counter {
    const emb_tokenizer *tok;
    emb_token_counts *counts;
    int32_t *ids;
    int cap;
} counter;

static int count_line(const char *line, size_t len, void *ctx)
{
    counter *c = ctx;
    int n = emb_tokenize(c->tok, line, len, c->ids, c->cap);
    if (n > c->cap) {
        int32_t *bigger = realloc(c->ids, sizeof(int32_t) * (size_t)n);
        if (bigger == NULL)
            n = -1;
        else {
            c->ids = bigger;
            c->cap = n;
            n = emb_tokenize(c->tok, line, len, c->ids, c->cap);
        }
    }
    if (n < 0) {
        fprintf(stderr, "embedd pretrain: out of memory tokenising the corpus\n");
        return -1;
    }
    emb_token_counts_add(c->counts, c->ids, n);
    return 0;
}

/* Token counts of every line of the comma-separated files, untruncated. */
static int count_corpus(const char *files, const emb_tokenizer *tok, emb_token_counts *counts)
{
    counter c = {tok, counts, NULL, 0};
    int rc = textfiles_each_line(files, "pretrain", count_line, &c);
    free(c.ids);
    return rc != 0;
}


/* A pair per line "anchor<TAB>positive", tokenised without special tokens,
 * at most PAIR_SIDE_TOKENS a side; other lines are skipped. */
#define PAIR_SIDE_TOKENS 256

typedef struct pair_reader {
    const emb_tokenizer *tok;
    emb_text_pairs *pairs;
} pair_reader;

static int pair_line(const char *line, size_t len, void *ctx)
{
    pair_reader *r = ctx;
    int32_t a[PAIR_SIDE_TOKENS], b[PAIR_SIDE_TOKENS];
    const char *tab = memchr(line, '\t', len);
    if (tab == NULL)
        return 0;
    int na = emb_tokenize(r->tok, line, (size_t)(tab - line), a, PAIR_SIDE_TOKENS);
    int nb = emb_tokenize(r->tok, tab + 1, len - (size_t)(tab + 1 - line), b, PAIR_SIDE_TOKENS);
    if (na < 0 || nb < 0) {
        fprintf(stderr, "embedd pretrain: out of memory tokenising the pairs\n");
        return -1;
    }
    na = na < PAIR_SIDE_TOKENS ? na : PAIR_SIDE_TOKENS;
    nb = nb < PAIR_SIDE_TOKENS ? nb : PAIR_SIDE_TOKENS;
    emb_err err;
    if (na > 0 && nb > 0 && emb_text_pairs_add(r->pairs, a, na, b, nb, &err) != 0) {
        fprintf(stderr, "embedd pretrain: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int read_pairs(const char *files, const emb_tokenizer *tok, emb_text_pairs *pairs)
{
    pair_reader r = {tok, pairs};
    return textfiles_each_line(files, "pretrain", pair_line, &r) != 0;
}


/* Trains the word vectors E on --pairs (bowtrain.h), reporting each epoch's
 * loss and, with --eval-sts, the STS Spearman of m rewritten from E. */
static int train_word_vectors(const pretrain_opts *p, emb_model *m, const float *weight,
                              float *E, int D, const emb_bow_init_options *bo)
{
    emb_err err;
    emb_text_pairs pairs = {0};
    emb_sts sts;
    int have_sts = 0;
    if (read_pairs(p->pairs, m->tok, &pairs) != 0)
        return 1;
    if (p->eval_sts != NULL) {
        if (emb_sts_load(&sts, p->eval_sts, &err) != 0) {
            fprintf(stderr, "embedd pretrain: %s\n", err.msg);
            emb_text_pairs_free(&pairs);
            return 1;
        }
        have_sts = 1;
    }
    emb_bow_train_options to = emb_bow_train_options_default();
    to.batch = p->pairs_batch;
    to.lr = (float)p->lr_pairs;
    to.temperature = (float)p->temperature;
    to.seed = (uint64_t)p->seed;
    emb_bow_trainer *t = emb_bow_trainer_new(E, weight, m->cfg.vocab_size, D, &to, &err);
    int rc = t == NULL;
    if (rc != 0)
        fprintf(stderr, "embedd pretrain: %s\n", err.msg);
    else
        fprintf(stderr, "embedd pretrain: word vectors: %ld pairs, %d epochs of batches of %d\n",
                pairs.n, p->pairs_epochs, to.batch);
    for (int e = 0; rc == 0 && e < p->pairs_epochs; e++) {
        double loss, rho = 0;
        if (emb_bow_train_epoch(t, &pairs, e, &loss, &err) != 0 ||
            (have_sts && (emb_init_bag_of_words(m, weight, E, bo, &err) != 0 ||
                          emb_sts_eval(m, &sts, &rho, &err) != 0))) {
            fprintf(stderr, "embedd pretrain: %s\n", err.msg);
            rc = 1;
            break;
        }
        if (have_sts)
            fprintf(stderr, "word vectors: epoch %d/%d loss %.4f STS Spearman x100 = %.2f\n",
                    e + 1, p->pairs_epochs, loss, rho * 100.0);
        else
            fprintf(stderr, "word vectors: epoch %d/%d loss %.4f\n", e + 1, p->pairs_epochs,
                    loss);
    }
    emb_bow_trainer_free(t);
    emb_text_pairs_free(&pairs);
    if (have_sts)
        emb_sts_free(&sts);
    return rc;
}

/* Rewrites m as the bag-of-words start from --corpus statistics (and
 * --pairs). */
static int init_bag_of_words(const pretrain_opts *p, emb_model *m)
{
    emb_err err;
    emb_token_counts counts;
    const double a = p->sif_a;
    const int V = m->cfg.vocab_size, D = m->cfg.hidden_size - EMB_BOW_Z_DIMS;
    if (D < EMB_BOW_Z_DIMS) {
        fprintf(stderr, "embedd pretrain: --hidden must be at least %d\n", 2 * EMB_BOW_Z_DIMS);
        return 2;
    }
    if (emb_token_counts_init(&counts, V, &err) != 0) {
        fprintf(stderr, "embedd pretrain: %s\n", err.msg);
        return 1;
    }
    int32_t *family = malloc(sizeof(int32_t) * (size_t)V);
    float *weight = malloc(sizeof(float) * (size_t)V);
    float *E = malloc(sizeof(float) * (size_t)V * (size_t)D);
    int rc = family == NULL || weight == NULL || E == NULL;
    if (rc != 0)
        fprintf(stderr, "embedd pretrain: out of memory\n");
    if (rc == 0)
        rc = count_corpus(p->corpus, m->tok, &counts);
    emb_family_options fo = emb_family_options_default();
    fo.n_alt = p->family_alternations;
    emb_bow_init_options bo = emb_bow_init_options_default();
    int merged = 0;
    if (rc == 0) {
        emb_token_weights(m->tok, &counts, (float)a, weight);
        if (emb_word_families(m->tok, &counts, &fo, family, &merged, &err) != 0 ||
            emb_family_vectors(family, V, D, (uint64_t)p->seed, E, &err) != 0) {
            fprintf(stderr, "embedd pretrain: %s\n", err.msg);
            rc = 1;
        }
    }
    if (rc == 0)
        fprintf(stderr, "embedd pretrain: bag of words from %.0f tokens, %d words joined into "
                "families\n", counts.total, merged);
    if (rc == 0 && p->pairs != NULL && p->pairs_epochs > 0)
        rc = train_word_vectors(p, m, weight, E, D, &bo);
    if (rc == 0 && emb_init_bag_of_words(m, weight, E, &bo, &err) != 0) {
        fprintf(stderr, "embedd pretrain: %s\n", err.msg);
        rc = 1;
    }
    free(E);
    free(weight);
    free(family);
    emb_token_counts_free(&counts);
    return rc;
}

/* out/init: the starting model, written once. */
static int pretrain_init(const pretrain_opts *p, const char *init_dir)
{
    emb_err err;
    if (dir_exists(init_dir)) {
        fprintf(stderr, "embedd pretrain: %s exists and is kept (remove it to start over "
                "with other start or shape options)\n", init_dir);
        return 0;
    }
    const int bow = p->init == INIT_BOW;
    emb_tokenizer *tok = emb_tokenizer_load(p->vocab, &err);
    if (tok == NULL) {
        fprintf(stderr, "embedd pretrain: %s\n", err.msg);
        return 1;
    }
    emb_config cfg;
    new_config(&cfg, p, tok);
    emb_tokenizer_free(tok);
    emb_model *m = emb_model_init(&cfg, p->vocab, (uint64_t)p->seed, &err);
    int rc = m != NULL ? 0 : 1;
    if (rc != 0)
        fprintf(stderr, "embedd pretrain: initialising the model: %s\n", err.msg);
    if (rc == 0 && bow)
        rc = init_bag_of_words(p, m);
    if (rc == 0 && emb_save_model_dir(init_dir, &m->cfg, m->params, NULL, p->vocab, EMB_DT_F32,
                                      NULL, &err) != 0) {
        fprintf(stderr, "embedd pretrain: writing %s: %s\n", init_dir, err.msg);
        rc = 1;
    }
    if (rc == 0)
        fprintf(stderr, "embedd pretrain: initialised %d layers x %d hidden (%zu parameters, "
                "%s start) in %s\n", p->layers, p->hidden, m->n_params,
                options_choice_name(inits, p->init), init_dir);
    emb_model_free(m);
    return rc;
}

/* Options of one stage, from train's defaults. */
static void stage_opts(train_opts *o, const pretrain_opts *p, const char *from, const char *out)
{
    train_opts_defaults(o);
    o->model_dir = from;
    o->out = out;
    o->eval_sts = p->eval_sts;
    o->eval_every = p->eval_every;
    o->save_every = p->save_every;
    o->seed = p->seed;
    o->threads = p->threads;
    o->temperature = p->temperature;
    o->log_every = 50;
}

/* Runs one training stage from *last into dir when steps > 0; *last
 * becomes dir. Returns an exit status, or -1 when stopped by a signal. */
static int run_stage(const char *name, train_opts *o, const char **last, const char *dir)
{
    fprintf(stderr, "embedd pretrain: %s, into %s\n", name, dir);
    int rc = train_run_job(o);
    if (rc != 0)
        return rc;
    if (train_stop_requested())
        return -1;
    *last = dir;
    return 0;
}

/* out/model: the final model, F16, with its MLM head, without optimizer state. */
static int pretrain_export(const char *from, const char *final_dir)
{
    emb_err err;
    emb_model *m = emb_model_load(from, &err);
    emb_train_config tc = emb_train_config_default();
    tc.objective = EMB_OBJ_MLM;
    emb_trainer *t = m != NULL ? emb_trainer_new(m, from, &tc, &err) : NULL;
    int rc = t != NULL && emb_save_model_dir(final_dir, &m->cfg, t->params,
                                             t->params + t->n_enc, from, EMB_DT_F16, NULL,
                                             &err) == 0 ? 0 : 1;
    if (rc != 0)
        fprintf(stderr, "embedd pretrain: exporting %s: %s\n", final_dir, err.msg);
    else
        fprintf(stderr, "embedd pretrain: final model (F16) written to %s\n", final_dir);
    emb_trainer_free(t);
    emb_model_free(m);
    return rc;
}

int cli_pretrain(int argc, char **argv)
{
    pretrain_opts p;
    memset(&p, 0, sizeof p);
    const int n = (int)(sizeof pretrain_specs / sizeof pretrain_specs[0]);
    int rc = options_parse(pretrain_specs, n, &p, argc, argv,
                           "usage: embedd pretrain --corpus FILE[,FILE...] --vocab DIR --out DIR "
                           "[options]\nTrains a sentence encoder from scratch in stages: a "
                           "bag-of-words start from corpus statistics (its word vectors trained "
                           "on --pairs), then optional masked-token prediction and SimCSE. "
                           "Rerun the same command to resume.");
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (p.corpus == NULL || p.vocab == NULL || p.out == NULL) {
        fprintf(stderr, "embedd pretrain: --corpus, --vocab and --out are required\n");
        return 2;
    }
    if (!dir_exists(p.out) && mkdir(p.out, 0755) != 0) {
        fprintf(stderr, "embedd pretrain: %s: %s\n", p.out, strerror(errno));
        return 1;
    }
    char init_dir[PATH_MAX], mlm_dir[PATH_MAX], simcse_dir[PATH_MAX];
    char final_dir[PATH_MAX];
    snprintf(init_dir, sizeof init_dir, "%.4000s/init", p.out);
    snprintf(mlm_dir, sizeof mlm_dir, "%.4000s/mlm", p.out);
    snprintf(simcse_dir, sizeof simcse_dir, "%.4000s/simcse", p.out);
    snprintf(final_dir, sizeof final_dir, "%.4000s/model", p.out);
    if ((rc = pretrain_init(&p, init_dir)) != 0)
        return rc;
    train_opts o;
    const char *last = init_dir;
    if (p.mlm_steps > 0) {
        stage_opts(&o, &p, last, mlm_dir);
        o.corpus = p.corpus;
        o.objective = EMB_OBJ_MLM;
        o.steps = p.mlm_steps;
        o.batch_size = p.mlm_batch;
        o.max_seq_len = p.mlm_len;
        o.lr = p.lr_mlm;
        o.warmup = p.mlm_steps / 20;
        if ((rc = run_stage("masked-token prediction", &o, &last, mlm_dir)) != 0)
            return rc < 0 ? 0 : rc;
    }
    if (p.simcse_steps > 0) {
        stage_opts(&o, &p, last, simcse_dir);
        o.corpus = p.simcse_corpus != NULL ? p.simcse_corpus : p.corpus;
        o.objective = EMB_OBJ_SIMCSE;
        o.steps = p.simcse_steps;
        o.batch_size = p.simcse_batch;
        o.max_seq_len = p.simcse_len;
        o.lr = p.lr_simcse;
        o.warmup = p.simcse_steps / 10;
        if ((rc = run_stage("SimCSE", &o, &last, simcse_dir)) != 0)
            return rc < 0 ? 0 : rc;
    }
    return pretrain_export(last, final_dir);
}
