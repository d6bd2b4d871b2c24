/*
 * metrics.h - the worker's counters and histograms, rendered in the
 * Prometheus text exposition format by the http listener (gateway/http.c).
 *
 * Every series lives in one fixed table; a family has at most two labels
 * and at most METRIC_MAX_SERIES label sets: past that, new label values
 * are counted under "other", so hostile input (symbol names, domains)
 * cannot grow memory.  Safe from the loop and from pool threads.  The
 * counters belong to one worker process: they start from zero when a
 * worker starts (after a reload or a restart), which Prometheus handles
 * as a counter reset.
 */
#ifndef MOAT_METRICS_H
#define MOAT_METRICS_H

#include <stddef.h>

struct buf;

enum metric {
	M_CONNECTIONS,          /* {listener} accepted TCP connections */
	M_CONN_REFUSED,         /* {reason} closed before the greeting */
	M_SMTP_REJECTS,         /* {stage} commands refused (NOQUEUE) */
	M_MESSAGES,             /* {action} accept tag quarantine reject tempfail */
	M_MESSAGES_DOMAIN,      /* {domain,action} by recipient domain (configured ones) */
	M_SYMBOLS,              /* {symbol} filter symbol hits */
	M_FILTER_SECONDS,       /* histogram: engine verdict time */
	M_DELIVERY,             /* {destination,result} delivered deferred bounced expired */
	M_TLS,                  /* {result} inbound TLS handshakes */
	M_AUTH,                 /* {result} SMTP AUTH */
	M_ALERTS,               /* {alert} alerts raised */
	M_JOURNAL_ERRORS,       /* journal batches that failed */
	M_SESSIONS_OPEN,        /* gauge {listener}: SMTP sessions open now */
	M_NMETRICS
};

#define METRIC_MAX_SERIES 256

void metric_inc(enum metric, const char *l1, const char *l2);
void metric_add(enum metric, const char *l1, const char *l2, double v);
/* gauges: up or down */
void metric_gauge_add(enum metric, const char *l1, const char *l2, double delta);
/* histograms: one observation (seconds) */
void metric_observe(enum metric, double v);
/* the sum of a family's series whose labels match (NULL = any) */
double metric_sum(enum metric, const char *l1, const char *l2);
/* every family as Prometheus text */
void metrics_render(struct buf *out);
/* a label value, escaped for the exposition format */
void metric_label_esc(struct buf *out, const char *v);

/* set by the master before it forks a worker: workers restarted so far */
extern long long metrics_worker_restarts;

#endif
