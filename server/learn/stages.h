/* stages.h: the learner's adaptation stages that are not gradient steps.
 *
 * The whitening stage refits the whitening transform (model/whiten.h) on
 * the sample buffer's texts and offers the result to the gate as a
 * candidate like any other:
 *
 *   candidate = the current version with its whitening Dense module
 *               refitted on the buffer (replaced when the last Dense module
 *               is one: Identity activation, bias, out = in), or with one
 *               appended when it has none
 *
 * The fit is on the raw outputs that the whitening module sees (pooling
 * and the Dense modules before it, unnormalised), so a refit replaces the
 * old transform instead of stacking a second one on it. The output
 * dimension never changes (k = D; the store and clients keep their
 * vectors' width): when the texts span fewer than D directions (a last
 * LayerNorm removes one), the shrink is raised to STAGE_MIN_SHRINK so that
 * every direction can be kept.
 *
 * Measured on STS-B (docs/learning.md): the refit pays on an anisotropic
 * encoder (the previous default model: +20 points) and is neutral on the
 * current SIF bag-of-words default, which is already isotropic; the gate
 * decides which (gate.h: lexical agreement).
 *
 * The work is split so that the compute thread never blocks long: begin
 * takes the texts, each work call embeds one chunk of them (about one
 * encoder pass of STAGE_CHUNK texts), finish fits and builds the model.
 *
 * Ownership: a whiten_stage owns its texts (from begin to the end of
 * finish or cancel), its workspace and moments; it borrows the model given
 * to begin, which the caller keeps alive until finish or cancel. The model
 * finish returns is the caller's. Threads: one thread at a time (the
 * learner's compute thread). */
#ifndef EMBEDD_STAGES_H
#define EMBEDD_STAGES_H

#include "bert.h"
#include "whiten.h"

#define STAGE_CHUNK 64
#define STAGE_MIN_SHRINK 0.01

typedef struct whiten_stage whiten_stage;

whiten_stage *whiten_stage_new(double shrink, int max_seq_len, emb_err *err);
void whiten_stage_free(whiten_stage *s);

/* Starts a fit of a refitted copy of m on texts (n >= 2, taken over: freed
 * by the stage). 0, or -1 with err (the texts are then freed). */
int whiten_stage_begin(whiten_stage *s, const emb_model *m, char **texts, int n, emb_err *err);
/* Embeds one chunk: 1 while more remain, 0 when all are in, -1 with err. */
int whiten_stage_work(whiten_stage *s, emb_err *err);
/* Fits and returns the candidate (the caller's), or NULL with err; the
 * stage is then ready for the next begin. */
emb_model *whiten_stage_finish(whiten_stage *s, emb_err *err);
/* Drops a fit in progress. */
void whiten_stage_cancel(whiten_stage *s);
/* 1 between begin and finish/cancel. */
int whiten_stage_running(const whiten_stage *s);
/* Texts the last finished fit used (0: none yet). */
int whiten_stage_last_n(const whiten_stage *s);

/* The whitening module of m: the index of its last Dense module when that
 * is one (Identity, bias, out = in), else -1. */
int stage_whitening_index(const emb_model *m);
/* m with the transform w (k = D) as its whitening module: replacing the one
 * stage_whitening_index finds, else appended. NULL with err. */
emb_model *stage_with_whitening(const emb_model *m, const emb_whiten *w, emb_err *err);
/* The whole stage at once (tests, scripts): begin, work until done, finish. */
emb_model *stage_whiten_fit(const emb_model *m, char **texts, int n, double shrink,
                            int max_seq_len, emb_err *err);

#endif
