/* cli_train.h: `embedd train` as a function, so that `embedd pretrain`
 * (cli_pretrain.c) runs its stages as training jobs. */
#ifndef EMBEDD_CLI_TRAIN_H
#define EMBEDD_CLI_TRAIN_H

/* Filled by train's option table (cli_train.c), which holds the defaults
 * and ranges; pretrain fills one per stage from train_opts_defaults. */
typedef struct train_opts {
    const char *model_dir, *model_id, *corpus, *out, *eval_sts;
    int objective;             /* EMB_OBJ_* */
    int schedule;              /* EMB_SCHED_* after warm-up */
    double lr, weight_decay, temperature, mlm_prob, mlm_weight, simcse_weight, l2sp;
    double dropout;             /* hidden and attention; < 0: the model config's */
    int word_embeddings_only;  /* --train-only word-embeddings */
    int save_dtype;            /* EMB_DT_F32, _F16 or _BF16 */
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
