/* log.c: see log.h. */
#include "log.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The longest message; the rest of the arena is for values. */
#define MSG_MAX_BYTES 2048
/* What a cut value ends with. */
#define CUT_MARK "..."
/* Room kept free for a line's end ("\"}\n", "...") whatever comes before. */
#define TAIL_RESERVE 16

static atomic_int g_level = LOG_INFO;
static atomic_int g_format = LOG_TEXT;
static pthread_mutex_t g_write_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_setup(log_level level, log_format format)
{
    atomic_store(&g_level, (int)level);
    atomic_store(&g_format, (int)format);
}

int log_on(log_level level)
{
    return (int)level <= atomic_load_explicit(&g_level, memory_order_relaxed);
}

const char *log_level_name(log_level level)
{
    return level >= LOG_ERROR && level <= LOG_DEBUG ? level_names[level] : "?";
}

/* ---- building a line ------------------------------------------------------ */

static void vbegin(log_line *ln, log_level level, const char *fmt, va_list ap)
{
    ln->level = level;
    ln->n = 0;
    int n = vsnprintf(ln->arena, MSG_MAX_BYTES, fmt, ap);
    ln->msg_len = n < 0 ? 0 : n >= MSG_MAX_BYTES ? MSG_MAX_BYTES - 1 : (size_t)n;
    ln->used = ln->msg_len;
}

int log_begin(log_line *ln, log_level level, const char *fmt, ...)
{
    if (!log_on(level))
        return 0;
    va_list ap;
    va_start(ap, fmt);
    vbegin(ln, level, fmt, ap);
    va_end(ap);
    return 1;
}

void log_begin_always(log_line *ln, log_level label, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vbegin(ln, label, fmt, ap);
    va_end(ap);
}

/* Adds a field whose value is len bytes of s (cut to what the arena has
 * left; dropped when the line has all the fields it can hold). */
static void add_field(log_line *ln, const char *key, log_field_kind kind, const char *s,
                      size_t len)
{
    if (ln->n >= LOG_MAX_FIELDS)
        return;
    size_t room = sizeof ln->arena - ln->used;
    size_t at = ln->used, mark = 0;
    if (room == 0)
        return; /* a value before was cut: the fields after it are left out */
    int cut = len > room;
    if (cut) {
        /* cut before a character that does not fit, and say so */
        mark = room >= strlen(CUT_MARK) ? strlen(CUT_MARK) : 0;
        len = room - mark;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    memcpy(ln->arena + at, s, len);
    memcpy(ln->arena + at + len, CUT_MARK, mark);
    ln->fields[ln->n++] = (log_field){.key = key, .kind = kind, .at = at, .len = len + mark};
    ln->used = cut ? sizeof ln->arena : at + len;
}

void log_strn(log_line *ln, const char *key, const char *s, size_t len)
{
    add_field(ln, key, LOG_FIELD_STR, s != NULL ? s : "", s != NULL ? len : 0);
}

void log_str(log_line *ln, const char *key, const char *s)
{
    log_strn(ln, key, s, s != NULL ? strlen(s) : 0);
}

void log_int(log_line *ln, const char *key, long long v)
{
    char num[32];
    int n = snprintf(num, sizeof num, "%lld", v);
    add_field(ln, key, LOG_FIELD_RAW, num, (size_t)n);
}

void log_num(log_line *ln, const char *key, double v, int decimals)
{
    char num[64];
    int n;
    if (!isfinite(v))
        n = snprintf(num, sizeof num, "null"); /* JSON has no NaN */
    else if (decimals < 0)
        n = snprintf(num, sizeof num, "%.6g", v); /* six significant digits */
    else
        n = snprintf(num, sizeof num, "%.*f", decimals > 9 ? 9 : decimals, v);
    if (n < 0 || (size_t)n >= sizeof num)
        n = snprintf(num, sizeof num, "%g", v);
    add_field(ln, key, LOG_FIELD_RAW, num, (size_t)n);
}

void log_bool(log_line *ln, const char *key, int v)
{
    add_field(ln, key, LOG_FIELD_RAW, v ? "true" : "false", v ? 4 : 5);
}

/* ---- formatting ------------------------------------------------------------- */

/* An output buffer that never overflows: once a piece does not fit
 * (keeping TAIL_RESERVE free), full is set and values end in CUT_MARK. */
typedef struct writer {
    char *out;
    size_t cap, len;
    int full;
} writer;

static int fits(const writer *w, size_t n)
{
    return w->len + n + TAIL_RESERVE <= w->cap;
}

static void put(writer *w, const char *s, size_t n)
{
    if (!fits(w, n)) {
        w->full = 1;
        return;
    }
    memcpy(w->out + w->len, s, n);
    w->len += n;
}

static void puts_w(writer *w, const char *s)
{
    put(w, s, strlen(s));
}

/* The tail: written into the reserve, so it always fits. */
static void put_tail(writer *w, const char *s)
{
    size_t n = strlen(s);
    if (w->len + n < w->cap) {
        memcpy(w->out + w->len, s, n);
        w->len += n;
    }
}

/* The length of the well-formed UTF-8 sequence at s (n bytes left), or 0:
 * no overlongs, no surrogates, nothing past U+10FFFF (RFC 3629). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return 0;
    if (n < len)
        return 0;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F; /* not a surrogate */
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    }
    return len;
}

/* One unit of s escaped for JSON into tmp; returns its length and sets
 * *used to the bytes of s it took. */
static size_t esc_json_unit(const unsigned char *s, size_t n, char tmp[16], size_t *used)
{
    unsigned char c = s[0];
    *used = 1;
    switch (c) {
    case '"': return (size_t)snprintf(tmp, 16, "\\\"");
    case '\\': return (size_t)snprintf(tmp, 16, "\\\\");
    case '\n': return (size_t)snprintf(tmp, 16, "\\n");
    case '\r': return (size_t)snprintf(tmp, 16, "\\r");
    case '\t': return (size_t)snprintf(tmp, 16, "\\t");
    case '\b': return (size_t)snprintf(tmp, 16, "\\b");
    case '\f': return (size_t)snprintf(tmp, 16, "\\f");
    default: break;
    }
    if (c < 0x20 || c == 0x7F)
        return (size_t)snprintf(tmp, 16, "\\u%04x", c);
    size_t len = utf8_len(s, n);
    if (len == 0)
        return (size_t)snprintf(tmp, 16, "\\ufffd"); /* not UTF-8: the replacement character */
    memcpy(tmp, s, len);
    *used = len;
    return len;
}

/* The same for text: control bytes and bytes that are not UTF-8 as \n,
 * \xNN; in a quoted value also \" and \\. */
static size_t esc_text_unit(const unsigned char *s, size_t n, int quoted, char tmp[16],
                            size_t *used)
{
    unsigned char c = s[0];
    *used = 1;
    if (quoted && (c == '"' || c == '\\'))
        return (size_t)snprintf(tmp, 16, "\\%c", c);
    if (c == '\n')
        return (size_t)snprintf(tmp, 16, "\\n");
    if (c == '\r')
        return (size_t)snprintf(tmp, 16, "\\r");
    if (c == '\t')
        return (size_t)snprintf(tmp, 16, "\\t");
    if (c < 0x20 || c == 0x7F)
        return (size_t)snprintf(tmp, 16, "\\x%02x", c);
    size_t len = utf8_len(s, n);
    if (len == 0)
        return (size_t)snprintf(tmp, 16, "\\x%02x", c);
    memcpy(tmp, s, len);
    *used = len;
    return len;
}

/* Writes s escaped, unit by unit; a unit that does not fit ends the
 * value with CUT_MARK (so a cut never splits a character or an escape). */
static void put_escaped(writer *w, const char *s, size_t n, log_format format, int quoted)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n && !w->full) {
        char tmp[16];
        size_t used;
        size_t len = format == LOG_JSON ? esc_json_unit(p + i, n - i, tmp, &used)
                                        : esc_text_unit(p + i, n - i, quoted, tmp, &used);
        if (!fits(w, len + strlen(CUT_MARK))) {
            put_tail(w, CUT_MARK);
            w->full = 1;
            return;
        }
        put(w, tmp, len);
        i += used;
    }
}

/* A text value needs quotes when it is empty or holds a space, quote,
 * '=', backslash, control byte or a byte that is not UTF-8. */
static int text_needs_quotes(const char *s, size_t n)
{
    if (n == 0)
        return 1;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c <= 0x20 || c == '"' || c == '=' || c == '\\' || c == 0x7F)
            return 1;
        size_t len = utf8_len(p + i, n - i);
        if (len == 0)
            return 1;
        i += len;
    }
    return 0;
}

static void format_time(long long t_ms, char out[32])
{
    time_t secs = (time_t)(t_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char day[24];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03dZ", day, (int)(t_ms % 1000));
}

static void format_json(const log_line *ln, const char *when, writer *w)
{
    puts_w(w, "{\"time\":\"");
    puts_w(w, when);
    puts_w(w, "\",\"level\":\"");
    puts_w(w, log_level_name(ln->level));
    puts_w(w, "\",\"msg\":\"");
    put_escaped(w, ln->arena, ln->msg_len, LOG_JSON, 1);
    put_tail(w, "\"");
    for (int i = 0; i < ln->n && !w->full; i++) {
        const log_field *f = &ln->fields[i];
        /* a field is written whole or not at all, except a cut string */
        size_t want = strlen(f->key) + 6 + (f->kind == LOG_FIELD_RAW ? f->len : 8);
        if (!fits(w, want)) {
            w->full = 1;
            break;
        }
        puts_w(w, ",\"");
        puts_w(w, f->key);
        puts_w(w, "\":");
        if (f->kind == LOG_FIELD_RAW) {
            put(w, ln->arena + f->at, f->len);
        } else {
            puts_w(w, "\"");
            put_escaped(w, ln->arena + f->at, f->len, LOG_JSON, 1);
            put_tail(w, "\"");
        }
    }
    put_tail(w, "}\n");
}

static void format_text(const log_line *ln, const char *when, writer *w)
{
    puts_w(w, when);
    puts_w(w, " ");
    puts_w(w, log_level_name(ln->level));
    puts_w(w, " ");
    put_escaped(w, ln->arena, ln->msg_len, LOG_TEXT, 0);
    for (int i = 0; i < ln->n && !w->full; i++) {
        const log_field *f = &ln->fields[i];
        const char *v = ln->arena + f->at;
        size_t want = strlen(f->key) + 4 + (f->kind == LOG_FIELD_RAW ? f->len : 8);
        if (!fits(w, want)) {
            w->full = 1;
            break;
        }
        puts_w(w, " ");
        puts_w(w, f->key);
        puts_w(w, "=");
        int quoted = f->kind == LOG_FIELD_STR && text_needs_quotes(v, f->len);
        if (quoted)
            puts_w(w, "\"");
        put_escaped(w, v, f->len, LOG_TEXT, quoted);
        if (quoted)
            put_tail(w, "\"");
    }
    put_tail(w, "\n");
}

size_t log_format_line(const log_line *ln, log_format format, long long t_ms, char *out,
                       size_t cap)
{
    if (cap < 2 * TAIL_RESERVE) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    char when[32];
    format_time(t_ms, when);
    writer w = {.out = out, .cap = cap - 1, .len = 0, .full = 0}; /* - 1: the NUL */
    if (format == LOG_JSON)
        format_json(ln, when, &w);
    else
        format_text(ln, when, &w);
    out[w.len] = '\0';
    return w.len;
}

/* ---- writing ---------------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One write per line under the lock: lines of different threads never
 * mix, even past PIPE_BUF or on a partial write. */
static void write_all(const char *p, size_t n)
{
    pthread_mutex_lock(&g_write_lock);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        n -= (size_t)w;
    }
    pthread_mutex_unlock(&g_write_lock);
}

void log_end(log_line *ln)
{
    char out[LOG_LINE_BYTES];
    size_t len = log_format_line(ln, (log_format)atomic_load(&g_format), now_ms(), out,
                                 sizeof out);
    write_all(out, len);
}

void log_msg(log_level level, const char *fmt, ...)
{
    if (!log_on(level))
        return;
    log_line ln;
    va_list ap;
    va_start(ap, fmt);
    vbegin(&ln, level, fmt, ap);
    va_end(ap);
    log_end(&ln);
}
