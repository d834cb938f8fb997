/* feed.c: see feed.h. */
#include "feed.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/strbuf.h"

typedef struct subscriber {
    struct feed *f;
    struct MHD_Connection *conn;
    uint64_t seen;             /* the last event written */
    strbuf out;                /* text not yet handed to libmicrohttpd */
    size_t off;
    int waiting;               /* suspended until the next event */
    int ping;                  /* a keep-alive comment is due */
    struct subscriber *next;
} subscriber;

struct feed {
    pthread_mutex_t lock;
    versions *v;
    subscriber *subs;
    int n_subs, max_subs;
    int closing;
    pthread_cond_t tick;       /* wakes the heartbeat thread at close */
    pthread_t heartbeat;
    int heartbeat_running;
};

#define HEARTBEAT_SECONDS 15

/* The registry's listener: wakes the waiting readers. */
static void on_event(void *ctx)
{
    feed *f = ctx;
    pthread_mutex_lock(&f->lock);
    for (subscriber *s = f->subs; s != NULL; s = s->next) {
        if (s->waiting) {
            s->waiting = 0;
            MHD_resume_connection(s->conn);
        }
    }
    pthread_mutex_unlock(&f->lock);
}

/* Every HEARTBEAT_SECONDS, each stream gets a comment line, so that a
 * client that went away is noticed (the write fails, libmicrohttpd closes
 * the connection, the slot frees) and proxies keep the stream open. */
static void *heartbeat_main(void *arg)
{
    feed *f = arg;
    pthread_mutex_lock(&f->lock);
    while (!f->closing) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += HEARTBEAT_SECONDS;
        if (pthread_cond_timedwait(&f->tick, &f->lock, &until) == 0 || f->closing)
            continue;
        for (subscriber *s = f->subs; s != NULL; s = s->next) {
            s->ping = 1;
            if (s->waiting) {
                s->waiting = 0;
                MHD_resume_connection(s->conn);
            }
        }
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

feed *feed_new(versions *v, int max_subscribers)
{
    feed *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->tick, NULL);
    f->v = v;
    f->max_subs = max_subscribers;
    f->heartbeat_running = pthread_create(&f->heartbeat, NULL, heartbeat_main, f) == 0;
    versions_set_listener(v, on_event, f);
    return f;
}

void feed_close(feed *f)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->lock);
    f->closing = 1;
    pthread_cond_broadcast(&f->tick);
    pthread_mutex_unlock(&f->lock);
    on_event(f);
    if (f->heartbeat_running)
        pthread_join(f->heartbeat, NULL);
    f->heartbeat_running = 0;
}

void feed_free(feed *f)
{
    if (f == NULL)
        return;
    versions_set_listener(f->v, NULL, NULL);
    feed_close(f);
    pthread_cond_destroy(&f->tick);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

static void put_event(strbuf *b, const versions_event *e)
{
    const char *name = versions_event_name(e->kind);
    sb_printf(b,
              "id: %llu\nevent: %s\ndata: {\"event\":\"%s\",\"version\":%u,\"previous\":%u,"
              "\"at\":%.3f}\n\n",
              (unsigned long long)e->seq, name, name, e->id, e->previous, e->at);
}

/* Moves what is buffered into buf; with the lock held. */
static ssize_t drain(subscriber *s, char *buf, size_t max)
{
    size_t n = s->out.len - s->off;
    if (n > max)
        n = max;
    memcpy(buf, s->out.buf + s->off, n);
    s->off += n;
    if (s->off == s->out.len) {
        s->out.len = 0;
        s->off = 0;
    }
    return (ssize_t)n;
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    subscriber *s = cls;
    feed *f = s->f;
    (void)pos;
    pthread_mutex_lock(&f->lock);
    ssize_t rc;
    if (s->out.len > s->off) {
        rc = drain(s, buf, max);
    } else if (f->closing) {
        rc = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        versions_event ev[16];
        int n = versions_events(f->v, s->seen, ev, 16, NULL);
        for (int i = 0; i < n; i++) {
            put_event(&s->out, &ev[i]);
            s->seen = ev[i].seq;
        }
        if (n == 0 && s->ping)
            sb_puts(&s->out, ": keep-alive\n\n");
        s->ping = 0;
        if (s->out.failed) {
            rc = MHD_CONTENT_READER_END_WITH_ERROR;
        } else if (s->out.len > 0) {
            rc = drain(s, buf, max);
        } else {
            /* nothing new: sleep until on_event or feed_close */
            s->waiting = 1;
            MHD_suspend_connection(s->conn);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return rc;
}

static void free_subscriber(void *cls)
{
    subscriber *s = cls;
    feed *f = s->f;
    pthread_mutex_lock(&f->lock);
    for (subscriber **link = &f->subs; *link != NULL; link = &(*link)->next) {
        if (*link == s) {
            *link = s->next;
            f->n_subs--;
            break;
        }
    }
    pthread_mutex_unlock(&f->lock);
    sb_free(&s->out);
    free(s);
}

struct MHD_Response *feed_subscribe(feed *f, struct MHD_Connection *conn, uint64_t last_seen,
                                    emb_err *err)
{
    subscriber *s = calloc(1, sizeof *s);
    if (s == NULL) {
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    s->f = f;
    s->conn = conn;
    sb_init(&s->out, (size_t)1 << 20);
    uint64_t newest = 0;
    versions_events(f->v, 0, NULL, 0, &newest);
    s->seen = last_seen != 0 && last_seen <= newest ? last_seen : newest;
    uint32_t pending = versions_pending_id(f->v);
    sb_printf(&s->out, "retry: 2000\nevent: current\ndata: {\"event\":\"current\",\"version\":%u,"
              "\"pending\":", versions_current_id(f->v));
    if (pending != 0)
        sb_printf(&s->out, "%u}\n\n", pending);
    else
        sb_puts(&s->out, "null}\n\n");
    pthread_mutex_lock(&f->lock);
    const int closing = f->closing;
    int refuse = closing || f->n_subs >= f->max_subs;
    if (!refuse) {
        s->next = f->subs;
        f->subs = s;
        f->n_subs++;
    }
    pthread_mutex_unlock(&f->lock);
    if (refuse) {
        sb_free(&s->out);
        free(s);
        if (closing)
            emb_fail_as(err, EMB_ERR_UNAVAILABLE, "shutting down");
        else
            emb_fail_as(err, EMB_ERR_UNAVAILABLE, "too many version streams open (limit %d)",
                        f->max_subs);
        return NULL;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader, s, free_subscriber);
    if (resp == NULL) {
        free_subscriber(s);
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory");
    }
    return resp;
}
