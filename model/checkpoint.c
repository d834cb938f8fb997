/* checkpoint.c: writing model directories and trainer state. See
 * checkpoint.h for the layout and the atomic replace. */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/fileio.h"

#define PATH_CAP 4096
/* 17 encoder tensors with Q, K, V split, per layer up to 16 names. */
#define MAX_ENTRIES(L) (5 + 16 * (L) + EMB_N_HEAD_TENSORS)

static const char *const head_tensor_names[EMB_N_HEAD_TENSORS] = {
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.bias",
};

static void set_entry(emb_st_entry *e, const char *name, emb_dtype dt, const float *data,
                      int64_t rows, int64_t cols)
{
    e->name = name;
    e->dtype = dt;
    e->data = data;
    e->ndim = cols > 0 ? 2 : 1;
    e->shape[0] = rows;
    e->shape[1] = cols;
}

int emb_save_weights(const char *path, const emb_config *cfg, const float *enc,
                     const float *head, emb_dtype dtype, emb_err *err)
{
    const int L = cfg->num_hidden_layers;
    const int64_t C = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size;
    emb_weights w;
    emb_weights_point(&w, (float *)enc, cfg);
    const int cap = MAX_ENTRIES(L);
    emb_st_entry *e = calloc((size_t)cap, sizeof *e);
    char (*names)[96] = calloc((size_t)cap, sizeof *names);
    if (e == NULL || names == NULL) {
        free(e);
        free(names);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    int n = 0;
    set_entry(&e[n++], "embeddings.word_embeddings.weight", dtype, w.wte, V, C);
    set_entry(&e[n++], "embeddings.position_embeddings.weight", dtype, w.wpe,
              cfg->max_position_embeddings, C);
    set_entry(&e[n++], "embeddings.token_type_embeddings.weight", dtype, w.wtt,
              cfg->type_vocab_size, C);
    set_entry(&e[n++], "embeddings.LayerNorm.weight", dtype, w.emb_lnw, C, 0);
    set_entry(&e[n++], "embeddings.LayerNorm.bias", dtype, w.emb_lnb, C, 0);
    static const char *qkv[3] = {"query", "key", "value"};
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < 3; j++) {
            snprintf(names[n], sizeof names[n], "encoder.layer.%d.attention.self.%s.weight", l,
                     qkv[j]);
            set_entry(&e[n], names[n], dtype, w.qkvw + ((int64_t)l * 3 + j) * C * C, C, C);
            n++;
            snprintf(names[n], sizeof names[n], "encoder.layer.%d.attention.self.%s.bias", l,
                     qkv[j]);
            set_entry(&e[n], names[n], dtype, w.qkvb + ((int64_t)l * 3 + j) * C, C, 0);
            n++;
        }
        struct { const char *suffix; const float *p; int64_t rows, cols; } rest[] = {
            {"attention.output.dense.weight", w.attn_ow + l * C * C, C, C},
            {"attention.output.dense.bias", w.attn_ob + l * C, C, 0},
            {"attention.output.LayerNorm.weight", w.ln1w + l * C, C, 0},
            {"attention.output.LayerNorm.bias", w.ln1b + l * C, C, 0},
            {"intermediate.dense.weight", w.fcw + l * I * C, I, C},
            {"intermediate.dense.bias", w.fcb + l * I, I, 0},
            {"output.dense.weight", w.fc_projw + l * C * I, C, I},
            {"output.dense.bias", w.fc_projb + l * C, C, 0},
            {"output.LayerNorm.weight", w.ln2w + l * C, C, 0},
            {"output.LayerNorm.bias", w.ln2b + l * C, C, 0},
        };
        for (size_t j = 0; j < sizeof rest / sizeof rest[0]; j++) {
            snprintf(names[n], sizeof names[n], "encoder.layer.%d.%s", l, rest[j].suffix);
            set_entry(&e[n], names[n], dtype, rest[j].p, rest[j].rows, rest[j].cols);
            n++;
        }
    }
    if (head != NULL) {
        emb_mlm_head h;
        emb_head_point(&h, (float *)head, cfg);
        set_entry(&e[n++], head_tensor_names[0], dtype, h.dense_w, C, C);
        set_entry(&e[n++], head_tensor_names[1], dtype, h.dense_b, C, 0);
        set_entry(&e[n++], head_tensor_names[2], dtype, h.ln_w, C, 0);
        set_entry(&e[n++], head_tensor_names[3], dtype, h.ln_b, C, 0);
        set_entry(&e[n++], head_tensor_names[4], dtype, h.bias, V, 0);
    }
    int rc = emb_st_write(path, e, n, "{\"format\":\"pt\"}", err);
    free(e);
    free(names);
    return rc;
}

/* Each Dense module's weights into <dir>/<2 + k>_Dense/model.safetensors
 * (the folders emb_config_save made), F32 whatever dtype the encoder is
 * saved in: they are small, and a whitening transform needs the range. */
static int save_dense_weights(const char *dir, const emb_config *cfg, const float *enc,
                              emb_err *err)
{
    emb_dense_w d[EMB_MAX_DENSE];
    emb_dense_point(d, (float *)enc + emb_encoder_floats(cfg), cfg);
    for (int k = 0; k < cfg->n_dense; k++) {
        const emb_dense_config *c = &cfg->dense[k];
        char folder[32], path[PATH_CAP + 64];
        emb_dense_folder(k, folder, sizeof folder);
        snprintf(path, sizeof path, "%s/%s/model.safetensors", dir, folder);
        emb_st_entry e[2];
        int n = 0;
        set_entry(&e[n++], "linear.weight", EMB_DT_F32, d[k].w, c->out_features, c->in_features);
        if (c->bias)
            set_entry(&e[n++], "linear.bias", EMB_DT_F32, d[k].b, c->out_features, 0);
        if (emb_st_write(path, e, n, "{\"format\":\"pt\"}", err) != 0)
            return -1;
    }
    return 0;
}

/* ---- small file helpers ------------------------------------------------------ */

/* Copies src to dst by replace-by-rename (fileio.h). */
static int copy_file(const char *src, const char *dst, emb_err *err)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", src, strerror(errno));
    emb_replace r;
    if (emb_replace_begin(&r, dst, err) != 0) {
        close(in);
        return -1;
    }
    char buf[65536];
    ssize_t got;
    int rc = 0;
    while ((got = read(in, buf, sizeof buf)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 || emb_write_all(r.fd, buf, (size_t)got) != 0) {
            rc = emb_fail_as(err, EMB_ERR_IO, "copying %s to %s: %s", src, dst, strerror(errno));
            break;
        }
    }
    close(in);
    if (rc != 0) {
        emb_replace_abort(&r);
        return -1;
    }
    return emb_replace_commit(&r, NULL, err);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* tokenizer.json and/or vocab.txt, and the tokenizer's side files. */
static int copy_tokenizer(const char *tok_dir, const char *out, emb_err *err)
{
    static const char *files[] = {"tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                  "special_tokens_map.json"};
    int copied_vocab = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[PATH_CAP + 64], dst[PATH_CAP + 64];
        snprintf(src, sizeof src, "%s/%s", tok_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", out, files[i]);
        if (!file_exists(src))
            continue;
        if (copy_file(src, dst, err) != 0)
            return -1;
        copied_vocab += i < 2;
    }
    if (!copied_vocab)
        return emb_fail(err, "%s: no tokenizer.json or vocab.txt to copy", tok_dir);
    return 0;
}

static int write_text(const char *path, const char *text, emb_err *err)
{
    return emb_write_file_atomic(path, text, strlen(text), err);
}

/* ---- trainer state ------------------------------------------------------------ */

static const char *objective_name(int obj)
{
    if (obj == EMB_OBJ_PAIRS)
        return "pairs";
    return obj == EMB_OBJ_BOTH ? "both" : obj == EMB_OBJ_MLM ? "mlm" : "simcse";
}

static char *state_json(const emb_trainer *t)
{
    char buf[32];
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "step", (double)t->step);
    cJSON_AddNumberToObject(root, "skipped", (double)t->skipped);
    cJSON *rng = cJSON_AddArrayToObject(root, "rng");
    for (int i = 0; i < 2; i++) {
        snprintf(buf, sizeof buf, "%" PRIu64, t->rng.s[i]);
        cJSON_AddItemToArray(rng, cJSON_CreateString(buf));
    }
    cJSON_AddNumberToObject(root, "n_params", (double)t->n_params);
    cJSON *s = cJSON_AddObjectToObject(root, "settings");
    cJSON_AddStringToObject(s, "objective", objective_name(t->tc.objective));
    cJSON_AddNumberToObject(s, "lr", t->tc.lr);
    cJSON_AddNumberToObject(s, "weight_decay", t->tc.weight_decay);
    cJSON_AddNumberToObject(s, "warmup_steps", t->tc.warmup_steps);
    cJSON_AddNumberToObject(s, "total_steps", t->tc.total_steps);
    cJSON_AddNumberToObject(s, "temperature", t->tc.temperature);
    cJSON_AddNumberToObject(s, "mlm_prob", t->tc.mlm_prob);
    cJSON_AddNumberToObject(s, "l2sp", t->tc.l2sp);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

static int save_trainer_state(const emb_trainer *t, const char *dir, emb_err *err)
{
    char path[PATH_CAP + 64];
    emb_st_entry e[2];
    set_entry(&e[0], "adam.m", EMB_DT_F32, t->m, (int64_t)t->n_params, 0);
    set_entry(&e[1], "adam.v", EMB_DT_F32, t->v, (int64_t)t->n_params, 0);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (emb_st_write(path, e, 2, NULL, err) != 0)
        return -1;
    char *text = state_json(t);
    if (text == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    int rc = write_text(path, text, err);
    free(text);
    return rc;
}

static int read_moment(const emb_st_file *f, const char *name, float *dst, size_t n,
                       emb_err *err)
{
    const emb_st_tensor *tt = emb_st_find(f, name);
    if (tt == NULL || emb_st_numel(tt) != (int64_t)n)
        return emb_fail(err, "optimizer.safetensors: '%s' missing or not %zu values", name, n);
    return emb_st_read_f32(f, tt, dst, err);
}

int emb_trainer_load_state(emb_trainer *t, const char *dir, emb_err *err)
{
    char path[PATH_CAP + 64];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return 1;
    char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
    const cJSON *skipped = cJSON_GetObjectItemCaseSensitive(root, "skipped");
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(root, "rng");
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(root, "n_params");
    int ok = cJSON_IsNumber(step) && cJSON_IsNumber(skipped) && cJSON_IsArray(rng) &&
             cJSON_GetArraySize(rng) == 2 && cJSON_IsNumber(np);
    if (ok && (size_t)np->valuedouble != t->n_params) {
        cJSON_Delete(root);
        return emb_fail(err, "%s: state for %.0f parameters, the trainer has %zu", path,
                        np->valuedouble, t->n_params);
    }
    uint64_t s[2] = {0, 0};
    for (int i = 0; ok && i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(rng, i);
        ok = cJSON_IsString(v) && sscanf(v->valuestring, "%" SCNu64, &s[i]) == 1;
    }
    long step_v = ok ? (long)step->valuedouble : 0, skipped_v = ok ? (long)skipped->valuedouble : 0;
    cJSON_Delete(root);
    if (!ok)
        return emb_fail(err, "%s: invalid trainer state", path);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    emb_st_file f;
    if (emb_st_open(&f, path, err) != 0)
        return -1;
    int rc = read_moment(&f, "adam.m", t->m, t->n_params, err);
    if (rc == 0)
        rc = read_moment(&f, "adam.v", t->v, t->n_params, err);
    emb_st_close(&f);
    if (rc != 0)
        return -1;
    t->step = step_v;
    t->skipped = skipped_v;
    t->rng.s[0] = s[0];
    t->rng.s[1] = s[1];
    return 0;
}

/* ---- directories --------------------------------------------------------------- */

int emb_remove_tree(const char *dir, emb_err *err)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : emb_fail(err, "%s: %s", dir, strerror(errno));
    struct dirent *ent;
    int rc = 0;
    while (rc == 0 && (ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
            continue;
        char path[PATH_CAP + 300];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        struct stat st;
        if (lstat(path, &st) != 0)
            rc = emb_fail(err, "%s: %s", path, strerror(errno));
        else if (S_ISDIR(st.st_mode))
            rc = emb_remove_tree(path, err);
        else if (unlink(path) != 0)
            rc = emb_fail(err, "%s: %s", path, strerror(errno));
    }
    closedir(d);
    if (rc == 0 && rmdir(dir) != 0)
        rc = emb_fail(err, "%s: %s", dir, strerror(errno));
    return rc;
}

/* Puts the finished tmp directory at out_dir in one rename. */
static int swap_into_place(const char *tmp, const char *out_dir, emb_err *err)
{
    struct stat st;
    if (stat(out_dir, &st) != 0) {
        if (rename(tmp, out_dir) != 0)
            return emb_fail(err, "rename %s -> %s: %s", tmp, out_dir, strerror(errno));
    } else {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out_dir, RENAME_EXCHANGE) != 0)
            return emb_fail(err, "exchange %s <-> %s: %s", tmp, out_dir, strerror(errno));
        if (emb_remove_tree(tmp, err) != 0) /* tmp now holds the old directory */
            return -1;
    }
    return emb_fsync_parent(out_dir, err);
}

int emb_save_model_dir(const char *out_dir, const emb_config *cfg, const float *enc,
                       const float *head, const char *tok_dir, emb_dtype dtype,
                       const emb_trainer *t, emb_err *err)
{
    if (t != NULL) {
        enc = enc != NULL ? enc : t->params;
        head = head != NULL ? head : t->params + t->n_enc;
    }
    if (enc == NULL)
        return emb_fail(err, "save: no weights given");
    char tmp[PATH_CAP], path[PATH_CAP + 64];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    if (emb_remove_tree(tmp, err) != 0)
        return -1;
    if (mkdir(tmp, 0755) != 0)
        return emb_fail(err, "%s: %s", tmp, strerror(errno));
    int rc = -1;
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    if (emb_save_weights(path, cfg, enc, head, dtype, err) != 0)
        goto out;
    if (emb_config_save(cfg, tmp, err) != 0 || save_dense_weights(tmp, cfg, enc, err) != 0 ||
        copy_tokenizer(tok_dir, tmp, err) != 0)
        goto out;
    if (t != NULL && save_trainer_state(t, tmp, err) != 0)
        goto out;
    if (emb_fsync_dir(tmp, err) != 0)
        goto out;
    rc = swap_into_place(tmp, out_dir, err);
out:
    if (rc != 0) {
        emb_err ignored;
        emb_remove_tree(tmp, &ignored);
    }
    return rc;
}
