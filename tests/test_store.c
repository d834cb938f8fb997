/* test_store.c: the item store: CRUD with both kinds of id, search against
 * a brute-force reference, thresholds, paging, filters, persistence
 * (reopen, crash without close, torn WAL tails, snapshots and the crash
 * window between snapshot and WAL rotation), concurrency, a crash loop
 * that SIGKILLs a writing child process, and a sick disk: failed WAL
 * writes and fsyncs (injected) and failed snapshots, from which the store
 * recovers without a reopen.
 *
 * Race check: make SANITIZER=thread TESTS="store wal" test with
 * OMP_NUM_THREADS=1 CK_FORK=no. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "run_suite.h"
#include "store/store.h"
#include "store/store_reembed.h"
#include "testutil.h"
#include "store/wal.h"

#define MAXD 64

/* For hot loops: Check records every passing ck_assert (its location goes
 * through a pipe), which costs seconds over the crash loop's 10^5 checks. */
#define EXPECT(cond, ...)               \
    do {                                \
        if (!(cond))                    \
            ck_abort_msg(__VA_ARGS__);  \
    } while (0)

/* ---- helpers --------------------------------------------------------------- */

static uint64_t rng;

static uint32_t rng_next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static float rng_float(void)
{
    return (float)rng_next() / 2147483648.0f - 1.0f;
}

static void random_vector(float *v, int dim)
{
    for (int i = 0; i < dim; i++)
        v[i] = rng_float();
}

/* A vector, text and payload that follow from the id alone, so a crash
 * test can check any item it was told about. */
static void derived_vector(uint64_t key, float *v, int dim)
{
    for (int i = 0; i < dim; i++)
        v[i] = sinf((float)(key % 1000003) * 0.37f + (float)i * 1.3f) + 0.01f;
}

static void normalise(const float *v, float *out, int dim)
{
    double s = 0;
    for (int i = 0; i < dim; i++)
        s += (double)v[i] * v[i];
    for (int i = 0; i < dim; i++)
        out[i] = (float)(v[i] / sqrt(s));
}

static void assert_vector_eq(const float *got, const float *raw, int dim)
{
    float want[MAXD];
    normalise(raw, want, dim);
    for (int i = 0; i < dim; i++)
        EXPECT(fabsf(got[i] - want[i]) < 1e-6f, "dim %d: %g vs %g", i, got[i], want[i]);
}

static char dir[64];

static void dir_setup(void)
{
    tu_mkdtemp(dir, sizeof dir);
    ck_assert(dir[0] != '\0');
}

static void dir_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
}

static store *open_store(const char *d, int dim, store_recovery *rec)
{
    emb_err err = {0};
    store_options opt = {.dir = d, .dim = dim};
    store *s = store_open(&opt, rec, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

static void upsert_one(store *s, store_id id, const float *v, int dim, const char *text,
                       const char *payload, int version)
{
    emb_err err;
    store_item it = {.id = id, .vector = v, .vector_dim = dim, .text = text,
                     .text_len = text ? strlen(text) : 0, .payload = payload,
                     .payload_len = payload ? strlen(payload) : 0, .model_version = version};
    ck_assert_msg(store_upsert(s, &it, 1, &err) == 0, "%s", err.msg);
}

static int id_eq(store_id a, store_id b)
{
    if (a.kind != b.kind)
        return 0;
    if (a.kind == STORE_ID_NUM)
        return a.num == b.num;
    return a.len == b.len && memcmp(a.str, b.str, a.len) == 0;
}

/* ---- CRUD ------------------------------------------------------------------------ */

START_TEST(test_crud_both_kinds)
{
    emb_err err;
    store *s = open_store(NULL, 4, NULL);
    float a[4] = {1, 0, 0, 0};
    float b[4] = {0, 3, 0, 4};
    upsert_one(s, store_id_num(7), a, 4, "seven", "{\"kind\": \"number\"}", 1);
    upsert_one(s, store_id_str("7"), b, 4, NULL, NULL, 2);
    ck_assert_int_eq(store_count(s), 2);

    store_record r;
    store_id seven = store_id_num(7);
    ck_assert_int_eq(store_get(s, &seven, &r, &err), 1);
    ck_assert_int_eq(r.id.kind, STORE_ID_NUM);
    ck_assert_uint_eq(r.id.num, 7);
    assert_vector_eq(r.vector, a, 4);
    ck_assert_str_eq(r.text, "seven");
    ck_assert_str_eq(r.payload, "{\"kind\": \"number\"}");
    ck_assert_int_eq(r.model_version, 1);
    store_record_free(&r);

    store_id sseven = store_id_str("7");
    ck_assert_int_eq(store_get(s, &sseven, &r, &err), 1);
    ck_assert_int_eq(r.id.kind, STORE_ID_STR);
    ck_assert_str_eq(r.id.str, "7");
    assert_vector_eq(r.vector, b, 4);
    ck_assert_float_eq_tol(r.vector[1], 0.6f, 1e-6f);
    ck_assert(r.text == NULL && r.payload == NULL);
    ck_assert_int_eq(r.model_version, 2);
    store_record_free(&r);

    /* Unknown ids: get says 0, delete deletes nothing and succeeds. */
    store_id unknown[3] = {store_id_num(8), store_id_str("8"), store_id_str("seven")};
    ck_assert_int_eq(store_get(s, &unknown[0], &r, &err), 0);
    ck_assert_int_eq(store_get(s, &unknown[1], &r, &err), 0);
    int deleted = -1;
    ck_assert_int_eq(store_delete(s, unknown, 3, &deleted, &err), 0);
    ck_assert_int_eq(deleted, 0);

    /* Deleting 7 leaves "7". */
    store_id both[2] = {store_id_num(7), store_id_num(7)};
    ck_assert_int_eq(store_delete(s, both, 2, &deleted, &err), 0);
    ck_assert_int_eq(deleted, 1);
    ck_assert_int_eq(store_get(s, &seven, &r, &err), 0);
    ck_assert_int_eq(store_get(s, &sseven, &r, &err), 1);
    store_record_free(&r);
    ck_assert_int_eq(store_count(s), 1);
    store_close(s);
}
END_TEST

START_TEST(test_upsert_replaces)
{
    emb_err err;
    store *s = open_store(NULL, 3, NULL);
    float v1[3] = {1, 2, 3};
    float v2[3] = {-3, 0, 1};
    store_id id = store_id_str("doc-1");
    upsert_one(s, id, v1, 3, "old text", "{\"a\": 1}", 1);
    upsert_one(s, id, v2, 3, "new text", "{\"b\": true}", 2);
    ck_assert_int_eq(store_count(s), 1);
    store_record r;
    ck_assert_int_eq(store_get(s, &id, &r, &err), 1);
    assert_vector_eq(r.vector, v2, 3);
    ck_assert_str_eq(r.text, "new text");
    ck_assert_str_eq(r.payload, "{\"b\": true}");
    ck_assert_int_eq(r.model_version, 2);
    store_record_free(&r);
    /* Replacing with no text and no payload drops them. */
    upsert_one(s, id, v1, 3, NULL, NULL, 3);
    ck_assert_int_eq(store_get(s, &id, &r, &err), 1);
    ck_assert(r.text == NULL && r.payload == NULL);
    ck_assert_int_eq(r.model_version, 3);
    store_record_free(&r);
    /* The old payload no longer matches a filter. */
    cJSON *fj = cJSON_Parse("{\"must\": [{\"key\": \"b\", \"match\": {\"value\": true}}]}");
    store_filter *f = store_filter_compile(fj, &err);
    ck_assert(f != NULL);
    store_query q;
    store_query_init(&q, v1, 3);
    q.filter = f;
    store_result res;
    ck_assert_int_eq(store_search(s, &q, &res, &err), 0);
    ck_assert_int_eq(res.n, 0);
    store_result_free(&res);
    store_filter_free(f);
    cJSON_Delete(fj);
    /* The same id twice in one batch: the later item wins. */
    store_item twice[2] = {
        {.id = id, .vector = v1, .vector_dim = 3, .model_version = 4},
        {.id = store_id_str("doc-1"), .vector = v2, .vector_dim = 3, .model_version = 5},
    };
    ck_assert(store_upsert(s, twice, 2, &err) == 0);
    ck_assert_int_eq(store_count(s), 1);
    ck_assert_int_eq(store_get(s, &id, &r, &err), 1);
    assert_vector_eq(r.vector, v2, 3);
    ck_assert_int_eq(r.model_version, 5);
    store_record_free(&r);
    store_close(s);
}
END_TEST

/* Many inserts and deletes keep the table and the matrix consistent. */
START_TEST(test_many_upserts_and_deletes)
{
    emb_err err;
    const int dim = 8;
    const int n = 5000;
    store *s = open_store(NULL, dim, NULL);
    rng = 42;
    store_item *items = calloc((size_t)n, sizeof *items);
    float *vecs = malloc(sizeof(float) * (size_t)n * dim);
    for (int i = 0; i < n; i++) {
        derived_vector((uint64_t)i, vecs + i * dim, dim);
        items[i].id = store_id_num((uint64_t)i);
        items[i].vector = vecs + i * dim;
        items[i].vector_dim = dim;
        items[i].model_version = i;
    }
    for (int i = 0; i < n; i += 1000)
        ck_assert_msg(store_upsert(s, items + i, 1000, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(store_count(s), n);
    /* Delete every third id, in a scrambled order. */
    store_id del[1];
    int expect = n;
    for (int k = 0; k < n; k++) {
        int i = (int)(((uint64_t)k * 7919) % (uint64_t)n);
        if (i % 3 != 0)
            continue;
        del[0] = store_id_num((uint64_t)i);
        int d;
        ck_assert(store_delete(s, del, 1, &d, &err) == 0);
        ck_assert_int_eq(d, 1);
        expect--;
    }
    ck_assert_int_eq(store_count(s), expect);
    for (int i = 0; i < n; i++) {
        store_record r;
        store_id id = store_id_num((uint64_t)i);
        int got = store_get(s, &id, &r, &err);
        ck_assert_int_eq(got, i % 3 != 0);
        if (got) {
            assert_vector_eq(r.vector, vecs + i * dim, dim);
            ck_assert_int_eq(r.model_version, i);
            store_record_free(&r);
        }
    }
    free(items);
    free(vecs);
    store_close(s);
}
END_TEST

START_TEST(test_validation)
{
    emb_err err = {0};
    store *s = open_store(NULL, 4, NULL);
    float v[4] = {1, 2, 3, 4};
    float zero[4] = {0};
    float nan[4] = {1, NAN, 0, 0};
    store_item ok = {.id = store_id_num(1), .vector = v, .vector_dim = 4};
    store_item bad = ok;

    bad.vector_dim = 3;
    ck_assert_int_eq(store_item_check(s, &bad, &err), -1);
    ck_assert_msg(strstr(err.msg, "dimensions") != NULL, "%s", err.msg);
    ck_assert_int_eq(store_upsert(s, &bad, 1, &err), -1);
    ck_assert_msg(strstr(err.msg, "dimensions") != NULL, "%s", err.msg);
    ck_assert_int_eq(store_item_check(s, &ok, &err), 0);
    bad = ok;
    bad.vector = zero;
    ck_assert_int_eq(store_upsert(s, &bad, 1, &err), -1);
    ck_assert_int_eq(store_item_check(s, &bad, &err), -1);
    bad.vector = nan;
    ck_assert_int_eq(store_upsert(s, &bad, 1, &err), -1);
    ck_assert_int_eq(store_item_check(s, &bad, &err), -1);
    const char *payloads[] = {"[1]", "{\"a\":", "{} {}", "\"x\"", "{\"a\": 1} x"};
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        bad = ok;
        bad.payload = payloads[i];
        bad.payload_len = strlen(payloads[i]);
        ck_assert_msg(store_upsert(s, &bad, 1, &err) == -1, "payload %s accepted", payloads[i]);
        ck_assert_int_eq(store_item_check(s, &bad, &err), -1);
        ck_assert(strstr(err.msg, "payload") != NULL);
    }
    char long_id[STORE_MAX_ID_LEN + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    bad = ok;
    bad.id = store_id_str(long_id);
    ck_assert_int_eq(store_upsert(s, &bad, 1, &err), -1);
    bad.id = store_id_str("");
    ck_assert_int_eq(store_upsert(s, &bad, 1, &err), -1);
    long_id[STORE_MAX_ID_LEN] = '\0'; /* exactly at the cap: fine */
    bad.id = store_id_str(long_id);
    ck_assert_msg(store_upsert(s, &bad, 1, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(store_upsert(s, &ok, 0, &err), -1);

    /* All or nothing: a bad item fails the whole batch. */
    store_item batch[2] = {ok, ok};
    batch[0].id = store_id_num(100);
    batch[1].vector_dim = 5;
    ck_assert_int_eq(store_upsert(s, batch, 2, &err), -1);
    ck_assert_msg(strstr(err.msg, "item 1") != NULL, "%s", err.msg);
    ck_assert_int_eq(store_count(s), 1);

    /* JSON ids. */
    /* numbers: 0..2^53-1, where every integer has its own double */
    const char *good_ids[] = {"7", "\"7\"", "0", "9007199254740991"};
    const char *bad_ids[] = {"-1",   "1.5",  "9007199254740992", "9007199254740993",
                             "true", "null", "\"\"",             "[1]"};
    for (size_t i = 0; i < sizeof good_ids / sizeof good_ids[0]; i++) {
        cJSON *j = cJSON_Parse(good_ids[i]);
        store_id id;
        ck_assert_msg(store_id_from_json(j, &id, &err) == 0, "%s: %s", good_ids[i], err.msg);
        cJSON_Delete(j);
    }
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        cJSON *j = cJSON_Parse(bad_ids[i]);
        store_id id;
        ck_assert_msg(store_id_from_json(j, &id, &err) == -1, "%s accepted", bad_ids[i]);
        cJSON_Delete(j);
    }
    cJSON *j = cJSON_Parse("7");
    store_id id;
    store_id_from_json(j, &id, &err);
    ck_assert_int_eq(id.kind, STORE_ID_NUM);
    cJSON_Delete(j);

    /* Queries. */
    store_query q;
    store_result res;
    store_query_init(&q, v, 5);
    ck_assert_int_eq(store_search(s, &q, &res, &err), -1);
    ck_assert(strstr(err.msg, "dimensions") != NULL);
    store_query_init(&q, v, 4);
    q.limit = 0;
    ck_assert_int_eq(store_search(s, &q, &res, &err), -1);
    q.limit = 10;
    q.offset = STORE_MAX_RESULTS;
    ck_assert_int_eq(store_search(s, &q, &res, &err), -1);
    store_query_init(&q, zero, 4);
    ck_assert_int_eq(store_search(s, &q, &res, &err), -1);
    store_close(s);

    store_options opt = {.dim = 0};
    ck_assert(store_open(&opt, NULL, &err) == NULL);
    opt.dim = STORE_MAX_DIM + 1;
    ck_assert(store_open(&opt, NULL, &err) == NULL);
}
END_TEST

/* ---- search -------------------------------------------------------------------- */

#define SN 3000
#define SD 48

typedef struct fixture {
    store *s;
    float raw[SN][SD];
    double unit[SN][SD];
    char names[SN][16];
    store_id ids[SN];
    int color[SN];             /* 0 red, 1 blue, 2 green */
    int num[SN];               /* i % 5 */
    int rare[SN];              /* about 1 in 100 */
    int has_payload[SN];
} fixture;

static fixture *fx;

static const char *color_name(int c)
{
    static const char *names[] = {"red", "blue", "green"};
    return names[c];
}

/* SN items, even ones numeric ids, odd ones string ids; most with payloads. */
static void search_setup(void)
{
    fx = calloc(1, sizeof *fx);
    fx->s = open_store(NULL, SD, NULL);
    rng = 12345;
    store_item *items = calloc(SN, sizeof *items);
    char (*payloads)[160] = calloc(SN, 160);
    for (int i = 0; i < SN; i++) {
        random_vector(fx->raw[i], SD);
        double norm = 0;
        for (int d = 0; d < SD; d++)
            norm += (double)fx->raw[i][d] * fx->raw[i][d];
        for (int d = 0; d < SD; d++)
            fx->unit[i][d] = fx->raw[i][d] / sqrt(norm);
        if (i % 2 == 0) {
            fx->ids[i] = store_id_num((uint64_t)i);
        } else {
            snprintf(fx->names[i], sizeof fx->names[i], "doc-%d", i);
            fx->ids[i] = store_id_str(fx->names[i]);
        }
        fx->color[i] = (int)(rng_next() % 3);
        fx->num[i] = i % 5;
        fx->rare[i] = rng_next() % 100 == 0;
        fx->has_payload[i] = i % 17 != 0;
        snprintf(payloads[i], 160,
                 "{\"color\": \"%s\", \"n\": %d, \"even\": %s, \"tags\": [\"t%d\", %d], "
                 "\"rare\": %s, \"nested\": {\"color\": \"red\"}}",
                 color_name(fx->color[i]), fx->num[i], i % 2 == 0 ? "true" : "false", i % 7,
                 i % 11, fx->rare[i] ? "true" : "false");
        items[i] = (store_item){.id = fx->ids[i], .vector = fx->raw[i], .vector_dim = SD,
                                .model_version = 1};
        if (fx->has_payload[i]) {
            items[i].payload = payloads[i];
            items[i].payload_len = strlen(payloads[i]);
        }
    }
    emb_err err;
    for (int i = 0; i < SN; i += 1000)
        ck_assert_msg(store_upsert(fx->s, items + i, 1000, &err) == 0, "%s", err.msg);
    free(items);
    free(payloads);
}

static void search_teardown(void)
{
    store_close(fx->s);
    free(fx);
}

typedef struct ref_hit {
    int item;
    double score;
} ref_hit;

static int ref_order(const void *pa, const void *pb)
{
    const ref_hit *a = pa;
    const ref_hit *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->item - b->item;
}

typedef int (*item_pred)(int i);

/* Every matching item, best first, scored in double precision. */
static int ref_search(const float *q, item_pred pred, ref_hit *out)
{
    double uq[SD];
    double norm = 0;
    for (int d = 0; d < SD; d++)
        norm += (double)q[d] * q[d];
    for (int d = 0; d < SD; d++)
        uq[d] = q[d] / sqrt(norm);
    int n = 0;
    for (int i = 0; i < SN; i++) {
        if (pred != NULL && !pred(i))
            continue;
        double s = 0;
        for (int d = 0; d < SD; d++)
            s += uq[d] * fx->unit[i][d];
        out[n].item = i;
        out[n].score = s;
        n++;
    }
    qsort(out, (size_t)n, sizeof *out, ref_order);
    return n;
}

/* The store's hits equal the reference from rank `from`: same scores, and
 * the same ids wherever the reference has no near-tie. */
static void check_hits(const store_result *res, const ref_hit *ref, int n_ref, int from)
{
    for (int i = 0; i < res->n; i++) {
        int k = from + i;
        ck_assert_int_lt(k, n_ref);
        ck_assert_msg(fabs(res->hits[i].score - ref[k].score) < 1e-5, "rank %d: %g vs %g", k,
                      res->hits[i].score, ref[k].score);
        int tie = (k > 0 && ref[k - 1].score - ref[k].score < 1e-5) ||
                  (k + 1 < n_ref && ref[k].score - ref[k + 1].score < 1e-5);
        if (!tie)
            ck_assert_msg(id_eq(res->hits[i].id, fx->ids[ref[k].item]), "rank %d: wrong id", k);
        if (i > 0)
            ck_assert(res->hits[i - 1].score >= res->hits[i].score);
    }
}

START_TEST(test_search_matches_brute_force)
{
    emb_err err;
    static ref_hit ref[SN];
    float q[SD];
    rng = 777;
    for (int t = 0; t < 5; t++) {
        random_vector(q, SD);
        int n_ref = ref_search(q, NULL, ref);
        store_query sq;
        store_query_init(&sq, q, SD);
        sq.limit = 50;
        sq.with_vector = 1;
        store_result res;
        ck_assert_msg(store_search(fx->s, &sq, &res, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(res.n, 50);
        check_hits(&res, ref, n_ref, 0);
        /* with_vector and with_payload copy the item's data. */
        const store_hit *top = &res.hits[0];
        int item = ref[0].item;
        assert_vector_eq(top->vector, fx->raw[item], SD);
        ck_assert_int_eq(top->payload != NULL, fx->has_payload[item]);
        ck_assert_int_eq(top->model_version, 1);
        store_result_free(&res);
    }
    /* A query equal to an item finds it first with score 1. */
    store_query sq;
    store_query_init(&sq, fx->raw[123], SD);
    sq.limit = 1;
    store_result res;
    ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
    ck_assert(id_eq(res.hits[0].id, fx->ids[123]));
    ck_assert_float_eq_tol(res.hits[0].score, 1.0f, 1e-5f);
    store_result_free(&res);
}
END_TEST

/* A batch (one sgemm per block) gives what the queries give alone. */
START_TEST(test_search_batch)
{
    emb_err err;
    enum { NQ = 7 };
    float q[NQ][SD];
    store_query qs[NQ];
    store_result outs[NQ];
    rng = 99;
    for (int i = 0; i < NQ; i++) {
        random_vector(q[i], SD);
        store_query_init(&qs[i], q[i], SD);
        qs[i].limit = 5 + i;
        qs[i].offset = i;
    }
    ck_assert_msg(store_search_batch(fx->s, qs, NQ, outs, &err) == 0, "%s", err.msg);
    for (int i = 0; i < NQ; i++) {
        store_result one;
        ck_assert(store_search(fx->s, &qs[i], &one, &err) == 0);
        ck_assert_int_eq(one.n, outs[i].n);
        for (int k = 0; k < one.n; k++) {
            ck_assert(id_eq(one.hits[k].id, outs[i].hits[k].id));
            ck_assert(fabsf(one.hits[k].score - outs[i].hits[k].score) < 1e-5f);
        }
        store_result_free(&one);
        store_result_free(&outs[i]);
    }
    /* One bad query fails the batch and says which. */
    qs[3].vector_dim = SD - 1;
    ck_assert_int_eq(store_search_batch(fx->s, qs, NQ, outs, &err), -1);
    ck_assert_msg(strstr(err.msg, "query 3") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_threshold)
{
    emb_err err;
    static ref_hit ref[SN];
    float q[SD];
    rng = 31337;
    random_vector(q, SD);
    int n_ref = ref_search(q, NULL, ref);
    /* Between two reference scores with a clear gap, near rank 20. */
    int k = 20;
    while (ref[k - 1].score - ref[k].score < 1e-4)
        k++;
    store_query sq;
    store_query_init(&sq, q, SD);
    sq.limit = 100;
    sq.score_threshold = (float)((ref[k - 1].score + ref[k].score) / 2);
    store_result res;
    ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
    ck_assert_int_eq(res.n, k);
    check_hits(&res, ref, n_ref, 0);
    for (int i = 0; i < res.n; i++)
        ck_assert(res.hits[i].score >= sq.score_threshold);
    store_result_free(&res);
    /* Above every score: nothing. */
    sq.score_threshold = 1.5f;
    ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
    ck_assert_int_eq(res.n, 0);
    store_result_free(&res);
}
END_TEST

START_TEST(test_offset_limit_paging)
{
    emb_err err;
    static ref_hit ref[SN];
    float q[SD];
    rng = 4242;
    random_vector(q, SD);
    int n_ref = ref_search(q, NULL, ref);
    store_query sq;
    store_query_init(&sq, q, SD);
    sq.limit = 30;
    store_result all;
    ck_assert(store_search(fx->s, &sq, &all, &err) == 0);
    for (int page = 0; page < 3; page++) {
        store_result res;
        sq.limit = 10;
        sq.offset = page * 10;
        ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
        ck_assert_int_eq(res.n, 10);
        for (int i = 0; i < 10; i++) {
            ck_assert(id_eq(res.hits[i].id, all.hits[page * 10 + i].id));
            ck_assert_float_eq(res.hits[i].score, all.hits[page * 10 + i].score);
        }
        check_hits(&res, ref, n_ref, page * 10);
        store_result_free(&res);
    }
    store_result_free(&all);
    /* Past the end: a short last page, then nothing. */
    store_result res;
    sq.offset = SN - 4;
    sq.limit = 10;
    ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
    ck_assert_int_eq(res.n, 4);
    store_result_free(&res);
    sq.offset = SN;
    ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
    ck_assert_int_eq(res.n, 0);
    store_result_free(&res);
}
END_TEST

static int pred_red(int i)
{
    return fx->has_payload[i] && fx->color[i] == 0;
}

static int pred_not_red(int i)
{
    return !pred_red(i);
}

static int pred_n3(int i)
{
    return fx->has_payload[i] && fx->num[i] == 3;
}

static int pred_even(int i)
{
    return fx->has_payload[i] && i % 2 == 0;
}

static int pred_odd_payload(int i)
{
    return fx->has_payload[i] && i % 2 == 1;
}

static int pred_blue_not_n0_not_t3(int i)
{
    return fx->has_payload[i] && fx->color[i] == 1 && fx->num[i] != 0 && i % 7 != 3;
}

static int pred_tag_t4(int i)
{
    return fx->has_payload[i] && i % 7 == 4;
}

static int pred_tag_num_5(int i)
{
    return fx->has_payload[i] && i % 11 == 5;
}

static int pred_rare(int i)
{
    return fx->has_payload[i] && fx->rare[i];
}

static int pred_none(int i)
{
    return 0;
}

typedef struct filter_case {
    const char *json;
    item_pred pred;
} filter_case;

/* Filters with string, number and bool values, must and must_not, arrays,
 * missing keys; each is checked against the brute force over the matching
 * items, so the top results are the top matching ones. */
START_TEST(test_filters)
{
    static const filter_case cases[] = {
        {"{\"must\": [{\"key\": \"color\", \"match\": {\"value\": \"red\"}}]}", pred_red},
        {"{\"must_not\": [{\"key\": \"color\", \"match\": {\"value\": \"red\"}}]}",
         pred_not_red},
        {"{\"must\": [{\"key\": \"n\", \"match\": {\"value\": 3}}]}", pred_n3},
        {"{\"must\": [{\"key\": \"n\", \"match\": {\"value\": 3.0}}]}", pred_n3},
        {"{\"must\": [{\"key\": \"even\", \"match\": {\"value\": true}}]}", pred_even},
        {"{\"must\": [{\"key\": \"even\", \"match\": {\"value\": false}}]}", pred_odd_payload},
        {"{\"must\": [{\"key\": \"color\", \"match\": {\"value\": \"blue\"}}],"
         " \"must_not\": [{\"key\": \"n\", \"match\": {\"value\": 0}},"
         "                {\"key\": \"tags\", \"match\": {\"value\": \"t3\"}}]}",
         pred_blue_not_n0_not_t3},
        {"{\"must\": [{\"key\": \"tags\", \"match\": {\"value\": \"t4\"}}]}", pred_tag_t4},
        {"{\"must\": [{\"key\": \"tags\", \"match\": {\"value\": 5}}]}", pred_tag_num_5},
        {"{\"must\": {\"key\": \"rare\", \"match\": {\"value\": true}}}", pred_rare},
        /* wrong type, missing key, nested key: no match */
        {"{\"must\": [{\"key\": \"n\", \"match\": {\"value\": \"3\"}}]}", pred_none},
        {"{\"must\": [{\"key\": \"missing\", \"match\": {\"value\": 1}}]}", pred_none},
        {"{\"must\": [{\"key\": \"nested.color\", \"match\": {\"value\": \"red\"}}]}",
         pred_none},
        {"{\"must\": [], \"must_not\": []}", NULL},
    };
    emb_err err;
    static ref_hit ref[SN];
    float q[SD];
    rng = 2024;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        cJSON *j = cJSON_Parse(cases[c].json);
        ck_assert(j != NULL);
        store_filter *f = store_filter_compile(j, &err);
        ck_assert_msg(f != NULL, "case %zu: %s", c, err.msg);
        for (int t = 0; t < 3; t++) {
            random_vector(q, SD);
            int n_ref = ref_search(q, cases[c].pred, ref);
            store_query sq;
            store_query_init(&sq, q, SD);
            sq.filter = f;
            sq.limit = 10;
            sq.offset = t * 3;
            store_result res;
            ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
            int want = n_ref - sq.offset;
            want = want < 0 ? 0 : want > 10 ? 10 : want;
            ck_assert_msg(res.n == want, "case %zu: %d hits, want %d", c, res.n, want);
            check_hits(&res, ref, n_ref, sq.offset);
            store_result_free(&res);
        }
        store_filter_free(f);
        cJSON_Delete(j);
    }
}
END_TEST

/* A very selective filter with a threshold: still the top matching items. */
START_TEST(test_selective_filter_top_k)
{
    emb_err err;
    static ref_hit ref[SN];
    cJSON *j = cJSON_Parse("{\"must\": [{\"key\": \"rare\", \"match\": {\"value\": true}},"
                           " {\"key\": \"even\", \"match\": {\"value\": true}}]}");
    store_filter *f = store_filter_compile(j, &err);
    ck_assert(f != NULL);
    float q[SD];
    rng = 5;
    random_vector(q, SD);
    int n_ref = ref_search(q, NULL, ref);
    int matching = 0;
    for (int i = 0; i < SN; i++)
        matching += pred_rare(i) && i % 2 == 0;
    ck_assert_msg(matching >= 5 && matching < 40, "%d matching items", matching);
    store_query sq;
    store_query_init(&sq, q, SD);
    sq.filter = f;
    sq.limit = 5;
    store_result res;
    ck_assert(store_search(fx->s, &sq, &res, &err) == 0);
    ck_assert_int_eq(res.n, 5);
    /* Walk the unfiltered reference: the hits are its first 5 matching items. */
    int k = 0;
    for (int r = 0; r < n_ref && k < 5; r++) {
        int i = ref[r].item;
        if (!(pred_rare(i) && i % 2 == 0))
            continue;
        ck_assert(id_eq(res.hits[k].id, fx->ids[i]));
        k++;
    }
    store_result_free(&res);
    store_filter_free(f);
    cJSON_Delete(j);
}
END_TEST

START_TEST(test_filter_errors)
{
    static const char *bad[][2] = {
        {"[]", "object"},
        {"{\"should\": []}", "should"},
        {"{\"must\": 5}", "array"},
        {"{\"must\": [5]}", "filter.must[0]"},
        {"{\"must\": [{\"key\": \"a\"}]}", "match"},
        {"{\"must\": [{\"match\": {\"value\": 1}}]}", "key"},
        {"{\"must\": [{\"key\": 1, \"match\": {\"value\": 1}}]}", "key"},
        {"{\"must\": [{\"key\": \"\", \"match\": {\"value\": 1}}]}", "key"},
        {"{\"must_not\": [{\"key\": \"a\", \"match\": {\"any\": [1]}}]}", "any"},
        {"{\"must\": [{\"key\": \"a\", \"match\": {\"value\": [1]}}]}", "value"},
        {"{\"must\": [{\"key\": \"a\", \"match\": {\"value\": null}}]}", "value"},
        {"{\"must\": [{\"key\": \"a\", \"match\": {}}]}", "value"},
        {"{\"must\": [{\"key\": \"a\", \"match\": 3}]}", "match"},
        {"{\"must\": [{\"key\": \"a\", \"range\": {\"gt\": 1}}]}", "range"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON *j = cJSON_Parse(bad[i][0]);
        ck_assert(j != NULL);
        emb_err err = {0};
        ck_assert_msg(store_filter_compile(j, &err) == NULL, "%s compiled", bad[i][0]);
        ck_assert_msg(strstr(err.msg, bad[i][1]) != NULL, "%s: \"%s\" lacks %s", bad[i][0],
                      err.msg, bad[i][1]);
        cJSON_Delete(j);
    }
    /* Too many conditions. */
    cJSON *j = cJSON_CreateObject();
    cJSON *must = cJSON_AddArrayToObject(j, "must");
    for (int i = 0; i <= STORE_MAX_CONDITIONS; i++) {
        cJSON *c = cJSON_Parse("{\"key\": \"a\", \"match\": {\"value\": 1}}");
        cJSON_AddItemToArray(must, c);
    }
    emb_err err = {0};
    ck_assert(store_filter_compile(j, &err) == NULL);
    ck_assert(strstr(err.msg, "limit") != NULL);
    cJSON_Delete(j);
    /* null: no filter, no error. */
    j = cJSON_CreateNull();
    err.msg[0] = 'x';
    ck_assert(store_filter_compile(j, &err) == NULL);
    ck_assert_int_eq(err.msg[0], '\0');
    cJSON_Delete(j);
}
END_TEST

/* ---- persistence ------------------------------------------------------------- */

#define PD 16

/* The expected content of a store: item k is present when alive[k]; its
 * data follows from k and its version. */
#define PMAX 2000
typedef struct model {
    int alive[PMAX];
    int version[PMAX];
} model;

static store_id model_id(int k, char *buf)
{
    if (k % 3 == 0) {
        snprintf(buf, 16, "%d", k);
        return store_id_str(buf);  /* "3" beside 3, sometimes */
    }
    return store_id_num((uint64_t)k);
}

static void model_item(int k, int version, store_item *it, float *v, char *text, char *payload,
                       char *idbuf)
{
    derived_vector((uint64_t)k * 31 + (uint64_t)version, v, PD);
    snprintf(text, 64, "text %d v%d", k, version);
    snprintf(payload, 64, "{\"k\": %d, \"v\": %d}", k, version);
    *it = (store_item){.id = model_id(k, idbuf), .vector = v, .vector_dim = PD,
                       .text = text, .text_len = strlen(text), .model_version = version};
    if (k % 4 != 1) {
        it->payload = payload;
        it->payload_len = strlen(payload);
    }
}

/* Upserts items first..first+n-1 at version v in one batch. */
static void model_upsert(store *s, model *m, int first, int n, int v)
{
    store_item *items = calloc((size_t)n, sizeof *items);
    float (*vecs)[PD] = calloc((size_t)n, sizeof *vecs);
    char (*texts)[64] = calloc((size_t)n, 64);
    char (*payloads)[64] = calloc((size_t)n, 64);
    char (*idbufs)[16] = calloc((size_t)n, 16);
    for (int i = 0; i < n; i++)
        model_item(first + i, v, &items[i], vecs[i], texts[i], payloads[i], idbufs[i]);
    emb_err err;
    ck_assert_msg(store_upsert(s, items, n, &err) == 0, "%s", err.msg);
    for (int i = 0; i < n; i++) {
        m->alive[first + i] = 1;
        m->version[first + i] = v;
    }
    free(items);
    free(vecs);
    free(texts);
    free(payloads);
    free(idbufs);
}

static void model_delete(store *s, model *m, int first, int n, int step)
{
    store_id ids[PMAX];
    char idbufs[PMAX][16];
    int k = 0;
    int existed = 0;
    for (int i = first; i < first + n; i += step) {
        ids[k] = model_id(i, idbufs[k]);
        existed += m->alive[i];
        m->alive[i] = 0;
        k++;
    }
    emb_err err;
    int deleted;
    ck_assert(store_delete(s, ids, k, &deleted, &err) == 0);
    ck_assert_int_eq(deleted, existed);
}

static void model_check_item(store *s, int k, int version)
{
    char idbuf[16];
    store_id id = model_id(k, idbuf);
    store_record r;
    emb_err err;
    EXPECT(store_get(s, &id, &r, &err) == 1, "item %d missing", k);
    store_item it;
    float v[PD];
    char text[64], payload[64], idb[16];
    model_item(k, version, &it, v, text, payload, idb);
    assert_vector_eq(r.vector, v, PD);
    EXPECT(strcmp(r.text, text) == 0, "item %d: text %s", k, r.text);
    if (it.payload != NULL)
        EXPECT(r.payload != NULL && strcmp(r.payload, payload) == 0, "item %d: payload", k);
    else
        EXPECT(r.payload == NULL, "item %d: payload", k);
    EXPECT(r.model_version == version, "item %d: version %d", k, r.model_version);
    store_record_free(&r);
}

static void model_check(store *s, const model *m)
{
    long alive = 0;
    for (int k = 0; k < PMAX; k++) {
        if (m->alive[k]) {
            model_check_item(s, k, m->version[k]);
            alive++;
        } else {
            char idbuf[16];
            store_id id = model_id(k, idbuf);
            store_record r;
            emb_err err;
            EXPECT(store_get(s, &id, &r, &err) == 0, "item %d should be gone", k);
        }
    }
    ck_assert_int_eq(store_count(s), alive);
}

START_TEST(test_reopen_identical)
{
    static model m;
    memset(&m, 0, sizeof m);
    store_recovery rec;
    store *s = open_store(dir, PD, &rec);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    model_upsert(s, &m, 0, 500, 1);
    model_upsert(s, &m, 250, 500, 2);
    model_delete(s, &m, 100, 300, 3);
    model_upsert(s, &m, 101, 1, 3);
    model_check(s, &m);
    store_close(s);
    s = open_store(dir, PD, &rec);
    ck_assert_uint_eq(rec.wal_records, 4);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    model_check(s, &m);
    /* And it keeps working after the reopen. */
    model_upsert(s, &m, 900, 10, 4);
    store_close(s);
    s = open_store(dir, PD, &rec);
    model_check(s, &m);
    store_close(s);
}
END_TEST

START_TEST(test_lock_and_dimension)
{
    emb_err err;
    store *s = open_store(dir, PD, NULL);
    store_options opt = {.dir = dir, .dim = PD};
    ck_assert(store_open(&opt, NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "in use") != NULL, "%s", err.msg);
    static model m;
    model_upsert(s, &m, 0, 10, 1);
    ck_assert(store_snapshot(s, &err) == 0);
    model_upsert(s, &m, 10, 10, 1);
    store_close(s);
    opt.dim = PD * 2;
    ck_assert(store_open(&opt, NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "dimension") != NULL, "%s", err.msg);
    /* Memory-only stores have nothing to snapshot. */
    s = open_store(NULL, PD, NULL);
    ck_assert_int_eq(store_snapshot(s, &err), -1);
    store_stats st;
    store_get_stats(s, &st);
    ck_assert(st.memory_only);
    store_close(s);
}
END_TEST

/* A child writes and leaves with _exit, never closing the store. */
START_TEST(test_reopen_after_exit_without_close)
{
    static model m;
    memset(&m, 0, sizeof m);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        store *s = open_store(dir, PD, NULL);
        model_upsert(s, &m, 0, 300, 1);
        model_delete(s, &m, 0, 300, 7);
        model_upsert(s, &m, 50, 10, 2);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* Redo the same in the model only. */
    for (int k = 0; k < 300; k++) {
        m.alive[k] = k % 7 != 0;
        m.version[k] = 1;
    }
    for (int k = 50; k < 60; k++) {
        m.alive[k] = 1;
        m.version[k] = 2;
    }
    store *s = open_store(dir, PD, NULL);
    model_check(s, &m);
    store_close(s);
}
END_TEST

static char *path_in(const char *name)
{
    static char p[4][128];
    static int next;
    next = (next + 1) % 4;
    snprintf(p[next], sizeof p[next], "%s/%s", dir, name);
    return p[next];
}

/* Cut the WAL at every byte of its last record (and flip each byte): open
 * recovers the earlier records, reports the cut, and takes new writes. */
START_TEST(test_torn_tail_every_offset)
{
    static model m;
    memset(&m, 0, sizeof m);
    store *s = open_store(dir, 4, NULL);
    /* Small items for a short last record. */
    float v[4] = {1, 2, 3, 4};
    upsert_one(s, store_id_num(1), v, 4, "one", "{\"a\": 1}", 1);
    upsert_one(s, store_id_str("two"), v, 4, NULL, NULL, 1);
    store_stats st;
    store_get_stats(s, &st);
    uint64_t before = st.wal_bytes;
    upsert_one(s, store_id_num(3), v, 4, "three", "{\"b\": [1, 2]}", 1);
    store_get_stats(s, &st);
    uint64_t full = st.wal_bytes;
    store_close(s);
    size_t len = 0;
    char *orig = tu_read_file(path_in("wal"), &len);
    ck_assert(orig != NULL && len == full);
    char *bad = malloc(len);
    store_id three = store_id_num(3);
    store_id four = store_id_num(4);
    for (int mode = 0; mode < 2; mode++) {
        for (uint64_t cut = before; cut < full; cut++) {
            memcpy(bad, orig, len);
            if (mode == 1)
                bad[cut] ^= 0x20;
            ck_assert(tu_write_file(path_in("wal"), bad, mode == 0 ? (size_t)cut : len) == 0);
            store_recovery rec;
            if (mode == 1) {
                /* a flipped byte in the whole last record is damage, not a
                 * torn write: refused, nothing cut */
                store_options o = {.dir = dir, .dim = 4};
                emb_err err = {0};
                ck_assert_msg(store_open(&o, &rec, &err) == NULL, "flip at %llu was cut",
                              (unsigned long long)cut);
                ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);
                continue;
            }
            s = open_store(dir, 4, &rec);
            ck_assert_int_eq(store_count(s), 2);
            store_record r;
            emb_err err;
            ck_assert_int_eq(store_get(s, &three, &r, &err), 0);
            uint64_t want_cut = mode == 0 ? cut - before : full - before;
            ck_assert_uint_eq(rec.truncated_bytes, want_cut);
            if (want_cut > 0)
                ck_assert_msg(strstr(rec.message, "torn tail") != NULL, "%s", rec.message);
            upsert_one(s, four, v, 4, NULL, NULL, 1);
            store_close(s);
            s = open_store(dir, 4, &rec);
            ck_assert_uint_eq(rec.truncated_bytes, 0);
            ck_assert_int_eq(store_count(s), 3);
            ck_assert_int_eq(store_get(s, &four, &r, &err), 1);
            store_record_free(&r);
            store_close(s);
        }
    }
    free(bad);
    free(orig);
}
END_TEST

START_TEST(test_snapshot_then_writes)
{
    static model m;
    memset(&m, 0, sizeof m);
    emb_err err;
    store *s = open_store(dir, PD, NULL);
    model_upsert(s, &m, 0, 400, 1);
    model_delete(s, &m, 0, 400, 5);
    ck_assert_msg(store_snapshot(s, &err) == 0, "%s", err.msg);
    store_stats st;
    store_get_stats(s, &st);
    ck_assert_uint_eq(st.snapshots, 1);
    ck_assert_uint_eq(st.wal_bytes, 32); /* a fresh log: its header only */
    model_upsert(s, &m, 300, 200, 2);
    model_delete(s, &m, 0, 100, 2);
    store_close(s);
    store_recovery rec;
    s = open_store(dir, PD, &rec);
    ck_assert_uint_eq(rec.snapshot_items, 400 - 80);
    ck_assert_uint_eq(rec.wal_records, 2);
    ck_assert_uint_eq(rec.wal_skipped, 0);
    model_check(s, &m);
    /* A second snapshot of the recovered state, then reopen from it alone. */
    ck_assert(store_snapshot(s, &err) == 0);
    store_close(s);
    s = open_store(dir, PD, &rec);
    ck_assert_uint_eq(rec.wal_records, 0);
    model_check(s, &m);
    store_close(s);
}
END_TEST

static void copy_file(const char *from, const char *to)
{
    size_t len = 0;
    char *buf = tu_read_file(from, &len);
    ck_assert_msg(buf != NULL, "cannot read %s", from);
    ck_assert(tu_write_file(to, buf, len) == 0);
    free(buf);
}

/* A crash after the snapshot's rename but before the new log: the old log
 * lies beside a newer snapshot. Replaying it blindly would resurrect a
 * deleted item and undo an update; the seqs prevent both. */
START_TEST(test_crash_between_snapshot_and_rotation)
{
    static model m;
    memset(&m, 0, sizeof m);
    emb_err err;
    store *s = open_store(dir, PD, NULL);
    model_upsert(s, &m, 0, 50, 1);
    copy_file(path_in("wal"), path_in("wal.short"));   /* lacks the records below */
    model_delete(s, &m, 0, 10, 1);
    model_upsert(s, &m, 20, 10, 2);
    copy_file(path_in("wal"), path_in("wal.full"));    /* every record */
    ck_assert(store_snapshot(s, &err) == 0);
    store_close(s);
    const char *olds[] = {"wal.full", "wal.short"};
    for (int i = 0; i < 2; i++) {
        copy_file(path_in(olds[i]), path_in("wal"));
        store_recovery rec;
        s = open_store(dir, PD, &rec);
        ck_assert_uint_eq(rec.wal_records, 0);
        ck_assert_uint_eq(rec.wal_skipped, i == 0 ? 3 : 1);
        model_check(s, &m);
        /* New writes continue the seqs, and survive another reopen. */
        model_upsert(s, &m, 60, 5, 3);
        model_delete(s, &m, 20, 1, 1);
        store_close(s);
        s = open_store(dir, PD, &rec);
        ck_assert_uint_eq(rec.truncated_bytes, 0);
        ck_assert_uint_eq(rec.wal_records, i == 0 ? 2 : 1); /* item 20 is gone already the second time */
        model_check(s, &m);
        ck_assert(store_snapshot(s, &err) == 0);
        store_close(s);
    }
}
END_TEST

/* ---- a sick disk ------------------------------------------------------------ */

static store *open_healing(void)
{
    emb_err err = {0};
    store_options opt = {.dir = dir, .dim = PD, .heal_interval = 0.2};
    store *s = store_open(&opt, NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

static int try_upsert(store *s, uint64_t k, emb_err *err)
{
    float v[PD];
    derived_vector(k, v, PD);
    store_item it = {.id = store_id_num(k), .vector = v, .vector_dim = PD};
    return store_upsert(s, &it, 1, err);
}

static int has_item(store *s, uint64_t k)
{
    emb_err err;
    store_record r;
    store_id id = store_id_num(k);
    int found = store_get(s, &id, &r, &err);
    ck_assert_int_ge(found, 0);
    store_record_free(&r);
    return found;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* Disk full during an append: the write is refused with 503's kind and the
 * reason, the store reports itself degraded and refuses writes until a
 * recovery attempt is due, reads and searches go on, and the next write
 * after that succeeds without a reopen. After a reopen, every acknowledged
 * item is there and no refused one. */
START_TEST(test_failed_write_degrades_then_recovers)
{
    store *s = open_healing();
    emb_err err = {0};
    ck_assert_int_eq(try_upsert(s, 1, &err), 0);
    ck_assert_int_eq(try_upsert(s, 2, &err), 0);
    store_health h;
    store_get_health(s, &h);
    ck_assert_int_eq(h.degraded, 0);
    wal_fault_set(WAL_OP_WRITE, 1, 1, ENOSPC);
    ck_assert_int_eq(try_upsert(s, 3, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_UNAVAILABLE);
    ck_assert_msg(strstr(err.msg, "store unavailable: ") == err.msg, "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "wal: write: No space left on device") != NULL, "%s", err.msg);
    store_get_health(s, &h);
    ck_assert_int_eq(h.degraded, 1);
    ck_assert(strstr(h.reason, "No space left on device") != NULL);
    ck_assert_uint_eq(h.io_errors[STORE_IO_WAL_WRITE], 1);
    ck_assert_uint_eq(h.io_errors_total, 1);
    ck_assert_uint_eq(h.episodes, 1);
    /* Within the interval: refused at once, upserts and deletes alike. */
    ck_assert_int_eq(try_upsert(s, 4, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_UNAVAILABLE);
    store_id one = store_id_num(1);
    ck_assert_int_eq(store_delete(s, &one, 1, NULL, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_UNAVAILABLE);
    store_get_health(s, &h);
    ck_assert_uint_eq(h.writes_refused, 2);
    /* Reads and searches go on. */
    ck_assert_int_eq(has_item(s, 1), 1);
    ck_assert_int_eq(has_item(s, 3), 0);
    ck_assert_int_eq(store_count(s), 2);
    float q[PD];
    derived_vector(2, q, PD);
    store_query sq;
    store_query_init(&sq, q, PD);
    store_result res;
    ck_assert_msg(store_search(s, &sq, &res, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(res.n, 2);
    ck_assert_uint_eq(res.hits[0].id.num, 2);
    store_result_free(&res);
    /* The disk is fine again (the fault is spent): once due, a write heals. */
    sleep_s(0.3);
    ck_assert_msg(try_upsert(s, 5, &err) == 0, "%s", err.msg);
    store_get_health(s, &h);
    ck_assert_int_eq(h.degraded, 0);
    ck_assert_str_eq(h.reason, "");
    ck_assert_uint_eq(h.recoveries, 1);
    ck_assert(strstr(h.last_error, "No space left on device") != NULL);
    store_close(s);
    s = open_healing();
    ck_assert_int_eq(store_count(s), 3);
    ck_assert_int_eq(has_item(s, 1) + has_item(s, 2) + has_item(s, 5), 3);
    ck_assert_int_eq(has_item(s, 3) + has_item(s, 4), 0);
    store_close(s);
}
END_TEST

/* A failed fsync: the write is refused, but its record was applied (a
 * refused write may be kept, store.h); store_heal writes a snapshot and a
 * new log once due, and the item survives a reopen. A store nobody writes
 * to recovers through store_heal alone. */
START_TEST(test_failed_fsync_heals_through_snapshot)
{
    store *s = open_healing();
    emb_err err = {0};
    ck_assert_int_eq(try_upsert(s, 1, &err), 0);
    wal_fault_set(WAL_OP_FSYNC, 1, 1, EIO);
    ck_assert_int_eq(try_upsert(s, 2, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_UNAVAILABLE);
    ck_assert_msg(strstr(err.msg, "fdatasync: Input/output error") != NULL, "%s", err.msg);
    ck_assert_int_eq(has_item(s, 2), 1);   /* refused but present */
    store_health h;
    store_get_health(s, &h);
    ck_assert_int_eq(h.degraded, 1);
    ck_assert_uint_eq(h.io_errors[STORE_IO_WAL_FSYNC], 1);
    ck_assert_int_eq(store_heal(s, &err), -1);   /* not due yet */
    ck_assert_int_eq(err.kind, EMB_ERR_UNAVAILABLE);
    sleep_s(0.3);
    ck_assert_msg(store_heal(s, &err) == 0, "%s", err.msg);
    store_stats st;
    store_get_stats(s, &st);
    ck_assert_uint_eq(st.snapshots, 1);
    ck_assert_uint_eq(st.wal_bytes, 32);   /* a new log */
    store_get_health(s, &h);
    ck_assert_int_eq(h.degraded, 0);
    ck_assert_int_eq(try_upsert(s, 3, &err), 0);
    store_close(s);
    s = open_healing();
    ck_assert_int_eq(has_item(s, 1) + has_item(s, 2) + has_item(s, 3), 3);
    store_close(s);
}
END_TEST

/* A snapshot that cannot be written (snapshot.tmp is a directory here, as
 * good as a full disk for this purpose) is counted, leaves the store
 * writable and its WAL whole, and works once the obstacle is gone. */
START_TEST(test_failed_snapshot_keeps_wal)
{
    store *s = open_healing();
    emb_err err = {0};
    ck_assert_int_eq(try_upsert(s, 1, &err), 0);
    ck_assert_int_eq(mkdir(path_in("snapshot.tmp"), 0755), 0);
    ck_assert_int_eq(store_snapshot(s, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_IO);
    store_health h;
    store_get_health(s, &h);
    ck_assert_int_eq(h.degraded, 0);
    ck_assert_uint_eq(h.io_errors[STORE_IO_SNAPSHOT_WRITE], 1);
    ck_assert(strstr(h.last_error, "snapshot.tmp") != NULL);
    ck_assert_int_eq(try_upsert(s, 2, &err), 0);
    ck_assert_int_eq(rmdir(path_in("snapshot.tmp")), 0);
    ck_assert_msg(store_snapshot(s, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(try_upsert(s, 3, &err), 0);
    store_close(s);
    s = open_healing();
    ck_assert_int_eq(has_item(s, 1) + has_item(s, 2) + has_item(s, 3), 3);
    store_close(s);
    const char *file, *op;
    store_io_label(STORE_IO_SNAPSHOT_WRITE, &file, &op);
    ck_assert_str_eq(file, "snapshot");
    ck_assert_str_eq(op, "write");
    store_io_label(STORE_IO_WAL_FSYNC, &file, &op);
    ck_assert_str_eq(file, "wal");
    ck_assert_str_eq(op, "fsync");
}
END_TEST

START_TEST(test_auto_snapshot)
{
    static model m;
    memset(&m, 0, sizeof m);
    emb_err err;
    store_options opt = {.dir = dir, .dim = PD, .snapshot_wal_bytes = 8192};
    store *s = store_open(&opt, NULL, &err);
    ck_assert(s != NULL);
    for (int i = 0; i < 100; i++)
        model_upsert(s, &m, i * 10, 10, 1);
    model_delete(s, &m, 0, 1000, 9);
    store_stats st;
    store_get_stats(s, &st);
    ck_assert_msg(st.snapshots >= 5, "%llu snapshots", (unsigned long long)st.snapshots);
    ck_assert_uint_le(st.wal_bytes, 8192 + 4096);
    ck_assert_str_eq(st.last_error, "");
    store_close(s);
    store_recovery rec;
    s = store_open(&opt, &rec, &err);
    ck_assert(s != NULL);
    ck_assert_uint_gt(rec.snapshot_items, 0);
    model_check(s, &m);
    store_close(s);
}
END_TEST

/* A damaged snapshot is refused, not silently dropped. */
START_TEST(test_corrupt_snapshot_refused)
{
    static model m;
    memset(&m, 0, sizeof m);
    emb_err err;
    store *s = open_store(dir, PD, NULL);
    model_upsert(s, &m, 0, 20, 1);
    ck_assert(store_snapshot(s, &err) == 0);
    store_close(s);
    size_t len = 0;
    char *buf = tu_read_file(path_in("snapshot"), &len);
    buf[len / 2] ^= 1;
    ck_assert(tu_write_file(path_in("snapshot"), buf, len) == 0);
    store_options opt = {.dir = dir, .dim = PD};
    ck_assert(store_open(&opt, NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "damaged") != NULL, "%s", err.msg);
    /* A leftover snapshot.tmp is ignored and removed. */
    buf[len / 2] ^= 1;
    ck_assert(tu_write_file(path_in("snapshot"), buf, len) == 0);
    ck_assert(tu_write_file(path_in("snapshot.tmp"), "junk", 4) == 0);
    s = open_store(dir, PD, NULL);
    model_check(s, &m);
    ck_assert(access(path_in("snapshot.tmp"), F_OK) != 0);
    store_close(s);
    free(buf);
}
END_TEST

/* ---- concurrency ---------------------------------------------------------------- */

#define N_WRITERS 6
#define PER_WRITER 40

typedef struct worker {
    store *s;
    int index;
    atomic_int *stop;
    long searches;
} worker;

static void *writer_main(void *p)
{
    worker *w = p;
    emb_err err;
    for (int i = 0; i < PER_WRITER; i++) {
        uint64_t key = (uint64_t)w->index * 1000 + (uint64_t)i;
        float v[PD];
        derived_vector(key, v, PD);
        char payload[48];
        snprintf(payload, sizeof payload, "{\"writer\": %d}", w->index);
        store_item it = {.id = store_id_num(key), .vector = v, .vector_dim = PD,
                         .payload = payload, .payload_len = strlen(payload)};
        ck_assert_msg(store_upsert(w->s, &it, 1, &err) == 0, "%s", err.msg);
        if (i % 4 == 3) {
            store_id gone = store_id_num(key - 1);
            int d;
            ck_assert(store_delete(w->s, &gone, 1, &d, &err) == 0);
            ck_assert_int_eq(d, 1);
        }
    }
    return NULL;
}

static void *reader_main(void *p)
{
    worker *w = p;
    emb_err err;
    char fjson[128];
    snprintf(fjson, sizeof fjson, "{\"must\": [{\"key\": \"writer\", \"match\": {\"value\": %d}}]}",
             w->index % N_WRITERS);
    cJSON *j = cJSON_Parse(fjson);
    store_filter *f = store_filter_compile(j, &err);
    cJSON_Delete(j);
    float q[PD];
    derived_vector((uint64_t)w->index, q, PD);
    while (!atomic_load(w->stop)) {
        store_query sq;
        store_query_init(&sq, q, PD);
        sq.limit = 20;
        sq.filter = (w->searches % 2) ? f : NULL;
        store_result res;
        EXPECT(store_search(w->s, &sq, &res, &err) == 0, "%s", err.msg);
        for (int i = 1; i < res.n; i++)
            EXPECT(res.hits[i - 1].score >= res.hits[i].score, "hits out of order");
        for (int i = 0; i < res.n; i++) {
            if (sq.filter != NULL)
                EXPECT(res.hits[i].id.num / 1000 == (uint64_t)(w->index % N_WRITERS),
                       "filter let %llu through", (unsigned long long)res.hits[i].id.num);
        }
        if (res.n > 0) {
            store_record r;
            int got = store_get(w->s, &res.hits[0].id, &r, &err);
            EXPECT(got >= 0, "%s", err.msg);
            if (got)
                store_record_free(&r);
        }
        store_result_free(&res);
        w->searches++;
    }
    store_filter_free(f);
    return NULL;
}

/* Writers from several threads (group commit) and readers meanwhile: every
 * write returns durable and visible, and survives a reopen. */
START_TEST(test_concurrent_writers_and_readers)
{
    emb_err err;
    store *s = open_store(dir, PD, NULL);
    atomic_int stop = 0;
    pthread_t wt[N_WRITERS];
    pthread_t rt[3];
    worker ws[N_WRITERS];
    worker rs[3];
    for (int t = 0; t < 3; t++) {
        rs[t] = (worker){s, t, &stop, 0};
        pthread_create(&rt[t], NULL, reader_main, &rs[t]);
    }
    for (int t = 0; t < N_WRITERS; t++) {
        ws[t] = (worker){s, t, &stop, 0};
        pthread_create(&wt[t], NULL, writer_main, &ws[t]);
    }
    for (int t = 0; t < N_WRITERS; t++)
        pthread_join(wt[t], NULL);
    atomic_store(&stop, 1);
    long searches = 0;
    for (int t = 0; t < 3; t++) {
        pthread_join(rt[t], NULL);
        searches += rs[t].searches;
    }
    store_stats st;
    store_get_stats(s, &st);
    fprintf(stderr, "concurrent: %llu records in %llu fdatasyncs, %ld searches meanwhile\n",
            (unsigned long long)st.wal_records, (unsigned long long)st.wal_syncs, searches);
    const int per = PER_WRITER - PER_WRITER / 4;
    ck_assert_int_eq(st.count, N_WRITERS * per);
    ck_assert_uint_le(st.wal_syncs, st.wal_records);
    store_close(s);
    s = open_store(dir, PD, NULL);
    ck_assert_int_eq(store_count(s), N_WRITERS * per);
    for (int t = 0; t < N_WRITERS; t++) {
        for (int i = 0; i < PER_WRITER; i++) {
            uint64_t key = (uint64_t)t * 1000 + (uint64_t)i;
            store_id id = store_id_num(key);
            store_record r;
            int want = !(i % 4 == 2);
            ck_assert_int_eq(store_get(s, &id, &r, &err), want);
            if (want) {
                float v[PD];
                derived_vector(key, v, PD);
                assert_vector_eq(r.vector, v, PD);
                store_record_free(&r);
            }
        }
    }
    store_close(s);
}
END_TEST

/* ---- crash loop --------------------------------------------------------------------- */

#define CRASH_ROUNDS 10
#define CRASH_THREADS 4
#define MAX_ACKED 4000000

typedef struct crash_writer {
    store *s;
    int fd;                    /* the pipe to the parent */
    uint64_t base;
} crash_writer;

static void crash_item(uint64_t key, store_item *it, float *v, char *text, char *payload,
                       char *idbuf)
{
    derived_vector(key, v, PD);
    snprintf(text, 64, "crash text %llu", (unsigned long long)key);
    snprintf(payload, 64, "{\"key\": %llu}", (unsigned long long)key);
    *it = (store_item){.vector = v, .vector_dim = PD, .text = text, .text_len = strlen(text),
                       .payload = payload, .payload_len = strlen(payload),
                       .model_version = (int)(key % 7)};
    if (key % 2 == 0) {
        it->id = store_id_num(key);
    } else {
        snprintf(idbuf, 24, "k%llu", (unsigned long long)key);
        it->id = store_id_str(idbuf);
    }
}

/* Upserts batches of 1..4 items forever; reports each acknowledged key. */
static void *crash_writer_main(void *p)
{
    crash_writer *cw = p;
    emb_err err;
    for (uint64_t k = 0;; k += 4) {
        int n = 1 + (int)(k / 4 % 4);
        store_item items[4];
        float v[4][PD];
        char text[4][64], payload[4][64], idbuf[4][24];
        for (int i = 0; i < n; i++)
            crash_item(cw->base + k + (uint64_t)i, &items[i], v[i], text[i], payload[i],
                       idbuf[i]);
        if (store_upsert(cw->s, items, n, &err) != 0)
            _exit(3);
        for (int i = 0; i < n; i++) {
            uint64_t key = cw->base + k + (uint64_t)i;
            if (write(cw->fd, &key, sizeof key) != sizeof key)
                _exit(4);
        }
    }
    return NULL;
}

static void crash_child(int fd, int round)
{
    emb_err err;
    store_options opt = {.dir = dir, .dim = PD, .snapshot_wal_bytes = 64 << 10};
    store *s = store_open(&opt, NULL, &err);
    if (s == NULL)
        _exit(2);
    crash_writer cw[CRASH_THREADS];
    pthread_t th[CRASH_THREADS];
    for (int t = 0; t < CRASH_THREADS; t++) {
        cw[t] = (crash_writer){s, fd, (uint64_t)round * 10000000 + (uint64_t)t * 1000000};
        pthread_create(&th[t], NULL, crash_writer_main, &cw[t]);
    }
    pause();
    _exit(0);
}

static void crash_check_key(store *s, uint64_t key)
{
    store_item it;
    float v[PD];
    char text[64], payload[64], idbuf[24];
    crash_item(key, &it, v, text, payload, idbuf);
    store_record r;
    emb_err err;
    EXPECT(store_get(s, &it.id, &r, &err) == 1, "acknowledged key %llu is missing",
           (unsigned long long)key);
    assert_vector_eq(r.vector, v, PD);
    EXPECT(r.text != NULL && strcmp(r.text, text) == 0, "key %llu: text",
           (unsigned long long)key);
    EXPECT(r.payload != NULL && strcmp(r.payload, payload) == 0, "key %llu: payload",
           (unsigned long long)key);
    EXPECT(r.model_version == it.model_version, "key %llu: version", (unsigned long long)key);
    store_record_free(&r);
}

/* What a power cut can leave after the last acknowledged record: part of a
 * record that was never acknowledged (here: a plausible length, then noise). */
static void append_garbage(const char *path, int n)
{
    unsigned char buf[256];
    wal_put_u32(buf, 100);
    for (int i = 4; i < n; i++)
        buf[i] = (unsigned char)rng_next();
    int fd = open(path, O_WRONLY | O_APPEND);
    ck_assert_int_ge(fd, 0);
    ck_assert(write(fd, buf, (size_t)n) == n);
    close(fd);
}

/* A child writes from several threads and reports acknowledged keys; it is
 * killed with SIGKILL at a random moment (every other round, a torn
 * unacknowledged record is appended too); every acknowledged item must be
 * there after the reopen, across rounds (with snapshots in between). */
START_TEST(test_crash_loop)
{
    rng = 1234567;
    uint64_t *acked = malloc(sizeof(uint64_t) * MAX_ACKED);
    long n_acked = 0;
    long torn = 0;
    for (int round = 0; round < CRASH_ROUNDS; round++) {
        int fds[2];
        ck_assert(pipe(fds) == 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(fds[1], round);
        }
        close(fds[1]);
        long delay_ms = 30 + rng_next() % 250;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        long long end_ns = (long long)until.tv_sec * 1000000000LL + until.tv_nsec +
                           delay_ms * 1000000LL;
        /* Read acknowledgements while the child runs, so it never blocks. */
        int fl = fcntl(fds[0], F_GETFL);
        fcntl(fds[0], F_SETFL, fl | O_NONBLOCK);
        for (;;) {
            uint64_t buf[512];
            ssize_t r = read(fds[0], buf, sizeof buf);
            ck_assert(r <= 0 || r % 8 == 0);
            ck_assert(r <= 0 || n_acked + r / 8 <= MAX_ACKED);
            for (ssize_t i = 0; r > 0 && i < r / 8; i++)
                acked[n_acked++] = buf[i];
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((long long)now.tv_sec * 1000000000LL + now.tv_nsec >= end_ns)
                break;
            if (r <= 0)
                usleep(1000);
        }
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        ck_assert_msg(WIFSIGNALED(status), "child exited early with %d", WEXITSTATUS(status));
        fcntl(fds[0], F_SETFL, fl);
        for (;;) {
            uint64_t buf[512];
            ssize_t r = read(fds[0], buf, sizeof buf);
            if (r <= 0)
                break;
            ck_assert(r % 8 == 0);
            ck_assert(n_acked + r / 8 <= MAX_ACKED);
            for (ssize_t i = 0; i < r / 8; i++)
                acked[n_acked++] = buf[i];
        }
        close(fds[0]);
        /* a torn write is a prefix of a frame: this one says 100 body
         * bytes and stops before the 108th (a whole frame that fails its
         * checksum is damage, and refused) */
        if (round % 2 == 1)
            append_garbage(path_in("wal"), 1 + (int)(rng_next() % 107));
        store_recovery rec;
        store *s = open_store(dir, PD, &rec);
        torn += rec.truncated_bytes > 0;
        if (round % 2 == 1)
            ck_assert_msg(rec.truncated_bytes > 0, "round %d: garbage tail not cut", round);
        for (long i = 0; i < n_acked; i++)
            crash_check_key(s, acked[i]);
        ck_assert_int_ge(store_count(s), n_acked);
        store_close(s);
    }
    fprintf(stderr, "crash loop: %d rounds, %ld acknowledged items all present, "
            "%ld recoveries cut a torn tail\n", CRASH_ROUNDS, n_acked, torn);
    free(acked);
}
END_TEST

/* ---- the approximate index ------------------------------------------------------- */

#define HN_DIM 32
#define HN_ITEMS 5000
#define HN_QUERIES 100

static store *open_mem(int dim, long hnsw_threshold)
{
    emb_err err = {0};
    /* a narrower build than the default keeps the sanitizer runs short */
    store_options opt = {.dim = dim, .hnsw_threshold = hnsw_threshold,
                         .hnsw_ef_construction = 64};
    store *s = store_open(&opt, NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

/* Upserts ids first..first+n-1 with vectors vecs (n, HN_DIM) and payloads
 * {"g": id % 10} into both stores. */
static void hn_upsert(store *a, store *b, uint64_t first, int n, const float *vecs)
{
    store_item *items = calloc((size_t)n, sizeof *items);
    char (*pay)[32] = calloc((size_t)n, sizeof *pay);
    ck_assert(items != NULL && pay != NULL);
    for (int i = 0; i < n; i++) {
        snprintf(pay[i], sizeof pay[i], "{\"g\": %d}", (int)((first + (uint64_t)i) % 10));
        items[i] = (store_item){.id = store_id_num(first + (uint64_t)i),
                                .vector = vecs + (size_t)i * HN_DIM, .vector_dim = HN_DIM,
                                .payload = pay[i], .payload_len = strlen(pay[i])};
    }
    emb_err err;
    ck_assert_msg(store_upsert(a, items, n, &err) == 0, "%s", err.msg);
    ck_assert_msg(store_upsert(b, items, n, &err) == 0, "%s", err.msg);
    free(items);
    free(pay);
}

/* Mean recall of approx against exact over nq queries (same query settings). */
static double hn_recall(store *approx, store *exact, const float *qv, int nq, int limit,
                        int offset, const store_filter *f, int check_g_not)
{
    long found = 0;
    long total = 0;
    for (int qi = 0; qi < nq; qi++) {
        store_query q;
        store_query_init(&q, qv + (size_t)qi * HN_DIM, HN_DIM);
        q.limit = limit;
        q.offset = offset;
        q.filter = f;
        store_result ra;
        store_result re;
        emb_err err;
        ck_assert_msg(store_search(approx, &q, &ra, &err) == 0, "%s", err.msg);
        ck_assert_msg(store_search(exact, &q, &re, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(ra.n, re.n);
        for (int i = 0; i < ra.n; i++) {
            if (check_g_not >= 0)
                EXPECT(ra.hits[i].id.num % 10 != (uint64_t)check_g_not, "filter broken");
            if (i > 0)
                EXPECT(ra.hits[i].score <= ra.hits[i - 1].score, "not best first");
            for (int j = 0; j < re.n; j++) {
                if (ra.hits[i].id.num == re.hits[j].id.num) {
                    found++;
                    EXPECT(fabsf(ra.hits[i].score - re.hits[j].score) < 1e-5f, "score");
                    break;
                }
            }
        }
        total += re.n;
        store_result_free(&ra);
        store_result_free(&re);
    }
    return total ? (double)found / (double)total : 1.0;
}

START_TEST(test_hnsw_matches_exact)
{
    rng = 424242;
    store *a = open_mem(HN_DIM, 500);
    store *e = open_mem(HN_DIM, 0);
    float *vecs = malloc(sizeof(float) * HN_ITEMS * HN_DIM);
    float *qv = malloc(sizeof(float) * HN_QUERIES * HN_DIM);
    ck_assert(vecs != NULL && qv != NULL);
    for (int i = 0; i < HN_ITEMS * HN_DIM; i++)
        vecs[i] = rng_float();
    for (int i = 0; i < HN_QUERIES * HN_DIM; i++)
        qv[i] = rng_float();
    for (int at = 0; at < HN_ITEMS; at += 250)
        hn_upsert(a, e, (uint64_t)at, 250, vecs + (size_t)at * HN_DIM);
    ck_assert(store_wait_index(a) == 1);
    ck_assert(store_wait_index(e) == 0);
    store_stats st;
    store_get_stats(a, &st);
    ck_assert_int_eq((long)st.hnsw_nodes, HN_ITEMS);
    ck_assert_int_eq((long)st.hnsw_builds, 1);
    ck_assert_int_eq(st.hnsw_building, 0);
    store_get_stats(e, &st);
    ck_assert_int_eq((long)st.hnsw_nodes, 0);

    double r = hn_recall(a, e, qv, HN_QUERIES, 10, 0, NULL, -1);
    printf("hnsw: recall@10 %.4f over %d queries, %d x %d\n", r, HN_QUERIES, HN_ITEMS, HN_DIM);
    fflush(stdout);
    ck_assert_msg(r >= 0.95, "recall@10 %.4f", r);

    /* Paging: offset 10 limit 10 is the tail of offset 0 limit 20. */
    for (int qi = 0; qi < 20; qi++) {
        store_query q;
        store_query_init(&q, qv + (size_t)qi * HN_DIM, HN_DIM);
        q.limit = 20;
        store_result all;
        store_result page;
        emb_err err;
        ck_assert(store_search(a, &q, &all, &err) == 0);
        q.offset = 10;
        q.limit = 10;
        ck_assert(store_search(a, &q, &page, &err) == 0);
        ck_assert_int_eq(all.n, 20);
        ck_assert_int_eq(page.n, 10);
        for (int i = 0; i < 10; i++)
            ck_assert(all.hits[10 + i].id.num == page.hits[i].id.num);
        store_result_free(&all);
        store_result_free(&page);
    }
    r = hn_recall(a, e, qv, HN_QUERIES, 10, 20, NULL, -1);
    printf("hnsw: recall of ranks 21-30 %.4f\n", r);
    fflush(stdout);
    ck_assert_msg(r >= 0.85, "recall at offset 20: %.4f", r);

    /* Deletes: ids 0..999 are never returned. */
    store_id *ids = malloc(sizeof(store_id) * 1000);
    for (int i = 0; i < 1000; i++)
        ids[i] = store_id_num((uint64_t)i);
    emb_err err;
    for (int at = 0; at < 1000; at += 500) {
        ck_assert(store_delete(a, ids + at, 500, NULL, &err) == 0);
        ck_assert(store_delete(e, ids + at, 500, NULL, &err) == 0);
    }
    free(ids);
    store_get_stats(a, &st);
    ck_assert_int_eq((long)st.hnsw_deleted, 1000);
    for (int qi = 0; qi < HN_QUERIES; qi++) {
        store_query q;
        store_query_init(&q, qv + (size_t)qi * HN_DIM, HN_DIM);
        q.limit = 50;
        store_result ra;
        ck_assert(store_search(a, &q, &ra, &err) == 0);
        ck_assert_int_eq(ra.n, 50);
        for (int i = 0; i < ra.n; i++)
            EXPECT(ra.hits[i].id.num >= 1000, "deleted id %llu returned",
                   (unsigned long long)ra.hits[i].id.num);
        store_result_free(&ra);
    }
    r = hn_recall(a, e, qv, HN_QUERIES, 10, 0, NULL, -1);
    ck_assert_msg(r >= 0.95, "recall@10 after deletes %.4f", r);

    /* Updates: ids 1000..1199 get new vectors; a query with the new vector
     * finds its item first, one with the old vector no longer at score 1. */
    float *nv = malloc(sizeof(float) * 200 * HN_DIM);
    for (int i = 0; i < 200 * HN_DIM; i++)
        nv[i] = rng_float();
    hn_upsert(a, e, 1000, 200, nv);
    for (int i = 0; i < 200; i++) {
        store_query q;
        store_query_init(&q, nv + (size_t)i * HN_DIM, HN_DIM);
        q.limit = 1;
        store_result ra;
        ck_assert(store_search(a, &q, &ra, &err) == 0);
        ck_assert_int_eq(ra.n, 1);
        EXPECT(ra.hits[0].id.num == 1000 + (uint64_t)i && ra.hits[0].score > 0.999f,
               "updated item %d not found by its new vector", i);
        store_result_free(&ra);
        store_query_init(&q, vecs + (size_t)(1000 + i) * HN_DIM, HN_DIM);
        q.limit = 1;
        ck_assert(store_search(a, &q, &ra, &err) == 0);
        EXPECT(ra.n == 1 && !(ra.hits[0].id.num == 1000 + (uint64_t)i && ra.hits[0].score > 0.999f),
               "updated item %d found by its old vector", i);
        store_result_free(&ra);
    }
    free(nv);
    r = hn_recall(a, e, qv, HN_QUERIES, 10, 0, NULL, -1);
    ck_assert_msg(r >= 0.95, "recall@10 after updates %.4f", r);

    /* Filters: a selective one (10% of items) falls back to exact search and
     * matches it; a broad one stays approximate but only returns matches. */
    cJSON *j = cJSON_Parse("{\"must\": [{\"key\": \"g\", \"match\": {\"value\": 3}}]}");
    store_filter *f = store_filter_compile(j, &err);
    cJSON_Delete(j);
    ck_assert_msg(f != NULL, "%s", err.msg);
    r = hn_recall(a, e, qv, HN_QUERIES, 10, 0, f, -1);
    printf("hnsw: selective filter recall %.4f\n", r);
    fflush(stdout);
    ck_assert_msg(r >= 0.95, "selective filter recall %.4f", r);
    store_filter_free(f);
    j = cJSON_Parse("{\"must_not\": [{\"key\": \"g\", \"match\": {\"value\": 3}}]}");
    f = store_filter_compile(j, &err);
    cJSON_Delete(j);
    ck_assert_msg(f != NULL, "%s", err.msg);
    r = hn_recall(a, e, qv, HN_QUERIES, 10, 0, f, 3);
    ck_assert_msg(r >= 0.95, "broad filter recall %.4f", r);
    store_filter_free(f);

    free(vecs);
    free(qv);
    store_close(a);
    store_close(e);
}
END_TEST

/* Deleting most items rebuilds the index without the dead nodes. */
START_TEST(test_hnsw_rebuild_after_deletes)
{
    rng = 777;
    store *a = open_mem(HN_DIM, 500);
    store *e = open_mem(HN_DIM, 0);
    float *vecs = malloc(sizeof(float) * 4000 * HN_DIM);
    for (int i = 0; i < 4000 * HN_DIM; i++)
        vecs[i] = rng_float();
    for (int at = 0; at < 4000; at += 500)
        hn_upsert(a, e, (uint64_t)at, 500, vecs + (size_t)at * HN_DIM);
    ck_assert(store_wait_index(a) == 1);
    store_id ids[500];
    emb_err err;
    for (int at = 0; at < 3000; at += 500) {
        for (int i = 0; i < 500; i++)
            ids[i] = store_id_num((uint64_t)(at + i));
        ck_assert(store_delete(a, ids, 500, NULL, &err) == 0);
        ck_assert(store_delete(e, ids, 500, NULL, &err) == 0);
        /* while a rebuild runs, the old index serves: never a deleted id */
        for (int qi = 0; qi < 20; qi++) {
            store_query q;
            store_query_init(&q, vecs + (size_t)qi * HN_DIM, HN_DIM);
            q.limit = 20;
            store_result ra;
            ck_assert(store_search(a, &q, &ra, &err) == 0);
            for (int i = 0; i < ra.n; i++)
                EXPECT(ra.hits[i].id.num >= (uint64_t)at + 500, "deleted id %llu returned",
                       (unsigned long long)ra.hits[i].id.num);
            store_result_free(&ra);
        }
    }
    ck_assert(store_wait_index(a) == 1);
    store_stats st;
    store_get_stats(a, &st);
    ck_assert_msg(st.hnsw_builds >= 2, "%llu builds", (unsigned long long)st.hnsw_builds);
    ck_assert_msg(st.hnsw_deleted < 1500, "%llu deleted nodes kept",
                  (unsigned long long)st.hnsw_deleted);
    double r = hn_recall(a, e, vecs, 100, 10, 0, NULL, -1);
    ck_assert_msg(r >= 0.95, "recall@10 after rebuild %.4f", r);
    free(vecs);
    store_close(a);
    store_close(e);
}
END_TEST


/* Upserts ids first..first+n-1 (vectors (n, HN_DIM)) into s alone. */
static void hn_put(store *s, uint64_t first, int n, const float *vecs)
{
    store_item items[500];
    ck_assert(n <= 500);
    for (int i = 0; i < n; i++)
        items[i] = (store_item){.id = store_id_num(first + (uint64_t)i),
                                .vector = vecs + (size_t)i * HN_DIM, .vector_dim = HN_DIM};
    emb_err err;
    ck_assert_msg(store_upsert(s, items, n, &err) == 0, "%s", err.msg);
}

/* The first hit's id for vector v (limit 1), or UINT64_MAX. */
static uint64_t hn_top(store *s, const float *v, float *score)
{
    store_query q;
    store_query_init(&q, v, HN_DIM);
    q.limit = 1;
    store_result r;
    emb_err err;
    ck_assert_msg(store_search(s, &q, &r, &err) == 0, "%s", err.msg);
    uint64_t id = r.n > 0 ? r.hits[0].id.num : UINT64_MAX;
    *score = r.n > 0 ? r.hits[0].score : -2;
    store_result_free(&r);
    return id;
}

#define BG_ITEMS 20000

/* The build runs in the background: searches meanwhile are exact, and the
 * upserts, updates and deletes made during it are in the index it swaps in. */
START_TEST(test_hnsw_writes_during_build)
{
    rng = 31337;
    store *a = open_mem(HN_DIM, BG_ITEMS);
    store *e = open_mem(HN_DIM, 0);
    float *vecs = malloc(sizeof(float) * (BG_ITEMS + 1000) * HN_DIM);
    float *nv = malloc(sizeof(float) * 1000 * HN_DIM);
    ck_assert(vecs != NULL && nv != NULL);
    for (int i = 0; i < (BG_ITEMS + 1000) * HN_DIM; i++)
        vecs[i] = rng_float();
    for (int i = 0; i < 1000 * HN_DIM; i++)
        nv[i] = rng_float();
    for (int at = 0; at < BG_ITEMS; at += 500)
        hn_upsert(a, e, (uint64_t)at, 500, vecs + (size_t)at * HN_DIM);
    store_stats st;
    store_get_stats(a, &st);
    ck_assert_msg(st.hnsw_building == 1 && st.hnsw_nodes == 0, "building %d, %llu nodes",
                  st.hnsw_building, (unsigned long long)st.hnsw_nodes);
    /* meanwhile: exact search */
    ck_assert(hn_recall(a, e, nv, 20, 10, 0, NULL, -1) == 1.0);
    /* deletes 0..999, updates 1000..1999, new ids BG_ITEMS.. */
    store_id ids[500];
    emb_err err;
    for (int at = 0; at < 1000; at += 500) {
        for (int i = 0; i < 500; i++)
            ids[i] = store_id_num((uint64_t)(at + i));
        ck_assert(store_delete(a, ids, 500, NULL, &err) == 0);
        ck_assert(store_delete(e, ids, 500, NULL, &err) == 0);
    }
    hn_upsert(a, e, 1000, 500, nv);
    hn_upsert(a, e, 1500, 500, nv + 500 * HN_DIM);
    hn_upsert(a, e, BG_ITEMS, 500, vecs + (size_t)BG_ITEMS * HN_DIM);
    hn_upsert(a, e, BG_ITEMS + 500, 500, vecs + (size_t)(BG_ITEMS + 500) * HN_DIM);
    store_get_stats(a, &st);
    int overlapped = st.hnsw_building;
    ck_assert(store_wait_index(a) == 1);
    store_get_stats(a, &st);
    printf("hnsw: writes during the build: %s; %llu nodes, %llu deleted\n",
           overlapped ? "all overlapped it" : "some came after it",
           (unsigned long long)st.hnsw_nodes, (unsigned long long)st.hnsw_deleted);
    fflush(stdout);
    ck_assert_int_eq((long)st.hnsw_builds, 1);
    ck_assert_int_eq(store_count(a), BG_ITEMS);
    for (int i = 0; i < 1000; i++) {
        float sc;
        uint64_t id = hn_top(a, vecs + (size_t)i * HN_DIM, &sc);
        EXPECT(id >= 1000, "deleted id %llu returned", (unsigned long long)id);
        id = hn_top(a, nv + (size_t)i * HN_DIM, &sc);
        EXPECT(id == 1000 + (uint64_t)i && sc > 0.999f, "updated %d: got %llu", i,
               (unsigned long long)id);
        id = hn_top(a, vecs + (size_t)(1000 + i) * HN_DIM, &sc);
        EXPECT(!(id == 1000 + (uint64_t)i && sc > 0.999f), "updated %d found by its old vector", i);
        id = hn_top(a, vecs + (size_t)(BG_ITEMS + i) * HN_DIM, &sc);
        EXPECT(id == BG_ITEMS + (uint64_t)i, "new %d: got %llu", i, (unsigned long long)id);
    }
    double r = hn_recall(a, e, vecs + (size_t)5000 * HN_DIM, 100, 10, 0, NULL, -1);
    printf("hnsw: recall@10 after the swap %.4f (%d x %d)\n", r, BG_ITEMS, HN_DIM);
    fflush(stdout);
    ck_assert_msg(r >= 0.95, "recall@10 %.4f", r);
    free(vecs);
    free(nv);
    store_close(a);
    store_close(e);
}
END_TEST

/* Per query: hnsw_ef widens the search, exact skips the index. */
START_TEST(test_hnsw_query_params)
{
    rng = 99;
    store *a = open_mem(HN_DIM, 500);
    store *e = open_mem(HN_DIM, 0);
    float *vecs = malloc(sizeof(float) * HN_ITEMS * HN_DIM);
    float *qv = malloc(sizeof(float) * HN_QUERIES * HN_DIM);
    ck_assert(vecs != NULL && qv != NULL);
    for (int i = 0; i < HN_ITEMS * HN_DIM; i++)
        vecs[i] = rng_float();
    for (int i = 0; i < HN_QUERIES * HN_DIM; i++)
        qv[i] = rng_float();
    for (int at = 0; at < HN_ITEMS; at += 500)
        hn_upsert(a, e, (uint64_t)at, 500, vecs + (size_t)at * HN_DIM);
    ck_assert(store_wait_index(a) == 1);
    long found[3] = {0, 0, 0};  /* ef 1 (that is, 2 * limit), ef 400, exact */
    for (int qi = 0; qi < HN_QUERIES; qi++) {
        store_query q;
        store_query_init(&q, qv + (size_t)qi * HN_DIM, HN_DIM);
        store_result re;
        emb_err err;
        ck_assert(store_search(e, &q, &re, &err) == 0);
        for (int v = 0; v < 3; v++) {
            q.hnsw_ef = v == 0 ? 1 : 400;
            q.exact = v == 2;
            store_result ra;
            ck_assert_msg(store_search(a, &q, &ra, &err) == 0, "%s", err.msg);
            ck_assert_int_eq(ra.n, re.n);
            for (int i = 0; i < ra.n; i++) {
                for (int j = 0; j < re.n; j++)
                    found[v] += ra.hits[i].id.num == re.hits[j].id.num;
                if (v == 2)
                    EXPECT(ra.hits[i].id.num == re.hits[i].id.num &&
                           ra.hits[i].score == re.hits[i].score, "exact differs at %d", i);
            }
            store_result_free(&ra);
        }
        store_result_free(&re);
    }
    double total = HN_QUERIES * 10.0;
    printf("hnsw: recall@10 with ef 20: %.4f, ef 400: %.4f, exact: %.4f\n", found[0] / total,
           found[1] / total, found[2] / total);
    fflush(stdout);
    ck_assert(found[2] == (long)total);
    ck_assert_msg(found[1] >= found[0] && found[1] / total >= 0.99, "ef 400: %.4f",
                  found[1] / total);
    store_query q;
    store_query_init(&q, qv, HN_DIM);
    emb_err err;
    q.hnsw_ef = STORE_MAX_HNSW_EF + 1;
    ck_assert(store_query_check(a, &q, &err) != 0);
    q.hnsw_ef = -1;
    ck_assert(store_query_check(a, &q, &err) != 0);
    free(vecs);
    free(qv);
    store_close(a);
    store_close(e);
}
END_TEST

/* Closing a store whose first build runs stops the build and frees it all
 * (ASan: no leak); so does closing one reopened over the threshold. */
START_TEST(test_hnsw_close_during_build)
{
    rng = 5;
    float *vecs = malloc(sizeof(float) * BG_ITEMS * HN_DIM);
    ck_assert(vecs != NULL);
    for (int i = 0; i < BG_ITEMS * HN_DIM; i++)
        vecs[i] = rng_float();
    store *a = open_mem(HN_DIM, BG_ITEMS);
    for (int at = 0; at < BG_ITEMS; at += 500)
        hn_put(a, (uint64_t)at, 500, vecs + (size_t)at * HN_DIM);
    store_stats st;
    store_get_stats(a, &st);
    ck_assert_int_eq(st.hnsw_building, 1);
    struct timespec t0;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    store_close(a);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("hnsw: close during a build took %.3f s\n", dt);
    fflush(stdout);
    ck_assert_msg(dt < 2.0, "close took %.3f s", dt);

    /* on disk: reopening over the threshold builds in the background */
    dir_setup();
    emb_err err = {0};
    store_options opt = {.dir = dir, .dim = HN_DIM, .hnsw_threshold = 1000,
                         .hnsw_ef_construction = 64};
    store *d = store_open(&opt, NULL, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    for (int at = 0; at < 5000; at += 500)
        hn_put(d, (uint64_t)at, 500, vecs + (size_t)at * HN_DIM);
    store_close(d);
    d = store_open(&opt, NULL, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    store_close(d);            /* at once: the build is cancelled */
    d = store_open(&opt, NULL, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    ck_assert(store_wait_index(d) == 1);
    float sc;
    for (int i = 0; i < 100; i++)
        EXPECT(hn_top(d, vecs + (size_t)i * HN_DIM, &sc) == (uint64_t)i, "item %d", i);
    store_close(d);
    dir_teardown();
    free(vecs);
}
END_TEST

/* ---- a store whose writes go to a system of record (store_remote) ---- */

/* A remote that records what it was asked and applies writes back through
 * the _local calls at once, as the cluster's follower does. */
typedef struct fake_remote {
    store *s;
    int upserts, removes, starts, puts, finishes;
    uint32_t started, put_version;
    int put_moving, finish_answer;
} fake_remote;

static int fake_upsert(void *ctx, const store_item *items, int n, emb_err *err)
{
    fake_remote *f = ctx;
    f->upserts++;
    return store_upsert_local(f->s, items, n, err);
}

static int fake_remove(void *ctx, const store_id *ids, int n, int *n_deleted, emb_err *err)
{
    fake_remote *f = ctx;
    f->removes++;
    return store_delete_local(f->s, ids, n, n_deleted, err);
}

static int fake_start(void *ctx, uint32_t version, emb_err *err)
{
    (void)err;
    fake_remote *f = ctx;
    f->starts++;
    f->started = version;
    return 0;
}

static int fake_put(void *ctx, const store_id *ids, const char *const *texts,
                    const size_t *lens, int n, const float *vecs, uint32_t version, int moving,
                    emb_err *err)
{
    (void)err;
    fake_remote *f = ctx;
    f->puts += n;
    f->put_version = version;
    f->put_moving = moving;
    for (int i = 0; i < n; i++)
        ck_assert(texts[i] != NULL && lens[i] > 0);
    store_reembed_put_ids(f->s, ids, n, vecs, version);
    return 0;
}

static int fake_finish(void *ctx, uint32_t version, emb_err *err)
{
    (void)err;
    fake_remote *f = ctx;
    f->finishes++;
    if (f->finish_answer == 1)
        store_reembed_switch(f->s, version);
    return f->finish_answer;
}

/* Writes go through the remote; re-embedding hands its vectors to it and
 * the store asks it to switch only when nothing is pending here; a forced
 * switch leaves items without a target vector unsearched for the new
 * version. */
START_TEST(test_remote_hooks)
{
    const int dim = 8;
    store *s = open_store(NULL, dim, NULL);
    fake_remote f = {.s = s};
    store_remote r = {.ctx = &f, .upsert = fake_upsert, .remove = fake_remove,
                      .reembed_start = fake_start, .reembed_put = fake_put,
                      .reembed_finish = fake_finish};
    store_set_remote(s, &r);
    store_reembed_adopt(s, 1);
    float v[8];
    char text[32];
    for (int k = 0; k < 4; k++) {
        derived_vector((uint64_t)k, v, dim);
        snprintf(text, sizeof text, "text %d", k);
        upsert_one(s, store_id_num((uint64_t)k), v, dim, text, NULL, 1);
    }
    ck_assert_int_eq(f.upserts, 4);
    ck_assert_int_eq(store_count(s), 4);
    emb_err err;
    int deleted = -1;
    store_id gone = store_id_num(3);
    ck_assert_int_eq(store_delete(s, &gone, 1, &deleted, &err), 0);
    ck_assert_int_eq(f.removes, 1);
    ck_assert_int_eq(deleted, 1);
    /* an invalid write never reaches the remote */
    store_item bad = {.id = store_id_num(9), .vector = v, .vector_dim = dim - 1};
    ck_assert_int_eq(store_upsert(s, &bad, 1, &err), -1);
    ck_assert_int_eq(f.upserts, 4);

    ck_assert_int_eq(store_reembed_start(s, 2, &err), 0);
    ck_assert_int_eq(f.starts, 1);
    ck_assert_uint_eq(f.started, 2);
    ck_assert_uint_eq(store_target_version(s), 2);
    store_text_item taken[8];
    int n = store_reembed_take(s, 8, taken, &err);
    ck_assert_int_eq(n, 3);
    float vecs[3 * 8];
    for (int i = 0; i < 3 * dim; i++)
        vecs[i] = (float)(i % dim == 0);
    /* the first two only: the third keeps its version-1 vector */
    ck_assert_int_eq(store_reembed_put(s, taken, 2, vecs, 2, &err), 0);
    ck_assert_int_eq(f.puts, 2);
    ck_assert_uint_eq(f.put_version, 2);
    ck_assert_int_eq(f.put_moving, 1);
    store_text_items_free(taken, n);
    ck_assert_int_eq(store_reembed_finish(s, &err), 0);
    ck_assert_int_eq(f.finishes, 0); /* an item is still pending here: not asked */
    ck_assert_uint_eq(store_vectors_version(s), 1);
    /* the system of record switches anyway (an item raced the move) */
    ck_assert_int_eq(store_reembed_switch(s, 2), 1);
    ck_assert_int_eq(store_reembed_switch(s, 2), 0);
    ck_assert_uint_eq(store_vectors_version(s), 2);
    float q[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    store_query qq;
    store_query_init(&qq, q, dim);
    qq.model_version = 2;
    store_result res;
    ck_assert_int_eq(store_search(s, &qq, &res, &err), 0);
    ck_assert_int_eq(res.n, 2);
    for (int i = 0; i < res.n; i++) {
        ck_assert_int_eq(res.hits[i].model_version, 2);
        ck_assert_float_eq_tol(res.hits[i].score, 1.0f, 1e-5f);
    }
    store_result_free(&res);
    /* the one left behind is taken again, and its vector replaces the
     * searched one once the remote has it (not moving any more) */
    n = store_reembed_take(s, 8, taken, &err);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(store_reembed_put(s, taken, 1, vecs, 2, &err), 0);
    ck_assert_int_eq(f.put_moving, 0);
    store_text_items_free(taken, n);
    store_close(s);
}
END_TEST

int main(void)
{
    Suite *suite = suite_create("store");
    TCase *mem = tcase_create("memory");
    tcase_add_test(mem, test_remote_hooks);
    tcase_add_test(mem, test_crud_both_kinds);
    tcase_add_test(mem, test_upsert_replaces);
    tcase_add_test(mem, test_many_upserts_and_deletes);
    tcase_add_test(mem, test_validation);
    tcase_add_test(mem, test_filter_errors);
    suite_add_tcase(suite, mem);

    TCase *search = tcase_create("search");
    tcase_add_checked_fixture(search, search_setup, search_teardown);
    tcase_add_test(search, test_search_matches_brute_force);
    tcase_add_test(search, test_search_batch);
    tcase_add_test(search, test_threshold);
    tcase_add_test(search, test_offset_limit_paging);
    tcase_add_test(search, test_filters);
    tcase_add_test(search, test_selective_filter_top_k);
    suite_add_tcase(suite, search);

    TCase *disk = tcase_create("disk");
    tcase_add_checked_fixture(disk, dir_setup, dir_teardown);
    tcase_set_timeout(disk, 120);
    tcase_add_test(disk, test_reopen_identical);
    tcase_add_test(disk, test_lock_and_dimension);
    tcase_add_test(disk, test_reopen_after_exit_without_close);
    tcase_add_test(disk, test_torn_tail_every_offset);
    tcase_add_test(disk, test_snapshot_then_writes);
    tcase_add_test(disk, test_crash_between_snapshot_and_rotation);
    tcase_add_test(disk, test_auto_snapshot);
    tcase_add_test(disk, test_corrupt_snapshot_refused);
    tcase_add_test(disk, test_concurrent_writers_and_readers);
    tcase_add_test(disk, test_crash_loop);
    tcase_add_test(disk, test_failed_write_degrades_then_recovers);
    tcase_add_test(disk, test_failed_fsync_heals_through_snapshot);
    tcase_add_test(disk, test_failed_snapshot_keeps_wal);
    suite_add_tcase(suite, disk);

    TCase *hnsw = tcase_create("hnsw");
    tcase_set_timeout(hnsw, 900);
    tcase_add_test(hnsw, test_hnsw_matches_exact);
    tcase_add_test(hnsw, test_hnsw_rebuild_after_deletes);
    tcase_add_test(hnsw, test_hnsw_writes_during_build);
    tcase_add_test(hnsw, test_hnsw_query_params);
    tcase_add_test(hnsw, test_hnsw_close_during_build);
    suite_add_tcase(suite, hnsw);

    return run_suite(suite);
}
