/* cli.h: the offline subcommands. Each returns a process exit status; only
 * main() exits. */
#ifndef EMBEDD_CLI_H
#define EMBEDD_CLI_H

int cli_embed(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_serve(int argc, char **argv);

/* Applies --threads N (0 = leave the libraries' defaults) to OpenBLAS and
 * OpenMP. */
void cli_set_threads(int n);

#endif
