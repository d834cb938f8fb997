/* config.h: everything read from a Hugging Face / sentence-transformers
 * model directory except weights and tokenizer.
 *
 * Files and fallbacks (as sentence-transformers does it):
 *   config.json                 required; BERT hyperparameters.
 *   modules.json                optional; lists Transformer, Pooling and
 *                               Normalize modules and their folders. Missing:
 *                               mean pooling, no normalisation.
 *   <pooling dir>/config.json   optional; classic pooling_mode_*_token
 *                               booleans or the newer "pooling_mode": "cls".
 *                               Missing: mean.
 *   sentence_bert_config.json   optional; max_seq_length, do_lower_case.
 *   tokenizer_config.json       optional; model_max_length when
 *                               sentence_bert_config has no max_seq_length.
 * max_seq_length is finally capped by max_position_embeddings. */
#ifndef EMBEDD_CONFIG_H
#define EMBEDD_CONFIG_H

#include "error.h"

typedef enum emb_pooling {
    EMB_POOL_MEAN = 0,
    EMB_POOL_CLS,
    EMB_POOL_LAST,
} emb_pooling;

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
    int normalize;                 /* 1 when a Normalize module is listed */
    int max_seq_length;            /* tokens, including [CLS] and [SEP] */
    int do_lower_case;             /* sentence_bert_config: lowercase before tokenising */
} emb_config;

/* Reads dir/config.json and the sentence-transformers files. Missing or
 * invalid required fields are errors that name the file and the field. */
int emb_config_load(emb_config *cfg, const char *dir, emb_err *err);

/* Writes config.json, modules.json, 1_Pooling/config.json and
 * sentence_bert_config.json for cfg into dir (which must exist). */
int emb_config_save(const emb_config *cfg, const char *dir, emb_err *err);

const char *emb_pooling_name(emb_pooling p);          /* "mean", "cls", "last" */
int emb_pooling_parse(const char *s, emb_pooling *out); /* 0 ok, -1 unknown */

#endif
