/* hub.h: model downloads from the Hugging Face Hub into its standard cache.
 *
 * hub_fetch resolves ORG/NAME[@REVISION] (revision default "main") to a
 * local snapshot directory, downloading what is missing with libcurl. The
 * cache is the one huggingface_hub uses, so Python tools share it:
 *
 *   <cache>/models--ORG--NAME/
 *     refs/<revision>                 the commit hash the revision pointed to
 *     blobs/<etag>                    file contents, named by git or LFS hash
 *     blobs/<etag>.incomplete         a download in progress (resumed later)
 *     snapshots/<commit>/<path>       relative symlinks to ../../blobs/<etag>
 *     .no_exist/<commit>/<path>       empty markers for optional files the
 *                                     Hub answered 404 for
 *   <cache>/.locks/models--ORG--NAME/<etag>.lock
 *
 * The protocol, per file: HEAD {endpoint}/{repo}/resolve/{revision}/{path}
 * without following redirects gives X-Repo-Commit, the blob name
 * (X-Linked-Etag, else ETag; quotes and W/ stripped) and its size
 * (X-Linked-Size, else Content-Length); large (LFS) files answer 302 to a
 * CDN. The first file pins the commit, and every later file is asked for by
 * that commit, so a branch that moves mid-download cannot mix two commits.
 * A blob that is already complete is not fetched again. A GET writes into
 * blobs/<etag>.incomplete, resuming with a Range header when a previous
 * attempt left part of it, and renames it to blobs/<etag> only once its
 * size matches the announced one. Content hashes are not recomputed (no
 * SHA-256 library is linked): integrity rests on the size, on the Hub's
 * Content-Range answering exactly the range asked for, and on blobs being
 * named by their announced hash.
 *
 * Threads: hub_fetch is synchronous and uses no global state apart from
 * curl_global_init (done once, before any thread is started by the
 * caller). Two processes sharing a cache serialise on the per-blob lock. */
#ifndef EMBEDD_HUB_H
#define EMBEDD_HUB_H

#include <stddef.h>
#include <stdio.h>

#include "base/error.h"

typedef struct hub_opts {
    char endpoint[512];        /* HF_ENDPOINT, else https://huggingface.co */
    char cache_dir[2048];      /* HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub */
    const char *token;         /* HF_TOKEN; NULL: anonymous */
    int offline;               /* HF_HUB_OFFLINE: only the cache, no network */
    long timeout_s;            /* connect timeout, and how long a stalled transfer may sit */
    int retries;               /* extra attempts when a transfer breaks off */
    FILE *log;                 /* NULL: silent; else one line per downloaded file */
    int progress;              /* 1: a progress bar on log (for a terminal) */
} hub_opts;

/* Fills o from HF_ENDPOINT, HF_HUB_CACHE, HF_HOME, HOME, HF_TOKEN and
 * HF_HUB_OFFLINE, with timeout 30 s, 5 retries and no log. */
int hub_opts_from_env(hub_opts *o, emb_err *err);

/* Downloads (or, offline, finds) ORG/NAME[@REVISION] and writes its
 * snapshot directory to out_dir. Errors say what to do: set HF_TOKEN on
 * 401/403, check the name or revision on 404, the curl error on network
 * failures, the path on disk errors. */
int hub_fetch(const char *model_id, const hub_opts *o, char *out_dir, size_t cap,
              emb_err *err);

/* The bundled default model: <dir of the executable>/../models/embedd-small
 * (a source checkout), then <dir>/../share/embedd/models/embedd-small (an
 * installation). Writes the first that has a config.json to out and returns
 * 0; otherwise writes the candidates, joined by " or ", to out and returns
 * -1. */
int hub_default_model(char *out, size_t cap);

#endif
