/* bert.h: a BERT-family encoder loaded from a Hugging Face model directory.
 *
 * All parameters live in one flat float block; emb_weights is a struct of
 * named pointers into it (llm.c style). Gradients and optimizer state use the
 * same layout, so a snapshot is one memcpy. Q, K and V are stored fused as
 * one (3C, C) matrix per layer; the loader fills it from the three HF tensors.
 *
 * A loaded emb_model is read-only during inference and can be shared by any
 * number of threads, each with its own emb_workspace. */
#ifndef EMBEDD_BERT_H
#define EMBEDD_BERT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "base/error.h"
#include "gemm.h"
#include "tokenizer.h"

/* Legend: V vocab, P max positions, TV token types, C hidden, L layers,
 * I intermediate. */
typedef struct emb_weights {
    float *wte;        /* (V, C)     embeddings.word_embeddings */
    float *wpe;        /* (P, C)     embeddings.position_embeddings */
    float *wtt;        /* (TV, C)    embeddings.token_type_embeddings */
    float *emb_lnw;    /* (C)        embeddings.LayerNorm.weight */
    float *emb_lnb;    /* (C)        embeddings.LayerNorm.bias */
    float *qkvw;       /* (L, 3C, C) attention.self.{query,key,value}.weight */
    float *qkvb;       /* (L, 3C)    attention.self.{query,key,value}.bias */
    float *attn_ow;    /* (L, C, C)  attention.output.dense.weight */
    float *attn_ob;    /* (L, C)     attention.output.dense.bias */
    float *ln1w;       /* (L, C)     attention.output.LayerNorm.weight */
    float *ln1b;       /* (L, C)     attention.output.LayerNorm.bias */
    float *fcw;        /* (L, I, C)  intermediate.dense.weight */
    float *fcb;        /* (L, I)     intermediate.dense.bias */
    float *fc_projw;   /* (L, C, I)  output.dense.weight */
    float *fc_projb;   /* (L, C)     output.dense.bias */
    float *ln2w;       /* (L, C)     output.LayerNorm.weight */
    float *ln2b;       /* (L, C)     output.LayerNorm.bias */
} emb_weights;

#define EMB_N_PARAM_TENSORS 17

/* One sentence-transformers Dense module's weights (config.h), views into
 * the model's flat block, after the encoder tensors. IN and OUT are the
 * module's in_features and out_features. */
typedef struct emb_dense_w {
    float *w;          /* (OUT, IN)  linear.weight */
    float *b;          /* (OUT)      linear.bias, NULL when the module has none */
} emb_dense_w;

/* The dense layers of one encoder layer, packed for emb_gemm. */
enum { EMB_LIN_QKV = 0, EMB_LIN_ATTN_OUT, EMB_LIN_FC, EMB_LIN_FC_PROJ, EMB_LIN_PER_LAYER };

/* Arithmetic of the dense layers. fp32 is the reference; int8 quantizes
 * weights per output and activations per token and call (gemm.h), opt-in. */
typedef enum emb_precision { EMB_PRECISION_FP32 = 0, EMB_PRECISION_INT8 = 1 } emb_precision;

typedef struct emb_model {
    emb_config cfg;
    emb_precision precision;   /* of the packed dense weights; clones keep it */
    emb_tokenizer *tok;
    float *params;             /* flat block of n_params floats: the encoder
                                * tensors (emb_weights order), then each
                                * Dense module's weight and bias */
    size_t n_params;
    emb_weights w;             /* pointers into params */
    emb_dense_w dense[EMB_MAX_DENSE]; /* (cfg.n_dense) pointers into params */
    emb_gemm_w *lin;           /* (L, EMB_LIN_PER_LAYER) packed copies of the dense weights */
} emb_model;

/* Sizes in floats of the 17 parameter tensors, in emb_weights order. */
void emb_param_sizes(const emb_config *cfg, size_t sizes[EMB_N_PARAM_TENSORS]);
/* Points the fields of w into the flat block base, laid out by cfg. */
void emb_weights_point(emb_weights *w, float *base, const emb_config *cfg);
/* Floats of the encoder tensors (the sum of emb_param_sizes), which is
 * where the Dense block starts; and floats of the Dense block. */
size_t emb_encoder_floats(const emb_config *cfg);
size_t emb_dense_floats(const emb_config *cfg);
/* Points d[0..cfg->n_dense) into the Dense block at base: per module its
 * weight, then its bias when it has one. */
void emb_dense_point(emb_dense_w *d, float *base, const emb_config *cfg);

/* Loads config, tokenizer, model.safetensors and each Dense module's
 * <folder>/model.safetensors from dir. A Dense folder that holds only
 * pytorch_model.bin is an error that says to re-save it as safetensors;
 * missing, mis-shaped and unexpected Dense tensors are errors that name
 * the file and the tensor. */
emb_model *emb_model_load(const char *dir, emb_err *err);
/* A new model from cfg (validated as emb_config_save does) with the
 * tokenizer of tok_dir (tokenizer.json or vocab.txt) and BERT's
 * initialisation: matrices and embeddings N(0, 0.02^2), LayerNorm weights 1,
 * every bias 0; seeded, so reproducible. */
emb_model *emb_model_init(const emb_config *cfg, const char *tok_dir, uint64_t seed,
                          emb_err *err);
/* A copy of src (config, weights, packing) sharing src's tokenizer. */
emb_model *emb_model_clone(const emb_model *src, emb_err *err);
/* A copy of src with one more Dense module after its own: d (its
 * in_features must be emb_model_dim(src); its folder is set to
 * emb_dense_folder's name), weight w (OUT, IN) and bias b (OUT; ignored
 * unless d->bias). */
emb_model *emb_model_add_dense(const emb_model *src, const emb_dense_config *d, const float *w,
                               const float *b, emb_err *err);
/* The dimension of m's embeddings: the last Dense module's out_features,
 * else hidden_size (emb_config_dim). */
int emb_model_dim(const emb_model *m);
/* (Re)packs the dense weights for emb_gemm, in m->precision; call after
 * params change. */
int emb_model_pack(emb_model *m, emb_err *err);
/* Repacks m in another precision. On failure (int8 without AVX-512 VNNI,
 * out of memory) m keeps its old precision and -1 is returned. */
int emb_model_set_precision(emb_model *m, emb_precision precision, emb_err *err);
/* emb_model_load, then emb_model_set_precision. */
emb_model *emb_model_load_precision(const char *dir, emb_precision precision, emb_err *err);
/* "fp32" or "int8"; and back (also "f32", "float32"): 0, or -1 if unknown. */
const char *emb_precision_name(emb_precision precision);
int emb_precision_parse(const char *s, emb_precision *out);
void emb_model_free(emb_model *m);

/* Per-thread activation buffers, grown on demand up to the caps given at
 * creation and reused across calls. */
typedef struct emb_workspace {
    int max_tokens;            /* hard cap on T for one forward pass */
    int cap_tokens;            /* T the buffers currently hold */
    int cap_seqs;
    int hidden, inter, max_len;  /* C, I and P of the model */
    int head_width;            /* widest of C and the Dense outputs; 0: no Dense */
    float *x;                  /* (T, C)  hidden states, the residual stream */
    float *qkv;                /* (T, 3C) */
    float *att;                /* (T, C)  attention output, heads concatenated */
    float *tmp;                /* (T, C)  projection outputs */
    float *ffn;                /* (T, I) */
    float *scratch;            /* attention scratch for n_threads threads */
    int n_threads;             /* OpenMP threads the scratch was sized for */
    int *seq_off;              /* (S + 1) */
    float *pooled;             /* (S, head_width) pooled rows, then Dense outputs */
    float *dense_tmp;          /* (S, head_width) the other Dense buffer */
} emb_workspace;

emb_workspace *emb_workspace_new(const emb_model *m, int max_tokens, emb_err *err);
void emb_workspace_free(emb_workspace *ws);

/* Passes of at most this many tokens run attention and LayerNorm on the
 * calling thread only, and their GEMMs on the pool (gemm.h). */
#define EMB_SMALL_PASS_TOKENS EMB_GEMM_POOL_ROWS

/* Runs the encoder on n_seqs packed sequences: ids holds their tokens back
 * to back (each already [CLS] ... [SEP]), lens their lengths. The sum of lens
 * must not exceed ws->max_tokens, and each len must be in
 * 1..max_position_embeddings. Leaves the last hidden state in ws->x. */
int emb_forward(const emb_model *m, emb_workspace *ws, const int32_t *ids, const int *lens,
                int n_seqs, emb_err *err);

/* emb_forward, then pooling, the model's Dense modules (in order) and L2
 * normalisation when normalize, into out (n_seqs, D), D = emb_model_dim.
 * A NaN or infinity in the outputs (broken weights) is EMB_ERR_FAILED,
 * "model produced non-finite values", never vectors. */
int emb_embed_ids(const emb_model *m, emb_workspace *ws, const int32_t *ids, const int *lens,
                  int n_seqs, emb_pooling pooling, int normalize, float *out, emb_err *err);

#endif
