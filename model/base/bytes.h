/* bytes.h: little-endian field access for the on-disk formats (the item
 * WAL, snapshots, the sample log, any record log), and the growth of the
 * byte buffers that build them. */
#ifndef EMBEDD_BYTES_H
#define EMBEDD_BYTES_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline void emb_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void emb_put_u64(unsigned char *p, uint64_t v)
{
    emb_put_u32(p, (uint32_t)v);
    emb_put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t emb_get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t emb_get_u64(const unsigned char *p)
{
    return (uint64_t)emb_get_u32(p) | (uint64_t)emb_get_u32(p + 4) << 32;
}

/* Makes room for need bytes in *p (capacity *cap), doubling from
 * first_cap. 0, or -1 when out of memory (*p and *cap unchanged). */
static inline int emb_bytes_reserve(unsigned char **p, size_t *cap, size_t need, size_t first_cap)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap > 0 ? *cap : first_cap;
    while (c < need)
        c *= 2;
    unsigned char *q = realloc(*p, c);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

#endif
