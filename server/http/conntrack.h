/* conntrack.h: every open HTTP connection, the phase it is in, and total
 * deadlines per phase that no trickle of bytes can extend.
 *
 * libmicrohttpd's own timeout restarts on every byte, so a client sending
 * one byte every few seconds keeps a connection (and a slot of the
 * connection limit) forever. Here each connection records when it entered
 * its phase; a sweeper thread wakes every CONNTRACK_TICK_MS and calls
 * shutdown(fd, SHUT_RDWR) on a connection that stayed in a phase longer
 * than that phase allows. libmicrohttpd then sees the socket fail and
 * closes it through its usual path (completion callback, slot freed).
 *
 * The fd is only touched under the tracker's mutex, and an entry is removed
 * (conntrack_remove) from libmicrohttpd's "connection closed" notification,
 * which comes before libmicrohttpd closes the fd: a shut-down fd is never a
 * reused one.
 *
 * Phases: HEAD (connected, request head not yet complete), BODY (reading
 * the body), HANDLING (the request runs: no deadline, its cost is bounded
 * elsewhere), SENDING (the response is queued until it is fully sent),
 * IDLE (a keep-alive connection between requests: this also bounds the
 * next request's head), STREAM (an event stream: no deadline; streams are
 * few and send a heartbeat).
 *
 * Thread-safe: any thread. */
#ifndef EMBEDD_HTTP_CONNTRACK_H
#define EMBEDD_HTTP_CONNTRACK_H

#include <stdint.h>

typedef enum {
    CONN_HEAD,
    CONN_BODY,
    CONN_HANDLING,
    CONN_SENDING,
    CONN_IDLE,
    CONN_STREAM,
    CONN_N_PHASES
} conn_phase;

/* Seconds each phase may last in total; 0: no deadline. */
typedef struct conntrack_limits {
    double seconds[CONN_N_PHASES];
} conntrack_limits;

#define CONNTRACK_TICK_MS 250

typedef struct conntrack conntrack;
typedef struct conn_entry conn_entry;

/* Called by the sweeper for each connection it cuts (under the tracker's
 * lock: do not call back into the tracker). */
typedef void (*conntrack_on_cut)(void *ctx, conn_phase p);

/* Starts the sweeper thread; on_cut may be NULL. NULL when out of memory
 * or threads. */
conntrack *conntrack_new(const conntrack_limits *limits, conntrack_on_cut on_cut, void *ctx);
/* Stops the sweeper and frees the tracker (entries left are freed too). */
void conntrack_free(conntrack *ct);

/* A new connection on socket fd, in phase HEAD. NULL when out of memory
 * (the connection is then simply not tracked). */
conn_entry *conntrack_add(conntrack *ct, int fd);
/* The connection is closing; e is freed. NULL is ignored. */
void conntrack_remove(conntrack *ct, conn_entry *e);
/* Enters phase p now (the deadline restarts); NULL is ignored. Returns 1
 * when the connection has been cut already (its socket is shut down, but
 * bytes the kernel had buffered can still be read: no work should start
 * for them), else 0. */
int conntrack_set(conntrack *ct, conn_entry *e, conn_phase p);

/* Counts since the start. */
typedef struct conntrack_stats {
    long open;                            /* tracked connections now */
    uint64_t cut[CONN_N_PHASES];          /* connections cut, by the phase overdue */
} conntrack_stats;
void conntrack_get_stats(conntrack *ct, conntrack_stats *out);

/* "head", "body", ... for metrics labels. */
const char *conntrack_phase_name(conn_phase p);

#endif
