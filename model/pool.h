/* pool.h: helper threads for short parallel loops (the GEMMs of a pass of a
 * few tokens), with a join that never waits for a thread that has not
 * started.
 *
 * An OpenMP parallel region ends in a barrier that every thread of the team
 * must reach. On a busy host the second thread may not run for a whole
 * scheduler time slice (milliseconds), so a pass of a single short text,
 * which is dozens of regions of a few microseconds each, can take a hundred
 * times longer on two threads than on one. emb_pool_run instead lets the
 * calling thread take tasks from a shared counter as well: a helper that
 * arrives late finds none left, and the caller only ever waits for tasks a
 * helper has already begun. On an idle host both cores share the work.
 *
 * Helpers are started on first use, spin for a short while after each job
 * (the next job of the same pass usually follows within microseconds), then
 * sleep on a condition variable. One job runs at a time: a caller that finds
 * the pool busy runs its tasks alone. */
#ifndef EMBEDD_POOL_H
#define EMBEDD_POOL_H

typedef void (*emb_pool_fn)(void *arg, int task);

/* Most tasks of one job. */
#define EMB_POOL_MAX_TASKS 65535

/* Runs fn(arg, t) once for every t in 0 .. n_tasks - 1, in any order, on the
 * calling thread and at most threads - 1 helpers; returns when all have
 * finished. n_tasks <= EMB_POOL_MAX_TASKS (more run on the calling thread
 * alone). Safe to call from any thread. */
void emb_pool_run(int threads, int n_tasks, emb_pool_fn fn, void *arg);

#endif
