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
    int n = 0;
    for (int prec = 6; prec <= 9; prec++) {
        n = snprintf(buf, 32, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
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
