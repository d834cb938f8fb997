/* conntrack.c: see conntrack.h. */
#include "conntrack.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "common/clock.h"

struct conn_entry {
    int fd;
    conn_phase phase;
    double since;              /* mono_seconds() when the phase began */
    int cut;                   /* shut down already: count it once */
    conn_entry *prev, *next;
};

struct conntrack {
    pthread_mutex_t lock;
    pthread_cond_t wake;       /* signalled at stop */
    conntrack_limits limits;
    conn_entry *head;
    long open;
    uint64_t cut[CONN_N_PHASES];
    int stopping;
    pthread_t sweeper;
    conntrack_on_cut on_cut;
    void *on_cut_ctx;
};

static const char *const phase_names[CONN_N_PHASES] = {"head",    "body", "handling",
                                                       "sending", "idle", "stream"};

const char *conntrack_phase_name(conn_phase p)
{
    return p >= 0 && p < CONN_N_PHASES ? phase_names[p] : "unknown";
}

/* Shuts down every overdue connection. Caller holds the lock. */
static void sweep(conntrack *ct, double now)
{
    for (conn_entry *e = ct->head; e != NULL; e = e->next) {
        double limit = ct->limits.seconds[e->phase];
        if (e->cut || limit <= 0 || now - e->since < limit)
            continue;
        /* Both directions: a reader blocked on us and a writer the
         * client does not drain both fail at once in libmicrohttpd. No
         * lingering: the close that follows resets the connection, so a
         * response the client never read does not stay in kernel buffers
         * (behind it, a FIN would never reach a client that does not read). */
        struct linger abort_close = {.l_onoff = 1, .l_linger = 0};
        setsockopt(e->fd, SOL_SOCKET, SO_LINGER, &abort_close, sizeof abort_close);
        shutdown(e->fd, SHUT_RDWR);
        e->cut = 1;
        ct->cut[e->phase]++;
        if (ct->on_cut != NULL)
            ct->on_cut(ct->on_cut_ctx, e->phase);
    }
}

static void *sweeper_main(void *arg)
{
    conntrack *ct = arg;
    pthread_mutex_lock(&ct->lock);
    while (!ct->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)CONNTRACK_TICK_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000L;
        }
        int rc = pthread_cond_timedwait(&ct->wake, &ct->lock, &until);
        if (ct->stopping)
            break;
        if (rc == ETIMEDOUT)
            sweep(ct, mono_seconds());
    }
    pthread_mutex_unlock(&ct->lock);
    return NULL;
}

conntrack *conntrack_new(const conntrack_limits *limits, conntrack_on_cut on_cut, void *ctx)
{
    conntrack *ct = calloc(1, sizeof *ct);
    if (ct == NULL)
        return NULL;
    pthread_mutex_init(&ct->lock, NULL);
    pthread_cond_init(&ct->wake, NULL);
    ct->limits = *limits;
    ct->on_cut = on_cut;
    ct->on_cut_ctx = ctx;
    if (pthread_create(&ct->sweeper, NULL, sweeper_main, ct) != 0) {
        pthread_cond_destroy(&ct->wake);
        pthread_mutex_destroy(&ct->lock);
        free(ct);
        return NULL;
    }
    return ct;
}

void conntrack_free(conntrack *ct)
{
    if (ct == NULL)
        return;
    pthread_mutex_lock(&ct->lock);
    ct->stopping = 1;
    pthread_cond_signal(&ct->wake);
    pthread_mutex_unlock(&ct->lock);
    pthread_join(ct->sweeper, NULL);
    while (ct->head != NULL) {
        conn_entry *e = ct->head;
        ct->head = e->next;
        free(e);
    }
    pthread_cond_destroy(&ct->wake);
    pthread_mutex_destroy(&ct->lock);
    free(ct);
}

conn_entry *conntrack_add(conntrack *ct, int fd)
{
    conn_entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->fd = fd;
    e->phase = CONN_HEAD;
    e->since = mono_seconds();
    pthread_mutex_lock(&ct->lock);
    e->next = ct->head;
    if (ct->head != NULL)
        ct->head->prev = e;
    ct->head = e;
    ct->open++;
    pthread_mutex_unlock(&ct->lock);
    return e;
}

void conntrack_remove(conntrack *ct, conn_entry *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&ct->lock);
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        ct->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    ct->open--;
    pthread_mutex_unlock(&ct->lock);
    free(e);
}

int conntrack_set(conntrack *ct, conn_entry *e, conn_phase p)
{
    if (e == NULL)
        return 0;
    double now = mono_seconds();
    pthread_mutex_lock(&ct->lock);
    e->phase = p;
    e->since = now;
    int cut = e->cut;
    pthread_mutex_unlock(&ct->lock);
    return cut;
}

void conntrack_get_stats(conntrack *ct, conntrack_stats *out)
{
    pthread_mutex_lock(&ct->lock);
    out->open = ct->open;
    for (int i = 0; i < CONN_N_PHASES; i++)
        out->cut[i] = ct->cut[i];
    pthread_mutex_unlock(&ct->lock);
}
