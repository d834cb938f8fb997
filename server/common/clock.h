/* clock.h: monotonic seconds, for latencies and timeouts. */
#ifndef EMBEDD_CLOCK_H
#define EMBEDD_CLOCK_H

#include <time.h>

static inline double mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
