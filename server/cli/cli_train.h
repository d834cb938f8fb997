/* cli_train.h: `embedd train` as a function, so that `embedd pretrain`
 * (cli_pretrain.c) runs its stages as training jobs. */
#ifndef EMBEDD_CLI_TRAIN_H
#define EMBEDD_CLI_TRAIN_H

typedef struct train_opts {
    const char *model_dir, *model_id, *corpus, *objective, *out, *eval_sts, *schedule;
    const char *lr, *weight_decay, *temperature, *mlm_prob, *mlm_weight, *simcse_weight, *l2sp;
    const char *dropout, *train_only;
    const char *save_dtype;
    int steps, batch_size, max_seq_len, warmup, eval_every, save_every, log_every, seed;
    int threads, min_tokens, resume;
} train_opts;

/* o = train's defaults for every option (as if no flag were given). */
void train_opts_defaults(train_opts *o);
/* Runs one training job (resuming from o->out when it holds trainer
 * state); returns an exit status. */
int train_run_job(const train_opts *o);
/* 1 once SIGINT or SIGTERM arrived during a job: stop, the checkpoint is saved. */
int train_stop_requested(void);

#endif
