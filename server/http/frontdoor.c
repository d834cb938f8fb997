/* frontdoor.c: see frontdoor.h. */
#include "frontdoor.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "server.h"

/* The same limits as http.c's refuse_head, checked on the raw head. */
#define MAX_HEAD_BYTES (32 * 1024)
#define MAX_URI_BYTES (16 * 1024)
/* libmicrohttpd keeps a record of about 56 bytes per header line, query
 * argument and cookie in the connection's 128 KiB pool, next to the head
 * itself; when the pool runs out it hangs (http.c). Measured: 2,048
 * arguments in a 4 KiB head hang, so do 1,928 records in a 30 KiB head.
 * These bounds keep the worst case (1,280 records, 32 KiB) near 104 KiB. */
#define MAX_HEADER_FIELDS 256      /* header lines plus cookies */
#define MAX_QUERY_ARGS 1024
/* After a refusal: how long, and how much, we read what the client still
 * sends, so that closing with unread bytes (a reset) does not destroy the
 * response before the client reads it. */
#define DRAIN_SECONDS 1.0
#define DRAIN_MAX_BYTES (256 * 1024)
#define IP_BUCKETS 1024
#define EVENTS_PER_WAIT 64

enum { WANT_NOTHING, WANT_QUIESCE, WANT_STOP };

/* ---- connections per client address --------------------------------------- */

typedef struct ip_slot {
    unsigned char key[17];     /* family tag, then 4 or 16 address bytes */
    int n;
    struct ip_slot *next;
} ip_slot;

/* A connection accepted and not yet handed over (or refused, draining). */
typedef struct waiter {
    int fd;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    double deadline;           /* head: cut after it (--header-timeout); draining: close after it */
    double last_bytes;         /* when the peek last saw new bytes (or accept) */
    size_t seen;               /* bytes the last peek saw */
    int draining;              /* refused: the response is sent, reading the rest */
    size_t drained;
    struct waiter *prev, *next;
} waiter;

/* Waiters in order of deadline (all of a list have the same timeout). The
 * heads' inactivity limit (--timeout) is checked by a scan instead. */
typedef struct waiter_list {
    waiter *first, *last;
} waiter_list;

struct frontdoor {
    server *srv;
    int listen_fd, epoll_fd, wake_fd;
    int port;
    struct MHD_Daemon *daemon;
    struct MHD_Daemon *probes;  /* GET /health and /metrics: their own lane (frontdoor.h) */
    double header_timeout;
    double idle_timeout;       /* --timeout: libmicrohttpd's, for a head that stalls */
    double next_scan;          /* when expire next scans the heads for idleness */
    int max_total, max_per_ip;
    pthread_t thread;
    int stopped;               /* 1 until the thread runs, and after frontdoor_stop */
    /* what the wake_fd asks of the thread: QUIESCE closes the listening
     * socket (signalled on quiesced), STOP ends the thread */
    atomic_int want;
    pthread_cond_t quiesced;
    int listening;             /* under lock: the listening socket is open */
    waiter_list heads, drains;
    pthread_mutex_t lock;      /* guards total and slots */
    int total;
    ip_slot *slots[IP_BUCKETS];
    char peek[MAX_HEAD_BYTES];
};

static size_t ip_key(const struct sockaddr *sa, unsigned char key[17])
{
    memset(key, 0, 17);
    if (sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 5;
    }
    if (sa->sa_family == AF_INET6) {
        key[0] = 6;
        memcpy(key + 1, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 17;
    }
    return 1; /* another family: one shared slot */
}

static unsigned ip_hash(const unsigned char *key, size_t len)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % IP_BUCKETS;
}

/* The slot of this address; created when create is set. Caller holds lock. */
static ip_slot *find_slot(frontdoor *door, const struct sockaddr *sa, int create)
{
    unsigned char key[17];
    size_t len = ip_key(sa, key);
    ip_slot **at = &door->slots[ip_hash(key, len)];
    for (ip_slot *s = *at; s != NULL; s = s->next) {
        if (memcmp(s->key, key, sizeof key) == 0)
            return s;
    }
    if (!create)
        return NULL;
    ip_slot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    memcpy(s->key, key, sizeof key);
    s->next = *at;
    *at = s;
    return s;
}

/* Counts a new connection; 0 (nothing counted) beyond a limit. */
static int admit(frontdoor *door, const struct sockaddr *sa)
{
    pthread_mutex_lock(&door->lock);
    int ok = door->total < door->max_total;
    ip_slot *s = ok ? find_slot(door, sa, 1) : NULL;
    ok = s != NULL && (door->max_per_ip <= 0 || s->n < door->max_per_ip);
    if (ok) {
        s->n++;
        door->total++;
    }
    pthread_mutex_unlock(&door->lock);
    return ok;
}

void frontdoor_release(frontdoor *door, const struct sockaddr *addr)
{
    if (door == NULL || addr == NULL)
        return;
    pthread_mutex_lock(&door->lock);
    ip_slot *s = find_slot(door, addr, 0);
    if (s != NULL && s->n > 0) {
        s->n--;
        door->total--;
    }
    /* An empty slot stays: one per address seen is small, and a client
     * that reconnects does not allocate again. */
    pthread_mutex_unlock(&door->lock);
}

/* ---- waiting connections ------------------------------------------------- */

static void list_push(waiter_list *l, waiter *w)
{
    w->next = NULL;
    w->prev = l->last;
    if (l->last != NULL)
        l->last->next = w;
    else
        l->first = w;
    l->last = w;
}

static void list_unlink(waiter_list *l, waiter *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        l->first = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        l->last = w->prev;
    w->prev = w->next = NULL;
}

static waiter_list *list_of(frontdoor *door, waiter *w)
{
    return w->draining ? &door->drains : &door->heads;
}

/* Closes w's socket (with a reset when abort is set) and frees its slot. */
static void drop(frontdoor *door, waiter *w, int abort)
{
    list_unlink(list_of(door, w), w);
    if (abort) {
        struct linger reset = {.l_onoff = 1, .l_linger = 0};
        setsockopt(w->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    }
    close(w->fd); /* also leaves the epoll set */
    frontdoor_release(door, (const struct sockaddr *)&w->addr);
    free(w);
}

/* ---- the head check -------------------------------------------------------- */

typedef struct verdict {
    int status;                /* 0: acceptable */
    int probe;                 /* GET or HEAD of /health or /metrics */
    api_family api;
    char msg[200];
} verdict;

static int refuse(verdict *v, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(verdict *v, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof v->msg, fmt, ap);
    va_end(ap);
    v->status = status;
    return 1;
}

/* RFC 9110 token characters (methods, header names). */
static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Leading empty lines before the request line are allowed (RFC 9112 2.2). */
static size_t skip_empty_lines(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && (p[i] == '\r' || p[i] == '\n'))
        i++;
    return i;
}

/* Length of the head up to and including its empty line, 0 when not yet
 * complete. Lines end in LF with an optional CR before it. */
static size_t head_length(const char *p, size_t n)
{
    for (size_t i = skip_empty_lines(p, n); i < n; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n')
            return i + 2;
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* The next line of [*at, end): its start and length without CR LF. */
static const char *next_line(const char **at, const char *end, size_t *len)
{
    const char *start = *at;
    const char *nl = memchr(start, '\n', (size_t)(end - start));
    const char *stop = nl != NULL ? nl : end;
    *at = nl != NULL ? nl + 1 : end;
    if (stop > start && stop[-1] == '\r')
        stop--;
    *len = (size_t)(stop - start);
    return start;
}

static int check_version(const char *ver, size_t len, verdict *v)
{
    if (len == 8 && (memcmp(ver, "HTTP/1.1", 8) == 0 || memcmp(ver, "HTTP/1.0", 8) == 0))
        return 0;
    if (len == 8 && memcmp(ver, "HTTP/", 5) == 0 && ver[5] >= '0' && ver[5] <= '9' &&
        ver[6] == '.' && ver[7] >= '0' && ver[7] <= '9')
        return refuse(v, 505, "HTTP version %.8s is not supported (only HTTP/1.0 and HTTP/1.1)",
                      ver);
    return refuse(v, 400, "malformed request line: '%.*s' is not an HTTP version",
                  (int)(len < 20 ? len : 20), ver);
}

static int check_target(const char *target, size_t len, verdict *v)
{
    if (len > MAX_URI_BYTES)
        return refuse(v, 414, "request target of %zu bytes exceeds %d", len, MAX_URI_BYTES);
    const char *query = memchr(target, '?', len);
    if (query == NULL)
        return 0;
    size_t args = 1;
    for (const char *c = query; c < target + len; c++)
        args += *c == '&';
    if (args > MAX_QUERY_ARGS)
        return refuse(v, 414, "request target has %zu query arguments (at most %d)", args,
                      MAX_QUERY_ARGS);
    return 0;
}

/* A health check or a metrics scrape: GET or HEAD of /health or /metrics,
 * with or without a query. */
static int is_probe(const char *method, size_t m, const char *target, size_t t)
{
    int get = (m == 3 && memcmp(method, "GET", 3) == 0) || (m == 4 && memcmp(method, "HEAD", 4) == 0);
    const char *q = memchr(target, '?', t);
    size_t path = q != NULL ? (size_t)(q - target) : t;
    return get && ((path == 7 && memcmp(target, "/health", 7) == 0) ||
                   (path == 8 && memcmp(target, "/metrics", 8) == 0));
}

/* METHOD SP target SP HTTP/x.y. Also sets v->api and v->probe from it. */
static int check_request_line(const char *line, size_t len, verdict *v)
{
    size_t m = 0;
    while (m < len && is_tchar((unsigned char)line[m]))
        m++;
    if (m == 0 || m == len || line[m] != ' ')
        return refuse(v, 400, "malformed request line (want 'METHOD /path HTTP/1.1')");
    const char *target = line + m + 1;
    size_t t = 0;
    while (m + 1 + t < len && (unsigned char)target[t] > ' ' && target[t] != 0x7f)
        t++;
    if (t == 0 || m + 1 + t == len || target[t] != ' ')
        return refuse(v, 400, "malformed request line (want 'METHOD /path HTTP/1.1')");
    v->api = t >= 4 && memcmp(target, "/v1/", 4) == 0 ? API_OPENAI : API_TEI;
    v->probe = is_probe(line, m, target, t);
    const char *ver = target + t + 1;
    if (check_version(ver, len - m - 1 - t - 1, v))
        return 1;
    return check_target(target, t, v);
}

/* What the header lines say about the body's framing. */
typedef struct framing {
    int fields;                /* header lines and cookies (pool records) */
    int n_te, n_cl;
    char te[64];
    uint64_t cl;
} framing;

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

/* Plain digits that fit 64 bits: what libmicrohttpd can parse. */
static int parse_length(const char *s, size_t len, uint64_t *out)
{
    uint64_t n = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || n > (UINT64_MAX - 9) / 10)
            return -1;
        n = n * 10 + (uint64_t)(s[i] - '0');
    }
    *out = n;
    return 0;
}

static int check_field(const char *name, size_t nlen, const char *val, size_t vlen,
                       framing *f, verdict *v)
{
    if (nlen == 14 && strncasecmp(name, "Content-Length", 14) == 0) {
        uint64_t n = 0;
        if (parse_length(val, vlen, &n) != 0)
            return refuse(v, 400, "malformed Content-Length '%.*s'", (int)(vlen < 40 ? vlen : 40),
                          val);
        if (f->n_cl > 0 && n != f->cl)
            return refuse(v, 400, "conflicting Content-Length headers");
        f->n_cl++;
        f->cl = n;
    } else if (nlen == 17 && strncasecmp(name, "Transfer-Encoding", 17) == 0) {
        f->n_te++;
        snprintf(f->te, sizeof f->te, "%.*s", (int)(vlen < 60 ? vlen : 60), val);
    } else if (nlen == 6 && strncasecmp(name, "Cookie", 6) == 0) {
        for (size_t i = 0; i < vlen; i++) /* each cookie is a record too */
            f->fields += val[i] == ';';
    }
    if (f->fields > MAX_HEADER_FIELDS)
        return refuse(v, 431, "more than %d header lines and cookies", MAX_HEADER_FIELDS);
    return 0;
}

static int check_header_line(const char *line, size_t len, framing *f, verdict *v)
{
    if (line[0] == ' ' || line[0] == '\t')
        return refuse(v, 400, "folded header lines (obs-fold) are not accepted");
    size_t n = 0;
    while (n < len && is_tchar((unsigned char)line[n]))
        n++;
    if (n == 0 || n == len || line[n] != ':')
        return refuse(v, 400, "malformed header line '%.*s'", (int)(len < 40 ? len : 40), line);
    const char *val = line + n + 1;
    size_t vlen = len - n - 1;
    trim(&val, &vlen);
    return check_field(line, n, val, vlen, f, v);
}

/* Same rules as http.c's refuse_head: a proxy in front may frame these
 * bytes differently than libmicrohttpd (request smuggling). */
static int check_framing(const framing *f, verdict *v)
{
    if (f->n_te > 1 || (f->n_te == 1 && strcasecmp(f->te, "chunked") != 0))
        return refuse(v, 400, "unsupported Transfer-Encoding '%s' (only a single 'chunked')",
                      f->te);
    if (f->n_te > 0 && f->n_cl > 0)
        return refuse(v, 400,
                      "both Content-Length and Transfer-Encoding: the body's length is ambiguous");
    return 0;
}

/* Checks a complete head of len bytes; 1 with v filled when refused. */
static int check_head(const char *head, size_t len, verdict *v)
{
    memset(v, 0, sizeof *v);
    if (memchr(head, '\0', len) != NULL)
        return refuse(v, 400, "NUL byte in the request head");
    const char *at = head + skip_empty_lines(head, len), *end = head + len;
    size_t llen = 0;
    const char *line = next_line(&at, end, &llen);
    if (check_request_line(line, llen, v))
        return 1;
    framing f = {0};
    while (at < end) {
        line = next_line(&at, end, &llen);
        if (llen == 0)
            break; /* the empty line that ends the head */
        f.fields++;
        if (check_header_line(line, llen, &f, v))
            return 1;
    }
    return check_framing(&f, v);
}

/* A refusal before the head is complete: the request line is there and
 * bad, or the head outgrew its limit. */
static int check_partial(const char *p, size_t n, verdict *v)
{
    memset(v, 0, sizeof *v);
    size_t start = skip_empty_lines(p, n);
    /* Not a method: a TLS hello or other non-HTTP bytes, refused at once. */
    size_t m = start;
    while (m < n && is_tchar((unsigned char)p[m]))
        m++;
    if (m < n && p[m] != ' ' && p[m] != '\r' && p[m] != '\n')
        return refuse(v, 400, "malformed request line (want 'METHOD /path HTTP/1.1')");
    const char *nl = memchr(p + start, '\n', n - start);
    if (nl != NULL) {
        size_t len = (size_t)(nl - (p + start));
        if (len > 0 && p[start + len - 1] == '\r')
            len--;
        if (check_request_line(p + start, len, v))
            return 1;
    }
    if (n >= MAX_HEAD_BYTES)
        return refuse(v, 431, "request head exceeds %d bytes", MAX_HEAD_BYTES);
    return 0;
}

/* ---- answering ------------------------------------------------------------------ */

/* The full response for v into out; its length. */
static size_t format_refusal(const verdict *v, char *out, size_t cap)
{
    reply rp;
    memset(&rp, 0, sizeof rp);
    sb_init(&rp.body, 4096);
    reply_error(&rp, v->api, v->status, "Validation", "%s", v->msg);
    const char *body = rp.body.failed || rp.body.buf == NULL ? "" : rp.body.buf;
    const char *reason = MHD_get_reason_phrase_for((unsigned)v->status);
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     v->status, reason, strlen(body), body);
    sb_free(&rp.body);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Reads and drops what the client sent; 1 when the connection is over. */
static int drain(waiter *w, char *scratch, size_t cap)
{
    for (;;) {
        ssize_t n = recv(w->fd, scratch, cap, MSG_DONTWAIT);
        if (n > 0) {
            w->drained += (size_t)n;
            if (w->drained > DRAIN_MAX_BYTES)
                return 1;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

/* At most this many refusal lines a second: a client (or scanner)
 * sending garbage must not flood the log. */
#define REFUSALS_LOGGED_PER_SECOND 20

/* A warn line for a head refused before a request exists (the access log
 * of http.c never sees it). Only the door's thread calls it. */
static void log_refusal(const waiter *w, const verdict *v)
{
    static double window;
    static int shown, hidden;
    double now = mono_seconds();
    if (now - window >= 1.0) {
        if (hidden > 0)
            log_msg(LOG_WARN, "refused request heads: %d more not shown", hidden);
        window = now;
        shown = hidden = 0;
    }
    if (shown >= REFUSALS_LOGGED_PER_SECOND) {
        hidden++;
        return;
    }
    shown++;
    log_line ln;
    if (!log_begin(&ln, LOG_WARN, "refused request head"))
        return;
    char client[INET6_ADDRSTRLEN + 1] = "-";
    const struct sockaddr *sa = (const struct sockaddr *)&w->addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, client, sizeof client);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, client, sizeof client);
    log_int(&ln, "status", v->status);
    log_str(&ln, "reason", v->msg);
    log_str(&ln, "client", client);
    log_end(&ln);
}

/* Sends the refusal, ends our side, and keeps reading what the client
 * still sends for a moment before closing. */
static void answer_refusal(frontdoor *door, waiter *w, const verdict *v)
{
    char out[1024];
    size_t len = format_refusal(v, out, sizeof out);
    /* A new socket's send buffer is empty: one send takes it all. */
    (void)send(w->fd, out, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(w->fd, SHUT_WR);
    metrics_request(door->srv->mx, "unknown", v->status, 0);
    log_refusal(w, v);
    list_unlink(&door->heads, w);
    w->draining = 1;
    w->deadline = mono_seconds() + DRAIN_SECONDS;
    list_push(&door->drains, w);
    if (drain(w, door->peek, sizeof door->peek))
        drop(door, w, 0);
}

/* libmicrohttpd takes the socket (and closes it, even on failure). */
static void hand_over(frontdoor *door, waiter *w, int probe)
{
    list_unlink(&door->heads, w);
    epoll_ctl(door->epoll_fd, EPOLL_CTL_DEL, w->fd, NULL);
    struct MHD_Daemon *to = probe && door->probes != NULL ? door->probes : door->daemon;
    if (MHD_add_connection(to, w->fd, (const struct sockaddr *)&w->addr,
                           w->addr_len) != MHD_YES)
        frontdoor_release(door, (const struct sockaddr *)&w->addr);
    free(w);
}

/* Peeks at w's head and decides, or leaves it waiting. hangup: the client
 * will send nothing more. */
static void look(frontdoor *door, waiter *w, int hangup)
{
    if (w->draining) {
        if (drain(w, door->peek, sizeof door->peek))
            drop(door, w, 0);
        return;
    }
    ssize_t n = recv(w->fd, door->peek, sizeof door->peek, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        drop(door, w, 0);
        return;
    }
    if ((size_t)n > w->seen) {
        w->seen = (size_t)n;
        w->last_bytes = mono_seconds();
    }
    verdict v;
    size_t len = head_length(door->peek, (size_t)n);
    if (len > 0) {
        if (check_head(door->peek, len, &v))
            answer_refusal(door, w, &v);
        else
            hand_over(door, w, v.probe);
    } else if (check_partial(door->peek, (size_t)n, &v)) {
        answer_refusal(door, w, &v);
    } else if (hangup) {
        drop(door, w, 0); /* half a head and the client is done sending */
    }
}

/* ---- the thread ------------------------------------------------------------------ */

static void accept_one(frontdoor *door, int fd, const struct sockaddr_storage *ss,
                       socklen_t len)
{
    if (!admit(door, (const struct sockaddr *)ss)) {
        close(fd); /* over a connection limit: refused at once */
        return;
    }
    waiter *w = calloc(1, sizeof *w);
    if (w == NULL) {
        close(fd);
        frontdoor_release(door, (const struct sockaddr *)ss);
        return;
    }
    w->fd = fd;
    w->addr = *ss;
    w->addr_len = len;
    w->last_bytes = mono_seconds();
    w->deadline = w->last_bytes + door->header_timeout;
    list_push(&door->heads, w);
    /* Edge-triggered: the bytes stay in the socket (we only peek), so a
     * level-triggered set would report them again at once. Adding an fd
     * with data already there reports it, so nothing is missed. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = w};
    if (epoll_ctl(door->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
        drop(door, w, 0);
}

static void accept_all(frontdoor *door)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(door->listen_fd, (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accept_one(door, fd, &ss, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            usleep(10000); /* out of descriptors: the listening socket stays readable; do not spin */
        return;
    }
}

/* Closes heads with no new byte for --timeout, as libmicrohttpd's own
 * inactivity timeout did before the front door (a plain close, not a cut).
 * A scan every IDLE_SCAN_SECONDS: at most --max-connections entries. */
#define IDLE_SCAN_SECONDS 0.25
static void close_idle(frontdoor *door, double now)
{
    if (door->idle_timeout <= 0 || now < door->next_scan)
        return;
    door->next_scan = now + IDLE_SCAN_SECONDS;
    for (waiter *w = door->heads.first, *next; w != NULL; w = next) {
        next = w->next;
        if (now - w->last_bytes >= door->idle_timeout)
            drop(door, w, 0);
    }
}

/* Cuts heads past their deadline (a reset, counted), closes idle ones, and
 * ends drains. */
static void expire(frontdoor *door, double now)
{
    while (door->heads.first != NULL && door->heads.first->deadline <= now) {
        drop(door, door->heads.first, 1);
        metrics_connection_cut(door->srv->mx, "head");
    }
    close_idle(door, now);
    while (door->drains.first != NULL && door->drains.first->deadline <= now)
        drop(door, door->drains.first, 0);
}

/* Milliseconds until the next deadline; -1: none. */
static int next_wait_ms(frontdoor *door, double now)
{
    double next = -1;
    if (door->heads.first != NULL) {
        next = door->heads.first->deadline;
        if (door->idle_timeout > 0 && door->next_scan < next)
            next = door->next_scan;
    }
    if (door->drains.first != NULL && (next < 0 || door->drains.first->deadline < next))
        next = door->drains.first->deadline;
    if (next < 0)
        return -1;
    double ms = (next - now) * 1000.0 + 1.0;
    return ms < 0 ? 0 : ms > 60000 ? 60000 : (int)ms;
}

/* Stops accepting; connections already here still get their answer. */
static void close_listener(frontdoor *door)
{
    uint64_t count;
    if (read(door->wake_fd, &count, sizeof count) < 0 && errno != EAGAIN)
        log_msg(LOG_ERROR, "frontdoor wake: %s", strerror(errno));
    pthread_mutex_lock(&door->lock);
    if (door->listening) {
        close(door->listen_fd); /* also leaves the epoll set */
        door->listen_fd = -1;
        door->listening = 0;
    }
    pthread_cond_broadcast(&door->quiesced);
    pthread_mutex_unlock(&door->lock);
}

static void *door_main(void *arg)
{
    frontdoor *door = arg;
    struct epoll_event ev[EVENTS_PER_WAIT];
    for (;;) {
        int n = epoll_wait(door->epoll_fd, ev, EVENTS_PER_WAIT, next_wait_ms(door, mono_seconds()));
        for (int i = 0; i < n; i++) {
            if (ev[i].data.ptr == &door->wake_fd) {
                if (atomic_load(&door->want) == WANT_STOP)
                    return NULL;
                close_listener(door);
                continue;
            }
            if (ev[i].data.ptr == door)
                accept_all(door);
            else
                look(door, ev[i].data.ptr, (ev[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
        }
        expire(door, mono_seconds());
    }
}

/* ---- life cycle ------------------------------------------------------------------ */

static int listen_on(const struct sockaddr *addr, socklen_t addr_len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    /* As libmicrohttpd did: a restart binds while old connections linger. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, addr, addr_len) != 0 || listen(fd, SOMAXCONN) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static int watch(frontdoor *door, int fd, void *tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
    return epoll_ctl(door->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
}

frontdoor *frontdoor_open(server *srv, const struct sockaddr *addr, socklen_t addr_len,
                          emb_err *err)
{
    const server_opts *o = &srv->opts;
    frontdoor *door = calloc(1, sizeof *door);
    if (door == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    door->srv = srv;
    door->header_timeout = o->header_timeout;
    door->idle_timeout = o->timeout;
    door->max_total = o->max_connections;
    door->max_per_ip = o->max_connections_per_ip;
    door->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    door->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    door->listen_fd = listen_on(addr, addr_len);
    pthread_mutex_init(&door->lock, NULL);
    pthread_cond_init(&door->quiesced, NULL);
    door->listening = door->listen_fd >= 0;
    door->stopped = 1; /* until the thread starts: nothing to stop */
    if (door->listen_fd < 0 || door->epoll_fd < 0 || door->wake_fd < 0 ||
        watch(door, door->listen_fd, door) != 0 || watch(door, door->wake_fd, &door->wake_fd) != 0) {
        emb_fail(err, "cannot listen on %s:%d: %s", o->host, o->port, strerror(errno));
        frontdoor_free(door);
        return NULL;
    }
    door->port = bound_port(door->listen_fd);
    return door;
}

int frontdoor_port(const frontdoor *door)
{
    return door->port;
}

int frontdoor_start(frontdoor *door, struct MHD_Daemon *daemon, struct MHD_Daemon *probes)
{
    door->daemon = daemon;
    door->probes = probes;
    if (pthread_create(&door->thread, NULL, door_main, door) != 0)
        return -1;
    door->stopped = 0;
    return 0;
}

static void wake(frontdoor *door, int want)
{
    atomic_store(&door->want, want);
    uint64_t one = 1;
    if (write(door->wake_fd, &one, sizeof one) < 0)
        log_msg(LOG_ERROR, "frontdoor wake: %s", strerror(errno));
}

void frontdoor_quiesce(frontdoor *door)
{
    if (door == NULL || door->stopped)
        return;
    wake(door, WANT_QUIESCE);
    pthread_mutex_lock(&door->lock);
    while (door->listening)
        pthread_cond_wait(&door->quiesced, &door->lock);
    pthread_mutex_unlock(&door->lock);
}

void frontdoor_stop(frontdoor *door)
{
    if (door == NULL || door->stopped)
        return;
    door->stopped = 1;
    wake(door, WANT_STOP);
    pthread_join(door->thread, NULL);
    /* The thread is gone: its lists are ours now. */
    if (door->listen_fd >= 0)
        close(door->listen_fd);
    door->listen_fd = -1;
    door->listening = 0;
    while (door->heads.first != NULL)
        drop(door, door->heads.first, 0);
    while (door->drains.first != NULL)
        drop(door, door->drains.first, 0);
}

void frontdoor_free(frontdoor *door)
{
    if (door == NULL)
        return;
    frontdoor_stop(door);
    if (door->listen_fd >= 0)
        close(door->listen_fd);
    if (door->epoll_fd >= 0)
        close(door->epoll_fd);
    if (door->wake_fd >= 0)
        close(door->wake_fd);
    for (int i = 0; i < IP_BUCKETS; i++) {
        while (door->slots[i] != NULL) {
            ip_slot *s = door->slots[i];
            door->slots[i] = s->next;
            free(s);
        }
    }
    pthread_cond_destroy(&door->quiesced);
    pthread_mutex_destroy(&door->lock);
    free(door);
}
