/*
 * smtp_session.c - the SMTP server sessions.
 *
 * Runs in: the worker process, on its event loop.  Untrusted input: every
 * byte from the client.  Limits enforced here: command line length
 * (smtp-max-line, checked before the line is complete), bad commands,
 * recipients per message, messages per session, message size (SIZE= and
 * counted while receiving), text line length, header size, Received hops,
 * idle time (shorter under stress), sessions in total and per client IP.
 *
 * A command is a table row: verb, the states it is allowed in, and its
 * handler.  Message data goes through the pure DATA reader in
 * smtp_parse.c straight into the spool writer; at the end the commit
 * (fdatasync + rename + directory fsync) runs in the thread pool and the
 * 250 is sent only when it returns.  While a commit is out the session
 * reads nothing more, so pipelined commands wait their turn.
 */
#include "config.h"
#include "smtp_session.h"
#include "smtp_parse.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "net.h"
#include "pool.h"
#include "queue.h"
#include "engine.h"
#include "journal.h"
#include "metrics.h"
#include "filter.h"
#include "greylist.h"
#include "lists.h"
#include "qstore.h"
#include "ratelimit.h"
#include "sasl.h"
#include "spool.h"
#include "tls.h"
#include "users.h"
#include "util.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

enum sstate {
	S_INIT,         /* before HELO/EHLO */
	S_HELO,         /* no transaction */
	S_MAIL,         /* MAIL accepted, no RCPT yet */
	S_RCPT,         /* at least one RCPT accepted */
	S_DATA,         /* reading DATA content */
	S_BDAT,         /* reading a BDAT chunk */
	S_COMMIT,       /* waiting for the pool to commit */
	S_AUTH,         /* reading a SASL response line */
	S_AUTH_WAIT,    /* a SASL step is in the pool (or the failure delay runs) */
	S_CLOSING,      /* flushing the last reply */
	S_GREYLIST,     /* a greylisting decision is in the pool (RCPT) */
	S_PREGREET,     /* the 220 waits for smtp-pregreet-wait */
};

#define ST(s) (1u << (s))

struct session {
	char    sid[NET_SID_SIZE];
	struct bufferevent *bev;
	const struct listen_conf *listen;
	struct sockaddr_storage ss;
	char    ip[INET6_ADDRSTRLEN];
	int     port;
	bool    exempt;             /* from per-IP limits */
	enum sstate state;
	bool    esmtp;
	char   *helo;
	int     nbad;
	int     nmsgs;
	int     ncmds;
	uint64_t started_ms;
	bool    skipping;           /* discarding the rest of an overlong command line */
	bool    tls;                /* the session is encrypted */
	bool    starttls_pending;   /* switch to TLS once "220 Ready" is flushed */
	char    tlsinfo[128];       /* "TLSv1.3:TLS_AES_256_GCM_SHA384" once known */
	/* SMTP AUTH */
	struct sasl_server *sasl;
	char   *sasl_in;            /* response for the pool step */
	size_t  sasl_inlen;
	char   *sasl_out;           /* challenge / server-final from the step */
	enum sasl_status sasl_st;
	char   *auth_user;          /* authenticated identity */
	int     auth_failures;
	struct event *delay;        /* failure delay before 535; the delayed 220 */
	bool    pregreet;           /* talked before the 220 (smtp-pregreet-action score) */

	/* the transaction */
	struct envelope env;
	struct smtp_mail_params mp;
	struct spool_writer *w;
	struct smtp_data_reader dr;
	bool    used_bdat;
	bool    used_data;
	long long bdat_left;        /* bytes left in the current chunk */
	bool    bdat_last;
	const char *bdat_error;     /* chunks are read and discarded, then this reply */
	bool    bdat_oneshot;       /* bdat_error is a sequence error for this chunk only */
	enum sstate bdat_prev;      /* state before the BDAT command */
	/* header scan over the emitted message */
	bool    in_headers;
	size_t  header_bytes;
	char    linehead[10];
	size_t  lineheadlen;
	struct buf hold;            /* the header field being received (see emit) */
	const struct domain_conf *th_domain; /* the first recipient's: its thresholds apply */
	struct engine_early *early; /* the filters run at the first RCPT (filter-stage) */
	char   *early_reject;       /* their refusal, repeated for every RCPT */
	enum { HOLD_PASS, HOLD_FIELD, HOLD_DROP } hold_mode;
	bool    at_line_start;
	int     nreceived;
	bool    header_too_big;

	/* the filter job, then the commit job */
	struct verdict verdict;
	char   *qmsg;               /* the message, kept for the quarantine */
	size_t  qlen;
	bool    quarantined;
	bool    allowlisted;        /* client IP or HELO on the allow list */
	bool    msg_allow;          /* sender or a recipient on the allow list */
	struct lists *jlists;       /* the lists the filter job uses (a reference) */
	char   *rcvhdr;             /* our Received header, held for the commit when
	                             * filters run (it goes first, before theirs) */
	char   *commit_err;
	int     refs;
	bool    dead;               /* connection gone; free when refs reach 0 */
	struct session *next, *prev;
};

static struct session *sessions;
static size_t nsessions;
static struct evconnlistener **listeners;
static size_t nlisteners;
static void (*drain_cb)(void *);
static void *drain_arg;

/* per-IP session counts: a small chained hash table */
struct ipcount {
	char    ip[INET6_ADDRSTRLEN];
	int     n;
	struct ipcount *next;
};
#define IPHASH 1024
static struct ipcount *iptab[IPHASH];

static unsigned
iphash(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h % IPHASH;
}

static int
ip_count(const char *ip, int delta)
{
	struct ipcount **pp = &iptab[iphash(ip)], *c;
	for (; (c = *pp) != NULL; pp = &c->next)
		if (!strcmp(c->ip, ip))
			break;
	if (c == NULL) {
		if (delta <= 0)
			return 0;
		c = xcalloc(1, sizeof(*c));
		moat_strlcpy(c->ip, ip, sizeof(c->ip));
		c->next = iptab[iphash(ip)];
		iptab[iphash(ip)] = c;
		pp = &iptab[iphash(ip)];
	}
	c->n += delta;
	int n = c->n;
	if (c->n <= 0) {
		*pp = c->next;
		free(c);
	}
	return n;
}

static void session_read(struct bufferevent *, void *);
static void session_process(struct session *);
static void session_free(struct session *);
static void reply(struct session *, const char *, ...) LOGFMT(2, 3);

static const struct moat_conf *
C(void)
{
	return W->conf;
}

static void
reply(struct session *s, const char *fmt, ...)
{
	va_list ap;
	struct evbuffer *out = bufferevent_get_output(s->bev);

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static void
set_timeout(struct session *s)
{
	long long t = C()->smtp_timeout;
	if (s->state == S_DATA || s->state == S_BDAT)
		t = C()->smtp_data_timeout;
	/* stress: above 3/4 of the session limit, idle clients get less time */
	if (nsessions * 4 > (size_t)C()->smtp_max_sessions * 3 && t > C()->smtp_stress_timeout)
		t = C()->smtp_stress_timeout;
	struct timeval tv = { (time_t)t, 0 };
	struct timeval wtv = { (time_t)C()->smtp_timeout, 0 };
	bufferevent_set_timeouts(s->bev, &tv, &wtv);
}

/* finish the reply, then close */
static void
close_after(struct session *s)
{
	s->state = S_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		session_free(s);
}

static void
reset_transaction(struct session *s)
{
	if (s->w) {
		spool_abort(s->w);
		spool_writer_free(s->w);
		s->w = NULL;
	}
	envelope_clear(&s->env);
	s->th_domain = NULL;
	engine_early_free(s->early);
	s->early = NULL;
	xfree(s->early_reject);
	xfree(s->rcvhdr);
	s->msg_allow = false;
	memset(&s->mp, 0, sizeof(s->mp));
	s->used_bdat = s->used_data = false;
	s->bdat_left = 0;
	s->bdat_last = false;
	s->bdat_error = NULL;
	s->bdat_oneshot = false;
	if (s->state != S_INIT && s->state != S_CLOSING)
		s->state = S_HELO;
}

static const char *
kw(const char *s)
{
	return s ? s : "";
}

/* ---- rate limits ("ratelimit WHAT N/DURATION per ip|user") ---- */

/* count `cost` against every rule for `what`; false with a reply sent
 * when one is over its limit */
static bool
rate_ok(struct session *s, enum rate_what what, long long cost)
{
	static const char pre[] = { 'c', 'm', 'r' };
	static const char *names[] = { "connection", "message", "recipient" };

	for (size_t i = 0; i < C()->nrates; i++) {
		const struct rate_rule *r = &C()->rates[i];
		char key[RL_KEY_MAX + 1];
		struct rl_result res;

		if (r->what != what)
			continue;
		if (r->per == RATE_PER_USER && s->auth_user == NULL)
			continue;
		if (r->per == RATE_PER_IP && s->exempt)
			continue;
		snprintf(key, sizeof(key), "%c%zu:%s", pre[what], i,
		    r->per == RATE_PER_USER ? s->auth_user : s->ip);
		if (!ratelimit_hit(W->rates, key, time(NULL), (unsigned)r->window, r->limit, cost, &res)) {
			log_info("sid=%s event=ratelimit ip=%s user=<%s> what=%s limit=%lld/%llds retry-after=%lld",
			    s->sid, s->ip, esc(s->auth_user ? s->auth_user : ""), names[what], r->limit,
			    r->window, res.retry_after);
			if (what == RATE_CONNECTIONS)
				reply(s, "421 4.7.0 %s Error: too many connections from %s; try again in %lld seconds",
				    C()->hostname, s->ip, res.retry_after);
			else
				reply(s, "450 4.7.1 Error: %s rate limit exceeded; try again in %lld seconds",
				    names[what], res.retry_after);
			return false;
		}
	}
	return true;
}

/* one log line for a refused command */
static void
log_reject(struct session *s, const char *stage, const char *rcpt, const char *rep)
{
	char r[300];
	log_esc(rep, strlen(rep), r, sizeof(r));
	log_info("sid=%s qid=NOQUEUE event=reject stage=%s ip=%s from=<%s> to=<%s> helo=<%s> reply=\"%s\"",
	    s->sid, stage, s->ip, esc(s->env.sender), esc(rcpt), esc(s->helo), r);
	journal_reject(s->sid, stage, s->ip, s->env.sender, rcpt, rep);
}

static bool
bad_command(struct session *s)
{
	if (++s->nbad >= C()->smtp_max_bad_commands) {
		reply(s, "421 4.7.0 %s Error: too many errors", C()->hostname);
		log_info("sid=%s event=disconnect-errors ip=%s errors=%d", s->sid, s->ip, s->nbad);
		close_after(s);
		return true;
	}
	return false;
}

/* ---- commands ---- */

static void
cmd_helo(struct session *s, const struct smtp_command *c)
{
	bool ehlo = c->cmd == CMD_EHLO;

	if (!smtp_valid_helo(c->arg, c->arglen)) {
		reply(s, "501 5.5.4 Syntax: %s hostname", ehlo ? "EHLO" : "HELO");
		bad_command(s);
		return;
	}
	reset_transaction(s);
	free(s->helo);
	s->helo = xstrndup(c->arg, c->arglen);
	if (lists_match(worker_lists(), LK_BLOCK, LT_HELO, s->helo)) {
		char rb[400];
		snprintf(rb, sizeof(rb), "550 5.7.1 <%s>: Helo command rejected: blocked", esc(s->helo));
		reply(s, "%s", rb);
		log_reject(s, "helo", "", rb);
		xfree(s->helo);
		s->state = S_INIT;
		return;
	}
	if (lists_match(worker_lists(), LK_ALLOW, LT_HELO, s->helo))
		s->allowlisted = true;
	s->esmtp = ehlo;
	s->state = S_HELO;
	if (!ehlo) {
		reply(s, "250 %s", C()->hostname);
		return;
	}
	reply(s, "250-%s", C()->hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %lld", C()->message_size_limit);
	reply(s, "250-8BITMIME");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-SMTPUTF8");
	reply(s, "250-DSN");
	if (s->listen->tls == TLS_STARTTLS && !s->tls)
		reply(s, "250-STARTTLS");
	if (s->listen->auth != AUTH_NONE && !s->auth_user) {
		/* mechanisms that send the password: only over TLS (RFC 4954 4) */
		if (s->tls || C()->auth_allow_plaintext)
			reply(s, "250-AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256");
		else
			reply(s, "250-AUTH CRAM-MD5 SCRAM-SHA-256");
	}
	reply(s, "250 CHUNKING");
}

static bool sender_owned(struct session *, const char *);
static bool greylist_wanted(const struct session *);
static void greylist_submit(struct session *, const char *, const struct smtp_rcpt_params *,
    const struct domain_conf *);
static void reply_safe(const char *, char *, size_t);
static void rcpt_checked(struct session *, const char *, const struct smtp_rcpt_params *,
    const struct domain_conf *);
static void early_submit(struct session *, const char *, const struct smtp_rcpt_params *,
    const struct domain_conf *);
static void rcpt_accept(struct session *, const char *, const struct smtp_rcpt_params *,
    const struct domain_conf *);

static void
cmd_mail(struct session *s, const struct smtp_command *c)
{
	char addr[SMTP_PATH_MAX + 1];
	const char *rep;

	if (s->nmsgs >= C()->smtp_max_messages) {
		reply(s, "421 4.7.0 %s Error: too many messages in one session", C()->hostname);
		close_after(s);
		return;
	}
	if (smtp_parse_mail(c->arg, c->arglen, s->esmtp, addr, sizeof(addr), &s->mp, &rep) < 0) {
		reply(s, "%s", rep);
		log_reject(s, "mail", "", rep);
		bad_command(s);
		return;
	}
	if (s->mp.body == BODY_BINARYMIME) {
		reply(s, "555 5.5.4 BODY=BINARYMIME is not supported");
		return;
	}
	if (s->listen->auth == AUTH_REQUIRED && !s->auth_user) {
		rep = "530 5.7.0 Authentication required";
		reply(s, "%s", rep);
		log_reject(s, "mail", "", rep);
		return;
	}
	if (s->auth_user && C()->submission_sender_check && !sender_owned(s, addr)) {
		char rb[SMTP_PATH_MAX + 128];
		snprintf(rb, sizeof(rb), "553 5.7.1 <%s>: Sender address rejected: not owned by user %s",
		    addr, s->auth_user);
		reply(s, "%s", rb);
		log_reject(s, "mail", "", rb);
		return;
	}
	if (addr[0] && lists_match(worker_lists(), LK_BLOCK, LT_SENDER, addr)) {
		char rb[SMTP_PATH_MAX + 128];
		snprintf(rb, sizeof(rb), "550 5.7.1 <%s>: Sender address rejected: blocked", addr);
		reply(s, "%s", rb);
		log_reject(s, "mail", "", rb);
		return;
	}
	/* messages are counted per MAIL command, as Postfix's anvil does */
	if (!rate_ok(s, RATE_MESSAGES, 1))
		return;
	if (s->mp.size > C()->message_size_limit) {
		rep = "552 5.3.4 Message size exceeds fixed maximum message size";
		reply(s, "%s", rep);
		log_reject(s, "mail", "", rep);
		return;
	}
	envelope_clear(&s->env);
	s->env.sender = xstrdup(addr);
	s->env.body = s->mp.body;
	s->env.smtputf8 = s->mp.smtputf8;
	s->env.ret = s->mp.ret;
	s->env.envid = s->mp.envid[0] ? xstrdup(s->mp.envid) : NULL;
	s->msg_allow = addr[0] && lists_match(worker_lists(), LK_ALLOW, LT_SENDER, addr);
	s->state = S_MAIL;
	reply(s, "250 2.1.0 Ok");
}

static void
cmd_rcpt(struct session *s, const struct smtp_command *c)
{
	char addr[SMTP_PATH_MAX + 1];
	struct smtp_rcpt_params rp;
	const char *rep, *domain;
	const struct domain_conf *d;
	char rbuf[SMTP_PATH_MAX + 128];

	if (smtp_parse_rcpt(c->arg, c->arglen, s->env.smtputf8, addr, sizeof(addr), &rp, &rep) < 0) {
		reply(s, "%s", rep);
		log_reject(s, "rcpt", "", rep);
		bad_command(s);
		return;
	}
	if (s->env.nrcpts >= (size_t)C()->smtp_max_rcpts) {
		reply(s, "452 4.5.3 Error: too many recipients");
		return;
	}
	if (strcmp(addr, "postmaster") == 0) {
		/* <postmaster> with no domain: our postmaster if that domain is
		 * ours, else postmaster@ the first configured domain */
		const char *pd = smtp_addr_domain(C()->postmaster);
		if (pd && conf_find_domain(C(), pd))
			moat_strlcpy(addr, C()->postmaster, sizeof(addr));
		else if (C()->ndomains)
			snprintf(addr, sizeof(addr), "postmaster@%s", C()->domains[0].name);
	}
	domain = smtp_addr_domain(addr);
	d = domain ? conf_find_domain(C(), domain) : NULL;
	if (d == NULL && s->auth_user && C()->smarthost)
		d = C()->smarthost;         /* authenticated: any domain, via the smarthost */
	if (d == NULL) {
		snprintf(rbuf, sizeof(rbuf), "550 5.7.1 <%s>: Relay access denied", addr);
		reply(s, "%s", rbuf);
		log_reject(s, "rcpt", addr, rbuf);
		return;
	}
	/* one verdict per message: recipients whose domains have different
	 * thresholds go in separate transactions (the client retries a 452
	 * recipient at once, in its next transaction: RFC 5321 4.5.3.1.10) */
	if (s->env.nrcpts > 0 && s->th_domain &&
	    (s->th_domain->th_tag != d->th_tag || s->th_domain->th_quarantine != d->th_quarantine ||
	    s->th_domain->th_reject != d->th_reject)) {
		snprintf(rbuf, sizeof(rbuf),
		    "452 4.5.3 <%s>: Recipient of another filter policy: send it in a separate transaction",
		    addr);
		reply(s, "%s", rbuf);
		log_reject(s, "rcpt", addr, rbuf);
		return;
	}
	if (d->deliver == DELIVER_STORE && d != C()->smarthost) {
		struct users *u = worker_users();
		int r = u ? users_exists(u, addr, C()->recipient_delimiter) : -1;
		if (r == 0 && ascii_strncasecmp(addr, "postmaster@", 11) == 0)
			r = 1;      /* RFC 5321 4.5.1: always accepted */
		if (r == 0) {
			snprintf(rbuf, sizeof(rbuf),
			    "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table",
			    addr);
			reply(s, "%s", rbuf);
			log_reject(s, "rcpt", addr, rbuf);
			return;
		}
		if (r < 0) {
			snprintf(rbuf, sizeof(rbuf), "451 4.3.0 <%s>: Temporary lookup failure", addr);
			reply(s, "%s", rbuf);
			log_reject(s, "rcpt", addr, rbuf);
			return;
		}
	}
	if (lists_match(worker_lists(), LK_BLOCK, LT_RCPT, addr)) {
		snprintf(rbuf, sizeof(rbuf), "550 5.7.1 <%s>: Recipient address rejected: blocked", addr);
		reply(s, "%s", rbuf);
		log_reject(s, "rcpt", addr, rbuf);
		return;
	}
	if (lists_match(worker_lists(), LK_ALLOW, LT_RCPT, addr))
		s->msg_allow = true;
	if (!rate_ok(s, RATE_RECIPIENTS, 1))
		return;
	/* the same recipient twice is delivered once */
	for (size_t i = 0; i < s->env.nrcpts; i++)
		if (!ascii_strcasecmp(s->env.rcpts[i].addr, addr)) {
			reply(s, "250 2.1.5 Ok");
			return;
		}
	if (s->early_reject) {
		/* the client or the sender was refused at the first RCPT: all are */
		reply(s, "%s", s->early_reject);
		log_reject(s, "rcpt", addr, s->early_reject);
		return;
	}
	if (s->env.nrcpts == 0 && s->early == NULL && s->auth_user == NULL &&
	    engine_has_early(W->engine)) {
		early_submit(s, addr, &rp, d);          /* then the greylist, then accept */
		return;
	}
	rcpt_checked(s, addr, &rp, d);
}

/* the recipient passed the checks and the early filters: the greylist */
static void
rcpt_checked(struct session *s, const char *addr, const struct smtp_rcpt_params *rp,
    const struct domain_conf *d)
{
	if (greylist_wanted(s)) {
		greylist_submit(s, addr, rp, d);        /* it accepts or defers it */
		return;
	}
	rcpt_accept(s, addr, rp, d);
}

/* the recipient passed every check (the greylist too, if any) */
static void
rcpt_accept(struct session *s, const char *addr, const struct smtp_rcpt_params *rp,
    const struct domain_conf *d)
{
	envelope_add_rcpt(&s->env, addr, rp->orcpt, rp->notify);
	if (s->env.nrcpts == 1)
		s->th_domain = d;
	s->state = S_RCPT;
	reply(s, "250 2.1.5 Ok");
}

/*
 * Header fields dropped while receiving (docs/filter-engine.md): an
 * Authentication-Results field that claims our authserv-id (RFC 8601 5:
 * only we may write those) and, when the filters run, the X-Spam-* fields
 * we write ourselves, so a sender cannot pre-label its own message.  The
 * decision needs the field name and the start of its value: a field is held
 * until it ends or HDR_HOLD_MAX bytes arrived, then written or dropped
 * (the rest of a long field follows the same decision).
 */
#define HDR_HOLD_MAX 4096

static bool
drop_field(struct session *s, const char *f, size_t len)
{
	static const char *const ours[] = { "X-Spam-Flag", "X-Spam-Status", "X-Spam-Score",
	    "X-Spam-Report", "X-Spam-Level" };
	const char *colon = memchr(f, ':', len);
	size_t nl;

	if (colon == NULL)
		return false;
	nl = (size_t)(colon - f);
	while (nl > 0 && (f[nl - 1] == ' ' || f[nl - 1] == '\t'))
		nl--;
	if (nl == 22 && !ascii_strncasecmp(f, "Authentication-Results", 22)) {
		const char *id = C()->authserv_id ? C()->authserv_id : C()->hostname;
		const char *p = colon + 1, *e = f + len;
		int depth = 0;
		/* skip CFWS: blanks, line folding, (comments) */
		while (p < e) {
			if (*p == '(')
				depth++;
			else if (*p == ')' && depth > 0)
				depth--;
			else if (depth == 0 && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
				break;
			p++;
		}
		const char *q = p;
		while (q < e && *q != ';' && *q != ' ' && *q != '\t' && *q != '\r' && *q != '\n' && *q != '(')
			q++;
		return (size_t)(q - p) == strlen(id) && !ascii_strncasecmp(p, id, (size_t)(q - p));
	}
	if (W->engine && engine_active(W->engine))
		for (size_t i = 0; i < ARRAY_SIZE(ours); i++)
			if (nl == strlen(ours[i]) && !ascii_strncasecmp(f, ours[i], nl))
				return true;
	return false;
}

/* decide on the held field: write it (and what follows) or drop it */
static void
field_decide(struct session *s)
{
	if (drop_field(s, s->hold.data ? s->hold.data : "", s->hold.len)) {
		char name[40];
		size_t n = 0;
		while (n < s->hold.len && n + 1 < sizeof(name) && s->hold.data[n] != ':')
			name[n] = s->hold.data[n], n++;
		name[n] = '\0';
		log_info("sid=%s qid=%s event=header-removed ip=%s field=\"%s\"", s->sid, s->env.qid,
		    s->ip, esc(name));
		s->hold_mode = HOLD_DROP;
	} else {
		spool_write(s->w, s->hold.data, s->hold.len);
		s->hold_mode = HOLD_PASS;
	}
	s->hold.len = 0;
}

/* the end of the header section, or of the message: settle the last field */
static void
field_flush(struct session *s)
{
	if (s->hold_mode == HOLD_FIELD && s->hold.len)
		field_decide(s);
	s->hold.len = 0;
	s->hold_mode = HOLD_PASS;
}

/* message bytes from the DATA/BDAT reader: to the spool, and the header scan */
static void
emit(void *arg, const char *p, size_t len)
{
	struct session *s = arg;
	size_t i, from = 0;     /* p[from..i) not yet written, in HOLD_PASS */

	if (!s->in_headers) {
		spool_write(s->w, p, len);
		return;
	}
	for (i = 0; i < len && s->in_headers; i++) {
		char ch = p[i];
		if (s->at_line_start && ch != ' ' && ch != '\t') {
			/* the previous field is complete */
			if (s->hold_mode == HOLD_PASS && i > from)
				spool_write(s->w, p + from, i - from);
			field_flush(s);
			from = i;
			/* a new field (or the empty line: then pass-through) */
			s->hold_mode = (ch == '\r' || ch == '\n') ? HOLD_PASS : HOLD_FIELD;
		}
		s->at_line_start = ch == '\n';
		if (s->hold_mode == HOLD_FIELD) {
			buf_add(&s->hold, &ch, 1);
			if (s->hold.len >= HDR_HOLD_MAX)
				field_decide(s);
			from = i + 1;
		} else if (s->hold_mode == HOLD_DROP)
			from = i + 1;
		if (++s->header_bytes > (size_t)C()->smtp_max_header_size)
			s->header_too_big = true;
		if (ch == '\n') {
			/* line done: "\r\n" alone ends the header section */
			if (s->lineheadlen == 1 && s->linehead[0] == '\r')
				s->in_headers = false;
			else if (s->lineheadlen >= 9 && !ascii_strncasecmp(s->linehead, "received:", 9))
				s->nreceived++;
			s->lineheadlen = 0;
		} else if (s->lineheadlen < sizeof(s->linehead))
			s->linehead[s->lineheadlen++] = ch;
	}
	/* the rest of this chunk: written unless held or dropped */
	if (s->hold_mode == HOLD_PASS && len > from)
		spool_write(s->w, p + from, len - from);
	else if (!s->in_headers && len > i)
		spool_write(s->w, p + i, len - i);
}

static void
received_header(struct session *s, struct buf *b)
{
	char date[64];
	rfc5322_date(s->env.arrival, date, sizeof(date));
	char with[16];
	/* RFC 3848 / 6531 protocol types */
	snprintf(with, sizeof(with), "%s%s%s%s", s->env.smtputf8 ? "UTF8" : "",
	    s->esmtp || s->env.smtputf8 ? (s->env.smtputf8 ? "SMTP" : "ESMTP") : "SMTP",
	    s->tls && (s->esmtp || s->env.smtputf8) ? "S" : "",
	    s->auth_user && (s->esmtp || s->env.smtputf8) ? "A" : "");
	if (s->auth_user && C()->submission_hide_client)
		buf_printf(b, "Received: ");
	else
		buf_printf(b, "Received: from %s (unknown [%s])\r\n", s->helo ? s->helo : "unknown",
		    s->ip);
	if (s->tls) {
		char d[160];
		tls_describe(s->bev, d, sizeof(d));
		buf_printf(b, "\t(using %s)\r\n", d);
	}
	buf_printf(b, "%sby %s (moat) with %s id %s", s->auth_user && C()->submission_hide_client ?
	    "" : "\t", C()->hostname, with, s->env.qid);
	if (s->env.nrcpts == 1)
		buf_printf(b, "\r\n\tfor <%s>", s->env.rcpts[0].addr);
	buf_printf(b, "; %s\r\n", date);
}

/* open the spool file: at DATA or the first BDAT */
static bool
begin_message(struct session *s)
{
	struct buf rcv = BUF_INIT;
	char *err = NULL;

	spool_new_qid(s->env.qid);
	s->env.arrival = time(NULL);
	s->env.client_addr = xstrdup(s->ip);
	s->env.client_name = xstrdup("unknown");
	s->env.helo = xstrdup(kw(s->helo));
	s->env.proto = xstrdup(!s->esmtp ? "SMTP" : s->auth_user ? (s->tls ? "ESMTPSA" : "ESMTPA") :
	    (s->tls ? "ESMTPS" : "ESMTP"));
	received_header(s, &rcv);
	if (W->engine) {
		/* written at commit, ahead of the verdict's headers */
		free(s->rcvhdr);
		s->rcvhdr = buf_steal(&rcv);
		s->w = spool_begin(&s->env, NULL, &err);
	} else
		s->w = spool_begin(&s->env, rcv.data, &err);
	buf_free(&rcv);
	if (s->w == NULL) {
		log_warnx("sid=%s event=spool-error error=\"%s\"", s->sid, esc(err));
		free(err);
		return false;
	}
	smtp_data_init(&s->dr, (size_t)C()->smtp_max_data_line, (size_t)C()->message_size_limit);
	s->in_headers = true;
	s->header_bytes = 0;
	s->lineheadlen = 0;
	s->hold.len = 0;
	s->hold_mode = HOLD_PASS;
	s->at_line_start = true;
	s->nreceived = 0;
	s->header_too_big = false;
	return true;
}

static void
cmd_data(struct session *s, const struct smtp_command *c)
{
	if (c->arglen) {
		reply(s, "501 5.5.4 Syntax: DATA");
		bad_command(s);
		return;
	}
	if (s->used_bdat) {
		reply(s, "503 5.5.1 Error: DATA cannot follow BDAT");
		bad_command(s);
		return;
	}
	if (!begin_message(s)) {
		reply(s, "451 4.3.0 Error: queue file write error");
		return;
	}
	s->used_data = true;
	s->state = S_DATA;
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void
cmd_bdat(struct session *s, const struct smtp_command *c)
{
	char num[24];
	const char *sp;
	size_t nl;
	long long n;

	sp = memchr(c->arg, ' ', c->arglen);
	nl = sp ? (size_t)(sp - c->arg) : c->arglen;
	if (nl == 0 || nl >= sizeof(num)) {
		reply(s, "501 5.5.4 Syntax: BDAT size [LAST]");
		log_info("sid=%s event=disconnect-bdat-syntax ip=%s", s->sid, s->ip);
		close_after(s);         /* chunk boundary unknown: cannot stay in sync */
		return;
	}
	memcpy(num, c->arg, nl);
	num[nl] = '\0';
	if (!parse_ll(num, 0, 9223372036854775807LL, &n) ||
	    (sp && !(c->arglen - nl - 1 == 4 && !ascii_strncasecmp(sp + 1, "LAST", 4)))) {
		reply(s, "501 5.5.4 Syntax: BDAT size [LAST]");
		log_info("sid=%s event=disconnect-bdat-syntax ip=%s", s->sid, s->ip);
		close_after(s);
		return;
	}
	s->bdat_left = n;
	s->bdat_last = sp != NULL;
	s->bdat_prev = s->state;
	if (s->bdat_error == NULL) {
		if (s->state != S_RCPT) {
			s->bdat_error = s->state == S_MAIL ? "554 5.5.1 Error: no valid recipients" :
			    s->state == S_INIT ? "503 5.5.1 Error: send HELO/EHLO first" :
			    "503 5.5.1 Error: need MAIL command";
			s->bdat_oneshot = true;
		} else if (!s->used_bdat) {
			if (!begin_message(s))
				s->bdat_error = "451 4.3.0 Error: queue file write error";
			else {
				s->dr.raw = true;
				s->used_bdat = true;
			}
		}
	}
	s->state = S_BDAT;
	set_timeout(s);
}

static void
cmd_rset(struct session *s, const struct smtp_command *c)
{
	if (c->arglen) {
		reply(s, "501 5.5.4 Syntax: RSET");
		bad_command(s);
		return;
	}
	reset_transaction(s);
	reply(s, "250 2.0.0 Ok");
}

static void
cmd_noop(struct session *s, const struct smtp_command *c)
{
	/* RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored */
	reply(s, "250 2.0.0 Ok");
}

static void
cmd_quit(struct session *s, const struct smtp_command *c)
{
	reply(s, "221 2.0.0 Bye");
	close_after(s);
}

static void
cmd_help(struct session *s, const struct smtp_command *c)
{
	reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY");
}

static void
cmd_vrfy(struct session *s, const struct smtp_command *c)
{
	if (c->arglen == 0) {
		reply(s, "501 5.5.4 Syntax: VRFY address");
		bad_command(s);
		return;
	}
	reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void
cmd_notimpl(struct session *s, const struct smtp_command *c)
{
	reply(s, "502 5.5.1 Error: command not implemented");
	bad_command(s);
}

static void
cmd_starttls(struct session *s, const struct smtp_command *c)
{
	if (c->arglen) {
		reply(s, "501 5.5.4 Syntax: STARTTLS");
		bad_command(s);
		return;
	}
	if (s->tls) {
		reply(s, "503 5.5.1 Error: TLS already active");
		bad_command(s);
		return;
	}
	if (s->listen->tls != TLS_STARTTLS || W->tls == NULL) {
		reply(s, "502 5.5.1 Error: command not implemented");
		bad_command(s);
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	s->starttls_pending = true;
	bufferevent_disable(s->bev, EV_READ);
}

static void session_read(struct bufferevent *, void *);
static void session_write(struct bufferevent *, void *);
static void session_event(struct bufferevent *, short, void *);

/* the 220 is flushed: continue in TLS; RFC 3207 4.2: forget everything */
static void
do_starttls(struct session *s)
{
	struct bufferevent *nb;

	s->starttls_pending = false;
	nb = tls_starttls(W->base, W->tls, s->bev);
	s->bev = nb;
	if (nb == NULL) {
		log_warnx("sid=%s event=tls-error ip=%s error=\"cannot start TLS\"", s->sid, s->ip);
		session_free(s);
		return;
	}
	s->tls = true;
	reset_transaction(s);
	free(s->helo);
	s->helo = NULL;
	free(s->auth_user);
	s->auth_user = NULL;
	s->esmtp = false;
	s->state = S_INIT;
	bufferevent_setcb(nb, session_read, session_write, session_event, s);
	bufferevent_enable(nb, EV_READ | EV_WRITE);
	set_timeout(s);
}

/* ---- SMTP AUTH (RFC 4954) ---- */

/* the sender of an authenticated session must be the user's own address
 * (ignoring +extensions); the null sender is allowed (bounces, receipts) */
static bool
sender_owned(struct session *s, const char *addr)
{
	char a[320], u[320];
	if (addr[0] == '\0')
		return true;
	if (!users_canon(addr, C()->recipient_delimiter, a, sizeof(a)) ||
	    !users_canon(s->auth_user, C()->recipient_delimiter, u, sizeof(u)))
		return false;
	return strcmp(a, u) == 0;
}

static void auth_step_submit(struct session *s, const char *in, size_t len);

static void
auth_end(struct session *s)
{
	sasl_server_free(s->sasl);
	s->sasl = NULL;
	free(s->sasl_in);
	s->sasl_in = NULL;
	free(s->sasl_out);
	s->sasl_out = NULL;
	s->state = S_HELO;
}

static void
auth_work(void *arg)
{
	struct session *s = arg;
	char path[PATH_MAX], *err = NULL;
	struct users *u;

	conf_path(C(), "moat.db", path, sizeof(path));
	u = users_thread_handle(path, &err);
	if (u == NULL) {
		free(err);
		s->sasl_st = SASL_TEMPFAIL;
		return;
	}
	s->sasl_st = sasl_server_step(s->sasl, u, s->sasl_in, s->sasl_inlen, &s->sasl_out);
}

static void
auth_failed_reply(evutil_socket_t fd, short ev, void *arg)
{
	struct session *s = arg;

	event_free(s->delay);
	s->delay = NULL;
	s->refs--;
	if (s->dead) {
		if (s->refs == 0)
			session_free(s);
		return;
	}
	reply(s, "535 5.7.8 Error: authentication failed");
	auth_end(s);
	if (s->auth_failures >= 3)
		bad_command(s);
	if (s->state != S_CLOSING) {
		bufferevent_enable(s->bev, EV_READ);
		session_process(s);
	}
}

static void
auth_done(void *arg)
{
	struct session *s = arg;
	const char *user = s->sasl ? sasl_server_user(s->sasl) : NULL;
	const char *mech = s->sasl ? sasl_mech_name(sasl_server_mech(s->sasl)) : "?";

	s->refs--;
	free(s->sasl_in);
	s->sasl_in = NULL;
	if (s->dead) {
		if (s->refs == 0)
			session_free(s);
		return;
	}
	switch (s->sasl_st) {
	case SASL_CONTINUE:
		reply(s, "334 %s", s->sasl_out ? s->sasl_out : "");
		free(s->sasl_out);
		s->sasl_out = NULL;
		s->state = S_AUTH;
		break;
	case SASL_OK:
		rl_auth_success(W->auth_throttle, s->ip, time(NULL));
		free(s->auth_user);
		s->auth_user = xstrdup(sasl_server_authenticated(s->sasl));
		log_info("sid=%s event=auth ip=%s user=<%s> mech=%s result=ok", s->sid, s->ip,
		    esc(s->auth_user), mech);
		metric_inc(M_AUTH, "ok", NULL);
		/* SCRAM's server-final rides on the 235 (RFC 4954 4) */
		if (s->sasl_out && s->sasl_out[0])
			reply(s, "235 2.7.0 %s", s->sasl_out);
		else
			reply(s, "235 2.7.0 Authentication successful");
		auth_end(s);
		break;
	case SASL_FAILED: {
		/* a growing delay before the 535, per client IP across sessions */
		unsigned secs = rl_auth_failure(W->auth_throttle, s->ip, time(NULL));
		s->auth_failures++;
		log_info("sid=%s event=auth ip=%s user=<%s> mech=%s result=failed failures=%d", s->sid,
		    s->ip, esc(user ? user : ""), mech, s->auth_failures);
		metric_inc(M_AUTH, "failed", NULL);
		struct timeval tv = { (time_t)secs, 0 };
		s->delay = evtimer_new(W->base, auth_failed_reply, s);
		evtimer_add(s->delay, &tv);
		s->refs++;
		s->state = S_AUTH_WAIT;
		return;         /* reading stays off until the reply */
	}
	case SASL_BAD_PROTOCOL:
		reply(s, "501 5.5.2 Error: cannot decode the authentication response");
		log_info("sid=%s event=auth ip=%s mech=%s result=bad-protocol", s->sid, s->ip, mech);
		auth_end(s);
		bad_command(s);
		break;
	case SASL_CANCELLED:
		reply(s, "501 5.7.0 Authentication aborted");
		auth_end(s);
		break;
	case SASL_TEMPFAIL:
	default:
		reply(s, "454 4.7.0 Temporary authentication failure");
		log_warnx("sid=%s event=auth ip=%s mech=%s result=tempfail", s->sid, s->ip, mech);
		auth_end(s);
		break;
	}
	if (s->state == S_CLOSING)
		return;
	bufferevent_enable(s->bev, EV_READ);
	set_timeout(s);
	session_process(s);
}

static void
auth_step_submit(struct session *s, const char *in, size_t len)
{
	free(s->sasl_in);
	s->sasl_in = in ? xstrndup(in, len) : NULL;
	s->sasl_inlen = in ? len : 0;
	s->state = S_AUTH_WAIT;
	bufferevent_disable(s->bev, EV_READ);
	s->refs++;
	pool_submit(W->pool, auth_work, auth_done, s);
}

static void
cmd_auth(struct session *s, const struct smtp_command *c)
{
	enum sasl_mech mech;
	const char *sp;
	size_t ml;

	if (s->listen->auth == AUTH_NONE) {
		reply(s, "503 5.5.1 Error: authentication not enabled");
		bad_command(s);
		return;
	}
	if (s->auth_user) {
		reply(s, "503 5.5.1 Error: already authenticated");
		bad_command(s);
		return;
	}
	unsigned retry = 0;
	if (s->auth_failures >= 5 ||
	    rl_auth_check(W->auth_throttle, s->ip, time(NULL), &retry) == RL_AUTH_REFUSE) {
		reply(s, "421 4.7.0 %s Error: too many failed authentications; try again later",
		    C()->hostname);
		log_info("sid=%s event=auth-refused ip=%s retry-after=%u", s->sid, s->ip, retry);
		close_after(s);
		return;
	}
	sp = memchr(c->arg, ' ', c->arglen);
	ml = sp ? (size_t)(sp - c->arg) : c->arglen;
	if (ml == 0) {
		reply(s, "501 5.5.4 Syntax: AUTH mechanism");
		bad_command(s);
		return;
	}
	if (!sasl_mech_lookup(c->arg, ml, &mech)) {
		reply(s, "504 5.5.4 Unrecognized authentication type");
		bad_command(s);
		return;
	}
	if (sasl_mech_sends_password(mech) && !s->tls && !C()->auth_allow_plaintext) {
		reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	s->sasl = sasl_server_new(mech, C()->hostname);
	if (s->sasl == NULL) {
		reply(s, "454 4.7.0 Temporary authentication failure");
		return;
	}
	/* an initial response ("=" means empty) or none */
	auth_step_submit(s, sp ? sp + 1 : NULL, sp ? c->arglen - ml - 1 : 0);
}

/* a SASL response line in S_AUTH */
static void
auth_line(struct session *s, const char *line, size_t len)
{
	auth_step_submit(s, line, len);
}

static void
cmd_http(struct session *s, const struct smtp_command *c)
{
	log_info("sid=%s event=disconnect-http ip=%s", s->sid, s->ip);
	reply(s, "421 4.7.0 %s Error: this is an SMTP server, not an HTTP proxy", C()->hostname);
	close_after(s);
}

static const struct {
	enum smtp_cmd cmd;
	unsigned states;
	void (*fn)(struct session *, const struct smtp_command *);
	const char *seq_error;
} commands[] = {
	{ CMD_HELO, ~0u, cmd_helo, NULL },
	{ CMD_EHLO, ~0u, cmd_helo, NULL },
	{ CMD_MAIL, ST(S_HELO), cmd_mail, NULL },
	{ CMD_RCPT, ST(S_MAIL) | ST(S_RCPT), cmd_rcpt, "503 5.5.1 Error: need MAIL command" },
	{ CMD_DATA, ST(S_RCPT), cmd_data, NULL },
	{ CMD_BDAT, ~0u, cmd_bdat, NULL },
	{ CMD_RSET, ~0u, cmd_rset, NULL },
	{ CMD_NOOP, ~0u, cmd_noop, NULL },
	{ CMD_QUIT, ~0u, cmd_quit, NULL },
	{ CMD_HELP, ~0u, cmd_help, NULL },
	{ CMD_VRFY, ~0u, cmd_vrfy, NULL },
	{ CMD_EXPN, ~0u, cmd_notimpl, NULL },
	{ CMD_ETRN, ~0u, cmd_notimpl, NULL },
	{ CMD_STARTTLS, ST(S_INIT) | ST(S_HELO), cmd_starttls, NULL },
	{ CMD_AUTH, ST(S_HELO), cmd_auth, NULL },
	{ CMD_HTTP, ~0u, cmd_http, NULL },
};

static void
sequence_error(struct session *s, enum smtp_cmd cmd)
{
	const char *r;
	if (s->state == S_INIT)
		r = "503 5.5.1 Error: send HELO/EHLO first";
	else if (cmd == CMD_MAIL)
		r = "503 5.5.1 Error: nested MAIL command";
	else if (cmd == CMD_DATA)
		r = s->state == S_MAIL ? "554 5.5.1 Error: no valid recipients" :
		    "503 5.5.1 Error: need RCPT command";
	else
		r = "503 5.5.1 Error: need MAIL command";
	reply(s, "%s", r);
	bad_command(s);
}

static void
dispatch(struct session *s, const char *line, size_t len)
{
	struct smtp_command c;

	s->ncmds++;
	if (memchr(line, '\0', len)) {
		reply(s, "500 5.5.2 Error: NUL character in command");
		bad_command(s);
		return;
	}
	smtp_parse_command(line, len, &c);
	if (c.cmd == CMD_UNKNOWN) {
		char l[128];
		log_debug("sid=%s event=unknown-command ip=%s line=\"%s\"", s->sid, s->ip,
		    log_esc(line, len, l, sizeof(l)));
		reply(s, "500 5.5.2 Error: command not recognized");
		bad_command(s);
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		if (commands[i].cmd != c.cmd)
			continue;
		if (!(commands[i].states & ST(s->state))) {
			sequence_error(s, c.cmd);
			return;
		}
		commands[i].fn(s, &c);
		return;
	}
}

/* ---- greylisting (RCPT): the decision is a pool job ---- */

/* ---- the filters placed at the first RCPT (filter-stage NAME rcpt) ---- */

struct early_job {
	struct session *s;
	enum sstate prev;
	char    addr[SMTP_PATH_MAX + 1];
	struct smtp_rcpt_params rp;
	const struct domain_conf *dom;
	struct engine_in in;
	const char *rcpts[1];
	struct engine_early *res;
};

/* BLOCKING: DNS */
static void
early_work(void *arg)
{
	struct early_job *j = arg;
	j->res = engine_early_run(W->engine, &j->in);
}

static void
early_done(void *arg)
{
	struct early_job *j = arg;
	struct session *s = j->s;
	const struct verdict *v = engine_early_verdict(j->res);
	struct buf syms = BUF_INIT;

	s->refs--;
	verdict_symbols(v, &syms);
	log_info("sid=%s qid=NOQUEUE event=early-verdict ip=%s from=<%s> to=<%s> score=%.2f action=%s "
	    "symbols=%s time=%.0fms", s->sid, s->ip, esc(s->env.sender), esc(j->addr), v->score,
	    v->action == VA_REJECT ? "reject" : "continue", syms.len ? syms.data : "-", v->elapsed_ms);
	buf_free(&syms);
	if (s->dead) {
		engine_early_free(j->res);
		free(j);
		if (s->refs == 0)
			session_free(s);
		return;
	}
	s->state = j->prev;
	if (v->action == VA_REJECT) {
		char why[200], rbuf[SMTP_PATH_MAX + 300];
		reply_safe(v->force_why, why, sizeof(why));
		if (why[0])
			snprintf(rbuf, sizeof(rbuf), "550 5.7.1 Rejected: %s", why);
		else
			snprintf(rbuf, sizeof(rbuf), "550 5.7.1 Rejected: client or sender scored %.1f", v->score);
		reply(s, "%s", rbuf);
		log_reject(s, "rcpt", j->addr, rbuf);
		free(s->early_reject);
		s->early_reject = xstrdup(rbuf);
		engine_early_free(j->res);
	} else {
		s->early = j->res;      /* its symbols join the message's verdict */
		rcpt_checked(s, j->addr, &j->rp, j->dom);
	}
	free(j);
	if (s->state != S_GREYLIST) {
		bufferevent_enable(s->bev, EV_READ);
		set_timeout(s);
		session_process(s);
	}
}

static void
early_submit(struct session *s, const char *addr, const struct smtp_rcpt_params *rp,
    const struct domain_conf *d)
{
	struct early_job *j = xcalloc(1, sizeof(*j));

	j->s = s;
	j->prev = s->state;
	moat_strlcpy(j->addr, addr, sizeof(j->addr));
	j->rp = *rp;
	j->dom = d;
	j->rcpts[0] = j->addr;
	j->in.allowlisted = s->allowlisted || s->msg_allow;
	j->in.qid = "NOQUEUE";
	j->in.client = (const struct sockaddr *)&s->ss;
	j->in.client_ip = s->ip;
	j->in.helo = s->helo ? s->helo : "";
	j->in.sender = s->env.sender ? s->env.sender : "";
	j->in.rcpts = j->rcpts;
	j->in.nrcpts = 1;
	j->in.tls = s->tls;
	j->in.th_set = true;
	j->in.th_tag = d->th_tag;
	j->in.th_quarantine = d->th_quarantine;
	j->in.th_reject = d->th_reject;
	s->state = S_GREYLIST;      /* a RCPT decision is in the pool: read nothing */
	bufferevent_disable(s->bev, EV_READ);
	s->refs++;
	pool_submit(W->pool, early_work, early_done, j);
}

struct gl_job {
	struct session *s;
	enum sstate prev;           /* S_MAIL or S_RCPT, restored after */
	char    addr[SMTP_PATH_MAX + 1];    /* the recipient as accepted */
	struct smtp_rcpt_params rp;
	const struct domain_conf *dom;      /* its domain (the worker's config) */
	char    net[64];            /* the triplet */
	char    sender[SMTP_PATH_MAX + 1];
	char    rcpt[SMTP_PATH_MAX + 1];
	struct greylist_params p;
	char    dbpath[PATH_MAX];
	struct greylist_result res;
	char   *err;
};

/* the hourly purge of expired triplets: its own job, nobody waits for it */
struct gl_purge {
	char    dbpath[PATH_MAX];
	struct greylist_params p;
	long long deleted;
	char   *err;
};

static void
greylist_purge_work(void *arg)
{
	struct gl_purge *g = arg;
	g->deleted = greylist_purge(g->dbpath, &g->p, time(NULL), &g->err);
}

static void
greylist_purge_done(void *arg)
{
	struct gl_purge *g = arg;

	if (g->deleted < 0)
		log_warnx("event=greylist-purge error=\"%s\"", esc(g->err ? g->err : "?"));
	else
		log_info("event=greylist-purge deleted=%lld", g->deleted);
	free(g->err);
	free(g);
}

/* authenticated and allow-listed clients and messages are not greylisted */
static bool
greylist_wanted(const struct session *s)
{
	return C()->greylist && s->auth_user == NULL && !s->allowlisted && !s->msg_allow;
}

/* BLOCKING: SQLite */
static void
greylist_work(void *arg)
{
	struct gl_job *j = arg;
	greylist_check(j->dbpath, &j->p, j->net, j->sender, j->rcpt, time(NULL), &j->res, &j->err);
}

static void
greylist_done(void *arg)
{
	static const char *names[] = { "defer", "pass", "allow", "error" };
	struct gl_job *j = arg;
	struct session *s = j->s;

	s->refs--;
	if (j->res.action == GL_ERROR)
		log_warnx("sid=%s event=greylist-error ip=%s error=\"%s\"", s->sid, s->ip,
		    esc(j->err ? j->err : "?"));
	log_info("sid=%s qid=NOQUEUE event=greylist ip=%s net=%s from=<%s> to=<%s> action=%s%s",
	    s->sid, s->ip, j->net, esc(s->env.sender), esc(j->addr), names[j->res.action],
	    j->res.client ? " client=auto-allowed" : "");
	if (greylist_purge_due(time(NULL))) {
		struct gl_purge *g = xcalloc(1, sizeof(*g));
		moat_strlcpy(g->dbpath, j->dbpath, sizeof(g->dbpath));
		g->p = j->p;
		pool_submit(W->pool, greylist_purge_work, greylist_purge_done, g);
	}
	if (s->dead) {
		free(j->err);
		free(j);
		if (s->refs == 0)
			session_free(s);
		return;
	}
	if (j->res.action == GL_DEFER) {
		/* postgrey's code and wording; the delay counts from the first try */
		reply(s, "450 4.7.1 <%s>: Recipient address rejected: Greylisted, try again in %lld seconds",
		    j->addr, j->res.retry);
		s->state = j->prev;
	} else {
		/* a database failure lets the mail in: greylisting is not worth a tempfail */
		rcpt_accept(s, j->addr, &j->rp, j->dom);
	}
	free(j->err);
	free(j);
	bufferevent_enable(s->bev, EV_READ);
	set_timeout(s);
	session_process(s);         /* pipelined commands already buffered */
}

/* the recipient passed every other check: ask the greylist, reading
 * nothing more until the answer (as at the end of data) */
static void
greylist_submit(struct session *s, const char *addr, const struct smtp_rcpt_params *rp,
    const struct domain_conf *d)
{
	struct gl_job *j = xcalloc(1, sizeof(*j));

	j->s = s;
	j->prev = s->state;
	moat_strlcpy(j->addr, addr, sizeof(j->addr));
	j->rp = *rp;
	j->dom = d;
	if (!greylist_net((const struct sockaddr *)&s->ss, j->net, sizeof(j->net)))
		moat_strlcpy(j->net, s->ip, sizeof(j->net));
	greylist_sender(s->env.sender ? s->env.sender : "", C()->recipient_delimiter, j->sender,
	    sizeof(j->sender));
	moat_strlcpy(j->rcpt, addr, sizeof(j->rcpt));
	ascii_lower(j->rcpt);
	j->p.delay = C()->greylist_delay;
	j->p.expire = C()->greylist_expire;
	j->p.allow_time = C()->greylist_allow_time;
	j->p.auto_clients = C()->greylist_auto_clients;
	conf_path(C(), "greylist.db", j->dbpath, sizeof(j->dbpath));
	s->state = S_GREYLIST;
	bufferevent_disable(s->bev, EV_READ);
	s->refs++;
	pool_submit(W->pool, greylist_work, greylist_done, j);
}

/* ---- early talkers: the 220 waits smtp-pregreet-wait on smtp listeners ---- */

static void
pregreet_greet(evutil_socket_t fd, short ev, void *arg)
{
	struct session *s = arg;

	event_free(s->delay);
	s->delay = NULL;
	if (W->draining) {
		reply(s, "421 4.3.2 %s Service shutting down", C()->hostname);
		close_after(s);
		return;
	}
	s->state = S_INIT;
	reply(s, "220 %s %s", C()->hostname, C()->smtp_banner);
	bufferevent_enable(s->bev, EV_READ);
	set_timeout(s);
	session_process(s);         /* an early talker's commands (action score) */
}

/* true if the 220 is delayed (and the timer runs) */
static bool
pregreet_start(struct session *s)
{
	long long w = C()->smtp_pregreet_wait;
	struct timeval tv = { (time_t)w, 0 };

	/* MTAs on port 25 only: submission clients are users' programs, and
	 * with implicit TLS the client speaks first by design */
	if (w <= 0 || s->listen->kind != LISTEN_SMTP || s->listen->tls == TLS_IMPLICIT ||
	    s->allowlisted)
		return false;
	if ((s->delay = evtimer_new(W->base, pregreet_greet, s)) == NULL)
		return false;
	evtimer_add(s->delay, &tv);
	s->state = S_PREGREET;
	return true;
}

/* input before the 220 */
static void
pregreet_talker(struct session *s, struct evbuffer *in)
{
	char buf[64], l[200];
	ev_ssize_t got;
	size_t n;

	if (s->pregreet)
		return;                 /* already seen; the rest waits for the 220 */
	got = evbuffer_copyout(in, buf, sizeof(buf));
	n = got > 0 ? (size_t)got : 0;
	log_info("sid=%s event=pregreet ip=%s after=%.3fs bytes=%zu action=%s data=\"%s\"", s->sid,
	    s->ip, (now_ms() - s->started_ms) / 1000.0, evbuffer_get_length(in),
	    C()->smtp_pregreet_score ? "score" : "reject", log_esc(buf, n, l, sizeof(l)));
	if (C()->smtp_pregreet_score) {
		s->pregreet = true;
		bufferevent_disable(s->bev, EV_READ);
		return;
	}
	event_free(s->delay);
	s->delay = NULL;
	evbuffer_drain(in, evbuffer_get_length(in));
	reply(s, "554 5.5.1 %s Error: SMTP protocol violation: talked before the greeting",
	    C()->hostname);
	close_after(s);
}

/* ---- end of message ---- */

static void
commit_work(void *arg)
{
	struct session *s = arg;
	if (spool_commit(s->w, &s->commit_err) < 0 && s->commit_err == NULL)
		s->commit_err = xstrdup("commit failed");
}

static void
commit_done(void *arg)
{
	struct session *s = arg;
	char to[512];
	struct buf tob = BUF_INIT;

	s->refs--;
	for (size_t i = 0; i < s->env.nrcpts && tob.len < 400; i++)
		buf_printf(&tob, "%s<%s>", i ? "," : "", s->env.rcpts[i].addr);
	log_esc(tob.data ? tob.data : "", tob.len, to, sizeof(to));
	buf_free(&tob);
	if (s->commit_err) {
		log_crit("sid=%s qid=%s event=spool-error ip=%s error=\"%s\"", s->sid, s->env.qid,
		    s->ip, esc(s->commit_err));
		xfree(s->commit_err);
		if (!s->dead)
			reply(s, "451 4.3.0 Error: queue file write error");
	} else {
		log_info("sid=%s qid=%s event=accepted ip=%s from=<%s> to=%s nrcpt=%zu size=%lld proto=%s helo=<%s>%s%s",
		    s->sid, s->env.qid, s->ip, esc(s->env.sender), to, s->env.nrcpts,
		    (long long)spool_size(s->w), s->env.proto, esc(s->helo),
		    s->tls ? " tls=" : "", s->tls ? s->tlsinfo : "");
		s->nmsgs++;
		journal_queued(s->sid, s->ip, &s->env, (long long)spool_size(s->w), W->engine == NULL);
		if (W->queue)
			queue_submit(W->queue, s->env.qid);
		if (!s->dead)
			reply(s, "250 2.0.0 Ok: queued as %s", s->env.qid);
	}
	spool_writer_free(s->w);
	s->w = NULL;
	if (s->dead) {
		if (s->refs == 0)
			session_free(s);
		return;
	}
	s->state = S_HELO;
	reset_transaction(s);
	if (W->draining) {
		reply(s, "421 4.3.2 %s Service shutting down", C()->hostname);
		close_after(s);
		return;
	}
	bufferevent_enable(s->bev, EV_READ);
	set_timeout(s);
	session_process(s);         /* pipelined commands already buffered */
}

/*
 * BLOCKING (the filter job): tag-subject-prefix in front of the Subject of
 * a tagged message, once (not again at a second hop), as SpamAssassin's
 * rewrite_header Subject: the spooled message is rewritten before the
 * commit (tagged mail only), the rest of it byte for byte.
 */
static void
subject_prefix(struct session *s, const char *msg, size_t len)
{
	const char *pfx = C()->tag_subject_prefix, *p = msg, *end = msg + len;
	const char *f = NULL, *fv = NULL, *fe = NULL, *hend = NULL;
	struct buf o = BUF_INIT;

	/* the header section, line by line: the first Subject and its end */
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl + 1 : end;
		if (p[0] == '\n' || (p[0] == '\r' && le - p <= 2)) {
			hend = p;
			break;
		}
		if (f && fe == NULL && p[0] != ' ' && p[0] != '\t')
			fe = p;
		if (f == NULL && le - p > 8 && !ascii_strncasecmp(p, "Subject:", 8)) {
			f = p;
			fv = p + 8;
		}
		p = le;
	}
	if (hend == NULL)
		hend = end;
	if (f && fe == NULL)
		fe = hend;
	if (f) {
		const char *v = fv;
		while (v < fe && (*v == ' ' || *v == '\t'))
			v++;
		if ((size_t)(fe - v) >= strlen(pfx) && !strncmp(v, pfx, strlen(pfx)))
			return;         /* prefixed already */
		buf_add(&o, msg, (size_t)(fv - msg));
		buf_printf(&o, " %s", pfx);
		if (v < fe && *v != '\r' && *v != '\n')
			buf_addc(&o, ' ');
		buf_add(&o, v, (size_t)(end - v));
	} else {
		/* no Subject: one at the end of the header section */
		buf_add(&o, msg, (size_t)(hend - msg));
		buf_printf(&o, "Subject: %s\r\n", pfx);
		buf_add(&o, hend, (size_t)(end - hend));
	}
	if (spool_replace_data(s->w, o.data, o.len) < 0) {
		/* the message stays as it was, its subject unmarked */
		log_warnx("sid=%s qid=%s event=subject-prefix-error error=\"%s\"", s->sid, s->env.qid,
		    strerror(errno));
	}
	buf_free(&o);
}

/* the message as received, for the filters: read back from the spool file */
static void
filter_work(void *arg)
{
	struct session *s = arg;
	off_t off = spool_writer_data_off(s->w), len = spool_size(s->w);
	char *msg;
	int fd;

	if (spool_flush(s->w) < 0 || (fd = open(spool_writer_path(s->w), O_RDONLY | O_CLOEXEC)) < 0) {
		memset(&s->verdict, 0, sizeof(s->verdict));
		s->verdict.action = VA_TEMPFAIL;
		moat_strlcpy(s->verdict.force_why, "cannot read the message back", sizeof(s->verdict.force_why));
		return;
	}
	msg = xmalloc((size_t)len + 1);
	ssize_t n = pread(fd, msg, (size_t)len, off);
	close(fd);
	if (n != (ssize_t)len) {
		free(msg);
		memset(&s->verdict, 0, sizeof(s->verdict));
		s->verdict.action = VA_TEMPFAIL;
		moat_strlcpy(s->verdict.force_why, "cannot read the message back", sizeof(s->verdict.force_why));
		return;
	}
	msg[len] = '\0';
	const char **rcpts = xcalloc(s->env.nrcpts + 1, sizeof(*rcpts));
	for (size_t i = 0; i < s->env.nrcpts; i++)
		rcpts[i] = s->env.rcpts[i].addr;
	struct engine_in in = {
		.lists = s->jlists, .allowlisted = s->allowlisted || s->msg_allow,
		.qid = s->env.qid, .client = (const struct sockaddr *)&s->ss, .client_ip = s->ip,
		.helo = s->helo ? s->helo : "", .sender = s->env.sender ? s->env.sender : "",
		.rcpts = rcpts, .nrcpts = s->env.nrcpts, .auth_user = s->auth_user, .tls = s->tls,
	};
	in.pre = s->early;
	if (s->th_domain) {
		in.th_set = true;
		in.th_tag = s->th_domain->th_tag;
		in.th_quarantine = s->th_domain->th_quarantine;
		in.th_reject = s->th_domain->th_reject;
	}
	struct symbol pregreet = { "PREGREET", 0, "talked before the SMTP greeting" };
	if (s->pregreet) {
		pregreet.score = filter_score(C(), "PREGREET", 3.0);
		in.early = &pregreet;
		in.nearly = 1;
	}
	engine_run(W->engine, msg, (size_t)len, &in, &s->verdict);
	journal_message_id(s->env.qid, msg, (size_t)len);
	free(rcpts);
	if (s->verdict.action == VA_TAG && C()->tag_subject_prefix && C()->tag_subject_prefix[0])
		subject_prefix(s, msg, (size_t)len);
	if (s->verdict.action == VA_QUARANTINE) {
		s->qmsg = msg;          /* the quarantine job stores it */
		s->qlen = (size_t)len;
	} else
		free(msg);
}

/* BLOCKING: the message goes to the quarantine store, never to the queue:
 * our incoming file is dropped and the store writes its own copy (with our
 * Received and the verdict headers in front) through spool/incoming and a
 * rename into quarantine/, fsync'ed before the 250 */
static void
quarantine_work(void *arg)
{
	struct session *s = arg;
	struct buf b = BUF_INIT, syms = BUF_INIT;
	struct qstore_verdict qv;
	struct qstore *qs;
	char *err = NULL;

	spool_abort(s->w);
	if (s->rcvhdr)
		buf_adds(&b, s->rcvhdr);
	verdict_headers(&s->verdict, C(), &b);
	buf_add(&b, s->qmsg, s->qlen);
	verdict_symbols(&s->verdict, &syms);
	qv.score = s->verdict.score;
	qv.action = "quarantine";
	qv.symbols = syms.data;
	qs = qstore_open(C()->state_dir, &err);
	if (qs == NULL || qstore_put_buf(qs, &s->env, b.data, b.len, &qv) < 0) {
		free(s->commit_err);
		s->commit_err = xstrdup(qs ? qstore_error(qs) : (err ? err : "cannot open the quarantine"));
	} else
		s->quarantined = true;
	qstore_close(&qs);
	free(err);
	buf_free(&b);
	buf_free(&syms);
}

static void
quarantine_done(void *arg)
{
	struct session *s = arg;

	s->refs--;
	xfree(s->qmsg);
	if (s->quarantined) {
		log_info("sid=%s qid=%s event=quarantined ip=%s from=<%s> nrcpt=%zu score=%.2f",
		    s->sid, s->env.qid, s->ip, esc(s->env.sender), s->env.nrcpts, s->verdict.score);
		journal_quarantined(s->sid, s->ip, &s->env, s->verdict.score);
		s->nmsgs++;
		if (!s->dead)   /* the sender is not told: no probing for the quarantine */
			reply(s, "250 2.0.0 Ok: queued as %s", s->env.qid);
	} else {
		log_crit("sid=%s qid=%s event=quarantine-error ip=%s error=\"%s\"", s->sid, s->env.qid,
		    s->ip, esc(s->commit_err ? s->commit_err : "?"));
		if (!s->dead)
			reply(s, "451 4.3.0 Error: quarantine write error");
	}
	xfree(s->commit_err);
	s->quarantined = false;
	verdict_clear(&s->verdict);
	spool_writer_free(s->w);
	s->w = NULL;
	if (s->dead) {
		reset_transaction(s);
		if (s->refs == 0)
			session_free(s);
		return;
	}
	reset_transaction(s);
	s->state = S_HELO;
	bufferevent_enable(s->bev, EV_READ);
	set_timeout(s);
	session_process(s);
}

static void commit_work(void *);
static void commit_done(void *);

/* printable ASCII only, for a reply line */
static void
reply_safe(const char *in, char *out, size_t outsz)
{
	size_t o = 0;
	for (; *in && o + 1 < outsz; in++)
		out[o++] = (*in >= 0x20 && *in < 0x7f) ? *in : '?';
	out[o] = '\0';
}

static void
filter_done(void *arg)
{
	struct session *s = arg;
	struct verdict *v = &s->verdict;
	struct buf syms = BUF_INIT, hdr = BUF_INIT;
	char why[200], rcpt[SMTP_PATH_MAX + 1];

	s->refs--;
	lists_unref(s->jlists);
	s->jlists = NULL;
	verdict_symbols(v, &syms);
	snprintf(rcpt, sizeof(rcpt), "%s", s->env.nrcpts ? s->env.rcpts[0].addr : "");
	log_info("sid=%s qid=%s event=verdict ip=%s from=<%s> to=<%s> nrcpt=%zu score=%.2f action=%s%s%s%s symbols=%s time=%.0fms",
	    s->sid, s->env.qid, s->ip, esc(s->env.sender), esc(rcpt), s->env.nrcpts, v->score,
	    verdict_action_name(v->action), v->force_why[0] ? " reason=\"" : "",
	    v->force_why[0] ? esc(v->force_why) : "", v->force_why[0] ? "\"" : "",
	    syms.len ? syms.data : "-", v->elapsed_ms);
	buf_free(&syms);
	journal_verdict(s->sid, s->ip, &s->env, v);
	if (s->dead) {
		verdict_clear(v);
		xfree(s->qmsg);
		reset_transaction(s);
		if (s->refs == 0)
			session_free(s);
		return;
	}
	reply_safe(v->force_why, why, sizeof(why));
	switch (v->action) {
	case VA_REJECT:
		if (why[0])
			reply(s, "550 5.7.1 Message rejected: %s (ref %s)", why, s->env.qid);
		else
			reply(s, "550 5.7.1 Message rejected as spam, score %.1f (ref %s)", v->score, s->env.qid);
		break;
	case VA_TEMPFAIL:
		reply(s, "451 4.7.1 Message deferred: %s; try again later (ref %s)",
		    why[0] ? why : "filter failure", s->env.qid);
		break;
	case VA_QUARANTINE:
		s->refs++;
		pool_submit(W->pool, quarantine_work, quarantine_done, s);
		return;
	default:
		if (s->rcvhdr)
			buf_adds(&hdr, s->rcvhdr);
		verdict_headers(v, C(), &hdr);
		spool_set_headers(s->w, hdr.data, hdr.len);
		buf_free(&hdr);
		verdict_clear(v);
		s->refs++;
		pool_submit(W->pool, commit_work, commit_done, s);
		return;
	}
	/* refused: the message goes away */
	verdict_clear(v);
	reset_transaction(s);
	s->state = S_HELO;
	bufferevent_enable(s->bev, EV_READ);
	set_timeout(s);
	session_process(s);
}

static void
end_of_message(struct session *s)
{
	const char *err = NULL;
	unsigned f = s->dr.flags;
	char why[128];

	if (s->w)
		field_flush(s);         /* a message that is all header */

	if (f & SMTP_DATA_TOO_BIG)
		err = "552 5.3.4 Error: message file too big";
	else if (f & SMTP_DATA_NUL)
		err = "554 5.6.0 Error: message contains NUL characters";
	else if ((f & SMTP_DATA_BARE_LF) && C()->smtp_reject_bare_lf)
		err = "550 5.5.2 Error: bare <LF> received";
	else if (f & SMTP_DATA_LONG_LINE) {
		snprintf(why, sizeof(why), "554 5.6.0 Error: message has a line longer than %lld bytes",
		    C()->smtp_max_data_line);
		err = why;
	} else if (s->header_too_big)
		err = "552 5.3.4 Error: message header section too big";
	else if (s->nreceived > C()->smtp_max_received)
		err = "554 5.4.6 Error: too many hops (mail forwarding loop)";
	if (err) {
		char to[256];
		snprintf(to, sizeof(to), "%s", s->env.nrcpts ? s->env.rcpts[0].addr : "");
		reply(s, "%s", err);
		log_reject(s, "data", to, err);
		reset_transaction(s);
		s->state = S_HELO;
		return;
	}
	if ((f & SMTP_DATA_BARE_LF))
		log_info("sid=%s event=bare-lf ip=%s (normalised to CRLF)", s->sid, s->ip);
	s->state = S_COMMIT;
	bufferevent_disable(s->bev, EV_READ);
	s->refs++;
	if (W->engine) {
		s->jlists = worker_lists();
		if (s->jlists)
			lists_ref(s->jlists);
		pool_submit(W->pool, filter_work, filter_done, s);
	}
	else
		pool_submit(W->pool, commit_work, commit_done, s);
}

/* ---- input ---- */

static bool
read_data(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v[8];
	bool done = false;
	int n = evbuffer_peek(in, -1, NULL, v, 8);
	size_t total = 0;

	for (int i = 0; i < n && i < 8 && !done; i++) {
		size_t used = smtp_data_feed(&s->dr, v[i].iov_base, v[i].iov_len, emit, s, &done);
		total += used;
	}
	evbuffer_drain(in, total);
	if (done) {
		end_of_message(s);
		return true;
	}
	return total > 0;
}

static bool
read_bdat(struct session *s, struct evbuffer *in)
{
	size_t avail = evbuffer_get_length(in);
	size_t take = (size_t)MIN((long long)avail, s->bdat_left);

	if (take) {
		if (s->bdat_error == NULL) {
			struct evbuffer_iovec v[8];
			int n = evbuffer_peek(in, (ev_ssize_t)take, NULL, v, 8);
			size_t left = take, used = 0;
			bool done;
			for (int i = 0; i < n && i < 8 && left; i++) {
				size_t l = MIN(left, v[i].iov_len);
				smtp_data_feed(&s->dr, v[i].iov_base, l, emit, s, &done);
				left -= l;
				used += l;
			}
			take = used;
		}
		evbuffer_drain(in, take);
		s->bdat_left -= (long long)take;
	}
	if (s->bdat_left > 0)
		return take > 0;
	/* chunk complete */
	if (s->bdat_error == NULL && (s->dr.flags & SMTP_DATA_TOO_BIG))
		s->bdat_error = "552 5.3.4 Error: message file too big";
	if (s->bdat_error) {
		reply(s, "%s", s->bdat_error);
		if (s->bdat_oneshot) {
			s->bdat_error = NULL;
			s->bdat_oneshot = false;
			s->state = s->bdat_prev;
			bad_command(s);
		} else if (s->bdat_last)
			reset_transaction(s);
		else
			s->state = S_RCPT;  /* failed transaction: later chunks get the error */
		return true;
	}
	if (s->bdat_last) {
		end_of_message(s);
		return true;
	}
	reply(s, "250 2.0.0 Ok: %lld octets received", (long long)spool_size(s->w));
	s->state = S_RCPT;
	return true;
}

static bool
read_command(struct session *s, struct evbuffer *in)
{
	/* a SASL response may be longer than a command (RFC 4954 4: 12288) */
	size_t max = s->state == S_AUTH ? SASL_MAX_B64 + 2 : (size_t)C()->smtp_max_line;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);

	if (p.pos < 0) {
		size_t len = evbuffer_get_length(in);
		if (len > max) {
			evbuffer_drain(in, len);
			if (!s->skipping) {
				s->skipping = true;
				reply(s, "500 5.5.2 Error: line too long");
				log_info("sid=%s event=line-too-long ip=%s", s->sid, s->ip);
				bad_command(s);
			}
		}
		return false;
	}
	size_t linelen = (size_t)p.pos;         /* excluding LF */
	if (s->skipping) {
		evbuffer_drain(in, linelen + 1);
		s->skipping = false;
		return true;
	}
	if (linelen + 1 > max) {
		evbuffer_drain(in, linelen + 1);
		reply(s, "500 5.5.2 Error: line too long");
		bad_command(s);
		return true;
	}
	char *line = xmalloc(linelen + 1);
	evbuffer_remove(in, line, linelen + 1);
	bool bare = linelen == 0 || line[linelen - 1] != '\r';
	if (!bare)
		linelen--;
	line[linelen] = '\0';
	if (s->state == S_AUTH) {
		auth_line(s, line, linelen);
		explicit_bzero(line, linelen);
		free(line);
		return true;
	}
	if (bare && C()->smtp_reject_bare_lf) {
		reply(s, "500 5.5.2 Error: bare <LF> received");
		bad_command(s);
	} else
		dispatch(s, line, linelen);
	free(line);
	return true;
}

static void
session_process(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);

	for (;;) {
		bool progress;
		/* a BDAT chunk may be empty ("BDAT 0 LAST"): it completes with no input */
		if (evbuffer_get_length(in) == 0 && !(s->state == S_BDAT && s->bdat_left == 0))
			break;
		switch (s->state) {
		case S_DATA:
			progress = read_data(s, in);
			break;
		case S_BDAT:
			progress = read_bdat(s, in);
			break;
		case S_COMMIT:
		case S_CLOSING:
		case S_AUTH_WAIT:
		case S_GREYLIST:
			return;
		case S_PREGREET:
			pregreet_talker(s, in);
			return;
		default:
			progress = read_command(s, in);
			break;
		}
		if (s->state == S_CLOSING || s->dead || s->starttls_pending)
			return;     /* after STARTTLS nothing more is read in the clear */
		if (!progress)
			break;
	}
	/* bound what a client may pipeline ahead of us */
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 1024 * 1024)
		bufferevent_disable(s->bev, EV_READ);
	set_timeout(s);
}

static void
session_read(struct bufferevent *bev, void *arg)
{
	session_process(arg);
}

static void
session_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (s->state == S_CLOSING) {
		session_free(s);
		return;
	}
	if (s->starttls_pending) {
		do_starttls(s);
		return;
	}
	if (s->state != S_COMMIT && s->state != S_GREYLIST && s->state != S_PREGREET &&
	    !(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		session_process(s);
	}
}

static void
session_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;

	if (what & BEV_EVENT_CONNECTED) {
		/* TLS handshake done (implicit TLS or after STARTTLS) */
		tls_short(bev, s->tlsinfo, sizeof(s->tlsinfo));
		log_info("sid=%s event=tls ip=%s tls=%s", s->sid, s->ip, s->tlsinfo);
		metric_inc(M_TLS, "ok", NULL);
		return;
	}
	if ((what & BEV_EVENT_ERROR) && s->tls && s->tlsinfo[0] == '\0') {
		char e[256];
		tls_errors(e, sizeof(e));
		log_info("sid=%s event=tls-handshake-failed ip=%s error=\"%s\"", s->sid, s->ip, esc(e));
		metric_inc(M_TLS, "failed", NULL);
	}
	if ((what & BEV_EVENT_TIMEOUT) && s->state == S_CLOSING) {
		session_free(s);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		log_info("sid=%s event=timeout ip=%s state=%d", s->sid, s->ip, (int)s->state);
		if (s->state == S_COMMIT || s->state == S_GREYLIST)
			return;
		reply(s, "421 4.4.2 %s Error: timeout exceeded", C()->hostname);
		close_after(s);
		return;
	}
	/* EOF or error: the client is gone */
	if (s->state == S_COMMIT || s->state == S_GREYLIST) {
		s->dead = true;
		bufferevent_disable(bev, EV_READ | EV_WRITE);
		return;
	}
	if (s->w)
		log_info("sid=%s event=lost-connection ip=%s state=%d", s->sid, s->ip, (int)s->state);
	session_free(s);
}

static void
session_free(struct session *s)
{
	if (s->refs > 0) {
		s->dead = true;
		return;
	}
	log_info("sid=%s event=disconnect ip=%s messages=%d commands=%d errors=%d duration=%.3f",
	    s->sid, s->ip, s->nmsgs, s->ncmds, s->nbad, (now_ms() - s->started_ms) / 1000.0);
	reset_transaction(s);
	if (s->prev)
		s->prev->next = s->next;
	else
		sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	nsessions--;
	journal_disconnect(s->listen->spec);
	if (!s->exempt)
		ip_count(s->ip, -1);
	if (s->bev)                 /* NULL if switching to TLS failed */
		bufferevent_free(s->bev);
	if (s->delay)
		event_free(s->delay);
	free(s->helo);
	sasl_server_free(s->sasl);
	free(s->sasl_in);
	free(s->sasl_out);
	free(s->auth_user);
	buf_free(&s->hold);
	free(s);
	if (drain_cb && nsessions == 0) {
		void (*cb)(void *) = drain_cb;
		drain_cb = NULL;
		cb(drain_arg);
	}
}

static void
on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	const struct listen_conf *l = arg;
	struct session *s;
	int one = 1;

	s = xcalloc(1, sizeof(*s));
	net_sid(s->sid);
	s->listen = l;
	memcpy(&s->ss, sa, MIN((size_t)salen, sizeof(s->ss)));
	net_peer(sa, s->ip, sizeof(s->ip), &s->port);
	s->started_ms = now_ms();
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (l->tls == TLS_IMPLICIT && W->tls) {
		s->bev = tls_accept(W->base, W->tls, fd);
		s->tls = true;
	} else
		s->bev = bufferevent_socket_new(W->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		free(s);
		return;
	}
	bufferevent_setcb(s->bev, session_read, session_write, session_event, s);
	s->next = sessions;
	if (sessions)
		sessions->prev = s;
	sessions = s;
	nsessions++;
	s->exempt = cidr_list_match(C()->limit_exempt, C()->nlimit_exempt, sa);
	int perip = s->exempt ? 0 : ip_count(s->ip, 1);
	log_info("sid=%s event=connect ip=%s port=%d listener=%s sessions=%zu", s->sid, s->ip,
	    s->port, l->spec, nsessions);
	journal_connect(s->sid, s->ip, l->spec);
	if (!listen_admits(l, sa)) {
		reply(s, "554 5.7.1 %s Error: access denied for %s", C()->hostname, s->ip);
		log_info("sid=%s event=reject-connection ip=%s reason=access-list listener=%s", s->sid,
		    s->ip, l->spec);
		journal_refused(s->sid, s->ip, "access-list");
		close_after(s);
		return;
	}
	if (nsessions > (size_t)C()->smtp_max_sessions) {
		reply(s, "421 4.7.0 %s Error: too many connections", C()->hostname);
		log_info("sid=%s event=reject-connection ip=%s reason=max-sessions", s->sid, s->ip);
		journal_refused(s->sid, s->ip, "max-sessions");
		close_after(s);
		return;
	}
	if (perip > C()->smtp_max_sessions_per_ip) {
		reply(s, "421 4.7.0 %s Error: too many connections from %s", C()->hostname, s->ip);
		log_info("sid=%s event=reject-connection ip=%s reason=max-sessions-per-ip", s->sid, s->ip);
		journal_refused(s->sid, s->ip, "max-sessions-per-ip");
		close_after(s);
		return;
	}
	if (W->draining) {
		reply(s, "421 4.3.2 %s Service shutting down", C()->hostname);
		close_after(s);
		return;
	}
	if (!rate_ok(s, RATE_CONNECTIONS, 1)) {
		close_after(s);
		return;
	}
	if (lists_match_ip(worker_lists(), LK_BLOCK, sa)) {
		reply(s, "554 5.7.1 %s Error: your address %s is blocked (ref %s)", C()->hostname, s->ip, s->sid);
		log_info("sid=%s event=reject-connection ip=%s reason=block-list", s->sid, s->ip);
		journal_refused(s->sid, s->ip, "block-list");
		close_after(s);
		return;
	}
	s->allowlisted = lists_match_ip(worker_lists(), LK_ALLOW, sa);
	if (!pregreet_start(s)) {
		s->state = S_INIT;
		reply(s, "220 %s %s", C()->hostname, C()->smtp_banner);
	}
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	if (s->state != S_PREGREET)     /* else the greeting timer bounds the wait */
		set_timeout(s);
}

int
smtp_listen(const struct listen_conf *l)
{
	struct evconnlistener *lis = net_listen(W->base, l->fd, on_accept, (void *)l, "smtp");

	if (lis == NULL)
		return -1;
	listeners = xreallocarray(listeners, nlisteners + 1, sizeof(*listeners));
	listeners[nlisteners++] = lis;
	return 0;
}

size_t
smtp_session_count(void)
{
	return nsessions;
}

void
smtp_drain(bool kick, void (*cb)(void *), void *arg)
{
	struct session *s, *next;

	for (size_t i = 0; i < nlisteners; i++)
		evconnlistener_disable(listeners[i]);
	drain_cb = cb;
	drain_arg = arg;
	for (s = kick ? sessions : NULL; s; s = next) {
		next = s->next;
		/* idle between transactions: tell it now; others finish first */
		if ((s->state == S_INIT || s->state == S_HELO || s->state == S_PREGREET) &&
		    evbuffer_get_length(bufferevent_get_input(s->bev)) == 0) {
			reply(s, "421 4.3.2 %s Service shutting down", C()->hostname);
			close_after(s);
		}
	}
	if (nsessions == 0 && drain_cb) {
		drain_cb = NULL;
		cb(arg);
	}
}
