/* jsoncheck.c: see jsoncheck.h. */
#include "jsoncheck.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- UTF-8 (RFC 3629, table 4 of Unicode's chapter 3) -------------------- */

/* Length of the well-formed sequence at p (p < end, *p >= 0x80), or 0 with
 * *why set. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end, const char **why)
{
    const unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* below: overlong */
        if (c == 0xED)
            hi = 0x9F; /* above: an encoded surrogate */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* below: overlong */
        if (c == 0xF4)
            hi = 0x8F; /* above: beyond U+10FFFF */
    } else {
        *why = c == 0xC0 || c == 0xC1 ? "overlong encoding"
               : c < 0xC0             ? "unexpected continuation byte"
                                      : "byte that never appears in UTF-8";
        return 0;
    }
    if ((size_t)(end - p) < n) {
        /* a truncated sequence, unless a byte before the end is already wrong */
        for (size_t k = 1; p + k < end; k++) {
            if (p[k] < (k == 1 ? lo : 0x80) || p[k] > (k == 1 ? hi : 0xBF))
                goto bad;
        }
        *why = "truncated sequence";
        return 0;
    }
    if (p[1] < lo || p[1] > hi)
        goto bad;
    for (size_t k = 2; k < n; k++) {
        if (p[k] < 0x80 || p[k] > 0xBF)
            goto bad;
    }
    return n;
bad:
    *why = c == 0xED && p + 1 < end && p[1] >= 0xA0 && p[1] <= 0xBF ? "encoded surrogate"
           : c == 0xF4 && p + 1 < end && p[1] >= 0x90 && p[1] <= 0xBF ? "code point above U+10FFFF"
           : (c == 0xE0 || c == 0xF0) && p + 1 < end && p[1] >= 0x80 && p[1] < lo
               ? "overlong encoding"
               : "invalid continuation byte";
    return 0;
}

json_fault_kind utf8_check(const char *s, size_t len, size_t *at)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        if (*p < 0x80) {
            if (*p == 0)
                goto nul;
            p++;
            continue;
        }
        if (p[0] == 0xC0 && p + 1 < end && p[1] == 0x80)
            goto nul; /* %00 as routes_unescape decodes it */
        const char *why = NULL;
        size_t n = utf8_seq(p, end, &why);
        if (n == 0) {
            if (at != NULL)
                *at = (size_t)(p - (const unsigned char *)s);
            return JSON_BAD_UTF8;
        }
        p += n;
    }
    return JSON_OK;
nul:
    if (at != NULL)
        *at = (size_t)(p - (const unsigned char *)s);
    return JSON_BAD_NUL;
}

void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    const unsigned char *end = p + strlen(s);
    while (p < end) {
        const char *why = NULL;
        size_t n = *p < 0x80 ? 1 : utf8_seq(p, end, &why);
        if (n == 0) {
            *p = '?';
            n = 1;
        }
        p += n;
    }
}

/* ---- the scan ------------------------------------------------------------- */

/* Containers deeper than this are checked but not named in faults. */
#define MAX_NAMED_DEPTH 16

typedef struct frame {
    char type;                 /* '{' or '[' */
    char expect_key;           /* object: the next string is a key */
    size_t key_at, key_len;    /* object: the raw bytes of the current key */
    long index;                /* array: the current element */
} frame;

typedef struct scan {
    const unsigned char *s, *end;
    frame frames[MAX_NAMED_DEPTH];
    size_t depth;              /* may exceed MAX_NAMED_DEPTH */
    json_fault *f;
} scan;

/* Writes the path of the value being scanned ("items[3].id") to f->field. */
static void name_field(const scan *sc)
{
    char *out = sc->f->field;
    const size_t cap = sizeof sc->f->field;
    size_t n = 0;
    out[0] = '\0';
    size_t depth = sc->depth < MAX_NAMED_DEPTH ? sc->depth : MAX_NAMED_DEPTH;
    for (size_t d = 0; d < depth && n + 48 < cap; d++) {
        const frame *fr = &sc->frames[d];
        if (fr->type == '[') {
            n += (size_t)snprintf(out + n, cap - n, "[%ld]", fr->index);
            continue;
        }
        if (fr->expect_key)
            break; /* inside a key, or between members */
        if (n > 0)
            out[n++] = '.';
        /* the raw key, short and printable: the message must stay valid UTF-8 */
        for (size_t k = 0; k < fr->key_len && k < 40; k++) {
            unsigned char c = sc->s[fr->key_at + k];
            out[n++] = c >= 0x20 && c < 0x7f && c != '`' ? (char)c : '?';
        }
        out[n] = '\0';
    }
    if (sc->depth > MAX_NAMED_DEPTH && n + 4 < cap)
        memcpy(out + n, "...", 4);
}

static json_fault_kind fault(scan *sc, const unsigned char *at, json_fault_kind kind,
                             const char *reason)
{
    sc->f->kind = kind;
    sc->f->offset = (size_t)(at - sc->s);
    sc->f->reason = reason;
    name_field(sc);
    return kind;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (c | 0x20) - 'a' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* Checks the escape at p (p[0] == '\\'); *next gets the byte after it. */
static json_fault_kind check_escape(scan *sc, const unsigned char *p, const unsigned char **next)
{
    if (p + 1 >= sc->end)
        return fault(sc, p, JSON_BAD_SYNTAX, "unterminated string");
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        *next = p + 2;
        return JSON_OK;
    case 'u':
        break;
    default:
        return fault(sc, p, JSON_BAD_SYNTAX, "invalid escape (only \\\" \\\\ \\/ \\b \\f \\n "
                                             "\\r \\t \\uXXXX)");
    }
    unsigned cu = 0, lo = 0;
    if (sc->end - p < 6 || hex4(p + 2, &cu) != 0)
        return fault(sc, p, JSON_BAD_SYNTAX, "\\u must be followed by four hex digits");
    if (cu == 0)
        return fault(sc, p, JSON_BAD_NUL, "\\u0000");
    if (cu >= 0xDC00 && cu <= 0xDFFF)
        return fault(sc, p, JSON_BAD_SYNTAX, "unpaired low surrogate \\uDC00-\\uDFFF");
    if (cu >= 0xD800 && cu <= 0xDBFF) {
        if (sc->end - p < 12 || p[6] != '\\' || p[7] != 'u' || hex4(p + 8, &lo) != 0 ||
            lo < 0xDC00 || lo > 0xDFFF)
            return fault(sc, p, JSON_BAD_SYNTAX, "unpaired high surrogate \\uD800-\\uDBFF");
        *next = p + 12;
        return JSON_OK;
    }
    *next = p + 6;
    return JSON_OK;
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Nonzero when some byte of x is below 0x20, '"', '\\' or >= 0x80: the
 * eight bytes are not all plain string characters. */
static inline uint64_t word_special(uint64_t x)
{
    uint64_t q = x ^ (ONES * '"'), b = x ^ (ONES * '\\');
    uint64_t below = (x - ONES * 0x20) & ~x;
    uint64_t quote = (q - ONES) & ~q;
    uint64_t bslash = (b - ONES) & ~b;
    return (below | quote | bslash | x) & HIGHS;
}

/* Scans a string whose opening quote is at p; *next gets the byte after
 * its closing quote. */
static json_fault_kind check_string(scan *sc, const unsigned char *p, const unsigned char **next)
{
    const unsigned char *end = sc->end;
    p++;
    for (;;) {
        /* the common case: eight plain ASCII characters at a time */
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (word_special(x) != 0)
                break;
            p += 8;
        }
        if (p >= end)
            return fault(sc, p, JSON_BAD_SYNTAX, "unterminated string");
        unsigned char c = *p;
        if (c >= 0x80) {
            /* a run of non-ASCII characters; the common 2- and 3-byte forms
             * inline (E0 and ED have narrower second bytes: utf8_seq) */
            do {
                c = *p;
                if (c >= 0xC2 && c <= 0xDF && end - p >= 2 && (p[1] & 0xC0) == 0x80) {
                    p += 2;
                } else if (c >= 0xE1 && c <= 0xEF && c != 0xED && end - p >= 3 &&
                           (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
                    p += 3;
                } else {
                    const char *why = NULL;
                    size_t n = utf8_seq(p, end, &why);
                    if (n == 0)
                        return fault(sc, p, JSON_BAD_UTF8, why);
                    p += n;
                }
            } while (p < end && *p >= 0x80);
            continue;
        }
        if (c == '"') {
            *next = p + 1;
            return JSON_OK;
        }
        if (c == '\\') {
            json_fault_kind k = check_escape(sc, p, &p);
            if (k != JSON_OK)
                return k;
        } else if (c == 0) {
            return fault(sc, p, JSON_BAD_NUL, "a raw 0x00 byte");
        } else if (c < 0x20) {
            return fault(sc, p, JSON_BAD_SYNTAX,
                         "raw control character in a string (escape it: \\n, \\t, \\u001f)");
        } else {
            p++;
        }
    }
}

json_fault_kind json_check(const char *s, size_t len, json_fault *f)
{
    scan sc = {.s = (const unsigned char *)s, .end = (const unsigned char *)s + len, .f = f};
    memset(f, 0, sizeof *f);
    const unsigned char *p = sc.s;
    while (p < sc.end) {
        unsigned char c = *p;
        frame *top = sc.depth > 0 && sc.depth <= MAX_NAMED_DEPTH ? &sc.frames[sc.depth - 1]
                                                                 : NULL;
        switch (c) {
        case '"': {
            const unsigned char *next = NULL;
            json_fault_kind k = check_string(&sc, p, &next);
            if (k != JSON_OK)
                return k;
            if (top != NULL && top->type == '{' && top->expect_key) {
                top->key_at = (size_t)(p + 1 - sc.s);
                top->key_len = (size_t)(next - 1 - (p + 1));
            }
            p = next;
            continue;
        }
        case '{':
        case '[':
            if (sc.depth < MAX_NAMED_DEPTH) {
                frame *fr = &sc.frames[sc.depth];
                memset(fr, 0, sizeof *fr);
                fr->type = (char)c;
                fr->expect_key = c == '{';
            }
            sc.depth++;
            break;
        case '}':
        case ']':
            if (sc.depth > 0)
                sc.depth--;
            break;
        case ':':
            if (top != NULL)
                top->expect_key = 0;
            break;
        case ',':
            if (top != NULL && top->type == '{')
                top->expect_key = 1;
            else if (top != NULL)
                top->index++;
            break;
        case '\0':
            return fault(&sc, p, JSON_BAD_NUL, "a raw 0x00 byte");
        default:
            if (c >= 0x80)
                return fault(&sc, p, JSON_BAD_SYNTAX, "non-ASCII byte outside a string");
        }
        p++;
    }
    return JSON_OK;
}
