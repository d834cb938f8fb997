/* main.c: the embedd command line. Dispatches to a subcommand and exits
 * with its status; nothing else in embedd calls exit().
 *
 * BLAS kernel choice. OpenBLAS picks its kernels when the library loads,
 * before main(), from OPENBLAS_CORETYPE or else its own CPU detection. Old
 * builds (Debian 12's 0.3.21) do not recognise recent Xeons and fall back to
 * the SSE3 "Prescott" kernels, several times slower than the AVX-512
 * "SkylakeX" ones. So when OPENBLAS_CORETYPE is unset (or empty), the CPU
 * has AVX-512 (F, BW, VL, DQ) and the loaded kernel is not an AVX-512 one,
 * main() sets OPENBLAS_CORETYPE=SkylakeX and re-executes itself once
 * (/proc/self/exe, same argv; EMBEDD_BLAS_REEXEC marks the second run). If
 * the exec fails, embedd goes on with the kernel already loaded. A value
 * the user set, whatever it is, is left alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cblas.h>

#include "cli.h"

#include "common/release.h"

static void usage(FILE *fp)
{
    fprintf(fp,
            "embedd %s: a self-tuning text-embedding server\n"
            "usage: embedd COMMAND [options]\n"
            "commands:\n"
            "  serve      run the HTTP embedding server\n"
            "  embed      embed stdin lines offline, one JSON array per line\n"
            "  tokenize   print token ids of stdin lines, one JSON array per line\n"
            "  train      fine-tune a model on unlabelled text (SimCSE and/or MLM)\n"
            "  eval       STS Spearman of a model on scored sentence pairs\n"
            "  pretrain   train a small encoder from scratch (MLM, then SimCSE)\n"
            "  whiten     add a whitening transform (a Dense module) fitted on a corpus\n"
            "  repair     keep every verifiable record of a damaged data directory's logs\n"
            "  version    print the version\n"
            "Run 'embedd COMMAND --help' for a command's options.\n",
            EMBEDD_VERSION);
}

#define REEXEC_MARKER CLI_BLAS_REEXEC_MARKER

/* OpenBLAS core names whose sgemm uses AVX-512. */
static int core_is_avx512(const char *core)
{
    static const char *const names[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (core != NULL && strcasecmp(core, names[i]) == 0)
            return 1;
    }
    return 0;
}

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

/* Re-executes embedd with OPENBLAS_CORETYPE=SkylakeX when that is better
 * than what OpenBLAS chose by itself (see the top of the file). Returns
 * only when no exec happened. */
static void choose_blas_kernel(char **argv)
{
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set != NULL && set[0] != '\0')
        return;
    if (getenv(REEXEC_MARKER) != NULL)
        return;
    if (!cpu_has_avx512() || core_is_avx512(openblas_get_corename()))
        return;
    /* Under valgrind the new image would run natively, outside the tool. */
    const char *preload = getenv("LD_PRELOAD");
    if (preload != NULL && strstr(preload, "vgpreload") != NULL)
        return;
    if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0 || setenv(REEXEC_MARKER, "1", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* exec failed: go on with the kernel already loaded */
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(REEXEC_MARKER);
}

int main(int argc, char **argv)
{
    choose_blas_kernel(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "embed") == 0)
        return cli_embed(argc - 1, argv + 1);
    if (strcmp(cmd, "tokenize") == 0)
        return cli_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "train") == 0)
        return cli_train(argc - 1, argv + 1);
    if (strcmp(cmd, "pretrain") == 0)
        return cli_pretrain(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0)
        return cli_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "whiten") == 0)
        return cli_whiten(argc - 1, argv + 1);
    if (strcmp(cmd, "repair") == 0)
        return cli_repair(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("embedd %s\n", EMBEDD_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "embedd: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
