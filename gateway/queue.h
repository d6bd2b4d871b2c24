/*
 * queue.h - the delivery queue manager (runs in the worker, on its event
 * loop).  Takes committed messages from the spool and delivers each
 * recipient by its domain's route: `deliver relay` through the SMTP/LMTP
 * client (relay.c), `deliver store` through local delivery (local.h, in the
 * thread pool).  Retries with exponential backoff (queue-retry-min ..
 * queue-retry-max) until queue-lifetime, then bounces.  Sends RFC 3464
 * DSNs (dsn.c) for failures (never to the null sender) and for NOTIFY=
 * SUCCESS.  Per-recipient state lives in spool/state/QID so a restart
 * resumes without redelivering finished recipients.  A queue file being
 * delivered is flock()ed, so two workers (during a reload) and the moat
 * CLI never act on the same message at once.
 */
#ifndef MOAT_QUEUE_H
#define MOAT_QUEUE_H

#include <stddef.h>

struct event_base;
struct pool;
struct moat_conf;
struct queue;

struct queue *queue_new(struct event_base *, struct pool *, const struct moat_conf *);
/* scan the spool and schedule everything found (startup, periodic scan) */
void queue_start(struct queue *);
/* a message just committed by the SMTP server: deliver it now */
void queue_submit(struct queue *, const char *qid);
/* retry every deferred message now (moat queue flush) */
void queue_flush(struct queue *);
/* stop starting deliveries; cb(arg) once nothing is in flight */
void queue_drain(struct queue *, void (*cb)(void *), void *arg);
void queue_free(struct queue *);

/* counts for status */
struct queue_stats {
	size_t  messages;       /* known to the scheduler */
	size_t  active;         /* in delivery now */
	size_t  deferred;
	long long oldest;       /* arrival of the oldest message (unix time), 0 if none */
};
void queue_get_stats(const struct queue *, struct queue_stats *);

#endif
