/* safetensors.h: read and write Hugging Face safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {str: str}}, then the data area. Offsets are relative to
 * the start of the data area.
 *
 * Reading mmaps the file and validates the whole header before any tensor is
 * used: offsets inside the data area, no overlaps, byte length equal to
 * numel * dtype size. A truncated or corrupted file is an error, never a
 * crash. */
#ifndef EMBEDD_SAFETENSORS_H
#define EMBEDD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define EMB_ST_MAX_DIMS 8

typedef enum emb_dtype {
    EMB_DT_F32 = 0,
    EMB_DT_F16,
    EMB_DT_BF16,
    EMB_DT_F64,
    EMB_DT_I64,
    EMB_DT_I32,
    EMB_DT_I16,
    EMB_DT_I8,
    EMB_DT_U8,
    EMB_DT_BOOL,
} emb_dtype;

typedef struct emb_st_tensor {
    const char *name;              /* NUL-terminated, owned by the file */
    emb_dtype dtype;
    int ndim;
    int64_t shape[EMB_ST_MAX_DIMS];
    size_t begin, end;             /* byte offsets into the data area */
} emb_st_tensor;

typedef struct emb_st_file {
    void *map;                     /* whole file, mmap'd read-only */
    size_t map_size;
    const unsigned char *data;     /* start of the data area */
    size_t data_size;
    emb_st_tensor *tensors;
    int n_tensors;
    char *names;                   /* storage for tensor names */
} emb_st_file;

/* Bytes per element; 0 for an unknown dtype. */
size_t emb_dtype_size(emb_dtype dt);
const char *emb_dtype_name(emb_dtype dt);

/* Opens and validates path. On failure f is left closed (safe to close). */
int emb_st_open(emb_st_file *f, const char *path, emb_err *err);
void emb_st_close(emb_st_file *f);

/* Exact-name lookup; NULL when absent. */
const emb_st_tensor *emb_st_find(const emb_st_file *f, const char *name);
int64_t emb_st_numel(const emb_st_tensor *t);

/* Converts a F32, F16 or BF16 tensor to f32 into dst (numel floats).
 * Any other dtype is an error that names the tensor and the dtype. */
int emb_st_read_f32(const emb_st_file *f, const emb_st_tensor *t, float *dst, emb_err *err);

/* One tensor to write: data is f32, converted to dtype (F32, F16 or BF16,
 * round to nearest even) on the way out. */
typedef struct emb_st_entry {
    const char *name;
    emb_dtype dtype;
    int ndim;
    int64_t shape[EMB_ST_MAX_DIMS];
    const float *data;
} emb_st_entry;

/* Writes a safetensors file to path (via path.tmp + fsync + rename).
 * metadata_json may be NULL, else a JSON object of string values written as
 * "__metadata__". */
int emb_st_write(const char *path, const emb_st_entry *entries, int n_entries,
                 const char *metadata_json, emb_err *err);

/* Scalar conversions, exposed for tests and for the encoder. */
float emb_f16_to_f32(uint16_t h);
uint16_t emb_f32_to_f16(float f);
float emb_bf16_to_f32(uint16_t b);
uint16_t emb_f32_to_bf16(float f);

#endif
