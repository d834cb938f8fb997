/* frontdoor.h: our own listening socket, and a check of the first request
 * head of each connection before libmicrohttpd sees it.
 *
 * Why: libmicrohttpd 0.9.75 answers some heads itself, with HTML, before
 * our access handler runs (an unparsable Content-Length, with its status
 * line written twice; an unsupported HTTP version; a malformed request
 * line), and a head that exhausts its connection pool hangs. The front
 * door accepts each connection, peeks (MSG_PEEK, nothing consumed) until
 * the head is complete, checks it, and answers a bad one itself with a
 * JSON error (errors.c's shapes) and "Connection: close". A good one goes
 * to libmicrohttpd with MHD_add_connection, bytes untouched.
 *
 * Only the first head of a connection passes here: keep-alive follow-ups
 * go straight to libmicrohttpd (http.c's refuse_head is the second line).
 *
 * Limits: connections waiting here count against --max-connections and
 * --max-connections-per-ip together with those libmicrohttpd holds (the
 * front door counts each connection from accept until it closes it, or
 * until libmicrohttpd reports it closed: frontdoor_release). A head not
 * complete within --header-timeout is cut with a reset and counted as a
 * "head" cut (metrics_connection_cut); one with no new byte for --timeout
 * is closed, as libmicrohttpd's inactivity timeout did.
 *
 * Threads: one thread (epoll) accepts, peeks and answers. frontdoor_release
 * may be called from any thread. */
#ifndef EMBEDD_HTTP_FRONTDOOR_H
#define EMBEDD_HTTP_FRONTDOOR_H

#include <sys/socket.h>

#include "base/error.h"

struct server;
struct MHD_Daemon;
typedef struct frontdoor frontdoor;

/* Binds and listens on addr (port 0: any free port). NULL with err
 * ("cannot listen on ...") or when out of memory. */
frontdoor *frontdoor_open(struct server *srv, const struct sockaddr *addr, socklen_t addr_len,
                          emb_err *err);
/* The bound port. */
int frontdoor_port(const frontdoor *door);
/* Starts the accept thread, which hands good connections to daemon, and
 * those whose first request is GET (or HEAD) /health or /metrics to probes
 * (NULL: daemon too). The probes' own daemon (one thread, http.c) is what
 * keeps room for health checks and scrapes: the main daemon's threads may
 * all be busy formatting large responses for seconds. 0, or -1 when the
 * thread cannot start. */
int frontdoor_start(frontdoor *door, struct MHD_Daemon *daemon, struct MHD_Daemon *probes);
/* Stops accepting at once: the listening socket is closed when it
 * returns (a new connection is refused). Connections already accepted
 * still get their answer, or their cut at the header deadline: a client
 * that connected before a shutdown is served (503 while draining). */
void frontdoor_quiesce(frontdoor *door);
/* Closes the listening socket and every connection still waiting here,
 * and joins the thread. Idempotent. */
void frontdoor_stop(frontdoor *door);
/* A connection handed to libmicrohttpd has closed: its slot frees.
 * NULL door or addr is ignored. */
void frontdoor_release(frontdoor *door, const struct sockaddr *addr);
/* Stops (if needed) and frees; after the daemon has stopped, since its
 * close notifications call frontdoor_release. NULL is ignored. */
void frontdoor_free(frontdoor *door);

#endif
