/* libFuzzer target: arbitrary bytes through the tokenizer (both the
 * tokenizer.json and the vocab.txt loadings). Every id must be in range. */
#include <stdint.h>
#include <stdlib.h>

#include "tokenizer.h"

static emb_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (tok == NULL) {
        emb_err err;
        tok = emb_tokenizer_load("tests/fixtures/tiny-f16", &err);
        if (tok == NULL)
            abort();
    }
    int32_t ids[256];
    int n = emb_tokenize(tok, (const char *)data, size, ids, 256);
    if (n < 0)
        abort();
    int vocab = emb_tokenizer_vocab_size(tok);
    for (int i = 0; i < n && i < 256; i++) {
        if (ids[i] < 0 || ids[i] >= vocab)
            abort();
    }
    int full = 0;
    int m = emb_encode(tok, (const char *)data, size, 32, (int)(size & 1), ids, &full);
    if (m < 2 || m > 32 || full < m)
        abort();
    return 0;
}
