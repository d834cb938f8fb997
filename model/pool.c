/* pool.c: see pool.h.
 *
 * One job at a time, described by a single 64-bit word:
 *
 *   claim = seq << 32 | n_tasks << 16 | next
 *
 * The caller publishes a job by storing a new seq (with fn, arg and width
 * stored before it); every thread, the caller included, takes task `next`
 * with a compare-and-swap that fails once the job is over or replaced, so a
 * helper holding a stale view can never run a task of the wrong job. Tasks
 * bump `done` when they finish; the caller returns when done == n_tasks.
 * Because a job's fields are rewritten only after all its tasks are done, a
 * thread that has won a claim reads them safely.
 *
 * Idle helpers spin for SPIN_NS, then sleep on `wake`. The caller
 * broadcasts only when a helper sleeps: `sleepers` and `claim` are both
 * sequentially consistent, so either the caller sees the sleeper or the
 * sleeper sees the new job before it waits (and it waits holding `mu`,
 * which the broadcast takes). */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define MAX_HELPERS 63
/* How long an idle helper spins before it sleeps: longer than the gaps
 * between the GEMMs of one pass, short enough not to hold a core that
 * another process wants. */
#define SPIN_NS 200000L
/* A task is tens of microseconds at most; waiting this long for one means
 * its helper was preempted. */
#define STALL_NS 100000L
/* After a stall the next jobs run alone: SOLO_MIN of them, twice as many
 * after each stall that follows, up to SOLO_MAX (about 80 passes of one
 * short text through a 6-layer model) while the host stays busy; every job
 * that runs without a stall halves the count again. A stray stall (a
 * hypervisor hiccup) thus costs a few jobs, a busy host few stalls. */
#define SOLO_MIN 8
#define SOLO_MAX 2048

static struct {
    pthread_mutex_t mu; /* guards sleeping and starting helpers */
    pthread_cond_t wake;
    atomic_flag busy; /* a job is running */
    _Atomic uint64_t claim;
    atomic_int done;  /* tasks of the current job finished */
    atomic_int width; /* helpers 0 .. width - 1 take part in the current job */
    _Atomic(emb_pool_fn) fn;
    _Atomic(void *) arg;
    atomic_int sleepers;
    atomic_int solo_jobs; /* jobs left to run alone after a stall */
    int solo_len;         /* how many the next stall sets; under busy */
    atomic_int helpers; /* started; only grows, under mu */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .busy = ATOMIC_FLAG_INIT};

static uint32_t job_seq(uint64_t claim)
{
    return (uint32_t)(claim >> 32);
}

/* The next task of job seq, or -1 when none is left or the job is over. */
static int claim_task(uint32_t seq)
{
    uint64_t c = atomic_load_explicit(&pool.claim, memory_order_acquire);
    for (;;) {
        const int n = (int)((c >> 16) & 0xffff), next = (int)(c & 0xffff);
        if (job_seq(c) != seq || next >= n)
            return -1;
        if (atomic_compare_exchange_weak_explicit(&pool.claim, &c, c + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return next;
    }
}

static void run_tasks(uint32_t seq)
{
    int t;
    while ((t = claim_task(seq)) >= 0) {
        emb_pool_fn fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
        void *arg = atomic_load_explicit(&pool.arg, memory_order_relaxed);
        fn(arg, t);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

static long ns_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000000000L + (t1.tv_nsec - t0->tv_nsec);
}

/* Waits until a job other than `seen` is published; returns its seq. */
static uint32_t wait_for_job(uint32_t seen)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned i = 1;; i++) {
        uint32_t s = job_seq(atomic_load_explicit(&pool.claim, memory_order_acquire));
        if (s != seen)
            return s;
        cpu_relax();
        if (i % 64 == 0 && ns_since(&t0) > SPIN_NS)
            break;
    }
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add(&pool.sleepers, 1);
    uint32_t s;
    while ((s = job_seq(atomic_load(&pool.claim))) == seen)
        pthread_cond_wait(&pool.wake, &pool.mu);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.mu);
    return s;
}

static void *helper_main(void *p)
{
    const int index = (int)(intptr_t)p;
    uint32_t seen = job_seq(atomic_load(&pool.claim));
    for (;;) {
        seen = wait_for_job(seen);
        if (index < atomic_load_explicit(&pool.width, memory_order_relaxed))
            run_tasks(seen);
    }
    return NULL;
}

/* Starts helpers until there are `want` (or as many as could be started).
 * Helpers block all signals: they belong to the process's signal handling
 * no more than OpenMP's threads do. */
static void start_helpers(int want)
{
    pthread_mutex_lock(&pool.mu);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int n = atomic_load(&pool.helpers);
    while (n < want) {
        pthread_attr_t attr;
        pthread_t th;
        if (pthread_attr_init(&attr) != 0)
            break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, helper_main, (void *)(intptr_t)n);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        atomic_store(&pool.helpers, ++n);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_unlock(&pool.mu);
}

/* Waits until the tasks the helpers took are done. A wait longer than
 * STALL_NS means a helper was preempted in the middle of a task: the host is
 * busy, so the next jobs run on the calling thread alone (see SOLO_MIN). */
static void wait_for_helpers(int n_tasks)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int stalled = 0;
    for (unsigned i = 1; atomic_load_explicit(&pool.done, memory_order_acquire) < n_tasks; i++) {
        if (stalled) {
            sched_yield(); /* the helper may be waiting for this core */
            continue;
        }
        cpu_relax();
        if (i % 64 == 0 && ns_since(&t0) > STALL_NS)
            stalled = 1;
    }
    int len = pool.solo_len;
    if (stalled) {
        len = len < SOLO_MIN ? SOLO_MIN : len;
        atomic_store_explicit(&pool.solo_jobs, len, memory_order_relaxed);
        pool.solo_len = len * 2 < SOLO_MAX ? len * 2 : SOLO_MAX;
    } else {
        pool.solo_len = len / 2;
    }
}

/* 1 while jobs should run alone after a stall (see wait_for_helpers). */
static int backing_off(void)
{
    int left = atomic_load_explicit(&pool.solo_jobs, memory_order_relaxed);
    while (left > 0) {
        if (atomic_compare_exchange_weak_explicit(&pool.solo_jobs, &left, left - 1,
                                                  memory_order_relaxed, memory_order_relaxed))
            return 1;
    }
    return 0;
}

static void run_alone(int n_tasks, emb_pool_fn fn, void *arg)
{
    for (int t = 0; t < n_tasks; t++)
        fn(arg, t);
}

void emb_pool_run(int threads, int n_tasks, emb_pool_fn fn, void *arg)
{
    if (n_tasks <= 0)
        return;
    int helpers = threads - 1;
    if (helpers > MAX_HELPERS)
        helpers = MAX_HELPERS;
    if (helpers < 1 || n_tasks == 1 || n_tasks > EMB_POOL_MAX_TASKS || backing_off() ||
        atomic_flag_test_and_set_explicit(&pool.busy, memory_order_acquire)) {
        run_alone(n_tasks, fn, arg);
        return;
    }
    if (atomic_load_explicit(&pool.helpers, memory_order_relaxed) < helpers)
        start_helpers(helpers);

    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.arg, arg, memory_order_relaxed);
    atomic_store_explicit(&pool.width, helpers, memory_order_relaxed);
    const uint32_t seq = job_seq(atomic_load_explicit(&pool.claim, memory_order_relaxed)) + 1;
    atomic_store(&pool.claim, (uint64_t)seq << 32 | (uint64_t)n_tasks << 16);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mu);
    }
    run_tasks(seq);
    wait_for_helpers(n_tasks);
    atomic_flag_clear_explicit(&pool.busy, memory_order_release);
}
