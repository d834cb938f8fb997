/* fileio.h: durable file writes, for everything model/ and server/ keep on
 * disk (checkpoints, configs, the item WAL and snapshots, the sample log,
 * downloaded files).
 *
 * Replace by rename
 *   A file that must never be seen half-written is written as NAME.tmp
 *   next to it, then committed: fsync of the temp file, rename over NAME,
 *   fsync of the directory (so the rename itself survives a crash). A
 *   reader sees the old file or the new one, never a mix; a crash leaves
 *   at most a stale NAME.tmp, which the next emb_replace_begin truncates
 *   (owners that want it gone at startup unlink it). emb_replace_abort
 *   removes the temp file. This is the one implementation: record logs
 *   (reclog.h), snapshots, checkpoints and the hub all go through it.
 *
 *   emb_replace r;
 *   if (emb_replace_begin(&r, path, err) != 0) return -1;
 *   if (write ... to r.fd fails) { emb_replace_abort(&r); return -1; }
 *   return emb_replace_commit(&r, NULL, err);
 *
 * Ownership: an emb_replace owns its temp file's descriptor (and, when
 * begun from a path, a descriptor of the directory) until commit or
 * abort, which release everything. One thread uses one emb_replace. */
#ifndef EMBEDD_FILEIO_H
#define EMBEDD_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Writes n bytes, retrying short writes and EINTR. 0, or -1 with errno. */
int emb_write_all(int fd, const void *buf, size_t n);

/* pwrite of n bytes at off, retrying short writes and EINTR. 0, or -1
 * with errno. */
int emb_pwrite_all(int fd, const void *buf, size_t n, uint64_t off);

typedef struct emb_replace {
    int fd;             /* the temp file, open read-write; write through it */
    int dir_fd;         /* the directory holding both names */
    int own_dir;        /* dir_fd was opened by begin (closed at the end) */
    char dir[4096];     /* the directory's path, for messages */
    char name[256];     /* the target's name inside dir */
    char tmp[264];      /* name + ".tmp" */
} emb_replace;

/* Starts replacing dir_fd/name (dir is dir_fd's path, for messages): creates
 * or truncates dir_fd/name.tmp. dir_fd stays the caller's. 0, or -1 with
 * err (EMB_ERR_IO). */
int emb_replace_begin_at(emb_replace *r, int dir_fd, const char *dir, const char *name,
                         emb_err *err);

/* The same, with the temp file (and so the target) given permission bits
 * mode: created with them (less the umask) and, when a stale temp file
 * already existed, set to them by fchmod. begin_at uses 0644. */
int emb_replace_begin_at_mode(emb_replace *r, int dir_fd, const char *dir, const char *name,
                              unsigned mode, emb_err *err);

/* The same for a path: its directory is opened for the rename and fsync. */
int emb_replace_begin(emb_replace *r, const char *path, emb_err *err);

/* fsync of the temp file, rename over the target, fsync of the directory.
 * keep_fd NULL: the file is closed; else *keep_fd gets the descriptor,
 * still open read-write on the new file, and the caller owns it. On
 * failure the temp file is removed, the target is as it was (or, when
 * only the directory fsync failed, already replaced but maybe not
 * durable), and nothing stays open. 0, or -1 with err (EMB_ERR_IO). */
int emb_replace_commit(emb_replace *r, int *keep_fd, emb_err *err);

/* Gives up: closes and removes the temp file. Safe after a failed begin. */
void emb_replace_abort(emb_replace *r);

/* The whole replace for n bytes in memory. 0, or -1 with err. */
int emb_write_file_atomic(const char *path, const void *data, size_t n, emb_err *err);

/* Finishes an atomic replace of path by tmp, whose data fd has written:
 * fsync(fd), close(fd), rename(tmp, path), fsync of path's directory.
 * fd is always closed; on failure tmp is removed. (For writers that chose
 * their own temp name; new code uses emb_replace.) */
int emb_commit_file(int fd, const char *tmp, const char *path, emb_err *err);

/* fsync of a directory, so renames and creations in it are durable. */
int emb_fsync_dir(const char *dir, emb_err *err);

/* fsync of the directory that holds path ("." when path has no slash). */
int emb_fsync_parent(const char *path, emb_err *err);

#endif
