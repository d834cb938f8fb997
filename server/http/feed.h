/* feed.h: GET /train/versions/stream, the server-sent events of model
 * version changes (versions.h: a pending version, a publish, a promotion,
 * a rollback), so that stores outside embedd know when to re-embed.
 *
 * Each subscriber gets, on connect, an event `current` (the current and
 * pending versions, no id), then one event per change with the change's
 * number as its SSE id; a reconnecting client's Last-Event-ID resumes
 * after it (from the last VERSIONS_EVENTS changes). Data is one JSON
 * object: {"event", "version", "previous", "at"}.
 *
 * How it waits: the response is a libmicrohttpd callback reader. With
 * nothing to send, the reader suspends its connection (under the feed's
 * lock) and returns 0; the registry's listener, called on the thread that
 * made the change, resumes the waiting connections (under the same lock)
 * and returns: it never blocks on a client. feed_close resumes them all
 * and makes every reader end its stream, so that shutdown never waits for
 * a subscriber. At most max_subscribers streams are open at once; a
 * heartbeat thread gives each stream a comment line every 15 s, so that a
 * client that went away frees its slot.
 *
 * Threads: feed_subscribe and the readers run on HTTP threads, the
 * listener on any thread; one mutex guards the subscribers. Order:
 * feed_new before the daemon starts, feed_close before it stops (no
 * suspended connection may remain), feed_free after. */
#ifndef EMBEDD_FEED_H
#define EMBEDD_FEED_H

#include <stdint.h>

#include <microhttpd.h>

#include "base/error.h"
#include "learn/versions.h"

typedef struct feed feed;

/* A feed of v's events (v borrowed, outlives the feed); registers itself
 * as v's listener. NULL when out of memory. */
feed *feed_new(versions *v, int max_subscribers);
/* Ends every stream and refuses new ones. */
void feed_close(feed *f);
/* Unregisters and frees; after feed_close and the daemon's stop. */
void feed_free(feed *f);

/* The response for a new subscriber on conn, after event last_seen (0:
 * only changes from now on). NULL with err: EMB_ERR_UNAVAILABLE (too many
 * subscribers, or closing), EMB_ERR_NO_MEMORY. */
struct MHD_Response *feed_subscribe(feed *f, struct MHD_Connection *conn, uint64_t last_seen,
                                    emb_err *err);

#endif
