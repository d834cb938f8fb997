/* textfiles.h: the corpora of the offline commands (train, pretrain,
 * whiten): comma-separated lists of UTF-8 text files, one text per line. */
#ifndef EMBEDD_TEXTFILES_H
#define EMBEDD_TEXTFILES_H

#include <stddef.h>

/* Called with one line, trimmed of surrounding spaces and tabs and of its
 * line end, never empty (line[len] is not necessarily NUL). Returns 0 to go
 * on; anything else stops the walk. */
typedef int (*textfiles_line_fn)(const char *line, size_t len, void *ctx);

/* Calls fn on every non-blank line of each file of the comma-separated
 * list, in order. Returns 0; fn's nonzero return, which stops the walk; or
 * -1 after printing "embedd CMD: PATH: reason" when a file cannot be
 * opened or read. */
int textfiles_each_line(const char *files, const char *cmd, textfiles_line_fn fn, void *ctx);

#endif
