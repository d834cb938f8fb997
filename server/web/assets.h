/* assets.h: the web console, the API docs page and the OpenAPI document,
 * bundled into the binary at build time (assets.c), so that `embedd serve`
 * needs no files at run time and no CDN: server/web/console.html,
 * docs.html and openapi.json are the sources. Read-only, any thread. */
#ifndef EMBEDD_WEB_ASSETS_H
#define EMBEDD_WEB_ASSETS_H

#include <stddef.h>

typedef struct web_asset {
    const char *name;          /* the source's file name, "console.html" */
    const char *content_type;
    const char *data;          /* the file's bytes, followed by a NUL */
    size_t len;                /* without that NUL */
} web_asset;

/* Fills out with the asset of that file name: 1, or 0 when there is none. */
int web_asset_find(const char *name, web_asset *out);

#endif
