/* test_sick.c: `embedd serve --data DIR` on a sick disk, as clients and
 * operators see it. The real binary ($EMBEDD_BIN) runs on 127.0.0.1 with
 * the tiny fixture model and --train off; its stderr goes to a file.
 *
 *   injected   EMBEDD_DEBUG_WAL_FAULT makes the third WAL write fail with
 *              ENOSPC (wal.h): 503 with the reason and Retry-After, /health
 *              503 "degraded" (200 with ?for=read), reads go on, the metric
 *              and the log line appear, the next write once due succeeds
 *              without a restart, and after kill -9 every acknowledged
 *              item is there and no refused one.
 *   immutable  the reproduction: chattr +i DATA/wal and back; the
 *              store heals by itself (no write needed) once the file is
 *              writable. Skipped where chattr is refused.
 *   full disk  DATA on a 1 MiB tmpfs filled to the brim: ENOSPC, then space
 *              freed, then writes again. Skipped without CAP_SYS_ADMIN. */
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "run_suite.h"
#include "testutil.h"

#define MODEL "tests/fixtures/tiny-f16"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---- the server process ---------------------------------------------------- */

typedef struct server_proc {
    pid_t pid;
    int port;
    char log[160];             /* its stderr */
} server_proc;

/* Starts serve on DATA with the fault spec (NULL: none) and waits for its
 * "listening on" line; the server dies with the test (PR_SET_PDEATHSIG). */
static void start_server(server_proc *sp, const char *data, const char *fault)
{
    const char *bin = getenv("EMBEDD_BIN") != NULL ? getenv("EMBEDD_BIN") : "build/embedd";
    static int starts;
    snprintf(sp->log, sizeof sp->log, "%s.log.%d", data, ++starts);   /* one per start */
    char fault_env[128];
    snprintf(fault_env, sizeof fault_env, "EMBEDD_DEBUG_WAL_FAULT=%s", fault ? fault : "");
    /* Only what the server needs: no EMBEDD_* option from the test's environment. */
    char *env[] = {"OPENBLAS_CORETYPE=Haswell", "OMP_NUM_THREADS=1", fault_env, NULL};
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(sp->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, 2);
        execle(bin, "embedd", "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", "0",
               "--data", data, "--train", "off", "--threads", "1", (char *)NULL, env);
        _exit(127);
    }
    sp->pid = pid;
    sp->port = 0;
    for (double t0 = now_s(); now_s() - t0 < 30;) {
        char *text = tu_read_file(sp->log, NULL);
        const char *at = text != NULL ? strstr(text, "listening on http://127.0.0.1:") : NULL;
        if (at != NULL)
            sp->port = atoi(at + strlen("listening on http://127.0.0.1:"));
        free(text);
        if (sp->port > 0)
            return;
        int status;
        ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "the server exited at startup");
        sleep_s(0.05);
    }
    ck_abort_msg("the server did not start");
}

static void kill_server(server_proc *sp)
{
    kill(sp->pid, SIGKILL);
    waitpid(sp->pid, NULL, 0);
}

/* Waits (5 s at most) for text in the server's log. */
static int log_has(const server_proc *sp, const char *text)
{
    for (double t0 = now_s(); now_s() - t0 < 5; sleep_s(0.1)) {
        char *log = tu_read_file(sp->log, NULL);
        int found = log != NULL && strstr(log, text) != NULL;
        free(log);
        if (found)
            return 1;
    }
    return 0;
}

/* ---- HTTP -------------------------------------------------------------------- */

typedef struct resp {
    long status;
    char body[8192];
    size_t len;
    char retry_after[16];
} resp;

static size_t on_body(char *p, size_t size, size_t n, void *user)
{
    resp *r = user;
    size_t k = size * n;
    size_t room = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, p, k < room ? k : room);
    r->len += k < room ? k : room;
    r->body[r->len] = '\0';
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *user)
{
    resp *r = user;
    if (size * n > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
        sscanf(p + 12, " %15[0-9]", r->retry_after);
    return size * n;
}

/* body NULL: GET. */
static void http(const server_proc *sp, const char *path, const char *body, resp *r)
{
    memset(r, 0, sizeof *r);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", sp->port, path);
    CURL *c = curl_easy_init();
    ck_assert(c != NULL);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    CURLcode rc = curl_easy_perform(c);
    ck_assert_msg(rc == CURLE_OK, "%s: %s", path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
}

/* Upserts item id (with a payload of pad bytes, 0: none); returns the status. */
static long put_item(const server_proc *sp, int id, size_t pad, resp *r)
{
    char *body = malloc(pad + 256);
    ck_assert(body != NULL);
    int n = snprintf(body, 256, "{\"items\":[{\"id\":%d,\"text\":\"item number %d\"", id, id);
    if (pad > 0) {
        n += snprintf(body + n, 32, ",\"payload\":{\"pad\":\"");
        memset(body + n, 'x', pad);
        n += (int)pad;
        n += snprintf(body + n, 8, "\"}");
    }
    snprintf(body + n, 8, "}]}");
    http(sp, "/items", body, r);
    free(body);
    return r->status;
}

static long get_status(const server_proc *sp, const char *path)
{
    resp r;
    http(sp, path, NULL, &r);
    return r.status;
}

/* Waits (5 s at most) for GET path to answer status. */
static int wait_status(const server_proc *sp, const char *path, long status)
{
    for (double t0 = now_s(); now_s() - t0 < 5; sleep_s(0.1)) {
        if (get_status(sp, path) == status)
            return 1;
    }
    return 0;
}

/* Waits (5 s at most) for a line in /metrics. */
static int metrics_has(const server_proc *sp, const char *line)
{
    for (double t0 = now_s(); now_s() - t0 < 5; sleep_s(0.1)) {
        resp r;
        http(sp, "/metrics", NULL, &r);
        if (strstr(r.body, line) != NULL)
            return 1;
    }
    return 0;
}

/* After kill -9 and a restart: the items in want[] are there, those in
 * gone[] are not. */
static void check_after_restart(const char *data, const int *want, int n_want, const int *gone,
                                int n_gone)
{
    server_proc sp;
    start_server(&sp, data, NULL);
    char path[64];
    for (int i = 0; i < n_want; i++) {
        snprintf(path, sizeof path, "/items/%d", want[i]);
        ck_assert_msg(get_status(&sp, path) == 200, "acknowledged item %d lost", want[i]);
    }
    for (int i = 0; i < n_gone; i++) {
        snprintf(path, sizeof path, "/items/%d", gone[i]);
        ck_assert_msg(get_status(&sp, path) == 404, "refused item %d is there", gone[i]);
    }
    kill_server(&sp);
}

static char tmp[64];

static void setup(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    tu_mkdtemp(tmp, sizeof tmp);
    ck_assert(tmp[0] != '\0');
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "chattr -i %s/data/wal 2>/dev/null; umount -l %s/data 2>/dev/null; rm -rf %s", tmp,
             tmp, tmp);
    tu_run(cmd);
    curl_global_cleanup();
}

static const char *data_dir(void)
{
    static char d[96];
    snprintf(d, sizeof d, "%s/data", tmp);
    return d;
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(test_injected_write_failure)
{
    server_proc sp;
    start_server(&sp, data_dir(), "write 3 1 ENOSPC");
    resp r;
    ck_assert_int_eq(put_item(&sp, 1, 0, &r), 200);
    ck_assert_int_eq(put_item(&sp, 2, 0, &r), 200);
    /* The third write fails: not acknowledged, and the client is told why
     * and when to retry. */
    ck_assert_int_eq(put_item(&sp, 3, 0, &r), 503);
    ck_assert_str_eq(r.retry_after, "1");
    ck_assert_msg(strstr(r.body, "store unavailable: ") != NULL, "%s", r.body);
    ck_assert_msg(strstr(r.body, "wal: write: No space left on device") != NULL, "%s", r.body);
    /* Within the second: refused at once. */
    ck_assert_int_eq(put_item(&sp, 4, 0, &r), 503);
    http(&sp, "/health", NULL, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_msg(strstr(r.body, "\"status\":\"degraded\",\"reason\":") != NULL, "%s", r.body);
    ck_assert_msg(strstr(r.body, "No space left on device") != NULL, "%s", r.body);
    http(&sp, "/health?for=read", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"status\":\"degraded\"") != NULL);
    http(&sp, "/info", NULL, &r);
    ck_assert_msg(strstr(r.body, "\"store_health\":{\"status\":\"degraded\"") != NULL, "%s",
                  r.body);
    /* Reads and searches go on. */
    ck_assert_int_eq(get_status(&sp, "/items/1"), 200);
    ck_assert_int_eq(get_status(&sp, "/items/3"), 404);
    http(&sp, "/similar?q=item%20number%202&k=2", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "\"id\":2") != NULL, "%s", r.body);
    /* Counted and logged, once. */
    ck_assert(metrics_has(&sp, "embedd_io_errors_total{file=\"wal\",op=\"write\"} 1\n"));
    ck_assert(metrics_has(&sp, "embedd_store_degraded 1\n"));
    ck_assert(log_has(&sp, "store: I/O error, writes are refused"));
    ck_assert(log_has(&sp, "/data/wal: write: No space left on device"));
    /* Well again without a restart: the next write once due. */
    sleep_s(1.2);
    ck_assert_int_eq(put_item(&sp, 5, 0, &r), 200);
    http(&sp, "/health", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    /* items 1, 2 and 5 in the one collection, "default" */
    ck_assert_str_eq(r.body, "{\"status\":\"ok\",\"collections\":1,\"points\":3}");
    ck_assert(log_has(&sp, "store: writable again after"));
    ck_assert(metrics_has(&sp, "embedd_store_degraded 0\n"));
    ck_assert(metrics_has(&sp, "embedd_store_writes_refused_total 1\n"));
    kill_server(&sp);
    char *log = tu_read_file(sp.log, NULL);
    ck_assert(log != NULL);
    const char *first = strstr(log, "store: I/O error");
    ck_assert(first != NULL && strstr(first + 1, "store: I/O error") == NULL);
    free(log);
    const int want[] = {1, 2, 5}, gone[] = {3, 4};
    check_after_restart(data_dir(), want, 3, gone, 2);
}
END_TEST

START_TEST(test_immutable_wal)
{
    server_proc sp;
    start_server(&sp, data_dir(), NULL);
    resp r;
    ck_assert_int_eq(put_item(&sp, 1, 0, &r), 200);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "chattr +i %s/wal 2>/dev/null", data_dir());
    if (tu_run(cmd) != 0) {
        fprintf(stderr, "test_immutable_wal: SKIPPED (chattr +i refused here)\n");
        kill_server(&sp);
        return;
    }
    ck_assert_int_eq(put_item(&sp, 2, 0, &r), 503);
    ck_assert_msg(strstr(r.body, "Operation not permitted") != NULL, "%s", r.body);
    ck_assert_int_eq(get_status(&sp, "/health"), 503);
    /* Still immutable: the attempts to recover fail, and are counted. */
    sleep_s(1.5);
    ck_assert_int_eq(put_item(&sp, 3, 0, &r), 503);
    ck_assert(metrics_has(&sp, "embedd_io_errors_total{file=\"wal\",op=\"reopen\"} "));
    ck_assert_int_eq(get_status(&sp, "/items/1"), 200);
    snprintf(cmd, sizeof cmd, "chattr -i %s/wal", data_dir());
    ck_assert_int_eq(tu_run(cmd), 0);
    /* Nobody writes: the server's own once-a-second attempt heals it. */
    ck_assert(wait_status(&sp, "/health", 200));
    ck_assert(log_has(&sp, "store: writable again after"));
    ck_assert_int_eq(put_item(&sp, 4, 0, &r), 200);
    kill_server(&sp);
    const int want[] = {1, 4}, gone[] = {2, 3};
    check_after_restart(data_dir(), want, 2, gone, 2);
}
END_TEST

START_TEST(test_full_disk)
{
    ck_assert_int_eq(mkdir(data_dir(), 0755), 0);
    if (mount("tmpfs", data_dir(), "tmpfs", 0, "size=1m") != 0) {
        fprintf(stderr, "test_full_disk: SKIPPED (cannot mount a tmpfs: %s)\n", strerror(errno));
        return;
    }
    server_proc sp;
    start_server(&sp, data_dir(), NULL);
    resp r;
    ck_assert_int_eq(put_item(&sp, 1, 0, &r), 200);
    /* Fill the disk to the last byte. */
    char filler[128];
    snprintf(filler, sizeof filler, "%s/filler", data_dir());
    FILE *fp = fopen(filler, "wb");
    ck_assert(fp != NULL);
    static char block[4096];
    while (fwrite(block, 1, sizeof block, fp) == sizeof block)
        ;
    fclose(fp);
    /* A record larger than a page needs a new block. */
    ck_assert_int_eq(put_item(&sp, 2, 20000, &r), 503);
    ck_assert_msg(strstr(r.body, "No space left on device") != NULL, "%s", r.body);
    ck_assert_int_eq(get_status(&sp, "/health"), 503);
    ck_assert(metrics_has(&sp, "embedd_io_errors_total{file=\"wal\",op=\"write\"} 1\n"));
    unlink(filler);
    ck_assert(wait_status(&sp, "/health", 200));
    ck_assert_int_eq(put_item(&sp, 3, 20000, &r), 200);
    kill_server(&sp);
    const int want[] = {1, 3}, gone[] = {2};
    check_after_restart(data_dir(), want, 2, gone, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sick");
    TCase *tc = tcase_create("sick");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_injected_write_failure);
    tcase_add_test(tc, test_immutable_wal);
    tcase_add_test(tc, test_full_disk);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
