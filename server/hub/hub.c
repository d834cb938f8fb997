/* hub.c: Hugging Face Hub downloads into the standard cache (see hub.h for
 * the layout and the protocol). */
#include "hub.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "base/fileio.h"

#define DEFAULT_ENDPOINT "https://huggingface.co"
#define URL_MAX 4096
#define MAX_HOPS 5                    /* relative redirects of a renamed repository */
#define MAX_SHARDS 256
#define MAX_INDEX_BYTES (16L << 20)   /* model.safetensors.index.json, modules.json */
#define BAR_WIDTH 30

/* ---- options ---------------------------------------------------------- */

static int env_true(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL)
        return 0;
    return strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
           strcasecmp(v, "on") == 0;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
 * else ~/.cache/huggingface/hub: huggingface_hub's order. */
static int cache_dir_from_env(char *out, size_t cap, emb_err *err)
{
    const char *cache = env_nonempty("HF_HUB_CACHE");
    const char *hf_home = env_nonempty("HF_HOME");
    const char *xdg = env_nonempty("XDG_CACHE_HOME");
    const char *home = env_nonempty("HOME");
    int n;
    if (cache != NULL)
        n = snprintf(out, cap, "%s", cache);
    else if (hf_home != NULL)
        n = snprintf(out, cap, "%s/hub", hf_home);
    else if (xdg != NULL)
        n = snprintf(out, cap, "%s/huggingface/hub", xdg);
    else if (home != NULL)
        n = snprintf(out, cap, "%s/.cache/huggingface/hub", home);
    else
        return emb_fail(err, "no place for the Hugging Face cache: set HF_HUB_CACHE or HOME");
    if (n < 0 || (size_t)n >= cap)
        return emb_fail(err, "the Hugging Face cache path is too long");
    return 0;
}

int hub_opts_from_env(hub_opts *o, emb_err *err)
{
    memset(o, 0, sizeof *o);
    const char *endpoint = env_nonempty("HF_ENDPOINT");
    if (endpoint == NULL)
        endpoint = DEFAULT_ENDPOINT;
    int n = snprintf(o->endpoint, sizeof o->endpoint, "%s", endpoint);
    if (n < 0 || (size_t)n >= sizeof o->endpoint)
        return emb_fail(err, "HF_ENDPOINT is too long");
    while (n > 0 && o->endpoint[n - 1] == '/')
        o->endpoint[--n] = '\0';
    if (cache_dir_from_env(o->cache_dir, sizeof o->cache_dir, err) != 0)
        return -1;
    o->token = env_nonempty("HF_TOKEN");
    o->offline = env_true("HF_HUB_OFFLINE");
    o->timeout_s = 30;
    o->retries = 5;
    return 0;
}

/* ---- paths ------------------------------------------------------------ */

static int path_fmt(char *out, size_t cap, emb_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int path_fmt(char *out, size_t cap, emb_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        return emb_fail(err, "path too long: %.200s...", out);
    return 0;
}

/* mkdir -p. */
static int make_dirs(const char *path, emb_err *err)
{
    char buf[PATH_MAX];
    if (path_fmt(buf, sizeof buf, err, "%s", path) != 0)
        return -1;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return emb_fail(err, "cannot create directory %s: %s", buf, strerror(errno));
        *p = c;
        if (c == '\0')
            return 0;
    }
}

static int make_parent(const char *path, emb_err *err)
{
    char dir[PATH_MAX];
    if (path_fmt(dir, sizeof dir, err, "%s", path) != 0)
        return -1;
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    return make_dirs(dir, err);
}

/* Size of a regular file (following symlinks), or -1. */
static long long file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return -1;
    return (long long)st.st_size;
}

/* Writes text to path by replace-by-rename (emb_write_file_atomic). */
static int write_atomic(const char *path, const char *text, emb_err *err)
{
    if (make_parent(path, err) != 0)
        return -1;
    return emb_write_file_atomic(path, text, strlen(text), err);
}

/* Reads a small file (following symlinks); NULL when missing or larger
 * than max. */
static char *read_small(const char *path, long max)
{
    long long size = file_size(path);
    if (size < 0 || size > max)
        return NULL;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    char *buf = malloc((size_t)size + 1);
    if (buf != NULL && fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    if (buf != NULL)
        buf[size] = '\0';
    return buf;
}

/* ---- names ------------------------------------------------------------ */

/* One file or folder name from the network: [A-Za-z0-9._-], not starting
 * with '.', so it can never climb out of its directory. */
static int safe_name(const char *s, size_t len)
{
    if (len == 0 || len > 255 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

/* A relative path of safe names ("1_Pooling/config.json"). */
static int safe_path(const char *s)
{
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash != NULL ? (size_t)(slash - s) : strlen(s);
        if (!safe_name(s, len))
            return 0;
        if (slash == NULL)
            return 1;
        s = slash + 1;
    }
}

/* A revision: printable, no spaces, and no empty, "." or ".." component
 * (it names a file under refs/). */
static int safe_revision(const char *s)
{
    if (s[0] == '\0' || strlen(s) > 200)
        return 0;
    for (const char *p = s; *p != '\0'; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '\\')
            return 0;
    }
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash != NULL ? (size_t)(slash - s) : strlen(s);
        if (len == 0 || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        if (slash == NULL)
            return 1;
        s = slash + 1;
    }
}

static int is_commit_hash(const char *s)
{
    size_t n = strlen(s);
    if (n != 40)
        return 0;
    return strspn(s, "0123456789abcdef") == n;
}

typedef struct repo_ref {
    char id[208];              /* "org/name" */
    char revision[208];        /* "main" unless @REVISION was given */
    char folder[224];          /* "models--org--name" */
} repo_ref;

/* Parses ORG/NAME[@REVISION] (or NAME[@REVISION], a legacy top-level
 * model). */
static int parse_model_id(const char *model_id, repo_ref *r, emb_err *err)
{
    const char *at = strchr(model_id, '@');
    size_t id_len = at != NULL ? (size_t)(at - model_id) : strlen(model_id);
    const char *rev = at != NULL ? at + 1 : "main";
    const char *slash = memchr(model_id, '/', id_len);
    int ok = id_len < sizeof r->id;
    if (ok && slash != NULL) {
        size_t org_len = (size_t)(slash - model_id);
        ok = safe_name(model_id, org_len) && safe_name(slash + 1, id_len - org_len - 1);
    } else if (ok) {
        ok = safe_name(model_id, id_len);
    }
    if (!ok)
        return emb_fail(err, "'%s' is not a model id: expected ORG/NAME or ORG/NAME@REVISION",
                        model_id);
    if (!safe_revision(rev))
        return emb_fail(err, "'%s' is not a valid revision (in '%s')", rev, model_id);
    memcpy(r->id, model_id, id_len);
    r->id[id_len] = '\0';
    snprintf(r->revision, sizeof r->revision, "%s", rev);
    snprintf(r->folder, sizeof r->folder, "models--%s", r->id);
    char *p = strchr(r->folder + 8, '/');
    if (p != NULL) {
        /* "models--org/name" -> "models--org--name" */
        memmove(p + 2, p + 1, strlen(p + 1) + 1);
        p[0] = '-';
        p[1] = '-';
    }
    return 0;
}

/* Appends s to url, percent-encoding all but unreserved characters (and
 * '/' when keep_slash). */
static int url_append(char *url, size_t cap, const char *s, int keep_slash, emb_err *err)
{
    size_t n = strlen(url);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' ||
                    *p == '~' || (keep_slash && *p == '/');
        if (n + 4 >= cap)
            return emb_fail(err, "URL too long");
        if (plain)
            url[n++] = (char)*p;
        else
            n += (size_t)snprintf(url + n, cap - n, "%%%02X", *p);
    }
    url[n] = '\0';
    return 0;
}

/* ---- one fetch -------------------------------------------------------- */

typedef struct fetch {
    const hub_opts *o;
    repo_ref ref;
    CURL *curl;
    char curl_err[CURL_ERROR_SIZE];
    char repo_dir[PATH_MAX];   /* <cache>/models--org--name */
    char lock_dir[PATH_MAX];   /* <cache>/.locks/models--org--name */
    char commit[64];           /* "" until the first file pins it */
    char snapshot[PATH_MAX];   /* <repo_dir>/snapshots/<commit> */
} fetch;

/* {endpoint}/{repo}/resolve/{revision}/{path} */
static int resolve_url(const fetch *f, const char *rev, const char *path, char *url, size_t cap,
                       emb_err *err)
{
    if (path_fmt(url, cap, err, "%s/%s/resolve/", f->o->endpoint, f->ref.id) != 0)
        return -1;
    if (url_append(url, cap, rev, 0, err) != 0 || url_append(url, cap, "/", 1, err) != 0)
        return -1;
    return url_append(url, cap, path, 1, err);
}

/* ---- HTTP responses --------------------------------------------------- */

typedef struct response {
    long status;               /* of the latest response (redirects each reset it) */
    char commit[64];           /* X-Repo-Commit */
    char etag[160];            /* ETag, without W/ and quotes */
    char linked_etag[160];     /* X-Linked-Etag: the LFS file's sha256 */
    long long length;          /* Content-Length; -1 when absent */
    long long linked_size;     /* X-Linked-Size; -1 when absent */
    long long range_start;     /* Content-Range: bytes START-END/TOTAL; -1 when absent */
    long long range_total;
    char error_code[64];       /* X-Error-Code: RepoNotFound, RevisionNotFound, ... */
    char error_msg[256];       /* X-Error-Message */
} response;

static void response_reset(response *r)
{
    memset(r, 0, sizeof *r);
    r->length = -1;
    r->linked_size = -1;
    r->range_start = -1;
    r->range_total = -1;
}

/* W/"abc" -> abc */
static void copy_etag(char *out, size_t cap, const char *v)
{
    if (strncmp(v, "W/", 2) == 0)
        v += 2;
    size_t len = strlen(v);
    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;
        len -= 2;
    }
    if (len >= cap)
        len = 0;
    memcpy(out, v, len);
    out[len] = '\0';
}

static void copy_value(char *out, size_t cap, const char *v)
{
    snprintf(out, cap, "%s", v);
}

static void parse_header(response *r, const char *name, const char *v)
{
    if (strcasecmp(name, "X-Repo-Commit") == 0)
        copy_value(r->commit, sizeof r->commit, v);
    else if (strcasecmp(name, "ETag") == 0)
        copy_etag(r->etag, sizeof r->etag, v);
    else if (strcasecmp(name, "X-Linked-Etag") == 0)
        copy_etag(r->linked_etag, sizeof r->linked_etag, v);
    else if (strcasecmp(name, "Content-Length") == 0)
        r->length = strtoll(v, NULL, 10);
    else if (strcasecmp(name, "X-Linked-Size") == 0)
        r->linked_size = strtoll(v, NULL, 10);
    else if (strcasecmp(name, "X-Error-Code") == 0)
        copy_value(r->error_code, sizeof r->error_code, v);
    else if (strcasecmp(name, "X-Error-Message") == 0)
        copy_value(r->error_msg, sizeof r->error_msg, v);
    else if (strcasecmp(name, "Content-Range") == 0 &&
             sscanf(v, "bytes %lld-%*[0-9]/%lld", &r->range_start, &r->range_total) < 1)
        r->range_start = -1;
}

/* CURLOPT_HEADERFUNCTION: one header line per call. A status line starts a
 * new response (curl shows the headers of every redirect). */
static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    response *r = ud;
    size_t len = size * n;
    char line[1024];
    size_t keep = len < sizeof line ? len : sizeof line - 1;
    memcpy(line, data, keep);
    line[keep] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    if (strncmp(line, "HTTP/", 5) == 0) {
        response_reset(r);
        sscanf(line, "%*s %ld", &r->status);
        return len;
    }
    char *colon = strchr(line, ':');
    if (colon == NULL)
        return len;
    *colon = '\0';
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    parse_header(r, line, v);
    return len;
}

static void curl_prepare(fetch *f, const char *url, response *r)
{
    CURL *c = f->curl;
    curl_easy_reset(c);
    f->curl_err[0] = '\0';
    response_reset(r);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, f->curl_err);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, f->o->timeout_s);
    /* A stalled transfer (under 1 byte/s for timeout_s) counts as broken. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, f->o->timeout_s);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "embedd");
    if (f->o->token != NULL) {
        /* curl sends it to the endpoint's host only, never to the CDN a
         * redirect leads to. */
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
        curl_easy_setopt(c, CURLOPT_XOAUTH2_BEARER, f->o->token);
    }
}

/* The message of a transfer that failed at the network level. */
static int fail_network(const fetch *f, const char *url, CURLcode rc, emb_err *err)
{
    const char *why = f->curl_err[0] != '\0' ? f->curl_err : curl_easy_strerror(rc);
    return emb_fail(err, "cannot reach %s: %s", url, why);
}

/* HEAD of path at rev, following only redirects without an X-Repo-Commit
 * (a renamed repository); an LFS file's 302 carries the metadata itself.
 * Returns 0, or -2 on a network failure. */
static int head_file(fetch *f, const char *rev, const char *path, response *r, emb_err *err)
{
    char url[URL_MAX];
    if (resolve_url(f, rev, path, url, sizeof url, err) != 0)
        return -1;
    for (int hop = 0;; hop++) {
        curl_prepare(f, url, r);
        curl_easy_setopt(f->curl, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(f->curl, CURLOPT_TIMEOUT, 2 * f->o->timeout_s);
        CURLcode rc = curl_easy_perform(f->curl);
        if (rc != CURLE_OK) {
            fail_network(f, url, rc, err);
            return -2;
        }
        char *next = NULL;
        int redirect = r->status >= 300 && r->status < 400 && r->commit[0] == '\0';
        if (redirect && hop < MAX_HOPS &&
            curl_easy_getinfo(f->curl, CURLINFO_REDIRECT_URL, &next) == CURLE_OK &&
            next != NULL && strlen(next) < sizeof url) {
            snprintf(url, sizeof url, "%s", next);
            continue;
        }
        return 0;
    }
}

/* Turns an error status into a message. Returns 0 for success, 1 when the
 * file does not exist in an existing repository and revision, -1 for
 * other errors. */
static int check_status(const fetch *f, const char *path, const response *r, emb_err *err)
{
    const long s = r->status;
    const char *id = f->ref.id;
    if (s >= 200 && s < 400)
        return 0;
    if (s == 401 || s == 403) {
        if (strcmp(r->error_code, "GatedRepo") == 0)
            return emb_fail(err,
                            "%s is gated (HTTP %ld): accept its conditions on the Hub, then set "
                            "HF_TOKEN to a token of that account",
                            id, s);
        if (f->o->token != NULL)
            return emb_fail(err,
                            "%s: HTTP %ld: the token in HF_TOKEN has no access to it (or it "
                            "does not exist)",
                            id, s);
        return emb_fail(err,
                        "%s: HTTP %ld: it is private or gated, or does not exist; set HF_TOKEN "
                        "to a token with access",
                        id, s);
    }
    if (s == 404 && strcmp(r->error_code, "RepoNotFound") == 0)
        return emb_fail(err, "no model %s on %s (404)", id, f->o->endpoint);
    if (s == 404 && strcmp(r->error_code, "RevisionNotFound") == 0)
        return emb_fail(err, "%s has no revision '%s' (404)", id, f->ref.revision);
    if (s == 404)
        return 1;
    return emb_fail(err, "%s: HTTP %ld for %s%s%s", id, s, path, r->error_msg[0] ? ": " : "",
                    r->error_msg);
}

typedef struct file_meta {
    char commit[64];
    char etag[160];            /* the blob's name */
    long long size;
} file_meta;

/* The file's commit, blob name and size from a successful HEAD. */
static int read_meta(const fetch *f, const char *path, const response *r, file_meta *m,
                     emb_err *err)
{
    const char *etag = r->linked_etag[0] != '\0' ? r->linked_etag : r->etag;
    m->size = r->linked_size >= 0 ? r->linked_size : r->length;
    if (r->status >= 300 && r->linked_size < 0)
        m->size = -1; /* a redirect's Content-Length is not the file's */
    if (r->commit[0] == '\0' || etag[0] == '\0' || m->size < 0)
        return emb_fail(err,
                        "%s: the answer for %s lacks X-Repo-Commit, ETag or the size; is "
                        "HF_ENDPOINT (%s) a Hugging Face Hub?",
                        f->ref.id, path, f->o->endpoint);
    if (!safe_name(r->commit, strlen(r->commit)) || !safe_name(etag, strlen(etag)))
        return emb_fail(err, "%s: the Hub sent an unusable commit or ETag for %s", f->ref.id,
                        path);
    snprintf(m->commit, sizeof m->commit, "%s", r->commit);
    snprintf(m->etag, sizeof m->etag, "%s", etag);
    return 0;
}

/* The first file fixes the commit (and the snapshot directory); later
 * files are asked for by that commit, so they must agree. */
static int pin_commit(fetch *f, const char *commit, emb_err *err)
{
    if (f->commit[0] != '\0') {
        if (strcmp(f->commit, commit) == 0)
            return 0;
        return emb_fail(err, "%s: the Hub answered commit %s while fetching commit %s",
                        f->ref.id, commit, f->commit);
    }
    snprintf(f->commit, sizeof f->commit, "%s", commit);
    if (path_fmt(f->snapshot, sizeof f->snapshot, err, "%s/snapshots/%s", f->repo_dir,
                 commit) != 0)
        return -1;
    return make_dirs(f->snapshot, err);
}

/* ---- downloads -------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Where a GET's body goes: the .incomplete file. */
typedef struct sink {
    FILE *fp;
    const response *r;
    long long offset;          /* bytes already in the file when the GET began */
    long long total;           /* the announced size */
    int started;               /* the final response's first byte has been seen */
    int discard;               /* an error response: its body is not the file */
    char why[256];             /* why the body callback stopped the transfer */
    const hub_opts *o;
    const char *name;
    double last_draw;
} sink;

static void draw_bar(FILE *fp, const char *name, long long done, long long total)
{
    int pct = total > 0 ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct > 100)
        pct = 100;
    char bar[BAR_WIDTH + 1];
    int fill = pct * BAR_WIDTH / 100;
    memset(bar, '#', (size_t)fill);
    memset(bar + fill, '.', (size_t)(BAR_WIDTH - fill));
    bar[BAR_WIDTH] = '\0';
    int mega = total >= 1000000;
    fprintf(fp, "\r  %-28.28s [%s] %3d%% of %.1f %s", name, bar, pct,
            (double)total / (mega ? 1e6 : 1e3), mega ? "MB" : "kB");
    fflush(fp);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    sink *s = ud;
    double t = now_seconds();
    if (t - s->last_draw >= 0.1) {
        s->last_draw = t;
        draw_bar(s->o->log, s->name, s->offset + (long long)dlnow, s->total);
    }
    return 0;
}

/* Before the first byte of the final response: a 206 must continue exactly
 * where the file ends; a 200 starts the file over. */
static int sink_start(sink *s)
{
    const response *r = s->r;
    s->started = 1;
    if (r->status == 206) {
        if (r->range_start != s->offset || (r->range_total >= 0 && r->range_total != s->total)) {
            snprintf(s->why, sizeof s->why,
                     "asked for bytes %lld- of %lld, the server sent a range from %lld of %lld",
                     s->offset, s->total, r->range_start, r->range_total);
            return -1;
        }
        return 0;
    }
    if (r->status != 200) {
        s->discard = 1;
        return 0;
    }
    if (s->offset > 0 && (fflush(s->fp) != 0 || ftruncate(fileno(s->fp), 0) != 0)) {
        snprintf(s->why, sizeof s->why, "cannot truncate: %s", strerror(errno));
        return -1;
    }
    s->offset = 0;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    sink *s = ud;
    size_t len = size * n;
    if (!s->started && sink_start(s) != 0)
        return 0;
    if (s->discard)
        return len;
    if (fwrite(data, 1, len, s->fp) != len) {
        snprintf(s->why, sizeof s->why, "write error: %s", strerror(errno));
        return 0;
    }
    return len;
}

/* One GET of url into part, from its current end. Returns 0 when the
 * response completed, 1 when the transfer broke off (worth another try),
 * -1 on other errors. */
static int get_once(fetch *f, const char *url, const char *path, const char *part,
                    long long have, long long total, emb_err *err)
{
    response r;
    sink s = {.r = &r, .offset = have, .total = total, .o = f->o, .name = path};
    s.fp = fopen(part, "ab");
    if (s.fp == NULL)
        return emb_fail(err, "cannot write %s: %s", part, strerror(errno));
    curl_prepare(f, url, &r);
    curl_easy_setopt(f->curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(f->curl, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(f->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(f->curl, CURLOPT_WRITEDATA, &s);
    char range[48];
    snprintf(range, sizeof range, "%lld-", have);
    if (have > 0) /* not CURLOPT_RESUME_FROM: a 200 must start over, not fail */
        curl_easy_setopt(f->curl, CURLOPT_RANGE, range);
    if (f->o->progress && f->o->log != NULL) {
        curl_easy_setopt(f->curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(f->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(f->curl, CURLOPT_XFERINFODATA, &s);
    }
    CURLcode rc = curl_easy_perform(f->curl);
    int closed = fclose(s.fp) == 0;
    if (s.why[0] != '\0')
        return emb_fail(err, "%s: %s", part, s.why);
    if (!closed)
        return emb_fail(err, "cannot write %s: %s", part, strerror(errno));
    if (rc != CURLE_OK) {
        fail_network(f, url, rc, err);
        return 1;
    }
    if (r.status == 416) {
        unlink(part); /* the server will not resume it: start over */
        emb_fail(err, "%s: the server refused to resume %s", f->ref.id, path);
        return 1;
    }
    if (r.status >= 500) {
        emb_fail(err, "%s: HTTP %ld for %s", f->ref.id, r.status, path);
        return 1;
    }
    if (r.status != 200 && r.status != 206) {
        if (check_status(f, path, &r, err) >= 0)
            emb_fail(err, "%s: HTTP %ld for %s", f->ref.id, r.status, path);
        return -1;
    }
    return 0;
}

/* Downloads path (by the pinned commit) into part until it has m->size
 * bytes, resuming after breaks up to o->retries times. */
static int download(fetch *f, const char *path, const file_meta *m, const char *part,
                    emb_err *err)
{
    char url[URL_MAX];
    if (resolve_url(f, f->commit, path, url, sizeof url, err) != 0)
        return -1;
    for (int attempt = 0;; attempt++) {
        long long have = file_size(part);
        if (have > m->size) {
            unlink(part);
            have = -1;
        }
        if (have == m->size)
            break;
        int rc = get_once(f, url, path, part, have < 0 ? 0 : have, m->size, err);
        if (rc == 0)
            break;
        if (rc < 0 || attempt >= f->o->retries)
            return -1;
        if (f->o->log != NULL)
            fprintf(f->o->log, "%sembedd: %s; resuming (%d of %d)\n", f->o->progress ? "\n" : "",
                    err->msg, attempt + 1, f->o->retries);
    }
    long long got = file_size(part);
    if (got != m->size) {
        unlink(part);
        return emb_fail(err, "%s: %s has %lld bytes, but the Hub announced %lld", f->ref.id,
                        path, got, m->size);
    }
    return 0;
}

/* Exclusive lock of one blob, shared with huggingface_hub's .locks folder.
 * Returns the descriptor to close, or -1. */
static int lock_blob(const fetch *f, const char *etag, emb_err *err)
{
    char path[PATH_MAX];
    if (make_dirs(f->lock_dir, err) != 0 ||
        path_fmt(path, sizeof path, err, "%s/%s.lock", f->lock_dir, etag) != 0)
        return -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return emb_fail(err, "cannot create %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX) != 0) {
        close(fd);
        return emb_fail(err, "cannot lock %s: %s", path, strerror(errno));
    }
    return fd;
}

/* Makes blobs/<etag> complete: nothing to do when it already is. */
static int blob_fetch(fetch *f, const char *path, const file_meta *m, emb_err *err)
{
    char blob[PATH_MAX];
    char part[PATH_MAX];
    if (path_fmt(blob, sizeof blob, err, "%s/blobs/%s", f->repo_dir, m->etag) != 0 ||
        path_fmt(part, sizeof part, err, "%s.incomplete", blob) != 0)
        return -1;
    if (file_size(blob) == m->size)
        return 0;
    int lock = lock_blob(f, m->etag, err);
    if (lock < 0)
        return -1;
    int rc = 0;
    if (file_size(blob) != m->size) { /* not finished by another process meanwhile */
        unlink(blob);
        rc = download(f, path, m, part, err);
        if (rc == 0 && rename(part, blob) != 0)
            rc = emb_fail(err, "cannot rename %s: %s", part, strerror(errno));
        if (rc == 0 && f->o->log != NULL && f->o->progress)
            draw_bar(f->o->log, path, m->size, m->size);
        if (f->o->log != NULL && f->o->progress)
            fputc('\n', f->o->log);
        if (rc == 0 && f->o->log != NULL && !f->o->progress)
            fprintf(f->o->log, "embedd: downloaded %s (%lld bytes)\n", path, m->size);
    }
    close(lock);
    return rc;
}

/* snapshots/<commit>/<path> -> ../../blobs/<etag> (one more ../ per folder
 * in path), replaced atomically when it points elsewhere. */
static int link_snapshot(const fetch *f, const char *path, const char *etag, emb_err *err)
{
    char link[PATH_MAX], tmp[PATH_MAX], target[PATH_MAX] = "", cur[PATH_MAX];
    if (path_fmt(link, sizeof link, err, "%s/%s", f->snapshot, path) != 0 ||
        path_fmt(tmp, sizeof tmp, err, "%s.embedd-tmp", link) != 0)
        return -1;
    for (const char *p = path; *p != '\0'; p++) {
        if (*p == '/')
            strcat(target, "../");
    }
    size_t used = strlen(target);
    if (path_fmt(target + used, sizeof target - used, err, "../../blobs/%s", etag) != 0)
        return -1;
    ssize_t n = readlink(link, cur, sizeof cur - 1);
    if (n >= 0) {
        cur[n] = '\0';
        if (strcmp(cur, target) == 0)
            return 0;
    }
    if (make_parent(link, err) != 0)
        return -1;
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, link) != 0) {
        emb_fail(err, "cannot create the link %s: %s", link, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* .no_exist/<commit>/<path>: huggingface_hub's marker of a known 404. */
static void mark_missing(const fetch *f, const char *path)
{
    char marker[PATH_MAX];
    emb_err ignored;
    if (path_fmt(marker, sizeof marker, &ignored, "%s/.no_exist/%s/%s", f->repo_dir, f->commit,
                 path) != 0 ||
        make_parent(marker, &ignored) != 0)
        return;
    int fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
}

/* Fetches one file into the snapshot. Returns 0, 1 when the repository
 * has no such file, -1 on errors and -2 on network failures. */
static int fetch_file(fetch *f, const char *path, emb_err *err)
{
    response r;
    const char *rev = f->commit[0] != '\0' ? f->commit : f->ref.revision;
    int rc = head_file(f, rev, path, &r, err);
    if (rc != 0)
        return rc;
    rc = check_status(f, path, &r, err);
    if (rc == 1 && f->commit[0] != '\0')
        mark_missing(f, path);
    if (rc != 0)
        return rc;
    file_meta m;
    if (read_meta(f, path, &r, &m, err) != 0 || pin_commit(f, m.commit, err) != 0 ||
        blob_fetch(f, path, &m, err) != 0)
        return -1;
    return link_snapshot(f, path, m.etag, err);
}

/* A file the model cannot do without. */
static int fetch_required(fetch *f, const char *path, emb_err *err)
{
    int rc = fetch_file(f, path, err);
    if (rc == 1)
        return emb_fail(err, "%s@%s has no %s (404): check the model id and revision",
                        f->ref.id, f->ref.revision, path);
    return rc;
}

/* A snapshot file parsed as JSON; NULL when absent or invalid. */
static cJSON *read_snapshot_json(const fetch *f, const char *name)
{
    char path[PATH_MAX];
    emb_err ignored;
    if (path_fmt(path, sizeof path, &ignored, "%s/%s", f->snapshot, name) != 0)
        return NULL;
    char *text = read_small(path, MAX_INDEX_BYTES);
    cJSON *root = text != NULL ? cJSON_Parse(text) : NULL;
    free(text);
    return root;
}

/* The class name at the end of a dotted module type. */
static const char *module_class(const char *type)
{
    const char *dot = strrchr(type, '.');
    return dot != NULL ? dot + 1 : type;
}

/* A Dense module's config.json and weights (folder from modules.json). */
static int fetch_dense(fetch *f, const char *folder, emb_err *err)
{
    char path[320];
    snprintf(path, sizeof path, "%s/config.json", folder);
    int rc = fetch_required(f, path, err);
    if (rc != 0)
        return rc;
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    rc = fetch_file(f, path, err);
    if (rc == 1)
        return emb_fail(err,
                        "%s@%s: the Dense module in %s has no model.safetensors; embedd reads "
                        "safetensors weights only (a pytorch_model.bin must be re-saved as "
                        "safetensors)",
                        f->ref.id, f->ref.revision, folder);
    return rc;
}

/* The files of the modules modules.json lists after the Transformer: the
 * Pooling module's config.json (optional) and each Dense module's
 * config.json and model.safetensors (required). Without modules.json, or
 * without a Pooling entry in it, 1_Pooling/config.json, as the loader
 * reads it. Entries with unsafe paths are left to the loader to reject. */
static int fetch_modules(fetch *f, emb_err *err)
{
    cJSON *root = read_snapshot_json(f, "modules.json");
    const cJSON *list = cJSON_IsArray(root) ? root : NULL;
    int rc = 0, have_pooling = 0;
    const cJSON *mod;
    cJSON_ArrayForEach(mod, list) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(mod, "type");
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(mod, "path");
        if (!cJSON_IsString(type) || !cJSON_IsString(path) || !safe_path(path->valuestring) ||
            strlen(path->valuestring) > 256)
            continue;
        const char *cls = module_class(type->valuestring);
        char file[320];
        if (strcmp(cls, "Pooling") == 0) {
            have_pooling = 1;
            snprintf(file, sizeof file, "%s/config.json", path->valuestring);
            rc = fetch_file(f, file, err) < 0 ? -1 : 0;
        } else if (strcmp(cls, "Dense") == 0) {
            rc = fetch_dense(f, path->valuestring, err);
        }
        if (rc != 0)
            break;
    }
    cJSON_Delete(root);
    if (rc == 0 && !have_pooling)
        rc = fetch_file(f, "1_Pooling/config.json", err) < 0 ? -1 : 0;
    return rc;
}

/* The shards model.safetensors.index.json names, each once. */
static int fetch_shards(fetch *f, emb_err *err)
{
    cJSON *root = read_snapshot_json(f, "model.safetensors.index.json");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int rc = 0;
    if (!cJSON_IsObject(map))
        rc = emb_fail(err, "%s: model.safetensors.index.json has no \"weight_map\" object",
                      f->ref.id);
    const char *done[MAX_SHARDS];
    int n_done = 0;
    const cJSON *list = rc == 0 ? map : NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const char *name = cJSON_IsString(e) ? e->valuestring : "";
        int seen = 0;
        for (int i = 0; i < n_done && !seen; i++)
            seen = strcmp(done[i], name) == 0;
        if (seen)
            continue;
        if (!safe_name(name, strlen(name)) || n_done == MAX_SHARDS) {
            rc = emb_fail(err, "%s: bad or too many shard names in model.safetensors.index.json",
                          f->ref.id);
            break;
        }
        done[n_done++] = name;
        rc = fetch_required(f, name, err);
        if (rc != 0)
            break;
    }
    cJSON_Delete(root);
    return rc;
}

static int fetch_weights(fetch *f, emb_err *err)
{
    int rc = fetch_file(f, "model.safetensors", err);
    if (rc != 1)
        return rc;
    rc = fetch_file(f, "model.safetensors.index.json", err);
    if (rc == 1)
        return emb_fail(err,
                        "%s@%s has neither model.safetensors nor model.safetensors.index.json "
                        "(embedd reads safetensors weights only)",
                        f->ref.id, f->ref.revision);
    return rc != 0 ? rc : fetch_shards(f, err);
}

/* Every file embedd reads, in the order that makes sense of 404s: the
 * required config.json first, so a wrong name or revision fails there. */
static int fetch_all(fetch *f, emb_err *err)
{
    static const char *const optional[] = {
        "tokenizer_config.json", "special_tokens_map.json", "modules.json",
        "sentence_bert_config.json", "config_sentence_transformers.json",
    };
    int rc = fetch_required(f, "config.json", err);
    if (rc != 0)
        return rc;
    rc = fetch_file(f, "tokenizer.json", err);
    if (rc == 1)
        rc = fetch_file(f, "vocab.txt", err);
    if (rc == 1)
        return emb_fail(err, "%s@%s has neither tokenizer.json nor vocab.txt", f->ref.id,
                        f->ref.revision);
    for (size_t i = 0; rc == 0 && i < sizeof optional / sizeof optional[0]; i++)
        rc = fetch_file(f, optional[i], err) < 0 ? -1 : 0;
    if (rc != 0)
        return rc;
    if (fetch_modules(f, err) != 0)
        return -1;
    return fetch_weights(f, err);
}

/* refs/<revision> = commit (not for a revision that is the commit). */
static int write_ref(const fetch *f, emb_err *err)
{
    char path[PATH_MAX];
    if (strcmp(f->ref.revision, f->commit) == 0)
        return 0;
    if (path_fmt(path, sizeof path, err, "%s/refs/%s", f->repo_dir, f->ref.revision) != 0)
        return -1;
    return write_atomic(path, f->commit, err);
}

/* The cached snapshot of the revision: refs/<revision>, or the revision
 * itself when it is a commit hash. */
static int find_cached(fetch *f, emb_err *err)
{
    char path[PATH_MAX];
    char *commit = NULL;
    if (is_commit_hash(f->ref.revision)) {
        commit = strdup(f->ref.revision);
    } else if (path_fmt(path, sizeof path, err, "%s/refs/%s", f->repo_dir, f->ref.revision) ==
               0) {
        commit = read_small(path, 256);
    }
    if (commit != NULL)
        commit[strcspn(commit, " \t\r\n")] = '\0';
    int found = commit != NULL && safe_name(commit, strlen(commit)) &&
                path_fmt(f->snapshot, sizeof f->snapshot, err, "%s/snapshots/%s", f->repo_dir,
                         commit) == 0 &&
                path_fmt(path, sizeof path, err, "%s/config.json", f->snapshot) == 0 &&
                file_size(path) >= 0;
    free(commit);
    if (!found)
        return emb_fail(err, "%s@%s is not in the cache %s", f->ref.id, f->ref.revision,
                        f->o->cache_dir);
    return 0;
}

static int fetch_online(fetch *f, emb_err *err)
{
    char blobs[PATH_MAX];
    if (path_fmt(blobs, sizeof blobs, err, "%s/blobs", f->repo_dir) != 0 ||
        make_dirs(blobs, err) != 0)
        return -1;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return emb_fail(err, "cannot initialise libcurl");
    f->curl = curl_easy_init();
    int rc = f->curl != NULL ? fetch_all(f, err) : emb_fail(err, "cannot initialise libcurl");
    if (rc == 0)
        rc = write_ref(f, err);
    curl_easy_cleanup(f->curl);
    curl_global_cleanup();
    if (rc == -2 && f->commit[0] == '\0') {
        /* The Hub is unreachable: a cached snapshot will do, as with
         * huggingface_hub. */
        emb_err cache_err;
        if (find_cached(f, &cache_err) == 0) {
            if (f->o->log != NULL)
                fprintf(f->o->log, "embedd: %s; using the cached snapshot %s\n", err->msg,
                        f->snapshot);
            return 0;
        }
    }
    return rc < 0 ? -1 : rc;
}

int hub_fetch(const char *model_id, const hub_opts *o, char *out_dir, size_t cap,
              emb_err *err)
{
    fetch *f = calloc(1, sizeof *f);
    if (f == NULL)
        return emb_fail(err, "out of memory");
    f->o = o;
    int rc = parse_model_id(model_id, &f->ref, err);
    if (rc == 0)
        rc = path_fmt(f->repo_dir, sizeof f->repo_dir, err, "%s/%s", o->cache_dir,
                      f->ref.folder);
    if (rc == 0)
        rc = path_fmt(f->lock_dir, sizeof f->lock_dir, err, "%s/.locks/%s", o->cache_dir,
                      f->ref.folder);
    if (rc == 0 && o->offline) {
        rc = find_cached(f, err);
        if (rc != 0)
            emb_fail(err,
                     "HF_HUB_OFFLINE is set and %s@%s is not in the cache %s; unset it to "
                     "download the model",
                     f->ref.id, f->ref.revision, o->cache_dir);
    } else if (rc == 0) {
        rc = fetch_online(f, err);
    }
    if (rc == 0)
        rc = path_fmt(out_dir, cap, err, "%s", f->snapshot);
    free(f);
    return rc;
}

/* ---- the bundled default model ---------------------------------------- */

int hub_default_model(char *out, size_t cap)
{
    static const char *const rel[] = {"models/embedd-small", "share/embedd/models/embedd-small"};
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(out, cap, "(unknown: cannot read /proc/self/exe)");
        return -1;
    }
    exe[n] = '\0';
    /* /a/b/bin/embedd -> /a/b */
    for (int i = 0; i < 2; i++) {
        char *slash = strrchr(exe, '/');
        if (slash != NULL)
            *slash = '\0';
    }
    char cand[2][PATH_MAX + 64];
    for (int i = 0; i < 2; i++) {
        snprintf(cand[i], sizeof cand[i], "%s/%s", exe, rel[i]);
        char config[PATH_MAX];
        emb_err ignored;
        if (path_fmt(config, sizeof config, &ignored, "%s/config.json", cand[i]) == 0 &&
            file_size(config) >= 0) {
            snprintf(out, cap, "%s", cand[i]);
            return 0;
        }
    }
    snprintf(out, cap, "%s or %s", cand[0], cand[1]);
    return -1;
}
