/* crc32c.h: CRC-32C (Castagnoli), the checksum of every on-disk format
 * (record logs, snapshots). Table-driven, slicing by 8; the tables are
 * built once, on first use, under pthread_once, so any thread may call it. */
#ifndef EMBEDD_CRC32C_H
#define EMBEDD_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc is the running value: 0 to start, then the previous result to
 * continue over more bytes. */
uint32_t emb_crc32c(uint32_t crc, const void *data, size_t n);

#endif
