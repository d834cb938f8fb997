/* cli_serve.c: `embedd serve`: flags (each with an EMBEDD_* variable) and
 * the start of the HTTP server. */
#include <stddef.h>
#include <stdio.h>

#include "cli.h"
#include "options.h"
#include "server.h"

#define OPT(flag, env, type, field, def, min, max, help) \
    {flag, env, type, offsetof(server_opts, field), def, min, max, help}

static const opt_spec serve_specs[] = {
    OPT("model", "EMBEDD_MODEL", OPT_STRING, model_dir, NULL, 0, 0,
        "Hugging Face model directory"),
    OPT("served-model-name", "EMBEDD_SERVED_MODEL_NAME", OPT_STRING, served_model_name, NULL, 0,
        0, "model name in /info and OpenAI responses (default: the directory's name)"),
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
    OPT("http-threads", "EMBEDD_HTTP_THREADS", OPT_INT, http_threads, "2", 1, 256,
        "HTTP threads that parse, tokenise and format"),
    OPT("timeout", "EMBEDD_TIMEOUT", OPT_INT, timeout, "30", 1, 3600,
        "seconds an idle or slow connection is kept"),
    OPT("data", "EMBEDD_DATA", OPT_STRING, data_dir, NULL, 0, 0,
        "directory of the persistent item store (default: items live in memory)"),
    OPT("snapshot-wal-bytes", "EMBEDD_SNAPSHOT_WAL_BYTES", OPT_INT, snapshot_wal_bytes,
        "67108864", 0, 1 << 30,
        "snapshot the item store and truncate its log when the log passes this size (0: never)"),
    OPT("hnsw-threshold", "EMBEDD_HNSW_THRESHOLD", OPT_INT, hnsw_threshold, "0", 0, 1 << 30,
        "items at which the store builds an HNSW index (0: never; experimental, see issue 4)"),
};

int cli_serve(int argc, char **argv)
{
    server_opts opts = {0};
    const int n = (int)(sizeof serve_specs / sizeof serve_specs[0]);
    int rc = options_parse(serve_specs, n, &opts, argc, argv,
                           "usage: embedd serve --model DIR [options]");
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (opts.model_dir == NULL) {
        fprintf(stderr, "embedd serve: --model DIR is required\n");
        return 2;
    }
    if (opts.data_dir != NULL && opts.data_dir[0] == '\0')
        opts.data_dir = NULL; /* EMBEDD_DATA= means memory only */
    return server_run(&opts);
}
