/*
 * journal.h - what happened to each message, for `moat report`,
 * `moat trace` and log shippers; and the metrics hooks of the SMTP
 * server and the queue (one call at each point, see docs/operations.md).
 *
 * The hooks run on the event loop (journal_message_id also in pool
 * threads): they bump the counters of metrics.h and append a row to an
 * in-memory batch (bounded).  Once a second a pool job writes the batch to
 * <state-dir>/journal.db (SQLite, WAL, one transaction) and, with
 * `log-json PATH`, appends the same events as JSON lines to PATH.
 * Rows older than journal-retention are deleted hourly.
 */
#ifndef MOAT_JOURNAL_H
#define MOAT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>

struct envelope;
struct verdict;
struct event_base;
struct pool;
struct moat_conf;
struct buf;

#define JOURNAL_DB "journal.db"

/* the worker, before it drops privileges: open log-json (root may be
 * needed to write in /var/log); each new worker reopens it (rotation) */
void journal_open_json(const struct moat_conf *);
/* the worker: start the batch timer; flush what is left (synchronously) */
void journal_start(struct event_base *, struct pool *, const struct moat_conf *);
void journal_stop(void);

/* hooks */
void journal_connect(const char *sid, const char *ip, const char *listener);
void journal_refused(const char *sid, const char *ip, const char *reason);
void journal_reject(const char *sid, const char *stage, const char *ip, const char *sender,
    const char *rcpt, const char *reply);
void journal_verdict(const char *sid, const char *ip, const struct envelope *,
    const struct verdict *);
/* committed to the queue; count_accept when no filter engine gave a verdict */
void journal_queued(const char *sid, const char *ip, const struct envelope *, long long size,
    bool count_accept);
void journal_quarantined(const char *sid, const char *ip, const struct envelope *, double score);
/* the Message-ID of the message text (any thread) */
void journal_message_id(const char *qid, const char *msg, size_t len);
/* result: delivered, deferred, bounced, expired */
void journal_delivery(const char *qid, const char *result, const char *rcpt, const char *dest,
    int attempts, const char *reply);
/* a DSN (bounce, delay or success notice) went to the sender as dsn_qid */
void journal_dsn(const char *qid, const char *dsn_qid, const char *to);
void journal_removed(const char *qid);
/* an SMTP session ended (the open-sessions gauge) */
void journal_disconnect(const char *listener);
/* an alert raised or cleared (gateway/alerts.c) */
void journal_alert(const char *name, bool firing, const char *text);

/* JSON string escaping (valid UTF-8 out whatever comes in); NULL is "" */
void json_str(struct buf *, const char *);

/* the schema, for the CLI opening the db read-only */
extern const char journal_schema[];

#endif
