/* cli_repair.c: `embedd repair --data DIR`, for a data directory whose
 * logs the server refuses to open because a damaged record is followed by
 * records that verify (model/base/reclog.h).
 *
 * With the directory's locks held (so no server can be using it), it
 * rewrites DIR/snapshot, DIR/wal and DIR/samples.log when they do not
 * verify: every item or record that verifies is kept, the damaged file is
 * kept beside it as NAME.damaged-<time> (never deleted), and what was
 * dropped is reported. The snapshot goes first: the WAL's records follow
 * its seq, which the repaired snapshot keeps. A damaged snapshot of format
 * 1 (one checksum over the whole file, so what it held cannot be told from
 * what it did not) is reported, not rewritten. Exit status 0 when every
 * file verifies or was repaired, 1 when one could not be, 2 on bad usage. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dirlock.h"
#include "cli.h"
#include "learn/samples.h"
#include "options.h"
#include "store/store_disk.h"
#include "store/wal.h"

typedef struct repair_opts {
    const char *data_dir;
} repair_opts;

static const opt_spec repair_specs[] = {
    OPT_STR(repair_opts, "data", "EMBEDD_DATA", data_dir, NULL,
            "the data directory to check and repair (the server must be stopped)"),
};

static const char repair_usage[] =
    "usage: embedd repair --data DIR\n"
    "Checks a stopped server's data directory and rewrites a damaged snapshot, item log\n"
    "(wal) or sample log (samples.log), keeping every item and record that verifies; the\n"
    "damaged file is kept beside it as NAME.damaged-<time>.";

static void report(const char *what, const reclog_salvage_report *rep)
{
    if (rep->found)
        printf("%s: %s\n", what, rep->message);
    else
        printf("%s: none\n", what);
}

/* Repairs the snapshot; its dimension and last seq (0 and 0 without one)
 * are what the WAL is checked against. */
static int repair_snapshot(int dir_fd, const char *dir, int *dim, uint64_t *seq)
{
    store_files f = {.dir_fd = dir_fd, .dir = dir, .max_items = LONG_MAX};
    store_snapshot_repair_report rep;
    emb_err err;
    if (store_snapshot_repair(&f, &rep, &err) != 0) {
        printf("snapshot: %s; not repaired (the wal is left as it is too, since its records "
               "follow the snapshot)\n", err.msg);
        return -1;
    }
    printf("snapshot: %s\n", rep.message);
    *dim = rep.dim;
    *seq = rep.seq;
    return 0;
}

/* The dimension of the vectors in DIR/wal's first upsert record that
 * verifies, or 0. For a log whose header is damaged when no snapshot says
 * the store's dimension: the record's length fixes it (an upsert decodes
 * whole with one dimension only). */
static int wal_guess_dim(int dir_fd)
{
    int fd = openat(dir_fd, "wal", O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size > (off_t)(256 << 20)) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *p = malloc(size > 0 ? size : 1);
    int dim = 0;
    if (p != NULL && pread(fd, p, size, 0) == (ssize_t)size) {
        for (size_t pos = WAL_HEADER_SIZE; dim == 0 && pos + WAL_RECORD_HEADER <= size; pos++) {
            uint32_t len = emb_get_u32(p + pos);
            if (len < 9 || len > size - pos - 8 ||
                emb_crc32c(emb_crc32c(0, p + pos, 4), p + pos + 8, len) != emb_get_u32(p + pos + 4))
                continue;
            const unsigned char *payload = p + pos + WAL_RECORD_HEADER;
            if (payload[0] != STORE_OP_UPSERT)
                continue;
            for (int d = 1; d <= STORE_MAX_DIM && dim == 0; d++) {
                store_op op;
                emb_err err;
                if (store_op_decode(payload, len - 8, d, 0, &op, &err) == 0)
                    dim = d;
                store_op_free(&op);
            }
        }
    }
    free(p);
    close(fd);
    return dim;
}

static int repair_dir(int dir_fd, const char *dir)
{
    int dim = 0, status = 0;
    uint64_t seq = 0;
    emb_err err;
    reclog_salvage_report rep;
    int snapshot_ok = repair_snapshot(dir_fd, dir, &dim, &seq) == 0;
    if (snapshot_ok && dim == 0)
        dim = wal_guess_dim(dir_fd);   /* no snapshot: the records say it */
    if (!snapshot_ok) {
        status = 1;
    } else if (wal_repair(dir, dir_fd, (uint32_t)dim, seq, store_op_refused, &rep, &err) != 0) {
        printf("wal: %s\n", err.msg);
        status = 1;
    } else {
        report("wal", &rep);
    }
    if (samples_repair(dir, dir_fd, &rep, &err) != 0) {
        printf("samples.log: %s\n", err.msg);
        status = 1;
    } else {
        report("samples.log", &rep);
    }
    return status;
}

int cli_repair(int argc, char **argv)
{
    repair_opts o = {0};
    int rc = options_parse(repair_specs, (int)(sizeof repair_specs / sizeof repair_specs[0]), &o,
                           argc, argv, repair_usage);
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    if (o.data_dir == NULL) {
        fprintf(stderr, "embedd repair: --data is required\n");
        return 2;
    }
    int dir_fd = open(o.data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
        fprintf(stderr, "embedd repair: %s: %s\n", o.data_dir, strerror(errno));
        return 1;
    }
    emb_err err;
    int store_lock = emb_dirlock_take(dir_fd, o.data_dir, "lock", "store", &err);
    int samples_lock = store_lock < 0 ? -1
                                      : emb_dirlock_take(dir_fd, o.data_dir, "samples.lock",
                                                         "sample buffer", &err);
    int status = 1;
    if (store_lock < 0 || samples_lock < 0)
        fprintf(stderr, "embedd repair: %s (stop the server first)\n", err.msg);
    else
        status = repair_dir(dir_fd, o.data_dir);
    emb_dirlock_release(samples_lock);
    emb_dirlock_release(store_lock);
    close(dir_fd);
    return status;
}
