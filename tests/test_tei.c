/* test_tei.c: the TEI and OpenAI drop-in (issue 17, items 1 and 2) against
 * the real binary on 127.0.0.1.
 *
 * What it checks: POST / embeds as /embed (with the body the Hugging Face
 * inference clients send, and TEI's options nested in "parameters"),
 * /embeddings is /v1/embeddings, prompts from config_sentence_transformers
 * .json (prompt_name, the default prompt, --default-prompt-name, a 422 or
 * 400 naming the known prompts), /similarity, /decode, GET /v1/models/{id},
 * OpenAI's error shape (400 with "param"), CORS and OPTIONS preflights
 * (with and without --cors-allow-origin, with an API key), and serve's
 * TEI flags (-p, --hostname, --revision, --pooling, --model-id DIR).
 *
 * The model is the tiny fixture; the prompt model is a directory of links
 * to its files plus a config_sentence_transformers.json, made by the
 * fixture. Its prompt "none" is empty, so that "query: x" without a prompt
 * and "x" with the prompt "query" can be compared on one server. */
#include <check.h>
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run_suite.h"
#include "serverproc.h"

#define MODEL "tests/fixtures/tiny-f16"
#define ORIGIN_OK "https://app.example"
#define API_KEY "sekrit"

static char g_prompt_dir[PATH_MAX];

/* A copy of the tiny model (links to its files) with prompts. */
static void make_prompt_model(void)
{
    static const char *const files[] = {"1_Pooling", "config.json", "model.safetensors",
                                        "modules.json", "sentence_bert_config.json",
                                        "special_tokens_map.json", "tokenizer.json",
                                        "tokenizer_config.json", "vocab.txt"};
    char model[PATH_MAX];
    ck_assert_ptr_nonnull(realpath(MODEL, model));
    snprintf(g_prompt_dir, sizeof g_prompt_dir, "/tmp/embedd-tei-model-%d", (int)getpid());
    mkdir(g_prompt_dir, 0755);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char from[PATH_MAX + 64], to[PATH_MAX + 64];
        snprintf(from, sizeof from, "%s/%s", model, files[i]);
        snprintf(to, sizeof to, "%s/%s", g_prompt_dir, files[i]);
        unlink(to);
        ck_assert_int_eq(symlink(from, to), 0);
    }
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/config_sentence_transformers.json", g_prompt_dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"prompts\": {\"query\": \"query: \", \"passage\": \"passage: \", \"none\": \"\"},"
          " \"default_prompt_name\": \"query\"}\n", f);
    fclose(f);
}

static void setup_tei(void)
{
    make_prompt_model();
    const char *args[] = {"--train", "off", "--model", g_prompt_dir,
                          "--cors-allow-origin", "https://other.example, " ORIGIN_OK, NULL};
    fixture_start(args);
}

static void setup_plain(void)
{
    const char *args[] = {"--train", "off", "--api-key", API_KEY, NULL};
    fixture_start(args);
}

/* POSTs body to path on g_srv and returns the parsed reply (status want). */
static cJSON *post_json(const char *path, const char *body, long want)
{
    http_resp r;
    http("POST", path, body, &r);
    ck_assert_msg(r.status == want, "POST %s %s: %ld %s", path, body, r.status, r.body.p);
    cJSON *j = json_of(&r);
    resp_free(&r);
    return j;
}

/* The largest difference between two arrays of numbers (same length). */
static double max_diff(const cJSON *a, const cJSON *b)
{
    ck_assert_int_eq(cJSON_GetArraySize(a), cJSON_GetArraySize(b));
    double d = 0;
    for (const cJSON *x = a->child, *y = b->child; x != NULL; x = x->next, y = y->next)
        d = fmax(d, fabs(x->valuedouble - y->valuedouble));
    return d;
}

/* The one vector of a /embed reply. */
static cJSON *embed_one(const char *body)
{
    cJSON *j = post_json("/embed", body, 200);
    ck_assert_int_eq(cJSON_GetArraySize(j), 1);
    return j;
}

/* ---- POST /, /embeddings ---------------------------------------------- */

START_TEST(test_root_embeds_like_embed)
{
    REQUIRE_SERVER();
    /* the body of @huggingface/inference's featureExtraction at a base URL */
    const char *hf = "{\"inputs\":\"hello world\",\"normalize\":true,\"prompt_name\":\"none\","
                     "\"truncate\":true,\"truncation_direction\":\"right\"}";
    cJSON *a = post_json("/", hf, 200);
    cJSON *b = post_json("/embed", hf, 200);
    ck_assert_int_eq(cJSON_GetArraySize(a), 1);
    ck_assert_double_lt(max_diff(a->child, b->child), 1e-6);
    /* LangChain's HuggingFaceInferenceEmbeddings: a list */
    cJSON *c = post_json("/", "{\"inputs\":[\"hello world\",\"bye\"]}", 200);
    ck_assert_int_eq(cJSON_GetArraySize(c), 2);
    /* options nested in "parameters" are read: not normalised */
    cJSON *d = post_json("/", "{\"inputs\":\"hello world\",\"parameters\":{\"normalize\":false}}",
                         200);
    double norm = 0;
    for (const cJSON *x = d->child->child; x != NULL; x = x->next)
        norm += x->valuedouble * x->valuedouble;
    ck_assert_msg(fabs(sqrt(norm) - 1) > 1e-3, "normalize:false in parameters ignored");
    cJSON *e = post_json("/", "{\"inputs\":\"x\",\"parameters\":{\"normalize\":\"no\"}}", 422);
    cJSON *f = post_json("/", "{\"inputs\":\"x\",\"parameters\":5}", 422);
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(c);
    cJSON_Delete(d);
    cJSON_Delete(e);
    cJSON_Delete(f);
    /* GET / is not ours (the web console): POST is what this route takes */
    http_resp r;
    http("PUT", "/", "{}", &r);
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strstr(header_value(&r, "Allow"), "POST"));
    resp_free(&r);
}
END_TEST

START_TEST(test_embeddings_alias)
{
    REQUIRE_SERVER();
    const char *body = "{\"input\":[\"a cat\",\"a dog\"],\"model\":\"x\",\"prompt_name\":\"none\"}";
    cJSON *a = post_json("/embeddings", body, 200);
    cJSON *b = post_json("/v1/embeddings", body, 200);
    ck_assert_str_eq(cJSON_GetObjectItem(a, "object")->valuestring, "list");
    const cJSON *da = cJSON_GetObjectItem(a, "data"), *db = cJSON_GetObjectItem(b, "data");
    ck_assert_int_eq(cJSON_GetArraySize(da), 2);
    ck_assert_double_lt(max_diff(cJSON_GetObjectItem(da->child, "embedding"),
                                 cJSON_GetObjectItem(db->child, "embedding")), 1e-6);
    cJSON_Delete(a);
    cJSON_Delete(b);
    /* errors in OpenAI's shape there too */
    http_resp r;
    http("POST", "/embeddings", "{\"input\":[]}", &r);
    check_openai_error(&r, 400, "invalid_request_error", NULL, "/embeddings empty");
    resp_free(&r);
}
END_TEST

/* ---- prompts ------------------------------------------------------------ */

START_TEST(test_prompts)
{
    REQUIRE_SERVER();
    /* the default prompt ("query") is applied without prompt_name */
    cJSON *dflt = embed_one("{\"inputs\":\"hello\"}");
    cJSON *by_hand = embed_one("{\"inputs\":\"query: hello\",\"prompt_name\":\"none\"}");
    ck_assert_double_lt(max_diff(dflt->child, by_hand->child), 1e-6);
    /* prompt_name chooses another */
    cJSON *passage = embed_one("{\"inputs\":\"hello\",\"prompt_name\":\"passage\"}");
    cJSON *passage_hand = embed_one("{\"inputs\":\"passage: hello\",\"prompt_name\":\"none\"}");
    ck_assert_double_lt(max_diff(passage->child, passage_hand->child), 1e-6);
    ck_assert_double_gt(max_diff(passage->child, dflt->child), 1e-4);
    /* on /v1/embeddings as an extension field, and the same vectors */
    cJSON *oai = post_json("/v1/embeddings", "{\"input\":\"hello\",\"prompt_name\":\"passage\"}",
                           200);
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(oai, "data")->child, "embedding");
    ck_assert_double_lt(max_diff(v, passage->child), 1e-6);
    cJSON_Delete(dflt);
    cJSON_Delete(by_hand);
    cJSON_Delete(passage);
    cJSON_Delete(passage_hand);
    cJSON_Delete(oai);
    /* an unknown prompt: 422 (TEI) naming the known ones, 400 (OpenAI) */
    http_resp r;
    http("POST", "/embed", "{\"inputs\":\"hello\",\"prompt_name\":\"qeury\"}", &r);
    check_tei_error(&r, 422, "Validation", "unknown prompt");
    ck_assert_ptr_nonnull(strstr(r.body.p, "qeury"));
    ck_assert_ptr_nonnull(strstr(r.body.p, "passage"));
    resp_free(&r);
    http("POST", "/v1/embeddings", "{\"input\":\"hello\",\"prompt_name\":7}", &r);
    check_openai_error(&r, 400, "invalid_request_error", NULL, "prompt_name 7");
    cJSON *j = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "param")->valuestring,
                     "prompt_name");
    cJSON_Delete(j);
    resp_free(&r);
    /* /info reports them */
    ck_assert_int_eq(http("GET", "/info", NULL, &r), 200);
    j = json_of(&r);
    const cJSON *p = cJSON_GetObjectItem(j, "prompts");
    ck_assert_str_eq(cJSON_GetObjectItem(p, "query")->valuestring, "query: ");
    ck_assert_str_eq(cJSON_GetObjectItem(p, "passage")->valuestring, "passage: ");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "default_prompt_name")->valuestring, "query");
    cJSON_Delete(j);
    resp_free(&r);
}
END_TEST

/* The top hit of a /similar reply: its id (a number) and score. */
static void top_hit(cJSON *j, int *id, double *score)
{
    const cJSON *hits = cJSON_GetObjectItem(j, "result");
    ck_assert_msg(cJSON_GetArraySize(hits) >= 1, "no hits");
    *id = (int)cJSON_GetObjectItem(hits->child, "id")->valuedouble;
    *score = cJSON_GetObjectItem(hits->child, "score")->valuedouble;
}

/* /similar's text query takes the prompt (the default, or prompt_name);
 * stored texts are embedded as they are. */
START_TEST(test_similar_prompt)
{
    REQUIRE_SERVER();
    cJSON *up = post_json("/items", "{\"items\":[{\"id\":1,\"text\":\"query: hello world\"},"
                                    "{\"id\":2,\"text\":\"hello world\"}]}", 200);
    cJSON_Delete(up);
    int id = 0;
    double score = 0;
    cJSON *j = post_json("/similar", "{\"text\":\"hello world\",\"limit\":2}", 200);
    top_hit(j, &id, &score);
    ck_assert_int_eq(id, 1); /* the default prompt "query: " */
    ck_assert_double_gt(score, 0.9999);
    cJSON_Delete(j);
    j = post_json("/similar", "{\"text\":\"hello world\",\"prompt_name\":\"none\"}", 200);
    top_hit(j, &id, &score);
    ck_assert_int_eq(id, 2);
    ck_assert_double_gt(score, 0.9999);
    cJSON_Delete(j);
    http_resp r;
    ck_assert_int_eq(http("GET", "/similar?q=hello%20world", NULL, &r), 200);
    j = json_of(&r);
    top_hit(j, &id, &score);
    ck_assert_int_eq(id, 1);
    cJSON_Delete(j);
    resp_free(&r);
    http("POST", "/similar", "{\"text\":\"hello\",\"prompt_name\":\"qeury\"}", &r);
    check_tei_error(&r, 422, "Validation", "unknown prompt");
    resp_free(&r);
    j = post_json("/items/delete", "{\"ids\":[1,2]}", 200);
    cJSON_Delete(j);
}
END_TEST

/* ---- /similarity -------------------------------------------------------- */

START_TEST(test_similarity)
{
    REQUIRE_SERVER();
    cJSON *s = post_json("/similarity",
                         "{\"inputs\":{\"source_sentence\":\"the cat sat on the mat\","
                         "\"sentences\":[\"the cat sat on the mat\",\"stock prices fell\","
                         "\"a cat sat on a mat\"]}}",
                         200);
    ck_assert_int_eq(cJSON_GetArraySize(s), 3);
    const double same = cJSON_GetArrayItem(s, 0)->valuedouble;
    ck_assert_double_lt(fabs(same - 1), 1e-4);
    for (int i = 1; i < 3; i++) {
        double x = cJSON_GetArrayItem(s, i)->valuedouble;
        ck_assert_msg(x >= -1.0001 && x < same, "score %d: %g", i, x);
    }
    cJSON_Delete(s);
    /* the scores are the cosines of /embed's (normalised) vectors */
    cJSON *e = post_json("/embed", "{\"inputs\":[\"red apple\",\"green pear\"]}", 200);
    double dot = 0;
    for (const cJSON *x = e->child->child, *y = e->child->next->child; x; x = x->next, y = y->next)
        dot += x->valuedouble * y->valuedouble;
    s = post_json("/similarity",
                  "{\"inputs\":{\"source_sentence\":\"red apple\",\"sentences\":[\"green pear\"]}}",
                  200);
    ck_assert_double_lt(fabs(cJSON_GetArrayItem(s, 0)->valuedouble - dot), 1e-4);
    cJSON_Delete(s);
    cJSON_Delete(e);
    static const char *const bad[] = {
        "{\"inputs\":\"a\"}",
        "{\"inputs\":{\"sentences\":[\"a\"]}}",
        "{\"inputs\":{\"source_sentence\":\"\",\"sentences\":[\"a\"]}}",
        "{\"inputs\":{\"source_sentence\":\"a\"}}",
        "{\"inputs\":{\"source_sentence\":\"a\",\"sentences\":[\"b\",3]}}",
        "{\"inputs\":{\"source_sentence\":\"a\",\"sentences\":\"b\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_resp r;
        http("POST", "/similarity", bad[i], &r);
        check_tei_error(&r, 422, "Validation", bad[i]);
        resp_free(&r);
    }
    http_resp r;
    http("POST", "/similarity", "{\"inputs\":{\"source_sentence\":\"a\",\"sentences\":[]}}", &r);
    check_tei_error(&r, 400, "Empty", "no sentences");
    resp_free(&r);
}
END_TEST

/* ---- /decode ------------------------------------------------------------ */

/* The ids /tokenize gives text (with [CLS] and [SEP]) as a JSON array. */
static char *ids_of(const char *text)
{
    char body[512];
    snprintf(body, sizeof body, "{\"inputs\":\"%s\"}", text);
    cJSON *t = post_json("/tokenize", body, 200);
    cJSON *ids = cJSON_CreateArray();
    const cJSON *tok;
    cJSON_ArrayForEach(tok, t->child)
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(cJSON_GetObjectItem(tok, "id")->valuedouble));
    char *s = cJSON_PrintUnformatted(ids);
    cJSON_Delete(ids);
    cJSON_Delete(t);
    return s;
}

START_TEST(test_decode)
{
    REQUIRE_SERVER();
    char *ids = ids_of("Hello, world! It's unbelievable.");
    char body[2048];
    snprintf(body, sizeof body, "{\"ids\":%s}", ids);
    cJSON *d = post_json("/decode", body, 200);
    ck_assert_int_eq(cJSON_GetArraySize(d), 1);
    /* lowercased by the tokenizer; "##" pieces joined; no space before , ! . 's */
    ck_assert_str_eq(d->child->valuestring, "hello, world! it's unbelievable.");
    cJSON_Delete(d);
    snprintf(body, sizeof body, "{\"ids\":[%s,%s],\"skip_special_tokens\":false}", ids, ids);
    d = post_json("/decode", body, 200);
    ck_assert_int_eq(cJSON_GetArraySize(d), 2);
    ck_assert_msg(strncmp(d->child->valuestring, "[CLS] hello", 11) == 0, "%s",
                  d->child->valuestring);
    ck_assert_ptr_nonnull(strstr(d->child->valuestring, "[SEP]"));
    cJSON_Delete(d);
    free(ids);
    static const char *const bad[] = {"{}", "{\"ids\":[]}", "{\"ids\":[1.5]}",
                                      "{\"ids\":[99999999]}", "{\"ids\":[-1]}",
                                      "{\"ids\":[[1],2]}", "{\"ids\":[1],\"skip_special_tokens\":1}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_resp r;
        http("POST", "/decode", bad[i], &r);
        check_tei_error(&r, 422, "Validation", bad[i]);
        resp_free(&r);
    }
}
END_TEST

/* ---- /tokenize offsets --------------------------------------------------- */

START_TEST(test_tokenize_offsets)
{
    REQUIRE_SERVER();
    /* "Café" is lowercased and stripped to "cafe" but points at its 5 bytes */
    const char *text = "Caf\u00e9, ok";
    char body[256];
    snprintf(body, sizeof body, "{\"inputs\":\"%s\"}", text);
    cJSON *t = post_json("/tokenize", body, 200);
    const cJSON *row = t->child;
    const int n = cJSON_GetArraySize(row);
    ck_assert_int_ge(n, 5); /* [CLS] caf(e) , ok [SEP] */
    const cJSON *cls = cJSON_GetArrayItem(row, 0), *sep = cJSON_GetArrayItem(row, n - 1);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(cls, "special")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(cls, "start")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(sep, "stop")));
    /* the non-special tokens: their text is the input's bytes [start, stop) */
    const char *raw = "Caf\xc3\xa9, ok";
    int prev = 0;
    for (int i = 1; i < n - 1; i++) {
        const cJSON *tok = cJSON_GetArrayItem(row, i);
        int a = cJSON_GetObjectItem(tok, "start")->valueint;
        int b = cJSON_GetObjectItem(tok, "stop")->valueint;
        ck_assert_int_ge(a, prev);
        ck_assert_int_le(b, (int)strlen(raw));
        ck_assert_int_eq(strncmp(cJSON_GetObjectItem(tok, "text")->valuestring, raw + a,
                                 (size_t)(b - a)), 0);
        prev = b;
    }
    /* the last word and the comma, exactly */
    const cJSON *ok = cJSON_GetArrayItem(row, n - 2), *comma = cJSON_GetArrayItem(row, n - 3);
    ck_assert_int_eq(cJSON_GetObjectItem(ok, "start")->valueint, 7);
    ck_assert_int_eq(cJSON_GetObjectItem(ok, "stop")->valueint, 9);
    ck_assert_int_eq(cJSON_GetObjectItem(comma, "start")->valueint, 5);
    ck_assert_int_eq(cJSON_GetObjectItem(comma, "stop")->valueint, 6);
    /* the word's pieces end where "Café" ends: after the 2-byte é */
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(row, n - 4), "stop")->valueint, 5);
    cJSON_Delete(t);
}
END_TEST

/* ---- OpenAI: /v1/models/{id}, errors ------------------------------------ */

START_TEST(test_openai_model_retrieve)
{
    REQUIRE_SERVER();
    http_resp r;
    ck_assert_int_eq(http("GET", "/v1/models", NULL, &r), 200);
    cJSON *list = json_of(&r);
    resp_free(&r);
    const char *name =
        cJSON_GetObjectItem(cJSON_GetObjectItem(list, "data")->child, "id")->valuestring;
    char path[512];
    snprintf(path, sizeof path, "/v1/models/%s", name);
    ck_assert_int_eq(http("GET", path, NULL, &r), 200);
    cJSON *m = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(m, "id")->valuestring, name);
    ck_assert_str_eq(cJSON_GetObjectItem(m, "object")->valuestring, "model");
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(m, "created")));
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(m, "owned_by")));
    cJSON_Delete(m);
    resp_free(&r);
    /* a version of it: name@1 */
    snprintf(path, sizeof path, "/v1/models/%s@1", name);
    ck_assert_int_eq(http("GET", path, NULL, &r), 200);
    resp_free(&r);
    cJSON_Delete(list);
    http("GET", "/v1/models/text-embedding-3-small", NULL, &r);
    check_openai_error(&r, 404, "invalid_request_error", "model_not_found", "unknown model");
    cJSON *j = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "param")->valuestring,
                     "model");
    cJSON_Delete(j);
    resp_free(&r);
}
END_TEST

typedef struct oai_case {
    const char *body;
    const char *param;         /* NULL: null */
} oai_case;

static const oai_case oai_cases[] = {
    {"{\"input\":\"a\",\"dimensions\":0}", "dimensions"},
    {"{\"input\":\"a\",\"encoding_format\":\"hex\"}", "encoding_format"},
    {"{\"input\":\"a\",\"model\":5}", "model"},
    {"{\"input\":[\"a\",\"\"]}", "input"},
    {"{\"input\":[1.5]}", "input"},
    {"{}", "input"},
    {"[1]", NULL},
};

START_TEST(test_openai_errors)
{
    REQUIRE_SERVER();
    const oai_case *c = &oai_cases[_i];
    http_resp r;
    http("POST", "/v1/embeddings", c->body, &r);
    check_openai_error(&r, 400, "invalid_request_error", NULL, c->body);
    cJSON *j = json_of(&r);
    const cJSON *p = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "param");
    if (c->param == NULL)
        ck_assert_msg(cJSON_IsNull(p), "%s: param %s", c->body, r.body.p);
    else
        ck_assert_msg(cJSON_IsString(p) && strcmp(p->valuestring, c->param) == 0,
                      "%s: param in %s", c->body, r.body.p);
    cJSON_Delete(j);
    resp_free(&r);
    /* TEI keeps 422 for the same mistake */
    http("POST", "/embed", "{\"inputs\":\"a\",\"dimensions\":0}", &r);
    check_tei_error(&r, 422, "Validation", "TEI dimensions");
    resp_free(&r);
}
END_TEST

/* ---- CORS ---------------------------------------------------------------- */

START_TEST(test_cors_allowed_origin)
{
    REQUIRE_SERVER();
    http_resp r;
    const char *ok[] = {"Origin: " ORIGIN_OK, NULL};
    http_port(g_srv.port, "POST", "/embed", "{\"inputs\":\"a\"}", ok, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(header_value(&r, "Access-Control-Allow-Origin"), ORIGIN_OK);
    ck_assert_str_eq(header_value(&r, "Vary"), "Origin");
    resp_free(&r);
    /* errors carry it too: the page can read the message */
    http_port(g_srv.port, "POST", "/v1/embeddings", "{}", ok, &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_str_eq(header_value(&r, "Access-Control-Allow-Origin"), ORIGIN_OK);
    resp_free(&r);
    const char *other[] = {"Origin: https://evil.example", NULL};
    http_port(g_srv.port, "POST", "/embed", "{\"inputs\":\"a\"}", other, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_null(header_value(&r, "Access-Control-Allow-Origin"));
    resp_free(&r);
    http("POST", "/embed", "{\"inputs\":\"a\"}", &r); /* no Origin: no CORS headers */
    ck_assert_ptr_null(header_value(&r, "Access-Control-Allow-Origin"));
    resp_free(&r);
}
END_TEST

START_TEST(test_cors_preflight)
{
    REQUIRE_SERVER();
    http_resp r;
    const char *pre[] = {"Origin: " ORIGIN_OK, "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: content-type,x-stainless-lang", NULL};
    http_port(g_srv.port, "OPTIONS", "/v1/embeddings", NULL, pre, &r);
    ck_assert_int_eq(r.status, 204);
    /* the connection stays open for the request the preflight announced */
    ck_assert_ptr_null(header_value(&r, "Connection"));
    ck_assert_str_eq(header_value(&r, "Access-Control-Allow-Origin"), ORIGIN_OK);
    ck_assert_str_eq(header_value(&r, "Access-Control-Allow-Methods"), "POST, OPTIONS");
    const char *h = header_value(&r, "Access-Control-Allow-Headers");
    ck_assert_ptr_nonnull(h);
    /* ours, then what the browser asked for, each once */
    ck_assert_str_eq(h, "Authorization, Content-Type, x-stainless-lang");
    ck_assert_ptr_nonnull(header_value(&r, "Access-Control-Max-Age"));
    ck_assert_uint_eq(r.body.len, 0);
    resp_free(&r);
    /* a path with two methods lists both; a template path is known too */
    http_port(g_srv.port, "OPTIONS", "/items/abc", NULL, pre, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert_ptr_nonnull(strstr(header_value(&r, "Access-Control-Allow-Methods"), "GET"));
    ck_assert_ptr_nonnull(strstr(header_value(&r, "Access-Control-Allow-Methods"), "DELETE"));
    resp_free(&r);
    /* an origin not allowed: 204 with Allow but no CORS headers */
    const char *evil[] = {"Origin: https://evil.example", "Access-Control-Request-Method: POST",
                          NULL};
    http_port(g_srv.port, "OPTIONS", "/embed", NULL, evil, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert_ptr_null(header_value(&r, "Access-Control-Allow-Origin"));
    ck_assert_str_eq(header_value(&r, "Allow"), "POST, OPTIONS");
    resp_free(&r);
    /* an unknown path is a 404, as for any method */
    http_port(g_srv.port, "OPTIONS", "/nope", NULL, pre, &r);
    check_tei_error(&r, 404, "Validation", "OPTIONS /nope");
    resp_free(&r);
}
END_TEST

/* Without --cors-allow-origin, and with an API key. */
START_TEST(test_options_without_cors)
{
    REQUIRE_SERVER();
    http_resp r;
    const char *pre[] = {"Origin: https://app.example", "Access-Control-Request-Method: POST",
                         NULL};
    /* no key needed for OPTIONS (browsers never send one on a preflight) */
    http_port(g_srv.port, "OPTIONS", "/v1/embeddings", NULL, pre, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert_str_eq(header_value(&r, "Allow"), "POST, OPTIONS");
    ck_assert_ptr_null(header_value(&r, "Access-Control-Allow-Origin"));
    ck_assert_ptr_null(header_value(&r, "Access-Control-Allow-Methods"));
    resp_free(&r);
    /* the key is still needed for the request itself: 401 in OpenAI's shape */
    http("POST", "/v1/embeddings", "{\"input\":\"a\"}", &r);
    check_openai_error(&r, 401, "authentication_error", "invalid_api_key", "no key");
    resp_free(&r);
    const char *key[] = {"Authorization: Bearer " API_KEY, NULL};
    http_port(g_srv.port, "POST", "/embeddings", "{\"input\":\"a\"}", key, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

/* ---- serve flags -------------------------------------------------------- */

/* Runs `embedd serve ARGS` that must fail before loading anything; the
 * exit status and its output into msg. */
static int serve_fails(const char *args, char *msg, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s serve %s 2>&1", embedd_bin(), args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(msg, 1, cap - 1, p);
    msg[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_flag_errors)
{
    char msg[512];
    ck_assert_int_eq(serve_fails("--model " MODEL " -p 99999", msg, sizeof msg), 2);
    ck_assert_msg(strstr(msg, "--port") != NULL, "%s", msg);
    ck_assert_int_eq(serve_fails("--model " MODEL " --pooling max", msg, sizeof msg), 2);
    ck_assert_msg(strstr(msg, "--pooling") != NULL, "%s", msg);
    ck_assert_int_eq(serve_fails("--model-id " MODEL " --revision main", msg, sizeof msg), 2);
    ck_assert_msg(strstr(msg, "local directory") != NULL, "%s", msg);
    ck_assert_int_eq(serve_fails("--model-id org/name@v1 --revision v2", msg, sizeof msg), 2);
    ck_assert_msg(strstr(msg, "different") != NULL, "%s", msg);
    ck_assert_int_eq(serve_fails("--revision v2", msg, sizeof msg), 2);
    ck_assert_msg(strstr(msg, "--model-id") != NULL, "%s", msg);
    /* --help lists the short name */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s serve --help | grep -c -- '-p, --port'", embedd_bin());
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(fgets(msg, sizeof msg, p));
    pclose(p);
    ck_assert_int_eq(atoi(msg), 1);
}
END_TEST

/* --model-id DIR loads the folder (the fixture's --model is cleared),
 * -p and --hostname are accepted, --pooling and --default-prompt-name
 * show in /info. */
START_TEST(test_flags_on_a_server)
{
    make_prompt_model();
    server_proc s = {0};
    const char *args[] = {"--model", "", "--model-id", g_prompt_dir, "-p", "0",
                          "--hostname", "127.0.0.1", "--pooling", "cls",
                          "--default-prompt-name", "passage", "--train", "off", NULL};
    ck_assert_int_eq(srv_start(&s, args), 0);
    http_resp r;
    ck_assert_int_eq(http_port(s.port, "GET", "/info", NULL, NULL, &r), 200);
    cJSON *j = json_of(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model_dir")->valuestring, g_prompt_dir);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "pooling")->valuestring, "cls");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "default_prompt_name")->valuestring, "passage");
    cJSON_Delete(j);
    resp_free(&r);
    srv_stop(&s);
    /* a --default-prompt-name the model does not have stops the start */
    const char *bad[] = {"--model", g_prompt_dir, "--default-prompt-name", "nope", "--train",
                         "off", NULL};
    server_proc b = {0};
    ck_assert_int_ne(srv_start(&b, bad), 0);
    ck_assert_ptr_nonnull(strstr(b.log, "nope"));
    srv_stop(&b);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("tei");
    TCase *tc = tcase_with_server(s, "tei", setup_tei, 60);
    tcase_add_test(tc, test_root_embeds_like_embed);
    tcase_add_test(tc, test_embeddings_alias);
    tcase_add_test(tc, test_prompts);
    tcase_add_test(tc, test_similar_prompt);
    tcase_add_test(tc, test_similarity);
    tcase_add_test(tc, test_decode);
    tcase_add_test(tc, test_tokenize_offsets);
    tcase_add_test(tc, test_openai_model_retrieve);
    tcase_add_loop_test(tc, test_openai_errors, 0,
                        (int)(sizeof oai_cases / sizeof oai_cases[0]));
    tcase_add_test(tc, test_cors_allowed_origin);
    tcase_add_test(tc, test_cors_preflight);

    tc = tcase_with_server(s, "plain", setup_plain, 60);
    tcase_add_test(tc, test_options_without_cors);

    tc = tcase_create("flags");
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    tcase_add_test(tc, test_flag_errors);
    tcase_add_test(tc, test_flags_on_a_server);
    return run_suite(s);
}
