/* cli_embed.c: `embedd embed` and `embedd tokenize`.
 *
 * Both read one text per line on stdin (the trailing '\n' is not part of
 * the text) and write one JSON array per line, in input order. embed packs
 * lines into batches of at most --batch-tokens tokens and runs one forward
 * pass per batch. embed --latency N instead embeds the first line N times,
 * one forward pass each, and reports the latency percentiles. */
#include "cli.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#include <omp.h>

#include "bert.h"
#include "hub/hub.h"
#include "common/jsonfmt.h"
#include "options.h"

#define MAX_LINE_BYTES (16L << 20)

void cli_set_threads(int n)
{
    if (n <= 0)
        return;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

static int fetch_model(const char *model_id, char *out, size_t cap, const char *cmd)
{
    hub_opts o;
    emb_err err;
    if (hub_opts_from_env(&o, &err) != 0) {
        fprintf(stderr, "embedd %s: %s\n", cmd, err.msg);
        return 1;
    }
    o.log = stderr;
    o.progress = isatty(STDERR_FILENO);
    if (!o.offline)
        fprintf(stderr, "embedd %s: fetching %s from %s into %s\n", cmd, model_id, o.endpoint,
                o.cache_dir);
    if (hub_fetch(model_id, &o, out, cap, &err) != 0) {
        fprintf(stderr, "embedd %s: %s\n", cmd, err.msg);
        return 1;
    }
    return 0;
}

int cli_model_dir(const char *model_dir, const char *model_id, char *out, size_t cap,
                  const char *cmd)
{
    int have_dir = model_dir != NULL && model_dir[0] != '\0';
    int have_id = model_id != NULL && model_id[0] != '\0';
    if (have_dir && have_id) {
        fprintf(stderr, "embedd %s: give --model or --model-id, not both\n", cmd);
        return 2;
    }
    if (have_id)
        return fetch_model(model_id, out, cap, cmd);
    if (have_dir) {
        snprintf(out, cap, "%s", model_dir);
        return 0;
    }
    if (hub_default_model(out, cap) == 0)
        return 0;
    fprintf(stderr,
            "embedd %s: --model DIR or --model-id ORG/NAME is required (no default model at "
            "%s)\n",
            cmd, out);
    return 2;
}

typedef struct embed_opts {
    const char *model_dir;
    const char *model_id;
    int normalize;
    int pooling;   /* emb_pooling, or -1: the model's */
    int batch_tokens;
    int threads;
    int stats;
    int latency;   /* runs of embed --latency, 0 = off */
    int precision; /* emb_precision */
} embed_opts;

static const opt_choice poolings[] = {
    {"mean", EMB_POOL_MEAN}, {"cls", EMB_POOL_CLS}, {"last", EMB_POOL_LAST},
    {NULL, 0}};
static const opt_choice precisions[] = {
    {"fp32", EMB_PRECISION_FP32}, {"int8", EMB_PRECISION_INT8}, {NULL, 0}};

#define E_STR(flag, field, help) OPT_STR(embed_opts, flag, NULL, field, NULL, help)
#define E_INT(flag, field, def, lo, hi, help) \
    OPT_INTEGER(embed_opts, flag, NULL, field, def, lo, hi, help)

static const opt_spec embed_specs[] = {
    E_STR("model", model_dir, "Hugging Face model directory (default: the bundled model)"),
    E_STR("model-id", model_id,
          "download ORG/NAME[@REVISION] from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN, "
          "HF_HUB_CACHE, HF_HUB_OFFLINE)"),
    OPT_FLAG(embed_opts, "normalize", NULL, normalize, "true",
             "L2-normalise the embeddings (--no-normalize: do not)"),
    OPT_ONE_OF(embed_opts, "pooling", NULL, pooling, NULL, poolings,
               "pooling (default: the model's)"),
    E_INT("batch-tokens", batch_tokens, "16384", 1, 1 << 24, "tokens per forward pass"),
    OPT_FLAG(embed_opts, "stats", NULL, stats, "false",
             "print texts, tokens and throughput to stderr at the end"),
    E_INT("latency", latency, NULL, 1, 1000000,
          "embed the first line N times, one at a time, print it once and its p50/p99 "
          "latency (ms) to stderr"),
    OPT_ONE_OF(embed_opts, "precision", NULL, precision, "fp32", precisions,
               "dense-layer arithmetic (int8: AVX-512 VNNI; approximate)"),
    E_INT("threads", threads, "0", 0, 1024, "compute threads (0: all cores)"),
};

/* tokenize takes the flags that choose the model (and --threads, accepted
 * for symmetry with embed). */
static const opt_spec tokenize_specs[] = {
    E_STR("model", model_dir, "Hugging Face model directory (default: the bundled model)"),
    E_STR("model-id", model_id,
          "download ORG/NAME[@REVISION] from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN, "
          "HF_HUB_CACHE, HF_HUB_OFFLINE)"),
    E_INT("threads", threads, "0", 0, 1024, "compute threads (0: all cores)"),
};

#define N_SPECS(specs) ((int)(sizeof specs / sizeof specs[0]))

/* Parses the flags of embed or tokenize (argv[0]); returns 0, or 2 on a
 * usage error (after printing it), or 1 for --help. */
static int parse_opts(int argc, char **argv, embed_opts *o)
{
    memset(o, 0, sizeof *o);
    o->pooling = -1;
    if (strcmp(argv[0], "embed") == 0)
        return options_parse(embed_specs, N_SPECS(embed_specs), o, argc, argv,
                             "usage: embedd embed [--model DIR | --model-id ORG/NAME[@REV]] "
                             "[options] < texts.txt\n"
                             "Reads one text per line on stdin and writes one JSON array of "
                             "its embedding per line.");
    return options_parse(tokenize_specs, N_SPECS(tokenize_specs), o, argc, argv,
                         "usage: embedd tokenize [--model DIR | --model-id ORG/NAME[@REV]] "
                         "< texts.txt\n"
                         "Reads one text per line on stdin and writes one JSON array of its "
                         "token ids per line.");
}

/* Parses the options of `embed` or `tokenize` (argv[0]) and finds the
 * model's directory (downloading --model-id). -1 to go on, or the exit
 * status. */
static int parse_and_locate(int argc, char **argv, embed_opts *o, char *model_dir, size_t size)
{
    int rc = parse_opts(argc, argv, o);
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    rc = cli_model_dir(o->model_dir, o->model_id, model_dir, size, argv[0]);
    return rc != 0 ? rc : -1;
}

/* Reads one line without its '\n'. Returns its length, -1 at EOF, -2 when
 * longer than MAX_LINE_BYTES. */
static long read_line(char **buf, size_t *cap, FILE *fp)
{
    ssize_t n = getline(buf, cap, fp);
    if (n < 0)
        return -1;
    if (n > MAX_LINE_BYTES)
        return -2;
    if (n > 0 && (*buf)[n - 1] == '\n')
        n--;
    return n;
}

/* Reads and tokenises the next stdin line into seq (room for max_len).
 * Returns its token count, -1 at end of input, or -2 after printing an
 * error for line lineno. */
static int next_encoded_line(const emb_tokenizer *tok, int max_len, int32_t *seq, char **line,
                             size_t *line_cap, long lineno, const char *cmd)
{
    long len = read_line(line, line_cap, stdin);
    if (len == -1)
        return -1;
    if (len == -2) {
        fprintf(stderr, "embedd %s: line %ld is longer than %ld bytes\n", cmd, lineno,
                MAX_LINE_BYTES);
        return -2;
    }
    int n = emb_encode(tok, *line, (size_t)len, max_len, 0, seq, NULL);
    if (n < 0) {
        fprintf(stderr, "embedd %s: out of memory tokenising line %ld\n", cmd, lineno);
        return -2;
    }
    return n;
}

/* The pending batch of embed: ids of whole sequences back to back. */
typedef struct batch {
    int32_t *ids;
    int *lens;
    int n_seqs, n_tokens;
    int cap_seqs;
    float *out;
} batch;

static int flush_batch(const emb_model *m, emb_workspace *ws, batch *b, const embed_opts *o,
                       emb_pooling pooling)
{
    if (b->n_seqs == 0)
        return 0;
    emb_err err;
    const int C = emb_model_dim(m);
    if (emb_embed_ids(m, ws, b->ids, b->lens, b->n_seqs, pooling, o->normalize, b->out, &err) !=
        0) {
        fprintf(stderr, "embedd embed: %s\n", err.msg);
        return -1;
    }
    for (int s = 0; s < b->n_seqs; s++) {
        json_write_floats(stdout, b->out + (long)s * C, C);
        fputc('\n', stdout);
    }
    b->n_seqs = 0;
    b->n_tokens = 0;
    return 0;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile q (0..1] of n sorted values. */
static double percentile(const double *sorted, int n, double q)
{
    int k = (int)ceil(q * n) - 1;
    if (k < 0)
        k = 0;
    if (k > n - 1)
        k = n - 1;
    return sorted[k];
}

/* embed --latency: the first stdin line, tokenised and embedded (one
 * forward pass of one sequence, pooling, normalisation) o->latency times
 * after one untimed run; writes its embedding once and
 * {"latency_runs", "tokens", "p50_ms", "p99_ms", "blas_core"} to stderr. */
static int embed_latency(const emb_model *m, emb_workspace *ws, const embed_opts *o,
                         emb_pooling pooling, int32_t *seq, float *out)
{
    char *line = NULL;
    size_t line_cap = 0;
    double *ms = malloc(sizeof(double) * (size_t)o->latency);
    const int max_len = m->cfg.max_seq_length;
    int rc = 1;
    long len = read_line(&line, &line_cap, stdin);
    if (ms == NULL) {
        fprintf(stderr, "embedd embed: out of memory\n");
        goto out;
    }
    if (len < 0) {
        fprintf(stderr, "embedd embed: --latency needs one input line\n");
        goto out;
    }
    int n = 0;
    for (int r = -1; r < o->latency; r++) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        n = emb_encode(m->tok, line, (size_t)len, max_len, 0, seq, NULL);
        emb_err err;
        if (n < 0) {
            fprintf(stderr, "embedd embed: out of memory tokenising line 1\n");
            goto out;
        }
        if (emb_embed_ids(m, ws, seq, &n, 1, pooling, o->normalize, out, &err) != 0) {
            fprintf(stderr, "embedd embed: %s\n", err.msg);
            goto out;
        }
        if (r >= 0)
            ms[r] = 1e3 * seconds_since(&t0);
    }
    json_write_floats(stdout, out, emb_model_dim(m));
    fputc('\n', stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "embedd embed: error writing output\n");
        goto out;
    }
    qsort(ms, (size_t)o->latency, sizeof ms[0], cmp_double);
    fprintf(stderr,
            "{\"latency_runs\": %d, \"tokens\": %d, \"p50_ms\": %.4f, \"p99_ms\": %.4f, "
            "\"blas_core\": \"%s\"}\n",
            o->latency, n, percentile(ms, o->latency, 0.5), percentile(ms, o->latency, 0.99),
            openblas_get_corename());
    rc = 0;
out:
    free(ms);
    free(line);
    return rc;
}

int cli_embed(int argc, char **argv)
{
    embed_opts o;
    char model_dir[PATH_MAX];
    int rc = parse_and_locate(argc, argv, &o, model_dir, sizeof model_dir);
    if (rc >= 0)
        return rc;
    cli_set_threads(o.threads);

    emb_err err;
    emb_model *m = emb_model_load_precision(model_dir, (emb_precision)o.precision, &err);
    if (m == NULL) {
        fprintf(stderr, "embedd embed: %s\n", err.msg);
        return 1;
    }
    const int max_len = m->cfg.max_seq_length;
    if (o.batch_tokens < max_len)
        o.batch_tokens = max_len;
    emb_pooling pooling = o.pooling >= 0 ? (emb_pooling)o.pooling : m->cfg.pooling;
    emb_workspace *ws = emb_workspace_new(m, o.batch_tokens, &err);
    batch b = {0};
    b.cap_seqs = o.batch_tokens;   /* every sequence has at least 2 tokens */
    b.ids = malloc(sizeof(int32_t) * (size_t)o.batch_tokens);
    b.lens = malloc(sizeof(int) * (size_t)b.cap_seqs);
    b.out = malloc(sizeof(float) * (size_t)b.cap_seqs * emb_model_dim(m));
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)max_len);
    char *line = NULL;
    size_t line_cap = 0;
    long n_texts = 0, n_tokens = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = 1;
    if (ws == NULL || b.ids == NULL || b.lens == NULL || b.out == NULL || seq == NULL) {
        fprintf(stderr, "embedd embed: out of memory\n");
        goto out;
    }
    if (o.latency > 0) {
        rc = embed_latency(m, ws, &o, pooling, seq, b.out);
        goto out;
    }
    for (long lineno = 1;; lineno++) {
        int n = next_encoded_line(m->tok, max_len, seq, &line, &line_cap, lineno, "embed");
        if (n == -1)
            break;
        if (n < 0)
            goto out;
        if (b.n_tokens + n > o.batch_tokens && flush_batch(m, ws, &b, &o, pooling) != 0)
            goto out;
        memcpy(b.ids + b.n_tokens, seq, sizeof(int32_t) * (size_t)n);
        b.lens[b.n_seqs++] = n;
        b.n_tokens += n;
        n_texts++;
        n_tokens += n;
    }
    if (flush_batch(m, ws, &b, &o, pooling) != 0)
        goto out;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "embedd embed: error writing output\n");
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (o.stats) {
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        fprintf(stderr,
                "{\"texts\": %ld, \"tokens\": %ld, \"seconds\": %.6f, \"texts_per_s\": %.2f, "
                "\"blas_core\": \"%s\"}\n",
                n_texts, n_tokens, secs, secs > 0 ? (double)n_texts / secs : 0.0,
                openblas_get_corename());
    }
    rc = 0;
out:
    free(line);
    free(seq);
    free(b.ids);
    free(b.lens);
    free(b.out);
    emb_workspace_free(ws);
    emb_model_free(m);
    return rc;
}

int cli_tokenize(int argc, char **argv)
{
    embed_opts o;
    char model_dir[PATH_MAX];
    int rc = parse_and_locate(argc, argv, &o, model_dir, sizeof model_dir);
    if (rc >= 0)
        return rc;
    emb_err err;
    emb_config cfg;
    if (emb_config_load(&cfg, model_dir, &err) != 0) {
        fprintf(stderr, "embedd tokenize: %s\n", err.msg);
        return 1;
    }
    emb_tokenizer *tok = emb_tokenizer_load(model_dir, &err);
    if (tok == NULL) {
        fprintf(stderr, "embedd tokenize: %s\n", err.msg);
        return 1;
    }
    emb_tokenizer_set_st_lowercase(tok, cfg.do_lower_case);
    const int max_len = cfg.max_seq_length;
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)max_len);
    char *line = NULL;
    size_t line_cap = 0;
    rc = 1;
    if (seq == NULL)
        goto out;
    for (long lineno = 1;; lineno++) {
        int n = next_encoded_line(tok, max_len, seq, &line, &line_cap, lineno, "tokenize");
        if (n == -1)
            break;
        if (n < 0)
            goto out;
        fputc('[', stdout);
        for (int i = 0; i < n; i++)
            printf(i ? ",%d" : "%d", seq[i]);
        fputs("]\n", stdout);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    free(line);
    free(seq);
    emb_tokenizer_free(tok);
    return rc;
}
