/* reffixture.h: reading the PyTorch reference fixtures (safetensors files
 * written by scripts/gen_*_reference.py) in the Check suites (header-only). */
#ifndef EMBEDD_REFFIXTURE_H
#define EMBEDD_REFFIXTURE_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "safetensors.h"

/* A tensor of the fixture as floats (caller frees); *n (if not NULL) gets
 * its size. Fails the test when it is missing. */
static inline float *rf_tensor(const emb_st_file *ref, const char *name, long *n)
{
    const emb_st_tensor *t = emb_st_find(ref, name);
    ck_assert_msg(t != NULL, "fixture has no %s", name);
    long cnt = (long)emb_st_numel(t);
    float *out = malloc(sizeof(float) * (size_t)cnt);
    emb_err err;
    ck_assert(out != NULL);
    ck_assert_msg(emb_st_read_f32(ref, t, out, &err) == 0, "%s", err.msg);
    if (n != NULL)
        *n = cnt;
    return out;
}

/* A value of the fixture's "__metadata__" (the JSON header after its
 * 8-byte length), as a number. */
static inline double rf_setting(const emb_st_file *ref, const char *key)
{
    uint64_t len;
    memcpy(&len, ref->map, sizeof len);
    cJSON *root = cJSON_ParseWithLength((const char *)ref->map + 8, (size_t)len);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    ck_assert_msg(cJSON_IsString(v), "fixture metadata has no %s", key);
    double out = atof(v->valuestring);
    cJSON_Delete(root);
    return out;
}

#endif
