/* config.c: load and save the JSON files of a sentence-transformers model
 * directory (see config.h for the files and their fallbacks).
 *
 * Loading fills a local emb_config step by step and copies it out only when
 * every file checked out, so *cfg is never half-filled:
 *   load_bert       config.json: BERT hyperparameters, validated by
 *                   check_bert (the same check guards emb_config_save).
 *   load_modules    modules.json: which folder holds the Pooling config,
 *                   the Dense modules after it (load_dense reads each
 *                   one's config.json) and whether a Normalize module
 *                   follows them.
 *   load_pooling    <pooling folder>/config.json: exactly one of cls, mean,
 *                   lasttoken.
 *   load_seq_length sentence_bert_config.json, then tokenizer_config.json,
 *                   then max_position_embeddings.
 *
 * Every error names the file and the field. JSON files are read whole, with
 * a size cap. */
#include "config.h"
#include "base/fileio.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest JSON file we read (tokenizer_config.json can list many tokens). */
#define CFG_MAX_FILE (16 * 1024 * 1024)
#define CFG_MAX_MODULES 64
/* Widest Dense module input or output we accept. */
#define DENSE_MAX_FEATURES 65536
#define CFG_PATH_MAX 4096
/* Hugging Face stores "no limit" in model_max_length as a huge integer. */
#define CFG_UNSET_MAX_LENGTH 1e6

/* ---- config.json fields as data --------------------------------------- */

typedef struct int_field {
    const char *key;
    size_t offset;   /* into emb_config */
    int required;
    int def;         /* when optional and absent (BertConfig defaults) */
    int min, max;
} int_field;

static const int_field int_fields[] = {
    {"vocab_size", offsetof(emb_config, vocab_size), 1, 0, 1, 1 << 22},
    {"hidden_size", offsetof(emb_config, hidden_size), 1, 0, 1, 16384},
    {"num_hidden_layers", offsetof(emb_config, num_hidden_layers), 1, 0, 1, 256},
    {"num_attention_heads", offsetof(emb_config, num_attention_heads), 1, 0, 1, 16384},
    {"intermediate_size", offsetof(emb_config, intermediate_size), 1, 0, 1, 65536},
    {"max_position_embeddings", offsetof(emb_config, max_position_embeddings), 0, 512, 1, 1 << 17},
    {"type_vocab_size", offsetof(emb_config, type_vocab_size), 0, 2, 1, 1 << 16},
    {"pad_token_id", offsetof(emb_config, pad_token_id), 0, 0, 0, (1 << 22) - 1},
};

typedef struct float_field {
    const char *key;
    size_t offset;
    float def;
    float min, max;
} float_field;

static const float_field float_fields[] = {
    {"layer_norm_eps", offsetof(emb_config, layer_norm_eps), 1e-12f, FLT_MIN, 1.0f},
    {"hidden_dropout_prob", offsetof(emb_config, hidden_dropout_prob), 0.1f, 0.0f, 1.0f},
    {"attention_probs_dropout_prob", offsetof(emb_config, attention_probs_dropout_prob), 0.1f,
     0.0f, 1.0f},
};

#define N_INT_FIELDS ((int)(sizeof int_fields / sizeof int_fields[0]))
#define N_FLOAT_FIELDS ((int)(sizeof float_fields / sizeof float_fields[0]))

static int *int_at(emb_config *cfg, size_t offset)
{
    return (int *)((char *)cfg + offset);
}

static float *float_at(emb_config *cfg, size_t offset)
{
    return (float *)((char *)cfg + offset);
}

static int int_get(const emb_config *cfg, size_t offset)
{
    return *(const int *)((const char *)cfg + offset);
}

static float float_get(const emb_config *cfg, size_t offset)
{
    return *(const float *)((const char *)cfg + offset);
}

/* ---- pooling modes as data -------------------------------------------- */

/* The six sentence-transformers pooling modes, in its order. */
typedef struct pool_mode {
    const char *key;     /* classic boolean key */
    const char *name;    /* "pooling_mode" string value */
    int def;             /* Pooling() default for the boolean */
    int supported;
    emb_pooling pooling;
} pool_mode;

static const pool_mode pool_modes[] = {
    {"pooling_mode_cls_token", "cls", 0, 1, EMB_POOL_CLS},
    {"pooling_mode_lasttoken", "lasttoken", 0, 1, EMB_POOL_LAST},
    {"pooling_mode_max_tokens", "max", 0, 0, EMB_POOL_MEAN},
    {"pooling_mode_mean_tokens", "mean", 1, 1, EMB_POOL_MEAN},
    {"pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens", 0, 0, EMB_POOL_MEAN},
    {"pooling_mode_weightedmean_tokens", "weightedmean", 0, 0, EMB_POOL_MEAN},
};

#define N_POOL_MODES ((int)(sizeof pool_modes / sizeof pool_modes[0]))

const char *emb_pooling_name(emb_pooling p)
{
    switch (p) {
    case EMB_POOL_MEAN:
        return "mean";
    case EMB_POOL_CLS:
        return "cls";
    case EMB_POOL_LAST:
        return "last";
    }
    return "unknown";
}

int emb_pooling_parse(const char *s, emb_pooling *out)
{
    if (s == NULL)
        return -1;
    if (strcmp(s, "mean") == 0) {
        *out = EMB_POOL_MEAN;
        return 0;
    }
    if (strcmp(s, "cls") == 0) {
        *out = EMB_POOL_CLS;
        return 0;
    }
    if (strcmp(s, "last") == 0 || strcmp(s, "lasttoken") == 0) {
        *out = EMB_POOL_LAST;
        return 0;
    }
    return -1;
}

/* ---- Dense activations as data ---------------------------------------- */

/* The torch classes sentence-transformers saves as activation_function. */
typedef struct act_name {
    const char *path;        /* what sentence-transformers writes (fullname) */
    const char *short_path;  /* the same class by its public alias */
    emb_activation act;
} act_name;

static const act_name act_names[] = {
    {"torch.nn.modules.linear.Identity", "torch.nn.Identity", EMB_ACT_IDENTITY},
    {"torch.nn.modules.activation.Tanh", "torch.nn.Tanh", EMB_ACT_TANH},
};

#define N_ACT_NAMES ((int)(sizeof act_names / sizeof act_names[0]))

const char *emb_activation_name(emb_activation a)
{
    for (int i = 0; i < N_ACT_NAMES; i++) {
        if (act_names[i].act == a)
            return act_names[i].path;
    }
    return "unknown";
}

void emb_dense_folder(int k, char *out, size_t cap)
{
    snprintf(out, cap, "%d_Dense", 2 + k);
}

int emb_config_dim(const emb_config *cfg)
{
    if (cfg->n_dense > 0)
        return cfg->dense[cfg->n_dense - 1].out_features;
    return cfg->hidden_size;
}

/* ---- reading JSON ----------------------------------------------------- */

static int path_join(char *buf, const char *dir, const char *a, const char *b, emb_err *err)
{
    int n = 0;
    if (b == NULL)
        n = snprintf(buf, CFG_PATH_MAX, "%s/%s", dir, a);
    else
        n = snprintf(buf, CFG_PATH_MAX, "%s/%s/%s", dir, a, b);
    if (n < 0 || n >= CFG_PATH_MAX)
        return emb_fail(err, "%s: path too long", dir);
    return 0;
}

/* Reads a whole file of at most CFG_MAX_FILE bytes, NUL-terminated.
 * Returns 1 (and *out NULL) when the file does not exist. */
static int file_read(const char *path, char **out, size_t *len, emb_err *err)
{
    int result = -1;
    char *buf = NULL;
    *out = NULL;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return 1;
    if (fd < 0)
        return emb_fail(err, "%s: %s", path, strerror(errno));

    struct stat st;
    if (fstat(fd, &st) != 0) {
        emb_fail(err, "%s: stat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        emb_fail(err, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size > CFG_MAX_FILE) {
        emb_fail(err, "%s: file is %lld bytes, over the %d byte limit", path,
                 (long long)st.st_size, CFG_MAX_FILE);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory", path);
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            emb_fail(err, "%s: read: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break; /* shrank while we read: parse what we have */
        got += (size_t)n;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    buf = NULL;
    result = 0;
out:
    free(buf);
    close(fd);
    return result;
}

/* Parses path as JSON. A missing file is an error unless optional, in
 * which case it returns 0 with *out NULL. */
static int json_read(const char *path, int optional, cJSON **out, emb_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;

    int rc = file_read(path, &text, &len, err);
    if (rc < 0)
        return -1;
    if (rc == 1) {
        if (optional)
            return 0;
        return emb_fail(err, "%s: not found", path);
    }
    if (memchr(text, '\0', len) != NULL) {
        free(text);
        return emb_fail(err, "%s: contains a NUL byte, not JSON", path);
    }

    const char *end = NULL;
    cJSON *json = cJSON_ParseWithOpts(text, &end, 1);
    if (json == NULL) {
        /* report the line and column of the parse error */
        int line = 1;
        int col = 1;
        for (const char *p = text; end != NULL && p < end && *p != '\0'; p++) {
            col++;
            if (*p == '\n') {
                line++;
                col = 1;
            }
        }
        free(text);
        return emb_fail(err, "%s: malformed JSON at line %d, column %d", path, line, col);
    }
    free(text);
    *out = json;
    return 0;
}

/* A short printable form of a JSON value, for messages. */
static void describe(const cJSON *item, char *buf, size_t size)
{
    char *text = cJSON_PrintUnformatted(item);
    if (text == NULL) {
        snprintf(buf, size, "?");
        return;
    }
    snprintf(buf, size, "%.40s%s", text, strlen(text) > 40 ? "..." : "");
    free(text);
}

/* Looks up key; absent and JSON null both count as absent (NULL). Of
 * duplicate keys the last wins, as with Python's json module. */
static const cJSON *field(const cJSON *obj, const char *key)
{
    const cJSON *found = NULL;
    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, obj)
    {
        if (item->string != NULL && strcmp(item->string, key) == 0)
            found = item;
    }
    if (found == NULL || cJSON_IsNull(found))
        return NULL;
    return found;
}

/* Reads an integer field. *found is 0 when absent (and *out untouched). */
static int get_int(const cJSON *obj, const char *key, int *out, int *found, const char *file,
                   emb_err *err)
{
    const cJSON *item = field(obj, key);
    *found = 0;
    if (item == NULL)
        return 0;
    double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!(v >= INT_MIN && v <= INT_MAX) || v != floor(v)) {
        char text[64];
        describe(item, text, sizeof text);
        return emb_fail(err, "%s: \"%s\" must be an integer, got %s", file, key, text);
    }
    *out = (int)v;
    *found = 1;
    return 0;
}

static int get_float(const cJSON *obj, const char *key, float *out, int *found,
                     const char *file, emb_err *err)
{
    const cJSON *item = field(obj, key);
    *found = 0;
    if (item == NULL)
        return 0;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble)) {
        char text[64];
        describe(item, text, sizeof text);
        return emb_fail(err, "%s: \"%s\" must be a number, got %s", file, key, text);
    }
    *out = (float)item->valuedouble;
    *found = 1;
    return 0;
}

static int get_bool(const cJSON *obj, const char *key, int *out, int *found, const char *file,
                    emb_err *err)
{
    const cJSON *item = field(obj, key);
    *found = 0;
    if (item == NULL)
        return 0;
    if (!cJSON_IsBool(item)) {
        char text[64];
        describe(item, text, sizeof text);
        return emb_fail(err, "%s: \"%s\" must be true or false, got %s", file, key, text);
    }
    *out = cJSON_IsTrue(item) ? 1 : 0;
    *found = 1;
    return 0;
}

/* Returns the string value, NULL when absent; -1 in *bad when not a string. */
static const char *get_string(const cJSON *obj, const char *key, int *bad, const char *file,
                              emb_err *err)
{
    const cJSON *item = field(obj, key);
    *bad = 0;
    if (item == NULL)
        return NULL;
    if (!cJSON_IsString(item)) {
        char text[64];
        describe(item, text, sizeof text);
        *bad = emb_fail(err, "%s: \"%s\" must be a string, got %s", file, key, text);
        return NULL;
    }
    return item->valuestring;
}

/* ---- validation -------------------------------------------------------- */

static int has_nul(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

/* Checks the BERT hyperparameters; where prefixes every message. */
static int check_bert(const emb_config *cfg, const char *where, emb_err *err)
{
    for (int i = 0; i < N_INT_FIELDS; i++) {
        const int_field *f = &int_fields[i];
        int v = int_get(cfg, f->offset);
        if (v < f->min || v > f->max)
            return emb_fail(err, "%s: %s %d out of range [%d, %d]", where, f->key, v, f->min,
                            f->max);
    }
    for (int i = 0; i < N_FLOAT_FIELDS; i++) {
        const float_field *f = &float_fields[i];
        float v = float_get(cfg, f->offset);
        if (!(v >= f->min && v <= f->max))
            return emb_fail(err, "%s: %s %g out of range [%g, %g]", where, f->key, (double)v,
                            (double)f->min, (double)f->max);
    }
    if (cfg->hidden_size % cfg->num_attention_heads != 0)
        return emb_fail(err,
                        "%s: hidden_size %d is not divisible by num_attention_heads %d", where,
                        cfg->hidden_size, cfg->num_attention_heads);
    if (cfg->pad_token_id >= cfg->vocab_size)
        return emb_fail(err, "%s: pad_token_id %d is not below vocab_size %d", where,
                        cfg->pad_token_id, cfg->vocab_size);
    if (!has_nul(cfg->hidden_act, sizeof cfg->hidden_act) || strcmp(cfg->hidden_act, "gelu") != 0)
        return emb_fail(err,
                        "%s: hidden_act \"%.*s\" is not supported: only \"gelu\" (exact erf "
                        "GELU) is implemented",
                        where, (int)sizeof cfg->hidden_act, cfg->hidden_act);
    if (!has_nul(cfg->model_type, sizeof cfg->model_type) ||
        (cfg->model_type[0] != '\0' && strcmp(cfg->model_type, "bert") != 0))
        return emb_fail(err, "%s: model_type \"%.*s\" is not supported: only \"bert\"", where,
                        (int)sizeof cfg->model_type, cfg->model_type);
    return 0;
}

/* Checks the sentence-transformers settings. */
static int check_sentence(const emb_config *cfg, const char *where, emb_err *err)
{
    if (cfg->pooling != EMB_POOL_MEAN && cfg->pooling != EMB_POOL_CLS &&
        cfg->pooling != EMB_POOL_LAST)
        return emb_fail(err, "%s: unknown pooling %d", where, (int)cfg->pooling);
    if (cfg->max_seq_length < 1 || cfg->max_seq_length > cfg->max_position_embeddings)
        return emb_fail(err, "%s: max_seq_length %d out of range [1, %d] (max_position_embeddings)",
                        where, cfg->max_seq_length, cfg->max_position_embeddings);
    if (cfg->n_dense < 0 || cfg->n_dense > EMB_MAX_DENSE)
        return emb_fail(err, "%s: %d Dense modules, at most %d supported", where, cfg->n_dense,
                        EMB_MAX_DENSE);
    int dim = cfg->hidden_size;
    for (int k = 0; k < cfg->n_dense; k++) {
        const emb_dense_config *d = &cfg->dense[k];
        if (d->in_features != dim)
            return emb_fail(err, "%s: Dense module %d has in_features %d, the module before it "
                            "gives %d", where, k, d->in_features, dim);
        if (d->out_features < 1 || d->out_features > DENSE_MAX_FEATURES)
            return emb_fail(err, "%s: Dense module %d out_features %d out of range [1, %d]", where,
                            k, d->out_features, DENSE_MAX_FEATURES);
        if (d->activation != EMB_ACT_IDENTITY && d->activation != EMB_ACT_TANH)
            return emb_fail(err, "%s: Dense module %d has unknown activation %d", where, k,
                            (int)d->activation);
        if (d->bias != 0 && d->bias != 1)
            return emb_fail(err, "%s: Dense module %d bias must be 0 or 1", where, k);
        dim = d->out_features;
    }
    return 0;
}

/* ---- loading ----------------------------------------------------------- */

static int load_bert(emb_config *cfg, const char *dir, emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    int result = -1;

    if (path_join(path, dir, "config.json", NULL, err) != 0)
        return -1;
    if (json_read(path, 0, &json, err) != 0)
        return -1;
    if (!cJSON_IsObject(json)) {
        emb_fail(err, "%s: not a JSON object", path);
        goto out;
    }

    for (int i = 0; i < N_INT_FIELDS; i++) {
        const int_field *f = &int_fields[i];
        int found = 0;
        int *dst = int_at(cfg, f->offset);
        *dst = f->def;
        if (get_int(json, f->key, dst, &found, path, err) != 0)
            goto out;
        if (!found && f->required) {
            emb_fail(err, "%s: required field \"%s\" is missing", path, f->key);
            goto out;
        }
    }
    for (int i = 0; i < N_FLOAT_FIELDS; i++) {
        const float_field *f = &float_fields[i];
        int found = 0;
        float *dst = float_at(cfg, f->offset);
        *dst = f->def;
        if (get_float(json, f->key, dst, &found, path, err) != 0)
            goto out;
    }

    int bad = 0;
    const char *act = get_string(json, "hidden_act", &bad, path, err);
    if (bad != 0)
        goto out;
    if (act == NULL)
        act = "gelu";
    if (strcmp(act, "gelu") != 0) {
        emb_fail(err,
                 "%s: hidden_act \"%s\" is not supported: only \"gelu\" (exact erf GELU) is "
                 "implemented",
                 path, act);
        goto out;
    }
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "%s", act);

    const char *type = get_string(json, "model_type", &bad, path, err);
    if (bad != 0)
        goto out;
    if (type != NULL && strcmp(type, "bert") != 0) {
        emb_fail(err, "%s: model_type \"%s\" is not supported: only \"bert\"", path, type);
        goto out;
    }
    snprintf(cfg->model_type, sizeof cfg->model_type, "bert");

    /* relative position embeddings would silently give wrong vectors */
    const char *pos = get_string(json, "position_embedding_type", &bad, path, err);
    if (bad != 0)
        goto out;
    if (pos != NULL && strcmp(pos, "absolute") != 0) {
        emb_fail(err, "%s: position_embedding_type \"%s\" is not supported: only \"absolute\"",
                 path, pos);
        goto out;
    }

    result = check_bert(cfg, path, err);
out:
    cJSON_Delete(json);
    return result;
}

/* The class name at the end of a dotted module type. */
static const char *type_class(const char *type)
{
    const char *dot = strrchr(type, '.');
    return dot != NULL ? dot + 1 : type;
}

/* A module folder must stay inside the model directory. */
static int folder_ok(const char *p)
{
    if (p[0] == '\0' || p[0] == '/')
        return 0;
    const char *s = p;
    while (*s != '\0') {
        size_t n = strcspn(s, "/");
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return 0;
        s += n;
        if (*s == '/')
            s++;
    }
    return 1;
}

/* The activation_function of a Dense config.json; absent means Tanh, the
 * sentence-transformers default. */
static int parse_activation(const char *s, emb_activation *out, const char *file, emb_err *err)
{
    if (s == NULL) {
        *out = EMB_ACT_TANH;
        return 0;
    }
    for (int i = 0; i < N_ACT_NAMES; i++) {
        if (strcmp(s, act_names[i].path) == 0 || strcmp(s, act_names[i].short_path) == 0) {
            *out = act_names[i].act;
            return 0;
        }
    }
    return emb_fail(err, "%s: activation_function \"%s\" is not supported (only %s and %s)",
                    file, s, act_names[0].path, act_names[1].path);
}

/* Newer sentence-transformers Dense options that embedd supports at their
 * defaults only: a residual connection, and reading or writing another
 * feature than the pooled "sentence_embedding". */
static int check_dense_defaults(const cJSON *json, const char *file, emb_err *err)
{
    int residual = 0;
    int found = 0;
    if (get_bool(json, "use_residual", &residual, &found, file, err) != 0)
        return -1;
    if (residual)
        return emb_fail(err, "%s: \"use_residual\": true is not supported", file);
    static const char *const names[] = {"module_input_name", "module_output_name"};
    for (int i = 0; i < 2; i++) {
        int bad = 0;
        const char *v = get_string(json, names[i], &bad, file, err);
        if (bad != 0)
            return -1;
        if (v != NULL && strcmp(v, "sentence_embedding") != 0)
            return emb_fail(err, "%s: %s \"%s\" is not supported (only \"sentence_embedding\")",
                            file, names[i], v);
    }
    return 0;
}

/* Reads <dir>/<folder>/config.json of the Dense module listed at idx into
 * d. in_dim is the output dimension of the module before it. */
static int load_dense(emb_dense_config *d, const char *dir, const char *folder, int idx,
                      int in_dim, emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    int result = -1;

    memset(d, 0, sizeof *d);
    if (path_join(path, dir, folder, "config.json", err) != 0)
        return -1;
    if (json_read(path, 0, &json, err) != 0)
        return -1;
    if (!cJSON_IsObject(json)) {
        emb_fail(err, "%s: not a JSON object", path);
        goto out;
    }
    int found_in = 0, found_out = 0, found_bias = 0;
    d->bias = 1;
    if (get_int(json, "in_features", &d->in_features, &found_in, path, err) != 0 ||
        get_int(json, "out_features", &d->out_features, &found_out, path, err) != 0 ||
        get_bool(json, "bias", &d->bias, &found_bias, path, err) != 0)
        goto out;
    if (!found_in || !found_out) {
        emb_fail(err, "%s: required field \"%s\" is missing", path,
                 found_in ? "out_features" : "in_features");
        goto out;
    }
    if (d->in_features != in_dim) {
        emb_fail(err,
                 "%s: in_features %d does not match the output dimension %d of the module "
                 "before it (modules.json module %d)",
                 path, d->in_features, in_dim, idx);
        goto out;
    }
    if (d->out_features < 1 || d->out_features > DENSE_MAX_FEATURES) {
        emb_fail(err, "%s: out_features %d out of range [1, %d]", path, d->out_features,
                 DENSE_MAX_FEATURES);
        goto out;
    }
    int bad = 0;
    const char *act = get_string(json, "activation_function", &bad, path, err);
    if (bad != 0 || parse_activation(act, &d->activation, path, err) != 0)
        goto out;
    if (check_dense_defaults(json, path, err) != 0)
        goto out;
    snprintf(d->folder, sizeof d->folder, "%s", folder);
    result = 0;
out:
    cJSON_Delete(json);
    return result;
}

/* A Dense entry of modules.json (module idx, in folder): must follow the
 * Pooling module and come before Normalize; its config is appended to
 * cfg->dense. */
static int add_dense(emb_config *cfg, const char *dir, const char *file, int idx,
                     const char *folder, int have_pooling, emb_err *err)
{
    if (!have_pooling)
        return emb_fail(err,
                        "%s: Dense module %d (\"%s\") comes before the Pooling module: only "
                        "Dense modules on the pooled embedding are supported",
                        file, idx, folder);
    if (cfg->normalize)
        return emb_fail(err,
                        "%s: Dense module %d (\"%s\") comes after Normalize: not supported "
                        "(Dense modules must run before Normalize)",
                        file, idx, folder);
    if (cfg->n_dense == EMB_MAX_DENSE)
        return emb_fail(err, "%s: more than %d Dense modules", file, EMB_MAX_DENSE);
    if (!folder_ok(folder) || strlen(folder) >= sizeof cfg->dense[0].folder)
        return emb_fail(err, "%s: Dense path \"%s\" is not a folder inside the model", file,
                        folder);
    int in_dim = emb_config_dim(cfg);
    if (load_dense(&cfg->dense[cfg->n_dense], dir, folder, idx, in_dim, err) != 0)
        return -1;
    cfg->n_dense++;
    return 0;
}

/* Reads modules.json: sets has_modules_json, the Dense modules, normalize
 * and the pooling folder (left as given when no Pooling module is
 * listed). */
static int load_modules(emb_config *cfg, const char *dir, char *pool_dir, size_t pool_size,
                        emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    int result = -1;

    if (path_join(path, dir, "modules.json", NULL, err) != 0)
        return -1;
    if (json_read(path, 1, &json, err) != 0)
        return -1;
    if (json == NULL) {
        cfg->has_modules_json = 0;
        return 0;
    }
    cfg->has_modules_json = 1;

    if (!cJSON_IsArray(json)) {
        emb_fail(err, "%s: not a JSON array of modules", path);
        goto out;
    }
    int n = cJSON_GetArraySize(json);
    if (n > CFG_MAX_MODULES) {
        emb_fail(err, "%s: %d modules, at most %d supported", path, n, CFG_MAX_MODULES);
        goto out;
    }

    int n_pooling = 0;
    int i = 0;
    const cJSON *mod = NULL;
    cJSON_ArrayForEach(mod, json)
    {
        int bad = 0;
        if (!cJSON_IsObject(mod)) {
            emb_fail(err, "%s: module %d is not an object", path, i);
            goto out;
        }
        const char *type = get_string(mod, "type", &bad, path, err);
        if (bad != 0)
            goto out;
        if (type == NULL) {
            emb_fail(err, "%s: module %d has no \"type\"", path, i);
            goto out;
        }
        const char *folder = get_string(mod, "path", &bad, path, err);
        if (bad != 0)
            goto out;
        if (folder == NULL)
            folder = "";
        const char *cls = type_class(type);

        if (strcmp(cls, "Transformer") == 0) {
            if (i != 0) {
                emb_fail(err, "%s: Transformer must be the first module, found at %d", path, i);
                goto out;
            }
            if (folder[0] != '\0') {
                emb_fail(err,
                         "%s: Transformer in folder \"%s\" is not supported: its files must be "
                         "in the model directory (path \"\")",
                         path, folder);
                goto out;
            }
        } else if (strcmp(cls, "Pooling") == 0) {
            n_pooling++;
            if (n_pooling > 1) {
                emb_fail(err, "%s: more than one Pooling module", path);
                goto out;
            }
            if (!folder_ok(folder) || strlen(folder) >= pool_size) {
                emb_fail(err, "%s: Pooling path \"%s\" is not a folder inside the model", path,
                         folder);
                goto out;
            }
            snprintf(pool_dir, pool_size, "%s", folder);
        } else if (strcmp(cls, "Dense") == 0) {
            if (add_dense(cfg, dir, path, i, folder, n_pooling > 0, err) != 0)
                goto out;
        } else if (strcmp(cls, "Normalize") == 0) {
            if (i == 0) {
                emb_fail(err, "%s: Normalize cannot be the first module", path);
                goto out;
            }
            cfg->normalize = 1;
        } else {
            emb_fail(err,
                     "%s: module %d (path \"%s\") type \"%s\" is not supported (only "
                     "Transformer, Pooling, Dense, Normalize)",
                     path, i, folder, type);
            goto out;
        }
        i++;
    }
    if (n == 0) {
        emb_fail(err, "%s: no modules listed", path);
        goto out;
    }
    result = 0;
out:
    cJSON_Delete(json);
    return result;
}

/* Reads the "pooling_mode" string into on[] (one mode set). */
static int pooling_from_string(const char *s, int on[N_POOL_MODES], const char *file,
                               emb_err *err)
{
    char lower[32];
    size_t n = strlen(s);
    if (n >= sizeof lower)
        return emb_fail(err, "%s: unknown pooling_mode \"%.40s\"", file, s);
    for (size_t i = 0; i <= n; i++)
        lower[i] = (char)tolower((unsigned char)s[i]);
    if (strcmp(lower, "last") == 0)
        snprintf(lower, sizeof lower, "lasttoken");

    int known = 0;
    for (int i = 0; i < N_POOL_MODES; i++) {
        on[i] = strcmp(lower, pool_modes[i].name) == 0;
        if (on[i])
            known = 1;
    }
    if (known)
        return 0;
    return emb_fail(err,
                    "%s: unknown pooling_mode \"%s\" (cls, mean, lasttoken, max, "
                    "mean_sqrt_len_tokens, weightedmean)",
                    file, s);
}

/* Picks the single supported mode out of on[]. */
static int pooling_choose(const int on[N_POOL_MODES], emb_pooling *out, const char *file,
                          emb_err *err)
{
    char names[160] = "";
    int count = 0;
    for (int i = 0; i < N_POOL_MODES; i++) {
        if (!on[i])
            continue;
        if (!pool_modes[i].supported)
            return emb_fail(err,
                            "%s: pooling mode \"%s\" (%s) is not supported: only cls, mean and "
                            "lasttoken",
                            file, pool_modes[i].name, pool_modes[i].key);
        size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%s%s", count > 0 ? "+" : "",
                 pool_modes[i].name);
        count++;
        *out = pool_modes[i].pooling;
    }
    if (count == 0)
        return emb_fail(err, "%s: no pooling mode is enabled", file);
    if (count > 1)
        return emb_fail(err,
                        "%s: %d pooling modes are enabled at once (%s): concatenated pooling "
                        "is not supported",
                        file, count, names);
    return 0;
}

static int load_pooling(emb_config *cfg, const char *dir, const char *pool_dir, emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    int result = -1;

    cfg->pooling = EMB_POOL_MEAN;
    if (path_join(path, dir, pool_dir, "config.json", err) != 0)
        return -1;
    if (json_read(path, 1, &json, err) != 0)
        return -1;
    if (json == NULL)
        return 0;
    if (!cJSON_IsObject(json)) {
        emb_fail(err, "%s: not a JSON object", path);
        goto out;
    }

    /* the embedding width it was saved with must match the model */
    const char *dim_keys[] = {"word_embedding_dimension", "embedding_dimension"};
    for (int i = 0; i < 2; i++) {
        int dim = 0;
        int found = 0;
        if (get_int(json, dim_keys[i], &dim, &found, path, err) != 0)
            goto out;
        if (found && dim != cfg->hidden_size) {
            emb_fail(err, "%s: %s %d does not match hidden_size %d", path, dim_keys[i], dim,
                     cfg->hidden_size);
            goto out;
        }
    }

    int on[N_POOL_MODES];
    int bad = 0;
    const char *mode = get_string(json, "pooling_mode", &bad, path, err);
    if (bad != 0)
        goto out;
    if (mode != NULL) {
        /* as in sentence-transformers, the string overrides the booleans */
        if (pooling_from_string(mode, on, path, err) != 0)
            goto out;
    } else {
        for (int i = 0; i < N_POOL_MODES; i++) {
            int found = 0;
            on[i] = pool_modes[i].def;
            if (get_bool(json, pool_modes[i].key, &on[i], &found, path, err) != 0)
                goto out;
        }
    }
    result = pooling_choose(on, &cfg->pooling, path, err);
out:
    cJSON_Delete(json);
    return result;
}

/* tokenizer_config.json model_max_length; *found 0 when absent or unset. */
static int load_model_max_length(const char *dir, int *out, int *found, emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    int result = -1;

    *found = 0;
    if (path_join(path, dir, "tokenizer_config.json", NULL, err) != 0)
        return -1;
    if (json_read(path, 1, &json, err) != 0)
        return -1;
    if (json == NULL)
        return 0;
    if (!cJSON_IsObject(json)) {
        emb_fail(err, "%s: not a JSON object", path);
        goto out;
    }
    const cJSON *item = field(json, "model_max_length");
    if (item != NULL) {
        double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
        if (!(v >= 1) || (v < CFG_UNSET_MAX_LENGTH && v != floor(v))) {
            char text[64];
            describe(item, text, sizeof text);
            emb_fail(err, "%s: \"model_max_length\" must be a positive integer, got %s", path,
                     text);
            goto out;
        }
        if (v < CFG_UNSET_MAX_LENGTH) {
            *out = (int)v;
            *found = 1;
        }
    }
    result = 0;
out:
    cJSON_Delete(json);
    return result;
}

static int load_seq_length(emb_config *cfg, const char *dir, emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    int result = -1;
    int found = 0;

    cfg->do_lower_case = 0;
    if (path_join(path, dir, "sentence_bert_config.json", NULL, err) != 0)
        return -1;
    if (json_read(path, 1, &json, err) != 0)
        return -1;
    if (json != NULL) {
        if (!cJSON_IsObject(json)) {
            emb_fail(err, "%s: not a JSON object", path);
            goto out;
        }
        if (get_int(json, "max_seq_length", &cfg->max_seq_length, &found, path, err) != 0)
            goto out;
        if (found && cfg->max_seq_length < 1) {
            emb_fail(err, "%s: max_seq_length %d must be positive", path, cfg->max_seq_length);
            goto out;
        }
        int lower_found = 0;
        if (get_bool(json, "do_lower_case", &cfg->do_lower_case, &lower_found, path, err) != 0)
            goto out;
    }
    if (!found) {
        if (load_model_max_length(dir, &cfg->max_seq_length, &found, err) != 0)
            goto out;
    }
    if (!found)
        cfg->max_seq_length = cfg->max_position_embeddings;
    if (cfg->max_seq_length > cfg->max_position_embeddings)
        cfg->max_seq_length = cfg->max_position_embeddings;
    result = 0;
out:
    cJSON_Delete(json);
    return result;
}

const emb_prompt *emb_prompt_find(const emb_config *cfg, const char *name)
{
    for (int i = 0; name != NULL && i < cfg->n_prompts; i++) {
        if (strcmp(cfg->prompts[i].name, name) == 0)
            return &cfg->prompts[i];
    }
    return NULL;
}

static int prompts_from_json(emb_config *cfg, const cJSON *json, const char *file, emb_err *err)
{
    cfg->n_prompts = 0;
    cfg->default_prompt[0] = '\0';
    if (!cJSON_IsObject(json))
        return emb_fail(err, "%s: not a JSON object", file);
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(json, "prompts");
    if (prompts != NULL && !cJSON_IsNull(prompts) && !cJSON_IsObject(prompts))
        return emb_fail(err, "%s: \"prompts\" must be an object of name: text", file);
    const cJSON *p;
    cJSON_ArrayForEach(p, prompts) {
        if (!cJSON_IsString(p))
            return emb_fail(err, "%s: prompt \"%.60s\" must be a string", file, p->string);
        if (cfg->n_prompts == EMB_MAX_PROMPTS)
            return emb_fail(err, "%s: more than %d prompts", file, EMB_MAX_PROMPTS);
        if (strlen(p->string) >= EMB_PROMPT_NAME_MAX || strlen(p->valuestring) >= EMB_PROMPT_TEXT_MAX)
            return emb_fail(err, "%s: prompt \"%.60s\": name over %d or text over %d bytes",
                            file, p->string, EMB_PROMPT_NAME_MAX - 1, EMB_PROMPT_TEXT_MAX - 1);
        emb_prompt *dst = &cfg->prompts[cfg->n_prompts++];
        snprintf(dst->name, sizeof dst->name, "%s", p->string);
        snprintf(dst->text, sizeof dst->text, "%s", p->valuestring);
    }
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(json, "default_prompt_name");
    if (def == NULL || cJSON_IsNull(def))
        return 0;
    if (!cJSON_IsString(def))
        return emb_fail(err, "%s: \"default_prompt_name\" must be a string or null", file);
    if (emb_prompt_find(cfg, def->valuestring) == NULL)
        return emb_fail(err, "%s: default_prompt_name \"%.60s\" is not one of \"prompts\"",
                        file, def->valuestring);
    snprintf(cfg->default_prompt, sizeof cfg->default_prompt, "%s", def->valuestring);
    return 0;
}

int emb_prompts_parse(emb_config *cfg, const char *text, const char *file, emb_err *err)
{
    cJSON *json = cJSON_Parse(text);
    if (json == NULL)
        return emb_fail(err, "%s: malformed JSON", file);
    int rc = prompts_from_json(cfg, json, file, err);
    cJSON_Delete(json);
    return rc;
}

/* config_sentence_transformers.json, optional. */
static int load_prompts(emb_config *cfg, const char *dir, emb_err *err)
{
    char path[CFG_PATH_MAX];
    cJSON *json = NULL;
    if (path_join(path, dir, "config_sentence_transformers.json", NULL, err) != 0)
        return -1;
    if (json_read(path, 1, &json, err) != 0)
        return -1;
    if (json == NULL)
        return 0;
    int rc = prompts_from_json(cfg, json, path, err);
    cJSON_Delete(json);
    return rc;
}

int emb_config_load(emb_config *cfg, const char *dir, emb_err *err)
{
    emb_config c;
    char pool_dir[256] = "1_Pooling";
    memset(&c, 0, sizeof c);

    if (load_bert(&c, dir, err) != 0)
        return -1;
    if (load_modules(&c, dir, pool_dir, sizeof pool_dir, err) != 0)
        return -1;
    /* without modules.json sentence-transformers builds mean pooling and
     * reads no pooling config */
    if (c.has_modules_json) {
        if (load_pooling(&c, dir, pool_dir, err) != 0)
            return -1;
    } else {
        c.pooling = EMB_POOL_MEAN;
    }
    if (load_seq_length(&c, dir, err) != 0)
        return -1;
    if (load_prompts(&c, dir, err) != 0)
        return -1;
    *cfg = c;
    return 0;
}

/* ---- saving ------------------------------------------------------------ */

/* Shortest of %.6g .. %.9g that reads back as the same float. */
static void format_float(char *buf, size_t size, float f)
{
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            return;
    }
}

static int add_float(cJSON *obj, const char *key, float f)
{
    char num[32];
    format_float(num, sizeof num, f);
    return cJSON_AddRawToObject(obj, key, num) != NULL ? 0 : -1;
}

/* Writes text to path via path.tmp, fsync and rename. */
static int write_text(const char *path, const char *text, emb_err *err)
{
    char tmp[CFG_PATH_MAX + 8];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return emb_fail(err, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return emb_fail(err, "%s: create: %s", tmp, strerror(errno));
    if (emb_write_all(fd, text, strlen(text)) != 0) {
        emb_fail(err, "%s: write: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    return emb_commit_file(fd, tmp, path, err);
}

/* Prints json (formatted) to dir/a[/b] and frees it. */
static int write_json(cJSON *json, const char *dir, const char *a, const char *b, emb_err *err)
{
    char path[CFG_PATH_MAX];
    int result = -1;
    char *text = NULL;

    if (json == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory building %s", dir, a);
        goto out;
    }
    if (path_join(path, dir, a, b, err) != 0)
        goto out;
    text = cJSON_Print(json);
    if (text == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s: out of memory printing JSON", path);
        goto out;
    }
    result = write_text(path, text, err);
out:
    free(text);
    cJSON_Delete(json);
    return result;
}

static int make_dir(const char *dir, const char *name, emb_err *err)
{
    char path[CFG_PATH_MAX];
    if (path_join(path, dir, name, NULL, err) != 0)
        return -1;
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return emb_fail(err, "%s: mkdir: %s", path, strerror(errno));
    return 0;
}

static cJSON *bert_json(const emb_config *cfg)
{
    cJSON *json = cJSON_CreateObject();
    if (json == NULL)
        return NULL;
    int ok = 1;
    const char *arch[] = {"BertModel"};
    cJSON *archs = cJSON_CreateStringArray(arch, 1);
    ok = ok && archs != NULL && cJSON_AddItemToObject(json, "architectures", archs);
    if (!ok)
        cJSON_Delete(archs);
    ok = ok && cJSON_AddStringToObject(json, "model_type", "bert") != NULL;
    ok = ok && cJSON_AddStringToObject(json, "hidden_act", cfg->hidden_act) != NULL;
    ok = ok && cJSON_AddStringToObject(json, "position_embedding_type", "absolute") != NULL;
    for (int i = 0; ok && i < N_INT_FIELDS; i++) {
        const int_field *f = &int_fields[i];
        ok = cJSON_AddNumberToObject(json, f->key, int_get(cfg, f->offset)) != NULL;
    }
    for (int i = 0; ok && i < N_FLOAT_FIELDS; i++) {
        const float_field *f = &float_fields[i];
        ok = add_float(json, f->key, float_get(cfg, f->offset)) == 0;
    }
    if (!ok) {
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

/* Normalize comes after the Dense modules: "<2 + n_dense>_Normalize". */
static void normalize_folder(const emb_config *cfg, char *out, size_t cap)
{
    snprintf(out, cap, "%d_Normalize", 2 + cfg->n_dense);
}

static int add_module(cJSON *list, int idx, const char *path, const char *type)
{
    char name[16];
    snprintf(name, sizeof name, "%d", idx);
    cJSON *mod = cJSON_CreateObject();
    if (mod == NULL)
        return -1;
    if (!cJSON_AddItemToArray(list, mod)) {
        cJSON_Delete(mod);
        return -1;
    }
    if (cJSON_AddNumberToObject(mod, "idx", idx) == NULL ||
        cJSON_AddStringToObject(mod, "name", name) == NULL ||
        cJSON_AddStringToObject(mod, "path", path) == NULL ||
        cJSON_AddStringToObject(mod, "type", type) == NULL)
        return -1;
    return 0;
}

/* Transformer, Pooling, the Dense modules, then Normalize, in folders
 * named "<idx>_<class>" as sentence-transformers names them. */
static cJSON *modules_json(const emb_config *cfg)
{
    cJSON *list = cJSON_CreateArray();
    if (list == NULL)
        return NULL;
    int rc = add_module(list, 0, "", "sentence_transformers.models.Transformer");
    if (rc == 0)
        rc = add_module(list, 1, "1_Pooling", "sentence_transformers.models.Pooling");
    for (int k = 0; rc == 0 && k < cfg->n_dense; k++) {
        char folder[32];
        emb_dense_folder(k, folder, sizeof folder);
        rc = add_module(list, 2 + k, folder, "sentence_transformers.models.Dense");
    }
    if (rc == 0 && cfg->normalize) {
        char folder[32];
        normalize_folder(cfg, folder, sizeof folder);
        rc = add_module(list, 2 + cfg->n_dense, folder, "sentence_transformers.models.Normalize");
    }
    if (rc != 0) {
        cJSON_Delete(list);
        return NULL;
    }
    return list;
}

/* The config.json of a Dense module, as sentence-transformers writes it. */
static cJSON *dense_json(const emb_dense_config *d)
{
    cJSON *json = cJSON_CreateObject();
    if (json == NULL)
        return NULL;
    int ok = cJSON_AddNumberToObject(json, "in_features", d->in_features) != NULL &&
             cJSON_AddNumberToObject(json, "out_features", d->out_features) != NULL &&
             cJSON_AddBoolToObject(json, "bias", d->bias != 0) != NULL &&
             cJSON_AddStringToObject(json, "activation_function",
                                     emb_activation_name(d->activation)) != NULL;
    if (!ok) {
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

/* The classic boolean format, which every sentence-transformers reads. */
static cJSON *pooling_json(const emb_config *cfg)
{
    cJSON *json = cJSON_CreateObject();
    if (json == NULL)
        return NULL;
    int ok = cJSON_AddNumberToObject(json, "word_embedding_dimension", cfg->hidden_size) != NULL;
    for (int i = 0; ok && i < N_POOL_MODES; i++) {
        const pool_mode *m = &pool_modes[i];
        int on = m->supported && m->pooling == cfg->pooling;
        ok = cJSON_AddBoolToObject(json, m->key, on) != NULL;
    }
    ok = ok && cJSON_AddBoolToObject(json, "include_prompt", 1) != NULL;
    if (!ok) {
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

static cJSON *sentence_json(const emb_config *cfg)
{
    cJSON *json = cJSON_CreateObject();
    if (json == NULL)
        return NULL;
    if (cJSON_AddNumberToObject(json, "max_seq_length", cfg->max_seq_length) == NULL ||
        cJSON_AddBoolToObject(json, "do_lower_case", cfg->do_lower_case != 0) == NULL) {
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

/* The prompts as sentence-transformers saves them. */
static cJSON *prompts_json(const emb_config *cfg)
{
    cJSON *json = cJSON_CreateObject();
    cJSON *prompts = cJSON_AddObjectToObject(json, "prompts");
    if (prompts == NULL) {
        cJSON_Delete(json);
        return NULL;
    }
    for (int i = 0; i < cfg->n_prompts; i++) {
        if (cJSON_AddStringToObject(prompts, cfg->prompts[i].name, cfg->prompts[i].text) == NULL) {
            cJSON_Delete(json);
            return NULL;
        }
    }
    cJSON *def = cfg->default_prompt[0] != '\0' ? cJSON_CreateString(cfg->default_prompt)
                                                : cJSON_CreateNull();
    if (def == NULL || !cJSON_AddItemToObject(json, "default_prompt_name", def)) {
        cJSON_Delete(def);
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

int emb_config_save(const emb_config *cfg, const char *dir, emb_err *err)
{
    char where[CFG_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s: cannot save config", dir);
    if (check_bert(cfg, where, err) != 0)
        return -1;
    if (check_sentence(cfg, where, err) != 0)
        return -1;

    if (write_json(bert_json(cfg), dir, "config.json", NULL, err) != 0)
        return -1;
    if (write_json(modules_json(cfg), dir, "modules.json", NULL, err) != 0)
        return -1;
    if (make_dir(dir, "1_Pooling", err) != 0)
        return -1;
    if (write_json(pooling_json(cfg), dir, "1_Pooling", "config.json", err) != 0)
        return -1;
    for (int k = 0; k < cfg->n_dense; k++) {
        char folder[32];
        emb_dense_folder(k, folder, sizeof folder);
        if (make_dir(dir, folder, err) != 0 ||
            write_json(dense_json(&cfg->dense[k]), dir, folder, "config.json", err) != 0)
            return -1;
    }
    /* sentence-transformers saves Normalize as an empty folder */
    char norm[32];
    normalize_folder(cfg, norm, sizeof norm);
    if (cfg->normalize && make_dir(dir, norm, err) != 0)
        return -1;
    if (write_json(sentence_json(cfg), dir, "sentence_bert_config.json", NULL, err) != 0)
        return -1;
    if (cfg->n_prompts > 0 &&
        write_json(prompts_json(cfg), dir, "config_sentence_transformers.json", NULL, err) != 0)
        return -1;

    return emb_fsync_dir(dir, err);
}
