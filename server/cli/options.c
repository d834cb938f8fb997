#include "options.h"

#include <errno.h>
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

/* Stores text into the field of spec; `from` names the source for errors. */
static int set_value(const opt_spec *spec, void *base, const char *text, const char *from)
{
    char *field = (char *)base + spec->offset;
    if (spec->type == OPT_STRING) {
        *(const char **)field = text;
        return 0;
    }
    if (spec->type == OPT_BOOL) {
        if (parse_bool(text, (int *)field) != 0) {
            fprintf(stderr, "embedd: %s: expected true or false, got '%s'\n", from, text);
            return -1;
        }
        return 0;
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < spec->min || v > spec->max) {
        fprintf(stderr, "embedd: %s: expected an integer in %ld..%ld, got '%s'\n", from,
                spec->min, spec->max, text);
        return -1;
    }
    *(int *)field = (int)v;
    return 0;
}

void options_help(FILE *fp, const opt_spec *specs, int n_specs, const char *usage_line)
{
    fprintf(fp, "%s\n\nOptions:\n", usage_line);
    for (int i = 0; i < n_specs; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s", specs[i].flag,
                 specs[i].type == OPT_BOOL ? "[=BOOL]" : specs[i].type == OPT_INT ? " N" : " VALUE");
        fprintf(fp, "  %-30s %s", left, specs[i].help);
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
        if (strlen(specs[i].flag) == len && strncmp(specs[i].flag, name, len) == 0)
            return &specs[i];
    }
    return NULL;
}

int options_parse(const opt_spec *specs, int n_specs, void *base, int argc, char **argv,
                  const char *usage_line)
{
    for (int i = 0; i < n_specs; i++) {
        if (specs[i].def != NULL && set_value(&specs[i], base, specs[i].def, specs[i].flag) != 0)
            return 2;
    }
    for (int i = 0; i < n_specs; i++) {
        const char *v = specs[i].env != NULL ? getenv(specs[i].env) : NULL;
        if (v != NULL && set_value(&specs[i], base, v, specs[i].env) != 0)
            return 2;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            options_help(stdout, specs, n_specs, usage_line);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "embedd: unexpected argument '%s'\n", arg);
            return 2;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        const opt_spec *spec = find_flag(specs, n_specs, name, len);
        if (spec == NULL && eq == NULL && strncmp(name, "no-", 3) == 0) {
            spec = find_flag(specs, n_specs, name + 3, len - 3);
            if (spec != NULL && spec->type == OPT_BOOL) {
                *(int *)((char *)base + spec->offset) = 0;
                continue;
            }
            spec = NULL;
        }
        if (spec == NULL) {
            fprintf(stderr, "embedd: unknown option '%s' (see --help)\n", arg);
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
            fprintf(stderr, "embedd: option '--%s' needs a value\n", spec->flag);
            return 2;
        }
        if (set_value(spec, base, value, arg) != 0)
            return 2;
    }
    return 0;
}
