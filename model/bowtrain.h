/* bowtrain.h: contrastive training of a bag-of-words sentence encoder,
 *
 *   z(text) = sum over the text's tokens t of  weight(t) * E[t]
 *
 * (E (V, D) learnt, weight (V) held fixed), on text pairs such as a word
 * and its dictionary definition: symmetric InfoNCE with in-batch
 * negatives on cos(z_anchor, z_positive) / temperature, and Adam (torch's
 * defaults, no weight decay) on E.
 *
 * It is the first stage of `embedd pretrain`: the BERT start of wordinit.h
 * computes exactly this z, so training it here first teaches the word
 * vectors (a defined word moves toward the words of its definition) while
 * the weights stay where the corpus statistics put them. Training the same
 * function in BERT form lets the optimizer rescale every weight at once,
 * which costs more than the definitions teach (see the model card).
 *
 * Legend: V vocabulary, D vector size, B pairs per step.
 */
#ifndef EMBEDD_BOWTRAIN_H
#define EMBEDD_BOWTRAIN_H

#include <stdint.h>

#include "base/error.h"
#include "ops_train.h"

/* Tokenised text pairs, back to back. */
typedef struct emb_text_pairs {
    long n;            /* pairs */
    int32_t *ids;      /* every token id */
    long *off;         /* (2n + 1): anchor i is ids[off[2i], off[2i+1]), its
                          positive ids[off[2i+1], off[2i+2]) */
    long cap_ids, cap_off;
} emb_text_pairs;

/* Appends a pair (na, nb >= 1 tokens, no special tokens needed). */
int emb_text_pairs_add(emb_text_pairs *p, const int32_t *a, int na, const int32_t *b, int nb,
                       emb_err *err);
void emb_text_pairs_free(emb_text_pairs *p);

typedef struct emb_bow_train_options {
    int batch;           /* pairs per step (256) */
    float lr;            /* Adam's learning rate, constant (1e-3) */
    float temperature;   /* 0.05 */
    uint64_t seed;       /* the order of the pairs */
} emb_bow_train_options;

emb_bow_train_options emb_bow_train_options_default(void);

typedef struct emb_bow_trainer {
    int V, D;
    emb_bow_train_options o;
    float *E;            /* (V, D) borrowed: trained in place */
    const float *weight; /* (V) borrowed */
    float *grad, *m, *v; /* (V, D) */
    long step;           /* Adam steps taken */
    /* one step's activations */
    float *z, *unit, *norms, *dunit, *sim; /* (2B, D), (2B, D), (2B), (2B, D), (2B, B) */
    int *labels;         /* (B) */
    long *order;         /* (n) pair order of the epoch */
    long cap_order;
} emb_bow_trainer;

emb_bow_trainer *emb_bow_trainer_new(float *E, const float *weight, int V, int D,
                                     const emb_bow_train_options *o, emb_err *err);
void emb_bow_trainer_free(emb_bow_trainer *t);

/* One pass over p in a shuffled order (seeded by o.seed and epoch); the last
 * partial batch is dropped. *mean_loss gets the mean InfoNCE loss of its
 * steps. Token ids must be in 0..V-1. */
int emb_bow_train_epoch(emb_bow_trainer *t, const emb_text_pairs *p, int epoch,
                        double *mean_loss, emb_err *err);

/* The loss and the gradient of E (into t->grad, overwritten) of pairs
 * idx[0..B-1], without an update: for tests. B must be in 1..o.batch (NaN
 * otherwise); the pairs' ids are not checked (emb_bow_train_epoch does). */
double emb_bow_loss_grad(emb_bow_trainer *t, const emb_text_pairs *p, const long *idx, int B);

#endif
