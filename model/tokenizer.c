/* tokenizer.c: BERT WordPiece tokenizer, as Hugging Face tokenizers does it.
 *
 * Design
 *   Loading reads tokenizer.json (or vocab.txt + tokenizer_config.json) into
 *   one emb_tokenizer: a string arena with an open-addressing hash table for
 *   the vocabulary, an id -> entry index, the added (special) tokens and the
 *   normalizer as a flat list of passes over code points. After loading
 *   nothing in it changes (st_lowercase is set before sharing), so any number
 *   of threads may tokenise with one tokenizer at once.
 *
 *   Tokenising one text is a straight line of stages over arrays of code
 *   points, each stage as Hugging Face runs it:
 *     1. decode UTF-8, one U+FFFD per maximal invalid subpart;
 *     2. st_lowercase: Python str.lower() (sentence-transformers), when set;
 *     3. split out added tokens matched on the raw text ([CLS], [SEP], ...
 *        in the text become their ids, as AddedVocabulary does);
 *     4. the normalizer passes on each remaining piece (BertNormalizer:
 *        clean, CJK padding, strip accents, lowercase);
 *     5. split out added tokens matched on the normalized text;
 *     6. BertPreTokenizer: split on whitespace, isolate punctuation;
 *     7. WordPiece on each word.
 *   Every buffer belongs to one call: it grows up to a hard cap and is freed
 *   before the call returns. Ids go to a sink that keeps the first (or the
 *   last) cap ids and counts them all.
 *
 * Unicode
 *   utf8proc gives categories, decompositions, composition and the simple
 *   lowercase mapping. Where Hugging Face's Rust code differs from plain
 *   categories (whitespace is the White_Space property, control is Cc/Cf/Co
 *   without Cn, the CJK ranges, full lowercase of U+0130) it is spelt out
 *   next to the code. */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* Hard limits, checked where each object is created. */
#define TOK_MAX_FILE_BYTES   ((size_t)256 << 20) /* tokenizer.json, vocab.txt */
#define TOK_MAX_VOCAB        (1 << 22)           /* vocabulary entries and ids */
#define TOK_MAX_TOKEN_BYTES  1024                /* one vocabulary entry */
#define TOK_MAX_PREFIX_BYTES 16                  /* continuing_subword_prefix */
#define TOK_MAX_ADDED        65536               /* added tokens */
#define TOK_MAX_PASSES       32                  /* normalizer passes */
#define TOK_MAX_NORM_DEPTH   8                   /* nested Sequence normalizers */
#define TOK_MAX_WORD_CHARS   (1 << 20)           /* max_input_chars_per_word */
#define TOK_MAX_INPUT_BYTES  ((size_t)64 << 20)  /* one text */
#define TOK_MAX_CODEPOINTS   ((size_t)1 << 27)   /* one code point buffer */
#define TOK_MAX_PATH         4096

#define HASH_SEED  2166136261u
#define HASH_PRIME 16777619u

/* ---------------------------------------------------------------------- */
/* Types                                                                  */
/* ---------------------------------------------------------------------- */

typedef struct vocab_slot {
    uint32_t hash;
    uint32_t len; /* bytes */
    uint32_t off; /* into the arena */
    int32_t id;   /* -1: empty slot */
} vocab_slot;

/* The WordPiece vocabulary: token bytes -> id, and id -> token. */
typedef struct vocab {
    char *arena;        /* entries, each NUL-terminated */
    size_t arena_len;
    size_t arena_cap;
    vocab_slot *slots;  /* open addressing, linear probing, load <= 1/2 */
    uint32_t nslots;    /* power of two */
    uint32_t count;
    uint32_t max_count; /* fixed when created */
    uint32_t max_len;   /* longest entry in bytes */
    uint32_t *by_id;    /* by_id[id] = arena offset + 1, 0 when no entry */
    int32_t id_count;   /* largest id + 1 */
} vocab;

typedef struct added_token {
    char *content;   /* as given, UTF-8 */
    int32_t *cps;    /* what is matched: content, normalized when normalized */
    size_t ncps;
    int32_t id;
    int single_word;
    int normalized;
} added_token;

enum pass_kind {
    PASS_CLEAN,    /* BertNormalizer clean_text */
    PASS_CHINESE,  /* BertNormalizer handle_chinese_chars */
    PASS_NFD,
    PASS_NFKD,
    PASS_COMPOSE,  /* after PASS_NFD / PASS_NFKD: NFC / NFKC */
    PASS_DROP_MN,  /* BertNormalizer strip_accents: drop Mn (after NFD) */
    PASS_DROP_MARKS, /* StripAccents normalizer: drop Mn, Mc and Me */
    PASS_LOWER,    /* Rust char::to_lowercase */
    PASS_STRIP     /* Strip normalizer */
};

typedef struct norm_pass {
    enum pass_kind kind;
    int left;  /* PASS_STRIP */
    int right; /* PASS_STRIP */
} norm_pass;

struct emb_tokenizer {
    vocab vocab;
    int32_t vocab_size; /* largest id (vocabulary or added) + 1 */
    char prefix[TOK_MAX_PREFIX_BYTES + 1];
    size_t prefix_len;
    int32_t unk_id;
    emb_special_tokens specials;
    emb_tokenizer_options opts;
    norm_pass passes[TOK_MAX_PASSES];
    int npasses;
    added_token *added;
    size_t nadded;
    added_token **raw_set;  /* matched on raw text, sorted by first code point */
    size_t nraw;
    added_token **norm_set; /* matched on normalized text, sorted likewise */
    size_t nnorm;
    atomic_int refs;        /* emb_tokenizer_retain / emb_tokenizer_free */
};

/* A growable array of code points with a hard cap. */
typedef struct cpbuf {
    int32_t *cp;
    size_t len;
    size_t cap;
} cpbuf;

/* Scratch space of one tokenize call. */
typedef struct work {
    cpbuf raw;     /* decoded text */
    cpbuf lower;   /* st_lowercase output */
    cpbuf norm[2]; /* normalizer passes ping-pong between these */
    char *bytes;   /* one word in UTF-8 */
    size_t *bounds; /* byte offset of each character of the word, and the end */
    int32_t *pieces; /* ids of the word's pieces */
    size_t word_cap; /* characters the word buffers hold */
} work;

/* Where ids go: the first cap ids (or the last cap, keep_last) are kept,
 * all are counted. */
typedef struct sink {
    int32_t *ids;
    int cap;
    int keep_last;
    int64_t count;
} sink;

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

static void sink_put(sink *s, int32_t id)
{
    if (s->cap > 0) {
        if (s->keep_last) {
            s->ids[s->count % s->cap] = id;
        } else if (s->count < s->cap) {
            s->ids[s->count] = id;
        }
    }
    s->count++;
}

static int cpbuf_reserve(cpbuf *b, size_t need)
{
    size_t cap;
    int32_t *p;

    if (need <= b->cap) {
        return 0;
    }
    if (need > TOK_MAX_CODEPOINTS) {
        return -1;
    }
    cap = b->cap < 64 ? 64 : b->cap;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > TOK_MAX_CODEPOINTS) {
        cap = TOK_MAX_CODEPOINTS;
    }
    p = realloc(b->cp, cap * sizeof *p);
    if (p == NULL) {
        return -1;
    }
    b->cp = p;
    b->cap = cap;
    return 0;
}

static int cpbuf_push(cpbuf *b, int32_t c)
{
    if (b->len == b->cap) {
        if (cpbuf_reserve(b, b->len + 1) != 0) {
            return -1;
        }
    }
    b->cp[b->len] = c;
    b->len++;
    return 0;
}

static void cpbuf_free(cpbuf *b)
{
    free(b->cp);
    b->cp = NULL;
    b->len = 0;
    b->cap = 0;
}

static void work_free(work *w)
{
    cpbuf_free(&w->raw);
    cpbuf_free(&w->lower);
    cpbuf_free(&w->norm[0]);
    cpbuf_free(&w->norm[1]);
    free(w->bytes);
    free(w->bounds);
    free(w->pieces);
}

/* Makes the word buffers hold n characters. */
static int work_reserve_word(work *w, size_t n)
{
    char *bytes;
    size_t *bounds;
    int32_t *pieces;

    if (n <= w->word_cap) {
        return 0;
    }
    bytes = realloc(w->bytes, 4 * n + 1);
    if (bytes == NULL) {
        return -1;
    }
    w->bytes = bytes;
    bounds = realloc(w->bounds, (n + 1) * sizeof *bounds);
    if (bounds == NULL) {
        return -1;
    }
    w->bounds = bounds;
    pieces = realloc(w->pieces, n * sizeof *pieces);
    if (pieces == NULL) {
        return -1;
    }
    w->pieces = pieces;
    w->word_cap = n;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* UTF-8                                                                  */
/* ---------------------------------------------------------------------- */

/* Decodes one character from s[0..n), n >= 1. An invalid sequence gives
 * U+FFFD and consumes its maximal subpart: the lead byte and the
 * continuation bytes that were still valid (Unicode 3.9, "best practice";
 * Python's decode('utf-8', 'replace') and Rust's from_utf8_lossy). */
static int32_t utf8_next(const unsigned char *s, size_t n, size_t *used)
{
    unsigned char b0 = s[0];
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    int need;
    int32_t c;
    size_t i;

    if (b0 < 0x80) {
        *used = 1;
        return b0;
    }
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        c = b0 & 0x0F;
        if (b0 == 0xE0) {
            lo = 0xA0; /* no overlong forms */
        }
        if (b0 == 0xED) {
            hi = 0x9F; /* no surrogates */
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        c = b0 & 0x07;
        if (b0 == 0xF0) {
            lo = 0x90; /* no overlong forms */
        }
        if (b0 == 0xF4) {
            hi = 0x8F; /* nothing above U+10FFFF */
        }
    } else {
        *used = 1;
        return 0xFFFD;
    }
    i = 1;
    while (need > 0) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *used = i;
            return 0xFFFD;
        }
        c = (c << 6) | (s[i] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
        i++;
        need--;
    }
    *used = i;
    return c;
}

static int utf8_decode(const char *text, size_t len, cpbuf *out)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;

    out->len = 0;
    if (cpbuf_reserve(out, len + 1) != 0) {
        return -1;
    }
    while (i < len) {
        size_t used = 0;
        out->cp[out->len] = utf8_next(s + i, len - i, &used);
        out->len++;
        i += used;
    }
    return 0;
}

/* Writes c as UTF-8 to out (room for 4) and returns the byte count. */
static size_t utf8_put(int32_t c, char *out)
{
    unsigned char *o = (unsigned char *)out;

    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* 1 when s[0..n) is valid UTF-8. */
static int utf8_valid(const char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t used = 0;
        int32_t c = utf8_next((const unsigned char *)s + i, n - i, &used);
        if (c == 0xFFFD && used != 3) {
            return 0;
        }
        if (c == 0xFFFD && memcmp(s + i, "\xEF\xBF\xBD", 3) != 0) {
            return 0;
        }
        i += used;
    }
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Character classes, as Hugging Face's Rust code has them                */
/* ---------------------------------------------------------------------- */

/* Rust char::is_whitespace: the White_Space property, which is Zs, Zl, Zp
 * and the controls U+0009..U+000D and U+0085. */
static int is_whitespace(int32_t c)
{
    utf8proc_category_t cat;

    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85) {
        return 1;
    }
    if (c < 0x80) {
        return 0;
    }
    cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL ||
           cat == UTF8PROC_CATEGORY_ZP;
}

/* BertNormalizer is_control: Cc, Cf or Co (unicode_categories' is_other;
 * unassigned Cn is kept), except tab, newline and return. */
static int is_control(int32_t c)
{
    utf8proc_category_t cat;

    if (c == '\t' || c == '\n' || c == '\r') {
        return 0;
    }
    cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
           cat == UTF8PROC_CATEGORY_CO;
}

/* BertPreTokenizer: ASCII punctuation or any P* category. */
static int is_punct(int32_t c)
{
    utf8proc_category_t cat;

    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
        (c >= 123 && c <= 126)) {
        return 1;
    }
    if (c < 0x80) {
        return 0;
    }
    cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

/* BertNormalizer is_chinese_char. The fifth range starts at U+2B920 in
 * tokenizers (Python's BasicTokenizer has U+2B820); we follow tokenizers. */
static int is_chinese(int32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Regex \w, for single_word added tokens: letters, marks, decimal digits,
 * letter numbers, connector punctuation and the joiners. */
static int is_word_char(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);

    if (c == 0x200C || c == 0x200D) {
        return 1;
    }
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_ND) {
        return 1; /* L*, M*, Nd */
    }
    return cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_PC;
}

/* Python's Case_Ignorable: Mn, Me, Cf, Lm, Sk and Word_Break MidLetter,
 * MidNumLet, Single_Quote. */
static int is_case_ignorable(int32_t c)
{
    static const int32_t word_break_mid[] = {
        0x0027, 0x002E, 0x003A, 0x00B7, 0x0387, 0x055F, 0x05F4, 0x2018, 0x2019,
        0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
    };
    utf8proc_category_t cat = utf8proc_category(c);
    size_t i;

    if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME ||
        cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_LM ||
        cat == UTF8PROC_CATEGORY_SK) {
        return 1;
    }
    for (i = 0; i < sizeof word_break_mid / sizeof word_break_mid[0]; i++) {
        if (word_break_mid[i] == c) {
            return 1;
        }
    }
    return 0;
}

/* Python's Cased: Lu, Ll, Lt, and what has a case mapping (Other_Lowercase
 * and Other_Uppercase are mostly that), plus the ones without a mapping:
 * the ordinal indicators and the squared Latin capitals. */
static int is_cased(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);

    if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
        cat == UTF8PROC_CATEGORY_LT) {
        return 1;
    }
    if (utf8proc_tolower(c) != c || utf8proc_toupper(c) != c) {
        return 1;
    }
    return c == 0xAA || c == 0xBA || (c >= 0x1F130 && c <= 0x1F149) ||
           (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189);
}

/* Python's Final_Sigma context for the U+03A3 at s[i]: a cased letter
 * before it and none after it, skipping case-ignorable characters. */
static int is_final_sigma(const int32_t *s, size_t n, size_t i)
{
    size_t j = i;
    size_t k;

    while (j > 0 && is_case_ignorable(s[j - 1])) {
        j--;
    }
    if (j == 0 || !is_cased(s[j - 1])) {
        return 0;
    }
    for (k = i + 1; k < n; k++) {
        if (!is_case_ignorable(s[k])) {
            return !is_cased(s[k]);
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Lowercasing                                                            */
/* ---------------------------------------------------------------------- */

/* Full lowercase mapping of one character, as Rust char::to_lowercase: the
 * simple mapping, except U+0130, the one unconditional SpecialCasing entry
 * that lowercases to two characters. */
static int lower_push(int32_t c, cpbuf *out)
{
    if (c == 0x130) {
        if (cpbuf_push(out, 'i') != 0) {
            return -1;
        }
        return cpbuf_push(out, 0x307);
    }
    return cpbuf_push(out, utf8proc_tolower(c));
}

/* Python str.lower(): the same, plus Final_Sigma. */
static int py_lower(const int32_t *in, size_t n, cpbuf *out)
{
    size_t i;

    out->len = 0;
    if (cpbuf_reserve(out, n) != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        int rc;
        if (in[i] == 0x3A3 && is_final_sigma(in, n, i)) {
            rc = cpbuf_push(out, 0x3C2);
        } else {
            rc = lower_push(in[i], out);
        }
        if (rc != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Normalizer passes                                                      */
/* ---------------------------------------------------------------------- */

static int pass_clean(const int32_t *in, size_t n, cpbuf *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        int32_t c = in[i];
        if (c == 0 || c == 0xFFFD || is_control(c)) {
            continue;
        }
        if (is_whitespace(c)) {
            c = ' ';
        }
        if (cpbuf_push(out, c) != 0) {
            return -1;
        }
    }
    return 0;
}

static int pass_chinese(const int32_t *in, size_t n, cpbuf *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (is_chinese(in[i])) {
            if (cpbuf_push(out, ' ') != 0 || cpbuf_push(out, in[i]) != 0 ||
                cpbuf_push(out, ' ') != 0) {
                return -1;
            }
        } else if (cpbuf_push(out, in[i]) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Puts each run of nonzero combining classes in canonical order (a stable
 * insertion sort by class), as the last step of NFD. */
static void canonical_order(int32_t *s, size_t n)
{
    size_t i;

    for (i = 1; i < n; i++) {
        int32_t c = s[i];
        int cc = utf8proc_get_property(c)->combining_class;
        size_t j = i;
        if (cc == 0) {
            continue;
        }
        while (j > 0) {
            int prev = utf8proc_get_property(s[j - 1])->combining_class;
            if (prev <= cc) {
                break;
            }
            s[j] = s[j - 1];
            j--;
        }
        s[j] = c;
    }
}

static int pass_decompose(const int32_t *in, size_t n, int compat, cpbuf *out)
{
    utf8proc_option_t opt = UTF8PROC_DECOMPOSE;
    int32_t tmp[64];
    size_t i;

    if (compat) {
        opt = (utf8proc_option_t)(opt | UTF8PROC_COMPAT);
    }
    for (i = 0; i < n; i++) {
        int boundclass = 0;
        utf8proc_ssize_t k;
        utf8proc_ssize_t j;
        k = utf8proc_decompose_char(in[i], tmp, 64, opt, &boundclass);
        if (k < 0 || k > 64) {
            return -1;
        }
        for (j = 0; j < k; j++) {
            if (cpbuf_push(out, tmp[j]) != 0) {
                return -1;
            }
        }
    }
    canonical_order(out->cp, out->len);
    return 0;
}

static int pass_compose(const int32_t *in, size_t n, cpbuf *out)
{
    utf8proc_ssize_t k;

    if (cpbuf_reserve(out, n) != 0) {
        return -1;
    }
    memcpy(out->cp, in, n * sizeof *in);
    k = utf8proc_normalize_utf32(out->cp, (utf8proc_ssize_t)n,
                                 (utf8proc_option_t)(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
    if (k < 0) {
        return -1;
    }
    out->len = (size_t)k;
    return 0;
}

static int pass_drop_mn(const int32_t *in, size_t n, cpbuf *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (in[i] >= 0x300 && utf8proc_category(in[i]) == UTF8PROC_CATEGORY_MN) {
            continue;
        }
        if (cpbuf_push(out, in[i]) != 0) {
            return -1;
        }
    }
    return 0;
}

/* tokenizers' StripAccents filters is_combining_mark, every M* category,
 * where BertNormalizer filters only Mn. */
static int pass_drop_marks(const int32_t *in, size_t n, cpbuf *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        utf8proc_category_t cat = utf8proc_category(in[i]);
        if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC ||
            cat == UTF8PROC_CATEGORY_ME) {
            continue;
        }
        if (cpbuf_push(out, in[i]) != 0) {
            return -1;
        }
    }
    return 0;
}

static int pass_lower(const int32_t *in, size_t n, cpbuf *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (lower_push(in[i], out) != 0) {
            return -1;
        }
    }
    return 0;
}

static int pass_strip(const int32_t *in, size_t n, int left, int right, cpbuf *out)
{
    size_t a = 0;
    size_t b = n;

    while (left && a < b && is_whitespace(in[a])) {
        a++;
    }
    while (right && b > a && is_whitespace(in[b - 1])) {
        b--;
    }
    if (cpbuf_reserve(out, b - a) != 0) {
        return -1;
    }
    memcpy(out->cp, in + a, (b - a) * sizeof *in);
    out->len = b - a;
    return 0;
}

static int pass_run(const norm_pass *p, const int32_t *in, size_t n, cpbuf *out)
{
    out->len = 0;
    if (cpbuf_reserve(out, n + 1) != 0) {
        return -1;
    }
    switch (p->kind) {
    case PASS_CLEAN:
        return pass_clean(in, n, out);
    case PASS_CHINESE:
        return pass_chinese(in, n, out);
    case PASS_NFD:
        return pass_decompose(in, n, 0, out);
    case PASS_NFKD:
        return pass_decompose(in, n, 1, out);
    case PASS_COMPOSE:
        return pass_compose(in, n, out);
    case PASS_DROP_MN:
        return pass_drop_mn(in, n, out);
    case PASS_DROP_MARKS:
        return pass_drop_marks(in, n, out);
    case PASS_LOWER:
        return pass_lower(in, n, out);
    case PASS_STRIP:
        return pass_strip(in, n, p->left, p->right, out);
    }
    return -1;
}

/* Runs every pass over in[0..n). The result is in *result, which points
 * into bufs (or at in itself when there are no passes). */
static int normalize(const emb_tokenizer *tok, const int32_t *in, size_t n, cpbuf bufs[2],
                     const int32_t **result, size_t *result_len)
{
    const int32_t *cur = in;
    size_t cur_len = n;
    int i;

    for (i = 0; i < tok->npasses; i++) {
        cpbuf *out = &bufs[i % 2];
        if (pass_run(&tok->passes[i], cur, cur_len, out) != 0) {
            return -1;
        }
        cur = out->cp;
        cur_len = out->len;
    }
    *result = cur;
    *result_len = cur_len;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Vocabulary                                                             */
/* ---------------------------------------------------------------------- */

static uint32_t hash_bytes(uint32_t h, const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= HASH_PRIME;
    }
    return h;
}

/* murmur3's finaliser: spreads FNV's bits over the slot index. */
static uint32_t hash_mix(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static int vocab_init(vocab *v, size_t max_count, size_t arena_bytes)
{
    uint32_t n = 16;
    uint32_t i;

    memset(v, 0, sizeof *v);
    while (n < 2 * max_count) {
        n *= 2;
    }
    v->slots = malloc(n * sizeof *v->slots);
    v->arena = malloc(arena_bytes + 1);
    if (v->slots == NULL || v->arena == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        v->slots[i].id = -1;
    }
    v->nslots = n;
    v->max_count = (uint32_t)max_count;
    v->arena_cap = arena_bytes + 1;
    return 0;
}

static void vocab_free(vocab *v)
{
    free(v->arena);
    free(v->slots);
    free(v->by_id);
}

/* The slot of prefix+s, or of the empty slot where it would go. */
static vocab_slot *vocab_slot_of(const vocab *v, const char *prefix, size_t plen, const char *s,
                                 size_t n, uint32_t *hash_out)
{
    uint32_t h = hash_bytes(hash_bytes(HASH_SEED, prefix, plen), s, n);
    uint32_t mask = v->nslots - 1;
    uint32_t i = hash_mix(h) & mask;

    *hash_out = h;
    for (;;) {
        vocab_slot *slot = &v->slots[i];
        if (slot->id < 0) {
            return slot;
        }
        if (slot->hash == h && slot->len == plen + n) {
            const char *e = v->arena + slot->off;
            if (memcmp(e, prefix, plen) == 0 && memcmp(e + plen, s, n) == 0) {
                return slot;
            }
        }
        i = (i + 1) & mask;
    }
}

/* Id of prefix+s (plen + n bytes, not NUL-terminated), -1 when absent. */
static int32_t vocab_find(const vocab *v, const char *prefix, size_t plen, const char *s, size_t n)
{
    uint32_t h;

    if (v->nslots == 0) {
        return -1;
    }
    return vocab_slot_of(v, prefix, plen, s, n, &h)->id;
}

/* Adds token s -> id; a token seen again takes the later id, as a
 * HashMap insert does in tokenizers and a dict in transformers. */
static int vocab_add(vocab *v, const char *s, size_t n, int32_t id)
{
    uint32_t h;
    vocab_slot *slot = vocab_slot_of(v, "", 0, s, n, &h);

    if (slot->id >= 0) {
        slot->id = id;
        return 0;
    }
    if (v->count >= v->max_count || v->arena_len + n + 1 > v->arena_cap) {
        return -1;
    }
    memcpy(v->arena + v->arena_len, s, n);
    v->arena[v->arena_len + n] = '\0';
    slot->hash = h;
    slot->len = (uint32_t)n;
    slot->off = (uint32_t)v->arena_len;
    slot->id = id;
    v->arena_len += n + 1;
    v->count++;
    if (n > v->max_len) {
        v->max_len = (uint32_t)n;
    }
    return 0;
}

/* Builds the id -> token index once every entry is in. When two entries
 * share an id, the one added first wins. */
static int vocab_index(vocab *v)
{
    int32_t max_id = -1;
    uint32_t i;

    for (i = 0; i < v->nslots; i++) {
        if (v->slots[i].id > max_id) {
            max_id = v->slots[i].id;
        }
    }
    v->id_count = max_id + 1;
    v->by_id = calloc((size_t)v->id_count + 1, sizeof *v->by_id);
    if (v->by_id == NULL) {
        return -1;
    }
    for (i = 0; i < v->nslots; i++) {
        vocab_slot *slot = &v->slots[i];
        uint32_t cur;
        if (slot->id < 0) {
            continue;
        }
        cur = v->by_id[slot->id];
        if (cur == 0 || cur > slot->off + 1) {
            v->by_id[slot->id] = slot->off + 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Added tokens                                                           */
/* ---------------------------------------------------------------------- */

static int added_cmp(const void *a, const void *b)
{
    const added_token *x = *(const added_token *const *)a;
    const added_token *y = *(const added_token *const *)b;

    if (x->cps[0] != y->cps[0]) {
        return x->cps[0] < y->cps[0] ? -1 : 1;
    }
    return 0;
}

/* First index in set whose first code point is >= c. */
static size_t added_lower_bound(added_token *const *set, size_t n, int32_t c)
{
    size_t lo = 0;
    size_t hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (set[mid]->cps[0] < c) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* Leftmost-longest match of the set in s[from..n), as aho-corasick's
 * LeftmostLongest. Returns the token, or NULL when nothing matches. */
static const added_token *added_find(added_token *const *set, size_t nset, const int32_t *s,
                                     size_t n, size_t from, size_t *mstart)
{
    size_t i;

    if (nset == 0) {
        return NULL;
    }
    for (i = from; i < n; i++) {
        const added_token *best = NULL;
        size_t k = added_lower_bound(set, nset, s[i]);
        while (k < nset && set[k]->cps[0] == s[i]) {
            const added_token *t = set[k];
            if (t->ncps <= n - i && memcmp(t->cps, s + i, t->ncps * sizeof *s) == 0) {
                if (best == NULL || t->ncps > best->ncps) {
                    best = t;
                }
            }
            k++;
        }
        if (best != NULL) {
            *mstart = i;
            return best;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Pre-tokenizer and WordPiece                                            */
/* ---------------------------------------------------------------------- */

/* WordPiece on one word of n characters: greedy longest match first, the
 * prefix on every piece but the first; a word that is too long or cannot
 * be split is one [UNK]. */
static int wordpiece_word(const emb_tokenizer *tok, const int32_t *cp, size_t n, work *w,
                          sink *s)
{
    const vocab *v = &tok->vocab;
    size_t npieces = 0;
    size_t start = 0;
    size_t off = 0;
    size_t i;

    if (n > (size_t)tok->opts.max_input_chars_per_word) {
        sink_put(s, tok->unk_id);
        return 0;
    }
    if (work_reserve_word(w, n) != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        w->bounds[i] = off;
        off += utf8_put(cp[i], w->bytes + off);
    }
    w->bounds[n] = off;

    while (start < n) {
        size_t plen = start > 0 ? tok->prefix_len : 0;
        size_t end = n;
        int32_t id = -1;
        while (end > start) {
            size_t blen = w->bounds[end] - w->bounds[start];
            if (plen + blen <= v->max_len) {
                id = vocab_find(v, tok->prefix, plen, w->bytes + w->bounds[start], blen);
                if (id >= 0) {
                    break;
                }
            }
            end--;
        }
        if (id < 0) {
            sink_put(s, tok->unk_id);
            return 0;
        }
        w->pieces[npieces] = id;
        npieces++;
        start = end;
    }
    for (i = 0; i < npieces; i++) {
        sink_put(s, w->pieces[i]);
    }
    return 0;
}

/* BertPreTokenizer: whitespace separates words and is dropped; each
 * punctuation character is a word of its own. */
static int pretokenize(const emb_tokenizer *tok, const int32_t *cp, size_t n, work *w, sink *s)
{
    size_t i = 0;

    while (i < n) {
        size_t j;
        if (is_whitespace(cp[i])) {
            i++;
            continue;
        }
        j = i + 1;
        if (!is_punct(cp[i])) {
            while (j < n && !is_whitespace(cp[j]) && !is_punct(cp[j])) {
                j++;
            }
        }
        if (wordpiece_word(tok, cp + i, j - i, w, s) != 0) {
            return -1;
        }
        i = j;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The pipeline                                                           */
/* ---------------------------------------------------------------------- */

enum stage { STAGE_RAW, STAGE_NORMALIZED };

static int split_added(const emb_tokenizer *tok, enum stage stage, const int32_t *s, size_t n,
                       work *w, sink *out);

/* A piece of raw text with no added token in it: normalize, then look for
 * normalized added tokens. */
static int run_normalized(const emb_tokenizer *tok, const int32_t *s, size_t n, work *w,
                          sink *out)
{
    const int32_t *norm = NULL;
    size_t norm_len = 0;

    if (n == 0) {
        return 0;
    }
    if (normalize(tok, s, n, w->norm, &norm, &norm_len) != 0) {
        return -1;
    }
    return split_added(tok, STAGE_NORMALIZED, norm, norm_len, w, out);
}

static int run_piece(const emb_tokenizer *tok, enum stage stage, const int32_t *s, size_t n,
                     work *w, sink *out)
{
    if (stage == STAGE_RAW) {
        return run_normalized(tok, s, n, w, out);
    }
    return pretokenize(tok, s, n, w, out);
}

/* Splits s on the added tokens of the stage, as AddedVocabulary's
 * find_matches: single_word matches need non-word characters (or the ends)
 * around them. lstrip and rstrip are left out: they move whitespace next
 * to a match into it, and BertPreTokenizer drops that whitespace anyway. */
static int split_added(const emb_tokenizer *tok, enum stage stage, const int32_t *s, size_t n,
                       work *w, sink *out)
{
    added_token *const *set = stage == STAGE_RAW ? tok->raw_set : tok->norm_set;
    size_t nset = stage == STAGE_RAW ? tok->nraw : tok->nnorm;
    size_t done = 0; /* s[0..done) is handled */
    size_t from = 0; /* where the search goes on */

    for (;;) {
        size_t start = 0;
        size_t stop;
        const added_token *t = added_find(set, nset, s, n, from, &start);
        if (t == NULL) {
            break;
        }
        stop = start + t->ncps;
        from = stop;
        if (t->single_word) {
            int left_ok = start == 0 || !is_word_char(s[start - 1]);
            int right_ok = stop == n || !is_word_char(s[stop]);
            if (!left_ok || !right_ok) {
                continue;
            }
        }
        if (run_piece(tok, stage, s + done, start - done, w, out) != 0) {
            return -1;
        }
        sink_put(out, t->id);
        done = stop;
    }
    return run_piece(tok, stage, s + done, n - done, w, out);
}

static int tokenize_text(const emb_tokenizer *tok, const char *text, size_t len, sink *out)
{
    work w;
    const cpbuf *raw;
    int rc = -1;

    memset(&w, 0, sizeof w);
    if (tok == NULL || len > TOK_MAX_INPUT_BYTES || (text == NULL && len > 0)) {
        goto out;
    }
    if (utf8_decode(text, len, &w.raw) != 0) {
        goto out;
    }
    raw = &w.raw;
    if (tok->opts.st_lowercase) {
        if (py_lower(w.raw.cp, w.raw.len, &w.lower) != 0) {
            goto out;
        }
        raw = &w.lower;
    }
    if (split_added(tok, STAGE_RAW, raw->cp, raw->len, &w, out) != 0) {
        goto out;
    }
    if (out->count > INT_MAX - 2) {
        goto out;
    }
    rc = 0;
out:
    work_free(&w);
    return rc;
}

/* Puts a[0..n) in order when it was written as a ring whose oldest entry
 * is at first. */
static void ring_unroll(int32_t *a, size_t n, size_t first)
{
    size_t i;
    size_t j;

    if (first == 0 || n == 0) {
        return;
    }
    /* rotate left by first: reverse both parts, then the whole */
    for (i = 0, j = first - 1; i < j; i++, j--) {
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
    for (i = first, j = n - 1; i < j; i++, j--) {
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
    for (i = 0, j = n - 1; i < j; i++, j--) {
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---------------------------------------------------------------------- */
/* Token spans                                                            */
/* ---------------------------------------------------------------------- */

/* The text normalised one original character at a time: cp[k] came from
 * the original character whose bytes are [from[k], to[k]). Normalising
 * characters alone gives the same characters as the whole text for every
 * pass but composition and the final-sigma rule, which keep the count. */
typedef struct aligned {
    cpbuf cp;
    size_t *from, *to;
    size_t cap;
} aligned;

static int aligned_push(aligned *a, int32_t c, size_t from, size_t to)
{
    if (a->cp.len == a->cap) {
        size_t cap = a->cap < 64 ? 64 : a->cap * 2;
        size_t *f = realloc(a->from, cap * sizeof *f);
        if (f == NULL)
            return -1;
        a->from = f;
        size_t *t = realloc(a->to, cap * sizeof *t);
        if (t == NULL)
            return -1;
        a->to = t;
        a->cap = cap;
    }
    a->from[a->cp.len] = from;
    a->to[a->cp.len] = to;
    return cpbuf_push(&a->cp, c);
}

static int align_text(const emb_tokenizer *tok, const char *text, size_t len, aligned *a)
{
    cpbuf bufs[2] = {{0}}, one = {0}, lower = {0};
    int rc = -1;
    for (size_t at = 0; at < len;) {
        size_t used = 1;
        int32_t c = utf8_next((const unsigned char *)text + at, len - at, &used);
        one.len = 0;
        if (cpbuf_push(&one, c) != 0)
            goto out;
        const cpbuf *raw = &one;
        if (tok->opts.st_lowercase) {
            lower.len = 0;
            if (py_lower(one.cp, one.len, &lower) != 0)
                goto out;
            raw = &lower;
        }
        const int32_t *norm = NULL;
        size_t norm_len = 0;
        if (normalize(tok, raw->cp, raw->len, bufs, &norm, &norm_len) != 0)
            goto out;
        for (size_t k = 0; k < norm_len; k++) {
            if (aligned_push(a, norm[k], at, at + used) != 0)
                goto out;
        }
        at += used;
    }
    rc = 0;
out:
    cpbuf_free(&bufs[0]);
    cpbuf_free(&bufs[1]);
    cpbuf_free(&one);
    cpbuf_free(&lower);
    return rc;
}

static int32_t ascii_fold(int32_t c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 1 when want[0..n) is at a->cp[pos..] (ASCII case folded when fold). */
static int spelled_at(const aligned *a, size_t pos, const int32_t *want, size_t n, int fold)
{
    if (pos + n > a->cp.len)
        return 0;
    for (size_t k = 0; k < n; k++) {
        int32_t x = a->cp.cp[pos + k], y = want[k];
        if (x != y && !(fold && ascii_fold(x) == ascii_fold(y)))
            return 0;
    }
    return 1;
}

/* The end of the word that starts at pos (BertPreTokenizer's split). */
static size_t word_end(const aligned *a, size_t pos)
{
    if (pos < a->cp.len && is_punct(a->cp.cp[pos]))
        return pos + 1;
    while (pos < a->cp.len && !is_whitespace(a->cp.cp[pos]) && !is_punct(a->cp.cp[pos]))
        pos++;
    return pos;
}

/* Finds token id at or after *pos; its span in cp positions [*s, *e). */
static int find_token(const emb_tokenizer *tok, const aligned *a, int32_t id, size_t *pos,
                      cpbuf *want, size_t *s, size_t *e)
{
    const char *t = emb_tokenizer_token(tok, id);
    int continues = t != NULL && tok->prefix_len > 0 &&
                    strncmp(t, tok->prefix, tok->prefix_len) == 0 && t[tok->prefix_len] != '\0';
    if (!continues) {
        while (*pos < a->cp.len && is_whitespace(a->cp.cp[*pos]))
            (*pos)++;
    }
    if (id == tok->unk_id || t == NULL) {
        *s = *pos;
        *e = word_end(a, *pos);
        *pos = *e;
        return 0;
    }
    if (continues)
        t += tok->prefix_len;
    want->len = 0;
    if (utf8_decode(t, strlen(t), want) != 0)
        return -1;
    /* an added token ("[MASK]") is matched before lowercasing changes it */
    int fold = t[0] == '[' || t[0] == '<';
    for (size_t p = *pos; p + want->len <= a->cp.len; p++) {
        if (spelled_at(a, p, want->cp, want->len, fold)) {
            *s = p;
            *e = p + want->len;
            *pos = *e;
            return 0;
        }
    }
    *s = *e = *pos; /* not found: an empty span where we are */
    return 0;
}

int emb_token_spans(const emb_tokenizer *tok, const char *text, size_t len, const int32_t *ids,
                    int n, int32_t *start, int32_t *stop)
{
    aligned a;
    cpbuf want = {0};
    int rc = -1;
    memset(&a, 0, sizeof a);
    if (tok == NULL || n < 0 || len > TOK_MAX_INPUT_BYTES || (text == NULL && len > 0))
        return -1;
    if (align_text(tok, text, len, &a) != 0)
        goto out;
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        size_t s = 0, e = 0;
        if (find_token(tok, &a, ids[i], &pos, &want, &s, &e) != 0)
            goto out;
        if (e > s) {
            start[i] = (int32_t)a.from[s];
            stop[i] = (int32_t)a.to[e - 1];
        } else {
            size_t at = s < a.cp.len ? a.from[s] : len;
            start[i] = stop[i] = (int32_t)at;
        }
    }
    rc = 0;
out:
    cpbuf_free(&a.cp);
    free(a.from);
    free(a.to);
    cpbuf_free(&want);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Public API: tokenizing                                                 */
/* ---------------------------------------------------------------------- */

int emb_tokenize(const emb_tokenizer *tok, const char *text, size_t len, int32_t *ids, int cap)
{
    sink s;

    s.ids = ids;
    s.cap = ids == NULL || cap < 0 ? 0 : cap;
    s.keep_last = 0;
    s.count = 0;
    if (tokenize_text(tok, text, len, &s) != 0) {
        return -1;
    }
    return (int)s.count;
}

int emb_encode(const emb_tokenizer *tok, const char *text, size_t len, int max_len,
               int truncate_left, int32_t *ids, int *full_len)
{
    int has_cls;
    int has_sep;
    int body_cap;
    int kept;
    int n = 0;
    sink s;

    if (tok == NULL || ids == NULL || max_len < 2) {
        return -1;
    }
    /* A tokenizer without [CLS] or [SEP] leaves that one out. */
    has_cls = tok->specials.cls_id >= 0;
    has_sep = tok->specials.sep_id >= 0;
    body_cap = max_len - has_cls - has_sep;
    s.ids = ids + has_cls;
    s.cap = body_cap;
    s.keep_last = truncate_left != 0;
    s.count = 0;
    if (tokenize_text(tok, text, len, &s) != 0) {
        return -1;
    }
    kept = s.count < body_cap ? (int)s.count : body_cap;
    if (s.keep_last && body_cap > 0 && s.count > body_cap) {
        ring_unroll(s.ids, (size_t)body_cap, (size_t)(s.count % body_cap));
    }
    if (has_cls) {
        ids[n] = tok->specials.cls_id;
    }
    n = has_cls + kept;
    if (has_sep) {
        ids[n] = tok->specials.sep_id;
        n++;
    }
    if (full_len != NULL) {
        *full_len = (int)s.count + has_cls + has_sep;
    }
    return n;
}

/* ---------------------------------------------------------------------- */
/* Public API: queries                                                    */
/* ---------------------------------------------------------------------- */

int emb_tokenizer_vocab_size(const emb_tokenizer *tok)
{
    return tok->vocab_size;
}

emb_special_tokens emb_tokenizer_specials(const emb_tokenizer *tok)
{
    return tok->specials;
}

emb_tokenizer_options emb_tokenizer_get_options(const emb_tokenizer *tok)
{
    return tok->opts;
}

void emb_tokenizer_set_st_lowercase(emb_tokenizer *tok, int on)
{
    tok->opts.st_lowercase = on != 0;
}

/* Added tokens first, then the model's vocabulary, as tokenizers does. */
int32_t emb_tokenizer_token_id(const emb_tokenizer *tok, const char *token)
{
    size_t i;

    if (token == NULL) {
        return -1;
    }
    for (i = 0; i < tok->nadded; i++) {
        if (strcmp(tok->added[i].content, token) == 0) {
            return tok->added[i].id;
        }
    }
    return vocab_find(&tok->vocab, "", 0, token, strlen(token));
}

const char *emb_tokenizer_token(const emb_tokenizer *tok, int32_t id)
{
    size_t i;

    if (id < 0) {
        return NULL;
    }
    for (i = 0; i < tok->nadded; i++) {
        if (tok->added[i].id == id) {
            return tok->added[i].content;
        }
    }
    if (id >= tok->vocab.id_count || tok->vocab.by_id[id] == 0) {
        return NULL;
    }
    return tok->vocab.arena + tok->vocab.by_id[id] - 1;
}

/* ---------------------------------------------------------------------- */
/* Loading: files and JSON                                                */
/* ---------------------------------------------------------------------- */

static int path_join(char *out, const char *dir, const char *name, emb_err *err)
{
    int n = snprintf(out, TOK_MAX_PATH, "%s/%s", dir, name);

    if (n < 0 || n >= TOK_MAX_PATH) {
        return emb_fail(err, "tokenizer: path too long: %s/%s", dir, name);
    }
    return 0;
}

static int file_exists(const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0) {
        return 0;
    }
    return S_ISREG(st.st_mode);
}

/* Reads a whole file, NUL-terminated, of at most TOK_MAX_FILE_BYTES. */
static int read_file(const char *path, char **out, size_t *out_len, emb_err *err)
{
    FILE *f = NULL;
    char *buf = NULL;
    long size;
    int rc = -1;

    f = fopen(path, "rb");
    if (f == NULL) {
        emb_fail_as(err, EMB_ERR_IO, "tokenizer: cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "tokenizer: cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "tokenizer: cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if ((unsigned long)size > TOK_MAX_FILE_BYTES) {
        emb_fail_as(err, EMB_ERR_TOO_LARGE,
                    "tokenizer: %s is %ld bytes, more than the limit of %zu", path, size,
                    TOK_MAX_FILE_BYTES);
        goto out;
    }
    buf = malloc((size_t)size + 1);
    if (buf == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory reading %s", path);
        goto out;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        emb_fail_as(err, EMB_ERR_IO, "tokenizer: short read on %s", path);
        goto out;
    }
    buf[size] = '\0';
    *out = buf;
    *out_len = (size_t)size;
    buf = NULL;
    rc = 0;
out:
    if (f != NULL) {
        fclose(f);
    }
    free(buf);
    return rc;
}

static cJSON *parse_json_file(const char *path, emb_err *err)
{
    char *text = NULL;
    size_t len = 0;
    const char *end = NULL;
    cJSON *root;

    if (read_file(path, &text, &len, err) != 0) {
        return NULL;
    }
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (root == NULL) {
        size_t at = end != NULL && end >= text ? (size_t)(end - text) : 0;
        emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: invalid JSON near byte %zu", path, at);
    } else if (!cJSON_IsObject(root)) {
        emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: top level is not a JSON object", path);
        cJSON_Delete(root);
        root = NULL;
    }
    free(text);
    return root;
}

static const cJSON *json_get(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* A boolean field: def when missing or null, -1 (after emb_fail) when it
 * is something else. */
static int json_bool(const cJSON *obj, const char *key, int def, const char *path, emb_err *err)
{
    const cJSON *item = json_get(obj, key);

    if (item == NULL || cJSON_IsNull(item)) {
        return def;
    }
    if (!cJSON_IsBool(item)) {
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "tokenizer: %s: \"%s\" must be true, false or null", path, key);
    }
    return cJSON_IsTrue(item) ? 1 : 0;
}

/* An integer field in [lo, hi]: def when missing, -1 when it is wrong. */
static int json_int(const cJSON *obj, const char *key, int def, int lo, int hi, int *out,
                    const char *path, emb_err *err)
{
    const cJSON *item = json_get(obj, key);
    double d;

    if (item == NULL || cJSON_IsNull(item)) {
        *out = def;
        return 0;
    }
    d = cJSON_IsNumber(item) ? item->valuedouble : (double)lo - 1.0;
    if (d < lo || d > hi || d != (double)(long long)d) {
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "tokenizer: %s: \"%s\" must be an integer in [%d, %d]", path, key, lo,
                           hi);
    }
    *out = (int)d;
    return 0;
}

/* A special token name in tokenizer_config.json: a string, or an object
 * with "content" (an AddedToken). NULL when absent. */
static const char *json_token_name(const cJSON *obj, const char *key)
{
    const cJSON *item;

    if (obj == NULL) {
        return NULL;
    }
    item = json_get(obj, key);
    if (cJSON_IsString(item)) {
        return item->valuestring;
    }
    if (cJSON_IsObject(item)) {
        const cJSON *content = json_get(item, "content");
        if (cJSON_IsString(content)) {
            return content->valuestring;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Loading: normalizer                                                    */
/* ---------------------------------------------------------------------- */

static int add_pass(emb_tokenizer *tok, enum pass_kind kind, int left, int right,
                    const char *path, emb_err *err)
{
    if (tok->npasses >= TOK_MAX_PASSES) {
        return emb_fail_as(err, EMB_ERR_TOO_LARGE,
                           "tokenizer: %s: normalizer has more than %d steps", path,
                           TOK_MAX_PASSES);
    }
    tok->passes[tok->npasses].kind = kind;
    tok->passes[tok->npasses].left = left;
    tok->passes[tok->npasses].right = right;
    tok->npasses++;
    return 0;
}

/* BertNormalizer: clean_text, handle_chinese_chars, strip_accents (null
 * follows lowercase), lowercase; in that order. */
static int add_bert_normalizer(emb_tokenizer *tok, int clean, int chinese, int strip, int lower,
                               const char *path, emb_err *err)
{
    int do_strip = strip < 0 ? lower : strip;

    tok->opts.clean_text = clean;
    tok->opts.handle_chinese_chars = chinese;
    tok->opts.strip_accents = strip;
    tok->opts.lowercase = lower;
    if (clean && add_pass(tok, PASS_CLEAN, 0, 0, path, err) != 0) {
        return -1;
    }
    if (chinese && add_pass(tok, PASS_CHINESE, 0, 0, path, err) != 0) {
        return -1;
    }
    if (do_strip) {
        if (add_pass(tok, PASS_NFD, 0, 0, path, err) != 0) {
            return -1;
        }
        if (add_pass(tok, PASS_DROP_MN, 0, 0, path, err) != 0) {
            return -1;
        }
    }
    if (lower && add_pass(tok, PASS_LOWER, 0, 0, path, err) != 0) {
        return -1;
    }
    return 0;
}

static int parse_normalizer(emb_tokenizer *tok, const cJSON *n, int depth, const char *path,
                            emb_err *err)
{
    const cJSON *type;
    const char *t;

    if (n == NULL || cJSON_IsNull(n)) {
        return 0;
    }
    if (depth > TOK_MAX_NORM_DEPTH) {
        return emb_fail_as(err, EMB_ERR_TOO_LARGE, "tokenizer: %s: normalizers nested too deep",
                           path);
    }
    type = json_get(n, "type");
    if (!cJSON_IsObject(n) || !cJSON_IsString(type)) {
        return emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: a normalizer has no \"type\"",
                           path);
    }
    t = type->valuestring;
    if (strcmp(t, "Sequence") == 0) {
        const cJSON *list = json_get(n, "normalizers");
        const cJSON *item;
        if (!cJSON_IsArray(list)) {
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "tokenizer: %s: Sequence normalizer has no \"normalizers\" list",
                               path);
        }
        cJSON_ArrayForEach(item, list) {
            if (parse_normalizer(tok, item, depth + 1, path, err) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (strcmp(t, "BertNormalizer") == 0) {
        int clean = json_bool(n, "clean_text", 1, path, err);
        int chinese = json_bool(n, "handle_chinese_chars", 1, path, err);
        int strip = json_bool(n, "strip_accents", -1, path, err);
        int lower = json_bool(n, "lowercase", 1, path, err);
        const cJSON *s = json_get(n, "strip_accents");
        if (clean < 0 || chinese < 0 || lower < 0 || (strip < 0 && s != NULL && !cJSON_IsNull(s))) {
            return -1;
        }
        return add_bert_normalizer(tok, clean, chinese, strip, lower, path, err);
    }
    if (strcmp(t, "Lowercase") == 0) {
        tok->opts.lowercase = 1;
        return add_pass(tok, PASS_LOWER, 0, 0, path, err);
    }
    if (strcmp(t, "StripAccents") == 0) {
        return add_pass(tok, PASS_DROP_MARKS, 0, 0, path, err);
    }
    if (strcmp(t, "NFD") == 0) {
        return add_pass(tok, PASS_NFD, 0, 0, path, err);
    }
    if (strcmp(t, "NFKD") == 0) {
        return add_pass(tok, PASS_NFKD, 0, 0, path, err);
    }
    if (strcmp(t, "NFC") == 0 || strcmp(t, "NFKC") == 0) {
        enum pass_kind kind = strcmp(t, "NFC") == 0 ? PASS_NFD : PASS_NFKD;
        if (add_pass(tok, kind, 0, 0, path, err) != 0) {
            return -1;
        }
        return add_pass(tok, PASS_COMPOSE, 0, 0, path, err);
    }
    if (strcmp(t, "Strip") == 0) {
        int left = json_bool(n, "strip_left", 1, path, err);
        int right = json_bool(n, "strip_right", 1, path, err);
        if (left < 0 || right < 0) {
            return -1;
        }
        return add_pass(tok, PASS_STRIP, left, right, path, err);
    }
    return emb_fail(err,
                    "tokenizer: %s: normalizer type \"%s\" is not supported (supported: "
                    "BertNormalizer, Lowercase, StripAccents, NFD, NFKD, NFC, NFKC, Strip, "
                    "Sequence)",
                    path, t);
}

/* ---------------------------------------------------------------------- */
/* Loading: added tokens                                                  */
/* ---------------------------------------------------------------------- */

/* The id tokenizers gives a new added token: its id in the vocabulary,
 * else the next one after the vocabulary and the added tokens so far
 * (AddedVocabulary::add_tokens). The "id" written in tokenizer.json is
 * not used, as tokenizers does not use it either. */
static int32_t added_token_id(const emb_tokenizer *tok, const char *content)
{
    int32_t vsize = (int32_t)tok->vocab.count;
    int32_t id = vocab_find(&tok->vocab, "", 0, content, strlen(content));
    int32_t max = -1;
    size_t i;

    if (id >= 0) {
        return id;
    }
    if (tok->nadded == 0) {
        return vsize;
    }
    for (i = 0; i < tok->nadded; i++) {
        if (tok->added[i].id > max) {
            max = tok->added[i].id;
        }
    }
    if (max >= vsize || vsize == 0) {
        return max + 1;
    }
    return vsize;
}

static added_token *added_by_content(const emb_tokenizer *tok, const char *content)
{
    size_t i;

    for (i = 0; i < tok->nadded; i++) {
        if (strcmp(tok->added[i].content, content) == 0) {
            return &tok->added[i];
        }
    }
    return NULL;
}

/* Adds one added token; a content seen before keeps its id and takes the
 * later flags. */
static int add_added_token(emb_tokenizer *tok, const char *content, int single_word,
                           int normalized, const char *path, emb_err *err)
{
    added_token *t;
    added_token *grown;

    if (content[0] == '\0') {
        return 0; /* tokenizers ignores empty added tokens */
    }
    t = added_by_content(tok, content);
    if (t == NULL) {
        int32_t id = added_token_id(tok, content);
        if (tok->nadded >= TOK_MAX_ADDED || id >= TOK_MAX_VOCAB) {
            return emb_fail_as(err, EMB_ERR_TOO_LARGE, "tokenizer: %s: more than %d added tokens",
                               path, TOK_MAX_ADDED);
        }
        if (strlen(content) > TOK_MAX_TOKEN_BYTES) {
            return emb_fail_as(err, EMB_ERR_TOO_LARGE,
                               "tokenizer: %s: added token longer than %d bytes", path,
                               TOK_MAX_TOKEN_BYTES);
        }
        grown = realloc(tok->added, (tok->nadded + 1) * sizeof *grown);
        if (grown == NULL) {
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        }
        tok->added = grown;
        t = &tok->added[tok->nadded];
        memset(t, 0, sizeof *t);
        t->content = strdup(content);
        if (t->content == NULL) {
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        }
        t->id = id;
        tok->nadded++;
    }
    t->single_word = single_word;
    t->normalized = normalized;
    return 0;
}

/* Fills each added token's match pattern (normalized when it says so) and
 * builds the two match sets. */
static int build_added_sets(emb_tokenizer *tok, emb_err *err)
{
    cpbuf raw = { 0 };
    cpbuf bufs[2] = { { 0 }, { 0 } };
    size_t i;
    int rc = -1;

    for (i = 0; i < tok->nadded; i++) {
        if (tok->added[i].id + 1 > tok->vocab_size) {
            tok->vocab_size = tok->added[i].id + 1;
        }
    }
    tok->raw_set = calloc(tok->nadded + 1, sizeof *tok->raw_set);
    tok->norm_set = calloc(tok->nadded + 1, sizeof *tok->norm_set);
    if (tok->raw_set == NULL || tok->norm_set == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        goto out;
    }
    for (i = 0; i < tok->nadded; i++) {
        added_token *t = &tok->added[i];
        const int32_t *pat = NULL;
        size_t npat = 0;
        if (utf8_decode(t->content, strlen(t->content), &raw) != 0) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
            goto out;
        }
        pat = raw.cp;
        npat = raw.len;
        if (t->normalized && normalize(tok, raw.cp, raw.len, bufs, &pat, &npat) != 0) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
            goto out;
        }
        if (npat == 0) {
            continue; /* normalizes to nothing: can never match */
        }
        t->cps = malloc(npat * sizeof *t->cps);
        if (t->cps == NULL) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
            goto out;
        }
        memcpy(t->cps, pat, npat * sizeof *pat);
        t->ncps = npat;
        if (t->normalized) {
            tok->norm_set[tok->nnorm] = t;
            tok->nnorm++;
        } else {
            tok->raw_set[tok->nraw] = t;
            tok->nraw++;
        }
    }
    qsort(tok->raw_set, tok->nraw, sizeof *tok->raw_set, added_cmp);
    qsort(tok->norm_set, tok->nnorm, sizeof *tok->norm_set, added_cmp);
    rc = 0;
out:
    cpbuf_free(&raw);
    cpbuf_free(&bufs[0]);
    cpbuf_free(&bufs[1]);
    return rc;
}

/* One AddedToken object: {content, single_word, lstrip, rstrip, normalized,
 * special}; missing flags take tokenizers' defaults. */
static int parse_added_object(emb_tokenizer *tok, const cJSON *item, const char *path,
                              emb_err *err)
{
    const cJSON *content = json_get(item, "content");
    int special;
    int single_word;
    int normalized;

    if (!cJSON_IsString(content)) {
        return emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: an added token has no \"content\"",
                           path);
    }
    special = json_bool(item, "special", 0, path, err);
    single_word = json_bool(item, "single_word", 0, path, err);
    normalized = json_bool(item, "normalized", special >= 0 ? !special : 0, path, err);
    if (special < 0 || single_word < 0 || normalized < 0) {
        return -1;
    }
    return add_added_token(tok, content->valuestring, single_word, normalized, path, err);
}

/* tokenizer.json "added_tokens": [{id, content, ...}]. */
static int parse_added_tokens(emb_tokenizer *tok, const cJSON *list, const char *path,
                              emb_err *err)
{
    const cJSON *item;

    if (list == NULL || cJSON_IsNull(list)) {
        return 0;
    }
    if (!cJSON_IsArray(list)) {
        return emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: \"added_tokens\" is not a list",
                           path);
    }
    cJSON_ArrayForEach(item, list) {
        if (!cJSON_IsObject(item)) {
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "tokenizer: %s: an added token is not an object", path);
        }
        if (parse_added_object(tok, item, path, err) != 0) {
            return -1;
        }
    }
    return 0;
}

/* tokenizer_config.json "added_tokens_decoder": {"id": {content, ...}}. */
static int parse_added_decoder(emb_tokenizer *tok, const cJSON *map, const char *path,
                               emb_err *err)
{
    const cJSON *item;

    if (map == NULL || cJSON_IsNull(map)) {
        return 0;
    }
    if (!cJSON_IsObject(map)) {
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "tokenizer: %s: \"added_tokens_decoder\" is not an object", path);
    }
    cJSON_ArrayForEach(item, map) {
        char *end = NULL;
        long id = strtol(item->string, &end, 10);
        if (end == item->string || *end != '\0' || id < 0 || id >= TOK_MAX_VOCAB ||
            !cJSON_IsObject(item)) {
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "tokenizer: %s: bad added_tokens_decoder entry \"%s\"", path,
                               item->string);
        }
        if (parse_added_object(tok, item, path, err) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Loading: the two layouts                                               */
/* ---------------------------------------------------------------------- */

static int parse_vocab_object(emb_tokenizer *tok, const cJSON *obj, const char *path,
                              emb_err *err)
{
    const cJSON *item;
    size_t count = 0;
    size_t bytes = 0;

    if (!cJSON_IsObject(obj)) {
        return emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: model.vocab is not an object",
                           path);
    }
    cJSON_ArrayForEach(item, obj) {
        size_t n = strlen(item->string);
        if (n > TOK_MAX_TOKEN_BYTES) {
            return emb_fail_as(err, EMB_ERR_TOO_LARGE,
                               "tokenizer: %s: vocabulary entry longer than %d bytes", path,
                               TOK_MAX_TOKEN_BYTES);
        }
        count++;
        bytes += n + 1;
    }
    if (count == 0 || count > TOK_MAX_VOCAB) {
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "tokenizer: %s: model.vocab has %zu entries (1 to %d allowed)", path,
                           count, TOK_MAX_VOCAB);
    }
    if (vocab_init(&tok->vocab, count, bytes) != 0) {
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    cJSON_ArrayForEach(item, obj) {
        double d = cJSON_IsNumber(item) ? item->valuedouble : -1.0;
        if (d < 0 || d >= TOK_MAX_VOCAB || d != (double)(long long)d) {
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "tokenizer: %s: model.vocab[\"%s\"] is not an id in [0, %d)", path,
                               item->string, TOK_MAX_VOCAB);
        }
        if (vocab_add(&tok->vocab, item->string, strlen(item->string), (int32_t)d) != 0) {
            return emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        }
    }
    return 0;
}

static int load_tokenizer_json(emb_tokenizer *tok, const char *path, emb_err *err)
{
    cJSON *root = NULL;
    const cJSON *model;
    const cJSON *type;
    const cJSON *unk;
    const cJSON *prefix;
    const cJSON *pre;
    int max_chars = 0;
    int rc = -1;

    root = parse_json_file(path, err);
    if (root == NULL) {
        goto out;
    }
    model = json_get(root, "model");
    if (!cJSON_IsObject(model)) {
        emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: no \"model\" object", path);
        goto out;
    }
    type = json_get(model, "type");
    if (!cJSON_IsString(type)) {
        emb_fail_as(err, EMB_ERR_INVALID,
                    "tokenizer: %s: model.type is missing; only WordPiece is supported", path);
        goto out;
    }
    if (strcmp(type->valuestring, "WordPiece") != 0) {
        emb_fail_as(err, EMB_ERR_INVALID,
                    "tokenizer: %s: model.type is \"%s\"; only WordPiece is supported", path,
                    type->valuestring);
        goto out;
    }
    if (parse_vocab_object(tok, json_get(model, "vocab"), path, err) != 0) {
        goto out;
    }

    unk = json_get(model, "unk_token");
    if (unk != NULL && !cJSON_IsString(unk)) {
        emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s: model.unk_token is not a string", path);
        goto out;
    }
    tok->unk_id = vocab_find(&tok->vocab, "", 0, unk != NULL ? unk->valuestring : "[UNK]",
                             strlen(unk != NULL ? unk->valuestring : "[UNK]"));
    if (tok->unk_id < 0) {
        emb_fail_as(err, EMB_ERR_INVALID,
                    "tokenizer: %s: unk token \"%s\" is not in the vocabulary", path,
                    unk != NULL ? unk->valuestring : "[UNK]");
        goto out;
    }

    prefix = json_get(model, "continuing_subword_prefix");
    if (prefix != NULL && !cJSON_IsNull(prefix)) {
        if (!cJSON_IsString(prefix) || strlen(prefix->valuestring) > TOK_MAX_PREFIX_BYTES) {
            emb_fail(err, "tokenizer: %s: model.continuing_subword_prefix must be a string of "
                     "at most %d bytes", path, TOK_MAX_PREFIX_BYTES);
            goto out;
        }
        strcpy(tok->prefix, prefix->valuestring);
        tok->prefix_len = strlen(tok->prefix);
    }

    if (json_int(model, "max_input_chars_per_word", 100, 0, TOK_MAX_WORD_CHARS, &max_chars, path,
                 err) != 0) {
        goto out;
    }
    tok->opts.max_input_chars_per_word = max_chars;

    if (parse_normalizer(tok, json_get(root, "normalizer"), 0, path, err) != 0) {
        goto out;
    }
    pre = json_get(root, "pre_tokenizer");
    type = cJSON_IsObject(pre) ? json_get(pre, "type") : NULL;
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BertPreTokenizer") != 0) {
        emb_fail(err, "tokenizer: %s: pre_tokenizer is %s%s%s; only BertPreTokenizer is "
                 "supported", path, cJSON_IsString(type) ? "\"" : "",
                 cJSON_IsString(type) ? type->valuestring : "missing",
                 cJSON_IsString(type) ? "\"" : "");
        goto out;
    }
    if (parse_added_tokens(tok, json_get(root, "added_tokens"), path, err) != 0) {
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* vocab.txt: one entry a line, id = line index. Lines end in \n, \r\n or
 * \r and nothing else is stripped, as transformers' load_vocab reads it
 * (text mode, rstrip("\n")). A later duplicate takes the later id. */
static int load_vocab_txt(emb_tokenizer *tok, const char *path, emb_err *err)
{
    char *text = NULL;
    size_t len = 0;
    size_t i;
    size_t lines = 0;
    int rc = -1;

    if (read_file(path, &text, &len, err) != 0) {
        goto out;
    }
    for (i = 0; i < len; i++) {
        if (text[i] == '\n' || (text[i] == '\r' && (i + 1 == len || text[i + 1] != '\n'))) {
            lines++;
        }
    }
    if (len > 0 && text[len - 1] != '\n' && text[len - 1] != '\r') {
        lines++;
    }
    if (lines == 0 || lines > TOK_MAX_VOCAB) {
        emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s has %zu lines (1 to %d allowed)", path,
                    lines, TOK_MAX_VOCAB);
        goto out;
    }
    if (vocab_init(&tok->vocab, lines, len) != 0) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        goto out;
    }
    i = 0;
    lines = 0;
    while (i < len) {
        size_t start = i;
        size_t n;
        while (i < len && text[i] != '\n' && text[i] != '\r') {
            i++;
        }
        n = i - start;
        if (i < len && text[i] == '\r' && i + 1 < len && text[i + 1] == '\n') {
            i++;
        }
        i++;
        if (n > TOK_MAX_TOKEN_BYTES) {
            emb_fail_as(err, EMB_ERR_TOO_LARGE, "tokenizer: %s line %zu is longer than %d bytes",
                        path, lines + 1, TOK_MAX_TOKEN_BYTES);
            goto out;
        }
        if (!utf8_valid(text + start, n)) {
            emb_fail_as(err, EMB_ERR_INVALID, "tokenizer: %s line %zu is not valid UTF-8", path,
                        lines + 1);
            goto out;
        }
        if (vocab_add(&tok->vocab, text + start, n, (int32_t)lines) != 0) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
            goto out;
        }
        lines++;
    }
    rc = 0;
out:
    free(text);
    return rc;
}

/* vocab.txt's settings from tokenizer_config.json, as transformers'
 * BertConverter builds the fast tokenizer from them. */
static int configure_vocab_txt(emb_tokenizer *tok, const cJSON *cfg, const char *cfg_path,
                               emb_err *err)
{
    static const char *const default_specials[] = { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" };
    static const char *const special_keys[] = { "pad_token", "unk_token", "cls_token",
                                                "sep_token", "mask_token" };
    int lower = 1;
    int strip = -1;
    int chinese = 1;
    const char *unk;
    size_t i;

    if (cfg != NULL) {
        const cJSON *s = json_get(cfg, "strip_accents");
        lower = json_bool(cfg, "do_lower_case", 1, cfg_path, err);
        chinese = json_bool(cfg, "tokenize_chinese_chars", 1, cfg_path, err);
        strip = json_bool(cfg, "strip_accents", -1, cfg_path, err);
        if (lower < 0 || chinese < 0 || (strip < 0 && s != NULL && !cJSON_IsNull(s))) {
            return -1;
        }
    }
    if (add_bert_normalizer(tok, 1, chinese, strip, lower, cfg_path, err) != 0) {
        return -1;
    }
    tok->prefix[0] = '#';
    tok->prefix[1] = '#';
    tok->prefix[2] = '\0';
    tok->prefix_len = 2;
    tok->opts.max_input_chars_per_word = 100;

    unk = json_token_name(cfg, "unk_token");
    if (unk == NULL) {
        unk = "[UNK]";
    }
    tok->unk_id = vocab_find(&tok->vocab, "", 0, unk, strlen(unk));
    if (tok->unk_id < 0) {
        return emb_fail_as(err, EMB_ERR_INVALID,
                           "tokenizer: unk token \"%s\" is not in the vocabulary", unk);
    }
    /* Special tokens are never split or normalized. */
    if (cfg != NULL && parse_added_decoder(tok, json_get(cfg, "added_tokens_decoder"), cfg_path,
                                           err) != 0) {
        return -1;
    }
    for (i = 0; i < sizeof special_keys / sizeof special_keys[0]; i++) {
        const char *name = json_token_name(cfg, special_keys[i]);
        int32_t id;
        if (name == NULL) {
            name = default_specials[i];
        }
        id = vocab_find(&tok->vocab, "", 0, name, strlen(name));
        if (id < 0 || added_by_content(tok, name) != NULL) {
            continue; /* absent, or added_tokens_decoder said how */
        }
        if (add_added_token(tok, name, 0, 0, cfg_path, err) != 0) {
            return -1;
        }
    }
    return 0;
}

/* The ids of [CLS] and friends: names from tokenizer_config.json when it
 * has them, else the usual ones; -1 when not in the vocabulary. */
static void find_specials(emb_tokenizer *tok, const cJSON *cfg)
{
    const char *cls = json_token_name(cfg, "cls_token");
    const char *sep = json_token_name(cfg, "sep_token");
    const char *pad = json_token_name(cfg, "pad_token");
    const char *mask = json_token_name(cfg, "mask_token");

    tok->specials.cls_id = emb_tokenizer_token_id(tok, cls != NULL ? cls : "[CLS]");
    tok->specials.sep_id = emb_tokenizer_token_id(tok, sep != NULL ? sep : "[SEP]");
    tok->specials.pad_id = emb_tokenizer_token_id(tok, pad != NULL ? pad : "[PAD]");
    tok->specials.mask_id = emb_tokenizer_token_id(tok, mask != NULL ? mask : "[MASK]");
    tok->specials.unk_id = tok->unk_id;
}

emb_tokenizer *emb_tokenizer_load(const char *dir, emb_err *err)
{
    emb_tokenizer *tok = NULL;
    cJSON *cfg = NULL;
    char json_path[TOK_MAX_PATH];
    char vocab_path[TOK_MAX_PATH];
    char cfg_path[TOK_MAX_PATH];
    int rc = -1;

    if (dir == NULL) {
        emb_fail(err, "tokenizer: no directory given");
        return NULL;
    }
    if (path_join(json_path, dir, "tokenizer.json", err) != 0 ||
        path_join(vocab_path, dir, "vocab.txt", err) != 0 ||
        path_join(cfg_path, dir, "tokenizer_config.json", err) != 0) {
        return NULL;
    }
    tok = calloc(1, sizeof *tok);
    if (tok != NULL)
        atomic_init(&tok->refs, 1);
    if (tok == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        return NULL;
    }
    tok->opts.strip_accents = -1;
    tok->opts.max_input_chars_per_word = 100;

    if (file_exists(cfg_path)) {
        cfg = parse_json_file(cfg_path, err);
        if (cfg == NULL) {
            goto out;
        }
    }
    if (file_exists(json_path)) {
        if (load_tokenizer_json(tok, json_path, err) != 0) {
            goto out;
        }
    } else if (file_exists(vocab_path)) {
        if (load_vocab_txt(tok, vocab_path, err) != 0) {
            goto out;
        }
        if (configure_vocab_txt(tok, cfg, cfg_path, err) != 0) {
            goto out;
        }
    } else {
        emb_fail(err, "tokenizer: %s has neither tokenizer.json nor vocab.txt", dir);
        goto out;
    }
    if (vocab_index(&tok->vocab) != 0) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "tokenizer: out of memory");
        goto out;
    }
    tok->vocab_size = tok->vocab.id_count;
    if (build_added_sets(tok, err) != 0) {
        goto out;
    }
    find_specials(tok, cfg);
    rc = 0;
out:
    cJSON_Delete(cfg);
    if (rc != 0) {
        emb_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

emb_tokenizer *emb_tokenizer_retain(emb_tokenizer *tok)
{
    atomic_fetch_add(&tok->refs, 1);
    return tok;
}

void emb_tokenizer_free(emb_tokenizer *tok)
{
    size_t i;

    if (tok == NULL) {
        return;
    }
    if (atomic_fetch_sub(&tok->refs, 1) > 1) {
        return;
    }
    vocab_free(&tok->vocab);
    for (i = 0; i < tok->nadded; i++) {
        free(tok->added[i].content);
        free(tok->added[i].cps);
    }
    free(tok->added);
    free(tok->raw_set);
    free(tok->norm_set);
    free(tok);
}
