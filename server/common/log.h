/* log.h: the server's log: one line per event on stderr, with a time
 * (ISO 8601 UTC, milliseconds), a level and a message, then named fields.
 *
 * Formats (log_setup; `serve --log-format`):
 *   text  2026-12-06T15:40:00.123Z info request method=GET path=/health status=200
 *         (a value with a space, quote, '=' or control byte is quoted and
 *         escaped, so that a line is always one line)
 *   json  {"time":"2026-12-06T15:40:00.123Z","level":"info","msg":"request",
 *         "method":"GET","path":"/health","status":200}
 *         (strings escaped per RFC 8259; bytes that are not UTF-8 become
 *         U+FFFD, so every line parses)
 *
 * Threads: any thread may log. A line is built on the caller's stack and
 * written with one write(2) under a mutex, so lines never interleave.
 * A line whose level is off costs one atomic load (log_on, or log_begin
 * returning 0); build nothing before checking it.
 *
 * Usage:
 *   log_line ln;
 *   if (log_begin(&ln, LOG_INFO, "published model version %u", id)) {
 *       log_int(&ln, "step", step);
 *       log_end(&ln);
 *   }
 * or, for a message alone, log_msg(LOG_WARN, "...", ...).
 *
 * A line holds at most LOG_MAX_FIELDS fields and LOG_LINE_BYTES bytes;
 * longer values are cut (at a UTF-8 boundary, ending in "...") and
 * further fields dropped, never the line's validity. */
#ifndef EMBEDD_LOG_H
#define EMBEDD_LOG_H

#include <stddef.h>

typedef enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 } log_level;
typedef enum { LOG_TEXT = 0, LOG_JSON = 1 } log_format;

#define LOG_MAX_FIELDS 32
#define LOG_LINE_BYTES 8192
#define LOG_ARENA_BYTES 6144

typedef enum { LOG_FIELD_STR, LOG_FIELD_RAW } log_field_kind;

typedef struct log_field {
    const char *key;           /* a literal: not copied, never escaped */
    log_field_kind kind;       /* STR: escaped and quoted; RAW: a number or true/false */
    size_t at, len;            /* the value in the line's arena */
} log_field;

/* One line being built; on the stack of the thread that logs it. */
typedef struct log_line {
    log_level level;
    int n;
    log_field fields[LOG_MAX_FIELDS];
    size_t used;               /* bytes of arena in use; arena[0, msg_len) is the message */
    size_t msg_len;
    char arena[LOG_ARENA_BYTES];
} log_line;

/* Sets the level (lines above it are dropped) and the format; before the
 * threads that log start (the default: info, text). */
void log_setup(log_level level, log_format format);
/* 1 when lines at this level are written. */
int log_on(log_level level);
/* "error", "warn", "info", "debug". */
const char *log_level_name(log_level level);

/* Starts a line with a printf message; 0 (nothing to do, no log_end)
 * when the level is off. */
int log_begin(log_line *ln, log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same, written whatever the level: only for the start line, which
 * names the bound port (scripts and tests read it with --port 0). */
void log_begin_always(log_line *ln, log_level label, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Fields, in the order given. s may be NULL (logged as ""). */
void log_str(log_line *ln, const char *key, const char *s);
void log_strn(log_line *ln, const char *key, const char *s, size_t len);
void log_int(log_line *ln, const char *key, long long v);
/* A number with `decimals` decimals, or six significant digits when
 * decimals < 0 (NaN and infinities: null, as JSON has no such numbers). */
void log_num(log_line *ln, const char *key, double v, int decimals);
void log_bool(log_line *ln, const char *key, int v);
/* Formats the line and writes it to stderr. */
void log_end(log_line *ln);
/* The formatted line (with its newline) in out, cap bytes at most
 * (LOG_LINE_BYTES fits any); its length. What log_end writes; the time is
 * t_ms (Unix milliseconds). For tests. */
size_t log_format_line(const log_line *ln, log_format format, long long t_ms, char *out,
                       size_t cap);

/* A line with a message alone. */
void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
