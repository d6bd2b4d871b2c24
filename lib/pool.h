/*
 * pool.h - a fixed pool of worker threads for blocking work (fsync, file
 * I/O, later the filters).  work() runs in a pool thread; done() runs
 * afterwards on the event loop thread that owns the pool.  Nothing in
 * work() may touch loop-owned state.  The job's owner must keep `arg`
 * alive until done() runs (sessions hold a reference while a job is out).
 */
#ifndef MOAT_POOL_H
#define MOAT_POOL_H

#include <stddef.h>

struct event_base;
struct pool;

typedef void (*pool_fn)(void *arg);

struct pool *pool_new(struct event_base *, int nthreads);
/* done may be NULL */
void   pool_submit(struct pool *, pool_fn work, pool_fn done, void *arg);
/* jobs submitted and not yet completed (done() not yet run) */
size_t pool_pending(const struct pool *);
/* finish every queued job (running done() callbacks), then join threads */
void   pool_free(struct pool *);

#endif
