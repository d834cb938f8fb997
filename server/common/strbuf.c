#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bytes.h"
#include "jsonfmt.h"

void sb_init(strbuf *sb, size_t max)
{
    sb->buf = NULL;
    sb->len = 0;
    sb->cap = 0;
    sb->max = max;
    sb->failed = 0;
}

void sb_free(strbuf *sb)
{
    free(sb->buf);
    sb_init(sb, sb->max);
}

char *sb_take(strbuf *sb, size_t *len)
{
    if (sb->buf == NULL && !sb->failed) {
        sb_append(sb, "", 0);
    }
    char *b = sb->buf;
    if (len != NULL)
        *len = sb->len;
    sb->buf = NULL;
    sb->len = 0;
    sb->cap = 0;
    return b;
}

/* Makes room for n more bytes plus a NUL. */
static int sb_reserve(strbuf *sb, size_t n)
{
    if (sb->failed)
        return -1;
    if (sb->len + n + 1 <= sb->cap)
        return 0;
    if (sb->len + n + 1 > sb->max) {
        sb->failed = 1;
        return -1;
    }
    size_t want = sb->cap < 256 ? 256 : sb->cap * 2;
    while (want < sb->len + n + 1)
        want *= 2;
    if (want > sb->max)
        want = sb->max;
    char *p = realloc(sb->buf, want);
    if (p == NULL) {
        sb->failed = 1;
        return -1;
    }
    sb->buf = p;
    sb->cap = want;
    return 0;
}

void sb_append(strbuf *sb, const char *s, size_t n)
{
    if (sb_reserve(sb, n) != 0)
        return;
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

void sb_puts(strbuf *sb, const char *s)
{
    sb_append(sb, s, strlen(s));
}

void sb_putc(strbuf *sb, char c)
{
    sb_append(sb, &c, 1);
}

void sb_printf(strbuf *sb, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        sb_append(sb, small, (size_t)n);
        return;
    }
    if (sb_reserve(sb, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

void sb_json_string(strbuf *sb, const char *s)
{
    sb_putc(sb, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        switch (*p) {
        case '"':
            sb_append(sb, "\\\"", 2);
            break;
        case '\\':
            sb_append(sb, "\\\\", 2);
            break;
        case '\n':
            sb_append(sb, "\\n", 2);
            break;
        case '\r':
            sb_append(sb, "\\r", 2);
            break;
        case '\t':
            sb_append(sb, "\\t", 2);
            break;
        default:
            if (*p < 0x20)
                sb_printf(sb, "\\u%04x", *p);
            else
                sb_putc(sb, (char)*p);
        }
    }
    sb_putc(sb, '"');
}

void sb_json_floats(strbuf *sb, const float *v, int n)
{
    char num[32];
    if (sb_reserve(sb, (size_t)n * 16 + 2) != 0)
        return;
    sb_putc(sb, '[');
    for (int i = 0; i < n; i++) {
        if (i > 0)
            sb_putc(sb, ',');
        int len = json_format_float(num, v[i]);
        sb_append(sb, num, (size_t)len);
    }
    sb_putc(sb, ']');
}

void sb_base64(strbuf *sb, const unsigned char *data, size_t n)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (sb_reserve(sb, (n + 2) / 3 * 4) != 0)
        return;
    char *o = sb->buf + sb->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8 | data[i + 2];
        *o++ = alphabet[v >> 18 & 63];
        *o++ = alphabet[v >> 12 & 63];
        *o++ = alphabet[v >> 6 & 63];
        *o++ = alphabet[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)data[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)data[i + 1] << 8;
        *o++ = alphabet[v >> 18 & 63];
        *o++ = alphabet[v >> 12 & 63];
        *o++ = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    sb->len = (size_t)(o - sb->buf);
    sb->buf[sb->len] = '\0';
}

void sb_put_u32(strbuf *sb, uint32_t v)
{
    unsigned char b[4];
    emb_put_u32(b, v);
    sb_append(sb, (const char *)b, 4);
}

void sb_put_u64(strbuf *sb, uint64_t v)
{
    unsigned char b[8];
    emb_put_u64(b, v);
    sb_append(sb, (const char *)b, 8);
}
