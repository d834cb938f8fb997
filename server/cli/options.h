/* options.h: table-driven command-line flags, each with an EMBEDD_*
 * environment variable. Precedence: flag, then environment, then default. */
#ifndef EMBEDD_OPTIONS_H
#define EMBEDD_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

typedef enum { OPT_STRING, OPT_INT, OPT_BOOL } opt_type;

typedef struct opt_spec {
    const char *flag;          /* "max-batch-tokens" (without --) */
    const char *env;           /* "EMBEDD_MAX_BATCH_TOKENS", or NULL for none */
    opt_type type;
    size_t offset;             /* of the field in the options struct */
    const char *def;           /* default as text; NULL for none */
    long min, max;             /* for OPT_INT */
    const char *help;
} opt_spec;

/* Fills the struct at base from defaults, the environment and argv
 * (argv[0] is the subcommand). Returns 0, 1 after printing --help, or 2
 * after printing a usage error to stderr. */
int options_parse(const opt_spec *specs, int n_specs, void *base, int argc, char **argv,
                  const char *usage_line);
void options_help(FILE *fp, const opt_spec *specs, int n_specs, const char *usage_line);

#endif
