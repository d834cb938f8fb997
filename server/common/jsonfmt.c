/* jsonfmt.c: see jsonfmt.h.
 *
 * A float is printed as the shortest of its 8- and 9-significant-digit
 * decimals that reads back as the same float, in printf's %g layout. The
 * digits come from double arithmetic (a float times a power of ten is
 * within a few units of 1e-16 of the exact product), not from snprintf and
 * strtof, which cost about 20 times as much and were a few per cent of
 * `embedd embed`'s time:
 *
 *   8 digits  n8 = round(|f| 10^(7-e)); it reads back as f when its value
 *             lies strictly between the midpoints from f to its two float
 *             neighbours. The value, in double, is off by at most ~3e-16
 *             relative, so a decimal that close to a midpoint goes to the
 *             exact snprintf/strtof test instead (practically never).
 *   9 digits  always read back as f: 9-digit decimals are at most 1e-8
 *             relative apart and a float's half gap is at least 2.98e-8, so
 *             even a decimal one unit off the nearest one (double rounding)
 *             is close enough. */
#include "jsonfmt.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 10^k for k in -POW10_MIN_EXP .. POW10_MAX_EXP, as doubles: exact up to
 * 1e22, correctly rounded beyond. */
#define POW10_MIN_EXP 54
#define POW10_MAX_EXP 55

static double pow10_table[POW10_MIN_EXP + POW10_MAX_EXP + 1];
static pthread_once_t pow10_once = PTHREAD_ONCE_INIT;

static void pow10_init(void)
{
    char lit[8];
    for (int i = -POW10_MIN_EXP; i <= POW10_MAX_EXP; i++) {
        snprintf(lit, sizeof lit, "1e%d", i);
        pow10_table[i + POW10_MIN_EXP] = strtod(lit, NULL); /* correctly rounded */
    }
}

static double pow10_of(int k)
{
    return pow10_table[k + POW10_MIN_EXP];
}

/* |f| * 10^k, correctly rounded when 10^|k| is exact. */
static double scale10(double d, int k)
{
    if (k < 0 && -k <= 22)
        return d / pow10_of(-k);
    return d * pow10_of(k);
}

/* The P-digit integer n (10^(P-1) <= n < 10^P) nearest to d / 10^(e-P+1),
 * where e is d's decimal exponent, which this finds; d > 0. */
static int64_t decimal_digits(double d, int p, int *e_out)
{
    int be;
    frexp(d, &be);
    int e = (int)floor((be - 1) * 0.30102999566398120); /* log10(2); may be 1 low */
    const double lo = pow10_of(p - 1), hi = pow10_of(p);
    for (;;) {
        double n = nearbyint(scale10(d, p - 1 - e));
        if (n >= hi) {
            e++;
            continue;
        }
        if (n < lo) {
            e--;
            continue;
        }
        *e_out = e;
        return (int64_t)n;
    }
}

/* 1 when n * 10^(e-p+1) surely reads back as f (> 0), 0 when it surely does
 * not, -1 when the double arithmetic is too close to call. */
static int reads_back(float f, int64_t n, int e, int p)
{
    const double v = scale10((double)n, e - p + 1);
    const double below = ((double)f + (double)nextafterf(f, 0.0f)) / 2.0;
    const double above = ((double)f + (double)nextafterf(f, INFINITY)) / 2.0;
    const double slack = v * 1e-15;
    if (fabs(v - below) <= slack || fabs(v - above) <= slack)
        return -1;
    return v > below && v < above;
}

/* Writes sign, the digits of n (p of them, trailing zeros dropped) and the
 * decimal exponent e as printf's %.pg does. */
static int write_g(char *buf, int negative, int64_t n, int e, int p)
{
    char digits[24];
    int len = 0;
    for (int i = p - 1; i >= 0; i--) {
        digits[i] = (char)('0' + n % 10);
        n /= 10;
    }
    len = p;
    while (len > 1 && digits[len - 1] == '0')
        len--;
    char *o = buf;
    if (negative)
        *o++ = '-';
    if (e >= -4 && e < p) {
        if (e < 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -e - 1; i++)
                *o++ = '0';
            memcpy(o, digits, (size_t)len);
            o += len;
        } else {
            for (int i = 0; i <= e; i++)
                *o++ = i < len ? digits[i] : '0';
            if (len > e + 1) {
                *o++ = '.';
                memcpy(o, digits + e + 1, (size_t)(len - e - 1));
                o += len - e - 1;
            }
        }
    } else {
        *o++ = digits[0];
        if (len > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)(len - 1));
            o += len - 1;
        }
        *o++ = 'e';
        *o++ = e < 0 ? '-' : '+';
        int ae = e < 0 ? -e : e;
        if (ae >= 100)
            *o++ = (char)('0' + ae / 100);
        *o++ = (char)('0' + ae / 10 % 10);
        *o++ = (char)('0' + ae % 10);
    }
    *o = '\0';
    return (int)(o - buf);
}

/* The exact, slow way: snprintf, then strtof to check. */
static int format_float_slow(char *buf, float f)
{
    int n = snprintf(buf, 32, "%.8g", (double)f);
    if (strtof(buf, NULL) != f)
        n = snprintf(buf, 32, "%.9g", (double)f);
    return n;
}

int json_format_float(char *buf, float f)
{
    if (!isfinite(f)) {
        buf[0] = '0';
        buf[1] = '\0';
        return 1;
    }
    if (f == 0.0f)
        return format_float_slow(buf, f); /* "0" or "-0" */
    pthread_once(&pow10_once, pow10_init);
    const float a = fabsf(f);
    int e;
    int64_t n = decimal_digits((double)a, 8, &e);
    int ok = reads_back(a, n, e, 8);
    if (ok < 0)
        return format_float_slow(buf, f);
    if (ok)
        return write_g(buf, f < 0.0f, n, e, 8);
    n = decimal_digits((double)a, 9, &e);
    return write_g(buf, f < 0.0f, n, e, 9);
}

void json_write_floats(FILE *fp, const float *v, int n)
{
    char num[32];
    fputc('[', fp);
    for (int i = 0; i < n; i++) {
        if (i > 0)
            fputc(',', fp);
        json_format_float(num, v[i]);
        fputs(num, fp);
    }
    fputc(']', fp);
}
