/* collections.c: see collections.h for the files and the order of writes. */
#include "collections.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/fileio.h"
#include "store_internal.h"
#include "store_reembed.h"

#define CONFIG_NAME "collection.json"
#define TRASH_PREFIX ".trash-"

struct collection {
    char name[COLL_MAX_NAME + 1];
    store *st;
    int is_default;            /* borrowed store: never closed here */
    char *dir;                 /* DATA/collections/<name> (or its trash name); NULL: memory */
    atomic_int refs;           /* the table's reference and each collections_get's */
};

struct collections {
    pthread_rwlock_t rw;       /* guards cols and n */
    collection **cols;         /* (COLL_MAX_COUNT + 1), sorted by name */
    int n;
    char *root;                /* DATA/collections; NULL: memory */
    store_options so;
    unsigned long trash_seq;   /* for unique trash names; under rw */
};

int collections_name_check(const char *name, size_t len, emb_err *err)
{
    if (len == 0)
        return emb_fail_as(err, EMB_ERR_INVALID, "collection name must not be empty");
    if (len > COLL_MAX_NAME)
        return emb_fail_as(err, EMB_ERR_INVALID, "collection name is longer than %d bytes",
                           COLL_MAX_NAME);
    if (name[0] == '.')
        return emb_fail_as(err, EMB_ERR_INVALID, "collection name must not start with '.'");
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.';
        if (!ok)
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "collection name may only hold letters, digits, '_', '-' and '.'");
    }
    return 0;
}

/* ---- files ------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* rm -rf path; 0 or -1 (errno). */
static int remove_tree(const char *path)
{
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int write_config(const char *dir, const char *name, int dim, emb_err *err)
{
    char *path = path_join(dir, CONFIG_NAME);
    char text[512];
    int len = snprintf(text, sizeof text, "{\"name\":\"%s\",\"size\":%d,\"distance\":\"Cosine\"}\n",
                       name, dim); /* names are plain characters: no escaping needed */
    emb_replace r;
    int rc = -1;
    if (path == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return -1;
    }
    if (emb_replace_begin(&r, path, err) != 0)
        goto out;
    if (emb_write_all(r.fd, text, (size_t)len) != 0) {
        emb_fail_as(err, EMB_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        emb_replace_abort(&r);
        goto out;
    }
    rc = emb_replace_commit(&r, NULL, err);
out:
    free(path);
    return rc;
}

/* The dimension in dir's collection.json; 0 when it is missing or not a
 * config of that name. */
static int read_config(const char *dir, const char *name)
{
    char *path = path_join(dir, CONFIG_NAME);
    FILE *f = path != NULL ? fopen(path, "r") : NULL;
    free(path);
    if (f == NULL)
        return 0;
    char text[1024];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *j = cJSON_Parse(text);
    const cJSON *jn = cJSON_GetObjectItemCaseSensitive(j, "name");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(j, "size");
    int dim = 0;
    if (cJSON_IsString(jn) && strcmp(jn->valuestring, name) == 0 && cJSON_IsNumber(js) &&
        js->valuedouble >= 1 && js->valuedouble <= STORE_MAX_DIM)
        dim = (int)js->valuedouble;
    cJSON_Delete(j);
    return dim;
}

/* ---- the table ------------------------------------------------------------------ */

static collection *new_collection(const char *name, store *st, const char *dir, int is_default)
{
    collection *col = calloc(1, sizeof *col);
    if (col == NULL)
        return NULL;
    snprintf(col->name, sizeof col->name, "%s", name);
    col->st = st;
    col->is_default = is_default;
    col->dir = dir != NULL ? strdup(dir) : NULL;
    atomic_init(&col->refs, 1);
    return col;
}

/* The last reference is gone: close the store; a dropped collection's
 * files (already renamed to trash) go too. */
static void free_collection(collection *col, int remove_files)
{
    if (!col->is_default)
        store_close(col->st);
    if (remove_files && col->dir != NULL)
        remove_tree(col->dir);
    free(col->dir);
    free(col);
}

/* Index of name in the sorted table, or -(insert point) - 1. Caller holds rw. */
static int find(const collections *c, const char *name)
{
    int lo = 0, hi = c->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int cmp = strcmp(c->cols[mid]->name, name);
        if (cmp == 0)
            return mid;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -lo - 1;
}

static void insert_at(collections *c, int at, collection *col)
{
    memmove(&c->cols[at + 1], &c->cols[at], sizeof(collection *) * (size_t)(c->n - at));
    c->cols[at] = col;
    c->n++;
}

static store *open_store_at(const collections *c, const char *dir, int dim, emb_err *err)
{
    store_options so = c->so;
    store_recovery rec;
    so.dim = dim;
    so.dir = NULL;
    char *sdir = NULL;
    if (dir != NULL) {
        sdir = path_join(dir, "store");
        if (sdir == NULL) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            return NULL;
        }
        so.dir = sdir;
    }
    store *st = store_open(&so, &rec, err);
    free(sdir);
    return st;
}

/* Opens (or cleans up) the entries of root. */
static int open_existing(collections *c, char *report, size_t report_size, emb_err *err)
{
    DIR *d = opendir(c->root);
    if (d == NULL)
        return emb_fail_as(err, EMB_ERR_IO, "cannot read %s: %s", c->root, strerror(errno));
    int opened = 0, removed = 0, rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *dir = path_join(c->root, e->d_name);
        if (dir == NULL) {
            rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            break;
        }
        int dim = 0;
        int named = collections_name_check(e->d_name, strlen(e->d_name), NULL) == 0 &&
                    strcmp(e->d_name, COLL_DEFAULT_NAME) != 0;
        if (named)
            dim = read_config(dir, e->d_name);
        if (dim == 0) {
            /* a create or drop cut short, or a stranger: never committed */
            if (remove_tree(dir) == 0)
                removed++;
        } else if (c->n >= COLL_MAX_COUNT) {
            rc = emb_fail_as(err, EMB_ERR_INVALID, "more than %d collections in %s",
                             COLL_MAX_COUNT, c->root);
        } else {
            store *st = open_store_at(c, dir, dim, err);
            collection *col = st != NULL ? new_collection(e->d_name, st, dir, 0) : NULL;
            if (st == NULL) {
                char why[sizeof err->msg];
                snprintf(why, sizeof why, "%s", err->msg);
                rc = emb_fail_as(err, err->kind, "collection %s: %s", e->d_name, why);
            } else if (col == NULL) {
                store_close(st);
                rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            } else {
                insert_at(c, -find(c, col->name) - 1, col);
                opened++;
            }
        }
        free(dir);
    }
    closedir(d);
    if (removed > 0)
        fsync_dir(c->root);
    if (report != NULL)
        snprintf(report, report_size, "%d collection%s opened, %d unfinished removed", opened,
                 opened == 1 ? "" : "s", removed);
    return rc;
}

collections *collections_open(const collections_options *o, char *report, size_t report_size,
                              emb_err *err)
{
    collections *c = calloc(1, sizeof *c);
    if (c == NULL || (c->cols = calloc(COLL_MAX_COUNT + 1, sizeof(collection *))) == NULL) {
        free(c);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    pthread_rwlock_init(&c->rw, NULL);
    c->so = o->store_opts;
    if (report != NULL && report_size > 0)
        report[0] = '\0';
    if (o->default_store != NULL) {
        collection *def = new_collection(COLL_DEFAULT_NAME, o->default_store, NULL, 1);
        if (def == NULL) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            goto fail;
        }
        insert_at(c, 0, def);
    }
    if (o->data_dir == NULL)
        return c;
    c->root = path_join(o->data_dir, "collections");
    if (c->root == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    if (mkdir(c->root, 0755) != 0 && errno != EEXIST) {
        emb_fail_as(err, EMB_ERR_IO, "cannot create %s: %s", c->root, strerror(errno));
        goto fail;
    }
    if (open_existing(c, report, report_size, err) != 0)
        goto fail;
    return c;
fail:
    collections_close(c, 0);
    return NULL;
}

void collections_close(collections *c, int snapshot)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->n; i++) {
        collection *col = c->cols[i];
        if (!col->is_default && snapshot && c->root != NULL)
            store_snapshot(col->st, NULL);
        /* every request is answered by now: the table's reference is the last */
        free_collection(col, 0);
    }
    pthread_rwlock_destroy(&c->rw);
    free(c->cols);
    free(c->root);
    free(c);
}

int collections_create(collections *c, const char *name, int dim, emb_err *err)
{
    if (collections_name_check(name, strlen(name), err) != 0)
        return -1;
    if (dim < 1 || dim > STORE_MAX_DIM)
        return emb_fail_as(err, EMB_ERR_INVALID, "vector size must be in 1..%d", STORE_MAX_DIM);
    pthread_rwlock_wrlock(&c->rw);
    char *dir = NULL;
    store *st = NULL;
    int rc = -1;
    int at = find(c, name);
    if (at >= 0) {
        emb_fail_as(err, EMB_ERR_CONFLICT, "Collection `%s` already exists!", name);
        goto out;
    }
    if (c->n >= COLL_MAX_COUNT) {
        emb_fail_as(err, EMB_ERR_CONFLICT, "there are already %d collections, the most allowed",
                    COLL_MAX_COUNT);
        goto out;
    }
    if (c->root != NULL) {
        dir = path_join(c->root, name);
        if (dir == NULL) {
            emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
            goto out;
        }
        remove_tree(dir); /* an uncommitted leftover of the same name; usually none */
        if (mkdir(dir, 0755) != 0) {
            emb_fail_as(err, EMB_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
            goto out;
        }
    }
    st = open_store_at(c, dir, dim, err);
    if (st == NULL)
        goto undo;
    if (dir != NULL && write_config(dir, name, dim, err) != 0)
        goto undo;
    collection *col = new_collection(name, st, dir, 0);
    if (col == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        goto undo;
    }
    insert_at(c, -at - 1, col);
    rc = 0;
    goto out;
undo:
    if (st != NULL)
        store_close(st);
    if (dir != NULL)
        remove_tree(dir);
out:
    pthread_rwlock_unlock(&c->rw);
    free(dir);
    return rc;
}

int collections_drop(collections *c, const char *name, emb_err *err)
{
    pthread_rwlock_wrlock(&c->rw);
    int at = find(c, name);
    int rc = 0;
    if (at < 0)
        goto out;
    collection *col = c->cols[at];
    if (col->is_default) {
        rc = emb_fail_as(err, EMB_ERR_CONFLICT,
                         "the collection `default` is the server's item store and cannot be "
                         "deleted (use /items/delete)");
        goto out;
    }
    if (col->dir != NULL) {
        /* the commit mark goes first: after this, a crash leaves a leftover */
        char *cfg = path_join(col->dir, CONFIG_NAME);
        if (cfg == NULL || (unlink(cfg) != 0 && errno != ENOENT) || fsync_dir(col->dir) != 0) {
            rc = emb_fail_as(err, EMB_ERR_IO, "cannot delete collection %s: %s", name,
                             strerror(errno));
            free(cfg);
            goto out;
        }
        free(cfg);
        /* out of the way, so that the name can be created again at once */
        char trash[COLL_MAX_NAME + 64];
        snprintf(trash, sizeof trash, TRASH_PREFIX "%lu-%s", ++c->trash_seq, name);
        char *tdir = path_join(c->root, trash);
        if (tdir != NULL && rename(col->dir, tdir) == 0) {
            free(col->dir);
            col->dir = tdir;
            fsync_dir(c->root);
        } else {
            free(tdir);
        }
    }
    memmove(&c->cols[at], &c->cols[at + 1], sizeof(collection *) * (size_t)(c->n - at - 1));
    c->n--;
    rc = 1;
    if (atomic_fetch_sub(&col->refs, 1) == 1)
        free_collection(col, 1);
out:
    pthread_rwlock_unlock(&c->rw);
    return rc;
}

collection *collections_get(collections *c, const char *name)
{
    pthread_rwlock_rdlock(&c->rw);
    int at = find(c, name);
    collection *col = at >= 0 ? c->cols[at] : NULL;
    if (col != NULL)
        atomic_fetch_add(&col->refs, 1);
    pthread_rwlock_unlock(&c->rw);
    return col;
}

void collection_release(collections *c, collection *col)
{
    (void)c;
    if (col != NULL && atomic_fetch_sub(&col->refs, 1) == 1)
        free_collection(col, 1); /* dropped while in use: its files go now */
}

int collections_list(collections *c, char ***names, emb_err *err)
{
    pthread_rwlock_rdlock(&c->rw);
    size_t bytes = sizeof(char *) * (size_t)(c->n + 1);
    for (int i = 0; i < c->n; i++)
        bytes += strlen(c->cols[i]->name) + 1;
    char **out = malloc(bytes);
    int n = c->n;
    if (out != NULL) {
        char *at = (char *)(out + n + 1);
        for (int i = 0; i < n; i++) {
            out[i] = at;
            at = stpcpy(at, c->cols[i]->name) + 1;
        }
        out[n] = NULL;
    }
    pthread_rwlock_unlock(&c->rw);
    if (out == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    *names = out;
    return n;
}

void collections_totals(collections *c, long *n_collections, long *n_points)
{
    pthread_rwlock_rdlock(&c->rw);
    long points = 0;
    for (int i = 0; i < c->n; i++)
        points += store_count(c->cols[i]->st);
    *n_collections = c->n;
    *n_points = points;
    pthread_rwlock_unlock(&c->rw);
}

int collections_with_dim(collections *c, int dim, collection ***out, emb_err *err)
{
    pthread_rwlock_rdlock(&c->rw);
    collection **list = malloc(sizeof *list * (size_t)(c->n + 1));
    int n = 0;
    for (int i = 0; list != NULL && i < c->n; i++) {
        if (store_dim(c->cols[i]->st) != dim)
            continue;
        atomic_fetch_add(&c->cols[i]->refs, 1);
        list[n++] = c->cols[i];
    }
    pthread_rwlock_unlock(&c->rw);
    if (list == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    *out = list;
    return n;
}

int collections_version_in_use(collections *c, uint32_t id)
{
    int used = 0;
    pthread_rwlock_rdlock(&c->rw);
    for (int i = 0; !used && i < c->n; i++) {
        store *s = c->cols[i]->st;
        used = store_vectors_version(s) == id || store_target_version(s) == id;
    }
    pthread_rwlock_unlock(&c->rw);
    return used;
}

store *collection_store(const collection *col)
{
    return col->st;
}

const char *collection_name(const collection *col)
{
    return col->name;
}

int collection_is_default(const collection *col)
{
    return col->is_default;
}

/* ---- filters over every row ------------------------------------------------------ */

long collection_match(store *s, const store_filter *f, long max, store_id **ids, emb_err *err)
{
    pthread_rwlock_rdlock(&s->rw);
    long n = 0;
    size_t strbytes = 0;
    for (long r = 0; r < s->count; r++) {
        const store_row *row = &s->rows[r];
        if (f != NULL && !store_filter_match(f, row))
            continue;
        if (n >= max)
            break;
        n++;
        if (row->id_kind == STORE_ID_STR)
            strbytes += row->id_len + 1;
    }
    if (ids == NULL) {
        pthread_rwlock_unlock(&s->rw);
        return n;
    }
    store_id *out = malloc(sizeof(store_id) * (size_t)(n + 1) + strbytes);
    if (out == NULL) {
        pthread_rwlock_unlock(&s->rw);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    char *at = (char *)(out + n + 1);
    long k = 0;
    for (long r = 0; r < s->count && k < n; r++) {
        const store_row *row = &s->rows[r];
        if (f != NULL && !store_filter_match(f, row))
            continue;
        out[k] = store_row_id(row);
        if (row->id_kind == STORE_ID_STR) {
            memcpy(at, row->id_str, row->id_len);
            at[row->id_len] = '\0';
            out[k].str = at;
            at += row->id_len + 1;
        }
        k++;
    }
    pthread_rwlock_unlock(&s->rw);
    *ids = out;
    return n;
}
