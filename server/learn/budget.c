/* budget.c: see budget.h. */
#include "budget.h"

void budget_init(train_budget *b, int max_epochs, long long texts)
{
    b->max_epochs = max_epochs > 0 ? max_epochs : 0;
    atomic_init(&b->left, texts * b->max_epochs);
}

void budget_earn(train_budget *b, long long n)
{
    if (b->max_epochs > 0 && n > 0)
        atomic_fetch_add(&b->left, n * b->max_epochs);
}

void budget_spend(train_budget *b, long long n)
{
    if (b->max_epochs > 0 && n > 0)
        atomic_fetch_sub(&b->left, n);
}

int budget_allows(train_budget *b)
{
    return b->max_epochs == 0 || atomic_load(&b->left) > 0;
}

long long budget_left(train_budget *b)
{
    if (b->max_epochs == 0)
        return -1;
    long long n = atomic_load(&b->left);
    return n > 0 ? n : 0;
}
