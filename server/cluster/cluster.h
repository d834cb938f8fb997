/* cluster.h: replicas of one item store, with PostgreSQL as the system of
 * record (`serve --store postgres://...`).
 *
 * Each replica is a stateless server: its item store (store.h) is a memory
 * copy of PostgreSQL's tables, which it loads at start and then follows;
 * searches are answered from that copy. Writes go to PostgreSQL first
 * (store_remote hooks): one transaction per batch, acknowledged after the
 * commit and after this replica's follower applied it, so a client reads
 * its own write from the replica that took it (a follower that has not
 * applied it within 10 s, because it is cut off or stalled on a change it
 * cannot apply, is not waited for: the write is committed and answered).
 * The other replicas apply it when their followers see it.
 *
 * Tables (created at first start; one database per cluster)
 *   embedd_meta      key, value: the model's dimension and name, checked at start
 *   embedd_items     (coll, id_kind, id) primary key; text, payload (json,
 *                    kept verbatim), version and vector (dim float32, little
 *                    endian) of the searched version; next_version and
 *                    next_vector while a re-embedding moves to a new version;
 *                    seq of the last write
 *   embedd_deletes   seq, coll, id_kind, id: a delete
 *   embedd_events    seq, kind ('target': re-embedding to version starts;
 *                    'serve': searches switch to version), version
 *   embedd_versions  version, files (the model directory in the served
 *                    precision, packed: learn/versions.h, versions_export),
 *                    parent and gate (the publish gate's verdict): every
 *                    published version, so that any replica can load it
 *   embedd_samples   texts the replicas saw, queued for the one trainer
 *   embedd_seq       the change sequence
 *
 * Change order: every write transaction takes one advisory lock before it
 * draws its seqs and holds it to the commit, so seqs commit in order. A
 * follower that has applied everything up to seq n therefore never misses
 * a smaller one: it asks for rows with a seq above n (items, deletes and
 * events alike, in seq order), after every NOTIFY embedd_changes and at
 * least every half second. A replica cut off from PostgreSQL keeps its
 * copy, answers reads from it, refuses writes (EMB_ERR_UNAVAILABLE: 503),
 * reconnects every second and goes on from n.
 *
 * One trainer: with training on, every replica asks for a session-level
 * advisory lock once a second; the holder trains and re-embeds
 * (cluster_is_leader). Every replica queues the texts it would learn from
 * in embedd_samples, the holder's own included, and the holder reads the
 * queue in order into its sample buffer (trimmed to the newest 20000).
 * When the holder's session ends (it died, or lost PostgreSQL), the lock
 * is free; another replica takes it, reads the newest 4096 texts again
 * (the buffer that died with the old holder) and trains on from the newest
 * published version.
 *
 * Versions: the trainer publishes version T (learn/versions.h); the store
 * hook uploads its files to embedd_versions and writes a 'target' event in
 * one transaction. At that event every replica's store starts moving to T,
 * and a loader thread downloads T and makes it current (/embed answers
 * with it) without holding up the change sequence. The
 * trainer re-embeds each stored text once, into next_vector; followers
 * keep those vectors beside the searched ones. When no text lacks one,
 * the trainer writes a 'serve' event (in the transaction that also moves
 * next_vector into vector in PostgreSQL), and every replica switches its
 * searches at that point of the change sequence. Searches embed their
 * query with the version the store searches, so no query mixes versions,
 * whichever replica answers.
 *
 * Threads: the follower is one thread with its own connection (and one
 * more for the trainer lock); the version loader is another, with its
 * own; writers share one more connection under a mutex. Errors are values; the follower's go to the log and the stats. */
#ifndef EMBEDD_CLUSTER_H
#define EMBEDD_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "learn/versions.h"
#include "store/store.h"

typedef struct cluster cluster;

typedef struct cluster_options {
    const char *url;           /* postgres://... or postgresql://... (libpq) */
    const char *replica;       /* this replica's name, for the samples and the log */
    const char *model;         /* the model's name: replicas must serve the same one */
    int dim;                   /* the model's dimension */
    double connect_wait;       /* seconds cluster_open keeps trying to connect */
} cluster_options;

/* A follower's state, for /info and /metrics. */
typedef struct cluster_stats {
    int connected;             /* the follower's connection works */
    int leader;                /* this replica holds the trainer's lock */
    uint64_t applied_seq;      /* every change up to it is in the local store */
    uint64_t head_seq;         /* the newest change seen in PostgreSQL */
    double lag_seconds;        /* since the follower was last caught up; 0 when it is */
    uint64_t reconnects;
    uint64_t changes_applied;
    uint32_t serving_version;  /* the cluster's searched version (0: none yet) */
    uint32_t target_version;   /* and the one it moves to */
    uint64_t samples_forwarded, samples_received;
    char last_error[256];
} cluster_stats;

/* 1 when url names PostgreSQL. */
int cluster_url_is_postgres(const char *url);

/* Connects (trying for up to connect_wait seconds), creates the tables
 * when missing and checks that they were made for this model's dimension. */
cluster *cluster_open(const cluster_options *o, emb_err *err);
/* Loads PostgreSQL's state into st (empty, memory-only) and v: the
 * versions the cluster searches and moves to become known and current,
 * then sends st's writes to PostgreSQL (store_set_remote) and starts the
 * follower. Before the learner starts (its align then finds nothing to do). */
int cluster_start(cluster *c, store *st, versions *v, emb_err *err);
/* Stops the follower (the store keeps its remote: call before store_close,
 * after the server stopped taking requests). */
void cluster_close(cluster *c);

int cluster_is_leader(cluster *c);
/* A version number no replica has used: above latest and every number
 * handed out before (embedd_version_seq). 0 with err (EMB_ERR_UNAVAILABLE)
 * when PostgreSQL cannot be reached. */
uint32_t cluster_next_version(cluster *c, uint32_t latest, emb_err *err);
/* A text this replica would learn from, for the trainer (copied; dropped
 * when the outbox is full). */
void cluster_forward_sample(cluster *c, const char *text, size_t len, int source);
/* Where the trainer's follower hands the texts it drains (any thread). */
void cluster_set_sample_sink(cluster *c, void (*fn)(void *ctx, const char *text, size_t len,
                                                    int source),
                             void *ctx);
void cluster_get_stats(cluster *c, cluster_stats *out);

#endif
