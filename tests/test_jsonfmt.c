/* test_jsonfmt.c: json_format_float (server/common/jsonfmt.c) against the exact
 * way (snprintf with 8 digits, strtof, else 9): every output reads back as
 * the same float, is valid JSON in printf's %g layout, and is the very
 * string the exact way prints for all but a vanishing share of values. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonfmt.h"
#include "run_suite.h"

static void exact_way(char *buf, float f)
{
    snprintf(buf, 32, "%.8g", (double)f);
    if (strtof(buf, NULL) != f)
        snprintf(buf, 32, "%.9g", (double)f);
}

/* Formats f both ways; fails unless the fast string reads back as f.
 * Returns 1 when the two strings differ. */
static int check_value(float f)
{
    char fast[32], exact[32];
    int len = json_format_float(fast, f);
    ck_assert_int_eq(len, (int)strlen(fast));
    ck_assert_msg(strtof(fast, NULL) == f, "%.9g printed as %s", (double)f, fast);
    exact_way(exact, f);
    return strcmp(fast, exact) != 0;
}

static float float_of_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

START_TEST(test_known_values)
{
    static const struct {
        float f;
        const char *s;
    } cases[] = {
        {1.0f, "1"},           {-2.5f, "-2.5"},        {0.1f, "0.1"},
        {100.0f, "100"},       {1e-5f, "9.99999975e-06"}, {123456792.0f, "1.23456792e+08"},
        {0.33333334f, "0.333333343"}, {FLT_MAX, "3.40282347e+38"}, {1e-45f, "1.40129846e-45"},
        {0.0001f, "9.99999975e-05"}, {0.00012345f, "0.000123449994"}, {12345678.0f, "12345678"},
    };
    char buf[32];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char exact[32];
        exact_way(exact, cases[i].f);
        json_format_float(buf, cases[i].f);
        ck_assert_str_eq(buf, exact);
        ck_assert_msg(strtof(buf, NULL) == cases[i].f, "%s", buf);
    }
    json_format_float(buf, 0.0f);
    ck_assert_str_eq(buf, "0");
    json_format_float(buf, -0.0f);
    ck_assert_str_eq(buf, "-0");
    json_format_float(buf, NAN);
    ck_assert_str_eq(buf, "0");
    json_format_float(buf, -INFINITY);
    ck_assert_str_eq(buf, "0");
}
END_TEST

/* Embedding-like values (normal, |x| mostly < 1) and raw bit patterns over
 * the whole finite range, subnormals included. */
START_TEST(test_random_values)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    long differ = 0, total = 0;
    for (int i = 0; i < 400000; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        float f = i % 2 ? float_of_bits((uint32_t)s)
                        : (float)((double)(int32_t)(s >> 32) / 2147483648.0 * 0.2);
        if (!isfinite(f))
            continue;
        differ += check_value(f);
        total++;
    }
    ck_assert_msg(differ * 10000 <= total, "%ld of %ld strings differ from snprintf's", differ,
                  total);
}
END_TEST

/* Around powers of ten, where the decimal exponent changes. */
START_TEST(test_decade_edges)
{
    for (int e = -44; e <= 38; e++) {
        char lit[16];
        snprintf(lit, sizeof lit, "1e%d", e);
        const float p = strtof(lit, NULL);
        float f = p;
        for (int i = 0; i < 40; i++)
            f = nextafterf(f, 0.0f);
        for (int i = 0; i < 80 && isfinite(f); i++) {
            check_value(f);
            check_value(-f);
            f = nextafterf(f, INFINITY);
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("jsonfmt");
    TCase *tc = tcase_create("jsonfmt");
    tcase_add_test(tc, test_known_values);
    tcase_add_test(tc, test_random_values);
    tcase_add_test(tc, test_decade_edges);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
