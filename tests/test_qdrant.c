/* test_qdrant.c: the Qdrant collections (server/store/collections.c) and
 * their routes (server/http/routes_qdrant.c).
 *
 * "registry": the library directly: names, create and drop on disk, a
 *   drop while a request still holds the collection, and leftovers of a
 *   create or drop cut short, removed at open.
 * "routes": the real binary without --data (collections in memory): every
 *   route in Qdrant's shapes, and its errors (404 unknown collection or
 *   point, 409 existing collection, 400 bad input, 422 bad name or JSON),
 *   always in Qdrant's error envelope; Documents in "default" and in a
 *   named collection of the model's size, refused in one of another size.
 * "disk": servers of their own with --data: collections and points survive
 *   a restart, a dropped collection stays dropped, and a half-created
 *   collection left in the data directory does not break startup; Documents
 *   in a named collection of the model's size follow a change of the model
 *   version (a rollback from 2 to 1): re-embedded with 1, queried with 1,
 *   kept across a restart.
 * Each test uses its own collection names: tests share a TCase's server. */
#include <check.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "run_suite.h"
#include "serverproc.h"
#include "testutil.h"

#include "learn/versions.h"
#include "store/collections.h"

#define SERVER_MODEL_DIR "tests/fixtures/tiny-f16" /* serverproc.c's model */

/* ---- helpers --------------------------------------------------------------------- */

/* Sends a request and parses the body (NULL when it is not JSON). */
static long call(int port, const char *method, const char *path, const char *body, cJSON **out)
{
    http_resp r;
    long status = http_port(port, method, path, body, NULL, &r);
    *out = cJSON_ParseWithLength(r.body.p != NULL ? r.body.p : "", r.body.len);
    resp_free(&r);
    return status;
}

/* A success: status 200, {"result": ..., "status": "ok", "time": s}; returns
 * a detached result (cJSON_Delete it). */
static cJSON *ok(int port, const char *method, const char *path, const char *body)
{
    cJSON *j = NULL;
    long status = call(port, method, path, body, &j);
    char *txt = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
    ck_assert_msg(status == 200, "%s %s: %ld %s", method, path, status, txt ? txt : "(not JSON)");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    ck_assert_msg(cJSON_IsString(st) && strcmp(st->valuestring, "ok") == 0, "%s", txt);
    ck_assert_msg(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "time")), "%s", txt);
    cJSON *res = cJSON_DetachItemFromObjectCaseSensitive(j, "result");
    ck_assert_msg(res != NULL, "no result: %s", txt);
    free(txt);
    cJSON_Delete(j);
    return res;
}

/* An error: the status and {"status": {"error": "...<needle>..."}, "time": n}. */
static void fails(int port, const char *method, const char *path, const char *body,
                  long want, const char *needle)
{
    cJSON *j = NULL;
    long status = call(port, method, path, body, &j);
    char *txt = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
    ck_assert_msg(status == want, "%s %s: %ld, want %ld: %s", method, path, status, want,
                  txt ? txt : "(not JSON)");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(st, "error");
    ck_assert_msg(cJSON_IsString(e), "not a Qdrant error: %s", txt);
    ck_assert_msg(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "time")), "%s", txt);
    ck_assert_msg(needle == NULL || strstr(e->valuestring, needle) != NULL,
                  "%s %s: error %s lacks \"%s\"", method, path, e->valuestring, needle);
    free(txt);
    cJSON_Delete(j);
}

static double num(const cJSON *j, const char *key)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsNumber(f), "no number %s", key);
    return f->valuedouble;
}

/* The ids of a list of points, as "1,2,\"a\"". */
static void ids_of(const cJSON *arr, char *out, size_t cap)
{
    out[0] = '\0';
    const cJSON *p;
    cJSON_ArrayForEach(p, arr) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(p, "id");
        size_t n = strlen(out);
        if (cJSON_IsNumber(id))
            snprintf(out + n, cap - n, "%s%.0f", n ? "," : "", id->valuedouble);
        else
            snprintf(out + n, cap - n, "%s\"%s\"", n ? "," : "", id->valuestring);
    }
}

static int has_collection(int port, const char *name)
{
    cJSON *res = ok(port, "GET", "/collections", NULL);
    const cJSON *c;
    int found = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(res, "collections")) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(c, "name");
        found |= cJSON_IsString(n) && strcmp(n->valuestring, name) == 0;
    }
    cJSON_Delete(res);
    return found;
}

static void create(int port, const char *name, int size)
{
    char path[200], body[200];
    snprintf(path, sizeof path, "/collections/%s", name);
    snprintf(body, sizeof body, "{\"vectors\":{\"size\":%d,\"distance\":\"Cosine\"}}", size);
    cJSON *res = ok(port, "PUT", path, body);
    ck_assert(cJSON_IsTrue(res));
    cJSON_Delete(res);
}

/* Five points of dimension 4: 1 Berlin, 2 London, "u" Berlin (UUID), 4 Paris, 5 no payload. */
static void fill(int port, const char *name)
{
    char path[200];
    snprintf(path, sizeof path, "/collections/%s/points?wait=true", name);
    cJSON *res = ok(port, "PUT", path,
                    "{\"points\":[{\"id\":1,\"vector\":[1,0,0,0],\"payload\":{\"city\":\"Berlin\"}},"
                    "{\"id\":2,\"vector\":[0.9,0.1,0,0],\"payload\":{\"city\":\"London\"}},"
                    "{\"id\":\"5c56c793-69f3-4fbf-87e6-c4bf54c28c26\",\"vector\":[0,1,0,0],"
                    "\"payload\":{\"city\":\"Berlin\"}}]}");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(res, "status")->valuestring, "completed");
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(res, "operation_id")));
    cJSON_Delete(res);
    res = ok(port, "PUT", path,
             "{\"batch\":{\"ids\":[4,5],\"vectors\":[[0,0,1,0],[0,0,0,1]],"
             "\"payloads\":[{\"city\":\"Paris\"},null]}}");
    cJSON_Delete(res);
}

#define UUID "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"
#define BERLIN "\"filter\":{\"must\":[{\"key\":\"city\",\"match\":{\"value\":\"Berlin\"}}]}"

/* ---- registry (the library) -------------------------------------------------------------- */

static collections *open_reg(const char *dir, char *report, size_t cap)
{
    collections_options o = {.data_dir = dir};
    emb_err err;
    collections *c = collections_open(&o, report, cap, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    return c;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

START_TEST(test_registry_names)
{
    emb_err err;
    const char *good[] = {"a", "docs_2024", "my-coll.v1", "A"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        ck_assert_msg(collections_name_check(good[i], strlen(good[i]), &err) == 0, "%s: %s",
                      good[i], err.msg);
    const char *bad[] = {"", ".", "..", ".hidden", "a/b", "../x", "a b", "a\\b", "é"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(collections_name_check(bad[i], strlen(bad[i]), &err) != 0, "%s accepted",
                      bad[i]);
    char longname[COLL_MAX_NAME + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[COLL_MAX_NAME + 1] = '\0';
    ck_assert_int_ne(collections_name_check(longname, COLL_MAX_NAME + 1, &err), 0);
    ck_assert_int_eq(collections_name_check(longname, COLL_MAX_NAME, &err), 0);
}
END_TEST

START_TEST(test_registry_create_drop_disk)
{
    char dir[256], path[512], report[256];
    emb_err err;
    tu_mkdtemp(dir, sizeof dir);
    collections *c = open_reg(dir, report, sizeof report);
    ck_assert_int_eq(collections_create(c, "one", 3, &err), 0);
    ck_assert_int_eq(collections_create(c, "one", 3, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_CONFLICT);
    ck_assert_int_eq(collections_create(c, "../evil", 3, &err), -1);
    ck_assert_int_eq(err.kind, EMB_ERR_INVALID);
    ck_assert_int_eq(collections_create(c, "zero", 0, &err), -1);
    snprintf(path, sizeof path, "%s/collections/one/collection.json", dir);
    ck_assert_msg(exists(path), "%s missing", path);

    /* a request holds "one" while it is dropped: its store stays usable */
    collection *col = collections_get(c, "one");
    ck_assert_ptr_nonnull(col);
    ck_assert_int_eq(collections_drop(c, "one", &err), 1);
    ck_assert_int_eq(collections_drop(c, "one", &err), 0);
    ck_assert_ptr_null(collections_get(c, "one"));
    ck_assert(!exists(path));
    float v[3] = {1, 2, 3};
    store_item it = {.id = store_id_num(7), .vector = v, .vector_dim = 3};
    ck_assert_msg(store_upsert(collection_store(col), &it, 1, &err) == 0, "%s", err.msg);
    /* the name is free again at once, with another size */
    ck_assert_int_eq(collections_create(c, "one", 5, &err), 0);
    collection *again = collections_get(c, "one");
    ck_assert_int_eq(store_dim(collection_store(again)), 5);
    ck_assert_int_eq(store_count(collection_store(again)), 0);
    collection_release(c, again);
    collection_release(c, col); /* the last reference: the old files go */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s/collections' | grep -v '^one$')\"", dir);
    ck_assert_msg(tu_run(cmd) == 0, "trash left in %s/collections", dir);

    char **names = NULL;
    ck_assert_int_eq(collections_list(c, &names, &err), 1);
    ck_assert_str_eq(names[0], "one");
    free(names);
    collections_close(c, 1);

    /* reopened: "one" with size 5 */
    c = open_reg(dir, report, sizeof report);
    col = collections_get(c, "one");
    ck_assert_ptr_nonnull(col);
    ck_assert_int_eq(store_dim(collection_store(col)), 5);
    collection_release(c, col);
    collections_close(c, 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tu_run(cmd);
}
END_TEST

START_TEST(test_registry_leftovers_removed)
{
    char dir[256], cmd[1200], report[256];
    tu_mkdtemp(dir, sizeof dir);
    /* a create cut short (no config), a drop cut short (config gone, then
     * renamed), a config naming another collection, and a committed one */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && mkdir -p collections/half/store collections/.trash-9-old/store "
             "collections/other collections/good && echo junk > collections/half/store/wal && "
             "echo '{\"name\":\"else\",\"size\":3,\"distance\":\"Cosine\"}' > "
             "collections/other/collection.json && "
             "echo '{\"name\":\"good\",\"size\":3,\"distance\":\"Cosine\"}' > "
             "collections/good/collection.json",
             dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    collections *c = open_reg(dir, report, sizeof report);
    ck_assert_msg(strstr(report, "1 collection opened, 3 unfinished removed") != NULL, "%s",
                  report);
    char **names = NULL;
    emb_err err;
    ck_assert_int_eq(collections_list(c, &names, &err), 1);
    ck_assert_str_eq(names[0], "good");
    free(names);
    snprintf(cmd, sizeof cmd, "test \"$(ls -A '%s/collections')\" = good", dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    ck_assert_int_eq(collections_create(c, "half", 2, &err), 0);
    collections_close(c, 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tu_run(cmd);
}
END_TEST

/* ---- routes (memory-only server) -------------------------------------------------------------- */

static void setup_mem(void)
{
    const char *args[] = {"--train", "off", NULL};
    fixture_start(args);
}

START_TEST(test_collections_lifecycle)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    ck_assert(has_collection(port, "default"));
    ck_assert(!has_collection(port, "life"));
    cJSON *res = ok(port, "GET", "/collections/life/exists", NULL);
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(res, "exists")));
    cJSON_Delete(res);
    create(port, "life", 4);
    ck_assert(has_collection(port, "life"));
    res = ok(port, "GET", "/collections/life/exists", NULL);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "exists")));
    cJSON_Delete(res);
    fails(port, "PUT", "/collections/life", "{\"vectors\":{\"size\":4,\"distance\":\"Cosine\"}}",
          409, "already exists");
    fails(port, "PUT", "/collections/default",
          "{\"vectors\":{\"size\":4,\"distance\":\"Cosine\"}}", 409, "already exists");

    res = ok(port, "GET", "/collections/life", NULL);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(res, "status")->valuestring, "green");
    ck_assert_int_eq((int)num(res, "points_count"), 0);
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(res, "config"),
                                         "params"),
        "vectors");
    ck_assert_int_eq((int)num(vec, "size"), 4);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(vec, "distance")->valuestring, "Cosine");
    cJSON_Delete(res);

    res = ok(port, "DELETE", "/collections/life", NULL);
    ck_assert(cJSON_IsTrue(res));
    cJSON_Delete(res);
    res = ok(port, "DELETE", "/collections/life", NULL);
    ck_assert(cJSON_IsFalse(res)); /* Qdrant: false when there was none */
    cJSON_Delete(res);
    fails(port, "GET", "/collections/life", NULL, 404, "Collection `life` doesn't exist");
    fails(port, "DELETE", "/collections/default", NULL, 400, "cannot be deleted");
}
END_TEST

START_TEST(test_collection_create_errors)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    const char *vec4 = "{\"vectors\":{\"size\":4,\"distance\":\"Cosine\"}}";
    fails(port, "PUT", "/collections/a%20b", vec4, 422, "collection name");
    fails(port, "PUT", "/collections/.hidden", vec4, 422, "collection name");
    /* a slash, even encoded, makes another path: no route, nothing created */
    cJSON *j = NULL;
    ck_assert_int_eq(call(port, "PUT", "/collections/..%2Fetc", vec4, &j), 404);
    cJSON_Delete(j);
    fails(port, "PUT", "/collections/%2E%2E", vec4, 422, "collection name");
    char path[400];
    snprintf(path, sizeof path, "/collections/%0200d", 7);
    fails(port, "PUT", path, vec4, 422, "longer than");
    fails(port, "PUT", "/collections/bad1", "{\"vectors\":{\"size\":4,\"distance\":\"Dot\"}}", 400,
          "only (\"Cosine\")");
    fails(port, "PUT", "/collections/bad1", "{\"vectors\":{\"size\":4,\"distance\":\"Euclid\"}}",
          400, "not supported");
    fails(port, "PUT", "/collections/bad1", "{\"vectors\":{\"size\":0,\"distance\":\"Cosine\"}}",
          400, "vectors.size");
    fails(port, "PUT", "/collections/bad1", "{}", 400, "vectors");
    fails(port, "PUT", "/collections/bad1",
          "{\"vectors\":{\"text\":{\"size\":4,\"distance\":\"Cosine\"}}}", 400, "named vectors");
    fails(port, "PUT", "/collections/bad1", "{not json", 422, "malformed JSON");
    ck_assert(!has_collection(port, "bad1"));
}
END_TEST

START_TEST(test_points_upsert_retrieve_get)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    create(port, "pts", 4);
    fill(port, "pts");
    cJSON *res = ok(port, "GET", "/collections/pts", NULL);
    ck_assert_int_eq((int)num(res, "points_count"), 5);
    cJSON_Delete(res);

    res = ok(port, "POST", "/collections/pts/points",
             "{\"ids\":[1,99,\"" UUID "\"],\"with_vector\":true}");
    char ids[200];
    ids_of(res, ids, sizeof ids);
    ck_assert_str_eq(ids, "1,\"" UUID "\""); /* 99 is left out */
    const cJSON *p0 = cJSON_GetArrayItem(res, 0);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(
                         cJSON_GetObjectItemCaseSensitive(p0, "payload"), "city")
                         ->valuestring,
                     "Berlin");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(p0, "vector")), 4);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/pts/points", "{\"ids\":[2],\"with_payload\":false}");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(res, 0),
                                                            "payload")));
    cJSON_Delete(res);

    res = ok(port, "GET", "/collections/pts/points/2", NULL);
    ck_assert_int_eq((int)num(res, "id"), 2);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(res, "vector");
    ck_assert_int_eq(cJSON_GetArraySize(v), 4);
    /* stored normalised: cosine is the only distance */
    ck_assert(cJSON_GetArrayItem(v, 0)->valuedouble > 0.99 &&
              cJSON_GetArrayItem(v, 0)->valuedouble < 0.995);
    cJSON_Delete(res);
    res = ok(port, "GET", "/collections/pts/points/" UUID, NULL);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(res, "id")->valuestring, UUID);
    cJSON_Delete(res);
    fails(port, "GET", "/collections/pts/points/77", NULL, 404, "No point with id 77");

    /* an upsert replaces the point */
    res = ok(port, "PUT", "/collections/pts/points",
             "{\"points\":[{\"id\":5,\"vector\":[0,0,0,2],\"payload\":{\"city\":\"Rome\"}}]}");
    cJSON_Delete(res);
    res = ok(port, "GET", "/collections/pts/points/5", NULL);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(
                         cJSON_GetObjectItemCaseSensitive(res, "payload"), "city")
                         ->valuestring,
                     "Rome");
    cJSON_Delete(res);

    /* bad points: nothing of the request is stored */
    fails(port, "PUT", "/collections/pts/points",
          "{\"points\":[{\"id\":8,\"vector\":[1,0,0,0]},{\"id\":9,\"vector\":[1,0,0]}]}", 400,
          "expected dim: 4, got 3");
    fails(port, "PUT", "/collections/pts/points", "{\"points\":[{\"id\":-1,\"vector\":[1,0,0,0]}]}",
          400, "points[0].id");
    fails(port, "PUT", "/collections/pts/points", "{\"points\":[{\"id\":8}]}", 400, "missing");
    fails(port, "PUT", "/collections/pts/points",
          "{\"points\":[{\"id\":8,\"vector\":[0,0,0,0]}]}", 400, "points[0]");
    fails(port, "PUT", "/collections/pts/points",
          "{\"points\":[{\"id\":8,\"vector\":[1,0,0,0],\"payload\":[1]}]}", 400, "payload");
    fails(port, "PUT", "/collections/pts/points", "{\"batch\":{\"ids\":[8,9],\"vectors\":[[1,0,0,0]]}}",
          400, "same length");
    fails(port, "PUT", "/collections/pts/points", "{}", 400, "points");
    fails(port, "PUT", "/collections/pts/points", "[1]", 422, "JSON object");
    fails(port, "GET", "/collections/pts/points/8", NULL, 404, NULL);
    res = ok(port, "POST", "/collections/pts/points/count", "{}");
    ck_assert_int_eq((int)num(res, "count"), 5);
    cJSON_Delete(res);
}
END_TEST

START_TEST(test_points_search_query)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    create(port, "srch", 4);
    fill(port, "srch");
    char ids[200];
    cJSON *res = ok(port, "POST", "/collections/srch/points/search",
                    "{\"vector\":[1,0,0,0],\"limit\":3,\"with_payload\":true}");
    ids_of(res, ids, sizeof ids);
    ck_assert_msg(strncmp(ids, "1,2,", 4) == 0, "%s", ids);
    const cJSON *h0 = cJSON_GetArrayItem(res, 0);
    ck_assert(num(h0, "score") > 0.999);
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(h0, "version")));
    ck_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(h0, "payload")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(h0, "vector")));
    cJSON_Delete(res);

    /* a filter: Berlin only */
    res = ok(port, "POST", "/collections/srch/points/search",
             "{\"vector\":[0.9,0.1,0,0],\"limit\":10," BERLIN "}");
    ids_of(res, ids, sizeof ids);
    ck_assert_str_eq(ids, "1,\"" UUID "\"");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(res, 0),
                                                            "payload"))); /* default: none */
    cJSON_Delete(res);
    /* offset, threshold, with_vector, params */
    res = ok(port, "POST", "/collections/srch/points/search",
             "{\"vector\":[1,0,0,0],\"limit\":1,\"offset\":1,\"with_vector\":true,"
             "\"params\":{\"exact\":true,\"hnsw_ef\":32}}");
    ids_of(res, ids, sizeof ids);
    ck_assert_str_eq(ids, "2");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(
                         cJSON_GetArrayItem(res, 0), "vector")),
                     4);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/srch/points/search",
             "{\"vector\":[1,0,0,0],\"score_threshold\":0.5}");
    ids_of(res, ids, sizeof ids);
    ck_assert_str_eq(ids, "1,2");
    cJSON_Delete(res);

    /* query: a vector, {"nearest": ...}, a point id (left out of the answer) */
    res = ok(port, "POST", "/collections/srch/points/query",
             "{\"query\":[0,0,1,0],\"limit\":1,\"with_payload\":true}");
    ids_of(cJSON_GetObjectItemCaseSensitive(res, "points"), ids, sizeof ids);
    ck_assert_str_eq(ids, "4");
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/srch/points/query",
             "{\"query\":{\"nearest\":[0,1,0,0]},\"limit\":1}");
    ids_of(cJSON_GetObjectItemCaseSensitive(res, "points"), ids, sizeof ids);
    ck_assert_str_eq(ids, "\"" UUID "\"");
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/srch/points/query", "{\"query\":1,\"limit\":2}");
    ids_of(cJSON_GetObjectItemCaseSensitive(res, "points"), ids, sizeof ids);
    ck_assert_msg(strncmp(ids, "2,", 2) == 0 && strstr(ids, "1,") == NULL, "%s", ids);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(res, "points")), 2);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/srch/points/query",
             "{\"query\":\"" UUID "\",\"limit\":5," BERLIN "}");
    ids_of(cJSON_GetObjectItemCaseSensitive(res, "points"), ids, sizeof ids);
    ck_assert_str_eq(ids, "1");
    cJSON_Delete(res);

    fails(port, "POST", "/collections/srch/points/search", "{\"vector\":[1,0]}", 400,
          "expected dim: 4, got 2");
    fails(port, "POST", "/collections/srch/points/search", "{\"limit\":3}", 400, "`vector`");
    fails(port, "POST", "/collections/srch/points/search",
          "{\"vector\":[1,0,0,0],\"limit\":0}", 400, "limit");
    fails(port, "POST", "/collections/srch/points/search",
          "{\"vector\":[1,0,0,0],\"filter\":{\"must\":5}}", 400, "filter");
    fails(port, "POST", "/collections/srch/points/query", "{\"limit\":3}", 400, "`query`");
    fails(port, "POST", "/collections/srch/points/query", "{\"query\":123456}", 404,
          "No point with id 123456");
    fails(port, "POST", "/collections/srch/points/query",
          "{\"query\":{\"recommend\":{\"positive\":[1]}}}", 400, "not supported");
    fails(port, "POST", "/collections/srch/points/query",
          "{\"query\":[1,0,0,0],\"prefetch\":[{\"query\":[1,0,0,0]}]}", 400, "prefetch");
}
END_TEST

START_TEST(test_points_count_delete)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    create(port, "del", 4);
    fill(port, "del");
    cJSON *res = ok(port, "POST", "/collections/del/points/count", "{\"exact\":true}");
    ck_assert_int_eq((int)num(res, "count"), 5);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/del/points/count", "{" BERLIN ",\"exact\":true}");
    ck_assert_int_eq((int)num(res, "count"), 2);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/del/points/count", NULL); /* no body: all */
    ck_assert_int_eq((int)num(res, "count"), 5);
    cJSON_Delete(res);

    res = ok(port, "POST", "/collections/del/points/delete", "{\"points\":[2,77]}");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(res, "status")->valuestring, "completed");
    cJSON_Delete(res);
    fails(port, "GET", "/collections/del/points/2", NULL, 404, NULL);
    res = ok(port, "POST", "/collections/del/points/delete", "{" BERLIN "}");
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/del/points", "{\"ids\":[1,\"" UUID "\",4,5]}");
    char ids[200];
    ids_of(res, ids, sizeof ids);
    ck_assert_str_eq(ids, "4,5");
    cJSON_Delete(res);
    fails(port, "POST", "/collections/del/points/delete", "{}", 400, "`points`");
    fails(port, "POST", "/collections/del/points/delete", "{\"points\":[true]}", 400, "points[0]");
}
END_TEST

/* Every point route names an unknown collection with 404. */
START_TEST(test_unknown_collection)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    const struct {
        const char *method, *path, *body;
    } calls[] = {
        {"GET", "/collections/ghost", NULL},
        {"PUT", "/collections/ghost/points", "{\"points\":[{\"id\":1,\"vector\":[1]}]}"},
        {"POST", "/collections/ghost/points", "{\"ids\":[1]}"},
        {"GET", "/collections/ghost/points/1", NULL},
        {"POST", "/collections/ghost/points/search", "{\"vector\":[1]}"},
        {"POST", "/collections/ghost/points/query", "{\"query\":[1]}"},
        {"POST", "/collections/ghost/points/delete", "{\"points\":[1]}"},
        {"POST", "/collections/ghost/points/count", "{}"},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        fails(port, calls[i].method, calls[i].path, calls[i].body, 404,
              "Collection `ghost` doesn't exist");
}
END_TEST

/* Documents ({"text", "model"}) are embedded in the collection "default"
 * (the item store, re-embedded on a new model version, like /items) and
 * refused in named collections, which hold client vectors only. */
START_TEST(test_documents)
{
    REQUIRE_SERVER();
    const int port = g_srv.port;
    cJSON *res = ok(port, "PUT", "/collections/default/points",
                    "{\"points\":[{\"id\":\"doc-cat\",\"vector\":{\"text\":\"the cat sat on the "
                    "mat\",\"model\":\"embedd\"},\"payload\":{\"kind\":\"pet\"}},"
                    "{\"id\":\"doc-money\",\"vector\":{\"text\":\"stock markets fell "
                    "sharply\"}}]}");
    cJSON_Delete(res);
    /* the same item /items sees, with its text and model version */
    cJSON *j = NULL;
    ck_assert_int_eq(call(port, "GET", "/items/doc-cat", NULL, &j), 200);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "text")->valuestring,
                     "the cat sat on the mat");
    ck_assert_int_eq((int)num(j, "model_version"), 1);
    cJSON_Delete(j);
    res = ok(port, "POST", "/collections/default/points/query",
             "{\"query\":{\"text\":\"the cat sat on the mat\",\"model\":\"embedd\"},\"limit\":1,"
             "\"with_payload\":true}");
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(res, "points"), 0);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(p, "id")->valuestring, "doc-cat");
    ck_assert(num(p, "score") > 0.999);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/default/points/search",
             "{\"vector\":{\"text\":\"stock markets fell sharply\"},\"limit\":1}");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(res, 0), "id")
                         ->valuestring,
                     "doc-money");
    cJSON_Delete(res);

    /* a collection of another size than the model's (32) refuses Documents */
    create(port, "vecs", 4);
    fails(port, "PUT", "/collections/vecs/points",
          "{\"points\":[{\"id\":1,\"vector\":{\"text\":\"hello\",\"model\":\"embedd\"}}]}", 400,
          "size equals the model's dimension 32");
    fails(port, "PUT", "/collections/vecs/points",
          "{\"batch\":{\"ids\":[1],\"vectors\":[{\"text\":\"hello\"}]}}", 400,
          "size equals the model's dimension 32");
    fails(port, "POST", "/collections/vecs/points/query", "{\"query\":{\"text\":\"hello\"}}", 400,
          "collection `vecs` has size 4");
    fails(port, "POST", "/collections/vecs/points/search", "{\"vector\":{\"text\":\"hello\"}}",
          400, "size equals the model's dimension 32");
    res = ok(port, "POST", "/collections/vecs/points/count", "{}");
    ck_assert_int_eq((int)num(res, "count"), 0);
    cJSON_Delete(res);

    /* a named collection of the model's size holds Documents beside vectors */
    create(port, "texts", 32);
    res = ok(port, "PUT", "/collections/texts/points",
             "{\"points\":[{\"id\":1,\"vector\":{\"text\":\"the cat sat on the mat\"}},"
             "{\"id\":2,\"vector\":{\"text\":\"stock markets fell sharply\"}}]}");
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/texts/points/query",
             "{\"query\":{\"text\":\"the cat sat on the mat\"},\"limit\":2}");
    p = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(res, "points"), 0);
    ck_assert_int_eq((int)num(p, "id"), 1);
    ck_assert(num(p, "score") > 0.999);
    cJSON_Delete(res);
    res = ok(port, "POST", "/collections/texts/points/search",
             "{\"vector\":{\"text\":\"stock markets fell sharply\"},\"limit\":1}");
    ck_assert_int_eq((int)num(cJSON_GetArrayItem(res, 0), "id"), 2);
    ck_assert(num(cJSON_GetArrayItem(res, 0), "score") > 0.999);
    cJSON_Delete(res);
    /* the default store did not get them */
    ck_assert_int_eq(call(port, "GET", "/items/1", NULL, &j), 404);
    cJSON_Delete(j);
}
END_TEST

/* ---- auth ------------------------------------------------------------------------------------ */

static void setup_auth(void)
{
    const char *args[] = {"--train", "off", "--api-key", "s3cret", NULL};
    fixture_start(args);
}

static long get_with_header(const char *path, const char *header, http_resp *r)
{
    const char *hdrs[] = {header, NULL};
    return http_port(g_srv.port, "GET", path, NULL, header != NULL ? hdrs : NULL, r);
}

/* Qdrant's clients send "api-key: KEY"; Bearer works too; other routes
 * still want Bearer. */
START_TEST(test_api_key_header)
{
    REQUIRE_SERVER();
    http_resp r;
    ck_assert_int_eq(get_with_header("/collections", NULL, &r), 401);
    ck_assert_msg(strstr(r.body.p, "{\"status\":{\"error\":") == r.body.p, "%s", r.body.p);
    resp_free(&r);
    ck_assert_int_eq(get_with_header("/collections", "api-key: s3cret", &r), 200);
    resp_free(&r);
    ck_assert_int_eq(get_with_header("/collections", "api-key: s3cre", &r), 401);
    resp_free(&r);
    ck_assert_int_eq(get_with_header("/collections", "Authorization: Bearer s3cret", &r), 200);
    resp_free(&r);
    ck_assert_int_eq(get_with_header("/info", "api-key: s3cret", &r), 401);
    resp_free(&r);
}
END_TEST

/* ---- disk: restart, drop, leftovers ------------------------------------------------------------ */

static void start_with(server_proc *s, const char *dir)
{
    const char *args[] = {"--train", "off", "--data", dir, NULL};
    memset(s, 0, sizeof *s);
    ck_assert_int_eq(srv_start(s, args), 0);
}

START_TEST(test_restart_keeps_collections)
{
    char dir[256], path[600], cmd[700];
    tu_mkdtemp(dir, sizeof dir);
    server_proc s;
    start_with(&s, dir);
    create(s.port, "keep", 4);
    create(s.port, "gone", 2);
    fill(s.port, "keep");
    ck_assert_int_eq(srv_stop(&s), 0);
    srv_release(&s);

    start_with(&s, dir);
    ck_assert(has_collection(s.port, "keep") && has_collection(s.port, "gone"));
    cJSON *res = ok(s.port, "POST", "/collections/keep/points/count", "{" BERLIN "}");
    ck_assert_int_eq((int)num(res, "count"), 2);
    cJSON_Delete(res);
    res = ok(s.port, "GET", "/collections/gone", NULL);
    ck_assert_int_eq((int)num(cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(
                                      cJSON_GetObjectItemCaseSensitive(res, "config"), "params"),
                                  "vectors"),
                              "size"),
                     2);
    cJSON_Delete(res);
    /* a write after the restart, and a drop */
    res = ok(s.port, "POST", "/collections/keep/points/delete", "{\"points\":[1]}");
    cJSON_Delete(res);
    res = ok(s.port, "DELETE", "/collections/gone", NULL);
    cJSON_Delete(res);
    snprintf(path, sizeof path, "%s/collections/gone", dir);
    ck_assert(!exists(path));
    /* SIGKILL: no snapshot at shutdown, the WAL must carry it */
    kill(s.pid, SIGKILL);
    srv_wait(&s, 10);
    srv_release(&s);

    start_with(&s, dir);
    ck_assert(has_collection(s.port, "keep") && !has_collection(s.port, "gone"));
    res = ok(s.port, "POST", "/collections/keep/points/count", "{}");
    ck_assert_int_eq((int)num(res, "count"), 4);
    cJSON_Delete(res);
    ck_assert_int_eq(srv_stop(&s), 0);
    srv_release(&s);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tu_run(cmd);
}
END_TEST

START_TEST(test_half_created_collection_at_startup)
{
    char dir[256], cmd[900];
    tu_mkdtemp(dir, sizeof dir);
    /* what a crash leaves: a store without its collection.json, a trash dir */
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/collections/half/store' '%s/collections/.trash-1-x/store' && "
             "printf 'garbage' > '%s/collections/half/store/wal'",
             dir, dir, dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    server_proc s;
    start_with(&s, dir);
    ck_assert_msg(strstr(s.log, "collections: 0 collections opened, 2 unfinished removed") != NULL,
                  "%s", tail(s.log));
    ck_assert(!has_collection(s.port, "half"));
    create(s.port, "half", 3);
    cJSON *res = ok(s.port, "PUT", "/collections/half/points",
                    "{\"points\":[{\"id\":1,\"vector\":[1,2,3]}]}");
    cJSON_Delete(res);
    /* /health counts collections ("default" too) and their points */
    cJSON *j = NULL;
    ck_assert_int_eq(call(s.port, "GET", "/health", NULL, &j), 200);
    ck_assert_int_eq((int)num(j, "collections"), 2);
    ck_assert_int_eq((int)num(j, "points"), 1);
    cJSON_Delete(j);
    http_resp r;
    ck_assert_int_eq(http_port(s.port, "GET", "/metrics", NULL, NULL, &r), 200);
    ck_assert_msg(strstr(r.body.p, "# TYPE embedd_collections gauge") != NULL &&
                      strstr(r.body.p, "# TYPE embedd_collection_points gauge") != NULL,
                  "%s", tail(r.body.p));
    resp_free(&r);
    ck_assert_int_eq(srv_stop(&s), 0);
    srv_release(&s);
    snprintf(cmd, sizeof cmd, "test \"$(ls -A '%s/collections')\" = half", dir);
    ck_assert_int_eq(tu_run(cmd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tu_run(cmd);
}
END_TEST

/* ---- Documents across model versions ------------------------------------------------------ */

/* Saves version 2 (every weight nudged, so its vectors differ) into dir and
 * makes it current, as a publish would. */
static void make_version_2(const char *dir)
{
    emb_err err;
    emb_model *base = emb_model_load(SERVER_MODEL_DIR, &err);
    ck_assert_msg(base != NULL, "%s", err.msg);
    versions *v = versions_open(dir, SERVER_MODEL_DIR, base, 3, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    emb_model *m = emb_model_clone(base, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i] *= 1.0f + 0.3f * (float)((i * 7919u) % 13u) / 13.0f;
    ck_assert_msg(emb_model_pack(m, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_save(v, 2, m, NULL, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_publish_saved(v, m, 2, &err) == 0, "%s", err.msg);
    versions_free(v);
    emb_model_free(base);
}

static uint32_t searched_by_store; /* the in-use callback's answer */

static int fake_in_use(void *ctx, uint32_t id)
{
    (void)ctx;
    return id == searched_by_store;
}

/* Version id saved and published into v (weights nudged). */
static void publish_version(versions *v, const emb_model *base, uint32_t id)
{
    emb_err err;
    emb_model *m = emb_model_clone(base, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    m->params[0] += 0.25f * (float)id;
    ck_assert_msg(emb_model_pack(m, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_save(v, id, m, NULL, &err) == 0, "%s", err.msg);
    ck_assert_msg(versions_publish_saved(v, m, id, &err) == 0, "%s", err.msg);
}

/* versions_set_in_use: with --keep-versions 1 a version a store still
 * searches stays in memory; once no store does, the next trim drops it,
 * and it never keeps an older one in the window. */
START_TEST(test_versions_kept_while_searched)
{
    char dir[256], cmd[300];
    tu_mkdtemp(dir, sizeof dir);
    emb_err err;
    emb_model *base = emb_model_load(SERVER_MODEL_DIR, &err);
    ck_assert_msg(base != NULL, "%s", err.msg);
    versions *v = versions_open(dir, SERVER_MODEL_DIR, base, 1, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    versions_set_in_use(v, fake_in_use, NULL);
    searched_by_store = 2;
    publish_version(v, base, 2);
    publish_version(v, base, 3);
    publish_version(v, base, 4);
    model_version *mv = versions_get(v, 2);
    ck_assert_ptr_nonnull(mv);
    versions_release(v, mv);
    ck_assert_ptr_null(versions_get(v, 3));
    ck_assert_ptr_null(versions_get(v, 1));
    searched_by_store = 0; /* the store moved on */
    publish_version(v, base, 5);
    ck_assert_ptr_null(versions_get(v, 2));
    ck_assert_ptr_null(versions_get(v, 4));
    versions_set_in_use(v, NULL, NULL);
    versions_free(v);
    emb_model_free(base);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tu_run(cmd);
}
END_TEST

/* A point's stored vector (dim 32) into out. */
static void point_vector(int port, const char *coll, int id, float *out)
{
    char path[200];
    snprintf(path, sizeof path, "/collections/%s/points/%d", coll, id);
    cJSON *res = ok(port, "GET", path, NULL);
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(res, "vector");
    ck_assert_int_eq(cJSON_GetArraySize(vec), 32);
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, vec) out[i++] = (float)el->valuedouble;
    cJSON_Delete(res);
}

/* /embed of text with the current version (normalised), and that version. */
static int embed_now(int port, const char *text, float *out)
{
    char body[300];
    snprintf(body, sizeof body, "{\"inputs\":\"%s\"}", text);
    http_resp r;
    ck_assert_int_eq(http_port(port, "POST", "/embed", body, NULL, &r), 200);
    int version = atoi(header_value(&r, "X-Embedd-Model-Version"));
    cJSON *j = json_of(&r);
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, cJSON_GetArrayItem(j, 0)) out[i++] = (float)el->valuedouble;
    ck_assert_int_eq(i, 32);
    cJSON_Delete(j);
    resp_free(&r);
    return version;
}

static double dot32(const float *a, const float *b)
{
    double d = 0;
    for (int i = 0; i < 32; i++)
        d += (double)a[i] * b[i];
    return d;
}

/* A Document query on "texts": the top id, its score and the version that
 * embedded the query (the reply's X-Embedd-Model-Version). */
static int query_text(int port, const char *text, double *score, int *version)
{
    char body[300];
    snprintf(body, sizeof body, "{\"query\":{\"text\":\"%s\"},\"limit\":1}", text);
    http_resp r;
    ck_assert_int_eq(http_port(port, "POST", "/collections/texts/points/query", body, NULL, &r),
                     200);
    *version = atoi(header_value(&r, "X-Embedd-Model-Version"));
    cJSON *j = json_of(&r);
    const cJSON *p = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "result"), "points"),
        0);
    int id = (int)num(p, "id");
    *score = num(p, "score");
    cJSON_Delete(j);
    resp_free(&r);
    return id;
}

/* /train/status's reembed.all: 1 when no store is moving and all is done. */
static int reembed_done(int port, long *done, long *total)
{
    cJSON *j = NULL;
    ck_assert_int_eq(call(port, "GET", "/train/status", NULL, &j), 200);
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(j, "reembed"), "all");
    long moving = (long)num(all, "moving");
    *done = (long)num(all, "done");
    *total = (long)num(all, "total");
    cJSON_Delete(j);
    return moving == 0 && *done == *total;
}

static void start_versions(server_proc *s, const char *dir)
{
    /* --keep-versions 1: the version a store still searches is kept by the
     * re-embedder's in-use callback alone */
    const char *args[] = {"--train",        "on", "--train-paused", "true", "--data", dir,
                          "--keep-versions", "1",  NULL};
    memset(s, 0, sizeof *s);
    ck_assert_int_eq(srv_start(s, args), 0);
}

/* Documents in a named collection move with the model version: after a
 * rollback from 2 to 1 their vectors are version 1's, a Document query is
 * embedded with 1 and finds them at ~1; a client vector is untouched; a
 * restart keeps it all. */
START_TEST(test_documents_follow_versions)
{
    char dir[256], cmd[300];
    tu_mkdtemp(dir, sizeof dir);
    make_version_2(dir);
    server_proc s;
    start_versions(&s, dir);
    const int port = s.port;
    create(port, "texts", 32);
    cJSON *res = ok(port, "PUT", "/collections/texts/points",
                    "{\"points\":[{\"id\":1,\"vector\":{\"text\":\"the cat sat on the mat\"}},"
                    "{\"id\":2,\"vector\":{\"text\":\"stock markets fell sharply\"}},"
                    "{\"id\":3,\"vector\":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
                    "0,0,0,0,0,0,0,0]}]}");
    cJSON_Delete(res);
    float v2[32], v1[32], e[32], client[32];
    double score;
    int version;
    ck_assert_int_eq(embed_now(port, "the cat sat on the mat", e), 2);
    point_vector(port, "texts", 1, v2);
    ck_assert(dot32(v2, e) > 0.9999);
    ck_assert_int_eq(query_text(port, "the cat sat on the mat", &score, &version), 1);
    ck_assert(score > 0.999 && version == 2);
    long done, total;
    ck_assert(reembed_done(port, &done, &total));
    ck_assert_int_eq(total, 2); /* the two Documents; the client vector is not re-embedded */

    /* a second collection with Documents, dropped right after the change:
     * the re-embedder holds it by reference, so the drop is safe whenever
     * it lands (before, during or after its move) */
    create(port, "dropped", 32);
    char many[8000] = "{\"points\":[";
    for (int i = 0; i < 64; i++) {
        size_t n = strlen(many);
        snprintf(many + n, sizeof many - n, "%s{\"id\":%d,\"vector\":{\"text\":\"note %d\"}}",
                 i ? "," : "", i + 1, i);
    }
    strcat(many, "]}");
    res = ok(port, "PUT", "/collections/dropped/points", many);
    cJSON_Delete(res);

    /* version 1 becomes current: the collections move to it */
    res = NULL;
    cJSON *j = NULL;
    ck_assert_int_eq(call(port, "POST", "/train/rollback", "{\"version\":1}", &j), 200);
    cJSON_Delete(j);
    res = ok(port, "DELETE", "/collections/dropped", NULL);
    cJSON_Delete(res);
    ck_assert(!has_collection(port, "dropped"));
    int settled = 0;
    for (int i = 0; i < 300 && !settled; i++) { /* bounded: 30 s at most */
        settled = reembed_done(port, &done, &total);
        if (!settled)
            usleep(100 * 1000);
    }
    ck_assert_msg(settled, "re-embedding not done: %ld of %ld", done, total);
    ck_assert_int_eq(total, 2); /* "dropped" no longer counts */
    ck_assert_int_eq(embed_now(port, "the cat sat on the mat", e), 1);
    point_vector(port, "texts", 1, v1);
    ck_assert_msg(dot32(v1, e) > 0.9999, "point 1 is not version 1's: %f", dot32(v1, e));
    ck_assert_msg(dot32(v1, v2) < 0.999, "versions 1 and 2 embed alike: %f", dot32(v1, v2));
    ck_assert_int_eq(query_text(port, "the cat sat on the mat", &score, &version), 1);
    ck_assert_msg(score > 0.999 && version == 1, "%f %d", score, version);
    ck_assert_int_eq(query_text(port, "stock markets fell sharply", &score, &version), 2);
    ck_assert(score > 0.999 && version == 1);
    point_vector(port, "texts", 3, client);
    ck_assert_float_eq(client[0], 1.0f);
    /* a Document upserted now is embedded with 1 too */
    res = ok(port, "PUT", "/collections/texts/points",
             "{\"points\":[{\"id\":4,\"vector\":{\"text\":\"a dog barked at night\"}}]}");
    cJSON_Delete(res);
    ck_assert_int_eq(query_text(port, "a dog barked at night", &score, &version), 4);
    ck_assert(score > 0.999 && version == 1);
    ck_assert_int_eq(srv_stop(&s), 0);
    srv_release(&s);

    /* a restart keeps the points and their version */
    start_versions(&s, dir);
    ck_assert_int_eq(query_text(s.port, "the cat sat on the mat", &score, &version), 1);
    ck_assert_msg(score > 0.999 && version == 1, "%f %d", score, version);
    point_vector(s.port, "texts", 1, e);
    ck_assert(dot32(v1, e) > 0.9999);
    ck_assert(reembed_done(s.port, &done, &total));
    ck_assert_int_eq(total, 3);
    ck_assert_int_eq(srv_stop(&s), 0);
    srv_release(&s);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tu_run(cmd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("qdrant");
    TCase *tr = tcase_create("registry");
    tcase_add_test(tr, test_registry_names);
    tcase_add_test(tr, test_registry_create_drop_disk);
    tcase_add_test(tr, test_registry_leftovers_removed);
    suite_add_tcase(s, tr);

    TCase *tm = tcase_create("routes");
    tcase_add_unchecked_fixture(tm, setup_mem, fixture_stop);
    tcase_set_timeout(tm, 60);
    tcase_add_test(tm, test_collections_lifecycle);
    tcase_add_test(tm, test_collection_create_errors);
    tcase_add_test(tm, test_points_upsert_retrieve_get);
    tcase_add_test(tm, test_points_search_query);
    tcase_add_test(tm, test_points_count_delete);
    tcase_add_test(tm, test_unknown_collection);
    tcase_add_test(tm, test_documents);
    suite_add_tcase(s, tm);

    TCase *ta = tcase_create("auth");
    tcase_add_unchecked_fixture(ta, setup_auth, fixture_stop);
    tcase_add_test(ta, test_api_key_header);
    suite_add_tcase(s, ta);

    TCase *td = tcase_create("disk");
    tcase_set_timeout(td, 90);
    tcase_add_test(td, test_restart_keeps_collections);
    tcase_add_test(td, test_half_created_collection_at_startup);
    tcase_add_test(td, test_documents_follow_versions);
    tcase_add_test(td, test_versions_kept_while_searched);
    suite_add_tcase(s, td);
    return run_suite(s);
}
