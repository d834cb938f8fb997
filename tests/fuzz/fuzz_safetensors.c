/* libFuzzer target: arbitrary bytes as a model.safetensors file. Opening
 * either fails cleanly or yields tensors whose data can be read. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("st", 0);
    if (fd < 0)
        abort();
    if (size > 0 && write(fd, data, size) != (ssize_t)size)
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    emb_st_file f;
    emb_err err;
    if (emb_st_open(&f, path, &err) == 0) {
        for (int i = 0; i < f.n_tensors; i++) {
            const emb_st_tensor *t = &f.tensors[i];
            int64_t n = emb_st_numel(t);
            if (n > (1 << 20))
                continue;
            float *dst = malloc(sizeof(float) * (size_t)(n + 1));
            emb_st_read_f32(&f, t, dst, &err);
            free(dst);
        }
        emb_st_close(&f);
    }
    close(fd);
    return 0;
}
