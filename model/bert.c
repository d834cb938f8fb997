/* bert.c: loading a BERT encoder from safetensors and running it forward.
 * See bert.h for the parameter layout and ops.h for the kernels. */
#include "bert.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <omp.h>

#include "ops.h"
#include "safetensors.h"

void emb_param_sizes(const emb_config *cfg, size_t sizes[EMB_N_PARAM_TENSORS])
{
    size_t V = cfg->vocab_size, P = cfg->max_position_embeddings, TV = cfg->type_vocab_size;
    size_t C = cfg->hidden_size, L = cfg->num_hidden_layers, I = cfg->intermediate_size;
    size_t s[EMB_N_PARAM_TENSORS] = {
        V * C, P * C, TV * C, C, C,          /* embeddings */
        L * 3 * C * C, L * 3 * C,            /* qkv */
        L * C * C, L * C, L * C, L * C,      /* attention output + ln1 */
        L * I * C, L * I, L * C * I, L * C,  /* ffn */
        L * C, L * C,                        /* ln2 */
    };
    memcpy(sizes, s, sizeof s);
}

void emb_weights_point(emb_weights *w, float *base, const emb_config *cfg)
{
    size_t sizes[EMB_N_PARAM_TENSORS];
    emb_param_sizes(cfg, sizes);
    float **ptrs[EMB_N_PARAM_TENSORS] = {
        &w->wte, &w->wpe, &w->wtt, &w->emb_lnw, &w->emb_lnb,
        &w->qkvw, &w->qkvb, &w->attn_ow, &w->attn_ob, &w->ln1w, &w->ln1b,
        &w->fcw, &w->fcb, &w->fc_projw, &w->fc_projb, &w->ln2w, &w->ln2b,
    };
    float *p = base;
    for (int i = 0; i < EMB_N_PARAM_TENSORS; i++) {
        *ptrs[i] = p;
        p += sizes[i];
    }
}

size_t emb_encoder_floats(const emb_config *cfg)
{
    size_t sizes[EMB_N_PARAM_TENSORS];
    emb_param_sizes(cfg, sizes);
    size_t n = 0;
    for (int i = 0; i < EMB_N_PARAM_TENSORS; i++)
        n += sizes[i];
    return n;
}

size_t emb_dense_floats(const emb_config *cfg)
{
    size_t n = 0;
    for (int k = 0; k < cfg->n_dense; k++) {
        const emb_dense_config *d = &cfg->dense[k];
        n += (size_t)d->out_features * (size_t)d->in_features;
        if (d->bias)
            n += (size_t)d->out_features;
    }
    return n;
}

void emb_dense_point(emb_dense_w *d, float *base, const emb_config *cfg)
{
    float *p = base;
    for (int k = 0; k < cfg->n_dense; k++) {
        const emb_dense_config *c = &cfg->dense[k];
        d[k].w = p;
        p += (size_t)c->out_features * (size_t)c->in_features;
        d[k].b = c->bias ? p : NULL;
        if (c->bias)
            p += c->out_features;
    }
}

int emb_model_dim(const emb_model *m)
{
    return emb_config_dim(&m->cfg);
}

/* Points m->w and m->dense into m->params. */
static void model_point(emb_model *m)
{
    emb_weights_point(&m->w, m->params, &m->cfg);
    emb_dense_point(m->dense, m->params + emb_encoder_floats(&m->cfg), &m->cfg);
}

/* ---- weight files ------------------------------------------------------ */

#define MAX_SHARDS 64

typedef struct weight_files {
    emb_st_file files[MAX_SHARDS];
    int n;
} weight_files;

static void weight_files_close(weight_files *wf)
{
    for (int i = 0; i < wf->n; i++)
        emb_st_close(&wf->files[i]);
    wf->n = 0;
}

static char *read_small_file(const char *path, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    char *buf = malloc(cap + 1);
    size_t n = 0;
    if (buf != NULL) {
        n = fread(buf, 1, cap, fp);
        buf[n] = '\0';
    }
    fclose(fp);
    return buf;
}

/* Opens model.safetensors, or every shard named by
 * model.safetensors.index.json. */
static int weight_files_open(weight_files *wf, const char *dir, emb_err *err)
{
    char path[4096];
    struct stat st;
    wf->n = 0;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) == 0) {
        if (emb_st_open(&wf->files[0], path, err) != 0)
            return -1;
        wf->n = 1;
        return 0;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *text = read_small_file(path, 16u << 20);
    if (text == NULL)
        return emb_fail(err, "%s: no model.safetensors (nor a sharded index) found", dir);
    int rc = -1;
    cJSON *root = cJSON_Parse(text);
    cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        emb_fail(err, "%s: invalid JSON or no \"weight_map\" object", path);
        goto out;
    }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, map) {
        if (!cJSON_IsString(entry) || strchr(entry->valuestring, '/') != NULL) {
            emb_fail(err, "%s: bad shard name for tensor '%s'", path, entry->string);
            goto out;
        }
    }
    /* Open each distinct shard once, in first-mention order. */
    const char *opened[MAX_SHARDS];
    cJSON_ArrayForEach(entry, map) {
        int dup = 0;
        for (int i = 0; i < wf->n; i++) {
            if (strcmp(opened[i], entry->valuestring) == 0)
                dup = 1;
        }
        if (dup)
            continue;
        if (wf->n == MAX_SHARDS) {
            emb_fail(err, "%s: more than %d shards", path, MAX_SHARDS);
            goto out;
        }
        char shard[4096];
        snprintf(shard, sizeof shard, "%s/%s", dir, entry->valuestring);
        if (emb_st_open(&wf->files[wf->n], shard, err) != 0)
            goto out;
        opened[wf->n] = entry->valuestring;
        wf->n++;
    }
    rc = 0;
out:
    if (rc != 0)
        weight_files_close(wf);
    cJSON_Delete(root);
    free(text);
    return rc;
}

/* Finds name, or "bert." + name, in any of the files. */
static const emb_st_tensor *find_tensor(const weight_files *wf, const char *name,
                                        const emb_st_file **file)
{
    char prefixed[256];
    snprintf(prefixed, sizeof prefixed, "bert.%s", name);
    for (int i = 0; i < wf->n; i++) {
        const emb_st_tensor *t = emb_st_find(&wf->files[i], name);
        if (t == NULL)
            t = emb_st_find(&wf->files[i], prefixed);
        if (t != NULL) {
            *file = &wf->files[i];
            return t;
        }
    }
    return NULL;
}

/* Checks that t has shape (rows[, cols]); file names it in the message. */
static int check_shape(const emb_st_tensor *t, const char *file, int ndim, long rows, long cols,
                       emb_err *err)
{
    int ok = t->ndim == ndim && t->shape[0] == rows && (ndim == 1 || t->shape[1] == cols);
    if (ok)
        return 0;
    char got[128] = "";
    size_t used = 0;
    for (int d = 0; d < t->ndim && used < sizeof got - 24; d++)
        used += (size_t)snprintf(got + used, sizeof got - used, "%s%lld", d ? ", " : "",
                                 (long long)t->shape[d]);
    if (ndim == 1)
        return emb_fail(err, "%s: tensor '%s' has shape [%s], expected [%ld]", file, t->name, got,
                        rows);
    return emb_fail(err, "%s: tensor '%s' has shape [%s], expected [%ld, %ld]", file, t->name,
                    got, rows, cols);
}

/* Copies the HF tensor `name` of shape (rows[, cols]) into dst. */
static int load_tensor(const weight_files *wf, const char *name, int ndim, long rows, long cols,
                       float *dst, emb_err *err)
{
    const emb_st_file *file = NULL;
    const emb_st_tensor *t = find_tensor(wf, name, &file);
    if (t == NULL)
        return emb_fail(err, "model.safetensors: missing tensor '%s'", name);
    if (check_shape(t, "model.safetensors", ndim, rows, cols, err) != 0)
        return -1;
    return emb_st_read_f32(file, t, dst, err);
}

/* A tensor named encoder.layer.N.* with N >= L means config and weights
 * disagree; everything else unknown (MLM head, pooler) is ignored. */
static int check_layer_count(const weight_files *wf, int L, emb_err *err)
{
    for (int f = 0; f < wf->n; f++) {
        for (int i = 0; i < wf->files[f].n_tensors; i++) {
            const char *name = wf->files[f].tensors[i].name;
            if (strncmp(name, "bert.", 5) == 0)
                name += 5;
            int layer = -1;
            if (sscanf(name, "encoder.layer.%d.", &layer) == 1 && layer >= L)
                return emb_fail(err,
                                "model.safetensors: tensor '%s' belongs to layer %d but "
                                "config.json has num_hidden_layers = %d",
                                wf->files[f].tensors[i].name, layer, L);
        }
    }
    return 0;
}

static int load_weights(emb_model *m, const weight_files *wf, emb_err *err)
{
    const emb_config *c = &m->cfg;
    const long C = c->hidden_size, I = c->intermediate_size;
    emb_weights *w = &m->w;
    if (check_layer_count(wf, c->num_hidden_layers, err) != 0)
        return -1;
    if (load_tensor(wf, "embeddings.word_embeddings.weight", 2, c->vocab_size, C, w->wte, err) ||
        load_tensor(wf, "embeddings.position_embeddings.weight", 2, c->max_position_embeddings, C,
                    w->wpe, err) ||
        load_tensor(wf, "embeddings.token_type_embeddings.weight", 2, c->type_vocab_size, C,
                    w->wtt, err) ||
        load_tensor(wf, "embeddings.LayerNorm.weight", 1, C, 0, w->emb_lnw, err) ||
        load_tensor(wf, "embeddings.LayerNorm.bias", 1, C, 0, w->emb_lnb, err))
        return -1;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        static const char *qkv_names[3] = {"query", "key", "value"};
        char name[256];
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "encoder.layer.%d.attention.self.%s.weight", l,
                     qkv_names[j]);
            if (load_tensor(wf, name, 2, C, C, w->qkvw + (l * 3 + j) * C * C, err))
                return -1;
            snprintf(name, sizeof name, "encoder.layer.%d.attention.self.%s.bias", l,
                     qkv_names[j]);
            if (load_tensor(wf, name, 1, C, 0, w->qkvb + (l * 3 + j) * C, err))
                return -1;
        }
        struct { const char *suffix; int ndim; long rows, cols; float *dst; } rest[] = {
            {"attention.output.dense.weight", 2, C, C, w->attn_ow + l * C * C},
            {"attention.output.dense.bias", 1, C, 0, w->attn_ob + l * C},
            {"attention.output.LayerNorm.weight", 1, C, 0, w->ln1w + l * C},
            {"attention.output.LayerNorm.bias", 1, C, 0, w->ln1b + l * C},
            {"intermediate.dense.weight", 2, I, C, w->fcw + l * I * C},
            {"intermediate.dense.bias", 1, I, 0, w->fcb + l * I},
            {"output.dense.weight", 2, C, I, w->fc_projw + l * C * I},
            {"output.dense.bias", 1, C, 0, w->fc_projb + l * C},
            {"output.LayerNorm.weight", 1, C, 0, w->ln2w + l * C},
            {"output.LayerNorm.bias", 1, C, 0, w->ln2b + l * C},
        };
        for (size_t j = 0; j < sizeof rest / sizeof rest[0]; j++) {
            snprintf(name, sizeof name, "encoder.layer.%d.%s", l, rest[j].suffix);
            if (load_tensor(wf, name, rest[j].ndim, rest[j].rows, rest[j].cols, rest[j].dst, err))
                return -1;
        }
    }
    return 0;
}

/* ---- Dense modules ------------------------------------------------------ */

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Reads one tensor of a Dense module's safetensors file (path). */
static int dense_tensor(const emb_st_file *f, const char *path, const char *name, int ndim,
                        long rows, long cols, float *dst, emb_err *err)
{
    const emb_st_tensor *t = emb_st_find(f, name);
    if (t == NULL)
        return emb_fail(err, "%s: missing tensor '%s'", path, name);
    if (check_shape(t, path, ndim, rows, cols, err) != 0)
        return -1;
    return emb_st_read_f32(f, t, dst, err);
}

/* A Dense file holds linear.weight and, with a bias, linear.bias; anything
 * else (a residual projection of a newer sentence-transformers, a bias the
 * config says is absent) would be silently ignored weights. */
static int dense_check_names(const emb_st_file *f, const char *path, int bias, emb_err *err)
{
    for (int i = 0; i < f->n_tensors; i++) {
        const char *name = f->tensors[i].name;
        if (strcmp(name, "linear.weight") == 0 || (bias && strcmp(name, "linear.bias") == 0))
            continue;
        return emb_fail(err, "%s: unexpected tensor '%s' (config.json says this Dense module "
                        "has linear.weight%s)", path, name, bias ? " and linear.bias" : " only");
    }
    return 0;
}

/* Reads Dense module k's weights from <dir>/<folder>/model.safetensors. */
static int load_dense_weights(emb_model *m, const char *dir, int k, emb_err *err)
{
    const emb_dense_config *d = &m->cfg.dense[k];
    char path[4096 + 160];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", dir, d->folder);
    if (!file_exists(path)) {
        char bin[4096 + 160];
        snprintf(bin, sizeof bin, "%s/%s/pytorch_model.bin", dir, d->folder);
        if (file_exists(bin))
            return emb_fail(err,
                            "%s: the Dense module's weights are only in pytorch_model.bin, a "
                            "format embedd does not read; re-save the model with safetensors "
                            "(sentence-transformers: model.save(path, safe_serialization=True))",
                            bin);
        return emb_fail(err, "%s: not found (the weights of Dense module %d)", path, k);
    }
    emb_st_file f;
    if (emb_st_open(&f, path, err) != 0)
        return -1;
    const long OUT = d->out_features, IN = d->in_features;
    int rc = dense_check_names(&f, path, d->bias, err);
    if (rc == 0)
        rc = dense_tensor(&f, path, "linear.weight", 2, OUT, IN, m->dense[k].w, err);
    if (rc == 0 && d->bias)
        rc = dense_tensor(&f, path, "linear.bias", 1, OUT, 0, m->dense[k].b, err);
    emb_st_close(&f);
    return rc;
}

/* For m->cfg: the tokenizer of tok_dir (no larger than the vocabulary) and
 * an uninitialised parameter block with m->w pointing into it. */
static int model_alloc(emb_model *m, const char *tok_dir, emb_err *err)
{
    m->tok = emb_tokenizer_load(tok_dir, err);
    if (m->tok == NULL)
        return -1;
    emb_tokenizer_set_st_lowercase(m->tok, m->cfg.do_lower_case);
    if (emb_tokenizer_vocab_size(m->tok) > m->cfg.vocab_size)
        return emb_fail(err, "%s: tokenizer has %d tokens but config.json vocab_size is %d",
                        tok_dir, emb_tokenizer_vocab_size(m->tok), m->cfg.vocab_size);
    m->n_params = emb_encoder_floats(&m->cfg) + emb_dense_floats(&m->cfg);
    m->params = malloc(m->n_params * sizeof(float));
    if (m->params == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %zu parameters", m->n_params);
    model_point(m);
    return 0;
}

emb_model *emb_model_load(const char *dir, emb_err *err)
{
    weight_files wf = {.n = 0};
    emb_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    if (emb_config_load(&m->cfg, dir, err) != 0)
        goto fail;
    if (model_alloc(m, dir, err) != 0)
        goto fail;
    if (weight_files_open(&wf, dir, err) != 0)
        goto fail;
    if (load_weights(m, &wf, err) != 0)
        goto fail;
    weight_files_close(&wf);
    for (int k = 0; k < m->cfg.n_dense; k++) {
        if (load_dense_weights(m, dir, k, err) != 0)
            goto fail;
    }
    if (emb_model_pack(m, err) != 0)
        goto fail;
    return m;
fail:
    weight_files_close(&wf);
    emb_model_free(m);
    return NULL;
}

/* splitmix64 and Box-Muller: a small seeded normal generator, so that model/
 * needs nothing beyond libc for initialisation. */
static uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static float normal01(uint64_t *state)
{
    double u1 = ((splitmix(state) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (splitmix(state) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill_normal(float *p, size_t n, float std, uint64_t *state)
{
    for (size_t i = 0; i < n; i++)
        p[i] = std * normal01(state);
}

static void fill_const(float *p, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

emb_model *emb_model_init(const emb_config *cfg, const char *tok_dir, uint64_t seed,
                          emb_err *err)
{
    emb_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    if (model_alloc(m, tok_dir, err) != 0)
        goto fail;
    size_t sizes[EMB_N_PARAM_TENSORS];
    emb_param_sizes(cfg, sizes);
    /* emb_weights order: which tensors are matrices/embeddings (normal),
     * LayerNorm weights (1) or biases (0). */
    static const char kind[EMB_N_PARAM_TENSORS] = {'n', 'n', 'n', '1', '0', 'n', '0', 'n', '0',
                                                   '1', '0', 'n', '0', 'n', '0', '1', '0'};
    uint64_t state = seed;
    float *p = m->params;
    for (int i = 0; i < EMB_N_PARAM_TENSORS; i++) {
        if (kind[i] == 'n')
            fill_normal(p, sizes[i], 0.02f, &state);
        else
            fill_const(p, sizes[i], kind[i] == '1' ? 1.0f : 0.0f);
        p += sizes[i];
    }
    /* Dense modules like the encoder's matrices: weights N(0, 0.02^2), bias 0 */
    for (int k = 0; k < cfg->n_dense; k++) {
        const emb_dense_config *d = &cfg->dense[k];
        fill_normal(m->dense[k].w, (size_t)d->out_features * (size_t)d->in_features, 0.02f,
                    &state);
        if (d->bias)
            fill_const(m->dense[k].b, (size_t)d->out_features, 0.0f);
    }
    if (emb_model_pack(m, err) != 0)
        goto fail;
    return m;
fail:
    emb_model_free(m);
    return NULL;
}

/* A model with config cfg whose parameters start as src's (cfg may list
 * more Dense modules than src's; their floats are left for the caller),
 * sharing src's tokenizer. Not packed yet. */
static emb_model *model_copy(const emb_model *src, const emb_config *cfg, emb_err *err)
{
    emb_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    m->precision = src->precision;
    m->n_params = emb_encoder_floats(cfg) + emb_dense_floats(cfg);
    m->params = malloc(m->n_params * sizeof(float));
    if (m->params == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %zu parameters", m->n_params);
        free(m);
        return NULL;
    }
    memcpy(m->params, src->params, src->n_params * sizeof(float));
    m->tok = emb_tokenizer_retain(src->tok);
    model_point(m);
    return m;
}

emb_model *emb_model_clone(const emb_model *src, emb_err *err)
{
    emb_model *m = model_copy(src, &src->cfg, err);
    if (m != NULL && emb_model_pack(m, err) != 0) {
        emb_model_free(m);
        return NULL;
    }
    return m;
}

emb_model *emb_model_add_dense(const emb_model *src, const emb_dense_config *d, const float *w,
                               const float *b, emb_err *err)
{
    emb_config cfg = src->cfg;
    const int dim = emb_config_dim(&cfg);
    if (cfg.n_dense == EMB_MAX_DENSE) {
        emb_fail(err, "the model already has %d Dense modules, the most supported", cfg.n_dense);
        return NULL;
    }
    if (d->in_features != dim) {
        emb_fail(err, "a new Dense module takes in_features %d, the model gives %d",
                 d->in_features, dim);
        return NULL;
    }
    const int known_act = d->activation == EMB_ACT_IDENTITY || d->activation == EMB_ACT_TANH;
    if (d->out_features < 1 || !known_act) {
        emb_fail(err, "a new Dense module needs out_features >= 1 and a known activation");
        return NULL;
    }
    emb_dense_config *nd = &cfg.dense[cfg.n_dense];
    *nd = *d;
    nd->bias = d->bias != 0;
    emb_dense_folder(cfg.n_dense, nd->folder, sizeof nd->folder);
    cfg.n_dense++;
    emb_model *m = model_copy(src, &cfg, err);
    if (m == NULL)
        return NULL;
    const int k = cfg.n_dense - 1;
    memcpy(m->dense[k].w, w, sizeof(float) * (size_t)nd->out_features * (size_t)nd->in_features);
    if (nd->bias)
        memcpy(m->dense[k].b, b, sizeof(float) * (size_t)nd->out_features);
    if (emb_model_pack(m, err) != 0) {
        emb_model_free(m);
        return NULL;
    }
    return m;
}

static void free_packed(emb_model *m)
{
    if (m->lin == NULL)
        return;
    for (int i = 0; i < m->cfg.num_hidden_layers * EMB_LIN_PER_LAYER; i++)
        emb_gemm_free(&m->lin[i]);
    free(m->lin);
    m->lin = NULL;
}

/* Packs one dense weight for the model's precision. */
static int pack_linear(const emb_model *m, emb_gemm_w *lin, const float *w, int n, int k,
                       emb_err *err)
{
    if (m->precision == EMB_PRECISION_INT8)
        return emb_gemm_pack_int8(lin, w, n, k, err);
    return emb_gemm_pack(lin, w, n, k, err);
}

int emb_model_pack(emb_model *m, emb_err *err)
{
    const int L = m->cfg.num_hidden_layers, C = m->cfg.hidden_size;
    const int I = m->cfg.intermediate_size;
    const emb_weights *w = &m->w;
    free_packed(m);
    m->lin = calloc((size_t)L * EMB_LIN_PER_LAYER, sizeof(emb_gemm_w));
    if (m->lin == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    for (int l = 0; l < L; l++) {
        emb_gemm_w *lin = m->lin + (long)l * EMB_LIN_PER_LAYER;
        if (pack_linear(m, &lin[EMB_LIN_QKV], w->qkvw + (long)l * 3 * C * C, 3 * C, C, err) ||
            pack_linear(m, &lin[EMB_LIN_ATTN_OUT], w->attn_ow + (long)l * C * C, C, C, err) ||
            pack_linear(m, &lin[EMB_LIN_FC], w->fcw + (long)l * I * C, I, C, err) ||
            pack_linear(m, &lin[EMB_LIN_FC_PROJ], w->fc_projw + (long)l * C * I, C, I, err)) {
            free_packed(m);
            return -1;
        }
    }
    return 0;
}

int emb_model_set_precision(emb_model *m, emb_precision precision, emb_err *err)
{
    if (precision != EMB_PRECISION_FP32 && precision != EMB_PRECISION_INT8)
        return emb_fail(err, "unknown precision %d", (int)precision);
    const emb_precision old = m->precision;
    m->precision = precision;
    if (emb_model_pack(m, err) == 0)
        return 0;
    m->precision = old;
    emb_err ignored;
    emb_model_pack(m, &ignored); /* back to the old packing; fp32 needs no VNNI */
    return -1;
}

emb_model *emb_model_load_precision(const char *dir, emb_precision precision, emb_err *err)
{
    emb_model *m = emb_model_load(dir, err);
    if (m != NULL && m->precision != precision && emb_model_set_precision(m, precision, err) != 0) {
        emb_model_free(m);
        return NULL;
    }
    return m;
}

const char *emb_precision_name(emb_precision precision)
{
    return precision == EMB_PRECISION_INT8 ? "int8" : "fp32";
}

int emb_precision_parse(const char *s, emb_precision *out)
{
    if (strcmp(s, "fp32") == 0 || strcmp(s, "f32") == 0 || strcmp(s, "float32") == 0)
        *out = EMB_PRECISION_FP32;
    else if (strcmp(s, "int8") == 0)
        *out = EMB_PRECISION_INT8;
    else
        return -1;
    return 0;
}

void emb_model_free(emb_model *m)
{
    if (m == NULL)
        return;
    free_packed(m);
    emb_tokenizer_free(m->tok);
    free(m->params);
    free(m);
}

/* ---- workspace --------------------------------------------------------- */

emb_workspace *emb_workspace_new(const emb_model *m, int max_tokens, emb_err *err)
{
    if (max_tokens < 1) {
        emb_fail(err, "workspace: max_tokens must be positive");
        return NULL;
    }
    emb_workspace *ws = calloc(1, sizeof *ws);
    if (ws == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    ws->max_tokens = max_tokens;
    ws->hidden = m->cfg.hidden_size;
    ws->inter = m->cfg.intermediate_size;
    ws->max_len = m->cfg.max_position_embeddings;
    ws->head_width = m->cfg.n_dense > 0 ? m->cfg.hidden_size : 0;
    for (int k = 0; k < m->cfg.n_dense; k++) {
        if (ws->head_width < m->cfg.dense[k].out_features)
            ws->head_width = m->cfg.dense[k].out_features;
    }
    ws->n_threads = omp_get_max_threads();
    ws->scratch = malloc(sizeof(float) * attention_scratch_floats(
        ws->max_len, m->cfg.hidden_size / m->cfg.num_attention_heads, ws->n_threads));
    if (ws->scratch == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        free(ws);
        return NULL;
    }
    return ws;
}

void emb_workspace_free(emb_workspace *ws)
{
    if (ws == NULL)
        return;
    free(ws->x);
    free(ws->qkv);
    free(ws->att);
    free(ws->tmp);
    free(ws->ffn);
    free(ws->scratch);
    free(ws->seq_off);
    free(ws->pooled);
    free(ws->dense_tmp);
    free(ws);
}

static int grow(float **buf, size_t n)
{
    float *p = realloc(*buf, n * sizeof(float));
    if (p == NULL)
        return -1;
    *buf = p;
    return 0;
}

/* Widens the pooled-row buffers when m has wider Dense modules than the
 * model the workspace was made for (a server's workspace outlives the
 * version it was made with; a new version may have gained a Dense module). */
static int workspace_fit_head(emb_workspace *ws, const emb_model *m, emb_err *err)
{
    int need = m->cfg.n_dense > 0 ? m->cfg.hidden_size : 0;
    for (int k = 0; k < m->cfg.n_dense; k++)
        if (need < m->cfg.dense[k].out_features)
            need = m->cfg.dense[k].out_features;
    if (need <= ws->head_width)
        return 0;
    size_t head = (size_t)(ws->cap_seqs > 0 ? ws->cap_seqs : 1) * (size_t)need;
    if (grow(&ws->pooled, head) || grow(&ws->dense_tmp, head))
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for pooled rows");
    ws->head_width = need;
    return 0;
}

/* Makes room for T tokens in S sequences. Buffers only grow. */
static int workspace_reserve(emb_workspace *ws, int T, int S, emb_err *err)
{
    if (T > ws->max_tokens)
        return emb_fail_as(err, EMB_ERR_TOO_LARGE,
                           "batch of %d tokens exceeds the workspace cap of %d", T, ws->max_tokens);
    if (S + 1 > ws->cap_seqs) {
        int *p = realloc(ws->seq_off, sizeof(int) * (size_t)(S + 1));
        if (p == NULL)
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        ws->seq_off = p;
        size_t head = (size_t)(S + 1) * (size_t)ws->head_width;
        if (ws->head_width > 0 && (grow(&ws->pooled, head) || grow(&ws->dense_tmp, head)))
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %d pooled rows", S);
        ws->cap_seqs = S + 1;
    }
    if (T <= ws->cap_tokens)
        return 0;
    long want = (long)ws->cap_tokens * 2;
    if (want < T)
        want = T;
    if (want > ws->max_tokens)
        want = ws->max_tokens;
    size_t n = (size_t)want;
    if (grow(&ws->x, n * ws->hidden) || grow(&ws->qkv, n * 3 * ws->hidden) || grow(&ws->att, n * ws->hidden) ||
        grow(&ws->tmp, n * ws->hidden) || grow(&ws->ffn, n * ws->inter))
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory for %ld tokens of activations",
                           want);
    ws->cap_tokens = (int)want;
    return 0;
}

/* ---- forward ----------------------------------------------------------- */

int emb_forward(const emb_model *m, emb_workspace *ws, const int32_t *ids, const int *lens,
                int n_seqs, emb_err *err)
{
    const emb_config *c = &m->cfg;
    const emb_weights *w = &m->w;
    const int C = c->hidden_size, I = c->intermediate_size, NH = c->num_attention_heads;
    const float eps = c->layer_norm_eps;
    long total = 0;
    if (n_seqs < 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "negative sequence count");
    for (int s = 0; s < n_seqs; s++) {
        if (lens[s] < 1 || lens[s] > c->max_position_embeddings)
            return emb_fail_as(err, EMB_ERR_INVALID, "sequence %d has %d tokens; must be 1..%d", s,
                               lens[s], c->max_position_embeddings);
        total += lens[s];
        if (total > INT_MAX)
            return emb_fail_as(err, EMB_ERR_TOO_LARGE, "batch too large");
    }
    const int T = (int)total;
    if (workspace_reserve(ws, T, n_seqs, err) != 0)
        return -1;
    ws->seq_off[0] = 0;
    for (int s = 0; s < n_seqs; s++)
        ws->seq_off[s + 1] = ws->seq_off[s] + lens[s];
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab_size)
            return emb_fail_as(err, EMB_ERR_INVALID, "token id %d out of range 0..%d", ids[t],
                               c->vocab_size - 1);
    }

    /* A small pass (a single short text) is too small to share except in
     * its GEMMs, which run on the calling thread and the pool (gemm.h): on
     * a busy host an OpenMP region would wait for a second thread that the
     * scheduler may not run for milliseconds (measured: 17 tokens, MiniLM,
     * loaded host: 20 ms on one thread, 360 ms on two OpenMP threads). */
    const int team = omp_get_max_threads() < ws->n_threads ? omp_get_max_threads()
                                                             : ws->n_threads;
    const int threads = T <= EMB_SMALL_PASS_TOKENS ? 1 : team;
    embeddings_forward(ws->x, ids, ws->seq_off, n_seqs, w->wte, w->wpe, w->wtt, C);
    residual_layernorm_forward(ws->x, NULL, NULL, w->emb_lnw, w->emb_lnb, T, C, eps);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const long lC = (long)l * C;
        const emb_gemm_w *lin = m->lin + (long)l * EMB_LIN_PER_LAYER;
        emb_gemm(ws->qkv, ws->x, T, &lin[EMB_LIN_QKV], w->qkvb + lC * 3, EMB_EPI_NONE);
        attention_forward(ws->att, ws->qkv, ws->seq_off, n_seqs, C, NH, ws->scratch, ws->max_len,
                          threads);
        const emb_layernorm ln1 = {ws->x, w->ln1w + lC, w->ln1b + lC, eps};
        emb_gemm_ln(ws->tmp, ws->att, T, &lin[EMB_LIN_ATTN_OUT], w->attn_ob + lC, &ln1);
        emb_gemm(ws->ffn, ws->x, T, &lin[EMB_LIN_FC], w->fcb + (long)l * I, EMB_EPI_GELU);
        const emb_layernorm ln2 = {ws->x, w->ln2w + lC, w->ln2b + lC, eps};
        emb_gemm_ln(ws->tmp, ws->ffn, T, &lin[EMB_LIN_FC_PROJ], w->fc_projb + lC, &ln2);
    }
    return 0;
}

/* Tokens per forward pass inside emb_embed_ids. OpenBLAS runs these layer
 * shapes faster at a few thousand rows than at tens of thousands (the
 * operands stay in cache), and the activations stay small. */
#define EMBED_CHUNK_TOKENS 4096

/* The Dense modules on S pooled rows: ws->pooled (S, C) -> out (S, D).
 * ws->pooled and ws->dense_tmp take turns holding the modules between. */
static void dense_chain_forward(const emb_model *m, emb_workspace *ws, int S, float *out)
{
    const int n = m->cfg.n_dense;
    float *in = ws->pooled, *other = ws->dense_tmp;
    for (int k = 0; k < n; k++) {
        const emb_dense_config *d = &m->cfg.dense[k];
        float *dst = k == n - 1 ? out : other;
        dense_forward(dst, in, m->dense[k].w, m->dense[k].b, S, d->in_features, d->out_features,
                      (int)d->activation);
        other = in;
        in = dst;
    }
}

/* 1 when any of the n floats is NaN or infinite. The comparison is false
 * for NaN, so one test catches both; the loop is branch-free and
 * vectorises: one pass over the outputs, nothing next to the forward pass
 * that made them. */
static int any_non_finite(const float *x, long n)
{
    int bad = 0;
    for (long i = 0; i < n; i++)
        bad |= !(fabsf(x[i]) <= FLT_MAX);
    return bad;
}

int emb_embed_ids(const emb_model *m, emb_workspace *ws, const int32_t *ids, const int *lens,
                  int n_seqs, emb_pooling pooling, int normalize, float *out, emb_err *err)
{
    const int C = m->cfg.hidden_size, D = emb_model_dim(m);
    int s0 = 0;
    long t0 = 0;
    if (workspace_fit_head(ws, m, err) != 0)
        return -1;
    while (s0 < n_seqs) {
        int s1 = s0;
        long tokens = 0;
        do {
            tokens += lens[s1];
            s1++;
        } while (s1 < n_seqs && tokens + lens[s1] <= EMBED_CHUNK_TOKENS);
        if (emb_forward(m, ws, ids + t0, lens + s0, s1 - s0, err) != 0)
            return -1;
        if (m->cfg.n_dense == 0) {
            pool_forward(out + (long)s0 * D, ws->x, ws->seq_off, s1 - s0, C, (int)pooling);
        } else {
            pool_forward(ws->pooled, ws->x, ws->seq_off, s1 - s0, C, (int)pooling);
            dense_chain_forward(m, ws, s1 - s0, out + (long)s0 * D);
        }
        t0 += tokens;
        s0 = s1;
    }
    /* Weights holding NaN or Inf (a corrupt file, a diverged training run)
     * make every vector NaN; that is the model's fault, never a number to
     * hand out (JSON would print it as 0, base64 as NaN bytes). */
    if (any_non_finite(out, (long)n_seqs * D))
        return emb_fail_as(err, EMB_ERR_FAILED, "model produced non-finite values");
    if (normalize)
        l2norm_forward(out, n_seqs, D);
    return 0;
}
