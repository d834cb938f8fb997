/* dirlock.c: see dirlock.h. */
#include "dirlock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "fileio.h"

/* The pid the holder wrote into the lock file, 0 when unknown. */
static long holder_pid(int fd)
{
    char text[32];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    char *end = NULL;
    long pid = strtol(text, &end, 10);
    return end != text && pid > 0 ? pid : 0;
}

/* Notes our pid in the lock file; a failure only makes messages vaguer. */
static void note_holder(int fd)
{
    char text[32];
    int n = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && emb_pwrite_all(fd, text, (size_t)n, 0) == 0)
        return;
}

int emb_dirlock_take(int dir_fd, const char *dir, const char *name, const char *what,
                     emb_err *err)
{
    int fd = openat(dir_fd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: %s", dir, name, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        note_holder(fd);
        return fd;
    }
    int e = errno;
    if (e == EWOULDBLOCK) {
        long pid = holder_pid(fd);
        if (pid == (long)getpid())
            emb_fail_as(err, EMB_ERR_CONFLICT,
                        "data directory %s is in use by another %s (%s/%s is held by this "
                        "process)", dir, what, dir, name);
        else if (pid > 0)
            emb_fail_as(err, EMB_ERR_CONFLICT,
                        "data directory %s is in use by another %s (%s/%s is held by process "
                        "%ld)", dir, what, dir, name, pid);
        else
            emb_fail_as(err, EMB_ERR_CONFLICT,
                        "data directory %s is in use by another %s (%s/%s is held)", dir, what,
                        dir, name);
    } else {
        emb_fail_as(err, EMB_ERR_IO, "%s/%s: flock: %s", dir, name, strerror(e));
    }
    close(fd);
    return -1;
}

void emb_dirlock_release(int fd)
{
    if (fd >= 0)
        close(fd); /* drops the flock */
}
