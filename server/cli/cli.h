/* cli.h: the offline subcommands. Each returns a process exit status; only
 * main() exits. */
#ifndef EMBEDD_CLI_H
#define EMBEDD_CLI_H

#include <stddef.h>

int cli_embed(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_train(int argc, char **argv);
int cli_eval(int argc, char **argv);
int cli_pretrain(int argc, char **argv);
int cli_whiten(int argc, char **argv);
int cli_repair(int argc, char **argv);

/* Applies --threads N (0 = leave the libraries' defaults) to OpenBLAS and
 * OpenMP. */
void cli_set_threads(int n);

/* Set by main.c when it re-ran itself with OPENBLAS_CORETYPE chosen for
 * an AVX-512 CPU; serve's start says so (serve.c). */
#define CLI_BLAS_REEXEC_MARKER "EMBEDD_BLAS_REEXEC"

/* The model directory of `cmd` into out (PATH_MAX bytes): --model as given;
 * else --model-id ORG/NAME[@REVISION], fetched from the Hugging Face Hub
 * into its cache (hub.h); else the bundled default model. Returns 0, or an
 * exit status after printing the error. */
int cli_model_dir(const char *model_dir, const char *model_id, char *out, size_t cap,
                  const char *cmd);

#endif
