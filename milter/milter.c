/*
 * milter.c - moat's filter engine behind libmilter (docs/milter.md).
 *
 * One process (forked by moatd's master, see milter.h); libmilter runs a
 * thread per MTA connection and calls the xxfi_* callbacks below in it.
 * Per message we collect what the SMTP listener would know - client address
 * and name (connect), HELO, the TLS and AUTH macros, the envelope, the
 * header and the body - in memory, bounded by message-size-limit, and at
 * end-of-message run engine_run() in that thread.  The verdict maps to:
 *
 *   accept      the verdict's header fields (X-Spam-*, Authentication-
 *               Results) inserted at the top; continue
 *   tag         the same, plus the milter-subject-prefix
 *   quarantine  smfi_quarantine (Postfix holds the message; Sendmail
 *               quarantines it) and a copy in moat's quarantine store
 *   reject      550 5.7.1 with the reason and the MTA's queue id as the
 *               reference; or discard (milter-reject-action discard)
 *   tempfail    451 4.7.1
 *
 * Only the protocol steps we use are negotiated; headers and end-of-header
 * are negotiated as no-reply (SMFIP_NR_HDR/EOH) so the MTA does not wait
 * for a round trip per header (see mf_negotiate for why the others are
 * answered).  The listening TCP socket gets TCP_NODELAY
 * (inherited by the accepted sockets on Linux): libmilter writes each
 * modification and the final reply separately, and with Nagle on, the
 * second small write waits for the MTA's delayed ACK (40 ms).
 */
#include "config.h"
#include "buf.h"
#include "conf.h"
#include "engine.h"
#include "lists.h"
#include "log.h"
#include "mime.h"
#include "milter.h"
#include "privs.h"
#include "qstore.h"
#include "spool.h"
#include "util.h"

#include <libmilter/mfapi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LISTS_CHECK_SECS 2
#define DRAIN_SECS       30
#define MAX_FD_SCAN      1024
#define BIND_WAIT_MS     10000  /* on reload, for the old process to let go */

struct mctx {
	/* the connection */
	struct sockaddr_storage ss;
	bool    have_addr;
	char    ip[INET6_ADDRSTRLEN];
	char   *client_name;
	char   *helo;
	bool    conn_allow;             /* allow-listed IP or HELO */
	unsigned long steps;            /* negotiated SMFIP_* */
	/* the message */
	char   *sender;
	char  **rcpts;
	size_t  nrcpts, rcpts_cap;
	bool    msg_allow;              /* allow-listed sender or recipient */
	bool    th_set;                 /* the first recipient's domain thresholds */
	double  th_tag, th_quarantine, th_reject;
	struct engine_early *early;     /* filters run at the first RCPT (filter-stage) */
	char   *early_reject;           /* their refusal, for every recipient */
	char   *auth_user;
	bool    tls;
	char   *subject;                /* the first Subject value, for the prefix */
	bool    in_body;
	bool    too_big;
	struct buf msg;                 /* header + body, CRLF */
};

static const struct moat_conf *C;
static struct engine *E;
static pthread_mutex_t lists_mu = PTHREAD_MUTEX_INITIALIZER;
static struct lists *cur_lists;
static time_t lists_checked;
static atomic_int nconns;
static int listen_fd = -1;

static struct lists *
lists_get(void)
{
	struct lists *l;
	time_t now = time(NULL);

	if (C->lists_dir == NULL)
		return NULL;
	pthread_mutex_lock(&lists_mu);
	if (now - lists_checked >= LISTS_CHECK_SECS) {
		lists_checked = now;
		if (cur_lists == NULL || lists_changed(cur_lists)) {
			char *err = NULL;
			struct lists *nl = lists_load(C->lists_dir, &err);
			if (nl == NULL) {
				log_warnx("milter event=lists-error error=\"%s\" (keeping the previous lists)",
				    esc(err ? err : "?"));
				free(err);
			} else {
				lists_unref(cur_lists);
				cur_lists = nl;
				log_info("milter event=lists-loaded");
			}
		}
	}
	l = cur_lists;
	if (l)
		lists_ref(l);
	pthread_mutex_unlock(&lists_mu);
	return l;
}

/* printable ASCII without '%' (libmilter and Sendmail expand it) */
static void
reply_safe(const char *in, char *out, size_t outsz)
{
	size_t o = 0;
	for (; in && *in && o + 1 < outsz; in++)
		out[o++] = (*in >= 0x20 && *in < 0x7f && *in != '%') ? *in : '?';
	out[o] = '\0';
}

static void
reset_message(struct mctx *m)
{
	xfree(m->sender);
	for (size_t i = 0; i < m->nrcpts; i++)
		free(m->rcpts[i]);
	m->nrcpts = 0;
	xfree(m->auth_user);
	xfree(m->subject);
	engine_early_free(m->early);
	m->early = NULL;
	xfree(m->early_reject);
	m->msg_allow = m->in_body = m->too_big = m->th_set = false;
	m->tls = false;
	buf_reset(&m->msg);
}

static void
free_ctx(struct mctx *m)
{
	reset_message(m);
	free(m->rcpts);
	free(m->client_name);
	free(m->helo);
	buf_free(&m->msg);
	free(m);
}

/* "<a@b>" -> "a@b" (a copy) */
static char *
strip_path(const char *a)
{
	size_t len;

	if (a == NULL)
		return xstrdup("");
	len = strlen(a);
	if (len >= 2 && a[0] == '<' && a[len - 1] == '>')
		return xstrndup(a + 1, len - 2);
	return xstrdup(a);
}

static const char *
qid_of(SMFICTX *ctx)
{
	const char *q = smfi_getsymval(ctx, "i");
	return q && *q ? q : "unknown";
}

/* append to the message, bounded; false once over the limit */
static bool
msg_add(struct mctx *m, const void *p, size_t len)
{
	if (m->too_big || m->msg.len + len > (size_t)C->message_size_limit) {
		m->too_big = true;
		return false;
	}
	buf_add(&m->msg, p, len);
	return true;
}

/* a header value as libmilter gives it: continuation lines are separated by
 * LF (Postfix) or CRLF (Sendmail); the engine reads CRLF */
static void
msg_add_crlf(struct mctx *m, const char *s)
{
	const char *p = s, *nl;

	while ((nl = strchr(p, '\n')) != NULL) {
		size_t n = (size_t)(nl - p);
		if (n && p[n - 1] == '\r')
			n--;
		msg_add(m, p, n);
		msg_add(m, "\r\n", 2);
		p = nl + 1;
	}
	msg_add(m, p, strlen(p));
}

static sfsistat
reply_code(SMFICTX *ctx, const char *rcode, const char *xcode, const char *text, sfsistat st)
{
	char safe[400];

	reply_safe(text, safe, sizeof(safe));
	if (smfi_setreply(ctx, (char *)rcode, (char *)xcode, safe) != MI_SUCCESS)
		log_warnx("milter event=setreply-failed code=%s", rcode);
	return st;
}

static sfsistat
mf_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
    unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
    unsigned long *pf3)
{
	struct mctx *m = xcalloc(1, sizeof(*m));
	unsigned long want = SMFIP_NOUNKNOWN | SMFIP_HDR_LEADSPC | SMFIP_NR_HDR |
	    SMFIP_NR_EOH | SMFIP_SKIP;

	(void)f2; (void)f3;
	m->msg = (struct buf)BUF_INIT;
	if (E == NULL)          /* nothing to run: we only need the connection */
		want |= SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOHDRS |
		    SMFIP_NOEOH | SMFIP_NOBODY;
	/*
	 * Over TCP the MTA must never write twice without reading our reply in
	 * between: its second write waits (Nagle) until we ACK the first, and
	 * we delay that ACK by 40 ms.  So no SMFIP_NR_HELO/MAIL/RCPT even when
	 * we never refuse there, and no SMFIP_NODATA: Postfix sends the DATA
	 * macros anyway, alone, before its cleanup server writes the headers.
	 * Headers and end-of-header need no reply: Postfix writes them
	 * together with the first body chunk, which gets one.
	 */
	m->steps = want & f1;
	smfi_setpriv(ctx, m);
	*pf0 = (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE) & f0;
	*pf1 = m->steps;
	*pf2 = *pf3 = 0;
	return SMFIS_CONTINUE;
}

static sfsistat
cont(const struct mctx *m, unsigned long nr)
{
	return (m->steps & nr) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat
mf_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *sa)
{
	struct mctx *m = smfi_getpriv(ctx);

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	atomic_fetch_add(&nconns, 1);
	m->client_name = xstrdup(hostname && *hostname ? hostname : "unknown");
	if (sa && sa->sa_family == AF_INET) {
		memcpy(&m->ss, sa, sizeof(struct sockaddr_in));
		inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, m->ip, sizeof(m->ip));
		m->have_addr = true;
	} else if (sa && sa->sa_family == AF_INET6) {
		memcpy(&m->ss, sa, sizeof(struct sockaddr_in6));
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, m->ip, sizeof(m->ip));
		m->have_addr = true;
	}
	if (E == NULL)
		return SMFIS_ACCEPT;
	if (m->have_addr) {
		struct lists *l = lists_get();
		bool block = l && lists_match_ip(l, LK_BLOCK, (struct sockaddr *)&m->ss);
		m->conn_allow = l && lists_match_ip(l, LK_ALLOW, (struct sockaddr *)&m->ss);
		lists_unref(l);
		if (block) {
			log_info("milter event=reject stage=connect ip=%s reason=blocklist", m->ip);
			return reply_code(ctx, "554", "5.7.1", "Your address is blocked", SMFIS_REJECT);
		}
	}
	return SMFIS_CONTINUE;
}

static sfsistat
mf_helo(SMFICTX *ctx, char *helo)
{
	struct mctx *m = smfi_getpriv(ctx);
	struct lists *l;
	bool block;

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	free(m->helo);
	m->helo = xstrdup(helo ? helo : "");
	l = lists_get();
	block = l && m->helo[0] && lists_match(l, LK_BLOCK, LT_HELO, m->helo);
	if (l && m->helo[0] && lists_match(l, LK_ALLOW, LT_HELO, m->helo))
		m->conn_allow = true;
	lists_unref(l);
	if (block) {
		log_info("milter event=reject stage=helo ip=%s helo=%s reason=blocklist", m->ip, esc(m->helo));
		return reply_code(ctx, "550", "5.7.1", "Helo command rejected: blocked", SMFIS_REJECT);
	}
	return cont(m, SMFIP_NR_HELO);
}

static sfsistat
mf_envfrom(SMFICTX *ctx, char **argv)
{
	struct mctx *m = smfi_getpriv(ctx);
	const char *v;
	struct lists *l;
	bool block;

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	reset_message(m);
	m->sender = strip_path(argv ? argv[0] : NULL);
	if ((v = smfi_getsymval(ctx, "{auth_authen}")) != NULL && *v)
		m->auth_user = xstrdup(v);
	m->tls = (v = smfi_getsymval(ctx, "{tls_version}")) != NULL && *v;
	l = lists_get();
	block = l && m->sender[0] && lists_match(l, LK_BLOCK, LT_SENDER, m->sender);
	m->msg_allow = l && m->sender[0] && lists_match(l, LK_ALLOW, LT_SENDER, m->sender);
	lists_unref(l);
	if (block) {
		log_info("milter event=reject stage=mail ip=%s from=<%s> reason=blocklist", m->ip,
		    esc(m->sender));
		return reply_code(ctx, "550", "5.7.1", "Sender address rejected: blocked", SMFIS_REJECT);
	}
	return cont(m, SMFIP_NR_MAIL);
}

/* the filters placed at the first RCPT ("filter-stage NAME rcpt"), as on
 * the SMTP listener: a reject refuses this and every later recipient */
static sfsistat
early_filters(SMFICTX *ctx, struct mctx *m, const char *addr)
{
	struct lists *l = lists_get();
	const char *rcpts[1] = { addr };
	struct engine_in in = {
		.lists = l, .allowlisted = m->conn_allow || m->msg_allow, .qid = "NOQUEUE",
		.client = m->have_addr ? (const struct sockaddr *)&m->ss : NULL,
		.client_ip = m->have_addr ? m->ip : "", .helo = m->helo ? m->helo : "",
		.sender = m->sender ? m->sender : "", .rcpts = rcpts, .nrcpts = 1, .tls = m->tls,
		.th_set = m->th_set, .th_tag = m->th_tag, .th_quarantine = m->th_quarantine,
		.th_reject = m->th_reject,
	};
	struct engine_early *res = engine_early_run(E, &in);
	const struct verdict *v = engine_early_verdict(res);
	struct buf syms = BUF_INIT;
	char why[200], text[300];

	lists_unref(l);
	verdict_symbols(v, &syms);
	log_info("milter qid=NOQUEUE event=early-verdict ip=%s from=<%s> to=<%s> score=%.2f action=%s "
	    "symbols=%s time=%.0fms", m->have_addr ? m->ip : "unknown", esc(m->sender ? m->sender : ""),
	    esc(addr), v->score, v->action == VA_REJECT ? "reject" : "continue",
	    syms.len ? syms.data : "-", v->elapsed_ms);
	buf_free(&syms);
	if (v->action != VA_REJECT) {
		m->early = res;         /* its symbols join the message's verdict */
		return SMFIS_CONTINUE;
	}
	reply_safe(v->force_why, why, sizeof(why));
	if (why[0])
		snprintf(text, sizeof(text), "Rejected: %s", why);
	else
		snprintf(text, sizeof(text), "Rejected: client or sender scored %.1f", v->score);
	engine_early_free(res);
	m->early_reject = xstrdup(text);
	return reply_code(ctx, "550", "5.7.1", text, SMFIS_REJECT);
}

static sfsistat
mf_envrcpt(SMFICTX *ctx, char **argv)
{
	struct mctx *m = smfi_getpriv(ctx);
	struct lists *l;
	char *addr;
	bool block;

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	addr = strip_path(argv ? argv[0] : NULL);
	l = lists_get();
	block = l && addr[0] && lists_match(l, LK_BLOCK, LT_RCPT, addr);
	if (l && addr[0] && lists_match(l, LK_ALLOW, LT_RCPT, addr))
		m->msg_allow = true;
	lists_unref(l);
	if (block) {
		log_info("milter event=reject stage=rcpt ip=%s to=<%s> reason=blocklist", m->ip, esc(addr));
		free(addr);
		return reply_code(ctx, "550", "5.7.1", "Recipient address rejected: blocked", SMFIS_REJECT);
	}
	/* one verdict per message: a recipient whose domain (one of moat's
	 * `domain` lines) has other thresholds goes in another transaction,
	 * as on moat's SMTP listener */
	const char *at = strrchr(addr, '@');
	const struct domain_conf *d = at ? conf_find_domain(C, at + 1) : NULL;
	double tt = d ? d->th_tag : C->action_tag, tq = d ? d->th_quarantine : C->action_quarantine;
	double tr = d ? d->th_reject : C->action_reject;
	if (m->nrcpts == 0) {
		m->th_set = d != NULL;
		m->th_tag = tt;
		m->th_quarantine = tq;
		m->th_reject = tr;
	} else if (tt != m->th_tag || tq != m->th_quarantine || tr != m->th_reject) {
		free(addr);
		return reply_code(ctx, "452", "4.5.3",
		    "Recipient of another filter policy: send it in a separate transaction", SMFIS_TEMPFAIL);
	}
	if (m->early_reject) {          /* refused at the first RCPT: all are */
		free(addr);
		return reply_code(ctx, "550", "5.7.1", m->early_reject, SMFIS_REJECT);
	}
	if (m->nrcpts == 0 && m->early == NULL && m->auth_user == NULL && E && engine_has_early(E)) {
		sfsistat st = early_filters(ctx, m, addr);
		if (st != SMFIS_CONTINUE) {
			free(addr);
			return st;
		}
	}
	/* the MTA enforces its own recipient limit; we keep at most ours */
	if (m->nrcpts >= (size_t)C->smtp_max_rcpts) {
		free(addr);
		return cont(m, SMFIP_NR_RCPT);
	}
	if (m->nrcpts == m->rcpts_cap) {
		m->rcpts_cap = m->rcpts_cap ? m->rcpts_cap * 2 : 8;
		m->rcpts = xreallocarray(m->rcpts, m->rcpts_cap, sizeof(*m->rcpts));
	}
	m->rcpts[m->nrcpts++] = addr;
	return cont(m, SMFIP_NR_RCPT);
}

/* DATA: answered only so that the MTA's next write follows a reply */
static sfsistat
mf_data(SMFICTX *ctx)
{
	return smfi_getpriv(ctx) ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}

static sfsistat
mf_header(SMFICTX *ctx, char *name, char *value)
{
	struct mctx *m = smfi_getpriv(ctx);

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	if (name == NULL || value == NULL)
		return cont(m, SMFIP_NR_HDR);
	if (m->subject == NULL && !ascii_strcasecmp(name, "Subject"))
		m->subject = xstrdup(value);
	msg_add(m, name, strlen(name));
	msg_add(m, ":", 1);
	/* without SMFIP_HDR_LEADSPC the MTA dropped the space after the colon */
	if (!(m->steps & SMFIP_HDR_LEADSPC) && value[0] != ' ' && value[0] != '\t')
		msg_add(m, " ", 1);
	msg_add_crlf(m, value);
	msg_add(m, "\r\n", 2);
	return cont(m, SMFIP_NR_HDR);
}

static sfsistat
mf_eoh(SMFICTX *ctx)
{
	struct mctx *m = smfi_getpriv(ctx);

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	msg_add(m, "\r\n", 2);
	m->in_body = true;
	return cont(m, SMFIP_NR_EOH);
}

static sfsistat
mf_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct mctx *m = smfi_getpriv(ctx);

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	if (!msg_add(m, chunk, len) && (m->steps & SMFIP_SKIP))
		return SMFIS_SKIP;      /* refused at the end; no need for the rest */
	return SMFIS_CONTINUE;
}

/* the verdict's header fields (CRLF lines, folded) inserted in order after
 * the MTA's own Received field, as the SMTP listener puts them after ours:
 * index 1 (Sendmail shows its Received field to the milter as the first
 * one; Postfix hides it but counts it); values get LF-separated
 * continuation lines as libmilter expects */
static void
add_headers(SMFICTX *ctx, const struct mctx *m, const struct buf *h)
{
	char *names[64], *values[64];
	size_t n = 0;
	char *copy, *p, *end;

	if (h->len == 0)
		return;
	copy = xstrndup(h->data, h->len);
	p = copy;
	end = copy + strlen(copy);
	while (p < end && n < ARRAY_SIZE(names)) {
		/* one field: up to a CRLF not followed by white space */
		char *f = p, *e = p;
		for (;;) {
			e = strstr(e, "\r\n");
			if (e == NULL) {
				e = end;
				break;
			}
			if (e[2] != ' ' && e[2] != '\t')
				break;
			e += 2;
		}
		p = e < end ? e + 2 : end;
		*e = '\0';
		char *colon = strchr(f, ':');
		if (colon == NULL || colon == f)
			continue;
		*colon = '\0';
		char *v = colon + 1;
		/* with SMFIP_HDR_LEADSPC the MTA inserts exactly what we give it */
		if (!(m->steps & SMFIP_HDR_LEADSPC))
			while (*v == ' ')
				v++;
		/* CRLF inside the value -> LF */
		char *w = v;
		for (char *r = v; *r; r++)
			if (!(r[0] == '\r' && r[1] == '\n'))
				*w++ = *r;
		*w = '\0';
		names[n] = f;
		values[n++] = v;
	}
	for (size_t i = n; i-- > 0;)
		if (smfi_insheader(ctx, 1, names[i], values[i]) != MI_SUCCESS)
			log_warnx("milter event=addheader-failed name=%s", esc(names[i]));
	free(copy);
}

/* a copy in moat's quarantine store, with the verdict's header fields */
static bool
store_quarantine(struct mctx *m, const char *mta_qid, const struct verdict *v,
    const struct buf *hdrs, char *qid_out, size_t qid_outsz)
{
	struct envelope env;
	struct rcpt *rc;
	struct buf b = BUF_INIT, syms = BUF_INIT;
	struct qstore_verdict qv;
	struct qstore *qs;
	char *err = NULL;
	bool ok = false;

	memset(&env, 0, sizeof(env));
	rc = xcalloc(m->nrcpts ? m->nrcpts : 1, sizeof(*rc));
	for (size_t i = 0; i < m->nrcpts; i++)
		rc[i].addr = m->rcpts[i];
	env.arrival = time(NULL);
	env.sender = m->sender ? m->sender : (char *)"";
	env.client_addr = m->have_addr ? m->ip : NULL;
	env.client_name = m->client_name;
	env.helo = m->helo;
	env.proto = (char *)"milter";
	env.rcpts = rc;
	env.nrcpts = m->nrcpts;
	buf_add(&b, hdrs->data, hdrs->len);
	buf_add(&b, m->msg.data, m->msg.len);
	verdict_symbols(v, &syms);
	qv.score = v->score;
	qv.action = "quarantine";
	qv.symbols = syms.data;
	qs = qstore_open(C->state_dir, &err);
	if (qs == NULL || qstore_put_buf(qs, &env, b.data, b.len, &qv) < 0)
		log_crit("milter qid=%s event=quarantine-error error=\"%s\"", esc(mta_qid),
		    esc(qs ? qstore_error(qs) : err ? err : "cannot open the quarantine"));
	else {
		moat_strlcpy(qid_out, env.qid, qid_outsz);
		ok = true;
	}
	qstore_close(&qs);
	free(err);
	free(rc);
	buf_free(&b);
	buf_free(&syms);
	return ok;
}

/* tag: milter-subject-prefix in front of the Subject, once */
static void
subject_prefix(SMFICTX *ctx, const struct mctx *m)
{
	const char *pfx = C->milter_subject_prefix ? C->milter_subject_prefix : C->tag_subject_prefix;
	const char *old = m->subject ? m->subject : "";
	struct buf s = BUF_INIT;

	while (*old == ' ')
		old++;
	/* not twice (a message filtered at two hops, or sent again) */
	if (pfx == NULL || *pfx == '\0' || strncmp(old, pfx, strlen(pfx)) == 0)
		return;
	buf_printf(&s, "%s%s%s%s", (m->steps & SMFIP_HDR_LEADSPC) ? " " : "", pfx,
	    *old ? " " : "", old);
	/* a folded Subject keeps its LF continuation lines */
	if (m->subject)
		smfi_chgheader(ctx, "Subject", 1, s.data);
	else
		smfi_addheader(ctx, "Subject", s.data);
	buf_free(&s);
}

static sfsistat
mf_eom(SMFICTX *ctx)
{
	struct mctx *m = smfi_getpriv(ctx);
	struct verdict v;
	struct buf hdrs = BUF_INIT, syms = BUF_INIT;
	struct lists *l;
	const char *qid;
	char why[200], text[400], mq[QID_SIZE] = "";
	sfsistat st = SMFIS_CONTINUE;

	if (m == NULL)
		return SMFIS_TEMPFAIL;
	qid = qid_of(ctx);
	if (m->too_big) {
		log_info("milter qid=%s event=reject ip=%s reason=size limit=%lld", esc(qid), m->ip,
		    C->message_size_limit);
		st = reply_code(ctx, "552", "5.3.4", "Message size exceeds the filter's limit", SMFIS_REJECT);
		reset_message(m);
		return st;
	}
	if (!m->in_body)        /* no end of header (SMFIP_NOEOH, or missing) */
		msg_add(m, "\r\n", 2);
	/* a NUL-terminated copy for the engine (it reads msg[len] as the end) */
	buf_reserve(&m->msg, 1);
	m->msg.data[m->msg.len] = '\0';
	l = lists_get();
	struct engine_in in = {
		.lists = l, .allowlisted = m->conn_allow || m->msg_allow,
		.qid = qid, .client = m->have_addr ? (const struct sockaddr *)&m->ss : NULL,
		.client_ip = m->have_addr ? m->ip : "", .helo = m->helo ? m->helo : "",
		.sender = m->sender ? m->sender : "", .rcpts = (const char *const *)m->rcpts,
		.nrcpts = m->nrcpts, .auth_user = m->auth_user, .tls = m->tls,
		.th_set = m->th_set, .th_tag = m->th_tag, .th_quarantine = m->th_quarantine,
		.th_reject = m->th_reject, .pre = m->early,
	};
	memset(&v, 0, sizeof(v));
	engine_run(E, m->msg.data ? m->msg.data : "", m->msg.len, &in, &v);
	lists_unref(l);
	reply_safe(v.force_why, why, sizeof(why));
	verdict_headers(&v, C, &hdrs);
	switch (v.action) {
	case VA_REJECT:
		if (C->milter_discard) {
			st = SMFIS_DISCARD;
			break;
		}
		if (why[0])
			snprintf(text, sizeof(text), "Message rejected: %s (ref %s)", why, qid);
		else
			snprintf(text, sizeof(text), "Message rejected as spam, score %.1f (ref %s)", v.score, qid);
		st = reply_code(ctx, "550", "5.7.1", text, SMFIS_REJECT);
		break;
	case VA_TEMPFAIL:
		snprintf(text, sizeof(text), "Message deferred: %s; try again later (ref %s)",
		    why[0] ? why : "filter failure", qid);
		st = reply_code(ctx, "451", "4.7.1", text, SMFIS_TEMPFAIL);
		break;
	case VA_QUARANTINE:
		store_quarantine(m, qid, &v, &hdrs, mq, sizeof(mq));
		snprintf(text, sizeof(text), "moat: %s score %.1f%s%s", why[0] ? "quarantined" : "spam",
		    v.score, why[0] ? ": " : "", why);
		reply_safe(text, text, sizeof(text));
		if (smfi_quarantine(ctx, text) != MI_SUCCESS)
			log_warnx("milter qid=%s event=quarantine-failed (not negotiated?)", esc(qid));
		add_headers(ctx, m, &hdrs);
		break;
	case VA_TAG:
		add_headers(ctx, m, &hdrs);
		subject_prefix(ctx, m);
		break;
	default:
		add_headers(ctx, m, &hdrs);
		break;
	}
	verdict_symbols(&v, &syms);
	log_info("milter qid=%s event=verdict ip=%s from=<%s> to=<%s> nrcpt=%zu score=%.2f action=%s%s%s%s%s%s symbols=%s time=%.0fms",
	    esc(qid), m->have_addr ? m->ip : "unknown", esc(m->sender ? m->sender : ""),
	    esc(m->nrcpts ? m->rcpts[0] : ""), m->nrcpts, v.score,
	    st == SMFIS_DISCARD ? "discard" : verdict_action_name(v.action),
	    why[0] ? " reason=\"" : "", why[0] ? esc(why) : "", why[0] ? "\"" : "",
	    mq[0] ? " quarantine-id=" : "", mq, syms.len ? syms.data : "-", v.elapsed_ms);
	buf_free(&syms);
	buf_free(&hdrs);
	verdict_clear(&v);
	reset_message(m);
	return st;
}

static sfsistat
mf_abort(SMFICTX *ctx)
{
	struct mctx *m = smfi_getpriv(ctx);

	if (m)
		reset_message(m);
	return SMFIS_CONTINUE;
}

static sfsistat
mf_close(SMFICTX *ctx)
{
	struct mctx *m = smfi_getpriv(ctx);

	if (m) {
		if (m->client_name)     /* connect was called */
			atomic_fetch_sub(&nconns, 1);
		smfi_setpriv(ctx, NULL);
		free_ctx(m);
	}
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	.xxfi_name = "moat",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE,
	.xxfi_connect = mf_connect,
	.xxfi_helo = mf_helo,
	.xxfi_envfrom = mf_envfrom,
	.xxfi_envrcpt = mf_envrcpt,
	.xxfi_header = mf_header,
	.xxfi_eoh = mf_eoh,
	.xxfi_body = mf_body,
	.xxfi_eom = mf_eom,
	.xxfi_abort = mf_abort,
	.xxfi_close = mf_close,
	.xxfi_negotiate = mf_negotiate,
	.xxfi_data = mf_data,
};

const struct listen_conf *
milter_listener(const struct moat_conf *c)
{
	for (size_t i = 0; c && i < c->nlistens; i++)
		if (c->listens[i].kind == LISTEN_MILTER)
			return &c->listens[i];
	return NULL;
}

/* libmilter's connection spec: unix:PATH, inet:PORT@ADDR, inet6:PORT@ADDR */
static void
conn_spec(const struct listen_conf *l, char *out, size_t outsz)
{
	char ip[INET6_ADDRSTRLEN];

	if (l->ss.ss_family == AF_UNIX) {
		snprintf(out, outsz, "unix:%s", ((const struct sockaddr_un *)&l->ss)->sun_path);
	} else if (l->ss.ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&l->ss;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		snprintf(out, outsz, "inet:%u@%s", ntohs(s->sin_port), ip);
	} else {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&l->ss;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		snprintf(out, outsz, "inet6:%u@%s", ntohs(s->sin6_port), ip);
	}
}

/* libmilter has no way to hand us its listening socket: find it (the only
 * listening socket of this process; the master's were closed at fork) */
static int
find_listener(void)
{
	for (int fd = 3; fd < MAX_FD_SCAN; fd++) {
		int acc = 0;
		socklen_t len = sizeof(acc);
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc)
			return fd;
	}
	return -1;
}

/* SIGUSR1 (the master's reload): stop accepting now and let the sessions
 * finish.  smfi_stop() closes the listening socket, but libmilter's
 * listener thread sleeps in poll() on it, which keeps it bound until the
 * poll times out (up to 5 s); shutting it down first wakes that poll and
 * frees the address for the new process at once */
static void *
reload_watch(void *arg)
{
	sigset_t *set = arg;
	int sig;

	if (sigwait(set, &sig) == 0) {
		log_info("milter event=replaced (finishing the sessions in progress)");
		if (listen_fd >= 0)
			shutdown(listen_fd, SHUT_RDWR);
		smfi_stop();
	}
	return NULL;
}

int
milter_main(const struct moat_conf *c, const struct listen_conf *l)
{
	char spec[PATH_MAX + 16], *err = NULL;
	const char *path = NULL;

	C = c;
	/* libmilter takes SIGTERM, SIGHUP and SIGINT with sigwait() in its own
	 * thread, reload_watch SIGUSR1: block them before any thread exists
	 * (the engine's resolver, the antivirus), or one of those threads gets
	 * the default action */
	sigset_t set;
	static sigset_t usr1;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	if (l->ss.ss_family == AF_UNIX)
		path = ((const struct sockaddr_un *)&l->ss)->sun_path;
	conn_spec(l, spec, sizeof(spec));
	if (smfi_register(desc) != MI_SUCCESS || smfi_setconn(spec) != MI_SUCCESS) {
		log_crit("milter event=error error=\"smfi_register/smfi_setconn failed for %s\"", esc(spec));
		return 1;
	}
	smfi_setbacklog(1024);
	/* still root (when started as root): bind, and give a unix socket to
	 * the run user with milter-socket-mode.  On a reload the previous
	 * process may still hold the TCP port for a moment: retry (a unix
	 * socket's old file is replaced at once) */
	int waited = 0;
	while (smfi_opensocket(true) != MI_SUCCESS) {
		if (waited >= BIND_WAIT_MS) {
			log_crit("%s:%d: milter: cannot listen on %s", l->file, l->line, l->spec);
			return 1;
		}
		usleep(20000);
		waited += 20;
	}
	if (waited)
		log_info("milter event=listening waited=%dms", waited);
	ino_t ino = 0;
	if (path) {
		int mode = c->milter_socket_mode ? c->milter_socket_mode & 0777 : 0660;
		struct stat st;
		privs_chown(c, path);
		if (chmod(path, (mode_t)mode) < 0)
			log_warn("milter: chmod %s", path);
		if (lstat(path, &st) == 0)
			ino = st.st_ino;
	}
	listen_fd = find_listener();
	/* Nagle off: Linux copies TCP_NODELAY to every socket accept() returns */
	int one = 1;
	if (!path && (listen_fd < 0 ||
	    setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0))
		log_warnx("milter event=warning error=\"TCP_NODELAY not set on %s\"", l->spec);
	pthread_t tid;
	if (pthread_create(&tid, NULL, reload_watch, &usr1) == 0)
		pthread_detach(tid);
	privs_drop(c);
	if (spool_init(c, &err) < 0) {
		log_crit("milter: spool: %s", err);
		return 1;
	}
	mime_init();
	E = engine_new(c, &err);
	if (E == NULL) {
		log_crit("milter: %s", err);
		return 1;
	}
	if (!engine_active(E)) {
		engine_free(E);
		E = NULL;
	}
	if (c->lists_dir) {
		cur_lists = lists_load(c->lists_dir, &err);
		if (cur_lists == NULL) {
			log_crit("milter: %s", err);
			return 1;
		}
		lists_checked = time(NULL);
	}
	log_info("milter event=started pid=%d listen=%s filters=%s", (int)getpid(), l->spec,
	    E ? "on" : "off");
	int r = smfi_main();
	/* SIGTERM: libmilter stopped accepting; let the sessions in progress end */
	for (int i = 0; i < DRAIN_SECS * 10 && atomic_load(&nconns) > 0; i++)
		usleep(100000);
	/* the socket file, unless a newer process (reload) has replaced it */
	struct stat st;
	if (path && ino && lstat(path, &st) == 0 && st.st_ino == ino)
		unlink(path);
	log_info("milter event=exit pid=%d status=%d", (int)getpid(), r);
	engine_free(E);
	lists_unref(cur_lists);
	return r == MI_SUCCESS ? 0 : 1;
}
