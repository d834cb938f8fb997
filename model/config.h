/* config.h: everything read from a Hugging Face / sentence-transformers
 * model directory except weights and tokenizer.
 *
 * Files and fallbacks (as sentence-transformers does it):
 *   config.json                 required; BERT hyperparameters.
 *   modules.json                optional; lists Transformer, Pooling, Dense
 *                               and Normalize modules and their folders, in
 *                               the order they run. Missing: mean pooling,
 *                               no Dense, no normalisation. Any other module
 *                               type is an error that names it.
 *   <pooling dir>/config.json   optional; classic pooling_mode_*_token
 *                               booleans or the newer "pooling_mode": "cls".
 *                               Missing: mean.
 *   <dense dir>/config.json     required per Dense module: in_features,
 *                               out_features, bias (default true),
 *                               activation_function (default Tanh, as in
 *                               sentence-transformers). Its weights
 *                               (<dense dir>/model.safetensors) are read by
 *                               the model loader (bert.h).
 *   sentence_bert_config.json   optional; max_seq_length, do_lower_case.
 *   tokenizer_config.json       optional; model_max_length when
 *                               sentence_bert_config has no max_seq_length.
 *   config_sentence_transformers.json
 *                               optional; "prompts" {name: prefix text} and
 *                               "default_prompt_name" (a name or null): the
 *                               text is put before each input (emb_prompt_find).
 * max_seq_length is finally capped by max_position_embeddings. */
#ifndef EMBEDD_CONFIG_H
#define EMBEDD_CONFIG_H

#include <stddef.h>

#include "base/error.h"

typedef enum emb_pooling {
    EMB_POOL_MEAN = 0,
    EMB_POOL_CLS,
    EMB_POOL_LAST,
} emb_pooling;

/* The activation of a Dense module, by its torch class. */
typedef enum emb_activation {
    EMB_ACT_IDENTITY = 0,  /* torch.nn.modules.linear.Identity */
    EMB_ACT_TANH,          /* torch.nn.modules.activation.Tanh */
} emb_activation;

/* Most prompts one model may have, and their sizes. */
#define EMB_MAX_PROMPTS 16
#define EMB_PROMPT_NAME_MAX 64
#define EMB_PROMPT_TEXT_MAX 512

/* A sentence-transformers prompt: a name and the text put before inputs. */
typedef struct emb_prompt {
    char name[EMB_PROMPT_NAME_MAX];
    char text[EMB_PROMPT_TEXT_MAX];
} emb_prompt;

/* Most Dense modules one model may list. */
#define EMB_MAX_DENSE 8

/* A sentence-transformers Dense module: y = activation(x W^T + b) on the
 * pooled vector, W (out_features, in_features). Dense modules run after
 * Pooling and before Normalize, in modules.json order; the first takes
 * hidden_size inputs, each next one the previous one's out_features. */
typedef struct emb_dense_config {
    int in_features;
    int out_features;
    int bias;                  /* 1: the module has linear.bias */
    emb_activation activation;
    char folder[128];          /* where it was loaded from, inside the model dir */
} emb_dense_config;

typedef struct emb_config {
    /* config.json */
    char model_type[32];           /* "bert" */
    int vocab_size;
    int hidden_size;
    int num_hidden_layers;
    int num_attention_heads;
    int intermediate_size;
    int max_position_embeddings;
    int type_vocab_size;
    int pad_token_id;
    float layer_norm_eps;
    float hidden_dropout_prob;
    float attention_probs_dropout_prob;
    char hidden_act[16];           /* only "gelu" (exact erf) is accepted */

    /* sentence-transformers */
    int has_modules_json;          /* 1 when modules.json was present */
    emb_pooling pooling;
    int n_dense;                   /* Dense modules after pooling, 0..EMB_MAX_DENSE */
    emb_dense_config dense[EMB_MAX_DENSE];
    int normalize;                 /* 1 when a Normalize module is listed */
    int max_seq_length;            /* tokens, including [CLS] and [SEP] */
    int do_lower_case;             /* sentence_bert_config: lowercase before tokenising */
    /* config_sentence_transformers.json */
    int n_prompts;
    emb_prompt prompts[EMB_MAX_PROMPTS];
    char default_prompt[EMB_PROMPT_NAME_MAX]; /* "": none */
} emb_config;

/* Reads dir/config.json and the sentence-transformers files. Missing or
 * invalid required fields are errors that name the file and the field. */
int emb_config_load(emb_config *cfg, const char *dir, emb_err *err);

/* Writes config.json, modules.json, 1_Pooling/config.json, each Dense
 * module's <2 + k>_Dense/config.json (emb_dense_folder) and
 * sentence_bert_config.json for cfg into dir (which must exist). Normalize,
 * when on, is listed last. Dense weights are the caller's (checkpoint.h). */
int emb_config_save(const emb_config *cfg, const char *dir, emb_err *err);

/* The dimension of the model's embeddings: the last Dense module's
 * out_features, else hidden_size. */
int emb_config_dim(const emb_config *cfg);

/* The folder emb_config_save gives Dense module k: "<2 + k>_Dense", the
 * sentence-transformers "<idx>_<class>" name. */
void emb_dense_folder(int k, char *out, size_t cap);

/* The torch class path sentence-transformers saves for a (known)
 * activation, e.g. "torch.nn.modules.activation.Tanh". */
const char *emb_activation_name(emb_activation a);

/* The prompt called name, NULL when the model has none of that name. */
const emb_prompt *emb_prompt_find(const emb_config *cfg, const char *name);

/* Reads the prompts of config_sentence_transformers.json (its text) into
 * cfg: 0, or -1 with err naming file and field (a prompt that is not a
 * string, too many or too long, a default that names no prompt). */
int emb_prompts_parse(emb_config *cfg, const char *text, const char *file, emb_err *err);

const char *emb_pooling_name(emb_pooling p);          /* "mean", "cls", "last" */
int emb_pooling_parse(const char *s, emb_pooling *out); /* 0 ok, -1 unknown */

#endif
