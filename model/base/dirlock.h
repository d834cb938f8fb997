/* dirlock.h: the one data-directory lock, so that two processes (or two
 * owners in one process) never share the files of one directory.
 *
 * The lock is an flock(LOCK_EX | LOCK_NB) on a lock file in the directory
 * (DIR/lock for the item store, DIR/samples.lock for the sample buffer).
 * flock locks belong to an open file, so a second emb_dirlock_take on the
 * same file fails in the same process too, and the kernel drops the lock
 * when its holder dies: a crash never leaves a stale lock behind. The
 * holder writes its pid into the file, only so that the error a second
 * taker gets can name it.
 *
 * Ownership: the caller owns the returned descriptor and releases the lock
 * by closing it (emb_dirlock_release). Taking is not thread-safe against
 * itself for one file; nothing else is shared. */
#ifndef EMBEDD_DIRLOCK_H
#define EMBEDD_DIRLOCK_H

#include "error.h"

/* Takes the lock on dir_fd/name (created if missing). dir is the
 * directory's path and what names the kind of owner ("store", "sample
 * buffer"), both for messages. Returns the lock's descriptor, or -1 with
 * err: EMB_ERR_CONFLICT when someone else holds it (the message names the
 * holder's pid when known), EMB_ERR_IO when a system call failed. */
int emb_dirlock_take(int dir_fd, const char *dir, const char *name, const char *what,
                     emb_err *err);

/* Releases a lock taken by emb_dirlock_take (fd < 0: no-op). */
void emb_dirlock_release(int fd);

#endif
