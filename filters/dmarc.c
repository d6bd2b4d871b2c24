/*
 * dmarc.c - DMARC (RFC 7489) with libopendmarc.
 *
 * Policy discovery is ours: _dmarc.<From domain> TXT through moat's
 * resolver, then _dmarc.<organizational domain> (libpsl) when the exact
 * domain publishes none.  libopendmarc parses the record
 * (opendmarc_policy_store_dmarc) and gives p=, sp=, pct=, adkim=, aspf=.
 * Identifier alignment is computed here with libpsl from the SPF and DKIM
 * results already in msg_ctx->auth (SPF and DKIM run before DMARC):
 * libopendmarc 1.4.2 reports SPF as aligned for an unrelated MAIL FROM
 * domain and ignores pct=, so neither its alignment nor its
 * get_policy_to_enforce() is used (docs/filter-engine.md).
 * One JSON line per evaluated message goes to
 * STATE-DIR/dmarc/records-YYYYMMDD.jsonl for aggregate reports.
 * Runs in: pool threads (check); the worker (init/fini).  Input: the From
 * domain, DNS answers (untrusted).
 */
#include "config.h"
#include "filter.h"
#include "conf.h"
#include "log.h"
#include "resolver.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>

#include <libpsl.h>
#include <opendmarc/dmarc.h>

#define DMARC_MAX_RECORD 2048   /* longer TXT records are not DMARC records we parse */
#define DMARC_MAX_LINE   8192   /* one aggregate-report record line */

struct dmarc_state {
	psl_ctx_t *psl;
	enum dmarc_action on_reject, on_quarantine;
	char    dir[4096];              /* STATE-DIR/dmarc */
	double  sc_pass, sc_reject, sc_quarantine, sc_fail_none, sc_none, sc_tempfail, sc_permerror;
};

static pthread_once_t dmarc_once = PTHREAD_ONCE_INIT;
static OPENDMARC_LIB_T dmarc_lib;

static void
dmarc_lib_init(void)
{
	/* no TLD file, no name servers: libopendmarc does no DNS and no
	 * organizational-domain work of its own here */
	memset(&dmarc_lib, 0, sizeof(dmarc_lib));
	dmarc_lib.tld_type = OPENDMARC_TLD_TYPE_NONE;
	(void)opendmarc_policy_library_init(&dmarc_lib);
}

static int
dmarc_init(const struct moat_conf *c, void **state, char **err)
{
	struct dmarc_state *st;

	*state = NULL;
	if (!c->dmarc)
		return 0;
	pthread_once(&dmarc_once, dmarc_lib_init);
	st = xcalloc(1, sizeof(*st));
	st->psl = psl_latest(NULL);
	if (st->psl == NULL) {
		free(st);
		*err = xstrdup("libpsl: no public suffix list");
		return -1;
	}
	st->on_reject = c->dmarc_reject_action == DMARC_ACT_DEFAULT ? DMARC_ACT_REJECT :
	    c->dmarc_reject_action;
	st->on_quarantine = c->dmarc_quarantine_action == DMARC_ACT_DEFAULT ? DMARC_ACT_QUARANTINE :
	    c->dmarc_quarantine_action;
	conf_path(c, "dmarc", st->dir, sizeof(st->dir));
	st->sc_pass = filter_score(c, "DMARC_PASS", -0.1);
	st->sc_reject = filter_score(c, "DMARC_FAIL_REJECT", 4.0);
	st->sc_quarantine = filter_score(c, "DMARC_FAIL_QUARANTINE", 2.0);
	st->sc_fail_none = filter_score(c, "DMARC_FAIL_NONE", 0.1);
	st->sc_none = filter_score(c, "DMARC_NONE", 0);
	st->sc_tempfail = filter_score(c, "DMARC_TEMPFAIL", 0);
	st->sc_permerror = filter_score(c, "DMARC_PERMERROR", 0);
	*state = st;
	return 0;
}

static void
dmarc_fini(void *state)
{
	struct dmarc_state *st = state;

	if (st == NULL)
		return;
	psl_free(st->psl);
	free(st);
}

/* a host name we look up and compare: LDH, _ and dots, <= 253 */
static bool
dmarc_domain_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 253 || s[0] == '.')
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

/* the organizational domain (RFC 7489 3.2) of a lowercase domain */
static void
dmarc_orgdomain(const struct dmarc_state *st, const char *dom, char *out, size_t outsz)
{
	const char *r = psl_registrable_domain(st->psl, dom);

	moat_strlcpy(out, r ? r : dom, outsz);
}

/* identifier alignment of d (a DKIM d= or SPF domain) with the From domain */
static bool
dmarc_aligned(const struct dmarc_state *st, const char *d, const char *from, int mode)
{
	char dd[256], a[256], b[256];

	if (d == NULL || *d == '\0')
		return false;
	moat_strlcpy(dd, d, sizeof(dd));
	ascii_lower(dd);
	if (dd[0] && dd[strlen(dd) - 1] == '.')
		dd[strlen(dd) - 1] = '\0';
	if (mode == DMARC_RECORD_A_STRICT)
		return strcmp(dd, from) == 0;
	dmarc_orgdomain(st, dd, a, sizeof(a));
	dmarc_orgdomain(st, from, b, sizeof(b));
	return strcmp(a, b) == 0;
}

enum disc { DISC_FOUND, DISC_NONE, DISC_TEMPFAIL };

/* the one v=DMARC1 record at _dmarc.dom (RFC 7489 6.6.3) */
static enum disc
dmarc_fetch(struct resolver *res, const char *dom, char *rec, size_t recsz, char *why, size_t whysz)
{
	struct dns_answer a;
	char name[300];
	size_t found = 0;

	snprintf(name, sizeof(name), "_dmarc.%s", dom);
	memset(&a, 0, sizeof(a));
	switch (resolver_query(res, name, DNS_T_TXT, &a)) {
	case DNS_OK:
		break;
	case DNS_TEMPFAIL:
		snprintf(why, whysz, "%s: %s", name, a.why[0] ? a.why : "lookup failed");
		dns_answer_free(&a);
		return DISC_TEMPFAIL;
	default:
		dns_answer_free(&a);
		return DISC_NONE;
	}
	for (size_t i = 0; i < a.n; i++) {
		const char *t = a.text[i];
		/* "v=DMARC1" then ";" or white space or the end */
		if (strncmp(t, "v=DMARC1", 8) != 0 || (t[8] != ';' && t[8] != ' ' && t[8] != '\t' &&
		    t[8] != '\0'))
			continue;
		if (found++ == 0)
			moat_strlcpy(rec, strlen(t) < DMARC_MAX_RECORD ? t : "", recsz);
	}
	dns_answer_free(&a);
	/* several records: no policy, as if none */
	return found == 1 && rec[0] ? DISC_FOUND : DISC_NONE;
}

static const char *
pol_name(int p)
{
	return p == DMARC_RECORD_P_REJECT ? "reject" : p == DMARC_RECORD_P_QUARANTINE ? "quarantine" :
	    p == DMARC_RECORD_P_NONE ? "none" : "unspecified";
}

/* JSON string body: printable ASCII as is, the rest escaped; bounded */
static void
json_str(char *out, size_t outsz, const char *s)
{
	size_t n = 0;

	for (; s && *s && n + 7 < outsz; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			out[n++] = '\\';
			out[n++] = (char)ch;
		} else if (ch < 0x20 || ch >= 0x7f)
			n += (size_t)snprintf(out + n, outsz - n, "\\u%04x", ch);
		else
			out[n++] = (char)ch;
	}
	out[n] = '\0';
}

/* append to a bounded line; *n never passes sz, and reaches sz on overflow */
static void lineadd(char *, size_t, size_t *, const char *, ...) __attribute__((format(printf, 4, 5)));

static void
lineadd(char *buf, size_t sz, size_t *n, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (*n >= sz)
		return;
	va_start(ap, fmt);
	r = vsnprintf(buf + *n, sz - *n, fmt, ap);
	va_end(ap);
	if (r < 0 || (size_t)r >= sz - *n)
		*n = sz;
	else
		*n += (size_t)r;
}

struct dmarc_eval {
	const char *from, *recdom;
	char    envdom[256];
	int     p, sp, pct, adkim, aspf;
	const char *applied;            /* the policy that applied after pct= */
	bool    pass, spf_aligned, dkim_aligned, sampled_out;
	const char *disposition;        /* none, quarantine, reject (what moat does) */
};

/* one line for aggregate reports; BLOCKING (pool thread) */
static void
dmarc_record(const struct dmarc_state *st, const struct msg_ctx *x, const struct dmarc_eval *e)
{
	char line[DMARC_MAX_LINE], path[4200], j1[600], j2[600], j3[600];
	struct tm tm;
	time_t now = time(NULL);
	size_t n;
	int fd;

	gmtime_r(&now, &tm);
	snprintf(path, sizeof(path), "%s/records-%04d%02d%02d.jsonl", st->dir, tm.tm_year + 1900,
	    tm.tm_mon + 1, tm.tm_mday);
	json_str(j1, sizeof(j1), x->client_ip);
	json_str(j2, sizeof(j2), e->from);
	json_str(j3, sizeof(j3), e->envdom);
	n = 0;
	lineadd(line, sizeof(line), &n,
	    "{\"time\":%lld,\"qid\":\"%s\",\"source_ip\":\"%s\",\"header_from\":\"%s\","
	    "\"envelope_from\":\"%s\",", (long long)now, x->qid, j1, j2, j3);
	json_str(j1, sizeof(j1), x->auth.spf_domain);
	json_str(j2, sizeof(j2), e->recdom);
	lineadd(line, sizeof(line), &n,
	    "\"spf\":{\"result\":\"%s\",\"domain\":\"%s\",\"scope\":\"%s\",\"aligned\":%s},"
	    "\"policy_published\":{\"domain\":\"%s\",\"p\":\"%s\",\"sp\":\"%s\",\"pct\":%d,"
	    "\"adkim\":\"%c\",\"aspf\":\"%c\"},\"dkim\":[",
	    x->auth.spf == AR_UNSET ? "none" : auth_res_name(x->auth.spf), j1,
	    x->auth.spf_helo ? "helo" : "mfrom", e->spf_aligned ? "true" : "false", j2, pol_name(e->p),
	    e->sp ? pol_name(e->sp) : "", e->pct, e->adkim ? e->adkim : 'r', e->aspf ? e->aspf : 'r');
	for (size_t i = 0; i < x->auth.ndkim && i < AUTH_MAX_DKIM; i++) {
		const struct auth_dkim *d = &x->auth.dkim[i];
		json_str(j1, sizeof(j1), d->domain);
		json_str(j2, sizeof(j2), d->selector);
		lineadd(line, sizeof(line), &n,
		    "%s{\"domain\":\"%s\",\"selector\":\"%s\",\"result\":\"%s\"}", i ? "," : "", j1, j2,
		    auth_res_name(d->res));
	}
	lineadd(line, sizeof(line), &n,
	    "],\"policy_evaluated\":{\"dkim\":\"%s\",\"spf\":\"%s\",\"policy\":\"%s\","
	    "\"sampled_out\":%s,\"disposition\":\"%s\"}}\n",
	    e->dkim_aligned ? "pass" : "fail", e->spf_aligned ? "pass" : "fail", e->applied,
	    e->sampled_out ? "true" : "false", e->disposition);
	if (n >= sizeof(line)) {
		log_warnx("dmarc: qid=%s record line too long, not written", x->qid);
		return;
	}
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0 && errno == ENOENT && mkdir_p(st->dir, 0750) == 0)
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		log_warn("dmarc: qid=%s cannot open %s", x->qid, path);
		return;
	}
	/* one write of a whole line: O_APPEND keeps lines of several threads
	 * and processes apart */
	if (write_full(fd, line, n) != (ssize_t)n)
		log_warn("dmarc: qid=%s write %s", x->qid, path);
	close(fd);
}

static void
dmarc_check(void *state, struct msg_ctx *x, struct verdict *v)
{
	struct dmarc_state *st = state;
	struct dmarc_eval e;
	char from[256], org[256], rec[DMARC_MAX_RECORD], why[300], recdom[256];
	DMARC_POLICY_T *p;
	enum disc disc;
	int rc;

	if (x->trusted || x->from_domain == NULL)
		return;
	moat_strlcpy(from, x->from_domain, sizeof(from));
	ascii_lower(from);
	if (from[0] && from[strlen(from) - 1] == '.')
		from[strlen(from) - 1] = '\0';
	moat_strlcpy(x->auth.dmarc_domain, from, sizeof(x->auth.dmarc_domain));
	if (!dmarc_domain_ok(from)) {
		x->auth.dmarc = AR_PERMERROR;
		verdict_add(v, "DMARC_PERMERROR", st->sc_permerror, "From domain is not a host name");
		return;
	}
	dmarc_orgdomain(st, from, org, sizeof(org));
	why[0] = rec[0] = '\0';
	moat_strlcpy(recdom, from, sizeof(recdom));
	disc = dmarc_fetch(x->res, from, rec, sizeof(rec), why, sizeof(why));
	if (disc == DISC_NONE && strcmp(org, from) != 0) {
		moat_strlcpy(recdom, org, sizeof(recdom));
		disc = dmarc_fetch(x->res, org, rec, sizeof(rec), why, sizeof(why));
	}
	if (disc == DISC_TEMPFAIL) {
		x->auth.dmarc = AR_TEMPERROR;
		verdict_add(v, "DMARC_TEMPFAIL", st->sc_tempfail, why);
		log_info("dmarc: qid=%s from=%s result=temperror why=\"%s\"", x->qid, from, why);
		return;
	}
	if (disc == DISC_NONE) {
		x->auth.dmarc = AR_NONE;
		verdict_add(v, "DMARC_NONE", st->sc_none, "no DMARC record");
		log_info("dmarc: qid=%s from=%s result=none", x->qid, from);
		return;
	}

	memset(&e, 0, sizeof(e));
	e.from = from;
	e.recdom = recdom;
	p = opendmarc_policy_connect_init((u_char *)(uintptr_t)(x->client_ip ? x->client_ip : ""),
	    x->client_ip && strchr(x->client_ip, ':') != NULL);
	if (p == NULL) {
		x->auth.dmarc = AR_TEMPERROR;
		verdict_add(v, "DMARC_TEMPFAIL", st->sc_tempfail, "out of memory");
		return;
	}
	(void)opendmarc_policy_store_from_domain(p, (u_char *)from);
	rc = opendmarc_policy_store_dmarc(p, (u_char *)rec, (u_char *)recdom,
	    strcmp(recdom, from) ? (u_char *)recdom : NULL);
	if (rc != DMARC_PARSE_OKAY) {
		snprintf(why, sizeof(why), "_dmarc.%s: %s", recdom, opendmarc_policy_status_to_str(rc));
		opendmarc_policy_connect_shutdown(p);
		x->auth.dmarc = AR_PERMERROR;
		verdict_add(v, "DMARC_PERMERROR", st->sc_permerror, why);
		log_info("dmarc: qid=%s from=%s result=permerror why=\"%s\"", x->qid, from, why);
		return;
	}
	(void)opendmarc_policy_fetch_p(p, &e.p);
	(void)opendmarc_policy_fetch_sp(p, &e.sp);
	(void)opendmarc_policy_fetch_pct(p, &e.pct);
	(void)opendmarc_policy_fetch_adkim(p, &e.adkim);
	(void)opendmarc_policy_fetch_aspf(p, &e.aspf);
	opendmarc_policy_connect_shutdown(p);
	if (e.pct < 0 || e.pct > 100)
		e.pct = 100;

	if (x->sender && strchr(x->sender, '@'))
		moat_strlcpy(e.envdom, strrchr(x->sender, '@') + 1, sizeof(e.envdom));
	/* SPF counts for the MAIL FROM identity, or HELO for the null sender */
	if (x->auth.spf == AR_PASS && (!x->auth.spf_helo || x->sender == NULL || x->sender[0] == '\0'))
		e.spf_aligned = dmarc_aligned(st, x->auth.spf_domain, from, e.aspf);
	for (size_t i = 0; i < x->auth.ndkim && i < AUTH_MAX_DKIM && !e.dkim_aligned; i++)
		if (x->auth.dkim[i].res == AR_PASS)
			e.dkim_aligned = dmarc_aligned(st, x->auth.dkim[i].domain, from, e.adkim);
	e.pass = e.spf_aligned || e.dkim_aligned;

	/* sp= for a subdomain of the domain whose record applies (6.6.3) */
	int pol = strcmp(recdom, from) != 0 && e.sp != DMARC_RECORD_P_UNSPECIFIED ? e.sp : e.p;
	if (!e.pass && pol != DMARC_RECORD_P_NONE && e.pct < 100) {
		uint32_t r;
		random_bytes(&r, sizeof(r));
		/* not sampled: the next lower policy (6.6.4) */
		if ((int)(r % 100) >= e.pct) {
			e.sampled_out = true;
			pol = pol == DMARC_RECORD_P_REJECT ? DMARC_RECORD_P_QUARANTINE : DMARC_RECORD_P_NONE;
		}
	}
	e.applied = pol_name(pol);
	moat_strlcpy(x->auth.dmarc_policy, e.applied, sizeof(x->auth.dmarc_policy));
	e.disposition = "none";
	if (e.pass) {
		x->auth.dmarc = AR_PASS;
		snprintf(why, sizeof(why), "%s aligned with %s", e.dkim_aligned ? "DKIM" : "SPF", from);
		verdict_add(v, "DMARC_PASS", st->sc_pass, why);
	} else {
		enum dmarc_action act = DMARC_ACT_SCORE;
		x->auth.dmarc = AR_FAIL;
		snprintf(why, sizeof(why), "DMARC policy of %s: %s%s", from, e.applied,
		    e.sampled_out ? " (pct= sampling: next lower policy)" : "");
		if (pol == DMARC_RECORD_P_REJECT) {
			verdict_add(v, "DMARC_FAIL_REJECT", st->sc_reject, why);
			act = st->on_reject;
		} else if (pol == DMARC_RECORD_P_QUARANTINE) {
			verdict_add(v, "DMARC_FAIL_QUARANTINE", st->sc_quarantine, why);
			act = st->on_quarantine;
		} else
			verdict_add(v, "DMARC_FAIL_NONE", st->sc_fail_none, why);
		if (act == DMARC_ACT_REJECT) {
			verdict_force(v, VA_REJECT, why);
			e.disposition = "reject";
		} else if (act == DMARC_ACT_QUARANTINE) {
			verdict_force(v, VA_QUARANTINE, why);
			e.disposition = "quarantine";
		}
	}
	log_info("dmarc: qid=%s from=%s record=%s p=%s sp=%s pct=%d result=%s spf_aligned=%s "
	    "dkim_aligned=%s policy=%s%s disposition=%s", x->qid, from, recdom, pol_name(e.p),
	    e.sp ? pol_name(e.sp) : "-", e.pct, e.pass ? "pass" : "fail", e.spf_aligned ? "yes" : "no",
	    e.dkim_aligned ? "yes" : "no", e.applied, e.sampled_out ? " sampled_out=yes" : "",
	    e.disposition);
	dmarc_record(st, x, &e);
}

const struct filter filter_dmarc = { "dmarc", FLT_DATA, dmarc_init, dmarc_check, dmarc_fini };
