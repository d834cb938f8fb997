/* cli_serve.c: `embedd serve`: flags (each with an EMBEDD_* variable) and
 * the start of the HTTP server. */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "options.h"
#include "http/server.h"

/* The server's options plus those that only decide where the model comes
 * from. */
typedef struct serve_cli {
    server_opts srv;
    const char *model_id;
} serve_cli;

#define OPT(flag, env, type, field, def, min, max, help) \
    {flag, env, type, offsetof(serve_cli, srv.field), def, min, max, help}

static const opt_spec serve_specs[] = {
    OPT("model", "EMBEDD_MODEL", OPT_STRING, model_dir, NULL, 0, 0,
        "Hugging Face model directory (default: the bundled model)"),
    {"model-id", "EMBEDD_MODEL_ID", OPT_STRING, offsetof(serve_cli, model_id), NULL, 0, 0,
     "download ORG/NAME[@REVISION] from the Hugging Face Hub into its cache (HF_ENDPOINT, "
     "HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE)"},
    OPT("served-model-name", "EMBEDD_SERVED_MODEL_NAME", OPT_STRING, served_model_name, NULL, 0,
        0, "model name in /info and OpenAI responses (default: the directory's name, or "
        "ORG/NAME with --model-id)"),
    OPT("host", "EMBEDD_HOST", OPT_STRING, host, "127.0.0.1", 0, 0, "address to listen on"),
    OPT("port", "EMBEDD_PORT", OPT_INT, port, "8080", 0, 65535, "port (0 picks a free one)"),
    OPT("api-key", "EMBEDD_API_KEY", OPT_STRING, api_key, NULL, 0, 0,
        "require 'Authorization: Bearer KEY' (not on /health and /metrics)"),
    OPT("max-batch-tokens", "EMBEDD_MAX_BATCH_TOKENS", OPT_INT, max_batch_tokens, "16384", 1,
        1 << 22, "token budget of one forward pass"),
    OPT("max-client-batch-size", "EMBEDD_MAX_CLIENT_BATCH_SIZE", OPT_INT, max_client_batch_size,
        "2048", 1, 1 << 20, "most inputs in one request"),
    OPT("max-concurrent-requests", "EMBEDD_MAX_CONCURRENT_REQUESTS", OPT_INT,
        max_concurrent_requests, "512", 1, 1 << 20,
        "requests in flight before new ones get 429"),
    OPT("payload-limit", "EMBEDD_PAYLOAD_LIMIT", OPT_INT, payload_limit, "2000000", 1,
        1 << 30, "largest request body in bytes (413 above)"),
    OPT("auto-truncate", "EMBEDD_AUTO_TRUNCATE", OPT_BOOL, auto_truncate, "true", 0, 1,
        "truncate long inputs unless the request says otherwise"),
    OPT("threads", "EMBEDD_THREADS", OPT_INT, threads, "0", 0, 1024,
        "compute threads (0: all cores)"),
    OPT("precision", "EMBEDD_PRECISION", OPT_STRING, precision, "fp32", 0, 0,
        "dense-layer arithmetic: fp32, or int8 (AVX-512 VNNI; approximate, see README)"),
    OPT("http-threads", "EMBEDD_HTTP_THREADS", OPT_INT, http_threads, "2", 1, 256,
        "HTTP threads that parse, tokenise and format"),
    OPT("timeout", "EMBEDD_TIMEOUT", OPT_INT, timeout, "30", 1, 3600,
        "seconds an idle or slow connection is kept"),
    OPT("data", "EMBEDD_DATA", OPT_STRING, data_dir, NULL, 0, 0,
        "directory of the persistent item store (default: items live in memory)"),
    OPT("snapshot-wal-bytes", "EMBEDD_SNAPSHOT_WAL_BYTES", OPT_INT, snapshot_wal_bytes,
        "67108864", 0, 1 << 30,
        "snapshot the item store and truncate its log when the log passes this size (0: never)"),
    OPT("hnsw-threshold", "EMBEDD_HNSW_THRESHOLD", OPT_INT, hnsw_threshold, "100000", 0,
        1 << 30, "items at which the store builds an HNSW index in the background (0: never)"),
    OPT("hnsw-m", "EMBEDD_HNSW_M", OPT_INT, hnsw_m, "16", 2, 128,
        "HNSW links per node (more: better recall, more memory, slower build)"),
    OPT("hnsw-ef-construction", "EMBEDD_HNSW_EF_CONSTRUCTION", OPT_INT, hnsw_ef_construction,
        "200", 10, 2000, "HNSW build width (more: better graph, slower build)"),
    OPT("hnsw-ef", "EMBEDD_HNSW_EF", OPT_INT, hnsw_ef, "64", 1, 10000,
        "default /similar search width (per request: \"params\": {\"hnsw_ef\": n})"),
    OPT("train", "EMBEDD_TRAIN", OPT_BOOL, train, "true", 0, 1,
        "learn continuously from the texts the server sees (off: no training at all)"),
    OPT("train-objective", "EMBEDD_TRAIN_OBJECTIVE", OPT_STRING, train_objective, "simcse", 0, 0,
        "simcse, mlm or both"),
    OPT("train-batch-size", "EMBEDD_TRAIN_BATCH_SIZE", OPT_INT, train_batch_size, "16", 2, 4096,
        "texts per training step"),
    OPT("train-max-seq-len", "EMBEDD_TRAIN_MAX_SEQ_LEN", OPT_INT, train_max_seq_len, "64", 4,
        8192, "tokens per training text (capped by the model's)"),
    OPT("train-lr", "EMBEDD_TRAIN_LR", OPT_STRING, train_lr, "1e-5", 0, 0,
        "learning rate (AdamW, after 20 warm-up steps)"),
    OPT("train-l2sp", "EMBEDD_TRAIN_L2SP", OPT_STRING, train_l2sp, "0.01", 0, 0,
        "L2-SP pull toward the starting weights"),
    OPT("train-ema", "EMBEDD_TRAIN_EMA", OPT_STRING, train_ema, "0.99", 0, 0,
        "decay of the moving average that candidate versions are made of"),
    OPT("train-max-cpu", "EMBEDD_TRAIN_MAX_CPU", OPT_INT, train_max_cpu, "50", 1, 100,
        "percent of wall time training may use (inference always goes first)"),
    OPT("publish-every", "EMBEDD_PUBLISH_EVERY", OPT_STRING, publish_every, "200", 0, 0,
        "training steps (N) or seconds (Ns) between publish attempts"),
    OPT("train-min-samples", "EMBEDD_TRAIN_MIN_SAMPLES", OPT_INT, train_min_samples, "64", 2,
        1 << 30, "texts in the buffer before training starts"),
    OPT("eval-sts", "EMBEDD_EVAL_STS", OPT_STRING, eval_sts, NULL, 0, 0,
        "score<TAB>s1<TAB>s2 file: the publish gate also checks STS Spearman"),
    OPT("gate-tolerance", "EMBEDD_GATE_TOLERANCE", OPT_STRING, gate_tolerance, "0.5", 0, 0,
        "largest drop of STS Spearman x100 a published version may have"),
    OPT("train-from-embed", "EMBEDD_TRAIN_FROM_EMBED", OPT_BOOL, train_from_embed, "true", 0, 1,
        "learn from /embed and /v1/embeddings inputs"),
    OPT("train-from-items", "EMBEDD_TRAIN_FROM_ITEMS", OPT_BOOL, train_from_items, "true", 0, 1,
        "learn from /items texts"),
    OPT("train-from-samples", "EMBEDD_TRAIN_FROM_SAMPLES", OPT_BOOL, train_from_explicit, "true",
        0, 1, "learn from POST /train/samples"),
    OPT("train-paused", "EMBEDD_TRAIN_PAUSED", OPT_BOOL, train_paused, "false", 0, 1,
        "start with training paused (POST /train/resume starts it)"),
    OPT("train-seed", "EMBEDD_TRAIN_SEED", OPT_INT, train_seed, "42", 0, 1 << 30,
        "random seed of training"),
};

int cli_serve(int argc, char **argv)
{
    serve_cli cli = {0};
    server_opts opts;
    const int n = (int)(sizeof serve_specs / sizeof serve_specs[0]);
    int rc = options_parse(serve_specs, n, &cli, argc, argv,
                           "usage: embedd serve [--model DIR | --model-id ORG/NAME[@REV]] "
                           "[options]");
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    char model_dir[PATH_MAX], served_name[256];
    rc = cli_model_dir(cli.srv.model_dir, cli.model_id, model_dir, sizeof model_dir, "serve");
    if (rc != 0)
        return rc;
    opts = cli.srv;
    opts.model_dir = model_dir;
    if (cli.model_id != NULL && cli.model_id[0] != '\0' &&
        (opts.served_model_name == NULL || opts.served_model_name[0] == '\0')) {
        /* the snapshot directory is named by a commit: name it ORG/NAME */
        snprintf(served_name, sizeof served_name, "%.*s", (int)strcspn(cli.model_id, "@"),
                 cli.model_id);
        opts.served_model_name = served_name;
    }
    if (opts.data_dir != NULL && opts.data_dir[0] == '\0')
        opts.data_dir = NULL; /* EMBEDD_DATA= means memory only */
    return server_run(&opts);
}
