/* serverproc.c: the server process and HTTP clients shared by the suites
 * that test `embedd serve` over 127.0.0.1 (see serverproc.h). */
#include <check.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "serverproc.h"

#define SERVER_MODEL "tests/fixtures/tiny-f16"

extern char **environ;

extern char **environ;

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The last 2,000 bytes of s: Check refuses longer failure messages. */
const char *tail(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    return s == NULL ? "" : n > 2000 ? s + n - 2000 : s;
}

const char *embedd_bin(void)
{
    const char *b = getenv("EMBEDD_BIN");
    return b != NULL ? b : "build/embedd";
}

/* ---- growable byte buffer ------------------------------------------------ */

void buf_add(buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t want = b->cap < 1024 ? 1024 : b->cap;
        while (want < b->len + n + 1)
            want *= 2;
        b->p = realloc(b->p, want);
        ck_assert(b->p != NULL);
        b->cap = want;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void buf_addf(buf *b, const char *fmt, ...)
{
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    ck_assert(n >= 0 && (size_t)n < sizeof tmp);
    buf_add(b, tmp, (size_t)n);
}

/* ---- the server process -------------------------------------------------- */

server_proc g_srv;

void log_append(server_log *l, const char *p, size_t n)
{
    size_t len = atomic_load(&l->len);
    if (n > sizeof l->text - 1 - len)
        n = sizeof l->text - 1 - len;
    memcpy(l->text + len, p, n);
    l->text[len + n] = '\0';
    atomic_store(&l->len, len + n);
}

/* The drain process: copies the pipe into the log until EOF. */
void drain_main(server_log *l, int fd)
{
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        log_append(l, chunk, (size_t)n);
    }
    _exit(0);
}

/* The environment without EMBEDD_* variables, which serve reads as options
 * (EMBEDD_API_KEY would change every test). Built before fork. */
char **server_env(void)
{
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = calloc(n + 1, sizeof *env);
    ck_assert(env != NULL);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "EMBEDD_", 7) != 0 ||
            strncmp(environ[i], "EMBEDD_DEBUG_", 13) == 0)
            env[k++] = environ[i];
    }
    env[k] = NULL;
    return env;
}

/* Starts `embedd serve --model MODEL --host 127.0.0.1 --port 0 EXTRA...` and
 * waits (15 s at most) for its "listening on" line. Returns 0, or -1 after
 * printing why. Must run on the thread that will outlive the server (it dies
 * with that thread: PR_SET_PDEATHSIG). */
int srv_start(server_proc *s, const char *const *extra)
{
    server_log *slog = s->slog; /* reused when this struct started a server before */
    memset(s, 0, sizeof *s);
    s->err_fd = -1;
    if (slog == NULL)
        slog = mmap(NULL, sizeof *slog, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slog == MAP_FAILED)
        return -1;
    s->slog = slog;
    atomic_init(&s->slog->len, 0);
    s->slog->text[0] = '\0';
    s->log = s->slog->text;
    const char *argv[48];
    int a = 0;
    argv[a++] = embedd_bin();
    argv[a++] = "serve";
    argv[a++] = "--model";
    argv[a++] = SERVER_MODEL;
    argv[a++] = "--host";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--port";
    argv[a++] = "0";
    for (int i = 0; extra != NULL && extra[i] != NULL && a < 47; i++)
        argv[a++] = extra[i];
    argv[a] = NULL;
    char **env = server_env();
    char exec_failed[600];
    int exec_failed_len = snprintf(exec_failed, sizeof exec_failed,
                                   "%s: cannot run %s (set EMBEDD_BIN)\n", program_invocation_short_name, argv[0]);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        free(env);
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(fds[1], 2);
        execve(argv[0], (char *const *)argv, env);
        if (write(2, exec_failed, (size_t)exec_failed_len) < 0)
            _exit(126);
        _exit(127);
    }
    free(env);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    s->pid = pid;
    s->err_fd = fds[0];
    const char *marker = "listening on http://127.0.0.1:";
    double deadline = now_s() + 15.0;
    while (s->port == 0) {
        int left_ms = (int)((deadline - now_s()) * 1000);
        struct pollfd pfd = {.fd = s->err_fd, .events = POLLIN};
        if (left_ms <= 0 || poll(&pfd, 1, left_ms) <= 0)
            break;
        char chunk[1024];
        ssize_t n = read(s->err_fd, chunk, sizeof chunk);
        if (n <= 0)
            break;
        log_append(s->slog, chunk, (size_t)n);
        const char *at = strstr(s->log, marker);
        if (at != NULL && strchr(at, '\n') != NULL)
            s->port = atoi(at + strlen(marker));
    }
    if (s->port <= 0) {
        fprintf(stderr, "%s: server did not start; its stderr:\n%s\n", program_invocation_short_name, s->log);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        close(s->err_fd);
        s->pid = 0;
        s->err_fd = -1;
        return -1;
    }
    s->drain_pid = fork();
    if (s->drain_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        drain_main(s->slog, s->err_fd);
    }
    close(s->err_fd);
    s->err_fd = -1;
    return 0;
}

/* Waits for the server to exit; returns its wait status, or -1 on timeout. */
int srv_wait(server_proc *s, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) {
            s->pid = 0;
            return st;
        }
        if (r < 0 || now_s() > deadline)
            return -1;
        usleep(5000);
    }
}

/* Releases what srv_start took once the process is gone. */
void srv_release(server_proc *s)
{
    if (s->drain_pid > 0)
        waitpid(s->drain_pid, NULL, 0);
    s->drain_pid = 0;
    if (s->err_fd >= 0)
        close(s->err_fd);
    s->err_fd = -1;
}

/* SIGTERM, then SIGKILL after 10 s. Returns the wait status (-1: killed). */
int srv_stop(server_proc *s)
{
    if (s->pid <= 0)
        return -1;
    kill(s->pid, SIGTERM);
    int st = srv_wait(s, 10.0);
    if (st == -1 && s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
    srv_release(s);
    return st;
}

void fixture_start(const char *const *extra)
{
    if (srv_start(&g_srv, extra) != 0)
        g_srv.port = 0;
}

void fixture_stop(void)
{
    int st = srv_stop(&g_srv);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fprintf(stderr, "%s: server exit status %d; its stderr:\n%s\n", program_invocation_short_name, st, g_srv.log);
}

TCase *tcase_with_server(Suite *s, const char *name, void (*setup)(void), int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_add_unchecked_fixture(tc, setup, fixture_stop);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

/* ---- HTTP with libcurl --------------------------------------------------- */

void resp_free(http_resp *r)
{
    free(r->body.p);
    free(r->hdr.p);
    memset(r, 0, sizeof *r);
}

size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    buf_add(ud, p, size * n);
    return size * n;
}

/* Sends one request to 127.0.0.1:port. headers: NULL-terminated, may be
 * NULL. body may be NULL (no body). Returns the status (0: no answer). */
long http_port(int port, const char *method, const char *path, const char *body,
                 const char *const *headers, http_resp *r)
{
    return http_port_bytes(port, method, path, body, body != NULL ? strlen(body) : 0, headers,
                           r);
}

long http_port_bytes(int port, const char *method, const char *path, const char *body,
                     size_t len, const char *const *headers, http_resp *r)
{
    memset(r, 0, sizeof *r);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    ck_assert(c != NULL);
    struct curl_slist *hl = NULL;
    hl = curl_slist_append(hl, "Content-Type: application/json");
    for (int i = 0; headers != NULL && headers[i] != NULL; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r->hdr);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (strcmp(method, "GET") != 0 || body != NULL)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    double t0 = now_s();
    CURLcode rc = curl_easy_perform(c);
    r->seconds = now_s() - t0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->body.p == NULL)
        buf_add(&r->body, "", 0);
    if (r->hdr.p == NULL)
        buf_add(&r->hdr, "", 0);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return r->status;
}

long http(const char *method, const char *path, const char *body, http_resp *r)
{
    return http_port(g_srv.port, method, path, body, NULL, r);
}

/* The value of header `name` in r (static copy), or NULL. */
const char *header_value(const http_resp *r, const char *name)
{
    static char val[256];
    size_t nl = strlen(name);
    for (const char *line = r->hdr.p; line != NULL && *line != '\0';) {
        const char *end = strstr(line, "\r\n");
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        if (len > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = len - (size_t)(v - line);
            if (vl >= sizeof val)
                vl = sizeof val - 1;
            memcpy(val, v, vl);
            val[vl] = '\0';
            return val;
        }
        line = end != NULL ? end + 2 : NULL;
    }
    return NULL;
}

cJSON *json_of(const http_resp *r)
{
    cJSON *j = cJSON_Parse(r->body.p);
    ck_assert_msg(j != NULL, "response is not JSON: %.300s", r->body.p);
    return j;
}

/* TEI error: {"error": "...", "error_type": type}, nothing else. */
void check_tei_error(const http_resp *r, long status, const char *type, const char *what)
{
    ck_assert_msg(r->status == status, "%s: status %ld, want %ld: %.200s", what, r->status, status,
                  r->body.p);
    const char *ct = header_value(r, "Content-Type");
    ck_assert_msg(ct != NULL && strncmp(ct, "application/json", 16) == 0, "%s: content-type %s",
                  what, ct != NULL ? ct : "(none)");
    cJSON *j = json_of(r);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "error_type");
    ck_assert_msg(cJSON_IsObject(j) && cJSON_GetArraySize(j) == 2, "%s: shape %s", what, r->body.p);
    ck_assert_msg(cJSON_IsString(e) && e->valuestring[0] != '\0', "%s: error %s", what, r->body.p);
    ck_assert_msg(cJSON_IsString(t) && strcmp(t->valuestring, type) == 0,
                  "%s: error_type in %s, want %s", what, r->body.p, type);
    cJSON_Delete(j);
}

/* OpenAI error: {"error": {"message", "type", "param", "code"}}. code NULL:
 * JSON null. */
void check_openai_error(const http_resp *r, long status, const char *type,
                        const char *code, const char *what)
{
    ck_assert_msg(r->status == status, "%s: status %ld, want %ld: %.200s", what, r->status, status,
                  r->body.p);
    cJSON *j = json_of(r);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_msg(cJSON_IsObject(j) && cJSON_GetArraySize(j) == 1 && cJSON_IsObject(e),
                  "%s: shape %s", what, r->body.p);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "param");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
    ck_assert_msg(cJSON_IsString(m) && m->valuestring[0] != '\0', "%s: message in %s", what,
                  r->body.p);
    ck_assert_msg(cJSON_IsString(t) && strcmp(t->valuestring, type) == 0, "%s: type in %s", what,
                  r->body.p);
    ck_assert_msg(p != NULL && (cJSON_IsNull(p) || cJSON_IsString(p)), "%s: param in %s", what,
                  r->body.p);
    if (code == NULL)
        ck_assert_msg(cJSON_IsNull(c), "%s: code should be null in %s", what, r->body.p);
    else
        ck_assert_msg(cJSON_IsString(c) && strcmp(c->valuestring, code) == 0,
                      "%s: code in %s, want %s", what, r->body.p, code);
    cJSON_Delete(j);
}

/* ---- raw sockets ----------------------------------------------------------- */

/* Binds src first when it is not NULL (any 127.x address works on
 * loopback), so a client can come from another source address. */
int connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    if (src != NULL) {
        ck_assert(inet_pton(AF_INET, src, &sa.sin_addr) == 1);
        ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind %s: %s", src,
                      strerror(errno));
    }
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int raw_connect(int port)
{
    int fd = connect_from(NULL, port);
    ck_assert_msg(fd >= 0, "connect: %s", strerror(errno));
    return fd;
}

void raw_send(int fd, const char *data, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
        ck_assert_msg(w > 0, "send: %s", strerror(errno));
        data += w;
        n -= (size_t)w;
    }
}

/* Headers of a POST with a JSON body of body_len bytes. */
void raw_post_headers(int fd, const char *path, size_t body_len, int expect_continue)
{
    char h[512];
    int n = snprintf(h, sizeof h,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     path, body_len, expect_continue ? "Expect: 100-continue\r\n" : "");
    raw_send(fd, h, (size_t)n);
}

/* Reads one response within timeout_s; skips interim 1xx responses.
 * Returns its status, 0 when the connection closed first, -1 on timeout. */
long raw_read_response(int fd, double timeout_s, http_resp *r)
{
    memset(r, 0, sizeof *r);
    buf in = {0};
    double deadline = now_s() + timeout_s;
    long status = -1;
    for (;;) {
        char *hend = in.p != NULL ? strstr(in.p, "\r\n\r\n") : NULL;
        if (hend != NULL) {
            size_t hlen = (size_t)(hend - in.p) + 4;
            long st = strtol(in.p + 9, NULL, 10);
            if (st >= 100 && st < 200) {
                memmove(in.p, in.p + hlen, in.len - hlen + 1);
                in.len -= hlen;
                continue;
            }
            buf_add(&r->hdr, in.p, hlen);
            const char *cl = header_value(r, "Content-Length");
            size_t want = cl != NULL ? strtoul(cl, NULL, 10) : 0;
            if (in.len - hlen >= want) {
                buf_add(&r->body, in.p + hlen, want);
                status = st;
                break;
            }
            free(r->hdr.p);
            memset(&r->hdr, 0, sizeof r->hdr);
        }
        int left_ms = (int)((deadline - now_s()) * 1000);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left_ms <= 0 || poll(&pfd, 1, left_ms) <= 0)
            break;
        char chunk[16384];
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n <= 0) {
            status = 0;
            break;
        }
        buf_add(&in, chunk, (size_t)n);
    }
    free(in.p);
    if (r->body.p == NULL)
        buf_add(&r->body, "", 0);
    if (r->hdr.p == NULL)
        buf_add(&r->hdr, "", 0);
    r->status = status > 0 ? status : 0;
    return status;
}

/* Reads the "100 Continue" that admits a request sent with Expect. */
void raw_expect_continue(int fd)
{
    const char *want = "HTTP/1.1 100 Continue\r\n\r\n";
    char got[64] = {0};
    size_t have = 0, n = strlen(want);
    double deadline = now_s() + 10.0;
    while (have < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int left_ms = (int)((deadline - now_s()) * 1000);
        ck_assert_msg(left_ms > 0 && poll(&pfd, 1, left_ms) > 0, "no 100 Continue");
        ssize_t k = recv(fd, got + have, n - have, 0);
        ck_assert_msg(k > 0, "closed before 100 Continue: '%s'", got);
        have += (size_t)k;
    }
    ck_assert_msg(strcmp(got, want) == 0, "wanted 100 Continue, got '%s'", got);
}

/* Seconds until the peer closes fd (EOF or reset), -1 after timeout_s.
 * Discards anything it sends. */
double raw_wait_closed(int fd, double timeout_s)
{
    return raw_read_until_closed(fd, timeout_s, NULL);
}

double raw_read_until_closed(int fd, double timeout_s, buf *out)
{
    double t0 = now_s();
    for (;;) {
        int left_ms = (int)((t0 + timeout_s - now_s()) * 1000);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left_ms <= 0 || poll(&pfd, 1, left_ms) <= 0)
            return -1;
        char chunk[4096];
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n <= 0)
            return now_s() - t0;
        if (out != NULL)
            buf_add(out, chunk, (size_t)n);
    }
}

/* A request that has been admitted (counted against
 * --max-concurrent-requests) and whose body is held back. */
int hold_request(int port, const char *path, const char *body)
{
    int fd = raw_connect(port);
    raw_post_headers(fd, path, strlen(body), 1);
    raw_expect_continue(fd);
    return fd;
}

/* ---- text ---------------------------------------------------------------- */

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF). */
int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        int extra;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (i + (size_t)extra >= n)
            return 0;
        for (int k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += (size_t)extra + 1;
    }
    return 1;
}
