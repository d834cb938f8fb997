/* assets.c: the files of server/web/, embedded with the assembler's
 * .incbin, so no generator and no tool beyond build-essential is needed.
 * The paths are relative to the repository root, where make runs the
 * compiler; the Makefile makes this object depend on the files, since
 * -MMD does not see .incbin. Each file is followed by a NUL, so its data
 * may also be used as a C string. */
#include <string.h>

#include "assets.h"

/* Defines <sym>_start and <sym>_end around the bytes of file. Hidden
 * globals rather than local labels, so the C references below resolve the
 * same way with and without PIE. */
#define WEB_EMBED(sym, file)                                                                    \
    __asm__(".pushsection .rodata\n"                                                           \
            ".globl " #sym "_start\n.hidden " #sym "_start\n"                                  \
            ".globl " #sym "_end\n.hidden " #sym "_end\n"                                      \
            ".balign 16\n" #sym "_start:\n"                                                    \
            ".incbin \"" file "\"\n" #sym "_end:\n"                                            \
            ".byte 0\n"                                                                        \
            ".popsection\n");                                                                  \
    extern const char sym##_start[], sym##_end[]

WEB_EMBED(embedd_web_console, "server/web/console.html");
WEB_EMBED(embedd_web_docs, "server/web/docs.html");
WEB_EMBED(embedd_web_openapi, "server/web/openapi.json");

int web_asset_find(const char *name, web_asset *out)
{
    static const struct {
        const char *name, *type;
        const char *start, *end;
    } table[] = {
        {"console.html", "text/html; charset=utf-8", embedd_web_console_start,
         embedd_web_console_end},
        {"docs.html", "text/html; charset=utf-8", embedd_web_docs_start, embedd_web_docs_end},
        {"openapi.json", "application/json", embedd_web_openapi_start, embedd_web_openapi_end},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(table[i].name, name) != 0)
            continue;
        *out = (web_asset){table[i].name, table[i].type, table[i].start,
                           (size_t)(table[i].end - table[i].start)};
        return 1;
    }
    return 0;
}
