/* test_tokenizer.c: the WordPiece tokenizer against Hugging Face.
 *
 * Expected ids come from Hugging Face itself: llama.cpp's test vectors for
 * bge-small-en-v1.5, tables of hard strings worked out with the
 * tokenizers library (the invalid UTF-8 ones decoded as Python's
 * decode('utf-8', 'replace') does first), and tests/fixtures/tokenizer/
 * hf-golden.tsv, written by gen-hf-golden.js beside it. Each table runs on
 * every way of loading the same vocabulary: two tokenizer.json files, one
 * with a Sequence normalizer, and vocab.txt + tokenizer_config.json. */
#include <check.h>
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run_suite.h"
#include "tokenizer.h"

#define MAX_IDS 8192
#define FIXTURE_DIR "tests/fixtures/tokenizer"
#define VECTOR_SEP "\n__ggml_vocab_test__\n"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                */
/* ---------------------------------------------------------------------- */

static const char *shared_dir(void)
{
    const char *d = getenv("EMBEDD_SHARED_DATA");

    return d != NULL && d[0] != '\0' ? d : "../shared/data";
}

static void shared_path(char *out, size_t cap, const char *rel)
{
    int n = snprintf(out, cap, "%s/%s", shared_dir(), rel);

    ck_assert_msg(n > 0 && (size_t)n < cap, "path too long: %s", rel);
}

/* The whole file, NUL-terminated; fails the test when it cannot be read. */
static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long size;
    size_t got;

    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    ck_assert_msg(size >= 0, "cannot size %s", path);
    buf = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(buf);
    got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    ck_assert_msg(got == (size_t)size, "short read on %s", path);
    buf[size] = '\0';
    if (len != NULL) {
        *len = (size_t)size;
    }
    return buf;
}

static void write_all(const char *dir, const char *name, const char *data, size_t len)
{
    char path[4200];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fwrite(data, 1, len, f) == len);
    fclose(f);
}

static void copy_file(const char *from, const char *dir, const char *name)
{
    size_t len = 0;
    char *data = read_all(from, &len);

    write_all(dir, name, data, len);
    free(data);
}

static void make_temp_dir(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/embedd-tok-XXXXXX");
    ck_assert_msg(mkdtemp(out) != NULL, "mkdtemp failed");
}

/* Removes the files this test writes, then the directory. */
static void remove_temp_dir(const char *dir)
{
    static const char *const names[] = { "tokenizer.json", "vocab.txt", "tokenizer_config.json" };
    char path[4200];
    size_t i;

    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static emb_tokenizer *load_dir(const char *dir)
{
    emb_err err;
    emb_tokenizer *tok;

    memset(&err, 0, sizeof err);
    tok = emb_tokenizer_load(dir, &err);
    ck_assert_msg(tok != NULL, "loading %s: %s", dir, err.msg);
    return tok;
}

/* "[ id id id]" as the .out files write them: each id after one space. */
static void format_ids(char *out, size_t cap, const int32_t *ids, int n)
{
    size_t used = 0;
    int i;

    out[0] = '\0';
    for (i = 0; i < n && used + 16 < cap; i++) {
        used += (size_t)snprintf(out + used, cap - used, " %d", (int)ids[i]);
    }
}

/* ---------------------------------------------------------------------- */
/* The four ways to load bge / MiniLM's vocabulary                        */
/* ---------------------------------------------------------------------- */

enum variant { V_BGE, V_MINILM, V_ST5, V_VOCAB_TXT, V_COUNT };

static const char *const variant_names[V_COUNT] = {
    "bge-small-en-v1.5 (tokenizer.json)",
    "all-MiniLM-L6-v2 (tokenizer.json)",
    "bge-small-en-v1.5-st5-resave (Sequence normalizer)",
    "all-MiniLM-L6-v2 vocab.txt + tokenizer_config.json",
};

/* Loads a variant; tmp gets the temporary directory to remove, or "". */
static emb_tokenizer *load_variant(int v, char *tmp, size_t cap)
{
    char dir[4096];
    char from[4096];
    emb_tokenizer *tok;

    tmp[0] = '\0';
    switch (v) {
    case V_BGE:
        shared_path(dir, sizeof dir, "models/bge-small-en-v1.5");
        break;
    case V_MINILM:
        shared_path(dir, sizeof dir, "models/all-MiniLM-L6-v2");
        break;
    case V_ST5:
        shared_path(dir, sizeof dir, "models/bge-small-en-v1.5-st5-resave");
        break;
    default:
        make_temp_dir(tmp, cap);
        shared_path(from, sizeof from, "models/all-MiniLM-L6-v2/vocab.txt");
        copy_file(from, tmp, "vocab.txt");
        shared_path(from, sizeof from, "models/all-MiniLM-L6-v2/tokenizer_config.json");
        copy_file(from, tmp, "tokenizer_config.json");
        snprintf(dir, sizeof dir, "%s", tmp);
        break;
    }
    tok = load_dir(dir);
    return tok;
}

static void unload_variant(emb_tokenizer *tok, const char *tmp)
{
    emb_tokenizer_free(tok);
    if (tmp[0] != '\0') {
        remove_temp_dir(tmp);
    }
}

/* ---------------------------------------------------------------------- */
/* 1. llama.cpp's test vectors                                            */
/* ---------------------------------------------------------------------- */

/* Runs one .inp/.out pair; returns the number of mismatches, each printed. */
static int run_vectors(const emb_tokenizer *tok, const char *label, const char *name)
{
    static int32_t ids[MAX_IDS];
    static char got[65536];
    char rel[256];
    char path[4096];
    char *inp;
    char *out;
    char *line;
    char *text;
    size_t inp_len = 0;
    int cases = 0;
    int failures = 0;

    snprintf(rel, sizeof rel, "tokenizer-vectors/%s.inp", name);
    shared_path(path, sizeof path, rel);
    inp = read_all(path, &inp_len);
    snprintf(rel, sizeof rel, "tokenizer-vectors/%s.out", name);
    shared_path(path, sizeof path, rel);
    out = read_all(path, NULL);

    text = inp;
    line = out;
    for (;;) {
        char *sep = strstr(text, VECTOR_SEP);
        char *eol;
        int n;
        if (sep == NULL) {
            break; /* what follows the last separator is not a case */
        }
        eol = strchr(line, '\n');
        ck_assert_msg(eol != NULL, "%s: %s.out has fewer lines than cases", label, name);
        *eol = '\0';
        n = emb_tokenize(tok, text, (size_t)(sep - text), ids, MAX_IDS);
        ck_assert_int_ge(n, 0);
        ck_assert_int_le(n, MAX_IDS);
        format_ids(got, sizeof got, ids, n);
        if (strcmp(got, line) != 0) {
            fprintf(stderr, "%s: %s case %d mismatch\n  input:    \"%.*s\"\n  expected:%s\n"
                    "  got:     %s\n", label, name, cases, (int)(sep - text), text, line, got);
            failures++;
        }
        cases++;
        text = sep + strlen(VECTOR_SEP);
        line = eol + 1;
    }
    ck_assert_msg(cases >= 40, "%s: only %d cases in %s.inp", label, cases, name);
    free(inp);
    free(out);
    return failures;
}

START_TEST(test_llama_vectors)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(_i, tmp, sizeof tmp);
    int failures = 0;

    failures += run_vectors(tok, variant_names[_i], "ggml-vocab-bert-bge.gguf");
    failures += run_vectors(tok, variant_names[_i], "ggml-vocab-bert-bge.gguf.2024-07");
    unload_variant(tok, tmp);
    ck_assert_msg(failures == 0, "%s: %d test vector(s) differ (see stderr)", variant_names[_i],
                  failures);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* 2. Hard strings                                                        */
/* ---------------------------------------------------------------------- */

typedef struct golden {
    const char *text;
    size_t len;      /* bytes; texts may hold NUL and invalid UTF-8 */
    int32_t ids[40]; /* ends with -1 */
} golden;

/* bge-small-en-v1.5's vocabulary, BertNormalizer(lowercase), ids from
 * Hugging Face tokenizers; the comment shows the tokens. */
static const golden golden_table[] = {
    /* case, punctuation split: hello , world ! */
    { "Hello, World!", 13, { 7592, 1010, 2088, 999, -1 } },
    /* ## continuation pieces: una ##ffa ##ble */
    { "unaffable", 9, { 14477, 20961, 3468, -1 } },
    /* accent stripped: cafe */
    { "Caf\xc3\xa9", 5, { 7668, -1 } },
    /* naive resume */
    { "na\xc3\xafve r\xc3\xa9sum\xc3\xa9", 15, { 15743, 13746, -1 } },
    /* combining acute dropped: cafe */
    { "Cafe\xcc\x81", 6, { 7668, -1 } },
    /* ligature: lowercase is not case folding: ﬁ */
    { "\xef\xac\x81", 3, { 1984, -1 } },
    /* ﬁ ##nan ##cial */
    { "\xef\xac\x81nancial", 10, { 1984, 7229, 13247, -1 } },
    /* sharp s stays: st ##raße */
    { "Stra\xc3\x9f" "e", 7, { 2358, 27807, -1 } },
    /* U+0130 -> i + U+0307 -> i: istanbul */
    { "\xc4\xb0stanbul", 9, { 9960, -1 } },
    /* sigma lowercases to non-final form: ο ##δ ##ο ##σ */
    { "\xce\x9f\xce\x94\xce\x9f\xce\xa3", 8, { 1169, 29722, 29730, 29733, -1 } },
    /* KELVIN SIGN -> k: k */
    { "\xe2\x84\xaa", 3, { 1047, -1 } },
    /* titlecase dz -> not in vocab: [UNK] */
    { "\xc7\x85", 2, { 100, -1 } },
    /* CJK split per character: 中 文 分 [UNK] */
    { "\xe4\xb8\xad\xe6\x96\x87\xe5\x88\x86\xe8\xaf\x8d", 12, { 1746, 1861, 1775, 100, -1 } },
    /* kana is not CJK-padded: 日 本 語 の ##テ ##キ ##ス ##ト */
    { "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88", 24, { 1864, 1876, 1950, 1671, 30239, 30227, 30233, 30240, -1 } },
    /* Hangul: NFD to jamo: ᄒ ##ᅡ ##ᆫ ##ᄀ ##ᅮ ##ᆨ ##ᄋ ##ᅥ */
    { "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4", 9, { 1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008, -1 } },
    /* U+2B820: outside tokenizers' CJK ranges: [UNK] */
    { "a\xf0\xab\xa0\xa0" "b", 6, { 100, -1 } },
    /* U+2B920: inside them: a [UNK] b */
    { "a\xf0\xab\xa4\xa0" "b", 6, { 1037, 100, 1038, -1 } },
    /* Cc and soft hyphen (Cf) removed: control char ##s ! */
    { "\x01\x02 control\x7f chars\xc2\xad!", 20, { 2491, 25869, 2015, 999, -1 } },
    /* ZWSP (Cf) removed, words join: zero ##wi ##dt ##h */
    { "zero\xe2\x80\x8bwidth", 12, { 5717, 9148, 11927, 2232, -1 } },
    /* whitespace kinds; VT is a control: a b c d e f g ##h */
    { "a\xc2\xa0" "b\xe2\x80\xa8" "c\xe3\x80\x80" "d\te\nf\rg\x0bh", 20, { 1037, 1038, 1039, 1040, 1041, 1042, 1043, 2232, -1 } },
    /* private use removed: x ##y */
    { "x\xee\x80\x80y", 5, { 1060, 2100, -1 } },
    /* unassigned kept: one unknown word: [UNK] */
    { "x\xcd\xb8y", 4, { 100, -1 } },
    /* invalid bytes -> U+FFFD -> removed:  */
    { "\xff\xfe", 2, { -1 } },
    /* truncated 3-byte sequence at the end: ab */
    { "ab\xe2\x82", 4, { 11113, -1 } },
    /* valid euro sign: € ##5 */
    { "\xe2\x82\xac" "5", 4, { 1574, 2629, -1 } },
    /* encoded surrogate: three U+FFFD: ab */
    { "a\xed\xa0\x80" "b", 5, { 11113, -1 } },
    /* truncated 4-byte sequence before x: x y */
    { "\xf0\x9f\xa6x y", 6, { 1060, 1061, -1 } },
    /* overlong slash: ok */
    { "\xc0\xafok", 4, { 7929, -1 } },
    /* emoji: i [UNK] [UNK] [UNK] */
    { "I \xe2\x9d\xa4\xef\xb8\x8f \xf0\x9f\xa6\x99 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", 22, { 1045, 100, 100, 100, -1 } },
    /* special tokens in the text are matched raw: [CLS] hi [SEP] [ cl ##s ] */
    { "[CLS] hi [SEP] [cls]", 20, { 101, 7632, 102, 1031, 18856, 2015, 1033, -1 } },
    /* 1 , 234 . 56 % don ' t u . s . a . */
    { "1,234.56% don't U.S.A.", 22, { 1015, 1010, 22018, 1012, 5179, 1003, 2123, 1005, 1056, 1057, 1012, 1055, 1012, 1037, 1012, -1 } },
    /* enclosed digit, fullwidth letters: [UNK] [UNK] */
    { "\xe2\x91\xa0 \xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3", 13, { 100, 100, -1 } },
    /* Arabic: م ##ر ##ح ##ب ##ا */
    { "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7", 10, { 1295, 17149, 29820, 29816, 25573, -1 } },
    /* Devanagari: Mn dropped, Mc kept: न ##म ##स ##त */
    { "\xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4\xe0\xa5\x87", 18, { 1327, 29867, 29874, 29859, -1 } },
    /* empty:  */
    { "", 0, { -1 } },
    /* only whitespace:  */
    { " \t\n ", 4, { -1 } },
    /* embedded NUL, given by length: removed, the words join: hello ##world */
    { "hello\0world", 11, { 7592, 11108, -1 } },
    /* 101 characters: one [UNK] */
    { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 101, { 100, -1 } },
};

/* The same with st_lowercase (Python str.lower() before everything). */
static const golden golden_st_table[] = {
    /* Python final sigma: ο ##δ ##ος */
    { "\xce\x9f\xce\x94\xce\x9f\xce\xa3", 8, { 1169, 29722, 15297, -1 } },
    /* final only after a cased letter: σ ##α ##ς σ */
    { "\xce\xa3\xce\x91\xce\xa3 \xce\xa3", 9, { 1173, 14608, 19579, 1173, -1 } },
    /* istanbul */
    { "\xc4\xb0STANBUL", 9, { 9960, -1 } },
    /* lowercased before matching: no specials: [ cl ##s ] hi [ sep ] */
    { "[CLS] Hi [SEP]", 14, { 1031, 18856, 2015, 1033, 7632, 1031, 19802, 1033, -1 } },
};

static int check_golden(const emb_tokenizer *tok, const char *label, const golden *g)
{
    static int32_t ids[MAX_IDS];
    char want[4096];
    char got[4096];
    int expected = 0;
    int n;

    while (g->ids[expected] >= 0) {
        expected++;
    }
    n = emb_tokenize(tok, g->text, g->len, ids, MAX_IDS);
    ck_assert_int_ge(n, 0);
    format_ids(want, sizeof want, g->ids, expected);
    format_ids(got, sizeof got, ids, n < MAX_IDS ? n : MAX_IDS);
    if (strcmp(want, got) != 0) {
        fprintf(stderr, "%s: \"%.*s\" (%zu bytes)\n  expected:%s\n  got:     %s\n", label,
                (int)g->len, g->text, g->len, want, got);
        return 1;
    }
    return 0;
}

START_TEST(test_golden_strings)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(_i, tmp, sizeof tmp);
    int failures = 0;
    size_t i;

    for (i = 0; i < sizeof golden_table / sizeof golden_table[0]; i++) {
        failures += check_golden(tok, variant_names[_i], &golden_table[i]);
    }
    emb_tokenizer_set_st_lowercase(tok, 1);
    ck_assert_int_eq(emb_tokenizer_get_options(tok).st_lowercase, 1);
    for (i = 0; i < sizeof golden_st_table / sizeof golden_st_table[0]; i++) {
        failures += check_golden(tok, variant_names[_i], &golden_st_table[i]);
    }
    unload_variant(tok, tmp);
    ck_assert_msg(failures == 0, "%s: %d golden string(s) differ (see stderr)", variant_names[_i],
                  failures);
}
END_TEST

/* A word of more than max_input_chars_per_word characters is one [UNK];
 * one of exactly that many still goes through WordPiece. */
START_TEST(test_long_word)
{
    char tmp[4096];
    char word[256];
    int32_t ids[256];
    emb_tokenizer *tok = load_variant(V_BGE, tmp, sizeof tmp);
    emb_tokenizer_options opts = emb_tokenizer_get_options(tok);
    int32_t unk = emb_tokenizer_token_id(tok, "[UNK]");
    int limit = opts.max_input_chars_per_word;
    int n;
    int i;

    ck_assert_int_eq(limit, 100);
    ck_assert_int_ge(unk, 0);
    ck_assert_int_eq(emb_tokenizer_specials(tok).unk_id, unk);
    memset(word, 'a', sizeof word);
    n = emb_tokenize(tok, word, (size_t)limit + 1, ids, 256);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(ids[0], unk);
    n = emb_tokenize(tok, word, (size_t)limit, ids, 256);
    ck_assert_int_gt(n, 1);
    for (i = 0; i < n; i++) {
        ck_assert_int_ne(ids[i], unk);
    }
    /* 100 two-byte characters: the limit counts characters, not bytes */
    for (i = 0; i < limit; i++) {
        word[2 * i] = '\xc3';
        word[2 * i + 1] = '\xa9'; /* é, strips to e */
    }
    n = emb_tokenize(tok, word, 2 * (size_t)limit, ids, 256);
    ck_assert_int_gt(n, 1);
    unload_variant(tok, tmp);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* 2b. Hugging Face fixture: random hard strings and corpus lines         */
/* ---------------------------------------------------------------------- */

/* Undoes the fixture's escapes (\\ \t \n \r \xHH) in place; returns the
 * length. */
static size_t unescape(char *s)
{
    size_t r = 0;
    size_t w = 0;

    while (s[r] != '\0') {
        if (s[r] == '\\' && s[r + 1] == 'x') {
            char hex[3] = { s[r + 2], s[r + 3], '\0' };
            s[w] = (char)strtol(hex, NULL, 16);
            r += 4;
        } else if (s[r] == '\\') {
            char c = s[r + 1];
            s[w] = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
            r += 2;
        } else {
            s[w] = s[r];
            r++;
        }
        w++;
    }
    return w;
}

/* Parses "1 2 3" into ids; returns the count. */
static int parse_ids(const char *s, int32_t *ids, int cap)
{
    int n = 0;

    while (*s != '\0' && n < cap) {
        char *end = NULL;
        long v = strtol(s, &end, 10);
        if (end == s) {
            break;
        }
        ids[n] = (int32_t)v;
        n++;
        s = end;
    }
    return n;
}

typedef struct fixture_row {
    char *text;
    size_t len;
    int32_t *want[2]; /* default; cased + st_lowercase */
    int nwant[2];
} fixture_row;

/* Reads hf-golden.tsv; returns the number of rows. */
static int load_fixture(fixture_row **rows_out, char **buf_out)
{
    char *buf = read_all(FIXTURE_DIR "/hf-golden.tsv", NULL);
    fixture_row *rows = NULL;
    int n = 0;
    char *line = buf;

    while (*line != '\0') {
        char *eol = strchr(line, '\n');
        char *tab1;
        char *tab2;
        fixture_row *r;
        int k;
        ck_assert_msg(eol != NULL, "hf-golden.tsv: last line has no newline");
        *eol = '\0';
        tab1 = strchr(line, '\t');
        ck_assert_msg(tab1 != NULL, "hf-golden.tsv line %d: no tab", n + 1);
        tab2 = strchr(tab1 + 1, '\t');
        ck_assert_msg(tab2 != NULL, "hf-golden.tsv line %d: one tab", n + 1);
        *tab1 = '\0';
        *tab2 = '\0';
        rows = realloc(rows, (size_t)(n + 1) * sizeof *rows);
        ck_assert_ptr_nonnull(rows);
        r = &rows[n];
        r->text = line;
        r->len = unescape(line);
        for (k = 0; k < 2; k++) {
            r->want[k] = malloc(MAX_IDS * sizeof(int32_t));
            ck_assert_ptr_nonnull(r->want[k]);
            r->nwant[k] = parse_ids(k == 0 ? tab1 + 1 : tab2 + 1, r->want[k], MAX_IDS);
        }
        n++;
        line = eol + 1;
    }
    *rows_out = rows;
    *buf_out = buf;
    return n;
}

static void free_fixture(fixture_row *rows, int n, char *buf)
{
    int i;

    for (i = 0; i < n; i++) {
        free(rows[i].want[0]);
        free(rows[i].want[1]);
    }
    free(rows);
    free(buf);
}

/* Counts the rows whose ids differ from column k, printing the first few. */
static int check_fixture(const emb_tokenizer *tok, const char *label, const fixture_row *rows,
                         int n, int k)
{
    static int32_t ids[MAX_IDS];
    int failures = 0;
    int i;

    for (i = 0; i < n; i++) {
        int got = emb_tokenize(tok, rows[i].text, rows[i].len, ids, MAX_IDS);
        int same = got == rows[i].nwant[k] &&
                   memcmp(ids, rows[i].want[k], (size_t)got * sizeof *ids) == 0;
        if (!same) {
            char want_s[8192];
            char got_s[8192];
            format_ids(want_s, sizeof want_s, rows[i].want[k], rows[i].nwant[k]);
            format_ids(got_s, sizeof got_s, ids, got < MAX_IDS ? got : MAX_IDS);
            if (failures < 5) {
                fprintf(stderr, "%s: hf-golden.tsv line %d: \"%.*s\"\n  expected:%s\n"
                        "  got:     %s\n", label, i + 1, (int)rows[i].len, rows[i].text, want_s,
                        got_s);
            }
            failures++;
        }
    }
    return failures;
}

/* bge's tokenizer.json made cased (BertNormalizer lowercase false). */
static void write_cased_bge(const char *dir)
{
    char path[4096];
    char *text;
    char *out;
    cJSON *root;
    cJSON *norm;

    shared_path(path, sizeof path, "models/bge-small-en-v1.5/tokenizer.json");
    text = read_all(path, NULL);
    root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    ck_assert_ptr_nonnull(norm);
    cJSON_ReplaceItemInObjectCaseSensitive(norm, "lowercase", cJSON_CreateFalse());
    out = cJSON_PrintUnformatted(root);
    ck_assert_ptr_nonnull(out);
    write_all(dir, "tokenizer.json", out, strlen(out));
    free(out);
    cJSON_Delete(root);
    free(text);
}

START_TEST(test_hf_fixture)
{
    char tmp[4096];
    char *buf = NULL;
    fixture_row *rows = NULL;
    int n = load_fixture(&rows, &buf);
    emb_tokenizer *tok = load_variant(_i, tmp, sizeof tmp);
    int failures;

    ck_assert_int_ge(n, 500);
    failures = check_fixture(tok, variant_names[_i], rows, n, 0);
    unload_variant(tok, tmp);
    free_fixture(rows, n, buf);
    ck_assert_msg(failures == 0, "%s: %d of %d fixture lines differ (see stderr)",
                  variant_names[_i], failures, n);
}
END_TEST

START_TEST(test_hf_fixture_cased_st_lowercase)
{
    char tmp[4096];
    char *buf = NULL;
    fixture_row *rows = NULL;
    int n = load_fixture(&rows, &buf);
    emb_tokenizer *tok;
    int failures;

    make_temp_dir(tmp, sizeof tmp);
    write_cased_bge(tmp);
    tok = load_dir(tmp);
    ck_assert_int_eq(emb_tokenizer_get_options(tok).lowercase, 0);
    emb_tokenizer_set_st_lowercase(tok, 1);
    failures = check_fixture(tok, "cased bge + st_lowercase", rows, n, 1);
    emb_tokenizer_free(tok);
    remove_temp_dir(tmp);
    free_fixture(rows, n, buf);
    ck_assert_msg(failures == 0, "cased + st_lowercase: %d of %d fixture lines differ", failures,
                  n);
}
END_TEST

/* Several threads share one tokenizer and get the same ids. */
typedef struct thread_job {
    const emb_tokenizer *tok;
    const fixture_row *rows;
    int n;
    int failures;
} thread_job;

static void *thread_main(void *arg)
{
    thread_job *job = arg;
    int32_t *ids = malloc(MAX_IDS * sizeof *ids);
    int round;
    int i;

    for (round = 0; round < 3 && ids != NULL; round++) {
        for (i = 0; i < job->n; i++) {
            int got = emb_tokenize(job->tok, job->rows[i].text, job->rows[i].len, ids, MAX_IDS);
            if (got != job->rows[i].nwant[0] ||
                memcmp(ids, job->rows[i].want[0], (size_t)got * sizeof *ids) != 0) {
                job->failures++;
            }
        }
    }
    free(ids);
    return NULL;
}

START_TEST(test_threads)
{
    char tmp[4096];
    char *buf = NULL;
    fixture_row *rows = NULL;
    int n = load_fixture(&rows, &buf);
    emb_tokenizer *tok = load_variant(V_BGE, tmp, sizeof tmp);
    pthread_t threads[4];
    thread_job jobs[4];
    int i;

    for (i = 0; i < 4; i++) {
        jobs[i].tok = tok;
        jobs[i].rows = rows;
        jobs[i].n = n;
        jobs[i].failures = 0;
        ck_assert_int_eq(pthread_create(&threads[i], NULL, thread_main, &jobs[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        ck_assert_int_eq(pthread_join(threads[i], NULL), 0);
        ck_assert_int_eq(jobs[i].failures, 0);
    }
    unload_variant(tok, tmp);
    free_fixture(rows, n, buf);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* 3. Special tokens come from the vocabulary                             */
/* ---------------------------------------------------------------------- */

/* The id of token as the model directory itself says: its line in
 * vocab.txt, or model.vocab in tokenizer.json. */
static int32_t id_in_files(int v, const char *token)
{
    char path[4096];
    char *text;
    int32_t id = -1;

    if (v == V_VOCAB_TXT || v == V_MINILM) {
        char *line;
        int32_t index = 0;
        shared_path(path, sizeof path, "models/all-MiniLM-L6-v2/vocab.txt");
        text = read_all(path, NULL);
        line = text;
        while (*line != '\0') {
            char *eol = strchr(line, '\n');
            if (eol != NULL) {
                *eol = '\0';
            }
            if (strcmp(line, token) == 0) {
                id = index;
                break;
            }
            if (eol == NULL) {
                break;
            }
            index++;
            line = eol + 1;
        }
    } else {
        cJSON *root;
        const cJSON *item;
        shared_path(path, sizeof path,
                    v == V_BGE ? "models/bge-small-en-v1.5/tokenizer.json"
                               : "models/bge-small-en-v1.5-st5-resave/tokenizer.json");
        text = read_all(path, NULL);
        root = cJSON_Parse(text);
        ck_assert_ptr_nonnull(root);
        item = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"),
                                             "vocab"),
            token);
        if (cJSON_IsNumber(item)) {
            id = (int32_t)item->valueint;
        }
        cJSON_Delete(root);
    }
    free(text);
    return id;
}

START_TEST(test_special_ids)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(_i, tmp, sizeof tmp);
    emb_special_tokens sp = emb_tokenizer_specials(tok);
    const char *names[5] = { "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]" };
    int32_t got[5];
    int k;

    got[0] = sp.cls_id;
    got[1] = sp.sep_id;
    got[2] = sp.pad_id;
    got[3] = sp.unk_id;
    got[4] = sp.mask_id;
    for (k = 0; k < 5; k++) {
        int32_t want = id_in_files(_i, names[k]);
        ck_assert_msg(want >= 0, "%s not in the files", names[k]);
        ck_assert_msg(got[k] == want, "%s: %s is %d, the vocabulary says %d", variant_names[_i],
                      names[k], got[k], want);
        ck_assert_int_eq(emb_tokenizer_token_id(tok, names[k]), want);
        ck_assert_str_eq(emb_tokenizer_token(tok, want), names[k]);
    }
    ck_assert_int_eq(emb_tokenizer_vocab_size(tok), 30522);
    ck_assert_ptr_null(emb_tokenizer_token(tok, -1));
    ck_assert_ptr_null(emb_tokenizer_token(tok, 30522));
    ck_assert_int_eq(emb_tokenizer_token_id(tok, "no-such-token-here"), -1);
    ck_assert_int_eq(emb_tokenizer_token_id(tok, "##ing"), id_in_files(_i, "##ing"));
    ck_assert_str_eq(emb_tokenizer_token(tok, emb_tokenizer_token_id(tok, "hello")), "hello");
    unload_variant(tok, tmp);
}
END_TEST

START_TEST(test_options)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(_i, tmp, sizeof tmp);
    emb_tokenizer_options o = emb_tokenizer_get_options(tok);

    ck_assert_int_eq(o.lowercase, 1);
    ck_assert_int_eq(o.strip_accents, -1);
    ck_assert_int_eq(o.handle_chinese_chars, 1);
    ck_assert_int_eq(o.clean_text, 1);
    ck_assert_int_eq(o.max_input_chars_per_word, 100);
    ck_assert_int_eq(o.st_lowercase, 0);
    unload_variant(tok, tmp);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* 4. emb_encode and truncation                                           */
/* ---------------------------------------------------------------------- */

START_TEST(test_encode_truncation)
{
    static const char text[] = "hello world, this is a test of truncation";
    char tmp[4096];
    emb_tokenizer *tok = load_variant(V_BGE, tmp, sizeof tmp);
    emb_special_tokens sp = emb_tokenizer_specials(tok);
    int32_t body[64];
    int32_t ids[64];
    int full = 0;
    int n;
    int t;
    int i;

    t = emb_tokenize(tok, text, strlen(text), body, 64);
    ck_assert_int_eq(t, 11); /* hello world , this is a test of tr ##un ##cation */

    /* right truncation keeps the first max_len - 2 */
    n = emb_encode(tok, text, strlen(text), 6, 0, ids, &full);
    ck_assert_int_eq(n, 6);
    ck_assert_int_eq(full, t + 2);
    ck_assert_int_eq(ids[0], sp.cls_id);
    ck_assert_int_eq(ids[5], sp.sep_id);
    for (i = 0; i < 4; i++) {
        ck_assert_int_eq(ids[1 + i], body[i]);
    }

    /* left truncation keeps the last ones, in order */
    for (i = 2; i <= t + 4; i++) {
        int kept = i - 2 < t ? i - 2 : t;
        int k;
        memset(ids, 0x7f, sizeof ids);
        n = emb_encode(tok, text, strlen(text), i, 1, ids, &full);
        ck_assert_int_eq(n, kept + 2);
        ck_assert_int_eq(full, t + 2);
        ck_assert_int_eq(ids[0], sp.cls_id);
        ck_assert_int_eq(ids[kept + 1], sp.sep_id);
        for (k = 0; k < kept; k++) {
            ck_assert_int_eq(ids[1 + k], body[t - kept + k]);
        }
        ck_assert_int_eq(ids[kept + 2], 0x7f7f7f7f); /* nothing written past the end */
    }

    /* max_len exactly fitting: nothing cut either way */
    n = emb_encode(tok, text, strlen(text), t + 2, 0, ids, &full);
    ck_assert_int_eq(n, t + 2);
    ck_assert_int_eq(ids[t], body[t - 1]);
    n = emb_encode(tok, text, strlen(text), t + 2, 1, ids, &full);
    ck_assert_int_eq(n, t + 2);
    ck_assert_int_eq(ids[1], body[0]);

    /* max_len 2: only the specials */
    n = emb_encode(tok, text, strlen(text), 2, 0, ids, &full);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(ids[0], sp.cls_id);
    ck_assert_int_eq(ids[1], sp.sep_id);
    ck_assert_int_eq(full, t + 2);

    /* empty text; full_len may be NULL; max_len < 2 is refused */
    n = emb_encode(tok, "", 0, 8, 0, ids, NULL);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(emb_encode(tok, text, strlen(text), 1, 0, ids, &full), -1);

    /* emb_tokenize writes at most cap ids and counts them all */
    memset(ids, 0x7f, sizeof ids);
    n = emb_tokenize(tok, text, strlen(text), ids, 3);
    ck_assert_int_eq(n, t);
    ck_assert_int_eq(ids[2], body[2]);
    ck_assert_int_eq(ids[3], 0x7f7f7f7f);
    ck_assert_int_eq(emb_tokenize(tok, text, strlen(text), NULL, 0), t);
    unload_variant(tok, tmp);
}
END_TEST

/* A long text: many words, nothing lost, linear time. */
START_TEST(test_long_text)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(V_BGE, tmp, sizeof tmp);
    const char *unit = "Hello world, ";
    size_t unit_len = strlen(unit);
    size_t reps = 100000;
    char *text = malloc(unit_len * reps);
    int32_t ids[8];
    int full = 0;
    size_t i;

    ck_assert_ptr_nonnull(text);
    for (i = 0; i < reps; i++) {
        memcpy(text + i * unit_len, unit, unit_len);
    }
    ck_assert_int_eq(emb_tokenize(tok, text, unit_len * reps, NULL, 0), (int)(3 * reps));
    ck_assert_int_eq(emb_encode(tok, text, unit_len * reps, 8, 1, ids, &full), 8);
    ck_assert_int_eq(full, (int)(3 * reps + 2));
    ck_assert_int_eq(ids[6], emb_tokenizer_token_id(tok, ","));
    free(text);
    unload_variant(tok, tmp);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* 5. Errors, and the less common tokenizer.json features                 */
/* ---------------------------------------------------------------------- */

/* Loads a directory that holds only this tokenizer.json; returns the
 * tokenizer (NULL on error, the message in err). */
static emb_tokenizer *load_json_text(const char *json, emb_err *err, char *tmp, size_t cap)
{
    make_temp_dir(tmp, cap);
    write_all(tmp, "tokenizer.json", json, strlen(json));
    memset(err, 0, sizeof *err);
    return emb_tokenizer_load(tmp, err);
}

static void expect_load_error(const char *json, const char *needle1, const char *needle2)
{
    char tmp[4096];
    emb_err err;
    emb_tokenizer *tok = load_json_text(json, &err, tmp, sizeof tmp);

    ck_assert_msg(tok == NULL, "loaded a bad tokenizer.json: %s", json);
    ck_assert_msg(strstr(err.msg, needle1) != NULL, "error \"%s\" does not say \"%s\"", err.msg,
                  needle1);
    if (needle2 != NULL) {
        ck_assert_msg(strstr(err.msg, needle2) != NULL, "error \"%s\" does not say \"%s\"",
                      err.msg, needle2);
    }
    remove_temp_dir(tmp);
}

#define TINY_VOCAB "{\"[UNK]\":0,\"[CLS]\":1,\"[SEP]\":2,\"a\":3}"

START_TEST(test_errors)
{
    char tmp[4096];
    emb_err err;
    emb_tokenizer *tok;

    /* neither file: the message names the directory */
    make_temp_dir(tmp, sizeof tmp);
    memset(&err, 0, sizeof err);
    tok = emb_tokenizer_load(tmp, &err);
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(err.msg, tmp) != NULL, "error \"%s\" does not name %s", err.msg, tmp);
    remove_temp_dir(tmp);

    memset(&err, 0, sizeof err);
    ck_assert_ptr_null(emb_tokenizer_load("/nonexistent/embedd-model", &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/embedd-model"));

    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "BPE",
                      "WordPiece");
    expect_load_error("{\"model\":{\"vocab\":" TINY_VOCAB "}}", "model.type", NULL);
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", ", "invalid JSON", NULL);
    expect_load_error("[1, 2]", "not a JSON object", NULL);
    expect_load_error("{\"normalizer\":{\"type\":\"Precompiled\"},"
                      "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                      "\"model\":{\"type\":\"WordPiece\",\"vocab\":" TINY_VOCAB "}}",
                      "Precompiled", "not supported");
    expect_load_error("{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":"
                      "[{\"type\":\"Lowercase\"},{\"type\":\"Replace\"}]},"
                      "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                      "\"model\":{\"type\":\"WordPiece\",\"vocab\":" TINY_VOCAB "}}",
                      "Replace", NULL);
    expect_load_error("{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\"},"
                      "\"model\":{\"type\":\"WordPiece\",\"vocab\":" TINY_VOCAB "}}",
                      "Metaspace", "BertPreTokenizer");
    expect_load_error("{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                      "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"<unk>\",\"vocab\":"
                      TINY_VOCAB "}}", "<unk>", NULL);
    expect_load_error("{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                      "\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"[UNK]\":\"zero\"}}}",
                      "[UNK]", NULL);

    /* vocab.txt without [UNK] */
    make_temp_dir(tmp, sizeof tmp);
    write_all(tmp, "vocab.txt", "[PAD]\na\nb\n", 10);
    memset(&err, 0, sizeof err);
    ck_assert_ptr_null(emb_tokenizer_load(tmp, &err));
    ck_assert_msg(strstr(err.msg, "[UNK]") != NULL, "error: %s", err.msg);
    remove_temp_dir(tmp);
}
END_TEST

/* vocab.txt on its own: defaults of BertTokenizer (lowercase, strip
 * accents, CJK), CRLF line ends, specials that are present. */
START_TEST(test_vocab_txt_defaults)
{
    static const char vocab[] = "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\ncafe\r\n##s\r\n!\r\n";
    char tmp[4096];
    int32_t ids[16];
    emb_tokenizer *tok;
    emb_special_tokens sp;
    int n;

    make_temp_dir(tmp, sizeof tmp);
    write_all(tmp, "vocab.txt", vocab, strlen(vocab));
    tok = load_dir(tmp);
    sp = emb_tokenizer_specials(tok);
    ck_assert_int_eq(sp.pad_id, 0);
    ck_assert_int_eq(sp.unk_id, 1);
    ck_assert_int_eq(sp.cls_id, 2);
    ck_assert_int_eq(sp.sep_id, 3);
    ck_assert_int_eq(sp.mask_id, -1);
    ck_assert_int_eq(emb_tokenizer_vocab_size(tok), 7);
    n = emb_tokenize(tok, "CAF\xc3\x89S! x [SEP]", 15, ids, 16);
    ck_assert_int_eq(n, 5);
    ck_assert_int_eq(ids[0], 4); /* cafe */
    ck_assert_int_eq(ids[1], 5); /* ##s */
    ck_assert_int_eq(ids[2], 6); /* ! */
    ck_assert_int_eq(ids[3], 1); /* x: [UNK] */
    ck_assert_int_eq(ids[4], 3); /* [SEP] */
    emb_tokenizer_free(tok);
    remove_temp_dir(tmp);
}
END_TEST

/* Added tokens with lstrip, rstrip, single_word and normalized; a cased
 * Sequence(NFC, BertNormalizer); max_input_chars_per_word 5. The ids are
 * what Hugging Face tokenizers gives for the same file. */
static const char tiny_json[] =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":0,\"content\":\"[UNK]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":1,\"content\":\"[CLS]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":2,\"content\":\"[SEP]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":16,\"content\":\"<ent>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":true,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":17,\"content\":\"New York\",\"single_word\":false,\"lstrip\":false,"
    "\"rstrip\":false,\"normalized\":true,\"special\":false},"
    "{\"id\":18,\"content\":\"zz\",\"single_word\":true,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":false},"
    "{\"id\":19,\"content\":\"Cafe\\u0301\",\"single_word\":false,\"lstrip\":false,"
    "\"rstrip\":false,\"normalized\":true,\"special\":false}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
    "{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,"
    "\"strip_accents\":false,\"lowercase\":false}]},"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"post_processor\":null,"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\","
    "\"continuing_subword_prefix\":\"##\",\"max_input_chars_per_word\":5,\"vocab\":{"
    "\"[UNK]\":0,\"[CLS]\":1,\"[SEP]\":2,\"[PAD]\":3,\"[MASK]\":4,\"a\":5,\"b\":6,\"##b\":7,"
    "\"ab\":8,\"new\":9,\"york\":10,\"!\":11,\"x\":12,\"##x\":13,\"##a\":14,\"\\u00e9\":15}}}";

static const golden tiny_table[] = {
    { "ab ab!", 6, { 8, 8, 11, -1 } },
    { "abab", 4, { 8, 14, 7, -1 } },       /* ab ##a ##b */
    { "ababab", 6, { 0, -1 } },            /* 6 characters > 5 */
    { "ababa", 5, { 8, 14, 7, 14, -1 } },
    { "e\xcc\x81", 3, { 15, -1 } },        /* NFC: e + U+0301 -> U+00E9 */
    { "x <ent> ab", 10, { 12, 16, 8, -1 } },
    { "x<ent>ab", 8, { 12, 16, 8, -1 } },
    { "a  <ent>  b", 11, { 5, 16, 6, -1 } },
    { "New York!", 9, { 17, 11, -1 } },    /* normalized added token */
    { "new York", 8, { 9, 0, -1 } },       /* cased: no match */
    { "zz", 2, { 18, -1 } },
    { "azz zz!", 7, { 0, 18, 11, -1 } },   /* single_word: not inside azz */
    { "[SEP]ab", 7, { 2, 8, -1 } },
    { "Ab", 2, { 0, -1 } },
    { "b\xc3\xa9" "a", 4, { 0, -1 } },
    { "Caf\xc3\xa9!", 6, { 19, 11, -1 } }, /* the pattern is normalized (NFC) too */
    { "Cafe\xcc\x81 x", 8, { 19, 12, -1 } },
    { "cafe", 4, { 0, -1 } },
};

START_TEST(test_tiny_tokenizer_json)
{
    char tmp[4096];
    emb_err err;
    emb_tokenizer *tok = load_json_text(tiny_json, &err, tmp, sizeof tmp);
    emb_special_tokens sp;
    emb_tokenizer_options o;
    int failures = 0;
    size_t i;

    ck_assert_msg(tok != NULL, "tiny tokenizer.json: %s", err.msg);
    for (i = 0; i < sizeof tiny_table / sizeof tiny_table[0]; i++) {
        failures += check_golden(tok, "tiny tokenizer.json", &tiny_table[i]);
    }
    ck_assert_int_eq(failures, 0);
    /* the added tokens are not in the vocabulary: ids 16 to 19 */
    ck_assert_int_eq(emb_tokenizer_vocab_size(tok), 20);
    ck_assert_str_eq(emb_tokenizer_token(tok, 16), "<ent>");
    ck_assert_int_eq(emb_tokenizer_token_id(tok, "New York"), 17);
    sp = emb_tokenizer_specials(tok);
    ck_assert_int_eq(sp.pad_id, 3);
    ck_assert_int_eq(sp.mask_id, 4);
    o = emb_tokenizer_get_options(tok);
    ck_assert_int_eq(o.lowercase, 0);
    ck_assert_int_eq(o.strip_accents, 0);
    ck_assert_int_eq(o.max_input_chars_per_word, 5);
    emb_tokenizer_free(tok);
    remove_temp_dir(tmp);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* 6. Robustness: random bytes                                            */
/* ---------------------------------------------------------------------- */

static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Random bytes that are often almost UTF-8: ASCII, controls, stray
 * continuation and lead bytes, and whole characters from anywhere. */
static size_t random_text(uint32_t *rng, char *out, size_t len)
{
    size_t i = 0;

    while (i < len) {
        uint32_t kind = rng_next(rng) % 10;
        uint32_t r = rng_next(rng);
        if (kind < 4) {
            out[i++] = (char)(0x20 + r % 0x5f);
        } else if (kind == 4) {
            out[i++] = (char)(r % 0x20);
        } else if (kind == 5) {
            out[i++] = (char)(0x80 + r % 0x40);
        } else if (kind == 6) {
            out[i++] = (char)(0xC0 + r % 0x40);
        } else if (len - i >= 4) {
            uint32_t c = kind == 7 ? 0x80 + r % 0x780 : kind == 8 ? 0x800 + r % 0xF800
                                                                  : 0x10000 + r % 0x100000;
            if (c < 0x800) {
                out[i++] = (char)(0xC0 | (c >> 6));
            } else if (c < 0x10000) {
                out[i++] = (char)(0xE0 | (c >> 12));
                out[i++] = (char)(0x80 | ((c >> 6) & 0x3F));
            } else {
                out[i++] = (char)(0xF0 | (c >> 18));
                out[i++] = (char)(0x80 | ((c >> 12) & 0x3F));
                out[i++] = (char)(0x80 | ((c >> 6) & 0x3F));
            }
            out[i++] = (char)(0x80 | (c & 0x3F));
        } else {
            out[i++] = ' ';
        }
    }
    return len;
}

START_TEST(test_random_bytes)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(_i, tmp, sizeof tmp);
    emb_special_tokens sp = emb_tokenizer_specials(tok);
    int vocab = emb_tokenizer_vocab_size(tok);
    uint32_t rng = 0x9e3779b9u + (uint32_t)_i;
    int round;

    for (round = 0; round < 3000; round++) {
        char text[301];
        int32_t ids[1024];
        int32_t enc[16];
        size_t len = rng_next(&rng) % 301;
        int full = -1;
        int n;
        int m;
        int k;
        /* exactly len bytes, no terminator: an over-read shows under ASan */
        char *exact = malloc(len > 0 ? len : 1);
        ck_assert_ptr_nonnull(exact);
        random_text(&rng, text, len);
        memcpy(exact, text, len);
        if (round % 2 == 1) {
            emb_tokenizer_set_st_lowercase(tok, round % 4 == 1);
        }
        n = emb_tokenize(tok, exact, len, ids, 1024);
        ck_assert_int_ge(n, 0);
        ck_assert_int_le(n, 1024);
        for (k = 0; k < n; k++) {
            ck_assert_msg(ids[k] >= 0 && ids[k] < vocab, "id %d out of range", ids[k]);
        }
        ck_assert_int_eq(emb_tokenize(tok, exact, len, NULL, 0), n);
        m = emb_encode(tok, exact, len, 16, round % 3 == 0, enc, &full);
        ck_assert_int_eq(full, n + 2);
        ck_assert_int_eq(m, n + 2 < 16 ? n + 2 : 16);
        ck_assert_int_eq(enc[0], sp.cls_id);
        ck_assert_int_eq(enc[m - 1], sp.sep_id);
        free(exact);
    }
    unload_variant(tok, tmp);
}
END_TEST

/* ---------------------------------------------------------------------- */

/* ---------------------------------------------------------------------- */
/* Token spans (emb_token_spans): hand-checked byte offsets                */
/* ---------------------------------------------------------------------- */

typedef struct span_case {
    const char *text;
    const char *slices;        /* each token's bytes of text, '|' between them */
} span_case;

static const span_case span_cases[] = {
    /* lowercasing and accent stripping keep pointing at the original bytes */
    {"Café au lait, naïve", "Café|au|lai|t|,|naïve"},
    /* CJK characters are words of their own (3 bytes each) */
    {"東京 x", "東|京|x"},
    /* "##" pieces point at their part of the word; punctuation alone */
    {"Hello!! unaffable", "Hello|!|!|una|ffa|ble"},
    /* a ligature that NFKD splits: the piece made from it covers it whole */
    {"ﬁne", "ﬁ|ne"},
    /* an emoji the vocabulary lacks: [UNK] over its word */
    {"a 🤗 b", "a|🤗|b"},
    /* leading spaces, an em dash (punctuation), accents inside "##" pieces */
    {"  ÉCOLE—ñandú  ", "ÉCOLE|—|ñan|dú"},
};

START_TEST(test_token_spans)
{
    char tmp[4096];
    emb_tokenizer *tok = load_variant(V_BGE, tmp, sizeof tmp);
    ck_assert_ptr_nonnull(tok);
    const span_case *c = &span_cases[_i];
    const size_t len = strlen(c->text);
    int32_t ids[64], start[64], stop[64];
    int n = emb_tokenize(tok, c->text, len, ids, 64);
    ck_assert_int_gt(n, 0);
    ck_assert_int_le(n, 64);
    ck_assert_int_eq(emb_token_spans(tok, c->text, len, ids, n, start, stop), 0);
    char got[512] = "";
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_msg(start[i] >= 0 && start[i] <= stop[i] && (size_t)stop[i] <= len,
                      "%s: token %d span %d..%d", c->text, i, start[i], stop[i]);
        /* spans never go backwards */
        if (i > 0)
            ck_assert_int_ge(start[i], stop[i - 1]);
        used += (size_t)snprintf(got + used, sizeof got - used, "%s%.*s", i > 0 ? "|" : "",
                                 (int)(stop[i] - start[i]), c->text + start[i]);
    }
    ck_assert_msg(strcmp(got, c->slices) == 0, "%s: spans give \"%s\", want \"%s\"", c->text,
                  got, c->slices);
    /* bad arguments are refused, not crashed on */
    ck_assert_int_eq(emb_token_spans(NULL, c->text, len, ids, n, start, stop), -1);
    unload_variant(tok, tmp);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_llama_vectors, 0, V_COUNT);
    tcase_add_loop_test(tc, test_golden_strings, 0, V_COUNT);
    tcase_add_test(tc, test_long_word);
    tcase_add_loop_test(tc, test_hf_fixture, 0, V_COUNT);
    tcase_add_test(tc, test_hf_fixture_cased_st_lowercase);
    tcase_add_test(tc, test_threads);
    tcase_add_loop_test(tc, test_special_ids, 0, V_COUNT);
    tcase_add_loop_test(tc, test_options, 0, V_COUNT);
    tcase_add_test(tc, test_encode_truncation);
    tcase_add_test(tc, test_long_text);
    tcase_add_loop_test(tc, test_token_spans, 0, (int)(sizeof span_cases / sizeof span_cases[0]));
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_vocab_txt_defaults);
    tcase_add_test(tc, test_tiny_tokenizer_json);
    tcase_add_loop_test(tc, test_random_bytes, 0, V_COUNT);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    Suite *s = tokenizer_suite();
    return run_suite(s);
}
