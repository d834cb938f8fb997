#include "jsonfmt.h"

#include <math.h>
#include <stdlib.h>

int json_format_float(char *buf, float f)
{
    if (!isfinite(f)) {
        buf[0] = '0';
        buf[1] = '\0';
        return 1;
    }
    /* 9 significant digits always round-trip a float; 8 usually do and
     * are shorter. (Fewer rarely do for computed values, so not tried.) */
    int n = snprintf(buf, 32, "%.8g", (double)f);
    if (strtof(buf, NULL) != f)
        n = snprintf(buf, 32, "%.9g", (double)f);
    return n;
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
