/* metrics.h: counters, gauges and histograms, rendered in the Prometheus
 * text exposition format (version 0.0.4) by GET /metrics.
 *
 * Any thread may record; one mutex guards everything (recording is a few
 * additions, far below the cost of the requests being counted). */
#ifndef EMBEDD_METRICS_H
#define EMBEDD_METRICS_H

#include <stddef.h>

typedef struct metrics metrics;

metrics *metrics_new(void);
void metrics_free(metrics *m);

/* One finished HTTP request: its route name ("embed", "openai_embeddings",
 * ..., or "unknown") and status code. */
void metrics_request(metrics *m, const char *route, int status, double total_seconds);
/* One job's wait from submission to the start of its first forward pass. */
void metrics_queue_time(metrics *m, double seconds);
/* One forward pass. */
void metrics_batch(metrics *m, int n_seqs, int n_tokens, double seconds);
/* Current queue depth (sequences waiting). */
void metrics_queue_depth(metrics *m, int depth);
/* Texts and tokens embedded. */
void metrics_embedded(metrics *m, int texts, long tokens);

/* One training step (skipped: non-finite, not applied) of `tokens` tokens. */
void metrics_train_step(metrics *m, int skipped, double loss, long tokens);
/* One gate verdict: passed (a version published) or rejected. */
void metrics_train_publish(metrics *m, int passed);
/* Gauges set by the server: current model version, sample buffer size,
 * re-embedding progress (items done, total). */
void metrics_train_gauges(metrics *m, unsigned version, unsigned long buffer, long reembed_done,
                          long reembed_total, int paused);

/* The item store's health, copied from the store each second (serve.c):
 * the total of its I/O errors on file (e.g. "wal") in operation (e.g.
 * "write"), and whether it refuses writes with how many it refused. */
void metrics_io_errors(metrics *m, const char *file, const char *op, unsigned long total);
void metrics_store_state(metrics *m, int degraded, unsigned long writes_refused);
/* The Qdrant collections (store/collections.h) and their points, each second. */
void metrics_collections(metrics *m, long collections, long points);
/* Replicas (--store postgres): the follower's state, from cluster_get_stats
 * once a second; the series exist only once this was called. */
void metrics_replication(metrics *m, int up, int leader, unsigned long long applied_seq,
                         unsigned long long head_seq, double lag_seconds);

/* One HTTP connection cut by its deadline in phase ("head", "body", ...). */
void metrics_connection_cut(metrics *m, const char *phase);
/* Renders everything into a malloc'd NUL-terminated string (NULL when out
 * of memory). */
char *metrics_render(metrics *m);

#endif
