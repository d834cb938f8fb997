/* upsert.c: a batch of items on their way into a store (upsert.h). */
#include <stdlib.h>
#include <string.h>

#include "learn/samples.h"
#include "ops.h"
#include "upsert.h"

int upsert_alloc(upsert_batch *b, int n, int dim)
{
    b->n = n;
    b->dim = dim;
    b->items = calloc((size_t)n, sizeof(store_item));
    b->vecs = calloc((size_t)n * (size_t)dim, sizeof(float));
    b->payloads = calloc((size_t)n, sizeof(char *));
    b->texts = calloc((size_t)n, sizeof(textjob_input));
    b->text_item = calloc((size_t)n, sizeof(int));
    return b->items != NULL && b->vecs != NULL && b->payloads != NULL && b->texts != NULL &&
                   b->text_item != NULL
               ? 0
               : -1;
}

void upsert_free(upsert_batch *b)
{
    textjob_free(&b->tj);
    if (b->payloads != NULL)
        for (int i = 0; i < b->n; i++)
            free(b->payloads[i]);
    free(b->payloads);
    free(b->items);
    free(b->vecs);
    free(b->texts);
    free(b->text_item);
    cJSON_Delete(b->root);
}

void upsert_set_text(upsert_batch *b, int i, const char *text)
{
    store_item *it = &b->items[i];
    it->text = text;
    it->text_len = strlen(text);
    b->texts[b->n_text].text = it->text;
    b->texts[b->n_text].len = it->text_len;
    b->text_item[b->n_text++] = i;
    upsert_vector(b, i)[0] = 1.0f; /* a stand-in for store_item_check; replaced once embedded */
}

void upsert_set_vector(upsert_batch *b, int i)
{
    b->items[i].vector = upsert_vector(b, i);
    b->items[i].vector_dim = b->dim;
    b->items[i].model_version = 0; /* a client's vector; texts get theirs once embedded */
}

int upsert_set_payload(upsert_batch *b, int i, const cJSON *payload)
{
    b->payloads[i] = cJSON_PrintUnformatted(payload);
    if (b->payloads[i] == NULL)
        return -1;
    b->items[i].payload = b->payloads[i];
    b->items[i].payload_len = strlen(b->payloads[i]);
    return 0;
}

void upsert_take_vectors(server *srv, upsert_batch *b)
{
    for (int k = 0; k < b->tj.n; k++) {
        float *v = upsert_vector(b, b->text_item[k]);
        memcpy(v, b->tj.out + (long)k * b->dim, sizeof(float) * (size_t)b->dim);
        l2norm_forward(v, 1, b->dim);
        store_item *it = &b->items[b->text_item[k]];
        it->model_version = (int)b->tj.mv->id;
        learner_offer(srv->learner, it->text, it->text_len, SAMPLES_SRC_ITEMS);
    }
}
