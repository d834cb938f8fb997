#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 20
#define MAX_REQUEST_SERIES 128
#define MAX_IO_SERIES 16

typedef struct histogram {
    const char *name;
    const char *help;
    int n_bounds;
    double bounds[MAX_BUCKETS];
    unsigned long counts[MAX_BUCKETS + 1]; /* last: +Inf */
    double sum;
    unsigned long count;
} histogram;

typedef struct io_series {
    char file[16];
    char op[16];
    unsigned long total;
} io_series;

typedef struct request_series {
    char route[32];
    int status;
    unsigned long count;
} request_series;

struct metrics {
    pthread_mutex_t lock;
    request_series requests[MAX_REQUEST_SERIES];
    int n_requests;
    histogram request_duration, queue_duration, inference_duration, batch_size, batch_tokens;
    int queue_depth;
    unsigned long texts;
    unsigned long tokens;
    unsigned long batches;
    /* training */
    unsigned long train_steps, train_skipped, train_tokens, published, rejected;
    double train_loss;
    unsigned model_version;
    unsigned long buffer;
    long reembed_done, reembed_total;
    int paused;
    /* the item store's health */
    io_series io[MAX_IO_SERIES];
    int n_io;
    int store_degraded;
    unsigned long writes_refused;
    long collections;          /* Qdrant collections, "default" included */
    int replication;           /* metrics_replication was called: the series below exist */
    int pg_up, trainer_leader;
    unsigned long long applied_seq, head_seq;
    double lag_seconds;
    long collection_points;    /* points in all of them */
    /* HTTP connections cut for overstaying a phase (http/conntrack.h) */
    struct {
        char phase[16];
        unsigned long count;
    } cuts[8];
    int n_cuts;
};

static const double time_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double size_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
static const double token_bounds[] = {16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};

static void histogram_init(histogram *h, const char *name, const char *help,
                           const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    h->name = name;
    h->help = help;
    h->n_bounds = n;
    memcpy(h->bounds, bounds, sizeof(double) * (size_t)n);
}

static void histogram_observe(histogram *h, double v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

metrics *metrics_new(void)
{
    metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    histogram_init(&m->request_duration, "embedd_request_duration_seconds",
                   "Time from a request's arrival to its response", time_bounds,
                   COUNT(time_bounds));
    histogram_init(&m->queue_duration, "embedd_queue_duration_seconds",
                   "Time a job waited for its first forward pass", time_bounds,
                   COUNT(time_bounds));
    histogram_init(&m->inference_duration, "embedd_inference_duration_seconds",
                   "Time of one forward pass", time_bounds, COUNT(time_bounds));
    histogram_init(&m->batch_size, "embedd_batch_size", "Sequences in one forward pass",
                   size_bounds, COUNT(size_bounds));
    histogram_init(&m->batch_tokens, "embedd_batch_tokens", "Tokens in one forward pass",
                   token_bounds, COUNT(token_bounds));
    return m;
}

void metrics_free(metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void metrics_request(metrics *m, const char *route, int status, double total_seconds)
{
    pthread_mutex_lock(&m->lock);
    histogram_observe(&m->request_duration, total_seconds);
    int i = 0;
    while (i < m->n_requests &&
           (m->requests[i].status != status || strcmp(m->requests[i].route, route) != 0))
        i++;
    if (i == m->n_requests && m->n_requests < MAX_REQUEST_SERIES) {
        snprintf(m->requests[i].route, sizeof m->requests[i].route, "%s", route);
        m->requests[i].status = status;
        m->n_requests++;
    }
    if (i < m->n_requests)
        m->requests[i].count++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_queue_time(metrics *m, double seconds)
{
    pthread_mutex_lock(&m->lock);
    histogram_observe(&m->queue_duration, seconds);
    pthread_mutex_unlock(&m->lock);
}

void metrics_batch(metrics *m, int n_seqs, int n_tokens, double seconds)
{
    pthread_mutex_lock(&m->lock);
    histogram_observe(&m->inference_duration, seconds);
    histogram_observe(&m->batch_size, n_seqs);
    histogram_observe(&m->batch_tokens, n_tokens);
    m->batches++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_queue_depth(metrics *m, int depth)
{
    pthread_mutex_lock(&m->lock);
    m->queue_depth = depth;
    pthread_mutex_unlock(&m->lock);
}

void metrics_embedded(metrics *m, int texts, long tokens)
{
    pthread_mutex_lock(&m->lock);
    m->texts += (unsigned long)texts;
    m->tokens += (unsigned long)tokens;
    pthread_mutex_unlock(&m->lock);
}

/* A growable output buffer with a hard cap. */
typedef struct out {
    char *buf;
    size_t len, cap;
    int failed;
} out;

__attribute__((format(printf, 2, 3))) static void emit(out *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t want = o->cap * 2;
        if (want > (4u << 20)) {
            o->failed = 1;
            return;
        }
        char *p = realloc(o->buf, want);
        if (p == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = p;
        o->cap = want;
    }
}

static void render_histogram(out *o, const histogram *h)
{
    emit(o, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    unsigned long cumulative = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cumulative += h->counts[i];
        emit(o, "%s_bucket{le=\"%g\"} %lu\n", h->name, h->bounds[i], cumulative);
    }
    cumulative += h->counts[h->n_bounds];
    emit(o, "%s_bucket{le=\"+Inf\"} %lu\n", h->name, cumulative);
    emit(o, "%s_sum %.9g\n%s_count %lu\n", h->name, h->sum, h->name, h->count);
}

void metrics_train_step(metrics *m, int skipped, double loss, long tokens)
{
    pthread_mutex_lock(&m->lock);
    if (skipped) {
        m->train_skipped++;
    } else {
        m->train_steps++;
        m->train_loss = loss;
        m->train_tokens += (unsigned long)tokens;
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_train_publish(metrics *m, int passed)
{
    pthread_mutex_lock(&m->lock);
    if (passed)
        m->published++;
    else
        m->rejected++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_train_gauges(metrics *m, unsigned version, unsigned long buffer, long reembed_done,
                          long reembed_total, int paused)
{
    pthread_mutex_lock(&m->lock);
    m->model_version = version;
    m->buffer = buffer;
    m->reembed_done = reembed_done;
    m->reembed_total = reembed_total;
    m->paused = paused;
    pthread_mutex_unlock(&m->lock);
}

void metrics_io_errors(metrics *m, const char *file, const char *op, unsigned long total)
{
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (i < m->n_io && (strcmp(m->io[i].file, file) != 0 || strcmp(m->io[i].op, op) != 0))
        i++;
    if (i == m->n_io && m->n_io < MAX_IO_SERIES) {
        snprintf(m->io[i].file, sizeof m->io[i].file, "%s", file);
        snprintf(m->io[i].op, sizeof m->io[i].op, "%s", op);
        m->n_io++;
    }
    if (i < m->n_io)
        m->io[i].total = total;
    pthread_mutex_unlock(&m->lock);
}

void metrics_store_state(metrics *m, int degraded, unsigned long writes_refused)
{
    pthread_mutex_lock(&m->lock);
    m->store_degraded = degraded;
    m->writes_refused = writes_refused;
    pthread_mutex_unlock(&m->lock);
}

void metrics_collections(metrics *m, long collections, long points)
{
    pthread_mutex_lock(&m->lock);
    m->collections = collections;
    m->collection_points = points;
    pthread_mutex_unlock(&m->lock);
}

void metrics_replication(metrics *m, int up, int leader, unsigned long long applied_seq,
                         unsigned long long head_seq, double lag_seconds)
{
    pthread_mutex_lock(&m->lock);
    m->replication = 1;
    m->pg_up = up;
    m->trainer_leader = leader;
    m->applied_seq = applied_seq;
    m->head_seq = head_seq;
    m->lag_seconds = lag_seconds;
    pthread_mutex_unlock(&m->lock);
}

static void render_replication(out *o, const metrics *m)
{
    if (!m->replication)
        return;
    emit(o, "# HELP embedd_postgres_up 1 while the follower's PostgreSQL connection works\n"
            "# TYPE embedd_postgres_up gauge\nembedd_postgres_up %d\n", m->pg_up);
    emit(o, "# HELP embedd_trainer_leader 1 while this replica holds the trainer's lock\n"
            "# TYPE embedd_trainer_leader gauge\nembedd_trainer_leader %d\n",
         m->trainer_leader);
    emit(o, "# HELP embedd_replication_applied_seq Newest change applied to the local copy\n"
            "# TYPE embedd_replication_applied_seq gauge\nembedd_replication_applied_seq %llu\n",
         m->applied_seq);
    emit(o, "# HELP embedd_replication_head_seq Newest change seen in PostgreSQL\n"
            "# TYPE embedd_replication_head_seq gauge\nembedd_replication_head_seq %llu\n",
         m->head_seq);
    emit(o, "# HELP embedd_replication_lag_changes Changes in PostgreSQL not yet applied here\n"
            "# TYPE embedd_replication_lag_changes gauge\nembedd_replication_lag_changes %llu\n",
         m->head_seq > m->applied_seq ? m->head_seq - m->applied_seq : 0);
    emit(o, "# HELP embedd_replication_lag_seconds Seconds since the local copy was last "
            "caught up (0: it is)\n# TYPE embedd_replication_lag_seconds gauge\n"
            "embedd_replication_lag_seconds %.3f\n", m->lag_seconds);
}

static void render_store(out *o, const metrics *m)
{
    render_replication(o, m);
    emit(o, "# HELP embedd_collections Qdrant collections, the default one (the item store) "
            "included\n# TYPE embedd_collections gauge\nembedd_collections %ld\n",
         m->collections);
    emit(o, "# HELP embedd_collection_points Points in all collections\n"
            "# TYPE embedd_collection_points gauge\nembedd_collection_points %ld\n",
         m->collection_points);
    emit(o, "# HELP embedd_io_errors_total I/O errors of the item store by file and operation\n"
            "# TYPE embedd_io_errors_total counter\n");
    for (int i = 0; i < m->n_io; i++)
        emit(o, "embedd_io_errors_total{file=\"%s\",op=\"%s\"} %lu\n", m->io[i].file,
             m->io[i].op, m->io[i].total);
    emit(o, "# HELP embedd_store_degraded 1 while the item store refuses writes after an I/O "
            "error\n# TYPE embedd_store_degraded gauge\nembedd_store_degraded %d\n",
         m->store_degraded);
    emit(o, "# HELP embedd_store_writes_refused_total Writes the degraded store refused\n"
            "# TYPE embedd_store_writes_refused_total counter\n"
            "embedd_store_writes_refused_total %lu\n", m->writes_refused);
}

void metrics_connection_cut(metrics *m, const char *phase)
{
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (i < m->n_cuts && strcmp(m->cuts[i].phase, phase) != 0)
        i++;
    if (i == m->n_cuts && i < (int)(sizeof m->cuts / sizeof m->cuts[0])) {
        snprintf(m->cuts[i].phase, sizeof m->cuts[i].phase, "%s", phase);
        m->n_cuts++;
    }
    if (i < m->n_cuts)
        m->cuts[i].count++;
    pthread_mutex_unlock(&m->lock);
}

static void render_training(out *o, const metrics *m)
{
    emit(o, "# HELP embedd_model_version Model version that new embeddings come from\n"
            "# TYPE embedd_model_version gauge\nembedd_model_version %u\n", m->model_version);
    emit(o, "# HELP embedd_train_steps_total Training steps applied\n"
            "# TYPE embedd_train_steps_total counter\nembedd_train_steps_total %lu\n",
         m->train_steps);
    emit(o, "# HELP embedd_train_skipped_steps_total Training steps skipped (non-finite)\n"
            "# TYPE embedd_train_skipped_steps_total counter\n"
            "embedd_train_skipped_steps_total %lu\n", m->train_skipped);
    emit(o, "# HELP embedd_train_tokens_total Tokens through the encoder in training\n"
            "# TYPE embedd_train_tokens_total counter\nembedd_train_tokens_total %lu\n",
         m->train_tokens);
    emit(o, "# HELP embedd_train_loss Loss of the last applied training step\n"
            "# TYPE embedd_train_loss gauge\nembedd_train_loss %.9g\n", m->train_loss);
    emit(o, "# HELP embedd_train_gate_total Publish gate verdicts\n"
            "# TYPE embedd_train_gate_total counter\n"
            "embedd_train_gate_total{result=\"passed\"} %lu\n"
            "embedd_train_gate_total{result=\"rejected\"} %lu\n", m->published, m->rejected);
    emit(o, "# HELP embedd_train_buffer_texts Texts in the training sample buffer\n"
            "# TYPE embedd_train_buffer_texts gauge\nembedd_train_buffer_texts %lu\n",
         m->buffer);
    emit(o, "# HELP embedd_train_paused 1 while training is paused or off\n"
            "# TYPE embedd_train_paused gauge\nembedd_train_paused %d\n", m->paused);
    emit(o, "# HELP embedd_reembed_items Stored items moved to the target model version\n"
            "# TYPE embedd_reembed_items gauge\nembedd_reembed_items{state=\"done\"} %ld\n"
            "embedd_reembed_items{state=\"total\"} %ld\n", m->reembed_done, m->reembed_total);
}

char *metrics_render(metrics *m)
{
    out o = {.buf = malloc(8192), .len = 0, .cap = 8192, .failed = 0};
    if (o.buf == NULL)
        return NULL;
    pthread_mutex_lock(&m->lock);
    emit(&o, "# HELP embedd_requests_total HTTP requests by route and status code\n"
             "# TYPE embedd_requests_total counter\n");
    for (int i = 0; i < m->n_requests; i++)
        emit(&o, "embedd_requests_total{route=\"%s\",code=\"%d\"} %lu\n", m->requests[i].route,
             m->requests[i].status, m->requests[i].count);
    render_histogram(&o, &m->request_duration);
    render_histogram(&o, &m->queue_duration);
    render_histogram(&o, &m->inference_duration);
    render_histogram(&o, &m->batch_size);
    render_histogram(&o, &m->batch_tokens);
    emit(&o, "# HELP embedd_queue_depth Sequences waiting for a forward pass\n"
             "# TYPE embedd_queue_depth gauge\nembedd_queue_depth %d\n",
         m->queue_depth);
    emit(&o, "# HELP embedd_batches_total Forward passes run\n"
             "# TYPE embedd_batches_total counter\nembedd_batches_total %lu\n",
         m->batches);
    emit(&o, "# HELP embedd_embedded_texts_total Texts embedded\n"
             "# TYPE embedd_embedded_texts_total counter\nembedd_embedded_texts_total %lu\n",
         m->texts);
    emit(&o, "# HELP embedd_embedded_tokens_total Tokens embedded\n"
             "# TYPE embedd_embedded_tokens_total counter\nembedd_embedded_tokens_total %lu\n",
         m->tokens);
    render_training(&o, m);
    render_store(&o, m);
    emit(&o, "# HELP embedd_http_connections_cut_total Connections closed for overstaying a "
             "phase's total deadline\n# TYPE embedd_http_connections_cut_total counter\n");
    for (int i = 0; i < m->n_cuts; i++)
        emit(&o, "embedd_http_connections_cut_total{phase=\"%s\"} %lu\n", m->cuts[i].phase,
             m->cuts[i].count);
    pthread_mutex_unlock(&m->lock);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}
