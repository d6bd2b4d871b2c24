/*
 * pop3.c - the POP3 server sessions (RFC 1939 + CAPA, STLS, AUTH PLAIN,
 * RFC 3206 response codes).
 *
 * Runs in: the worker process, on its event loop.  Untrusted input: every
 * byte from the client.  Limits: command line POP3_MAX_LINE bytes (checked
 * before the line is complete), POP3_MAX_BAD bad commands then close, idle
 * timeout POP3_TIMEOUT (RFC 1939: at least 10 minutes), output buffered
 * ahead at most 1 MB before reading stops.  Passwords are accepted only
 * over TLS unless auth-allow-plaintext is set.  A failed login is answered
 * after a delay that grows per client IP (1 s, 2 s, 4 s ... 15 s).
 *
 * Each command that touches the disk (login + INBOX sync, RETR/TOP, the
 * UPDATE state's expunge) is one pool job; the session reads nothing
 * while a job is out.  The maildrop is fixed at login (RFC 1939): mail
 * arriving later is seen at the next session.
 */
#include "config.h"
#include "pop3.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "net.h"
#include "mailbox.h"
#include "metrics.h"
#include "pool.h"
#include "tls.h"
#include "util.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define POP3_MAX_LINE   2048            /* AUTH PLAIN initial responses are long */
#define POP3_MAX_BAD    10
#define POP3_TIMEOUT    600
#define POP3_MAX_OUT    (1024 * 1024)

enum pstate { P_AUTH, P_AUTHCONT, P_TRANS, P_BUSY, P_STLS, P_CLOSING };

struct pop3 {
	char    sid[NET_SID_SIZE];
	struct bufferevent *bev;
	const struct listen_conf *listen;
	char    ip[INET6_ADDRSTRLEN];
	enum pstate state;
	enum pstate after;              /* state to return to after a job */
	bool    tls;
	bool    skipping;               /* discarding the rest of an overlong line */
	int     nbad;
	int     ncmds;
	uint64_t started_ms;
	char    user[256];              /* from USER */
	char    canon[256];
	char    root[PATH_MAX];
	struct mbox *mb;                /* INBOX, fixed at login */
	bool   *deleted;
	size_t  ndeleted;
	struct event *delay_ev;         /* failed-login answer timer */
	bool    dead;                   /* connection gone while a job is out */
	bool    jobout;
	struct pop3 *next, *prev;

	/* the job */
	int     op;
	char   *juser, *jpass;
	int     jresult;
	size_t  jmsg;
	long long jlines;
	struct buf jout;
	char   *jerr;
};

enum { JOB_LOGIN, JOB_RETR, JOB_TOP, JOB_UPDATE };

static struct pop3 *sessions;
static size_t nsessions;

static void pop3_read(struct bufferevent *, void *);
static void pop3_write(struct bufferevent *, void *);
static void pop3_event(struct bufferevent *, short, void *);
static void pop3_process(struct pop3 *);
static void pop3_free(struct pop3 *);
static void reply(struct pop3 *, const char *, ...) LOGFMT(2, 3);

static void
reply(struct pop3 *s, const char *fmt, ...)
{
	va_list ap;
	struct evbuffer *out = bufferevent_get_output(s->bev);

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static void
close_after(struct pop3 *s)
{
	s->state = P_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		pop3_free(s);
}

static bool
plaintext_ok(const struct pop3 *s)
{
	return s->tls || W->conf->auth_allow_plaintext;
}

static bool
stls_ok(const struct pop3 *s)
{
	return !s->tls && W->tls != NULL && s->listen->tls != TLS_NONE;
}

/* ---- pool jobs ---- */

/* LF text -> CRLF, dot-stuffed; body lines limited to `lines` after the header (-1: all) */
static void
pop3_stuff(const char *p, size_t len, long long lines, struct buf *out)
{
	bool bol = true, inbody = false;
	size_t i, start = 0;

	buf_reserve(out, len + len / 20 + 16);
	for (i = 0; i < len; i++) {
		if (bol) {
			if (inbody && lines >= 0 && lines-- == 0)
				return;
			if (p[i] == '.')
				buf_addc(out, '.');
			bol = false;
			start = i;
		}
		if (p[i] == '\n') {
			size_t end = i;
			if (end > start && p[end - 1] == '\r')
				end--;
			buf_add(out, p + start, end - start);
			buf_add(out, "\r\n", 2);
			if (!inbody && end == start)
				inbody = true;
			bol = true;
		}
	}
	if (!bol) {
		buf_add(out, p + start, len - start);
		buf_add(out, "\r\n", 2);
	}
}

static void
job_work(void *arg)
{
	struct pop3 *s = arg;
	struct buf raw = BUF_INIT;
	const struct moat_conf *c = W->conf;

	switch (s->op) {
	case JOB_LOGIN:
		s->jresult = mbox_login(c, s->juser, s->jpass, s->canon, sizeof(s->canon),
		    s->root, sizeof(s->root));
		if (s->jresult == 1) {
			s->mb = mbox_open(s->root, "INBOX", &s->jerr);
			if (s->mb == NULL || mbox_sync(s->mb, true, &s->jerr) < 0)
				s->jresult = -1;
		}
		break;
	case JOB_RETR:
	case JOB_TOP:
		if (mbox_msg_read(s->mb, &s->mb->msgs[s->jmsg], &raw) < 0) {
			s->jresult = -1;
			break;
		}
		pop3_stuff(raw.data ? raw.data : "", raw.len, s->op == JOB_TOP ? s->jlines : -1, &s->jout);
		s->jresult = 1;
		break;
	case JOB_UPDATE: {
		uint32_t *uids = xcalloc(s->mb->nmsgs + 1, sizeof(*uids));
		size_t n = 0;
		for (size_t i = 0; i < s->mb->nmsgs; i++)
			if (s->deleted[i])
				uids[n++] = s->mb->msgs[i].uid;
		s->jresult = mbox_expunge(s->mb, uids, n, &s->jerr) < 0 ? -1 : 1;
		free(uids);
		break;
	}
	}
	buf_free(&raw);
}

static void
delayed_answer(evutil_socket_t fd, short ev, void *arg)
{
	struct pop3 *s = arg;

	event_free(s->delay_ev);
	s->delay_ev = NULL;
	reply(s, "-ERR [AUTH] Authentication failed");
	s->state = P_AUTH;
	bufferevent_enable(s->bev, EV_READ);
	pop3_process(s);
}

static void
job_done(void *arg)
{
	struct pop3 *s = arg;
	int op = s->op;

	s->jobout = false;
	if (s->jpass) {
		explicit_bzero(s->jpass, strlen(s->jpass));
		xfree(s->jpass);
	}
	xfree(s->juser);
	if (s->dead) {
		pop3_free(s);
		return;
	}
	switch (op) {
	case JOB_LOGIN:
		if (s->jresult == 1) {
			off_t total = 0;
			mbox_throttle_ok(s->ip);
			s->ndeleted = s->mb->nmsgs;
			s->deleted = xcalloc(s->ndeleted + 1, sizeof(*s->deleted));
			for (size_t i = 0; i < s->mb->nmsgs; i++)
				total += s->mb->msgs[i].vsize;
			log_info("sid=%s event=login proto=pop3 ip=%s user=%s messages=%zu tls=%s",
			    s->sid, s->ip, s->canon, s->mb->nmsgs, s->tls ? "yes" : "no");
			reply(s, "+OK Logged in, %zu messages (%lld octets)", s->mb->nmsgs, (long long)total);
			s->state = P_TRANS;
		} else if (s->jresult == 0) {
			unsigned d;
			mbox_throttle_fail(s->ip);
			d = mbox_throttle_delay(s->ip);
			log_notice("sid=%s event=login-failed proto=pop3 ip=%s user=\"%s\" delay=%u",
			    s->sid, s->ip, esc(s->user), d);
			s->user[0] = '\0';
			struct timeval tv = { d / 1000, (d % 1000) * 1000 };
			s->delay_ev = evtimer_new(W->base, delayed_answer, s);
			evtimer_add(s->delay_ev, &tv);
			return;         /* reading stays off until the answer */
		} else {
			log_warnx("sid=%s event=login-error proto=pop3 ip=%s user=\"%s\" error=\"%s\"",
			    s->sid, s->ip, esc(s->user), esc(s->jerr ? s->jerr : "users database"));
			mbox_close(s->mb);
			s->mb = NULL;
			s->user[0] = '\0';
			reply(s, "-ERR [SYS/TEMP] Temporary server failure, try again later");
			s->state = P_AUTH;
		}
		break;
	case JOB_RETR:
	case JOB_TOP:
		if (s->jresult == 1) {
			struct evbuffer *out = bufferevent_get_output(s->bev);
			if (op == JOB_RETR)
				reply(s, "+OK %lld octets", (long long)s->mb->msgs[s->jmsg].vsize);
			else
				reply(s, "+OK");
			evbuffer_add(out, s->jout.data ? s->jout.data : "", s->jout.len);
			evbuffer_add(out, ".\r\n", 3);
		} else {
			reply(s, "-ERR [SYS/TEMP] Cannot read message %zu", s->jmsg + 1);
		}
		buf_free(&s->jout);
		s->state = P_TRANS;
		break;
	case JOB_UPDATE:
		if (s->jresult == 1)
			reply(s, "+OK Bye");
		else
			reply(s, "-ERR [SYS/TEMP] Some deleted messages not removed");
		log_info("sid=%s event=logout proto=pop3 ip=%s user=%s", s->sid, s->ip, s->canon);
		close_after(s);
		return;
	}
	xfree(s->jerr);
	bufferevent_enable(s->bev, EV_READ);
	pop3_process(s);
}

static void
submit(struct pop3 *s, int op)
{
	s->op = op;
	s->state = P_BUSY;
	s->jobout = true;
	xfree(s->jerr);
	bufferevent_disable(s->bev, EV_READ);
	pool_submit(W->pool, job_work, job_done, s);
}

/* ---- commands ---- */

/* message number argument: index into msgs or -1 (with the reply sent) */
static long
msgarg(struct pop3 *s, const char *a)
{
	long long n;

	if (a == NULL || !parse_ll(a, 1, (long long)s->mb->nmsgs, &n)) {
		reply(s, "-ERR No such message");
		return -1;
	}
	if (s->deleted[n - 1]) {
		reply(s, "-ERR Message %lld already deleted", n);
		return -1;
	}
	return (long)(n - 1);
}

static void
cmd_capa(struct pop3 *s, char *arg)
{
	reply(s, "+OK Capability list follows");
	reply(s, "TOP");
	reply(s, "UIDL");
	reply(s, "RESP-CODES");
	reply(s, "AUTH-RESP-CODE");
	reply(s, "PIPELINING");
	if (s->state == P_AUTH) {
		if (plaintext_ok(s)) {
			reply(s, "USER");
			reply(s, "SASL PLAIN");
		}
		if (stls_ok(s))
			reply(s, "STLS");
	}
	reply(s, "IMPLEMENTATION moat");
	reply(s, ".");
}

static void
login(struct pop3 *s, const char *user, const char *pass)
{
	if (mbox_throttle_refused(s->ip)) {
		log_notice("sid=%s event=login-refused proto=pop3 ip=%s user=\"%s\"", s->sid, s->ip,
		    esc(user));
		reply(s, "-ERR [SYS/TEMP] Too many failed logins from your address; try again later");
		close_after(s);
		return;
	}
	s->juser = xstrdup(user);
	s->jpass = xstrdup(pass);
	submit(s, JOB_LOGIN);
}

static bool
plain_refused(struct pop3 *s)
{
	if (plaintext_ok(s))
		return false;
	reply(s, "-ERR [SYS/PERM] Plaintext authentication disallowed on non-secure connections%s",
	    stls_ok(s) ? ", use STLS first" : "");
	return true;
}

static void
cmd_user(struct pop3 *s, char *arg)
{
	if (plain_refused(s))
		return;
	if (arg == NULL || *arg == '\0' || strlen(arg) >= sizeof(s->user)) {
		reply(s, "-ERR Bad user name");
		s->nbad++;
		return;
	}
	moat_strlcpy(s->user, arg, sizeof(s->user));
	reply(s, "+OK");
}

static void
cmd_pass(struct pop3 *s, char *arg)
{
	if (plain_refused(s))
		return;
	if (s->user[0] == '\0') {
		reply(s, "-ERR USER first");
		s->nbad++;
		return;
	}
	login(s, s->user, arg ? arg : "");
}

static void
auth_plain(struct pop3 *s, const char *b64)
{
	char user[256], pass[512];

	if (!strcmp(b64, "*")) {
		reply(s, "-ERR Authentication cancelled");
		return;
	}
	if (!mbox_sasl_plain(b64, strlen(b64), user, sizeof(user), pass, sizeof(pass))) {
		reply(s, "-ERR [AUTH] Malformed PLAIN response");
		s->nbad++;
		return;
	}
	moat_strlcpy(s->user, user, sizeof(s->user));
	login(s, user, pass);
	explicit_bzero(pass, sizeof(pass));
}

static void
cmd_auth(struct pop3 *s, char *arg)
{
	char *mech, *init;

	if (arg == NULL) {
		/* RFC 5034: list the mechanisms */
		reply(s, "+OK");
		if (plaintext_ok(s))
			reply(s, "PLAIN");
		reply(s, ".");
		return;
	}
	if (plain_refused(s))
		return;
	mech = arg;
	init = strchr(arg, ' ');
	if (init)
		*init++ = '\0';
	if (ascii_strcasecmp(mech, "PLAIN") != 0) {
		reply(s, "-ERR Unsupported authentication mechanism");
		return;
	}
	if (init == NULL) {
		evbuffer_add(bufferevent_get_output(s->bev), "+ \r\n", 4);
		s->state = P_AUTHCONT;
		return;
	}
	auth_plain(s, !strcmp(init, "=") ? "" : init);
}

static void
cmd_stls(struct pop3 *s, char *arg)
{
	if (!stls_ok(s)) {
		reply(s, "-ERR %s", s->tls ? "Already in TLS" : "STLS not available");
		return;
	}
	reply(s, "+OK Begin TLS negotiation");
	s->state = P_STLS;
	bufferevent_disable(s->bev, EV_READ);
}

static void
cmd_quit(struct pop3 *s, char *arg)
{
	if (s->state == P_TRANS) {
		submit(s, JOB_UPDATE);
		return;
	}
	reply(s, "+OK Bye");
	close_after(s);
}

static void
cmd_noop(struct pop3 *s, char *arg)
{
	reply(s, "+OK");
}

static void
cmd_stat(struct pop3 *s, char *arg)
{
	size_t n = 0;
	long long total = 0;

	for (size_t i = 0; i < s->mb->nmsgs; i++)
		if (!s->deleted[i]) {
			n++;
			total += s->mb->msgs[i].vsize;
		}
	reply(s, "+OK %zu %lld", n, total);
}

static void
cmd_list(struct pop3 *s, char *arg)
{
	long i;

	if (arg) {
		if ((i = msgarg(s, arg)) >= 0)
			reply(s, "+OK %ld %lld", i + 1, (long long)s->mb->msgs[i].vsize);
		return;
	}
	reply(s, "+OK");
	for (size_t k = 0; k < s->mb->nmsgs; k++)
		if (!s->deleted[k])
			reply(s, "%zu %lld", k + 1, (long long)s->mb->msgs[k].vsize);
	reply(s, ".");
}

static void
cmd_uidl(struct pop3 *s, char *arg)
{
	long i;

	if (arg) {
		if ((i = msgarg(s, arg)) >= 0)
			reply(s, "+OK %ld %08X%08X", i + 1, s->mb->msgs[i].uid, s->mb->uidvalidity);
		return;
	}
	reply(s, "+OK");
	for (size_t k = 0; k < s->mb->nmsgs; k++)
		if (!s->deleted[k])
			reply(s, "%zu %08X%08X", k + 1, s->mb->msgs[k].uid, s->mb->uidvalidity);
	reply(s, ".");
}

static void
cmd_retr(struct pop3 *s, char *arg)
{
	long i = msgarg(s, arg);
	if (i < 0)
		return;
	s->jmsg = (size_t)i;
	submit(s, JOB_RETR);
}

static void
cmd_top(struct pop3 *s, char *arg)
{
	char *sp = arg ? strchr(arg, ' ') : NULL;
	long long lines;
	long i;

	if (sp == NULL || !parse_ll(sp + 1, 0, 1000000000, &lines)) {
		reply(s, "-ERR Usage: TOP msg lines");
		s->nbad++;
		return;
	}
	*sp = '\0';
	if ((i = msgarg(s, arg)) < 0)
		return;
	s->jmsg = (size_t)i;
	s->jlines = lines;
	submit(s, JOB_TOP);
}

static void
cmd_dele(struct pop3 *s, char *arg)
{
	long i = msgarg(s, arg);
	if (i < 0)
		return;
	s->deleted[i] = true;
	reply(s, "+OK Marked to be deleted");
}

static void
cmd_rset(struct pop3 *s, char *arg)
{
	memset(s->deleted, 0, s->ndeleted * sizeof(*s->deleted));
	reply(s, "+OK");
}

#define A (1u << P_AUTH)
#define T (1u << P_TRANS)
static const struct {
	const char *name;
	unsigned states;
	bool    arg;            /* takes an argument (else none allowed) */
	bool    optarg;
	void  (*fn)(struct pop3 *, char *);
} commands[] = {
	{ "CAPA", A | T, false, false, cmd_capa },
	{ "QUIT", A | T, false, false, cmd_quit },
	{ "NOOP", T,     false, false, cmd_noop },
	{ "USER", A,     true,  false, cmd_user },
	{ "PASS", A,     true,  true,  cmd_pass },
	{ "AUTH", A,     true,  true,  cmd_auth },
	{ "STLS", A,     false, false, cmd_stls },
	{ "STAT", T,     false, false, cmd_stat },
	{ "LIST", T,     true,  true,  cmd_list },
	{ "UIDL", T,     true,  true,  cmd_uidl },
	{ "RETR", T,     true,  false, cmd_retr },
	{ "TOP",  T,     true,  false, cmd_top },
	{ "DELE", T,     true,  false, cmd_dele },
	{ "RSET", T,     false, false, cmd_rset },
};
#undef A
#undef T

static void
bad(struct pop3 *s, const char *msg)
{
	reply(s, "-ERR %s", msg);
	if (++s->nbad >= POP3_MAX_BAD) {
		reply(s, "-ERR Too many bad commands, closing");
		log_info("sid=%s event=too-many-errors proto=pop3 ip=%s", s->sid, s->ip);
		close_after(s);
	}
}

static void
command(struct pop3 *s, char *line, size_t len)
{
	char *arg;
	size_t i;

	s->ncmds++;
	if (memchr(line, '\0', len) != NULL) {
		bad(s, "NUL in command");
		return;
	}
	if (s->state == P_AUTHCONT) {
		s->state = P_AUTH;
		auth_plain(s, line);
		return;
	}
	arg = strchr(line, ' ');
	if (arg)
		*arg++ = '\0';
	for (i = 0; i < ARRAY_SIZE(commands); i++)
		if (!ascii_strcasecmp(line, commands[i].name))
			break;
	if (i == ARRAY_SIZE(commands)) {
		bad(s, "Unknown command");
		return;
	}
	if (!(commands[i].states & (1u << s->state))) {
		bad(s, s->state == P_AUTH ? "Not logged in" : "Command not valid in this state");
		return;
	}
	if (arg && !commands[i].arg && !(commands[i].name[0] == 'C' && *arg == '\0')) {
		bad(s, "No argument expected");
		return;
	}
	if (!arg && commands[i].arg && !commands[i].optarg) {
		bad(s, "Argument expected");
		return;
	}
	commands[i].fn(s, arg);
	if (s->nbad >= POP3_MAX_BAD && s->state != P_CLOSING) {
		reply(s, "-ERR Too many bad commands, closing");
		close_after(s);
	}
}

static void
pop3_process(struct pop3 *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	char line[POP3_MAX_LINE + 1];

	while (s->state == P_AUTH || s->state == P_AUTHCONT || s->state == P_TRANS) {
		struct evbuffer_ptr eol;
		size_t eollen = 0, len;

		eol = evbuffer_search_eol(in, NULL, &eollen, EVBUFFER_EOL_CRLF);
		if (eol.pos < 0) {
			len = evbuffer_get_length(in);
			if (len > POP3_MAX_LINE) {
				/* drop what we have; the rest of the line follows */
				evbuffer_drain(in, len);
				if (!s->skipping) {
					s->skipping = true;
					bad(s, "Line too long");
				}
			}
			break;
		}
		len = (size_t)eol.pos;
		if (s->skipping || len > POP3_MAX_LINE) {
			evbuffer_drain(in, len + eollen);
			if (!s->skipping)
				bad(s, "Line too long");
			s->skipping = false;
			continue;
		}
		evbuffer_remove(in, line, len);
		evbuffer_drain(in, eollen);
		line[len] = '\0';
		command(s, line, len);
		explicit_bzero(line, len);
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > POP3_MAX_OUT) {
			bufferevent_disable(s->bev, EV_READ);
			break;
		}
	}
}

static void
pop3_read(struct bufferevent *bev, void *arg)
{
	pop3_process(arg);
}

static void
pop3_write(struct bufferevent *bev, void *arg)
{
	struct pop3 *s = arg;

	if (s->state == P_CLOSING) {
		pop3_free(s);
		return;
	}
	if (s->state == P_STLS) {
		struct bufferevent *nb = tls_starttls(W->base, W->tls, s->bev);
		s->bev = nb;
		if (nb == NULL) {
			log_warnx("sid=%s event=starttls-failed proto=pop3 ip=%s", s->sid, s->ip);
			s->bev = NULL;
			pop3_free(s);
			return;
		}
		s->tls = true;
		s->user[0] = '\0';
		s->state = P_AUTH;
		bufferevent_setcb(s->bev, pop3_read, pop3_write, pop3_event, s);
		struct timeval tv = { POP3_TIMEOUT, 0 };
		bufferevent_set_timeouts(s->bev, &tv, &tv);
		bufferevent_enable(s->bev, EV_READ | EV_WRITE);
		return;
	}
	if ((s->state == P_AUTH || s->state == P_TRANS || s->state == P_AUTHCONT) &&
	    !(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		pop3_process(s);
	}
}

static void
pop3_event(struct bufferevent *bev, short what, void *arg)
{
	struct pop3 *s = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;
	if ((what & BEV_EVENT_TIMEOUT) && s->state != P_CLOSING && !s->jobout) {
		log_info("sid=%s event=timeout proto=pop3 ip=%s", s->sid, s->ip);
		reply(s, "-ERR Disconnected for inactivity");
		close_after(s);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (s->state == P_CLOSING)
			pop3_free(s);
		return;
	}
	if (s->jobout) {
		s->dead = true;
		bufferevent_disable(bev, EV_READ | EV_WRITE);
		return;
	}
	pop3_free(s);
}

static void
pop3_free(struct pop3 *s)
{
	if (s->jobout) {
		s->dead = true;
		return;
	}
	log_info("sid=%s event=disconnect proto=pop3 ip=%s commands=%d errors=%d duration=%.3f",
	    s->sid, s->ip, s->ncmds, s->nbad, (now_ms() - s->started_ms) / 1000.0);
	metric_gauge_add(M_SESSIONS_OPEN, s->listen->spec, NULL, -1);
	if (s->prev)
		s->prev->next = s->next;
	else
		sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	nsessions--;
	if (s->delay_ev)
		event_free(s->delay_ev);
	if (s->bev)
		bufferevent_free(s->bev);
	mbox_close(s->mb);
	free(s->deleted);
	buf_free(&s->jout);
	free(s->jerr);
	free(s);
}

static void
on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	const struct listen_conf *l = arg;
	struct pop3 *s;
	int one = 1, port;
	bool implicit = l->kind == LISTEN_POP3S || l->tls == TLS_IMPLICIT;

	s = xcalloc(1, sizeof(*s));
	net_sid(s->sid);
	s->listen = l;
	net_peer(sa, s->ip, sizeof(s->ip), &port);
	s->started_ms = now_ms();
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (implicit) {
		if (W->tls == NULL) {
			log_warnx("pop3: %s: implicit TLS but no certificate configured", l->spec);
			close(fd);
			free(s);
			return;
		}
		s->bev = tls_accept(W->base, W->tls, fd);
		s->tls = true;
	} else {
		s->bev = bufferevent_socket_new(W->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (s->bev == NULL) {
		close(fd);
		free(s);
		return;
	}
	bufferevent_setcb(s->bev, pop3_read, pop3_write, pop3_event, s);
	s->next = sessions;
	if (sessions)
		sessions->prev = s;
	sessions = s;
	nsessions++;
	metric_inc(M_CONNECTIONS, l->spec, NULL);
	metric_gauge_add(M_SESSIONS_OPEN, l->spec, NULL, 1);
	log_info("sid=%s event=connect proto=pop3 ip=%s listener=%s tls=%s", s->sid, s->ip, l->spec,
	    s->tls ? "implicit" : "no");
	if (W->draining) {
		reply(s, "-ERR [SYS/TEMP] Server shutting down");
		close_after(s);
		return;
	}
	s->state = P_AUTH;
	reply(s, "+OK moat POP3 server ready");
	struct timeval tv = { POP3_TIMEOUT, 0 };
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

int
pop3_listen(const struct listen_conf *l)
{
	/* lib/net: pauses on EMFILE instead of spinning */
	return net_listen(W->base, l->fd, on_accept, (void *)l, "pop3") ? 0 : -1;
}

size_t
pop3_session_count(void)
{
	return nsessions;
}
