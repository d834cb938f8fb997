/* serverproc.h: the real `embedd serve` as a child process, and HTTP
 * clients for it (libcurl and raw sockets), shared by the suites that test
 * the server over 127.0.0.1 (test_server, test_input, test_http_edge).
 *
 * How a suite uses it: each TCase that needs a server adds an unchecked
 * fixture whose setup calls fixture_start(extra flags) and whose teardown
 * calls fixture_stop(); the server then runs in the runner process, before
 * Check forks the tests, and its port is g_srv.port (0 when it did not
 * start: tests begin with REQUIRE_SERVER()). Tests that need a server of
 * their own (SIGTERM, restarts) use a local server_proc with srv_start /
 * srv_stop. Requests: http() to g_srv, http_port() to any port; raw_*
 * where the test controls the bytes on the wire. Every response is an
 * http_resp to release with resp_free().
 *
 * The functions assert with Check (ck_assert), so call them from tests or
 * fixtures. Linked into every test binary (Makefile). */
#ifndef EMBEDD_TESTS_SERVERPROC_H
#define EMBEDD_TESTS_SERVERPROC_H

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC, seconds. */
double now_s(void);
/* The last 2,000 bytes of s ("" for NULL): Check refuses longer failure
 * messages. */
const char *tail(const char *s);
/* $EMBEDD_BIN, else build/embedd. */
const char *embedd_bin(void);

/* ---- growable byte buffer ------------------------------------------------ */

/* Always NUL-terminated once written to; {0} is empty. Free p. */
typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

void buf_add(buf *b, const void *data, size_t n);
/* Appends printf output (at most 4095 bytes per call). */
void buf_addf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the server process -------------------------------------------------- */

/* The server's stderr (first 8 MiB; only the pages written cost memory,
 * and a loaded test writes 64 KiB of access lines in a second), in a
 * shared mapping: the runner reads it up to the "listening on" line, then
 * a drain process (not a thread: LeakSanitizer complains in every forked
 * test about threads left running in the parent) appends the rest, and
 * forked tests can read it. */
typedef struct server_log {
    atomic_size_t len;         /* one writer at a time */
    char text[8 << 20];        /* the access log writes a line per request */
} server_log;

typedef struct server_proc {
    pid_t pid;
    pid_t drain_pid;
    int port;
    int err_fd;
    server_log *slog;
    const char *log;           /* slog->text */
} server_proc;

/* The server of the current TCase (started by its unchecked fixture). */
extern server_proc g_srv;

/* Appends to the log (truncating at its size). */
void log_append(server_log *l, const char *p, size_t n);
/* The drain process: copies fd into the log until EOF, then _exit(0). */
void drain_main(server_log *l, int fd);
/* The environment without EMBEDD_* variables (EMBEDD_DEBUG_* kept), which
 * serve reads as options. calloc'ed array of environ's strings. */
char **server_env(void);
/* Starts `embedd serve --model tests/fixtures/tiny-f16 --host 127.0.0.1
 * --port 0 EXTRA...` (extra: NULL-terminated, may be NULL) and waits (15 s
 * at most) for its "listening on" line; s->port is then its port. Returns 0,
 * or -1 after printing why. Must run on the thread that will outlive the
 * server (it dies with that thread: PR_SET_PDEATHSIG). A server_proc may be
 * started again after srv_stop (its log mapping is reused). */
int srv_start(server_proc *s, const char *const *extra);
/* Waits for the server to exit; returns its wait status, or -1 on timeout. */
int srv_wait(server_proc *s, double timeout_s);
/* Releases what srv_start took (drain process, pipe) once the process is gone. */
void srv_release(server_proc *s);
/* SIGTERM, then SIGKILL after 10 s. Returns the wait status (-1: killed). */
int srv_stop(server_proc *s);
/* Unchecked-fixture setup and teardown for g_srv. fixture_start leaves
 * g_srv.port 0 when the server did not start; fixture_stop prints the
 * server's stderr unless it exited with status 0. */
void fixture_start(const char *const *extra);
void fixture_stop(void);
/* A TCase added to s whose unchecked fixture runs setup (a fixture_start
 * call) and fixture_stop, with a timeout in seconds. */
struct Suite;
struct TCase *tcase_with_server(struct Suite *s, const char *name, void (*setup)(void),
                                int timeout);

#define REQUIRE_SERVER() \
    ck_assert_msg(g_srv.port > 0, "the server of this TCase did not start: %s", tail(g_srv.log))

/* ---- HTTP with libcurl --------------------------------------------------- */

typedef struct http_resp {
    long status;               /* 0: no answer */
    buf body;                  /* never NULL after a request */
    buf hdr;                   /* raw header lines, "\r\n"-separated */
    double seconds;            /* time the request took (libcurl) */
} http_resp;

void resp_free(http_resp *r);
/* libcurl write/header callback appending to the buf ud. */
size_t on_body(char *p, size_t size, size_t n, void *ud);
/* Sends one request to 127.0.0.1:port with Content-Type: application/json.
 * headers: NULL-terminated, may be NULL. body may be NULL (no body).
 * Returns the status (0: no answer). */
long http_port(int port, const char *method, const char *path, const char *body,
               const char *const *headers, http_resp *r);
/* The same with a body of len bytes (it may hold NUL or any byte). */
long http_port_bytes(int port, const char *method, const char *path, const char *body,
                     size_t len, const char *const *headers, http_resp *r);
/* http_port to g_srv without extra headers. */
long http(const char *method, const char *path, const char *body, http_resp *r);
/* The value of header `name` (case-insensitive) in r, in a static buffer,
 * or NULL. */
const char *header_value(const http_resp *r, const char *name);
/* r's body parsed (a failed check when it is not JSON); cJSON_Delete it. */
cJSON *json_of(const http_resp *r);
/* Checks a TEI error: the status, application/json, and
 * {"error": "...", "error_type": type}, nothing else. what names the case. */
void check_tei_error(const http_resp *r, long status, const char *type, const char *what);
/* Checks an OpenAI error: {"error": {"message", "type", "param", "code"}}.
 * code NULL: JSON null. */
void check_openai_error(const http_resp *r, long status, const char *type,
                        const char *code, const char *what);

/* ---- raw sockets ----------------------------------------------------------- */

/* A TCP connection (TCP_NODELAY) to 127.0.0.1:port, from source address
 * src ("127.0.0.2"; loopback accepts any 127.x) when not NULL; -1 (errno
 * set) when connect fails. */
int connect_from(const char *src, int port);
/* connect_from(NULL, port), failing the test when it cannot connect. */
int raw_connect(int port);
/* Sends all n bytes (a failed check otherwise). */
void raw_send(int fd, const char *data, size_t n);
/* Sends the headers of a POST with a JSON body of body_len bytes, with
 * "Expect: 100-continue" when expect_continue. */
void raw_post_headers(int fd, const char *path, size_t body_len, int expect_continue);
/* Reads one response (Content-Length framed) within timeout_s; skips
 * interim 1xx responses. Returns its status, 0 when the connection closed
 * first, -1 on timeout. */
long raw_read_response(int fd, double timeout_s, http_resp *r);
/* Reads the "100 Continue" that admits a request sent with Expect (10 s). */
void raw_expect_continue(int fd);
/* Seconds until the peer closes fd (EOF or reset), -1 after timeout_s.
 * Discards anything it sends. */
double raw_wait_closed(int fd, double timeout_s);
/* The same, keeping what the server sends in out. */
double raw_read_until_closed(int fd, double timeout_s, buf *out);
/* A request that has been admitted (counted against
 * --max-concurrent-requests) and whose body is held back; returns its fd. */
int hold_request(int port, const char *path, const char *body);

/* ---- text ---------------------------------------------------------------- */

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF). */
int utf8_valid(const unsigned char *s, size_t n);

#endif
