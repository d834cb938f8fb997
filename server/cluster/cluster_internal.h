/* cluster_internal.h: the state shared by cluster.c (open, the follower,
 * leadership, samples) and cluster_write.c (the store's remote hooks). */
#ifndef EMBEDD_CLUSTER_INTERNAL_H
#define EMBEDD_CLUSTER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "cluster.h"
#include "pg.h"

/* Advisory lock keys (one database per cluster). */
#define CLUSTER_LOCK_SCHEMA 0x656d6201   /* creating the tables */
#define CLUSTER_LOCK_WRITE 0x656d6202    /* held by each write transaction to its commit */
#define CLUSTER_LOCK_TRAINER 0x656d6203  /* held by the training replica's session */

#define CLUSTER_COLL "default"
#define CLUSTER_OUTBOX 1024              /* texts waiting for the trainer */
#define CLUSTER_APPLY_WAIT 10.0          /* seconds a writer waits for its follower */

typedef struct outbox_text {
    char *text;
    size_t len;
    int source;
} outbox_text;

struct cluster {
    char *url, *replica, *model;
    int dim;
    store *st;
    versions *v;

    /* writers: one connection, one transaction at a time */
    pthread_mutex_t wmu;
    PGconn *wconn;
    double wretry_at;          /* mono seconds before which a broken one is not retried */

    /* the follower thread and its connections */
    pthread_t thread;
    int started;
    atomic_int stop;
    int wake[2];               /* a pipe: writers poke the follower */
    PGconn *fconn;             /* LISTEN embedd_changes, reads changes */
    PGconn *lconn;             /* holds the trainer's lock */
    double next_leader_check;
    double next_samples;       /* mono seconds of the next sample exchange */
    float *vec;                /* (dim) the follower's aligned copy of a vector column */

    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t applied_cv;
    uint64_t applied, head;
    int connected, leader;
    double caught_up_at;       /* mono seconds */
    uint64_t reconnects, changes;
    uint32_t serving, target;
    uint64_t forwarded, received;
    char last_error[256];

    /* The version loader (a thread of its own, so that downloading and
     * loading a published version does not hold up the change sequence):
     * load_want is the newest version asked for, load_done the newest
     * loaded and current; both under mu, signalled by load_cv. load_mu
     * serialises loading (the loader, and the follower at a 'serve'). */
    pthread_t loader;
    int loader_started;
    pthread_cond_t load_cv;
    uint32_t load_want, load_done;
    pthread_mutex_t load_mu;
    PGconn *load_conn;

    /* texts for the trainer; guarded by out_mu */
    pthread_mutex_t out_mu;
    outbox_text outbox[CLUSTER_OUTBOX];
    int out_n;
    void (*sink)(void *ctx, const char *text, size_t len, int source);
    /* the trainer's place in embedd_samples (follower thread only) */
    uint64_t sample_cursor;
    int cursor_set;
    double next_trim;
    void *sink_ctx;
};

/* 1 on the follower's thread, and while cluster_start loads: the store's
 * hooks then only apply locally what PostgreSQL already holds. */
extern _Thread_local int cluster_applying;

/* cluster_write.c */
void cluster_set_hooks(cluster *c);
/* Waits (bounded) until the follower applied seq; pokes it first. */
void cluster_wait_applied(cluster *c, uint64_t seq);

/* cluster.c */
void cluster_note_error(cluster *c, const char *msg);
/* Version id in memory here: loaded from PostgreSQL when missing. Follower
 * or start-up connection conn. */
int cluster_ensure_version(cluster *c, PGconn *conn, uint32_t id, emb_err *err);

#endif
