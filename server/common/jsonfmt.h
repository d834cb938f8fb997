/* jsonfmt.h: compact JSON number output shared by the CLI and the HTTP
 * server, so both print byte-identical vectors. */
#ifndef EMBEDD_JSONFMT_H
#define EMBEDD_JSONFMT_H

#include <stddef.h>
#include <stdio.h>

/* A decimal that reads back as the same float: 8 significant digits when
 * they suffice, else 9. buf needs 32 bytes. Returns the length written. NaN and Inf, which JSON
 * cannot hold, are written as 0. */
int json_format_float(char *buf, float f);

/* Writes "[f,f,...]" for n floats. */
void json_write_floats(FILE *fp, const float *v, int n);

#endif
