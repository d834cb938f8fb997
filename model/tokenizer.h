/* tokenizer.h: BERT BasicTokenizer + WordPiece, exactly as Hugging Face's
 * BertNormalizer / BertPreTokenizer / WordPiece (tokenizers) do it.
 *
 * Pipeline for one text:
 *   1. decode UTF-8; invalid sequences become U+FFFD;
 *   2. clean: drop U+0000, U+FFFD and control characters, map whitespace to ' ';
 *   3. put spaces around CJK ideographs;
 *   4. lowercase (Unicode lowercase mapping, not case folding) and strip
 *      accents (NFD, drop Mn), when the tokenizer says so;
 *   5. split on whitespace, then split off each punctuation character;
 *   6. WordPiece: greedy longest match with the "##" prefix; a word with more
 *      than max_input_chars_per_word (100) characters, or one that cannot be
 *      split, becomes one [UNK].
 *
 * Loaded from tokenizer.json, or else vocab.txt + tokenizer_config.json.
 * Special token ids come from the vocabulary. A loaded tokenizer is
 * read-only and safe to share between threads. */
#ifndef EMBEDD_TOKENIZER_H
#define EMBEDD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct emb_tokenizer emb_tokenizer;

typedef struct emb_special_tokens {
    int32_t cls_id, sep_id, pad_id, unk_id, mask_id; /* -1 when absent (unk is required) */
} emb_special_tokens;

typedef struct emb_tokenizer_options {
    int lowercase;                 /* BertNormalizer lowercase */
    int strip_accents;             /* -1: follow lowercase (HF's None), 0 or 1 */
    int handle_chinese_chars;
    int clean_text;
    int max_input_chars_per_word;  /* 100 */
    int st_lowercase;              /* sentence-transformers do_lower_case: Python
                                      str.lower() on the raw text before step 1 */
} emb_tokenizer_options;

/* dir holds tokenizer.json, or vocab.txt (+ optional tokenizer_config.json). */
emb_tokenizer *emb_tokenizer_load(const char *dir, emb_err *err);
/* One more owner: emb_tokenizer_free frees only when the last owner calls it.
 * Lets model versions share one tokenizer. Returns tok. */
emb_tokenizer *emb_tokenizer_retain(emb_tokenizer *tok);
void emb_tokenizer_free(emb_tokenizer *tok);

int emb_tokenizer_vocab_size(const emb_tokenizer *tok);
emb_special_tokens emb_tokenizer_specials(const emb_tokenizer *tok);
emb_tokenizer_options emb_tokenizer_get_options(const emb_tokenizer *tok);
/* Sets st_lowercase (from sentence_bert_config.json); call before sharing. */
void emb_tokenizer_set_st_lowercase(emb_tokenizer *tok, int on);
/* Id of an exact vocabulary entry, -1 when absent. */
int32_t emb_tokenizer_token_id(const emb_tokenizer *tok, const char *token);
/* Vocabulary entry of id, NULL when out of range. */
const char *emb_tokenizer_token(const emb_tokenizer *tok, int32_t id);

/* Tokenises text (len bytes, need not be NUL-terminated) without special
 * tokens. Writes at most cap ids and returns the total number of ids the
 * text produces (which may be larger than cap), or -1 on allocation failure. */
int emb_tokenize(const emb_tokenizer *tok, const char *text, size_t len, int32_t *ids, int cap);

/* Where each of n tokens (ids from emb_tokenize of the same text, no
 * special tokens) came from in text: the byte span [start[i], stop[i]) of
 * the original characters it covers, as Hugging Face's offsets. The
 * normalisation (lowercasing, accent stripping, NFKD) changes what the
 * token spells, not where it points: "Café" gives "cafe" over all 5
 * bytes; "##" pieces point at their part of the word; a character that
 * normalises into several (a ligature) is covered whole by each token
 * made from it. [UNK] covers its word. A token that cannot be found (it
 * should not happen) gets the empty span at the position reached.
 * Returns 0, or -1 on invalid arguments or allocation failure. */
int emb_token_spans(const emb_tokenizer *tok, const char *text, size_t len, const int32_t *ids,
                    int n, int32_t *start, int32_t *stop);

/* Model input: [CLS] tokens [SEP], at most max_len ids in all (max_len >= 2).
 * Truncation keeps the first tokens (truncate_left = 0) or the last ones
 * (truncate_left = 1). Writes the ids to ids (room for max_len) and returns
 * how many; *full_len (if not NULL) gets the length before truncation.
 * Returns -1 on allocation failure. */
int emb_encode(const emb_tokenizer *tok, const char *text, size_t len, int max_len,
               int truncate_left, int32_t *ids, int *full_len);

#endif
