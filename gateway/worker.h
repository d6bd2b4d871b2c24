/*
 * worker.h - the worker process: one libevent loop for every session, a
 * thread pool for blocking work, the queue manager.  Unprivileged.
 */
#ifndef MOAT_WORKER_H
#define MOAT_WORKER_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct pool;
struct queue;
struct users;
struct moat_conf;
struct tls_server;
struct ratelimit;
struct rl_auth;
struct engine;

struct worker {
	struct event_base *base;
	struct pool  *pool;
	struct queue *queue;
	const struct moat_conf *conf;
	struct users *users;            /* loop-thread handle, opened lazily */
	struct tls_server *tls;         /* built by the master; NULL without certificates */
	struct ratelimit *rates;        /* "ratelimit" counters (keys c:/m:/r: + ip or user) */
	struct rl_auth *auth_throttle;  /* failed logins per client IP: SMTP, IMAP, POP3 */
	struct engine *engine;          /* the filters; NULL if none configured */
	struct lists *lists;            /* allow/block lists, re-read when changed */
	bool    draining;
	long long started;              /* unix time */
};

extern struct worker *W;

/* run the worker until it is told to stop; returns the exit status */
int  worker_main(const struct moat_conf *, struct tls_server *);
/* the loop-thread users handle (opened on first use, retried if absent) */
struct users *worker_users(void);
/* the current lists (a changed file is re-read in the pool within ~2 s); may be NULL */
struct lists *worker_lists(void);

#endif
