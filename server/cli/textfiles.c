/* textfiles.c: walking the lines of comma-separated text files. */
#include "textfiles.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static int each_line_of(const char *path, const char *cmd, textfiles_line_fn fn, void *ctx)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        fprintf(stderr, "embedd %s: %s: %s\n", cmd, path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0;
    while (rc == 0 && (got = getline(&line, &cap, fp)) >= 0) {
        size_t a = 0, b = (size_t)got;
        while (a < b && (line[a] == ' ' || line[a] == '\t'))
            a++;
        while (b > a && (line[b - 1] == '\n' || line[b - 1] == '\r' || line[b - 1] == ' ' ||
                         line[b - 1] == '\t'))
            b--;
        if (b > a)
            rc = fn(line + a, b - a, ctx);
    }
    if (rc == 0 && ferror(fp)) {
        fprintf(stderr, "embedd %s: %s: read error\n", cmd, path);
        rc = -1;
    }
    free(line);
    fclose(fp);
    return rc;
}

int textfiles_each_line(const char *files, const char *cmd, textfiles_line_fn fn, void *ctx)
{
    char *list = strdup(files);
    if (list == NULL) {
        fprintf(stderr, "embedd %s: out of memory\n", cmd);
        return -1;
    }
    int rc = 0;
    char *save = NULL;
    for (char *path = strtok_r(list, ",", &save); path != NULL && rc == 0;
         path = strtok_r(NULL, ",", &save))
        rc = each_line_of(path, cmd, fn, ctx);
    free(list);
    return rc;
}
