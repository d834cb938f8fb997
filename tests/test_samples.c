/* test_samples.c: the training sample buffer: de-duplication, trimming and
 * cutting, the reservoirs' uniformity and caps, the held-out split, draws,
 * and the log: round trips, replacements, compaction, torn tails, a crash
 * after a flush, and adds and draws from several threads. */
#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "run_suite.h"
#include "learn/samples.h"
#include "testutil.h"
#include "store/wal.h"

static char dir[64];

static void setup(void)
{
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
}

/* Small caps and a fixed seed; no held-out split unless a test sets one. */
static samples_opts small_opts(void)
{
    samples_opts o;
    samples_opts_init(&o);
    o.max_texts = 100;
    o.holdout_fraction = 0.0;
    o.seed = 42;
    return o;
}

static samples *open_ok(const char *d, const samples_opts *o)
{
    emb_err err = {0};
    samples *s = samples_open(d, o, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

/* The i-th text of a stream: distinct, TEXT_LEN bytes. */
static const char *nth(int i)
{
    static __thread char t[64];
    snprintf(t, sizeof t, "text number %06d of the stream", i);
    return t;
}

#define TEXT_LEN 32
#define REC (8 + 6 + TEXT_LEN) /* a slot record of one of them */
#define COUNTERS_REC (8 + 1 + 13 * 8)

static int add_nth(samples *s, int i, int source)
{
    const char *t = nth(i);
    return samples_add(s, t, strlen(t), source);
}

static int add_str(samples *s, const char *t)
{
    return samples_add(s, t, strlen(t), SAMPLES_SRC_EXPLICIT);
}

static samples_stats stats_of(samples *s)
{
    samples_stats st;
    samples_stats_get(s, &st);
    return st;
}

static void free_list(char **texts, int n)
{
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
}

/* Every training text, in the order a fixed-seed draw gives: equal lists
 * from two buffers mean equal slots in equal order. */
static int draw_all(samples *s, char ***out)
{
    int n = (int)stats_of(s).train;
    *out = calloc((size_t)n + 1, sizeof **out);
    emb_rng rng;
    emb_rng_seed(&rng, 7);
    int got = samples_draw(s, n, &rng, *out, n);
    ck_assert_int_eq(got, n);
    return got;
}

static void check_same_stats(const samples_stats *a, const samples_stats *b)
{
    ck_assert_uint_eq(a->train, b->train);
    ck_assert_uint_eq(a->holdout, b->holdout);
    ck_assert_uint_eq(a->train_bytes, b->train_bytes);
    ck_assert_uint_eq(a->holdout_bytes, b->holdout_bytes);
    ck_assert_uint_eq(a->seen, b->seen);
    ck_assert_uint_eq(a->train_seen, b->train_seen);
    ck_assert_uint_eq(a->holdout_seen, b->holdout_seen);
    ck_assert_uint_eq(a->duplicates, b->duplicates);
    ck_assert_uint_eq(a->ignored, b->ignored);
    ck_assert_uint_eq(a->truncated, b->truncated);
    for (int i = 0; i < SAMPLES_N_SOURCES; i++) {
        ck_assert_uint_eq(a->received[i], b->received[i]);
        ck_assert_uint_eq(a->added[i], b->added[i]);
    }
    ck_assert_uint_eq(a->version, b->version);
    ck_assert_uint_eq(a->holdout_version, b->holdout_version);
}

/* A buffer's visible state: stats, training slots in order (through a
 * fixed-seed draw), held-out texts. */
typedef struct snapshot {
    samples_stats st;
    char **train;
    int n_train;
    char **held;
    int n_held;
} snapshot;

static snapshot snapshot_take(samples *s)
{
    snapshot sn;
    sn.st = stats_of(s);
    sn.n_train = draw_all(s, &sn.train);
    ck_assert_int_eq(samples_holdout(s, &sn.held, &sn.n_held), 0);
    return sn;
}

static void snapshot_free(snapshot *sn)
{
    free_list(sn->train, sn->n_train);
    free_list(sn->held, sn->n_held);
}

/* s matches the snapshot (which is freed). */
static void snapshot_check(samples *s, snapshot *want)
{
    snapshot got = snapshot_take(s);
    check_same_stats(&got.st, &want->st);
    ck_assert_int_eq(got.n_train, want->n_train);
    for (int i = 0; i < got.n_train; i++)
        ck_assert_str_eq(got.train[i], want->train[i]);
    ck_assert_int_eq(got.n_held, want->n_held);
    for (int i = 0; i < got.n_held; i++)
        ck_assert_str_eq(got.held[i], want->held[i]);
    snapshot_free(&got);
    snapshot_free(want);
}

/* Same stats, same training slots in the same order, same held-out texts. */
static void check_same(samples *a, samples *b)
{
    snapshot sb = snapshot_take(b);
    snapshot_check(a, &sb);
}

static char *log_path(const char *d)
{
    static char p[256];
    snprintf(p, sizeof p, "%s/samples.log", d);
    return p;
}

static long file_size(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return (long)st.st_size;
}

/* ---- intake ----------------------------------------------------------------- */

START_TEST(test_dedup)
{
    samples_opts o = small_opts();
    samples *s = open_ok(NULL, &o);
    uint64_t v0 = stats_of(s).version;
    ck_assert_int_eq(add_str(s, "hello there, world"), 1);
    uint64_t v1 = stats_of(s).version;
    ck_assert_uint_ne(v0, v1);
    ck_assert_int_eq(add_str(s, "hello there, world"), 0);
    ck_assert_int_eq(add_str(s, "  \thello there, world\n"), 0); /* same once trimmed */
    ck_assert_int_eq(add_str(s, "hello there, World"), 1);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.train, 2);
    ck_assert_uint_eq(st.duplicates, 2);
    ck_assert_uint_eq(st.seen, 2);
    ck_assert_uint_eq(st.received[SAMPLES_SRC_EXPLICIT], 4);
    ck_assert_uint_eq(st.added[SAMPLES_SRC_EXPLICIT], 2);
    ck_assert_uint_eq(st.version, v1 + 1); /* a duplicate changes nothing */
    ck_assert_int_eq(samples_add(s, "some text here", 14, -1), -1);
    ck_assert_int_eq(samples_add(s, "some text here", 14, SAMPLES_N_SOURCES), -1);
    ck_assert_int_eq(samples_add(s, NULL, 0, SAMPLES_SRC_EMBED), 0);
    samples_close(s);
}
END_TEST

START_TEST(test_trim_cut_and_min_length)
{
    samples_opts o = small_opts();
    o.min_chars = 8;
    o.max_chars = 12;
    samples *s = open_ok(NULL, &o);
    ck_assert_int_eq(add_str(s, "short"), 0);
    ck_assert_int_eq(add_str(s, "   short \n\n\t  "), 0);
    ck_assert_int_eq(add_str(s, ""), 0);
    ck_assert_int_eq(samples_add(s, "has a\0NUL byte", 14, SAMPLES_SRC_ITEMS), 0);
    ck_assert_int_eq(add_str(s, "  12345678  "), 1);
    /* "abcdefghijk" + e-acute (C3 A9): byte 12 is a continuation byte, so
     * the cut backs up to 11 bytes rather than split the character. */
    ck_assert_int_eq(add_str(s, "abcdefghijk\xc3\xa9 and more"), 1);
    ck_assert_int_eq(add_str(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 1);
    ck_assert_int_eq(add_str(s, "ABCDEFGHIJKLzzz"), 0); /* the same once cut */
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.ignored, 4);
    ck_assert_uint_eq(st.truncated, 3);
    ck_assert_uint_eq(st.duplicates, 1);
    ck_assert_uint_eq(st.train, 3);
    ck_assert_uint_eq(st.train_bytes, 8 + 11 + 12);
    char **t;
    int n = draw_all(s, &t);
    int found = 0;
    for (int i = 0; i < n; i++) {
        found += strcmp(t[i], "12345678") == 0;
        found += strcmp(t[i], "abcdefghijk") == 0;
        found += strcmp(t[i], "ABCDEFGHIJKL") == 0;
    }
    ck_assert_int_eq(found, 3);
    free_list(t, n);
    samples_close(s);
}
END_TEST

/* 20k distinct texts into 1k slots: the kept ones must come evenly from
 * the whole stream. Chi-square over quartiles, 3 degrees of freedom: a
 * uniform sample exceeds 16.27 with probability 0.001. Buffers filled
 * first-come would keep only the first quartile (chi-square 3000). */
START_TEST(test_reservoir_uniform)
{
    samples_opts o = small_opts();
    o.max_texts = 1000;
    samples *s = open_ok(NULL, &o);
    for (int i = 0; i < 20000; i++)
        add_nth(s, i, SAMPLES_SRC_EMBED);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.train, 1000);
    ck_assert_uint_eq(st.seen, 20000);
    char **t;
    int n = draw_all(s, &t);
    int quart[4] = {0};
    for (int i = 0; i < n; i++) {
        int k = -1;
        ck_assert(sscanf(t[i], "text number %d", &k) == 1);
        quart[k / 5000]++;
    }
    double chi2 = 0;
    for (int q = 0; q < 4; q++)
        chi2 += (quart[q] - 250.0) * (quart[q] - 250.0) / 250.0;
    ck_assert_msg(chi2 < 16.27, "quartiles %d %d %d %d: chi-square %.1f", quart[0], quart[1],
                  quart[2], quart[3], chi2);
    free_list(t, n);
    samples_close(s);
}
END_TEST

/* Texts of 20 to 219 bytes into 5000 bytes: the cap holds after every add,
 * and the buffer still takes texts from the whole stream. */
START_TEST(test_byte_cap)
{
    samples_opts o = small_opts();
    o.max_texts = 1000;
    o.max_bytes = 5000;
    o.max_chars = 300;
    samples *s = open_ok(NULL, &o);
    char text[400];
    for (int i = 0; i < 3000; i++) {
        int len = 20 + (i * 37) % 200;
        snprintf(text, sizeof text, "%06d", i);
        memset(text + 6, 'a' + i % 26, (size_t)len - 6);
        text[len] = '\0';
        samples_add(s, text, (size_t)len, SAMPLES_SRC_ITEMS);
        ck_assert_uint_le(stats_of(s).train_bytes, 5000);
    }
    samples_stats st = stats_of(s);
    ck_assert_uint_gt(st.train_bytes, 4000);
    ck_assert_uint_gt(st.train, 20);
    char **t;
    int n = draw_all(s, &t);
    int early = 0, late = 0;
    for (int i = 0; i < n; i++) {
        int k = atoi(t[i]);
        early += k < 1000;
        late += k >= 2000;
    }
    ck_assert_int_gt(early, 0);
    ck_assert_int_gt(late, 0);
    free_list(t, n);
    samples_close(s);
}
END_TEST

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* About 10% held out, the same texts whatever the order and the seed, in
 * the same order, and never drawn for training. */
START_TEST(test_holdout)
{
    samples_opts o = small_opts();
    o.max_texts = 100000;
    o.holdout_max = 100000;
    o.holdout_fraction = 0.1;
    samples *a = open_ok(NULL, &o);
    o.seed = 99;
    samples *b = open_ok(NULL, &o);
    for (int i = 0; i < 10000; i++) {
        add_nth(a, i, SAMPLES_SRC_EMBED);
        add_nth(b, 9999 - i, SAMPLES_SRC_EMBED);
    }
    samples_stats st = stats_of(a);
    ck_assert_uint_eq(st.train + st.holdout, 10000);
    /* binomial(10000, 0.1): sd 30 */
    ck_assert_msg(st.holdout > 880 && st.holdout < 1120, "%llu held out",
                  (unsigned long long)st.holdout);
    char **ha, **hb;
    int na, nb;
    ck_assert_int_eq(samples_holdout(a, &ha, &na), 0);
    ck_assert_int_eq(samples_holdout(b, &hb, &nb), 0);
    ck_assert_int_eq(na, (int)st.holdout);
    ck_assert_int_eq(na, nb);
    for (int i = 0; i < na; i++)
        ck_assert_str_eq(ha[i], hb[i]);
    qsort(ha, (size_t)na, sizeof *ha, str_cmp);
    emb_rng rng;
    emb_rng_seed(&rng, 3);
    char *batch[256];
    for (int round = 0; round < 50; round++) {
        int n = samples_draw(a, 256, &rng, batch, 256);
        ck_assert_int_eq(n, 256);
        for (int i = 0; i < n; i++) {
            ck_assert(bsearch(&batch[i], ha, (size_t)na, sizeof *ha, str_cmp) == NULL);
            free(batch[i]);
        }
    }
    free_list(ha, na);
    free_list(hb, nb);
    samples_close(a);
    samples_close(b);
}
END_TEST

START_TEST(test_holdout_cap)
{
    samples_opts o = small_opts();
    o.holdout_fraction = 0.5;
    o.holdout_max = 10;
    samples *s = open_ok(NULL, &o);
    for (int i = 0; i < 1000; i++)
        add_nth(s, i, SAMPLES_SRC_EMBED);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.holdout, 10);
    ck_assert_uint_eq(st.train, 100);
    ck_assert_uint_eq(st.train_seen + st.holdout_seen, 1000);
    ck_assert_uint_gt(st.holdout_seen, 400);
    /* changes to the training reservoir leave the held-out version alone */
    ck_assert_uint_gt(st.holdout_version, 10);
    for (int i = 1000; i < 1200; i++) {
        samples_stats before = stats_of(s);
        add_nth(s, i, SAMPLES_SRC_EMBED);
        samples_stats after = stats_of(s);
        if (after.train_seen > before.train_seen)
            ck_assert_uint_eq(after.holdout_version, before.holdout_version);
    }
    samples_close(s);
}
END_TEST

/* Draws are distinct texts, at most what is there, at most cap. */
START_TEST(test_draw)
{
    samples_opts o = small_opts();
    samples *s = open_ok(NULL, &o);
    emb_rng rng;
    emb_rng_seed(&rng, 1);
    char *out[64];
    ck_assert_int_eq(samples_draw(s, 10, &rng, out, 64), 0);
    for (int i = 0; i < 5; i++)
        add_nth(s, i, SAMPLES_SRC_EMBED);
    int n = samples_draw(s, 10, &rng, out, 64);
    ck_assert_int_eq(n, 5);
    qsort(out, (size_t)n, sizeof *out, str_cmp);
    for (int i = 0; i < n; i++) {
        ck_assert_str_eq(out[i], nth(i));
        free(out[i]);
    }
    for (int i = 5; i < 100; i++)
        add_nth(s, i, SAMPLES_SRC_EMBED);
    for (int round = 0; round < 20; round++) {
        n = samples_draw(s, 32, &rng, out, 20);
        ck_assert_int_eq(n, 20);
        qsort(out, (size_t)n, sizeof *out, str_cmp);
        for (int i = 1; i < n; i++)
            ck_assert_str_ne(out[i - 1], out[i]);
        for (int i = 0; i < n; i++)
            free(out[i]);
    }
    samples_close(s);
}
END_TEST

/* ---- persistence ------------------------------------------------------------ */

/* A mixed stream: replacements in both reservoirs, duplicates, short texts
 * and every source. */
static void add_mixed(samples *s, int first, int n)
{
    for (int i = first; i < first + n; i++) {
        add_nth(s, i, i % SAMPLES_N_SOURCES);
        if (i % 7 == 0)
            add_nth(s, i / 2, SAMPLES_SRC_ITEMS);
        if (i % 11 == 0)
            add_str(s, "tiny");
    }
}

static samples_opts mixed_opts(void)
{
    samples_opts o = small_opts();
    o.max_texts = 100;
    o.holdout_fraction = 0.2;
    o.holdout_max = 10;
    return o;
}

/* Close and reopen: the same buffer as a memory-only twin that saw the same
 * stream with the same seed, slot order included. */
START_TEST(test_round_trip)
{
    samples_opts o = mixed_opts();
    samples *s = open_ok(dir, &o);
    samples *twin = open_ok(NULL, &o);
    add_mixed(s, 0, 1000);
    add_mixed(twin, 0, 1000);
    check_same(s, twin);
    samples_close(s);
    s = open_ok(dir, &o);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.truncated_bytes, 0);
    ck_assert_str_eq(st.recovery, "");
    ck_assert_uint_gt(st.replayed, 110);
    check_same(s, twin);
    samples_close(twin);
    /* It carries on where it stopped (its random choices now differ from
     * the twin's, so compare it with itself across the next reopen). */
    add_mixed(s, 1000, 500);
    snapshot before = snapshot_take(s);
    samples_close(s);
    s = open_ok(dir, &o);
    snapshot_check(s, &before);
    samples_close(s);
}
END_TEST

/* Kill -9 right after a flush: the file then holds exactly the flushed
 * state, whatever was added after. */
START_TEST(test_crash_after_flush)
{
    samples_opts o = mixed_opts();
    samples *s = open_ok(dir, &o);
    samples *twin = open_ok(NULL, &o);
    add_mixed(s, 0, 700);
    add_mixed(twin, 0, 700);
    emb_err err;
    ck_assert_msg(samples_flush(s, &err) == 0, "%s", err.msg);
    add_mixed(s, 700, 300);
    ck_assert_uint_gt(stats_of(s).pending_bytes, 0);
    size_t len = 0;
    char *copy = tu_read_file(log_path(dir), &len);
    ck_assert(copy != NULL);
    char dir2[128];
    snprintf(dir2, sizeof dir2, "%s/crashed", dir);
    ck_assert_int_eq(mkdir(dir2, 0755), 0);
    ck_assert_int_eq(tu_write_file(log_path(dir2), copy, len), 0);
    free(copy);
    samples *c = open_ok(dir2, &o);
    ck_assert_uint_eq(stats_of(c).truncated_bytes, 0);
    check_same(c, twin);
    samples_close(c);
    samples_close(s);
    samples_close(twin);
}
END_TEST

/* A small threshold makes the log compact often; contents survive. */
START_TEST(test_compaction)
{
    samples_opts o = small_opts();
    o.max_texts = 50;
    o.compact_min_bytes = 1024;
    samples *s = open_ok(dir, &o);
    samples *twin = open_ok(NULL, &o);
    emb_err err;
    for (int round = 0; round < 30; round++) {
        for (int i = round * 100; i < round * 100 + 100; i++) {
            add_nth(s, i, SAMPLES_SRC_EMBED);
            add_nth(twin, i, SAMPLES_SRC_EMBED);
        }
        ck_assert_msg(samples_flush(s, &err) == 0, "%s", err.msg);
        samples_stats st = stats_of(s);
        ck_assert_uint_eq(st.log_bytes, (uint64_t)file_size(log_path(dir)));
        /* live: 50 records; a round adds at most 100 records, a counters record
         * and (after a compaction) nothing more */
        ck_assert_uint_lt(st.log_bytes, 16 + 2 * 50 * REC + 100 * REC + 2 * COUNTERS_REC);
    }
    samples_stats st = stats_of(s);
    ck_assert_uint_ge(st.compactions, 3);
    ck_assert_uint_eq(st.io_errors, 0);
    check_same(s, twin);
    samples_close(s);
    s = open_ok(dir, &o);
    check_same(s, twin);
    samples_close(s);
    samples_close(twin);
}
END_TEST

/* Past pending_max the records are dropped and the flush rewrites the log. */
START_TEST(test_pending_overflow)
{
    samples_opts o = mixed_opts();
    o.pending_max = 2048;
    samples *s = open_ok(dir, &o);
    samples *twin = open_ok(NULL, &o);
    add_mixed(s, 0, 500);
    add_mixed(twin, 0, 500);
    ck_assert_uint_le(stats_of(s).pending_bytes, 2048 + 200);
    emb_err err;
    ck_assert_msg(samples_flush(s, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(stats_of(s).compactions, 1);
    add_mixed(s, 500, 20);
    add_mixed(twin, 500, 20);
    samples_close(s);
    s = open_ok(dir, &o);
    check_same(s, twin);
    samples_close(s);
    samples_close(twin);
}
END_TEST

/* Reopened with lower caps, the buffer is cut down to them, and stays so. */
START_TEST(test_lower_caps)
{
    samples_opts o = mixed_opts();
    samples *s = open_ok(dir, &o);
    add_mixed(s, 0, 500);
    samples_close(s);
    o.max_texts = 40;
    o.holdout_max = 5;
    s = open_ok(dir, &o);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.train, 40);
    ck_assert_uint_eq(st.holdout, 5);
    snapshot before = snapshot_take(s);
    samples_close(s);
    s = open_ok(dir, &o);
    snapshot_check(s, &before);
    samples_close(s);
}
END_TEST

/* Twenty texts, one record each, then the counters record. */
static char *write_twenty(size_t *len, samples_stats *st)
{
    samples_opts o = small_opts();
    samples *s = open_ok(dir, &o);
    for (int i = 0; i < 20; i++)
        add_nth(s, i, SAMPLES_SRC_EMBED);
    *st = stats_of(s);
    samples_close(s);
    char *orig = tu_read_file(log_path(dir), len);
    ck_assert(orig != NULL);
    ck_assert_int_eq(strlen(nth(0)), TEXT_LEN);
    ck_assert_uint_eq(*len, 16 + 20 * REC + COUNTERS_REC);
    return orig;
}

/* The file cut at every byte of its last records: open repairs it, says
 * so, keeps what came before, and the repaired log reopens clean. */
START_TEST(test_torn_tail_cuts)
{
    samples_stats full;
    size_t len = 0;
    char *orig = write_twenty(&len, &full);
    samples_opts o = small_opts();
    size_t counters_at = len - COUNTERS_REC;
    for (size_t cut = counters_at - 2 * REC; cut < len; cut++) {
        ck_assert_int_eq(tu_write_file(log_path(dir), orig, cut), 0);
        samples *s = open_ok(dir, &o);
        samples_stats st = stats_of(s);
        size_t good = cut >= counters_at ? counters_at : 16 + (cut - 16) / REC * REC;
        ck_assert_uint_eq(st.truncated_bytes, cut - good);
        if (cut > good)
            ck_assert_msg(strstr(st.recovery, "torn tail") != NULL, "%s", st.recovery);
        ck_assert_uint_eq(st.train, (good - 16) / REC);
        ck_assert_int_eq(file_size(log_path(dir)), (long)good);
        samples_close(s);
        s = open_ok(dir, &o);
        ck_assert_uint_eq(stats_of(s).truncated_bytes, 0);
        ck_assert_uint_eq(stats_of(s).train, (good - 16) / REC);
        samples_close(s);
    }
    free(orig);
}
END_TEST

/* Garbage after the last record, and a flipped byte in the middle. */
/* The open fails because the log is corrupt (a bad record with records
 * that verify after it); samples_repair keeps `kept` training texts and
 * the damaged file beside the log, which the next open finds clean. */
static void refused_then_repaired(const samples_opts *o, unsigned long kept)
{
    emb_err err = {0};
    ck_assert(samples_open(dir, o, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(dfd, 0);
    reclog_salvage_report rep;
    ck_assert_msg(samples_repair(dir, dfd, &rep, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rep.rewritten, 1);
    ck_assert(unlinkat(dfd, rep.kept_as, 0) == 0);
    close(dfd);
    samples *s = open_ok(dir, o);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.train, kept);
    ck_assert_uint_eq(st.truncated_bytes, 0);
    samples_close(s);
}

START_TEST(test_torn_tail_garbage)
{
    samples_stats full;
    size_t len = 0;
    char *orig = write_twenty(&len, &full);
    samples_opts o = small_opts();
    char *bad = malloc(len + 37);
    memcpy(bad, orig, len);
    for (int i = 0; i < 37; i++)
        bad[len + (size_t)i] = (char)(i * 73 + 5);
    ck_assert_int_eq(tu_write_file(log_path(dir), bad, len + 37), 0);
    samples *s = open_ok(dir, &o);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.truncated_bytes, 37);
    ck_assert(strstr(st.recovery, "torn tail") != NULL);
    check_same_stats(&st, &full);
    samples_close(s);
    /* a flipped byte inside record 6 (slot 5), records after it: corrupt;
     * repaired, the other 19 come back */
    memcpy(bad, orig, len);
    bad[16 + 5 * REC + 20] ^= 0x10;
    ck_assert_int_eq(tu_write_file(log_path(dir), bad, len), 0);
    refused_then_repaired(&o, 19);
    s = open_ok(dir, &o);
    ck_assert_int_eq(add_nth(s, 100, SAMPLES_SRC_EMBED), 1);
    samples_close(s);
    s = open_ok(dir, &o);
    ck_assert_uint_eq(stats_of(s).train, 20);
    samples_close(s);
    free(bad);
    free(orig);
}
END_TEST

/* Any one byte flipped, header included: never a crash and never a text
 * that verifies silently dropped: a flip in the last record is a torn tail
 * (cut); anywhere else the open refuses, and samples_repair keeps every
 * other text. */
START_TEST(test_flip_every_byte)
{
    samples_opts o = small_opts();
    samples *s = open_ok(dir, &o);
    for (int i = 0; i < 4; i++)
        add_nth(s, i, SAMPLES_SRC_EMBED);
    samples_close(s);
    size_t len = 0;
    char *orig = tu_read_file(log_path(dir), &len);
    ck_assert(orig != NULL);
    for (size_t at = 0; at < len; at++) {
        orig[at] ^= 0x04;
        ck_assert_int_eq(tu_write_file(log_path(dir), orig, len), 0);
        orig[at] ^= 0x04;
        /* in the header (rebuilt), an earlier record (its text dropped)
         * or the last record (the counters after the four texts: damage,
         * not a torn write, so refused too; its texts all kept) */
        refused_then_repaired(&o, at < 16 || at >= 16 + 4 * REC ? 4 : 3);
    }
    free(orig);
}
END_TEST

/* A damaged header with records after it is refused (samples_repair
 * rebuilds it and keeps them); another version is refused, and the file
 * kept. */
START_TEST(test_bad_header)
{
    samples_stats full;
    size_t len = 0;
    char *orig = write_twenty(&len, &full);
    samples_opts o = small_opts();
    orig[2] ^= 1;
    ck_assert_int_eq(tu_write_file(log_path(dir), orig, len), 0);
    refused_then_repaired(&o, full.train);

    orig[2] ^= 1;
    orig[8] = 99; /* version 99, with a matching header checksum */
    uint32_t crc = wal_crc32c(0, orig, 12);
    memcpy(orig + 12, &crc, 4); /* little-endian host */
    ck_assert_int_eq(tu_write_file(log_path(dir), orig, len), 0);
    emb_err err = {0};
    ck_assert(samples_open(dir, &o, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "version 99") != NULL, "%s", err.msg);
    ck_assert_int_eq(file_size(log_path(dir)), (long)len);
    free(orig);
}
END_TEST

START_TEST(test_dir_locked)
{
    samples_opts o = small_opts();
    samples *s = open_ok(dir, &o);
    emb_err err = {0};
    ck_assert(samples_open(dir, &o, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "in use") != NULL, "%s", err.msg);
    ck_assert_int_eq(err.kind, EMB_ERR_CONFLICT);
    ck_assert_msg(strstr(err.msg, "samples.lock is held by this process") != NULL, "%s",
                  err.msg);
    samples_close(s);
    s = open_ok(dir, &o);
    samples_close(s);
}
END_TEST

/* ---- threads ---------------------------------------------------------------- */

#define N_ADDERS 4
#define PER_ADDER 3000

static pthread_barrier_t start; /* the adders and the drawer set off together */

typedef struct adder {
    samples *s;
    int first;
} adder;

static void *add_thread(void *arg)
{
    adder *a = arg;
    pthread_barrier_wait(&start);
    for (int i = a->first; i < a->first + PER_ADDER; i++) {
        add_nth(a->s, i, i % SAMPLES_N_SOURCES);
        if (i % 64 == 0)
            sched_yield(); /* let the others in: interleave, on few cores too */
    }
    return NULL;
}

typedef struct drawer {
    samples *s;
    pthread_mutex_t mu; /* guards stop */
    int stop;           /* set once the adders are done */
    int draws;
    int flush_errors;
} drawer;

static int drawer_stopped(drawer *d)
{
    pthread_mutex_lock(&d->mu);
    int stop = d->stop;
    pthread_mutex_unlock(&d->mu);
    return stop;
}

/* The trainer's side: draws (distinct texts each time), stats and flushes
 * while the adders run. */
static void *draw_thread(void *arg)
{
    drawer *d = arg;
    emb_rng rng;
    emb_rng_seed(&rng, 11);
    char *batch[32];
    pthread_barrier_wait(&start);
    while (!drawer_stopped(d)) {
        int n = samples_draw(d->s, 32, &rng, batch, 32);
        qsort(batch, (size_t)n, sizeof *batch, str_cmp);
        for (int i = 1; i < n; i++) {
            if (strcmp(batch[i - 1], batch[i]) == 0)
                d->flush_errors = 1000;
        }
        for (int i = 0; i < n; i++)
            free(batch[i]);
        samples_stats st;
        samples_stats_get(d->s, &st);
        if (st.train > 2000)
            d->flush_errors = 1000;
        if (d->draws % 4 == 0) {
            emb_err err;
            d->flush_errors += samples_flush(d->s, &err) != 0;
        }
        d->draws++;
    }
    return NULL;
}

START_TEST(test_threads)
{
    samples_opts o = small_opts();
    o.max_texts = 2000;
    o.holdout_fraction = 0.05;
    o.holdout_max = 50;
    o.compact_min_bytes = 16384;
    samples *s = open_ok(dir, &o);
    drawer d = {.s = s};
    pthread_mutex_init(&d.mu, NULL);
    pthread_barrier_init(&start, NULL, N_ADDERS + 1);
    pthread_t dt;
    pthread_create(&dt, NULL, draw_thread, &d);
    pthread_t th[N_ADDERS];
    adder ad[N_ADDERS];
    for (int t = 0; t < N_ADDERS; t++) {
        /* overlapping ranges: some texts come from two threads */
        ad[t] = (adder){.s = s, .first = t * 2000};
        pthread_create(&th[t], NULL, add_thread, &ad[t]);
    }
    for (int t = 0; t < N_ADDERS; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_lock(&d.mu);
    d.stop = 1;
    pthread_mutex_unlock(&d.mu);
    pthread_join(dt, NULL);
    pthread_mutex_destroy(&d.mu);
    pthread_barrier_destroy(&start);
    ck_assert_int_eq(d.flush_errors, 0);
    samples_stats st = stats_of(s);
    uint64_t received = 0;
    for (int i = 0; i < SAMPLES_N_SOURCES; i++)
        received += st.received[i];
    ck_assert_uint_eq(received, N_ADDERS * PER_ADDER);
    ck_assert_uint_eq(st.seen + st.duplicates + st.ignored, received);
    ck_assert_uint_eq(st.train, 2000);
    ck_assert_uint_eq(st.holdout, 50);
    /* the overlaps (3 x 1000 texts) are duplicates unless evicted meanwhile */
    ck_assert_uint_gt(st.duplicates, 0);
    ck_assert_uint_le(st.duplicates, 3000);
    fprintf(stderr, "threads: %d draws, %llu duplicates, %llu flushes, %llu compactions, "
            "log %llu bytes\n", d.draws, (unsigned long long)st.duplicates, (unsigned long long)st.flushes,
            (unsigned long long)st.compactions, (unsigned long long)st.log_bytes);
    snapshot before = snapshot_take(s);
    samples_close(s);
    s = open_ok(dir, &o);
    snapshot_check(s, &before);
    samples_close(s);
}
END_TEST

/* A log laid out byte by byte as samples.h documents it (the format of
 * data directories written before the log moved onto reclog) replays. */
static size_t put_record(unsigned char *r, const unsigned char *head, size_t head_len,
                         const char *text)
{
    size_t tl = text != NULL ? strlen(text) : 0;
    size_t len = head_len + tl;
    wal_put_u32(r, (uint32_t)len);
    memcpy(r + 8, head, head_len);
    if (tl > 0)
        memcpy(r + 8 + head_len, text, tl);
    uint32_t crc = wal_crc32c(0, r, 4);
    wal_put_u32(r + 4, wal_crc32c(crc, r + 8, len));
    return 8 + len;
}

START_TEST(test_documented_layout)
{
    static const char *texts[] = {"the first stored text", "the second stored text",
                                  "the third stored text"};
    unsigned char f[1024];
    memcpy(f, "EMBDSMPL", 8);
    wal_put_u32(f + 8, 1);
    wal_put_u32(f + 12, wal_crc32c(0, f, 12));
    size_t off = 16;
    for (int i = 0; i < 3; i++) {
        unsigned char head[6] = {1, 0};
        wal_put_u32(head + 2, (uint32_t)i);
        off += put_record(f + off, head, sizeof head, texts[i]);
    }
    unsigned char drop[6] = {2, 0};
    wal_put_u32(drop + 2, 0); /* the last slot moves into slot 0 */
    off += put_record(f + off, drop, sizeof drop, NULL);
    ck_assert_int_eq(tu_write_file(log_path(dir), f, off), 0);
    samples_opts o = small_opts();
    o.holdout_fraction = 0.0;
    samples *s = open_ok(dir, &o);
    samples_stats st = stats_of(s);
    ck_assert_uint_eq(st.replayed, 4);
    ck_assert_uint_eq(st.truncated_bytes, 0);
    ck_assert_uint_eq(st.train, 2);
    ck_assert_uint_eq(st.train_bytes, strlen(texts[1]) + strlen(texts[2]));
    samples_close(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("samples");
    TCase *tc = tcase_create("samples");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dedup);
    tcase_add_test(tc, test_trim_cut_and_min_length);
    tcase_add_test(tc, test_reservoir_uniform);
    tcase_add_test(tc, test_byte_cap);
    tcase_add_test(tc, test_holdout);
    tcase_add_test(tc, test_holdout_cap);
    tcase_add_test(tc, test_draw);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_crash_after_flush);
    tcase_add_test(tc, test_compaction);
    tcase_add_test(tc, test_pending_overflow);
    tcase_add_test(tc, test_lower_caps);
    tcase_add_test(tc, test_torn_tail_cuts);
    tcase_add_test(tc, test_torn_tail_garbage);
    tcase_add_test(tc, test_flip_every_byte);
    tcase_add_test(tc, test_bad_header);
    tcase_add_test(tc, test_dir_locked);
    tcase_add_test(tc, test_documented_layout);
    tcase_add_test(tc, test_threads);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
