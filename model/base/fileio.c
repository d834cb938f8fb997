#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int emb_write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int emb_fsync_dir(const char *dir, emb_err *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return emb_fail(err, "%s: open: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc != 0)
        return emb_fail(err, "%s: fsync: %s", dir, strerror(saved));
    return 0;
}

/* The directory part of path ("." when there is none). */
static char *parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int emb_pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

int emb_commit_file(int fd, const char *tmp, const char *path, emb_err *err)
{
    int result = -1;
    char *dir = NULL;
    if (fsync(fd) != 0) {
        emb_fail(err, "%s: fsync: %s", tmp, strerror(errno));
        close(fd);
        goto out;
    }
    if (close(fd) != 0) {
        emb_fail(err, "%s: close: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        emb_fail(err, "%s: rename from %s: %s", path, tmp, strerror(errno));
        goto out;
    }
    dir = parent_dir(path);
    if (dir == NULL) {
        emb_fail(err, "%s: out of memory", path);
        goto out;
    }
    if (emb_fsync_dir(dir, err) != 0)
        goto out;
    result = 0;
out:
    if (result != 0)
        unlink(tmp);
    free(dir);
    return result;
}
