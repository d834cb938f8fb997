/* fileio.c: see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int emb_fsync_dir(const char *dir, emb_err *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: open: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: fsync: %s", dir, strerror(saved));
    return 0;
}

/* Splits path into its directory ("." when there is none) and last name. */
static int split_path(const char *path, char *dir, size_t dir_cap, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash != NULL ? slash + 1 : path;
    int n;
    if (slash == NULL)
        n = snprintf(dir, dir_cap, ".");
    else if (slash == path)
        n = snprintf(dir, dir_cap, "/");
    else
        n = snprintf(dir, dir_cap, "%.*s", (int)(slash - path), path);
    return n < 0 || (size_t)n >= dir_cap ? -1 : 0;
}

int emb_fsync_parent(const char *path, emb_err *err)
{
    char dir[4096];
    const char *name;
    if (split_path(path, dir, sizeof dir, &name) != 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "%s: path too long", path);
    return emb_fsync_dir(dir, err);
}

/* ---- replace by rename ---------------------------------------------------- */

static void replace_release(emb_replace *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    if (r->own_dir && r->dir_fd >= 0)
        close(r->dir_fd);
    r->dir_fd = -1;
    r->own_dir = 0;
}

/* Fills r and creates the temp file; own: r closes dir_fd at the end. */
static int replace_open(emb_replace *r, int dir_fd, int own, const char *dir, const char *name,
                        unsigned mode, emb_err *err)
{
    r->fd = -1;
    r->dir_fd = dir_fd;
    r->own_dir = own;
    int n1 = snprintf(r->dir, sizeof r->dir, "%s", dir);
    int n2 = snprintf(r->name, sizeof r->name, "%s", name);
    int n3 = snprintf(r->tmp, sizeof r->tmp, "%s.tmp", name);
    if (n1 < 0 || (size_t)n1 >= sizeof r->dir || n2 < 0 || (size_t)n2 >= sizeof r->name ||
        n3 < 0 || (size_t)n3 >= sizeof r->tmp) {
        replace_release(r);
        return emb_fail_as(err, EMB_ERR_INVALID, "%s/%s: path too long", dir, name);
    }
    r->fd = openat(dir_fd, r->tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (r->fd >= 0 && mode != 0644 && fchmod(r->fd, (mode_t)mode) != 0) {
        int e = errno;
        close(r->fd);
        r->fd = -1;
        errno = e;
    }
    if (r->fd < 0) {
        int e = errno;
        replace_release(r);
        return emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", dir, r->tmp, strerror(e));
    }
    return 0;
}

int emb_replace_begin_at(emb_replace *r, int dir_fd, const char *dir, const char *name,
                         emb_err *err)
{
    return replace_open(r, dir_fd, 0, dir, name, 0644, err);
}

int emb_replace_begin_at_mode(emb_replace *r, int dir_fd, const char *dir, const char *name,
                              unsigned mode, emb_err *err)
{
    return replace_open(r, dir_fd, 0, dir, name, mode, err);
}

int emb_replace_begin(emb_replace *r, const char *path, emb_err *err)
{
    char dir[4096];
    const char *name;
    r->fd = -1;
    r->dir_fd = -1;
    r->own_dir = 0;
    if (split_path(path, dir, sizeof dir, &name) != 0 || name[0] == '\0')
        return emb_fail_as(err, EMB_ERR_INVALID, "%s: not a file path", path);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", dir, strerror(errno));
    return replace_open(r, dfd, 1, dir, name, 0644, err);
}

int emb_replace_commit(emb_replace *r, int *keep_fd, emb_err *err)
{
    if (fsync(r->fd) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: fsync: %s", r->dir, r->tmp, strerror(errno));
        goto fail;
    }
    if (renameat(r->dir_fd, r->tmp, r->dir_fd, r->name) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "rename %s/%s: %s", r->dir, r->tmp, strerror(errno));
        goto fail;
    }
    if (fsync(r->dir_fd) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "fsync %s: %s", r->dir, strerror(errno));
        replace_release(r);
        return -1;
    }
    if (keep_fd != NULL) {
        *keep_fd = r->fd;
        r->fd = -1;
    }
    replace_release(r);
    return 0;
fail:
    emb_replace_abort(r);
    return -1;
}

void emb_replace_abort(emb_replace *r)
{
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
        unlinkat(r->dir_fd, r->tmp, 0);
    }
    replace_release(r);
}

int emb_write_file_atomic(const char *path, const void *data, size_t n, emb_err *err)
{
    emb_replace r;
    if (emb_replace_begin(&r, path, err) != 0)
        return -1;
    if (emb_write_all(r.fd, data, n) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: write: %s", r.dir, r.tmp, strerror(errno));
        emb_replace_abort(&r);
        return -1;
    }
    return emb_replace_commit(&r, NULL, err);
}

int emb_commit_file(int fd, const char *tmp, const char *path, emb_err *err)
{
    int result = -1;
    if (fsync(fd) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
        close(fd);
        goto out;
    }
    if (close(fd) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s: close: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s: rename from %s: %s", path, tmp, strerror(errno));
        goto out;
    }
    if (emb_fsync_parent(path, err) != 0)
        goto out;
    result = 0;
out:
    if (result != 0)
        unlink(tmp);
    return result;
}
