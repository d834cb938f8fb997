/* test_openapi.c: server/web/openapi.json against the route table
 * (routes_table), both ways, so the document cannot drift from the server:
 * every route (method and path template) has an operation, every operation
 * is a route, and an operation needs the bearer key exactly when its route
 * does. Also: every $ref resolves, and the binary serves the file's bytes
 * (web/assets.h).
 *
 * A failure lists every missing or extra operation, one per line, so the
 * diff is clear. Unit test: no server; run from the repository root. */
#include <check.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/server.h"
#include "run_suite.h"
#include "testutil.h"
#include "web/assets.h"

#define DOC "server/web/openapi.json"

static cJSON *load(const char *path)
{
    char *text = tu_read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    cJSON *doc = cJSON_Parse(text);
    ck_assert_msg(doc != NULL, "%s is not JSON (near: %.40s)", path, cJSON_GetErrorPtr());
    free(text);
    return doc;
}

/* OpenAPI writes methods in lower case, the table in upper case. */
static void lower(char *out, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < cap; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[i] = '\0';
}

/* The operation of method and path in doc, or NULL. */
static const cJSON *operation(const cJSON *doc, const char *method, const char *path)
{
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(doc, "paths");
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(paths, path);
    char m[16];
    lower(m, sizeof m, method);
    return cJSON_GetObjectItemCaseSensitive(item, m);
}

static int is_method(const char *key)
{
    static const char *const methods[] = {"get", "put", "post", "delete", "options",
                                          "head", "patch", "trace"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (strcmp(key, methods[i]) == 0)
            return 1;
    }
    return 0;
}

static const route *table_route(const char *method, const char *path)
{
    size_t n;
    const route *rt = routes_table(&n);
    for (size_t i = 0; i < n; i++) {
        char m[16];
        lower(m, sizeof m, rt[i].method);
        if (strcmp(m, method) == 0 && strcmp(rt[i].path, path) == 0)
            return &rt[i];
    }
    return NULL;
}

START_TEST(test_every_route_is_documented)
{
    cJSON *doc = load(DOC);
    size_t n;
    const route *rt = routes_table(&n);
    ck_assert_uint_gt(n, 0);
    char missing[4096] = "";
    int n_missing = 0;
    for (size_t i = 0; i < n; i++) {
        if (operation(doc, rt[i].method, rt[i].path) != NULL)
            continue;
        n_missing++;
        size_t used = strlen(missing);
        snprintf(missing + used, sizeof missing - used, "\n  %s %s", rt[i].method, rt[i].path);
    }
    cJSON_Delete(doc);
    ck_assert_msg(n_missing == 0, "%d route(s) of routes.c missing from " DOC
                  " (add them):%s", n_missing, missing);
}
END_TEST

START_TEST(test_every_operation_is_a_route)
{
    cJSON *doc = load(DOC);
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(doc, "paths");
    ck_assert_msg(cJSON_IsObject(paths), DOC " has no paths");
    char extra[4096] = "";
    int n_extra = 0, n_ops = 0;
    const cJSON *item, *op;
    cJSON_ArrayForEach(item, paths) {
        cJSON_ArrayForEach(op, item) {
            if (!is_method(op->string))
                continue;
            n_ops++;
            if (table_route(op->string, item->string) != NULL)
                continue;
            n_extra++;
            size_t used = strlen(extra);
            snprintf(extra + used, sizeof extra - used, "\n  %s %s", op->string, item->string);
        }
    }
    cJSON_Delete(doc);
    ck_assert_int_gt(n_ops, 0);
    ck_assert_msg(n_extra == 0, "%d operation(s) of " DOC " are not in routes.c:%s", n_extra,
                  extra);
}
END_TEST

/* "security": [] on an operation lifts the document's bearer requirement. */
static int operation_needs_key(const cJSON *op)
{
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(op, "security");
    return !(cJSON_IsArray(sec) && cJSON_GetArraySize(sec) == 0);
}

START_TEST(test_auth_matches_the_table)
{
    cJSON *doc = load(DOC);
    const cJSON *schemes = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(doc, "components"), "securitySchemes");
    const cJSON *bearer = cJSON_GetObjectItemCaseSensitive(schemes, "bearer");
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(bearer, "scheme");
    ck_assert_msg(cJSON_IsString(scheme) && strcmp(scheme->valuestring, "bearer") == 0,
                  "no http bearer scheme in components.securitySchemes");
    const cJSON *global = cJSON_GetObjectItemCaseSensitive(doc, "security");
    ck_assert_msg(cJSON_IsArray(global) && cJSON_GetArraySize(global) == 1,
                  "the document must require bearer by default");
    size_t n;
    const route *rt = routes_table(&n);
    char wrong[4096] = "";
    int n_wrong = 0;
    for (size_t i = 0; i < n; i++) {
        const cJSON *op = operation(doc, rt[i].method, rt[i].path);
        if (op == NULL || operation_needs_key(op) == rt[i].needs_auth)
            continue;
        n_wrong++;
        size_t used = strlen(wrong);
        snprintf(wrong + used, sizeof wrong - used, "\n  %s %s: the route %s a key",
                 rt[i].method, rt[i].path, rt[i].needs_auth ? "needs" : "needs no");
    }
    cJSON_Delete(doc);
    ck_assert_msg(n_wrong == 0, "%d operation(s) say the wrong thing about the key:%s", n_wrong,
                  wrong);
}
END_TEST

/* Counts the "$ref"s under node that do not name a schema or response of
 * components; appends them to bad. */
static int bad_refs(const cJSON *node, const cJSON *components, char *bad, size_t cap)
{
    int n = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, node) {
        if (el->string != NULL && strcmp(el->string, "$ref") == 0 && cJSON_IsString(el)) {
            const char *ref = el->valuestring;
            const char *prefix = "#/components/";
            const cJSON *found = NULL;
            if (strncmp(ref, prefix, strlen(prefix)) == 0) {
                char kind[64];
                const char *name = strchr(ref + strlen(prefix), '/');
                size_t klen = name != NULL ? (size_t)(name - ref - strlen(prefix)) : 0;
                if (name != NULL && klen < sizeof kind) {
                    memcpy(kind, ref + strlen(prefix), klen);
                    kind[klen] = '\0';
                    found = cJSON_GetObjectItemCaseSensitive(
                        cJSON_GetObjectItemCaseSensitive(components, kind), name + 1);
                }
            }
            if (found == NULL) {
                n++;
                size_t used = strlen(bad);
                snprintf(bad + used, cap - used, "\n  %s", ref);
            }
        }
        n += bad_refs(el, components, bad, cap);
    }
    return n;
}

START_TEST(test_refs_resolve)
{
    cJSON *doc = load(DOC);
    const cJSON *components = cJSON_GetObjectItemCaseSensitive(doc, "components");
    char bad[4096] = "";
    int n = bad_refs(doc, components, bad, sizeof bad);
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(doc, "openapi");
    ck_assert_msg(cJSON_IsString(version) && version->valuestring[0] == '3',
                  "not an OpenAPI 3 document");
    cJSON_Delete(doc);
    ck_assert_msg(n == 0, "%d $ref(s) name nothing in components:%s", n, bad);
}
END_TEST

START_TEST(test_binary_serves_the_files)
{
    static const char *const files[] = {"openapi.json", "console.html", "docs.html"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[128];
        snprintf(path, sizeof path, "server/web/%s", files[i]);
        size_t len = 0;
        char *text = tu_read_file(path, &len);
        ck_assert_msg(text != NULL, "cannot read %s", path);
        web_asset a;
        ck_assert_msg(web_asset_find(files[i], &a), "%s is not bundled", files[i]);
        ck_assert_msg(a.len == len && memcmp(a.data, text, len) == 0 && a.data[len] == '\0',
                      "the bundled %s (%zu bytes) differs from %s (%zu bytes): rebuild",
                      files[i], a.len, path, len);
        free(text);
    }
    web_asset a;
    ck_assert(!web_asset_find("nope.html", &a));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("openapi");
    TCase *tc = tcase_create("openapi");
    tcase_add_test(tc, test_every_route_is_documented);
    tcase_add_test(tc, test_every_operation_is_a_route);
    tcase_add_test(tc, test_auth_matches_the_table);
    tcase_add_test(tc, test_refs_resolve);
    tcase_add_test(tc, test_binary_serves_the_files);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
