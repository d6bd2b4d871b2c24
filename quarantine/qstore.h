/*
 * qstore.h - the quarantine store under <state-dir>/quarantine/.
 *
 *   quarantine/msg/QID     the message, in the spool's queue-file format
 *                          (envelope + message + end marker, spool.h), so
 *                          the original envelope travels with it
 *   quarantine/tmp/        scratch (emptied by qstore_open)
 *   quarantine/index.db    SQLite (WAL): one row per message in `msg`, one
 *                          row per recipient in `rcpt` (indexed by address)
 *
 * Ordering (crash safety): the file is made durable first (rename + fsync
 * of quarantine/msg), the index row second.  A crash in between leaves a
 * file without a row; qstore_check() (run by qstore_open) re-indexes it
 * from its stored envelope.  A row whose file is missing is marked `lost`
 * and logged.  A release marks the recipients `releasing` (with the queue
 * id it will inject under), injects, then marks them `released`; a restart
 * finds the injected queue file and finishes, or rolls back to `held`.
 *
 * BLOCKING: every call touches the disk; run it in a pool thread or the
 * CLI, never on the event loop.  A handle belongs to one thread at a time.
 * qstore_put_buf() and qstore_release() write through the spool:
 * spool_init() must have been called for the same state-dir.
 */
#ifndef MOAT_QSTORE_H
#define MOAT_QSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct buf;
struct envelope;
struct qstore;

/* retention; the config maps `quarantine retention 30d` / `max-size 1G` */
struct qstore_conf {
	long long retention;            /* seconds; 0 = keep forever */
	long long max_size;             /* bytes of message files; 0 = no cap */
};
#define QSTORE_RETENTION_DEFAULT   (30LL * 86400)
#define QSTORE_MAX_SIZE_DEFAULT    (1024LL * 1024 * 1024)
void qstore_conf_default(struct qstore_conf *);

/* what the filter engine decided */
struct qstore_verdict {
	double      score;
	const char *action;             /* "quarantine" (NULL = that) */
	const char *symbols;            /* "SYM(1.5),SYM2(3)" or NULL */
};

enum qstore_state { QS_HELD, QS_RELEASING, QS_RELEASED, QS_DELETED, QS_LOST };
const char *qstore_state_name(enum qstore_state);

#define QSTORE_TEXT_MAX 998             /* From/Subject kept in the index */

/* one index entry, as qstore_list/qstore_get report it (strings owned by
 * the store, valid during the callback / until qstore_entry_clear) */
struct qstore_entry {
	char        id[24];
	time_t      time;
	char       *client;
	char       *sender;
	char      **rcpts;
	char      **rcpt_states;        /* "held", "released", ... per rcpt */
	size_t      nrcpts;
	char       *hfrom;              /* decoded From */
	char       *subject;            /* decoded Subject */
	long long   size;               /* bytes of the message */
	double      score;
	char       *action;
	char       *symbols;
	enum qstore_state state;
	time_t      state_time;
	char       *state_by;
};
void qstore_entry_clear(struct qstore_entry *);

struct qfilter {
	time_t      since, until;       /* 0 = unbounded */
	const char *rcpt;               /* exact address, case-insensitive */
	const char *from;               /* envelope sender or From contains (ci) */
	const char *symbol;             /* symbols contains the name */
	double      min_score;
	bool        has_min_score;
	long        limit;              /* 0 = all */
	bool        all_states;         /* false: held (and releasing) only */
};

struct qstore *qstore_open(const char *statedir, char **err);
void qstore_close(struct qstore **);
const char *qstore_error(const struct qstore *);
void qstore_set_conf(struct qstore *, const struct qstore_conf *);

/* the committed spool/queue/QID moves into quarantine (rename, one fsync,
 * no copy), then is indexed.  0, or -1 (qstore_error); on -1 the spool
 * file is where it was. */
int qstore_put_from_spool(struct qstore *, const char *qid, const struct qstore_verdict *);
/* a message from memory with its envelope (env->qid set, or one is made):
 * written in the spool's format through spool/incoming/, then renamed into
 * quarantine/msg/ (never through the delivery queue) */
int qstore_put_buf(struct qstore *, struct envelope *, const char *msg, size_t len,
    const struct qstore_verdict *);

/* newest first; cb returns non-zero to stop.  Returns count or -1 */
long qstore_list(struct qstore *, const struct qfilter *,
    int (*cb)(const struct qstore_entry *, void *), void *arg);
/* 0 found, 1 no such id, -1 error */
int qstore_get(struct qstore *, const char *id, struct qstore_entry *);
/* the stored file: envelope (data_off/data_len set; add_headers holds the
 * verdict's added header fields, which come before the message) and the
 * message bytes (malloc'ed into *msg).  0 or -1 */
int qstore_read(struct qstore *, const char *id, struct envelope *, char **msg, size_t *len);

#define QSTORE_F_KEEP   0x1     /* (reserved) */
/* inject into the delivery queue with the original envelope (all held
 * recipients, or only only_rcpt) and "X-Moat-Released: <date> by <by>"
 * prepended.  0 done, 1 nothing to release (unknown id / recipient, or
 * already released), -1 error.  new_qid (may be NULL) gets the queue id. */
int qstore_release(struct qstore *, const char *id, const char *only_rcpt,
    const char *by, unsigned flags, char new_qid[24]);
/* mark deleted and remove the file.  0, 1 unknown/already, -1 */
int qstore_delete(struct qstore *, const char *id, const char *by);
/* retention: entries older than max_age seconds go, then the oldest until
 * the message files total at most max_bytes (0 = no limit).  Each purge is
 * logged.  Returns how many were purged or -1. */
long qstore_purge(struct qstore *, long long max_age, long long max_bytes);
/* repair: files without rows are re-indexed, rows without files marked
 * lost, interrupted releases finished or rolled back, deleted files
 * removed.  Returns the number of repairs or -1. */
long qstore_check(struct qstore *);

/* the digest for one recipient: an RFC 5322 message listing what is held
 * for it since `since`.  Returns the number listed or -1 */
long qstore_digest_build(struct qstore *, const char *rcpt, time_t since,
    const char *from, struct buf *msg);

/* ---- pieces, exposed for the tests ---- */
/* decode RFC 2047 encoded words (UTF-8, US-ASCII, ISO-8859-1; others are
 * kept as written) and unfold; writes a NUL-terminated string */
size_t qstore_decode_2047(const char *in, size_t len, char *out, size_t outsz);

#endif
