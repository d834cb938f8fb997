/* options.h: the one command-line parser of embedd. Every subcommand
 * describes its flags in one table of opt_spec (serve in cli_serve.c,
 * embed and tokenize in cli_embed.c, train and eval in cli_train.c,
 * pretrain in cli_pretrain.c, whiten in cli_whiten.c); the table alone
 * decides which flags exist, their types, ranges, defaults, environment
 * variables and the --help text. A subcommand never parses a value itself:
 * it gets a struct of typed fields.
 *
 * Values. Precedence: flag, then environment (only entries with env, today
 * only serve's EMBEDD_* variables), then the table's default. A flag is
 * "--name VALUE" or "--name=VALUE"; a boolean is also "--name" (true),
 * "--no-name" (false) or "--name off". An entry with short_name also
 * takes "-X VALUE" ("-p 8080"). Types and their fields:
 *   OPT_STRING  const char *  the text as given (argv or environ: not copied)
 *   OPT_INT     int           an integer in [min, max]
 *   OPT_BOOL    int           true/false, 1/0, yes/no, on/off
 *   OPT_FLOAT   double        a number in [min, max] (or [min, max) with
 *                             max_open); also one of `choices`' names,
 *                             stored as its value (train's --dropout model)
 *   OPT_CHOICE  int           one of `choices`' names, stored as its value
 *   OPT_PERIOD  opt_period    "N" steps or "Ns" seconds, N in [min, max]
 * An entry without a flag is a fixed setting: the parser stores its
 * default and no flag, variable or --help line exists for it (serve's
 * publish-gate thresholds), so that every default lives in a table.
 *
 * Errors. A bad value, an unknown flag, a missing value or a stray
 * argument prints one line to stderr, "embedd CMD: --flag must be WHAT,
 * got 'TEXT'" (the variable's name instead of --flag for the environment),
 * and options_parse returns 2, the exit status of a usage error. Only
 * cross-flag rules (--corpus and --out are required, --model or
 * --model-id) stay with the subcommand. */
#ifndef EMBEDD_OPTIONS_H
#define EMBEDD_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

typedef enum { OPT_STRING, OPT_INT, OPT_BOOL, OPT_FLOAT, OPT_CHOICE, OPT_PERIOD } opt_type;

/* A name a value may be given as; a list ends with {NULL, 0}. */
typedef struct opt_choice {
    const char *name;
    int value;
} opt_choice;

/* OPT_PERIOD: exactly one of the two is set. */
typedef struct opt_period {
    int steps;                 /* "200": every 200 steps; 0 when in seconds */
    double secs;               /* "600s": every 600 seconds; 0 when in steps */
} opt_period;

typedef struct opt_spec {
    const char *flag;          /* "max-batch-tokens" (without --); NULL: a fixed setting */
    const char *env;           /* "EMBEDD_MAX_BATCH_TOKENS", or NULL for none */
    opt_type type;
    size_t offset;             /* of the field in the options struct */
    const char *def;           /* default as text; NULL: the field is left as it was */
    double min, max;           /* OPT_INT, OPT_FLOAT, OPT_PERIOD: the accepted range */
    int max_open;              /* OPT_FLOAT: max itself is outside the range */
    const opt_choice *choices; /* OPT_CHOICE: the names; OPT_FLOAT: extra words */
    const char *help;
    char short_name;           /* 'p': the flag is also "-p VALUE"; 0: none */
} opt_spec;

/* Table entries of a struct S (designated initialisers: the rest is 0). */
#define OPT_STR(S, name, var, field, dflt, text)                                         \
    {.flag = (name), .env = (var), .type = OPT_STRING, .offset = offsetof(S, field),     \
     .def = (dflt), .help = (text)}
#define OPT_INTEGER(S, name, var, field, dflt, lo, hi, text)                             \
    {.flag = (name), .env = (var), .type = OPT_INT, .offset = offsetof(S, field),        \
     .def = (dflt), .min = (lo), .max = (hi), .help = (text)}
#define OPT_FLAG(S, name, var, field, dflt, text)                                        \
    {.flag = (name), .env = (var), .type = OPT_BOOL, .offset = offsetof(S, field),       \
     .def = (dflt), .help = (text)}
#define OPT_NUMBER(S, name, var, field, dflt, lo, hi, text)                              \
    {.flag = (name), .env = (var), .type = OPT_FLOAT, .offset = offsetof(S, field),      \
     .def = (dflt), .min = (lo), .max = (hi), .help = (text)}
#define OPT_ONE_OF(S, name, var, field, dflt, names, text)                               \
    {.flag = (name), .env = (var), .type = OPT_CHOICE, .offset = offsetof(S, field),     \
     .def = (dflt), .choices = (names), .help = (text)}

/* Fills the struct at base from the table's defaults, the environment and
 * argv (argv[0] is the subcommand, which prefixes messages). Returns 0; 1
 * after printing --help to stdout; or 2 after printing a usage error to
 * stderr. */
int options_parse(const opt_spec *specs, int n_specs, void *base, int argc, char **argv,
                  const char *usage_line);
/* The usage line, then one line per flag: its help, choices, default and
 * environment variable. */
void options_help(FILE *fp, const opt_spec *specs, int n_specs, const char *usage_line);
/* The name of value in a choice list, or "?". */
const char *options_choice_name(const opt_choice *choices, int value);

#endif
