/*
 * spool.h - the durable message spool under <state-dir>/spool.
 *
 *   spool/incoming/QID   being received; never acknowledged; discarded at start
 *   spool/queue/QID      committed: envelope + message, fsync'ed, immutable
 *   spool/state/QID      per-recipient delivery state (owned by queue.c)
 *
 * A queue file is text up to the first empty line, then the message bytes
 * (CRLF line ends, dot-unstuffed, our Received header first):
 *
 *   MOAT-SPOOL 1
 *   qid 0123456789ABCDEF
 *   arrival 1732345678
 *   sender user@example.org          (empty value for the null sender)
 *   envid xtext                      (optional, DSN ENVID as received)
 *   ret full|hdrs                    (optional, DSN RET)
 *   body 7bit|8bitmime|binarymime
 *   smtputf8 0|1
 *   client 203.0.113.5
 *   client-name mail.example.org
 *   helo mail.example.org
 *   proto ESMTP
 *   rcpt NOTIFY ORCPT ADDRESS        (NOTIFY = decimal DSN_NOTIFY_* bits,
 *                                     ORCPT = "-" or the xtext value)
 *   <empty line>
 *   message...
 *   added headers (optional)          (the verdict's X-Spam and Authentication-
 *                                      Results fields, CRLF; readers emit them
 *                                      BEFORE the message: no copy is needed)
 *   "\nMOAT-END QID HHHHHHHH\n"        (end marker, fixed length, with the
 *                                      added headers' length in hex)
 *
 * Values never contain CR, LF or NUL (the SMTP parser refuses them).
 * Durability: spool_commit() = write message + end marker, rename into
 * queue/, fsync(file), fsync(queue dir) (group-committed across threads).
 * Only after it returns 0 may the 250 be sent.  data_len excludes the
 * end marker; readers never see it.
 */
#ifndef MOAT_SPOOL_H
#define MOAT_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

struct moat_conf;

#define QID_SIZE 20     /* 18 chars + NUL, with room to spare */

#define DSN_NOTIFY_SUCCESS 0x1
#define DSN_NOTIFY_FAILURE 0x2
#define DSN_NOTIFY_DELAY   0x4
#define DSN_NOTIFY_NEVER   0x8  /* 0 = not given: failures are reported */

enum dsn_ret   { DSN_RET_UNSPEC, DSN_RET_FULL, DSN_RET_HDRS };
enum body_type { BODY_7BIT, BODY_8BITMIME, BODY_BINARYMIME };

struct rcpt {
	char   *addr;           /* without <>; UTF-8 allowed when smtputf8 */
	char   *orcpt;          /* DSN ORCPT= as received ("rfc822;x@y" xtext) or NULL */
	unsigned notify;        /* DSN_NOTIFY_* bits; 0 = unspecified */
};

struct envelope {
	char    qid[QID_SIZE];
	time_t  arrival;
	char   *sender;         /* "" = null sender <> */
	char   *envid;          /* NULL if none */
	enum dsn_ret ret;
	enum body_type body;
	bool    smtputf8;
	char   *client_addr;    /* NULL for locally generated mail */
	char   *client_name;
	char   *helo;
	char   *proto;          /* "SMTP", "ESMTP", "local" */
	struct rcpt *rcpts;
	size_t  nrcpts;
	/* set by spool_read_envelope(): */
	off_t   data_off;       /* offset of the message in the queue file */
	off_t   data_len;       /* its length */
	char   *add_headers;    /* header fields to emit before the message, or NULL */
	size_t  add_headers_len;
};

/* create the spool directories (0700) and open the group-commit state */
int  spool_init(const struct moat_conf *, char **err);
/* a new unique queue id: 13 hex digits of microseconds + 5 of pid/counter */
void spool_new_qid(char out[QID_SIZE]);
/* remove every incoming/ file (not acknowledged).  Returns count. */
int  spool_clean_incoming(void);
/* move queue/ files that fail to parse or lack the end marker (a crash
 * before their commit finished; never acknowledged) to spool/corrupt/.
 * Master, at start only.  Returns count. */
int  spool_recover(void);

/* envelope helpers */
void envelope_add_rcpt(struct envelope *, const char *addr, const char *orcpt, unsigned notify);
void envelope_clear(struct envelope *);     /* frees members, zeroes it */

/* ---- writing (the SMTP session; also spool_inject) ---- */
struct spool_writer;
/* creates incoming/QID (env->qid must be set) and writes the envelope and
 * `prefix` (e.g. the Received header, may be NULL).  Buffered; loop-safe. */
struct spool_writer *spool_begin(const struct envelope *, const char *prefix, char **err);
/* append message bytes; errors are sticky and reported by spool_commit */
void spool_write(struct spool_writer *, const void *, size_t);
/* bytes written so far (message part only, prefix included) */
off_t spool_size(const struct spool_writer *);
/* BLOCKING (run in the pool): flush, fdatasync, rename, dir fsync.
 * 0 on success; -1 with *err set (e.g. disk full) and the file removed. */
int  spool_commit(struct spool_writer *, char **err);
/* discard an uncommitted message (unlinks incoming/QID) */
void spool_abort(struct spool_writer *);
/* free after commit or abort */
void spool_writer_free(struct spool_writer *);
/* header fields (CRLF-terminated lines, at most 1 MiB) to store with the
 * message; readers emit them before it.  Call before spool_commit. */
void spool_set_headers(struct spool_writer *, const char *hdrs, size_t len);
/* where the message (behind the envelope) starts in the file */
off_t spool_writer_data_off(const struct spool_writer *);
/* path of the file being written (for filters that read it) */
const char *spool_writer_path(const struct spool_writer *);
/* flush buffered bytes to the file (so filters can read the whole message) */
int  spool_flush(struct spool_writer *);
/* BLOCKING: replace the message written so far (before the commit), for
 * the tag Subject prefix; 0 or -1 */
int  spool_replace_data(struct spool_writer *, const char *, size_t);

/* BLOCKING: write a complete message from memory into the queue (DSNs,
 * quarantine release).  Sets env->qid.  0 or -1 with *err. */
int  spool_inject(struct envelope *, const char *msg, size_t len, char **err);

/* ---- reading (queue manager, moat CLI) ---- */
/* path of queue/QID into out */
void spool_queue_path(const char *qid, char *out, size_t outsz);
/* parse the envelope of queue/QID (or of an open fd); sets data_off/len */
int  spool_read_envelope(const char *qid, struct envelope *, char **err);
int  spool_read_envelope_fd(int fd, struct envelope *, char **err);
/* list committed queue ids; calls cb for each; returns count or -1 */
int  spool_list(void (*cb)(const char *qid, void *arg), void *arg);
/* unlink queue/QID (and fsync the directory) once fully delivered */
int  spool_remove(const char *qid);
/* true if s looks like a queue id (safe as a file name) */
bool spool_valid_qid(const char *s);

#endif
