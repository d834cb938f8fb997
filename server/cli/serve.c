/* serve.c: starts and stops the parts of `embedd serve` in the order
 * serve.h gives. */
#include "serve.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli.h"
#include "cluster/cluster.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/release.h"
#include "store/collections.h"
#include "store/store_reembed.h"
#include "store/wal.h"

/* Signals are taken by sigtimedwait in wait_for_signal; every thread
 * started later inherits the mask. */
static void block_signals(sigset_t *sigs)
{
    sigemptyset(sigs);
    sigaddset(sigs, SIGINT);
    sigaddset(sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int load_model(server *srv, emb_err *err)
{
    const server_opts *o = &srv->opts;
    srv->model = emb_model_load_precision(o->model_dir, (emb_precision)o->precision, err);
    if (srv->model == NULL)
        return -1;
    if (o->pooling >= 0) /* serve --pooling, before any version copies the config */
        srv->model->cfg.pooling = (emb_pooling)o->pooling;
    if (o->default_prompt_name != NULL && o->default_prompt_name[0] != '\0') {
        emb_config *c = &srv->model->cfg;
        if (emb_prompt_find(c, o->default_prompt_name) == NULL)
            return emb_fail_as(err, EMB_ERR_INVALID,
                               "--default-prompt-name '%s': the model has no such prompt "
                               "(config_sentence_transformers.json lists %d)",
                               o->default_prompt_name, c->n_prompts);
        snprintf(c->default_prompt, sizeof c->default_prompt, "%s", o->default_prompt_name);
    }
    srv->model_name = o->served_model_name;
    if (srv->model_name == NULL || srv->model_name[0] == '\0') {
        const char *slash = strrchr(o->model_dir, '/');
        srv->model_name = slash != NULL && slash[1] != '\0' ? slash + 1 : o->model_dir;
    }
    return 0;
}

static int start_batcher(server *srv, emb_err *err)
{
    if (srv->opts.max_batch_tokens < srv->model->cfg.max_seq_length)
        srv->opts.max_batch_tokens = srv->model->cfg.max_seq_length;
    srv->batcher = batcher_start(srv->model, srv->opts.max_batch_tokens, srv->mx, err);
    return srv->batcher != NULL ? 0 : -1;
}

static int open_store(server *srv, store_recovery *rec, emb_err *err)
{
    const server_opts *o = &srv->opts;
    /* with a cluster, the store is a memory copy of PostgreSQL's items */
    store_options so = {.dir = srv->cluster_mode ? NULL : o->data_dir,
                        .dim = emb_model_dim(srv->model),
                        .hnsw_threshold = o->hnsw_threshold, .hnsw_m = o->hnsw_m,
                        .hnsw_ef_construction = o->hnsw_ef_construction,
                        .hnsw_ef = o->hnsw_ef,
                        .snapshot_wal_bytes = (uint64_t)o->snapshot_wal_bytes};
    /* Tests only: make chosen WAL writes or fsyncs fail (wal.h). */
    if (wal_fault_parse(getenv("EMBEDD_DEBUG_WAL_FAULT"), err) != 0)
        return -1;
    memset(rec, 0, sizeof *rec);
    srv->store = store_open(&so, rec, err);
    if (srv->store == NULL)
        return -1;
    if (rec->message[0] != '\0') /* a torn log tail was cut, or the like */
        log_msg(LOG_WARN, "store: %s", rec->message);
    return 0;
}

/* The Qdrant collections (collections.h), after the store: "default" is
 * the store; named ones live under DATA/collections, with the store's
 * index and snapshot settings. */
static int open_collections(server *srv, emb_err *err)
{
    const server_opts *o = &srv->opts;
    const char *dir = o->data_dir != NULL && o->data_dir[0] != '\0' && !srv->cluster_mode
                          ? o->data_dir : NULL;
    collections_options co = {.data_dir = dir, .default_store = srv->store,
                              .store_opts = {.hnsw_threshold = o->hnsw_threshold,
                                             .hnsw_m = o->hnsw_m,
                                             .hnsw_ef_construction = o->hnsw_ef_construction,
                                             .hnsw_ef = o->hnsw_ef,
                                             .snapshot_wal_bytes =
                                                 (uint64_t)o->snapshot_wal_bytes}};
    char report[256];
    srv->collections = collections_open(&co, report, sizeof report, err);
    if (srv->collections == NULL)
        return -1;
    if (report[0] != '\0')
        log_msg(LOG_INFO, "collections: %s", report);
    return 0;
}

/* Where model versions are saved: --data, or with a cluster and no --data
 * a temporary directory (replicas load versions from PostgreSQL). */
static const char *versions_dir(const server *srv)
{
    return srv->scratch_dir[0] != '\0' ? srv->scratch_dir : srv->opts.data_dir;
}

/* The learner's options: the serve options as parsed, plus what only the
 * loaded model knows. */
static void learner_config(const server *srv, learner_opts *lo)
{
    const server_opts *o = &srv->opts;
    memset(lo, 0, sizeof *lo);
    lo->enabled = o->train;
    lo->objective = o->train_objective;
    lo->lr = (float)o->train_lr;
    lo->l2sp = (float)o->train_l2sp;
    lo->ema_decay = (float)o->train_ema;
    lo->gate_tolerance = (float)o->gate_tolerance;
    lo->publish_every_steps = o->publish_every_steps;
    lo->publish_every_secs = o->publish_every_secs;
    lo->batch_size = o->train_batch_size;
    lo->max_seq_len = o->train_max_seq_len < srv->model->cfg.max_seq_length
                          ? o->train_max_seq_len : srv->model->cfg.max_seq_length;
    lo->max_cpu = (float)o->train_max_cpu / 100.0f;
    lo->min_samples = o->train_min_samples;
    lo->holdout_eval_max = o->holdout_eval_max;
    lo->eval_sts = o->eval_sts;
    lo->collapse_max_cos = (float)o->collapse_max_cos;
    lo->collapse_cos_rise = (float)o->collapse_cos_rise;
    lo->collapse_min_var = (float)o->collapse_min_var;
    lo->gate_lex = o->gate_lex;
    lo->gate_lex_tolerance = (float)o->gate_lex_tolerance;
    lo->gate_lex_gain = (float)o->gate_lex_gain;
    lo->whiten = o->train_whiten;
    lo->whiten_shrink = (float)o->train_whiten_shrink;
    lo->whiten_min_texts = o->train_whiten_min_texts;
    lo->whiten_max_texts = o->train_whiten_max_texts;
    lo->from_embed = o->train_from_embed;
    lo->from_items = o->train_from_items;
    lo->from_explicit = o->train_from_explicit;
    lo->paused = o->train_paused;
    lo->max_epochs = o->train_max_epochs;
    lo->persist_samples = o->train_persist_samples;
    lo->data_dir = versions_dir(srv);
    lo->base_dir = o->model_dir;
    lo->base = srv->model;
    lo->seed = (uint64_t)o->train_seed;
    const char *nan_every = getenv("EMBEDD_DEBUG_NAN_EVERY"); /* tests only */
    lo->nan_every = nan_every != NULL ? atoi(nan_every) : 0;
}

/* --store postgres://: a scratch directory when there is no --data, then
 * PostgreSQL (cluster.h). Before the versions and the store open. */
static int open_cluster(server *srv, emb_err *err)
{
    const server_opts *o = &srv->opts;
    if (!srv->cluster_mode)
        return 0;
    if (o->data_dir == NULL || o->data_dir[0] == '\0') {
        snprintf(srv->scratch_dir, sizeof srv->scratch_dir, "/tmp/embedd-replica-XXXXXX");
        if (mkdtemp(srv->scratch_dir) == NULL)
            return emb_fail_as(err, EMB_ERR_IO, "cannot make a scratch directory in /tmp");
    }
    if (o->replica_name != NULL && o->replica_name[0] != '\0') {
        snprintf(srv->replica, sizeof srv->replica, "%s", o->replica_name);
    } else {
        char host[64] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(srv->replica, sizeof srv->replica, "%s:%d", host, o->port);
    }
    cluster_options co = {.url = o->store_url, .replica = srv->replica,
                          .model = srv->model_name, .dim = emb_model_dim(srv->model),
                          .connect_wait = 30};
    /* every replica competes for the trainer's lock, --train off included:
     * the holder also re-embeds the store after a rollback, and its learner
     * trains only when --train is on */
    log_msg(LOG_INFO, "connecting to PostgreSQL");
    srv->cluster = cluster_open(&co, err);
    return srv->cluster != NULL ? 0 : -1;
}

/* The cluster's state into the store and the registry, then its follower. */
static int start_cluster(server *srv, emb_err *err)
{
    if (srv->cluster == NULL)
        return 0;
    if (cluster_start(srv->cluster, srv->store, srv->versions, err) != 0)
        return -1;
    cluster_stats cs;
    cluster_get_stats(srv->cluster, &cs);
    log_msg(LOG_INFO, "cluster: loaded %ld items up to change %llu; searching version %u",
            store_count(srv->store), (unsigned long long)cs.applied_seq, cs.serving_version);
    return 0;
}

/* The learner's side of the cluster (learner.h, learner_cluster). */
static int learner_leader(void *ctx)
{
    return cluster_is_leader(ctx);
}

static void learner_forward(void *ctx, const char *text, size_t len, int source)
{
    cluster_forward_sample(ctx, text, len, source);
}

static uint32_t learner_next_version(void *ctx, uint32_t latest, emb_err *err)
{
    return cluster_next_version(ctx, latest, err);
}

static void sample_sink(void *ctx, const char *text, size_t len, int source)
{
    learner_add_sample(ctx, text, len, source);
}

/* The registry of model versions: the current one saved under --data, or
 * the loaded model as version 1 (learn/versions.h). */
static int open_versions(server *srv, emb_err *err)
{
    srv->versions = versions_open(versions_dir(srv), srv->opts.model_dir, srv->model,
                                  srv->opts.keep_versions, err);
    if (srv->versions == NULL)
        return -1;
    versions_set_publish(srv->versions, (versions_publish)srv->opts.publish_mode);
    return 0;
}

/* The learner always runs (and moves the store to the current version,
 * versions_align): with --train off it only re-embeds stored items
 * when the store searches another version than the current one. */
static int start_learning(server *srv, emb_err *err)
{
    learner_opts lo;
    learner_config(srv, &lo);
    lo.collections = srv->collections; /* Documents in named collections are re-embedded too */
    srv->learner = learner_start(&lo, srv->versions, srv->batcher, srv->store, srv->mx, err);
    if (srv->learner == NULL)
        return -1;
    if (srv->cluster != NULL) {
        learner_cluster lc = {.ctx = srv->cluster, .leader = learner_leader,
                              .forward = learner_forward,
                              .next_version = learner_next_version};
        learner_set_cluster(srv->learner, &lc);
        cluster_set_sample_sink(srv->cluster, sample_sink, srv->learner);
    }
    batcher_set_idle(srv->batcher, learner_idle, srv->learner, 0.25);
    batcher_set_idle_share(srv->batcher, srv->opts.train_min_share);
    return 0;
}

/* What the store's open found, in a few words for the start line. */
static void recovery_summary(const server *srv, const store_recovery *rec, char *out,
                             size_t cap)
{
    if (srv->opts.data_dir == NULL)
        snprintf(out, cap, "none (memory)");
    else if (rec->snapshot_items == 0 && rec->wal_records == 0 && rec->truncated_bytes == 0)
        snprintf(out, cap, "empty");
    else
        snprintf(out, cap, "snapshot of %llu items, %llu log records replayed%s",
                 (unsigned long long)rec->snapshot_items, (unsigned long long)rec->wal_records,
                 rec->truncated_bytes > 0 ? ", torn tail cut" : "");
}

/* The start line: where the server listens and what is on. Written at
 * every --log-level: tests and scripts find the port after "listening on
 * http://HOST:". */
static void log_started(const server *srv, const store_recovery *rec)
{
    const server_opts *o = &srv->opts;
    log_line ln;
    log_begin_always(&ln, LOG_INFO, "listening on http://%s:%d", o->host, srv->port);
    char recovery[160];
    recovery_summary(srv, rec, recovery, sizeof recovery);
    log_str(&ln, "version", EMBEDD_VERSION);
    log_str(&ln, "model", srv->model_name);
    log_str(&ln, "model_dir", o->model_dir);
    log_int(&ln, "dim", emb_model_dim(srv->model));
    log_str(&ln, "pooling", emb_pooling_name(srv->model->cfg.pooling));
    log_int(&ln, "max_tokens", srv->model->cfg.max_seq_length);
    log_str(&ln, "precision", o->precision == EMB_PRECISION_INT8 ? "int8" : "fp32");
    log_str(&ln, "learning", !o->train ? "off" : o->train_paused ? "paused" : "on");
    log_str(&ln, "publish", o->publish_mode == VERSIONS_PUBLISH_AUTO ? "auto" : "manual");
    log_int(&ln, "model_version", versions_current_id(srv->versions));
    log_str(&ln, "store", srv->cluster_mode ? "postgres" : o->data_dir != NULL ? o->data_dir : "memory");
    if (srv->cluster_mode)
        log_str(&ln, "replica", srv->replica);
    log_int(&ln, "items", store_count(srv->store));
    log_str(&ln, "recovery", recovery);
    log_int(&ln, "hnsw_threshold", o->hnsw_threshold);
    log_str(&ln, "api_key", o->api_key != NULL && o->api_key[0] != '\0' ? "on" : "off");
    log_int(&ln, "threads", o->threads > 0 ? o->threads : omp_get_max_threads());
    log_int(&ln, "http_threads", o->http_threads);
    log_end(&ln);
}

/* Which BLAS kernel runs, and why (main.c chooses it). */
static void log_blas_kernel(void)
{
    const char *core = openblas_get_corename();
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set != NULL && set[0] != '\0' && getenv(CLI_BLAS_REEXEC_MARKER) != NULL)
        log_msg(LOG_INFO, "BLAS kernel %s (chosen by embedd for this AVX-512 CPU; set "
                          "OPENBLAS_CORETYPE to override)", core);
    else if (set != NULL && set[0] != '\0')
        log_msg(LOG_INFO, "BLAS kernel %s (OPENBLAS_CORETYPE=%s)", core, set);
    else
        log_msg(LOG_INFO, "BLAS kernel %s (detected by OpenBLAS)", core);
}

/* Steps 2 to 8 of serve.h. 0, or -1 after logging why. */
static int start_all(server *srv)
{
    emb_err err;
    store_recovery rec;
    log_blas_kernel();
    log_msg(LOG_INFO, "loading model %s", srv->opts.model_dir);
    if (load_model(srv, &err) != 0) {
        log_msg(LOG_ERROR, "cannot start: %s", err.msg);
        return -1;
    }
    srv->mx = metrics_new();
    if (srv->mx == NULL) {
        log_msg(LOG_ERROR, "cannot start: out of memory");
        return -1;
    }
    if (open_cluster(srv, &err) != 0 || open_versions(srv, &err) != 0 ||
        start_batcher(srv, &err) != 0 || open_store(srv, &rec, &err) != 0 ||
        start_cluster(srv, &err) != 0 || open_collections(srv, &err) != 0 ||
        start_learning(srv, &err) != 0 ||
        http_start(srv, &err) != 0) {
        log_msg(LOG_ERROR, "cannot start: %s", err.msg);
        return -1;
    }
    log_started(srv, &rec);
    return 0;
}

/* The store's health as last reported, so that an I/O error is logged
 * once per episode and then summed up every HEALTH_SUMMARY_EVERY seconds,
 * not once per request. */
typedef struct health_log {
    int degraded;
    uint64_t errors;           /* I/O errors already reported */
    uint64_t refused;          /* writes refused when the episode began */
    double last_line;          /* mono_seconds() of the last error line; 0: none */
} health_log;

#define HEALTH_SUMMARY_EVERY 10.0

/* Copies the store's health into the metrics and logs what changed: the
 * first I/O error of an episode, a summary of later ones, the recovery. */
static void report_store_health(server *srv, health_log *hl)
{
    store_health h;
    store_get_health(srv->store, &h);
    for (int k = 0; k < STORE_IO_COUNT; k++) {
        const char *file, *op;
        store_io_label((store_io)k, &file, &op);
        metrics_io_errors(srv->mx, file, op, h.io_errors[k]);
    }
    metrics_store_state(srv->mx, h.degraded, h.writes_refused);
    if (srv->collections != NULL) {
        long n_collections = 0, n_points = 0;
        collections_totals(srv->collections, &n_collections, &n_points);
        metrics_collections(srv->mx, n_collections, n_points);
    }
    double now = mono_seconds();
    const char *what = h.degraded ? h.reason : h.last_error;
    log_line ln;
    if (h.degraded && !hl->degraded) {
        if (log_begin(&ln, LOG_WARN, "store: I/O error, writes are refused until the disk "
                                     "takes them again (reads go on)")) {
            log_str(&ln, "error", what);
            log_end(&ln);
        }
        hl->errors = h.io_errors_total;
        hl->refused = h.writes_refused;
        hl->last_line = now;
    } else if (h.io_errors_total > hl->errors &&
               (hl->last_line == 0 || now - hl->last_line >= HEALTH_SUMMARY_EVERY)) {
        if (log_begin(&ln, LOG_WARN, "store: %llu I/O error%s since the last report%s",
                      (unsigned long long)(h.io_errors_total - hl->errors),
                      h.io_errors_total - hl->errors == 1 ? "" : "s",
                      h.degraded ? ", still refusing writes" : "")) {
            log_str(&ln, "error", what);
            log_end(&ln);
        }
        hl->errors = h.io_errors_total;
        hl->last_line = now;
    }
    if (!h.degraded && hl->degraded)
        log_msg(LOG_INFO, "store: writable again after %.1f s (%llu writes refused)",
                h.last_outage, (unsigned long long)(h.writes_refused - hl->refused));
    hl->degraded = h.degraded;
}

/* Once a second while serving: persist the sample buffer, update gauges,
 * let a degraded store try to recover and report its health. */
static void housekeeping(server *srv, health_log *hl)
{
    store_heal(srv->store, NULL);
    report_store_health(srv, hl);
    long done = 0, total = 0;
    store_reembed_progress(srv->store, &done, &total);
    unsigned long buffer = 0;
    int paused = 1;
    if (srv->learner != NULL) {
        learner_flush(srv->learner);
        learner_gauges(srv->learner, &buffer, &paused);
    }
    metrics_train_gauges(srv->mx, versions_current_id(srv->versions), buffer, done, total,
                         paused);
    if (srv->cluster != NULL) {
        cluster_stats cs;
        cluster_get_stats(srv->cluster, &cs);
        metrics_replication(srv->mx, cs.connected, cs.leader, cs.applied_seq, cs.head_seq,
                            cs.lag_seconds);
    }
}

/* Housekeeping until SIGINT or SIGTERM; returns the signal. */
static int wait_for_signal(server *srv, const sigset_t *sigs)
{
    health_log hl;
    memset(&hl, 0, sizeof hl);
    report_store_health(srv, &hl);   /* the metrics' series exist from the start */
    for (;;) {
        struct timespec second = {1, 0};
        int sig = sigtimedwait(sigs, NULL, &second);
        if (sig == SIGINT || sig == SIGTERM)
            return sig;
        housekeeping(srv, &hl);
    }
}

/* The orderly shutdown of serve.h, after a signal. */
static void stop_serving(server *srv)
{
    emb_err err;
    http_quiesce(srv);
    log_msg(LOG_INFO, "stopping: no new connections, in-flight requests answered");
    batcher_halt(srv->batcher);   /* freed in free_all, after the learner's threads */
    if (srv->cluster != NULL)
        cluster_set_sample_sink(srv->cluster, NULL, NULL); /* it feeds the learner */
    learner_stop(srv->learner);
    srv->learner = NULL;
    log_msg(LOG_INFO, "stopping: compute and learner stopped");
    http_stop(srv);
    if (srv->cluster != NULL) {
        cluster_close(srv->cluster);
        srv->cluster = NULL;
        log_msg(LOG_INFO, "stopping: cluster follower stopped");
    }
    /* A snapshot now makes the next start read one file, not the whole log. */
    if (srv->opts.data_dir != NULL && srv->opts.data_dir[0] != '\0' && !srv->cluster_mode) {
        if (store_snapshot(srv->store, &err) != 0)
            log_msg(LOG_ERROR, "stopping: snapshot at shutdown failed: %s", err.msg);
        else
            log_msg(LOG_INFO, "stopping: store snapshot written to %s", srv->opts.data_dir);
    }
    collections_close(srv->collections, 1);
    srv->collections = NULL;
    store_close(srv->store);
    srv->store = NULL;
    log_msg(LOG_INFO, "stopped");
}

/* Frees whatever is still started, in shutdown order (after a failed
 * startup, everything; after stop_serving, metrics, versions and model). */
static void free_all(server *srv)
{
    http_stop(srv);
    batcher_halt(srv->batcher);
    if (srv->cluster != NULL)
        cluster_set_sample_sink(srv->cluster, NULL, NULL);
    learner_stop(srv->learner);
    batcher_stop(srv->batcher);
    cluster_close(srv->cluster);
    collections_close(srv->collections, 0);
    if (srv->store != NULL)
        store_close(srv->store);
    metrics_free(srv->mx);
    versions_free(srv->versions);
    emb_model_free(srv->model);
    if (srv->scratch_dir[0] != '\0') {
        emb_err ignored;
        emb_remove_tree(srv->scratch_dir, &ignored);
    }
}

int serve_run(const server_opts *opts)
{
    server srv;
    memset(&srv, 0, sizeof srv);
    srv.opts = *opts;
    srv.cluster_mode = cluster_url_is_postgres(opts->store_url);
    atomic_init(&srv.inflight, 0);
    atomic_init(&srv.working, 0);
    atomic_init(&srv.ready, 0);
    sigset_t sigs;
    block_signals(&sigs);
    cli_set_threads(opts->threads);

    int rc = 1;
    if (start_all(&srv) == 0) {
        int sig = wait_for_signal(&srv, &sigs);
        log_msg(LOG_INFO, "%s received, finishing in-flight requests",
                sig == SIGTERM ? "SIGTERM" : "SIGINT");
        stop_serving(&srv);
        rc = 0;
    }
    free_all(&srv);
    return rc;
}
