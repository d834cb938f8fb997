/* routes.c: the route table and the handlers of `embedd serve`.
 *
 * Embedding routes run in two steps on HTTP threads: handle parses and
 * validates the JSON, tokenises every input and submits one job to the
 * batcher (the connection is suspended); finish runs after the compute
 * thread has filled in the pooled vectors, applies the request's
 * normalisation and Matryoshka dimensions, and writes the response. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cluster/cluster.h"
#include "common/release.h"
#include "errors.h"
#include "jsoncheck.h"
#include "ops.h"
#include "learn/samples.h"
#include "server.h"
#include "textjob.h"

/* ---- request parsing helpers ------------------------------------------- */

typedef struct embed_state {
    text_job tj;               /* the inputs and their vectors */
    int n;                     /* inputs */
    int normalize;
    int dimensions;
    int base64;
    uint32_t pin;              /* the client's model version; 0: the current one */
} embed_state;

static void embed_state_free(void *p)
{
    embed_state *st = p;
    if (st == NULL)
        return;
    textjob_free(&st->tj);
    free(st);
}

static int is_integer(const cJSON *item)
{
    return cJSON_IsNumber(item) && item->valuedouble == floor(item->valuedouble);
}

static int all_integers(const cJSON *arr)
{
    const cJSON *el;
    cJSON_ArrayForEach(el, arr) {
        if (!is_integer(el))
            return 0;
    }
    return 1;
}

/* Collects the inputs of "inputs" (TEI) or "input" (OpenAI). Returns the
 * count (>= 1), or 0 after filling rp with the error. */
static int collect_inputs(const cJSON *field, const char *name, int allow_ids, int max_inputs,
                          api_family api, textjob_input **out, reply *rp)
{
    if (field == NULL) {
        reply_error(rp, api, 422, "Validation", "missing field `%s`", name);
        return 0;
    }
    if (cJSON_IsString(field)) {
        if (field->valuestring[0] == '\0') {
            reply_error(rp, api, 400, "Empty", "`%s` cannot be empty", name);
            return 0;
        }
        *out = calloc(1, sizeof(textjob_input));
        if (*out == NULL) {
            reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
            return 0;
        }
        (*out)[0].text = field->valuestring;
        (*out)[0].len = strlen(field->valuestring);
        return 1;
    }
    if (!cJSON_IsArray(field)) {
        reply_error(rp, api, 422, "Validation", "`%s` must be a string or an array of %s", name,
                    allow_ids ? "strings or token ids" : "strings");
        return 0;
    }
    int n = cJSON_GetArraySize(field);
    if (n == 0) {
        reply_error(rp, api, 400, "Empty", "`%s` cannot be empty", name);
        return 0;
    }
    const cJSON *first = field->child;
    if (allow_ids && cJSON_IsNumber(first)) {
        /* one input of token ids */
        if (!all_integers(field)) {
            reply_error(rp, api, 422, "Validation", "`%s` mixes token ids and other values",
                        name);
            return 0;
        }
        *out = calloc(1, sizeof(textjob_input));
        if (*out == NULL) {
            reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
            return 0;
        }
        (*out)[0].ids = field;
        return 1;
    }
    if (n > max_inputs) {
        reply_error(rp, api, 422, "Validation",
                    "batch size %d exceeds the maximum of %d inputs per request", n, max_inputs);
        return 0;
    }
    textjob_input *in = calloc((size_t)n, sizeof(textjob_input));
    if (in == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        return 0;
    }
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, field) {
        if (cJSON_IsString(el) && el->valuestring[0] == '\0') {
            /* TEI's status and words, on every route with inputs */
            reply_error(rp, api, 400, "Empty", "`%s[%d]` cannot be empty", name, i);
            free(in);
            return 0;
        }
        if (cJSON_IsString(el)) {
            in[i].text = el->valuestring;
            in[i].len = strlen(el->valuestring);
        } else if (allow_ids && cJSON_IsArray(el) && all_integers(el)) {
            in[i].ids = el;
        } else {
            reply_error(rp, api, 422, "Validation", "`%s[%d]` must be a %s", name, i,
                        allow_ids ? "string or an array of token ids" : "string");
            free(in);
            return 0;
        }
        i++;
    }
    *out = in;
    return n;
}

int route_get_bool(const cJSON *root, const char *name, int def, api_family api, reply *rp)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, name);
    if (f == NULL || cJSON_IsNull(f))
        return def;
    if (!cJSON_IsBool(f)) {
        reply_error(rp, api, 422, "Validation", "`%s` must be true or false", name);
        return -1;
    }
    return cJSON_IsTrue(f);
}

/* A positive version number from text (all digits); 0 when it is not. */
static uint32_t parse_version(const char *s)
{
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    unsigned long long v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (unsigned)(*s - '0');
        if (v > 4294967295ull)
            return 0;
    }
    return *s == '\0' ? (uint32_t)v : 0;
}

int route_get_pin(request *rq, const cJSON *root, api_family api, uint32_t *id, reply *rp)
{
    *id = 0;
    const char *h =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "X-Embedd-Model-Version");
    uint32_t from_header = 0;
    if (h != NULL && (from_header = parse_version(h)) == 0) {
        reply_error(rp, api, 422, "Validation",
                    "X-Embedd-Model-Version must be a positive integer");
        return -1;
    }
    const cJSON *f = root != NULL ? cJSON_GetObjectItemCaseSensitive(root, "model_version") : NULL;
    uint32_t from_body = 0;
    if (f != NULL && !cJSON_IsNull(f)) {
        if (!cJSON_IsNumber(f) || f->valuedouble != floor(f->valuedouble) || f->valuedouble < 1 ||
            f->valuedouble > 4294967295.0) {
            reply_error(rp, api, 422, "Validation", "`model_version` must be a positive integer");
            return -1;
        }
        from_body = (uint32_t)f->valuedouble;
    }
    if (from_header != 0 && from_body != 0 && from_header != from_body) {
        reply_error(rp, api, 422, "Validation",
                    "`model_version` %u and X-Embedd-Model-Version %u disagree", from_body,
                    from_header);
        return -1;
    }
    *id = from_body != 0 ? from_body : from_header;
    return 0;
}

/* Optional "dimensions": 0 for none, -1 after an error. */
static int get_dimensions(const cJSON *root, int C, api_family api, reply *rp)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "dimensions");
    if (f == NULL || cJSON_IsNull(f))
        return 0;
    if (!is_integer(f) || f->valuedouble < 1 || f->valuedouble > C) {
        reply_error(rp, api, 422, "Validation", "`dimensions` must be an integer in 1..%d", C);
        return -1;
    }
    return (int)f->valuedouble;
}

/* Refuses a body that json_check faults (jsoncheck.h): NUL, invalid
 * UTF-8 or a malformed string, which cJSON would otherwise read as a
 * shorter or different string. 0, or -1 after filling rp. */
static int check_body_strings(const request *rq, api_family api, reply *rp)
{
    json_fault f;
    json_fault_kind kind = json_check(rq->body, rq->body_len, &f);
    if (kind == JSON_OK)
        return 0;
    char where[160] = "";
    if (f.field[0] != '\0')
        snprintf(where, sizeof where, " in `%s`", f.field);
    if (kind == JSON_BAD_NUL)
        reply_error(rp, api, 422, "Validation",
                    "NUL character (%s) at byte %zu%s: no request string may contain NUL",
                    f.reason, f.offset, where);
    else if (kind == JSON_BAD_UTF8)
        reply_error(rp, api, 422, "Validation", "invalid UTF-8 at byte %zu%s: %s", f.offset,
                    where, f.reason);
    else
        reply_error(rp, api, 422, "Validation", "malformed JSON at byte %zu%s: %s", f.offset,
                    where, f.reason);
    return -1;
}

cJSON *route_parse_body(request *rq, api_family api, reply *rp)
{
    if (rq->body == NULL || rq->body_len == 0) {
        reply_error(rp, api, 422, "Validation", "request body must be a JSON object");
        return NULL;
    }
    if (check_body_strings(rq, api, rp) != 0)
        return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(rq->body, rq->body_len, &end, 0);
    if (root != NULL) {
        /* nothing but whitespace may follow the value */
        while (end < rq->body + rq->body_len &&
               (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
            end++;
        if (end < rq->body + rq->body_len) {
            reply_error(rp, api, 422, "Validation", "malformed JSON: trailing data at byte %zu",
                        (size_t)(end - rq->body));
            cJSON_Delete(root);
            return NULL;
        }
    }
    if (root == NULL) {
        /* cJSON_GetErrorPtr is a global shared by all threads; end is ours */
        size_t at = 0;
        if (end != NULL && end >= rq->body && end <= rq->body + rq->body_len)
            at = (size_t)(end - rq->body);
        reply_error(rp, api, 422, "Validation", "malformed JSON near byte %zu", at);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        reply_error(rp, api, 422, "Validation", "request body must be a JSON object");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

int route_response_fits(const server *srv, size_t bytes, api_family api, const char *lower,
                        reply *rp)
{
    const size_t cap = (size_t)srv->opts.max_response_bytes;
    if (bytes <= cap)
        return 1;
    reply_error(rp, api, 422, "Validation",
                "the response would take about %zu bytes, over --max-response-bytes %zu; "
                "lower %s",
                bytes, cap, lower);
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
        return (c | 0x20) - 'a' + 10;
    return -1;
}

/* The URL decoder of libmicrohttpd (MHD_OPTION_UNESCAPE_CALLBACK), for the
 * path and the query arguments. Like MHD's own it decodes %HH in place,
 * except %00: a NUL would end the C string the handlers get, so that
 * /items/nul%00x would name the item "nul". It becomes C0 80 (the
 * overlong NUL), which utf8_check reports as NUL: the request is refused
 * instead of cut short. */
size_t routes_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    char *out = s;
    for (const char *p = s; *p != '\0';) {
        int hi = p[0] == '%' ? hex_value(p[1]) : -1;
        int lo = hi >= 0 ? hex_value(p[2]) : -1;
        if (lo < 0) {
            *out++ = *p++;
            continue;
        }
        int byte = hi << 4 | lo;
        if (byte == 0) {
            *out++ = (char)0xC0;
            *out++ = (char)0x80;
        } else {
            *out++ = (char)byte;
        }
        p += 3;
    }
    *out = '\0';
    return (size_t)(out - s);
}

/* ---- /embed and /v1/embeddings ----------------------------------------- */

static embed_state *new_embed_state(request *rq, api_family api, reply *rp)
{
    embed_state *st = calloc(1, sizeof *st);
    if (st == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    st->tj.api = api;
    rq->state = st;
    rq->free_state = embed_state_free;
    return st;
}

/* Reads the options of a TEI /embed request into st. Returns 0, or -1
 * after filling rp. */
static int tei_options(server *srv, const cJSON *root, embed_state *st, int *truncate,
                       int *left, reply *rp)
{
    /* The Hugging Face inference clients may nest the options in
     * "parameters" ({"inputs": ..., "parameters": {"normalize": ...}}). */
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if (cJSON_IsObject(params))
        root = params;
    else if (params != NULL && !cJSON_IsNull(params)) {
        reply_error(rp, st->tj.api, 422, "Validation", "`parameters` must be an object");
        return -1;
    }
    st->normalize = route_get_bool(root, "normalize", 1, st->tj.api, rp);
    *truncate = route_get_bool(root, "truncate", srv->opts.auto_truncate, st->tj.api, rp);
    st->dimensions = get_dimensions(root, emb_model_dim(srv->model), st->tj.api, rp);
    if (st->normalize < 0 || *truncate < 0 || st->dimensions < 0)
        return -1;
    const cJSON *dir = cJSON_GetObjectItemCaseSensitive(root, "truncation_direction");
    if (dir == NULL || cJSON_IsNull(dir))
        return 0;
    if (cJSON_IsString(dir) && strcasecmp(dir->valuestring, "left") == 0) {
        *left = 1;
        return 0;
    }
    if (cJSON_IsString(dir) && strcasecmp(dir->valuestring, "right") == 0)
        return 0;
    reply_error(rp, st->tj.api, 422, "Validation",
                "`truncation_direction` must be \"right\" or \"left\"");
    return -1;
}

/* Reads the options of an OpenAI /v1/embeddings request into st. */
static int openai_options(server *srv, const cJSON *root, embed_state *st, int *truncate,
                          int *left, reply *rp)
{
    st->normalize = 1;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "encoding_format");
    if (fmt != NULL && !cJSON_IsNull(fmt)) {
        if (cJSON_IsString(fmt) && strcmp(fmt->valuestring, "base64") == 0) {
            st->base64 = 1;
        } else if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "float") != 0) {
            reply_error(rp, st->tj.api, 422, "Validation",
                        "`encoding_format` must be \"float\" or \"base64\"");
            return -1;
        }
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model != NULL && !cJSON_IsNull(model) && !cJSON_IsString(model)) {
        reply_error(rp, st->tj.api, 422, "Validation", "`model` must be a string");
        return -1;
    }
    /* "name@N" pins version N; a name without it is the current version */
    const char *at = cJSON_IsString(model) ? strrchr(model->valuestring, '@') : NULL;
    if (at != NULL && (st->pin = parse_version(at + 1)) == 0) {
        reply_error(rp, st->tj.api, 422, "Validation",
                    "`model` \"%.100s\": the part after @ must be a version number",
                    model->valuestring);
        return -1;
    }
    st->dimensions = get_dimensions(root, emb_model_dim(srv->model), st->tj.api, rp);
    return st->dimensions < 0 ? -1 : 0;
}

/* Texts with the prompt put before them, owned by the handler. */
typedef struct prompted {
    char **texts;
    int n;
} prompted;

static void prompted_free(prompted *pt)
{
    for (int i = 0; i < pt->n; i++)
        free(pt->texts[i]);
    free(pt->texts);
    pt->texts = NULL;
    pt->n = 0;
}

/* The prompt a request asks for: "prompt_name" of root (TEI's field; an
 * extension on /v1/embeddings), else the model's default (serve
 * --default-prompt-name or config_sentence_transformers.json); NULL for
 * none. *bad after filling rp with a 422 that names the known prompts. */
static const emb_prompt *request_prompt(const server *srv, const cJSON *root, api_family api,
                                        int *bad, reply *rp)
{
    const emb_config *cfg = &srv->model->cfg;
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "prompt_name");
    *bad = 0;
    if (f == NULL || cJSON_IsNull(f))
        return cfg->default_prompt[0] != '\0' ? emb_prompt_find(cfg, cfg->default_prompt) : NULL;
    const emb_prompt *p = cJSON_IsString(f) ? emb_prompt_find(cfg, f->valuestring) : NULL;
    if (p != NULL)
        return p;
    char known[512] = "";
    size_t n = 0;
    for (int i = 0; i < cfg->n_prompts && n < sizeof known; i++)
        n += (size_t)snprintf(known + n, sizeof known - n, "%s\"%s\"", i > 0 ? ", " : "",
                              cfg->prompts[i].name);
    reply_error(rp, api, 422, "Validation", "`prompt_name` %s%.100s%s is not a prompt of this "
                "model (%s%s)", cJSON_IsString(f) ? "\"" : "",
                cJSON_IsString(f) ? f->valuestring : "must be a string", cJSON_IsString(f) ? "\"" : "",
                cfg->n_prompts > 0 ? "its prompts: " : "it has no prompts", known);
    *bad = 1;
    return NULL;
}

/* Puts the request's prompt before each text input (token ids are left as
 * they are), as sentence-transformers and TEI do before tokenising.
 * 0, or -1 after filling rp. */
static int apply_prompt(const server *srv, const cJSON *root, api_family api, textjob_input *in,
                        int n, prompted *pt, reply *rp)
{
    int bad = 0;
    const emb_prompt *p = request_prompt(srv, root, api, &bad, rp);
    if (bad)
        return -1;
    if (p == NULL || p->text[0] == '\0')
        return 0;
    pt->texts = calloc((size_t)n, sizeof(char *));
    if (pt->texts == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        return -1;
    }
    pt->n = n;
    const size_t plen = strlen(p->text);
    for (int i = 0; i < n; i++) {
        if (in[i].text == NULL)
            continue;
        char *t = malloc(plen + in[i].len + 1);
        if (t == NULL) {
            reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
            return -1;
        }
        memcpy(t, p->text, plen);
        memcpy(t + plen, in[i].text, in[i].len);
        t[plen + in[i].len] = '\0';
        pt->texts[i] = t;
        in[i].text = t;
        in[i].len += plen;
    }
    return 0;
}

char *route_prompted_text(const server *srv, const cJSON *root, api_family api, const char *text,
                          reply *rp)
{
    int bad = 0;
    const emb_prompt *p = request_prompt(srv, root, api, &bad, rp);
    if (bad)
        return NULL;
    const char *prefix = p != NULL ? p->text : "";
    size_t plen = strlen(prefix), tlen = strlen(text);
    char *t = malloc(plen + tlen + 1);
    if (t == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    memcpy(t, prefix, plen);
    memcpy(t + plen, text, tlen + 1);
    return t;
}

/* An upper bound of the response's size: every float at its longest
 * (sb_json_floats reserves 16 bytes each), or base64's 4 bytes per 3. */
static size_t embed_response_bound(const server *srv, const embed_state *st)
{
    const size_t d = (size_t)(st->dimensions > 0 ? st->dimensions : emb_model_dim(srv->model));
    const size_t vector = st->base64 ? (d * sizeof(float) + 2) / 3 * 4 + 2 : d * 16 + 2;
    const size_t per_input = vector + (st->tj.api == API_OPENAI ? 64 : 1);
    return (size_t)st->n * per_input + 1024;
}

typedef int (*embed_options_fn)(server *srv, const cJSON *root, embed_state *st, int *truncate,
                                int *left, reply *rp);

/* Both embedding routes: parse, read the inputs (`field`) and the API's
 * options, tokenise, submit. */
static route_result handle_embeddings(server *srv, request *rq, reply *rp, api_family api,
                                      const char *field, int allow_ids,
                                      embed_options_fn read_options)
{
    route_result result = ROUTE_DONE;
    textjob_input *in = NULL;
    prompted pt = {0};
    cJSON *root = route_parse_body(rq, api, rp);
    if (root == NULL)
        return ROUTE_DONE;
    embed_state *st = new_embed_state(rq, api, rp);
    if (st == NULL)
        goto out;
    st->n = collect_inputs(cJSON_GetObjectItemCaseSensitive(root, field), field, allow_ids,
                           srv->opts.max_client_batch_size, api, &in, rp);
    if (st->n == 0)
        goto out;
    int truncate = srv->opts.auto_truncate;
    int left = 0;
    if (read_options(srv, root, st, &truncate, &left, rp) != 0)
        goto out;
    if (apply_prompt(srv, root, api, in, st->n, &pt, rp) != 0)
        goto out;
    /* TEI: "model_version" or the header; OpenAI: "model": "name@N" or the header */
    uint32_t pin = 0;
    if (route_get_pin(rq, api == API_TEI ? root : NULL, api, &pin, rp) != 0)
        goto out;
    if (st->pin == 0)
        st->pin = pin;
    if (!route_response_fits(srv, embed_response_bound(srv, st), api,
                             "the number of inputs or `dimensions`", rp))
        goto out;
    textjob_opts to = {.truncate = truncate, .truncate_left = left, .noun = "input",
                       .truncate_hint = 1};
    if (textjob_encode(srv, &st->tj, api, in, st->n, &to, rp) != 0)
        goto out;
    for (int i = 0; i < st->n; i++) {
        if (in[i].ids == NULL)
            learner_offer(srv->learner, in[i].text, in[i].len, SAMPLES_SRC_EMBED);
    }
    if (st->pin != 0 && textjob_pin(srv, &st->tj, st->pin, rp) != 0)
        goto out;
    result = textjob_submit(srv, rq, &st->tj, st->pin != 0 ? TEXTJOB_PINNED : TEXTJOB_CURRENT);
out:
    prompted_free(&pt);
    free(in);
    cJSON_Delete(root);
    return result;
}

static route_result handle_embed(server *srv, request *rq, reply *rp)
{
    return handle_embeddings(srv, rq, rp, API_TEI, "inputs", 0, tei_options);
}

static route_result handle_openai_embeddings(server *srv, request *rq, reply *rp)
{
    return handle_embeddings(srv, rq, rp, API_OPENAI, "input", 1, openai_options);
}

/* The request's view of vector i, made in place in st->out: its first
 * `dimensions` values, normalised when asked. *dim gets the length. */
static const float *final_vector(const server *srv, embed_state *st, int i, int *dim)
{
    const int C = emb_model_dim(srv->model);
    const int d = st->dimensions > 0 ? st->dimensions : C;
    float *v = st->tj.out + (long)i * C;
    if (st->normalize)
        l2norm_forward(v, 1, d); /* the same function as embedd embed's */
    *dim = d;
    return v;
}

static void finish_embed(server *srv, request *rq, reply *rp)
{
    embed_state *st = rq->state;
    if (textjob_failed(&st->tj, rp))
        return;
    sb_putc(&rp->body, '[');
    for (int i = 0; i < st->n; i++) {
        int d = 0;
        const float *v = final_vector(srv, st, i, &d);
        if (i > 0)
            sb_putc(&rp->body, ',');
        sb_json_floats(&rp->body, v, d);
    }
    sb_putc(&rp->body, ']');
}

static void finish_openai_embeddings(server *srv, request *rq, reply *rp)
{
    embed_state *st = rq->state;
    if (textjob_failed(&st->tj, rp))
        return;
    sb_puts(&rp->body, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < st->n; i++) {
        int d = 0;
        const float *v = final_vector(srv, st, i, &d);
        sb_printf(&rp->body, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":",
                  i > 0 ? "," : "", i);
        if (st->base64) {
            /* little-endian f32 bytes (x86-64 and arm64 are little-endian) */
            sb_putc(&rp->body, '"');
            sb_base64(&rp->body, (const unsigned char *)v, sizeof(float) * (size_t)d);
            sb_putc(&rp->body, '"');
        } else {
            sb_json_floats(&rp->body, v, d);
        }
        sb_putc(&rp->body, '}');
    }
    /* the version that made these vectors: "name@N" */
    char model[512];
    snprintf(model, sizeof model, "%s@%u", srv->model_name, st->tj.mv->id);
    sb_puts(&rp->body, "],\"model\":");
    sb_json_string(&rp->body, model);
    sb_printf(&rp->body, ",\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld}}",
              st->tj.tokens, st->tj.tokens);
}

/* ---- /tokenize ------------------------------------------------------------ */

/* Bytes sb_json_string writes for s. */
static size_t json_string_len(const char *s)
{
    size_t n = 2;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        n += *p == '"' || *p == '\\' || *p == '\n' || *p == '\r' || *p == '\t' ? 2
             : *p < 0x20                                                     ? 6
                                                                             : 1;
    return n;
}

/* Where tokens came from in their input: byte spans (emb_token_spans). */
typedef struct token_spans {
    int32_t *start, *stop;     /* n rows of max_len, as the ids */
} token_spans;

/* One token as /tokenize writes it, as TEI does: a special token ([CLS],
 * [SEP]: first or last) has its vocabulary text and null offsets, and is
 * skipped (0 bytes) when add_special_tokens is false; any other has the
 * bytes [start, stop) of the input it came from as its text. With b NULL,
 * only measures. */
static size_t put_token(const emb_model *m, strbuf *b, int32_t id, int special, int add_special,
                        int first, const textjob_input *in, int32_t start, int32_t stop)
{
    if (special && !add_special)
        return 0;
    if (b == NULL) /* {"id":N,"text":T,"special":false,"start":N,"stop":N}, */
        return 40 + 11 + 40 + 6 * (size_t)(stop - start) +
               json_string_len(special ? emb_tokenizer_token(m->tok, id) : "");
    sb_printf(b, "%s{\"id\":%d,\"text\":", first ? "" : ",", id);
    if (special) {
        const char *text = emb_tokenizer_token(m->tok, id);
        sb_json_string(b, text != NULL ? text : "");
        sb_puts(b, ",\"special\":true,\"start\":null,\"stop\":null}");
        return 1;
    }
    /* a span always ends on a character boundary: the slice is valid UTF-8 */
    char *text = strndup(in->text + start, (size_t)(stop - start));
    sb_json_string(b, text != NULL ? text : "");
    free(text);
    sb_printf(b, ",\"special\":false,\"start\":%d,\"stop\":%d}", start, stop);
    return 1;
}

/* Tokenises every input into ids (n rows of max_len), counts[i] its
 * length, and the spans of its tokens. 0, or -1 after filling rp. */
static int tokenize_all(const emb_model *m, const textjob_input *in, int n, int32_t *ids,
                        int *counts, token_spans *sp, reply *rp)
{
    const int max_len = m->cfg.max_seq_length;
    const emb_special_tokens special = emb_tokenizer_specials(m->tok);
    for (int i = 0; i < n; i++) {
        int32_t *row = ids + (size_t)i * (size_t)max_len;
        counts[i] = emb_encode(m->tok, in[i].text, in[i].len, max_len, 0, row, NULL);
        if (counts[i] < 0) {
            reply_error(rp, API_TEI, 422, "Tokenizer", "input %d could not be tokenised", i);
            return -1;
        }
        /* the tokens between [CLS] and [SEP] */
        int first = counts[i] > 0 && row[0] == special.cls_id ? 1 : 0;
        int last = counts[i] > first && row[counts[i] - 1] == special.sep_id ? counts[i] - 1
                                                                              : counts[i];
        int32_t *st = sp->start + (size_t)i * (size_t)max_len;
        int32_t *sp_stop = sp->stop + (size_t)i * (size_t)max_len;
        for (int k = 0; k < counts[i]; k++)
            st[k] = sp_stop[k] = 0;
        if (emb_token_spans(m->tok, in[i].text, in[i].len, row + first, last - first, st + first,
                            sp_stop + first) != 0) {
            reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* Writes the tokens of every input, or only measures them when b is NULL. */
static size_t put_tokens(const emb_model *m, strbuf *b, const int32_t *ids, const int *counts,
                         int n, int add_special, const textjob_input *in, const token_spans *sp)
{
    const int max_len = m->cfg.max_seq_length;
    const emb_special_tokens specials = emb_tokenizer_specials(m->tok);
    size_t bytes = 2;
    if (b != NULL)
        sb_putc(b, '[');
    for (int i = 0; i < n; i++) {
        const size_t row_at = (size_t)i * (size_t)max_len;
        const int32_t *row = ids + row_at;
        if (b != NULL)
            sb_puts(b, i > 0 ? ",[" : "[");
        bytes += 3;
        int first = 1;
        for (int k = 0; k < counts[i]; k++) {
            int edge = k == 0 || k == counts[i] - 1;
            int special = edge && (row[k] == specials.cls_id || row[k] == specials.sep_id);
            size_t w = put_token(m, b, row[k], special, add_special, first, &in[i],
                                 sp->start[row_at + k], sp->stop[row_at + k]);
            bytes += w;
            first = first && w == 0;
        }
        if (b != NULL)
            sb_putc(b, ']');
    }
    if (b != NULL)
        sb_putc(b, ']');
    return bytes;
}

static route_result handle_tokenize(server *srv, request *rq, reply *rp)
{
    const api_family api = API_TEI;
    const emb_model *m = srv->model;
    textjob_input *in = NULL;
    int32_t *ids = NULL;
    int *counts = NULL;
    token_spans sp = {NULL, NULL};
    cJSON *root = route_parse_body(rq, api, rp);
    if (root == NULL)
        return ROUTE_DONE;
    int n = collect_inputs(cJSON_GetObjectItemCaseSensitive(root, "inputs"), "inputs", 0,
                           srv->opts.max_client_batch_size, api, &in, rp);
    if (n == 0)
        goto out;
    int add_special = route_get_bool(root, "add_special_tokens", 1, api, rp);
    if (add_special < 0)
        goto out;
    const size_t cells = (size_t)n * (size_t)m->cfg.max_seq_length;
    ids = malloc(sizeof(int32_t) * cells);
    counts = malloc(sizeof(int) * (size_t)n);
    sp.start = malloc(sizeof(int32_t) * cells);
    sp.stop = malloc(sizeof(int32_t) * cells);
    if (ids == NULL || counts == NULL || sp.start == NULL || sp.stop == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    if (tokenize_all(m, in, n, ids, counts, &sp, rp) != 0)
        goto out;
    /* measured before it is built: a small body must not make a huge reply */
    if (!route_response_fits(srv, put_tokens(m, NULL, ids, counts, n, add_special, in, &sp), api,
                             "the number or length of `inputs`", rp))
        goto out;
    put_tokens(m, &rp->body, ids, counts, n, add_special, in, &sp);
out:
    free(sp.start);
    free(sp.stop);
    free(ids);
    free(counts);
    free(in);
    cJSON_Delete(root);
    return ROUTE_DONE;
}

/* ---- /health, /info, /metrics, /v1/models -------------------------------- */

/* The item store's health as JSON: {"status":"ok"} or {"status":
 * "degraded","reason":...,"degraded_seconds":...,"writes":"refused",
 * "reads":"ok"}, then (with detail, for /info) its counters. */
static void put_store_health(strbuf *b, const store_health *h, int detail)
{
    sb_printf(b, "{\"status\":\"%s\"", h->degraded ? "degraded" : "ok");
    if (h->degraded) {
        sb_puts(b, ",\"reason\":");
        sb_json_string(b, h->reason);
        sb_printf(b, ",\"degraded_seconds\":%.1f,\"writes\":\"refused\",\"reads\":\"ok\"",
                  h->degraded_for);
    }
    if (detail) {
        sb_printf(b, ",\"io_errors\":%llu,\"writes_refused\":%llu,\"recoveries\":%llu,"
                     "\"last_error\":",
                  (unsigned long long)h->io_errors_total, (unsigned long long)h->writes_refused,
                  (unsigned long long)h->recoveries);
        if (h->last_error[0] != '\0')
            sb_json_string(b, h->last_error);
        else
            sb_puts(b, "null");
    }
    sb_putc(b, '}');
}

/* The store's health; with --store postgres, PostgreSQL out of reach
 * counts as degraded: writes are refused, reads go on from the copy. */
static void get_store_health(server *srv, store_health *h)
{
    store_get_health(srv->store, h);
    if (srv->cluster == NULL)
        return;
    cluster_stats cs;
    cluster_get_stats(srv->cluster, &cs);
    if (cs.connected)
        return;
    h->degraded = 1;
    h->degraded_for = cs.lag_seconds;
    snprintf(h->reason, sizeof h->reason, "%s",
             cs.last_error[0] != '\0' ? cs.last_error : "postgres: not connected");
}

/* 200 {"status":"ok"} when well. While the store refuses writes after an
 * I/O error: 503 with the reason, so that a load balancer sends traffic
 * elsewhere; GET /health?for=read answers 200 (same body) for a pool that
 * only reads, since searches still work. */
static route_result handle_health(server *srv, request *rq, reply *rp)
{
    if (!atomic_load(&srv->ready)) {
        reply_error(rp, API_TEI, 503, "Unhealthy", "server is not ready");
        return ROUTE_DONE;
    }
    store_health h;
    get_store_health(srv, &h);
    const char *purpose = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "for");
    int reads_only = purpose != NULL && strcmp(purpose, "read") == 0;
    if (h.degraded && !reads_only)
        rp->status = http_error_of_kind(EMB_ERR_UNAVAILABLE)->status;
    put_store_health(&rp->body, &h, 0);
    qd_health_counts(srv, &rp->body); /* {"status":"ok"} -> {"status":"ok","collections":n,...} */
    return ROUTE_DONE;
}

/* Where the training texts (request texts) are kept: "disk" with the
 * sample log's path (mode 0600), "memory" (lost at exit), or "none" when
 * training is off and nothing is kept. */
static void info_train_samples(server *srv, strbuf *b)
{
    const server_opts *o = &srv->opts;
    const int on = learner_enabled(srv->learner);
    const int disk = on && o->data_dir != NULL && o->train_persist_samples;
    sb_printf(b, ",\"train_samples\":{\"kept\":\"%s\",\"persist\":%s,\"path\":",
              !on ? "none" : disk ? "disk" : "memory", disk ? "true" : "false");
    if (disk) {
        char path[4200];
        snprintf(path, sizeof path, "%s/samples.log", o->data_dir);
        sb_json_string(b, path);
    } else {
        sb_puts(b, "null");
    }
    sb_puts(b, "}");
}

/* With --store postgres: the follower's state (cluster.h). */
static void info_replication(server *srv, strbuf *b)
{
    if (srv->cluster == NULL)
        return;
    cluster_stats cs;
    cluster_get_stats(srv->cluster, &cs);
    sb_puts(b, ",\"replication\":{\"replica\":");
    sb_json_string(b, srv->replica);
    sb_printf(b,
              ",\"connected\":%s,\"applied_seq\":%llu,\"head_seq\":%llu,"
              "\"lag_changes\":%llu,\"lag_seconds\":%.3f,\"reconnects\":%llu,"
              "\"changes_applied\":%llu,\"trainer\":%s,\"serving_version\":%u,"
              "\"target_version\":%u,\"samples_forwarded\":%llu,\"samples_received\":%llu,"
              "\"last_error\":",
              cs.connected ? "true" : "false", (unsigned long long)cs.applied_seq,
              (unsigned long long)cs.head_seq,
              (unsigned long long)(cs.head_seq - cs.applied_seq), cs.lag_seconds,
              (unsigned long long)cs.reconnects, (unsigned long long)cs.changes_applied,
              cs.leader ? "true" : "false", cs.serving_version, cs.target_version,
              (unsigned long long)cs.samples_forwarded, (unsigned long long)cs.samples_received);
    if (cs.last_error[0] != '\0')
        sb_json_string(b, cs.last_error);
    else
        sb_puts(b, "null");
    sb_putc(b, '}');
}

static route_result handle_info(server *srv, request *rq, reply *rp)
{
    const emb_config *c = &srv->model->cfg;
    strbuf *b = &rp->body;
    sb_puts(b, "{\"model_id\":");
    sb_json_string(b, srv->model_name);
    sb_puts(b, ",\"model_dir\":");
    sb_json_string(b, srv->opts.model_dir);
    sb_printf(b,
              ",\"model_version\":%u,\"model_type\":\"embedding\",\"dimension\":%d,"
              "\"pooling\":\"%s\",\"normalize\":%s,\"max_input_length\":%d,"
              "\"max_batch_tokens\":%d,\"max_client_batch_size\":%d,"
              "\"max_concurrent_requests\":%d,\"payload_limit\":%d,\"auto_truncate\":%s,"
              "\"queue_depth\":%d,\"version\":\"%s\",\"store\":\"%s\",\"data_dir\":",
              versions_current_id(srv->versions), emb_config_dim(c), emb_pooling_name(c->pooling),
              c->normalize ? "true" : "false",
              c->max_seq_length, srv->opts.max_batch_tokens, srv->opts.max_client_batch_size,
              srv->opts.max_concurrent_requests, srv->opts.payload_limit,
              srv->opts.auto_truncate ? "true" : "false", batcher_queue_depth(srv->batcher),
              EMBEDD_VERSION,
              srv->cluster_mode ? "postgres" : srv->opts.data_dir != NULL ? "disk" : "memory");
    if (srv->opts.data_dir != NULL)
        sb_json_string(b, srv->opts.data_dir);
    else
        sb_puts(b, "null");
    sb_printf(b, ",\"items\":%ld,\"training\":%s", store_count(srv->store),
              learner_enabled(srv->learner) ? "true" : "false");
    info_replication(srv, b);
    info_train_samples(srv, b);
    store_health h;
    get_store_health(srv, &h);
    sb_puts(b, ",\"store_health\":");
    put_store_health(b, &h, 1);
    sb_puts(b, ",\"blas_coretype\":");
    sb_json_string(b, openblas_get_corename()); /* the kernel OpenBLAS loaded (main.c) */
    sb_printf(b, ",\"precision\":\"%s\"", emb_precision_name(srv->model->precision));
    /* config_sentence_transformers.json's prompts, and the default one
     * (after serve --default-prompt-name) */
    sb_puts(b, ",\"prompts\":{");
    for (int i = 0; i < c->n_prompts; i++) {
        if (i > 0)
            sb_putc(b, ',');
        sb_json_string(b, c->prompts[i].name);
        sb_putc(b, ':');
        sb_json_string(b, c->prompts[i].text);
    }
    sb_puts(b, "},\"default_prompt_name\":");
    if (c->default_prompt[0] != '\0')
        sb_json_string(b, c->default_prompt);
    else
        sb_puts(b, "null");
    sb_putc(b, '}');
    return ROUTE_DONE;
}

static route_result handle_metrics(server *srv, request *rq, reply *rp)
{
    char *text = metrics_render(srv->mx);
    if (text == NULL) {
        reply_fail(rp, API_TEI, EMB_ERR_NO_MEMORY, "out of memory");
        return ROUTE_DONE;
    }
    rp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    sb_puts(&rp->body, text);
    free(text);
    return ROUTE_DONE;
}

static route_result handle_models(server *srv, request *rq, reply *rp)
{
    sb_puts(&rp->body, "{\"object\":\"list\",\"data\":[{\"id\":");
    sb_json_string(&rp->body, srv->model_name);
    sb_puts(&rp->body, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"embedd\"}]}");
    return ROUTE_DONE;
}

/* ---- TEI and OpenAI drop-in: /similarity, /decode, /v1/models/{id} ------- */

/* POST /similarity (TEI): {"inputs": {"source_sentence": S, "sentences":
 * [..]}} -> the cosine of S with each sentence, in order. The source and
 * the sentences go in one job: row 0 is the source. */
static route_result handle_similarity(server *srv, request *rq, reply *rp)
{
    const api_family api = API_TEI;
    route_result result = ROUTE_DONE;
    textjob_input *in = NULL, *sent = NULL;
    prompted pt = {0};
    cJSON *root = route_parse_body(rq, api, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(inputs, "source_sentence");
    if (!cJSON_IsObject(inputs)) {
        reply_error(rp, api, 422, "Validation",
                    "`inputs` must be an object {\"source_sentence\": ..., \"sentences\": [...]}");
        goto out;
    }
    if (!cJSON_IsString(src) || src->valuestring[0] == '\0') {
        reply_error(rp, api, 422, "Validation",
                    "`inputs.source_sentence` must be a non-empty string");
        goto out;
    }
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(inputs, "sentences");
    if (!cJSON_IsArray(list)) {
        reply_error(rp, api, 422, "Validation", "`inputs.sentences` must be an array of strings");
        goto out;
    }
    /* one less than the batch limit: the source takes a row too */
    int n = collect_inputs(list, "inputs.sentences", 0, srv->opts.max_client_batch_size - 1, api,
                           &sent, rp);
    if (n == 0)
        goto out;
    embed_state *st = new_embed_state(rq, api, rp);
    if (st == NULL)
        goto out;
    st->n = n + 1;
    st->normalize = 1;
    in = calloc((size_t)st->n, sizeof *in);
    if (in == NULL) {
        reply_fail(rp, api, EMB_ERR_NO_MEMORY, "out of memory");
        goto out;
    }
    in[0].text = src->valuestring;
    in[0].len = strlen(src->valuestring);
    memcpy(in + 1, sent, sizeof *in * (size_t)n);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if (apply_prompt(srv, cJSON_IsObject(params) ? params : root, api, in, st->n, &pt, rp) != 0)
        goto out;
    int truncate = route_get_bool(cJSON_IsObject(params) ? params : root, "truncate",
                                  srv->opts.auto_truncate, api, rp);
    if (truncate < 0)
        goto out;
    textjob_opts to = {.truncate = truncate, .noun = "input", .truncate_hint = 1};
    if (textjob_encode(srv, &st->tj, api, in, st->n, &to, rp) != 0)
        goto out;
    result = textjob_submit(srv, rq, &st->tj, TEXTJOB_CURRENT);
out:
    prompted_free(&pt);
    free(in);
    free(sent);
    cJSON_Delete(root);
    return result;
}

static void finish_similarity(server *srv, request *rq, reply *rp)
{
    embed_state *st = rq->state;
    if (textjob_failed(&st->tj, rp))
        return;
    int d = 0;
    const float *source = final_vector(srv, st, 0, &d);
    sb_putc(&rp->body, '[');
    for (int i = 1; i < st->n; i++) {
        const float *v = final_vector(srv, st, i, &d);
        float cos = cblas_sdot(d, source, 1, v, 1); /* both have unit length */
        if (i > 1)
            sb_putc(&rp->body, ',');
        sb_printf(&rp->body, "%.7g", isfinite(cos) ? (double)cos : 0.0);
    }
    sb_putc(&rp->body, ']');
}

/* HF's clean_up_tokenization_spaces, which TEI's decode applies: these
 * replacements, in this order, over the whole text. */
static void cleanup_spaces(strbuf *text)
{
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's",
                                       " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (size_t k = 0; k < sizeof from / sizeof from[0]; k++) {
        const size_t fl = strlen(from[k]), tl = strlen(to[k]);
        size_t w = 0;
        for (size_t r = 0; r < text->len;) {
            if (text->len - r >= fl && memcmp(text->buf + r, from[k], fl) == 0) {
                memmove(text->buf + w, to[k], tl); /* shorter: never overtakes r */
                w += tl;
                r += fl;
            } else {
                text->buf[w++] = text->buf[r++];
            }
        }
        text->len = w;
        text->buf[w] = '\0';
    }
}

/* The text of one row of ids, as a JSON string into b. 0, or -1 after
 * filling rp (an id outside the vocabulary). */
static int put_decoded(const emb_model *m, strbuf *b, const cJSON *row, int skip_special,
                       int which, reply *rp)
{
    const emb_special_tokens sp = emb_tokenizer_specials(m->tok);
    strbuf text;
    sb_init(&text, (size_t)1 << 26);
    int k = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, row) {
        const double v = el->valuedouble;
        const char *tok = v >= 0 && v < 2147483647.0 ? emb_tokenizer_token(m->tok, (int32_t)v)
                                                     : NULL;
        if (tok == NULL) {
            char where[32] = "";
            if (which >= 0)
                snprintf(where, sizeof where, "[%d]", which);
            reply_error(rp, API_TEI, 422, "Validation",
                        "`ids%s[%d]`: %.0f is not a token id (vocabulary of %d)", where, k, v,
                        emb_tokenizer_vocab_size(m->tok));
            sb_free(&text);
            return -1;
        }
        int32_t id = (int32_t)v;
        int special = id == sp.cls_id || id == sp.sep_id || id == sp.pad_id ||
                      id == sp.mask_id || id == sp.unk_id;
        k++;
        if (skip_special && special)
            continue;
        if (strncmp(tok, "##", 2) == 0)
            sb_puts(&text, tok + 2);     /* a word's continuation joins it */
        else {
            if (text.len > 0)
                sb_putc(&text, ' ');
            sb_puts(&text, tok);
        }
    }
    if (text.len > 0)
        cleanup_spaces(&text);
    sb_json_string(b, text.len > 0 ? text.buf : "");
    sb_free(&text);
    return 0;
}

/* POST /decode (TEI): {"ids": [..] or [[..], ..], "skip_special_tokens":
 * true} -> ["text", ..], one string per row. */
static route_result handle_decode(server *srv, request *rq, reply *rp)
{
    const api_family api = API_TEI;
    cJSON *root = route_parse_body(rq, api, rp);
    if (root == NULL)
        return ROUTE_DONE;
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "ids");
    int skip = route_get_bool(root, "skip_special_tokens", 1, api, rp);
    if (skip < 0)
        goto out;
    if (!cJSON_IsArray(ids) || cJSON_GetArraySize(ids) == 0) {
        reply_error(rp, api, 422, "Validation",
                    "`ids` must be a non-empty array of token ids or of arrays of them");
        goto out;
    }
    int nested = cJSON_IsArray(ids->child);
    const cJSON *row;
    if (!nested && !all_integers(ids)) {
        reply_error(rp, api, 422, "Validation", "`ids` must hold integers only");
        goto out;
    }
    if (nested && cJSON_GetArraySize(ids) > srv->opts.max_client_batch_size) {
        reply_error(rp, api, 422, "Validation",
                    "batch size %d exceeds the maximum of %d inputs per request",
                    cJSON_GetArraySize(ids), srv->opts.max_client_batch_size);
        goto out;
    }
    sb_putc(&rp->body, '[');
    if (!nested) {
        if (put_decoded(srv->model, &rp->body, ids, skip, -1, rp) != 0)
            goto out;
    } else {
        int i = 0;
        cJSON_ArrayForEach(row, ids) {
            if (!cJSON_IsArray(row) || !all_integers(row)) {
                reply_error(rp, api, 422, "Validation", "`ids[%d]` must be an array of token ids",
                            i);
                goto out;
            }
            if (i++ > 0)
                sb_putc(&rp->body, ',');
            if (put_decoded(srv->model, &rp->body, row, skip, i - 1, rp) != 0)
                goto out;
        }
    }
    sb_putc(&rp->body, ']');
out:
    cJSON_Delete(root);
    return ROUTE_DONE;
}

/* GET /v1/models/{id} (OpenAI's models.retrieve): the served model, also
 * as "name@N" for a version; 404 in OpenAI's shape for another id. */
static route_result handle_model_get(server *srv, request *rq, reply *rp)
{
    const char *id = rq->params.at[0];
    size_t len = rq->params.len[0];
    size_t name_len = strlen(srv->model_name);
    int ours = len >= name_len && strncmp(id, srv->model_name, name_len) == 0 &&
               (len == name_len || id[name_len] == '@');
    if (!ours) {
        reply_openai_error(rp, 404, "model", "model_not_found",
                           "The model `%.*s` does not exist", (int)(len > 200 ? 200 : len), id);
        return ROUTE_DONE;
    }
    char name[512];
    snprintf(name, sizeof name, "%.*s", (int)len, id);
    sb_puts(&rp->body, "{\"id\":");
    sb_json_string(&rp->body, name);
    sb_puts(&rp->body, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"embedd\"}");
    return ROUTE_DONE;
}

/* ---- the table ------------------------------------------------------------ */

static const route routes[] = {
    /* method, path, name, api, auth, compute, handle, finish, rest */
    {"POST", "/embed", "embed", API_TEI, 1, 1, handle_embed, finish_embed, 0},
    {"POST", "/v1/embeddings", "openai_embeddings", API_OPENAI, 1, 1, handle_openai_embeddings,
     finish_openai_embeddings, 0},
    {"POST", "/tokenize", "tokenize", API_TEI, 1, 1, handle_tokenize, NULL, 0},
    {"GET", "/v1/models", "openai_models", API_OPENAI, 1, 0, handle_models, NULL, 0},
    {"GET", "/info", "info", API_TEI, 1, 0, handle_info, NULL, 0},
    {"GET", "/health", "health", API_TEI, 0, 0, handle_health, NULL, 0},
    {"GET", "/metrics", "metrics", API_TEI, 0, 0, handle_metrics, NULL, 0},
    {"POST", "/items", "items_upsert", API_TEI, 1, 1, handle_items_upsert, finish_items_upsert, 0},
    {"GET", "/items/count", "items_count", API_TEI, 1, 0, handle_items_count, NULL, 0},
    {"POST", "/items/delete", "items_delete", API_TEI, 1, 0, handle_items_delete, NULL, 0},
    {"GET", "/items/{id}", "item_get", API_TEI, 1, 0, handle_item_get, NULL, 1},
    {"DELETE", "/items/{id}", "item_delete", API_TEI, 1, 0, handle_item_delete, NULL, 1},
    {"POST", "/similar", "similar", API_TEI, 1, 1, handle_similar, finish_similar, 0},
    {"GET", "/similar", "similar_get", API_TEI, 1, 1, handle_similar_get, finish_similar, 0},
    {"GET", "/train/status", "train_status", API_TEI, 1, 0, handle_train_status, NULL, 0},
    {"POST", "/train/pause", "train_pause", API_TEI, 1, 0, handle_train_pause, NULL, 0},
    {"POST", "/train/resume", "train_resume", API_TEI, 1, 0, handle_train_resume, NULL, 0},
    {"POST", "/train/rollback", "train_rollback", API_TEI, 1, 0, handle_train_rollback, NULL, 0},
    {"POST", "/train/samples", "train_samples", API_TEI, 1, 0, handle_train_samples, NULL, 0},
    {"POST", "/train/promote", "train_promote", API_TEI, 1, 0, handle_train_promote, NULL, 0},
    {"GET", "/train/versions", "train_versions", API_TEI, 1, 0, handle_train_versions, NULL, 0},
    {"GET", "/train/versions/stream", "train_versions_stream", API_TEI, 1, 0,
     handle_train_versions_stream, NULL, 0},
    /* TEI and OpenAI drop-in: TEI's base URL, OpenAI's path without /v1 */
    {"POST", "/", "tei_embed", API_TEI, 1, 1, handle_embed, finish_embed, 0},
    {"POST", "/embeddings", "embeddings", API_OPENAI, 1, 1, handle_openai_embeddings,
     finish_openai_embeddings, 0},
    {"POST", "/similarity", "similarity", API_TEI, 1, 1, handle_similarity, finish_similarity, 0},
    {"POST", "/decode", "decode", API_TEI, 1, 0, handle_decode, NULL, 0},
    {"GET", "/v1/models/{id}", "openai_model", API_OPENAI, 1, 0, handle_model_get, NULL, 0},
    /* Qdrant collections (routes_qdrant.c); "/points/search" and its kin come
     * before "/points/{id}", which would otherwise take them as ids */
    {"GET", "/collections", "qd_collections", API_QDRANT, 1, 0, handle_qd_collections, NULL, 0},
    {"PUT", "/collections/{name}", "qd_collection_create", API_QDRANT, 1, 0,
     handle_qd_collection_create, NULL, 0},
    {"GET", "/collections/{name}", "qd_collection_get", API_QDRANT, 1, 0,
     handle_qd_collection_get, NULL, 0},
    {"DELETE", "/collections/{name}", "qd_collection_delete", API_QDRANT, 1, 0,
     handle_qd_collection_delete, NULL, 0},
    {"GET", "/collections/{name}/exists", "qd_collection_exists", API_QDRANT, 1, 0,
     handle_qd_collection_exists, NULL, 0},
    {"PUT", "/collections/{name}/points", "qd_upsert", API_QDRANT, 1, 1, handle_qd_upsert,
     finish_qd_upsert, 0},
    {"POST", "/collections/{name}/points", "qd_retrieve", API_QDRANT, 1, 0, handle_qd_retrieve,
     NULL, 0},
    {"POST", "/collections/{name}/points/search", "qd_search", API_QDRANT, 1, 1,
     handle_qd_search, finish_qd_search, 0},
    {"POST", "/collections/{name}/points/query", "qd_query", API_QDRANT, 1, 1, handle_qd_query,
     finish_qd_search, 0},
    {"POST", "/collections/{name}/points/delete", "qd_delete", API_QDRANT, 1, 0,
     handle_qd_delete, NULL, 0},
    {"POST", "/collections/{name}/points/count", "qd_count", API_QDRANT, 1, 0, handle_qd_count,
     NULL, 0},
    {"GET", "/collections/{name}/points/{id}", "qd_point_get", API_QDRANT, 1, 0,
     handle_qd_point_get, NULL, 0},
    /* web console, API docs and the learning curve (routes_web.c); the
     * console and docs pages load without a key, their API calls carry it */
    {"GET", "/", "web_root", API_TEI, 0, 0, handle_web_root, NULL, 0},
    {"GET", "/openapi.json", "openapi", API_TEI, 0, 0, handle_web_openapi, NULL, 0},
    {"GET", "/docs", "docs", API_TEI, 0, 0, handle_web_docs, NULL, 0},
    {"GET", "/train/history", "train_history", API_TEI, 1, 0, handle_train_history, NULL, 0},
};

/* Matches path against a route's template: "{name}" stands for one
 * non-empty segment (no '/'), except a final "{...}" of a rest route
 * (rt->rest), which takes the rest of the path, slashes included (item ids
 * may hold them, percent-encoded). Fills params (pointers into path) when
 * not NULL. 1 on a match. */
static int route_matches(const route *rt, const char *path, route_params *params)
{
    const char *t = rt->path, *p = path;
    int np = 0;
    while (*t != '\0') {
        if (*t != '{') {
            if (*t != *p)
                return 0;
            t++, p++;
            continue;
        }
        const char *close = strchr(t, '}');
        if (close == NULL)
            return 0;
        size_t len = close[1] == '\0' && rt->rest ? strlen(p) : strcspn(p, "/");
        if (len == 0 || np >= ROUTE_MAX_PARAMS)
            return 0;
        if (params != NULL) {
            params->at[np] = p;
            params->len[np] = len;
        }
        np++;
        p += len;
        t = close + 1;
    }
    if (*p != '\0')
        return 0;
    if (params != NULL)
        params->n = np;
    return 1;
}

/* The pass a route is tried in: literal paths, then templates of whole
 * segments, then rest templates. */
static int route_pass(const route *rt)
{
    if (strchr(rt->path, '{') == NULL)
        return 0;
    return rt->rest ? 2 : 1;
}

const route *routes_find(const char *path, const char *method, int *path_known,
                         const char **allow, route_params *params)
{
    *path_known = 0;
    /* Literal paths first, and alone: /items/count and /items/delete are
     * never the items "count" and "delete" (whatever the method: another
     * one gets 405 with Allow). Such items are reached through the body
     * routes (POST /items/delete {"ids": ["count"]}). */
    /* every method of the path, for the Allow header of a 405 ("GET, DELETE");
     * read by the same thread right after, when the reply is sent */
    static _Thread_local char methods[64];
    size_t n = 0;
    methods[0] = '\0';
    for (int pass = 0; pass <= 2 && !*path_known; pass++) {
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
            if (route_pass(&routes[i]) != pass || !route_matches(&routes[i], path, NULL))
                continue;
            *path_known = 1;
            if (strcmp(routes[i].method, method) == 0) {
                if (params != NULL)
                    route_matches(&routes[i], path, params);
                return &routes[i];
            }
            n += (size_t)snprintf(methods + n, sizeof methods - n, "%s%s", n > 0 ? ", " : "",
                                  routes[i].method);
            if (n >= sizeof methods)
                n = sizeof methods - 1;
        }
    }
    *allow = methods;
    return NULL;
}

const route *routes_table(size_t *n)
{
    *n = sizeof routes / sizeof routes[0];
    return routes;
}
