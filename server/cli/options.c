/* options.c: the option-table parser (see options.h). */
#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int parse_bool(const char *s, int *out)
{
    if (strcasecmp(s, "true") == 0 || strcmp(s, "1") == 0 || strcasecmp(s, "yes") == 0 ||
        strcasecmp(s, "on") == 0) {
        *out = 1;
        return 0;
    }
    if (strcasecmp(s, "false") == 0 || strcmp(s, "0") == 0 || strcasecmp(s, "no") == 0 ||
        strcasecmp(s, "off") == 0) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* A whole-string number into *out; -1 when s is not one. */
static int parse_double(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static int in_range(const opt_spec *spec, double v)
{
    return v >= spec->min && (spec->max_open ? v < spec->max : v <= spec->max);
}

static const opt_choice *find_choice(const opt_choice *choices, const char *name)
{
    for (int i = 0; choices != NULL && choices[i].name != NULL; i++) {
        if (strcmp(choices[i].name, name) == 0)
            return &choices[i];
    }
    return NULL;
}

const char *options_choice_name(const opt_choice *choices, int value)
{
    for (int i = 0; choices != NULL && choices[i].name != NULL; i++) {
        if (choices[i].value == value)
            return choices[i].name;
    }
    return "?";
}

/* "a, b or c" into buf. */
static const char *choice_list(const opt_choice *choices, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; choices != NULL && choices[i].name != NULL; i++) {
        const char *sep = i == 0 ? "" : choices[i + 1].name == NULL ? " or " : ", ";
        int n = snprintf(buf + len, cap - len, "%s%s", sep, choices[i].name);
        if (n < 0 || (size_t)n >= cap - len)
            break;
        len += (size_t)n;
    }
    return buf;
}

/* What spec accepts, for the error message: "an integer in 0..65535". */
static void describe(const opt_spec *spec, char *buf, size_t cap)
{
    char names[256];
    switch (spec->type) {
    case OPT_INT:
        snprintf(buf, cap, "an integer in %.0f..%.0f", spec->min, spec->max);
        break;
    case OPT_BOOL:
        snprintf(buf, cap, "true or false");
        break;
    case OPT_FLOAT:
        snprintf(buf, cap, "%s%sa number in [%g, %g%c", choice_list(spec->choices, names,
                 sizeof names), spec->choices != NULL ? " or " : "", spec->min, spec->max,
                 spec->max_open ? ')' : ']');
        break;
    case OPT_CHOICE:
        snprintf(buf, cap, "%s", choice_list(spec->choices, names, sizeof names));
        break;
    case OPT_PERIOD:
        snprintf(buf, cap, "N (steps) or Ns (seconds) with N in [%g, %g]", spec->min, spec->max);
        break;
    case OPT_STRING:
        snprintf(buf, cap, "a text");
        break;
    }
}

/* Converts text for spec into the field; -1 when it is not accepted. */
static int store_value(const opt_spec *spec, void *base, const char *text)
{
    char *field = (char *)base + spec->offset;
    const opt_choice *c;
    double v;
    switch (spec->type) {
    case OPT_STRING:
        *(const char **)field = text;
        return 0;
    case OPT_BOOL:
        return parse_bool(text, (int *)field);
    case OPT_INT: {
        char *end = NULL;
        errno = 0;
        long l = strtol(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0' || !in_range(spec, (double)l))
            return -1;
        *(int *)field = (int)l;
        return 0;
    }
    case OPT_FLOAT:
        if ((c = find_choice(spec->choices, text)) != NULL) {
            *(double *)field = c->value;
            return 0;
        }
        if (parse_double(text, &v) != 0 || !in_range(spec, v))
            return -1;
        *(double *)field = v;
        return 0;
    case OPT_CHOICE:
        if ((c = find_choice(spec->choices, text)) == NULL)
            return -1;
        *(int *)field = c->value;
        return 0;
    case OPT_PERIOD: {
        size_t n = strlen(text);
        int secs = n > 0 && text[n - 1] == 's';
        char num[64];
        if (n >= sizeof num)
            return -1;
        snprintf(num, sizeof num, "%.*s", (int)(secs ? n - 1 : n), text);
        if (parse_double(num, &v) != 0 || !in_range(spec, v))
            return -1;
        opt_period *p = (opt_period *)field;
        p->steps = secs ? 0 : (int)v;
        p->secs = secs ? v : 0;
        return 0;
    }
    }
    return -1;
}

/* Stores text, or prints the uniform error; `from` is "--flag" or the
 * variable's name. */
static int set_value(const opt_spec *spec, void *base, const char *text, const char *cmd,
                     const char *from)
{
    if (store_value(spec, base, text) == 0)
        return 0;
    char what[512];
    describe(spec, what, sizeof what);
    fprintf(stderr, "embedd %s: %s must be %s, got '%s'\n", cmd, from, what, text);
    return -1;
}

static const char *value_name(const opt_spec *spec)
{
    switch (spec->type) {
    case OPT_BOOL:
        return "[=BOOL]";
    case OPT_INT:
        return " N";
    case OPT_FLOAT:
        return " X";
    case OPT_CHOICE:
        return " NAME";
    case OPT_PERIOD:
        return " N|Ns";
    case OPT_STRING:
        break;
    }
    return " VALUE";
}

void options_help(FILE *fp, const opt_spec *specs, int n_specs, const char *usage_line)
{
    fprintf(fp, "%s\n\nOptions:\n", usage_line);
    for (int i = 0; i < n_specs; i++) {
        if (specs[i].flag == NULL)
            continue;
        char left[64], names[256];
        if (specs[i].short_name != 0)
            snprintf(left, sizeof left, "-%c, --%s%s", specs[i].short_name, specs[i].flag,
                     value_name(&specs[i]));
        else
            snprintf(left, sizeof left, "--%s%s", specs[i].flag, value_name(&specs[i]));
        fprintf(fp, "  %-30s %s", left, specs[i].help);
        if (specs[i].type == OPT_CHOICE)
            fprintf(fp, ": %s", choice_list(specs[i].choices, names, sizeof names));
        if (specs[i].def != NULL)
            fprintf(fp, " (default %s)", specs[i].def);
        if (specs[i].env != NULL)
            fprintf(fp, "\n  %-30s [env %s]", "", specs[i].env);
        fputc('\n', fp);
    }
}

static const opt_spec *find_flag(const opt_spec *specs, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++) {
        if (specs[i].flag != NULL && strlen(specs[i].flag) == len &&
            strncmp(specs[i].flag, name, len) == 0)
            return &specs[i];
    }
    return NULL;
}

static const opt_spec *find_short(const opt_spec *specs, int n, char c)
{
    for (int i = 0; i < n; i++) {
        if (specs[i].flag != NULL && specs[i].short_name == c)
            return &specs[i];
    }
    return NULL;
}

/* Defaults, then the environment. */
static int set_defaults(const opt_spec *specs, int n_specs, void *base, const char *cmd)
{
    for (int i = 0; i < n_specs; i++) {
        const char *name = specs[i].flag != NULL ? specs[i].flag : "(fixed)";
        if (specs[i].def != NULL && set_value(&specs[i], base, specs[i].def, cmd, name) != 0)
            return 2;
    }
    for (int i = 0; i < n_specs; i++) {
        const char *v = specs[i].env != NULL ? getenv(specs[i].env) : NULL;
        if (v != NULL && set_value(&specs[i], base, v, cmd, specs[i].env) != 0)
            return 2;
    }
    return 0;
}

int options_parse(const opt_spec *specs, int n_specs, void *base, int argc, char **argv,
                  const char *usage_line)
{
    const char *cmd = argc > 0 ? argv[0] : "";
    if (set_defaults(specs, n_specs, base, cmd) != 0)
        return 2;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            options_help(stdout, specs, n_specs, usage_line);
            return 1;
        }
        const opt_spec *spec = NULL;
        const char *name = arg + 2;
        const char *eq = NULL;
        size_t len = 0;
        if (arg[0] == '-' && arg[1] != '-' && arg[1] != '\0' && arg[2] == '\0')
            spec = find_short(specs, n_specs, arg[1]); /* "-p 8080" */
        if (spec == NULL && strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "embedd %s: unexpected argument '%s'\n", cmd, arg);
            return 2;
        }
        if (spec == NULL) {
            eq = strchr(name, '=');
            len = eq != NULL ? (size_t)(eq - name) : strlen(name);
            spec = find_flag(specs, n_specs, name, len);
        }
        if (spec == NULL && eq == NULL && strncmp(name, "no-", 3) == 0) {
            spec = find_flag(specs, n_specs, name + 3, len - 3);
            if (spec != NULL && spec->type == OPT_BOOL) {
                *(int *)((char *)base + spec->offset) = 0;
                continue;
            }
            spec = NULL;
        }
        if (spec == NULL) {
            fprintf(stderr, "embedd %s: unknown option '%s' (see --help)\n", cmd, arg);
            return 2;
        }
        const char *value = NULL;
        if (eq != NULL) {
            value = eq + 1;
        } else if (spec->type == OPT_BOOL) {
            /* "--train off" as well as "--train" and "--train=off" */
            int ignored;
            value = a + 1 < argc && parse_bool(argv[a + 1], &ignored) == 0 ? argv[++a] : "true";
        } else if (a + 1 < argc) {
            value = argv[++a];
        } else {
            fprintf(stderr, "embedd %s: option '--%s' needs a value\n", cmd, spec->flag);
            return 2;
        }
        char from[80];
        snprintf(from, sizeof from, "--%s", spec->flag);
        if (set_value(spec, base, value, cmd, from) != 0)
            return 2;
    }
    return 0;
}
