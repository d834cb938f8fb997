/* versions.c: see versions.h. One mutex (lock) guards the list, the
 * event ring and what is known of each number; references are atomic so
 * that releasing is cheap. A second one (change) serialises hand-overs
 * (candidate, promote, rollback, align), so that the files on disk, the
 * hook's calls and the events follow the order of the changes. Nothing
 * slow (loading or saving a model) runs under either; deleting retired
 * directories runs under `change` only. */
#include "versions.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/crc32c.h"
#include "base/fileio.h"
#include "checkpoint.h"
#include "common/log.h"
#include "safetensors.h"

/* What is known of a number made or found this run, for the list. */
typedef struct version_info {
    uint32_t id;
    double created;           /* unix seconds; 0: unknown */
    uint32_t parent;          /* 0: unknown */
    char gate[160];           /* the gate's verdict; "": unknown */
} version_info;

struct versions {
    pthread_mutex_t lock;
    model_version *head;      /* newest first */
    model_version *current;
    uint32_t latest;
    uint32_t hold;            /* the store's version while it re-embeds (versions_align) */
    int (*in_use)(void *ctx, uint32_t id); /* a store searches id (versions_set_in_use) */
    void *in_use_ctx;
    int keep;                 /* servable versions, the current one included */
    versions_publish publish;
    version_info *known;      /* (n_known) */
    int n_known, cap_known;
    versions_event ring[VERSIONS_EVENTS];
    uint64_t seq;             /* the last event's */
    /* set at open, read-only after */
    char *data_dir;           /* NULL: nothing on disk */
    const char *base_dir;     /* borrowed */
    const emb_model *base;    /* borrowed; NULL for versions_new */
    emb_dtype save_dtype;     /* the loaded model's file precision */
    uint32_t broken[16];      /* saved versions that failed to load at open:
                                 never pruned, so their files stay for a look */
    int n_broken;
    /* under change */
    versions_hooks hooks;
    void (*listener)(void *ctx);
    void *listener_ctx;
    pthread_mutex_t change;   /* serialises hand-overs */
};

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static model_version *version_new(emb_model *model, uint32_t id)
{
    model_version *mv = calloc(1, sizeof *mv);
    if (mv == NULL)
        return NULL;
    mv->id = id;
    mv->model = model;
    atomic_init(&mv->refs, 1); /* the registry's */
    mv->published_at = unix_now();
    return mv;
}

static void version_unref(model_version *mv)
{
    if (atomic_fetch_sub(&mv->refs, 1) == 1) {
        emb_model_free(mv->model);
        free(mv);
    }
}

versions *versions_new(emb_model *model, uint32_t id, int keep)
{
    versions *v = calloc(1, sizeof *v);
    model_version *mv = version_new(model, id);
    if (v == NULL || mv == NULL) {
        free(v);
        free(mv);
        return NULL;
    }
    pthread_mutex_init(&v->lock, NULL);
    pthread_mutex_init(&v->change, NULL);
    v->head = v->current = mv;
    v->latest = id;
    v->keep = keep < 1 ? 1 : keep;
    v->save_dtype = EMB_DT_F32;
    return v;
}

void versions_free(versions *v)
{
    if (v == NULL)
        return;
    model_version *mv = v->head;
    while (mv != NULL) {
        model_version *next = mv->next;
        version_unref(mv);
        mv = next;
    }
    pthread_mutex_destroy(&v->lock);
    pthread_mutex_destroy(&v->change);
    free(v->known);
    free(v->data_dir);
    free(v);
}

model_version *versions_current(versions *v)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = v->current;
    atomic_fetch_add(&mv->refs, 1);
    pthread_mutex_unlock(&v->lock);
    return mv;
}

/* The version id in memory, or NULL; with the lock held. */
static model_version *find(versions *v, uint32_t id)
{
    model_version *mv = v->head;
    while (mv != NULL && mv->id != id)
        mv = mv->next;
    return mv;
}

static model_version *find_pending(versions *v)
{
    model_version *mv = v->head;
    while (mv != NULL && !mv->pending)
        mv = mv->next;
    return mv;
}

model_version *versions_get(versions *v, uint32_t id)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = find(v, id);
    if (mv != NULL)
        atomic_fetch_add(&mv->refs, 1);
    pthread_mutex_unlock(&v->lock);
    return mv;
}

void versions_release(versions *v, model_version *mv)
{
    (void)v;
    if (mv != NULL)
        version_unref(mv);
}

uint32_t versions_current_id(versions *v)
{
    pthread_mutex_lock(&v->lock);
    uint32_t id = v->current->id;
    pthread_mutex_unlock(&v->lock);
    return id;
}

uint32_t versions_latest_id(versions *v)
{
    pthread_mutex_lock(&v->lock);
    uint32_t id = v->latest;
    pthread_mutex_unlock(&v->lock);
    return id;
}

uint32_t versions_pending_id(versions *v)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = find_pending(v);
    uint32_t id = mv != NULL ? mv->id : 0;
    pthread_mutex_unlock(&v->lock);
    return id;
}

/* 1 when mv stays in memory whatever its age. */
static int always_kept(const versions *v, const model_version *mv)
{
    return mv == v->current || mv->pending || (v->hold != 0 && mv->id == v->hold);
}

/* 1 when a store still searches (or moves to) mv: kept beyond the window,
 * but, unlike always_kept, it takes its place in the window when it is in
 * it (so that keeping it never keeps an older one). */
static int in_use(const versions *v, const model_version *mv)
{
    return v->in_use != NULL && v->in_use(v->in_use_ctx, mv->id);
}

/* Drops the registry's reference to versions beyond the newest keep - 1
 * others (by number). Called with the lock held. */
static void trim(versions *v)
{
    model_version **link = &v->head;
    while (*link != NULL) {
        model_version *mv = *link;
        int newer = 0;
        for (model_version *o = v->head; o != NULL; o = o->next)
            newer += !always_kept(v, o) && o->id > mv->id;
        if (always_kept(v, mv) || newer < v->keep - 1 || in_use(v, mv)) {
            link = &mv->next;
            continue;
        }
        *link = mv->next;
        version_unref(mv);
    }
}

/* Puts mv in the list (the registry's reference); with the lock held. */
static void insert(versions *v, model_version *mv)
{
    mv->next = v->head;
    v->head = mv;
    if (mv->id > v->latest)
        v->latest = mv->id;
}

/* Takes mv out of the list and drops the registry's reference. */
static void unlink_version(versions *v, model_version *gone)
{
    for (model_version **link = &v->head; *link != NULL; link = &(*link)->next) {
        if (*link == gone) {
            *link = gone->next;
            version_unref(gone);
            return;
        }
    }
}

static int versions_add(versions *v, emb_model *model, uint32_t id)
{
    model_version *mv = version_new(model, id);
    if (mv == NULL)
        return -1;
    pthread_mutex_lock(&v->lock);
    insert(v, mv);
    trim(v);
    pthread_mutex_unlock(&v->lock);
    return 0;
}

int versions_list(versions *v, uint32_t *ids, int cap)
{
    pthread_mutex_lock(&v->lock);
    int n = 0;
    for (model_version *mv = v->head; mv != NULL && n < cap; mv = mv->next)
        ids[n++] = mv->id;
    pthread_mutex_unlock(&v->lock);
    return n;
}

void versions_set_hooks(versions *v, const versions_hooks *h)
{
    pthread_mutex_lock(&v->change);
    v->hooks = *h;
    pthread_mutex_unlock(&v->change);
}

void versions_set_publish(versions *v, versions_publish mode)
{
    pthread_mutex_lock(&v->lock);
    v->publish = mode;
    pthread_mutex_unlock(&v->lock);
}

versions_publish versions_get_publish(versions *v)
{
    pthread_mutex_lock(&v->lock);
    versions_publish mode = v->publish;
    pthread_mutex_unlock(&v->lock);
    return mode;
}

void versions_set_in_use(versions *v, int (*fn)(void *ctx, uint32_t id), void *ctx)
{
    pthread_mutex_lock(&v->lock);
    v->in_use = fn;
    v->in_use_ctx = ctx;
    pthread_mutex_unlock(&v->lock);
}

void versions_set_listener(versions *v, void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&v->change);
    v->listener = fn;
    v->listener_ctx = ctx;
    pthread_mutex_unlock(&v->change);
}

/* ---- what is known of each number, and events --------------------------------------- */

/* The record of id, made when missing; with the lock held. NULL when out
 * of memory (the list then lacks the details). */
static version_info *info_of(versions *v, uint32_t id)
{
    for (int i = 0; i < v->n_known; i++) {
        if (v->known[i].id == id)
            return &v->known[i];
    }
    if (v->n_known == v->cap_known) {
        int cap = v->cap_known > 0 ? 2 * v->cap_known : 16;
        version_info *k = realloc(v->known, sizeof *k * (size_t)cap);
        if (k == NULL)
            return NULL;
        v->known = k;
        v->cap_known = cap;
    }
    version_info *in = &v->known[v->n_known++];
    memset(in, 0, sizeof *in);
    in->id = id;
    return in;
}

static void note_info(versions *v, uint32_t id, double created, uint32_t parent,
                      const char *gate)
{
    pthread_mutex_lock(&v->lock);
    version_info *in = info_of(v, id);
    if (in != NULL) {
        if (created > 0)
            in->created = created;
        if (parent != 0)
            in->parent = parent;
        if (gate != NULL)
            snprintf(in->gate, sizeof in->gate, "%s", gate);
    }
    pthread_mutex_unlock(&v->lock);
}

int versions_record(versions *v, uint32_t id, double *created, uint32_t *parent, char *gate,
                    size_t cap)
{
    int found = 0;
    pthread_mutex_lock(&v->lock);
    for (int i = 0; i < v->n_known && !found; i++) {
        if (v->known[i].id != id)
            continue;
        found = 1;
        *created = v->known[i].created;
        *parent = v->known[i].parent;
        snprintf(gate, cap, "%s", v->known[i].gate);
    }
    pthread_mutex_unlock(&v->lock);
    if (!found) {
        *created = 0;
        *parent = 0;
        if (cap > 0)
            gate[0] = '\0';
    }
    return found;
}

void versions_note(versions *v, uint32_t id, double created, uint32_t parent, const char *gate)
{
    note_info(v, id, created, parent, gate != NULL && gate[0] != '\0' ? gate : NULL);
}

/* Records an event and tells the listener; with v->change held. */
static void emit(versions *v, versions_event_kind kind, uint32_t id, uint32_t previous)
{
    pthread_mutex_lock(&v->lock);
    versions_event *e = &v->ring[v->seq % VERSIONS_EVENTS];
    e->seq = ++v->seq;
    e->kind = kind;
    e->id = id;
    e->previous = previous;
    e->at = unix_now();
    pthread_mutex_unlock(&v->lock);
    if (v->listener != NULL)
        v->listener(v->listener_ctx);
}

int versions_events(versions *v, uint64_t after, versions_event *out, int cap, uint64_t *last)
{
    pthread_mutex_lock(&v->lock);
    uint64_t first = v->seq > VERSIONS_EVENTS ? v->seq - VERSIONS_EVENTS + 1 : 1;
    if (after + 1 > first)
        first = after + 1;
    int n = 0;
    for (uint64_t s = first; s <= v->seq && n < cap; s++)
        out[n++] = v->ring[(s - 1) % VERSIONS_EVENTS];
    if (last != NULL)
        *last = v->seq;
    pthread_mutex_unlock(&v->lock);
    return n;
}

const char *versions_event_name(versions_event_kind kind)
{
    switch (kind) {
    case VERSIONS_EV_PENDING: return "pending";
    case VERSIONS_EV_PUBLISH: return "publish";
    case VERSIONS_EV_PROMOTE: return "promote";
    case VERSIONS_EV_ROLLBACK: return "rollback";
    }
    return "change";
}

/* ---- servable versions and pins ----------------------------------------------------- */

/* With the lock held. */
static void available_locked(versions *v, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    uint32_t ids[64];
    int k = 0;
    for (model_version *mv = v->head; mv != NULL && k < 64; mv = mv->next)
        ids[k++] = mv->id;
    /* newest first */
    for (int i = 1; i < k; i++) {
        for (int j = i; j > 0 && ids[j] > ids[j - 1]; j--) {
            uint32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    }
    for (int i = 0; i < k && n < cap; i++) {
        model_version *mv = find(v, ids[i]);
        int w = snprintf(buf + n, cap - n, "%s%u%s", i > 0 ? ", " : "", ids[i],
                         mv == v->current ? " (current)" : mv->pending ? " (pending)" : "");
        if (w < 0)
            break;
        n += (size_t)w;
    }
}

void versions_available(versions *v, char *buf, size_t cap)
{
    pthread_mutex_lock(&v->lock);
    available_locked(v, buf, cap);
    pthread_mutex_unlock(&v->lock);
}

int versions_pin(versions *v, uint32_t id, model_version **out, emb_err *err)
{
    char avail[256];
    pthread_mutex_lock(&v->lock);
    model_version *mv = find(v, id);
    if (mv != NULL) {
        atomic_fetch_add(&mv->refs, 1);
        pthread_mutex_unlock(&v->lock);
        *out = mv;
        return 0;
    }
    uint32_t latest = v->latest;
    available_locked(v, avail, sizeof avail);
    pthread_mutex_unlock(&v->lock);
    *out = NULL;
    if (id == 0 || id > latest)
        return emb_fail_as(err, EMB_ERR_NOT_FOUND,
                           "model version %u does not exist; available: %s", id, avail);
    return emb_fail_as(err, EMB_ERR_GONE,
                       "model version %u was retired (--keep-versions); available: %s", id,
                       avail);
}

/* The status of id: "current", "pending", "servable" or "retired". With
 * the lock held. */
static const char *status_of(versions *v, uint32_t id)
{
    model_version *mv = find(v, id);
    if (mv == NULL)
        return "retired";
    return mv == v->current ? "current" : mv->pending ? "pending" : "servable";
}

void versions_list_json(versions *v, strbuf *b)
{
    pthread_mutex_lock(&v->lock);
    model_version *pend = find_pending(v);
    sb_printf(b, "{\"current\":%u,\"pending\":", v->current->id);
    if (pend != NULL)
        sb_printf(b, "%u", pend->id);
    else
        sb_puts(b, "null");
    sb_printf(b, ",\"latest\":%u,\"keep\":%d,\"publish\":\"%s\",\"versions\":[", v->latest,
              v->keep, v->publish == VERSIONS_PUBLISH_AUTO ? "auto" : "manual");
    uint32_t stop = v->latest > 100 ? v->latest - 100 : 0;
    for (uint32_t id = v->latest; id > stop; id--) {
        const version_info *in = NULL;
        for (int i = 0; i < v->n_known; i++) {
            if (v->known[i].id == id)
                in = &v->known[i];
        }
        model_version *mv = find(v, id);
        sb_printf(b, "%s{\"id\":%u,\"status\":\"%s\",\"created\":", id == v->latest ? "" : ",",
                  id, status_of(v, id));
        double created = in != NULL && in->created > 0 ? in->created
                         : mv != NULL                  ? mv->published_at
                                                       : 0;
        if (created > 0)
            sb_printf(b, "%.3f", created);
        else
            sb_puts(b, "null");
        sb_puts(b, ",\"parent\":");
        if (in != NULL && in->parent != 0)
            sb_printf(b, "%u", in->parent);
        else
            sb_puts(b, "null");
        sb_puts(b, ",\"gate\":");
        if (in != NULL && in->gate[0] != '\0')
            sb_json_string(b, in->gate);
        else
            sb_puts(b, "null");
        sb_putc(b, '}');
    }
    sb_puts(b, "]}");
    pthread_mutex_unlock(&v->lock);
}

/* ---- DATA/models ------------------------------------------------------------------ */

#define MANIFEST "version.json"

/* n when name is "v{n}" (a version directory), else 0. */
static uint32_t version_dir_id(const char *name)
{
    unsigned n = 0;
    char tail;
    return sscanf(name, "v%u%c", &n, &tail) == 1 ? n : 0;
}

/* The number in DATA/models/<name>, or 0. */
static uint32_t read_number(const char *data_dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models/%s", data_dir, name);
    FILE *fp = fopen(path, "r");
    unsigned id = 0;
    if (fp != NULL) {
        if (fscanf(fp, "%u", &id) != 1)
            id = 0;
        fclose(fp);
    }
    return id;
}

/* A complete version directory has its metadata: version.json (written
 * into the staging directory before the rename that publishes it), or,
 * saved by a build from before checksums, config.json. Anything else (an
 * empty vN left by a crash or by hand) is incomplete. */
static int version_on_disk(const char *data_dir, uint32_t id)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models/v%u/" MANIFEST, data_dir, id);
    if (access(path, R_OK) == 0)
        return 1;
    snprintf(path, sizeof path, "%s/models/v%u/config.json", data_dir, id);
    return access(path, R_OK) == 0;
}

/* The highest n of a directory DATA/models/vN other than skip (0: none),
 * counting only complete ones when complete_only; 0 when there is none. */
static uint32_t newest_version(const char *data_dir, uint32_t skip, int complete_only)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models", data_dir);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    uint32_t best = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint32_t n = version_dir_id(e->d_name);
        if (n > best && n != skip && (!complete_only || version_on_disk(data_dir, n)))
            best = n;
    }
    closedir(d);
    return best;
}

/* The complete saved versions, newest first, as "4, 3" (for messages). */
static void saved_list(const char *data_dir, char *buf, size_t cap)
{
    uint32_t ids[64];
    int n = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/models", data_dir);
    DIR *d = opendir(path);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL && n < 64) {
            uint32_t id = version_dir_id(e->d_name);
            if (id >= 2 && version_on_disk(data_dir, id))
                ids[n++] = id;
        }
        closedir(d);
    }
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0 && ids[j] > ids[j - 1]; j--) {
            uint32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    }
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && at < cap; i++) {
        int w = snprintf(buf + at, cap - at, "%s%u", i > 0 ? ", " : "", ids[i]);
        if (w < 0)
            break;
        at += (size_t)w;
    }
}

/* ---- checksums: DATA/models/vN/version.json ---------------------------------------- */

/* Test-only fault seam: EMBEDD_FAULT_FILE_REPLACE lists names (comma
 * separated: current, pending, latest, version.json) whose atomic replace
 * fails with EIO. The tests run as root, so permissions cannot make a
 * directory unwritable; this makes "the write failed" deterministic. */
static int fault_injected(const char *name)
{
    const char *list = getenv("EMBEDD_FAULT_FILE_REPLACE");
    size_t n = strlen(name);
    while (list != NULL && *list != '\0') {
        const char *end = strchr(list, ',');
        size_t len = end != NULL ? (size_t)(end - list) : strlen(list);
        if (len == n && strncmp(list, name, n) == 0)
            return 1;
        list = end != NULL ? end + 1 : NULL;
    }
    return 0;
}

/* dir/name replaced atomically by n bytes (fsync of file and directory),
 * or -1 with err (EMB_ERR_IO). */
static int replace_file(const char *dir, const char *name, const void *data, size_t n,
                        emb_err *err)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (fault_injected(name))
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s (EMBEDD_FAULT_FILE_REPLACE)", path,
                           strerror(EIO));
    return emb_write_file_atomic(path, data, n, err);
}

/* CRC-32C and size of the file at path. 0, or -1 with err (EMB_ERR_IO). */
static int sum_file(const char *path, uint64_t *bytes, uint32_t *crc, emb_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    const size_t cap = 1 << 20;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    *bytes = 0;
    *crc = 0;
    int rc = 0;
    for (;;) {
        ssize_t got = read(fd, buf, cap);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
            break;
        }
        if (got == 0)
            break;
        *crc = emb_crc32c(*crc, buf, (size_t)got);
        *bytes += (uint64_t)got;
    }
    free(buf);
    close(fd);
    return rc;
}

/* Adds {"name", "bytes", "crc32c"} for every regular file of dir/sub (sub
 * "" for dir itself; one level of subdirectories: the Dense modules) to
 * files, the manifest itself excepted. 0, or -1 with err. */
static int sum_tree(const char *dir, const char *sub, cJSON *files, emb_err *err)
{
    char path[4400];
    snprintf(path, sizeof path, "%s%s%s", dir, sub[0] != '\0' ? "/" : "", sub);
    DIR *d = opendir(path);
    if (d == NULL)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || (sub[0] == '\0' && strcmp(e->d_name, MANIFEST) == 0))
            continue;
        char name[600], full[5100];
        snprintf(name, sizeof name, "%s%s%s", sub, sub[0] != '\0' ? "/" : "", e->d_name);
        snprintf(full, sizeof full, "%s/%s", dir, name);
        struct stat st;
        if (lstat(full, &st) != 0) {
            rc = emb_fail_as(err, EMB_ERR_IO, "%s: %s", full, strerror(errno));
        } else if (S_ISDIR(st.st_mode) && sub[0] == '\0') {
            rc = sum_tree(dir, e->d_name, files, err);
        } else if (S_ISREG(st.st_mode)) {
            uint64_t bytes;
            uint32_t crc;
            char hex[16];
            rc = sum_file(full, &bytes, &crc, err);
            snprintf(hex, sizeof hex, "%08x", crc);
            cJSON *f = cJSON_CreateObject();
            if (rc == 0 && (f == NULL || !cJSON_AddStringToObject(f, "name", name) ||
                            !cJSON_AddNumberToObject(f, "bytes", (double)bytes) ||
                            !cJSON_AddStringToObject(f, "crc32c", hex) ||
                            !cJSON_AddItemToArray(files, f)))
                rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        }
    }
    closedir(d);
    return rc;
}

/* Writes dir/version.json: {"format": 1, "id", "created", "files": [{"name",
 * "bytes", "crc32c" (hex)}]}, the size and CRC-32C of every file of the
 * version, atomically. 0, or -1 with err. */
static int write_manifest(const char *dir, uint32_t id, emb_err *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *files = cJSON_CreateArray();
    if (root == NULL || files == NULL || !cJSON_AddItemToObject(root, "files", files)) {
        cJSON_Delete(root);
        cJSON_Delete(files);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    cJSON_AddNumberToObject(root, "format", 1);
    cJSON_AddNumberToObject(root, "id", id);
    cJSON_AddNumberToObject(root, "created", (double)(long long)unix_now());
    int rc = sum_tree(dir, "", files, err);
    char *text = rc == 0 ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (rc != 0)
        return -1;
    if (text == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    rc = replace_file(dir, MANIFEST, text, strlen(text), err);
    free(text);
    return rc;
}

/* Checks one manifest entry against the file it names. */
static int verify_entry(const char *dir, const cJSON *f, emb_err *err)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(f, "bytes");
    const cJSON *crc = cJSON_GetObjectItemCaseSensitive(f, "crc32c");
    if (!cJSON_IsString(name) || !cJSON_IsNumber(bytes) || !cJSON_IsString(crc) ||
        name->valuestring[0] == '/' || strstr(name->valuestring, "..") != NULL)
        return emb_fail_as(err, EMB_ERR_IO, "%s/" MANIFEST ": a file entry is malformed", dir);
    char path[5100];
    snprintf(path, sizeof path, "%s/%s", dir, name->valuestring);
    uint64_t got_bytes;
    uint32_t got_crc;
    if (sum_file(path, &got_bytes, &got_crc, err) != 0)
        return -1;
    if ((double)got_bytes != bytes->valuedouble)
        return emb_fail_as(err, EMB_ERR_IO,
                           "%s: size mismatch (expected %.0f bytes, got %llu)", path,
                           bytes->valuedouble, (unsigned long long)got_bytes);
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", got_crc);
    if (strcmp(hex, crc->valuestring) != 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: checksum mismatch (expected %s, got %s)",
                           path, crc->valuestring, hex);
    return 0;
}

/* Checks every file DATA/models/v{id}/version.json lists against its size
 * and CRC-32C. 0 when all match, 1 when the version has no manifest (saved
 * before checksums were recorded: accepted, with a log line), -1 with err
 * (EMB_ERR_IO: a mismatch, naming the file, or an unreadable manifest). */
static int verify_version(const char *data_dir, uint32_t id, emb_err *err)
{
    char dir[4096], path[4400];
    snprintf(dir, sizeof dir, "%s/models/v%u", data_dir, id);
    snprintf(path, sizeof path, "%s/" MANIFEST, dir);
    size_t len = 0;
    char *text = NULL;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL && errno == ENOENT) {
        log_msg(LOG_WARN, "model version %u has no checksums (saved by an older embedd): "
                          "loading it unverified", id);
        return 1;
    }
    if (fp != NULL) {
        text = malloc(1 << 20);
        if (text != NULL)
            len = fread(text, 1, (1 << 20) - 1, fp);
        fclose(fp);
    }
    if (text == NULL)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", path,
                           fp == NULL ? strerror(errno) : "out of memory");
    text[len] = '\0';
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    int rc = 0;
    if (!cJSON_IsArray(files) || cJSON_GetArraySize(files) == 0) {
        rc = emb_fail_as(err, EMB_ERR_IO, "%s: not a version manifest", path);
    } else {
        const cJSON *f;
        cJSON_ArrayForEach(f, files) {
            if ((rc = verify_entry(dir, f, err)) != 0)
                break;
        }
    }
    cJSON_Delete(root);
    return rc;
}

/* Version id from DATA/models/vN, its files checked against their
 * checksums first, packed in the served model's precision; a copy of base
 * for 1. A file that does not load is the disk's fault, never a client's:
 * its "invalid" becomes EMB_ERR_IO. */
static emb_model *load_saved_version(const char *data_dir, const emb_model *base, uint32_t id,
                                     emb_err *err)
{
    if (id == 1)
        return emb_model_clone(base, err);
    if (data_dir == NULL) {
        emb_fail_as(err, EMB_ERR_NOT_FOUND, "model version %u: no data directory", id);
        return NULL;
    }
    if (verify_version(data_dir, id, err) < 0)
        return NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/models/v%u", data_dir, id);
    emb_model *m = emb_model_load_precision(path, base->precision, err);
    if (m == NULL && (err->kind == EMB_ERR_INVALID || err->kind == EMB_ERR_TOO_LARGE))
        err->kind = EMB_ERR_IO;
    return m;
}

/* Moves DATA/models/vN directories without metadata (version_on_disk)
 * aside to vN.incomplete-<time>, with a log line: a stray directory is
 * never fatal and never taken for a version. */
static void set_aside_incomplete(const char *data_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models", data_dir);
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint32_t id = version_dir_id(e->d_name);
        char from[4400], to[4500];
        struct stat st;
        snprintf(from, sizeof from, "%s/%s", path, e->d_name);
        if (id < 2 || stat(from, &st) != 0 || !S_ISDIR(st.st_mode) ||
            version_on_disk(data_dir, id))
            continue;
        snprintf(to, sizeof to, "%s.incomplete-%ld", from, (long)time(NULL));
        if (rename(from, to) == 0)
            log_msg(LOG_WARN, "%s has no version metadata (a save that did not finish?): "
                              "moved aside to %s", from, to);
        else
            log_msg(LOG_WARN, "%s has no version metadata: ignored (%s)", from,
                    strerror(errno));
    }
    closedir(d);
}

/* Removes DATA/models/v{n}.tmp-* left by a save that never finished. */
static void remove_stale_temps(const char *data_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models", data_dir);
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        unsigned n = 0;
        int used = 0;
        if (sscanf(e->d_name, "v%u.tmp-%n", &n, &used) != 1 || used == 0)
            continue;
        char tmp[4400];
        snprintf(tmp, sizeof tmp, "%s/%s", path, e->d_name);
        emb_err err;
        if (emb_remove_tree(tmp, &err) == 0)
            log_msg(LOG_INFO, "removed %s (a save that did not finish)", tmp);
    }
    closedir(d);
}

/* The precision of base_dir/model.safetensors (of its largest tensor):
 * versions are saved in it. F32 when it cannot be read. */
static emb_dtype file_dtype(const char *base_dir)
{
    if (base_dir == NULL)
        return EMB_DT_F32;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", base_dir);
    emb_st_file f;
    emb_err err;
    if (emb_st_open(&f, path, &err) != 0)
        return EMB_DT_F32;
    emb_dtype dt = EMB_DT_F32;
    size_t best = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        size_t bytes = f.tensors[i].end - f.tensors[i].begin;
        if (bytes > best) {
            best = bytes;
            dt = f.tensors[i].dtype;
        }
    }
    emb_st_close(&f);
    return dt == EMB_DT_F16 || dt == EMB_DT_BF16 ? dt : EMB_DT_F32;
}

/* 1 when id failed to load at open; with the lock held. */
static int is_broken(const versions *v, uint32_t id)
{
    for (int i = 0; i < v->n_broken; i++) {
        if (v->broken[i] == id)
            return 1;
    }
    return 0;
}

/* Deletes DATA/models/v{n} of every number up to latest that is not in
 * memory (retired), except those that failed to load (kept for a look).
 * With v->change held. */
static void prune_disk(versions *v)
{
    if (v->data_dir == NULL)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/models", v->data_dir);
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    uint32_t gone[64];
    int n = 0;
    struct dirent *e;
    pthread_mutex_lock(&v->lock);
    while ((e = readdir(d)) != NULL && n < 64) {
        uint32_t id = version_dir_id(e->d_name);
        if (id >= 2 && id <= v->latest && find(v, id) == NULL && !is_broken(v, id))
            gone[n++] = id;
    }
    pthread_mutex_unlock(&v->lock);
    closedir(d);
    for (int i = 0; i < n; i++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/v%u", path, gone[i]);
        emb_err err;
        if (emb_remove_tree(dir, &err) != 0)
            log_msg(LOG_WARN, "cannot delete retired version %s: %s", dir, err.msg);
    }
}

static void report(versions *v, const char *what, const char *msg)
{
    if (v->hooks.report != NULL)
        v->hooks.report(v->hooks.ctx, what, msg);
}

/* DATA/models/<name> holds id, replaced atomically (fsync of the file
 * and the directory). 0, or -1 with err (EMB_ERR_IO); nothing without
 * --data. */
static int write_number(versions *v, const char *name, uint32_t id, emb_err *err)
{
    if (v->data_dir == NULL)
        return 0;
    char dir[4096], line[16];
    snprintf(dir, sizeof dir, "%s/models", v->data_dir);
    mkdir(dir, 0755);
    int n = snprintf(line, sizeof line, "%u\n", id);
    return replace_file(dir, name, line, (size_t)n, err);
}

/* write_number where a failure undoes nothing (`latest`, or `pending`
 * cleared after a promotion: a restart ignores a pending number equal to
 * current): reported. */
static void write_number_reported(versions *v, const char *name, uint32_t id)
{
    emb_err err;
    if (write_number(v, name, id, &err) != 0) {
        char what[64];
        snprintf(what, sizeof what, "saving the %s version", name);
        report(v, what, err.msg);
    }
}

/* Writes `current` = id before anything switches: a change the disk does
 * not hold is neither served nor acknowledged (a restart would undo it).
 * 0, or -1 with err naming what stays served. */
static int save_current(versions *v, uint32_t id, emb_err *err)
{
    emb_err werr;
    if (write_number(v, "current", id, &werr) == 0)
        return 0;
    return emb_fail_as(err, werr.kind, "model version %u not made current (still serving %u): %s",
                       id, versions_current_id(v), werr.msg);
}

/* The kept window from disk at open: the keep - 1 newest saved versions
 * besides current (and 1, the base), and the pending one. A version that
 * does not load is left out with a message. */
static void load_window(versions *v, uint32_t pending)
{
    uint32_t ids[64];
    int n = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/models", v->data_dir);
    DIR *d = opendir(path);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL && n < 63) {
            uint32_t id = version_dir_id(e->d_name);
            if (id >= 2 && id != pending && version_on_disk(v->data_dir, id))
                ids[n++] = id;
        }
        closedir(d);
    }
    ids[n++] = 1;
    if (pending >= 2 && version_on_disk(v->data_dir, pending))
        ids[n++] = pending;
    uint32_t cur = v->current->id;
    int others = 0;
    for (;;) {
        /* the newest not yet taken, pending first */
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (ids[i] == 0 || ids[i] == cur)
                continue;
            if (best < 0 || ids[i] == pending ||
                (ids[best] != pending && ids[i] > ids[best]))
                best = i;
        }
        if (best < 0)
            break;
        uint32_t id = ids[best];
        ids[best] = 0;
        int is_pending = id == pending;
        if (!is_pending && others >= v->keep - 1)
            continue;
        emb_err err;
        emb_model *m = load_saved_version(v->data_dir, v->base, id, &err);
        if (m == NULL) {
            log_msg(LOG_WARN, "model version %u not loaded: %s", id, err.msg);
            pthread_mutex_lock(&v->lock);
            if (v->n_broken < (int)(sizeof v->broken / sizeof v->broken[0]))
                v->broken[v->n_broken++] = id;
            pthread_mutex_unlock(&v->lock);
            continue;
        }
        model_version *mv = version_new(m, id);
        if (mv == NULL) {
            emb_model_free(m);
            break;
        }
        mv->pending = is_pending;
        pthread_mutex_lock(&v->lock);
        insert(v, mv);
        pthread_mutex_unlock(&v->lock);
        others += !is_pending;
    }
    /* what the list can say about numbers on disk */
    snprintf(path, sizeof path, "%s/models", v->data_dir);
    d = opendir(path);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            uint32_t id = version_dir_id(e->d_name);
            struct stat st;
            char dir[4400];
            snprintf(dir, sizeof dir, "%s/%s", path, e->d_name);
            if (id >= 2 && stat(dir, &st) == 0)
                note_info(v, id, (double)st.st_mtime, 0, NULL);
        }
        closedir(d);
    }
}

/* The version to serve at open: the one DATA/models/current names (else
 * the newest complete saved one, else 1), loaded and verified. Never
 * silently another: when it is missing or fails its checksums, NULL with
 * err naming the file and what the operator can do. */
static emb_model *load_current(const char *data_dir, const emb_model *base, uint32_t pending,
                               uint32_t *id, emb_err *err)
{
    uint32_t named = data_dir != NULL ? read_number(data_dir, "current") : 0;
    *id = named != 0 ? named : data_dir != NULL ? newest_version(data_dir, pending, 1) : 0;
    if (*id == 0)
        *id = 1;
    if (*id == 1)
        return emb_model_clone(base, err);
    char saved[256];
    saved_list(data_dir, saved, sizeof saved);
    if (!version_on_disk(data_dir, *id)) {
        emb_fail_as(err, EMB_ERR_NOT_FOUND,
                    "%s/models/current names model version %u, but %s/models/v%u does not "
                    "exist; write the number of a version to serve into it (saved: %s%s1, "
                    "the loaded model)",
                    data_dir, *id, data_dir, *id, saved, saved[0] != '\0' ? ", " : "");
        return NULL;
    }
    emb_err lerr;
    emb_model *m = load_saved_version(data_dir, base, *id, &lerr);
    if (m == NULL)
        emb_fail_as(err, lerr.kind,
                    "%s model version %u cannot be served: %s; write the number of another "
                    "version into %s/models/current to serve it (saved: %s%s1, the loaded model)",
                    named != 0 ? "the current" : "the newest saved", *id, lerr.msg, data_dir,
                    saved, saved[0] != '\0' ? ", " : "");
    return m;
}

versions *versions_open(const char *data_dir, const char *base_dir, const emb_model *base,
                        int keep, emb_err *err)
{
    uint32_t pending = 0, id = 0;
    if (data_dir != NULL) {
        remove_stale_temps(data_dir);
        set_aside_incomplete(data_dir);
        pending = read_number(data_dir, "pending");
    }
    emb_model *cur = load_current(data_dir, base, pending, &id, err);
    if (cur == NULL)
        return NULL;
    if (pending == id)
        pending = 0;
    versions *v = versions_new(cur, id, keep);
    if (v == NULL) {
        emb_model_free(cur);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    v->base = base;
    v->base_dir = base_dir;
    v->save_dtype = file_dtype(base_dir);
    if (data_dir != NULL && (v->data_dir = strdup(data_dir)) == NULL) {
        versions_free(v);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    if (data_dir != NULL) {
        /* numbering goes on after every number ever made, whichever is current */
        uint32_t latest = newest_version(data_dir, 0, 0);
        uint32_t noted = read_number(data_dir, "latest");
        pthread_mutex_lock(&v->lock);
        if (latest > v->latest)
            v->latest = latest;
        if (noted > v->latest)
            v->latest = noted;
        pthread_mutex_unlock(&v->lock);
        load_window(v, pending);
        pthread_mutex_lock(&v->change);
        prune_disk(v);
        pthread_mutex_unlock(&v->change);
    }
    if (id > 1)
        log_msg(LOG_INFO, "serving model version %u from %s/models", id, data_dir);
    if (versions_pending_id(v) != 0)
        log_msg(LOG_INFO, "model version %u is pending (POST /train/promote)",
                versions_pending_id(v));
    return v;
}

/* Rounds the encoder floats of m to dt (F16 or BF16) and repacks, so that
 * the version served is the one saved. */
static int round_to(emb_model *m, emb_dtype dt, emb_err *err)
{
    const size_t n = emb_encoder_floats(&m->cfg);
    float *p = m->params;
    for (size_t i = 0; i < n; i++)
        p[i] = dt == EMB_DT_F16 ? emb_f16_to_f32(emb_f32_to_f16(p[i]))
                                : emb_bf16_to_f32(emb_f32_to_bf16(p[i]));
    return emb_model_pack(m, err);
}

int versions_save(versions *v, uint32_t id, emb_model *m, const float *head, emb_err *err)
{
    if (v->save_dtype != EMB_DT_F32 && round_to(m, v->save_dtype, err) != 0)
        return -1;
    if (v->data_dir == NULL)
        return 0;
    /* Staged under a temporary name (removed at open if a crash leaves it),
     * manifest included, then renamed: a vN directory is always complete. */
    char dir[4096], stage[4200], final[4200];
    snprintf(dir, sizeof dir, "%s/models", v->data_dir);
    mkdir(dir, 0755);
    snprintf(stage, sizeof stage, "%s/v%u.tmp-%ld-stage", dir, id, (long)getpid());
    snprintf(final, sizeof final, "%s/v%u", dir, id);
    if (emb_save_model_dir(stage, &m->cfg, m->params, head, v->base_dir, v->save_dtype, NULL,
                           err) != 0)
        return -1;
    int rc = write_manifest(stage, id, err);
    if (rc == 0 && rename(stage, final) != 0)
        rc = emb_fail_as(err, EMB_ERR_IO, "rename %s -> %s: %s", stage, final, strerror(errno));
    if (rc != 0) {
        emb_err ignored;
        emb_remove_tree(stage, &ignored);
        return -1;
    }
    return emb_fsync_dir(dir, err);
}

/* The one hand-over, with v->change held, once `current` on disk names id
 * (save_current) and memory serves it: the hook, then the event and
 * retention. Returns the hook's result. */
static int hand_over(versions *v, uint32_t id, uint32_t previous, versions_event_kind kind,
                     emb_err *err)
{
    int rc = 0;
    if (v->hooks.on_change != NULL)
        rc = v->hooks.on_change(v->hooks.ctx, id, err);
    pthread_mutex_lock(&v->lock);
    trim(v);
    pthread_mutex_unlock(&v->lock);
    prune_disk(v);
    emit(v, kind, id, previous);
    return rc;
}

/* Makes the version id in memory current (promoting it when pending);
 * 0, or -1 when it is not in memory. *previous gets the current one. The
 * caller has written `current` (save_current). */
static int make_current(versions *v, uint32_t id, uint32_t *previous, int *was_pending)
{
    pthread_mutex_lock(&v->lock);
    model_version *mv = find(v, id);
    *previous = v->current->id;
    *was_pending = 0;
    if (mv != NULL) {
        *was_pending = mv->pending;
        mv->pending = 0;
        v->current = mv;
    }
    pthread_mutex_unlock(&v->lock);
    if (mv != NULL && *was_pending)
        write_number_reported(v, "pending", 0);
    return mv != NULL ? 0 : -1;
}

/* versions_candidate in a given mode (manual: pending). */
static int hand_candidate(versions *v, emb_model *m, uint32_t id, uint32_t parent,
                          const char *gate, int manual, emb_err *err)
{
    pthread_mutex_lock(&v->change);
    model_version *mv = version_new(m, id);
    if (mv == NULL) {
        pthread_mutex_unlock(&v->change);
        emb_model_free(m);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    /* the number is used (its directory is on disk) whatever happens next */
    pthread_mutex_lock(&v->lock);
    if (id > v->latest)
        v->latest = id;
    uint32_t latest = v->latest;
    pthread_mutex_unlock(&v->lock);
    write_number_reported(v, "latest", latest);
    /* the pointer on disk first: if it cannot be written, nothing switches */
    emb_err werr;
    int rc = manual ? write_number(v, "pending", id, &werr) : save_current(v, id, &werr);
    if (rc != 0) {
        pthread_mutex_unlock(&v->change);
        version_unref(mv);
        return emb_fail_as(err, werr.kind, "model version %u saved but not %s: %s", id,
                           manual ? "held pending" : "published", werr.msg);
    }
    pthread_mutex_lock(&v->lock);
    uint32_t previous = v->current->id;
    model_version *old = find_pending(v);
    if (old != NULL && manual) {
        old->pending = 0;             /* replaced, never promoted: retired */
        unlink_version(v, old);
    }
    mv->pending = manual;
    insert(v, mv);
    if (!manual)
        v->current = mv;
    pthread_mutex_unlock(&v->lock);
    note_info(v, id, mv->published_at, parent, gate);
    if (manual) {
        pthread_mutex_lock(&v->lock);
        trim(v);
        pthread_mutex_unlock(&v->lock);
        prune_disk(v);
        emit(v, VERSIONS_EV_PENDING, id, previous);
    } else {
        emb_err herr;
        if (hand_over(v, id, previous, VERSIONS_EV_PUBLISH, &herr) != 0)
            report(v, "re-embedding", herr.msg);
    }
    pthread_mutex_unlock(&v->change);
    return manual ? 0 : 1;
}

int versions_candidate(versions *v, emb_model *m, uint32_t id, uint32_t parent,
                       const char *gate, emb_err *err)
{
    int manual = versions_get_publish(v) == VERSIONS_PUBLISH_MANUAL;
    return hand_candidate(v, m, id, parent, gate, manual, err);
}

int versions_publish_saved(versions *v, emb_model *m, uint32_t id, emb_err *err)
{
    return hand_candidate(v, m, id, versions_current_id(v), NULL, 0, err) < 0 ? -1 : 0;
}

int versions_promote(versions *v, uint32_t id, uint32_t *out, emb_err *err)
{
    pthread_mutex_lock(&v->change);
    uint32_t pending = versions_pending_id(v);
    int rc;
    if (pending == 0) {
        rc = emb_fail_as(err, EMB_ERR_CONFLICT, "no model version is pending (current: %u)",
                         versions_current_id(v));
    } else if (id != 0 && id != pending) {
        rc = emb_fail_as(err, EMB_ERR_CONFLICT,
                         "model version %u is not pending (pending: %u)", id, pending);
    } else {
        uint32_t previous;
        int was_pending;
        rc = save_current(v, pending, err);
        if (rc == 0) {
            make_current(v, pending, &previous, &was_pending);
            *out = pending;
            rc = hand_over(v, pending, previous, VERSIONS_EV_PROMOTE, err);
        }
    }
    pthread_mutex_unlock(&v->change);
    return rc;
}

/* 1 when version id is in memory. */
static int make_current_again(versions *v, uint32_t id, versions_event_kind kind, emb_err *err);

static int in_memory(versions *v, uint32_t id)
{
    pthread_mutex_lock(&v->lock);
    int yes = find(v, id) != NULL;
    pthread_mutex_unlock(&v->lock);
    return yes;
}

/* Version id from DATA/models/v{id} (or base for 1), verified, or NULL
 * with err: the real reason (a checksum mismatch names the file). */
static emb_model *load_for_rollback(versions *v, uint32_t id, emb_err *err)
{
    if (id == 1 && v->base != NULL)
        return emb_model_clone(v->base, err);
    char dir[4096];
    struct stat stt;
    if (v->data_dir != NULL)
        snprintf(dir, sizeof dir, "%s/models/v%u", v->data_dir, id);
    if (v->data_dir == NULL || v->base == NULL || id < 2 || stat(dir, &stt) != 0) {
        uint32_t latest = versions_latest_id(v);
        if (id >= 1 && id <= latest && v->data_dir != NULL)
            emb_fail_as(err, EMB_ERR_GONE,
                        "model version %u was retired and deleted (--keep-versions)", id);
        else
            emb_fail_as(err, EMB_ERR_NOT_FOUND,
                        "model version %u is neither in memory nor on disk", id);
        return NULL;
    }
    emb_err lerr;
    emb_model *m = load_saved_version(v->data_dir, v->base, id, &lerr);
    if (m == NULL)
        emb_fail_as(err, lerr.kind, "model version %u: %s", id, lerr.msg);
    return m;
}

int versions_rollback(versions *v, uint32_t id, emb_err *err)
{
    return make_current_again(v, id, VERSIONS_EV_ROLLBACK, err);
}

int versions_adopt(versions *v, uint32_t id, emb_err *err)
{
    if (versions_current_id(v) == id)
        return 0;
    return make_current_again(v, id, VERSIONS_EV_PUBLISH, err);
}

const char *versions_data_dir(const versions *v)
{
    return v->data_dir;
}

/* versions_rollback and versions_adopt: id current, from memory or disk,
 * with the hand-over, reported as `kind`. */
static int make_current_again(versions *v, uint32_t id, versions_event_kind kind, emb_err *err)
{
    uint32_t previous;
    int was_pending;
    /* the common case: still in memory */
    pthread_mutex_lock(&v->change);
    if (in_memory(v, id)) {
        int rc = save_current(v, id, err);
        if (rc == 0) {
            make_current(v, id, &previous, &was_pending);
            rc = hand_over(v, id, previous, kind, err);
        }
        pthread_mutex_unlock(&v->change);
        return rc;
    }
    pthread_mutex_unlock(&v->change);
    /* loading takes a while: not under the lock */
    emb_model *m = load_for_rollback(v, id, err);
    if (m == NULL)
        return -1;
    pthread_mutex_lock(&v->change);
    int rc = save_current(v, id, err);
    if (rc != 0) {
        emb_model_free(m);
    } else if (make_current(v, id, &previous, &was_pending) == 0) { /* loaded meanwhile */
        emb_model_free(m);
        rc = hand_over(v, id, previous, kind, err);
    } else {
        model_version *mv = version_new(m, id);
        if (mv == NULL) {
            emb_model_free(m);
            rc = emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        } else {
            pthread_mutex_lock(&v->lock);
            previous = v->current->id;
            insert(v, mv);
            v->current = mv;
            pthread_mutex_unlock(&v->lock);
            rc = hand_over(v, id, previous, kind, err);
        }
    }
    pthread_mutex_unlock(&v->change);
    return rc;
}

/* Puts version id in memory (loading it from disk, or copying base for 1)
 * when it is not there. Called under change. 0, or -1 with err. */
static int load_into_memory(versions *v, uint32_t id, emb_err *err)
{
    model_version *mv = versions_get(v, id);
    if (mv != NULL) {
        versions_release(v, mv);
        return 0;
    }
    emb_model *m = load_saved_version(v->data_dir, v->base, id, err);
    if (m == NULL)
        return -1;
    if (versions_add(v, m, id) != 0) {
        emb_model_free(m);
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    return 0;
}

int versions_keep(versions *v, uint32_t id, emb_err *err)
{
    pthread_mutex_lock(&v->change);
    int rc = id == 0 ? 0 : load_into_memory(v, id, err);
    pthread_mutex_unlock(&v->change);
    return rc;
}

int versions_align(versions *v, uint32_t have, emb_err *err)
{
    pthread_mutex_lock(&v->change);
    uint32_t want = versions_current_id(v);
    int rc = 0;
    if (have != want && have != 0) {
        pthread_mutex_lock(&v->lock);
        v->hold = have; /* kept while the store searches it */
        pthread_mutex_unlock(&v->lock);
        rc = load_into_memory(v, have, err);
    }
    /* have == 0: no text item yet, the store adopts the current version */
    if (rc == 0 && have != want && v->hooks.on_change != NULL)
        rc = v->hooks.on_change(v->hooks.ctx, want, err);
    pthread_mutex_unlock(&v->change);
    return rc;
}
