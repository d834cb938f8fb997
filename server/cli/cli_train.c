/* cli_train.c: `embedd train` (self-supervised fine-tuning on a corpus of
 * one text per line) and `embedd eval` (STS Spearman of a model).
 *
 * train keeps the corpus in memory, walks it in a seeded shuffled order
 * (a new order each epoch), and writes a resumable checkpoint to --out every
 * --save-every steps, at the end and on SIGINT/SIGTERM. Run again with the
 * same --out, it resumes from that checkpoint with its optimizer state. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli_train.h"
#include "options.h"
#include "textfiles.h"
#include "sts.h"
#include "train.h"


static const opt_choice objectives[] = {
    {"simcse", EMB_OBJ_SIMCSE}, {"mlm", EMB_OBJ_MLM}, {"both", EMB_OBJ_BOTH},
    {"pairs", EMB_OBJ_PAIRS}, {NULL, 0}};
static const opt_choice schedules[] = {
    {"linear", EMB_SCHED_LINEAR}, {"cosine", EMB_SCHED_COSINE},
    {"constant", EMB_SCHED_CONSTANT}, {NULL, 0}};
static const opt_choice trainables[] = {{"all", 0}, {"word-embeddings", 1}, {NULL, 0}};
static const opt_choice dtypes[] = {
    {"f32", EMB_DT_F32}, {"f16", EMB_DT_F16}, {"bf16", EMB_DT_BF16}, {NULL, 0}};
static const opt_choice model_dropout[] = {{"model", -1}, {NULL, 0}};

#define T_STR(flag, field, def, help) OPT_STR(train_opts, flag, NULL, field, def, help)
#define T_INT(flag, field, def, lo, hi, help) \
    OPT_INTEGER(train_opts, flag, NULL, field, def, lo, hi, help)
#define T_NUM(flag, field, def, lo, hi, help) \
    OPT_NUMBER(train_opts, flag, NULL, field, def, lo, hi, help)
#define T_ONE_OF(flag, field, def, names, help) \
    OPT_ONE_OF(train_opts, flag, NULL, field, def, names, help)

static const opt_spec train_specs[] = {
    T_STR("model", model_dir, NULL, "model directory to start from"),
    T_STR("model-id", model_id, NULL, "or a Hugging Face model id to download"),
    T_STR("corpus", corpus, NULL, "text files, one text per line, comma-separated"),
    T_ONE_OF("objective", objective, "simcse", objectives,
             "what to learn (pairs: lines are anchor<TAB>positive)"),
    T_INT("steps", steps, "1000", 1, INT_MAX, "optimizer steps in all"),
    T_INT("batch-size", batch_size, "64", 2, 1 << 16, "texts per step"),
    T_INT("max-seq-len", max_seq_len, "32", 4, 1 << 16, "tokens per text, [CLS] and [SEP] included"),
    T_NUM("lr", lr, "3e-5", 0, 1, "peak learning rate"),
    T_INT("warmup", warmup, "-1", -1, INT_MAX, "warm-up steps (-1: 10% of --steps)"),
    T_ONE_OF("schedule", schedule, "linear", schedules, "after warm-up"),
    T_NUM("weight-decay", weight_decay, "0.01", 0, 1, "AdamW decoupled weight decay"),
    T_NUM("temperature", temperature, "0.05", 1e-4, 100, "SimCSE temperature"),
    T_NUM("mlm-prob", mlm_prob, "0.15", 0.01, 0.9, "share of tokens masked for MLM"),
    T_NUM("simcse-weight", simcse_weight, "1", 0, 1e3, "weight of the SimCSE loss"),
    T_NUM("mlm-weight", mlm_weight, "1", 0, 1e3, "weight of the MLM loss"),
    T_NUM("l2sp", l2sp, "0", 0, 1e6, "L2-SP strength toward the starting weights"),
    {.flag = "dropout", .type = OPT_FLOAT, .offset = offsetof(train_opts, dropout),
     .def = "model", .min = 0, .max = 0.9, .choices = model_dropout,
     .help = "hidden and attention dropout (model: the config's)"},
    T_ONE_OF("train-only", word_embeddings_only, "all", trainables,
             "what learns (word-embeddings: the rest frozen)"),
    T_STR("out", out, NULL, "checkpoint directory (resumed when it has one)"),
    OPT_FLAG(train_opts, "resume", NULL, resume, "true",
             "resume from --out when it holds trainer state"),
    T_INT("save-every", save_every, "500", 0, INT_MAX, "steps between checkpoints (0: only at the end)"),
    T_ONE_OF("save-dtype", save_dtype, "f32", dtypes, "weights in checkpoints"),
    T_STR("eval-sts", eval_sts, NULL, "score<TAB>s1<TAB>s2 file for periodic Spearman"),
    T_INT("eval-every", eval_every, "200", 0, INT_MAX, "steps between STS evaluations"),
    T_INT("log-every", log_every, "10", 1, INT_MAX, "steps between log lines (not on a terminal)"),
    T_INT("min-tokens", min_tokens, "4", 2, 1 << 16, "skip texts shorter than this (not pairs: a side needs one token)"),
    T_INT("seed", seed, "42", 0, INT_MAX, "random seed (data order, dropout, masking)"),
    T_INT("threads", threads, "0", 0, 1024, "compute threads (0: all cores)"),
};

/* ---- the corpus ---------------------------------------------------------------- */

typedef struct corpus {
    char *text;        /* every kept line, NUL-terminated, back to back */
    size_t *start;     /* (n) offsets into text */
    long n;
    size_t len, cap, cap_n;
} corpus;

static int corpus_push(corpus *c, const char *line, size_t n)
{
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap * 2 : (1u << 20);
        while (cap < c->len + n + 1)
            cap *= 2;
        char *t = realloc(c->text, cap);
        if (t == NULL)
            return -1;
        c->text = t;
        c->cap = cap;
    }
    if ((size_t)c->n == c->cap_n) {
        size_t cap = c->cap_n ? c->cap_n * 2 : 4096;
        size_t *s = realloc(c->start, sizeof(size_t) * cap);
        if (s == NULL)
            return -1;
        c->start = s;
        c->cap_n = cap;
    }
    c->start[c->n++] = c->len;
    memcpy(c->text + c->len, line, n);
    c->text[c->len + n] = '\0';
    c->len += n + 1;
    return 0;
}

static int corpus_line(const char *line, size_t len, void *ctx)
{
    if (corpus_push(ctx, line, len) != 0) {
        fprintf(stderr, "embedd train: out of memory reading the corpus\n");
        return -1;
    }
    return 0;
}

/* Reads the comma-separated files; keeps non-blank lines, trimmed. */
static int corpus_load(corpus *c, const char *files)
{
    return textfiles_each_line(files, "train", corpus_line, c);
}

static void corpus_free(corpus *c)
{
    free(c->text);
    free(c->start);
}

/* The texts of one step: walks the shuffled corpus from position *pos
 * (texts consumed so far, over all epochs), skipping texts shorter than
 * min_tokens. ids gets the texts back to back, lens their lengths. */
typedef struct feeder {
    const corpus *c;
    long *order;
    long epoch;        /* of order */
    uint64_t seed;
} feeder;

static long feeder_next(feeder *f, long pos)
{
    long epoch = pos / f->c->n;
    if (epoch != f->epoch) {
        emb_shuffle_order(f->order, f->c->n, f->seed, epoch);
        f->epoch = epoch;
    }
    return f->order[pos % f->c->n];
}

static int fill_batch(feeder *f, const emb_tokenizer *tok, long *pos, int B, int max_len,
                      int min_tokens, int32_t *ids, int *lens)
{
    long at = 0;
    long tries = 0;
    for (int i = 0; i < B;) {
        if (++tries > 100L * B + f->c->n)
            return -1; /* nothing in the corpus is long enough */
        long k = feeder_next(f, (*pos)++);
        const char *text = f->c->text + f->c->start[k];
        int n = emb_encode(tok, text, strlen(text), max_len, 0, ids + at, NULL);
        if (n < 0)
            return -1;
        if (n < min_tokens)
            continue;
        lens[i++] = n;
        at += n;
    }
    return 0;
}

/* fill_batch for the pairs objective: each text is "anchor<TAB>positive"
 * (lines without a TAB or with an empty side are skipped; --min-tokens does
 * not apply, a one-word anchor is normal); ids gets the B anchors back to
 * back, then their B positives, and lens (2B) their lengths. ids has room
 * for 2 B max_len ids. */
static int fill_pairs(feeder *f, const emb_tokenizer *tok, long *pos, int B, int max_len,
                      int32_t *ids, int *lens)
{
    int32_t *second = ids + (long)B * max_len;
    long at = 0, at2 = 0;
    long tries = 0;
    for (int i = 0; i < B;) {
        if (++tries > 100L * B + f->c->n)
            return -1; /* no usable pairs in the corpus */
        long k = feeder_next(f, (*pos)++);
        const char *text = f->c->text + f->c->start[k];
        const char *tab = strchr(text, '\t');
        if (tab == NULL)
            continue;
        int n1 = emb_encode(tok, text, (size_t)(tab - text), max_len, 0, ids + at, NULL);
        int n2 = emb_encode(tok, tab + 1, strlen(tab + 1), max_len, 0, second + at2, NULL);
        if (n1 < 0 || n2 < 0)
            return -1;
        if (n1 < 3 || n2 < 3)
            continue; /* a side without a token of its own */
        lens[i] = n1;
        lens[B + i] = n2;
        at += n1;
        at2 += n2;
        i++;
    }
    memmove(ids + at, second, sizeof(int32_t) * (size_t)at2);
    return 0;
}

/* ---- progress ---------------------------------------------------------------------- */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void format_duration(char *out, size_t cap, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(out, cap, "%ldm%02lds", t / 60, t % 60);
}

typedef struct progress {
    int tty;
    long first_step, total;
    double t0, loss_ema;
    long tokens;
} progress;

static void progress_step(progress *p, long step, const emb_step_stats *st, int log_every)
{
    p->tokens += st->tokens;
    if (!st->skipped)
        p->loss_ema = p->loss_ema == 0 ? st->loss : 0.9 * p->loss_ema + 0.1 * st->loss;
    double el = now_seconds() - p->t0;
    double done = (double)(step - p->first_step + 1);
    double eta = el / done * (double)(p->total - step);
    double tps = el > 0 ? p->tokens / el : 0;
    char eta_s[32];
    format_duration(eta_s, sizeof eta_s, eta);
    if (p->tty) {
        const int width = 24;
        int fill = (int)((double)step / p->total * width);
        char bar[32];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] step %ld/%ld  loss %.4f  %.0f tok/s  ETA %s   ", bar, step,
                p->total, p->loss_ema, tps, eta_s);
        fflush(stderr);
    } else if (step % log_every == 0 || step == p->total) {
        fprintf(stderr,
                "step %ld/%ld loss %.4f simcse %.4f mlm %.4f grad_norm %.3f lr %.3g "
                "tok/s %.0f eta %s%s\n",
                step, p->total, st->loss, st->simcse_loss, st->mlm_loss, st->grad_norm,
                (double)st->lr, tps, eta_s, st->skipped ? " (skipped: non-finite)" : "");
    }
}

static void progress_line_break(const progress *p)
{
    if (p->tty)
        fputc('\n', stderr);
}

/* ---- options ---------------------------------------------------------------------- */

/* The model library's training configuration from the parsed options. */
static void train_config_from(const train_opts *o, emb_train_config *tc)
{
    *tc = emb_train_config_default();
    tc->objective = o->objective;
    tc->schedule = o->schedule;
    tc->lr = (float)o->lr;
    tc->weight_decay = (float)o->weight_decay;
    tc->temperature = (float)o->temperature;
    tc->mlm_prob = (float)o->mlm_prob;
    tc->simcse_weight = (float)o->simcse_weight;
    tc->mlm_weight = (float)o->mlm_weight;
    tc->l2sp = (float)o->l2sp;
    if (o->dropout >= 0) {
        tc->hidden_dropout = (float)o->dropout;
        tc->attn_dropout = tc->hidden_dropout;
    }
    tc->word_embeddings_only = o->word_embeddings_only;
    tc->total_steps = o->steps;
    tc->warmup_steps = o->warmup >= 0 ? o->warmup : o->steps / 10;
    tc->seed = (uint64_t)o->seed;
}

/* ---- train ------------------------------------------------------------------------- */

typedef struct train_run {
    train_opts o;
    emb_train_config tc;
    emb_dtype dtype;
    char model_dir[PATH_MAX];
    emb_model *model;       /* the starting point, then the export target for eval */
    emb_trainer *t;
    emb_sts sts;
    int have_sts;
    corpus c;
} train_run;

static void run_free(train_run *r)
{
    emb_trainer_free(r->t);
    emb_model_free(r->model);
    if (r->have_sts)
        emb_sts_free(&r->sts);
    corpus_free(&r->c);
}

static int has_trainer_state(const char *dir)
{
    char path[PATH_MAX + 32];
    struct stat st;
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    return stat(path, &st) == 0;
}

static int eval_now(train_run *r, long step)
{
    emb_err err;
    double rho;
    if (emb_trainer_export(r->t, r->model, &err) != 0 ||
        emb_sts_eval(r->model, &r->sts, &rho, &err) != 0) {
        fprintf(stderr, "embedd train: evaluation failed: %s\n", err.msg);
        return -1;
    }
    fprintf(stderr, "step %ld: STS Spearman x100 = %.2f (%d pairs)\n", step, rho * 100.0,
            r->sts.n);
    return 0;
}

static int save_now(train_run *r, long step)
{
    emb_err err;
    if (emb_save_model_dir(r->o.out, &r->t->cfg, NULL, NULL, r->model_dir, r->dtype, r->t,
                           &err) != 0) {
        fprintf(stderr, "embedd train: saving a checkpoint failed: %s\n", err.msg);
        return -1;
    }
    fprintf(stderr, "step %ld: checkpoint written to %s\n", step, r->o.out);
    return 0;
}

/* Loads the model (from --out when resuming) and the trainer. */
static int setup_run(train_run *r)
{
    emb_err err;
    int resume = r->o.resume && has_trainer_state(r->o.out);
    if (resume) {
        snprintf(r->model_dir, sizeof r->model_dir, "%s", r->o.out);
    } else {
        int rc = cli_model_dir(r->o.model_dir, r->o.model_id, r->model_dir,
                               sizeof r->model_dir, "train");
        if (rc != 0)
            return rc;
    }
    r->model = emb_model_load(r->model_dir, &err);
    if (r->model == NULL) {
        fprintf(stderr, "embedd train: %s\n", err.msg);
        return 1;
    }
    r->t = emb_trainer_new(r->model, r->model_dir, &r->tc, &err);
    if (r->t == NULL) {
        fprintf(stderr, "embedd train: %s\n", err.msg);
        return 1;
    }
    if (resume) {
        if (emb_trainer_load_state(r->t, r->model_dir, &err) != 0) {
            fprintf(stderr, "embedd train: resuming from %s: %s\n", r->model_dir, err.msg);
            return 1;
        }
        fprintf(stderr, "embedd train: resuming from %s at step %ld\n", r->model_dir,
                r->t->step);
    }
    return 0;
}

static int train_loop(train_run *r)
{
    const int B = r->o.batch_size;
    int max_len = r->o.max_seq_len;
    if (max_len > r->model->cfg.max_position_embeddings)
        max_len = r->model->cfg.max_position_embeddings;
    const int pairs = r->tc.objective == EMB_OBJ_PAIRS;
    const int n_texts = pairs ? 2 * B : B; /* sequences per step */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_texts * (size_t)max_len);
    int *lens = malloc(sizeof(int) * (size_t)n_texts);
    long *order = malloc(sizeof(long) * (size_t)r->c.n);
    if (ids == NULL || lens == NULL || order == NULL) {
        fprintf(stderr, "embedd train: out of memory\n");
        free(ids);
        free(lens);
        free(order);
        return 1;
    }
    feeder f = {&r->c, order, -1, (uint64_t)r->o.seed};
    long pos = r->t->step * (long)B; /* approximately where the last run stopped */
    progress p = {isatty(STDERR_FILENO), r->t->step + 1, r->o.steps, now_seconds(), 0, 0};
    int rc = 0;
    emb_err err;
    while (r->t->step < r->o.steps && !stop_requested) {
        int got = pairs ? fill_pairs(&f, r->model->tok, &pos, B, max_len, ids, lens)
                        : fill_batch(&f, r->model->tok, &pos, B, max_len, r->o.min_tokens, ids,
                                     lens);
        if (got != 0) {
            if (pairs)
                fprintf(stderr, "embedd train: the corpus has no anchor<TAB>positive pairs\n");
            else
                fprintf(stderr, "embedd train: the corpus has no texts of %d tokens or more\n",
                        r->o.min_tokens);
            rc = 1;
            break;
        }
        emb_step_stats st;
        if (emb_train_step(r->t, ids, lens, n_texts, &st, &err) != 0) {
            progress_line_break(&p);
            fprintf(stderr, "embedd train: %s\n", err.msg);
            rc = 1;
            break;
        }
        long step = r->t->step + (st.skipped ? 1 : 0);
        progress_step(&p, step, &st, r->o.log_every);
        if (st.skipped)
            r->t->step++; /* a skipped step still uses up its batch and its place */
        if (r->have_sts && r->o.eval_every > 0 && step % r->o.eval_every == 0) {
            progress_line_break(&p);
            eval_now(r, step);
        }
        if (r->o.save_every > 0 && step % r->o.save_every == 0 && step < r->o.steps) {
            progress_line_break(&p);
            if (save_now(r, step) != 0) {
                rc = 1;
                break;
            }
        }
    }
    progress_line_break(&p);
    if (rc == 0) {
        if (stop_requested)
            fprintf(stderr, "embedd train: stopping at step %ld\n", r->t->step);
        rc = save_now(r, r->t->step) != 0;
        if (rc == 0 && r->have_sts && !stop_requested)
            eval_now(r, r->t->step);
        fprintf(stderr, "embedd train: %ld steps done, %ld skipped\n", r->t->step,
                r->t->skipped);
    }
    free(ids);
    free(lens);
    free(order);
    return rc;
}

/* Runs one training job described by o; returns an exit status. */
int train_run_job(const train_opts *o)
{
    train_run r;
    memset(&r, 0, sizeof r);
    r.o = *o;
    train_config_from(&r.o, &r.tc);
    r.dtype = (emb_dtype)r.o.save_dtype;
    cli_set_threads(r.o.threads);
    emb_err err;
    if (r.o.eval_sts != NULL) {
        if (emb_sts_load(&r.sts, r.o.eval_sts, &err) != 0) {
            fprintf(stderr, "embedd train: %s\n", err.msg);
            return 1;
        }
        r.have_sts = 1;
    }
    if (corpus_load(&r.c, r.o.corpus) != 0 || r.c.n == 0) {
        if (r.c.n == 0)
            fprintf(stderr, "embedd train: the corpus is empty\n");
        run_free(&r);
        return 1;
    }
    int rc = setup_run(&r);
    if (rc == 0 && r.t->step >= r.o.steps) {
        fprintf(stderr, "embedd train: %s already has %ld of %d steps\n", r.o.out, r.t->step,
                r.o.steps);
    } else if (rc == 0) {
        fprintf(stderr, "embedd train: %ld texts, %s, %d steps of %d texts x <= %d tokens\n",
                r.c.n, options_choice_name(objectives, r.o.objective), r.o.steps, r.o.batch_size,
                r.o.max_seq_len);
        if (r.have_sts && r.t->step == 0)
            eval_now(&r, 0);
        struct sigaction sa = {0};
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        rc = train_loop(&r);
    }
    run_free(&r);
    return rc;
}

int cli_train(int argc, char **argv)
{
    train_opts o;
    memset(&o, 0, sizeof o);
    const int n = (int)(sizeof train_specs / sizeof train_specs[0]);
    int rc = options_parse(train_specs, n, &o, argc, argv,
                           "usage: embedd train --model DIR --corpus FILE[,FILE...] --out DIR "
                           "[options]");
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (o.corpus == NULL || o.out == NULL) {
        fprintf(stderr, "embedd train: --corpus and --out are required\n");
        return 2;
    }
    return train_run_job(&o);
}

void train_opts_defaults(train_opts *o)
{
    char *argv[] = {"train", NULL};
    memset(o, 0, sizeof *o);
    options_parse(train_specs, (int)(sizeof train_specs / sizeof train_specs[0]), o, 1, argv,
                  "");
}

int train_stop_requested(void)
{
    return stop_requested != 0;
}

/* ---- eval ---------------------------------------------------------------------------- */

typedef struct eval_opts {
    const char *model_dir, *model_id, *sts;
    int threads;
} eval_opts;

static const opt_spec eval_specs[] = {
    OPT_STR(eval_opts, "model", NULL, model_dir, NULL, "model directory"),
    OPT_STR(eval_opts, "model-id", NULL, model_id, NULL, "or a Hugging Face model id to download"),
    OPT_STR(eval_opts, "sts", NULL, sts, NULL, "score<TAB>sentence1<TAB>sentence2 file"),
    OPT_INTEGER(eval_opts, "threads", NULL, threads, "0", 0, 1024,
                "compute threads (0: all cores)"),
};

int cli_eval(int argc, char **argv)
{
    eval_opts o;
    memset(&o, 0, sizeof o);
    const int n = (int)(sizeof eval_specs / sizeof eval_specs[0]);
    int rc = options_parse(eval_specs, n, &o, argc, argv,
                           "usage: embedd eval --model DIR --sts FILE.tsv");
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (o.sts == NULL) {
        fprintf(stderr, "embedd eval: --sts FILE.tsv is required\n");
        return 2;
    }
    char dir[PATH_MAX];
    rc = cli_model_dir(o.model_dir, o.model_id, dir, sizeof dir, "eval");
    if (rc != 0)
        return rc;
    cli_set_threads(o.threads);
    emb_err err;
    emb_sts sts;
    if (emb_sts_load(&sts, o.sts, &err) != 0) {
        fprintf(stderr, "embedd eval: %s\n", err.msg);
        return 1;
    }
    emb_model *m = emb_model_load(dir, &err);
    double rho = 0;
    rc = m != NULL && emb_sts_eval(m, &sts, &rho, &err) == 0 ? 0 : 1;
    if (rc == 0)
        printf("spearman_x100 %.2f pairs %d model %s\n", rho * 100.0, sts.n, dir);
    else
        fprintf(stderr, "embedd eval: %s\n", err.msg);
    emb_model_free(m);
    emb_sts_free(&sts);
    return rc;
}
