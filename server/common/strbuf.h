/* strbuf.h: a growable string with a hard cap, for building responses.
 * Past the cap (or on allocation failure) it stops growing and remembers
 * the failure; callers check sb.failed once at the end. */
#ifndef EMBEDD_STRBUF_H
#define EMBEDD_STRBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct strbuf {
    char *buf;
    size_t len, cap, max;
    int failed;
} strbuf;

void sb_init(strbuf *sb, size_t max);
void sb_free(strbuf *sb);
/* Hands the buffer to the caller (NUL-terminated); the strbuf is reset. */
char *sb_take(strbuf *sb, size_t *len);

void sb_append(strbuf *sb, const char *s, size_t n);
void sb_puts(strbuf *sb, const char *s);
void sb_putc(strbuf *sb, char c);
/* Little-endian integers (the on-disk formats, model/base/bytes.h). */
void sb_put_u32(strbuf *sb, uint32_t v);
void sb_put_u64(strbuf *sb, uint64_t v);
void sb_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal, quotes included, with escapes. */
void sb_json_string(strbuf *sb, const char *s);
/* "[f,f,...]" with the shortest round-trip form of each float. */
void sb_json_floats(strbuf *sb, const float *v, int n);
/* Base64 (RFC 4648, padded) of n bytes. */
void sb_base64(strbuf *sb, const unsigned char *data, size_t n);

#endif
