/* crc32c.c: see crc32c.h. */
#include "crc32c.h"

#include <pthread.h>

#include "bytes.h"

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (int i = 0; i < 256; i++) {
        for (int s = 1; s < 8; s++) {
            uint32_t prev = crc_table[s - 1][i];
            crc_table[s][i] = (prev >> 8) ^ crc_table[0][prev & 0xff];
        }
    }
}

uint32_t emb_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ emb_get_u32(p);
        uint32_t hi = emb_get_u32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        crc = crc_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
        p++;
        n--;
    }
    return ~crc;
}
