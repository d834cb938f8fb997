/* libFuzzer target: the item store's recovery (server/store/store.h) from
 * arbitrary DATA/wal bytes, and optionally an arbitrary DATA/snapshot.
 *
 * Input: byte 0 is the mode. Bit 0 set: bytes 1..2 (little-endian) are the
 * snapshot's length, the snapshot's bytes follow, the rest is the WAL;
 * otherwise everything after byte 0 is the WAL. The store's dimension is
 * always DIM, that of the seeds (written by a real server with the tiny
 * test model): a real store's records all have its dimension, and taking
 * it from a damaged header would make records that verify look malformed,
 * which no server meets.
 *
 * Beyond "no crash, leak or hang", it checks what the store promises:
 *   - when the open succeeds, a write acknowledged after it survives a
 *     close and reopen (recovery never leaves a log that the next start
 *     refuses or that loses the write);
 *   - when the open refuses and points at `embedd repair`, the repairs
 *     (store_snapshot_repair, wal_repair with store_op_refused) make the
 *     next open succeed, or at least no longer ask for a repair (a record
 *     whose checksum verifies but that replay refuses is dropped too:
 *     tests/fuzz/repro/wal-repair-keeps-malformed-record was the case).
 * A broken promise is an abort(), reported as a crash. */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/store.h"
#include "store/store_disk.h"
#include "store/wal.h"

#define DIM 32

static char dir[64];

static void write_file(const char *name, const uint8_t *data, size_t size)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (fp == NULL)
        abort();
    if (size > 0 && fwrite(data, 1, size, fp) != size)
        abort();
    fclose(fp);
}

/* Empties the directory (repairs leave NAME.damaged-* copies). */
static void clear_dir(void)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        abort();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            char path[384];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

static void fail(const char *what, const emb_err *err)
{
    fprintf(stderr, "fuzz_wal: %s: %s\n", what, err != NULL ? err->msg : "");
    abort();
}

/* A write after recovery must survive a close and reopen. */
static void write_then_reopen(store *s, const store_options *opt)
{
    float v[DIM];
    for (int i = 0; i < opt->dim; i++)
        v[i] = 1.0f + (float)i;
    store_item it = {.id = store_id_num(4242424242u), .vector = v, .vector_dim = opt->dim,
                     .text = "fuzz", .text_len = 4, .model_version = 1};
    emb_err err;
    int wrote = store_upsert(s, &it, 1, &err) == 0;
    long want = store_count(s);
    store_close(s);
    s = store_open(opt, NULL, &err);
    if (s == NULL)
        fail("reopen after a successful open failed", &err);
    if (wrote && store_count(s) != want)
        fail("reopen lost an acknowledged write", NULL);
    store_close(s);
}

/* The repairs `embedd repair` makes, then an open. */
static void repair_then_open(const store_options *opt, int strict)
{
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        abort();
    store_files f = {.dir_fd = dir_fd, .dir = dir, .max_items = opt->max_items};
    store_snapshot_repair_report srep;
    reclog_salvage_report wrep;
    emb_err err;
    int repaired = store_snapshot_repair(&f, &srep, &err) == 0 &&
                   wal_repair(dir, dir_fd, (uint32_t)(srep.dim > 0 ? srep.dim : opt->dim),
                              srep.seq, store_op_refused, &wrep, &err) == 0;
    close(dir_fd);
    if (!repaired)
        return;   /* refused to repair (say, a format 1 snapshot): nothing promised */
    store *s = store_open(opt, NULL, &err);
    if (s == NULL && strict && strstr(err.msg, "embedd repair") != NULL)
        fail("still asks for a repair after one", &err);
    store_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0') {
        snprintf(dir, sizeof dir, "%s/embedd-fuzz-wal-XXXXXX",
                 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (mkdtemp(dir) == NULL)
            abort();
    }
    if (size < 1)
        return 0;
    clear_dir();
    unsigned mode = data[0];
    data++;
    size--;
    if ((mode & 1) && size >= 2) {
        size_t snap = (size_t)data[0] | (size_t)data[1] << 8;
        data += 2;
        size -= 2;
        if (snap > size)
            snap = size;
        write_file("snapshot", data, snap);
        data += snap;
        size -= snap;
    }
    write_file("wal", data, size);

    store_options opt = {.dir = dir, .dim = DIM, .max_items = 4096};
    emb_err err;
    store *s = store_open(&opt, NULL, &err);
    if (s != NULL)
        write_then_reopen(s, &opt);
    else if (strstr(err.msg, "embedd repair") != NULL)
        repair_then_open(&opt, 1);
    return 0;
}
