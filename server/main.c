/* main.c: the embedd command line. Dispatches to a subcommand and exits
 * with its status; nothing else in embedd calls exit(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define EMBEDD_VERSION "0.1.0"

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
            "  version    print the version\n"
            "Run 'embedd COMMAND --help' for a command's options.\n",
            EMBEDD_VERSION);
}

int main(int argc, char **argv)
{
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
