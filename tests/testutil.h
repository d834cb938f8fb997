/* testutil.h: small helpers shared by the Check suites (header-only). */
#ifndef EMBEDD_TESTUTIL_H
#define EMBEDD_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file; *len gets its size. NULL when it cannot be read. */
static inline char *tu_read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    if (buf != NULL) {
        buf[n] = '\0';
        if (len != NULL)
            *len = (size_t)n;
    }
    return buf;
}

static inline int tu_write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (fp == NULL)
        return -1;
    size_t w = fwrite(data, 1, len, fp);
    return (fclose(fp) == 0 && w == len) ? 0 : -1;
}

/* A fresh temporary directory (static buffer per call site is the caller's). */
static inline void tu_mkdtemp(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/embedd-test-XXXXXX");
    if (mkdtemp(out) == NULL)
        out[0] = '\0';
}

static inline int tu_run(const char *cmd)
{
    return system(cmd);
}

/* Path under the shared data set ($EMBEDD_SHARED_DATA, else ../shared/data). */
static inline void tu_shared_path(char *out, size_t cap, const char *rel)
{
    const char *base = getenv("EMBEDD_SHARED_DATA");
    snprintf(out, cap, "%s/%s", base != NULL ? base : "../shared/data", rel);
}

#endif
