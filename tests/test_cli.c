/* test_cli.c: `embedd embed` and `embedd tokenize` as a user runs them,
 * checked against the PyTorch reference fixtures. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "run_suite.h"
#include "testutil.h"

#define REF_DIR "tests/fixtures/reference"
#define N_TEXTS 40  /* the first STS-B dev sentences: one line each */
#define C 32

static char tmpdir[256];

static const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

/* Writes the first N_TEXTS reference texts, one per line, to tmpdir/in.txt. */
static void write_input(void)
{
    size_t size = 0;
    char *buf = tu_read_file(REF_DIR "/texts.bin", &size);
    ck_assert(buf != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/in.txt", tmpdir);
    FILE *fp = fopen(path, "wb");
    size_t pos = 4;
    for (int i = 0; i < N_TEXTS; i++) {
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

/* Runs `embedd ARGS < in.txt > out.txt 2> err.txt`; returns the exit status. */
static int run(const char *args, const char *input)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s < %s > %s/out.txt 2> %s/err.txt", embedd_bin(), args,
             input, tmpdir, tmpdir);
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

/* Compares each output line (a JSON array) with the reference rows,
 * optionally L2-normalising the reference first. */
static void compare_output(const char *ref_name, int normalize)
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
        ck_assert_msg(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == C, "line %d: %s", i, line);
        double norm = 0.0;
        for (int c = 0; c < C; c++)
            norm += (double)ref[i * C + c] * ref[i * C + c];
        norm = normalize ? sqrt(norm) : 1.0;
        for (int c = 0; c < C; c++) {
            double got = cJSON_GetArrayItem(arr, c)->valuedouble;
            double want = ref[i * C + c] / norm;
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
    compare_output("tiny-f16.mean.f32", 1);
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
    compare_output("tiny-f16.cls.f32", 0);
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
    ck_assert_int_eq(run("embed", "/dev/null"), 2);
    ck_assert_int_eq(run("embed --model tests/fixtures/tiny-f16 --batch-tokens 0", "/dev/null"), 2);
    ck_assert_int_eq(run("frobnicate", "/dev/null"), 2);
    ck_assert_int_eq(run("embed --help", "/dev/null"), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_embed_default);
    tcase_add_test(tc, test_embed_cls_raw);
    tcase_add_test(tc, test_tokenize);
    tcase_add_test(tc, test_empty_input);
    tcase_add_test(tc, test_missing_model);
    tcase_add_test(tc, test_bad_flags);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
