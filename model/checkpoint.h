/* checkpoint.h: model directories written by embedd, in the Hugging Face
 * and sentence-transformers layout, so that embedd and standard tools
 * (transformers, sentence-transformers) both load them:
 *
 *   model.safetensors          encoder tensors under their HF names (Q, K
 *                              and V split again), plus cls.predictions.*
 *                              when a head is given; F32, F16 or BF16
 *   config.json, modules.json, 1_Pooling/config.json, <2 + k>_Dense/config.json,
 *   sentence_bert_config.json  from the config (emb_config_save)
 *   <2 + k>_Dense/model.safetensors
 *                              each Dense module's linear.weight and
 *                              linear.bias, always F32 (small; a whitening
 *                              transform needs the range)
 *   tokenizer files            copied from the source model directory
 *   optimizer.safetensors      with a trainer: its AdamW moments (flat, in
 *   trainer_state.json         the parameter layout) and step, skip count,
 *                              random state and settings, for resuming
 *
 * A save is atomic: everything is written and fsync'd in a temporary
 * directory beside the target, which then replaces the target in one
 * rename (renameat2 RENAME_EXCHANGE when the target exists). */
#ifndef EMBEDD_CHECKPOINT_H
#define EMBEDD_CHECKPOINT_H

#include "safetensors.h"
#include "train.h"

/* The encoder tensors of a model block enc (emb_weights layout, as in
 * emb_model.params) and optionally an MLM head (NULL: none) to path, as
 * dtype. The Dense block after the encoder tensors is not written here. */
int emb_save_weights(const char *path, const emb_config *cfg, const float *enc,
                     const float *head, emb_dtype dtype, emb_err *err);

/* A complete model directory at out_dir from cfg and the model block enc
 * (emb_model.params: encoder, then Dense modules) (and head, may be NULL),
 * with the tokenizer files of tok_dir. When t is not NULL its optimizer
 * state is saved too, and enc/head may be NULL to take the trainer's. */
int emb_save_model_dir(const char *out_dir, const emb_config *cfg, const float *enc,
                       const float *head, const char *tok_dir, emb_dtype dtype,
                       const emb_trainer *t, emb_err *err);

/* Restores step, skip count, random state and AdamW moments saved with a
 * trainer into t (whose parameters came from the same directory). Returns
 * 1 when dir has no trainer state, 0 when restored, -1 on error. */
int emb_trainer_load_state(emb_trainer *t, const char *dir, emb_err *err);

/* Removes a directory tree (files and subdirectories). */
int emb_remove_tree(const char *dir, emb_err *err);

#endif
