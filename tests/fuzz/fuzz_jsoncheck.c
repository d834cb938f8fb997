/* libFuzzer target: arbitrary bytes as a request body through json_check
 * (server/http/jsoncheck.h), then cJSON as route_parse_body runs them.
 * json_check must never crash or read out of bounds, and what it lets
 * through must keep its promise: once cJSON has parsed such a body, every
 * string in it (keys included), escapes decoded, is well-formed UTF-8 (a
 * lone surrogate escape that slipped through would decode to ED A0..BF). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "http/jsoncheck.h"

static void check_strings(const cJSON *item)
{
    for (; item != NULL; item = item->next) {
        if (item->string != NULL && utf8_check(item->string, strlen(item->string), NULL) != JSON_OK)
            abort();
        if (cJSON_IsString(item) &&
            utf8_check(item->valuestring, strlen(item->valuestring), NULL) != JSON_OK)
            abort();
        check_strings(item->child);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_fault f;
    json_fault_kind k = json_check((const char *)data, size, &f);
    if (k != JSON_OK) {
        if (f.offset > size || f.reason == NULL || memchr(f.field, '\0', sizeof f.field) == NULL)
            abort();
        return 0;
    }
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    if (root != NULL)
        check_strings(root);
    cJSON_Delete(root);
    return 0;
}
