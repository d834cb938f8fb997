/* routes_web.c: what a browser or a client's discovery call gets: GET /
 * (the web console for a browser, the server's name and release as JSON
 * for a client, as Qdrant answers its root), GET /openapi.json, GET /docs
 * (a page that renders that document), and GET /train/history (the
 * learning curve the console draws; learner.h). The pages and the
 * document are bundled into the binary (web/assets.h). */
#include <string.h>
#include <strings.h>

#include "common/release.h"
#include "server.h"
#include "web/assets.h"

/* Fills rp with the bundled file `name`. */
static void reply_asset(reply *rp, const char *name)
{
    web_asset a;
    if (!web_asset_find(name, &a)) {
        reply_error(rp, API_TEI, 500, "Backend", "the bundled file %s is missing", name);
        return;
    }
    rp->content_type = a.content_type;
    sb_append(&rp->body, a.data, a.len);
}

/* A browser asks for HTML ("text/html,application/xhtml+xml,..."); HTTP
 * clients send no Accept, "application/json" or wildcard only. */
static int wants_html(request *rq)
{
    const char *accept = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_ACCEPT);
    return accept != NULL && strcasestr(accept, "text/html") != NULL;
}

route_result handle_web_root(server *srv, request *rq, reply *rp)
{
    rp->vary = "Accept"; /* HTML or JSON by the Accept header: caches keep both */
    if (wants_html(rq)) {
        reply_asset(rp, "console.html");
        return ROUTE_DONE;
    }
    sb_puts(&rp->body, "{\"title\":\"embedd\",\"version\":\"" EMBEDD_VERSION "\"}");
    return ROUTE_DONE;
}

route_result handle_web_openapi(server *srv, request *rq, reply *rp)
{
    reply_asset(rp, "openapi.json");
    return ROUTE_DONE;
}

route_result handle_web_docs(server *srv, request *rq, reply *rp)
{
    reply_asset(rp, "docs.html");
    return ROUTE_DONE;
}

route_result handle_train_history(server *srv, request *rq, reply *rp)
{
    learner_history_json(srv->learner, &rp->body);
    return ROUTE_DONE;
}
