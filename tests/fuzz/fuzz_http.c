/* libFuzzer target: the whole HTTP request path (libmicrohttpd, routing,
 * headers, JSON bodies, tokenising, batching, the in-memory item store).
 *
 * LLVMFuzzerInitialize starts the real server once, in this process, on a
 * thread (cli_serve, as `embedd serve` would: the tiny test model, memory
 * store, --train off, a free loopback port) and waits for /health. Each
 * input is sent as raw bytes over a new loopback connection, the write
 * side is shut down, and the response is read until the server closes.
 * If that takes longer than DEADLINE_MS the server hangs on this input:
 * abort(), so libFuzzer reports it with the input saved. Two exceptions
 * end the exchange early: a response that opens a server-sent-events
 * stream (/train/versions/stream, which by design lasts until shutdown)
 * once its head arrives; and answers that are complete (by Content-Length
 * or the last chunk) with nothing more for IDLE_MS, since libmicrohttpd
 * sometimes keeps a half-closed connection open until --timeout after
 * answering it (harmless to clients, but 1 s per input here).
 *
 * Run from the checkout's root (the model is tests/fixtures/tiny-f16;
 * FUZZ_HTTP_MODEL overrides it). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"

#define DEADLINE_MS 5000
#define OPEN_WAIT_MS 300    /* without a half-close: how long answers may take */
/* Quiet time after whole answers before the next input: libmicrohttpd
 * 0.9.75 may keep a half-closed keep-alive connection open after its
 * answer (until --keepalive-timeout), so "until close" would cost seconds.
 * Short, since a late second answer only matters for reading, not for
 * finding crashes or hangs (a hang is no answer at all within DEADLINE_MS). */
#define IDLE_MS 10
#define KEEP_MAX (1 << 20)  /* answer bytes kept to tell when they are complete */

static int port;

/* A port that was free a moment ago (the server binds it next). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    close(fd);
    return ntohs(a.sin_port);
}

static void *serve_main(void *arg)
{
    char **argv = arg;
    int argc = 0;
    while (argv[argc] != NULL)
        argc++;
    int rc = cli_serve(argc, argv);
    fprintf(stderr, "fuzz_http: the server stopped (exit status %d)\n", rc);
    abort();   /* it must serve until the process ends */
    return NULL;
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0)
        abort();
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static const char *find_ci(const char *from, const char *to, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = from; p + n <= to; p++) {
        if (strncasecmp(p, word, n) == 0)
            return p;
    }
    return NULL;
}

/* 1 when buf holds one or more whole responses and nothing else. */
static int answers_complete(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    while (p < end) {
        const char *head_end = NULL;
        for (const char *q = p; q + 4 <= end; q++) {
            if (memcmp(q, "\r\n\r\n", 4) == 0) {
                head_end = q + 4;
                break;
            }
        }
        if (head_end == NULL)
            return 0;
        const char *cl = find_ci(p, head_end, "\r\nContent-Length:");
        if (find_ci(p, head_end, "\r\nTransfer-Encoding: chunked") != NULL) {
            const char *last = NULL;
            for (const char *q = head_end; q + 5 <= end; q++) {
                if (memcmp(q, "0\r\n\r\n", 5) == 0 && (q == head_end || q[-1] == '\n')) {
                    last = q + 5;
                    break;
                }
            }
            if (last == NULL)
                return 0;
            p = last;
        } else if (cl != NULL) {
            size_t body = (size_t)strtoull(cl + 17, NULL, 10);
            if ((size_t)(end - head_end) < body)
                return 0;
            p = head_end + body;
        } else {
            return 0;   /* ends at close */
        }
    }
    return 1;
}

/* Sends data, half-closes, reads the answer until the server closes. The
 * first bytes of the answer go to head (NUL-terminated). Returns 0, or -1
 * when the deadline passed. */
static int exchange(int fd, const uint8_t *data, size_t size, int half_close, char *head,
                    size_t head_cap)
{
    long long deadline = now_ms() + (half_close ? DEADLINE_MS : OPEN_WAIT_MS);
    size_t sent = 0, got = 0, kept = 0;
    static char keep[KEEP_MAX];
    int wr_open = 1;
    head[0] = '\0';
    for (;;) {
        if (wr_open && sent == size) {
            if (half_close)
                shutdown(fd, SHUT_WR);
            wr_open = 0;
        }
        long long left = deadline - now_ms();
        if (left <= 0)
            return half_close ? -1 : 0;   /* open: the server may rightly wait for more */
        if (!wr_open && kept > 0 && kept < KEEP_MAX && left > IDLE_MS &&
            answers_complete(keep, kept)) {
            struct pollfd idle = {.fd = fd, .events = POLLIN};
            if (poll(&idle, 1, IDLE_MS) == 0)
                return 0;   /* whole answers, and the server is quiet */
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (wr_open ? POLLOUT : 0)};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            abort();
        if (p.revents & POLLOUT) {
            ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                wr_open = 0;   /* the server closed early (an error answer): read it */
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[4096];
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                return 0;
            if (r > 0 && kept < KEEP_MAX) {
                size_t k = (size_t)r < KEEP_MAX - kept ? (size_t)r : KEEP_MAX - kept;
                memcpy(keep + kept, buf, k);
                kept += k;
            }
            if (r > 0 && got + 1 < head_cap) {
                size_t k = (size_t)r < head_cap - 1 - got ? (size_t)r : head_cap - 1 - got;
                memcpy(head + got, buf, k);
                got += k;
                head[got] = '\0';
            }
            if (strstr(head, "text/event-stream") != NULL && strstr(head, "\r\n\r\n") != NULL)
                return 0;   /* a stream: it lasts until shutdown by design */
        }
    }
}

static int health_ok(void)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    int fd = connect_server();
    if (fd < 0)
        return 0;
    char head[256];
    int ok = exchange(fd, (const uint8_t *)req, sizeof req - 1, 1, head, sizeof head) == 0 &&
             strncmp(head, "HTTP/1.1 200", 12) == 0;
    close(fd);
    return ok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char port_arg[16];
    port = free_port();
    snprintf(port_arg, sizeof port_arg, "%d", port);
    const char *model = getenv("FUZZ_HTTP_MODEL");
    static char *args[] = {"serve", "--model", NULL, "--port", port_arg, "--host", "127.0.0.1",
                           "--train", "off", "--threads", "1", "--http-threads", "2",
                           "--timeout", "1", "--max-concurrent-requests", "64",
                           "--payload-limit", "100000", NULL};
    args[2] = (char *)(model != NULL ? model : "tests/fixtures/tiny-f16");
    pthread_t t;
    if (pthread_create(&t, NULL, serve_main, args) != 0)
        abort();
    pthread_detach(t);
    for (int i = 0; i < 600; i++) {
        if (health_ok())
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "fuzz_http: the server did not become healthy on port %d\n", port);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = connect_server();
    if (fd < 0) {
        fprintf(stderr, "fuzz_http: cannot connect to the server\n");
        abort();
    }
    /* Half the inputs half-close after sending: the server must then answer
     * or close within DEADLINE_MS (a hang otherwise). libmicrohttpd drops
     * the answer of a suspended request (an embedding) whose client has
     * half-closed, so the other half keep the connection open, to reach
     * the routes' finish and formatting code too. */
    int half_close = size > 0 && (data[size - 1] & 1);
    char head[1024];
    if (exchange(fd, data, size, half_close, head, sizeof head) != 0) {
        fprintf(stderr, "fuzz_http: no complete answer within %d ms (a hang); answer so far: "
                "%.200s\n", DEADLINE_MS, head);
        abort();
    }
    close(fd);
    return 0;
}
