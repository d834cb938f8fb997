/* fileio.h: durable file writes shared by the checkpoint writers
 * (safetensors, configs): write everything, then replace atomically. */
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

/* Finishes an atomic replace of path by tmp, whose data fd has written:
 * fsync(fd), close(fd), rename(tmp, path), fsync of path's directory.
 * fd is always closed; on failure tmp is removed. */
int emb_commit_file(int fd, const char *tmp, const char *path, emb_err *err);

/* fsync of a directory, so renames and creations in it are durable. */
int emb_fsync_dir(const char *dir, emb_err *err);

#endif
