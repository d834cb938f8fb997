/* test_reclog.c: the durable-file layer of model/base: the record log
 * (round trip, reopen after append, a torn tail cut at every byte offset of
 * the last record, bad headers, refused records), the data-directory lock
 * (a second taker in this process or in a forked child fails and names the
 * holder) and replace-by-rename. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run_suite.h"
#include "testutil.h"
#include "base/bytes.h"
#include "base/crc32c.h"
#include "base/dirlock.h"
#include "base/fileio.h"
#include "base/reclog.h"

static const reclog_format fmt = {
    .magic = {'T', 'E', 'S', 'T', 'L', 'O', 'G', 0},
    .version = 3,
    .extra = 8,
    .min_len = 1,
    .max_len = 4096,
};

static char dir[64];
static int dir_fd = -1;
static char log_path[128];

static void setup(void)
{
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(dir_fd, 0);
    snprintf(log_path, sizeof log_path, "%s/log", dir);
}

static void teardown(void)
{
    char cmd[128];
    close(dir_fd);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
}

/* What a replay saw. */
typedef struct seen {
    int n;
    size_t len[64];
    unsigned char first[64];   /* each body's first byte */
    uint64_t extra;            /* the header's extra field */
    int refuse_at;             /* record index to refuse (1), -1 none */
    int fail_at;               /* record index to fail (-1), -1 none */
} seen;

static int on_header(void *user, const unsigned char *x, emb_err *err)
{
    seen *s = user;
    s->extra = emb_get_u64(x);
    if (s->extra == 666)
        return emb_fail_as(err, EMB_ERR_INVALID, "extra field 666 rejected");
    return 0;
}

static int on_record(void *user, const unsigned char *body, size_t len, emb_err *err)
{
    seen *s = user;
    if (s->n == s->refuse_at) {
        emb_fail(err, "refused by the test");
        return 1;
    }
    if (s->n == s->fail_at)
        return emb_fail(err, "failed by the test");
    ck_assert_int_lt(s->n, 64);
    s->len[s->n] = len;
    s->first[s->n] = body[0];
    s->n++;
    return 0;
}

static reclog *open_log(seen *s, uint64_t extra, reclog_recovery *rec, emb_err *err)
{
    unsigned char x[8];
    emb_put_u64(x, extra);
    memset(s, 0, sizeof *s);
    s->refuse_at = -1;
    s->fail_at = -1;
    reclog_replay fns = {.header = on_header, .record = on_record, .user = s};
    return reclog_open(dir_fd, dir, "log", &fmt, x, &fns, rec, err);
}

/* Record i: head byte i, then 3 * i + 1 bytes of i. */
static void append_records(reclog *l, int first, int n)
{
    for (int i = first; i < first + n; i++) {
        unsigned char head = (unsigned char)i;
        unsigned char payload[256];
        memset(payload, i, sizeof payload);
        emb_err err;
        ck_assert_msg(reclog_append(l, &head, 1, payload, (size_t)(3 * i + 1), &err) == 0, "%s",
                      err.msg);
    }
    emb_err err;
    ck_assert(reclog_sync(l, &err) == 0);
}

/* The first n records are append_records' 0 .. n-1. */
static void check_prefix(const seen *s, int n)
{
    ck_assert_int_ge(s->n, n);
    for (int i = 0; i < n; i++) {
        ck_assert_uint_eq(s->len[i], (size_t)(3 * i + 2));
        ck_assert_uint_eq(s->first[i], (unsigned)i);
    }
}

static void check_records(const seen *s, int n)
{
    ck_assert_int_eq(s->n, n);
    check_prefix(s, n);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

START_TEST(test_crc32c_known_value)
{
    /* The CRC-32C check value. */
    ck_assert_uint_eq(emb_crc32c(0, "123456789", 9), 0xE3069283u);
    uint32_t c = emb_crc32c(0, "1234", 4);
    ck_assert_uint_eq(emb_crc32c(c, "56789", 5), 0xE3069283u);
}
END_TEST

START_TEST(test_round_trip)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 42, &rec, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    ck_assert_int_eq(rec.created, 1);
    ck_assert_int_eq(rec.restarted, 0);
    ck_assert_str_eq(rec.message, "");
    ck_assert_uint_eq(reclog_size(l), RECLOG_HEADER_FIXED + fmt.extra);
    append_records(l, 0, 10);
    /* framed by the caller: record 10 through reclog_write */
    unsigned char framed[RECLOG_FRAME + 32];
    memset(framed + RECLOG_FRAME, 10, 32);
    reclog_frame(framed, framed + RECLOG_FRAME, 32);
    ck_assert(reclog_write(l, framed, sizeof framed, &err) == 0);
    ck_assert(reclog_sync(l, &err) == 0);
    uint64_t size = reclog_size(l);
    reclog_close(l);
    ck_assert_int_eq(file_size(log_path), (long)size);

    l = open_log(&s, 7, &rec, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    ck_assert_uint_eq(s.extra, 42); /* the file's header, not the fresh one */
    ck_assert_int_eq(rec.created, 0);
    ck_assert_uint_eq(rec.records, 11);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    ck_assert_int_eq(s.n, 11);
    check_prefix(&s, 10);
    ck_assert_uint_eq(s.len[10], 32);
    ck_assert_uint_eq(reclog_size(l), size);
    reclog_close(l);
}
END_TEST

START_TEST(test_reopen_after_append)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    for (int round = 0; round < 4; round++) {
        reclog *l = open_log(&s, 1, &rec, &err);
        ck_assert_msg(l != NULL, "%s", err.msg);
        check_records(&s, 3 * round);
        append_records(l, 3 * round, 3);
        reclog_close(l);
    }
    reclog *l = open_log(&s, 1, &rec, &err);
    check_records(&s, 12);
    reclog_close(l);
}
END_TEST

START_TEST(test_torn_tail_every_offset)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 1, &rec, &err);
    append_records(l, 0, 3);
    /* the end of record 1 (the second) */
    uint64_t two = RECLOG_HEADER_FIXED + fmt.extra + (RECLOG_FRAME + 2) + (RECLOG_FRAME + 5);
    uint64_t full = reclog_size(l);
    reclog_close(l);
    size_t n;
    char *whole = tu_read_file(log_path, &n);
    ck_assert(whole != NULL);
    ck_assert_uint_eq(n, full);
    for (uint64_t cut = two; cut < full; cut++) {
        ck_assert(tu_write_file(log_path, whole, (size_t)cut) == 0);
        l = open_log(&s, 1, &rec, &err);
        ck_assert_msg(l != NULL, "%s", err.msg);
        check_records(&s, 2);
        ck_assert_uint_eq(reclog_size(l), two);
        ck_assert_uint_eq(rec.truncated_bytes, cut - two);
        if (cut > two) {
            ck_assert_uint_eq(rec.truncated_at, two);
            ck_assert_msg(strstr(rec.message, "torn tail") != NULL, "%s", rec.message);
        } else {
            ck_assert_str_eq(rec.message, "");
        }
        reclog_close(l);
        ck_assert_int_eq(file_size(log_path), (long)two);
    }
    /* A flipped byte anywhere in the whole last record is damage, not a
     * torn write: the open is refused and nothing is cut. */
    for (uint64_t at = two; at < full; at++) {
        whole[at] ^= 0x40;
        ck_assert(tu_write_file(log_path, whole, full) == 0);
        whole[at] ^= 0x40;
        l = open_log(&s, 1, &rec, &err);
        ck_assert_msg(l == NULL, "offset %llu: a damaged last record was cut",
                      (unsigned long long)at);
        ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);
        ck_assert_int_eq(file_size(log_path), (long)full);
    }
    /* Zeros where the last record should be (space reserved, data lost in
     * a power cut) are a torn tail. */
    memset(whole + two, 0, (size_t)(full - two));
    ck_assert(tu_write_file(log_path, whole, full) == 0);
    l = open_log(&s, 1, &rec, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    check_records(&s, 2);
    ck_assert_uint_eq(rec.truncated_bytes, full - two);
    reclog_close(l);
    free(whole);
}
END_TEST

START_TEST(test_garbage_after_records)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 1, &rec, &err);
    append_records(l, 0, 4);
    uint64_t full = reclog_size(l);
    reclog_close(l);
    int fd = open(log_path, O_WRONLY | O_APPEND);
    /* a frame that says 64 bytes, cut after 3: an append that never finished */
    ck_assert(write(fd, "\x40\0\0\0garbage", 11) == 11);
    close(fd);
    l = open_log(&s, 1, &rec, &err);
    ck_assert(l != NULL);
    check_records(&s, 4);
    ck_assert_uint_eq(rec.truncated_bytes, 11);
    ck_assert_msg(strstr(rec.message, "torn tail") != NULL, "%s", rec.message);
    /* appends go after the cut */
    append_records(l, 4, 1);
    reclog_close(l);
    l = open_log(&s, 1, &rec, &err);
    check_records(&s, 5);
    ck_assert_uint_eq(reclog_size(l), full + RECLOG_FRAME + 14);
    reclog_close(l);
}
END_TEST

START_TEST(test_bad_headers)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 1, &rec, &err);
    append_records(l, 0, 2);
    reclog_close(l);
    size_t n = 0;
    char *whole = tu_read_file(log_path, &n);

    /* another version: fatal, the file is left as it is */
    char *v = malloc(n);
    memcpy(v, whole, n);
    emb_put_u32((unsigned char *)v + 8, 9);
    emb_put_u32((unsigned char *)v + 20, emb_crc32c(0, v, 20));
    ck_assert(tu_write_file(log_path, v, n) == 0);
    l = open_log(&s, 1, &rec, &err);
    ck_assert(l == NULL);
    ck_assert_int_eq(err.kind, EMB_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "format version 9") != NULL, "%s", err.msg);
    ck_assert_int_eq(file_size(log_path), (long)n);
    free(v);

    /* header fields the caller rejects: fatal too */
    unsigned char x[8];
    emb_put_u64(x, 666);
    ck_assert(tu_write_file(log_path, whole, n) == 0);
    unsigned char h[24];
    memcpy(h, whole, 24);
    memcpy(h + 12, x, 8);
    emb_put_u32(h + 20, emb_crc32c(0, h, 20));
    char *bad = malloc(n);
    memcpy(bad, whole, n);
    memcpy(bad, h, 24);
    ck_assert(tu_write_file(log_path, bad, n) == 0);
    l = open_log(&s, 1, &rec, &err);
    ck_assert(l == NULL);
    ck_assert_msg(strstr(err.msg, "666") != NULL, "%s", err.msg);
    free(bad);

    /* a damaged header with records after it that verify: corrupt, not
     * torn; the open fails and changes nothing */
    const char *corrupt[] = {"bad magic", "header checksum mismatch"};
    for (int k = 0; k < 2; k++) {
        char *c = malloc(n);
        memcpy(c, whole, n);
        if (k == 0)
            c[0] = 'X';
        else
            c[13] ^= 1;
        ck_assert(tu_write_file(log_path, c, n) == 0);
        l = open_log(&s, 5, &rec, &err);
        ck_assert(l == NULL);
        ck_assert_msg(strstr(err.msg, corrupt[k]) != NULL, "%s", err.msg);
        ck_assert_msg(strstr(err.msg, "damaged at offset 0") != NULL, "%s", err.msg);
        ck_assert_msg(strstr(err.msg, "records after it verify") != NULL, "%s", err.msg);
        ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);
        ck_assert_int_eq(file_size(log_path), (long)n);
        free(c);
    }

    /* not a log: a short header or an empty file (nothing can follow) */
    const char *why[] = {"short header", "empty file"};
    for (int k = 0; k < 2; k++) {
        size_t len = k == 0 ? 10 : 0;
        ck_assert(tu_write_file(log_path, whole, len) == 0);
        l = open_log(&s, 5, &rec, &err);
        ck_assert_msg(l != NULL, "%s", err.msg);
        ck_assert_int_eq(rec.restarted, 1);
        ck_assert_uint_eq(rec.truncated_bytes, len);
        ck_assert_msg(strstr(rec.message, why[k]) != NULL, "%s", rec.message);
        ck_assert_msg(strstr(rec.message, "new log") != NULL, "%s", rec.message);
        ck_assert_int_eq(s.n, 0);
        reclog_close(l);
        /* the fresh log has the fresh header fields */
        l = open_log(&s, 99, &rec, &err);
        ck_assert_uint_eq(s.extra, 5);
        ck_assert_int_eq(rec.restarted, 0);
        reclog_close(l);
    }
    free(whole);
}
END_TEST

/* One flipped byte at every offset of every record, the last one
 * included, is corruption: the open fails with the file untouched, and reclog_salvage
 * keeps every other record, the damaged file beside it. Nothing that
 * verifies is ever dropped silently. */
START_TEST(test_flip_every_record_byte)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 7, &rec, &err);
    append_records(l, 0, 6);
    reclog_close(l);
    size_t n = 0;
    char *whole = tu_read_file(log_path, &n);
    ck_assert(whole != NULL);
    const size_t hs = RECLOG_HEADER_FIXED + 8;
    for (size_t off = hs; off < n; off++) {
        char *c = malloc(n);
        memcpy(c, whole, n);
        c[off] ^= 0x5a;
        ck_assert(tu_write_file(log_path, c, n) == 0);
        int hit = 0;   /* the record the flip is in */
        for (size_t at = hs; at + RECLOG_FRAME + (size_t)(3 * hit + 2) <= off; hit++)
            at += RECLOG_FRAME + (size_t)(3 * hit + 2);
        l = open_log(&s, 7, &rec, &err);
        {
            ck_assert_msg(l == NULL, "offset %zu opened with %d records", off, s.n);
            ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);
            ck_assert_int_eq(file_size(log_path), (long)n);
            reclog_salvage_report rep;
            ck_assert_msg(reclog_salvage(dir_fd, dir, "log", &fmt, NULL, &rep, &err) == 0, "%s",
                          err.msg);
            ck_assert_int_eq(rep.rewritten, 1);
            ck_assert_uint_eq(rep.records_kept, 5);
            char kept[400];
            snprintf(kept, sizeof kept, "%s/%s", dir, rep.kept_as);
            ck_assert_int_eq(file_size(kept), (long)n);
            unlink(kept);
            l = open_log(&s, 7, &rec, &err);
            ck_assert_msg(l != NULL, "%s", err.msg);
            ck_assert_int_eq(s.n, 5);
            ck_assert_uint_eq(s.extra, 7);
            for (int i = 0, j = 0; i < 6; i++) {
                if (i == hit)
                    continue;
                ck_assert_uint_eq(s.first[j], (unsigned)i);
                j++;
            }
            reclog_close(l);
        }
        free(c);
    }
    /* a log that verifies is left alone */
    ck_assert(tu_write_file(log_path, whole, n) == 0);
    reclog_salvage_report rep;
    ck_assert(reclog_salvage(dir_fd, dir, "log", &fmt, NULL, &rep, &err) == 0);
    ck_assert_int_eq(rep.rewritten, 0);
    ck_assert_uint_eq(rep.records_kept, 6);
    free(whole);
}
END_TEST

START_TEST(test_refused_and_failed_records)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 1, &rec, &err);
    append_records(l, 0, 5);
    uint64_t full = reclog_size(l);
    reclog_close(l);

    /* a fatal error: open fails, nothing is cut */
    unsigned char x[8];
    emb_put_u64(x, 1);
    memset(&s, 0, sizeof s);
    s.refuse_at = -1;
    s.fail_at = 2;
    reclog_replay fns = {.header = on_header, .record = on_record, .user = &s};
    l = reclog_open(dir_fd, dir, "log", &fmt, x, &fns, &rec, &err);
    ck_assert(l == NULL);
    ck_assert_str_eq(err.msg, "failed by the test");
    ck_assert_int_eq(file_size(log_path), (long)full);

    /* a refused record in the middle, records that verify after it: the
     * open fails and nothing is cut */
    memset(&s, 0, sizeof s);
    s.refuse_at = 2;
    s.fail_at = -1;
    l = reclog_open(dir_fd, dir, "log", &fmt, x, &fns, &rec, &err);
    ck_assert(l == NULL);
    ck_assert_msg(strstr(err.msg, "refused by the test") != NULL, "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "2 records after it verify") != NULL, "%s", err.msg);
    ck_assert_int_eq(file_size(log_path), (long)full);

    /* the last record refused: nothing verifies after it, so it is cut */
    memset(&s, 0, sizeof s);
    s.refuse_at = 4;
    s.fail_at = -1;
    l = reclog_open(dir_fd, dir, "log", &fmt, x, &fns, &rec, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    ck_assert_int_eq(s.n, 4);
    ck_assert_msg(strstr(rec.message, "refused by the test") != NULL, "%s", rec.message);
    ck_assert_uint_eq(reclog_size(l), full - (RECLOG_FRAME + 14));
    reclog_close(l);
}
END_TEST

START_TEST(test_limits_and_reset)
{
    seen s;
    reclog_recovery rec;
    emb_err err;
    reclog *l = open_log(&s, 1, &rec, &err);
    static unsigned char big[5000];
    ck_assert(reclog_append(l, NULL, 0, big, sizeof big, &err) != 0);
    ck_assert_int_eq(err.kind, EMB_ERR_TOO_LARGE);
    ck_assert(reclog_append(l, NULL, 0, big, 0, &err) != 0); /* under min_len */
    append_records(l, 0, 3);

    /* reset: a fresh log with new header fields and a body */
    /* records 0 and 1 as append_records writes them */
    unsigned char body[(RECLOG_FRAME + 2) + (RECLOG_FRAME + 5)];
    unsigned char *r = body;
    for (int i = 0; i < 2; i++) {
        size_t len = (size_t)(3 * i + 2);
        memset(r + RECLOG_FRAME, i, len);
        reclog_frame(r, r + RECLOG_FRAME, len);
        r += RECLOG_FRAME + len;
    }
    unsigned char x[8];
    emb_put_u64(x, 77);
    ck_assert(reclog_reset(l, x, body, sizeof body, &err) == 0);
    ck_assert_uint_eq(reclog_size(l), RECLOG_HEADER_FIXED + 8 + sizeof body);
    append_records(l, 2, 1);
    reclog_close(l);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", log_path);
    ck_assert(access(tmp, F_OK) != 0);
    l = open_log(&s, 1, &rec, &err);
    ck_assert_uint_eq(s.extra, 77);
    check_records(&s, 3);
    reclog_close(l);
}
END_TEST

/* ---- the data-directory lock ----------------------------------------------- */

START_TEST(test_dirlock_same_process)
{
    emb_err err;
    int a = emb_dirlock_take(dir_fd, dir, "lock", "store", &err);
    ck_assert_msg(a >= 0, "%s", err.msg);
    int b = emb_dirlock_take(dir_fd, dir, "lock", "store", &err);
    ck_assert_int_lt(b, 0);
    ck_assert_int_eq(err.kind, EMB_ERR_CONFLICT);
    ck_assert_msg(strstr(err.msg, "in use by another store") != NULL, "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "this process") != NULL, "%s", err.msg);
    /* another lock file in the same directory is independent */
    int c = emb_dirlock_take(dir_fd, dir, "samples.lock", "sample buffer", &err);
    ck_assert_msg(c >= 0, "%s", err.msg);
    emb_dirlock_release(a);
    b = emb_dirlock_take(dir_fd, dir, "lock", "store", &err);
    ck_assert_msg(b >= 0, "%s", err.msg);
    emb_dirlock_release(b);
    emb_dirlock_release(c);
}
END_TEST

START_TEST(test_dirlock_child_process)
{
    emb_err err;
    int a = emb_dirlock_take(dir_fd, dir, "lock", "store", &err);
    ck_assert_msg(a >= 0, "%s", err.msg);
    int pipefd[2];
    ck_assert(pipe(pipefd) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        emb_err cerr = {0};
        int fd = emb_dirlock_take(dir_fd, dir, "lock", "store", &cerr);
        if (write(pipefd[1], cerr.msg, strlen(cerr.msg) + 1) < 0)
            _exit(3);
        _exit(fd < 0 && cerr.kind == EMB_ERR_CONFLICT ? 0 : 1);
    }
    close(pipefd[1]);
    char msg[600] = "";
    ssize_t got = read(pipefd[0], msg, sizeof msg - 1);
    ck_assert(got > 0);
    msg[got] = '\0';
    close(pipefd[0]);
    int status = 0;
    ck_assert(waitpid(pid, &status, 0) == pid);
    ck_assert(WIFEXITED(status));
    ck_assert_msg(WEXITSTATUS(status) == 0, "child: %s", msg);
    char want[64];
    snprintf(want, sizeof want, "held by process %ld", (long)getpid());
    ck_assert_msg(strstr(msg, want) != NULL, "%s", msg);
    emb_dirlock_release(a);
}
END_TEST

/* ---- replace by rename -------------------------------------------------------- */

START_TEST(test_replace_by_rename)
{
    emb_err err;
    char path[160], tmp[170];
    snprintf(path, sizeof path, "%s/file", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ck_assert(emb_write_file_atomic(path, "first", 5, &err) == 0);
    ck_assert(emb_write_file_atomic(path, "second", 6, &err) == 0);
    size_t n;
    char *text = tu_read_file(path, &n);
    ck_assert_str_eq(text, "second");
    free(text);
    ck_assert(access(tmp, F_OK) != 0);

    /* abort: the target is untouched and the temp file gone */
    emb_replace r;
    ck_assert(emb_replace_begin(&r, path, &err) == 0);
    ck_assert(write(r.fd, "third", 5) == 5);
    ck_assert(access(tmp, F_OK) == 0);
    emb_replace_abort(&r);
    ck_assert(access(tmp, F_OK) != 0);
    text = tu_read_file(path, &n);
    ck_assert_str_eq(text, "second");
    free(text);

    /* commit keeping the descriptor, relative to a directory fd */
    ck_assert(emb_replace_begin_at(&r, dir_fd, dir, "file", &err) == 0);
    ck_assert(write(r.fd, "fourth", 6) == 6);
    int fd = -1;
    ck_assert(emb_replace_commit(&r, &fd, &err) == 0);
    ck_assert_int_ge(fd, 0);
    ck_assert(write(fd, "!", 1) == 1);
    close(fd);
    text = tu_read_file(path, &n);
    ck_assert_str_eq(text, "fourth!");
    free(text);

    /* a missing directory: an I/O error */
    ck_assert(emb_write_file_atomic("/nonexistent-embedd/x", "a", 1, &err) != 0);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reclog");
    TCase *tc = tcase_create("reclog");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_crc32c_known_value);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_reopen_after_append);
    tcase_add_test(tc, test_torn_tail_every_offset);
    tcase_add_test(tc, test_garbage_after_records);
    tcase_add_test(tc, test_bad_headers);
    tcase_add_test(tc, test_flip_every_record_byte);
    tcase_add_test(tc, test_refused_and_failed_records);
    tcase_add_test(tc, test_limits_and_reset);
    tcase_add_test(tc, test_dirlock_same_process);
    tcase_add_test(tc, test_dirlock_child_process);
    tcase_add_test(tc, test_replace_by_rename);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
