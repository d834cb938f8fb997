/* test_cli.c: `embedd embed`, `embedd tokenize` and `embedd whiten` as a
 * user runs them, checked against the PyTorch reference fixtures (and the
 * whitened model against what whitening promises); `embedd pretrain` on a
 * tiny shape end to end, and `embedd train --objective pairs`. */
#include <check.h>
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bert.h"
#include "run_suite.h"
#include "gemm.h"
#include "testutil.h"
#include "base/dirlock.h"
#include "common/strbuf.h"
#include "store/store_disk.h"
#include "store/wal.h"

#define REF_DIR "tests/fixtures/reference"
#define N_TEXTS 40  /* the first STS-B dev sentences: one line each */
#define C 32

static char tmpdir[256];

static const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

/* Writes the first n reference texts, one per line, to tmpdir/name. */
static void write_texts(const char *name, int n)
{
    size_t size = 0;
    char *buf = tu_read_file(REF_DIR "/texts.bin", &size);
    ck_assert(buf != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *fp = fopen(path, "wb");
    size_t pos = 4;
    for (int i = 0; i < n; i++) {
        uint32_t len;
        memcpy(&len, buf + pos, 4);
        pos += 4;
        ck_assert_msg(memchr(buf + pos, '\n', len) == NULL, "text %d has a newline", i);
        fwrite(buf + pos, 1, len, fp);
        fputc('\n', fp);
        pos += len;
    }
    fclose(fp);
    free(buf);
}

static void write_input(void)
{
    write_texts("in.txt", N_TEXTS);
}

/* Runs `embedd ARGS < in.txt > out.txt 2> err.txt`; returns the exit status. */
static int run(const char *args, const char *input)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s < %s > %s/out.txt 2> %s/err.txt", embedd_bin(), args,
             input, tmpdir, tmpdir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* run() with environment changes first: `env ENV embedd ARGS ...`. */
static int run_env(const char *env, const char *args, const char *input)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "env %s %s %s < %s > %s/out.txt 2> %s/err.txt", env, embedd_bin(),
             args, input, tmpdir, tmpdir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_tmp(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    char *s = tu_read_file(path, NULL);
    ck_assert_msg(s != NULL, "cannot read %s", path);
    return s;
}

static void setup(void)
{
    tu_mkdtemp(tmpdir, sizeof tmpdir);
    ck_assert(tmpdir[0] != '\0');
    write_input();
}

static void teardown(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    tu_run(cmd);
}

/* Compares each output line (a JSON array of dim values) with the
 * reference rows, optionally L2-normalising the reference first. */
static void compare_output(const char *ref_name, int dim, int normalize)
{
    char path[512];
    size_t size = 0;
    snprintf(path, sizeof path, REF_DIR "/%s", ref_name);
    float *ref = (float *)tu_read_file(path, &size);
    ck_assert(ref != NULL);
    char *out = read_tmp("out.txt");
    char *line = out;
    for (int i = 0; i < N_TEXTS; i++) {
        char *nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "only %d output lines", i);
        *nl = '\0';
        cJSON *arr = cJSON_Parse(line);
        ck_assert_msg(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == dim, "line %d: %s", i,
                      line);
        double norm = 0.0;
        for (int c = 0; c < dim; c++)
            norm += (double)ref[i * dim + c] * ref[i * dim + c];
        norm = normalize ? sqrt(norm) : 1.0;
        for (int c = 0; c < dim; c++) {
            double got = cJSON_GetArrayItem(arr, c)->valuedouble;
            double want = ref[i * dim + c] / norm;
            ck_assert_msg(fabs(got - want) <= 1e-4, "text %d dim %d: %g vs %g", i, c, got, want);
        }
        cJSON_Delete(arr);
        line = nl + 1;
    }
    ck_assert_msg(*line == '\0', "extra output after %d lines", N_TEXTS);
    free(out);
    free(ref);
}

START_TEST(test_embed_default)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16", in), 0);
    compare_output("tiny-f16.mean.f32", C, 1);
}
END_TEST

/* A model with Dense modules writes their out_features floats per line. */
START_TEST(test_embed_dense)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-dense", in), 0);
    compare_output("tiny-dense.f32", 16, 0);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-dense --no-normalize "
                         "--batch-tokens 64 --threads 1", in), 0);
    compare_output("tiny-dense.raw.f32", 16, 0);
}
END_TEST

START_TEST(test_embed_cls_raw)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --pooling cls --no-normalize "
                         "--batch-tokens 64 --threads 1",
                         in),
                     0);
    compare_output("tiny-f16.cls.f32", C, 0);
}
END_TEST

START_TEST(test_tokenize)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run("tokenize --model tests/fixtures/tiny-f16", in), 0);
    char *out = read_tmp("out.txt");
    char *ref = tu_read_file(REF_DIR "/tiny-f16.ids.txt", NULL);
    ck_assert(ref != NULL);
    char *o = out, *r = ref;
    for (int i = 0; i < N_TEXTS; i++) {
        char *onl = strchr(o, '\n'), *rnl = strchr(r, '\n');
        ck_assert(onl != NULL && rnl != NULL);
        *onl = '\0';
        *rnl = '\0';
        /* "[101,2023,102]" vs "101 2023 102" */
        char want[8192];
        size_t w = 0;
        want[w++] = '[';
        for (char *p = r; *p != '\0' && w < sizeof want - 2; p++)
            want[w++] = *p == ' ' ? ',' : *p;
        want[w++] = ']';
        want[w] = '\0';
        ck_assert_str_eq(o, want);
        o = onl + 1;
        r = rnl + 1;
    }
    free(out);
    free(ref);
}
END_TEST

START_TEST(test_empty_input)
{
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16", "/dev/null"), 0);
    char *out = read_tmp("out.txt");
    ck_assert_str_eq(out, "");
    free(out);
}
END_TEST

START_TEST(test_missing_model)
{
    ck_assert_int_ne(run("embed --model /nonexistent/model", "/dev/null"), 0);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "/nonexistent/model/config.json") != NULL, "stderr: %s", err);
    free(err);
}
END_TEST

START_TEST(test_bad_flags)
{
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --pooling max", "/dev/null"), 2);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "--pooling") != NULL, "stderr: %s", err);
    free(err);
    /* without --model, the bundled default model (models/embedd-small) */
    ck_assert_int_eq(run("embed", "/dev/null"), 0);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --batch-tokens 0", "/dev/null"), 2);
    ck_assert_int_eq(run("frobnicate", "/dev/null"), 2);
    ck_assert_int_eq(run("embed --help", "/dev/null"), 0);
}
END_TEST

/* --precision int8 on the bundled model: every embedding within cosine
 * 0.999 of fp32's (where the CPU has VNNI; elsewhere a clear error), and an
 * unknown precision is a usage error. */
START_TEST(test_embed_int8)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run("embed --precision int4", in), 2);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "--precision") != NULL, "stderr: %s", err);
    free(err);
    if (!emb_gemm_int8_available()) {
        ck_assert_int_eq(run("embed --precision int8", in), 1);
        err = read_tmp("err.txt");
        ck_assert_msg(strstr(err, "VNNI") != NULL, "stderr: %s", err);
        free(err);
        return;
    }
    ck_assert_int_eq(run("embed --precision fp32", in), 0);
    char *ref = read_tmp("out.txt");
    ck_assert_int_eq(run("embed --precision int8", in), 0);
    char *got = read_tmp("out.txt");
    char *lr = ref, *lg = got;
    int lines = 0;
    for (char *nr, *ng; (nr = strchr(lr, '\n')) != NULL && (ng = strchr(lg, '\n')) != NULL;
         lr = nr + 1, lg = ng + 1) {
        *nr = *ng = '\0';
        cJSON *a = cJSON_Parse(lr), *b = cJSON_Parse(lg);
        ck_assert(cJSON_IsArray(a) && cJSON_IsArray(b));
        const int n = cJSON_GetArraySize(a);
        ck_assert_int_eq(cJSON_GetArraySize(b), n);
        double dot = 0.0, na = 0.0, nb = 0.0, diff = 0.0;
        for (int c = 0; c < n; c++) {
            double x = cJSON_GetArrayItem(a, c)->valuedouble;
            double y = cJSON_GetArrayItem(b, c)->valuedouble;
            dot += x * y;
            na += x * x;
            nb += y * y;
            diff += fabs(x - y);
        }
        const double cosine = dot / sqrt(na * nb);
        ck_assert_msg(cosine >= 0.999, "text %d: cosine %.6f", lines, cosine);
        ck_assert_msg(diff > 0.0, "text %d: int8 output identical to fp32", lines);
        cJSON_Delete(a);
        cJSON_Delete(b);
        lines++;
    }
    ck_assert_int_eq(lines, N_TEXTS);
    free(ref);
    free(got);
}
END_TEST

/* The last line of err.txt, parsed as a JSON object. */
static cJSON *stderr_json(void)
{
    char *err = read_tmp("err.txt");
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == '\n')
        err[--n] = '\0';
    char *last = strrchr(err, '\n');
    cJSON *j = cJSON_Parse(last != NULL ? last + 1 : err);
    ck_assert_msg(cJSON_IsObject(j), "stderr: %s", err);
    free(err);
    return j;
}

static double json_num(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsNumber(v), "no number %s", key);
    return v->valuedouble;
}

static const char *json_str(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsString(v), "no string %s", key);
    return v->valuestring;
}

/* --latency N: the first line's embedding once, and its timings. */
START_TEST(test_embed_latency)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --latency 7 --threads 1", in), 0);
    cJSON *j = stderr_json();
    ck_assert_int_eq((int)json_num(j, "latency_runs"), 7);
    ck_assert_int_gt((int)json_num(j, "tokens"), 2);
    double p50 = json_num(j, "p50_ms"), p99 = json_num(j, "p99_ms");
    ck_assert_msg(p50 > 0 && p50 <= p99, "p50 %g p99 %g", p50, p99);
    ck_assert(json_str(j, "blas_core")[0] != '\0');
    cJSON_Delete(j);

    /* The one output line is the first text's embedding. */
    char *out = read_tmp("out.txt");
    char *nl = strchr(out, '\n');
    ck_assert(nl != NULL && nl[1] == '\0');
    size_t size = 0;
    float *ref = (float *)tu_read_file(REF_DIR "/tiny-f16.mean.f32", &size);
    ck_assert(ref != NULL);
    cJSON *arr = cJSON_Parse(out);
    ck_assert(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == C);
    double norm = 0.0;
    for (int c = 0; c < C; c++)
        norm += (double)ref[c] * ref[c];
    for (int c = 0; c < C; c++) {
        double got = cJSON_GetArrayItem(arr, c)->valuedouble;
        ck_assert_msg(fabs(got - ref[c] / sqrt(norm)) <= 1e-4, "dim %d", c);
    }
    cJSON_Delete(arr);
    free(ref);
    free(out);

    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --latency 0", in), 2);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --latency 3x", in), 2);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --latency 3", "/dev/null"), 1);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "--latency needs one input line") != NULL, "stderr: %s", err);
    free(err);
}
END_TEST

/* ---- whiten --------------------------------------------------------------- */

/* out.txt as n rows of dim values (caller frees). */
static double *read_rows(int n, int dim)
{
    char *out = read_tmp("out.txt");
    double *rows = malloc(sizeof(double) * (size_t)n * (size_t)dim);
    ck_assert(rows != NULL);
    char *line = out;
    for (int i = 0; i < n; i++) {
        char *nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "only %d output lines", i);
        *nl = '\0';
        cJSON *arr = cJSON_Parse(line);
        ck_assert_msg(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == dim,
                      "line %d has %d values, expected %d", i, cJSON_GetArraySize(arr), dim);
        for (int c = 0; c < dim; c++)
            rows[(long)i * dim + c] = cJSON_GetArrayItem(arr, c)->valuedouble;
        cJSON_Delete(arr);
        line = nl + 1;
    }
    ck_assert_msg(*line == '\0', "more than %d output lines", n);
    free(out);
    return rows;
}

/* The largest |mean| and |covariance - I| of rows (n, dim). */
static void whiteness(const double *rows, int n, int dim, double *mean_err, double *cov_err)
{
    double *mean = calloc((size_t)dim, sizeof(double));
    ck_assert(mean != NULL);
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < dim; c++)
            mean[c] += rows[(long)i * dim + c] / n;
    }
    *mean_err = 0.0;
    *cov_err = 0.0;
    for (int a = 0; a < dim; a++) {
        *mean_err = fmax(*mean_err, fabs(mean[a]));
        for (int b = 0; b < dim; b++) {
            double cov = 0.0;
            for (int i = 0; i < n; i++)
                cov += (rows[(long)i * dim + a] - mean[a]) * (rows[(long)i * dim + b] - mean[b]);
            *cov_err = fmax(*cov_err, fabs(cov / (n - 1) - (a == b ? 1.0 : 0.0)));
        }
    }
    free(mean);
}

/* embedd whiten on tiny-f16 and 150 lines: the model written embeds them
 * (before Normalize) with zero mean and identity covariance, in the 31
 * directions its last LayerNorm leaves; embed, then, writes unit vectors of
 * that dimension. */
START_TEST(test_whiten)
{
    enum { LINES = 150 };
    char corpus[512], args[2048];
    write_texts("corpus.txt", LINES);
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    snprintf(args, sizeof args, "whiten --model tests/fixtures/tiny-f16 --corpus %s --out %s/w "
             "--threads 1", corpus, tmpdir);
    ck_assert_int_eq(run(args, "/dev/null"), 0);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "150 texts (of 150 corpus lines), 32 dims -> 31") != NULL &&
                  strstr(err, "1 without variance") != NULL &&
                  strstr(err, "Dense module 2_Dense: 32 -> 31, Identity, bias; Normalize") != NULL,
                  "stderr: %s", err);
    free(err);
    char *dense = read_tmp("w/2_Dense/config.json");
    ck_assert_msg(strstr(dense, "torch.nn.modules.linear.Identity") != NULL, "%s", dense);
    free(dense);
    char *modules = read_tmp("w/modules.json");
    ck_assert_msg(strstr(modules, "3_Normalize") != NULL, "%s", modules);
    free(modules);

    snprintf(args, sizeof args, "embed --model %s/w --no-normalize", tmpdir);
    ck_assert_int_eq(run(args, corpus), 0);
    double *rows = read_rows(LINES, 31);
    double mean_err, cov_err;
    whiteness(rows, LINES, 31, &mean_err, &cov_err);
    ck_assert_msg(mean_err < 1e-3 && cov_err < 1e-3, "whitened corpus: mean %g, covariance %g",
                  mean_err, cov_err);
    free(rows);
    snprintf(args, sizeof args, "embed --model %s/w", tmpdir);
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    ck_assert_int_eq(run(args, in), 0);
    rows = read_rows(N_TEXTS, 31);
    for (int i = 0; i < N_TEXTS; i++) {
        double norm = 0.0;
        for (int c = 0; c < 31; c++)
            norm += rows[(long)i * 31 + c] * rows[(long)i * 31 + c];
        ck_assert_msg(fabs(norm - 1.0) < 1e-4, "text %d: norm^2 %g", i, norm);
    }
    free(rows);
}
END_TEST

/* --dims, --max-texts, a model that has Dense modules already, and the
 * refusals. */
START_TEST(test_whiten_options)
{
    char corpus[512], args[2048];
    write_texts("corpus.txt", 150);
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    snprintf(args, sizeof args, "whiten --model tests/fixtures/tiny-dense --corpus %s,%s --out "
             "%s/w --dims 8 --max-texts 100 --seed 3", corpus, corpus, tmpdir);
    ck_assert_int_eq(run(args, "/dev/null"), 0);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "100 texts (of 300 corpus lines), 16 dims -> 8") != NULL &&
                  strstr(err, "Dense module 4_Dense: 16 -> 8") != NULL, "stderr: %s", err);
    free(err);
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    snprintf(args, sizeof args, "embed --model %s/w", tmpdir);
    ck_assert_int_eq(run(args, in), 0);
    free(read_rows(N_TEXTS, 8));

    static const struct {
        const char *args;
        int status;
        const char *needle;
    } bad[] = {
        {"--dims 33", 2, "--dims 33 is more than the model's 32 dimensions"},
        {"--dims 32", 1, "direction 32 of 32 has no variance"},
        {"--shrink 1", 2, "--shrink must be a number in [0, 1)"},
        {"--max-texts 1", 2, "--max-texts must be an integer in 2.."},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "whiten --model tests/fixtures/tiny-f16 --corpus %s --out "
                 "%s/x %s", corpus, tmpdir, bad[i].args);
        ck_assert_int_eq(run(args, "/dev/null"), bad[i].status);
        err = read_tmp("err.txt");
        ck_assert_msg(strstr(err, bad[i].needle) != NULL, "%s: stderr: %s", bad[i].args, err);
        free(err);
    }
    snprintf(args, sizeof args, "whiten --model tests/fixtures/tiny-f16 --out %s/x", tmpdir);
    ck_assert_int_eq(run(args, "/dev/null"), 2);
    snprintf(args, sizeof args, "whiten --model tests/fixtures/tiny-f16 --corpus /dev/null "
             "--out %s/x", tmpdir);
    ck_assert_int_eq(run(args, "/dev/null"), 1);
    err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "the corpus has 0 non-blank lines") != NULL, "stderr: %s", err);
    free(err);
}
END_TEST

/* ---- embedd pretrain and the pairs objective ---------------------------------- */

/* tmpdir/corpus.txt: the first 300 lines of the shared mixed corpus;
 * tmpdir/pairs.tsv: 16 anchor<TAB>positive pairs. */
static void write_pretrain_data(void)
{
    char src[512], dst[512];
    tu_shared_path(src, sizeof src, "corpus/sample-mixed-2k.txt");
    snprintf(dst, sizeof dst, "%s/corpus.txt", tmpdir);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    ck_assert_msg(in != NULL, "cannot read %s", src);
    ck_assert(out != NULL);
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < 300 && getline(&line, &cap, in) >= 0; i++)
        fputs(line, out);
    free(line);
    fclose(in);
    fclose(out);
    static const char *const pairs[] = {
        "dog\ta domestic animal that barks",          "cat\ta small animal that purrs",
        "river\ta large natural stream of water",     "mountain\ta very high hill",
        "bread\tfood made of flour and baked",        "winter\tthe cold season of the year",
        "teacher\ta person who teaches in a school",  "king\ta man who rules a country",
        "book\twritten pages bound together",         "ship\ta large boat that crosses the sea",
        "rain\twater falling from clouds",            "doctor\ta person who treats the sick",
        "city\ta large town where many people live",  "gold\ta yellow precious metal",
        "song\ta short piece of music with words",    "garden\ta piece of ground for flowers",
    };
    snprintf(dst, sizeof dst, "%s/pairs.tsv", tmpdir);
    out = fopen(dst, "wb");
    ck_assert(out != NULL);
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        fprintf(out, "%s\n", pairs[i]);
    fclose(out);
}

/* `embedd pretrain` with the tiny shape, into tmpdir/<out>, plus extra. */
static int run_pretrain(const char *out, const char *extra)
{
    char vocab[512], args[2048];
    tu_shared_path(vocab, sizeof vocab, "models/all-MiniLM-L6-v2");
    snprintf(args, sizeof args, "pretrain --corpus %s/corpus.txt --vocab %s --out %s/%s "
             "--hidden 32 --heads 2 --intermediate 64 --layers 2 --max-position 64 %s",
             tmpdir, vocab, tmpdir, out, extra);
    return run(args, "/dev/null");
}

static double mtime_of(const char *path)
{
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "%s is missing", path);
    return (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
}

/* `embed` of tmpdir/pt-in.txt (4 lines) with model tmpdir/<dir>/model:
 * unit vectors of 32 floats; returns the rows (caller frees). */
static double *embed_pretrained(const char *dir)
{
    char in[512], args[1024];
    snprintf(in, sizeof in, "%s/pt-in.txt", tmpdir);
    FILE *fp = fopen(in, "wb");
    ck_assert(fp != NULL);
    fputs("dogs chase cats\ncats chase dogs\nthe river runs to the sea\nthe king wrote "
          "a book\n", fp);
    fclose(fp);
    snprintf(args, sizeof args, "embed --model %s/%s/model", tmpdir, dir);
    ck_assert_int_eq(run(args, in), 0);
    double *rows = read_rows(4, 32);
    for (int i = 0; i < 4; i++) {
        double norm = 0.0;
        for (int c = 0; c < 32; c++)
            norm += rows[i * 32 + c] * rows[i * 32 + c];
        ck_assert_msg(fabs(norm - 1.0) < 1e-4, "%s: text %d has norm^2 %g", dir, i, norm);
    }
    return rows;
}

static double row_dot(const double *rows, int a, int b)
{
    double dot = 0.0;
    for (int c = 0; c < 32; c++)
        dot += rows[a * 32 + c] * rows[b * 32 + c];
    return dot;
}

/* pretrain with the bag-of-words start and --pairs: init/ and model/ are
 * written, model/ embeds (a bag of words: word order does not matter);
 * rerunning skips init/; --init random works; --init bogus is a usage
 * error. */
START_TEST(test_pretrain)
{
    write_pretrain_data();
    char extra[1024], path[1024];
    snprintf(extra, sizeof extra, "--pairs %s/pairs.tsv --pairs-epochs 1 --pairs-batch 8",
             tmpdir);
    ck_assert_int_eq(run_pretrain("bow", extra), 0);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "bag of words from") != NULL &&
                  strstr(err, "word vectors: 16 pairs, 1 epochs of batches of 8") != NULL &&
                  strstr(err, "word vectors: epoch 1/1 loss") != NULL &&
                  strstr(err, "initialised 2 layers x 32 hidden") != NULL &&
                  strstr(err, "final model (F16) written") != NULL, "stderr: %s", err);
    free(err);
    emb_err e;
    snprintf(path, sizeof path, "%s/bow/model", tmpdir);
    emb_model *m = emb_model_load(path, &e);
    ck_assert_msg(m != NULL, "%s", e.msg);
    ck_assert_int_eq(m->cfg.hidden_size, 32);
    ck_assert_int_eq(m->cfg.num_hidden_layers, 2);
    ck_assert_int_eq(m->cfg.vocab_size, 30522);
    ck_assert_int_eq(m->cfg.pooling, EMB_POOL_MEAN);
    ck_assert_int_eq(m->cfg.normalize, 1);
    emb_model_free(m);
    double *rows = embed_pretrained("bow");
    ck_assert_msg(row_dot(rows, 0, 1) > 0.999, "word order changed the bag of words: cos %g",
                  row_dot(rows, 0, 1));
    ck_assert_msg(row_dot(rows, 0, 2) < 0.9, "unrelated texts: cos %g", row_dot(rows, 0, 2));
    free(rows);

    /* the same command again: init/ is kept as it is */
    snprintf(path, sizeof path, "%s/bow/init/model.safetensors", tmpdir);
    const double before = mtime_of(path);
    ck_assert_int_eq(run_pretrain("bow", extra), 0);
    err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "initialised") == NULL && strstr(err, "bag of words") == NULL &&
                  strstr(err, "final model (F16) written") != NULL, "rerun: stderr: %s", err);
    free(err);
    ck_assert(mtime_of(path) == before);

    ck_assert_int_eq(run_pretrain("random", "--init random"), 0);
    err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "random start") != NULL && strstr(err, "bag of words") == NULL,
                  "stderr: %s", err);
    free(err);
    free(embed_pretrained("random"));

    ck_assert_int_eq(run_pretrain("bogus", "--init bogus"), 2);
    err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "--init must be bow or random") != NULL, "stderr: %s", err);
    free(err);
    snprintf(path, sizeof path, "%s/bogus/init", tmpdir);
    struct stat st;
    ck_assert(stat(path, &st) != 0);
}
END_TEST

/* `embedd train --objective pairs` on anchor<TAB>positive lines, without
 * dropout and with only the word embeddings learning (--min-tokens 2: the
 * anchors are single words, [CLS] word [SEP], which the default 4 would
 * skip on both sides of a pair): the checkpoint
 * differs from the start in the word embeddings only. Bad values of the
 * new flags are usage errors; a corpus without pairs is an error. */
START_TEST(test_train_pairs)
{
    write_pretrain_data();
    char args[2048];
    snprintf(args, sizeof args, "train --model tests/fixtures/tiny-f16 --corpus %s/pairs.tsv "
             "--objective pairs --out %s/tp --steps 3 --batch-size 4 --max-seq-len 16 "
             "--dropout 0 --train-only word-embeddings --lr 1e-3 --threads 1 --min-tokens 2",
             tmpdir, tmpdir);
    ck_assert_int_eq(run(args, "/dev/null"), 0);
    char *err = read_tmp("err.txt");
    ck_assert_msg(strstr(err, "3 steps done, 0 skipped") != NULL, "stderr: %s", err);
    free(err);
    emb_err e;
    char path[600];
    snprintf(path, sizeof path, "%s/tp", tmpdir);
    emb_model *a = emb_model_load("tests/fixtures/tiny-f16", &e);
    emb_model *b = emb_model_load(path, &e);
    ck_assert_msg(a != NULL && b != NULL, "%s", e.msg);
    ck_assert_uint_eq(a->n_params, b->n_params);
    const size_t n_wte = (size_t)a->cfg.vocab_size * (size_t)a->cfg.hidden_size;
    ck_assert_msg(memcmp(a->params, b->params, sizeof(float) * n_wte) != 0,
                  "the word embeddings did not change");
    ck_assert_msg(memcmp(a->params + n_wte, b->params + n_wte,
                         sizeof(float) * (a->n_params - n_wte)) == 0,
                  "--train-only word-embeddings changed other weights");
    emb_model_free(a);
    emb_model_free(b);

    char pairs[600];
    snprintf(pairs, sizeof pairs, "%s/pairs.tsv", tmpdir);
    static const struct {
        int own_corpus;  /* 0: pairs.tsv, 1: a file without a TAB */
        const char *flags;
        int status;
        const char *needle;
    } bad[] = {
        {0, "--train-only bogus", 2, "--train-only must be all or word-embeddings"},
        {0, "--dropout 2", 2, "dropout"},
        {1, "--min-tokens 2", 1, "no anchor<TAB>positive pairs"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "train --model tests/fixtures/tiny-f16 --objective pairs "
                 "--corpus %s --out %s/bad --steps 1 --batch-size 4 %s",
                 bad[i].own_corpus ? "tests/fixtures/wordinit/vocab.txt" : pairs, tmpdir,
                 bad[i].flags);
        ck_assert_int_eq(run(args, "/dev/null"), bad[i].status);
        err = read_tmp("err.txt");
        ck_assert_msg(strstr(err, bad[i].needle) != NULL, "%s: stderr: %s", bad[i].flags, err);
        free(err);
    }
}
END_TEST

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

/* The BLAS kernel (main.c): the user's OPENBLAS_CORETYPE is honoured; unset,
 * an AVX-512 CPU gets an AVX-512 kernel. --stats reports the kernel. */
START_TEST(test_blas_kernel)
{
    char in[512];
    snprintf(in, sizeof in, "%s/in.txt", tmpdir);
    const char *args = "embed --model tests/fixtures/tiny-f16 --stats --threads 1";
    ck_assert_int_eq(run_env("OPENBLAS_CORETYPE=Haswell", args, in), 0);
    cJSON *j = stderr_json();
    ck_assert_str_eq(json_str(j, "blas_core"), "Haswell");
    cJSON_Delete(j);
    compare_output("tiny-f16.mean.f32", C, 1);

    ck_assert_int_eq(run_env("-u OPENBLAS_CORETYPE -u EMBEDD_BLAS_REEXEC", args, in), 0);
    j = stderr_json();
    const char *core = json_str(j, "blas_core");
    if (cpu_has_avx512())
        ck_assert_msg(strcmp(core, "SkylakeX") == 0 || strcmp(core, "Cooperlake") == 0 ||
                          strcmp(core, "SapphireRapids") == 0,
                      "AVX-512 CPU, kernel %s", core);
    cJSON_Delete(j);
    compare_output("tiny-f16.mean.f32", C, 1);
}
END_TEST

/* ---- repair ----------------------------------------------------------------- */

static int collect_payload(void *user, uint64_t seq, const unsigned char *payload, size_t len,
                           emb_err *err)
{
    int *n = user;
    ck_assert_uint_eq(seq, (uint64_t)(*n + 1));
    (*n)++;
    return 0;
}

/* A WAL of 6 records with one flipped byte in record 3: the open refuses;
 * `embedd repair` keeps the other 5 and the damaged file; while a store
 * holds the directory it refuses to touch it. */
START_TEST(test_repair)
{
    char data[512];
    snprintf(data, sizeof data, "%s/data", tmpdir);
    ck_assert(mkdir(data, 0755) == 0);
    int dfd = open(data, O_RDONLY | O_DIRECTORY);
    emb_err err;
    wal_recovery rec;
    int n = 0;
    wal *w = wal_open(data, dfd, 8, 0, collect_payload, &n, &rec, &err);
    ck_assert_msg(w != NULL, "%s", err.msg);
    for (int i = 0; i < 6; i++) {
        /* real store records (repair drops what replay would refuse):
         * deletes of one id each, all of the same size */
        char name[32];
        snprintf(name, sizeof name, "record %d, and some bytes", i + 1);
        store_id id = store_id_str(name);
        strbuf payload;
        sb_init(&payload, 1 << 20);
        store_encode_delete(&payload, &id, 1);
        uint64_t seq;
        ck_assert(wal_append(w, payload.buf, payload.len, &seq, &err) == 0);
        ck_assert(wal_sync(w, seq, &err) == 0);
        sb_free(&payload);
    }
    wal_close(w);
    char path[600];
    snprintf(path, sizeof path, "%s/wal", data);
    size_t size = 0;
    char *buf = tu_read_file(path, &size);
    const size_t rec_size = (size - WAL_HEADER_SIZE) / 6;
    buf[WAL_HEADER_SIZE + 2 * rec_size + 20] ^= 0x40;
    ck_assert(tu_write_file(path, buf, size) == 0);
    free(buf);
    n = 0;
    ck_assert(wal_open(data, dfd, 8, 0, collect_payload, &n, &rec, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);

    /* a running store holds the directory's lock: repair leaves it alone */
    char args[700];
    snprintf(args, sizeof args, "repair --data %s", data);
    int lock = emb_dirlock_take(dfd, data, "lock", "store", &err);
    ck_assert_int_ge(lock, 0);
    ck_assert_int_eq(run(args, "/dev/null"), 1);
    char *e = read_tmp("err.txt");
    ck_assert_msg(strstr(e, "stop the server first") != NULL, "%s", e);
    free(e);
    emb_dirlock_release(lock);

    ck_assert_int_eq(run(args, "/dev/null"), 0);
    char *out = read_tmp("out.txt");
    ck_assert_msg(strstr(out, "kept 5 records") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "wal.damaged-") != NULL, "%s", out);
    free(out);
    n = 0;
    w = wal_open(data, dfd, 8, 0, collect_payload, &n, &rec, &err);
    ck_assert_msg(w != NULL, "%s", err.msg);
    ck_assert_int_eq(n, 5);
    wal_close(w);
    /* a second run finds everything whole */
    ck_assert_int_eq(run(args, "/dev/null"), 0);
    out = read_tmp("out.txt");
    ck_assert_msg(strstr(out, "verifies") != NULL, "%s", out);
    free(out);
    close(dfd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_embed_default);
    tcase_add_test(tc, test_embed_dense);
    tcase_add_test(tc, test_embed_cls_raw);
    tcase_add_test(tc, test_tokenize);
    tcase_add_test(tc, test_empty_input);
    tcase_add_test(tc, test_missing_model);
    tcase_add_test(tc, test_bad_flags);
    tcase_add_test(tc, test_embed_int8);
    tcase_add_test(tc, test_embed_latency);
    tcase_add_test(tc, test_whiten);
    tcase_add_test(tc, test_whiten_options);
    tcase_add_test(tc, test_pretrain);
    tcase_add_test(tc, test_train_pairs);
    tcase_add_test(tc, test_blas_kernel);
    tcase_add_test(tc, test_repair);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
