/*
 * relay.h - the outbound SMTP/LMTP client of the delivery queue.
 * Runs in the worker, on its event loop; never blocks it (host names are
 * resolved with getaddrinfo() in the thread pool, the message is streamed
 * from the spool file in chunks under a write watermark).
 *
 * The queue manager hands over one transaction (one message, the
 * recipients of it that share a destination) with relay_submit(); the
 * client keeps per-destination state: a FIFO of waiting transactions, up
 * to relay-concurrency connections, idle connections cached for reuse (up
 * to relay-max-messages-per-connection), and a "dead" mark after a
 * connection failure so queued mail does not hammer a down server.  When
 * the transaction is over, txn->done(txn) is called on the loop with one
 * result per recipient.
 */
#ifndef MOAT_RELAY_H
#define MOAT_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/queue.h>
#include <sys/types.h>

struct event_base;
struct pool;
struct moat_conf;
struct relay_dest;
struct envelope;
struct relay;

/* longest reply text we keep (the rest of a long reply is dropped) */
#define RELAY_REPLY_MAX 512
/* reply limits: a line longer than this, or more lines, is a protocol error */
#define RELAY_MAX_REPLY_LINE 4096
#define RELAY_MAX_REPLY_LINES 100

struct relay_result {
	int     code;                   /* SMTP code 200..599; 4xx for local trouble */
	bool    remote;                 /* the text is the server's reply */
	char    text[RELAY_REPLY_MAX];  /* "550 5.1.1 no such user" or a local reason */
};

struct relay_txn {
	/* set by the caller */
	const struct relay_dest *dest;  /* must outlive the transaction */
	const char *qid;
	const struct envelope *env;
	int     fd;                     /* the open spool file (data_off/data_len in env) */
	const size_t *rcpt;             /* indexes into env->rcpts */
	size_t  nrcpt;
	void  (*done)(struct relay_txn *);
	void   *arg;
	/* results, valid in done() */
	struct relay_result *res;       /* nrcpt entries, allocated by relay_submit */
	bool    dsn_offered;            /* the server took NOTIFY/ORCPT (it reports success) */
	char    remote_mta[256];        /* the host we talked to ("127.0.0.1", "/path") */
	/* private */
	TAILQ_ENTRY(relay_txn) entry;
	struct relay_dest_state *ds;
};

struct relay *relay_new(struct event_base *, struct pool *, const struct moat_conf *);
/* queue a transaction; done() is always called later, never from inside */
void   relay_submit(struct relay *, struct relay_txn *);
/* forget every "dead destination" mark (moat queue flush) */
void   relay_clear_dead(struct relay *);
/* true if the destination is marked dead (connection failed recently) */
bool   relay_dest_dead(struct relay *, const struct relay_dest *);
/* transactions waiting or in progress */
size_t relay_busy(const struct relay *);
/* close idle connections (QUIT); busy ones close when their work is done */
void   relay_close_idle(struct relay *);
/* free: aborts everything (transactions still queued get done() with 421) */
void   relay_free(struct relay *);

/* the "MAIL FROM:<...> params" / "RCPT TO:<...> params" lines, for tests */
struct buf;
struct relay_ext {
	bool    pipelining, size, eightbit, dsn, smtputf8, chunking, starttls, enhanced;
	long long size_max;             /* 0 if SIZE had no value */
};
void   relay_parse_ehlo_line(const char *line, size_t len, struct relay_ext *);
void   relay_fmt_mail(struct buf *, const struct envelope *, const struct relay_ext *, off_t size);
void   relay_fmt_rcpt(struct buf *, const struct envelope *, size_t i, const struct relay_ext *);

/*
 * Dot-stuffing state machine for the DATA stream.  Feed it the message
 * (CRLF lines, unstuffed) in any chunking; relay_stuff_end() adds a final
 * CRLF if the message did not end with one, then ".\r\n".
 */
struct relay_stuffer { unsigned char p1, p2; bool any; };   /* last two bytes */
void   relay_stuff_init(struct relay_stuffer *);
void   relay_stuff(struct relay_stuffer *, const char *p, size_t len, struct buf *out);
void   relay_stuff_end(struct relay_stuffer *, struct buf *out);

#endif
