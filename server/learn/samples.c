/* samples.c: see samples.h for the design and the file layout. */
#include "samples.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/bytes.h"
#include "base/dirlock.h"
#include "base/reclog.h"

#define LOG_NAME "samples.log"
#define LOG_TMP "samples.log.tmp"
#define LOCK_NAME "samples.lock"
#define LOG_VERSION 1
#define HEADER_SIZE RECLOG_HEADER_FIXED
#define REC_HEADER RECLOG_FRAME /* len, crc */
#define SLOT_FIXED 6          /* type, reservoir, slot */
#define REC_MAX (64u << 20)   /* replay rejects longer payloads */
#define SLOTS_MAX (1 << 30)   /* slot indices fit in 30 bits of a set value */

enum { REC_SLOT = 1, REC_DROP = 2, REC_COUNTERS = 3 };
enum { RES_TRAIN = 0, RES_HELD = 1, N_RES = 2 };

typedef struct slot {
    char *text;               /* NUL-terminated */
    uint32_t len;
    uint64_t hash;
} slot;

typedef struct reservoir {
    slot *slots;              /* (alloc) of which n are live */
    int n;
    int alloc;
    int cap;                  /* texts */
    size_t cap_bytes;
    size_t bytes;             /* text bytes of the live slots */
    uint64_t seen;            /* distinct texts routed here: Algorithm R's count */
} reservoir;

/* The hashes present, for de-duplication: open addressing with linear
 * probing and backward-shift deletion (no tombstones). Key 0 is empty
 * (text_hash never returns 0); the value locates the slot: reservoir in
 * bit 30, slot index below. The probe position mixes in a random salt so
 * that clients cannot pile texts onto one probe chain. */
typedef struct hset {
    uint64_t *keys;           /* (cap) */
    uint32_t *vals;           /* (cap) */
    size_t cap;               /* a power of two */
    size_t n;
    uint64_t salt;
} hset;

/* The counters that persist (the counters record holds them in this order). */
typedef struct counters {
    uint64_t version;
    uint64_t holdout_version;
    uint64_t duplicates;
    uint64_t ignored;
    uint64_t truncated;
    uint64_t received[SAMPLES_N_SOURCES];
    uint64_t added[SAMPLES_N_SOURCES];
} counters;

#define N_COUNTERS (5 + 2 * SAMPLES_N_SOURCES + N_RES) /* + each reservoir's seen */

/* A growable byte buffer for records. */
typedef struct buf {
    unsigned char *p;
    size_t len;
    size_t cap;
} buf;

struct samples {
    pthread_mutex_t lock;     /* guards everything down to flush_lock */
    samples_opts o;
    reservoir res[N_RES];
    hset set;
    emb_rng rng;              /* the reservoirs' random decisions */
    counters c;
    int persist;              /* records are kept (a dir, and not replaying) */
    buf pending;              /* records not yet written */
    int dirty;                /* counters changed since the last flush */
    int must_compact;         /* pending was dropped: rewrite the whole log */
    uint64_t log_bytes;       /* copies for samples_stats_get */
    uint64_t flushes;
    uint64_t compactions;
    uint64_t io_errors;
    uint64_t replayed;
    uint64_t truncated_bytes;
    char recovery[256];

    pthread_mutex_t flush_lock; /* serialises flushes; guards the fields below */
    char *dir;
    int dir_fd;
    reclog *log;              /* samples.log, NULL in memory */
    int lock_fd;              /* samples.lock (dirlock.h) */
};

/* ---- texts ----------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ull;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t load_le64(const unsigned char *p, size_t n)
{
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)p[i] << (8 * i);
    return w;
}

/* The text's identity. It must never change: held-out membership and
 * replayed logs depend on it. Each 8-byte word goes through a bijective
 * mixer, seeded with the length so that texts of different lengths differ. */
static uint64_t text_hash(const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;
    uint64_t h = mix64(0x9e3779b97f4a7c15ull ^ len);
    while (len >= 8) {
        h = mix64(h ^ load_le64(p, 8));
        p += 8;
        len -= 8;
    }
    h = mix64(h ^ load_le64(p, len) ^ 0x5bd1e995ull);
    return h != 0 ? h : 1;
}

/* Whether the text with this hash is held out. Uses a remix of the hash so
 * that it is independent of the set's probe positions. */
static int is_held_out(uint64_t hash, double fraction)
{
    double u = (double)(mix64(hash ^ 0x6a09e667f3bcc908ull) >> 11) * 0x1p-53;
    return u < fraction;
}

static int is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Trims, cuts and checks a text, leaving what would be stored. Returns 0
 * to ignore it; sets *cut when it was longer than max_chars. */
static int text_prepare(const samples_opts *o, const char **text, size_t *len, int *cut)
{
    const unsigned char *p = (const unsigned char *)*text;
    size_t n = *len;
    while (n > 0 && is_space(p[0])) {
        p++;
        n--;
    }
    while (n > 0 && is_space(p[n - 1]))
        n--;
    if (memchr(p, '\0', n) != NULL)
        return 0;
    *cut = 0;
    if (n > (size_t)o->max_chars) {
        /* Back up to the first byte of a character, so none is split. A
         * character has at most 3 continuation bytes; more is not UTF-8,
         * and then any cut will do. */
        size_t end = (size_t)o->max_chars;
        size_t k = end;
        while (k > 0 && end - k < 3 && (p[k] & 0xC0) == 0x80)
            k--;
        n = (p[k] & 0xC0) == 0x80 ? end : k;
        *cut = 1;
    }
    if (n < (size_t)o->min_chars)
        return 0;
    *text = (const char *)p;
    *len = n;
    return 1;
}

/* Uniform in [0, bound). The multiply keeps the generator's strong high
 * bits; its bias (bound / 2^64) does not matter here. */
static uint64_t rng_below(emb_rng *r, uint64_t bound)
{
    return (uint64_t)(((unsigned __int128)emb_rng_next(r) * bound) >> 64);
}

/* ---- the hash set ---------------------------------------------------------- */

static uint32_t loc_make(int r, int i)
{
    return (uint32_t)r << 30 | (uint32_t)i;
}

static size_t hset_home(const hset *h, uint64_t key)
{
    return (size_t)mix64(key ^ h->salt) & (h->cap - 1);
}

static int hset_alloc(hset *h, size_t cap)
{
    h->keys = calloc(cap, sizeof *h->keys);
    h->vals = calloc(cap, sizeof *h->vals);
    h->cap = cap;
    h->n = 0;
    return (h->keys != NULL && h->vals != NULL) ? 0 : -1;
}

static void hset_free(hset *h)
{
    free(h->keys);
    free(h->vals);
    h->keys = NULL;
    h->vals = NULL;
}

/* The key's position, or its empty probe end when absent. */
static size_t hset_find(const hset *h, uint64_t key)
{
    size_t i = hset_home(h, key);
    while (h->keys[i] != 0 && h->keys[i] != key)
        i = (i + 1) & (h->cap - 1);
    return i;
}

static int hset_has(const hset *h, uint64_t key)
{
    return h->keys[hset_find(h, key)] == key;
}

/* Inserts or updates. The set is sized for the caps at open and grows only
 * when a replayed log holds more than they allow. */
static int hset_put(hset *h, uint64_t key, uint32_t val)
{
    size_t i = hset_find(h, key);
    if (h->keys[i] == key) {
        h->vals[i] = val;
        return 0;
    }
    if ((h->n + 1) * 2 > h->cap) {
        hset old = *h;
        if (hset_alloc(h, old.cap * 2) != 0) {
            hset_free(h);
            *h = old;
            return -1;
        }
        h->salt = old.salt;
        for (size_t k = 0; k < old.cap; k++) {
            if (old.keys[k] != 0)
                hset_put(h, old.keys[k], old.vals[k]);
        }
        hset_free(&old);
        i = hset_find(h, key);
    }
    h->keys[i] = key;
    h->vals[i] = val;
    h->n++;
    return 0;
}

/* Backward-shift deletion: pull later members of the probe chain into the
 * hole, so lookups never need tombstones. */
static void hset_del(hset *h, uint64_t key)
{
    size_t mask = h->cap - 1;
    size_t hole = hset_find(h, key);
    if (h->keys[hole] != key)
        return;
    size_t i = hole;
    for (;;) {
        i = (i + 1) & mask;
        if (h->keys[i] == 0)
            break;
        size_t home = hset_home(h, h->keys[i]);
        /* the entry may move to the hole if its home is not in (hole, i] */
        int stays = (hole < i) ? (home > hole && home <= i) : (home > hole || home <= i);
        if (stays)
            continue;
        h->keys[hole] = h->keys[i];
        h->vals[hole] = h->vals[i];
        hole = i;
    }
    h->keys[hole] = 0;
    h->n--;
}

/* ---- records ---------------------------------------------------------------- */

static int buf_reserve(buf *b, size_t more)
{
    return emb_bytes_reserve(&b->p, &b->cap, b->len + more, 4096);
}

static void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Appends one framed record: head and body make the payload. */
static int buf_record(buf *b, const unsigned char *head, size_t head_len, const char *body,
                      size_t body_len)
{
    size_t len = head_len + body_len;
    if (buf_reserve(b, REC_HEADER + len) != 0)
        return -1;
    unsigned char *r = b->p + b->len;
    memcpy(r + REC_HEADER, head, head_len);
    if (body_len > 0)
        memcpy(r + REC_HEADER + head_len, body, body_len);
    reclog_frame(r, r + REC_HEADER, len);
    b->len += REC_HEADER + len;
    return 0;
}

static int encode_slot(buf *b, int r, int i, const char *text, size_t len)
{
    unsigned char head[SLOT_FIXED] = {REC_SLOT, (unsigned char)r};
    emb_put_u32(head + 2, (uint32_t)i);
    return buf_record(b, head, sizeof head, text, len);
}

static int encode_counters(buf *b, const samples *s)
{
    const counters *c = &s->c;
    uint64_t v[N_COUNTERS];
    int k = 0;
    v[k++] = c->version;
    v[k++] = c->holdout_version;
    v[k++] = c->duplicates;
    v[k++] = c->ignored;
    v[k++] = c->truncated;
    for (int i = 0; i < SAMPLES_N_SOURCES; i++)
        v[k++] = c->received[i];
    for (int i = 0; i < SAMPLES_N_SOURCES; i++)
        v[k++] = c->added[i];
    for (int r = 0; r < N_RES; r++)
        v[k++] = s->res[r].seen;
    unsigned char head[1 + 8 * N_COUNTERS] = {REC_COUNTERS};
    for (int i = 0; i < N_COUNTERS; i++)
        emb_put_u64(head + 1 + 8 * i, v[i]);
    return buf_record(b, head, sizeof head, NULL, 0);
}

/* Notes a change for the log. A failed allocation or a full pending buffer
 * drops the pending records: the next flush rewrites the whole state. */
static void log_note(samples *s, int rc)
{
    if (rc != 0 || s->pending.len > s->o.pending_max) {
        buf_free(&s->pending);
        s->must_compact = 1;
    }
}

static void note_slot(samples *s, int r, int i)
{
    if (!s->persist || s->must_compact)
        return;
    const slot *sl = &s->res[r].slots[i];
    log_note(s, encode_slot(&s->pending, r, i, sl->text, sl->len));
}

static void note_drop(samples *s, int r, int i)
{
    if (!s->persist || s->must_compact)
        return;
    unsigned char head[SLOT_FIXED] = {REC_DROP, (unsigned char)r};
    emb_put_u32(head + 2, (uint32_t)i);
    log_note(s, buf_record(&s->pending, head, sizeof head, NULL, 0));
}

/* ---- reservoirs -------------------------------------------------------------- */

/* Writes text (taking ownership) into slot i of reservoir r: i == n appends,
 * i < n replaces. The caller has checked that the hash is not present. */
static int res_put(samples *s, int r, int i, char *text, uint32_t len, uint64_t hash)
{
    reservoir *rv = &s->res[r];
    if (i == rv->n && rv->n == rv->alloc) {
        int alloc = rv->alloc > 0 ? rv->alloc * 2 : 1024;
        slot *p = realloc(rv->slots, (size_t)alloc * sizeof *p);
        if (p == NULL)
            return -1;
        rv->slots = p;
        rv->alloc = alloc;
    }
    if (hset_put(&s->set, hash, loc_make(r, i)) != 0)
        return -1;
    slot *sl = &rv->slots[i];
    if (i < rv->n) {
        hset_del(&s->set, sl->hash);
        rv->bytes -= sl->len;
        free(sl->text);
    } else {
        rv->n++;
    }
    sl->text = text;
    sl->len = len;
    sl->hash = hash;
    rv->bytes += len;
    s->c.version++;
    s->c.holdout_version += (uint64_t)(r == RES_HELD);
    note_slot(s, r, i);
    return 0;
}

/* Removes slot i; the last slot moves into it, so the slots stay dense. */
static void res_drop(samples *s, int r, int i)
{
    reservoir *rv = &s->res[r];
    slot *sl = &rv->slots[i];
    hset_del(&s->set, sl->hash);
    rv->bytes -= sl->len;
    free(sl->text);
    int last = rv->n - 1;
    if (i != last) {
        *sl = rv->slots[last];
        hset_put(&s->set, sl->hash, loc_make(r, i)); /* an update: never grows */
    }
    rv->n--;
    s->c.version++;
    s->c.holdout_version += (uint64_t)(r == RES_HELD);
    note_drop(s, r, i);
}

/* Evicts random slots other than keep (-1: none) until the reservoir is
 * within its caps. */
static void res_fit(samples *s, int r, int keep)
{
    reservoir *rv = &s->res[r];
    while (rv->n > 0 && (rv->n > rv->cap || rv->bytes > rv->cap_bytes)) {
        int others = keep >= 0 ? rv->n - 1 : rv->n;
        if (others == 0)
            break;
        int e = (int)rng_below(&s->rng, (uint64_t)others);
        if (keep >= 0 && e >= keep)
            e++;
        if (keep == rv->n - 1)
            keep = e; /* the kept slot is the last one: it moves into e */
        res_drop(s, r, e);
    }
}

/* Algorithm R: which slot a new distinct text goes to, or -1 when it is
 * not sampled. Counts it as seen. */
static int res_choose(samples *s, int r, size_t len)
{
    reservoir *rv = &s->res[r];
    rv->seen++;
    if (rv->n < rv->cap && rv->bytes + len <= rv->cap_bytes)
        return rv->n;
    uint64_t j = rng_below(&s->rng, rv->seen);
    return j < (uint64_t)rv->n ? (int)j : -1;
}

/* ---- adding and reading ---------------------------------------------------- */

int samples_add(samples *s, const char *text, size_t len, int source)
{
    if (s == NULL || (text == NULL && len > 0) || source < 0 || source >= SAMPLES_N_SOURCES)
        return -1;
    if (text == NULL)
        text = "";
    int cut = 0;
    int ok = text_prepare(&s->o, &text, &len, &cut);
    uint64_t hash = ok ? text_hash(text, len) : 0;
    int r = (ok && is_held_out(hash, s->o.holdout_fraction)) ? RES_HELD : RES_TRAIN;
    int result = 0;
    pthread_mutex_lock(&s->lock);
    s->c.received[source]++;
    s->dirty = 1;
    if (!ok) {
        s->c.ignored++;
        goto out;
    }
    s->c.truncated += (uint64_t)cut;
    if (hset_has(&s->set, hash)) {
        s->c.duplicates++;
        goto out;
    }
    int i = res_choose(s, r, len);
    if (i < 0)
        goto out;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        goto out;
    memcpy(copy, text, len);
    copy[len] = '\0';
    if (res_put(s, r, i, copy, (uint32_t)len, hash) != 0) {
        free(copy);
        goto out;
    }
    res_fit(s, r, i);
    s->c.added[source]++;
    result = 1;
out:
    pthread_mutex_unlock(&s->lock);
    return result;
}

static void free_texts(char **texts, int n)
{
    for (int i = 0; i < n; i++)
        free(texts[i]);
}

/* Floyd's algorithm picks k distinct slots of n (a uniform subset, in no
 * uniform order), then a shuffle fixes the order. */
static int draw_locked(samples *s, int k, emb_rng *rng, char **out)
{
    const reservoir *rv = &s->res[RES_TRAIN];
    unsigned char *taken = calloc((size_t)rv->n / 8 + 1, 1);
    if (taken == NULL)
        return -1;
    int got = 0;
    for (int j = rv->n - k; j < rv->n; j++) {
        int t = (int)rng_below(rng, (uint64_t)j + 1);
        if (taken[t / 8] & (1 << (t % 8)))
            t = j;
        taken[t / 8] |= (unsigned char)(1 << (t % 8));
        out[got] = strdup(rv->slots[t].text);
        if (out[got] == NULL) {
            free_texts(out, got);
            free(taken);
            return -1;
        }
        got++;
    }
    free(taken);
    for (int i = got - 1; i > 0; i--) {
        int j = (int)rng_below(rng, (uint64_t)i + 1);
        char *tmp = out[i];
        out[i] = out[j];
        out[j] = tmp;
    }
    return got;
}

int samples_draw(samples *s, int n, emb_rng *rng, char **out, int cap)
{
    int k = n < cap ? n : cap;
    if (k <= 0)
        return 0;
    pthread_mutex_lock(&s->lock);
    if (k > s->res[RES_TRAIN].n)
        k = s->res[RES_TRAIN].n;
    int got = k > 0 ? draw_locked(s, k, rng, out) : 0;
    pthread_mutex_unlock(&s->lock);
    return got;
}

static int slot_cmp(const void *a, const void *b)
{
    const slot *x = *(const slot *const *)a;
    const slot *y = *(const slot *const *)b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

int samples_holdout(samples *s, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    int result = -1;
    pthread_mutex_lock(&s->lock);
    const reservoir *rv = &s->res[RES_HELD];
    int m = rv->n;
    const slot **order = malloc(((size_t)m + 1) * sizeof *order);
    char **texts = malloc(((size_t)m + 1) * sizeof *texts);
    if (order == NULL || texts == NULL)
        goto out;
    for (int i = 0; i < m; i++)
        order[i] = &rv->slots[i];
    qsort(order, (size_t)m, sizeof *order, slot_cmp);
    for (int i = 0; i < m; i++) {
        texts[i] = strdup(order[i]->text);
        if (texts[i] == NULL) {
            free_texts(texts, i);
            goto out;
        }
    }
    *out = texts;
    *n = m;
    texts = NULL;
    result = 0;
out:
    pthread_mutex_unlock(&s->lock);
    free(order);
    free(texts);
    return result;
}

void samples_stats_get(samples *s, samples_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&s->lock);
    const reservoir *tr = &s->res[RES_TRAIN];
    const reservoir *ho = &s->res[RES_HELD];
    st->train = (uint64_t)tr->n;
    st->holdout = (uint64_t)ho->n;
    st->train_bytes = tr->bytes;
    st->holdout_bytes = ho->bytes;
    st->train_seen = tr->seen;
    st->holdout_seen = ho->seen;
    st->seen = tr->seen + ho->seen;
    st->duplicates = s->c.duplicates;
    st->ignored = s->c.ignored;
    st->truncated = s->c.truncated;
    memcpy(st->received, s->c.received, sizeof st->received);
    memcpy(st->added, s->c.added, sizeof st->added);
    st->version = s->c.version;
    st->holdout_version = s->c.holdout_version;
    st->log_bytes = s->log_bytes;
    st->pending_bytes = s->pending.len;
    st->flushes = s->flushes;
    st->compactions = s->compactions;
    st->replayed = s->replayed;
    st->truncated_bytes = s->truncated_bytes;
    st->io_errors = s->io_errors;
    snprintf(st->recovery, sizeof st->recovery, "%s", s->recovery);
    pthread_mutex_unlock(&s->lock);
}

/* ---- replay ------------------------------------------------------------------ */

static int decode_counters(samples *s, const unsigned char *p, size_t len)
{
    if (len != 1 + 8 * N_COUNTERS)
        return 1;
    p++;
    counters *c = &s->c;
    c->version = emb_get_u64(p);
    c->holdout_version = emb_get_u64(p + 8);
    c->duplicates = emb_get_u64(p + 16);
    c->ignored = emb_get_u64(p + 24);
    c->truncated = emb_get_u64(p + 32);
    p += 40;
    for (int i = 0; i < SAMPLES_N_SOURCES; i++, p += 8)
        c->received[i] = emb_get_u64(p);
    for (int i = 0; i < SAMPLES_N_SOURCES; i++, p += 8)
        c->added[i] = emb_get_u64(p);
    for (int r = 0; r < N_RES; r++, p += 8)
        s->res[r].seen = emb_get_u64(p);
    return 0;
}

static int apply_slot(samples *s, int r, int i, const unsigned char *text, size_t len)
{
    reservoir *rv = &s->res[r];
    if (i > rv->n || i >= SLOTS_MAX || memchr(text, '\0', len) != NULL)
        return 1;
    uint64_t hash = text_hash((const char *)text, len);
    if (hset_has(&s->set, hash))
        return 1; /* a log never holds one text twice */
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return -1;
    memcpy(copy, text, len);
    copy[len] = '\0';
    if (res_put(s, r, i, copy, (uint32_t)len, hash) != 0) {
        free(copy);
        return -1;
    }
    return 0;
}

/* Applies one payload. Returns 0, 1 when it is malformed, -1 out of memory. */
static int apply_record(samples *s, const unsigned char *p, size_t len)
{
    if (len >= 1 && p[0] == REC_COUNTERS)
        return decode_counters(s, p, len);
    if (len < SLOT_FIXED || p[1] >= N_RES)
        return 1;
    int r = p[1];
    uint32_t i = emb_get_u32(p + 2);
    if (p[0] == REC_SLOT)
        return apply_slot(s, r, (int)(i < SLOTS_MAX ? i : SLOTS_MAX), p + SLOT_FIXED,
                          len - SLOT_FIXED);
    if (p[0] == REC_DROP && len == SLOT_FIXED && i < (uint32_t)s->res[r].n) {
        res_drop(s, r, (int)i);
        return 0;
    }
    return 1;
}

/* reclog's record function: one payload. */
static int replay_record(void *user, const unsigned char *p, size_t len, emb_err *err)
{
    samples *s = user;
    int rc = apply_record(s, p, len);
    if (rc < 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "%s/%s: out of memory replaying it",
                           s->dir, LOG_NAME);
    if (rc > 0) {
        emb_fail(err, "malformed record");
        return 1;
    }
    s->replayed++;
    return 0;
}

/* ---- writing the log ------------------------------------------------------- */

/* Appends records to the log and fsyncs. A failed write is undone; the
 * caller makes the next flush rewrite the log. */
static int log_append(samples *s, const buf *b, emb_err *err)
{
    if (b->len == 0)
        return 0;
    if (reclog_write(s->log, b->p, b->len, err) != 0)
        return -1;
    return reclog_sync(s->log, err);
}

/* The size of a log that holds only the live state. */
static uint64_t live_bytes(const samples *s)
{
    uint64_t n = HEADER_SIZE + REC_HEADER + 1 + 8 * N_COUNTERS;
    for (int r = 0; r < N_RES; r++)
        n += (uint64_t)s->res[r].n * (REC_HEADER + SLOT_FIXED) + s->res[r].bytes;
    return n;
}

/* The live state as records: every slot in order, then the counters. */
static int encode_state(const samples *s, buf *b)
{
    if (buf_reserve(b, (size_t)live_bytes(s)) != 0)
        return -1;
    for (int r = 0; r < N_RES; r++) {
        const reservoir *rv = &s->res[r];
        for (int i = 0; i < rv->n; i++) {
            if (encode_slot(b, r, i, rv->slots[i].text, rv->slots[i].len) != 0)
                return -1;
        }
    }
    return encode_counters(b, s);
}

/* Rewrites the log from the live state. Records noted meanwhile are in the
 * copy, so the pending ones are dropped once the new log is in place; if
 * it fails, they still go to the old log (unless it was already behind). */
static int log_compact(samples *s, emb_err *err)
{
    buf state = {0};
    pthread_mutex_lock(&s->lock);
    int behind = s->must_compact;
    buf rest = s->pending;
    memset(&s->pending, 0, sizeof s->pending);
    int rc = encode_state(s, &state);
    if (rc == 0) {
        s->must_compact = 0;
        s->dirty = 0;
    }
    pthread_mutex_unlock(&s->lock);
    int done = rc == 0 && reclog_reset(s->log, NULL, state.p, state.len, err) == 0;
    if (rc != 0)
        emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory compacting %s/%s", s->dir, LOG_NAME);
    if (done) {
        /* the pending records are in the new log */
    } else if (behind || log_append(s, &rest, err) != 0) {
        pthread_mutex_lock(&s->lock);
        s->must_compact = 1;
        s->dirty = 1;
        pthread_mutex_unlock(&s->lock);
    }
    buf_free(&state);
    buf_free(&rest);
    return done ? 0 : -1;
}

/* Writes the pending records and a counters record. */
static int flush_pending(samples *s, emb_err *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->dirty)
        rc = encode_counters(&s->pending, s);
    s->dirty = 0;
    buf out = s->pending;
    memset(&s->pending, 0, sizeof s->pending);
    if (rc != 0)
        s->must_compact = 1;
    pthread_mutex_unlock(&s->lock);
    rc = log_append(s, &out, err);
    buf_free(&out);
    if (rc != 0) {
        pthread_mutex_lock(&s->lock);
        s->must_compact = 1;
        pthread_mutex_unlock(&s->lock);
    }
    return rc;
}

int samples_flush(samples *s, emb_err *err)
{
    if (!s->persist)
        return 0;
    pthread_mutex_lock(&s->flush_lock);
    pthread_mutex_lock(&s->lock);
    int behind = s->must_compact;
    pthread_mutex_unlock(&s->lock);
    int failures = 0;
    if (!behind && flush_pending(s, err) != 0)
        failures++;
    pthread_mutex_lock(&s->lock);
    int compact = s->must_compact ||
                  (reclog_size(s->log) > s->o.compact_min_bytes &&
                   reclog_size(s->log) > 2 * live_bytes(s));
    pthread_mutex_unlock(&s->lock);
    /* After a failed append, a rewrite into a fresh file may still work. */
    int rc = failures > 0 ? -1 : 0;
    if (compact) {
        rc = log_compact(s, err);
        failures += rc != 0;
    }
    pthread_mutex_lock(&s->lock);
    s->flushes++;
    s->compactions += (uint64_t)(compact && rc == 0);
    s->io_errors += (uint64_t)failures;
    s->log_bytes = reclog_size(s->log);
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&s->flush_lock);
    return rc;
}

/* ---- open and close --------------------------------------------------------- */

void samples_opts_init(samples_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_texts = 100000;
    o->max_bytes = (size_t)64 << 20;
    o->max_chars = 2000;
    o->min_chars = 8;
    o->holdout_fraction = 0.05;
    o->holdout_max = 2000;
    o->seed = 0;
    o->compact_min_bytes = (size_t)1 << 20;
    o->pending_max = (size_t)16 << 20;
}

static int opts_check(const samples_opts *o, emb_err *err)
{
    if (o->max_texts < 1 || o->max_texts >= SLOTS_MAX)
        return emb_fail(err, "samples: max_texts %d out of range", o->max_texts);
    if (o->holdout_max < 0 || o->holdout_max >= SLOTS_MAX)
        return emb_fail(err, "samples: holdout_max %d out of range", o->holdout_max);
    if (o->max_chars < 4 || o->min_chars < 0 || o->min_chars > o->max_chars)
        return emb_fail(err, "samples: need 0 <= min_chars (%d) <= max_chars (%d), 4 <= max_chars",
                        o->min_chars, o->max_chars);
    if (o->max_bytes < (size_t)o->max_chars)
        return emb_fail(err, "samples: max_bytes %zu is below max_chars %d", o->max_bytes,
                        o->max_chars);
    if (o->pending_max < 1)
        return emb_fail(err, "samples: pending_max must be positive");
    if (!(o->holdout_fraction >= 0.0 && o->holdout_fraction <= 1.0))
        return emb_fail(err, "samples: holdout_fraction %g is not in [0, 1]",
                        o->holdout_fraction);
    return 0;
}

static void samples_free(samples *s)
{
    for (int r = 0; r < N_RES; r++) {
        for (int i = 0; i < s->res[r].n; i++)
            free(s->res[r].slots[i].text);
        free(s->res[r].slots);
    }
    hset_free(&s->set);
    buf_free(&s->pending);
    reclog_close(s->log);
    emb_dirlock_release(s->lock_fd);
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->flush_lock);
    free(s->dir);
    free(s);
}

static uint64_t clock_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return mix64((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^
           (uint64_t)getpid();
}

static int state_init(samples *s, const samples_opts *o, emb_err *err)
{
    s->o = *o;
    emb_rng_seed(&s->rng, o->seed != 0 ? o->seed : clock_seed());
    s->res[RES_TRAIN].cap = o->max_texts;
    s->res[RES_TRAIN].cap_bytes = o->max_bytes;
    s->res[RES_HELD].cap = o->holdout_max;
    s->res[RES_HELD].cap_bytes = SIZE_MAX;
    size_t cap = 1024;
    while (cap < 2 * ((size_t)o->max_texts + (size_t)o->holdout_max))
        cap *= 2;
    if (hset_alloc(&s->set, cap) != 0)
        return emb_fail(err, "samples: out of memory");
    s->set.salt = emb_rng_next(&s->rng);
    return 0;
}

static const reclog_format log_format = {
    .magic = {'E', 'M', 'B', 'D', 'S', 'M', 'P', 'L'},
    .version = LOG_VERSION,
    .extra = 0,
    .min_len = 1,
    .max_len = REC_MAX,
    .file_mode = 0600,         /* request texts: readable by the server's user only */
};

/* Opens the directory, takes its lock and replays the log. */
static int disk_open(samples *s, const char *dir, emb_err *err)
{
    s->dir = strdup(dir);
    if (s->dir == NULL)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "samples: out of memory");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", dir, strerror(errno));
    s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0)
        return emb_fail_as(err, EMB_ERR_IO, "%s: %s", dir, strerror(errno));
    s->lock_fd = emb_dirlock_take(s->dir_fd, dir, LOCK_NAME, "sample buffer", err);
    if (s->lock_fd < 0)
        return -1;
    unlinkat(s->dir_fd, LOG_TMP, 0); /* a compaction that did not finish */
    reclog_replay fns = {.record = replay_record, .user = s};
    reclog_recovery rec;
    s->log = reclog_open(s->dir_fd, dir, LOG_NAME, &log_format, NULL, &fns, &rec, err);
    if (s->log == NULL)
        return -1;
    s->truncated_bytes = rec.truncated_bytes;
    snprintf(s->recovery, sizeof s->recovery, "%.255s", rec.message);
    s->log_bytes = reclog_size(s->log);
    return 0;
}

samples *samples_open(const char *dir, const samples_opts *o, emb_err *err)
{
    samples_opts defaults;
    if (o == NULL) {
        samples_opts_init(&defaults);
        o = &defaults;
    }
    if (opts_check(o, err) != 0)
        return NULL;
    samples *s = calloc(1, sizeof *s);
    if (s == NULL) {
        emb_fail(err, "samples: out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->flush_lock, NULL);
    s->lock_fd = -1;
    s->dir_fd = -1;
    if (state_init(s, o, err) != 0)
        goto fail;
    if (dir != NULL && disk_open(s, dir, err) != 0)
        goto fail;
    s->persist = dir != NULL;
    uint64_t version = s->c.version;
    /* Lower caps than the log was written with: evict down to them (the
     * drops go to the log with the next flush). A lost counters record may
     * leave seen below the count; Algorithm R needs seen >= count. */
    for (int r = 0; r < N_RES; r++) {
        res_fit(s, r, -1);
        if (s->res[r].seen < (uint64_t)s->res[r].n)
            s->res[r].seen = (uint64_t)s->res[r].n;
    }
    s->dirty = s->c.version != version;
    return s;
fail:
    samples_free(s);
    return NULL;
}

void samples_close(samples *s)
{
    if (s == NULL)
        return;
    emb_err err;
    samples_flush(s, &err);
    samples_free(s);
}

/* Replays each record that verifies into a scratch buffer in memory and
 * keeps those it accepts. A lost slot record leaves a gap in the slot
 * numbers: the next ones close it (their numbers shift, so a later drop may
 * hit a neighbour: this is a sample of texts, not a store). */
static int salvage_record(void *user, unsigned char *p, size_t len, emb_err *err)
{
    samples *scratch = user;
    if (len >= SLOT_FIXED && p[0] == REC_SLOT && p[1] < N_RES) {
        uint32_t n = (uint32_t)scratch->res[p[1]].n;
        if (emb_get_u32(p + 2) > n)
            emb_put_u32(p + 2, n);
    }
    int rc = apply_record(scratch, p, len);
    if (rc < 0)
        return emb_fail_as(err, EMB_ERR_NO_MEMORY, "out of memory repairing the sample log");
    return rc == 0;
}

int samples_repair(const char *dir, int dir_fd, reclog_salvage_report *rep, emb_err *err)
{
    samples *scratch = samples_open(NULL, NULL, err);
    if (scratch == NULL)
        return -1;
    reclog_salvage_fns fns = {.record = salvage_record, .user = scratch};
    int rc = reclog_salvage(dir_fd, dir, LOG_NAME, &log_format, &fns, rep, err);
    samples_free(scratch);
    return rc;
}
