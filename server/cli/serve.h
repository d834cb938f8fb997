/* serve.h: `embedd serve` from parsed options (cli_serve.c) to a stopped
 * server. serve_run owns the server struct (http/server.h) and every part
 * of it, and is the only code that starts or stops them.
 *
 * Startup, in this order (each part needs the ones before it):
 *   1. SIGINT and SIGTERM blocked in every thread (taken by sigtimedwait in
 *      step 8), SIGPIPE ignored, --threads applied to OpenBLAS and OpenMP;
 *   2. the model (--model, packed for --precision): version 1, read-only;
 *   3. the metrics registry; with --store postgres://, the connection to
 *      PostgreSQL (cluster.h: tables made when missing; without --data a
 *      scratch directory in /tmp holds the model versions);
 *   4. the versions registry: the current saved version of --data, else a
 *      copy of version 1;
 *   5. the batcher and its compute thread (batcher.h);
 *   6. the item store (store.h): opened and recovered from --data (with
 *      PostgreSQL: in memory, loaded from PostgreSQL's items, the versions
 *      it searches and moves to made known and current, then its follower
 *      started); then
 *      the collections (store/collections.h): "default" is that store,
 *      named ones are opened from DATA/collections (leftovers of a create
 *      or drop cut short removed);
 *   7. the learner (learner.h), the batcher's idle work: it moves the
 *      store to the current version (versions_align, re-embedding if
 *      needed) and, with --train on, trains; with --train off it only
 *      re-embeds;
 *   8. the HTTP daemon (http_start): from here requests arrive; then the
 *      main thread does housekeeping once a second (sample buffer to disk,
 *      gauges) until SIGINT or SIGTERM.
 * Shutdown: the daemon stops accepting and every admitted request is
 * answered (http_quiesce); the batcher's thread stops (batcher_halt:
 * later jobs fail as "shutting down"); the learner stops and flushes its
 * samples (with PostgreSQL, the follower stops feeding it first); the
 * daemon stops; the follower stops; the named collections, then the store, are
 * snapshotted (with --data) and closed; then the batcher (which the
 * learner's saving thread and the daemon's threads may touch until they
 * have stopped), metrics, versions and the model are freed. A failed step
 * frees what was started, in the same order, and serve_run returns 1.
 *
 * Threads: serve_run runs on the main thread and returns when everything
 * it started has stopped. */
#ifndef EMBEDD_SERVE_H
#define EMBEDD_SERVE_H

#include "http/server.h"

/* Runs the server until SIGINT or SIGTERM. Returns the exit status: 0
 * after an orderly shutdown, 1 when startup failed (after printing why). */
int serve_run(const server_opts *opts);

#endif
