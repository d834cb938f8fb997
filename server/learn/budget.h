/* budget.h: the training budget: how many more text uses the trainer may
 * make before it rests.
 *
 * Design
 *   Every distinct text that enters the training buffer earns max_epochs
 *   uses; every text drawn into a training step spends one. When nothing is
 *   left the trainer rests (learner_idle answers BATCHER_IDLE_REST and the
 *   compute thread blocks) until new texts earn more. So, on average, each
 *   buffered text is trained on at most max_epochs times, and after the
 *   last new text the trainer does at most max_epochs x buffer / batch more
 *   steps. At start the texts replayed from DATA/samples.log earn their
 *   uses again (a restart trains on them for max_epochs more epochs, once).
 *   The bound is on the mean, not per text: draws stay uniform over the
 *   buffer (samples.h), which keeps the sample log's format and an O(1)
 *   draw. max_epochs 0 means no limit (the trainer never rests while it
 *   has texts).
 *
 * Threads: budget_earn from any thread (HTTP threads offering texts),
 * budget_spend and budget_allows from the compute thread; the count is one
 * atomic. */
#ifndef EMBEDD_BUDGET_H
#define EMBEDD_BUDGET_H

#include <stdatomic.h>

typedef struct train_budget {
    int max_epochs;            /* uses each new text earns; 0: unlimited */
    atomic_llong left;         /* uses left (may go below 0 by one batch) */
} train_budget;

/* Starts with texts (already buffered) x max_epochs uses. */
void budget_init(train_budget *b, int max_epochs, long long texts);
/* n new texts entered the buffer. */
void budget_earn(train_budget *b, long long n);
/* n texts were drawn into a step. */
void budget_spend(train_budget *b, long long n);
/* 1 while the trainer may start a step. */
int budget_allows(train_budget *b);
/* Uses left (0 and up), or -1 when unlimited. */
long long budget_left(train_budget *b);

#endif
