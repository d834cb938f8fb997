/* test_encoder.c: the encoder against the PyTorch reference
 * (scripts/gen_reference.py -> tests/fixtures/reference), with and without
 * sentence-transformers Dense modules, batch independence, and broken
 * model directories. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "run_suite.h"
#include "bert.h"
#include "safetensors.h"
#include "testutil.h"

#define REF_DIR "tests/fixtures/reference"
#define TOL 1e-4

typedef struct texts {
    int n;
    char **text;
    size_t *len;
} texts;

static texts load_texts(void)
{
    texts t = {0};
    size_t size = 0;
    char *buf = tu_read_file(REF_DIR "/texts.bin", &size);
    ck_assert_msg(buf != NULL, "cannot read " REF_DIR "/texts.bin");
    uint32_t n;
    memcpy(&n, buf, 4);
    t.n = (int)n;
    t.text = calloc(n, sizeof(char *));
    t.len = calloc(n, sizeof(size_t));
    size_t pos = 4;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len;
        ck_assert(pos + 4 <= size);
        memcpy(&len, buf + pos, 4);
        pos += 4;
        ck_assert(pos + len <= size);
        t.text[i] = malloc(len + 1);
        memcpy(t.text[i], buf + pos, len);
        t.text[i][len] = '\0';
        t.len[i] = len;
        pos += len;
    }
    free(buf);
    return t;
}

static void free_texts(texts *t)
{
    for (int i = 0; i < t->n; i++)
        free(t->text[i]);
    free(t->text);
    free(t->len);
}

static float *load_f32(const char *fixture, const char *what, size_t want_floats)
{
    char path[512];
    size_t size = 0;
    snprintf(path, sizeof path, REF_DIR "/%s.%s.f32", fixture, what);
    float *v = (float *)tu_read_file(path, &size);
    ck_assert_msg(v != NULL, "cannot read %s", path);
    ck_assert_msg(size == want_floats * 4, "%s: %zu bytes, expected %zu", path, size,
                  want_floats * 4);
    return v;
}

/* Tokenises every text; returns the ids back to back and fills lens. */
static int32_t *encode_all(const emb_model *m, const texts *t, int *lens)
{
    const int max_len = m->cfg.max_seq_length;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)t->n * max_len);
    long total = 0;
    for (int i = 0; i < t->n; i++) {
        lens[i] = emb_encode(m->tok, t->text[i], t->len[i], max_len, 0, ids + total, NULL);
        ck_assert_int_ge(lens[i], 2);
        total += lens[i];
    }
    return ids;
}

static void check_ids(const char *fixture, const int32_t *ids, const int *lens, int n)
{
    char path[512];
    snprintf(path, sizeof path, REF_DIR "/%s.ids.txt", fixture);
    char *text = tu_read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    char *line = text;
    long off = 0;
    for (int i = 0; i < n; i++) {
        char *next = strchr(line, '\n');
        ck_assert_msg(next != NULL, "%s: too few lines", path);
        *next = '\0';
        char *p = line;
        int k = 0;
        while (*p != '\0') {
            char *end;
            long id = strtol(p, &end, 10);
            if (end == p)
                break;
            ck_assert_msg(k < lens[i] && ids[off + k] == id,
                          "%s text %d: token %d is %d, reference says %ld", fixture, i, k,
                          k < lens[i] ? ids[off + k] : -1, id);
            k++;
            p = end;
        }
        ck_assert_msg(k == lens[i], "%s text %d: %d tokens, reference has %d", fixture, i,
                      lens[i], k);
        off += lens[i];
        line = next + 1;
    }
    free(text);
}

static double max_abs_diff(const float *a, const float *b, int n)
{
    double m = 0.0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* Embeds the texts in chunks of `chunk` sequences and compares with ref. */
static double embed_and_compare(const emb_model *m, emb_workspace *ws, const int32_t *ids,
                                const int *lens, int n, int chunk, emb_pooling pooling,
                                const float *ref, int *worst)
{
    const int C = m->cfg.hidden_size;
    float *out = malloc(sizeof(float) * (size_t)n * C);
    emb_err err;
    long off = 0;
    for (int s = 0; s < n; s += chunk) {
        int k = n - s < chunk ? n - s : chunk;
        int ok = emb_embed_ids(m, ws, ids + off, lens + s, k, pooling, 0, out + (long)s * C, &err);
        ck_assert_msg(ok == 0, "embed failed: %s", err.msg);
        for (int j = 0; j < k; j++)
            off += lens[s + j];
    }
    double worst_diff = 0.0;
    for (int i = 0; i < n; i++) {
        double d = max_abs_diff(out + (long)i * C, ref + (long)i * C, C);
        if (d > worst_diff) {
            worst_diff = d;
            *worst = i;
        }
    }
    free(out);
    return worst_diff;
}

static void check_fixture(const char *fixture)
{
    char dir[256];
    emb_err err;
    snprintf(dir, sizeof dir, "tests/fixtures/%s", fixture);
    emb_model *m = emb_model_load(dir, &err);
    ck_assert_msg(m != NULL, "load %s: %s", dir, err.msg);
    texts t = load_texts();
    ck_assert_int_ge(t.n, 200);
    const int C = m->cfg.hidden_size;
    int *lens = malloc(sizeof(int) * t.n);
    int32_t *ids = encode_all(m, &t, lens);
    check_ids(fixture, ids, lens, t.n);

    float *ref_mean = load_f32(fixture, "mean", (size_t)t.n * C);
    float *ref_cls = load_f32(fixture, "cls", (size_t)t.n * C);
    emb_workspace *ws = emb_workspace_new(m, 1 << 16, &err);
    ck_assert(ws != NULL);
    const int chunks[] = {1, 7, 1000};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        int worst = -1;
        double d = embed_and_compare(m, ws, ids, lens, t.n, chunks[c], EMB_POOL_MEAN, ref_mean,
                                     &worst);
        printf("%s mean pooling, batches of %d: max |diff| %.3g (text %d)\n", fixture, chunks[c],
               d, worst);
        ck_assert_msg(d <= TOL, "%s mean, chunk %d: max |diff| %g at text %d", fixture, chunks[c],
                      d, worst);
        d = embed_and_compare(m, ws, ids, lens, t.n, chunks[c], EMB_POOL_CLS, ref_cls, &worst);
        printf("%s cls pooling, batches of %d: max |diff| %.3g (text %d)\n", fixture, chunks[c], d,
               worst);
        ck_assert_msg(d <= TOL, "%s cls, chunk %d: max |diff| %g at text %d", fixture, chunks[c],
                      d, worst);
    }
    emb_workspace_free(ws);
    free(ref_mean);
    free(ref_cls);
    free(ids);
    free(lens);
    free_texts(&t);
    emb_model_free(m);
}

START_TEST(test_reference_f16)
{
    check_fixture("tiny-f16");
}
END_TEST

START_TEST(test_reference_bf16)
{
    check_fixture("tiny-bf16");
}
END_TEST

/* tiny-dense: tiny-f16's encoder, mean pooling, Dense 32 -> 24 (Tanh,
 * bias, F32), Dense 24 -> 16 (Identity, no bias, F16), Normalize; against
 * torch's nn.Linear + activation, before and after Normalize, to 1e-5. */
START_TEST(test_reference_dense)
{
    emb_err err;
    emb_model *m = emb_model_load("tests/fixtures/tiny-dense", &err);
    ck_assert_msg(m != NULL, "load tiny-dense: %s", err.msg);
    ck_assert_int_eq(m->cfg.n_dense, 2);
    ck_assert_int_eq(emb_model_dim(m), 16);
    ck_assert_int_eq(m->cfg.normalize, 1);
    const int D = emb_model_dim(m);
    texts t = load_texts();
    int *lens = malloc(sizeof(int) * t.n);
    int32_t *ids = encode_all(m, &t, lens);
    check_ids("tiny-f16", ids, lens, t.n);
    float *raw = load_f32("tiny-dense", "raw", (size_t)t.n * D);
    char path[256];
    size_t size = 0;
    snprintf(path, sizeof path, REF_DIR "/tiny-dense.f32");
    float *served = (float *)tu_read_file(path, &size);
    ck_assert_msg(served != NULL && size == (size_t)t.n * D * 4, "cannot read %s", path);
    emb_workspace *ws = emb_workspace_new(m, 1 << 16, &err);
    ck_assert(ws != NULL);
    float *out = malloc(sizeof(float) * (size_t)t.n * D);
    const int chunks[] = {1, 7, 1000};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        for (int normalize = 0; normalize <= 1; normalize++) {
            long off = 0;
            for (int s = 0; s < t.n; s += chunks[c]) {
                int k = t.n - s < chunks[c] ? t.n - s : chunks[c];
                ck_assert_msg(emb_embed_ids(m, ws, ids + off, lens + s, k, m->cfg.pooling,
                                            normalize, out + (long)s * D, &err) == 0,
                              "%s", err.msg);
                for (int j = 0; j < k; j++)
                    off += lens[s + j];
            }
            double d = max_abs_diff(out, normalize ? served : raw, t.n * D);
            printf("tiny-dense %s, batches of %d: max |diff| %.3g\n",
                   normalize ? "normalised" : "raw", chunks[c], d);
            ck_assert_msg(d <= 1e-5, "tiny-dense %s, chunk %d: max |diff| %g",
                          normalize ? "normalised" : "raw", chunks[c], d);
        }
    }
    free(out);
    emb_workspace_free(ws);
    free(raw);
    free(served);
    free(ids);
    free(lens);
    free_texts(&t);
    emb_model_free(m);
}
END_TEST

/* A text's vector does not depend on its batch neighbours. */
START_TEST(test_batch_independence)
{
    emb_err err;
    emb_model *m = emb_model_load("tests/fixtures/tiny-f16", &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    texts t = load_texts();
    const int C = m->cfg.hidden_size;
    int *lens = malloc(sizeof(int) * t.n);
    int32_t *ids = encode_all(m, &t, lens);
    emb_workspace *ws = emb_workspace_new(m, 1 << 16, &err);
    float *alone = malloc(sizeof(float) * (size_t)t.n * C);
    float *together = malloc(sizeof(float) * (size_t)t.n * C);
    long off = 0;
    for (int i = 0; i < t.n; i++) {
        ck_assert(emb_embed_ids(m, ws, ids + off, lens + i, 1, EMB_POOL_MEAN, 1,
                                alone + (long)i * C, &err) == 0);
        off += lens[i];
    }
    ck_assert(emb_embed_ids(m, ws, ids, lens, t.n, EMB_POOL_MEAN, 1, together, &err) == 0);
    double d = max_abs_diff(alone, together, t.n * C);
    printf("batch independence: max |diff| %.3g\n", d);
    ck_assert_msg(d <= 1e-5, "alone vs batched differ by %g", d);
    free(alone);
    free(together);
    free(ids);
    free(lens);
    emb_workspace_free(ws);
    free_texts(&t);
    emb_model_free(m);
}
END_TEST

/* ---- broken model directories ---------------------------------------- */

static void copy_fixture(char *dir, size_t cap)
{
    char cmd[1024];
    tu_mkdtemp(dir, cap);
    ck_assert(dir[0] != '\0');
    snprintf(cmd, sizeof cmd, "cp -r tests/fixtures/tiny-f16/. %s/", dir);
    ck_assert(tu_run(cmd) == 0);
}

static void remove_dir(const char *dir)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
}

static void expect_load_error(const char *dir, const char *needle)
{
    emb_err err = {0};
    emb_model *m = emb_model_load(dir, &err);
    ck_assert_msg(m == NULL, "broken model in %s loaded", dir);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error '%s' does not mention '%s'", err.msg,
                  needle);
}

/* Broken copies of the fixture: a shell command run in the copy, and what
 * the load error must mention. */
static const struct {
    const char *what;
    const char *command;
    const char *needle;
} broken_dirs[] = {
    {"missing config", "rm config.json", "config.json"},
    {"missing weights", "rm model.safetensors", "model.safetensors"},
    /* config.json says 3 layers, the weights have 2: the missing tensor is named */
    {"missing tensor",
     "sed -i 's/\"num_hidden_layers\": *2/\"num_hidden_layers\": 3/' config.json",
     "encoder.layer.2.attention.self.query.weight"},
    /* config.json says 1 layer, the weights have 2 */
    {"extra layer",
     "sed -i 's/\"num_hidden_layers\": *2/\"num_hidden_layers\": 1/' config.json",
     "num_hidden_layers"},
    /* wrong FFN size: the mis-shaped tensor is named */
    {"wrong shape",
     "sed -i 's/\"intermediate_size\": *64/\"intermediate_size\": 48/' config.json",
     "encoder.layer.0.intermediate.dense.weight"},
};

START_TEST(test_broken_dir)
{
    char dir[256], cmd[1024];
    copy_fixture(dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "cd %s && %s", dir, broken_dirs[_i].command);
    ck_assert_msg(tu_run(cmd) == 0, "%s: %s failed", broken_dirs[_i].what, cmd);
    expect_load_error(dir, broken_dirs[_i].needle);
    remove_dir(dir);
}
END_TEST

/* Broken copies of tiny-dense (symlinks resolved), as broken_dirs. */
static const struct {
    const char *what;
    const char *command;
    const char *needle;
} broken_dense[] = {
    {"Dense weights only as pytorch_model.bin",
     "mv 2_Dense/model.safetensors 2_Dense/pytorch_model.bin",
     "2_Dense/pytorch_model.bin: the Dense module's weights are only in pytorch_model.bin, a "
     "format embedd does not read; re-save the model with safetensors"},
    {"Dense weights missing", "rm 3_Dense/model.safetensors",
     "3_Dense/model.safetensors: not found (the weights of Dense module 1)"},
    {"Dense weight of the wrong shape",
     "sed -i 's/\"out_features\": 24/\"out_features\": 20/' 2_Dense/config.json && "
     "sed -i 's/\"in_features\": 24/\"in_features\": 20/' 3_Dense/config.json",
     "2_Dense/model.safetensors: tensor 'linear.weight' has shape [24, 32], expected [20, 32]"},
    {"Dense in_features not the previous output",
     "sed -i 's/\"in_features\": 24/\"in_features\": 20/' 3_Dense/config.json",
     "3_Dense/config.json: in_features 20 does not match the output dimension 24"},
    {"Dense bias missing", "sed -i 's/\"bias\": false/\"bias\": true/' 3_Dense/config.json",
     "3_Dense/model.safetensors: missing tensor 'linear.bias'"},
    {"Dense bias the config does not list",
     "sed -i 's/\"bias\": true/\"bias\": false/' 2_Dense/config.json",
     "2_Dense/model.safetensors: unexpected tensor 'linear.bias'"},
    {"unknown module type",
     "sed -i 's/sentence_transformers.models.Dense/sentence_transformers.models.CNN/' "
     "modules.json",
     "module 3 (path \"3_Dense\") type \"sentence_transformers.models.CNN\" is not supported"},
};

START_TEST(test_broken_dense)
{
    char dir[256], cmd[1024];
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
    snprintf(cmd, sizeof cmd, "cp -rL tests/fixtures/tiny-dense/. %s/ && cd %s && %s", dir, dir,
             broken_dense[_i].command);
    ck_assert_msg(tu_run(cmd) == 0, "%s: %s failed", broken_dense[_i].what, cmd);
    expect_load_error(dir, broken_dense[_i].needle);
    remove_dir(dir);
}
END_TEST

START_TEST(test_truncated_weights)
{
    char dir[256], path[512];
    copy_fixture(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t size = 0;
    char *buf = tu_read_file(path, &size);
    ck_assert(buf != NULL);
    ck_assert(tu_write_file(path, buf, size - 1000) == 0);
    free(buf);
    emb_err err = {0};
    ck_assert(emb_model_load(dir, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "model.safetensors") != NULL, "error: %s", err.msg);
    remove_dir(dir);
}
END_TEST

/* A dtype the reader does not know, patched into the header. */
START_TEST(test_unknown_dtype)
{
    char dir[256], path[512];
    copy_fixture(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t size = 0;
    char *buf = tu_read_file(path, &size);
    ck_assert(buf != NULL);
    char *hit = strstr(buf + 8, "\"F16\"");
    ck_assert(hit != NULL);
    memcpy(hit, "\"Q4X\"", 5);
    ck_assert(tu_write_file(path, buf, size) == 0);
    free(buf);
    expect_load_error(dir, "Q4X");
    remove_dir(dir);
}
END_TEST

/* The same weights split over two shards with an index file. */
START_TEST(test_sharded_weights)
{
    char dir[256], path[512], shard[512];
    emb_err err;
    copy_fixture(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    emb_st_file f;
    ck_assert_msg(emb_st_open(&f, path, &err) == 0, "%s", err.msg);
    int n = f.n_tensors;
    emb_st_entry *e = calloc((size_t)n, sizeof *e);
    float **data = calloc((size_t)n, sizeof *data);
    for (int i = 0; i < n; i++) {
        const emb_st_tensor *t = &f.tensors[i];
        data[i] = malloc(sizeof(float) * (size_t)(emb_st_numel(t) + 1));
        ck_assert(emb_st_read_f32(&f, t, data[i], &err) == 0);
        e[i].name = t->name;
        e[i].dtype = EMB_DT_F32;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        e[i].data = data[i];
    }
    int half = n / 2;
    snprintf(shard, sizeof shard, "%s/model-00001-of-00002.safetensors", dir);
    ck_assert_msg(emb_st_write(shard, e, half, NULL, &err) == 0, "%s", err.msg);
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
    ck_assert_msg(emb_st_write(shard, e + half, n - half, NULL, &err) == 0, "%s", err.msg);
    /* index json */
    char *index = malloc(1 << 20);
    size_t used = (size_t)snprintf(index, 1 << 20, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < n; i++)
        used += (size_t)snprintf(index + used, (1 << 20) - used, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                                 i ? ", " : "", e[i].name, i < half ? 1 : 2);
    used += (size_t)snprintf(index + used, (1 << 20) - used, "}}");
    snprintf(shard, sizeof shard, "%s/model.safetensors.index.json", dir);
    ck_assert(tu_write_file(shard, index, used) == 0);
    emb_model *whole = emb_model_load(dir, &err);
    ck_assert_msg(whole != NULL, "%s", err.msg);
    ck_assert(remove(path) == 0);
    emb_model *sharded = emb_model_load(dir, &err);
    ck_assert_msg(sharded != NULL, "sharded load: %s", err.msg);
    ck_assert_int_eq(whole->n_params, sharded->n_params);
    ck_assert(memcmp(whole->params, sharded->params, whole->n_params * sizeof(float)) == 0);
    emb_model_free(whole);
    emb_model_free(sharded);
    for (int i = 0; i < n; i++)
        free(data[i]);
    free(data);
    free(e);
    free(index);
    emb_st_close(&f);
    remove_dir(dir);
}
END_TEST

static Suite *encoder_suite(void)
{
    Suite *s = suite_create("encoder");
    TCase *ref = tcase_create("reference");
    tcase_set_timeout(ref, 120);
    tcase_add_test(ref, test_reference_f16);
    tcase_add_test(ref, test_reference_bf16);
    tcase_add_test(ref, test_reference_dense);
    tcase_add_test(ref, test_batch_independence);
    suite_add_tcase(s, ref);
    TCase *broken = tcase_create("broken");
    tcase_add_loop_test(broken, test_broken_dir, 0,
                        (int)(sizeof broken_dirs / sizeof broken_dirs[0]));
    tcase_add_loop_test(broken, test_broken_dense, 0,
                        (int)(sizeof broken_dense / sizeof broken_dense[0]));
    tcase_add_test(broken, test_truncated_weights);
    tcase_add_test(broken, test_unknown_dtype);
    tcase_add_test(broken, test_sharded_weights);
    suite_add_tcase(s, broken);
    return s;
}

int main(void)
{
    return run_suite(encoder_suite());
}
