/* release.h: the release of embedd, as `embedd --version` and GET /info
 * report it. */
#ifndef EMBEDD_RELEASE_H
#define EMBEDD_RELEASE_H

#define EMBEDD_VERSION "0.1.0"

#endif
