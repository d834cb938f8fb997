/* versions_archive.c: a saved version as one byte string and back (see
 * versions.h, versions_export), so that replicas can share versions
 * through their system of record. */
#include "versions.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/bytes.h"
#include "base/fileio.h"
#include "checkpoint.h"
#include "common/strbuf.h"

#define ARCHIVE_MAGIC "EMBV1\n"
#define ARCHIVE_MAX_FILES 256
#define ARCHIVE_MAX_PATH 512

static int pack_file(const char *path, const char *rel, strbuf *out, emb_err *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    }
    sb_put_u32(out, (uint32_t)strlen(rel));
    sb_append(out, rel, strlen(rel));
    sb_put_u64(out, (uint64_t)st.st_size);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        sb_append(out, buf, n);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return emb_fail_as(err, EMB_ERR_IO, "%s: read error", path);
    return out->failed ? emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory packing %s", rel) : 0;
}

/* Every regular file under dir/sub, depth first, in name order. */
static int pack_tree(const char *dir, const char *sub, strbuf *out, emb_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s", dir, sub[0] ? "/" : "", sub);
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (rc == 0 && strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
            char rel[ARCHIVE_MAX_PATH], full[4700];
            snprintf(rel, sizeof rel, "%s%s%s", sub, sub[0] ? "/" : "", name);
            snprintf(full, sizeof full, "%s/%s", dir, rel);
            struct stat st;
            if (stat(full, &st) != 0)
                rc = emb_fail_as(err, EMB_ERR_IO, "%s: %s", full, strerror(errno));
            else if (S_ISDIR(st.st_mode))
                rc = pack_tree(dir, rel, out, err);
            else if (S_ISREG(st.st_mode))
                rc = pack_file(full, rel, out, err);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int versions_export(versions *v, uint32_t id, strbuf *out, emb_err *err)
{
    const char *data = versions_data_dir(v);
    char dir[4096];
    struct stat st;
    if (data != NULL)
        snprintf(dir, sizeof dir, "%s/models/v%u", data, id);
    if (data == NULL || stat(dir, &st) != 0)
        return emb_fail_as(err, EMB_ERR_NOT_FOUND, "model version %u is not saved on disk", id);
    sb_append(out, ARCHIVE_MAGIC, strlen(ARCHIVE_MAGIC));
    return pack_tree(dir, "", out, err);
}

/* ---- import ---------------------------------------------------------------------- */

typedef struct reader {
    const unsigned char *p;
    size_t left;
} reader;

static int take(reader *r, void *dst, size_t n)
{
    if (r->left < n)
        return -1;
    if (dst != NULL)
        memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return 0;
}

static int take_u32(reader *r, uint32_t *x)
{
    unsigned char b[4];
    if (take(r, b, 4) != 0)
        return -1;
    *x = emb_get_u32(b);
    return 0;
}

static int take_u64(reader *r, uint64_t *x)
{
    unsigned char b[8];
    if (take(r, b, 8) != 0)
        return -1;
    *x = emb_get_u64(b);
    return 0;
}

/* A relative path of plain names: no "..", no leading "/", no empty part. */
static int safe_path(const char *p)
{
    if (p[0] == '\0' || p[0] == '/')
        return 0;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        s += n + (e != NULL);
        if (e != NULL && *s == '\0')
            return 0;
    }
    return 1;
}

/* Creates the directories of root/rel's parents. */
static int make_parents(const char *root, const char *rel, emb_err *err)
{
    char path[4200 + ARCHIVE_MAX_PATH + 2];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *s = path + strlen(root) + 1; (s = strchr(s, '/')) != NULL; s++) {
        *s = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return emb_fail_as(err, EMB_ERR_IO, "mkdir %s: %s", path, strerror(errno));
        *s = '/';
    }
    return 0;
}

static int unpack_file(reader *r, const char *stage, emb_err *err)
{
    uint32_t plen;
    uint64_t size;
    char rel[ARCHIVE_MAX_PATH + 1];
    if (take_u32(r, &plen) != 0 || plen == 0 || plen > ARCHIVE_MAX_PATH || take(r, rel, plen) != 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "version archive: bad file name");
    rel[plen] = '\0';
    if (strlen(rel) != plen || !safe_path(rel))
        return emb_fail_as(err, EMB_ERR_INVALID, "version archive: unsafe path `%s`", rel);
    if (take_u64(r, &size) != 0 || size > r->left)
        return emb_fail_as(err, EMB_ERR_INVALID, "version archive: %s is cut short", rel);
    if (make_parents(stage, rel, err) != 0)
        return -1;
    char path[4200 + ARCHIVE_MAX_PATH + 2];
    snprintf(path, sizeof path, "%s/%s", stage, rel);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    int rc = emb_write_all(fd, r->p, (size_t)size) == 0 && fsync(fd) == 0 ? 0 : -1;
    if (rc != 0)
        emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    close(fd);
    take(r, NULL, (size_t)size);
    return rc;
}

int versions_import(versions *v, uint32_t id, const void *data, size_t len, emb_err *err)
{
    const char *root = versions_data_dir(v);
    if (root == NULL)
        return emb_fail_as(err, EMB_ERR_INVALID, "model versions need a data directory");
    char dir[4096], stage[4200], final[4200];
    snprintf(dir, sizeof dir, "%s/models", root);
    snprintf(final, sizeof final, "%s/v%u", dir, id);
    struct stat st;
    if (stat(final, &st) == 0)
        return versions_keep(v, id, err);
    reader r = {data, len};
    if (take(&r, NULL, strlen(ARCHIVE_MAGIC)) != 0 ||
        memcmp(data, ARCHIVE_MAGIC, strlen(ARCHIVE_MAGIC)) != 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "version archive: not an embedd version");
    mkdir(dir, 0755);
    /* the same staging name versions_open cleans up after a crash */
    snprintf(stage, sizeof stage, "%s/v%u.tmp-%ld-stage", dir, id, (long)getpid());
    emb_err ignored;
    emb_remove_tree(stage, &ignored);
    if (mkdir(stage, 0755) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "mkdir %s: %s", stage, strerror(errno));
    int rc = 0;
    for (int files = 0; rc == 0 && r.left > 0; files++) {
        if (files == ARCHIVE_MAX_FILES)
            rc = emb_fail_as(err, EMB_ERR_INVALID, "version archive: too many files");
        else
            rc = unpack_file(&r, stage, err);
    }
    if (rc == 0 && rename(stage, final) != 0)
        rc = emb_fail_as(err, EMB_ERR_IO, "rename %s -> %s: %s", stage, final, strerror(errno));
    if (rc != 0) {
        emb_remove_tree(stage, &ignored);
        return -1;
    }
    if (emb_fsync_dir(dir, err) != 0)
        return -1;
    return versions_keep(v, id, err);
}
