/* jsoncheck.h: a strict check of a request body's strings, run before
 * cJSON sees the bytes.
 *
 * cJSON is lenient where it matters for identity: it reads "\uZZZZ" and
 * "\u0000" as a NUL that cuts the string short, keeps lone surrogates and
 * invalid UTF-8 as they came, and takes raw control characters. A string
 * cut at a NUL becomes another item's id, so every request body goes
 * through json_check first (route_parse_body) and is refused at the first
 * fault, with its byte offset and the field it is in.
 *
 * What json_check enforces, in every string (keys included):
 *   - RFC 8259 escapes only: \" \\ \/ \b \f \n \r \t \uXXXX;
 *   - \u escapes of surrogates come as a high-low pair;
 *   - no raw control character (< 0x20) and no raw NUL;
 *   - no \u0000: NUL is refused even escaped (C strings end there);
 *   - UTF-8 well formed per RFC 3629: no overlongs, no encoded
 *     surrogates (ED A0..BF), nothing above U+10FFFF, no truncated
 *     sequence.
 * Outside strings it only refuses NUL and bytes >= 0x80 (never valid JSON
 * there); the rest of the grammar is cJSON's to check.
 *
 * One linear pass, no allocation; depends on libc only (fuzzable alone). */
#ifndef EMBEDD_HTTP_JSONCHECK_H
#define EMBEDD_HTTP_JSONCHECK_H

#include <stddef.h>

typedef enum json_fault_kind {
    JSON_OK = 0,
    JSON_BAD_SYNTAX,           /* malformed JSON: escape, surrogate, control char, unterminated */
    JSON_BAD_NUL,              /* \u0000 or a raw NUL byte */
    JSON_BAD_UTF8,             /* invalid UTF-8 */
} json_fault_kind;

typedef struct json_fault {
    json_fault_kind kind;
    size_t offset;             /* byte of the body where the fault starts */
    const char *reason;        /* short, static: "encoded surrogate"; for NUL
                                * how it came: "\\u0000" or "a raw 0x00 byte" */
    char field[128];           /* "items[3].id", "" when not in a named field */
} json_fault;

/* Checks the len bytes at s. JSON_OK, or the first fault in *f. */
json_fault_kind json_check(const char *s, size_t len, json_fault *f);

/* Checks that s (len bytes) is well-formed UTF-8 without NUL. Returns
 * JSON_OK, JSON_BAD_NUL or JSON_BAD_UTF8, with the offending byte's
 * offset in *at (when not NULL). The overlong NUL C0 80, which the URL
 * decoder (routes_unescape) writes for %00, counts as JSON_BAD_NUL. */
json_fault_kind utf8_check(const char *s, size_t len, size_t *at);

/* Replaces, in the C string s, every byte that does not belong to a
 * well-formed UTF-8 sequence with '?': error messages that quote a path
 * or cut a client's string at a byte count stay valid UTF-8. */
void utf8_sanitize(char *s);

#endif
