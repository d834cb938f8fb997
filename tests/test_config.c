/* test_config.c: emb_config_load on the real model folders of the shared
 * data set, on broken folders built in a temporary directory, and the
 * save/load round trip. */
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "run_suite.h"
#include "config.h"

/* ---- helpers ----------------------------------------------------------- */

static const char *shared_data(void)
{
    const char *d = getenv("EMBEDD_SHARED_DATA");
    if (d == NULL || d[0] == '\0')
        d = "../shared/data"; /* the Makefile's default, from the checkout */
    return d;
}

static void model_dir(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/models/%s", shared_data(), name);
}

static void tmpdir_make(char *dir, size_t size)
{
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(dir, size, "%s/test_config.XXXXXX", base);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s failed", dir);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void tmpdir_remove(const char *dir)
{
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes text to dir/name, creating one level of sub-folder if needed. */
static void put(const char *dir, const char *name, const char *text)
{
    char path[1024];
    const char *slash = strchr(name, '/');
    if (slash != NULL) {
        snprintf(path, sizeof path, "%s/%.*s", dir, (int)(slash - name), name);
        mkdir(path, 0755);
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "w");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    fputs(text, fp);
    ck_assert_int_eq(fclose(fp), 0);
}

static int exists(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* A minimal valid BERT config; %s lets a case add or override keys. */
#define BERT_CONFIG                                                                       \
    "{\"vocab_size\": 1000, \"hidden_size\": 64, \"num_hidden_layers\": 2,"               \
    " \"num_attention_heads\": 4, \"intermediate_size\": 256%s}"

static void put_bert(const char *dir, const char *extra)
{
    char text[2048];
    snprintf(text, sizeof text, BERT_CONFIG, extra);
    put(dir, "config.json", text);
}

static const char *modules_mean_norm =
    "[{\"idx\":0,\"name\":\"0\",\"path\":\"\",\"type\":\"sentence_transformers.models."
    "Transformer\"},"
    " {\"idx\":1,\"name\":\"1\",\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models."
    "Pooling\"},"
    " {\"idx\":2,\"name\":\"2\",\"path\":\"2_Normalize\",\"type\":\"sentence_transformers.models."
    "Normalize\"}]";

/* ---- real models -------------------------------------------------------- */

static void load_real(emb_config *cfg, const char *name)
{
    char dir[1024];
    emb_err err = {0};
    model_dir(dir, sizeof dir, name);
    int rc = emb_config_load(cfg, dir, &err);
    ck_assert_msg(rc == 0, "%s: %s", name, err.msg);
}

static void assert_small_bert(const emb_config *c, int layers)
{
    ck_assert_str_eq(c->model_type, "bert");
    ck_assert_int_eq(c->vocab_size, 30522);
    ck_assert_int_eq(c->hidden_size, 384);
    ck_assert_int_eq(c->num_hidden_layers, layers);
    ck_assert_int_eq(c->num_attention_heads, 12);
    ck_assert_int_eq(c->intermediate_size, 1536);
    ck_assert_int_eq(c->max_position_embeddings, 512);
    ck_assert_int_eq(c->type_vocab_size, 2);
    ck_assert_int_eq(c->pad_token_id, 0);
    ck_assert_float_eq(c->layer_norm_eps, 1e-12f);
    ck_assert_float_eq(c->hidden_dropout_prob, 0.1f);
    ck_assert_float_eq(c->attention_probs_dropout_prob, 0.1f);
    ck_assert_str_eq(c->hidden_act, "gelu");
}

START_TEST(test_minilm)
{
    emb_config c;
    load_real(&c, "all-MiniLM-L6-v2");
    assert_small_bert(&c, 6);
    ck_assert_int_eq(c.has_modules_json, 1);
    ck_assert_int_eq(c.pooling, EMB_POOL_MEAN);
    ck_assert_int_eq(c.normalize, 1);
    ck_assert_int_eq(c.max_seq_length, 256);
    ck_assert_int_eq(c.do_lower_case, 0);
}
END_TEST

START_TEST(test_bge)
{
    emb_config c;
    load_real(&c, "bge-small-en-v1.5");
    assert_small_bert(&c, 12);
    ck_assert_int_eq(c.has_modules_json, 0);
    ck_assert_int_eq(c.pooling, EMB_POOL_MEAN);
    ck_assert_int_eq(c.normalize, 0);
    ck_assert_int_eq(c.max_seq_length, 512); /* tokenizer_config model_max_length */
    ck_assert_int_eq(c.do_lower_case, 0);
}
END_TEST

START_TEST(test_bge_st5)
{
    emb_config c;
    load_real(&c, "bge-small-en-v1.5-st5-resave");
    assert_small_bert(&c, 12);
    ck_assert_int_eq(c.has_modules_json, 1);
    ck_assert_int_eq(c.pooling, EMB_POOL_CLS);
    ck_assert_int_eq(c.normalize, 1);
    ck_assert_int_eq(c.max_seq_length, 512); /* no max_seq_length: tokenizer_config */
    ck_assert_int_eq(c.do_lower_case, 0);
}
END_TEST

START_TEST(test_e5)
{
    emb_config c;
    load_real(&c, "e5-small-v2");
    assert_small_bert(&c, 12);
    ck_assert_int_eq(c.has_modules_json, 0);
    ck_assert_int_eq(c.pooling, EMB_POOL_MEAN);
    ck_assert_int_eq(c.normalize, 0);
    ck_assert_int_eq(c.max_seq_length, 512); /* max_position_embeddings */
}
END_TEST

/* ---- broken folders ------------------------------------------------------ */

typedef struct bad_case {
    const char *what;
    const char *config;      /* extra keys for BERT_CONFIG, or a whole file if it starts
                              * with '!' (rest is the text), NULL for no config.json */
    const char *modules;     /* modules.json text or NULL */
    const char *pooling;     /* 1_Pooling/config.json text or NULL */
    const char *sbert;       /* sentence_bert_config.json text or NULL */
    const char *tokenizer;   /* tokenizer_config.json text or NULL */
    const char *want1;       /* the message must contain both */
    const char *want2;
    const char *dense;       /* 2_Dense/config.json text or NULL */
} bad_case;

/* modules.json: Transformer, Pooling, 2_Dense (a module of type DENSE), then
 * Normalize. */
#define MODULES_WITH(DENSE)                                                                 \
    "!" "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"            \
    "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"},"            \
    "{\"path\":\"2_Dense\",\"type\":\"" DENSE "\"},"                                          \
    "{\"path\":\"3_Normalize\",\"type\":\"sentence_transformers.models.Normalize\"}]"
#define MODULES_DENSE MODULES_WITH("sentence_transformers.models.Dense")
/* A valid Dense config for the 64-wide BERT_CONFIG, with %s-style extras. */
#define DENSE_CONFIG(EXTRA) "{\"in_features\": 64, \"out_features\": 16" EXTRA "}"

static const bad_case bad_cases[] = {
    {"missing config.json", NULL, NULL, NULL, NULL, NULL, "config.json: not found", "", NULL},
    {"malformed JSON", "!{\"vocab_size\": 1000,\n \"hidden_size\": }", NULL, NULL, NULL, NULL,
     "config.json: malformed JSON", "line 2", NULL},
    {"empty config.json", "!", NULL, NULL, NULL, NULL, "config.json: malformed JSON", "", NULL},
    {"config.json is an array", "![1]", NULL, NULL, NULL, NULL, "config.json: not a JSON object",
     "", NULL},
    {"missing required field", "!{\"vocab_size\": 1000, \"hidden_size\": 64}", NULL, NULL, NULL,
     NULL, "\"num_hidden_layers\"", "missing", NULL},
    {"hidden not divisible by heads", ", \"num_attention_heads\": 5", NULL, NULL, NULL, NULL,
     "hidden_size 64 is not divisible by num_attention_heads 5", "", NULL},
    {"hidden_act relu", ", \"hidden_act\": \"relu\"", NULL, NULL, NULL, NULL,
     "hidden_act \"relu\" is not supported", "gelu", NULL},
    {"hidden_act gelu_new", ", \"hidden_act\": \"gelu_new\"", NULL, NULL, NULL, NULL,
     "hidden_act \"gelu_new\"", "exact erf", NULL},
    {"model_type roberta", ", \"model_type\": \"roberta\"", NULL, NULL, NULL, NULL,
     "model_type \"roberta\" is not supported", "", NULL},
    {"relative positions", ", \"position_embedding_type\": \"relative_key\"", NULL, NULL, NULL,
     NULL, "position_embedding_type \"relative_key\"", "", NULL},
    {"hidden_size a string", ", \"hidden_size\": \"64\"", NULL, NULL, NULL, NULL,
     "\"hidden_size\" must be an integer", "\"64\"", NULL},
    {"hidden_size fractional", ", \"hidden_size\": 64.5", NULL, NULL, NULL, NULL,
     "\"hidden_size\" must be an integer", "64.5", NULL},
    {"hidden_size huge", ", \"hidden_size\": 1e300", NULL, NULL, NULL, NULL,
     "\"hidden_size\" must be an integer", "", NULL},
    {"hidden_size zero", ", \"hidden_size\": 0", NULL, NULL, NULL, NULL,
     "hidden_size 0 out of range", "", NULL},
    {"too many layers", ", \"num_hidden_layers\": 1000", NULL, NULL, NULL, NULL,
     "num_hidden_layers 1000 out of range", "", NULL},
    {"vocab too large", ", \"vocab_size\": 100000000", NULL, NULL, NULL, NULL,
     "vocab_size 100000000 out of range", "", NULL},
    {"negative eps", ", \"layer_norm_eps\": -1e-12", NULL, NULL, NULL, NULL,
     "layer_norm_eps", "out of range", NULL},
    {"pad id past vocab", ", \"pad_token_id\": 1000", NULL, NULL, NULL, NULL,
     "pad_token_id 1000 is not below vocab_size 1000", "", NULL},
    {"pooling max", "", "", "{\"pooling_mode_mean_tokens\": false, \"pooling_mode_max_tokens\": true}",
     NULL, NULL, "1_Pooling/config.json", "\"max\"", NULL},
    {"pooling_mode string max", "", "", "{\"pooling_mode\": \"max\"}", NULL, NULL,
     "pooling mode \"max\"", "not supported", NULL},
    {"pooling weightedmean", "", "",
     "{\"pooling_mode_mean_tokens\": false, \"pooling_mode_weightedmean_tokens\": true}", NULL,
     NULL, "weightedmean", "not supported", NULL},
    {"two pooling modes", "", "",
     "{\"pooling_mode_cls_token\": true, \"pooling_mode_mean_tokens\": true}", NULL, NULL,
     "(cls+mean)", "concatenated pooling is not supported", NULL},
    {"cls without mean:false is cls+mean", "", "", "{\"pooling_mode_cls_token\": true}", NULL,
     NULL, "(cls+mean)", "", NULL},
    {"no pooling mode", "", "", "{\"pooling_mode_mean_tokens\": false}", NULL, NULL,
     "no pooling mode is enabled", "", NULL},
    {"unknown pooling_mode", "", "", "{\"pooling_mode\": \"median\"}", NULL, NULL,
     "unknown pooling_mode \"median\"", "", NULL},
    {"pooling flag not a bool", "", "", "{\"pooling_mode_mean_tokens\": \"yes\"}", NULL, NULL,
     "\"pooling_mode_mean_tokens\" must be true or false", "", NULL},
    {"pooling dimension mismatch", "", "", "{\"word_embedding_dimension\": 384}", NULL, NULL,
     "word_embedding_dimension 384 does not match hidden_size 64", "", NULL},
    {"modules.json not an array", "", "!{}", NULL, NULL, NULL, "modules.json: not a JSON array",
     "", NULL},
    {"modules.json malformed", "", "![{\"type\": ", NULL, NULL, NULL,
     "modules.json: malformed JSON", "", NULL},
    {"unknown module type", "", MODULES_WITH("sentence_transformers.models.LayerNorm"), NULL,
     NULL, NULL, "module 2 (path \"2_Dense\") type \"sentence_transformers.models.LayerNorm\"",
     "not supported", NULL},
    {"Dense without its config.json", "", MODULES_DENSE, NULL, NULL, NULL,
     "2_Dense/config.json: not found", "", NULL},
    {"Dense in_features mismatch", "", MODULES_DENSE, NULL, NULL, NULL,
     "2_Dense/config.json: in_features 32 does not match the output dimension 64", "module 2",
     "{\"in_features\": 32, \"out_features\": 16}"},
    {"Dense without out_features", "", MODULES_DENSE, NULL, NULL, NULL,
     "2_Dense/config.json: required field \"out_features\" is missing", "",
     "{\"in_features\": 64}"},
    {"Dense out_features zero", "", MODULES_DENSE, NULL, NULL, NULL,
     "out_features 0 out of range", "", "{\"in_features\": 64, \"out_features\": 0}"},
    {"Dense ReLU", "", MODULES_DENSE, NULL, NULL, NULL,
     "activation_function \"torch.nn.modules.activation.ReLU\" is not supported", "Tanh",
     DENSE_CONFIG(", \"activation_function\": \"torch.nn.modules.activation.ReLU\"")},
    {"Dense bias a string", "", MODULES_DENSE, NULL, NULL, NULL,
     "\"bias\" must be true or false", "", DENSE_CONFIG(", \"bias\": \"no\"")},
    {"Dense residual", "", MODULES_DENSE, NULL, NULL, NULL, "\"use_residual\": true", "",
     DENSE_CONFIG(", \"use_residual\": true")},
    {"Dense on token embeddings", "", MODULES_DENSE, NULL, NULL, NULL,
     "module_input_name \"token_embeddings\" is not supported", "",
     DENSE_CONFIG(", \"module_input_name\": \"token_embeddings\"")},
    {"Dense config not an object", "", MODULES_DENSE, NULL, NULL, NULL,
     "2_Dense/config.json: not a JSON object", "", "[64, 16]"},
    {"Dense before Pooling", "", "!" "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
     "{\"path\":\"2_Dense\",\"type\":\"sentence_transformers.models.Dense\"},"
     "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"}]",
     NULL, NULL, NULL, "Dense module 1 (\"2_Dense\") comes before the Pooling module", "",
     DENSE_CONFIG("")},
    {"Dense after Normalize", "", "!" "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
     "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"},"
     "{\"path\":\"2_Normalize\",\"type\":\"sentence_transformers.models.Normalize\"},"
     "{\"path\":\"2_Dense\",\"type\":\"sentence_transformers.models.Dense\"}]",
     NULL, NULL, NULL, "Dense module 3 (\"2_Dense\") comes after Normalize", "",
     DENSE_CONFIG("")},
    {"Dense path escapes", "", "!" "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
     "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"},"
     "{\"path\":\"../2_Dense\",\"type\":\"sentence_transformers.models.Dense\"}]",
     NULL, NULL, NULL, "Dense path \"../2_Dense\" is not a folder inside the model", "", NULL},
    {"Pooling path escapes", "", "!" "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
     "{\"path\":\"../x\",\"type\":\"sentence_transformers.models.Pooling\"}]",
     NULL, NULL, NULL, "Pooling path \"../x\"", "", NULL},
    {"Transformer in a folder", "", "!" "[{\"path\":\"0_Transformer\",\"type\":\"sentence_transformers.models.Transformer\"}]",
     NULL, NULL, NULL, "Transformer in folder \"0_Transformer\"", "", NULL},
    {"module without type", "", "![{\"path\":\"\"}]", NULL, NULL, NULL, "module 0 has no \"type\"",
     "", NULL},
    {"sentence_bert_config malformed", "", NULL, NULL, "{\"max_seq_length\": 12", NULL,
     "sentence_bert_config.json: malformed JSON", "", NULL},
    {"max_seq_length zero", "", NULL, NULL, "{\"max_seq_length\": 0}", NULL,
     "max_seq_length 0 must be positive", "", NULL},
    {"max_seq_length a string", "", NULL, NULL, "{\"max_seq_length\": \"128\"}", NULL,
     "\"max_seq_length\" must be an integer", "", NULL},
    {"do_lower_case a string", "", NULL, NULL, "{\"do_lower_case\": \"true\"}", NULL,
     "\"do_lower_case\" must be true or false", "", NULL},
    {"model_max_length negative", "", NULL, NULL, NULL, "{\"model_max_length\": -5}",
     "tokenizer_config.json: \"model_max_length\" must be a positive integer", "", NULL},
};

static void put_file(const char *dir, const char *name, const char *spec)
{
    if (spec == NULL)
        return;
    put(dir, name, spec[0] == '!' ? spec + 1 : spec);
}

START_TEST(test_bad_dir)
{
    const bad_case *c = &bad_cases[_i];
    char dir[256];
    emb_err err = {0};
    tmpdir_make(dir, sizeof dir);

    if (c->config != NULL && c->config[0] == '!')
        put(dir, "config.json", c->config + 1);
    else if (c->config != NULL)
        put_bert(dir, c->config);
    /* modules "" means the standard mean+normalize list */
    if (c->modules != NULL && c->modules[0] == '\0')
        put(dir, "modules.json", modules_mean_norm);
    else
        put_file(dir, "modules.json", c->modules);
    put_file(dir, "1_Pooling/config.json", c->pooling);
    put_file(dir, "sentence_bert_config.json", c->sbert);
    put_file(dir, "tokenizer_config.json", c->tokenizer);
    put_file(dir, "2_Dense/config.json", c->dense);

    emb_config cfg;
    memset(&cfg, 0x5a, sizeof cfg);
    emb_config before = cfg;
    int rc = emb_config_load(&cfg, dir, &err);
    ck_assert_msg(rc == -1, "%s: load succeeded", c->what);
    ck_assert_msg(strstr(err.msg, c->want1) != NULL && strstr(err.msg, c->want2) != NULL,
                  "%s: message \"%s\" lacks \"%s\" / \"%s\"", c->what, err.msg, c->want1,
                  c->want2);
    ck_assert_msg(strstr(err.msg, dir) != NULL, "%s: message \"%s\" lacks the folder", c->what,
                  err.msg);
    ck_assert_msg(memcmp(&cfg, &before, sizeof cfg) == 0, "%s: cfg modified on failure",
                  c->what);
    tmpdir_remove(dir);
}
END_TEST

/* ---- fallbacks and variants ---------------------------------------------- */

static int load_tmp(const char *dir, emb_config *cfg)
{
    emb_err err = {0};
    int rc = emb_config_load(cfg, dir, &err);
    ck_assert_msg(rc == 0, "load %s: %s", dir, err.msg);
    return rc;
}

START_TEST(test_defaults)
{
    char dir[256];
    emb_config c;
    tmpdir_make(dir, sizeof dir);
    put_bert(dir, ", \"some_future_key\": {\"nested\": [1, 2]}, \"pad_token_id\": null");
    load_tmp(dir, &c);
    ck_assert_str_eq(c.model_type, "bert");
    ck_assert_int_eq(c.max_position_embeddings, 512);
    ck_assert_int_eq(c.type_vocab_size, 2);
    ck_assert_int_eq(c.pad_token_id, 0);
    ck_assert_float_eq(c.layer_norm_eps, 1e-12f);
    ck_assert_float_eq(c.hidden_dropout_prob, 0.1f);
    ck_assert_float_eq(c.attention_probs_dropout_prob, 0.1f);
    ck_assert_str_eq(c.hidden_act, "gelu");
    ck_assert_int_eq(c.has_modules_json, 0);
    ck_assert_int_eq(c.pooling, EMB_POOL_MEAN);
    ck_assert_int_eq(c.normalize, 0);
    ck_assert_int_eq(c.max_seq_length, 512);
    ck_assert_int_eq(c.do_lower_case, 0);

    /* without modules.json a 1_Pooling folder is not consulted */
    put(dir, "1_Pooling/config.json", "{\"pooling_mode\": \"cls\"}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.pooling, EMB_POOL_MEAN);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_pooling_variants)
{
    static const struct {
        const char *json;
        emb_pooling want;
    } cases[] = {
        {"{\"pooling_mode\": \"cls\"}", EMB_POOL_CLS},
        {"{\"pooling_mode\": \"CLS\"}", EMB_POOL_CLS},
        {"{\"pooling_mode\": \"mean\"}", EMB_POOL_MEAN},
        {"{\"pooling_mode\": \"lasttoken\"}", EMB_POOL_LAST},
        {"{\"pooling_mode\": \"last\"}", EMB_POOL_LAST},
        /* the string overrides the booleans, as in sentence-transformers */
        {"{\"pooling_mode\": \"cls\", \"pooling_mode_mean_tokens\": true}", EMB_POOL_CLS},
        {"{\"pooling_mode_cls_token\": true, \"pooling_mode_mean_tokens\": false}", EMB_POOL_CLS},
        {"{\"pooling_mode_lasttoken\": true, \"pooling_mode_mean_tokens\": false}",
         EMB_POOL_LAST},
        {"{\"word_embedding_dimension\": 64, \"pooling_mode_mean_tokens\": true,"
         " \"pooling_mode_max_tokens\": false, \"pooling_mode_cls_token\": false}",
         EMB_POOL_MEAN},
        {"{\"embedding_dimension\": 64, \"pooling_mode\": \"cls\", \"include_prompt\": true}",
         EMB_POOL_CLS},
        {"{}", EMB_POOL_MEAN},
    };
    char dir[256];
    tmpdir_make(dir, sizeof dir);
    put_bert(dir, "");
    put(dir, "modules.json", modules_mean_norm);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        emb_config c;
        put(dir, "1_Pooling/config.json", cases[i].json);
        load_tmp(dir, &c);
        ck_assert_msg(c.pooling == cases[i].want, "%s: got %s", cases[i].json,
                      emb_pooling_name(c.pooling));
        ck_assert_int_eq(c.normalize, 1);
        ck_assert_int_eq(c.has_modules_json, 1);
    }

    /* a missing pooling config means mean */
    char path[512];
    snprintf(path, sizeof path, "%s/1_Pooling/config.json", dir);
    ck_assert_int_eq(unlink(path), 0);
    emb_config c;
    load_tmp(dir, &c);
    ck_assert_int_eq(c.pooling, EMB_POOL_MEAN);

    /* the Pooling folder named in modules.json is the one read; no Normalize */
    put(dir, "modules.json",
        "[{\"idx\":0,\"name\":\"0\",\"path\":\"\",\"type\":"
        "\"sentence_transformers.base.modules.transformer.Transformer\"},"
        "{\"idx\":1,\"name\":\"1\",\"path\":\"pool\",\"type\":"
        "\"sentence_transformers.sentence_transformer.modules.pooling.Pooling\"}]");
    put(dir, "pool/config.json", "{\"pooling_mode\": \"lasttoken\"}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.pooling, EMB_POOL_LAST);
    ck_assert_int_eq(c.normalize, 0);

    /* modules.json without a Pooling module: 1_Pooling by default */
    put(dir, "modules.json",
        "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"}]");
    put(dir, "1_Pooling/config.json", "{\"pooling_mode\": \"cls\"}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.pooling, EMB_POOL_CLS);
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_seq_length)
{
    char dir[256];
    emb_config c;
    tmpdir_make(dir, sizeof dir);
    put_bert(dir, ", \"max_position_embeddings\": 256");

    put(dir, "sentence_bert_config.json", "{\"max_seq_length\": 128, \"do_lower_case\": true}");
    put(dir, "tokenizer_config.json", "{\"model_max_length\": 64}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.max_seq_length, 128); /* sentence_bert_config wins */
    ck_assert_int_eq(c.do_lower_case, 1);

    put(dir, "sentence_bert_config.json", "{\"max_seq_length\": 1024}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.max_seq_length, 256); /* capped by max_position_embeddings */
    ck_assert_int_eq(c.do_lower_case, 0);

    put(dir, "sentence_bert_config.json", "{\"max_seq_length\": null, \"do_lower_case\": false}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.max_seq_length, 64); /* tokenizer_config */

    put(dir, "tokenizer_config.json", "{\"model_max_length\": 1000000000000000019884624838656}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.max_seq_length, 256); /* HF "unset" sentinel */

    put(dir, "tokenizer_config.json", "{\"model_max_length\": 8192}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.max_seq_length, 256); /* capped */

    put(dir, "tokenizer_config.json", "{\"do_lower_case\": true}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.max_seq_length, 256); /* max_position_embeddings */
    ck_assert_int_eq(c.do_lower_case, 0);    /* only sentence_bert_config sets it */
    tmpdir_remove(dir);
}
END_TEST

START_TEST(test_pooling_names)
{
    emb_pooling p = EMB_POOL_MEAN;
    ck_assert_str_eq(emb_pooling_name(EMB_POOL_MEAN), "mean");
    ck_assert_str_eq(emb_pooling_name(EMB_POOL_CLS), "cls");
    ck_assert_str_eq(emb_pooling_name(EMB_POOL_LAST), "last");
    ck_assert_int_eq(emb_pooling_parse("cls", &p), 0);
    ck_assert_int_eq(p, EMB_POOL_CLS);
    ck_assert_int_eq(emb_pooling_parse("mean", &p), 0);
    ck_assert_int_eq(p, EMB_POOL_MEAN);
    ck_assert_int_eq(emb_pooling_parse("last", &p), 0);
    ck_assert_int_eq(p, EMB_POOL_LAST);
    p = EMB_POOL_MEAN;
    ck_assert_int_eq(emb_pooling_parse("lasttoken", &p), 0);
    ck_assert_int_eq(p, EMB_POOL_LAST);
    ck_assert_int_eq(emb_pooling_parse("max", &p), -1);
    ck_assert_int_eq(emb_pooling_parse("", &p), -1);
    ck_assert_int_eq(emb_pooling_parse(NULL, &p), -1);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(emb_pooling_parse(emb_pooling_name((emb_pooling)i), &p), 0);
        ck_assert_int_eq(p, i);
    }
}
END_TEST

/* ---- save / load ----------------------------------------------------------- */

static void assert_same(const emb_config *a, const emb_config *b)
{
    ck_assert_str_eq(a->model_type, b->model_type);
    ck_assert_int_eq(a->vocab_size, b->vocab_size);
    ck_assert_int_eq(a->hidden_size, b->hidden_size);
    ck_assert_int_eq(a->num_hidden_layers, b->num_hidden_layers);
    ck_assert_int_eq(a->num_attention_heads, b->num_attention_heads);
    ck_assert_int_eq(a->intermediate_size, b->intermediate_size);
    ck_assert_int_eq(a->max_position_embeddings, b->max_position_embeddings);
    ck_assert_int_eq(a->type_vocab_size, b->type_vocab_size);
    ck_assert_int_eq(a->pad_token_id, b->pad_token_id);
    ck_assert(a->layer_norm_eps == b->layer_norm_eps);
    ck_assert(a->hidden_dropout_prob == b->hidden_dropout_prob);
    ck_assert(a->attention_probs_dropout_prob == b->attention_probs_dropout_prob);
    ck_assert_str_eq(a->hidden_act, b->hidden_act);
    ck_assert_int_eq(a->pooling, b->pooling);
    ck_assert_int_eq(a->normalize, b->normalize);
    ck_assert_int_eq(a->max_seq_length, b->max_seq_length);
    ck_assert_int_eq(a->do_lower_case, b->do_lower_case);
    ck_assert_int_eq(a->n_dense, b->n_dense);
    for (int k = 0; k < a->n_dense; k++) {
        ck_assert_int_eq(a->dense[k].in_features, b->dense[k].in_features);
        ck_assert_int_eq(a->dense[k].out_features, b->dense[k].out_features);
        ck_assert_int_eq(a->dense[k].bias, b->dense[k].bias);
        ck_assert_int_eq(a->dense[k].activation, b->dense[k].activation);
    }
}

static void make_cfg(emb_config *c, emb_pooling pooling, int normalize)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, sizeof c->model_type, "bert");
    c->vocab_size = 30522;
    c->hidden_size = 96;
    c->num_hidden_layers = 3;
    c->num_attention_heads = 6;
    c->intermediate_size = 384;
    c->max_position_embeddings = 514;
    c->type_vocab_size = 1;
    c->pad_token_id = 1;
    c->layer_norm_eps = 1e-5f;
    c->hidden_dropout_prob = 0.15f;
    c->attention_probs_dropout_prob = 0.3333333f;
    snprintf(c->hidden_act, sizeof c->hidden_act, "gelu");
    c->has_modules_json = 1;
    c->pooling = pooling;
    c->normalize = normalize;
    c->max_seq_length = 300;
    c->do_lower_case = 1;
}

START_TEST(test_roundtrip)
{
    static const struct {
        emb_pooling pooling;
        int normalize;
    } cases[] = {
        {EMB_POOL_CLS, 1},
        {EMB_POOL_MEAN, 0},
        {EMB_POOL_LAST, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[256];
        emb_err err = {0};
        emb_config in;
        emb_config out;
        tmpdir_make(dir, sizeof dir);
        make_cfg(&in, cases[i].pooling, cases[i].normalize);
        int rc = emb_config_save(&in, dir, &err);
        ck_assert_msg(rc == 0, "save: %s", err.msg);
        ck_assert(exists(dir, "config.json"));
        ck_assert(exists(dir, "modules.json"));
        ck_assert(exists(dir, "1_Pooling/config.json"));
        ck_assert(exists(dir, "sentence_bert_config.json"));
        ck_assert(!exists(dir, "config.json.tmp"));
        ck_assert_int_eq(exists(dir, "2_Normalize"), cases[i].normalize);
        load_tmp(dir, &out);
        assert_same(&in, &out);
        ck_assert_int_eq(out.has_modules_json, 1);

        /* saving over an existing folder works, and so does a reload */
        in.do_lower_case = 0;
        in.layer_norm_eps = 1e-12f;
        ck_assert_int_eq(emb_config_save(&in, dir, &err), 0);
        load_tmp(dir, &out);
        assert_same(&in, &out);
        tmpdir_remove(dir);
    }

    /* a real model survives load -> save -> load */
    char src[1024];
    char dir[256];
    emb_err err = {0};
    emb_config a;
    emb_config b;
    model_dir(src, sizeof src, "bge-small-en-v1.5-st5-resave");
    ck_assert_int_eq(emb_config_load(&a, src, &err), 0);
    tmpdir_make(dir, sizeof dir);
    ck_assert_msg(emb_config_save(&a, dir, &err) == 0, "%s", err.msg);
    load_tmp(dir, &b);
    assert_same(&a, &b);
    tmpdir_remove(dir);
}
END_TEST

/* Two Dense modules under the sentence-transformers 5 class names: the
 * first with the defaults (bias, Tanh), the second Identity without bias. */
START_TEST(test_dense)
{
    char dir[256], out_dir[256];
    emb_err err = {0};
    emb_config c, back;
    tmpdir_make(dir, sizeof dir);
    put_bert(dir, "");
    put(dir, "modules.json",
        "[{\"path\":\"\",\"type\":\"sentence_transformers.base.modules.transformer.Transformer\"},"
        "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.sentence_transformer."
        "modules.pooling.Pooling\"},"
        "{\"path\":\"2_Dense\",\"type\":\"sentence_transformers.base.modules.dense.Dense\"},"
        "{\"path\":\"dense_b\",\"type\":\"sentence_transformers.models.Dense\"},"
        "{\"path\":\"4_Normalize\",\"type\":\"sentence_transformers.base.modules.normalize."
        "Normalize\"}]");
    put(dir, "2_Dense/config.json", "{\"in_features\": 64, \"out_features\": 24}");
    put(dir, "dense_b/config.json",
        "{\"in_features\": 24, \"out_features\": 8, \"bias\": false, \"activation_function\": "
        "\"torch.nn.Identity\", \"module_input_name\": \"sentence_embedding\", "
        "\"use_residual\": false}");
    load_tmp(dir, &c);
    ck_assert_int_eq(c.n_dense, 2);
    ck_assert_int_eq(c.dense[0].in_features, 64);
    ck_assert_int_eq(c.dense[0].out_features, 24);
    ck_assert_int_eq(c.dense[0].bias, 1);
    ck_assert_int_eq(c.dense[0].activation, EMB_ACT_TANH);
    ck_assert_str_eq(c.dense[0].folder, "2_Dense");
    ck_assert_int_eq(c.dense[1].in_features, 24);
    ck_assert_int_eq(c.dense[1].out_features, 8);
    ck_assert_int_eq(c.dense[1].bias, 0);
    ck_assert_int_eq(c.dense[1].activation, EMB_ACT_IDENTITY);
    ck_assert_str_eq(c.dense[1].folder, "dense_b");
    ck_assert_int_eq(c.normalize, 1);
    ck_assert_int_eq(emb_config_dim(&c), 8);
    ck_assert_str_eq(emb_activation_name(EMB_ACT_TANH), "torch.nn.modules.activation.Tanh");
    ck_assert_str_eq(emb_activation_name(EMB_ACT_IDENTITY), "torch.nn.modules.linear.Identity");

    /* saved in order, under sentence-transformers' "<idx>_<class>" names */
    tmpdir_make(out_dir, sizeof out_dir);
    ck_assert_msg(emb_config_save(&c, out_dir, &err) == 0, "%s", err.msg);
    ck_assert(exists(out_dir, "2_Dense/config.json"));
    ck_assert(exists(out_dir, "3_Dense/config.json"));
    ck_assert(exists(out_dir, "4_Normalize"));
    ck_assert(!exists(out_dir, "2_Normalize"));
    load_tmp(out_dir, &back);
    assert_same(&c, &back);
    ck_assert_str_eq(back.dense[1].folder, "3_Dense");
    char path[512];
    snprintf(path, sizeof path, "%s/3_Dense/config.json", out_dir);
    FILE *fp = fopen(path, "r");
    char text[512] = "";
    ck_assert(fp != NULL);
    size_t n = fread(text, 1, sizeof text - 1, fp);
    text[n] = '\0';
    fclose(fp);
    ck_assert_msg(strstr(text, "\"torch.nn.modules.linear.Identity\"") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "\"bias\":\tfalse") != NULL, "%s", text);

    /* without Dense modules the dimension is the hidden size */
    make_cfg(&c, EMB_POOL_MEAN, 1);
    ck_assert_int_eq(emb_config_dim(&c), 96);
    tmpdir_remove(dir);
    tmpdir_remove(out_dir);
}
END_TEST

START_TEST(test_save_invalid)
{
    char dir[256];
    emb_err err = {0};
    emb_config c;
    tmpdir_make(dir, sizeof dir);

    make_cfg(&c, EMB_POOL_MEAN, 0);
    snprintf(c.hidden_act, sizeof c.hidden_act, "relu");
    ck_assert_int_eq(emb_config_save(&c, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "hidden_act \"relu\""), "%s", err.msg);

    make_cfg(&c, EMB_POOL_MEAN, 0);
    c.num_attention_heads = 7;
    ck_assert_int_eq(emb_config_save(&c, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "not divisible"), "%s", err.msg);

    make_cfg(&c, EMB_POOL_MEAN, 0);
    c.max_seq_length = 1000;
    ck_assert_int_eq(emb_config_save(&c, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "max_seq_length 1000"), "%s", err.msg);

    make_cfg(&c, (emb_pooling)7, 0);
    ck_assert_int_eq(emb_config_save(&c, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "pooling"), "%s", err.msg);

    /* a Dense chain must fit together */
    make_cfg(&c, EMB_POOL_MEAN, 1);
    c.n_dense = 2;
    c.dense[0] = (emb_dense_config){.in_features = 96, .out_features = 32, .bias = 1};
    c.dense[1] = (emb_dense_config){.in_features = 31, .out_features = 8, .bias = 0};
    ck_assert_int_eq(emb_config_save(&c, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "Dense module 1 has in_features 31, the module before it "
                                  "gives 32"), "%s", err.msg);
    c.dense[1].in_features = 32;
    c.dense[1].activation = (emb_activation)9;
    ck_assert_int_eq(emb_config_save(&c, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "unknown activation 9"), "%s", err.msg);

    /* nothing was written */
    ck_assert(!exists(dir, "config.json"));

    make_cfg(&c, EMB_POOL_MEAN, 0);
    char missing[512];
    snprintf(missing, sizeof missing, "%s/does/not/exist", dir);
    ck_assert_int_eq(emb_config_save(&c, missing, &err), -1);
    ck_assert_msg(strstr(err.msg, "config.json"), "%s", err.msg);
    tmpdir_remove(dir);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");

    TCase *tc = tcase_create("real");
    tcase_add_test(tc, test_minilm);
    tcase_add_test(tc, test_bge);
    tcase_add_test(tc, test_bge_st5);
    tcase_add_test(tc, test_e5);
    suite_add_tcase(s, tc);

    tc = tcase_create("broken");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, test_bad_dir, 0, (int)(sizeof bad_cases / sizeof bad_cases[0]));
    suite_add_tcase(s, tc);

    tc = tcase_create("variants");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_pooling_variants);
    tcase_add_test(tc, test_seq_length);
    tcase_add_test(tc, test_pooling_names);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_dense);
    tcase_add_test(tc, test_save_invalid);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(config_suite());
}
