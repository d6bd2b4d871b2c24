/*
 * relay.c - the outbound SMTP (RFC 5321) / LMTP (RFC 2033) client of the
 * delivery queue.
 *
 * Runs in: the worker, on its event loop (libevent bufferevents); host
 * names are resolved with getaddrinfo() in the thread pool (numeric
 * addresses and unix sockets need no lookup).  Nothing here blocks the
 * loop except pread() of the spool file in 64 KB chunks (page cache).
 *
 * Untrusted input: every reply from the downstream server.  Limits: a
 * reply line longer than RELAY_MAX_REPLY_LINE or a reply of more than
 * RELAY_MAX_REPLY_LINES lines is a protocol error (connection closed,
 * recipients deferred); kept reply text is capped at RELAY_REPLY_MAX.
 * Timeouts: relay-connect-timeout (TCP connect), relay-command-timeout
 * (each reply), relay-data-timeout (DATA stream progress and the final
 * reply).  Memory per connection is bounded: the DATA stream is refilled
 * only when the output buffer drains below RELAY_LOWAT.
 *
 * Per destination (relay_dest.name): a FIFO of waiting transactions, at
 * most relay-concurrency connections, idle connections kept RELAY_IDLE_SECS
 * for reuse (RSET after a failed transaction), at most
 * relay-max-messages-per-connection transactions per connection, then
 * QUIT.  A connection that fails before the EHLO handshake completes marks
 * the destination dead for queue-retry-min seconds: transactions waiting
 * for it, and new ones, are deferred at once with the cached reason.
 *
 * STARTTLS: the EHLO keyword is parsed (relay_ext.starttls); the hook is
 * conn_handshake_done(), where a later issue will send STARTTLS, wrap the
 * bufferevent with bufferevent_openssl_filter_new() and repeat EHLO.
 */
#include "config.h"
#include "relay.h"
#include "tls.h"
#include "buf.h"
#include "conf.h"
#include "dsn.h"
#include "log.h"
#include "pool.h"
#include "spool.h"
#include "util.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define RELAY_IDLE_SECS   5
#define RELAY_QUIT_SECS   5
#define RELAY_CHUNK       (64 * 1024)
#define RELAY_LOWAT       (64 * 1024)
#define RELAY_HIWAT       (256 * 1024)

enum cstate {
	C_RESOLVING, C_CONNECTING, C_GREETING, C_EHLO, C_HELO,  /* handshake */
	C_STARTTLS,             /* STARTTLS sent, waiting for 220 */
	C_TLS,                  /* TLS handshake in progress */
	C_IDLE,                 /* ready, no transaction */
	C_TXN,                  /* MAIL/RCPT/DATA replies pending */
	C_DATA,                 /* streaming the message */
	C_DOT,                  /* waiting for the final reply(ies) */
	C_RSET,
	C_QUIT,
};

static const char *const cstate_name[] = {
	"resolving", "connecting", "waiting for the greeting", "after EHLO", "after HELO",
	"after STARTTLS", "in the TLS handshake",
	"idle", "after MAIL/RCPT", "sending the message", "after end of data",
	"after RSET", "after QUIT",
};

struct relay_dest_state;

struct conn {
	TAILQ_ENTRY(conn) entry;
	struct relay *r;
	struct relay_dest_state *ds;
	struct bufferevent *bev;
	struct event *timer;
	struct resolve_job *rj;         /* pending lookup, or NULL */
	enum cstate st;
	bool    lmtp;
	bool    handshaken;
	bool    tls;                    /* TLS is active */
	bool    tls_tried;              /* STARTTLS was refused: go on in the clear */
	bool    hdrs_sent;              /* the envelope's added headers went out */
	char    tlsinfo[96];
	bool    need_rset;
	int     nmsgs;
	struct relay_ext ext;
	/* addresses to try */
	struct addrinfo *ai, *cur;
	char    peer[128];              /* current address, for logs */
	char    last_err[RELAY_REPLY_MAX];
	/* reply accumulator */
	struct buf reply;
	int     reply_code;
	int     reply_lines;
	/* the transaction */
	struct relay_txn *txn;
	size_t  sent;                   /* commands sent: 0 MAIL, 1..n RCPT, n+1 DATA */
	size_t  acked;                  /* replies received, same numbering */
	bool    mail_ok;
	size_t *accepted;               /* indexes into txn->res of accepted rcpts */
	size_t  nacc;
	size_t  ndot;                   /* LMTP replies received after the dot */
	off_t   data_pos;
	struct relay_stuffer stuff;
};

struct relay_dest_state {
	TAILQ_ENTRY(relay_dest_state) entry;
	struct relay *r;
	char   *name;
	const struct relay_dest *dest;
	TAILQ_HEAD(, relay_txn) waiting;
	size_t  nwaiting;
	TAILQ_HEAD(, conn) conns;
	size_t  nconns;
	size_t  nstarting;              /* conns not yet through the handshake */
	time_t  dead_until;
	char    dead_reason[RELAY_REPLY_MAX];
	struct event *kick;
};

struct relay {
	struct event_base *base;
	struct pool *pool;
	const struct moat_conf *conf;
	SSL_CTX *tls_plain;             /* opportunistic / required: no verification */
	SSL_CTX *tls_verify[16];        /* per distinct ca_file, [0] = system store */
	const char *tls_verify_ca[16];
	size_t  ntls_verify;
	TAILQ_HEAD(, relay_dest_state) dests;
	size_t  busy;
	bool    freeing;
};

struct resolve_job {
	struct conn *c;                 /* NULL once the connection is gone */
	char   *host, *port;
	struct addrinfo *ai;
	int     err;
};

static void conn_free(struct conn *);
static void conn_fail(struct conn *, const char *fmt, ...) LOGFMT(2, 3);
static void conn_ready(struct conn *);
static void conn_try_connect(struct conn *);
static void dest_kick_soon(struct relay_dest_state *);
static int  conn_send_next(struct conn *);

/* ------------------------------------------------------------------ */
/* pure helpers (unit-tested)                                          */

void
relay_parse_ehlo_line(const char *line, size_t len, struct relay_ext *x)
{
	char kw[32];
	size_t i = 0;

	while (i < len && i < sizeof(kw) - 1 && line[i] != ' ' && line[i] != '=') {
		kw[i] = line[i];
		i++;
	}
	kw[i] = '\0';
	if (i < len && line[i] != ' ' && line[i] != '=')
		return;
	if (!ascii_strcasecmp(kw, "PIPELINING"))
		x->pipelining = true;
	else if (!ascii_strcasecmp(kw, "8BITMIME"))
		x->eightbit = true;
	else if (!ascii_strcasecmp(kw, "DSN"))
		x->dsn = true;
	else if (!ascii_strcasecmp(kw, "SMTPUTF8"))
		x->smtputf8 = true;
	else if (!ascii_strcasecmp(kw, "CHUNKING"))
		x->chunking = true;
	else if (!ascii_strcasecmp(kw, "STARTTLS"))
		x->starttls = true;
	else if (!ascii_strcasecmp(kw, "ENHANCEDSTATUSCODES"))
		x->enhanced = true;
	else if (!ascii_strcasecmp(kw, "SIZE")) {
		long long v = 0;
		char num[24];
		size_t n = 0;
		x->size = true;
		x->size_max = 0;
		while (i < len && line[i] == ' ')
			i++;
		while (i < len && n < sizeof(num) - 1 && line[i] >= '0' && line[i] <= '9')
			num[n++] = line[i++];
		num[n] = '\0';
		if (n > 0 && i == len && parse_ll(num, 0, (long long)1 << 50, &v))
			x->size_max = v;
	}
}

static bool
has_non_ascii(const char *s)
{
	for (; s && *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

void
relay_fmt_mail(struct buf *b, const struct envelope *env, const struct relay_ext *x, off_t size)
{
	buf_printf(b, "MAIL FROM:<%s>", env->sender ? env->sender : "");
	if (x->size)
		buf_printf(b, " SIZE=%lld", (long long)size);
	if (env->body != BODY_7BIT && x->eightbit)
		buf_adds(b, " BODY=8BITMIME");
	if (env->smtputf8 && x->smtputf8)
		buf_adds(b, " SMTPUTF8");
	if (x->dsn) {
		if (env->ret == DSN_RET_FULL)
			buf_adds(b, " RET=FULL");
		else if (env->ret == DSN_RET_HDRS)
			buf_adds(b, " RET=HDRS");
		if (env->envid && env->envid[0])
			buf_printf(b, " ENVID=%s", env->envid);
	}
	buf_adds(b, "\r\n");
}

void
relay_fmt_rcpt(struct buf *b, const struct envelope *env, size_t i, const struct relay_ext *x)
{
	const struct rcpt *r = &env->rcpts[i];

	buf_printf(b, "RCPT TO:<%s>", r->addr);
	if (x->dsn) {
		unsigned n = r->notify;
		if (n & DSN_NOTIFY_NEVER)
			buf_adds(b, " NOTIFY=NEVER");
		else if (n) {
			const char *sep = " NOTIFY=";
			if (n & DSN_NOTIFY_SUCCESS) { buf_printf(b, "%sSUCCESS", sep); sep = ","; }
			if (n & DSN_NOTIFY_FAILURE) { buf_printf(b, "%sFAILURE", sep); sep = ","; }
			if (n & DSN_NOTIFY_DELAY)   { buf_printf(b, "%sDELAY", sep); }
		}
		if (r->orcpt && r->orcpt[0])
			buf_printf(b, " ORCPT=%s", r->orcpt);
		else {
			char xt[1024];
			if (dsn_xtext_encode(r->addr, xt, sizeof(xt)))
				buf_printf(b, " ORCPT=rfc822;%s", xt);
		}
	}
	buf_adds(b, "\r\n");
}

void
relay_stuff_init(struct relay_stuffer *s)
{
	s->p1 = s->p2 = 0;
	s->any = false;
}

void
relay_stuff(struct relay_stuffer *s, const char *p, size_t len, struct buf *out)
{
	size_t start = 0;

	if (len == 0)
		return;
	buf_reserve(out, len + len / 64 + 2);
	for (size_t i = 0; i < len; i++) {
		/* a line starts after LF (bare LF included: some servers end lines there) */
		bool bol = (i == 0) ? (!s->any || s->p1 == '\n') : (p[i - 1] == '\n');
		if (p[i] == '.' && bol) {
			buf_add(out, p + start, i - start);
			buf_addc(out, '.');
			start = i;
		}
	}
	buf_add(out, p + start, len - start);
	s->p2 = len >= 2 ? (unsigned char)p[len - 2] : s->p1;
	s->p1 = (unsigned char)p[len - 1];
	s->any = true;
}

void
relay_stuff_end(struct relay_stuffer *s, struct buf *out)
{
	if (s->any && !(s->p2 == '\r' && s->p1 == '\n'))
		buf_adds(out, "\r\n");
	buf_adds(out, ".\r\n");
}

/* ------------------------------------------------------------------ */
/* transactions                                                        */

static struct relay_dest_state *
dest_get(struct relay *r, const struct relay_dest *d)
{
	struct relay_dest_state *ds;

	TAILQ_FOREACH(ds, &r->dests, entry)
		if (!strcmp(ds->name, d->name)) {
			ds->dest = d;
			return ds;
		}
	ds = xcalloc(1, sizeof(*ds));
	ds->r = r;
	ds->name = xstrdup(d->name);
	ds->dest = d;
	TAILQ_INIT(&ds->waiting);
	TAILQ_INIT(&ds->conns);
	TAILQ_INSERT_TAIL(&r->dests, ds, entry);
	return ds;
}

/* fill every unresolved result with code/text, then hand the txn back */
static void
txn_finish(struct relay *r, struct relay_txn *t, int code, const char *text)
{
	for (size_t i = 0; i < t->nrcpt; i++)
		if (t->res[i].code == 0) {
			t->res[i].code = code;
			t->res[i].remote = false;
			moat_strlcpy(t->res[i].text, text, sizeof(t->res[i].text));
		}
	r->busy--;
	t->done(t);
}

void
relay_submit(struct relay *r, struct relay_txn *t)
{
	struct relay_dest_state *ds = dest_get(r, t->dest);

	t->res = xcalloc(t->nrcpt ? t->nrcpt : 1, sizeof(*t->res));
	t->dsn_offered = false;
	if (t->dest->unix_path)
		moat_strlcpy(t->remote_mta, t->dest->unix_path, sizeof(t->remote_mta));
	else
		moat_strlcpy(t->remote_mta, t->dest->host, sizeof(t->remote_mta));
	t->ds = ds;
	TAILQ_INSERT_TAIL(&ds->waiting, t, entry);
	ds->nwaiting++;
	r->busy++;
	dest_kick_soon(ds);
}

static struct relay_txn *
dest_pop(struct relay_dest_state *ds)
{
	struct relay_txn *t = TAILQ_FIRST(&ds->waiting);
	if (t) {
		TAILQ_REMOVE(&ds->waiting, t, entry);
		ds->nwaiting--;
	}
	return t;
}

static void
dest_fail_waiting(struct relay_dest_state *ds, const char *why)
{
	struct relay_txn *t;
	char text[RELAY_REPLY_MAX];

	snprintf(text, sizeof(text), "%s", why);
	while ((t = dest_pop(ds)) != NULL)
		txn_finish(ds->r, t, 451, text);
}

static void conn_new(struct relay_dest_state *);
static void conn_resolve(struct conn *);

static void
dest_kick(struct relay_dest_state *ds)
{
	struct relay *r = ds->r;
	struct conn *c;
	long long conc = r->conf->relay_concurrency > 0 ? r->conf->relay_concurrency : 1;

	while (ds->nwaiting > 0 && !r->freeing) {
		TAILQ_FOREACH(c, &ds->conns, entry)
			if (c->st == C_IDLE)
				break;
		if (c != NULL) {
			conn_ready(c);          /* takes a waiting transaction */
			continue;
		}
		if (ds->dead_until > time(NULL)) {
			char why[RELAY_REPLY_MAX];
			snprintf(why, sizeof(why), "%s (destination %s not retried until %llds from now)",
			    ds->dead_reason, ds->name, (long long)(ds->dead_until - time(NULL)));
			dest_fail_waiting(ds, why);
			break;
		}
		if (ds->nconns < (size_t)conc && ds->nstarting < ds->nwaiting) {
			conn_new(ds);
			continue;
		}
		break;
	}
}

static void
dest_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	dest_kick(arg);
}

static void
dest_kick_soon(struct relay_dest_state *ds)
{
	if (ds->kick == NULL)
		ds->kick = event_new(ds->r->base, -1, 0, dest_kick_cb, ds);
	event_active(ds->kick, EV_TIMEOUT, 1);
}

/* ------------------------------------------------------------------ */
/* connections                                                         */

static void
conn_arm(struct conn *c, long long secs)
{
	struct timeval tv = { (time_t)secs, 0 };
	evtimer_add(c->timer, &tv);
}

static void
conn_send(struct conn *c, const char *p, size_t n)
{
	bufferevent_write(c->bev, p, n);
}

static void conn_timeout_cb(evutil_socket_t, short, void *);

static void
conn_new(struct relay_dest_state *ds)
{
	struct conn *c = xcalloc(1, sizeof(*c));

	c->r = ds->r;
	c->ds = ds;
	c->lmtp = ds->dest->proto == RELAY_LMTP;
	c->timer = evtimer_new(ds->r->base, conn_timeout_cb, c);
	c->st = C_RESOLVING;
	TAILQ_INSERT_TAIL(&ds->conns, c, entry);
	ds->nconns++;
	ds->nstarting++;
	/* may fail at once: c is then gone (and the kick loop re-checks) */
	if (ds->dest->unix_path)
		conn_try_connect(c);
	else
		conn_resolve(c);
}

static void
conn_free(struct conn *c)
{
	struct relay_dest_state *ds = c->ds;

	if (c->st < C_IDLE)
		ds->nstarting--;
	TAILQ_REMOVE(&ds->conns, c, entry);
	ds->nconns--;
	if (c->rj)
		c->rj->c = NULL;
	if (c->bev)
		bufferevent_free(c->bev);
	event_free(c->timer);
	if (c->ai)
		freeaddrinfo(c->ai);
	buf_free(&c->reply);
	free(c->accepted);
	if (c->txn)
		fatalx("relay: connection freed with a transaction");
	free(c);
	/* waiting work may now get a connection */
	if (ds->nwaiting > 0 && !ds->r->freeing)
		dest_kick_soon(ds);
}

static void
conn_set_state(struct conn *c, enum cstate st)
{
	if (c->st < C_IDLE && st >= C_IDLE)
		c->ds->nstarting--;
	c->st = st;
}

/* give the transaction back: unresolved recipients get code/text */
static void
conn_txn_done(struct conn *c, int code, const char *text)
{
	struct relay_txn *t = c->txn;

	if (t == NULL)
		return;
	c->txn = NULL;
	free(c->accepted);
	c->accepted = NULL;
	c->nacc = 0;
	t->dsn_offered = c->ext.dsn;
	txn_finish(c->r, t, code, text);
}

static void
conn_fail(struct conn *c, const char *fmt, ...)
{
	struct relay_dest_state *ds = c->ds;
	char why[RELAY_REPLY_MAX];
	va_list ap;
	bool handshake = !c->handshaken;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (c->st != C_QUIT)
		log_info("relay=%s event=conn-error peer=%s state=\"%s\" reason=\"%s\"", ds->name,
		    c->peer[0] ? c->peer : "-", cstate_name[c->st], esc(why));
	if (c->txn) {
		char text[RELAY_REPLY_MAX];
		snprintf(text, sizeof(text), "4.4.2 %s", why);
		conn_txn_done(c, 451, text);
	}
	if (handshake && c->st != C_QUIT) {
		/* nothing got through: the destination is down */
		ds->dead_until = time(NULL) + (time_t)c->r->conf->queue_retry_min;
		snprintf(ds->dead_reason, sizeof(ds->dead_reason), "4.4.1 %s", why);
		conn_free(c);
		dest_fail_waiting(ds, ds->dead_reason);
		return;
	}
	conn_free(c);
}

static void
conn_quit(struct conn *c)
{
	if (c->bev == NULL || c->st < C_IDLE) {
		conn_free(c);
		return;
	}
	conn_set_state(c, C_QUIT);
	conn_send(c, "QUIT\r\n", 6);
	conn_arm(c, RELAY_QUIT_SECS);
}

static void
conn_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	switch (c->st) {
	case C_RESOLVING:
		/* the previous address failed at once: try the next one */
		conn_try_connect(c);
		return;
	case C_IDLE:
		conn_quit(c);
		return;
	case C_QUIT:
		conn_free(c);
		return;
	case C_CONNECTING:
		/* try the next address */
		snprintf(c->last_err, sizeof(c->last_err), "connect to %s: timed out", c->peer);
		if (c->bev) {
			bufferevent_free(c->bev);
			c->bev = NULL;
		}
		c->cur = c->cur ? c->cur->ai_next : NULL;
		conn_try_connect(c);
		return;
	default:
		conn_fail(c, "conversation with %s timed out while %s", c->peer, cstate_name[c->st]);
		return;
	}
}

/* start (or go on with) the transaction at the head of the dest queue */
static void
conn_start_txn(struct conn *c, struct relay_txn *t)
{
	const struct envelope *env = t->env;

	c->txn = t;
	c->sent = c->acked = 0;
	c->mail_ok = false;
	c->nacc = 0;
	c->ndot = 0;
	c->accepted = xcalloc(t->nrcpt ? t->nrcpt : 1, sizeof(size_t));
	c->data_pos = 0;
	c->hdrs_sent = false;
	moat_strlcpy(t->remote_mta, c->ds->dest->unix_path ? c->ds->dest->unix_path :
	    c->ds->dest->host, sizeof(t->remote_mta));
	c->nmsgs++;
	if (c->ext.size && c->ext.size_max > 0 && env->data_len > c->ext.size_max) {
		char text[RELAY_REPLY_MAX];
		snprintf(text, sizeof(text), "552 5.3.4 message size %lld exceeds the limit of %s (%lld)",
		    (long long)env->data_len, c->ds->name, c->ext.size_max);
		conn_txn_done(c, 552, text);
		conn_ready(c);
		return;
	}
	if (env->smtputf8 && !c->ext.smtputf8) {
		bool need = has_non_ascii(env->sender);
		for (size_t i = 0; i < t->nrcpt && !need; i++)
			need = has_non_ascii(env->rcpts[t->rcpt[i]].addr);
		if (need) {
			conn_txn_done(c, 553, "553 5.6.7 SMTPUTF8 is required, but was not offered by the server");
			conn_ready(c);
			return;
		}
	}
	conn_set_state(c, C_TXN);
	conn_arm(c, c->r->conf->relay_command_timeout);
	conn_send_next(c);
}

/* send what may be sent now: everything up to DATA with PIPELINING, else one */
static int
conn_send_next(struct conn *c)
{
	struct relay_txn *t = c->txn;
	struct buf b = BUF_INIT;
	size_t last = t->nrcpt + 1;     /* index of DATA */

	while (c->sent <= last) {
		if (!c->ext.pipelining && c->sent > c->acked)
			break;
		if (c->sent == 0)
			relay_fmt_mail(&b, t->env, &c->ext, t->env->data_len);
		else if (c->sent <= t->nrcpt)
			relay_fmt_rcpt(&b, t->env, t->rcpt[c->sent - 1], &c->ext);
		else {
			/* without pipelining, DATA only if someone was accepted */
			if (!c->ext.pipelining && c->nacc == 0)
				break;
			buf_adds(&b, "DATA\r\n");
		}
		c->sent++;
	}
	if (b.len)
		conn_send(c, b.data, b.len);
	buf_free(&b);
	return 0;
}

static void
conn_fill(struct conn *c)
{
	struct relay_txn *t = c->txn;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct buf b = BUF_INIT;
	char *chunk = NULL;

	/* the verdict's added headers go first, through the same dot-stuffer */
	if (c->st == C_DATA && !c->hdrs_sent && c->data_pos == 0) {
		c->hdrs_sent = true;
		if (t->env->add_headers_len) {
			relay_stuff(&c->stuff, t->env->add_headers, t->env->add_headers_len, &b);
			evbuffer_add(out, b.data, b.len);
			buf_reset(&b);
		}
	}
	while (c->st == C_DATA && evbuffer_get_length(out) < RELAY_HIWAT) {
		off_t left = t->env->data_len - c->data_pos;
		if (left <= 0) {
			relay_stuff_end(&c->stuff, &b);
			evbuffer_add(out, b.data, b.len);
			buf_reset(&b);
			conn_set_state(c, C_DOT);
			conn_arm(c, c->r->conf->relay_data_timeout);
			break;
		}
		if (chunk == NULL)
			chunk = xmalloc(RELAY_CHUNK);
		size_t want = left < RELAY_CHUNK ? (size_t)left : RELAY_CHUNK;
		ssize_t n = pread(t->fd, chunk, want, t->env->data_off + c->data_pos);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			char why[200];
			snprintf(why, sizeof(why), "read error on the queue file: %s",
			    n < 0 ? strerror(errno) : "unexpected end of file");
			log_warnx("qid=%s event=relay-error reason=\"%s\"", t->qid, why);
			/* the server must not get a truncated message: drop the connection */
			free(chunk);
			buf_free(&b);
			conn_fail(c, "%s", why);
			return;
		}
		relay_stuff(&c->stuff, chunk, (size_t)n, &b);
		evbuffer_add(out, b.data, b.len);
		buf_reset(&b);
		c->data_pos += n;
	}
	free(chunk);
	buf_free(&b);
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->st == C_DATA) {
		conn_arm(c, c->r->conf->relay_data_timeout);
		conn_fill(c);
	}
}

static SSL_CTX *
relay_tls_ctx(struct relay *r, const struct relay_dest *d, char **err)
{
	*err = NULL;
	if (d->tls != RTLS_VERIFY) {
		if (r->tls_plain == NULL)
			r->tls_plain = tls_client_ctx_new(r->conf, false, NULL, err);
		return r->tls_plain;
	}
	for (size_t i = 0; i < r->ntls_verify; i++)
		if ((r->tls_verify_ca[i] == NULL && d->ca_file == NULL) ||
		    (r->tls_verify_ca[i] && d->ca_file && !strcmp(r->tls_verify_ca[i], d->ca_file)))
			return r->tls_verify[i];
	if (r->ntls_verify == ARRAY_SIZE(r->tls_verify)) {
		*err = xstrdup("too many distinct CA files");
		return NULL;
	}
	SSL_CTX *ctx = tls_client_ctx_new(r->conf, true, d->ca_file, err);
	if (ctx) {
		r->tls_verify[r->ntls_verify] = ctx;
		r->tls_verify_ca[r->ntls_verify++] = d->ca_file;
	}
	return ctx;
}

static void conn_read_cb(struct bufferevent *, void *);
static void conn_write_cb(struct bufferevent *, void *);
static void conn_event_cb(struct bufferevent *, short, void *);

/* 220 to STARTTLS: wrap the connection and start the handshake */
static void
conn_start_tls(struct conn *c)
{
	const struct relay_dest *d = c->ds->dest;
	char *err = NULL;
	SSL_CTX *ctx = relay_tls_ctx(c->r, d, &err);
	struct bufferevent *tb;

	if (ctx == NULL) {
		conn_fail(c, "TLS with %s: %s", c->peer, err ? err : "no context");
		free(err);
		return;
	}
	tb = tls_connect_filter(c->r->base, ctx, c->bev, d->host, d->tls == RTLS_VERIFY);
	if (tb == NULL) {
		conn_fail(c, "TLS with %s: cannot start", c->peer);
		return;
	}
	c->bev = tb;
	bufferevent_setcb(tb, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(tb, EV_WRITE, RELAY_LOWAT, 0);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
	conn_set_state(c, C_TLS);
	conn_arm(c, c->r->conf->relay_command_timeout);
}

/* the TLS handshake finished: check the certificate, then EHLO again */
static void
conn_tls_done(struct conn *c)
{
	const struct relay_dest *d = c->ds->dest;
	const char *why;
	char e[256];

	if (d->tls == RTLS_VERIFY && (why = tls_verify_error(c->bev)) != NULL) {
		conn_fail(c, "TLS with %s: certificate not trusted for %s: %s", c->peer, d->host, why);
		return;
	}
	c->tls = true;
	tls_short(c->bev, c->tlsinfo, sizeof(c->tlsinfo));
	log_info("relay=%s event=tls peer=%s tls=%s%s", c->ds->name, c->peer, c->tlsinfo,
	    d->tls == RTLS_VERIFY ? " verified=yes" : "");
	memset(&c->ext, 0, sizeof(c->ext));
	conn_set_state(c, C_EHLO);
	snprintf(e, sizeof(e), "%s %s\r\n", c->lmtp ? "LHLO" : "EHLO", c->r->conf->hostname);
	conn_send(c, e, strlen(e));
	conn_arm(c, c->r->conf->relay_command_timeout);
}

static void
conn_handshake_done(struct conn *c)
{
	const struct relay_dest *d = c->ds->dest;

	/* STARTTLS per the destination's tls= policy (Postfix's security levels) */
	if (!c->tls && !c->tls_tried && d->tls != RTLS_NONE) {
		if (c->ext.starttls) {
			conn_set_state(c, C_STARTTLS);
			conn_send(c, "STARTTLS\r\n", 10);
			conn_arm(c, c->r->conf->relay_command_timeout);
			return;
		}
		if (d->tls >= RTLS_REQUIRED) {
			conn_fail(c, "TLS is required, but was not offered by host %s", c->peer);
			return;
		}
	}
	c->handshaken = true;
	log_debug("relay=%s event=connected peer=%s pipelining=%d dsn=%d size=%lld", c->ds->name,
	    c->peer, c->ext.pipelining, c->ext.dsn, c->ext.size_max);
	conn_set_state(c, C_IDLE);
	conn_ready(c);
}

/* ready for work: take the next transaction, or idle, or quit */
static void
conn_ready(struct conn *c)
{
	struct relay_dest_state *ds = c->ds;
	struct relay_txn *t;

	conn_set_state(c, C_IDLE);
	if (c->need_rset) {
		c->need_rset = false;
		conn_set_state(c, C_RSET);
		conn_send(c, "RSET\r\n", 6);
		conn_arm(c, c->r->conf->relay_command_timeout);
		return;
	}
	if (c->r->freeing) {
		conn_quit(c);
		return;
	}
	if (c->nmsgs >= c->r->conf->relay_max_messages_per_connection) {
		conn_quit(c);
		if (ds->nwaiting > 0)
			dest_kick_soon(ds);
		return;
	}
	if ((t = dest_pop(ds)) != NULL) {
		conn_start_txn(c, t);
		return;
	}
	conn_arm(c, RELAY_IDLE_SECS);
}

static void
reply_text_add(struct conn *c, const char *line, size_t n)
{
	size_t room;

	if (c->reply.len >= RELAY_REPLY_MAX - 1)
		return;
	if (c->reply.len > 0) {
		/* continuation: " " + text after the code */
		if (n <= 4)
			return;
		line += 4;
		n -= 4;
		buf_addc(&c->reply, ' ');
	}
	room = RELAY_REPLY_MAX - 1 - c->reply.len;
	buf_add(&c->reply, line, n < room ? n : room);
}

static void on_reply(struct conn *, int code, const char *text);

/* one reply line; returns -1 if the connection is gone */
static void
on_line(struct conn *c, const char *line, size_t n)
{
	int code;
	bool last;

	if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
	    line[2] < '0' || line[2] > '9' || (n > 3 && line[3] != ' ' && line[3] != '-')) {
		char e[120];
		conn_fail(c, "protocol error from %s: malformed reply \"%s\"", c->peer,
		    log_esc(line, n, e, sizeof(e)));
		return;
	}
	code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	last = n == 3 || line[3] == ' ';
	if (c->reply_lines > 0 && code != c->reply_code) {
		conn_fail(c, "protocol error from %s: inconsistent multi-line reply", c->peer);
		return;
	}
	if (++c->reply_lines > RELAY_MAX_REPLY_LINES) {
		conn_fail(c, "protocol error from %s: reply of more than %d lines", c->peer,
		    RELAY_MAX_REPLY_LINES);
		return;
	}
	c->reply_code = code;
	if (c->st == C_EHLO && c->reply_lines > 1 && n > 4)
		relay_parse_ehlo_line(line + 4, n - 4, &c->ext);
	reply_text_add(c, line, n);
	if (!last)
		return;
	/* the reply is complete */
	char *text = buf_steal(&c->reply);
	if (text == NULL)
		text = xstrdup("");
	for (char *p = text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	c->reply_lines = 0;
	on_reply(c, code, text);
	free(text);
}

static void
set_res(struct relay_result *res, int code, const char *text)
{
	res->code = code;
	res->remote = true;
	moat_strlcpy(res->text, text, sizeof(res->text));
}

static void
on_reply(struct conn *c, int code, const char *text)
{
	struct relay_txn *t = c->txn;
	char e[RELAY_REPLY_MAX];

	switch (c->st) {
	case C_GREETING:
		if (code / 100 != 2) {
			conn_fail(c, "host %s refused to talk to me: %s", c->peer, text);
			return;
		}
		conn_set_state(c, C_EHLO);
		memset(&c->ext, 0, sizeof(c->ext));
		snprintf(e, sizeof(e), "%s %s\r\n", c->lmtp ? "LHLO" : "EHLO", c->r->conf->hostname);
		conn_send(c, e, strlen(e));
		conn_arm(c, c->r->conf->relay_command_timeout);
		return;
	case C_EHLO:
		if (code / 100 == 2) {
			conn_handshake_done(c);
			return;
		}
		if (code / 100 == 5 && !c->lmtp) {
			memset(&c->ext, 0, sizeof(c->ext));
			conn_set_state(c, C_HELO);
			snprintf(e, sizeof(e), "HELO %s\r\n", c->r->conf->hostname);
			conn_send(c, e, strlen(e));
			conn_arm(c, c->r->conf->relay_command_timeout);
			return;
		}
		conn_fail(c, "host %s refused %s: %s", c->peer, c->lmtp ? "LHLO" : "EHLO", text);
		return;
	case C_STARTTLS:
		if (code == 220) {
			conn_start_tls(c);
			return;
		}
		if (c->ds->dest->tls >= RTLS_REQUIRED) {
			conn_fail(c, "host %s refused STARTTLS: %d %s", c->peer, code, text);
			return;
		}
		c->tls_tried = true;        /* opportunistic: go on in the clear */
		conn_handshake_done(c);
		return;
	case C_TLS:
		return;
	case C_HELO:
		if (code / 100 == 2) {
			conn_handshake_done(c);
			return;
		}
		conn_fail(c, "host %s refused HELO: %s", c->peer, text);
		return;
	case C_RSET:
		if (code / 100 == 2) {
			conn_ready(c);
			return;
		}
		conn_quit(c);
		return;
	case C_QUIT:
		conn_free(c);
		return;
	case C_TXN: {
		size_t k = c->acked++;
		conn_arm(c, c->r->conf->relay_command_timeout);
		if (k == 0) {                           /* MAIL */
			c->mail_ok = code / 100 == 2;
			if (!c->mail_ok) {
				for (size_t i = 0; i < t->nrcpt; i++)
					set_res(&t->res[i], code, text);
				if (!c->ext.pipelining) {
					/* nothing more was sent */
					conn_txn_done(c, code, text);
					c->need_rset = true;
					conn_ready(c);
					return;
				}
			}
		} else if (k <= t->nrcpt) {             /* RCPT */
			if (c->mail_ok) {
				if (code / 100 == 2)
					c->accepted[c->nacc++] = k - 1;
				else
					set_res(&t->res[k - 1], code, text);
			}
		} else {                                /* DATA */
			if (code == 354 && c->mail_ok && c->nacc > 0) {
				conn_set_state(c, C_DATA);
				relay_stuff_init(&c->stuff);
				conn_arm(c, c->r->conf->relay_data_timeout);
				conn_fill(c);
				return;
			}
			if (code == 354) {
				/* a server that takes DATA with nobody accepted: do not send */
				conn_txn_done(c, 451, "4.5.0 server accepted DATA without recipients");
				conn_fail(c, "protocol error from %s: 354 without accepted recipients", c->peer);
				return;
			}
			for (size_t i = 0; i < c->nacc; i++)
				set_res(&t->res[c->accepted[i]], code, text);
			conn_txn_done(c, code, text);
			c->need_rset = true;
			conn_ready(c);
			return;
		}
		if (!c->ext.pipelining) {
			if (c->acked == t->nrcpt + 1 && c->nacc == 0) {
				/* every recipient refused: no DATA */
				conn_txn_done(c, code, text);
				c->need_rset = true;
				conn_ready(c);
				return;
			}
			conn_send_next(c);
		}
		return;
	}
	case C_DOT:
		if (c->lmtp) {
			set_res(&t->res[c->accepted[c->ndot]], code, text);
			if (++c->ndot < c->nacc) {
				conn_arm(c, c->r->conf->relay_data_timeout);
				return;
			}
		} else {
			for (size_t i = 0; i < c->nacc; i++)
				set_res(&t->res[c->accepted[i]], code, text);
		}
		conn_txn_done(c, code, text);
		conn_ready(c);
		return;
	case C_DATA:
		/* a reply in the middle of the data: the server gave up */
		conn_fail(c, "host %s said during DATA: %s", c->peer, text);
		return;
	case C_IDLE:
		/* e.g. "421 idle timeout" before closing: not an error */
		log_debug("relay=%s event=unsolicited reply=\"%s\"", c->ds->name, esc(text));
		conn_free(c);
		return;
	default:
		conn_fail(c, "protocol error from %s: unexpected reply %s", c->peer, esc(text));
		return;
	}
}

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) > RELAY_MAX_REPLY_LINE)
				conn_fail(c, "protocol error from %s: reply line too long", c->peer);
			return;
		}
		if ((size_t)p.pos > RELAY_MAX_REPLY_LINE) {
			conn_fail(c, "protocol error from %s: reply line too long", c->peer);
			return;
		}
		size_t n;
		char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
		if (line == NULL)
			return;
		/*
		 * on_line may free c.  Detect that with a generation check: the
		 * connection stays alive iff its bufferevent is still this one
		 * and it is still in the destination list.
		 */
		struct relay_dest_state *ds = c->ds;
		struct conn *x;
		on_line(c, line, strlen(line) < n ? strlen(line) : n);
		free(line);
		TAILQ_FOREACH(x, &ds->conns, entry)
			if (x == c)
				break;
		if (x == NULL || c->bev != bev)
			return;
	}
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		if (c->st == C_TLS) {
			conn_tls_done(c);
			return;
		}
		conn_set_state(c, C_GREETING);
		conn_arm(c, c->r->conf->relay_command_timeout);
		return;
	}
	if (c->st == C_TLS) {
		char e[256];
		const char *why = NULL;
		SSL *ssl = tls_ssl(bev);
		long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
		if (c->ds->dest->tls == RTLS_VERIFY && vr != X509_V_OK)
			why = X509_verify_cert_error_string(vr);
		tls_errors(e, sizeof(e));
		if (why)
			conn_fail(c, "TLS with %s: certificate not trusted for %s: %s", c->peer,
			    c->ds->dest->host, why);
		else
			conn_fail(c, "TLS handshake with %s failed: %s", c->peer, e);
		return;
	}
	if (c->st == C_CONNECTING) {
		int e = EVUTIL_SOCKET_ERROR();
		snprintf(c->last_err, sizeof(c->last_err), "connect to %s: %s", c->peer,
		    e ? evutil_socket_error_to_string(e) : "connection failed");
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->cur = c->cur ? c->cur->ai_next : NULL;
		conn_try_connect(c);
		return;
	}
	if (c->st == C_QUIT || c->st == C_IDLE) {
		conn_free(c);
		return;
	}
	if (what & BEV_EVENT_EOF)
		conn_fail(c, "lost connection with %s while %s", c->peer, cstate_name[c->st]);
	else
		conn_fail(c, "connection with %s failed while %s: %s", c->peer, cstate_name[c->st],
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void
conn_open(struct conn *c, const struct sockaddr *sa, socklen_t salen)
{
	c->bev = bufferevent_socket_new(c->r->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL)
		fatalx("bufferevent_socket_new");
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, RELAY_LOWAT, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	conn_set_state(c, C_CONNECTING);
	conn_arm(c, c->r->conf->relay_connect_timeout);
	if (bufferevent_socket_connect(c->bev, sa, (int)salen) < 0) {
		/* immediate failure: the event callback is not called */
		snprintf(c->last_err, sizeof(c->last_err), "connect to %s: %s", c->peer,
		    strerror(errno ? errno : ECONNREFUSED));
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->cur = c->cur ? c->cur->ai_next : NULL;
		/* avoid recursion through a long address list: go on from the loop */
		struct timeval tv = { 0, 0 };
		conn_set_state(c, C_RESOLVING);
		evtimer_add(c->timer, &tv);
	}
}

static void
conn_try_connect(struct conn *c)
{
	const struct relay_dest *d = c->ds->dest;

	if (d->unix_path) {
		struct sockaddr_un sun;
		if (c->last_err[0]) {
			conn_fail(c, "%s", c->last_err);
			return;
		}
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(d->unix_path) >= sizeof(sun.sun_path)) {
			conn_fail(c, "unix socket path too long: %s", d->unix_path);
			return;
		}
		moat_strlcpy(sun.sun_path, d->unix_path, sizeof(sun.sun_path));
		moat_strlcpy(c->peer, d->unix_path, sizeof(c->peer));
		conn_open(c, (struct sockaddr *)&sun, sizeof(sun));
		return;
	}
	if (c->cur == NULL) {
		conn_fail(c, "%s", c->last_err[0] ? c->last_err : "no address to connect to");
		return;
	}
	if (c->cur->ai_family == AF_INET6) {
		char a[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)c->cur->ai_addr)->sin6_addr, a, sizeof(a));
		snprintf(c->peer, sizeof(c->peer), "[%s]:%s", a, d->port);
	} else {
		char a[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &((struct sockaddr_in *)c->cur->ai_addr)->sin_addr, a, sizeof(a));
		snprintf(c->peer, sizeof(c->peer), "%s:%s", a, d->port);
	}
	conn_open(c, c->cur->ai_addr, c->cur->ai_addrlen);
}

static void
resolve_work(void *arg)
{
	struct resolve_job *j = arg;
	struct addrinfo hints;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
	j->err = getaddrinfo(j->host, j->port, &hints, &j->ai);
}

static void
resolve_done(void *arg)
{
	struct resolve_job *j = arg;
	struct conn *c = j->c;

	if (c == NULL) {
		if (j->ai)
			freeaddrinfo(j->ai);
	} else {
		c->rj = NULL;
		if (j->err != 0) {
			snprintf(c->last_err, sizeof(c->last_err), "cannot resolve %s: %s", j->host,
			    gai_strerror(j->err));
			conn_fail(c, "%s", c->last_err);
		} else {
			c->ai = c->cur = j->ai;
			conn_try_connect(c);
		}
	}
	free(j->host);
	free(j->port);
	free(j);
}

/* first step of a new connection: addresses */
static void
conn_resolve(struct conn *c)
{
	const struct relay_dest *d = c->ds->dest;
	struct addrinfo hints, *ai = NULL;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	if (getaddrinfo(d->host, d->port, &hints, &ai) == 0) {
		c->ai = c->cur = ai;
		conn_try_connect(c);
		return;
	}
	/* a name: look it up in the pool, never on the loop */
	struct resolve_job *j = xcalloc(1, sizeof(*j));
	j->c = c;
	j->host = xstrdup(d->host);
	j->port = xstrdup(d->port);
	c->rj = j;
	pool_submit(c->r->pool, resolve_work, resolve_done, j);
}

/* ------------------------------------------------------------------ */

struct relay *
relay_new(struct event_base *base, struct pool *pool, const struct moat_conf *conf)
{
	struct relay *r = xcalloc(1, sizeof(*r));

	r->base = base;
	r->pool = pool;
	r->conf = conf;
	TAILQ_INIT(&r->dests);
	return r;
}

void
relay_clear_dead(struct relay *r)
{
	struct relay_dest_state *ds;

	TAILQ_FOREACH(ds, &r->dests, entry)
		ds->dead_until = 0;
}

bool
relay_dest_dead(struct relay *r, const struct relay_dest *d)
{
	struct relay_dest_state *ds;

	TAILQ_FOREACH(ds, &r->dests, entry)
		if (!strcmp(ds->name, d->name))
			return ds->dead_until > time(NULL);
	return false;
}

size_t
relay_busy(const struct relay *r)
{
	return r->busy;
}

void
relay_close_idle(struct relay *r)
{
	struct relay_dest_state *ds;
	struct conn *c, *next;

	TAILQ_FOREACH(ds, &r->dests, entry)
		for (c = TAILQ_FIRST(&ds->conns); c != NULL; c = next) {
			next = TAILQ_NEXT(c, entry);
			if (c->st == C_IDLE)
				conn_quit(c);
		}
}

void
relay_free(struct relay *r)
{
	struct relay_dest_state *ds;
	struct conn *c;

	if (r == NULL)
		return;
	r->freeing = true;
	while ((ds = TAILQ_FIRST(&r->dests)) != NULL) {
		while ((c = TAILQ_FIRST(&ds->conns)) != NULL) {
			if (c->txn)
				conn_txn_done(c, 421, "4.3.2 mail system shutting down");
			conn_free(c);
		}
		dest_fail_waiting(ds, "4.3.2 mail system shutting down");
		TAILQ_REMOVE(&r->dests, ds, entry);
		if (ds->kick)
			event_free(ds->kick);
		free(ds->name);
		free(ds);
	}
	SSL_CTX_free(r->tls_plain);
	for (size_t i = 0; i < r->ntls_verify; i++)
		SSL_CTX_free(r->tls_verify[i]);
	free(r);
}
