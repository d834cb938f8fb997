/* libFuzzer target: arbitrary bytes as config.json (and as the pooling
 * config) of a model directory. Loading fails cleanly or gives sane sizes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

static char dir[64];

static void write_file(const char *name, const uint8_t *data, size_t size)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (fp == NULL)
        abort();
    fwrite(data, 1, size, fp);
    fclose(fp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0') {
        snprintf(dir, sizeof dir, "/tmp/embedd-fuzz-config-XXXXXX");
        if (mkdtemp(dir) == NULL)
            abort();
        char sub[128];
        snprintf(sub, sizeof sub, "%s/1_Pooling", dir);
        mkdir(sub, 0755);
        static const char modules[] =
            "[{\"idx\":0,\"name\":\"0\",\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
            "{\"idx\":1,\"name\":\"1\",\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"}]";
        write_file("modules.json", (const uint8_t *)modules, sizeof modules - 1);
    }
    emb_config cfg;
    emb_err err;
    /* the input as config.json, with a valid pooling config */
    write_file("config.json", data, size);
    static const char pooling[] = "{\"pooling_mode\": \"cls\"}";
    write_file("1_Pooling/config.json", (const uint8_t *)pooling, sizeof pooling - 1);
    if (emb_config_load(&cfg, dir, &err) == 0) {
        if (cfg.hidden_size <= 0 || cfg.num_attention_heads <= 0 ||
            cfg.hidden_size % cfg.num_attention_heads != 0 || cfg.max_seq_length <= 0)
            abort();
    }
    /* a valid config.json, with the input as the pooling config */
    static const char config[] =
        "{\"vocab_size\":10,\"hidden_size\":8,\"num_hidden_layers\":1,"
        "\"num_attention_heads\":2,\"intermediate_size\":16}";
    write_file("config.json", (const uint8_t *)config, sizeof config - 1);
    write_file("1_Pooling/config.json", data, size);
    emb_config_load(&cfg, dir, &err);
    return 0;
}
