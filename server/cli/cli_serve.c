/* cli_serve.c: `embedd serve`: its option table (each flag with an
 * EMBEDD_* variable, plus the fixed publish-gate settings) and the hand-over
 * to serve_run (serve.h). */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cluster/cluster.h"
#include "common/log.h"
#include "options.h"
#include "serve.h"
#include "train.h"

/* The server's options plus those that only decide where the model comes
 * from, and the publish period before it is split into steps or seconds. */
typedef struct serve_cli {
    server_opts srv;
    const char *model_id;
    const char *revision;      /* --revision: the Hub revision of --model-id */
    opt_period publish_every;
    int log_level, log_format; /* log.h: set before serve_run */
} serve_cli;

static const opt_choice poolings[] = {
    {"mean", EMB_POOL_MEAN}, {"cls", EMB_POOL_CLS}, {"last", EMB_POOL_LAST}, {NULL, 0}};

static const opt_choice objectives[] = {
    {"simcse", EMB_OBJ_SIMCSE}, {"mlm", EMB_OBJ_MLM}, {"both", EMB_OBJ_BOTH}, {NULL, 0}};
static const opt_choice publish_modes[] = {
    {"manual", VERSIONS_PUBLISH_MANUAL}, {"auto", VERSIONS_PUBLISH_AUTO}, {NULL, 0}};
static const opt_choice precisions[] = {
    {"fp32", EMB_PRECISION_FP32}, {"int8", EMB_PRECISION_INT8}, {NULL, 0}};
static const opt_choice log_levels[] = {
    {"error", LOG_ERROR}, {"warn", LOG_WARN}, {"info", LOG_INFO}, {"debug", LOG_DEBUG},
    {NULL, 0}};
static const opt_choice log_formats[] = {{"text", LOG_TEXT}, {"json", LOG_JSON}, {NULL, 0}};

#define S_STR(flag, env, field, def, help) OPT_STR(serve_cli, flag, env, srv.field, def, help)
#define S_INT(flag, env, field, def, lo, hi, help) \
    OPT_INTEGER(serve_cli, flag, env, srv.field, def, lo, hi, help)
#define S_BOOL(flag, env, field, def, help) OPT_FLAG(serve_cli, flag, env, srv.field, def, help)
#define S_NUM(flag, env, field, def, lo, hi, help) \
    OPT_NUMBER(serve_cli, flag, env, srv.field, def, lo, hi, help)

static const opt_spec serve_specs[] = {
    S_STR("model", "EMBEDD_MODEL", model_dir, NULL,
          "Hugging Face model directory (default: the bundled model)"),
    OPT_STR(serve_cli, "model-id", "EMBEDD_MODEL_ID", model_id, NULL,
            "a local model directory, or ORG/NAME[@REVISION] to download from the Hugging "
            "Face Hub into its cache "
            "(HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE)"),
    S_STR("served-model-name", "EMBEDD_SERVED_MODEL_NAME", served_model_name, NULL,
          "model name in /info and OpenAI responses (default: the directory's name, or "
          "ORG/NAME with --model-id)"),
    S_STR("host", "EMBEDD_HOST", host, "127.0.0.1", "address to listen on"),
    {.flag = "port", .env = "EMBEDD_PORT", .type = OPT_INT, .offset = offsetof(serve_cli, srv.port),
     .def = "8080", .min = 0, .max = 65535, .help = "port (0 picks a free one)",
     .short_name = 'p'},
    /* TEI's names (text-embeddings-router), so that its command lines work */
    S_STR("hostname", NULL, host, NULL, "same as --host (TEI's name)"),
    OPT_STR(serve_cli, "revision", "EMBEDD_REVISION", revision, NULL,
            "Hub revision (branch, tag or commit) of --model-id; same as ORG/NAME@REV"),
    OPT_ONE_OF(serve_cli, "pooling", "EMBEDD_POOLING", srv.pooling, NULL, poolings,
               "pooling instead of the model's 1_Pooling (default: the model's)"),
    S_STR("default-prompt-name", "EMBEDD_DEFAULT_PROMPT_NAME", default_prompt_name, NULL,
          "prompt of config_sentence_transformers.json put before inputs without prompt_name "
          "(default: its default_prompt_name)"),
    S_STR("cors-allow-origin", "EMBEDD_CORS_ALLOW_ORIGIN", cors_allow_origin, NULL,
          "origins a browser page may call the API from: a comma list, or * for any "
          "(default: none, no CORS headers)"),
    S_STR("api-key", "EMBEDD_API_KEY", api_key, NULL,
          "require 'Authorization: Bearer KEY' (Qdrant routes also take 'api-key: KEY'; "
          "not on /health, /metrics, /, /docs and /openapi.json)"),
    S_INT("max-batch-tokens", "EMBEDD_MAX_BATCH_TOKENS", max_batch_tokens, "16384", 1, 1 << 22,
          "token budget of one forward pass"),
    S_INT("max-client-batch-size", "EMBEDD_MAX_CLIENT_BATCH_SIZE", max_client_batch_size,
          "2048", 1, 1 << 20, "most inputs in one request"),
    S_INT("max-concurrent-requests", "EMBEDD_MAX_CONCURRENT_REQUESTS", max_concurrent_requests,
          "512", 1, 1 << 20, "requests in flight before new ones get 429"),
    S_INT("payload-limit", "EMBEDD_PAYLOAD_LIMIT", payload_limit, "2000000", 1, 1 << 30,
          "largest request body in bytes (413 above)"),
    S_INT("max-response-bytes", "EMBEDD_MAX_RESPONSE_BYTES", max_response_bytes, "33554432",
          4096, 1 << 30,
          "largest response body, checked before it is built (422 above: lower limit, "
          "with_vector or the number of inputs)"),
    S_BOOL("auto-truncate", "EMBEDD_AUTO_TRUNCATE", auto_truncate, "true",
           "truncate long inputs unless the request says otherwise"),
    S_INT("threads", "EMBEDD_THREADS", threads, "0", 0, 1024, "compute threads (0: all cores)"),
    OPT_ONE_OF(serve_cli, "precision", "EMBEDD_PRECISION", srv.precision, "fp32", precisions,
               "dense-layer arithmetic (int8: AVX-512 VNNI; approximate, see README)"),
    S_INT("http-threads", "EMBEDD_HTTP_THREADS", http_threads, "2", 1, 256,
          "HTTP threads that parse, tokenise and format"),
    S_INT("timeout", "EMBEDD_TIMEOUT", timeout, "30", 1, 3600,
          "seconds a connection may go without sending or receiving a byte"),
    S_INT("header-timeout", "EMBEDD_HEADER_TIMEOUT", header_timeout, "10", 1, 3600,
          "seconds, in total, for a request head to arrive (however slowly it trickles)"),
    S_INT("body-timeout", "EMBEDD_BODY_TIMEOUT", body_timeout, "60", 1, 86400,
          "seconds, in total, for a request body to arrive"),
    S_INT("send-timeout", "EMBEDD_SEND_TIMEOUT", send_timeout, "60", 1, 86400,
          "seconds, in total, for a client to read its response"),
    S_INT("keepalive-timeout", "EMBEDD_KEEPALIVE_TIMEOUT", keepalive_timeout, "15", 1, 3600,
          "seconds an idle keep-alive connection waits for its next request"),
    S_INT("max-connections", "EMBEDD_MAX_CONNECTIONS", max_connections, "2048", 16, 1 << 20,
          "open connections in total (the file-descriptor limit is raised to fit)"),
    S_INT("max-connections-per-ip", "EMBEDD_MAX_CONNECTIONS_PER_IP", max_connections_per_ip,
          "128", 0, 1 << 20, "open connections from one client address (0: no limit)"),
    S_NUM("max-response-memory", "EMBEDD_MAX_RESPONSE_MEMORY", max_response_memory,
          "1073741824", 0, 1e15,
          "bytes of responses waiting to be sent; a response beyond it gets 503 (0: no limit)"),
    S_STR("data", "EMBEDD_DATA", data_dir, NULL,
          "directory of the persistent item store (default: items live in memory)"),
    S_STR("store", "EMBEDD_STORE", store_url, "local",
          "where items live: local (--data, or memory), or postgres://USER@HOST:PORT/DB, "
          "shared by replicas (docs/scaling.md)"),
    S_STR("replica-name", "EMBEDD_REPLICA_NAME", replica_name, NULL,
          "with --store postgres: this replica's name in /info and X-Embedd-Replica "
          "(default: host:port)"),
    S_INT("snapshot-wal-bytes", "EMBEDD_SNAPSHOT_WAL_BYTES", snapshot_wal_bytes, "67108864", 0,
          1 << 30,
          "snapshot the item store and truncate its log when the log passes this size (0: never)"),
    S_INT("hnsw-threshold", "EMBEDD_HNSW_THRESHOLD", hnsw_threshold, "100000", 0, 1 << 30,
          "items at which the store builds an HNSW index in the background (0: never)"),
    S_INT("hnsw-m", "EMBEDD_HNSW_M", hnsw_m, "16", 2, 128,
          "HNSW links per node (more: better recall, more memory, slower build)"),
    S_INT("hnsw-ef-construction", "EMBEDD_HNSW_EF_CONSTRUCTION", hnsw_ef_construction, "200",
          10, 2000, "HNSW build width (more: better graph, slower build)"),
    S_INT("hnsw-ef", "EMBEDD_HNSW_EF", hnsw_ef, "64", 1, 10000,
          "default /similar search width (per request: \"params\": {\"hnsw_ef\": n})"),
    S_BOOL("train", "EMBEDD_TRAIN", train, "true",
           "learn continuously from the texts the server sees (off: no training at all)"),
    OPT_ONE_OF(serve_cli, "train-objective", "EMBEDD_TRAIN_OBJECTIVE", srv.train_objective,
               "simcse", objectives, "what training learns"),
    S_INT("train-batch-size", "EMBEDD_TRAIN_BATCH_SIZE", train_batch_size, "16", 2, 4096,
          "texts per training step"),
    S_INT("train-max-seq-len", "EMBEDD_TRAIN_MAX_SEQ_LEN", train_max_seq_len, "64", 4, 8192,
          "tokens per training text (capped by the model's)"),
    S_NUM("train-lr", "EMBEDD_TRAIN_LR", train_lr, "1e-5", 0, 10,
          "learning rate (AdamW, after 20 warm-up steps)"),
    S_NUM("train-l2sp", "EMBEDD_TRAIN_L2SP", train_l2sp, "0.01", 0, 1e6,
          "L2-SP pull toward the starting weights"),
    S_NUM("train-ema", "EMBEDD_TRAIN_EMA", train_ema, "0.99", 0, 0.999999,
          "decay of the moving average that candidate versions are made of"),
    S_INT("train-max-cpu", "EMBEDD_TRAIN_MAX_CPU", train_max_cpu, "50", 1, 100,
          "percent of wall time training may use (inference always goes first)"),
    {.flag = "publish-every", .env = "EMBEDD_PUBLISH_EVERY", .type = OPT_PERIOD,
     .offset = offsetof(serve_cli, publish_every), .def = "200", .min = 1, .max = 1e9, .help =
     "training steps (N) or seconds (Ns) between publish attempts"},
    OPT_ONE_OF(serve_cli, "publish", "EMBEDD_PUBLISH", srv.publish_mode, "manual", publish_modes,
               "a candidate that passes the gate waits for POST /train/promote (manual) or "
               "is served at once (auto)"),
    S_INT("keep-versions", "EMBEDD_KEEP_VERSIONS", keep_versions, "3", 1, 1000,
          "model versions that stay servable (pinned by clients; the current one included); "
          "older ones are retired and deleted from DATA/models"),
    S_INT("train-min-samples", "EMBEDD_TRAIN_MIN_SAMPLES", train_min_samples, "64", 2, 1 << 30,
          "texts in the buffer before training starts"),
    S_STR("eval-sts", "EMBEDD_EVAL_STS", eval_sts, NULL,
          "score<TAB>s1<TAB>s2 file: the publish gate also checks STS Spearman"),
    S_NUM("gate-tolerance", "EMBEDD_GATE_TOLERANCE", gate_tolerance, "0.5", 0, 100,
          "largest drop of STS Spearman x100 a published version may have"),
    S_BOOL("gate-lexical", "EMBEDD_GATE_LEXICAL", gate_lex, "true",
           "the publish gate checks agreement with a TF-IDF baseline on held-out pairs"),
    S_NUM("gate-lexical-tolerance", "EMBEDD_GATE_LEXICAL_TOLERANCE", gate_lex_tolerance, "0.5",
          0, 100, "largest drop of that agreement (Spearman x100) a published version may have"),
    S_NUM("gate-lexical-gain", "EMBEDD_GATE_LEXICAL_GAIN", gate_lex_gain, "0.5", 0, 100,
          "rise of that agreement a whitening refit needs to be published"),
    S_BOOL("train-whiten", "EMBEDD_TRAIN_WHITEN", train_whiten, "true",
           "refit a whitening module on the buffered texts (a candidate the gate checks)"),
    S_NUM("train-whiten-shrink", "EMBEDD_TRAIN_WHITEN_SHRINK", train_whiten_shrink, "0.1", 0,
          0.99, "eigenvalue shrinkage of the whitening refit, in [0, 1)"),
    S_INT("train-whiten-min-texts", "EMBEDD_TRAIN_WHITEN_MIN_TEXTS", train_whiten_min_texts,
          "1000", 2, 1 << 30, "training texts before the first refit (then: each doubling)"),
    S_INT("train-whiten-max-texts", "EMBEDD_TRAIN_WHITEN_MAX_TEXTS", train_whiten_max_texts,
          "8192", 2, 1 << 24, "texts one refit embeds"),
    S_BOOL("train-from-embed", "EMBEDD_TRAIN_FROM_EMBED", train_from_embed, "true",
           "learn from /embed and /v1/embeddings inputs"),
    S_BOOL("train-from-items", "EMBEDD_TRAIN_FROM_ITEMS", train_from_items, "true",
           "learn from /items texts"),
    S_BOOL("train-from-samples", "EMBEDD_TRAIN_FROM_SAMPLES", train_from_explicit, "true",
           "learn from POST /train/samples"),
    S_BOOL("train-paused", "EMBEDD_TRAIN_PAUSED", train_paused, "false",
           "start with training paused (POST /train/resume starts it)"),
    S_INT("train-seed", "EMBEDD_TRAIN_SEED", train_seed, "42", 0, 1 << 30,
          "random seed of training"),
    S_INT("train-max-epochs", "EMBEDD_TRAIN_MAX_EPOCHS", train_max_epochs, "4", 0, 1 << 20,
          "times, on average, each buffered text is trained on; then training rests until "
          "new texts come (0: no limit)"),
    S_NUM("train-min-share", "EMBEDD_TRAIN_MIN_SHARE", train_min_share, "0.1", 0, 1,
          "least share of the compute time background work (training, gate, re-embedding) gets "
          "under steady load (0: only when no request waits)"),
    S_BOOL("train-persist-samples", "EMBEDD_TRAIN_PERSIST_SAMPLES", train_persist_samples,
           "true", "keep training texts in DATA/samples.log, mode 0600 (false: in memory only)"),
    /* the log (common/log.h, docs/logs.md) */
    OPT_ONE_OF(serve_cli, "log-level", "EMBEDD_LOG_LEVEL", log_level, "info", log_levels,
               "least severe lines written to stderr (info: one access line per request; "
               "debug: also /health and /metrics)"),
    OPT_ONE_OF(serve_cli, "log-format", "EMBEDD_LOG_FORMAT", log_format, "text", log_formats,
               "how lines look (docs/logs.md): 'TIME LEVEL MESSAGE key=value ...' (text) or "
               "one JSON object per line (json)"),
    /* fixed settings of the publish gate (learner.h): no flag */
    S_INT(NULL, NULL, holdout_eval_max, "256", 1, 1 << 20, "held-out texts the gate embeds"),
    S_NUM(NULL, NULL, collapse_max_cos, "0.98", 0, 1,
          "collapse alarm above this mean pairwise cosine ..."),
    S_NUM(NULL, NULL, collapse_cos_rise, "0.1", 0, 2,
          "... when it also rose this much over the current version's"),
    S_NUM(NULL, NULL, collapse_min_var, "0.5", 0, 1,
          "collapse alarm below this share of the current version's variance"),
};

/* --model-id may name a local directory, as TEI's does: then it is
 * --model. --revision REV makes a Hub id ORG/NAME@REV. 0, or -1 after a
 * usage error. */
static int resolve_model_id(serve_cli *cli, char *buf, size_t cap)
{
    struct stat st;
    const char *id = cli->model_id;
    int have_rev = cli->revision != NULL && cli->revision[0] != '\0';
    if (id != NULL && id[0] != '\0' && stat(id, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (cli->srv.model_dir != NULL && cli->srv.model_dir[0] != '\0') {
            fprintf(stderr, "embedd serve: give --model or --model-id, not both\n");
            return -1;
        }
        if (have_rev) {
            fprintf(stderr, "embedd serve: --revision applies to a Hub id, and '%s' is a "
                    "local directory\n", id);
            return -1;
        }
        cli->srv.model_dir = id;
        cli->model_id = NULL;
        return 0;
    }
    if (!have_rev)
        return 0;
    if (id == NULL || id[0] == '\0') {
        fprintf(stderr, "embedd serve: --revision needs --model-id ORG/NAME\n");
        return -1;
    }
    const char *at = strchr(id, '@');
    if (at != NULL && strcmp(at + 1, cli->revision) != 0) {
        fprintf(stderr, "embedd serve: --model-id '%s' and --revision '%s' name different "
                "revisions\n", id, cli->revision);
        return -1;
    }
    if (at == NULL) {
        snprintf(buf, cap, "%s@%s", id, cli->revision);
        cli->model_id = buf;
    }
    return 0;
}

int cli_serve(int argc, char **argv)
{
    serve_cli cli = {0};
    cli.srv.pooling = -1; /* the model's unless --pooling */
    server_opts opts;
    const int n = (int)(sizeof serve_specs / sizeof serve_specs[0]);
    int rc = options_parse(serve_specs, n, &cli, argc, argv,
                           "usage: embedd serve [--model DIR | --model-id ORG/NAME[@REV]] "
                           "[options]");
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    log_setup((log_level)cli.log_level, (log_format)cli.log_format);
    const char *st = cli.srv.store_url;
    if (st == NULL || (strcmp(st, "local") != 0 && !cluster_url_is_postgres(st))) {
        fprintf(stderr, "embedd serve: --store must be local or a postgres:// URL, not '%s'\n",
                st != NULL ? st : "");
        return 2;
    }
    char model_dir[PATH_MAX], served_name[256], with_rev[512];
    if (resolve_model_id(&cli, with_rev, sizeof with_rev) != 0)
        return 2;
    rc = cli_model_dir(cli.srv.model_dir, cli.model_id, model_dir, sizeof model_dir, "serve");
    if (rc != 0)
        return rc;
    opts = cli.srv;
    opts.model_dir = model_dir;
    opts.publish_every_steps = cli.publish_every.steps;
    opts.publish_every_secs = cli.publish_every.secs;
    if (cli.model_id != NULL && cli.model_id[0] != '\0' &&
        (opts.served_model_name == NULL || opts.served_model_name[0] == '\0')) {
        /* the snapshot directory is named by a commit: name it ORG/NAME */
        snprintf(served_name, sizeof served_name, "%.*s", (int)strcspn(cli.model_id, "@"),
                 cli.model_id);
        opts.served_model_name = served_name;
    }
    if (opts.data_dir != NULL && opts.data_dir[0] == '\0')
        opts.data_dir = NULL; /* EMBEDD_DATA= means memory only */
    return serve_run(&opts);
}
