/*
 * ops.h - operations in the worker: the http listener (http.c), alerts
 * (alerts.c), the event journal (lib/journal.c) and the cache of what is
 * costly to learn (quarantine size, disk free, AV database age, the queue
 * listing), refreshed by a pool job every OPS_REFRESH seconds so that no
 * request or check ever scans a directory on the event loop.
 */
#ifndef MOAT_OPS_H
#define MOAT_OPS_H

#include <stdbool.h>
#include <time.h>

#include "buf.h"

#define OPS_REFRESH 5           /* seconds between cache refreshes */
#define OPS_LIST_MAX 1000       /* entries in /api/queue and /api/quarantine */

struct ops_cache {
	time_t  updated;                /* 0: not yet */
	long    quarantine_msgs;        /* held messages */
	long long quarantine_bytes;
	long long av_age;               /* seconds since the newest database file; -1 unknown */
	long long disk_free;            /* bytes available in the state-dir fs; -1 unknown */
	long long disk_total;
	/* the listings (JSON arrays, bounded): made only while asked for */
	time_t  lists_updated;          /* 0: not made */
	struct buf queue_json;
	struct buf quarantine_json;
};

/* the worker (worker.c): start after the queue, stop after the pool is freed */
void ops_start(void);
/* reload or shutdown: stop serving http and checking alerts (the next
 * worker takes over); the journal keeps recording until the end */
void ops_drain(void);
void ops_stop(void);
const struct ops_cache *ops_cache(void);
/* /api/queue or /api/quarantine was asked for: make the listings at the
 * refreshes of the next OPS_LIST_WANTED seconds (listing the queue reads
 * every queued envelope) */
#define OPS_LIST_WANTED 300
void ops_want_lists(void);

#endif
