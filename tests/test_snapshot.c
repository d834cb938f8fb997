/* test_snapshot.c: the store's snapshot file (server/store/store_disk.h)
 * under damage: every single flipped byte of a small snapshot is either
 * harmless (never, today: every byte is checksummed) or makes the open
 * refuse, naming the file, the offset and the item; `embedd repair` then
 * keeps every item whose record verifies, keeps the damaged file, and the
 * WAL written after the snapshot still replays on top. Format 1 snapshots
 * (one whole-file checksum) are still read. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/bytes.h"
#include "base/crc32c.h"
#include "run_suite.h"
#include "store/store.h"
#include "store/store_disk.h"
#include "testutil.h"

#define DIM 8
#define N_SNAP 5   /* items in the snapshot */
#define N_WAL 2    /* items written after it, in the WAL */
#define N_ALL (N_SNAP + N_WAL)

static char dir[96];

static void dir_setup(void)
{
    /* tmpfs when there is one: the flip loop opens and repairs hundreds of times */
    snprintf(dir, sizeof dir, "%s", access("/dev/shm", W_OK) == 0 ? "/dev/shm/embedd-snap-XXXXXX"
                                                                  : "/tmp/embedd-snap-XXXXXX");
    ck_assert(mkdtemp(dir) != NULL);
}

static void dir_teardown(void)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    tu_run(cmd);
}

static const char *path_in(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* Item k: ids alternate number and string; texts and payloads on some. */
static store_id item_id(int k, char *buf)
{
    if (k % 2 == 0)
        return store_id_num(1000 + (uint64_t)k);
    snprintf(buf, 16, "item-%d", k);
    return store_id_str(buf);
}

static void item_vector(int k, float *v)
{
    for (int i = 0; i < DIM; i++)
        v[i] = sinf((float)k * 0.7f + (float)i * 1.3f) + 0.05f;
}

static void item_text(int k, char *buf, size_t cap)
{
    snprintf(buf, cap, "the text of item %d", k);
}

static store *open_at(store_recovery *rec, emb_err *err)
{
    store_options opt = {.dir = dir, .dim = DIM};
    return store_open(&opt, rec, err);
}

static void put_item(store *s, int k)
{
    char idbuf[16], text[64], payload[64];
    float v[DIM];
    item_vector(k, v);
    item_text(k, text, sizeof text);
    snprintf(payload, sizeof payload, "{\"k\": %d}", k);
    store_item it = {.id = item_id(k, idbuf), .vector = v, .vector_dim = DIM,
                     .text = k % 3 == 2 ? NULL : text, .text_len = k % 3 == 2 ? 0 : strlen(text),
                     .payload = k % 2 == 0 ? payload : NULL,
                     .payload_len = k % 2 == 0 ? strlen(payload) : 0, .model_version = 1 + k};
    emb_err err;
    ck_assert_msg(store_upsert(s, &it, 1, &err) == 0, "%s", err.msg);
}

/* N_SNAP items in a snapshot, then N_WAL more in the WAL after it. */
static void make_store(void)
{
    emb_err err;
    store *s = open_at(NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < N_SNAP; k++)
        put_item(s, k);
    ck_assert_msg(store_snapshot(s, &err) == 0, "%s", err.msg);
    for (int k = N_SNAP; k < N_ALL; k++)
        put_item(s, k);
    store_close(s);
}

/* 1 when item k is in s exactly as written, 0 when absent; fails the test
 * when it is there but different. */
static int item_present(store *s, int k)
{
    char idbuf[16], text[64];
    store_id id = item_id(k, idbuf);
    store_record r;
    emb_err err;
    int rc = store_get(s, &id, &r, &err);
    ck_assert_int_ge(rc, 0);
    if (rc == 0)
        return 0;
    float v[DIM];
    item_vector(k, v);
    double norm = 0;
    for (int i = 0; i < DIM; i++)
        norm += (double)v[i] * v[i];
    for (int i = 0; i < DIM; i++)
        ck_assert_msg(fabs(r.vector[i] - v[i] / sqrt(norm)) < 1e-6, "item %d dim %d", k, i);
    item_text(k, text, sizeof text);
    if (k % 3 == 2)
        ck_assert_ptr_null(r.text);
    else
        ck_assert_str_eq(r.text, text);
    ck_assert_int_eq(r.payload != NULL, k % 2 == 0);
    ck_assert_int_eq(r.model_version, 1 + k);
    store_record_free(&r);
    return 1;
}

/* The offsets where the snapshot's item records start (and its trailer). */
static void record_offsets(const unsigned char *buf, size_t size, size_t *starts)
{
    size_t pos = 40;
    for (int k = 0; k < N_SNAP; k++) {
        starts[k] = pos;
        pos += 8 + emb_get_u32(buf + pos);
    }
    starts[N_SNAP] = pos;
    ck_assert_uint_eq(pos + 40, size);
}

static void remove_damaged_copies(void)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "snapshot.damaged-", 17) == 0) {
            unlink(path_in(e->d_name));
            n++;
        }
    }
    closedir(d);
    ck_assert_int_eq(n, 1);  /* repair kept exactly one copy */
}

/* Every byte of the snapshot flipped in turn. */
START_TEST(test_flip_every_byte)
{
    make_store();
    size_t size = 0, wal_size = 0;
    unsigned char *snap = (unsigned char *)tu_read_file(path_in("snapshot"), &size);
    char *wal = tu_read_file(path_in("wal"), &wal_size);
    ck_assert(snap != NULL && wal != NULL);
    ck_assert_uint_eq(emb_get_u32(snap + 8), 2);
    size_t starts[N_SNAP + 1];
    record_offsets(snap, size, starts);

    for (size_t off = 0; off < size; off++) {
        snap[off] ^= (unsigned char)(1u << (off % 8));
        ck_assert(tu_write_file(path_in("snapshot"), snap, size) == 0);
        ck_assert(tu_write_file(path_in("wal"), wal, wal_size) == 0);
        snap[off] ^= (unsigned char)(1u << (off % 8));

        emb_err err = {0};
        store *s = open_at(NULL, &err);
        if (s != NULL) {
            /* only acceptable if nothing changed: there are no slack bytes */
            for (int k = 0; k < N_ALL; k++)
                ck_assert_msg(item_present(s, k), "byte %zu: open lost item %d", off, k);
            store_close(s);
            ck_abort_msg("byte %zu: a flipped byte went unnoticed", off);
        }
        ck_assert_msg(strstr(err.msg, path_in("snapshot")) != NULL, "byte %zu: %s", off, err.msg);
        ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "byte %zu: %s", off, err.msg);
        char at[48];
        snprintf(at, sizeof at, "at byte %zu", off < 40 ? (size_t)0 : off);
        /* a flip inside a record names the record's start, not the byte */
        int damaged = -1;
        for (int k = 0; k < N_SNAP; k++) {
            if (off >= starts[k] && off < starts[k + 1])
                damaged = k;
        }
        if (damaged >= 0)
            snprintf(at, sizeof at, "at byte %zu, in item record %d", starts[damaged], damaged + 1);
        else if (off >= starts[N_SNAP])
            snprintf(at, sizeof at, "at byte %zu, its trailer", starts[N_SNAP]);
        else
            snprintf(at, sizeof at, "at byte 0, its header");
        ck_assert_msg(strstr(err.msg, at) != NULL, "byte %zu: want \"%s\" in: %s", off, at,
                      err.msg);

        store_files f = {.dir_fd = open(dir, O_RDONLY | O_DIRECTORY), .dir = dir,
                         .max_items = 1000};
        store_snapshot_repair_report rep;
        ck_assert_msg(store_snapshot_repair(&f, &rep, &err) == 0, "byte %zu: %s", off, err.msg);
        close(f.dir_fd);
        ck_assert(rep.rewritten);
        ck_assert_uint_eq(rep.items_expected, N_SNAP);
        ck_assert_uint_eq(rep.items_kept, damaged >= 0 ? N_SNAP - 1 : N_SNAP);
        remove_damaged_copies();

        store_recovery rec;
        s = open_at(&rec, &err);
        ck_assert_msg(s != NULL, "byte %zu: after repair: %s", off, err.msg);
        ck_assert_uint_eq(rec.wal_records, N_WAL);   /* the WAL replays on top */
        for (int k = 0; k < N_ALL; k++)
            ck_assert_msg(item_present(s, k) == (k != damaged), "byte %zu: item %d", off, k);
        store_close(s);
    }
    free(snap);
    free(wal);
}
END_TEST

/* `embedd repair` itself: one damaged item record; the report names what
 * was dropped, the damaged file stays, the server's store opens. */
START_TEST(test_repair_command)
{
    make_store();
    size_t size = 0;
    unsigned char *snap = (unsigned char *)tu_read_file(path_in("snapshot"), &size);
    size_t starts[N_SNAP + 1];
    record_offsets(snap, size, starts);
    snap[starts[2] + 20] ^= 0x10;
    ck_assert(tu_write_file(path_in("snapshot"), snap, size) == 0);

    const char *bin = getenv("EMBEDD_BIN") != NULL ? getenv("EMBEDD_BIN") : "build/embedd";
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s repair --data %s > %s 2>&1", bin, dir, path_in("out.txt"));
    int st = system(cmd);
    char *out = tu_read_file(path_in("out.txt"), NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
    ck_assert_msg(strstr(out, "kept 4 items") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "dropped 1") != NULL, "%s", out);
    /* item 2 sits between items 1 ("item-1") and 3 ("item-3") */
    ck_assert_msg(strstr(out, "after id \"item-1\", before id \"item-3\"") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "snapshot.damaged-") != NULL, "%s", out);
    free(out);

    /* the kept copy is the damaged file, byte for byte */
    DIR *d = opendir(dir);
    struct dirent *e;
    int kept = 0;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "snapshot.damaged-", 17) != 0)
            continue;
        size_t n = 0;
        char *copy = tu_read_file(path_in(e->d_name), &n);
        ck_assert(copy != NULL && n == size && memcmp(copy, snap, size) == 0);
        free(copy);
        kept++;
    }
    closedir(d);
    ck_assert_int_eq(kept, 1);
    emb_err err;
    store *s = open_at(NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < N_ALL; k++)
        ck_assert_int_eq(item_present(s, k), k != 2);
    store_close(s);

    /* a second repair finds nothing to do */
    st = system(cmd);
    out = tu_read_file(path_in("out.txt"), NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
    ck_assert_msg(strstr(out, "snapshot: verifies") != NULL, "%s", out);
    free(out);
    free(snap);
}
END_TEST

/* Rewrites the format 2 snapshot as format 1: version 1 header, the item
 * bodies back to back, a CRC-32C of everything before it. */
static void write_v1(const unsigned char *v2, size_t size)
{
    size_t starts[N_SNAP + 1];
    record_offsets(v2, size, starts);
    unsigned char *v1 = malloc(size);
    memcpy(v1, v2, 40);
    emb_put_u32(v1 + 8, 1);
    emb_put_u32(v1 + 36, emb_crc32c(0, v1, 36));
    size_t n = 40;
    for (int k = 0; k < N_SNAP; k++) {
        uint32_t len = emb_get_u32(v2 + starts[k]);
        memcpy(v1 + n, v2 + starts[k] + 8, len);
        n += len;
    }
    emb_put_u32(v1 + n, emb_crc32c(0, v1, n));
    ck_assert(tu_write_file(path_in("snapshot"), v1, n + 4) == 0);
    free(v1);
}

START_TEST(test_format_1_still_read)
{
    make_store();
    size_t size = 0;
    unsigned char *snap = (unsigned char *)tu_read_file(path_in("snapshot"), &size);
    write_v1(snap, size);
    emb_err err;
    store *s = open_at(NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < N_ALL; k++)
        ck_assert(item_present(s, k));
    /* the next snapshot is written in format 2 */
    ck_assert(store_snapshot(s, &err) == 0);
    store_close(s);
    size_t size2 = 0;
    unsigned char *snap2 = (unsigned char *)tu_read_file(path_in("snapshot"), &size2);
    ck_assert_uint_eq(emb_get_u32(snap2 + 8), 2);
    free(snap2);

    /* a damaged format 1 snapshot is refused, and repair leaves it alone */
    write_v1(snap, size);
    size_t v1_size = 0;
    unsigned char *v1 = (unsigned char *)tu_read_file(path_in("snapshot"), &v1_size);
    v1[v1_size / 2] ^= 4;
    ck_assert(tu_write_file(path_in("snapshot"), v1, v1_size) == 0);
    ck_assert(open_at(NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "format 1") != NULL, "%s", err.msg);
    store_files f = {.dir_fd = open(dir, O_RDONLY | O_DIRECTORY), .dir = dir, .max_items = 1000};
    store_snapshot_repair_report rep;
    ck_assert(store_snapshot_repair(&f, &rep, &err) != 0);
    close(f.dir_fd);
    size_t after = 0;
    unsigned char *same = (unsigned char *)tu_read_file(path_in("snapshot"), &after);
    ck_assert(after == v1_size && memcmp(same, v1, after) == 0);
    free(same);
    free(v1);
    free(snap);
}
END_TEST

/* A snapshot cut short (a copy gone wrong) loses its trailer: refused. */
START_TEST(test_truncated_refused)
{
    make_store();
    size_t size = 0;
    unsigned char *snap = (unsigned char *)tu_read_file(path_in("snapshot"), &size);
    size_t starts[N_SNAP + 1];
    record_offsets(snap, size, starts);
    ck_assert(tu_write_file(path_in("snapshot"), snap, starts[3]) == 0);
    emb_err err;
    ck_assert(open_at(NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "trailer is missing") != NULL, "%s", err.msg);
    store_files f = {.dir_fd = open(dir, O_RDONLY | O_DIRECTORY), .dir = dir, .max_items = 1000};
    store_snapshot_repair_report rep;
    ck_assert_msg(store_snapshot_repair(&f, &rep, &err) == 0, "%s", err.msg);
    close(f.dir_fd);
    ck_assert_uint_eq(rep.items_kept, 3);
    store *s = open_at(NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < N_ALL; k++)
        ck_assert_int_eq(item_present(s, k), k < 3 || k >= N_SNAP);
    store_close(s);
    free(snap);
}
END_TEST

/* A damaged WAL header with no snapshot beside it: `embedd repair` reads
 * the store's dimension from the records and keeps them all. */
START_TEST(test_repair_wal_header_without_snapshot)
{
    emb_err err;
    store *s = open_at(NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < N_SNAP; k++)
        put_item(s, k);
    store_close(s);
    size_t size = 0;
    unsigned char *wal = (unsigned char *)tu_read_file(path_in("wal"), &size);
    wal[13] ^= 0x20;   /* the dimension tag */
    ck_assert(tu_write_file(path_in("wal"), wal, size) == 0);
    ck_assert(open_at(NULL, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "embedd repair") != NULL, "%s", err.msg);

    const char *bin = getenv("EMBEDD_BIN") != NULL ? getenv("EMBEDD_BIN") : "build/embedd";
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s repair --data %s > %s 2>&1", bin, dir, path_in("out.txt"));
    int st = system(cmd);
    char *out = tu_read_file(path_in("out.txt"), NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
    free(out);
    s = open_at(NULL, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < N_SNAP; k++)
        ck_assert(item_present(s, k));
    store_close(s);
    free(wal);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("snapshot");
    TCase *tc = tcase_create("damage");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_flip_every_byte);
    tcase_add_test(tc, test_repair_command);
    tcase_add_test(tc, test_format_1_still_read);
    tcase_add_test(tc, test_truncated_refused);
    tcase_add_test(tc, test_repair_wal_header_without_snapshot);
    suite_add_tcase(su, tc);
    return run_suite(su);
}
